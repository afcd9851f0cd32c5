//! Who may open a WebSocket on this node, decided before the upgrade: the `Origin` allow-list,
//! the user (a valid token's `sub`, or `?userId=` when auth is off) and the connection caps
//! (per node, per user, per client IP). Each refusal is an HTTP status with a short body and a
//! `reason` label counted in `/metrics`.
//!
//! Caps are exact under concurrency: a connection reserves its place in every counter before
//! the upgrade (an atomic add on the node total, an increment under the shard lock per user and
//! per IP), and backs every reservation out if a later one fails. The [`Permit`] it gets is
//! released on drop, so every way a connection ends (including a failed upgrade, which drops the
//! upgrade callback holding it) gives its place back.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::auth::{Authenticator, TokenError, TOKEN_PARAM};
use super::http::HttpLimits;
use super::ratelimit::RateLimit;
use crate::protocol::{self, UserIdError};
use crate::room_access::{Grants, RoomPolicy};

/// Default `--max-connections`: about 870 MB of RSS at the idle cost measured by
/// scripts/bench-idle-rss (8.9 KiB per connection), well within a raised open-file limit; busy
/// connections cost more (send queues). A node past it answers 503 and the client (or a load
/// balancer retrying) tries another.
pub const MAX_CONNECTIONS: usize = 100_000;
/// Default `--max-conns-per-user`: a person has a few tabs and devices; 100 leaves room for a
/// backend service account while stopping one user from holding thousands of sockets.
pub const MAX_CONNS_PER_USER: usize = 100;
/// Default `--max-conns-per-ip`: off (0). Behind a proxy or a load balancer that does not keep
/// the client's address, every connection comes from a handful of IPs and any default would cap
/// the whole fleet; set it where clients reach the node directly (or through an NLB that keeps
/// the client IP).
pub const MAX_CONNS_PER_IP: usize = 0;
/// Lock shards of the per-user and per-IP counters.
const SHARDS: usize = 64;

/// Node-wide and per-key connection caps; 0 turns a cap off (`Default`: all off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub max_connections: usize,
    pub per_user: usize,
    pub per_ip: usize,
}

impl Caps {
    /// The documented defaults of `wsctl serve`.
    pub fn recommended() -> Self {
        Caps { max_connections: MAX_CONNECTIONS, per_user: MAX_CONNS_PER_USER, per_ip: MAX_CONNS_PER_IP }
    }
}

impl SecurityConfig {
    /// `wsctl serve`'s defaults without a key: caps and rate limit on, auth off.
    pub fn recommended() -> Self {
        SecurityConfig { caps: Caps::recommended(), rate: RateLimit::recommended(), ..Default::default() }
    }
}

/// Everything this module and its neighbours enforce, validated by the command.
///
/// `Default` is everything off (no auth, any origin, no caps, no rate limit; only the handshake
/// limits on): what an embedding or a test gets from `ServerConfig::embedded`. `wsctl serve`
/// applies the documented defaults ([`SecurityConfig::recommended`]) through its flags.
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    /// `None`: auth off, `?userId=` is trusted (logged as a warning at startup).
    pub auth: Option<Arc<Authenticator>>,
    /// Allowed `Origin`s; empty allows any.
    pub origins: Vec<OriginPattern>,
    pub caps: Caps,
    pub rate: RateLimit,
    pub http: HttpLimits,
    /// Who may join which room with auth on (`--room-policy`); with auth off rooms are open.
    pub room_policy: RoomPolicy,
}

/// Why a connection was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: no `userId` (auth off).
    MissingUser,
    /// 400: a `userId` over [`protocol::MAX_USER_ID`] bytes or with control characters.
    BadUserId(UserIdError),
    /// 401.
    Token(TokenError),
    /// 403: `?userId=` names another user than the token's `sub`.
    UserMismatch,
    /// 403: `Origin` outside `--allowed-origin`.
    Origin,
    /// 503: `--max-connections` reached.
    NodeFull,
    /// 429: `--max-conns-per-user` reached.
    UserLimit,
    /// 429: `--max-conns-per-ip` reached.
    IpLimit,
}

impl Refusal {
    /// The `reason` label in `wss_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MissingUser => "missing_user",
            Refusal::BadUserId(_) => "bad_user_id",
            Refusal::Token(TokenError::Missing) => "missing_token",
            Refusal::Token(TokenError::Invalid) => "invalid_token",
            Refusal::Token(TokenError::Expired) => "expired_token",
            Refusal::Token(TokenError::NotYetValid) => "token_not_yet_valid",
            Refusal::Token(TokenError::Audience) => "wrong_audience",
            Refusal::Token(TokenError::Issuer) => "wrong_issuer",
            Refusal::UserMismatch => "user_mismatch",
            Refusal::Origin => "origin",
            Refusal::NodeFull => "node_full",
            Refusal::UserLimit => "user_limit",
            Refusal::IpLimit => "ip_limit",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::MissingUser | Refusal::BadUserId(_) => StatusCode::BAD_REQUEST,
            Refusal::Token(_) => StatusCode::UNAUTHORIZED,
            Refusal::UserMismatch | Refusal::Origin => StatusCode::FORBIDDEN,
            Refusal::NodeFull => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UserLimit | Refusal::IpLimit => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The response body: short, and never echoing what the client sent.
    pub fn body(self) -> &'static str {
        match self {
            Refusal::MissingUser => "missing userId",
            Refusal::BadUserId(UserIdError::TooLong) => "userId too long (at most 256 bytes)",
            Refusal::BadUserId(UserIdError::Empty) => "missing userId",
            Refusal::BadUserId(UserIdError::Control) => "userId contains control characters",
            Refusal::Token(e) => e.as_str(),
            Refusal::UserMismatch => "userId does not match the token",
            Refusal::Origin => "origin not allowed",
            Refusal::NodeFull => "node full, try another",
            Refusal::UserLimit => "too many connections for this user",
            Refusal::IpLimit => "too many connections from this address",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = (self.status(), self.body()).into_response();
        if matches!(self, Refusal::UserLimit | Refusal::IpLimit | Refusal::NodeFull) {
            // A cap frees up as connections end; a client that honours this backs off.
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        r
    }
}

/// A client that passed the origin and identity checks.
#[derive(Debug)]
pub struct Checked {
    pub user: String,
    /// When the token stops being valid (auth on): the connection is closed then with 1008.
    pub expires_at: Option<SystemTime>,
    /// The token's room grants; None with auth off (no identity to check: rooms are open).
    pub grants: Option<Grants>,
}

/// Origin and identity, in that order (a page that may not connect learns nothing about its
/// token).
pub fn check(config: &SecurityConfig, headers: &HeaderMap, params: &HashMap<String, String>) -> Result<Checked, Refusal> {
    if !config.origins.is_empty() {
        // No Origin header: not a browser (browsers always send it on a WebSocket handshake), so
        // not a cross-site page; the token is what authenticates such clients.
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().map_err(|_| Refusal::Origin)?;
            if !config.origins.iter().any(|p| p.allows(origin)) {
                return Err(Refusal::Origin);
            }
        }
    }
    let claimed = params.get("userId").map(String::as_str).filter(|u| !u.is_empty());
    let Some(auth) = &config.auth else {
        let user = claimed.ok_or(Refusal::MissingUser)?;
        protocol::check_user_id(user).map_err(Refusal::BadUserId)?;
        return Ok(Checked { user: user.to_owned(), expires_at: None, grants: None });
    };
    let (token, _) =
        super::auth::find_token(headers, params.get(TOKEN_PARAM).map(String::as_str)).ok_or(Refusal::Token(TokenError::Missing))?;
    let id = auth.verify(&token).map_err(Refusal::Token)?;
    // A signed `sub` we could not route is the issuer's mistake, but still not a usable user.
    protocol::check_user_id(&id.user).map_err(|_| Refusal::Token(TokenError::Invalid))?;
    if claimed.is_some_and(|c| c != id.user) {
        return Err(Refusal::UserMismatch);
    }
    Ok(Checked { user: id.user, expires_at: Some(id.expires_at), grants: Some(id.grants) })
}

/// An allowed origin: `scheme://host[:port]`, where the host may start with `*.` (any subdomain
/// of the rest, at any depth, but not the bare domain). Scheme and port must match exactly (the
/// port defaults by scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// Lowercase; for a wildcard, the part after `*.`.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

/// Why an `--allowed-origin` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowed origin {0:?} must be scheme://host[:port], with an optional leading \"*.\" label and no path")]
pub struct OriginError(pub String);

impl std::str::FromStr for OriginPattern {
    type Err = OriginError;

    fn from_str(s: &str) -> Result<Self, OriginError> {
        let bad = || OriginError(s.to_owned());
        let (wildcard, rest) = match s.split_once("://") {
            Some((scheme, host)) if host.starts_with("*.") => (true, format!("{scheme}://{}", &host[2..])),
            _ => (false, s.to_owned()),
        };
        let (scheme, host, port) = parse_origin(&rest).ok_or_else(bad)?;
        if host.contains('*') {
            return Err(bad());
        }
        Ok(OriginPattern { scheme, host, wildcard, port })
    }
}

impl OriginPattern {
    /// Whether a browser's `Origin` header value matches.
    pub fn allows(&self, origin: &str) -> bool {
        let Some((scheme, host, port)) = parse_origin(origin) else { return false };
        if scheme != self.scheme || port != self.port {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// `scheme://host[:port]` into its lowercase parts, with the scheme's default port made explicit
/// as None (so `https://a:443` equals `https://a`). Anything with a path, query or user info is
/// not an origin.
fn parse_origin(s: &str) -> Option<(String, String, Option<u16>)> {
    let uri: Uri = s.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return None;
    }
    let default = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    let port = authority.port_u16().filter(|p| Some(*p) != default);
    Some((scheme, authority.host().to_ascii_lowercase(), port))
}

/// The node's live connection counts, by node, user and IP.
pub struct Admission {
    caps: Caps,
    total: AtomicUsize,
    users: Counts<Arc<str>>,
    ips: Counts<IpAddr>,
}

impl Admission {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Admission { caps, total: AtomicUsize::new(0), users: Counts::new(), ips: Counts::new() })
    }

    /// Reserves a place for one connection of `user` from `ip`, or says which cap is full.
    pub fn reserve(self: &Arc<Self>, user: &Arc<str>, ip: IpAddr) -> Result<Permit, Refusal> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        // From here on, dropping the permit backs out whatever was taken.
        let mut permit = Permit { admission: self.clone(), user: None, ip: None };
        if self.caps.max_connections > 0 && before >= self.caps.max_connections {
            return Err(Refusal::NodeFull);
        }
        if self.caps.per_ip > 0 {
            if !self.ips.try_inc(&ip, self.caps.per_ip) {
                return Err(Refusal::IpLimit);
            }
            permit.ip = Some(ip);
        }
        if self.caps.per_user > 0 {
            if !self.users.try_inc(user, self.caps.per_user) {
                return Err(Refusal::UserLimit);
            }
            permit.user = Some(user.clone());
        }
        Ok(permit)
    }

    /// Connections holding a permit now.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One connection's place in the counts; released on drop.
pub struct Permit {
    admission: Arc<Admission>,
    user: Option<Arc<str>>,
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let a = &self.admission;
        if let Some(u) = &self.user {
            a.users.dec(u);
        }
        if let Some(ip) = &self.ip {
            a.ips.dec(ip);
        }
        a.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sharded counts per key; a key at zero is removed, so memory follows the live connections.
struct Counts<K> {
    shards: Box<[Mutex<HashMap<K, usize>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new() -> Self {
        Counts { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), hasher: RandomState::new() }
    }

    fn shard(&self, k: &K) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        let i = self.hasher.hash_one(k) as usize % self.shards.len();
        // Every update is one insert or remove: a poisoned shard is still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more for `k` unless it already has `cap`.
    fn try_inc(&self, k: &K, cap: usize) -> bool {
        let mut shard = self.shard(k);
        let n = shard.entry(k.clone()).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    fn dec(&self, k: &K) {
        let mut shard = self.shard(k);
        if let Some(n) = shard.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                shard.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> OriginPattern {
        s.parse().unwrap()
    }

    #[test]
    fn origins_exact_and_wildcard() {
        let exact = p("https://app.example.com");
        assert!(exact.allows("https://app.example.com"));
        assert!(exact.allows("https://APP.example.com:443"));
        assert!(!exact.allows("http://app.example.com"));
        assert!(!exact.allows("https://app.example.com:8443"));
        assert!(!exact.allows("https://app.example.com.evil.io"));
        assert!(!exact.allows("null"));
        let wild = p("https://*.example.com");
        assert!(wild.allows("https://a.example.com"));
        assert!(wild.allows("https://a.b.example.com"));
        assert!(!wild.allows("https://example.com"));
        assert!(!wild.allows("https://evilexample.com"));
        assert!(!wild.allows("https://a.example.com:8443"));
        let port = p("http://localhost:3000");
        assert!(port.allows("http://localhost:3000"));
        assert!(!port.allows("http://localhost"));
        for bad in ["example.com", "https://a.*.example.com", "https://ex*.com", "https://user@x.com", "https://x.com/path"] {
            assert!(bad.parse::<OriginPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn caps_reserve_and_release() {
        let a = Admission::new(Caps { max_connections: 3, per_user: 2, per_ip: 0 });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (u, v): (Arc<str>, Arc<str>) = ("u".into(), "v".into());
        let p1 = a.reserve(&u, ip).unwrap();
        let _p2 = a.reserve(&u, ip).unwrap();
        assert_eq!(a.reserve(&u, ip).err(), Some(Refusal::UserLimit));
        let _p3 = a.reserve(&v, ip).unwrap();
        assert_eq!(a.reserve(&v, ip).err(), Some(Refusal::NodeFull));
        drop(p1);
        assert_eq!(a.connections(), 2);
        let _p4 = a.reserve(&u, ip).unwrap();
        let per_ip = Admission::new(Caps { max_connections: 0, per_user: 0, per_ip: 1 });
        let _q = per_ip.reserve(&u, ip).unwrap();
        assert_eq!(per_ip.reserve(&v, ip).err(), Some(Refusal::IpLimit));
        assert_eq!(per_ip.connections(), 1);
    }

    #[test]
    fn a_flood_of_threads_holds_the_cap_exactly() {
        let a = Admission::new(Caps { max_connections: 50, per_user: 0, per_ip: 0 });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let held = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..8 {
                let (a, held) = (&a, &held);
                s.spawn(move || {
                    let u: Arc<str> = format!("u{t}").into();
                    for _ in 0..100 {
                        if let Ok(p) = a.reserve(&u, ip) {
                            held.lock().unwrap().push(p);
                        }
                    }
                });
            }
        });
        assert_eq!(held.lock().unwrap().len(), 50);
        assert_eq!(a.connections(), 50);
    }
}
