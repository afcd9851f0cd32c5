//! Issue 8, end to end: token auth (every transport, forged, expired, `alg: none`, wrong `sub`,
//! expiry while connected), origins, connection caps and a 10x flood, the per-connection rate
//! limit against a normal user's latency across two nodes on a real Redis, handshake limits, and
//! a table of hostile frames and handshakes, each with its expected answer.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsctl::server::admission::{Caps, OriginPattern, SecurityConfig};
use wsctl::server::auth::{Authenticator, Minter, TOKEN_LEEWAY};
use wsctl::server::http::HttpLimits;
use wsctl::server::ratelimit::RateLimit;
use wsctl::{Metrics, RedisConfig, ServerConfig};

const SECRET: &str = "test-secret-of-at-least-32-bytes-0123";

/// A node with a security config of the test's choosing.
struct Node {
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), wsctl::ServerError>>>,
}

impl Node {
    async fn start(id: &str, redis: Option<RedisConfig>, security: SecurityConfig) -> Node {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServerConfig { redis, limits: test_limits(), security, ..ServerConfig::embedded(id) };
        let (metrics, shutdown) = (Metrics::new(), CancellationToken::new());
        let handle = tokio::spawn(wsctl::server::serve_with_metrics(listener, config, metrics.clone(), shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(http_get(addr, "/health").await, Ok((200, _))) {
            assert!(Instant::now() < deadline && !handle.is_finished(), "node {id} did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Node { addr, metrics, shutdown, handle: Some(handle) }
    }

    fn url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// Opens `/ws?{query}` with extra headers: the client and the 101's headers, or the refusal's
    /// status and body.
    async fn open(&self, query: &str, headers: &[(&str, &str)]) -> Result<(Client, HandshakeHeaders), (u16, String)> {
        let mut req = self.url(query).into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, resp)) => Ok((Client::from_ws(ws), resp.headers().clone())),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("handshake {query}: {e}"),
        }
    }

    async fn connect(&self, query: &str) -> Client {
        self.open(query, &[]).await.unwrap_or_else(|e| panic!("{query}: refused {e:?}")).0
    }

    fn refused(&self, reason: &str) -> u64 {
        let text = self.metrics.render();
        let key = format!("wss_connections_refused_total{{reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |v| v.trim().parse().unwrap())
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), h).await.expect("node drains in time").unwrap().unwrap();
        }
    }
}

type HandshakeHeaders = tokio_tungstenite::tungstenite::http::HeaderMap;

fn auth_on() -> SecurityConfig {
    SecurityConfig { auth: Some(Arc::new(Authenticator::hs256(SECRET.as_bytes()).unwrap())), ..Default::default() }
}

fn token(user: &str, ttl: Duration) -> String {
    Minter::hs256(SECRET.as_bytes()).unwrap().mint(user, ttl).unwrap().0
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token with these claims, signed HS-something with `secret`.
fn signed(claims: Value, alg: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`), the classic forgery.
fn alg_none(claims: Value) -> String {
    format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()))
}

#[tokio::test]
async fn tokens_signed_forged_expired_none_and_wrong_sub() {
    let node = Node::start("auth", None, auth_on()).await;
    let good = token("alice", Duration::from_secs(600));
    let exp = now_s() + 600;
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (String::new(), 401, "missing token", "missing_token"),
        (format!("token={}", signed(json!({"sub":"alice","exp":exp}), Algorithm::HS256, "another-secret-of-at-least-32-bytes!!")), 401, "invalid token", "invalid_token"),
        (format!("token={}", signed(json!({"sub":"alice","exp":now_s() - 60}), Algorithm::HS256, SECRET)), 401, "token expired", "expired_token"),
        (format!("token={}", alg_none(json!({"sub":"alice","exp":exp}))), 401, "invalid token", "invalid_token"),
        // The right secret with another algorithm than the configured one.
        (format!("token={}", signed(json!({"sub":"alice","exp":exp}), Algorithm::HS384, SECRET)), 401, "invalid token", "invalid_token"),
        (format!("token={good}&userId=bob"), 403, "userId does not match the token", "user_mismatch"),
    ];
    for (query, status, body, reason) in &cases {
        let before = node.refused(reason);
        assert_eq!(node.open(query, &[]).await.err(), Some((*status, body.to_string())), "{query}");
        assert_eq!(node.refused(reason), before + 1, "counted as {reason}");
    }
    // A valid token, with or without a matching userId; the user is `sub`, whatever is claimed.
    let mut alice = node.connect(&format!("token={good}&userId=alice")).await;
    let mut bob = node.connect(&format!("token={}", token("bob", Duration::from_secs(600)))).await;
    alice.send(json!({"type":"chat_message","receiverID":"bob","payload":1,"senderId":"mallory"})).await;
    let got = bob.recv().await;
    assert_eq!((got["senderId"].as_str(), got["payload"].as_i64()), (Some("alice"), Some(1)));
    node.stop().await;
}

#[tokio::test]
async fn every_token_transport_is_accepted_and_the_subprotocol_is_echoed() {
    let node = Node::start("auth", None, auth_on()).await;
    let t = token("alice", Duration::from_secs(600));
    let bearer = format!("Bearer {t}");
    let offered = format!("wsctl.bearer, {t}");
    let (mut q, _) = node.open(&format!("token={t}"), &[]).await.unwrap();
    let (mut h, _) = node.open("", &[("authorization", &bearer)]).await.unwrap();
    let (mut p, headers) = node.open("", &[("sec-websocket-protocol", &offered)]).await.unwrap();
    assert_eq!(headers.get("sec-websocket-protocol").map(|v| v.to_str().unwrap()), Some("wsctl.bearer"));
    // A client that offers the protocol and authenticates otherwise still gets its answer.
    let (_, headers) = node.open("", &[("authorization", &bearer), ("sec-websocket-protocol", &offered)]).await.unwrap();
    assert_eq!(headers.get("sec-websocket-protocol").map(|v| v.to_str().unwrap()), Some("wsctl.bearer"));
    let mut bob = node.connect(&format!("token={}", token("bob", Duration::from_secs(600)))).await;
    for (i, c) in [&mut q, &mut h, &mut p].into_iter().enumerate() {
        c.send(json!({"type":"chat_message","receiverID":"bob","payload":i,"id":i})).await;
        assert_eq!(c.recv().await["online"], true);
        assert_eq!(bob.recv().await["senderId"], "alice");
    }
    node.stop().await;
}

#[tokio::test]
async fn rs256_and_es256_public_keys_verify_their_own_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str, args: &[&str]| {
        let private = dir.path().join(format!("{name}.pem"));
        let public = dir.path().join(format!("{name}.pub.pem"));
        let ok = std::process::Command::new("openssl").args(args).arg("-out").arg(&private).output().unwrap().status.success();
        assert!(ok, "openssl genpkey {name}");
        let ok = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "openssl pkey -pubout {name}");
        (std::fs::read(private).unwrap(), std::fs::read(public).unwrap())
    };
    let (rsa, rsa_pub) = key("rsa", &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let (ec, ec_pub) = key("ec", &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    for (private, public, other, alg) in [(&rsa, &rsa_pub, &ec, Algorithm::RS256), (&ec, &ec_pub, &rsa, Algorithm::ES256)] {
        let auth = Authenticator::from_public_pem(public, None).unwrap();
        assert_eq!(auth.algorithm(), alg);
        let node = Node::start("pk", None, SecurityConfig { auth: Some(Arc::new(auth)), ..Default::default() }).await;
        let (t, _) = Minter::from_private_pem(private, None).unwrap().mint("alice", Duration::from_secs(60)).unwrap();
        let (forged, _) = Minter::from_private_pem(other, None).unwrap().mint("alice", Duration::from_secs(60)).unwrap();
        let mut c = node.connect(&format!("token={t}")).await;
        c.send(json!({"type":"heartbeat","id":1})).await;
        assert_eq!(c.recv().await["type"], "ack");
        assert_eq!(node.open(&format!("token={forged}"), &[]).await.err(), Some((401, "invalid token".into())), "{alg:?}");
        // HS256 signed with the public key's bytes: the algorithm-confusion attack.
        let confused = signed(json!({"sub":"alice","exp":now_s() + 60}), Algorithm::HS256, std::str::from_utf8(public).unwrap());
        assert_eq!(node.open(&format!("token={confused}"), &[]).await.err(), Some((401, "invalid token".into())));
        node.stop().await;
    }
}

#[tokio::test]
async fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let node = Node::start("auth", None, auth_on()).await;
    let (t, exp) = Minter::hs256(SECRET.as_bytes()).unwrap().mint("alice", Duration::from_secs(2)).unwrap();
    let mut c = node.connect(&format!("token={t}")).await;
    let mut other = node.connect(&format!("token={}", token("bob", Duration::from_secs(600)))).await;
    let closes_at = exp + TOKEN_LEEWAY;
    let (_, closed) = c.until_closed(Duration::from_secs(20)).await;
    let now = SystemTime::now();
    assert_eq!(closed, Closed::Code(1008));
    assert!(now + Duration::from_millis(100) >= closes_at, "closed {:?} before exp + leeway", closes_at.duration_since(now).unwrap());
    assert!(now <= closes_at + Duration::from_secs(2), "closed {:?} after exp + leeway", now.duration_since(closes_at).unwrap());
    other.send(json!({"type":"heartbeat","id":1})).await;
    assert_eq!(other.recv().await["type"], "ack", "a connection with a valid token stays");
    // A fresh token reconnects.
    node.connect(&format!("token={}", token("alice", Duration::from_secs(600)))).await;
    node.stop().await;
}

#[tokio::test]
async fn origins_exact_and_wildcard_are_allowed_others_get_403_and_no_origin_passes() {
    let origins: Vec<OriginPattern> = vec!["https://app.example.com".parse().unwrap(), "https://*.example.org".parse().unwrap()];
    let node = Node::start("origins", None, SecurityConfig { origins, ..Default::default() }).await;
    for ok in ["https://app.example.com", "https://a.example.org", "https://x.y.example.org"] {
        node.open("userId=alice", &[("origin", ok)]).await.unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    for bad in ["https://evil.com", "http://app.example.com", "https://app.example.com:8443", "https://example.org", "https://example.org.evil.com", "null"] {
        assert_eq!(node.open("userId=alice", &[("origin", bad)]).await.err(), Some((403, "origin not allowed".into())), "{bad}");
    }
    assert_eq!(node.refused("origin"), 6);
    // tungstenite sends no Origin: a non-browser client.
    node.connect("userId=alice").await;
    node.stop().await;
}

#[tokio::test]
async fn each_cap_refuses_and_the_node_stays_healthy() {
    let caps = Caps { max_connections: 4, per_user: 2, per_ip: 0 };
    let node = Node::start("caps", None, SecurityConfig { caps, ..Default::default() }).await;
    let a1 = node.connect("userId=alice").await;
    let _a2 = node.connect("userId=alice").await;
    assert_eq!(node.open("userId=alice", &[]).await.err(), Some((429, "too many connections for this user".into())));
    let mut bob = node.connect("userId=bob").await;
    let mut carol = node.connect("userId=carol").await;
    assert_eq!(node.open("userId=dave", &[]).await.err(), Some((503, "node full, try another".into())));
    assert_eq!(http_get(node.addr, "/ready").await.unwrap().0, 200, "a full node stays ready");
    assert_eq!((node.refused("user_limit"), node.refused("node_full")), (1, 1));
    // Still serving: the open connections talk, and a place freed is a place taken.
    bob.send(json!({"type":"chat_message","receiverID":"carol","payload":"hi","id":1})).await;
    assert_eq!(carol.recv().await["payload"], "hi");
    a1.close().await;
    let n = &node;
    eventually(RECV_TIMEOUT, "a freed place admits dave", || async move { n.open("userId=dave", &[]).await.is_ok() }).await;
    node.stop().await;

    let per_ip = Caps { max_connections: 0, per_user: 0, per_ip: 2 };
    let node = Node::start("caps-ip", None, SecurityConfig { caps: per_ip, ..Default::default() }).await;
    let _x = node.connect("userId=x").await;
    let mut y = node.connect("userId=y").await;
    assert_eq!(node.open("userId=z", &[]).await.err(), Some((429, "too many connections from this address".into())));
    y.send(json!({"type":"heartbeat","id":1})).await;
    assert_eq!(y.recv().await["type"], "ack");
    node.stop().await;
}

#[tokio::test]
async fn a_10x_connection_flood_holds_the_cap_exactly() {
    const CAP: usize = 50;
    let caps = Caps { max_connections: CAP, per_user: 0, per_ip: 0 };
    let node = Arc::new(Node::start("flood", None, SecurityConfig { caps, ..Default::default() }).await);
    let attempts: Vec<_> = (0..CAP * 10)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { node.open(&format!("userId=u{i}"), &[]).await.map(|(c, _)| c) })
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(c) => open.push(c),
            Err((503, _)) => refused += 1,
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    }
    assert_eq!((open.len(), refused), (CAP, CAP * 9));
    assert_eq!(node.metrics.active_connections.get(), CAP as i64);
    assert_eq!(http_get(node.addr, "/ready").await.unwrap().0, 200);
    // Every place comes back when the connections end.
    for c in open.drain(..) {
        c.close().await;
    }
    let m = node.metrics.clone();
    eventually(RECV_TIMEOUT, "all sessions gone", || {
        let m = m.clone();
        async move { m.active_connections.get() == 0 }
    })
    .await;
    for i in 0..CAP {
        open.push(node.connect(&format!("userId=again{i}")).await);
    }
    assert_eq!(node.open("userId=one-too-many", &[]).await.err().map(|e| e.0), Some(503));
    drop(open);
    Arc::into_inner(node).expect("no other handle").stop().await;
}

/// Percentile `p` (0-100) of `samples`, sorted in place.
fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * p / 100.0).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_limited_then_closed_while_a_normal_user_keeps_low_latency() {
    let redis = RedisServer::start();
    let rate = RateLimit { close_after: Duration::from_secs(2), ..RateLimit::recommended() };
    let security = SecurityConfig { rate, ..Default::default() };
    let a = Node::start("node-a", Some(redis.config()), security.clone()).await;
    let b = Node::start("node-b", Some(redis.config()), security).await;
    let mut alice = a.connect("userId=alice").await;
    let mut bob = b.connect("userId=bob").await;
    let mallory = a.connect("userId=mallory").await;

    let (mut tx, mut rx) = mallory.ws.split();
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        let frame = chat("bob", json!("spam")).to_string();
        let mut sent = 0u64;
        while tx.send(Message::text(frame.clone())).await.is_ok() {
            sent += 1;
        }
        sent
    });
    let watch = tokio::spawn(async move {
        let mut notices = 0;
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["code"] == "rate_limited" {
                        notices += 1;
                    }
                }
                Message::Close(f) => return (notices, f.map(|f| u16::from(f.code)), started.elapsed()),
                _ => {}
            }
        }
        (notices, None, started.elapsed())
    });

    // Alice sends one message every 20 ms to Bob on the other node for as long as the flood
    // lasts; Bob's receive time minus the send time is her latency.
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !watch.is_finished() {
        let sent_at = Instant::now();
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":{"n":n}})).await;
        loop {
            let got = bob.recv().await;
            if got["senderId"] == "alice" {
                assert_eq!(got["payload"]["n"], n);
                break;
            }
        }
        latencies.push(sent_at.elapsed().as_secs_f64() * 1000.0);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (notices, code, lasted) = watch.await.unwrap();
    let sent = tokio::time::timeout(RECV_TIMEOUT, flood).await.expect("the flooder's sends end with the close").unwrap();
    let p99 = percentile(&mut latencies, 99.0);
    let flood_rate = sent as f64 / lasted.as_secs_f64();
    eprintln!("flood: {sent} frames in {lasted:?} ({flood_rate:.0}/s), {notices} notices; alice: {} samples, p99 {p99:.1} ms", latencies.len());
    assert_eq!(code, Some(4029), "closed as rate limited");
    assert!(notices >= 1 && notices as f64 <= lasted.as_secs_f64() + 1.0, "{notices} notices in {lasted:?}: at most one a second");
    assert!(flood_rate > 10.0 * 50.0, "the flood was a flood ({flood_rate:.0}/s)");
    // Accepted from mallory: the burst plus the rate over the flood, never the flood itself.
    let accepted = a.metrics.messages.get() - n;
    assert!(accepted as f64 <= 100.0 + 50.0 * lasted.as_secs_f64() + 5.0, "accepted {accepted} of {sent}");
    assert!(a.metrics.rate_limited_frames.get() > 0);
    assert!(latencies.len() >= 20, "{} samples", latencies.len());
    assert!(p99 < 250.0, "alice's p99 during the flood: {p99:.1} ms");
    a.stop().await;
    b.stop().await;
}

/// Every frame with an `id` gets an answer, rate limited or not: a dropped one is answered
/// `rate_limited` with its id (read by the frame parser: an `"id":` inside a string is no id),
/// while frames without one keep the at-most-one-notice-a-second rule.
#[tokio::test]
async fn a_rate_limited_frame_with_an_id_is_answered_with_its_id() {
    // One token, refilled every 100 s: after the first frame every frame is dropped; the close
    // after sustained excess is far away.
    let rate = RateLimit { per_second: 0.01, burst: 1, close_after: Duration::from_secs(600) };
    let node = Node::start("rate-ids", None, SecurityConfig { rate, ..Default::default() }).await;
    let mut c = node.connect("userId=alice").await;
    let started = Instant::now();
    c.send(json!({"type":"heartbeat","id":0})).await;
    let mut want: Vec<Value> = vec![json!(0)];
    for i in 1..20 {
        c.send(json!({"type":"heartbeat","id":i})).await;
        want.push(json!(i));
        // Frames without a usable id in between: no id, an id only inside a string, broken JSON.
        c.send(json!({"type":"heartbeat"})).await;
        c.send(json!({"type":"chat_message","receiverID":"bob","payload":"\"id\":99"})).await;
        c.send_raw(Message::text("{\"type\":\"heartbeat\",\"id\":98")).await;
    }
    c.send_raw(Message::binary(json!({"type":"heartbeat","id":{"k":"bin"}}).to_string())).await;
    want.push(json!({"k":"bin"}));
    let mut got = Vec::new();
    let mut notices = 0;
    while got.len() < want.len() {
        let f = c.recv().await;
        match f.get("id") {
            Some(id) => {
                let kind = if got.is_empty() { "ack" } else { "error" };
                assert_eq!(f["type"], kind, "{f}");
                if kind == "error" {
                    assert_eq!(f["code"], "rate_limited", "{f}");
                }
                got.push(id.clone());
            }
            None => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                notices += 1;
            }
        }
    }
    assert_eq!(got, want, "one answer per id, in order");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(f64::from(notices) <= elapsed + 1.0, "{notices} id-less notices in {elapsed:.1} s: at most one a second");
    assert_eq!(node.metrics.rate_limited_frames.get(), 19 * 4 + 1);
    node.stop().await;
}

/// Client frames a hostile or broken client may send, each with the answer it must get: an
/// error `code`, or `ack`. The connection stays open through all of them.
fn hostile_frames() -> Vec<(String, &'static str)> {
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let s = |v: Value| v.to_string();
    vec![
        ("not json".into(), "bad_json"),
        ("".into(), "bad_json"),
        ("{".into(), "bad_json"),
        ("{\"type\":\"heartbeat\",}".into(), "bad_json"),
        ("[1,2,3]".into(), "not_object"),
        ("\"str\"".into(), "not_object"),
        ("null".into(), "not_object"),
        ("12".into(), "not_object"),
        ("{}".into(), "missing_type"),
        (s(json!({"type":null,"id":1})), "missing_type"),
        (s(json!({"type":"","id":1})), "missing_type"),
        (s(json!({"type":7,"id":1})), "bad_field"),
        (s(json!({"type":["chat_message"]})), "bad_field"),
        (s(json!({"type":{"a":1}})), "bad_field"),
        (s(json!({"type":true})), "bad_field"),
        (s(json!({"type":"teleport","id":1})), "unknown_type"),
        (s(json!({"type":"chat_message","payload":1,"id":1})), "missing_receiver"),
        (s(json!({"type":"chat_message","receiverID":"","id":1})), "missing_receiver"),
        (s(json!({"type":"chat_message","receiverID":7,"id":1})), "bad_field"),
        (s(json!({"type":"chat_message","receiverID":["bob"],"id":1})), "bad_field"),
        (s(json!({"type":"chat_message","receiverID":"x".repeat(257),"id":1})), "bad_receiver"),
        (s(json!({"type":"chat_message","receiverID":"bob\n","id":1})), "bad_receiver"),
        (s(json!({"type":"chat_message","receiverID":"\u{1b}[2J","id":1})), "bad_receiver"),
        (s(json!({"type":"chat_message","receiverID":"a\u{0}b","id":1})), "bad_receiver"),
        (s(json!({"type":"chat_message","receiverID":"a\u{85}b","id":1})), "bad_receiver"),
        (s(json!({"type":"latency_report","payload":"fast","id":1})), "bad_payload"),
        (s(json!({"type":"latency_report","payload":-3,"id":1})), "bad_payload"),
        ("{\"type\":\"latency_report\",\"payload\":1e300,\"id\":1}".into(), "bad_payload"),
        ("{\"type\":\"latency_report\",\"payload\":1e400,\"id\":1}".into(), "bad_payload"),
        (s(json!({"type":"latency_report","payload":3_600_001,"id":1})), "bad_payload"),
        (s(json!({"type":"latency_report","payload":null,"id":1})), "bad_payload"),
        (s(json!({"type":"latency_report","id":1})), "bad_payload"),
        (format!("{{\"type\":\"chat_message\",\"receiverID\":\"bob\",\"payload\":{},\"id\":1}}", deep(200)), "too_deep"),
        (deep(5000), "too_deep"),
        (format!("{{\"type\":\"heartbeat\",\"x\":{}}}", deep(129)), "too_deep"),
        // Duplicate keys: the last wins, as in serde_json.
        ("{\"type\":\"heartbeat\",\"type\":\"teleport\",\"id\":1}".into(), "unknown_type"),
        // Accepted: a huge number as id is echoed verbatim; an escaped type is still the type;
        // a receiver of exactly MAX_USER_ID bytes; a payload nested just under the limit.
        ("{\"type\":\"heartbeat\",\"id\":123456789012345678901234567890123456789}".into(), "ack"),
        ("{\"type\":\"chat\\u005fmessage\",\"receiverID\":\"bob\",\"payload\":1,\"id\":1}".into(), "ack"),
        (s(json!({"type":"chat_message","receiverID":"x".repeat(256),"id":1})), "ack"),
        (format!("{{\"type\":\"chat_message\",\"receiverID\":\"bob\",\"payload\":{},\"id\":1}}", deep(127)), "ack"),
        (s(json!({"type":"latency_report","payload":3_600_000,"id":1})), "ack"),
    ]
}

#[tokio::test]
async fn hostile_frames_each_get_their_documented_answer() {
    let node = Node::start("hostile", None, SecurityConfig::default()).await;
    let mut c = node.connect("userId=alice").await;
    let _bob = node.connect("userId=bob").await;
    let corpus = hostile_frames();
    assert!(corpus.len() >= 30);
    let mut errors = 0;
    for (frame, want) in &corpus {
        c.send_raw(Message::text(frame.clone())).await;
        let got = c.recv().await;
        let shown: String = frame.chars().take(80).collect();
        if *want == "ack" {
            assert_eq!(got["type"], "ack", "{shown}: {got}");
        } else {
            errors += 1;
            assert_eq!((got["type"].as_str(), got["code"].as_str()), (Some("error"), Some(*want)), "{shown}: {got}");
        }
    }
    // A binary frame that is not UTF-8 is answered, not dropped.
    c.send_raw(Message::binary(vec![0xff, 0xfe, 0x7b])).await;
    assert_eq!(c.recv().await["code"], "invalid_utf8");
    assert_eq!(node.metrics.bad_frames.get(), errors + 1);
    assert_eq!(node.metrics.client_latency_ms.count(), 1, "only the in-range latency was recorded");
    c.send(json!({"type":"heartbeat","id":"still-open"})).await;
    assert_eq!(c.recv().await["id"], "still-open");
    node.stop().await;
}

#[tokio::test]
async fn hostile_handshakes_each_get_their_status() {
    let open = Node::start("open", None, SecurityConfig::default()).await;
    let long = "x".repeat(257);
    let cases: Vec<(String, u16)> = vec![
        (String::new(), 400),
        ("userId=".into(), 400),
        (format!("userId={long}"), 400),
        ("userId=a%0Ab".into(), 400),
        ("userId=%1B%5B2J".into(), 400),
        ("userId=a%00b".into(), 400),
        ("userId=a%C2%85b".into(), 400),
        ("userId=a%7Fb".into(), 400),
        (format!("userId={}", "x".repeat(256)), 101),
        ("userId=%E7%94%A8%E6%88%B7".into(), 101),
    ];
    for (q, want) in &cases {
        let got = open.open(q, &[]).await.map(|_| 101).unwrap_or_else(|e| e.0);
        assert_eq!(got, *want, "/ws?{q}");
    }
    assert_eq!(open.refused("bad_user_id") + open.refused("missing_user"), 8);
    open.stop().await;

    let auth = Node::start("auth", None, auth_on()).await;
    let exp = now_s() + 600;
    let t = |claims: Value| signed(claims, Algorithm::HS256, SECRET);
    // (query, headers, expected status)
    type Case<'a> = (String, Vec<(&'a str, String)>, u16);
    let cases: Vec<Case> = vec![
        ("token=abc".into(), vec![], 401),
        ("token=a.b.c".into(), vec![], 401),
        (String::new(), vec![("authorization", "Basic YWxpY2U6eA==".into())], 401),
        (String::new(), vec![("authorization", "Bearer ".into())], 401),
        (String::new(), vec![("sec-websocket-protocol", "wsctl.bearer".into())], 401),
        (format!("token={}", t(json!({"sub":"x".repeat(300),"exp":exp}))), vec![], 401),
        (format!("token={}", t(json!({"sub":"a\nb","exp":exp}))), vec![], 401),
        (format!("token={}", t(json!({"sub":"alice","exp":"tomorrow"}))), vec![], 401),
        (format!("token={}", t(json!({"sub":"alice"}))), vec![], 401),
        (format!("token={}", t(json!({"exp":exp}))), vec![], 401),
        (format!("token={}", t(json!({"sub":"alice","exp":exp,"nbf":now_s() + 600}))), vec![], 401),
        (format!("token={}&userId=bob", t(json!({"sub":"alice","exp":exp}))), vec![], 403),
        (format!("token={}", t(json!({"sub":"alice","exp":exp}))), vec![], 101),
    ];
    for (q, headers, want) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = auth.open(q, &h).await.map(|_| 101).unwrap_or_else(|e| e.0);
        assert_eq!(got, *want, "/ws?{q} {headers:?}");
    }
    assert_eq!(auth.refused("token_not_yet_valid"), 1);
    auth.stop().await;
}

#[tokio::test]
async fn a_slow_or_oversized_request_head_is_cut_off() {
    let http = HttpLimits { header_read_timeout: Duration::from_millis(500), ..HttpLimits::default() };
    let node = Node::start("slow", None, SecurityConfig { http, ..Default::default() }).await;
    // Slowloris: a request line, then one header byte every 100 ms, forever.
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET /ws?userId=a HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let cut = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X").await.is_err() {
            break start.elapsed();
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "a trickling request head was never cut off");
    };
    assert!(cut >= Duration::from_millis(400), "cut after {cut:?}, before the timeout");
    // A connection that never sends a byte is closed too.
    let mut idle = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.expect("idle connection closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    // A 20 KiB header: 431, not buffered.
    let mut big = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let cookie = "c".repeat(20 * 1024);
    big.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n").as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut resp)).await;
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 431"), "{}", String::from_utf8_lossy(&resp));
    // The node still serves.
    assert_eq!(http_get(node.addr, "/health").await.unwrap().0, 200);
    node.connect("userId=alice").await;
    node.stop().await;
}

/// The figures scripts/bench-security prints (ignored in normal runs): a connection flood
/// against the node cap, a message flood against a normal user's p99 (rate limit on and off),
/// and the cost of token auth on connect time. Each is the median of 3 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-security"]
async fn bench_security_figures() {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut flood = Vec::new();
    for _ in 0..3 {
        flood.push(connection_flood(500, 5000).await);
    }
    let refused = median(flood.iter().map(|f| f.1 as f64).collect());
    let accepted = median(flood.iter().map(|f| f.0 as f64).collect());
    let secs = median(flood.iter().map(|f| f.2).collect());
    println!("BENCH connection flood: 5000 attempts (500 at a time) against --max-connections 500: accepted {accepted:.0}, refused 503 {refused:.0}, other failures {}, {secs:.2} s; /ready 200 and a new user connects and delivers after: {}", flood.iter().map(|f| f.3).sum::<usize>(), flood.iter().all(|f| f.4));

    for limited in [true, false] {
        let runs: Vec<(f64, f64, f64)> = {
            let mut r = Vec::new();
            for _ in 0..3 {
                r.push(message_flood(limited).await);
            }
            r
        };
        let (rate, p99, base) = (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
            median(runs.iter().map(|r| r.2).collect()),
        );
        println!(
            "BENCH message flood, rate limit {}: attacker sent {rate:.0} frames/s; normal user's p99 {p99:.1} ms during the flood (same user without a flood: {base:.1} ms)",
            if limited { "on (50/s, burst 100)" } else { "off" }
        );
    }

    let mut off = Vec::new();
    let mut on = Vec::new();
    for _ in 0..3 {
        let (a, b) = connect_cost(300).await;
        off.push(a);
        on.push(b);
    }
    println!(
        "BENCH connect time, 300 sequential connects each, interleaved: p50/p99 without token {:.2}/{:.2} ms, with HS256 token {:.2}/{:.2} ms",
        median(off.iter().map(|x| x.0).collect()),
        median(off.iter().map(|x| x.1).collect()),
        median(on.iter().map(|x| x.0).collect()),
        median(on.iter().map(|x| x.1).collect()),
    );
}

/// (accepted, refused, seconds, other failures, healthy after)
async fn connection_flood(cap: usize, attempts: usize) -> (usize, usize, f64, usize, bool) {
    let caps = Caps { max_connections: cap, per_user: 0, per_ip: 0 };
    let node = Arc::new(Node::start("flood", None, SecurityConfig { caps, ..Default::default() }).await);
    let gate = Arc::new(tokio::sync::Semaphore::new(500));
    let start = Instant::now();
    let tasks: Vec<_> = (0..attempts)
        .map(|i| {
            let (node, gate) = (node.clone(), gate.clone());
            tokio::spawn(async move {
                let _p = gate.acquire().await.unwrap();
                node.open(&format!("userId=f{i}"), &[]).await.map(|(c, _)| c).map_err(|e| e.0)
            })
        })
        .collect();
    let (mut open, mut refused, mut other) = (Vec::new(), 0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => open.push(c),
            Ok(Err(503)) => refused += 1,
            _ => other += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ready = http_get(node.addr, "/ready").await.map(|r| r.0).ok() == Some(200);
    let accepted = open.len();
    drop(open);
    let n = &node;
    eventually(Duration::from_secs(10), "flood connections gone", || async move { n.metrics.active_connections.get() == 0 }).await;
    let mut a = node.connect("userId=after-a").await;
    let mut b = node.connect("userId=after-b").await;
    a.send(chat("after-b", json!("ok"))).await;
    let delivered = b.recv().await["payload"] == "ok";
    Arc::into_inner(node).unwrap().stop().await;
    (accepted, refused, secs, other, ready && delivered)
}

/// One normal user's round trips to another node while `mallory` floods: (attacker frames/s,
/// p99 ms during the flood, p99 ms before it).
async fn message_flood(limited: bool) -> (f64, f64, f64) {
    let redis = RedisServer::start();
    let rate = if limited { RateLimit::recommended() } else { RateLimit::default() };
    let security = SecurityConfig { rate, ..Default::default() };
    let a = Node::start("node-a", Some(redis.config()), security.clone()).await;
    let b = Node::start("node-b", Some(redis.config()), security).await;
    let mut alice = a.connect("userId=alice").await;
    let mut bob = b.connect("userId=bob").await;
    let mut n = 0u64;
    async fn round_trip(alice: &mut Client, bob: &mut Client, n: u64) -> f64 {
        let t = Instant::now();
        alice.send(json!({"type":"chat_message","receiverID":"bob","payload":{"n":n}})).await;
        while bob.recv().await["senderId"] != "alice" {}
        t.elapsed().as_secs_f64() * 1000.0
    }
    let mut base = Vec::new();
    for _ in 0..100 {
        base.push(round_trip(&mut alice, &mut bob, n).await);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mallory = a.connect("userId=mallory").await;
    let (mut tx, mut rx) = mallory.ws.split();
    let stop = CancellationToken::new();
    let stop2 = stop.clone();
    let start = Instant::now();
    let flood = tokio::spawn(async move {
        // Mallory floods an offline user, so every accepted frame costs a Redis route lookup.
        let frame = chat("nobody", json!("spam")).to_string();
        let mut sent = 0u64;
        while !stop2.is_cancelled() && tx.send(Message::text(frame.clone())).await.is_ok() {
            sent += 1;
        }
        (sent, start.elapsed())
    });
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let mut during = Vec::new();
    // Five seconds: with the limit on, mallory is closed at about that point.
    while start.elapsed() < Duration::from_secs(5) && !flood.is_finished() {
        during.push(round_trip(&mut alice, &mut bob, n).await);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let (sent, lasted) = flood.await.unwrap();
    drain.abort();
    let p99 = percentile(&mut during, 99.0);
    let base = percentile(&mut base, 99.0);
    a.stop().await;
    b.stop().await;
    (sent as f64 / lasted.as_secs_f64(), p99, base)
}

/// p50/p99 connect time, ms, to a node without auth and one with HS256, interleaved.
async fn connect_cost(n: usize) -> ((f64, f64), (f64, f64)) {
    let plain = Node::start("plain", None, SecurityConfig::default()).await;
    let authed = Node::start("authed", None, auth_on()).await;
    let t = token("alice", Duration::from_secs(3600));
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..n {
        let s = Instant::now();
        let c = plain.connect(&format!("userId=u{i}")).await;
        off.push(s.elapsed().as_secs_f64() * 1000.0);
        c.close().await;
        let s = Instant::now();
        let c = authed.connect(&format!("token={t}")).await;
        on.push(s.elapsed().as_secs_f64() * 1000.0);
        c.close().await;
    }
    plain.stop().await;
    authed.stop().await;
    ((percentile(&mut off, 50.0), percentile(&mut off, 99.0)), (percentile(&mut on, 50.0), percentile(&mut on, 99.0)))
}

/// Starts the `wsctl serve` binary on a free port; returns it, its address and its log lines.
fn serve_binary(envs: &[(&str, &str)]) -> (std::process::Child, String, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl"));
    cmd.args(["serve", "--bind", "127.0.0.1", "--port", "0"]).env_remove("JWT_SECRET").env("RUST_LOG", "info");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = Vec::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    // The admission line comes right after the listening line.
    let addr = loop {
        let line = stderr.next().expect("serve logs its startup").unwrap();
        lines.push(line.clone());
        if line.contains("admission limits") {
            let listening = lines.iter().find(|l| l.contains("listening on ws://")).expect("listening line");
            let addr = listening.split("ws://").nth(1).unwrap().split('/').next().unwrap().to_string();
            break addr;
        }
    };
    (child, addr, lines)
}

#[tokio::test]
async fn the_binary_warns_when_auth_is_off_and_accepts_what_wsctl_token_mints() {
    let (mut open, _, lines) = serve_binary(&[]);
    let warn = lines.iter().find(|l| l.contains("auth: OFF")).expect("an auth: OFF line");
    assert!(warn.contains("WARN") && warn.contains("set JWT_SECRET or --jwt-public-key"), "{warn}");
    open.kill().unwrap();
    let _ = open.wait();

    let (mut node, addr, lines) = serve_binary(&[("JWT_SECRET", SECRET)]);
    assert!(lines.iter().any(|l| l.contains("auth: on")), "{lines:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["token", "--user", "alice", "--ttl", "10m", "--json"])
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let minted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(minted["user"], "alice");
    let exp = minted["expires_at"].as_u64().unwrap();
    assert!((now_s() + 590..=now_s() + 600).contains(&exp), "expires in 10 minutes: {exp}");
    let mut alice = Client::connect(&format!("ws://{addr}/ws?token={}", minted["token"].as_str().unwrap())).await;
    alice.send(json!({"type":"heartbeat","id":1})).await;
    assert_eq!(alice.recv().await["type"], "ack");
    assert_eq!(http_get(addr.parse().unwrap(), "/ws?userId=alice").await.unwrap().0, 401, "a userId alone is not enough");
    node.kill().unwrap();
    let _ = node.wait();
}

/// Runs `wsctl serve` on a free port with `envs` and `args`, expecting it to refuse to start:
/// returns its exit code and stderr. A node that starts instead is killed after a bound and the
/// test fails.
async fn serve_refuses(envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsctl"));
    cmd.args(["serve", "--bind", "127.0.0.1", "--port", "0"]).args(args).env_remove("JWT_SECRET").kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("serve with {envs:?} {args:?} started instead of refusing"))
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Auth never fails open: an empty or whitespace-only key (an empty secret mount) is a
/// configuration error naming the setting, exit 2, not "auth off".
#[tokio::test]
async fn an_empty_key_is_refused_at_start_naming_the_setting() {
    for secret in ["", "   ", "\n", " \t\r\n"] {
        let (code, err) = serve_refuses(&[("JWT_SECRET", secret)], &[]).await;
        assert_eq!(code, Some(2), "JWT_SECRET={secret:?}: {err}");
        assert!(err.contains("JWT_SECRET") && err.contains("empty"), "JWT_SECRET={secret:?}: {err}");
    }
    let (code, err) = serve_refuses(&[], &["--jwt-secret", ""]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--jwt-secret") && err.contains("empty"), "{err}");
    for contents in ["", " \n\n"] {
        let pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(pem.path(), contents).unwrap();
        let (code, err) = serve_refuses(&[], &["--jwt-public-key", pem.path().to_str().unwrap()]).await;
        assert_eq!(code, Some(2), "{contents:?}: {err}");
        assert!(err.contains("--jwt-public-key") && err.contains("empty"), "{contents:?}: {err}");
    }
    // An audience or issuer without a key would check nothing.
    let (code, err) = serve_refuses(&[("WSS_JWT_AUDIENCE", "chat")], &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--jwt-audience"), "{err}");
    let (code, err) = serve_refuses(&[("JWT_SECRET", SECRET)], &["--jwt-issuer", " "]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--jwt-issuer") && err.contains("empty"), "{err}");
}

/// With `--jwt-audience` / `--jwt-issuer` set, a token must carry that `aud` and `iss`: one
/// without either, or naming another, is 401 (counted as wrong_audience / wrong_issuer).
#[tokio::test]
async fn audience_and_issuer_are_checked_when_set() {
    let auth = Authenticator::hs256(SECRET.as_bytes()).unwrap().require_audience("chat").unwrap().require_issuer("https://login.example").unwrap();
    let node = Node::start("aud", None, SecurityConfig { auth: Some(Arc::new(auth)), ..Default::default() }).await;
    let exp = now_s() + 600;
    let iss = "https://login.example";
    let with = |claims: Value| format!("token={}", signed(claims, Algorithm::HS256, SECRET));
    let cases = [
        (with(json!({"sub":"alice","exp":exp,"iss":iss})), "token audience not accepted", "wrong_audience"),
        (with(json!({"sub":"alice","exp":exp,"iss":iss,"aud":"billing"})), "token audience not accepted", "wrong_audience"),
        (with(json!({"sub":"alice","exp":exp,"iss":iss,"aud":["billing","admin"]})), "token audience not accepted", "wrong_audience"),
        (with(json!({"sub":"alice","exp":exp,"aud":"chat"})), "token issuer not accepted", "wrong_issuer"),
        (with(json!({"sub":"alice","exp":exp,"aud":"chat","iss":"https://evil.example"})), "token issuer not accepted", "wrong_issuer"),
    ];
    for (query, body, reason) in &cases {
        let before = node.refused(reason);
        assert_eq!(node.open(query, &[]).await.err(), Some((401, body.to_string())), "{query}");
        assert_eq!(node.refused(reason), before + 1, "counted as {reason}");
    }
    // What wsctl token mints without --audience/--issuer: neither claim.
    assert_eq!(node.open(&format!("token={}", token("alice", Duration::from_secs(600))), &[]).await.err().map(|e| e.0), Some(401));
    let mut alice = node.connect(&with(json!({"sub":"alice","exp":exp,"iss":iss,"aud":"chat"}))).await;
    node.connect(&with(json!({"sub":"bob","exp":exp,"iss":iss,"aud":["other","chat"]}))).await;
    alice.send(json!({"type":"heartbeat","id":1})).await;
    assert_eq!(alice.recv().await["type"], "ack");
    node.stop().await;

    // The binary: the flags' variables, `wsctl token --audience --issuer`, and --print-config.
    let envs = [("JWT_SECRET", SECRET), ("WSS_JWT_AUDIENCE", "chat"), ("WSS_JWT_ISSUER", iss)];
    let (mut child, addr, lines) = serve_binary(&envs);
    let on = lines.iter().find(|l| l.contains("auth: on")).expect("an auth: on line");
    assert!(on.contains("chat") && on.contains(iss), "{on}");
    let mint = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl"))
            .args(["token", "--user", "alice"])
            .args(extra)
            .env("JWT_SECRET", SECRET)
            .env_remove("WSS_JWT_AUDIENCE")
            .env_remove("WSS_JWT_ISSUER")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let good = mint(&["--audience", "chat", "--issuer", iss]);
    Client::connect(&format!("ws://{addr}/ws?token={good}")).await.close().await;
    let plain = mint(&[]);
    assert_eq!(http_get(addr.parse().unwrap(), &format!("/ws?token={plain}")).await.unwrap().0, 401);
    child.kill().unwrap();
    let _ = child.wait();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl")).args(["serve", "--print-config"]).envs(envs).output().unwrap();
    let print = String::from_utf8_lossy(&out.stdout);
    for key in ["jwt-audience", "jwt-issuer"] {
        assert!(print.lines().any(|l| l.starts_with(key)), "{key} in --print-config:\n{print}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl")).args(["config", "default"]).output().unwrap();
    let default = String::from_utf8_lossy(&out.stdout);
    assert!(default.contains("jwt-audience") && default.contains("jwt-issuer"), "{default}");
}

/// One clock and one rule for expiry: the handshake refuses a token from `exp` + leeway on, the
/// instant its connection is closed with 1008, so a client reconnecting with the same token is
/// refused 401 rather than accepted and closed again (it used to be accepted for up to a second
/// more, and looped).
#[tokio::test]
async fn after_the_expiry_close_the_same_token_is_refused() {
    let node = Node::start("expiry", None, auth_on()).await;
    // exp + leeway 1-2 s from now.
    let exp = now_s() + 2 - TOKEN_LEEWAY.as_secs();
    let t = signed(json!({"sub":"alice","exp":exp}), Algorithm::HS256, SECRET);
    let mut c = node.connect(&format!("token={t}")).await;
    let (_, closed) = c.until_closed(Duration::from_secs(10)).await;
    assert_eq!(closed, Closed::Code(1008));
    let deadline = UNIX_EPOCH + Duration::from_secs(exp) + TOKEN_LEEWAY;
    assert!(SystemTime::now() >= deadline, "closed before exp + leeway");
    let before = node.refused("expired_token");
    for _ in 0..20 {
        assert_eq!(node.open(&format!("token={t}"), &[]).await.err(), Some((401, "token expired".to_string())), "reconnect with the expired token");
    }
    assert_eq!(node.refused("expired_token"), before + 20);
    node.stop().await;
}

/// The `wss_connections_refused_total` counter for `reason` on a node's registry.
fn refused_count(metrics: &Metrics, reason: &str) -> u64 {
    let key = format!("wss_connections_refused_total{{reason=\"{reason}\"}} ");
    metrics.render().lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |v| v.trim().parse().unwrap())
}

/// Sends a raw request head and reads the answer until the server closes.
async fn raw_request(addr: SocketAddr, head: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut resp)).await;
    String::from_utf8_lossy(&resp).into_owned()
}

/// docs/security.md: "every refusal is counted", including the ones outside admission: a
/// request head too large (431), a `since` that is not an offset (400), a request to /ws that
/// is not an upgrade, and an upgrade that arrives while the node drains (503).
#[tokio::test]
async fn every_refusal_is_counted() {
    let node = Node::start("refusals", None, SecurityConfig::default()).await;
    let cookie = "c".repeat(20 * 1024);
    let resp = raw_request(node.addr, &format!("GET /health HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(refused_count(&node.metrics, "headers_too_large"), 1);
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw_request(node.addr, &format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(refused_count(&node.metrics, "headers_too_large"), 2);

    assert_eq!(node.open("userId=alice&since=yesterday", &[]).await.err().map(|e| e.0), Some(400));
    assert_eq!(node.refused("bad_since"), 1);
    let (status, _) = http_get(node.addr, "/ws?userId=alice").await.unwrap();
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(node.refused("not_websocket"), 1);

    // Draining: a request head begun before the drain and finished after it.
    let mut held = node.connect("userId=bob").await;
    let mut late = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    late.write_all(b"GET /ws?userId=carol HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Served: the first bytes are in (the node answers /health on another connection after them).
    assert_eq!(http_get(node.addr, "/health").await.unwrap().0, 200);
    node.shutdown.cancel();
    // The 1012 sweep comes after the node marked itself draining.
    let (_, closed) = held.until_closed(Duration::from_secs(10)).await;
    assert_eq!(closed, Closed::Code(1012));
    late.write_all(b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, late.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert_eq!(refused_count(&node.metrics, "draining"), 1);
    node.stop().await;
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sockets before the upgrade are capped (`--max-pending-handshakes`): idle sockets past the cap
/// close the oldest at once (counted), long before the header timeout, and a client that
/// connects while the cap is full of idle sockets still gets its WebSocket.
#[tokio::test]
async fn idle_sockets_past_the_pending_cap_close_the_oldest_and_a_client_still_connects() {
    const CAP: usize = 8;
    let http = HttpLimits { header_read_timeout: Duration::from_secs(60), max_pending: CAP, ..HttpLimits::default() };
    let node = Node::start("pending", None, SecurityConfig { http, ..Default::default() }).await;
    let pending = |m: &Metrics| -> i64 {
        m.render().lines().find_map(|l| l.strip_prefix("wss_pending_handshakes ")).map_or(-1, |v| v.trim().parse().unwrap())
    };
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(tokio::net::TcpStream::connect(node.addr).await.unwrap());
    }
    let m = node.metrics.clone();
    eventually(RECV_TIMEOUT, "the node holds CAP pending sockets", || {
        let m = m.clone();
        async move { pending(&m) == CAP as i64 }
    })
    .await;
    // The cap is full of sockets that send nothing; a real client still connects and works.
    let mut alice = node.connect("userId=alice").await;
    alice.send(json!({"type":"heartbeat","id":1})).await;
    assert_eq!(alice.recv().await["type"], "ack");
    assert!(closed_within(&mut idle[0], Duration::from_secs(5)).await, "the oldest idle socket was closed to make room");
    assert!(refused_count(&node.metrics, "pending_handshakes") >= 1);
    // CAP more idle sockets: each closes an older one; the node never holds more than CAP.
    for _ in 0..CAP {
        idle.push(tokio::net::TcpStream::connect(node.addr).await.unwrap());
    }
    for (i, s) in idle.iter_mut().enumerate().take(CAP).skip(1) {
        assert!(closed_within(s, Duration::from_secs(5)).await, "idle socket {i} still open past the cap");
    }
    let m = node.metrics.clone();
    eventually(RECV_TIMEOUT, "CAP pending sockets, the newest", || {
        let m = m.clone();
        async move { pending(&m) == CAP as i64 }
    })
    .await;
    // One for alice, then CAP - 1 for the second batch (the first of it filled alice's place).
    assert_eq!(refused_count(&node.metrics, "pending_handshakes"), CAP as u64);
    assert_eq!(http_get(node.addr, "/health").await.unwrap().0, 200);
    node.stop().await;
}

/// A child process killed when dropped (a failed assertion must not leave a node running).
struct Reap(Option<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `--metrics-addr` uses the node's accept loop: the same header timeout (a socket that sends
/// nothing or half a request is closed at it), and the node's exit never waits for a metrics
/// connection: SIGTERM with such sockets open exits 0 within the drain's bound.
#[tokio::test]
async fn a_half_open_metrics_connection_neither_lingers_nor_holds_up_the_exit() {
    let maddr = format!("127.0.0.1:{}", free_port());
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_wsctl"))
        .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--metrics-addr", &maddr, "--header-timeout", "1s", "--drain-timeout", "2s"])
        .env_remove("JWT_SECRET")
        .env("RUST_LOG", "wsctl=debug")
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    // Killed if an assertion fails before the node is stopped.
    let mut child = Reap(Some(child));
    let maddr: SocketAddr = maddr.parse().unwrap();
    let up = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(maddr, "/metrics").await, Ok((200, _))) {
        assert!(Instant::now() < up && child.0.as_mut().unwrap().try_wait().unwrap().is_none(), "the node did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The header timeout applies: half a request is closed after ~1 s, not held forever.
    let mut half = tokio::net::TcpStream::connect(maddr).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHo").await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut half, Duration::from_secs(5)).await, "half a request on the metrics port was never cut off");
    assert!(started.elapsed() >= Duration::from_millis(800), "cut after {:?}, before the header timeout", started.elapsed());
    // The exit does not wait for a silent socket or half a request.
    let _silent = tokio::net::TcpStream::connect(maddr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(maddr).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHo").await.unwrap();
    assert_eq!(http_get(maddr, "/health").await.unwrap().0, 200, "the sockets above were accepted first");
    let mut child = child.0.take().unwrap();
    let kill = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let stopped = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let log = std::fs::read_to_string(log.path()).unwrap();
    let code = code.unwrap_or_else(|| panic!("the node did not exit within 10 s of SIGTERM:\n{log}"));
    assert!(code.success(), "{code}");
    // The drain with no clients takes milliseconds; its bound is 2 s. The half request would
    // otherwise hold the exit until the header timeout, or for ever.
    assert!(stopped.elapsed() < Duration::from_millis(900), "exit took {:?}", stopped.elapsed());
}
