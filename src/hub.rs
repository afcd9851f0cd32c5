//! The connections on this node: user -> sessions, each with a bounded send queue. Delivery never
//! waits: a session whose queue is full is closed as a slow consumer (4008), so one stalled
//! client can never hold up the others (the original Go server's worst bug).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::protocol::close;

/// Lock shards of the user map: enough that sessions on 2-16 cores rarely contend.
const HUB_SHARDS: usize = 64;

/// How a session is told to close, and with which code. The first reason wins.
#[derive(Debug, Default)]
pub struct SessionCtl {
    close: CancellationToken,
    code: AtomicU16,
}

impl SessionCtl {
    /// Asks the session to close with `code`. Returns false if another reason came first.
    pub fn close_with(&self, code: u16) -> bool {
        let first = self.code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok();
        self.close.cancel();
        first
    }
    /// The close code asked for, if any.
    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }
    /// Resolves once the session was asked to close.
    pub async fn closed(&self) {
        self.close.cancelled().await
    }
    /// One atomic load (the token's own check takes a lock): this runs for every frame offered.
    pub fn is_closed(&self) -> bool {
        self.code.load(Ordering::Acquire) != 0
    }
}

/// The sending side of one session: its bounded queue of ready-to-write text frames.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    ctl: Arc<SessionCtl>,
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
    /// A session's outbox and the receiving end its writer task drains.
    pub fn new(capacity: usize) -> (Outbox, mpsc::Receiver<Bytes>, Arc<SessionCtl>) {
        let (tx, rx) = mpsc::channel(capacity);
        let ctl = Arc::new(SessionCtl::default());
        (Outbox { tx, ctl: ctl.clone() }, rx, ctl)
    }

    /// Queues a frame without waiting. A full queue closes the session as a slow consumer.
    pub fn offer(&self, frame: Bytes, metrics: &Metrics) -> Offer {
        if self.ctl.is_closed() {
            return Offer::Closed;
        }
        match self.tx.try_send(frame) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.ctl.close_with(close::SLOW_CONSUMER) {
                    metrics.slow_consumer_closes.inc();
                }
                Offer::SlowConsumer
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
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

    /// Queues `frame` to every session of `user` except `except`. Returns how many took it.
    pub fn deliver(&self, user: &str, frame: &Bytes, except: Option<Uuid>) -> usize {
        let shard = self.shard(user);
        let Some(sessions) = shard.get(user) else { return 0 };
        let mut queued = 0;
        for e in sessions.iter().filter(|e| Some(e.conn) != except) {
            if e.outbox.offer(frame.clone(), &self.metrics) == Offer::Queued {
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

    /// Asks every session to close with `code` (drain: 1012).
    pub fn close_all(&self, code: u16) {
        for shard in self.shards.iter() {
            for e in shard.lock().unwrap_or_else(|p| p.into_inner()).values().flatten() {
                e.outbox.ctl.close_with(code);
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
        let (a, _ra, _) = Outbox::new(4);
        let (b, _rb, _) = Outbox::new(4);
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
        let (slow, _slow_rx, slow_ctl) = Outbox::new(1);
        let (fast, mut fast_rx, fast_ctl) = Outbox::new(8);
        hub.add(&u, Uuid::new_v4(), slow);
        hub.add(&u, Uuid::new_v4(), fast);
        let f = Bytes::from_static(b"{}");
        assert_eq!(hub.deliver("u", &f, None), 2);
        assert_eq!(hub.deliver("u", &f, None), 1);
        assert_eq!(slow_ctl.code(), Some(close::SLOW_CONSUMER));
        assert_eq!(fast_ctl.code(), None);
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
        assert!(fast_rx.try_recv().is_ok() && fast_rx.try_recv().is_ok());
    }
}
