//! Wake-ups for the dispatcher: LISTEN/NOTIFY as a hint, never as the source of events.
//!
//! - **Local appends** wake this process's consumers directly (no database round trip).
//! - **Other processes** learn of appends through one NOTIFY per burst: a single task per
//!   store forwards "something was appended here" as `pg_notify`, at most one in flight, so a
//!   burst of appends costs one notification. It runs *after* the appends committed, in its
//!   own transaction: a transaction that runs NOTIFY takes a database-wide lock at commit
//!   (measured here: NOTIFY inside every append caps the database near 3.2k commits/s against
//!   12-14k without), and keeping it out of the writers' transactions keeps writers off it.
//! - **One listening connection per store** (per process) receives the notifications and
//!   wakes the consumers. It reconnects with exponential backoff, and wakes them after every
//!   (re)connect, because notifications sent while it was disconnected are lost. Consumers
//!   also poll on a timer, so a lost notification delays delivery by at most the poll interval
//!   and never loses an event: events are always read from the table.
//! - **The listening connection is not one of the store's pool.** A LISTEN session holds its
//!   connection for as long as it listens; taken from the pool, it would leave a pool of one
//!   connection with nothing for commands and subscribers (every statement waiting for the
//!   pool's acquire timeout), and a pool of *n* with *n - 1*. It is opened instead from the
//!   pool's connect options ([`PgPool::connect_options`]: same server, database, user and
//!   TLS settings) through a private pool of one connection, which only serves to reconnect.
//!   A store therefore opens at most `max_connections + 1` connections to the server. The
//!   forwarder's NOTIFY is one short statement per burst of appends and does use the pool.
//!
//! The notification payload is this store's random token, so a process ignores its own echo.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;
use uuid::Uuid;

/// The channel name for a schema: a valid identifier of at most 63 bytes.
pub(crate) fn channel_for(schema: &str) -> String {
    let channel = format!("eventuate_{schema}");
    if channel.len() <= 63 {
        channel
    } else {
        let hash = eventuate_core::name::entity_hash(schema);
        format!("eventuate_{}_{hash:08x}", &schema[..40])
    }
}

/// The wake-up signal of one store, and the tasks that feed it: the forwarder starts with the
/// store's first append or first subscriber (a writer-only process must still notify the
/// others), the listener with its first subscriber.
#[derive(Debug)]
pub(crate) struct Wakeup {
    sender: watch::Sender<u64>,
    pool: PgPool,
    channel: String,
    token: String,
    appended: watch::Receiver<u64>,
    forwarder: std::sync::Once,
    listener: std::sync::Once,
    // Dropping the store drops this, which ends the background tasks.
    stop: watch::Sender<()>,
}

impl Wakeup {
    pub(crate) fn new(pool: PgPool, schema: &str, appended: watch::Receiver<u64>) -> Self {
        Wakeup {
            sender: watch::Sender::new(0u64),
            pool,
            channel: channel_for(schema),
            token: Uuid::new_v4().simple().to_string(),
            appended,
            forwarder: std::sync::Once::new(),
            listener: std::sync::Once::new(),
            stop: watch::Sender::new(()),
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(task);
                true
            }
            Err(_) => {
                tracing::warn!("no Tokio runtime: wake-ups fall back to polling");
                false
            }
        }
    }

    /// Makes sure appends of this store are announced to other processes.
    pub(crate) fn start_forwarder(&self) {
        self.forwarder.call_once(|| {
            self.spawn(forward(
                self.pool.clone(),
                self.channel.clone(),
                self.token.clone(),
                self.appended.clone(),
                self.sender.clone(),
                self.stop.subscribe(),
            ));
        });
    }

    /// Ends the forwarder and the listening connection.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(());
    }

    /// A receiver of wake-ups; starts the forwarder and the listening connection.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.start_forwarder();
        self.listener.call_once(|| {
            self.spawn(listen(
                self.pool.clone(),
                self.channel.clone(),
                self.token.clone(),
                self.sender.clone(),
                self.stop.subscribe(),
            ));
        });
        self.sender.subscribe()
    }
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|n| *n = n.wrapping_add(1));
}

/// Local appends: wake local consumers at once, then tell other processes, one NOTIFY per
/// burst.
async fn forward(
    pool: PgPool,
    channel: String,
    token: String,
    mut appended: watch::Receiver<u64>,
    sender: watch::Sender<u64>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        appended.borrow_and_update();
        bump(&sender);
        // A hint: it need not wait for a disk flush of its own (a NOTIFY always takes a
        // transaction id, and with synchronous_commit on its commit would wait for the WAL).
        if let Err(e) =
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
                .bind(&channel)
                .bind(&token)
                .execute(&pool)
                .await
        {
            // Other processes will find the events by polling.
            tracing::debug!(error = %e, "NOTIFY failed");
        }
    }
}

/// The private pool of the listening connection: one connection, outside the store's pool,
/// made from the same connect options. Lazy: nothing connects until the listener asks.
fn listener_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        // A listening session is meant to last; the store's own recycling settings do not
        // apply to it.
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// The listening connection: wakes consumers on notifications from other processes and after
/// every (re)connect; reconnects with exponential backoff.
async fn listen(
    pool: PgPool,
    channel: String,
    token: String,
    sender: watch::Sender<u64>,
    stop: watch::Receiver<()>,
) {
    let own = listener_pool(&pool);
    drop(pool);
    listen_on(&own, &channel, &token, &sender, stop).await;
    // Waits for the last listener's connection to come back (it is returned after an
    // `UNLISTEN *` when the listener is dropped), then closes it.
    own.close().await;
}

async fn listen_on(
    pool: &PgPool,
    channel: &str,
    token: &str,
    sender: &watch::Sender<u64>,
    mut stop: watch::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(pool).await?;
            // A lost connection is reported as `Ok(None)` at once, without sqlx reconnecting
            // inside `try_recv`: the loop below reconnects, with backoff, and wakes the
            // consumers once LISTEN is active again.
            listener.eager_reconnect(false);
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            result = connected => match result {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "LISTEN connection failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        backoff = Duration::from_millis(50);
        // Whatever was notified while we were away is lost: catch up now.
        bump(sender);
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        if notification.payload() != token {
                            bump(sender);
                        }
                    }
                    // The connection dropped. sqlx would reconnect inside the next `try_recv`,
                    // but silently: reconnect here instead, so that the catch-up wake-up comes
                    // after LISTEN is active again and nothing notified in between is missed.
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::channel_for;

    #[test]
    fn channel_names_fit_postgres_identifiers() {
        assert_eq!(channel_for("public"), "eventuate_public");
        let long = "t".repeat(63);
        let channel = channel_for(&long);
        assert!(channel.len() <= 63, "{channel}");
        assert_ne!(channel_for(&long), channel_for(&"u".repeat(63)));
    }
}
