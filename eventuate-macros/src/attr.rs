//! Parsing of the macros' arguments (`#[aggregate(..)]`, `#[event_handler(..)]`) and of the
//! helper attributes (`#[event(name = "..")]`, `#[apply]`). Parsing records every problem in the
//! [`Ctxt`] and skips to the next key, so one bad key does not hide the others; range and name
//! rules are left to `check.rs`.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::parse::{Parse, ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Lit, LitBool, LitInt, LitStr, Path, Token, Type};

use crate::check::Ctxt;

/// The arguments of `#[aggregate(..)]`.
#[derive(Default)]
pub(crate) struct AggregateAttr {
    pub name: Option<LitStr>,
    /// `aliases("OldName", ..)`: older entity type names the aggregate's history is stored under.
    pub aliases: Vec<LitStr>,
    pub events: Option<Path>,
    pub snapshot_every: Option<Number<u64>>,
    pub snapshot_version: Option<Number<u32>>,
    pub ignore: Vec<Type>,
}

/// The arguments of `#[event_handler(..)]`.
#[derive(Default)]
pub(crate) struct SubscriberAttr {
    pub subscribe: Option<Subscribe>,
    pub id: Option<LitStr>,
    pub start: Option<LitStr>,
    pub partitions: Option<Number<u32>>,
    pub max_attempts: Option<Number<u32>>,
    pub transactional: Option<bool>,
}

/// An integer argument with the literal it came from (for spans).
pub(crate) struct Number<T> {
    pub lit: LitInt,
    pub value: T,
}

/// The value of `subscribe = ..`.
pub(crate) enum Subscribe {
    One(EntityRef),
    List { span: Span, items: Vec<EntityRef> },
}

/// One subscribed entity: a name matched at run time, or an aggregate type checked at compile
/// time.
pub(crate) enum EntityRef {
    Name(LitStr),
    Aggregate(Path),
}

const AGGREGATE_KEYS: &str =
    "`name`, `aliases`, `events`, `snapshot_every`, `snapshot_version`, `ignore`";
const SUBSCRIBER_KEYS: &str =
    "`subscribe`, `id`, `start`, `partitions`, `max_attempts`, `transactional`";

pub(crate) fn aggregate(cx: &Ctxt, args: TokenStream) -> AggregateAttr {
    let mut attr = AggregateAttr::default();
    let mut seen = Vec::new();
    let parser = syn::meta::parser(|meta| {
        each_key(cx, &meta, &mut seen, "aggregate", AGGREGATE_KEYS, |key| {
            match key {
                "name" => attr.name = Some(meta.value()?.parse()?),
                "aliases" => {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let names = content.parse_terminated(<LitStr as Parse>::parse, Token![,])?;
                    attr.aliases = names.into_iter().collect();
                }
                "events" => attr.events = Some(meta.value()?.parse()?),
                "snapshot_every" => attr.snapshot_every = Some(number(&meta, key)?),
                "snapshot_version" => attr.snapshot_version = Some(number(&meta, key)?),
                "ignore" => attr.ignore = type_list(&meta)?,
                _ => return Ok(false),
            }
            Ok(true)
        })
    });
    if let Err(e) = parser.parse2(args) {
        cx.syn_error(e);
    }
    attr
}

pub(crate) fn subscriber(cx: &Ctxt, args: TokenStream) -> SubscriberAttr {
    let mut attr = SubscriberAttr::default();
    let mut seen = Vec::new();
    let parser = syn::meta::parser(|meta| {
        each_key(
            cx,
            &meta,
            &mut seen,
            "event_handler",
            SUBSCRIBER_KEYS,
            |key| {
                match key {
                    "subscribe" => attr.subscribe = Some(subscribe(meta.value()?)?),
                    "id" => attr.id = Some(meta.value()?.parse()?),
                    "start" => attr.start = Some(meta.value()?.parse()?),
                    "partitions" => attr.partitions = Some(number(&meta, key)?),
                    "max_attempts" => attr.max_attempts = Some(number(&meta, key)?),
                    "transactional" => attr.transactional = Some(flag(&meta, key)?),
                    _ => return Ok(false),
                }
                Ok(true)
            },
        )
    });
    if let Err(e) = parser.parse2(args) {
        cx.syn_error(e);
    }
    attr
}

/// Handles one `key = value` of an attribute: rejects unknown and repeated keys (at the key),
/// runs `parse_value` for known ones, and on any error records it and skips to the next key.
/// `parse_value` returns `Ok(false)` for a key it does not know.
fn each_key(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    seen: &mut Vec<String>,
    macro_name: &str,
    expected: &str,
    mut parse_value: impl FnMut(&str) -> syn::Result<bool>,
) -> syn::Result<()> {
    let Some(key) = meta.path.get_ident().map(ToString::to_string) else {
        cx.error_spanned_by(
            &meta.path,
            format!("expected a key of #[{macro_name}(..)]: {expected}"),
        );
        return skip_value(meta.input);
    };
    if seen.contains(&key) {
        cx.error_spanned_by(
            &meta.path,
            format!("duplicate key `{key}`: it is already set earlier in this attribute"),
        );
        return skip_value(meta.input);
    }
    match parse_value(&key) {
        Ok(true) => seen.push(key),
        Ok(false) => {
            cx.error_spanned_by(
                &meta.path,
                format!("unknown key `{key}` in #[{macro_name}(..)]; expected one of {expected}"),
            );
            return skip_value(meta.input);
        }
        Err(e) => {
            seen.push(key);
            cx.syn_error(e);
            return skip_value(meta.input);
        }
    }
    Ok(())
}

/// Skips what is left of a key's value, up to the comma before the next key.
fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

fn number<T>(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<Number<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(lit), ..
        }) => Ok(Number {
            value: lit.base10_parse()?,
            lit,
        }),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{key}` must be an integer literal, e.g. `{key} = 10`"),
        )),
    }
}

/// `key` alone (true), or `key = true|false`.
fn flag(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<bool> {
    if !meta.input.peek(Token![=]) {
        return Ok(true);
    }
    meta.value()?
        .parse::<LitBool>()
        .map(|lit| lit.value)
        .map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("`{key}` is a flag: write `{key}`, or `{key} = true` / `{key} = false`"),
            )
        })
}

fn type_list(meta: &ParseNestedMeta<'_>) -> syn::Result<Vec<Type>> {
    let content;
    syn::parenthesized!(content in meta.input);
    let types = content.parse_terminated(Type::parse, Token![,])?;
    Ok(types.into_iter().collect())
}

fn subscribe(input: ParseStream<'_>) -> syn::Result<Subscribe> {
    if input.peek(syn::token::Bracket) {
        let content;
        let bracket = syn::bracketed!(content in input);
        let items = content.parse_terminated(entity_ref, Token![,])?;
        Ok(Subscribe::List {
            span: bracket.span.join(),
            items: items.into_iter().collect(),
        })
    } else {
        entity_ref(input).map(Subscribe::One)
    }
}

fn entity_ref(input: ParseStream<'_>) -> syn::Result<EntityRef> {
    let lookahead = input.lookahead1();
    if lookahead.peek(LitStr) {
        input.parse().map(EntityRef::Name)
    } else if lookahead.peek(syn::Ident)
        || lookahead.peek(Token![::])
        || lookahead.peek(Token![crate])
        || lookahead.peek(Token![self])
        || lookahead.peek(Token![super])
    {
        input.parse().map(EntityRef::Aggregate)
    } else {
        Err(lookahead.error())
    }
}

/// Whether a method carries `#[apply]` (with no arguments; arguments are reported).
pub(crate) fn is_apply(cx: &Ctxt, attr: &Attribute) -> bool {
    if !attr.path().is_ident("apply") {
        return false;
    }
    if let Err(e) = attr.meta.require_path_only() {
        cx.syn_error(syn::Error::new(
            e.span(),
            "`#[apply]` takes no arguments: the event type is the method's parameter type",
        ));
    }
    true
}

/// `#[event(..)]` on a variant of `#[derive(Events)]`: the stored name, the schema version,
/// the older names still read, and the upcasters from older versions.
#[derive(Default)]
pub(crate) struct EventAttr {
    pub name: Option<LitStr>,
    pub version: Option<Number<u32>>,
    pub aliases: Vec<LitStr>,
    pub upcasts: Vec<Upcast>,
}

/// `upcast(from = N, with = path)`.
pub(crate) struct Upcast {
    /// The whole `upcast(..)`, for errors about it.
    pub span: Span,
    pub from: Number<u32>,
    pub with: Path,
}

/// The `#[event(name = "..")]` among `attrs` of a handler method; a second `#[event(..)]` is
/// an error at its own span (it would otherwise silently win).
pub(crate) fn event_name_among<'a>(
    cx: &Ctxt,
    attrs: impl IntoIterator<Item = &'a Attribute>,
) -> Option<LitStr> {
    event_attr_among(cx, attrs, false).and_then(|attr| attr.name)
}

/// The `#[event(..)]` among the attributes of a variant of `#[derive(Events)]`.
pub(crate) fn event_attr_of(cx: &Ctxt, attrs: &[Attribute]) -> EventAttr {
    event_attr_among(
        cx,
        attrs.iter().filter(|attr| attr.path().is_ident("event")),
        true,
    )
    .unwrap_or_default()
}

fn event_attr_among<'a>(
    cx: &Ctxt,
    attrs: impl IntoIterator<Item = &'a Attribute>,
    variant: bool,
) -> Option<EventAttr> {
    let mut found: Option<EventAttr> = None;
    for attr in attrs {
        let parsed = parse_event_attr(cx, attr, variant);
        if found.is_some() {
            cx.error_spanned_by(attr, "`#[event(..)]` is given twice; keep one");
        } else {
            found = Some(parsed);
        }
    }
    found
}

const VARIANT_EVENT_KEYS: &str =
    "`name = \"..\"`, `version = N`, `aliases(\"..\")`, `upcast(from = N, with = function)`";

fn parse_event_attr(cx: &Ctxt, attr: &Attribute, variant: bool) -> EventAttr {
    let mut out = EventAttr::default();
    let mut seen: Vec<String> = Vec::new();
    let mut any = false;
    let result = attr.parse_nested_meta(|meta| {
        let key = meta.path.get_ident().map(ToString::to_string);
        let known = match key.as_deref() {
            Some("name") => true,
            Some("version" | "aliases" | "upcast") => variant,
            _ => false,
        };
        if !known {
            let expected = if variant {
                VARIANT_EVENT_KEYS
            } else {
                "`name = \"..\"`"
            };
            return Err(meta.error(format!("unknown key in #[event(..)]; expected {expected}")));
        }
        let key = key.unwrap_or_default();
        any = true;
        // `upcast(..)` is repeated once per step; every other key is given once. A repeated
        // key is reported and its value parsed and dropped, so the keys after it still count.
        let repeated = key != "upcast" && seen.contains(&key);
        if repeated {
            cx.error_spanned_by(
                &meta.path,
                format!("duplicate key `{key}`: it is already set earlier in this attribute"),
            );
        } else {
            seen.push(key.clone());
        }
        match key.as_str() {
            "name" => {
                let name = meta.value()?.parse::<LitStr>()?;
                if !repeated {
                    out.name = Some(name);
                }
            }
            "version" => {
                let version = number(&meta, "version")?;
                if !repeated {
                    out.version = Some(version);
                }
            }
            "aliases" => {
                let content;
                syn::parenthesized!(content in meta.input);
                let names = content.parse_terminated(<LitStr as Parse>::parse, Token![,])?;
                if !repeated {
                    out.aliases = names.into_iter().collect();
                }
            }
            _ => out.upcasts.push(upcast(&meta)?),
        }
        Ok(())
    });
    if let Err(e) = result {
        cx.syn_error(e);
    } else if !any {
        let expected = if variant {
            format!("`#[event(..)]` with at least one of {VARIANT_EVENT_KEYS}")
        } else {
            "`#[event(name = \"EventTypeName\")]`".to_owned()
        };
        cx.error_spanned_by(attr, format!("expected {expected}"));
    }
    out
}

/// `upcast(from = N, with = path)`.
fn upcast(meta: &ParseNestedMeta<'_>) -> syn::Result<Upcast> {
    let span = meta.path.span();
    let mut from = None;
    let mut with = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident("from") && from.is_none() {
            from = Some(number(&inner, "from")?);
        } else if inner.path.is_ident("with") && with.is_none() {
            with = Some(inner.value()?.parse::<Path>()?);
        } else {
            return Err(inner.error(
                "expected `upcast(from = N, with = function)`, each key once: the upcaster \
                 from stored version N to N + 1",
            ));
        }
        Ok(())
    })?;
    match (from, with) {
        (Some(from), Some(with)) => Ok(Upcast { span, from, with }),
        _ => Err(syn::Error::new(
            span,
            "expected `upcast(from = N, with = function)`: the version it reads and a \
             `fn(serde_json::Value) -> Result<serde_json::Value, String>`",
        )),
    }
}

/// Attributes of the language and of common tools that are never taken for a misspelled helper.
const KNOWN_ATTRIBUTES: &[&str] = &[
    "allow",
    "cfg",
    "cfg_attr",
    "cold",
    "deny",
    "deprecated",
    "doc",
    "expect",
    "forbid",
    "ignore",
    "inline",
    "instrument",
    "must_use",
    "track_caller",
    "warn",
];

/// The helper attribute (one of `helpers`) that `attr` is, or looks like a misspelling of
/// (`#[aply]`, `#[Apply]`, `#[catchall]`): `Some((helper, exact))`. A misspelling is reported
/// at the attribute's path with the right spelling, and the attribute is then taken as the
/// helper it resembles, so the method is not checked as something it was not meant to be.
pub(crate) fn helper<'h>(cx: &Ctxt, attr: &Attribute, helpers: &[&'h str]) -> Option<&'h str> {
    let ident = attr.path().get_ident()?.to_string();
    if let Some(helper) = helpers.iter().find(|h| **h == ident) {
        return Some(helper);
    }
    let helper = misspelled_helper(&ident, helpers)?;
    cx.error_spanned_by(
        attr.path(),
        format!("unknown attribute `#[{ident}]`: did you mean `#[{helper}]`?"),
    );
    Some(helper)
}

/// The helper that `ident` is a likely misspelling of: at most two edits away (letters added,
/// removed or changed, ignoring case and `_`), and not a known attribute of its own.
pub(crate) fn misspelled_helper<'h>(ident: &str, helpers: &[&'h str]) -> Option<&'h str> {
    if KNOWN_ATTRIBUTES.contains(&ident) || ident.len() < 3 {
        return None;
    }
    let normalize = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let written = normalize(ident);
    helpers
        .iter()
        .copied()
        .find(|helper| edit_distance(&written, &normalize(helper)) <= 2)
}

/// Levenshtein distance.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Whether a method carries `#[catch_all]` (with no arguments; arguments are reported).
pub(crate) fn check_catch_all(cx: &Ctxt, attr: &Attribute) {
    if let Err(e) = attr.meta.require_path_only() {
        cx.syn_error(syn::Error::new(
            e.span(),
            "`#[catch_all]` takes no arguments: the method receives every event of the \
             subscribed entity types",
        ));
    }
}
