//! The dispatcher's guarantees on the in-memory store: delivery, idempotent commands from
//! handlers, cause tracing, retries, parking and replay, panics, crash recovery with persisted
//! attempt counts, leases between competing runtimes, partitions, start-from-now, shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::{
    Error, EventContext, EventEnvelope, EventStore, Eventuate, HandlerError, InMemoryEventStore,
    Repository, RetryPolicy, StartFrom, Subscriber, Subscription,
};

fn fast() -> RuntimeOptions {
    RuntimeOptions {
        poll_interval: Duration::from_millis(20),
        lease_ttl: Duration::from_millis(300),
        batch_size: 16,
        ..RuntimeOptions::default()
    }
}

fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

type Log = Arc<Mutex<Vec<EventEnvelope>>>;

/// Records every delivery; fails (or panics, or hangs) on events chosen by the test.
#[derive(Clone, Default)]
struct Recorder {
    id: &'static str,
    log: Log,
    fail_amount: Option<u64>,
    panic_amount: Option<u64>,
    hang_amount: Option<u64>,
    slow_amount: Option<u64>,
    fixed: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
    hung: Arc<AtomicBool>,
}

impl Recorder {
    fn new(id: &'static str) -> Self {
        Recorder {
            id,
            ..Recorder::default()
        }
    }
    fn amounts(&self) -> Vec<(String, u64)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| {
                e.decode::<Deposited>()
                    .ok()
                    .map(|d| (e.entity_id.clone(), d.amount))
            })
            .collect()
    }
}

impl Subscriber for Recorder {
    fn subscription(&self) -> Subscription {
        Subscription::new(self.id, ["Account"])
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let event = ctx.event();
        if let Ok(d) = event.decode::<Deposited>() {
            let fixed = self.fixed.load(Ordering::SeqCst);
            if self.fail_amount == Some(d.amount) && !fixed {
                return Err(HandlerError::msg(format!("cannot handle {}", d.amount)));
            }
            if self.panic_amount == Some(d.amount) && !fixed {
                panic!("boom on {}", d.amount);
            }
            if self.slow_amount == Some(d.amount) {
                self.hung.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if self.hang_amount == Some(d.amount) && !fixed {
                self.hung.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
        }
        self.log.lock().unwrap().push(event.clone());
        Ok(())
    }
}

async fn deposit(repo: &Repository, id: &str, amount: u64) {
    if repo.find::<Account>(id).await.unwrap().is_none() {
        repo.create_with_id::<Account>(id, Open { owner: id.into() })
            .await
            .unwrap();
    }
    repo.update::<Account>(id, Deposit { amount })
        .await
        .unwrap();
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Mirrors every account into account `mirror-<id>`, through the handler context: the
/// account's opening creates the mirror, each deposit is repeated on it. The commands depend
/// only on the event, so every attempt sends the same ones (a handler that created the mirror
/// "if it is missing" would send a different first command on a retry after the create).
struct Mirror;

impl Subscriber for Mirror {
    fn subscription(&self) -> Subscription {
        Subscription::new("mirror", ["Account"]).event_types(["Opened", "Deposited"])
    }
    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        if ctx.entity_id().starts_with("mirror-") {
            return Ok(());
        }
        let target = format!("mirror-{}", ctx.entity_id());
        if ctx.event().event_type == "Opened" {
            ctx.create::<Account>(
                &target,
                Open {
                    owner: target.clone(),
                },
            )
            .await?;
        } else {
            let d: Deposited = ctx.event().decode()?;
            ctx.update::<Account>(&target, Deposit { amount: d.amount })
                .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_update_aggregates_with_cause_tracing() {
    let store = InMemoryEventStore::new();
    let runtime = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(Mirror)
        .start()
        .unwrap();
    let repo = runtime.repository();
    deposit(&repo, "a", 10).await;
    deposit(&repo, "a", 5).await;
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    let mirror = repo.load::<Account>("mirror-a").await.unwrap();
    assert_eq!(mirror.state.balance, 15);

    let source = store.load("Account", "a", 0).await.unwrap();
    let mirrored = store.load("Account", "mirror-a", 0).await.unwrap();
    let deposit_event = &source[1];
    let mirrored_deposit = mirrored
        .iter()
        .find(|e| {
            e.metadata.causation_id == Some(deposit_event.event_id) && e.event_type == "Deposited"
        })
        .expect("the mirrored deposit names the deposit that caused it");
    assert_eq!(
        mirrored_deposit.metadata.correlation_id, deposit_event.metadata.correlation_id,
        "the correlation id runs through the chain"
    );
    assert_eq!(
        mirrored_deposit.metadata.command_type.as_deref(),
        Some("Deposit")
    );
    assert_eq!(
        mirrored_deposit
            .metadata
            .headers
            .get(eventuate_core::subscriber::SENT_BY_HEADER)
            .map(String::as_str),
        Some("mirror"),
        "the events record which subscriber sent their command"
    );
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_redelivered_event_does_not_apply_its_command_twice() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    repo.create_with_id::<Account>("a", Open { owner: "a".into() })
        .await
        .unwrap();
    repo.update::<Account>("a", Deposit { amount: 7 })
        .await
        .unwrap();
    let events = store.load("Account", "a", 0).await.unwrap();
    let deposit = events[1].clone();
    for _ in 0..3 {
        for event in &events {
            let ctx = EventContext::new(repo.clone(), "mirror", event.clone());
            Mirror.handle(&ctx).await.unwrap();
        }
    }
    let mirror = repo.load::<Account>("mirror-a").await.unwrap();
    assert_eq!(
        (mirror.version, mirror.state.balance),
        (2, 7),
        "one create and one deposit, however often the events are delivered"
    );
    // A different subscriber handling the same event is a different command.
    let ctx = EventContext::new(repo.clone(), "other", deposit);
    let outcome = ctx
        .update::<Account>("mirror-a", Deposit { amount: 7 })
        .await
        .unwrap();
    assert!(!outcome.duplicate);
    let again = EventContext::new(repo.clone(), "other", ctx.event().clone());
    let outcome = again
        .update::<Account>("mirror-a", Deposit { amount: 7 })
        .await
        .unwrap();
    assert!(outcome.duplicate);
}

/// Before command fingerprints, a retry whose k-th command differed from the first attempt's
/// was reported as a duplicate and silently dropped.
#[tokio::test]
async fn a_retry_that_sends_a_different_command_is_refused_not_dropped() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    for id in ["a", "x", "y"] {
        deposit(&repo, id, 10).await;
    }
    let event = store.load("Account", "a", 1).await.unwrap().remove(0);
    let attempt = || EventContext::new(repo.clone(), "router", event.clone());

    let first = attempt();
    first
        .update::<Account>("x", Deposit { amount: 5 })
        .await
        .unwrap();
    // The retry routes its first command to another account.
    let err = attempt()
        .update::<Account>("y", Deposit { amount: 5 })
        .await
        .unwrap_err();
    match &err {
        Error::IdempotencyMismatch {
            subscriber,
            triggering_event_id,
            sequence,
            recorded,
            attempted,
        } => {
            assert_eq!(
                (subscriber.as_str(), *triggering_event_id, *sequence),
                ("router", event.event_id, 0)
            );
            assert_eq!(
                (recorded.entity_id.as_str(), recorded.command_type.as_str()),
                ("x", "Deposit")
            );
            assert_eq!(
                (
                    attempted.entity_id.as_str(),
                    attempted.command_type.as_str()
                ),
                ("y", "Deposit")
            );
        }
        other => panic!("expected IdempotencyMismatch, got {other:?}"),
    }
    assert!(
        HandlerError::from(err).is_permanent(),
        "retrying meets the same recorded key: parked"
    );
    // Another command type to the same account is a different command too.
    let err = attempt()
        .update::<Account>("x", Withdraw { amount: 5 })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IdempotencyMismatch { attempted, .. } if attempted.command_type == "Withdraw"),
        "{err:?}"
    );
    // The same command again is still a duplicate.
    let again = attempt()
        .update::<Account>("x", Deposit { amount: 5 })
        .await
        .unwrap();
    assert!(again.duplicate);
    let balances = (
        repo.load::<Account>("x").await.unwrap().state.balance,
        repo.load::<Account>("y").await.unwrap().state.balance,
    );
    assert_eq!(
        balances,
        (15, 10),
        "nothing but the first command was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_are_retried_until_they_succeed() {
    struct Flaky {
        failures_left: AtomicU32,
        delivered: AtomicU32,
    }
    impl Subscriber for Flaky {
        fn subscription(&self) -> Subscription {
            Subscription::new("flaky", ["Account"]).retry(quick_retries(5))
        }
        async fn handle(&self, _: &EventContext) -> Result<(), HandlerError> {
            if self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(HandlerError::msg("transient"));
            }
            self.delivered.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let store = InMemoryEventStore::new();
    let runtime = Eventuate::new(store)
        .options(fast())
        .subscriber(Flaky {
            failures_left: AtomicU32::new(3),
            delivered: AtomicU32::new(0),
        })
        .start()
        .unwrap();
    deposit(&runtime.repository(), "a", 1).await;
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    let status = runtime.status().await.unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (status[0].delivered, status[0].retried, status[0].parked),
        (2, 3, 0)
    );
    assert!(runtime.parked("flaky").await.unwrap().is_empty());
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_parked_with_their_entity_and_replayed_in_order() {
    let recorder = Recorder {
        fail_amount: Some(13),
        ..Recorder::new("recorder")
    };
    let store = InMemoryEventStore::new();
    let runtime = Eventuate::new(store)
        .options(fast())
        .subscriber_with(recorder.clone(), |s| s.retry(quick_retries(3)))
        .start()
        .unwrap();
    let repo = runtime.repository();
    deposit(&repo, "poisoned", 1).await;
    deposit(&repo, "poisoned", 13).await; // fails every time
    deposit(&repo, "poisoned", 2).await; // must wait behind 13
    deposit(&repo, "healthy", 3).await; // must flow
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();

    assert_eq!(
        recorder.amounts(),
        vec![("poisoned".into(), 1), ("healthy".into(), 3)]
    );
    let parked = runtime.parked("recorder").await.unwrap();
    let parked_amounts: Vec<u64> = parked
        .iter()
        .map(|p| p.event.decode::<Deposited>().unwrap().amount)
        .collect();
    assert_eq!(parked_amounts, vec![13, 2]);
    assert_eq!(parked[0].attempts, 3);
    assert!(
        parked[0].error.contains("cannot handle 13"),
        "{}",
        parked[0].error
    );
    assert_eq!(
        parked[1].attempts, 0,
        "parked behind the poison event, never attempted"
    );
    let status = runtime.status().await.unwrap();
    assert_eq!(status[0].parked, 2);

    // Later events of the parked entity keep waiting.
    deposit(&repo, "poisoned", 4).await;
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(runtime.parked("recorder").await.unwrap().len(), 3);

    // Replay before the fix: the first event fails again and the rest stay parked, in order.
    assert_eq!(
        runtime
            .replay("recorder", Some(("Account", "poisoned")))
            .await
            .unwrap(),
        3
    );
    eventually("failed replay recorded", || {
        futures_util::FutureExt::now_or_never(runtime.parked("recorder"))
            .and_then(Result::ok)
            .is_some_and(|p| p[0].attempts == 4 && !p[0].replay_requested)
    })
    .await;
    assert_eq!(recorder.amounts().len(), 2);

    recorder.fixed.store(true, Ordering::SeqCst);
    runtime.replay("recorder", None).await.unwrap();
    eventually("replayed", || recorder.amounts().len() == 5).await;
    assert_eq!(
        recorder.amounts(),
        vec![
            ("poisoned".into(), 1),
            ("healthy".into(), 3),
            ("poisoned".into(), 13),
            ("poisoned".into(), 2),
            ("poisoned".into(), 4),
        ]
    );
    eventually("parked list empty", || {
        futures_util::FutureExt::now_or_never(runtime.parked("recorder"))
            .and_then(Result::ok)
            .is_some_and(|p| p.is_empty())
    })
    .await;
    // The entity is unblocked: new events flow directly.
    deposit(&repo, "poisoned", 5).await;
    eventually("unblocked", || recorder.amounts().len() == 6).await;
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_failure_not_a_dead_consumer() {
    let recorder = Recorder {
        panic_amount: Some(9),
        ..Recorder::new("panicky")
    };
    let runtime = Eventuate::new(InMemoryEventStore::new())
        .options(fast())
        .subscriber_with(recorder.clone(), |s| s.retry(quick_retries(2)))
        .start()
        .unwrap();
    let repo = runtime.repository();
    deposit(&repo, "a", 9).await;
    deposit(&repo, "b", 1).await;
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(recorder.amounts(), vec![("b".into(), 1)]);
    let parked = runtime.parked("panicky").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].error.contains("panicked: boom on 9"),
        "{}",
        parked[0].error
    );
    runtime.shutdown().await.unwrap();
}

/// Parked-event operations name a subscriber: a misspelt id is an error, not an empty
/// answer; one registered by another runtime on the same store (another process) is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_event_operations_refuse_an_unknown_subscriber() {
    let store = InMemoryEventStore::new();
    let worker = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(Recorder::new("recorder"))
        .start()
        .unwrap();
    worker.wait_caught_up(Duration::from_secs(5)).await.unwrap();
    // An operations process that runs no subscriber itself.
    let admin = Eventuate::new(store).options(fast()).start().unwrap();
    for runtime in [&worker, &admin] {
        assert!(runtime.parked("recorder").await.unwrap().is_empty());
        assert_eq!(runtime.replay("recorder", None).await.unwrap(), 0);
        let misspelt = [
            runtime.parked("recoder").await.map(|_| ()),
            runtime.replay("recoder", None).await.map(|_| ()),
            runtime
                .skip_parked("recoder", eventuate_core::Position::new(1, 1))
                .await
                .map(|_| ()),
        ];
        for outcome in misspelt {
            let error = outcome.expect_err("an unknown subscriber");
            assert!(
                matches!(&error, eventuate_core::Error::Config(m) if m.contains("`recoder`")),
                "{error:?}"
            );
        }
    }
    admin.shutdown().await.unwrap();
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_crashing_the_process_gets_parked() {
    crash_loop(None).await;
}

/// A process restarted under the same node id (a pod name) is a new incarnation: it finds the
/// partition dirty and consumes carefully, so the crash loop ends in parking just the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_under_a_stable_node_id_also_gets_the_event_parked() {
    crash_loop(Some(uuid::Uuid::new_v4())).await;
}

async fn crash_loop(node_id: Option<uuid::Uuid>) {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    deposit(&repo, "a", 1).await;
    deposit(&repo, "a", 66).await; // hangs the handler: we "crash" the runtime under it
    deposit(&repo, "b", 2).await;
    let max_attempts = 3;
    let mut runs = Vec::new();
    // Each runtime hangs on the poison event and is dropped (a crash: no graceful release).
    // The first crash happens outside careful mode and is not counted per event; each later
    // one is, so the event is parked by run max_attempts + 2 at the latest.
    for _ in 0..max_attempts + 2 {
        let recorder = Recorder {
            hang_amount: Some(66),
            ..Recorder::new("crashy")
        };
        let runtime = Eventuate::new(store.clone())
            .options(RuntimeOptions {
                node_id: node_id.unwrap_or_else(uuid::Uuid::new_v4),
                ..fast()
            })
            .subscriber_with(recorder.clone(), |s| s.retry(quick_retries(max_attempts)))
            .start()
            .unwrap();
        runs.push(recorder.clone());
        let mut parked_now = false;
        for _ in 0..300 {
            parked_now = !runtime.parked("crashy").await.unwrap().is_empty();
            if parked_now || recorder.hung.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if parked_now {
            runtime
                .wait_caught_up(Duration::from_secs(5))
                .await
                .unwrap();
            assert!(
                !recorder.hung.load(Ordering::SeqCst),
                "parked without running it again"
            );
            runtime.shutdown().await.unwrap();
            break;
        }
        assert!(
            recorder.hung.load(Ordering::SeqCst),
            "the handler reached the poison event"
        );
        drop(runtime);
        // The next runtime takes over once the crashed one's lease expires.
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    let parked = eventuate_core::runtime::SubscriptionStore::parked(&store, "crashy")
        .await
        .unwrap();
    assert_eq!(parked.len(), 1, "the poison event is parked");
    assert_eq!(parked[0].event.decode::<Deposited>().unwrap().amount, 66);
    assert_eq!(
        runs.len() as u32,
        max_attempts + 2,
        "parked after max_attempts + 1 crashes, by the next run"
    );
    assert_eq!(parked[0].attempts, max_attempts);
    assert!(
        parked[0]
            .error
            .contains(&format!("stopped {max_attempts} times while handling it")),
        "the parked record says why: {}",
        parked[0].error
    );
    let last = runs.last().unwrap();
    assert!(
        last.amounts().contains(&("b".into(), 2)),
        "events after the poison event flow once it is parked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_runtimes_share_nothing_and_take_over_from_a_dead_one() {
    let store = InMemoryEventStore::new();
    let first = Recorder::new("single");
    let second = Recorder {
        log: first.log.clone(),
        ..Recorder::new("single")
    };
    let a = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(first.clone())
        .start()
        .unwrap();
    let b = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(second.clone())
        .start()
        .unwrap();
    let repo = a.repository();
    for i in 1..=20 {
        deposit(&repo, &format!("acc-{}", i % 4), i).await;
    }
    eventually("all delivered", || first.amounts().len() == 20).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        first.amounts().len(),
        20,
        "each event handled once across both runtimes"
    );
    let (a_calls, b_calls) = (
        first.calls.load(Ordering::SeqCst),
        second.calls.load(Ordering::SeqCst),
    );
    assert!(
        a_calls == 0 || b_calls == 0,
        "one consumer at a time: {a_calls} / {b_calls}"
    );
    // Crash whichever runtime holds the lease; the other takes over after the lease expires.
    let (survivor, survivor_recorder) = if a_calls > 0 {
        drop(a);
        (b, second)
    } else {
        drop(b);
        (a, first)
    };
    for i in 21..=30 {
        deposit(&repo, &format!("acc-{}", i % 4), i).await;
    }
    // The dead runtime's lease expires, then the survivor takes the partition.
    for _ in 0..200 {
        if survivor.status().await.unwrap().iter().any(|s| s.owned) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    survivor
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(survivor_recorder.calls.load(Ordering::SeqCst) >= 10);
    let amounts: Vec<u64> = survivor_recorder
        .amounts()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    for i in 1..=30 {
        assert!(amounts.contains(&i), "event {i} was never handled");
    }
    survivor.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_over_runtimes_and_keep_per_entity_order() {
    let store = InMemoryEventStore::new();
    let log: Log = Arc::default();
    let make = || Recorder {
        log: log.clone(),
        ..Recorder::new("parted")
    };
    let a = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(make(), |s| s.partitions(4))
        .start()
        .unwrap();
    let b = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(make(), |s| s.partitions(4))
        .start()
        .unwrap();
    let repo = a.repository();
    for i in 1..=40 {
        deposit(&repo, &format!("e{}", i % 8), i).await;
    }
    eventually("delivered", || {
        log.lock()
            .unwrap()
            .iter()
            .filter(|e| e.event_type == "Deposited")
            .count()
            == 40
    })
    .await;
    // Let the lease manager settle on the fair share, then check it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let owned =
        |s: Vec<eventuate_core::runtime::PartitionStatus>| s.iter().filter(|p| p.owned).count();
    let (owned_a, owned_b) = (
        owned(a.status().await.unwrap()),
        owned(b.status().await.unwrap()),
    );
    assert_eq!(
        (owned_a, owned_b),
        (2, 2),
        "fair share of 4 partitions over 2 runtimes"
    );
    let mut per_entity: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in log.lock().unwrap().iter() {
        assert!(seen.insert(e.event_id), "no event twice without a crash");
        per_entity
            .entry(e.entity_id.clone())
            .or_default()
            .push(e.entity_version);
    }
    for (entity, versions) in per_entity {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "order broken for {entity}: {versions:?}"
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_now_skips_history_and_shutdown_keeps_the_checkpoint() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    deposit(&repo, "old", 1).await;
    let recorder = Recorder::new("fresh");
    let runtime = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(recorder.clone(), |s| s.start_from(StartFrom::Now))
        .start()
        .unwrap();
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    deposit(&repo, "new", 2).await;
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(recorder.amounts(), vec![("new".into(), 2)]);
    runtime.shutdown().await.unwrap();

    // Restarted: nothing is delivered again, later events are.
    let again = Recorder::new("fresh");
    let runtime = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(again.clone(), |s| s.start_from(StartFrom::Now))
        .start()
        .unwrap();
    deposit(&repo, "new", 3).await;
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(again.amounts(), vec![("new".into(), 3)]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test]
async fn misconfiguration_is_reported_at_start() {
    let dup = Eventuate::new(InMemoryEventStore::new())
        .subscriber(Recorder::new("same"))
        .subscriber(Recorder::new("same"))
        .start();
    assert!(matches!(dup, Err(Error::Config(m)) if m.contains("`same`")));
    let zero = Eventuate::new(InMemoryEventStore::new())
        .subscriber_with(Recorder::new("zero"), |s| s.partitions(0))
        .start();
    assert!(matches!(zero, Err(Error::Config(m)) if m.contains("partitions")));
    let bad = Eventuate::new(InMemoryEventStore::new())
        .subscriber(Recorder::new("bad id!"))
        .start();
    assert!(matches!(
        bad,
        Err(Error::InvalidName {
            kind: "subscriber id",
            ..
        })
    ));
}

#[tokio::test]
async fn a_transactional_subscriber_on_the_memory_store_is_told_why_it_cannot_run() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    deposit(&repo, "a", 1).await;
    let event = store.load("Account", "a", 0).await.unwrap().remove(0);
    let ctx = EventContext::new(repo, "view", event);
    let err = ctx.transaction::<()>().await.unwrap_err();
    assert!(err.to_string().contains("not transactional"), "{err}");
    let refused = Eventuate::new(store)
        .subscriber_with(Recorder::new("view"), |s| s.transactional(true))
        .start();
    assert!(
        matches!(refused, Err(Error::Config(m)) if m.contains("has no transactions")),
        "a transactional subscriber is refused at start on a store without transactions"
    );
}

/// Sends a command the target refuses: retrying cannot help, so it is parked at once.
struct Overdraw;

impl Subscriber for Overdraw {
    fn subscription(&self) -> Subscription {
        Subscription::new("overdraw", ["Account"]).event_types(["Opened"])
    }
    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        ctx.update::<Account>(ctx.entity_id(), Withdraw { amount: 1_000 })
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_target_refuses_is_parked_without_retries() {
    let runtime = Eventuate::new(InMemoryEventStore::new())
        .options(fast())
        .subscriber(Overdraw)
        .start()
        .unwrap();
    runtime
        .repository()
        .create_with_id::<Account>("poor", Open { owner: "p".into() })
        .await
        .unwrap();
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    let parked = runtime.parked("overdraw").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, 1, "no retries for a rejected command");
    assert!(
        parked[0].error.contains("insufficient funds"),
        "{}",
        parked[0].error
    );
    let status = runtime.status().await.unwrap();
    assert_eq!(status[0].retried, 0);
    runtime.shutdown().await.unwrap();
}

/// Sends a command to an account that a saga creates a moment later (`target-<id>`).
struct CreditLater {
    calls: Arc<AtomicU32>,
}

impl Subscriber for CreditLater {
    fn subscription(&self) -> Subscription {
        Subscription::new("credit-later", ["Account"])
            .event_types(["Opened"])
            .retry(RetryPolicy {
                max_attempts: 100,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(20),
            })
    }
    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        if ctx.entity_id().starts_with("target-") {
            return Ok(());
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        let target = format!("target-{}", ctx.entity_id());
        ctx.update::<Account>(&target, Deposit { amount: 5 })
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_an_entity_not_created_yet_is_retried_not_parked() {
    let calls = Arc::new(AtomicU32::new(0));
    let runtime = Eventuate::new(InMemoryEventStore::new())
        .options(fast())
        .subscriber(CreditLater {
            calls: calls.clone(),
        })
        .start()
        .unwrap();
    let repo = runtime.repository();
    repo.create_with_id::<Account>("a", Open { owner: "a".into() })
        .await
        .unwrap();
    eventually("the handler found no target", || {
        calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(
        runtime.parked("credit-later").await.unwrap().is_empty(),
        "EntityNotFound is transient: the event is retried, not parked"
    );
    repo.create_with_id::<Account>("target-a", Open { owner: "t".into() })
        .await
        .unwrap();
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    let target = repo.load::<Account>("target-a").await.unwrap();
    assert_eq!(target.state.balance, 5, "the retried command landed");
    assert!(runtime.parked("credit-later").await.unwrap().is_empty());
    let status = runtime.status().await.unwrap();
    assert!(status[0].retried >= 1, "{status:?}");
    assert_eq!(status[0].parked, 0);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_hung_handler() {
    let recorder = Recorder {
        hang_amount: Some(5),
        ..Recorder::new("hangs")
    };
    let store = InMemoryEventStore::new();
    let runtime = Eventuate::new(store.clone())
        .options(RuntimeOptions {
            shutdown_timeout: Duration::from_millis(200),
            ..fast()
        })
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    deposit(&runtime.repository(), "a", 5).await;
    eventually("the handler hangs", || recorder.hung.load(Ordering::SeqCst)).await;
    tokio::time::timeout(Duration::from_secs(5), runtime.shutdown())
        .await
        .expect("shutdown returned after its timeout")
        .unwrap();
    // The hung event was not checkpointed: the next runtime delivers it again.
    recorder.fixed.store(true, Ordering::SeqCst);
    let runtime = Eventuate::new(store)
        .options(fast())
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    // The aborted consumer did not release its lease (an abort is a crash): wait it out.
    for _ in 0..200 {
        if runtime.status().await.unwrap().iter().any(|s| s.owned) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(recorder.amounts(), vec![("a".into(), 5)]);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_handler_finish_and_saves_its_checkpoint() {
    let recorder = Recorder {
        slow_amount: Some(7),
        ..Recorder::new("slow")
    };
    let store = InMemoryEventStore::new();
    let runtime = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    deposit(&runtime.repository(), "a", 7).await;
    eventually("the handler is in flight", || {
        recorder.hung.load(Ordering::SeqCst)
    })
    .await;
    runtime.shutdown().await.unwrap();
    assert_eq!(
        recorder.amounts(),
        vec![("a".into(), 7)],
        "the handler finished"
    );
    let calls = recorder.calls.load(Ordering::SeqCst);

    let runtime = Eventuate::new(store)
        .options(fast())
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    for _ in 0..200 {
        if runtime.status().await.unwrap().iter().any(|s| s.owned) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        recorder.calls.load(Ordering::SeqCst),
        calls,
        "nothing delivered again: the checkpoint was saved at shutdown"
    );
    runtime.shutdown().await.unwrap();
}

/// The in-memory subscription state, altered for a test: wake-ups that never come (only the
/// fallback poll can deliver), and transactions whose `begin` fails `begin_failures` times
/// (a database outage) before handing out one that moves the checkpoint on commit.
struct Deaf {
    inner: InMemoryEventStore,
    silent: tokio::sync::watch::Sender<u64>,
    begin_failures: AtomicU32,
}

impl Deaf {
    fn over(inner: InMemoryEventStore) -> Self {
        Deaf {
            inner,
            silent: tokio::sync::watch::Sender::new(0),
            begin_failures: AtomicU32::new(0),
        }
    }
}

struct CheckpointOnCommit {
    store: InMemoryEventStore,
    lease: eventuate_core::runtime::Lease,
    scratch: u8,
}

impl eventuate_core::subscriber::CheckpointTransaction for CheckpointOnCommit {
    fn resource(&mut self) -> &mut (dyn std::any::Any + Send) {
        &mut self.scratch
    }
    fn commit(
        self: Box<Self>,
        checkpoint: eventuate_core::Position,
    ) -> futures_util::future::BoxFuture<'static, eventuate_core::Result<()>> {
        Box::pin(async move {
            eventuate_core::runtime::SubscriptionStore::save_checkpoint(
                &self.store,
                &self.lease,
                checkpoint,
            )
            .await
        })
    }
}

mod deaf {
    use super::Deaf;
    use eventuate_core::Position;
    use eventuate_core::runtime::{
        Claim, Lease, Member, ParkedEvent, PartitionKey, Shape, StoredShape, SubscriberState,
        SubscriptionStore,
    };
    use eventuate_core::subscriber::CheckpointTransaction;
    use futures_util::future::BoxFuture;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use uuid::Uuid;

    type R<T> = eventuate_core::Result<T>;

    impl SubscriptionStore for Deaf {
        fn heartbeat<'a>(&'a self, m: &'a Member, ttl: Duration) -> BoxFuture<'a, R<Vec<Member>>> {
            self.inner.heartbeat(m, ttl)
        }
        fn leave(&self, incarnation: Uuid) -> BoxFuture<'_, R<()>> {
            self.inner.leave(incarnation)
        }
        fn reshape<'a>(
            &'a self,
            id: &'a str,
            shape: &'a Shape,
            start: Position,
        ) -> BoxFuture<'a, R<StoredShape>> {
            self.inner.reshape(id, shape, start)
        }
        fn migrate<'a>(&'a self, id: &'a str) -> BoxFuture<'a, R<bool>> {
            self.inner.migrate(id)
        }
        fn subscriber<'a>(&'a self, id: &'a str) -> BoxFuture<'a, R<SubscriberState>> {
            self.inner.subscriber(id)
        }
        fn try_acquire<'a>(
            &'a self,
            key: &'a PartitionKey,
            member: &'a Member,
            generation: u64,
            ttl: Duration,
        ) -> BoxFuture<'a, R<Option<Claim>>> {
            self.inner.try_acquire(key, member, generation, ttl)
        }
        fn renew<'a>(&'a self, lease: &'a Lease, ttl: Duration) -> BoxFuture<'a, R<bool>> {
            self.inner.renew(lease, ttl)
        }
        fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, R<()>> {
            self.inner.release(lease)
        }
        fn save_checkpoint<'a>(&'a self, lease: &'a Lease, at: Position) -> BoxFuture<'a, R<()>> {
            self.inner.save_checkpoint(lease, at)
        }
        fn record_attempt<'a>(
            &'a self,
            lease: &'a Lease,
            at: Position,
            attempts: u32,
        ) -> BoxFuture<'a, R<()>> {
            self.inner.record_attempt(lease, at, attempts)
        }
        fn begin<'a>(
            &'a self,
            lease: &'a Lease,
        ) -> BoxFuture<'a, R<Box<dyn CheckpointTransaction>>> {
            let failing = self
                .begin_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let tx = super::CheckpointOnCommit {
                store: self.inner.clone(),
                lease: lease.clone(),
                scratch: 0,
            };
            Box::pin(async move {
                if failing {
                    return Err(eventuate_core::Error::backend(
                        "begin a transaction",
                        "the database is restarting",
                    ));
                }
                Ok(Box::new(tx) as Box<dyn CheckpointTransaction>)
            })
        }
        fn park<'a>(&'a self, lease: &'a Lease, parked: &'a ParkedEvent) -> BoxFuture<'a, R<()>> {
            self.inner.park(lease, parked)
        }
        fn parked<'a>(&'a self, id: &'a str) -> BoxFuture<'a, R<Vec<ParkedEvent>>> {
            self.inner.parked(id)
        }
        fn request_replay<'a>(
            &'a self,
            id: &'a str,
            entity: Option<(&'a str, &'a str)>,
        ) -> BoxFuture<'a, R<u64>> {
            self.inner.request_replay(id, entity)
        }
        fn replayed<'a>(
            &'a self,
            lease: &'a Lease,
            at: Position,
            failure: Option<(u32, String)>,
        ) -> BoxFuture<'a, R<()>> {
            self.inner.replayed(lease, at, failure)
        }
        fn skip_parked<'a>(&'a self, id: &'a str, at: Position) -> BoxFuture<'a, R<bool>> {
            self.inner.skip_parked(id, at)
        }
        fn wakeups(&self) -> tokio::sync::watch::Receiver<u64> {
            self.silent.subscribe()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_poll_delivers_when_no_wake_up_ever_comes() {
    let store = InMemoryEventStore::new();
    let deaf = Deaf::over(store.clone());
    let recorder = Recorder::new("polling");
    let runtime = Eventuate::from_parts(Arc::new(store.clone()), Arc::new(deaf))
        .options(RuntimeOptions {
            poll_interval: Duration::from_millis(100),
            ..fast()
        })
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    // The consumer is idle at the head, waiting: only its timer can bring it back.
    tokio::time::sleep(Duration::from_millis(150)).await;
    deposit(&runtime.repository(), "a", 3).await;
    eventually("delivered by polling", || recorder.amounts().len() == 1).await;
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_retried_without_counting_attempts_or_parking() {
    let store = InMemoryEventStore::new();
    let flaky = Deaf::over(store.clone());
    // Far more failures than attempts: if they counted, the event would be parked.
    flaky.begin_failures.store(4, Ordering::SeqCst);
    let recorder = Recorder::new("view");
    let runtime = Eventuate::from_parts(Arc::new(store.clone()), Arc::new(flaky))
        .options(RuntimeOptions {
            poll_interval: Duration::from_millis(20),
            ..fast()
        })
        .subscriber_with(recorder.clone(), |s| {
            s.transactional(true).retry(quick_retries(2))
        })
        .start()
        .unwrap();
    deposit(&runtime.repository(), "a", 4).await;
    eventually("delivered after the outage", || {
        recorder.amounts().len() == 1
    })
    .await;
    assert!(
        runtime.parked("view").await.unwrap().is_empty(),
        "nothing parked"
    );
    let status = runtime.status().await.unwrap();
    assert_eq!(status[0].retried, 0, "an outage is not a handler failure");
    runtime.shutdown().await.unwrap();
}

/// The shared case of `eventuate_core::testing` (the PostgreSQL store runs it too, in
/// `eventuate-postgres/tests/protocol.rs`): a handler error with a NUL byte is stored escaped,
/// parks its entity, and replays correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_handler_error_parks_and_replays_correctly() {
    eventuate_core::testing::nul_in_handler_errors(InMemoryEventStore::new()).await;
}

/// A saga step whose command the target refuses is parked; catching up says so instead of
/// passing silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_caught_up_reports_a_parked_saga_step() {
    let runtime = Eventuate::new(InMemoryEventStore::new())
        .options(fast())
        .subscriber(Overdraw)
        .start()
        .unwrap();
    let repo = runtime.repository();
    repo.create_with_id::<Account>("rich", Open { owner: "r".into() })
        .await
        .unwrap();
    let clean = runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    // The saga's step on `rich` is parked too (it overdraws every account); the outcome says
    // how many, per subscriber.
    assert_eq!(clean.parked, vec![("overdraw".to_owned(), 1)]);
    repo.create_with_id::<Account>("poor", Open { owner: "p".into() })
        .await
        .unwrap();
    let outcome = runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome.parked, vec![("overdraw".to_owned(), 2)]);
    let err = outcome.nothing_parked().unwrap_err();
    assert!(
        matches!(&err, Error::Parked { subscriber, count: 2 } if subscriber == "overdraw"),
        "{err:?}"
    );
    assert!(err.to_string().contains("Running::replay"), "{err}");
    runtime.shutdown().await.unwrap();
}

/// Each retry of a failing handler sees its attempt number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_its_attempt_number() {
    #[derive(Clone, Default)]
    struct Counting {
        seen: Arc<Mutex<Vec<(u64, u32)>>>,
    }
    impl Subscriber for Counting {
        fn subscription(&self) -> Subscription {
            Subscription::new("counting", ["Account"])
                .event_types(["Deposited"])
                .retry(quick_retries(5))
        }
        async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
            let amount = ctx.event().decode::<Deposited>().unwrap().amount;
            self.seen.lock().unwrap().push((amount, ctx.attempt()));
            if amount == 13 && ctx.attempt() < 3 {
                return Err(HandlerError::msg("not yet"));
            }
            Ok(())
        }
    }
    let counting = Counting::default();
    let runtime = Eventuate::new(InMemoryEventStore::new())
        .options(fast())
        .subscriber(counting.clone())
        .start()
        .unwrap();
    let repo = runtime.repository();
    deposit(&repo, "a", 13).await;
    deposit(&repo, "a", 1).await;
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap()
        .nothing_parked()
        .unwrap();
    assert_eq!(
        *counting.seen.lock().unwrap(),
        vec![(13, 1), (13, 2), (13, 3), (1, 1)]
    );
    runtime.shutdown().await.unwrap();
}

/// `subscribe = "Ordr"` (a typo) must not pass silently: the unknown type is a warning in
/// `status()` and `entity_type_warnings()`, known types are the stored ones and the declared
/// ones, and strict mode makes it an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_an_unknown_entity_type_is_reported() {
    struct Typo;
    impl Subscriber for Typo {
        fn subscription(&self) -> Subscription {
            Subscription::new("typo", ["Acount"])
        }
        async fn handle(&self, _: &EventContext) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    let store = InMemoryEventStore::new();
    deposit(&Repository::new(store.clone()), "a", 1).await;
    let runtime = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(Typo)
        .start()
        .unwrap();
    let warnings = runtime.entity_type_warnings().await.unwrap();
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        (warnings[0].entity_type.as_str(), warnings[0].known.clone()),
        ("Acount", vec!["Account".to_owned()])
    );
    assert!(warnings[0].to_string().contains("known: [Account]"));
    let status = runtime.status().await.unwrap();
    assert_eq!(status[0].unknown_entity_types, vec!["Acount".to_owned()]);
    runtime.shutdown().await.unwrap();

    // Strict: an error, from status() and wait_caught_up().
    let strict = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(Typo)
        .strict_entity_types()
        .start()
        .unwrap();
    let err = strict
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("`Acount`"), "{err}");
    strict.shutdown().await.unwrap();

    // A type declared by a registered aggregate, or by name, is known before it has events.
    let fresh = InMemoryEventStore::new();
    let declared = Eventuate::new(fresh.clone())
        .options(fast())
        .subscriber(Recorder::new("recorder"))
        .aggregate::<Account>()
        .strict_entity_types()
        .start()
        .unwrap();
    declared
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(declared.entity_type_warnings().await.unwrap().is_empty());
    declared.shutdown().await.unwrap();
    let named = Eventuate::new(fresh)
        .options(fast())
        .subscriber(Typo)
        .known_entity_type("Acount")
        .strict_entity_types()
        .start()
        .unwrap();
    assert!(named.status().await.is_ok());
    named.shutdown().await.unwrap();
}

/// A node that gave a partition to another shows it with its new owner and the stored
/// checkpoint, not its own last position, and a lag counted from that checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_partition_given_away_shows_the_new_owner_and_stored_checkpoint() {
    use eventuate_core::runtime::SubscriptionStore;
    let store = InMemoryEventStore::new();
    let log: Log = Arc::default();
    let make = || Recorder {
        log: log.clone(),
        ..Recorder::new("given")
    };
    let a = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(make(), |s| s.partitions(2))
        .start()
        .unwrap();
    let repo = a.repository();
    for i in 0..8 {
        deposit(&repo, &format!("e{i}"), 1).await;
    }
    a.wait_caught_up(Duration::from_secs(5)).await.unwrap();
    assert!(a.status().await.unwrap().iter().all(|p| p.owned));
    let b = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(make(), |s| s.partitions(2))
        .start()
        .unwrap();
    let mut given = None;
    for _ in 0..500 {
        let status = a.status().await.unwrap();
        if let Some(p) = status.iter().find(|p| p.owner == Some(b.node_id())) {
            given = Some(p.partition);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let given = given.expect("a gave a partition to b");
    let before = a.status().await.unwrap()[given as usize].position;
    // New events in the given partition, handled by b.
    for i in 0..8 {
        deposit(&repo, &format!("e{i}"), 2).await;
    }
    b.wait_caught_up(Duration::from_secs(5)).await.unwrap();
    a.wait_caught_up(Duration::from_secs(5)).await.unwrap();
    let state = store.subscriber("given").await.unwrap();
    let stored = state
        .partitions
        .iter()
        .find(|p| p.partition == given)
        .unwrap()
        .checkpoint;
    let status = a.status().await.unwrap();
    let p = &status[given as usize];
    assert!(!p.owned);
    assert_eq!(p.owner, Some(b.node_id()));
    assert_eq!(
        p.position, stored,
        "the stored checkpoint, not a's last own position"
    );
    assert!(p.position > before, "b's progress shows on a");
    let filter = eventuate_core::StreamFilter {
        entity_types: vec!["Account".into()],
        partition: Some(eventuate_core::Partition {
            index: given,
            count: 2,
        }),
    };
    assert_eq!(
        p.lag,
        store
            .count_after(stored, &filter, eventuate_core::runtime::LAG_COUNT_LIMIT)
            .await
            .unwrap()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Publishes runs of events at once (as a relay does), failing once on one event and for
/// good on another.
#[derive(Clone, Default)]
struct Batcher {
    runs: Arc<Mutex<Vec<usize>>>,
    log: Log,
    failed_once: Arc<AtomicBool>,
}

impl Subscriber for Batcher {
    fn subscription(&self) -> Subscription {
        // Every event type, so that runs span the accounts' Opened events too and the event
        // that fails for good has later events of its entity in the same run.
        Subscription::new("batcher", ["Account"]).batch(16)
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        self.handle_one(ctx)
    }

    async fn handle_batch(&self, contexts: &[EventContext]) -> eventuate_core::BatchOutcome {
        self.runs.lock().unwrap().push(contexts.len());
        for (handled, ctx) in contexts.iter().enumerate() {
            if let Err(error) = self.handle_one(ctx) {
                return eventuate_core::BatchOutcome {
                    handled,
                    error: Some(error),
                };
            }
        }
        eventuate_core::BatchOutcome {
            handled: contexts.len(),
            error: None,
        }
    }
}

impl Batcher {
    fn handle_one(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        if ctx.event().event_type != "Deposited" {
            return Ok(());
        }
        let d: Deposited = ctx.event().decode()?;
        if d.amount == 7 && !self.failed_once.swap(true, Ordering::SeqCst) {
            return Err(HandlerError::msg("the broker is busy"));
        }
        if d.amount == 10 {
            return Err(HandlerError::permanent("message too large"));
        }
        self.log.lock().unwrap().push(ctx.event().clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_subscriber_gets_runs_and_its_failures_are_retried_or_parked_alone() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    for amount in 1..=40 {
        deposit(&repo, &format!("acc-{}", amount % 3), amount).await;
    }
    let batcher = Batcher::default();
    let runtime = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(batcher.clone(), |s| s.retry(quick_retries(3)))
        .start()
        .unwrap();
    // 10 fails for good and the 10 later deposits of its account (13 in the same run) wait
    // behind it: 29 delivered.
    eventually("every other deposit delivered", || {
        batcher.log.lock().unwrap().len() >= 29
    })
    .await;
    runtime
        .wait_caught_up(Duration::from_secs(5))
        .await
        .unwrap();
    let runs = batcher.runs.lock().unwrap().clone();
    assert!(
        runs.iter().any(|n| *n > 1),
        "events are handed over in runs: {runs:?}"
    );
    let parked = runtime.parked("batcher").await.unwrap();
    let parked_amounts: Vec<u64> = parked
        .iter()
        .map(|p| p.event.decode::<Deposited>().unwrap().amount)
        .collect();
    // 10 failed for good; the later deposits of its account wait behind it.
    assert_eq!(
        parked_amounts,
        vec![10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40]
    );
    assert_eq!(parked[0].attempts, 1, "a permanent error is not retried");
    let delivered: Vec<u64> = batcher
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.decode::<Deposited>().unwrap().amount)
        .collect();
    let mut expected: Vec<u64> = (1..=40).filter(|a| !parked_amounts.contains(a)).collect();
    let mut sorted = delivered.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        sorted, expected,
        "everything else delivered once: 7 after its retry"
    );
    for account in 0..3 {
        let of: Vec<u64> = delivered
            .iter()
            .copied()
            .filter(|a| a % 3 == account)
            .collect();
        assert!(
            of.windows(2).all(|w| w[0] < w[1]),
            "in order per entity: {of:?}"
        );
    }
    runtime.shutdown().await.unwrap();
}

/// Fails as "unavailable" (a broker down) far more often than max_attempts, then succeeds.
#[derive(Clone, Default)]
struct Outage {
    calls: Arc<AtomicU32>,
    log: Log,
}

impl Subscriber for Outage {
    fn subscription(&self) -> Subscription {
        Subscription::new("outage", ["Account"]).event_types(["Deposited"])
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < 6 {
            return Err(HandlerError::unavailable("the broker is down"));
        }
        self.log.lock().unwrap().push(ctx.event().clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_dependency_is_retried_without_counting_attempts() {
    let store = InMemoryEventStore::new();
    let outage = Outage::default();
    let runtime = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(outage.clone(), |s| s.retry(quick_retries(2)))
        .start()
        .unwrap();
    deposit(&runtime.repository(), "a", 5).await;
    eventually("delivered once the dependency is back", || {
        outage.log.lock().unwrap().len() == 1
    })
    .await;
    assert!(
        runtime.parked("outage").await.unwrap().is_empty(),
        "six outages with max_attempts 2 parked nothing"
    );
    let status = runtime.status().await.unwrap();
    assert_eq!(
        status[0].retried, 6,
        "each outage retry is counted as a retry"
    );
    runtime.shutdown().await.unwrap();
}

/// Role-split deployment: runtime A runs the 4-partition `orders-side` subscriber and a shared
/// one; runtime B runs only the shared one. Fair shares count, per subscriber, only the members
/// that run it, so A takes all 4 partitions of `orders-side` (counting B, it took 2 and the
/// other 2 were never consumed). The liveness backstop alone would also get them consumed
/// (see the next test); with neither, this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_run_by_one_role_gets_all_its_partitions_consumed() {
    let store = InMemoryEventStore::new();
    let shared_b = Recorder::new("shared");
    let b = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(shared_b.clone())
        .start()
        .unwrap();
    // B is a live member before A starts.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let orders = Recorder::new("orders-side");
    let a = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(orders.clone(), |s| s.partitions(4))
        .subscriber(Recorder::new("shared"))
        .start()
        .unwrap();
    for i in 0..20 {
        deposit(&a.repository(), &format!("acc-{i}"), 1 + i).await;
    }
    eventually("every deposit reaches the subscriber only A runs", || {
        orders.amounts().len() == 20
    })
    .await;
    let status = a.status().await.unwrap();
    let owned = status
        .iter()
        .filter(|s| s.subscriber_id == "orders-side" && s.owned)
        .count();
    assert_eq!(owned, 4, "A consumes every partition: {status:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The liveness backstop: a member that claims to run a subscriber but never takes its share
/// (here a heartbeat written by hand, as a wedged process would leave) halves the others'
/// fair share, and the partitions nobody holds for longer than the lease TTL are taken anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_nobody_holds_are_taken_above_the_fair_share() {
    use eventuate_core::runtime::{Member, SubscriptionStore};
    let store = InMemoryEventStore::new();
    let zombie = Member {
        incarnation: uuid::Uuid::new_v4(),
        node: uuid::Uuid::new_v4(),
        subscribers: vec!["orders-side".into()],
    };
    let keep_alive = {
        let store = store.clone();
        let zombie = zombie.clone();
        tokio::spawn(async move {
            loop {
                store
                    .heartbeat(&zombie, Duration::from_secs(60))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let orders = Recorder::new("orders-side");
    let a = Eventuate::new(store.clone())
        .options(fast())
        .subscriber_with(orders.clone(), |s| s.partitions(4))
        .start()
        .unwrap();
    for i in 0..20 {
        deposit(&a.repository(), &format!("acc-{i}"), 1 + i).await;
    }
    eventually(
        "every deposit delivered despite the member that takes nothing",
        || orders.amounts().len() == 20,
    )
    .await;
    let owned = a.status().await.unwrap().iter().filter(|s| s.owned).count();
    assert_eq!(owned, 4, "above its fair share of 2");
    keep_alive.abort();
    a.shutdown().await.unwrap();
}

/// The in-memory event store, recording the limit of every batch read; optionally appending
/// `landing.1` right after the `landing.0`-th read (counted from 1) has read: an append that
/// lands after a read's snapshot, before the consumer looks at what it read.
struct Paging {
    inner: InMemoryEventStore,
    limits: Arc<Mutex<Vec<usize>>>,
    landing: Mutex<Option<(usize, eventuate_core::AppendRequest)>>,
}

mod paging {
    use super::Paging;
    use eventuate_core::{
        AppendOutcome, AppendRequest, CommandFingerprint, EventEnvelope, EventStore,
        IdempotencyKey, Position, Snapshot, StreamBatch, StreamFilter,
    };
    use futures_util::future::BoxFuture;

    type R<T> = eventuate_core::Result<T>;

    impl EventStore for Paging {
        fn append(&self, request: AppendRequest) -> BoxFuture<'_, R<AppendOutcome>> {
            self.inner.append(request)
        }
        fn load<'a>(
            &'a self,
            t: &'a str,
            id: &'a str,
            after: u64,
        ) -> BoxFuture<'a, R<Vec<EventEnvelope>>> {
            self.inner.load(t, id, after)
        }
        fn read_stream<'a>(
            &'a self,
            after: Position,
            filter: &'a StreamFilter,
            limit: usize,
        ) -> BoxFuture<'a, R<Vec<EventEnvelope>>> {
            self.inner.read_stream(after, filter, limit)
        }
        fn read_batch<'a>(
            &'a self,
            after: Position,
            filter: &'a StreamFilter,
            limit: usize,
        ) -> BoxFuture<'a, R<StreamBatch>> {
            let read = {
                let mut limits = self.limits.lock().unwrap();
                limits.push(limit);
                limits.len()
            };
            let landing = {
                let mut landing = self.landing.lock().unwrap();
                match landing.as_ref() {
                    Some((at, _)) if *at == read => landing.take().map(|(_, request)| request),
                    _ => None,
                }
            };
            Box::pin(async move {
                let batch = self.inner.read_batch(after, filter, limit).await?;
                if let Some(request) = landing {
                    self.inner.append(request).await?;
                }
                Ok(batch)
            })
        }
        fn head(&self) -> BoxFuture<'_, R<Position>> {
            self.inner.head()
        }
        fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, R<()>> {
            self.inner.save_snapshot(snapshot)
        }
        fn load_snapshot<'a>(
            &'a self,
            t: &'a str,
            id: &'a str,
            version: u32,
        ) -> BoxFuture<'a, R<Option<Snapshot>>> {
            self.inner.load_snapshot(t, id, version)
        }
        fn recorded_command<'a>(
            &'a self,
            key: &'a IdempotencyKey,
        ) -> BoxFuture<'a, R<Option<Option<CommandFingerprint>>>> {
            self.inner.recorded_command(key)
        }
    }
}

/// Far behind, a consumer reads larger batches (4, 16, 64), and back at the head it reads
/// `batch_size` again. Whether a batch reached the head is judged by the limit it was read
/// with: judged by a larger one, a full batch would look short and the consumer would wait
/// for the poll interval (a minute here, with no wake-up to come for the events stored before
/// the start) instead of reading on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_grow_while_far_behind_and_shrink_at_the_head() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    for amount in 1..=200 {
        deposit(&repo, "a", amount).await;
    }
    let limits = Arc::new(Mutex::new(Vec::new()));
    let paging = Paging {
        inner: store.clone(),
        limits: limits.clone(),
        landing: Mutex::new(None),
    };
    let recorder = Recorder::new("paging");
    let runtime = Eventuate::from_parts(Arc::new(paging), Arc::new(store.clone()))
        .options(RuntimeOptions {
            batch_size: 4,
            max_batch_size: 64,
            poll_interval: Duration::from_secs(60),
            ..fast()
        })
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    eventually("the catch-up delivered", || recorder.amounts().len() == 200).await;
    let expected: Vec<(String, u64)> = (1..=200).map(|a| ("a".to_owned(), a)).collect();
    assert_eq!(recorder.amounts(), expected, "every deposit once, in order");
    let catch_up = limits.lock().unwrap().clone();
    assert_eq!(
        &catch_up[..3],
        &[4, 16, 64],
        "reads grow while full: {catch_up:?}"
    );
    assert!(catch_up.iter().all(|l| *l <= 64), "{catch_up:?}");
    // A new event wakes the consumer, which is at the head: a `batch_size` read.
    deposit(&repo, "a", 201).await;
    eventually("the new deposit delivered", || {
        recorder.amounts().len() == 201
    })
    .await;
    let after_head = limits.lock().unwrap()[catch_up.len()..].to_vec();
    assert_eq!(after_head.first(), Some(&4), "{after_head:?}");
    runtime.shutdown().await.unwrap();
}

/// An append that lands while the next batch is being read (after the read's snapshot, while
/// the consumer still delivers the batch before it) wakes the consumer: the wake-up is marked
/// seen when a read starts, not when the consumer takes its result. Marked at the loop's
/// next turn, it was swallowed, and the consumer, whose prefetched batch had reached the
/// head, waited for the poll interval (a minute here) before delivering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_landing_during_a_prefetched_read_is_not_left_for_the_poll() {
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    // Opened, then deposits 1..=8: reads of 4 are [Opened, 1, 2, 3], [4, 5, 6, 7], [8]; the
    // second and third are read ahead, each while the batch before it is delivered.
    for amount in 1..=8 {
        deposit(&repo, "a", amount).await;
    }
    let deposit_9 = eventuate_core::AppendRequest {
        entity_type: "Account".into(),
        entity_id: "a".into(),
        expected: eventuate_core::ExpectedVersion::Exactly(9),
        events: vec![eventuate_core::NewEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: "Deposited".into(),
            payload: serde_json::to_string(&Deposited { amount: 9 }).unwrap(),
            metadata: Default::default(),
        }],
        idempotency: None,
    };
    let paging = Paging {
        inner: store.clone(),
        limits: Arc::new(Mutex::new(Vec::new())),
        // Lands just after the third read, which finds [8] only.
        landing: Mutex::new(Some((3, deposit_9))),
    };
    // Slow on 7: the third read (started when the second was taken) is done, and the deposit
    // has landed, long before the consumer turns to it.
    let recorder = Recorder {
        slow_amount: Some(7),
        ..Recorder::new("landing")
    };
    let runtime = Eventuate::from_parts(Arc::new(paging), Arc::new(store.clone()))
        .options(RuntimeOptions {
            batch_size: 4,
            max_batch_size: 4,
            poll_interval: Duration::from_secs(60),
            ..fast()
        })
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    eventually("the deposit that landed during a read delivered", || {
        recorder.amounts().len() == 9
    })
    .await;
    let expected: Vec<(String, u64)> = (1..=9).map(|a| ("a".to_owned(), a)).collect();
    assert_eq!(recorder.amounts(), expected, "every deposit once, in order");
    runtime.shutdown().await.unwrap();
}

/// The in-memory store's `renew_all` (the trait's default: one renewal per lease).
#[tokio::test]
async fn several_leases_are_renewed_per_lease_in_memory() {
    eventuate_core::testing::renewing_several_leases(&InMemoryEventStore::new()).await;
}

/// Records the name and level of every span created on this thread.
#[derive(Clone, Default)]
struct SpanLevels {
    seen: Arc<Mutex<Vec<(&'static str, tracing::Level)>>>,
}

impl tracing::Subscriber for SpanLevels {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut seen = self.seen.lock().unwrap();
        seen.push((span.metadata().name(), *span.metadata().level()));
        tracing::span::Id::from_u64(seen.len() as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Every delivery runs in a `deliver` span at DEBUG, as the README says (at INFO, one span
/// per event was what a catch-up paid most for in an application that logs).
#[tokio::test(flavor = "current_thread")]
async fn every_delivery_runs_in_a_debug_span() {
    let spans = SpanLevels::default();
    // The runtime's tasks run on this test's one thread, where the subscriber is the default.
    let _guard = tracing::subscriber::set_default(spans.clone());
    let store = InMemoryEventStore::new();
    let repo = Repository::new(store.clone());
    deposit(&repo, "a", 1).await;
    let recorder = Recorder::new("spans");
    let runtime = Eventuate::new(store.clone())
        .options(fast())
        .subscriber(recorder.clone())
        .start()
        .unwrap();
    eventually("the deposit delivered", || recorder.amounts().len() == 1).await;
    runtime.shutdown().await.unwrap();
    let deliveries: Vec<tracing::Level> = spans
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name == "deliver")
        .map(|(_, level)| *level)
        .collect();
    assert_eq!(
        deliveries,
        [tracing::Level::DEBUG, tracing::Level::DEBUG],
        "one span per delivery (Opened, Deposited), at DEBUG"
    );
}

/// Counts the events it is handed, taking 0.3 ms each, and hangs on the `hang_at`-th.
struct Pacer {
    calls: Arc<AtomicU32>,
    hang_at: u32,
}

impl Subscriber for Pacer {
    fn subscription(&self) -> Subscription {
        Subscription::new("pacer", ["Ledger"])
    }

    async fn handle(&self, _ctx: &EventContext) -> Result<(), HandlerError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.hang_at {
            std::future::pending::<()>().await;
        }
        std::thread::sleep(Duration::from_micros(300));
        Ok(())
    }
}

/// A consumer far behind reads batches of thousands of events; it saves its checkpoint
/// within a batch once a poll interval, so a crash in the middle of one re-delivers about a
/// poll interval's worth (QA: a `kill -9` re-delivered almost three poll intervals, the
/// checkpoint having been saved only between batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_batch_saves_its_checkpoint_as_it_goes() {
    use eventuate_core::runtime::SubscriptionStore;
    use eventuate_core::store::{AppendRequest, ExpectedVersion, StreamFilter};
    let store = InMemoryEventStore::new();
    for chunk in 0..3 {
        store
            .append(AppendRequest {
                entity_type: "Ledger".into(),
                entity_id: format!("l-{chunk}"),
                expected: ExpectedVersion::New,
                events: (0..1000)
                    .map(|_| eventuate_core::NewEvent::new("Entry", "{}"))
                    .collect(),
                idempotency: None,
            })
            .await
            .unwrap();
    }
    let calls = Arc::new(AtomicU32::new(0));
    let hang_at = 2500;
    let runtime = Eventuate::new(store.clone())
        .options(RuntimeOptions {
            lease_ttl: Duration::from_secs(5),
            ..fast()
        })
        .subscriber(Pacer {
            calls: calls.clone(),
            hang_at,
        })
        .start()
        .unwrap();
    eventually("the handler reaches the event it hangs on", || {
        calls.load(Ordering::SeqCst) >= hang_at
    })
    .await;
    // Batches of 16, 64, 256, 1,024, then one of every remaining event (1,360 to 3,000):
    // saved only between batches, the checkpoint would stay at the 1,360th event.
    let state = SubscriptionStore::subscriber(&store, "pacer")
        .await
        .unwrap();
    let checkpoint = state.partitions[0].checkpoint;
    let stream = store
        .read_stream(
            eventuate_core::Position::START,
            &StreamFilter::default(),
            10_000,
        )
        .await
        .unwrap();
    let saved = stream
        .iter()
        .take_while(|e| e.position <= checkpoint)
        .count();
    assert!(
        saved >= 2300 && saved < hang_at as usize,
        "the checkpoint covers {saved} events while the handler hangs on the {hang_at}th"
    );
    drop(runtime);
}
