//! Plumbing for the stand-in WebSocket servers of the load tests (a faulty router in
//! tests/load.rs; relays that write JSON their own way and a server with history in
//! tests/load_wire.rs): a listener on a free port, the handshake's query, and each connection as a
//! writer task fed by a channel plus the text frames it reads. What a server does with the frames
//! stays in its test.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// What a connection's writer task sends, in order; a `Close` is the last frame it writes.
pub type Outbox = mpsc::UnboundedSender<Message>;

/// The connected users' outboxes, by user id.
pub type Users = Arc<Mutex<HashMap<String, Outbox>>>;

/// Listens on 127.0.0.1:0 and runs `connection` on every accepted stream, each in its own task.
pub async fn serve<F, Fut>(connection: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream));
        }
    });
    addr
}

/// One accepted WebSocket connection.
pub struct Conn {
    /// The handshake's query pairs, decoded, in order.
    pub query: Vec<(String, String)>,
    /// Frames to send to this connection.
    pub outbox: Outbox,
    frames: SplitStream<WebSocketStream<TcpStream>>,
    writer: JoinHandle<()>,
}

impl Conn {
    /// Completes the handshake on `stream` and starts the writer task; None if the handshake fails.
    // The handshake callback's error type is tungstenite's (an HTTP response), not ours.
    #[allow(clippy::result_large_err)]
    pub async fn accept(stream: TcpStream) -> Option<Conn> {
        let mut query = Vec::new();
        let cb = |req: &Request, resp: Response| {
            query = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
            Ok(resp)
        };
        let (mut sink, frames) = tokio_tungstenite::accept_hdr_async(stream, cb).await.ok()?.split();
        let (outbox, mut rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
        });
        Some(Conn { query, outbox, frames, writer })
    }

    /// The first query parameter named `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The next text frame, skipping others. None once the connection ends: on a close frame,
    /// which is echoed (after what is already queued), on an error, or at the end of the stream.
    pub async fn next_text(&mut self) -> Option<Utf8Bytes> {
        while let Some(Ok(m)) = self.frames.next().await {
            match m {
                Message::Text(t) => return Some(t),
                Message::Close(f) => {
                    let _ = self.outbox.send(Message::Close(f));
                    return None;
                }
                _ => {}
            }
        }
        None
    }

    /// Puts this connection's outbox in `users` under its `userId`, and returns the id.
    pub fn join(&self, users: &Users) -> String {
        let user = self.param("userId").unwrap_or_default().to_string();
        users.lock().unwrap().insert(user.clone(), self.outbox.clone());
        user
    }

    /// The next `chat_message` frame, parsed, with its `receiverID`; other text frames are
    /// skipped. None once the connection ends (see [`Conn::next_text`]).
    pub async fn next_chat(&mut self) -> Option<(String, serde_json::Value)> {
        while let Some(t) = self.next_text().await {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "chat_message" {
                return Some((v["receiverID"].as_str().unwrap().to_string(), v));
            }
        }
        None
    }

    /// Waits for the writer task: it ends after writing a close frame or when a write fails.
    pub async fn finish(self) {
        let _ = self.writer.await;
    }
}
