//! The operator's views: `GET /metrics` after a known workload (in-memory store), and the
//! status page `GET /` in a real headless Chromium driven over the DevTools protocol
//! (PostgreSQL, so that the page shows the horizon too).
//!
//! The browser test needs Debian's `chromium` and Python's `websocket-client` (`.ci/run`
//! installs both); it fails, saying how to install them, when either is missing.

#[allow(dead_code)]
mod chromium_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chromium_support::{chromium, launch_chromium, python_with_websocket};
use eventuate_core::prelude::*;
use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::store::{AppendRequest, ExpectedVersion};
use eventuate_core::subscriber::RetryPolicy;
use eventuate_core::{NewEvent, RepositoryOptions, Subscription};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::test_database;
use eventuate_server::Server;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Clone, Events)]
enum MeterEvent {
    Deposited(Deposited),
}

#[aggregate(name = "Meter", events = MeterEvent)]
#[derive(Debug, Default, Clone)]
struct Meter {
    total: u64,
}

struct Deposit {
    amount: u64,
}

#[command_handler]
impl Meter {
    fn deposit(&self, command: &Deposit) -> Result<Deposited, std::io::Error> {
        if command.amount == 0 {
            return Err(std::io::Error::other("amounts must be positive"));
        }
        Ok(Deposited {
            amount: command.amount,
        })
    }

    #[apply]
    fn deposited(&mut self, event: &Deposited) {
        self.total += event.amount;
    }
}

/// Fails every event of entity `m-poison` until `fixed`; records the entities it handled.
#[derive(Debug, Clone)]
struct View {
    id: &'static str,
    fixed: Arc<AtomicBool>,
    handled: Arc<Mutex<Vec<String>>>,
}

impl View {
    fn new(id: &'static str) -> Self {
        View {
            id,
            fixed: Arc::new(AtomicBool::new(false)),
            handled: Arc::default(),
        }
    }

    fn handled(&self) -> Vec<String> {
        self.handled.lock().expect("lock").clone()
    }
}

impl Subscriber for View {
    fn subscription(&self) -> Subscription {
        Subscription::new(self.id, ["Meter"])
            .partitions(1)
            .retry(RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
            })
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        let entity = &ctx.event().entity_id;
        if entity == "m-poison" && !self.fixed.load(Ordering::SeqCst) {
            return Err(HandlerError::msg("the view's table is missing"));
        }
        self.handled.lock().expect("lock").push(entity.clone());
        Ok(())
    }
}

/// A subscriber whose first delivery finds what it needs unavailable (a broker down).
#[derive(Clone, Default)]
struct Outage {
    failed_once: Arc<AtomicBool>,
}

impl Subscriber for Outage {
    fn subscription(&self) -> Subscription {
        Subscription::new("meter-outage", ["Meter"])
            .partitions(1)
            .retry(RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
            })
    }

    async fn handle(&self, _ctx: &EventContext) -> Result<(), HandlerError> {
        if !self.failed_once.swap(true, Ordering::SeqCst) {
            return Err(HandlerError::unavailable("the broker is down"));
        }
        Ok(())
    }
}

fn options() -> RuntimeOptions {
    RuntimeOptions {
        poll_interval: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(2),
        ..RuntimeOptions::default()
    }
}

type Labels<'a> = &'a [(&'a str, &'a str)];

/// The sample of `name` whose labels are exactly `labels` (in any order), from Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let mut got: Vec<String> = rest
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            got.sort();
            (metric == name && got == wanted).then(|| value.parse().ok())?
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_known_workload() {
    // Before the runtime starts: its lease manager takes the partition at once.
    eventuate_server::install_prometheus().expect("the process's recorder");
    let store = InMemoryEventStore::new();
    let view = View::new("meter-metrics");
    let running = Arc::new(
        Eventuate::new(store.clone())
            .options(options())
            .aggregate::<Meter>()
            .subscriber(view.clone())
            .subscriber(Outage::default())
            .start()
            .expect("start"),
    );
    // The server installs the process's Prometheus recorder.
    let app = Server::new(Arc::new(store.clone()))
        .operations(running.clone())
        .router();
    let repository = running.repository();

    // 8 commands: 6 applied (3 creates, 3 updates), 1 rejected, 1 applied after a conflict.
    for id in ["m-1", "m-2", "m-poison"] {
        repository
            .create_with_id::<Meter>(id, Deposit { amount: 1 })
            .await
            .expect("create");
    }
    repository
        .update::<Meter>("m-1", Deposit { amount: 2 })
        .await
        .expect("update");
    let rejected = repository
        .update::<Meter>("m-1", Deposit { amount: 0 })
        .await;
    assert!(
        matches!(rejected, Err(eventuate_core::Error::Rejected { .. })),
        "{rejected:?}"
    );
    // A repository whose cached state of m-2 goes stale: its next command conflicts, and
    // is loaded and applied again.
    let cached = Repository::new(store).with_options(RepositoryOptions {
        cache_capacity: 16,
        ..RepositoryOptions::default()
    });
    cached
        .update::<Meter>("m-2", Deposit { amount: 1 })
        .await
        .expect("cached update");
    repository
        .update::<Meter>("m-2", Deposit { amount: 1 })
        .await
        .expect("update");
    let retried = cached
        .update::<Meter>("m-2", Deposit { amount: 1 })
        .await
        .expect("conflict, then applied");
    assert_eq!(retried.attempts, 2, "one conflict retry");
    // 6 deliveries (m-1 twice, m-2 four times), m-poison retried once and parked.
    let caught_up = running
        .wait_caught_up(Duration::from_secs(20))
        .await
        .expect("caught up");
    assert_eq!(caught_up.parked, [("meter-metrics".to_owned(), 1)]);

    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::GET)
                .uri("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");

    let meter = ("entity_type", "Meter");
    let sub = ("subscriber", "meter-metrics");
    let (applied, rejected, conflict_retried) = (
        [meter, ("outcome", "applied")],
        [meter, ("outcome", "rejected")],
        [meter, ("outcome", "conflict_retried")],
    );
    let expected: &[(&str, Labels<'_>, f64)] = &[
        ("eventuate_commands_total", &applied, 6.0),
        ("eventuate_commands_total", &rejected, 1.0),
        ("eventuate_commands_total", &conflict_retried, 1.0),
        ("eventuate_command_conflict_retries_total", &[meter], 1.0),
        ("eventuate_command_duration_seconds_count", &[meter], 8.0),
        ("eventuate_deliveries_total", &[sub], 6.0),
        ("eventuate_delivery_retries_total", &[sub], 1.0),
        ("eventuate_parked_total", &[sub], 1.0),
        ("eventuate_delivery_latency_seconds_count", &[sub], 6.0),
        ("eventuate_subscriber_lag", &[sub, ("partition", "0")], 0.0),
        ("eventuate_lease_acquisitions_total", &[sub], 1.0),
    ];
    for (name, labels, value) in expected {
        assert_eq!(
            sample(&text, name, labels),
            Some(*value),
            "{name}{labels:?} in:\n{text}"
        );
    }
    // A pause while what a handler needs is unavailable is a retry, in the metric as in
    // `status()`.
    let outage = ("subscriber", "meter-outage");
    assert_eq!(
        sample(&text, "eventuate_delivery_retries_total", &[outage]),
        Some(1.0),
        "in:\n{text}"
    );
    let status = running.status().await.expect("status");
    let outage_status = status
        .iter()
        .find(|s| s.subscriber_id == "meter-outage")
        .expect("the outage subscriber's partition");
    assert_eq!(outage_status.retried, 1, "{status:?}");
    for absent in [
        "eventuate_lease_takeovers_total",
        "eventuate_lease_losses_total",
    ] {
        assert_eq!(sample(&text, absent, &[sub]), None, "{absent} in:\n{text}");
    }
    let le = |bound: &str| {
        sample(
            &text,
            "eventuate_command_duration_seconds_bucket",
            &[meter, ("le", bound)],
        )
    };
    assert_eq!(le("+Inf"), Some(8.0), "histogram buckets in:\n{text}");
    assert!(le("0.0005").is_some(), "the 0.5 ms bucket in:\n{text}");

    drop(app);
    Arc::try_unwrap(running)
        .expect("only owner")
        .shutdown()
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_the_subscriber_and_replays_its_parked_event() {
    let binary = chromium();
    python_with_websocket();
    let db = test_database().await;
    let store = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .max_connections(4)
        .connect(&db.url)
        .await
        .expect("store");
    let view = View::new("meter-page");
    let running = Arc::new(
        Eventuate::new(store.clone())
            .options(options())
            .aggregate::<Meter>()
            .subscriber(view.clone())
            .start()
            .expect("start"),
    );
    // Appended through the store, not the repository: the metrics test, which may run at
    // the same time in this process, counts the repository's `Meter` commands.
    for id in ["m-1", "m-2", "m-poison", "m-3"] {
        store
            .append(AppendRequest {
                entity_type: "Meter".to_owned(),
                entity_id: id.to_owned(),
                expected: ExpectedVersion::New,
                events: vec![NewEvent::new("Deposited", r#"{"amount":1}"#)],
                idempotency: None,
            })
            .await
            .expect("append");
    }
    let caught_up = running
        .wait_caught_up(Duration::from_secs(20))
        .await
        .expect("caught up");
    assert_eq!(caught_up.parked, [("meter-page".to_owned(), 1)]);
    assert!(!view.handled().contains(&"m-poison".to_owned()));
    // The operator fixes the view; the replay from the page delivers the parked event.
    view.fixed.store(true, Ordering::SeqCst);

    let server = Server::new(Arc::new(store.clone()))
        .operations(running.clone())
        .postgres_admin(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });

    let started = Instant::now();
    let browser = tokio::task::spawn_blocking(launch_chromium)
        .await
        .expect("launch");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cdp.py");
    let before = std::env::temp_dir().join("eventuate-status-page.png");
    let after = std::env::temp_dir().join("eventuate-status-page-after-replay.png");
    let mut cdp = Command::new("python3");
    cdp.arg(script)
        .arg(browser.port.to_string())
        .arg(format!("http://{address}/"))
        .arg("meter-page")
        .arg(&before)
        .arg(&after);
    let output = tokio::task::spawn_blocking(move || cdp.output())
        .await
        .expect("join")
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "tests/cdp.py against {binary}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "{} ({:.1} s in the browser); screenshots: {} and {}",
        String::from_utf8_lossy(&output.stdout).trim(),
        started.elapsed().as_secs_f64(),
        before.display(),
        after.display()
    );

    // The click requested the replay; the consumer delivers the event to the fixed handler.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !view.handled().contains(&"m-poison".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "the parked event was not delivered after the page's replay: {:?}",
            view.handled()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parked = running.parked("meter-page").await.expect("parked");
    assert!(parked.is_empty(), "{parked:?}");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for entity in view.handled() {
        *counts.entry(entity).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), 4, "{counts:?}");

    drop(browser);
    let _ = stop.send(());
    serving.await.expect("join").expect("served");
    Arc::try_unwrap(running)
        .expect("only owner")
        .shutdown()
        .await
        .expect("shutdown");
    store.close().await;
}
