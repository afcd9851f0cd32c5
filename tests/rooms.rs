//! Rooms (docs/rooms.md): join, room_message and leave across nodes on real Redis (standalone and
//! a 3-master Cluster, sharded and classic pub/sub), against real WebSocket clients.

mod support;

use serde_json::{json, Value};
use support::*;
use wsctl::{PubsubMode, RoomLimits};

async fn join(c: &mut Client, room: &str, id: u64) {
    c.send(json!({"type":"join","room":room,"id":id})).await;
    assert_eq!(c.recv_ack().await, json!({"type":"ack","id":id}));
}

async fn recv_room(c: &mut Client) -> Value {
    let f = c.recv().await;
    assert_eq!(f["type"], "room_message", "{f}");
    f
}

/// Every node's `PUBSUB <cmd> room:*`, joined.
fn listed(nodes: &[&RedisServer], cmd: &str) -> String {
    nodes.iter().map(|n| n.cli(&["PUBSUB", cmd, "room:*"])).collect::<Vec<_>>().join("\n")
}

/// Two nodes on the same Redis: delivery to every member on both, sender excluded, ack counts;
/// members that leave or disconnect get nothing more.
/// `exact`: whether the ack's `nodes` is exact (not for classic PUBLISH on a Cluster, which
/// counts only the subscribers on the shard it hit).
async fn rooms_across_two_nodes(config: wsctl::RedisConfig, redis: &[&RedisServer], sub_cmd: &str, exact: bool) {
    let ack = |id: &str, members: u64, nodes: u64| json!({"type":"ack","id":id,"members":members,"nodes":nodes});
    let check = |got: Value, want: Value| {
        if exact {
            assert_eq!(got, want);
        } else {
            assert_eq!(got["members"], want["members"], "{got}");
        }
    };
    let a = TestNode::start("node-a", Some(config.clone())).await;
    let b = TestNode::start("node-b", Some(config)).await;
    let mut alice = a.connect("alice").await;
    let mut carol = a.connect("carol").await;
    let mut bob = b.connect("bob").await;
    let mut dave = b.connect("dave").await;
    for (i, c) in [&mut alice, &mut carol, &mut bob, &mut dave].into_iter().enumerate() {
        join(c, "lobby", i as u64).await;
    }
    assert!(listed(redis, sub_cmd).contains("room:lobby"), "PUBSUB {sub_cmd}: {}", listed(redis, sub_cmd));

    alice.send(json!({"type":"room_message","room":"lobby","payload":{"n":1},"id":"m1"})).await;
    for c in [&mut carol, &mut bob, &mut dave] {
        let got = recv_room(c).await;
        assert_eq!(got["room"], "lobby");
        assert_eq!(got["payload"], json!({"n":1}));
        assert_eq!(got["senderId"], "alice");
        assert!(got["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    // One other member here (carol), one other node subscribed (node-b).
    check(alice.recv().await, ack("m1", 1, 1));
    // The sender is excluded: the next frame alice gets is bob's message, not her own.
    bob.send(json!({"type":"room_message","room":"lobby","payload":"from bob"})).await;
    assert_eq!(recv_room(&mut alice).await["payload"], "from bob");
    for c in [&mut carol, &mut dave] {
        assert_eq!(recv_room(c).await["payload"], "from bob");
    }

    // carol leaves (node-a keeps alice), bob leaves (node-b keeps dave).
    carol.send(json!({"type":"leave","room":"lobby","id":"l"})).await;
    assert_eq!(carol.recv().await, json!({"type":"ack","id":"l"}));
    bob.send(json!({"type":"leave","room":"lobby","id":"l"})).await;
    assert_eq!(bob.recv().await, json!({"type":"ack","id":"l"}));
    alice.send(json!({"type":"room_message","room":"lobby","payload":2,"id":"m2"})).await;
    assert_eq!(recv_room(&mut dave).await["payload"], 2);
    check(alice.recv().await, ack("m2", 0, 1));
    // Had they still been members, the room message would be ahead of these chats in their queues.
    alice.send(chat("carol", json!("after"))).await;
    assert_eq!(carol.recv().await["payload"], "after");
    dave.send(chat("bob", json!("after"))).await;
    assert_eq!(bob.recv().await["payload"], "after");

    // dave disconnects: node-b has no member left and unsubscribes.
    dave.close().await;
    let r = redis.to_vec();
    eventually(RECV_TIMEOUT, "node-b unsubscribed", || {
        let r = r.clone();
        async move { numsub(&r, sub_cmd) == 1 }
    })
    .await;
    alice.send(json!({"type":"room_message","room":"lobby","payload":3,"id":"m3"})).await;
    check(alice.recv().await, ack("m3", 0, 0));
    a.stop().await;
    b.stop().await;
}

/// Subscribers of `room:lobby` across the Redis nodes (each node's subscriber connection counts 1).
fn numsub(nodes: &[&RedisServer], sub_cmd: &str) -> usize {
    let cmd = if sub_cmd == "SHARDCHANNELS" { "SHARDNUMSUB" } else { "NUMSUB" };
    let per_node: Vec<usize> =
        nodes.iter().map(|n| n.cli(&["PUBSUB", cmd, "room:lobby"]).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)).collect();
    // Classic subscriptions are per Redis node; a Cluster propagates messages to all of them.
    per_node.iter().sum()
}

#[tokio::test]
async fn rooms_across_two_nodes_on_standalone() {
    let redis = RedisServer::start();
    rooms_across_two_nodes(redis.config(), &[&redis], "CHANNELS", true).await;
}

#[tokio::test]
async fn rooms_across_two_nodes_on_cluster_with_sharded_pubsub() {
    let cluster = RedisCluster::start();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    rooms_across_two_nodes(cluster.config(), &nodes, "SHARDCHANNELS", true).await;
}

#[tokio::test]
async fn rooms_across_two_nodes_on_cluster_with_classic_pubsub() {
    let cluster = RedisCluster::start();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    let config = wsctl::RedisConfig { pubsub: PubsubMode::Classic, ..cluster.config() };
    rooms_across_two_nodes(config, &nodes, "CHANNELS", false).await;
}

#[tokio::test]
async fn on_a_cluster_the_sharded_channel_exists_while_members_exist() {
    let cluster = RedisCluster::start();
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    let a = TestNode::start("node-a", Some(cluster.config())).await;
    let mut alice = a.connect("alice").await;
    let mut bob = a.connect("bob").await;
    join(&mut alice, "quiz:42", 1).await;
    join(&mut bob, "quiz:42", 1).await;
    // Exactly one shard owns the channel; it lists it.
    let owners = nodes.iter().filter(|n| n.cli(&["PUBSUB", "SHARDCHANNELS", "room:*"]) == "room:quiz:42").count();
    assert_eq!(owners, 1, "{}", listed(&nodes, "SHARDCHANNELS"));
    assert!(!listed(&nodes, "CHANNELS").contains("room:"), "classic channels used on a sharded Cluster");
    alice.send(json!({"type":"leave","room":"quiz:42","id":2})).await;
    assert_eq!(alice.recv().await["type"], "ack");
    assert!(listed(&nodes, "SHARDCHANNELS").contains("room:quiz:42"), "bob is still a member");
    bob.close().await;
    let n = &nodes;
    eventually(RECV_TIMEOUT, "room channel gone after the last member", || async move {
        !listed(n, "SHARDCHANNELS").contains("room:")
    })
    .await;
    a.stop().await;
}

#[tokio::test]
async fn a_node_resubscribes_its_rooms_after_a_redis_restart() {
    let mut redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    join(&mut alice, "lobby", 1).await;
    join(&mut bob, "lobby", 1).await;
    redis.restart();
    let r = &redis;
    eventually(std::time::Duration::from_secs(15), "both nodes re-subscribed room:lobby", || async move {
        r.cli(&["PUBSUB", "NUMSUB", "room:lobby"]).lines().nth(1) == Some("2")
    })
    .await;
    eventually(std::time::Duration::from_secs(15), "member counts rewritten", || async move {
        r.cli(&["HLEN", "room_members:lobby"]) == "2"
    })
    .await;
    for n in [&a, &b] {
        let addr = n.addr;
        eventually(std::time::Duration::from_secs(15), "node ready again", || async move {
            http_get(addr, "/ready").await.is_ok_and(|(s, _)| s == 200)
        })
        .await;
    }
    // Ready is not "Redis answers every send yet": until its probe sees Redis, a node that was
    // degraded answers remote sends `unavailable` at once (nothing published). Retry as a client
    // would, until a send is acked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        alice.send(json!({"type":"room_message","room":"lobby","payload":"back","id":9})).await;
        let answer = alice.recv().await;
        if answer["type"] == "ack" {
            assert_eq!(answer, json!({"type":"ack","id":9,"members":0,"nodes":1}));
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(std::time::Instant::now() < deadline, "sends never went through after the restart");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(recv_room(&mut bob).await["payload"], "back");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn room_member_counts_are_kept_per_node_and_removed_on_drain() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let mut c1 = a.connect("u1").await;
    let mut c2 = a.connect("u2").await;
    join(&mut c1, "lobby", 1).await;
    join(&mut c2, "lobby", 1).await;
    let r = &redis;
    eventually(RECV_TIMEOUT, "count 2", || async move { r.cli(&["HGET", "room_members:lobby", "node-a"]) == "2" }).await;
    c2.close().await;
    eventually(RECV_TIMEOUT, "count 1", || async move { r.cli(&["HGET", "room_members:lobby", "node-a"]) == "1" }).await;
    a.stop().await;
    assert_eq!(redis.cli(&["EXISTS", "room_members:lobby"]), "0");
}

async fn expect_error(c: &mut Client, frame: Value, code: &str) {
    c.send(frame).await;
    let got = c.recv().await;
    assert_eq!(got["type"], "error", "{got}");
    assert_eq!(got["code"], code, "{got}");
}

#[tokio::test]
async fn each_room_limit_has_its_error_code() {
    let limits = wsctl::Limits { rooms: RoomLimits { rooms_per_conn: 2, members_per_room: 2 }, ..test_limits() };
    let a = TestNode::start_with("node-a", None, limits).await;
    let mut c = a.connect("alice").await;
    let long = "r".repeat(wsctl::rooms::MAX_ROOM_NAME + 1);
    expect_error(&mut c, json!({"type":"join","id":1}), "bad_room").await;
    expect_error(&mut c, json!({"type":"join","room":long,"id":1}), "bad_room").await;
    expect_error(&mut c, json!({"type":"join","room":"has space","id":1}), "bad_room").await;
    expect_error(&mut c, json!({"type":"room_message","room":"lobby","payload":1,"id":2}), "not_member").await;
    expect_error(&mut c, json!({"type":"leave","room":"lobby","id":3}), "not_member").await;
    join(&mut c, "r1", 4).await;
    join(&mut c, "r2", 5).await;
    expect_error(&mut c, json!({"type":"join","room":"r3","id":6}), "too_many_rooms").await;
    let mut d = a.connect("bob").await;
    let mut e = a.connect("carol").await;
    join(&mut d, "r1", 7).await;
    expect_error(&mut e, json!({"type":"join","room":"r1","id":8}), "room_full").await;
    // The error carries the id and the connection stays usable.
    d.send(json!({"type":"room_message","room":"r1","payload":"ok","id":9})).await;
    assert_eq!(recv_room(&mut c).await["payload"], "ok");
    assert_eq!(d.recv().await, json!({"type":"ack","id":9,"members":1,"nodes":0}));
    a.stop().await;
}

#[tokio::test]
async fn joins_racing_leaves_leave_the_subscription_matching_the_members() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let b = TestNode::start("node-b", Some(redis.config())).await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    join(&mut bob, "race", 0).await;
    // Joins and leaves without waiting for answers: the subscription task sees them coalesced.
    for _ in 0..50 {
        alice.send(json!({"type":"join","room":"race"})).await;
        alice.send(json!({"type":"leave","room":"race"})).await;
    }
    join(&mut alice, "race", 1).await;
    bob.send(json!({"type":"room_message","room":"race","payload":"in","id":2})).await;
    assert_eq!(recv_room(&mut alice).await["payload"], "in");
    assert_eq!(bob.recv().await, json!({"type":"ack","id":2,"members":0,"nodes":1}));
    for _ in 0..50 {
        alice.send(json!({"type":"leave","room":"race"})).await;
        alice.send(json!({"type":"join","room":"race"})).await;
    }
    alice.send(json!({"type":"leave","room":"race","id":3})).await;
    // Skip the not_member errors of the leaves that found alice outside the room.
    loop {
        let f = alice.recv().await;
        if f["type"] == "ack" {
            assert_eq!(f["id"], 3);
            break;
        }
    }
    let r = &redis;
    eventually(RECV_TIMEOUT, "only node-b subscribed", || async move {
        r.cli(&["PUBSUB", "NUMSUB", "room:race"]).lines().nth(1) == Some("1")
    })
    .await;
    bob.send(json!({"type":"room_message","room":"race","payload":"out","id":4})).await;
    assert_eq!(bob.recv().await, json!({"type":"ack","id":4,"members":0,"nodes":0}));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn room_member_counts_expire_and_purge_server_removes_a_dead_nodes_fields() {
    let redis = RedisServer::start();
    let a = TestNode::start("node-a", Some(redis.config())).await;
    let mut c1 = a.connect("u1").await;
    join(&mut c1, "lobby", 1).await;
    let r = &redis;
    eventually(RECV_TIMEOUT, "count 1", || async move { r.cli(&["HGET", "room_members:lobby", "node-a"]) == "1" }).await;
    // The hash has a TTL (the refresher renews it with the routes), so a hash whose every node
    // died without a drain does not stay for ever.
    let ttl: i64 = redis.cli(&["TTL", "room_members:lobby"]).parse().unwrap();
    let max = wsctl::broker::ROOM_MEMBERS_TTL.as_secs() as i64;
    assert!(ttl > 0 && ttl <= max, "room_members:lobby TTL {ttl}");
    // What a node killed without a drain leaves: its fields, beside a live node's.
    redis.cli(&["HSET", "room_members:lobby", "node-dead", "3"]);
    redis.cli(&["HSET", "room_members:quiet", "node-dead", "2"]);
    let table = wsctl::routes::admin::RouteTable::connect(&redis.config()).await.unwrap();
    let opts = |dry_run| wsctl::routes::admin::PurgeOptions { server: Some("node-dead".into()), dry_run, ..Default::default() };
    let dry = table.purge(&opts(true), &Default::default(), |_| {}).await.unwrap();
    assert_eq!(dry.room_fields, 2);
    assert_eq!(redis.cli(&["HGET", "room_members:quiet", "node-dead"]), "2", "a dry run writes nothing");
    let report = table.purge(&opts(false), &Default::default(), |_| {}).await.unwrap();
    assert_eq!(report.room_fields, 2);
    assert_eq!(redis.cli(&["HGETALL", "room_members:lobby"]), "node-a\n1");
    assert_eq!(redis.cli(&["EXISTS", "room_members:quiet"]), "0");
    a.stop().await;
}
