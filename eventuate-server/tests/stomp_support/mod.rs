//! What the STOMP tests share: a harness serving STOMP (TCP, and WebSocket on the HTTP
//! listener) and REST over a throwaway PostgreSQL, and a raw STOMP client over TCP whose frames
//! are decoded by the server's own codec. Every test is bounded by `LIMIT`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::subscriber::RetryPolicy;
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::{TestDatabase, test_database};
use eventuate_server::stomp::frame::{Decoded, Frame, FrameLimits, decode};
use eventuate_server::{Server, StompOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

pub const LIMIT: Duration = Duration::from_secs(60);
pub const WAIT: Duration = Duration::from_secs(10);

/// A STOMP server on a TCP port and the REST server (with `GET /stomp` and the operations
/// routes for the STOMP subscribers) on another, over one throwaway PostgreSQL.
pub struct Harness {
    pub _db: TestDatabase,
    pub store: PostgresEventStore,
    /// The STOMP TCP listener.
    pub addr: SocketAddr,
    /// The HTTP listener (`ws://{http}/stomp`).
    pub http: SocketAddr,
    pub rest: axum::Router,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    http_served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn options() -> StompOptions {
    StompOptions {
        runtime: RuntimeOptions {
            poll_interval: Duration::from_millis(100),
            lease_ttl: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
            ..RuntimeOptions::default()
        },
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        },
        ..StompOptions::default()
    }
}

impl Harness {
    pub async fn start(options: StompOptions) -> Harness {
        let db = test_database().await;
        let store = PostgresEventStore::builder()
            .migrate_on_connect(true)
            .max_connections(8)
            .connect(&db.url)
            .await
            .expect("store");
        let server = Server::new(Arc::new(store.clone()));
        let stomp = server.stomp(Arc::new(store.clone())).options(options);
        let server = server.stomp_over_websocket(&stomp);
        let rest = server.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http = http_listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let stomp_stopped = until(stopped.clone());
        let served = tokio::spawn(async move { stomp.serve(listener, stomp_stopped).await });
        let http_stopped = until(stopped);
        let http_served =
            tokio::spawn(async move { server.serve(http_listener, http_stopped).await });
        Harness {
            _db: db,
            store,
            addr,
            http,
            rest,
            stop: Some(stop),
            served: Some(served),
            http_served: Some(http_served),
        }
    }

    /// Creates or appends to an entity over REST; returns the event ids.
    pub async fn append(&self, entity_type: &str, entity_id: &str, events: &[(&str, Value)]) {
        let events: Vec<Value> = events
            .iter()
            .map(|(t, d)| json!({"eventType": t, "eventData": d}))
            .collect();
        let current = self
            .call("GET", &format!("/entities/{entity_type}/{entity_id}"), None)
            .await;
        let (uri, body) = if current.0 == StatusCode::NOT_FOUND {
            (
                format!("/entities/{entity_type}"),
                json!({"entityId": entity_id, "events": events}),
            )
        } else {
            (
                format!("/entities/{entity_type}/{entity_id}"),
                json!({"expectedVersion": current.1["entityVersion"], "events": events}),
            )
        };
        let (status, reply) = self.call("POST", &uri, Some(body)).await;
        assert!(status.is_success(), "{status} {reply}");
    }

    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let response = self
            .rest
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(WAIT * 2, served)
                .await
                .expect("the STOMP server stops in time")
                .expect("join")
                .expect("serve");
        }
        if let Some(served) = self.http_served.take() {
            tokio::time::timeout(WAIT * 2, served)
                .await
                .expect("the HTTP server stops in time")
                .expect("join")
                .expect("serve");
        }
    }
}

/// A raw STOMP client.
pub struct Client {
    pub stream: TcpStream,
    pub buffer: Vec<u8>,
    pub heart_beats: usize,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Client {
            stream,
            buffer: Vec::new(),
            heart_beats: 0,
        }
    }

    /// Connects and sends CONNECT (1.2, no heart-beats), expecting CONNECTED.
    pub async fn connected(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr).await;
        client
            .send_raw(b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0")
            .await;
        let connected = client.frame().await;
        assert_eq!(connected.command, "CONNECTED", "{connected:?}");
        client
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, frame: Frame) {
        self.send_raw(&frame.encode()).await;
    }

    /// The next frame (heart-beats counted, not returned); panics after `WAIT`.
    pub async fn frame(&mut self) -> Frame {
        self.try_frame(WAIT)
            .await
            .unwrap_or_else(|| panic!("no frame within {WAIT:?}"))
    }

    /// The next frame within `within`, or `None` (timeout or closed connection).
    pub async fn try_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match decode(&self.buffer, &FrameLimits::default()).expect("the server's frames decode")
            {
                Decoded::Frame(frame, used) => {
                    self.buffer.drain(..used);
                    return Some(frame);
                }
                Decoded::HeartBeat(used) => {
                    self.heart_beats += used;
                    self.buffer.drain(..used);
                    continue;
                }
                Decoded::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the server closes the connection within `within` (frames before it skipped).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    pub async fn subscribe(
        &mut self,
        id: &str,
        destination: &str,
        ack: &str,
        extra: &[(&str, &str)],
    ) {
        let mut frame = Frame::new("SUBSCRIBE")
            .header("id", id)
            .header("destination", destination)
            .header("ack", ack)
            .header("receipt", format!("sub-{id}"));
        for (name, value) in extra {
            frame = frame.header(*name, *value);
        }
        self.send(frame).await;
        let receipt = self.frame().await;
        assert_eq!(receipt.command, "RECEIPT", "{receipt:?}");
        assert_eq!(receipt.get("receipt-id"), Some(&*format!("sub-{id}")));
    }

    /// The next MESSAGE, with its body as JSON.
    pub async fn message(&mut self) -> (Frame, Value) {
        let frame = self.frame().await;
        assert_eq!(frame.command, "MESSAGE", "{frame:?}");
        let body = serde_json::from_slice(&frame.body).expect("a JSON body");
        (frame, body)
    }

    pub async fn ack(&mut self, frame: &Frame, command: &str) {
        let ack = frame.get("ack").expect("an ack header");
        self.send(Frame::new(command).header("id", ack)).await;
    }
}

pub fn path(id: &str, query: &str) -> String {
    format!("/subscriptions/{id}?{query}")
}

pub async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test finishes within its limit");
}
