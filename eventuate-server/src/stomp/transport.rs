//! How a session reads and writes, whatever carries its frames: a TCP byte stream (frames
//! arrive in arbitrary pieces) or a WebSocket (one message per frame as a rule, but a frame
//! split over messages or several frames in one are decoded all the same). Reads hand the
//! session bytes for its frame decoder; each write is one encoded frame or a heart-beat EOL.

use std::future::Future;
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The client-to-server half.
pub(crate) trait Incoming: Send {
    /// The next bytes from the client; `None` once it closed the connection (or it failed).
    /// Cancel-safe: the session polls it in a `select!`.
    fn next(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// The server-to-client half, owned by the session's writer task.
pub(crate) trait Outgoing: Send + 'static {
    /// Writes one frame (or one heart-beat EOL).
    fn write(&mut self, bytes: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;

    /// Closes the connection after what was written.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// A TCP connection's read half.
pub(crate) struct TcpIncoming {
    half: OwnedReadHalf,
    chunk: Vec<u8>,
}

impl TcpIncoming {
    pub(crate) fn new(half: OwnedReadHalf) -> Self {
        TcpIncoming {
            half,
            chunk: vec![0u8; 16 << 10],
        }
    }
}

impl Incoming for TcpIncoming {
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self.half.read(&mut self.chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(self.chunk[..n].to_vec()),
        }
    }
}

impl Outgoing for OwnedWriteHalf {
    async fn write(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.write_all(&bytes).await
    }

    async fn close(&mut self) {
        let _ = self.shutdown().await;
    }
}
