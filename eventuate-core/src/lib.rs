#![doc = include_str!("../../README.md")]
#![warn(missing_docs)]

pub mod aggregate;
pub mod commands;
pub mod envelope;
pub mod error;
pub mod fixture;
pub mod memory;
pub mod name;
pub mod repository;
pub mod runtime;
mod schema_hooks;
#[cfg(feature = "schemas")]
pub mod schemas;
pub mod store;
pub mod subscriber;
pub mod subscriber_fixture;
pub mod subscription_store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::{
    Aggregate, Apply, ApplyAll, Command, DecodeError, EventOf, EventSchema, EventSet,
    HandleCommand, Upcaster,
};
pub use commands::CommandSet;
pub use envelope::{EventEnvelope, EventMetadata, NewEvent, Position};
pub use error::{BoxError, Error, Result};
pub use fixture::AggregateFixture;
pub use memory::InMemoryEventStore;
pub use repository::{
    CommandOptions, Committed, EXTERNAL_COMMANDS, Loaded, Repository, RepositoryOptions,
    decode_event,
};
pub use runtime::Eventuate;
pub use store::{
    AppendOutcome, AppendRequest, CommandFingerprint, EventStore, ExpectedVersion, IdempotencyKey,
    Partition, Snapshot, StoredEvent, StoredEventRef, StreamBatch, StreamFilter, StreamItem,
    TypedHistory,
};
pub use subscriber::{
    BatchOutcome, EventContext, HandlerError, RetryPolicy, StartFrom, Subscriber, Subscription,
};
pub use subscriber_fixture::{Delivery, SubscriberFixture};

pub use eventuate_macros::{Events, aggregate, command_handler, event_handler};

/// Everything an application needs in scope: `use eventuate_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Aggregate, AggregateFixture, CommandOptions, Error, EventContext, EventStore, Events,
        Eventuate, HandlerError, InMemoryEventStore, Repository, StartFrom, Subscriber, aggregate,
        command_handler, event_handler,
    };
}

/// Items used by the code the macros generate. Not a public API: may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::aggregate::{
        Aggregate, Apply, ApplyAll, DecodeError, EventOf, EventSchema, EventSet, HandleCommand,
        InitialState, Upcaster,
    };
    pub use crate::commands::{CommandDecodeError, CommandSet, CommandVisitor};
    pub use crate::envelope::EventEnvelope;
    #[cfg(feature = "schemas")]
    pub use crate::schema_hooks::probe::{SchemaFallback, SchemaProbe, SchemaViaJsonSchema};
    pub use crate::subscriber::{EventContext, HandlerError, StartFrom, Subscriber, Subscription};
    pub use crate::{
        __eventuate_command_schemas as command_schemas, __eventuate_event_schemas as event_schemas,
    };
    #[cfg(feature = "schemas")]
    pub use schemars;
    pub use serde_json;
    pub use std::boxed::Box;
    pub use std::string::String;
    pub use std::vec;
    pub use std::vec::Vec;

    /// Decodes the delivered event for a handler; a payload that does not decode is a
    /// permanent failure (retrying cannot fix it). The runtime names subscriber, entity,
    /// position and type around it ([`crate::Error::Handler`]), so the error is the cause
    /// alone (it was wrapped twice, and parked records said it all twice).
    pub fn decode_for_handler<T: serde::de::DeserializeOwned>(
        ctx: &EventContext,
    ) -> Result<T, HandlerError> {
        serde_json::from_str(&ctx.event().payload).map_err(does_not_decode::<T>)
    }

    /// The permanent failure of a payload that does not decode into `T`.
    fn does_not_decode<T>(e: serde_json::Error) -> HandlerError {
        let name = std::any::type_name::<T>();
        let name = name.rsplit("::").next().unwrap_or(name);
        HandlerError::permanent(format!("the payload does not decode into `{name}`: {e}"))
    }

    /// Decodes the delivered event for a handler of a subscriber checked against an aggregate
    /// (`subscribe = Order`): the payload is first upcast from its stored schema version
    /// through the aggregate's event set `S`, so the handler sees the current shape. Failures
    /// as for [`decode_for_handler`].
    pub fn decode_for_handler_in<S: EventSet, T: serde::de::DeserializeOwned>(
        ctx: &EventContext,
    ) -> Result<T, HandlerError> {
        let event = ctx.event();
        let payload = match S::schema(&event.event_type) {
            Some(schema) => schema
                .upcast(event.metadata.schema_version.unwrap_or(1), &event.payload)
                .map_err(HandlerError::permanent)?,
            None => std::borrow::Cow::Borrowed(event.payload.as_str()),
        };
        serde_json::from_str(&payload).map_err(does_not_decode::<T>)
    }

    /// The stored names a checked subscriber asks for: each handled name and its aliases in
    /// the aggregate's event set `S`.
    pub fn with_aliases<S: EventSet>(names: &[&'static str]) -> Vec<&'static str> {
        let mut all = Vec::with_capacity(names.len());
        for name in names {
            all.push(*name);
            if let Some(schema) = S::SCHEMAS.iter().find(|s| s.name == *name) {
                all.extend_from_slice(schema.aliases);
            }
        }
        all
    }

    /// An upcaster, named so that a function of the wrong shape is reported at `with = ..`.
    pub const fn upcaster(f: Upcaster) -> Upcaster {
        f
    }

    /// Autoref specialization for [`crate::Aggregate::clone_for_cache`]: `(&CacheProbe(x))
    /// .cache_clone()` resolves to [`CacheViaClone`] when `T: Clone` (found without autoref)
    /// and to [`CacheFallback`] otherwise.
    #[derive(Debug)]
    pub struct CacheProbe<'a, T>(pub &'a T);

    /// Picked when the aggregate is `Clone`.
    pub trait CacheViaClone<T> {
        /// A clone.
        fn cache_clone(&self) -> Option<T>;
    }

    impl<T: Clone> CacheViaClone<T> for CacheProbe<'_, T> {
        fn cache_clone(&self) -> Option<T> {
            Some(self.0.clone())
        }
    }

    /// Picked when the aggregate is not `Clone`: it stays out of the cache.
    pub trait CacheFallback<T> {
        /// Nothing.
        fn cache_clone(&self) -> Option<T>;
    }

    impl<T> CacheFallback<T> for &CacheProbe<'_, T> {
        fn cache_clone(&self) -> Option<T> {
            None
        }
    }

    /// A command of a `#[command_handler(dispatch)]` block, decoded from JSON by its type
    /// name: it must implement `Deserialize`.
    #[diagnostic::on_unimplemented(
        message = "command `{Self}` is dispatched by name (`#[command_handler(dispatch)]`), so \
                   it must implement `Deserialize`",
        label = "`{Self}` cannot be decoded from JSON",
        note = "derive it: `#[derive(serde::Deserialize)]`, or move this handler to a \
                `#[command_handler]` block without `dispatch`"
    )]
    pub trait DispatchCommand: Sized {
        /// Decodes the command, naming the field at fault.
        fn decode_command(payload: &str) -> Result<Self, crate::commands::CommandDecodeError>;
    }

    #[diagnostic::do_not_recommend]
    impl<T: serde::de::DeserializeOwned> DispatchCommand for T {
        fn decode_command(payload: &str) -> Result<Self, crate::commands::CommandDecodeError> {
            crate::commands::decode_json(payload)
        }
    }

    /// Autoref specialization for `CommandSet::rejection_json`: `(&RejectionProbe(e))
    /// .rejection_json()` is the error as JSON when it is `Serialize`, else `None`.
    #[derive(Debug)]
    pub struct RejectionProbe<'a, T>(pub &'a T);

    /// Picked when the error is `Serialize`.
    pub trait RejectionViaSerialize {
        /// The error as JSON.
        fn rejection_json(&self) -> Option<serde_json::Value>;
    }

    impl<T: serde::Serialize> RejectionViaSerialize for RejectionProbe<'_, T> {
        fn rejection_json(&self) -> Option<serde_json::Value> {
            serde_json::to_value(self.0).ok()
        }
    }

    /// Picked when the error is not `Serialize`: nothing.
    pub trait RejectionFallback {
        /// Nothing.
        fn rejection_json(&self) -> Option<serde_json::Value>;
    }

    impl<T> RejectionFallback for &RejectionProbe<'_, T> {
        fn rejection_json(&self) -> Option<serde_json::Value> {
            None
        }
    }

    /// Encodes one event struct as JSON text.
    pub fn encode<T: serde::Serialize>(event: &T) -> Result<String, serde_json::Error> {
        serde_json::to_string(event)
    }

    /// Decodes one event struct from JSON text.
    pub fn decode<T: serde::de::DeserializeOwned>(payload: &str) -> Result<T, DecodeError> {
        serde_json::from_str(payload).map_err(DecodeError::Json)
    }

    /// Clones a command that a `#[command_handler]` method takes by value. The repository may
    /// run a handler again after a concurrency conflict, so it only lends the command out.
    #[diagnostic::on_unimplemented(
        message = "command `{Self}` is taken by value, so it must implement `Clone`",
        label = "`{Self}` is not `Clone`",
        note = "the repository may run a command handler again after a concurrency conflict, \
                so it keeps the command and passes the handler a clone",
        note = "derive `Clone` for `{Self}`, or take the command by reference: \
                `command: &{Self}`"
    )]
    pub trait CloneCommand {
        /// A clone of the command.
        fn clone_command(&self) -> Self;
    }

    impl<T: Clone> CloneCommand for T {
        fn clone_command(&self) -> Self {
            self.clone()
        }
    }

    /// The state of an aggregate with `#[aggregate(snapshot_every = ..)]`, as JSON.
    #[diagnostic::on_unimplemented(
        message = "aggregate `{Self}` takes snapshots (`snapshot_every`), so it must implement \
                   `Serialize` and `Deserialize`",
        label = "`{Self}` cannot be stored as a snapshot",
        note = "derive them: `#[derive(Serialize, Deserialize)]`, or remove `snapshot_every` \
                from `#[aggregate(..)]`"
    )]
    pub trait SnapshotState: Sized {
        /// The state as JSON text.
        fn to_snapshot_json(&self) -> Result<String, serde_json::Error>;
        /// The state from JSON text.
        fn from_snapshot_json(snapshot: &str) -> Result<Self, serde_json::Error>;
    }

    // Without this, rustc explains the failure in serde's terms and lists serde's
    // implementors, a list that changes with the crate features of the build.
    #[diagnostic::do_not_recommend]
    impl<T: serde::Serialize + serde::de::DeserializeOwned> SnapshotState for T {
        fn to_snapshot_json(&self) -> Result<String, serde_json::Error> {
            serde_json::to_string(self)
        }

        fn from_snapshot_json(snapshot: &str) -> Result<Self, serde_json::Error> {
            serde_json::from_str(snapshot)
        }
    }

    /// The future of an `#[event_handler]` method, checked to be `Send` where the macro calls
    /// the method, so that a future that is not `Send` is reported at that method, with the
    /// usual causes, and once (the projection is an error type then, not a second error).
    #[diagnostic::on_unimplemented(
        message = "the future of this event handler is not `Send`",
        label = "this handler's future is not `Send`",
        note = "the runtime runs subscribers on a multi-threaded executor, so the future of \
                every `#[event_handler]` method must be `Send`",
        note = "usually a value that is not `Send` is alive across an `.await`: an `Rc`, a \
                `RefCell` borrow, or a `std::sync::MutexGuard`; drop it before the `.await` (end \
                its block), or use `Arc` or `tokio::sync::Mutex` instead"
    )]
    pub trait HandlerFuture {
        /// The future, unchanged.
        type Future: core::future::Future<Output = Self::Output> + Send;
        /// What the handler returns.
        type Output;
        /// The future, unchanged.
        fn checked(self) -> Self::Future;
    }

    #[diagnostic::do_not_recommend]
    impl<F: core::future::Future + Send> HandlerFuture for F {
        type Future = F;
        type Output = F::Output;
        fn checked(self) -> F {
            self
        }
    }

    /// The error type of an `#[event_handler]` method, converted into a [`HandlerError`];
    /// named here so that a type that does not convert is reported at the method's error
    /// type, saying which types are accepted.
    #[diagnostic::on_unimplemented(
        message = "the error type `{Self}` of an event handler does not convert into \
                   `HandlerError`",
        label = "`{Self}` is not `HandlerError` nor a `std::error::Error`",
        note = "an event handler returns `Result<(), E>` where `E` is `HandlerError` or \
                implements `std::error::Error + Send + Sync + 'static`",
        note = "for a message, return `Err(HandlerError::msg(..))` with \
                `Result<(), HandlerError>`"
    )]
    pub trait IntoHandlerError {
        /// The error as a [`HandlerError`].
        fn into_handler_error(self) -> HandlerError;
    }

    #[diagnostic::do_not_recommend]
    impl<E: Into<HandlerError>> IntoHandlerError for E {
        fn into_handler_error(self) -> HandlerError {
            self.into()
        }
    }

    /// An event returned by a `#[command_handler]` method (one event, an element of a `Vec` or
    /// of a tuple), converted into its aggregate's event set `E`: exactly `Into<E>`, named here
    /// so that a type that is not one of `E`'s events is reported at the handler's return type,
    /// saying so, instead of as a missing `From` impl at the macro.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not an event of `{E}`: a command handler returns events of its \
                   aggregate",
        label = "no variant of `{E}` holds `{Self}`",
        note = "add a variant `{Self}({Self})` to `{E}`, or return one of its events",
        note = "a command handler returns `Result<R, Error>` where `R` is one event, a `Vec` of \
                events or a tuple of events (`()` for none), each of a type that a variant of \
                `{E}` holds, or `{E}` itself"
    )]
    pub trait IntoEvent<E> {
        /// The event as a value of the set.
        fn into_event(self) -> E;
    }

    #[diagnostic::do_not_recommend]
    impl<E, T: Into<E>> IntoEvent<E> for T {
        #[inline]
        fn into_event(self) -> E {
            self.into()
        }
    }

    /// The event type of an `#[apply]` method, checked to be one of the aggregate's event set
    /// `S` (an [`EventOf<S>`], as `#[derive(Events)]` declares each of its events): an `Apply`
    /// impl for any other type is never called. Named here so that the mistake is reported at
    /// the method's event type, saying so.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not an event of `{S}`: an `#[apply]` method takes one of its \
                   aggregate's events",
        label = "no variant of `{S}` holds `{Self}`",
        note = "the aggregate applies each event of `{S}` with the `#[apply]` method for its \
                type, so a method for any other type would never run",
        note = "add a variant `{Self}({Self})` to `{S}` (an event set written by hand declares \
                its events with `impl EventOf<{S}> for {Self} {{}}`), or remove this method"
    )]
    pub trait AppliedEvent<S> {
        /// Names the check (`const _: () = <T as AppliedEvent<S>>::CHECKED;`).
        const CHECKED: () = ();
    }

    #[diagnostic::do_not_recommend]
    impl<S: EventSet, T: EventOf<S>> AppliedEvent<S> for T {}

    /// Whether `name` is one of the type names of the event set `S`, for an `#[event_handler]`
    /// subscribed to an aggregate type. The bound `T: EventOf<S>` is the compile-time check that
    /// the handler takes one of the aggregate's events.
    pub const fn is_event_of<S: EventSet, T: EventOf<S>>(name: &str) -> bool {
        let names = S::EVENT_TYPES;
        let mut i = 0;
        while i < names.len() {
            if str_eq(names[i], name) {
                return true;
            }
            i += 1;
        }
        false
    }

    const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}
