//! The in-memory event store: the same guarantees as the PostgreSQL store (it passes the same
//! behaviour suite), held in one process. For tests, examples and quick starts. Cloning shares
//! the store.
//!
//! Everything sits behind one mutex that is never held across an `.await`, so appends are
//! atomic and the global stream is in commit order by construction.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use uuid::Uuid;

mod subscriptions;

use crate::store::{
    AppendOutcome, AppendRequest, CommandFingerprint, EventStore, ExpectedVersion, IdempotencyKey,
    StoredEvent, StreamBatch, StreamFilter, StreamItem, TypedHistory, duplicate_or_mismatch,
    validate_append, validate_payload,
};

use crate::{Error, EventEnvelope, Position, Result, Snapshot};

/// Default maximum payload size: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// An [`EventStore`] and [`SubscriptionStore`](crate::runtime::SubscriptionStore) in memory.
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
    /// Processed commands: (subscriber, triggering event, sequence) and what the command was.
    keys: HashMap<(String, Uuid, u32), CommandFingerprint>,
    event_ids: HashSet<Uuid>,
    snapshots: HashMap<(String, String, u32), Snapshot>,
    transactions: u64,
    subscriptions: subscriptions::Subscriptions,
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
            if let Some(recorded) = state.keys.get(&key_of(key)) {
                return duplicate_or_mismatch(&request, Some(recorded.clone()));
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
            let fingerprint = CommandFingerprint {
                entity_type: entity.0,
                entity_id: entity.1,
                command_type: key.command_type.clone(),
            };
            state.keys.insert(key_of(&key), fingerprint);
        }
        drop(state);
        self.wake();
        Ok(AppendOutcome::Appended { version, positions })
    }
}

fn key_of(key: &IdempotencyKey) -> (String, Uuid, u32) {
    (
        key.subscriber_id.clone(),
        key.triggering_event_id,
        key.sequence,
    )
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

    /// Under one lock: one view of the data, like the PostgreSQL store's one statement.
    fn load_under_types<'a>(
        &'a self,
        entity_types: &'a [&'a str],
        entity_id: &'a str,
        snapshot_version: Option<u32>,
    ) -> BoxFuture<'a, Result<Vec<TypedHistory>>> {
        let state = self.lock();
        let mut found = Vec::new();
        for entity_type in entity_types {
            let key = ((*entity_type).to_owned(), entity_id.to_owned());
            let Some(indexes) = state.entities.get(&key) else {
                continue;
            };
            let snapshot = snapshot_version.and_then(|v| {
                state
                    .snapshots
                    .get(&(key.0.clone(), key.1.clone(), v))
                    .cloned()
            });
            let after = snapshot.as_ref().map_or(0, |s| s.entity_version);
            let events = indexes
                .iter()
                .skip(usize::try_from(after).unwrap_or(usize::MAX))
                .map(|i| {
                    let e = &state.events[*i];
                    StoredEvent {
                        entity_version: e.entity_version,
                        event_type: e.event_type.clone(),
                        payload: e.payload.clone(),
                        schema_version: e.metadata.schema_version,
                    }
                })
                .collect();
            found.push(TypedHistory {
                entity_type: key.0,
                snapshot,
                events,
            });
        }
        ready(Ok(found))
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

    fn read_batch<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<StreamBatch>> {
        let state = self.lock();
        let start = state.events.partition_point(|e| e.position <= after);
        let mut items = Vec::new();
        // Every event is final once appended: a short read looked up to the last one.
        let mut scanned_to = state.events.last().map_or(after, |e| e.position.max(after));
        for e in &state.events[start..] {
            if !filter.matches(&e.entity_type, &e.entity_id) {
                continue;
            }
            if items.len() == limit {
                break;
            }
            items.push(StreamItem::Event(e.clone()));
        }
        if items.len() == limit {
            if let Some(last) = items.last() {
                scanned_to = last.event().position;
            }
        }
        ready(Ok(StreamBatch { items, scanned_to }))
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

    fn recorded_command<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<Option<CommandFingerprint>>>> {
        let recorded = self.lock().keys.get(&key_of(key)).cloned().map(Some);
        ready(Ok(recorded))
    }

    fn entity_types(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        let types: std::collections::BTreeSet<String> = self
            .lock()
            .entities
            .keys()
            .map(|(t, _)| t.clone())
            .collect();
        ready(Ok(types.into_iter().collect()))
    }

    fn count_after<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        let state = self.lock();
        let start = state.events.partition_point(|e| e.position <= after);
        let count = state.events[start..]
            .iter()
            .filter(|e| filter.matches(&e.entity_type, &e.entity_id))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .count() as u64;
        ready(Ok(count))
    }
}
