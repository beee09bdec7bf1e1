//! The STOMP server: durable, named subscriptions to the store's events over STOMP 1.0, 1.1
//! and 1.2 (Eventuate's STOMP interface; port 61614 by convention), on a TCP listener and over
//! WebSocket on the HTTP listener ([`websocket`], `GET /stomp`). The session logic is one,
//! over a transport that hands it bytes and writes frames (the `transport` module).
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
//! an optional `partitions` (default 1), an optional `prefetch-count` (the window, default 1,
//! at most [`StompOptions::max_prefetch`]) and a `destination`, either
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
//! - **Per-entity order.** A partition sends its messages in stream order and has at most
//!   `prefetch-count` of them unacknowledged (default 1: one message, then its
//!   acknowledgement; raise `partitions` for parallelism; every client of an id must ask for
//!   the same types, `partitions` and `prefetch-count`).
//! - **The window** (`prefetch-count` above 1) runs on the runtime's batch delivery: runs of up
//!   to that many consecutive events of a partition are sent at once and settle in order, so
//!   the checkpoint moves only over the contiguous acknowledged prefix. A message after a
//!   NACKed one (or after one unacknowledged when its client leaves) is delivered again even
//!   if it was acknowledged: at least once.
//!   Clients of one id in one process share its partitions (partition `p` goes to client `p %
//!   clients`, in subscription order); across processes, partitions are leased.
//! - **NACK** fails the delivery: the runtime retries with backoff ([`StompOptions::retry`])
//!   and then parks the event (kept with the subscriber's state in the subscription store);
//!   later events of the same entity wait behind it. With
//!   [`crate::Server::stomp_over_websocket`], the REST operations routes list this server's
//!   STOMP subscribers and list, replay and skip their parked events.
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
pub(crate) mod subscriptions;
mod transport;
pub mod websocket;

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use frame::FrameLimits;

/// The STOMP server's settings.
#[derive(Clone, Debug)]
pub struct StompOptions {
    /// Frame limits (line length, header count, body size).
    pub limits: FrameLimits,
    /// Most connections served at once, TCP and WebSocket together (default 1024); more TCP
    /// connections wait to be accepted, more WebSocket ones get an ERROR.
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
    /// The largest `prefetch-count` a SUBSCRIBE may ask for (default 256): how many
    /// unacknowledged messages one partition may have out at once.
    pub max_prefetch: usize,
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
            max_prefetch: 256,
        }
    }
}

/// The STOMP server over an event store and the subscription store that keeps its
/// subscribers' checkpoints, leases and parked events (for PostgreSQL, the same
/// `PostgresEventStore` twice). Clones share the subscriptions, connections and shutdown.
#[derive(Clone)]
pub struct StompServer {
    store: Arc<dyn EventStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    shared: Arc<Shared>,
}

/// What the TCP listener, the WebSocket route and the operations routes share.
pub(crate) struct Shared {
    options: Arc<StompOptions>,
    pub(crate) registry: Arc<subscriptions::Registry>,
    permits: Arc<Semaphore>,
    max: usize,
    stop: watch::Sender<bool>,
    serial: AtomicU64,
}

impl std::fmt::Debug for StompServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StompServer")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl StompServer {
    /// A STOMP server with default options.
    pub fn new(store: Arc<dyn EventStore>, subscriptions: Arc<dyn SubscriptionStore>) -> Self {
        let shared = Self::shared(&store, &subscriptions, StompOptions::default());
        StompServer {
            store,
            subscriptions,
            shared,
        }
    }

    fn shared(
        store: &Arc<dyn EventStore>,
        subscriptions: &Arc<dyn SubscriptionStore>,
        options: StompOptions,
    ) -> Arc<Shared> {
        let registry = Arc::new(subscriptions::Registry::new(
            store.clone(),
            subscriptions.clone(),
            options.runtime.clone(),
            options.retry,
        ));
        let max = options.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Shared {
            options: Arc::new(options),
            registry,
            permits: Arc::new(Semaphore::new(max)),
            max,
            stop: watch::channel(false).0,
            serial: AtomicU64::new(0),
        })
    }

    /// Replaces the options (before serving: a server with new options is a new server).
    pub fn options(self, options: StompOptions) -> Self {
        let shared = Self::shared(&self.store, &self.subscriptions, options);
        StompServer { shared, ..self }
    }

    /// The options.
    pub fn server_options(&self) -> &StompOptions {
        &self.shared.options
    }

    pub(crate) fn registry(&self) -> &Arc<subscriptions::Registry> {
        &self.shared.registry
    }

    /// Serves STOMP on `listener` until `shutdown` completes; then stops the whole STOMP
    /// server as [`StompServer::shutdown`] does (WebSocket sessions too).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        tokio::pin!(shutdown);
        let mut stopped = self.shared.stop.subscribe();
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                () = stopping(&mut stopped) => break,
                permit = self.shared.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                () = &mut shutdown => break,
                () = stopping(&mut stopped) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "STOMP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let (reader, writer) = stream.into_split();
            let this = self.clone();
            tokio::spawn(async move {
                this.run(permit, transport::TcpIncoming::new(reader), writer, None)
                    .await;
            });
        }
        drop(listener);
        self.shutdown().await;
        Ok(())
    }

    /// Stops the STOMP server: sends every client (TCP and WebSocket) an ERROR saying so,
    /// closes the connections, refuses new ones, and shuts the subscribers' runtimes down
    /// (their checkpoints saved; unacknowledged messages are delivered again later).
    pub async fn shutdown(&self) {
        self.shared.stop.send_replace(true);
        let drain = self.shared.options.write_timeout + Duration::from_secs(1);
        let all = u32::try_from(self.shared.max).unwrap_or(u32::MAX);
        match tokio::time::timeout(drain, self.shared.permits.acquire_many(all)).await {
            // Keep them: nothing is served after a shutdown.
            Ok(Ok(permits)) => permits.forget(),
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!("STOMP shutdown: connections still open after {drain:?}"),
        }
        self.shared.registry.drain().await;
    }

    /// Serves one WebSocket session (see [`websocket`]): at the connection cap, or once shut
    /// down, the client gets an ERROR and the connection is closed.
    pub(crate) async fn serve_session(
        &self,
        incoming: impl transport::Incoming,
        mut outgoing: impl transport::Outgoing,
        implied_version: Option<&'static str>,
    ) {
        let stopped = *self.shared.stop.borrow();
        let permit = match self.shared.permits.clone().try_acquire_owned() {
            Ok(permit) if !stopped => Some(permit),
            _ => None,
        };
        let Some(permit) = permit else {
            let (message, detail) = if stopped {
                (
                    "the server is shutting down",
                    "reconnect to another server or later",
                )
            } else {
                (
                    "too many connections",
                    "the STOMP server is at its connection limit; try again later",
                )
            };
            let refusal = frame::Frame::new("ERROR")
                .header("message", message)
                .header("content-type", "text/plain")
                .body(detail.as_bytes().to_vec());
            let _ = outgoing.write(refusal.encode()).await;
            outgoing.close().await;
            return;
        };
        self.run(permit, incoming, outgoing, implied_version).await;
    }

    async fn run(
        &self,
        permit: OwnedSemaphorePermit,
        incoming: impl transport::Incoming,
        outgoing: impl transport::Outgoing,
        implied_version: Option<&'static str>,
    ) {
        let _permit = permit;
        let serial = self.shared.serial.fetch_add(1, Ordering::Relaxed);
        session::run(
            incoming,
            outgoing,
            serial,
            self.shared.options.clone(),
            self.shared.registry.clone(),
            self.shared.stop.subscribe(),
            implied_version,
        )
        .await;
    }
}

/// Completes once the server is told to stop.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
