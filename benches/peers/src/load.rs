//! Workload (c): loading one account of 10,000 events (an `Opened` and 9,999 `Deposited`),
//! the way each library loads before a command, without snapshots or cache: every event read,
//! decoded and applied. The accounts are filled untimed through each library's own command
//! path (commands of up to 1,000 events). Each round, every side loads its account a few
//! times, in rotating order; the balance must come out right every time.

use std::time::Instant;

use uuid::Uuid;

use crate::contenders::Sides;
use crate::report::Table;
use crate::stats::Throughput;
use crate::{BoxResult, Mode};

const EVENTS: u64 = 10_000;
const LOADS_PER_ROUND: usize = 3;

pub async fn run(sides: &Sides, mode: Mode) -> BoxResult<Vec<Table>> {
    // The cached eventuate side is left out: what it saves is the load itself.
    let mut order: Vec<_> = sides
        .all()
        .into_iter()
        .filter(|s| s.name() != sides.eventuate_cached.name())
        .collect();
    let mut ids = Vec::new();
    for side in &order {
        let id = Uuid::new_v4();
        side.open(id).await?;
        side.fill(id, EVENTS - 1).await?;
        ids.push((side.name(), id));
    }
    let mut results: Vec<(&'static str, Throughput)> = order
        .iter()
        .map(|s| (s.name(), Throughput::default()))
        .collect();
    // One untimed load each: every side then reads from a warm cache.
    for side in &order {
        let id = id_of(&ids, side.name())?;
        side.balance(id).await?;
    }
    for round in 0..mode.rounds() {
        if round > 0 {
            order.rotate_left(1);
        }
        for side in &order {
            let id = id_of(&ids, side.name())?;
            let mut latencies = Vec::new();
            let start = Instant::now();
            for _ in 0..LOADS_PER_ROUND {
                let t0 = Instant::now();
                let balance = side.balance(id).await?;
                latencies.push(t0.elapsed().as_nanos() as u64);
                if balance != EVENTS - 1 {
                    return Err(format!(
                        "{}: loaded balance {balance}, expected {}",
                        side.name(),
                        EVENTS - 1
                    )
                    .into());
                }
            }
            if let Some((_, t)) = results.iter_mut().find(|(n, _)| *n == side.name()) {
                t.add(LOADS_PER_ROUND as u64, start.elapsed(), latencies);
            }
        }
    }
    Ok(vec![Table {
        key: "load_10k".into(),
        title: "(c) load of one 10,000-event account".into(),
        setup: format!(
            "{} loads per side ({LOADS_PER_ROUND} a round, {} interleaved rounds), \
             no snapshots, no cache",
            LOADS_PER_ROUND * mode.rounds(),
            mode.rounds()
        ),
        unit: "loads/s",
        latency: true,
        sides: results,
        details: serde_json::json!({ "events": EVENTS, "rounds": mode.rounds() }),
        notes: Vec::new(),
    }])
}

fn id_of(ids: &[(&'static str, Uuid)], name: &str) -> BoxResult<Uuid> {
    ids.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, id)| *id)
        .ok_or_else(|| format!("no account for {name}").into())
}
