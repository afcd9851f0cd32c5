//! `wsctl load` against real in-process nodes (and a real Redis for two nodes), against a
//! deliberately faulty WebSocket server to prove the audit, and through the built binary for
//! exit codes and profile errors.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsctl::load::{Live, LoadConfig, Pattern, Rate, Report};

use support::load::{run, FD_LIMIT};
use support::ws::{self, Users};
use support::{RedisServer, TestNode};

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

fn quick(urls: Vec<String>, clients: u32, rate: f64) -> LoadConfig {
    let mut c = LoadConfig::new(urls);
    c.clients = clients;
    c.rate = Rate::PerConnection(rate);
    c.duration = Duration::from_millis(1500);
    c.drain = Duration::from_secs(2);
    c.latency_report = Duration::from_millis(500);
    c
}

fn assert_sane(r: &Report) {
    let l = &r.latency_ms;
    assert_eq!(l.count, r.messages.delivered, "one latency sample per delivery");
    assert!(l.min_ms > 0.0 && l.min_ms <= l.p50_ms && l.p50_ms <= l.p90_ms && l.p90_ms <= l.p99_ms, "{l:?}");
    assert!(l.p99_ms <= l.p999_ms && l.p999_ms <= l.max_ms, "{l:?}");
    assert!(l.max_ms < 5_000.0, "a loopback delivery took {} ms", l.max_ms);
    assert_eq!(r.connect_ms.count, r.connections.target, "one connect sample per connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_against_one_node_loses_nothing() {
    let node = TestNode::start("load-smoke", None).await;
    let r = run(quick(vec![url(node.addr)], 30, 20.0)).await;
    assert_eq!(r.connections.connected_at_start, 30);
    // 30 connections x 20/s x 1.5 s, give or take the phase of each connection's schedule.
    assert!((870..=930).contains(&r.messages.sent), "sent {}", r.messages.sent);
    assert_eq!(r.messages.delivered, r.messages.sent);
    assert_eq!((r.audit.expected, r.audit.received), (r.messages.sent, r.messages.sent));
    assert_eq!((r.audit.lost, r.audit.duplicated, r.audit.reordered), (0, 0, 0));
    assert_eq!(r.connections.closed_by_us, 30, "every connection closed by us with 1000");
    assert!(r.connections.unexpected_closes.is_empty(), "{:?}", r.connections.unexpected_closes);
    assert!(r.messages.latency_reports > 0 && r.messages.server_errors.is_empty(), "{:?}", r.messages);
    assert_sane(&r);
    // The server saw our latency reports (they feed its metrics) and counted our messages.
    let text = node.metrics.render();
    let metric = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert_eq!(metric("wss_messages_total ") as u64, r.messages.sent);
    assert_eq!(metric("wss_client_latency_ms_count ") as u64, r.messages.latency_reports);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_redis_lose_nothing_cross_node() {
    let redis = RedisServer::start();
    let a = TestNode::start("load-a", Some(redis.config())).await;
    let b = TestNode::start("load-b", Some(redis.config())).await;
    let mut c = quick(vec![url(a.addr), url(b.addr)], 40, 10.0);
    c.pattern = Pattern::CrossNode;
    let r = run(c).await;
    assert_eq!(r.connections.connected_at_start, 40);
    assert!(r.messages.sent > 0);
    // Every message crossed Redis to the other node and arrived once.
    assert_eq!(r.messages.delivered, r.messages.sent, "{:?} {:?} {:?}", r.audit, r.messages, r.audit_receivers);
    assert_eq!((r.audit.lost, r.audit.duplicated), (0, 0), "{:?}", r.audit_receivers);
    assert_eq!(r.audit.expected, r.messages.sent);
    assert!(r.messages.server_errors.is_empty(), "{:?}", r.messages.server_error_samples);
    assert_sane(&r);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_users_and_merge_into_one_report() {
    let node = TestNode::start("load-shards", None).await;
    let mut c1 = quick(vec![url(node.addr)], 20, 10.0);
    c1.shard = (0, 2);
    let mut c2 = c1.clone();
    c2.shard = (1, 2);
    let (r1, r2) = tokio::join!(run(c1), run(c2));
    assert_eq!((r1.connections.target, r2.connections.target), (10, 10));
    let m = Report::merge(&[r1.clone(), r2.clone()]).unwrap();
    assert_eq!(m.connections.target, 20);
    assert_eq!(m.messages.delivered, r1.messages.delivered + r2.messages.delivered);
    assert_eq!(m.latency_ms.count, r1.latency_ms.count + r2.latency_ms.count);
    assert!(m.latency_ms.max_ms >= r1.latency_ms.max_ms.max(r2.latency_ms.max_ms) - 0.01);
    assert_eq!(m.audit.lost, 0);
    assert_eq!(m.run.shards, vec!["1/2".to_string(), "2/2".to_string()]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_is_counted_and_its_users_reconnect_elsewhere() {
    let redis = RedisServer::start();
    let a = TestNode::start("load-ra", Some(redis.config())).await;
    let b = TestNode::start("load-rb", Some(redis.config())).await;
    let mut c = quick(vec![url(a.addr), url(b.addr)], 20, 10.0);
    c.duration = Duration::from_secs(3);
    c.reconnect = true;
    let live = Live::new();
    let handle = tokio::spawn(wsctl::load::run(c, live.clone(), CancellationToken::new(), FD_LIMIT, 0));
    support::eventually(Duration::from_secs(10), "traffic flowing", || {
        let live = live.clone();
        async move { live.snapshot().delivered > 50 }
    })
    .await;
    b.stop().await; // drains: every client of b gets 1012
    let r = handle.await.unwrap().unwrap();
    assert_eq!(r.connections.unexpected_closes.get("1012"), Some(&10), "{:?}", r.connections.unexpected_closes);
    assert!(r.connections.reconnects >= 10, "reconnects {}", r.connections.reconnects);
    assert_eq!(r.connections.closed_by_us, 20, "everyone back on a and closed by us at the end");
    // While they were away, some messages were owed to them or could not be sent.
    assert!(r.audit.sent_to_offline + r.messages.missed_sends > 0, "{:?} {:?}", r.audit, r.messages);
    a.stop().await;
}

/// A WebSocket "server" that routes chat messages between its users like a real node, except
/// that of every chat message it receives (numbered from 0), those with n % 10 == 3 are dropped
/// and, of the rest, those with n % 7 == 5 are delivered twice.
struct FaultyServer {
    addr: SocketAddr,
    dropped: Arc<AtomicU64>,
    duplicated: Arc<AtomicU64>,
}

async fn faulty_server() -> FaultyServer {
    let dropped = Arc::new(AtomicU64::new(0));
    let duplicated = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let users: Users = Arc::default();
    let (d, du) = (dropped.clone(), duplicated.clone());
    let addr = ws::serve(move |stream| {
        let (users, counter, dropped, duplicated) = (users.clone(), counter.clone(), d.clone(), du.clone());
        async move {
            let Some(mut conn) = ws::Conn::accept(stream).await else { return };
            let user = conn.join(&users);
            while let Some((to, v)) = conn.next_chat().await {
                let env = serde_json::json!({"type": "chat_message", "payload": v["payload"], "receiverID": to, "senderId": user});
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let copies = if n % 10 == 3 {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    0
                } else if n % 7 == 5 {
                    duplicated.fetch_add(1, Ordering::SeqCst);
                    2
                } else {
                    1
                };
                let target = users.lock().unwrap().get(&to).cloned();
                let target = target.expect("receivers are all connected before traffic starts");
                for _ in 0..copies {
                    let _ = target.send(Message::text(env.to_string()));
                }
            }
            users.lock().unwrap().remove(&user);
            conn.finish().await;
        }
    })
    .await;
    FaultyServer { addr, dropped, duplicated }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_counts_exactly_what_a_faulty_server_drops_and_duplicates() {
    let server = faulty_server().await;
    let mut c = quick(vec![url(server.addr)], 10, 20.0);
    c.pattern = Pattern::Ring;
    c.drain = Duration::from_secs(1);
    let r = run(c).await;
    let dropped = server.dropped.load(Ordering::SeqCst);
    let duplicated = server.duplicated.load(Ordering::SeqCst);
    assert!(dropped > 10 && duplicated > 10, "the faulty server misbehaved: {dropped} dropped, {duplicated} duplicated");
    assert_eq!(r.audit.lost, dropped, "{:?}", r.audit);
    assert_eq!(r.audit.duplicated, duplicated, "{:?}", r.audit);
    assert_eq!(r.audit.reordered, 0);
    assert_eq!(r.messages.delivered, r.messages.sent - dropped + duplicated);
    assert_eq!(r.audit.receivers_with_issues, 10, "every ring receiver saw both faults");
    assert!(r.audit_receivers.iter().all(|c| c.lost + c.duplicated > 0));
}

fn wsctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsctl"))
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("wsctl runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn assert_thresholds_set_the_exit_code_and_json_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let base = ["load", "--spawn-local", "--quiet", "--clients", "10", "--duration", "1s", "--drain", "1s"];
    let (code, stdout, stderr) = output(wsctl().args(base).args(["--assert", "lost=0", "--assert", "p99<10s", "--json"]).arg(&json));
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("lost=0") && stdout.contains("ok"), "{stdout}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["audit"]["lost"], 0);
    assert!(v["messages"]["delivered"].as_u64().unwrap() > 0);
    assert!(!v["histograms"]["latency_us"].as_str().unwrap().is_empty());
    assert_eq!(v["assertions"].as_array().unwrap().len(), 4, "2 from the smoke profile, 2 from flags");

    // A threshold no run can meet: exit 99, and the table says which failed.
    let (code, stdout, stderr) = output(wsctl().args(base).args(["--assert", "p50<0.001ms", "--assert", "lost=0"]));
    assert_eq!(code, 99, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("FAILED") && stderr.contains("1 of 4 thresholds failed"), "{stdout}\n{stderr}");

    // Merging the JSON report with itself doubles the counts; thresholds apply to the merge.
    let merged = dir.path().join("merged.json");
    let (code, stdout, stderr) = output(wsctl().args(["load", "merge"]).arg(&json).arg(&json).arg("--json").arg(&merged).args(["--assert", "lost=0"]));
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    assert_eq!(m["messages"]["delivered"].as_u64().unwrap(), 2 * v["messages"]["delivered"].as_u64().unwrap());
    assert_eq!(m["latency_ms"]["count"].as_u64().unwrap(), 2 * v["latency_ms"]["count"].as_u64().unwrap());

    // A threshold that does not parse is a usage error (2), before anything runs.
    let (code, _, stderr) = output(wsctl().args(base).args(["--assert", "latency<5"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown metric \"latency\""), "{stderr}");
}

#[test]
fn bad_profiles_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, "clients: 10\nrate: 5\nconections-per-user: 2\n").unwrap();
    let (code, _, stderr) = output(wsctl().args(["load", "--profile"]).arg(&p));
    assert_eq!(code, 2, "a bad profile is a usage error");
    assert!(stderr.contains(&format!("{}:3:", p.display())), "{stderr}");
    assert!(stderr.contains("conections-per-user"), "{stderr}");

    std::fs::write(&p, "clients: 10\n# the ramp\nramp: fast\n").unwrap();
    let (code, _, stderr) = output(wsctl().args(["load", "--profile"]).arg(&p));
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("{}:3: field `ramp`", p.display())) && stderr.contains("\"fast\""), "{stderr}");

    std::fs::write(&p, "clients: many\n").unwrap();
    let (_, _, stderr) = output(wsctl().args(["load", "--profile"]).arg(&p));
    assert!(stderr.contains(&format!("{}:1:", p.display())) && stderr.contains("field `clients`"), "{stderr}");
}

#[test]
fn too_many_connections_for_the_open_file_limit_is_explained() {
    let (code, _, stderr) = output(wsctl().args(["load", "--url", "ws://127.0.0.1:9/ws", "--clients", "5000000", "--quiet"]));
    assert_eq!(code, 1);
    assert!(stderr.contains("5000000 connections need about") && stderr.contains("--shard"), "{stderr}");
}

#[test]
fn shipped_profiles_parse() {
    for name in ["smoke", "chat-10k", "soak", "cross-node", "cross-node-2k", "rooms"] {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("profiles/{name}.yaml"));
        let p = wsctl::load::Profile::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // A room profile's users are its rooms times their size.
        let users = p.clients.is_some() || (p.rooms.is_some() && p.room_size.is_some());
        assert!(users && p.duration.is_some(), "{name} sets its users and duration");
        for a in &p.assert {
            wsctl::load::Assertion::parse(a).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

/// Sends the server refused while Redis was paused (`unavailable`, the sender told) and that
/// never arrived are reported as refused, apart from lost: `lost` means accepted (or never
/// answered) and never arrived, so it stays 0 here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_are_reported_apart_from_lost() {
    let redis = RedisServer::start();
    let a = TestNode::start("load-ref-a", Some(redis.config())).await;
    let b = TestNode::start("load-ref-b", Some(redis.config())).await;
    let mut c = quick(vec![url(a.addr), url(b.addr)], 20, 20.0);
    c.duration = Duration::from_secs(5);
    c.ack = true;
    let pause = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(redis.cli(&["CLIENT", "PAUSE", "2500", "WRITE"]), "OK");
        redis
    });
    let r = run(c).await;
    let _redis = pause.await.unwrap();
    let acks = r.acks.as_ref().expect("--ack");
    assert!(acks.refused.get("unavailable").copied().unwrap_or(0) > 0, "the pause refused sends: {acks:?}");
    assert!(r.audit.refused_missing > 0, "{:?}", r.audit);
    assert_eq!((r.audit.lost, acks.lost_after_ack, r.audit.duplicated), (0, 0, 0), "{:?} {acks:?}", r.audit);
    a.stop().await;
    b.stop().await;
}
