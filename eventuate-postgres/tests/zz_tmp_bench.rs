use eventuate_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_bench() {
    let server = ThrowawayPostgres::start(Options::default().fsync(true)).unwrap();
    let db = server.create_database().await.unwrap();
    let log = server.data_dir().parent().unwrap().join("server.log");
    let log2 = log.clone();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("PANIC {info}");
        let _ = std::fs::copy(&log2, "/tmp/benchtmp/server.log");
    }));
    let store = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .max_connections(40)
        .connect(&db.url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE raw_events (sequence BIGSERIAL PRIMARY KEY, event_id UUID UNIQUE, entity_type TEXT, entity_id TEXT, entity_version BIGINT, event_type TEXT, payload JSON, metadata JSON, UNIQUE(entity_type, entity_id, entity_version))").execute(store.pool()).await.unwrap();
    for round in 0..2 {
        for tasks in [1usize, 8, 32] {
            let dur = Duration::from_secs(3);
            // raw
            let start = Instant::now();
            let mut hs = vec![];
            for t in 0..tasks {
                let pool = store.pool().clone();
                hs.push(tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < dur {
                    n += 1;
                    sqlx::query("INSERT INTO raw_events (event_id, entity_type, entity_id, entity_version, event_type, payload, metadata) VALUES ($1, 'Order', $2, $3, 'E', $4::json, $5::json)")
                        .bind(uuid::Uuid::new_v4()).bind(format!("r{round}-{t}")).bind(n as i64).bind("{\"n\":1}").bind("{}")
                        .execute(&pool).await.unwrap();
                }
                n
            }));
            }
            let mut raw = 0;
            for h in hs {
                raw += h.await.unwrap();
            }
            let raw_rate = raw as f64 / start.elapsed().as_secs_f64();
            let start = Instant::now();
            let mut hs = vec![];
            for t in 0..tasks {
                let store = store.clone();
                hs.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        let expected = if n == 0 {
                            ExpectedVersion::New
                        } else {
                            ExpectedVersion::Exactly(n)
                        };
                        store
                            .append(AppendRequest {
                                entity_type: "Order".into(),
                                entity_id: format!("s{round}-{tasks}-{t}"),
                                expected,
                                events: vec![NewEvent::new("E", "{\"n\":1}")],
                                idempotency: None,
                            })
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                }));
            }
            let mut st = 0;
            for h in hs {
                st += h.await.unwrap();
            }
            let st_rate = st as f64 / start.elapsed().as_secs_f64();
            println!(
                "tasks {tasks}: raw {raw_rate:.0}/s store {st_rate:.0}/s ratio {:.2}",
                st_rate / raw_rate
            );
        }
    }
}
