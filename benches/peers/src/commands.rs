//! Workload (a): commands per second at 1 and 32 concurrent tasks.
//!
//! A run gives every side fresh accounts, opened untimed, the tasks owning disjoint sets of
//! them (so no command conflicts with another and no library's conflict handling is
//! measured). Then each task sends its commands, each a `Deposit` of 1 on an account drawn at
//! random from its own set, with a seeded generator: every side sees the same sequence of
//! accounts, hence accounts of the same lengths. Timed from the first command to the last
//! reply. Afterwards, every side's accounts are loaded (untimed) and their balances must add
//! up to the number of commands sent: nothing lost, nothing doubled.

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::contenders::{Contender, Sides};
use crate::report::Table;
use crate::stats::Throughput;
use crate::{BoxResult, Mode};

/// Sizes of one concurrency level.
#[derive(Debug, Clone, Copy)]
struct Level {
    tasks: usize,
    accounts_per_task: usize,
    commands_per_task: usize,
}

fn levels(mode: Mode) -> [Level; 2] {
    if mode.quick {
        [
            Level {
                tasks: 1,
                accounts_per_task: 20,
                commands_per_task: 200,
            },
            Level {
                tasks: 32,
                accounts_per_task: 4,
                commands_per_task: 25,
            },
        ]
    } else {
        [
            Level {
                tasks: 1,
                accounts_per_task: 40,
                commands_per_task: 400,
            },
            Level {
                tasks: 32,
                accounts_per_task: 5,
                commands_per_task: 50,
            },
        ]
    }
}

pub async fn run(sides: &Sides, mode: Mode) -> BoxResult<Vec<Table>> {
    let mut tables = Vec::new();
    for level in levels(mode) {
        let mut order = sides.commands();
        let mut results: Vec<(&'static str, Throughput)> = order
            .iter()
            .map(|s| (s.name(), Throughput::default()))
            .collect();
        let retries_before: Vec<u64> = order.iter().map(|s| s.retries()).collect();
        for round in 0..mode.rounds() {
            // Rotate the order each round: no side always runs first or after another.
            if round > 0 {
                order.rotate_left(1);
            }
            for side in &order {
                let (ops, elapsed, latencies) = run_once(side, level, round).await?;
                if let Some((_, t)) = results.iter_mut().find(|(n, _)| *n == side.name()) {
                    t.add(ops, elapsed, latencies);
                }
            }
            eprintln!(
                "  {} task(s): round {} of {} done",
                level.tasks,
                round + 1,
                mode.rounds()
            );
        }
        let accounts = level.tasks * level.accounts_per_task;
        let commands = level.tasks * level.commands_per_task;
        // `order` was rotated; `commands()` is in the original order, as `retries_before`.
        let notes: Vec<String> = sides
            .commands()
            .iter()
            .zip(&retries_before)
            .filter(|(side, before)| side.retries() > **before)
            .map(|(side, before)| {
                format!(
                    "{} retried a command {} times after concurrency errors (serialization \
                     failures of its SERIALIZABLE appends), over {} commands (the untimed opens \
                     and the timed deposits); retried deposits count in its time.",
                    side.name(),
                    side.retries() - before,
                    commands * mode.rounds() + accounts * mode.rounds(),
                )
            })
            .collect();
        tables.push(Table {
            key: format!("commands_{}", level.tasks),
            title: format!(
                "(a) commands/s, {} task{}",
                level.tasks,
                if level.tasks == 1 { "" } else { "s" }
            ),
            setup: format!(
                "{accounts} accounts ({} per task), {commands} deposits per run \
                 (about {:.0} per account), {} interleaved rounds",
                level.accounts_per_task,
                commands as f64 / accounts as f64,
                mode.rounds()
            ),
            unit: "cmd/s",
            latency: true,
            sides: results,
            details: serde_json::json!({
                "tasks": level.tasks,
                "accounts": accounts,
                "commands_per_run": commands,
                "rounds": mode.rounds(),
            }),
            notes,
        });
    }
    Ok(tables)
}

/// One timed run of one side: (commands, time, latencies in ns).
async fn run_once(
    side: &Arc<dyn Contender>,
    level: Level,
    round: usize,
) -> BoxResult<(u64, std::time::Duration, Vec<u64>)> {
    let ids: Vec<Vec<Uuid>> = (0..level.tasks)
        .map(|_| {
            (0..level.accounts_per_task)
                .map(|_| Uuid::new_v4())
                .collect()
        })
        .collect();
    // Open, untimed, with the same concurrency as the timed part.
    let mut tasks = Vec::new();
    for task_ids in &ids {
        let (side, task_ids) = (side.clone(), task_ids.clone());
        tasks.push(tokio::spawn(async move {
            for id in task_ids {
                side.open(id).await?;
            }
            Ok::<_, crate::BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, task_ids) in ids.iter().enumerate() {
        let (side, task_ids) = (side.clone(), task_ids.clone());
        let commands = level.commands_per_task;
        let seed = (round * 1_000 + t) as u64;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut latencies = Vec::with_capacity(commands);
            for _ in 0..commands {
                let id = task_ids[rng.random_range(0..task_ids.len())];
                let t0 = Instant::now();
                side.deposit(id, 1).await?;
                latencies.push(t0.elapsed().as_nanos() as u64);
            }
            Ok::<_, crate::BoxError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();

    let mut total = 0;
    for id in ids.iter().flatten() {
        total += side.balance(*id).await?;
    }
    let expected = (level.tasks * level.commands_per_task) as u64;
    if total != expected {
        return Err(format!(
            "{}: the accounts hold {total} after {expected} deposits of 1",
            side.name()
        )
        .into());
    }
    Ok((latencies.len() as u64, elapsed, latencies))
}
