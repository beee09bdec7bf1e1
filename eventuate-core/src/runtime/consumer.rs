//! One consumer: the task that holds one subscriber partition's lease and delivers its events.
//! It reads the global stream after its checkpoint in batches (filtered by entity type and
//! partition), delivers each event in order, parks what cannot be delivered, and moves the
//! checkpoint, every write fenced by its [`Lease`].

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::page::PageSize;
use super::{Counters, Registered, Shared, filter_for};
use crate::store::{EventStore, StreamBatch, StreamFilter, StreamItem};
use crate::subscriber::{EventContext, HandlerError};
use crate::subscription_store::{Claim, Lease, ParkedEvent};
use crate::{Error, EventEnvelope, Position, Result};

/// Until when the lease is known to be held: set by the lease manager after each successful
/// renewal (the time the renewal was *sent* plus the TTL). A consumer starts no handler past
/// it, so a node that cannot reach the store stops delivering before another node may take
/// the partition over.
#[derive(Debug)]
pub(super) struct Validity(Mutex<Instant>);

impl Validity {
    pub(super) fn until(at: Instant) -> Arc<Self> {
        Arc::new(Validity(Mutex::new(at)))
    }

    pub(super) fn extend_to(&self, at: Instant) {
        let mut until = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *until = (*until).max(at);
    }

    pub(super) fn end(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn holds(&self) -> bool {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) > Instant::now()
    }
}

/// Why a delivery did not complete.
pub(super) enum Interrupt {
    /// Stop requested while waiting to retry: leave the checkpoint where it is.
    Stopped,
    /// The store refused a fenced write: another holder (or a reshape) fenced this one off.
    LeaseLost,
    /// The lease was not confirmed recently enough to start a handler; wait for a renewal.
    Unconfirmed,
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

/// The read of the batch after `after`, started while the batch before it is delivered.
struct Prefetch {
    after: Position,
    /// The most events it asked for: whether its batch reached the head is judged by it.
    limit: usize,
    task: tokio::task::JoinHandle<Result<StreamBatch>>,
}

impl Prefetch {
    fn start(
        store: Arc<dyn EventStore>,
        filter: StreamFilter,
        after: Position,
        limit: usize,
    ) -> Self {
        Prefetch {
            after,
            limit,
            task: tokio::spawn(async move { store.read_batch(after, &filter, limit).await }),
        }
    }

    async fn result(mut self) -> Result<StreamBatch> {
        let outcome = (&mut self.task).await;
        outcome.map_err(|e| Error::backend("read the next batch", e))?
    }
}

impl Drop for Prefetch {
    /// A prefetch no longer wanted (the consumer stopped, or did not get through the batch
    /// before it) is abandoned.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many events a consumer delivers between two looks at the clock for its checkpoint save.
const SAVE_CHECK_EVERY: u32 = 32;

/// Sleeps for `pause`, or less if the consumer is told to stop meanwhile: whether it was.
async fn pause_unless_stopped(stop: &watch::Receiver<bool>, pause: Duration) -> bool {
    let mut stop = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = stop.changed() => {}
    }
    *stop.borrow()
}

/// What a caught panic says.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("handler panicked: {message}")
}

/// The most events of a transactional subscriber delivered in one transaction.
const TRANSACTION_RUN: usize = 64;

/// How long one transaction of a transactional subscriber takes more events.
const TRANSACTION_RUN_TIME: Duration = Duration::from_millis(50);

/// What one transaction over a run of events did.
enum RunOutcome {
    /// Its first `n` events are delivered and checkpointed.
    Committed(usize),
    /// Rolled back: the event at this index failed (0: deliver the first one alone).
    FailedAt(usize),
}

/// A handler's failed attempt.
struct Failure {
    /// [`Error::Handler`], naming subscriber, event and position.
    error: Error,
    /// Retrying cannot help: park at once.
    permanent: bool,
    /// Something the handler needs is down: retry without counting an attempt.
    unavailable: bool,
}

pub(super) struct Consumer {
    shared: Arc<Shared>,
    registered: Registered,
    lease: Lease,
    validity: Arc<Validity>,
    filter: StreamFilter,
    checkpoint: Position,
    saved: Position,
    attempt: Option<(Position, u32)>,
    careful_left: usize,
    /// Entities with parked events: later events of theirs are parked behind them.
    blocked: BTreeSet<(String, String)>,
    counters: Arc<Counters>,
    /// The subscriber id, shared by every delivery's context.
    subscriber: Arc<str>,
    deliveries: crate::telemetry::Deliveries,
}

impl Consumer {
    pub(super) fn new(
        shared: Arc<Shared>,
        registered: Registered,
        claim: Claim,
        validity: Arc<Validity>,
    ) -> Self {
        let counters = shared.counters(&claim.lease.key);
        let careful_left = if claim.recovered {
            shared.options.batch_size
        } else {
            0
        };
        let subscriber: Arc<str> = Arc::from(registered.subscription.id.as_str());
        Consumer {
            deliveries: crate::telemetry::Deliveries::of(&subscriber),
            subscriber,
            filter: filter_for(&registered.subscription, claim.lease.key.partition),
            shared,
            registered,
            lease: claim.lease,
            validity,
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

    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.counters.owned.store(true, Ordering::Release);
        self.publish_position();
        let key = &self.lease.key;
        let span = tracing::info_span!("consumer", subscriber = %key.subscriber_id, partition = key.partition);
        let outcome = self.consume(&mut stop).instrument(span).await;
        self.counters.owned.store(false, Ordering::Release);
        let key = self.lease.key.clone();
        if let Interrupt::LeaseLost = outcome {
            tracing::warn!(subscriber = %key.subscriber_id, partition = key.partition, "lease lost or fenced off; stopping");
        } else if let Err(e) = self.save().await {
            tracing::warn!(subscriber = %key.subscriber_id, error = %e, "checkpoint not saved at stop");
            if !matches!(e, Error::LeaseLost { .. }) {
                // The store is unreachable: leave the lease to expire, dirty.
                return;
            }
        }
        // Fenced by the holder alone: a no-op when another holder took the partition, and
        // what lets a reshape proceed when this consumer was fenced off by it.
        if let Err(e) = self.shared.subscriptions.release(&self.lease).await {
            tracing::warn!(subscriber = %key.subscriber_id, error = %e, "lease not released; it will expire");
        }
    }

    async fn save(&mut self) -> Result<()> {
        if self.checkpoint > self.saved {
            self.shared
                .subscriptions
                .save_checkpoint(&self.lease, self.checkpoint)
                .await?;
            self.saved = self.checkpoint;
        }
        Ok(())
    }

    async fn consume(&mut self, stop: &mut watch::Receiver<bool>) -> Interrupt {
        let mut wakeups = self.shared.subscriptions.wakeups();
        let mut failures = 0u32;
        let poll = self.shared.options.poll_interval;
        let mut next_replay_check = Instant::now() + poll;
        // During a catch-up the checkpoint is saved at most once a poll interval, not after
        // every batch: a crash then delivers at most that much again (at least once), and the
        // catch-up saves a round trip per batch. At the head it is saved at once.
        let mut next_save = Instant::now() + poll;
        // While a full batch is delivered, the next one is already being read.
        // Far behind, batches grow; at the head they are `batch_size` again.
        let pages = PageSize::new(
            self.shared.options.batch_size,
            self.shared.options.max_batch_size,
        );
        let mut next_limit = pages.first();
        // The first read does not wait for the replay of parked events: a batch depends only
        // on the checkpoint and the filter, which the replay leaves alone (it refreshes the
        // set of blocked entities, applied when the batch is delivered).
        wakeups.borrow_and_update();
        let mut prefetch = Some(Prefetch::start(
            self.shared.store.clone(),
            self.filter.clone(),
            self.checkpoint,
            next_limit,
        ));
        if let Err(e) = self.replay_parked(stop).await {
            return e;
        }
        loop {
            if *stop.borrow() {
                return Interrupt::Stopped;
            }
            let step = async {
                if Instant::now() >= next_replay_check {
                    if self
                        .shared
                        .subscriptions
                        .replay_requested(&self.lease.key)
                        .await?
                    {
                        self.replay_parked(stop).await?;
                    }
                    next_replay_check = Instant::now() + poll;
                }
                let (batch, limit) = match prefetch.take() {
                    Some(next) if next.after == self.checkpoint => {
                        let limit = next.limit;
                        (next.result().await?, limit)
                    }
                    _ => {
                        // Every wake-up so far is answered by this read (see below).
                        wakeups.borrow_and_update();
                        let limit = next_limit;
                        let batch = self
                            .shared
                            .store
                            .read_batch(self.checkpoint, &self.filter, limit)
                            .await?;
                        (batch, limit)
                    }
                };
                // A short batch (judged by the limit it was read with) reached the head: wait
                // instead of reading again. Safe, since the wake-up signal was borrowed before
                // the read started (here, or before its prefetch), so an append that landed
                // meanwhile still wakes us at once.
                let at_head = PageSize::at_head(&batch, limit);
                next_limit = pages.next(&batch, limit);
                if !at_head {
                    wakeups.borrow_and_update();
                    prefetch = Some(Prefetch::start(
                        self.shared.store.clone(),
                        self.filter.clone(),
                        batch.scanned_to,
                        next_limit,
                    ));
                }
                let delivered_any = !batch.items.is_empty();
                let mut items = batch.items.into_iter().peekable();
                let mut since_clock = 0u32;
                while let Some(item) = items.next() {
                    if *stop.borrow() {
                        return Ok(at_head);
                    }
                    // A batch can hold thousands of events: the checkpoint is saved within
                    // it once a poll interval, so a crash delivers at most about a poll
                    // interval's worth again (the clock is read every few events).
                    since_clock += 1;
                    if since_clock >= SAVE_CHECK_EVERY {
                        since_clock = 0;
                        if Instant::now() >= next_save {
                            self.save().await?;
                            next_save = Instant::now() + poll;
                        }
                    }
                    match item {
                        StreamItem::Event(event) if self.joins_run(&event) => {
                            let limit = self.run_limit();
                            let mut run = vec![event];
                            while run.len() < limit {
                                match items.next_if(|next| {
                                    matches!(next, StreamItem::Event(e) if self.joins_run(e))
                                }) {
                                    Some(StreamItem::Event(e)) => run.push(e),
                                    _ => break,
                                }
                            }
                            if run.len() == 1 {
                                for event in run {
                                    self.deliver(event, stop).await?;
                                }
                            } else if self.registered.subscription.transactional {
                                self.deliver_in_one_transaction(run, stop).await?;
                            } else {
                                self.deliver_batch(run, stop).await?;
                            }
                        }
                        StreamItem::Event(event) => self.deliver(event, stop).await?,
                        StreamItem::Undecodable { event, error } => {
                            self.park_undecodable(event, error).await?
                        }
                    }
                }
                // Nothing the filter passes lies between the last item and `scanned_to`.
                self.advance(batch.scanned_to);
                // Progress over rows this partition does not receive only spares a later
                // read: it too is saved at most once a poll interval.
                if (at_head && delivered_any) || Instant::now() >= next_save {
                    self.save().await?;
                    next_save = Instant::now() + poll;
                }
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
                        _ = tokio::time::sleep(poll) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(Interrupt::Unconfirmed) => {
                    tracing::debug!("lease not confirmed recently; waiting for a renewal");
                    tokio::select! {
                        _ = tokio::time::sleep(self.shared.options.lease_ttl / 6) => {}
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

    /// Delivers one event. The common case, a first attempt that succeeds, runs here; the
    /// rest (parking, attempts recorded beforehand, retries) in [`Self::attempts`], boxed: this
    /// future is created and moved once per event, and with the retry loop inline it was
    /// 3 kB, whose moves were a tenth of an in-memory catch-up's time.
    async fn deliver(
        &mut self,
        event: EventEnvelope,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), Interrupt> {
        let subscription = &self.registered.subscription;
        if !subscription.handles(&event.event_type) {
            self.advance(event.position);
            return Ok(());
        }
        if self.is_blocked(&event) {
            let reason = "waiting behind an earlier parked event of the same entity".to_owned();
            return Box::pin(self.park(event, 0, reason)).await;
        }
        let careful = self.careful_left > 0;
        self.careful_left = self.careful_left.saturating_sub(1);
        let attempted = match self.attempt {
            Some((at, n)) if at == event.position => n,
            _ => 0,
        };
        if careful || attempted > 0 || subscription.retry.max_attempts == 0 {
            return Box::pin(self.attempts(event, attempted, careful, None, stop)).await;
        }
        // No handler starts on a lease that may have expired meanwhile.
        if !self.validity.holds() {
            return Err(Interrupt::Unconfirmed);
        }
        let (event, outcome) = self.run_handler(event).await;
        match outcome? {
            Ok(()) => {
                self.handled(&event);
                Ok(())
            }
            Err(failure) => Box::pin(self.attempts(event, 1, false, Some(failure), stop)).await,
        }
    }

    /// The attempts at an event after `attempted` ones, the first of them having failed with
    /// `failure` if given: each recorded before it starts (so a crash counts it), with the
    /// retry policy's backoff between them, until one succeeds or the event is parked.
    /// `careful`: record and save even the first (a recovered partition's first events, one
    /// of which may be what crashed the previous holder).
    async fn attempts(
        &mut self,
        mut event: EventEnvelope,
        mut attempts: u32,
        careful: bool,
        mut failure: Option<Failure>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), Interrupt> {
        let position = event.position;
        let retry = self.registered.subscription.retry;
        // Why the last attempt failed; none when the attempts persisted for this event were
        // all cut short by stops.
        let mut last_error: Option<String> = None;
        let mut outages = 0u32;
        loop {
            match failure.take() {
                None => {}
                Some(Failure {
                    error,
                    permanent: true,
                    ..
                }) => {
                    return self.park(event, attempts, error.to_string()).await;
                }
                Some(Failure {
                    error,
                    unavailable: true,
                    ..
                }) => {
                    // Not the event's fault: not an attempt (but a retry, in the counts).
                    attempts -= 1;
                    outages += 1;
                    self.count_retry();
                    let pause = retry.backoff(outages);
                    tracing::warn!(position = %position, error = %error, ?pause, "what the handler needs is unavailable; retrying without counting an attempt");
                    if pause_unless_stopped(stop, pause).await {
                        return Err(Interrupt::Stopped);
                    }
                }
                Some(Failure { error: e, .. }) => {
                    tracing::warn!(position = %position, attempt = attempts, error = %e, "handler failed");
                    last_error = Some(e.to_string());
                    if attempts < retry.max_attempts {
                        self.count_retry();
                        if pause_unless_stopped(stop, retry.backoff(attempts)).await {
                            return Err(Interrupt::Stopped);
                        }
                    }
                }
            }
            if attempts >= retry.max_attempts {
                let error = last_error.unwrap_or_else(|| {
                    format!("the consumer stopped {attempts} times while handling it")
                });
                return self.park(event, attempts, error).await;
            }
            // No handler starts on a lease that may have expired meanwhile.
            if !self.validity.holds() {
                return Err(Interrupt::Unconfirmed);
            }
            attempts += 1;
            if careful || attempts > 1 {
                self.shared
                    .subscriptions
                    .record_attempt(&self.lease, position, attempts)
                    .await?;
                self.attempt = Some((position, attempts));
            }
            let (back, outcome) = self.run_handler(event).await;
            event = back;
            match outcome? {
                Ok(()) => {
                    self.handled(&event);
                    if careful || attempts > 1 {
                        self.save().await?;
                        self.attempt = None;
                    }
                    return Ok(());
                }
                Err(f) => failure = Some(f),
            }
        }
    }

    /// Counts a retry (a failed attempt that will be made again, or a pause because what the
    /// handler needs is unavailable) in `status()` and in the retries metric alike.
    fn count_retry(&self) {
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::retried(&self.lease.key.subscriber_id);
    }

    /// Counts a handled event and moves past it.
    fn handled(&mut self, event: &EventEnvelope) {
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        self.deliveries.delivered(event);
        self.advance(event.position);
        if self.registered.subscription.transactional {
            // The handler's transaction committed the checkpoint.
            self.saved = self.saved.max(event.position);
            self.attempt = None;
        }
    }

    fn is_blocked(&self, event: &EventEnvelope) -> bool {
        !self.blocked.is_empty()
            && self
                .blocked
                .contains(&(event.entity_type.clone(), event.entity_id.clone()))
    }

    /// A row that does not decode is parked for this subscriber (if it wants the event type),
    /// like an event whose handler gave up: its entity waits behind it, everything else flows.
    async fn park_undecodable(
        &mut self,
        event: EventEnvelope,
        error: String,
    ) -> Result<(), Interrupt> {
        if !self.registered.subscription.handles(&event.event_type) {
            self.advance(event.position);
            return Ok(());
        }
        self.park(
            event,
            0,
            format!("the stored event does not decode: {error}"),
        )
        .await
    }

    fn advance(&mut self, position: Position) {
        self.checkpoint = self.checkpoint.max(position);
        self.publish_position();
    }

    /// Parks an event, and only once that is stored blocks its entity and moves past it: a
    /// park that fails (the store is down) leaves the event to be attempted again.
    async fn park(
        &mut self,
        event: EventEnvelope,
        attempts: u32,
        error: String,
    ) -> Result<(), Interrupt> {
        tracing::error!(position = %event.position, entity_type = %event.entity_type, entity_id = %event.entity_id, attempts, %error, "parking event");
        let position = event.position;
        let entity = (event.entity_type.clone(), event.entity_id.clone());
        let parked = ParkedEvent {
            subscriber_id: self.lease.key.subscriber_id.clone(),
            partition: self.lease.key.partition,
            event,
            attempts,
            error,
            parked_at: SystemTime::now(),
            replay_requested: false,
        };
        self.shared.subscriptions.park(&self.lease, &parked).await?;
        self.blocked.insert(entity);
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::parked(&self.lease.key.subscriber_id);
        self.advance(position);
        Ok(())
    }

    /// Runs the handler once. The outer error is the runtime's own trouble (no transaction
    /// could be begun, the lease is gone): retried by the consume loop without counting an
    /// attempt. The inner one is the handler's failure (an error, a panic, or a view
    /// transaction that would not commit): it counts as an attempt.
    ///
    /// The event is moved into the attempt's context and handed back with the outcome.
    async fn run_handler(
        &self,
        event: EventEnvelope,
    ) -> (EventEnvelope, Result<Result<(), Failure>, Interrupt>) {
        let mut ctx = self.context_of(event);
        if self.registered.subscription.transactional {
            match self.shared.subscriptions.begin(&self.lease).await {
                Ok(tx) => ctx = ctx.with_transaction(tx),
                Err(e) => return (ctx.into_event(), Err(e.into())),
            }
        }
        let outcome = match self.invoke(&ctx).await {
            Err(failure) => Ok(Err(failure)),
            Ok(()) => match ctx.take_transaction() {
                None => Ok(Ok(())),
                Some(tx) => match tx.commit(ctx.event().position).await {
                    Ok(()) => Ok(Ok(())),
                    Err(Error::LeaseLost { .. }) => Err(Interrupt::LeaseLost),
                    Err(e) => Ok(Err(self.failure(ctx.event(), Box::new(e), false))),
                },
            },
        };
        (ctx.into_event(), outcome)
    }

    /// The context of an attempt at `event`, carrying its attempt number (1 unless an attempt
    /// count was persisted for it).
    fn context(&self, event: &EventEnvelope) -> EventContext {
        self.context_of(event.clone())
    }

    /// [`Self::context`] taking the event itself.
    fn context_of(&self, event: EventEnvelope) -> EventContext {
        let attempt = self
            .attempt
            .filter(|(at, _)| *at == event.position)
            .map_or(1, |(_, n)| n);
        // A row stored under an older name of a renamed entity type: handlers see the current
        // name, `ctx.event()` the stored row.
        let current = self
            .registered
            .current_names
            .get(&event.entity_type)
            .cloned();
        let ctx = EventContext::for_subscriber(
            self.shared.repository.clone(),
            self.subscriber.clone(),
            event,
        );
        match current {
            Some(current) => ctx.with_current_entity_type(current),
            None => ctx,
        }
        .with_attempt(attempt)
    }

    /// Calls the subscriber's handler with `ctx`, in its span, a panic turned into a failure.
    ///
    /// The span is at DEBUG: one per event, it is what a catch-up pays most for when the
    /// application logs (the bench's `--tracing-info`: tracing-subscriber's fmt layer at INFO
    /// took a 50,000-event catch-up from 440k to 280-345k events/s with this span at INFO).
    async fn invoke(&self, ctx: &EventContext) -> Result<(), Failure> {
        let event = ctx.event();
        let span = tracing::debug_span!(
            "deliver",
            subscriber = %self.registered.subscription.id,
            position = %event.position,
            entity_type = %event.entity_type,
            entity_id = %event.entity_id,
            event_type = %event.event_type,
        );
        let outcome = AssertUnwindSafe(self.registered.subscriber.handle(ctx))
            .catch_unwind()
            .instrument(span)
            .await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let (permanent, unavailable) = (e.is_permanent(), e.is_unavailable());
                let mut failure = self.failure(event, e.into_inner(), permanent);
                failure.unavailable = unavailable;
                Err(failure)
            }
            Err(panic) => Err(self.failure(event, panic_message(&*panic).into(), false)),
        }
    }

    fn failure(&self, event: &EventEnvelope, source: crate::BoxError, permanent: bool) -> Failure {
        Failure {
            error: Error::Handler {
                subscriber: self.registered.subscription.id.clone(),
                entity_type: event.entity_type.clone(),
                entity_id: event.entity_id.clone(),
                event_type: event.event_type.clone(),
                position: event.position,
                source,
            },
            permanent,
            unavailable: false,
        }
    }

    /// How many events a run may hold: a transactional subscriber's runs share a transaction
    /// (up to [`TRANSACTION_RUN`]), a batching subscriber's go to `handle_batch` together.
    fn run_limit(&self) -> usize {
        let subscription = &self.registered.subscription;
        if subscription.transactional {
            TRANSACTION_RUN
        } else {
            subscription.batch
        }
    }

    /// Whether an event can join a run (see [`Self::run_limit`]): a first attempt, outside
    /// careful mode, of a handled event whose entity is not blocked.
    fn joins_run(&self, event: &EventEnvelope) -> bool {
        self.run_limit() > 1
            && self.careful_left == 0
            && self.registered.subscription.handles(&event.event_type)
            && !self.is_blocked(event)
            && self.attempt.is_none_or(|(at, _)| at != event.position)
    }

    /// Delivers a run of a transactional subscriber's events in as few transactions as it
    /// can, each also moving the checkpoint past its last event: a commit per run instead of
    /// per event, with the same exactly-once effect. A transaction takes events while they
    /// succeed, for at most [`TRANSACTION_RUN_TIME`] (an open transaction holds every reader's
    /// horizon back). When a handler fails, the transaction is rolled back, so none of its
    /// view writes happened; the events before the failing one are delivered again in a new
    /// transaction, and the failing one alone, where retries and parking apply as usual.
    async fn deliver_in_one_transaction(
        &mut self,
        run: Vec<EventEnvelope>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), Interrupt> {
        let mut pending = std::collections::VecDeque::from(run);
        let mut limit = pending.len();
        while !pending.is_empty() {
            if *stop.borrow() {
                return Err(Interrupt::Stopped);
            }
            if limit <= 1 {
                if let Some(event) = pending.pop_front() {
                    self.deliver(event, stop).await?;
                }
                limit = pending.len();
                continue;
            }
            match self.try_run(pending.iter().take(limit)).await? {
                RunOutcome::Committed(n) => {
                    pending.drain(..n);
                    limit = pending.len();
                }
                RunOutcome::FailedAt(i) => limit = i,
            }
        }
        Ok(())
    }

    /// One transaction over a prefix of `events`; see [`Self::deliver_in_one_transaction`].
    async fn try_run(
        &mut self,
        events: impl Iterator<Item = &EventEnvelope>,
    ) -> Result<RunOutcome, Interrupt> {
        if !self.validity.holds() {
            return Err(Interrupt::Unconfirmed);
        }
        let began = Instant::now();
        let mut tx = Some(self.shared.subscriptions.begin(&self.lease).await?);
        let mut last = None;
        let mut count = 0;
        for (i, event) in events.enumerate() {
            if count > 0 && began.elapsed() >= TRANSACTION_RUN_TIME {
                break;
            }
            let Some(open) = tx.take() else {
                return Ok(RunOutcome::FailedAt(i));
            };
            let mut ctx = self.context(event).with_transaction(open);
            let outcome = self.invoke(&ctx).await;
            tx = ctx.take_transaction();
            if outcome.is_err() || tx.is_none() {
                // Dropping the transaction rolls the run's writes back.
                return Ok(RunOutcome::FailedAt(i));
            }
            last = Some(event.position);
            count += 1;
        }
        let (Some(open), Some(last)) = (tx, last) else {
            return Ok(RunOutcome::FailedAt(0));
        };
        match open.commit(last).await {
            Ok(()) => {
                self.counters
                    .delivered
                    .fetch_add(count as u64, Ordering::Relaxed);
                self.advance(last);
                self.saved = self.saved.max(last);
                Ok(RunOutcome::Committed(count))
            }
            Err(Error::LeaseLost { .. }) => Err(Interrupt::LeaseLost),
            Err(e) => {
                tracing::warn!(error = %e, events = count, "a run's view transaction did not commit; delivering its first event alone");
                Ok(RunOutcome::FailedAt(0))
            }
        }
    }

    /// Hands a run of first deliveries to the subscriber's `handle_batch`. The events it
    /// handled are done; the one it failed on is retried alone (after the first attempt's
    /// backoff), or parked at once if the error is permanent; the rest go back through the
    /// same path. A panic counts as a failure of the run's first event.
    async fn deliver_batch(
        &mut self,
        run: Vec<EventEnvelope>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), Interrupt> {
        let mut pending = std::collections::VecDeque::from(run);
        let mut outages = 0u32;
        while !pending.is_empty() {
            if *stop.borrow() {
                return Err(Interrupt::Stopped);
            }
            // An event of an entity parked earlier in this run waits behind it (`deliver` parks
            // it so), and a batch never reaches past such an event.
            if pending.front().is_some_and(|e| self.is_blocked(e)) {
                if let Some(event) = pending.pop_front() {
                    self.deliver(event, stop).await?;
                }
                continue;
            }
            if !self.validity.holds() {
                return Err(Interrupt::Unconfirmed);
            }
            let unblocked = pending
                .iter()
                .position(|e| self.is_blocked(e))
                .unwrap_or(pending.len());
            let contexts: Vec<EventContext> = pending
                .iter()
                .take(unblocked)
                .map(|e| self.context(e))
                .collect();
            let span = tracing::info_span!(
                "deliver_batch",
                subscriber = %self.registered.subscription.id,
                events = contexts.len(),
            );
            let outcome = AssertUnwindSafe(self.registered.subscriber.handle_batch(&contexts))
                .catch_unwind()
                .instrument(span)
                .await;
            let offered = contexts.len();
            drop(contexts);
            let (handled, error) = match outcome {
                Ok(outcome) => (outcome.handled.min(offered), outcome.error),
                Err(panic) => (0, Some(HandlerError::msg(panic_message(&*panic)))),
            };
            for event in pending.drain(..handled) {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                self.deliveries.delivered(&event);
                self.advance(event.position);
            }
            let Some(error) = error else {
                if handled == 0 {
                    // A batch that handled nothing and reported no error: deliver one alone.
                    if let Some(event) = pending.pop_front() {
                        self.deliver(event, stop).await?;
                    }
                }
                continue;
            };
            if error.is_unavailable() {
                // Not the event's fault: try the rest of the run again after a pause, without
                // counting an attempt (but a retry, in the counts).
                outages += 1;
                self.count_retry();
                let pause = self.registered.subscription.retry.backoff(outages);
                tracing::warn!(error = %error, ?pause, "what the handler needs is unavailable; retrying the run without counting an attempt");
                let mut stop_rx = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop_rx.changed() => {}
                }
                continue;
            }
            outages = 0;
            let Some(event) = pending.pop_front() else {
                break;
            };
            let failure = self.failure(&event, error.source_ref().to_string().into(), false);
            if error.is_permanent() {
                self.park(event, 1, failure.error.to_string()).await?;
                continue;
            }
            tracing::warn!(position = %event.position, error = %failure.error, "handler failed in a batch");
            let retry = self.registered.subscription.retry;
            if retry.max_attempts <= 1 {
                self.park(event, 1, failure.error.to_string()).await?;
                continue;
            }
            self.count_retry();
            let mut stop_rx = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(retry.backoff(1)) => {}
                _ = stop_rx.changed() => {}
            }
            if *stop.borrow() {
                return Err(Interrupt::Stopped);
            }
            // The batch was its first attempt.
            self.attempt = Some((event.position, 1));
            self.deliver(event, stop).await?;
        }
        Ok(())
    }

    /// Replays parked events of this partition whose replay was requested, entity by entity
    /// in stream order; refreshes the set of blocked entities. A replay that fails again
    /// records the failure (the event stays parked, its replay request cleared) and moves on
    /// to the next entity.
    async fn replay_parked(&mut self, stop: &watch::Receiver<bool>) -> Result<(), Interrupt> {
        let parked: Vec<ParkedEvent> = self
            .shared
            .subscriptions
            .parked(&self.lease.key.subscriber_id)
            .await?
            .into_iter()
            .filter(|p| p.partition == self.lease.key.partition)
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
            if !self.validity.holds() {
                return Err(Interrupt::Unconfirmed);
            }
            events.sort_by_key(|p| p.event.position);
            let mut cleared = true;
            let mut events = events.into_iter();
            while let Some(mut p) = events.next() {
                let position = p.event.position;
                let (event, outcome) = self.run_handler(p.event).await;
                p.event = event;
                match outcome? {
                    Ok(()) => {
                        self.shared
                            .subscriptions
                            .replayed(&self.lease, position, None)
                            .await?;
                        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                        self.deliveries.delivered(&p.event);
                    }
                    Err(Failure { error, .. }) => {
                        let failure = Some((p.attempts + 1, error.to_string()));
                        self.shared
                            .subscriptions
                            .replayed(&self.lease, position, failure)
                            .await?;
                        // The events behind it stay parked, and their replay requests end
                        // too: otherwise the next check would replay the entity again at once,
                        // without backoff, for ever.
                        for rest in events.filter(|r| r.replay_requested) {
                            self.shared
                                .subscriptions
                                .replayed(
                                    &self.lease,
                                    rest.event.position,
                                    Some((rest.attempts, rest.error)),
                                )
                                .await?;
                        }
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
