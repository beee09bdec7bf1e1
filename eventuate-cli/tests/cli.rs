//! Every command of the `eventuate` CLI against the throwaway PostgreSQL, run in-process
//! through [`eventuate_cli::run`] (the binary's whole body) with the arguments parsed by clap,
//! as the binary parses them: no process to spawn, nothing more to build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::{CommandFactory, Parser};
use eventuate_cli::{Cli, Error};
use eventuate_core::runtime::{Lease, Member, ParkedEvent, PartitionKey, Shape, SubscriptionStore};
use eventuate_core::store::{AppendRequest, ExpectedVersion, StreamFilter};
use eventuate_core::{EventStore, NewEvent, Position};
use eventuate_postgres::embedded::test_database;
use eventuate_postgres::{PostgresEventStore, sqlx};
use serde_json::Value;
use uuid::Uuid;

async fn cli(url: &str, args: &[&str]) -> Result<String, Error> {
    let mut argv = vec!["eventuate", "--url", url];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv)?;
    let mut out = Vec::new();
    eventuate_cli::run(cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

async fn migrated(url: &str) -> PostgresEventStore {
    PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(url)
        .await
        .unwrap()
}

async fn append(store: &PostgresEventStore, entity_type: &str, id: &str, event_type: &str) {
    let version = store.load(entity_type, id, 0).await.unwrap().len() as u64;
    store
        .append(AppendRequest {
            entity_type: entity_type.into(),
            entity_id: id.into(),
            expected: if version == 0 {
                ExpectedVersion::New
            } else {
                ExpectedVersion::Exactly(version)
            },
            events: vec![NewEvent::new(event_type, format!("{{\"v\":{version}}}"))],
            idempotency: None,
        })
        .await
        .unwrap();
}

/// A subscriber `orders-view` of 2 partitions over `Order`, partition 0 held by a member,
/// with three stored orders: what a running dispatcher leaves in the tables.
struct Seeded {
    store: PostgresEventStore,
    node: Uuid,
    lease: Lease,
}

async fn seeded(url: &str) -> Seeded {
    let store = migrated(url).await;
    for id in ["o1", "o2", "o3"] {
        append(&store, "Order", id, "Placed").await;
    }
    let shape = Shape::new(2, &["Order".to_owned()], &[]);
    store
        .reshape("orders-view", &shape, Position::START)
        .await
        .unwrap();
    let member = Member {
        incarnation: Uuid::new_v4(),
        node: Uuid::new_v4(),
        subscribers: vec!["orders-view".into()],
    };
    store
        .heartbeat(&member, Duration::from_secs(60))
        .await
        .unwrap();
    let key = PartitionKey {
        subscriber_id: "orders-view".into(),
        partition: 0,
        partitions: 2,
    };
    let claim = store
        .try_acquire(&key, &member, 1, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a free partition");
    Seeded {
        store,
        node: member.node,
        lease: claim.lease,
    }
}

/// Parks the first event of partition 0 as its consumer would after giving up on it.
async fn park_first(seeded: &Seeded) -> ParkedEvent {
    let filter = StreamFilter {
        entity_types: vec!["Order".into()],
        partition: Some(eventuate_core::store::Partition { index: 0, count: 2 }),
    };
    let event = seeded
        .store
        .read_stream(Position::START, &filter, 10)
        .await
        .unwrap()
        .into_iter()
        .next()
        .expect("partition 0 has an order");
    let parked = ParkedEvent {
        subscriber_id: "orders-view".into(),
        partition: 0,
        event,
        attempts: 5,
        error: "the view's table is missing".into(),
        parked_at: std::time::SystemTime::now(),
        replay_requested: false,
    };
    seeded.store.park(&seeded.lease, &parked).await.unwrap();
    parked
}

#[test]
fn the_command_line_is_consistent_and_has_help() {
    Cli::command().debug_assert();
    let help = Cli::try_parse_from(["eventuate", "--help"]).unwrap_err();
    assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    for command in [
        "status", "parked", "reset", "migrate", "tail", "horizon", "prune",
    ] {
        assert!(help.to_string().contains(command), "{command}");
    }
    let bad = Cli::try_parse_from(["eventuate", "--url", "x", "reset", "s", "--to", "later"]);
    assert!(bad.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_subscriber_as_a_table_and_as_json() {
    let db = test_database().await;
    let seeded = seeded(&db.url).await;
    park_first(&seeded).await;

    let table = cli(&db.url, &["status"]).await.unwrap();
    println!("{table}");
    assert!(table.contains("orders-view  (generation 1: 2 partition(s) of [Order]"));
    assert!(table.contains(&seeded.node.to_string()), "the owner's node");
    assert!(table.contains("free for"), "partition 1 has no owner");

    let json: Value =
        serde_json::from_str(&cli(&db.url, &["status", "--json"]).await.unwrap()).unwrap();
    let sub = &json[0];
    assert_eq!(sub["subscriber"], "orders-view");
    assert_eq!(sub["shape"]["generation"], 1);
    assert_eq!(sub["parked"], 1);
    let partitions = sub["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2);
    assert_eq!(partitions[0]["owner_node"], seeded.node.to_string());
    assert_eq!(partitions[1]["owner_node"], Value::Null);
    assert_eq!(partitions[0]["parked"], 1);
    let lag: u64 = partitions.iter().map(|p| p["lag"].as_u64().unwrap()).sum();
    assert_eq!(lag, 3, "every order is behind a checkpoint at the start");
    seeded.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_are_listed_replayed_and_skipped() {
    let db = test_database().await;
    let seeded = seeded(&db.url).await;
    let parked = park_first(&seeded).await;
    let position = parked.event.position.to_string();
    let entity = format!("Order/{}", parked.event.entity_id);

    let list = cli(&db.url, &["parked", "list", "orders-view"])
        .await
        .unwrap();
    println!("{list}");
    assert!(list.contains(&position) && list.contains("the view's table is missing"));

    let replay = cli(
        &db.url,
        &["parked", "replay", "orders-view", "--entity", &entity],
    )
    .await
    .unwrap();
    assert!(
        replay.contains("replay requested for 1 parked event(s)"),
        "{replay}"
    );
    let json: Value = serde_json::from_str(
        &cli(&db.url, &["parked", "list", "orders-view", "--json"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json[0]["replay_requested"], true);

    let skip = cli(&db.url, &["parked", "skip", "orders-view", &position])
        .await
        .unwrap();
    assert!(skip.contains("skipped"), "{skip}");
    // Fenced: the consumer that held partition 0 can move nothing any more.
    let fenced = seeded
        .store
        .save_checkpoint(&seeded.lease, parked.event.position)
        .await;
    assert!(
        matches!(fenced, Err(eventuate_core::Error::LeaseLost { .. })),
        "{fenced:?}"
    );
    let list = cli(&db.url, &["parked", "list", "orders-view"])
        .await
        .unwrap();
    assert!(list.contains("no parked event"), "{list}");
    let again = cli(&db.url, &["parked", "skip", "orders-view", &position]).await;
    assert!(again.unwrap_err().to_string().contains("no parked event"));

    // A subscriber id no table knows (a typo) is an error, as for `reset`, not an empty answer.
    let unknown = "no subscriber `orders-veiw` is stored in this schema";
    for args in [
        &["parked", "list", "orders-veiw"][..],
        &["parked", "list", "orders-veiw", "--json"],
        &["parked", "replay", "orders-veiw"],
        &["parked", "skip", "orders-veiw", &position],
        &["reset", "orders-veiw", "--to", "now"],
    ] {
        let error = cli(&db.url, args).await.unwrap_err().to_string();
        assert_eq!(error, unknown, "{args:?}");
    }
    seeded.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_moves_every_checkpoint_and_fences_the_consumers_off() {
    let db = test_database().await;
    let seeded = seeded(&db.url).await;
    let head = seeded.store.head().await.unwrap();

    let out = cli(&db.url, &["reset", "orders-view", "--to", "now"])
        .await
        .unwrap();
    println!("{out}");
    assert!(
        out.contains(&format!("2 partition(s) now at {head}")),
        "{out}"
    );
    assert!(out.contains("1 live lease(s) ended"), "{out}");
    let state = seeded.store.subscriber("orders-view").await.unwrap();
    assert!(state.partitions.iter().all(|p| p.checkpoint == head));
    assert!(state.partitions.iter().all(|p| p.owner.is_none()));
    let fenced = seeded.store.save_checkpoint(&seeded.lease, head).await;
    assert!(matches!(
        fenced,
        Err(eventuate_core::Error::LeaseLost { .. })
    ));

    cli(&db.url, &["reset", "orders-view", "--to", "beginning"])
        .await
        .unwrap();
    let state = seeded.store.subscriber("orders-view").await.unwrap();
    assert!(
        state
            .partitions
            .iter()
            .all(|p| p.checkpoint == Position::START)
    );
    let unknown = cli(&db.url, &["reset", "nobody", "--to", "0/0"]).await;
    assert!(unknown.unwrap_err().to_string().contains("nobody"));
    seeded.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_and_reports_the_versions() {
    let db = test_database().await;
    let out = cli(&db.url, &["--schema", "tenant_cli", "migrate"])
        .await
        .unwrap();
    println!("{out}");
    assert!(
        out.contains("schema `tenant_cli` migrated: versions 1, 2, 3, 4, 5, 6 applied"),
        "{out}"
    );
    // Again: nothing to do, same answer.
    let again = cli(&db.url, &["--schema", "tenant_cli", "migrate"])
        .await
        .unwrap();
    assert_eq!(out, again);
}

/// A database that is down is named within seconds (the library's default retry window,
/// meant for services starting with their database, is 30 s).
#[tokio::test]
async fn a_database_that_refuses_connections_is_named_within_seconds() {
    let t0 = std::time::Instant::now();
    let error = cli("postgres://postgres@127.0.0.1:1/app", &["status"])
        .await
        .unwrap_err()
        .to_string();
    assert!(error.to_lowercase().contains("refused"), "{error}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_never_migrated_is_named_with_the_command_that_migrates_it() {
    let db = test_database().await;
    migrated(&db.url).await.close().await;
    let expected = "schema `nothere` holds no eventuate store (never migrated?): run \
                    `eventuate --schema nothere migrate`";
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["parked", "list", "s"],
        &["parked", "replay", "s"],
        &["parked", "skip", "s", "1/1"],
        &["reset", "s", "--to", "now"],
        &["rebuild", "s"],
        &["tail", "--limit", "1"],
        &["horizon"],
        &["prune", "--older-than", "90d"],
    ] {
        let mut argv = vec!["--schema", "nothere"];
        argv.extend_from_slice(args);
        let error = cli(&db.url, &argv).await.unwrap_err().to_string();
        assert!(error.starts_with(expected), "{args:?}: {error}");
        assert!(!error.contains("PostgresEventStore"), "CLI advice: {error}");
    }
    // What it says works.
    cli(&db.url, &["--schema", "nothere", "migrate"])
        .await
        .unwrap();
    let status = cli(&db.url, &["--schema", "nothere", "status"])
        .await
        .unwrap();
    assert_eq!(status.trim(), "no subscriber stored in schema `nothere`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_binary_quietly_with_success() {
    let db = test_database().await;
    let seeded = seeded(&db.url).await;
    // `eventuate status | head -c 0`: the reader is gone before the first write.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_eventuate"))
        .args(["--url", &db.url, "status"])
        .env_remove("EVENTUATE_SCHEMA")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert_eq!(stderr, "");
    // The binary's other errors still fail.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_eventuate"))
        .args(["--url", &db.url, "--schema", "nothere", "status"])
        .env_remove("EVENTUATE_SCHEMA")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: schema `nothere`"), "{stderr}");

    let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
    assert!(eventuate_cli::is_broken_pipe(&pipe));
    // `status --json` writes through serde_json, whose error wraps the pipe's.
    struct Closed;
    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let json = serde_json::to_writer(Closed, &[1]).unwrap_err();
    assert!(eventuate_cli::is_broken_pipe(&json));
    let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    assert!(!eventuate_cli::is_broken_pipe(&other));
    seeded.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_one_line_per_event_and_follows_the_stream() {
    let db = test_database().await;
    let store = migrated(&db.url).await;
    append(&store, "Order", "o1", "Placed").await;
    append(&store, "Customer", "c1", "Registered").await;
    append(&store, "Order", "o1", "Shipped").await;

    let all = cli(&db.url, &["tail", "--from", "beginning", "--limit", "3"])
        .await
        .unwrap();
    println!("{all}");
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].ends_with("Order/o1 v1 Placed {\"v\":0}"),
        "{}",
        lines[0]
    );
    let orders = cli(
        &db.url,
        &[
            "tail",
            "--from",
            "beginning",
            "--types",
            "Order",
            "--limit",
            "2",
        ],
    )
    .await
    .unwrap();
    assert!(orders.lines().all(|l| l.contains("Order/o1")), "{orders}");
    let shipped = cli(
        &db.url,
        &[
            "tail",
            "--from",
            "beginning",
            "--events",
            "Shipped",
            "--limit",
            "1",
        ],
    )
    .await
    .unwrap();
    assert!(shipped.contains("Shipped"), "{shipped}");

    // From now: waits for the next append. The writer keeps appending until the tail has
    // printed one, so a slow start of the tail (its head read after the first append) only
    // means it prints a later one.
    let writer = store.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let appender = tokio::spawn(async move {
        let mut n = 2;
        while !stop_writer.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            append(&writer, "Customer", &format!("c{n}"), "Registered").await;
            n += 1;
        }
    });
    let next = tokio::time::timeout(
        Duration::from_secs(20),
        cli(&db.url, &["tail", "--limit", "1"]),
    )
    .await
    .expect("an appended event arrives")
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    appender.await.unwrap();
    assert_eq!(next.lines().count(), 1, "{next}");
    assert!(
        next.contains(" v1 Registered") && next.contains("Customer/c"),
        "{next}"
    );
    assert!(
        !next.contains("Customer/c1 "),
        "only events after the head: {next}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn horizon_names_the_transaction_holding_delivery_back() {
    let db = test_database().await;
    let store = migrated(&db.url).await;
    append(&store, "Order", "o1", "Placed").await;
    let calm = cli(&db.url, &["horizon"]).await.unwrap();
    assert!(
        calm.contains("no transaction with a transaction id"),
        "{calm}"
    );

    let mut open = store.pool().begin().await.unwrap();
    let (pid, xid): (i32, i64) = sqlx::query_as(
        "SELECT pg_backend_pid(), pg_current_xact_id()::text::bigint /* a slow report */",
    )
    .fetch_one(&mut *open)
    .await
    .unwrap();
    // The horizon is conservative: a transaction of another test's database that ended between
    // the snapshot and the activity read holds it back for that one statement (it cannot be
    // proved harmless). Such moments pass; ours stays until it ends.
    let mut out = String::new();
    for _ in 0..50 {
        out = cli(&db.url, &["horizon"]).await.unwrap();
        if out.contains(&format!("stream horizon: transaction {xid}")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{out}");
    assert!(
        out.contains(&format!("stream horizon: transaction {xid}")),
        "{out}"
    );
    assert!(out.contains(&format!("pid {pid} (xid {xid})")), "{out}");
    assert!(out.contains("idle in transaction") && out.contains("a slow report"));
    let json: Value =
        serde_json::from_str(&cli(&db.url, &["horizon", "--json"]).await.unwrap()).unwrap();
    assert_eq!(json["oldest_transaction"]["pid"], pid);
    open.rollback().await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_only_old_idempotency_keys() {
    let db = test_database().await;
    let store = migrated(&db.url).await;
    sqlx::query(
        "INSERT INTO processed_commands (subscriber_id, triggering_event_id, sequence, \
           processed_at) \
         SELECT 's', gen_random_uuid(), n, now() - make_interval(days => n * 10) \
         FROM generate_series(1, 12) AS n",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let out = cli(&db.url, &["prune", "--older-than", "95d"])
        .await
        .unwrap();
    assert_eq!(
        out.trim(),
        "pruned 3 idempotency key(s) older than 8208000s"
    );
    let bad = Cli::try_parse_from(["eventuate", "--url", "x", "prune", "--older-than", "3y"]);
    assert!(bad.is_err());
    store.close().await;
}

/// A transactional view: one row per Order event, written in the delivery's transaction.
struct OrdersView;

impl eventuate_core::Subscriber for OrdersView {
    fn subscription(&self) -> eventuate_core::Subscription {
        eventuate_core::Subscription::new("orders-rows", ["Order"]).transactional(true)
    }

    async fn handle(
        &self,
        ctx: &eventuate_core::EventContext,
    ) -> Result<(), eventuate_core::HandlerError> {
        use eventuate_postgres::PgEventContextExt;
        let mut conn = ctx.pg_transaction().await?;
        sqlx::query("INSERT INTO order_rows (event_id) VALUES ($1)")
            .bind(ctx.event_id())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

async fn view_rows(store: &PostgresEventStore) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM order_rows")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_empties_the_view_and_rebuilds_it_exactly_once_with_progress() {
    let db = test_database().await;
    let store = migrated(&db.url).await;
    sqlx::query("CREATE TABLE order_rows (event_id UUID NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    for i in 0..300 {
        append(&store, "Order", &format!("o{}", i % 7), "Placed").await;
    }
    let running = eventuate_core::Eventuate::new(store.clone())
        .options(eventuate_core::runtime::RuntimeOptions {
            poll_interval: Duration::from_millis(100),
            lease_ttl: Duration::from_millis(900),
            ..Default::default()
        })
        .subscriber(OrdersView)
        .start()
        .unwrap();
    running
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(view_rows(&store).await, (300, 300));
    // More events arrive while the view is rebuilt.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                append(&store, "Order", &format!("late{}", i % 3), "Placed").await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let out = cli(
        &db.url,
        &[
            "rebuild",
            "orders-rows",
            "--truncate",
            "order_rows",
            "--timeout",
            "30s",
            "--every",
            "1s",
        ],
    )
    .await
    .unwrap();
    println!("{out}");
    assert!(
        out.contains("rebuild `orders-rows`: order_rows emptied"),
        "{out}"
    );
    assert!(out.contains("rebuilt `orders-rows`"), "{out}");
    writer.await.unwrap();
    running
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        view_rows(&store).await,
        (350, 350),
        "every event in the view once"
    );
    let bad = cli(&db.url, &["rebuild", "orders-rows", "--truncate", "x;drop"]).await;
    assert!(bad.unwrap_err().to_string().contains("x;drop"));
    running.shutdown().await.unwrap();
    store.close().await;
}
