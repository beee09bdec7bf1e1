//! The relay's benchmark: each figure next to a raw `async-nats` JetStream producer publishing
//! the same messages in the same run, against the same `nats-server`, and as a ratio
//! (machines here are shared and noisy: only ratios compare between runs).
//!
//! ```text
//! cargo bench -p eventuate-relay --bench relay -- --quick   # about a minute
//! cargo bench -p eventuate-relay --bench relay              # full
//! ```
//!
//! - **Throughput**: a backlog of N stored events (one entity type, 100 entities) relayed
//!   from the start, timed until the stream holds all N; the raw producer publishes the same
//!   N messages (built beforehand) with the relay's window: up to 64 publishes in flight,
//!   then their acknowledgements.
//! - **Latency** at 200 events/s: from an append's return (its commit) to the broker's
//!   acknowledgement of its message, p50 and p99. The relay's acknowledgement times are
//!   recorded by a [`Broker`] wrapper around [`NatsBroker`]; the raw producer publishes each
//!   event right after its append returns and awaits the acknowledgement (a dual write, the
//!   floor a relay cannot beat).
//!
//! Rounds alternate relay and raw; each figure is the median over rounds. Without
//! `DATABASE_URL` a throwaway PostgreSQL with durable settings (fsync and synchronous_commit
//! on) is started; `nats-server` is found as in the tests (`EVENTUATE_NATS_SERVER`, `PATH`,
//! `/usr/sbin`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion};
use eventuate_core::{BatchOutcome, EventEnvelope, EventStore, Eventuate, NewEvent};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
use eventuate_relay::nats::{MSG_ID, NatsBroker};
use eventuate_relay::{Broker, Message, Relay, RelayOptions, Topics};

use common::{NatsServer, connect, create_stream};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ENTITIES: usize = 100;
const WINDOW: usize = 64;
const RATE: u64 = 200;

fn main() -> BoxResult<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(quick))
}

async fn run(quick: bool) -> BoxResult<()> {
    let (backlog, rounds, latency_secs) = if quick {
        (5_000, 2, 3)
    } else {
        (20_000, 3, 10)
    };
    let (_pg, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let options = Options::default()
                .fsync(true)
                .setting("synchronous_commit", "on");
            let pg =
                tokio::task::spawn_blocking(move || ThrowawayPostgres::start(options)).await??;
            let url = pg.create_database().await?.url;
            (Some(pg), url)
        }
    };
    let store = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&url)
        .await?;
    let nats = NatsServer::start();
    let client = connect(&nats).await;
    let js = jetstream::new(client.clone());

    eprintln!("appending a backlog of {backlog} events ...");
    append_backlog(&store, backlog).await?;
    let events = load_all(&store, "Bench").await?;
    assert_eq!(events.len(), backlog);

    let mut relay_rates = Vec::new();
    let mut raw_rates = Vec::new();
    let mut relay_latency = Vec::new();
    let mut raw_latency = Vec::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}: throughput", round + 1);
        relay_rates.push(relay_throughput(&store, &client, &js, round, backlog).await?);
        raw_rates.push(raw_throughput(&js, round, &events).await?);
        eprintln!("round {}/{rounds}: latency at {RATE} events/s", round + 1);
        relay_latency.push(relay_latency_run(&store, &js, round, latency_secs).await?);
        raw_latency.push(raw_latency_run(&store, &js, round, latency_secs, &events[0]).await?);
    }

    let relay_rate = median(&relay_rates);
    let raw_rate = median(&raw_rates);
    let (relay_p50, relay_p99) = median_pair(&relay_latency);
    let (raw_p50, raw_p99) = median_pair(&raw_latency);
    println!(
        "\nrelay benchmark ({} mode, {rounds} rounds, medians; nats-server {}, PostgreSQL fsync on)\n",
        if quick { "quick" } else { "full" },
        nats_version()
    );
    println!("| workload | relay | raw async-nats producer | relay / raw |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| throughput, backlog of {backlog} events | {relay_rate:.0} events/s | {raw_rate:.0} events/s | {:.2} |",
        relay_rate / raw_rate
    );
    println!(
        "| commit to broker ack at {RATE} events/s, p50 | {} | {} | {:.1} |",
        ms(relay_p50),
        ms(raw_p50),
        relay_p50.as_secs_f64() / raw_p50.as_secs_f64()
    );
    println!(
        "| commit to broker ack at {RATE} events/s, p99 | {} | {} | {:.1} |",
        ms(relay_p99),
        ms(raw_p99),
        relay_p99.as_secs_f64() / raw_p99.as_secs_f64()
    );
    println!(
        "\nraw rounds: relay {relay_rates:.0?} events/s, raw {raw_rates:.0?} events/s; \
         latency (p50, p99) relay {relay_latency:?}, raw {raw_latency:?}"
    );
    store.close().await;
    Ok(())
}

/// `backlog` events of 100 `Bench` entities, 10 per append.
async fn append_backlog(store: &PostgresEventStore, backlog: usize) -> BoxResult<()> {
    let per_append = 10;
    let mut versions = vec![0u64; ENTITIES];
    for chunk in 0..backlog / per_append {
        let entity = chunk % ENTITIES;
        let events = (0..per_append)
            .map(|i| {
                NewEvent::new(
                    "BenchChanged",
                    format!(
                        "{{\"n\":{},\"entity\":{entity}}}",
                        versions[entity] + i as u64
                    ),
                )
            })
            .collect();
        append(
            store,
            "Bench",
            &format!("bench-{entity}"),
            versions[entity],
            events,
        )
        .await?;
        versions[entity] += per_append as u64;
    }
    Ok(())
}

async fn append(
    store: &PostgresEventStore,
    entity_type: &str,
    entity_id: &str,
    version: u64,
    events: Vec<NewEvent>,
) -> BoxResult<Vec<eventuate_core::Position>> {
    let request = AppendRequest {
        entity_type: entity_type.into(),
        entity_id: entity_id.into(),
        expected: if version == 0 {
            ExpectedVersion::New
        } else {
            ExpectedVersion::Exactly(version)
        },
        events,
        idempotency: None,
    };
    match store.append(request).await? {
        AppendOutcome::Appended { positions, .. } => Ok(positions),
        AppendOutcome::Duplicate => Err("no idempotency key, yet a duplicate".into()),
    }
}

/// Every stored event of the backlog's entities, in stream order.
async fn load_all(store: &PostgresEventStore, entity_type: &str) -> BoxResult<Vec<EventEnvelope>> {
    let mut out = Vec::new();
    for entity in 0..ENTITIES {
        out.extend(
            store
                .load(entity_type, &format!("bench-{entity}"), 0)
                .await?,
        );
    }
    out.sort_by_key(|e| e.position);
    Ok(out)
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> BoxResult<u64> {
    Ok(js.get_stream(name).await?.get_info().await?.state.messages)
}

async fn new_stream(js: &jetstream::Context, name: &str, subjects: &str) {
    create_stream(
        js,
        stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            ..Default::default()
        },
    )
    .await;
}

/// The relay from the start of the backlog: events/s until the stream holds all of it.
async fn relay_throughput(
    store: &PostgresEventStore,
    client: &async_nats::Client,
    js: &jetstream::Context,
    round: usize,
    backlog: usize,
) -> BoxResult<f64> {
    let name = format!("RELAY{round}");
    new_stream(js, &name, &format!("relay{round}.>")).await;
    let started = Instant::now();
    let running = Eventuate::new(store.clone())
        .subscriber(Relay::nats(
            client.clone(),
            RelayOptions::new(
                format!("bench-relay-{round}"),
                ["Bench"],
                Topics::per_entity_type(format!("relay{round}.")),
            ),
        ))
        .start()?;
    while stream_messages(js, &name).await? < backlog as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    running.shutdown().await?;
    Ok(backlog as f64 / elapsed.as_secs_f64())
}

/// The same messages through a raw JetStream producer: up to `WINDOW` publishes in flight.
async fn raw_throughput(
    js: &jetstream::Context,
    round: usize,
    events: &[EventEnvelope],
) -> BoxResult<f64> {
    let name = format!("RAW{round}");
    new_stream(js, &name, &format!("raw{round}.>")).await;
    let topics = Topics::per_entity_type(format!("raw{round}."));
    let messages: Vec<Message> = events
        .iter()
        .map(|e| Message::from_event(e, &topics))
        .collect();
    let started = Instant::now();
    for window in messages.chunks(WINDOW) {
        let mut acks = VecDeque::with_capacity(window.len());
        for m in window {
            acks.push_back(raw_publish(js, m).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(stream_messages(js, &name).await?, events.len() as u64);
    Ok(events.len() as f64 / elapsed.as_secs_f64())
}

async fn raw_publish(
    js: &jetstream::Context,
    m: &Message,
) -> BoxResult<jetstream::context::PublishAckFuture> {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID, m.event_id.to_string().as_str());
    for (name, value) in &m.headers {
        headers.insert(*name, value.as_str());
    }
    Ok(js
        .publish_with_headers(
            m.topic.clone(),
            headers,
            bytes::Bytes::copy_from_slice(&m.value),
        )
        .await?)
}

/// Records when the broker acknowledged each message, by the event's position.
#[derive(Clone)]
struct Timed {
    inner: NatsBroker,
    acked: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Broker for Timed {
    async fn publish(&self, messages: &[Message]) -> BatchOutcome {
        let outcome = self.inner.publish(messages).await;
        let now = Instant::now();
        let mut acked = self.acked.lock().unwrap();
        for m in &messages[..outcome.handled] {
            let position = m
                .headers
                .iter()
                .find(|(name, _)| *name == eventuate_relay::headers::POSITION)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            acked.entry(position).or_insert(now);
        }
        outcome
    }
}

/// Appends at `RATE` per second for `secs`, one event per append over 100 entities; returns
/// the commit instants by position.
async fn paced_appends(
    store: &PostgresEventStore,
    entity_type: &str,
    secs: u64,
    mut after_commit: impl AsyncFnMut(&[eventuate_core::Position], Instant) -> BoxResult<()>,
) -> BoxResult<HashMap<String, Instant>> {
    let mut commits = HashMap::new();
    let mut versions = vec![0u64; ENTITIES];
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..(RATE * secs) as usize {
        tick.tick().await;
        let entity = i % ENTITIES;
        let positions = append(
            store,
            entity_type,
            &format!("live-{entity}"),
            versions[entity],
            vec![NewEvent::new(format!("{entity_type}Changed"), "{\"n\":1}")],
        )
        .await?;
        let committed = Instant::now();
        versions[entity] += 1;
        after_commit(&positions, committed).await?;
        for p in positions {
            commits.insert(p.to_string(), committed);
        }
    }
    Ok(commits)
}

/// The relay, live, at `RATE` events/s: p50 and p99 from commit to broker acknowledgement.
async fn relay_latency_run(
    store: &PostgresEventStore,
    js: &jetstream::Context,
    round: usize,
    secs: u64,
) -> BoxResult<(Duration, Duration)> {
    let entity_type = format!("Live{round}");
    let name = format!("LIVE{round}");
    new_stream(js, &name, &format!("live{round}.>")).await;
    let timed = Timed {
        inner: NatsBroker::new(js.clone()),
        acked: Arc::default(),
    };
    let running = Eventuate::new(store.clone())
        .known_entity_type(entity_type.clone())
        .subscriber(Relay::new(
            timed.clone(),
            RelayOptions::new(
                format!("bench-live-{round}"),
                [entity_type.clone()],
                Topics::per_entity_type(format!("live{round}.")),
            ),
        ))
        .start()?;
    // Let the runtime take its partition before the clock starts.
    running.wait_caught_up(Duration::from_secs(30)).await?;
    let commits = paced_appends(store, &entity_type, secs, async |_, _| Ok(())).await?;
    running.wait_caught_up(Duration::from_secs(60)).await?;
    running.shutdown().await?;
    let acked = timed.acked.lock().unwrap().clone();
    let latencies = commits
        .iter()
        .map(|(position, committed)| {
            acked
                .get(position)
                .expect("every event acknowledged")
                .saturating_duration_since(*committed)
        })
        .collect();
    Ok(percentiles(latencies))
}

/// A dual write at `RATE` events/s: each event's message published right after its append
/// returns (the message built beforehand, as an application holds its event in memory: a
/// backlog event's message with a fresh id, the same size as the relay's), the
/// acknowledgement awaited.
async fn raw_latency_run(
    store: &PostgresEventStore,
    js: &jetstream::Context,
    round: usize,
    secs: u64,
    template: &EventEnvelope,
) -> BoxResult<(Duration, Duration)> {
    let entity_type = format!("RawLive{round}");
    new_stream(js, &format!("RAWLIVE{round}"), &format!("rawlive{round}.>")).await;
    let topics = Topics::per_entity_type(format!("rawlive{round}."));
    let template = Message::from_event(template, &topics);
    let mut latencies = Vec::new();
    paced_appends(store, &entity_type, secs, async |_, committed| {
        let mut message = template.clone();
        message.event_id = uuid::Uuid::new_v4();
        message.headers[0].1 = message.event_id.to_string();
        raw_publish(js, &message).await?.await?;
        latencies.push(committed.elapsed());
        Ok(())
    })
    .await?;
    Ok(percentiles(latencies))
}

fn percentiles(mut latencies: Vec<Duration>) -> (Duration, Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_pair(values: &[(Duration, Duration)]) -> (Duration, Duration) {
    let mut p50: Vec<Duration> = values.iter().map(|v| v.0).collect();
    let mut p99: Vec<Duration> = values.iter().map(|v| v.1).collect();
    p50.sort();
    p99.sort();
    (p50[p50.len() / 2], p99[p99.len() / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn nats_version() -> String {
    std::process::Command::new(common::nats_server_binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}
