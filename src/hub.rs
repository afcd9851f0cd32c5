//! The connections on this node: user -> sessions, each with a bounded send queue. Delivery never
//! waits: a session whose queue is full is closed as a slow consumer (4008), so one stalled
//! client can never hold up the others (the original Go server's worst bug).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::protocol::close;


/// Lock shards of the user map: enough that sessions on 2-16 cores rarely contend.
const HUB_SHARDS: usize = 64;

/// Why a session ends. Stored in [`SessionCtl`] as one byte; the first reason wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed with 1000/1001: an expected disconnect.
    PeerGone = 1,
    /// The peer closed with another code, or the connection broke.
    PeerBroke,
    /// Nothing arrived from the peer for the idle timeout (we send 1001).
    Idle,
    /// The node is draining (1012).
    Draining,
    /// The send queue overflowed, in frames or bytes (4008).
    SlowConsumer,
    /// A frame over the size limit (1009).
    TooLarge,
    /// A text frame that is not UTF-8 (1007).
    InvalidPayload,
    /// Policy: the token expired, or similar (1008).
    Policy,
    /// The client stayed over its message rate (4029).
    RateLimited,
    /// The server failed (1011).
    Internal,
    /// Messages to the connection may have been dropped on this node: resume (4009).
    Lagged,
}

impl CloseReason {
    const ALL: [CloseReason; 11] = [
        CloseReason::PeerGone,
        CloseReason::PeerBroke,
        CloseReason::Idle,
        CloseReason::Draining,
        CloseReason::SlowConsumer,
        CloseReason::TooLarge,
        CloseReason::InvalidPayload,
        CloseReason::Policy,
        CloseReason::RateLimited,
        CloseReason::Internal,
        CloseReason::Lagged,
    ];

    fn from_u8(v: u8) -> Option<CloseReason> {
        Self::ALL.into_iter().find(|r| *r as u8 == v)
    }

    /// The close frame we send, or None when the peer already closed or the socket broke.
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        Some(match self {
            CloseReason::PeerGone | CloseReason::PeerBroke => return None,
            CloseReason::Idle => (close::GOING_AWAY, "idle timeout"),
            CloseReason::Draining => (close::DRAINING, "node draining, reconnect"),
            CloseReason::SlowConsumer => (close::SLOW_CONSUMER, "slow consumer: send queue overflowed"),
            CloseReason::TooLarge => (close::TOO_LARGE, "frame too large"),
            CloseReason::InvalidPayload => (close::INVALID_PAYLOAD, "invalid UTF-8"),
            CloseReason::Policy => (close::POLICY, "token expired"),
            CloseReason::RateLimited => (close::RATE_LIMITED, "rate limited"),
            CloseReason::Internal => (close::INTERNAL, "internal error"),
            CloseReason::Lagged => (close::RESUME, "messages may be missing: reconnect and resume"),
        })
    }

    /// Whether the end counts as an unexpected disconnect (spec: not 1000/1001 from the client).
    /// A drain is the node's own doing and is expected.
    pub fn is_unexpected(self) -> bool {
        !matches!(self, CloseReason::PeerGone | CloseReason::Draining)
    }

    /// Whether frames already queued are written before the close frame: on drain (nothing
    /// queued is lost) and after a protocol error (its error frame explains the close).
    pub fn flushes_queue(self) -> bool {
        matches!(
            self,
            CloseReason::Draining
                | CloseReason::TooLarge
                | CloseReason::InvalidPayload
                | CloseReason::Policy
                | CloseReason::RateLimited
                | CloseReason::Internal
                | CloseReason::Lagged
        )
    }
}

/// How a session is told to close, and why. The first reason wins.
#[derive(Debug, Default)]
pub struct SessionCtl {
    close: CancellationToken,
    reason: AtomicU8,
    /// Bytes queued in the outbox and not yet taken by the writer.
    queued_bytes: AtomicUsize,
}

impl SessionCtl {
    /// Asks the session to close. Returns false if another reason came first.
    pub fn close_with(&self, reason: CloseReason) -> bool {
        let first = self.reason.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire).is_ok();
        self.close.cancel();
        first
    }
    /// Why the session is closing, if it is.
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }
    /// Resolves once the session was asked to close.
    pub async fn closed(&self) {
        self.close.cancelled().await
    }
    /// One atomic load (the token's own check takes a lock): this runs for every frame offered.
    pub fn is_closed(&self) -> bool {
        self.reason.load(Ordering::Acquire) != 0
    }
    /// Whether frames offered now are refused: closing for any reason but a drain, during which
    /// the writer keeps writing until the session's last answers are out.
    fn refuses(&self) -> bool {
        let r = self.reason.load(Ordering::Acquire);
        r != 0 && r != CloseReason::Draining as u8
    }
    /// The writer took `n` bytes off the queue.
    pub fn dequeued(&self, n: usize) {
        self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

pub use crate::protocol::Frame;

/// A frame in a session's send queue, with what the writer must know of it as typed data (never
/// read back from the frame's text): the history offset of a routed envelope, which a resume's
/// seam compares with the replay's last.
#[derive(Debug, Clone)]
pub struct Queued {
    pub frame: Frame,
    /// The receiver's history offset, for an envelope that history numbered; None for anything
    /// else (acks, errors, room messages, envelopes without history).
    pub offset: Option<u64>,
}

impl From<Frame> for Queued {
    fn from(frame: Frame) -> Self {
        Queued { frame, offset: None }
    }
}

/// The sending side of one session: its queue of ready-to-write text frames, bounded in frames
/// and in bytes.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Queued>,
    ctl: Arc<SessionCtl>,
    max_bytes: usize,
}

/// What happened to a frame offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue was full: the session is being closed with 4008.
    SlowConsumer,
    /// The session is already closing.
    Closed,
}

impl Outbox {
    /// A session's outbox (at most `frames` frames and `max_bytes` bytes queued) and the
    /// receiving end its writer task drains.
    pub fn new(frames: usize, max_bytes: usize) -> (Outbox, mpsc::Receiver<Queued>, Arc<SessionCtl>) {
        let (tx, rx) = mpsc::channel(frames);
        let ctl = Arc::new(SessionCtl::default());
        (Outbox { tx, ctl: ctl.clone(), max_bytes }, rx, ctl)
    }

    /// Queues a frame without waiting. A full queue (frames or bytes) closes the session as a
    /// slow consumer.
    pub fn offer(&self, frame: Frame, metrics: &Metrics) -> Offer {
        self.offer_queued(Queued::from(frame), metrics)
    }

    /// [`Outbox::offer`] of a frame with its typed data.
    pub fn offer_queued(&self, frame: Queued, metrics: &Metrics) -> Offer {
        if self.ctl.refuses() {
            return Offer::Closed;
        }
        let len = frame.frame.len();
        let before = self.ctl.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            self.ctl.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return self.overflow(metrics);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.ctl.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.overflow(metrics)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    fn overflow(&self, metrics: &Metrics) -> Offer {
        if self.ctl.close_with(CloseReason::SlowConsumer) {
            metrics.slow_consumer_closes.inc();
        }
        Offer::SlowConsumer
    }

    pub fn ctl(&self) -> &Arc<SessionCtl> {
        &self.ctl
    }
}

struct Entry {
    conn: Uuid,
    outbox: Outbox,
}

type Shard = HashMap<Arc<str>, Vec<Entry>>;

/// Every session on this node, by user.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    metrics: Metrics,
}

impl Hub {
    pub fn new(metrics: Metrics) -> Self {
        Hub {
            shards: (0..HUB_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            metrics,
        }
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(user) as usize % self.shards.len();
        // A panic while holding a shard lock cannot leave the map half-updated (every update is
        // a single push/remove), so a poisoned lock is still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a session. Returns true if it is the user's first on this node.
    pub fn add(&self, user: &Arc<str>, conn: Uuid, outbox: Outbox) -> bool {
        let mut shard = self.shard(user);
        let sessions = shard.entry(user.clone()).or_default();
        sessions.push(Entry { conn, outbox });
        self.metrics.active_connections.inc();
        sessions.len() == 1
    }

    /// Removes a session. Returns true if it was the user's last on this node.
    pub fn remove(&self, user: &str, conn: Uuid) -> bool {
        let mut shard = self.shard(user);
        let Some(sessions) = shard.get_mut(user) else { return false };
        let Some(i) = sessions.iter().position(|e| e.conn == conn) else { return false };
        sessions.swap_remove(i);
        self.metrics.active_connections.dec();
        if sessions.is_empty() {
            shard.remove(user);
            true
        } else {
            false
        }
    }

    /// Whether the user has a session here.
    pub fn contains(&self, user: &str) -> bool {
        self.shard(user).contains_key(user)
    }

    /// The user's connections on this node.
    pub fn count(&self, user: &str) -> usize {
        self.shard(user).get(user).map_or(0, Vec::len)
    }

    /// Queues `frame` (with its history `offset`, if history numbered it) to every session of
    /// `user` except `except`. Returns how many took it.
    pub fn deliver(&self, user: &str, frame: &Frame, offset: Option<u64>, except: Option<Uuid>) -> usize {
        let shard = self.shard(user);
        let Some(sessions) = shard.get(user) else { return 0 };
        let mut queued = 0;
        for e in sessions.iter().filter(|e| Some(e.conn) != except) {
            if e.outbox.offer_queued(Queued { frame: frame.clone(), offset }, &self.metrics) == Offer::Queued {
                queued += 1;
            }
        }
        drop(shard);
        self.metrics.messages_delivered.inc_by(queued as u64);
        queued
    }

    /// The users with at least one session, at this instant.
    pub fn users(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned());
        }
        out
    }

    /// Queues `frame` to every session (a notice for all, e.g. messages lost); never waits.
    pub fn offer_all(&self, frame: &Frame) {
        for shard in self.shards.iter() {
            for e in shard.lock().unwrap_or_else(|p| p.into_inner()).values().flatten() {
                e.outbox.offer(frame.clone(), &self.metrics);
            }
        }
    }

    /// Asks every session to close (drain: [`CloseReason::Draining`]).
    pub fn close_all(&self, reason: CloseReason) {
        for shard in self.shards.iter() {
            for e in shard.lock().unwrap_or_else(|p| p.into_inner()).values().flatten() {
                e.outbox.ctl.close_with(reason);
            }
        }
    }

    /// Open connections on this node.
    pub fn connections(&self) -> u64 {
        self.metrics.active_connections.get().max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_are_counted_per_user() {
        let hub = Hub::new(Metrics::new());
        let u: Arc<str> = "u".into();
        let (a, _ra, _) = Outbox::new(4, 1 << 20);
        let (b, _rb, _) = Outbox::new(4, 1 << 20);
        let (ca, cb) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(hub.add(&u, ca, a));
        assert!(!hub.add(&u, cb, b));
        assert!(!hub.remove("u", ca));
        assert!(hub.contains("u"));
        assert!(hub.remove("u", cb));
        assert!(!hub.contains("u"));
        assert_eq!(hub.connections(), 0);
    }

    #[test]
    fn a_full_queue_closes_only_that_session() {
        let metrics = Metrics::new();
        let hub = Hub::new(metrics.clone());
        let u: Arc<str> = "u".into();
        let (slow, _slow_rx, slow_ctl) = Outbox::new(1, 1 << 20);
        let (fast, mut fast_rx, fast_ctl) = Outbox::new(8, 1 << 20);
        hub.add(&u, Uuid::new_v4(), slow);
        hub.add(&u, Uuid::new_v4(), fast);
        let f = Frame::from_static("{}");
        assert_eq!(hub.deliver("u", &f, None, None), 2);
        assert_eq!(hub.deliver("u", &f, None, None), 1);
        assert_eq!(slow_ctl.reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(fast_ctl.reason(), None);
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
        assert!(fast_rx.try_recv().is_ok() && fast_rx.try_recv().is_ok());
    }
}
