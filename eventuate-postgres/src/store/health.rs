//! Connections that a database restart or a network failure broke, and a server that is not
//! up yet.
//!
//! - **Connecting** ([`connect_pool`]): the first connection is opened directly, retried with
//!   backoff while the failure may pass (connection refused or reset, "the database system is
//!   starting up"), each retry logged with its cause, for at most the builder's
//!   `connect_retry_for`; then the last real cause is returned, not sqlx's "pool timed out".
//!   Authentication, a missing database and bad TLS settings fail at once.
//! - **A pooled connection is checked before it is handed out** when it was idle for a while
//!   ([`CHECK_IDLE_AFTER`]), and, for a few seconds after any statement of the store found a
//!   connection broken, every time: after a restart, one failure tells the store that the
//!   other idle connections are dead too, so they are dropped at their next acquisition
//!   instead of each failing one more command.
//! - **A read that failed on a broken connection before any row arrived is run again** on
//!   another connection (`read::each_row`, [`PoolHealth::read`]): nothing was handed to the
//!   caller yet, and reading twice changes nothing. Writes are not retried (their outcome is
//!   unknown, see `append::append_failed`); they only raise the alarm.
//! - **A statement that got no connection names why** ([`PoolHealth::explain_timeout`]): when
//!   the pool could not open one, the error is what connecting fails with now, not sqlx's
//!   "pool timed out".

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// A pooled connection idle for at least this long is checked (a round trip) before it is
/// handed out; one back from use more recently is handed out as is, unless the pool is
/// suspect (see [`SUSPECT_FOR`]). sqlx's default checks every acquisition, which cost a
/// command (a load and an append) two extra round trips.
pub(super) const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// For how long after a statement found a connection broken every acquisition is checked.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// How often a read is run again after broken connections, at most: enough to get past
/// every stale connection of a pool whose acquisitions are not checked (a pool given to
/// `with_pool`), bounded for very large pools.
const MAX_READ_RETRIES: u32 = 64;

/// What the store knows of its pool's connections: when a statement last found one broken.
#[derive(Debug, Default)]
pub(super) struct PoolHealth {
    /// Milliseconds since [`origin`] at which the alarm ends; 0: never raised.
    suspect_until_ms: AtomicU64,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(origin().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl PoolHealth {
    /// Whether the next acquisition must check its connection.
    pub(super) fn suspect(&self) -> bool {
        now_ms() < self.suspect_until_ms.load(Ordering::Relaxed)
    }

    /// Records `e` if it says the connection is broken; whether it did.
    pub(super) fn saw(&self, e: &sqlx::Error) -> bool {
        let broken = is_broken_connection(e);
        if broken {
            let until =
                now_ms().saturating_add(u64::try_from(SUSPECT_FOR.as_millis()).unwrap_or(0));
            self.suspect_until_ms.fetch_max(until, Ordering::Relaxed);
        }
        broken
    }

    /// `e`, or, when it is sqlx's "pool timed out" (no connection within the pool's acquire
    /// timeout) while the pool could not open the connections it may (a full pool whose
    /// connections are all in use keeps the timeout as its cause) and connecting now fails,
    /// that failure ("Connection refused", "the database system is starting up", ...): the
    /// cause the pool retried behind the timeout. The probe waits a few seconds at most and
    /// only runs on this failure path.
    pub(super) async fn explain_timeout(&self, pool: &PgPool, e: sqlx::Error) -> sqlx::Error {
        if !matches!(e, sqlx::Error::PoolTimedOut)
            || pool.size() >= pool.options().get_max_connections()
        {
            return e;
        }
        let options = pool.connect_options();
        match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
            Ok(Err(cause)) => cause,
            Ok(Ok(connection)) => {
                // The server answers: the pool was busy, the timeout is the cause.
                let _ = sqlx::Connection::close(connection).await;
                e
            }
            Err(_) => e,
        }
    }

    /// How often a read that failed on a broken connection before any row arrived may run
    /// again: once for every connection of `pool` and one more, bounded.
    pub(super) fn read_retries(&self, pool: &PgPool) -> u32 {
        (pool.options().get_max_connections() + 1).min(MAX_READ_RETRIES)
    }

    /// Runs a read whose answer is collected whole (`fetch_one`, `fetch_all`, ...) on `pool`,
    /// again on another connection while it fails on a broken one.
    pub(super) async fn read<T, F, Fut>(&self, pool: &PgPool, read: F) -> Result<T, sqlx::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let mut retries = self.read_retries(pool);
        loop {
            match read().await {
                Err(e) if self.retry_read_after(&e, &mut retries) => {}
                Err(e) => return Err(self.failed(pool, e).await),
                ok => return ok,
            }
        }
    }

    /// Whether a read that failed with `e` before handing anything over runs again: the
    /// connection was broken (recorded) and `retries` is not spent (then one is taken).
    pub(super) fn retry_read_after(&self, e: &sqlx::Error, retries: &mut u32) -> bool {
        if !self.saw(e) || *retries == 0 {
            return false;
        }
        *retries -= 1;
        tracing::debug!(error = %e, "a read found its connection broken; reading again on another");
        true
    }

    /// The error a statement that will not run again ends with: recorded, and a pool timeout
    /// explained ([`Self::explain_timeout`]).
    pub(super) async fn failed(&self, pool: &PgPool, e: sqlx::Error) -> sqlx::Error {
        self.saw(&e);
        self.explain_timeout(pool, e).await
    }
}

/// Whether `e` says the connection itself failed (the server went away or ended the session,
/// the network broke), rather than the statement.
fn is_broken_connection(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Tls(_)) || session_ended(e)
}

/// Whether the server answered that it ended the session: a connection exception (class
/// 08), an administrator, a shutdown or restart (57P01), a crash of another backend (57P02).
pub(super) fn session_ended(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code == "57P01" || code == "57P02"),
        _ => false,
    }
}

/// Whether a failed attempt to connect may succeed later: the server is not up (yet), or is
/// starting or shutting down.
fn may_pass(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        // cannot_connect_now ("the database system is starting up"), admin_shutdown,
        // too_many_connections.
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("57P03" | "57P01" | "53300"))
        }
        _ => false,
    }
}

/// The store's pool for `url`: `max_connections` connections, each checked before it is
/// handed out as [`PoolHealth`] says. Returns once a first connection succeeded (see the
/// module docs for the retries), or with the last cause.
pub(super) async fn connect_pool(
    url: &str,
    max_connections: u32,
    retry_for: Duration,
    acquire_timeout: Duration,
    health: std::sync::Arc<PoolHealth>,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let deadline = Instant::now() + retry_for;
    let mut pause = Duration::from_millis(100);
    loop {
        match options.connect().await {
            Ok(first) => {
                // The pool opens its own; this one only proved the server answers.
                let _ = sqlx::Connection::close(first).await;
                break;
            }
            Err(e) if may_pass(&e) && Instant::now() + pause < deadline => {
                tracing::warn!(
                    host = options.get_host(),
                    port = options.get_port(),
                    error = %e,
                    retry_in = ?pause,
                    "PostgreSQL does not accept connections (yet); retrying"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let check = meta.idle_for >= CHECK_IDLE_AFTER || health.suspect();
            Box::pin(async move {
                if check {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}
