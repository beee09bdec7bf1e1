//! The server the benchmark runs against, and the schemas each workload gets.
//!
//! Without `DATABASE_URL` a throwaway server is started with durable settings (fsync and
//! synchronous_commit on); with it, the given database is used as is. Every workload gets its
//! own schemas: `<run>_<name>` for the framework's store and `<run>_<name>_raw` for the raw
//! floor, both created by the store's migrations, so the raw table has exactly the columns,
//! defaults and indexes of `events`. The schemas are dropped at the end.

use std::sync::Mutex;

use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::BoxResult;

/// The settings recorded with every run.
pub const RECORDED_SETTINGS: &[&str] = &[
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "commit_delay",
    "shared_buffers",
    "max_connections",
    "wal_level",
];

#[derive(Debug)]
pub struct Env {
    /// Kept alive for the run; `None` when `DATABASE_URL` was given.
    _server: Option<ThrowawayPostgres>,
    pub url: String,
    pub source: String,
    pub server_version: String,
    pub settings: Vec<(String, String)>,
    pub data_dir_fs: String,
    run: String,
    schemas: Mutex<Vec<String>>,
}

impl Env {
    /// `diagnose` loads pg_stat_statements into the throwaway server.
    pub async fn start(diagnose: bool) -> BoxResult<Env> {
        let (server, url, source, data_dir) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => (None, url, "DATABASE_URL".to_owned(), None),
            _ => {
                let mut options = Options::default()
                    .fsync(true)
                    .setting("synchronous_commit", "on");
                if diagnose {
                    options = options.setting("shared_preload_libraries", "pg_stat_statements");
                }
                let server = tokio::task::spawn_blocking(move || ThrowawayPostgres::start(options))
                    .await??;
                let db = server.create_database().await?;
                let data_dir = server.data_dir().to_owned();
                (
                    Some(server),
                    db.url,
                    "throwaway server (eventuate_postgres::embedded)".to_owned(),
                    Some(data_dir),
                )
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        let server_version: String = sqlx::query_scalar("SELECT version()")
            .fetch_one(&pool)
            .await?;
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting || COALESCE(' ' || unit, '') FROM pg_settings \
             WHERE name = ANY($1) ORDER BY name",
        )
        .bind(RECORDED_SETTINGS)
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        let data_dir_fs = data_dir
            .map(|dir| filesystem_of(&dir))
            .unwrap_or_else(|| "unknown (external server)".into());
        Ok(Env {
            _server: server,
            url,
            source,
            server_version,
            settings,
            data_dir_fs,
            run: format!("bench{}", std::process::id()),
            schemas: Mutex::new(Vec::new()),
        })
    }

    pub fn setting(&self, name: &str) -> &str {
        self.settings
            .iter()
            .find(|(n, _)| n == name)
            .map_or("?", |(_, v)| v.as_str())
    }

    /// Whether commits are durable (fsync and synchronous_commit on).
    pub fn durable(&self) -> bool {
        self.setting("fsync") == "on" && self.setting("synchronous_commit") == "on"
    }

    fn schema(&self, name: &str) -> String {
        let schema = format!("{}_{name}", self.run);
        self.schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(schema.clone());
        schema
    }

    /// A migrated store in a fresh schema, with a pool of `pool_size` connections.
    pub async fn store(&self, name: &str, pool_size: u32) -> BoxResult<PostgresEventStore> {
        Ok(PostgresEventStore::builder()
            .schema(self.schema(name))
            .max_connections(pool_size)
            .migrate_on_connect(true)
            .connect(&self.url)
            .await?)
    }

    /// Another store on an existing schema (its own pool and wake-up tasks: what another
    /// process would have).
    pub async fn attach(&self, schema: &str, pool_size: u32) -> BoxResult<PostgresEventStore> {
        Ok(PostgresEventStore::builder()
            .schema(schema)
            .max_connections(pool_size)
            .connect(&self.url)
            .await?)
    }

    /// The raw floor: a pool of `pool_size` connections and the quoted name of an `events`
    /// table identical to the store's (created by the same migrations, in its own schema).
    pub async fn raw(&self, name: &str, pool_size: u32) -> BoxResult<Raw> {
        let store = self.store(&format!("{name}_raw"), 1).await?;
        let table = format!("\"{}\".events", store.schema());
        store.close().await;
        // No check before each acquisition: the floor gets the cheapest pool sqlx offers
        // (the store checks only connections idle for a second or more).
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .test_before_acquire(false)
            .connect(&self.url)
            .await?;
        Ok(Raw { pool, table })
    }

    /// Drops every schema the run created.
    pub async fn cleanup(&self) -> BoxResult<()> {
        let schemas = std::mem::take(&mut *self.schemas.lock().unwrap_or_else(|p| p.into_inner()));
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await?;
        for schema in schemas {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&pool)
                .await?;
        }
        pool.close().await;
        Ok(())
    }
}

/// The raw floor's pool and table.
#[derive(Debug, Clone)]
pub struct Raw {
    pub pool: PgPool,
    /// Quoted, schema-qualified `events` table.
    pub table: String,
}

fn filesystem_of(path: &std::path::Path) -> String {
    let output = std::process::Command::new("df")
        .args(["--output=fstype,source"])
        .arg(path)
        .output();
    match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" on "))
            .unwrap_or_default(),
        _ => "unknown".into(),
    }
}
