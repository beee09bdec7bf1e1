//! Typed access to the PostgreSQL transaction of a transactional delivery.
//!
//! [`EventContext::transaction`] is generic over the store's transaction type, which the
//! compiler cannot check: asking for the wrong type (say `sqlx::Transaction<'static,
//! Postgres>` instead of the [`PgConnection`] this store hands out) compiles, fails at run time
//! with a permanent error, and parks every event at its first attempt. [`PgEventContextExt`]
//! names the type once, here, so a handler cannot get it wrong:
//!
//! ```no_run
//! use eventuate_core::{EventContext, HandlerError};
//! use eventuate_postgres::PgEventContextExt;
//!
//! async fn handle(ctx: &EventContext) -> Result<(), HandlerError> {
//!     let mut conn = ctx.pg_transaction().await?;
//!     sqlx::query("INSERT INTO seen (event_id) VALUES ($1)")
//!         .bind(ctx.event_id())
//!         .execute(&mut *conn)
//!         .await?;
//!     Ok(())
//! }
//! ```

use std::future::Future;

use eventuate_core::subscriber::TransactionGuard;
use eventuate_core::{EventContext, Result};
use sqlx::PgConnection;

mod sealed {
    pub trait Sealed {}
    impl Sealed for eventuate_core::EventContext {}
}

/// The PostgreSQL side of [`EventContext`]: the connection of the transaction that a
/// transactional subscriber (`#[event_handler(.., transactional)]`) writes through, and that
/// the runtime commits together with the subscriber's checkpoint.
pub trait PgEventContextExt: sealed::Sealed {
    /// The connection of the delivery's transaction. Writes made through it commit with the
    /// checkpoint, or not at all. Hold the guard only while writing: a second call waits for
    /// the first guard to be dropped.
    ///
    /// Fails with [`eventuate_core::Error::Config`] when the subscriber is not transactional,
    /// or runs on a store other than [`crate::PostgresEventStore`].
    fn pg_transaction(
        &self,
    ) -> impl Future<Output = Result<TransactionGuard<'_, PgConnection>>> + Send + '_;
}

impl PgEventContextExt for EventContext {
    fn pg_transaction(
        &self,
    ) -> impl Future<Output = Result<TransactionGuard<'_, PgConnection>>> + Send + '_ {
        // The type `CheckpointTx::resource` (crate::subscriptions) hands out.
        self.transaction::<PgConnection>()
    }
}
