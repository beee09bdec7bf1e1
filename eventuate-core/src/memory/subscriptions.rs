//! The in-memory [`SubscriptionStore`]: leases, checkpoints, attempt counts and parked events
//! of the dispatcher, held next to the events under the store's one mutex.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use uuid::Uuid;

use super::{InMemoryEventStore, State, ready};
use crate::subscriber::CheckpointTransaction;
use crate::subscription_store::{Claim, LeaseInfo, ParkedEvent, PartitionKey, SubscriptionStore};
use crate::{Error, Position, Result};

/// The subscription part of the store's state.
#[derive(Default)]
pub(super) struct Subscriptions {
    nodes: HashMap<Uuid, Instant>,
    partitions: HashMap<(String, u32), PartitionState>,
    parked: BTreeMap<(String, Position), ParkedEvent>,
}

struct PartitionState {
    checkpoint: Position,
    attempt: Option<(Position, u32)>,
    owner: Option<(Uuid, Instant)>,
    dirty: bool,
}

impl InMemoryEventStore {
    fn partition<'s>(state: &'s mut State, key: &PartitionKey) -> Option<&'s mut PartitionState> {
        state
            .subscriptions
            .partitions
            .get_mut(&(key.subscriber_id.clone(), key.partition))
    }

    fn fenced<'s>(
        state: &'s mut State,
        key: &PartitionKey,
        node: Uuid,
    ) -> Result<&'s mut PartitionState> {
        match Self::partition(state, key) {
            Some(p) if p.owner.is_some_and(|(owner, _)| owner == node) => Ok(p),
            _ => Err(Error::LeaseLost {
                subscriber: key.subscriber_id.clone(),
                partition: key.partition,
            }),
        }
    }
}

impl SubscriptionStore for InMemoryEventStore {
    fn heartbeat(&self, node: Uuid, ttl: Duration) -> BoxFuture<'_, Result<Vec<Uuid>>> {
        let mut state = self.lock();
        let now = Instant::now();
        state.subscriptions.nodes.insert(node, now + ttl);
        state
            .subscriptions
            .nodes
            .retain(|_, expires| *expires > now);
        let mut live: Vec<Uuid> = state.subscriptions.nodes.keys().copied().collect();
        live.sort();
        ready(Ok(live))
    }

    fn leave(&self, node: Uuid) -> BoxFuture<'_, Result<()>> {
        self.lock().subscriptions.nodes.remove(&node);
        ready(Ok(()))
    }

    fn try_acquire<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        ttl: Duration,
        start: Position,
    ) -> BoxFuture<'a, Result<Option<Claim>>> {
        let mut state = self.lock();
        let now = Instant::now();
        let p = state
            .subscriptions
            .partitions
            .entry((key.subscriber_id.clone(), key.partition))
            .or_insert(PartitionState {
                checkpoint: start,
                attempt: None,
                owner: None,
                dirty: false,
            });
        let claim = match p.owner {
            Some((owner, expires)) if owner != node && expires > now => None,
            _ => {
                let recovered = p.dirty && p.owner.is_none_or(|(owner, _)| owner != node);
                p.owner = Some((node, now + ttl));
                p.dirty = true;
                Some(Claim {
                    checkpoint: p.checkpoint,
                    attempt: p.attempt,
                    recovered,
                })
            }
        };
        ready(Ok(claim))
    }

    fn renew<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let now = Instant::now();
        let held = match Self::partition(&mut state, key) {
            Some(p) => match p.owner {
                Some((owner, _)) if owner == node => {
                    p.owner = Some((node, now + ttl));
                    true
                }
                _ => false,
            },
            None => false,
        };
        ready(Ok(held))
    }

    fn release<'a>(&'a self, key: &'a PartitionKey, node: Uuid) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        if let Some(p) = Self::partition(&mut state, key) {
            if p.owner.is_some_and(|(owner, _)| owner == node) {
                p.owner = None;
                p.dirty = false;
            }
        }
        ready(Ok(()))
    }

    fn leases<'a>(
        &'a self,
        subscriber_id: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<Vec<LeaseInfo>>> {
        let state = self.lock();
        let now = Instant::now();
        let leases = (0..partitions)
            .map(|partition| LeaseInfo {
                partition,
                owner: state
                    .subscriptions
                    .partitions
                    .get(&(subscriber_id.to_owned(), partition))
                    .and_then(|p| p.owner)
                    .filter(|(_, expires)| *expires > now)
                    .map(|(owner, _)| owner),
            })
            .collect();
        ready(Ok(leases))
    }

    fn save_checkpoint<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
    ) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let result = Self::fenced(&mut state, key, node).map(|p| {
            p.checkpoint = p.checkpoint.max(position);
            p.attempt = None;
        });
        ready(result)
    }

    fn record_attempt<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
        attempts: u32,
    ) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let result = Self::fenced(&mut state, key, node).map(|p| {
            p.attempt = Some((position, attempts));
        });
        ready(result)
    }

    fn supports_transactions(&self) -> bool {
        false
    }

    fn begin<'a>(
        &'a self,
        key: &'a PartitionKey,
        _node: Uuid,
    ) -> BoxFuture<'a, Result<Box<dyn CheckpointTransaction>>> {
        ready(Err(Error::Config(format!(
            "subscriber `{}` is transactional, but the in-memory store has no transactions; \
             run it on the PostgreSQL store",
            key.subscriber_id
        ))))
    }

    fn park<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        parked: &'a ParkedEvent,
    ) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let result = Self::fenced(&mut state, key, node).map(|_| ());
        if result.is_ok() {
            state
                .subscriptions
                .parked
                .entry((parked.subscriber_id.clone(), parked.event.position))
                .or_insert_with(|| parked.clone());
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

    fn replayed<'a>(
        &'a self,
        key: &'a PartitionKey,
        node: Uuid,
        position: Position,
        failure: Option<(u32, String)>,
    ) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let result = Self::fenced(&mut state, key, node).map(|_| ());
        if result.is_ok() {
            let record = (key.subscriber_id.clone(), position);
            match failure {
                None => {
                    state.subscriptions.parked.remove(&record);
                }
                Some((attempts, error)) => {
                    if let Some(p) = state.subscriptions.parked.get_mut(&record) {
                        p.attempts = attempts;
                        p.error = error;
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
