//! The in-memory [`SubscriptionStore`]: members, shapes, leases, checkpoints, attempt counts
//! and parked events of the dispatcher, held next to the events under the store's one mutex.
//! The protocol is the one described in [`crate::subscription_store`]; the PostgreSQL store
//! implements the same rules in SQL.
//!
//! Lease times use tokio's clock, so a test that pauses time (a deterministic simulation)
//! controls lease expiry too.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::{InMemoryEventStore, ready};
use crate::subscriber::CheckpointTransaction;
use crate::subscription_store::{
    Claim, Lease, LeaseInfo, Member, ParkedEvent, PartitionKey, Shape, StoredShape,
    SubscriberState, SubscriptionStore, storable_text,
};
use crate::{Error, Position, Result};

/// The subscription part of the store's state.
#[derive(Default)]
pub(super) struct Subscriptions {
    members: HashMap<Uuid, (Member, Instant)>,
    shapes: HashMap<String, Stored>,
    partitions: BTreeMap<(String, u32), PartitionState>,
    parked: BTreeMap<(String, Position), ParkedEvent>,
}

struct Stored {
    shape: StoredShape,
    start: Position,
}

struct PartitionState {
    generation: u64,
    epoch: u64,
    checkpoint: Position,
    attempt: Option<(Position, u32)>,
    /// Holder incarnation, its node, and when the lease expires.
    owner: Option<(Uuid, Uuid, Instant)>,
    dirty: bool,
    unowned_since: Instant,
}

impl PartitionState {
    fn new(generation: u64, epoch: u64, checkpoint: Position, dirty: bool) -> Self {
        PartitionState {
            generation,
            epoch,
            checkpoint,
            attempt: None,
            owner: None,
            dirty,
            unowned_since: Instant::now(),
        }
    }

    fn live_owner(&self, now: Instant) -> Option<(Uuid, Uuid)> {
        self.owner
            .filter(|(_, _, expires)| *expires > now)
            .map(|(holder, node, _)| (holder, node))
    }

    fn held_by(&self, holder: Uuid) -> bool {
        self.owner.is_some_and(|(h, _, _)| h == holder)
    }
}

impl Subscriptions {
    fn rows_of<'s>(
        &'s mut self,
        subscriber_id: &'s str,
    ) -> impl Iterator<Item = (&'s (String, u32), &'s mut PartitionState)> + 's {
        self.partitions
            .iter_mut()
            .filter(move |((id, _), _)| id == subscriber_id)
    }

    fn pending(&self, subscriber_id: &str) -> bool {
        let Some(stored) = self.shapes.get(subscriber_id) else {
            return false;
        };
        let mut rows = 0;
        for ((id, _), p) in &self.partitions {
            if id == subscriber_id {
                rows += 1;
                if p.generation < stored.shape.generation {
                    return true;
                }
            }
        }
        rows == 0
    }

    /// The row a lease fences, if the lease still holds it at its epoch.
    fn fenced(&mut self, lease: &Lease) -> Result<&mut PartitionState> {
        match self
            .partitions
            .get_mut(&(lease.key.subscriber_id.clone(), lease.key.partition))
        {
            Some(p) if p.held_by(lease.holder) && p.epoch == lease.epoch => Ok(p),
            _ => Err(Error::LeaseLost {
                subscriber: lease.key.subscriber_id.clone(),
                partition: lease.key.partition,
            }),
        }
    }
}

impl SubscriptionStore for InMemoryEventStore {
    fn heartbeat<'a>(
        &'a self,
        member: &'a Member,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<Member>>> {
        let mut state = self.lock();
        let now = Instant::now();
        let members = &mut state.subscriptions.members;
        members.insert(member.incarnation, (member.clone(), now + ttl));
        members.retain(|_, (_, expires)| *expires > now);
        let mut live: Vec<Member> = members.values().map(|(m, _)| m.clone()).collect();
        live.sort_by_key(|m| m.incarnation);
        ready(Ok(live))
    }

    fn leave(&self, incarnation: Uuid) -> BoxFuture<'_, Result<()>> {
        self.lock().subscriptions.members.remove(&incarnation);
        ready(Ok(()))
    }

    fn reshape<'a>(
        &'a self,
        subscriber_id: &'a str,
        shape: &'a Shape,
        start: Position,
    ) -> BoxFuture<'a, Result<StoredShape>> {
        let mut state = self.lock();
        let subs = &mut state.subscriptions;
        let stored = match subs.shapes.get_mut(subscriber_id) {
            Some(stored) if stored.shape.shape == *shape => return ready(Ok(stored.shape.clone())),
            Some(stored) => {
                stored.shape = StoredShape {
                    shape: shape.clone(),
                    generation: stored.shape.generation + 1,
                };
                stored.shape.clone()
            }
            None => {
                let stored = StoredShape {
                    shape: shape.clone(),
                    generation: 1,
                };
                subs.shapes.insert(
                    subscriber_id.to_owned(),
                    Stored {
                        shape: stored.clone(),
                        start,
                    },
                );
                stored
            }
        };
        // Fence off every consumer of an older shape at once; rows move at migration.
        for (_, p) in subs.rows_of(subscriber_id) {
            p.epoch += 1;
        }
        migrate_now(subs, subscriber_id);
        ready(Ok(stored))
    }

    fn migrate<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        ready(Ok(migrate_now(&mut state.subscriptions, subscriber_id)))
    }

    fn subscriber<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<SubscriberState>> {
        let state = self.lock();
        let subs = &state.subscriptions;
        let Some(stored) = subs.shapes.get(subscriber_id) else {
            return ready(Ok(SubscriberState::default()));
        };
        let pending = subs.pending(subscriber_id);
        let now = Instant::now();
        let partitions = if pending {
            Vec::new()
        } else {
            (0..stored.shape.shape.partitions)
                .filter_map(|partition| {
                    let p = subs
                        .partitions
                        .get(&(subscriber_id.to_owned(), partition))?;
                    let owner = p.live_owner(now);
                    Some(LeaseInfo {
                        partition,
                        owner,
                        unowned_for: owner.is_none().then(|| {
                            let since = p
                                .owner
                                .map_or(p.unowned_since, |(_, _, expires)| expires)
                                .max(p.unowned_since);
                            now.saturating_duration_since(since)
                        }),
                        checkpoint: p.checkpoint,
                    })
                })
                .collect()
        };
        ready(Ok(SubscriberState {
            shape: Some(stored.shape.clone()),
            partitions,
            migration_pending: pending,
        }))
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a PartitionKey,
        member: &'a Member,
        generation: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Claim>>> {
        let mut state = self.lock();
        let subs = &mut state.subscriptions;
        let current = subs
            .shapes
            .get(&key.subscriber_id)
            .is_some_and(|s| s.shape.generation == generation);
        if !current || subs.pending(&key.subscriber_id) {
            return ready(Ok(None));
        }
        let now = Instant::now();
        let Some(p) = subs
            .partitions
            .get_mut(&(key.subscriber_id.clone(), key.partition))
        else {
            return ready(Ok(None));
        };
        let free = match p.live_owner(now) {
            None => true,
            Some((holder, _)) => holder == member.incarnation,
        };
        if !free || p.generation != generation {
            return ready(Ok(None));
        }
        let recovered = p.dirty;
        p.epoch += 1;
        p.owner = Some((member.incarnation, member.node, now + ttl));
        p.dirty = true;
        ready(Ok(Some(Claim {
            lease: Lease {
                key: key.clone(),
                holder: member.incarnation,
                epoch: p.epoch,
            },
            checkpoint: p.checkpoint,
            attempt: p.attempt,
            recovered,
        })))
    }

    fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let now = Instant::now();
        let held = match state
            .subscriptions
            .partitions
            .get_mut(&(lease.key.subscriber_id.clone(), lease.key.partition))
        {
            Some(p) => match p.owner {
                Some((holder, node, _)) if holder == lease.holder => {
                    p.owner = Some((holder, node, now + ttl));
                    true
                }
                _ => false,
            },
            None => false,
        };
        ready(Ok(held))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        if let Some(p) = state
            .subscriptions
            .partitions
            .get_mut(&(lease.key.subscriber_id.clone(), lease.key.partition))
        {
            if p.held_by(lease.holder) {
                p.owner = None;
                p.dirty = false;
                p.unowned_since = Instant::now();
            }
        }
        ready(Ok(()))
    }

    fn save_checkpoint<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
    ) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let result = state.subscriptions.fenced(lease).map(|p| {
            p.checkpoint = p.checkpoint.max(position);
            p.attempt = None;
        });
        ready(result)
    }

    fn record_attempt<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
        attempts: u32,
    ) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let result = state.subscriptions.fenced(lease).map(|p| {
            p.attempt = Some((position, attempts));
        });
        ready(result)
    }

    fn supports_transactions(&self) -> bool {
        false
    }

    fn begin<'a>(
        &'a self,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<Box<dyn CheckpointTransaction>>> {
        ready(Err(Error::Config(format!(
            "subscriber `{}` is transactional, but the in-memory store has no transactions; \
             run it on the PostgreSQL store",
            lease.key.subscriber_id
        ))))
    }

    fn park<'a>(&'a self, lease: &'a Lease, parked: &'a ParkedEvent) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let result = state.subscriptions.fenced(lease).map(|_| ());
        if result.is_ok() {
            state
                .subscriptions
                .parked
                .entry((parked.subscriber_id.clone(), parked.event.position))
                .or_insert_with(|| ParkedEvent {
                    error: storable_text(&parked.error).into_owned(),
                    ..parked.clone()
                });
        }
        ready(result)
    }

    fn parked<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>> {
        let parked = self
            .lock()
            .subscriptions
            .parked
            .values()
            .filter(|p| p.subscriber_id == subscriber_id)
            .cloned()
            .collect();
        ready(Ok(parked))
    }

    fn request_replay<'a>(
        &'a self,
        subscriber_id: &'a str,
        entity: Option<(&'a str, &'a str)>,
    ) -> BoxFuture<'a, Result<u64>> {
        let mut state = self.lock();
        let mut count = 0;
        for p in state.subscriptions.parked.values_mut() {
            let wanted = p.subscriber_id == subscriber_id
                && entity.is_none_or(|(t, id)| p.event.entity_type == t && p.event.entity_id == id);
            if wanted {
                p.replay_requested = true;
                count += 1;
            }
        }
        drop(state);
        self.wake();
        ready(Ok(count))
    }

    fn skip_parked<'a>(
        &'a self,
        subscriber_id: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let subs = &mut state.subscriptions;
        let removed = subs.parked.remove(&(subscriber_id.to_owned(), position));
        if let Some(record) = &removed {
            if let Some(p) = subs
                .partitions
                .get_mut(&(subscriber_id.to_owned(), record.partition))
            {
                p.epoch += 1;
            }
        }
        drop(state);
        ready(Ok(removed.is_some()))
    }

    fn replayed<'a>(
        &'a self,
        lease: &'a Lease,
        position: Position,
        failure: Option<(u32, String)>,
    ) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let result = state.subscriptions.fenced(lease).map(|_| ());
        if result.is_ok() {
            let record = (lease.key.subscriber_id.clone(), position);
            match failure {
                None => {
                    state.subscriptions.parked.remove(&record);
                }
                Some((attempts, error)) => {
                    if let Some(p) = state.subscriptions.parked.get_mut(&record) {
                        p.attempts = attempts;
                        p.error = storable_text(&error).into_owned();
                        p.replay_requested = false;
                    }
                }
            }
        }
        ready(result)
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.wakeups.subscribe()
    }
}

/// Moves a subscriber's partitions to the stored generation once no older lease is live: one
/// row per partition at its old checkpoint when the partition count is unchanged, otherwise
/// every new partition at the oldest old checkpoint (at `start` when there were none), with
/// parked events re-keyed. `false` while an old lease is live.
fn migrate_now(subs: &mut Subscriptions, subscriber_id: &str) -> bool {
    if !subs.pending(subscriber_id) {
        return true;
    }
    let Some(stored) = subs.shapes.get(subscriber_id) else {
        return true;
    };
    let (generation, count, start) = (
        stored.shape.generation,
        stored.shape.shape.partitions,
        stored.start,
    );
    let now = Instant::now();
    let old: Vec<(u32, &PartitionState)> = subs
        .partitions
        .iter()
        .filter(|((id, _), _)| id == subscriber_id)
        .map(|((_, partition), p)| (*partition, p))
        .collect();
    if old.iter().any(|(_, p)| p.live_owner(now).is_some()) {
        return false;
    }
    let same_split =
        old.len() == count as usize && old.iter().all(|(partition, _)| *partition < count);
    if same_split {
        for (_, p) in subs.rows_of(subscriber_id) {
            p.generation = generation;
            p.owner = None;
        }
        return true;
    }
    let from = old.iter().map(|(_, p)| p.checkpoint).min().unwrap_or(start);
    let epoch = old.iter().map(|(_, p)| p.epoch).max().unwrap_or(0) + 1;
    let dirty = old.iter().any(|(_, p)| p.dirty);
    subs.partitions.retain(|(id, _), _| id != subscriber_id);
    for partition in 0..count {
        subs.partitions.insert(
            (subscriber_id.to_owned(), partition),
            PartitionState::new(generation, epoch, from, dirty),
        );
    }
    for p in subs.parked.values_mut() {
        if p.subscriber_id == subscriber_id {
            p.partition = crate::name::partition_of(&p.event.entity_id, count);
        }
    }
    true
}
