//! The event store server over the application's store (`App::event_store`): the saga driven
//! by commands posted by type name, the aggregates' schemas, and payloads rejected by them.
//! In memory; everything asynchronous is polled with a timeout.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use customers_and_orders::App;
use customers_and_orders::client::{Client, Reply};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(20);

async fn post(client: &Client, uri: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    client.post(uri, body, headers).await.expect("request")
}

#[tokio::test]
async fn commands_by_type_name_drive_the_saga() {
    let app = App::in_memory();
    let started = app.start().expect("start");
    let store = Client::new(app.event_store().router());
    let api = Client::new(started.router.clone());

    let customer = post(
        &store,
        "/aggregates/Customer/commands/CreateCustomer",
        r#"{"name": "Ada", "credit_limit": 1000}"#,
        &[],
    )
    .await;
    assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
    let customer_id = customer.str("entityId").to_owned();

    let order = post(
        &store,
        "/aggregates/Order/o-1/commands/CreateOrder",
        &json!({"customer_id": customer_id, "total": 300}).to_string(),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.body);
    assert_eq!(order.body["events"][0]["eventType"], "OrderCreated");

    // The saga reserves the credit and approves the order, as for an order made through the
    // application's own API.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let read = api.get("/orders/o-1").await.expect("request");
        if read.str("state") == "Approved" {
            break;
        }
        assert!(Instant::now() < deadline, "not approved: {}", read.body);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A business error, answered with its Display and its JSON.
    let rejected = post(
        &store,
        "/aggregates/Order/o-1/commands/RejectOrder",
        r#"{"reason": "too late"}"#,
        &[],
    )
    .await;
    assert_eq!(
        rejected.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        rejected.body
    );
    assert_eq!(rejected.str("reason"), "the order is already Approved");
    assert_eq!(
        rejected.body["rejection"],
        json!({"AlreadyDecided": "Approved"})
    );

    started.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn schemas_describe_and_guard_the_aggregates() {
    let app = App::in_memory();
    let store = Client::new(app.event_store().router());

    let order = store.get("/schemas/Order").await.expect("request");
    assert_eq!(order.status, StatusCode::OK, "{}", order.body);
    assert_eq!(order.body["$defs"]["Money"]["type"], "integer");
    assert_eq!(
        order.body["$defs"]["CreateOrder"]["required"],
        json!(["customer_id", "total"])
    );
    assert_eq!(order.body["events"]["OrderCreated"]["version"], 1);

    // A command whose total is not an amount in cents: refused before it runs.
    let bad = post(
        &store,
        "/aggregates/Order/commands/CreateOrder",
        r#"{"customer_id": "c-1", "total": "3.00"}"#,
        &[],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["pointer"], "/total");
    // A raw event for an `Order` that the aggregate could not read back.
    let raw = json!({"events": [{"eventType": "OrderCreated", "eventData": {"customer_id": 7}}]});
    let bad = post(&store, "/entities/Order", &raw.to_string(), &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(bad.str("field"), "events[0].eventData");
    let read = store.get("/stream").await.expect("request");
    assert_eq!(read.body["events"], json!([]), "nothing was written");
}
