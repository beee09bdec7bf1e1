//! Copies of a store in other clusters (issue #9, item 9): a reader on a hot standby never
//! skips a transaction still open on the primary. The test runs servers of its own, stopped
//! and deleted on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eventuate_core::{
    AppendOutcome, AppendRequest, EventEnvelope, EventStore, ExpectedVersion, NewEvent, Position,
    StreamFilter,
};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
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
