//! The operator's operations of `eventuate_postgres::admin` against running runtimes: a reset
//! fences live consumers off and they deliver again from the new checkpoint; a skipped parked
//! event lets its entity flow again; the horizon names the transaction holding delivery back;
//! pruning removes only old idempotency keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use eventuate_core::Eventuate;
use eventuate_core::runtime::SubscriptionStore;
use eventuate_postgres::admin::ResetTarget;
use eventuate_postgres::embedded::test_database;
use eventuate_postgres::{Error, sqlx};

fn delivered(log: &Log) -> usize {
    log.lock().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_makes_a_running_runtime_deliver_from_the_new_position() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let recorder = Recorder::new("recorder");
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    for n in 0..5 {
        tick(&store, "c1", n).await;
    }
    runtime
        .wait_caught_up(Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(delivered(&recorder.log), 5);

    // Back to the beginning while the consumer idles at the head: it writes nothing, so only
    // the ended lease stops it; it then takes the partition again from the new checkpoint.
    let outcome = store
        .reset_subscriber("recorder", ResetTarget::Beginning)
        .await
        .unwrap();
    assert_eq!(outcome.partitions, 1);
    // Live unless a renewal was late on a loaded machine (the TTL is short here).
    assert!(outcome.leases_ended <= 1);
    eventually(15, "delivered again from the beginning", || {
        let n = delivered(&recorder.log);
        async move { n == 10 }
    })
    .await;

    // To a position: only what follows it comes again.
    let stored = all_events(&store).await;
    store
        .reset_subscriber("recorder", ResetTarget::Position(stored[2].position))
        .await
        .unwrap();
    eventually(15, "delivered again after the third event", || {
        let n = delivered(&recorder.log);
        async move { n == 12 }
    })
    .await;
    let log = recorder.log.lock().unwrap().clone();
    assert_eq!(log[10].position, stored[3].position);

    // To now: nothing stored comes again, new events do.
    store
        .reset_subscriber("recorder", ResetTarget::Now)
        .await
        .unwrap();
    tick(&store, "c1", 5).await;
    eventually(15, "the new event only", || {
        let n = delivered(&recorder.log);
        async move { n == 13 }
    })
    .await;
    runtime
        .wait_caught_up(Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(delivered(&recorder.log), 13);

    let unknown = store
        .reset_subscriber("nobody", ResetTarget::Beginning)
        .await;
    assert!(matches!(unknown, Err(Error::UnknownSubscriber { .. })));
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_parked_event_lets_its_entity_flow_again() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let recorder = Recorder {
        fail_on: Some(1),
        ..Recorder::new("recorder")
    };
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber_with(recorder.clone(), |s| s.retry(retries(2)))
        .start()
        .unwrap();
    tick(&store, "c0", 0).await;
    tick(&store, "c1", 1).await; // poison: parked
    runtime
        .wait_caught_up(Duration::from_secs(15))
        .await
        .unwrap();
    let parked = store.parked("recorder").await.unwrap();
    assert_eq!(parked.len(), 1);
    let position = parked[0].event.position;

    assert!(store.skip_parked("recorder", position).await.unwrap());
    assert!(!store.skip_parked("recorder", position).await.unwrap());
    // The consumer still holds c1 as blocked in memory; its next write is fenced off, and it
    // re-reads the parked events when it takes the partition again.
    tick(&store, "c1", 3).await;
    eventually(15, "c1 flows again", || {
        let flowed = recorder
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.entity_id == "c1");
        async move { flowed }
    })
    .await;
    assert!(store.parked("recorder").await.unwrap().is_empty());
    let overview = store.subscriber_overview("recorder").await.unwrap();
    assert_eq!(overview.parked, 0);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_horizon_names_the_oldest_writing_transaction() {
    let db = test_database().await;
    let store = store(&db.url).await;
    tick(&store, "c1", 0).await;
    let calm = store.horizon().await.unwrap();
    assert!(calm.oldest.is_none(), "{calm:?}");

    let mut open = store.pool().begin().await.unwrap();
    let (pid, xid): (i32, i64) =
        sqlx::query_as("SELECT pg_backend_pid(), pg_current_xact_id()::text::bigint")
            .fetch_one(&mut *open)
            .await
            .unwrap();
    let held = store.horizon().await.unwrap();
    let oldest = held.oldest.clone().expect("the open transaction");
    assert_eq!((oldest.pid, oldest.xid), (pid, xid as u64));
    assert_eq!(oldest.state.as_deref(), Some("idle in transaction"));
    assert_eq!(held.horizon, xid as u64);
    open.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_only_old_idempotency_keys() {
    let db = test_database().await;
    let store = store(&db.url).await;
    sqlx::query(
        "INSERT INTO processed_commands (subscriber_id, triggering_event_id, sequence, \
           processed_at) \
         SELECT 's', gen_random_uuid(), n, now() - make_interval(days => n) \
         FROM generate_series(1, 40) AS n",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let pruned = store
        .prune_processed_commands(Duration::from_secs(30 * 86_400) + Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(pruned, 10);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_commands")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 30);
}
