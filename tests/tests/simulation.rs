//! Seeded multi-node simulations of the subscription protocol on the in-memory store.
//!
//! Each seed draws a scenario: up to three runtimes (nodes with stable node ids) join, crash
//! (dropped without shutdown), stop gracefully and restart under the same node id; handlers
//! are sometimes slower than the lease; a deploy adds a handled event type (adopted at start);
//! a deploy changes the partition count (explicit `Running::reshape`); a poison event is
//! parked with its entity and replayed after the fix. Deposits are appended throughout.
//!
//! The subscriber mirrors every deposit of account `x` into account `mirror-x` through
//! `ctx.create`/`ctx.update` (idempotent per triggering event), so the mirror is the
//! exactly-once evidence. Checked after every handler entry: never two concurrent handler
//! calls for one entity or one partition. Checked at the end: every deposit delivered, each
//! entity's deliveries in order (a redelivery may restart from an earlier version, never
//! skip), and every mirror holds exactly its source's deposits, in order.
//!
//! Time is tokio's paused clock on a current-thread runtime, so a scenario of minutes of
//! leases and slow handlers runs in milliseconds, and a seed replays the same scenario: the
//! same actions at the same virtual times, the same handler delays. (Incarnation ids are
//! random, so the interleaving within one virtual instant may differ between runs; the checks
//! hold for every interleaving.) `SIM_SEEDS=n` runs more seeds, `SIM_SEED=s` one seed.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use eventuate_core::name::partition_of;
use eventuate_core::runtime::{Running, RuntimeOptions, ShapeView};
use eventuate_core::{
    EventContext, EventStore, Eventuate, HandlerError, InMemoryEventStore, Repository, Subscriber,
    Subscription,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const TTL: Duration = Duration::from_millis(300);
const ID: &str = "mirror";

fn options(node_id: Uuid) -> RuntimeOptions {
    RuntimeOptions {
        node_id,
        poll_interval: Duration::from_millis(50),
        lease_ttl: TTL,
        batch_size: 8,
        // Small, so that batches grow (8, 32, 64) and shrink within a scenario.
        max_batch_size: 64,
        shutdown_timeout: Duration::from_secs(2),
    }
}

/// What the handlers saw.
#[derive(Default)]
struct Observed {
    in_flight: Mutex<HashMap<String, Vec<usize>>>,
    violations: Mutex<Vec<String>>,
    /// (entity, version) of every successful delivery of a deposit, in order.
    deliveries: Mutex<Vec<(String, u64)>>,
    /// Positions of the `Opened` events delivered.
    opened: Mutex<Vec<eventuate_core::Position>>,
    /// While set, deposits whose amount is a multiple of 7 fail permanently.
    broken: AtomicBool,
}

/// Counts a handler call in flight under `key`; records a violation when another is already
/// in flight. Dropping it (also when a crash drops the handler's future) ends the call.
struct InFlight {
    observed: Arc<Observed>,
    key: String,
    slot: usize,
}

impl InFlight {
    fn enter(observed: &Arc<Observed>, key: String, slot: usize) -> Self {
        let mut map = observed.in_flight.lock().unwrap();
        let holders = map.entry(key.clone()).or_default();
        holders.push(slot);
        if holders.len() > 1 {
            observed.violations.lock().unwrap().push(format!(
                "concurrent handler calls for {key} on nodes {holders:?} at {:?}",
                tokio::time::Instant::now()
            ));
        }
        InFlight {
            observed: observed.clone(),
            key,
            slot,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.observed.in_flight.lock().unwrap();
        if let Some(holders) = map.get_mut(&self.key)
            && let Some(i) = holders.iter().position(|s| *s == self.slot)
        {
            holders.remove(i);
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Shape {
    partitions: u32,
    handles_opened: bool,
}

struct MirrorSub {
    slot: usize,
    observed: Arc<Observed>,
    shape: Shape,
    seed: u64,
}

impl Subscriber for MirrorSub {
    fn subscription(&self) -> Subscription {
        let types: &[&str] = if self.shape.handles_opened {
            &["Deposited", "Opened"]
        } else {
            &["Deposited"]
        };
        Subscription::new(ID, ["Account"])
            .event_types(types.iter().copied())
            .partitions(self.shape.partitions)
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        let entity = ctx.entity_id().to_owned();
        let p = self.shape.partitions;
        let _entity = InFlight::enter(&self.observed, format!("entity {entity}"), self.slot);
        let _partition = InFlight::enter(
            &self.observed,
            format!("partition {}/{p}", partition_of(&entity, p)),
            self.slot,
        );
        if entity.starts_with("mirror-") {
            return Ok(());
        }
        if ctx.event().event_type == "Opened" {
            self.observed.opened.lock().unwrap().push(ctx.position());
            return Ok(());
        }
        let d: Deposited = ctx.event().decode()?;
        // Some handlers run longer than the lease: renewals must keep it.
        let mut rng = StdRng::seed_from_u64(self.seed ^ d.amount);
        if rng.random_ratio(1, 10) {
            tokio::time::sleep(TTL.mul_f64(rng.random_range(1.0..2.5))).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        }
        if self.observed.broken.load(Ordering::SeqCst) && d.amount.is_multiple_of(7) {
            return Err(HandlerError::permanent(format!("poison {}", d.amount)));
        }
        let target = format!("mirror-{entity}");
        // The same commands in the same order on every delivery of this event.
        if ctx.event().entity_version == 2 {
            ctx.create::<Account>(
                &target,
                Open {
                    owner: target.clone(),
                },
            )
            .await?;
        }
        ctx.update::<Account>(&target, Deposit { amount: d.amount })
            .await?;
        self.observed
            .deliveries
            .lock()
            .unwrap()
            .push((entity, ctx.event().entity_version));
        Ok(())
    }
}

struct Node {
    node_id: Uuid,
    running: Option<Running>,
    /// The shape it was started with.
    shape: Option<Shape>,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    store: InMemoryEventStore,
    repo: Repository,
    observed: Arc<Observed>,
    nodes: Vec<Node>,
    deployed: Shape,
    /// Accounts `acc-0` .. `acc-{accounts - 1}` may exist.
    accounts: usize,
    /// Once a node runs the `Opened` handler: every `Opened` event after this position must
    /// be delivered.
    opened_from: Option<eventuate_core::Position>,
    next_amount: u64,
    log: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let store = InMemoryEventStore::new();
        let deployed = Shape {
            partitions: rng.random_range(1..=3),
            handles_opened: false,
        };
        Sim {
            seed,
            repo: Repository::new(store.clone()),
            store,
            observed: Arc::default(),
            nodes: (0..3)
                .map(|_| Node {
                    node_id: Uuid::from_u64_pair(seed, rng.random()),
                    running: None,
                    shape: None,
                })
                .collect(),
            deployed,
            accounts: 3,
            opened_from: None,
            next_amount: 1,
            rng,
            log: Vec::new(),
        }
    }

    fn start(&mut self, slot: usize) {
        let subscriber = MirrorSub {
            slot,
            observed: self.observed.clone(),
            shape: self.deployed.clone(),
            seed: self.seed,
        };
        let running = Eventuate::new(self.store.clone())
            .options(options(self.nodes[slot].node_id))
            .subscriber_with(subscriber, |s| {
                s.retry(eventuate_core::RetryPolicy {
                    max_attempts: 3,
                    initial_backoff: Duration::from_millis(5),
                    max_backoff: Duration::from_millis(20),
                })
            })
            .start()
            .unwrap();
        self.nodes[slot].running = Some(running);
        self.nodes[slot].shape = Some(self.deployed.clone());
    }

    /// After a node with the `Opened` handler started: once its shape is the stored one, the
    /// head is the position after which no `Opened` event may be skipped.
    async fn note_adoption(&mut self, slot: usize) {
        if !self.deployed.handles_opened || self.opened_from.is_some() {
            return;
        }
        let node = self.nodes[slot].running.as_ref().unwrap();
        for _ in 0..20 {
            let status = node.status().await.unwrap();
            if status
                .iter()
                .all(|s| matches!(s.shape, ShapeView::Agreed { .. } | ShapeView::Reshaping))
            {
                self.opened_from = Some(self.store.head().await.unwrap());
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn deposit(&mut self) {
        if self.rng.random_ratio(1, 5) {
            self.accounts += 1;
        }
        let account = format!("acc-{}", self.rng.random_range(0..self.accounts));
        let amount = self.next_amount;
        self.next_amount += 1;
        if self.repo.find::<Account>(&account).await.unwrap().is_none() {
            self.repo
                .create_with_id::<Account>(
                    &account,
                    Open {
                        owner: account.clone(),
                    },
                )
                .await
                .unwrap();
        }
        self.repo
            .update::<Account>(&account, Deposit { amount })
            .await
            .unwrap();
    }

    async fn step(&mut self) {
        let running: Vec<usize> = (0..3)
            .filter(|i| self.nodes[*i].running.is_some())
            .collect();
        let stopped: Vec<usize> = (0..3)
            .filter(|i| self.nodes[*i].running.is_none())
            .collect();
        let roll = self.rng.random_range(0..100);
        match roll {
            0..=39 => {
                for _ in 0..self.rng.random_range(1..=4) {
                    self.deposit().await;
                }
            }
            40..=54 if !stopped.is_empty() => {
                let slot = stopped[self.rng.random_range(0..stopped.len())];
                self.log
                    .push(format!("start {slot} at {:?}", tokio::time::Instant::now()));
                self.start(slot);
                self.note_adoption(slot).await;
            }
            55..=64 if !running.is_empty() => {
                let slot = running[self.rng.random_range(0..running.len())];
                self.log
                    .push(format!("crash {slot} at {:?}", tokio::time::Instant::now()));
                drop(self.nodes[slot].running.take());
            }
            65..=72 if !running.is_empty() => {
                let slot = running[self.rng.random_range(0..running.len())];
                self.log
                    .push(format!("stop {slot} at {:?}", tokio::time::Instant::now()));
                let node = self.nodes[slot].running.take().unwrap();
                node.shutdown().await.unwrap();
            }
            73..=75 if !self.deployed.handles_opened => {
                // A deploy that adds a handled type: nodes restarted from now on run it.
                self.log.push("deploy +Opened".into());
                self.deployed.handles_opened = true;
            }
            76..=77 => {
                let partitions = self.deployed.partitions % 3 + 1;
                self.log.push(format!("deploy {partitions} partitions"));
                self.deployed.partitions = partitions;
            }
            78..=81 => {
                let broken = !self.observed.broken.load(Ordering::SeqCst);
                self.log.push(format!("broken = {broken}"));
                self.observed.broken.store(broken, Ordering::SeqCst);
            }
            82..=85 => self.reshape_where_needed().await,
            _ => {}
        }
        let pause = Duration::from_millis(self.rng.random_range(10..400));
        tokio::time::sleep(pause).await;
    }

    /// The operator's step after a partition-count deploy: a node that runs the new shape
    /// and is told about the mismatch calls `reshape`.
    async fn reshape_where_needed(&mut self) {
        for node in &self.nodes {
            let Some(running) = &node.running else {
                continue;
            };
            // Only a node of the new version: reshaping from an old one would roll back.
            if node.shape.as_ref() != Some(&self.deployed) {
                continue;
            }
            let status = running.status().await.unwrap();
            if status
                .iter()
                .any(|s| matches!(s.shape, ShapeView::Mismatch { .. }))
            {
                self.log
                    .push(format!("reshape to {}", self.deployed.partitions));
                running.reshape(ID).await.unwrap();
                return;
            }
        }
    }

    /// Ends the scenario: the handler fixed, a node of the deployed shape running (reshaping
    /// if needed), parked events replayed, and everything delivered.
    async fn finish(&mut self) {
        self.observed.broken.store(false, Ordering::SeqCst);
        // Restart every node with the deployed shape, as a finished rollout would.
        for slot in 0..3 {
            if let Some(node) = self.nodes[slot].running.take() {
                node.shutdown().await.unwrap();
            }
        }
        self.start(0);
        self.start(1);
        let node = self.nodes[0].running.as_ref().unwrap();
        node.reshape(ID).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "seed {}: not caught up after 600 virtual seconds; actions: {:?}; status: {:?}",
                self.seed,
                self.log,
                node.status().await.unwrap()
            );
            if !node.parked(ID).await.unwrap().is_empty() {
                node.replay(ID, None).await.unwrap();
            }
            let caught_up = node.wait_caught_up(Duration::from_secs(5)).await.is_ok();
            if caught_up && node.parked(ID).await.unwrap().is_empty() && self.all_mirrored().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for slot in 0..3 {
            if let Some(node) = self.nodes[slot].running.take() {
                node.shutdown().await.unwrap();
            }
        }
    }

    async fn deposits_of(&self, entity: &str) -> Vec<u64> {
        self.store
            .load("Account", entity, 0)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| e.decode::<Deposited>().ok())
            .map(|d| d.amount)
            .collect()
    }

    async fn all_mirrored(&self) -> bool {
        for i in 0..self.accounts {
            let source = self.deposits_of(&format!("acc-{i}")).await;
            if self.deposits_of(&format!("mirror-acc-{i}")).await.len() < source.len() {
                return false;
            }
        }
        true
    }

    async fn check(&self) {
        let context = format!("seed {}; actions: {:?}", self.seed, self.log);
        let violations = self.observed.violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "{context}: {violations:?}");
        // In order per entity: a delivery never skips past the highest version seen + 1.
        let mut highest: BTreeMap<String, u64> = BTreeMap::new();
        for (entity, version) in self.observed.deliveries.lock().unwrap().iter() {
            let seen = highest.entry(entity.clone()).or_insert(1);
            assert!(
                *version <= *seen + 1,
                "{context}: {entity} version {version} delivered after only {seen}"
            );
            *seen = (*seen).max(*version);
        }
        if let Some(from) = self.opened_from {
            let delivered = self.observed.opened.lock().unwrap().clone();
            for i in 0..self.accounts {
                let entity = format!("acc-{i}");
                let events = self.store.load("Account", &entity, 0).await.unwrap();
                if let Some(opened) = events.first().filter(|e| e.position > from) {
                    assert!(
                        delivered.contains(&opened.position),
                        "{context}: Opened of {entity} at {} (after the handler was deployed at \
                         {from}) never delivered",
                        opened.position
                    );
                }
            }
        }
        for i in 0..self.accounts {
            let entity = format!("acc-{i}");
            let source = self.deposits_of(&entity).await;
            let mirror = self.deposits_of(&format!("mirror-{entity}")).await;
            assert_eq!(
                mirror, source,
                "{context}: the mirror of {entity} holds each deposit exactly once, in order"
            );
            let versions = self.store.load("Account", &entity, 0).await.unwrap().len() as u64;
            if versions > 1 {
                assert_eq!(
                    highest.get(&entity).copied(),
                    Some(versions),
                    "{context}: every deposit of {entity} delivered"
                );
            }
        }
    }
}

fn run_seed(seed: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut sim = Sim::new(seed);
        let first = sim.rng.random_range(0..3);
        sim.start(first);
        let steps = sim.rng.random_range(40..120);
        for _ in 0..steps {
            sim.step().await;
        }
        sim.finish().await;
        sim.check().await;
    });
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100u64);
    (0..n).collect()
}

#[test]
fn many_nodes_crashes_redeploys_and_poison_keep_every_guarantee() {
    for seed in seeds() {
        run_seed(seed);
    }
}
