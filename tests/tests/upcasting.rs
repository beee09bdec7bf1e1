//! Issue #14 without a store: `AggregateFixture::given_stored` takes events as they sit in the
//! store (old names, old schema versions), so upcasters are tested like any other behaviour;
//! and what `EventSet::decode_stored` does with versions it cannot read.

#![allow(clippy::unwrap_used)]

use eventuate_core::prelude::*;
use eventuate_core::{DecodeError, EventSet};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub customer_id: String,
    pub total_cents: u64,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderCancelled {}

fn rename_customer(mut v: Value) -> Result<Value, String> {
    let object = v.as_object_mut().ok_or("not an object")?;
    let customer = object.remove("customer").ok_or("no `customer`")?;
    object.insert("customer_id".into(), customer);
    Ok(v)
}

fn euros_to_cents(mut v: Value) -> Result<Value, String> {
    let object = v.as_object_mut().ok_or("not an object")?;
    let total = object.remove("total").and_then(|t| t.as_u64());
    object.insert(
        "total_cents".into(),
        json!(total.ok_or("no `total`")? * 100),
    );
    Ok(v)
}

#[derive(Debug, Clone, Events)]
pub enum OrderEvent {
    #[event(
        name = "OrderPlaced",
        aliases("OrderCreated", "order_created"),
        version = 3,
        upcast(from = 2, with = euros_to_cents),
        upcast(from = 1, with = rename_customer)
    )]
    Placed(OrderPlaced),
    Cancelled(OrderCancelled),
}

#[aggregate(name = "Order", events = OrderEvent)]
#[derive(Debug, Default)]
pub struct Order {
    customer_id: String,
    total_cents: u64,
    cancelled: bool,
}

#[derive(Debug)]
pub struct Cancel;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("already cancelled")]
pub struct AlreadyCancelled;

#[command_handler]
impl Order {
    fn cancel(&self, _: &Cancel) -> Result<OrderCancelled, AlreadyCancelled> {
        if self.cancelled {
            return Err(AlreadyCancelled);
        }
        Ok(OrderCancelled {})
    }

    #[apply]
    fn placed(&mut self, e: &OrderPlaced) {
        self.customer_id = e.customer_id.clone();
        self.total_cents = e.total_cents;
    }
    #[apply]
    fn cancelled(&mut self, _: &OrderCancelled) {
        self.cancelled = true;
    }
}

#[test]
fn the_fixture_takes_stored_events_of_every_version_and_name() {
    for (name, version, payload) in [
        ("OrderCreated", 1, json!({"customer": "ann", "total": 12})),
        (
            "order_created",
            2,
            json!({"customer_id": "ann", "total": 12}),
        ),
        (
            "OrderPlaced",
            3,
            json!({"customer_id": "ann", "total_cents": 1200}),
        ),
    ] {
        let order = AggregateFixture::<Order>::given_stored([(name, version, payload)])
            .when(Cancel)
            .then_expect_events([OrderCancelled {}]);
        assert_eq!(
            (order.customer_id.as_str(), order.total_cents),
            ("ann", 1200)
        );
    }
    AggregateFixture::<Order>::given_stored([
        ("OrderCreated", 1, json!({"customer": "ann", "total": 12})),
        ("OrderCancelled", 1, json!({})),
    ])
    .when(Cancel)
    .then_expect_error::<AlreadyCancelled>();
}

#[test]
#[should_panic(expected = "the upcaster from version 1 failed: no `customer`")]
fn the_fixture_reports_an_upcaster_that_refuses_a_payload() {
    AggregateFixture::<Order>::given_stored([("OrderCreated", 1, json!({"who": "ann"}))]);
}

#[test]
fn the_set_describes_each_event_and_writes_the_current_version() {
    let schema = OrderEvent::schema("order_created").unwrap();
    assert_eq!((schema.name, schema.version), ("OrderPlaced", 3));
    // The chain is in order whatever order the attribute lists it in.
    let froms: Vec<u32> = schema.upcasters.iter().map(|(from, _)| *from).collect();
    assert_eq!(froms, [1, 2]);
    assert_eq!(OrderEvent::current_name("OrderCreated"), "OrderPlaced");
    assert_eq!(OrderEvent::current_name("Unknown"), "Unknown");
    assert_eq!(OrderEvent::EVENT_TYPES, ["OrderPlaced", "OrderCancelled"]);
    let placed = OrderEvent::from(OrderPlaced {
        customer_id: "ann".into(),
        total_cents: 1,
    });
    assert_eq!(
        (placed.event_type(), placed.schema_version()),
        ("OrderPlaced", 3)
    );
    assert_eq!(OrderEvent::from(OrderCancelled {}).schema_version(), 1);
}

#[test]
fn versions_without_a_chain_do_not_decode() {
    // Stored without a version: version 1, upcast twice.
    let event =
        OrderEvent::decode_stored("OrderCreated", None, r#"{"customer":"a","total":1}"#).unwrap();
    assert!(matches!(event, OrderEvent::Placed(ref e) if e.total_cents == 100));
    // Written by a newer release.
    let newer = OrderEvent::decode_stored("OrderPlaced", Some(4), "{}").unwrap_err();
    assert!(
        matches!(
            newer,
            DecodeError::Version {
                stored: 4,
                current: 3
            }
        ),
        "{newer:?}"
    );
    // An event that never had versions stays at 1.
    let cancelled = OrderEvent::decode_stored("OrderCancelled", Some(2), "{}").unwrap_err();
    assert!(matches!(
        cancelled,
        DecodeError::Version {
            stored: 2,
            current: 1
        }
    ));
    // `decode` takes the current version's payload, under any name the event has.
    assert!(OrderEvent::decode("order_created", r#"{"customer_id":"a","total_cents":5}"#).is_ok());
    assert!(matches!(
        OrderEvent::decode_stored("OrderShipped", None, "{}"),
        Err(DecodeError::UnknownType)
    ));
}
