//! Inspecting and purging the route table on a live system, for `wsctl routes`: a rate-bounded
//! SCAN of every master (never KEYS), the nodes behind the routes (leases), and a purge that can
//! never remove a live route while users connect and disconnect.
//!
//! # Walking
//! Every walk is one SCAN (`MATCH *`, or `user_servers:<pattern>` for a filtered list) over each
//! master of a Cluster, page by page. The next page is asked for only after the previous one is
//! handled and the walk is back under its rate (keys returned per second), so a walk never loads
//! Redis harder than `--rate` says. Each page costs three round trips: SMEMBERS of the route sets,
//! TTL of their `user_online` keys, GET of the leases not seen before in this walk. SCAN returns
//! every key that exists for the whole walk; a key may come twice, and on a Cluster a resharding
//! during the walk may skip keys (fred's `scan_cluster` follows the slot map of the start), so
//! counts are a snapshot and a purge interrupted by a resharding is simply run again.
//!
//! # Why purge never removes a live route
//! A route `user_servers:<u> ∋ s` is stale when `user_online:<u>:<s>` is gone. A node writes the
//! pair as SADD then SET on a user's first connection, SREM then DEL on its last disconnect, and
//! re-adds every route it holds every 30 s ([`PRESENCE_REFRESH`](super::PRESENCE_REFRESH)).
//!
//! - **Standalone**: each route set is checked and cleaned by one Lua script ([`PURGE_SCRIPT`])
//!   that gets the set and every candidate's `user_online` key (and, for `--server`, the lease)
//!   as KEYS: between its EXISTS and its SREM nothing else runs, so an entry whose presence key
//!   exists (or whose node's lease exists) is never removed.
//! - **Cluster**: the set and the presence keys hash to different slots, so neither a script nor
//!   WATCH/MULTI can span them. Purge SREMs only entries whose presence key it has just seen
//!   missing, then, [`RECHECK_DELAY`] later, looks at every presence key (and lease) again and
//!   SADDs back each entry whose key appeared meanwhile.
//! - **Both**: the node's SADD and SET are two commands (two shards on a Cluster), so for a moment
//!   a brand-new route exists without its presence key, and an atomic check can see it "stale".
//!   The re-check above runs on standalone too and repairs exactly that case.
//!
//! The window that is left: a presence key written more than [`RECHECK_DELAY`] after purge's
//! SREM, for an entry that was missing its key when purge looked. That needs a node write delayed
//! beyond the node's own command timeout (after which the node treats it as failed), and even
//! then the route comes back by itself at the node's next 30 s refresh and at the user's next
//! connect; a message sent in between is reported undeliverable, never delivered wrongly. The
//! opposite mistake (re-adding an entry the node removed meanwhile) only leaves a stale entry,
//! which senders and the next purge drop. Redis deletes a set whose last member is removed, so
//! "sets left empty" disappear with their last SREM.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use fred::types::scan::Scanner;
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::broker::ROOM_MEMBERS_PREFIX;

use super::{server_alive_key, user_of_servers_key, user_online_key, user_servers_key, Lease, SERVER_ALIVE_PREFIX};
use crate::redis::{RedisConfig, RedisConfigError, COMMAND_TIMEOUT};

/// Default `--rate`: keys walked per second. SCAN pages of this size with their SMEMBERS and TTL
/// pipelines are a few thousand cheap commands per second, well under 5% of one Redis core, so an
/// operator can run it on a busy production instance without thinking.
pub const DEFAULT_RATE: u32 = 5_000;
/// Keys asked per SCAN call at most: big enough that round trips do not dominate, small enough
/// that one page's pipelines (SMEMBERS, TTL, EVALSHA) stay far below [`COMMAND_TIMEOUT`].
pub const SCAN_PAGE: u32 = 1_000;
/// Pages per second the pacing aims for at the lowest rates, so a low `--rate` gives small pages
/// spread over the second rather than one burst.
const PAGES_PER_SECOND: u32 = 10;
/// How long after removing an entry purge looks at its presence key again (and puts the entry
/// back if the key appeared). A node's write that was already under way when purge looked either
/// lands within the node's own command timeout or is failed by the node, so one timeout plus
/// margin covers every write purge could have raced with.
pub const RECHECK_DELAY: Duration = Duration::from_millis(COMMAND_TIMEOUT.as_millis() as u64 + 500);
/// Routes kept in a purge report's list; past this only the counts grow, so purging millions of
/// stale routes does not hold them all in memory.
pub const REPORT_LIMIT: usize = 10_000;

/// The standalone check-and-remove for one route set. KEYS[1] is `user_servers:<u>`, KEYS[2..n+1]
/// the candidates' `user_online` keys, and in `server` mode KEYS[n+2] the node's lease; ARGV[1] is
/// the mode (`stale` or `server`), ARGV[2..n+1] the candidate server ids. Returns
/// `{members_left, removed...}`, or `{-1}` when the lease of the `--server` node exists.
pub const PURGE_SCRIPT: &str = r#"
local n = #ARGV - 1
if ARGV[1] == 'server' and redis.call('EXISTS', KEYS[n + 2]) == 1 then
  return {-1}
end
local out = {0}
for i = 1, n do
  if ARGV[1] == 'server' or redis.call('EXISTS', KEYS[i + 1]) == 0 then
    if redis.call('SREM', KEYS[1], ARGV[i + 1]) == 1 then
      out[#out + 1] = ARGV[i + 1]
    end
  end
end
out[1] = redis.call('SCARD', KEYS[1])
return out
"#;

/// What went wrong while reading or cleaning the route table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] RedisConfigError),
    #[error("Redis command failed while {doing}: {source}")]
    Redis { doing: &'static str, source: fred::error::Error },
    #[error("server {server:?} is alive (lease {key} exists: {lease}); refusing to purge a live node's routes")]
    ServerAlive { server: String, key: String, lease: String },
    #[error("invalid --rate {0}: must be at least 1 key per second")]
    BadRate(u32),
    #[error("invalid server id {0:?}: must not be empty")]
    BadServer(String),
}

fn redis_err(doing: &'static str) -> impl Fn(fred::error::Error) -> AdminError {
    move |source| AdminError::Redis { doing, source }
}

/// One entry of the route table, as seen at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub user: String,
    pub server: String,
    /// Seconds left on `user_online:<user>:<server>`; `None` when the key is gone (stale route),
    /// `Some(-1)` when it has no TTL.
    pub online_ttl: Option<i64>,
    /// Whether the node's lease (`server_alive:<server>`) exists.
    pub node_alive: bool,
}

impl Route {
    pub fn is_stale(&self) -> bool {
        self.online_ttl.is_none()
    }
}

/// A node, from its lease and/or the routes naming it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerInfo {
    pub server: String,
    pub alive: bool,
    /// The lease, when the node is alive.
    pub address: Option<String>,
    pub version: Option<String>,
    pub started_at: Option<u64>,
    /// Seconds since the node started (from its lease).
    pub age_secs: Option<u64>,
    pub connections: Option<u64>,
    /// Route entries naming this node.
    pub routes: u64,
    /// Of those, entries whose `user_online` key is gone.
    pub stale_routes: u64,
}

/// Totals over the whole route table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Survey {
    /// Keys SCAN returned (the whole keyspace).
    pub keys_walked: u64,
    /// `user_servers:` sets found (users with at least one route).
    pub users: u64,
    pub routes: u64,
    pub stale_routes: u64,
    /// Entries naming a node without a lease (its `user_online` key may not have expired yet).
    pub dead_node_routes: u64,
    /// Every node seen, live ones first, then by id.
    pub servers: Vec<ServerInfo>,
}

/// Where a walk is, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct WalkProgress {
    /// Keys SCAN returned so far.
    pub keys: u64,
    /// Keys in Redis when the walk started (DBSIZE summed over masters): the bar's length.
    pub total: u64,
}

/// How to walk.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    /// Keys per second at most.
    pub rate: u32,
    /// Only users matching this glob (SCAN MATCH syntax); `None` walks every key.
    pub user_pattern: Option<String>,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions { rate: DEFAULT_RATE, user_pattern: None }
    }
}

/// What purge should remove.
#[derive(Debug, Clone, Default)]
pub struct PurgeOptions {
    pub walk: WalkOptions,
    /// Report what would be removed; write nothing.
    pub dry_run: bool,
    /// Remove every route of this (dead) node instead of the stale routes of all nodes.
    pub server: Option<String>,
}

/// One removed (or, in a dry run, removable) route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RouteRef {
    pub user: String,
    pub server: String,
}

/// What a purge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    pub dry_run: bool,
    /// The `--server` purged, if any.
    pub server: Option<String>,
    pub keys_walked: u64,
    pub route_sets: u64,
    /// Entries removed (dry run: that would be removed), net of those put back.
    pub removed: u64,
    /// Route sets deleted because their last entry was removed (dry run: would be), counted when
    /// removed: a restored entry recreates its set without lowering this.
    pub sets_deleted: u64,
    /// Entries removed and then put back because their `user_online` key (or, for `--server`,
    /// the node's lease) appeared right after (see the module docs).
    pub restored: u64,
    /// `--server` only: fields of that node removed from `room_members:<room>` hashes (dry run:
    /// found). Counted in a walk of every key; a `--user` filtered walk sees no room keys.
    pub room_fields: u64,
    /// The first [`REPORT_LIMIT`] removed routes.
    pub routes: Vec<RouteRef>,
    /// Whether `routes` is cut short.
    pub truncated: bool,
    /// Whether the walk was cancelled before the end (what was removed so far is reported).
    pub interrupted: bool,
    pub elapsed_ms: u64,
}

/// The route table of one Redis (standalone or Cluster).
#[derive(Clone)]
pub struct RouteTable {
    client: Client,
    cluster: bool,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl RouteTable {
    /// Connects with the same settings as `serve`.
    pub async fn connect(config: &RedisConfig) -> Result<RouteTable, AdminError> {
        let client = config.connect().await?;
        Ok(RouteTable { client, cluster: config.is_cluster() })
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Keys in Redis: DBSIZE of every master, summed.
    pub async fn key_count(&self) -> Result<u64, AdminError> {
        if !self.cluster {
            return self.client.dbsize().await.map_err(redis_err("counting keys"));
        }
        let primaries = self.client.cached_cluster_state().map(|s| s.unique_primary_nodes()).unwrap_or_default();
        let mut total = 0u64;
        for server in primaries {
            let n: u64 = self.client.with_cluster_node(server).dbsize().await.map_err(redis_err("counting keys"))?;
            total += n;
        }
        Ok(total)
    }

    /// The lease of a node, if it is alive.
    pub async fn lease(&self, server: &str) -> Result<Option<Lease>, AdminError> {
        let v: Option<String> = self.client.get(server_alive_key(server)).await.map_err(redis_err("reading a lease"))?;
        Ok(v.map(|raw| parse_lease(&raw)))
    }

    /// Every route of one user.
    pub async fn show(&self, user: &str) -> Result<Vec<Route>, AdminError> {
        let mut servers: Vec<String> =
            self.client.smembers(user_servers_key(user)).await.map_err(redis_err("reading a route set"))?;
        servers.sort();
        let mut leases = LeaseCache::default();
        let sets = vec![(user.to_string(), servers)];
        self.resolve(&sets, &mut leases).await
    }

    /// Walks the route table page by page, giving each page's routes to `on_page`, which returns
    /// false to stop early. Returns the keys walked.
    pub async fn walk_routes(
        &self,
        opts: &WalkOptions,
        cancel: &CancellationToken,
        mut progress: impl FnMut(WalkProgress),
        mut on_page: impl FnMut(Vec<Route>) -> bool,
    ) -> Result<u64, AdminError> {
        let mut leases = LeaseCache::default();
        let mut walker = self.walker(opts).await?;
        progress(walker.progress());
        while let Some(keys) = walker.next_page(cancel).await? {
            let set_keys: Vec<String> = keys.into_iter().filter(|k| user_of_servers_key(k).is_some()).collect();
            let sets = self.members(&set_keys).await?;
            let routes = self.resolve(&sets, &mut leases).await?;
            progress(walker.progress());
            if !on_page(routes) {
                break;
            }
        }
        Ok(walker.walked)
    }

    /// Nodes and totals: one walk of the whole keyspace.
    pub async fn survey(
        &self,
        opts: &WalkOptions,
        cancel: &CancellationToken,
        mut progress: impl FnMut(WalkProgress),
    ) -> Result<Survey, AdminError> {
        let mut leases = LeaseCache::default();
        let mut per_server: HashMap<String, (u64, u64)> = HashMap::new();
        let mut survey = Survey { keys_walked: 0, users: 0, routes: 0, stale_routes: 0, dead_node_routes: 0, servers: vec![] };
        let mut walker = self.walker(opts).await?;
        progress(walker.progress());
        while let Some(keys) = walker.next_page(cancel).await? {
            let mut set_keys = Vec::new();
            let mut alive_ids = Vec::new();
            for k in keys {
                if user_of_servers_key(&k).is_some() {
                    set_keys.push(k);
                } else if let Some(id) = k.strip_prefix(SERVER_ALIVE_PREFIX) {
                    alive_ids.push(id.to_string());
                }
            }
            self.fetch_leases(alive_ids.iter().map(|s| s.as_str()), &mut leases).await?;
            let sets = self.members(&set_keys).await?;
            survey.users += sets.len() as u64;
            for r in self.resolve(&sets, &mut leases).await? {
                let e = per_server.entry(r.server.clone()).or_default();
                e.0 += 1;
                survey.routes += 1;
                if r.is_stale() {
                    e.1 += 1;
                    survey.stale_routes += 1;
                }
                if !r.node_alive {
                    survey.dead_node_routes += 1;
                }
            }
            progress(walker.progress());
        }
        survey.keys_walked = walker.walked;
        let now = unix_now();
        let ids: HashSet<String> = per_server.keys().cloned().chain(leases.0.keys().cloned()).collect();
        for id in ids {
            let (routes, stale_routes) = per_server.get(&id).copied().unwrap_or_default();
            let lease = leases.0.get(&id).cloned().flatten();
            survey.servers.push(ServerInfo {
                alive: lease.is_some(),
                address: lease.as_ref().map(|l| l.address.clone()),
                version: lease.as_ref().map(|l| l.version.clone()),
                started_at: lease.as_ref().map(|l| l.started_at),
                age_secs: lease.as_ref().map(|l| now.saturating_sub(l.started_at)),
                connections: lease.as_ref().map(|l| l.connections),
                server: id,
                routes,
                stale_routes,
            });
        }
        survey.servers.sort_by(|a, b| b.alive.cmp(&a.alive).then_with(|| a.server.cmp(&b.server)));
        Ok(survey)
    }

    /// Removes stale routes (or every route of a dead `--server`); see the module docs for why
    /// this is safe on a live system. Cancelling stops the walk but still runs the pending
    /// re-checks, so an interrupted purge is as safe as a finished one.
    pub async fn purge(
        &self,
        opts: &PurgeOptions,
        cancel: &CancellationToken,
        mut progress: impl FnMut(WalkProgress),
    ) -> Result<PurgeReport, AdminError> {
        let started = Instant::now();
        if let Some(s) = &opts.server {
            if s.is_empty() {
                return Err(AdminError::BadServer(s.clone()));
            }
            self.refuse_if_alive(s).await?;
        }
        let script_sha: Option<String> = if opts.dry_run || self.cluster {
            None
        } else {
            Some(self.client.script_load(PURGE_SCRIPT).await.map_err(redis_err("loading the purge script"))?)
        };
        let mut report = PurgeReport { dry_run: opts.dry_run, server: opts.server.clone(), ..Default::default() };
        let mut pending: VecDeque<(Instant, Vec<RouteRef>)> = VecDeque::new();
        let mut leases = LeaseCache::default();
        let mut walked = 0;
        let outcome: Result<(), AdminError> = async {
            let mut walker = self.walker(&opts.walk).await?;
            progress(walker.progress());
            let mut result = Ok(());
            while let Some(keys) = walker.next_page(cancel).await? {
                if let Some(server) = &opts.server {
                    let rooms: Vec<&String> = keys.iter().filter(|k| k.starts_with(ROOM_MEMBERS_PREFIX)).collect();
                    report.room_fields += self.purge_room_fields(server, &rooms, opts.dry_run).await?;
                }
                let set_keys: Vec<String> = keys.into_iter().filter(|k| user_of_servers_key(k).is_some()).collect();
                result = self.purge_page(opts, script_sha.as_deref(), &set_keys, &mut leases, &mut report, &mut pending).await;
                walked = walker.walked;
                if result.is_err() {
                    break;
                }
                self.recheck_due(opts, &mut pending, &mut report, false).await?;
                progress(walker.progress());
            }
            walked = walker.walked;
            result
        }
        .await;
        // Whatever happened, put back what raced before reporting (or failing).
        let rechecked = self.recheck_due(opts, &mut pending, &mut report, true).await;
        outcome?;
        rechecked?;
        report.keys_walked = walked;
        report.interrupted = cancel.is_cancelled();
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// `--server`: HDEL the dead node's field from each `room_members:<room>` of a page (dry run:
    /// HEXISTS), one pipeline. Returns how many fields there were. The node is dead (its lease
    /// was checked), so nothing writes the field back.
    async fn purge_room_fields(&self, server: &str, keys: &[&String], dry_run: bool) -> Result<u64, AdminError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let p = self.client.pipeline();
        for key in keys {
            let _: Result<(), _> = if dry_run { p.hexists(key.as_str(), server).await } else { p.hdel(key.as_str(), server).await };
        }
        let counts: Vec<i64> = p.all().await.map_err(redis_err("removing room member counts"))?;
        Ok(counts.into_iter().map(|n| n.max(0) as u64).sum())
    }

    async fn refuse_if_alive(&self, server: &str) -> Result<(), AdminError> {
        let key = server_alive_key(server);
        let v: Option<String> = self.client.get(&key).await.map_err(redis_err("reading a lease"))?;
        match v {
            Some(lease) => Err(AdminError::ServerAlive { server: server.to_string(), key, lease }),
            None => Ok(()),
        }
    }

    async fn purge_page(
        &self,
        opts: &PurgeOptions,
        sha: Option<&str>,
        set_keys: &[String],
        leases: &mut LeaseCache,
        report: &mut PurgeReport,
        pending: &mut VecDeque<(Instant, Vec<RouteRef>)>,
    ) -> Result<(), AdminError> {
        report.route_sets += set_keys.len() as u64;
        let sets = self.members(set_keys).await?;
        let routes = match &opts.server {
            // The --server mode needs no TTLs: every entry naming the dead node goes.
            Some(s) => sets
                .iter()
                .filter(|(_, servers)| servers.contains(s))
                .map(|(u, _)| Route { user: u.clone(), server: s.clone(), online_ttl: None, node_alive: false })
                .collect(),
            None => self.resolve(&sets, leases).await?,
        };
        // Candidates per user, with the set's size to tell which sets would be left empty.
        let mut by_user: Vec<(String, Vec<String>, usize)> = Vec::new();
        let sizes: HashMap<&str, usize> = sets.iter().map(|(u, s)| (u.as_str(), s.len())).collect();
        for r in routes.into_iter().filter(|r| opts.server.is_some() || r.is_stale()) {
            match by_user.last_mut() {
                Some((u, servers, _)) if *u == r.user => servers.push(r.server),
                _ => {
                    let size = sizes.get(r.user.as_str()).copied().unwrap_or(0);
                    by_user.push((r.user, vec![r.server], size));
                }
            }
        }
        if by_user.is_empty() {
            return Ok(());
        }
        if opts.dry_run {
            for (user, servers, size) in by_user {
                if servers.len() >= size {
                    report.sets_deleted += 1;
                }
                for server in servers {
                    record(report, RouteRef { user: user.clone(), server });
                }
            }
            return Ok(());
        }
        let removed = match sha {
            Some(sha) => self.remove_atomic(opts, sha, by_user, report).await?,
            None => self.remove_cluster(opts, by_user, report).await?,
        };
        if !removed.is_empty() {
            pending.push_back((Instant::now() + RECHECK_DELAY, removed));
        }
        Ok(())
    }

    /// Standalone: one script per route set, sent concurrently (fred pipelines them).
    async fn remove_atomic(
        &self,
        opts: &PurgeOptions,
        sha: &str,
        by_user: Vec<(String, Vec<String>, usize)>,
        report: &mut PurgeReport,
    ) -> Result<Vec<RouteRef>, AdminError> {
        let mode = if opts.server.is_some() { "server" } else { "stale" };
        let calls = by_user.iter().map(|(user, servers, _)| {
            let mut keys: Vec<String> = Vec::with_capacity(servers.len() + 2);
            keys.push(user_servers_key(user));
            keys.extend(servers.iter().map(|s| user_online_key(user, s)));
            if let Some(s) = &opts.server {
                keys.push(server_alive_key(s));
            }
            let mut args: Vec<String> = Vec::with_capacity(servers.len() + 1);
            args.push(mode.to_string());
            args.extend(servers.iter().cloned());
            self.client.evalsha::<Vec<Value>, _, _, _>(sha.to_string(), keys, args)
        });
        let results = futures_util::future::join_all(calls).await;
        let mut removed = Vec::new();
        for ((user, _, _), result) in by_user.into_iter().zip(results) {
            let out = result.map_err(redis_err("removing stale routes"))?;
            let left = out.first().and_then(|v| v.as_i64()).unwrap_or(0);
            if left < 0 {
                let server = opts.server.clone().unwrap_or_default();
                let key = server_alive_key(&server);
                let lease = self.client.get::<Option<String>, _>(&key).await.ok().flatten().unwrap_or_default();
                return Err(AdminError::ServerAlive { server, key, lease });
            }
            let servers: Vec<String> = out.into_iter().skip(1).filter_map(|v| v.into_string()).collect();
            if !servers.is_empty() && left == 0 {
                report.sets_deleted += 1;
            }
            for server in servers {
                let r = RouteRef { user: user.clone(), server };
                record(report, r.clone());
                removed.push(r);
            }
        }
        Ok(removed)
    }

    /// Cluster: SREM what was just seen stale; the re-check puts back what raced.
    async fn remove_cluster(
        &self,
        opts: &PurgeOptions,
        by_user: Vec<(String, Vec<String>, usize)>,
        report: &mut PurgeReport,
    ) -> Result<Vec<RouteRef>, AdminError> {
        if let Some(s) = &opts.server {
            self.refuse_if_alive(s).await?;
        }
        // One SREM per entry, so the reply says exactly which entries this purge removed.
        let p = self.client.pipeline();
        let mut pairs = Vec::new();
        for (user, servers, _) in &by_user {
            for server in servers {
                let _: Result<(), _> = p.srem(user_servers_key(user), server.clone()).await;
                pairs.push((user, server));
            }
        }
        for (user, _, _) in &by_user {
            let _: Result<(), _> = p.exists(user_servers_key(user)).await;
        }
        let results: Vec<Result<i64, _>> = p.try_all().await;
        let mut removed = Vec::new();
        let mut touched: HashSet<&String> = HashSet::new();
        for ((user, server), result) in pairs.iter().zip(&results) {
            let n = result.as_ref().map_err(|e| AdminError::Redis { doing: "removing stale routes", source: e.clone() })?;
            if *n == 1 {
                touched.insert(*user);
                let r = RouteRef { user: (*user).clone(), server: (*server).clone() };
                record(report, r.clone());
                removed.push(r);
            }
        }
        for ((user, _, _), exists) in by_user.iter().zip(&results[pairs.len()..]) {
            if touched.contains(user) && matches!(exists, Ok(0)) {
                report.sets_deleted += 1;
            }
        }
        Ok(removed)
    }

    /// Looks again at the presence keys (and, for `--server`, the lease) of removals whose
    /// [`RECHECK_DELAY`] has passed (all of them when `all`, waiting as needed), and SADDs back
    /// the entries that turned out live.
    async fn recheck_due(
        &self,
        opts: &PurgeOptions,
        pending: &mut VecDeque<(Instant, Vec<RouteRef>)>,
        report: &mut PurgeReport,
        all: bool,
    ) -> Result<(), AdminError> {
        while let Some((due, _)) = pending.front() {
            if *due > Instant::now() {
                if !all {
                    return Ok(());
                }
                tokio::time::sleep_until((*due).into()).await;
            }
            let (_, batch) = pending.pop_front().expect("front exists");
            let server_came_back = match &opts.server {
                Some(s) => self.lease(s).await?.is_some(),
                None => false,
            };
            if opts.server.is_some() && !server_came_back {
                // A dead node's presence keys outlive it by up to ONLINE_TTL: not a sign of life.
                continue;
            }
            let p = self.client.pipeline();
            for r in &batch {
                let _: Result<(), _> = p.exists(user_online_key(&r.user, &r.server)).await;
            }
            let exists: Vec<i64> = p.all().await.map_err(redis_err("re-checking removed routes"))?;
            let back: Vec<&RouteRef> = batch.iter().zip(exists).filter(|(_, e)| *e > 0).map(|(r, _)| r).collect();
            if back.is_empty() {
                continue;
            }
            let p = self.client.pipeline();
            for r in &back {
                let _: Result<(), _> = p.sadd(user_servers_key(&r.user), r.server.clone()).await;
            }
            let _: Vec<Value> = p.all().await.map_err(redis_err("restoring raced routes"))?;
            report.restored += back.len() as u64;
            report.removed = report.removed.saturating_sub(back.len() as u64);
            let back: HashSet<&RouteRef> = back.into_iter().collect();
            report.routes.retain(|r| !back.contains(r));
        }
        Ok(())
    }

    /// SMEMBERS of each set key, as (user, sorted servers). Keys that vanished or are not sets
    /// are skipped: the walk reports what it can read.
    async fn members(&self, set_keys: &[String]) -> Result<Vec<(String, Vec<String>)>, AdminError> {
        if set_keys.is_empty() {
            return Ok(Vec::new());
        }
        let p = self.client.pipeline();
        for k in set_keys {
            let _: Result<(), _> = p.smembers(k.as_str()).await;
        }
        let results: Vec<Result<Vec<String>, _>> = p.try_all().await;
        let mut out = Vec::with_capacity(set_keys.len());
        for (k, r) in set_keys.iter().zip(results) {
            match r {
                Ok(mut servers) if !servers.is_empty() => {
                    servers.sort();
                    out.push((user_of_servers_key(k).unwrap_or_default().to_string(), servers));
                }
                Ok(_) => {}
                // WRONGTYPE: someone else's key under our prefix; not ours to judge.
                Err(e) if e.details().starts_with("WRONGTYPE") => {}
                Err(e) => return Err(AdminError::Redis { doing: "reading route sets", source: e }),
            }
        }
        Ok(out)
    }

    /// TTL of every entry's presence key, and whether its node is alive.
    async fn resolve(&self, sets: &[(String, Vec<String>)], leases: &mut LeaseCache) -> Result<Vec<Route>, AdminError> {
        let pairs: Vec<(&str, &str)> =
            sets.iter().flat_map(|(u, servers)| servers.iter().map(move |s| (u.as_str(), s.as_str()))).collect();
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        self.fetch_leases(pairs.iter().map(|(_, s)| *s), leases).await?;
        let p = self.client.pipeline();
        for (u, s) in &pairs {
            let _: Result<(), _> = p.ttl(user_online_key(u, s)).await;
        }
        let ttls: Vec<i64> = p.all().await.map_err(redis_err("reading user_online TTLs"))?;
        Ok(pairs
            .into_iter()
            .zip(ttls)
            .map(|((u, s), ttl)| Route {
                user: u.to_string(),
                server: s.to_string(),
                online_ttl: (ttl != -2).then_some(ttl),
                node_alive: leases.alive(s),
            })
            .collect())
    }

    /// GETs the leases of servers not looked up yet in this walk.
    async fn fetch_leases<'a>(&self, servers: impl Iterator<Item = &'a str>, leases: &mut LeaseCache) -> Result<(), AdminError> {
        let mut new: Vec<String> = Vec::new();
        for s in servers {
            if !leases.0.contains_key(s) && !new.iter().any(|n| n == s) {
                new.push(s.to_string());
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let p = self.client.pipeline();
        for s in &new {
            let _: Result<(), _> = p.get(server_alive_key(s)).await;
        }
        let values: Vec<Option<String>> = p.all().await.map_err(redis_err("reading leases"))?;
        for (s, v) in new.into_iter().zip(values) {
            leases.0.insert(s, v.map(|raw| parse_lease(&raw)));
        }
        Ok(())
    }

    /// A paced SCAN of every master.
    async fn walker(&self, opts: &WalkOptions) -> Result<Walker, AdminError> {
        if opts.rate == 0 {
            return Err(AdminError::BadRate(opts.rate));
        }
        let total = self.key_count().await?;
        let count = SCAN_PAGE.min((opts.rate / PAGES_PER_SECOND).max(1));
        let (pattern, filtered) = match &opts.user_pattern {
            Some(p) => (user_servers_key(p), true),
            None => ("*".to_string(), false),
        };
        let pages = if self.cluster {
            self.client.scan_cluster(pattern, Some(count), None).boxed()
        } else {
            self.client.scan(pattern, Some(count), None).boxed()
        };
        Ok(Walker { pages, current: None, started: Instant::now(), walked: 0, spent: 0, total, rate: opts.rate, count, filtered })
    }
}

/// One SCAN in progress. fred asks for the next page when the previous [`ScanResult`] is dropped,
/// so holding it until the walk is back under its rate is what paces Redis.
struct Walker {
    pages: futures_util::stream::BoxStream<'static, Result<fred::types::scan::ScanResult, fred::error::Error>>,
    current: Option<fred::types::scan::ScanResult>,
    started: Instant,
    walked: u64,
    /// Budget spent, in keys: what SCAN returned, or with MATCH the COUNT it examined.
    spent: u64,
    total: u64,
    rate: u32,
    count: u32,
    filtered: bool,
}

impl Walker {
    fn progress(&self) -> WalkProgress {
        WalkProgress { keys: self.walked, total: self.total.max(self.walked) }
    }

    /// The next page of keys, or None at the end of the keyspace or once cancelled.
    async fn next_page(&mut self, cancel: &CancellationToken) -> Result<Option<Vec<String>>, AdminError> {
        if let Some(page) = self.current.take() {
            let due = self.started + Duration::from_secs_f64(self.spent as f64 / f64::from(self.rate));
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = cancel.cancelled() => {}
            }
            if cancel.is_cancelled() {
                page.cancel();
                return Ok(None);
            }
            drop(page);
        }
        let page = tokio::select! {
            p = self.pages.next() => p,
            _ = cancel.cancelled() => None,
        };
        let Some(page) = page else { return Ok(None) };
        let mut page = page.map_err(redis_err("scanning keys"))?;
        let keys: Vec<String> =
            page.take_results().unwrap_or_default().into_iter().filter_map(|k| k.as_str().map(str::to_string)).collect();
        self.walked += keys.len() as u64;
        self.spent += if self.filtered { u64::from(self.count) } else { keys.len() as u64 };
        self.current = Some(page);
        Ok(Some(keys))
    }
}

fn record(report: &mut PurgeReport, r: RouteRef) {
    report.removed += 1;
    if report.routes.len() < REPORT_LIMIT {
        report.routes.push(r);
    } else {
        report.truncated = true;
    }
}

/// A lease that does not parse (a foreign writer) still proves the node alive.
fn parse_lease(raw: &str) -> Lease {
    serde_json::from_str(raw).unwrap_or_else(|_| Lease {
        address: String::new(),
        version: format!("unparsed lease: {raw}"),
        started_at: 0,
        connections: 0,
    })
}

/// Leases looked up during one walk: `None` = no lease (dead node).
#[derive(Default)]
struct LeaseCache(HashMap<String, Option<Lease>>);

impl LeaseCache {
    fn alive(&self, server: &str) -> bool {
        self.0.get(server).is_some_and(|l| l.is_some())
    }
}
