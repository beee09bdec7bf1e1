//! `--diagnose`: where each operation's cost goes, in counts that noise does not blur.
//!
//! Around every timed run it samples, and reports per operation (command, event, load):
//! - client CPU (this process, from `/proc/self/stat`) and server CPU (every server process,
//!   from `/proc/<pid>/stat` of the pids in `pg_stat_activity`): on a saturated machine,
//!   throughput is the inverse of CPU per operation;
//! - transaction ids consumed (`pg_snapshot_xmax` delta): every transaction that writes (or
//!   runs NOTIFY, which assigns one) commits durably, i.e. waits for a WAL flush;
//! - WAL bytes;
//! - statements executed and their server execution time (`pg_stat_statements`, loaded into
//!   the throwaway server in this mode): the round trips the framework makes;
//! - wait events of the database's active backends, sampled every 5 ms.
//!
//! The sampling itself costs a little CPU, so figures of a `--diagnose` run are not the
//! benchmark's figures; run it to explain them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::BoxResult;

#[derive(Debug)]
pub struct Diagnosis {
    pool: PgPool,
    statements: bool,
    ticks_per_sec: f64,
    results: Mutex<BTreeMap<String, Delta>>,
    notes: Mutex<Vec<String>>,
}

/// What `--diagnose` found: per-operation figures, and notes from workload-specific probes
/// (query plans, byte counts).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub per_op: Vec<PerOp>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Sample {
    next_xid: i64,
    wal_bytes: f64,
    client_ticks: u64,
    server_ticks: HashMap<i32, u64>,
    statements: HashMap<String, (i64, i64, f64)>,
}

/// Sums over the runs of one label.
#[derive(Debug, Clone, Default)]
struct Delta {
    ops: u64,
    client_ticks: u64,
    server_ticks: u64,
    xids: i64,
    wal_bytes: f64,
    statements: HashMap<String, (i64, i64, f64)>,
    waits: HashMap<String, u64>,
}

/// A run being observed.
#[derive(Debug)]
pub struct Token {
    before: Sample,
    stop: Arc<AtomicBool>,
    waits: tokio::task::JoinHandle<HashMap<String, u64>>,
}

/// Per-operation figures of one label.
#[derive(Debug, Clone, Serialize)]
pub struct PerOp {
    pub label: String,
    pub ops: u64,
    pub client_cpu_us: f64,
    pub server_cpu_us: f64,
    pub xids: f64,
    pub wal_bytes: f64,
    /// Statements, most calls first.
    pub statements: Vec<StatementPerOp>,
    /// (wait event, share of samples).
    pub waits: Vec<(String, f64)>,
}

impl Diagnosis {
    pub async fn connect(url: &str) -> BoxResult<Diagnosis> {
        let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
        let statements = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await
            .is_ok()
            && sqlx::query("SELECT 1 FROM pg_stat_statements LIMIT 1")
                .execute(&pool)
                .await
                .is_ok();
        Ok(Diagnosis {
            pool,
            statements,
            ticks_per_sec: 100.0,
            results: Mutex::new(BTreeMap::new()),
            notes: Mutex::new(Vec::new()),
        })
    }

    async fn sample(&self) -> BoxResult<Sample> {
        let (next_xid, wal_bytes): (i64, f64) = sqlx::query_as(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
        )
        .fetch_one(&self.pool)
        .await?;
        let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity")
            .fetch_all(&self.pool)
            .await?;
        let server_ticks = pids
            .into_iter()
            .filter_map(|pid| cpu_ticks(&format!("/proc/{pid}/stat")).map(|t| (pid, t)))
            .collect();
        let mut statements = HashMap::new();
        if self.statements {
            let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(
                "SELECT query, calls, rows, total_exec_time FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%pg_stat_activity%' \
                 AND query NOT LIKE '%pg_wal_lsn_diff%'",
            )
            .fetch_all(&self.pool)
            .await?;
            for (query, calls, rows, ms) in rows {
                let entry = statements.entry(shorten(&query)).or_insert((0, 0, 0.0));
                entry.0 += calls;
                entry.1 += rows;
                entry.2 += ms;
            }
        }
        Ok(Sample {
            next_xid,
            wal_bytes,
            client_ticks: cpu_ticks("/proc/self/stat").unwrap_or(0),
            server_ticks,
            statements,
        })
    }

    pub async fn begin(&self) -> BoxResult<Token> {
        let before = self.sample().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (pool, flag) = (self.pool.clone(), stop.clone());
        let waits = tokio::spawn(async move {
            let mut counts = HashMap::new();
            while !flag.load(Ordering::Acquire) {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT COALESCE(wait_event_type || ':' || wait_event, 'CPU') \
                     FROM pg_stat_activity WHERE datname = current_database() \
                     AND state = 'active' AND pid <> pg_backend_pid() \
                     AND backend_type = 'client backend'",
                )
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                for (event,) in rows {
                    *counts.entry(event).or_insert(0) += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            counts
        });
        Ok(Token {
            before,
            stop,
            waits,
        })
    }

    pub async fn end(&self, token: Token, label: &str, ops: u64) -> BoxResult<()> {
        token.stop.store(true, Ordering::Release);
        let waits = token.waits.await?;
        let after = self.sample().await?;
        let before = token.before;
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        let delta = results.entry(label.to_owned()).or_default();
        delta.ops += ops;
        delta.client_ticks += after.client_ticks.saturating_sub(before.client_ticks);
        delta.server_ticks += after
            .server_ticks
            .iter()
            .map(|(pid, t)| t.saturating_sub(*before.server_ticks.get(pid).unwrap_or(&0)))
            .sum::<u64>();
        delta.xids += after.next_xid - before.next_xid;
        delta.wal_bytes += after.wal_bytes - before.wal_bytes;
        for (query, (calls, rows, ms)) in after.statements {
            let (c0, r0, m0) = before
                .statements
                .get(&query)
                .copied()
                .unwrap_or((0, 0, 0.0));
            if calls > c0 {
                let entry = delta.statements.entry(query).or_insert((0, 0, 0.0));
                entry.0 += calls - c0;
                entry.1 += rows - r0;
                entry.2 += ms - m0;
            }
        }
        for (event, n) in waits {
            *delta.waits.entry(event).or_insert(0) += n;
        }
        Ok(())
    }

    /// Adds a finding to the report.
    pub fn note(&self, text: impl Into<String>) {
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text.into());
    }

    pub fn report(&self) -> Report {
        Report {
            per_op: self.per_op(),
            notes: self.notes.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    fn per_op(&self) -> Vec<PerOp> {
        let results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        results
            .iter()
            .map(|(label, d)| {
                let ops = d.ops.max(1) as f64;
                let us = |ticks: u64| ticks as f64 / self.ticks_per_sec * 1e6 / ops;
                let mut statements: Vec<StatementPerOp> = d
                    .statements
                    .iter()
                    .map(|(q, (calls, rows, ms))| StatementPerOp {
                        statement: q.clone(),
                        calls: *calls as f64 / ops,
                        rows_per_call: *rows as f64 / (*calls).max(1) as f64,
                        exec_us: ms * 1e3 / ops,
                    })
                    .collect();
                statements.sort_by(|a, b| b.calls.total_cmp(&a.calls));
                let samples: u64 = d.waits.values().sum::<u64>().max(1);
                let mut waits: Vec<(String, f64)> = d
                    .waits
                    .iter()
                    .map(|(e, n)| (e.clone(), *n as f64 / samples as f64))
                    .collect();
                waits.sort_by(|a, b| b.1.total_cmp(&a.1));
                PerOp {
                    label: label.clone(),
                    ops: d.ops,
                    client_cpu_us: us(d.client_ticks),
                    server_cpu_us: us(d.server_ticks),
                    xids: d.xids as f64 / ops,
                    wal_bytes: d.wal_bytes / ops,
                    statements,
                    waits,
                }
            })
            .collect()
    }
}

/// Starts observing a run when diagnosing.
pub async fn begin(diag: Option<&Diagnosis>) -> BoxResult<Option<Token>> {
    match diag {
        Some(d) => Ok(Some(d.begin().await?)),
        None => Ok(None),
    }
}

/// Ends observing a run of `ops` operations, recorded under `label`.
pub async fn end(
    diag: Option<&Diagnosis>,
    token: Option<Token>,
    label: &str,
    ops: u64,
) -> BoxResult<()> {
    if let (Some(d), Some(token)) = (diag, token) {
        d.end(token, label, ops).await?;
    }
    Ok(())
}

pub fn markdown(report: &Report) -> String {
    let per_op = &report.per_op;
    let mut out = String::from(
        "\n### Diagnosis (per operation; `--diagnose`)\n\n\
         | run | client CPU | server CPU | xids (durable commits) | WAL | statements per op (server exec time) | waits of active backends |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for p in per_op {
        let statements: Vec<String> = p
            .statements
            .iter()
            .take(6)
            .map(|s| {
                format!(
                    "{} × `{}` ({:.1} rows/call, {:.0} µs)",
                    compact(s.calls),
                    display(&s.statement),
                    s.rows_per_call,
                    s.exec_us
                )
            })
            .collect();
        let waits: Vec<String> = p
            .waits
            .iter()
            .take(4)
            .map(|(e, share)| format!("{e} {:.0}%", share * 100.0))
            .collect();
        out.push_str(&format!(
            "| {} ({} ops) | {} µs | {} µs | {:.2} | {:.0} B | {} | {} |\n",
            p.label,
            p.ops,
            micros(p.client_cpu_us),
            micros(p.server_cpu_us),
            p.xids,
            p.wal_bytes,
            statements.join("<br>"),
            waits.join(", ")
        ));
    }
    for note in &report.notes {
        out.push_str(&format!("\n- {note}"));
    }
    out.push('\n');
    out
}

/// One statement's share of an operation.
#[derive(Debug, Clone, Serialize)]
pub struct StatementPerOp {
    pub statement: String,
    /// Executions per operation.
    pub calls: f64,
    pub rows_per_call: f64,
    /// Server execution time per operation.
    pub exec_us: f64,
}

fn compact(x: f64) -> String {
    if x >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// A statement for the table: the envelope column list abbreviated, cut at 120 chars.
fn display(statement: &str) -> String {
    let text = statement.replace(
        "transaction_id, sequence, event_id, entity_type, entity_id, entity_version, event_type, \
         payload::text, metadata::text",
        "<envelope>",
    );
    if text.chars().count() > 120 {
        format!("{}…", text.chars().take(120).collect::<String>())
    } else {
        text
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A statement's text without schema qualifiers, whitespace collapsed.
fn shorten(query: &str) -> String {
    let mut out = String::new();
    let mut rest = query;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find("\".") {
            Some(end) => rest = &after[end + 2..],
            None => {
                out.push('"');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A CPU time per operation: one decimal below 10 µs (a catch-up's events cost about one).
fn micros(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2}")
    } else {
        format!("{us:.0}")
    }
}
