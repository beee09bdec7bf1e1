//! Workload 2: bulk append, 100 events per `EventStore::append`, against a raw batched INSERT
//! of 100 rows per commit (one `INSERT .. SELECT FROM UNNEST(arrays)` statement, the fastest
//! plain way to send 100 rows in one round trip).
//!
//! Each task appends to an entity of its own, batch after batch (`ExpectedVersion::Exactly`
//! after the first), at 1 and at 8 concurrent tasks; variants run interleaved.

use std::time::Instant;

use eventuate_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use eventuate_postgres::PostgresEventStore;
use serde_json::json;

use crate::account::{command_metadata, deposited_json};
use crate::diag::{self, Diagnosis};
use crate::env::{Env, Raw};
use crate::report::{Row, Target};
use crate::stats::Throughput;
use crate::{BoxResult, Mode};

const BATCH: usize = 100;

pub async fn run(env: &Env, mode: Mode, diag: Option<&Diagnosis>) -> BoxResult<Vec<Row>> {
    let store = env.store("bulk", mode.pool_size).await?;
    let raw = env.raw("bulk", mode.pool_size).await?;
    let levels: [(usize, usize); 2] = if mode.quick {
        [(1, 20), (8, 10)]
    } else {
        [(1, 50), (8, 20)]
    };
    let mut rows = Vec::new();
    let mut run = 0;
    for (tasks, batches) in levels {
        let (mut fw, mut rw) = (Throughput::default(), Throughput::default());
        for round in 0..mode.rounds() {
            // Alternate which side goes first.
            for framework_turn in [round % 2 == 0, round % 2 != 0] {
                run += 1;
                let prefix = format!("bulk-{tasks}-{run}");
                let token = diag::begin(diag).await?;
                let (label, (events, elapsed, lat)) = if framework_turn {
                    (
                        "framework",
                        framework(&store, &prefix, tasks, batches).await?,
                    )
                } else {
                    ("raw", raw_batches(&raw, &prefix, tasks, batches).await?)
                };
                let label = format!("2. bulk events, {tasks} tasks, {label}");
                diag::end(diag, token, &label, events).await?;
                if framework_turn {
                    fw.add(events, elapsed, lat);
                } else {
                    rw.add(events, elapsed, lat);
                }
            }
        }
        let note = |t: &Throughput| {
            let p = t.percentiles();
            format!("append p50 {:.1} ms, p99 {:.1} ms", p.p50_ms, p.p99_ms)
        };
        rows.push(
            Row::new(
                format!(
                    "2. bulk append, {BATCH} events/append, {tasks} task{}",
                    if tasks == 1 { "" } else { "s" }
                ),
                "events/s",
                fw.rate(),
                rw.rate(),
            )
            .notes(note(&fw), note(&rw))
            .target(Target::RatioAtLeast(0.8))
            .details(json!({
                "tasks": tasks,
                "appends_per_task_per_run": batches,
                "events_per_append": BATCH,
                "rounds": mode.rounds(),
                "framework_per_run": fw.runs,
                "reference_per_run": rw.runs,
                "reference_is": "INSERT .. SELECT FROM UNNEST of 100 rows, autocommit",
            })),
        );
    }
    store.close().await;
    raw.pool.close().await;
    Ok(rows)
}

type Timed = (u64, std::time::Duration, Vec<u64>);

async fn framework(
    store: &PostgresEventStore,
    prefix: &str,
    tasks: usize,
    batches: usize,
) -> BoxResult<Timed> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, id) = (store.clone(), format!("{prefix}-{t}"));
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for b in 0..batches {
                let t0 = Instant::now();
                let metadata = command_metadata().value;
                let events = (0..BATCH)
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
                        entity_id: id.clone(),
                        expected: if b == 0 {
                            ExpectedVersion::New
                        } else {
                            ExpectedVersion::Exactly((b * BATCH) as u64)
                        },
                        events,
                        idempotency: None,
                    })
                    .await?;
                latencies.push(t0.elapsed().as_nanos() as u64);
            }
            Ok::<_, eventuate_core::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await??);
    }
    let events = (latencies.len() * BATCH) as u64;
    Ok((events, start.elapsed(), latencies))
}

async fn raw_batches(raw: &Raw, prefix: &str, tasks: usize, batches: usize) -> BoxResult<Timed> {
    let statement: std::sync::Arc<str> = format!(
        "INSERT INTO {} (event_id, entity_type, entity_id, entity_version, event_type, \
         payload, metadata, partition_hash) \
         SELECT e.event_id, 'Account', $2, e.version, 'Deposited', e.payload::json, \
         e.metadata::json, $5 \
         FROM UNNEST($1::uuid[], $3::bigint[], $4::text[], $6::text[]) \
         AS e(event_id, version, payload, metadata)",
        raw.table
    )
    .into();
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (pool, statement) = (raw.pool.clone(), statement.clone());
        let id = format!("{prefix}-{t}");
        let hash = eventuate_core::name::entity_hash(&id) as i32;
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for b in 0..batches {
                let t0 = Instant::now();
                let metadata = command_metadata().text;
                let ids: Vec<uuid::Uuid> = (0..BATCH).map(|_| uuid::Uuid::new_v4()).collect();
                let versions: Vec<i64> = (0..BATCH).map(|i| (b * BATCH + i + 1) as i64).collect();
                let payloads: Vec<String> = (0..BATCH).map(|_| deposited_json(1)).collect();
                let metadata: Vec<&str> = (0..BATCH).map(|_| metadata.as_str()).collect();
                sqlx::query(&statement)
                    .bind(&ids)
                    .bind(&id)
                    .bind(&versions)
                    .bind(&payloads)
                    .bind(hash)
                    .bind(&metadata)
                    .execute(&pool)
                    .await?;
                latencies.push(t0.elapsed().as_nanos() as u64);
            }
            Ok::<_, sqlx::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await??);
    }
    let events = (latencies.len() * BATCH) as u64;
    Ok((events, start.elapsed(), latencies))
}
