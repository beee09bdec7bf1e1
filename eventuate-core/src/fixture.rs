//! Given/when/then tests for aggregates, without a store: given past events, when a command,
//! then expect events (compared by type name and JSON payload, so events need no `PartialEq`)
//! or an error.
//!
//! ```
//! # use eventuate_core::prelude::*;
//! # use serde::{Serialize, Deserialize};
//! # #[derive(Debug, Clone, Serialize, Deserialize)] pub struct Opened { pub owner: String }
//! # #[derive(Debug, Clone, Serialize, Deserialize)] pub struct Deposited { pub amount: u64 }
//! # #[derive(Debug, Clone, Events)] pub enum AccountEvent { Opened(Opened), Deposited(Deposited) }
//! # #[derive(Debug, thiserror::Error)] #[error("account is closed")] pub struct Closed;
//! # pub struct Deposit { pub amount: u64 }
//! # #[aggregate(name = "Account", events = AccountEvent)]
//! # #[derive(Debug, Default)] pub struct Account { balance: u64 }
//! # #[command_handler] impl Account {
//! #     fn deposit(&self, cmd: &Deposit) -> Result<Deposited, Closed> { Ok(Deposited { amount: cmd.amount }) }
//! #     #[apply] fn opened(&mut self, _: &Opened) {}
//! #     #[apply] fn deposited(&mut self, e: &Deposited) { self.balance += e.amount }
//! # }
//! AggregateFixture::<Account>::given([AccountEvent::from(Opened { owner: "ann".into() })])
//!     .when(Deposit { amount: 5 })
//!     .then_expect_events([Deposited { amount: 5 }]);
//! ```

use std::fmt;

use crate::aggregate::{Aggregate, Command, EventSet};
use crate::error::BoxError;

/// A given/when/then test of one aggregate.
pub struct AggregateFixture<A: Aggregate> {
    state: A,
    version: u64,
}

impl<A: Aggregate + fmt::Debug> fmt::Debug for AggregateFixture<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateFixture")
            .field("state", &self.state)
            .field("version", &self.version)
            .finish()
    }
}

impl<A: Aggregate> Default for AggregateFixture<A> {
    fn default() -> Self {
        Self::given_no_events()
    }
}

impl<A: Aggregate> AggregateFixture<A> {
    /// Starts from a new aggregate.
    pub fn given_no_events() -> Self {
        AggregateFixture {
            state: A::initial(),
            version: 0,
        }
    }

    /// Starts from the state these events produce.
    pub fn given<I, E>(events: I) -> Self
    where
        I: IntoIterator<Item = E>,
        E: Into<A::Event>,
    {
        let mut fixture = Self::given_no_events();
        for event in events {
            fixture.state.apply(&event.into());
            fixture.version += 1;
        }
        fixture
    }

    /// Starts from the state these stored events produce, each given as it sits in the store:
    /// `(event type name, schema version, payload)`. Names may be aliases and versions older
    /// than the current one: they are decoded as a load decodes them (alias resolved, payload
    /// upcast), so upcasters are tested like any other behaviour.
    ///
    /// # Panics
    ///
    /// If an event does not decode (unknown name, no upcaster chain, bad payload).
    #[track_caller]
    pub fn given_stored<I, N, P>(events: I) -> Self
    where
        I: IntoIterator<Item = (N, u32, P)>,
        N: AsRef<str>,
        P: fmt::Display,
    {
        let mut fixture = Self::given_no_events();
        for (event_type, schema_version, payload) in events {
            let (event_type, payload) = (event_type.as_ref(), payload.to_string());
            let event = A::Event::decode_stored(event_type, Some(schema_version), &payload)
                .unwrap_or_else(|e| {
                    panic!(
                        "given stored event {event_type} (schema version {schema_version}) \
                         does not decode: {e}\n  payload: {payload}"
                    )
                });
            fixture.state.apply(&event);
            fixture.version += 1;
        }
        fixture
    }

    /// Processes a command against the given state.
    pub fn when(self, command: impl Command<A>) -> FixtureOutcome<A> {
        let result = command.process(&self.state);
        FixtureOutcome {
            state: self.state,
            command: command.command_type(),
            result,
        }
    }
}

/// What a command did in a fixture; assert on it with the `then_*` methods.
pub struct FixtureOutcome<A: Aggregate> {
    state: A,
    command: &'static str,
    result: Result<Vec<A::Event>, BoxError>,
}

impl<A: Aggregate> fmt::Debug for FixtureOutcome<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixtureOutcome")
            .field("command", &self.command)
            .field("events", &self.result.as_ref().map(|e| describe(e)))
            .finish_non_exhaustive()
    }
}

fn describe<E: EventSet>(events: &[E]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let payload = e
                .encode()
                .unwrap_or_else(|err| format!("<does not encode: {err}>"));
            format!("{} {}", e.event_type(), payload)
        })
        .collect()
}

impl<A: Aggregate> FixtureOutcome<A> {
    /// Asserts the command produced exactly these events (by type name and JSON payload), and
    /// returns the state after applying them.
    #[track_caller]
    pub fn then_expect_events<I, E>(self, expected: I) -> A
    where
        I: IntoIterator<Item = E>,
        E: Into<A::Event>,
    {
        let expected: Vec<A::Event> = expected.into_iter().map(Into::into).collect();
        let events = match self.result {
            Ok(events) => events,
            Err(e) => panic!(
                "expected {} to produce events {:?}, but it was rejected: {e}",
                self.command,
                describe(&expected)
            ),
        };
        let (actual, wanted) = (describe(&events), describe(&expected));
        assert!(
            actual == wanted,
            "{} produced unexpected events\n  expected: {wanted:#?}\n  actual:   {actual:#?}",
            self.command
        );
        let mut state = self.state;
        for event in &events {
            state.apply(event);
        }
        state
    }

    /// Asserts the command was rejected with an error of type `E`, and returns it.
    #[track_caller]
    pub fn then_expect_error<E: std::error::Error + 'static>(self) -> E {
        match self.result {
            Ok(events) => panic!(
                "expected {} to be rejected with {}, but it produced {:?}",
                self.command,
                std::any::type_name::<E>(),
                describe(&events)
            ),
            Err(e) => match e.downcast::<E>() {
                Ok(e) => *e,
                Err(other) => panic!(
                    "expected {} to be rejected with {}, but it was rejected with: {other}",
                    self.command,
                    std::any::type_name::<E>()
                ),
            },
        }
    }

    /// Asserts the command was rejected with an error whose message contains `text`.
    #[track_caller]
    pub fn then_expect_error_message(self, text: &str) {
        match self.result {
            Ok(events) => panic!(
                "expected {} to be rejected with \"{text}\", but it produced {:?}",
                self.command,
                describe(&events)
            ),
            Err(e) => assert!(
                e.to_string().contains(text),
                "expected {} to be rejected with a message containing \"{text}\", got \"{e}\"",
                self.command
            ),
        }
    }

    /// The produced events (or the rejection), for custom assertions.
    pub fn into_result(self) -> Result<Vec<A::Event>, BoxError> {
        self.result
    }
}
