//! A connection's reader: parses each client frame, answers it (at once, or once its publish's
//! outcome is known), applies the rate limit, and ends the connection on a read error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::{FuturesOrdered, SplitStream};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tracing::debug;

use super::{rooms, Activity, Registration, SETTLE_TIMEOUT};
use crate::broker::{idem_key, Publish, PublishError, PublishResult, Ticket};
use crate::server::deliver;
use crate::hub::{CloseReason, Frame, SessionCtl};
use crate::protocol::{self, close, ClientFrame, ErrorCode, FrameError};
use crate::server::ratelimit::Verdict;
use crate::server::PUBLISH_INFLIGHT;

/// Reads frames until the connection ends; returns why it ended.
/// Every frame (pongs included) stamps `seen`; the writer closes connections that stay silent.
/// At most [`PUBLISH_INFLIGHT`] publishes of this connection await their outcome: past that the
/// reader stops reading, so a flooding client is slowed by TCP and never takes more than its
/// share of the node's queue towards Redis.
pub(super) async fn read_loop(stream: &mut SplitStream<WebSocket>, reg: &Registration, ctl: &SessionCtl, seen: &Activity) -> CloseReason {
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
            match crate::server::ratelimit::gate(l, &reg.node.metrics, data, |id, e| reg.reject(id, e)) {
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
pub(super) enum Answer {
    /// `online`: whether the receiver was found.
    Chat,
    /// `members` and `nodes` (docs/rooms.md).
    Room,
    /// Just the id (a join, once subscribed).
    Plain,
}

/// A publish of this connection awaiting its outcome, with what the answer needs.
pub(super) struct InFlight {
    pub(super) id: Option<Box<RawValue>>,
    /// Connections of the receiver (or room members) reached on this node.
    pub(super) local: usize,
    pub(super) ticket: Ticket,
    pub(super) answer: Answer,
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
                let ack = if kind == Answer::Room { protocol::encode_room_ack(id, local, routed.nodes, routed.duplicate) } else { protocol::encode_ack(id, None) };
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
                reg.outbox.offer(protocol::encode_chat_ack(id, online, routed.offset.is_some(), routed.duplicate), metrics);
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
        protocol::TYPE_CHAT => chat(reg, frame),
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

/// A chat message: checked, enveloped, delivered to local receivers (unless the broker serves
/// them: history on, or an idempotency key whose verdict the local copy waits for), handed to
/// the broker. Never echoed to this connection.
fn chat(reg: &Registration, frame: ClientFrame<'_>) -> Option<InFlight> {
    let node = &reg.node;
    let id = frame.id;
    let fail = |err: FrameError| {
        reg.reject(id, &err);
        None
    };
    let Some(receiver) = frame.receiver.filter(|r| !r.is_empty()) else {
        return fail(FrameError::new(ErrorCode::MissingReceiver, "chat_message needs a non-empty \"receiverID\""));
    };
    if protocol::check_user_id(&receiver).is_err() {
        return fail(FrameError::new(ErrorCode::BadReceiver, "receiverID must be at most 256 bytes, without control characters"));
    }
    let idem = match frame.idem.as_deref().map(|k| protocol::check_idem_key(k).map(|()| idem_key(&reg.user, k))) {
        Some(Err(e)) => return fail(e),
        checked => checked.and_then(Result::ok),
    };
    node.metrics.messages.inc();
    let ts = protocol::timestamp_now();
    let envelope = protocol::encode_envelope(protocol::TYPE_CHAT, frame.payload, &receiver, &reg.user, &ts);
    let msg = Publish { receiver: Arc::from(receiver.as_ref()), envelope, idem };
    let started = deliver::direct(node, msg, &reg.user, Some(reg.conn));
    Some(InFlight { id: id.map(ToOwned::to_owned), local: started.local, ticket: started.ticket, answer: Answer::Chat })
}
