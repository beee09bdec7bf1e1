//! Durable subscription state in PostgreSQL: [`SubscriptionStore`] for
//! [`PostgresEventStore`], so that `Eventuate::new(store)` runs subscribers on PostgreSQL
//! exactly as on the in-memory store.
//!
//! - **Leases** live in `subscription_partitions` with the database's clock. A node takes a
//!   partition when it is free, expired, or its own; every write of a consumer (checkpoint,
//!   attempt count, parking, the checkpoint inside a view transaction) is conditional on
//!   `owner = node`, so a consumer that lost its lease cannot move anything.
//! - **Checkpoints** only move forward (the update keeps the larger position).
//! - **Durability**: writes that only record progress (heartbeats, lease renewals, checkpoint
//!   saves, attempt counts) commit with `synchronous_commit = off`: they survive a crash of
//!   the application (PostgreSQL has them), and a crash of the *server* can lose the last few
//!   hundred milliseconds of them, which only means some events are delivered again (at least
//!   once) or an attempt is counted once less. They no longer wait for a WAL flush each, which
//!   halved catch-up throughput. Taking and releasing leases, parking, and the view
//!   transaction of a transactional subscriber stay synchronous.
//! - **Crash detection**: the `dirty` flag is set while a partition is held and cleared by a
//!   clean release; a new holder that finds it set consumes carefully (see the core runtime).
//! - **Transactional subscribers** get the connection of a transaction
//!   (`ctx.transaction::<sqlx::PgConnection>()`) in which the runtime also writes the
//!   checkpoint before committing: view and checkpoint move together.
//! - **Wake-ups** come from [`crate::wakeup`]: in-process appends, LISTEN/NOTIFY from other
//!   processes, and reconnects.

use std::any::Any;
use std::time::{Duration, SystemTime};

use eventuate_core::runtime::{Claim, LeaseInfo, ParkedEvent, PartitionKey, SubscriptionStore};
use eventuate_core::subscriber::CheckpointTransaction;
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
    live_nodes: String,
    leave: String,
    create_partition: String,
    acquire: String,
    renew: String,
    release: String,
    leases: String,
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
        let fenced = "subscriber_id = $1 AND partition = $2 AND owner = $3";
        // The checkpoint only moves forward.
        let save_checkpoint = format!(
            "UPDATE {parts} SET \
               checkpoint_tx = CASE WHEN (checkpoint_tx, checkpoint_seq) < ($4, $5) \
                 THEN $4 ELSE checkpoint_tx END, \
               checkpoint_seq = CASE WHEN (checkpoint_tx, checkpoint_seq) < ($4, $5) \
                 THEN $5 ELSE checkpoint_seq END, \
               attempt_tx = NULL, attempt_seq = NULL, attempts = 0, updated_at = now()"
        );
        SubscriptionSql {
            heartbeat: format!(
                "WITH relaxed AS ({RELAXED}) \
                 INSERT INTO {s}.subscription_nodes (node_id, expires_at) \
                 SELECT $1, now() + make_interval(secs => $2) FROM relaxed \
                 ON CONFLICT (node_id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
            ),
            live_nodes: format!(
                "WITH gone AS (DELETE FROM {s}.subscription_nodes \
                   WHERE expires_at < now() - interval '1 hour') \
                 SELECT node_id FROM {s}.subscription_nodes WHERE expires_at > now() \
                 ORDER BY node_id"
            ),
            leave: format!("DELETE FROM {s}.subscription_nodes WHERE node_id = $1"),
            create_partition: format!(
                "INSERT INTO {parts} (subscriber_id, partition, checkpoint_tx, checkpoint_seq) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
            ),
            // `old` reads the row before the update, so `recovered` sees the previous holder.
            acquire: format!(
                "WITH old AS (SELECT owner, dirty FROM {parts} \
                   WHERE subscriber_id = $1 AND partition = $2 FOR UPDATE) \
                 UPDATE {parts} p SET owner = $3, \
                   lease_expires_at = now() + make_interval(secs => $4), dirty = true, \
                   updated_at = now() \
                 FROM old WHERE p.subscriber_id = $1 AND p.partition = $2 \
                   AND (old.owner IS NULL OR old.owner = $3 OR p.lease_expires_at < now()) \
                 RETURNING p.checkpoint_tx, p.checkpoint_seq, p.attempt_tx, p.attempt_seq, \
                   p.attempts, (old.dirty AND old.owner IS DISTINCT FROM $3) AS recovered"
            ),
            renew: format!(
                "UPDATE {parts} SET lease_expires_at = now() + make_interval(secs => $4) \
                 FROM ({RELAXED}) AS relaxed WHERE {fenced}"
            ),
            release: format!(
                "UPDATE {parts} SET owner = NULL, lease_expires_at = NULL, dirty = false, \
                 updated_at = now() WHERE {fenced}"
            ),
            leases: format!(
                "SELECT partition, CASE WHEN lease_expires_at > now() THEN owner END \
                 FROM {parts} WHERE subscriber_id = $1 AND partition < $2"
            ),
            save_checkpoint: format!(
                "{save_checkpoint} FROM ({RELAXED}) AS relaxed WHERE {fenced}"
            ),
            save_checkpoint_in_tx: format!("{save_checkpoint} WHERE {fenced}"),
            record_attempt: format!(
                "UPDATE {parts} SET attempt_tx = $4, attempt_seq = $5, attempts = $6, \
                 updated_at = now() FROM ({RELAXED}) AS relaxed WHERE {fenced}"
            ),
            park: format!(
                "WITH fence AS (SELECT 1 FROM {parts} WHERE {fenced}), \
                 ins AS (INSERT INTO {s}.parked_events (subscriber_id, partition, \
                   transaction_id, sequence, event_id, entity_type, entity_id, entity_version, \
                   event_type, payload, metadata, attempts, error) \
                   SELECT $1, $2, $4, $5, $6, $7, $8, $9, $10, $11::json, $12::json, $13, $14 \
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
                "WITH fence AS (SELECT 1 FROM {parts} WHERE {fenced}), \
                 del AS (DELETE FROM {s}.parked_events WHERE subscriber_id = $1 \
                   AND sequence = $4 AND EXISTS (SELECT 1 FROM fence) RETURNING 1) \
                 SELECT (SELECT count(*) FROM fence)"
            ),
            replay_failed: format!(
                "WITH fence AS (SELECT 1 FROM {parts} WHERE {fenced}), \
                 upd AS (UPDATE {s}.parked_events SET attempts = $5, error = $6, \
                   replay_requested = false WHERE subscriber_id = $1 AND sequence = $4 \
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

fn parked_from_row(subscriber_id: &str, row: &PgRow) -> Result<ParkedEvent> {
    let get = |e: sqlx::Error| CoreError::backend("decode a parked event", e);
    let metadata_text: String = row.try_get(9).map_err(get)?;
    let metadata: EventMetadata =
        serde_json::from_str(&metadata_text).map_err(|source| CoreError::Encode {
            what: "parked event metadata".into(),
            source,
        })?;
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
    key: PartitionKey,
    node: Uuid,
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
            let CheckpointTx {
                mut tx,
                sql,
                key,
                node,
            } = *self;
            let (t, s) = position_args(checkpoint)?;
            let updated = sqlx::query(&sql)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .bind(node)
                .bind(t)
                .bind(s)
                .execute(&mut *tx)
                .await
                .map_err(db("move the checkpoint in the view transaction"))?;
            if updated.rows_affected() == 0 {
                // Dropping the transaction rolls the handler's writes back with it.
                return Err(lease_lost(&key));
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
}

impl SubscriptionStore for PostgresEventStore {
    fn heartbeat(&self, node: Uuid, ttl: Duration) -> BoxFuture<'_, Result<Vec<Uuid>>> {
        Box::pin(async move {
            let sql = self.subscription_sql();
            sqlx::query(&sql.heartbeat)
                .bind(node)
                .bind(ttl.as_secs_f64())
                .execute(self.pool())
                .await
                .map_err(db("record the node heartbeat"))?;
            let rows = sqlx::query(&sql.live_nodes)
                .fetch_all(self.pool())
                .await
                .map_err(db("list live nodes"))?;
            rows.iter()
                .map(|r| r.try_get::<Uuid, _>(0).map_err(db("decode node id")))
                .collect()
        })
    }

    fn leave(&self, node: Uuid) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            sqlx::query(&self.subscription_sql().leave)
                .bind(node)
                .execute(self.pool())
                .await
                .map_err(db("deregister the node"))?;
            Ok(())
        })
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        ttl: Duration,
        start: Position,
    ) -> BoxFuture<'a, Result<Option<Claim>>> {
        Box::pin(async move {
            let sql = self.subscription_sql();
            let (t, s) = position_args(start)?;
            sqlx::query(&sql.create_partition)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .bind(t)
                .bind(s)
                .execute(self.pool())
                .await
                .map_err(db("create the subscription checkpoint"))?;
            let row = sqlx::query(&sql.acquire)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .bind(node)
                .bind(ttl.as_secs_f64())
                .fetch_optional(self.pool())
                .await
                .map_err(db("acquire the subscription lease"))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let get = db("decode the subscription claim");
            let checkpoint = position_of(
                row.try_get(0).map_err(db("decode claim"))?,
                row.try_get(1).map_err(db("decode claim"))?,
            );
            let attempt_tx: Option<i64> = row.try_get(2).map_err(db("decode claim"))?;
            let attempt_seq: Option<i64> = row.try_get(3).map_err(db("decode claim"))?;
            let attempts: i32 = row.try_get(4).map_err(db("decode claim"))?;
            let recovered: Option<bool> = row.try_get(5).map_err(get)?;
            Ok(Some(Claim {
                checkpoint,
                attempt: attempt_tx
                    .zip(attempt_seq)
                    .map(|(t, s)| (position_of(t, s), attempts.max(0) as u32)),
                recovered: recovered.unwrap_or(false),
            }))
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(&self.subscription_sql().renew)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .bind(node)
                .bind(ttl.as_secs_f64())
                .execute(self.pool())
                .await
                .map_err(db("renew the subscription lease"))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn release<'a>(&'a self, key: &'a PartitionKey, node: Uuid) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(&self.subscription_sql().release)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .bind(node)
                .execute(self.pool())
                .await
                .map_err(db("release the subscription lease"))?;
            Ok(())
        })
    }

    fn leases<'a>(
        &'a self,
        subscriber_id: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<Vec<LeaseInfo>>> {
        Box::pin(async move {
            let rows = sqlx::query(&self.subscription_sql().leases)
                .bind(subscriber_id)
                .bind(partitions as i32)
                .fetch_all(self.pool())
                .await
                .map_err(db("list subscription leases"))?;
            let mut leases: Vec<LeaseInfo> = (0..partitions)
                .map(|partition| LeaseInfo {
                    partition,
                    owner: None,
                })
                .collect();
            for row in rows {
                let partition: i32 = row.try_get(0).map_err(db("decode lease"))?;
                let owner: Option<Uuid> = row.try_get(1).map_err(db("decode lease"))?;
                if let Some(lease) = leases.get_mut(partition.max(0) as usize) {
                    lease.owner = owner;
                }
            }
            Ok(leases)
        })
    }

    fn save_checkpoint<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (t, s) = position_args(position)?;
            let done = sqlx::query(&self.subscription_sql().save_checkpoint)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .bind(node)
                .bind(t)
                .bind(s)
                .execute(self.pool())
                .await
                .map_err(db("save the checkpoint"))?;
            if done.rows_affected() == 0 {
                return Err(lease_lost(key));
            }
            Ok(())
        })
    }

    fn record_attempt<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
        attempts: u32,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (t, s) = position_args(position)?;
            let done = sqlx::query(&self.subscription_sql().record_attempt)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .bind(node)
                .bind(t)
                .bind(s)
                .bind(attempts.min(i32::MAX as u32) as i32)
                .execute(self.pool())
                .await
                .map_err(db("record the delivery attempt"))?;
            if done.rows_affected() == 0 {
                return Err(lease_lost(key));
            }
            Ok(())
        })
    }

    fn begin<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
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
                key: key.clone(),
                node,
            }) as Box<dyn CheckpointTransaction>)
        })
    }

    fn park<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        parked: &'a ParkedEvent,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let e = &parked.event;
            let (t, s) = position_args(e.position)?;
            let metadata =
                serde_json::to_string(&e.metadata).map_err(|source| CoreError::Encode {
                    what: "parked event metadata".into(),
                    source,
                })?;
            let fence: i64 = sqlx::query_scalar(&self.subscription_sql().park)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .bind(node)
                .bind(t)
                .bind(s)
                .bind(e.event_id)
                .bind(&e.entity_type)
                .bind(&e.entity_id)
                .bind(int(e.entity_version, "entity version")?)
                .bind(&e.event_type)
                .bind(&e.payload)
                .bind(metadata)
                .bind(parked.attempts.min(i32::MAX as u32) as i32)
                .bind(&parked.error)
                .fetch_one(self.pool())
                .await
                .map_err(db("park the event"))?;
            if fence == 0 {
                return Err(lease_lost(key));
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

    fn replay_requested<'a>(&'a self, key: &'a PartitionKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            sqlx::query_scalar(&self.subscription_sql().replay_requested)
                .bind(&key.subscriber_id)
                .bind(key.partition as i32)
                .fetch_one(self.pool())
                .await
                .map_err(db("check for replay requests"))
        })
    }

    fn replayed<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
        failure: Option<(u32, String)>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let sql = self.subscription_sql();
            let (_, s) = position_args(position)?;
            let query = match &failure {
                None => sqlx::query_scalar(&sql.replay_ok),
                Some(_) => sqlx::query_scalar(&sql.replay_failed),
            }
            .bind(&key.subscriber_id)
            .bind(key.partition as i32)
            .bind(node)
            .bind(s);
            let query = match failure {
                None => query,
                Some((attempts, error)) => {
                    query.bind(attempts.min(i32::MAX as u32) as i32).bind(error)
                }
            };
            let fence: i64 = query
                .fetch_one(self.pool())
                .await
                .map_err(db("record a replay"))?;
            if fence == 0 {
                return Err(lease_lost(key));
            }
            Ok(())
        })
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.wakeup().subscribe()
    }
}
