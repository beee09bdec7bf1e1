//! The in-memory event store: the same guarantees as the PostgreSQL store (it passes the same
//! behaviour suite), held in one process. For tests, examples and quick starts. Cloning shares
//! the store.
//!
//! Everything sits behind one mutex that is never held across an `.await`, so appends are
//! atomic and the global stream is in commit order by construction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use uuid::Uuid;

use crate::store::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, IdempotencyKey, StreamFilter,
    validate_append, validate_payload,
};
use crate::subscriber::CheckpointTransaction;
use crate::subscription_store::{Claim, LeaseInfo, ParkedEvent, PartitionKey, SubscriptionStore};
use crate::{Error, EventEnvelope, Position, Result, Snapshot};

/// Default maximum payload size: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// An [`EventStore`] and [`SubscriptionStore`] in memory.
#[derive(Clone)]
pub struct InMemoryEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    wakeups: watch::Sender<u64>,
    max_payload: usize,
}

#[derive(Default)]
struct State {
    events: Vec<EventEnvelope>,
    entities: HashMap<(String, String), Vec<usize>>,
    keys: HashSet<IdempotencyKey>,
    event_ids: HashSet<Uuid>,
    snapshots: HashMap<(String, String, u32), Snapshot>,
    transactions: u64,
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

impl fmt::Debug for InMemoryEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("InMemoryEventStore")
            .field("events", &state.events.len())
            .field("max_payload", &self.inner.max_payload)
            .finish()
    }
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_max_payload(DEFAULT_MAX_PAYLOAD_BYTES)
    }

    /// An empty store refusing payloads over `max_payload` bytes.
    pub fn with_max_payload(max_payload: usize) -> Self {
        InMemoryEventStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                wakeups: watch::Sender::new(0),
                max_payload,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave half an append behind (appends are
        // built first and pushed after all checks), so a poisoned lock is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of stored events.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether the store holds no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn wake(&self) {
        self.inner.wakeups.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn append_now(&self, request: AppendRequest) -> Result<AppendOutcome> {
        validate_append(&request)?;
        for event in &request.events {
            validate_payload(&request, event, self.inner.max_payload)?;
        }
        let mut state = self.lock();
        if let Some(key) = &request.idempotency {
            if state.keys.contains(key) {
                return Ok(AppendOutcome::Duplicate);
            }
        }
        let entity = (request.entity_type.clone(), request.entity_id.clone());
        let actual = state.entities.get(&entity).map_or(0, |v| v.len() as u64);
        match request.expected {
            ExpectedVersion::New if actual > 0 => {
                return Err(Error::EntityExists {
                    entity_type: entity.0,
                    entity_id: entity.1,
                    version: actual,
                });
            }
            ExpectedVersion::Exactly(_) if actual == 0 => {
                return Err(Error::EntityNotFound {
                    entity_type: entity.0,
                    entity_id: entity.1,
                });
            }
            ExpectedVersion::Exactly(expected) if expected != actual => {
                return Err(Error::Conflict {
                    entity_type: entity.0,
                    entity_id: entity.1,
                    expected,
                    actual,
                });
            }
            _ => {}
        }
        if let Some(taken) = request
            .events
            .iter()
            .find(|e| state.event_ids.contains(&e.event_id))
        {
            return Err(Error::DuplicateEventId {
                entity_type: entity.0,
                entity_id: entity.1,
                event_id: taken.event_id,
            });
        }
        state.transactions += 1;
        let transaction = state.transactions;
        let mut positions = Vec::with_capacity(request.events.len());
        let mut version = actual;
        for event in request.events {
            version += 1;
            let position = Position::new(transaction, state.events.len() as u64 + 1);
            positions.push(position);
            let index = state.events.len();
            state.event_ids.insert(event.event_id);
            state.events.push(EventEnvelope {
                event_id: event.event_id,
                entity_type: entity.0.clone(),
                entity_id: entity.1.clone(),
                entity_version: version,
                event_type: event.event_type,
                payload: event.payload,
                metadata: event.metadata,
                position,
            });
            state
                .entities
                .entry(entity.clone())
                .or_default()
                .push(index);
        }
        if let Some(key) = request.idempotency {
            state.keys.insert(key);
        }
        drop(state);
        self.wake();
        Ok(AppendOutcome::Appended { version, positions })
    }

    fn partition<'s>(state: &'s mut State, key: &PartitionKey) -> Option<&'s mut PartitionState> {
        state
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

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl EventStore for InMemoryEventStore {
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome>> {
        ready(self.append_now(request))
    }

    fn load<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
    ) -> BoxFuture<'a, Result<Vec<EventEnvelope>>> {
        let state = self.lock();
        let events = state
            .entities
            .get(&(entity_type.to_owned(), entity_id.to_owned()))
            .map(|indexes| {
                indexes
                    .iter()
                    .skip(usize::try_from(after_version).unwrap_or(usize::MAX))
                    .map(|i| state.events[*i].clone())
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(events))
    }

    fn read_stream<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<EventEnvelope>>> {
        let state = self.lock();
        let start = state.events.partition_point(|e| e.position <= after);
        let events = state.events[start..]
            .iter()
            .filter(|e| filter.matches(&e.entity_type, &e.entity_id))
            .take(limit)
            .cloned()
            .collect();
        ready(Ok(events))
    }

    fn head(&self) -> BoxFuture<'_, Result<Position>> {
        let head = self
            .lock()
            .events
            .last()
            .map_or(Position::START, |e| e.position);
        ready(Ok(head))
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<()>> {
        let result = (|| {
            crate::name::validate_entity_type(&snapshot.entity_type)?;
            crate::name::validate_entity_id(&snapshot.entity_id)?;
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&snapshot.payload) {
                return Err(Error::InvalidPayload {
                    entity_type: snapshot.entity_type.clone(),
                    entity_id: snapshot.entity_id.clone(),
                    event_type: "snapshot".into(),
                    reason: e.to_string(),
                });
            }
            let mut state = self.lock();
            let key = (
                snapshot.entity_type.clone(),
                snapshot.entity_id.clone(),
                snapshot.snapshot_version,
            );
            let newer = state
                .snapshots
                .get(&key)
                .is_none_or(|old| old.entity_version < snapshot.entity_version);
            if newer {
                state.snapshots.insert(key, snapshot);
            }
            Ok(())
        })();
        ready(result)
    }

    fn load_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        let snapshot = self
            .lock()
            .snapshots
            .get(&(
                entity_type.to_owned(),
                entity_id.to_owned(),
                snapshot_version,
            ))
            .cloned();
        ready(Ok(snapshot))
    }

    fn count_after<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
    ) -> BoxFuture<'a, Result<u64>> {
        let state = self.lock();
        let start = state.events.partition_point(|e| e.position <= after);
        let count = state.events[start..]
            .iter()
            .filter(|e| filter.matches(&e.entity_type, &e.entity_id))
            .count() as u64;
        ready(Ok(count))
    }
}

impl SubscriptionStore for InMemoryEventStore {
    fn heartbeat(&self, node: Uuid, ttl: Duration) -> BoxFuture<'_, Result<Vec<Uuid>>> {
        let mut state = self.lock();
        let now = Instant::now();
        state.nodes.insert(node, now + ttl);
        state.nodes.retain(|_, expires| *expires > now);
        let mut live: Vec<Uuid> = state.nodes.keys().copied().collect();
        live.sort();
        ready(Ok(live))
    }

    fn leave(&self, node: Uuid) -> BoxFuture<'_, Result<()>> {
        self.lock().nodes.remove(&node);
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
                .parked
                .entry((parked.subscriber_id.clone(), parked.event.position))
                .or_insert_with(|| parked.clone());
        }
        ready(result)
    }

    fn parked<'a>(&'a self, subscriber_id: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>> {
        let parked = self
            .lock()
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
        for p in state.parked.values_mut() {
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
                    state.parked.remove(&record);
                }
                Some((attempts, error)) => {
                    if let Some(p) = state.parked.get_mut(&record) {
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
