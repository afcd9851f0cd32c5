//! One client connection: a reader task that parses and answers frames, a writer task that
//! drains the bounded send queue in batches (one flush per batch, not per frame), and the
//! registration that keeps the user routed while any of its connections is open.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, debug_span, Instrument};
use uuid::Uuid;

use super::Node;
use crate::broker::{EnqueueError, PublishReq};
use crate::hub::{Outbox, SessionCtl};
use crate::protocol::{self, close, ErrorCode, FrameError};

/// Frames written per flush at most: amortizes syscalls without starving the ping timer.
const WRITE_BATCH: usize = 64;
/// A write (batch, ping or close) that takes longer than this means the peer stopped reading
/// and its TCP window is full; the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing handshake may take before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Internal close markers (never sent): the peer closed with 1000/1001 ...
const PEER_GONE: u16 = 1;
/// ... the peer closed with another code or the connection broke ...
const PEER_BROKE: u16 = 2;
/// ... or it was idle past the limit (we send 1001).
const IDLE: u16 = 3;

/// A connection's place in the hub and, through the broker, in the route table. Dropping it
/// without [`Registration::release`] (a failed upgrade) still removes it.
pub(crate) struct Registration {
    node: Arc<Node>,
    user: Arc<str>,
    conn: Uuid,
    outbox: Outbox,
    released: bool,
}

impl Registration {
    pub(crate) fn new(node: Arc<Node>, user: Arc<str>, conn: Uuid, outbox: Outbox) -> Self {
        Registration { node, user, conn, outbox, released: false }
    }

    /// Adds the connection to the hub; the user's first connection here adds its route.
    pub(crate) async fn register(&self) {
        if self.node.hub.add(&self.user, self.conn, self.outbox.clone()) {
            self.node.broker.sync_user(&self.user).await;
        }
    }

    /// Answers a bad or failed frame with an `error` frame, and counts it.
    fn reject(&self, id: Option<&serde_json::value::RawValue>, err: &FrameError) {
        self.node.metrics.bad_frames.inc();
        self.outbox.offer(protocol::encode_error(id, err), &self.node.metrics);
    }

    /// Removes the connection; the user's last connection here removes its route.
    async fn release(mut self) {
        self.released = true;
        if self.node.hub.remove(&self.user, self.conn) {
            self.node.broker.sync_user_nowait(&self.user).await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.released && self.node.hub.remove(&self.user, self.conn) {
            let (broker, user) = (self.node.broker.clone(), self.user.clone());
            self.node.sessions.spawn(async move { broker.sync_user_nowait(&user).await });
        }
    }
}

/// Runs the connection to its end.
pub(crate) async fn run(socket: WebSocket, reg: Registration, rx: mpsc::Receiver<Bytes>, ctl: Arc<SessionCtl>) {
    // Debug level: an enabled span keeps its formatted fields per connection (~0.5 KiB), which an
    // idle node cannot afford at 10k connections. RUST_LOG=wsctl=debug turns it on.
    let span = debug_span!("session", user = %reg.user, conn = %reg.conn);
    async move {
        debug!("connected");
        let node = reg.node.clone();
        let (sink, mut stream) = socket.split();
        let seen = Arc::new(Activity::new());
        let writer = node.sessions.spawn(write_loop(sink, rx, ctl.clone(), seen.clone(), node.limits.clone()).in_current_span());
        let end = read_loop(&mut stream, &reg, &ctl, &seen).await;
        ctl.close_with(end);
        let code = ctl.code().unwrap_or(end);
        if !matches!(code, PEER_GONE | close::NORMAL | close::DRAINING) {
            node.metrics.unexpected_disconnects.inc();
        }
        let _ = writer.await;
        if !matches!(code, PEER_GONE | PEER_BROKE) {
            await_close_echo(&mut stream, code == close::TOO_LARGE).await;
        }
        debug!(code, "disconnected");
        reg.release().await;
    }
    .instrument(span)
    .await
}

/// Reads frames until the connection ends; returns the close code to send (or a PEER_* marker).
/// Every frame (pongs included) stamps `seen`; the writer closes connections that stay silent.
async fn read_loop(stream: &mut SplitStream<WebSocket>, reg: &Registration, ctl: &SessionCtl, seen: &Activity) -> u16 {
    // Pinned once: a fresh `closed()` future per frame would register with the token each time.
    let closed = ctl.closed();
    tokio::pin!(closed);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut closed => return ctl.code().unwrap_or(PEER_GONE),
            next = stream.next() => next,
        };
        seen.stamp();
        let msg = match next {
            None => return PEER_BROKE,
            Some(Err(e)) => return read_error(e, reg),
            Some(Ok(msg)) => msg,
        };
        match msg {
            Message::Text(t) => handle_frame(reg, t.as_bytes()),
            Message::Binary(b) => handle_frame(reg, &b),
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(frame) => {
                let code = frame.map_or(close::NORMAL, |f| f.code);
                return if matches!(code, close::NORMAL | close::GOING_AWAY) { PEER_GONE } else { PEER_BROKE };
            }
        }
    }
}

/// When the peer last sent anything, in milliseconds since the session started. Written by the
/// reader on every frame (a relaxed store), read by the writer at each ping: no timer per frame.
struct Activity {
    start: tokio::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { start: tokio::time::Instant::now(), last_ms: Default::default() }
    }
    fn stamp(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// We sent a close frame: read (and discard) until the peer's close or EOF, so the socket is not
/// dropped with unread data (which makes the kernel send RST, and the peer may then lose our
/// close frame). Bounded by [`CLOSE_TIMEOUT`].
/// After a frame over the limit the rest of it is still unread and tungstenite reports the
/// stream as ended, so wait out the timeout: the peer gets the time to read our close frame.
async fn await_close_echo(stream: &mut SplitStream<WebSocket>, unread_remains: bool) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(_))) => return,
                None if !unread_remains => return,
                None => std::future::pending::<()>().await,
                Some(Ok(_)) => {}
                // Unreadable (e.g. the rest of an oversized frame): give the peer the time to
                // read our close frame before the socket goes.
                Some(Err(_)) => std::future::pending::<()>().await,
            }
        }
    })
    .await;
}

/// A read error: a frame over the limit or invalid UTF-8 gets an error frame and its close code;
/// anything else means the connection broke.
fn read_error(e: axum::Error, reg: &Registration) -> u16 {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    let (err, code) = match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(c)) => (
            FrameError::new(ErrorCode::TooLarge, format!("frame too large: {c} (limit {} bytes)", reg.node.limits.max_frame)),
            close::TOO_LARGE,
        ),
        Some(WsError::Utf8(_)) => (FrameError::new(ErrorCode::InvalidUtf8, "text frame is not valid UTF-8"), close::INVALID_PAYLOAD),
        _ => {
            debug!(error = %inner, "connection broke");
            return PEER_BROKE;
        }
    };
    reg.reject(None, &err);
    code
}

/// Answers one client frame. Never waits: everything it sends goes through bounded queues.
fn handle_frame(reg: &Registration, bytes: &[u8]) {
    let node = &reg.node;
    let reply = |frame: Bytes| {
        reg.outbox.offer(frame, &node.metrics);
    };
    let fail = |id, err: FrameError| reg.reject(id, &err);
    let frame = match protocol::parse_client_frame(bytes) {
        Ok(f) => f,
        Err(err) => return fail(None, err),
    };
    let id = frame.id;
    match frame.kind.as_ref() {
        protocol::TYPE_CHAT => {
            let Some(receiver) = frame.receiver.filter(|r| !r.is_empty()) else {
                return fail(id, FrameError::new(ErrorCode::MissingReceiver, "chat_message needs a non-empty \"receiverID\""));
            };
            node.metrics.messages.inc();
            let ts = protocol::timestamp_now();
            let envelope = protocol::encode_envelope(protocol::TYPE_CHAT, frame.payload, &receiver, &reg.user, &ts);
            // Local receivers first, straight from the hub; never echoed to this connection.
            let local = node.hub.deliver(&receiver, &envelope, Some(reg.conn));
            let req = PublishReq {
                receiver: Arc::from(receiver.as_ref()),
                envelope,
                local,
                id: id.map(|i| i.to_owned()),
                reply_to: reg.outbox.clone(),
            };
            if let Err((e, req)) = node.broker.publish(req, &node.metrics) {
                let (code, msg) = match e {
                    EnqueueError::Overloaded => (ErrorCode::Overloaded, "node overloaded: message not sent to other nodes, retry later"),
                    _ => (ErrorCode::Unavailable, "node is shutting down: message not sent to other nodes"),
                };
                fail(req.id.as_deref(), FrameError::new(code, msg));
            }
        }
        protocol::TYPE_LATENCY => match protocol::parse_latency_ms(frame.payload) {
            Ok(ms) => {
                node.metrics.client_latency_ms.observe(ms);
                if let Some(id) = id {
                    reply(protocol::encode_ack(id, None));
                }
            }
            Err(err) => fail(id, err),
        },
        protocol::TYPE_HEARTBEAT => {
            node.broker.touch(&reg.user);
            if let Some(id) = id {
                reply(protocol::encode_ack(id, None));
            }
        }
        other => {
            let err = FrameError::new(ErrorCode::UnknownType, format!("unknown frame type {other:?}"));
            fail(id, err)
        }
    }
}

/// Writes queued frames in batches and pings; on close, flushes the queue if draining and sends
/// the close frame.
/// Also the idle check: at each ping tick, a connection silent for longer than the idle timeout
/// is closed (so it closes between `idle_timeout` and `idle_timeout + ping_interval`).
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Bytes>,
    ctl: Arc<SessionCtl>,
    seen: Arc<Activity>,
    limits: super::Limits,
) {
    // Grown by the first batch, not before: an idle connection should cost nothing here.
    let mut batch = Vec::new();
    let ping_every = limits.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closed = ctl.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    break;
                }
                if write_batch(&mut sink, &mut batch).await.is_err() {
                    ctl.close_with(PEER_BROKE);
                    return;
                }
            }
            _ = ping.tick() => {
                if seen.silent_for() > limits.idle_timeout {
                    debug!(idle = ?limits.idle_timeout, "idle timeout");
                    ctl.close_with(IDLE);
                    break;
                }
                if tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Bytes::new()))).await.map_or(true, |r| r.is_err()) {
                    ctl.close_with(PEER_BROKE);
                    return;
                }
            }
        }
    }
    match ctl.code() {
        Some(close::DRAINING) => {
            // Nothing already queued is lost on drain.
            while let Ok(f) = rx.try_recv() {
                batch.push(f);
                if batch.len() == WRITE_BATCH && write_batch(&mut sink, &mut batch).await.is_err() {
                    return;
                }
            }
            if write_batch(&mut sink, &mut batch).await.is_err() {
                return;
            }
            send_close(&mut sink, close::DRAINING, "node draining, reconnect").await;
        }
        Some(code @ (close::SLOW_CONSUMER | close::TOO_LARGE | close::INVALID_PAYLOAD | close::INTERNAL)) => {
            let reason = match code {
                close::SLOW_CONSUMER => "slow consumer: send queue overflowed",
                close::TOO_LARGE => "frame too large",
                close::INVALID_PAYLOAD => "invalid UTF-8",
                _ => "internal error",
            };
            // Error frames queued just before (too_large, invalid_utf8) go out first.
            if code != close::SLOW_CONSUMER {
                while let Ok(f) = rx.try_recv() {
                    batch.push(f);
                }
                let _ = write_batch(&mut sink, &mut batch).await;
            }
            send_close(&mut sink, code, reason).await;
        }
        Some(IDLE) => send_close(&mut sink, close::GOING_AWAY, "idle timeout").await,
        // The peer closed: tungstenite queued the echo of its close frame; flush it out so the
        // closing handshake completes (RFC 6455 5.5.1).
        _ => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        }
    }
}

async fn write_batch(sink: &mut SplitSink<WebSocket, Message>, batch: &mut Vec<Bytes>) -> Result<(), ()> {
    if batch.is_empty() {
        return Ok(());
    }
    let write = async {
        for frame in batch.drain(..) {
            // Every frame is JSON we wrote or an envelope that parsed as JSON: valid UTF-8.
            let text = Utf8Bytes::try_from(frame).map_err(|_| ())?;
            sink.feed(Message::Text(text)).await.map_err(|_| ())?;
        }
        sink.flush().await.map_err(|_| ())
    };
    tokio::time::timeout(WRITE_TIMEOUT, write).await.map_err(|_| ())?
}

async fn send_close(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(frame).await;
        let _ = sink.close().await;
    })
    .await;
}
