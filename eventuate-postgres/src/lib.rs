//! # eventuate-postgres
//!
//! The PostgreSQL [`EventStore`](eventuate_core::EventStore) of eventuate-rs:
//! [`PostgresEventStore`], with its migrations embedded, one schema per tenant, and a reader
//! order that never skips a committed event ([`ordering`] explains how and at what cost).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use eventuate_postgres::PostgresEventStore;
//!
//! let store = PostgresEventStore::builder()
//!     .schema("tenant_a")
//!     .migrate_on_connect(true)
//!     .connect("postgres://postgres@localhost/app")
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A transactional subscriber writes through the delivery's transaction with
//! [`PgEventContextExt::pg_transaction`].
//!
//! [`embedded`] starts a throwaway server from the installed PostgreSQL binaries, for tests,
//! examples and benchmarks.

#![warn(missing_docs)]

pub mod admin;
mod context;
pub mod embedded;
mod error;
mod migrate;
pub mod ordering;
mod store;
pub mod subscriptions;
pub mod wakeup;

/// The sqlx this crate is built on (0.8, with `runtime-tokio`, `postgres`, `migrate`, `uuid`
/// and `json`): a transactional handler's `pg_transaction` is a `sqlx::PgConnection` of this
/// version, so use `eventuate_postgres::sqlx` rather than a sqlx of your own that may differ.
pub use sqlx;

pub use context::PgEventContextExt;
pub use error::{Error, Result};
pub use migrate::validate_schema;
pub use store::{
    DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_CONNECT_RETRY_FOR, DEFAULT_MAX_PAYLOAD_BYTES,
    PostgresEventStore, PostgresEventStoreBuilder,
};
