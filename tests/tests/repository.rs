//! Every path of the aggregate repository: create, update, load, snapshots, conflict retries,
//! and each error it can return.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion, StreamFilter};
use eventuate_core::{
    CommandOptions, Error, EventEnvelope, EventStore, InMemoryEventStore, NewEvent, Position,
    Repository, RepositoryOptions, Snapshot,
};
use futures_util::future::BoxFuture;

fn repo() -> (InMemoryEventStore, Repository) {
    let store = InMemoryEventStore::new();
    (store.clone(), Repository::new(store))
}

#[tokio::test]
async fn create_update_load() {
    let (_, repo) = repo();
    let created = repo
        .create::<Account>(Open {
            owner: "ann".into(),
        })
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.state.owner, "ann");
    assert_eq!(created.event_ids.len(), 1);
    let id = created.entity_id.clone();
    let updated = repo
        .update::<Account>(&id, Deposit { amount: 30 })
        .await
        .unwrap();
    assert_eq!(
        (updated.version, updated.state.balance, updated.duplicate),
        (2, 30, false)
    );
    assert_eq!(
        updated.events,
        vec![AccountEvent::Deposited(Deposited { amount: 30 })]
    );
    let loaded = repo.load::<Account>(&id).await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (2, 30));
}

#[tokio::test]
async fn business_errors_come_back_typed() {
    let (store, repo) = repo();
    let id = repo
        .create::<Account>(Open { owner: "a".into() })
        .await
        .unwrap()
        .entity_id;
    let err = repo
        .update::<Account>(&id, Withdraw { amount: 5 })
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection::<AccountError>(),
        Some(&AccountError::InsufficientFunds {
            balance: 0,
            requested: 5
        })
    );
    assert!(
        err.to_string().contains("rejected command Withdraw"),
        "{err}"
    );
    assert_eq!(store.len(), 1, "a rejected command writes nothing");
}

#[tokio::test]
async fn missing_and_existing_entities() {
    let (_, repo) = repo();
    let err = repo
        .update::<Account>("nobody", Deposit { amount: 1 })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EntityNotFound { .. }), "{err:?}");
    assert!(matches!(
        repo.load::<Account>("nobody").await,
        Err(Error::EntityNotFound { .. })
    ));
    assert!(repo.find::<Account>("nobody").await.unwrap().is_none());
    repo.create_with_id::<Account>("acc-1", Open { owner: "a".into() })
        .await
        .unwrap();
    let err = repo
        .create_with_id::<Account>("acc-1", Open { owner: "b".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::EntityExists { version: 1, .. }),
        "{err:?}"
    );
    let err = repo
        .create_with_id::<Account>("", Open { owner: "b".into() })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
}

#[tokio::test]
async fn a_create_that_decides_nothing_is_refused_and_an_update_that_decides_nothing_writes_nothing()
 {
    struct Nothing;
    impl eventuate_core::HandleCommand<Nothing> for Account {
        type Error = AccountError;
        fn handle(&self, _: &Nothing) -> Result<Vec<AccountEvent>, AccountError> {
            Ok(vec![])
        }
    }
    let (store, repo) = repo();
    let err = repo.create::<Account>(Nothing).await.unwrap_err();
    assert!(matches!(err, Error::EmptyAppend { .. }), "{err:?}");
    let id = repo
        .create::<Account>(Open { owner: "a".into() })
        .await
        .unwrap()
        .entity_id;
    let outcome = repo.update::<Account>(&id, Nothing).await.unwrap();
    assert_eq!(outcome.version, 1);
    assert!(outcome.events.is_empty());
    assert_eq!(store.len(), 1);
}

/// The in-memory store, instrumented: counts appends and loads, and reports a conflict on
/// the first `conflicts` appends, to drive the retry loop.
#[derive(Default)]
struct Instrumented {
    inner: InMemoryEventStore,
    conflicts: AtomicUsize,
    appends: AtomicUsize,
    loads: AtomicUsize,
}

impl Instrumented {
    fn over(inner: InMemoryEventStore) -> Self {
        Instrumented {
            inner,
            ..Instrumented::default()
        }
    }
}

impl EventStore for Instrumented {
    fn append(
        &self,
        request: AppendRequest,
    ) -> BoxFuture<'_, eventuate_core::Result<AppendOutcome>> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self
            .conflicts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let expected = match request.expected {
                ExpectedVersion::Exactly(v) => v,
                ExpectedVersion::New => 0,
            };
            return Box::pin(async move {
                Err(Error::Conflict {
                    entity_type: request.entity_type,
                    entity_id: request.entity_id,
                    expected,
                    actual: expected + 1,
                })
            });
        }
        self.inner.append(request)
    }
    fn load<'a>(
        &'a self,
        t: &'a str,
        id: &'a str,
        after: u64,
    ) -> BoxFuture<'a, eventuate_core::Result<Vec<EventEnvelope>>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(t, id, after)
    }
    fn read_stream<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, eventuate_core::Result<Vec<EventEnvelope>>> {
        self.inner.read_stream(after, filter, limit)
    }
    fn head(&self) -> BoxFuture<'_, eventuate_core::Result<Position>> {
        self.inner.head()
    }
    fn save_snapshot(&self, s: Snapshot) -> BoxFuture<'_, eventuate_core::Result<()>> {
        self.inner.save_snapshot(s)
    }
    fn load_snapshot<'a>(
        &'a self,
        t: &'a str,
        id: &'a str,
        v: u32,
    ) -> BoxFuture<'a, eventuate_core::Result<Option<Snapshot>>> {
        self.inner.load_snapshot(t, id, v)
    }
    fn recorded_command<'a>(
        &'a self,
        key: &'a eventuate_core::IdempotencyKey,
    ) -> BoxFuture<'a, eventuate_core::Result<Option<Option<eventuate_core::CommandFingerprint>>>>
    {
        self.inner.recorded_command(key)
    }
}

#[tokio::test]
async fn conflicts_are_retried_then_given_up() {
    let inner = InMemoryEventStore::new();
    Repository::new(inner.clone())
        .create_with_id::<Account>("a", Open { owner: "x".into() })
        .await
        .unwrap();
    let store = Arc::new(Instrumented::over(inner));
    store.conflicts.store(2, Ordering::SeqCst);
    let repo = Repository::from_arc(store.clone()).with_options(RepositoryOptions {
        max_attempts: 3,
        ..RepositoryOptions::default()
    });
    let ok = repo
        .update::<Account>("a", Deposit { amount: 7 })
        .await
        .unwrap();
    assert_eq!((ok.version, ok.state.balance), (2, 7));
    assert_eq!(
        store.appends.load(Ordering::SeqCst),
        3,
        "two conflicts, then success"
    );

    store.conflicts.store(100, Ordering::SeqCst);
    let err = repo
        .update::<Account>("a", Deposit { amount: 7 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(repo.load::<Account>("a").await.unwrap().version, 2);
}

#[tokio::test]
async fn real_concurrent_updates_all_land_through_retries() {
    let (_, repo) = repo();
    repo.create_with_id::<Account>("hot", Open { owner: "x".into() })
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.update::<Account>("hot", Deposit { amount: 1 }).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let loaded = repo.load::<Account>("hot").await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (21, 20));
}

#[tokio::test]
async fn snapshots_are_taken_by_policy_and_used_on_load() {
    let (store, repo) = repo();
    repo.create_with_id::<Account>("s", Open { owner: "x".into() })
        .await
        .unwrap();
    for _ in 0..11 {
        repo.update::<Account>("s", Deposit { amount: 2 })
            .await
            .unwrap();
    }
    let snapshot = store
        .load_snapshot("Account", "s", 1)
        .await
        .unwrap()
        .expect("a snapshot every 5 events");
    assert_eq!(snapshot.entity_version, 10);
    // Make the snapshot disagree with the events: a load that uses it shows the difference.
    let mut doctored: Account = serde_json::from_str(&snapshot.payload).unwrap();
    assert_eq!(
        doctored.balance, 18,
        "the snapshot holds the state at version 10"
    );
    doctored.owner = "from-snapshot".into();
    store
        .save_snapshot(Snapshot {
            entity_version: 11,
            payload: serde_json::to_string(&doctored).unwrap(),
            ..snapshot.clone()
        })
        .await
        .unwrap();
    let loaded = repo.load::<Account>("s").await.unwrap();
    assert_eq!(loaded.state.owner, "from-snapshot");
    assert_eq!(loaded.version, 12);
    assert_eq!(
        loaded.state.balance,
        doctored.balance + 2,
        "only the event after the snapshot was applied"
    );
}

#[tokio::test]
async fn an_undecodable_snapshot_falls_back_to_a_full_replay() {
    let (store, repo) = repo();
    repo.create_with_id::<Account>("s", Open { owner: "x".into() })
        .await
        .unwrap();
    store
        .save_snapshot(Snapshot {
            entity_type: "Account".into(),
            entity_id: "s".into(),
            entity_version: 1,
            snapshot_version: 1,
            payload: "{\"unexpected\":true}".into(),
        })
        .await
        .unwrap();
    let loaded = repo.load::<Account>("s").await.unwrap();
    assert_eq!((loaded.version, loaded.state.owner.as_str()), (1, "x"));
}

async fn store_with(event_type: &str, payload: &str) -> Repository {
    let store = InMemoryEventStore::new();
    store
        .append(AppendRequest {
            entity_type: "Account".into(),
            entity_id: "bad".into(),
            expected: ExpectedVersion::New,
            events: vec![NewEvent::new(event_type, payload)],
            idempotency: None,
        })
        .await
        .unwrap();
    Repository::new(store)
}

#[tokio::test]
async fn unknown_event_types_and_undecodable_payloads_are_typed_errors() {
    let repo = store_with("Frozen", "{}").await;
    let err = repo.load::<Account>("bad").await.unwrap_err();
    match &err {
        Error::UnknownEventType {
            entity_type,
            entity_id,
            version,
            event_type,
        } => assert_eq!(
            (
                entity_type.as_str(),
                entity_id.as_str(),
                *version,
                event_type.as_str()
            ),
            ("Account", "bad", 1, "Frozen")
        ),
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
    let repo = store_with("Opened", "{\"owner\": 42}").await;
    let err = repo.load::<Account>("bad").await.unwrap_err();
    assert!(
        matches!(&err, Error::Decode { version: 1, event_type, .. } if event_type == "Opened"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("Account `bad` at version 1"),
        "{err}"
    );
    // The same error surfaces from a command, without writing anything.
    let err = repo
        .update::<Account>("bad", Deposit { amount: 1 })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
}

#[tokio::test]
async fn cause_tracing_metadata_is_recorded() {
    let (store, repo) = repo();
    let command_id = uuid::Uuid::new_v4();
    let created = repo
        .create_with::<Account>(
            Some("t".into()),
            Open { owner: "x".into() },
            CommandOptions::with_command_id(command_id).header("request", "r-1"),
        )
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    let events = store.load("Account", "t", 0).await.unwrap();
    let m = &events[0].metadata;
    assert_eq!(m.command_id, Some(command_id));
    assert_eq!(
        m.correlation_id,
        Some(command_id),
        "an external command starts a chain"
    );
    assert_eq!(m.causation_id, None);
    assert_eq!(m.command_type.as_deref(), Some("Open"));
    assert_eq!(m.headers.get("request").map(String::as_str), Some("r-1"));
}

fn cached(store: Arc<dyn EventStore>) -> Repository {
    Repository::from_arc(store).with_options(RepositoryOptions {
        cache_capacity: 100,
        ..RepositoryOptions::default()
    })
}

#[tokio::test]
async fn the_cache_saves_loads_and_a_stale_entry_only_costs_a_retry() {
    let inner = InMemoryEventStore::new();
    let store = Arc::new(Instrumented::over(inner.clone()));
    let repo = cached(store.clone());
    repo.create_with_id::<Account>("a", Open { owner: "x".into() })
        .await
        .unwrap();
    for _ in 0..5 {
        repo.update::<Account>("a", Deposit { amount: 1 })
            .await
            .unwrap();
    }
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        0,
        "every update started from the cached state"
    );
    // A rejected command is confirmed against the store (one read of the events after the
    // cached version, none here) and leaves the cached state usable.
    repo.update::<Account>("a", Withdraw { amount: 100 })
        .await
        .unwrap_err();
    assert_eq!(store.loads.load(Ordering::SeqCst), 1, "the confirmation");
    repo.update::<Account>("a", Deposit { amount: 1 })
        .await
        .unwrap();
    assert_eq!(store.loads.load(Ordering::SeqCst), 1);

    // Another process (another repository) appends: our cache is stale.
    Repository::new(inner.clone())
        .update::<Account>("a", Deposit { amount: 10 })
        .await
        .unwrap();
    let after = repo
        .update::<Account>("a", Deposit { amount: 1 })
        .await
        .unwrap();
    assert_eq!(
        (after.version, after.state.balance),
        (9, 17),
        "the stale entry conflicted and the command ran again on the real state"
    );
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        2,
        "one reload after the conflict"
    );
}

/// Withdraws the whole balance; nothing to do (no events) when it is zero.
struct WithdrawAll;

impl eventuate_core::HandleCommand<WithdrawAll> for Account {
    type Error = AccountError;
    fn handle(&self, _: &WithdrawAll) -> Result<Vec<AccountEvent>, AccountError> {
        Ok(match self.balance {
            0 => vec![],
            amount => vec![AccountEvent::Withdrawn(Withdrawn { amount })],
        })
    }
}

/// Two processes, each with its own cache, over one store: what one cached is stale once the
/// other appends. A rejection or a no-op decided on the stale state is confirmed against the
/// store, decided again on the stored state, and the fresh state is cached.
#[tokio::test]
async fn a_stale_cache_never_decides_a_rejection_or_a_no_op() {
    let inner = InMemoryEventStore::new();
    let ours_store = Arc::new(Instrumented::over(inner.clone()));
    let ours = cached(ours_store.clone());
    let theirs = cached(Arc::new(inner.clone()));
    ours.create_with_id::<Account>("a", Open { owner: "x".into() })
        .await
        .unwrap();

    // Theirs deposits 100; our cache still says balance 0.
    theirs
        .update::<Account>("a", Deposit { amount: 100 })
        .await
        .unwrap();
    let withdrawn = ours
        .update::<Account>("a", Withdraw { amount: 60 })
        .await
        .expect("the store holds 100: not `insufficient funds: balance 0`");
    assert_eq!((withdrawn.version, withdrawn.state.balance), (3, 40));
    let loads = ours_store.loads.load(Ordering::SeqCst);
    assert_eq!(loads, 1, "one read confirmed the rejection, and refuted it");

    // Theirs deposits 10: a rejection on our stale 40 must report the stored 50.
    theirs
        .update::<Account>("a", Deposit { amount: 10 })
        .await
        .unwrap();
    let err = ours
        .update::<Account>("a", Withdraw { amount: 1_000 })
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection::<AccountError>(),
        Some(&AccountError::InsufficientFunds {
            balance: 50,
            requested: 1_000
        }),
        "decided again on the stored state"
    );
    // The fresh state was cached: the happy path is back to one append, no read.
    let loads = ours_store.loads.load(Ordering::SeqCst);
    let appends = ours_store.appends.load(Ordering::SeqCst);
    let ok = ours
        .update::<Account>("a", Withdraw { amount: 50 })
        .await
        .unwrap();
    assert_eq!((ok.version, ok.state.balance), (5, 0));
    assert_eq!(ours_store.loads.load(Ordering::SeqCst), loads, "no read");
    assert_eq!(ours_store.appends.load(Ordering::SeqCst), appends + 1);

    // A no-op on stale state: ours caches balance 0, theirs deposits 30, WithdrawAll must
    // withdraw the 30 rather than decide that nothing needs to happen.
    theirs
        .update::<Account>("a", Deposit { amount: 30 })
        .await
        .unwrap();
    let all = ours.update::<Account>("a", WithdrawAll).await.unwrap();
    assert_eq!(
        (all.version, all.state.balance, all.events.len()),
        (7, 0, 1),
        "{all:?}"
    );
    // A confirmed no-op: nothing written, the state stays cached.
    let noop = ours.update::<Account>("a", WithdrawAll).await.unwrap();
    assert_eq!((noop.version, noop.events.len()), (7, 0));
    let loads = ours_store.loads.load(Ordering::SeqCst);
    ours.update::<Account>("a", Deposit { amount: 1 })
        .await
        .unwrap();
    assert_eq!(
        ours_store.loads.load(Ordering::SeqCst),
        loads,
        "a no-op leaves its state in the cache"
    );
    assert_eq!(inner.len(), 8);
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let store = Arc::new(Instrumented::default());
    let repo = Repository::from_arc(store.clone()).with_options(RepositoryOptions {
        cache_capacity: 2,
        ..RepositoryOptions::default()
    });
    for id in ["a", "b", "c"] {
        repo.create_with_id::<Account>(id, Open { owner: id.into() })
            .await
            .unwrap();
        repo.update::<Account>(id, Deposit { amount: 1 })
            .await
            .unwrap();
    }
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        0,
        "a create leaves its state in the cache"
    );
    repo.update::<Account>("a", Deposit { amount: 1 })
        .await
        .unwrap();
    assert_eq!(store.loads.load(Ordering::SeqCst), 1, "`a` was evicted");
    repo.update::<Account>("c", Deposit { amount: 1 })
        .await
        .unwrap();
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        1,
        "`c` was still cached"
    );
}

#[tokio::test]
async fn update_expecting_refuses_a_version_the_client_did_not_see() {
    let (store, repo) = repo();
    repo.create_with_id::<Account>("e", Open { owner: "x".into() })
        .await
        .unwrap();
    let ok = repo
        .update_expecting::<Account>("e", 1, Deposit { amount: 5 })
        .await
        .unwrap();
    assert_eq!((ok.version, ok.state.balance, ok.attempts), (2, 5, 1));
    // A client that read version 1 (If-Match: 1) loses to the deposit it did not see.
    let err = repo
        .update_expecting::<Account>("e", 1, Deposit { amount: 5 })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.len(), 2, "nothing written, and not retried");
    let err = repo
        .update_expecting::<Account>("missing", 1, Deposit { amount: 5 })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EntityNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn update_expecting_is_checked_against_the_store_not_the_cache() {
    let inner = InMemoryEventStore::new();
    let repo = cached(Arc::new(inner.clone()));
    repo.create_with_id::<Account>("c", Open { owner: "x".into() })
        .await
        .unwrap();
    // Another process appends: the cache still says version 1.
    Repository::new(inner)
        .update::<Account>("c", Deposit { amount: 1 })
        .await
        .unwrap();
    let err = repo
        .update_expecting::<Account>("c", 1, Deposit { amount: 5 })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 2, .. }), "{err:?}");
}

#[tokio::test]
async fn upsert_creates_a_missing_entity_and_updates_an_existing_one() {
    let (_, repo) = repo();
    let created = repo
        .upsert::<Account>("u", Deposit { amount: 5 })
        .await
        .unwrap();
    assert_eq!((created.version, created.state.balance), (1, 5));
    let updated = repo
        .upsert::<Account>("u", Deposit { amount: 7 })
        .await
        .unwrap();
    assert_eq!((updated.version, updated.state.balance), (2, 12));
    // The default state decides: a rejection on it creates nothing.
    let err = repo
        .upsert::<Account>("v", Withdraw { amount: 1 })
        .await
        .unwrap_err();
    assert!(err.rejection::<AccountError>().is_some(), "{err:?}");
    assert!(repo.find::<Account>("v").await.unwrap().is_none());
}

#[tokio::test]
async fn upsert_retries_when_a_concurrent_writer_creates_the_entity_first() {
    let inner = InMemoryEventStore::new();
    let store = Arc::new(Instrumented::over(inner.clone()));
    let repo = Repository::from_arc(store.clone());
    // The first append is made to lose (as if another writer had created the entity).
    store.conflicts.store(1, Ordering::SeqCst);
    let done = repo
        .upsert::<Account>("w", Deposit { amount: 3 })
        .await
        .unwrap();
    assert_eq!((done.version, done.attempts), (1, 2));
}

#[tokio::test]
async fn committed_says_how_many_attempts_the_command_took() {
    let inner = InMemoryEventStore::new();
    Repository::new(inner.clone())
        .create_with_id::<Account>("n", Open { owner: "x".into() })
        .await
        .unwrap();
    let store = Arc::new(Instrumented::over(inner));
    let repo = Repository::from_arc(store.clone());
    let first = repo
        .update::<Account>("n", Deposit { amount: 1 })
        .await
        .unwrap();
    assert_eq!(first.attempts, 1);
    store.conflicts.store(2, Ordering::SeqCst);
    let third = repo
        .update::<Account>("n", Deposit { amount: 1 })
        .await
        .unwrap();
    assert_eq!(third.attempts, 3, "two conflicts, then the append");
}
