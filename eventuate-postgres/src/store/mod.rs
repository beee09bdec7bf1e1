//! [`PostgresEventStore`]: the [`EventStore`] on PostgreSQL. One schema holds one store (one
//! tenant); every append is a single statement; the global stream is read in
//! `(transaction_id, sequence)` order below the snapshot horizon (see [`crate::ordering`]).
//!
//! The store's parts: `append` (the write path: one statement per append, optimistic
//! concurrency and idempotency keys), `read` (entity loads, snapshots and the global stream
//! below the horizon) and `sql` (every statement, built once per schema).

mod append;
use append::Guard;
mod health;
use health::PoolHealth;
mod lookup;
mod read;
mod sql;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use eventuate_core::{
    AppendOutcome, AppendRequest, EventEnvelope, EventStore, Position, Snapshot, StreamBatch,
    StreamFilter,
};
use futures_util::future::BoxFuture;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use tokio::sync::watch;

use crate::migrate::validate_schema;
use crate::{Error, Result};
use sql::Sql;

type CoreResult<T> = eventuate_core::Result<T>;

/// Default largest accepted event payload: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The smallest pool [`PostgresEventStoreBuilder::connect`] accepts.
const MIN_CONNECTIONS: u32 = 1;

/// How long [`PostgresEventStoreBuilder::connect`] keeps trying a server that refuses
/// connections, by default.
pub const DEFAULT_CONNECT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a statement waits for a pooled connection, by default (sqlx's default).
pub const DEFAULT_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Configures and connects a [`PostgresEventStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), eventuate_postgres::Error> {
/// let store = eventuate_postgres::PostgresEventStore::builder()
///     .schema("tenant_a")
///     .max_connections(16)
///     .max_payload_bytes(1 << 20)
///     .migrate_on_connect(true)
///     .connect("postgres://postgres@localhost/app")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresEventStoreBuilder {
    schema: String,
    max_connections: u32,
    max_payload_bytes: usize,
    migrate_on_connect: bool,
    connect_retry_for: std::time::Duration,
    acquire_timeout: std::time::Duration,
}

impl Default for PostgresEventStoreBuilder {
    fn default() -> Self {
        PostgresEventStoreBuilder {
            schema: "public".into(),
            max_connections: 16,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            migrate_on_connect: false,
            connect_retry_for: DEFAULT_CONNECT_RETRY_FOR,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        }
    }
}

impl PostgresEventStoreBuilder {
    /// The schema that holds the store's tables (default `public`). One schema per tenant gives
    /// independent stores in one database. The name must be a plain identifier (ASCII letter
    /// or `_`, then letters, digits, `_`; at most 63 bytes); it is always quoted in SQL, so it
    /// is case-sensitive.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Size of the connection pool that [`connect`](Self::connect) opens (default 16; at
    /// least 1, or `connect` returns [`Error::InvalidMaxConnections`]). Ignored by
    /// [`with_pool`](Self::with_pool).
    ///
    /// The pool serves appends, reads and the dispatcher's bookkeeping. Once a subscriber
    /// runs, the store opens one more connection, outside the pool, for the LISTEN session
    /// that wakes it (see [`crate::wakeup`]): the server sees up to `n + 1` connections from
    /// this store, and the session never takes a pooled connection away from commands. A pool
    /// of 1 works; a transactional subscriber holds a pooled connection while its handler
    /// runs, so give handlers that also write through the store's pool room for both.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Largest accepted event payload in bytes (default [`DEFAULT_MAX_PAYLOAD_BYTES`]).
    pub fn max_payload_bytes(mut self, max: usize) -> Self {
        self.max_payload_bytes = max;
        self
    }

    /// Whether to apply the embedded migrations when connecting (default `false`: call
    /// [`PostgresEventStore::migrate`] explicitly, e.g. from a deployment step).
    pub fn migrate_on_connect(mut self, on: bool) -> Self {
        self.migrate_on_connect = on;
        self
    }

    /// How long [`connect`](Self::connect) keeps trying while the server refuses connections
    /// or is starting up (default [`DEFAULT_CONNECT_RETRY_FOR`], 30 s: a service may start
    /// before its database). Each failed try is logged at WARN with its cause; when the time
    /// is up, `connect` returns that cause ([`Error::Connect`], e.g. "Connection refused").
    /// Errors that waiting cannot mend (authentication, an unknown database, TLS settings)
    /// are returned at once. Zero: one try.
    pub fn connect_retry_for(mut self, wait: std::time::Duration) -> Self {
        self.connect_retry_for = wait;
        self
    }

    /// How long a statement waits for a pooled connection (default
    /// [`DEFAULT_ACQUIRE_TIMEOUT`], 30 s, sqlx's): while the database is down, every command
    /// waits this long before it fails. The error then names why no connection could be made
    /// ("Connection refused", ...) rather than only that the pool timed out. Ignored by
    /// [`with_pool`](Self::with_pool) (set it on the pool).
    pub fn acquire_timeout(mut self, wait: std::time::Duration) -> Self {
        self.acquire_timeout = wait;
        self
    }

    /// Opens a connection pool to `url` and builds the store.
    ///
    /// Pooled connections that a database restart broke are found and replaced: one idle
    /// for a second or more is checked before it is handed out, and every one for a few
    /// seconds after a statement found a connection broken; a read that failed on a broken
    /// connection before any row arrived runs again on another. A write that fails so is not
    /// retried: its outcome is unknown ([`eventuate_core::Error::OutcomeUnknown`]).
    pub async fn connect(self, url: &str) -> Result<PostgresEventStore> {
        validate_schema(&self.schema)?;
        if self.max_connections < MIN_CONNECTIONS {
            // sqlx would panic on an empty pool.
            return Err(Error::InvalidMaxConnections {
                requested: self.max_connections,
                minimum: MIN_CONNECTIONS,
            });
        }
        let health = Arc::new(PoolHealth::default());
        let pool = health::connect_pool(
            url,
            self.max_connections,
            self.connect_retry_for,
            self.acquire_timeout,
            health.clone(),
        )
        .await
        .map_err(|source| Error::Connect { source })?;
        self.build(pool, health).await
    }

    /// Builds the store on an existing pool (shared with the application's own queries).
    ///
    /// The store's LISTEN session (started with the first subscriber, see [`crate::wakeup`])
    /// does not take a connection of this pool either: it opens one connection of its own
    /// with the pool's connect options ([`PgPool::connect_options`]: same server, database,
    /// user, password and TLS settings). What was set on the pool's
    /// [`PgPoolOptions`](sqlx::postgres::PgPoolOptions) (`after_connect` hooks, timeouts, size) does not apply to that
    /// connection, and the server sees it in addition to the pool's connections.
    ///
    /// A read that fails on a broken connection before any row arrived runs again on another
    /// connection here too; checking connections before they are handed out is the pool's
    /// own setting.
    pub async fn with_pool(self, pool: PgPool) -> Result<PostgresEventStore> {
        self.build(pool, Arc::new(PoolHealth::default())).await
    }

    async fn build(self, pool: PgPool, health: Arc<PoolHealth>) -> Result<PostgresEventStore> {
        validate_schema(&self.schema)?;
        let (appended, _) = watch::channel(0);
        let store = PostgresEventStore {
            inner: Arc::new(Inner {
                sql: Sql::new(&self.schema),
                subscription_sql: crate::subscriptions::SubscriptionSql::new(&self.schema),
                wakeup: std::sync::OnceLock::new(),
                schema: self.schema,
                pool,
                health,
                max_payload_bytes: self.max_payload_bytes,
                appended,
                transaction_ids_checked: AtomicBool::new(false),
            }),
        };
        if self.migrate_on_connect {
            // Checks the transaction ids once migrated.
            store.migrate().await?;
        } else {
            store.check_transaction_ids().await?;
        }
        Ok(store)
    }
}

/// The PostgreSQL [`EventStore`]. Cheap to clone (the clones share one pool).
///
/// Appends are single statements (atomic, one round trip) that take no lock: writers to
/// different entities never wait for each other. Optimistic concurrency comes from the unique
/// key on `(entity_type, entity_id, entity_version)`; idempotency keys live in
/// `processed_commands` with the fingerprint of their command, written by the same statement. Readers follow the global stream
/// without ever skipping an event, as explained in [`crate::ordering`].
#[derive(Clone, Debug)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    // What statements found of the pool's connections (see `health`).
    health: Arc<PoolHealth>,
    schema: String,
    max_payload_bytes: usize,
    sql: Sql,
    appended: watch::Sender<u64>,
    subscription_sql: crate::subscriptions::SubscriptionSql,
    // Started by the first consumer that asks for wake-ups (see `crate::wakeup`).
    wakeup: std::sync::OnceLock<crate::wakeup::Wakeup>,
    // Set by the first stream read that found the stored transaction ids below this
    // cluster's (see `check_transaction_ids`); left unset while the tables do not exist.
    transaction_ids_checked: AtomicBool,
}

impl PostgresEventStore {
    /// A store in schema `public` of the database at `url`, with default settings and no
    /// migration; see [`builder`](Self::builder) for the options.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder().connect(url).await
    }

    /// Configures a store.
    pub fn builder() -> PostgresEventStoreBuilder {
        PostgresEventStoreBuilder::default()
    }

    /// Creates the schema if needed and applies the embedded migrations that are not applied
    /// yet. Safe to call concurrently from several processes, and on every start: when nothing
    /// needs migrating it only reads the migration history (no lock, no DDL), so a role
    /// without CREATE privileges can call it once the schema is migrated.
    ///
    /// The history is kept in the schema's own `eventuate_migrations` table, never in sqlx's
    /// `_sqlx_migrations`, so the application's sqlx migrations can share the schema. A schema
    /// migrated by a release that used `_sqlx_migrations` is adopted (nothing runs again); one
    /// migrated by a newer release is refused with [`Error::SchemaFromNewerRelease`].
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|source| Error::Connect { source })?;
        // The migrator holds a session advisory lock while it works: if this future is
        // dropped midway, closing the connection is what releases it.
        conn.close_on_drop();
        crate::migrate::run(&mut conn, &self.inner.schema).await?;
        drop(conn);
        self.check_transaction_ids().await.map(|_| ())
    }

    /// The migration versions applied to the schema (empty when it was never migrated, or
    /// only by a release that kept its history in `_sqlx_migrations`), and the newest version
    /// this release knows.
    pub async fn migration_status(&self) -> Result<(Vec<i64>, i64)> {
        let schema = &self.inner.schema;
        let quoted = quote(schema);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{quoted}.{}", crate::migrate::MIGRATIONS_TABLE))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|source| Error::Database {
                context: format!("look for the migration history (schema `{schema}`)"),
                source,
            })?;
        let applied = if exists {
            sqlx::query_scalar(&format!(
                "SELECT version FROM {quoted}.{} ORDER BY version",
                crate::migrate::MIGRATIONS_TABLE
            ))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|source| Error::Database {
                context: format!("read the migration history (schema `{schema}`)"),
                source,
            })?
        } else {
            Vec::new()
        };
        Ok((applied, crate::migrate::latest_migration()))
    }

    /// Refuses a store moved logically into this cluster: stored events written by
    /// transactions whose ids this cluster has not reached yet (see [`crate::ordering`],
    /// "Physical moves only"). Compares the xmax of the statement's snapshot (the next
    /// transaction id; reading it assigns none) with the largest stored `transaction_id` (one
    /// step down the primary key). Every event the snapshot sees was written by a transaction
    /// that completed before it, i.e. below its xmax, so the test never fires on a store that
    /// stayed in its cluster or moved physically, primary or standby. A store whose tables do
    /// not exist yet passes (nothing is stored; `migrate` checks again): `Ok(false)`.
    async fn check_transaction_ids(&self) -> Result<bool> {
        let schema = &self.inner.schema;
        let sql = format!(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             (SELECT max(transaction_id) FROM {}.events)",
            quote(schema)
        );
        let pool = &self.inner.pool;
        let row: Option<(i64, Option<i64>)> = match self
            .inner
            .health
            .read(pool, || sqlx::query_as(&sql).fetch_one(pool))
            .await
        {
            Ok(row) => Some(row),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => None,
            Err(source) => {
                return Err(Error::Database {
                    context: format!(
                        "compare the stored transaction ids with the cluster's (schema `{schema}`)"
                    ),
                    source,
                });
            }
        };
        match row {
            Some((current, Some(max_stored))) if current <= max_stored => {
                Err(Error::LogicalMoveDetected {
                    schema: schema.clone(),
                    current_xid: to_u64(current),
                    max_stored: to_u64(max_stored),
                })
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// [`check_transaction_ids`](Self::check_transaction_ids) before the first stream read of
    /// this store (a dispatcher's first read), as the trait's error.
    async fn check_transaction_ids_once(&self) -> CoreResult<()> {
        if self
            .inner
            .transaction_ids_checked
            .load(AtomicOrdering::Acquire)
        {
            return Ok(());
        }
        let checked = self.check_transaction_ids().await.map_err(|e| {
            eventuate_core::Error::backend("check the stored transaction ids before reading", e)
        })?;
        if checked {
            self.inner
                .transaction_ids_checked
                .store(true, AtomicOrdering::Release);
        }
        Ok(())
    }

    /// The connection pool, for the application's own queries (read models written in the
    /// same database, ...).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The largest accepted event payload, in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.inner.max_payload_bytes
    }

    /// A receiver that changes after every append this store made (a counter of appends).
    ///
    /// An in-process wake-up for readers: it only says "look again", the events are always
    /// read from the table. It fires after the append's commit, never inside it, so it costs
    /// the writers nothing.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.inner.appended.subscribe()
    }

    pub(crate) fn subscription_sql(&self) -> &crate::subscriptions::SubscriptionSql {
        &self.inner.subscription_sql
    }

    pub(crate) fn wakeup(&self) -> &crate::wakeup::Wakeup {
        self.inner.wakeup.get_or_init(|| {
            crate::wakeup::Wakeup::new(self.pool().clone(), self.schema(), self.appended())
        })
    }

    /// Wakes the receivers of [`appended`](Self::appended); call it after committing a
    /// transaction that used [`append_in`](Self::append_in).
    pub fn notify_appended(&self) {
        self.wakeup().start_forwarder();
        self.inner.appended.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl EventStore for PostgresEventStore {
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, CoreResult<AppendOutcome>> {
        Box::pin(self.append_pooled(request, Guard::Checked))
    }

    fn append_after_load(
        &self,
        request: AppendRequest,
    ) -> BoxFuture<'_, CoreResult<AppendOutcome>> {
        Box::pin(self.append_pooled(request, Guard::Loaded))
    }

    fn load<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
    ) -> BoxFuture<'a, CoreResult<Vec<EventEnvelope>>> {
        Box::pin(self.load_events(entity_type, entity_id, after_version))
    }

    fn load_for_fold<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
    ) -> BoxFuture<'a, CoreResult<Vec<eventuate_core::StoredEvent>>> {
        Box::pin(self.load_fold(entity_type, entity_id, after_version))
    }

    fn fold_events<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
        apply: &'a mut eventuate_core::store::FoldFn<'_>,
    ) -> BoxFuture<'a, CoreResult<()>> {
        Box::pin(self.fold(entity_type, entity_id, after_version, apply))
    }

    fn load_with_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, CoreResult<(Option<Snapshot>, Vec<eventuate_core::StoredEvent>)>> {
        Box::pin(self.load_snapshot_and_fold(entity_type, entity_id, snapshot_version))
    }

    fn load_under_types<'a>(
        &'a self,
        entity_types: &'a [&'a str],
        entity_id: &'a str,
        snapshot_version: Option<u32>,
    ) -> BoxFuture<'a, CoreResult<Vec<eventuate_core::TypedHistory>>> {
        Box::pin(self.load_under_types(entity_types, entity_id, snapshot_version))
    }

    fn read_stream<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, CoreResult<Vec<EventEnvelope>>> {
        Box::pin(async move {
            self.check_transaction_ids_once().await?;
            self.read(after, filter, limit).await
        })
    }

    fn read_batch<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, CoreResult<StreamBatch>> {
        Box::pin(async move {
            self.check_transaction_ids_once().await?;
            self.read_batch_below_horizon(after, filter, limit).await
        })
    }

    fn head(&self) -> BoxFuture<'_, CoreResult<Position>> {
        Box::pin(async move {
            self.check_transaction_ids_once().await?;
            self.read_head().await
        })
    }

    fn count_after<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: u64,
    ) -> BoxFuture<'a, CoreResult<u64>> {
        Box::pin(self.count(after, filter, limit))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, CoreResult<()>> {
        Box::pin(self.store_snapshot(snapshot))
    }

    fn recorded_command<'a>(
        &'a self,
        key: &'a eventuate_core::IdempotencyKey,
    ) -> BoxFuture<'a, CoreResult<Option<Option<eventuate_core::CommandFingerprint>>>> {
        Box::pin(self.recorded_key(key))
    }

    fn entity_types(&self) -> BoxFuture<'_, CoreResult<Vec<String>>> {
        Box::pin(self.stored_entity_types())
    }

    fn load_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, CoreResult<Option<Snapshot>>> {
        Box::pin(self.fetch_snapshot(entity_type, entity_id, snapshot_version))
    }
}

fn backend(context: String, e: sqlx::Error) -> eventuate_core::Error {
    // A missing table almost always means the schema was never migrated: say so.
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("42P01") {
            return eventuate_core::Error::backend(
                format!(
                    "{context} (the event store tables are missing: run \
                     PostgresEventStore::migrate, or build the store with \
                     migrate_on_connect(true))"
                ),
                e,
            );
        }
    }
    eventuate_core::Error::backend(context, e)
}

fn get<'r, T>(row: &'r PgRow, index: usize, context: &dyn Fn() -> String) -> CoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|e| backend(context(), e))
}

/// [`get`] without sqlx's per-value check that the column's type is compatible with `T`: for
/// the hot stream and load paths, whose statements (`sql.rs`) fix each column's type. A value
/// of another type still fails to decode (a length or format error), it is only not named as
/// a type mismatch.
fn get_unchecked<'r, T>(row: &'r PgRow, index: usize, context: &dyn Fn() -> String) -> CoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres>,
{
    row.try_get_unchecked(index)
        .map_err(|e| backend(context(), e))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A schema name as a quoted SQL identifier. Only called on validated names, which contain no
/// quote to escape.
pub(crate) fn quote(schema: &str) -> String {
    format!("\"{schema}\"")
}
