//! The aggregate model: an [`Aggregate`] is rebuilt by applying its events ([`Apply`]), and
//! decides on commands ([`HandleCommand`]) by returning new events or a business error. The
//! macros implement these traits; every trait can also be implemented by hand.

use crate::error::BoxError;

/// An event-sourced aggregate. Implemented by `#[aggregate]`.
///
/// State is rebuilt by applying the entity's events, in order, to [`Aggregate::initial`] (or
/// to a restored snapshot). Applying must not fail: events are facts that already happened.
pub trait Aggregate: Sized + Send + Sync + 'static {
    /// The entity type name under which events are stored, e.g. `"Order"`.
    const ENTITY_TYPE: &'static str;

    /// Older entity type names the aggregate's history may be stored under
    /// (`#[aggregate(aliases("PurchaseOrder"))]`), for a renamed aggregate. Stored rows are never
    /// rewritten: an entity is loaded under its current name and every alias; one found under
    /// an alias keeps being appended to (and snapshotted) under that name, so optimistic
    /// concurrency stays per stored (entity type, id) and a process still running the old
    /// release appends to the same rows; a new entity is created under
    /// [`Aggregate::ENTITY_TYPE`]. An id stored under two of the names is
    /// [`crate::Error::EntityUnderSeveralTypes`]. Subscriptions to the current name also read
    /// the aliases when the runtime knows the aggregate ([`crate::Eventuate::aggregate`]).
    const ENTITY_TYPE_ALIASES: &'static [&'static str] = &[];

    /// Take a snapshot every this many events (`None`: never).
    const SNAPSHOT_EVERY: Option<u64> = None;

    /// Version of the snapshot format; snapshots written under another version are ignored.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The closed set of events this aggregate emits, usually an enum with `#[derive(Events)]`.
    type Event: EventSet;

    /// The state before the entity's first event. `#[aggregate]` implements it with the
    /// struct's `Default` (one clear error where the struct is declared when it has none,
    /// rather than one at every impl that needs an aggregate).
    fn initial() -> Self;

    /// Applies one event to the state.
    fn apply(&mut self, event: &Self::Event);

    /// Serializes the state for a snapshot. `None` when the aggregate takes no snapshots.
    fn to_snapshot(&self) -> Option<Result<String, serde_json::Error>> {
        None
    }

    /// Restores the state from a snapshot. `None` when the aggregate takes no snapshots.
    fn from_snapshot(_snapshot: &str) -> Option<Result<Self, serde_json::Error>> {
        None
    }

    /// A copy of the state for the repository's aggregate cache; `None` (the default) keeps
    /// this aggregate out of the cache. `#[aggregate]` returns a clone when the struct is
    /// `Clone`.
    fn clone_for_cache(&self) -> Option<Self> {
        None
    }
}

/// Why a stored event could not be turned into an [`EventSet`] value.
#[derive(Debug)]
#[non_exhaustive]
pub enum DecodeError {
    /// The type name is not one of the set's events.
    UnknownType,
    /// The payload does not decode into the event's type.
    Json(serde_json::Error),
    /// The event was stored with a schema version this set cannot read: newer than the
    /// event's current version (written by a newer release), or older than its oldest
    /// upcaster.
    Version {
        /// The stored schema version (1 when the event was stored without one).
        stored: u32,
        /// The event's current schema version.
        current: u32,
    },
    /// An upcaster refused the stored payload.
    Upcast {
        /// The version the failing upcaster reads.
        from: u32,
        /// The upcaster's message.
        message: String,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownType => f.write_str("unknown event type"),
            DecodeError::Json(e) => write!(f, "{e}"),
            DecodeError::Version { stored, current } if stored > current => write!(
                f,
                "stored with schema version {stored}, newer than this release's version \
                 {current} of the event: written by a newer release (roll back the writer, or \
                 deploy this one's successor)"
            ),
            DecodeError::Version { stored: 0, current } => write!(
                f,
                "stored with schema version 0, which no event has (versions start at 1; this \
                 release reads version {current})"
            ),
            DecodeError::Version { stored, current } => write!(
                f,
                "stored with schema version {stored}, older than every upcaster of the event \
                 (now at version {current}): add `upcast(from = {stored}, ..)`"
            ),
            DecodeError::Upcast { from, message } => {
                write!(f, "the upcaster from version {from} failed: {message}")
            }
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Json(e) => Some(e),
            _ => None,
        }
    }
}

/// Turns the stored JSON of one schema version of an event into the next version's JSON:
/// `#[event(version = 2, upcast(from = 1, with = v1_to_v2))]`. Works on the raw JSON, so the
/// old shape needs no Rust type; stored rows are never rewritten.
pub type Upcaster = fn(serde_json::Value) -> Result<serde_json::Value, String>;

/// How one event of a set evolved: its current name and schema version, the older names it is
/// still read under, and the upcasters from older versions. Generated by `#[derive(Events)]`.
#[derive(Debug, Clone, Copy)]
pub struct EventSchema {
    /// The current type name (what is written).
    pub name: &'static str,
    /// Older type names still read as this event (`#[event(aliases(..))]`).
    pub aliases: &'static [&'static str],
    /// The current schema version (`#[event(version = N)]`, 1 by default).
    pub version: u32,
    /// `(from, upcaster)`: the upcaster from version `from` to `from + 1`, in order of
    /// `from`, the last one from `version - 1`.
    pub upcasters: &'static [(u32, Upcaster)],
}

impl EventSchema {
    /// Whether the event is stored under `event_type` (its name or one of its aliases).
    pub fn reads(&self, event_type: &str) -> bool {
        self.name == event_type || self.aliases.contains(&event_type)
    }

    /// The payload upcast from `stored` to the current version (borrowed when it already is
    /// current).
    pub fn upcast<'p>(
        &self,
        stored: u32,
        payload: &'p str,
    ) -> Result<std::borrow::Cow<'p, str>, DecodeError> {
        if stored == self.version {
            return Ok(std::borrow::Cow::Borrowed(payload));
        }
        let version_error = DecodeError::Version {
            stored,
            current: self.version,
        };
        let Some(start) = self.upcasters.iter().position(|(from, _)| *from == stored) else {
            return Err(version_error);
        };
        let mut value: serde_json::Value =
            serde_json::from_str(payload).map_err(DecodeError::Json)?;
        for (from, upcaster) in &self.upcasters[start..] {
            value = upcaster(value).map_err(|message| DecodeError::Upcast {
                from: *from,
                message,
            })?;
        }
        serde_json::to_string(&value)
            .map(std::borrow::Cow::Owned)
            .map_err(DecodeError::Json)
    }
}

/// A closed set of event types (an enum with one variant per event struct), with each event's
/// type name and its JSON encoding. Implemented by `#[derive(Events)]`.
///
/// An event's type name is the name of its struct (`OrderCreated`), not of the enum variant,
/// so that a subscriber in another service can declare its own `OrderCreated` struct.
pub trait EventSet: Sized + Send + Sync + 'static {
    /// Every type name in the set.
    const EVENT_TYPES: &'static [&'static str];

    /// This event's type name.
    fn event_type(&self) -> &'static str;

    /// The payload as JSON text.
    fn encode(&self) -> Result<String, serde_json::Error>;

    /// Decodes an event of its current schema version by its type name (or an alias).
    fn decode(event_type: &str, payload: &str) -> Result<Self, DecodeError>;

    /// How each event evolved (names, aliases, versions, upcasters). Empty (the default, for a
    /// hand-written set): every event is at version 1 under its one name.
    const SCHEMAS: &'static [EventSchema] = &[];

    /// The schema version this event is written with, recorded in its metadata.
    fn schema_version(&self) -> u32 {
        let name = self.event_type();
        Self::SCHEMAS
            .iter()
            .find(|s| s.name == name)
            .map_or(1, |s| s.version)
    }

    /// The JSON Schema of each event, by current name; `None` for an event whose type does not
    /// implement `schemars::JsonSchema`. Generated by `#[derive(Events)]` with the `schemas`
    /// feature (see [`crate::schemas`]); empty for a hand-written set.
    #[cfg(feature = "schemas")]
    fn event_schemas(
        _generator: &mut schemars::SchemaGenerator,
    ) -> Vec<(&'static str, Option<schemars::Schema>)> {
        Vec::new()
    }

    /// The schema of the event stored under `event_type` (its current name or an alias).
    fn schema(event_type: &str) -> Option<&'static EventSchema> {
        Self::SCHEMAS.iter().find(|s| s.reads(event_type))
    }

    /// The current name of the event stored under `event_type`: the name itself, or the
    /// current name of the event that has it as an alias.
    fn current_name(event_type: &str) -> &str {
        Self::schema(event_type).map_or(event_type, |s| s.name)
    }

    /// Decodes a stored event: resolves an alias, upcasts the payload from its stored schema
    /// version (`None`, an event stored before versions were recorded, counts as 1) through
    /// the chain of upcasters, and decodes the result. What loading an aggregate and the
    /// typed handlers of a subscriber use; stored rows are never rewritten.
    fn decode_stored(
        event_type: &str,
        schema_version: Option<u32>,
        payload: &str,
    ) -> Result<Self, DecodeError> {
        match Self::schema(event_type) {
            Some(schema) => {
                let payload = schema.upcast(schema_version.unwrap_or(1), payload)?;
                Self::decode(schema.name, &payload)
            }
            None => Self::decode(event_type, payload),
        }
    }
}

/// Applies events of type `E` to the aggregate. Implemented for each `#[apply]` method.
#[diagnostic::on_unimplemented(
    message = "aggregate `{Self}` has no `#[apply]` method for event `{E}`",
    label = "`{E}` cannot be applied to `{Self}`",
    note = "add `#[apply] fn on_event(&mut self, event: &{E}) {{ .. }}` to the aggregate's \
            `#[command_handler]` impl, or list the event in `#[aggregate(ignore(..))]`"
)]
pub trait Apply<E> {
    /// Applies the event.
    fn apply(&mut self, event: &E);
}

/// Routes every event of a set to the aggregate's [`Apply`] impls. Implemented by
/// `#[derive(Events)]` for every aggregate that can apply all of the set's events.
#[diagnostic::on_unimplemented(
    message = "aggregate `{A}` cannot apply every event of `{Self}`",
    note = "each event type of `{Self}` needs an `#[apply]` method on `{A}`"
)]
pub trait ApplyAll<A> {
    /// Applies `self` to the aggregate.
    fn apply_to(&self, aggregate: &mut A);
}

/// Marks `Self` as one of the events of the set `S`. Implemented by `#[derive(Events)]`; used to
/// check at compile time that a subscriber's handlers take events of the entity it subscribes to.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event of `{S}`",
    label = "this event type does not belong to the subscribed aggregate",
    note = "a handler of a subscriber with `subscribe = Aggregate` may only take that \
            aggregate's events; use `subscribe = \"Name\"` to match events by type name instead"
)]
pub trait EventOf<S: EventSet> {}

/// Decides on a command of type `C`. Implemented for each method of a `#[command_handler]` impl.
#[diagnostic::on_unimplemented(
    message = "aggregate `{Self}` has no command handler for `{C}`",
    label = "`{Self}` cannot process `{C}`",
    note = "add `fn handle(&self, command: {C}) -> Result<Event, Error>` to a \
            `#[command_handler] impl {Self}` block"
)]
pub trait HandleCommand<C>: Aggregate {
    /// The business error of the handler.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Processes the command against the current state, returning the new events. Must not
    /// mutate state; the repository may call it again on a concurrency conflict.
    fn handle(&self, command: &C) -> Result<Vec<Self::Event>, Self::Error>;
}

/// A command for aggregate `A`: any `C` for which `A: HandleCommand<C>`. Lets the repository be
/// called as `repo.update::<Order>(id, cmd)` without naming the command type.
pub trait Command<A: Aggregate>: Send + Sync + 'static {
    /// The command's type name, for metadata and errors.
    fn command_type(&self) -> &'static str;

    /// Runs the aggregate's handler.
    fn process(&self, aggregate: &A) -> Result<Vec<A::Event>, BoxError>;
}

impl<A, C> Command<A> for C
where
    A: HandleCommand<C>,
    C: Send + Sync + 'static,
{
    fn command_type(&self) -> &'static str {
        short_type_name::<C>()
    }

    fn process(&self, aggregate: &A) -> Result<Vec<A::Event>, BoxError> {
        aggregate.handle(self).map_err(|e| Box::new(e) as BoxError)
    }
}

/// The last path segment of a type's name (`my_app::orders::CreateOrder` -> `CreateOrder`).
pub fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// The starting state of a `#[aggregate]` struct: its `Default`. Used by the generated
/// [`Aggregate::initial`], so that a struct without `Default` gets one error, here.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "aggregate `{Self}` has no starting state: it needs `Default`",
    label = "add `#[derive(Default)]` (or implement `Default`) for `{Self}`",
    note = "an entity's state is rebuilt by applying its events to `Default::default()`"
)]
pub trait InitialState: Sized {
    /// `Default::default()`.
    fn initial_state() -> Self;
}

impl<T: Default> InitialState for T {
    fn initial_state() -> Self {
        T::default()
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeError;

    /// A version that does not decode says which way it is off, and what to do.
    #[test]
    fn a_version_error_says_why() {
        let newer = DecodeError::Version {
            stored: 7,
            current: 3,
        }
        .to_string();
        assert!(newer.contains("written by a newer release"), "{newer}");
        let older = DecodeError::Version {
            stored: 1,
            current: 3,
        }
        .to_string();
        assert!(older.contains("add `upcast(from = 1, ..)`"), "{older}");
        let zero = DecodeError::Version {
            stored: 0,
            current: 3,
        }
        .to_string();
        assert!(zero.contains("no event has"), "{zero}");
    }
}
