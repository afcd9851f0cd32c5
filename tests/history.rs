//! Per-user history (`--history`) and resume, on a real standalone Redis and a real 3-master
//! Cluster: nothing sent to a user is lost across a reconnect, a drain or a crash, nothing is
//! delivered twice, offsets arrive in order, and a resume that cannot be complete says so.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsctl::broker::HistoryConfig;
use wsctl::RedisConfig;

fn history(size: usize) -> HistoryConfig {
    HistoryConfig { size, ttl: Duration::from_secs(60) }
}

async fn nodes(redis: &RedisConfig, ids: &[&str], size: usize) -> Vec<TestNode> {
    let mut out = Vec::new();
    for id in ids {
        out.push(TestNode::start_history(id, redis.clone(), history(size)).await);
    }
    out
}

fn resume_url(node: &TestNode, user: &str, since: u64, epoch: &str) -> String {
    format!("{}&since={since}&epoch={epoch}", node.ws_url(user))
}

/// What a receiving client saw: chat frames by offset, and duplicates.
#[derive(Default)]
struct Seen {
    epoch: String,
    last: u64,
    payloads: BTreeMap<u64, Value>,
    duplicates: usize,
    out_of_order: usize,
}

impl Seen {
    fn take(&mut self, f: &Value) {
        let off = f["offset"].as_u64().unwrap_or_else(|| panic!("a history node's message carries an offset: {f}"));
        self.epoch = f["epoch"].as_str().expect("and an epoch").to_string();
        if self.payloads.insert(off, f["payload"].clone()).is_some() {
            self.duplicates += 1;
        }
        if off <= self.last {
            self.out_of_order += 1;
        }
        self.last = self.last.max(off);
    }
}

enum Event {
    Frame(Value),
    Closed,
}

/// The next frame, or the end of the connection (close frame, error or EOF).
async fn next_event(c: &mut Client, wait: Duration) -> Option<Event> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return Some(Event::Closed),
            Ok(Some(Ok(m))) => m,
        };
        if let Message::Text(t) = msg {
            return Some(Event::Frame(serde_json::from_str(&t).unwrap()));
        }
    }
}

/// Reads a resume's replay up to its `recovery` frame, into `seen`; returns the recovery frame.
async fn read_replay(c: &mut Client, seen: &mut Seen) -> Value {
    loop {
        let f = c.recv().await;
        match f["type"].as_str() {
            Some("recovery") => return f,
            Some("chat_message") => seen.take(&f),
            _ => panic!("unexpected frame before recovery: {f}"),
        }
    }
}

async fn send_acked(c: &mut Client, to: &str, n: u64) -> Value {
    c.send(json!({"type":"chat_message","receiverID":to,"payload":n,"id":n})).await;
    c.recv_ack().await
}

async fn resume_replays_exactly_the_missed_messages(redis: RedisConfig) {
    let n = nodes(&redis, &["node-a", "node-b", "node-c"], 100).await;
    let mut alice = n[0].connect("alice").await;
    let mut bob = n[1].connect("bob").await;
    let mut seen = Seen::default();
    for i in 0..3 {
        assert_eq!(send_acked(&mut alice, "bob", i).await, json!({"type":"ack","id":i,"online":true,"stored":true}));
        seen.take(&bob.recv_chat().await);
    }
    assert_eq!(seen.last, 3);
    bob.close().await;
    for i in 3..8 {
        let ack = send_acked(&mut alice, "bob", i).await;
        assert_eq!(ack["stored"], true, "{ack}");
    }
    let mut bob = Client::connect(&resume_url(&n[2], "bob", 3, &seen.epoch)).await;
    let rec = read_replay(&mut bob, &mut seen).await;
    assert_eq!(rec, json!({"type":"recovery","complete":true,"count":5,"epoch":seen.epoch,"offset":8}));
    for i in 8..10 {
        send_acked(&mut alice, "bob", i).await;
        seen.take(&bob.recv_chat().await);
    }
    assert_eq!(seen.payloads.keys().copied().collect::<Vec<_>>(), (1..=10).collect::<Vec<u64>>());
    assert_eq!(seen.payloads.values().cloned().collect::<Vec<_>>(), (0..10).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!((seen.duplicates, seen.out_of_order), (0, 0));
    bob.expect_silence(Duration::from_millis(200)).await;
    for node in n {
        node.stop().await;
    }
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_messages_standalone() {
    let redis = RedisServer::start();
    resume_replays_exactly_the_missed_messages(redis.config()).await;
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_messages_cluster() {
    let cluster = RedisCluster::start();
    resume_replays_exactly_the_missed_messages(cluster.config()).await;
}

async fn trimmed_history_and_wrong_epoch_are_not_complete(redis: RedisConfig) {
    let n = nodes(&redis, &["node-a", "node-b"], 3).await;
    let mut alice = n[0].connect("alice").await;
    // A client with nothing yet learns the epoch from an empty, complete recovery.
    let mut bob = Client::connect(&format!("{}&since=0", n[1].ws_url("bob"))).await;
    let rec = bob.recv().await;
    assert_eq!((rec["complete"].clone(), rec["count"].clone(), rec["offset"].clone()), (json!(true), json!(0), json!(0)), "{rec}");
    let epoch = rec["epoch"].as_str().unwrap().to_string();
    bob.close().await;
    for i in 0..6 {
        send_acked(&mut alice, "bob", i).await;
    }
    // Offsets 2..6 were missed, 4..6 are kept.
    let mut seen = Seen::default();
    let mut bob = Client::connect(&resume_url(&n[1], "bob", 1, &epoch)).await;
    let rec = read_replay(&mut bob, &mut seen).await;
    assert_eq!(rec, json!({"type":"recovery","complete":false,"count":3,"epoch":epoch,"offset":6,"reason":"trimmed"}));
    assert_eq!(seen.payloads.keys().copied().collect::<Vec<_>>(), [4, 5, 6]);
    bob.close().await;
    // Another epoch: what is kept is replayed, and the client is told it may have missed more.
    let mut seen = Seen::default();
    let mut bob = Client::connect(&resume_url(&n[0], "bob", 5, "not-the-epoch")).await;
    let rec = read_replay(&mut bob, &mut seen).await;
    assert_eq!(rec, json!({"type":"recovery","complete":false,"count":3,"epoch":epoch,"offset":6,"reason":"epoch_changed"}));
    bob.close().await;
    // Up to date: complete, nothing replayed.
    let mut bob = Client::connect(&resume_url(&n[0], "bob", 6, &epoch)).await;
    assert_eq!(bob.recv().await, json!({"type":"recovery","complete":true,"count":0,"epoch":epoch,"offset":6}));
    for node in n {
        node.stop().await;
    }
}

#[tokio::test]
async fn trimmed_history_and_wrong_epoch_are_not_complete_standalone() {
    let redis = RedisServer::start();
    trimmed_history_and_wrong_epoch_are_not_complete(redis.config()).await;
}

#[tokio::test]
async fn trimmed_history_and_wrong_epoch_are_not_complete_cluster() {
    let cluster = RedisCluster::start();
    trimmed_history_and_wrong_epoch_are_not_complete(cluster.config()).await;
}

/// Sends `count` messages from `c` to `to`, with ids `base..`, without waiting, then reads every
/// ack. Returns how many were acked `stored:true`.
async fn burst(mut c: Client, to: &'static str, base: u64, count: u64) -> (Client, u64) {
    for i in base..base + count {
        c.send(json!({"type":"chat_message","receiverID":to,"payload":i,"id":i})).await;
    }
    let mut stored = 0;
    for _ in 0..count {
        if c.recv_ack().await["stored"] == true {
            stored += 1;
        }
    }
    (c, stored)
}

async fn two_senders_on_two_nodes_arrive_in_offset_order(redis: RedisConfig) {
    let n = nodes(&redis, &["node-a", "node-b", "node-c"], 1000).await;
    let mut a = n[0].connect("alice").await;
    let d = n[1].connect("dave").await;
    let mut bob = n[2].connect("bob").await;
    // The first message a Cluster node sees for a user sets its order baseline (docs/history.md).
    send_acked(&mut a, "bob", 99_999).await;
    assert_eq!(bob.recv_chat().await["offset"], 1);
    const EACH: u64 = 300;
    let (ra, rd) = tokio::join!(burst(a, "bob", 0, EACH), burst(d, "bob", 10_000, EACH));
    assert_eq!((ra.1, rd.1), (EACH, EACH));
    let mut seen = Seen::default();
    let mut offsets = Vec::new();
    while offsets.len() < 2 * EACH as usize {
        let f = bob.recv_chat().await;
        offsets.push(f["offset"].as_u64().unwrap());
        seen.take(&f);
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets strictly increasing: {offsets:?}");
    assert_eq!((seen.duplicates, seen.payloads.len()), (0, 2 * EACH as usize));
    for node in n {
        node.stop().await;
    }
}

#[tokio::test]
async fn two_senders_on_two_nodes_arrive_in_offset_order_standalone() {
    let redis = RedisServer::start();
    two_senders_on_two_nodes_arrive_in_offset_order(redis.config()).await;
}

#[tokio::test]
async fn two_senders_on_two_nodes_arrive_in_offset_order_cluster() {
    let cluster = RedisCluster::start();
    two_senders_on_two_nodes_arrive_in_offset_order(cluster.config()).await;
}

/// A sender that sends `payload` 0, 1, ... to `to` every `every`, until `stop`; returns how many
/// were sent and how many acked `stored:true`.
async fn steady_sender(mut c: Client, to: &'static str, every: Duration, stop: tokio_util::sync::CancellationToken) -> (u64, u64) {
    let mut tick = tokio::time::interval(every);
    let mut sent = 0u64;
    let mut stored = 0u64;
    let mut acked = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick(), if !stop.is_cancelled() => {
                c.send(json!({"type":"chat_message","receiverID":to,"payload":sent,"id":sent})).await;
                sent += 1;
            }
            f = c.ws.next() => {
                let Some(Ok(Message::Text(t))) = f else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "ack", "sender got {v}");
                acked += 1;
                if v["stored"] == true {
                    stored += 1;
                }
            }
            _ = stop.cancelled(), if acked == sent => return (sent, stored),
            _ = tokio::time::sleep(RECV_TIMEOUT), if stop.is_cancelled() => panic!("sender: {} of {sent} acked", acked),
        }
    }
}

/// Reads frames into `seen` until the connection ends or `until` fires; returns true if it ended.
async fn receive_until(c: &mut Client, seen: &mut Seen, until: impl std::future::Future<Output = ()>) -> bool {
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return false,
            e = next_event(c, Duration::from_secs(30)) => match e {
                Some(Event::Frame(f)) if f["type"] == "chat_message" => seen.take(&f),
                Some(Event::Frame(f)) if f["type"] == "recovery" && f["reason"] == "unavailable" => {
                    // Redis too slow to confirm the route or the read: resume again.
                    eprintln!("resume unavailable: {f}");
                    return true;
                }
                Some(Event::Frame(f)) if f["type"] == "recovery" => assert_eq!(f["complete"], true, "{f} (last seen {})", seen.last),
                Some(Event::Frame(f)) => panic!("unexpected {f}"),
                Some(Event::Closed) | None => return true,
            },
        }
    }
}

/// Once the sender is done: resume one last time and read until everything sent arrived.
async fn catch_up(node: &TestNode, seen: &mut Seen, sent: u64) {
    let mut c = Client::connect(&resume_url(node, "bob", seen.last, &seen.epoch)).await;
    let rec = read_replay(&mut c, seen).await;
    assert_eq!(rec["complete"], true, "{rec}");
    let deadline = Instant::now() + RECV_TIMEOUT;
    while (seen.payloads.len() as u64) < sent && Instant::now() < deadline {
        if let Some(Event::Frame(f)) = next_event(&mut c, Duration::from_millis(100)).await {
            seen.take(&f);
        }
    }
}

fn assert_all_once(seen: &Seen, sent: u64) {
    let lost = (0..sent).filter(|i| !seen.payloads.values().any(|p| p == &json!(i))).count();
    println!("sent {sent}, delivered {}, lost {lost}, duplicated {}", seen.payloads.len(), seen.duplicates);
    let max = seen.payloads.keys().last().copied().unwrap_or(0);
    let gaps: Vec<u64> = (1..=max).filter(|o| !seen.payloads.contains_key(o)).collect();
    if !gaps.is_empty() {
        println!("offsets never delivered: {gaps:?}");
    }
    assert_eq!((lost, seen.duplicates, seen.payloads.len() as u64), (0, 0, sent));
}

#[tokio::test]
async fn a_drained_node_loses_nothing_when_its_clients_resume_elsewhere() {
    let redis = RedisServer::start();
    let mut n = nodes(&redis.config(), &["node-a", "node-b", "node-c"], 1000).await;
    let alice = n[0].connect("alice").await;
    let mut bob = n[1].connect("bob").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn(steady_sender(alice, "bob", Duration::from_millis(2), stop.clone()));
    let mut seen = Seen::default();
    // Traffic flows, then node-b drains (SIGTERM's path) while it does.
    while seen.payloads.len() < 100 {
        let f = bob.recv_chat().await;
        seen.take(&f);
    }
    let b = n.remove(1);
    let drained = tokio::spawn(b.stop());
    assert!(receive_until(&mut bob, &mut seen, std::future::pending()).await, "node-b closed bob");
    let mut bob = Client::connect(&resume_url(&n[1], "bob", seen.last, &seen.epoch)).await;
    let rec = read_replay(&mut bob, &mut seen).await;
    assert_eq!(rec["complete"], true, "{rec}");
    receive_until(&mut bob, &mut seen, tokio::time::sleep(Duration::from_millis(300))).await;
    stop.cancel();
    let (sent, stored) = sender.await.unwrap();
    assert_eq!(stored, sent);
    drained.await.unwrap();
    drop(bob);
    catch_up(&n[0], &mut seen, sent).await;
    assert_all_once(&seen, sent);
    assert_eq!(seen.out_of_order, 0);
}

/// `wsctl serve --history` as a child process, killed on drop.
struct Binary(Child, String);

impl Binary {
    fn start(redis: &RedisServer, id: &str) -> Binary {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_wsctl"))
            .args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string(), "--server-id", id, "--history"])
            .env("REDIS_URI", redis.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wsctl binary runs");
        Binary(child, format!("127.0.0.1:{port}"))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_killed_node_loses_nothing_stored_when_its_clients_resume_elsewhere() {
    let redis = RedisServer::start();
    let n = nodes(&redis.config(), &["node-a", "node-c"], 1000).await;
    let mut killed = Binary::start(&redis, "node-k");
    let url = format!("ws://{}/ws?userId=bob", killed.1);
    let mut bob = loop {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
            break ws;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let alice = n[0].connect("alice").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn(steady_sender(alice, "bob", Duration::from_millis(2), stop.clone()));
    let mut seen = Seen::default();
    while seen.payloads.len() < 100 {
        if let Some(Ok(Message::Text(t))) = bob.next().await {
            seen.take(&serde_json::from_str(&t).unwrap());
        }
    }
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    while let Some(Ok(Message::Text(t))) = bob.next().await {
        seen.take(&serde_json::from_str(&t).unwrap());
    }
    let mut bob = Client::connect(&resume_url(&n[1], "bob", seen.last, &seen.epoch)).await;
    let rec = read_replay(&mut bob, &mut seen).await;
    assert_eq!(rec["complete"], true, "{rec}");
    receive_until(&mut bob, &mut seen, tokio::time::sleep(Duration::from_millis(300))).await;
    stop.cancel();
    let (sent, stored) = sender.await.unwrap();
    assert_eq!(stored, sent, "every message acked stored:true");
    drop(bob);
    catch_up(&n[0], &mut seen, sent).await;
    assert_all_once(&seen, sent);
}

#[tokio::test]
async fn redis_restarted_empty_changes_the_epoch_and_resumes_are_not_complete() {
    let mut redis = RedisServer::start();
    let n = nodes(&redis.config(), &["node-a", "node-b"], 100).await;
    let mut alice = n[0].connect("alice").await;
    let mut bob = n[1].connect("bob").await;
    let mut seen = Seen::default();
    send_acked(&mut alice, "bob", 0).await;
    seen.take(&bob.recv_chat().await);
    let old = seen.epoch.clone();
    bob.close().await;
    redis.restart();
    // Once the nodes are back on the new Redis, a message is stored again, in a new history.
    let mut i = 1;
    loop {
        // An `unavailable` error until the node sees Redis again, then an ack.
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":i,"id":i})).await;
        let answer = alice.recv().await;
        i += 1;
        if answer["stored"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // node-b too must see Redis again, or its answer is (rightly) `unavailable`.
    let addr = n[1].addr;
    eventually(Duration::from_secs(10), "node-b ready", || async move {
        http_get(addr, "/ready").await.map(|r| r.0).unwrap_or(0) == 200
    })
    .await;
    let mut seen = Seen::default();
    let mut bob = Client::connect(&resume_url(&n[1], "bob", 1, &old)).await;
    let rec = read_replay(&mut bob, &mut seen).await;
    assert_eq!(rec["complete"], false, "{rec}");
    assert_eq!(rec["reason"], "epoch_changed");
    assert_ne!(rec["epoch"], json!(old));
    assert_eq!(rec["count"], 1, "the message stored after the restart is replayed: {rec}");
    assert_eq!(seen.payloads.values().next(), Some(&json!(i - 1)));
}

/// The AnyCable-style test: a receiver whose connection is cut every ~2 s (no close frame, the
/// way a network drop looks to the server), resuming on alternating nodes, while a sender sends
/// steadily. Runs `HISTORY_CHAOS_SECS` (default 20) seconds; prints sent, delivered, lost,
/// duplicated.
async fn forced_disconnects(redis: RedisConfig) {
    let secs: u64 = std::env::var("HISTORY_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let n = nodes(&redis, &["node-a", "node-b", "node-c"], 1000).await;
    let alice = n[0].connect("alice").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = tokio::spawn(steady_sender(alice, "bob", Duration::from_millis(5), stop.clone()));
    let mut seen = Seen::default();
    let mut bob = Client::connect(&format!("{}&since=0", n[1].ws_url("bob"))).await;
    let rec = read_replay(&mut bob, &mut seen).await;
    seen.epoch = rec["epoch"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut drops = 0;
    while Instant::now() < end {
        let cut = tokio::time::sleep(Duration::from_millis(1500 + 250 * (drops % 4)));
        receive_until(&mut bob, &mut seen, cut).await;
        // Cut: the socket goes without a close frame.
        drop(bob);
        drops += 1;
        let node = &n[1 + drops as usize % 2];
        bob = Client::connect(&resume_url(node, "bob", seen.last, &seen.epoch)).await;
    }
    stop.cancel();
    let (sent, stored) = sender.await.unwrap();
    drop(bob);
    catch_up(&n[2], &mut seen, sent).await;
    println!("{secs} s, {drops} forced disconnects, {stored} acked stored");
    assert_all_once(&seen, sent);
}

#[tokio::test]
async fn forced_disconnects_lose_and_duplicate_nothing_standalone() {
    let redis = RedisServer::start();
    forced_disconnects(redis.config()).await;
}

#[tokio::test]
async fn forced_disconnects_lose_and_duplicate_nothing_cluster() {
    let cluster = RedisCluster::start();
    forced_disconnects(cluster.config()).await;
}

#[tokio::test]
async fn a_node_without_history_says_so_and_sends_no_offsets() {
    let redis = RedisServer::start();
    let plain = TestNode::start("plain", Some(redis.config())).await;
    let hist = TestNode::start_history("hist", redis.config(), history(10)).await;
    let mut bob = Client::connect(&format!("{}&since=3&epoch=x", plain.ws_url("bob"))).await;
    let rec = bob.recv().await;
    assert_eq!((rec["complete"].clone(), rec["reason"].clone()), (json!(false), json!("history_off")));
    // A plain node's messages carry no offset; a history node's do, to a user on a plain node too.
    let mut carol = plain.connect("carol").await;
    let mut dave = hist.connect("dave").await;
    carol.send(chat("bob", json!(1))).await;
    assert!(bob.recv_chat().await.get("offset").is_none());
    dave.send(chat("bob", json!(2))).await;
    assert_eq!(bob.recv_chat().await["offset"], 1);
    carol.send(chat("dave", json!(3))).await;
    assert!(dave.recv_chat().await.get("offset").is_none());
}

/// `user` as a query value (the braces a Cluster hash tag is made of, percent-encoded).
fn encoded(user: &str) -> String {
    user.replace('{', "%7B").replace('}', "%7D")
}

#[tokio::test]
async fn user_ids_with_braces_keep_their_history_in_one_cluster_slot() {
    let cluster = RedisCluster::start();
    user_ids_with_braces_have_history(cluster.config()).await;
}

#[tokio::test]
async fn user_ids_with_braces_have_history_on_standalone() {
    let redis = RedisServer::start();
    user_ids_with_braces_have_history(redis.config()).await;
}

async fn user_ids_with_braces_have_history(redis: RedisConfig) {
    let n = nodes(&redis, &["node-a", "node-b", "node-c"], 100).await;
    let mut alice = n[0].connect("alice").await;
    for user in ["}x{y", "{a}", "a{b", "{}"] {
        let mut c = Client::connect(&n[1].ws_url(&encoded(user))).await;
        let mut seen = Seen::default();
        for i in 0..3 {
            let ack = send_acked(&mut alice, user, i).await;
            assert_eq!(ack, json!({"type":"ack","id":i,"online":true,"stored":true}), "to {user}");
            let got = c.recv_chat().await;
            assert_eq!(got["receiverID"], user);
            seen.take(&got);
        }
        c.close().await;
        for i in 3..5 {
            assert_eq!(send_acked(&mut alice, user, i).await["stored"], true, "to {user}");
        }
        let mut c = Client::connect(&resume_url(&n[2], &encoded(user), seen.last, &seen.epoch)).await;
        let rec = read_replay(&mut c, &mut seen).await;
        assert_eq!(rec, json!({"type":"recovery","complete":true,"count":2,"epoch":seen.epoch,"offset":5}), "{user}");
        assert_eq!(seen.payloads.values().cloned().collect::<Vec<_>>(), (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    }
    for node in &n {
        assert_eq!(http_get(node.addr, "/ready").await.unwrap().0, 200, "{} stays ready", node.id);
        assert_eq!(node.metrics.redis_errors.get(), 0, "{}: no batch failed", node.id);
    }
    for node in n {
        node.stop().await;
    }
}
