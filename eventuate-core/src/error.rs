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

    /// An aggregate's entity id has events under more than one of its entity type names (its
    /// current name and its aliases, [`crate::Aggregate::ENTITY_TYPE_ALIASES`]): two histories
    /// for one id, which are never merged. Typically a process of the release before a rename
    /// created the id under the old name while one of the new release created it under the
    /// new name.
    #[error(
        "{entity_type} `{entity_id}` is stored under several of the aggregate's entity type \
         names ({}); two histories are never merged: keep one (move or delete the other's \
         rows and snapshots) before using the entity",
        stored_under.join(", ")
    )]
    EntityUnderSeveralTypes {
        /// The aggregate's current entity type name.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// The names it has events under.
        stored_under: Vec<String>,
    },

    /// An update or load named an entity that has no events.
    ///
    /// Transient ([`Error::is_permanent`] is false): in a saga the target of a command is
    /// often created by another handler, or another service, a moment after the event that
    /// sends the command, so a subscriber whose `ctx.update` finds no entity is retried with
    /// backoff and its event parked only when the retries run out. Code that knows the entity
    /// should exist by now (an HTTP `GET`, say) can still treat it as final, e.g. as a 404.
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

    /// A subscriber sent a command under an idempotency key (subscriber, triggering event,
    /// `sequence`) already recorded for a *different* command: another target entity, entity
    /// type or command type than on the attempt that was stored. Re-delivery is only safe when
    /// a handler sends the same commands, in the same order, every time it handles an event;
    /// this one did not, and taking its command for a duplicate would drop it silently.
    /// Nothing was written. Permanent: the key stays recorded with the first command, so every
    /// retry meets the same refusal; fix the handler (decide from the event and from state
    /// that does not change between attempts) and replay the parked event.
    #[error(
        "subscriber `{subscriber}` sent {attempted} as command #{sequence} for event \
         {triggering_event_id}, but that key was recorded for {recorded} on an earlier attempt; \
         a handler must send the same commands, in the same order, on every attempt"
    )]
    IdempotencyMismatch {
        /// The subscriber that sent the command.
        subscriber: String,
        /// The event whose handling sent it.
        triggering_event_id: uuid::Uuid,
        /// Index of the command among those the handler sent for the event.
        sequence: u32,
        /// The command recorded under the key.
        recorded: crate::store::CommandFingerprint,
        /// The command this attempt sent.
        attempted: crate::store::CommandFingerprint,
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

    /// A stored event's schema version could not be brought to the event's current version:
    /// no upcaster chain from it (a newer writer, or an upcaster removed), or an upcaster
    /// refused the payload.
    #[error(
        "cannot upcast {event_type} of {entity_type} `{entity_id}` (entity version {version}): {source}"
    )]
    Upcast {
        /// Entity type.
        entity_type: String,
        /// Entity id.
        entity_id: String,
        /// Entity version of the event.
        version: u64,
        /// The stored event type name.
        event_type: String,
        /// Why.
        #[source]
        source: crate::DecodeError,
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

    /// Misuse of the runtime or the API (duplicate subscriber id, missing transaction, ...):
    /// permanent, the same call fails the same way until the code or configuration changes.
    /// Situations that can pass on a later attempt have their own transient variants
    /// ([`Error::OrderingRefused`], [`Error::Timeout`]).
    #[error("{0}")]
    Config(String),

    /// An append inside the caller's transaction (`PostgresEventStore::append_in`) was refused
    /// because the entity's current `version` was written by a transaction that started after
    /// the caller's: appending `version + 1` there would put the entity's events backwards in
    /// the stream. Nothing was written. Transient: roll the transaction back and run it again
    /// (a new transaction is younger than the one that wrote `version`); appending before the
    /// transaction's other writes makes it rare.
    #[error(
        "append to {entity_type} `{entity_id}` refused: version {version} was written by a \
         transaction younger than the one appending version {next}, so appending here would \
         order the entity's events backwards in the stream; retry the append in a new \
         transaction (or append before the transaction's other writes)",
        next = .version + 1
    )]
    OrderingRefused {
        /// Entity type of the refused append.
        entity_type: String,
        /// Entity id of the refused append.
        entity_id: String,
        /// The entity's version the append was to build on.
        version: u64,
    },

    /// Waiting for something took longer than allowed. Transient: what was awaited may still
    /// happen; wait again or with a longer timeout.
    #[error("{what} did not happen within {after:?}")]
    Timeout {
        /// What was awaited, e.g. `subscribers catching up`, with whatever state explains it.
        what: String,
        /// How long was waited.
        after: std::time::Duration,
    },

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

    /// Subscribers caught up, but with events parked (their handler failed until the retries
    /// ran out, or failed permanently): from [`crate::runtime::CaughtUp::nothing_parked`].
    /// Transient: a replay after a fix ([`crate::runtime::Running::replay`]) can deliver them.
    #[error(
        "subscriber `{subscriber}` has {count} parked event(s): their handler failed and the \
         checkpoint moved past them; see Running::parked(\"{subscriber}\") for the errors, fix the \
         handler and call Running::replay"
    )]
    Parked {
        /// The subscriber with parked events.
        subscriber: String,
        /// How many it has.
        count: u64,
    },

    /// The storage backend failed after the operation may have reached it: for an append, the
    /// connection broke (reset, closed, TLS or protocol failure) after the statement was sent,
    /// so the events may or may not be stored. Transient, but not blindly repeatable: reload
    /// the entity (or send the command again under the same command id,
    /// [`crate::CommandOptions::with_command_id`], which is applied at most once) to find
    /// out. See [`Error::outcome_unknown`].
    #[error("{context}: {source} (the operation may or may not have taken effect)")]
    OutcomeUnknown {
        /// What the store was doing.
        context: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },

    /// The storage backend failed (database, network, ...) before anything could be written,
    /// or the database refused the operation: nothing was written (for an append: no
    /// connection could be had, the pool timed out, or the statement failed). Failures after
    /// which a write may have happened are [`Error::OutcomeUnknown`].
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

    /// Whether retrying the same operation can never succeed. A handler error built from such
    /// an error is permanent (the event is parked without further attempts); any other error
    /// is retried with backoff, and parked only when the retries run out.
    ///
    /// | permanent | transient |
    /// | --- | --- |
    /// | `Rejected` (business rule), `EntityExists` | `Conflict`, `RetriesExhausted` (concurrency) |
    /// | `EmptyAppend`, `DuplicateEventId`, `InvalidPayload`, `PayloadTooLarge`, `InvalidName` (bad input) | `EntityNotFound` (the target may be created a moment later, see its docs) |
    /// | `UnknownEventType`, `Decode`, `Encode` (data the code cannot read or write) | `OrderingRefused` (retry in a new transaction), `Timeout` |
    /// | `IdempotencyMismatch` (a handler sent different commands on different attempts) | `LeaseLost`, `Backend`, `OutcomeUnknown` (infrastructure) |
    /// | `Config` (misuse) | `Handler` (a handler's own error), `Parked` (replay after a fix) |
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Rejected { .. }
            | Error::EntityExists { .. }
            | Error::EntityUnderSeveralTypes { .. }
            | Error::EmptyAppend { .. }
            | Error::DuplicateEventId { .. }
            | Error::IdempotencyMismatch { .. }
            | Error::UnknownEventType { .. }
            | Error::Decode { .. }
            | Error::Upcast { .. }
            | Error::Encode { .. }
            | Error::InvalidPayload { .. }
            | Error::PayloadTooLarge { .. }
            | Error::InvalidName { .. }
            | Error::Config(_) => true,
            Error::Conflict { .. }
            | Error::EntityNotFound { .. }
            | Error::OrderingRefused { .. }
            | Error::Timeout { .. }
            | Error::RetriesExhausted { .. }
            | Error::Handler { .. }
            | Error::LeaseLost { .. }
            | Error::Parked { .. }
            | Error::OutcomeUnknown { .. }
            | Error::Backend { .. } => false,
        }
    }

    /// Whether the failed operation may nevertheless have taken effect: true for
    /// [`Error::OutcomeUnknown`] (the connection broke after a write was sent), false for
    /// every other error, whose operation wrote nothing (a [`Error::Backend`] failure to get a
    /// connection, a pool timeout, a statement the database refused; invalid input; a
    /// conflict; a rejection). An HTTP handler can answer "unknown, retry with the same
    /// idempotency key" instead of "failed".
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// Wraps a backend error that happened after a write may have reached the backend
    /// ([`Error::OutcomeUnknown`]).
    pub fn backend_outcome_unknown(
        context: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::OutcomeUnknown {
            context: context.into(),
            source: source.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entity_id: &str) -> (String, String) {
        ("Order".to_owned(), entity_id.to_owned())
    }

    fn fingerprint(entity_id: &str) -> crate::store::CommandFingerprint {
        crate::store::CommandFingerprint {
            entity_type: "Order".into(),
            entity_id: entity_id.into(),
            command_type: "Cancel".into(),
        }
    }

    /// One value of every variant with the classification it must have. `index` matches
    /// without a wildcard, so a new variant does not compile until it is classified here.
    fn every_variant() -> Vec<(Error, bool)> {
        let (entity_type, entity_id) = names("o-1");
        let json = || serde_json::from_str::<u8>("x").unwrap_err();
        vec![
            (
                Error::Conflict {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    expected: 1,
                    actual: 2,
                },
                false,
            ),
            (
                Error::EntityExists {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    version: 1,
                },
                true,
            ),
            (
                Error::EntityNotFound {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                },
                false,
            ),
            (
                Error::EntityUnderSeveralTypes {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    stored_under: vec!["Order".into(), "PurchaseOrder".into()],
                },
                true,
            ),
            (
                Error::EmptyAppend {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                },
                true,
            ),
            (
                Error::Rejected {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    command: "Cancel",
                    source: "no".into(),
                },
                true,
            ),
            (
                Error::RetriesExhausted {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    attempts: 10,
                },
                false,
            ),
            (
                Error::DuplicateEventId {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    event_id: uuid::Uuid::nil(),
                },
                true,
            ),
            (
                Error::UnknownEventType {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    version: 1,
                    event_type: "X".into(),
                },
                true,
            ),
            (
                Error::Decode {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    version: 1,
                    event_type: "X".into(),
                    source: json(),
                },
                true,
            ),
            (
                Error::Upcast {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    version: 1,
                    event_type: "X".into(),
                    source: crate::DecodeError::Version {
                        stored: 3,
                        current: 2,
                    },
                },
                true,
            ),
            (
                Error::Encode {
                    what: "X".into(),
                    source: json(),
                },
                true,
            ),
            (
                Error::InvalidPayload {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    event_type: "X".into(),
                    reason: "not JSON".into(),
                },
                true,
            ),
            (
                Error::PayloadTooLarge {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    event_type: "X".into(),
                    size: 2,
                    max: 1,
                },
                true,
            ),
            (
                Error::InvalidName {
                    kind: "entity id",
                    name: String::new(),
                    reason: "it is empty",
                },
                true,
            ),
            (
                Error::Handler {
                    subscriber: "s".into(),
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    event_type: "X".into(),
                    position: crate::Position::START,
                    source: "failed".into(),
                },
                false,
            ),
            (Error::Config("duplicate subscriber id".into()), true),
            (
                Error::OrderingRefused {
                    entity_type: entity_type.clone(),
                    entity_id: entity_id.clone(),
                    version: 1,
                },
                false,
            ),
            (
                Error::Timeout {
                    what: "subscribers catching up".into(),
                    after: std::time::Duration::from_secs(5),
                },
                false,
            ),
            (
                Error::LeaseLost {
                    subscriber: "s".into(),
                    partition: 0,
                },
                false,
            ),
            (Error::backend("read", "connection reset"), false),
            (
                Error::IdempotencyMismatch {
                    subscriber: "s".into(),
                    triggering_event_id: uuid::Uuid::nil(),
                    sequence: 0,
                    recorded: fingerprint("o-1"),
                    attempted: fingerprint("o-2"),
                },
                true,
            ),
            (
                Error::Parked {
                    subscriber: "s".into(),
                    count: 2,
                },
                false,
            ),
            (
                Error::backend_outcome_unknown("append", "connection reset"),
                false,
            ),
        ]
    }

    fn index(error: &Error) -> usize {
        match error {
            Error::Conflict { .. } => 0,
            Error::EntityExists { .. } => 1,
            Error::EntityNotFound { .. } => 2,
            Error::EmptyAppend { .. } => 3,
            Error::Rejected { .. } => 4,
            Error::RetriesExhausted { .. } => 5,
            Error::DuplicateEventId { .. } => 6,
            Error::UnknownEventType { .. } => 7,
            Error::Decode { .. } => 8,
            Error::Encode { .. } => 9,
            Error::InvalidPayload { .. } => 10,
            Error::PayloadTooLarge { .. } => 11,
            Error::InvalidName { .. } => 12,
            Error::Handler { .. } => 13,
            Error::Config(_) => 14,
            Error::OrderingRefused { .. } => 15,
            Error::Timeout { .. } => 16,
            Error::LeaseLost { .. } => 17,
            Error::Backend { .. } => 18,
            Error::IdempotencyMismatch { .. } => 19,
            Error::Parked { .. } => 20,
            Error::OutcomeUnknown { .. } => 21,
            Error::Upcast { .. } => 22,
            Error::EntityUnderSeveralTypes { .. } => 23,
        }
    }

    #[test]
    fn every_variant_is_classified_permanent_or_transient() {
        let table = every_variant();
        let mut covered: Vec<usize> = table.iter().map(|(e, _)| index(e)).collect();
        covered.sort_unstable();
        assert_eq!(
            covered,
            (0..table.len()).collect::<Vec<_>>(),
            "the table lists each variant once"
        );
        for (error, permanent) in &table {
            assert_eq!(error.is_permanent(), *permanent, "{error:?}");
            assert_eq!(
                error.outcome_unknown(),
                index(error) == 21,
                "only OutcomeUnknown may have taken effect: {error:?}"
            );
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn transient_cases_say_what_to_retry() {
        let refused = Error::OrderingRefused {
            entity_type: "Order".into(),
            entity_id: "o-1".into(),
            version: 3,
        };
        let message = refused.to_string();
        assert!(message.contains("version 3"), "{message}");
        assert!(message.contains("appending version 4"), "{message}");
        assert!(message.contains("new transaction"), "{message}");
        let timeout = Error::Timeout {
            what: "subscribers catching up".into(),
            after: std::time::Duration::from_millis(1500),
        };
        assert_eq!(
            timeout.to_string(),
            "subscribers catching up did not happen within 1.5s"
        );
    }

    #[test]
    fn an_idempotency_mismatch_names_both_commands() {
        let error = Error::IdempotencyMismatch {
            subscriber: "saga".into(),
            triggering_event_id: uuid::Uuid::nil(),
            sequence: 1,
            recorded: fingerprint("o-1"),
            attempted: fingerprint("o-2"),
        };
        let message = error.to_string();
        assert!(message.contains("`Cancel` to Order `o-1`"), "{message}");
        assert!(message.contains("`Cancel` to Order `o-2`"), "{message}");
        assert!(message.contains("command #1"), "{message}");
    }
}
