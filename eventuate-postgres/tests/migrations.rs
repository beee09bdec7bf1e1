//! The store's migrations next to an application's: their history lives in the schema's own
//! `eventuate_migrations` table, a schema migrated by the previous release (history in sqlx's
//! `_sqlx_migrations`) is adopted, a least-privilege role connects with `migrate_on_connect`,
//! and a schema migrated by a newer release is refused with a typed error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use eventuate_core::store::{AppendRequest, ExpectedVersion};
use eventuate_core::{EventStore, NewEvent};
use eventuate_postgres::embedded::test_database;
use eventuate_postgres::sqlx::migrate::Migrator;
use eventuate_postgres::sqlx::postgres::PgPoolOptions;
use eventuate_postgres::sqlx::{self, PgPool};
use eventuate_postgres::{Error, PostgresEventStore};

/// An application's own sqlx migrations, as files in a directory (sqlx's usual source).
fn app_migrations(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "eventuate-app-migrations-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("0001_app_orders.sql"),
        "CREATE TABLE app_orders (id BIGINT PRIMARY KEY);",
    )
    .unwrap();
    std::fs::write(
        dir.join("0002_app_lines.sql"),
        "CREATE TABLE app_lines (order_id BIGINT NOT NULL);",
    )
    .unwrap();
    dir
}

async fn run_app_migrations(pool: &PgPool, dir: &Path) {
    Migrator::new(dir)
        .await
        .unwrap()
        .run(pool)
        .await
        .expect("the application's migrations");
}

async fn store(url: &str, schema: &str) -> PostgresEventStore {
    PostgresEventStore::builder()
        .schema(schema)
        .connect(url)
        .await
        .expect("connect")
}

async fn append_one(store: &PostgresEventStore, id: &str) {
    store
        .append(AppendRequest {
            entity_type: "Order".into(),
            entity_id: id.into(),
            expected: ExpectedVersion::New,
            events: vec![NewEvent::new("Placed", "{}")],
            idempotency: None,
        })
        .await
        .expect("append");
}

async fn versions(pool: &PgPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT version FROM {table} ORDER BY version"))
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_and_store_migrations_coexist_in_either_order() {
    let dir = app_migrations("coexist");
    for store_first in [true, false] {
        let db = test_database().await;
        let pool = PgPoolOptions::new().connect(&db.url).await.unwrap();
        let store = store(&db.url, "public").await;
        if store_first {
            store.migrate().await.unwrap();
            run_app_migrations(&pool, &dir).await;
        } else {
            run_app_migrations(&pool, &dir).await;
            store.migrate().await.unwrap();
        }
        // Both again: each sees only its own history.
        store.migrate().await.unwrap();
        run_app_migrations(&pool, &dir).await;
        assert_eq!(versions(&pool, "_sqlx_migrations").await, [1, 2]);
        assert_eq!(
            versions(&pool, "eventuate_migrations").await,
            [1, 2, 3, 4, 5, 6]
        );
        append_one(&store, "o1").await;
        let (applied, known) = store.migration_status().await.unwrap();
        assert_eq!((applied, known), (vec![1, 2, 3, 4, 5, 6], 6));
        store.close().await;
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_migrated_with_sqlx_migrations_is_adopted() {
    let db = test_database().await;
    // What the previous release did: sqlx's migrator over these files, with the search path
    // on the store's schema, so `_sqlx_migrations` lands there.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("CREATE SCHEMA IF NOT EXISTS tenant_old")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("SET search_path TO tenant_old")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect(&db.url)
        .await
        .unwrap();
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    Migrator::new(ours.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let store = store(&db.url, "tenant_old").await;
    append_one(&store, "before").await;

    store.migrate().await.expect("adopted, nothing run again");
    let admin = PgPoolOptions::new().connect(&db.url).await.unwrap();
    assert_eq!(
        versions(&admin, "tenant_old.eventuate_migrations").await,
        [1, 2, 3, 4, 5, 6]
    );
    // Our rows left sqlx's table, so an application migrator there would not trip on them.
    assert!(
        versions(&admin, "tenant_old._sqlx_migrations")
            .await
            .is_empty()
    );
    append_one(&store, "after").await;
    assert_eq!(store.load("Order", "before", 0).await.unwrap().len(), 1);
    store.migrate().await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_role_connects_with_migrate_on_connect() {
    let db = test_database().await;
    let owner = store(&db.url, "tenant_lp").await;
    owner.migrate().await.unwrap();
    let admin = PgPoolOptions::new().connect(&db.url).await.unwrap();
    let role = format!("rw_{}", db.name);
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA tenant_lp TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tenant_lp TO {role}"),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA tenant_lp TO {role}"),
        format!("REVOKE CREATE ON DATABASE {} FROM PUBLIC", db.name),
    ] {
        sqlx::query(&statement).execute(&admin).await.unwrap();
    }
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let store = PostgresEventStore::builder()
        .schema("tenant_lp")
        .migrate_on_connect(true)
        .connect(&url)
        .await
        .expect("nothing to migrate: no DDL, no error");
    append_one(&store, "o1").await;
    store.close().await;

    // The same role cannot migrate a schema that needs it: the no-op above was not luck.
    let fresh = PostgresEventStore::builder()
        .schema("tenant_fresh")
        .migrate_on_connect(true)
        .connect(&url)
        .await;
    assert!(matches!(fresh, Err(Error::Database { .. })), "{fresh:?}");
    owner.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_migrated_by_a_newer_release_is_refused() {
    let db = test_database().await;
    let store = store(&db.url, "public").await;
    store.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO eventuate_migrations (version, description, checksum, execution_ms) \
         VALUES (7, 'from the future', '\\x00', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaFromNewerRelease {
                applied: 7,
                known: 6,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("version 7") && message.contains("up to 6"),
        "{message}"
    );
    let again = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await;
    assert!(matches!(again, Err(Error::SchemaFromNewerRelease { .. })));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrators_of_a_fresh_schema_apply_each_migration_once() {
    let db = test_database().await;
    let stores = [
        store(&db.url, "tenant_race").await,
        store(&db.url, "tenant_race").await,
        store(&db.url, "tenant_race").await,
    ];
    let (a, b, c) = tokio::join!(
        stores[0].migrate(),
        stores[1].migrate(),
        stores[2].migrate()
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    assert_eq!(
        versions(stores[0].pool(), "tenant_race.eventuate_migrations").await,
        [1, 2, 3, 4, 5, 6]
    );
    append_one(&stores[1], "o1").await;
    for s in &stores {
        s.close().await;
    }
}
