//! The one error type of `eventuate-core`: every failure of the store, the repository and the
//! runtime, each variant naming the entity, subscriber or position it concerns.

use std::error::Error as StdError;

/// A boxed error, as produced by user code (command handlers, event handlers) and backends.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in eventuate-rs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Optimistic concurrency: another writer appended to the entity first.
    #[error(
        "concurrency conflict on {entity_type} `{entity_id}`: expected version {expected}, \
         but the store holds version {actual}; reload the entity and process the command again"
    )]
    Conflict {
        /// Entity type, e.g. `Order`.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The version the writer based its events on.
        expected: u64,
        /// The version found in the store.
        actual: u64,
    },

    /// `create` was asked for an entity id that already has events.
    #[error("{entity_type} `{entity_id}` already exists (version {version}); use update instead")]
    EntityExists {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Its current version.
        version: u64,
    },

    /// An update or load named an entity that has no events.
    #[error("{entity_type} `{entity_id}` does not exist")]
    EntityNotFound {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
    },

    /// An append carried no events: an entity version must always grow by at least one.
    #[error(
        "append to {entity_type} `{entity_id}` carries no events; an append needs at least one"
    )]
    EmptyAppend {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
    },

    /// A command handler refused the command (a business error returned by user code).
    #[error("{entity_type} `{entity_id}` rejected command {command}: {source}")]
    Rejected {
        /// Entity type.
        entity_type: String,
        /// Entity id (empty for a rejected create without an id).
        entity_id: String,
        /// The command's type name.
        command: &'static str,
        /// The handler's error; see [`Error::rejection`] to get it back typed.
        #[source]
        source: BoxError,
    },

    /// The repository gave up after repeated concurrency conflicts.
    #[error(
        "{entity_type} `{entity_id}`: gave up after {attempts} attempts, each lost to a concurrent \
         writer; the entity is too hot for optimistic concurrency at this retry limit"
    )]
    RetriesExhausted {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Attempts made.
        attempts: u32,
    },

    /// An event id of the append is already stored, or appears twice in it: event ids are
    /// unique, so a writer that reuses one would make two events indistinguishable.
    #[error(
        "event id {event_id} in the append to {entity_type} `{entity_id}` is already taken; \
         every event needs a fresh id"
    )]
    DuplicateEventId {
        /// Entity type of the refused append.
        entity_type: String,
        /// Entity id of the refused append.
        entity_id: String,
        /// The reused event id.
        event_id: uuid::Uuid,
    },

    /// A stored event names a type the reader's event set does not know.
    #[error(
        "unknown event type `{event_type}` for {entity_type} `{entity_id}` at version {version}; \
         add it to the aggregate's events enum"
    )]
    UnknownEventType {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Entity version of the event.
        version: u64,
        /// The unknown type name.
        event_type: String,
    },

    /// A stored payload (event or snapshot) could not be decoded into its Rust type.
    #[error(
        "cannot decode {event_type} of {entity_type} `{entity_id}` at version {version}: {source}"
    )]
    Decode {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Entity version of the event (or of the snapshot).
        version: u64,
        /// Event type name (or `snapshot`).
        event_type: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// A value could not be encoded as JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded (an event type name, `snapshot`, ...).
        what: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// An event payload is not valid JSON.
    #[error("payload of {event_type} for {entity_type} `{entity_id}` is not valid JSON: {reason}")]
    InvalidPayload {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Event type name.
        event_type: String,
        /// Why it was refused.
        reason: String,
    },

    /// An event payload exceeds the store's configured maximum.
    #[error(
        "payload of {event_type} for {entity_type} `{entity_id}` is {size} bytes, over the \
         store's maximum of {max} bytes"
    )]
    PayloadTooLarge {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Event type name.
        event_type: String,
        /// Payload size in bytes.
        size: usize,
        /// Configured maximum.
        max: usize,
    },

    /// A name (entity type, entity id, subscriber id, event type, schema) is not acceptable.
    #[error("invalid {kind} `{name}`: {reason}")]
    InvalidName {
        /// What kind of name: `entity type`, `entity id`, `subscriber id`, ...
        kind: &'static str,
        /// The refused name (truncated when very long).
        name: String,
        /// Why.
        reason: &'static str,
    },

    /// A subscriber's handler failed; carries the event's coordinates.
    #[error(
        "subscriber `{subscriber}` failed on {event_type} of {entity_type} `{entity_id}` \
         (position {position}): {source}"
    )]
    Handler {
        /// Subscriber id.
        subscriber: String,
        /// Entity type of the event.
        entity_type: String,
        /// Entity id of the event.
        entity_id: String,
        /// Event type name.
        event_type: String,
        /// Global position of the event.
        position: crate::Position,
        /// The handler's error.
        #[source]
        source: BoxError,
    },

    /// Misuse of the runtime or the API (duplicate subscriber id, missing transaction, ...).
    #[error("{0}")]
    Config(String),

    /// The consumer lost its lease on a subscription partition to another process.
    #[error(
        "lease on subscriber `{subscriber}` partition {partition} was lost to another consumer"
    )]
    LeaseLost {
        /// Subscriber id.
        subscriber: String,
        /// Partition index.
        partition: u32,
    },

    /// The storage backend failed (database, network, ...).
    #[error("{context}: {source}")]
    Backend {
        /// What the store was doing.
        context: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// The typed business error behind [`Error::Rejected`], if it is an `E`.
    ///
    /// ```
    /// # use eventuate_core::Error;
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("insufficient funds")]
    /// struct InsufficientFunds;
    ///
    /// let err = Error::Rejected {
    ///     entity_type: "Account".into(),
    ///     entity_id: "a-1".into(),
    ///     command: "Withdraw",
    ///     source: Box::new(InsufficientFunds),
    /// };
    /// assert!(err.rejection::<InsufficientFunds>().is_some());
    /// ```
    pub fn rejection<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Error::Rejected { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Whether retrying the same operation can never succeed: business rejections, bad input,
    /// undecodable data, misuse. A handler error built from such an error is permanent (the
    /// event is parked without further attempts). Conflicts, lost leases and backend failures
    /// are transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Rejected { .. }
            | Error::EntityExists { .. }
            | Error::EntityNotFound { .. }
            | Error::EmptyAppend { .. }
            | Error::DuplicateEventId { .. }
            | Error::UnknownEventType { .. }
            | Error::Decode { .. }
            | Error::Encode { .. }
            | Error::InvalidPayload { .. }
            | Error::PayloadTooLarge { .. }
            | Error::InvalidName { .. }
            | Error::Config(_) => true,
            Error::Conflict { .. }
            | Error::RetriesExhausted { .. }
            | Error::Handler { .. }
            | Error::LeaseLost { .. }
            | Error::Backend { .. } => false,
        }
    }

    /// Whether this is an optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// Wraps a backend error with what the store was doing.
    pub fn backend(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}
