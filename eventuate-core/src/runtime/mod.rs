//! The dispatcher: runs subscribers against a store that implements both [`EventStore`] and
//! [`SubscriptionStore`], with the same mechanism for the in-memory and the PostgreSQL store.
//!
//! A runtime is a member of the cluster of runtimes sharing the store (see
//! [`crate::subscription_store`] for the protocol). Its lease manager (`manager`) heartbeats,
//! checks each subscriber's stored shape, and takes a fair share of each subscriber's
//! partitions among the members that run it; each held partition runs one consumer task
//! (`consumer`), which reads the global stream after its checkpoint in batches (filtered by
//! entity type and partition; larger while far behind, see `page`), delivers each event in order, parks what cannot be delivered,
//! and moves the checkpoint, every write fenced by its lease.
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
//! - **One consumer per partition; partitions spread and taken over.** Leases belong to the
//!   runtime's incarnation and carry an epoch that fences every state write; a stopping
//!   consumer keeps its lease renewed until it has exited; no handler starts on a lease not
//!   confirmed within the TTL. Each member takes `ceil(partitions / members running the
//!   subscriber)`, and any member takes a partition unowned for longer than the TTL. Proved by
//!   `tests/tests/simulation.rs` (seeded multi-node scenarios), `dispatcher.rs`
//!   `d_two_runtimes_compete_then_one_is_dropped` and `f_sixteen_writers_three_partitions`,
//!   `protocol.rs` `a_partition_given_back_is_never_consumed_twice_at_once`.
//! - **Shapes.** A subscriber's partition count and types are stored; a node that disagrees
//!   does not consume silently ([`ShapeView::Mismatch`]); a change of types is adopted at start,
//!   a change of partition count is [`Running::reshape`]. Proved by `simulation.rs` and
//!   `protocol.rs` `changing_the_partition_count_is_explicit_and_loses_nothing`.
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
//!   `an_event_that_keeps_crashing_the_process_gets_parked` and, for a process restarted
//!   under the same node id, `a_crash_loop_under_a_stable_node_id_also_gets_the_event_parked`.
//! - **Bad rows.** A stored row that does not decode is parked for the subscribers that want
//!   it, and everything else flows. Proved by `protocol.rs`
//!   `a_row_with_undecodable_metadata_is_parked_and_the_rest_flows`.
//! - **Exactly-once views.** A transactional subscriber writes through
//!   [`EventContext::transaction`] (on PostgreSQL, `PgEventContextExt::pg_transaction`); the
//!   runtime commits that transaction together with the
//!   checkpoint. Commands sent with [`EventContext::update`] are deduplicated by the
//!   triggering event. Proved by `dispatcher.rs` (a) to (f), which check the view for
//!   duplicates after every fault, and `runtime_memory.rs`
//!   `a_redelivered_event_does_not_apply_its_command_twice`.
//! - **Graceful shutdown.** In-flight handlers finish (for at most `shutdown_timeout`, their
//!   leases renewed meanwhile), checkpoints are saved, leases released. Proved by `runtime_memory.rs`
//!   `shutdown_lets_an_in_flight_handler_finish_and_saves_its_checkpoint` and
//!   `shutdown_does_not_wait_forever_for_a_hung_handler`.

mod consumer;
mod manager;
mod page;
pub(crate) mod renames;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::store::{EventStore, Partition, StreamFilter};
use crate::subscriber::{BatchOutcome, EventContext, HandlerError, Subscriber, Subscription};
pub use crate::subscription_store::{
    Claim, Lease, LeaseInfo, Member, ParkedEvent, PartitionKey, Shape, StoredShape,
    SubscriberState, SubscriptionStore,
};
use crate::{Error, Position, Repository, Result};

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// This node's id: stable across restarts if you like (a pod's name as a UUID), or fresh
    /// (the default). Leases are held by the runtime's incarnation, which is fresh for every
    /// start, so a restart under the same node id is still recognised as a new holder.
    pub node_id: Uuid,
    /// Events read per batch near the head of the stream.
    pub batch_size: usize,
    /// The most events read per batch while a consumer is far behind: after each full batch
    /// the next is four times larger, up to this and to about 8 MiB of events; a short batch
    /// (the head) brings it back to `batch_size`. Set it to `batch_size` for fixed batches.
    pub max_batch_size: usize,
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
            max_batch_size: 4096,
            poll_interval: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Object-safe view of a [`Subscriber`].
trait ErasedSubscriber: Send + Sync {
    fn handle<'a>(&'a self, ctx: &'a EventContext) -> BoxFuture<'a, Result<(), HandlerError>>;
    fn handle_batch<'a>(&'a self, contexts: &'a [EventContext]) -> BoxFuture<'a, BatchOutcome>;
}

impl<S: Subscriber> ErasedSubscriber for S {
    fn handle<'a>(&'a self, ctx: &'a EventContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(Subscriber::handle(self, ctx))
    }
    fn handle_batch<'a>(&'a self, contexts: &'a [EventContext]) -> BoxFuture<'a, BatchOutcome> {
        Box::pin(Subscriber::handle_batch(self, contexts))
    }
}

#[derive(Clone)]
struct Registered {
    subscription: Subscription,
    shape: Shape,
    subscriber: Arc<dyn ErasedSubscriber>,
    /// Stored older entity type names this subscription reads -> the current name handlers
    /// see (see `renames`).
    current_names: renames::CurrentNames,
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
    known_entity_types: BTreeSet<String>,
    strict_entity_types: bool,
    aliases: renames::EntityTypeAliases,
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
            known_entity_types: BTreeSet::new(),
            strict_entity_types: false,
            aliases: renames::EntityTypeAliases::default(),
        }
    }

    /// Declares an aggregate whose entity type subscribers may subscribe to before any of its
    /// events is stored (see [`Eventuate::known_entity_type`]), with the older names of a
    /// renamed aggregate ([`crate::Aggregate::ENTITY_TYPE_ALIASES`], see
    /// [`Eventuate::entity_type_aliases`]).
    pub fn aggregate<A: crate::Aggregate>(self) -> Self {
        self.known_entity_type(A::ENTITY_TYPE)
            .entity_type_aliases(A::ENTITY_TYPE, A::ENTITY_TYPE_ALIASES.iter().copied())
    }

    /// Declares the older names of a renamed entity type (what [`Eventuate::aggregate`] does
    /// for an aggregate's [`crate::Aggregate::ENTITY_TYPE_ALIASES`]; call it directly for a
    /// type another service writes). A subscription to `entity_type` then also reads the
    /// events stored under the older names (its stored shape gains them: adopted at start
    /// like any change of handled types, its checkpoint kept), and
    /// [`EventContext::entity_type`] of such an event is `entity_type`, while
    /// `ctx.event().entity_type` stays the name it is stored under. A subscription that lists
    /// an older name itself reads it as before, under that name. [`Eventuate::start`] refuses
    /// a name declared as an alias of two types, or both as an alias and as an aggregate's
    /// current name.
    pub fn entity_type_aliases<I, S>(mut self, entity_type: impl Into<String>, aliases: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let aliases: Vec<String> = aliases.into_iter().map(Into::into).collect();
        self.known_entity_types.extend(aliases.iter().cloned());
        self.aliases.add(entity_type.into(), aliases);
        self
    }

    /// Declares an entity type as known, for subscriptions to a type whose events another
    /// service writes. At start, the runtime checks every subscribed entity type: one that no
    /// stored event has and that is not declared here (or by [`Eventuate::aggregate`]) is
    /// probably a typo (`subscribe = "Ordr"`), whose handler would never run. It is logged as
    /// a warning naming the known types, and reported by [`Running::entity_type_warnings`] and
    /// in [`PartitionStatus::unknown_entity_types`]; with
    /// [`Eventuate::strict_entity_types`] it is an error.
    pub fn known_entity_type(mut self, entity_type: impl Into<String>) -> Self {
        self.known_entity_types.insert(entity_type.into());
        self
    }

    /// Makes a subscription to an unknown entity type (see [`Eventuate::known_entity_type`])
    /// an error instead of a warning: [`Running::status`] and [`Running::wait_caught_up`]
    /// return [`Error::Config`] naming it. For tests, and for deployments whose stores are
    /// never empty.
    pub fn strict_entity_types(mut self) -> Self {
        self.strict_entity_types = true;
        self
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
            shape: Shape::new(
                subscription.partitions,
                &subscription.entity_types,
                &subscription.event_types,
            ),
            subscription,
            subscriber: Arc::new(subscriber),
            current_names: renames::CurrentNames::new(),
        });
        self
    }

    /// The repository over the runtime's store.
    pub fn repository(&self) -> Repository {
        self.repository.clone()
    }

    /// Validates the subscriptions and starts the dispatcher in the background.
    pub fn start(mut self) -> Result<Running> {
        self.aliases.validate()?;
        // Widened here, not at registration: aggregates may be declared after subscribers.
        for registered in &mut self.subscribers {
            registered.current_names = self.aliases.widen(&mut registered.subscription);
            registered.shape = Shape::new(
                registered.subscription.partitions,
                &registered.subscription.entity_types,
                &registered.subscription.event_types,
            );
        }
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
        if self.options.lease_ttl < Duration::from_millis(30) {
            return Err(Error::Config(
                "lease_ttl must be at least 30 ms (leases are renewed every third of it)".into(),
            ));
        }
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: self.store,
            subscriptions: self.subscriptions,
            repository: self.repository,
            subscribers: self.subscribers,
            options: self.options,
            incarnation: Uuid::new_v4(),
            stop,
            status: Mutex::new(BTreeMap::new()),
            views: Mutex::new(HashMap::new()),
            consumers: tokio::sync::Mutex::new(HashMap::new()),
            aborts: Mutex::new(Vec::new()),
            known_entity_types: self.known_entity_types,
            strict_entity_types: self.strict_entity_types,
            entity_type_check: tokio::sync::Mutex::new(None),
        });
        // Warn early about subscriptions to unknown entity types (a typo never delivers).
        let check = shared.clone();
        shared.track(&tokio::spawn(async move {
            if let Err(e) = check.entity_type_warnings().await {
                tracing::debug!(error = %e, "entity type check failed; retried by status()");
            }
        }));
        let manager = tokio::spawn(manager::manage(shared.clone()));
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

/// What this runtime knows of a subscriber's stored shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeView {
    /// Not checked yet (the runtime has just started).
    Unknown,
    /// The stored shape is this runtime's, at this generation: it consumes.
    Agreed {
        /// The stored generation.
        generation: u64,
    },
    /// The shape changed and the partitions wait for the old shape's consumers to stop.
    Reshaping,
    /// Another shape is stored: this runtime does not consume the subscriber.
    Mismatch {
        /// The stored shape.
        stored: Shape,
    },
}

struct Shared {
    store: Arc<dyn EventStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    repository: Repository,
    subscribers: Vec<Registered>,
    options: RuntimeOptions,
    incarnation: Uuid,
    stop: watch::Sender<bool>,
    status: Mutex<BTreeMap<(String, u32), Arc<Counters>>>,
    views: Mutex<HashMap<String, ShapeView>>,
    consumers: tokio::sync::Mutex<HashMap<(String, u32), ConsumerHandle>>,
    // Every consumer task ever spawned, reachable without awaiting: dropping a `Running`
    // must stop them even while the manager holds `consumers`.
    aborts: Mutex<Vec<tokio::task::AbortHandle>>,
    known_entity_types: BTreeSet<String>,
    strict_entity_types: bool,
    // Subscribed entity types found unknown by the last check (`None`: not checked yet).
    entity_type_check: tokio::sync::Mutex<Option<Vec<UnknownEntityType>>>,
}

impl Shared {
    /// Subscribed entity types that no stored event has and no registration declares. Once
    /// every type is known the answer is kept; until then each call looks again (one cheap
    /// query), and each unknown type is logged once.
    async fn entity_type_warnings(&self) -> Result<Vec<UnknownEntityType>> {
        let mut cached = self.entity_type_check.lock().await;
        if cached.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let mut known: BTreeSet<String> = self.store.entity_types().await?.into_iter().collect();
        known.extend(self.known_entity_types.iter().cloned());
        let mut unknown = Vec::new();
        for registered in &self.subscribers {
            for entity_type in &registered.subscription.entity_types {
                if known.contains(entity_type) {
                    continue;
                }
                let warning = UnknownEntityType {
                    subscriber_id: registered.subscription.id.clone(),
                    entity_type: entity_type.clone(),
                    known: known.iter().cloned().collect(),
                };
                let logged = cached.as_ref().is_some_and(|before| {
                    before.iter().any(|w| {
                        w.subscriber_id == warning.subscriber_id
                            && w.entity_type == warning.entity_type
                    })
                });
                if !logged {
                    tracing::warn!(
                        subscriber = %warning.subscriber_id,
                        entity_type = %warning.entity_type,
                        known = ?warning.known,
                        "{warning}"
                    );
                }
                unknown.push(warning);
            }
        }
        *cached = Some(unknown.clone());
        Ok(unknown)
    }

    /// In strict mode, the unknown entity types as an error.
    async fn strict_check(&self) -> Result<()> {
        if !self.strict_entity_types {
            return Ok(());
        }
        match self.entity_type_warnings().await?.first() {
            None => Ok(()),
            Some(first) => Err(Error::Config(format!("{first} (strict entity types)"))),
        }
    }

    fn counters(&self, key: &PartitionKey) -> Arc<Counters> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((key.subscriber_id.clone(), key.partition))
            .or_default()
            .clone()
    }

    fn view(&self, id: &str) -> ShapeView {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or(ShapeView::Unknown)
    }

    /// Records the view; `true` if it changed.
    fn set_view(&self, id: &str, view: ShapeView) -> bool {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.insert(id.to_owned(), view.clone()) != Some(view)
    }

    /// `true` the first time it is asked for a subscriber.
    fn first_declaration(&self, id: &str) -> bool {
        !self
            .views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// This runtime as a member: it runs every registered subscriber except those stored with
    /// another shape (it will not consume them, so it must not count for their fair shares).
    fn member(&self) -> Member {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        Member {
            incarnation: self.incarnation,
            node: self.options.node_id,
            subscribers: self
                .subscribers
                .iter()
                .map(|r| &r.subscription.id)
                .filter(|id| !matches!(views.get(*id), Some(ShapeView::Mismatch { .. })))
                .cloned()
                .collect(),
        }
    }

    fn track(&self, task: &JoinHandle<()>) {
        let mut aborts = self.aborts.lock().unwrap_or_else(|p| p.into_inner());
        aborts.retain(|a| !a.is_finished());
        aborts.push(task.abort_handle());
    }
}

struct ConsumerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    lease: Lease,
    validity: Arc<consumer::Validity>,
    /// Asked to stop: still renewed until it has exited, and never replaced before.
    stopping: bool,
}

impl ConsumerHandle {
    fn stop(&mut self) {
        self.stopping = true;
        self.stop.send_replace(true);
    }
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
            .field("incarnation", &self.shared.incarnation)
            .finish_non_exhaustive()
    }
}

/// A subscription to an entity type that no stored event has and that no registration
/// declares ([`Eventuate::known_entity_type`]): probably a typo, whose handler never runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownEntityType {
    /// The subscriber.
    pub subscriber_id: String,
    /// The entity type it subscribes to.
    pub entity_type: String,
    /// The entity types known when it was checked (stored and declared).
    pub known: Vec<String>,
}

impl fmt::Display for UnknownEntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subscriber `{}` subscribes to entity type `{}`, which no stored event has and no \
             aggregate registered with the runtime declares (known: [{}]); a misspelt type \
             never delivers anything. Fix the name, or declare the type with \
             Eventuate::aggregate::<A>() or Eventuate::known_entity_type(\"{}\")",
            self.subscriber_id,
            self.entity_type,
            self.known.join(", "),
            self.entity_type
        )
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
    /// The node holding its lease, if any (this one or another).
    pub owner: Option<Uuid>,
    /// How long nobody has held it; a partition unowned for longer than the lease TTL is a
    /// gap that the liveness backstop closes.
    pub unowned_for: Option<Duration>,
    /// Where the subscriber's stored shape stands for this node.
    pub shape: ShapeView,
    /// The last position handled in it (this node's own progress while it consumes it, the
    /// stored checkpoint otherwise). After a read that looked up to the store's horizon it is
    /// `(t, i64::MAX)`: every transaction before `t` is behind it (see
    /// [`crate::StreamBatch::scanned_to`]).
    pub position: Position,
    /// Events after `position` in the partition's stream (events behind the head), counted up
    /// to [`LAG_COUNT_LIMIT`]: a status costs the same however far behind a partition is.
    pub lag: u64,
    /// Events delivered successfully by this node.
    pub delivered: u64,
    /// Deliveries tried again: failed attempts, and retries while something the handler needs
    /// was unavailable ([`crate::HandlerError::unavailable`], not counted as attempts).
    pub retried: u64,
    /// Events parked.
    pub parked: u64,
    /// The subscriber's entity types that no stored event has and no registration declares
    /// (see [`Eventuate::known_entity_type`]); empty when all are known.
    pub unknown_entity_types: Vec<String>,
}

/// What [`Running::wait_caught_up`] found once every partition had caught up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaughtUp {
    /// Subscribers with parked events, and how many each has (only those with some): the
    /// checkpoint moved past these events without their handler succeeding. See
    /// [`Running::parked`] and [`Running::replay`].
    pub parked: Vec<(String, u64)>,
}

impl CaughtUp {
    /// `Ok` when no event is parked, else [`Error::Parked`] naming the first subscriber with
    /// parked events.
    pub fn nothing_parked(self) -> Result<()> {
        match self.parked.into_iter().next() {
            None => Ok(()),
            Some((subscriber, count)) => Err(Error::Parked { subscriber, count }),
        }
    }
}

/// The largest lag [`Running::status`] counts; a partition further behind reports this.
pub const LAG_COUNT_LIMIT: u64 = 1_000;

fn mismatch_message(id: &str, stored: &Shape, ours: &Shape) -> String {
    format!(
        "subscriber `{id}` is stored with another shape ({stored}) than this process registers \
         ({ours}); this process does not consume it. Changing the partition count moves \
         checkpoints, so it is explicit: call `Running::reshape(\"{id}\")` from the process \
         with the new shape (the old shape's consumers stop, new partitions start from the \
         oldest old checkpoint, parked events follow their entity)"
    )
}

impl Running {
    /// This node's id.
    pub fn node_id(&self) -> Uuid {
        self.shared.options.node_id
    }

    /// This start's incarnation id: what holds this runtime's leases.
    pub fn incarnation(&self) -> Uuid {
        self.shared.incarnation
    }

    /// The repository over the runtime's store.
    pub fn repository(&self) -> Repository {
        self.shared.repository.clone()
    }

    /// Every partition of every registered subscriber: who holds it, where it stands, its lag,
    /// and this node's delivered, retried and parked counts. Partitions nobody holds are
    /// listed too (with [`PartitionStatus::unowned_for`]).
    pub async fn status(&self) -> Result<Vec<PartitionStatus>> {
        self.shared.strict_check().await?;
        let warnings = self.shared.entity_type_warnings().await?;
        let mut out = Vec::new();
        for registered in &self.shared.subscribers {
            let sub = &registered.subscription;
            let unknown_entity_types: Vec<String> = warnings
                .iter()
                .filter(|w| w.subscriber_id == sub.id)
                .map(|w| w.entity_type.clone())
                .collect();
            let state = self.shared.subscriptions.subscriber(&sub.id).await?;
            let shape = self.shared.view(&sub.id);
            for partition in 0..sub.partitions {
                let stored = state.partitions.iter().find(|l| l.partition == partition);
                let counters = self
                    .shared
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(sub.id.clone(), partition))
                    .cloned()
                    .unwrap_or_default();
                let owned = counters.owned.load(Ordering::Acquire);
                let position = if owned {
                    Position::new(
                        counters.transaction.load(Ordering::Acquire),
                        counters.sequence.load(Ordering::Acquire),
                    )
                } else {
                    stored.map_or(Position::START, |l| l.checkpoint)
                };
                let lag = match (&shape, stored) {
                    (ShapeView::Agreed { .. }, Some(_)) => {
                        let filter = filter_for(sub, partition);
                        self.shared
                            .store
                            .count_after(position, &filter, LAG_COUNT_LIMIT)
                            .await?
                    }
                    _ => 0,
                };
                crate::telemetry::lag(&sub.id, partition, lag);
                out.push(PartitionStatus {
                    subscriber_id: sub.id.clone(),
                    partition,
                    owned,
                    owner: stored.and_then(|l| l.owner).map(|(_, node)| node),
                    unowned_for: stored.and_then(|l| l.unowned_for),
                    shape: shape.clone(),
                    position,
                    lag,
                    delivered: counters.delivered.load(Ordering::Relaxed),
                    retried: counters.retried.load(Ordering::Relaxed),
                    parked: counters.parked.load(Ordering::Relaxed),
                    unknown_entity_types: unknown_entity_types.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Waits until every partition this node owns has no lag and every partition of every
    /// subscriber is owned by some node (this one or another), or the timeout passes
    /// ([`Error::Timeout`]). A
    /// subscriber stored with another shape than this node's is an error at once: waiting
    /// cannot help.
    ///
    /// Caught up is not the same as delivered: an event whose handler kept failing is parked,
    /// and the checkpoint moves past it. The outcome, [`CaughtUp`], says how many events each
    /// subscriber has parked; [`CaughtUp::nothing_parked`] turns parked events into
    /// [`Error::Parked`] (what a test that expects every handler to succeed wants:
    /// `runtime.wait_caught_up(t).await?.nothing_parked()?`).
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<CaughtUp> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            for registered in &self.shared.subscribers {
                if let ShapeView::Mismatch { stored } =
                    self.shared.view(&registered.subscription.id)
                {
                    return Err(Error::Config(mismatch_message(
                        &registered.subscription.id,
                        &stored,
                        &registered.shape,
                    )));
                }
            }
            let done = status.iter().all(|s| match s.owner {
                None => false,
                // Ours: its consumer must be running and have no lag.
                Some(owner) if owner == self.node_id() => s.owned && s.lag == 0,
                Some(_) => true,
            });
            if done {
                let mut parked = Vec::new();
                for registered in &self.shared.subscribers {
                    let id = &registered.subscription.id;
                    let count = self.shared.subscriptions.parked(id).await?.len() as u64;
                    if count > 0 {
                        parked.push((id.clone(), count));
                    }
                }
                return Ok(CaughtUp { parked });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("subscribers catching up (status: {status:?})"),
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Subscriptions to entity types that no stored event has and no registration declares
    /// (each logged as a warning when first found, at start); see
    /// [`Eventuate::known_entity_type`].
    pub async fn entity_type_warnings(&self) -> Result<Vec<UnknownEntityType>> {
        self.shared.entity_type_warnings().await
    }

    /// A subscriber's parked events. The subscriber may run in another process; one that
    /// is neither registered here nor stored (a misspelt id) is [`Error::Config`], not an
    /// empty list.
    pub async fn parked(&self, subscriber_id: &str) -> Result<Vec<ParkedEvent>> {
        self.known_subscriber(subscriber_id).await?;
        self.shared.subscriptions.parked(subscriber_id).await
    }

    /// Requests a replay of a subscriber's parked events (all, or one entity's); an unknown
    /// subscriber is an error, as for [`Self::parked`].
    pub async fn replay(&self, subscriber_id: &str, entity: Option<(&str, &str)>) -> Result<u64> {
        self.known_subscriber(subscriber_id).await?;
        self.shared
            .subscriptions
            .request_replay(subscriber_id, entity)
            .await
    }

    /// Drops a subscriber's parked event at `position` for good (see
    /// [`SubscriptionStore::skip_parked`]: fenced, its entity flows again); `false` when no
    /// such event is parked. An unknown subscriber is an error, as for [`Self::parked`].
    pub async fn skip_parked(&self, subscriber_id: &str, position: Position) -> Result<bool> {
        self.known_subscriber(subscriber_id).await?;
        self.shared
            .subscriptions
            .skip_parked(subscriber_id, position)
            .await
    }

    /// Fails unless `subscriber_id` is registered with this runtime or stored (declared by a
    /// runtime here or in another process).
    async fn known_subscriber(&self, subscriber_id: &str) -> Result<()> {
        if self
            .shared
            .subscribers
            .iter()
            .any(|r| r.subscription.id == subscriber_id)
            || self
                .shared
                .subscriptions
                .subscriber(subscriber_id)
                .await?
                .shape
                .is_some()
        {
            return Ok(());
        }
        Err(Error::Config(format!(
            "no subscriber `{subscriber_id}` is registered with this runtime or stored in its \
             store (a misspelt id?)"
        )))
    }

    /// Makes this node's shape of a registered subscriber the stored one: the explicit step a
    /// change of partition count needs. Consumers of the old shape (here or in other
    /// processes) are fenced off at once and stop; once their leases are released or expired,
    /// the new partitions start from the oldest old checkpoint (events between it and a newer
    /// one are delivered again, which idempotent handling absorbs; nothing is skipped) and
    /// parked events move to their entity's new partition. Returns the new generation.
    pub async fn reshape(&self, subscriber_id: &str) -> Result<u64> {
        let registered = self
            .shared
            .subscribers
            .iter()
            .find(|r| r.subscription.id == subscriber_id)
            .ok_or_else(|| {
                Error::Config(format!(
                    "no subscriber `{subscriber_id}` is registered with this runtime"
                ))
            })?;
        let start = match registered.subscription.start {
            crate::subscriber::StartFrom::Beginning => Position::START,
            crate::subscriber::StartFrom::Now => self.shared.store.head().await?,
        };
        let stored = self
            .shared
            .subscriptions
            .reshape(subscriber_id, &registered.shape, start)
            .await?;
        self.shared.set_view(
            subscriber_id,
            ShapeView::Agreed {
                generation: stored.generation,
            },
        );
        Ok(stored.generation)
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

/// Completes on Ctrl-C or, on Unix, SIGTERM (what a container runtime sends to stop a
/// process): what a service's `main` waits on before shutting the runtime down gracefully,
/// e.g. `Eventuate::new(store).run_until(shutdown_signal())`.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    let terminated = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminated = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
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
