//! The binary with `--relay`: events appended over REST reach NATS JetStream (a real
//! `nats-server -js` on a loopback port, started as in eventuate-relay's tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../eventuate-relay/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{
    NatsServer, check_exactly_once_in_order, connect, create_stream, read_stream, store, stored,
};

/// The server process, killed if the test ends without stopping it.
struct ServerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ServerProcess {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_eventuate-server"));
        command
            .args(args)
            .env_remove("EVENTUATE_RELAY")
            .env_remove("EVENTUATE_RELAY_TYPES")
            .env_remove("EVENTUATE_RELAY_PREFIX")
            .env_remove("EVENTUATE_RELAY_TOPIC")
            .env_remove("EVENTUATE_RELAY_ID")
            .stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start eventuate-server");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        ServerProcess { child, lines }
    }

    /// The lines it printed up to the one starting with `prefix`, which is the last.
    fn until(&self, prefix: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with(prefix);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!("no line starting with `{prefix}` ({e}); printed: {seen:?}"),
            }
        }
    }

    /// SIGTERM, then its exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM");
        self.child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A POST over a fresh connection: the status code and the JSON answer.
async fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {response}"));
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// The binary relaying `Order` and `Customer` to `relay_url` on `shop.<entity type>` (the URL
/// and layout as flags, the entity types from the environment), once it serves: the process,
/// its HTTP address, and it has said what it relays.
fn start_relaying(database_url: &str, relay_url: &str, broker: &str) -> (ServerProcess, String) {
    let server = ServerProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--stomp-listen",
            "127.0.0.1:0",
            "--relay",
            relay_url,
            "--relay-prefix",
            "shop.",
        ],
        &[
            ("DATABASE_URL", database_url),
            ("EVENTUATE_RELAY_TYPES", "Order,Customer"),
        ],
    );
    let printed = server.until("serving the event store on http://");
    let at = relay_url
        .split_once("://")
        .map_or(
            relay_url,
            |(scheme, rest)| {
                if scheme == "kafka" { rest } else { relay_url }
            },
        );
    assert!(
        printed.iter().any(|l| l
            == &format!(
                "relay: Order, Customer to {broker} at {at} on `shop.<entity type>`, as subscriber `relay`"
            )),
        "it says what it relays: {printed:?}"
    );
    let addr = printed
        .last()
        .unwrap()
        .trim_start_matches("serving the event store on http://")
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    (server, addr)
}

/// Two orders and a customer created over REST, then three more events each: 12 events.
async fn append_over_rest(addr: &str) -> Vec<(String, String)> {
    let mut entities = Vec::new();
    for (entity_type, id) in [
        ("Order", "order-1"),
        ("Customer", "customer-1"),
        ("Order", "order-2"),
    ] {
        let (status, answer) = post(
            addr,
            &format!("/entities/{entity_type}"),
            &json!({"entityId": id, "events": [
                {"eventType": format!("{entity_type}Created"), "eventData": {"n": 1}}
            ]}),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        entities.push((entity_type.to_owned(), id.to_owned()));
    }
    for version in 1..4 {
        for (entity_type, id) in &entities {
            let (status, answer) = post(
                addr,
                &format!("/entities/{entity_type}/{id}"),
                &json!({"expectedVersion": version, "events": [
                    {"eventType": format!("{entity_type}Changed"), "eventData": {"n": version + 1}},
                ]}),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
        }
    }
    entities
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_with_relay_publishes_events_appended_over_rest_to_jetstream() {
    let nats = NatsServer::start();
    let db = eventuate_postgres::embedded::test_database().await;
    let js = async_nats::jetstream::new(connect(&nats).await);
    create_stream(
        &js,
        stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["shop.>".into()],
            ..Default::default()
        },
    )
    .await;
    let (server, addr) = start_relaying(&db.url, &nats.url(), "NATS JetStream");
    let entities = append_over_rest(&addr).await;

    // Every event reaches the stream (the relay runs in the server's process).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = js
            .get_stream("EVENTS")
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        if info.state.messages >= 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 12 events on JetStream",
            info.state.messages
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = store(&db.url).await;
    let events = stored(&store, &entities).await;
    assert_eq!(events.len(), 12);
    check_exactly_once_in_order(&read_stream(&js, "EVENTS").await, &events, |e| {
        format!("shop.{}", e.entity_type)
    });
    assert!(server.terminate().success(), "a clean stop on SIGTERM");
}

/// `--relay kafka://` (a server built with `--features kafka`) against an in-process
/// `MockCluster`: the binary, a separate process, produces to its loopback ports.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_with_relay_produces_events_appended_over_rest_to_kafka() {
    use common::kafka::{check_at_least_once_in_order, read_all};
    use eventuate_relay::kafka::rdkafka::mocking::MockCluster;
    use eventuate_relay::kafka::rdkafka::producer::DefaultProducerContext;

    const TOPICS: [&str; 2] = ["shop.Order", "shop.Customer"];
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    for topic in TOPICS {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    let db = eventuate_postgres::embedded::test_database().await;
    let bootstrap = mock.bootstrap_servers();
    let (server, addr) = start_relaying(&db.url, &format!("kafka://{bootstrap}"), "Kafka");
    let entities = append_over_rest(&addr).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let read = loop {
        let read = read_all(&bootstrap, &TOPICS, 2).await;
        if read.len() >= 12 {
            break read;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 12 events on Kafka",
            read.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let store = store(&db.url).await;
    let events = stored(&store, &entities).await;
    assert_eq!(events.len(), 12);
    let copies = check_at_least_once_in_order(&read, &events);
    assert!(
        copies.values().all(|n| *n == 1),
        "once each in a clean run: {copies:?}"
    );
    assert!(server.terminate().success(), "a clean stop on SIGTERM");
}

#[test]
fn the_binary_refuses_a_relay_without_entity_types() {
    let output = Command::new(env!("CARGO_BIN_EXE_eventuate-server"))
        .args(["--relay", "nats://127.0.0.1:4222"])
        .env_remove("EVENTUATE_RELAY_TYPES")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--relay-types"), "{stderr}");
}
