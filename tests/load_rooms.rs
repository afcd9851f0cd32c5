//! `wsctl load --pattern room` and `--api-publish` against real nodes (embedded, and two nodes
//! over a real Redis: standalone and a 3-master Cluster), and against a server that breaks the
//! room promise, to show the audit sees it.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wsctl::load::{LoadConfig, Pattern, Rate, Report};
use wsctl::ServerConfig;

use support::load::{run, FD_LIMIT};
use support::ws::{serve, Conn, Outbox};
use support::{test_limits, RedisCluster, RedisServer, TestNode};

const KEY: &str = "load-rooms-key";

async fn node(id: &str, redis: Option<wsctl::RedisConfig>) -> TestNode {
    TestNode::start_config(ServerConfig { redis, limits: test_limits(), api_key: Some(KEY.into()), ..ServerConfig::embedded(id) }).await
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

fn rooms(urls: Vec<String>, rooms: u32, size: u32, rate: f64) -> LoadConfig {
    let mut c = LoadConfig::new(urls);
    (c.pattern, c.rooms, c.room_size, c.clients) = (Pattern::Room, rooms, size, rooms * size);
    c.rate = Rate::PerConnection(rate);
    c.duration = Duration::from_millis(1500);
    c.drain = Duration::from_secs(3);
    c
}

/// Every room message reached every other member connection once, and its sender never.
fn assert_fan_out(r: &Report, size: u64) {
    let a = &r.audit;
    assert!(r.messages.sent > 0);
    assert_eq!((a.lost, a.duplicated, a.echoed, a.foreign), (0, 0, 0, 0), "{a:?} {:?}", r.audit_receivers);
    assert_eq!(a.expected, r.messages.sent * (size - 1), "each message is owed to the room's other members");
    assert_eq!(a.received, a.expected);
    assert_eq!(r.messages.delivered, a.expected);
    assert_eq!(r.frames.by_type.get("room_message").copied(), Some(a.expected), "{:?}", r.frames);
    assert!(r.messages.server_errors.is_empty(), "{:?}", r.messages.server_error_samples);
}

async fn two_nodes_fan_out(redis: wsctl::RedisConfig) {
    let a = node("lr-a", Some(redis.clone())).await;
    let b = node("lr-b", Some(redis)).await;
    // Consecutive users alternate nodes: every room has members on both.
    let mut c = rooms(vec![url(a.addr), url(b.addr)], 3, 6, 4.0);
    c.ack = true;
    let r = run(c).await;
    assert_fan_out(&r, 6);
    let acks = r.acks.as_ref().expect("--ack");
    assert_eq!((acks.online, acks.lost_after_ack, acks.unanswered), (r.messages.sent, 0, 0), "{acks:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_fan_out_across_two_nodes_over_redis() {
    let redis = RedisServer::start();
    two_nodes_fan_out(redis.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_fan_out_across_two_nodes_over_a_cluster() {
    let cluster = RedisCluster::start();
    two_nodes_fan_out(cluster.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publishes_are_audited_with_the_socket_traffic() {
    let redis = RedisServer::start();
    let a = node("la-a", Some(redis.config())).await;
    let b = node("la-b", Some(redis.config())).await;
    let mut c = LoadConfig::new(vec![url(a.addr), url(b.addr)]);
    c.clients = 20;
    c.rate = Rate::PerConnection(2.0);
    c.duration = Duration::from_millis(1500);
    (c.api_publish, c.api_key) = (40.0, Some(KEY.into()));
    let r = run(c).await;
    let api = r.api.as_ref().expect("--api-publish");
    assert!(api.sent >= 40, "1.5 s at 40/s: {api:?}");
    assert_eq!((api.online, api.skipped), (api.sent, 0), "{api:?}");
    assert!(api.refused.is_empty() && api.failed.is_empty(), "{api:?}");
    assert_eq!(api.latency_ms.count, api.sent);
    // One connection per user, all up: every publish and every send is owed once.
    assert_eq!(r.audit.expected, r.messages.sent + api.sent, "{:?}", r.audit);
    assert_eq!((r.audit.lost, r.audit.duplicated, r.audit.foreign), (0, 0, 0), "{:?}", r.audit_receivers);
    assert_eq!(r.frames.by_type.get("notification").copied(), Some(api.sent), "{:?}", r.frames);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publishes_to_rooms_reach_every_member() {
    let n = node("lar", None).await;
    let mut c = rooms(vec![url(n.addr)], 2, 5, 1.0);
    (c.api_publish, c.api_key) = (30.0, Some(KEY.into()));
    let r = run(c).await;
    let api = r.api.as_ref().unwrap();
    assert!(api.sent > 0 && api.online == api.sent, "{api:?}");
    // Room sends are owed to the 4 other members, API publishes to all 5.
    assert_eq!(r.audit.expected, r.messages.sent * 4 + api.sent * 5, "{:?}", r.audit);
    assert_eq!((r.audit.lost, r.audit.duplicated, r.audit.echoed), (0, 0, 0), "{:?}", r.audit_receivers);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_is_reported_as_refused_not_lost() {
    let n = node("lak", None).await;
    let mut c = LoadConfig::new(vec![url(n.addr)]);
    (c.clients, c.rate, c.duration) = (4, Rate::PerConnection(1.0), Duration::from_millis(700));
    (c.api_publish, c.api_key) = (20.0, Some("not-the-key".into()));
    let r = run(c).await;
    let api = r.api.as_ref().unwrap();
    assert!(api.sent > 0);
    assert_eq!(api.refused.get("unauthorized").copied(), Some(api.sent), "{api:?}");
    assert_eq!(api.online, 0);
    // Refused publishes are owed to no one: only the socket sends are.
    assert_eq!((r.audit.lost, r.audit.expected), (0, r.messages.sent), "{:?}", r.audit);
    n.stop().await;
}

/// A room server that breaks the promise: it sends each room message back to its sender too.
async fn echoing_room_server() -> SocketAddr {
    let members: Arc<Mutex<HashMap<String, Vec<Outbox>>>> = Arc::default();
    serve(move |stream| {
        let members = members.clone();
        async move {
            let Some(mut conn) = Conn::accept(stream).await else { return };
            while let Some(t) = conn.next_text().await {
                let v: Value = serde_json::from_str(&t).unwrap();
                let room = v["room"].as_str().unwrap_or_default().to_string();
                match v["type"].as_str() {
                    Some("join") => {
                        members.lock().unwrap().entry(room).or_default().push(conn.outbox.clone());
                        let _ = conn.outbox.send(Message::text(json!({"type": "ack", "id": v["id"]}).to_string()));
                    }
                    Some("room_message") => {
                        let env = json!({"type": "room_message", "room": room, "payload": v["payload"], "senderId": "x"}).to_string();
                        for m in members.lock().unwrap().get(&room).into_iter().flatten() {
                            let _ = m.send(Message::text(env.clone()));
                        }
                    }
                    _ => {}
                }
            }
            conn.finish().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_echoes_room_messages_to_their_sender_is_caught() {
    let addr = echoing_room_server().await;
    let r = run(rooms(vec![url(addr)], 2, 3, 5.0)).await;
    assert!(r.messages.sent > 0);
    assert_eq!(r.audit.echoed, r.messages.sent, "every message came back to its sender: {:?}", r.audit);
    assert_eq!((r.audit.lost, r.audit.duplicated), (0, 0), "the other members got theirs: {:?}", r.audit);
    assert_eq!(r.metric("echoed"), Some(r.messages.sent as f64));
}

#[test]
fn room_settings_are_checked_and_name_the_bad_value() {
    let bad = |f: &dyn Fn(&mut LoadConfig)| {
        let mut c = rooms(vec!["ws://127.0.0.1:1/ws".into()], 4, 5, 1.0);
        f(&mut c);
        c.validate(FD_LIMIT, 0).expect_err("invalid").to_string()
    };
    assert!(bad(&|c| c.room_size = 1).contains("room"));
    assert!(bad(&|c| c.clients = 7).contains("--rooms x --room-size"));
    assert!(bad(&|c| c.room_prefix = "bad room ".into()).contains("bad room"));
    assert!(bad(&|c| c.api_publish = 10.0).contains("--api-key"));
    assert!(bad(&|c| (c.api_publish, c.api_key) = (-1.0, Some("k".into()))).contains("api-publish"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_profile_runs_from_the_command_line() {
    let n = node("lrp", None).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("rooms.json");
    // The shipped profile, made small: its users come from --rooms x --room-size.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["load", "--quiet", "--profile", concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/rooms.yaml")])
        .args(["--url", &url(n.addr), "--rooms", "3", "--room-size", "4", "--total-rate", "30", "--duration", "1s", "--drain", "2s", "--json"])
        .arg(&json)
        .output()
        .await
        .expect("wsctl runs");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!((r["run"]["pattern"].as_str(), r["run"]["clients"].as_u64()), (Some("room"), Some(12)));
    let sent = r["messages"]["sent"].as_u64().unwrap();
    assert!(sent > 0);
    assert_eq!(r["audit"]["expected"].as_u64(), Some(sent * 3), "{}", r["audit"]);
    assert_eq!((r["audit"]["lost"].as_u64(), r["audit"]["echoed"].as_u64()), (Some(0), Some(0)));
    n.stop().await;
}
