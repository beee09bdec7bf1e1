//! Workload 4: delivery latency, from just before a command's append to the entry of the
//! subscriber's handler, through the dispatcher (`Eventuate::new(store).subscriber(..).start()`,
//! default runtime options: durable checkpoints after every batch, LISTEN/NOTIFY wake-ups,
//! fallback poll).
//!
//! The command handler stamps the event (`Deposited::sent_ns`) after the aggregate's load,
//! i.e. just before the append; the handler subtracts it from its own clock on entry. Commands
//! are issued open-loop at a fixed rate (a slow command never delays the next one).
//!
//! - "LISTEN/NOTIFY": the writer is a second store on the same schema, with its own pool and
//!   wake-up tasks, as another process would be; the consumer learns of appends only through
//!   the writer's NOTIFY.
//! - "same process": the writer is the consumer's own store (in-process wake-up).
//! - Reference: a raw writer (autocommit INSERT, then `pg_notify` after the commit) and a raw
//!   listener connection that, on each notification, SELECTs the new rows and decodes them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventuate_core::{Eventuate, Repository};
use serde_json::json;
use sqlx::postgres::{PgListener, PgPoolOptions};

use crate::account::{
    Account, AccountEvent, Deposit, Deposited, LatencyProbe, Open, command_metadata, now_ns,
};
use crate::diag::{self, Diagnosis};
use crate::env::{Env, Raw};
use crate::report::{Row, Target};
use crate::stats::Percentiles;
use crate::{BoxResult, Mode};

const ACCOUNTS: usize = 200;
const RAW_CHANNEL: &str = "bench_raw_delivery";

/// What one phase measured.
#[derive(Debug)]
struct Phase {
    latency: Percentiles,
    /// From the stamp to the append's return (its commit): the part of the latency spent
    /// before any wake-up.
    append: Percentiles,
    delivered: u64,
    issued: u64,
    issue_secs: f64,
}

pub async fn run(env: &Env, mode: Mode, diag: Option<&Diagnosis>) -> BoxResult<Vec<Row>> {
    let (slow, fast) = if mode.quick {
        (1_000, 1_000)
    } else {
        (3_000, 5_000)
    };
    let consumer = env.store("delivery", mode.pool_size).await?;
    let writer = env.attach(consumer.schema(), mode.pool_size).await?;
    let raw = env.raw("delivery", mode.pool_size).await?;

    let remote = Repository::new(writer.clone());
    let local = Repository::new(consumer.clone());
    for a in 0..ACCOUNTS {
        remote
            .create_with_id::<Account>(
                account(a),
                Open {
                    owner: "bench".into(),
                },
            )
            .await?;
    }
    let probe = LatencyProbe::default();
    let runtime = Eventuate::new(consumer.clone())
        .subscriber(probe.clone())
        .start()?;
    runtime.wait_caught_up(Duration::from_secs(30)).await?;

    let mut results = Vec::new();
    let phases = [
        ("200/s, LISTEN/NOTIFY", &remote, 200.0, slow),
        ("1,000/s, LISTEN/NOTIFY", &remote, 1_000.0, fast),
        ("200/s, same process", &local, 200.0, slow),
    ];
    for (label, repository, rate, n) in phases {
        let token = diag::begin(diag).await?;
        let fw = framework_phase(repository, &probe, rate, n).await?;
        diag::end(
            diag,
            token,
            &format!("4. delivery {label}, framework"),
            n as u64,
        )
        .await?;
        let token = diag::begin(diag).await?;
        let rw = raw_phase(env, &raw, rate, n).await?;
        diag::end(diag, token, &format!("4. delivery {label}, raw"), n as u64).await?;
        results.push((label, rate, fw, rw));
    }
    runtime.shutdown().await?;
    consumer.close().await;
    writer.close().await;
    raw.pool.close().await;

    let mut rows = Vec::new();
    for (label, rate, fw, rw) in results {
        let targeted = label == "200/s, LISTEN/NOTIFY";
        let note = |p: &Phase| {
            format!(
                "{}/{} delivered at {:.0}/s; stamp to commit p50 {:.2} ms",
                p.delivered,
                p.issued,
                p.issued as f64 / p.issue_secs,
                p.append.p50_ms
            )
        };
        let details = json!({
            "rate": rate,
            "commands": fw.issued,
            "framework": { "latency": fw.latency, "stamp_to_commit": fw.append, "delivered": fw.delivered, "issue_secs": fw.issue_secs },
            "reference": { "latency": rw.latency, "stamp_to_commit": rw.append, "delivered": rw.delivered, "issue_secs": rw.issue_secs },
            "reference_is": "autocommit INSERT then pg_notify; a listener SELECTs the new rows and decodes them",
        });
        rows.push(
            Row::new(
                format!("4. delivery latency p50, {label}"),
                "ms",
                fw.latency.p50_ms,
                rw.latency.p50_ms,
            )
            .notes(note(&fw), note(&rw))
            .target(if targeted {
                Target::ValueAtMost(2.0)
            } else {
                Target::None
            })
            .details(details.clone()),
        );
        rows.push(
            Row::new(
                format!("4. delivery latency p99, {label}"),
                "ms",
                fw.latency.p99_ms,
                rw.latency.p99_ms,
            )
            .notes(
                format!("stamp to commit p99 {:.2} ms", fw.append.p99_ms),
                format!("stamp to commit p99 {:.2} ms", rw.append.p99_ms),
            )
            .target(if targeted {
                Target::ValueAtMost(5.0)
            } else {
                Target::None
            })
            .details(details),
        );
    }
    Ok(rows)
}

fn account(a: usize) -> String {
    format!("delivery-{a}")
}

/// Issues `n` commands at `rate`/s, open-loop: command `i` starts at `i / rate` seconds.
/// Returns the issuing time and each command's stamp-to-commit time.
async fn open_loop<F, Fut>(rate: f64, n: usize, command: F) -> BoxResult<(f64, Vec<u64>)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = BoxResult<u64>> + Send + 'static,
{
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + period * i as u32).await;
        handles.push(tokio::spawn(command(i)));
    }
    let issue_secs = start.elapsed().as_secs_f64();
    let mut appends = Vec::with_capacity(n);
    for handle in handles {
        appends.push(handle.await??);
    }
    Ok((issue_secs, appends))
}

async fn wait_for(count: &AtomicU64, target: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    while count.load(Ordering::Acquire) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Anything delivered twice would show up now.
    tokio::time::sleep(Duration::from_millis(50)).await;
    count.load(Ordering::Acquire)
}

async fn framework_phase(
    repository: &Repository,
    probe: &LatencyProbe,
    rate: f64,
    n: usize,
) -> BoxResult<Phase> {
    probe.take();
    let baseline = probe.received.load(Ordering::Acquire);
    let (issue_secs, appends) = open_loop(rate, n, |i| {
        let repository = repository.clone();
        async move {
            let committed = repository
                .update::<Account>(&account(i % ACCOUNTS), Deposit { amount: 1 })
                .await?;
            let done = now_ns();
            match committed.events.first() {
                Some(AccountEvent::Deposited(e)) => Ok(done.saturating_sub(e.sent_ns)),
                _ => Err("a deposit without its event".into()),
            }
        }
    })
    .await?;
    let delivered = wait_for(
        &probe.received,
        baseline + n as u64,
        Duration::from_secs(30),
    )
    .await
        - baseline;
    if delivered != n as u64 {
        return Err(format!("delivery: {delivered} of {n} events delivered").into());
    }
    Ok(Phase {
        latency: Percentiles::of_ns(probe.take()),
        append: Percentiles::of_ns(appends),
        delivered,
        issued: n as u64,
        issue_secs,
    })
}

async fn raw_phase(env: &Env, raw: &Raw, rate: f64, n: usize) -> BoxResult<Phase> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let floor: i64 = sqlx::query_scalar(&format!(
        "SELECT COALESCE(max(sequence), 0)::bigint FROM {}",
        raw.table
    ))
    .fetch_one(&raw.pool)
    .await?;
    let mut listener = PgListener::connect(&env.url).await?;
    listener.listen(RAW_CHANNEL).await?;
    let reader = PgPoolOptions::new()
        .max_connections(1)
        .connect(&env.url)
        .await?;
    let select = format!(
        "SELECT sequence, payload::text FROM {} WHERE sequence > $1 ORDER BY sequence",
        raw.table
    );
    let consumer = {
        let (received, stop) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut floor, mut seen) = (floor, BTreeSet::new());
            while !stop.load(Ordering::Acquire) {
                // Wait for a notification, or poll after 50 ms (a lost notification delays).
                let woken = tokio::time::timeout(Duration::from_millis(50), listener.recv());
                if let Ok(Err(e)) = woken.await {
                    return Err(e);
                }
                let rows: Vec<(i64, String)> = sqlx::query_as(&select)
                    .bind(floor)
                    .fetch_all(&reader)
                    .await?;
                for (sequence, payload) in rows {
                    if seen.insert(sequence) {
                        let event: Deposited = serde_json::from_str(&payload)
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                        latencies.push(now_ns().saturating_sub(event.sent_ns));
                        received.fetch_add(1, Ordering::Release);
                    }
                }
                // Rows below the first gap are final; re-read only from there.
                while seen.remove(&(floor + 1)) {
                    floor += 1;
                }
            }
            reader.close().await;
            Ok::<_, sqlx::Error>(latencies)
        })
    };
    let insert: Arc<str> = format!(
        "INSERT INTO {} (event_id, entity_type, entity_id, entity_version, event_type, \
         payload, metadata, partition_hash) \
         VALUES ($1, 'Account', $2, $3, 'Deposited', $4::json, $5::json, $6)",
        raw.table
    )
    .into();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (issue_secs, appends) = open_loop(rate, n, |i| {
        let (pool, insert, run) = (raw.pool.clone(), insert.clone(), run.clone());
        async move {
            let id = format!("raw-{run}-{i}");
            let sent_ns = now_ns();
            let payload = serde_json::to_string(&Deposited { amount: 1, sent_ns })?;
            sqlx::query(&insert)
                .bind(uuid::Uuid::new_v4())
                .bind(&id)
                .bind(1i64)
                .bind(payload)
                .bind(command_metadata().text)
                .bind(eventuate_core::name::entity_hash(&id) as i32)
                .execute(&pool)
                .await?;
            let committed = now_ns().saturating_sub(sent_ns);
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(RAW_CHANNEL)
                .execute(&pool)
                .await?;
            Ok(committed)
        }
    })
    .await?;
    let delivered = wait_for(&received, n as u64, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Release);
    let latencies = consumer.await??;
    if delivered != n as u64 {
        return Err(format!("raw delivery: {delivered} of {n} rows read").into());
    }
    Ok(Phase {
        latency: Percentiles::of_ns(latencies),
        append: Percentiles::of_ns(appends),
        delivered,
        issued: n as u64,
        issue_secs,
    })
}
