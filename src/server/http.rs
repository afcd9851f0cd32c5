//! The HTTP accept loop: hyper's HTTP/1 connection builder serving the node's axum `Router`, with
//! the handshake limits `axum::serve` does not expose (a deadline for the request head, so a
//! slowloris client cannot hold a socket; a cap on the head's size). Each connection gets its
//! peer address as axum's `ConnectInfo`, which the per-IP cap reads.
//!
//! Sockets still in their HTTP phase (accepted, not yet upgraded or closed) are capped at
//! [`HttpLimits::max_pending`]: a new socket past the cap closes the *oldest* pending one, so
//! idle or slowloris sockets held for the header timeout can neither exhaust file descriptors
//! nor lock out a client that has just connected (it is the newest). Each eviction is counted
//! as `wss_connections_refused_total{reason="pending_handshakes"}`, a 431 as
//! `reason="headers_too_large"`.
//!
//! On shutdown (the node cancels it once its drain is over, so probes are answered during the
//! drain) it stops accepting, asks the HTTP connections still open (keep-alive, or mid request)
//! to finish, and returns once they are gone or the given bound has passed; those still open
//! then are dropped, so nothing an HTTP client does holds up the exit past that bound (the
//! metrics listener passes zero: a scrape never delays the exit). Upgraded WebSockets are no
//! longer HTTP connections: the node's `sessions` tracker owns them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::{Metrics, ReasonLabel};

/// A client must send its whole request head (request line and headers) within this long after
/// its connection opens or its previous request ends; otherwise the connection is dropped. A
/// real client sends its head in one packet; 10 s covers a slow mobile link several times over,
/// while a slowloris that trickles one byte per second holds a socket for 10 s, not forever.
/// The same deadline closes a keep-alive connection that sends no next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper's read buffer; its minimum is 8 KiB). A WebSocket
/// upgrade with a token in the query, in `Authorization` and in `Sec-WebSocket-Protocol` is under
/// 4 KiB; past this hyper answers 431 instead of buffering up to its default ~400 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields in one request head (hyper's default is 100). An upgrade has about 10.
pub const MAX_HEADERS: usize = 64;
/// Sockets in their HTTP phase (accepted, not yet upgraded or closed) at most, per listener;
/// past it the oldest is closed (`--max-pending-handshakes`; 0 = no cap). `--max-connections`
/// counts upgraded sockets only, so without this a client opening sockets that never send a
/// request could hold [`HEADER_READ_TIMEOUT`] worth of them and run the node out of file
/// descriptors. A real handshake is pending for about one round trip plus the route
/// registration (bounded by the broker's deadline, 2 s at worst): 10,000 is a reconnect storm of
/// 5,000 clients a second through a Redis stall, a tenth of the default `--max-connections`, and
/// at most ~160 MiB of request-head buffers ([`MAX_HEADER_BYTES`] each).
pub const MAX_PENDING_HANDSHAKES: usize = 10_000;
/// The `reason` label of a socket closed to keep the pending cap.
pub const PENDING_EVICTED: &str = "pending_handshakes";
/// The `reason` label of a request head over the size limits (hyper's 431).
pub const HEADERS_TOO_LARGE: &str = "headers_too_large";
/// After an accept error (out of file descriptors, mostly) wait this long before accepting
/// again, as axum::serve does, instead of spinning on the error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Handshake limits, defaulting to the consts above; tests shorten the timeout.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// [`MAX_PENDING_HANDSHAKES`]; 0 turns the cap off.
    pub max_pending: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { header_read_timeout: HEADER_READ_TIMEOUT, max_header_bytes: MAX_HEADER_BYTES, max_pending: MAX_PENDING_HANDSHAKES }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled; then waits (at most
/// `drain_timeout`) for the HTTP connections still open to finish their request, and drops the
/// ones that did not.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(MAX_HEADERS);
    let connections = TaskTracker::new();
    // Cancelled once the drain bound has passed: every HTTP connection still open is dropped.
    let abort = CancellationToken::new();
    let pending = Pending::new(limits.max_pending, metrics.clone());
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        // Frames are small and latency-sensitive; the writer batches its own flushes.
        let _ = stream.set_nodelay(true);
        let slot = pending.admit(&abort);
        let metrics = metrics.clone();
        connections.spawn(connection(builder.clone(), stream, peer, app.clone(), shutdown.clone(), slot, metrics));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain_timeout, connections.wait()).await.is_err() {
        debug!("drain: some HTTP connections did not finish in time; dropping them");
    }
    abort.cancel();
    Ok(())
}

/// The sockets of one listener in their HTTP phase, oldest first, each with the token that
/// closes it.
struct Pending {
    cap: usize,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, CancellationToken>>,
    metrics: Metrics,
}

/// One socket's place among the pending; given back when its HTTP phase ends (closed or
/// upgraded).
struct Slot {
    pending: Arc<Pending>,
    id: u64,
    /// Cancelled when the socket is evicted to keep the cap, or dropped after the drain bound.
    closed: CancellationToken,
}

impl Pending {
    fn new(cap: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(Pending { cap, next: AtomicU64::new(0), open: Mutex::new(BTreeMap::new()), metrics })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        // Every update is one insert or remove: a poisoned map is still consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a socket just accepted; at the cap, the oldest pending socket is closed first.
    fn admit(self: &Arc<Self>, abort: &CancellationToken) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closed = abort.child_token();
        let mut open = self.lock();
        if self.cap > 0 && open.len() >= self.cap {
            if let Some((_, oldest)) = open.pop_first() {
                oldest.cancel();
                self.metrics.connections_refused.get_or_create(&ReasonLabel { reason: PENDING_EVICTED }).inc();
            }
        }
        open.insert(id, closed.clone());
        self.metrics.pending_handshakes.inc();
        drop(open);
        Slot { pending: self.clone(), id, closed }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
        self.pending.metrics.pending_handshakes.dec();
    }
}

/// Serves one TCP connection until it closes, upgrades, is evicted, or the node shuts down (then
/// the request in progress completes and the connection closes, unless the drain bound passes
/// first).
async fn connection(
    builder: http1::Builder,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
    slot: Slot,
    metrics: Metrics,
) {
    let svc = tower::ServiceExt::map_request(app, move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = slot.closed.cancelled() => {
            debug!(%peer, "pending socket closed (cap or drain bound)");
            return;
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn => r,
                _ = slot.closed.cancelled() => {
                    debug!(%peer, "HTTP connection dropped at the drain bound");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        if e.is_parse_too_large() {
            metrics.connections_refused.get_or_create(&ReasonLabel { reason: HEADERS_TOO_LARGE }).inc();
        }
        debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
