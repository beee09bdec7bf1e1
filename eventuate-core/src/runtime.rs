//! The dispatcher: runs subscribers against a store that implements both [`EventStore`] and
//! [`SubscriptionStore`], with the same mechanism for the in-memory and the PostgreSQL store.
//!
//! A runtime (one per process, identified by a node id) heartbeats, and for every subscriber
//! partition either holds its lease or leaves it to another node; each node takes a fair share
//! (`ceil(partitions / live nodes)`) and gives up extras, so partitions spread evenly and a dead
//! node's partitions are taken over once its leases expire. Each held partition runs one
//! consumer task, which reads the global stream after its checkpoint in batches (filtered by
//! entity type and partition), delivers each event in order, and moves the checkpoint.
//!
//! ## Delivery guarantees
//!
//! Each is proved by a test that fails if it breaks (`eventuate-postgres/tests/dispatcher.rs`
//! runs the fault cases on a real PostgreSQL; `tests/tests/runtime_memory.rs` on the in-memory
//! store).
//! - **Every event, at least once, in order per entity.** The consumer moves its checkpoint
//!   past an event only after the handler succeeded or the event was parked, and the store's
//!   stream read never skips a committed event. Proved by `dispatcher.rs` `c_consumer_dropped_
//!   between_handling_and_checkpoint` and `f_sixteen_writers_three_partitions`.
//! - **One consumer per partition; partitions spread and taken over.** Leases fence every
//!   write; each node takes `ceil(partitions / live nodes)`. Proved by `dispatcher.rs`
//!   `d_two_runtimes_compete_then_one_is_dropped` and `f_sixteen_writers_three_partitions`,
//!   `runtime_memory.rs` `partitions_spread_over_runtimes_and_keep_per_entity_order`.
//! - **Wake-ups are hints.** A consumer waits for [`SubscriptionStore::wakeups`] *or* the poll
//!   interval and always reads from the store. Proved by `dispatcher.rs`
//!   `a_listener_connection_killed_mid_stream` (30 s poll interval: only reconnect catch-up
//!   can deliver), `server_restart.rs` `b_server_restarted_mid_stream`, and
//!   `runtime_memory.rs` `the_fallback_poll_delivers_when_no_wake_up_ever_comes`.
//! - **Failures.** A failing or panicking handler is retried with exponential backoff; after
//!   `max_attempts` the event is parked and later events of the same entity are parked behind
//!   it, while other entities keep flowing; parked events are listed and replayed in order
//!   ([`Running::parked`], [`Running::replay`]). Proved by `dispatcher.rs`
//!   `e_poison_event_parked_and_replayed`, `runtime_memory.rs`
//!   `poison_events_are_parked_with_their_entity_and_replayed_in_order` and
//!   `a_panicking_handler_is_a_failure_not_a_dead_consumer`. A store outage (no transaction
//!   can be begun) is not a handler failure: it is retried without counting attempts
//!   (`a_store_outage_is_retried_without_counting_attempts_or_parking`).
//! - **Crashes.** A partition taken over from a holder that did not release it cleanly is
//!   consumed carefully for one batch: one event at a time, its attempt count persisted before
//!   the handler runs and the checkpoint saved after it, so an event that crashes the process
//!   is parked after at most `max_attempts + 1` crashes. (Outside that window the first attempt
//!   of an event is not persisted on its own: that would add a write to every delivery; the
//!   lease's "not released cleanly" flag stands in for it.) Proved by `runtime_memory.rs`
//!   `an_event_that_keeps_crashing_the_process_gets_parked`.
//! - **Exactly-once views.** A transactional subscriber writes through
//!   [`EventContext::transaction`]; the runtime commits that transaction together with the
//!   checkpoint. Commands sent with [`EventContext::update`] are deduplicated by the
//!   triggering event. Proved by `dispatcher.rs` (a) to (f), which check the view for
//!   duplicates after every fault, and `runtime_memory.rs`
//!   `a_redelivered_event_does_not_apply_its_command_twice`.
//! - **Graceful shutdown.** In-flight handlers finish (for at most `shutdown_timeout`),
//!   checkpoints are saved, leases released. Proved by `runtime_memory.rs`
//!   `shutdown_lets_an_in_flight_handler_finish_and_saves_its_checkpoint` and
//!   `shutdown_does_not_wait_forever_for_a_hung_handler`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

use crate::store::{EventStore, Partition, StreamFilter};
use crate::subscriber::{EventContext, HandlerError, StartFrom, Subscriber, Subscription};
pub use crate::subscription_store::{
    Claim, LeaseInfo, ParkedEvent, PartitionKey, SubscriptionStore,
};
use crate::{Error, EventEnvelope, Position, Repository, Result};

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// This process's node id (fresh by default).
    pub node_id: Uuid,
    /// Events read per batch.
    pub batch_size: usize,
    /// Fallback poll interval: how long a consumer waits for a wake-up before reading anyway.
    pub poll_interval: Duration,
    /// Lease duration; leases are renewed every third of it. A dead node's partitions are
    /// taken over after at most this long.
    pub lease_ttl: Duration,
    /// How long [`Running::shutdown`] waits for in-flight handlers before aborting them (their
    /// events are delivered again after the restart).
    pub shutdown_timeout: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            node_id: Uuid::new_v4(),
            batch_size: 256,
            poll_interval: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Object-safe view of a [`Subscriber`].
trait ErasedSubscriber: Send + Sync {
    fn handle<'a>(&'a self, ctx: &'a EventContext) -> BoxFuture<'a, Result<(), HandlerError>>;
}

impl<S: Subscriber> ErasedSubscriber for S {
    fn handle<'a>(&'a self, ctx: &'a EventContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(Subscriber::handle(self, ctx))
    }
}

#[derive(Clone)]
struct Registered {
    subscription: Subscription,
    subscriber: Arc<dyn ErasedSubscriber>,
}

/// Builds and runs the dispatcher.
///
/// ```
/// # use eventuate_core::{Eventuate, InMemoryEventStore};
/// # async fn demo() -> eventuate_core::Result<()> {
/// let runtime = Eventuate::new(InMemoryEventStore::new())
///     // .subscriber(MyWorkflow::new(..))
///     .start()?;
/// let repository = runtime.repository();
/// // ... send commands ...
/// runtime.shutdown().await
/// # }
/// ```
pub struct Eventuate {
    store: Arc<dyn EventStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    repository: Repository,
    subscribers: Vec<Registered>,
    options: RuntimeOptions,
}

impl fmt::Debug for Eventuate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eventuate")
            .field(
                "subscribers",
                &self
                    .subscribers
                    .iter()
                    .map(|s| &s.subscription.id)
                    .collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish()
    }
}

impl Eventuate {
    /// A runtime over a store that keeps both events and subscription state.
    pub fn new<S: EventStore + SubscriptionStore>(store: S) -> Self {
        let store = Arc::new(store);
        Self::from_parts(store.clone(), store)
    }

    /// A runtime over separately provided event and subscription stores.
    pub fn from_parts(
        store: Arc<dyn EventStore>,
        subscriptions: Arc<dyn SubscriptionStore>,
    ) -> Self {
        Eventuate {
            repository: Repository::from_arc(store.clone()),
            store,
            subscriptions,
            subscribers: Vec::new(),
            options: RuntimeOptions::default(),
        }
    }

    /// Replaces the runtime options.
    pub fn options(mut self, options: RuntimeOptions) -> Self {
        self.options = options;
        self
    }

    /// Replaces the repository handlers use (for example to change its options).
    pub fn with_repository(mut self, repository: Repository) -> Self {
        self.repository = repository;
        self
    }

    /// Registers a subscriber with the subscription it declares.
    pub fn subscriber<S: Subscriber>(self, subscriber: S) -> Self {
        self.subscriber_with(subscriber, |s| s)
    }

    /// Registers a subscriber, adjusting its subscription (partitions, start, retries, ...).
    pub fn subscriber_with<S: Subscriber>(
        mut self,
        subscriber: S,
        configure: impl FnOnce(Subscription) -> Subscription,
    ) -> Self {
        let subscription = configure(subscriber.subscription());
        self.subscribers.push(Registered {
            subscription,
            subscriber: Arc::new(subscriber),
        });
        self
    }

    /// The repository over the runtime's store.
    pub fn repository(&self) -> Repository {
        self.repository.clone()
    }

    /// Validates the subscriptions and starts the dispatcher in the background.
    pub fn start(self) -> Result<Running> {
        let mut ids = BTreeSet::new();
        for registered in &self.subscribers {
            registered.subscription.validate()?;
            if registered.subscription.transactional && !self.subscriptions.supports_transactions()
            {
                return Err(Error::Config(format!(
                    "subscriber `{}` is transactional (it writes a view in the checkpoint's \
                     transaction), but this store has no transactions; run it on the \
                     PostgreSQL store, or register it with `.transactional(false)` and make its \
                     writes idempotent",
                    registered.subscription.id
                )));
            }
            if !ids.insert(registered.subscription.id.clone()) {
                return Err(Error::Config(format!(
                    "two subscribers are registered with the id `{}`; subscriber ids must be unique",
                    registered.subscription.id
                )));
            }
        }
        if self.options.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".into()));
        }
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: self.store,
            subscriptions: self.subscriptions,
            repository: self.repository,
            subscribers: self.subscribers,
            options: self.options,
            stop,
            status: Mutex::new(BTreeMap::new()),
            consumers: tokio::sync::Mutex::new(HashMap::new()),
            aborts: Mutex::new(Vec::new()),
        });
        let manager = tokio::spawn(manage(shared.clone()));
        Ok(Running {
            shared,
            manager: Some(manager),
        })
    }

    /// Runs until `shutdown` completes, then shuts down gracefully.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let running = self.start()?;
        shutdown.await;
        running.shutdown().await
    }
}

struct Shared {
    store: Arc<dyn EventStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    repository: Repository,
    subscribers: Vec<Registered>,
    options: RuntimeOptions,
    stop: watch::Sender<bool>,
    status: Mutex<BTreeMap<(String, u32), Arc<Counters>>>,
    consumers: tokio::sync::Mutex<HashMap<(String, u32), ConsumerHandle>>,
    // Every consumer task ever spawned, reachable without awaiting: dropping a `Running`
    // must stop them even while the manager holds `consumers`.
    aborts: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Shared {
    fn counters(&self, key: &PartitionKey) -> Arc<Counters> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((key.subscriber_id.clone(), key.partition))
            .or_default()
            .clone()
    }
}

struct ConsumerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counters {
    owned: std::sync::atomic::AtomicBool,
    transaction: AtomicU64,
    sequence: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    parked: AtomicU64,
}

/// A running dispatcher. Dropping it without [`Running::shutdown`] stops it abruptly (as a
/// crash would: leases expire, checkpoints stay where they were last saved).
pub struct Running {
    shared: Arc<Shared>,
    manager: Option<JoinHandle<()>>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("node_id", &self.shared.options.node_id)
            .finish_non_exhaustive()
    }
}

/// What one subscriber partition is doing, as seen by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Subscriber id.
    pub subscriber_id: String,
    /// Partition index.
    pub partition: u32,
    /// Whether this node consumes it now.
    pub owned: bool,
    /// The last position this node handled in it.
    pub position: Position,
    /// Events after `position` in the partition's stream (events behind the head).
    pub lag: u64,
    /// Events delivered successfully by this node.
    pub delivered: u64,
    /// Failed attempts that were retried.
    pub retried: u64,
    /// Events parked.
    pub parked: u64,
}

impl Running {
    /// This node's id.
    pub fn node_id(&self) -> Uuid {
        self.shared.options.node_id
    }

    /// The repository over the runtime's store.
    pub fn repository(&self) -> Repository {
        self.shared.repository.clone()
    }

    /// Per subscriber partition: position, lag, delivered, retried and parked counts.
    pub async fn status(&self) -> Result<Vec<PartitionStatus>> {
        let entries: Vec<_> = self
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for ((subscriber_id, partition), c) in entries {
            let position = Position::new(
                c.transaction.load(Ordering::Acquire),
                c.sequence.load(Ordering::Acquire),
            );
            let registered = self
                .shared
                .subscribers
                .iter()
                .find(|r| r.subscription.id == subscriber_id);
            let lag = match registered {
                Some(r) => {
                    let filter = filter_for(&r.subscription, partition);
                    self.shared.store.count_after(position, &filter).await?
                }
                None => 0,
            };
            out.push(PartitionStatus {
                subscriber_id,
                partition,
                owned: c.owned.load(Ordering::Acquire),
                position,
                lag,
                delivered: c.delivered.load(Ordering::Relaxed),
                retried: c.retried.load(Ordering::Relaxed),
                parked: c.parked.load(Ordering::Relaxed),
            });
        }
        Ok(out)
    }

    /// Waits until every partition this node owns has no lag and every partition of every
    /// subscriber is owned by some node (this one or another), or the timeout passes (then
    /// [`Error::Config`]).
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            let mut done = true;
            for registered in &self.shared.subscribers {
                let sub = &registered.subscription;
                let leases = self
                    .shared
                    .subscriptions
                    .leases(&sub.id, sub.partitions)
                    .await?;
                for lease in leases {
                    done &= match lease.owner {
                        None => false,
                        // Ours: its consumer must be running and have no lag.
                        Some(owner) if owner == self.node_id() => status.iter().any(|s| {
                            s.subscriber_id == sub.id
                                && s.partition == lease.partition
                                && s.owned
                                && s.lag == 0
                        }),
                        Some(_) => true,
                    };
                }
            }
            if done {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Config(format!(
                    "subscribers did not catch up within {timeout:?}: {status:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A subscriber's parked events.
    pub async fn parked(&self, subscriber_id: &str) -> Result<Vec<ParkedEvent>> {
        self.shared.subscriptions.parked(subscriber_id).await
    }

    /// Requests a replay of a subscriber's parked events (all, or one entity's).
    pub async fn replay(&self, subscriber_id: &str, entity: Option<(&str, &str)>) -> Result<u64> {
        self.shared
            .subscriptions
            .request_replay(subscriber_id, entity)
            .await
    }

    /// Stops gracefully: in-flight handlers finish, checkpoints are saved, leases released.
    pub async fn shutdown(mut self) -> Result<()> {
        self.shared.stop.send_replace(true);
        if let Some(manager) = self.manager.take() {
            manager
                .await
                .map_err(|e| Error::backend("dispatcher manager task failed", e))?;
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(manager) = self.manager.take() {
            manager.abort();
            // Abort consumers too: dropping without shutdown is a crash.
            for abort in self
                .shared
                .aborts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                abort.abort();
            }
        }
    }
}

fn filter_for(subscription: &Subscription, partition: u32) -> StreamFilter {
    StreamFilter {
        entity_types: subscription.entity_types.clone(),
        partition: (subscription.partitions > 1).then_some(Partition {
            index: partition,
            count: subscription.partitions,
        }),
    }
}

/// The lease manager: heartbeats, renews, acquires a fair share, releases extras.
async fn manage(shared: Arc<Shared>) {
    let node = shared.options.node_id;
    let ttl = shared.options.lease_ttl;
    let tick = (ttl / 3).max(Duration::from_millis(10));
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        if let Err(e) = balance(&shared).await {
            tracing::warn!(%node, error = %e, "lease maintenance failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => {}
        }
    }
    let mut consumers = shared.consumers.lock().await;
    for handle in consumers.values() {
        handle.stop.send_replace(true);
    }
    let deadline = tokio::time::Instant::now() + shared.options.shutdown_timeout;
    for (key, mut handle) in consumers.drain() {
        if tokio::time::timeout_at(deadline, &mut handle.task)
            .await
            .is_err()
        {
            tracing::warn!(subscriber = %key.0, partition = key.1, "handler still running at the shutdown timeout; aborting it");
            handle.task.abort();
        }
    }
    if let Err(e) = shared.subscriptions.leave(node).await {
        tracing::warn!(%node, error = %e, "could not deregister node");
    }
}

async fn balance(shared: &Arc<Shared>) -> Result<()> {
    let node = shared.options.node_id;
    let ttl = shared.options.lease_ttl;
    let live = shared.subscriptions.heartbeat(node, ttl).await?;
    let nodes = live.len().max(1) as u32;
    let mut consumers = shared.consumers.lock().await;
    // Forget consumers that ended by themselves (lease lost, fatal error).
    consumers.retain(|_, h| !h.task.is_finished());
    for registered in &shared.subscribers {
        let sub = &registered.subscription;
        let fair = sub.partitions.div_ceil(nodes);
        let mut owned: Vec<u32> = consumers
            .keys()
            .filter(|(id, _)| *id == sub.id)
            .map(|(_, p)| *p)
            .collect();
        owned.sort_unstable();
        for partition in owned.clone() {
            let key = partition_key(sub, partition);
            if !shared.subscriptions.renew(&key, node, ttl).await? {
                tracing::warn!(subscriber = %sub.id, partition, "lease lost; stopping consumer");
                if let Some(h) = consumers.remove(&(sub.id.clone(), partition)) {
                    h.stop.send_replace(true);
                }
                owned.retain(|p| *p != partition);
            }
        }
        if owned.len() as u32 > fair {
            // Give the highest partitions back so that other nodes can take their share.
            for partition in owned.iter().rev().take(owned.len() - fair as usize) {
                if let Some(h) = consumers.remove(&(sub.id.clone(), *partition)) {
                    h.stop.send_replace(true);
                }
            }
            continue;
        }
        let mut count = owned.len() as u32;
        if count >= fair {
            continue;
        }
        let leases = shared.subscriptions.leases(&sub.id, sub.partitions).await?;
        let start = match sub.start {
            StartFrom::Beginning => Position::START,
            StartFrom::Now => shared.store.head().await?,
        };
        for lease in leases {
            if count >= fair {
                break;
            }
            if lease.owner.is_some() || consumers.contains_key(&(sub.id.clone(), lease.partition)) {
                continue;
            }
            let key = partition_key(sub, lease.partition);
            if let Some(claim) = shared
                .subscriptions
                .try_acquire(&key, node, ttl, start)
                .await?
            {
                let (stop, stop_rx) = watch::channel(false);
                let consumer = Consumer::new(shared.clone(), registered.clone(), key, claim);
                let task = tokio::spawn(consumer.run(stop_rx));
                {
                    let mut aborts = shared.aborts.lock().unwrap_or_else(|p| p.into_inner());
                    aborts.retain(|a| !a.is_finished());
                    aborts.push(task.abort_handle());
                }
                consumers.insert(
                    (sub.id.clone(), lease.partition),
                    ConsumerHandle { stop, task },
                );
                count += 1;
            }
        }
    }
    Ok(())
}

fn partition_key(sub: &Subscription, partition: u32) -> PartitionKey {
    PartitionKey {
        subscriber_id: sub.id.clone(),
        partition,
        partitions: sub.partitions,
    }
}

/// Why a delivery did not complete.
enum Interrupt {
    /// Stop requested while waiting to retry: leave the checkpoint where it is.
    Stopped,
    /// The store refused a fenced write: another node holds the partition now.
    LeaseLost,
    /// The store failed; retry the batch after a pause.
    Store(Error),
}

impl From<Error> for Interrupt {
    fn from(e: Error) -> Self {
        match e {
            Error::LeaseLost { .. } => Interrupt::LeaseLost,
            other => Interrupt::Store(other),
        }
    }
}

struct Consumer {
    shared: Arc<Shared>,
    registered: Registered,
    key: PartitionKey,
    node: Uuid,
    filter: StreamFilter,
    checkpoint: Position,
    saved: Position,
    attempt: Option<(Position, u32)>,
    careful_left: usize,
    blocked: BTreeSet<(String, String)>,
    counters: Arc<Counters>,
}

impl Consumer {
    fn new(shared: Arc<Shared>, registered: Registered, key: PartitionKey, claim: Claim) -> Self {
        let counters = shared.counters(&key);
        let careful_left = if claim.recovered {
            shared.options.batch_size
        } else {
            0
        };
        Consumer {
            node: shared.options.node_id,
            filter: filter_for(&registered.subscription, key.partition),
            shared,
            registered,
            key,
            checkpoint: claim.checkpoint,
            saved: claim.checkpoint,
            attempt: claim.attempt,
            careful_left,
            blocked: BTreeSet::new(),
            counters,
        }
    }

    fn publish_position(&self) {
        self.counters
            .transaction
            .store(self.checkpoint.transaction, Ordering::Release);
        self.counters
            .sequence
            .store(self.checkpoint.sequence, Ordering::Release);
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.counters.owned.store(true, Ordering::Release);
        self.publish_position();
        let span = tracing::info_span!("consumer", subscriber = %self.key.subscriber_id, partition = self.key.partition);
        let outcome = self.consume(&mut stop).instrument(span).await;
        self.counters.owned.store(false, Ordering::Release);
        match outcome {
            Interrupt::LeaseLost => {
                tracing::warn!(subscriber = %self.key.subscriber_id, partition = self.key.partition, "lease lost");
            }
            _ => {
                if let Err(e) = self.save().await {
                    tracing::warn!(subscriber = %self.key.subscriber_id, error = %e, "checkpoint not saved at stop");
                    return;
                }
                let _ = self
                    .shared
                    .subscriptions
                    .release(&self.key, self.node)
                    .await;
            }
        }
    }

    async fn save(&mut self) -> Result<()> {
        if self.checkpoint > self.saved {
            self.shared
                .subscriptions
                .save_checkpoint(&self.key, self.node, self.checkpoint)
                .await?;
            self.saved = self.checkpoint;
        }
        Ok(())
    }

    async fn consume(&mut self, stop: &mut watch::Receiver<bool>) -> Interrupt {
        let mut wakeups = self.shared.subscriptions.wakeups();
        let mut failures = 0u32;
        // Entities with parked events: later events of theirs are parked behind them.
        let mut next_replay_check = Instant::now() + self.shared.options.poll_interval;
        if let Err(e) = self.replay_parked(stop).await {
            return e;
        }
        loop {
            if *stop.borrow() {
                return Interrupt::Stopped;
            }
            wakeups.borrow_and_update();
            let step = async {
                if Instant::now() >= next_replay_check {
                    if self
                        .shared
                        .subscriptions
                        .replay_requested(&self.key)
                        .await?
                    {
                        self.replay_parked(stop).await?;
                    }
                    next_replay_check = Instant::now() + self.shared.options.poll_interval;
                }
                let batch = self
                    .shared
                    .store
                    .read_stream(
                        self.checkpoint,
                        &self.filter,
                        self.shared.options.batch_size,
                    )
                    .await?;
                // A short batch reached the head: wait instead of reading again. Safe, since
                // the wake-up signal was borrowed before the read, so an append that landed
                // meanwhile still wakes us at once.
                let at_head = batch.len() < self.shared.options.batch_size;
                for event in batch {
                    if *stop.borrow() {
                        break;
                    }
                    self.deliver(event, stop).await?;
                }
                self.save().await?;
                Ok::<bool, Interrupt>(at_head)
            };
            match step.await {
                Ok(false) => failures = 0,
                Ok(true) => {
                    failures = 0;
                    // A store whose wake-up sender is gone only polls (instead of spinning on
                    // a `changed()` that fails at once).
                    let woken = async {
                        if wakeups.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep(self.shared.options.poll_interval) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(Interrupt::Store(e)) => {
                    failures += 1;
                    let pause = Duration::from_millis(50)
                        .saturating_mul(2u32.saturating_pow(failures.min(8)))
                        .min(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?pause, "store error; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(other) => return other,
            }
        }
    }

    async fn deliver(
        &mut self,
        event: EventEnvelope,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), Interrupt> {
        let position = event.position;
        let subscription = &self.registered.subscription;
        let (retry, transactional) = (subscription.retry, subscription.transactional);
        if !subscription.handles(&event.event_type) {
            self.advance(position);
            return Ok(());
        }
        if !self.blocked.is_empty()
            && self
                .blocked
                .contains(&(event.entity_type.clone(), event.entity_id.clone()))
        {
            let reason = "waiting behind an earlier parked event of the same entity".to_owned();
            self.park(event, 0, reason).await?;
            self.advance(position);
            return Ok(());
        }
        let careful = self.careful_left > 0;
        self.careful_left = self.careful_left.saturating_sub(1);
        let mut attempts = match self.attempt {
            Some((at, n)) if at == position => n,
            _ => 0,
        };
        let mut last_error = format!("the consumer stopped {attempts} times while handling it");
        loop {
            if attempts >= retry.max_attempts {
                self.block(&event);
                self.park(event, attempts, last_error).await?;
                self.advance(position);
                break;
            }
            attempts += 1;
            if careful || attempts > 1 {
                self.shared
                    .subscriptions
                    .record_attempt(&self.key, self.node, position, attempts)
                    .await?;
                self.attempt = Some((position, attempts));
            }
            match self.run_handler(&event).await? {
                Ok(()) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    self.advance(position);
                    if transactional {
                        // The handler's transaction committed the checkpoint.
                        self.saved = self.saved.max(position);
                        self.attempt = None;
                    }
                    if careful || attempts > 1 {
                        self.save().await?;
                        self.attempt = None;
                    }
                    break;
                }
                Err(Failure {
                    error,
                    permanent: true,
                }) => {
                    self.block(&event);
                    self.park(event, attempts, error.to_string()).await?;
                    self.advance(position);
                    break;
                }
                Err(Failure { error: e, .. }) => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    last_error = e.to_string();
                    tracing::warn!(position = %position, attempt = attempts, error = %e, "handler failed");
                    if attempts >= retry.max_attempts {
                        continue;
                    }
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(retry.backoff(attempts)) => {}
                        _ = stop.changed() => {}
                    }
                    if *stop.borrow() {
                        return Err(Interrupt::Stopped);
                    }
                }
            }
        }
        Ok(())
    }

    fn block(&mut self, event: &EventEnvelope) {
        self.blocked
            .insert((event.entity_type.clone(), event.entity_id.clone()));
    }

    fn advance(&mut self, position: Position) {
        self.checkpoint = self.checkpoint.max(position);
        self.publish_position();
    }

    async fn park(
        &mut self,
        event: EventEnvelope,
        attempts: u32,
        error: String,
    ) -> Result<(), Interrupt> {
        tracing::error!(position = %event.position, entity_type = %event.entity_type, entity_id = %event.entity_id, attempts, %error, "parking event");
        let parked = ParkedEvent {
            subscriber_id: self.key.subscriber_id.clone(),
            partition: self.key.partition,
            event,
            attempts,
            error,
            parked_at: SystemTime::now(),
            replay_requested: false,
        };
        self.shared
            .subscriptions
            .park(&self.key, self.node, &parked)
            .await?;
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Runs the handler once. The outer error is the runtime's own trouble (no transaction
    /// could be begun, the lease is gone): retried by the consume loop without counting an
    /// attempt. The inner one is the handler's failure (an error, a panic, or a view
    /// transaction that would not commit): it counts as an attempt.
    async fn run_handler(&self, event: &EventEnvelope) -> Result<Result<(), Failure>, Interrupt> {
        let subscription = &self.registered.subscription;
        let mut ctx = EventContext::new(
            self.shared.repository.clone(),
            &subscription.id,
            event.clone(),
        );
        if subscription.transactional {
            let tx = self
                .shared
                .subscriptions
                .begin(&self.key, self.node)
                .await?;
            ctx = ctx.with_transaction(tx);
        }
        let span = tracing::info_span!(
            "deliver",
            subscriber = %subscription.id,
            position = %event.position,
            entity_type = %event.entity_type,
            entity_id = %event.entity_id,
            event_type = %event.event_type,
        );
        let outcome = AssertUnwindSafe(self.registered.subscriber.handle(&ctx))
            .catch_unwind()
            .instrument(span)
            .await;
        let failure = |source: crate::BoxError, permanent: bool| Failure {
            error: Error::Handler {
                subscriber: subscription.id.clone(),
                entity_type: event.entity_type.clone(),
                entity_id: event.entity_id.clone(),
                event_type: event.event_type.clone(),
                position: event.position,
                source,
            },
            permanent,
        };
        Ok(match outcome {
            Ok(Ok(())) => match ctx.take_transaction() {
                None => Ok(()),
                Some(tx) => match tx.commit(event.position).await {
                    Ok(()) => Ok(()),
                    Err(Error::LeaseLost { .. }) => return Err(Interrupt::LeaseLost),
                    Err(e) => Err(failure(Box::new(e), false)),
                },
            },
            Ok(Err(e)) => {
                let permanent = e.is_permanent();
                Err(failure(e.into_inner(), permanent))
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(failure(
                    format!("handler panicked: {message}").into(),
                    false,
                ))
            }
        })
    }

    /// Replays parked events of this partition whose replay was requested, entity by entity
    /// in stream order; refreshes the set of blocked entities.
    async fn replay_parked(&mut self, stop: &watch::Receiver<bool>) -> Result<(), Interrupt> {
        let parked: Vec<ParkedEvent> = self
            .shared
            .subscriptions
            .parked(&self.key.subscriber_id)
            .await?
            .into_iter()
            .filter(|p| p.partition == self.key.partition)
            .collect();
        let mut by_entity: BTreeMap<(String, String), Vec<ParkedEvent>> = BTreeMap::new();
        for p in parked {
            by_entity
                .entry((p.event.entity_type.clone(), p.event.entity_id.clone()))
                .or_default()
                .push(p);
        }
        self.blocked = by_entity.keys().cloned().collect();
        for (entity, mut events) in by_entity {
            if !events.iter().any(|p| p.replay_requested) || *stop.borrow() {
                continue;
            }
            events.sort_by_key(|p| p.event.position);
            let mut cleared = true;
            for p in events {
                let position = p.event.position;
                match self.run_handler(&p.event).await? {
                    Ok(()) => {
                        self.shared
                            .subscriptions
                            .replayed(&self.key, self.node, position, None)
                            .await?;
                        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Failure { error, .. }) => {
                        let failure = Some((p.attempts + 1, error.to_string()));
                        self.shared
                            .subscriptions
                            .replayed(&self.key, self.node, position, failure)
                            .await?;
                        cleared = false;
                        break;
                    }
                }
            }
            if cleared {
                self.blocked.remove(&entity);
            }
        }
        Ok(())
    }
}

/// A handler's failed attempt.
struct Failure {
    /// [`Error::Handler`], naming subscriber, event and position.
    error: Error,
    /// Retrying cannot help: park at once.
    permanent: bool,
}
