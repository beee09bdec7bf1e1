//! The code the macros generate, executed: command routing (one event, a tuple, a `Vec`),
//! apply routing and ignored events, the event set's type names and JSON, snapshots, and
//! subscribers matching events by stored name, called directly with a hand-built context.

#![allow(clippy::unwrap_used)]

use eventuate_core::prelude::*;
use eventuate_core::{
    DecodeError, EventEnvelope, EventMetadata, EventSet, HandleCommand, Position, Subscription,
};
use uuid::Uuid;

mod orders {
    use eventuate_core::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct OrderCreated {
        pub customer_id: String,
        pub total: u64,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct OrderApproved {
        pub by: String,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct OrderShipped {
        pub carrier: String,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct OrderNoted {
        pub note: String,
    }

    #[derive(Debug, Clone, PartialEq, Events)]
    pub enum OrderEvent {
        Created(OrderCreated),
        Approved(OrderApproved),
        Shipped(OrderShipped),
        #[event(name = "OrderNoteV2")]
        Noted(OrderNoted),
    }

    #[aggregate(
        name = "Order",
        events = OrderEvent,
        snapshot_every = 2,
        snapshot_version = 3,
        ignore(OrderNoted)
    )]
    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Order {
        pub customer_id: String,
        pub total: u64,
        pub approved_by: Option<String>,
        pub carrier: Option<String>,
        /// How many events went through an `#[apply]` method.
        pub applied: u32,
    }

    #[derive(Debug, Clone)]
    pub struct CreateOrder {
        pub customer_id: String,
        pub total: u64,
    }
    /// Not `Clone`: taken by reference.
    #[derive(Debug)]
    pub struct ApproveAndShip {
        pub by: String,
        pub carrier: String,
    }
    #[derive(Debug)]
    pub struct AddNotes {
        pub notes: Vec<String>,
    }

    #[derive(Debug, PartialEq, thiserror::Error)]
    pub enum OrderError {
        #[error("the order already exists")]
        AlreadyCreated,
        #[error("the total must be positive")]
        ZeroTotal,
        #[error("the order is already approved")]
        AlreadyApproved,
    }

    #[command_handler]
    impl Order {
        fn create(&self, command: CreateOrder) -> Result<OrderCreated, OrderError> {
            if !self.customer_id.is_empty() {
                return Err(OrderError::AlreadyCreated);
            }
            if command.total == 0 {
                return Err(OrderError::ZeroTotal);
            }
            Ok(OrderCreated {
                customer_id: command.customer_id,
                total: command.total,
            })
        }

        fn approve_and_ship(
            &self,
            command: &ApproveAndShip,
        ) -> Result<(OrderApproved, OrderShipped), OrderError> {
            if self.approved_by.is_some() {
                return Err(OrderError::AlreadyApproved);
            }
            Ok((
                OrderApproved {
                    by: command.by.clone(),
                },
                OrderShipped {
                    carrier: command.carrier.clone(),
                },
            ))
        }

        fn add_notes(&self, command: &AddNotes) -> Result<Vec<OrderNoted>, OrderError> {
            Ok(command
                .notes
                .iter()
                .map(|note| OrderNoted { note: note.clone() })
                .collect())
        }

        #[apply]
        fn on_created(&mut self, event: &OrderCreated) {
            self.customer_id = event.customer_id.clone();
            self.total = event.total;
            self.applied += 1;
        }

        #[apply]
        fn on_approved(&mut self, event: &OrderApproved) {
            self.approved_by = Some(event.by.clone());
            self.applied += 1;
        }

        #[apply]
        fn on_shipped(&mut self, event: &OrderShipped) {
            self.carrier = Some(event.carrier.clone());
            self.applied += 1;
        }
    }

    /// An aggregate with the defaults: named after its struct, no snapshots.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Ticked {}

    #[derive(Debug, Clone, PartialEq, Events)]
    pub enum CounterEvent {
        Ticked(Ticked),
    }

    #[aggregate(events = CounterEvent)]
    #[derive(Debug, Default)]
    pub struct Counter {
        pub ticks: u32,
    }

    #[derive(Debug, Clone)]
    pub struct Tick;

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    pub struct Never;

    #[command_handler]
    impl Counter {
        fn tick(&self, _: Tick) -> Result<Vec<CounterEvent>, Never> {
            Ok(vec![CounterEvent::Ticked(Ticked {})])
        }

        #[apply]
        fn on_ticked(&mut self, _: &Ticked) {
            self.ticks += 1;
        }
    }
}

/// A subscriber in "another service": it declares its own `OrderCreated`, with fewer fields,
/// and matches the aggregate's events by their stored names.
mod billing {
    use std::sync::Mutex;

    use eventuate_core::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    pub struct OrderCreated {
        pub total: u64,
    }

    #[derive(Debug, Deserialize)]
    pub struct Note {
        pub note: String,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("billing is down for order {0}")]
    pub struct BillingDown(pub String);

    #[derive(Debug, Default)]
    pub struct Billing {
        pub seen: Mutex<Vec<String>>,
        pub fail: bool,
    }

    #[event_handler(
        subscribe = ["Order", "Customer"],
        id = "billing",
        start = "now",
        partitions = 3,
        max_attempts = 7,
        transactional = false
    )]
    impl Billing {
        async fn bill(&self, ctx: &EventContext, event: &OrderCreated) -> Result<(), BillingDown> {
            if self.fail {
                return Err(BillingDown(ctx.entity_id().to_owned()));
            }
            let line = format!("bill {} {}", ctx.entity_id(), event.total);
            self.seen.lock().unwrap().push(line);
            Ok(())
        }

        #[event(name = "OrderNoteV2")]
        async fn note(&self, _ctx: &EventContext, event: &Note) -> Result<(), HandlerError> {
            self.seen
                .lock()
                .unwrap()
                .push(format!("note {}", event.note));
            Ok(())
        }
    }
}

/// A subscriber checked against the aggregate at compile time (`subscribe = Order`), with the
/// defaults for everything else; it sends a command back through the context.
mod shipping {
    use std::sync::Mutex;

    use eventuate_core::prelude::*;

    use crate::orders::{ApproveAndShip, Order, OrderCreated, OrderNoted};

    #[derive(Debug, Default)]
    pub struct ShippingWorkflow {
        pub notes: Mutex<Vec<String>>,
    }

    #[event_handler(subscribe = Order, transactional, start = "beginning")]
    impl ShippingWorkflow {
        async fn on_created(
            &self,
            ctx: &EventContext,
            _: &OrderCreated,
        ) -> Result<(), HandlerError> {
            let command = ApproveAndShip {
                by: "shipping".into(),
                carrier: "post".into(),
            };
            ctx.update::<Order>(ctx.entity_id(), command).await?;
            Ok(())
        }

        // The aggregate stores `OrderNoted` as "OrderNoteV2"; the build checks the name.
        #[event(name = "OrderNoteV2")]
        async fn on_noted(&self, _: &EventContext, event: &OrderNoted) -> Result<(), HandlerError> {
            self.notes.lock().unwrap().push(event.note.clone());
            Ok(())
        }
    }
}

/// An audit log: a typed handler for `OrderCreated`, and a `#[catch_all]` method for every
/// other event of the subscribed entity types.
mod audit {
    use std::sync::Mutex;

    use eventuate_core::prelude::*;

    use crate::orders::{Order, OrderCreated};

    #[derive(Debug, thiserror::Error)]
    #[error("the audit log is full")]
    pub struct Full;

    #[derive(Debug, Default)]
    pub struct AuditLog {
        pub lines: Mutex<Vec<String>>,
        pub full: bool,
    }

    #[event_handler(subscribe = Order, id = "audit")]
    impl AuditLog {
        async fn on_created(
            &self,
            ctx: &EventContext,
            event: &OrderCreated,
        ) -> Result<(), HandlerError> {
            let line = format!("created {} {}", ctx.entity_id(), event.total);
            self.lines.lock().unwrap().push(line);
            Ok(())
        }

        #[catch_all]
        async fn record(&self, ctx: &EventContext) -> Result<(), Full> {
            if self.full {
                return Err(Full);
            }
            let line = format!("{} {}", ctx.event().event_type, ctx.entity_id());
            self.lines.lock().unwrap().push(line);
            Ok(())
        }
    }
}

use orders::*;

fn create(customer: &str, total: u64) -> CreateOrder {
    CreateOrder {
        customer_id: customer.into(),
        total,
    }
}

fn approve() -> ApproveAndShip {
    ApproveAndShip {
        by: "ann".into(),
        carrier: "dhl".into(),
    }
}

#[test]
fn commands_are_routed_to_their_handlers() {
    let mut order = Order::default();

    let events = HandleCommand::<CreateOrder>::handle(&order, &create("c-1", 30)).unwrap();
    assert_eq!(
        events,
        vec![OrderEvent::Created(OrderCreated {
            customer_id: "c-1".into(),
            total: 30,
        })]
    );
    for event in &events {
        order.apply(event);
    }

    let events = HandleCommand::<ApproveAndShip>::handle(&order, &approve()).unwrap();
    assert_eq!(
        events,
        vec![
            OrderEvent::Approved(OrderApproved { by: "ann".into() }),
            OrderEvent::Shipped(OrderShipped {
                carrier: "dhl".into()
            }),
        ],
        "a tuple becomes its events, in order"
    );

    let notes = AddNotes {
        notes: vec!["a".into(), "b".into()],
    };
    let events = HandleCommand::<AddNotes>::handle(&order, &notes).unwrap();
    assert_eq!(
        events,
        vec![
            OrderEvent::Noted(OrderNoted { note: "a".into() }),
            OrderEvent::Noted(OrderNoted { note: "b".into() }),
        ]
    );
    let empty = AddNotes { notes: vec![] };
    assert!(
        HandleCommand::<AddNotes>::handle(&order, &empty)
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        HandleCommand::<CreateOrder>::handle(&order, &create("c-1", 5)).unwrap_err(),
        OrderError::AlreadyCreated,
        "the handler sees the applied state"
    );
    assert_eq!(
        HandleCommand::<CreateOrder>::handle(&Order::default(), &create("c-1", 0)).unwrap_err(),
        OrderError::ZeroTotal
    );
}

#[test]
fn events_are_routed_to_their_apply_methods_and_ignored_ones_change_nothing() {
    let mut order = Order::default();
    order.apply(&OrderEvent::Created(OrderCreated {
        customer_id: "c-9".into(),
        total: 12,
    }));
    order.apply(&OrderApproved { by: "bob".into() }.into());
    order.apply(
        &OrderShipped {
            carrier: "ups".into(),
        }
        .into(),
    );
    let before = order.clone();
    order.apply(&OrderNoted { note: "x".into() }.into());
    assert_eq!(order, before, "an ignored event leaves the state alone");
    assert_eq!(
        order,
        Order {
            customer_id: "c-9".into(),
            total: 12,
            approved_by: Some("bob".into()),
            carrier: Some("ups".into()),
            applied: 3,
        }
    );
}

#[test]
fn the_event_set_names_events_by_struct_and_round_trips_json() {
    assert_eq!(
        OrderEvent::EVENT_TYPES,
        &[
            "OrderCreated",
            "OrderApproved",
            "OrderShipped",
            "OrderNoteV2"
        ]
    );
    let created = OrderEvent::from(OrderCreated {
        customer_id: "c-2".into(),
        total: 7,
    });
    assert_eq!(created.event_type(), "OrderCreated");
    let payload = created.encode().unwrap();
    assert_eq!(payload, r#"{"customer_id":"c-2","total":7}"#);
    assert_eq!(
        OrderEvent::decode("OrderCreated", &payload).unwrap(),
        created
    );

    let noted = OrderEvent::from(OrderNoted { note: "n".into() });
    assert_eq!(noted.event_type(), "OrderNoteV2", "#[event(name)] renames");
    let payload = noted.encode().unwrap();
    assert_eq!(OrderEvent::decode("OrderNoteV2", &payload).unwrap(), noted);
    assert!(matches!(
        OrderEvent::decode("OrderNoted", &payload),
        Err(DecodeError::UnknownType)
    ));

    for unknown in ["Created", "orderCreated", "", "CustomerCreated"] {
        assert!(
            matches!(
                OrderEvent::decode(unknown, "{}"),
                Err(DecodeError::UnknownType)
            ),
            "{unknown}"
        );
    }
    assert!(matches!(
        OrderEvent::decode("OrderCreated", r#"{"total":"x"}"#),
        Err(DecodeError::Json(_))
    ));
}

#[test]
fn aggregate_constants_and_snapshots() {
    assert_eq!(Order::ENTITY_TYPE, "Order");
    assert_eq!(Order::SNAPSHOT_EVERY, Some(2));
    assert_eq!(Order::SNAPSHOT_VERSION, 3);
    let order = Order {
        customer_id: "c-3".into(),
        total: 99,
        approved_by: Some("ann".into()),
        carrier: None,
        applied: 2,
    };
    let snapshot = order.to_snapshot().unwrap().unwrap();
    assert_eq!(Order::from_snapshot(&snapshot).unwrap().unwrap(), order);
    assert!(Order::from_snapshot("[1]").unwrap().is_err());

    assert_eq!(
        Counter::ENTITY_TYPE,
        "Counter",
        "the default name is the struct's"
    );
    assert_eq!(Counter::SNAPSHOT_EVERY, None);
    assert_eq!(Counter::SNAPSHOT_VERSION, 1);
    assert!(Counter::default().to_snapshot().is_none());
    assert!(Counter::from_snapshot("{}").is_none());
    // The aggregate cache gets a copy of `Clone` aggregates only.
    assert!(
        Counter::default().clone_for_cache().is_none(),
        "Counter is not Clone"
    );
    let order = Order {
        total: 12,
        ..Order::default()
    };
    assert_eq!(order.clone_for_cache(), Some(order));
}

#[tokio::test]
async fn the_repository_runs_the_generated_handlers() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    let created = repo.create::<Order>(create("c-4", 40)).await.unwrap();
    let id = created.entity_id.clone();
    repo.update::<Order>(&id, approve()).await.unwrap();
    let notes = AddNotes {
        notes: vec!["fragile".into()],
    };
    repo.update::<Order>(&id, notes).await.unwrap();
    let loaded = repo.load::<Order>(&id).await.unwrap();
    assert_eq!(loaded.version, 4);
    assert_eq!(loaded.state.approved_by.as_deref(), Some("ann"));
    assert_eq!(loaded.state.applied, 3);

    let stored = EventStore::load(&store, "Order", &id, 0).await.unwrap();
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "OrderCreated",
            "OrderApproved",
            "OrderShipped",
            "OrderNoteV2"
        ]
    );

    let ticked = repo.create::<Counter>(orders::Tick).await.unwrap();
    assert_eq!(ticked.state.ticks, 1);
    let stored = EventStore::load(&store, "Counter", &ticked.entity_id, 0)
        .await
        .unwrap();
    assert_eq!(stored[0].event_type, "Ticked");
}

fn envelope(entity_id: &str, event_type: &str, payload: &str) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::new_v4(),
        entity_type: "Order".into(),
        entity_id: entity_id.into(),
        entity_version: 1,
        event_type: event_type.into(),
        payload: payload.into(),
        metadata: EventMetadata::default(),
        position: Position::new(1, 1),
    }
}

fn context(subscriber: &str, envelope: EventEnvelope) -> EventContext {
    let repo = Repository::new(InMemoryEventStore::new());
    EventContext::new(repo, subscriber, envelope)
}

#[test]
fn a_subscription_is_built_from_the_attribute() {
    let billing = billing::Billing::default();
    let expected = Subscription::new("billing", ["Order", "Customer"])
        .event_types(["OrderCreated", "OrderNoteV2"])
        .start_from(StartFrom::Now)
        .partitions(3)
        .max_attempts(7)
        .transactional(false);
    assert_eq!(billing.subscription(), expected);
    billing.subscription().validate().unwrap();

    let shipping = shipping::ShippingWorkflow::default();
    let expected = Subscription::new("ShippingWorkflow", ["Order"])
        .event_types(["OrderCreated", "OrderNoteV2"])
        .transactional(true);
    assert_eq!(shipping.subscription(), expected);
}

#[tokio::test]
async fn a_subscriber_decodes_events_into_its_own_structs_by_name() {
    let billing = billing::Billing::default();
    // The aggregate's payload has more fields than billing's `OrderCreated`.
    let payload = OrderEvent::from(OrderCreated {
        customer_id: "c-5".into(),
        total: 55,
    })
    .encode()
    .unwrap();
    let ctx = context("billing", envelope("o-5", "OrderCreated", &payload));
    billing.handle(&ctx).await.unwrap();

    let note = OrderEvent::from(OrderNoted { note: "hi".into() })
        .encode()
        .unwrap();
    let ctx = context("billing", envelope("o-5", "OrderNoteV2", &note));
    billing.handle(&ctx).await.unwrap();

    // An event type without a handler is skipped.
    let ctx = context("billing", envelope("o-5", "OrderShipped", "{}"));
    billing.handle(&ctx).await.unwrap();

    assert_eq!(*billing.seen.lock().unwrap(), ["bill o-5 55", "note hi"]);
}

#[tokio::test]
async fn handler_failures_become_handler_errors() {
    let billing = billing::Billing::default();
    let ctx = context(
        "billing",
        envelope("o-6", "OrderCreated", r#"{"total":"many"}"#),
    );
    let error = billing.handle(&ctx).await.unwrap_err();
    assert!(
        error.is_permanent(),
        "a payload that does not decode cannot be retried"
    );
    // The cause alone: the runtime names subscriber, entity and position around it.
    assert_eq!(
        error.to_string(),
        "the payload does not decode into `OrderCreated`: invalid type: string \"many\", \
         expected u64 at line 1 column 15"
    );

    let failing = billing::Billing {
        fail: true,
        ..Default::default()
    };
    let ctx = context("billing", envelope("o-6", "OrderCreated", r#"{"total":1}"#));
    let error = failing.handle(&ctx).await.unwrap_err();
    assert!(!error.is_permanent(), "a handler's own error is retried");
    assert_eq!(error.to_string(), "billing is down for order o-6");
    assert!(billing.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_subscriber_checked_against_the_aggregate_sends_commands() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    let created = repo.create::<Order>(create("c-7", 70)).await.unwrap();
    let workflow = shipping::ShippingWorkflow::default();
    let stored = EventStore::load(&store, "Order", &created.entity_id, 0)
        .await
        .unwrap();
    let ctx = EventContext::new(repo.clone(), "ShippingWorkflow", stored[0].clone());
    workflow.handle(&ctx).await.unwrap();
    let loaded = repo.load::<Order>(&created.entity_id).await.unwrap();
    assert_eq!(loaded.state.carrier.as_deref(), Some("post"));

    let note = OrderEvent::from(OrderNoted { note: "n".into() })
        .encode()
        .unwrap();
    let ctx = context("ShippingWorkflow", envelope("o-7", "OrderNoteV2", &note));
    workflow.handle(&ctx).await.unwrap();
    assert_eq!(*workflow.notes.lock().unwrap(), ["n"]);
}

#[tokio::test]
async fn a_catch_all_receives_every_event_without_a_typed_handler() {
    let audit = audit::AuditLog::default();
    let subscription = audit.subscription();
    assert_eq!(
        subscription,
        Subscription::new("audit", ["Order"]),
        "with a catch-all the subscription asks for every event type"
    );
    assert!(subscription.event_types.is_empty());
    for event_type in ["OrderCreated", "OrderShipped", "SomethingNew"] {
        assert!(subscription.handles(event_type), "{event_type}");
    }

    let created = OrderEvent::from(OrderCreated {
        customer_id: "c-8".into(),
        total: 80,
    })
    .encode()
    .unwrap();
    let ctx = context("audit", envelope("o-8", "OrderCreated", &created));
    audit.handle(&ctx).await.unwrap();
    let ctx = context(
        "audit",
        envelope("o-8", "OrderShipped", r#"{"carrier":"dhl"}"#),
    );
    audit.handle(&ctx).await.unwrap();
    // Not even decodable as one of the aggregate's events: the catch-all gets it undecoded.
    let ctx = context("audit", envelope("o-8", "SomethingNew", "not json"));
    audit.handle(&ctx).await.unwrap();
    assert_eq!(
        *audit.lines.lock().unwrap(),
        ["created o-8 80", "OrderShipped o-8", "SomethingNew o-8"],
        "the typed handler wins for its event type; the catch-all gets the others"
    );

    let full = audit::AuditLog {
        full: true,
        ..Default::default()
    };
    let ctx = context("audit", envelope("o-8", "OrderShipped", "{}"));
    let error = full.handle(&ctx).await.unwrap_err();
    assert!(!error.is_permanent(), "a catch-all's own error is retried");
    assert_eq!(error.to_string(), "the audit log is full");
    let ctx = context("audit", envelope("o-8", "OrderCreated", &created));
    full.handle(&ctx).await.unwrap();
    assert_eq!(full.lines.lock().unwrap().len(), 1, "the typed handler ran");
}
