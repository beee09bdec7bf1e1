//! `prefetch-count`: a partition may have up to that many unacknowledged messages out; the
//! checkpoint moves only over the contiguous acknowledged prefix, so a reconnect delivers the
//! unacknowledged messages again, and acknowledged ones after a gap too (at least once).

#[allow(dead_code)]
mod stomp_support;

use std::time::Duration;

use eventuate_core::runtime::SubscriptionStore;
use eventuate_server::stomp::frame::Frame;
use serde_json::{Value, json};
use stomp_support::{Client, Harness, WAIT, bounded, options, path};

fn position(text: &str) -> (u64, u64) {
    let (t, s) = text.split_once('/').expect("tx/seq");
    (t.parse().expect("tx"), s.parse().expect("seq"))
}

/// Waits until the stored checkpoint of partition 0 of `id` is `expected` (`exact`) or at or
/// after it (the runtime may move past the last event to where it has read); panics after
/// `WAIT`.
async fn checkpoint_reaches(h: &Harness, id: &str, expected: &str, exact: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let wanted = position(expected);
    loop {
        let state = h.store.subscriber(id).await.expect("subscriber");
        let stored = state.partitions.first().map(|p| p.checkpoint.to_string());
        let at = stored.as_deref().map(position);
        if at == Some(wanted) || (!exact && at.is_some_and(|at| at >= wanted)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoint {stored:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_three_and_the_contiguous_acknowledged_prefix() {
    bounded(async {
        let h = Harness::start(options()).await;
        let events: Vec<(&str, Value)> = (1..=5).map(|_| ("Changed", json!({}))).collect();
        h.append("Order", "o-1", &events).await;
        let dest = path("windowed", "types=Order");
        let window = [("prefetch-count", "3")];
        let mut c = Client::connected(h.addr).await;
        c.subscribe("w", &dest, "client-individual", &window).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(c.message().await);
        }
        let versions: Vec<&Value> = got.iter().map(|(_, b)| &b["entityVersion"]).collect();
        assert_eq!(
            versions,
            [&json!(1), &json!(2), &json!(3)],
            "in entity order"
        );
        assert!(
            c.try_frame(Duration::from_millis(300)).await.is_none(),
            "no fourth message while three are unacknowledged"
        );
        // Out of order: the first and the third, not the second.
        c.ack(&got[0].0, "ACK").await;
        c.ack(&got[2].0, "ACK").await;
        assert!(
            c.try_frame(Duration::from_millis(300)).await.is_none(),
            "the window is not settled while the second is unacknowledged"
        );
        drop(c);
        // The checkpoint covers the first only: the prefix before the gap.
        let first = got[0].1["position"].as_str().expect("position").to_owned();
        checkpoint_reaches(&h, "windowed", &first, true).await;

        // A reconnect delivers from the gap on: the second, the third again (acknowledged
        // after the gap: at least once), and the fourth fills the window.
        let mut c = Client::connected(h.addr).await;
        c.subscribe("w", &dest, "client-individual", &window).await;
        let mut again = Vec::new();
        for _ in 0..3 {
            again.push(c.message().await);
        }
        let versions: Vec<&Value> = again.iter().map(|(_, b)| &b["entityVersion"]).collect();
        assert_eq!(versions, [&json!(2), &json!(3), &json!(4)]);
        assert_eq!(again[0].1["id"], got[1].1["id"]);
        for (m, _) in &again {
            c.ack(m, "ACK").await;
        }
        let (m5, b5) = c.message().await;
        assert_eq!(b5["entityVersion"], 5);
        c.ack(&m5, "ACK").await;
        let last = b5["position"].as_str().expect("position").to_owned();
        checkpoint_reaches(&h, "windowed", &last, false).await;
        assert!(c.try_frame(Duration::from_millis(300)).await.is_none());

        // Every client of an id asks for the same window, within the server's cap.
        let mut other = Client::connected(h.addr).await;
        other
            .send(
                Frame::new("SUBSCRIBE")
                    .header("id", "x")
                    .header("destination", dest.as_str())
                    .header("prefetch-count", "2"),
            )
            .await;
        let error = other.frame().await;
        assert_eq!(error.command, "ERROR");
        assert!(
            String::from_utf8_lossy(&error.body).contains("prefetch-count"),
            "{error:?}"
        );
        let mut capped = Client::connected(h.addr).await;
        capped
            .send(
                Frame::new("SUBSCRIBE")
                    .header("id", "x")
                    .header("destination", path("capped", "types=Order").as_str())
                    .header("prefetch-count", "100000"),
            )
            .await;
        let error = capped.frame().await;
        assert_eq!(error.command, "ERROR");
        assert!(
            error.get("message").is_some_and(|m| m.contains("1 to 256")),
            "{error:?}"
        );
        drop(c);
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_in_a_window_retries_that_message_then_offers_the_rest_again() {
    bounded(async {
        let h = Harness::start(options()).await;
        h.append(
            "Order",
            "o-1",
            &[("A", json!({})), ("B", json!({})), ("C", json!({}))],
        )
        .await;
        let dest = path("nacking", "types=Order");
        let mut c = Client::connected(h.addr).await;
        c.subscribe("n", &dest, "client-individual", &[("prefetch-count", "3")])
            .await;
        let (a, _) = c.message().await;
        let (b, _) = c.message().await;
        let (cc, _) = c.message().await;
        c.ack(&a, "ACK").await;
        c.ack(&b, "NACK").await;
        c.ack(&cc, "ACK").await;
        // B again, alone (its retry), then C again.
        let (b2, body) = c.message().await;
        assert_eq!(body["eventType"], "B");
        c.ack(&b2, "ACK").await;
        let (c2, body) = c.message().await;
        assert_eq!(body["eventType"], "C");
        c.ack(&c2, "ACK").await;
        assert!(c.try_frame(Duration::from_millis(300)).await.is_none());
        drop(c);
        h.stop().await;
    })
    .await;
}
