//! `wsctl serve`: the HTTP router (`/ws`, `/health`, `/ready`, `/metrics`), the node that ties
//! hub, broker and metrics together, and the drain on shutdown. The server takes a bound listener
//! and a cancellation token; it never binds a port itself.
//!
//! Before the upgrade: [`http`] (the accept loop and its handshake limits), [`admission`]
//! (origins, user, connection caps) and [`auth`] (tokens). After it: `session`, which checks
//! each frame against [`ratelimit`].

pub mod api;
pub mod admission;
pub mod auth;
pub mod http;
pub mod ratelimit;
mod deliver;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;

use crate::broker::{Broker, BrokerError, HistoryConfig, MemoryBroker, RedisBroker};
use crate::hub::{CloseReason, Hub, Outbox};
use crate::metrics::Metrics;
use crate::redis::RedisConfig;

/// Frames queued to one connection before it counts as a slow consumer and is closed with 4008.
/// 1024 frames is ~1 s of a busy chat receiver; a client that falls that far behind is not
/// reading, and holding more only delays the inevitable while it eats memory.
pub const SEND_QUEUE: usize = 1024;
/// Largest frame (and message) a client may send: 64 KiB. Chat envelopes are small; larger
/// frames are answered `too_large` and closed with 1009.
pub const MAX_FRAME: usize = 64 * 1024;
/// tungstenite's read buffer. Its default, 128 KiB, is allocated eagerly: 135 KiB RSS per idle
/// connection here. Chat frames are 100-300 bytes, so 1 KiB still takes several per read; a
/// burst costs one more syscall per KiB, while 10k idle connections save 10 MB.
pub const READ_BUFFER: usize = 1024;
/// tungstenite's write buffer: frames are batched up to this before a syscall.
pub const WRITE_BUFFER: usize = 4 * 1024;
/// Bytes queued to one connection before it counts as a slow consumer (4008), whatever the frame
/// count: without it, 1,024 frames of 64 KiB would hold 64 MiB for one client that does not read.
/// 1 MiB is thousands of chat envelopes and sixteen frames of the maximum size.
pub const SEND_QUEUE_BYTES: usize = 1024 * 1024;
/// What an envelope adds around a client's frame at most: sender and receiver ids (256 bytes
/// each), timestamp, offset and epoch, room name, keys. Outgoing frames can be this much larger
/// than the largest incoming one; envelopes arriving from Redis beyond it are dropped.
pub const ENVELOPE_OVERHEAD: usize = 4 * 1024;
/// Chat publishes of one connection awaiting their outcome at most. Past it the connection's
/// reader stops reading until one is answered: a flooding client is slowed by TCP, and no
/// connection holds more than this share of the node's queue towards Redis.
pub const PUBLISH_INFLIGHT: usize = 64;
/// The server pings each connection this often.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A connection that sends nothing (no frame, no pong, no heartbeat) for this long is closed
/// (1001). Two missed pings plus slack; clients heartbeat every 30 s per the original README.
/// Checked at each ping (no timer per frame), so the close comes within one ping interval after.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// On SIGTERM, the whole drain (leaving the route table, flushing and closing every session)
/// gets this long before the node exits, whatever Redis does.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// After the drain, HTTP requests still in progress (a probe, an API call) get this long to finish
/// before the listener's connections are dropped. Outside `--drain-timeout`: the listener stays up
/// through the drain so that probes are answered.
pub const HTTP_FINISH_TIMEOUT: Duration = Duration::from_secs(1);
/// Smallest frame limit accepted: an envelope must fit a chat message of some use.
pub const MIN_FRAME: usize = 128;
/// `reason` labels of `wss_connections_refused_total` for the refusals `/ws` makes outside
/// [`admission::Refusal`]: not a WebSocket upgrade, the node draining (503), a `since` that is
/// not an offset (400).
pub const REFUSED_NOT_WEBSOCKET: &str = "not_websocket";
pub const REFUSED_DRAINING: &str = "draining";
pub const REFUSED_BAD_SINCE: &str = "bad_since";

/// Per-connection limits, all documented above; tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    pub send_queue: usize,
    pub send_queue_bytes: usize,
    pub max_frame: usize,
    pub read_buffer: usize,
    pub write_buffer: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Rooms per connection and connections per room ([`crate::rooms`]).
    pub rooms: crate::rooms::RoomLimits,
    /// How long a sender's idempotency key (`idem`, `idempotency_key`) is remembered
    /// (`--idem-window`): a retry with the same key within it is never delivered twice.
    pub idem_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            send_queue: SEND_QUEUE,
            send_queue_bytes: SEND_QUEUE_BYTES,
            max_frame: MAX_FRAME,
            read_buffer: READ_BUFFER,
            write_buffer: WRITE_BUFFER,
            ping_interval: PING_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
            drain_timeout: DRAIN_TIMEOUT,
            rooms: crate::rooms::RoomLimits::default(),
            idem_window: crate::broker::DEFAULT_IDEM_WINDOW,
        }
    }
}

/// A limit that cannot work, with the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    #[error("send queue must hold at least 1 frame, got {0}")]
    SendQueue(usize),
    #[error("max frame must be at least {MIN_FRAME} bytes, got {0}")]
    MaxFrame(usize),
    #[error("send queue bytes ({bytes}) must hold one frame of the largest size ({frame} bytes)")]
    SendQueueBytes { bytes: usize, frame: usize },
    #[error("idle timeout ({idle:?}) must be longer than the ping interval ({ping:?}), or healthy clients get closed")]
    IdleTimeout { idle: Duration, ping: Duration },
    #[error("{what} must be non-zero")]
    Zero { what: &'static str },
}

impl Limits {
    /// The largest frame this node writes: a client's largest frame plus the envelope around it.
    pub fn max_outgoing_frame(&self) -> usize {
        self.max_frame + ENVELOPE_OVERHEAD
    }

    /// tungstenite's cap on one connection's write buffer (its own is unbounded). tungstenite
    /// needs room for the buffer plus one whole frame; a smaller cap would fail every receiver of
    /// a large message.
    pub fn max_write_buffer(&self) -> usize {
        self.write_buffer + self.max_outgoing_frame() + 64
    }

    /// Checks that the limits can work together.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.send_queue == 0 {
            return Err(LimitsError::SendQueue(0));
        }
        if self.max_frame < MIN_FRAME {
            return Err(LimitsError::MaxFrame(self.max_frame));
        }
        if self.send_queue_bytes < self.max_outgoing_frame() {
            return Err(LimitsError::SendQueueBytes { bytes: self.send_queue_bytes, frame: self.max_outgoing_frame() });
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(LimitsError::IdleTimeout { idle: self.idle_timeout, ping: self.ping_interval });
        }
        for (what, zero) in [
            ("read buffer", self.read_buffer == 0),
            ("write buffer", self.write_buffer == 0),
            ("ping interval", self.ping_interval.is_zero()),
            ("drain timeout", self.drain_timeout.is_zero()),
            ("idem window", self.idem_window.is_zero()),
        ] {
            if zero {
                return Err(LimitsError::Zero { what });
            }
        }
        Ok(())
    }
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This node's id in the route table; unique per live node.
    pub server_id: String,
    /// Redis to share routes with; `None` runs a single node with the in-process broker.
    pub redis: Option<RedisConfig>,
    pub limits: Limits,
    /// The address written into the node lease; defaults to the listener's.
    pub advertise: Option<String>,
    /// Treat a route to a node without a `server_alive` lease as dead (the default). Off only
    /// while Go nodes, which write no lease, share the Redis.
    pub require_lease: bool,
    /// The key backends present to the HTTP API (`Authorization: Bearer`); `None` turns the API
    /// off (its routes answer 404).
    pub api_key: Option<String>,
    /// Auth, origins, connection caps, rate limit, handshake limits.
    pub security: admission::SecurityConfig,
    /// Keep every message to a user in its history in Redis, with offsets, for resumes
    /// (`--history`). Needs Redis.
    pub history: Option<HistoryConfig>,
    /// The backend asked about joins that no grant allows (`--join-proxy`, an http:// URL).
    pub join_proxy: Option<String>,
    /// Bound of every call to the backend (`--proxy-timeout`).
    pub proxy_timeout: Duration,
}

impl ServerConfig {
    /// A single node with the in-process broker and default limits.
    pub fn embedded(server_id: impl Into<String>) -> Self {
        ServerConfig {
            server_id: server_id.into(),
            redis: None,
            limits: Limits::default(),
            advertise: None,
            require_lease: true,
            security: Default::default(),
            api_key: None,
            history: None,
            join_proxy: None,
            proxy_timeout: crate::hooks::DEFAULT_PROXY_TIMEOUT,
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("the server id must be non-empty and contain no ':' or whitespace, got {0:?}")]
    BadServerId(String),
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("history needs Redis (--redis-uri): a single node without Redis keeps none")]
    HistoryNeedsRedis,
    #[error("history size must be 1 to {max}, got {0}", max = crate::broker::MAX_HISTORY_SIZE)]
    HistorySize(usize),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("--join-proxy: {0}")]
    JoinProxy(#[from] crate::hooks::HookConfigError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// Whether the configuration is at fault (a setting that cannot work), rather than the
    /// environment (Redis, the listener): the command exits 2 for these, as for a bad flag.
    pub fn is_config(&self) -> bool {
        matches!(self, ServerError::BadServerId(_) | ServerError::Limits(_) | ServerError::HistoryNeedsRedis | ServerError::HistorySize(_))
    }
}

/// The state shared by every handler and session of this node.
pub(crate) struct Node {
    pub(crate) id: Arc<str>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) rooms: Arc<crate::rooms::Rooms>,
    pub(crate) broker: Broker,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
    /// Every session task, including the ones axum's `on_upgrade` spawns (axum's graceful
    /// shutdown does not wait for those).
    pub(crate) sessions: TaskTracker,
    pub(crate) draining: AtomicBool,
    pub(crate) security: admission::SecurityConfig,
    pub(crate) admission: Arc<admission::Admission>,
    /// The backend that decides joins no grant allows.
    pub(crate) join_proxy: Option<crate::hooks::HookClient>,
}

/// Runs a node on `listener` until `shutdown` is cancelled, then drains: turn unready and refuse
/// new connections (the listener still answers HTTP), remove this node's routes and lease, close
/// every client with 1012 after flushing what is queued to it. Returns once all of that is done
/// (or [`Limits::drain_timeout`] passed), and the listener is closed.
pub async fn serve(listener: TcpListener, config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    serve_with_metrics(listener, config, Metrics::new(), shutdown).await
}

/// [`serve`] with a metrics registry the caller keeps (to publish it elsewhere, or to read it).
pub async fn serve_with_metrics(
    listener: TcpListener,
    config: ServerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let id = &config.server_id;
    if id.is_empty() || id.contains(':') || id.chars().any(char::is_whitespace) {
        return Err(ServerError::BadServerId(id.clone()));
    }
    config.limits.validate()?;
    if let Some(h) = &config.history {
        if config.redis.is_none() {
            return Err(ServerError::HistoryNeedsRedis);
        }
        if h.size == 0 || h.size > crate::broker::MAX_HISTORY_SIZE {
            return Err(ServerError::HistorySize(h.size));
        }
    }
    let join_proxy = config.join_proxy.as_deref().map(|u| crate::hooks::HookClient::new(u, config.proxy_timeout)).transpose()?;
    let local: SocketAddr = listener.local_addr()?;
    let address = config.advertise.clone().unwrap_or_else(|| local.to_string());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let rooms = Arc::new(crate::rooms::Rooms::new(config.limits.rooms, metrics.clone()));
    let server_id: Arc<str> = Arc::from(id.as_str());
    let broker = match &config.redis {
        None => Broker::Memory(MemoryBroker::new(config.limits.idem_window)),
        Some(redis) => {
            let info = crate::broker::NodeInfo {
                server_id: server_id.clone(),
                address: address.clone(),
                hub: hub.clone(),
                metrics: metrics.clone(),
                require_lease: config.require_lease,
                max_envelope: config.limits.max_outgoing_frame(),
                rooms: rooms.clone(),
                history: config.history.clone(),
                idem_window: config.limits.idem_window,
            };
            Broker::Redis(RedisBroker::start(redis.clone(), info).await?)
        }
    };
    let node = Arc::new(Node {
        id: server_id,
        hub,
        rooms,
        broker,
        metrics,
        limits: config.limits.clone(),
        sessions: TaskTracker::new(),
        draining: AtomicBool::new(false),
        admission: admission::Admission::new(config.security.caps),
        security: config.security.clone(),
        join_proxy,
    });
    let l = &node.limits;
    info!(
        server_id = %node.id,
        address = %local,
        broker = %node.broker.describe(),
        send_queue = l.send_queue,
        max_frame = l.max_frame,
        read_buffer = l.read_buffer,
        write_buffer = l.write_buffer,
        max_write_buffer = l.max_write_buffer(),
        ping_interval = ?l.ping_interval,
        idle_timeout = ?l.idle_timeout,
        api = if config.api_key.is_some() { "on (/api/*, Bearer key)" } else { "off (no --api-key)" },
        "wsctl serve listening on ws://{local}/ws?userId=<id>"
    );
    log_security(&node.security);

    let mut app = router(node.clone());
    if let Some(key) = &config.api_key {
        app = app.merge(api::router(node.clone(), key));
    }
    // The listener stays open through the drain: probes get `/ready` 503 and `/health` 200, new
    // upgrades 503 `draining`, rather than a refused connection. It closes once sessions are gone.
    let stop_http = CancellationToken::new();
    let server = http::serve(listener, app, node.security.http, node.metrics.clone(), stop_http.clone(), HTTP_FINISH_TIMEOUT);
    let drained = async {
        let deadline = drain(&node, &shutdown).await;
        node.sessions.close();
        if tokio::time::timeout_at(deadline, node.sessions.wait()).await.is_err() {
            warn!(left = node.hub.connections(), "drain timeout: some connections did not close in time");
        }
        stop_http.cancel();
    };
    let (served, ()) = tokio::join!(server, drained);
    served?;
    node.broker.shutdown().await;
    info!("drained");
    Ok(())
}

/// One line an operator notices: auth off is a WARN.
fn log_security(s: &admission::SecurityConfig) {
    match &s.auth {
        Some(a) => info!(algorithm = ?a.algorithm(), audience = ?a.audience(), issuer = ?a.issuer(), rooms = ?s.room_policy, "auth: on (JWT, user = sub)"),
        None => warn!("auth: OFF — any client can connect as any user, and join any room; set JWT_SECRET or --jwt-public-key"),
    }
    let origins: Vec<String> = s.origins.iter().map(|o| format!("{o:?}")).collect();
    info!(
        allowed_origins = origins.len(),
        max_connections = s.caps.max_connections,
        max_conns_per_user = s.caps.per_user,
        max_conns_per_ip = s.caps.per_ip,
        rate_limit = s.rate.per_second,
        rate_burst = s.rate.burst,
        header_read_timeout = ?s.http.header_read_timeout,
        "admission limits (0 = off)"
    );
}

/// The drain, once `shutdown` fires, in the order that loses nothing acked:
/// 1. the node is unready (`/ready` 503) and refuses new connections (503 `draining`);
/// 2. it leaves the route table (routes and lease), so senders see its users offline or reach
///    their new connections, and waits until what was routed here before has arrived (its
///    sessions are still open, so that is delivered);
/// 3. every session flushes its queue and closes with 1012.
///
/// Returns the deadline by which sessions must be gone ([`Limits::drain_timeout`] after the
/// signal).
async fn drain(node: &Node, shutdown: &CancellationToken) -> tokio::time::Instant {
    shutdown.cancelled().await;
    let deadline = tokio::time::Instant::now() + node.limits.drain_timeout;
    node.draining.store(true, Ordering::SeqCst);
    info!(connections = node.hub.connections(), "draining: leaving the route table");
    node.broker.leave(node.limits.drain_timeout / 2).await;
    info!(connections = node.hub.connections(), "draining: closing every connection with 1012");
    node.hub.close_all(CloseReason::Draining);
    deadline
}

fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !node.broker.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let body = node.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

async fn ws_handler(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Every refusal is counted, by reason (docs/protocol.md, "Handshake answers").
    let count = |reason: &'static str| node.metrics.connections_refused.get_or_create(&crate::metrics::ReasonLabel { reason }).inc();
    let refuse = |r: admission::Refusal| {
        count(r.reason());
        r.into_response()
    };
    if node.draining.load(Ordering::SeqCst) {
        count(REFUSED_DRAINING);
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let checked = match admission::check(&node.security, &headers, &params) {
        Ok(c) => c,
        Err(r) => return refuse(r),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            count(REFUSED_NOT_WEBSOCKET);
            return rejection.into_response();
        }
    };
    let resume = match session::Resume::from_query(&params) {
        Ok(r) => r,
        Err(why) => {
            count(REFUSED_BAD_SINCE);
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let user: Arc<str> = Arc::from(checked.user.as_str());
    // Held by the upgrade callback: released when the session ends, or when a failed upgrade
    // drops the callback.
    let permit = match node.admission.reserve(&user, peer.ip()) {
        Ok(p) => p,
        Err(r) => return refuse(r),
    };
    let conn = Uuid::new_v4();
    let (outbox, rx, ctl) = Outbox::new(node.limits.send_queue, node.limits.send_queue_bytes);
    // Registered before the 101 goes out: a client that sees its upgrade is already routable
    // (unless Redis did not answer within the broker's bound; it is then registered when Redis
    // answers, see `broker::Registered::Later`).
    let reg = session::Registration::new(node.clone(), user, conn, outbox, checked.grants, peer.ip());
    let routable = reg.register().await == crate::broker::Registered::Yes;
    // A drain that began after the check above may have swept the hub before this connection
    // was in it (the drain sets `draining` before its sweep): close it the same way.
    if node.draining.load(Ordering::SeqCst) {
        ctl.close_with(CloseReason::Draining);
    }
    let token = node.sessions.token();
    let l = &node.limits;
    // Answers `wsctl.bearer` whenever the client offered it (whichever token was used, and with
    // auth off too): a browser fails a handshake that names none of the protocols it offered.
    let ws = ws.protocols([auth::BEARER_PROTOCOL]);
    let expires_at = checked.expires_at;
    let sessions = node.sessions.clone();
    ws.read_buffer_size(l.read_buffer)
        .write_buffer_size(l.write_buffer)
        .max_write_buffer_size(l.max_write_buffer())
        .max_message_size(l.max_frame)
        .max_frame_size(l.max_frame)
        .on_upgrade(move |socket| async move {
            if let Some(at) = expires_at {
                sessions.spawn(auth::close_at_expiry(ctl.clone(), at));
            }
            session::run(socket, reg, rx, ctl, resume, routable).await;
            drop(permit);
            drop(token);
        })
}
