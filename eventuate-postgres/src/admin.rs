//! Operations on a running store, for operators and their tools (the `eventuate` CLI, a
//! future admin server): what every stored subscriber is doing, moving a subscriber's
//! checkpoints, dropping a parked event, what holds delivery back, and pruning old
//! idempotency keys. They are methods of [`PostgresEventStore`]; listing and replaying parked
//! events are [`SubscriptionStore::parked`] and [`SubscriptionStore::request_replay`].
//!
//! ## Safety against live consumers
//!
//! These operations run while dispatchers consume, in this process or others. The ones that
//! change what a consumer acts on are *fenced* like a reshape (see
//! [`eventuate_core::subscription_store`]): they bump the `epoch` of the partition rows they
//! touch in the same transaction, so that every later write of the consumer that held the old
//! epoch (checkpoint, attempt count, parking, replay outcome, a transactional view's commit)
//! fails; the consumer stops and its partition is acquired again, which reads the new
//! checkpoint and the parked events afresh.
//!
//! - [`PostgresEventStore::reset_subscriber`] also ends every lease, so that even an idle
//!   consumer (which writes nothing until an event arrives) stops within a third of the lease
//!   TTL, when its lease renewal finds the lease gone.
//! - [`PostgresEventStore::skip_parked`] only bumps the epoch of the record's partition: the
//!   consumer keeps the entities with parked events in memory, and its next write for that
//!   partition (at the latest, parking the entity's next event behind the deleted record)
//!   fails, after which it re-reads the parked events and the entity flows again. A handler
//!   already running the skipped event (a replay in progress) may still complete: skipping
//!   never un-handles an event, it only stops the store from offering it again.

use std::str::FromStr;
use std::time::Duration;

use eventuate_core::runtime::{LeaseInfo, StoredShape, SubscriptionStore};
use eventuate_core::store::{Partition, StreamFilter};
use eventuate_core::{EventStore, Position};
use sqlx::Row;
use uuid::Uuid;

use crate::store::quote;
use crate::{Error, PostgresEventStore, Result, validate_schema};

/// The largest lag [`PostgresEventStore::subscriber_overview`] counts per partition (the same
/// bound as the runtime's status): an overview costs the same however far behind a
/// partition is.
pub const LAG_COUNT_LIMIT: u64 = eventuate_core::runtime::LAG_COUNT_LIMIT;

/// One stored subscriber, as the store sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberOverview {
    /// Subscriber id.
    pub subscriber_id: String,
    /// Its stored shape and generation (`None`: rows left by a release without stored
    /// shapes, not yet declared again).
    pub shape: Option<StoredShape>,
    /// A reshape waits for the old generation's leases to end before migrating its rows
    /// (the partitions are then not listed).
    pub migration_pending: bool,
    /// The partitions of the current generation.
    pub partitions: Vec<PartitionOverview>,
    /// Parked events of the subscriber, all partitions together.
    pub parked: u64,
}

/// One partition of a stored subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOverview {
    /// Partition index.
    pub partition: u32,
    /// The live lease's holder: (incarnation, node).
    pub owner: Option<(Uuid, Uuid)>,
    /// How long nobody has held it (`None` while held).
    pub unowned_for: Option<Duration>,
    /// The stored checkpoint (a consumer may be ahead of it by up to a poll interval).
    pub checkpoint: Position,
    /// Events of the partition after the checkpoint, counted up to [`LAG_COUNT_LIMIT`].
    pub lag: u64,
    /// Parked events of the partition.
    pub parked: u64,
}

/// How far a subscriber has come ([`PostgresEventStore::subscriber_progress`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Events of its entity types at or before its oldest partition checkpoint.
    pub done: u64,
    /// Events of its entity types stored.
    pub total: u64,
    /// Every partition has no lag.
    pub caught_up: bool,
}

/// Where [`PostgresEventStore::reset_subscriber`] moves a subscriber's checkpoints.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ResetTarget {
    /// Before the first event: everything is delivered again.
    Beginning,
    /// The head of the stream now: everything stored so far is skipped.
    Now,
    /// A position (`<transaction>/<sequence>`): delivery resumes after it.
    Position(Position),
}

impl FromStr for ResetTarget {
    type Err = String;

    /// `beginning`, `now`, or a position `<transaction>/<sequence>`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "beginning" => Ok(ResetTarget::Beginning),
            "now" => Ok(ResetTarget::Now),
            other => parse_position(other).map(ResetTarget::Position).ok_or_else(|| {
                format!("`{other}` is not `beginning`, `now` or a position `<transaction>/<sequence>`")
            }),
        }
    }
}

/// Parses a position as [`Position`]'s `Display` writes it: `<transaction>/<sequence>`.
pub fn parse_position(s: &str) -> Option<Position> {
    let (t, q) = s.split_once('/')?;
    Some(Position::new(
        t.trim().parse().ok()?,
        q.trim().parse().ok()?,
    ))
}

/// What [`PostgresEventStore::reset_subscriber`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetOutcome {
    /// The partitions whose checkpoint moved (every partition row of the subscriber).
    pub partitions: u64,
    /// The checkpoint they now have.
    pub checkpoint: Position,
    /// Leases that were live and are now ended (their consumers stop and the partitions are
    /// acquired again from the new checkpoint).
    pub leases_ended: u64,
}

/// What holds delivery back: [`PostgresEventStore::horizon`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Horizon {
    /// `stream_horizon()`: the oldest transaction id that may still commit events; events of
    /// transactions from it on are not delivered yet (see [`crate::ordering`]).
    pub horizon: u64,
    /// The last event readers can see now.
    pub head: Position,
    /// The oldest running transaction of this database that holds a transaction id (the
    /// ones that hold the horizon back), if any.
    pub oldest: Option<RunningTransaction>,
}

/// A running transaction, from `pg_stat_activity`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTransaction {
    /// The backend's process id (`pg_terminate_backend(pid)` ends it).
    pub pid: i32,
    /// Its transaction id.
    pub xid: u64,
    /// How long the transaction has been open.
    pub age: Duration,
    /// `active`, `idle in transaction`, ...
    pub state: Option<String>,
    /// Its current or last statement (hidden by PostgreSQL from roles that may not see it).
    pub query: Option<String>,
    /// The connecting role.
    pub user: Option<String>,
    /// The client's `application_name`.
    pub application: Option<String>,
}

fn database(context: &str) -> impl FnOnce(sqlx::Error) -> Error {
    let context = context.to_owned();
    move |source| Error::Database { context, source }
}

fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| {
        Error::Core(eventuate_core::Error::Config(format!(
            "{what} {v} is out of range"
        )))
    })
}

impl PostgresEventStore {
    /// Every subscriber with stored state (a shape or partition rows), sorted.
    pub async fn subscriber_ids(&self) -> Result<Vec<String>> {
        let s = quote(self.schema());
        sqlx::query_scalar(&format!(
            "SELECT subscriber_id FROM {s}.subscribers \
             UNION SELECT subscriber_id FROM {s}.subscription_partitions ORDER BY 1"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(database("list the stored subscribers"))
    }

    /// One stored subscriber: its shape, and per partition its owner, checkpoint, lag
    /// (bounded by [`LAG_COUNT_LIMIT`]) and parked count. Costs one query for the state, one
    /// for the parked counts and one bounded count per partition.
    pub async fn subscriber_overview(&self, subscriber_id: &str) -> Result<SubscriberOverview> {
        let state = SubscriptionStore::subscriber(self, subscriber_id).await?;
        let s = quote(self.schema());
        let parked: Vec<(i32, i64)> = sqlx::query_as(&format!(
            "SELECT partition, count(*) FROM {s}.parked_events WHERE subscriber_id = $1 \
             GROUP BY partition"
        ))
        .bind(subscriber_id)
        .fetch_all(self.pool())
        .await
        .map_err(database("count parked events"))?;
        let parked_in = |p: u32| {
            parked
                .iter()
                .filter(|(partition, _)| *partition == p as i32)
                .map(|(_, n)| to_u64(*n))
                .sum::<u64>()
        };
        let mut partitions = Vec::with_capacity(state.partitions.len());
        for LeaseInfo {
            partition,
            owner,
            unowned_for,
            checkpoint,
        } in state.partitions
        {
            let lag = match &state.shape {
                Some(stored) => {
                    let count = stored.shape.partitions;
                    let filter = StreamFilter {
                        entity_types: stored.shape.entity_types.clone(),
                        partition: (count > 1).then_some(Partition {
                            index: partition,
                            count,
                        }),
                    };
                    self.count_after(checkpoint, &filter, LAG_COUNT_LIMIT)
                        .await?
                }
                None => 0,
            };
            partitions.push(PartitionOverview {
                partition,
                owner,
                unowned_for,
                checkpoint,
                lag,
                parked: parked_in(partition),
            });
        }
        Ok(SubscriberOverview {
            subscriber_id: subscriber_id.to_owned(),
            shape: state.shape,
            migration_pending: state.migration_pending,
            partitions,
            parked: parked.iter().map(|(_, n)| to_u64(*n)).sum(),
        })
    }

    /// [`subscriber_overview`](Self::subscriber_overview) of every stored subscriber.
    pub async fn subscriber_overviews(&self) -> Result<Vec<SubscriberOverview>> {
        let mut out = Vec::new();
        for id in self.subscriber_ids().await? {
            out.push(self.subscriber_overview(&id).await?);
        }
        Ok(out)
    }

    /// Moves every partition checkpoint of a subscriber to `target` (back or forward), and
    /// fences off its live consumers in the same transaction: every partition row's epoch is
    /// bumped, so their writes fail, and every lease ends, so that even idle consumers stop
    /// at their next renewal; the partitions are then acquired again from the new checkpoint.
    /// Persisted attempt counts are cleared; parked events stay parked (and their entities
    /// blocked) until replayed or skipped.
    ///
    /// Takes the subscriber's shape row `FOR UPDATE` first, as a reshape does, so it never
    /// interleaves with a reshape or an acquisition. [`Error::UnknownSubscriber`] when the
    /// subscriber has no partition rows.
    pub async fn reset_subscriber(
        &self,
        subscriber_id: &str,
        target: ResetTarget,
    ) -> Result<ResetOutcome> {
        let checkpoint = match target {
            ResetTarget::Beginning => Position::START,
            ResetTarget::Now => self.head().await?,
            ResetTarget::Position(p) => p,
        };
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(database("begin a subscriber reset"))?;
        let outcome = self.reset_in(&mut tx, subscriber_id, checkpoint).await?;
        tx.commit()
            .await
            .map_err(database("commit a subscriber reset"))?;
        // Consumers polling in this process look again at once.
        self.notify_appended();
        Ok(outcome)
    }

    /// Rebuilds what a subscriber wrote: in ONE transaction, empties the given tables (its
    /// views; `TRUNCATE`, which waits for a view transaction in flight) and resets the
    /// subscriber to the beginning, fencing off its live consumers as
    /// [`PostgresEventStore::reset_subscriber`] does. A transactional view is then rebuilt
    /// exactly once: a view transaction of an old consumer either commits before the truncate
    /// (and is emptied with the rest) or fails its fenced checkpoint write after it (and rolls
    /// back). Table names are plain identifiers, optionally `schema.table`.
    pub async fn rebuild_subscriber(
        &self,
        subscriber_id: &str,
        truncate: &[String],
    ) -> Result<ResetOutcome> {
        let mut tables = Vec::with_capacity(truncate.len());
        for name in truncate {
            let parts: Vec<&str> = name.split('.').collect();
            if parts.is_empty() || parts.len() > 2 {
                return Err(Error::Core(eventuate_core::Error::Config(format!(
                    "`{name}` is not a table name (`table` or `schema.table`)"
                ))));
            }
            for part in &parts {
                validate_schema(part)?;
            }
            tables.push(parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join("."));
        }
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(database("begin a subscriber rebuild"))?;
        if !tables.is_empty() {
            sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
                .execute(&mut *tx)
                .await
                .map_err(database("empty the subscriber's tables"))?;
        }
        let outcome = self
            .reset_in(&mut tx, subscriber_id, Position::START)
            .await?;
        tx.commit()
            .await
            .map_err(database("commit a subscriber rebuild"))?;
        self.notify_appended();
        Ok(outcome)
    }

    /// How far a subscriber has come: the events of its entity types at or before its
    /// partitions' oldest stored checkpoint, of those stored (for a rebuild's progress), and
    /// whether every partition has caught up (no lag).
    pub async fn subscriber_progress(&self, subscriber_id: &str) -> Result<Progress> {
        let overview = self.subscriber_overview(subscriber_id).await?;
        let state = SubscriptionStore::subscriber(self, subscriber_id).await?;
        let types = state
            .shape
            .map(|s| s.shape.entity_types)
            .unwrap_or_default();
        let oldest = overview
            .partitions
            .iter()
            .map(|p| p.checkpoint)
            .min()
            .unwrap_or(Position::START);
        let s = quote(self.schema());
        let (done, total): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*) FILTER (WHERE (transaction_id, sequence) <= ($2, $3)), count(*) \
             FROM {s}.events WHERE entity_type = ANY($1)"
        ))
        .bind(&types)
        .bind(to_i64(oldest.transaction, "transaction id")?)
        .bind(to_i64(oldest.sequence, "sequence")?)
        .fetch_one(self.pool())
        .await
        .map_err(database("count a subscriber's progress"))?;
        Ok(Progress {
            done: to_u64(done),
            total: to_u64(total),
            caught_up: !overview.partitions.is_empty()
                && overview.partitions.iter().all(|p| p.lag == 0),
        })
    }

    /// Moves every checkpoint of the subscriber to `checkpoint` inside `tx`, fencing its live
    /// consumers off (see [`PostgresEventStore::reset_subscriber`]).
    async fn reset_in(
        &self,
        tx: &mut sqlx::PgConnection,
        subscriber_id: &str,
        checkpoint: Position,
    ) -> Result<ResetOutcome> {
        let s = quote(self.schema());
        sqlx::query(&format!(
            "SELECT 1 FROM {s}.subscribers WHERE subscriber_id = $1 FOR UPDATE"
        ))
        .bind(subscriber_id)
        .execute(&mut *tx)
        .await
        .map_err(database("lock the subscriber's shape"))?;
        // `old` is read from the statement's snapshot: whether each lease was live before.
        let row = sqlx::query(&format!(
            "WITH upd AS (UPDATE {s}.subscription_partitions p SET \
                 checkpoint_tx = $2, checkpoint_seq = $3, \
                 attempt_tx = NULL, attempt_seq = NULL, attempts = 0, \
                 epoch = p.epoch + 1, owner = NULL, owner_node = NULL, \
                 lease_expires_at = NULL, unowned_since = now(), updated_at = now() \
               FROM (SELECT partition, (owner IS NOT NULL AND lease_expires_at > now()) AS live \
                 FROM {s}.subscription_partitions WHERE subscriber_id = $1) AS old \
               WHERE p.subscriber_id = $1 AND p.partition = old.partition RETURNING old.live) \
             SELECT count(*), count(*) FILTER (WHERE live) FROM upd"
        ))
        .bind(subscriber_id)
        .bind(to_i64(checkpoint.transaction, "transaction id")?)
        .bind(to_i64(checkpoint.sequence, "sequence")?)
        .fetch_one(&mut *tx)
        .await
        .map_err(database("move the subscriber's checkpoints"))?;
        let partitions: i64 = row.try_get(0).map_err(database("decode a reset"))?;
        let leases_ended: i64 = row.try_get(1).map_err(database("decode a reset"))?;
        if partitions == 0 {
            return Err(Error::UnknownSubscriber {
                subscriber: subscriber_id.to_owned(),
            });
        }
        Ok(ResetOutcome {
            partitions: to_u64(partitions),
            checkpoint,
            leases_ended: to_u64(leases_ended),
        })
    }

    /// Deletes the parked record of `subscriber_id` at `position`, so that the store never
    /// offers that event to the subscriber again and its entity flows again (unless other
    /// events of the entity are parked behind it: they stay parked). In the same statement it
    /// bumps the epoch of the record's partition, fencing off the consumer that holds it: its
    /// next write fails and it re-reads the parked events when it takes the partition again
    /// (see the module docs). `false` when no such record exists.
    pub async fn skip_parked(&self, subscriber_id: &str, position: Position) -> Result<bool> {
        // The statement is the subscription store's (what the event store server's
        // `POST /subscribers/{id}/parked/skip` runs too).
        SubscriptionStore::skip_parked(self, subscriber_id, position)
            .await
            .map_err(Error::Core)
    }

    /// What holds delivery back now: the stream horizon (events of transactions from it on
    /// wait), the head readers see, and the oldest running transaction of this database that
    /// has a transaction id, from `pg_stat_activity` (a role without `pg_read_all_stats`
    /// sees the query text of its own sessions only). Autovacuum workers are left out, as
    /// `stream_horizon()` leaves them out: they never write events.
    pub async fn horizon(&self) -> Result<Horizon> {
        let s = quote(self.schema());
        let horizon: i64 = sqlx::query_scalar(&format!("SELECT {s}.stream_horizon()"))
            .fetch_one(self.pool())
            .await
            .map_err(database("read the stream horizon"))?;
        let head = self.head().await?;
        let row = sqlx::query(
            "SELECT pid, backend_xid::text::bigint, \
               extract(epoch FROM now() - xact_start)::float8, state, query, usename::text, \
               application_name \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND backend_xid IS NOT NULL \
               AND pid <> pg_backend_pid() AND backend_type <> 'autovacuum worker' \
             ORDER BY age(backend_xid) DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await
        .map_err(database("read pg_stat_activity"))?;
        let oldest = match row {
            None => None,
            Some(row) => {
                let d = || database("decode pg_stat_activity");
                let age: Option<f64> = row.try_get(2).map_err(d())?;
                let application: Option<String> = row.try_get(6).map_err(d())?;
                Some(RunningTransaction {
                    pid: row.try_get(0).map_err(d())?,
                    xid: to_u64(row.try_get(1).map_err(d())?),
                    age: Duration::from_secs_f64(age.unwrap_or(0.0).max(0.0)),
                    state: row.try_get(3).map_err(d())?,
                    query: row.try_get(4).map_err(d())?,
                    user: row.try_get(5).map_err(d())?,
                    application: application.filter(|a| !a.is_empty()),
                })
            }
        };
        Ok(Horizon {
            horizon: to_u64(horizon),
            head,
            oldest,
        })
    }

    /// Deletes idempotency keys (`processed_commands` rows) recorded more than `older_than`
    /// ago, in batches of 10,000 rows (short transactions, no long lock); returns how many.
    ///
    /// Only safe past the longest redelivery window: a key protects against applying a
    /// command twice when the event that sent it is delivered again (a consumer crashed
    /// before its checkpoint, a reset or reshape moved checkpoints back, a parked event is
    /// replayed). Once a key is pruned, such a redelivery applies its command again; choose
    /// `older_than` well beyond the time any event can take to be delivered again
    /// (replays of old parked events and resets to old positions included).
    pub async fn prune_processed_commands(&self, older_than: Duration) -> Result<u64> {
        let s = quote(self.schema());
        let sql = format!(
            "DELETE FROM {s}.processed_commands WHERE ctid IN (SELECT ctid \
               FROM {s}.processed_commands \
               WHERE processed_at < now() - make_interval(secs => $1) LIMIT 10000)"
        );
        let mut total = 0;
        loop {
            let done = sqlx::query(&sql)
                .bind(older_than.as_secs_f64())
                .execute(self.pool())
                .await
                .map_err(database("prune processed commands"))?
                .rows_affected();
            total += done;
            if done < 10_000 {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("beginning".parse(), Ok(ResetTarget::Beginning));
        assert_eq!("now".parse(), Ok(ResetTarget::Now));
        assert_eq!(
            "12/34".parse(),
            Ok(ResetTarget::Position(Position::new(12, 34)))
        );
        assert!("12".parse::<ResetTarget>().is_err());
        assert!("a/b".parse::<ResetTarget>().is_err());
    }
}
