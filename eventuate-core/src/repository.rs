//! The aggregate repository: create and update aggregates by command (load -> decide ->
//! append, retried on a concurrency conflict), load them (from the latest snapshot plus later
//! events), and take snapshots by policy. A renamed aggregate
//! ([`Aggregate::ENTITY_TYPE_ALIASES`]) is loaded under all its names and written under the
//! one its entity is stored under ([`Loaded::stored_as`]).
//!
//! ## The aggregate cache
//!
//! With `cache_capacity > 0`, an update starts from the state the previous command on the same
//! entity left behind instead of reading the entity's events again. The cache can be stale
//! (another process appended), and no outcome is ever decided on stale state:
//!
//! - a command that produces events appends them with the cached version as its expected
//!   version, so a stale state ends in a concurrency conflict, the entry is dropped and the
//!   command is retried on a fresh load. This path costs one round trip, the append;
//! - a command rejected ([`Error::Rejected`]) or deciding that nothing needs to happen (no
//!   events) on cached state writes nothing that could conflict, so the decision is confirmed
//!   first: the repository reads the entity's events after the cached version (one round
//!   trip). None: the decision stands. Some: the cached state is brought up to date with them,
//!   the command decides again on the fresh state, and the fresh state is cached.
//!
//! An entry is *taken out* while a command works on it and put back only after the command is
//! done, so two concurrent commands never share a state (the second simply loads), and
//! aggregates need not be `Clone`.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::aggregate::{Aggregate, Command, DecodeError, EventSet};
use crate::store::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, IdempotencyKey, StoredEvent,
    StoredEventRef, duplicate_or_mismatch,
};
use crate::{Error, EventEnvelope, EventMetadata, NewEvent, Position, Result, Snapshot};

/// Repository settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepositoryOptions {
    /// How many times a command is processed before a run of concurrency conflicts is given
    /// up as [`Error::RetriesExhausted`].
    pub max_attempts: u32,
    /// How many aggregates the cache keeps (0: no cache). See the module docs.
    pub cache_capacity: usize,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            max_attempts: 10,
            cache_capacity: 0,
        }
    }
}

type CacheKey = (&'static str, String);

/// A cached state: its version, the entity type name it is stored under, the state.
type CacheEntry<A> = (u64, &'static str, A);

/// What an update may do with the stored entity.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// The entity must exist; conflicts are retried.
    Update,
    /// The entity must exist at this version; a conflict is the caller's.
    Expecting(u64),
    /// A missing entity starts from [`Aggregate::initial`]; conflicts are retried.
    Upsert,
}

/// Keys an external command with a caller-chosen command id, so that it is applied at most
/// once (see [`CommandOptions::with_command_id`]).
fn external_idempotency(options: &mut CommandOptions, command_type: &str) {
    if let (None, Some(command_id)) = (&options.idempotency, options.command_id) {
        options.idempotency = Some(IdempotencyKey {
            subscriber_id: EXTERNAL_COMMANDS.to_owned(),
            triggering_event_id: command_id,
            sequence: 0,
            command_type: command_type.to_owned(),
        });
    }
}

/// Aggregate states by entity, each a `(version, stored name, A)` behind `dyn Any`; FIFO
/// eviction.
#[derive(Default)]
struct Cache {
    entries: HashMap<CacheKey, Box<dyn Any + Send>>,
    order: VecDeque<CacheKey>,
}

impl Cache {
    fn take<A: Aggregate>(&mut self, entity_id: &str) -> Option<(u64, &'static str, A)> {
        let entry = self
            .entries
            .remove(&(A::ENTITY_TYPE, entity_id.to_owned()))?;
        entry.downcast::<(u64, &'static str, A)>().ok().map(|b| *b)
    }

    fn put<A: Aggregate>(&mut self, capacity: usize, entity_id: String, entry: CacheEntry<A>) {
        let key = (A::ENTITY_TYPE, entity_id);
        if self.entries.insert(key.clone(), Box::new(entry)).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        // Keys of entries taken out and never put back linger in `order`; drop them when
        // they dominate.
        if self.order.len() > 2 * capacity.max(16) {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }
}

/// Where a command comes from: ids for cause tracing, headers, and the idempotency key of a
/// command sent by a subscriber. [`Default`] is an external command with fresh ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOptions {
    /// The command's id (a fresh one when `None`); recorded on its events.
    pub command_id: Option<Uuid>,
    /// The event whose handler sent the command (`None` for an external command).
    pub causation_id: Option<Uuid>,
    /// The correlation id of the chain (the command id when `None`: it starts a chain).
    pub correlation_id: Option<Uuid>,
    /// Headers copied onto every event.
    pub headers: BTreeMap<String, String>,
    /// Makes the append idempotent (set by [`crate::EventContext`]).
    pub idempotency: Option<IdempotencyKey>,
}

/// The subscriber id under which the command ids of external commands
/// ([`CommandOptions::with_command_id`]) are recorded as idempotency keys (with the command id
/// as the triggering event id and sequence 0). Subscriber ids starting with `eventuate.` are
/// reserved.
pub const EXTERNAL_COMMANDS: &str = "eventuate.external";

impl CommandOptions {
    /// Options with a caller-chosen command id (for example an HTTP idempotency key), which
    /// also starts the correlation chain.
    ///
    /// The command is applied at most once per command id: the id is recorded with the
    /// command's events (as the idempotency key ([`EXTERNAL_COMMANDS`], command id, 0), the
    /// mechanism that deduplicates commands sent by handlers), and sending the same command id
    /// again writes nothing and returns [`Committed::duplicate`] with the entity's current
    /// state. The same id sent with another command type or to another entity is
    /// [`Error::IdempotencyMismatch`]. A command that was rejected or produced no events
    /// records nothing, so it may be sent again.
    pub fn with_command_id(command_id: Uuid) -> Self {
        CommandOptions {
            command_id: Some(command_id),
            ..Self::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// The result of a command.
#[derive(Debug)]
pub struct Committed<A: Aggregate> {
    /// The entity's id.
    pub entity_id: String,
    /// The entity's version after the command.
    pub version: u64,
    /// The state after the command.
    pub state: A,
    /// The events the command produced (empty when it decided nothing needed to happen, or
    /// when it was a duplicate).
    pub events: Vec<A::Event>,
    /// Ids of the stored events.
    pub event_ids: Vec<Uuid>,
    /// Positions of the stored events.
    pub positions: Vec<Position>,
    /// True when the command had already been applied for the same triggering event (or, for
    /// an external command, under the same command id), so this call wrote nothing; `state`
    /// and `version` are then the entity's current ones.
    pub duplicate: bool,
    /// How many times the command was processed: 1, plus one for every concurrency conflict
    /// that made the repository load the entity again and retry.
    pub attempts: u32,
}

/// An aggregate as loaded from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The entity's id.
    pub entity_id: String,
    /// Its version (number of events).
    pub version: u64,
    /// Its state.
    pub state: A,
    /// The entity type name its history is stored under: [`Aggregate::ENTITY_TYPE`], or one
    /// of [`Aggregate::ENTITY_TYPE_ALIASES`] for an entity created before a rename (its events
    /// keep being appended under that name).
    pub stored_as: &'static str,
}

/// Creates, updates and loads aggregates on an [`EventStore`]. Cheap to clone.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn EventStore>,
    options: RepositoryOptions,
    cache: Option<Arc<Mutex<Cache>>>,
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// A repository over a store.
    pub fn new(store: impl EventStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// A repository over a shared store.
    pub fn from_arc(store: Arc<dyn EventStore>) -> Self {
        Repository {
            store,
            options: RepositoryOptions::default(),
            cache: None,
        }
    }

    /// Replaces the options (a new, empty cache if `cache_capacity > 0`).
    pub fn with_options(mut self, options: RepositoryOptions) -> Self {
        self.cache = (options.cache_capacity > 0).then(Arc::default);
        self.options = options;
        self
    }

    fn cache_take<A: Aggregate>(&self, entity_id: &str) -> Option<Loaded<A>> {
        let cache = self.cache.as_ref()?;
        let (version, stored_as, state) = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take::<A>(entity_id)?;
        Some(Loaded {
            entity_id: entity_id.to_owned(),
            version,
            state,
            stored_as,
        })
    }

    fn cache_put<A: Aggregate>(&self, loaded: Loaded<A>) {
        if let Some(cache) = &self.cache {
            cache.lock().unwrap_or_else(|p| p.into_inner()).put(
                self.options.cache_capacity,
                loaded.entity_id,
                (loaded.version, loaded.stored_as, loaded.state),
            );
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Creates an aggregate with a fresh UUID id from a command.
    pub async fn create<A: Aggregate>(&self, command: impl Command<A>) -> Result<Committed<A>> {
        self.create_with(None, command, CommandOptions::default())
            .await
    }

    /// Creates an aggregate with the given id from a command; [`Error::EntityExists`] if it
    /// exists.
    pub async fn create_with_id<A: Aggregate>(
        &self,
        entity_id: impl Into<String>,
        command: impl Command<A>,
    ) -> Result<Committed<A>> {
        self.create_with(Some(entity_id.into()), command, CommandOptions::default())
            .await
    }

    /// Creates an aggregate, with full control over ids and idempotency.
    pub async fn create_with<A: Aggregate>(
        &self,
        entity_id: Option<String>,
        command: impl Command<A>,
        options: CommandOptions,
    ) -> Result<Committed<A>> {
        let (id, command_type) = (
            entity_id.clone().unwrap_or_default(),
            command.command_type(),
        );
        let run = self.create_unobserved(entity_id, command, options);
        crate::telemetry::command(A::ENTITY_TYPE, &id, command_type, |c| c.attempts, run).await
    }

    async fn create_unobserved<A: Aggregate>(
        &self,
        entity_id: Option<String>,
        command: impl Command<A>,
        mut options: CommandOptions,
    ) -> Result<Committed<A>> {
        external_idempotency(&mut options, command.command_type());
        let entity_id = entity_id.unwrap_or_else(|| Uuid::new_v4().to_string());
        crate::name::validate_entity_id(&entity_id)?;
        let state = A::initial();
        let events = command.process(&state).map_err(|source| Error::Rejected {
            entity_type: A::ENTITY_TYPE.to_owned(),
            entity_id: entity_id.clone(),
            command: command.command_type(),
            source,
        })?;
        if events.is_empty() {
            return Err(Error::EmptyAppend {
                entity_type: A::ENTITY_TYPE.to_owned(),
                entity_id,
            });
        }
        // The store refuses a create only under the name it is made under: an id whose history
        // lives under an older name is found by a load first (one more round trip, for renamed
        // aggregates only).
        if !A::ENTITY_TYPE_ALIASES.is_empty() {
            if let Some(existing) = self.find::<A>(&entity_id).await? {
                if existing.stored_as != A::ENTITY_TYPE {
                    // The same command, applied by a process of the release before the rename.
                    if self
                        .recorded::<A>(&existing, &options, command.command_type())
                        .await?
                    {
                        return Ok(Committed {
                            entity_id,
                            version: existing.version,
                            state: existing.state,
                            events: Vec::new(),
                            event_ids: Vec::new(),
                            positions: Vec::new(),
                            duplicate: true,
                            attempts: 1,
                        });
                    }
                    return Err(Error::EntityExists {
                        entity_type: existing.stored_as.to_owned(),
                        entity_id,
                        version: existing.version,
                    });
                }
            }
        }
        let created = Loaded {
            entity_id,
            version: 0,
            state,
            stored_as: A::ENTITY_TYPE,
        };
        self.commit(created, events, command.command_type(), &options)
            .await
    }

    /// Processes a command on an existing aggregate: load, decide, append with optimistic
    /// concurrency, retried on conflict.
    pub async fn update<A: Aggregate>(
        &self,
        entity_id: &str,
        command: impl Command<A>,
    ) -> Result<Committed<A>> {
        self.update_with(entity_id, command, CommandOptions::default())
            .await
    }

    /// [`Repository::update`] with full control over ids and idempotency.
    pub async fn update_with<A: Aggregate>(
        &self,
        entity_id: &str,
        command: impl Command<A>,
        options: CommandOptions,
    ) -> Result<Committed<A>> {
        self.execute(entity_id, command, options, Mode::Update)
            .await
    }

    /// Processes a command on an existing aggregate only if it is at `expected_version` (the
    /// version a client read, e.g. from an HTTP `ETag` sent back in `If-Match`). Another
    /// stored version is [`Error::Conflict`] (with `expected` and `actual`), and it is not
    /// retried: the client decided on a state that is no longer current. A missing entity is
    /// [`Error::EntityNotFound`].
    pub async fn update_expecting<A: Aggregate>(
        &self,
        entity_id: &str,
        expected_version: u64,
        command: impl Command<A>,
    ) -> Result<Committed<A>> {
        self.update_expecting_with(
            entity_id,
            expected_version,
            command,
            CommandOptions::default(),
        )
        .await
    }

    /// [`Repository::update_expecting`] with full control over ids and idempotency.
    pub async fn update_expecting_with<A: Aggregate>(
        &self,
        entity_id: &str,
        expected_version: u64,
        command: impl Command<A>,
        options: CommandOptions,
    ) -> Result<Committed<A>> {
        self.execute(
            entity_id,
            command,
            options,
            Mode::Expecting(expected_version),
        )
        .await
    }

    /// Create-or-update: processes the command on the entity's current state, or on
    /// [`Aggregate::initial`] (for `#[aggregate]`, the struct's `Default`) when the entity has
    /// no events yet (then the events create it). The initial state is what a command sees for
    /// a new entity, so one command handler serves both cases. A concurrent create or update is retried like a conflict.
    /// A command that produces no events for a missing entity returns version 0 and writes
    /// nothing.
    pub async fn upsert<A: Aggregate>(
        &self,
        entity_id: &str,
        command: impl Command<A>,
    ) -> Result<Committed<A>> {
        self.upsert_with(entity_id, command, CommandOptions::default())
            .await
    }

    /// [`Repository::upsert`] with full control over ids and idempotency.
    pub async fn upsert_with<A: Aggregate>(
        &self,
        entity_id: &str,
        command: impl Command<A>,
        options: CommandOptions,
    ) -> Result<Committed<A>> {
        self.execute(entity_id, command, options, Mode::Upsert)
            .await
    }

    async fn execute<A: Aggregate>(
        &self,
        entity_id: &str,
        command: impl Command<A>,
        options: CommandOptions,
        mode: Mode,
    ) -> Result<Committed<A>> {
        let command_type = command.command_type();
        let run = self.execute_unobserved(entity_id, command, options, mode);
        crate::telemetry::command(A::ENTITY_TYPE, entity_id, command_type, |c| c.attempts, run)
            .await
    }

    async fn execute_unobserved<A: Aggregate>(
        &self,
        entity_id: &str,
        command: impl Command<A>,
        mut options: CommandOptions,
        mode: Mode,
    ) -> Result<Committed<A>> {
        crate::name::validate_entity_id(entity_id)?;
        external_idempotency(&mut options, command.command_type());
        // Conflict retries must reuse one command id: it is the command's identity.
        options.command_id.get_or_insert_with(Uuid::new_v4);
        let attempts = match mode {
            Mode::Expecting(_) => 1,
            Mode::Update | Mode::Upsert => self.options.max_attempts.max(1),
        };
        for attempt in 1..=attempts {
            // A client's expected version is checked against the store, not a cached state.
            let cached = match mode {
                Mode::Expecting(_) => None,
                Mode::Update | Mode::Upsert => self.cache_take::<A>(entity_id),
            };
            let (mut loaded, cached) = match cached {
                Some(cached) => (cached, true),
                None => match (mode, self.find::<A>(entity_id).await?) {
                    (_, Some(loaded)) => (loaded, false),
                    (Mode::Upsert, None) => (
                        Loaded {
                            entity_id: entity_id.to_owned(),
                            version: 0,
                            state: A::initial(),
                            stored_as: A::ENTITY_TYPE,
                        },
                        false,
                    ),
                    (Mode::Update | Mode::Expecting(_), None) => {
                        return Err(Error::EntityNotFound {
                            entity_type: A::ENTITY_TYPE.to_owned(),
                            entity_id: entity_id.to_owned(),
                        });
                    }
                },
            };
            if let Mode::Expecting(expected) = mode {
                if loaded.version != expected {
                    return Err(Error::Conflict {
                        entity_type: A::ENTITY_TYPE.to_owned(),
                        entity_id: entity_id.to_owned(),
                        expected,
                        actual: loaded.version,
                    });
                }
            }
            let mut decision = command.process(&loaded.state);
            // A rejection or a no-op decided on cached state must not rest on a stale state:
            // nothing is appended, so no optimistic concurrency would catch it.
            let appends = matches!(&decision, Ok(events) if !events.is_empty());
            if cached && !appends && self.catch_up(&mut loaded).await? {
                decision = command.process(&loaded.state);
            }
            let appends = matches!(&decision, Ok(events) if !events.is_empty());
            // A command sent again under a recorded key (a redelivered event, an external
            // command id sent twice) may be rejected, or decide nothing, on the state its first
            // run produced: it was applied, so the answer is the first run's, a duplicate.
            if !appends
                && self
                    .recorded::<A>(&loaded, &options, command.command_type())
                    .await?
            {
                return Ok(Committed {
                    entity_id: entity_id.to_owned(),
                    version: loaded.version,
                    state: loaded.state,
                    events: Vec::new(),
                    event_ids: Vec::new(),
                    positions: Vec::new(),
                    duplicate: true,
                    attempts: attempt,
                });
            }
            let events = match decision {
                Ok(events) => events,
                Err(source) => {
                    if loaded.version > 0 {
                        self.cache_put(loaded);
                    }
                    return Err(Error::Rejected {
                        entity_type: A::ENTITY_TYPE.to_owned(),
                        entity_id: entity_id.to_owned(),
                        command: command.command_type(),
                        source,
                    });
                }
            };
            if events.is_empty() {
                if self.cache.is_some() && loaded.version > 0 {
                    if let Some(copy) = loaded.state.clone_for_cache() {
                        self.cache_put(Loaded {
                            entity_id: entity_id.to_owned(),
                            version: loaded.version,
                            state: copy,
                            stored_as: loaded.stored_as,
                        });
                    }
                }
                return Ok(Committed {
                    entity_id: entity_id.to_owned(),
                    version: loaded.version,
                    state: loaded.state,
                    events,
                    event_ids: Vec::new(),
                    positions: Vec::new(),
                    duplicate: false,
                    attempts: attempt,
                });
            }
            match self
                .commit(loaded, events, command.command_type(), &options)
                .await
                .map(|committed| Committed {
                    attempts: attempt,
                    ..committed
                }) {
                Err(Error::Conflict { .. }) if !matches!(mode, Mode::Expecting(_)) => continue,
                Err(Error::EntityExists { .. }) if matches!(mode, Mode::Upsert) => continue,
                other => return other,
            }
        }
        Err(Error::RetriesExhausted {
            entity_type: A::ENTITY_TYPE.to_owned(),
            entity_id: entity_id.to_owned(),
            attempts,
        })
    }

    /// Whether the command's idempotency key is recorded with the same command (a
    /// duplicate); [`Error::IdempotencyMismatch`] if it is recorded with another.
    async fn recorded<A: Aggregate>(
        &self,
        loaded: &Loaded<A>,
        options: &CommandOptions,
        command_type: &str,
    ) -> Result<bool> {
        let Some(key) = &options.idempotency else {
            return Ok(false);
        };
        let Some(recorded) = self.store.recorded_command(key).await? else {
            return Ok(false);
        };
        // Keys are recorded with the name the entity is stored under (see `commit`).
        let request = AppendRequest {
            entity_type: loaded.stored_as.to_owned(),
            entity_id: loaded.entity_id.clone(),
            expected: ExpectedVersion::New,
            events: Vec::new(),
            idempotency: Some(IdempotencyKey {
                command_type: command_type.to_owned(),
                ..key.clone()
            }),
        };
        duplicate_or_mismatch(&request, recorded).map(|_| true)
    }

    /// Brings a cached state up to date with the events stored after its version; whether
    /// there were any. One round trip.
    async fn catch_up<A: Aggregate>(&self, loaded: &mut Loaded<A>) -> Result<bool> {
        let newer = self
            .store
            .load_for_fold(loaded.stored_as, &loaded.entity_id, loaded.version)
            .await?;
        for event in &newer {
            // Versions have no gaps: anything else means the cached state is not a prefix of
            // what the store holds, so start over from the store.
            if event.entity_version != loaded.version + 1 {
                *loaded = self.load::<A>(&loaded.entity_id).await?;
                return Ok(true);
            }
            let decoded = decode_stored::<A::Event>(loaded.stored_as, &loaded.entity_id, event)?;
            loaded.state.apply(&decoded);
            loaded.version = event.entity_version;
        }
        Ok(!newer.is_empty())
    }

    /// Appends the events to `loaded` under the name it is stored under (the current name for
    /// a new entity), so that optimistic concurrency stays on one stored (type, id) and a
    /// process of the release before a rename appends to the same rows.
    async fn commit<A: Aggregate>(
        &self,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        command_type: &'static str,
        options: &CommandOptions,
    ) -> Result<Committed<A>> {
        let Loaded {
            entity_id,
            version,
            mut state,
            stored_as,
        } = loaded;
        let attempts = 1;
        let command_id = options.command_id.unwrap_or_else(Uuid::new_v4);
        let metadata = EventMetadata {
            timestamp: std::time::SystemTime::now(),
            command_id: Some(command_id),
            command_type: Some(command_type.to_owned()),
            causation_id: options.causation_id,
            correlation_id: Some(options.correlation_id.unwrap_or(command_id)),
            headers: options.headers.clone(),
            schema_version: None,
        };
        let mut new_events = Vec::with_capacity(events.len());
        for event in &events {
            let payload = event.encode().map_err(|source| Error::Encode {
                what: event.event_type().to_owned(),
                source,
            })?;
            // Version 1 is what an event stored without a version reads as: recording it
            // would only lengthen every row of sets that never evolved.
            let schema_version = Some(event.schema_version()).filter(|v| *v != 1);
            new_events.push(NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                payload,
                metadata: EventMetadata {
                    schema_version,
                    ..metadata.clone()
                },
            });
        }
        let event_ids = new_events.iter().map(|e| e.event_id).collect();
        let request = AppendRequest {
            entity_type: stored_as.to_owned(),
            entity_id: entity_id.clone(),
            expected: if version == 0 {
                ExpectedVersion::New
            } else {
                ExpectedVersion::Exactly(version)
            },
            events: new_events,
            idempotency: options.idempotency.clone(),
        };
        // `version` was read from the store (a load, the cache of an earlier append, or the
        // catch-up of a cached state): the store need not check that it exists.
        match self.store.append_after_load(request).await? {
            AppendOutcome::Appended {
                version: new_version,
                positions,
            } => {
                for event in &events {
                    state.apply(event);
                }
                if self.cache.is_some() {
                    if let Some(copy) = state.clone_for_cache() {
                        self.cache_put(Loaded {
                            entity_id: entity_id.clone(),
                            version: new_version,
                            state: copy,
                            stored_as,
                        });
                    }
                }
                self.maybe_snapshot(stored_as, &entity_id, &state, version, new_version)
                    .await;
                Ok(Committed {
                    entity_id,
                    version: new_version,
                    state,
                    events,
                    event_ids,
                    positions,
                    duplicate: false,
                    attempts,
                })
            }
            AppendOutcome::Duplicate => {
                let loaded = self.load::<A>(&entity_id).await?;
                Ok(Committed {
                    entity_id,
                    version: loaded.version,
                    state: loaded.state,
                    events: Vec::new(),
                    event_ids: Vec::new(),
                    positions: Vec::new(),
                    duplicate: true,
                    attempts,
                })
            }
        }
    }

    async fn maybe_snapshot<A: Aggregate>(
        &self,
        stored_as: &str,
        entity_id: &str,
        state: &A,
        from: u64,
        to: u64,
    ) {
        let Some(every) = A::SNAPSHOT_EVERY.filter(|n| *n > 0) else {
            return;
        };
        if from / every == to / every {
            return;
        }
        let payload = match state.to_snapshot() {
            Some(Ok(payload)) => payload,
            Some(Err(e)) => {
                tracing::warn!(entity_type = A::ENTITY_TYPE, entity_id, error = %e, "snapshot not taken: state does not serialize");
                return;
            }
            None => return,
        };
        let snapshot = Snapshot {
            entity_type: stored_as.to_owned(),
            entity_id: entity_id.to_owned(),
            entity_version: to,
            snapshot_version: A::SNAPSHOT_VERSION,
            payload,
        };
        // A snapshot is an optimisation: failing to write one never fails the command.
        if let Err(e) = self.store.save_snapshot(snapshot).await {
            tracing::warn!(entity_type = A::ENTITY_TYPE, entity_id, error = %e, "snapshot not saved");
        }
    }

    /// Loads an aggregate; [`Error::EntityNotFound`] if it has no events.
    pub async fn load<A: Aggregate>(&self, entity_id: &str) -> Result<Loaded<A>> {
        self.find::<A>(entity_id)
            .await?
            .ok_or_else(|| Error::EntityNotFound {
                entity_type: A::ENTITY_TYPE.to_owned(),
                entity_id: entity_id.to_owned(),
            })
    }

    /// Loads an aggregate, `None` if it has no events: the latest usable snapshot (if the
    /// aggregate takes snapshots) plus the events after it. A renamed aggregate
    /// ([`Aggregate::ENTITY_TYPE_ALIASES`]) is looked up under its current name and every alias
    /// in one call ([`EventStore::load_under_types`]); [`Loaded::stored_as`] says which name
    /// it was found under, and an id found under two is
    /// [`Error::EntityUnderSeveralTypes`].
    pub async fn find<A: Aggregate>(&self, entity_id: &str) -> Result<Option<Loaded<A>>> {
        crate::name::validate_entity_id(entity_id)?;
        let snapshot_version = A::SNAPSHOT_EVERY.is_some().then_some(A::SNAPSHOT_VERSION);
        // `loaded`: a snapshot and the events after it; `None`: every event is folded as the
        // store reads it (the fast path: no alias, no snapshot).
        let (stored_as, loaded) = if A::ENTITY_TYPE_ALIASES.is_empty() {
            match snapshot_version {
                Some(v) => {
                    let (snapshot, events) = self
                        .store
                        .load_with_snapshot(A::ENTITY_TYPE, entity_id, v)
                        .await?;
                    (A::ENTITY_TYPE, Some((snapshot, events)))
                }
                None => (A::ENTITY_TYPE, None),
            }
        } else {
            match self.load_renamed::<A>(entity_id, snapshot_version).await? {
                Some((stored_as, snapshot, events)) => (stored_as, Some((snapshot, events))),
                None => return Ok(None),
            }
        };
        let (mut state, mut version) = (A::initial(), 0);
        let stored = match loaded {
            None => None,
            Some((snapshot, events)) => {
                match snapshot.map(|s| (A::from_snapshot(&s.payload), s.entity_version)) {
                    None | Some((None, _)) => Some(events),
                    Some((Some(Ok(restored)), at)) => {
                        state = restored;
                        version = at;
                        Some(events)
                    }
                    // An unreadable snapshot costs a full replay, never a wrong state.
                    Some((Some(Err(e)), at)) => {
                        tracing::warn!(
                            entity_type = stored_as,
                            entity_id,
                            version = at,
                            error = %e,
                            "ignoring snapshot that does not decode"
                        );
                        None
                    }
                }
            }
        };
        let mut apply = |event: StoredEventRef<'_>| {
            let decoded = decode_ref::<A::Event>(stored_as, entity_id, event)?;
            state.apply(&decoded);
            version = event.entity_version;
            Ok(())
        };
        match stored {
            Some(after_snapshot) => {
                for event in &after_snapshot {
                    apply(event.into())?;
                }
            }
            // Every event: decoded and applied as the store reads it.
            None => {
                self.store
                    .fold_events(stored_as, entity_id, 0, &mut apply)
                    .await?
            }
        }
        Ok((version > 0).then(|| Loaded {
            entity_id: entity_id.to_owned(),
            version,
            state,
            stored_as,
        }))
    }

    /// The history of a renamed aggregate's entity under whichever of its names it is stored
    /// (the snapshot, if asked for, and the events after it); `None` when it has none.
    async fn load_renamed<A: Aggregate>(
        &self,
        entity_id: &str,
        snapshot_version: Option<u32>,
    ) -> Result<Option<(&'static str, Option<Snapshot>, Vec<StoredEvent>)>> {
        let mut names = Vec::with_capacity(1 + A::ENTITY_TYPE_ALIASES.len());
        names.push(A::ENTITY_TYPE);
        for alias in A::ENTITY_TYPE_ALIASES {
            // A hand-written impl may repeat a name; `#[aggregate]` refuses that at compile time.
            if !names.contains(alias) {
                names.push(alias);
            }
        }
        let mut found = self
            .store
            .load_under_types(&names, entity_id, snapshot_version)
            .await?;
        if found.len() > 1 {
            return Err(Error::EntityUnderSeveralTypes {
                entity_type: A::ENTITY_TYPE.to_owned(),
                entity_id: entity_id.to_owned(),
                stored_under: found.into_iter().map(|h| h.entity_type).collect(),
            });
        }
        let Some(history) = found.pop() else {
            return Ok(None);
        };
        // The name as a `&'static str` of the aggregate's: what later appends are made under.
        let stored_as = names
            .iter()
            .copied()
            .find(|name| *name == history.entity_type)
            .ok_or_else(|| {
                Error::Config(format!(
                    "the store answered a load of {} `{entity_id}` with events under `{}`, \
                     a name it was not asked for",
                    A::ENTITY_TYPE,
                    history.entity_type
                ))
            })?;
        Ok(Some((stored_as, history.snapshot, history.events)))
    }
}

/// Decodes a stored event into an event set, with errors naming entity, version and type:
/// an alias of an event's type name reads as the event, and an older schema version is
/// upcast ([`EventSet::decode_stored`]).
pub fn decode_event<E: EventSet>(envelope: &EventEnvelope) -> Result<E> {
    decode_parts(
        &envelope.entity_type,
        &envelope.entity_id,
        envelope.entity_version,
        &envelope.event_type,
        envelope.metadata.schema_version,
        &envelope.payload,
    )
}

/// [`decode_event`] for a [`StoredEvent`] of a known entity.
pub fn decode_stored<E: EventSet>(
    entity_type: &str,
    entity_id: &str,
    event: &StoredEvent,
) -> Result<E> {
    decode_ref(entity_type, entity_id, event.into())
}

/// [`decode_stored`] for a [`StoredEventRef`].
pub fn decode_ref<E: EventSet>(
    entity_type: &str,
    entity_id: &str,
    event: StoredEventRef<'_>,
) -> Result<E> {
    decode_parts(
        entity_type,
        entity_id,
        event.entity_version,
        event.event_type,
        event.schema_version,
        event.payload,
    )
}

fn decode_parts<E: EventSet>(
    entity_type: &str,
    entity_id: &str,
    version: u64,
    event_type: &str,
    schema_version: Option<u32>,
    payload: &str,
) -> Result<E> {
    E::decode_stored(event_type, schema_version, payload).map_err(|e| match e {
        DecodeError::UnknownType => Error::UnknownEventType {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
            version,
            event_type: event_type.to_owned(),
        },
        DecodeError::Json(source) => Error::Decode {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
            version,
            event_type: event_type.to_owned(),
            source,
        },
        source => Error::Upcast {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
            version,
            event_type: event_type.to_owned(),
            source,
        },
    })
}
