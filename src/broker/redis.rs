//! The Redis broker: one command connection and one subscriber connection per node (fred handles
//! the per-shard connections of a Cluster), a route writer that keeps `user_servers`/`user_online`
//! and the node lease in step with the hub, and a publisher that routes chat envelopes.
//!
//! Both the writer and the publisher drain their bounded queues in batches and send each batch
//! as pipelines, so Redis round trips grow with time, not with traffic: at 30k msgs/s a batch
//! holds tens of messages and costs three round trips (SMEMBERS, EXISTS, PUBLISH).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::clients::{Pipeline, SubscriberClient};
use fred::prelude::*;
use fred::types::Message;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol;
use crate::redis::{PubsubMode, RedisConfig, RedisConfigError};
use crate::routes::{self, Lease};

use super::{EnqueueError, PublishReq};

/// Capacity of the queue from sessions to the publisher. When full, senders get an `overloaded`
/// error frame at once instead of waiting: 16 Ki messages is over half a second at 30k msgs/s.
pub const PUBLISH_QUEUE: usize = 16_384;
/// Messages routed per publisher batch at most; bounds a pipeline's size and latency.
const PUBLISH_BATCH: usize = 512;
/// Capacity of the queue of route-table changes. Connects wait for room (backpressure on
/// connection storms); heartbeats that find it full are dropped (the 30 s refresh covers them).
pub const ROUTE_QUEUE: usize = 8_192;
/// Route operations per writer batch at most.
const ROUTE_BATCH: usize = 1_024;
/// Users per pipeline when refreshing every route (30 s refresh, reconnect).
const REFRESH_CHUNK: usize = 2_000;

/// Why the Redis broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] RedisConfigError),
    #[error("cannot subscribe to {channel}: {source}")]
    Subscribe { channel: String, source: fred::error::Error },
}

enum RouteOp {
    /// Make the route table match the hub for this user; reply when written.
    Sync(Arc<str>, Option<oneshot::Sender<()>>),
    /// Refresh the user's `user_online` TTL (heartbeat).
    Touch(Arc<str>),
    /// Re-add and refresh every route this node holds, and the lease (timer, reconnect).
    RefreshAll,
    /// Rewrite the lease only.
    Lease,
    /// Reply once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The broker of a node in a Redis-backed fleet.
pub struct RedisBroker {
    config: RedisConfig,
    server_id: Arc<str>,
    client: Client,
    subscriber: SubscriberClient,
    routes_tx: mpsc::Sender<RouteOp>,
    publish_tx: mpsc::Sender<PublishReq>,
    /// Set while the connection is known to be down (between an error and a reconnect).
    degraded: Arc<AtomicBool>,
    /// Stops the broker's own tasks, after the sessions are gone.
    stop: CancellationToken,
    tracker: TaskTracker,
}

/// What a node tells the broker about itself.
pub struct NodeInfo {
    pub server_id: Arc<str>,
    pub address: String,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
}

impl RedisBroker {
    /// Connects, subscribes to this node's channel and starts the writer, publisher, subscriber
    /// and refresh tasks.
    pub async fn start(config: RedisConfig, node: NodeInfo) -> Result<Arc<RedisBroker>, BrokerError> {
        let client = config.connect().await?;
        let subscriber = config.connect_subscriber().await?;
        let channel = routes::server_channel(&node.server_id);
        let sharded = config.effective_pubsub() == PubsubMode::Sharded;
        let standalone = !config.is_cluster();
        let sub = if sharded { subscriber.ssubscribe(channel.clone()).await } else { subscriber.subscribe(channel.clone()).await };
        sub.map_err(|source| BrokerError::Subscribe { channel: channel.clone(), source })?;
        // Re-subscribes after every reconnect.
        let _resubscriber = subscriber.manage_subscriptions();

        let (routes_tx, routes_rx) = mpsc::channel(ROUTE_QUEUE);
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let broker = Arc::new(RedisBroker {
            config,
            server_id: node.server_id.clone(),
            client: client.clone(),
            subscriber: subscriber.clone(),
            routes_tx: routes_tx.clone(),
            publish_tx,
            degraded: Arc::new(AtomicBool::new(false)),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });

        let started_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let writer = RouteWriter {
            client: client.clone(),
            server_id: node.server_id.clone(),
            hub: node.hub.clone(),
            metrics: node.metrics.clone(),
            registered: HashSet::new(),
            lease: Lease { address: node.address.clone(), version: env!("CARGO_PKG_VERSION").to_string(), started_at, connections: 0 },
        };
        broker.tracker.spawn(writer.run(routes_rx, broker.stop.clone()));
        let publisher = Publisher {
            client: client.clone(),
            server_id: node.server_id.clone(),
            sharded,
            script: standalone.then(route_script),
            metrics: node.metrics.clone(),
            degraded: broker.degraded.clone(),
        };
        broker.tracker.spawn(publisher.run(publish_rx, broker.stop.clone()));
        broker.tracker.spawn(receive(subscriber.message_rx(), node.hub.clone(), node.metrics.clone(), broker.stop.clone()));
        broker.tracker.spawn(refresh_timer(routes_tx.clone(), broker.stop.clone()));
        broker.tracker.spawn(watch_connection(
            client.clone(),
            routes_tx,
            node.metrics.clone(),
            broker.degraded.clone(),
            broker.stop.clone(),
        ));
        // The lease, before the node accepts anyone.
        let _ = broker.routes_tx.send(RouteOp::RefreshAll).await;
        Ok(broker)
    }

    pub async fn sync_user(&self, user: &Arc<str>) {
        let (tx, rx) = oneshot::channel();
        if self.routes_tx.send(RouteOp::Sync(user.clone(), Some(tx))).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn sync_user_nowait(&self, user: &Arc<str>) {
        let _ = self.routes_tx.send(RouteOp::Sync(user.clone(), None)).await;
    }

    pub fn touch(&self, user: &Arc<str>) {
        // Full queue: drop it; the periodic refresh keeps the key alive anyway.
        let _ = self.routes_tx.try_send(RouteOp::Touch(user.clone()));
    }

    pub fn publish(&self, req: PublishReq) -> Result<(), (EnqueueError, PublishReq)> {
        self.publish_tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(r) => (EnqueueError::Overloaded, r),
            mpsc::error::TrySendError::Closed(r) => (EnqueueError::Stopped, r),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected() && !self.degraded.load(Ordering::Relaxed)
    }

    pub fn describe(&self) -> String {
        self.config.describe()
    }

    /// Flushes pending route changes, removes every route of this node and its lease, stops the
    /// broker's tasks and disconnects.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.routes_tx.send(RouteOp::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let _ = self.subscriber.quit().await;
        let _ = self.client.quit().await;
        info!(server = %self.server_id, "left the route table");
    }
}

/// The next batch of a worker's queue, at most `limit` items; once `stop` fires, everything still
/// queued (the queue is closed first: the broker itself holds a sender, so it never closes by
/// itself), then 0.
async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, limit: usize, stop: &CancellationToken) -> usize {
    if stop.is_cancelled() {
        rx.close();
        return rx.recv_many(batch, usize::MAX).await;
    }
    tokio::select! {
        n = rx.recv_many(batch, limit) => n,
        _ = stop.cancelled() => {
            rx.close();
            rx.recv_many(batch, usize::MAX).await
        }
    }
}

/// Keeps the route table and the lease in step with the hub. It reconciles instead of replaying
/// events: for each user it reads the hub *now* and writes add or remove, so a connect racing a
/// disconnect of the same user can never leave the table wrong.
struct RouteWriter {
    client: Client,
    server_id: Arc<str>,
    hub: Arc<Hub>,
    metrics: Metrics,
    /// Users this node believes are in the table; removals that failed stay here to be retried.
    registered: HashSet<Arc<str>>,
    lease: Lease,
}

impl RouteWriter {
    async fn run(mut self, mut rx: mpsc::Receiver<RouteOp>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(ROUTE_BATCH);
        while next_batch(&mut rx, &mut batch, ROUTE_BATCH, &stop).await > 0 {
            let mut waiters = Vec::new();
            let mut users: HashSet<Arc<str>> = HashSet::new();
            let mut touched: HashSet<Arc<str>> = HashSet::new();
            let mut refresh_all = false;
            let mut lease = false;
            for op in batch.drain(..) {
                match op {
                    RouteOp::Sync(u, w) => {
                        users.insert(u);
                        waiters.extend(w);
                    }
                    RouteOp::Touch(u) => {
                        touched.insert(u);
                    }
                    RouteOp::RefreshAll => refresh_all = true,
                    RouteOp::Lease => lease = true,
                    RouteOp::Flush(w) => waiters.push(w),
                }
            }
            if refresh_all {
                self.refresh_all().await;
            } else if lease {
                let p = self.client.pipeline();
                self.write_lease(&p).await;
                if let Err(e) = p.all::<Value>().await {
                    self.metrics.redis_errors.inc();
                    debug!(error = %e, "lease write failed");
                }
            }
            if !users.is_empty() || !touched.is_empty() {
                self.write(users, touched).await;
            }
            for w in waiters {
                let _ = w.send(());
            }
        }
        self.remove_everything().await;
    }

    fn add_route(&self, p: &Pipeline<Client>, user: &str) -> impl std::future::Future<Output = ()> + use<> {
        let set_key = routes::user_servers_key(user);
        let online_key = routes::user_online_key(user, &self.server_id);
        let server = self.server_id.to_string();
        let p = p.clone();
        async move {
            let _: Result<(), _> = p.sadd(set_key, server).await;
            let _: Result<(), _> = p.set(online_key, "1", Some(Expiration::EX(routes::ONLINE_TTL.as_secs() as i64)), None, false).await;
        }
    }

    async fn write(&mut self, users: HashSet<Arc<str>>, touched: HashSet<Arc<str>>) {
        let p = self.client.pipeline();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for u in users {
            if self.hub.contains(&u) {
                self.add_route(&p, &u).await;
                added.push(u);
            } else {
                let _: Result<(), _> = p.srem(routes::user_servers_key(&u), self.server_id.to_string()).await;
                let _: Result<(), _> = p.del(routes::user_online_key(&u, &self.server_id)).await;
                removed.push(u);
            }
        }
        for u in touched.into_iter().filter(|u| self.hub.contains(u)) {
            let key = routes::user_online_key(&u, &self.server_id);
            let _: Result<(), _> = p.set(key, "1", Some(Expiration::EX(routes::ONLINE_TTL.as_secs() as i64)), None, false).await;
        }
        // Added routes count as registered even if the write fails: the next refresh re-adds
        // them. Removals are forgotten only once Redis confirmed them.
        self.registered.extend(added);
        match p.all::<Value>().await {
            Ok(_) => {
                for u in &removed {
                    self.registered.remove(u);
                }
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                warn!(error = %e, "route table write failed; will retry on refresh");
            }
        }
    }

    async fn write_lease(&mut self, p: &Pipeline<Client>) {
        self.lease.connections = self.hub.connections();
        let lease = serde_json::to_string(&self.lease).expect("lease serializes");
        let ttl = Some(Expiration::EX(routes::LEASE_TTL.as_secs() as i64));
        let _: Result<(), _> = p.set(routes::server_alive_key(&self.server_id), lease, ttl, None, false).await;
    }

    /// Re-adds every route (SADD is idempotent), refreshes every TTL and the lease, and retries
    /// removals that failed.
    async fn refresh_all(&mut self) {
        let users = self.hub.users();
        let live: HashSet<&str> = users.iter().map(|u| u.as_ref()).collect();
        let gone: Vec<Arc<str>> = self.registered.iter().filter(|u| !live.contains(u.as_ref())).cloned().collect();
        let mut ok = true;
        let p = self.client.pipeline();
        self.write_lease(&p).await;
        for u in &gone {
            let _: Result<(), _> = p.srem(routes::user_servers_key(u), self.server_id.to_string()).await;
            let _: Result<(), _> = p.del(routes::user_online_key(u, &self.server_id)).await;
        }
        ok &= p.all::<Value>().await.map_err(|e| debug!(error = %e, "lease write failed")).is_ok();
        for chunk in users.chunks(REFRESH_CHUNK) {
            let p = self.client.pipeline();
            for u in chunk {
                self.add_route(&p, u).await;
            }
            ok &= p.all::<Value>().await.map_err(|e| debug!(error = %e, "route refresh failed")).is_ok();
        }
        if ok {
            for u in gone {
                self.registered.remove(&u);
            }
            self.registered.extend(users);
        } else {
            self.metrics.redis_errors.inc();
            warn!("route refresh failed; will retry");
        }
    }

    /// On shutdown: every route this node still holds, and the lease.
    async fn remove_everything(&mut self) {
        let p = self.client.pipeline();
        let _: Result<(), _> = p.del(routes::server_alive_key(&self.server_id)).await;
        let users: HashSet<Arc<str>> = self.registered.drain().chain(self.hub.users()).collect();
        for u in &users {
            let _: Result<(), _> = p.srem(routes::user_servers_key(u), self.server_id.to_string()).await;
            let _: Result<(), _> = p.del(routes::user_online_key(u, &self.server_id)).await;
        }
        if let Err(e) = p.all::<Value>().await {
            self.metrics.redis_errors.inc();
            warn!(error = %e, routes = users.len(), "could not remove this node's routes; `wsctl routes purge` will");
        }
    }
}

/// Routes chat envelopes to the receiver's other nodes, in batches, in arrival order (one
/// batch in flight at a time, so a sender's messages to one receiver never overtake each other).
struct Publisher {
    client: Client,
    server_id: Arc<str>,
    sharded: bool,
    /// On standalone Redis, the whole batch is routed by one script call (see [`route_script`]).
    script: Option<String>,
    metrics: Metrics,
    degraded: Arc<AtomicBool>,
}

impl Publisher {
    async fn run(self, mut rx: mpsc::Receiver<PublishReq>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while next_batch(&mut rx, &mut batch, PUBLISH_BATCH, &stop).await > 0 {
            let result = self.route(&batch).await;
            if let Err(e) = &result {
                warn!(error = %e, messages = batch.len(), "routing a batch failed");
                self.metrics.redis_errors.inc();
                self.degraded.store(true, Ordering::Relaxed);
            }
            for (i, req) in batch.drain(..).enumerate() {
                let remote = result.as_ref().map(|online| online[i]).map_err(|_| ());
                req.finish(remote, &self.metrics);
            }
        }
    }

    /// Looks up the receivers' routes, drops stale ones, publishes. Returns, per message, whether
    /// a live route to another node was found.
    async fn route(&self, batch: &[PublishReq]) -> Result<Vec<bool>, fred::error::Error> {
        match &self.script {
            Some(script) => self.route_by_script(script, batch).await,
            None => self.route_pipelined(batch).await,
        }
    }

    /// Standalone: one EVAL per batch does what [`Publisher::route_pipelined`] does in three
    /// round trips, inside Redis. EVAL rather than EVALSHA: the script text is a few hundred
    /// bytes per batch, and it survives a Redis restart without a NOSCRIPT retry.
    async fn route_by_script(&self, script: &str, batch: &[PublishReq]) -> Result<Vec<bool>, fred::error::Error> {
        let keys: Vec<String> = batch.iter().map(|r| routes::user_servers_key(&r.receiver)).collect();
        let mut args: Vec<Value> = Vec::with_capacity(batch.len() + 1);
        args.push(Value::from(self.server_id.as_ref()));
        args.extend(batch.iter().map(|r| Value::Bytes(r.envelope.clone())));
        let live: Vec<i64> = self.client.eval(script, keys, args).await?;
        Ok(live.into_iter().map(|n| n > 0).collect())
    }

    /// Cluster: route sets, presence keys and channels live in different slots, so no script can
    /// touch them all; three pipelined round trips per batch instead.
    async fn route_pipelined(&self, batch: &[PublishReq]) -> Result<Vec<bool>, fred::error::Error> {
        // 1. Every distinct receiver's route set, in one pipeline.
        let mut receivers: HashMap<&str, Vec<String>> = HashMap::new();
        for r in batch {
            receivers.entry(&r.receiver).or_default();
        }
        let names: Vec<&str> = receivers.keys().copied().collect();
        let p = self.client.pipeline();
        for u in &names {
            let _: () = p.smembers(routes::user_servers_key(u)).await?;
        }
        // try_all: one result per command (all() flattens a one-command pipeline's reply).
        let sets = p.try_all::<Vec<String>>().await.into_iter().collect::<Result<Vec<_>, _>>()?;

        // 2. Is each route to another node alive? (Our own routes are served by the hub.)
        let mut candidates: Vec<(&str, String)> = Vec::new();
        for (u, servers) in names.iter().zip(sets) {
            for s in servers {
                if *s != *self.server_id {
                    candidates.push((u, s));
                }
            }
        }
        let mut alive = Vec::new();
        if !candidates.is_empty() {
            let p = self.client.pipeline();
            for (u, s) in &candidates {
                let _: () = p.exists(routes::user_online_key(u, s)).await?;
            }
            alive = p.try_all::<i64>().await.into_iter().collect::<Result<Vec<_>, _>>()?;
        }
        for ((u, s), n) in candidates.into_iter().zip(alive) {
            if n > 0 {
                receivers.get_mut(u).expect("receiver listed").push(s);
            } else {
                // 3a. Stale: the node died or lost the key. Drop the route, as the spec says.
                let _: () = p_srem_stale(&self.client, u, &s).await;
            }
        }

        // 3b. One publish per (message, live node), all in one pipeline. The reply (subscriber
        // count) is ignored: on a Cluster it only counts the shard hit, never "delivered".
        let p = self.client.pipeline();
        let mut published = 0;
        let mut online = Vec::with_capacity(batch.len());
        for r in batch {
            let servers = &receivers[r.receiver.as_ref()];
            online.push(!servers.is_empty());
            for s in servers {
                let channel = routes::server_channel(s);
                if self.sharded {
                    let _: () = p.spublish(channel, r.envelope.clone()).await?;
                } else {
                    let _: () = p.publish(channel, r.envelope.clone()).await?;
                }
                published += 1;
            }
        }
        if published > 0 {
            let _: Value = p.all().await?;
        }
        Ok(online)
    }
}

/// The standalone routing script. KEYS[i] is the route set of message i's receiver, ARGV[1] this
/// node's id, ARGV[i+1] message i's envelope. For each distinct receiver it reads the set, keeps
/// the entries whose `user_online` key exists (SREM for the others, as the spec says), then
/// publishes each envelope once per live node other than this one (the hub delivered locally).
/// Returns, per message, the number of nodes published to. Keys other than KEYS are touched,
/// which standalone Redis allows (the Cluster path never uses this).
fn route_script() -> String {
    let sets = routes::USER_SERVERS_PREFIX;
    format!(
        r#"local me = ARGV[1]
local live_of = {{}}
local out = {{}}
for i, key in ipairs(KEYS) do
  local live = live_of[key]
  if live == nil then
    live = {{}}
    local user = string.sub(key, {skip})
    for _, s in ipairs(redis.call('SMEMBERS', key)) do
      if s ~= me then
        if redis.call('EXISTS', '{online}' .. user .. ':' .. s) == 1 then
          live[#live + 1] = s
        else
          redis.call('SREM', key, s)
        end
      end
    end
    live_of[key] = live
  end
  for _, s in ipairs(live) do
    redis.call('PUBLISH', '{channel}' .. s, ARGV[i + 1])
  end
  out[i] = #live
end
return out"#,
        skip = sets.len() + 1,
        online = routes::USER_ONLINE_PREFIX,
        channel = routes::SERVER_CHANNEL_PREFIX,
    )
}

/// Removes one stale route entry. Not pipelined: stale routes are rare and this keeps the
/// common path's pipelines simple. Failure is harmless (the next send or `routes purge` retries).
async fn p_srem_stale(client: &Client, user: &str, server: &str) {
    debug!(user, server, "removing stale route");
    let _: Result<(), _> = client.srem(routes::user_servers_key(user), server.to_string()).await;
}

/// Delivers envelopes arriving on this node's channel to the local sessions of their receiver.
async fn receive(mut rx: broadcast::Receiver<Message>, hub: Arc<Hub>, metrics: Metrics, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = stop.cancelled() => return,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics.broker_lagged.inc_by(n);
                warn!(lost = n, "subscriber fell behind; messages were dropped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(frame) = value_bytes(msg.value) else { continue };
        let Some(env) = protocol::parse_routed(&frame) else {
            debug!("ignoring a broker message that is not an envelope with a receiverID");
            continue;
        };
        if hub.deliver(&env.receiver, &frame, None) > 0 {
            if let Some(sent) = env.timestamp.as_deref().and_then(protocol::parse_timestamp) {
                if let Ok(d) = SystemTime::now().duration_since(sent) {
                    metrics.delivery_ms.observe(d.as_secs_f64() * 1e3);
                }
            }
        }
    }
}

fn value_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        _ => None,
    }
}

/// Refreshes the lease every [`routes::LEASE_REFRESH`] and every route every
/// [`routes::PRESENCE_REFRESH`].
async fn refresh_timer(tx: mpsc::Sender<RouteOp>, stop: CancellationToken) {
    let mut lease = tokio::time::interval(routes::LEASE_REFRESH);
    lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    lease.tick().await;
    let every = (routes::PRESENCE_REFRESH.as_secs() / routes::LEASE_REFRESH.as_secs()).max(1);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = lease.tick() => {}
            _ = stop.cancelled() => return,
        }
        n += 1;
        let op = if n % every == 0 { RouteOp::RefreshAll } else { RouteOp::Lease };
        let _ = tx.send(op).await;
    }
}

/// Watches the command connection: counts reconnects, and after each one re-registers every
/// route (Redis may have restarted empty).
async fn watch_connection(
    client: Client,
    tx: mpsc::Sender<RouteOp>,
    metrics: Metrics,
    degraded: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut reconnects = client.reconnect_rx();
    let mut errors = client.error_rx();
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(server) => {
                    metrics.redis_reconnects.inc();
                    degraded.store(false, Ordering::Relaxed);
                    info!(%server, "Redis connection restored; re-registering routes");
                    let _ = tx.send(RouteOp::RefreshAll).await;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            e = errors.recv() => match e {
                Ok((error, server)) => {
                    degraded.store(true, Ordering::Relaxed);
                    warn!(%error, server = ?server, "Redis connection lost");
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)), if degraded.load(Ordering::Relaxed) => {
                // A failed publish marks the node degraded; clear it once the client reports a
                // live connection again without a reconnect event (e.g. a transient timeout).
                if client.is_connected() {
                    degraded.store(false, Ordering::Relaxed);
                }
            }
        }
    }
}
