//! What a load run does, validated before anything connects: [`LoadConfig`], the YAML
//! [`Profile`] it can come from (with errors that name file, line and field), and the parsers
//! for the small value languages shared by flags and profiles (`1000/s`, `127.0.0.2-127.0.0.9`,
//! `2/4`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Open files one process needs besides its connections (stdio, runtime, listeners, JSON file).
pub const FD_RESERVE: u64 = 64;
/// Connections one source address can open to one destination before the kernel runs out of
/// ephemeral ports: Linux's default range 32768-60999 holds 28,232 ports.
pub const EPHEMERAL_PORTS_PER_SOURCE: u64 = 28_000;
/// Largest padding asked for: the server's default frame limit is 64 KiB.
pub const MAX_PAYLOAD_SIZE: usize = 60 * 1024;

/// How receivers are picked for each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Pattern {
    /// Any other user, uniformly.
    Random,
    /// Each user sends to the next one (the last to the first).
    Ring,
    /// A few popular receivers (`hot_users`) get everything.
    Hot,
    /// A user whose first connection is on the same URL as the sender's.
    SelfNode,
    /// A user whose first connection is on another URL: every message crosses the broker.
    CrossNode,
    /// Users in rooms of `room_size` (`rooms` of them): every connection joins its user's room
    /// and sends `room_message`s to it; every other member connection is owed each message.
    Room,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "random" => Ok(Pattern::Random),
            "ring" => Ok(Pattern::Ring),
            "hot" => Ok(Pattern::Hot),
            "self-node" | "self_node" | "selfnode" => Ok(Pattern::SelfNode),
            "cross-node" | "cross_node" | "crossnode" => Ok(Pattern::CrossNode),
            "room" | "rooms" => Ok(Pattern::Room),
            _ => Err(ConfigError::Invalid {
                what: "pattern",
                value: s.to_string(),
                hint: "one of random, ring, hot, self-node, cross-node, room",
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Random => "random",
            Pattern::Ring => "ring",
            Pattern::Hot => "hot",
            Pattern::SelfNode => "self-node",
            Pattern::CrossNode => "cross-node",
            Pattern::Room => "room",
        }
    }
}

/// Message rate: per connection, or for the whole run (split evenly over connections).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerConnection(f64),
    Total(f64),
}

/// A validated load run. Built by the command from flags and a profile.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base WebSocket URLs (`ws://host:port/ws`); `userId=` is appended per connection.
    pub urls: Vec<String>,
    /// Users in the whole run (all shards).
    pub clients: u32,
    /// WebSocket connections per user.
    pub connections_per_user: u32,
    /// This process's share: shard `index` of `count` (0-based).
    pub shard: (u32, u32),
    /// New connections per second.
    pub ramp_per_s: f64,
    /// How long traffic runs once every connection is up.
    pub duration: Duration,
    pub rate: Rate,
    pub pattern: Pattern,
    /// How many receivers the `hot` pattern uses.
    pub hot_users: u32,
    /// Bytes of padding in every chat payload.
    pub payload_size: usize,
    /// Interval between `heartbeat` frames per connection.
    pub heartbeat: Duration,
    /// Interval between `latency_report` frames per connection; zero turns them off.
    pub latency_report: Duration,
    /// Local addresses to bind client sockets to, used round-robin (empty: the kernel picks).
    pub source_ips: Vec<IpAddr>,
    /// Reconnect closed connections with jittered backoff.
    pub reconnect: bool,
    /// After the last send, how long to wait for messages still in flight.
    pub drain: Duration,
    /// User ids are `<prefix><global index>`.
    pub user_prefix: String,
    /// Per attempt: TCP connect plus WebSocket handshake.
    pub connect_timeout: Duration,
    /// Every chat send carries an `id`; the server's ack or error is matched and audited.
    pub ack: bool,
    /// With `reconnect`: reconnect with `since=<last offset>&epoch=<epoch>` (server history);
    /// everything sent to a user while its connection was down is then owed to it.
    pub resume: bool,
    /// `Pattern::Room`: how many rooms, and users per room (`clients` = rooms x room_size).
    pub rooms: u32,
    pub room_size: u32,
    /// Room names are `<room_prefix><global room index>`.
    pub room_prefix: String,
    /// Publishes per second through the server's HTTP API (`POST /api/publish`), for the whole
    /// run, beside the socket traffic; 0: none. Needs `api_key`.
    pub api_publish: f64,
    /// Bearer key for the HTTP API.
    pub api_key: Option<String>,
}

impl LoadConfig {
    /// Settings that need no flags: a few seconds against one node.
    pub fn new(urls: Vec<String>) -> LoadConfig {
        LoadConfig {
            urls,
            clients: 50,
            connections_per_user: 1,
            shard: (0, 1),
            ramp_per_s: 1000.0,
            duration: Duration::from_secs(5),
            rate: Rate::PerConnection(2.0),
            pattern: Pattern::Random,
            hot_users: 10,
            payload_size: 32,
            heartbeat: Duration::from_secs(30),
            latency_report: Duration::from_secs(10),
            source_ips: Vec::new(),
            reconnect: false,
            drain: Duration::from_secs(2),
            user_prefix: "load-".to_string(),
            connect_timeout: Duration::from_secs(10),
            ack: false,
            resume: false,
            rooms: 0,
            room_size: 0,
            room_prefix: "load-room-".to_string(),
            api_publish: 0.0,
            api_key: None,
        }
    }

    /// The global user indexes this shard owns: a contiguous slice, so shards never overlap.
    /// With rooms, shards split the rooms, so a room never spans two processes.
    pub fn user_range(&self) -> std::ops::Range<u32> {
        let (i, n) = self.shard;
        if self.pattern == Pattern::Room {
            let r = self.room_range();
            return r.start * self.room_size..r.end * self.room_size;
        }
        let lo = (u64::from(self.clients) * u64::from(i) / u64::from(n)) as u32;
        let hi = (u64::from(self.clients) * u64::from(i + 1) / u64::from(n)) as u32;
        lo..hi
    }

    /// The global room indexes this shard owns (`Pattern::Room`).
    pub fn room_range(&self) -> std::ops::Range<u32> {
        let (i, n) = self.shard;
        let lo = (u64::from(self.rooms) * u64::from(i) / u64::from(n)) as u32;
        let hi = (u64::from(self.rooms) * u64::from(i + 1) / u64::from(n)) as u32;
        lo..hi
    }

    /// Connections this process opens.
    pub fn connections(&self) -> u64 {
        self.user_range().len() as u64 * u64::from(self.connections_per_user)
    }

    /// Messages per second each connection sends.
    pub fn rate_per_connection(&self) -> f64 {
        match self.rate {
            Rate::PerConnection(r) => r,
            Rate::Total(t) => {
                let conns = self.connections().max(1) as f64;
                // A total rate is the whole run's: each shard carries its share.
                t / f64::from(self.shard.1) / conns
            }
        }
    }

    /// Checks everything that can be checked before connecting. `fd_limit` is the soft open-file
    /// limit in force; `extra_fds` counts sockets the process needs besides its clients (an
    /// embedded server's side of each connection).
    pub fn validate(&self, fd_limit: u64, extra_fds: u64) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::Missing("at least one --url (or --spawn-local)"));
        }
        for u in &self.urls {
            target_addr(u)?;
        }
        self.validate_counts()?;
        if self.resume && !self.reconnect {
            return Err(ConfigError::Invalid { what: "resume", value: "--resume".into(), hint: "--reconnect as well (resuming is how a reconnect catches up)" });
        }
        self.validate_rates()?;
        self.validate_pattern()?;
        if self.duration.is_zero() {
            return Err(ConfigError::Invalid { what: "duration", value: "0s".into(), hint: "longer than 0s" });
        }
        if self.heartbeat.is_zero() {
            return Err(ConfigError::Invalid { what: "heartbeat", value: "0s".into(), hint: "longer than 0s" });
        }
        if self.payload_size > MAX_PAYLOAD_SIZE {
            return Err(ConfigError::Invalid {
                what: "payload-size",
                value: self.payload_size.to_string(),
                hint: "at most 61440 bytes (the server's default frame limit is 64 KiB)",
            });
        }
        // Any character is fine: ids are percent-encoded into the URL and JSON-escaped in frames.
        if self.user_prefix.is_empty() || self.user_prefix.chars().any(char::is_control) {
            return Err(ConfigError::Invalid { what: "user-prefix", value: self.user_prefix.clone(), hint: "non-empty, without control characters" });
        }
        self.validate_resources(fd_limit, extra_fds)
    }

    fn validate_counts(&self) -> Result<(), ConfigError> {
        if self.clients == 0 {
            return Err(ConfigError::Invalid { what: "clients", value: "0".into(), hint: "at least 1" });
        }
        if self.connections_per_user == 0 {
            return Err(ConfigError::Invalid { what: "connections-per-user", value: "0".into(), hint: "at least 1" });
        }
        let (i, n) = self.shard;
        if n == 0 || i >= n || n > self.clients {
            return Err(ConfigError::Invalid {
                what: "shard",
                value: format!("{}/{n}", i + 1),
                hint: "I/N with 1 <= I <= N and N <= clients",
            });
        }
        Ok(())
    }

    /// Rates become intervals (`1 / rate`): a rate too small overflows a Duration, one too
    /// large rounds the interval to zero and a schedule that never advances.
    fn validate_rates(&self) -> Result<(), ConfigError> {
        if !(self.ramp_per_s.is_finite() && (MIN_RATE..=MAX_RATE).contains(&self.ramp_per_s)) {
            return Err(ConfigError::Invalid { what: "ramp", value: self.ramp_per_s.to_string(), hint: RATE_HINT });
        }
        let rate = match self.rate {
            Rate::PerConnection(r) | Rate::Total(r) => r,
        };
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(ConfigError::Invalid { what: "rate", value: rate.to_string(), hint: "a number >= 0 (0: idle connections)" });
        }
        let per = self.rate_per_connection();
        if rate > 0.0 && !(MIN_RATE..=MAX_RATE).contains(&per) {
            return Err(ConfigError::Invalid { what: "rate", value: format!("{per}/s per connection"), hint: RATE_HINT });
        }
        if rate > 0.0 && self.user_range().len() < 2 {
            return Err(ConfigError::Invalid {
                what: "clients",
                value: self.clients.to_string(),
                hint: "at least 2 users per shard when sending (a user never sends to itself)",
            });
        }
        Ok(())
    }

    fn validate_pattern(&self) -> Result<(), ConfigError> {
        if self.pattern == Pattern::Hot && self.hot_users == 0 {
            return Err(ConfigError::Invalid { what: "hot-users", value: "0".into(), hint: "at least 1" });
        }
        if self.pattern == Pattern::Room {
            self.validate_rooms()?;
        }
        if self.api_publish != 0.0 {
            self.validate_api()?;
        }
        if self.pattern == Pattern::CrossNode && self.urls.len() < 2 {
            return Err(ConfigError::Invalid {
                what: "pattern",
                value: "cross-node".into(),
                hint: "at least two --url for cross-node (one per node)",
            });
        }
        Ok(())
    }

    fn validate_rooms(&self) -> Result<(), ConfigError> {
        if self.rooms == 0 || self.room_size < 2 {
            return Err(ConfigError::Invalid {
                what: "rooms",
                value: format!("{} rooms of {}", self.rooms, self.room_size),
                hint: "--rooms N (at least 1) and --room-size M (at least 2: a sender is not owed its own message)",
            });
        }
        if u64::from(self.rooms) * u64::from(self.room_size) != u64::from(self.clients) {
            return Err(ConfigError::Invalid {
                what: "clients",
                value: self.clients.to_string(),
                hint: "with --pattern room, --clients is --rooms x --room-size (leave --clients out to get it)",
            });
        }
        if self.shard.1 > self.rooms {
            return Err(ConfigError::Invalid { what: "shard", value: format!("{}/{}", self.shard.0 + 1, self.shard.1), hint: "at most one shard per room" });
        }
        let last = format!("{}{}", self.room_prefix, self.rooms - 1);
        if !crate::rooms::valid_name(&last) {
            return Err(ConfigError::Invalid {
                what: "room-prefix",
                value: self.room_prefix.clone(),
                hint: "room names are at most 128 bytes of A-Z a-z 0-9 _ . : @ -",
            });
        }
        if self.resume {
            return Err(ConfigError::Invalid { what: "resume", value: "--resume".into(), hint: "not with --pattern room: rooms keep no history" });
        }
        Ok(())
    }

    fn validate_api(&self) -> Result<(), ConfigError> {
        if !(self.api_publish.is_finite() && (MIN_RATE..=MAX_RATE).contains(&self.api_publish)) {
            return Err(ConfigError::Invalid { what: "api-publish", value: self.api_publish.to_string(), hint: "between 0.000001/s and 1000000/s (0: off)" });
        }
        if self.api_key.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Missing("--api-key (or WSS_API_KEY) with --api-publish"));
        }
        if self.resume {
            return Err(ConfigError::Invalid { what: "api-publish", value: self.api_publish.to_string(), hint: "not with --resume" });
        }
        Ok(())
    }

    fn validate_resources(&self, fd_limit: u64, extra_fds: u64) -> Result<(), ConfigError> {
        let conns = self.connections();
        let need = conns + FD_RESERVE + extra_fds;
        if need > fd_limit {
            return Err(ConfigError::TooManyFiles { connections: conns, need, limit: fd_limit });
        }
        let sources = self.source_ips.len().max(1) as u64;
        let per_target = conns.div_ceil(self.urls.len() as u64);
        if per_target.div_ceil(sources) > EPHEMERAL_PORTS_PER_SOURCE {
            return Err(ConfigError::TooFewPorts { per_source: per_target.div_ceil(sources), sources });
        }
        Ok(())
    }

    /// Most messages one sender (a connection, or the API publisher) can send to one receiver
    /// in the run: no sequence number can reach it.
    pub fn max_sends_per_connection(&self) -> u32 {
        let rate = self.rate_per_connection().max(self.api_publish);
        let n = (rate * self.duration.as_secs_f64()).ceil() + 2.0;
        if n >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            n as u32
        }
    }
}

/// Slowest rate accepted (per connection, and for the ramp): one event per 10^6 s (11.6 days),
/// so `1 / rate` fits a Duration with room to add to an Instant.
pub const MIN_RATE: f64 = 1e-6;
/// Fastest rate accepted (per connection, and for the ramp): one event per microsecond. Faster
/// rounds the interval towards zero; no connection sends that fast anyway.
pub const MAX_RATE: f64 = 1e6;
const RATE_HINT: &str = "between 0.000001/s and 1000000/s per connection (one per 11.6 days .. one per microsecond)";

/// A load target: a `ws://` URL, parsed with the `url` crate.
pub fn parse_url(url: &str) -> Result<url::Url, ConfigError> {
    let bad = |hint| ConfigError::Invalid { what: "url", value: url.to_string(), hint };
    let parsed = url::Url::parse(url).map_err(|_| bad("a ws:// URL such as ws://127.0.0.1:8081/ws"))?;
    match parsed.scheme() {
        "ws" => {}
        "wss" => return Err(bad("wss:// is not supported by this build: use ws:// (put TLS in a proxy in front)")),
        _ => return Err(bad("a ws:// URL such as ws://127.0.0.1:8081/ws")),
    }
    if parsed.host().is_none() {
        return Err(bad("a ws:// URL with a host, such as ws://127.0.0.1:8081/ws"));
    }
    Ok(parsed)
}

/// The host:port a `ws://` URL connects to (IPv6 hosts in brackets, port 80 by default).
pub fn target_addr(url: &str) -> Result<String, ConfigError> {
    let u = parse_url(url)?;
    let port = u.port_or_known_default().unwrap_or(80);
    match u.host() {
        Some(url::Host::Ipv6(ip)) => Ok(format!("[{ip}]:{port}")),
        Some(h) => Ok(format!("{h}:{port}")),
        None => Err(ConfigError::Invalid { what: "url", value: url.to_string(), hint: "a ws:// URL with a host" }),
    }
}

/// The URL of one connection: `base` with `userId=<user>` (and `extra` pairs) added to its
/// query, percent-encoded so any character of a user id arrives as it is.
pub fn connection_url(base: &url::Url, user: &str, extra: &[(&str, &str)]) -> url::Url {
    let mut u = base.clone();
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("userId", user);
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    u
}

/// `1000/s`, `1000`, `60/m`, `5/100ms`: events per second.
pub fn parse_rate(s: &str) -> Result<f64, ConfigError> {
    let bad = || ConfigError::Invalid { what: "rate", value: s.to_string(), hint: "N, N/s, N/m or N/<duration> (e.g. 1000/s)" };
    let t = s.trim();
    let (num, per) = match t.split_once('/') {
        Some((n, p)) => (n.trim(), p.trim()),
        None => (t, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match per {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        p => humantime::parse_duration(p).map_err(|_| bad())?.as_secs_f64(),
    };
    if !(n.is_finite() && n >= 0.0 && secs > 0.0) {
        return Err(bad());
    }
    Ok(n / secs)
}

/// `I/N` (1-based on the command line) to `(I-1, N)`.
pub fn parse_shard(s: &str) -> Result<(u32, u32), ConfigError> {
    let bad = || ConfigError::Invalid { what: "shard", value: s.to_string(), hint: "I/N with 1 <= I <= N, e.g. 2/4" };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let i: u32 = i.trim().parse().map_err(|_| bad())?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || i == 0 || i > n {
        return Err(bad());
    }
    Ok((i - 1, n))
}

/// Largest source range accepted: a /16 of addresses is more than any one box can use.
const MAX_SOURCE_IPS: u32 = 65_536;

/// `127.0.0.2-127.0.0.9,127.0.1.1`: IPv4 ranges and single addresses (v6 singles too).
pub fn parse_source_ips(s: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let bad = |hint| ConfigError::Invalid { what: "source-ip", value: s.to_string(), hint };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a.trim().parse().map_err(|_| bad("IPv4 range A-B, e.g. 127.0.0.2-127.0.0.9"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| bad("IPv4 range A-B, e.g. 127.0.0.2-127.0.0.9"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a >= MAX_SOURCE_IPS {
                    return Err(bad("a range A-B with A <= B and at most 65536 addresses"));
                }
                out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
            }
            None => out.push(part.parse().map_err(|_| bad("an IP address or a range A-B"))?),
        }
    }
    if out.is_empty() {
        return Err(bad("at least one address"));
    }
    Ok(out)
}

/// A load profile as written in YAML. Every field is optional; flags override it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Profile {
    /// One URL or a list.
    #[serde(default)]
    pub url: Vec<String>,
    pub clients: Option<u32>,
    pub connections_per_user: Option<u32>,
    pub ramp: Option<String>,
    pub duration: Option<String>,
    /// Messages per second per connection (`15`, `15/s`, `1/10s`).
    pub rate: Option<String>,
    /// Messages per second for the whole run; overrides `rate`.
    pub total_rate: Option<String>,
    pub pattern: Option<String>,
    pub hot_users: Option<u32>,
    pub payload_size: Option<usize>,
    pub heartbeat: Option<String>,
    pub latency_report: Option<String>,
    pub source_ip: Option<String>,
    pub reconnect: Option<bool>,
    pub drain: Option<String>,
    pub user_prefix: Option<String>,
    pub connect_timeout: Option<String>,
    /// Ask the server to ack every send (`--ack`).
    pub ack: Option<bool>,
    /// Resume from the last offset on reconnect (`--resume`).
    pub resume: Option<bool>,
    /// `pattern: room`: rooms, users per room, room name prefix.
    pub rooms: Option<u32>,
    pub room_size: Option<u32>,
    pub room_prefix: Option<String>,
    /// Publishes per second through the HTTP API (`--api-publish`); the key comes from
    /// `--api-key` or `WSS_API_KEY`, never from a profile.
    pub api_publish: Option<String>,
    /// Thresholds, as `--assert`.
    #[serde(default)]
    pub assert: Vec<String>,
    /// The YAML text, to point at the line of a value that parses as YAML but not as a value.
    #[serde(skip)]
    source: String,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ProfileRead { file: path.to_path_buf(), error: e.to_string() })?;
        Profile::parse(&text, path)
    }

    /// Parses YAML text; `file` only names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Profile, ConfigError> {
        let parsed = serde_saphyr::from_str::<Profile>(text).map_err(|e| {
            let loc = e.location();
            let line = loc.as_ref().map(|l| l.line() as usize).unwrap_or(0);
            let column = loc.as_ref().map(|l| l.column() as usize).unwrap_or(0);
            // The message names unknown fields itself; for a bad value, the key on that line.
            let field = text
                .lines()
                .nth(line.saturating_sub(1))
                .and_then(|l| l.split_once(':'))
                .map(|(k, _)| k.trim().trim_start_matches("- ").to_string())
                .filter(|k| !k.is_empty() && !k.starts_with('#'))
                .unwrap_or_else(|| "?".to_string());
            let message = e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            ConfigError::Profile { file: file.to_path_buf(), line, column, field, message }
        });
        let mut profile = parsed?;
        profile.source = text.to_string();
        Ok(profile)
    }

    /// A profile value parsed with `f`, with file, line and field named if it is wrong.
    pub fn field<T>(&self, file: &Path, field: &'static str, value: &Option<String>, f: impl Fn(&str) -> Result<T, ConfigError>) -> Result<Option<T>, ConfigError> {
        match value {
            None => Ok(None),
            Some(v) => f(v).map(Some).map_err(|e| {
                let line = self
                    .source
                    .lines()
                    .position(|l| l.trim_start().strip_prefix(field).is_some_and(|rest| rest.trim_start().starts_with(':')))
                    .map_or(0, |i| i + 1);
                ConfigError::ProfileValue { file: file.to_path_buf(), line, field, error: e.to_string() }
            }),
        }
    }
}

/// Why a load run cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {what} {value:?}: expected {hint}")]
    Invalid { what: &'static str, value: String, hint: &'static str },
    #[error("{file}:{line}:{column}: field `{field}`: {message}")]
    Profile { file: PathBuf, line: usize, column: usize, field: String, message: String },
    #[error("{file}:{line}: field `{field}`: {error}")]
    ProfileValue { file: PathBuf, line: usize, field: &'static str, error: String },
    #[error("cannot read profile {file}: {error}")]
    ProfileRead { file: PathBuf, error: String },
    #[error(
        "{connections} connections need about {need} open files, but this process may open only {limit} \
         (the hard limit; raise it with `ulimit -Hn` as root, or split the run with --shard I/N over several processes)"
    )]
    TooManyFiles { connections: u64, need: u64, limit: u64 },
    #[error(
        "{per_source} connections per source address to one target exceed the ~{} ephemeral ports one address has \
         ({sources} source address(es)); add --source-ip 127.0.0.2-127.0.0.9 or more --url targets",
        EPHEMERAL_PORTS_PER_SOURCE
    )]
    TooFewPorts { per_source: u64, sources: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_shards_and_ranges_parse() {
        assert_eq!(parse_rate("1000/s").unwrap(), 1000.0);
        assert_eq!(parse_rate("60/m").unwrap(), 1.0);
        assert_eq!(parse_rate("1/10s").unwrap(), 0.1);
        assert_eq!(parse_rate("0").unwrap(), 0.0);
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_shard("2/4").unwrap(), (1, 4));
        assert!(parse_shard("0/4").is_err() && parse_shard("5/4").is_err());
        assert_eq!(parse_source_ips("127.0.0.2-127.0.0.4").unwrap().len(), 3);
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
    }

    #[test]
    fn tiny_and_huge_rates_are_refused_not_panicked_on() {
        let mut c = LoadConfig::new(vec!["ws://127.0.0.1:1/ws".into()]);
        for r in [1e-30, 1e-7, 2e6] {
            c.rate = Rate::PerConnection(r);
            let e = c.validate(100_000, 0).unwrap_err().to_string();
            assert!(e.contains("invalid rate") && e.contains("per connection"), "{r}: {e}");
        }
        c.rate = Rate::PerConnection(f64::INFINITY);
        assert!(c.validate(100_000, 0).is_err());
        c.rate = Rate::Total(1e-20);
        assert!(c.validate(100_000, 0).is_err());
        c.rate = Rate::PerConnection(0.0);
        c.validate(100_000, 0).unwrap();
        c.rate = Rate::PerConnection(MIN_RATE);
        c.validate(100_000, 0).unwrap();
        c.ramp_per_s = 1e-12;
        assert!(c.validate(100_000, 0).unwrap_err().to_string().contains("invalid ramp"));
    }

    #[test]
    fn urls_are_parsed_and_user_ids_percent_encoded() {
        assert_eq!(target_addr("ws://127.0.0.1:8081/ws").unwrap(), "127.0.0.1:8081");
        assert_eq!(target_addr("ws://example.com/ws?x=1").unwrap(), "example.com:80");
        assert_eq!(target_addr("ws://[::1]:9000/ws").unwrap(), "[::1]:9000");
        assert!(target_addr("wss://h/ws").unwrap_err().to_string().contains("not supported"));
        assert!(target_addr("http://h/ws").is_err() && target_addr("nonsense").is_err());
        let base = parse_url("ws://h:1/ws?token=abc").unwrap();
        let u = connection_url(&base, "a+b %&#/é", &[("since", "5")]);
        assert_eq!(u.as_str(), "ws://h:1/ws?token=abc&userId=a%2Bb+%25%26%23%2F%C3%A9&since=5");
        let pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        assert_eq!(pairs[1], ("userId".to_string(), "a+b %&#/é".to_string()));
    }

    #[test]
    fn shards_split_users_without_overlap() {
        let mut c = LoadConfig::new(vec!["ws://127.0.0.1:1/ws".into()]);
        c.clients = 10;
        let mut seen = Vec::new();
        for i in 0..3 {
            c.shard = (i, 3);
            seen.extend(c.user_range());
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn profile_error_names_line_and_field() {
        let err = Profile::parse("clients: 10\nrate: 5\nbogus: 1\n", Path::new("p.yaml")).unwrap_err().to_string();
        assert!(err.starts_with("p.yaml:3:"), "{err}");
        assert!(err.contains("bogus"), "{err}");
        let err = Profile::parse("clients: lots\n", Path::new("p.yaml")).unwrap_err().to_string();
        assert!(err.contains("p.yaml:1:") && err.contains("field `clients`"), "{err}");
    }
}
