//! `wsctl serve` nodes on a real 3-master Redis Cluster, with sharded and classic pub/sub.

mod support;

use serde_json::json;
use support::*;
use wsctl::PubsubMode;

async fn cross_node_on_cluster(pubsub: PubsubMode) {
    let cluster = RedisCluster::start();
    let config = wsctl::RedisConfig { pubsub, ..cluster.config() };
    let a = TestNode::start("node-a", Some(config.clone())).await;
    let b = TestNode::start("node-b", Some(config.clone())).await;
    let c = TestNode::start("node-c", Some(config)).await;
    // The node subscribed with the command family asked for.
    let (sub_cmd, other) = match pubsub {
        PubsubMode::Sharded => ("SHARDCHANNELS", "CHANNELS"),
        PubsubMode::Classic => ("CHANNELS", "SHARDCHANNELS"),
    };
    let listed = |cmd: &str| cluster.nodes.iter().map(|n| n.cli(&["PUBSUB", cmd])).collect::<Vec<_>>().join("\n");
    assert!(listed(sub_cmd).contains("server:node-a"), "PUBSUB {sub_cmd}: {}", listed(sub_cmd));
    assert!(!listed(other).contains("server:node-a"));
    // Users spread over the cluster's slots; each sends to a user on another node.
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    let nodes = [&a, &b, &c];
    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        clients.push(nodes[i % 3].connect(u).await);
    }
    // Plus a second connection for user0 on node-b: both of user0's connections receive.
    let mut user0_b = b.connect("user0").await;
    for i in 0..users.len() {
        let to = &users[(i + 1) % users.len()];
        clients[i].send(json!({"type":"chat_message","receiverID":to,"payload":i,"id":i})).await;
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let from = (i + users.len() - 1) % users.len();
        let got = client.recv_chat().await;
        assert_eq!(got["senderId"], users[from]);
        assert_eq!(got["payload"], from);
    }
    assert_eq!(user0_b.recv().await["payload"], users.len() - 1);
    for (i, cl) in clients.iter_mut().enumerate() {
        assert_eq!(cl.recv_ack().await, json!({"type":"ack","id":i,"online":true}));
    }
    // Stale route on a Cluster: removed on send.
    let port = cluster.nodes[0].port;
    let out = std::process::Command::new("redis-cli")
        .args(["-c", "-p", &port.to_string(), "SADD", "user_servers:user1", "node-dead"])
        .output()
        .unwrap();
    assert!(out.status.success());
    clients[0].send(chat("user1", json!("after"))).await;
    assert_eq!(clients[1].recv_chat().await["payload"], "after");
    let members = std::process::Command::new("redis-cli").args(["-c", "-p", &port.to_string(), "SMEMBERS", "user_servers:user1"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&members.stdout).trim(), "node-b");
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn cross_node_delivery_on_cluster_with_sharded_pubsub() {
    cross_node_on_cluster(PubsubMode::Sharded).await;
}

#[tokio::test]
async fn cross_node_delivery_on_cluster_with_classic_pubsub() {
    cross_node_on_cluster(PubsubMode::Classic).await;
}
