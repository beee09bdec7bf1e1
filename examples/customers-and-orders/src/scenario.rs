//! The scripted scenario that `cargo run -p customers-and-orders` plays through the HTTP API:
//! a customer with a credit limit of 1000; an order of 300 (approved); an order of 900
//! (rejected: only 700 left); an order of 600 (approved); then the customer view (900
//! reserved), every event with its chain of causes back to the HTTP request, and the
//! confirmations the gateway sent.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use eventuate_core::{BoxError, EventEnvelope, Position, StreamFilter};
use uuid::Uuid;

use crate::app::{App, Started};
use crate::client::{Client, Reply};
use crate::money::Money;
use crate::order::OrderState;

/// How long the scenario waits for the saga and the view.
const SETTLE: Duration = Duration::from_secs(30);

/// What the scenario observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The customer's id.
    pub customer_id: String,
    /// The final state of each order, in the order they were placed.
    pub orders: Vec<OrderState>,
    /// The reserved credit the customer view shows.
    pub reserved_credit: Money,
    /// Confirmations the gateway sent to the customer.
    pub confirmations: usize,
    /// Whether retrying the first order with its idempotency key returned the same order.
    pub retry_returned_same_order: bool,
}

impl Outcome {
    /// Approved, rejected, approved; 900 reserved; two confirmations; one order per key.
    pub fn as_expected(&self) -> bool {
        self.orders
            == [
                OrderState::Approved,
                OrderState::Rejected,
                OrderState::Approved,
            ]
            && self.reserved_credit == Money::cents(900)
            && self.confirmations == 2
            && self.retry_returned_same_order
    }
}

/// Plays the scenario against a started application, writing the story to `out`.
pub async fn run(app: &App, started: &Started, out: &mut dyn Write) -> Result<Outcome, BoxError> {
    let client = Client::new(started.router.clone());
    let t0 = Instant::now();
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();

    writeln!(
        out,
        "(amounts are integer cents in the API: a credit limit of 1000 is 10.00)"
    )?;
    writeln!(out, "\n== 1. A customer with a credit limit of 1000")?;
    let body = r#"{"name": "Ada Lovelace", "credit_limit": 1000}"#;
    let reply = client
        .post("/customers", body, &[("x-request-id", "req-1")])
        .await?;
    show_request(out, "POST /customers", body, "req-1", None, &reply)?;
    expect(&reply, StatusCode::CREATED)?;
    let customer_id = reply.str("customer_id").to_owned();

    let mut order_ids = Vec::new();
    let mut retry_returned_same_order = false;
    for (n, total) in [(1, 300), (2, 900), (3, 600)] {
        writeln!(out, "\n== {}. An order of {total}", n + 1)?;
        let body = format!(r#"{{"customer_id": "{customer_id}", "total": {total}}}"#);
        // Keys unique to this run: a database given in DATABASE_URL may hold earlier runs.
        let key = format!("order-{n}-{run}");
        let request_id = format!("req-order-{n}");
        let headers = [
            ("x-request-id", request_id.as_str()),
            ("idempotency-key", key.as_str()),
        ];
        let reply = client.post("/orders", &body, &headers).await?;
        show_request(out, "POST /orders", &body, &request_id, Some(&key), &reply)?;
        expect(&reply, StatusCode::CREATED)?;
        let order_id = reply.str("order_id").to_owned();
        if n == 1 {
            // The client did not see the answer, say, and retries with the same key.
            let retry_id = "req-order-1-retry";
            let headers = [
                ("x-request-id", retry_id),
                ("idempotency-key", key.as_str()),
            ];
            let retry = client.post("/orders", &body, &headers).await?;
            show_request(
                out,
                "POST /orders (retry)",
                &body,
                retry_id,
                Some(&key),
                &retry,
            )?;
            expect(&retry, StatusCode::OK)?;
            retry_returned_same_order = retry.str("order_id") == order_id;
        }
        let started_at = Instant::now();
        let settled = client
            .poll(&format!("/orders/{order_id}"), SETTLE, |r| {
                r.status == StatusCode::OK && r.str("state") != OrderState::Pending.as_str()
            })
            .await?;
        write!(
            out,
            "   the saga settled the order in {} ms: {}",
            started_at.elapsed().as_millis(),
            settled.str("state")
        )?;
        match settled.body["rejection_reason"].as_str() {
            Some(reason) => writeln!(out, " ({reason})")?,
            None => writeln!(out)?,
        }
        order_ids.push(order_id);
    }

    writeln!(
        out,
        "\n== 5. The customer view (GET /customers/{customer_id})"
    )?;
    let view = client
        .poll(&format!("/customers/{customer_id}"), SETTLE, |r| {
            let orders = r.body["recent_orders"].as_array();
            r.status == StatusCode::OK
                && orders.is_some_and(|o| {
                    o.len() == order_ids.len()
                        && o.iter().all(|o| o["state"] != OrderState::Pending.as_str())
                })
        })
        .await?;
    writeln!(
        out,
        "{}",
        indent(&serde_json::to_string_pretty(&view.body)?)
    )?;
    let reserved_credit = Money::cents(view.body["reserved_credit"].as_i64().unwrap_or(-1));
    writeln!(
        out,
        "   reserved credit: {} ({reserved_credit})",
        reserved_credit.as_cents()
    )?;

    // The gateway runs on its own; wait for it and let every subscriber catch up.
    let deadline = Instant::now() + SETTLE;
    let confirmations = loop {
        let mut sent = app.tables().confirmations().await?;
        sent.retain(|c| c.customer_id == customer_id);
        if sent.len() >= 2 || Instant::now() >= deadline {
            break sent;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    started.running.wait_caught_up(SETTLE).await?;

    writeln!(
        out,
        "\n== 6. Every event, oldest first, with the chain of causes back to its HTTP request"
    )?;
    let events = all_events(started).await?;
    show_events(out, &events)?;

    writeln!(
        out,
        "\n== 7. Confirmations sent by the gateway (order_confirmations)"
    )?;
    for c in &confirmations {
        writeln!(
            out,
            "   to customer {}: \"{}\" (for event {})",
            short(&c.customer_id),
            c.message,
            short(&c.event_id.to_string())
        )?;
    }

    let mut orders = Vec::new();
    for id in &order_ids {
        let reply = client.get(&format!("/orders/{id}")).await?;
        let state = OrderState::parse(reply.str("state"))
            .ok_or_else(|| format!("order {id}: unexpected reply {}", reply.body))?;
        orders.push(state);
    }
    writeln!(out, "\n(played in {} ms)", t0.elapsed().as_millis())?;
    Ok(Outcome {
        customer_id,
        orders,
        reserved_credit,
        confirmations: confirmations.len(),
        retry_returned_same_order,
    })
}

fn expect(reply: &Reply, status: StatusCode) -> Result<(), BoxError> {
    if reply.status == status {
        Ok(())
    } else {
        Err(format!("expected {status}, got {} {}", reply.status, reply.body).into())
    }
}

fn show_request(
    out: &mut dyn Write,
    request: &str,
    body: &str,
    request_id: &str,
    key: Option<&str>,
    reply: &Reply,
) -> std::io::Result<()> {
    let key = key
        .map(|k| format!(", Idempotency-Key: {k}"))
        .unwrap_or_default();
    writeln!(
        out,
        "-> {request} {body}  (X-Request-Id: {request_id}{key})"
    )?;
    writeln!(out, "<- {} {}", reply.status, reply.body)
}

async fn all_events(started: &Started) -> Result<Vec<EventEnvelope>, BoxError> {
    let repository = started.running.repository();
    let filter = StreamFilter::entity_types(["Customer", "Order"]);
    let mut events = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = repository.store().read_stream(after, &filter, 500).await?;
        let Some(last) = batch.last() else {
            return Ok(events);
        };
        after = last.position;
        events.extend(batch);
    }
}

/// Each event: its coordinates and payload; its metadata (command, cause, correlation,
/// headers); and its chain of causes, followed through `causation_id` back to the root.
fn show_events(out: &mut dyn Write, events: &[EventEnvelope]) -> std::io::Result<()> {
    let numbered: HashMap<Uuid, (usize, &EventEnvelope)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id, (i + 1, e)))
        .collect();
    for (i, event) in events.iter().enumerate() {
        let m = &event.metadata;
        writeln!(
            out,
            "#{:<2} {} {} v{} {} {}",
            i + 1,
            event.entity_type,
            short(&event.entity_id),
            event.entity_version,
            event.event_type,
            event.payload
        )?;
        let cause = match m.causation_id {
            Some(id) => match numbered.get(&id) {
                Some((n, _)) => format!("#{n} (event {})", short(&id.to_string())),
                None => format!("event {}", short(&id.to_string())),
            },
            None => "none (external command)".into(),
        };
        writeln!(
            out,
            "    command {} {} | caused by {} | correlation {} | headers {:?}",
            m.command_type.as_deref().unwrap_or("?"),
            m.command_id
                .map(|c| short(&c.to_string()))
                .unwrap_or_default(),
            cause,
            m.correlation_id
                .map(|c| short(&c.to_string()))
                .unwrap_or_default(),
            m.headers
        )?;
        writeln!(out, "    chain: {}", chain(event, &numbered))?;
    }
    Ok(())
}

fn chain(event: &EventEnvelope, numbered: &HashMap<Uuid, (usize, &EventEnvelope)>) -> String {
    let mut links = Vec::new();
    let mut current = event;
    for _ in 0..32 {
        let m = &current.metadata;
        links.push(m.command_type.clone().unwrap_or_else(|| "?".into()));
        match m.causation_id {
            Some(cause) => match numbered.get(&cause) {
                Some((n, cause)) => {
                    links.push(format!("#{n} {}", cause.event_type));
                    current = cause;
                }
                None => {
                    links.push(format!("event {cause} (not found)"));
                    break;
                }
            },
            None => {
                let header = |name: &str| m.headers.get(name).map_or("?", String::as_str);
                links.push(format!(
                    "HTTP {} [request {}]",
                    header("http"),
                    header("request-id")
                ));
                break;
            }
        }
    }
    links.join(" <- ")
}

/// The first 8 characters of an id.
fn short(id: &str) -> String {
    id.get(..8).unwrap_or(id).to_owned()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("   {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
