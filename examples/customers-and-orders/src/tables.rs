//! Where the application keeps its own data besides the events: the customer view and the
//! confirmations the gateway sent. On PostgreSQL these are tables in the event store's
//! database (created here, idempotently, by whichever process starts first); on the
//! in-memory store they are in-memory stand-ins with the same behaviour.

use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::PgPool;

use crate::gateway::Confirmation;
use crate::view::MemoryView;

/// The application's tables (cheap to clone: clones share them).
#[derive(Clone, Debug)]
pub enum Tables {
    /// Tables in PostgreSQL, next to the event store's.
    Postgres(PgPool),
    /// In-memory stand-ins, for the in-memory store.
    Memory(Arc<MemoryTables>),
}

/// The in-memory stand-ins of the tables.
#[derive(Debug, Default)]
pub struct MemoryTables {
    view: Mutex<MemoryView>,
    confirmations: Mutex<Vec<Confirmation>>,
}

impl MemoryTables {
    pub(crate) fn view(&self) -> MutexGuard<'_, MemoryView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn confirmations(&self) -> MutexGuard<'_, Vec<Confirmation>> {
        self.confirmations.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The schema of the tables. The `*_version` columns hold the version of the entity whose
/// event last changed the row; updates only apply newer versions, so the view stays right
/// even if an event were applied twice (the transactional delivery already prevents that).
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS customer_view (
    customer_id      TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    credit_limit     BIGINT NOT NULL,
    reserved_credit  BIGINT NOT NULL DEFAULT 0,
    customer_version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS customer_view_orders (
    order_id         TEXT PRIMARY KEY,
    customer_id      TEXT NOT NULL,
    total            BIGINT NOT NULL,
    state            TEXT NOT NULL,
    rejection_reason TEXT,
    order_version    BIGINT NOT NULL,
    -- global position of the OrderCreated event: orders newest first
    placed_tx        BIGINT NOT NULL,
    placed_seq       BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS customer_view_orders_recent
    ON customer_view_orders (customer_id, placed_tx DESC, placed_seq DESC);
CREATE TABLE IF NOT EXISTS order_confirmations (
    event_id     UUID PRIMARY KEY,
    order_id     TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    total        BIGINT NOT NULL,
    message      TEXT NOT NULL,
    confirmed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#;

/// Serialises concurrent schema creation by several processes (`CREATE TABLE IF NOT EXISTS`
/// alone can fail with a unique violation when two sessions race).
const SCHEMA_LOCK: i64 = 0x6375_7374_6f72_6473; // "customrds"

impl Tables {
    /// The tables in the database of `pool`, created if missing.
    pub async fn postgres(pool: PgPool) -> Result<Self, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Tables::Postgres(pool))
    }

    /// Fresh in-memory tables.
    pub fn memory() -> Self {
        Tables::Memory(Arc::default())
    }

    /// Whether these are PostgreSQL tables.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Tables::Postgres(_))
    }
}
