//! Durable subscription state in PostgreSQL: [`SubscriptionStore`] for
//! [`PostgresEventStore`], so that `Eventuate::new(store)` runs subscribers on PostgreSQL
//! exactly as on the in-memory store. The protocol (members, stored shapes, fencing tokens)
//! is described in [`eventuate_core::subscription_store`]; here is how the SQL keeps it.
//!
//! - **Leases** live in `subscription_partitions` with the database's clock. `owner` is the
//!   holding incarnation and `epoch` the fencing token: every state write is one statement
//!   conditional on `(owner, epoch)` of the row it locks, so it either sees the current holder
//!   or waits for a concurrent takeover and re-checks. Parking and replay outcomes take the
//!   row `FOR SHARE` in the same statement, for the same reason.
//! - **Shapes** live in `subscribers`. A reshape updates it and bumps every partition's epoch
//!   in one transaction; acquisitions lock the `subscribers` row `FOR SHARE`, so none can slip
//!   in under the old generation. Migrations run in one transaction holding that row.
//! - **Checkpoints** only move forward (the update keeps the larger position).
//! - **Durability**: writes that only record progress (heartbeats, lease renewals, checkpoint
//!   saves, attempt counts) commit with `synchronous_commit = off`: they survive a crash of
//!   the application (PostgreSQL has them), and a crash of the *server* can lose the last few
//!   hundred milliseconds of them, which only means some events are delivered again (at least
//!   once) or an attempt is counted once less. They no longer wait for a WAL flush each, which
//!   halved catch-up throughput. Taking and releasing leases, reshapes, parking, and the view
//!   transaction of a transactional subscriber stay synchronous.
//! - **Crash detection**: the `dirty` flag is set while a partition is held and cleared by a
//!   clean release; a new holder that finds it set consumes carefully (see the core runtime).
//! - **Stored text** passes through [`storable_text`]: `text` columns refuse NUL bytes.
//! - **Transactional subscribers** get the connection of a transaction
//!   ([`crate::PgEventContextExt::pg_transaction`]) in which the runtime also writes the
//!   checkpoint, fenced like any other checkpoint write, before committing: view and checkpoint
//!   move together.
//! - **Wake-ups** come from [`crate::wakeup`]: in-process appends, LISTEN/NOTIFY from other
//!   processes, and reconnects.

use std::any::Any;
use std::time::{Duration, SystemTime};

use eventuate_core::runtime::{
    Claim, Lease, LeaseInfo, Member, ParkedEvent, PartitionKey, Shape, StoredShape,
    SubscriberState, SubscriptionStore,
};
use eventuate_core::subscriber::CheckpointTransaction;
use eventuate_core::subscription_store::storable_text;
use eventuate_core::{Error as CoreError, EventEnvelope, EventMetadata, Position, Result};
use futures_util::future::BoxFuture;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use crate::PostgresEventStore;
use crate::store::quote;

type PgTransaction = Transaction<'static, Postgres>;

/// Makes the statement's (implicit) transaction commit without waiting for a WAL flush; see
/// the module docs for which writes use it and why that is safe.
const RELAXED: &str = "SELECT set_config('synchronous_commit', 'off', true)";

/// SQL text of the subscription tables, qualified with the store's schema once.
#[derive(Debug)]
pub(crate) struct SubscriptionSql {
    heartbeat: String,
    live_members: String,
    leave: String,
    insert_shape: String,
    lock_shape: String,
    update_shape: String,
    fence_old_rows: String,
    lock_rows: String,
    relabel_rows: String,
    delete_rows: String,
    create_rows: String,
    rekey_parked: String,
    subscriber: String,
    acquire: String,
    renew: String,
    renew_all: String,
    release: String,
    save_checkpoint: String,
    save_checkpoint_in_tx: String,
    record_attempt: String,
    park: String,
    parked: String,
    request_replay_all: String,
    request_replay_entity: String,
    replay_requested: String,
    replay_ok: String,
    replay_failed: String,
}

impl SubscriptionSql {
    pub(crate) fn new(schema: &str) -> Self {
        let s = quote(schema);
        let parts = format!("{s}.subscription_partitions");
        // $1 subscriber, $2 partition, $3 holder, $4 epoch.
        let fenced = "subscriber_id = $1 AND partition = $2 AND owner = $3 AND epoch = $4";
        let held = "subscriber_id = $1 AND partition = $2 AND owner = $3";
        // The checkpoint only moves forward ($5, $6).
        let save_checkpoint = format!(
            "UPDATE {parts} SET \
               checkpoint_tx = CASE WHEN (checkpoint_tx, checkpoint_seq) < ($5, $6) \
                 THEN $5 ELSE checkpoint_tx END, \
               checkpoint_seq = CASE WHEN (checkpoint_tx, checkpoint_seq) < ($5, $6) \
                 THEN $6 ELSE checkpoint_seq END, \
               attempt_tx = NULL, attempt_seq = NULL, attempts = 0, updated_at = now()"
        );
        // Locks the fenced row for the statement: a concurrent takeover is waited for and
        // re-checked, never read past.
        let fence = format!("fence AS (SELECT 1 FROM {parts} WHERE {fenced} FOR SHARE)");
        SubscriptionSql {
            heartbeat: format!(
                "WITH relaxed AS ({RELAXED}) \
                 INSERT INTO {s}.subscription_members (incarnation, node, subscribers, expires_at) \
                 SELECT $1, $2, $3, now() + make_interval(secs => $4) FROM relaxed \
                 ON CONFLICT (incarnation) DO UPDATE SET node = EXCLUDED.node, \
                   subscribers = EXCLUDED.subscribers, expires_at = EXCLUDED.expires_at"
            ),
            live_members: format!(
                "WITH gone AS (DELETE FROM {s}.subscription_members \
                   WHERE expires_at < now() - interval '1 hour') \
                 SELECT incarnation, node, subscribers FROM {s}.subscription_members \
                 WHERE expires_at > now() ORDER BY incarnation"
            ),
            leave: format!("DELETE FROM {s}.subscription_members WHERE incarnation = $1"),
            insert_shape: format!(
                "INSERT INTO {s}.subscribers (subscriber_id, partitions, entity_types, \
                   event_types, generation, start_tx, start_seq) \
                 VALUES ($1, $2, $3, $4, 1, $5, $6) ON CONFLICT DO NOTHING"
            ),
            lock_shape: format!(
                "SELECT partitions, entity_types, event_types, generation, start_tx, start_seq \
                 FROM {s}.subscribers WHERE subscriber_id = $1 FOR UPDATE"
            ),
            update_shape: format!(
                "UPDATE {s}.subscribers SET partitions = $2, entity_types = $3, event_types = $4, \
                   generation = generation + 1 WHERE subscriber_id = $1 RETURNING generation"
            ),
            fence_old_rows: format!(
                "UPDATE {parts} SET epoch = epoch + 1, updated_at = now() \
                 WHERE subscriber_id = $1 AND generation < $2"
            ),
            lock_rows: format!(
                "SELECT partition, generation, epoch, checkpoint_tx, checkpoint_seq, dirty, \
                   (owner IS NOT NULL AND lease_expires_at > now()) \
                 FROM {parts} WHERE subscriber_id = $1 ORDER BY partition FOR UPDATE"
            ),
            relabel_rows: format!(
                "UPDATE {parts} SET generation = $2, owner = NULL, owner_node = NULL, \
                   lease_expires_at = NULL, updated_at = now() WHERE subscriber_id = $1"
            ),
            delete_rows: format!("DELETE FROM {parts} WHERE subscriber_id = $1"),
            create_rows: format!(
                "INSERT INTO {parts} (subscriber_id, partition, checkpoint_tx, checkpoint_seq, \
                   generation, epoch, dirty) \
                 SELECT $1, p, $3, $4, $5, $6, $7 FROM generate_series(0, $2 - 1) AS p"
            ),
            rekey_parked: format!(
                "UPDATE {s}.parked_events p SET partition = e.partition_hash % $2 \
                 FROM {s}.events e WHERE p.subscriber_id = $1 \
                   AND e.transaction_id = p.transaction_id AND e.sequence = p.sequence"
            ),
            subscriber: format!(
                "SELECT s.partitions, s.entity_types, s.event_types, s.generation, \
                   p.partition, p.generation, p.checkpoint_tx, p.checkpoint_seq, \
                   CASE WHEN p.lease_expires_at > now() THEN p.owner END, \
                   CASE WHEN p.lease_expires_at > now() THEN p.owner_node END, \
                   extract(epoch FROM now() - GREATEST(p.unowned_since, \
                     COALESCE(p.lease_expires_at, p.unowned_since)))::float8 \
                 FROM {s}.subscribers s \
                 LEFT JOIN {parts} p ON p.subscriber_id = s.subscriber_id \
                 WHERE s.subscriber_id = $1 ORDER BY p.partition"
            ),
            // `old` reads the row before the update, so `recovered` sees the previous holder;
            // `shape` locks the subscriber's row so that no reshape commits in between. Locks
            // are taken in the order reshapes and migrations take them (the subscriber's row,
            // then the partition's), so they never deadlock.
            acquire: format!(
                "WITH shape AS (SELECT 1 FROM {s}.subscribers \
                   WHERE subscriber_id = $1 AND generation = $5 FOR SHARE), \
                 old AS (SELECT dirty FROM {parts} \
                   WHERE subscriber_id = $1 AND partition = $2 AND generation = $5 \
                     AND EXISTS (SELECT 1 FROM shape) FOR UPDATE) \
                 UPDATE {parts} p SET owner = $3, owner_node = $4, epoch = p.epoch + 1, \
                   lease_expires_at = now() + make_interval(secs => $6), dirty = true, \
                   updated_at = now() \
                 FROM old, shape WHERE p.subscriber_id = $1 AND p.partition = $2 \
                   AND (p.owner IS NULL OR p.owner = $3 OR p.lease_expires_at < now()) \
                 RETURNING p.epoch, p.checkpoint_tx, p.checkpoint_seq, p.attempt_tx, \
                   p.attempt_seq, p.attempts, old.dirty"
            ),
            renew: format!(
                "UPDATE {parts} SET lease_expires_at = now() + make_interval(secs => $4) \
                 FROM ({RELAXED}) AS relaxed WHERE {held}"
            ),
            // Every lease of a runtime in one statement: $1 subscribers, $2 partitions, $3
            // holders (arrays, one element per lease), $4 the TTL; returns the leases still
            // held.
            renew_all: format!(
                "UPDATE {parts} p SET lease_expires_at = now() + make_interval(secs => $4) \
                 FROM ({RELAXED}) AS relaxed, \
                   UNNEST($1::text[], $2::int[], $3::uuid[]) AS k(subscriber_id, partition, holder) \
                 WHERE p.subscriber_id = k.subscriber_id AND p.partition = k.partition \
                   AND p.owner = k.holder \
                 RETURNING p.subscriber_id, p.partition, p.owner"
            ),
            release: format!(
                "UPDATE {parts} SET owner = NULL, owner_node = NULL, lease_expires_at = NULL, \
                   dirty = false, unowned_since = now(), updated_at = now() WHERE {held}"
            ),
            save_checkpoint: format!(
                "{save_checkpoint} FROM ({RELAXED}) AS relaxed WHERE {fenced}"
            ),
            save_checkpoint_in_tx: format!("{save_checkpoint} WHERE {fenced}"),
            record_attempt: format!(
                "UPDATE {parts} SET attempt_tx = $5, attempt_seq = $6, attempts = $7, \
                 updated_at = now() FROM ({RELAXED}) AS relaxed WHERE {fenced}"
            ),
            park: format!(
                "WITH {fence}, \
                 ins AS (INSERT INTO {s}.parked_events (subscriber_id, partition, \
                   transaction_id, sequence, event_id, entity_type, entity_id, entity_version, \
                   event_type, payload, metadata, attempts, error) \
                   SELECT $1, $2, $5, $6, $7, $8, $9, $10, $11, $12::json, $13::json, $14, $15 \
                   FROM fence ON CONFLICT DO NOTHING RETURNING 1) \
                 SELECT (SELECT count(*) FROM fence)"
            ),
            parked: format!(
                "SELECT partition, transaction_id, sequence, event_id, entity_type, entity_id, \
                 entity_version, event_type, payload::text, metadata::text, attempts, error, \
                 extract(epoch FROM parked_at)::float8, replay_requested \
                 FROM {s}.parked_events WHERE subscriber_id = $1 \
                 ORDER BY transaction_id, sequence"
            ),
            request_replay_all: format!(
                "UPDATE {s}.parked_events SET replay_requested = true WHERE subscriber_id = $1"
            ),
            request_replay_entity: format!(
                "UPDATE {s}.parked_events SET replay_requested = true \
                 WHERE subscriber_id = $1 AND entity_type = $2 AND entity_id = $3"
            ),
            replay_requested: format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.parked_events \
                 WHERE subscriber_id = $1 AND partition = $2 AND replay_requested)"
            ),
            replay_ok: format!(
                "WITH {fence}, \
                 del AS (DELETE FROM {s}.parked_events WHERE subscriber_id = $1 \
                   AND sequence = $5 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
                 SELECT (SELECT count(*) FROM fence)"
            ),
            replay_failed: format!(
                "WITH {fence}, \
                 upd AS (UPDATE {s}.parked_events SET attempts = $6, error = $7, \
                   replay_requested = false WHERE subscriber_id = $1 AND sequence = $5 \
                   AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
                 SELECT (SELECT count(*) FROM fence)"
            ),
        }
    }
}

fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CoreError {
    let context = context.into();
    move |source| CoreError::backend(context, source)
}

fn lease_lost(key: &PartitionKey) -> CoreError {
    CoreError::LeaseLost {
        subscriber: key.subscriber_id.clone(),
        partition: key.partition,
    }
}

fn int(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| CoreError::Config(format!("{what} {value} is out of range")))
}

fn position_args(p: Position) -> Result<(i64, i64)> {
    Ok((
        int(p.transaction, "transaction id")?,
        int(p.sequence, "sequence")?,
    ))
}

fn position_of(tx: i64, seq: i64) -> Position {
    Position::new(tx.max(0) as u64, seq.max(0) as u64)
}

fn count(n: u32) -> i32 {
    n.min(i32::MAX as u32) as i32
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
type PgScalar<'q, T> = sqlx::query::QueryScalar<'q, Postgres, T, sqlx::postgres::PgArguments>;

/// A statement fenced by a lease: $1 subscriber, $2 partition, $3 holder, $4 epoch.
fn fenced<'q>(sql: &'q str, lease: &'q Lease) -> Result<PgQuery<'q>> {
    Ok(sqlx::query(sql)
        .bind(&lease.key.subscriber_id)
        .bind(count(lease.key.partition))
        .bind(lease.holder)
        .bind(int(lease.epoch, "lease epoch")?))
}

/// [`fenced`], returning the statement's one value.
fn fenced_scalar<'q>(sql: &'q str, lease: &'q Lease) -> Result<PgScalar<'q, i64>> {
    Ok(sqlx::query_scalar(sql)
        .bind(&lease.key.subscriber_id)
        .bind(count(lease.key.partition))
        .bind(lease.holder)
        .bind(int(lease.epoch, "lease epoch")?))
}

fn parked_from_row(subscriber_id: &str, row: &PgRow) -> Result<ParkedEvent> {
    let get = |e: sqlx::Error| CoreError::backend("decode a parked event", e);
    let metadata_text: String = row.try_get(9).map_err(get)?;
    // An undecodable row was parked with default metadata; anything else written to the
    // table by hand still lists, with default metadata, rather than hiding every other row.
    let metadata: EventMetadata = serde_json::from_str(&metadata_text).unwrap_or_default();
    let parked_at: f64 = row.try_get(12).map_err(get)?;
    Ok(ParkedEvent {
        subscriber_id: subscriber_id.to_owned(),
        partition: row.try_get::<i32, _>(0).map_err(get)?.max(0) as u32,
        event: EventEnvelope {
            position: position_of(row.try_get(1).map_err(get)?, row.try_get(2).map_err(get)?),
            event_id: row.try_get(3).map_err(get)?,
            entity_type: row.try_get(4).map_err(get)?,
            entity_id: row.try_get(5).map_err(get)?,
            entity_version: row.try_get::<i64, _>(6).map_err(get)?.max(0) as u64,
            event_type: row.try_get(7).map_err(get)?,
            payload: row.try_get(8).map_err(get)?,
            metadata,
        },
        attempts: row.try_get::<i32, _>(10).map_err(get)?.max(0) as u32,
        error: row.try_get(11).map_err(get)?,
        parked_at: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(parked_at.max(0.0)),
        replay_requested: row.try_get(13).map_err(get)?,
    })
}

/// A transactional delivery: the handler writes through the transaction, and the runtime
/// commits it with the checkpoint (fenced by the lease).
struct CheckpointTx {
    tx: PgTransaction,
    sql: String,
    lease: Lease,
}

impl CheckpointTransaction for CheckpointTx {
    // The connection rather than the `Transaction`: a type without a lifetime parameter is
    // what `EventContext::transaction` can hand out and handlers can hold across awaits.
    fn resource(&mut self) -> &mut (dyn Any + Send) {
        let conn: &mut sqlx::PgConnection = &mut self.tx;
        conn
    }

    fn commit(self: Box<Self>, checkpoint: Position) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let CheckpointTx { mut tx, sql, lease } = *self;
            let (t, s) = position_args(checkpoint)?;
            let updated = fenced(&sql, &lease)?
                .bind(t)
                .bind(s)
                .execute(&mut *tx)
                .await
                .map_err(db("move the checkpoint in the view transaction"))?;
            if updated.rows_affected() == 0 {
                // Dropping the transaction rolls the handler's writes back with it.
                return Err(lease_lost(&lease.key));
            }
            tx.commit().await.map_err(db("commit the view transaction"))
        })
    }
}

impl PostgresEventStore {
    /// Stops the store's background tasks (the NOTIFY forwarder and the LISTEN connection)
    /// and closes its pool. Call it after shutting the runtime down; the store (and its
    /// clones) must not be used afterwards.
    pub async fn close(&self) {
        self.wakeup().stop();
        self.pool().close().await;
    }

    /// The migration of [`SubscriptionStore::migrate`], inside a transaction that holds the
    /// subscriber's row.
    async fn migrate_in(&self, tx: &mut sqlx::PgConnection, subscriber_id: &str) -> Result<bool> {
        let sql = self.subscription_sql();
        let Some(shape) = sqlx::query(&sql.lock_shape)
            .bind(subscriber_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("lock the subscriber's shape"))?
        else {
            return Ok(true);
        };
        let get = |i: usize| shape.try_get::<i64, _>(i).map_err(db("decode the shape"));
        let partitions: i32 = shape.try_get(0).map_err(db("decode the shape"))?;
        let (generation, start) = (get(3)?, position_of(get(4)?, get(5)?));
        let rows = sqlx::query(&sql.lock_rows)
            .bind(subscriber_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("lock the subscriber's partitions"))?;
        struct Row {
            partition: i32,
            generation: i64,
            epoch: i64,
            checkpoint: Position,
            dirty: bool,
            live: bool,
        }
        let rows = rows
            .iter()
            .map(|r| {
                let d = db("decode a partition");
                Ok(Row {
                    partition: r.try_get(0).map_err(db("decode a partition"))?,
                    generation: r.try_get(1).map_err(db("decode a partition"))?,
                    epoch: r.try_get(2).map_err(db("decode a partition"))?,
                    checkpoint: position_of(
                        r.try_get(3).map_err(db("decode a partition"))?,
                        r.try_get(4).map_err(db("decode a partition"))?,
                    ),
                    dirty: r.try_get(5).map_err(db("decode a partition"))?,
                    live: r.try_get(6).map_err(d)?,
                })
            })
            .collect::<Result<Vec<Row>>>()?;
        let pending = rows.is_empty() || rows.iter().any(|r| r.generation < generation);
        if !pending {
            return Ok(true);
        }
        if rows.iter().any(|r| r.live) {
            return Ok(false);
        }
        let same_split =
            rows.len() == partitions as usize && rows.iter().all(|r| r.partition < partitions);
        if same_split {
            sqlx::query(&sql.relabel_rows)
                .bind(subscriber_id)
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(db("move partitions to the new shape"))?;
            return Ok(true);
        }
        // Rows left by a version without stored shapes may lack partitions it never consumed:
        // their events were never delivered, so such rows also count the subscriber's start.
        let legacy = rows.iter().any(|r| r.generation == 0);
        let from = rows
            .iter()
            .map(|r| r.checkpoint)
            .chain(legacy.then_some(start))
            .min()
            .unwrap_or(start);
        let epoch = rows.iter().map(|r| r.epoch).max().unwrap_or(0) + 1;
        let dirty = rows.iter().any(|r| r.dirty);
        let (t, s) = position_args(from)?;
        sqlx::query(&sql.delete_rows)
            .bind(subscriber_id)
            .execute(&mut *tx)
            .await
            .map_err(db("remove the old shape's partitions"))?;
        sqlx::query(&sql.create_rows)
            .bind(subscriber_id)
            .bind(partitions)
            .bind(t)
            .bind(s)
            .bind(generation)
            .bind(epoch)
            .bind(dirty)
            .execute(&mut *tx)
            .await
            .map_err(db("create the new shape's partitions"))?;
        sqlx::query(&sql.rekey_parked)
            .bind(subscriber_id)
            .bind(partitions)
            .execute(&mut *tx)
            .await
            .map_err(db("move parked events to their new partitions"))?;
        Ok(true)
    }
}

impl SubscriptionStore for PostgresEventStore {
    fn heartbeat<'a>(
        &'a self,
        member: &'a Member,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<Member>>> {
        Box::pin(async move {
            let sql = self.subscription_sql();
            sqlx::query(&sql.heartbeat)
                .bind(member.incarnation)
                .bind(member.node)
                .bind(&member.subscribers)
                .bind(ttl.as_secs_f64())
                .execute(self.pool())
                .await
                .map_err(db("record the member heartbeat"))?;
            let rows = sqlx::query(&sql.live_members)
                .fetch_all(self.pool())
                .await
                .map_err(db("list live members"))?;
            rows.iter()
                .map(|r| {
                    Ok(Member {
                        incarnation: r.try_get(0).map_err(db("decode a member"))?,
                        node: r.try_get(1).map_err(db("decode a member"))?,
                        subscribers: r.try_get(2).map_err(db("decode a member"))?,
                    })
                })
                .collect()
        })
    }

    fn leave(&self, incarnation: Uuid) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            sqlx::query(&self.subscription_sql().leave)
                .bind(incarnation)
                .execute(self.pool())
                .await
                .map_err(db("deregister the member"))?;
            Ok(())
        })
    }

    fn reshape<'a>(
        &'a self,
        subscriber_id: &'a str,
        shape: &'a Shape,
        start: Position,
    ) -> BoxFuture<'a, Result<StoredShape>> {
        Box::pin(async move {
            eventuate_core::name::validate_subscriber_id(subscriber_id)?;
            let sql = self.subscription_sql();
            let (t, s) = position_args(start)?;
            let mut tx = self.pool().begin().await.map_err(db("begin a reshape"))?;
            let inserted = sqlx::query(&sql.insert_shape)
                .bind(subscriber_id)
                .bind(count(shape.partitions))
                .bind(&shape.entity_types)
                .bind(&shape.event_types)
                .bind(t)
                .bind(s)
                .execute(&mut *tx)
                .await
                .map_err(db("store the subscriber's shape"))?
                .rows_affected()
                == 1;
            let row = sqlx::query(&sql.lock_shape)
                .bind(subscriber_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("lock the subscriber's shape"))?;
            let stored = Shape {
                partitions: row
                    .try_get::<i32, _>(0)
                    .map_err(db("decode the shape"))?
                    .max(0) as u32,
                entity_types: row.try_get(1).map_err(db("decode the shape"))?,
                event_types: row.try_get(2).map_err(db("decode the shape"))?,
            };
            let mut generation: i64 = row.try_get(3).map_err(db("decode the shape"))?;
            if stored == *shape && !inserted {
                // Declared before: nothing to change (a pending migration is `migrate`'s).
                tx.commit().await.map_err(db("commit a reshape"))?;
                return Ok(StoredShape {
                    shape: stored,
                    generation: generation.max(0) as u64,
                });
            }
            if stored != *shape {
                generation = sqlx::query_scalar(&sql.update_shape)
                    .bind(subscriber_id)
                    .bind(count(shape.partitions))
                    .bind(&shape.entity_types)
                    .bind(&shape.event_types)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db("change the subscriber's shape"))?;
            }
            // Fence off every consumer of an older generation at once.
            sqlx::query(&sql.fence_old_rows)
                .bind(subscriber_id)
                .bind(generation)
                .execute(&mut *tx)
                .await
                .map_err(db("fence off the old shape's consumers"))?;
            self.migrate_in(&mut tx, subscriber_id).await?;
            tx.commit().await.map_err(db("commit a reshape"))?;
            Ok(StoredShape {
                shape: shape.clone(),
                generation: generation.max(0) as u64,
            })
        })
    }

    fn migrate<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut tx = self
                .pool()
                .begin()
                .await
                .map_err(db("begin a partition migration"))?;
            let done = self.migrate_in(&mut tx, subscriber_id).await?;
            tx.commit()
                .await
                .map_err(db("commit a partition migration"))?;
            Ok(done)
        })
    }

    fn subscriber<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<SubscriberState>> {
        Box::pin(async move {
            let rows = sqlx::query(&self.subscription_sql().subscriber)
                .bind(subscriber_id)
                .fetch_all(self.pool())
                .await
                .map_err(db("read the subscriber's state"))?;
            let Some(first) = rows.first() else {
                return Ok(SubscriberState::default());
            };
            let d = || db("decode the subscriber's state");
            let generation: i64 = first.try_get(3).map_err(d())?;
            let shape = StoredShape {
                shape: Shape {
                    partitions: first.try_get::<i32, _>(0).map_err(d())?.max(0) as u32,
                    entity_types: first.try_get(1).map_err(d())?,
                    event_types: first.try_get(2).map_err(d())?,
                },
                generation: generation.max(0) as u64,
            };
            let mut partitions = Vec::with_capacity(rows.len());
            let mut pending = false;
            for row in &rows {
                let Some(partition) = row.try_get::<Option<i32>, _>(4).map_err(d())? else {
                    pending = true;
                    continue;
                };
                let row_generation: i64 = row.try_get(5).map_err(d())?;
                pending |= row_generation < generation;
                let holder: Option<Uuid> = row.try_get(8).map_err(d())?;
                let node: Option<Uuid> = row.try_get(9).map_err(d())?;
                let owner = holder.map(|h| (h, node.unwrap_or(h)));
                let unowned: f64 = row.try_get(10).map_err(d())?;
                partitions.push(LeaseInfo {
                    partition: partition.max(0) as u32,
                    owner,
                    unowned_for: owner
                        .is_none()
                        .then(|| Duration::from_secs_f64(unowned.max(0.0))),
                    checkpoint: position_of(
                        row.try_get(6).map_err(d())?,
                        row.try_get(7).map_err(d())?,
                    ),
                });
            }
            if pending {
                partitions.clear();
            }
            Ok(SubscriberState {
                shape: Some(shape),
                partitions,
                migration_pending: pending,
            })
        })
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a PartitionKey,
        member: &'a Member,
        generation: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Claim>>> {
        Box::pin(async move {
            let row = sqlx::query(&self.subscription_sql().acquire)
                .bind(&key.subscriber_id)
                .bind(count(key.partition))
                .bind(member.incarnation)
                .bind(member.node)
                .bind(int(generation, "generation")?)
                .bind(ttl.as_secs_f64())
                .fetch_optional(self.pool())
                .await
                .map_err(db("acquire the subscription lease"))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let d = || db("decode the subscription claim");
            let epoch: i64 = row.try_get(0).map_err(d())?;
            let checkpoint =
                position_of(row.try_get(1).map_err(d())?, row.try_get(2).map_err(d())?);
            let attempt_tx: Option<i64> = row.try_get(3).map_err(d())?;
            let attempt_seq: Option<i64> = row.try_get(4).map_err(d())?;
            let attempts: i32 = row.try_get(5).map_err(d())?;
            let recovered: bool = row.try_get(6).map_err(d())?;
            Ok(Some(Claim {
                lease: Lease {
                    key: key.clone(),
                    holder: member.incarnation,
                    epoch: epoch.max(0) as u64,
                },
                checkpoint,
                attempt: attempt_tx
                    .zip(attempt_seq)
                    .map(|(t, s)| (position_of(t, s), attempts.max(0) as u32)),
                recovered,
            }))
        })
    }

    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(&self.subscription_sql().renew)
                .bind(&lease.key.subscriber_id)
                .bind(count(lease.key.partition))
                .bind(lease.holder)
                .bind(ttl.as_secs_f64())
                .execute(self.pool())
                .await
                .map_err(db("renew the subscription lease"))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn renew_all<'a>(
        &'a self,
        leases: &'a [Lease],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let subscribers: Vec<&str> = leases
                .iter()
                .map(|l| l.key.subscriber_id.as_str())
                .collect();
            let partitions: Vec<i32> = leases.iter().map(|l| count(l.key.partition)).collect();
            let holders: Vec<Uuid> = leases.iter().map(|l| l.holder).collect();
            let rows: Vec<(String, i32, Uuid)> = sqlx::query_as(&self.subscription_sql().renew_all)
                .bind(&subscribers)
                .bind(&partitions)
                .bind(&holders)
                .bind(ttl.as_secs_f64())
                .fetch_all(self.pool())
                .await
                .map_err(db("renew the subscription leases"))?;
            let still: std::collections::HashSet<(String, i32, Uuid)> = rows.into_iter().collect();
            Ok(leases
                .iter()
                .map(|l| {
                    still.contains(&(
                        l.key.subscriber_id.clone(),
                        count(l.key.partition),
                        l.holder,
                    ))
                })
                .collect())
        })
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(&self.subscription_sql().release)
                .bind(&lease.key.subscriber_id)
                .bind(count(lease.key.partition))
                .bind(lease.holder)
                .execute(self.pool())
                .await
                .map_err(db("release the subscription lease"))?;
            Ok(())
        })
    }

    fn save_checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (t, s) = position_args(position)?;
            let done = fenced(&self.subscription_sql().save_checkpoint, lease)?
                .bind(t)
                .bind(s)
                .execute(self.pool())
                .await
                .map_err(db("save the checkpoint"))?;
            if done.rows_affected() == 0 {
                return Err(lease_lost(&lease.key));
            }
            Ok(())
        })
    }

    fn record_attempt<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
        attempts: u32,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (t, s) = position_args(position)?;
            let done = fenced(&self.subscription_sql().record_attempt, lease)?
                .bind(t)
                .bind(s)
                .bind(count(attempts))
                .execute(self.pool())
                .await
                .map_err(db("record the delivery attempt"))?;
            if done.rows_affected() == 0 {
                return Err(lease_lost(&lease.key));
            }
            Ok(())
        })
    }

    fn begin<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<Box<dyn CheckpointTransaction>>> {
        Box::pin(async move {
            let tx = self
                .pool()
                .begin()
                .await
                .map_err(db("begin the view transaction"))?;
            Ok(Box::new(CheckpointTx {
                tx,
                sql: self.subscription_sql().save_checkpoint_in_tx.clone(),
                lease: lease.clone(),
            }) as Box<dyn CheckpointTransaction>)
        })
    }

    fn park<'a>(&'a self, lease: &'a Lease, parked: &'a ParkedEvent) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let e = &parked.event;
            let (t, s) = position_args(e.position)?;
            let metadata =
                serde_json::to_string(&e.metadata).map_err(|source| CoreError::Encode {
                    what: "parked event metadata".into(),
                    source,
                })?;
            let fence: i64 = fenced_scalar(&self.subscription_sql().park, lease)?
                .bind(t)
                .bind(s)
                .bind(e.event_id)
                .bind(&e.entity_type)
                .bind(&e.entity_id)
                .bind(int(e.entity_version, "entity version")?)
                .bind(&e.event_type)
                .bind(&e.payload)
                .bind(metadata)
                .bind(count(parked.attempts))
                .bind(storable_text(&parked.error).as_ref())
                .fetch_one(self.pool())
                .await
                .map_err(db("park the event"))?;
            if fence == 0 {
                return Err(lease_lost(&lease.key));
            }
            Ok(())
        })
    }

    fn parked<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>> {
        Box::pin(async move {
            let rows = sqlx::query(&self.subscription_sql().parked)
                .bind(subscriber_id)
                .fetch_all(self.pool())
                .await
                .map_err(db("list parked events"))?;
            rows.iter()
                .map(|row| parked_from_row(subscriber_id, row))
                .collect()
        })
    }

    fn request_replay<'a>(
        &'a self,
        subscriber_id: &'a str,
        entity: Option<(&'a str, &'a str)>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sql = self.subscription_sql();
            let done = match entity {
                None => sqlx::query(&sql.request_replay_all).bind(subscriber_id),
                Some((t, id)) => sqlx::query(&sql.request_replay_entity)
                    .bind(subscriber_id)
                    .bind(t)
                    .bind(id),
            }
            .execute(self.pool())
            .await
            .map_err(db("request a replay of parked events"))?;
            // Wakes consumers here and, through NOTIFY, in other processes.
            self.notify_appended();
            Ok(done.rows_affected())
        })
    }

    fn skip_parked<'a>(
        &'a self,
        subscriber_id: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let s = quote(self.schema());
            let (t, q) = position_args(position)?;
            // The delete's RETURNING feeds the fence: one statement, the record's partition
            // row locked by the update (a concurrent fenced write waits for it, then fails).
            let deleted: i64 = sqlx::query_scalar(&format!(
                "WITH del AS (DELETE FROM {s}.parked_events \
                     WHERE subscriber_id = $1 AND transaction_id = $2 AND sequence = $3 \
                     RETURNING partition), \
                 fence AS (UPDATE {s}.subscription_partitions p SET epoch = p.epoch + 1, \
                     updated_at = now() FROM del \
                   WHERE p.subscriber_id = $1 AND p.partition = del.partition RETURNING 1) \
                 SELECT count(*) FROM del"
            ))
            .bind(subscriber_id)
            .bind(t)
            .bind(q)
            .fetch_one(self.pool())
            .await
            .map_err(db("skip a parked event"))?;
            Ok(deleted > 0)
        })
    }

    fn replay_requested<'a>(&'a self, key: &'a PartitionKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            sqlx::query_scalar(&self.subscription_sql().replay_requested)
                .bind(&key.subscriber_id)
                .bind(count(key.partition))
                .fetch_one(self.pool())
                .await
                .map_err(db("check for replay requests"))
        })
    }

    fn replayed<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
        failure: Option<(u32, String)>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let sql = self.subscription_sql();
            let (_, s) = position_args(position)?;
            let query = match &failure {
                None => fenced_scalar(&sql.replay_ok, lease)?,
                Some(_) => fenced_scalar(&sql.replay_failed, lease)?,
            }
            .bind(s);
            let query = match &failure {
                None => query,
                Some((attempts, error)) => query
                    .bind(count(*attempts))
                    .bind(storable_text(error).into_owned()),
            };
            let fence: i64 = query
                .fetch_one(self.pool())
                .await
                .map_err(db("record a replay"))?;
            if fence == 0 {
                return Err(lease_lost(&lease.key));
            }
            Ok(())
        })
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wakeup().subscribe()
    }
}
