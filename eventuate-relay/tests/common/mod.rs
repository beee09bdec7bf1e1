//! What the relay tests share: a throwaway `nats-server -js` per test, appends, reading a
//! stream back, and the scenario of a relay that crashes between the broker's acknowledgement
//! and its checkpoint, for any broker.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use eventuate_core::runtime::{Running, RuntimeOptions};
use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion};
use eventuate_core::subscription_store::SubscriptionStore;
use eventuate_core::{BatchOutcome, EventEnvelope, EventStore, Eventuate, NewEvent, RetryPolicy};
use eventuate_postgres::PostgresEventStore;
use eventuate_relay::{Broker, Message, Relay, RelayOptions, Topics};
use futures_util::StreamExt;
use tokio::sync::Notify;
use uuid::Uuid;

#[cfg(feature = "kafka")]
pub mod kafka;

const INSTALL_HINT: &str = "the NATS relay tests need `nats-server` (2.9 or later, with \
     JetStream). Install it with `apt-get install -y nats-server` (Debian/Ubuntu; the binary \
     goes to /usr/sbin), or download it from https://github.com/nats-io/nats-server/releases, \
     or set EVENTUATE_NATS_SERVER to the path of the binary";

/// The `nats-server` binary: `$EVENTUATE_NATS_SERVER`, then `PATH`, then the sbin
/// directories Debian installs it in (not on a normal user's `PATH`). Panics with how to
/// install it when there is none: these tests never skip silently.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EVENTUATE_NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "EVENTUATE_NATS_SERVER={} is not a file; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("nats-server not found: {INSTALL_HINT}"))
}

/// A `nats-server -js` on a free loopback port with its own store directory, stopped and
/// removed when dropped. It runs under a small shell that stops it when its stdin closes, so
/// it also goes away when the test process dies without dropping it.
pub struct NatsServer {
    pub port: u16,
    pub dir: PathBuf,
    running: Option<(Child, ChildStdin)>,
}

impl NatsServer {
    pub fn start() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "eventuate-relay-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = NatsServer {
            port,
            dir,
            running: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again), on the same port and store directory.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "already running");
        let binary = nats_server_binary();
        let log = self.dir.join("nats-server.log");
        let store = self.dir.join("jetstream");
        // The shell stops the server (SIGTERM: a clean stop) when a line arrives or stdin
        // closes, then waits for it.
        let script = r#""$0" -js -a 127.0.0.1 -p "$1" -sd "$2" >>"$3" 2>&1 & pid=$!
read -r _
kill -TERM "$pid" 2>/dev/null
wait "$pid""#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&binary)
            .arg(self.port.to_string())
            .arg(&store)
            .arg(&log)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdin = child.stdin.take().unwrap();
        self.running = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on port {} within 15 s; its log:\n{}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it cleanly and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.running.take() {
            let _ = writeln!(stdin);
            drop(stdin);
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats-server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn connect(server: &NatsServer) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .expect("connect to nats-server")
}

/// Creates a stream, retrying while JetStream is still starting.
pub async fn create_stream(js: &jetstream::Context, config: stream::Config) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot create stream {}: {e}", config.name),
        }
    }
}

/// A message read back from a stream.
#[derive(Clone, Debug)]
pub struct Received {
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub value: serde_json::Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Every message of a stream, in stream order, through a pull consumer.
pub async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<Received> {
    let stream = js.get_stream(name).await.expect("get stream");
    let total = stream.get_info().await.expect("stream info").state.messages;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: -1,
            ..Default::default()
        })
        .await
        .expect("create consumer");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() as u64) < total && Instant::now() < deadline {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            let headers = message
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.first().map(|v| v.to_string()).unwrap_or_default(),
                    )
                })
                .collect();
            out.push(Received {
                subject: message.subject.to_string(),
                headers,
                value: serde_json::from_slice(&message.payload).expect("JSON value"),
            });
            message.ack().await.expect("ack");
        }
    }
    assert_eq!(
        out.len() as u64,
        total,
        "read every message of stream {name}"
    );
    out
}

pub async fn store(url: &str) -> PostgresEventStore {
    PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(url)
        .await
        .expect("connect")
}

pub fn options() -> RuntimeOptions {
    RuntimeOptions {
        poll_interval: Duration::from_millis(200),
        lease_ttl: Duration::from_millis(900),
        batch_size: 50,
        ..RuntimeOptions::default()
    }
}

pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
    }
}

/// Appends the next event of an entity (this test's only writer of it), with cause tracing
/// ids on every third event.
pub async fn append(
    store: &PostgresEventStore,
    entity_type: &str,
    entity_id: &str,
    version: u64,
    payload: String,
) {
    let mut event = NewEvent::new(format!("{entity_type}Changed"), payload);
    if version % 3 == 2 {
        event.metadata.causation_id = Some(uuid::Uuid::new_v4());
        event.metadata.correlation_id = Some(uuid::Uuid::new_v4());
    }
    let request = AppendRequest {
        entity_type: entity_type.into(),
        entity_id: entity_id.into(),
        expected: if version == 0 {
            ExpectedVersion::New
        } else {
            ExpectedVersion::Exactly(version)
        },
        events: vec![event],
        idempotency: None,
    };
    match store.append(request).await.expect("append") {
        AppendOutcome::Appended { .. } => {}
        AppendOutcome::Duplicate => unreachable!("no idempotency key"),
    }
}

/// Every stored event of these entities, in stream order.
pub async fn stored(
    store: &PostgresEventStore,
    entities: &[(String, String)],
) -> Vec<EventEnvelope> {
    let mut all = Vec::new();
    for (t, id) in entities {
        all.extend(store.load(t, id, 0).await.expect("load"));
    }
    all.sort_by_key(|e| e.position);
    all
}

/// Checks that `received` holds each of `events` exactly once, each entity's in version
/// order, with the right subject, headers and value.
pub fn check_exactly_once_in_order(
    received: &[Received],
    events: &[EventEnvelope],
    subject: impl Fn(&EventEnvelope) -> String,
) {
    let by_id: HashMap<String, &EventEnvelope> =
        events.iter().map(|e| (e.event_id.to_string(), e)).collect();
    let mut seen = std::collections::HashSet::new();
    let mut last_version: HashMap<(String, String), u64> = HashMap::new();
    for r in received {
        let id = r
            .header(eventuate_relay::headers::EVENT_ID)
            .expect("event id header");
        let event = by_id
            .get(id)
            .unwrap_or_else(|| panic!("unknown event {id}"));
        assert!(seen.insert(id.to_owned()), "event {id} received twice");
        assert_eq!(r.subject, subject(event));
        assert_eq!(r.header("Nats-Msg-Id"), Some(id));
        let expected = [
            (
                eventuate_relay::headers::EVENT_TYPE,
                Some(event.event_type.clone()),
            ),
            (
                eventuate_relay::headers::ENTITY_TYPE,
                Some(event.entity_type.clone()),
            ),
            (
                eventuate_relay::headers::ENTITY_ID,
                Some(event.entity_id.clone()),
            ),
            (
                eventuate_relay::headers::ENTITY_VERSION,
                Some(event.entity_version.to_string()),
            ),
            (
                eventuate_relay::headers::POSITION,
                Some(event.position.to_string()),
            ),
            (
                eventuate_relay::headers::CAUSATION_ID,
                event.metadata.causation_id.map(|i| i.to_string()),
            ),
            (
                eventuate_relay::headers::CORRELATION_ID,
                event.metadata.correlation_id.map(|i| i.to_string()),
            ),
        ];
        for (name, value) in expected {
            assert_eq!(
                r.header(name),
                value.as_deref(),
                "header {name} of event {id}"
            );
        }
        assert_eq!(r.value, eventuate_relay::envelope_json(event));
        let last = last_version
            .entry((event.entity_type.clone(), event.entity_id.clone()))
            .or_insert(0);
        assert_eq!(
            event.entity_version,
            *last + 1,
            "{}/{} out of order",
            event.entity_type,
            event.entity_id
        );
        *last = event.entity_version;
    }
    assert_eq!(seen.len(), events.len(), "every event received");
}

pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// `Order` and `Customer` entities, `n` of each.
pub fn entities(n: usize) -> Vec<(String, String)> {
    (0..n)
        .flat_map(|i| {
            [
                ("Order".to_owned(), format!("order-{i}")),
                ("Customer".to_owned(), format!("customer-{i}")),
            ]
        })
        .collect()
}

/// Appends event `version` of an entity with the payload `{"n": version, "entity": id}`.
pub async fn append_numbered(
    store: &PostgresEventStore,
    entity_type: &str,
    entity_id: &str,
    version: u64,
) {
    let payload = format!("{{\"n\":{version},\"entity\":\"{entity_id}\"}}");
    append(store, entity_type, entity_id, version, payload).await;
}

/// Appends `rounds` events to each entity, round-robin, starting at version `from`.
pub async fn append_rounds(
    store: &PostgresEventStore,
    entities: &[(String, String)],
    from: u64,
    rounds: u64,
) {
    for v in from..from + rounds {
        for (t, id) in entities {
            append_numbered(store, t, id, v).await;
        }
    }
}

/// Waits (30 s at most) until `running` has caught up with nothing parked.
pub async fn caught_up(running: &Running) {
    running
        .wait_caught_up(Duration::from_secs(30))
        .await
        .unwrap()
        .nothing_parked()
        .unwrap();
}

/// A broker that records the ids it published and, once `block` is set, hangs after the
/// broker acknowledged a run, before the relay can checkpoint it: a relay dropped then is one
/// that crashed between the broker's acknowledgement and its checkpoint.
pub struct Recording<B> {
    pub inner: Arc<B>,
    pub published: Arc<Mutex<Vec<Uuid>>>,
    pub block: Arc<AtomicBool>,
    pub blocked: Arc<Notify>,
}

impl<B> Clone for Recording<B> {
    fn clone(&self) -> Self {
        Recording {
            inner: self.inner.clone(),
            published: self.published.clone(),
            block: self.block.clone(),
            blocked: self.blocked.clone(),
        }
    }
}

impl<B: Broker> Recording<B> {
    pub fn new(inner: B) -> Self {
        Recording {
            inner: Arc::new(inner),
            published: Arc::default(),
            block: Arc::default(),
            blocked: Arc::default(),
        }
    }

    fn published(&self) -> Vec<Uuid> {
        self.published.lock().unwrap().clone()
    }
}

impl<B: Broker> Broker for Recording<B> {
    async fn publish(&self, messages: &[Message]) -> BatchOutcome {
        let outcome = self.inner.publish(messages).await;
        self.published
            .lock()
            .unwrap()
            .extend(messages[..outcome.handled].iter().map(|m| m.event_id));
        if self.block.load(Ordering::SeqCst) {
            self.blocked.notify_one();
            std::future::pending::<()>().await;
        }
        outcome
    }
}

/// What [`crash_before_checkpoint`] leaves for the broker's own checks.
pub struct AfterTheCrash {
    /// Every stored event, in stream order: 40 checkpointed before the crash, 40 after.
    pub events: Vec<EventEnvelope>,
    /// The ids of the events after the first relay's last checkpoint.
    pub not_checkpointed: HashSet<Uuid>,
    /// Of those, the ids the first relay published (acknowledged by the broker) before it
    /// was dropped: not empty.
    pub published_unchecked: HashSet<Uuid>,
    /// What the second relay, which took the partition over, published: exactly
    /// `not_checkpointed`.
    pub republished: HashSet<Uuid>,
    /// The second relay's runtime, caught up (shut it down after the checks).
    pub running: Running,
}

/// A relay that crashes after the broker acknowledged a run and before its checkpoint, and
/// the relay that takes over: 4 orders and 4 customers, 5 events each relayed and
/// checkpointed, 5 more each of which the first relay publishes some and is dropped while
/// blocked (see [`Recording`]); a second relay (a new runtime, once the first one's lease
/// expired) publishes again exactly what was not checkpointed. `broker` makes each relay's
/// broker; the runtimes run with `runtime`.
pub async fn crash_before_checkpoint<B: Broker>(
    store: &PostgresEventStore,
    runtime: RuntimeOptions,
    broker: impl Fn() -> B,
) -> AfterTheCrash {
    let entities = entities(4);
    let relay_options = || {
        let mut o = RelayOptions::new(
            "relay",
            ["Order", "Customer"],
            Topics::per_entity_type("events."),
        );
        o.batch = 16;
        o
    };
    let first = Recording::new(broker());
    append_rounds(store, &entities, 0, 5).await;
    let running = Eventuate::new(store.clone())
        .options(runtime.clone())
        .subscriber(Relay::new(first.clone(), relay_options()))
        .start()
        .unwrap();
    caught_up(&running).await;
    // From now on the first relay publishes, then never checkpoints: it is dropped (a
    // crash) while blocked after the broker's acknowledgement.
    first.block.store(true, Ordering::SeqCst);
    append_rounds(store, &entities, 5, 5).await;
    tokio::time::timeout(Duration::from_secs(30), first.blocked.notified())
        .await
        .expect("the first relay published a run after the checkpoint");
    drop(running);
    let events = stored(store, &entities).await;
    assert_eq!(events.len(), 80);
    let checkpoint = store.subscriber("relay").await.unwrap().partitions[0].checkpoint;
    // The checkpoint is past the first 40 events (at the head's horizon), before the rest.
    assert!(
        checkpoint >= events[39].position && checkpoint < events[40].position,
        "checkpointed up to the first 40: {checkpoint}"
    );
    let not_checkpointed: HashSet<Uuid> = events[40..].iter().map(|e| e.event_id).collect();
    let published_unchecked: HashSet<Uuid> = first
        .published()
        .into_iter()
        .filter(|id| not_checkpointed.contains(id))
        .collect();
    assert!(
        !published_unchecked.is_empty(),
        "the first relay published events it did not checkpoint"
    );

    let second = Recording::new(broker());
    let running = Eventuate::new(store.clone())
        .options(runtime)
        .subscriber(Relay::new(second.clone(), relay_options()))
        .start()
        .unwrap();
    // `wait_caught_up` counts a partition another node holds as caught up: first wait for
    // the dropped runtime's lease to expire and this one to take the partition.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running.status().await.unwrap().iter().all(|s| s.owned) {
        assert!(Instant::now() < deadline, "the partition was taken over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    caught_up(&running).await;
    let republished: HashSet<Uuid> = second.published().into_iter().collect();
    assert_eq!(
        republished, not_checkpointed,
        "the second relay publishes exactly what was not checkpointed"
    );
    AfterTheCrash {
        events,
        not_checkpointed,
        published_unchecked,
        republished,
        running,
    }
}
