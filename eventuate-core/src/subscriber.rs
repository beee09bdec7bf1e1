//! Subscribers: durable, named consumers of the events of one or more entity types.
//! `#[event_handler]` implements [`Subscriber`]; the runtime ([`crate::Eventuate`]) delivers
//! events to it through an [`EventContext`], which can also send commands to aggregates with
//! idempotency and cause tracing handled for the handler.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use uuid::Uuid;

use crate::aggregate::{Aggregate, Command};
use crate::error::BoxError;
use crate::repository::{CommandOptions, Committed, Repository};
use crate::store::IdempotencyKey;
use crate::{Error, EventEnvelope, Position, Result};

/// Where a subscriber without a checkpoint starts reading.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// From the first event in the store.
    #[default]
    Beginning,
    /// From the head of the stream at the moment the subscription is first created.
    Now,
}

/// How failing handlers are retried before their event is parked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before the event is parked (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled on each further retry.
    pub initial_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay after the `attempt`-th failed attempt (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What a subscriber consumes and how. Built by `#[event_handler]` from its attributes, and
/// adjustable at registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Stable id: the checkpoint, leases and parked events are stored under it.
    pub id: String,
    /// Entity types whose events the subscriber receives.
    pub entity_types: Vec<String>,
    /// Event type names the subscriber handles; others are skipped without calling it.
    /// Empty means every event of the entity types.
    pub event_types: Vec<String>,
    /// Where to start without a checkpoint.
    pub start: StartFrom,
    /// Number of partitions (by entity id hash) that processes can consume in parallel.
    pub partitions: u32,
    /// Whether each delivery runs in a store transaction that also moves the checkpoint
    /// (see [`EventContext::transaction`]).
    pub transactional: bool,
    /// Retry and parking policy.
    pub retry: RetryPolicy,
    /// The most consecutive first deliveries handed to [`Subscriber::handle_batch`] at once
    /// (1: one event at a time). A relay raises it to publish runs of events together.
    pub batch: usize,
}

impl Subscription {
    /// A subscription with default options.
    pub fn new<I, S>(id: impl Into<String>, entity_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Subscription {
            id: id.into(),
            entity_types: entity_types.into_iter().map(Into::into).collect(),
            event_types: Vec::new(),
            start: StartFrom::Beginning,
            partitions: 1,
            transactional: false,
            retry: RetryPolicy::default(),
            batch: 1,
        }
    }

    /// Restricts delivery to these event types.
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Sets where to start without a checkpoint.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Splits the subscription into `n` partitions.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }

    /// Runs each delivery in a store transaction that also moves the checkpoint.
    pub fn transactional(mut self, yes: bool) -> Self {
        self.transactional = yes;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Hands up to `n` consecutive first deliveries of a partition to
    /// [`Subscriber::handle_batch`] at once (at least 1; not with `transactional`, whose runs
    /// share a transaction instead).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// Sets the number of attempts before parking.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.retry.max_attempts = n;
        self
    }

    /// Checks ids and numbers.
    pub fn validate(&self) -> Result<()> {
        crate::name::validate_subscriber_id(&self.id)?;
        if self.id.starts_with("eventuate.") {
            return Err(Error::Config(format!(
                "subscriber id `{}` starts with `eventuate.`, which is reserved (external \
                 command ids are recorded under `{}`)",
                self.id,
                crate::repository::EXTERNAL_COMMANDS
            )));
        }
        if self.entity_types.is_empty() {
            return Err(Error::Config(format!(
                "subscriber `{}` subscribes to no entity type",
                self.id
            )));
        }
        for t in &self.entity_types {
            crate::name::validate_entity_type(t)?;
        }
        if self.partitions == 0 || self.partitions > 1024 {
            return Err(Error::Config(format!(
                "subscriber `{}`: partitions must be between 1 and 1024, not {}",
                self.id, self.partitions
            )));
        }
        if self.retry.max_attempts == 0 {
            return Err(Error::Config(format!(
                "subscriber `{}`: max_attempts must be at least 1",
                self.id
            )));
        }
        if self.batch == 0 {
            return Err(Error::Config(format!(
                "subscriber `{}`: batch must be at least 1",
                self.id
            )));
        }
        if self.batch > 1 && self.transactional {
            return Err(Error::Config(format!(
                "subscriber `{}`: a transactional subscriber's runs already share one \
                 transaction; leave its batch at 1",
                self.id
            )));
        }
        Ok(())
    }

    /// Whether the subscriber wants this event type.
    pub fn handles(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

/// A durable, named consumer of events. Implemented by `#[event_handler]`.
pub trait Subscriber: Send + Sync + 'static {
    /// What the subscriber consumes.
    fn subscription(&self) -> Subscription;

    /// Handles one event (available as [`EventContext::event`]). An error is retried with
    /// backoff and finally parks the event.
    fn handle<'a>(
        &'a self,
        ctx: &'a EventContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;

    /// Handles a run of consecutive events of one partition, in stream order, at once; called
    /// instead of [`Subscriber::handle`] for first deliveries when the subscription's `batch`
    /// is above 1 (a relay publishes them together and waits for every acknowledgement). The
    /// outcome says how many, from the first, were handled; the event after those failed with
    /// its error (retried alone, then parked, as usual), and the rest are delivered again.
    /// The default handles them one by one.
    fn handle_batch<'a>(
        &'a self,
        contexts: &'a [EventContext],
    ) -> impl Future<Output = BatchOutcome> + Send + 'a {
        async move {
            for (handled, ctx) in contexts.iter().enumerate() {
                if let Err(error) = self.handle(ctx).await {
                    return BatchOutcome {
                        handled,
                        error: Some(error),
                    };
                }
            }
            BatchOutcome {
                handled: contexts.len(),
                error: None,
            }
        }
    }
}

/// What [`Subscriber::handle_batch`] did with a run of events.
#[derive(Debug)]
pub struct BatchOutcome {
    /// How many events, from the first, were handled.
    pub handled: usize,
    /// Why the next one was not (`None` when all were).
    pub error: Option<HandlerError>,
}

/// The error a handler returns: any error, boxed, optionally marked permanent (park at once,
/// no retries).
pub struct HandlerError {
    source: BoxError,
    permanent: bool,
    unavailable: bool,
}

impl HandlerError {
    /// An error from a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        HandlerError {
            source: message.to_string().into(),
            permanent: false,
            unavailable: false,
        }
    }

    /// An error that retrying cannot fix: the event is parked without further attempts.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        HandlerError {
            source: source.into(),
            permanent: true,
            unavailable: false,
        }
    }

    /// Something the handler needs is down (a broker, a remote service): the event is retried
    /// with backoff for as long as that lasts, and the retries are not counted as attempts,
    /// so an outage never parks an event (store outages are treated the same way). Use it only
    /// for failures that say nothing about the event itself.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        HandlerError {
            source: source.into(),
            permanent: false,
            unavailable: true,
        }
    }

    /// Whether the error says that something the handler needs is down.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    /// Whether the error is permanent.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error.
    pub fn into_inner(self) -> BoxError {
        self.source
    }

    /// The underlying error, borrowed.
    pub fn source_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

/// Any error converts with `?`. An [`Error`] that retrying cannot fix
/// ([`Error::is_permanent`], e.g. a command rejected by the target aggregate) makes a
/// permanent handler error: the event is parked at once instead of being retried.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let source: BoxError = Box::new(e);
        let permanent = source
            .downcast_ref::<Error>()
            .is_some_and(Error::is_permanent);
        HandlerError {
            source,
            permanent,
            unavailable: false,
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("source", &self.source)
            .field("permanent", &self.permanent)
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

/// A store transaction handed to a transactional subscriber's handler; the runtime commits it
/// together with the new checkpoint. Implemented by stores with transactions.
pub trait CheckpointTransaction: Send + 'static {
    /// The store's transaction object, for [`EventContext::transaction`] to downcast.
    fn resource(&mut self) -> &mut (dyn Any + Send);

    /// Writes the checkpoint in the transaction and commits both.
    fn commit(
        self: Box<Self>,
        checkpoint: Position,
    ) -> futures_util::future::BoxFuture<'static, Result<()>>;
}

/// The context of one delivery: the event, and a way to send commands that is idempotent per
/// (subscriber, event) and carries the event as their cause.
pub struct EventContext {
    event: EventEnvelope,
    /// The current name of the event's entity type, when it is stored under an older one.
    current_entity_type: Option<Arc<str>>,
    subscriber_id: Arc<str>,
    repository: Repository,
    commands_sent: AtomicU32,
    attempt: u32,
    transaction: Mutex<Option<Box<dyn CheckpointTransaction>>>,
}

impl fmt::Debug for EventContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventContext")
            .field("subscriber_id", &self.subscriber_id)
            .field("event", &self.event)
            .field("current_entity_type", &self.current_entity_type)
            .finish_non_exhaustive()
    }
}

/// The header naming the subscriber that sent a command, set on the command's events by
/// [`EventContext::update`] and [`EventContext::create`] (cause tracing: which handler
/// reacted to the causing event).
pub const SENT_BY_HEADER: &str = "eventuate.sent-by";

/// Mutable access to the store transaction of a transactional delivery.
pub type TransactionGuard<'a, T> = MappedMutexGuard<'a, T>;

impl EventContext {
    /// A context for delivering `event` to `subscriber_id`. The runtime builds these; tests of
    /// a single subscriber can too.
    pub fn new(repository: Repository, subscriber_id: &str, event: EventEnvelope) -> Self {
        Self::for_subscriber(repository, Arc::from(subscriber_id), event)
    }

    /// [`EventContext::new`] with the subscriber id shared: what the runtime builds for each
    /// delivery (no copy of the id per event).
    pub(crate) fn for_subscriber(
        repository: Repository,
        subscriber_id: Arc<str>,
        event: EventEnvelope,
    ) -> Self {
        EventContext {
            event,
            current_entity_type: None,
            subscriber_id,
            repository,
            commands_sent: AtomicU32::new(0),
            attempt: 1,
            transaction: Mutex::new(None),
        }
    }

    /// The same context, saying this is the `attempt`-th attempt (see
    /// [`EventContext::attempt`]; at least 1).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Which attempt at handling this event this is: 1 on the first delivery in this process,
    /// 2, 3, ... on the retries that follow a failure (the retry policy's attempts), so a
    /// handler can tell a redelivery (`attempt() > 1`) from a first one.
    ///
    /// A redelivery after a crash or a lost lease may still say 1: attempt counts are kept in
    /// memory, and persisted only for retries and while a partition taken over *dirty* (its
    /// previous holder crashed without releasing it) is consumed carefully, where the count
    /// continues from the persisted one. A replay of a parked event starts at 1 again. So
    /// `attempt() == 1` does not prove a first delivery: handlers must stay idempotent (commands
    /// sent through [`EventContext::update`] are).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The same context for an event stored under an older name of the entity type `current`
    /// (see [`EventContext::entity_type`]).
    pub(crate) fn with_current_entity_type(mut self, current: Arc<str>) -> Self {
        self.current_entity_type = Some(current);
        self
    }

    pub(crate) fn with_transaction(self, tx: Box<dyn CheckpointTransaction>) -> Self {
        EventContext {
            transaction: Mutex::new(Some(tx)),
            ..self
        }
    }

    pub(crate) fn take_transaction(&mut self) -> Option<Box<dyn CheckpointTransaction>> {
        self.transaction.get_mut().take()
    }

    /// The event back, once the attempt is over: the runtime moves an event into each
    /// attempt's context and takes it back, instead of copying it per attempt.
    pub(crate) fn into_event(self) -> EventEnvelope {
        self.event
    }

    /// The event being delivered.
    pub fn event(&self) -> &EventEnvelope {
        &self.event
    }

    /// The id of the entity that emitted the event.
    pub fn entity_id(&self) -> &str {
        &self.event.entity_id
    }

    /// The type of the entity that emitted the event, by its current name: for an event stored
    /// under an older name of a renamed entity type the runtime knows
    /// ([`crate::Eventuate::entity_type_aliases`], [`crate::Eventuate::aggregate`]), the
    /// current name; `ctx.event().entity_type` is always the name as stored.
    pub fn entity_type(&self) -> &str {
        self.current_entity_type
            .as_deref()
            .unwrap_or(&self.event.entity_type)
    }

    /// The event's id.
    pub fn event_id(&self) -> Uuid {
        self.event.event_id
    }

    /// The event's global position.
    pub fn position(&self) -> Position {
        self.event.position
    }

    /// The subscriber's id.
    pub fn subscriber_id(&self) -> &str {
        &self.subscriber_id
    }

    /// The repository, for loading aggregates (use [`EventContext::update`] to change them).
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    fn options(&self, command_type: &str) -> CommandOptions {
        let sequence = self.commands_sent.fetch_add(1, Ordering::Relaxed);
        CommandOptions {
            command_id: None,
            causation_id: Some(self.event.event_id),
            correlation_id: Some(
                self.event
                    .metadata
                    .correlation_id
                    .unwrap_or(self.event.event_id),
            ),
            headers: {
                let mut headers = self.event.metadata.headers.clone();
                headers.insert(SENT_BY_HEADER.to_owned(), self.subscriber_id.to_string());
                headers
            },
            idempotency: Some(IdempotencyKey {
                subscriber_id: self.subscriber_id.to_string(),
                triggering_event_id: self.event.event_id,
                sequence,
                command_type: command_type.to_owned(),
            }),
        }
    }

    /// Sends a command to an existing aggregate. Re-delivery of the same event does not apply
    /// it twice: the second time the outcome is [`Committed::duplicate`].
    ///
    /// The k-th command a handler sends for an event is keyed by (subscriber, event, k) and
    /// recorded with its target and type. A handler must send the same commands, in the same
    /// order, on every attempt: if the k-th command of a retry goes to another entity, entity
    /// type or is of another type than the one recorded, the result is
    /// [`Error::IdempotencyMismatch`] (permanent), not a duplicate.
    pub async fn update<A: Aggregate>(
        &self,
        entity_id: &str,
        command: impl Command<A>,
    ) -> Result<Committed<A>> {
        let options = self.options(command.command_type());
        self.repository
            .update_with::<A>(entity_id, command, options)
            .await
    }

    /// Creates an aggregate with the given id from a command, idempotently like
    /// [`EventContext::update`].
    pub async fn create<A: Aggregate>(
        &self,
        entity_id: &str,
        command: impl Command<A>,
    ) -> Result<Committed<A>> {
        let options = self.options(command.command_type());
        self.repository
            .create_with::<A>(Some(entity_id.to_owned()), command, options)
            .await
    }

    /// The store transaction of a transactional delivery (`#[event_handler(transactional)]`),
    /// as the store's type `T`. Writes made through it commit together with the subscriber's
    /// checkpoint, or not at all.
    ///
    /// On PostgreSQL, `T` is `sqlx::PgConnection` (the connection of the transaction); use
    /// `eventuate_postgres::PgEventContextExt::pg_transaction`, which names that type for you.
    /// Any other `T` is [`Error::Config`], a permanent error: the event is parked at its first
    /// attempt.
    pub async fn transaction<T: Any + Send>(&self) -> Result<TransactionGuard<'_, T>> {
        let guard = self.transaction.lock().await;
        if guard.is_none() {
            return Err(Error::Config(format!(
                "subscriber `{}` asked for a transaction but is not transactional; declare it \
                 with `#[event_handler(.., transactional)]` and run it on a store with \
                 transactions",
                self.subscriber_id
            )));
        }
        MutexGuard::try_map(guard, |tx| {
            tx.as_mut().and_then(|tx| tx.resource().downcast_mut::<T>())
        })
        .map_err(|_| {
            Error::Config(format!(
                "subscriber `{}` asked for a transaction of type `{}`, which this store does not \
                 provide",
                self.subscriber_id,
                std::any::type_name::<T>()
            ))
        })
    }
}
