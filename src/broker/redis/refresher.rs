//! The refresher: rewrites this node's lease every [`routes::LEASE_REFRESH`] and re-asserts every
//! route it holds (presence, then set entry) every [`routes::PRESENCE_REFRESH`], or at once after
//! Redis came back. It runs beside the route writer, so a refresh of many users never delays a
//! new connection's registration.
//!
//! The same pass rewrites this node's member count in `room_members:<room>` for every room with
//! members here, renewing the hash's TTL ([`super::rooms::ROOM_MEMBERS_TTL`]).
//!
//! It reads the hub's users, writes them, then reconciles: a user who left while the write was
//! in flight is handed to the writer, which removes the route again. So a refresh can never leave
//! behind the route of a user who is gone.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::routes::{self, Lease};

use super::writer::{write_routes, Dirty};
use super::BrokerError;

/// Users per pipeline when re-asserting every route: bounds one pipeline's size and the time it
/// holds the connection.
const REFRESH_CHUNK: usize = 2_000;
/// A failed refresh is tried again this soon rather than at the next period.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct Refresher {
    client: Client,
    server_id: Arc<str>,
    hub: Arc<Hub>,
    metrics: Metrics,
    lease: Lease,
    cluster: bool,
    rooms: Arc<crate::rooms::Rooms>,
    /// Notified to re-assert every route now (Redis came back).
    pub(crate) now: Arc<Notify>,
}

impl Refresher {
    pub(crate) fn new(node: &super::NodeInfo, client: Client, lease: Lease, cluster: bool) -> Self {
        Refresher {
            client,
            server_id: node.server_id.clone(),
            hub: node.hub.clone(),
            metrics: node.metrics.clone(),
            lease,
            cluster,
            rooms: node.rooms.clone(),
            now: Arc::new(Notify::new()),
        }
    }

    pub(crate) async fn run(mut self, writer: Arc<Dirty>, stop: CancellationToken) {
        let mut lease_tick = tokio::time::interval(routes::LEASE_REFRESH);
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        lease_tick.tick().await;
        let mut next_routes = tokio::time::Instant::now() + routes::PRESENCE_REFRESH;
        let now = self.now.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = lease_tick.tick() => {
                    self.write_lease().await;
                    if tokio::time::Instant::now() < next_routes {
                        continue;
                    }
                }
                _ = now.notified() => {}
            }
            let ok = self.reassert_all(&writer, &stop).await;
            if stop.is_cancelled() {
                return;
            }
            let wait = if ok { routes::PRESENCE_REFRESH } else { RETRY_INTERVAL };
            next_routes = tokio::time::Instant::now() + wait;
        }
    }

    fn lease_value(&self) -> String {
        let mut lease = self.lease.clone();
        lease.connections = self.hub.connections();
        serde_json::to_string(&lease).expect("lease serializes")
    }

    /// At start: `SET server_alive:<id> <lease JSON> EX 15 NX`. Refused (with the time left on
    /// the holder's lease) when another node holds the id: it is alive, or died less than
    /// [`routes::LEASE_TTL`] ago without a drain.
    pub(crate) async fn claim_lease(&self) -> Result<(), BrokerError> {
        let key = routes::server_alive_key(&self.server_id);
        let ttl = Some(Expiration::EX(routes::LEASE_TTL.as_secs() as i64));
        let set: Option<String> = self
            .client
            .set(&key, self.lease_value(), ttl, Some(SetOptions::NX), false)
            .await
            .map_err(|source| BrokerError::Lease { key: key.clone(), source })?;
        if set.is_some() {
            return Ok(());
        }
        // Anything but a positive TTL (the key just expired, or no TTL at all) is "unknown".
        let pttl: Option<i64> = self.client.pttl(&key).await.ok();
        let expires_in = pttl.filter(|ms| *ms > 0).map(|ms| Duration::from_millis(ms as u64));
        Err(BrokerError::LeaseHeld { server: self.server_id.to_string(), key, expires_in })
    }

    /// `SET server_alive:<id> <lease JSON> EX 15`.
    pub(crate) async fn write_lease(&self) -> bool {
        let value = self.lease_value();
        let ttl = Some(Expiration::EX(routes::LEASE_TTL.as_secs() as i64));
        let r: Result<(), _> = self.client.set(routes::server_alive_key(&self.server_id), value, ttl, None, false).await;
        r.map_err(|e| {
            self.metrics.redis_errors.inc();
            warn!(error = %e, "lease write failed");
        })
        .is_ok()
    }

    /// Re-asserts every route, chunk by chunk, then reconciles. Returns whether every chunk was
    /// written.
    async fn reassert_all(&mut self, writer: &Dirty, stop: &CancellationToken) -> bool {
        let users = self.hub.users();
        let mut ok = self.write_lease().await;
        for chunk in users.chunks(REFRESH_CHUNK) {
            if stop.is_cancelled() {
                // A drain: it removes every route itself, once this task has returned.
                return ok;
            }
            ok &= self.reassert(chunk).await;
            for u in chunk.iter().filter(|u| !self.hub.contains(u)) {
                // Left while we wrote it: the writer removes it again (reads the hub then).
                writer.sync(u);
            }
        }
        ok &= self.refresh_room_counts().await;
        if !ok {
            self.metrics.redis_errors.inc();
            warn!(users = users.len(), "route refresh failed; retrying in {RETRY_INTERVAL:?}");
        }
        ok
    }

    /// `HSET room_members:<r> <server> <n>` and `EXPIRE` for every room with members here, in
    /// pipelines of [`REFRESH_CHUNK`] rooms. A room emptied meanwhile is the room task's to clear
    /// (it reads the count after each change), so only counts above 0 are written.
    async fn refresh_room_counts(&self) -> bool {
        let counts: Vec<_> = self.rooms.counts().into_iter().filter(|(_, n)| *n > 0).collect();
        let mut ok = true;
        for chunk in counts.chunks(REFRESH_CHUNK) {
            let p = self.client.pipeline();
            for (room, n) in chunk {
                let key = super::rooms::room_members_key(room);
                let _: Result<(), _> = p.hset(&key, (self.server_id.as_ref(), *n as i64)).await;
                let _: Result<(), _> = p.expire(&key, super::rooms::ROOM_MEMBERS_TTL.as_secs() as i64, None).await;
            }
            ok &= p.all::<Value>().await.is_ok();
        }
        ok
    }

    async fn reassert(&self, users: &[Arc<str>]) -> bool {
        write_routes(&self.client, &self.server_id, self.cluster, &self.hub, users, &[], &[]).await.is_ok()
    }
}
