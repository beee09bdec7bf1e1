//! The internal model: what each macro found in the user's item, as references into the syn
//! tree so that every error and every generated assertion can point at the user's own tokens.
//! `from_syn` functions only take the item apart; `check.rs` decides what is acceptable and
//! turns the model into the validated plans (`*Plan`) that `expand.rs` generates code from.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Fields, FnArg, Ident, ImplItem, ImplItemFn, Item, ItemImpl,
    LitStr, PatType, Type,
};

use crate::attr::{self, AggregateAttr, SubscriberAttr};
use crate::check::Ctxt;

// ---------------------------------------------------------------------------------------------
// #[derive(Events)]

/// An enum deriving `Events`.
pub(crate) struct EventsEnum<'a> {
    pub ident: &'a Ident,
    pub variants: Vec<EventVariant<'a>>,
}

/// One variant `Variant(EventStruct)` and the stored name of its event.
pub(crate) struct EventVariant<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
    pub name: Option<EventTypeName>,
    /// `version`, `aliases(..)` and `upcast(..)` of its `#[event(..)]` (`name` is in `name`).
    pub attr: attr::EventAttr,
}

/// An event type name and where it comes from (the type, or `#[event(name = "..")]`).
pub(crate) struct EventTypeName {
    pub value: String,
    pub span: Span,
    pub explicit: bool,
}

impl<'a> EventsEnum<'a> {
    /// `None` when the item is not an enum (reported).
    pub fn from_syn(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let data = match &input.data {
            Data::Enum(data) => data,
            Data::Struct(data) => {
                let keyword = data.struct_token;
                let ident = &input.ident;
                cx.error_spanned_by(quote!(#keyword #ident), NOT_AN_ENUM);
                return None;
            }
            Data::Union(data) => {
                let keyword = data.union_token;
                let ident = &input.ident;
                cx.error_spanned_by(quote!(#keyword #ident), NOT_AN_ENUM);
                return None;
            }
        };
        let mut variants = Vec::new();
        for variant in &data.variants {
            let mut event_attr = attr::event_attr_of(cx, &variant.attrs);
            let explicit = event_attr.name.take();
            let ty = match &variant.fields {
                Fields::Unnamed(fields) if fields.unnamed.len() == 1 => &fields.unnamed[0].ty,
                _ => {
                    let ident = &variant.ident;
                    cx.error_spanned_by(
                        variant,
                        format!(
                            "each variant of an event set wraps exactly one event struct, e.g. \
                             `{ident}({ident})`"
                        ),
                    );
                    continue;
                }
            };
            let name = match explicit {
                Some(lit) => Some(EventTypeName {
                    value: lit.value(),
                    span: lit.span(),
                    explicit: true,
                }),
                None => type_name(ty).map(|(value, span)| EventTypeName {
                    value,
                    span,
                    explicit: false,
                }),
            };
            if name.is_none() {
                cx.error_spanned_by(
                    ty,
                    "cannot name this event type: use a struct type such as `OrderCreated`, or \
                     name it with `#[event(name = \"..\")]`",
                );
            }
            variants.push(EventVariant {
                ident: &variant.ident,
                ty,
                name,
                attr: event_attr,
            });
        }
        if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
            cx.error_spanned_by(
                &input.generics,
                "generic event sets are not supported: an event set names concrete event structs",
            );
        }
        Some(EventsEnum {
            ident: &input.ident,
            variants,
        })
    }
}

const NOT_AN_ENUM: &str = "`#[derive(Events)]` goes on an enum with one variant per event \
                           struct, e.g. `enum OrderEvent { Created(OrderCreated) }`";

/// The name of a type as events are stored: its last path segment (`OrderCreated` for
/// `crate::orders::OrderCreated`), without `r#`.
pub(crate) fn type_name(ty: &Type) -> Option<(String, Span)> {
    match ty {
        Type::Group(group) => type_name(&group.elem),
        Type::Paren(paren) => type_name(&paren.elem),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            Some((last.ident.unraw().to_string(), last.ident.span()))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// #[aggregate]

/// A struct under `#[aggregate(..)]`.
pub(crate) struct AggregateStruct<'a> {
    pub item: &'a syn::ItemStruct,
    pub attr: AggregateAttr,
}

/// What `#[aggregate]` generates, once checked.
pub(crate) struct AggregatePlan<'a> {
    pub ident: &'a Ident,
    pub entity_type: String,
    pub entity_type_aliases: Vec<String>,
    pub events: &'a syn::Path,
    pub snapshot_every: Option<u64>,
    pub snapshot_version: Option<u32>,
    pub ignore: &'a [Type],
}

// ---------------------------------------------------------------------------------------------
// #[command_handler] and #[event_handler]

/// An inherent impl block under `#[command_handler]` or `#[event_handler]`.
pub(crate) struct HandlerImpl<'a> {
    pub item: &'a ItemImpl,
    pub methods: Vec<Method<'a>>,
}

/// One method of such an impl, taken apart.
pub(crate) struct Method<'a> {
    pub func: &'a ImplItemFn,
    /// Carries `#[apply]`.
    pub apply: bool,
    /// From `#[event(name = "..")]`.
    pub event_name: Option<LitStr>,
    /// The method's `#[catch_all]` attribute (`#[event_handler]`: receives every event).
    pub catch_all: Option<&'a Attribute>,
    pub receiver: Option<&'a syn::Receiver>,
    /// The parameters after the receiver.
    pub params: Vec<&'a PatType>,
}

impl<'a> HandlerImpl<'a> {
    pub fn from_syn(cx: &Ctxt, item: &'a ItemImpl, macro_name: &str) -> Self {
        if let Some((_, path, _)) = &item.trait_ {
            cx.error_spanned_by(
                path,
                format!(
                    "`#[{macro_name}]` goes on an inherent impl block (`impl MyType {{ .. }}`), \
                     not on a trait impl: it implements the traits for you"
                ),
            );
        }
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            cx.error_spanned_by(
                &item.generics,
                format!("`#[{macro_name}]` does not support generic impl blocks"),
            );
        }
        // The methods of a trait impl are not ours to check; the error above is enough.
        if item.trait_.is_some() {
            return HandlerImpl {
                item,
                methods: Vec::new(),
            };
        }
        let methods = item
            .items
            .iter()
            .filter_map(|item| match item {
                ImplItem::Fn(func) => Some(Method::from_syn(cx, func, macro_name)),
                _ => None,
            })
            .collect();
        HandlerImpl { item, methods }
    }
}

/// The helper attributes of `#[command_handler]` methods.
pub(crate) const COMMAND_HELPERS: &[&str] = &["apply"];
/// The helper attributes of `#[event_handler]` methods.
pub(crate) const EVENT_HELPERS: &[&str] = &["event", "catch_all"];

impl<'a> Method<'a> {
    fn from_syn(cx: &Ctxt, func: &'a ImplItemFn, macro_name: &str) -> Self {
        let mut apply = false;
        let mut event_name = None;
        let mut catch_all: Option<&'a Attribute> = None;
        if macro_name == "command_handler" {
            for attr in &func.attrs {
                if attr::helper(cx, attr, COMMAND_HELPERS).is_some() {
                    attr::is_apply(cx, attr);
                    apply = true;
                }
            }
        } else {
            let mut events = Vec::new();
            for attr in &func.attrs {
                match attr::helper(cx, attr, EVENT_HELPERS) {
                    Some("catch_all") => {
                        if attr.path().is_ident("catch_all") {
                            attr::check_catch_all(cx, attr);
                        }
                        if catch_all.is_some() {
                            cx.error_spanned_by(attr, "`#[catch_all]` is given twice; keep one");
                        } else {
                            catch_all = Some(attr);
                        }
                    }
                    Some(_) => events.push(attr),
                    None => {}
                }
            }
            event_name = attr::event_name_among(cx, events);
        }
        let mut receiver = None;
        let mut params = Vec::new();
        for input in &func.sig.inputs {
            match input {
                FnArg::Receiver(r) => receiver = Some(r),
                FnArg::Typed(p) => params.push(p),
            }
        }
        Method {
            func,
            apply,
            event_name,
            catch_all,
            receiver,
            params,
        }
    }

    pub fn ident(&self) -> &'a Ident {
        &self.func.sig.ident
    }

    /// The span of the parameter list, for errors about missing parameters.
    pub fn parens(&self) -> Span {
        self.func.sig.paren_token.span.join()
    }
}

/// What `#[command_handler]` generates, once checked.
#[derive(Default)]
pub(crate) struct CommandPlan<'a> {
    pub applies: Vec<ApplyFn<'a>>,
    pub commands: Vec<CommandFn<'a>>,
}

/// `#[apply] fn method(&mut self, event: &Event)`.
pub(crate) struct ApplyFn<'a> {
    pub method: &'a Ident,
    pub event: &'a Type,
}

/// `fn method(&self, command: Command) -> Result<Output, Error>`.
pub(crate) struct CommandFn<'a> {
    pub method: &'a Ident,
    pub command: &'a Type,
    pub by_ref: bool,
    pub output: Output<'a>,
    pub error: &'a Type,
}

/// How a command handler's success value becomes events.
pub(crate) enum Output<'a> {
    /// Anything else: one event.
    One(&'a Type),
    /// `Vec<T>`: each element.
    Many(&'a Type),
    /// `(A, B, ..)`: each element, in order (none for `()`).
    Tuple(Vec<&'a Type>),
}

/// What `#[event_handler]` generates, once checked.
pub(crate) struct SubscriberPlan<'a> {
    pub self_ty: &'a Type,
    pub id: String,
    pub entities: Vec<Entity<'a>>,
    /// The aggregate whose events every handler must take (`subscribe = Path`).
    pub checked_against: Option<&'a syn::Path>,
    pub attr: &'a SubscriberAttr,
    pub handlers: Vec<EventFn<'a>>,
    /// The `#[catch_all]` method: every event without a typed handler goes to it, so the
    /// subscription asks for every event type.
    pub catch_all: Option<CatchAllFn<'a>>,
}

/// `#[catch_all] async fn method(&self, ctx: &EventContext) -> Result<(), Error>`.
pub(crate) struct CatchAllFn<'a> {
    pub method: &'a Ident,
    pub error: &'a Type,
}

/// A subscribed entity type.
pub(crate) enum Entity<'a> {
    Name(String),
    Aggregate(&'a syn::Path),
}

/// `async fn method(&self, ctx: &EventContext, event: &Event) -> Result<(), Error>`.
pub(crate) struct EventFn<'a> {
    pub method: &'a Ident,
    pub event: &'a Type,
    pub error: &'a Type,
    pub name: String,
}

/// Tokens covering the head of an item (`struct Order`, `fn run`), for errors about the item as
/// a whole without underlining its entire body.
pub(crate) fn item_head(item: &Item) -> TokenStream {
    match item {
        Item::Struct(i) => {
            let (k, n) = (&i.struct_token, &i.ident);
            quote!(#k #n)
        }
        Item::Enum(i) => {
            let (k, n) = (&i.enum_token, &i.ident);
            quote!(#k #n)
        }
        Item::Union(i) => {
            let (k, n) = (&i.union_token, &i.ident);
            quote!(#k #n)
        }
        Item::Fn(i) => {
            let (k, n) = (&i.sig.fn_token, &i.sig.ident);
            quote!(#k #n)
        }
        Item::Trait(i) => {
            let (k, n) = (&i.trait_token, &i.ident);
            quote!(#k #n)
        }
        Item::Mod(i) => {
            let (k, n) = (&i.mod_token, &i.ident);
            quote!(#k #n)
        }
        Item::Impl(i) => {
            let (k, t) = (&i.impl_token, &i.self_ty);
            quote!(#k #t)
        }
        other => {
            let span = other.span();
            quote::quote_spanned!(span=> item)
        }
    }
}
