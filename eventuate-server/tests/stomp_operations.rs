//! The operations routes for STOMP subscribers, when the REST server serves the STOMP server
//! of its process (`Server::stomp_over_websocket`): `GET /subscribers` lists them (with a
//! client and without), their parked events can be listed, replayed and skipped.

#[allow(dead_code)]
mod stomp_support;

use std::time::Duration;

use axum::http::StatusCode;
use eventuate_core::subscriber::RetryPolicy;
use eventuate_server::StompOptions;
use serde_json::{Value, json};
use stomp_support::{Client, Harness, WAIT, bounded, options, path};

async fn parked(h: &Harness, id: &str) -> Vec<Value> {
    let (status, body) = h
        .call("GET", &format!("/subscribers/{id}/parked"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["parked"].as_array().expect("parked").clone()
}

async fn until_parked(h: &Harness, id: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = parked(h, id).await;
        if list.len() == count {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "parked: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn listed<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["subscribers"]
        .as_array()
        .expect("subscribers")
        .iter()
        .find(|s| s["subscriberId"] == id)
        .unwrap_or_else(|| panic!("`{id}` is not listed: {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_subscribers_are_listed_and_their_parked_events_replayed_and_skipped() {
    bounded(async {
        // One attempt: a NACK parks the event at once.
        let h = Harness::start(StompOptions {
            retry: RetryPolicy {
                max_attempts: 1,
                ..options().retry
            },
            ..options()
        })
        .await;
        h.append("Order", "o-1", &[("Created", json!({}))]).await;
        h.append("Order", "o-2", &[("Created", json!({}))]).await;
        let dest = path("ops", "types=Order");
        let mut c = Client::connected(h.addr).await;
        c.subscribe("s", &dest, "client-individual", &[]).await;

        let (m, b) = c.message().await;
        assert_eq!(b["entityId"], "o-1");
        c.ack(&m, "NACK").await;
        let (m, b) = c.message().await;
        assert_eq!(b["entityId"], "o-2");
        c.ack(&m, "ACK").await;
        let list = until_parked(&h, "ops", 1).await;
        assert_eq!(list[0]["event"]["entityId"], "o-1");
        let poisoned = list[0]["event"]["position"]
            .as_str()
            .expect("position")
            .to_owned();

        let (status, body) = h.call("GET", "/subscribers", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ops = listed(&body, "ops");
        assert_eq!(ops["stomp"]["clients"], 1);
        assert_eq!(ops["parked"], 1);
        let partition = &ops["partitions"][0];
        assert_eq!(partition["owned"], true);
        assert_eq!(partition["parked"], 1);
        assert!(partition["lag"].is_u64());
        assert!(
            partition["position"]
                .as_str()
                .is_some_and(|p| p.contains('/'))
        );

        // Replay: the parked event comes again; acknowledged, it is no longer parked.
        let (status, body) = h.call("POST", "/subscribers/ops/parked/replay", None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["replayRequested"], 1);
        let (m, b) = c.message().await;
        assert_eq!(b["entityId"], "o-1");
        c.ack(&m, "ACK").await;
        until_parked(&h, "ops", 0).await;

        // Skip: a parked event dropped for good; its entity flows again at once (the
        // consumer, fenced off, re-reads the parked events instead of parking behind it).
        h.append("Order", "o-3", &[("Created", json!({}))]).await;
        let (m, b) = c.message().await;
        assert_eq!(b["entityId"], "o-3");
        c.ack(&m, "NACK").await;
        let list = until_parked(&h, "ops", 1).await;
        let at = list[0]["event"]["position"]
            .as_str()
            .expect("position")
            .to_owned();
        assert_ne!(at, poisoned);
        let skip = format!("/subscribers/ops/parked/skip?position={at}");
        let (status, body) = h.call("POST", &skip, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["skipped"], at);
        let (status, body) = h.call("POST", &skip, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "skipped already: {body}");
        assert!(parked(&h, "ops").await.is_empty());
        h.append("Order", "o-3", &[("Shipped", json!({}))]).await;
        let (m, b) = c.message().await;
        assert_eq!(
            (&b["entityId"], &b["eventType"]),
            (&json!("o-3"), &json!("Shipped"))
        );
        c.ack(&m, "ACK").await;
        assert!(
            parked(&h, "ops").await.is_empty(),
            "not parked behind the skipped one"
        );

        // Errors: a position that is none, a subscriber nobody runs.
        let (status, body) = h
            .call("POST", "/subscribers/ops/parked/skip?position=abc", None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = h.call("POST", "/subscribers/ops/parked/skip", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _) = h
            .call("POST", "/subscribers/nobody/parked/skip?position=1/1", None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Without a client the subscriber is still listed, from its stored partitions.
        drop(c);
        h.append("Order", "o-4", &[("Created", json!({}))]).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = h.call("GET", "/subscribers", None).await;
            let ops = listed(&body, "ops");
            if ops["stomp"]["clients"] == 0 && ops["partitions"][0]["owner"].is_null() {
                assert_eq!(ops["partitions"][0]["owned"], false);
                assert_eq!(ops["partitions"][0]["lag"], 1, "o-4 waits: {ops}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{ops}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.stop().await;
    })
    .await;
}
