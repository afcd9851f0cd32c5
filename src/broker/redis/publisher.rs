//! The publisher: routes envelopes to the receivers' other nodes, a batch at a time, in arrival
//! order (one batch in flight, so a sender's messages to one receiver never overtake each other).
//!
//! A route `user_servers:<u> ∋ s` is live when `user_online:<u>:<s>` exists and node `s` holds its
//! lease `server_alive:<s>` (unless the fleet has lease-less Go nodes). Dead routes are removed
//! and never published to, so an ack's `online:true` means a live node took the message. On
//! standalone Redis it also means the node's subscriber got it (PUBLISH's count); on a Cluster,
//! PUBLISH counts only the subscribers of the shard it ran on, so a live route is taken as enough.
//! - Standalone: one EVALSHA per batch reads, checks, cleans and publishes inside Redis.
//! - Cluster: the keys live on different shards, so two pipelined round trips read the route
//!   sets and check them, and a third publishes and removes the dead entries.
//!
//! With history on ([`super::history`]) each message is first appended to its receiver's history,
//! which gives it its offset: inside the same script on standalone (no extra round trip); on a
//! Cluster, by a script on each history's slot, pipelined for the whole batch, before the route
//! sets are read (one extra round trip; the order matters for resumes, see `route_pipelined`).
//! Messages are then published to this node too, when it holds the receiver.
//!
//! Every batch has a deadline ([`BATCH_DEADLINE`]); a batch that misses it or fails marks the
//! broker degraded, and while it is, queued and new sends are answered `unavailable` at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::Metrics;
use crate::routes;

use super::super::{HistoryConfig, Publish, PublishError, PublishResult, Routed};
use super::script::{evalsha, is_noscript};
use super::subscriber::except_prefix;
use super::{history, Health, NodeInfo};

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
    /// The sending connection, never delivered to (a message to oneself).
    pub(crate) except: Option<uuid::Uuid>,
    pub(crate) reply: oneshot::Sender<PublishResult>,
}

pub(crate) struct Publisher {
    client: Client,
    server_id: Arc<str>,
    sharded: bool,
    require_lease: bool,
    /// On standalone Redis, the whole batch is routed by one script call (see [`route_script`]).
    script: Option<Script>,
    history: Option<HistoryConfig>,
    /// On a Cluster with history, the append script run on each receiver's history slot.
    append: Option<Script>,
    metrics: Metrics,
    health: Arc<Health>,
    /// `--idem-window` in ms, as PX takes it (at least 1).
    idem_ms: i64,
}

impl Publisher {
    pub(crate) fn new(client: Client, node: &NodeInfo, sharded: bool, cluster: bool, health: Arc<Health>) -> Self {
        Publisher {
            client,
            server_id: node.server_id.clone(),
            sharded,
            require_lease: node.require_lease,
            script: (!cluster).then(|| Script::from_lua(route_script())),
            history: node.history.clone(),
            append: (cluster && node.history.is_some()).then(history::append_script),
            metrics: node.metrics.clone(),
            health,
            idem_ms: super::px(node.idem_window),
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
                Ok(Ok(routed)) => {
                    for (req, r) in batch.drain(..).zip(routed) {
                        let _ = req.reply.send(r);
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

    /// Returns, per message, where it went.
    async fn route(&self, batch: &[PublishReq]) -> Result<Vec<PublishResult>, fred::error::Error> {
        match &self.script {
            Some(script) => Ok(self.route_by_script(script, batch).await?.into_iter().map(Ok).collect()),
            None => self.route_pipelined(batch).await,
        }
    }

    /// Standalone: one EVALSHA (reloaded on NOSCRIPT, e.g. after a Redis restart).
    async fn route_by_script(&self, script: &Script, batch: &[PublishReq]) -> Result<Vec<Routed>, fred::error::Error> {
        let out: Vec<i64> = evalsha(&self.client, script, || self.script_call(batch)).await?;
        let routed = |c: &[i64]| Routed {
            nodes: c[0].max(0) as u32,
            offset: c.get(1).filter(|o| **o > 0).map(|o| *o as u64),
            duplicate: c.get(2).is_some_and(|d| *d == 1),
        };
        Ok(out.chunks(3).map(routed).collect())
    }

    /// The keys and arguments of [`route_script`] for `batch`.
    fn script_call(&self, batch: &[PublishReq]) -> (Vec<String>, Vec<Value>) {
        let keys: Vec<String> = batch.iter().map(|r| routes::user_servers_key(&r.msg.receiver)).collect();
        let mut args: Vec<Value> = Vec::with_capacity(3 * batch.len() + 6);
        args.push(Value::from(self.server_id.as_ref()));
        args.push(Value::from(if self.require_lease { "1" } else { "0" }));
        match &self.history {
            Some(cfg) => args.extend([Value::from(cfg.size as i64), Value::from(history::ttl_ms(cfg)), Value::from(history::new_epoch())]),
            None => args.extend([Value::from(0), Value::from("0"), Value::from("")]),
        }
        args.push(Value::from(self.idem_ms));
        for r in batch {
            args.push(if self.history.is_some() { open_envelope(&r.msg) } else { envelope_value(&r.msg) });
            args.push(Value::from(r.except.map(except_prefix).unwrap_or_default()));
            args.push(Value::from(r.msg.idem.as_deref().unwrap_or_default()));
        }
        (keys, args)
    }

    /// Cluster: three pipelined round trips (route sets; presence and leases; publishes and
    /// removal of dead entries), after one for the history appends when history is on, and one
    /// before for the idempotency records when a message has a key.
    async fn route_pipelined(&self, batch: &[PublishReq]) -> Result<Vec<PublishResult>, fred::error::Error> {
        let seen = self.claim_idem(batch).await?;
        let fresh: Vec<&PublishReq> = batch.iter().zip(&seen).filter(|(_, d)| d.is_none()).map(|(r, _)| r).collect();
        let mut routed = self.route_fresh(&fresh).await?.into_iter().map(Ok);
        Ok(seen.into_iter().map(|dup| dup.unwrap_or_else(|| routed.next().unwrap_or(Ok(Routed::default())))).collect())
    }

    /// Cluster: claims each message's idempotency record (`SET NX GET`, one pipelined round
    /// trip, none when no message has a key). Returns, per message, the first copy's outcome
    /// when it is a retry: its record, or `unavailable` while the record is only claimed (the
    /// first copy's batch has not finished, or failed between claim and publish; on a Cluster
    /// the two are on different shards, so a retry is never delivered twice, and one whose
    /// first copy never went out is refused until the window ends).
    async fn claim_idem(&self, batch: &[PublishReq]) -> Result<Vec<Option<PublishResult>>, fred::error::Error> {
        let mut out = vec![None; batch.len()];
        if batch.iter().all(|r| r.msg.idem.is_none()) {
            return Ok(out);
        }
        let ttl = Some(Expiration::PX(self.idem_ms));
        let p = self.client.pipeline();
        for key in batch.iter().filter_map(|r| r.msg.idem.as_deref()) {
            let _: () = p.set(key, "", ttl.clone(), Some(SetOptions::NX), true).await?;
        }
        let prior = p.try_all::<Option<String>>().await.into_iter().collect::<Result<Vec<_>, _>>()?;
        let with_key = (0..batch.len()).filter(|i| batch[*i].msg.idem.is_some());
        for (i, prior) in with_key.zip(prior) {
            out[i] = prior.map(|v| if v.is_empty() { Err(PublishError::Unavailable) } else { Ok(idem_outcome(&v)) });
        }
        Ok(out)
    }

    /// Routes messages that are not retries (see [`Publisher::route_pipelined`]).
    async fn route_fresh(&self, batch: &[&PublishReq]) -> Result<Vec<Routed>, fred::error::Error> {
        let names = distinct_receivers(batch);
        // The appends complete before the route sets are read: a connection whose resume read
        // missed a message (appended after the read) was registered before that read, so the
        // route read that follows the append finds it, and the message reaches it live.
        let p = self.client.pipeline();
        let groups = self.queue_appends(&p, batch, &names).await?;
        let replies = if groups.is_empty() { Vec::new() } else { p.try_all::<Value>().await };
        let (finals, offsets) = self.appended(batch, &groups, replies).await?;
        let p = self.client.pipeline();
        for u in &names {
            let _: () = p.smembers(routes::user_servers_key(u)).await?;
        }
        // try_all: one result per command (all() flattens a one-command pipeline's reply).
        let sets = p.try_all::<Vec<String>>().await.into_iter().collect::<Result<Vec<_>, _>>()?;
        let with_self = self.history.is_some() || batch.iter().any(|r| r.msg.idem.is_some());
        let candidates: Vec<(&str, String)> = names
            .iter()
            .zip(sets)
            .flat_map(|(u, servers)| servers.into_iter().map(move |s| (*u, s)))
            .filter(|(_, s)| with_self || **s != *self.server_id)
            .collect();
        let (live, dead) = self.check(&candidates).await?;
        let p = self.client.pipeline();
        for (u, s) in &dead {
            // Dead: the node died or lost the key. Drop the entry, as the spec says.
            let _: () = p.srem(routes::user_servers_key(u), s.to_string()).await?;
        }
        let mut out = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let all = live.get(r.msg.receiver.as_ref()).map_or(&[][..], Vec::as_slice);
            // This node only for messages it does not deliver itself (history on, or a key).
            let here = self.history.is_some() || r.msg.idem.is_some();
            let servers: Vec<&str> = all.iter().copied().filter(|s| here || **s != *self.server_id).collect();
            out.push(Routed { nodes: servers.len() as u32, offset: offsets[i], duplicate: false });
            if let Some(key) = &r.msg.idem {
                let record = format!("{}:{}", servers.len(), offsets[i].unwrap_or(0));
                let _: () = p.set(key.as_str(), record, Some(Expiration::PX(self.idem_ms)), None, false).await?;
            }
            for s in servers {
                let envelope = finals[i].clone().unwrap_or_else(|| envelope_value(&r.msg));
                let envelope = match r.except {
                    Some(conn) if *s == *self.server_id => prefixed(conn, envelope),
                    _ => envelope,
                };
                let channel = routes::server_channel(s);
                if self.sharded {
                    let _: () = p.spublish(channel, envelope).await?;
                } else {
                    let _: () = p.publish(channel, envelope).await?;
                }
            }
        }
        // The replies (subscriber counts) are not read: on a Cluster they only count the shard hit.
        if !dead.is_empty() || out.iter().any(|r| r.nodes > 0) || batch.iter().any(|r| r.msg.idem.is_some()) {
            let _: Value = p.all().await?;
        }
        Ok(out)
    }

    /// With history on, queues one append per receiver (its messages in batch order) on `p`.
    /// Returns, per append queued, the indices in `batch` of its messages.
    async fn queue_appends(&self, p: &fred::clients::Pipeline<Client>, batch: &[&PublishReq], names: &[&str]) -> Result<Vec<Vec<usize>>, fred::error::Error> {
        let (Some(cfg), Some(script)) = (&self.history, &self.append) else { return Ok(Vec::new()) };
        let mut groups = Vec::with_capacity(names.len());
        for u in names {
            let idx: Vec<usize> = (0..batch.len()).filter(|i| *batch[*i].msg.receiver == **u).collect();
            // A pipeline has no EVALSHA of its own: the command by hand, sent to the slot of the
            // user's keys (fred only honours a custom command's slot when given as a number).
            let keys = append_keys(u);
            let slot = fred::util::redis_keyslot(keys[0].as_bytes());
            let mut args = vec![Value::from(script.sha1().clone()), Value::from(2)];
            args.extend(keys.into_iter().map(Value::from));
            args.extend(append_args(cfg, idx.iter().map(|i| &batch[*i].msg)));
            let _: () = p.custom(CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false), args).await?;
            groups.push(idx);
        }
        Ok(groups)
    }

    /// Reads the appends' replies: per message, its final envelope and offset. An append that
    /// failed with NOSCRIPT (a shard that restarted or failed over) did not run: it is sent again
    /// with the script's text.
    async fn appended(
        &self,
        batch: &[&PublishReq],
        groups: &[Vec<usize>],
        replies: Vec<Result<Value, fred::error::Error>>,
    ) -> Result<(Vec<Option<Value>>, Vec<Option<u64>>), fred::error::Error> {
        let mut finals = vec![None; batch.len()];
        let mut offsets = vec![None; batch.len()];
        let (Some(cfg), Some(script)) = (&self.history, &self.append) else { return Ok((finals, offsets)) };
        for (idx, reply) in groups.iter().zip(replies) {
            let reply = match reply {
                Err(e) if is_noscript(&e) => {
                    let u = batch[idx[0]].msg.receiver.as_ref();
                    let lua = script.lua().expect("built from Lua").clone();
                    self.client.eval::<Value, _, _, _>(lua, append_keys(u), append_args(cfg, idx.iter().map(|i| &batch[*i].msg))).await?
                }
                other => other?,
            };
            for (i, entry) in idx.iter().zip(reply.into_array()) {
                offsets[*i] = entry.as_bytes().and_then(crate::protocol::parse_routed).and_then(|e| e.offset);
                finals[*i] = Some(entry);
            }
        }
        Ok((finals, offsets))
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

/// The envelope without its closing brace, for the history script to complete with its offset
/// and epoch. Every envelope the node builds is a JSON object; one that is not is passed whole.
fn open_envelope(msg: &Publish) -> Value {
    let bytes = bytes::Bytes::from(msg.envelope.clone());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).filter(|i| bytes[*i] == b'}');
    Value::Bytes(end.map_or(bytes.clone(), |i| bytes.slice(..i)))
}

/// The envelope as a Redis argument: a reference count, not a copy.
fn envelope_value(msg: &Publish) -> Value {
    Value::Bytes(bytes::Bytes::from(msg.envelope.clone()))
}

fn append_keys(user: &str) -> Vec<String> {
    vec![history::history_key(user), history::meta_key(user)]
}

fn append_args<'a>(cfg: &HistoryConfig, msgs: impl Iterator<Item = &'a Publish>) -> Vec<Value> {
    let mut args = vec![Value::from(cfg.size as i64), Value::from(history::ttl_ms(cfg)), Value::from(history::new_epoch())];
    args.extend(msgs.map(open_envelope));
    args
}

/// The copy of an envelope published to this node, marked with the connection not to deliver to.
fn prefixed(conn: uuid::Uuid, envelope: Value) -> Value {
    let mut out = except_prefix(conn).into_bytes();
    out.extend_from_slice(envelope.as_bytes().unwrap_or_default());
    Value::Bytes(out.into())
}

/// The first copy's outcome from its idempotency record (`<nodes>:<offset>`; "" while it is
/// still being routed).
fn idem_outcome(record: &str) -> Routed {
    let (nodes, offset) = record.split_once(':').unwrap_or(("0", "0"));
    let offset = offset.parse().ok().filter(|o| *o > 0);
    Routed { nodes: nodes.parse().unwrap_or(0), offset, duplicate: true }
}

fn distinct_receivers<'a>(batch: &[&'a PublishReq]) -> Vec<&'a str> {
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
/// node's id, ARGV[2] "1" if a route needs its node's lease, ARGV[3] the history size (0: history
/// off), ARGV[4] the history TTL in ms, ARGV[5] a new epoch, ARGV[6] the idempotency window in
/// ms; then three per message i: ARGV[4 + 3i] its envelope (without the closing brace when
/// history is on), ARGV[5 + 3i] a prefix for the copy published to this node ("" or
/// [`EXCEPT_MARK`] + the sending connection), ARGV[6 + 3i] its idempotency record's key ("":
/// none).
///
/// A message whose idempotency record exists is a retry: it is neither stored nor published,
/// and its answer is the record's (the first copy's nodes and offset, and "duplicate"). A
/// message with a key is published to this node too (its local copy waits for this verdict);
/// its record, written after, expires after the window.
///
/// For each distinct receiver it reads the set and keeps the entries whose `user_online` key
/// exists and whose node holds a lease (SREM for the others, as the spec says). With history on,
/// each message is first appended to its receiver's history (see [`history::APPEND_LUA`]) and
/// published to every live node including this one; without, to every live node but this one
/// (the hub delivered locally). All in one atomic step, so offsets are published in order.
/// Returns, per message, the number of nodes whose subscriber got it (PUBLISH's answer; a live
/// route whose node is not subscribed, as in the moments after a Redis restart, does not count),
/// its offset (0: not stored) and 1 if it was a duplicate. Keys
/// other than KEYS are touched, which standalone Redis allows (the Cluster path never uses this).
fn route_script() -> String {
    format!(
        r#"{tag_fn}
local me = ARGV[1]
local need_lease = ARGV[2] == '1'
local hist_size, ttl_ms, new_epoch, idem_ms = tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local live_of = {{}}
local leased = {{}}
local out = {{}}
for i, key in ipairs(KEYS) do
  local user = string.sub(key, {skip})
  local live = live_of[key]
  if live == nil then
    live = {{}}
    for _, s in ipairs(redis.call('SMEMBERS', key)) do
      do
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
  local env, off, ik = ARGV[4 + 3 * i], 0, ARGV[6 + 3 * i]
  local seen = ik ~= '' and redis.call('GET', ik)
  if seen then
    local n, o = string.match(seen, '^(%d+):(%d+)$')
    out[3 * i - 2] = tonumber(n or '0')
    out[3 * i - 1] = tonumber(o or '0')
    out[3 * i] = 1
  else
    if hist_size > 0 then
      local hk = '{hist}' .. user_tag(user)
      local mk = '{meta}' .. user_tag(user)
      {append}
    end
    local took = 0
    for _, s in ipairs(live) do
      if s ~= me or hist_size > 0 or ik ~= '' then
        local msg = env
        if s == me then
          msg = ARGV[5 + 3 * i] .. env
        end
        -- PUBLISH answers how many subscribers got it: a node with a live route whose
        -- subscriber is not (yet) subscribed, as after a Redis restart, got nothing.
        if redis.call('PUBLISH', '{channel}' .. s, msg) > 0 then
          took = took + 1
        end
      end
    end
    if ik ~= '' then
      redis.call('SET', ik, took .. ':' .. off, 'PX', idem_ms)
    end
    out[3 * i - 2] = took
    out[3 * i - 1] = off
    out[3 * i] = 0
  end
end
return out"#,
        skip = routes::USER_SERVERS_PREFIX.len() + 1,
        online = routes::USER_ONLINE_PREFIX,
        alive = routes::SERVER_ALIVE_PREFIX,
        channel = routes::SERVER_CHANNEL_PREFIX,
        hist = history::HISTORY_PREFIX,
        meta = history::META_PREFIX,
        append = history::APPEND_LUA,
        tag_fn = routes::USER_HASH_TAG_LUA,
    )
}
