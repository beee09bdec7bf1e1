//! The REST API against a throwaway PostgreSQL, through the router in-process
//! (`tower::ServiceExt::oneshot`), plus the listener's limits over a real socket.

mod http_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use eventuate_core::runtime::{Running, RuntimeOptions};
use eventuate_core::store::{AppendOutcome, AppendRequest};
use eventuate_core::{
    EventContext, EventEnvelope, EventStore, Eventuate, HandlerError, Position, Snapshot,
    StreamFilter, Subscriber, Subscription,
};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::test_database;
use eventuate_server::{Server, ServerOptions};
use futures_util::future::BoxFuture;
use http_support::{Reply, get, post, send};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Asserts an error answer: status, stable code, and (if given) the field at fault.
#[track_caller]
fn assert_error(reply: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"], code, "{}", reply.body);
    assert!(
        reply.body["explanation"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "an explanation: {}",
        reply.body
    );
    if let Some(field) = field {
        assert_eq!(reply.body["field"], field, "{}", reply.body);
    }
}

async fn store(url: &str) -> PostgresEventStore {
    PostgresEventStore::builder()
        .migrate_on_connect(true)
        .max_connections(4)
        .connect(url)
        .await
        .expect("store")
}

fn event(event_type: &str, data: Value) -> Value {
    json!({ "eventType": event_type, "eventData": data })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_append_read_and_their_errors() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let app = Server::new(Arc::new(store.clone())).router();

    // Create: 201 with the id, the version and the event ids.
    let body = json!({ "entityId": "o-1", "events": [event("OrderCreated", json!({"total": 5}))] });
    let created = post(&app, "/entities/Order", &body.to_string(), &[]).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["entityId"], "o-1");
    assert_eq!(created.body["entityVersion"], 1);
    assert_eq!(created.body["eventIds"].as_array().map(Vec::len), Some(1));
    assert_eq!(created.headers["location"], "/entities/Order/o-1");

    // Create without an id: a fresh one.
    let body = json!({ "events": [event("OrderCreated", json!({}))] });
    let fresh = post(&app, "/entities/Order", &body.to_string(), &[]).await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert!(uuid::Uuid::parse_str(fresh.body["entityId"].as_str().unwrap_or("")).is_ok());

    // Creating it again: 409 entity_exists with its version.
    let body = json!({ "entityId": "o-1", "events": [event("OrderCreated", json!({}))] });
    let again = post(&app, "/entities/Order", &body.to_string(), &[]).await;
    assert_error(&again, StatusCode::CONFLICT, "entity_exists", None);
    assert_eq!(again.body["actualVersion"], 1);

    // Append at the right version: 200; at a stale one: 409 with the actual version.
    let body = json!({ "expectedVersion": 1, "events": [event("OrderPaid", json!({"by": "card"})), event("OrderShipped", json!(null))] });
    let appended = post(&app, "/entities/Order/o-1", &body.to_string(), &[]).await;
    assert_eq!(appended.status, StatusCode::OK, "{}", appended.body);
    assert_eq!(appended.body["entityVersion"], 3);
    assert_eq!(appended.body["eventIds"].as_array().map(Vec::len), Some(2));
    let stale = post(&app, "/entities/Order/o-1", &body.to_string(), &[]).await;
    assert_error(&stale, StatusCode::CONFLICT, "optimistic_lock_error", None);
    assert_eq!(stale.body["actualVersion"], 3);
    // Eventuate's name for the version, as a string, is accepted too.
    let body = json!({ "entityVersion": "3", "events": [event("OrderClosed", json!({}))] });
    let eventuate = post(&app, "/entities/Order/o-1", &body.to_string(), &[]).await;
    assert_eq!(eventuate.body["entityVersion"], 4, "{}", eventuate.body);

    // Append to nobody: 404.
    let body = json!({ "expectedVersion": 1, "events": [event("OrderPaid", json!({}))] });
    let nobody = post(&app, "/entities/Order/nobody", &body.to_string(), &[]).await;
    assert_error(&nobody, StatusCode::NOT_FOUND, "not_found", None);

    // Read: every event, with positions and data as JSON; paged.
    let read = get(&app, "/entities/Order/o-1").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.body["entityVersion"], 4);
    let events = read.body["events"].as_array().expect("events");
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["eventType"], "OrderCreated");
    assert_eq!(events[0]["eventData"], json!({"total": 5}));
    assert_eq!(events[0]["id"], created.body["eventIds"][0]);
    assert_eq!(events[2]["eventData"], Value::Null);
    assert!(
        events[0]["position"]
            .as_str()
            .is_some_and(|p| p.contains('/'))
    );
    assert_eq!(read.body["snapshot"], Value::Null);
    assert_eq!(read.body["nextFromVersion"], Value::Null);
    let page = get(&app, "/entities/Order/o-1?fromVersion=2&limit=2").await;
    let versions: Vec<&Value> = page.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["entityVersion"])
        .collect();
    assert_eq!(versions, [&json!(2), &json!(3)]);
    assert_eq!(page.body["nextFromVersion"], 4);
    let past = get(&app, "/entities/Order/o-1?fromVersion=9").await;
    assert_eq!(past.status, StatusCode::OK);
    assert_eq!(past.body["entityVersion"], 4);
    assert_eq!(past.body["events"], json!([]));

    // With a snapshot.
    store
        .save_snapshot(Snapshot {
            entity_type: "Order".into(),
            entity_id: "o-1".into(),
            entity_version: 3,
            snapshot_version: 1,
            payload: r#"{"paid":true}"#.into(),
        })
        .await
        .expect("snapshot");
    let read = get(&app, "/entities/Order/o-1").await;
    assert_eq!(
        read.body["snapshot"],
        json!({"entityVersion": 3, "snapshotVersion": 1, "state": {"paid": true}})
    );

    // Unknown entity, bad query parameters.
    assert_error(
        &get(&app, "/entities/Order/nobody").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &get(&app, "/entities/Order/o-1?fromVersion=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("fromVersion"),
    );
    assert_error(
        &get(&app, "/entities/Order/o-1?limt=5").await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("limt"),
    );

    // A NUL byte in an id: 400 naming the field, never a 500 (path, body, and on read).
    let body = json!({ "expectedVersion": 1, "events": [event("OrderPaid", json!({}))] });
    let nul = post(&app, "/entities/Order/a%00b", &body.to_string(), &[]).await;
    assert_error(
        &nul,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("entityId"),
    );
    let body = json!({ "entityId": "a\u{0}b", "events": [event("OrderCreated", json!({}))] });
    let nul = post(&app, "/entities/Order", &body.to_string(), &[]).await;
    assert_error(
        &nul,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("entityId"),
    );
    let nul = get(&app, "/entities/Order/a%00b").await;
    assert_error(
        &nul,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("entityId"),
    );
    // A NUL inside the event data is just data.
    let body = json!({ "events": [event("OrderCreated", json!({"note": "a\u{0}b"}))] });
    let data = post(&app, "/entities/Order", &body.to_string(), &[]).await;
    assert_eq!(data.status, StatusCode::CREATED, "{}", data.body);

    // Invalid input, each naming its field.
    let cases: &[(&str, &str, &str)] = &[
        ("/entities/Order", "{", "body"),
        ("/entities/Order", "", "body"),
        ("/entities/Order", "[1]", "body"),
        ("/entities/Order", r#"{"events": []}"#, "events"),
        ("/entities/Order", r#"{"events": {}}"#, "events"),
        ("/entities/Order", r#"{}"#, "events"),
        ("/entities/Order", r#"{"events": [1]}"#, "events[0]"),
        (
            "/entities/Order",
            r#"{"events": [{"eventData": 1}]}"#,
            "events[0].eventType",
        ),
        (
            "/entities/Order",
            r#"{"events": [{"eventType": "Bad Type", "eventData": 1}]}"#,
            "events[0].eventType",
        ),
        (
            "/entities/Order",
            r#"{"events": [{"eventType": "A"}]}"#,
            "events[0].eventData",
        ),
        (
            "/entities/Order",
            r#"{"events": [{"eventType": "A", "eventData": 1, "eventId": "nope"}]}"#,
            "events[0].eventId",
        ),
        (
            "/entities/Order",
            r#"{"entityId": 7, "events": [{"eventType": "A", "eventData": 1}]}"#,
            "entityId",
        ),
        (
            "/entities/Bad%20Type",
            r#"{"events": [{"eventType": "A", "eventData": 1}]}"#,
            "entityType",
        ),
        (
            "/entities/Order/o-1",
            r#"{"events": [{"eventType": "A", "eventData": 1}]}"#,
            "expectedVersion",
        ),
        (
            "/entities/Order/o-1",
            r#"{"expectedVersion": 0, "events": [{"eventType": "A", "eventData": 1}]}"#,
            "expectedVersion",
        ),
        (
            "/entities/Order/o-1",
            r#"{"expectedVersion": -1, "events": [{"eventType": "A", "eventData": 1}]}"#,
            "expectedVersion",
        ),
        (
            "/entities/Order/o-1",
            r#"{"expectedVersion": 99999999999999999999, "events": [{"eventType": "A", "eventData": 1}]}"#,
            "expectedVersion",
        ),
    ];
    for (uri, body, field) in cases {
        let reply = post(&app, uri, body, &[]).await;
        assert_error(
            &reply,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some(field),
        );
    }

    // An event over the store's payload limit (1 MiB) inside a body under the listener's
    // (4 MiB): 413 from the store; a body over the listener's limit: 413 too.
    let big = "x".repeat((1 << 20) + 10);
    let body = json!({ "events": [event("OrderCreated", json!({"blob": big}))] });
    let reply = post(&app, "/entities/Order", &body.to_string(), &[]).await;
    assert_error(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    assert_eq!(reply.body["max"], 1 << 20);
    let huge = "x".repeat(5 << 20);
    let body = json!({ "events": [event("OrderCreated", json!({"blob": huge}))] });
    let reply = post(&app, "/entities/Order", &body.to_string(), &[]).await;
    assert_error(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    // The answer says what the limit is (the configured one).
    assert_eq!(
        reply.body["explanation"],
        "the request body is over the server's limit of 4194304 bytes"
    );
    assert_eq!(reply.body["max"], 4 << 20);
    let small = Server::new(Arc::new(store.clone()))
        .options(ServerOptions {
            body_limit: 1000,
            ..ServerOptions::default()
        })
        .router();
    let body = json!({ "events": [event("OrderCreated", json!({"blob": "x".repeat(1000)}))] });
    let reply = post(&small, "/entities/Order", &body.to_string(), &[]).await;
    assert_error(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    assert_eq!(reply.body["max"], 1000, "{}", reply.body);
    // More events than one request may carry: 413 too, naming the cap.
    let many: Vec<Value> = (0..1001)
        .map(|_| event("OrderCreated", json!({})))
        .collect();
    let reply = post(
        &app,
        "/entities/Order",
        &json!({ "events": many }).to_string(),
        &[],
    )
    .await;
    assert_error(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    assert!(
        reply.body["explanation"]
            .as_str()
            .is_some_and(|e| e.contains("at most 1000 per request")),
        "{}",
        reply.body
    );

    // A client-chosen event id already stored: 409 duplicate_event.
    let taken = created.body["eventIds"][0].as_str().expect("id").to_owned();
    let body =
        json!({ "events": [{"eventType": "OrderCreated", "eventData": {}, "eventId": taken}] });
    let reply = post(&app, "/entities/Order", &body.to_string(), &[]).await;
    assert_error(&reply, StatusCode::CONFLICT, "duplicate_event", None);
    assert_eq!(reply.body["eventId"], taken.as_str());

    // Unknown route and method.
    assert_error(
        &get(&app, "/nowhere").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let reply = send(&app, Method::DELETE, "/entities/Order/o-1", None, &[]).await;
    assert_error(
        &reply,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );

    // Nothing the refused requests carried was stored: o-1 still has its 4 events.
    assert_eq!(
        get(&app, "/entities/Order/o-1").await.body["entityVersion"],
        4
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_answers_the_first_result() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let app = Server::new(Arc::new(store.clone())).router();

    // A create retried with the same Idempotency-Key: same answer, nothing appended twice,
    // the entity id derived from the key when the body has none.
    let body = json!({ "events": [event("AccountOpened", json!({"owner": "ada"}))] }).to_string();
    let key = [("Idempotency-Key", "open-ada-1")];
    let first = post(&app, "/entities/Account", &body, &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    let retry = post(&app, "/entities/Account", &body, &key).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    let id = first.body["entityId"].as_str().expect("id").to_owned();

    // An append retried after another append: the first answer, not a 409.
    let uri = format!("/entities/Account/{id}");
    let body = json!({ "expectedVersion": 1, "events": [event("Deposited", json!({"amount": 5})), event("Deposited", json!({"amount": 6}))] }).to_string();
    let key = [("Idempotency-Key", "deposit-1")];
    let first = post(&app, &uri, &body, &key).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["entityVersion"], 3);
    let other =
        json!({ "expectedVersion": 3, "events": [event("Withdrawn", json!({"amount": 1}))] });
    assert_eq!(
        post(&app, &uri, &other.to_string(), &[]).await.status,
        StatusCode::OK
    );
    let retry = post(&app, &uri, &body, &key).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(
        retry.body, first.body,
        "the first outcome, version 3, not the current 4"
    );
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(
        get(&app, &uri).await.body["entityVersion"],
        4,
        "appended once"
    );

    // The same key for another request: 422.
    let changed =
        json!({ "expectedVersion": 4, "events": [event("Deposited", json!({"amount": 500}))] });
    let reply = post(&app, &uri, &changed.to_string(), &key).await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        None,
    );

    // Eventuate's triggeringEventToken: per entity, so one event may update two entities.
    for target in ["t-1", "t-2"] {
        let create = json!({ "entityId": target, "events": [event("AccountOpened", json!({}))] });
        assert_eq!(
            post(&app, "/entities/Account", &create.to_string(), &[])
                .await
                .status,
            StatusCode::CREATED
        );
        let body = json!({ "expectedVersion": 1, "triggeringEventToken": "evt-42", "events": [event("Credited", json!({}))] }).to_string();
        let uri = format!("/entities/Account/{target}");
        let first = post(&app, &uri, &body, &[]).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        let retry = post(&app, &uri, &body, &[]).await;
        assert_eq!(retry.body, first.body);
        assert_eq!(retry.headers["idempotent-replayed"], "true");
        assert_eq!(get(&app, &uri).await.body["entityVersion"], 2);
    }

    // A retry that names its event ids meets them before the key: still the first answer.
    let event_id = uuid::Uuid::new_v4().to_string();
    let body = json!({ "entityId": "named", "events": [{"eventType": "AccountOpened", "eventData": {}, "eventId": event_id}] }).to_string();
    let key = [("Idempotency-Key", "named-1")];
    let first = post(&app, "/entities/Account", &body, &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let retry = post(&app, "/entities/Account", &body, &key).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.body, first.body);

    // Key and token together, or a bad key: 400.
    let body = json!({ "expectedVersion": 1, "triggeringEventToken": "x", "events": [event("A", json!({}))] });
    let reply = post(&app, &uri, &body.to_string(), &[("Idempotency-Key", "y")]).await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("triggeringEventToken"),
    );
    let body = json!({ "events": [event("A", json!({}))] });
    let long = "k".repeat(201);
    let reply = post(
        &app,
        "/entities/Account",
        &body.to_string(),
        &[("Idempotency-Key", &long)],
    )
    .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("Idempotency-Key"),
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_pages_with_next_and_filters_by_type() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let app = Server::new(Arc::new(store.clone())).router();
    for i in 0..5 {
        let body =
            json!({ "entityId": format!("a-{i}"), "events": [event("Opened", json!({"i": i}))] });
        assert_eq!(
            post(&app, "/entities/Account", &body.to_string(), &[])
                .await
                .status,
            StatusCode::CREATED
        );
        let body = json!({ "entityId": format!("c-{i}"), "events": [event("Registered", json!({"i": i}))] });
        assert_eq!(
            post(&app, "/entities/Customer", &body.to_string(), &[])
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let all = get(&app, "/stream").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(all.body["events"].as_array().map(Vec::len), Some(10));

    // Pages of 2 of one type, following `next`, see each Account event once, in order.
    let mut after = "0/0".to_owned();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let page = get(
            &app,
            &format!("/stream?types=Account&limit=2&after={after}"),
        )
        .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let events = page.body["events"].as_array().expect("events").clone();
        for e in &events {
            assert_eq!(e["entityType"], "Account");
            seen.push(e["entityId"].as_str().expect("id").to_owned());
        }
        after = page.body["next"].as_str().expect("next").to_owned();
        if events.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["a-0", "a-1", "a-2", "a-3", "a-4"]);
    let two = get(&app, "/stream?types=Account,Customer&limit=1000").await;
    assert_eq!(two.body["events"].as_array().map(Vec::len), Some(10));

    for (uri, field) in [
        ("/stream?after=12", "after"),
        ("/stream?after=a/b", "after"),
        ("/stream?limit=0", "limit"),
        ("/stream?limit=1001", "limit"),
        ("/stream?types=Bad%20Type", "types"),
        ("/stream?from=1", "from"),
    ] {
        assert_error(
            &get(&app, uri).await,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some(field),
        );
    }
    store.close().await;
}

/// Parks every event of type `Poison` at once.
#[derive(Debug)]
struct Picky;

impl Subscriber for Picky {
    fn subscription(&self) -> Subscription {
        Subscription::new("picky", ["Account"]).partitions(2)
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        if ctx.event().event_type == "Poison" {
            return Err(HandlerError::permanent("poison"));
        }
        Ok(())
    }
}

async fn runtime(store: &PostgresEventStore) -> Arc<Running> {
    let options = RuntimeOptions {
        poll_interval: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(2),
        ..RuntimeOptions::default()
    };
    Arc::new(
        Eventuate::new(store.clone())
            .options(options)
            .known_entity_type("Account")
            .subscriber(Picky)
            .start()
            .expect("start"),
    )
}

/// Skipping a parked event over `POST /subscribers/{id}/parked/skip` on the in-memory store:
/// the record is gone and, the consumer fenced off, the entity's next event is delivered
/// instead of being parked behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_a_parked_event_lets_its_entity_flow_again() {
    let store = eventuate_core::InMemoryEventStore::new();
    let running = Arc::new(
        Eventuate::new(store.clone())
            .options(RuntimeOptions {
                poll_interval: Duration::from_millis(50),
                lease_ttl: Duration::from_secs(2),
                ..RuntimeOptions::default()
            })
            .known_entity_type("Account")
            .subscriber(Picky)
            .start()
            .expect("start"),
    );
    let app = Server::new(Arc::new(store.clone()))
        .operations(running.clone())
        .router();
    let body = json!({ "entityId": "p-1", "events": [event("Poison", json!({}))] });
    let created = post(&app, "/entities/Account", &body.to_string(), &[]).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let caught_up = running
        .wait_caught_up(Duration::from_secs(20))
        .await
        .expect("caught up");
    assert_eq!(caught_up.parked, [("picky".to_owned(), 1)]);
    let parked = get(&app, "/subscribers/picky/parked").await;
    let position = parked.body["parked"][0]["event"]["position"]
        .as_str()
        .expect("position")
        .to_owned();
    let skip = format!("/subscribers/picky/parked/skip?position={position}");
    let skipped = post(&app, &skip, "", &[]).await;
    assert_eq!(skipped.status, StatusCode::OK, "{}", skipped.body);
    assert_eq!(skipped.body["skipped"], position);
    assert_error(
        &post(&app, &skip, "", &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let body = json!({ "expectedVersion": 1, "events": [event("Opened", json!({}))] });
    let appended = post(&app, "/entities/Account/p-1", &body.to_string(), &[]).await;
    assert_eq!(appended.status, StatusCode::OK, "{}", appended.body);
    running
        .wait_caught_up(Duration::from_secs(20))
        .await
        .expect("caught up")
        .nothing_parked()
        .expect("the entity's next event is not parked behind the skipped one");
    drop(app);
    Arc::try_unwrap(running)
        .expect("only owner")
        .shutdown()
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_status_parked_events_and_replay() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let running = runtime(&store).await;
    let app = Server::new(Arc::new(store.clone()))
        .operations(running.clone())
        .router();
    for (id, event_type) in [("p-1", "Poison"), ("ok-1", "Opened"), ("p-2", "Poison")] {
        let body = json!({ "entityId": id, "events": [event(event_type, json!({}))] });
        assert_eq!(
            post(&app, "/entities/Account", &body.to_string(), &[])
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let caught_up = running
        .wait_caught_up(Duration::from_secs(20))
        .await
        .expect("caught up");
    assert_eq!(caught_up.parked, [("picky".to_owned(), 2)]);

    let status = get(&app, "/subscribers").await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    let subscribers = status.body["subscribers"].as_array().expect("subscribers");
    assert_eq!(subscribers.len(), 1);
    assert_eq!(subscribers[0]["subscriberId"], "picky");
    assert_eq!(subscribers[0]["parked"], 2);
    let partitions = subscribers[0]["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 2);
    for p in partitions {
        assert_eq!(p["owner"], running.node_id().to_string());
        assert_eq!(p["lag"], 0);
        assert!(p["position"].as_str().is_some_and(|s| s.contains('/')));
    }
    let parked_sum: u64 = partitions.iter().filter_map(|p| p["parked"].as_u64()).sum();
    assert_eq!(parked_sum, 2);

    let parked = get(&app, "/subscribers/picky/parked").await;
    assert_eq!(parked.status, StatusCode::OK, "{}", parked.body);
    let list = parked.body["parked"].as_array().expect("parked");
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|p| p["event"]["eventType"] == "Poison"));
    assert!(
        list.iter()
            .all(|p| p["error"].as_str().is_some_and(|e| e.contains("poison")))
    );

    // Replay one entity's, then all.
    let one = post(
        &app,
        "/subscribers/picky/parked/replay?entityType=Account&entityId=p-1",
        "",
        &[],
    )
    .await;
    assert_eq!(one.status, StatusCode::ACCEPTED, "{}", one.body);
    assert_eq!(one.body["replayRequested"], 1);
    let all = post(&app, "/subscribers/picky/parked/replay", "", &[]).await;
    assert_eq!(all.status, StatusCode::ACCEPTED, "{}", all.body);
    assert!(all.body["replayRequested"].as_u64().is_some());

    // Errors.
    assert_error(
        &get(&app, "/subscribers/nobody/parked").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &post(&app, "/subscribers/nobody/parked/replay", "", &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &get(&app, "/subscribers/bad%20id/parked").await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("subscriberId"),
    );
    let reply = post(
        &app,
        "/subscribers/picky/parked/replay?entityType=Account",
        "",
        &[],
    )
    .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("entityId"),
    );
    let reply = post(
        &app,
        "/subscribers/picky/parked/replay?entityType=Account&entityId=a%00",
        "",
        &[],
    )
    .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("entityId"),
    );

    // Without a runtime the operations routes are 404s that say why.
    let bare = Server::new(Arc::new(store.clone())).router();
    assert_error(
        &get(&bare, "/subscribers").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );

    drop(app);
    Arc::try_unwrap(running)
        .expect("only owner")
        .shutdown()
        .await
        .expect("shutdown");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_and_every_route_answers() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let running = runtime(&store).await;
    let app = Server::new(Arc::new(store.clone()))
        .operations(running.clone())
        .router();
    let body = json!({ "entityId": "x", "events": [event("Opened", json!({}))] });
    post(&app, "/entities/Account", &body.to_string(), &[]).await;

    let doc = get(&app, "/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().expect("paths");
    let mut documented = 0;
    for (path, item) in paths {
        documented += item.as_object().map_or(0, |i| i.len());
        let _ = path;
    }
    assert_eq!(
        documented,
        eventuate_server::openapi::ROUTES.len(),
        "no undocumented extras"
    );
    for (method, path) in eventuate_server::openapi::ROUTES {
        assert!(
            doc.body["paths"][*path][*method].is_object(),
            "{method} {path} is in /openapi.json"
        );
        let uri = path
            .replace("{entityType}", "Account")
            .replace("{entityId}", "x")
            .replace("{subscriberId}", "picky")
            .replace("{commandType}", "Open");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let reply = send(&app, method.clone(), &uri, Some("{}"), &[]).await;
        assert!(
            !(reply.status == StatusCode::NOT_FOUND
                && reply.body["explanation"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("no such route")))
                && reply.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri} is routed: {} {}",
            reply.status,
            reply.body
        );
    }
    drop(app);
    Arc::try_unwrap(running)
        .expect("only owner")
        .shutdown()
        .await
        .expect("shutdown");
    store.close().await;
}

/// The session of the README's "The event store server" section, request by request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_session() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let app = Server::new(Arc::new(store.clone())).router();

    // curl -si -X POST localhost:8080/entities/Order -H 'Idempotency-Key: order-1' \
    //   -d '{"entityId":"order-1","events":[{"eventType":"OrderCreated","eventData":{"total":42}}]}'
    let create = r#"{"entityId":"order-1","events":[{"eventType":"OrderCreated","eventData":{"total":42}}]}"#;
    let created = post(
        &app,
        "/entities/Order",
        create,
        &[("Idempotency-Key", "order-1")],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["entityVersion"], 1);
    // The same command again: the same answer, `Idempotent-Replayed: true`.
    let again = post(
        &app,
        "/entities/Order",
        create,
        &[("Idempotency-Key", "order-1")],
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, created.body);
    // curl -s -X POST localhost:8080/entities/Order/order-1 \
    //   -d '{"expectedVersion":1,"events":[{"eventType":"OrderPaid","eventData":{}}]}'
    let pay = r#"{"expectedVersion":1,"events":[{"eventType":"OrderPaid","eventData":{}}]}"#;
    let paid = post(&app, "/entities/Order/order-1", pay, &[]).await;
    assert_eq!(paid.status, StatusCode::OK);
    assert_eq!(paid.body["entityVersion"], 2);
    // The same append again: someone (we) got there first.
    let conflict = post(&app, "/entities/Order/order-1", pay, &[]).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.body["error"], "optimistic_lock_error");
    assert_eq!(conflict.body["actualVersion"], 2);
    // curl -s localhost:8080/entities/Order/order-1
    let read = get(&app, "/entities/Order/order-1").await;
    assert_eq!(read.body["entityVersion"], 2);
    // curl -s 'localhost:8080/stream?types=Order&limit=10'
    let page = get(&app, "/stream?types=Order&limit=10").await;
    assert_eq!(page.body["events"].as_array().map(Vec::len), Some(2));
    let next = page.body["next"].as_str().expect("next");
    let empty = get(&app, &format!("/stream?types=Order&after={next}")).await;
    assert_eq!(empty.body["events"], json!([]));
    // curl -s localhost:8080/entities/Order/bad%00id
    let nul = get(&app, "/entities/Order/bad%00id").await;
    assert_eq!(nul.status, StatusCode::BAD_REQUEST);
    assert_eq!(nul.body["field"], "entityId");
    store.close().await;
}

/// The store down: 503 with Retry-After, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_store_is_a_503_with_retry_after() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let app = Server::new(Arc::new(store.clone())).router();
    // A closed pool answers every call as a backend failure, as a database that went away.
    store.close().await;
    let body = json!({ "events": [event("A", json!({}))] });
    for reply in [
        post(&app, "/entities/Order", &body.to_string(), &[]).await,
        get(&app, "/entities/Order/x").await,
        get(&app, "/stream").await,
        get(&app, "/health").await,
    ] {
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            None,
        );
        assert_eq!(reply.headers["retry-after"], "1");
    }
}

/// A store that never answers.
#[derive(Debug)]
struct Hung;

impl EventStore for Hung {
    fn append(&self, _: AppendRequest) -> BoxFuture<'_, eventuate_core::Result<AppendOutcome>> {
        Box::pin(std::future::pending())
    }
    fn load<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: u64,
    ) -> BoxFuture<'a, eventuate_core::Result<Vec<EventEnvelope>>> {
        Box::pin(std::future::pending())
    }
    fn read_stream<'a>(
        &'a self,
        _: Position,
        _: &'a StreamFilter,
        _: usize,
    ) -> BoxFuture<'a, eventuate_core::Result<Vec<EventEnvelope>>> {
        Box::pin(std::future::pending())
    }
    fn head(&self) -> BoxFuture<'_, eventuate_core::Result<Position>> {
        Box::pin(std::future::pending())
    }
    fn save_snapshot(&self, _: Snapshot) -> BoxFuture<'_, eventuate_core::Result<()>> {
        Box::pin(std::future::pending())
    }
    fn load_snapshot<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: u32,
    ) -> BoxFuture<'a, eventuate_core::Result<Option<Snapshot>>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_timeout_is_a_503() {
    let app = Server::new(Arc::new(Hung))
        .options(ServerOptions {
            request_timeout: Duration::from_millis(200),
            ..ServerOptions::default()
        })
        .router();
    let started = Instant::now();
    let body = json!({ "events": [event("A", json!({}))] });
    for reply in [
        get(&app, "/health").await,
        post(&app, "/entities/Order", &body.to_string(), &[]).await,
    ] {
        assert_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "timeout", None);
        assert_eq!(reply.headers["retry-after"], "1");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Over a real socket: the connection cap holds the second client back until the first one
/// leaves, an idle connection is closed, and a slow request is answered `503 timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_caps_connections_and_closes_idle_ones() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let server = Server::new(Arc::new(store.clone())).options(ServerOptions {
        max_connections: 1,
        idle_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    let request = format!("GET /health HTTP/1.1\r\nhost: {addr}\r\n\r\n");

    let mut first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    first.write_all(request.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = first.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The second connection is not served while the first holds the only slot...
    let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    second.write_all(request.as_bytes()).await.expect("write");
    let started = Instant::now();
    // ...until the first, idle, is closed by the server (read returns 0).
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("idle connection closed")
        .expect("read");
    assert_eq!(n, 0, "the server closed the idle connection");
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("second served")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "held back by the cap"
    );

    let _ = stop.send(());
    drop(second);
    tokio::time::timeout(Duration::from_secs(40), serving)
        .await
        .expect("shuts down")
        .expect("task")
        .expect("serve");
    store.close().await;
}
