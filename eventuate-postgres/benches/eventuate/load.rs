//! Workload 3: loading one account with 10,000 events.
//!
//! - `repository.load::<Account>` (no snapshots: all 10,000 events) against a raw
//!   `SELECT event_type, payload` of the same rows, decoded with serde and folded by hand;
//! - `repository.load::<SnapshottedAccount>` (same stored entity, `snapshot_every = 100`):
//!   the snapshot taken at version 9,900 plus the 100 events after it, the worst case of that
//!   policy, against the same raw full read.
//!
//! Timed one after the other, alternating, many times; the figure is the median.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use eventuate_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent, Repository};
use eventuate_postgres::PostgresEventStore;
use serde_json::json;

use crate::account::{
    Account, Deposit, Deposited, Opened, SnapshottedAccount, Withdrawn, command_metadata,
    deposited_json,
};
use crate::diag::{self, Diagnosis};
use crate::env::Env;
use crate::report::{Row, Target};
use crate::stats::median;
use crate::{BoxResult, Mode};

const EVENTS: u64 = 10_000;
const SNAPSHOT_AT: u64 = 9_900;

pub async fn run(env: &Env, mode: Mode, diag: Option<&Diagnosis>) -> BoxResult<Vec<Row>> {
    let store = env.store("load", mode.pool_size).await?;
    let repository = Repository::new(store.clone());
    let id = "long-lived";
    // Versions 1..=9,899 written directly, 9,900 through the snapshotting aggregate (which
    // takes the snapshot), then 9,901..=10,000 directly again.
    append_events(&store, id, 0, SNAPSHOT_AT - 1).await?;
    let committed = repository
        .update::<SnapshottedAccount>(id, Deposit { amount: 1 })
        .await?;
    assert_eq!(committed.version, SNAPSHOT_AT);
    append_events(&store, id, SNAPSHOT_AT, EVENTS).await?;
    let snapshots: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".snapshots WHERE entity_id = $1 AND entity_version = $2",
        store.schema()
    ))
    .bind(id)
    .bind(SNAPSHOT_AT as i64)
    .fetch_one(store.pool())
    .await?;
    if snapshots != 1 {
        return Err(format!("expected a snapshot at version {SNAPSHOT_AT}").into());
    }

    let schema = store.schema().to_owned();
    if let Some(diag) = diag {
        explain(diag, &store, id).await?;
    }
    let iterations = if mode.quick { 15 } else { 60 };
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); Probe::ALL.len()];
    // Iteration 0 is an untimed pass that warms caches and prepared statements.
    for i in 0..=iterations {
        for (slot, probe) in Probe::ALL.iter().enumerate() {
            let token = diag::begin(diag).await?;
            let t0 = Instant::now();
            let state = probe.run(&repository, &store, &schema, id).await?;
            let elapsed = t0.elapsed();
            diag::end(diag, token, &format!("3. load, {}", probe.label()), 1).await?;
            if let Some(state) = state {
                if state.balance != EVENTS - 1 || state.deposits != EVENTS - 1 {
                    return Err(format!("{}: wrong state {state:?}", probe.label()).into());
                }
            }
            if i > 0 {
                times[slot].push(elapsed);
            }
        }
    }
    store.close().await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let medians: Vec<f64> = times.into_iter().map(|t| ms(median(t))).collect();
    let of = |p: Probe| medians[p as usize];
    let details = json!({
        "events": EVENTS,
        "snapshot_at": SNAPSHOT_AT,
        "iterations": iterations,
        "statistic": "median",
        "reference_is": "SELECT event_type, payload of the same rows + serde decode + fold by hand",
        "medians_ms": Probe::ALL.iter().map(|p| (p.label(), of(*p))).collect::<BTreeMap<_, _>>(),
    });
    Ok(vec![
        Row::new(
            "3. load 10,000 events, no snapshot",
            "ms",
            of(Probe::Full),
            of(Probe::Raw),
        )
        .notes("", "raw SELECT + decode + fold")
        .target(Target::RatioAtMost(1.2))
        .details(details.clone()),
        Row::new(
            "3. load 10,000 events, snapshot at 9,900 + 100 events",
            "ms",
            of(Probe::Snapshot),
            of(Probe::Raw),
        )
        .notes(
            "one round trip: the snapshot and the events after it",
            "raw full read",
        )
        .target(Target::RatioAtMost(0.1))
        .details(details),
    ])
}

/// What one timed load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// `repository.load::<Account>`: all 10,000 events.
    Full,
    /// `repository.load::<SnapshottedAccount>`: snapshot + 100 events.
    Snapshot,
    /// The reference: `event_type, payload` + decode + fold.
    Raw,
}

impl Probe {
    const ALL: [Probe; 3] = [Probe::Full, Probe::Snapshot, Probe::Raw];

    fn label(self) -> &'static str {
        match self {
            Probe::Full => "framework, no snapshot",
            Probe::Snapshot => "framework, snapshot",
            Probe::Raw => "raw",
        }
    }

    /// Runs the load; the folded state when the probe folds one.
    async fn run(
        self,
        repository: &Repository,
        store: &PostgresEventStore,
        schema: &str,
        id: &str,
    ) -> BoxResult<Option<Account>> {
        let narrow = narrow_sql(schema);
        Ok(match self {
            Probe::Full => Some(repository.load::<Account>(id).await?.state),
            Probe::Snapshot => Some(
                repository
                    .load::<SnapshottedAccount>(id)
                    .await?
                    .state
                    .account,
            ),
            Probe::Raw => {
                let rows: Vec<(String, String)> = sqlx::query_as(&narrow)
                    .bind(id)
                    .fetch_all(store.pool())
                    .await?;
                Some(fold(rows.iter().map(|(t, p)| (t.as_str(), p.as_str())))?)
            }
        })
    }
}

/// The reference's statement: what a fold needs.
fn narrow_sql(schema: &str) -> String {
    format!(
        "SELECT event_type, payload::text FROM \"{schema}\".events \
         WHERE entity_type = 'Account' AND entity_id = $1 ORDER BY entity_version"
    )
}

/// The columns the store reads for every event (its envelope).
/// What the store reads to fold an aggregate (`EventStore::load_for_fold`).
fn store_sql(schema: &str) -> String {
    format!(
        "SELECT entity_version, event_type, payload::text FROM \"{schema}\".events \
         WHERE entity_type = 'Account' AND entity_id = $1 ORDER BY entity_version"
    )
}

/// `--diagnose`: the server's share (plans of both reads) and the bytes each one ships.
async fn explain(diag: &Diagnosis, store: &PostgresEventStore, id: &str) -> BoxResult<()> {
    let pool = store.pool();
    let schema = store.schema();
    for (label, sql) in [
        ("reference's 2-column", narrow_sql(schema)),
        ("store's 3-column", store_sql(schema)),
    ] {
        let sql = sql.replace("$1", &format!("'{id}'"));
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"))
            .fetch_all(pool)
            .await?;
        let node = plan.first().cloned().unwrap_or_default();
        let time = plan
            .iter()
            .find(|l| l.contains("Execution Time"))
            .cloned()
            .unwrap_or_default();
        diag.note(format!(
            "3. load, EXPLAIN ANALYZE of the {label} read: `{}`; {}",
            node.trim(),
            time.trim()
        ));
    }
    let (narrow, stored): (i64, i64) = sqlx::query_as(&format!(
        "SELECT sum(octet_length(event_type) + octet_length(payload::text))::bigint, \
         sum(8 + octet_length(event_type) + octet_length(payload::text))::bigint \
         FROM \"{schema}\".events WHERE entity_type = 'Account' AND entity_id = $1"
    ))
    .bind(id)
    .fetch_one(pool)
    .await?;
    diag.note(format!(
        "3. load, data shipped per load of 10,000 events: {} kB for the reference's 2 columns, \
         {} kB for the store's 3 (version, type, payload)",
        narrow / 1000,
        stored / 1000
    ));
    Ok(())
}

/// The hand-written floor's fold: decode each payload with serde by type name, apply.
fn fold<'a>(events: impl Iterator<Item = (&'a str, &'a str)>) -> BoxResult<Account> {
    let mut state = Account::default();
    for (event_type, payload) in events {
        match event_type {
            "Opened" => {
                let e: Opened = serde_json::from_str(payload)?;
                state.owner = e.owner;
            }
            "Deposited" => {
                let e: Deposited = serde_json::from_str(payload)?;
                state.balance += e.amount;
                state.deposits += 1;
            }
            "Withdrawn" => {
                let e: Withdrawn = serde_json::from_str(payload)?;
                state.balance -= e.amount;
            }
            other => return Err(format!("unknown event type {other}").into()),
        }
    }
    Ok(state)
}

/// Appends versions `from + 1 ..= to` in appends of up to 1,000 events (an `Opened` first).
async fn append_events(store: &PostgresEventStore, id: &str, from: u64, to: u64) -> BoxResult<()> {
    let metadata = command_metadata().value;
    let mut version = from;
    while version < to {
        let n = (to - version).min(1_000);
        let events = (version + 1..=version + n)
            .map(|v| NewEvent {
                event_id: uuid::Uuid::new_v4(),
                event_type: if v == 1 { "Opened" } else { "Deposited" }.into(),
                payload: if v == 1 {
                    r#"{"owner":"bench"}"#.into()
                } else {
                    deposited_json(1)
                },
                metadata: metadata.clone(),
            })
            .collect();
        store
            .append(AppendRequest {
                entity_type: "Account".into(),
                entity_id: id.into(),
                expected: if version == 0 {
                    ExpectedVersion::New
                } else {
                    ExpectedVersion::Exactly(version)
                },
                events,
                idempotency: None,
            })
            .await?;
        version += n;
    }
    Ok(())
}
