//! The STOMP server against a throwaway PostgreSQL, over real sockets, with a raw STOMP client
//! (see `stomp_support`) and one test driven by stomp.py. Every test is bounded by `LIMIT`.

#[allow(dead_code)]
mod stomp_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eventuate_core::runtime::SubscriptionStore;
use eventuate_server::StompOptions;
use eventuate_server::stomp::frame::Frame;
use serde_json::{Value, json};
use stomp_support::{Client, Harness, WAIT, bounded, options, path};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_nul_bodies_escaped_headers_and_crlf() {
    bounded(async {
        let h = Harness::start(options()).await;
        h.append("Order", "o-1", &[("OrderCreated", json!({"note": "a\u{0}b:c"}))])
            .await;
        let mut c = h.client().await;
        // CRLF lines and heart-beat EOLs before the first frame.
        c.send_raw(b"\r\n\nCONNECT\r\naccept-version:1.2\r\nhost:x\r\n\r\n\0\n\n")
            .await;
        assert_eq!(c.frame().await.command, "CONNECTED");
        // A JSON destination with `:` escaped as \c (the frame encoder escapes it).
        let destination = r#"{"subscriberId":"framing","entityTypesAndEvents":{"Order":["OrderCreated"]},"options":{"readFrom":"BEGINNING","durability":"DURABLE"}}"#;
        let sub = Frame::new("SUBSCRIBE")
            .header("id", "s:1")
            .header("destination", destination)
            .header("receipt", "r\n1")
            .encode();
        assert!(
            String::from_utf8_lossy(&sub).contains(r#"{"subscriberId"\c"framing""#),
            "escaped on the wire"
        );
        c.send_raw(&sub).await;
        let mut got = BTreeMap::new();
        for _ in 0..2 {
            let f = c.frame().await;
            got.insert(f.command.clone(), f);
        }
        assert_eq!(got["RECEIPT"].get("receipt-id"), Some("r\n1"));
        let message = &got["MESSAGE"];
        assert_eq!(message.get("destination"), Some(destination));
        assert_eq!(message.get("subscription"), Some("s:1"));
        assert_eq!(message.get("content-type"), Some("application/json"));
        assert_eq!(
            message.get("content-length"),
            Some(&*message.body.len().to_string())
        );
        let body: Value = serde_json::from_slice(&message.body).expect("json");
        assert_eq!(body["eventData"]["note"], "a\u{0}b:c");
        assert_eq!(body["entityType"], "Order");
        assert_eq!(body["entityId"], "o-1");
        assert_eq!(body["entityVersion"], 1);
        assert_eq!(body["eventType"], "OrderCreated");
        assert!(body["id"].is_string() && body["position"].is_string(), "{body}");
        // A frame whose body holds NULs, delimited by content-length, then another frame.
        c.send_raw(b"UNSUBSCRIBE\nid:s\\c1\ncontent-length:5\nreceipt:after-nul\n\na\0b\0c\0\nDISCONNECT\nreceipt:bye\n\n\0")
            .await;
        let receipt = c.frame().await;
        assert_eq!(receipt.get("receipt-id"), Some("after-nul"));
        let bye = c.frame().await;
        assert_eq!(bye.get("receipt-id"), Some("bye"));
        assert!(c.closed_within(WAIT).await, "closed after DISCONNECT");

        // An undefined escape is fatal: ERROR, then the connection closes.
        let mut bad = Client::connected(h.addr).await;
        bad.send_raw(b"SUBSCRIBE\nid:a\\tb\ndestination:/x\nreceipt:7\n\n\0")
            .await;
        let error = bad.frame().await;
        assert_eq!(error.command, "ERROR");
        assert!(String::from_utf8_lossy(&error.body).contains("escape"), "{error:?}");
        assert!(bad.closed_within(WAIT).await);

        // Over the line limit: ERROR, then close.
        let mut long = Client::connected(h.addr).await;
        let mut frame = b"SUBSCRIBE\nid:".to_vec();
        frame.extend(std::iter::repeat_n(b'x', 10_000));
        frame.extend_from_slice(b"\n\n\0");
        long.send_raw(&frame).await;
        assert_eq!(long.frame().await.command, "ERROR");
        assert!(long.closed_within(WAIT).await);
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_negotiation() {
    bounded(async {
        let h = Harness::start(options()).await;
        for (accept, expected) in [
            (None, "1.0"),
            (Some("1.0,1.1,1.2"), "1.2"),
            (Some("1.1"), "1.1"),
            (Some("1.0,1.1"), "1.1"),
        ] {
            let mut c = h.client().await;
            let mut connect = Frame::new("STOMP").header("host", "x");
            if let Some(accept) = accept {
                connect = connect.header("accept-version", accept);
            }
            c.send(connect).await;
            let connected = c.frame().await;
            assert_eq!(connected.command, "CONNECTED", "{connected:?}");
            assert_eq!(connected.get("version"), Some(expected), "for {accept:?}");
            assert!(connected.get("session").is_some());
            assert!(
                connected
                    .get("server")
                    .is_some_and(|s| s.starts_with("eventuate-server/"))
            );
            assert!(connected.get("heart-beat").is_some());
        }
        let mut c = h.client().await;
        c.send_raw(b"CONNECT\naccept-version:2.0,3.1\n\n\0").await;
        let error = c.frame().await;
        assert_eq!(error.command, "ERROR");
        assert_eq!(error.get("version"), Some("1.0,1.1,1.2"));
        assert!(error.get("message").is_some());
        assert!(c.closed_within(WAIT).await);
        // Anything before CONNECT is an error.
        let mut c = h.client().await;
        c.send_raw(b"SUBSCRIBE\nid:1\ndestination:/subscriptions/a?types=A\n\n\0")
            .await;
        assert_eq!(c.frame().await.command, "ERROR");
        assert!(c.closed_within(WAIT).await);
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_beats_both_ways_and_the_idle_limit() {
    bounded(async {
        let h = Harness::start(StompOptions {
            heart_beat: (Duration::from_millis(100), Duration::from_millis(150)),
            idle_timeout: Duration::from_millis(500),
            ..options()
        })
        .await;
        // The client wants a beat every 100 ms and promises one every 100 ms.
        let mut c = h.client().await;
        c.send_raw(b"CONNECT\naccept-version:1.2\nheart-beat:100,100\n\n\0")
            .await;
        let connected = c.frame().await;
        assert_eq!(connected.get("heart-beat"), Some("100,150"));
        // Keep beating every 100 ms for 1 s: the server beats too and keeps the connection.
        let mut silent = Instant::now();
        for _ in 0..10 {
            c.send_raw(b"\n").await;
            silent = Instant::now();
            assert!(c.try_frame(Duration::from_millis(100)).await.is_none());
        }
        assert!(c.heart_beats >= 5, "server heart-beats: {}", c.heart_beats);
        // Stop beating: closed after about twice max(100, 150) ms since the last beat.
        assert!(c.closed_within(Duration::from_secs(3)).await);
        let after = silent.elapsed();
        assert!(after >= Duration::from_millis(250), "{after:?}");

        // No heart-beats negotiated: the idle limit closes a silent client.
        let mut quiet = Client::connected(h.addr).await;
        let silent = Instant::now();
        assert!(quiet.closed_within(Duration::from_secs(3)).await);
        assert!(silent.elapsed() >= Duration::from_millis(450));
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_refused_frames() {
    bounded(async {
        let h = Harness::start(options()).await;
        let mut c = Client::connected(h.addr).await;
        c.subscribe("1", &path("receipts", "types=Order"), "auto", &[])
            .await;
        c.send(
            Frame::new("UNSUBSCRIBE")
                .header("id", "1")
                .header("receipt", "u"),
        )
        .await;
        assert_eq!(c.frame().await.get("receipt-id"), Some("u"));
        c.send(
            Frame::new("SEND")
                .header("destination", "/x")
                .header("receipt", "s")
                .body(b"hi".to_vec()),
        )
        .await;
        let error = c.frame().await;
        assert_eq!(error.command, "ERROR");
        assert_eq!(error.get("receipt-id"), Some("s"));
        assert_eq!(error.get("message"), Some("SEND is not supported"));
        assert!(String::from_utf8_lossy(&error.body).contains("REST"));
        assert!(c.closed_within(WAIT).await);

        for command in ["BEGIN", "COMMIT", "ABORT"] {
            let mut c = Client::connected(h.addr).await;
            c.send(Frame::new(command).header("transaction", "t")).await;
            let error = c.frame().await;
            assert_eq!(error.command, "ERROR", "{command}");
            assert!(c.closed_within(WAIT).await);
        }
        // A bad destination, a duplicate id, an ACK of nothing: ERROR.
        let mut c = Client::connected(h.addr).await;
        c.send(
            Frame::new("SUBSCRIBE")
                .header("id", "1")
                .header("destination", "/queue/x"),
        )
        .await;
        assert_eq!(c.frame().await.command, "ERROR");
        let mut c = Client::connected(h.addr).await;
        c.send(Frame::new("ACK").header("id", "nope")).await;
        assert_eq!(c.frame().await.command, "ERROR");
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_modes_auto_client_and_client_individual() {
    bounded(async {
        let h = Harness::start(options()).await;
        for v in 1..=3 {
            h.append("Order", "o-1", &[(&*format!("E{v}"), json!({"v": v}))])
                .await;
        }
        // auto: everything flows without ACKs, in order.
        let mut auto = Client::connected(h.addr).await;
        auto.subscribe("a", &path("auto", "types=Order"), "auto", &[])
            .await;
        for v in 1..=3 {
            let (frame, body) = auto.message().await;
            assert_eq!(body["entityVersion"], v);
            assert!(frame.get("ack").is_none(), "no ack header in auto mode");
        }

        // client-individual: one unacknowledged message per partition.
        let mut ci = Client::connected(h.addr).await;
        ci.subscribe(
            "c",
            &path("individual", "types=Order"),
            "client-individual",
            &[],
        )
        .await;
        let (first, body) = ci.message().await;
        assert_eq!(body["entityVersion"], 1);
        assert!(
            ci.try_frame(Duration::from_millis(500)).await.is_none(),
            "window of one"
        );
        ci.ack(&first, "ACK").await;
        for v in 2..=3 {
            let (frame, body) = ci.message().await;
            assert_eq!(body["entityVersion"], v);
            ci.ack(&frame, "ACK").await;
        }

        // client: with two partitions two messages are outstanding; acknowledging the later
        // covers the earlier one.
        h.append("Order", "o-2", &[("E1", json!({}))]).await;
        let mut cl = Client::connected(h.addr).await;
        let ids: BTreeSet<String>;
        {
            let dest = path("cumulative", "types=Order");
            cl.subscribe("c", &dest, "client", &[("partitions", "2")])
                .await;
            let (m1, b1) = cl.message().await;
            let (m2, b2) = cl.message().await;
            assert_ne!(
                b1["entityId"], b2["entityId"],
                "one per partition: {b1} {b2}"
            );
            ids = [b1["id"].to_string(), b2["id"].to_string()].into();
            let later = if m1.get("message-id") > m2.get("message-id") {
                &m1
            } else {
                &m2
            };
            cl.ack(later, "ACK").await;
            // The rest of o-1 follows.
            let mut seen = 0;
            while seen < 2 {
                let (m, b) = cl.message().await;
                assert_eq!(b["entityId"], "o-1");
                cl.ack(&m, "ACK").await;
                seen += 1;
            }
            cl.send(Frame::new("DISCONNECT").header("receipt", "d"))
                .await;
            assert_eq!(cl.frame().await.command, "RECEIPT");
        }
        // Reconnected: nothing of the acknowledged comes again.
        h.append("Order", "o-2", &[("E2", json!({}))]).await;
        let mut again = Client::connected(h.addr).await;
        again
            .subscribe(
                "c",
                &path("cumulative", "types=Order"),
                "client",
                &[("partitions", "2")],
            )
            .await;
        let (m, b) = again.message().await;
        assert!(!ids.contains(&b["id"].to_string()), "redelivered {b}");
        assert_eq!(
            (b["entityId"].as_str(), b["entityVersion"].as_u64()),
            (Some("o-2"), Some(2))
        );
        again.ack(&m, "ACK").await;
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_then_parks() {
    bounded(async {
        let h = Harness::start(options()).await;
        h.append("Order", "poison", &[("Bad", json!({}))]).await;
        h.append("Order", "fine", &[("Good", json!({}))]).await;
        let mut c = Client::connected(h.addr).await;
        c.subscribe(
            "n",
            &path("nacker", "types=Order"),
            "client-individual",
            &[],
        )
        .await;
        let mut poison_id = None;
        for attempt in 1..=3 {
            let (frame, body) = c.message().await;
            assert_eq!(body["entityId"], "poison", "attempt {attempt}");
            poison_id.get_or_insert_with(|| body["id"].clone());
            assert_eq!(Some(&body["id"]), poison_id.as_ref());
            c.ack(&frame, "NACK").await;
        }
        // Parked after max_attempts (3): the next event flows.
        let (frame, body) = c.message().await;
        assert_eq!(body["entityId"], "fine");
        c.ack(&frame, "ACK").await;
        let parked = h.store.parked("nacker").await.expect("parked");
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(parked[0].event.entity_id, "poison");
        assert_eq!(parked[0].attempts, 3);
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_and_missed_events_come_after_reconnect() {
    bounded(async {
        let h = Harness::start(options()).await;
        h.append("Order", "o-1", &[("E1", json!({})), ("E2", json!({}))])
            .await;
        let dest = path("reconnecting", "types=Order&from=beginning");
        let mut c = Client::connected(h.addr).await;
        c.subscribe("r", &dest, "client-individual", &[]).await;
        let (m1, b1) = c.message().await;
        assert_eq!(b1["entityVersion"], 1);
        c.ack(&m1, "ACK").await;
        let (_m2, b2) = c.message().await;
        assert_eq!(b2["entityVersion"], 2);
        // Gone without acknowledging E2 (no DISCONNECT: the socket just closes).
        drop(c);
        // Committed while nobody is connected.
        h.append("Order", "o-1", &[("E3", json!({}))]).await;
        h.append("Order", "o-9", &[("E1", json!({}))]).await;
        let mut c = Client::connected(h.addr).await;
        c.subscribe("r", &dest, "client-individual", &[]).await;
        let (m, b) = c.message().await;
        assert_eq!(b["id"], b2["id"], "the unacknowledged message again");
        c.ack(&m, "ACK").await;
        let mut rest = Vec::new();
        for _ in 0..2 {
            let (m, b) = c.message().await;
            rest.push((b["entityId"].clone(), b["entityVersion"].clone()));
            c.ack(&m, "ACK").await;
        }
        assert_eq!(rest, [(json!("o-1"), json!(3)), (json!("o-9"), json!(1))]);
        assert!(
            c.try_frame(Duration::from_millis(300)).await.is_none(),
            "nothing else"
        );
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_a_subscriber_id_in_entity_order() {
    bounded(async {
        let h = Harness::start(options()).await;
        let dest = path("shared", "types=Order");
        let extra = [("partitions", "4")];
        let mut a = Client::connected(h.addr).await;
        a.subscribe("x", &dest, "client-individual", &extra).await;
        let mut b = Client::connected(h.addr).await;
        b.subscribe("y", &dest, "client-individual", &extra).await;
        let entities = 8;
        let versions = 5;
        for v in 1..=versions {
            for e in 0..entities {
                h.append("Order", &format!("o-{e}"), &[("Changed", json!({"v": v}))])
                    .await;
            }
        }
        let total = entities * versions;
        let mut seen: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
        let mut count = 0;
        let deadline = Instant::now() + Duration::from_secs(40);
        while count < total && Instant::now() < deadline {
            for (name, client) in [("a", &mut a), ("b", &mut b)] {
                if let Some(frame) = client.try_frame(Duration::from_millis(20)).await {
                    assert_eq!(frame.command, "MESSAGE", "{frame:?}");
                    let body: Value = serde_json::from_slice(&frame.body).expect("json");
                    let entity = body["entityId"].as_str().expect("id").to_owned();
                    let version = body["entityVersion"].as_u64().expect("version");
                    seen.entry(name).or_default().push((entity, version));
                    client.ack(&frame, "ACK").await;
                    count += 1;
                }
            }
        }
        assert_eq!(count, total, "every event delivered: {seen:?}");
        assert!(seen.len() == 2, "both clients got events: {seen:?}");
        let mut all = BTreeSet::new();
        for deliveries in seen.values() {
            let mut last: BTreeMap<&str, u64> = BTreeMap::new();
            for (entity, version) in deliveries {
                let previous = last.insert(entity, *version).unwrap_or(0);
                assert!(
                    *version > previous,
                    "per-entity order at one client: {deliveries:?}"
                );
                all.insert((entity.clone(), *version));
            }
        }
        assert_eq!(all.len(), total, "nothing lost, nothing twice");
        h.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_py_subscribes_acks_and_resumes() {
    bounded(async {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import stomp"])
            .output();
        match probe {
            Ok(out) if out.status.success() => {}
            other => panic!(
                "this test drives the server with stomp.py, which is not installed ({other:?}); \
                 install it: `python3 -m pip install --break-system-packages stomp.py` (or \
                 Debian's `apt-get install python3-stomp`)"
            ),
        }
        let h = Harness::start(options()).await;
        for v in 1..=3 {
            h.append("Customer", "c-1", &[(&*format!("E{v}"), json!({"v": v}))])
                .await;
        }
        let script = r#"
import json, sys, threading, stomp
port, count = int(sys.argv[1]), int(sys.argv[2])
got, done = [], threading.Event()
class L(stomp.ConnectionListener):
    def on_message(self, frame):
        body = json.loads(frame.body)
        got.append(body)
        conn.ack(frame.headers['ack'], frame.headers['subscription'])
        if len(got) >= count:
            done.set()
    def on_error(self, frame):
        print('ERROR', frame.headers, frame.body, file=sys.stderr)
        done.set()
conn = stomp.Connection12([('127.0.0.1', port)], heartbeats=(1000, 1000))
conn.set_listener('', L())
conn.connect(wait=True)
dest = json.dumps({"subscriberId": "py", "entityTypesAndEvents": {"Customer": []},
                   "options": {"readFrom": "BEGINNING", "durability": "DURABLE"}})
conn.subscribe(destination=dest, id='1', ack='client-individual')
done.wait(20)
conn.disconnect()
print(json.dumps([[b['entityId'], b['entityVersion'], b['eventData']] for b in got]))
"#;
        let run = |count: usize| {
            let port = h.addr.port().to_string();
            async move {
                let out = tokio::process::Command::new("python3")
                    .args(["-c", script, &port, &count.to_string()])
                    .kill_on_drop(true)
                    .output()
                    .await
                    .expect("python3 runs");
                assert!(
                    out.status.success(),
                    "stomp.py: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                serde_json::from_str::<Value>(stdout.trim()).unwrap_or_else(|e| {
                    panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr))
                })
            }
        };
        let first = run(3).await;
        assert_eq!(
            first,
            json!([["c-1", 1, {"v": 1}], ["c-1", 2, {"v": 2}], ["c-1", 3, {"v": 3}]])
        );
        // Events committed while it was away come on its next session; nothing else.
        h.append("Customer", "c-1", &[("E4", json!({"v": 4}))])
            .await;
        let second = run(1).await;
        assert_eq!(second, json!([["c-1", 4, {"v": 4}]]));
        h.stop().await;
    })
    .await;
}
