//! The relay against `rdkafka::mocking::MockCluster` (an in-process cluster speaking the real
//! protocol on loopback ports), read back with a real consumer: the layout of what is
//! produced, and the faults (all brokers down mid-stream, a relay that dies between the
//! broker's acknowledgement and its checkpoint, a message refused for good by the producer or
//! the broker). Feature `kafka`: `cargo test -p eventuate-relay --features kafka --test kafka`.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::store::{AppendRequest, ExpectedVersion};
use eventuate_core::{EventEnvelope, EventStore, Eventuate, NewEvent, RetryPolicy};
use eventuate_postgres::PostgresEventStore;
use eventuate_relay::kafka::{KafkaBroker, producer_config};
use eventuate_relay::{Relay, RelayOptions, Topics, headers};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use uuid::Uuid;

use common::kafka::*;
use common::*;

const PARTITIONS: i32 = 3;

/// Kafka's Java partitioner: murmur2 of the key, made positive, modulo the partition count.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes(c.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_produced_once_keyed_by_entity_on_the_java_clients_partition() {
    let mock = MockCluster::new(3).expect("mock cluster");
    for topic in ["events.Order", "events.Customer"] {
        mock.create_topic(topic, PARTITIONS, 1).unwrap();
    }
    let db = eventuate_postgres::embedded::test_database().await;
    let store = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .unwrap();
    let entities: Vec<(String, String)> = (0..8)
        .flat_map(|i| {
            [
                ("Order".to_owned(), format!("order-{i}")),
                ("Customer".to_owned(), format!("customer-{i}")),
            ]
        })
        .collect();
    for v in 0..5 {
        for (t, id) in &entities {
            append_numbered(&store, t, id, v).await;
        }
    }
    let running = Eventuate::new(store.clone())
        .options(RuntimeOptions {
            poll_interval: Duration::from_millis(200),
            lease_ttl: Duration::from_millis(900),
            ..RuntimeOptions::default()
        })
        .subscriber(
            Relay::kafka_at(
                &mock.bootstrap_servers(),
                RelayOptions::new(
                    "relay",
                    ["Order", "Customer"],
                    Topics::per_entity_type("events."),
                ),
            )
            .unwrap(),
        )
        .start()
        .unwrap();
    for v in 5..10 {
        for (t, id) in &entities {
            append_numbered(&store, t, id, v).await;
        }
    }
    running
        .wait_caught_up(Duration::from_secs(60))
        .await
        .unwrap()
        .nothing_parked()
        .unwrap();
    let mut events: Vec<EventEnvelope> = Vec::new();
    for (t, id) in &entities {
        events.extend(store.load(t, id, 0).await.unwrap());
    }
    let by_id: HashMap<String, &EventEnvelope> =
        events.iter().map(|e| (e.event_id.to_string(), e)).collect();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer
        .subscribe(&["events.Order", "events.Customer"])
        .unwrap();
    let mut seen = HashSet::new();
    let mut last_version: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < events.len() {
        assert!(
            Instant::now() < deadline,
            "read {} of {} events",
            seen.len(),
            events.len()
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
            continue;
        };
        let header = |name: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        let id = header(headers::EVENT_ID).expect("event id header");
        let event = by_id[&id];
        assert!(seen.insert(id.clone()), "event {id} received twice");
        assert_eq!(m.topic(), format!("events.{}", event.entity_type));
        assert_eq!(
            m.key(),
            Some(event.entity_id.as_bytes()),
            "keyed by entity id"
        );
        assert_eq!(
            m.partition(),
            java_partition(event.entity_id.as_bytes(), PARTITIONS),
            "on the partition the Java client would choose"
        );
        for (name, value) in [
            (headers::EVENT_TYPE, Some(event.event_type.clone())),
            (headers::ENTITY_TYPE, Some(event.entity_type.clone())),
            (headers::ENTITY_ID, Some(event.entity_id.clone())),
            (
                headers::ENTITY_VERSION,
                Some(event.entity_version.to_string()),
            ),
            (headers::POSITION, Some(event.position.to_string())),
            (
                headers::CAUSATION_ID,
                event.metadata.causation_id.map(|i| i.to_string()),
            ),
            (
                headers::CORRELATION_ID,
                event.metadata.correlation_id.map(|i| i.to_string()),
            ),
        ] {
            assert_eq!(header(name), value, "header {name}");
        }
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(value, eventuate_relay::envelope_json(event));
        let last = last_version
            .entry(format!("{}/{}", event.entity_type, event.entity_id))
            .or_insert(0);
        assert_eq!(event.entity_version, *last + 1, "per-entity order");
        *last = event.entity_version;
    }
    assert_eq!(seen.len(), 160);
    running.shutdown().await.unwrap();
}

const TOPICS: [&str; 2] = ["events.Order", "events.Customer"];

/// A mock cluster of 3 brokers with the two topics, `PARTITIONS` partitions each.
fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(3).expect("mock cluster");
    for topic in TOPICS {
        mock.create_topic(topic, PARTITIONS, 1).unwrap();
    }
    mock
}

fn runtime_options() -> RuntimeOptions {
    RuntimeOptions {
        poll_interval: Duration::from_millis(200),
        lease_ttl: Duration::from_millis(900),
        ..RuntimeOptions::default()
    }
}

fn relay_options() -> RelayOptions {
    RelayOptions::new(
        "relay",
        ["Order", "Customer"],
        Topics::per_entity_type("events."),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_down_mid_stream_parks_nothing_counts_no_attempt_and_the_relay_resumes_unaided()
{
    let mock = cluster();
    let db = eventuate_postgres::embedded::test_database().await;
    let store = store(&db.url).await;
    let entities = entities(3);
    // An undelivered message fails after 1 s, so the outage reaches the relay; reconnects
    // are tried at least every 500 ms once the brokers are back.
    let producer: FutureProducer = producer_config(&mock.bootstrap_servers())
        .set("message.timeout.ms", "1000")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .unwrap();
    let mut relay = relay_options();
    // One attempt: an outage counted as attempts would park the first event it fails.
    relay.retry = RetryPolicy {
        max_attempts: 1,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
    };
    let running = Eventuate::new(store.clone())
        .options(runtime_options())
        .subscriber(Relay::kafka(producer, relay))
        .start()
        .unwrap();
    let writer = {
        let (store, entities) = (store.clone(), entities.clone());
        tokio::spawn(async move {
            for v in 0..40 {
                append_rounds(&store, &entities, v, 1).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Take every broker down once part of the stream is through, while events keep coming.
    let deadline = Instant::now() + Duration::from_secs(30);
    while running
        .status()
        .await
        .unwrap()
        .iter()
        .map(|s| s.delivered)
        .sum::<u64>()
        < 30
    {
        assert!(Instant::now() < deadline, "nothing produced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mock.broker_down(-1).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let retried_during_outage: u64 = running
        .status()
        .await
        .unwrap()
        .iter()
        .map(|s| s.retried)
        .sum();
    mock.broker_up(-1).unwrap();
    writer.await.unwrap();
    running
        .wait_caught_up(Duration::from_secs(60))
        .await
        .unwrap()
        .nothing_parked()
        .unwrap();
    assert!(
        retried_during_outage > 0,
        "the outage was seen and retried (a failure counted as the one attempt would have parked)"
    );
    let events = stored(&store, &entities).await;
    assert_eq!(events.len(), 240);
    let copies = check_at_least_once_in_order(
        &read_all(&mock.bootstrap_servers(), &TOPICS, PARTITIONS).await,
        &events,
    );
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    // Messages in flight when the brokers went down may have been stored without their
    // acknowledgement: the relay produces them again (a new message to the idempotent
    // producer, which deduplicates only its own retries).
    eprintln!(
        "duplicates after the outage: {duplicates} of {} events",
        events.len()
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_dropped_before_its_checkpoint_produces_again_only_what_was_not_checkpointed() {
    let mock = cluster();
    let db = eventuate_postgres::embedded::test_database().await;
    let store = store(&db.url).await;
    let bootstrap = mock.bootstrap_servers();
    let crash = crash_before_checkpoint(&store, runtime_options(), || {
        KafkaBroker::new(producer_config(&bootstrap).create().unwrap())
    })
    .await;
    // Kafka keeps both copies: the duplicates are exactly what the first relay produced after
    // its last checkpoint, so at most the events after that checkpoint.
    let copies = check_at_least_once_in_order(
        &read_all(&bootstrap, &TOPICS, PARTITIONS).await,
        &crash.events,
    );
    let duplicated: HashSet<Uuid> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(copies.values().all(|n| *n <= 2), "at most two copies");
    assert_eq!(duplicated, crash.published_unchecked);
    assert!(duplicated.len() <= crash.not_checkpointed.len());
    eprintln!(
        "duplicates after the crash: {} (events after the last checkpoint: {})",
        duplicated.len(),
        crash.not_checkpointed.len()
    );
    crash.running.shutdown().await.unwrap();
}

/// An event store with an `Order` whose first event is 4 KiB, between events of another
/// order.
async fn too_large_setup(store: &PostgresEventStore) {
    append_numbered(store, "Order", "small", 0).await;
    let big = NewEvent::new(
        "OrderChanged",
        format!("{{\"blob\":\"{}\"}}", "x".repeat(4096)),
    );
    let request = AppendRequest {
        entity_type: "Order".into(),
        entity_id: "big".into(),
        expected: ExpectedVersion::New,
        events: vec![big],
        idempotency: None,
    };
    store.append(request).await.unwrap();
    append_numbered(store, "Order", "small", 1).await;
}

fn entity_ids(read: &[Produced]) -> Vec<String> {
    read.iter().map(|p| p.entity.1.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_producer_takes_is_parked_at_once_and_the_rest_flows() {
    let mock = cluster();
    let db = eventuate_postgres::embedded::test_database().await;
    let store = store(&db.url).await;
    too_large_setup(&store).await;
    let producer: FutureProducer = producer_config(&mock.bootstrap_servers())
        .set("message.max.bytes", "2048")
        .create()
        .unwrap();
    let running = Eventuate::new(store.clone())
        .options(runtime_options())
        .subscriber(Relay::kafka(producer, relay_options()))
        .start()
        .unwrap();
    let caught_up = running
        .wait_caught_up(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(caught_up.parked, vec![("relay".to_owned(), 1)]);
    let parked = running.parked("relay").await.unwrap();
    assert_eq!(parked[0].event.entity_id, "big");
    assert_eq!(parked[0].event.entity_version, 1);
    assert!(
        parked[0].error.contains("Message size too large"),
        "the producer's error: {}",
        parked[0].error
    );
    assert_eq!(parked[0].attempts, 1, "parked at once");
    // The entity's next event waits behind it; others flow.
    append_numbered(&store, "Order", "big", 1).await;
    append_numbered(&store, "Order", "small", 2).await;
    let caught_up = running
        .wait_caught_up(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(caught_up.parked, vec![("relay".to_owned(), 2)]);
    assert_eq!(
        entity_ids(&read_all(&mock.bootstrap_servers(), &TOPICS, PARTITIONS).await),
        ["small", "small", "small"]
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_as_too_large_is_parked_with_the_brokers_error() {
    let mock = cluster();
    let db = eventuate_postgres::embedded::test_database().await;
    let store = store(&db.url).await;
    append_numbered(&store, "Order", "small", 0).await;
    let running = Eventuate::new(store.clone())
        .options(runtime_options())
        .subscriber(Relay::kafka_at(&mock.bootstrap_servers(), relay_options()).unwrap())
        .start()
        .unwrap();
    caught_up(&running).await;
    // The broker answers the next produce request with MESSAGE_TOO_LARGE.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    append_numbered(&store, "Order", "big", 0).await;
    let caught_up = running
        .wait_caught_up(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(caught_up.parked, vec![("relay".to_owned(), 1)]);
    let parked = running.parked("relay").await.unwrap();
    assert_eq!(parked[0].event.entity_id, "big");
    assert!(
        parked[0].error.contains("Broker: Message size too large"),
        "the broker's error: {}",
        parked[0].error
    );
    assert_eq!(parked[0].attempts, 1, "parked at once");
    append_numbered(&store, "Order", "small", 1).await;
    running
        .wait_caught_up(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        entity_ids(&read_all(&mock.bootstrap_servers(), &TOPICS, PARTITIONS).await),
        ["small", "small"]
    );
    running.shutdown().await.unwrap();
}
