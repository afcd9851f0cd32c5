//! Where two features meet: history × the HTTP API, a resume × rooms and acks, hostile bytes on
//! a node's Redis channel, a disconnect during a Redis stall. Real redis-server, real clients;
//! each test failed on the code before its fix (docs/reliability.md pairs them with the promise).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use wsctl::broker::HistoryConfig;
use wsctl::ServerConfig;

const KEY: &str = "seams-api-key";

fn history() -> Option<HistoryConfig> {
    Some(HistoryConfig { size: 100, ttl: Duration::from_secs(60) })
}

async fn node(id: &str, redis: &RedisServer, history: Option<HistoryConfig>) -> TestNode {
    node_on(id, redis.config(), history).await
}

/// A node with the API key on any Redis (standalone or Cluster).
async fn node_on(id: &str, redis: wsctl::RedisConfig, history: Option<HistoryConfig>) -> TestNode {
    let config = ServerConfig { redis: Some(redis), limits: test_limits(), api_key: Some(KEY.into()), history, ..ServerConfig::embedded(id) };
    TestNode::start_config(config).await
}

/// `POST path` with the API key; the status and the JSON answer.
async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    http_json(addr, "POST", path, Some(KEY), &body.to_string()).await
}

/// With history, an API publish reaches a receiver on the publishing node once, numbered, and
/// the answer counts that node once (before: a second copy without offset, straight from the hub).
#[tokio::test]
async fn an_api_publish_with_history_reaches_a_local_receiver_once() {
    let redis = RedisServer::start();
    let a = node("seam-a", &redis, history()).await;
    let mut bob = a.connect("bob").await;
    let (status, answer) = post(a.addr, "/api/publish", json!({"receiverID":"bob","type":"notice","payload":{"n":1}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"receiverID":"bob","online":true,"local":0,"nodes":1}));
    let got = bob.recv().await;
    assert_eq!((got["type"].as_str(), got["offset"].as_u64()), (Some("notice"), Some(1)), "{got}");
    bob.expect_silence(Duration::from_millis(300)).await;
    a.stop().await;
}

/// Hostile bytes on `server:<id>` (a skip mark cut inside a character, not UTF-8, not JSON, a
/// mark with a bad UUID) are dropped and counted; the node keeps delivering and acks stay true.
#[tokio::test]
async fn hostile_bytes_on_a_nodes_channel_do_not_stop_its_deliveries() {
    let redis = RedisServer::start();
    let (a, b) = (node("seam-a", &redis, None).await, node("seam-b", &redis, None).await);
    let mut bob = a.connect("bob").await;
    let mut alice = b.connect("alice").await;
    let channel = format!("server:{}", a.id);
    let cut = format!("!{}é{{\"receiverID\":\"bob\"}}", "a".repeat(35));
    for hostile in [cut.as_str(), "!", "!zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz{}", "not json", "{\"receiverID\":7}", "{\"receiverID\":\"bob\"}x"] {
        redis.cli(&["PUBLISH", &channel, hostile]);
    }
    eventually(Duration::from_secs(5), "the hostile messages are counted", || {
        let n = a.metrics.broker_bad_envelopes.get();
        async move { n >= 5 }
    })
    .await;
    for i in 0..3 {
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":i,"id":i})).await;
        assert_eq!(alice.recv_ack().await, json!({"type":"ack","id":i,"online":true}));
        assert_eq!(bob.recv_chat().await["payload"], i);
    }
    assert_eq!(a.metrics.task_restarts.get(), 0, "nothing panicked the receiver");
    a.stop().await;
    b.stop().await;
}

/// After a resume, frames whose payload or id holds `"offset"` (a room message, an ack) are
/// not taken for replayed history and dropped: the offset travels beside the frame.
#[tokio::test]
async fn a_resumed_client_keeps_frames_whose_payload_says_offset() {
    let redis = RedisServer::start();
    let a = node("seam-a", &redis, history()).await;
    let mut alice = a.connect("alice").await;
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":"first","id":0})).await;
    assert_eq!(alice.recv_ack().await["stored"], true);
    let (status, answer) = post(a.addr, "/api/publish", json!({"receiverID":"bob","type":"n","payload":2})).await;
    assert_eq!(status, 200, "{answer}");
    let url = format!("{}&since=0", a.ws_url("bob"));
    let mut bob = Client::connect(&url).await;
    loop {
        let f = bob.recv().await;
        if f["type"] == "recovery" {
            assert_eq!((f["complete"].as_bool(), f["count"].as_u64(), f["offset"].as_u64()), (Some(true), Some(2), Some(2)), "{f}");
            break;
        }
    }
    bob.send(json!({"type":"join","room":"lobby","id":"j"})).await;
    assert_eq!(bob.recv_ack().await["id"], "j");
    alice.send(json!({"type":"join","room":"lobby","id":"j"})).await;
    assert_eq!(alice.recv_ack().await["id"], "j");
    alice.send(json!({"type":"room_message","room":"lobby","payload":{"a":0,"offset":1}})).await;
    let got = bob.recv().await;
    assert_eq!((got["type"].as_str(), &got["payload"]), (Some("room_message"), &json!({"a":0,"offset":1})), "{got}");
    bob.send(json!({"type":"chat_message","receiverID":"nobody","payload":1,"id":{"x":0,"offset":1}})).await;
    assert_eq!(bob.recv_ack().await["id"], json!({"x":0,"offset":1}));
    a.stop().await;
}

/// A disconnect while the route writer is stuck behind a Redis pause, with its queue full of
/// heartbeats, still removes the route once Redis answers (before: dropped on the full queue,
/// and senders were told `online:true` for up to a minute).
#[tokio::test]
async fn a_disconnect_during_a_redis_pause_is_never_dropped() {
    let redis = RedisServer::start();
    let a = node("seam-a", &redis, None).await;
    let gone = a.connect("gone").await;
    let mut beater = a.connect("beater").await;
    let member = || redis.cli(&["SISMEMBER", "user_servers:gone", "seam-a"]);
    assert_eq!(member(), "1");
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "20000", "WRITE"]), "OK");
    // More heartbeats than the writer's queue holds, while its first batch waits on Redis.
    let beats = wsctl::broker::ROUTE_QUEUE + 2_000;
    for _ in 1..beats {
        beater.send(json!({"type":"heartbeat"})).await;
    }
    beater.send(json!({"type":"heartbeat","id":"last"})).await;
    loop {
        if beater.recv().await["id"] == "last" {
            break;
        }
    }
    gone.close().await;
    eventually(Duration::from_secs(5), "the hub lets go of the connection", || {
        let n = a.metrics.active_connections.get();
        async move { n == 1 }
    })
    .await;
    assert_eq!(redis.cli(&["CLIENT", "UNPAUSE"]), "OK");
    eventually(Duration::from_secs(10), "the route of the user who left is removed", || {
        let m = member();
        async move { m == "0" }
    })
    .await;
    a.stop().await;
}

/// Reads frames until one with each id in `ids` came; panics past `within`. Returns them by id.
async fn answers(c: &mut Client, ids: &[Value], within: Duration) -> Vec<Value> {
    let mut got = vec![Value::Null; ids.len()];
    tokio::time::timeout(within, async {
        while got.iter().any(Value::is_null) {
            let f = c.recv().await;
            if let Some(i) = ids.iter().position(|id| *id == f["id"]) {
                got[i] = f;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not every frame was answered within {within:?}: {got:?}"));
    got
}

/// A Redis with `DEBUG SLEEP` on: a real stall of the whole server, subscriptions included
/// (`CLIENT PAUSE` lets SUBSCRIBE through).
fn stallable_redis() -> RedisServer {
    RedisServer::start_with(vec!["--enable-debug-command".into(), "yes".into()])
}

/// Starts `DEBUG SLEEP secs` and returns once Redis has stopped answering.
fn stall(redis: &RedisServer, secs: &str) -> std::process::Child {
    let child = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "DEBUG", "SLEEP", secs])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli runs");
    let stalled = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        s.read(&mut [0u8; 16]).is_err()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stalled() {
        assert!(std::time::Instant::now() < deadline, "DEBUG SLEEP did not take effect");
    }
    child
}

/// While Redis is stalled, joins of three rooms and a chat message are all answered within the
/// 3 s bound (before: each room's subscribe waited out its own 2 s in turn, and the chat ack
/// waited behind them, ~6 s).
#[tokio::test]
async fn a_slow_join_does_not_hold_up_later_answers() {
    let redis = stallable_redis();
    let a = node("seam-a", &redis, None).await;
    let mut bob = a.connect("bob").await;
    let mut sleeper = stall(&redis, "7");
    let mut ids = Vec::new();
    for room in ["r1", "r2", "r3"] {
        bob.send(json!({"type":"join","room":room,"id":room})).await;
        ids.push(json!(room));
    }
    bob.send(json!({"type":"chat_message","receiverID":"carol","payload":1,"id":"chat"})).await;
    ids.push(json!("chat"));
    let got = answers(&mut bob, &ids, Duration::from_millis(3_600)).await;
    for f in &got {
        let answered = f["type"] == "ack" || (f["type"] == "error" && f["code"] == "unavailable");
        assert!(answered, "{f}");
    }
    let _ = sleeper.wait();
    a.stop().await;
}

/// A join that races the last leave's UNSUBSCRIBE is not acked while the node is unsubscribing
/// (before: acked at once, then the unsubscribe went through and the member heard nothing); it
/// is acked once the node has subscribed again, and then hears the room.
#[tokio::test]
async fn a_join_racing_the_last_leave_is_acked_only_when_subscribed() {
    let redis = stallable_redis();
    let (a, b) = (node("seam-a", &redis, None).await, node("seam-b", &redis, None).await);
    let mut bob = a.connect("bob").await;
    let mut carol = b.connect("carol").await;
    for c in [&mut bob, &mut carol] {
        c.send(json!({"type":"join","room":"lobby","id":"j"})).await;
        assert_eq!(c.recv_ack().await["id"], "j");
    }
    let mut sleeper = stall(&redis, "1.5");
    bob.send(json!({"type":"leave","room":"lobby","id":"l"})).await;
    assert_eq!(bob.recv_ack().await["id"], "l");
    bob.send(json!({"type":"join","room":"lobby","id":"again"})).await;
    assert!(bob.try_recv(Duration::from_millis(800)).await.is_none(), "a join acked while its subscription was going away");
    let _ = sleeper.wait();
    let ack = bob.recv_ack().await;
    assert_eq!((ack["id"].as_str(), ack["code"].as_str()), (Some("again"), None), "{ack}");
    carol.send(json!({"type":"room_message","room":"lobby","payload":"hello","id":"m"})).await;
    assert_eq!(carol.recv_ack().await["nodes"], 1);
    assert_eq!(bob.recv().await["payload"], "hello");
    a.stop().await;
    b.stop().await;
}

/// A resume of more history than the send queue holds is read and written in pages of at most
/// the queue's byte bound (so 100 resumes that stop reading cost 100 queues, not 100 histories),
/// and still arrives whole: every offset once, in order, then a complete `recovery`, then live.
#[tokio::test]
async fn a_large_resume_is_replayed_in_pages_within_the_queue_bound() {
    let redis = RedisServer::start();
    let limits = wsctl::Limits { send_queue_bytes: 128 * 1024, ..test_limits() };
    let history = Some(HistoryConfig { size: 300, ttl: Duration::from_secs(60) });
    let config = ServerConfig { redis: Some(redis.config()), limits, history, ..ServerConfig::embedded("seam-a") };
    let a = TestNode::start_config(config).await;
    let mut alice = a.connect("alice").await;
    let text = "x".repeat(16 * 1024);
    for i in 0..80 {
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":{"i":i,"text":text},"id":i})).await;
        assert_eq!(alice.recv_ack().await["stored"], true);
    }
    let reads = |r: &RedisServer| r.cli(&["INFO", "commandstats"]).lines().find(|l| l.starts_with("cmdstat_evalsha:")).map(str::to_string);
    let before = reads(&redis);
    let mut bob = Client::connect(&format!("{}&since=0", a.ws_url("bob"))).await;
    for i in 0..80u64 {
        let f = bob.recv().await;
        assert_eq!((f["offset"].as_u64(), &f["payload"]["i"]), (Some(i + 1), &json!(i)), "replayed in order, once");
    }
    let rec = bob.recv().await;
    assert_eq!((rec["type"].as_str(), rec["complete"].as_bool(), rec["count"].as_u64(), rec["offset"].as_u64()), (Some("recovery"), Some(true), Some(80), Some(80)), "{rec}");
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":"live","id":"live"})).await;
    assert_eq!(bob.recv().await["offset"], 81);
    let calls = |line: Option<String>| line.and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok()).unwrap_or(0);
    // 80 x 16 KiB in pages of at most 128 KiB: at least 10 reads (one more with the live send).
    assert!(calls(reads(&redis)) - calls(before) >= 11, "the replay was not paged: {:?}", reads(&redis));
    a.stop().await;
}

/// Sends `chat` with an `idem` key until it is acked (retrying `unavailable`, as a client
/// should); returns the ack.
async fn send_until_acked(c: &mut Client, to: &str, payload: Value, idem: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        c.send(json!({"type":"chat_message","receiverID":to,"payload":payload,"id":idem,"idem":idem})).await;
        let answer = loop {
            let f = c.recv().await;
            if f["id"] == idem {
                break f;
            }
        };
        if answer["type"] == "ack" {
            return answer;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(std::time::Instant::now() < deadline, "never acked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn idempotent_sends(redis: wsctl::RedisConfig) {
    let (a, b) = (node_on("seam-a", redis.clone(), None).await, node_on("seam-b", redis, None).await);
    let mut alice = a.connect("alice").await;
    let (mut bob_a, mut bob_b) = (a.connect("bob").await, b.connect("bob").await);
    let first = send_until_acked(&mut alice, "bob", json!(1), "k1").await;
    assert_eq!((first["online"].as_bool(), first.get("duplicate")), (Some(true), None), "{first}");
    let again = send_until_acked(&mut alice, "bob", json!(1), "k1").await;
    assert_eq!((again["online"].as_bool(), again["duplicate"].as_bool()), (Some(true), Some(true)), "{again}");
    let other = send_until_acked(&mut alice, "bob", json!(2), "k2").await;
    assert_eq!(other.get("duplicate"), None);
    for bob in [&mut bob_a, &mut bob_b] {
        assert_eq!(bob.recv_chat().await["payload"], 1);
        assert_eq!(bob.recv_chat().await["payload"], 2);
    }
    let (status, answer) = post(b.addr, "/api/publish", json!({"receiverID":"bob","type":"n","payload":3,"idempotency_key":"api-1"})).await;
    assert_eq!((status, answer.get("duplicate")), (200, None), "{answer}");
    let (_, answer) = post(b.addr, "/api/publish", json!({"receiverID":"bob","type":"n","payload":3,"idempotency_key":"api-1"})).await;
    assert_eq!((answer["duplicate"].as_bool(), answer["online"].as_bool()), (Some(true), Some(true)), "{answer}");
    for bob in [&mut bob_a, &mut bob_b] {
        assert_eq!(bob.recv().await["payload"], 3);
        bob.expect_silence(Duration::from_millis(300)).await;
    }
    a.stop().await;
    b.stop().await;
}

/// A send with an idempotency key is delivered once however often it is retried, to receivers
/// on the sender's node and on others, from the socket and from the API.
#[tokio::test]
async fn an_idempotency_key_delivers_once_standalone() {
    let redis = RedisServer::start();
    idempotent_sends(redis.config()).await;
}

#[tokio::test]
async fn an_idempotency_key_delivers_once_cluster() {
    let cluster = RedisCluster::start();
    idempotent_sends(cluster.config()).await;
}

/// The case behind the keys: a send answered `unavailable` because Redis held it past the batch
/// deadline (`CLIENT PAUSE WRITE` holds the routing script) still runs when Redis resumes; its
/// retry with the same key is answered `duplicate` and the receiver gets the message once.
#[tokio::test]
async fn a_retry_of_an_unavailable_send_is_not_delivered_twice() {
    let redis = RedisServer::start();
    let (a, b) = (node("seam-a", &redis, None).await, node("seam-b", &redis, None).await);
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    // One send first, so the routing script is loaded (a held EVALSHA of an unloaded script
    // would fail NOSCRIPT when it ran, and its retry go through the text).
    send_until_acked(&mut alice, "bob", json!("warm"), "warm").await;
    assert_eq!(bob.recv_chat().await["payload"], "warm");
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000", "WRITE"]), "OK");
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":"once","id":"k","idem":"k"})).await;
    let refused = alice.recv().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("unavailable")), "{refused}");
    assert_eq!(bob.recv_chat().await["payload"], "once", "the first copy ran once Redis resumed");
    let ack = send_until_acked(&mut alice, "bob", json!("once"), "k").await;
    assert_eq!(ack["duplicate"], true, "{ack}");
    bob.expect_silence(Duration::from_millis(500)).await;
    a.stop().await;
    b.stop().await;
}

/// A single node (no Redis) keeps the keys itself.
#[tokio::test]
async fn a_single_node_deduplicates_by_key_too() {
    let a = TestNode::start("solo", None).await;
    let mut alice = a.connect("alice").await;
    let mut bob = a.connect("bob").await;
    assert_eq!(send_until_acked(&mut alice, "bob", json!(1), "k").await.get("duplicate"), None);
    assert_eq!(send_until_acked(&mut alice, "bob", json!(1), "k").await["duplicate"], true);
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":1,"id":"bad","idem":""})).await;
    assert_eq!(alice.recv().await["code"], "bad_idem");
    assert_eq!(bob.recv_chat().await["payload"], 1);
    bob.expect_silence(Duration::from_millis(300)).await;
    a.stop().await;
}

async fn idempotent_room_sends(redis: wsctl::RedisConfig) {
    let (a, b) = (node_on("seam-a", redis.clone(), None).await, node_on("seam-b", redis, None).await);
    let mut alice = a.connect("alice").await;
    let (mut here, mut there) = (a.connect("carol").await, b.connect("dave").await);
    for c in [&mut alice, &mut here, &mut there] {
        c.send(json!({"type":"join","room":"lobby","id":"j"})).await;
        assert_eq!(c.recv_ack().await["id"], "j");
    }
    for attempt in 0..2 {
        alice.send(json!({"type":"room_message","room":"lobby","payload":"hi","id":attempt,"idem":"r1"})).await;
        let ack = alice.recv_ack().await;
        assert_eq!(ack.get("duplicate").is_some(), attempt == 1, "{ack}");
    }
    for _ in 0..2 {
        let (status, answer) = post(a.addr, "/api/publish", json!({"room":"lobby","type":"n","payload":"api","idempotency_key":"r1"})).await;
        assert_eq!(status, 200, "{answer}");
    }
    for c in [&mut here, &mut there] {
        assert_eq!(c.recv().await["payload"], "hi");
        assert_eq!(c.recv().await["payload"], "api");
        c.expect_silence(Duration::from_millis(300)).await;
    }
    alice.recv().await; // the API's message; never its own
    alice.expect_silence(Duration::from_millis(300)).await;
    a.stop().await;
    b.stop().await;
}

/// A room message with an idempotency key reaches every member once, on the sender's node and
/// others, never the sending connection; a retry is acked `duplicate`.
#[tokio::test]
async fn a_room_idempotency_key_delivers_once_standalone() {
    let redis = RedisServer::start();
    idempotent_room_sends(redis.config()).await;
}

#[tokio::test]
async fn a_room_idempotency_key_delivers_once_cluster() {
    let cluster = RedisCluster::start();
    idempotent_room_sends(cluster.config()).await;
}
