//! Test support: real `redis-server` processes (standalone, and a 3-master Cluster made with
//! `redis-cli --cluster create`) on free loopback ports, in-process `wsctl serve` nodes on port 0,
//! and a small real WebSocket client; [`load`] runs the load engine in process and [`ws`] is the
//! plumbing of the load tests' stand-in WebSocket servers. A test that needs Redis and cannot
//! find it fails with the command to install it; it never skips.
#![allow(dead_code)]

pub mod load;
pub mod moto;
pub mod ws;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsctl::{Limits, Metrics, RedisConfig, ServerConfig};

/// How long a test waits for a frame it expects before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a started redis-server may take to answer PING.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

const INSTALL_HINT: &str = "redis-server not found on PATH. Install it (Debian/Ubuntu: \
     `sudo apt-get install -y redis-server redis-tools`) or run `scripts/test`, which installs it.";

fn redis_binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("{INSTALL_HINT} (looked for `{name}`)"))
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends one inline command to a Redis on `port` and returns the raw reply (test plumbing only).
pub fn redis_raw(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut buf = [0u8; 8192];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_for_pong(port: u16) {
    let deadline = Instant::now() + REDIS_START_TIMEOUT;
    while Instant::now() < deadline {
        if redis_raw(port, "PING").is_ok_and(|r| r.starts_with("+PONG")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within {REDIS_START_TIMEOUT:?}");
}

/// One `redis-server` process, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// A standalone Redis on a free port, no persistence.
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new())
    }

    pub fn start_with(extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None, extra };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(redis_binary("redis-server"));
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot start redis-server: {e}. {INSTALL_HINT}")));
        wait_for_pong(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn config(&self) -> RedisConfig {
        RedisConfig { url: self.url(), ..Default::default() }
    }

    /// Kills the process (SIGKILL): its data is gone, as after a crash without persistence.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs a command through `redis-cli` and returns its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(redis_binary("redis-cli"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-master Redis Cluster on free ports, made with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(
                    ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"]
                        .map(String::from)
                        .to_vec(),
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new(redis_binary("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info = redis_raw(n.port, "CLUSTER INFO").unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not reach state ok: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn url(&self) -> String {
        let first = &self.nodes[0];
        let rest: Vec<String> = self.nodes[1..].iter().map(|n| format!("node=127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", first.port, rest.join("&"))
    }

    pub fn config(&self) -> RedisConfig {
        RedisConfig { url: self.url(), ..Default::default() }
    }
}

/// Limits for tests: the defaults with short timeouts.
pub fn test_limits() -> Limits {
    Limits { drain_timeout: Duration::from_secs(5), ..Limits::default() }
}

/// An in-process `wsctl serve` node on 127.0.0.1:0.
pub struct TestNode {
    pub addr: SocketAddr,
    pub id: String,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), wsctl::ServerError>>>,
}

impl TestNode {
    pub async fn start(id: &str, redis: Option<RedisConfig>) -> TestNode {
        Self::start_with(id, redis, test_limits()).await
    }

    pub async fn start_with(id: &str, redis: Option<RedisConfig>, limits: Limits) -> TestNode {
        Self::start_config(ServerConfig { redis, limits, ..ServerConfig::embedded(id) }).await
    }

    /// A node with any configuration (e.g. an API key).
    /// A node with per-user history (`--history`) on `redis`.
    pub async fn start_history(id: &str, redis: RedisConfig, history: wsctl::broker::HistoryConfig) -> TestNode {
        Self::start_config(ServerConfig { redis: Some(redis), limits: test_limits(), history: Some(history), ..ServerConfig::embedded(id) }).await
    }

    pub async fn start_config(config: ServerConfig) -> TestNode {
        init_logs();
        let id = config.server_id.clone();
        let id = id.as_str();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let handle = tokio::spawn(wsctl::server::serve_with_metrics(listener, config, metrics.clone(), shutdown.clone()));
        let node = TestNode { addr, id: id.to_string(), metrics, shutdown, handle: Some(handle) };
        node.wait_ready().await;
        node
    }

    /// Waits until `/health` answers (the broker connects before the router runs).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((status, _)) = http_get(self.addr, "/health").await {
                if status == 200 {
                    return;
                }
            }
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) || Instant::now() > deadline {
                panic!("node {} did not come up", self.id);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/ws?userId={user}", self.addr)
    }

    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(user)).await
    }

    /// Cancels the node and waits for its drain to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), h).await.expect("node drains in time").unwrap().unwrap();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A minimal HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok(parse_http_response(&buf))
}

/// One HTTP/1.1 request with a JSON body, and `Authorization: Bearer <key>` when given; returns
/// the status and the body as JSON (Null if it is not JSON).
pub async fn http_json(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let (status, body) = parse_http_response(&buf);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The status and body of a raw HTTP/1.1 response (status 0 if there is no status line).
pub fn parse_http_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A real WebSocket client (tokio-tungstenite) over loopback.
pub struct Client {
    pub ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    /// Frames read by `recv_chat`/`recv_ack` while looking for another type.
    pending: Vec<Value>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16),
    NoFrame,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client { ws, pending: Vec::new() }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next text/binary frame as JSON, skipping pings; panics after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Value {
        if !self.pending.is_empty() {
            return self.pending.remove(0);
        }
        self.recv_direct().await
    }

    async fn recv_direct(&mut self) -> Value {
        self.try_recv(RECV_TIMEOUT).await.expect("expected a frame, got none in time")
    }

    /// The next JSON frame within `wait`, or None.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??;
            match msg {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("server sent JSON")),
                Ok(Message::Binary(b)) => return Some(serde_json::from_slice(&b).expect("server sent JSON")),
                Ok(Message::Close(f)) => panic!("expected a frame, got close {f:?}"),
                Ok(_) => continue,
                Err(e) => panic!("expected a frame, got error {e}"),
            }
        }
    }

    /// The next frame of type `chat_message`, skipping acks (which may arrive in any order
    /// relative to chat frames from other senders).
    pub async fn recv_chat(&mut self) -> Value {
        self.recv_type("chat_message").await
    }

    /// The next `ack` frame, skipping chat frames.
    pub async fn recv_ack(&mut self) -> Value {
        self.recv_type("ack").await
    }

    async fn recv_type(&mut self, kind: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|f| f["type"] == kind) {
            return self.pending.remove(i);
        }
        loop {
            let f = self.recv_direct().await;
            if f["type"] == kind {
                return f;
            }
            self.pending.push(f);
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match msg {
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns the frames received before and the close code.
    pub async fn until_closed(&mut self, wait: Duration) -> (Vec<Value>, Closed) {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.expect("server did not close in time");
            match msg {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(Some(f)))) => return (frames, Closed::Code(u16::from(f.code))),
                Some(Ok(Message::Close(None))) | None => return (frames, Closed::NoFrame),
                Some(Err(e)) => {
                    eprintln!("connection ended with an error: {e}");
                    return (frames, Closed::NoFrame);
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read until the server acknowledges, so the server sees a clean close.
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while self.ws.next().await.is_some() {} }).await;
    }
}

/// `CloseCode` to its number (re-exported for tests that inspect codes).
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// A chat message frame.
pub fn chat(to: &str, payload: Value) -> Value {
    serde_json::json!({"type": "chat_message", "receiverID": to, "payload": payload})
}

/// Polls `f` until it returns true or `wait` passes.
pub async fn eventually<F, Fut>(wait: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + wait;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Logs from the nodes under test, shown for failing tests (`RUST_LOG` filters; default warn).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

impl Client {
    /// Wraps a stream connected by the caller (custom headers, subprotocols).
    pub fn from_ws(ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>) -> Client {
        Client { ws, pending: Vec::new() }
    }
}
