//! Procedural macros of eventuate-rs (placeholder entry points).
use proc_macro::TokenStream;
#[proc_macro_attribute]
pub fn aggregate(_a: TokenStream, i: TokenStream) -> TokenStream {
    i
}
#[proc_macro_attribute]
pub fn command_handler(_a: TokenStream, i: TokenStream) -> TokenStream {
    i
}
#[proc_macro_attribute]
pub fn event_handler(_a: TokenStream, i: TokenStream) -> TokenStream {
    i
}
#[proc_macro_derive(Events, attributes(event))]
pub fn events(_i: TokenStream) -> TokenStream {
    TokenStream::new()
}
