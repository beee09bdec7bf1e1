//! Workloads 1, 6 and 7: command throughput and latency at 1, 8 and 32 concurrent tasks, with
//! and without the aggregate cache, against raw floors: for commands without the cache, what a
//! hand-written command does without one (SELECT the entity's events, decode them, INSERT the
//! next); for commands with the cache, one autocommit INSERT per command (shown against the
//! uncached commands too, as the reference of the runs before 2026-12-06);
//! writer scaling (32 tasks / 8 tasks); and the wake-up kept out of the writers' commit path
//! (a subscriber running during the commands; a raw floor with NOTIFY inside each INSERT's
//! transaction).
//!
//! A run gives each task its own accounts (so no two tasks conflict), opens them untimed, then
//! times [`DEPOSITS`] deposits on each, round-robin over the task's accounts. Every variant does the
//! same number of commands on accounts of the same length, and the variants of one concurrency
//! level run interleaved, round after round, so that noise from the shared machine hits them
//! alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventuate_core::{Aggregate, Eventuate, Repository, RepositoryOptions, StartFrom};
use eventuate_postgres::PostgresEventStore;
use serde_json::json;

use crate::account::{Account, Deposit, DepositCounter, Open, command_metadata, deposited_json};
use crate::diag::{self, Diagnosis};
use crate::env::{Env, Raw};
use crate::report::{Row, Target};
use crate::stats::Throughput;
use crate::{BoxResult, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// One autocommit INSERT per command.
    Raw,
    /// A hand-written command without a cache: SELECT the entity's events (version, type,
    /// payload), decode each payload, then the autocommit INSERT of the next version.
    RawLoad,
    /// The same INSERT, with `pg_notify` in the same statement (so in its transaction).
    RawNotify,
    /// `repository.update` without the aggregate cache.
    Framework,
    /// `repository.update` with the aggregate cache.
    Cached,
    /// `Framework` while a subscriber consumes the events on a store of its own (as a
    /// consumer process would: woken by the writers' NOTIFY), closed after each run so that
    /// no listener outlives it.
    Subscribed,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw",
            Variant::RawLoad => "raw-load",
            Variant::RawNotify => "raw+notify",
            Variant::Framework => "framework",
            Variant::Cached => "framework+cache",
            Variant::Subscribed => "framework+subscriber",
        }
    }
}

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Level {
    tasks: usize,
    accounts_per_task: usize,
}

/// Deposits per account in a run: every account ends at version `1 + DEPOSITS` (its `Opened`
/// plus the deposits), whatever the concurrency, so loads cost the same at every level.
const DEPOSITS: usize = 20;

const CACHE_CAPACITY: usize = 100_000;

fn levels(mode: Mode) -> Vec<Level> {
    let scale = if mode.quick { 1 } else { 3 };
    vec![
        Level {
            tasks: 1,
            accounts_per_task: 20 * scale,
        },
        Level {
            tasks: 8,
            accounts_per_task: 8 * scale,
        },
        Level {
            tasks: 32,
            accounts_per_task: 4 * scale,
        },
    ]
}

struct Bench<'a> {
    env: &'a Env,
    diag: Option<&'a Diagnosis>,
    store: PostgresEventStore,
    plain: Repository,
    cached: Repository,
    raw: Raw,
    notifications: Arc<AtomicU64>,
    run_counter: usize,
}

pub async fn run(env: &Env, mode: Mode, diag: Option<&Diagnosis>) -> BoxResult<Vec<Row>> {
    // The cached variant means nothing if the aggregate cannot be cached.
    if Account::default().clone_for_cache().is_none() {
        let why = "Account::clone_for_cache() is None, so the repository cache would never hold \
                   it (a stale eventuate-macros build? `cargo clean -p eventuate-macros`)";
        return Err(why.into());
    }
    let store = env.store("commands", mode.pool_size).await?;
    let raw = env.raw("commands", mode.pool_size).await?;
    let notifications = count_notifications(env, &format!("eventuate_{}", store.schema())).await?;
    let mut bench = Bench {
        env,
        diag,
        plain: Repository::new(store.clone()),
        cached: Repository::new(store.clone()).with_options(RepositoryOptions {
            cache_capacity: CACHE_CAPACITY,
            ..RepositoryOptions::default()
        }),
        store,
        raw,
        notifications,
        run_counter: 0,
    };
    let rounds = mode.rounds();
    let mut results: BTreeMap<(usize, Variant), Throughput> = BTreeMap::new();
    let mut notified: BTreeMap<Variant, (u64, u64)> = BTreeMap::new();
    let mut subscriber_delivered = (0u64, 0u64);
    for level in levels(mode) {
        let mut variants = vec![
            Variant::Raw,
            Variant::RawLoad,
            Variant::Framework,
            Variant::Cached,
        ];
        if level.tasks == 32 {
            variants.extend([Variant::RawNotify, Variant::Subscribed]);
        }
        for round in 0..rounds {
            // Rotate the order each round: no variant always runs first (or after another).
            variants.rotate_left(usize::from(round > 0));
            for &variant in &variants {
                let before = bench.notifications.load(Ordering::Acquire);
                let outcome = bench.run_once(variant, level).await?;
                if level.tasks == 32 {
                    // Notifications arrive asynchronously; give the last ones a moment.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let sent = bench.notifications.load(Ordering::Acquire) - before;
                    let entry = notified.entry(variant).or_default();
                    entry.0 += sent;
                    entry.1 += outcome.ops;
                }
                if let Some(delivered) = outcome.delivered {
                    subscriber_delivered.0 += delivered;
                    subscriber_delivered.1 += outcome.ops;
                }
                results.entry((level.tasks, variant)).or_default().add(
                    outcome.ops,
                    outcome.elapsed,
                    outcome.latencies_ns,
                );
            }
        }
    }
    bench.store.close().await;
    bench.raw.pool.close().await;

    let mut rows = Vec::new();
    let get = |tasks: usize, variant: Variant| results.get(&(tasks, variant)).cloned();
    for level in levels(mode) {
        let tasks = level.tasks;
        let insert_only = get(tasks, Variant::Raw).unwrap_or_default();
        let load_insert = get(tasks, Variant::RawLoad).unwrap_or_default();
        for (variant, label, target) in [
            (Variant::Framework, "no cache", Target::RatioAtLeast(0.7)),
            (Variant::Cached, "cache", Target::RatioAtLeast(0.9)),
        ] {
            let fw = get(tasks, variant).unwrap_or_default();
            let (raw, reference_is) = if variant == Variant::Framework {
                (
                    &load_insert,
                    "a hand-written command without a cache: SELECT the entity's events, \
                     decode them, INSERT the next (two statements, as the framework)",
                )
            } else {
                (
                    &insert_only,
                    "one autocommit INSERT of an equivalent event row per command",
                )
            };
            let accounts = tasks * level.accounts_per_task;
            rows.push(
                Row::new(
                    format!("1. commands/s, {tasks} task{}, {label}", plural(tasks)),
                    "cmd/s",
                    fw.rate(),
                    raw.rate(),
                )
                .notes(
                    latency_note(&fw),
                    if variant == Variant::Framework {
                        format!("SELECT + INSERT: {}", latency_note(raw))
                    } else {
                        format!("INSERT: {}", latency_note(raw))
                    },
                )
                .target(if tasks == 32 { target } else { Target::None })
                .details(json!({
                    "tasks": tasks,
                    "accounts": accounts,
                    "deposits_per_account": DEPOSITS,
                    "commands_per_run": accounts * DEPOSITS,
                    "rounds": rounds,
                    "framework": throughput_json(&fw),
                    "reference": throughput_json(raw),
                    "reference_is": reference_is,
                })),
            );
        }
        if tasks == 32 {
            let fw = get(tasks, Variant::Framework).unwrap_or_default();
            rows.push(
                Row::new(
                    "1. commands/s, 32 tasks, no cache, against one INSERT per command",
                    "cmd/s",
                    fw.rate(),
                    insert_only.rate(),
                )
                .notes(
                    latency_note(&fw),
                    format!(
                        "INSERT only, no read of the entity (the earlier reference): {}",
                        latency_note(&insert_only)
                    ),
                ),
            );
        }
    }
    for (variant, label) in [(Variant::Framework, "no cache"), (Variant::Cached, "cache")] {
        let fw = (get(32, variant), get(8, variant));
        let raw = (get(32, Variant::Raw), get(8, Variant::Raw));
        if let ((Some(fw32), Some(fw8)), (Some(raw32), Some(raw8))) = (fw, raw) {
            rows.push(
                Row::new(
                    format!("6. writer scaling, 32 tasks / 8 tasks, {label}"),
                    "x",
                    fw32.rate() / fw8.rate(),
                    raw32.rate() / raw8.rate(),
                )
                .details(json!({
                    "framework_32": fw32.rate(), "framework_8": fw8.rate(),
                    "raw_32": raw32.rate(), "raw_8": raw8.rate(),
                })),
            );
        }
    }
    if let (Some(with), Some(without)) = (get(32, Variant::Subscribed), get(32, Variant::Framework))
    {
        let per_commit = |v: Variant| {
            notified
                .get(&v)
                .map_or(0.0, |(sent, ops)| *sent as f64 / (*ops).max(1) as f64)
        };
        rows.push(
            Row::new(
                "7. commands/s, 32 tasks, no cache: subscriber running vs not",
                "cmd/s",
                with.rate(),
                without.rate(),
            )
            .notes(
                format!(
                    "{:.2} NOTIFY/commit, {:.0}% delivered during the run",
                    per_commit(Variant::Subscribed),
                    100.0 * subscriber_delivered.0 as f64 / subscriber_delivered.1.max(1) as f64
                ),
                format!("{:.2} NOTIFY/commit", per_commit(Variant::Framework)),
            )
            .details(json!({
                "with_subscriber": throughput_json(&with),
                "without_subscriber": throughput_json(&without),
                "notifications_per_commit_with": per_commit(Variant::Subscribed),
                "notifications_per_commit_without": per_commit(Variant::Framework),
                "delivered_during_runs": subscriber_delivered.0,
                "commands_during_runs": subscriber_delivered.1,
            })),
        );
    }
    if let (Some(notify), Some(plain)) = (get(32, Variant::RawNotify), get(32, Variant::Raw)) {
        rows.push(
            Row::new(
                "7. raw floor, 32 tasks: INSERT with NOTIFY in its transaction (left) vs without",
                "commits/s",
                notify.rate(),
                plain.rate(),
            )
            .notes(latency_note(&notify), latency_note(&plain))
            .details(json!({
                "with_notify": throughput_json(&notify),
                "without_notify": throughput_json(&plain),
            })),
        );
    }
    if let (Some(with), Some(notify)) = (get(32, Variant::Subscribed), get(32, Variant::RawNotify))
    {
        rows.push(Row::new(
            "7. framework with subscriber vs raw floor with NOTIFY in each transaction, 32 tasks",
            "cmd/s",
            with.rate(),
            notify.rate(),
        ));
    }
    Ok(rows)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn latency_note(t: &Throughput) -> String {
    let p = t.percentiles();
    format!("p50 {:.2} ms, p99 {:.2} ms", p.p50_ms, p.p99_ms)
}

fn throughput_json(t: &Throughput) -> serde_json::Value {
    json!({
        "rate": t.rate(),
        "ops": t.ops,
        "seconds": t.elapsed.as_secs_f64(),
        "per_run_rates": t.runs,
        "latency": t.percentiles(),
    })
}

/// What one timed run did.
#[derive(Debug)]
struct Outcome {
    ops: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
    /// Events the subscriber had handled when the run ended (subscribed runs only).
    delivered: Option<u64>,
}

impl Bench<'_> {
    async fn run_once(&mut self, variant: Variant, level: Level) -> BoxResult<Outcome> {
        self.run_counter += 1;
        let prefix = format!("{}-{}-{}", variant.name(), level.tasks, self.run_counter);
        let ids: Vec<Vec<String>> = (0..level.tasks)
            .map(|t| {
                (0..level.accounts_per_task)
                    .map(|a| format!("{prefix}-{t}-{a}"))
                    .collect()
            })
            .collect();
        match variant {
            Variant::Raw | Variant::RawNotify => {
                let token = diag::begin(self.diag).await?;
                let outcome = timed_raw(&self.raw, ids, variant == Variant::RawNotify).await?;
                self.observed(token, variant, level, &outcome).await?;
                Ok(outcome)
            }
            Variant::RawLoad => {
                open_raw(&self.raw, &ids).await?;
                let token = diag::begin(self.diag).await?;
                let outcome = timed_raw_load(&self.raw, ids).await?;
                self.observed(token, variant, level, &outcome).await?;
                Ok(outcome)
            }
            Variant::Framework | Variant::Cached => {
                let repository = if variant == Variant::Cached {
                    self.cached.clone()
                } else {
                    self.plain.clone()
                };
                open_accounts(&repository, &ids).await?;
                let token = diag::begin(self.diag).await?;
                let outcome = timed_framework(&repository, ids.clone()).await?;
                self.observed(token, variant, level, &outcome).await?;
                self.check_stored(&prefix, &ids).await?;
                Ok(outcome)
            }
            Variant::Subscribed => {
                open_accounts(&self.plain, &ids).await?;
                let counter = DepositCounter::default();
                // A fresh subscription id, starting at the head: it only sees this run.
                let id = format!("counter-{}", self.run_counter);
                let consumer = self.env.attach(self.store.schema(), 4).await?;
                let runtime = Eventuate::new(consumer.clone())
                    .subscriber_with(counter.clone(), |mut s| {
                        s.id = id;
                        s.start_from(StartFrom::Now)
                    })
                    .start()?;
                runtime.wait_caught_up(Duration::from_secs(30)).await?;
                let baseline = counter.get();
                let token = diag::begin(self.diag).await?;
                let mut outcome = timed_framework(&self.plain, ids.clone()).await?;
                outcome.delivered = Some(counter.get() - baseline);
                self.observed(token, variant, level, &outcome).await?;
                runtime.shutdown().await?;
                consumer.close().await;
                self.check_stored(&prefix, &ids).await?;
                Ok(outcome)
            }
        }
    }

    async fn observed(
        &self,
        token: Option<diag::Token>,
        variant: Variant,
        level: Level,
        outcome: &Outcome,
    ) -> BoxResult<()> {
        let label = format!("1. commands, {:>2} tasks, {}", level.tasks, variant.name());
        diag::end(self.diag, token, &label, outcome.ops).await
    }

    /// Every command of the run stored exactly one event.
    async fn check_stored(&self, prefix: &str, ids: &[Vec<String>]) -> BoxResult<()> {
        let accounts: usize = ids.iter().map(Vec::len).sum();
        let stored: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{}\".events WHERE entity_id LIKE $1",
            self.store.schema()
        ))
        .bind(format!("{prefix}-%"))
        .fetch_one(self.store.pool())
        .await?;
        let expected = accounts * (1 + DEPOSITS);
        if stored as usize != expected {
            return Err(
                format!("run {prefix}: {stored} events stored, expected {expected}").into(),
            );
        }
        Ok(())
    }
}

/// Opens every account of the run (untimed), one task per writer as in the timed part.
async fn open_accounts(repository: &Repository, ids: &[Vec<String>]) -> BoxResult<()> {
    let mut tasks = Vec::new();
    for task_ids in ids {
        let (repository, task_ids) = (repository.clone(), task_ids.clone());
        tasks.push(tokio::spawn(async move {
            for id in task_ids {
                repository
                    .create_with_id::<Account>(
                        id,
                        Open {
                            owner: "bench".into(),
                        },
                    )
                    .await?;
            }
            Ok::<(), eventuate_core::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn timed_framework(repository: &Repository, ids: Vec<Vec<String>>) -> BoxResult<Outcome> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task_ids in ids {
        let repository = repository.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(task_ids.len() * DEPOSITS);
            for _ in 0..DEPOSITS {
                for id in &task_ids {
                    let t0 = Instant::now();
                    repository
                        .update::<Account>(id, Deposit { amount: 1 })
                        .await?;
                    latencies.push(t0.elapsed().as_nanos() as u64);
                }
            }
            Ok::<_, eventuate_core::Error>(latencies)
        }));
    }
    collect(start, tasks).await
}

async fn timed_raw(raw: &Raw, ids: Vec<Vec<String>>, notify: bool) -> BoxResult<Outcome> {
    let insert = format!(
        "INSERT INTO {} (event_id, entity_type, entity_id, entity_version, event_type, \
         payload, metadata, partition_hash) \
         VALUES ($1, 'Account', $2, $3, 'Deposited', $4::json, $5::json, $6)",
        raw.table
    );
    // One statement, so one round trip either way; with NOTIFY it runs in the INSERT's
    // transaction and is sent at its commit.
    let statement = if notify {
        format!(
            "WITH ins AS ({insert} RETURNING sequence) \
             SELECT pg_notify('bench_raw_commands', sequence::text) FROM ins"
        )
    } else {
        insert
    };
    let statement: Arc<str> = statement.into();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task_ids in ids {
        let (pool, statement) = (raw.pool.clone(), statement.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(task_ids.len() * DEPOSITS);
            let hashes: Vec<i32> = task_ids
                .iter()
                .map(|id| eventuate_core::name::entity_hash(id) as i32)
                .collect();
            for k in 0..DEPOSITS {
                for (id, hash) in task_ids.iter().zip(&hashes) {
                    let t0 = Instant::now();
                    // The row the framework would write: a fresh id, the payload and the
                    // command's metadata as JSON, version after the account's `Opened`.
                    let metadata = command_metadata();
                    sqlx::query(&statement)
                        .bind(uuid::Uuid::new_v4())
                        .bind(id)
                        .bind(k as i64 + 2)
                        .bind(deposited_json(1))
                        .bind(&metadata.text)
                        .bind(hash)
                        .execute(&pool)
                        .await?;
                    latencies.push(t0.elapsed().as_nanos() as u64);
                }
            }
            Ok::<_, sqlx::Error>(latencies)
        }));
    }
    collect(start, tasks).await
}

/// The accounts' `Opened` rows for [`timed_raw_load`], untimed (as the framework's accounts
/// are opened before its runs).
async fn open_raw(raw: &Raw, ids: &[Vec<String>]) -> BoxResult<()> {
    let insert = format!(
        "INSERT INTO {} (event_id, entity_type, entity_id, entity_version, event_type, \
         payload, metadata, partition_hash) \
         VALUES ($1, 'Account', $2, 1, 'Opened', '{{\"owner\":\"bench\"}}'::json, $3::json, $4)",
        raw.table
    );
    for id in ids.iter().flatten() {
        sqlx::query(&insert)
            .bind(uuid::Uuid::new_v4())
            .bind(id)
            .bind(&command_metadata().text)
            .bind(eventuate_core::name::entity_hash(id) as i32)
            .execute(&raw.pool)
            .await?;
    }
    Ok(())
}

/// A hand-written command without a cache, per deposit: read the account's events, decode
/// each payload, and insert the next version (fails on a version that is not the next).
async fn timed_raw_load(raw: &Raw, ids: Vec<Vec<String>>) -> BoxResult<Outcome> {
    let load: Arc<str> = format!(
        "SELECT entity_version, event_type, payload::text FROM {} \
         WHERE entity_type = 'Account' AND entity_id = $1 ORDER BY entity_version",
        raw.table
    )
    .into();
    let insert: Arc<str> = format!(
        "INSERT INTO {} (event_id, entity_type, entity_id, entity_version, event_type, \
         payload, metadata, partition_hash) \
         VALUES ($1, 'Account', $2, $3, 'Deposited', $4::json, $5::json, $6)",
        raw.table
    )
    .into();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task_ids in ids {
        let (pool, load, insert) = (raw.pool.clone(), load.clone(), insert.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(task_ids.len() * DEPOSITS);
            let hashes: Vec<i32> = task_ids
                .iter()
                .map(|id| eventuate_core::name::entity_hash(id) as i32)
                .collect();
            for _ in 0..DEPOSITS {
                for (id, hash) in task_ids.iter().zip(&hashes) {
                    let t0 = Instant::now();
                    let rows: Vec<(i64, String, String)> =
                        sqlx::query_as(&load).bind(id).fetch_all(&pool).await?;
                    let mut version = 0i64;
                    for (v, event_type, payload) in &rows {
                        let decoded: serde_json::Value = serde_json::from_str(payload)
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                        std::hint::black_box((event_type, decoded));
                        version = *v;
                    }
                    let metadata = command_metadata();
                    sqlx::query(&insert)
                        .bind(uuid::Uuid::new_v4())
                        .bind(id)
                        .bind(version + 1)
                        .bind(deposited_json(1))
                        .bind(&metadata.text)
                        .bind(hash)
                        .execute(&pool)
                        .await?;
                    latencies.push(t0.elapsed().as_nanos() as u64);
                }
            }
            Ok::<_, sqlx::Error>(latencies)
        }));
    }
    collect(start, tasks).await
}

async fn collect<E>(
    start: Instant,
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<u64>, E>>>,
) -> BoxResult<Outcome>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut latencies_ns = Vec::new();
    for task in tasks {
        latencies_ns.extend(task.await??);
    }
    Ok(Outcome {
        ops: latencies_ns.len() as u64,
        elapsed: start.elapsed(),
        latencies_ns,
        delivered: None,
    })
}

/// Counts the notifications on a channel, from a connection of its own.
async fn count_notifications(env: &Env, channel: &str) -> BoxResult<Arc<AtomicU64>> {
    let mut listener = sqlx::postgres::PgListener::connect(&env.url).await?;
    listener.listen(channel).await?;
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok(Some(_)) = listener.try_recv().await {
            counter.fetch_add(1, Ordering::Release);
        }
    });
    Ok(count)
}
