//! Pool sizes (issue #9, item 8): the LISTEN connection that wakes subscribers is not taken
//! from the store's pool, so even a pool of one connection serves commands while a subscriber
//! runs, and shuts down; a pool of zero connections is refused with a typed error at connect
//! time instead of a panic inside sqlx.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion};
use eventuate_core::{EventStore, Eventuate, NewEvent};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::test_database;
use sqlx::Connection;

/// Generous bound on a scenario that takes well under a second when the pool is not starved;
/// with the LISTEN session holding the only pooled connection, the first command alone waits
/// sqlx's 30 s acquire timeout, and `shutdown` never finishes.
const BOUND: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_pool_serves_commands_and_shuts_down_while_a_subscriber_listens() {
    let db = test_database().await;
    let store = PostgresEventStore::builder()
        .max_connections(1)
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .expect("connect");
    let recorder = Recorder::new("recorder");
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    // An observer outside the store's pool.
    let mut observer = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let scenario = async {
        // Wait until the subscriber's LISTEN session is up, so that the commands below run
        // while it holds its connection.
        loop {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND query ILIKE 'LISTEN%'",
            )
            .fetch_one(&mut observer)
            .await
            .unwrap();
            if listening > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for n in 0..5u64 {
            let request = AppendRequest {
                entity_type: "Counter".into(),
                entity_id: format!("c{n}"),
                expected: ExpectedVersion::New,
                events: vec![NewEvent::new("Tick", format!("{{\"n\":{n}}}"))],
                idempotency: None,
            };
            let outcome = store.append(request).await.expect("the command completes");
            assert!(matches!(outcome, AppendOutcome::Appended { .. }));
        }
        // The subscriber gets them through the same single connection.
        while distinct(&recorder.log) < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runtime.shutdown().await.expect("shutdown");
        store.close().await;
    };
    tokio::time::timeout(BOUND, scenario)
        .await
        .expect("with max_connections(1), commands and shutdown finished within the bound");
    // The LISTEN session was one connection more than the pool, and `close` ends it too.
    // (Only that one is checked: with a pool of one, sqlx's `Pool::close` can miss a pooled
    // connection whose return to the pool was still under way; it closes when the store is
    // dropped.)
    let mut listening = -1i64;
    for _ in 0..500 {
        listening = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND query ILIKE '%LISTEN%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut observer)
        .await
        .unwrap();
        if listening == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listening, 0, "close() ends the LISTEN connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_connections_is_a_typed_error_at_connect() {
    let db = test_database().await;
    let Err(err) = PostgresEventStore::builder()
        .max_connections(0)
        .connect(&db.url)
        .await
    else {
        panic!("a pool of zero connections cannot serve anything, yet it connected");
    };
    assert!(
        matches!(
            err,
            eventuate_postgres::Error::InvalidMaxConnections { requested: 0, .. }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("at least 1"), "{message}");
}
