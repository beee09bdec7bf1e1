//! Reading a Kafka cluster back (feature `kafka`; through the relay's re-export of `rdkafka`,
//! so that the server's tests, which do not depend on `rdkafka` themselves, can use it too).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use eventuate_core::EventEnvelope;
use eventuate_relay::headers;
use eventuate_relay::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use eventuate_relay::kafka::rdkafka::message::{BorrowedMessage, Headers, Message as _};
use eventuate_relay::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

/// One message read back.
#[derive(Clone, Debug)]
pub struct Produced {
    pub event_id: Uuid,
    pub entity: (String, String),
    pub version: u64,
}

pub fn header(m: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == name))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

/// Every message on `topics` (of `partitions` partitions each), each partition from its start
/// up to its high watermark, in partition order (an entity's messages are on one partition: in
/// the order produced).
pub async fn read_all(bootstrap: &str, topics: &[&str], partitions: i32) -> Vec<Produced> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "read-all")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut expected = 0;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for p in 0..partitions {
            let (low, high) = tokio::task::block_in_place(|| {
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
            })
            .unwrap();
            expected += high - low;
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} messages",
            out.len()
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
            continue;
        };
        out.push(Produced {
            event_id: header(&m, headers::EVENT_ID).unwrap().parse().unwrap(),
            entity: (
                header(&m, headers::ENTITY_TYPE).unwrap(),
                header(&m, headers::ENTITY_ID).unwrap(),
            ),
            version: header(&m, headers::ENTITY_VERSION)
                .unwrap()
                .parse()
                .unwrap(),
        });
    }
    out
}

/// At least once, in entity order: every event is there, nothing else is, and for each
/// entity a consumer that keeps the first copy of each event id, or the last, sees versions
/// 1, 2, 3, ... Returns how many copies of each event were read.
pub fn check_at_least_once_in_order(
    read: &[Produced],
    events: &[EventEnvelope],
) -> HashMap<Uuid, usize> {
    let by_id: HashMap<Uuid, &EventEnvelope> = events.iter().map(|e| (e.event_id, e)).collect();
    let mut copies: HashMap<Uuid, usize> = HashMap::new();
    let mut per_entity: HashMap<(String, String), Vec<&Produced>> = HashMap::new();
    for p in read {
        let event = by_id
            .get(&p.event_id)
            .unwrap_or_else(|| panic!("unknown event {}", p.event_id));
        assert_eq!(
            (&p.entity.0, &p.entity.1, p.version),
            (&event.entity_type, &event.entity_id, event.entity_version)
        );
        *copies.entry(p.event_id).or_default() += 1;
        per_entity.entry(p.entity.clone()).or_default().push(p);
    }
    for e in events {
        assert!(
            copies.contains_key(&e.event_id),
            "event {} lost",
            e.event_id
        );
    }
    for (entity, messages) in per_entity {
        let count = events
            .iter()
            .filter(|e| (&e.entity_type, &e.entity_id) == (&entity.0, &entity.1))
            .count() as u64;
        let in_order: Vec<u64> = (1..=count).collect();
        let mut seen = HashSet::new();
        let first: Vec<u64> = messages
            .iter()
            .filter(|m| seen.insert(m.event_id))
            .map(|m| m.version)
            .collect();
        assert_eq!(first, in_order, "{entity:?}, first copies");
        seen.clear();
        let mut last: Vec<u64> = messages
            .iter()
            .rev()
            .filter(|m| seen.insert(m.event_id))
            .map(|m| m.version)
            .collect();
        last.reverse();
        assert_eq!(last, in_order, "{entity:?}, last copies");
    }
    copies
}
