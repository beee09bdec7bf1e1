//! The STOMP server: durable, named subscriptions to the store's events over STOMP 1.0, 1.1
//! and 1.2 (Eventuate's STOMP interface; port 61614 by convention).
//!
//! ```no_run
//! # async fn demo(store: eventuate_postgres::PostgresEventStore) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use eventuate_server::{StompOptions, StompServer};
//!
//! let stomp = StompServer::new(Arc::new(store.clone()), Arc::new(store))
//!     .options(StompOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:61614").await?;
//! stomp.serve(listener, std::future::pending()).await
//! # }
//! ```
//!
//! ## Subscribing
//!
//! `SUBSCRIBE` with `id` (unique on the connection), `ack` (`auto`, the default; `client`: an
//! ACK covers that message and every earlier one of the subscription; `client-individual`),
//! an optional `partitions` (default 1) and a `destination`, either
//! `/subscriptions/{subscriberId}?types=Order,Customer&events=OrderCreated&from=beginning|end`
//! (`events` and `from` optional; `from` defaults to `beginning`; `durability=transient`
//! subscribes under a fresh id starting from the end) or Eventuate's JSON form
//! `{"subscriberId", "entityTypesAndEvents": {"Order": ["OrderCreated"]}, "options":
//! {"readFrom": "BEGINNING|END", "durability": "DURABLE|TRANSIENT"}}` (with `:` escaped as
//! `\c`, as STOMP 1.2 escapes header values). `from`/`readFrom` only matters the first time a
//! subscriber id is used: afterwards its checkpoint decides.
//!
//! Each `MESSAGE` carries `destination`, `message-id`, `subscription`, `ack` (in the client
//! modes), `content-type: application/json`, `content-length`, and as its body the event as
//! the REST API shows it: `{"id", "entityType", "entityId", "entityVersion", "eventType",
//! "eventData", "position", "metadata": {"timestamp", "causationId", "correlationId", ...}}`.
//!
//! ## Guarantees
//!
//! Delivery runs on the runtime ([`eventuate_core::Eventuate`]): one runtime per subscriber id
//! with a client in this process, with one subscriber that forwards to the clients (see the
//! `subscriptions` module). So the checkpoints, the leases shared by server processes, retries,
//! parking and replay are the runtime's.
//! - **At least once.** The checkpoint moves past an event only when the client has it: in
//!   `auto` once the MESSAGE is written to the socket, in the client modes on its ACK. Events
//!   committed while no client is connected are delivered when one subscribes again; a
//!   message not acknowledged when its client leaves goes to another client of the id, or is
//!   delivered again after a reconnect. Clients deduplicate by the event `id`.
//! - **Per-entity order.** A partition delivers one event at a time and waits for its
//!   acknowledgement: the window is **one unacknowledged message per partition** (raise
//!   `partitions` for parallelism; every client of an id must ask for the same count).
//!   Clients of one id in one process share its partitions (partition `p` goes to client `p %
//!   clients`, in subscription order); across processes, partitions are leased.
//! - **NACK** fails the delivery: the runtime retries with backoff ([`StompOptions::retry`])
//!   and then parks the event (kept with the subscriber's state in the subscription store;
//!   the REST operations routes do not list STOMP subscribers yet); later events of the same
//!   entity wait behind it.
//! - **A client that leaves** with an unacknowledged message: the message goes to another
//!   client of the id in this process; if none is left, the delivery fails (a first attempt
//!   is not persisted, so it does not count towards parking; a retry that was already under
//!   way does) and the id's runtime shuts down gracefully with its checkpoint before the
//!   message, which is delivered again when a client subscribes.
//!
//! ## Protocol
//!
//! `CONNECT`/`STOMP` negotiate the highest common version (no `accept-version` means 1.0);
//! none in common is an ERROR with `version:1.0,1.1,1.2`. Heart-beats are negotiated as the
//! specification says and a client's are allowed twice their interval; a client that
//! negotiates none is closed after [`StompOptions::idle_timeout`] without traffic. Any frame
//! with `receipt` gets a RECEIPT (a SUBSCRIBE's once the subscription is stored). `SEND` is
//! refused (append over REST), and so are `BEGIN`, `COMMIT` and `ABORT`. A protocol error is
//! an ERROR (with `message`, and `receipt-id` if asked) and then the connection is closed.

pub mod frame;
mod session;
mod subscriptions;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventuate_core::EventStore;
use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::subscriber::RetryPolicy;
use eventuate_core::subscription_store::SubscriptionStore;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub use frame::FrameLimits;

/// The STOMP server's settings.
#[derive(Clone, Debug)]
pub struct StompOptions {
    /// Frame limits (line length, header count, body size).
    pub limits: FrameLimits,
    /// Most connections served at once (default 1024); more wait to be accepted.
    pub max_connections: usize,
    /// The heart-beats the server offers in CONNECTED: (how often it can send, how often it
    /// wants to hear from the client); default 10 s each. 0 disables.
    pub heart_beat: (Duration, Duration),
    /// A client that negotiated no heart-beats is closed after this long without traffic in
    /// either direction (default 5 minutes); also the time a new connection has to CONNECT.
    pub idle_timeout: Duration,
    /// Longest one write to a client may take (default 30 s): a client that does not read is
    /// closed, and its unacknowledged messages are delivered again.
    pub write_timeout: Duration,
    /// The options of the runtime run for each subscriber id (lease TTL, poll interval,
    /// node id, shutdown timeout).
    pub runtime: RuntimeOptions,
    /// Retries after a NACK before the event is parked.
    pub retry: RetryPolicy,
}

impl Default for StompOptions {
    fn default() -> Self {
        StompOptions {
            limits: FrameLimits::default(),
            max_connections: 1024,
            heart_beat: (Duration::from_secs(10), Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            runtime: RuntimeOptions::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// The STOMP server over an event store and the subscription store that keeps its
/// subscribers' checkpoints, leases and parked events (for PostgreSQL, the same
/// `PostgresEventStore` twice).
#[derive(Clone)]
pub struct StompServer {
    store: Arc<dyn EventStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    options: StompOptions,
}

impl std::fmt::Debug for StompServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StompServer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl StompServer {
    /// A STOMP server with default options.
    pub fn new(store: Arc<dyn EventStore>, subscriptions: Arc<dyn SubscriptionStore>) -> Self {
        StompServer {
            store,
            subscriptions,
            options: StompOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: StompOptions) -> Self {
        self.options = options;
        self
    }

    /// Serves STOMP on `listener` until `shutdown` completes; then sends every client an
    /// ERROR saying so, closes the connections, and shuts the subscribers' runtimes down
    /// (their checkpoints saved; unacknowledged messages are delivered again later).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let options = Arc::new(self.options.clone());
        let registry = Arc::new(subscriptions::Registry::new(
            self.store.clone(),
            self.subscriptions.clone(),
            options.runtime.clone(),
            options.retry,
        ));
        let max = options.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(max));
        let (stop, stopped) = watch::channel(false);
        let serial = AtomicU64::new(0);
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "STOMP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let serial = serial.fetch_add(1, Ordering::Relaxed);
            let (options, registry, stopped) = (options.clone(), registry.clone(), stopped.clone());
            tokio::spawn(async move {
                let _permit = permit;
                session::run(stream, serial, options, registry, stopped).await;
            });
        }
        drop(listener);
        stop.send_replace(true);
        let drain = options.write_timeout + Duration::from_secs(1);
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(drain, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("STOMP shutdown: connections still open after {drain:?}");
        }
        registry.drain().await;
        Ok(())
    }
}
