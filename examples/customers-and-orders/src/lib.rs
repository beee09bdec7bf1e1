//! # customers-and-orders
//!
//! The reference application of eventuate-rs: the "place order" saga between a customer
//! service and an order service. See the README beside this crate for how to run it.
//!
//! One file per concept:
//! - [`customer`], [`order`]: the aggregates (command side);
//! - [`workflows`]: the saga, as two subscribers that send commands.

pub mod customer;
pub mod money;
pub mod order;
pub mod workflows;

pub use money::Money;
