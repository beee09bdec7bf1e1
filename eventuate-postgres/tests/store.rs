//! PostgreSQL-specific behaviour of `PostgresEventStore`: the ordering claims (a deterministic
//! interleaving and a randomized many-writer run), races decided by the database, schemas per
//! tenant, transactional appends, migrations and the wake-up channel. Each test gets a fresh
//! database of the shared throwaway server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventuate_core::{
    AppendOutcome, AppendRequest, Error, EventEnvelope, EventStore, ExpectedVersion,
    IdempotencyKey, NewEvent, Position, Snapshot, StreamFilter,
};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::test_database;
use rand::{Rng, SeedableRng};
use sqlx::Connection;
use uuid::Uuid;

async fn store() -> PostgresEventStore {
    let db = test_database().await;
    PostgresEventStore::builder()
        .migrate_on_connect(true)
        .max_connections(24)
        .connect(&db.url)
        .await
        .expect("connect")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("Happened", format!("{{\"n\":{n}}}"))
}

fn request(entity_type: &str, id: &str, expected: ExpectedVersion, n: usize) -> AppendRequest {
    AppendRequest {
        entity_type: entity_type.into(),
        entity_id: id.into(),
        expected,
        events: (0..n as u64).map(event).collect(),
        idempotency: None,
    }
}

fn expected_after(version: u64) -> ExpectedVersion {
    if version == 0 {
        ExpectedVersion::New
    } else {
        ExpectedVersion::Exactly(version)
    }
}

fn positions(outcome: AppendOutcome) -> Vec<Position> {
    match outcome {
        AppendOutcome::Appended { positions, .. } => positions,
        AppendOutcome::Duplicate => panic!("unexpected duplicate"),
    }
}

async fn read_after(store: &PostgresEventStore, after: Position) -> Vec<EventEnvelope> {
    store
        .read_stream(after, &StreamFilter::default(), 1000)
        .await
        .expect("read")
}

/// The BIGSERIAL race, forced: transaction A takes its positions first and commits last; B
/// commits in between. The reader must not move past A's hole while A is open, and must then
/// deliver A and B exactly once, in increasing positions.
#[tokio::test]
async fn late_committer_is_waited_for_not_skipped() {
    let store = store().await;
    let c = positions(
        store
            .append(request("Order", "c", ExpectedVersion::New, 1))
            .await
            .expect("c"),
    );
    let seen = read_after(&store, Position::START).await;
    assert_eq!(seen.len(), 1);
    let checkpoint = seen[0].position;
    assert_eq!(checkpoint, c[0]);

    let mut tx_a = store.pool().begin().await.expect("begin");
    let a = positions(
        store
            .append_in(&mut tx_a, request("Order", "a", ExpectedVersion::New, 2))
            .await
            .expect("a"),
    );
    let b = positions(
        store
            .append(request("Order", "b", ExpectedVersion::New, 1))
            .await
            .expect("b"),
    );
    // The race is real: a reader of `sequence > checkpoint` would see B now and skip A later.
    assert!(a[1].sequence < b[0].sequence);
    assert!(a[1] < b[0], "A's positions come first in stream order");

    assert!(
        read_after(&store, checkpoint).await.is_empty(),
        "B must wait behind A's open transaction"
    );
    assert_eq!(
        store.load("Order", "b", 0).await.expect("load").len(),
        1,
        "loading an entity is never delayed by the stream's horizon"
    );
    assert_eq!(store.head().await.expect("head"), checkpoint);
    assert_eq!(
        store
            .count_after(checkpoint, &StreamFilter::default(), u64::MAX)
            .await
            .expect("count"),
        0
    );

    tx_a.commit().await.expect("commit a");
    let seen = read_after(&store, checkpoint).await;
    let ids: Vec<(&str, u64)> = seen
        .iter()
        .map(|e| (e.entity_id.as_str(), e.entity_version))
        .collect();
    assert_eq!(ids, vec![("a", 1), ("a", 2), ("b", 1)]);
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    assert!(seen[0].position > checkpoint);
    assert_eq!(
        seen.iter().map(|e| e.position).collect::<Vec<_>>(),
        [a.clone(), b.clone()].concat()
    );
    assert!(read_after(&store, seen[2].position).await.is_empty());
    assert_eq!(store.head().await.expect("head"), b[0]);
}

/// A transaction holding an id in *another database* of the server cannot write this
/// database's events, so it must not hold the reader back (a plain snapshot-xmin horizon
/// would: its id is older than the append's).
#[tokio::test]
async fn transactions_in_other_databases_do_not_hold_the_reader_back() {
    let store = store().await;
    let other = test_database().await;
    let mut elsewhere = sqlx::PgConnection::connect(&other.url)
        .await
        .expect("connect to the other database");
    sqlx::query("BEGIN")
        .execute(&mut elsewhere)
        .await
        .expect("begin");
    let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut elsewhere)
        .await
        .expect("take a transaction id");
    let appended = positions(
        store
            .append(request("Order", "x", ExpectedVersion::New, 1))
            .await
            .expect("append"),
    );
    assert!(
        xid.parse::<u64>().expect("xid") < appended[0].transaction,
        "the other database's open transaction is older than the append"
    );
    let seen = read_after(&store, Position::START).await;
    assert_eq!(
        seen.iter().map(|e| e.position).collect::<Vec<_>>(),
        appended,
        "the event is readable while the other database's transaction is open"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut elsewhere)
        .await
        .expect("rollback");
}

/// A rolled-back transaction leaves no hole: the reader goes on past it.
#[tokio::test]
async fn rolled_back_transaction_releases_the_reader() {
    let store = store().await;
    let mut tx = store.pool().begin().await.expect("begin");
    store
        .append_in(&mut tx, request("Order", "a", ExpectedVersion::New, 1))
        .await
        .expect("a");
    store
        .append(request("Order", "b", ExpectedVersion::New, 1))
        .await
        .expect("b");
    assert!(read_after(&store, Position::START).await.is_empty());
    tx.rollback().await.expect("rollback");
    let seen = read_after(&store, Position::START).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].entity_id, "b");
    assert!(store.load("Order", "a", 0).await.expect("load").is_empty());
}

/// 16 writers x 500 events, each append in its own transaction that sleeps a random moment
/// before committing (so commit order differs from position order all the time), several
/// entities per writer; one reader follows the stream from its checkpoint meanwhile. Every
/// event is seen exactly once, each entity's versions arrive as 1, 2, 3, ..., none is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_one_reader_never_skips() {
    const WRITERS: u64 = 16;
    const EVENTS_PER_WRITER: u64 = 500;
    const ENTITIES_PER_WRITER: u64 = 4;
    let store = store().await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut checkpoint = Position::START;
            let mut seen_ids = HashSet::new();
            let mut versions: HashMap<String, u64> = HashMap::new();
            let mut wake = store.appended();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < deadline, "reader timed out");
                let finished = done.load(Ordering::Acquire);
                let batch = store
                    .read_stream(checkpoint, &StreamFilter::default(), 200)
                    .await
                    .expect("read");
                for e in &batch {
                    assert!(e.position > checkpoint, "position went backwards");
                    checkpoint = e.position;
                    assert!(seen_ids.insert(e.event_id), "event delivered twice");
                    let last = versions.entry(e.entity_id.clone()).or_insert(0);
                    assert_eq!(
                        e.entity_version,
                        *last + 1,
                        "{}: version skipped or out of order",
                        e.entity_id
                    );
                    *last = e.entity_version;
                }
                if batch.is_empty() {
                    if finished {
                        return (seen_ids.len() as u64, versions);
                    }
                    // The wake-up is a hint; the timeout is the fallback poll.
                    let _ = tokio::time::timeout(Duration::from_millis(20), wake.changed()).await;
                }
            }
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ w);
                let mut versions = vec![0u64; ENTITIES_PER_WRITER as usize];
                let mut written = 0;
                while written < EVENTS_PER_WRITER {
                    let k = rng.random_range(0..ENTITIES_PER_WRITER) as usize;
                    let n = rng.random_range(1..=3).min(EVENTS_PER_WRITER - written);
                    let id = format!("w{w}-e{k}");
                    let mut tx = store.pool().begin().await.expect("begin");
                    let outcome = store
                        .append_in(
                            &mut tx,
                            request("Order", &id, expected_after(versions[k]), n as usize),
                        )
                        .await
                        .expect("append");
                    assert!(matches!(outcome, AppendOutcome::Appended { .. }));
                    let pause = rng.random_range(0..1500);
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                    tx.commit().await.expect("commit");
                    store.notify_appended();
                    versions[k] += n;
                    written += n;
                }
                versions
            })
        })
        .collect();
    let mut expected = HashMap::new();
    for (w, writer) in writers.into_iter().enumerate() {
        for (k, v) in writer.await.expect("writer").into_iter().enumerate() {
            expected.insert(format!("w{w}-e{k}"), v);
        }
    }
    done.store(true, Ordering::Release);
    let (count, versions) = reader.await.expect("reader");
    assert_eq!(count, WRITERS * EVENTS_PER_WRITER, "events missing");
    expected.retain(|_, v| *v > 0);
    assert_eq!(versions, expected, "final versions");
}

/// Two writers race to create one entity: the loser's unique violation is `EntityExists`
/// with the winner's version, never a generic database error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_map_to_entity_exists() {
    let store = store().await;
    let mut tx = store.pool().begin().await.expect("begin");
    store
        .append_in(&mut tx, request("Order", "x", ExpectedVersion::New, 2))
        .await
        .expect("first");
    // Blocks on the unique index until the first transaction ends.
    let second = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append(request("Order", "x", ExpectedVersion::New, 1))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !second.is_finished(),
        "the second create waits for the first"
    );
    tx.commit().await.expect("commit");
    match second.await.expect("join") {
        Err(Error::EntityExists { version: 2, .. }) => {}
        other => panic!("expected EntityExists, got {other:?}"),
    }
}

/// The same race on an update: `Conflict` with the winner's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_updates_map_to_conflict() {
    let store = store().await;
    store
        .append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect("create");
    let mut tx = store.pool().begin().await.expect("begin");
    store
        .append_in(
            &mut tx,
            request("Order", "x", ExpectedVersion::Exactly(1), 3),
        )
        .await
        .expect("first");
    let second = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append(request("Order", "x", ExpectedVersion::Exactly(1), 1))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.commit().await.expect("commit");
    match second.await.expect("join") {
        Err(Error::Conflict {
            expected: 1,
            actual: 4,
            ..
        }) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
}

/// When the race's winner rolls back, the waiting writer goes on and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_behind_a_rolled_back_winner_succeeds() {
    let store = store().await;
    let mut tx = store.pool().begin().await.expect("begin");
    store
        .append_in(&mut tx, request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect("first");
    let second = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append(request("Order", "x", ExpectedVersion::New, 2))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.rollback().await.expect("rollback");
    assert!(matches!(
        second.await.expect("join"),
        Ok(AppendOutcome::Appended { version: 2, .. })
    ));
}

/// An idempotency key held by an open transaction: the second append waits for it, then
/// reports `Duplicate`; the events are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_idempotency_keys_store_once() {
    let store = store().await;
    let key = IdempotencyKey {
        subscriber_id: "workflow".into(),
        triggering_event_id: Uuid::new_v4(),
        sequence: 0,
        command_type: "Test".into(),
    };
    let keyed = |id: &str| AppendRequest {
        idempotency: Some(key.clone()),
        ..request("Order", id, ExpectedVersion::New, 1)
    };
    let mut tx = store.pool().begin().await.expect("begin");
    store.append_in(&mut tx, keyed("x")).await.expect("first");
    let second = tokio::spawn({
        let store = store.clone();
        let request = keyed("x");
        async move { store.append(request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.commit().await.expect("commit");
    assert_eq!(
        second.await.expect("join").expect("second"),
        AppendOutcome::Duplicate
    );
    assert_eq!(store.load("Order", "x", 0).await.expect("load").len(), 1);
}

/// Keys recorded before the fingerprint columns existed (migration 0004) have NULLs there: the
/// recorded command is unknown, so a repeated key is a duplicate, whatever command it carries,
/// never a mismatch. A key recorded with a fingerprint is compared: another command is
/// `IdempotencyMismatch`.
#[tokio::test]
async fn keys_recorded_without_a_fingerprint_are_duplicates_never_mismatches() {
    let store = store().await;
    store
        .append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect("create");
    let key = IdempotencyKey {
        subscriber_id: "workflow".into(),
        triggering_event_id: Uuid::new_v4(),
        sequence: 0,
        command_type: "Ship".into(),
    };
    // What a key row written before migration 0004 looks like.
    sqlx::query(
        "INSERT INTO processed_commands (subscriber_id, triggering_event_id, sequence) \
         VALUES ($1, $2, $3)",
    )
    .bind(&key.subscriber_id)
    .bind(key.triggering_event_id)
    .bind(i64::from(key.sequence))
    .execute(store.pool())
    .await
    .expect("legacy key row");
    for (id, expected) in [
        ("x", ExpectedVersion::Exactly(1)),
        ("y", ExpectedVersion::New),
    ] {
        let mut keyed = request("Order", id, expected, 1);
        keyed.idempotency = Some(key.clone());
        assert_eq!(
            store.append(keyed).await.expect("legacy key"),
            AppendOutcome::Duplicate,
            "{id}"
        );
    }
    assert_eq!(store.load("Order", "x", 0).await.expect("load").len(), 1);
    assert!(store.load("Order", "y", 0).await.expect("load").is_empty());

    // A key written now carries its fingerprint, in the columns the migration added.
    let fresh = IdempotencyKey {
        triggering_event_id: Uuid::new_v4(),
        ..key
    };
    let mut keyed = request("Order", "x", ExpectedVersion::Exactly(1), 1);
    keyed.idempotency = Some(fresh.clone());
    store.append(keyed.clone()).await.expect("keyed");
    let row: (String, String, String) = sqlx::query_as(
        "SELECT entity_type, entity_id, command_type FROM processed_commands \
         WHERE triggering_event_id = $1",
    )
    .bind(fresh.triggering_event_id)
    .fetch_one(store.pool())
    .await
    .expect("fingerprint");
    assert_eq!(row, ("Order".into(), "x".into(), "Ship".into()));
    keyed.entity_id = "y".into();
    keyed.expected = ExpectedVersion::New;
    let err = store.append(keyed).await.expect_err("another target");
    assert!(matches!(err, Error::IdempotencyMismatch { .. }), "{err:?}");
}

/// A failed version check records no idempotency key: the retry with the right version is
/// applied, not reported as a duplicate.
#[tokio::test]
async fn failed_append_records_no_key() {
    let store = store().await;
    store
        .append(request("Order", "x", ExpectedVersion::New, 2))
        .await
        .expect("create");
    let key = IdempotencyKey {
        subscriber_id: "workflow".into(),
        triggering_event_id: Uuid::new_v4(),
        sequence: 0,
        command_type: "Test".into(),
    };
    let mut stale = request("Order", "x", ExpectedVersion::Exactly(1), 1);
    stale.idempotency = Some(key.clone());
    assert!(matches!(
        store.append(stale.clone()).await,
        Err(Error::Conflict { actual: 2, .. })
    ));
    let mut retry = stale;
    retry.expected = ExpectedVersion::Exactly(2);
    assert!(matches!(
        store.append(retry.clone()).await.expect("retry"),
        AppendOutcome::Appended { version: 3, .. }
    ));
    assert_eq!(
        store.append(retry).await.expect("again"),
        AppendOutcome::Duplicate
    );
}

/// An append inside a transaction that got its id before the entity's current version was
/// written would sort before its predecessor in the stream: refused, nothing written.
#[tokio::test]
async fn append_in_an_older_transaction_is_refused() {
    let store = store().await;
    let mut tx = store.pool().begin().await.expect("begin");
    // The transaction gets its id here.
    store
        .append_in(&mut tx, request("Order", "other", ExpectedVersion::New, 1))
        .await
        .expect("other");
    store
        .append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect("create x");
    let err = store
        .append_in(
            &mut tx,
            request("Order", "x", ExpectedVersion::Exactly(1), 1),
        )
        .await
        .expect_err("must be refused");
    assert!(
        matches!(err, Error::OrderingRefused { version: 1, .. }),
        "{err:?}"
    );
    assert!(!err.is_permanent(), "a new transaction can succeed");
    assert!(err.to_string().contains("new transaction"), "{err}");
    tx.commit().await.expect("the transaction is still usable");
    assert_eq!(store.load("Order", "x", 0).await.expect("load").len(), 1);
    // In a fresh transaction the same append is fine.
    store
        .append(request("Order", "x", ExpectedVersion::Exactly(1), 1))
        .await
        .expect("append");
}

/// Two schemas of one database are two independent stores.
#[tokio::test]
async fn schemas_are_independent_tenants() {
    let db = test_database().await;
    let tenant = |schema: &'static str| {
        let url = db.url.clone();
        async move {
            PostgresEventStore::builder()
                .schema(schema)
                .migrate_on_connect(true)
                .connect(&url)
                .await
                .expect("connect")
        }
    };
    let (a, b) = tokio::join!(tenant("tenant_a"), tenant("Tenant_B"));
    a.append(request("Order", "x", ExpectedVersion::New, 2))
        .await
        .expect("a");
    b.append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect("b: same id, other tenant");
    assert_eq!(a.load("Order", "x", 0).await.expect("load").len(), 2);
    assert_eq!(b.load("Order", "x", 0).await.expect("load").len(), 1);
    assert_eq!(read_after(&a, Position::START).await.len(), 2);
    assert_eq!(read_after(&b, Position::START).await.len(), 1);
    let key = IdempotencyKey {
        subscriber_id: "s".into(),
        triggering_event_id: Uuid::new_v4(),
        sequence: 0,
        command_type: "Test".into(),
    };
    for store in [&a, &b] {
        let mut keyed = request("Order", "y", ExpectedVersion::New, 1);
        keyed.idempotency = Some(key.clone());
        assert!(matches!(
            store.append(keyed).await.expect("keyed"),
            AppendOutcome::Appended { .. }
        ));
    }
    a.save_snapshot(Snapshot {
        entity_type: "Order".into(),
        entity_id: "x".into(),
        entity_version: 2,
        snapshot_version: 1,
        payload: "{}".into(),
    })
    .await
    .expect("snapshot");
    assert!(
        b.load_snapshot("Order", "x", 1)
            .await
            .expect("load")
            .is_none()
    );
    // Nothing landed in `public`.
    let public: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(a.pool())
    .await
    .expect("count");
    assert_eq!(public, 0);
    // Migrating again, concurrently, is a no-op.
    let (ra, rb) = tokio::join!(a.migrate(), a.migrate());
    ra.expect("migrate again");
    rb.expect("migrate again");
    assert_eq!(a.load("Order", "x", 0).await.expect("load").len(), 2);
}

#[tokio::test]
async fn invalid_schema_names_are_refused_before_connecting() {
    for bad in ["", "a-b", "x\"; DROP TABLE events; --", "1st", "pg_toast"] {
        let err = PostgresEventStore::builder()
            .schema(bad)
            .connect("postgres://nobody@127.0.0.1:1/none")
            .await
            .expect_err(bad);
        assert!(
            matches!(err, eventuate_postgres::Error::InvalidSchema { .. }),
            "{bad}: {err}"
        );
    }
}

/// Payloads come back byte for byte, including JSON that `jsonb` would reject or rewrite.
#[tokio::test]
async fn payload_text_is_kept_exactly() {
    let store = store().await;
    let payloads = [
        r#"{"b":1,"a":2}"#,
        r#"{ "spaced" :  [1, 2.50, 1e3] }"#,
        r#"{"nul":"\u0000"}"#,
        r#""just a string""#,
    ];
    let mut req = request("Order", "x", ExpectedVersion::New, 0);
    req.events = payloads
        .iter()
        .map(|p| NewEvent::new("Happened", *p))
        .collect();
    req.events[0]
        .metadata
        .headers
        .insert("h".into(), "\0".into());
    // A schema version next to a NUL: the stored version column is read from the text.
    req.events[1].metadata.schema_version = Some(2);
    req.events[1]
        .metadata
        .headers
        .insert("h".into(), "\0".into());
    let written = req.events.clone();
    store.append(req).await.expect("append");
    let loaded = store.load("Order", "x", 0).await.expect("load");
    for (stored, written) in loaded.iter().zip(&written) {
        assert_eq!(stored.payload, written.payload);
        assert_eq!(stored.metadata, written.metadata);
    }
    let folded = store.load_for_fold("Order", "x", 0).await.expect("load");
    let versions: Vec<Option<u32>> = folded.iter().map(|e| e.schema_version).collect();
    assert_eq!(versions, vec![None, Some(2), None, None]);
}

/// A snapshot with invalid JSON is refused and changes nothing.
#[tokio::test]
async fn invalid_snapshot_is_refused() {
    let store = store().await;
    let snapshot = |payload: &str| Snapshot {
        entity_type: "Order".into(),
        entity_id: "x".into(),
        entity_version: 3,
        snapshot_version: 1,
        payload: payload.into(),
    };
    store
        .save_snapshot(snapshot("{\"ok\":true}"))
        .await
        .expect("save");
    let err = store
        .save_snapshot(snapshot("{broken"))
        .await
        .expect_err("invalid JSON");
    assert!(matches!(err, Error::InvalidPayload { .. }), "{err:?}");
    let loaded = store
        .load_snapshot("Order", "x", 1)
        .await
        .expect("load")
        .expect("some");
    assert_eq!(loaded.payload, "{\"ok\":true}");
}

/// The configured payload limit applies, and a rejected append leaves the store unchanged.
#[tokio::test]
async fn payload_limit_is_configurable() {
    let db = test_database().await;
    let store = PostgresEventStore::builder()
        .max_payload_bytes(16)
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .expect("connect");
    let mut req = request("Order", "x", ExpectedVersion::New, 0);
    req.events = vec![
        NewEvent::new("Small", "{}"),
        NewEvent::new("Big", "[1,2,3,4,5,6,7,8]"),
    ];
    match store.append(req).await {
        Err(Error::PayloadTooLarge {
            size: 17, max: 16, ..
        }) => {}
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(read_after(&store, Position::START).await.is_empty());
    assert!(store.load("Order", "x", 0).await.expect("load").is_empty());
}

/// A store on an unmigrated database says what to do.
#[tokio::test]
async fn unmigrated_database_error_says_migrate() {
    let db = test_database().await;
    let store = PostgresEventStore::connect(&db.url).await.expect("connect");
    let err = store
        .append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect_err("no tables");
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("migrate"), "{err}");
    store.migrate().await.expect("migrate");
    store
        .append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect("append after migrating");
}

/// Every successful append bumps the wake-up channel; rejected ones and duplicates do not.
#[tokio::test]
async fn appended_channel_fires_after_appends() {
    let store = store().await;
    let mut rx = store.appended();
    let before = *rx.borrow_and_update();
    store
        .append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect("append");
    assert!(rx.has_changed().expect("sender alive"));
    assert_eq!(*rx.borrow_and_update(), before + 1);
    let _ = store
        .append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect_err("exists");
    assert!(!rx.has_changed().expect("sender alive"));
}

/// Stream filters by entity type and partition read the right rows through SQL.
#[tokio::test]
async fn count_after_matches_reads() {
    let store = store().await;
    for i in 0..30 {
        let ty = if i % 3 == 0 { "Customer" } else { "Order" };
        store
            .append(request(ty, &format!("id-{i}"), ExpectedVersion::New, 2))
            .await
            .expect("append");
    }
    let filters = [
        StreamFilter::default(),
        StreamFilter::entity_types(["Order"]),
        StreamFilter {
            entity_types: vec![],
            partition: Some(eventuate_core::Partition { index: 1, count: 4 }),
        },
        StreamFilter {
            entity_types: vec!["Customer".into()],
            partition: Some(eventuate_core::Partition { index: 0, count: 2 }),
        },
    ];
    for filter in &filters {
        let read = store
            .read_stream(Position::START, filter, 1000)
            .await
            .expect("read");
        assert!(
            read.iter()
                .all(|e| filter.matches(&e.entity_type, &e.entity_id))
        );
        let count = store
            .count_after(Position::START, filter, u64::MAX)
            .await
            .expect("count");
        assert_eq!(count, read.len() as u64, "{filter:?}");
        if let Some(mid) = read.get(read.len() / 2) {
            let rest = store
                .count_after(mid.position, filter, u64::MAX)
                .await
                .expect("count");
            assert_eq!(rest, (read.len() - read.len() / 2 - 1) as u64);
        }
    }
    assert_eq!(
        store
            .count_after(Position::START, &StreamFilter::default(), u64::MAX)
            .await
            .expect("count"),
        60
    );
}

/// The throwaway server itself: a restart keeps the port and the data (fault tests restart the
/// server under a running application), and dropping it removes everything.
#[tokio::test]
async fn throwaway_server_restarts_and_cleans_up() {
    use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
    let server = ThrowawayPostgres::start(Options::default().max_connections(20)).expect("start");
    let db = server.create_database().await.expect("database");
    // A short acquire timeout: while the server is down the pool retries until it expires.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect(&db.url)
        .await
        .expect("pool");
    let store = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .with_pool(pool)
        .await
        .expect("store");
    store
        .append(request("Order", "x", ExpectedVersion::New, 1))
        .await
        .expect("append");

    server.stop().expect("stop");
    let err = store
        .append(request("Order", "x", ExpectedVersion::Exactly(1), 1))
        .await
        .expect_err("server is down");
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");

    server.restart().expect("restart");
    // The pool drops the dead connections and opens new ones to the same port.
    let mut result = Err(err);
    for _ in 0..20 {
        result = store
            .append(request("Order", "x", ExpectedVersion::Exactly(1), 1))
            .await;
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    result.expect("append after restart");
    assert_eq!(store.load("Order", "x", 0).await.expect("load").len(), 2);

    let root = server
        .data_dir()
        .parent()
        .expect("data dir has a parent")
        .to_owned();
    drop(store);
    drop(server);
    assert!(!root.exists(), "{} is left behind", root.display());
}

/// Batches of every page size (small pages scan up to the horizon; large ones, from 1,024
/// rows, read the page and cut it at the horizon) answer alike around an open transaction:
/// the rows committed below it, how far they looked (never at or past it), and after its
/// commit its rows and the later ones in order, a full page ending at its last row.
#[tokio::test]
async fn batches_of_every_page_size_stop_at_an_open_transaction() {
    let store = store().await;
    let before = positions(
        store
            .append(request("Order", "before", ExpectedVersion::New, 5))
            .await
            .expect("before"),
    );
    let mut tx_a = store.pool().begin().await.expect("begin");
    let a = positions(
        store
            .append_in(&mut tx_a, request("Order", "a", ExpectedVersion::New, 2))
            .await
            .expect("a"),
    );
    // Far more rows after the open transaction than the largest page: a page read without
    // the bound fills with them.
    for chunk in 0..5 {
        store
            .append(request(
                "Order",
                &format!("b{chunk}"),
                ExpectedVersion::New,
                1000,
            ))
            .await
            .expect("b");
    }
    let filters = [
        StreamFilter::default(),
        StreamFilter {
            entity_types: vec!["Order".into()],
            ..StreamFilter::default()
        },
    ];
    for filter in &filters {
        for limit in [3, 256, 1023, 1024, 4096] {
            let batch = store
                .read_batch(Position::START, filter, limit)
                .await
                .expect("read");
            let got: Vec<Position> = batch.items.iter().map(|i| i.event().position).collect();
            let want: Vec<Position> = before.iter().copied().take(limit).collect();
            assert_eq!(
                got, want,
                "limit {limit}: only rows below the open transaction"
            );
            assert!(
                batch.scanned_to < a[0],
                "limit {limit}: looked at or past the open transaction ({} >= {})",
                batch.scanned_to,
                a[0]
            );
            if limit > before.len() {
                assert!(batch.scanned_to >= before[4], "limit {limit}: a short read");
            }
        }
    }
    tx_a.commit().await.expect("commit a");
    for filter in &filters {
        for limit in [256, 4096] {
            let batch = store
                .read_batch(before[4], filter, limit)
                .await
                .expect("read");
            assert_eq!(batch.items.len(), limit, "limit {limit}: a full page");
            assert_eq!(batch.items[0].event().position, a[0]);
            assert_eq!(batch.items[1].event().position, a[1]);
            assert!(
                batch
                    .items
                    .windows(2)
                    .all(|w| w[0].event().position < w[1].event().position)
            );
            assert_eq!(
                batch.scanned_to,
                batch.items[limit - 1].event().position,
                "a full page looked as far as its last row"
            );
        }
    }
}

/// A short batch claims to have looked only as far as the newest event's transaction, not up
/// to the horizon: transaction ids handed out after it (here by transactions that write no
/// event) need not be in the WAL, and after a crash PostgreSQL hands them out again, so a
/// claim past the newest event could skip an event committed after the crash
/// (`server_restart.rs` saw exactly that before the claim was narrowed).
#[tokio::test]
async fn a_short_batch_claims_no_further_than_the_newest_event() {
    let store = store().await;
    let last = *positions(
        store
            .append(request("Order", "o", ExpectedVersion::New, 2))
            .await
            .expect("append"),
    )
    .last()
    .expect("a position");
    // Transaction ids consumed after the newest event, by transactions without events.
    for _ in 0..5 {
        let mut tx = store.pool().begin().await.expect("begin");
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *tx)
            .await
            .expect("take an id");
        tx.commit().await.expect("commit");
    }
    for limit in [256, 4096] {
        let batch = store
            .read_batch(Position::START, &StreamFilter::default(), limit)
            .await
            .expect("read");
        assert_eq!(batch.items.len(), 2);
        assert_eq!(
            batch.scanned_to,
            Position::new(last.transaction, i64::MAX as u64),
            "limit {limit}: the claim ends at the newest event's transaction"
        );
        // Nothing after it: a read from there claims no more and moves nowhere.
        let again = store
            .read_batch(batch.scanned_to, &StreamFilter::default(), limit)
            .await
            .expect("read");
        assert!(again.items.is_empty());
        assert_eq!(again.scanned_to, batch.scanned_to);
    }
}
