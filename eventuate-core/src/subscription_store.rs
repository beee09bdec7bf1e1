//! The durable state of subscriptions, as the dispatcher needs it from a store: leases (one
//! consumer per subscriber partition across processes), checkpoints, persisted attempt counts,
//! parked events, and wake-ups. The in-memory store and the PostgreSQL store implement
//! [`SubscriptionStore`]; the dispatcher ([`crate::runtime`]) is the same for both.

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use uuid::Uuid;

use crate::subscriber::CheckpointTransaction;
use crate::{EventEnvelope, Position, Result};

/// One partition of one subscriber: the unit of leasing and checkpointing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    /// Subscriber id.
    pub subscriber_id: String,
    /// Partition index.
    pub partition: u32,
    /// Number of partitions of the subscriber.
    pub partitions: u32,
}

/// What a consumer learns when it takes a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The last position handled.
    pub checkpoint: Position,
    /// A persisted attempt count for the event at a position (the one after the checkpoint
    /// that was being handled), if any.
    pub attempt: Option<(Position, u32)>,
    /// The previous holder did not release the partition cleanly (it crashed, hung or lost
    /// its lease): the events after the checkpoint may have been handled partly, and one of
    /// them may be what brought it down.
    pub recovered: bool,
}

/// Who holds a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Partition index.
    pub partition: u32,
    /// Holder, if the lease is held and not expired.
    pub owner: Option<Uuid>,
}

/// An event a subscriber gave up on (dead letter), or that waits behind one of the same
/// entity so that per-entity order is never violated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedEvent {
    /// Subscriber id.
    pub subscriber_id: String,
    /// Partition that owns the entity.
    pub partition: u32,
    /// The event.
    pub event: EventEnvelope,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, or why it was parked without an attempt.
    pub error: String,
    /// When it was parked.
    pub parked_at: SystemTime,
    /// Whether a replay has been requested.
    pub replay_requested: bool,
}

/// Durable subscription state. Every write that a consumer makes is fenced by its lease: a
/// consumer that lost its lease gets [`crate::Error::LeaseLost`] and cannot move a checkpoint.
pub trait SubscriptionStore: Send + Sync + 'static {
    /// Records that runtime `node` is alive for `ttl`; returns the live nodes, sorted.
    fn heartbeat(&self, node: Uuid, ttl: Duration) -> BoxFuture<'_, Result<Vec<Uuid>>>;

    /// Removes `node` from the live nodes (graceful shutdown).
    fn leave(&self, node: Uuid) -> BoxFuture<'_, Result<()>>;

    /// Takes the partition's lease if it is free, expired, or already `node`'s, for `ttl`.
    /// Creates the checkpoint at `start` if the partition has none. `None`: another node
    /// holds it.
    fn try_acquire<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        ttl: Duration,
        start: Position,
    ) -> BoxFuture<'a, Result<Option<Claim>>>;

    /// Extends `node`'s lease; `false` if it no longer holds it.
    fn renew<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Gives the lease up cleanly (after the checkpoint is saved).
    fn release<'a>(&'a self, key: &'a PartitionKey, node: Uuid) -> BoxFuture<'a, Result<()>>;

    /// The leases of a subscriber's partitions.
    fn leases<'a>(
        &'a self,
        subscriber_id: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<Vec<LeaseInfo>>>;

    /// Moves the checkpoint (and clears the persisted attempt count).
    fn save_checkpoint<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
    ) -> BoxFuture<'a, Result<()>>;

    /// Persists that the event at `position` is about to be attempted for the `attempts`-th
    /// time, before the handler runs, so that an event that crashes the process is counted.
    fn record_attempt<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
        attempts: u32,
    ) -> BoxFuture<'a, Result<()>>;

    /// Whether [`SubscriptionStore::begin`] works: the runtime refuses to start a
    /// transactional subscriber on a store without transactions.
    fn supports_transactions(&self) -> bool {
        true
    }

    /// Begins a store transaction whose commit also moves the checkpoint (transactional
    /// subscribers). Stores without transactions return [`crate::Error::Config`].
    fn begin<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
    ) -> BoxFuture<'a, Result<Box<dyn CheckpointTransaction>>>;

    /// Parks an event; parking the same (subscriber, position) twice keeps one record.
    fn park<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        parked: &'a ParkedEvent,
    ) -> BoxFuture<'a, Result<()>>;

    /// A subscriber's parked events in stream order.
    fn parked<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>>;

    /// Marks parked events for replay (all of the subscriber's, or one entity's); returns how
    /// many. The consumer owning their partition replays them in order.
    fn request_replay<'a>(
        &'a self,
        subscriber_id: &'a str,
        entity: Option<(&'a str, &'a str)>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Whether a replay is requested for any parked event of this partition: the cheap check
    /// consumers make every poll interval. The default reads [`SubscriptionStore::parked`];
    /// stores with many parked events override it.
    fn replay_requested<'a>(&'a self, key: &'a PartitionKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            Ok(self
                .parked(&key.subscriber_id)
                .await?
                .iter()
                .any(|p| p.partition == key.partition && p.replay_requested))
        })
    }

    /// Records the outcome of a replay attempt: removes the record on success, or stores the
    /// new attempt count and error and clears the replay request.
    fn replayed<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
        failure: Option<(u32, String)>,
    ) -> BoxFuture<'a, Result<()>>;

    /// A receiver that changes whenever new events may be readable (appends in this process,
    /// notifications from others, reconnects, replay requests). Only a hint: consumers also
    /// poll.
    fn wakeups(&self) -> watch::Receiver<u64>;
}
