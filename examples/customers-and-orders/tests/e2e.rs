//! End to end, on a real PostgreSQL: the HTTP API drives the whole saga (with an idempotent
//! retry, bad requests and unknown ids), re-delivered events change nothing twice, the two
//! halves of the application run as two runtimes on one database, and the scripted scenario
//! passes on PostgreSQL and in memory. Everything asynchronous is polled with a timeout.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use customers_and_orders::client::{Client, Reply};
use customers_and_orders::customer::{Customer, ReserveCredit};
use customers_and_orders::gateway::ConfirmationGateway;
use customers_and_orders::order::OrderState;
use customers_and_orders::workflows::{CustomerWorkflow, OrderWorkflow};
use customers_and_orders::{App, Money, Role, scenario};
use eventuate_core::subscriber::SENT_BY_HEADER;
use eventuate_core::{EventContext, EventEnvelope, Position, Repository, StreamFilter, Subscriber};
use eventuate_postgres::embedded::test_database;

const TIMEOUT: Duration = Duration::from_secs(20);

async fn post(client: &Client, uri: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    client.post(uri, body, headers).await.expect("request")
}

async fn get(client: &Client, uri: &str) -> Reply {
    client.get(uri).await.expect("request")
}

/// Asserts a 4xx answer with `{"error": "..."}` containing `text`.
fn assert_error(reply: &Reply, status: StatusCode, text: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let message = reply.body["error"].as_str().unwrap_or_else(|| {
        panic!("an error body has an `error` string: {}", reply.body);
    });
    assert!(
        message.contains(text),
        "expected an error containing {text:?}, got {message:?}"
    );
}

async fn order_settles(client: &Client, id: &str) -> Reply {
    client
        .poll(&format!("/orders/{id}"), TIMEOUT, |r| {
            r.status == StatusCode::OK && r.str("state") != "Pending"
        })
        .await
        .expect("the saga settles the order")
}

/// Every Customer and Order event, once every committed one is readable: a reader stops at
/// the stream's horizon, and while a transaction is open (the view's, say) the latest events
/// wait behind it for a moment.
async fn all_events(repository: &Repository, url: &str) -> Vec<EventEnvelope> {
    let pool = eventuate_postgres::sqlx::PgPool::connect(url)
        .await
        .expect("connect");
    let committed: i64 = eventuate_postgres::sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE entity_type IN ('Customer', 'Order')",
    )
    .fetch_one(&pool)
    .await
    .expect("count the committed events");
    pool.close().await;
    for _ in 0..200 {
        let events = read_all(repository).await;
        if events.len() as i64 >= committed {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the stream never showed the {committed} committed events");
}

async fn read_all(repository: &Repository) -> Vec<EventEnvelope> {
    let filter = StreamFilter::entity_types(["Customer", "Order"]);
    let mut out = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = repository
            .store()
            .read_stream(after, &filter, 1000)
            .await
            .expect("read the stream");
        let Some(last) = batch.last() else {
            return out;
        };
        after = last.position;
        out.extend(batch);
    }
}

fn count(events: &[EventEnvelope], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

async fn eventually_confirmations(app: &App, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let sent = app.tables().confirmations().await.expect("confirmations");
        if sent.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} confirmations, have {sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_through_the_http_api_on_postgres() {
    let db = test_database().await;
    let app = App::postgres(&db.url, Role::All).await.expect("app");
    let started = app.start().expect("start");
    let client = Client::new(started.router.clone());
    let repository = started.running.repository();

    // Bad requests: 400 with a message, nothing stored.
    let bad = [
        (r#"{"name": "Ada", "credit_limit": "#, "invalid JSON body"),
        (r#"{"name": "Ada"}"#, "missing field `credit_limit`"),
        (
            r#"{"name": "Ada", "credit_limit": "lots"}"#,
            "invalid JSON body",
        ),
        (
            r#"{"name": "Ada", "credit_limit": 0}"#,
            "`credit_limit` must be above zero",
        ),
        (r#"{"name": "Ada", "credit_limit": -5}"#, "not -5"),
        (
            r#"{"name": "  ", "credit_limit": 5}"#,
            "`name` must not be empty",
        ),
        ("", "the request body is empty"),
    ];
    for (body, message) in bad {
        let reply = post(&client, "/customers", body, &[]).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, message);
    }
    assert!(all_events(&repository, &db.url).await.is_empty());

    let reply = post(
        &client,
        "/customers",
        r#"{"name": "Ada Lovelace", "credit_limit": 1000}"#,
        &[("x-request-id", "req-customer")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let customer = reply.str("customer_id").to_owned();
    assert_eq!(
        reply.headers["location"].to_str().unwrap(),
        format!("/customers/{customer}")
    );
    assert_eq!(reply.headers["x-request-id"], "req-customer");

    // Unknown ids: 404 with a message; an unknown customer in an order: 422.
    let nobody = "0b5d1b7e-0000-4000-8000-000000000000";
    assert_error(
        &get(&client, &format!("/customers/{nobody}")).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &get(&client, &format!("/orders/{nobody}")).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &get(&client, "/nowhere").await,
        StatusCode::NOT_FOUND,
        "no such route",
    );
    let reply = post(
        &client,
        "/orders",
        &format!(r#"{{"customer_id": "{nobody}", "total": 5}}"#),
        &[],
    )
    .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "does not exist");
    for (total, message) in [
        ("0", "not 0"),
        ("-300", "not -300"),
        ("3.5", "invalid JSON"),
    ] {
        let body = format!(r#"{{"customer_id": "{customer}", "total": {total}}}"#);
        let reply = post(&client, "/orders", &body, &[]).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, message);
    }
    let reply = post(&client, "/orders", r#"{"total": 5}"#, &[]).await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "missing field `customer_id`",
    );

    // The first order, sent twice with one idempotency key: one order.
    let body = format!(r#"{{"customer_id": "{customer}", "total": 300}}"#);
    let key = [
        ("idempotency-key", "order-key-1"),
        ("x-request-id", "req-1"),
    ];
    let first = post(&client, "/orders", &body, &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.str("state"), "Pending");
    let order1 = first.str("order_id").to_owned();
    let retry = post(&client, "/orders", &body, &key).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(
        retry.str("order_id"),
        order1,
        "the retry finds the same order"
    );
    let events = all_events(&repository, &db.url).await;
    assert_eq!(count(&events, "OrderCreated"), 1, "one order, not two");
    // The same key for another request is a conflict.
    let other = format!(r#"{{"customer_id": "{customer}", "total": 301}}"#);
    let reply = post(&client, "/orders", &other, &key).await;
    assert_error(&reply, StatusCode::CONFLICT, "order-key-1");

    let settled = order_settles(&client, &order1).await;
    assert_eq!(settled.str("state"), "Approved", "{}", settled.body);

    let body = format!(r#"{{"customer_id": "{customer}", "total": 900}}"#);
    let reply = post(&client, "/orders", &body, &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let order2 = reply.str("order_id").to_owned();
    let settled = order_settles(&client, &order2).await;
    assert_eq!(settled.str("state"), "Rejected");
    assert_eq!(
        settled.str("rejection_reason"),
        "credit limit exceeded: 9.00 requested, 7.00 available"
    );

    let body = format!(r#"{{"customer_id": "{customer}", "total": 600}}"#);
    let reply = post(&client, "/orders", &body, &[]).await;
    let order3 = reply.str("order_id").to_owned();
    assert_eq!(
        order_settles(&client, &order3).await.str("state"),
        "Approved"
    );

    // The view: 900 reserved, three orders newest first.
    let view = client
        .poll(&format!("/customers/{customer}"), TIMEOUT, |r| {
            r.status == StatusCode::OK
                && r.body["recent_orders"]
                    .as_array()
                    .is_some_and(|o| o.len() == 3 && o.iter().all(|o| o["state"] != "Pending"))
        })
        .await
        .expect("the view catches up");
    assert_eq!(view.body["name"], "Ada Lovelace");
    assert_eq!(view.body["credit_limit"], 1000);
    assert_eq!(view.body["reserved_credit"], 900);
    assert_eq!(view.body["available_credit"], 100);
    let listed: Vec<(&str, &str)> = view.body["recent_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["order_id"].as_str().unwrap(),
                o["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (order3.as_str(), "Approved"),
            (order2.as_str(), "Rejected"),
            (order1.as_str(), "Approved"),
        ]
    );

    eventually_confirmations(&app, 2).await;
    started.running.wait_caught_up(TIMEOUT).await.unwrap();

    // Cause tracing: the approval of the first order leads back to its HTTP request.
    let events = all_events(&repository, &db.url).await;
    let created = events
        .iter()
        .find(|e| e.entity_id == order1 && e.event_type == "OrderCreated")
        .unwrap();
    let reserved = events
        .iter()
        .find(|e| e.event_type == "CreditReserved" && e.payload.contains(&order1))
        .unwrap();
    let approved = events
        .iter()
        .find(|e| e.entity_id == order1 && e.event_type == "OrderApproved")
        .unwrap();
    assert_eq!(
        approved.metadata.command_type.as_deref(),
        Some("ApproveOrder")
    );
    assert_eq!(approved.metadata.causation_id, Some(reserved.event_id));
    assert_eq!(reserved.metadata.causation_id, Some(created.event_id));
    assert_eq!(created.metadata.causation_id, None);
    assert_eq!(
        created.metadata.command_type.as_deref(),
        Some("CreateOrder")
    );
    let sent_by = |e: &EventEnvelope| e.metadata.headers.get(SENT_BY_HEADER).cloned();
    assert_eq!(sent_by(reserved).as_deref(), Some("customer-workflow"));
    assert_eq!(sent_by(approved).as_deref(), Some("order-workflow"));
    assert_eq!(
        sent_by(created),
        None,
        "sent from outside, not by a handler"
    );
    for e in [created, reserved, approved] {
        assert_eq!(e.metadata.correlation_id, created.metadata.command_id);
        assert_eq!(e.metadata.headers["request-id"], "req-1");
        assert_eq!(e.metadata.headers["http"], "POST /orders");
    }

    started.running.shutdown().await.unwrap();

    // Re-delivery of every event to every non-transactional subscriber changes nothing.
    let before = all_events(&repository, &db.url).await;
    let gateway = ConfirmationGateway::new(app.tables().clone());
    for event in &before {
        let deliver = |id: &str| EventContext::new(repository.clone(), id, event.clone());
        let ctx = deliver("customer-workflow");
        CustomerWorkflow.handle(&ctx).await.unwrap();
        let ctx = deliver("order-workflow");
        OrderWorkflow.handle(&ctx).await.unwrap();
        let ctx = deliver("order-confirmation-gateway");
        gateway.handle(&ctx).await.unwrap();
    }
    assert_eq!(all_events(&repository, &db.url).await, before);
    // And the store itself refuses a second command from the same (subscriber, triggering
    // event), even one the aggregate would accept (another order, which it has not decided).
    let order_created = before
        .iter()
        .find(|e| e.entity_id == order1 && e.event_type == "OrderCreated")
        .unwrap();
    let ctx = EventContext::new(
        repository.clone(),
        "customer-workflow",
        order_created.clone(),
    );
    let again = ctx
        .update::<Customer>(
            &customer,
            ReserveCredit {
                order_id: "an-order-never-seen".into(),
                amount: Money::cents(1),
            },
        )
        .await
        .unwrap();
    assert!(
        again.duplicate,
        "deduplicated by (subscriber, triggering event)"
    );
    assert_eq!(
        all_events(&repository, &db.url).await,
        before,
        "nothing was appended"
    );
    eventually_confirmations(&app, 2).await;
    let customer = repository.load::<Customer>(&customer).await.unwrap();
    assert_eq!(customer.state.reserved_credit(), Money::cents(900));
}

/// The customer side and the order side as two runtimes (two pools, as two processes) on one
/// database: the customer side alone reserves credit but approves nothing; the order side,
/// once started, finishes the saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_side_and_the_order_side_as_two_processes() {
    let db = test_database().await;
    let customers = App::postgres(&db.url, Role::Customers).await.unwrap();
    let orders = App::postgres(&db.url, Role::Orders).await.unwrap();

    let customer_side = customers.start().unwrap();
    let order_runtime = orders.runtime();
    let order_client = Client::new(orders.router(order_runtime.repository()));
    let customer_client = Client::new(customer_side.router.clone());

    // Each process serves its own half of the API.
    let body = r#"{"name": "Grace", "credit_limit": 500}"#;
    assert_eq!(
        post(&order_client, "/customers", body, &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = post(&customer_client, "/customers", body, &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let customer = reply.str("customer_id").to_owned();
    let body = format!(r#"{{"customer_id": "{customer}", "total": 200}}"#);
    assert_eq!(
        post(&customer_client, "/orders", &body, &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = post(&order_client, "/orders", &body, &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let order = reply.str("order_id").to_owned();

    // Only the customer side runs: the credit is reserved, the order stays pending.
    customer_client
        .poll(&format!("/customers/{customer}"), TIMEOUT, |r| {
            r.body["reserved_credit"] == 200 && r.body["recent_orders"][0]["state"] == "Pending"
        })
        .await
        .expect("the customer side reserves the credit");
    customer_side.running.wait_caught_up(TIMEOUT).await.unwrap();
    let reply = get(&order_client, &format!("/orders/{order}")).await;
    assert_eq!(
        reply.str("state"),
        "Pending",
        "nobody approves without the order side"
    );
    let subscribers: HashSet<String> = customer_side
        .running
        .status()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.subscriber_id)
        .collect();
    assert_eq!(
        subscribers,
        HashSet::from(["customer-workflow".to_owned(), "customer-view".to_owned()])
    );

    // The order side comes up and finishes the saga; both sides see the outcome.
    let order_side = order_runtime.start().unwrap();
    assert_eq!(
        order_settles(&order_client, &order).await.str("state"),
        "Approved"
    );
    customer_client
        .poll(&format!("/customers/{customer}"), TIMEOUT, |r| {
            r.body["recent_orders"][0]["state"] == "Approved"
        })
        .await
        .expect("the customer side's view sees the approval");
    eventually_confirmations(&orders, 1).await;
    order_side.wait_caught_up(TIMEOUT).await.unwrap();
    order_side.shutdown().await.unwrap();
    customer_side.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_scenario_on_postgres_twice() {
    let db = test_database().await;
    let app = App::postgres(&db.url, Role::All).await.unwrap();
    let started = app.start().unwrap();
    let mut story = Vec::new();
    let outcome = scenario::run(&app, &started, &mut story).await.unwrap();
    started.running.shutdown().await.unwrap();
    let story = String::from_utf8(story).unwrap();
    assert!(outcome.as_expected(), "{outcome:?}\n{story}");
    assert_eq!(
        outcome.orders,
        [
            OrderState::Approved,
            OrderState::Rejected,
            OrderState::Approved
        ]
    );
    assert!(
        story.contains(
            "chain: ApproveOrder <- #3 CreditReserved <- ReserveCredit <- #2 OrderCreated \
             <- CreateOrder <- HTTP POST /orders [request req-order-1]"
        ),
        "{story}"
    );
    // A second run on the same database (as with a DATABASE_URL) comes out the same.
    let started = app.start().unwrap();
    let outcome = scenario::run(&app, &started, &mut Vec::new())
        .await
        .unwrap();
    started.running.shutdown().await.unwrap();
    assert!(outcome.as_expected(), "second run: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_scenario_in_memory() {
    let app = App::in_memory();
    let started = app.start().unwrap();
    let mut story = Vec::new();
    let outcome = scenario::run(&app, &started, &mut story).await.unwrap();
    started.running.shutdown().await.unwrap();
    let story = String::from_utf8(story).unwrap();
    assert!(outcome.as_expected(), "{outcome:?}\n{story}");
    assert_eq!(outcome.reserved_credit, Money::cents(900));
}
