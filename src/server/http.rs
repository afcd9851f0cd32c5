//! The HTTP accept loop: hyper's HTTP/1 connection builder serving the node's axum `Router`, with
//! the handshake limits `axum::serve` does not expose (a deadline for the request head, so a
//! slowloris client cannot hold a socket; a cap on the head's size). Each connection gets its
//! peer address as axum's `ConnectInfo`, which the per-IP cap reads.
//!
//! On shutdown (the node cancels it once its drain is over, so probes are answered during the
//! drain) it stops accepting, asks the HTTP connections still open (keep-alive, or mid request) to
//! finish, and returns once they are gone or `drain_timeout` has passed. Upgraded
//! WebSockets are no longer HTTP connections: the node's `sessions` tracker owns them.

use std::net::SocketAddr;
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
/// After an accept error (out of file descriptors, mostly) wait this long before accepting
/// again, as axum::serve does, instead of spinning on the error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Handshake limits, defaulting to the consts above; tests shorten the timeout.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { header_read_timeout: HEADER_READ_TIMEOUT, max_header_bytes: MAX_HEADER_BYTES }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled; then waits (at most
/// `drain_timeout`) for the HTTP connections still open to finish their request.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
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
        connections.spawn(connection(builder.clone(), stream, peer, app.clone(), shutdown.clone()));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain_timeout, connections.wait()).await.is_err() {
        debug!("drain: some HTTP connections did not finish in time");
    }
    Ok(())
}

/// Serves one TCP connection until it closes, upgrades, or the node shuts down (then the
/// request in progress completes and the connection closes).
async fn connection(builder: http1::Builder, stream: tokio::net::TcpStream, peer: SocketAddr, app: Router, shutdown: CancellationToken) {
    let svc = tower::ServiceExt::map_request(app, move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
