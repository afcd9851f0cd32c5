//! One client connection, and the registration that keeps the user routed while any of its
//! connections is open. Its parts, one job each: [`reader`] parses and answers frames,
//! [`writer`] drains the bounded send queue in batches (one flush per batch, not per frame),
//! [`resume`] replays history at the start of a resumed connection, [`rooms`] handles room
//! frames.

mod gate;
mod reader;
mod resume;
mod rooms;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{debug, debug_span, Instrument};
use uuid::Uuid;

use super::Node;
use crate::broker::Registered;
use crate::hub::{CloseReason, Outbox, Queued, SessionCtl};
use crate::protocol::{self, FrameError};
pub(crate) use resume::Resume;
use resume::Replay;

/// How long the closing handshake may take before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// On drain, how long the reader waits for its publishes' outcomes so that every send is answered
/// before the 1012: a routing batch's deadline plus slack. The writer keeps writing as long.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection's place in the hub and, through the broker, in the route table. Dropping it
/// without [`Registration::release`] (a failed upgrade) still removes it.
pub(crate) struct Registration {
    node: Arc<Node>,
    user: Arc<str>,
    conn: Uuid,
    outbox: Outbox,
    /// Which rooms it may join and send to.
    gate: Arc<gate::RoomGate>,
    released: bool,
}

impl Registration {
    /// `grants`: the token's room grants (None: auth off); `ip`: the client's, for the join proxy.
    pub(crate) fn new(node: Arc<Node>, user: Arc<str>, conn: Uuid, outbox: Outbox, grants: Option<crate::room_access::Grants>, ip: std::net::IpAddr) -> Self {
        let gate = Arc::new(gate::RoomGate::new(grants, node.security.room_policy, ip));
        Registration { node, user, conn, outbox, gate, released: false }
    }

    /// Adds the connection to the hub and waits (bounded) until the route table has the user, so
    /// a client that sees its upgrade is routable from every node. Every connection waits, not
    /// only the user's first here: a second connection made while the first one's route write is
    /// in flight must not see its upgrade before that write is confirmed.
    pub(crate) async fn register(&self) -> Registered {
        self.node.hub.add(&self.user, self.conn, self.outbox.clone());
        self.node.broker.register(&self.user).await
    }

    /// Answers a bad or failed frame with an `error` frame, and counts it.
    fn reject(&self, id: Option<&RawValue>, err: &FrameError) {
        self.node.metrics.bad_frames.inc();
        self.outbox.offer(protocol::encode_error(id, err), &self.node.metrics);
    }

    /// Removes the connection; the user's last connection here removes its route, any other
    /// updates its connection count (`user_conns:<u>`).
    fn release(mut self) {
        self.released = true;
        self.node.rooms.leave_all(self.conn);
        self.node.hub.remove(&self.user, self.conn);
        self.node.broker.unregister(&self.user);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.released {
            self.node.rooms.leave_all(self.conn);
        }
        if !self.released {
            self.node.hub.remove(&self.user, self.conn);
            self.node.broker.unregister(&self.user);
        }
    }
}


/// Runs the connection to its end. `routable`: the route table confirmed the connection; a
/// resume without that is answered `complete:false` (`unavailable`) without reading, since
/// messages stored after the read might reach neither the replay nor this connection.
pub(crate) async fn run(
    socket: WebSocket,
    reg: Registration,
    rx: mpsc::Receiver<Queued>,
    ctl: Arc<SessionCtl>,
    resume: Option<Resume>,
    routable: bool,
) {
    // Debug level: an enabled span keeps its formatted fields per connection (~0.5 KiB), which an
    // idle node cannot afford at 10k connections. RUST_LOG=wsctl=debug turns it on.
    let span = debug_span!("session", user = %reg.user, conn = %reg.conn);
    async move {
        debug!("connected");
        let node = reg.node.clone();
        let (sink, mut stream) = socket.split();
        let seen = Arc::new(Activity::new());
        let replay = resume.map(|resume| Replay { node: node.clone(), user: reg.user.clone(), resume, routable });
        let writer = node.sessions.spawn(writer::write_loop(sink, rx, ctl.clone(), seen.clone(), node.limits.clone(), replay).in_current_span());
        let end = reader::read_loop(&mut stream, &reg, &ctl, &seen).await;
        seen.reader_done.cancel();
        ctl.close_with(end);
        let reason = ctl.reason().unwrap_or(end);
        if reason.is_unexpected() {
            node.metrics.unexpected_disconnects.inc();
        }
        let _ = writer.await;
        if reason.close_frame().is_some() {
            await_close_echo(&mut stream, reason == CloseReason::TooLarge).await;
        }
        debug!(?reason, "disconnected");
        reg.release();
    }
    .instrument(span)
    .await
}

/// When the peer last sent anything, in milliseconds since the session started. Written by the
/// reader on every frame (a relaxed store), read by the writer at each ping: no timer per frame.
/// Also carries the reader's end, which the writer waits for on drain.
struct Activity {
    start: tokio::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
    reader_done: tokio_util::sync::CancellationToken,
}

impl Activity {
    fn new() -> Self {
        Activity { start: tokio::time::Instant::now(), last_ms: Default::default(), reader_done: Default::default() }
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

