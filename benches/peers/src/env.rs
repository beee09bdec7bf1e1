//! The one PostgreSQL server every library runs against, started like the main benchmark's
//! (`eventuate_postgres::embedded`, fsync and synchronous_commit on, run as the `postgres` user
//! when this process is root), or the server of `DATABASE_URL` if set. Each library gets a
//! database of its own on it, so that every table lives where its library put it.

use eventuate_postgres::embedded::{Options, ThrowawayPostgres};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use crate::BoxResult;

/// The settings recorded with every run.
const RECORDED_SETTINGS: &[&str] = &[
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "shared_buffers",
    "max_connections",
];

#[derive(Debug)]
pub struct Env {
    /// Kept alive for the run; `None` when `DATABASE_URL` was given.
    server: Option<ThrowawayPostgres>,
    /// URL of a database to administer from (create the others).
    admin_url: String,
    pub source: String,
    pub server_version: String,
    pub settings: Vec<(String, String)>,
}

impl Env {
    pub async fn start() -> BoxResult<Env> {
        let (server, admin_url, source) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => (None, url, "DATABASE_URL".to_owned()),
            _ => {
                // Six pools of 32 plus listeners: more than the default 200 connections.
                let options = Options::default()
                    .fsync(true)
                    .setting("synchronous_commit", "on")
                    .max_connections(400);
                let server = tokio::task::spawn_blocking(move || ThrowawayPostgres::start(options))
                    .await??;
                let url = server.create_database().await?.url;
                (
                    Some(server),
                    url,
                    "throwaway server (eventuate_postgres::embedded)".to_owned(),
                )
            }
        };
        let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
        let server_version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting || COALESCE(' ' || unit, '') FROM pg_settings \
             WHERE name = ANY($1) ORDER BY name",
        )
        .bind(RECORDED_SETTINGS)
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        Ok(Env {
            server,
            admin_url,
            source,
            server_version: format!("PostgreSQL {server_version}"),
            settings,
        })
    }

    fn setting(&self, name: &str) -> &str {
        self.settings
            .iter()
            .find(|(n, _)| n == name)
            .map_or("?", |(_, v)| v.as_str())
    }

    /// Whether commits are durable (fsync and synchronous_commit on).
    pub fn durable(&self) -> bool {
        self.setting("fsync") == "on" && self.setting("synchronous_commit") == "on"
    }

    pub fn settings_line(&self) -> String {
        self.settings
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A fresh database named `peers_<name>_<pid>`, and its URL.
    pub async fn database(&self, name: &str) -> BoxResult<String> {
        let db = format!("peers_{name}_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\""))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("CREATE DATABASE \"{db}\" TEMPLATE template0"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(match &self.server {
            Some(server) => server.database_url(&db),
            None => replace_database(&self.admin_url, &db)?,
        })
    }

    /// A pool of [`crate::POOL_SIZE`] connections to `url`.
    pub async fn pool(url: &str) -> BoxResult<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(crate::POOL_SIZE)
            .connect(url)
            .await?)
    }
}

/// `url` with its database name replaced (for a `DATABASE_URL` server).
fn replace_database(url: &str, db: &str) -> BoxResult<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .ok_or("DATABASE_URL is not a postgres:// URL")?;
    let path_start = base[authority_end..]
        .find('/')
        .map_or(base.len(), |i| authority_end + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// The machine the run happened on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub load_avg: String,
}

impl Machine {
    pub fn now() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            load_avg: load_avg(),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
