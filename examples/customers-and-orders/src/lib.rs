//! # customers-and-orders
//!
//! The reference application of eventuate-rs: the "place order" saga between a customer
//! service and an order service, with a query-side view and an outbound gateway, behind an
//! HTTP API. See the README beside this crate for how to run it.
//!
//! One file per concept:
//! - [`customer`], [`order`]: the aggregates (command side);
//! - [`workflows`]: the saga, as two subscribers that send commands;
//! - [`view`] (writer) and [`query`] (reader): the "customer with recent orders" view;
//! - [`gateway`]: confirmations for approved orders (the outbound side);
//! - [`http`]: the HTTP API; [`client`]: an in-process client of it;
//! - [`app`]: wiring by role; [`tables`]: the application's own tables;
//! - [`scenario`]: the scripted run of `cargo run`.

pub mod app;
pub mod client;
pub mod customer;
pub mod gateway;
pub mod http;
pub mod log;
pub mod money;
pub mod order;
pub mod query;
pub mod scenario;
pub mod tables;
pub mod view;
pub mod workflows;

pub use app::{App, Role, Started, Store};
pub use money::Money;
