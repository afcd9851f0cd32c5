//! The publisher: routes envelopes to the receivers' other nodes, a batch at a time, in arrival
//! order (one batch in flight, so a sender's messages to one receiver never overtake each other).
//!
//! A route `user_servers:<u> ∋ s` is live when `user_online:<u>:<s>` exists and node `s` holds its
//! lease `server_alive:<s>` (unless the fleet has lease-less Go nodes). Dead routes are removed
//! and never published to, so an ack's `online:true` means a live node took the message.
//! - Standalone: one EVALSHA per batch reads, checks, cleans and publishes inside Redis.
//! - Cluster: the keys live on different shards, so two pipelined round trips read the route
//!   sets and check them, and a third publishes and removes the dead entries.
//!
//! Every batch has a deadline ([`BATCH_DEADLINE`]); a batch that misses it or fails marks the
//! broker degraded, and while it is, queued and new sends are answered `unavailable` at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::Metrics;
use crate::routes;

use super::super::{Publish, PublishError, PublishResult, Routed};
use super::{Health, NodeInfo};

/// Capacity of the node's queue towards Redis. When full, senders get `overloaded` at once
/// instead of waiting. Each connection has at most [`crate::server::PUBLISH_INFLIGHT`] messages
/// in it, so no connection can take more than that share.
pub const PUBLISH_QUEUE: usize = 16_384;
/// Messages routed per batch at most; bounds a pipeline's size and latency.
const PUBLISH_BATCH: usize = 512;
/// A batch not routed within this is failed (`unavailable`) and the broker marked degraded. With
/// one batch in flight, a send waits at most this for its answer, then everything queued behind
/// it is answered at once: every send is answered within about 2 s whatever Redis does.
pub const BATCH_DEADLINE: Duration = Duration::from_secs(2);

/// A message waiting in the queue, with where its outcome goes.
pub(crate) struct PublishReq {
    pub(crate) msg: Publish,
    pub(crate) reply: oneshot::Sender<PublishResult>,
}

pub(crate) struct Publisher {
    client: Client,
    server_id: Arc<str>,
    sharded: bool,
    require_lease: bool,
    /// On standalone Redis, the whole batch is routed by one script call (see [`route_script`]).
    script: Option<Script>,
    metrics: Metrics,
    health: Arc<Health>,
}

impl Publisher {
    pub(crate) fn new(client: Client, node: &NodeInfo, sharded: bool, cluster: bool, health: Arc<Health>) -> Self {
        Publisher {
            client,
            server_id: node.server_id.clone(),
            sharded,
            require_lease: node.require_lease,
            script: (!cluster).then(|| Script::from_lua(route_script())),
            metrics: node.metrics.clone(),
            health,
        }
    }

    pub(crate) async fn run(self, mut rx: mpsc::Receiver<PublishReq>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
                _ = stop.cancelled() => {
                    rx.close();
                    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
                        answer(batch.drain(..), Err(PublishError::Stopped));
                    }
                    return;
                }
            }
            if self.health.is_degraded() {
                answer(batch.drain(..), Err(PublishError::Unavailable));
                continue;
            }
            match tokio::time::timeout(BATCH_DEADLINE, self.route(&batch)).await {
                Ok(Ok(nodes)) => {
                    for (req, n) in batch.drain(..).zip(nodes) {
                        let _ = req.reply.send(Ok(Routed { nodes: n }));
                    }
                }
                failed => {
                    let why = failed.map_or_else(|_| "deadline passed".to_string(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
                    self.metrics.redis_errors.inc();
                    if self.health.degrade() {
                        warn!(error = %why, messages = batch.len(), "routing a batch failed: remote sends answer `unavailable` until Redis answers");
                    }
                    answer(batch.drain(..), Err(PublishError::Unavailable));
                }
            }
        }
    }

    /// Returns, per message, the number of other nodes it was published to.
    async fn route(&self, batch: &[PublishReq]) -> Result<Vec<u32>, fred::error::Error> {
        match &self.script {
            Some(script) => self.route_by_script(script, batch).await,
            None => self.route_pipelined(batch).await,
        }
    }

    /// Standalone: one EVALSHA. On NOSCRIPT (a Redis restarted empty) the script is loaded and the
    /// call repeated; the arguments are built again then rather than cloned for every call.
    async fn route_by_script(&self, script: &Script, batch: &[PublishReq]) -> Result<Vec<u32>, fred::error::Error> {
        let (keys, args) = self.script_args(batch);
        let live: Vec<i64> = match self.client.evalsha(script.sha1().clone(), keys, args).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                script.load(&self.client).await?;
                let (keys, args) = self.script_args(batch);
                self.client.evalsha(script.sha1().clone(), keys, args).await?
            }
            other => other?,
        };
        Ok(live.into_iter().map(|n| n.max(0) as u32).collect())
    }

    /// KEYS and ARGV of [`route_script`] for a batch.
    fn script_args(&self, batch: &[PublishReq]) -> (Vec<String>, Vec<Value>) {
        let keys = batch.iter().map(|r| routes::user_servers_key(&r.msg.receiver)).collect();
        let mut args: Vec<Value> = Vec::with_capacity(batch.len() + 2);
        args.push(Value::from(self.server_id.as_ref()));
        args.push(Value::from(if self.require_lease { "1" } else { "0" }));
        args.extend(batch.iter().map(|r| envelope_value(&r.msg)));
        (keys, args)
    }

    /// Cluster: three pipelined round trips (route sets; presence and leases; publishes and
    /// removal of dead entries).
    async fn route_pipelined(&self, batch: &[PublishReq]) -> Result<Vec<u32>, fred::error::Error> {
        let names = distinct_receivers(batch);
        let p = self.client.pipeline();
        for u in &names {
            let _: () = p.smembers(routes::user_servers_key(u)).await?;
        }
        // try_all: one result per command (all() flattens a one-command pipeline's reply).
        let sets = p.try_all::<Vec<String>>().await.into_iter().collect::<Result<Vec<_>, _>>()?;
        let candidates: Vec<(&str, String)> =
            names.iter().zip(sets).flat_map(|(u, servers)| servers.into_iter().map(move |s| (*u, s))).filter(|(_, s)| **s != *self.server_id).collect();
        let (live, dead) = self.check(&candidates).await?;
        let p = self.client.pipeline();
        for (u, s) in &dead {
            // Dead: the node died or lost the key. Drop the entry, as the spec says.
            let _: () = p.srem(routes::user_servers_key(u), s.to_string()).await?;
        }
        let mut out = Vec::with_capacity(batch.len());
        for r in batch {
            let servers = live.get(r.msg.receiver.as_ref()).map_or(&[][..], Vec::as_slice);
            out.push(servers.len() as u32);
            for s in servers {
                let channel = routes::server_channel(s);
                let envelope = envelope_value(&r.msg);
                if self.sharded {
                    let _: () = p.spublish(channel, envelope).await?;
                } else {
                    let _: () = p.publish(channel, envelope).await?;
                }
            }
        }
        // The replies (subscriber counts) are not read: on a Cluster they only count the shard hit.
        if !dead.is_empty() || out.iter().any(|n| *n > 0) {
            let _: Value = p.all().await?;
        }
        Ok(out)
    }

    /// Splits route candidates into live (by receiver) and dead, in one pipelined round trip.
    async fn check<'a>(
        &self,
        candidates: &'a [(&'a str, String)],
    ) -> Result<(HashMap<&'a str, Vec<&'a str>>, Vec<(&'a str, &'a str)>), fred::error::Error> {
        let mut live: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut dead = Vec::new();
        if candidates.is_empty() {
            return Ok((live, dead));
        }
        let mut servers: Vec<&str> = candidates.iter().map(|(_, s)| s.as_str()).collect();
        servers.sort_unstable();
        servers.dedup();
        let p = self.client.pipeline();
        for (u, s) in candidates {
            let _: () = p.exists(routes::user_online_key(u, s)).await?;
        }
        if self.require_lease {
            for s in &servers {
                let _: () = p.exists(routes::server_alive_key(s)).await?;
            }
        }
        let found = p.try_all::<i64>().await.into_iter().collect::<Result<Vec<_>, _>>()?;
        let (online, leases) = found.split_at(candidates.len());
        let leased = |s: &str| !self.require_lease || servers.binary_search(&s).is_ok_and(|i| leases[i] > 0);
        for ((u, s), n) in candidates.iter().zip(online) {
            if *n > 0 && leased(s) {
                live.entry(*u).or_default().push(s.as_str());
            } else {
                dead.push((*u, s.as_str()));
            }
        }
        Ok((live, dead))
    }
}

/// The envelope as a Redis argument: a reference count, not a copy.
fn envelope_value(msg: &Publish) -> Value {
    Value::Bytes(bytes::Bytes::from(msg.envelope.clone()))
}

fn distinct_receivers(batch: &[PublishReq]) -> Vec<&str> {
    let mut names: Vec<&str> = batch.iter().map(|r| r.msg.receiver.as_ref()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn answer(reqs: impl Iterator<Item = PublishReq>, result: PublishResult) {
    for req in reqs {
        let _ = req.reply.send(result);
    }
}

/// The standalone routing script. KEYS[i] is the route set of message i's receiver; ARGV[1] this
/// node's id, ARGV[2] "1" if a route needs its node's lease, ARGV[i+2] message i's envelope. For
/// each distinct receiver it reads the set and keeps the entries whose `user_online` key exists
/// and whose node holds a lease (SREM for the others, as the spec says), then publishes each
/// envelope once per live node other than this one (the hub delivered locally). Returns, per
/// message, the number of nodes published to. Keys other than KEYS are touched, which standalone
/// Redis allows (the Cluster path never uses this).
fn route_script() -> String {
    format!(
        r#"local me = ARGV[1]
local need_lease = ARGV[2] == '1'
local live_of = {{}}
local leased = {{}}
local out = {{}}
for i, key in ipairs(KEYS) do
  local live = live_of[key]
  if live == nil then
    live = {{}}
    local user = string.sub(key, {skip})
    for _, s in ipairs(redis.call('SMEMBERS', key)) do
      if s ~= me then
        local ok = redis.call('EXISTS', '{online}' .. user .. ':' .. s) == 1
        if ok and need_lease then
          if leased[s] == nil then
            leased[s] = redis.call('EXISTS', '{alive}' .. s) == 1
          end
          ok = leased[s]
        end
        if ok then
          live[#live + 1] = s
        else
          redis.call('SREM', key, s)
        end
      end
    end
    live_of[key] = live
  end
  for _, s in ipairs(live) do
    redis.call('PUBLISH', '{channel}' .. s, ARGV[i + 2])
  end
  out[i] = #live
end
return out"#,
        skip = routes::USER_SERVERS_PREFIX.len() + 1,
        online = routes::USER_ONLINE_PREFIX,
        alive = routes::SERVER_ALIVE_PREFIX,
        channel = routes::SERVER_CHANNEL_PREFIX,
    )
}
