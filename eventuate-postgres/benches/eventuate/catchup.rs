//! Workload 5: catch-up. A subscriber with a no-op handler starts from the beginning of a
//! store that already holds the events; timed from `start()` until its handler has seen the
//! last one (lease acquisition, stream reads, payload decoding, durable checkpoint after every
//! batch included). Reference: a raw keyset-paginated SELECT of the same rows, in batches of
//! the runtime's batch size, in stream order, decoding each payload.

use std::time::{Duration, Instant};

use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::{AppendRequest, EventStore, Eventuate, ExpectedVersion, NewEvent};
use serde_json::json;

use crate::account::{DepositCounter, Deposited, command_metadata, deposited_json};
use crate::diag::{self, Diagnosis};
use crate::env::Env;
use crate::report::{Row, Target};
use crate::stats::Throughput;
use crate::{BoxResult, Mode};

const EVENTS_PER_ENTITY: u64 = 1_000;

pub async fn run(
    env: &Env,
    mode: Mode,
    diag: Option<&Diagnosis>,
) -> BoxResult<(Vec<Row>, Option<String>)> {
    let events: u64 = if mode.quick { 50_000 } else { 200_000 };
    let store = env.store("catchup", mode.pool_size).await?;
    let metadata = command_metadata().value;
    // Fill: 1,000-event appends, one entity each, several in flight.
    let entities = events / EVENTS_PER_ENTITY;
    let mut fill = Vec::new();
    for lane in 0..4u64 {
        let (store, metadata) = (store.clone(), metadata.clone());
        fill.push(tokio::spawn(async move {
            for e in (lane..entities).step_by(4) {
                let batch = (0..EVENTS_PER_ENTITY)
                    .map(|_| NewEvent {
                        event_id: uuid::Uuid::new_v4(),
                        event_type: "Deposited".into(),
                        payload: deposited_json(1),
                        metadata: metadata.clone(),
                    })
                    .collect();
                store
                    .append(AppendRequest {
                        entity_type: "Account".into(),
                        entity_id: format!("catchup-{e}"),
                        expected: ExpectedVersion::New,
                        events: batch,
                        idempotency: None,
                    })
                    .await?;
            }
            Ok::<_, eventuate_core::Error>(())
        }));
    }
    for task in fill {
        task.await??;
    }
    sqlx::query(&format!("VACUUM ANALYZE \"{}\".events", store.schema()))
        .execute(store.pool())
        .await?;

    let batch_size = RuntimeOptions::default().batch_size;
    let raw_sql = format!(
        "SELECT transaction_id, sequence, payload::text FROM \"{}\".events \
         WHERE (transaction_id, sequence) > ($1, $2) AND entity_type = 'Account' \
         ORDER BY transaction_id, sequence LIMIT $3",
        store.schema()
    );
    // Untimed pass: both sides then read from a warm cache.
    raw_read(store.pool(), &raw_sql, batch_size, events).await?;
    let (mut fw, mut raw) = (Throughput::default(), Throughput::default());
    let rounds = if mode.quick { 1 } else { 3 };
    for round in 0..rounds {
        // Alternate which side goes first.
        for framework_turn in [round % 2 == 0, round % 2 != 0] {
            if framework_turn {
                let counter = DepositCounter::default();
                let id = format!("catchup-{round}");
                let token = diag::begin(diag).await?;
                let t0 = Instant::now();
                let runtime = Eventuate::new(store.clone())
                    .subscriber_with(counter.clone(), |mut s| {
                        s.id = id;
                        s
                    })
                    .start()?;
                let deadline = t0 + Duration::from_secs(600);
                while counter.get() < events && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let elapsed = t0.elapsed();
                diag::end(diag, token, "5. catch-up events, framework", events).await?;
                runtime.shutdown().await?;
                if counter.get() != events {
                    return Err(format!(
                        "catch-up: {} of {events} events delivered",
                        counter.get()
                    )
                    .into());
                }
                fw.add(events, elapsed, Vec::new());
            } else {
                let token = diag::begin(diag).await?;
                let t0 = Instant::now();
                let n = raw_read(store.pool(), &raw_sql, batch_size, events).await?;
                raw.add(n, t0.elapsed(), Vec::new());
                diag::end(diag, token, "5. catch-up events, raw", n).await?;
            }
        }
    }
    store.close().await;
    let note = mode.quick.then(|| {
        format!("catch-up: quick mode uses {events} stored events (full mode: 200,000), 1 round")
    });
    let row = Row::new(
        format!("5. catch-up from the beginning, {events} events, no-op handler"),
        "events/s",
        fw.rate(),
        raw.rate(),
    )
    .notes(
        format!(
            "batch {batch_size}, next batch read during delivery, checkpoint per poll interval"
        ),
        format!("SELECT batches of {batch_size} + decode"),
    )
    .target(Target::RatioAtLeast(0.8))
    .details(json!({
        "events": events,
        "batch_size": batch_size,
        "rounds": rounds,
        "framework_per_run": fw.runs,
        "reference_per_run": raw.runs,
    }));
    Ok((vec![row], note))
}

async fn raw_read(
    pool: &sqlx::PgPool,
    sql: &str,
    batch_size: usize,
    expected: u64,
) -> BoxResult<u64> {
    let (mut after, mut count, mut balance) = ((0i64, 0i64), 0u64, 0u64);
    loop {
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(sql)
            .bind(after.0)
            .bind(after.1)
            .bind(batch_size as i64)
            .fetch_all(pool)
            .await?;
        let Some(last) = rows.last() else { break };
        after = (last.0, last.1);
        for (_, _, payload) in &rows {
            let event: Deposited = serde_json::from_str(payload)?;
            balance += event.amount;
            count += 1;
        }
    }
    if count != expected || balance != expected {
        return Err(format!("raw catch-up read {count} events, expected {expected}").into());
    }
    Ok(count)
}
