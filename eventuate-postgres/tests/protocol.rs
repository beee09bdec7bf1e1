//! The subscription protocol of issue #9 on a real PostgreSQL: a partition given back while its
//! handler runs, parking fenced against a concurrent takeover, undecodable rows, NUL bytes in
//! handler errors, explicit partition-count changes, and rows left by the previous version.
//! Each case failed under the protocol before fencing tokens and stored shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use eventuate_core::name::{entity_hash, partition_of};
use eventuate_core::runtime::{
    Lease, Member, ParkedEvent, PartitionKey, Shape, ShapeView, SubscriptionStore,
};
use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion};
use eventuate_core::{
    Error, EventContext, EventEnvelope, EventStore, Eventuate, HandlerError, NewEvent, Position,
    StartFrom, StreamFilter, Subscriber, Subscription,
};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::test_database;
use uuid::Uuid;

/// The first `count` names `{prefix}{i}` whose entity falls in `partition` of 2.
fn entities_in(prefix: &str, partition: u32, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|id| partition_of(id, 2) == partition)
        .take(count)
        .collect()
}

fn n_of(event: &EventEnvelope) -> u64 {
    serde_json::from_str::<serde_json::Value>(&event.payload).unwrap()["n"]
        .as_u64()
        .unwrap()
}

/// Appends `Tick {n}` as version `version` of Counter `entity` (for entities that `tick`
/// cannot load because a row of theirs does not decode).
async fn tick_version(store: &PostgresEventStore, entity: &str, version: u64, n: u64) {
    let request = AppendRequest {
        entity_type: "Counter".into(),
        entity_id: entity.into(),
        expected: match version {
            1 => ExpectedVersion::New,
            v => ExpectedVersion::Exactly(v - 1),
        },
        events: vec![NewEvent::new("Tick", format!("{{\"n\":{n}}}"))],
        idempotency: None,
    };
    let outcome = store.append(request).await.unwrap();
    assert!(matches!(outcome, AppendOutcome::Appended { .. }));
}

/// Handler calls in flight per partition of 2, and the most ever seen at once.
#[derive(Default)]
struct InFlight {
    now: [AtomicI32; 2],
    max: [AtomicI32; 2],
}

/// Decrements a partition's in-flight count when the handler ends (or is dropped).
struct Exit<'a>(&'a AtomicI32);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A 2-partition subscriber whose handler takes `SLOW` on event `slow_n`, far beyond the
/// lease TTL; transactional ones write the view row in the delivery's transaction.
#[derive(Clone)]
struct Slow {
    id: &'static str,
    transactional: bool,
    slow_n: u64,
    in_flight: Arc<InFlight>,
    slow_started: Arc<AtomicBool>,
    log: Log,
}

const SLOW: Duration = Duration::from_millis(2500);

impl Slow {
    fn new(id: &'static str, transactional: bool, slow_n: u64) -> Self {
        Slow {
            id,
            transactional,
            slow_n,
            in_flight: Arc::default(),
            slow_started: Arc::default(),
            log: Arc::default(),
        }
    }
}

impl Subscriber for Slow {
    fn subscription(&self) -> Subscription {
        Subscription::new(self.id, ["Counter"])
            .partitions(2)
            .transactional(self.transactional)
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        let event = ctx.event();
        let p = partition_of(&event.entity_id, 2) as usize;
        let now = self.in_flight.now[p].fetch_add(1, Ordering::SeqCst) + 1;
        let _exit = Exit(&self.in_flight.now[p]);
        self.in_flight.max[p].fetch_max(now, Ordering::SeqCst);
        if self.transactional {
            let mut conn = ctx.transaction::<sqlx::PgConnection>().await?;
            sqlx::query(
                "INSERT INTO view_rows (subscriber, event_id, entity_id, version) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(self.id)
            .bind(event.event_id)
            .bind(&event.entity_id)
            .bind(event.entity_version as i64)
            .execute(&mut *conn)
            .await?;
        }
        if n_of(event) == self.slow_n {
            self.slow_started.store(true, Ordering::SeqCst);
            tokio::time::sleep(SLOW).await;
        }
        self.log.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// 1. A runtime asked to give a partition back (a second runtime joined) while a handler
///    slower than the lease TTL runs there keeps the lease until the handler has finished and
///    the checkpoint is saved; only then does the other runtime start on the partition. (The
///    old protocol stopped renewing at once: the lease expired under the running handler and
///    the other runtime delivered the same event concurrently.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_given_back_is_never_consumed_twice_at_once() {
    let db = test_database().await;
    let (store_a, store_b) = (store(&db.url).await, store(&db.url).await);
    create_view_table(&store_a).await;
    let (p0, p1) = (entities_in("e", 0, 2), entities_in("e", 1, 2));
    let entities = [&p0[0], &p1[0], &p0[1], &p1[1]];
    // Event 1 is the first of p1[0]: the partition-1 consumers hang on it for 2.5 s.
    let recorder = Slow::new("recorder", false, 1);
    let view = Slow::new("view", true, 1);
    let a = Eventuate::new(store_a.clone())
        .options(options())
        .subscriber(recorder.clone())
        .subscriber(view.clone())
        .start()
        .unwrap();
    for n in 0..8 {
        tick(&store_a, entities[n as usize % 4], n).await;
    }
    eventually(10, "both slow handlers run on runtime A", || {
        let started = recorder.slow_started.load(Ordering::SeqCst)
            && view.slow_started.load(Ordering::SeqCst);
        async move { started }
    })
    .await;
    assert_eq!(
        a.status().await.unwrap().iter().filter(|s| s.owned).count(),
        4,
        "A consumes both partitions of both subscribers while alone"
    );
    for slow in [&recorder, &view] {
        assert_eq!(
            slow.in_flight.now[1].load(Ordering::SeqCst),
            1,
            "{}: the slow handler runs while B joins",
            slow.id
        );
    }
    // B joins: A gives partition 1 back while its handlers still hang on event 1.
    let b = Eventuate::new(store_b.clone())
        .options(options())
        .subscriber(recorder.clone())
        .subscriber(view.clone())
        .start()
        .unwrap();
    eventually(10, "B takes partition 1 of both subscribers", || {
        let status = b.status();
        async move {
            let status = status.await.unwrap();
            status
                .iter()
                .filter(|s| s.owned && s.partition == 1)
                .count()
                == 2
        }
    })
    .await;
    for n in 8..16 {
        tick(&store_a, entities[n as usize % 4], n).await;
    }
    a.wait_caught_up(Duration::from_secs(8)).await.unwrap();
    b.wait_caught_up(Duration::from_secs(8)).await.unwrap();
    let owned_by = |status: Vec<eventuate_core::runtime::PartitionStatus>| {
        let mut owned: Vec<_> = status
            .iter()
            .filter(|s| s.owned)
            .map(|s| (s.subscriber_id.clone(), s.partition))
            .collect();
        owned.sort();
        owned
    };
    let (pair0, pair1) = (
        vec![("recorder".to_owned(), 0), ("view".to_owned(), 0)],
        vec![("recorder".to_owned(), 1), ("view".to_owned(), 1)],
    );
    assert_eq!(owned_by(a.status().await.unwrap()), pair0);
    assert_eq!(owned_by(b.status().await.unwrap()), pair1);
    for slow in [&recorder, &view] {
        for p in 0..2 {
            assert_eq!(
                slow.in_flight.max[p].load(Ordering::SeqCst),
                1,
                "{}: partition {p} was consumed by two runtimes at once",
                slow.id
            );
            assert_eq!(slow.in_flight.now[p].load(Ordering::SeqCst), 0);
        }
    }
    let stored = all_events(&store_a).await;
    assert_eq!(stored.len(), 16);
    eventually(10, "every event recorded", || {
        let n = distinct(&recorder.log);
        async move { n == 16 }
    })
    .await;
    assert_at_least_once_in_order(&recorder.log.lock().unwrap(), &stored);
    assert_view_exactly_once(&store_a, "view", &stored).await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

fn member() -> Member {
    Member {
        incarnation: Uuid::new_v4(),
        node: Uuid::new_v4(),
        subscribers: vec!["fenced".into()],
    }
}

fn parked_event(subscriber_id: &str, event: EventEnvelope) -> ParkedEvent {
    ParkedEvent {
        subscriber_id: subscriber_id.into(),
        partition: 0,
        event,
        attempts: 1,
        error: "gave up".into(),
        parked_at: SystemTime::now(),
        replay_requested: false,
    }
}

fn is_lease_lost<T>(result: &eventuate_core::Result<T>, id: &str) -> bool {
    matches!(result, Err(Error::LeaseLost { subscriber, partition: 0 }) if subscriber == id)
}

/// 2. A park by a holder whose lease is being taken over waits for the takeover's row lock
///    and then sees the new holder: it is refused, and parks nothing. (The old protocol
///    checked the owner with a plain read, which saw the row as it was before the
///    uncommitted takeover, and parked anyway.) Every other fenced write of the stale holder
///    is refused too once another member acquired the partition, and so is a write with the
///    new holder's own older epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_waits_for_a_concurrent_takeover_and_is_fenced_off() {
    let db = test_database().await;
    let store = store(&db.url).await;
    tick(&store, "p", 1).await;
    tick(&store, "p", 2).await;
    let events = all_events(&store).await;
    let shape = Shape::new(1, &["Counter".to_owned()], &[]);
    let generation = store
        .reshape("fenced", &shape, Position::START)
        .await
        .unwrap()
        .generation;
    let key = PartitionKey {
        subscriber_id: "fenced".into(),
        partition: 0,
        partitions: 1,
    };
    let (a, b) = (member(), member());
    let ttl = Duration::from_millis(300);
    let lease_a = store
        .try_acquire(&key, &a, generation, ttl)
        .await
        .unwrap()
        .expect("A takes the free partition")
        .lease;
    eventually(10, "A's lease expires", || {
        let state = store.subscriber("fenced");
        async move { state.await.unwrap().partitions[0].owner.is_none() }
    })
    .await;

    // B's takeover, by hand and not yet committed, while A parks an event.
    let mut takeover = store.pool().begin().await.unwrap();
    let taken = sqlx::query(
        "UPDATE subscription_partitions SET owner = $1, owner_node = $2, epoch = epoch + 1, \
         lease_expires_at = now() + interval '1 minute', dirty = true \
         WHERE subscriber_id = 'fenced' AND partition = 0",
    )
    .bind(b.incarnation)
    .bind(b.node)
    .execute(&mut *takeover)
    .await
    .unwrap();
    assert_eq!(taken.rows_affected(), 1);
    let park = tokio::spawn({
        let (store, lease_a) = (store.clone(), lease_a.clone());
        let parked = parked_event("fenced", events[0].clone());
        async move { store.park(&lease_a, &parked).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    if park.is_finished() {
        panic!(
            "A's park did not wait for the takeover's row lock: {:?}",
            park.await.unwrap()
        );
    }
    takeover.commit().await.unwrap();
    let parked = tokio::time::timeout(Duration::from_secs(10), park)
        .await
        .expect("the park ends once the takeover commits")
        .unwrap();
    assert!(is_lease_lost(&parked, "fenced"), "{parked:?}");
    assert!(
        store.parked("fenced").await.unwrap().is_empty(),
        "a fenced-off park stores nothing"
    );

    // B acquires through the protocol (its hand-made lease is its own, so at once).
    let hand_made = Lease {
        key: key.clone(),
        holder: b.incarnation,
        epoch: lease_a.epoch + 1,
    };
    let claim_b = store
        .try_acquire(&key, &b, generation, ttl * 100)
        .await
        .unwrap()
        .expect("B acquires");
    assert!(claim_b.lease.epoch > hand_made.epoch);
    assert!(
        claim_b.recovered,
        "the hand-made takeover left the row dirty"
    );
    store
        .park(&claim_b.lease, &parked_event("fenced", events[0].clone()))
        .await
        .unwrap();

    // Every write with A's stale lease is refused and changes nothing.
    let stale = &lease_a;
    let at = events[1].position;
    assert!(is_lease_lost(
        &store.save_checkpoint(stale, at).await,
        "fenced"
    ));
    assert!(is_lease_lost(
        &store.record_attempt(stale, at, 1).await,
        "fenced"
    ));
    assert!(is_lease_lost(
        &store
            .park(stale, &parked_event("fenced", events[1].clone()))
            .await,
        "fenced"
    ));
    assert!(is_lease_lost(
        &store.replayed(stale, events[0].position, None).await,
        "fenced"
    ));
    assert!(is_lease_lost(
        &store
            .replayed(stale, events[0].position, Some((9, "stale".into())))
            .await,
        "fenced"
    ));
    assert!(!store.renew(stale, ttl).await.unwrap(), "A cannot renew");
    store.release(stale).await.unwrap(); // a no-op: B holds it
    // B's own older epoch is fenced off as well.
    assert!(is_lease_lost(
        &store.save_checkpoint(&hand_made, at).await,
        "fenced"
    ));

    let state = store.subscriber("fenced").await.unwrap();
    assert_eq!(state.partitions[0].checkpoint, Position::START);
    assert_eq!(
        state.partitions[0].owner,
        Some((b.incarnation, b.node)),
        "A's release left B's lease alone"
    );
    let parked = store.parked("fenced").await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].event.event_id, events[0].event_id);
    assert_eq!(
        (parked[0].attempts, parked[0].error.as_str()),
        (1, "gave up")
    );

    // B's current lease writes.
    store.save_checkpoint(&claim_b.lease, at).await.unwrap();
    store
        .replayed(&claim_b.lease, events[0].position, None)
        .await
        .unwrap();
    assert_eq!(
        store.subscriber("fenced").await.unwrap().partitions[0].checkpoint,
        at
    );
    assert!(store.parked("fenced").await.unwrap().is_empty());

    // The same through the protocol alone: A's lease expires, B acquires it with
    // `try_acquire`, and from then on every write with A's lease is refused.
    let id = "fenced-2";
    let generation = store
        .reshape(id, &shape, Position::START)
        .await
        .unwrap()
        .generation;
    let key = PartitionKey {
        subscriber_id: id.into(),
        ..key
    };
    let lease_a = store
        .try_acquire(&key, &a, generation, ttl)
        .await
        .unwrap()
        .expect("A takes the free partition")
        .lease;
    assert!(
        store
            .try_acquire(&key, &b, generation, ttl)
            .await
            .unwrap()
            .is_none(),
        "B waits while A's lease is live"
    );
    eventually(10, "A's lease expires", || {
        let state = store.subscriber(id);
        async move { state.await.unwrap().partitions[0].owner.is_none() }
    })
    .await;
    let lease_b = store
        .try_acquire(&key, &b, generation, ttl * 100)
        .await
        .unwrap()
        .expect("B takes the expired partition")
        .lease;
    store
        .park(&lease_b, &parked_event(id, events[0].clone()))
        .await
        .unwrap();
    assert!(is_lease_lost(
        &store.save_checkpoint(&lease_a, at).await,
        id
    ));
    assert!(is_lease_lost(
        &store.record_attempt(&lease_a, at, 1).await,
        id
    ));
    assert!(is_lease_lost(
        &store.replayed(&lease_a, events[0].position, None).await,
        id
    ));
    assert!(is_lease_lost(
        &store
            .replayed(&lease_a, events[0].position, Some((9, "stale".into())))
            .await,
        id
    ));
    let state = store.subscriber(id).await.unwrap();
    assert_eq!(state.partitions[0].checkpoint, Position::START);
    assert_eq!(state.partitions[0].owner, Some((b.incarnation, b.node)));
    let parked = store.parked(id).await.unwrap();
    assert_eq!(parked.len(), 1, "A's replay outcomes changed nothing");
    assert_eq!(
        (parked[0].attempts, parked[0].error.as_str()),
        (1, "gave up")
    );
}

/// 3. Rows whose metadata does not decode (written by hand or by another service) are parked
///    with the reason, their entity's later events parked behind them, and everything else
///    flows; the raw read API still reports them as a typed decode error. (The old protocol
///    failed the consumer's whole read on them, forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_undecodable_metadata_is_parked_and_the_rest_flows() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let recorder = Recorder::new("recorder");
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    tick_version(&store, "a", 1, 1).await;
    tick_version(&store, "b", 1, 2).await;
    for (entity, version, n, metadata) in [("a", 2, 100, "null"), ("c", 1, 101, "{}")] {
        sqlx::query(
            "INSERT INTO events (event_id, entity_type, entity_id, entity_version, event_type, \
             payload, metadata, partition_hash) \
             VALUES ($1, 'Counter', $2, $3, 'Tick', $4::json, $5::json, $6)",
        )
        .bind(Uuid::new_v4())
        .bind(entity)
        .bind(version as i64)
        .bind(format!("{{\"n\":{n}}}"))
        .bind(metadata)
        .bind(entity_hash(entity) as i32)
        .execute(store.pool())
        .await
        .unwrap();
    }
    tick_version(&store, "a", 3, 3).await;
    tick_version(&store, "b", 2, 4).await;
    tick_version(&store, "c", 2, 5).await;
    tick_version(&store, "a", 4, 6).await;
    tick_version(&store, "b", 3, 7).await;
    tick_version(&store, "c", 3, 8).await;
    runtime
        .wait_caught_up(Duration::from_secs(10))
        .await
        .expect("nothing is wedged behind the undecodable rows");

    let delivered: Vec<(String, u64)> = recorder
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.entity_id.clone(), e.entity_version))
        .collect();
    let expected: Vec<(String, u64)> = [("a", 1), ("b", 1), ("b", 2), ("b", 3)]
        .iter()
        .map(|(e, v)| (e.to_string(), *v))
        .collect();
    assert_eq!(delivered, expected);

    let parked = runtime.parked("recorder").await.unwrap();
    let listed: Vec<(&str, u64)> = parked
        .iter()
        .map(|p| (p.event.entity_id.as_str(), p.event.entity_version))
        .collect();
    assert_eq!(
        listed,
        vec![("a", 2), ("c", 1), ("a", 3), ("c", 2), ("a", 4), ("c", 3)]
    );
    for p in &parked {
        let bad = matches!(
            (p.event.entity_id.as_str(), p.event.entity_version),
            ("a", 2) | ("c", 1)
        );
        if bad {
            assert!(
                p.error.contains("metadata") && p.error.contains("does not decode"),
                "{}",
                p.error
            );
            assert_eq!(p.attempts, 0);
        } else {
            assert!(p.error.contains("waiting behind"), "{}", p.error);
        }
    }
    let status = runtime.status().await.unwrap();
    assert_eq!((status[0].parked, status[0].lag), (6, 0));

    // The raw API does not hide the bad row.
    let read = store
        .read_stream(
            Position::START,
            &StreamFilter::entity_types(["Counter"]),
            100,
        )
        .await;
    assert!(
        matches!(
            &read,
            Err(Error::Decode { entity_id, version: 2, .. }) if entity_id == "a"
        ),
        "{read:?}"
    );
    assert!(matches!(
        store.load("Counter", "c", 0).await,
        Err(Error::Decode { version: 1, .. })
    ));
    assert_eq!(store.load("Counter", "b", 0).await.unwrap().len(), 3);
    runtime.shutdown().await.unwrap();
}

/// 4. A handler error with a NUL byte, which PostgreSQL `text` refuses: the shared case of
///    `eventuate_core::testing` (the in-memory store runs it in `runtime_memory.rs`). (The old
///    protocol failed the park on it, and retried the event forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_handler_error_parks_and_replays_correctly() {
    let db = test_database().await;
    eventuate_core::testing::nul_in_handler_errors(store(&db.url).await).await;
}

/// 5. Changing a subscriber's partition count is explicit: a runtime that registers another
///    count than the stored one consumes nothing and says to call `Running::reshape`; after
///    it, the new partitions start from the old checkpoint (nothing appended meanwhile is
///    skipped) and parked events follow their entity to its new partition. Partitions of a
///    `start = now` subscriber created at once share one start, even when two processes
///    declare it concurrently. (The old protocol created the new partitions at the head of
///    the moment, silently skipping what was appended while the subscriber was down.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_partition_count_is_explicit_and_loses_nothing() {
    let db = test_database().await;
    let store = store(&db.url).await;
    for i in 0..4 {
        tick(&store, &format!("h{i}"), 900 + i).await; // history: start = now skips it
    }
    let x = entities_in("x", 1, 1).remove(0); // partition 0 of 1, partition 1 of 2
    let others: Vec<String> = entities_in("e", 0, 3)
        .into_iter()
        .chain(entities_in("e", 1, 3))
        .collect();
    let recorder = Recorder {
        fail_on: Some(500),
        ..Recorder::new("recorder")
    };
    let configure = |partitions: u32| {
        move |s: Subscription| {
            s.partitions(partitions)
                .start_from(StartFrom::Now)
                .retry(retries(2))
        }
    };
    let r1 = Eventuate::new(store.clone())
        .options(options())
        .subscriber_with(recorder.clone(), configure(1))
        .start()
        .unwrap();
    r1.wait_caught_up(Duration::from_secs(10)).await.unwrap();
    let start = store.head().await.unwrap();
    for i in 0..12 {
        tick(&store, &others[i % 6], i as u64).await;
        if i == 4 {
            tick(&store, &x, 500).await; // fails: parked
            tick(&store, &x, 501).await; // parked behind it
        }
    }
    r1.wait_caught_up(Duration::from_secs(10)).await.unwrap();
    let parked = r1.parked("recorder").await.unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert!(parked.iter().all(|p| p.partition == 0));
    r1.shutdown().await.unwrap();

    // While no runtime runs, more events; then a runtime with 2 partitions.
    for i in 12..24 {
        tick(&store, &others[i % 6], i as u64).await;
    }
    tick(&store, &x, 502).await;
    let calls = recorder.calls.load(Ordering::SeqCst);
    let r2 = Eventuate::new(store.clone())
        .options(options())
        .subscriber_with(recorder.clone(), configure(2))
        .start()
        .unwrap();
    eventually(10, "the mismatch is seen", || {
        let status = r2.status();
        async move {
            let status = status.await.unwrap();
            status.len() == 2
                && status.iter().all(|s| {
                    matches!(&s.shape, ShapeView::Mismatch { stored } if stored.partitions == 1)
                        && !s.owned
                })
        }
    })
    .await;
    let waited = tokio::time::timeout(
        Duration::from_secs(5),
        r2.wait_caught_up(Duration::from_secs(60)),
    )
    .await
    .expect("a shape mismatch is an error at once, not a wait");
    let message = waited.unwrap_err().to_string();
    assert!(
        message.contains("Running::reshape") && message.contains("recorder"),
        "{message}"
    );
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        calls,
        "nothing consumed under a mismatched shape"
    );
    let state = store.subscriber("recorder").await.unwrap();
    assert_eq!(state.shape.as_ref().unwrap().shape.partitions, 1);

    assert_eq!(r2.reshape("recorder").await.unwrap(), 2);
    for i in 24..30 {
        tick(&store, &others[i % 6], i as u64).await;
    }
    tick(&store, &x, 503).await;
    r2.wait_caught_up(Duration::from_secs(10)).await.unwrap();
    let status = r2.status().await.unwrap();
    assert!(
        status
            .iter()
            .all(|s| s.shape == ShapeView::Agreed { generation: 2 } && s.owned),
        "{status:?}"
    );
    let parked = r2.parked("recorder").await.unwrap();
    let parked_n: Vec<u64> = parked.iter().map(|p| n_of(&p.event)).collect();
    assert_eq!(parked_n, vec![500, 501, 502, 503]);
    for p in &parked {
        assert_eq!(
            p.partition,
            partition_of(&p.event.entity_id, 2),
            "parked events follow their entity to its new partition"
        );
    }
    let after_start: Vec<EventEnvelope> = all_events(&store)
        .await
        .into_iter()
        .filter(|e| e.position > start)
        .collect();
    assert_eq!(after_start.len(), 34);
    let delivered: HashSet<Uuid> = recorder
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    let missing: Vec<_> = after_start
        .iter()
        .filter(|e| e.entity_id != x && !delivered.contains(&e.event_id))
        .map(|e| (e.entity_id.clone(), e.entity_version))
        .collect();
    assert!(missing.is_empty(), "skipped by the reshape: {missing:?}");

    // The parked events replay from their new partition.
    recorder.fixed.store(true, Ordering::SeqCst);
    assert_eq!(r2.replay("recorder", None).await.unwrap(), 4);
    eventually(10, "the parked events are replayed", || {
        let parked = r2.parked("recorder");
        async move { parked.await.unwrap().is_empty() }
    })
    .await;
    let log = recorder.log.lock().unwrap().clone();
    assert!(
        log.iter().all(|e| !e.entity_id.starts_with('h')),
        "start = now: history is never delivered"
    );
    assert_at_least_once_in_order(&log, &after_start);
    r2.shutdown().await.unwrap();

    // Two processes declare a new start = now subscriber at once, with different heads.
    let other = common::store(&db.url).await;
    let shape = Shape::new(2, &["Counter".to_owned()], &[]);
    let head_1 = store.head().await.unwrap();
    tick(&store, &others[0], 99).await;
    let head_2 = store.head().await.unwrap();
    assert!(head_1 < head_2);
    let (one, two) = tokio::join!(
        store.reshape("fresh", &shape, head_1),
        other.reshape("fresh", &shape, head_2)
    );
    assert_eq!(one.unwrap().generation, 1);
    assert_eq!(two.unwrap().generation, 1);
    let state = store.subscriber("fresh").await.unwrap();
    let checkpoints: Vec<Position> = state.partitions.iter().map(|p| p.checkpoint).collect();
    assert_eq!(checkpoints.len(), 2);
    assert_eq!(
        checkpoints[0], checkpoints[1],
        "one start for every partition"
    );
    assert!(checkpoints[0] == head_1 || checkpoints[0] == head_2);
    other.close().await;
}

/// 6. Partition rows left by the previous version (generation 0, no stored shape) are
///    adopted: with the same partition count the subscriber continues from their checkpoint;
///    with another, the new partitions start from the subscriber's start, since the old rows
///    cannot tell which partitions the old version never consumed (nothing skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_left_by_the_previous_version_are_adopted() {
    let db = test_database().await;
    let store = store(&db.url).await;
    let entities: Vec<String> = entities_in("e", 0, 2)
        .into_iter()
        .chain(entities_in("e", 1, 2))
        .collect();
    for i in 0..12 {
        tick(&store, &entities[i % 4], i as u64).await;
    }
    let before = all_events(&store).await;
    let checkpoint = before[5].position;
    // As migration 0002 left them: one partition each, at the checkpoint. The second was
    // held by a node of the old version that crashed.
    sqlx::query(
        "INSERT INTO subscription_partitions (subscriber_id, partition, checkpoint_tx, \
         checkpoint_seq) VALUES ('legacy', 0, $1, $2)",
    )
    .bind(checkpoint.transaction as i64)
    .bind(checkpoint.sequence as i64)
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO subscription_partitions (subscriber_id, partition, checkpoint_tx, \
         checkpoint_seq, owner, lease_expires_at, dirty) \
         VALUES ('legacy-split', 0, $1, $2, $3, now() - interval '1 minute', true)",
    )
    .bind(checkpoint.transaction as i64)
    .bind(checkpoint.sequence as i64)
    .bind(Uuid::new_v4())
    .execute(store.pool())
    .await
    .unwrap();
    let (legacy, split) = (Recorder::new("legacy"), Recorder::new("legacy-split"));
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber(legacy.clone())
        .subscriber_with(split.clone(), |s| s.partitions(2))
        .start()
        .unwrap();
    for i in 12..16 {
        tick(&store, &entities[i % 4], i as u64).await;
    }
    runtime
        .wait_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    let stored = all_events(&store).await;
    let expected: HashSet<Uuid> = stored
        .iter()
        .filter(|e| e.position > checkpoint)
        .map(|e| e.event_id)
        .collect();
    assert_eq!(expected.len(), 10);
    // The same partition count: it continues from its checkpoint.
    let log = legacy.log.lock().unwrap().clone();
    let early: Vec<_> = log
        .iter()
        .filter(|e| e.position <= checkpoint)
        .map(|e| (e.entity_id.clone(), e.entity_version))
        .collect();
    assert!(
        early.is_empty(),
        "legacy: delivered again from before the checkpoint: {early:?}"
    );
    let delivered: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(delivered, expected, "legacy");
    // Another partition count: the old rows cannot say which partitions the old version never
    // consumed (it left some unconsumed in role-split deployments), so the new partitions start
    // from the subscriber's start (here the beginning): history again, nothing skipped.
    let log = split.log.lock().unwrap().clone();
    let delivered: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    let all: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(delivered, all, "legacy-split: every stored event delivered");
    assert_at_least_once_in_order(&log, &stored);
    for (id, partitions) in [("legacy", 1), ("legacy-split", 2)] {
        let state = store.subscriber(id).await.unwrap();
        let stored_shape = state.shape.unwrap();
        assert_eq!(
            (stored_shape.shape.partitions, stored_shape.generation),
            (partitions, 1)
        );
        assert_eq!(state.partitions.len(), partitions as usize);
    }
    runtime.shutdown().await.unwrap();
}

/// The runtime's leases renewed in one statement: per lease, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_leases_are_renewed_in_one_statement() {
    let db = test_database().await;
    eventuate_core::testing::renewing_several_leases(&store(&db.url).await).await;
}
