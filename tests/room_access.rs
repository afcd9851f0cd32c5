//! Who may join and send to a room (docs/rooms.md, "Who may join"): `rooms`/`rooms_read` claims,
//! room tokens on a join, `--room-policy`, across two nodes on a real standalone Redis and a real
//! 3-master Cluster, with real clients. A refused join gets `forbidden` and then nothing of the
//! room.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use wsctl::room_access::RoomPolicy;
use wsctl::server::admission::SecurityConfig;
use wsctl::server::auth::{Authenticator, Minter, RoomClaims};
use wsctl::{RedisConfig, ServerConfig};

const SECRET: &str = "room-access-test-secret-0123456789abcdef";

fn security(policy: RoomPolicy) -> SecurityConfig {
    SecurityConfig { auth: Some(Arc::new(Authenticator::hs256(SECRET.as_bytes()).unwrap())), room_policy: policy, ..Default::default() }
}

async fn node(id: &str, redis: Option<RedisConfig>, policy: RoomPolicy) -> TestNode {
    TestNode::start_config(ServerConfig { redis, limits: test_limits(), security: security(policy), ..ServerConfig::embedded(id) }).await
}

fn mint(user: &str, ttl: Duration, claims: RoomClaims) -> String {
    Minter::hs256(SECRET.as_bytes()).unwrap().mint_with(user, ttl, claims).unwrap().0
}

fn grants(rooms: &[&str], read: &[&str]) -> RoomClaims {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
    RoomClaims { rooms: v(rooms), rooms_read: v(read), ..RoomClaims::default() }
}

fn room_token(user: &str, room: &str, read_only: bool, ttl: Duration) -> String {
    mint(user, ttl, RoomClaims { room: Some(room.into()), read_only, ..RoomClaims::default() })
}

async fn connect(n: &TestNode, user: &str, claims: RoomClaims) -> Client {
    let t = mint(user, Duration::from_secs(300), claims);
    Client::connect(&format!("ws://{}/ws?token={t}", n.addr)).await
}

/// Sends a join and returns its answer (ack or error).
async fn join(c: &mut Client, room: &str, token: Option<&str>) -> Value {
    let mut f = json!({"type":"join","room":room,"id":format!("j-{room}")});
    if let Some(t) = token {
        f["token"] = json!(t);
    }
    c.send(f).await;
    c.recv().await
}

fn is_forbidden(answer: &Value, room: &str) -> bool {
    answer["type"] == "error" && answer["code"] == "forbidden" && answer["room"] == room && answer["id"] == format!("j-{room}")
}

async fn claims_decide(redis: RedisConfig) {
    let (a, b) = (node("acl-a", Some(redis.clone()), RoomPolicy::Claims).await, node("acl-b", Some(redis), RoomPolicy::Claims).await);
    let mut alice = connect(&a, "alice", grants(&["team:42:*", "lobby"], &["news"])).await;
    let mut mallory = connect(&a, "mallory", grants(&["lobby"], &[])).await;
    let mut carol = connect(&b, "carol", grants(&["team:42:*", "news"], &[])).await;
    for c in [&mut alice, &mut carol] {
        for room in ["team:42:general", "news"] {
            assert_eq!(join(c, room, None).await["type"], "ack", "{room}");
        }
    }
    // A room named like someone else's conversation, without a grant: refused, and nothing of it
    // arrives afterwards.
    let refused = join(&mut mallory, "team:42:general", None).await;
    assert!(is_forbidden(&refused, "team:42:general"), "{refused}");
    carol.send(json!({"type":"room_message","room":"team:42:general","payload":"secret","id":"m1"})).await;
    assert_eq!(carol.recv_ack().await["id"], "m1");
    assert_eq!(alice.recv().await["payload"], "secret");
    mallory.expect_silence(Duration::from_millis(400)).await;
    mallory.send(json!({"type":"room_message","room":"team:42:general","payload":"x","id":"m"})).await;
    assert_eq!(mallory.recv().await["code"], "not_member");
    // `rooms_read`: receives, may not send.
    carol.send(json!({"type":"room_message","room":"news","payload":"headline"})).await;
    assert_eq!(alice.recv().await["payload"], "headline");
    alice.send(json!({"type":"room_message","room":"news","payload":"spam","id":"s"})).await;
    let answer = alice.recv().await;
    assert_eq!((answer["code"].as_str(), answer["room"].as_str(), &answer["id"]), (Some("forbidden"), Some("news"), &json!("s")), "{answer}");
    carol.expect_silence(Duration::from_millis(300)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn claims_decide_who_joins_and_who_sends_standalone() {
    let redis = RedisServer::start();
    claims_decide(redis.config()).await;
}

#[tokio::test]
async fn claims_decide_who_joins_and_who_sends_cluster() {
    let cluster = RedisCluster::start();
    claims_decide(cluster.config()).await;
}

/// A room token (signed with the node's key: `sub`, `room`, `exp`, optional `read_only`) lets
/// its user into its one room; another user's, another room's or a forged one does not.
#[tokio::test]
async fn a_room_token_admits_its_user_to_its_room_only() {
    let redis = RedisServer::start();
    let (a, b) = (node("acl-a", Some(redis.config()), RoomPolicy::Claims).await, node("acl-b", Some(redis.config()), RoomPolicy::Claims).await);
    let mut bob = connect(&a, "bob", RoomClaims::default()).await;
    let mut carol = connect(&b, "carol", grants(&["dm:*"], &[])).await;
    assert_eq!(join(&mut carol, "dm:bob:carol", None).await["type"], "ack");
    let long = Duration::from_secs(300);
    let forged = Minter::hs256(b"another-secret-another-secret-0123456789").unwrap().mint_with("bob", long, RoomClaims { room: Some("dm:bob:carol".into()), ..RoomClaims::default() }).unwrap().0;
    for bad in [room_token("mallory", "dm:bob:carol", false, long), room_token("bob", "dm:bob:dave", false, long), forged, "not a jwt".into()] {
        let answer = join(&mut bob, "dm:bob:carol", Some(&bad)).await;
        assert!(is_forbidden(&answer, "dm:bob:carol"), "{answer}");
    }
    assert_eq!(join(&mut bob, "dm:bob:carol", Some(&room_token("bob", "dm:bob:carol", false, long))).await["type"], "ack");
    carol.send(json!({"type":"room_message","room":"dm:bob:carol","payload":"hi bob"})).await;
    assert_eq!(bob.recv().await["payload"], "hi bob");
    bob.send(json!({"type":"room_message","room":"dm:bob:carol","payload":"hi carol","id":"r"})).await;
    assert_eq!(bob.recv_ack().await["nodes"], 1);
    assert_eq!(carol.recv().await["payload"], "hi carol");
    // A read-only room token: receives, may not send.
    let mut dave = connect(&a, "dave", RoomClaims::default()).await;
    assert_eq!(join(&mut dave, "dm:bob:carol", Some(&room_token("dave", "dm:bob:carol", true, long))).await["type"], "ack");
    dave.send(json!({"type":"room_message","room":"dm:bob:carol","payload":"x","id":"d"})).await;
    assert_eq!(dave.recv().await["code"], "forbidden");
    a.stop().await;
    b.stop().await;
}

/// When a room token expires the connection leaves the room, told by a `left` frame, and hears
/// nothing of it after; the connection itself stays.
#[tokio::test]
async fn an_expired_room_token_takes_the_connection_out_of_the_room() {
    let a = node("acl-a", None, RoomPolicy::Claims).await;
    let mut bob = connect(&a, "bob", RoomClaims::default()).await;
    let mut carol = connect(&a, "carol", grants(&["stage"], &[])).await;
    assert_eq!(join(&mut carol, "stage", None).await["type"], "ack");
    // Valid for 1 s plus the 5 s leeway.
    assert_eq!(join(&mut bob, "stage", Some(&room_token("bob", "stage", false, Duration::from_secs(1)))).await["type"], "ack");
    carol.send(json!({"type":"room_message","room":"stage","payload":"before"})).await;
    assert_eq!(bob.recv().await["payload"], "before");
    let left = bob.try_recv(Duration::from_secs(10)).await.expect("left at the token's deadline");
    assert_eq!(left, json!({"type":"left","room":"stage","reason":"token_expired"}));
    carol.send(json!({"type":"room_message","room":"stage","payload":"after"})).await;
    bob.expect_silence(Duration::from_millis(300)).await;
    bob.send(json!({"type":"heartbeat","id":"still-here"})).await;
    assert_eq!(bob.recv().await["id"], "still-here");
    a.stop().await;
}

/// `--room-policy open` (the old behaviour) lets any authenticated connection join any room;
/// with auth off rooms are open too.
#[tokio::test]
async fn an_open_policy_and_auth_off_admit_every_join() {
    let open = node("acl-open", None, RoomPolicy::Open).await;
    let mut c = connect(&open, "anyone", RoomClaims::default()).await;
    assert_eq!(join(&mut c, "whatever", None).await["type"], "ack");
    open.stop().await;
    let off = TestNode::start("acl-off", None).await;
    let mut c = off.connect("anyone").await;
    assert_eq!(join(&mut c, "whatever", None).await["type"], "ack");
    off.stop().await;
}

/// `wsctl token --room R --read-only` mints a room token the node accepts; `--rooms` a
/// connection token with grants.
#[tokio::test]
async fn wsctl_token_mints_room_tokens_and_grants() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl")).args(args).env("JWT_SECRET", SECRET).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let a = node("acl-a", None, RoomPolicy::Claims).await;
    let conn = run(&["token", "--user", "bob", "--rooms", "team:42:*"]);
    let mut bob = Client::connect(&format!("ws://{}/ws?token={conn}", a.addr)).await;
    assert_eq!(join(&mut bob, "team:42:x", None).await["type"], "ack");
    assert!(is_forbidden(&join(&mut bob, "stage", None).await, "stage"));
    let room = run(&["token", "--user", "bob", "--room", "stage", "--read-only"]);
    assert_eq!(join(&mut bob, "stage", Some(&room)).await["type"], "ack");
    bob.send(json!({"type":"room_message","room":"stage","payload":1,"id":"w"})).await;
    assert_eq!(bob.recv().await["code"], "forbidden");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl")).args(["token", "--user", "bob", "--room", "bad name"]).env("JWT_SECRET", SECRET).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "a bad room name is a usage error");
    a.stop().await;
}

/// A real HTTP backend for the join proxy: answers by the room's prefix (`allow:`, `ro:`,
/// `deny:`, `no:`, `slow:`, `garbage:`), and records what it was asked.
async fn backend() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<Value>>>) {
    use http_body_util::{BodyExt, Full};
    use hyper::{Response, StatusCode};
    let asked: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let body: Value = serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
                    let room = body["room"].as_str().unwrap_or_default().to_string();
                    seen.lock().unwrap().push(body);
                    let (status, text) = match room.split(':').next().unwrap_or_default() {
                        "allow" => (StatusCode::OK, r#"{"allow":true}"#),
                        "ro" => (StatusCode::OK, r#"{"allow":true,"read_only":true}"#),
                        "no" => (StatusCode::OK, r#"{"allow":false}"#),
                        "deny" => (StatusCode::FORBIDDEN, r#"{"code":"nope"}"#),
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            (StatusCode::OK, r#"{"allow":true}"#)
                        }
                        _ => (StatusCode::OK, "not json"),
                    };
                    Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(Full::new(bytes::Bytes::from(text))).unwrap())
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        }
    });
    (addr, asked)
}

async fn proxied_node(id: &str, redis: Option<RedisConfig>, proxy: String) -> TestNode {
    let config = ServerConfig {
        redis,
        limits: test_limits(),
        security: security(RoomPolicy::Claims),
        join_proxy: Some(proxy),
        proxy_timeout: Duration::from_millis(500),
        ..ServerConfig::embedded(id)
    };
    TestNode::start_config(config).await
}

/// The join proxy decides joins no grant allows: allow, read-only, deny (403 or allow:false);
/// slow, garbage and down are refusals (`unavailable`), never an allow. A grant still needs no
/// call. Across two nodes on Redis: an allowed member hears the other node's messages.
#[tokio::test]
async fn the_join_proxy_decides_and_fails_closed() {
    let redis = RedisServer::start();
    let (addr, asked) = backend().await;
    let a = proxied_node("acl-a", Some(redis.config()), format!("http://{addr}/join")).await;
    let b = node("acl-b", Some(redis.config()), RoomPolicy::Open).await;
    let mut bob = connect(&a, "bob", grants(&["granted"], &[])).await;
    assert_eq!(join(&mut bob, "granted", None).await["type"], "ack");
    assert!(asked.lock().unwrap().is_empty(), "a grant needs no call");
    assert_eq!(join(&mut bob, "allow:1", None).await["type"], "ack");
    assert_eq!(asked.lock().unwrap()[0], json!({"user":"bob","room":"allow:1","client_ip":"127.0.0.1"}));
    let mut carol = connect(&b, "carol", RoomClaims::default()).await;
    assert_eq!(join(&mut carol, "allow:1", None).await["type"], "ack");
    carol.send(json!({"type":"room_message","room":"allow:1","payload":"across"})).await;
    assert_eq!(bob.recv().await["payload"], "across");
    assert_eq!(join(&mut bob, "ro:1", None).await["type"], "ack");
    bob.send(json!({"type":"room_message","room":"ro:1","payload":1,"id":"w"})).await;
    assert_eq!(bob.recv().await["code"], "forbidden");
    for room in ["deny:1", "no:1"] {
        let answer = join(&mut bob, room, None).await;
        assert!(is_forbidden(&answer, room), "{answer}");
    }
    for room in ["slow:1", "garbage:1"] {
        let answer = join(&mut bob, room, None).await;
        assert_eq!((answer["code"].as_str(), answer["room"].as_str()), (Some("unavailable"), Some(room)), "{answer}");
    }
    carol.send(json!({"type":"join","room":"slow:1","id":"c"})).await;
    assert_eq!(carol.recv_ack().await["id"], "c");
    carol.send(json!({"type":"room_message","room":"slow:1","payload":"no"})).await;
    bob.expect_silence(Duration::from_millis(300)).await;
    // The backend down: refused, not allowed.
    let down = proxied_node("acl-c", None, format!("http://127.0.0.1:{}/join", free_port())).await;
    let mut dave = connect(&down, "dave", RoomClaims::default()).await;
    let answer = join(&mut dave, "allow:2", None).await;
    assert_eq!(answer["code"], "unavailable", "{answer}");
    for n in [a, b, down] {
        n.stop().await;
    }
}
