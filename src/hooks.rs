//! Calls to the app's backend (the join proxy): a JSON POST over pooled HTTP/1.1 keep-alive
//! connections, bounded in time (`--proxy-timeout`), in calls at once and in answer size. It
//! fails closed: a backend that is slow, down, busy or answers garbage is a refusal, never an
//! allow.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

/// Default `--proxy-timeout`: a backend on the same network answers in milliseconds; a second
/// is long enough for a slow one and short enough that a join never waits long.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(1);
/// Calls to one hook in flight at most, per node. Past it a call is refused at once (`Busy`):
/// a stalled backend must not pile up tasks and sockets on the node.
pub const MAX_HOOK_CALLS: usize = 256;
/// Idle keep-alive connections kept per backend host.
pub const HOOK_POOL_IDLE: usize = 32;
/// Largest answer read from a backend, bytes; a larger one is a bad answer.
pub const MAX_HOOK_ANSWER: usize = 64 * 1024;

/// A hook URL that cannot work, found at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookConfigError {
    #[error("{0:?} is not an http:// URL (put a local proxy in front of an https backend)")]
    NotHttp(String),
    #[error("the timeout must be non-zero")]
    ZeroTimeout,
}

/// Why a call did not get an answer to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    #[error("too many calls in flight ({MAX_HOOK_CALLS})")]
    Busy,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answer over {MAX_HOOK_ANSWER} bytes or cut short")]
    BadBody,
}

/// One backend endpoint.
#[derive(Clone)]
pub struct HookClient {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    timeout: Duration,
    calls: Arc<Semaphore>,
}

impl HookClient {
    /// A client for `url` (http://host:port/path), each call bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, HookConfigError> {
        let uri: Uri = url.parse().map_err(|_| HookConfigError::NotHttp(url.to_string()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(HookConfigError::NotHttp(url.to_string()));
        }
        if timeout.is_zero() {
            return Err(HookConfigError::ZeroTimeout);
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(HOOK_POOL_IDLE).build(connector);
        Ok(HookClient { client, uri, timeout, calls: Arc::new(Semaphore::new(MAX_HOOK_CALLS)) })
    }

    /// POSTs `body` (JSON); returns the status and the answer's body.
    pub async fn post(&self, body: Vec<u8>) -> Result<(u16, Bytes), HookError> {
        let _permit = self.calls.try_acquire().map_err(|_| HookError::Busy)?;
        tokio::time::timeout(self.timeout, self.call(body)).await.map_err(|_| HookError::Timeout(self.timeout))?
    }

    async fn call(&self, body: Vec<u8>) -> Result<(u16, Bytes), HookError> {
        let req = hyper::Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("wsctl/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HookError::Unreachable(e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| HookError::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_HOOK_ANSWER).collect().await.map_err(|_| HookError::BadBody)?;
        Ok((status, body.to_bytes()))
    }

    /// The endpoint, for logs.
    pub fn url(&self) -> String {
        self.uri.to_string()
    }
}

impl std::fmt::Debug for HookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookClient").field("uri", &self.uri).field("timeout", &self.timeout).finish()
    }
}
