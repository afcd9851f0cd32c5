//! One client connection: a reader task that parses and answers frames, a writer task that
//! drains the bounded send queue in batches (one flush per batch, not per frame), and the
//! registration that keeps the user routed while any of its connections is open.
//!
//! A resume (`since`/`epoch` in the query, history on) is served by the writer: it waits
//! (bounded) for the history read, writes the replay and the `recovery` frame, and only then
//! drains the queue, where live frames wait meanwhile. The connection is registered before the
//! read, so a message is either in what was read or arrives live; live frames already replayed
//! (offset at or below the replay's last) are skipped at the seam.

mod rooms;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{debug, debug_span, Instrument};
use uuid::Uuid;

use super::ratelimit::Verdict;
use super::{Node, PUBLISH_INFLIGHT};
use crate::broker::{Publish, PublishError, PublishResult, Recovery, RecoveryGap, Registered, Ticket};
use crate::hub::{CloseReason, Frame, Outbox, SessionCtl};
use crate::protocol::{self, close, ErrorCode, FrameError};

/// Frames written per flush at most: amortizes syscalls without starving the ping timer.
const WRITE_BATCH: usize = 64;
/// A write (batch, ping or close) that takes longer than this means the peer stopped reading
/// and its TCP window is full; the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the closing handshake may take before the socket is dropped anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// On drain, how long the reader waits for its publishes' outcomes so that every send is answered
/// before the 1012: a routing batch's deadline plus slack.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

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

/// A resume asked for in the query: `since=<offset>` (and `epoch=<epoch>`, which a client that
/// has received nothing yet may leave out with `since=0`).
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    since: u64,
    epoch: Option<String>,
}

impl Resume {
    /// The resume in the query, if any; an error text (for a 400) when `since` is not an offset.
    pub(crate) fn from_query(params: &std::collections::HashMap<String, String>) -> Result<Option<Resume>, &'static str> {
        let Some(since) = params.get("since") else { return Ok(None) };
        let since = since.parse().map_err(|_| "since must be an offset (an integer >= 0)")?;
        Ok(Some(Resume { since, epoch: params.get("epoch").filter(|e| !e.is_empty()).cloned() }))
    }
}

type Replay = Pin<Box<dyn Future<Output = Recovery> + Send>>;

/// Runs the connection to its end. `routable`: the route table confirmed the connection; a
/// resume without that is answered `complete:false` (`unavailable`) without reading, since
/// messages stored after the read might reach neither the replay nor this connection.
pub(crate) async fn run(
    socket: WebSocket,
    reg: Registration,
    rx: mpsc::Receiver<Frame>,
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
        let replay = resume.map(|r| {
            let (node, user) = (node.clone(), reg.user.clone());
            Box::pin(async move {
                if !routable {
                    return Recovery::failed(r.since, RecoveryGap::Unavailable);
                }
                node.broker.recover(&user, r.since, r.epoch.as_deref()).await
            }) as Replay
        });
        let writer = node.sessions.spawn(write_loop(sink, rx, ctl.clone(), seen.clone(), node.limits.clone(), replay).in_current_span());
        let end = read_loop(&mut stream, &reg, &ctl, &seen).await;
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

/// Reads frames until the connection ends; returns why it ended.
/// Every frame (pongs included) stamps `seen`; the writer closes connections that stay silent.
/// At most [`PUBLISH_INFLIGHT`] publishes of this connection await their outcome: past that the
/// reader stops reading, so a flooding client is slowed by TCP and never takes more than its
/// share of the node's queue towards Redis.
async fn read_loop(stream: &mut SplitStream<WebSocket>, reg: &Registration, ctl: &SessionCtl, seen: &Activity) -> CloseReason {
    // Pinned once: a fresh `closed()` future per frame would register with the token each time.
    let closed = ctl.closed();
    tokio::pin!(closed);
    let mut inflight = FuturesOrdered::new();
    let mut limiter = reg.node.security.rate.limiter(tokio::time::Instant::now());
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut closed => {
                let reason = ctl.reason().unwrap_or(CloseReason::PeerGone);
                if reason == CloseReason::Draining {
                    settle(reg, &mut inflight).await;
                }
                return reason;
            }
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                answer(reg, done);
                continue;
            }
            next = stream.next(), if inflight.len() < PUBLISH_INFLIGHT => next,
        };
        seen.stamp();
        let msg = match next {
            None => return CloseReason::PeerBroke,
            Some(Err(e)) => return read_error(e, reg),
            Some(Ok(msg)) => msg,
        };
        let data = match &msg {
            Message::Text(t) => Some(t.as_bytes()),
            Message::Binary(b) => Some(&b[..]),
            _ => None,
        };
        if let (Some(l), Some(data)) = (&mut limiter, data) {
            match super::ratelimit::gate(l, &reg.node.metrics, data, |id, e| reg.reject(id, e)) {
                Verdict::Allow => {}
                Verdict::Drop { .. } => continue,
                Verdict::Close => return CloseReason::RateLimited,
            }
        }
        let sent = match msg {
            Message::Text(t) => handle_frame(reg, t.as_bytes()),
            Message::Binary(b) => handle_frame(reg, &b),
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(frame) => {
                let code = frame.map_or(close::NORMAL, |f| f.code);
                return if matches!(code, close::NORMAL | close::GOING_AWAY) { CloseReason::PeerGone } else { CloseReason::PeerBroke };
            }
        };
        inflight.extend(sent);
    }
}

/// Drain: answers the publishes still awaiting their outcome (bounded by [`SETTLE_TIMEOUT`]).
async fn settle(reg: &Registration, inflight: &mut FuturesOrdered<InFlight>) {
    let _ = tokio::time::timeout(SETTLE_TIMEOUT, async {
        while let Some(done) = inflight.next().await {
            answer(reg, done);
        }
    })
    .await;
}

/// Which ack a publish gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `online`: whether the receiver was found.
    Chat,
    /// `members` and `nodes` (docs/rooms.md).
    Room,
    /// Just the id (a join, once subscribed).
    Plain,
}

/// A publish of this connection awaiting its outcome, with what the answer needs.
struct InFlight {
    id: Option<Box<RawValue>>,
    /// Connections of the receiver (or room members) reached on this node.
    local: usize,
    ticket: Ticket,
    answer: Answer,
}

impl Future for InFlight {
    type Output = (Option<Box<RawValue>>, usize, Answer, PublishResult);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(Pin::new(&mut self.ticket).poll(cx));
        Poll::Ready((self.id.take(), self.local, self.answer, result))
    }
}

/// Answers a publish once its outcome is known: an ack if the client asked for one, an error
/// frame (always) if other nodes could not be reached.
fn answer(reg: &Registration, (id, local, kind, result): (Option<Box<RawValue>>, usize, Answer, PublishResult)) {
    let metrics = &reg.node.metrics;
    let err = match result {
        Ok(routed) if kind != Answer::Chat => {
            if let Some(id) = &id {
                let ack = if kind == Answer::Room { protocol::encode_room_ack(id, local, routed.nodes) } else { protocol::encode_ack(id, None) };
                reg.outbox.offer(ack, metrics);
            }
            return;
        }
        Ok(routed) => {
            let online = local > 0 || routed.nodes > 0;
            if !online {
                metrics.undeliverable.inc();
            }
            if let Some(id) = &id {
                reg.outbox.offer(protocol::encode_chat_ack(id, online, routed.offset.is_some()), metrics);
            }
            return;
        }
        Err(PublishError::Overloaded) => {
            FrameError::new(ErrorCode::Overloaded, "node overloaded: message not sent to other nodes, retry later")
        }
        Err(PublishError::Unavailable) if kind == Answer::Plain => FrameError::new(
            ErrorCode::Unavailable,
            "joined on this node; Redis did not confirm the room subscription, so messages from other nodes may not arrive until it does",
        ),
        Err(PublishError::Unavailable) => FrameError::new(
            ErrorCode::Unavailable,
            format!("delivered to {local} connection(s) on this node; other nodes unreachable (Redis unavailable)"),
        ),
        Err(_) => FrameError::new(ErrorCode::Unavailable, "node is shutting down: message not sent to other nodes"),
    };
    reg.reject(id.as_deref(), &err);
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

/// A read error: a frame over the limit or invalid UTF-8 gets an error frame and its close code;
/// anything else means the connection broke.
fn read_error(e: axum::Error, reg: &Registration) -> CloseReason {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = e.into_inner();
    let (err, code) = match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(c)) => (
            FrameError::new(ErrorCode::TooLarge, format!("frame too large: {c} (limit {} bytes)", reg.node.limits.max_frame)),
            CloseReason::TooLarge,
        ),
        Some(WsError::Utf8(_)) => (FrameError::new(ErrorCode::InvalidUtf8, "text frame is not valid UTF-8"), CloseReason::InvalidPayload),
        _ => {
            debug!(error = %inner, "connection broke");
            return CloseReason::PeerBroke;
        }
    };
    reg.reject(None, &err);
    code
}

/// Answers one client frame. Never waits: everything it sends goes through bounded queues. A
/// chat message returns its publish, which the reader answers once the outcome is known.
fn handle_frame(reg: &Registration, bytes: &[u8]) -> Option<InFlight> {
    let node = &reg.node;
    let reply = |frame: Frame| {
        reg.outbox.offer(frame, &node.metrics);
    };
    let fail = |id, err: FrameError| {
        reg.reject(id, &err);
        None
    };
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
            if protocol::check_user_id(&receiver).is_err() {
                return fail(id, FrameError::new(ErrorCode::BadReceiver, "receiverID must be at most 256 bytes, without control characters"));
            }
            node.metrics.messages.inc();
            let ts = protocol::timestamp_now();
            let envelope = protocol::encode_envelope(protocol::TYPE_CHAT, frame.payload, &receiver, &reg.user, &ts);
            // Local receivers first, straight from the hub, unless the broker serves them (history
            // on: through Redis, in offset order); never echoed to this connection.
            let local = if node.broker.delivers_locally() { 0 } else { node.hub.deliver(&receiver, &envelope, Some(reg.conn)) };
            let except = (*receiver == *reg.user).then_some(reg.conn);
            let ticket = node.broker.publish_except(Publish { receiver: Arc::from(receiver.as_ref()), envelope }, except);
            Some(InFlight { id: id.map(ToOwned::to_owned), local, ticket, answer: Answer::Chat })
        }
        protocol::TYPE_LATENCY => match protocol::parse_latency_ms(frame.payload) {
            Ok(ms) => {
                node.metrics.client_latency_ms.observe(ms);
                if let Some(id) = id {
                    reply(protocol::encode_ack(id, None));
                }
                None
            }
            Err(err) => fail(id, err),
        },
        protocol::TYPE_HEARTBEAT => {
            node.broker.touch(&reg.user);
            if let Some(id) = id {
                reply(protocol::encode_ack(id, None));
            }
            None
        }
        protocol::TYPE_JOIN | protocol::TYPE_LEAVE | protocol::TYPE_ROOM_MESSAGE => rooms::handle(reg, frame),
        other => fail(id, FrameError::new(ErrorCode::UnknownType, format!("unknown frame type {other:?}"))),
    }
}

/// Writes queued frames in batches and pings; on close, flushes the queue when the reason says so
/// and sends the close frame.
/// Also the idle check: at each ping tick, a connection silent for longer than the idle timeout
/// is closed (so it closes between `idle_timeout` and `idle_timeout + ping_interval`). The tick
/// comes before the queue in the select: a connection with constant outbound traffic is still
/// pinged and checked.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Frame>,
    ctl: Arc<SessionCtl>,
    seen: Arc<Activity>,
    limits: super::Limits,
    replay: Option<Replay>,
) {
    // Grown by the first batch, not before: an idle connection should cost nothing here.
    let mut batch = Vec::new();
    // The last offset replayed, while live frames may still repeat it.
    let mut seam = None;
    if let Some(replay) = replay {
        let recovery = tokio::select! {
            _ = ctl.closed() => None,
            r = replay => Some(r),
        };
        if let Some(recovery) = recovery {
            // Only a history that was read has a seam (a failed read knows no offset).
            seam = (!recovery.epoch.is_empty()).then_some(recovery.offset);
            if write_recovery(&mut sink, recovery).await.is_err() {
                ctl.close_with(CloseReason::PeerBroke);
                return;
            }
        }
    }
    let ping_every = limits.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closed = ctl.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            _ = &mut closed => break,
            _ = ping.tick() => {
                if seen.silent_for() > limits.idle_timeout {
                    debug!(idle = ?limits.idle_timeout, "idle timeout");
                    ctl.close_with(CloseReason::Idle);
                    break;
                }
                if tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    ctl.close_with(CloseReason::PeerBroke);
                    return;
                }
            }
            n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    break;
                }
                if let Some(last) = seam {
                    seam = skip_replayed(&mut batch, last, &ctl);
                }
                if write_batch(&mut sink, &mut batch, &ctl).await.is_err() {
                    ctl.close_with(CloseReason::PeerBroke);
                    return;
                }
            }
        }
    }
    let Some(reason) = ctl.reason() else { return };
    match reason.close_frame() {
        Some((code, why)) => {
            // On drain the reader first answers its publishes still in flight: keep writing
            // until it is done (bounded), then flush what is queued.
            if reason == CloseReason::Draining && !write_until(&mut sink, &mut rx, &mut batch, &ctl, &seen.reader_done).await {
                return;
            }
            // Nothing already queued is lost on drain; an error frame queued just before a
            // protocol close explains it.
            if reason.flushes_queue() {
                while let Ok(f) = rx.try_recv() {
                    batch.push(f);
                    if batch.len() == WRITE_BATCH && write_batch(&mut sink, &mut batch, &ctl).await.is_err() {
                        return;
                    }
                }
                if write_batch(&mut sink, &mut batch, &ctl).await.is_err() {
                    return;
                }
            }
            send_close(&mut sink, code, why).await;
        }
        // The peer closed: tungstenite queued the echo of its close frame; flush it out so the
        // closing handshake completes (RFC 6455 5.5.1).
        None => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        }
    }
}

/// Writes queued frames until `done` fires (or [`SETTLE_TIMEOUT`] passes). False if the socket
/// broke.
async fn write_until(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Frame>,
    batch: &mut Vec<Frame>,
    ctl: &SessionCtl,
    done: &tokio_util::sync::CancellationToken,
) -> bool {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        tokio::select! {
            _ = done.cancelled() => return true,
            _ = tokio::time::sleep_until(deadline) => return true,
            n = rx.recv_many(batch, WRITE_BATCH) => {
                if n == 0 {
                    return true;
                }
                if write_batch(sink, batch, ctl).await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Writes a resume's replay, then the `recovery` frame that ends it.
async fn write_recovery(sink: &mut SplitSink<WebSocket, Message>, r: Recovery) -> Result<(), ()> {
    let done = protocol::encode_recovery(r.gap.is_none(), r.entries.len(), &r.epoch, r.offset, r.gap.map(|g| g.as_str()));
    let write = async {
        for frame in r.entries.into_iter().chain([done]) {
            sink.feed(Message::Text(frame)).await.map_err(|_| ())?;
        }
        sink.flush().await.map_err(|_| ())
    };
    tokio::time::timeout(WRITE_TIMEOUT, write).await.map_err(|_| ())?
}

/// Drops live frames the replay already carried (offset <= `last`). Returns the seam still to
/// watch, or None once a later offset went by: from there on live frames are new.
fn skip_replayed(batch: &mut Vec<Frame>, last: u64, ctl: &SessionCtl) -> Option<u64> {
    let mut passed = false;
    batch.retain(|f| match protocol::envelope_offset(f.as_bytes()) {
        Some(o) if o <= last => {
            ctl.dequeued(f.len());
            false
        }
        Some(_) => {
            passed = true;
            true
        }
        None => true,
    });
    (!passed).then_some(last)
}

async fn write_batch(sink: &mut SplitSink<WebSocket, Message>, batch: &mut Vec<Frame>, ctl: &SessionCtl) -> Result<(), ()> {
    if batch.is_empty() {
        return Ok(());
    }
    let write = async {
        for frame in batch.drain(..) {
            ctl.dequeued(frame.len());
            sink.feed(Message::Text(frame)).await.map_err(|_| ())?;
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
