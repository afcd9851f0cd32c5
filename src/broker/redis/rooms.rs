//! Rooms across nodes: this node subscribes to a room's channel (`room:<name>`) only while the room
//! has members here, publishes room messages there, and delivers what other nodes publish to its
//! local members.
//!
//! - Subscriptions: one task ([`Subscriptions`]) owns them. Joins and leaves only mark a room dirty
//!   ([`Rooms::take_dirty`]); the task reads the member count *now* and subscribes or
//!   unsubscribes to match, so a join racing a leave can never leave the node subscribed with no
//!   members, or members without a subscription. The same pass writes the node's member count
//!   into `room_members:<room>` (HASH, field = server id), or removes its field at 0.
//! - Publishing: its own bounded queue ([`ROOM_PUBLISH_QUEUE`]) and task, a pipeline per batch.
//!   The message goes out as `<origin server id>\n<envelope>`: the origin delivered to its own
//!   members directly, so it skips its own copy when it comes back. A message with an
//!   idempotency key goes out as `*<sending connection>\n<envelope>` by a script that checks and
//!   writes its record in the same step (record and channel share a slot): every node delivers
//!   it, the origin too, skipping only the sending connection.
//! - SSUBSCRIBE/SPUBLISH on a Cluster with sharded pub/sub (a room's traffic touches only the
//!   shard that owns its channel), SUBSCRIBE/PUBLISH otherwise. fred's `manage_subscriptions`
//!   re-subscribes after a reconnect; the counts are rewritten then.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Message};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::protocol::Frame;
use crate::rooms::Rooms;

use super::super::{PublishError, PublishResult, Routed, Ticket};
use super::publisher::BATCH_DEADLINE;
use super::Health;

/// Prefix of the room channels: `room:<name>`.
pub const ROOM_CHANNEL_PREFIX: &str = "room:";
/// Prefix of the per-room member counts: HASH `room_members:<name>`, field server id -> count.
pub const ROOM_MEMBERS_PREFIX: &str = "room_members:";
/// TTL of `room_members:<name>`, renewed by every count write and by the node's refresher every
/// [`crate::routes::PRESENCE_REFRESH`]: presence's, so a hash whose every node died without a
/// drain is gone within a minute (a dead node's field in a hash that live nodes keep renewing is
/// skipped by readers, which check leases, and removed by `wsctl routes purge --server`).
pub const ROOM_MEMBERS_TTL: Duration = crate::routes::ONLINE_TTL;
/// Capacity of the node's queue of room messages towards Redis. When full, senders get
/// `overloaded` at once (as for direct messages, [`super::PUBLISH_QUEUE`]); each connection
/// has at most [`crate::server::PUBLISH_INFLIGHT`] messages in it.
pub const ROOM_PUBLISH_QUEUE: usize = 16_384;
/// Room messages per pipeline at most.
const ROOM_BATCH: usize = 512;
/// A subscription change or count write that failed is retried after this long.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A subscribe or unsubscribe not confirmed within this failed (joins waiting on it are answered
/// `unavailable`); it is retried.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A join is answered within this whatever the subscription task is doing (other rooms'
/// subscriptions, each bounded by [`SUBSCRIBE_TIMEOUT`], go one after another): `unavailable`
/// then, and the subscription follows when Redis answers. With [`BATCH_DEADLINE`] for sends,
/// every frame of a connection is answered within about this.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(3);

/// `room:<name>`.
pub fn room_channel(room: &str) -> String {
    format!("{ROOM_CHANNEL_PREFIX}{room}")
}

/// `room_members:<name>`.
pub fn room_members_key(room: &str) -> String {
    format!("{ROOM_MEMBERS_PREFIX}{room}")
}

/// What the subscription task and the sessions share: rooms this node is subscribed to, and joins
/// waiting for their room's subscription. One lock, so a join either sees the subscription or is
/// answered when it happens.
#[derive(Default)]
pub(crate) struct SubState {
    subscribed: HashSet<Arc<str>>,
    /// Rooms being unsubscribed right now: a join must not be acked on a subscription that is
    /// going away; it waits for the next subscribe.
    unsubscribing: HashSet<Arc<str>>,
    waiters: HashMap<Arc<str>, Vec<oneshot::Sender<PublishResult>>>,
}

/// A room message waiting in the queue.
pub(crate) struct RoomPublishReq {
    pub(crate) room: Arc<str>,
    /// `<origin>\n<envelope>`.
    pub(crate) payload: Bytes,
    /// The idempotency record's key, if the message has one.
    pub(crate) idem: Option<String>,
    pub(crate) reply: oneshot::Sender<PublishResult>,
}

/// First byte of an origin that every node delivers, the origin too: `*` + the sending
/// connection's UUID, which is skipped. No server id starts with it.
const EVERYWHERE_MARK: char = '*';

/// Publishes ARGV[3] on channel ARGV[2] unless the idempotency record KEYS[1] exists, then
/// writes the record (PX ARGV[1]); ARGV[4] "1" for SPUBLISH. Returns the subscriber count, or -1
/// for a duplicate.
const ROOM_IDEM_LUA: &str = r#"if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  if ARGV[4] == '1' then return redis.call('SPUBLISH', ARGV[2], ARGV[3]) end
  return redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return -1"#;

/// The broker's handle on rooms, kept in [`super::RedisBroker`].
pub(crate) struct RoomChannels {
    pub(crate) rooms: Arc<Rooms>,
    server_id: Arc<str>,
    state: Arc<Mutex<SubState>>,
    publish_tx: mpsc::Sender<RoomPublishReq>,
    health: Arc<Health>,
    /// Set by a drain: counts are removed and no longer written.
    left: Arc<std::sync::atomic::AtomicBool>,
}

/// Everything [`RoomChannels::start`] needs.
pub(crate) struct RoomSetup {
    pub(crate) client: Client,
    pub(crate) subscriber: SubscriberClient,
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) server_id: Arc<str>,
    pub(crate) sharded: bool,
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: Metrics,
    pub(crate) idem_window: Duration,
}

impl RoomChannels {
    /// Starts the subscription and publishing tasks on `tracker`.
    pub(crate) fn start(s: RoomSetup, tracker: &tokio_util::task::TaskTracker, stop: CancellationToken) -> RoomChannels {
        let (publish_tx, publish_rx) = mpsc::channel(ROOM_PUBLISH_QUEUE);
        let state = Arc::new(Mutex::new(SubState::default()));
        let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let subs = Subscriptions {
            client: s.client.clone(),
            subscriber: s.subscriber,
            rooms: s.rooms.clone(),
            server_id: s.server_id.clone(),
            sharded: s.sharded,
            state: state.clone(),
            metrics: s.metrics.clone(),
            left: left.clone(),
        };
        tracker.spawn(subs.run(stop.clone()));
        let idem_ms = super::px(s.idem_window);
        let publisher = RoomPublisher { client: s.client, sharded: s.sharded, state: state.clone(), health: s.health.clone(), metrics: s.metrics, idem_ms };
        tracker.spawn(publisher.run(publish_rx, stop));
        RoomChannels { rooms: s.rooms, server_id: s.server_id, state, publish_tx, health: s.health, left }
    }

    /// Resolves once this node is subscribed to `room` (after a join), or `unavailable` if the
    /// subscription failed.
    pub(crate) fn joined(&self, room: &str) -> Ticket {
        let mut st = lock(&self.state);
        if st.subscribed.contains(room) && !st.unsubscribing.contains(room) {
            return Ticket::ready(Ok(Routed::default()));
        }
        if self.health.is_degraded() {
            return Ticket::ready(Err(PublishError::Unavailable));
        }
        let (tx, ticket) = Ticket::pending_within(JOIN_DEADLINE);
        st.waiters.entry(Arc::from(room)).or_default().push(tx);
        ticket
    }

    /// Publishes `envelope` on the room's channel; never waits.
    pub(crate) fn publish(&self, room: &Arc<str>, envelope: &Frame, idem: Option<crate::broker::RoomIdem>) -> Ticket {
        if self.health.is_degraded() {
            return Ticket::ready(Err(PublishError::Unavailable));
        }
        let origin = match &idem {
            Some(i) => format!("{EVERYWHERE_MARK}{}", i.except.map(|c| c.hyphenated().to_string()).unwrap_or_default()),
            None => self.server_id.to_string(),
        };
        let mut payload = Vec::with_capacity(origin.len() + 1 + envelope.len());
        payload.extend_from_slice(origin.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(envelope.as_bytes());
        let (reply, ticket) = Ticket::pending();
        let req = RoomPublishReq { room: room.clone(), payload: payload.into(), idem: idem.map(|i| i.key), reply };
        match self.publish_tx.try_send(req) {
            Ok(()) => ticket,
            Err(mpsc::error::TrySendError::Full(_)) => Ticket::ready(Err(PublishError::Overloaded)),
            Err(mpsc::error::TrySendError::Closed(_)) => Ticket::ready(Err(PublishError::Stopped)),
        }
    }

    /// Drain: removes this node's member counts; none are written after.
    pub(crate) async fn leave(&self, client: &Client) {
        self.left.store(true, std::sync::atomic::Ordering::SeqCst);
        let p = client.pipeline();
        for (room, _) in self.rooms.counts() {
            let _: Result<(), _> = p.hdel(room_members_key(&room), self.server_id.as_ref()).await;
        }
        if let Err(e) = p.all::<Value>().await {
            warn!(error = %e, "drain: could not remove this node's room member counts");
        }
    }
}

fn lock(state: &Mutex<SubState>) -> std::sync::MutexGuard<'_, SubState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The task that owns this node's room subscriptions and member counts.
struct Subscriptions {
    client: Client,
    subscriber: SubscriberClient,
    rooms: Arc<Rooms>,
    server_id: Arc<str>,
    sharded: bool,
    state: Arc<Mutex<SubState>>,
    metrics: Metrics,
    left: Arc<std::sync::atomic::AtomicBool>,
}

impl Subscriptions {
    async fn run(self, stop: CancellationToken) {
        let mut reconnects = self.client.reconnect_rx();
        let mut retry: HashSet<Arc<str>> = HashSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.rooms.changed() => {}
                r = reconnects.recv() => match r {
                    // Redis may have restarted empty: rewrite every count (fred re-subscribes).
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => retry.extend(self.rooms.counts().into_iter().map(|(r, _)| r)),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(RETRY_INTERVAL), if !retry.is_empty() => {}
            }
            let mut dirty: HashSet<Arc<str>> = std::mem::take(&mut retry);
            dirty.extend(self.rooms.take_dirty());
            retry = self.reconcile(dirty).await;
        }
    }

    /// Makes subscriptions and counts match the member counts now. Returns the rooms to retry.
    async fn reconcile(&self, dirty: HashSet<Arc<str>>) -> HashSet<Arc<str>> {
        let mut failed = HashSet::new();
        let mut counts = Vec::with_capacity(dirty.len());
        for room in dirty {
            let members = self.rooms.members(&room);
            let subscribed = lock(&self.state).subscribed.contains(&room);
            let ok = match (members > 0, subscribed) {
                (true, false) => self.change(&room, true).await,
                (false, true) => {
                    lock(&self.state).unsubscribing.insert(room.clone());
                    self.change(&room, false).await
                }
                _ => true,
            };
            if !ok {
                self.metrics.redis_errors.inc();
                failed.insert(room.clone());
            }
            self.settle(&room, members > 0, ok);
            counts.push((room, members));
        }
        if !self.left.load(std::sync::atomic::Ordering::SeqCst) && !counts.is_empty() && !self.write_counts(&counts).await {
            failed.extend(counts.into_iter().map(|(r, _)| r));
        }
        failed
    }

    /// SUBSCRIBE/SSUBSCRIBE (or the UN- forms) the room's channel, bounded.
    async fn change(&self, room: &str, subscribe: bool) -> bool {
        let channel = room_channel(room);
        let s = &self.subscriber;
        let done = async {
            match (subscribe, self.sharded) {
                (true, true) => s.ssubscribe(channel).await,
                (true, false) => s.subscribe(channel).await,
                (false, true) => s.sunsubscribe(channel).await,
                (false, false) => s.unsubscribe(channel).await,
            }
        };
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, done).await {
            Ok(Ok(())) => {
                debug!(room, subscribe, "room subscription changed");
                true
            }
            Ok(Err(e)) => {
                warn!(room, subscribe, error = %e, "room subscription change failed; retrying");
                false
            }
            Err(_) => {
                warn!(room, subscribe, "room subscription change timed out; retrying");
                false
            }
        }
    }

    /// Records the subscription state and answers the joins waiting on it.
    fn settle(&self, room: &Arc<str>, want: bool, ok: bool) {
        let mut st = lock(&self.state);
        st.unsubscribing.remove(room);
        if ok {
            if want {
                st.subscribed.insert(room.clone());
            } else {
                st.subscribed.remove(room);
            }
        }
        let is_subscribed = st.subscribed.contains(room);
        // Waiters of a room nobody is in any more (the joiner left again) are answered too; a
        // join made while the room was being unsubscribed has made it dirty again, and is
        // answered by the subscribe that follows.
        let rejoined = !want && self.rooms.members(room) > 0;
        if (is_subscribed || !want || !ok) && !rejoined {
            let result = if ok || is_subscribed { Ok(Routed::default()) } else { Err(PublishError::Unavailable) };
            for w in st.waiters.remove(room).unwrap_or_default() {
                let _ = w.send(result);
            }
        }
    }

    /// `HSET room_members:<r> <server> <n>` and its TTL, or `HDEL` at 0, in one pipeline.
    async fn write_counts(&self, counts: &[(Arc<str>, usize)]) -> bool {
        let p = self.client.pipeline();
        for (room, n) in counts {
            let key = room_members_key(room);
            let _: Result<(), _> = if *n > 0 {
                let _: Result<(), _> = p.hset(&key, (self.server_id.as_ref(), *n as i64)).await;
                p.expire(key, ROOM_MEMBERS_TTL.as_secs() as i64, None).await
            } else {
                p.hdel(key, self.server_id.as_ref()).await
            };
        }
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, p.all::<Value>()).await {
            Ok(Ok(_)) => true,
            _ => {
                self.metrics.redis_errors.inc();
                warn!(rooms = counts.len(), "writing room member counts failed; retrying");
                false
            }
        }
    }
}

/// Publishes room messages, a pipeline per batch, in arrival order.
struct RoomPublisher {
    client: Client,
    sharded: bool,
    state: Arc<Mutex<SubState>>,
    health: Arc<Health>,
    metrics: Metrics,
    /// `--idem-window` in ms, as PX takes it (at least 1).
    idem_ms: i64,
}

impl RoomPublisher {
    async fn run(self, mut rx: mpsc::Receiver<RoomPublishReq>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(ROOM_BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, ROOM_BATCH) => if n == 0 { return },
                _ = stop.cancelled() => {
                    rx.close();
                    while rx.recv_many(&mut batch, ROOM_BATCH).await > 0 {
                        answer(batch.drain(..), Err(PublishError::Stopped));
                    }
                    return;
                }
            }
            if self.health.is_degraded() {
                answer(batch.drain(..), Err(PublishError::Unavailable));
                continue;
            }
            match tokio::time::timeout(BATCH_DEADLINE, self.publish(&batch)).await {
                Ok(Ok(counts)) => {
                    let st = lock(&self.state);
                    for (req, n) in batch.drain(..).zip(counts) {
                        // The count includes this node's own subscription: other nodes only.
                        let me = u32::from(st.subscribed.contains(&req.room));
                        let nodes = (n.max(0) as u32).saturating_sub(me);
                        let _ = req.reply.send(Ok(Routed { nodes, duplicate: n < 0, ..Routed::default() }));
                    }
                }
                failed => {
                    self.metrics.redis_errors.inc();
                    if self.health.degrade() {
                        warn!(ok = failed.is_ok(), "publishing room messages failed: remote sends answer `unavailable` until Redis answers");
                    }
                    answer(batch.drain(..), Err(PublishError::Unavailable));
                }
            }
        }
    }

    /// Returns, per message, the subscriber count Redis reported.
    async fn publish(&self, batch: &[RoomPublishReq]) -> Result<Vec<i64>, fred::error::Error> {
        let p = self.client.pipeline();
        for r in batch {
            let channel = room_channel(&r.room);
            let value = Value::Bytes(r.payload.clone());
            let _: () = match &r.idem {
                // A pipeline has no EVAL of its own: the command by hand, sent to the slot of the
                // record (the channel's; fred honours a custom command's slot only as a number).
                // By its text: Redis caches it, and a NOSCRIPT cannot happen.
                Some(key) => {
                    let slot = fred::util::redis_keyslot(key.as_bytes());
                    let sharded = if self.sharded { "1" } else { "0" };
                    let args: Vec<Value> = vec![ROOM_IDEM_LUA.into(), 1.into(), key.as_str().into(), self.idem_ms.into(), channel.into(), value, sharded.into()];
                    p.custom(CustomCommand::new_static("EVAL", ClusterHash::Custom(slot), false), args).await?
                }
                None if self.sharded => p.spublish(channel, value).await?,
                None => p.publish(channel, value).await?,
            };
        }
        p.try_all::<i64>().await.into_iter().collect()
    }
}

fn answer(reqs: impl Iterator<Item = RoomPublishReq>, result: PublishResult) {
    for req in reqs {
        let _ = req.reply.send(result);
    }
}

/// Delivers room messages from other nodes to this node's members (the subscriber hands them
/// over by channel name).
pub(crate) struct RoomInbound {
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) server_id: Arc<str>,
    pub(crate) metrics: Metrics,
    pub(crate) max_envelope: usize,
}

impl RoomInbound {
    /// Whether `msg` is on a room channel (then it was handled here).
    pub(crate) fn handle(&self, msg: &Message) -> bool {
        let Some(room) = msg.channel.strip_prefix(ROOM_CHANNEL_PREFIX) else { return false };
        let bytes = match &msg.value {
            Value::Bytes(b) => b.clone(),
            Value::String(s) => s.clone().into_inner(),
            _ => {
                self.metrics.broker_bad_envelopes.inc();
                return true;
            }
        };
        let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
            self.metrics.broker_bad_envelopes.inc();
            return true;
        };
        if bytes[..nl] == *self.server_id.as_bytes() {
            // Our own publication: the session delivered it to our members already.
            return true;
        }
        // Delivered everywhere but to the sending connection (a message with an idempotency key).
        let except = bytes[..nl]
            .strip_prefix(&[EVERYWHERE_MARK as u8])
            .and_then(|id| std::str::from_utf8(id).ok())
            .and_then(|id| uuid::Uuid::parse_str(id).ok());
        let envelope = bytes.slice(nl + 1..);
        if envelope.len() > self.max_envelope {
            self.metrics.broker_bad_envelopes.inc();
            return true;
        }
        match Frame::try_from(envelope) {
            Ok(frame) => {
                self.rooms.deliver(room, &frame, except);
            }
            Err(_) => self.metrics.broker_bad_envelopes.inc(),
        }
        true
    }
}
