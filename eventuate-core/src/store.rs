//! The [`EventStore`] contract every store implements (in-memory, PostgreSQL): atomic appends
//! with optimistic concurrency and idempotency keys, entity loads, reading the global stream in
//! batches, and snapshots.
//!
//! The trait returns boxed futures so that it is dyn-compatible: handler contexts and the
//! runtime hold an `Arc<dyn EventStore>` and user code never becomes generic over the store.
//! One allocation per call is noise next to a database round trip.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::{EventEnvelope, NewEvent, Position, Result};

/// What the writer believes the entity's version is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The entity must not exist yet: this append creates it.
    New,
    /// The entity must be at exactly this version (>= 1).
    Exactly(u64),
}

/// Identifies a command sent by a subscriber in reaction to an event, so that re-delivering the
/// event cannot apply the command twice: the store records the key in the same transaction as
/// the events, and a second append with the same key is reported as
/// [`AppendOutcome::Duplicate`].
///
/// The key is recorded with the command's [`CommandFingerprint`] (the append's entity type and
/// id, and [`IdempotencyKey::command_type`]). A second append with the same key but another
/// fingerprint is not the same command sent again: the handler sent a different `sequence`-th
/// command this time, and the store refuses it with [`crate::Error::IdempotencyMismatch`]
/// instead of dropping it as a duplicate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The subscriber that handled the event.
    pub subscriber_id: String,
    /// The event it handled.
    pub triggering_event_id: Uuid,
    /// Index of the command among those the handler sent for this event (0, 1, ...).
    pub sequence: u32,
    /// The type name of the command sent under the key ([`crate::Command::command_type`],
    /// as [`crate::EventContext`] sets it): part of the command's fingerprint.
    pub command_type: String,
}

/// What a command sent under an [`IdempotencyKey`] was: its target and its type. Stores
/// record it with the key, to tell a command sent again from a different command sent under
/// the same key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CommandFingerprint {
    /// The target's entity type.
    pub entity_type: String,
    /// The target's entity id.
    pub entity_id: String,
    /// The command's type name.
    pub command_type: String,
}

impl std::fmt::Display for CommandFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` to {} `{}`",
            self.command_type, self.entity_type, self.entity_id
        )
    }
}

/// One atomic append.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    /// Entity type, e.g. `Order`.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: String,
    /// Optimistic-concurrency expectation.
    pub expected: ExpectedVersion,
    /// The events, in order; must not be empty.
    pub events: Vec<NewEvent>,
    /// Set when the append is the effect of handling an event.
    pub idempotency: Option<IdempotencyKey>,
}

impl AppendRequest {
    /// The fingerprint of the command this append carries out, when it has an idempotency key.
    pub fn fingerprint(&self) -> Option<CommandFingerprint> {
        self.idempotency.as_ref().map(|key| CommandFingerprint {
            entity_type: self.entity_type.clone(),
            entity_id: self.entity_id.clone(),
            command_type: key.command_type.clone(),
        })
    }
}

/// What a store answers for an append whose idempotency key is already recorded, given the
/// fingerprint recorded with the key: [`AppendOutcome::Duplicate`] when it is the same command,
/// [`crate::Error::IdempotencyMismatch`] when it differs. A key recorded without a fingerprint
/// (`None`: rows written before stores recorded fingerprints) is taken as the same command,
/// since there is nothing to compare with.
pub fn duplicate_or_mismatch(
    request: &AppendRequest,
    recorded: Option<CommandFingerprint>,
) -> Result<AppendOutcome> {
    let (Some(key), Some(recorded), Some(attempted)) =
        (&request.idempotency, recorded, request.fingerprint())
    else {
        return Ok(AppendOutcome::Duplicate);
    };
    if recorded == attempted {
        return Ok(AppendOutcome::Duplicate);
    }
    Err(crate::Error::IdempotencyMismatch {
        subscriber: key.subscriber_id.clone(),
        triggering_event_id: key.triggering_event_id,
        sequence: key.sequence,
        recorded,
        attempted,
    })
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events were stored.
    Appended {
        /// The entity's version after the append.
        version: u64,
        /// The positions assigned to the events, in order.
        positions: Vec<Position>,
    },
    /// An append with the same idempotency key was stored before; nothing was written.
    Duplicate,
}

/// Which part of the global stream to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamFilter {
    /// Entity types to read; empty reads every type.
    pub entity_types: Vec<String>,
    /// Read only entities of one partition (see [`crate::name::partition_of`]).
    pub partition: Option<Partition>,
}

/// A slice of the entity-id space: entities whose hash modulo `count` is `index`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Partition {
    /// This partition, `0..count`.
    pub index: u32,
    /// Number of partitions.
    pub count: u32,
}

impl StreamFilter {
    /// Every event of the given entity types.
    pub fn entity_types<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StreamFilter {
            entity_types: types.into_iter().map(Into::into).collect(),
            partition: None,
        }
    }

    /// Whether an event passes the filter (the reference semantics every store implements).
    pub fn matches(&self, entity_type: &str, entity_id: &str) -> bool {
        (self.entity_types.is_empty() || self.entity_types.iter().any(|t| t == entity_type))
            && self
                .partition
                .is_none_or(|p| crate::name::partition_of(entity_id, p.count) == p.index)
    }
}

/// One row of the global stream as a consumer receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamItem {
    /// A decoded event.
    Event(EventEnvelope),
    /// A stored row that does not decode into an envelope (metadata written by another
    /// service through SQL, say). The event carries what could be read (default metadata);
    /// the consumer parks it with `error` for its subscriber, and everything else flows.
    Undecodable {
        /// What could be read of the row.
        event: EventEnvelope,
        /// Why it does not decode.
        error: String,
    },
}

impl StreamItem {
    /// The row's event (for an undecodable row, what could be read of it).
    pub fn event(&self) -> &EventEnvelope {
        match self {
            StreamItem::Event(event) | StreamItem::Undecodable { event, .. } => event,
        }
    }
}

/// What [`EventStore::read_batch`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamBatch {
    /// The rows that pass the filter, in stream order.
    pub items: Vec<StreamItem>,
    /// How far the read looked: every row at or before it that passes the filter is in
    /// `items` (or at or before the position read after), and no row at or before it can be
    /// committed later. A consumer may move its checkpoint here even when `items` is empty,
    /// so that an idle subscriber does not read the same rows of other entity types again.
    pub scanned_to: Position,
}

/// A stored snapshot of an aggregate's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Entity type.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: String,
    /// The entity version the state includes.
    pub entity_version: u64,
    /// The aggregate's snapshot format version ([`crate::Aggregate::SNAPSHOT_VERSION`]).
    pub snapshot_version: u32,
    /// The state as JSON text.
    pub payload: String,
}

/// What rebuilding an aggregate needs of a stored event: no metadata, no position. Loading
/// only these columns is what makes a load cost about what a hand-written query costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The entity's version after this event.
    pub entity_version: u64,
    /// Type name.
    pub event_type: String,
    /// The payload as JSON text.
    pub payload: String,
    /// The payload's schema version, from the metadata (`None`: stored without one).
    pub schema_version: Option<u32>,
}

/// An entity's history under one entity type name: what [`EventStore::load_under_types`]
/// returns for each name the entity is stored under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedHistory {
    /// The entity type name the rows are stored under.
    pub entity_type: String,
    /// The latest snapshot under that name written with the requested snapshot version.
    pub snapshot: Option<Snapshot>,
    /// The events after the snapshot (all of them without one), in order.
    pub events: Vec<StoredEvent>,
}

/// A [`StoredEvent`] borrowed from the row a store is reading ([`EventStore::fold_events`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredEventRef<'a> {
    /// The entity's version after this event.
    pub entity_version: u64,
    /// Type name.
    pub event_type: &'a str,
    /// The payload as JSON text.
    pub payload: &'a str,
    /// The payload's schema version, from the metadata (`None`: stored without one).
    pub schema_version: Option<u32>,
}

impl<'a> From<&'a StoredEvent> for StoredEventRef<'a> {
    fn from(event: &'a StoredEvent) -> Self {
        StoredEventRef {
            entity_version: event.entity_version,
            event_type: &event.event_type,
            payload: &event.payload,
            schema_version: event.schema_version,
        }
    }
}

/// What [`EventStore::fold_events`] calls for each event; an error stops the read.
pub type FoldFn<'a> = dyn FnMut(StoredEventRef<'_>) -> Result<()> + Send + 'a;

/// An event store. See the module docs for why the futures are boxed.
///
/// Guarantees every implementation gives, checked by the shared behaviour suite
/// (`eventuate_core::testing::store_suite`):
/// - an append is atomic: all of its events are stored, or none;
/// - `ExpectedVersion` is enforced; a lost race is [`crate::Error::Conflict`];
/// - creating an existing entity is [`crate::Error::EntityExists`];
/// - a repeated [`IdempotencyKey`] is [`AppendOutcome::Duplicate`] and writes nothing; repeated
///   with another [`CommandFingerprint`], it is [`crate::Error::IdempotencyMismatch`] and
///   writes nothing;
/// - [`EventStore::read_stream`] never skips a committed event: reading after the last
///   position handled, repeatedly, yields every event exactly once, in an order that keeps
///   each entity's versions ascending;
/// - bad input (empty append, invalid names, invalid or oversized payloads) is a typed error
///   and leaves the store unchanged.
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to one entity, atomically.
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome>>;

    /// [`EventStore::append`] by a writer that read the entity at the version it expects from
    /// this store (a load, or an earlier append of its own): what the
    /// [`Repository`](crate::Repository) does. Events are never deleted, so that version
    /// exists, and a store may skip checking it (the check that keeps an entity's versions
    /// free of gaps): the unique version still catches every lost race. Everything else is
    /// as for `append`. An expected version the caller did not read from the store could
    /// leave a gap: call `append` for it (clients' versions, hand-built requests).
    ///
    /// The default is `append`. The PostgreSQL store saves an index probe and a heap fetch
    /// per command (about a tenth of a cached command's throughput at 32 tasks).
    fn append_after_load(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome>> {
        self.append(request)
    }

    /// Loads an entity's events with a version greater than `after_version`, in order.
    /// An unknown entity yields an empty list.
    fn load<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
    ) -> BoxFuture<'a, Result<Vec<EventEnvelope>>>;

    /// [`EventStore::load`] reduced to what folding an aggregate needs. The default maps
    /// `load`; stores override it to read less.
    fn load_for_fold<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>>> {
        Box::pin(async move {
            Ok(self
                .load(entity_type, entity_id, after_version)
                .await?
                .into_iter()
                .map(|e| StoredEvent {
                    entity_version: e.entity_version,
                    event_type: e.event_type,
                    payload: e.payload,
                    schema_version: e.metadata.schema_version,
                })
                .collect())
        })
    }

    /// Hands each event [`EventStore::load_for_fold`] would return to `apply`, in order, as it
    /// is read: a load then decodes and applies each event while the next ones arrive, and
    /// keeps no copy of them. Stops at the first error `apply` returns. The default calls
    /// `load_for_fold`; stores override it to stream.
    fn fold_events<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
        apply: &'a mut FoldFn<'_>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for event in &self
                .load_for_fold(entity_type, entity_id, after_version)
                .await?
            {
                apply(event.into())?;
            }
            Ok(())
        })
    }

    /// The latest snapshot written with `snapshot_version` and the events after it (all events
    /// when there is none): what loading an aggregate that takes snapshots needs. The default
    /// makes the two calls; stores override it to answer in one round trip.
    fn load_with_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, Result<(Option<Snapshot>, Vec<StoredEvent>)>> {
        Box::pin(async move {
            let snapshot = self
                .load_snapshot(entity_type, entity_id, snapshot_version)
                .await?;
            let after = snapshot.as_ref().map_or(0, |s| s.entity_version);
            let events = self.load_for_fold(entity_type, entity_id, after).await?;
            Ok((snapshot, events))
        })
    }

    /// Loads an entity that may be stored under any of `entity_types` (an aggregate's current
    /// name and its older names, [`crate::Aggregate::ENTITY_TYPE_ALIASES`]): one
    /// [`TypedHistory`] per name under which the entity has events, in the order of
    /// `entity_types`, each with the latest snapshot written with `snapshot_version` (none
    /// asked when `None`) and the events after it. Empty when the entity has no events under
    /// any of the names. More than one entry means the id is stored under two names, which the
    /// repository refuses. The default asks name by name; stores override it to answer in one
    /// round trip, from one view of the data.
    fn load_under_types<'a>(
        &'a self,
        entity_types: &'a [&'a str],
        entity_id: &'a str,
        snapshot_version: Option<u32>,
    ) -> BoxFuture<'a, Result<Vec<TypedHistory>>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for entity_type in entity_types {
                let (snapshot, events) = match snapshot_version {
                    Some(v) => self.load_with_snapshot(entity_type, entity_id, v).await?,
                    None => (None, self.load_for_fold(entity_type, entity_id, 0).await?),
                };
                if snapshot.is_some() || !events.is_empty() {
                    found.push(TypedHistory {
                        entity_type: (*entity_type).to_owned(),
                        snapshot,
                        events,
                    });
                }
            }
            Ok(found)
        })
    }

    /// Reads up to `limit` events after `after` in stream order.
    fn read_stream<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<EventEnvelope>>>;

    /// Reads like [`EventStore::read_stream`], but hands undecodable rows over as
    /// [`StreamItem::Undecodable`] instead of failing the whole read, and says how far it
    /// looked. The default wraps `read_stream` and claims only the last row it returned;
    /// stores override it to report their horizon.
    fn read_batch<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<StreamBatch>> {
        Box::pin(async move {
            let events = self.read_stream(after, filter, limit).await?;
            let scanned_to = events.last().map_or(after, |e| e.position.max(after));
            Ok(StreamBatch {
                items: events.into_iter().map(StreamItem::Event).collect(),
                scanned_to,
            })
        })
    }

    /// The position of the last event a reader can see now ([`Position::START`] when empty).
    fn head(&self) -> BoxFuture<'_, Result<Position>>;

    /// Stores a snapshot (replacing an older one of the same entity).
    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<()>>;

    /// The latest snapshot of an entity written with `snapshot_version`, if any.
    fn load_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>>;

    /// Whether an idempotency key is recorded: `None` if not, `Some(fingerprint)` if it is
    /// (`Some(None)`: recorded without a fingerprint, by a version before fingerprints were
    /// stored). The repository asks when a command sent under a key is rejected or decides
    /// nothing, so that a command applied once answers as a duplicate on the state it left.
    /// The default answers `None` (never recorded): stores that record keys override it.
    fn recorded_command<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<Option<CommandFingerprint>>>> {
        let _ = key;
        Box::pin(async { Ok(None) })
    }

    /// The entity types of the stored events, sorted (used to warn about subscriptions to a
    /// type nothing has written). The default reads the whole stream; stores override it
    /// with something cheaper.
    fn entity_types(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let (mut types, mut cursor) = (std::collections::BTreeSet::new(), Position::START);
            let filter = StreamFilter::default();
            loop {
                let batch = self.read_stream(cursor, &filter, 1000).await?;
                let Some(last) = batch.last() else {
                    break;
                };
                cursor = last.position;
                types.extend(batch.into_iter().map(|e| e.entity_type));
            }
            Ok(types.into_iter().collect())
        })
    }

    /// How many events follow `after` in the filtered stream (a subscriber's lag), counting
    /// at most `limit`: a lag costs at most that many rows however far behind the reader is.
    /// The default reads the stream; stores override it with a cheaper count.
    fn count_after<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let (mut count, mut cursor) = (0u64, after);
            while count < limit {
                let want = usize::try_from(limit - count)
                    .unwrap_or(usize::MAX)
                    .min(1000);
                let batch = self.read_stream(cursor, filter, want).await?;
                let Some(last) = batch.last() else {
                    break;
                };
                cursor = last.position;
                count += batch.len() as u64;
            }
            Ok(count.min(limit))
        })
    }
}

impl<S: EventStore + ?Sized> EventStore for Arc<S> {
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome>> {
        (**self).append(request)
    }
    fn append_after_load(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome>> {
        (**self).append_after_load(request)
    }
    fn load<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
    ) -> BoxFuture<'a, Result<Vec<EventEnvelope>>> {
        (**self).load(entity_type, entity_id, after_version)
    }
    fn load_for_fold<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>>> {
        (**self).load_for_fold(entity_type, entity_id, after_version)
    }
    fn fold_events<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
        apply: &'a mut FoldFn<'_>,
    ) -> BoxFuture<'a, Result<()>> {
        (**self).fold_events(entity_type, entity_id, after_version, apply)
    }
    fn load_with_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, Result<(Option<Snapshot>, Vec<StoredEvent>)>> {
        (**self).load_with_snapshot(entity_type, entity_id, snapshot_version)
    }
    fn load_under_types<'a>(
        &'a self,
        entity_types: &'a [&'a str],
        entity_id: &'a str,
        snapshot_version: Option<u32>,
    ) -> BoxFuture<'a, Result<Vec<TypedHistory>>> {
        (**self).load_under_types(entity_types, entity_id, snapshot_version)
    }
    fn read_stream<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<EventEnvelope>>> {
        (**self).read_stream(after, filter, limit)
    }
    fn read_batch<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, Result<StreamBatch>> {
        (**self).read_batch(after, filter, limit)
    }
    fn head(&self) -> BoxFuture<'_, Result<Position>> {
        (**self).head()
    }
    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<()>> {
        (**self).save_snapshot(snapshot)
    }
    fn load_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        (**self).load_snapshot(entity_type, entity_id, snapshot_version)
    }
    fn count_after<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        (**self).count_after(after, filter, limit)
    }
    fn recorded_command<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<Option<CommandFingerprint>>>> {
        (**self).recorded_command(key)
    }
    fn entity_types(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        (**self).entity_types()
    }
}

/// Checks what every store must refuse before touching storage: names, empty appends and
/// event type names. Stores call it first so that bad input never reaches the database.
pub fn validate_append(request: &AppendRequest) -> Result<()> {
    crate::name::validate_entity_type(&request.entity_type)?;
    crate::name::validate_entity_id(&request.entity_id)?;
    if request.events.is_empty() {
        return Err(crate::Error::EmptyAppend {
            entity_type: request.entity_type.clone(),
            entity_id: request.entity_id.clone(),
        });
    }
    if let ExpectedVersion::Exactly(0) = request.expected {
        return Err(crate::Error::Config(format!(
            "append to {} `{}` expects version 0; use ExpectedVersion::New to create an entity",
            request.entity_type, request.entity_id
        )));
    }
    let mut ids = std::collections::HashSet::with_capacity(request.events.len());
    for event in &request.events {
        crate::name::validate_event_type(&event.event_type)?;
        if !ids.insert(event.event_id) {
            return Err(crate::Error::DuplicateEventId {
                entity_type: request.entity_type.clone(),
                entity_id: request.entity_id.clone(),
                event_id: event.event_id,
            });
        }
    }
    if let Some(key) = &request.idempotency {
        crate::name::validate_subscriber_id(&key.subscriber_id)?;
        validate_command_type(&key.command_type)?;
    }
    Ok(())
}

/// A command type name is stored with its idempotency key: 1 to 200 bytes, no control
/// characters (type names are neither empty nor long; PostgreSQL text cannot hold NUL).
fn validate_command_type(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > crate::name::MAX_ENTITY_ID_LEN {
        "it is longer than 200 bytes"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(crate::Error::InvalidName {
        kind: "command type",
        name: name.chars().take(64).collect(),
        reason,
    })
}

/// Checks one payload: valid JSON and at most `max` bytes.
pub fn validate_payload(request: &AppendRequest, event: &NewEvent, max: usize) -> Result<()> {
    if event.payload.len() > max {
        return Err(crate::Error::PayloadTooLarge {
            entity_type: request.entity_type.clone(),
            entity_id: request.entity_id.clone(),
            event_type: event.event_type.clone(),
            size: event.payload.len(),
            max,
        });
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&event.payload) {
        return Err(crate::Error::InvalidPayload {
            entity_type: request.entity_type.clone(),
            entity_id: request.entity_id.clone(),
            event_type: event.event_type.clone(),
            reason: e.to_string(),
        });
    }
    Ok(())
}
