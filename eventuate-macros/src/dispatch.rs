//! `#[command_handler(dispatch)]`: the arguments of `#[command_handler]`, and the
//! `CommandSet` impl that decodes the block's commands from JSON by type name (for the event
//! store server's command route and `eventuate_core::commands::dispatch`).
//!
//! Opt-in, per impl block, because dispatching needs `Deserialize` on every command of the
//! block: commands that cannot be decoded from JSON stay in blocks without `dispatch`. A
//! command of a `dispatch` block that is not `Deserialize` is reported at its type.
//!
//! The argument's parsing, its checks and its expansion sit together here rather than in
//! `attr.rs`, `check.rs` and `expand.rs`: they concern one argument, and the command block's
//! own pipeline (`check::command_impl`, `expand::command_impl`) stays unchanged beside it.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Type, TypePath};

use crate::ast::CommandPlan;
use crate::check::{Ctxt, type_key};

/// The arguments of `#[command_handler(..)]`.
#[derive(Default)]
pub(crate) struct HandlerArgs {
    /// `dispatch`: generate the `CommandSet` impl.
    pub dispatch: bool,
}

/// Parses `#[command_handler]` / `#[command_handler(dispatch)]`.
pub(crate) fn parse_args(cx: &Ctxt, args: TokenStream) -> HandlerArgs {
    let mut parsed = HandlerArgs::default();
    if args.is_empty() {
        return parsed;
    }
    let parser = syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated;
    let metas = match syn::parse::Parser::parse2(parser, args.clone()) {
        Ok(metas) => metas,
        Err(_) => {
            cx.error_spanned_by(
                &args,
                "`#[command_handler]` takes no arguments but `dispatch`: \
                 `#[command_handler(dispatch)]`",
            );
            return parsed;
        }
    };
    for meta in metas {
        match &meta {
            syn::Meta::Path(path) if path.is_ident("dispatch") => {
                if parsed.dispatch {
                    cx.error_spanned_by(&meta, "duplicate `dispatch`");
                }
                parsed.dispatch = true;
            }
            syn::Meta::NameValue(nv) if nv.path.is_ident("dispatch") => cx.error_spanned_by(
                &meta,
                "`dispatch` takes no value: `#[command_handler(dispatch)]`",
            ),
            _ => cx.error_spanned_by(
                &meta,
                "unknown argument; `#[command_handler]` takes only `dispatch` (the aggregate is \
                 the impl's type)",
            ),
        }
    }
    parsed
}

/// The type name a command is dispatched under: the last segment of its path.
fn command_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(TypePath { qself: None, path }) => {
            path.segments.last().map(|s| s.ident.to_string())
        }
        Type::Group(group) => command_name(&group.elem),
        Type::Paren(paren) => command_name(&paren.elem),
        _ => None,
    }
}

/// Checks what `dispatch` needs beyond a valid impl block: a name per command, no two
/// commands under one name. Returns the `(name, type)` pairs.
pub(crate) fn check<'a>(cx: &Ctxt, plan: &CommandPlan<'a>) -> Vec<(String, &'a Type)> {
    let mut named: Vec<(String, &'a Type)> = Vec::new();
    for command in &plan.commands {
        let Some(name) = command_name(command.command) else {
            cx.error_spanned_by(
                command.command,
                "a dispatched command is named by its type's path (`CreateOrder`); use a \
                 named struct or enum here",
            );
            continue;
        };
        if let Some((_, earlier)) = named.iter().find(|(n, _)| *n == name) {
            if type_key(earlier) != type_key(command.command) {
                cx.error_spanned_by(
                    command.command,
                    format!(
                        "two commands are dispatched under the name `{name}` (`{}` and `{}`): \
                         rename one of the types",
                        type_key(earlier),
                        type_key(command.command)
                    ),
                );
            }
            continue;
        }
        named.push((name, command.command));
    }
    named
}

/// The `CommandSet` impl; a stub (`stub`) when the impl block has errors.
pub(crate) fn expand(
    self_ty: &Type,
    plan: &CommandPlan<'_>,
    named: &[(String, &Type)],
    stub: bool,
) -> TokenStream {
    let p = quote!(::eventuate_core::__private);
    let names = named.iter().map(|(name, _)| name);
    if stub {
        return quote! {
            #[automatically_derived]
            impl #p::CommandSet for #self_ty {
                const COMMAND_TYPES: &'static [&'static ::core::primitive::str] = &[#(#names),*];
                fn decode_command<__V: #p::CommandVisitor<Self>>(
                    _: &::core::primitive::str,
                    _: &::core::primitive::str,
                    _: __V,
                ) -> ::core::result::Result<__V::Output, #p::CommandDecodeError> {
                    ::core::unreachable!()
                }
            }
        };
    }
    let arms = named.iter().map(|(name, ty)| {
        // Spanned at the command type: one that is not `Deserialize` is reported there.
        let decode = quote_spanned!(crate::expand::at(ty)=>
            <#ty as ::eventuate_core::__private::DispatchCommand>::decode_command(payload)
        );
        quote! {
            #name => match #decode {
                ::core::result::Result::Ok(command) => {
                    ::core::result::Result::Ok(#p::CommandVisitor::<Self>::visit::<#ty>(visitor, command))
                }
                ::core::result::Result::Err(error) => ::core::result::Result::Err(error),
            },
        }
    });
    // Each distinct error type once, tried in order (a handler's error is one of them).
    let mut seen = Vec::new();
    let rejections = plan.commands.iter().filter_map(|command| {
        let key = type_key(command.error);
        if seen.contains(&key) {
            return None;
        }
        seen.push(key);
        let cmd = command.command;
        Some(quote! {
            if let ::core::option::Option::Some(error) =
                error.downcast_ref::<<Self as #p::HandleCommand<#cmd>>::Error>()
            {
                return (&#p::RejectionProbe(error)).rejection_json();
            }
        })
    });
    let schema_items = named.iter().map(|(name, ty)| quote!(#name => #ty));
    let names = named.iter().map(|(name, _)| name);
    quote! {
        #[automatically_derived]
        impl #p::CommandSet for #self_ty {
            const COMMAND_TYPES: &'static [&'static ::core::primitive::str] = &[#(#names),*];

            fn decode_command<__V: #p::CommandVisitor<Self>>(
                command_type: &::core::primitive::str,
                payload: &::core::primitive::str,
                visitor: __V,
            ) -> ::core::result::Result<__V::Output, #p::CommandDecodeError> {
                match command_type {
                    #(#arms)*
                    _ => ::core::result::Result::Err(#p::CommandDecodeError::unknown::<Self>(command_type)),
                }
            }

            fn rejection_json(
                error: &(dyn ::std::error::Error + ::core::marker::Send + ::core::marker::Sync + 'static),
            ) -> ::core::option::Option<#p::serde_json::Value> {
                #[allow(unused_imports)]
                use #p::{RejectionFallback as _, RejectionViaSerialize as _};
                #(#rejections)*
                ::core::option::Option::None
            }

            #p::command_schemas! { #(#schema_items),* }
        }
    }
}
