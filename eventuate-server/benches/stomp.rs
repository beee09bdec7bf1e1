//! Bench: what a STOMP client gets compared to an in-process subscriber, in the same run over
//! the same PostgreSQL (a throwaway server with fsync and synchronous_commit on, started by
//! `eventuate_postgres::embedded`; or `DATABASE_URL`).
//!
//! 1. **Latency** at 200 events/s: from just before an event's append to its arrival at a STOMP
//!    client (a raw TCP client in this process that acknowledges each message at once,
//!    `client-individual`, prefetch 1) and at an in-process subscriber, both subscribed before
//!    the load starts; p50 and p99.
//! 2. **Throughput**: a backlog of events, delivered from the beginning to a new subscriber
//!    id: STOMP with prefetch 1 and with prefetch 64, and an in-process subscriber.
//!
//! Run: `cargo bench -p eventuate-server --bench stomp` (`STOMP_BENCH_SECONDS`, default 15,
//! sets the latency phase's length; `STOMP_BENCH_BACKLOG`, default 20000, the backlog).

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::store::{AppendRequest, ExpectedVersion};
use eventuate_core::{
    EventContext, EventStore, Eventuate, HandlerError, NewEvent, Subscriber, Subscription,
};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
use eventuate_server::stomp::frame::{Decoded, Frame, FrameLimits, decode};
use eventuate_server::{StompOptions, StompServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use uuid::Uuid;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Arrivals: event id and when it arrived.
type Arrivals = mpsc::UnboundedSender<(Uuid, Instant)>;

/// An in-process subscriber that reports each arrival.
struct Probe {
    id: &'static str,
    entity_type: &'static str,
    arrivals: Arrivals,
}

impl Subscriber for Probe {
    fn subscription(&self) -> Subscription {
        Subscription::new(self.id, [self.entity_type])
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        let _ = self.arrivals.send((ctx.event().event_id, Instant::now()));
        Ok(())
    }
}

/// A STOMP client that acknowledges every message at once and reports each arrival.
async fn stomp_client(
    addr: SocketAddr,
    destination: String,
    prefetch: usize,
    arrivals: Arrivals,
) -> BoxResult<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let connect = Frame::new("CONNECT")
        .header("accept-version", "1.2")
        .header("host", "bench")
        .header("heart-beat", "0,0");
    stream.write_all(&connect.encode()).await?;
    let subscribe = Frame::new("SUBSCRIBE")
        .header("id", "0")
        .header("destination", destination)
        .header("ack", "client-individual")
        .header("prefetch-count", prefetch.to_string());
    stream.write_all(&subscribe.encode()).await?;
    let limits = FrameLimits::default();
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut acks = Vec::new();
        loop {
            match decode(&buffer, &limits)? {
                Decoded::Incomplete => break,
                Decoded::HeartBeat(used) => {
                    buffer.drain(..used);
                }
                Decoded::Frame(frame, used) => {
                    buffer.drain(..used);
                    match frame.command.as_str() {
                        "MESSAGE" => {
                            let now = Instant::now();
                            let body: serde_json::Value = serde_json::from_slice(&frame.body)?;
                            let id: Uuid = body["id"].as_str().unwrap_or_default().parse()?;
                            let _ = arrivals.send((id, now));
                            let ack = frame.get("ack").unwrap_or_default();
                            acks.extend(Frame::new("ACK").header("id", ack).encode());
                        }
                        "ERROR" => return Err(format!("STOMP ERROR: {frame:?}").into()),
                        _ => {}
                    }
                }
            }
        }
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
        }
    }
}

/// Collects `count` arrivals (or fails after `within`).
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(Uuid, Instant)>,
    count: usize,
    within: Duration,
) -> BoxResult<HashMap<Uuid, Instant>> {
    let mut got = HashMap::with_capacity(count);
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((id, at))) => {
                got.entry(id).or_insert(at);
            }
            _ => return Err(format!("{} of {count} arrivals within {within:?}", got.len()).into()),
        }
    }
    Ok(got)
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

async fn append_one(
    store: &PostgresEventStore,
    entity_type: &str,
    entity_id: String,
) -> BoxResult<Uuid> {
    let event = NewEvent::new("Happened", r#"{"n":1}"#);
    let id = event.event_id;
    store
        .append(AppendRequest {
            entity_type: entity_type.to_owned(),
            entity_id,
            expected: ExpectedVersion::New,
            events: vec![event],
            idempotency: None,
        })
        .await?;
    Ok(id)
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() -> BoxResult<()> {
    let seconds = env_number("STOMP_BENCH_SECONDS", 15);
    let backlog = env_number("STOMP_BENCH_BACKLOG", 20_000);
    let (_server, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let options = Options::default()
                .fsync(true)
                .setting("synchronous_commit", "on");
            let server =
                tokio::task::spawn_blocking(move || ThrowawayPostgres::start(options)).await??;
            let db = server.create_database().await?;
            (Some(server), db.url)
        }
    };
    let store = PostgresEventStore::builder()
        .schema(format!("stomp_bench_{}", Uuid::new_v4().simple()))
        .migrate_on_connect(true)
        .connect(&url)
        .await?;
    let runtime = RuntimeOptions::default();
    let stomp =
        StompServer::new(Arc::new(store.clone()), Arc::new(store.clone())).options(StompOptions {
            runtime: runtime.clone(),
            ..StompOptions::default()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn({
        let stomp = stomp.clone();
        async move {
            stomp
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        }
    });

    // 1. Latency at 200 events/s.
    let (local_tx, mut local_rx) = mpsc::unbounded_channel();
    let running = Eventuate::new(store.clone())
        .options(runtime.clone())
        .known_entity_type("Paced")
        .subscriber(Probe {
            id: "bench-local",
            entity_type: "Paced",
            arrivals: local_tx,
        })
        .start()?;
    let (stomp_tx, mut stomp_rx) = mpsc::unbounded_channel();
    let client = tokio::spawn(stomp_client(
        addr,
        "/subscriptions/bench-stomp?types=Paced&from=end".to_owned(),
        1,
        stomp_tx,
    ));
    running.wait_caught_up(Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = seconds * 200;
    let mut stamps = HashMap::with_capacity(count);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let began = Instant::now();
    for i in 0..count {
        tick.tick().await;
        let stamp = Instant::now();
        let id = append_one(&store, "Paced", format!("p-{i}")).await?;
        stamps.insert(id, stamp);
    }
    let rate = count as f64 / began.elapsed().as_secs_f64();
    let local = collect(&mut local_rx, count, Duration::from_secs(60)).await?;
    let remote = collect(&mut stomp_rx, count, Duration::from_secs(60)).await?;
    client.abort();
    running.shutdown().await?;
    let latencies = |arrivals: &HashMap<Uuid, Instant>| {
        let mut v: Vec<Duration> = stamps
            .iter()
            .filter_map(|(id, stamp)| {
                arrivals
                    .get(id)
                    .map(|at| at.saturating_duration_since(*stamp))
            })
            .collect();
        v.sort();
        v
    };
    let (local_l, remote_l) = (latencies(&local), latencies(&remote));

    // 2. Throughput from a backlog.
    let mut appended = 0;
    while appended < backlog {
        let n = (backlog - appended).min(100);
        store
            .append(AppendRequest {
                entity_type: "Backlog".to_owned(),
                entity_id: format!("b-{appended}"),
                expected: ExpectedVersion::New,
                events: (0..n)
                    .map(|_| NewEvent::new("Happened", r#"{"n":1}"#))
                    .collect(),
                idempotency: None,
            })
            .await?;
        appended += n;
    }
    let mut throughput = Vec::new();
    for prefetch in [1usize, 64] {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let began = Instant::now();
        let client = tokio::spawn(stomp_client(
            addr,
            format!("/subscriptions/bench-backlog-{prefetch}?types=Backlog"),
            prefetch,
            tx,
        ));
        collect(&mut rx, backlog, Duration::from_secs(600)).await?;
        let secs = began.elapsed().as_secs_f64();
        client.abort();
        throughput.push((
            format!("STOMP client, prefetch-count {prefetch}"),
            backlog as f64 / secs,
        ));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let began = Instant::now();
    let running = Eventuate::new(store.clone())
        .options(runtime)
        .known_entity_type("Backlog")
        .subscriber(Probe {
            id: "bench-backlog-local",
            entity_type: "Backlog",
            arrivals: tx,
        })
        .start()?;
    collect(&mut rx, backlog, Duration::from_secs(600)).await?;
    throughput.push((
        "in-process subscriber".to_owned(),
        backlog as f64 / began.elapsed().as_secs_f64(),
    ));
    running.shutdown().await?;

    let _ = stop.send(());
    served.await??;
    store.close().await;

    println!(
        "STOMP bench: {count} events at {rate:.0}/s (one event per append), then a backlog of {backlog}"
    );
    println!();
    println!("| delivery | latency p50 | latency p99 |");
    println!("| --- | --- | --- |");
    for (label, v) in [
        ("in-process subscriber", &local_l),
        ("STOMP client (TCP, client-individual)", &remote_l),
    ] {
        println!(
            "| {label} | {:.2} ms | {:.2} ms |",
            percentile(v, 50),
            percentile(v, 99)
        );
    }
    println!();
    println!("| delivery from a backlog | events/s |");
    println!("| --- | --- |");
    for (label, rate) in throughput {
        println!("| {label} | {rate:.0} |");
    }
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("stomp bench failed: {e}");
        std::process::exit(1);
    }
}
