//! `wsctl routes` against real Redis (standalone and a 3-master Cluster), with real `wsctl serve`
//! nodes holding real WebSocket clients: purge removes exactly the stale routes, never a live one
//! even while users connect and disconnect during the purge, a dry run changes nothing, and
//! `servers` tells a dead node from a live one.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use fred::prelude::{Client as Redis, Expiration, KeysInterface, SetsInterface, Value};
use rand::Rng;
use serde_json::Value as Json;
use support::*;
use tokio_util::sync::CancellationToken;
use wsctl::routes::admin::{AdminError, PurgeOptions, RouteRef, RouteTable, WalkOptions};
use wsctl::routes::{server_alive_key, user_online_key, user_servers_key};
use wsctl::RedisConfig;

/// Fast enough that the exactness tests take a fraction of a second per walk.
const FAST: u32 = 1_000_000;
/// Seeded users in the exactness tests (each with one to two route entries).
const SEEDED_USERS: usize = 3_000;
/// Real WebSocket users held by the real nodes.
const REAL_USERS: usize = 40;

fn walk(rate: u32) -> WalkOptions {
    WalkOptions { rate, user_pattern: None }
}

fn purge_opts(dry_run: bool, server: Option<&str>) -> PurgeOptions {
    PurgeOptions { walk: walk(FAST), dry_run, server: server.map(String::from) }
}

fn rr(user: &str, server: &str) -> RouteRef {
    RouteRef { user: user.to_string(), server: server.to_string() }
}

/// Writes route entries and presence keys in pipelines. `online` entries get a valid
/// `user_online` key (60 s), the others none (stale).
async fn seed(client: &Redis, entries: &[(String, String, bool)]) {
    for chunk in entries.chunks(1_000) {
        let p = client.pipeline();
        for (u, s, online) in chunk {
            let _: Result<(), _> = p.sadd(user_servers_key(u), s.clone()).await;
            if *online {
                let _: Result<(), _> = p.set(user_online_key(u, s), "1", Some(Expiration::EX(60)), None, false).await;
            }
        }
        let _: Vec<Value> = p.all().await.expect("seeding works");
    }
}

/// Every route set of these users, as Redis holds it now.
async fn snapshot(client: &Redis, users: &[String]) -> HashMap<String, HashSet<String>> {
    let mut out = HashMap::new();
    for chunk in users.chunks(1_000) {
        let p = client.pipeline();
        for u in chunk {
            let _: Result<(), _> = p.smembers(user_servers_key(u)).await;
        }
        let sets: Vec<HashSet<String>> = p.all().await.unwrap();
        for (u, s) in chunk.iter().zip(sets) {
            if !s.is_empty() {
                out.insert(u.clone(), s);
            }
        }
    }
    out
}

/// Asserts that every user in `connected` (user -> node id) has its route and its presence key.
async fn assert_routed(client: &Redis, connected: &[(String, String)]) {
    let p = client.pipeline();
    for (u, s) in connected {
        let _: Result<(), _> = p.sismember(user_servers_key(u), s.clone()).await;
        let _: Result<(), _> = p.exists(user_online_key(u, s)).await;
    }
    let got: Vec<i64> = p.all().await.unwrap();
    let lost: Vec<&(String, String)> =
        connected.iter().enumerate().filter(|(i, _)| got[2 * i] != 1 || got[2 * i + 1] != 1).map(|(_, c)| c).collect();
    assert!(lost.is_empty(), "live routes lost: {lost:?} (of {} connected)", connected.len());
}

/// The exactness scenario: thousands of seeded live and stale routes plus real users on two
/// real nodes. The dry run reports exactly the stale entries and writes nothing; the purge
/// removes exactly those, deletes the sets it empties, keeps everything live.
async fn purge_removes_exactly_the_stale_routes(config: RedisConfig) {
    let admin_client = config.connect().await.unwrap();
    let a = TestNode::start("node-a", Some(config.clone())).await;
    let b = TestNode::start("node-b", Some(config.clone())).await;
    // A stale entry is stale even when its node lives: ghost-d has a lease.
    let _: () = admin_client
        .set(server_alive_key("ghost-d"), r#"{"address":"x","version":"0","started_at":0,"connections":0}"#, Some(Expiration::EX(60)), None, false)
        .await
        .unwrap();

    let mut entries = Vec::new();
    let mut stale = HashSet::new();
    let mut emptied = 0u64;
    let mut users = Vec::new();
    for i in 0..SEEDED_USERS {
        let u = format!("seed-{i}");
        let mut add = |s: &str, online: bool| {
            entries.push((u.clone(), s.to_string(), online));
            if !online {
                stale.insert(rr(&u, s));
            }
        };
        match i % 5 {
            0 => add("ghost-a", false),
            1 => add("ghost-b", true),
            2 => {
                add("ghost-a", false);
                add("ghost-b", true);
            }
            3 => {
                add("ghost-a", false);
                add("ghost-c", false);
            }
            _ => add("ghost-d", false),
        }
        if i % 5 != 1 && i % 5 != 2 {
            emptied += 1;
        }
        users.push(u);
    }
    seed(&admin_client, &entries).await;
    // Real users: every one routed to its node; half also carry a stale entry, so their sets are
    // purged but must keep the node's entry.
    let mut clients = Vec::new();
    let mut connected = Vec::new();
    let mut real_stale = Vec::new();
    for k in 0..REAL_USERS {
        let u = format!("real-{k}");
        let node = if k % 2 == 0 { &a } else { &b };
        clients.push(node.connect(&u).await);
        connected.push((u.clone(), node.id.clone()));
        if k % 4 < 2 {
            real_stale.push((u.clone(), "ghost-c".to_string(), false));
            stale.insert(rr(&u, "ghost-c"));
        }
        users.push(u);
    }
    seed(&admin_client, &real_stale).await;

    let table = RouteTable::connect(&config).await.unwrap();
    let cancel = CancellationToken::new();

    // `show` of a user with a live and a stale route.
    let shown = table.show("seed-2").await.unwrap();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!((shown[0].server.as_str(), shown[0].online_ttl), ("ghost-a", None));
    assert_eq!(shown[1].server, "ghost-b");
    assert!(shown[1].online_ttl.is_some_and(|t| t > 0 && t <= 60), "{shown:?}");
    assert!(!shown[1].node_alive);
    let real = table.show("real-0").await.unwrap();
    assert!(real.iter().any(|r| r.server == "node-a" && r.node_alive && !r.is_stale()), "{real:?}");

    // `stats` counts them.
    let survey = table.survey(&walk(FAST), &cancel, |_| {}).await.unwrap();
    assert_eq!(survey.users, users.len() as u64);
    assert_eq!(survey.stale_routes, stale.len() as u64);
    assert_eq!(survey.routes, (entries.len() + real_stale.len() + REAL_USERS) as u64);

    // `list --match 'seed-1*' --stale-only`.
    let mut listed = Vec::new();
    let opts = WalkOptions { rate: FAST, user_pattern: Some("seed-1*".into()) };
    table
        .walk_routes(&opts, &cancel, |_| {}, |page| {
            listed.extend(page.into_iter().filter(|r| r.is_stale()));
            true
        })
        .await
        .unwrap();
    let want: HashSet<RouteRef> = stale.iter().filter(|r| r.user.starts_with("seed-1")).cloned().collect();
    let got: HashSet<RouteRef> = listed.iter().map(|r| rr(&r.user, &r.server)).collect();
    assert_eq!(got, want);

    // Dry run: reports exactly the stale entries, changes nothing.
    let before = snapshot(&admin_client, &users).await;
    let dry = table.purge(&purge_opts(true, None), &cancel, |_| {}).await.unwrap();
    assert!(dry.dry_run && !dry.truncated);
    assert_eq!(dry.routes.iter().cloned().collect::<HashSet<_>>(), stale);
    assert_eq!(dry.removed, stale.len() as u64);
    assert_eq!(dry.sets_deleted, emptied);
    assert_eq!(snapshot(&admin_client, &users).await, before, "a dry run changed the route table");

    // The purge.
    let report = table.purge(&purge_opts(false, None), &cancel, |_| {}).await.unwrap();
    assert_eq!(report.routes.iter().cloned().collect::<HashSet<_>>(), stale);
    assert_eq!(report.removed, stale.len() as u64);
    assert_eq!(report.sets_deleted, emptied);
    assert_eq!(report.restored, 0, "nothing went live during this purge");
    let after = snapshot(&admin_client, &users).await;
    let mut expected: HashMap<String, HashSet<String>> = HashMap::new();
    for (u, servers) in &before {
        let left: HashSet<String> = servers.iter().filter(|s| !stale.contains(&rr(u, s))).cloned().collect();
        if !left.is_empty() {
            expected.insert(u.clone(), left);
        }
    }
    assert_eq!(after, expected);
    assert_routed(&admin_client, &connected).await;
    // A second purge finds nothing.
    let again = table.purge(&purge_opts(false, None), &cancel, |_| {}).await.unwrap();
    assert_eq!(again.removed, 0);

    for c in clients {
        c.close().await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_is_exact_on_standalone() {
    let redis = RedisServer::start();
    purge_removes_exactly_the_stale_routes(redis.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_is_exact_on_cluster() {
    let cluster = RedisCluster::start();
    purge_removes_exactly_the_stale_routes(cluster.config()).await;
}

/// Users per churn scenario; each carries a stale entry so purge works on its set while it
/// connects and disconnects.
const CHURN_USERS: usize = 150;
/// Stale filler sets, so the rate-bounded purge runs for a couple of seconds.
const CHURN_FILLER: usize = 2_500;
/// Purge rate in the churn scenario: ~2.8k keys at this rate is about 1.5 s of walking.
const CHURN_RATE: u32 = 2_000;
/// Concurrent churners.
const CHURNERS: usize = 6;

/// A churn user: its client and the index of its node while connected.
type Slot = tokio::sync::Mutex<Option<(Client, usize)>>;

/// Clients connect and disconnect on two real nodes during the whole purge; afterwards every
/// user still connected has its route entry and presence key, and every stale entry is gone.
async fn purge_under_churn_loses_no_live_route(config: RedisConfig) {
    let admin_client = config.connect().await.unwrap();
    let nodes_started = std::time::Instant::now();
    let nodes = Arc::new([
        TestNode::start("churn-a", Some(config.clone())).await,
        TestNode::start("churn-b", Some(config.clone())).await,
    ]);
    let mut entries: Vec<(String, String, bool)> =
        (0..CHURN_USERS).map(|i| (format!("churn-{i}"), "ghost-churn".to_string(), false)).collect();
    entries.extend((0..CHURN_FILLER).map(|i| (format!("filler-{i}"), "ghost-filler".to_string(), false)));
    seed(&admin_client, &entries).await;

    // Each user slot: None or (client, node index). Churners flip random slots.
    let slots: Arc<Vec<Slot>> = Arc::new((0..CHURN_USERS).map(|_| tokio::sync::Mutex::new(None)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let mut churners = Vec::new();
    for _ in 0..CHURNERS {
        let (slots, stop, flips, nodes) = (slots.clone(), stop.clone(), flips.clone(), nodes.clone());
        churners.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (i, n) = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..CHURN_USERS), rng.random_range(0..2usize))
                };
                let mut slot = slots[i].lock().await;
                match slot.take() {
                    Some((c, _)) => c.close().await,
                    None => *slot = Some((nodes[n].connect(&format!("churn-{i}")).await, n)),
                }
                flips.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let table = RouteTable::connect(&config).await.unwrap();
    let opts = PurgeOptions { walk: walk(CHURN_RATE), dry_run: false, server: None };
    let report = table.purge(&opts, &CancellationToken::new(), |_| {}).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.await.unwrap();
    }
    let flips = flips.load(Ordering::Relaxed);
    assert!(flips > 100, "only {flips} connects/disconnects happened during the purge");

    // Users connected now registered before their 101 (serve's contract), and nodes do not
    // refresh for 30 s, so a route purge removed by mistake would still be missing here.
    let mut connected = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        if let Some((_, n)) = &*slot.lock().await {
            connected.push((format!("churn-{i}"), nodes[*n].id.clone()));
        }
    }
    assert!(!connected.is_empty());
    assert_routed(&admin_client, &connected).await;
    // Past the nodes' first full refresh a wrongly purged route would have been re-added, and
    // the check above would prove nothing: fail loudly rather than pass vacuously.
    let took = nodes_started.elapsed();
    assert!(took < wsctl::routes::PRESENCE_REFRESH, "the scenario took {took:?}, past the nodes' refresh: rerun on a less loaded machine");
    // Every seeded stale entry is gone, whatever the churn did.
    let users: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
    let left = snapshot(&admin_client, &users).await;
    let ghosts: Vec<_> = left.iter().filter(|(_, s)| s.iter().any(|s| s.starts_with("ghost-"))).collect();
    assert!(ghosts.is_empty(), "stale entries left: {:?}", &ghosts[..ghosts.len().min(5)]);
    // The report names every seeded stale entry (it may also name entries of users who were
    // disconnecting, whose presence key the node had already deleted: those were stale too).
    let ghosts_reported = report.routes.iter().filter(|r| r.server.starts_with("ghost-")).count();
    assert_eq!(ghosts_reported, CHURN_USERS + CHURN_FILLER, "removed {}, restored {}", report.removed, report.restored);
    eprintln!(
        "churn: {flips} connects/disconnects during a {} ms purge; removed {}, restored {}; {} users connected at the end, all routed",
        report.elapsed_ms,
        report.removed,
        report.restored,
        connected.len()
    );

    for slot in slots.iter() {
        if let Some((c, _)) = slot.lock().await.take() {
            c.close().await;
        }
    }
    let nodes = Arc::try_unwrap(nodes).ok().expect("churners are done");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_under_churn_on_standalone() {
    let redis = RedisServer::start();
    purge_under_churn_loses_no_live_route(redis.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_under_churn_on_cluster() {
    let cluster = RedisCluster::start();
    purge_under_churn_loses_no_live_route(cluster.config()).await;
}

/// The re-check itself: a presence key that appears right after purge judged the entry stale
/// (a node's SADD landed, its SET not yet) gets the entry put back.
async fn raced_presence_key_is_restored(config: RedisConfig) {
    let admin_client = config.connect().await.unwrap();
    let users: Vec<String> = (0..500).map(|i| format!("racer-{i}")).collect();
    let entries: Vec<_> = users.iter().map(|u| (u.clone(), "slow-node".to_string(), false)).collect();
    seed(&admin_client, &entries).await;
    let table = RouteTable::connect(&config).await.unwrap();
    // The "slow node" writes its presence keys once purge has handled its first page, i.e.
    // after purge judged (and removed) those entries but before their re-check is due.
    let (first_page_tx, first_page) = tokio::sync::oneshot::channel();
    let mut first_page_tx = Some(first_page_tx);
    let opts = PurgeOptions { walk: walk(2_000), dry_run: false, server: None };
    let purge = tokio::spawn(async move {
        table
            .purge(&opts, &CancellationToken::new(), move |p| {
                if p.keys > 0 {
                    if let Some(tx) = first_page_tx.take() {
                        let _ = tx.send(());
                    }
                }
            })
            .await
    });
    first_page.await.expect("purge walks at least one page");
    let p = admin_client.pipeline();
    for u in &users {
        let _: Result<(), _> = p.set(user_online_key(u, "slow-node"), "1", Some(Expiration::EX(60)), None, false).await;
    }
    let _: Vec<Value> = p.all().await.unwrap();
    let report = purge.await.unwrap().unwrap();
    // Every entry is back: either purge saw the key (kept) or removed it and restored it.
    let after = snapshot(&admin_client, &users).await;
    let missing: Vec<&String> = users.iter().filter(|u| !after.contains_key(*u)).collect();
    assert!(missing.is_empty(), "entries lost although their presence key exists: {} (restored {})", missing.len(), report.restored);
    assert!(report.restored > 0, "the scenario did not race: removed {}", report.removed);
    assert_eq!(report.removed, 0, "restored entries are not counted as removed (restored {})", report.restored);
    assert!(report.routes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raced_entries_are_restored_on_standalone() {
    let redis = RedisServer::start();
    raced_presence_key_is_restored(redis.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raced_entries_are_restored_on_cluster() {
    let cluster = RedisCluster::start();
    raced_presence_key_is_restored(cluster.config()).await;
}

/// `servers` from a live node's lease and a dead node's leftover routes; `purge --server`
/// refuses the live one and removes every route of the dead one, stale or not.
async fn servers_tells_dead_from_live(config: RedisConfig) {
    let admin_client = config.connect().await.unwrap();
    let live = TestNode::start("node-live", Some(config.clone())).await;
    let alice = live.connect("alice").await;
    let carol = live.connect("carol").await;
    // "node-dead" crashed: routes left behind, some presence keys not expired yet, no lease.
    let dead: Vec<_> = (0..1_000).map(|i| (format!("gone-{i}"), "node-dead".to_string(), i % 2 == 0)).collect();
    seed(&admin_client, &dead).await;
    seed(&admin_client, &[("alice".into(), "node-dead".into(), true)]).await;

    let table = RouteTable::connect(&config).await.unwrap();
    let cancel = CancellationToken::new();
    let survey = table.survey(&walk(FAST), &cancel, |_| {}).await.unwrap();
    let by_id: HashMap<&str, _> = survey.servers.iter().map(|s| (s.server.as_str(), s)).collect();
    let l = by_id["node-live"];
    assert!(l.alive);
    assert_eq!(l.address.as_deref(), Some(live.addr.to_string().as_str()));
    assert_eq!(l.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(l.connections.is_some() && l.age_secs.is_some_and(|a| a < 60));
    assert_eq!(l.routes, 2);
    let d = by_id["node-dead"];
    assert!(!d.alive && d.address.is_none() && d.connections.is_none());
    assert_eq!(d.routes, 1_001);
    assert_eq!(d.stale_routes, 500);
    assert_eq!(survey.dead_node_routes, 1_001);

    match table.purge(&purge_opts(false, Some("node-live")), &cancel, |_| {}).await {
        Err(AdminError::ServerAlive { server, .. }) => assert_eq!(server, "node-live"),
        other => panic!("purging a live node must be refused, got {other:?}"),
    }
    let report = table.purge(&purge_opts(false, Some("node-dead")), &cancel, |_| {}).await.unwrap();
    assert_eq!(report.removed, 1_001);
    assert_eq!(report.sets_deleted, 1_000);
    let after = snapshot(&admin_client, &["alice".to_string(), "carol".to_string(), "gone-0".to_string()]).await;
    assert_eq!(after.get("alice"), Some(&HashSet::from(["node-live".to_string()])));
    assert_eq!(after.get("carol"), Some(&HashSet::from(["node-live".to_string()])));
    assert!(!after.contains_key("gone-0"));
    assert_routed(&admin_client, &[("alice".into(), "node-live".into()), ("carol".into(), "node-live".into())]).await;

    alice.close().await;
    carol.close().await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_on_standalone() {
    let redis = RedisServer::start();
    servers_tells_dead_from_live(redis.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_on_cluster() {
    let cluster = RedisCluster::start();
    servers_tells_dead_from_live(cluster.config()).await;
}

fn wsctl(redis: &RedisServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(args)
        .env("REDIS_URI", redis.url())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("wsctl runs")
}

/// The binary: `routes stats --json` and `routes purge --dry-run --json` shapes, and purge
/// refusing to run unconfirmed from a non-terminal stdin.
#[test]
fn binary_json_output() {
    let redis = RedisServer::start();
    for i in 0..50 {
        redis.cli(&["SADD", &format!("user_servers:bin-{i}"), "dead-node"]);
    }
    redis.cli(&["SADD", "user_servers:bin-0", "live-node"]);
    redis.cli(&["SET", "user_online:bin-0:live-node", "1", "EX", "60"]);

    let out = wsctl(&redis, &["routes", "stats", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: Json = serde_json::from_slice(&out.stdout).expect("stats --json is JSON");
    assert_eq!(stats["users"], 50);
    assert_eq!(stats["routes"], 51);
    assert_eq!(stats["stale_routes"], 50);
    assert_eq!(stats["servers"].as_array().map(Vec::len), Some(2));
    assert_eq!(stats["servers"][0]["alive"], false);

    let out = wsctl(&redis, &["routes", "purge", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dry: Json = serde_json::from_slice(&out.stdout).expect("purge --json is JSON");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed"], 50);
    assert_eq!(dry["sets_deleted"], 49);
    assert_eq!(dry["routes"].as_array().map(Vec::len), Some(50));
    assert!(dry["routes"][0]["user"].as_str().is_some_and(|u| u.starts_with("bin-")));
    assert_eq!(dry["routes"][0]["server"], "dead-node");
    assert_eq!(redis.cli(&["SCARD", "user_servers:bin-1"]), "1", "the dry run changed Redis");

    let out = wsctl(&redis, &["routes", "purge"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(redis.cli(&["SCARD", "user_servers:bin-1"]), "1");

    let out = wsctl(&redis, &["routes", "purge", "--yes", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["removed"], 50);
    assert_eq!(redis.cli(&["EXISTS", "user_servers:bin-1"]), "0");
    assert_eq!(redis.cli(&["SMEMBERS", "user_servers:bin-0"]), "live-node");
}
