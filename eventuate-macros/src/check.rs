//! Validation: decides whether what the user wrote is acceptable and turns the model of
//! `ast.rs` into the plans `expand.rs` generates code from. Every problem is recorded in the
//! [`Ctxt`] at the user's token and checking goes on, so one build reports every mistake.

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::Span;
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::{GenericArgument, LitStr, PathArguments, ReturnType, Type};

use crate::ast::{
    AggregatePlan, AggregateStruct, ApplyFn, CatchAllFn, CommandFn, CommandPlan, Entity, EventFn,
    EventsEnum, HandlerImpl, Method, Output, SubscriberPlan, type_name,
};
use crate::attr::{EntityRef, Subscribe, SubscriberAttr};

/// Collects errors, to be reported together (after serde_derive's `Ctxt`).
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    pub fn new() -> Self {
        Ctxt::default()
    }

    /// Records an error spanning `tokens`.
    pub fn error_spanned_by(&self, tokens: impl ToTokens, message: impl Display) {
        self.errors
            .borrow_mut()
            .push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error at `span`.
    pub fn error_at(&self, span: Span, message: impl Display) {
        self.errors
            .borrow_mut()
            .push(syn::Error::new(span, message));
    }

    /// Records a parse error.
    pub fn syn_error(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    /// All errors combined into one, if any.
    pub fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_inner().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

/// Why `name` is not an acceptable entity type, event type or subscriber id (the rule of
/// `eventuate_core::name::validate_identifier`, checked here so a bad name fails the build).
pub(crate) fn identifier_problem(name: &str) -> Option<&'static str> {
    let first = name.chars().next()?;
    if name.len() > 100 {
        return Some("it is longer than 100 bytes");
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Some("it must start with an ASCII letter or `_`");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Some("only ASCII letters, digits, `_`, `-` and `.` are allowed");
    }
    None
}

fn check_identifier(cx: &Ctxt, kind: &str, name: &str, span: Span) {
    let problem = if name.is_empty() {
        Some("it is empty")
    } else {
        identifier_problem(name)
    };
    if let Some(problem) = problem {
        cx.error_at(span, format!("invalid {kind} `{name}`: {problem}"));
    }
}

/// A type as written, to compare two types and to name one in a message.
pub(crate) fn type_key(ty: &Type) -> String {
    let text = ty.to_token_stream().to_string();
    // `quote` spaces tokens out; `Vec < u8 >` reads worse than `Vec<u8>` in a message.
    text.replace(" < ", "<")
        .replace(" <", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" ,", ",")
        .replace("& ", "&")
}

fn type_key_of(tokens: &impl ToTokens) -> String {
    type_key(&Type::Verbatim(tokens.to_token_stream()))
}

fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => peel(&group.elem),
        Type::Paren(paren) => peel(&paren.elem),
        _ => ty,
    }
}

// ---------------------------------------------------------------------------------------------
// #[derive(Events)]

pub(crate) fn events(cx: &Ctxt, set: &EventsEnum<'_>) {
    let mut names: Vec<(&str, &syn::Ident)> = Vec::new();
    let mut types: Vec<(String, &syn::Ident)> = Vec::new();
    for variant in &set.variants {
        if let Some(name) = &variant.name {
            check_identifier(cx, "event type name", &name.value, name.span);
            if let Some((_, first)) = names.iter().find(|(n, _)| *n == name.value) {
                let hint = if name.explicit {
                    ""
                } else {
                    "; give one of them another name with `#[event(name = \"..\")]`"
                };
                cx.error_at(
                    name.span,
                    format!(
                        "duplicate event type name `{}`: variant `{first}` already uses it{hint}",
                        name.value
                    ),
                );
            } else {
                names.push((&name.value, variant.ident));
            }
        }
        let key = type_key(variant.ty);
        if let Some((_, first)) = types.iter().find(|(t, _)| *t == key) {
            cx.error_spanned_by(
                variant.ty,
                format!(
                    "event `{key}` is already in this set (variant `{first}`): each event \
                     struct appears once, so that `From<{key}>` and apply routing are unambiguous"
                ),
            );
        } else {
            types.push((key, variant.ident));
        }
        versions(cx, variant);
    }
    aliases(cx, set);
}

/// `version = N` and the `upcast(..)` chain of one event: every step from the oldest upcaster
/// to the current version, once each.
fn versions(cx: &Ctxt, variant: &crate::ast::EventVariant<'_>) {
    let attr = &variant.attr;
    let Some(version) = &attr.version else {
        if let Some(first) = attr.upcasts.first() {
            cx.error_at(
                first.span,
                "`upcast(..)` needs the event's current version: add `version = N` to this \
                 `#[event(..)]`",
            );
        }
        return;
    };
    let current = version.value;
    if current == 0 {
        cx.error_spanned_by(
            &version.lit,
            "schema versions start at 1 (an event stored without a version is version 1)",
        );
        return;
    }
    let mut froms: Vec<u32> = Vec::new();
    for step in &attr.upcasts {
        let from = step.from.value;
        if from == 0 {
            cx.error_spanned_by(&step.from.lit, "schema versions start at 1");
        } else if from >= current {
            cx.error_spanned_by(
                &step.from.lit,
                format!(
                    "`from = {from}` is not older than the event's version {current}: an \
                     upcaster turns stored version `from` into `from + 1`, up to the current \
                     version"
                ),
            );
        } else if froms.contains(&from) {
            cx.error_spanned_by(
                &step.from.lit,
                format!(
                    "a second upcaster from version {from}: each version has one upcaster to \
                     the next"
                ),
            );
        } else {
            froms.push(from);
        }
    }
    if current == 1 || froms.is_empty() {
        if current > 1 && attr.upcasts.is_empty() {
            cx.error_spanned_by(
                &version.lit,
                format!(
                    "version {current} needs upcasters from the older versions, at least \
                     `upcast(from = {}, with = function)`: stored events of version {} could \
                     not be read",
                    current - 1,
                    current - 1
                ),
            );
        }
        return;
    }
    let oldest = froms.iter().copied().min().unwrap_or(1);
    for missing in (oldest..current).filter(|v| !froms.contains(v)) {
        cx.error_spanned_by(
            &version.lit,
            format!(
                "the upcaster chain has a gap: no upcaster from version {missing} to {}; \
                 add `upcast(from = {missing}, with = function)` so that version {oldest} \
                 reaches version {current}",
                missing + 1
            ),
        );
    }
}

/// `aliases(..)`: valid names, each read as one event only (never another event's name or
/// alias, in this set).
fn aliases(cx: &Ctxt, set: &EventsEnum<'_>) {
    let mut seen: Vec<(String, &syn::Ident)> = Vec::new();
    for variant in &set.variants {
        for alias in &variant.attr.aliases {
            let value = alias.value();
            check_identifier(cx, "event type name", &value, alias.span());
            let named = set
                .variants
                .iter()
                .find(|v| v.name.as_ref().is_some_and(|n| n.value == value));
            if let Some(other) = named {
                let whose = if other.ident == variant.ident {
                    "it is this event's own name".to_owned()
                } else {
                    format!("variant `{}` is stored under that name", other.ident)
                };
                cx.error_spanned_by(
                    alias,
                    format!(
                        "alias `{value}` is ambiguous: {whose}; a stored name reads as one \
                         event only"
                    ),
                );
            } else if let Some((_, other)) = seen.iter().find(|(n, _)| *n == value) {
                cx.error_spanned_by(
                    alias,
                    format!(
                        "alias `{value}` is already an alias of variant `{other}`; a stored \
                         name reads as one event only"
                    ),
                );
            } else {
                seen.push((value, variant.ident));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// #[aggregate]

pub(crate) fn aggregate<'a>(cx: &Ctxt, agg: &'a AggregateStruct<'a>) -> Option<AggregatePlan<'a>> {
    let item = agg.item;
    let attr = &agg.attr;
    let generic = !item.generics.params.is_empty() || item.generics.where_clause.is_some();
    if generic {
        cx.error_spanned_by(
            &item.generics,
            "generic aggregates are not supported: the stored entity type names one concrete \
             struct",
        );
    }
    let entity_type = match &attr.name {
        Some(name) => {
            check_identifier(cx, "aggregate name", &name.value(), name.span());
            name.value()
        }
        None => {
            let name = item.ident.unraw().to_string();
            if identifier_problem(&name).is_some() {
                check_identifier(cx, "aggregate name", &name, item.ident.span());
            }
            name
        }
    };
    let entity_type_aliases = entity_type_aliases(cx, &entity_type, &attr.aliases);
    if attr.events.is_none() {
        cx.error_at(
            Span::call_site(),
            "missing `events`: name the aggregate's event set, e.g. \
             `#[aggregate(events = OrderEvent)]` with `#[derive(Events)] enum OrderEvent { .. }`",
        );
    }
    if let Some(every) = &attr.snapshot_every {
        if every.value == 0 {
            cx.error_spanned_by(
                &every.lit,
                "`snapshot_every` must be at least 1 (leave it out to take no snapshots)",
            );
        }
    }
    let mut ignored: Vec<String> = Vec::new();
    for ty in &attr.ignore {
        let key = type_key(ty);
        if ignored.contains(&key) {
            cx.error_spanned_by(ty, format!("`{key}` is already ignored"));
        } else {
            ignored.push(key);
        }
    }
    if generic {
        // No stub impl either: it could not name the type.
        return None;
    }
    Some(AggregatePlan {
        ident: &item.ident,
        entity_type,
        entity_type_aliases,
        events: attr.events.as_ref()?,
        snapshot_every: attr.snapshot_every.as_ref().map(|n| n.value),
        snapshot_version: attr.snapshot_version.as_ref().map(|n| n.value),
        ignore: &attr.ignore,
    })
}

/// `aliases(..)` of `#[aggregate]`: valid names, none the aggregate's own name, none twice. An
/// entity is read under each of them, so a repeated or self-naming alias is a mistake.
fn entity_type_aliases(cx: &Ctxt, entity_type: &str, aliases: &[LitStr]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for alias in aliases {
        let value = alias.value();
        check_identifier(cx, "aggregate alias", &value, alias.span());
        if value == entity_type {
            cx.error_spanned_by(
                alias,
                format!(
                    "alias `{value}` is the aggregate's own name; list only the older names its \
                     history is stored under"
                ),
            );
        } else if seen.contains(&value) {
            cx.error_spanned_by(alias, format!("alias `{value}` is listed twice"));
        } else {
            seen.push(value);
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// #[command_handler]

pub(crate) fn command_impl<'a>(cx: &Ctxt, imp: &HandlerImpl<'a>) -> CommandPlan<'a> {
    let mut plan = CommandPlan::default();
    for method in &imp.methods {
        if method.apply {
            if let Some(apply) = apply_fn(cx, method) {
                if let Some(first) = plan
                    .applies
                    .iter()
                    .find(|a| type_key(a.event) == type_key(apply.event))
                {
                    cx.error_spanned_by(
                        apply.event,
                        format!(
                            "a second `#[apply]` method for event `{}`: `{}` already applies it",
                            type_key(apply.event),
                            first.method
                        ),
                    );
                } else {
                    plan.applies.push(apply);
                }
            }
        } else if let Some(command) = command_fn(cx, method, &imp.item.self_ty) {
            if let Some(first) = plan
                .commands
                .iter()
                .find(|c| type_key(c.command) == type_key(command.command))
            {
                cx.error_spanned_by(
                    command.command,
                    format!(
                        "a second handler for command `{}`: `{}` already handles it; an \
                         aggregate has one handler per command type",
                        type_key(command.command),
                        first.method
                    ),
                );
            } else {
                plan.commands.push(command);
            }
        }
    }
    plan
}

fn not_generic(cx: &Ctxt, method: &Method<'_>, what: &str) {
    let generics = &method.func.sig.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        cx.error_spanned_by(generics, format!("{what} cannot be generic"));
    }
}

fn apply_fn<'a>(cx: &Ctxt, method: &Method<'a>) -> Option<ApplyFn<'a>> {
    let sig = &method.func.sig;
    not_generic(cx, method, "an `#[apply]` method");
    if let Some(token) = &sig.asyncness {
        cx.error_spanned_by(
            token,
            "an `#[apply]` method cannot be `async`: applying an event only changes the state",
        );
    }
    match method.receiver {
        Some(r) if r.reference.is_some() && r.mutability.is_some() => {}
        Some(r) => cx.error_spanned_by(
            r,
            "an `#[apply]` method changes the aggregate's state: take `&mut self`",
        ),
        None => cx.error_at(
            method.parens(),
            "an `#[apply]` method takes `&mut self` and the event: \
             `fn on_event(&mut self, event: &Event)`",
        ),
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if !matches!(peel(ty), Type::Tuple(t) if t.elems.is_empty()) {
            cx.error_spanned_by(
                ty,
                "an `#[apply]` method returns nothing: events are facts, applying one cannot fail",
            );
        }
    }
    // On a mistake the event type is still taken, for the stub impl emitted with the errors.
    let event = match method.params.as_slice() {
        [param] => match peel(&param.ty) {
            Type::Reference(r) if r.mutability.is_none() => Some(&*r.elem),
            ty => {
                cx.error_spanned_by(
                    &param.ty,
                    "an `#[apply]` method takes the event by shared reference: `event: &Event`",
                );
                match ty {
                    Type::Reference(r) => Some(&*r.elem),
                    ty => Some(ty),
                }
            }
        },
        [] => {
            cx.error_at(
                method.parens(),
                "an `#[apply]` method takes the event after `&mut self`: \
                 `fn on_event(&mut self, event: &Event)`",
            );
            None
        }
        [_, extra @ ..] => {
            cx.error_spanned_by(
                quote!(#(#extra),*),
                "an `#[apply]` method takes exactly one parameter after `&mut self`: the event",
            );
            None
        }
    }?;
    Some(ApplyFn {
        method: method.ident(),
        event,
    })
}

fn command_fn<'a>(cx: &Ctxt, method: &Method<'a>, self_ty: &Type) -> Option<CommandFn<'a>> {
    let sig = &method.func.sig;
    let returns_result = match &sig.output {
        ReturnType::Type(_, ty) => result_args(ty).is_some(),
        ReturnType::Default => false,
    };
    // A method with `self`, no command and no `Result`: a helper, not a handler; one error
    // that says where it goes, instead of one per rule of command handlers it breaks.
    if method.receiver.is_some() && method.params.is_empty() && !returns_result {
        cx.error_spanned_by(
            &sig.ident,
            format!(
                "`{}` takes no command, so it is not a command handler: every method of a \
                 `#[command_handler]` impl is a command handler `fn(&self, command: C) -> \
                 Result<Event, Error>` or an `#[apply]` method; move helper methods to another \
                 `impl {}` block",
                method.ident(),
                type_key(self_ty),
            ),
        );
        return None;
    }
    not_generic(cx, method, "a command handler");
    if let Some(token) = &sig.asyncness {
        cx.error_spanned_by(
            token,
            "a command handler cannot be `async`: it decides on the current state and does no \
             I/O; do the I/O before sending the command, or in an `#[event_handler]`",
        );
    }
    match method.receiver {
        Some(r) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(r) if r.mutability.is_some() => cx.error_spanned_by(
            r,
            "command handlers must not mutate the aggregate; take `&self` and return events \
             (state changes belong in `#[apply]` methods)",
        ),
        Some(r) => cx.error_spanned_by(r, "a command handler takes `&self`"),
        None => {
            cx.error_at(
                method.parens(),
                format!(
                    "`{}` has no `self`: every method of a `#[command_handler]` impl is a \
                     command handler `fn(&self, command: C) -> Result<Event, Error>` or an \
                     `#[apply]` method; move other functions to another `impl {}` block",
                    method.ident(),
                    type_key(self_ty),
                ),
            );
            return None;
        }
    }
    let command = match method.params.as_slice() {
        [param] => match peel(&param.ty) {
            Type::Reference(r) if r.mutability.is_some() => {
                cx.error_spanned_by(
                    &param.ty,
                    "take the command by value or by shared reference (`&Command`)",
                );
                Some((&*r.elem, true))
            }
            Type::Reference(r) => Some((&*r.elem, true)),
            Type::ImplTrait(_) | Type::Infer(_) => {
                cx.error_spanned_by(&param.ty, "the command must be a concrete type");
                None
            }
            ty => Some((ty, false)),
        },
        [] => {
            cx.error_at(
                method.parens(),
                "a command handler takes exactly one command parameter after `&self`: \
                 `fn handle(&self, command: Command)`",
            );
            None
        }
        [_, extra @ ..] => {
            cx.error_spanned_by(
                quote!(#(#extra),*),
                "a command handler takes exactly one command parameter after `&self`; put the \
                 values in the command struct",
            );
            None
        }
    };
    let result = match &sig.output {
        ReturnType::Type(_, ty) => {
            let result = result_args(ty);
            if result.is_none() {
                cx.error_spanned_by(
                    ty,
                    format!(
                        "a command handler returns `Result<Event, Error>` (or \
                         `Result<Vec<Event>, Error>`, or `Result<(EventA, EventB), Error>`); \
                         if `{}` is a helper method, move it to another `impl {}` block",
                        method.ident(),
                        type_key(self_ty),
                    ),
                );
            }
            result
        }
        ReturnType::Default => {
            cx.error_spanned_by(
                &sig.ident,
                "a command handler returns `Result<Event, Error>`: the new events, or why the \
                 command is refused",
            );
            None
        }
    };
    let (command, by_ref) = command?;
    let (ok, error) = result?;
    Some(CommandFn {
        method: method.ident(),
        command,
        by_ref,
        output: output(ok),
        error,
    })
}

/// `R` and `E` of a `Result<R, E>` (by the type's last path segment).
fn result_args(ty: &Type) -> Option<(&Type, &Type)> {
    let Type::Path(path) = peel(ty) else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(ok), Some(err), None) if args.args.len() == 2 => Some((ok, err)),
        _ => None,
    }
}

fn output(ty: &Type) -> Output<'_> {
    match peel(ty) {
        Type::Tuple(tuple) => Output::Tuple(tuple.elems.iter().collect()),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last();
            match last.map(|s| (&s.ident, &s.arguments)) {
                Some((ident, PathArguments::AngleBracketed(args)))
                    if ident == "Vec" && args.args.len() == 1 =>
                {
                    match &args.args[0] {
                        GenericArgument::Type(elem) => Output::Many(elem),
                        _ => Output::One(ty),
                    }
                }
                _ => Output::One(ty),
            }
        }
        _ => Output::One(ty),
    }
}

// ---------------------------------------------------------------------------------------------
// #[event_handler]

pub(crate) fn subscriber<'a>(
    cx: &Ctxt,
    attr: &'a SubscriberAttr,
    imp: &HandlerImpl<'a>,
) -> SubscriberPlan<'a> {
    let self_ty = &*imp.item.self_ty;
    let mut entities = Vec::new();
    let mut checked_against = None;
    match &attr.subscribe {
        None => cx.error_at(
            Span::call_site(),
            "missing `subscribe`: name the entity type(s) whose events this subscriber \
             consumes, e.g. `subscribe = \"Order\"`, `subscribe = Order` (an aggregate type, \
             checked at compile time) or `subscribe = [\"Order\", \"Customer\"]`",
        ),
        Some(Subscribe::One(entity)) => {
            if let EntityRef::Aggregate(path) = entity {
                checked_against = Some(path);
            }
            entities.push(entity_of(cx, entity));
        }
        Some(Subscribe::List { span, items }) => {
            if items.is_empty() {
                cx.error_at(*span, "`subscribe` needs at least one entity type");
            }
            let mut seen: Vec<String> = Vec::new();
            for item in items {
                let entity = entity_of(cx, item);
                let key = match item {
                    EntityRef::Name(lit) => lit.value(),
                    EntityRef::Aggregate(path) => type_key_of(path),
                };
                if seen.contains(&key) {
                    let message = format!("`{key}` is already in the list");
                    match item {
                        EntityRef::Name(lit) => cx.error_spanned_by(lit, message),
                        EntityRef::Aggregate(path) => cx.error_spanned_by(path, message),
                    }
                } else {
                    seen.push(key);
                }
                entities.push(entity);
            }
        }
    }
    let id = match &attr.id {
        Some(id) => {
            check_identifier(cx, "subscriber id", &id.value(), id.span());
            id.value()
        }
        None => match type_name(self_ty) {
            Some((name, _)) if identifier_problem(&name).is_none() => name,
            _ => {
                cx.error_spanned_by(
                    self_ty,
                    "cannot use this type's name as the subscriber id: give one with \
                     `id = \"..\"`",
                );
                String::new()
            }
        },
    };
    if let Some(start) = &attr.start {
        if !matches!(start.value().as_str(), "beginning" | "now") {
            cx.error_spanned_by(
                start,
                "`start` is \"beginning\" (read the whole history, the default) or \"now\" (only \
                 events stored after the subscriber first runs)",
            );
        }
    }
    if let Some(n) = &attr.partitions {
        if !(1..=1024).contains(&n.value) {
            cx.error_spanned_by(&n.lit, "`partitions` must be between 1 and 1024");
        }
    }
    if let Some(n) = &attr.max_attempts {
        if n.value == 0 {
            cx.error_spanned_by(&n.lit, "`max_attempts` must be at least 1");
        }
    }

    let mut handlers: Vec<EventFn<'a>> = Vec::new();
    let mut catch_all: Option<CatchAllFn<'a>> = None;
    let mut catch_all_seen: Option<&syn::Ident> = None;
    for method in &imp.methods {
        if let Some(attr) = method.catch_all {
            if let Some(first) = catch_all_seen {
                cx.error_spanned_by(
                    attr,
                    format!(
                        "a second `#[catch_all]` method: `{first}` already receives every event \
                         without a typed handler; a subscriber has at most one"
                    ),
                );
                continue;
            }
            catch_all_seen = Some(method.ident());
            catch_all = catch_all_fn(cx, method);
            continue;
        }
        let Some(handler) = event_fn(cx, method) else {
            continue;
        };
        if let Some(first) = handlers.iter().find(|h| h.name == handler.name) {
            cx.error_spanned_by(
                handler.event,
                format!(
                    "a second handler for event type `{}`: `{}` already handles it; a \
                     subscriber has one handler per event type",
                    handler.name, first.method
                ),
            );
        } else {
            handlers.push(handler);
        }
    }
    if imp.methods.is_empty() && imp.item.trait_.is_none() {
        cx.error_spanned_by(
            self_ty,
            "this `#[event_handler]` impl has no handlers: add \
             `async fn on_event(&self, ctx: &EventContext, event: &Event) -> Result<(), HandlerError>`",
        );
    }
    SubscriberPlan {
        self_ty,
        id,
        entities,
        checked_against,
        attr,
        handlers,
        catch_all,
    }
}

fn entity_of<'a>(cx: &Ctxt, entity: &'a EntityRef) -> Entity<'a> {
    match entity {
        EntityRef::Name(lit) => {
            check_identifier(cx, "entity type", &lit.value(), lit.span());
            Entity::Name(lit.value())
        }
        EntityRef::Aggregate(path) => Entity::Aggregate(path),
    }
}

const SHAPE: &str = "`async fn on_event(&self, ctx: &EventContext, event: &Event) -> \
                     Result<(), HandlerError>`";

/// The checks every `#[event_handler]` method shares: not generic, `async`, `&self`. `false`
/// when it has no `self` (then nothing else about it is reported).
fn handler_head(cx: &Ctxt, method: &Method<'_>, shape: &str) -> bool {
    let sig = &method.func.sig;
    not_generic(cx, method, "an event handler");
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            format!("event handlers must be `async`: {shape}"),
        );
    }
    match method.receiver {
        Some(r) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(r) if r.mutability.is_some() => cx.error_spanned_by(
            r,
            "an event handler takes `&self`: one subscriber value serves every partition \
             concurrently; keep mutable state behind a lock or in the database",
        ),
        Some(r) => cx.error_spanned_by(r, format!("an event handler takes `&self`: {shape}")),
        None => {
            cx.error_at(
                method.parens(),
                format!(
                    "`{}` has no `self`: every method of an `#[event_handler]` impl is a \
                     handler {shape}; move other functions to another impl block",
                    method.ident()
                ),
            );
            return false;
        }
    }
    true
}

/// The `E` of an event handler's `Result<(), E>` (whether it converts into `HandlerError` is
/// checked by the generated code, at `E`).
fn handler_error<'a>(cx: &Ctxt, method: &Method<'a>, shape: &str) -> Option<&'a Type> {
    let sig = &method.func.sig;
    match &sig.output {
        ReturnType::Type(_, ty) => match result_args(ty) {
            Some((ok, error)) if matches!(peel(ok), Type::Tuple(t) if t.elems.is_empty()) => {
                Some(error)
            }
            Some((ok, _)) => {
                cx.error_spanned_by(
                    ok,
                    "an event handler returns `Result<(), Error>`: it reacts to the event, it \
                     does not produce a value",
                );
                None
            }
            None => {
                cx.error_spanned_by(
                    ty,
                    format!(
                        "an event handler returns `Result<(), E>` where \
                         `E: Into<HandlerError>`: {shape}"
                    ),
                );
                None
            }
        },
        ReturnType::Default => {
            cx.error_spanned_by(
                &sig.ident,
                format!(
                    "an event handler returns `Result<(), E>` where `E: Into<HandlerError>`, \
                     so failures are retried: {shape}"
                ),
            );
            None
        }
    }
}

fn event_fn<'a>(cx: &Ctxt, method: &Method<'a>) -> Option<EventFn<'a>> {
    if !handler_head(cx, method, SHAPE) {
        return None;
    }
    let event = match method.params.as_slice() {
        [ctx, event] => {
            if !matches!(peel(&ctx.ty), Type::Reference(r) if r.mutability.is_none()) {
                cx.error_spanned_by(
                    &ctx.ty,
                    "the first parameter of an event handler is the delivery: `ctx: &EventContext`",
                );
            }
            match peel(&event.ty) {
                Type::Reference(r) if r.mutability.is_none() => Some(&*r.elem),
                _ => {
                    cx.error_spanned_by(
                        &event.ty,
                        "an event handler takes the event by shared reference: `event: &Event`",
                    );
                    None
                }
            }
        }
        params => {
            let message = format!(
                "an event handler takes the context and the event after `&self`, found {} \
                 parameter{}: {SHAPE}",
                params.len(),
                if params.len() == 1 { "" } else { "s" }
            );
            if params.len() > 2 {
                let extra = &params[2..];
                cx.error_spanned_by(quote!(#(#extra),*), message);
            } else {
                cx.error_at(method.parens(), message);
            }
            None
        }
    };
    let error = handler_error(cx, method, SHAPE);
    let event = event?;
    let name = match &method.event_name {
        Some(lit) => {
            check_identifier(cx, "event type name", &lit.value(), lit.span());
            lit.value()
        }
        None => match type_name(event) {
            Some((name, span)) => {
                check_identifier(cx, "event type name", &name, span);
                name
            }
            None => {
                cx.error_spanned_by(
                    event,
                    "cannot name this event type: use a struct type, or give its stored name \
                     with `#[event(name = \"..\")]` on the method",
                );
                return None;
            }
        },
    };
    Some(EventFn {
        method: method.ident(),
        event,
        error: error?,
        name,
    })
}

/// `#[catch_all] async fn method(&self, ctx: &EventContext) -> Result<(), Error>`.
fn catch_all_fn<'a>(cx: &Ctxt, method: &Method<'a>) -> Option<CatchAllFn<'a>> {
    const CATCH_ALL: &str = "`#[catch_all] async fn on_any(&self, ctx: &EventContext) -> \
                             Result<(), HandlerError>`";
    if !handler_head(cx, method, CATCH_ALL) {
        return None;
    }
    if let Some(lit) = &method.event_name {
        cx.error_spanned_by(
            lit,
            "`#[event(name = \"..\")]` names the event of a typed handler; a `#[catch_all]` \
             method receives every event, whatever its name",
        );
    }
    let params = match method.params.as_slice() {
        [ctx] => {
            if !matches!(peel(&ctx.ty), Type::Reference(r) if r.mutability.is_none()) {
                cx.error_spanned_by(
                    &ctx.ty,
                    format!("a `#[catch_all]` method takes the delivery: {CATCH_ALL}"),
                );
            }
            Some(())
        }
        [] => {
            cx.error_at(
                method.parens(),
                format!("a `#[catch_all]` method takes the delivery after `&self`: {CATCH_ALL}"),
            );
            None
        }
        [_, extra @ ..] => {
            cx.error_spanned_by(
                quote!(#(#extra),*),
                format!(
                    "a `#[catch_all]` method takes only the delivery after `&self` (the event \
                     is `ctx.event()`, undecoded): {CATCH_ALL}"
                ),
            );
            None
        }
    };
    let error = handler_error(cx, method, CATCH_ALL);
    params?;
    Some(CatchAllFn {
        method: method.ident(),
        error: error?,
    })
}
