//! Issue #14: a history written by older versions of the `Order` aggregate (checked-in rows,
//! `data/order_history.json`: the first event under two older type names, at schema versions
//! 1, 2 and 3) loads into the current version on both stores, new events are written under the
//! current name and version, and a subscriber checked against the aggregate receives every
//! event upcast. The rows are appended as they sit in the store; nothing rewrites them.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventuate_core::prelude::*;
use eventuate_core::runtime::{RuntimeOptions, SubscriptionStore};
use eventuate_core::{AppendRequest, EventMetadata, ExpectedVersion, NewEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Version 3. v1 `{customer, total}` (euros) was stored as `OrderCreated`; v2 renamed
/// `customer` to `customer_id` (stored as `order_created`); v3 counts cents. `channel` was
/// added later with a default, which needs no new version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    customer_id: String,
    total_cents: u64,
    #[serde(default = "unknown_channel")]
    channel: String,
}

fn unknown_channel() -> String {
    "unknown".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ItemAdded {
    sku: String,
    quantity: u32,
}

fn rename_customer(mut v: Value) -> Result<Value, String> {
    let object = v.as_object_mut().ok_or("an OrderCreated v1 is an object")?;
    let customer = object.remove("customer").ok_or("no `customer`")?;
    object.insert("customer_id".into(), customer);
    Ok(v)
}

fn euros_to_cents(mut v: Value) -> Result<Value, String> {
    let object = v.as_object_mut().ok_or("an OrderPlaced v2 is an object")?;
    let total = object
        .remove("total")
        .and_then(|t| t.as_u64())
        .ok_or("no integer `total`")?;
    object.insert("total_cents".into(), json!(total * 100));
    Ok(v)
}

#[derive(Debug, Clone, Events)]
enum OrderEvent {
    #[event(
        name = "OrderPlaced",
        aliases("OrderCreated", "order_created"),
        version = 3,
        upcast(from = 1, with = rename_customer),
        upcast(from = 2, with = euros_to_cents)
    )]
    Placed(OrderPlaced),
    Added(ItemAdded),
}

#[aggregate(name = "Order", events = OrderEvent, snapshot_every = 100)]
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Order {
    customer_id: String,
    total_cents: u64,
    channel: String,
    items: u32,
}

struct Place {
    customer_id: String,
    total_cents: u64,
}
struct AddItem {
    sku: String,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[command_handler]
impl Order {
    fn place(&self, cmd: &Place) -> Result<OrderPlaced, Never> {
        Ok(OrderPlaced {
            customer_id: cmd.customer_id.clone(),
            total_cents: cmd.total_cents,
            channel: "api".into(),
        })
    }
    fn add(&self, cmd: &AddItem) -> Result<ItemAdded, Never> {
        Ok(ItemAdded {
            sku: cmd.sku.clone(),
            quantity: 1,
        })
    }

    #[apply]
    fn placed(&mut self, e: &OrderPlaced) {
        self.customer_id = e.customer_id.clone();
        self.total_cents = e.total_cents;
        self.channel = e.channel.clone();
    }
    #[apply]
    fn added(&mut self, e: &ItemAdded) {
        self.items += e.quantity;
    }
}

/// Records every placed order as its handler receives it.
#[derive(Clone, Default)]
struct Placements(Arc<Mutex<Vec<(String, OrderPlaced)>>>);

#[event_handler(subscribe = Order, id = "placements")]
impl Placements {
    async fn on_placed(&self, ctx: &EventContext, e: &OrderPlaced) -> Result<(), HandlerError> {
        self.0
            .lock()
            .unwrap()
            .push((ctx.entity_id().to_owned(), e.clone()));
        Ok(())
    }
}

/// Appends the checked-in rows as an older release stored them.
async fn append_old_history(store: &dyn EventStore) {
    let rows: Vec<Value> = serde_json::from_str(include_str!("data/order_history.json")).unwrap();
    for row in rows {
        let entity_id = row["entity_id"].as_str().unwrap();
        let version = store.load("Order", entity_id, 0).await.unwrap().len() as u64;
        let metadata: EventMetadata = serde_json::from_value(row["metadata"].clone()).unwrap();
        let event = NewEvent {
            metadata,
            ..NewEvent::new(
                row["event_type"].as_str().unwrap(),
                row["payload"].to_string(),
            )
        };
        store
            .append(AppendRequest {
                entity_type: "Order".into(),
                entity_id: entity_id.into(),
                expected: if version == 0 {
                    ExpectedVersion::New
                } else {
                    ExpectedVersion::Exactly(version)
                },
                events: vec![event],
                idempotency: None,
            })
            .await
            .unwrap();
    }
}

fn placed(customer_id: &str, total_cents: u64, channel: &str) -> OrderPlaced {
    OrderPlaced {
        customer_id: customer_id.into(),
        total_cents,
        channel: channel.into(),
    }
}

async fn old_history_loads_upcast<S: EventStore + SubscriptionStore + Clone>(store: S) {
    append_old_history(&store).await;
    // What the store hands the repository: the versions recorded in the rows' metadata.
    let versions = |events: Vec<eventuate_core::StoredEvent>| -> Vec<Option<u32>> {
        events.iter().map(|e| e.schema_version).collect()
    };
    assert_eq!(
        versions(store.load_for_fold("Order", "order-1", 0).await.unwrap()),
        [None, None]
    );
    assert_eq!(
        versions(
            store
                .load_with_snapshot("Order", "order-2", 1)
                .await
                .unwrap()
                .1
        ),
        [Some(2), None]
    );

    let placements = Placements::default();
    let runtime = Eventuate::new(store.clone())
        .options(RuntimeOptions {
            poll_interval: Duration::from_millis(100),
            ..RuntimeOptions::default()
        })
        .subscriber(placements.clone())
        .start()
        .unwrap();
    let repo = runtime.repository();

    let one = repo.load::<Order>("order-1").await.unwrap();
    assert_eq!(
        (
            one.version,
            one.state.customer_id.as_str(),
            one.state.total_cents
        ),
        (2, "ann", 10_000)
    );
    assert_eq!(
        (one.state.channel.as_str(), one.state.items),
        ("unknown", 2)
    );
    let two = repo.load::<Order>("order-2").await.unwrap().state;
    assert_eq!(
        (two.customer_id.as_str(), two.total_cents, two.items),
        ("bob", 5_000, 1)
    );
    let three = repo.load::<Order>("order-3").await.unwrap().state;
    assert_eq!(
        (three.customer_id.as_str(), three.total_cents),
        ("cy", 2_500)
    );

    // Commands go on from the upcast state; new events are written as the current version.
    repo.update::<Order>("order-1", AddItem { sku: "C".into() })
        .await
        .unwrap();
    repo.create_with_id::<Order>(
        "order-4",
        Place {
            customer_id: "dee".into(),
            total_cents: 700,
        },
    )
    .await
    .unwrap();
    let written = store.load("Order", "order-4", 0).await.unwrap();
    assert_eq!(written[0].event_type, "OrderPlaced");
    assert_eq!(written[0].metadata.schema_version, Some(3));
    let added = store.load("Order", "order-1", 2).await.unwrap();
    assert_eq!(
        added[0].metadata.schema_version, None,
        "version 1 is not recorded"
    );
    assert_eq!(repo.load::<Order>("order-1").await.unwrap().state.items, 3);

    runtime
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    let mut received = placements.0.lock().unwrap().clone();
    received.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        received,
        [
            ("order-1".to_owned(), placed("ann", 10_000, "unknown")),
            ("order-2".to_owned(), placed("bob", 5_000, "unknown")),
            ("order-3".to_owned(), placed("cy", 2_500, "web")),
            ("order-4".to_owned(), placed("dee", 700, "api")),
        ]
    );
    // The stored rows are as they were written.
    let first = store.load("Order", "order-1", 0).await.unwrap();
    assert_eq!(first[0].event_type, "OrderCreated");
    assert_eq!(
        serde_json::from_str::<Value>(&first[0].payload).unwrap(),
        json!({"customer": "ann", "total": 100})
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    old_history_loads_upcast(InMemoryEventStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let db = eventuate_postgres::embedded::test_database().await;
    let store = eventuate_postgres::PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .unwrap();
    old_history_loads_upcast(store).await;
}
