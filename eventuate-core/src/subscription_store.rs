//! The durable state of subscriptions, as the dispatcher needs it from a store: who is alive
//! and runs which subscriber (membership), each subscriber's stored shape, leases (one consumer
//! per subscriber partition across processes), checkpoints, persisted attempt counts, parked
//! events, and wake-ups. The in-memory store and the PostgreSQL store implement
//! [`SubscriptionStore`]; the dispatcher ([`crate::runtime`]) is the same for both.
//!
//! ## The protocol
//!
//! - **Members.** Every running dispatcher is a member with a fresh *incarnation* id and a
//!   stable, operator-chosen *node* id (a pod name's UUID, say). Leases are held by the
//!   incarnation, so a process restarted under the same node id is a new holder: it waits for
//!   the old lease to expire and finds the partition dirty (see *crash detection*).
//! - **Leases and fencing tokens.** Taking a partition bumps its `epoch`; the holder's
//!   [`Lease`] carries it, and every write that moves subscription state (checkpoint, attempt
//!   count, parking, replay outcome, the checkpoint inside a view transaction) is conditional
//!   on `(holder, epoch)`. Renewing and releasing are conditional on the holder alone, so a
//!   consumer whose writes were fenced off by a shape change still keeps its lease alive until
//!   it has stopped, and nobody else starts on the partition meanwhile.
//! - **Shapes.** A subscriber's [`Shape`] (partition count, entity types, event types) is
//!   stored with a generation. Partition rows belong to a generation; a reshape bumps the
//!   generation and every row's epoch (fencing off old-shape consumers at once), and the rows
//!   are migrated only when no old lease is live: new partitions start from the *oldest* old
//!   checkpoint (nothing is skipped; events between the oldest and a newer checkpoint are
//!   delivered again, which idempotent handling absorbs), parked events are re-keyed to their
//!   new partition, and a row taken over dirty stays dirty.
//! - **Crash detection.** A partition is dirty while held and clean after a clean release; a
//!   holder that takes a dirty partition consumes carefully.

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

/// A running dispatcher, as the other members see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Fresh for every start of a dispatcher: what holds leases.
    pub incarnation: Uuid,
    /// The stable node id the operator configured (or a fresh one).
    pub node: Uuid,
    /// The subscribers it runs (all it registered, less those stored with another shape).
    pub subscribers: Vec<String>,
}

/// What a subscriber's checkpoints mean: how the entity-id space is split and which events
/// the subscriber receives. Two processes that disagree on it cannot share checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Number of partitions.
    pub partitions: u32,
    /// Entity types, sorted, without duplicates.
    pub entity_types: Vec<String>,
    /// Handled event types, sorted, without duplicates (empty: all).
    pub event_types: Vec<String>,
}

impl Shape {
    /// A shape with its lists normalized (sorted, deduplicated).
    pub fn new(partitions: u32, entity_types: &[String], event_types: &[String]) -> Self {
        let norm = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        Shape {
            partitions,
            entity_types: norm(entity_types),
            event_types: norm(event_types),
        }
    }

    /// Whether the two differ in more than the types (their checkpoints are keyed differently).
    pub fn repartitions(&self, other: &Shape) -> bool {
        self.partitions != other.partitions
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} partition(s) of [{}], event types [{}]",
            self.partitions,
            self.entity_types.join(", "),
            if self.event_types.is_empty() {
                "all".to_owned()
            } else {
                self.event_types.join(", ")
            }
        )
    }
}

/// A shape as stored, with its generation (bumped by every reshape).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredShape {
    /// The shape.
    pub shape: Shape,
    /// Its generation.
    pub generation: u64,
}

/// The right to consume one partition, as handed out by [`SubscriptionStore::try_acquire`]:
/// the fencing token of every write the consumer makes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The partition.
    pub key: PartitionKey,
    /// The incarnation holding it.
    pub holder: Uuid,
    /// Bumped by every acquisition (and by a reshape): older tokens are fenced off.
    pub epoch: u64,
}

/// What a consumer learns when it takes a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The fencing token.
    pub lease: Lease,
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

/// Who holds a partition, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Partition index.
    pub partition: u32,
    /// Holder (incarnation and node), if the lease is held and not expired.
    pub owner: Option<(Uuid, Uuid)>,
    /// How long nobody has held it (`None` while held).
    pub unowned_for: Option<Duration>,
    /// Its checkpoint.
    pub checkpoint: Position,
}

/// A subscriber's stored state: its shape and its partitions of the current generation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SubscriberState {
    /// The stored shape (`None`: never declared).
    pub shape: Option<StoredShape>,
    /// The partitions of the current generation (empty while a reshape waits to migrate).
    pub partitions: Vec<LeaseInfo>,
    /// A reshape waits for the old generation's leases to end before migrating its rows.
    pub migration_pending: bool,
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

/// Text a store can keep: PostgreSQL `text` refuses NUL bytes, and an error message that
/// carries one (a handler's, or serde's about a payload with `\u0000`) must still be
/// stored. Every store applies it to the errors it stores, so both store the same text.
pub fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Durable subscription state. See the module docs for the protocol; every write that moves a
/// consumer's state is fenced by its [`Lease`]: a consumer whose lease was taken over or
/// invalidated gets [`crate::Error::LeaseLost`] and cannot move a checkpoint.
pub trait SubscriptionStore: Send + Sync + 'static {
    /// Records that `member` is alive for `ttl`; returns the live members.
    fn heartbeat<'a>(
        &'a self,
        member: &'a Member,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<Member>>>;

    /// Removes a member (graceful shutdown).
    fn leave(&self, incarnation: Uuid) -> BoxFuture<'_, Result<()>>;

    /// Declares a subscriber's shape. With no stored shape, stores it as generation 1 and
    /// creates its partitions with their checkpoints at `start` (one head for every partition
    /// of a `start = now` subscriber). With the same shape stored, changes nothing. With
    /// another shape stored, makes `shape` the new generation: every partition's epoch is
    /// bumped at once (old-shape consumers can write nothing more), and the rows are migrated
    /// by [`SubscriptionStore::migrate`] once no old lease is live. Partition rows left by a
    /// version without stored shapes count as a generation 0 of their own partition count.
    /// Returns what is stored now.
    fn reshape<'a>(
        &'a self,
        subscriber_id: &'a str,
        shape: &'a Shape,
        start: Position,
    ) -> BoxFuture<'a, Result<StoredShape>>;

    /// Migrates a pending reshape's partitions when no lease of an older generation is live
    /// (see the module docs); `false` when one still is (try again later). A no-op returning
    /// `true` when nothing is pending.
    fn migrate<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// The stored shape and the partitions of the current generation.
    fn subscriber<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<SubscriberState>>;

    /// Takes the partition's lease for `member` if it is free or expired and belongs to
    /// `generation`, bumping its epoch. `None`: another member holds it, or the generation
    /// moved on.
    fn try_acquire<'a>(
        &'a self,
        key: &'a PartitionKey,
        member: &'a Member,
        generation: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Claim>>>;

    /// Extends the lease while its holder still holds it (whatever the epoch); `false` if
    /// another holder took it.
    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> BoxFuture<'a, Result<bool>>;

    /// [`Self::renew`] for several leases: one answer per lease, in their order. The runtime
    /// renews all of its leases with one call per round; stores override it to do that in one
    /// statement (the default renews them one by one).
    fn renew_all<'a>(
        &'a self,
        leases: &'a [Lease],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move {
            let mut held = Vec::with_capacity(leases.len());
            for lease in leases {
                held.push(self.renew(lease, ttl).await?);
            }
            Ok(held)
        })
    }

    /// Gives the lease up cleanly (after the checkpoint is saved), if its holder still holds
    /// it.
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>>;

    /// Moves the checkpoint forward (and clears the persisted attempt count).
    fn save_checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
    ) -> BoxFuture<'a, Result<()>>;

    /// Persists that the event at `position` is about to be attempted for the `attempts`-th
    /// time, before the handler runs, so that an event that crashes the process is counted.
    fn record_attempt<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
        attempts: u32,
    ) -> BoxFuture<'a, Result<()>>;

    /// Whether [`SubscriptionStore::begin`] works: the runtime refuses to start a
    /// transactional subscriber on a store without transactions.
    fn supports_transactions(&self) -> bool {
        true
    }

    /// Begins a store transaction whose commit also moves the checkpoint (transactional
    /// subscribers), fenced by the lease. Stores without transactions return
    /// [`crate::Error::Config`].
    fn begin<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<Box<dyn CheckpointTransaction>>>;

    /// Parks an event; parking the same (subscriber, position) twice keeps one record. The
    /// stored error passes through [`storable_text`].
    fn park<'a>(&'a self, lease: &'a Lease, parked: &'a ParkedEvent) -> BoxFuture<'a, Result<()>>;

    /// A subscriber's parked events in stream order.
    fn parked<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>>;

    /// Marks parked events for replay (all of the subscriber's, or one entity's); returns how
    /// many. The consumer owning their partition replays them in order.
    fn request_replay<'a>(
        &'a self,
        subscriber_id: &'a str,
        entity: Option<(&'a str, &'a str)>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Deletes the parked record of `subscriber_id` at `position`: an operator gives up on
    /// that event, which is never offered to the subscriber again, and its entity flows again
    /// (unless other events of it are parked behind it: they stay parked). Fenced like a
    /// reshape: the epoch of the record's partition is bumped in the same step, so the next
    /// write of the consumer holding it fails (at the latest, parking the entity's next event
    /// behind the deleted record), and it re-reads the parked events when it takes the
    /// partition again. A handler already running the event (a replay under way) may still
    /// complete: skipping never un-handles an event. `false` when no such record exists.
    fn skip_parked<'a>(
        &'a self,
        subscriber_id: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<bool>>;

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
    /// new attempt count and error (through [`storable_text`]) and clears the replay request.
    fn replayed<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
        failure: Option<(u32, String)>,
    ) -> BoxFuture<'a, Result<()>>;

    /// A receiver that changes whenever new events may be readable (appends in this process,
    /// notifications from others, reconnects, replay requests). Only a hint: consumers also
    /// poll.
    fn wakeups(&self) -> watch::Receiver<u64>;
}
