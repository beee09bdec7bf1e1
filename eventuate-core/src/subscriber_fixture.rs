//! Given/when/then tests for subscribers on the in-memory store: given stored events, deliver
//! them to a subscriber as the runtime would (each event its subscription wants, in stream
//! order, through an [`EventContext`]), then look at the commands it sent (the events they
//! appended, caused by the delivered events) and at whatever it wrote.
//!
//! ```
//! # use eventuate_core::prelude::*;
//! # use eventuate_core::SubscriberFixture;
//! # use serde::{Serialize, Deserialize};
//! # #[derive(Debug, Clone, Serialize, Deserialize)] pub struct Opened { pub owner: String }
//! # #[derive(Debug, Clone, Serialize, Deserialize)] pub struct Deposited { pub amount: u64 }
//! # #[derive(Debug, Clone, Events)] pub enum AccountEvent { Opened(Opened), Deposited(Deposited) }
//! # #[derive(Debug, thiserror::Error)] #[error("never")] pub struct Never;
//! # pub struct Open { pub owner: String }
//! # pub struct Deposit { pub amount: u64 }
//! # #[aggregate(name = "Account", events = AccountEvent)]
//! # #[derive(Debug, Default)] pub struct Account { balance: u64 }
//! # #[command_handler] impl Account {
//! #     fn open(&self, c: &Open) -> Result<Opened, Never> { Ok(Opened { owner: c.owner.clone() }) }
//! #     fn deposit(&self, c: &Deposit) -> Result<Deposited, Never> { Ok(Deposited { amount: c.amount }) }
//! #     #[apply] fn opened(&mut self, _: &Opened) {}
//! #     #[apply] fn deposited(&mut self, e: &Deposited) { self.balance += e.amount }
//! # }
//! /// Pays a bonus into every account that is opened.
//! pub struct Bonus;
//!
//! #[event_handler(subscribe = Account, id = "bonus")]
//! impl Bonus {
//!     async fn on_opened(&self, ctx: &EventContext, _: &Opened) -> Result<(), HandlerError> {
//!         ctx.update::<Account>(ctx.entity_id(), Deposit { amount: 10 }).await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut fixture = SubscriberFixture::new(Bonus);
//! fixture
//!     .given::<Account>("a-1", [AccountEvent::from(Opened { owner: "ann".into() })])
//!     .await;
//! let outcome = fixture.deliver().await;
//! assert_eq!(outcome.failures().count(), 0);
//! let sent = fixture.commands_sent().await;
//! assert_eq!(sent.len(), 1);
//! assert_eq!(sent[0].event_type, "Deposited");
//! # }
//! ```
//!
//! A transactional view cannot run on the in-memory store (it has no transactions): keep the
//! view's logic in a function of (the event, a connection or a plain value) that the handler
//! calls, and test that logic directly; this fixture then tests the routing and the commands.

use std::fmt;

use crate::aggregate::{Aggregate, EventSet};
use crate::store::{AppendRequest, EventStore, ExpectedVersion, StreamFilter};
use crate::subscriber::{EventContext, HandlerError, Subscriber};
use crate::{EventEnvelope, InMemoryEventStore, NewEvent, Position, Repository, Result};

/// A subscriber under test, with an in-memory store of given events.
pub struct SubscriberFixture<S: Subscriber> {
    subscriber: S,
    /// The older names of renamed entity types, as the runtime knows them.
    aliases: crate::runtime::renames::EntityTypeAliases,
    store: InMemoryEventStore,
    repository: Repository,
    /// The last position delivered.
    delivered_to: Position,
    /// Event ids delivered, to tell the commands they caused.
    delivered: Vec<uuid::Uuid>,
}

impl<S: Subscriber> fmt::Debug for SubscriberFixture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberFixture")
            .field("subscription", &self.subscriber.subscription())
            .field("delivered_to", &self.delivered_to)
            .finish_non_exhaustive()
    }
}

/// What one [`SubscriberFixture::deliver`] did: each delivered event with the handler's
/// outcome, in stream order.
#[derive(Debug)]
pub struct Delivery {
    /// The delivered events and the handler's result for each.
    pub results: Vec<(EventEnvelope, Result<(), HandlerError>)>,
}

impl Delivery {
    /// The events whose handler failed, with the error.
    pub fn failures(&self) -> impl Iterator<Item = (&EventEnvelope, &HandlerError)> {
        self.results
            .iter()
            .filter_map(|(event, result)| result.as_ref().err().map(|e| (event, e)))
    }
}

impl<S: Subscriber> SubscriberFixture<S> {
    /// A fixture with an empty in-memory store.
    pub fn new(subscriber: S) -> Self {
        let store = InMemoryEventStore::new();
        SubscriberFixture {
            subscriber,
            aliases: Default::default(),
            repository: Repository::new(store.clone()),
            store,
            delivered_to: Position::START,
            delivered: Vec::new(),
        }
    }

    /// Makes the aggregate's older entity type names known, as
    /// [`Eventuate::aggregate`](crate::Eventuate::aggregate) does for the runtime: a
    /// subscription to its current name then also receives the events stored under the older
    /// names ([`crate::Aggregate::ENTITY_TYPE_ALIASES`]), and their
    /// [`EventContext::entity_type`] is the current name (`ctx.event()` keeps the stored row).
    ///
    /// # Panics
    ///
    /// If a name would then mean two entity types (what [`crate::Eventuate::start`] refuses).
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.aliases.add(
            A::ENTITY_TYPE.to_owned(),
            A::ENTITY_TYPE_ALIASES.iter().map(|a| (*a).to_owned()),
        );
        if let Err(e) = self.aliases.validate() {
            panic!("{e}");
        }
        self
    }

    /// The store: append given events of any kind, or look at what the subscriber wrote.
    pub fn store(&self) -> &InMemoryEventStore {
        &self.store
    }

    /// The repository over the store (to create given state through commands).
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// The subscriber (to look at what it recorded).
    pub fn subscriber(&self) -> &S {
        &self.subscriber
    }

    /// Appends events to an entity of aggregate `A` (after the ones it has).
    ///
    /// # Panics
    ///
    /// If an event does not encode or the append fails: a fixture's given events are the
    /// test's own input.
    pub async fn given<A: Aggregate>(
        &mut self,
        entity_id: &str,
        events: impl IntoIterator<Item = A::Event>,
    ) -> &mut Self {
        let events: Vec<NewEvent> = events
            .into_iter()
            .map(|e| {
                let payload = e.encode().unwrap_or_else(|err| {
                    panic!("given event {} does not encode: {err}", e.event_type())
                });
                let mut event = NewEvent::new(e.event_type(), payload);
                event.metadata.schema_version = Some(e.schema_version()).filter(|v| *v != 1);
                event
            })
            .collect();
        let version = self
            .store
            .load(A::ENTITY_TYPE, entity_id, 0)
            .await
            .map_or(0, |stored| stored.len() as u64);
        let expected = match version {
            0 => ExpectedVersion::New,
            v => ExpectedVersion::Exactly(v),
        };
        if let Err(e) = self
            .store
            .append(AppendRequest {
                entity_type: A::ENTITY_TYPE.to_owned(),
                entity_id: entity_id.to_owned(),
                expected,
                events,
                idempotency: None,
            })
            .await
        {
            panic!("given events for {} `{entity_id}`: {e}", A::ENTITY_TYPE);
        }
        self
    }

    /// Delivers every stored event the subscription wants that was not delivered yet, in
    /// stream order, once each (events its handlers append are delivered by the next call,
    /// as the runtime would).
    ///
    /// # Panics
    ///
    /// If the in-memory store fails to read, which it does not.
    pub async fn deliver(&mut self) -> Delivery {
        let mut subscription = self.subscriber.subscription();
        // As the runtime does: rows under an older name of a subscribed type are delivered,
        // their context naming the current type.
        let current_names = self.aliases.widen(&mut subscription);
        let filter = StreamFilter::entity_types(subscription.entity_types.clone());
        let mut results = Vec::new();
        loop {
            let batch = match self
                .store
                .read_stream(self.delivered_to, &filter, 256)
                .await
            {
                Ok(batch) => batch,
                Err(e) => panic!("the in-memory store failed to read: {e}"),
            };
            let Some(last) = batch.last().map(|e| e.position) else {
                break;
            };
            let before = self.delivered_to;
            self.delivered_to = last;
            for event in batch {
                if event.position <= before || !subscription.handles(&event.event_type) {
                    continue;
                }
                let current = current_names.get(&event.entity_type).cloned();
                let ctx = EventContext::new(self.repository.clone(), &subscription.id, event);
                let ctx = match current {
                    Some(current) => ctx.with_current_entity_type(current),
                    None => ctx,
                };
                let result = self.subscriber.handle(&ctx).await;
                self.delivered.push(ctx.event_id());
                results.push((ctx.event().clone(), result));
            }
        }
        Delivery { results }
    }

    /// The events appended by commands the subscriber sent while handling delivered events
    /// (their causation id is a delivered event's id), in stream order.
    ///
    /// # Panics
    ///
    /// If the in-memory store fails to read, which it does not.
    pub async fn commands_sent(&self) -> Vec<EventEnvelope> {
        let mut out = Vec::new();
        let mut after = Position::START;
        loop {
            let batch = match self
                .store
                .read_stream(after, &StreamFilter::default(), 1024)
                .await
            {
                Ok(batch) => batch,
                Err(e) => panic!("the in-memory store failed to read: {e}"),
            };
            let Some(last) = batch.last().map(|e| e.position) else {
                return out;
            };
            after = last;
            out.extend(batch.into_iter().filter(|e| {
                e.metadata
                    .causation_id
                    .is_some_and(|cause| self.delivered.contains(&cause))
            }));
        }
    }
}
