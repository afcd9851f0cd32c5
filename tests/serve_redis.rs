//! `wsctl serve` nodes sharing a real standalone Redis.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn cross_node_delivery_on_standalone() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.send(json!({"type":"chat_message","receiverId":"bob","payload":{"n":1},"id":7})).await;
    let got = bob.recv().await;
    assert_eq!(got["type"], "chat_message");
    assert_eq!(got["payload"], json!({"n":1}));
    assert_eq!(got["senderId"], "alice");
    assert_eq!(got["receiverID"], "bob");
    assert_eq!(alice.recv().await, json!({"type":"ack","id":7,"online":true}));
    alice.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(redis.cli(&["SMEMBERS", "user_servers:bob"]), "node-b");
    assert_eq!(redis.cli(&["GET", "user_online:bob:node-b"]), "1");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_connections_here_one_there_all_receive_and_closing_one_keeps_the_route() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut sender = a.connect("carol").await;
    let bob_a1 = a.connect("bob").await;
    let mut bob_a2 = a.connect("bob").await;
    let mut bob_b = b.connect("bob").await;
    let mut members: Vec<String> = redis.cli(&["SMEMBERS", "user_servers:bob"]).lines().map(String::from).collect();
    members.sort();
    assert_eq!(members, ["node-a", "node-b"]);

    let mut bob_a1 = bob_a1;
    sender.send(chat("bob", json!(1))).await;
    for c in [&mut bob_a1, &mut bob_a2, &mut bob_b] {
        assert_eq!(c.recv().await["payload"], 1);
    }
    // The first of bob's two connections on node-a goes: node-a keeps its route (the Go server
    // removed it on every disconnect, cutting off the user's other connections).
    bob_a1.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(redis.cli(&["SMEMBERS", "user_servers:bob"]).contains("node-a"));
    assert_eq!(redis.cli(&["EXISTS", "user_online:bob:node-a"]), "1");
    // Sent from node-b this time, so node-a's copy can only have come through Redis.
    let mut sender_b = b.connect("dave").await;
    sender_b.send(chat("bob", json!(2))).await;
    assert_eq!(bob_a2.recv().await["payload"], 2);
    assert_eq!(bob_b.recv().await["payload"], 2);
    // The last one on node-a goes: the route and presence key go with it.
    bob_a2.close().await;
    let r = &redis;
    eventually(RECV_TIMEOUT, "node-a's route removed", || async move {
        r.cli(&["SMEMBERS", "user_servers:bob"]) == "node-b" && r.cli(&["EXISTS", "user_online:bob:node-a"]) == "0"
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_stale_route_is_removed_on_send() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut bob = b.connect("bob").await;
    // A node that died without cleaning up: its route entry stays, its user_online key is gone.
    redis.cli(&["SADD", "user_servers:bob", "node-dead"]);
    redis.cli(&["SADD", "user_servers:ghost", "node-dead"]);
    let mut alice = a.connect("alice").await;
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":"hi","id":1})).await;
    assert_eq!(alice.recv().await, json!({"type":"ack","id":1,"online":true}));
    assert_eq!(bob.recv().await["payload"], "hi");
    assert_eq!(redis.cli(&["SMEMBERS", "user_servers:bob"]), "node-b", "the stale entry is gone, the live one stays");
    alice.send(json!({"type":"chat_message","receiverID":"ghost","payload":"hi","id":2})).await;
    assert_eq!(alice.recv().await, json!({"type":"ack","id":2,"online":false}));
    assert_eq!(redis.cli(&["EXISTS", "user_servers:ghost"]), "0");
    assert_eq!(a.metrics.undeliverable.get(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn heartbeats_refresh_presence_and_the_node_keeps_a_lease() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let mut bob = a.connect("bob").await;
    let lease: serde_json::Value = serde_json::from_str(&redis.cli(&["GET", "server_alive:node-a"])).unwrap();
    assert_eq!(lease["address"], a.addr.to_string());
    assert!(lease["started_at"].as_u64().unwrap() > 0);
    let ttl: i64 = redis.cli(&["TTL", "server_alive:node-a"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 15, "lease TTL {ttl}");
    redis.cli(&["EXPIRE", "user_online:bob:node-a", "5"]);
    bob.send(json!({"type":"heartbeat","id":"hb"})).await;
    assert_eq!(bob.recv().await["type"], "ack");
    let r = &redis;
    eventually(RECV_TIMEOUT, "user_online TTL back near 60 s", || async move {
        r.cli(&["TTL", "user_online:bob:node-a"]).parse::<i64>().unwrap() > 50
    })
    .await;
    a.stop().await;
}

#[tokio::test]
async fn drain_removes_this_nodes_routes_and_lease_and_nothing_queued_is_lost() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut bob = b.connect("bob").await;
    let _bob_a = a.connect("bob").await;
    let _carol = b.connect("carol").await;
    let mut alice = a.connect("alice").await;
    const N: u64 = 300;
    for n in 0..N {
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":n,"id":n})).await;
    }
    for n in 0..N {
        assert_eq!(alice.recv().await, json!({"type":"ack","id":n,"online":true}));
    }
    // Every message reached node-b's queue for bob (acked means published); drain node-b now.
    let b_metrics = b.metrics.clone();
    eventually(RECV_TIMEOUT, "node-b queued all", || {
        let m = b_metrics.clone();
        async move { m.messages_delivered.get() >= N }
    })
    .await;
    b.stop().await;
    let (frames, closed) = bob.until_closed(RECV_TIMEOUT).await;
    let got: Vec<u64> = frames.iter().map(|f| f["payload"].as_u64().unwrap()).collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(closed, Closed::Code(1012));
    assert_eq!(redis.cli(&["SMEMBERS", "user_servers:bob"]), "node-a");
    assert_eq!(redis.cli(&["EXISTS", "user_servers:carol"]), "0");
    assert_eq!(redis.cli(&["EXISTS", "user_online:bob:node-b"]), "0");
    assert_eq!(redis.cli(&["EXISTS", "server_alive:node-b"]), "0");
    assert_eq!(redis.cli(&["EXISTS", "server_alive:node-a"]), "1");
    a.stop().await;
}

#[tokio::test]
async fn redis_killed_and_restarted_routes_come_back_and_delivery_resumes() {
    let mut redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut alice = a.connect("alice").await;
    let mut alice_friend = a.connect("frank").await;
    let mut bob = b.connect("bob").await;
    alice.send(chat("bob", json!("before"))).await;
    assert_eq!(bob.recv().await["payload"], "before");

    redis.kill();
    let addr = a.addr;
    eventually(Duration::from_secs(10), "/ready is 503 while Redis is down", || async move {
        http_get(addr, "/ready").await.map(|r| r.0).unwrap_or(0) == 503
    })
    .await;
    assert_eq!(http_get(a.addr, "/health").await.unwrap().0, 200, "/health stays 200");
    // Local delivery keeps working; a remote send answers that Redis is unavailable.
    alice.send(json!({"type":"chat_message","receiverID":"frank","payload":"local","id":"l"})).await;
    assert_eq!(alice_friend.recv().await["payload"], "local");
    let ack = alice.recv().await;
    assert_eq!(ack["id"], "l");
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":"lost","id":"r"})).await;
    let err = alice.recv().await;
    assert_eq!((err["type"].as_str(), err["code"].as_str(), &err["id"]), (Some("error"), Some("unavailable"), &json!("r")));

    // Redis comes back empty: both nodes reconnect, re-subscribe and re-register their routes.
    redis.restart();
    let r = &redis;
    eventually(Duration::from_secs(20), "routes re-registered", || async move {
        r.cli(&["SMEMBERS", "user_servers:bob"]) == "node-b"
            && r.cli(&["SMEMBERS", "user_servers:alice"]) == "node-a"
            && r.cli(&["EXISTS", "server_alive:node-b"]) == "1"
    })
    .await;
    eventually(Duration::from_secs(10), "/ready is 200 again", || async move {
        http_get(addr, "/ready").await.map(|r| r.0).unwrap_or(0) == 200
    })
    .await;
    // Delivery resumes (retry until the subscriber is back too).
    let mut n = 0;
    let got = loop {
        n += 1;
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":n,"id":n})).await;
        let ack = alice.recv().await;
        if ack["type"] == "ack" {
            if let Some(f) = bob.try_recv(Duration::from_millis(500)).await {
                break f;
            }
        }
        assert!(n < 40, "delivery did not resume: last answer {ack}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(got["payload"], n);
    assert!(a.metrics.redis_reconnects.get() >= 1);
    a.stop().await;
    b.stop().await;
}

/// The routing script is run by hash; a Redis that lost it (SCRIPT FLUSH here, a restart or a
/// failover in life) answers NOSCRIPT, and the node loads it again within the same send.
#[tokio::test]
async fn a_flushed_script_cache_costs_no_message() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":"before","id":1})).await;
    assert_eq!(bob.recv().await["payload"], "before");
    assert_eq!(alice.recv().await, json!({"type":"ack","id":1,"online":true}));

    let noscripts = || {
        let stats = redis.cli(&["INFO", "errorstats"]);
        let count = stats.lines().find_map(|l| l.strip_prefix("errorstat_NOSCRIPT:count="));
        count.map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    let before = noscripts();
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":"after","id":2})).await;
    assert_eq!(bob.recv().await["payload"], "after");
    assert_eq!(alice.recv().await, json!({"type":"ack","id":2,"online":true}), "not `unavailable`");
    assert_eq!(noscripts(), before + 1, "the send after the flush met NOSCRIPT");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn acl_user_and_password_are_used_and_a_wrong_password_fails_clearly() {
    let redis = RedisServer::start();
    assert_eq!(redis.cli(&["ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all"]), "OK");
    let url = format!("redis://app:s3cret@127.0.0.1:{}", redis.port);
    let a = TestNode::start("node-acl", Some(wsctl::RedisConfig { url, ..Default::default() })).await;
    let _bob = a.connect("bob").await;
    assert_eq!(redis.cli(&["SMEMBERS", "user_servers:bob"]), "node-acl");
    // Credentials given apart from the URL work too.
    let split = wsctl::RedisConfig {
        url: redis.url(),
        username: Some("app".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let b = TestNode::start("node-acl-2", Some(split)).await;
    b.stop().await;

    let bad = wsctl::RedisConfig { url: format!("redis://app:nope@127.0.0.1:{}", redis.port), ..Default::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = wsctl::serve(listener, wsctl::ServerConfig { redis: Some(bad), ..wsctl::ServerConfig::embedded("x") }, Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach Redis") && err.contains("app:***@"), "{err}");
    assert!(!err.contains("nope"), "the password never appears in errors: {err}");
    a.stop().await;
}

/// Starts `serve` for `id` on `redis` and returns its error, or fails if it came up.
async fn start_refused(id: &str, redis: &RedisServer) -> wsctl::ServerError {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = wsctl::ServerConfig { redis: Some(redis.config()), limits: test_limits(), ..wsctl::ServerConfig::embedded(id) };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = wsctl::server::serve(listener, config, shutdown.clone());
    match tokio::time::timeout(RECV_TIMEOUT, run).await {
        Ok(Err(e)) => e,
        Ok(Ok(())) => panic!("serve for {id} returned Ok without a shutdown"),
        Err(_) => {
            shutdown.cancel();
            panic!("a second node with id {id} started while the first holds its lease")
        }
    }
}

#[tokio::test]
async fn a_server_id_whose_lease_is_held_is_refused_at_start() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-x", Some(redis.config())).await;
    let lease_before = redis.cli(&["GET", "server_alive:node-x"]);
    let err = start_refused("node-x", &redis).await.to_string();
    assert!(err.contains("\"node-x\"") && err.contains("another node holds its lease server_alive:node-x"), "{err}");
    assert!(err.contains("expires in "), "{err}");
    // The refused node touched nothing: the first one's lease is its own, it still routes.
    assert_eq!(redis.cli(&["GET", "server_alive:node-x"]), lease_before);
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut bob = a.connect("bob").await;
    let mut alice = b.connect("alice").await;
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":1,"id":1})).await;
    assert_eq!(alice.recv().await["online"], true);
    assert_eq!(bob.recv().await["payload"], 1);
    // A clean drain deletes the lease: the same id starts again at once.
    a.stop().await;
    let again = TestNode::start("node-x", Some(redis.config())).await;
    again.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_server_id_starts_again_once_a_dead_nodes_lease_expired() {
    let redis = RedisServer::start();
    // What a node killed without a drain leaves: its lease, running out.
    redis.cli(&["SET", "server_alive:node-k", "{}", "PX", "1500"]);
    let err = start_refused("node-k", &redis).await.to_string();
    assert!(err.contains("server_alive:node-k") && err.contains("expires in "), "{err}");
    eventually(RECV_TIMEOUT, "the dead node's lease expired", || async { redis.cli(&["EXISTS", "server_alive:node-k"]) == "0" }).await;
    let k = TestNode::start("node-k", Some(redis.config())).await;
    let ttl: i64 = redis.cli(&["TTL", "server_alive:node-k"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 15, "the new node's own lease, with its TTL: {ttl}");
    k.stop().await;
}

#[test]
fn the_binary_refuses_a_server_id_in_use_with_exit_code_1() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "server_alive:node-y", "{}", "EX", "60"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--server-id", "node-y"])
        .env("REDIS_URI", redis.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wsctl runs");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RECV_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second node-y started while the first holds its lease");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server id \"node-y\" is in use: another node holds its lease server_alive:node-y"), "{stderr}");
}
