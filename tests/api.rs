//! The HTTP API for backends (docs/api.md) on real Redis, with real WebSocket clients receiving
//! what it publishes.

mod support;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::*;
use wsctl::ServerConfig;

const KEY: &str = "s3cret-key";

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    http_json(addr, "POST", path, Some(KEY), &body.to_string()).await
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    http_json(addr, "GET", path, Some(KEY), "").await
}

async fn node(id: &str, redis: Option<wsctl::RedisConfig>) -> TestNode {
    TestNode::start_config(ServerConfig { redis, limits: test_limits(), api_key: Some(KEY.into()), ..ServerConfig::embedded(id) }).await
}

#[tokio::test]
async fn the_key_is_required_and_without_one_the_api_is_off() {
    let on = node("node-a", None).await;
    let body = json!({"receiverID":"bob","type":"notification","payload":1}).to_string();
    for key in [None, Some("wrong"), Some("s3cret-ke"), Some("s3cret-key2")] {
        let (status, answer) = http_json(on.addr, "POST", "/api/publish", key, &body).await;
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(answer["error"], "unauthorized");
    }
    assert_eq!(http_json(on.addr, "GET", "/api/presence/bob", None, "").await.0, 401);
    assert_eq!(http_json(on.addr, "POST", "/api/publish", Some(KEY), &body).await.0, 200);
    let off = TestNode::start("node-b", None).await;
    assert_eq!(http_json(off.addr, "POST", "/api/publish", Some(KEY), &body).await.0, 404);
    assert_eq!(http_json(off.addr, "GET", "/api/presence/bob", Some(KEY), "").await.0, 404);
    on.stop().await;
    off.stop().await;
}

async fn publish_to_other_nodes(config: wsctl::RedisConfig) {
    let a = node("node-a", Some(config.clone())).await;
    let b = node("node-b", Some(config)).await;
    let mut bob = b.connect("bob").await;
    let mut carol = b.connect("carol").await;
    carol.send(json!({"type":"join","room":"quiz","id":1})).await;
    assert_eq!(carol.recv().await["type"], "ack");

    let (status, answer) = post(a.addr, "/api/publish", json!({"receiverID":"bob","type":"quiz_ready","payload":{"q":1}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"receiverID":"bob","online":true,"local":0,"nodes":1}));
    let got = bob.recv().await;
    assert_eq!((got["type"].as_str(), got["senderId"].as_str(), &got["payload"]), (Some("quiz_ready"), Some("server"), &json!({"q":1})));

    let (status, answer) = post(a.addr, "/api/publish", json!({"room":"quiz","type":"question","payload":"2+2?","senderId":"quizmaster"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"room":"quiz","local":0,"nodes":1}));
    let got = carol.recv().await;
    assert_eq!(got, json!({"type":"question","room":"quiz","payload":"2+2?","senderId":"quizmaster","timestamp":got["timestamp"]}));

    let (_, answer) = post(a.addr, "/api/publish", json!({"receiverID":"nobody","type":"notification"})).await;
    assert_eq!(answer["online"], false);

    // A batch: answered in order, a bad message failing alone.
    let batch = json!({"messages":[
        {"receiverID":"bob","type":"n","payload":1},
        {"receiverID":"bob","type":"ack","payload":2},
        {"room":"quiz","type":"n","payload":3},
        {"receiverID":"bob","type":"n","payload":4},
    ]});
    let (status, answer) = post(a.addr, "/api/publish/batch", batch).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["online"], true);
    assert_eq!(results[1]["error"], "forbidden_type");
    assert_eq!(results[2]["nodes"], 1);
    assert_eq!(results[3]["online"], true);
    assert_eq!(bob.recv().await["payload"], 1);
    assert_eq!(bob.recv().await["payload"], 4);
    assert_eq!(carol.recv().await["payload"], 3);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn publish_api_reaches_a_user_and_a_room_on_another_node_on_standalone() {
    let redis = RedisServer::start();
    publish_to_other_nodes(redis.config()).await;
}

#[tokio::test]
async fn publish_api_reaches_a_user_and_a_room_on_another_node_on_cluster() {
    let cluster = RedisCluster::start();
    publish_to_other_nodes(cluster.config()).await;
}

#[tokio::test]
async fn presence_and_room_counts_follow_connects_and_disconnects() {
    let redis = RedisServer::start();
    let a = node("node-a", Some(redis.config())).await;
    let b = node("node-b", Some(redis.config())).await;
    let (_, p) = get(a.addr, "/api/presence/bob").await;
    assert_eq!(p, json!({"user":"bob","online":false,"nodes":[]}));
    let bob_a1 = a.connect("bob").await;
    let bob_a2 = a.connect("bob").await;
    let mut bob_b = b.connect("bob").await;
    let (status, p) = get(a.addr, "/api/presence/bob").await;
    assert_eq!(status, 200);
    // Each node's count as it wrote it to user_conns:bob (written before the connect's 101).
    assert_eq!(p, json!({"user":"bob","online":true,"nodes":[{"server":"node-a","connections":2},{"server":"node-b","connections":1}]}));
    let (_, p) = get(b.addr, "/api/presence/bob").await;
    assert_eq!(p["nodes"], json!([{"server":"node-b","connections":1},{"server":"node-a","connections":2}]));
    // A node that writes no counts (a Go node: route, presence and lease only) shows null.
    redis.cli(&["SADD", "user_servers:bob", "go-node"]);
    redis.cli(&["SET", "user_online:bob:go-node", "1", "EX", "60"]);
    redis.cli(&["SET", "server_alive:go-node", "{}", "EX", "60"]);
    let (_, p) = get(b.addr, "/api/presence/bob").await;
    assert_eq!(p["nodes"], json!([{"server":"node-b","connections":1},{"server":"go-node","connections":null},{"server":"node-a","connections":2}]));
    redis.cli(&["SREM", "user_servers:bob", "go-node"]);
    bob_a1.close().await;
    let addr = b.addr;
    eventually(RECV_TIMEOUT, "node-a's count down to 1", || async move {
        get(addr, "/api/presence/bob").await.1["nodes"] == json!([{"server":"node-b","connections":1},{"server":"node-a","connections":1}])
    })
    .await;
    bob_a2.close().await;
    let addr = a.addr;
    eventually(RECV_TIMEOUT, "node-a gone from bob's presence", || async move {
        get(addr, "/api/presence/bob").await.1["nodes"] == json!([{"server":"node-b","connections":1}])
    })
    .await;
    assert_eq!(redis.cli(&["HKEYS", "user_conns:bob"]).trim(), "node-b", "node-a's field removed with its route");

    // Rooms: two members on node-b, one on node-a.
    bob_b.send(json!({"type":"join","room":"lobby","id":1})).await;
    assert_eq!(bob_b.recv().await["type"], "ack");
    let mut x = b.connect("x").await;
    x.send(json!({"type":"join","room":"lobby","id":1})).await;
    assert_eq!(x.recv().await["type"], "ack");
    let mut y = a.connect("y").await;
    y.send(json!({"type":"join","room":"lobby","id":1})).await;
    assert_eq!(y.recv().await["type"], "ack");
    eventually(RECV_TIMEOUT, "room counts from both nodes", || async move {
        get(addr, "/api/rooms/lobby").await.1
            == json!({"room":"lobby","members":3,"nodes":[{"server":"node-a","members":1},{"server":"node-b","members":2}]})
    })
    .await;
    x.close().await;
    eventually(RECV_TIMEOUT, "x's disconnect counted", || async move { get(addr, "/api/rooms/lobby").await.1["members"] == 2 }).await;
    assert_eq!(get(a.addr, "/api/rooms/bad%20name").await.0, 400);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn each_api_limit_is_refused_with_a_reason() {
    let a = node("node-a", None).await;
    let publish = |body: String| async move { http_json(a.addr, "POST", "/api/publish", Some(KEY), &body).await };
    let (status, answer) = publish("{not json".into()).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("bad_json")));
    let big = json!({"receiverID":"bob","type":"n","payload":"x".repeat(wsctl::server::api::API_MAX_BODY)}).to_string();
    let (status, answer) = publish(big).await;
    assert_eq!((status, answer["error"].as_str()), (413, Some("too_large")));
    for forbidden in ["ack", "error", "recovery"] {
        let (status, answer) = publish(json!({"receiverID":"bob","type":forbidden}).to_string()).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("forbidden_type")));
    }
    let (status, answer) = publish(json!({"room":"a b","type":"n"}).to_string()).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("bad_room")));
    let (status, answer) = publish(json!({"type":"n"}).to_string()).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("missing_target")));
    let (status, answer) = publish(json!({"receiverID":"bob","room":"r","type":"n"}).to_string()).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("missing_target")));
    let many: Vec<Value> = (0..=wsctl::server::api::API_MAX_BATCH).map(|i| json!({"receiverID":"bob","type":"n","payload":i})).collect();
    let (status, answer) = post(a.addr, "/api/publish/batch", json!({ "messages": many })).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("too_many_messages")));
    a.stop().await;
}

/// The socket path's id rules (`protocol::check_user_id`: 1-256 bytes, no control characters)
/// hold for the API's `receiverID` and `senderId` too, one message or in a batch; nothing is
/// delivered for a refused message.
#[tokio::test]
async fn api_receiver_and_sender_ids_follow_the_socket_rules() {
    let a = node("node-a", None).await;
    let mut bob = a.connect("bob").await;
    let long = "x".repeat(wsctl::protocol::MAX_USER_ID + 1);
    let bad_receivers = [long.as_str(), "bob\u{1b}[31m", "bob\n", "bob\u{7f}", "bob\u{85}"];
    for bad in bad_receivers {
        let (status, answer) = post(a.addr, "/api/publish", json!({"receiverID":bad,"type":"n","payload":"bad"})).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("bad_receiver")), "{bad:?}: {answer}");
        let (status, answer) = post(a.addr, "/api/publish", json!({"receiverId":bad,"type":"n","payload":"bad"})).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("bad_receiver")), "receiverId {bad:?}: {answer}");
        let (status, answer) = post(a.addr, "/api/publish", json!({"receiverID":"bob","senderId":bad,"type":"n","payload":"bad"})).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("bad_sender")), "senderId {bad:?}: {answer}");
        let (status, answer) = post(a.addr, "/api/publish", json!({"room":"lobby","senderId":bad,"type":"n","payload":"bad"})).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("bad_sender")), "room senderId {bad:?}: {answer}");
    }
    let batch = json!({"messages":[
        {"receiverID":"bob","type":"n","payload":1},
        {"receiverID":"bob\u{0}","type":"n","payload":2},
        {"receiverID":"bob","senderId":long,"type":"n","payload":3},
        {"receiverID":"bob","senderId":"billing","type":"n","payload":4},
    ]});
    let (status, answer) = post(a.addr, "/api/publish/batch", batch).await;
    assert_eq!(status, 200, "{answer}");
    let errors: Vec<&str> = answer["results"].as_array().unwrap().iter().map(|r| r["error"].as_str().unwrap_or("ok")).collect();
    assert_eq!(errors, ["ok", "bad_receiver", "bad_sender", "ok"]);
    // A 256-byte id is still fine. Bob got exactly the accepted messages, in order: nothing refused
    // above (all sent before the batch) came first.
    let (status, answer) = post(a.addr, "/api/publish", json!({"receiverID":"x".repeat(256),"senderId":"y".repeat(256),"type":"n"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(bob.recv().await["payload"], 1);
    let last = bob.recv().await;
    assert_eq!((&last["payload"], last["senderId"].as_str()), (&json!(4), Some("billing")));
    a.stop().await;
}
