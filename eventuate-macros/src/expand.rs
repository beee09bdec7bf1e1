//! Code generation from the checked plans. Generated code names everything by absolute path
//! (`::eventuate_core::__private::..`, `::core::..`) so that it compiles whatever the user's
//! module shadows, and assertions about user types are spanned at those types so that the
//! compiler's error (and the `#[diagnostic::on_unimplemented]` message) lands there.
//!
//! The `*_fallback` functions generate what is emitted next to a `compile_error!`: stub impls
//! that keep the rest of the user's crate type-checking, so one mistake is one error.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::{Ident, Type};

use crate::ast::{
    AggregatePlan, CommandFn, CommandPlan, Entity, EventsEnum, Output, SubscriberPlan,
};

/// The root of everything generated code uses from the runtime.
fn private() -> TokenStream {
    quote!(::eventuate_core::__private)
}

/// A span that shows at the user's `tokens` but resolves names, and is seen by lints, as the
/// macro's own code (`Span::located_at`), so generated paths never trip user lints.
pub(crate) fn at(tokens: &impl ToTokens) -> Span {
    let span = tokens
        .to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span());
    Span::call_site().located_at(span)
}

// ---------------------------------------------------------------------------------------------
// #[derive(Events)]

pub(crate) fn events(set: &EventsEnum<'_>) -> TokenStream {
    let p = private();
    let ident = set.ident;
    let variants: Vec<&Ident> = set.variants.iter().map(|v| v.ident).collect();
    let types: Vec<&Type> = set.variants.iter().map(|v| v.ty).collect();
    let names: Vec<&str> = set
        .variants
        .iter()
        .map(|v| v.name.as_ref().map_or("", |n| n.value.as_str()))
        .collect();
    let encode = set.variants.iter().map(|v| {
        let (variant, ty) = (v.ident, v.ty);
        let call = quote_spanned!(at(ty)=> #p::encode::<#ty>(event));
        quote!(Self::#variant(ref event) => #call,)
    });
    let decode = set.variants.iter().zip(&names).map(|(v, name)| {
        let (variant, ty) = (v.ident, v.ty);
        let aliases = &v.attr.aliases;
        let call = quote_spanned!(at(ty)=> #p::decode::<#ty>(payload));
        quote!(#name #(| #aliases)* => ::core::result::Result::map(#call, Self::#variant),)
    });
    let versions: Vec<u32> = set
        .variants
        .iter()
        .map(|v| v.attr.version.as_ref().map_or(1, |n| n.value))
        .collect();
    let schemas = set
        .variants
        .iter()
        .zip(&names)
        .zip(&versions)
        .map(|((v, name), version)| {
            let aliases = &v.attr.aliases;
            let mut steps: Vec<&crate::attr::Upcast> = v.attr.upcasts.iter().collect();
            steps.sort_by_key(|step| step.from.value);
            let steps = steps.iter().map(|step| {
                let (from, with) = (step.from.value, &step.with);
                // Spanned at the function: one of the wrong shape is reported there.
                // Every token at one span (not `#p`, at the call site), so the error is one label.
                let upcaster =
                    quote_spanned!(at(with)=> ::eventuate_core::__private::upcaster(#with));
                quote!((#from, #upcaster))
            });
            quote! {
                #p::EventSchema {
                    name: #name,
                    aliases: &[#(#aliases),*],
                    version: #version,
                    upcasters: &[#(#steps),*],
                }
            }
        });
    quote! {
        #[automatically_derived]
        impl #p::EventSet for #ident {
            const EVENT_TYPES: &'static [&'static ::core::primitive::str] = &[#(#names),*];

            const SCHEMAS: &'static [#p::EventSchema] = &[#(#schemas),*];

            fn event_type(&self) -> &'static ::core::primitive::str {
                match *self {
                    #(Self::#variants(_) => #names,)*
                }
            }

            fn schema_version(&self) -> ::core::primitive::u32 {
                match *self {
                    #(Self::#variants(_) => #versions,)*
                }
            }

            fn encode(&self) -> ::core::result::Result<#p::String, #p::serde_json::Error> {
                match *self {
                    #(#encode)*
                }
            }

            fn decode(
                event_type: &::core::primitive::str,
                payload: &::core::primitive::str,
            ) -> ::core::result::Result<Self, #p::DecodeError> {
                match event_type {
                    #(#decode)*
                    _ => ::core::result::Result::Err(#p::DecodeError::UnknownType),
                }
            }

            // The JSON Schemas, with eventuate-core's `schemas` feature (else nothing).
            #p::event_schemas! { #(#names => #types),* }
        }

        #[automatically_derived]
        impl<__A> #p::ApplyAll<__A> for #ident
        where
            #(__A: #p::Apply<#types>,)*
        {
            fn apply_to(&self, aggregate: &mut __A) {
                match *self {
                    #(Self::#variants(ref event) => #p::Apply::<#types>::apply(aggregate, event),)*
                }
            }
        }

        #(
            #[automatically_derived]
            impl ::core::convert::From<#types> for #ident {
                fn from(event: #types) -> Self {
                    Self::#variants(event)
                }
            }

            #[automatically_derived]
            impl #p::EventOf<#ident> for #types {}
        )*
    }
}

/// Stubs for an enum whose derive failed, so its uses do not add errors of their own: the
/// conversions and memberships of every variant type that can be named once, and the names
/// that could be computed.
pub(crate) fn events_fallback(set: &EventsEnum<'_>) -> TokenStream {
    let p = private();
    let ident = set.ident;
    // Both the computed names and the types' own names: handlers checked against this set
    // then match whichever they use (the names never reach run time: the crate fails).
    let names: Vec<String> = set
        .variants
        .iter()
        .flat_map(|v| {
            let default = match v.ty {
                Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
                _ => None,
            };
            v.name
                .as_ref()
                .map(|n| n.value.clone())
                .into_iter()
                .chain(default)
        })
        .collect();
    let mut seen = Vec::new();
    let members = set.variants.iter().filter_map(|v| {
        let key = crate::check::type_key(v.ty);
        if seen.contains(&key) {
            return None;
        }
        seen.push(key);
        let (variant, ty) = (v.ident, v.ty);
        Some(quote! {
            #[automatically_derived]
            impl ::core::convert::From<#ty> for #ident {
                fn from(event: #ty) -> Self {
                    Self::#variant(event)
                }
            }

            #[automatically_derived]
            impl #p::EventOf<#ident> for #ty {}
        })
    });
    quote! {
        #(#members)*

        #[automatically_derived]
        impl #p::EventSet for #ident {
            const EVENT_TYPES: &'static [&'static ::core::primitive::str] = &[#(#names),*];
            fn event_type(&self) -> &'static ::core::primitive::str {
                ::core::unreachable!()
            }
            fn encode(&self) -> ::core::result::Result<#p::String, #p::serde_json::Error> {
                ::core::unreachable!()
            }
            fn decode(
                _: &::core::primitive::str,
                _: &::core::primitive::str,
            ) -> ::core::result::Result<Self, #p::DecodeError> {
                ::core::unreachable!()
            }
        }

        #[automatically_derived]
        impl<__A> #p::ApplyAll<__A> for #ident {
            fn apply_to(&self, _: &mut __A) {
                ::core::unreachable!()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// #[aggregate]

pub(crate) fn aggregate(plan: &AggregatePlan<'_>) -> TokenStream {
    let p = private();
    let ident = plan.ident;
    let events = plan.events;
    let entity_type = &plan.entity_type;
    // Spanned at `events = ..`: an event without `#[apply]` is reported there, with the message
    // of `Apply`'s `on_unimplemented` naming the aggregate and the event.
    let apply = quote_spanned!(at(events)=>
        <#events as #p::ApplyAll<Self>>::apply_to(event, self)
    );
    let snapshot_every = plan.snapshot_every.map(|n| {
        quote! {
            const SNAPSHOT_EVERY: ::core::option::Option<::core::primitive::u64> =
                ::core::option::Option::Some(#n);
        }
    });
    let aliases = &plan.entity_type_aliases;
    let entity_type_aliases = (!aliases.is_empty()).then(|| {
        quote! {
            const ENTITY_TYPE_ALIASES: &'static [&'static ::core::primitive::str] =
                &[#(#aliases),*];
        }
    });
    let snapshot_version = plan
        .snapshot_version
        .map(|n| quote!(const SNAPSHOT_VERSION: ::core::primitive::u32 = #n;));
    // Spanned at the struct: a state that cannot be (de)serialized is reported there.
    let snapshots = plan.snapshot_every.map(|_| {
        let to_json = quote_spanned!(at(ident)=>
            <Self as #p::SnapshotState>::to_snapshot_json(self)
        );
        let from_json = quote_spanned!(at(ident)=>
            <Self as #p::SnapshotState>::from_snapshot_json(snapshot)
        );
        quote! {
            fn to_snapshot(
                &self,
            ) -> ::core::option::Option<::core::result::Result<#p::String, #p::serde_json::Error>>
            {
                ::core::option::Option::Some(#to_json)
            }

            fn from_snapshot(
                snapshot: &::core::primitive::str,
            ) -> ::core::option::Option<::core::result::Result<Self, #p::serde_json::Error>> {
                ::core::option::Option::Some(#from_json)
            }
        }
    });
    let aggregate_trait = quote_spanned!(at(ident)=> #p::Aggregate);
    // Spanned at the struct's name: a missing `Default` is one error, there.
    let initial = quote_spanned!(at(ident)=> <Self as #p::InitialState>::initial_state());
    let ignore = plan.ignore.iter().map(|ty| {
        let apply_trait = quote_spanned!(at(ty)=> #p::Apply<#ty>);
        quote! {
            #[automatically_derived]
            impl #apply_trait for #ident {
                #[inline]
                fn apply(&mut self, _: &#ty) {}
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #aggregate_trait for #ident {
            const ENTITY_TYPE: &'static ::core::primitive::str = #entity_type;
            #entity_type_aliases
            #snapshot_every
            #snapshot_version
            type Event = #events;

            fn initial() -> Self {
                #initial
            }

            fn apply(&mut self, event: &<Self as #p::Aggregate>::Event) {
                #apply
            }

            // A clone when the struct is `Clone` (autoref specialization), else no caching.
            fn clone_for_cache(&self) -> ::core::option::Option<Self> {
                #[allow(unused_imports)]
                use #p::{CacheFallback as _, CacheViaClone as _};
                (&#p::CacheProbe(self)).cache_clone()
            }

            #snapshots
        }

        #(#ignore)*
    }
}

/// A stub `Aggregate` impl for a struct whose attribute has errors.
pub(crate) fn aggregate_fallback(plan: &AggregatePlan<'_>) -> TokenStream {
    let p = private();
    let ident = plan.ident;
    let events = plan.events;
    quote! {
        #[automatically_derived]
        impl #p::Aggregate for #ident {
            const ENTITY_TYPE: &'static ::core::primitive::str = "";
            type Event = #events;
            fn initial() -> Self {
                ::core::panic!("the #[aggregate] attribute has errors")
            }
            fn apply(&mut self, _: &<Self as #p::Aggregate>::Event) {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// #[command_handler]

/// The `Apply` and `HandleCommand` impls; stubs (`stub`) when the impl block has errors.
pub(crate) fn command_impl(self_ty: &Type, plan: &CommandPlan<'_>, stub: bool) -> TokenStream {
    let p = private();
    let applies = plan.applies.iter().map(|apply| {
        let (method, event) = (apply.method, apply.event);
        let body = if stub {
            quote!()
        } else {
            quote!(Self::#method(self, event))
        };
        // Spanned at the event type: one that is not an event of the aggregate (its `Apply`
        // impl would never be called) is reported there, with `AppliedEvent`'s message. Also
        // in the stubs, so that it is reported with the block's other mistakes.
        let checked = quote_spanned!(at(event)=>
            <#event as #p::AppliedEvent<<#self_ty as #p::Aggregate>::Event>>::CHECKED
        );
        quote! {
            #[automatically_derived]
            impl #p::Apply<#event> for #self_ty {
                #[inline]
                fn apply(&mut self, event: &#event) {
                    #body
                }
            }

            const _: () = #checked;
        }
    });
    let commands = plan.commands.iter().map(|command| {
        let (cmd, error) = (command.command, command.error);
        let body = if stub {
            quote!(::core::unreachable!())
        } else {
            command_body(command)
        };
        let error = quote_spanned!(at(error)=> #error);
        quote! {
            #[automatically_derived]
            impl #p::HandleCommand<#cmd> for #self_ty {
                type Error = #error;

                fn handle(
                    &self,
                    command: &#cmd,
                ) -> ::core::result::Result<
                    #p::Vec<<Self as #p::Aggregate>::Event>,
                    <Self as #p::HandleCommand<#cmd>>::Error,
                > {
                    #body
                }
            }
        }
    });
    quote! {
        #(#applies)*
        #(#commands)*
    }
}

fn command_body(command: &CommandFn<'_>) -> TokenStream {
    let p = private();
    let (method, cmd) = (command.method, command.command);
    let argument = if command.by_ref {
        quote!(command)
    } else {
        // The repository may run a handler again after a concurrency conflict, so a command
        // taken by value is cloned; the assertion is spanned at the command type.
        quote_spanned!(at(cmd)=> <#cmd as #p::CloneCommand>::clone_command(command))
    };
    // Each event goes through `IntoEvent` (exactly `Into`) at its type in the return type: one
    // that is not an event of the aggregate is reported there, saying so. A one-event or tuple
    // element type is named (`<T as IntoEvent<E>>::into_event`, so the whole type is underlined)
    // unless it is opaque (`impl Into<E>` cannot be named in a body). Otherwise, and for the
    // items of a `Vec<T>` (whatever its `IntoIterator` yields, as before), `Self` is inferred
    // from the value; rustc then reports at the value, so that identifier is located at the type.
    let event = quote!(<Self as #p::Aggregate>::Event);
    let inferred = |ty: &Type, value: &str| {
        let span = at(ty);
        let value = Ident::new(value, span);
        quote_spanned!(span=> #p::IntoEvent::<#event>::into_event(#value))
    };
    let into = |ty: &Type, value: &str| {
        if mentions_impl(ty.to_token_stream()) {
            return inferred(ty, value);
        }
        let value = Ident::new(value, at(ty));
        quote_spanned!(at(ty)=> <#ty as #p::IntoEvent<#event>>::into_event(#value))
    };
    let events = match &command.output {
        Output::One(ty) => {
            let one = into(ty, "output");
            quote!(#p::Vec::from([#one]))
        }
        Output::Many(elem) => {
            let one = inferred(elem, "event");
            let event = Ident::new("event", at(elem));
            quote! {
                ::core::iter::Iterator::collect(::core::iter::Iterator::map(
                    ::core::iter::IntoIterator::into_iter(output),
                    |#event| #one,
                ))
            }
        }
        Output::Tuple(elems) if elems.is_empty() => quote! {{
            let () = output;
            #p::Vec::new()
        }},
        Output::Tuple(elems) => {
            let bindings: Vec<Ident> = (0..elems.len())
                .map(|i| format_ident!("event{}", i))
                .collect();
            let converted = elems
                .iter()
                .zip(&bindings)
                .map(|(ty, binding)| into(ty, &binding.to_string()));
            quote! {{
                let (#(#bindings,)*) = output;
                #p::Vec::from([#(#converted),*])
            }}
        }
    };
    quote! {
        match Self::#method(self, #argument) {
            ::core::result::Result::Ok(output) => ::core::result::Result::Ok(#events),
            ::core::result::Result::Err(error) => ::core::result::Result::Err(error),
        }
    }
}

/// Whether a type has an `impl Trait` in it (`impl Into<E>`, `Vec<impl Into<E>>`): such a
/// type can be returned, but not named in the generated body.
fn mentions_impl(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Ident(ident) => ident == "impl",
        TokenTree::Group(group) => mentions_impl(group.stream()),
        _ => false,
    })
}

// ---------------------------------------------------------------------------------------------
// #[event_handler]

pub(crate) fn subscriber(plan: &SubscriberPlan<'_>) -> TokenStream {
    let p = private();
    let self_ty = plan.self_ty;
    let id = &plan.id;
    let entities = plan.entities.iter().map(|entity| match entity {
        Entity::Name(name) => quote!(#name),
        Entity::Aggregate(path) => {
            let trait_ = quote_spanned!(at(path)=> #p::Aggregate);
            quote!(<#path as #trait_>::ENTITY_TYPE)
        }
    });
    // With a `#[catch_all]` method the subscriber wants every event type: no `event_types`
    // (empty means all), so the runtime delivers the types without a typed handler too.
    let event_types = if plan.catch_all.is_some() {
        TokenStream::new()
    } else {
        let names = plan.handlers.iter().map(|h| &h.name);
        match plan.checked_against {
            // The aggregate's event set knows the older names its events are stored under.
            Some(aggregate) => quote!(.event_types(#p::with_aliases::<
                <#aggregate as #p::Aggregate>::Event,
            >(&[#(#names),*]))),
            None => quote!(.event_types([#(#names),*])),
        }
    };
    // Checked against an aggregate, a handler matches the event's current name whatever name
    // it was stored under, and reads the payload upcast to the current schema version.
    let (event_type, set) = match plan.checked_against {
        Some(aggregate) => {
            let set = quote!(<#aggregate as #p::Aggregate>::Event);
            (
                quote!(<#set as #p::EventSet>::current_name(ctx.event().event_type.as_str())),
                Some(set),
            )
        }
        None => (quote!(ctx.event().event_type.as_str()), None),
    };
    let attr = plan.attr;
    let start = attr.start.as_ref().map(|start| {
        let variant = if start.value() == "now" {
            quote!(Now)
        } else {
            quote!(Beginning)
        };
        quote!(.start_from(#p::StartFrom::#variant))
    });
    let partitions = attr.partitions.as_ref().map(|n| {
        let n = n.value;
        quote!(.partitions(#n))
    });
    let max_attempts = attr.max_attempts.as_ref().map(|n| {
        let n = n.value;
        quote!(.max_attempts(#n))
    });
    let transactional = attr.transactional.map(|yes| quote!(.transactional(#yes)));
    let dispatch = plan.handlers.iter().map(|handler| {
        let (method, ty, name) = (handler.method, handler.event, &handler.name);
        let decode = match &set {
            Some(set) => quote_spanned!(at(ty)=> #p::decode_for_handler_in::<#set, #ty>(ctx)),
            None => quote_spanned!(at(ty)=> #p::decode_for_handler::<#ty>(ctx)),
        };
        let call = handler_call(method, true, handler.error);
        quote! {
            if event_type == #name {
                let event: #ty = match #decode {
                    ::core::result::Result::Ok(event) => event,
                    ::core::result::Result::Err(error) => {
                        return ::core::result::Result::Err(error);
                    }
                };
                return #call;
            }
        }
    });
    // Typed handlers win; every other event goes to the catch-all, if any.
    let rest = match &plan.catch_all {
        Some(catch_all) => handler_call(catch_all.method, false, catch_all.error),
        None => quote!(::core::result::Result::Ok(())),
    };
    let assertions = event_assertions(plan);
    quote! {
        #[automatically_derived]
        impl #p::Subscriber for #self_ty {
            fn subscription(&self) -> #p::Subscription {
                #p::Subscription::new(#id, [#(#entities),*])
                    #event_types
                    #start
                    #partitions
                    #max_attempts
                    #transactional
            }

            fn handle<'a>(
                &'a self,
                ctx: &'a #p::EventContext,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), #p::HandlerError>,
            > + ::core::marker::Send + 'a {
                async move {
                    let event_type = #event_type;
                    #(#dispatch)*
                    #rest
                }
            }
        }

        #assertions
    }
}

/// The awaited call of a handler method, its error converted into a `HandlerError`.
///
/// The method's future goes through `HandlerFuture`, a `Send` check spanned (call and `.await`
/// alike, so rustc reports it once) at the method's name: a future that is not `Send` is
/// reported there, with the usual causes, instead of at the whole attribute. The conversion
/// goes through `IntoHandlerError`, spanned at the error type: one that does not convert is
/// reported there, saying which types do.
fn handler_call(method: &Ident, with_event: bool, error: &Type) -> TokenStream {
    // Every token at one span, even the path (`private()`'s tokens are at the call site).
    let span = at(method);
    let event = with_event.then(|| quote_spanned!(span=> , &event));
    let call = quote_spanned!(span=>
        ::eventuate_core::__private::HandlerFuture::checked(Self::#method(self, ctx #event)).await
    );
    let convert = quote_spanned!(at(error)=>
        ::eventuate_core::__private::IntoHandlerError::into_handler_error(error)
    );
    quote! {
        match #call {
            ::core::result::Result::Ok(()) => ::core::result::Result::Ok(()),
            ::core::result::Result::Err(error) => ::core::result::Result::Err(#convert),
        }
    }
}

/// With `subscribe = Aggregate`, checks at compile time that every handler takes one of the
/// aggregate's events (spanned at the handler's event type) and that the aggregate stores it
/// under the name the handler matches.
fn event_assertions(plan: &SubscriberPlan<'_>) -> TokenStream {
    let Some(aggregate) = plan.checked_against else {
        return TokenStream::new();
    };
    let p = private();
    let checks = plan.handlers.iter().map(|handler| {
        let (ty, name) = (handler.event, &handler.name);
        let message = format!(
            "`{}` handles the event type name `{}`, but `{}` stores no event under that name \
             (its event set renames the event with `#[event(name = \"..\")]`): put the stored \
             name on the handler, `#[event(name = \"..\")]`",
            handler.method,
            name,
            aggregate.to_token_stream(),
        );
        let check = quote_spanned!(at(ty)=>
            #p::is_event_of::<<#aggregate as #p::Aggregate>::Event, #ty>(#name)
        );
        let fail = quote_spanned!(at(ty)=> ::core::panic!("{}", #message));
        quote! {
            const _: () = if !#check {
                #fail
            };
        }
    });
    quote!(#(#checks)*)
}

/// A stub `Subscriber` impl for an impl block with errors, plus the event checks that can still
/// be made (so a wrong event type is reported together with the other mistakes).
pub(crate) fn subscriber_fallback(plan: &SubscriberPlan<'_>) -> TokenStream {
    let p = private();
    let self_ty = plan.self_ty;
    let assertions = event_assertions(plan);
    quote! {
        #[automatically_derived]
        impl #p::Subscriber for #self_ty {
            fn subscription(&self) -> #p::Subscription {
                ::core::unreachable!()
            }

            fn handle<'a>(
                &'a self,
                _: &'a #p::EventContext,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), #p::HandlerError>,
            > + ::core::marker::Send + 'a {
                ::core::future::pending()
            }
        }

        #assertions
    }
}
