//! STOMP over WebSocket on the HTTP listener: `GET /stomp` upgrades to a WebSocket that speaks
//! the same STOMP sessions as the TCP listener (the convention of stomp.js and of brokers'
//! Web-STOMP plugins). The subprotocols `v12.stomp`, `v11.stomp` and `v10.stomp` are offered,
//! the highest the client asks for is chosen, and its version stands in for a CONNECT without
//! `accept-version`. Frames travel as text messages (binary ones are read too); a frame split
//! over several messages, or several frames in one, decode as on TCP, and a message holding an
//! EOL alone is a heart-beat. Served when [`crate::Server::stomp_over_websocket`] names the
//! STOMP server; otherwise 404.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use super::transport::{Incoming, Outgoing};
use crate::AppState;
use crate::error::ApiError;

/// The subprotocols offered, most preferred first, with the STOMP version each names.
pub const SUBPROTOCOLS: [(&str, &str); 3] = [
    ("v12.stomp", "1.2"),
    ("v11.stomp", "1.1"),
    ("v10.stomp", "1.0"),
];

/// `GET /stomp`.
pub(crate) async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let Some(stomp) = state.stomp.clone() else {
        return ApiError::not_found(
            "this server serves no STOMP over WebSocket (eventuate_server::Server::stomp_over_websocket)",
        )
        .into_response();
    };
    // A frame may be split over messages, so a message needs no more room than a frame.
    let limits = &stomp.server_options().limits;
    let largest =
        limits.max_body + limits.max_headers.saturating_add(1) * (limits.max_line_length + 2) + 16;
    let ws = ws
        .protocols(SUBPROTOCOLS.map(|(name, _)| name))
        .max_message_size(largest)
        .max_frame_size(largest);
    let version = ws.selected_protocol().and_then(|chosen| {
        SUBPROTOCOLS
            .iter()
            .find(|(name, _)| chosen.as_bytes() == name.as_bytes())
            .map(|(_, version)| *version)
    });
    ws.on_upgrade(move |socket| async move {
        let (outgoing, incoming) = socket.split();
        stomp
            .serve_session(WsIncoming(incoming), WsOutgoing(outgoing), version)
            .await;
    })
}

struct WsIncoming(SplitStream<WebSocket>);

impl Incoming for WsIncoming {
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self.0.next().await? {
            Ok(Message::Text(text)) => Some(text.as_str().as_bytes().to_vec()),
            Ok(Message::Binary(bytes)) => Some(bytes.to_vec()),
            // Traffic all the same (for the idle limit); no STOMP bytes.
            Ok(Message::Ping(_) | Message::Pong(_)) => Some(Vec::new()),
            Ok(Message::Close(_)) | Err(_) => None,
        }
    }
}

struct WsOutgoing(SplitSink<WebSocket, Message>);

impl Outgoing for WsOutgoing {
    async fn write(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        let message = match String::from_utf8(bytes) {
            Ok(text) => Message::Text(text.into()),
            Err(e) => Message::Binary(e.into_bytes().into()),
        };
        self.0.send(message).await.map_err(std::io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.0.send(Message::Close(None)).await;
        let _ = self.0.close().await;
    }
}
