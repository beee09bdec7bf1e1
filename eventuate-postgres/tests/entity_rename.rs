//! Issue #14, entity type rename: the aggregate stored as `PurchaseOrder` by an older release
//! (checked-in rows, `data/purchase_order_history.json`) is now `Order` with
//! `aliases("PurchaseOrder")`, on both stores. Its history loads into the renamed aggregate;
//! commands continue its versions under the name it is stored under (also while a process of
//! the old release still appends to it, with conflicts detected); new entities are created
//! under the new name; an id stored under both names is refused; and subscribers on the new
//! name receive the events under both names: one that subscribed to the old name before the
//! rename continues from its checkpoint (nothing skipped, nothing twice), a new one reads
//! everything. Nothing rewrites the stored rows.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventuate_core::prelude::*;
use eventuate_core::runtime::{RuntimeOptions, SubscriptionStore};
use eventuate_core::{
    AppendRequest, EventEnvelope, EventMetadata, ExpectedVersion, NewEvent, Position,
    RepositoryOptions, StreamFilter,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    customer_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ItemAdded {
    sku: String,
}

#[derive(Debug, Clone, Events)]
enum OrderEvent {
    Placed(OrderPlaced),
    Added(ItemAdded),
}

/// The aggregate as it is now: renamed, its history still under the old name.
#[aggregate(name = "Order", aliases("PurchaseOrder"), events = OrderEvent, snapshot_every = 3)]
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Order {
    customer_id: String,
    items: Vec<String>,
}

/// The same aggregate as the release before the rename declared it, for the process of that
/// release that still runs during a rolling deploy.
#[aggregate(name = "PurchaseOrder", events = OrderEvent)]
#[derive(Debug, Default, Clone)]
struct OldOrder {
    items: Vec<String>,
}

struct Place {
    customer_id: String,
}
struct AddItem {
    sku: String,
}

fn add(sku: &str) -> AddItem {
    AddItem { sku: sku.into() }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[command_handler]
impl Order {
    fn place(&self, cmd: &Place) -> Result<OrderPlaced, Never> {
        Ok(OrderPlaced {
            customer_id: cmd.customer_id.clone(),
        })
    }
    fn add(&self, cmd: &AddItem) -> Result<ItemAdded, Never> {
        Ok(ItemAdded {
            sku: cmd.sku.clone(),
        })
    }

    #[apply]
    fn placed(&mut self, e: &OrderPlaced) {
        self.customer_id = e.customer_id.clone();
    }
    #[apply]
    fn added(&mut self, e: &ItemAdded) {
        self.items.push(e.sku.clone());
    }
}

#[command_handler]
impl OldOrder {
    fn place(&self, cmd: &Place) -> Result<OrderPlaced, Never> {
        Ok(OrderPlaced {
            customer_id: cmd.customer_id.clone(),
        })
    }
    fn add(&self, cmd: &AddItem) -> Result<ItemAdded, Never> {
        Ok(ItemAdded {
            sku: cmd.sku.clone(),
        })
    }

    #[apply]
    fn placed(&mut self, _: &OrderPlaced) {}
    #[apply]
    fn added(&mut self, e: &ItemAdded) {
        self.items.push(e.sku.clone());
    }
}

/// One delivery as a handler saw it: `ctx.entity_type()`, the stored name
/// (`ctx.event().entity_type`), the entity id and version.
type Seen = (String, String, String, u64);

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn record(&self, ctx: &EventContext) {
        let event = ctx.event();
        self.0.lock().unwrap().push((
            ctx.entity_type().to_owned(),
            event.entity_type.clone(),
            event.entity_id.clone(),
            event.entity_version,
        ));
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

/// The order log of the release before the rename, subscribed to the old name.
struct OldOrderLog(Log);

#[event_handler(subscribe = "PurchaseOrder", id = "order-log")]
impl OldOrderLog {
    #[catch_all]
    async fn record(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        self.0.record(ctx);
        Ok(())
    }
}

/// The same subscriber (same id, same checkpoint) after the rename, subscribed to the new name.
struct OrderLog(Log);

#[event_handler(subscribe = "Order", id = "order-log")]
impl OrderLog {
    #[catch_all]
    async fn record(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        self.0.record(ctx);
        Ok(())
    }
}

/// A subscriber new in the renamed release, checked against the aggregate.
struct Fulfilment(Log);

#[event_handler(subscribe = Order, id = "fulfilment")]
impl Fulfilment {
    async fn on_placed(&self, ctx: &EventContext, _: &OrderPlaced) -> Result<(), HandlerError> {
        self.0.record(ctx);
        Ok(())
    }
    async fn on_added(&self, ctx: &EventContext, _: &ItemAdded) -> Result<(), HandlerError> {
        self.0.record(ctx);
        Ok(())
    }
}

/// Appends the checked-in rows as the release before the rename stored them.
async fn append_old_history(store: &dyn EventStore) {
    let rows: Vec<Value> =
        serde_json::from_str(include_str!("data/purchase_order_history.json")).unwrap();
    for row in rows {
        let (entity_type, entity_id) = (
            row["entity_type"].as_str().unwrap(),
            row["entity_id"].as_str().unwrap(),
        );
        let version = store.load(entity_type, entity_id, 0).await.unwrap().len() as u64;
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
                entity_type: entity_type.into(),
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

fn options() -> RuntimeOptions {
    RuntimeOptions {
        poll_interval: Duration::from_millis(100),
        ..RuntimeOptions::default()
    }
}

/// Every stored event of both names, in stream order, as (stored name, id, version).
async fn stored_events(store: &dyn EventStore) -> Vec<(String, String, u64)> {
    let filter = StreamFilter::entity_types(["Order", "PurchaseOrder"]);
    let events = store
        .read_stream(Position::START, &filter, 1000)
        .await
        .unwrap();
    events
        .into_iter()
        .map(|e| (e.entity_type, e.entity_id, e.entity_version))
        .collect()
}

/// What a handler on the new name must have seen of `stored`: the current name everywhere,
/// the stored name kept on the row.
fn as_seen(stored: &[(String, String, u64)]) -> Vec<Seen> {
    stored
        .iter()
        .map(|(t, id, v)| ("Order".to_owned(), t.clone(), id.clone(), *v))
        .collect()
}

fn versions(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.entity_version).collect()
}

async fn renamed_aggregate<S: EventStore + SubscriptionStore + Clone>(store: S) {
    append_old_history(&store).await;

    // The release before the rename: its order log reads the old name and checkpoints.
    let old_log = Log::default();
    let old_release = Eventuate::new(store.clone())
        .options(options())
        .subscriber(OldOrderLog(old_log.clone()))
        .start()
        .unwrap();
    old_release
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    old_release.shutdown().await.unwrap();
    let before_rename = stored_events(&store).await;
    assert_eq!(before_rename.len(), 3);
    let old_name = |(t, id, v): &(String, String, u64)| (t.clone(), t.clone(), id.clone(), *v);
    assert_eq!(
        old_log.seen(),
        before_rename.iter().map(old_name).collect::<Vec<_>>()
    );

    // The renamed release.
    let (log, fulfilment) = (Log::default(), Log::default());
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .aggregate::<Order>()
        .strict_entity_types()
        .subscriber(OrderLog(log.clone()))
        .subscriber(Fulfilment(fulfilment.clone()))
        .start()
        .unwrap();
    let repo = runtime.repository().with_options(RepositoryOptions {
        cache_capacity: 16,
        ..RepositoryOptions::default()
    });

    // The old history loads into the renamed aggregate.
    let loaded = repo.load::<Order>("po-1").await.unwrap();
    assert_eq!(
        (
            loaded.version,
            loaded.stored_as,
            loaded.state.customer_id.as_str()
        ),
        (2, "PurchaseOrder", "ann")
    );
    assert_eq!(loaded.state.items, ["A-1"]);

    // A command continues its versions under the name it is stored under; the snapshot taken
    // at version 3 is stored there too.
    let committed = repo.update::<Order>("po-1", add("B-2")).await.unwrap();
    assert_eq!((committed.version, committed.attempts), (3, 1));
    assert_eq!(
        versions(&store.load("PurchaseOrder", "po-1", 0).await.unwrap()),
        [1, 2, 3]
    );
    assert!(store.load("Order", "po-1", 0).await.unwrap().is_empty());
    let snapshot = store
        .load_snapshot("PurchaseOrder", "po-1", 1)
        .await
        .unwrap();
    assert_eq!(snapshot.map(|s| s.entity_version), Some(3));
    assert_eq!(store.load_snapshot("Order", "po-1", 1).await.unwrap(), None);

    // A process of the old release, still running during the rolling deploy, appends to the
    // same rows; the renamed release's cached state (version 3) is then stale, and the
    // conflict on (PurchaseOrder, po-1) is detected and retried on a fresh load.
    let old_repo = Repository::new(store.clone());
    let old_append = old_repo
        .update::<OldOrder>("po-1", add("C-3"))
        .await
        .unwrap();
    assert_eq!(old_append.version, 4);
    let committed = repo.update::<Order>("po-1", add("D-4")).await.unwrap();
    assert_eq!(
        (committed.version, committed.attempts),
        (5, 2),
        "the stale cached version conflicted once"
    );
    assert_eq!(committed.state.items, ["A-1", "B-2", "C-3", "D-4"]);
    // A client that read version 4 decided on a state that is gone.
    match repo.update_expecting::<Order>("po-1", 4, add("E-5")).await {
        Err(Error::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (4, 5)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Two writers on the old name at once, one of each release: both land, one after the
    // other.
    let other_repo = Repository::new(store.clone());
    let (a, b) = tokio::join!(
        other_repo.update::<Order>("po-1", add("F-6")),
        old_repo.update::<OldOrder>("po-1", add("G-7")),
    );
    let mut raced = [a.unwrap().version, b.unwrap().version];
    raced.sort_unstable();
    assert_eq!(raced, [6, 7]);
    // A fresh load (from the latest snapshot, under the old name) sees every item.
    let fresh = Repository::new(store.clone())
        .load::<Order>("po-1")
        .await
        .unwrap();
    assert_eq!((fresh.version, fresh.state.items.len()), (7, 6));
    assert_eq!(
        versions(&store.load("PurchaseOrder", "po-1", 0).await.unwrap()),
        [1, 2, 3, 4, 5, 6, 7]
    );

    // New entities are created under the new name; an id that lives under the old name
    // exists; an upsert on it appends under the old name.
    repo.create_with_id::<Order>(
        "o-3",
        Place {
            customer_id: "cy".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(store.load("Order", "o-3", 0).await.unwrap().len(), 1);
    match repo
        .create_with_id::<Order>(
            "po-2",
            Place {
                customer_id: "eve".into(),
            },
        )
        .await
    {
        Err(Error::EntityExists {
            entity_type,
            version,
            ..
        }) => assert_eq!((entity_type.as_str(), version), ("PurchaseOrder", 1)),
        other => panic!("expected EntityExists, got {other:?}"),
    }
    assert!(store.load("Order", "po-2", 0).await.unwrap().is_empty());
    let upserted = repo.upsert::<Order>("po-2", add("H-8")).await.unwrap();
    assert_eq!(upserted.version, 2);
    assert_eq!(
        versions(&store.load("PurchaseOrder", "po-2", 0).await.unwrap()),
        [1, 2]
    );

    // A command sent again under its command id after the old release applied it (a client
    // retrying across the deploy) is a duplicate, whichever release applied it first: the
    // key is recorded with the name the entity is stored under.
    let (create_id, add_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let place = || Place {
        customer_id: "fay".into(),
    };
    old_repo
        .create_with::<OldOrder>(
            Some("po-9".into()),
            place(),
            CommandOptions::with_command_id(create_id),
        )
        .await
        .unwrap();
    old_repo
        .update_with::<OldOrder>("po-9", add("J-1"), CommandOptions::with_command_id(add_id))
        .await
        .unwrap();
    let again = repo
        .create_with::<Order>(
            Some("po-9".into()),
            place(),
            CommandOptions::with_command_id(create_id),
        )
        .await
        .unwrap();
    assert_eq!((again.duplicate, again.version), (true, 2));
    let again = repo
        .update_with::<Order>("po-9", add("J-1"), CommandOptions::with_command_id(add_id))
        .await
        .unwrap();
    assert_eq!((again.duplicate, again.version), (true, 2));
    assert_eq!(again.state.items, ["J-1"]);
    assert_eq!(
        versions(&store.load("PurchaseOrder", "po-9", 0).await.unwrap()),
        [1, 2]
    );

    // An id created under both names (the old release and the new one racing to create it)
    // is refused, never merged.
    for entity_type in ["PurchaseOrder", "Order"] {
        store
            .append(AppendRequest {
                entity_type: entity_type.into(),
                entity_id: "twice".into(),
                expected: ExpectedVersion::New,
                events: vec![NewEvent::new(
                    "OrderPlaced",
                    json!({ "customer_id": "dee" }).to_string(),
                )],
                idempotency: None,
            })
            .await
            .unwrap();
    }
    for result in [
        repo.load::<Order>("twice").await.map(|_| ()),
        repo.update::<Order>("twice", add("I-9")).await.map(|_| ()),
    ] {
        match result {
            Err(Error::EntityUnderSeveralTypes {
                entity_type,
                entity_id,
                stored_under,
            }) => {
                assert_eq!(
                    (entity_type.as_str(), entity_id.as_str()),
                    ("Order", "twice")
                );
                assert_eq!(stored_under, ["Order", "PurchaseOrder"]);
            }
            other => panic!("expected EntityUnderSeveralTypes, got {other:?}"),
        }
    }

    // Subscribers on the new name receive the events under both names, as the current name,
    // the stored name kept on the row: the order log continues after its checkpoint (nothing
    // before it again, nothing skipped), the new subscriber reads everything.
    runtime
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    let stored = stored_events(&store).await;
    assert_eq!(stored[..3], before_rename[..]);
    assert!(stored.iter().any(|(t, ..)| t == "Order"));
    assert_eq!(log.seen(), as_seen(&stored[3..]));
    assert_eq!(fulfilment.seen(), as_seen(&stored));
    runtime.shutdown().await.unwrap();

    // The stored rows are as they were written.
    let first = store.load("PurchaseOrder", "po-1", 0).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first[0].payload).unwrap(),
        json!({ "customer_id": "ann" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    renamed_aggregate(InMemoryEventStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let db = eventuate_postgres::embedded::test_database().await;
    let store = eventuate_postgres::PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .unwrap();
    renamed_aggregate(store).await;
}
