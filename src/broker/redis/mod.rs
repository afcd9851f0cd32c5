//! The Redis broker of a node in a fleet: one command connection and one subscriber connection
//! (fred handles the per-shard connections of a Cluster), and seven tasks with one job each:
//! - [`writer`]: keeps this node's routes (`user_servers`, `user_online`) in step with the hub;
//! - [`refresher`]: re-asserts every route and the lease on a timer, off the path of new
//!   connections;
//! - [`publisher`]: routes envelopes to the receivers' other nodes, in batches;
//! - [`subscriber`]: delivers what arrives on this node's channel to the hub, and room channels'
//!   messages to the room members (run by a supervisor that restarts it if it panics);
//! - [`rooms`]: two tasks, room channel subscriptions (while a room has members here) with the
//!   per-node member counts, and room publishing;
//! - the connection watcher: the degraded state and its probe, re-registering after a reconnect.
//!
//! [`lookup`] answers the HTTP API's presence and room questions.
//!
//! With `--history`, [`history`] keeps every message to a user in Redis with an offset, and
//! reads it back for a resume. The publisher's and the history's scripts run through [`script`]:
//! EVALSHA, and SCRIPT LOAD only when Redis has lost the script (NOSCRIPT).
//!
//! Redis trouble never stalls the node: every wait has a deadline, and while Redis is known to be
//! unreachable (`degraded`) sends are answered `unavailable` at once instead of queueing behind
//! a stalled connection. A probe clears the state as soon as Redis answers again.

mod history;
mod lookup;
mod publisher;
mod refresher;
mod reorder;
mod rooms;
mod script;
mod subscriber;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::Frame;
use crate::redis::{PubsubMode, RedisConfig, RedisConfigError};
use crate::routes::{self, Lease};

use super::{HistoryConfig, Publish, PublishError, Recovery, Registered, Ticket};
use publisher::{PublishReq, Publisher};
use writer::{RouteOp, RouteWriter};

pub use lookup::{LookupError, LOOKUP_TIMEOUT};
pub use history::{REPLAY_DEADLINE, REPLAY_MAX};
pub use publisher::PUBLISH_QUEUE;
pub use rooms::{room_channel, room_members_key, JOIN_DEADLINE, ROOM_CHANNEL_PREFIX, ROOM_MEMBERS_PREFIX, ROOM_MEMBERS_TTL, ROOM_PUBLISH_QUEUE};
pub use writer::ROUTE_QUEUE;
pub(crate) use subscriber::inbound;

/// `d` as PX milliseconds (at least 1: PX 0 is an error).
pub(crate) fn px(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// How long a new connection waits for Redis to confirm its route before its upgrade goes ahead
/// anyway (the route is then written as soon as Redis answers). Short, so a Redis stall never
/// holds a handshake for long: new connections are answered within this plus the upgrade itself.
pub const REGISTER_WAIT: Duration = Duration::from_secs(1);
/// While degraded, how often Redis is probed with a PING.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A probe that takes longer than this failed (Redis paused, failing over, or gone).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// On drain, after this node's routes are gone: how long publishes that other nodes routed here
/// just before may still take to arrive. On standalone Redis the fence (see [`RedisBroker::leave`])
/// proves it sooner; on a Cluster a pipelined route may publish one round trip after reading the
/// route set.
const LEAVE_GRACE: Duration = Duration::from_millis(300);
/// How long Redis may go unanswered before the node reports itself unready (`/ready` 503). A
/// short stall (a failover, a `CLIENT PAUSE`, a slow fork) ends well within it: every node still
/// delivers locally and answers remote sends `unavailable`, so pulling the whole fleet out of a
/// load balancer for it would only turn a blip into an outage. Longer, and balancers keep sending
/// clients to nodes that cannot reach the rest of the fleet.
pub const READY_GRACE: Duration = Duration::from_secs(5);
/// How often the readiness watcher PINGs Redis (one at a time). A stall is counted from the first
/// PING it left unanswered, so `/ready` turns between [`READY_GRACE`] and this much later.
pub const READY_PING_INTERVAL: Duration = Duration::from_millis(500);
/// A readiness PING not answered within this is abandoned (the next one is sent).
const READY_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long broker shutdown (stopping tasks, QUIT) may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the Redis broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] RedisConfigError),
    #[error("cannot subscribe to {channel}: {source}")]
    Subscribe { channel: String, source: fred::error::Error },
    /// Another process holds this id's lease: two live nodes with one id would share a channel
    /// and a route table entry, and each one's drain would remove the other's routes.
    #[error(
        "server id {server:?} is in use: another node holds its lease {key} (it expires in {}); \
         start with another --server-id, or, if that node is gone, wait for the lease to expire \
         or delete it (`redis-cli DEL {key}`)",
        expires_in.map_or_else(|| "an unknown time".to_string(), |d| format!("{} s", d.as_secs_f64().ceil() as u64))
    )]
    LeaseHeld { server: String, key: String, expires_in: Option<Duration> },
    #[error("cannot write the lease {key}: {source}")]
    Lease { key: String, source: fred::error::Error },
}

/// What a node tells the broker about itself.
pub struct NodeInfo {
    pub server_id: Arc<str>,
    pub address: String,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    /// Treat a route to a node without a `server_alive` lease as dead. Off only while Go nodes
    /// (which write no lease) share the Redis.
    pub require_lease: bool,
    /// Largest envelope from Redis worth delivering (what a client connection can be written).
    pub max_envelope: usize,
    /// This node's room members.
    pub rooms: Arc<crate::rooms::Rooms>,
    /// Keep every message to a user in its history (`--history`).
    pub history: Option<HistoryConfig>,
    /// How long idempotency keys are remembered in Redis.
    pub idem_window: Duration,
}

/// Whether Redis is known to be unreachable, shared by the broker's tasks; and whether a task the
/// node cannot work without has ended (then the node is not ready until it restarts).
#[derive(Debug, Default)]
pub(crate) struct Health {
    degraded: AtomicBool,
    failed: AtomicBool,
}

impl Health {
    /// A task the node needs ended for good: readiness ends with it.
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }
    /// Marks Redis unreachable; returns true if it was not already.
    pub(crate) fn degrade(&self) -> bool {
        !self.degraded.swap(true, Ordering::Relaxed)
    }
    pub(crate) fn restore(&self) -> bool {
        self.degraded.swap(false, Ordering::Relaxed)
    }
}

/// Whether Redis answers, for `/ready`: written by the readiness watcher, read by probes.
#[derive(Debug)]
struct Readiness {
    /// The broker's start: the base of the two times below.
    base: std::time::Instant,
    /// Milliseconds after `base` at which the oldest PING still unanswered was sent (0: none).
    /// Measured from the send, not from the last answer, so a stall counts from when it began
    /// at the earliest.
    unanswered_since_ms: std::sync::atomic::AtomicU64,
    /// Milliseconds after `base` since which the subscriber connection is down (0: it is up).
    sub_down_ms: std::sync::atomic::AtomicU64,
}

impl Readiness {
    fn new() -> Self {
        Readiness { base: std::time::Instant::now(), unanswered_since_ms: Default::default(), sub_down_ms: Default::default() }
    }
    fn now_ms(&self) -> u64 {
        // max(1): 0 means "none".
        (self.base.elapsed().as_millis() as u64).max(1)
    }
    /// A PING goes out; keeps the time of an older one still unanswered.
    fn asking(&self) {
        let _ = self.unanswered_since_ms.compare_exchange(0, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }
    fn answered(&self) {
        self.unanswered_since_ms.store(0, Ordering::Relaxed);
    }
    fn subscriber_up(&self, up: bool) {
        if up {
            self.sub_down_ms.store(0, Ordering::Relaxed);
        } else {
            let _ = self.sub_down_ms.compare_exchange(0, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }
    /// Ready unless a PING has gone unanswered, or the subscriber been down, for [`READY_GRACE`].
    fn is_ready(&self) -> bool {
        let now = self.now_ms();
        let within = |since: u64| since == 0 || now.saturating_sub(since) < READY_GRACE.as_millis() as u64;
        within(self.unanswered_since_ms.load(Ordering::Relaxed)) && within(self.sub_down_ms.load(Ordering::Relaxed))
    }
}

/// The broker of a node in a Redis-backed fleet.
pub struct RedisBroker {
    config: RedisConfig,
    server_id: Arc<str>,
    client: Client,
    subscriber: SubscriberClient,
    sharded: bool,
    history: Option<HistoryConfig>,
    routes_tx: mpsc::Sender<RouteOp>,
    /// Disconnects and heartbeats for the writer, coalesced per user.
    dirty: Arc<writer::Dirty>,
    publish_tx: mpsc::Sender<PublishReq>,
    health: Arc<Health>,
    metrics: Metrics,
    /// Fires when the subscriber sees this node's drain fence.
    fence_seen: Arc<tokio::sync::Notify>,
    fence: String,
    /// Stops the refresher (first step of a drain).
    stop_refresh: CancellationToken,
    /// The refresher's task: a drain waits for it to stop before the writer's `Leave`, so a
    /// refresh in flight cannot write a route or the lease back after they were removed.
    refresher: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Stops the broker's other tasks, after the sessions are gone.
    stop: CancellationToken,
    tracker: TaskTracker,
    /// fred's re-subscriber task; aborted on shutdown.
    resubscriber: std::sync::Mutex<Option<JoinHandle<()>>>,
    rooms: rooms::RoomChannels,
    require_lease: bool,
    readiness: Arc<Readiness>,
}

impl RedisBroker {
    /// Connects, subscribes to this node's channel, writes the lease and starts the tasks.
    pub async fn start(config: RedisConfig, node: NodeInfo) -> Result<Arc<RedisBroker>, BrokerError> {
        let client = config.connect().await?;
        let started_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let lease = Lease { address: node.address.clone(), version: env!("CARGO_PKG_VERSION").to_string(), started_at, connections: 0 };
        let cluster = config.is_cluster();
        let refresher = refresher::Refresher::new(&node, client.clone(), lease, cluster);
        // The lease before anything else (subscribing to the id's channel included), and only if
        // no live node holds it.
        refresher.claim_lease().await?;
        let subscriber = config.connect_subscriber().await?;
        let channel = routes::server_channel(&node.server_id);
        let sharded = config.effective_pubsub() == PubsubMode::Sharded;
        let sub = if sharded { subscriber.ssubscribe(channel.clone()).await } else { subscriber.subscribe(channel.clone()).await };
        sub.map_err(|source| BrokerError::Subscribe { channel: channel.clone(), source })?;
        let resubscriber = subscriber.manage_subscriptions();

        let (routes_tx, routes_rx) = mpsc::channel(ROUTE_QUEUE);
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (tracker, stop, health) = (TaskTracker::new(), CancellationToken::new(), Arc::new(Health::default()));
        let room_setup = rooms::RoomSetup {
            client: client.clone(),
            subscriber: subscriber.clone(),
            rooms: node.rooms.clone(),
            server_id: node.server_id.clone(),
            sharded,
            health: health.clone(),
            metrics: node.metrics.clone(),
            idem_window: node.idem_window,
        };
        let room_channels = rooms::RoomChannels::start(room_setup, &tracker, stop.clone());
        let broker = Arc::new(RedisBroker {
            server_id: node.server_id.clone(),
            client: client.clone(),
            subscriber: subscriber.clone(),
            sharded,
            history: node.history.clone(),
            routes_tx,
            dirty: Arc::default(),
            publish_tx,
            health,
            metrics: node.metrics.clone(),
            fence_seen: Arc::new(tokio::sync::Notify::new()),
            // No receiverID: never delivered to anyone, recognised by its nonce.
            fence: format!("{{\"type\":\"wsctl_fence\",\"nonce\":\"{}\"}}", uuid::Uuid::new_v4()),
            stop_refresh: CancellationToken::new(),
            refresher: std::sync::Mutex::new(None),
            stop,
            tracker,
            resubscriber: std::sync::Mutex::new(Some(resubscriber)),
            rooms: room_channels,
            require_lease: node.require_lease,
            readiness: Arc::new(Readiness::new()),
            config,
        });
        let writer = RouteWriter::new(client.clone(), node.server_id.clone(), node.hub.clone(), node.metrics.clone(), cluster, broker.dirty.clone());
        broker.tracker.spawn(writer.run(routes_rx, broker.stop.clone()));
        let refresh_now = refresher.now.clone();
        let refresh_task = broker.tracker.spawn(refresher.run(broker.dirty.clone(), broker.stop_refresh.clone()));
        *broker.refresher.lock().unwrap_or_else(|p| p.into_inner()) = Some(refresh_task);
        let publisher = Publisher::new(client.clone(), &node, sharded, cluster, broker.health.clone());
        broker.tracker.spawn(publisher.run(publish_rx, broker.stop.clone()));
        let receiver = receiver_factory(&node, &broker, cluster);
        let sup = Supervised { subscriber: subscriber.clone(), metrics: node.metrics.clone(), health: broker.health.clone() };
        broker.tracker.spawn(supervise_receiver(receiver, sup, broker.stop.clone()));
        let watch = Watch {
            client: client.clone(),
            routes: broker.routes_tx.clone(),
            refresh_now,
            metrics: node.metrics.clone(),
            health: broker.health.clone(),
        };
        broker.tracker.spawn(watch_connection(watch, broker.stop.clone()));
        broker.tracker.spawn(watch_readiness(client.clone(), subscriber.clone(), broker.readiness.clone(), broker.stop.clone()));
        Ok(broker)
    }

    pub async fn register(&self, user: &Arc<str>) -> Registered {
        if self.health.is_degraded() {
            // Known down: don't wait; the writer registers the user once Redis answers.
            self.metrics.route_registrations_delayed.inc();
            self.unregister(user);
            return Registered::Later;
        }
        let (tx, rx) = oneshot::channel();
        let wait = async {
            self.routes_tx.send(RouteOp::Sync(user.clone(), tx)).await.ok()?;
            rx.await.ok()
        };
        match tokio::time::timeout(REGISTER_WAIT, wait).await {
            Ok(Some(())) => Registered::Yes,
            _ => {
                self.metrics.route_registrations_delayed.inc();
                Registered::Later
            }
        }
    }

    /// Never dropped, never waits: the user is marked dirty for the writer (see [`writer::Dirty`]).
    pub fn unregister(&self, user: &Arc<str>) {
        self.dirty.sync(user);
    }

    pub fn touch(&self, user: &Arc<str>) {
        self.dirty.touch(user);
    }

    pub fn publish(&self, msg: Publish, except: Option<uuid::Uuid>) -> Ticket {
        if self.health.is_degraded() {
            return Ticket::ready(Err(PublishError::Unavailable));
        }
        let (reply, ticket) = Ticket::pending();
        match self.publish_tx.try_send(PublishReq { msg, except, reply }) {
            Ok(()) => ticket,
            Err(mpsc::error::TrySendError::Full(_)) => Ticket::ready(Err(PublishError::Overloaded)),
            Err(mpsc::error::TrySendError::Closed(_)) => Ticket::ready(Err(PublishError::Stopped)),
        }
    }

    /// Resolves once this node is subscribed to `room`'s channel (after a local join).
    pub fn room_joined(&self, room: &str) -> Ticket {
        self.rooms.joined(room)
    }

    /// Publishes a room envelope to the other nodes with members; never waits.
    pub fn publish_room(&self, room: &Arc<str>, envelope: &Frame, idem: Option<super::RoomIdem>) -> Ticket {
        self.rooms.publish(room, envelope, idem)
    }

    /// The live nodes holding `user`, from the route table (bounded by [`LOOKUP_TIMEOUT`]).
    pub async fn user_nodes(&self, user: &str) -> Result<Vec<(String, Option<u64>)>, LookupError> {
        lookup::user_nodes(&self.client, user, self.require_lease).await
    }

    /// Member connections of `room` per live node, as the nodes last wrote them.
    pub async fn room_counts(&self, room: &str) -> Result<Vec<(String, u64)>, LookupError> {
        lookup::room_counts(&self.client, room).await
    }

    pub fn history(&self) -> Option<&HistoryConfig> {
        self.history.as_ref()
    }

    /// The messages of `user` kept after `since`: see [`history::recover`].
    pub async fn recover(&self, user: &str, since: u64, epoch: Option<&str>, budget: super::ReplayBudget) -> Recovery {
        match &self.history {
            Some(cfg) => history::recover(&self.client, cfg, user, since, epoch, budget).await,
            None => Recovery::failed(since, super::RecoveryGap::HistoryOff),
        }
    }

    /// Whether `/ready` answers 200: Redis answered a PING within the last [`READY_GRACE`] and
    /// the subscriber connection has not been down that long. A shorter stall degrades the node
    /// (remote sends answer `unavailable`) but keeps it in its load balancer.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready() && !self.health.has_failed()
    }

    pub fn describe(&self) -> String {
        self.config.describe()
    }

    /// Drain: removes every route of this node and its lease, then waits until messages other
    /// nodes routed here before that have arrived: on standalone Redis, until this node's own
    /// fence message comes back on its channel (Redis delivers a channel's messages in order, and
    /// a routing script runs atomically, so every earlier publish is ahead of the fence); on a
    /// Cluster, also a short grace for pipelined routes. All of it bounded by `budget`.
    pub async fn leave(&self, budget: Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        self.stop_refresh.cancel();
        // A refresh already sent to Redis would land after the writer's removal and bring routes
        // (or the lease) back: wait for it to finish first (it stops between chunks).
        let refresher = self.refresher.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = refresher {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                warn!(server = %self.server_id, "drain: the route refresh did not stop in time");
            }
        }
        let (tx, rx) = oneshot::channel();
        let removed = async {
            self.routes_tx.send(RouteOp::Leave(tx)).await.ok()?;
            rx.await.ok()
        };
        let _ = tokio::time::timeout_at(deadline, self.rooms.leave(&self.client)).await;
        if tokio::time::timeout_at(deadline, removed).await.ok().flatten().is_none() {
            warn!(server = %self.server_id, "drain: could not confirm route removal in time; `wsctl routes purge` cleans up");
            return;
        }
        let seen = self.fence_seen.notified();
        let channel = routes::server_channel(&self.server_id);
        let sent: Result<(), _> = if self.sharded {
            self.client.spublish(channel, self.fence.as_str()).await
        } else {
            self.client.publish(channel, self.fence.as_str()).await
        };
        if sent.is_ok() && tokio::time::timeout_at(deadline, seen).await.is_err() {
            warn!("drain: the fence did not come back in time");
        }
        if self.config.is_cluster() {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + LEAVE_GRACE)).await;
        }
        info!(server = %self.server_id, "left the route table");
    }

    /// Stops the broker's tasks and disconnects, bounded by [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(&self) {
        self.stop_refresh.cancel();
        self.stop.cancel();
        self.tracker.close();
        if let Some(h) = self.resubscriber.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
        let done = async {
            self.tracker.wait().await;
            let _ = self.subscriber.quit().await;
            let _ = self.client.quit().await;
        };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, done).await.is_err() {
            warn!("broker shutdown timed out");
        }
    }
}

/// Builds the subscriber's receiver; again after a panic, when what the old one held for
/// reordering (a Cluster's out-of-order messages, at most [`reorder::REORDER_TOTAL`]) is lost
/// with it.
fn receiver_factory(node: &NodeInfo, broker: &RedisBroker, cluster: bool) -> impl Fn() -> subscriber::Receiver + Send + 'static {
    let (hub, metrics, max_envelope, rooms, server_id) =
        (node.hub.clone(), node.metrics.clone(), node.max_envelope, node.rooms.clone(), node.server_id.clone());
    let (fence, fence_seen, history) = (broker.fence.clone(), broker.fence_seen.clone(), broker.history.is_some());
    move || subscriber::Receiver {
        hub: hub.clone(),
        metrics: metrics.clone(),
        max_envelope,
        fence: fence.clone(),
        fence_seen: fence_seen.clone(),
        rooms: rooms::RoomInbound { rooms: rooms.clone(), server_id: server_id.clone(), metrics: metrics.clone(), max_envelope },
        reorder: cluster.then(reorder::Reorder::default),
        history,
    }
}

/// What the receiver's supervisor needs.
struct Supervised {
    subscriber: SubscriberClient,
    metrics: Metrics,
    health: Arc<Health>,
}

/// Pause before a panicked receiver is started again, so a message that panics it every time
/// cannot spin a core.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);

/// Runs the receiver, and starts it again (counted in `wss_task_restarts`) if it panics: nothing
/// from Redis is meant to panic it, and if something does, the node goes on delivering. If it
/// ends for another reason before the broker stops (fred's message stream closed), the node is
/// no longer ready.
async fn supervise_receiver(make: impl Fn() -> subscriber::Receiver, s: Supervised, stop: CancellationToken) {
    loop {
        let task = tokio::spawn(make().run(s.subscriber.message_rx(), stop.clone()));
        match task.await {
            Err(e) if e.is_panic() => {
                s.metrics.task_restarts.inc();
                warn!(error = %e, "the subscriber's receiver panicked; starting it again");
                tokio::time::sleep(RESTART_BACKOFF).await;
            }
            _ if stop.is_cancelled() => return,
            _ => {
                s.health.fail();
                warn!("the subscriber's message stream ended: this node is no longer ready");
                return;
            }
        }
    }
}

/// What the connection watcher needs.
struct Watch {
    client: Client,
    routes: mpsc::Sender<RouteOp>,
    refresh_now: Arc<tokio::sync::Notify>,
    metrics: Metrics,
    health: Arc<Health>,
}

/// Watches the command connection: marks the broker degraded on errors, probes Redis while it is,
/// and after a reconnect has the writer re-register every route (Redis may have restarted empty).
async fn watch_connection(w: Watch, stop: CancellationToken) {
    let mut reconnects = w.client.reconnect_rx();
    let mut errors = w.client.error_rx();
    // A steady tick, not a sleep guarded by `if degraded`: a select's guard is read only when the
    // select starts, and the publisher marks the broker degraded from another task.
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(server) => {
                    w.metrics.redis_reconnects.inc();
                    info!(%server, "Redis connection restored; re-registering routes");
                    reassert(&w).await;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            e = errors.recv() => match e {
                Ok((error, server)) => {
                    if w.health.degrade() {
                        warn!(%error, server = ?server, "Redis connection lost: remote sends answer `unavailable`");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.cancelled() => return,
            _ = tick.tick() => if w.health.is_degraded() {
                probe(&w).await;
            },
        }
    }
}

/// PINGs Redis every [`READY_PING_INTERVAL`] (one at a time, each bounded) and notes since when
/// one has gone unanswered, and the subscriber connection's state, for [`RedisBroker::is_ready`].
async fn watch_readiness(client: Client, subscriber: SubscriberClient, r: Arc<Readiness>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(READY_PING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        r.subscriber_up(subscriber.is_connected());
        r.asking();
        let ping = tokio::select! {
            _ = stop.cancelled() => return,
            p = tokio::time::timeout(READY_PING_TIMEOUT, client.ping::<String>(None)) => p,
        };
        if matches!(ping, Ok(Ok(_))) {
            r.answered();
        }
    }
}

/// One PING; on an answer, the broker is healthy again and the routes are re-asserted (a stall
/// or outage may have lost writes).
async fn probe(w: &Watch) {
    let ping = tokio::time::timeout(PROBE_TIMEOUT, w.client.ping::<String>(None)).await;
    if matches!(ping, Ok(Ok(_))) && w.health.restore() {
        info!("Redis answers again: remote sends resume");
        reassert(w).await;
    }
}

/// Redis may have lost writes: the writer forgets what it confirmed, the refresher rewrites all.
async fn reassert(w: &Watch) {
    let _ = w.routes.send(RouteOp::Reassert).await;
    w.refresh_now.notify_one();
}
