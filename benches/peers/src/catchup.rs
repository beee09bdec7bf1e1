//! Workload (b): catch-up. A subscriber whose handler does nothing starts from the beginning
//! of a store that already holds the events; timed from its start until its handler has been
//! handed the last one. Sides:
//!
//! - eventuate: the runtime (`Eventuate::new(store).subscriber_with(..).start()`), default
//!   options (lease, batched reads, durable checkpoints);
//! - disintegrate: a `PgEventListener` with one `EventListener` (disintegrate's mechanism for
//!   projections), `PgEventListenerConfig::poller(..).with_notifier()` with the default fetch
//!   size (every pending event in one pass), on a database whose listener tables were set up
//!   beforehand (`Migrator::init_listener`, then `.uninitialized()`, as its docs allow);
//! - raw: keyset-paged SELECTs (pages of eventuate's batch size) decoding each payload;
//! - raw, eventuate's rows: one streaming SELECT of the nine columns eventuate hands a
//!   subscriber (position, ids, types, payload, metadata), from eventuate's own table, nothing
//!   decoded but the position: what the database and the driver alone cost for that row
//!   shape, the ceiling of any reader that delivers eventuate's envelopes.
//!
//! Each side has a database of its own holding the same events: accounts of one `Opened` and
//! 999 `Deposited`, written through the library's own command path. A first, untimed round
//! warms the caches; then the sides run in rotating order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use disintegrate::{EventListener, PersistedEvent, StreamQuery, query};
use disintegrate_postgres::{Migrator, PgEventId, PgEventListener, PgEventListenerConfig};
use eventuate_core::prelude::*;
use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::{Eventuate, Repository};
use uuid::Uuid;

use crate::contenders::Contender;
use crate::contenders::disintegrate::{self as dis, DisintegrateSide};
use crate::contenders::eventuate::{self as ev, Account, Deposited, Opened};
use crate::contenders::raw::RawSide;
use crate::env::Env;
use crate::report::Table;
use crate::stats::Throughput;
use crate::{BoxResult, Mode};

const EVENTS_PER_ACCOUNT: u64 = 1_000;
const DEADLINE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Eventuate,
    Disintegrate,
    Raw,
    RawEnvelope,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Eventuate => "eventuate",
            Side::Disintegrate => "disintegrate",
            Side::Raw => "raw sqlx",
            Side::RawEnvelope => RAW_ENVELOPE,
        }
    }
}

pub async fn run(env: &Env, mode: Mode) -> BoxResult<Vec<Table>> {
    let events: u64 = if mode.quick { 50_000 } else { 100_000 };
    let rounds = if mode.quick { 2 } else { 3 };
    let accounts = events / EVENTS_PER_ACCOUNT;

    let ev_store = ev::store(&env.database("eventuate_catchup").await?).await?;
    let ev_repository = Repository::new(ev_store.clone());
    let dis_side = DisintegrateSide::connect(&env.database("disintegrate_catchup").await?).await?;
    Migrator::new(dis_side.store.clone())
        .init_listener()
        .await?;
    let raw = RawSide::connect(&env.database("raw_catchup").await?).await?;
    eprintln!("  filling {events} events per side ...");
    fill(&ev::EventuateFill(ev_repository), accounts).await?;
    fill(&dis_side, accounts).await?;
    fill(&raw, accounts).await?;
    sqlx::query("VACUUM ANALYZE events")
        .execute(ev_store.pool())
        .await?;
    sqlx::query("VACUUM ANALYZE event")
        .execute(&dis_side.pool)
        .await?;
    sqlx::query("VACUUM ANALYZE events")
        .execute(&raw.pool)
        .await?;

    let batch_size = RuntimeOptions::default().batch_size;
    let mut order = vec![
        Side::Eventuate,
        Side::Disintegrate,
        Side::Raw,
        Side::RawEnvelope,
    ];
    let mut results: Vec<(&'static str, Throughput)> = order
        .iter()
        .map(|s| (s.name(), Throughput::default()))
        .collect();
    let expected_balance = events - accounts;
    // Round 0 is the untimed warm-up.
    for round in 0..=rounds {
        if round > 1 {
            order.rotate_left(1);
        }
        for &side in &order {
            let (count, elapsed) = match side {
                Side::Eventuate => eventuate_catchup(&ev_store, round, events).await?,
                Side::Disintegrate => disintegrate_catchup(&dis_side.store, round, events).await?,
                Side::Raw => {
                    let t0 = Instant::now();
                    let (count, balance) = raw_read(&raw, batch_size).await?;
                    if balance != expected_balance {
                        return Err(format!("raw catch-up: balance {balance}").into());
                    }
                    (count, t0.elapsed())
                }
                Side::RawEnvelope => {
                    let t0 = Instant::now();
                    let count = raw_envelope_read(&ev_store).await?;
                    (count, t0.elapsed())
                }
            };
            if count != events {
                return Err(format!(
                    "{} catch-up: {count} of {events} events handed to the handler",
                    side.name()
                )
                .into());
            }
            if round > 0
                && let Some((_, t)) = results.iter_mut().find(|(n, _)| *n == side.name())
            {
                t.add(count, elapsed, Vec::new());
            }
        }
        eprintln!("  catch-up round {round} of {rounds} done");
    }
    ev_store.close().await;
    dis_side.close().await;
    raw.close().await;
    Ok(vec![Table {
        key: "catchup".into(),
        title: format!("(b) catch-up of a no-op subscriber, {events} stored events"),
        setup: format!(
            "{accounts} accounts of 1 Opened + 999 Deposited; {rounds} timed rounds after an \
             untimed one; raw pages of {batch_size}"
        ),
        unit: "events/s",
        latency: false,
        sides: results,
        details: serde_json::json!({
            "events": events,
            "rounds": rounds,
            "raw_page": batch_size,
        }),
        notes: Vec::new(),
    }])
}

/// Something the catch-up stores can be filled through.
#[async_trait]
trait Fill: Sync {
    async fn account(&self, id: Uuid) -> BoxResult<()>;
}

#[async_trait]
impl Fill for ev::EventuateFill {
    async fn account(&self, id: Uuid) -> BoxResult<()> {
        self.account(id).await
    }
}

#[async_trait]
impl Fill for DisintegrateSide {
    async fn account(&self, id: Uuid) -> BoxResult<()> {
        self.open(id).await?;
        self.deposit_many(id, EVENTS_PER_ACCOUNT - 1).await
    }
}

#[async_trait]
impl Fill for RawSide {
    async fn account(&self, id: Uuid) -> BoxResult<()> {
        self.open(id).await?;
        self.deposit_many(id, EVENTS_PER_ACCOUNT - 1).await
    }
}

async fn fill(side: &dyn Fill, accounts: u64) -> BoxResult<()> {
    for _ in 0..accounts {
        side.account(Uuid::new_v4()).await?;
    }
    Ok(())
}

/// Counts every event it is handed.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    count: Arc<AtomicU64>,
}

#[event_handler(subscribe = Account, id = "catchup-counter")]
impl Counter {
    async fn on_opened(&self, _ctx: &EventContext, _event: &Opened) -> Result<(), HandlerError> {
        self.count.fetch_add(1, Ordering::Release);
        Ok(())
    }

    async fn on_deposited(
        &self,
        _ctx: &EventContext,
        _event: &Deposited,
    ) -> Result<(), HandlerError> {
        self.count.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

async fn wait_for(count: &AtomicU64, events: u64, t0: Instant) -> Duration {
    while count.load(Ordering::Acquire) < events && t0.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t0.elapsed()
}

async fn eventuate_catchup(
    store: &eventuate_postgres::PostgresEventStore,
    round: usize,
    events: u64,
) -> BoxResult<(u64, Duration)> {
    let counter = Counter::default();
    let t0 = Instant::now();
    let runtime = Eventuate::new(store.clone())
        .subscriber_with(counter.clone(), |mut s| {
            s.id = format!("catchup-{round}");
            s
        })
        .start()?;
    let elapsed = wait_for(&counter.count, events, t0).await;
    runtime.shutdown().await?;
    Ok((counter.count.load(Ordering::Acquire), elapsed))
}

/// disintegrate's listener: counts every event it is handed.
struct DisCounter {
    id: &'static str,
    query: StreamQuery<PgEventId, dis::AccountEvent>,
    count: Arc<AtomicU64>,
}

#[async_trait]
impl EventListener<PgEventId, dis::AccountEvent> for DisCounter {
    type Error = std::convert::Infallible;

    fn id(&self) -> &'static str {
        self.id
    }

    fn query(&self) -> &StreamQuery<PgEventId, dis::AccountEvent> {
        &self.query
    }

    async fn handle(
        &self,
        _event: PersistedEvent<PgEventId, dis::AccountEvent>,
    ) -> Result<(), Self::Error> {
        self.count.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

/// Listener ids, one per round (`EventListener::id` is `&'static str`).
const DIS_IDS: [&str; 6] = [
    "catchup-0",
    "catchup-1",
    "catchup-2",
    "catchup-3",
    "catchup-4",
    "catchup-5",
];

async fn disintegrate_catchup(
    store: &dis::Store,
    round: usize,
    events: u64,
) -> BoxResult<(u64, Duration)> {
    let count = Arc::new(AtomicU64::new(0));
    let listener = DisCounter {
        id: DIS_IDS.get(round).ok_or("too many catch-up rounds")?,
        query: query!(dis::AccountEvent),
        count: count.clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t0 = Instant::now();
    let running = tokio::spawn(
        PgEventListener::builder(store.clone())
            .uninitialized()
            .register_listener(
                listener,
                PgEventListenerConfig::poller(Duration::from_millis(100)).with_notifier(),
            )
            .start_with_shutdown(async move {
                let _ = stopped.await;
            }),
    );
    let elapsed = wait_for(&count, events, t0).await;
    let _ = stop.send(());
    running.await??;
    Ok((count.load(Ordering::Acquire), elapsed))
}

/// The name of the side that reads eventuate's rows without decoding them.
pub const RAW_ENVELOPE: &str = "raw sqlx, eventuate's rows undecoded";

/// Every row of eventuate's table in one streaming SELECT of the nine envelope columns,
/// reading only each row's position: the events.
async fn raw_envelope_read(store: &eventuate_postgres::PostgresEventStore) -> BoxResult<u64> {
    use futures_util::TryStreamExt;
    use sqlx::Row;
    let sql = format!(
        "SELECT transaction_id, sequence, event_id, entity_type, entity_id, entity_version, \
           event_type, payload::text, metadata::text FROM \"{}\".events \
         ORDER BY transaction_id, sequence",
        store.schema()
    );
    let mut rows = sqlx::query(&sql).fetch(store.pool());
    let (mut count, mut last) = (0u64, (0i64, 0i64));
    while let Some(row) = rows.try_next().await? {
        let position: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if position <= last {
            return Err("eventuate's rows out of stream order".into());
        }
        last = position;
        count += 1;
    }
    Ok(count)
}

/// Reads every event in pages of `page`, decoding each payload: (events, balance).
async fn raw_read(raw: &RawSide, page: usize) -> BoxResult<(u64, u64)> {
    let (mut after, mut count, mut balance) = (0i64, 0u64, 0u64);
    loop {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, event_type, payload::text FROM events WHERE seq > $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(page as i64)
        .fetch_all(&raw.pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        for (_, event_type, payload) in &rows {
            if event_type == "Deposited" {
                balance +=
                    serde_json::from_str::<crate::contenders::raw::Deposited>(payload)?.amount;
            } else {
                serde_json::from_str::<serde_json::Value>(payload)?;
            }
            count += 1;
        }
    }
    Ok((count, balance))
}
