//! The subscriber side: delivers envelopes arriving on this node's channel to the local sessions
//! of their receiver. What comes off Redis is checked once here (UTF-8, size, a receiver), so a
//! bad envelope published by anyone is dropped and counted, and never reaches a connection.
//!
//! With history on, this node publishes to its own channel too; the copy of a message to oneself
//! carries [`EXCEPT_MARK`] and the sending connection's id in front of the envelope, so the
//! sender's own connection is skipped (the spec: not echoed to the sender).

use std::sync::Arc;
use std::time::SystemTime;

use fred::prelude::*;
use fred::types::Message;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::reorder::{Ready, Reorder};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{self, Frame};

/// First byte of a message on this node's channel that names a connection not to deliver to:
/// `!` + the connection's UUID (36 bytes) + the envelope. No envelope starts with it.
pub(crate) const EXCEPT_MARK: char = '!';
const UUID_LEN: usize = 36;

/// The prefix that keeps a message from connection `conn`.
pub(crate) fn except_prefix(conn: uuid::Uuid) -> String {
    format!("{EXCEPT_MARK}{}", conn.hyphenated())
}

/// Splits a marked message into the connection to skip and the envelope. Anything else on the
/// channel, hostile bytes included, comes back whole: a mark whose next 36 bytes are not a UUID
/// (or not ASCII: a multi-byte character may straddle the cut) is no mark, and the message is
/// then judged as an envelope like any other. Never panics.
fn split_except(frame: Frame) -> (Option<uuid::Uuid>, Frame) {
    let b = frame.as_bytes();
    let conn = b
        .strip_prefix(&[EXCEPT_MARK as u8])
        .and_then(|rest| rest.get(..UUID_LEN))
        .and_then(|id| std::str::from_utf8(id).ok())
        .and_then(|id| uuid::Uuid::parse_str(id).ok());
    let Some(conn) = conn else { return (None, frame) };
    // The cut is after 37 ASCII bytes (checked above), so the rest is UTF-8; were it not, the
    // message stays whole (and fails as an envelope later) rather than panic.
    match Frame::try_from(bytes::Bytes::from(frame.clone()).slice(1 + UUID_LEN..)) {
        Ok(rest) => (Some(conn), rest),
        Err(_) => (None, frame),
    }
}

pub(crate) struct Receiver {
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Metrics,
    /// Largest envelope delivered: larger ones could not be written to a client
    /// ([`crate::server::Limits::max_outgoing_frame`]).
    pub(crate) max_envelope: usize,
    /// This node's drain fence, and who waits for it.
    pub(crate) fence: String,
    pub(crate) fence_seen: Arc<Notify>,
    /// Room channels' messages go there.
    pub(crate) rooms: super::rooms::RoomInbound,
    /// On a Cluster: puts each user's history messages back in offset order (see [`Reorder`]).
    pub(crate) reorder: Option<Reorder>,
    /// History is on: a client told of lost messages can resume and get them back.
    pub(crate) history: bool,
}

impl Receiver {
    pub(crate) async fn run(mut self, mut rx: broadcast::Receiver<Message>, stop: CancellationToken) {
        let mut ready = Vec::new();
        loop {
            let deadline = self.reorder.as_ref().and_then(Reorder::next_deadline);
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    if let Some(r) = self.reorder.as_mut() {
                        r.expire(tokio::time::Instant::now(), &mut ready);
                    }
                    self.hand_over(&mut ready);
                    continue;
                }
            };
            match msg {
                Ok(m) if self.rooms.handle(&m) => {}
                Ok(m) => {
                    self.deliver(m.value, &mut ready);
                    self.hand_over(&mut ready);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged(n),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// fred's channel dropped `n` messages: which receivers they were for is unknown, so every
    /// connection here is told. With history, each is closed with 4009 and resumes from its
    /// last offset, losing nothing; without, each gets a `messages_lost` error frame.
    fn lagged(&self, n: u64) {
        self.metrics.broker_lagged.inc_by(n);
        warn!(lost = n, history = self.history, "subscriber fell behind; messages were dropped and every connection told");
        if self.history {
            self.hub.close_all(crate::hub::CloseReason::Lagged);
        } else {
            let err = protocol::FrameError::new(protocol::ErrorCode::MessagesLost, format!("this node dropped {n} message(s) from other nodes; some may have been yours"));
            self.hub.offer_all(&protocol::encode_error(None, &err));
        }
    }

    fn hand_over(&self, ready: &mut Vec<Ready>) {
        for (user, except, frame) in ready.drain(..) {
            // Parsed again for its timestamp and offset: only messages that went through the
            // reorder buffer, which were parsed once already.
            let (ts, offset) = protocol::parse_routed(frame.as_bytes())
                .map(|e| (e.timestamp.map(|t| t.into_owned()), e.offset))
                .unwrap_or_default();
            self.to_hub(&user, &frame, offset, except, ts.as_deref());
        }
    }

    fn deliver(&mut self, value: Value, ready: &mut Vec<Ready>) {
        let Some((except, frame)) = value_bytes(value).and_then(|b| inbound(b, self.max_envelope)) else {
            self.metrics.broker_bad_envelopes.inc();
            return;
        };
        let Some(env) = protocol::parse_routed(frame.as_bytes()) else {
            if *frame == *self.fence {
                self.fence_seen.notify_waiters();
            } else {
                debug!("ignoring a broker message that is not an envelope with a receiverID");
                self.metrics.broker_bad_envelopes.inc();
            }
            return;
        };
        if let (Some(reorder), Some(offset), Some(epoch)) = (self.reorder.as_mut(), env.offset, env.epoch.as_deref()) {
            reorder.accept(&env.receiver, epoch, offset, except, frame.clone(), tokio::time::Instant::now(), ready);
            return;
        }
        self.to_hub(&env.receiver, &frame, env.offset, except, env.timestamp.as_deref());
    }

    /// Hands an envelope to the receiver's sessions here, and times its trip.
    fn to_hub(&self, receiver: &str, frame: &Frame, offset: Option<u64>, except: Option<uuid::Uuid>, timestamp: Option<&str>) {
        if self.hub.deliver(receiver, frame, offset, except) > 0 {
            if let Some(sent) = timestamp.and_then(protocol::parse_timestamp) {
                if let Ok(d) = SystemTime::now().duration_since(sent) {
                    self.metrics.delivery_ms.observe(d.as_secs_f64() * 1e3);
                }
            }
        }
    }

}

/// A pub/sub message's bytes, if it has any.
fn value_bytes(value: Value) -> Option<bytes::Bytes> {
    match value {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        _ => None,
    }
}

/// A message from this node's channel as a frame to deliver, if it is UTF-8 within the size
/// limit, with the connection to skip (see [`split_except`]). Pure and total: any bytes from
/// Redis give an answer, never a panic (fuzzed by `wsctl::fuzz::broker_message`).
pub(crate) fn inbound(bytes: bytes::Bytes, max_envelope: usize) -> Option<(Option<uuid::Uuid>, Frame)> {
    if bytes.len() > max_envelope {
        warn!(bytes = bytes.len(), limit = max_envelope, "dropping an envelope larger than a client frame may be");
        return None;
    }
    Frame::try_from(bytes).ok().map(split_except)
}

#[cfg(test)]
mod tests {
    use fred::types::config::Server;
    use fred::types::MessageKind;

    use super::*;
    use crate::hub::{CloseReason, Outbox, Queued};
    use crate::rooms::{RoomLimits, Rooms};

    fn receiver(history: bool) -> (Receiver, Arc<Hub>, Metrics) {
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(metrics.clone()));
        let rooms = Arc::new(Rooms::new(RoomLimits::default(), metrics.clone()));
        let r = Receiver {
            hub: hub.clone(),
            metrics: metrics.clone(),
            max_envelope: 1024,
            fence: "fence".into(),
            fence_seen: Arc::default(),
            rooms: super::super::rooms::RoomInbound { rooms, server_id: "me".into(), metrics: metrics.clone(), max_envelope: 1024 },
            reorder: None,
            history,
        };
        (r, hub, metrics)
    }

    fn message(text: &str) -> Message {
        Message { channel: "server:me".into(), value: Value::from(text), kind: MessageKind::Message, server: Server::new("127.0.0.1", 6379) }
    }

    /// fred's channel, overrun: the receiver counts the loss and tells every connection (with
    /// history: a 4009 close to resume from; without: a `messages_lost` error frame).
    async fn lag_is_told(history: bool) -> (Option<CloseReason>, Option<Queued>, u64) {
        let (r, hub, metrics) = receiver(history);
        let (outbox, mut rx, ctl) = Outbox::new(16, 1 << 20);
        hub.add(&Arc::from("bob"), uuid::Uuid::new_v4(), outbox);
        let (tx, sub) = broadcast::channel(2);
        for i in 0..5 {
            tx.send(message(&format!("{{\"receiverID\":\"carol\",\"n\":{i}}}"))).unwrap();
        }
        drop(tx);
        r.run(sub, CancellationToken::new()).await;
        (ctl.reason(), rx.try_recv().ok(), metrics.broker_lagged.get())
    }

    #[tokio::test]
    async fn a_lag_closes_every_connection_to_resume_with_history() {
        let (reason, _, lost) = lag_is_told(true).await;
        assert_eq!((reason, lost), (Some(CloseReason::Lagged), 3));
    }

    #[tokio::test]
    async fn a_lag_is_an_error_frame_to_every_connection_without_history() {
        let (reason, frame, lost) = lag_is_told(false).await;
        assert_eq!((reason, lost), (None, 3));
        let frame: serde_json::Value = serde_json::from_str(&frame.expect("told").frame).unwrap();
        assert_eq!(frame["code"], "messages_lost");
    }
}
