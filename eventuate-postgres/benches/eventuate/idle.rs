//! Workload 8a: an idle subscriber behind many events of another entity type. A subscriber to
//! `Account` (no-op handler) is caught up; then events of another type (`Audit`) are appended
//! in bulk while it runs (it moves its checkpoint past them: `StreamBatch::scanned_to`), then
//! single `Audit` events are appended one by one. Measured: the heap rows PostgreSQL fetches
//! from `events` per single append (`pg_stat_user_tables`: `seq_tup_read + idx_tup_fetch`
//! deltas), with the subscriber running (framework) and with no subscriber (reference: the
//! appends' own reads). The framework figure is the difference, i.e. the subscriber's reads.
//!
//! Statistics are flushed by the server when a backend exits, so every pool that worked in a
//! window is closed before the window's closing sample (and the subscriber is restarted from
//! its saved checkpoint at the start of the window, so that nothing of the bulk phase is
//! counted).

use std::time::{Duration, Instant};

use eventuate_core::{
    AppendRequest, EventStore, Eventuate, ExpectedVersion, NewEvent, Position, StreamFilter,
};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::account::{DepositCounter, command_metadata, deposited_json};
use crate::env::Env;
use crate::report::{Row, Target};
use crate::{BoxResult, Mode};

const SUBSCRIBER: &str = "idle-account-view";
/// Pause between single appends: each one is its own wake-up for the subscriber.
const APPEND_GAP: Duration = Duration::from_millis(5);

pub async fn run(env: &Env, mode: Mode) -> BoxResult<(Vec<Row>, Option<String>)> {
    let bulk: u64 = if mode.quick { 20_000 } else { 100_000 };
    let singles: u64 = 200;
    let store = env.store("idle", mode.pool_size).await?;
    let schema = store.schema().to_owned();
    let metadata = command_metadata().value;
    let event = |metadata: &eventuate_core::EventMetadata| NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "Deposited".into(),
        payload: deposited_json(1),
        metadata: metadata.clone(),
    };
    let append = |store: eventuate_postgres::PostgresEventStore,
                  entity_type: &'static str,
                  entity_id: String,
                  events: Vec<NewEvent>| async move {
        store
            .append(AppendRequest {
                entity_type: entity_type.into(),
                entity_id,
                expected: ExpectedVersion::New,
                events,
                idempotency: None,
            })
            .await
    };

    // The subscriber's one event, and the subscriber caught up on it.
    append(
        store.clone(),
        "Account",
        "idle-0".into(),
        vec![event(&metadata)],
    )
    .await?;
    let a_position = store.head().await?;
    let sub_store = env.attach(&schema, 4).await?;
    let counter = DepositCounter::default();
    let runtime = start(sub_store.clone(), counter.clone())?;
    wait_for(|| counter.get() >= 1, "the subscriber's first event").await?;

    // The bulk of the other type, appended while the subscriber runs.
    for chunk in 0..bulk.div_ceil(1_000) {
        let n = (bulk - chunk * 1_000).min(1_000);
        let events = (0..n).map(|_| event(&metadata)).collect();
        append(store.clone(), "Audit", format!("bulk-{chunk}"), events).await?;
    }
    sqlx::query(&format!("VACUUM ANALYZE \"{schema}\".events"))
        .execute(store.pool())
        .await?;
    // Let it look past the bulk and save that (at most a poll interval later; at stop too).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    runtime.shutdown().await?;
    sub_store.close().await;
    store.close().await;

    let stats = PgPoolOptions::new()
        .max_connections(1)
        .connect(&env.url)
        .await?;
    let s0 = settled_reads(&stats, &schema).await?;

    // Framework window: the subscriber resumes at its checkpoint; single appends of the other
    // type, each one a wake-up.
    let sub_store = env.attach(&schema, 4).await?;
    let runtime = start(sub_store.clone(), counter.clone())?;
    let appender = env.attach(&schema, 2).await?;
    let t0 = Instant::now();
    for i in 0..singles {
        append(
            appender.clone(),
            "Audit",
            format!("single-fw-{i}"),
            vec![event(&metadata)],
        )
        .await?;
        tokio::time::sleep(APPEND_GAP).await;
    }
    let fw_secs = t0.elapsed().as_secs_f64();
    // The last wake-up's read.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = runtime.status().await?;
    let checkpoint = status.first().map_or(Position::START, |s| s.position);
    runtime.shutdown().await?;
    sub_store.close().await;
    appender.close().await;
    let s1 = settled_reads(&stats, &schema).await?;

    // Reference window: the same appends, no subscriber.
    let appender = env.attach(&schema, 2).await?;
    let t0 = Instant::now();
    for i in 0..singles {
        append(
            appender.clone(),
            "Audit",
            format!("single-ref-{i}"),
            vec![event(&metadata)],
        )
        .await?;
        tokio::time::sleep(APPEND_GAP).await;
    }
    let ref_secs = t0.elapsed().as_secs_f64();
    appender.close().await;
    let s2 = settled_reads(&stats, &schema).await?;

    // Time of one subscriber read: from its checkpoint (at the head: what each wake-up costs),
    // and from the position it would still be at without `scanned_to` (before the bulk).
    let reader = env.attach(&schema, 1).await?;
    let filter = StreamFilter::entity_types(["Account"]);
    let head = reader.head().await?;
    let at_head_ms = time_reads(&reader, head, &filter, 50).await?;
    let behind_ms = time_reads(&reader, a_position, &filter, 5).await?;
    reader.close().await;
    stats.close().await;

    let with_sub = s1.delta(&s0);
    let without = s2.delta(&s1);
    let per_append = |rows: i64| rows as f64 / singles as f64;
    let subscriber_rows = per_append(with_sub.heap() - without.heap());
    let note = mode.quick.then(|| {
        format!(
            "idle subscriber: quick mode appends {bulk} events of the other type (full mode: 100,000)"
        )
    });
    let row = Row::new(
        format!(
            "8a. idle subscriber behind {bulk} events of another type: rows its reads fetch per single append"
        ),
        "rows",
        subscriber_rows,
        per_append(without.heap()),
    )
    .notes(
        format!(
            "with the subscriber {:.2} rows/append, minus without; one read at its checkpoint {at_head_ms:.2} ms (from before the bulk {behind_ms:.2} ms)",
            per_append(with_sub.heap())
        ),
        "no subscriber: the appends' own reads",
    )
    .target(Target::ValueAtMost(10.0))
    .details(json!({
        "bulk_events_other_type": bulk,
        "single_appends": singles,
        "append_gap_ms": APPEND_GAP.as_millis() as u64,
        "with_subscriber": with_sub.json(),
        "without_subscriber": without.json(),
        "subscriber_checkpoint_after": format!("{checkpoint:?}"),
        "head_after": format!("{head:?}"),
        "read_at_checkpoint_ms": at_head_ms,
        "read_from_before_bulk_ms": behind_ms,
        "framework_window_s": fw_secs,
        "reference_window_s": ref_secs,
    }));
    Ok((vec![row], note))
}

fn start(
    store: eventuate_postgres::PostgresEventStore,
    counter: DepositCounter,
) -> BoxResult<eventuate_core::runtime::Running> {
    Ok(Eventuate::new(store)
        .subscriber_with(counter, |mut s| {
            s.id = SUBSCRIBER.into();
            s
        })
        .start()?)
}

async fn wait_for(done: impl Fn() -> bool, what: &str) -> BoxResult<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Mean milliseconds of `n` reads of one batch after `after`.
async fn time_reads(
    store: &eventuate_postgres::PostgresEventStore,
    after: Position,
    filter: &StreamFilter,
    n: u32,
) -> BoxResult<f64> {
    store.read_batch(after, filter, 256).await?; // prepares the statement
    let t0 = Instant::now();
    for _ in 0..n {
        store.read_batch(after, filter, 256).await?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3 / f64::from(n))
}

/// Cumulative read counters of the schema's `events` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reads {
    seq_tup_read: i64,
    idx_tup_fetch: i64,
    idx_tup_read: i64,
}

impl Reads {
    fn delta(&self, before: &Reads) -> Reads {
        Reads {
            seq_tup_read: self.seq_tup_read - before.seq_tup_read,
            idx_tup_fetch: self.idx_tup_fetch - before.idx_tup_fetch,
            idx_tup_read: self.idx_tup_read - before.idx_tup_read,
        }
    }

    /// Heap rows fetched: by sequential scans and by index scans.
    fn heap(&self) -> i64 {
        self.seq_tup_read + self.idx_tup_fetch
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "seq_tup_read": self.seq_tup_read,
            "idx_tup_fetch": self.idx_tup_fetch,
            "idx_tup_read": self.idx_tup_read,
        })
    }
}

async fn reads(pool: &PgPool, schema: &str) -> BoxResult<Reads> {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    let (seq_tup_read, idx_tup_fetch, idx_tup_read): (i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(t.seq_tup_read, 0)::bigint, COALESCE(t.idx_tup_fetch, 0)::bigint, \
         (SELECT COALESCE(sum(i.idx_tup_read), 0)::bigint FROM pg_stat_user_indexes i \
          WHERE i.relid = t.relid) \
         FROM pg_stat_user_tables t WHERE t.schemaname = $1 AND t.relname = 'events'",
    )
    .bind(schema)
    .fetch_one(pool)
    .await?;
    Ok(Reads {
        seq_tup_read,
        idx_tup_fetch,
        idx_tup_read,
    })
}

/// The counters once the closed pools' backends have exited and flushed their statistics:
/// two equal samples 300 ms apart (at most 5 s).
async fn settled_reads(pool: &PgPool, schema: &str) -> BoxResult<Reads> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = reads(pool, schema).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = reads(pool, schema).await?;
        if now == last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}
