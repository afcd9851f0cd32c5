//! Brokers carry envelopes between nodes and keep this node's routes in the route table:
//! [`MemoryBroker`] for a single node with no Redis (the embedded default), [`RedisBroker`] for a
//! fleet sharing Redis standalone or Cluster. Local receivers are served by the hub; the broker
//! only reaches the receiver's other nodes.
//!
//! Data flows one way: [`Broker::publish`] returns a [`Ticket`] that resolves to where the message
//! went ([`Routed`]) or why it could not go ([`PublishError`]); the session that sent it builds
//! its own ack or error frame from that.

mod memory;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::protocol::Frame;

pub use memory::{MemoryBroker, MAX_LOCAL_IDEM};
pub use redis::{
    room_channel, room_members_key, BrokerError, LookupError, NodeInfo, RedisBroker, JOIN_DEADLINE, LOOKUP_TIMEOUT, PUBLISH_QUEUE,
    READY_GRACE, REPLAY_DEADLINE, REPLAY_MAX, ROOM_CHANNEL_PREFIX, ROOM_MEMBERS_PREFIX, ROOM_MEMBERS_TTL, ROOM_PUBLISH_QUEUE, ROUTE_QUEUE,
};

/// The check every message from this node's Redis channel goes through (for the fuzz target):
/// the frame to deliver and the connection to skip, or None for one to drop.
#[doc(hidden)]
pub fn check_inbound(bytes: bytes::Bytes, max_envelope: usize) -> Option<(Option<uuid::Uuid>, Frame)> {
    redis::inbound(bytes, max_envelope)
}

/// A chat envelope on its way to the receiver's connections on other nodes.
#[derive(Debug)]
pub struct Publish {
    /// Receiver user id.
    pub receiver: Arc<str>,
    /// The encoded envelope, published as is.
    pub envelope: Frame,
    /// The sender's idempotency key, as its Redis key ([`idem_key`]): delivered at most once
    /// within the node's `--idem-window`.
    pub idem: Option<String>,
}

/// Default `--idem-window`: a retry of a send answered `unavailable` comes within seconds; two
/// minutes covers a client that reconnected to another node first.
pub const DEFAULT_IDEM_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);
/// Prefix of the idempotency records: `idem:<sender length>:<sender>:<key>` (the length keeps
/// `a:b`+`c` and `a`+`b:c` apart), a STRING `<nodes>:<offset>` of the first copy's outcome.
pub const IDEM_PREFIX: &str = "idem:";

/// The Redis key of `sender`'s idempotency key `key`.
pub fn idem_key(sender: &str, key: &str) -> String {
    format!("{IDEM_PREFIX}{}:{sender}:{key}", sender.len())
}

/// The Redis key of `sender`'s idempotency key `key` for a message to `room`: tagged with the
/// room's channel name, so on a Cluster the record and the channel share a slot and one script
/// checks, records and publishes.
pub fn room_idem_key(room: &str, sender: &str, key: &str) -> String {
    format!("{IDEM_PREFIX}{{{ROOM_CHANNEL_PREFIX}{room}}}:{}:{sender}:{key}", sender.len())
}

/// A room message's idempotency: its record's key, and the sending connection, which the copy
/// that comes back to this node skips.
#[derive(Debug, Clone)]
pub struct RoomIdem {
    pub key: String,
    pub except: Option<uuid::Uuid>,
}

/// Where a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// Other nodes with a live route to the receiver that the message was published to (on
    /// standalone Redis, only those whose subscriber got it). With history on, this node too
    /// when it holds the receiver (local receivers are served through Redis then, see
    /// [`Broker::delivers_locally`]).
    pub nodes: u32,
    /// The offset the message got in the receiver's history, when it was stored there.
    pub offset: Option<u64>,
    /// Its idempotency key was seen within the window: this copy went nowhere; `nodes` and
    /// `offset` are the first copy's.
    pub duplicate: bool,
}

/// Per-user history settings (`--history`, `--history-size`, `--history-ttl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per user (the newest).
    pub size: usize,
    /// A user's history expires this long after its last message.
    pub ttl: std::time::Duration,
}

/// Default `--history-size`: 100 messages covers a reconnect after a few seconds offline at a
/// busy chat rate, and costs ~25 KB of Redis per active user.
pub const DEFAULT_HISTORY_SIZE: usize = 100;
/// Default `--history-ttl`: a client that has been gone for 5 minutes is better served by a
/// fresh load of its state than by a replay.
pub const DEFAULT_HISTORY_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// Largest `--history-size`: a user's history is one Redis LIST read in one command on resume.
pub const MAX_HISTORY_SIZE: usize = 10_000;

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { size: DEFAULT_HISTORY_SIZE, ttl: DEFAULT_HISTORY_TTL }
    }
}

/// Why a resume could not replay everything the client missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryGap {
    /// The history's epoch is not the client's: it was lost (expired, Redis restarted empty).
    EpochChanged,
    /// Messages after `since` were trimmed (more than the history size) or expired.
    Trimmed,
    /// More missed messages than one resume replays ([`REPLAY_MAX`]).
    TooFarBehind,
    /// `since` is beyond the history's last offset.
    Ahead,
    /// Redis did not answer within [`REPLAY_DEADLINE`].
    Unavailable,
    /// This node keeps no history.
    HistoryOff,
}

impl RecoveryGap {
    /// As written in the recovery frame's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryGap::EpochChanged => "epoch_changed",
            RecoveryGap::Trimmed => "trimmed",
            RecoveryGap::TooFarBehind => "too_far_behind",
            RecoveryGap::Ahead => "offset_ahead",
            RecoveryGap::Unavailable => "unavailable",
            RecoveryGap::HistoryOff => "history_off",
        }
    }
}

/// What one page of a resume found: kept messages after the client's offset, in order, whether
/// they are all it missed, and whether more follow (the page's byte budget was reached).
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Final envelopes, in offset order.
    pub entries: Vec<Frame>,
    /// The history's current epoch ("" when unknown).
    pub epoch: String,
    /// The offset of the last entry of the page (of the history, when the page is empty): what
    /// the client has after it.
    pub offset: u64,
    /// None: complete.
    pub gap: Option<RecoveryGap>,
    /// More entries follow `offset`: read the next page from there.
    pub more: bool,
}

impl Recovery {
    /// Nothing replayed, for `why`.
    pub fn failed(since: u64, why: RecoveryGap) -> Recovery {
        Recovery { entries: Vec::new(), epoch: String::new(), offset: since, gap: Some(why), more: false }
    }
}

/// How much one page of a resume may hold: entries reaching back at most `count`, and at most
/// `bytes` of them (the connection's send-queue byte bound, so a replay costs no more memory
/// than a full send queue, however many resumes run at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayBudget {
    pub count: usize,
    pub bytes: usize,
}

/// Why a message could not be routed to other nodes. Local delivery already happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The node's queue towards Redis is full: it is sending faster than Redis takes.
    #[error("node overloaded")]
    Overloaded,
    /// Redis did not answer in time, or is known to be down.
    #[error("Redis unavailable")]
    Unavailable,
    /// The broker has shut down.
    #[error("broker stopped")]
    Stopped,
}

/// The outcome of one publish, once known.
pub type PublishResult = Result<Routed, PublishError>;

/// A publish in flight: resolves once the broker knows where the message went. Dropping it does
/// not cancel the publish.
#[derive(Debug)]
pub struct Ticket(TicketState);

#[derive(Debug)]
enum TicketState {
    Ready(Option<PublishResult>),
    Waiting(oneshot::Receiver<PublishResult>),
    /// Waiting, but `unavailable` once the sleep ends (a join: its subscription has no deadline
    /// of its own when the subscription task is busy with other rooms).
    Bounded(oneshot::Receiver<PublishResult>, Pin<Box<tokio::time::Sleep>>),
}

impl Ticket {
    /// A ticket whose outcome is already known.
    pub fn ready(result: PublishResult) -> Ticket {
        Ticket(TicketState::Ready(Some(result)))
    }

    /// A ticket for the receiving end of `reply`; a dropped sender resolves as `Stopped`.
    pub(crate) fn pending() -> (oneshot::Sender<PublishResult>, Ticket) {
        let (tx, rx) = oneshot::channel();
        (tx, Ticket(TicketState::Waiting(rx)))
    }

    /// [`Ticket::pending`] that resolves `unavailable` if no outcome came within `bound`.
    pub(crate) fn pending_within(bound: std::time::Duration) -> (oneshot::Sender<PublishResult>, Ticket) {
        let (tx, rx) = oneshot::channel();
        (tx, Ticket(TicketState::Bounded(rx, Box::pin(tokio::time::sleep(bound)))))
    }
}

impl Future for Ticket {
    type Output = PublishResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PublishResult> {
        match &mut self.0 {
            TicketState::Ready(r) => Poll::Ready(r.take().expect("ticket polled after completion")),
            TicketState::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(PublishError::Stopped))),
            TicketState::Bounded(rx, sleep) => match Pin::new(rx).poll(cx) {
                Poll::Ready(r) => Poll::Ready(r.unwrap_or(Err(PublishError::Stopped))),
                Poll::Pending => sleep.as_mut().poll(cx).map(|()| Err(PublishError::Unavailable)),
            },
        }
    }
}

/// How a connection's route registration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The route table has it: other nodes can reach the connection.
    Yes,
    /// Redis did not confirm within the wait (or is known to be down): the connection is
    /// accepted, and its route is written as soon as Redis answers.
    Later,
}

/// The node's broker.
#[derive(Clone)]
pub enum Broker {
    Memory(MemoryBroker),
    Redis(Arc<RedisBroker>),
}

impl Broker {
    /// Makes the route table match the hub for `user` (after a connect) and waits, bounded, until
    /// Redis confirms it, so a client that sees its upgrade is routable.
    pub async fn register(&self, user: &Arc<str>) -> Registered {
        match self {
            Broker::Memory(_) => Registered::Yes,
            Broker::Redis(b) => b.register(user).await,
        }
    }

    /// After a disconnect: make the route table match the hub for `user`, without waiting.
    pub fn unregister(&self, user: &Arc<str>) {
        if let Broker::Redis(b) = self {
            b.unregister(user)
        }
    }

    /// A client heartbeat: re-assert the user's route soon (coalesced, best effort).
    pub fn touch(&self, user: &Arc<str>) {
        if let Broker::Redis(b) = self {
            b.touch(user)
        }
    }

    /// Sends to the receiver's connections on other nodes (and, with history on, on this one:
    /// see [`Broker::delivers_locally`]). Never waits: the ticket resolves later.
    pub fn publish(&self, msg: Publish) -> Ticket {
        self.publish_except(msg, None)
    }

    /// [`Broker::publish`], never delivered to connection `except` of this node (the sender's
    /// own connection, for a message to oneself).
    pub fn publish_except(&self, msg: Publish, except: Option<uuid::Uuid>) -> Ticket {
        match self {
            Broker::Memory(m) => m.publish(msg),
            Broker::Redis(b) => b.publish(msg, except),
        }
    }

    /// Whether [`Broker::publish`] also reaches the receiver's connections on this node. True
    /// with history on: local receivers then get the message through Redis like everyone else, so
    /// it carries its offset and never overtakes a message that another node stored first. When
    /// false, the caller delivers locally through the hub first.
    pub fn delivers_locally(&self) -> bool {
        matches!(self, Broker::Redis(b) if b.history().is_some())
    }

    /// Whether the publish of `msg` reaches this node's receivers too: with history on, and for
    /// a message with an idempotency key (whose local copy must wait for the fleet-wide
    /// verdict, or a retry after `unavailable` could be delivered here twice).
    pub fn delivers_locally_for(&self, msg: &Publish) -> bool {
        self.delivers_locally() || (msg.idem.is_some() && matches!(self, Broker::Redis(_)))
    }

    /// Single node: records the idempotency key; true if it was seen within the window (then
    /// nothing is delivered). Always false with Redis, which decides in the publish.
    pub fn seen_locally(&self, idem: Option<&str>) -> bool {
        match (self, idem) {
            (Broker::Memory(m), Some(key)) => m.seen(key),
            _ => false,
        }
    }

    /// Whether a room message with an idempotency key reaches this node's members through Redis
    /// (then the caller does not deliver it locally).
    pub fn delivers_room_locally(&self, idem: Option<&str>) -> bool {
        idem.is_some() && matches!(self, Broker::Redis(_))
    }

    /// One page of a resume: the messages of `user` kept after `since` (in `epoch`), bounded in
    /// time, count and bytes. Never fails: trouble becomes a [`Recovery`] with a gap.
    pub async fn recover(&self, user: &str, since: u64, epoch: Option<&str>, budget: ReplayBudget) -> Recovery {
        match self {
            Broker::Redis(b) => b.recover(user, since, epoch, budget).await,
            Broker::Memory(_) => Recovery::failed(since, RecoveryGap::HistoryOff),
        }
    }

    /// Resolves once this node receives `room`'s messages from other nodes (after a local join):
    /// `unavailable` if Redis did not confirm the subscription in time.
    pub fn room_joined(&self, room: &str) -> Ticket {
        match self {
            Broker::Memory(_) => Ticket::ready(Ok(Routed::default())),
            Broker::Redis(b) => b.room_joined(room),
        }
    }

    /// Sends a room envelope to the room's members on other nodes (local members are served by
    /// [`crate::rooms::Rooms`]). Never waits; `Routed::nodes` counts the other nodes subscribed.
    /// With `idem`, it reaches this node's members too (through Redis, skipping the sender's
    /// connection), at most once per key within the window; the caller delivers nothing locally.
    pub fn publish_room(&self, room: &Arc<str>, envelope: &Frame, idem: Option<RoomIdem>) -> Ticket {
        match self {
            Broker::Memory(_) => Ticket::ready(Ok(Routed::default())),
            Broker::Redis(b) => b.publish_room(room, envelope, idem),
        }
    }

    /// The live nodes holding `user`, with the connection counts they wrote (none without Redis).
    pub async fn user_nodes(&self, user: &str) -> Result<Vec<(String, Option<u64>)>, LookupError> {
        match self {
            Broker::Memory(_) => Ok(Vec::new()),
            Broker::Redis(b) => b.user_nodes(user).await,
        }
    }

    /// Member connections of `room` per live node, as each node last wrote them (none without
    /// Redis).
    pub async fn room_counts(&self, room: &str) -> Result<Vec<(String, u64)>, LookupError> {
        match self {
            Broker::Memory(_) => Ok(Vec::new()),
            Broker::Redis(b) => b.room_counts(room).await,
        }
    }

    /// Whether the node can reach every node it may need to: false while Redis is down.
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(b) => b.is_ready(),
        }
    }

    /// "memory" or the Redis mode, for the startup line.
    pub fn describe(&self) -> String {
        match self {
            Broker::Memory(_) => "memory (single node, no Redis)".to_string(),
            Broker::Redis(b) => b.describe(),
        }
    }

    /// Drain, step one: take this node out of the route table (routes and lease), then wait until
    /// what other nodes published to it before that has arrived. Sessions stay open meanwhile, so
    /// those messages are delivered. Bounded by `budget`, whatever Redis does.
    pub async fn leave(&self, budget: std::time::Duration) {
        if let Broker::Redis(b) = self {
            b.leave(budget).await
        }
    }

    /// Stops the broker's tasks and disconnects. Call after every session has ended. Bounded.
    pub async fn shutdown(&self) {
        if let Broker::Redis(b) = self {
            b.shutdown().await
        }
    }
}
