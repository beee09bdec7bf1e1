//! Connections that broke under the pool, and a server that does not answer (QA: after a
//! database restart every recently used pooled connection failed one command; a server that
//! was down made `connect` wait 30 s and then say only "pool timed out").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion};
use eventuate_core::{EventStore, NewEvent, Position, StreamFilter};
use eventuate_postgres::embedded::test_database;
use eventuate_postgres::{Error, PostgresEventStore};
use sqlx::Connection;

const POOL: u32 = 4;

/// sqlx's default wait for a pooled connection (the store's default too).
const WAIT: Duration = Duration::from_secs(30);

/// A migrated store on `url` with a pool of `connections`, whose statements wait at most
/// `acquire_timeout` for one.
async fn store_with(url: &str, connections: u32, acquire_timeout: Duration) -> PostgresEventStore {
    PostgresEventStore::builder()
        .max_connections(connections)
        .acquire_timeout(acquire_timeout)
        .migrate_on_connect(true)
        .connect(url)
        .await
        .expect("connect")
}

/// Creates `Order` `id` with one event.
async fn create(store: &PostgresEventStore, id: String) -> eventuate_core::Result<AppendOutcome> {
    store
        .append(AppendRequest {
            entity_type: "Order".into(),
            entity_id: id,
            expected: ExpectedVersion::New,
            events: vec![NewEvent::new("Touched", "{}")],
            idempotency: None,
        })
        .await
}

/// Every pooled connection's session is ended by the server (as a restart or a failover
/// does) right after use, so none is idle long enough to be checked before it is handed out:
/// the next commands (a load, then an append) and stream reads must all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_reads_survive_sessions_the_server_ended() {
    let db = test_database().await;
    let store = store_with(&db.url, POOL, WAIT).await;
    let mut observer = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for round in 0..3 {
        // Every connection of the pool in use at once, then back in the pool.
        fill_the_pool(&store).await;
        let ended = end_other_sessions(&mut observer).await;
        assert!(
            ended >= POOL as i64,
            "round {round}: ended {ended} sessions"
        );
        // Within the second after use: no check before acquisition would catch them.
        for n in 0..2 * POOL {
            let entity = format!("o-{round}");
            let version = store
                .load("Order", &entity, 0)
                .await
                .unwrap_or_else(|e| panic!("round {round}, command {n}: the load failed: {e}"))
                .len() as u64;
            let outcome = store
                .append(AppendRequest {
                    entity_type: "Order".into(),
                    entity_id: entity,
                    expected: if version == 0 {
                        ExpectedVersion::New
                    } else {
                        ExpectedVersion::Exactly(version)
                    },
                    events: vec![NewEvent::new("Touched", "{}")],
                    idempotency: None,
                })
                .await
                .unwrap_or_else(|e| panic!("round {round}, command {n}: the append failed: {e}"));
            assert!(matches!(outcome, AppendOutcome::Appended { .. }));
        }
        // The dispatcher's reads, on freshly broken connections too.
        fill_the_pool(&store).await;
        end_other_sessions(&mut observer).await;
        let batch = store
            .read_batch(Position::START, &StreamFilter::default(), 100)
            .await
            .expect("a stream read after the sessions ended");
        assert_eq!(batch.items.len() as u32, (round + 1) * 2 * POOL);
    }
}

/// A write is not run again after its connection broke (it may have been executed: the
/// error says the outcome is unknown), but the next statements do not take the pool's other
/// broken connections: after the first failure, every acquisition is checked for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_write_found_its_connection_broken_the_next_writes_do_not() {
    let db = test_database().await;
    let store = store_with(&db.url, POOL, WAIT).await;
    let mut observer = sqlx::PgConnection::connect(&db.url).await.unwrap();
    fill_the_pool(&store).await;
    end_other_sessions(&mut observer).await;
    let append = |n: u32| create(&store, format!("w-{n}"));
    let first = append(0)
        .await
        .expect_err("the first write met a broken connection");
    assert!(first.outcome_unknown(), "{first:?}");
    for n in 1..2 * POOL {
        append(n)
            .await
            .unwrap_or_else(|e| panic!("write {n} took another broken connection: {e}"));
    }
}

/// Opens every connection of the store's pool (all in use at once), and waits until all are
/// back in it, idle (sqlx returns a connection to the pool in a task of its own).
async fn fill_the_pool(store: &PostgresEventStore) {
    let mut held = Vec::new();
    for _ in 0..POOL {
        held.push(store.pool().acquire().await.unwrap());
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.pool().num_idle() < POOL as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.pool().num_idle(), POOL as usize);
}

/// Ends every session of the test's database but the observer's; how many.
async fn end_other_sessions(observer: &mut sqlx::PgConnection) -> i64 {
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend') t",
    )
    .fetch_one(&mut *observer)
    .await
    .unwrap();
    // pg_terminate_backend only signals: wait until the sessions are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_one(&mut *observer)
        .await
        .unwrap();
        if left == 0 || Instant::now() > deadline {
            return ended;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Nothing listens on the port: `connect` retries for as long as it was told, then returns
/// the cause.
#[tokio::test]
async fn a_server_that_refuses_connections_is_named_as_such() {
    let t0 = Instant::now();
    let error = PostgresEventStore::builder()
        .connect_retry_for(Duration::from_millis(500))
        .connect("postgres://postgres@127.0.0.1:1/app")
        .await
        .expect_err("nothing listens on port 1");
    let elapsed = t0.elapsed();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let message = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(
        message.to_lowercase().contains("refused"),
        "the cause is named: {message}"
    );
    assert!(!message.contains("timed out"), "{message}");
    assert!(
        elapsed < Duration::from_secs(10),
        "gave up after the retry window, not sqlx's 30 s: {elapsed:?}"
    );
}

/// An error that waiting cannot mend is returned at once, whatever the retry window.
#[tokio::test]
async fn an_unknown_database_fails_at_once() {
    let db = test_database().await;
    let url = db.url.replace(&db.name, "no_such_database_here");
    let t0 = Instant::now();
    let error = PostgresEventStore::builder()
        .connect_retry_for(Duration::from_secs(60))
        .connect(&url)
        .await
        .expect_err("the database does not exist");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        error.to_string().contains("no_such_database_here"),
        "the cause is named: {error}"
    );
}

/// While the database is down, a command waits the pool's acquire timeout and then says why
/// no connection could be made (sqlx alone says only "pool timed out"); once it is back,
/// commands succeed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_commands_say_why_and_work_again_after() {
    use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
    let server = tokio::task::spawn_blocking(|| ThrowawayPostgres::start(Options::default()))
        .await
        .unwrap()
        .expect("a server of its own");
    let db = server.create_database().await.unwrap();
    let store = store_with(&db.url, POOL, Duration::from_millis(500)).await;
    fill_the_pool(&store).await;
    tokio::task::block_in_place(|| server.stop()).unwrap();
    let append = |n: u32| create(&store, format!("d-{n}"));
    for n in 0..3 {
        let load = store
            .load("Order", "d-0", 0)
            .await
            .expect_err("the server is down");
        let written = append(n).await.expect_err("the server is down");
        for error in [load, written] {
            let chain = format!("{error}: {:?}", std::error::Error::source(&error));
            assert!(
                chain.to_lowercase().contains("refused") || chain.contains("No such file"),
                "attempt {n}: the cause is named: {chain}"
            );
        }
    }
    tokio::task::block_in_place(|| server.restart()).unwrap();
    for n in 10..10 + 2 * POOL {
        append(n)
            .await
            .unwrap_or_else(|e| panic!("write {n} after the restart: {e}"));
    }
    store
        .load("Order", "d-10", 0)
        .await
        .expect("a read after the restart");
}

/// A pool whose every connection is in use times out as such: the server answers, so no
/// other cause is looked for (and no connection is opened beside the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_times_out_as_such() {
    let db = test_database().await;
    let store = store_with(&db.url, 1, Duration::from_millis(300)).await;
    let held = store.pool().acquire().await.unwrap();
    let error = store
        .load("Order", "b-1", 0)
        .await
        .expect_err("the only connection is held");
    let chain = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(chain.contains("timed out"), "{chain}");
    drop(held);
    store.load("Order", "b-1", 0).await.expect("free again");
}
