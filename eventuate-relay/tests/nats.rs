//! The relay against a real `nats-server -js` (started by each test on a free loopback port,
//! with a temporary store directory) and a throwaway PostgreSQL event store.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream::stream;
use eventuate_core::Eventuate;
use eventuate_relay::nats::{NatsBroker, jetstream_with_timeout};
use eventuate_relay::{Relay, RelayOptions, Topics};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_published_once_in_entity_order_with_its_headers() {
    let nats = NatsServer::start();
    let db = eventuate_postgres::embedded::test_database().await;
    let store = store(&db.url).await;
    let client = connect(&nats).await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(
        &js,
        stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            ..Default::default()
        },
    )
    .await;
    create_stream(
        &js,
        stream::Config {
            name: "ALL".into(),
            subjects: vec!["all-events".into()],
            ..Default::default()
        },
    )
    .await;
    let entities = entities(8);
    // Half before the relay starts (catch-up), half after (live).
    append_rounds(&store, &entities, 0, 5).await;
    let running = Eventuate::new(store.clone())
        .options(options())
        .subscriber(Relay::nats(
            client.clone(),
            RelayOptions::new(
                "relay-per-type",
                ["Order", "Customer"],
                Topics::per_entity_type("events."),
            ),
        ))
        .subscriber(Relay::nats(
            client.clone(),
            RelayOptions::new(
                "relay-single",
                ["Order", "Customer"],
                Topics::Single("all-events".into()),
            ),
        ))
        .start()
        .unwrap();
    append_rounds(&store, &entities, 5, 5).await;
    caught_up(&running).await;
    let events = stored(&store, &entities).await;
    assert_eq!(events.len(), 160);
    check_exactly_once_in_order(&read_stream(&js, "EVENTS").await, &events, |e| {
        format!("events.{}", e.entity_type)
    });
    check_exactly_once_in_order(&read_stream(&js, "ALL").await, &events, |_| {
        "all-events".to_owned()
    });
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_stopped_mid_stream_loses_nothing_and_the_relay_resumes_unaided() {
    let mut nats = NatsServer::start();
    let db = eventuate_postgres::embedded::test_database().await;
    let store = store(&db.url).await;
    let client = connect(&nats).await;
    let js = jetstream_with_timeout(client.clone(), Duration::from_millis(500));
    create_stream(
        &js,
        stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            ..Default::default()
        },
    )
    .await;
    let entities = entities(3);
    let mut relay = RelayOptions::new(
        "relay",
        ["Order", "Customer"],
        Topics::per_entity_type("events."),
    );
    // One attempt: an outage counted as attempts would park the first event it fails.
    relay.retry = eventuate_core::RetryPolicy {
        max_attempts: 1,
        ..quick_retries()
    };
    let running = Eventuate::new(store.clone())
        .options(options())
        .subscriber(Relay::nats_jetstream(js.clone(), relay))
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
    // Stop the server once part of the stream is through, while events keep coming.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let published = js
            .get_stream("EVENTS")
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages;
        if published >= 30 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nats.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart();
    writer.await.unwrap();
    running
        .wait_caught_up(Duration::from_secs(60))
        .await
        .unwrap()
        .nothing_parked()
        .unwrap();
    let status = running.status().await.unwrap();
    assert!(
        status.iter().map(|s| s.retried).sum::<u64>() > 0,
        "the outage was seen and retried (a failure counted as the one attempt would have parked): {status:?}"
    );
    let events = stored(&store, &entities).await;
    assert_eq!(events.len(), 240);
    // Every event once (the duplicate window absorbed re-publications), entity order kept.
    check_exactly_once_in_order(&read_stream(&js, "EVENTS").await, &events, |e| {
        format!("events.{}", e.entity_type)
    });
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_dropped_before_its_checkpoint_republishes_only_the_rest_and_jetstream_drops_the_duplicates()
 {
    let nats = NatsServer::start();
    let db = eventuate_postgres::embedded::test_database().await;
    let store = store(&db.url).await;
    let client = connect(&nats).await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(
        &js,
        stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            ..Default::default()
        },
    )
    .await;
    let crash = crash_before_checkpoint(&store, options(), || NatsBroker::new(js.clone())).await;
    // JetStream drops the re-published duplicates (message ids are event ids, inside the
    // stream's duplicate window): every event once, in entity order.
    assert!(crash.published_unchecked.is_subset(&crash.republished));
    check_exactly_once_in_order(&read_stream(&js, "EVENTS").await, &crash.events, |e| {
        format!("events.{}", e.entity_type)
    });
    crash.running.shutdown().await.unwrap();
}

/// A stream that takes messages up to 2 KiB, an event store with an `Order` whose first
/// event is 4 KiB, between events of another order.
async fn too_large_setup() -> (
    NatsServer,
    eventuate_postgres::embedded::TestDatabase,
    eventuate_postgres::PostgresEventStore,
    async_nats::Client,
) {
    let nats = NatsServer::start();
    let db = eventuate_postgres::embedded::test_database().await;
    let store = store(&db.url).await;
    let client = connect(&nats).await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(
        &js,
        stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            max_message_size: 2048,
            ..Default::default()
        },
    )
    .await;
    append(&store, "Order", "small", 0, "{\"n\":0}".into()).await;
    append(
        &store,
        "Order",
        "big",
        0,
        format!("{{\"blob\":\"{}\"}}", "x".repeat(4096)),
    )
    .await;
    append(&store, "Order", "small", 1, "{\"n\":1}".into()).await;
    (nats, db, store, client)
}

fn entity_ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            r.header(eventuate_relay::headers::ENTITY_ID)
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_stream_refuses_for_good_is_parked_with_the_brokers_error() {
    let (_nats, _db, store, client) = too_large_setup().await;
    let js = async_nats::jetstream::new(client.clone());
    let running = Eventuate::new(store.clone())
        .options(options())
        .subscriber(Relay::nats(
            client.clone(),
            RelayOptions::new("relay", ["Order"], Topics::per_entity_type("events.")),
        ))
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
        parked[0].error.contains("maximum"),
        "the broker's error: {}",
        parked[0].error
    );
    assert_eq!(parked[0].attempts, 1, "parked at once");
    // The entity's next event waits behind it.
    append(&store, "Order", "big", 1, "{\"n\":1}".into()).await;
    let caught_up = running
        .wait_caught_up(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(caught_up.parked, vec![("relay".to_owned(), 2)]);
    assert_eq!(
        entity_ids(&read_stream(&js, "EVENTS").await),
        ["small", "small"]
    );
    running.shutdown().await.unwrap();
}

/// The same, with the entity's next event in the same run as the refused one: once the
/// refused event is parked, the rest of the run must not publish the entity's later events
/// (`deliver_batch` parks them behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_behind_a_refused_one_in_the_same_run_waits_behind_it() {
    let (_nats, _db, store, client) = too_large_setup().await;
    let js = async_nats::jetstream::new(client.clone());
    append(&store, "Order", "big", 1, "{\"n\":1}".into()).await;
    let running = Eventuate::new(store.clone())
        .options(options())
        .subscriber(Relay::nats(
            client.clone(),
            RelayOptions::new("relay", ["Order"], Topics::per_entity_type("events.")),
        ))
        .start()
        .unwrap();
    let caught_up = running
        .wait_caught_up(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        entity_ids(&read_stream(&js, "EVENTS").await),
        ["small", "small"]
    );
    assert_eq!(caught_up.parked, vec![("relay".to_owned(), 2)]);
    running.shutdown().await.unwrap();
}
