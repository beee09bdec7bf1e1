//! The pipeline of each macro: parse the arguments (`attr.rs`), take the item apart (`ast.rs`),
//! check it (`check.rs`), generate code (`expand.rs`). On errors the output is the
//! `compile_error!`s, the user's item (minus our helper attributes) and stub impls, so that an
//! IDE keeps working and one mistake does not cascade.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{DeriveInput, ImplItem, Item, ItemImpl};

use crate::ast::{
    AggregateStruct, COMMAND_HELPERS, EVENT_HELPERS, EventsEnum, HandlerImpl, item_head,
};
use crate::check::{self, Ctxt};
use crate::{attr, dispatch, expand};

pub(crate) fn derive_events(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.into_compile_error(),
    };
    let cx = Ctxt::new();
    let set = EventsEnum::from_syn(&cx, &input);
    if let Some(set) = &set {
        check::events(&cx, set);
    }
    match (cx.check(), set) {
        (Ok(()), Some(set)) => expand::events(&set),
        (Err(e), Some(set)) => {
            let mut out = e.into_compile_error();
            out.extend(expand::events_fallback(&set));
            out
        }
        (Err(e), None) => e.into_compile_error(),
        (Ok(()), None) => TokenStream::new(),
    }
}

pub(crate) fn aggregate(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: Item = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => return with_error(input, e),
    };
    let cx = Ctxt::new();
    let attr = attr::aggregate(&cx, args);
    let Item::Struct(strukt) = &item else {
        cx.error_spanned_by(
            item_head(&item),
            "`#[aggregate]` goes on a struct holding the aggregate's state",
        );
        return finish(
            cx,
            item.to_token_stream(),
            TokenStream::new(),
            TokenStream::new(),
        );
    };
    let model = AggregateStruct { item: strukt, attr };
    let plan = check::aggregate(&cx, &model);
    let code = plan.as_ref().map(expand::aggregate).unwrap_or_default();
    let stubs = plan
        .as_ref()
        .map(expand::aggregate_fallback)
        .unwrap_or_default();
    finish(cx, item.to_token_stream(), code, stubs)
}

pub(crate) fn command_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: Item = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => return with_error(input, e),
    };
    let cx = Ctxt::new();
    let args = dispatch::parse_args(&cx, args);
    let Item::Impl(imp) = &item else {
        cx.error_spanned_by(
            item_head(&item),
            "`#[command_handler]` goes on the aggregate's inherent impl block: \
             `#[command_handler] impl Order { fn create(&self, command: CreateOrder) -> .. }`",
        );
        return finish(
            cx,
            item.to_token_stream(),
            TokenStream::new(),
            TokenStream::new(),
        );
    };
    let model = HandlerImpl::from_syn(&cx, imp, "command_handler");
    let plan = check::command_impl(&cx, &model);
    let mut code = expand::command_impl(&imp.self_ty, &plan, false);
    let mut stubs = expand::command_impl(&imp.self_ty, &plan, true);
    if args.dispatch {
        let named = dispatch::check(&cx, &plan);
        code.extend(dispatch::expand(&imp.self_ty, &plan, &named, false));
        stubs.extend(dispatch::expand(&imp.self_ty, &plan, &named, true));
    }
    let item = strip_helpers(imp, COMMAND_HELPERS);
    finish(cx, item, code, stubs)
}

pub(crate) fn event_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: Item = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => return with_error(input, e),
    };
    let cx = Ctxt::new();
    let attr = attr::subscriber(&cx, args);
    let Item::Impl(imp) = &item else {
        cx.error_spanned_by(
            item_head(&item),
            "`#[event_handler(..)]` goes on the inherent impl block of a subscriber type: \
             `#[event_handler(subscribe = \"Order\")] impl MyWorkflow { async fn on_x(..) }`",
        );
        return finish(
            cx,
            item.to_token_stream(),
            TokenStream::new(),
            TokenStream::new(),
        );
    };
    let model = HandlerImpl::from_syn(&cx, imp, "event_handler");
    let plan = check::subscriber(&cx, &attr, &model);
    let code = expand::subscriber(&plan);
    let stubs = expand::subscriber_fallback(&plan);
    let item = strip_helpers(imp, EVENT_HELPERS);
    finish(cx, item, code, stubs)
}

/// The output: the item and the generated code, or the errors, the item and the stubs.
fn finish(cx: Ctxt, item: TokenStream, code: TokenStream, stubs: TokenStream) -> TokenStream {
    match cx.check() {
        Ok(()) => quote!(#item #code),
        Err(e) => {
            let errors = e.into_compile_error();
            quote!(#errors #item #stubs)
        }
    }
}

fn with_error(mut item: TokenStream, error: syn::Error) -> TokenStream {
    item.extend(error.into_compile_error());
    item
}

/// The impl block without the macro's helper attributes (`#[apply]`, `#[event(..)]`,
/// `#[catch_all]`) on its methods, which would otherwise be unknown attributes, nor their
/// misspellings (already reported with the right spelling).
fn strip_helpers(imp: &ItemImpl, helpers: &[&str]) -> TokenStream {
    let mut imp = imp.clone();
    for item in &mut imp.items {
        if let ImplItem::Fn(func) = item {
            func.attrs.retain(|attr| {
                let Some(ident) = attr.path().get_ident().map(ToString::to_string) else {
                    return true;
                };
                !helpers.contains(&ident.as_str())
                    && attr::misspelled_helper(&ident, helpers).is_none()
            });
        }
    }
    imp.into_token_stream()
}
