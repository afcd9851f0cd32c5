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
