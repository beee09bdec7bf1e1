//! Workload 8c: the cost of `Running::status()`. One runtime's subscriber is held behind the
//! stored events (its handler blocks on a `Notify` after its first event); another runtime's
//! subscriber (reference) has caught up on them. Timed: one `status()` call of each,
//! alternating. `status()` counts lag up to `LAG_COUNT_LIMIT`, so it should cost about the same
//! however far behind a subscriber is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventuate_core::runtime::{LAG_COUNT_LIMIT, Running, RuntimeOptions};
use eventuate_core::{
    AppendRequest, EventContext, EventStore, Eventuate, ExpectedVersion, HandlerError, NewEvent,
    Subscriber, Subscription,
};
use serde_json::json;
use tokio::sync::Notify;

use crate::account::{DepositCounter, command_metadata, deposited_json};
use crate::env::Env;
use crate::report::{Row, Target};
use crate::stats::Percentiles;
use crate::{BoxResult, Mode};

/// Takes the first event, then blocks until released.
#[derive(Clone, Default)]
struct Stuck {
    seen: Arc<AtomicU64>,
    release: Arc<Notify>,
}

impl Subscriber for Stuck {
    fn subscription(&self) -> Subscription {
        Subscription::new("status-behind", ["Account"])
    }

    async fn handle(&self, _ctx: &EventContext) -> Result<(), HandlerError> {
        if self.seen.fetch_add(1, Ordering::AcqRel) == 0 {
            self.release.notified().await;
        }
        Ok(())
    }
}

pub async fn run(env: &Env, mode: Mode) -> BoxResult<(Vec<Row>, Option<String>)> {
    let events: u64 = if mode.quick { 20_000 } else { 100_000 };
    let calls: usize = if mode.quick { 100 } else { 300 };
    let store = env.store("status", mode.pool_size).await?;
    let metadata = command_metadata().value;
    for chunk in 0..events.div_ceil(1_000) {
        let n = (events - chunk * 1_000).min(1_000);
        store
            .append(AppendRequest {
                entity_type: "Account".into(),
                entity_id: format!("status-{chunk}"),
                expected: ExpectedVersion::New,
                events: (0..n)
                    .map(|_| NewEvent {
                        event_id: uuid::Uuid::new_v4(),
                        event_type: "Deposited".into(),
                        payload: deposited_json(1),
                        metadata: metadata.clone(),
                    })
                    .collect(),
                idempotency: None,
            })
            .await?;
    }
    sqlx::query(&format!("VACUUM ANALYZE \"{}\".events", store.schema()))
        .execute(store.pool())
        .await?;

    let options = RuntimeOptions {
        shutdown_timeout: Duration::from_secs(2),
        ..RuntimeOptions::default()
    };
    let counter = DepositCounter::default();
    let caught_up = Eventuate::new(store.clone())
        .options(options.clone())
        .subscriber_with(counter.clone(), |mut s| {
            s.id = "status-caught-up".into();
            s
        })
        .start()?;
    let stuck = Stuck::default();
    let behind = Eventuate::new(store.clone())
        .options(options)
        .subscriber(stuck.clone())
        .start()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (counter.get() < events || stuck.seen.load(Ordering::Acquire) == 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if counter.get() < events {
        return Err(format!("status: {} of {events} events delivered", counter.get()).into());
    }
    // Both consumers have their leases and the caught-up one has saved its checkpoint.
    caught_up.wait_caught_up(Duration::from_secs(30)).await?;
    let lag_behind: u64 = behind.status().await?.iter().map(|p| p.lag).sum();
    let lag_caught_up: u64 = caught_up.status().await?.iter().map(|p| p.lag).sum();

    let (mut fw, mut reference) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for i in 0..calls {
        for behind_turn in [i % 2 == 0, i % 2 != 0] {
            let (runtime, out) = if behind_turn {
                (&behind, &mut fw)
            } else {
                (&caught_up, &mut reference)
            };
            out.push(time_status(runtime).await?);
        }
    }
    stuck.release.notify_waiters();
    behind.shutdown().await?;
    caught_up.shutdown().await?;
    store.close().await;

    let (fw, reference) = (Percentiles::of_ns(fw), Percentiles::of_ns(reference));
    let (fw_med, fw_p99) = (fw.p50_ms, fw.p99_ms);
    let (ref_med, ref_p99) = (reference.p50_ms, reference.p99_ms);
    let note = mode.quick.then(|| {
        format!(
            "status(): quick mode holds the subscriber {events} events behind (full mode: 100,000)"
        )
    });
    let row = Row::new(
        format!("8c. status() of a subscriber {events} events behind (median of {calls} calls)"),
        "ms",
        fw_med,
        ref_med,
    )
    .notes(
        format!("lag reported {lag_behind} (limit {LAG_COUNT_LIMIT}); p99 {fw_p99:.2} ms"),
        format!("caught up, lag {lag_caught_up}; p99 {ref_p99:.2} ms"),
    )
    .target(Target::RatioAtMost(1.5))
    .details(json!({
        "events_behind": events,
        "calls": calls,
        "lag_reported": lag_behind,
        "lag_count_limit": LAG_COUNT_LIMIT,
        "behind_p50_ms": fw_med,
        "behind_p99_ms": fw_p99,
        "caught_up_p50_ms": ref_med,
        "caught_up_p99_ms": ref_p99,
    }));
    Ok((vec![row], note))
}

async fn time_status(runtime: &Running) -> BoxResult<u64> {
    let t0 = Instant::now();
    let status = runtime.status().await?;
    let ns = t0.elapsed().as_nanos() as u64;
    std::hint::black_box(status);
    Ok(ns)
}
