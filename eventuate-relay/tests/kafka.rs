//! The relay against `rdkafka::mocking::MockCluster` (an in-process cluster speaking the real
//! protocol on loopback ports), read back with a real consumer. Feature `kafka`:
//! `cargo test -p eventuate-relay --features kafka --test kafka`.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion};
use eventuate_core::{EventEnvelope, EventStore, Eventuate, NewEvent};
use eventuate_postgres::PostgresEventStore;
use eventuate_relay::{Relay, RelayOptions, Topics, headers};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::mocking::MockCluster;

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

async fn append(store: &PostgresEventStore, entity_type: &str, entity_id: &str, version: u64) {
    let mut event = NewEvent::new(
        format!("{entity_type}Changed"),
        format!("{{\"n\":{version}}}"),
    );
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
    assert!(matches!(
        store.append(request).await.unwrap(),
        AppendOutcome::Appended { .. }
    ));
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
            append(&store, t, id, v).await;
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
            append(&store, t, id, v).await;
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
