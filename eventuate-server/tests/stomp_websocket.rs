//! STOMP over WebSocket (`GET /stomp` on the HTTP listener): a Rust WebSocket client
//! (tokio-tungstenite) checks subprotocol negotiation, frames split over and combined in
//! messages, heart-beat messages, client acknowledgements and redelivery after a reconnect;
//! then a real headless Chromium runs a page whose plain-JS STOMP client subscribes with client
//! acknowledgements (the page is served here; `cdp_page.py` drives it over the DevTools
//! protocol). The browser test needs Debian's `chromium` and Python's `websocket-client`
//! (`.ci/run` installs both) and fails, saying how to install them, when either is missing.

#[allow(dead_code)]
mod chromium_support;
#[allow(dead_code)]
mod stomp_support;

use std::net::SocketAddr;
use std::time::Duration;

use eventuate_server::StompOptions;
use eventuate_server::stomp::frame::{Decoded, Frame, FrameLimits, decode};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stomp_support::{Harness, WAIT, bounded, options, path};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A STOMP client over a WebSocket.
struct WsClient {
    ws: WebSocketStream<TcpStream>,
    /// The subprotocol the server chose.
    protocol: Option<String>,
    buffer: Vec<u8>,
    /// Messages that held nothing but an EOL.
    heart_beats: usize,
}

impl WsClient {
    async fn connect(http: SocketAddr, protocols: &str) -> WsClient {
        let stream = TcpStream::connect(http).await.expect("connect");
        let mut request = format!("ws://{http}/stomp")
            .into_client_request()
            .expect("request");
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                protocols.parse().expect("header value"),
            );
        }
        let (ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("WebSocket handshake");
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|p| p.to_str().expect("ASCII").to_owned());
        WsClient {
            ws,
            protocol,
            buffer: Vec::new(),
            heart_beats: 0,
        }
    }

    async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    async fn send(&mut self, frame: Frame) {
        let bytes = frame.encode();
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    /// The next frame; panics after `WAIT`.
    async fn frame(&mut self) -> Frame {
        self.try_frame(WAIT)
            .await
            .unwrap_or_else(|| panic!("no frame within {WAIT:?}"))
    }

    async fn try_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match decode(&self.buffer, &FrameLimits::default()).expect("the server's frames decode")
            {
                Decoded::Frame(frame, used) => {
                    self.buffer.drain(..used);
                    return Some(frame);
                }
                Decoded::HeartBeat(used) => {
                    self.buffer.drain(..used);
                    continue;
                }
                Decoded::Incomplete => {}
            }
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(message))) => message,
                _ => return None,
            };
            match message {
                Message::Text(text) => {
                    if text.as_str() == "\n" {
                        self.heart_beats += 1;
                    }
                    self.buffer.extend_from_slice(text.as_bytes());
                }
                Message::Binary(bytes) => self.buffer.extend_from_slice(&bytes),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    async fn message(&mut self) -> (Frame, Value) {
        let frame = self.frame().await;
        assert_eq!(frame.command, "MESSAGE", "{frame:?}");
        let body = serde_json::from_slice(&frame.body).expect("a JSON body");
        (frame, body)
    }

    async fn ack(&mut self, frame: &Frame) {
        let ack = frame.get("ack").expect("an ack header");
        self.send(Frame::new("ACK").header("id", ack)).await;
    }

    async fn subscribe(&mut self, id: &str, destination: &str) {
        let subscribe = Frame::new("SUBSCRIBE")
            .header("id", id)
            .header("destination", destination)
            .header("ack", "client-individual")
            .header("receipt", format!("sub-{id}"));
        // Two frames' worth in one message: the SUBSCRIBE and a heart-beat EOL after it.
        let mut bytes = subscribe.encode();
        bytes.push(b'\n');
        self.ws.send(Message::binary(bytes)).await.expect("send");
        let receipt = self.frame().await;
        assert_eq!(receipt.command, "RECEIPT", "{receipt:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_negotiate_ack_and_redeliver_after_reconnect() {
    bounded(async {
        let h = Harness::start(StompOptions {
            heart_beat: (Duration::from_millis(100), Duration::from_secs(10)),
            ..options()
        })
        .await;
        h.append("Order", "o-1", &[("E1", json!({})), ("E2", json!({}))])
            .await;
        let dest = path("web", "types=Order");

        // The highest subprotocol offered wins; its version stands in for a CONNECT without
        // accept-version, which arrives split over two messages.
        let mut c = WsClient::connect(h.http, "v10.stomp, v12.stomp").await;
        assert_eq!(c.protocol.as_deref(), Some("v12.stomp"));
        c.send_text("CONN").await;
        c.send_text("ECT\nhost:localhost\nheart-beat:0,100\n\n\0")
            .await;
        let connected = c.frame().await;
        assert_eq!(connected.command, "CONNECTED", "{connected:?}");
        assert_eq!(connected.get("version"), Some("1.2"));
        assert_eq!(connected.get("heart-beat"), Some("100,10000"));
        c.subscribe("w", &dest).await;
        let (m1, b1) = c.message().await;
        assert_eq!(b1["entityVersion"], 1);
        c.ack(&m1).await;
        let (_m2, b2) = c.message().await;
        assert_eq!(b2["entityVersion"], 2);
        // The server's heart-beats are messages holding one EOL.
        let deadline = tokio::time::Instant::now() + WAIT;
        while c.heart_beats == 0 && tokio::time::Instant::now() < deadline {
            assert!(
                c.try_frame(Duration::from_millis(150)).await.is_none(),
                "no other frame"
            );
        }
        assert!(c.heart_beats > 0, "heart-beat messages arrive every 100 ms");
        // Gone without acknowledging E2.
        drop(c);

        h.append("Order", "o-1", &[("E3", json!({}))]).await;
        let mut c = WsClient::connect(h.http, "v11.stomp").await;
        assert_eq!(c.protocol.as_deref(), Some("v11.stomp"));
        c.send(
            Frame::new("CONNECT")
                .header("host", "localhost")
                .header("heart-beat", "0,0"),
        )
        .await;
        let connected = c.frame().await;
        assert_eq!(connected.get("version"), Some("1.1"));
        c.subscribe("w", &dest).await;
        let (m, b) = c.message().await;
        assert_eq!(b["id"], b2["id"], "the unacknowledged message again");
        c.ack(&m).await;
        let (m, b) = c.message().await;
        assert_eq!(b["entityVersion"], 3);
        c.ack(&m).await;
        c.send(Frame::new("DISCONNECT").header("receipt", "bye"))
            .await;
        let receipt = c.frame().await;
        assert_eq!(
            (receipt.command.as_str(), receipt.get("receipt-id")),
            ("RECEIPT", Some("bye"))
        );

        // Without a subprotocol the session is plain STOMP (version from accept-version).
        let mut c = WsClient::connect(h.http, "").await;
        assert_eq!(c.protocol, None);
        c.send(
            Frame::new("CONNECT")
                .header("accept-version", "1.0,1.1")
                .header("host", "localhost"),
        )
        .await;
        assert_eq!(c.frame().await.get("version"), Some("1.1"));
        h.stop().await;
    })
    .await;
}

/// The test page: a minimal STOMP-over-WebSocket client in plain JS (text frames split on
/// NUL, which the server's JSON bodies never hold), subscribing with client-individual acks
/// and recording what it received in `window.stompTest`.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>STOMP over WebSocket</title></head>
<body><pre id="log"></pre><script>
const params = new URLSearchParams(location.search);
const expected = Number(params.get("expect"));
const state = window.stompTest = { protocol: null, version: null, received: [], errors: [], done: false };
const log = (line) => { document.getElementById("log").textContent += line + "\n"; };
const escapeValue = (v) => String(v).replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\r/g, "\\r").replace(/:/g, "\\c");
const unescapeValue = (v) => v.replace(/\\(.)/g, (_, c) => ({ "\\": "\\", n: "\n", r: "\r", c: ":" })[c]);
function frame(command, headers, escape) {
  let text = command + "\n";
  for (const [name, value] of Object.entries(headers)) {
    text += name + ":" + (escape ? escapeValue(value) : value) + "\n";
  }
  return text + "\n\0";
}
function parse(text) {
  const split = text.indexOf("\n\n");
  const lines = text.slice(0, split).split("\n");
  const command = lines.shift();
  const headers = {};
  for (const line of lines) {
    const colon = line.indexOf(":");
    const name = unescapeValue(line.slice(0, colon));
    if (!(name in headers)) headers[name] = unescapeValue(line.slice(colon + 1));
  }
  return { command, headers, body: text.slice(split + 2) };
}
const ws = new WebSocket(params.get("ws"), ["v12.stomp", "v11.stomp", "v10.stomp"]);
let buffer = "";
ws.onopen = () => {
  state.protocol = ws.protocol;
  ws.send(frame("CONNECT", { "accept-version": "1.2,1.1,1.0", host: "localhost", "heart-beat": "0,0" }, false));
};
ws.onerror = () => state.errors.push("websocket error");
ws.onmessage = (message) => {
  buffer += message.data;
  for (;;) {
    buffer = buffer.replace(/^[\r\n]+/, "");
    const end = buffer.indexOf("\0");
    if (end < 0) return;
    const received = parse(buffer.slice(0, end).replace(/\r\n/g, "\n"));
    buffer = buffer.slice(end + 1);
    handle(received);
  }
};
function handle(f) {
  log(f.command);
  if (f.command === "CONNECTED") {
    state.version = f.headers.version;
    ws.send(frame("SUBSCRIBE", { id: "page", destination: params.get("destination"), ack: "client-individual" }, true));
  } else if (f.command === "MESSAGE") {
    const event = JSON.parse(f.body);
    state.received.push({ id: event.id, entityId: event.entityId, entityVersion: event.entityVersion, eventType: event.eventType, eventData: event.eventData });
    ws.send(frame("ACK", { id: f.headers.ack }, true));
    if (state.received.length === expected) ws.send(frame("DISCONNECT", { receipt: "bye" }, true));
  } else if (f.command === "RECEIPT" && f.headers["receipt-id"] === "bye") {
    state.done = true;
    document.title = "done";
    ws.close();
  } else if (f.command === "ERROR") {
    state.errors.push(f.headers.message + ": " + f.body);
  }
}
</script></body></html>
"#;

/// Serves [`PAGE`] on a port of its own; returns its address.
async fn serve_page() -> SocketAddr {
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Loads the page in Chromium until it has received `expect` events; its `stompTest`.
async fn run_page(
    browser: &chromium_support::Browser,
    page: SocketAddr,
    h: &Harness,
    destination: &str,
    expect: usize,
) -> Value {
    let mut url = url_query(&[
        ("ws", &format!("ws://{}/stomp", h.http)),
        ("destination", destination),
        ("expect", &expect.to_string()),
    ]);
    url.insert_str(0, &format!("http://{page}/?"));
    let result = chromium_support::cdp_page(
        browser,
        &url,
        "window.stompTest.done || window.stompTest.errors.length > 0",
        "window.stompTest",
    )
    .await;
    assert_eq!(result["errors"], json!([]), "{result}");
    result
}

fn url_query(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_page_subscribes_over_websocket_with_client_acks() {
    chromium_support::python_with_websocket();
    let browser = chromium_support::launch_chromium();
    bounded(async {
        let h = Harness::start(options()).await;
        h.append("Order", "o-1", &[("OrderCreated", json!({"total": 5}))])
            .await;
        h.append(
            "Order",
            "o-2",
            &[
                ("OrderCreated", json!({"total": 7})),
                ("OrderShipped", json!({})),
            ],
        )
        .await;
        let page = serve_page().await;
        let dest = path("browser", "types=Order");
        let first = run_page(&browser, page, &h, &dest, 3).await;
        assert_eq!(first["protocol"], "v12.stomp");
        assert_eq!(first["version"], "1.2");
        let got: Vec<(Value, Value, Value)> = first["received"]
            .as_array()
            .expect("received")
            .iter()
            .map(|e| {
                (
                    e["entityId"].clone(),
                    e["entityVersion"].clone(),
                    e["eventType"].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (json!("o-1"), json!(1), json!("OrderCreated")),
                (json!("o-2"), json!(1), json!("OrderCreated")),
                (json!("o-2"), json!(2), json!("OrderShipped")),
            ]
        );
        assert_eq!(first["received"][1]["eventData"], json!({"total": 7}));
        // The page's ACKs moved the checkpoint: the next visit gets only what is new.
        h.append("Order", "o-3", &[("OrderCreated", json!({"total": 1}))])
            .await;
        let second = run_page(&browser, page, &h, &dest, 1).await;
        assert_eq!(second["received"].as_array().map(Vec::len), Some(1));
        assert_eq!(second["received"][0]["entityId"], "o-3");
        h.stop().await;
    })
    .await;
}
