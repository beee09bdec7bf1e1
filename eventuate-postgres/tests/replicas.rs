//! Copies of a store in other clusters (issue #9, item 9): a reader on a hot standby never
//! skips a transaction still open on the primary, and a store moved logically (a dump
//! restored into another cluster, or rows whose transaction ids this cluster has not reached)
//! is refused with a typed error instead of silently hiding new events from subscribers.
//! The standby and dump tests run servers of their own, stopped and deleted on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use eventuate_core::{
    AppendOutcome, AppendRequest, EventEnvelope, EventStore, ExpectedVersion, NewEvent, Position,
    StreamFilter,
};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres, shared_server, test_database};
use sqlx::Connection;

/// Bounds each wait of these tests (a replay, a start); the waits take milliseconds.
const BOUND: Duration = Duration::from_secs(30);

fn request(id: &str, n: u64) -> AppendRequest {
    AppendRequest {
        entity_type: "Order".into(),
        entity_id: id.into(),
        expected: ExpectedVersion::New,
        events: vec![NewEvent::new("Placed", format!("{{\"n\":{n}}}"))],
        idempotency: None,
    }
}

fn position(outcome: AppendOutcome) -> Position {
    match outcome {
        AppendOutcome::Appended { positions, .. } => positions[0],
        AppendOutcome::Duplicate => panic!("unexpected duplicate"),
    }
}

async fn read_all(store: &PostgresEventStore, after: Position) -> Vec<EventEnvelope> {
    store
        .read_stream(after, &StreamFilter::default(), 1000)
        .await
        .expect("read the stream")
}

/// Waits until the standby has replayed everything the primary has written so far.
async fn replayed(primary: &mut sqlx::PgConnection, standby: &mut sqlx::PgConnection) {
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut *primary)
        .await
        .unwrap();
    let wait = async {
        loop {
            let done: bool =
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
                    .bind(&lsn)
                    .fetch_one(&mut *standby)
                    .await
                    .unwrap();
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(BOUND, wait)
        .await
        .expect("the standby replays the primary's WAL");
}

async fn start(
    f: impl FnOnce() -> eventuate_postgres::Result<ThrowawayPostgres> + Send + 'static,
) -> ThrowawayPostgres {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap()
        .expect("start a throwaway server")
}

/// A streaming replica of a real primary. Transaction A appends on the primary and stays open;
/// B appends and commits after it. Once the standby has replayed B, a reader on the standby
/// must not return B (it would then continue after B's position and never see A); once A
/// commits and is replayed, the reader continuing from its checkpoint sees both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_standby_reader_never_skips_a_transaction_open_on_the_primary() {
    let primary = start(|| ThrowawayPostgres::start(Options::default())).await;
    let db = primary.create_database().await.unwrap();
    let writer = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .expect("connect to the primary");
    let standby = {
        let primary = &primary;
        // The base backup streams from the primary: it must not block the runtime's threads.
        tokio::task::block_in_place(|| primary.start_standby(Options::default()))
            .expect("start a hot standby")
    };
    let standby_url = standby.database_url(&db.name);
    let mut primary_conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut standby_conn = sqlx::PgConnection::connect(&standby_url).await.unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut standby_conn)
        .await
        .unwrap();
    assert!(in_recovery, "the second server is a hot standby");

    // A: appended, not committed. B: appended and committed after A.
    let mut tx_a = writer.pool().begin().await.unwrap();
    let a = position(writer.append_in(&mut tx_a, request("a", 1)).await.unwrap());
    let b = position(writer.append(request("b", 2)).await.unwrap());
    assert!(a < b, "A's position comes first in stream order");
    replayed(&mut primary_conn, &mut standby_conn).await;
    let b_replayed: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE entity_id = 'b')")
            .fetch_one(&mut standby_conn)
            .await
            .unwrap();
    assert!(b_replayed, "the standby has B's committed row");

    // The reader on the standby: its tables came through replication, no migration there.
    let reader = PostgresEventStore::builder()
        .connect(&standby_url)
        .await
        .expect("connect to the standby");
    let first = read_all(&reader, Position::START).await;
    assert!(
        first.iter().all(|e| e.position < a),
        "the standby's reader went past A's open transaction: {:?}",
        first
            .iter()
            .map(|e| (&e.entity_id, e.position))
            .collect::<Vec<_>>()
    );
    let head = reader.head().await.expect("head");
    assert!(
        head < a,
        "the standby's head {head} is past A's open transaction {a}"
    );
    let checkpoint = first.last().map_or(Position::START, |e| e.position);

    tx_a.commit().await.unwrap();
    replayed(&mut primary_conn, &mut standby_conn).await;
    let second = read_all(&reader, checkpoint).await;
    let seen: Vec<Position> = first.iter().chain(&second).map(|e| e.position).collect();
    assert_eq!(
        seen,
        vec![a, b],
        "the reader saw both events, in stream order"
    );

    reader.close().await;
    writer.close().await;
    drop(standby);
    drop(primary);
}

fn run_tool(program: &std::path::Path, args: &[&str], stdin: Option<Vec<u8>>) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&input).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The error of a connect that must fail (without printing the whole store when it does not).
fn refused(
    result: eventuate_postgres::Result<PostgresEventStore>,
    what: &str,
) -> eventuate_postgres::Error {
    match result {
        Ok(_) => panic!("{what}: it connected"),
        Err(e) => e,
    }
}

fn assert_logical_move(err: &eventuate_postgres::Error) -> (u64, u64) {
    let eventuate_postgres::Error::LogicalMoveDetected {
        current_xid,
        max_stored,
        ..
    } = err
    else {
        panic!("expected LogicalMoveDetected, got {err:?}");
    };
    assert!(current_xid <= max_stored, "{err:?}");
    let message = err.to_string();
    for says in [
        "restored or replicated logically",
        "transaction id",
        "pg_basebackup",
    ] {
        assert!(
            message.contains(says),
            "the message says `{says}`: {message}"
        );
    }
    (*current_xid, *max_stored)
}

/// The real thing: a store dumped with `pg_dump` and restored into a fresh cluster (whose
/// transaction ids start low again) is refused when connected, with or without migrating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_restored_from_a_dump_into_a_fresh_cluster_is_refused() {
    let db = test_database().await;
    let source = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .unwrap();
    // Make the source's transaction ids clearly higher than a fresh cluster's: 5000
    // subtransactions take 5000 ids in one statement.
    sqlx::raw_sql(
        "CREATE TABLE burn (n int); \
         DO $$ BEGIN FOR i IN 1..5000 LOOP \
           BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN others THEN NULL; END; \
         END LOOP; END $$; \
         DROP TABLE burn",
    )
    .execute(source.pool())
    .await
    .unwrap();
    source.append(request("x", 1)).await.unwrap();
    source.close().await;

    let bin = shared_server().bin_dir().to_owned();
    let dump = {
        let (bin, url) = (bin.clone(), db.url.clone());
        tokio::task::spawn_blocking(move || {
            run_tool(
                &bin.join("pg_dump"),
                &["--no-owner", "--dbname", &url],
                None,
            )
        })
        .await
        .unwrap()
    };
    let target = start(|| ThrowawayPostgres::start(Options::default())).await;
    let restored = target.create_database().await.unwrap();
    {
        let url = restored.url.clone();
        tokio::task::spawn_blocking(move || {
            run_tool(
                &bin.join("psql"),
                &["-q", "-X", "-v", "ON_ERROR_STOP=1", "--dbname", &url],
                Some(dump),
            )
        })
        .await
        .unwrap();
    }

    let err = refused(
        PostgresEventStore::builder().connect(&restored.url).await,
        "a logically restored store is refused at connect",
    );
    let (current, stored) = assert_logical_move(&err);
    assert!(stored > 5000 && current < stored, "{current} < {stored}");
    let err = refused(
        PostgresEventStore::builder()
            .migrate_on_connect(true)
            .connect(&restored.url)
            .await,
        "and when migrating",
    );
    assert_logical_move(&err);
    drop(target);
}

/// The cheap form of the same situation, on the shared server: a stored transaction id at or
/// above this cluster's next one. Refused at connect, by `migrate`, and by the first stream
/// read of a store connected before (the dispatcher's first read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_transaction_id_beyond_the_cluster_is_refused_at_connect_migrate_and_first_read() {
    let db = test_database().await;
    let store = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .expect("a store written by this cluster connects");
    store.append(request("x", 1)).await.unwrap();
    // The store as a restore from a busier cluster would leave it: an event written by a
    // transaction this cluster has not reached.
    sqlx::query(
        "INSERT INTO events (transaction_id, event_id, entity_type, entity_id, entity_version, \
         event_type, payload, metadata, partition_hash) \
         VALUES (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000, \
         gen_random_uuid(), 'Order', 'restored', 1, 'Placed', '{}', '{}', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();

    let err = refused(
        PostgresEventStore::builder().connect(&db.url).await,
        "refused at connect",
    );
    let (current, stored) = assert_logical_move(&err);
    assert!(stored > current + 900_000, "{current} {stored}");
    let err = refused(
        PostgresEventStore::builder()
            .migrate_on_connect(true)
            .connect(&db.url)
            .await,
        "refused at connect with migrations",
    );
    assert_logical_move(&err);
    let err = store.migrate().await.expect_err("refused by migrate");
    assert_logical_move(&err);

    for result in [
        store
            .read_stream(Position::START, &StreamFilter::default(), 10)
            .await
            .map(|_| ()),
        store.head().await.map(|_| ()),
    ] {
        let err = result.expect_err("refused at the first read");
        let eventuate_core::Error::Backend { source, .. } = &err else {
            panic!("expected a backend error, got {err:?}");
        };
        let source = source
            .downcast_ref::<eventuate_postgres::Error>()
            .unwrap_or_else(|| panic!("the source is the store's typed error: {err:?}"));
        assert_logical_move(source);
    }
    store.close().await;
}
