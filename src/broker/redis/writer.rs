//! The route writer: keeps this node's entries in `user_servers:<u>` and its `user_online:<u>:<s>`
//! keys in step with the hub. It reconciles instead of replaying events: for each user it reads
//! the hub *now* and writes add or remove, so a connect racing a disconnect of the same user can
//! never leave the table wrong.
//!
//! A route is always written presence first (`SET user_online`), then the set entry (`SADD`):
//! another node's stale-route check (entry present, presence missing => SREM) can then never
//! remove a route that is being written. On a Cluster the two keys live on different shards, so
//! the SADDs go out only after the SETs are confirmed.
//!
//! Beside the route it keeps the user's connection count on this node in `user_conns:<u>` (a
//! HASH field per node, same TTL as presence): written with every change, read only by the API.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pipeline;
use fred::prelude::*;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::routes;

/// Capacity of the queue of connects waiting for their route (each with its waiter). Connects
/// wait for room (bounded by [`super::REGISTER_WAIT`]). Disconnects and heartbeats never queue:
/// they mark the user in [`Dirty`], a set with one entry per user, so none is ever dropped.
pub const ROUTE_QUEUE: usize = 8_192;
/// Route operations per writer batch at most.
const ROUTE_BATCH: usize = 1_024;
/// A failed route write is retried after this long (not at the next 30 s refresh).
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Users whose route may no longer match the hub (a disconnect) or should be re-asserted (a
/// heartbeat), coalesced: at most one entry per user, so the set is bounded by the users this
/// node has seen since the writer's last batch, and marking never fails or waits.
#[derive(Default)]
pub(crate) struct Dirty {
    users: std::sync::Mutex<Dirtied>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct Dirtied {
    synced: HashSet<Arc<str>>,
    touched: HashSet<Arc<str>>,
}

impl Dirty {
    /// After a disconnect: the writer makes the route match the hub for `user`.
    pub(crate) fn sync(&self, user: &Arc<str>) {
        self.lock().synced.insert(user.clone());
        self.changed.notify_one();
    }

    /// A heartbeat: the writer re-asserts the user's route.
    pub(crate) fn touch(&self, user: &Arc<str>) {
        self.lock().touched.insert(user.clone());
        self.changed.notify_one();
    }

    fn take(&self) -> Dirtied {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dirtied> {
        // Every update is one insert or a take: a poisoned lock is still consistent.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) enum RouteOp {
    /// Make the route table match the hub for this user; reply once Redis confirmed the route.
    /// The reply is dropped (never sent) if the write failed.
    Sync(Arc<str>, oneshot::Sender<()>),
    /// Redis may have lost everything (reconnect, or a stall ended): forget what was confirmed.
    Reassert,
    /// Drain: remove every route of this node and its lease; reply once done. Nothing is added
    /// after it.
    Leave(oneshot::Sender<()>),
}

pub(crate) struct RouteWriter {
    client: Client,
    server_id: Arc<str>,
    hub: Arc<Hub>,
    metrics: Metrics,
    cluster: bool,
    /// Users whose route Redis confirmed and that this node has not removed since.
    confirmed: HashSet<Arc<str>>,
    /// Users whose last write (add or remove) failed: retried on a timer.
    retry: HashSet<Arc<str>>,
    /// Set by a drain: the reply owed once every route is removed.
    leaving: Option<Option<oneshot::Sender<()>>>,
    /// Disconnects and heartbeats, coalesced.
    dirty: Arc<Dirty>,
}

/// One batch's work, after coalescing.
#[derive(Default)]
struct Plan {
    add: Vec<Arc<str>>,
    remove: Vec<Arc<str>>,
    /// Users whose route stands but whose connection count may have changed.
    recount: Vec<Arc<str>>,
    waiters: Vec<(Arc<str>, oneshot::Sender<()>)>,
}

impl RouteWriter {
    pub(crate) fn new(client: Client, server_id: Arc<str>, hub: Arc<Hub>, metrics: Metrics, cluster: bool, dirty: Arc<Dirty>) -> Self {
        RouteWriter {
            dirty,
            client,
            server_id,
            hub,
            metrics,
            cluster,
            confirmed: HashSet::new(),
            retry: HashSet::new(),
            leaving: None,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<RouteOp>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(ROUTE_BATCH);
        loop {
            let pending = !self.retry.is_empty() || matches!(self.leaving, Some(Some(_)));
            tokio::select! {
                n = rx.recv_many(&mut batch, ROUTE_BATCH) => if n == 0 { return },
                _ = self.dirty.changed.notified() => {}
                _ = tokio::time::sleep(RETRY_INTERVAL), if pending => {}
                _ = stop.cancelled() => return,
            }
            let plan = self.plan(batch.drain(..));
            self.apply(plan).await;
            self.finish_leave().await;
        }
    }

    /// Coalesces a batch (and the retries) into the users to add and remove.
    fn plan(&mut self, ops: impl Iterator<Item = RouteOp>) -> Plan {
        let mut users: HashSet<Arc<str>> = std::mem::take(&mut self.retry);
        let Dirtied { synced, touched } = self.dirty.take();
        users.extend(synced);
        let mut plan = Plan::default();
        for op in ops {
            match op {
                RouteOp::Sync(u, w) => {
                    plan.waiters.push((u.clone(), w));
                    users.insert(u);
                }
                RouteOp::Reassert => self.confirmed.clear(),
                RouteOp::Leave(tx) => self.leaving = Some(Some(tx)),
            }
        }
        for u in users.into_iter().chain(touched.iter().cloned()) {
            let here = self.hub.contains(&u);
            if here && self.leaving.is_none() && (touched.contains(&u) || !self.confirmed.contains(&u)) {
                plan.add.push(u);
            } else if here && self.leaving.is_none() {
                plan.recount.push(u);
            } else if !here {
                plan.remove.push(u);
            }
        }
        plan.add.sort_unstable();
        plan.add.dedup();
        plan.remove.sort_unstable();
        plan.remove.dedup();
        plan.recount.sort_unstable();
        plan.recount.dedup();
        plan
    }

    async fn apply(&mut self, plan: Plan) {
        let ok = plan.add.is_empty() && plan.remove.is_empty() && plan.recount.is_empty() || self.write(&plan).await;
        if ok {
            for u in &plan.remove {
                self.confirmed.remove(u);
            }
            self.confirmed.extend(plan.add.iter().cloned());
        } else {
            self.metrics.redis_errors.inc();
            self.retry.extend(plan.add.iter().chain(&plan.remove).chain(&plan.recount).cloned());
        }
        // A waiter is released only when its user's route is confirmed (written now, or before).
        for (u, w) in plan.waiters {
            if self.confirmed.contains(&u) {
                let _ = w.send(());
            }
        }
    }

    /// Writes adds, removes and counts. Returns whether Redis confirmed all.
    async fn write(&self, plan: &Plan) -> bool {
        write_routes(&self.client, &self.server_id, self.cluster, &self.hub, &plan.add, &plan.remove, &plan.recount)
            .await
            .map_err(|e| warn!(error = %e, "route table write failed; retrying"))
            .is_ok()
    }

    /// Drain: once asked, removes the lease and every route this node may hold; retried on the
    /// timer until it succeeds.
    async fn finish_leave(&mut self) {
        let Some(Some(_)) = &self.leaving else { return };
        let users: HashSet<Arc<str>> = self.confirmed.iter().chain(&self.retry).cloned().chain(self.hub.users()).collect();
        let p = self.client.pipeline();
        let _: Result<(), _> = p.del(routes::server_alive_key(&self.server_id)).await;
        for u in &users {
            remove_route(&p, u, &self.server_id).await;
        }
        match p.all::<Value>().await {
            Ok(_) => {
                debug!(routes = users.len(), "removed this node's routes and lease");
                self.confirmed.clear();
                self.retry.clear();
                if let Some(Some(tx)) = self.leaving.take() {
                    let _ = tx.send(());
                }
                self.leaving = Some(None);
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                warn!(error = %e, "could not remove this node's routes; retrying");
            }
        }
    }
}

/// Writes routes for `add` (presence, then set entry: on a Cluster the SADDs go out only once the
/// SETs are confirmed, as the keys live on different shards), writes the connection counts
/// from `hub` of those and of `recount`, and removes the routes of `remove`.
pub(crate) async fn write_routes(
    client: &Client,
    server: &str,
    cluster: bool,
    hub: &Hub,
    add: &[Arc<str>],
    remove: &[Arc<str>],
    recount: &[Arc<str>],
) -> Result<(), fred::error::Error> {
    let p = client.pipeline();
    for u in add {
        set_presence(&p, u, server).await;
    }
    for u in add.iter().chain(recount) {
        set_count(&p, u, server, hub.count(u)).await;
    }
    for u in remove {
        remove_route(&p, u, server).await;
    }
    let p = if cluster && !add.is_empty() {
        p.all::<Value>().await?;
        client.pipeline()
    } else {
        p
    };
    for u in add {
        add_entry(&p, u, server).await;
    }
    p.all::<Value>().await.map(|_| ())
}

/// `SET user_online:<u>:<s> 1 EX 60`: the proof the route is alive, written before the entry.
async fn set_presence(p: &Pipeline<Client>, user: &str, server: &str) {
    let ttl = Some(Expiration::EX(routes::ONLINE_TTL.as_secs() as i64));
    let _: Result<(), _> = p.set(routes::user_online_key(user, server), "1", ttl, None, false).await;
}

/// `HSET user_conns:<u> <s> <n>` and its TTL (presence's): a dead node's field outlives it only
/// while another node refreshes the hash, and readers skip nodes without a live route.
async fn set_count(p: &Pipeline<Client>, user: &str, server: &str, n: usize) {
    let key = routes::user_conns_key(user);
    let _: Result<(), _> = p.hset(&key, (server.to_string(), n as u64)).await;
    let _: Result<(), _> = p.expire(&key, routes::ONLINE_TTL.as_secs() as i64, None).await;
}

/// `SADD user_servers:<u> <s>`.
async fn add_entry(p: &Pipeline<Client>, user: &str, server: &str) {
    let _: Result<(), _> = p.sadd(routes::user_servers_key(user), server.to_string()).await;
}

/// `SREM` the entry, `DEL` the presence key and `HDEL` the count.
pub(crate) async fn remove_route(p: &Pipeline<Client>, user: &str, server: &str) {
    let _: Result<(), _> = p.srem(routes::user_servers_key(user), server.to_string()).await;
    let _: Result<(), _> = p.del(routes::user_online_key(user, server)).await;
    let _: Result<(), _> = p.hdel(routes::user_conns_key(user), server.to_string()).await;
}
