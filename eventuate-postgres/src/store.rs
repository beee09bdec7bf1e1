//! [`PostgresEventStore`]: the [`EventStore`] on PostgreSQL. One schema holds one store (one
//! tenant); every append is a single statement; the global stream is read in
//! `(transaction_id, sequence)` order below the snapshot horizon (see [`crate::ordering`]).

use std::sync::Arc;

use eventuate_core::store::{validate_append, validate_payload};
use eventuate_core::{
    AppendOutcome, AppendRequest, EventEnvelope, EventMetadata, EventStore, ExpectedVersion,
    Position, Snapshot, StreamFilter,
};
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Acquire, PgConnection, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::migrate::{migrator, validate_schema};
use crate::{Error, Result};

type CoreResult<T> = eventuate_core::Result<T>;

/// Default largest accepted event payload: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// How many times an append whose guard failed only because its snapshot was a moment too old
/// is re-run before giving up (see [`PostgresEventStore::append_in`]).
const GUARD_ATTEMPTS: u32 = 3;

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
}

impl Default for PostgresEventStoreBuilder {
    fn default() -> Self {
        PostgresEventStoreBuilder {
            schema: "public".into(),
            max_connections: 16,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            migrate_on_connect: false,
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

    /// Size of the connection pool that [`connect`](Self::connect) opens (default 16).
    /// Ignored by [`with_pool`](Self::with_pool).
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

    /// Opens a connection pool to `url` and builds the store.
    pub async fn connect(self, url: &str) -> Result<PostgresEventStore> {
        validate_schema(&self.schema)?;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .connect(url)
            .await
            .map_err(|source| Error::Connect { source })?;
        self.with_pool(pool).await
    }

    /// Builds the store on an existing pool (shared with the application's own queries).
    pub async fn with_pool(self, pool: PgPool) -> Result<PostgresEventStore> {
        validate_schema(&self.schema)?;
        let (appended, _) = watch::channel(0);
        let store = PostgresEventStore {
            inner: Arc::new(Inner {
                sql: Sql::new(&self.schema),
                subscription_sql: crate::subscriptions::SubscriptionSql::new(&self.schema),
                wakeup: std::sync::OnceLock::new(),
                schema: self.schema,
                pool,
                max_payload_bytes: self.max_payload_bytes,
                appended,
            }),
        };
        if self.migrate_on_connect {
            store.migrate().await?;
        }
        Ok(store)
    }
}

/// The PostgreSQL [`EventStore`]. Cheap to clone (the clones share one pool).
///
/// Appends are single statements (atomic, one round trip) that take no lock: writers to
/// different entities never wait for each other. Optimistic concurrency comes from the unique
/// key on `(entity_type, entity_id, entity_version)`; idempotency keys live in
/// `processed_commands`, written by the same statement. Readers follow the global stream
/// without ever skipping an event, as explained in [`crate::ordering`].
#[derive(Clone, Debug)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    schema: String,
    max_payload_bytes: usize,
    sql: Sql,
    appended: watch::Sender<u64>,
    subscription_sql: crate::subscriptions::SubscriptionSql,
    // Started by the first consumer that asks for wake-ups (see `crate::wakeup`).
    wakeup: std::sync::OnceLock<crate::wakeup::Wakeup>,
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
    /// yet. Safe to call concurrently from several processes, and on every start.
    pub async fn migrate(&self) -> Result<()> {
        let schema = &self.inner.schema;
        let quoted = quote(schema);
        let database = |context: &str| {
            let context = format!("{context} (schema `{schema}`)");
            move |source| Error::Database { context, source }
        };
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|source| Error::Connect { source })?;
        // The migration leaves `search_path` pointing at the tenant's schema; never hand that
        // connection back to the pool.
        conn.close_on_drop();
        {
            // Two processes creating the same schema at once would collide on the catalog's
            // unique index; serialize them (the migrator itself locks per database).
            let mut tx = conn.begin().await.map_err(database("begin"))?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7461))")
                .bind(schema)
                .execute(&mut *tx)
                .await
                .map_err(database("lock the schema creation"))?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
                .execute(&mut *tx)
                .await
                .map_err(database("create the schema"))?;
            tx.commit().await.map_err(database("create the schema"))?;
        }
        // The migration SQL is static and unqualified; with the search path on the schema,
        // its tables and sqlx's `_sqlx_migrations` land there, one set per tenant.
        sqlx::query(&format!("SET search_path TO {quoted}"))
            .execute(&mut *conn)
            .await
            .map_err(database("set search_path"))?;
        let migrator = migrator().await.map_err(|source| Error::Migrate {
            schema: schema.clone(),
            source,
        })?;
        migrator
            .run(&mut *conn)
            .await
            .map_err(|source| Error::Migrate {
                schema: schema.clone(),
                source,
            })
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

    /// Appends inside the caller's transaction: the events (and the idempotency key) commit or
    /// roll back with the caller's other writes, e.g. a read model updated by the same handler.
    ///
    /// Same checks and outcomes as [`EventStore::append`], with these differences:
    /// - nothing is visible, and [`appended`](Self::appended) does not fire, until the caller
    ///   commits; call [`notify_appended`](Self::notify_appended) after the commit;
    /// - a lost race (a unique violation) aborts the caller's transaction, as any failed
    ///   statement does in PostgreSQL; the error still says what happened;
    /// - the stream orders transactions by their id, which a transaction gets at its first
    ///   write. If the entity's current version was written by a transaction that got its id
    ///   *after* the caller's, appending the next version here would put it before its
    ///   predecessor in the stream; the store refuses it with [`eventuate_core::Error::Config`]
    ///   (retry in a new transaction). Appending early in the transaction avoids it.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        request: AppendRequest,
    ) -> CoreResult<AppendOutcome> {
        self.check(&request)?;
        self.append_on(conn, &request, true).await
    }

    fn check(&self, request: &AppendRequest) -> CoreResult<()> {
        validate_append(request)?;
        for event in &request.events {
            validate_payload(request, event, self.inner.max_payload_bytes)?;
        }
        Ok(())
    }

    async fn append_on(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        in_transaction: bool,
    ) -> CoreResult<AppendOutcome> {
        // The caller has run `check`: payloads are parsed once per append.
        let sql = &self.inner.sql;
        let entity_type = request.entity_type.as_str();
        let entity_id = request.entity_id.as_str();
        let base = match request.expected {
            ExpectedVersion::New => 0,
            ExpectedVersion::Exactly(v) => i64::try_from(v).map_err(|_| {
                eventuate_core::Error::Config(format!(
                    "append to {entity_type} `{entity_id}` expects version {v}, beyond what the \
                     store can hold"
                ))
            })?,
        };
        let event_ids: Vec<Uuid> = request.events.iter().map(|e| e.event_id).collect();
        let event_types: Vec<&str> = request
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect();
        let payloads: Vec<&str> = request.events.iter().map(|e| e.payload.as_str()).collect();
        let metadata = request
            .events
            .iter()
            .map(|e| serde_json::to_string(&e.metadata))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|source| eventuate_core::Error::Encode {
                what: format!("event metadata for {entity_type} `{entity_id}`"),
                source,
            })?;
        // Fits: entity_hash is 31 bits.
        let hash = i32::try_from(eventuate_core::name::entity_hash(entity_id)).unwrap_or(0);
        let statements = match (&request.expected, &request.idempotency) {
            (ExpectedVersion::New, None) => &sql.append_new,
            (ExpectedVersion::Exactly(_), None) => &sql.append_exactly,
            (ExpectedVersion::New, Some(_)) => &sql.append_new_key,
            (ExpectedVersion::Exactly(_), Some(_)) => &sql.append_exactly_key,
        };
        // Most commands append one event: a plain row is cheaper for the server than UNNEST.
        let single = match request.events.as_slice() {
            [event] => Some(event),
            _ => None,
        };
        let statement = if single.is_some() {
            &statements.one
        } else {
            &statements.many
        };
        let context = || format!("append to {entity_type} `{entity_id}`");

        for _ in 0..GUARD_ATTEMPTS {
            let query = sqlx::query(statement);
            let mut query = match single {
                Some(event) => query
                    .bind(event.event_id)
                    .bind(event.event_type.as_str())
                    .bind(event.payload.as_str())
                    .bind(metadata[0].as_str()),
                None => query
                    .bind(&event_ids)
                    .bind(&event_types)
                    .bind(&payloads)
                    .bind(&metadata),
            }
            .bind(entity_type)
            .bind(entity_id)
            .bind(base)
            .bind(hash);
            if let Some(key) = &request.idempotency {
                query = query
                    .bind(key.subscriber_id.as_str())
                    .bind(key.triggering_event_id)
                    .bind(i64::from(key.sequence));
            }
            let rows = match query.fetch_all(&mut *conn).await {
                Ok(rows) => rows,
                Err(sqlx::Error::Database(db))
                    if db.is_unique_violation()
                        && db.constraint() == Some("events_entity_version_unique") =>
                {
                    // Another writer committed one of our versions first. In the caller's
                    // transaction the failure aborted it: ask the pool instead.
                    let actual = if in_transaction {
                        let mut other = self
                            .inner
                            .pool
                            .acquire()
                            .await
                            .map_err(|e| eventuate_core::Error::backend(context(), e))?;
                        self.current_version(&mut other, entity_type, entity_id)
                            .await?
                    } else {
                        self.current_version(conn, entity_type, entity_id).await?
                    };
                    return Err(lost_race(request, actual));
                }
                Err(sqlx::Error::Database(db))
                    if db.is_unique_violation()
                        && db.constraint() == Some("events_event_id_unique") =>
                {
                    // Which one? In the caller's transaction the failure aborted it: ask the
                    // pool instead.
                    let lookup = sqlx::query_scalar(&sql.taken_event_id).bind(&event_ids);
                    let taken: Option<Uuid> = if in_transaction {
                        let mut other = self
                            .inner
                            .pool
                            .acquire()
                            .await
                            .map_err(|e| backend(context(), e))?;
                        lookup.fetch_optional(&mut *other).await
                    } else {
                        lookup.fetch_optional(&mut *conn).await
                    }
                    .map_err(|e| backend(context(), e))?;
                    return Err(match taken {
                        Some(event_id) => eventuate_core::Error::DuplicateEventId {
                            entity_type: request.entity_type.clone(),
                            entity_id: request.entity_id.clone(),
                            event_id,
                        },
                        // Taken by a transaction that has not committed (or rolled back) yet.
                        None => eventuate_core::Error::backend(
                            format!("{}: an event id of this append is already taken", context()),
                            sqlx::Error::Database(db),
                        ),
                    });
                }
                Err(e) => return Err(backend(context(), e)),
            };
            if !rows.is_empty() {
                let mut stored = Vec::with_capacity(rows.len());
                for row in &rows {
                    let transaction: i64 = get(row, 0, &context)?;
                    let sequence: i64 = get(row, 1, &context)?;
                    let version: i64 = get(row, 2, &context)?;
                    stored.push((
                        version,
                        Position::new(to_u64(transaction), to_u64(sequence)),
                    ));
                }
                stored.sort_unstable_by_key(|(version, _)| *version);
                let version = stored.last().map_or(0, |(v, _)| to_u64(*v));
                if !in_transaction {
                    self.notify_appended();
                }
                return Ok(AppendOutcome::Appended {
                    version,
                    positions: stored.into_iter().map(|(_, p)| p).collect(),
                });
            }
            // Nothing inserted: the key was already there, or the version guard failed.
            // The key is checked first so that a re-delivered create is a duplicate, not
            // "entity exists".
            if let Some(key) = &request.idempotency {
                let exists: bool = sqlx::query_scalar(&sql.key_exists)
                    .bind(key.subscriber_id.as_str())
                    .bind(key.triggering_event_id)
                    .bind(i64::from(key.sequence))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| backend(context(), e))?;
                if exists {
                    return Ok(AppendOutcome::Duplicate);
                }
            }
            let actual = self.current_version(conn, entity_type, entity_id).await?;
            match request.expected {
                ExpectedVersion::New if actual > 0 => return Err(lost_race(request, actual)),
                ExpectedVersion::Exactly(_) if actual == 0 => {
                    return Err(eventuate_core::Error::EntityNotFound {
                        entity_type: entity_type.to_owned(),
                        entity_id: entity_id.to_owned(),
                    });
                }
                ExpectedVersion::Exactly(v) if actual != v => {
                    return Err(lost_race(request, actual));
                }
                // The version we build on was committed between the statement's snapshot and
                // our look-up: run the statement again with a fresh snapshot.
                _ => continue,
            }
        }
        Err(match request.expected {
            ExpectedVersion::Exactly(v) => eventuate_core::Error::Config(format!(
                "{}: version {v} was written by a transaction younger than the one appending \
                 version {}; appending here would order the entity's events backwards in the \
                 stream. Append in a new transaction (or before the transaction's other writes)",
                context(),
                v + 1
            )),
            ExpectedVersion::New => eventuate_core::Error::Config(format!(
                "{}: the entity neither exists nor can be created; is another process deleting \
                 events?",
                context()
            )),
        })
    }

    async fn current_version(
        &self,
        conn: &mut PgConnection,
        entity_type: &str,
        entity_id: &str,
    ) -> CoreResult<u64> {
        let version: i64 = sqlx::query_scalar(&self.inner.sql.current_version)
            .bind(entity_type)
            .bind(entity_id)
            .fetch_one(conn)
            .await
            .map_err(|e| {
                backend(
                    format!("read the version of {entity_type} `{entity_id}`"),
                    e,
                )
            })?;
        Ok(to_u64(version))
    }

    async fn append_pooled(&self, request: AppendRequest) -> CoreResult<AppendOutcome> {
        // Validate before taking a connection: bad input never waits for the pool.
        self.check(&request)?;
        let mut conn = self.inner.pool.acquire().await.map_err(|e| {
            backend(
                format!(
                    "append to {} `{}`: no database connection",
                    request.entity_type, request.entity_id
                ),
                e,
            )
        })?;
        self.append_on(&mut conn, &request, false).await
    }

    async fn load_events(
        &self,
        entity_type: &str,
        entity_id: &str,
        after_version: u64,
    ) -> CoreResult<Vec<EventEnvelope>> {
        eventuate_core::name::validate_entity_type(entity_type)?;
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load {entity_type} `{entity_id}`");
        let rows = sqlx::query(&self.inner.sql.load)
            .bind(entity_type)
            .bind(entity_id)
            .bind(i64::try_from(after_version).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        rows.iter().map(|row| envelope(row, &context)).collect()
    }

    /// Three columns instead of the envelope's nine: rebuilding an aggregate needs neither
    /// metadata nor positions, and the metadata JSON was most of the bytes and decode time.
    async fn load_fold(
        &self,
        entity_type: &str,
        entity_id: &str,
        after_version: u64,
    ) -> CoreResult<Vec<eventuate_core::StoredEvent>> {
        eventuate_core::name::validate_entity_type(entity_type)?;
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load {entity_type} `{entity_id}`");
        let rows = sqlx::query(&self.inner.sql.load_fold)
            .bind(entity_type)
            .bind(entity_id)
            .bind(i64::try_from(after_version).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        rows.iter()
            .map(|row| {
                let version: i64 = get(row, 0, &context)?;
                Ok(eventuate_core::StoredEvent {
                    entity_version: to_u64(version),
                    event_type: get(row, 1, &context)?,
                    payload: get(row, 2, &context)?,
                })
            })
            .collect()
    }

    /// The snapshot and the events after it in one statement (one round trip, one view of
    /// the data): the first row, if `kind` is 0, is the snapshot.
    async fn load_snapshot_and_fold(
        &self,
        entity_type: &str,
        entity_id: &str,
        snapshot_version: u32,
    ) -> CoreResult<(Option<Snapshot>, Vec<eventuate_core::StoredEvent>)> {
        eventuate_core::name::validate_entity_type(entity_type)?;
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load {entity_type} `{entity_id}` with its snapshot");
        let rows = sqlx::query(&self.inner.sql.load_snapshot_and_fold)
            .bind(entity_type)
            .bind(entity_id)
            .bind(i64::from(snapshot_version))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        let mut snapshot = None;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: i32 = get(row, 0, &context)?;
            let version: i64 = get(row, 1, &context)?;
            let payload: String = get(row, 3, &context)?;
            if kind == 0 {
                snapshot = Some(Snapshot {
                    entity_type: entity_type.to_owned(),
                    entity_id: entity_id.to_owned(),
                    entity_version: to_u64(version),
                    snapshot_version,
                    payload,
                });
            } else {
                events.push(eventuate_core::StoredEvent {
                    entity_version: to_u64(version),
                    event_type: get(row, 2, &context)?,
                    payload,
                });
            }
        }
        Ok((snapshot, events))
    }

    async fn read(
        &self,
        after: Position,
        filter: &StreamFilter,
        limit: usize,
    ) -> CoreResult<Vec<EventEnvelope>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let context = || format!("read the event stream after position {after}");
        let sql = &self.inner.sql;
        let statement = match (filter.entity_types.is_empty(), filter.partition.is_some()) {
            (true, false) => &sql.read_all,
            (false, false) => &sql.read_types,
            (true, true) => &sql.read_partition,
            (false, true) => &sql.read_types_partition,
        };
        let mut query = sqlx::query(statement)
            .bind(i64::try_from(after.transaction).unwrap_or(i64::MAX))
            .bind(i64::try_from(after.sequence).unwrap_or(i64::MAX))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        if !filter.entity_types.is_empty() {
            query = query.bind(&filter.entity_types);
        }
        if let Some(partition) = filter.partition {
            query = query
                .bind(i64::from(partition.count.max(1)))
                .bind(i64::from(partition.index));
        }
        let rows = query
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        rows.iter().map(|row| envelope(row, &context)).collect()
    }

    async fn count(&self, after: Position, filter: &StreamFilter) -> CoreResult<u64> {
        let context = || format!("count the events after position {after}");
        let sql = &self.inner.sql;
        let statement = match (filter.entity_types.is_empty(), filter.partition.is_some()) {
            (true, false) => &sql.count_all,
            (false, false) => &sql.count_types,
            (true, true) => &sql.count_partition,
            (false, true) => &sql.count_types_partition,
        };
        let mut query = sqlx::query_scalar(statement)
            .bind(i64::try_from(after.transaction).unwrap_or(i64::MAX))
            .bind(i64::try_from(after.sequence).unwrap_or(i64::MAX));
        if !filter.entity_types.is_empty() {
            query = query.bind(&filter.entity_types);
        }
        if let Some(partition) = filter.partition {
            query = query
                .bind(i64::from(partition.count.max(1)))
                .bind(i64::from(partition.index));
        }
        let count: i64 = query
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        Ok(to_u64(count))
    }

    async fn read_head(&self) -> CoreResult<Position> {
        let context = || "read the head of the event stream".to_owned();
        let row = sqlx::query(&self.inner.sql.head)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        match row {
            None => Ok(Position::START),
            Some(row) => {
                let transaction: i64 = get(&row, 0, &context)?;
                let sequence: i64 = get(&row, 1, &context)?;
                Ok(Position::new(to_u64(transaction), to_u64(sequence)))
            }
        }
    }

    async fn store_snapshot(&self, snapshot: Snapshot) -> CoreResult<()> {
        eventuate_core::name::validate_entity_type(&snapshot.entity_type)?;
        eventuate_core::name::validate_entity_id(&snapshot.entity_id)?;
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&snapshot.payload) {
            return Err(eventuate_core::Error::InvalidPayload {
                entity_type: snapshot.entity_type,
                entity_id: snapshot.entity_id,
                event_type: "snapshot".into(),
                reason: e.to_string(),
            });
        }
        let context = || {
            format!(
                "save a snapshot of {} `{}`",
                snapshot.entity_type, snapshot.entity_id
            )
        };
        let version = i64::try_from(snapshot.entity_version).map_err(|_| {
            eventuate_core::Error::Config(format!("{}: version out of range", context()))
        })?;
        sqlx::query(&self.inner.sql.save_snapshot)
            .bind(&snapshot.entity_type)
            .bind(&snapshot.entity_id)
            .bind(i64::from(snapshot.snapshot_version))
            .bind(version)
            .bind(&snapshot.payload)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        Ok(())
    }

    async fn fetch_snapshot(
        &self,
        entity_type: &str,
        entity_id: &str,
        snapshot_version: u32,
    ) -> CoreResult<Option<Snapshot>> {
        eventuate_core::name::validate_entity_type(entity_type)?;
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load the snapshot of {entity_type} `{entity_id}`");
        let row = sqlx::query(&self.inner.sql.load_snapshot)
            .bind(entity_type)
            .bind(entity_id)
            .bind(i64::from(snapshot_version))
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version: i64 = get(&row, 0, &context)?;
        let payload: String = get(&row, 1, &context)?;
        Ok(Some(Snapshot {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
            entity_version: to_u64(version),
            snapshot_version,
            payload,
        }))
    }
}

impl EventStore for PostgresEventStore {
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, CoreResult<AppendOutcome>> {
        Box::pin(self.append_pooled(request))
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

    fn load_with_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, CoreResult<(Option<Snapshot>, Vec<eventuate_core::StoredEvent>)>> {
        Box::pin(self.load_snapshot_and_fold(entity_type, entity_id, snapshot_version))
    }

    fn read_stream<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, CoreResult<Vec<EventEnvelope>>> {
        Box::pin(self.read(after, filter, limit))
    }

    fn head(&self) -> BoxFuture<'_, CoreResult<Position>> {
        Box::pin(self.read_head())
    }

    fn count_after<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
    ) -> BoxFuture<'a, CoreResult<u64>> {
        Box::pin(self.count(after, filter))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, CoreResult<()>> {
        Box::pin(self.store_snapshot(snapshot))
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

/// The error for an append that found the entity at `actual`, not where it expected.
fn lost_race(request: &AppendRequest, actual: u64) -> eventuate_core::Error {
    match request.expected {
        ExpectedVersion::New => eventuate_core::Error::EntityExists {
            entity_type: request.entity_type.clone(),
            entity_id: request.entity_id.clone(),
            version: actual,
        },
        ExpectedVersion::Exactly(expected) => eventuate_core::Error::Conflict {
            entity_type: request.entity_type.clone(),
            entity_id: request.entity_id.clone(),
            expected,
            actual,
        },
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

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Decodes a row of the columns listed in [`EVENT_COLUMNS`].
fn envelope(row: &PgRow, context: &dyn Fn() -> String) -> CoreResult<EventEnvelope> {
    let transaction: i64 = get(row, 0, context)?;
    let sequence: i64 = get(row, 1, context)?;
    let event_id: Uuid = get(row, 2, context)?;
    let entity_type: String = get(row, 3, context)?;
    let entity_id: String = get(row, 4, context)?;
    let version: i64 = get(row, 5, context)?;
    let event_type: String = get(row, 6, context)?;
    let payload: String = get(row, 7, context)?;
    let metadata: &str = get(row, 8, context)?;
    let metadata: EventMetadata = match serde_json::from_str(metadata) {
        Ok(metadata) => metadata,
        Err(source) => {
            return Err(eventuate_core::Error::Decode {
                entity_type,
                entity_id,
                version: to_u64(version),
                event_type: format!("metadata of {event_type}"),
                source,
            });
        }
    };
    Ok(EventEnvelope {
        event_id,
        entity_type,
        entity_id,
        entity_version: to_u64(version),
        event_type,
        payload,
        metadata,
        position: Position::new(to_u64(transaction), to_u64(sequence)),
    })
}

/// A schema name as a quoted SQL identifier. Only called on validated names, which contain no
/// quote to escape.
pub(crate) fn quote(schema: &str) -> String {
    format!("\"{schema}\"")
}

const EVENT_COLUMNS: &str = "transaction_id, sequence, event_id, entity_type, entity_id, \
     entity_version, event_type, payload::text, metadata::text";

/// The horizon below which the stream is final (see [`crate::ordering`]): the oldest
/// transaction still running at the statement's snapshot that could write to this database's
/// tables, or the snapshot's xmax when there is none. A running transaction is ignored only
/// when `pg_stat_activity` proves it cannot write events: it belongs to a backend connected to
/// another database (a transaction never changes database), or to an autovacuum worker. Anything
/// unidentified (a prepared transaction, a transaction that ended since the snapshot) holds the
/// horizon back. A planner init-plan: computed once per statement.
const HORIZON: &str = "(SELECT COALESCE(\
     (SELECT min(x::text::bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS x \
      WHERE NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(NULL) AS a \
       WHERE a.backend_xid = x::xid \
       AND (a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database()) \
            OR a.backend_type = 'autovacuum worker'))), \
     pg_snapshot_xmax(pg_current_snapshot())::text::bigint))";

/// Every statement, built once per store with the schema spliced in (names cannot be bound
/// as parameters). sqlx prepares each on first use per connection and caches it.
#[derive(Debug)]
struct Sql {
    append_new: AppendSql,
    append_exactly: AppendSql,
    append_new_key: AppendSql,
    append_exactly_key: AppendSql,
    key_exists: String,
    current_version: String,
    load: String,
    taken_event_id: String,
    load_fold: String,
    load_snapshot_and_fold: String,
    read_all: String,
    read_types: String,
    read_partition: String,
    read_types_partition: String,
    count_all: String,
    count_types: String,
    count_partition: String,
    count_types_partition: String,
    head: String,
    save_snapshot: String,
    load_snapshot: String,
}

/// One kind of append, for one event and for several.
#[derive(Debug)]
struct AppendSql {
    one: String,
    many: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let s = quote(schema);
        // $1..$4: event id, type, payload and metadata (scalars for one event, arrays for
        // several); $5 entity type, $6 entity id, $7 the version the append builds on (0 for a
        // create), $8 partition hash; $9..$11 the idempotency key.
        //
        // A create needs no guard: versions start at 1 and have no gaps, so an existing entity
        // has a version 1 and the unique key turns the insert into a unique violation, which is
        // mapped to `EntityExists`. An update must check that version $7 exists (or it could
        // leave a gap), and that it comes from an older transaction, so that the stream, which
        // orders by transaction id, keeps the entity's versions ascending. For the store's own
        // single-statement appends that always holds; see `append_in`.
        let guard_exactly = format!(
            "EXISTS (SELECT 1 FROM {s}.events WHERE entity_type = $5 AND entity_id = $6 \
             AND entity_version = $7 \
             AND transaction_id < pg_current_xact_id()::text::bigint)"
        );
        let columns = format!(
            "INSERT INTO {s}.events (event_id, entity_type, entity_id, entity_version, \
             event_type, payload, metadata, partition_hash)"
        );
        let returning = "RETURNING transaction_id, sequence, entity_version";
        let one_values = "$1::uuid, $5, $6, $7 + 1, $2::text, $3::text::json, $4::text::json, $8";
        let insert = |condition: Option<&str>| AppendSql {
            one: match condition {
                None => format!("{columns} VALUES ({one_values}) {returning}"),
                Some(c) => format!("{columns} SELECT {one_values} WHERE {c} {returning}"),
            },
            many: format!(
                "{columns} \
                 SELECT e.event_id, $5, $6, $7 + e.ord, e.event_type, e.payload::json, \
                 e.metadata::json, $8 \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
                 AS e(event_id, event_type, payload, metadata, ord) \
                 {} ORDER BY e.ord {returning}",
                condition.map(|c| format!("WHERE {c}")).unwrap_or_default()
            ),
        };
        // The key row is inserted only when the version guard passes, and the events only when
        // the key row was inserted: one statement, so a failed guard or a unique violation
        // records no key, and a repeated key writes no event.
        let with_key = |guard: Option<&str>| {
            let key = format!(
                "WITH key AS (INSERT INTO {s}.processed_commands \
                 (subscriber_id, triggering_event_id, sequence) \
                 SELECT $9, $10, $11 {} \
                 ON CONFLICT DO NOTHING RETURNING 1)",
                guard.map(|g| format!("WHERE {g}")).unwrap_or_default()
            );
            let events = insert(Some("EXISTS (SELECT 1 FROM key)"));
            AppendSql {
                one: format!("{key} {}", events.one),
                many: format!("{key} {}", events.many),
            }
        };
        // Stream reads: $1, $2 the position to read after, $3 the limit, then the filters.
        let read = |filters: &str| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                 WHERE (transaction_id, sequence) > ($1, $2) AND transaction_id < {HORIZON}{filters} \
                 ORDER BY transaction_id, sequence LIMIT $3"
            )
        };
        // Counts: the same rows as a read without limit, so the filters start at $3.
        let count = |filters: &str| {
            format!(
                "SELECT count(*) FROM {s}.events \
                 WHERE (transaction_id, sequence) > ($1, $2) AND transaction_id < {HORIZON}{filters}"
            )
        };
        Sql {
            append_new: insert(None),
            append_exactly: insert(Some(&guard_exactly)),
            append_new_key: with_key(None),
            append_exactly_key: with_key(Some(&guard_exactly)),
            key_exists: format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.processed_commands WHERE subscriber_id = $1 \
                 AND triggering_event_id = $2 AND sequence = $3)"
            ),
            current_version: format!(
                "SELECT COALESCE(MAX(entity_version), 0)::bigint FROM {s}.events \
                 WHERE entity_type = $1 AND entity_id = $2"
            ),
            load: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                 WHERE entity_type = $1 AND entity_id = $2 AND entity_version > $3 \
                 ORDER BY entity_version"
            ),
            taken_event_id: format!(
                "SELECT event_id FROM {s}.events WHERE event_id = ANY($1) LIMIT 1"
            ),
            load_fold: format!(
                "SELECT entity_version, event_type, payload::text FROM {s}.events \
                 WHERE entity_type = $1 AND entity_id = $2 AND entity_version > $3 \
                 ORDER BY entity_version"
            ),
            load_snapshot_and_fold: format!(
                "WITH snap AS (SELECT entity_version, payload::text AS payload \
                   FROM {s}.snapshots \
                   WHERE entity_type = $1 AND entity_id = $2 AND snapshot_version = $3) \
                 SELECT 0 AS kind, entity_version, NULL::text AS event_type, payload FROM snap \
                 UNION ALL \
                 SELECT 1, e.entity_version, e.event_type, e.payload::text FROM {s}.events e \
                 WHERE e.entity_type = $1 AND e.entity_id = $2 \
                   AND e.entity_version > COALESCE((SELECT entity_version FROM snap), 0) \
                 ORDER BY kind, entity_version"
            ),
            read_all: read(""),
            read_types: read(" AND entity_type = ANY($4)"),
            read_partition: read(" AND partition_hash % $4 = $5"),
            read_types_partition: read(" AND entity_type = ANY($4) AND partition_hash % $5 = $6"),
            count_all: count(""),
            count_types: count(" AND entity_type = ANY($3)"),
            count_partition: count(" AND partition_hash % $3 = $4"),
            count_types_partition: count(" AND entity_type = ANY($3) AND partition_hash % $4 = $5"),
            head: format!(
                "SELECT transaction_id, sequence FROM {s}.events WHERE transaction_id < {HORIZON} \
                 ORDER BY transaction_id DESC, sequence DESC LIMIT 1"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots AS snap \
                 (entity_type, entity_id, snapshot_version, entity_version, payload) \
                 VALUES ($1, $2, $3, $4, $5::json) \
                 ON CONFLICT (entity_type, entity_id, snapshot_version) DO UPDATE \
                 SET entity_version = EXCLUDED.entity_version, payload = EXCLUDED.payload, \
                 created_at = now() \
                 WHERE snap.entity_version <= EXCLUDED.entity_version"
            ),
            load_snapshot: format!(
                "SELECT entity_version, payload::text FROM {s}.snapshots \
                 WHERE entity_type = $1 AND entity_id = $2 AND snapshot_version = $3"
            ),
        }
    }
}
