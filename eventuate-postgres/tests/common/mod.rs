//! Shared pieces of the dispatcher tests: event appends, a recording subscriber (at-least-once
//! evidence) and a transactional view subscriber (exactly-once evidence), and the checks run
//! after every fault.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion};
use eventuate_core::{
    Error, EventContext, EventEnvelope, EventStore, HandlerError, NewEvent, RetryPolicy,
    Subscriber, Subscription,
};
use eventuate_postgres::{PgEventContextExt, PostgresEventStore};
use tokio::sync::Notify;

pub async fn store(url: &str) -> PostgresEventStore {
    PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(url)
        .await
        .expect("connect")
}

pub fn options() -> RuntimeOptions {
    RuntimeOptions {
        poll_interval: Duration::from_millis(200),
        lease_ttl: Duration::from_millis(900),
        batch_size: 50,
        ..RuntimeOptions::default()
    }
}

pub fn retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

/// Appends one `Tick {n}` event to `entity`, retrying conflicts and connection errors (the
/// server may be restarting under the test). Returns the version written.
pub async fn tick(store: &PostgresEventStore, entity: &str, n: u64) -> u64 {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let version = match store.load("Counter", entity, 0).await {
            Ok(events) => events.len() as u64,
            Err(e) if attempt < 200 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => panic!("load failed: {e}"),
        };
        let request = AppendRequest {
            entity_type: "Counter".into(),
            entity_id: entity.into(),
            expected: if version == 0 {
                ExpectedVersion::New
            } else {
                ExpectedVersion::Exactly(version)
            },
            events: vec![NewEvent::new("Tick", format!("{{\"n\":{n}}}"))],
            idempotency: None,
        };
        match store.append(request).await {
            Ok(AppendOutcome::Appended { version, .. }) => return version,
            Ok(AppendOutcome::Duplicate) => unreachable!("no idempotency key"),
            Err(Error::Conflict { .. } | Error::EntityExists { .. }) => {}
            Err(e) if attempt < 200 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("append failed: {e}"),
        }
    }
}

pub type Log = Arc<Mutex<Vec<EventEnvelope>>>;

/// Records every delivery (non-transactional: at least once). Can be told to fail on one
/// payload value, or to block on it once it has been recorded.
#[derive(Clone, Default)]
pub struct Recorder {
    pub id: &'static str,
    pub log: Log,
    pub fail_on: Option<u64>,
    pub block_on: Option<u64>,
    pub fixed: Arc<AtomicBool>,
    pub blocked: Arc<Notify>,
    pub calls: Arc<AtomicU32>,
}

impl Recorder {
    pub fn new(id: &'static str) -> Self {
        Recorder {
            id,
            ..Recorder::default()
        }
    }
}

fn n_of(event: &EventEnvelope) -> u64 {
    serde_json::from_str::<serde_json::Value>(&event.payload).unwrap()["n"]
        .as_u64()
        .unwrap()
}

impl Subscriber for Recorder {
    fn subscription(&self) -> Subscription {
        Subscription::new(self.id, ["Counter"])
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let n = n_of(ctx.event());
        if self.fail_on == Some(n) && !self.fixed.load(Ordering::SeqCst) {
            return Err(HandlerError::msg(format!("poison {n}")));
        }
        self.log.lock().unwrap().push(ctx.event().clone());
        if self.block_on == Some(n) && !self.fixed.load(Ordering::SeqCst) {
            self.blocked.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Writes each event into `view_rows` in the delivery's transaction (exactly once). Can be
/// told to block after writing one, before the runtime commits.
#[derive(Clone, Default)]
pub struct View {
    pub id: &'static str,
    pub block_on: Option<u64>,
    /// Fails (transiently) the first delivery of this payload value, after writing its row.
    pub fail_once_on: Option<u64>,
    pub failed: Arc<AtomicBool>,
    pub fixed: Arc<AtomicBool>,
    pub blocked: Arc<Notify>,
}

pub async fn create_view_table(store: &PostgresEventStore) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS view_rows (row_no BIGSERIAL PRIMARY KEY, \
         subscriber TEXT NOT NULL, event_id UUID NOT NULL, entity_id TEXT NOT NULL, \
         version BIGINT NOT NULL, xid BIGINT NOT NULL DEFAULT txid_current())",
    )
    .execute(store.pool())
    .await
    .unwrap();
}

impl Subscriber for View {
    fn subscription(&self) -> Subscription {
        Subscription::new(self.id, ["Counter"]).transactional(true)
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        let event = ctx.event();
        {
            let mut conn = ctx.pg_transaction().await?;
            sqlx::query(
                "INSERT INTO view_rows (subscriber, event_id, entity_id, version) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(self.id)
            .bind(event.event_id)
            .bind(&event.entity_id)
            .bind(event.entity_version as i64)
            .execute(&mut *conn)
            .await?;
        }
        if self.block_on == Some(n_of(event)) && !self.fixed.load(Ordering::SeqCst) {
            self.blocked.notify_one();
            std::future::pending::<()>().await;
        }
        if self.fail_once_on == Some(n_of(event)) && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(HandlerError::msg("fails once, after writing its row"));
        }
        Ok(())
    }
}

/// Every stored Counter event, in stream order.
pub async fn all_events(store: &PostgresEventStore) -> Vec<EventEnvelope> {
    // A reader stops at the horizon: while a transaction is open (a transactional
    // subscriber's, say) the latest events are not readable yet. Read until every committed
    // Counter event was.
    let committed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE entity_type = 'Counter'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    for _ in 0..200 {
        let events = read_all_counter_events(store).await;
        if events.len() as i64 >= committed {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the stream never showed the {committed} committed Counter events");
}

async fn read_all_counter_events(store: &PostgresEventStore) -> Vec<EventEnvelope> {
    let filter = eventuate_core::StreamFilter::entity_types(["Counter"]);
    let mut out = Vec::new();
    let mut after = eventuate_core::Position::START;
    loop {
        let batch = store.read_stream(after, &filter, 1000).await.unwrap();
        let Some(last) = batch.last() else {
            return out;
        };
        after = last.position;
        out.extend(batch);
    }
}

/// Every stored event was delivered at least once, and each entity's deliveries were in
/// version order (a re-delivery may restart an entity from an earlier version, never skip).
pub fn assert_at_least_once_in_order(log: &[EventEnvelope], stored: &[EventEnvelope]) {
    let delivered: HashSet<_> = log.iter().map(|e| e.event_id).collect();
    let missing: Vec<_> = stored
        .iter()
        .filter(|e| !delivered.contains(&e.event_id))
        .map(|e| (&e.entity_id, e.entity_version))
        .collect();
    assert!(missing.is_empty(), "events never delivered: {missing:?}");
    let mut last: HashMap<&str, u64> = HashMap::new();
    for e in log {
        let previous = last.insert(&e.entity_id, e.entity_version).unwrap_or(0);
        assert!(
            e.entity_version <= previous + 1,
            "{} jumped from version {previous} to {}",
            e.entity_id,
            e.entity_version
        );
    }
}

/// The view holds every stored event exactly once, and per entity in version order.
pub async fn assert_view_exactly_once(
    store: &PostgresEventStore,
    subscriber: &str,
    stored: &[EventEnvelope],
) {
    let rows: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
        "SELECT event_id, entity_id, version FROM view_rows WHERE subscriber = $1 \
         ORDER BY row_no",
    )
    .bind(subscriber)
    .fetch_all(store.pool())
    .await
    .unwrap();
    let ids: HashSet<_> = rows.iter().map(|r| r.0).collect();
    assert_eq!(ids.len(), rows.len(), "the view holds a duplicate row");
    assert_eq!(rows.len(), stored.len(), "the view misses events");
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (_, entity, version) in &rows {
        let previous = last.insert(entity, *version).unwrap_or(0);
        assert_eq!(*version, previous + 1, "view order broken for {entity}");
    }
}

/// Polls until `check` holds (or panics after `secs`).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

/// Counts the distinct event ids in a log.
pub fn distinct(log: &Log) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect::<HashSet<_>>()
        .len()
}

/// Waits until `runtime` itself consumes `partitions` partitions (after a crash the dead
/// node's lease must expire first).
pub async fn wait_owned(runtime: &eventuate_core::runtime::Running, partitions: usize) {
    eventually(15, "the partitions are taken over", || {
        let status = runtime.status();
        async move { status.await.unwrap().iter().filter(|s| s.owned).count() >= partitions }
    })
    .await;
}
