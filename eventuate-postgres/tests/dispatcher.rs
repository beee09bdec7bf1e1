//! Fault tests of the dispatcher on a real PostgreSQL (issue: durable subscriptions that never
//! lose, skip or reorder an event). After each fault: every event handled at least once, none
//! skipped, per-entity order kept, and the exactly-once view holds no duplicate.
//! (The server-restart case lives in `server_restart.rs`: it needs a server of its own.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use eventuate_core::Eventuate;
use eventuate_core::runtime::RuntimeOptions;
use eventuate_postgres::embedded::test_database;

/// (a) The listening connection is terminated while events flow; the poll interval is long,
/// so only the reconnect's catch-up can deliver what was notified while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_connection_killed_mid_stream() {
    let db = test_database().await;
    let consumer_store = store(&db.url).await;
    let writer = store(&db.url).await; // another "process": its own pool and notifier
    create_view_table(&consumer_store).await;
    let recorder = Recorder::new("recorder");
    let view = View {
        id: "view",
        ..View::default()
    };
    let runtime = Eventuate::new(consumer_store.clone())
        .options(RuntimeOptions {
            poll_interval: Duration::from_secs(30),
            ..options()
        })
        .subscriber(recorder.clone())
        .subscriber(view)
        .start()
        .unwrap();
    for i in 0..60 {
        tick(&writer, &format!("c{}", i % 6), i).await;
        if i % 20 == 10 {
            // The listener may still be (re)connecting: wait for it, then kill it.
            let mut killed = Vec::new();
            for _ in 0..250 {
                killed = sqlx::query_scalar::<_, i32>(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                     AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
                )
                .fetch_all(writer.pool())
                .await
                .unwrap();
                if !killed.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(!killed.is_empty(), "found the listening connection");
            for pid in killed {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(writer.pool())
                    .await
                    .unwrap();
            }
        }
    }
    let stored = all_events(&writer).await;
    assert_eq!(stored.len(), 60);
    eventually(10, "all 60 events delivered without polling", || {
        let n = distinct(&recorder.log);
        async move { n == 60 }
    })
    .await;
    runtime
        .wait_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    assert_at_least_once_in_order(&recorder.log.lock().unwrap(), &stored);
    assert_view_exactly_once(&consumer_store, "view", &stored).await;
    runtime.shutdown().await.unwrap();
}

/// (c) Consumers are dropped between handling and checkpointing: the non-transactional
/// subscriber sees the event again (at least once), the view holds it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_consumer_dropped_between_handling_and_checkpoint() {
    let db = test_database().await;
    let store = store(&db.url).await;
    create_view_table(&store).await;
    for i in 0..20 {
        tick(&store, &format!("c{}", i % 4), i).await;
    }
    let recorder = Recorder {
        block_on: Some(12),
        ..Recorder::new("recorder")
    };
    let view = View {
        id: "view",
        block_on: Some(12),
        ..View::default()
    };
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber(recorder.clone())
        .subscriber(view.clone())
        .start()
        .unwrap();
    // Both handlers did their work for event 12 and hang before the runtime commits.
    tokio::time::timeout(Duration::from_secs(10), recorder.blocked.notified())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), view.blocked.notified())
        .await
        .unwrap();
    let recorded_before = distinct(&recorder.log);
    drop(runtime); // a crash: no checkpoint, no release
    recorder.fixed.store(true, Ordering::SeqCst);
    view.fixed.store(true, Ordering::SeqCst);
    for i in 20..30 {
        tick(&store, &format!("c{}", i % 4), i).await;
    }
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber(recorder.clone())
        .subscriber(view.clone())
        .start()
        .unwrap();
    wait_owned(&runtime, 2).await;
    runtime
        .wait_caught_up(Duration::from_secs(15))
        .await
        .unwrap();
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 30);
    let log = recorder.log.lock().unwrap().clone();
    assert!(
        log.len() > distinct(&recorder.log),
        "the interrupted batch was delivered again (at least once), {recorded_before} before"
    );
    assert_at_least_once_in_order(&log, &stored);
    assert_view_exactly_once(&store, "view", &stored).await;
    runtime.shutdown().await.unwrap();
}

/// (d) Two runtimes (two pools, as two processes would) compete for one subscriber: one
/// consumes; when it is dropped, the other takes over after the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_two_runtimes_compete_then_one_is_dropped() {
    let db = test_database().await;
    let (store_a, store_b) = (store(&db.url).await, store(&db.url).await);
    create_view_table(&store_a).await;
    let log: Log = Arc::default();
    let recorder_a = Recorder {
        log: log.clone(),
        ..Recorder::new("recorder")
    };
    let recorder_b = Recorder {
        log: log.clone(),
        ..Recorder::new("recorder")
    };
    let view = View {
        id: "view",
        ..View::default()
    };
    let a = Eventuate::new(store_a.clone())
        .options(options())
        .subscriber(recorder_a.clone())
        .subscriber(view.clone())
        .start()
        .unwrap();
    let b = Eventuate::new(store_b.clone())
        .options(options())
        .subscriber(recorder_b.clone())
        .subscriber(view.clone())
        .start()
        .unwrap();
    for i in 0..40 {
        tick(&store_a, &format!("c{}", i % 5), i).await;
    }
    eventually(10, "40 delivered", || {
        let n = distinct(&log);
        async move { n == 40 }
    })
    .await;
    let (calls_a, calls_b) = (
        recorder_a.calls.load(Ordering::SeqCst),
        recorder_b.calls.load(Ordering::SeqCst),
    );
    assert!(
        calls_a == 0 || calls_b == 0,
        "one consumer per subscriber: {calls_a} / {calls_b}"
    );
    assert_eq!(
        calls_a + calls_b,
        40,
        "no event handled twice without a failure"
    );
    let (survivor, survivor_recorder) = if calls_a > 0 {
        drop(a);
        (b, recorder_b)
    } else {
        drop(b);
        (a, recorder_a)
    };
    for i in 40..60 {
        tick(&store_a, &format!("c{}", i % 5), i).await;
    }
    wait_owned(&survivor, 2).await;
    survivor
        .wait_caught_up(Duration::from_secs(15))
        .await
        .unwrap();
    assert!(survivor_recorder.calls.load(Ordering::SeqCst) >= 20);
    let stored = all_events(&store_a).await;
    assert_eq!(stored.len(), 60);
    assert_at_least_once_in_order(&log.lock().unwrap(), &stored);
    assert_view_exactly_once(&store_a, "view", &stored).await;
    survivor.shutdown().await.unwrap();
}

/// (e) A poison event: parked after its attempts, later events of its entity parked behind
/// it, other entities flowing; replayed in order once the handler is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_poison_event_parked_and_replayed() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let recorder = Recorder {
        fail_on: Some(7),
        ..Recorder::new("recorder")
    };
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber_with(recorder.clone(), |s| s.retry(retries(3)))
        .start()
        .unwrap();
    for i in 0..20 {
        // Entity c1 gets 1, 3, 5, 7 (poison), 9, ...; the others flow.
        tick(&store, &format!("c{}", i % 2), i).await;
    }
    runtime
        .wait_caught_up(Duration::from_secs(15))
        .await
        .unwrap();
    let parked = runtime.parked("recorder").await.unwrap();
    let parked_n: Vec<u64> = parked
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(&p.event.payload).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(parked_n, vec![7, 9, 11, 13, 15, 17, 19]);
    assert_eq!(parked[0].attempts, 3);
    assert!(parked[0].error.contains("poison 7"), "{}", parked[0].error);
    assert_eq!(
        distinct(&recorder.log),
        13,
        "10 of c0 and 3 of c1 were delivered"
    );
    let status = runtime.status().await.unwrap();
    let recorder_status = status
        .iter()
        .find(|s| s.subscriber_id == "recorder")
        .unwrap();
    assert_eq!((recorder_status.parked, recorder_status.lag), (7, 0));
    assert!(recorder_status.retried >= 2);

    recorder.fixed.store(true, Ordering::SeqCst);
    assert_eq!(runtime.replay("recorder", None).await.unwrap(), 7);
    eventually(10, "replayed", || {
        let n = distinct(&recorder.log);
        async move { n == 20 }
    })
    .await;
    eventually(10, "parked list empty", || {
        let parked = runtime.parked("recorder");
        async move { parked.await.unwrap().is_empty() }
    })
    .await;
    let stored = all_events(&store).await;
    assert_at_least_once_in_order(&recorder.log.lock().unwrap(), &stored);
    runtime.shutdown().await.unwrap();
}

/// (f) 16 concurrent writers while a subscriber with 3 partitions is consumed by 3 runtimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sixteen_writers_three_partitions() {
    let db = test_database().await;
    let store = store(&db.url).await;
    create_view_table(&store).await;
    let log: Log = Arc::default();
    let mut runtimes = Vec::new();
    for _ in 0..3 {
        let node_store = common::store(&db.url).await;
        let recorder = Recorder {
            log: log.clone(),
            ..Recorder::new("recorder")
        };
        runtimes.push(
            Eventuate::new(node_store)
                .options(options())
                .subscriber_with(recorder, |s| s.partitions(3))
                .subscriber_with(
                    View {
                        id: "view",
                        ..View::default()
                    },
                    |s| s.partitions(3),
                )
                .start()
                .unwrap(),
        );
    }
    let writers: Vec<_> = (0..16u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25u64 {
                    tick(&store, &format!("w{w}-e{}", i % 3), w * 1000 + i).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 400);
    eventually(30, "400 delivered", || {
        let n = distinct(&log);
        async move { n == 400 }
    })
    .await;
    for runtime in &runtimes {
        runtime
            .wait_caught_up(Duration::from_secs(15))
            .await
            .unwrap();
    }
    let owned: Vec<usize> = futures_util::future::join_all(runtimes.iter().map(|r| r.status()))
        .await
        .into_iter()
        .map(|s| {
            s.unwrap()
                .iter()
                .filter(|p| p.owned && p.subscriber_id == "recorder")
                .count()
        })
        .collect();
    assert_eq!(
        owned.iter().sum::<usize>(),
        3,
        "each partition has one owner: {owned:?}"
    );
    assert!(
        owned.iter().all(|n| *n == 1),
        "partitions spread evenly: {owned:?}"
    );
    assert_at_least_once_in_order(&log.lock().unwrap(), &stored);
    assert_view_exactly_once(&store, "view", &stored).await;
    for runtime in runtimes {
        runtime.shutdown().await.unwrap();
    }
}

/// An idle subscriber behind many rows of another entity type moves its checkpoint past them
/// (a short read reports how far it looked below the horizon), so it does not read them again
/// on every wake-up; and it still never skips: an event of its type written by a transaction
/// that was open while it moved on is delivered when that transaction commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscriber_moves_past_rows_it_does_not_receive() {
    use eventuate_core::runtime::SubscriptionStore;
    use eventuate_core::store::{AppendRequest, ExpectedVersion};
    use eventuate_core::{EventStore, NewEvent};

    let db = test_database().await;
    let store = store(&db.url).await;
    let recorder = Recorder::new("recorder");
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    tick(&store, "c-1", 1).await;
    eventually(10, "first event delivered", || {
        let n = distinct(&recorder.log);
        async move { n == 1 }
    })
    .await;
    // A late committer of the subscriber's type, open while the other rows are written.
    let mut late = store.pool().begin().await.unwrap();
    store
        .append_in(
            &mut late,
            AppendRequest {
                entity_type: "Counter".into(),
                entity_id: "c-late".into(),
                expected: ExpectedVersion::New,
                events: vec![NewEvent::new("Tick", "{\"n\":2}")],
                idempotency: None,
            },
        )
        .await
        .unwrap();
    let other = |id: String| AppendRequest {
        entity_type: "Other".into(),
        entity_id: id,
        expected: ExpectedVersion::New,
        events: (0..100)
            .map(|i| NewEvent::new("Noise", format!("{{\"i\":{i}}}")))
            .collect(),
        idempotency: None,
    };
    for i in 0..5 {
        store.append(other(format!("o-{i}"))).await.unwrap();
    }
    let stored_checkpoint = || async {
        let state = SubscriptionStore::subscriber(&store, "recorder")
            .await
            .unwrap();
        state.partitions[0].checkpoint
    };
    // While the late transaction is open, the horizon holds the checkpoint before it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let held = stored_checkpoint().await;
    commit_and_check_delivery(late, &recorder).await;
    // Now the checkpoint moves past all 500 rows of the other type.
    for i in 5..10 {
        store.append(other(format!("o-{i}"))).await.unwrap();
    }
    let last_other = store
        .read_stream(
            eventuate_core::Position::START,
            &eventuate_core::StreamFilter::entity_types(["Other"]),
            10_000,
        )
        .await
        .unwrap()
        .last()
        .unwrap()
        .position;
    for _ in 0..100 {
        if stored_checkpoint().await >= last_other {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = stored_checkpoint().await;
    assert!(
        moved >= last_other,
        "the idle subscriber's checkpoint {moved} moved past the other type's rows ({last_other}); \
         it was {held} while the late transaction was open"
    );
    tick(&store, "c-1", 3).await;
    eventually(10, "a later event of its type delivered", || {
        let n = distinct(&recorder.log);
        async move { n == 3 }
    })
    .await;
    runtime.shutdown().await.unwrap();
}

async fn commit_and_check_delivery(
    late: sqlx::Transaction<'static, sqlx::Postgres>,
    recorder: &Recorder,
) {
    assert_eq!(
        distinct(&recorder.log),
        1,
        "nothing delivered before the commit"
    );
    late.commit().await.unwrap();
    eventually(10, "the late committer's event delivered", || {
        let n = distinct(&recorder.log);
        async move { n == 2 }
    })
    .await;
}

/// (g) A transactional subscriber delivers runs of events in one transaction (one commit per
/// run, not per event); a handler failing in the middle of a run rolls the whole run back,
/// and the run is delivered again event by event: the view still holds every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_a_failure_inside_a_transaction_run_rolls_the_run_back() {
    let db = test_database().await;
    let store = store(&db.url).await;
    create_view_table(&store).await;
    for i in 0..150u64 {
        tick(&store, &format!("e{}", i % 5), i).await;
    }
    let view = View {
        id: "view",
        fail_once_on: Some(40),
        ..View::default()
    };
    let runtime = Eventuate::new(store.clone())
        .options(RuntimeOptions {
            batch_size: 256,
            ..options()
        })
        .subscriber_with(view.clone(), |s| s.retry(retries(3)))
        .start()
        .unwrap();
    runtime
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(view.failed.load(Ordering::SeqCst), "the failure happened");
    let stored = all_events(&store).await;
    assert_view_exactly_once(&store, "view", &stored).await;
    let (rows, transactions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xid) FROM view_rows WHERE subscriber = 'view'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(rows, 150);
    assert!(
        transactions < 20,
        "events are committed in runs: {transactions} transactions for {rows} rows"
    );
    runtime.shutdown().await.unwrap();
}
