//! Connecting to Redis, standalone or Cluster, the same way for `serve` and `routes`: the URL
//! decides the mode (`redis://`, `rediss://` for TLS, `redis-cluster://`/`rediss-cluster://`),
//! a flag can force Cluster, and ACL user/password come from the URL or from settings.

use std::fmt;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Every command fails after this long instead of waiting for a reconnect: a send to a remote
/// user must answer "unavailable" quickly, never hang the sender's session.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: first retry after this, doubling ...
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// ... up to this, forever (a node outlives a Redis restart).
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Capacity of the broadcast channels of the subscriber client, the one that carries pub/sub
/// messages to the broker. fred's default (32) loses a burst (`Lagged`, counted in
/// `wss_broker_lagged`). fred pre-allocates this many slots for each of a client's ~9 event
/// channels, so it costs memory whether used or not: 65,536 on both clients held 105 MiB RSS
/// before the first connection, against 10 MiB for an embedded node. Only the subscriber gets a
/// large capacity. Measured (release, scripts/bench-idle-rss, medians of 3): 8,192 slots left an
/// idle Redis-backed node at 20.6 MiB, 4,096 at 17.6 MiB; and at 4,096 the 30,000 msgs/s
/// cross-node benchmark (scripts/bench-cross-node, 3 runs) lagged 0 messages on both nodes. A
/// burst deeper than this is lost and counted, never blocks.
pub const SUBSCRIBER_BROADCAST_CAPACITY: usize = 4_096;

/// Which pub/sub commands carry envelopes on a Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PubsubMode {
    /// SPUBLISH/SSUBSCRIBE (Redis 7+): a message goes only to the shard that owns the channel.
    #[default]
    Sharded,
    /// PUBLISH/SUBSCRIBE: copied to every shard; for fleets that still run Go nodes.
    Classic,
}

impl std::str::FromStr for PubsubMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sharded" => Ok(PubsubMode::Sharded),
            "classic" => Ok(PubsubMode::Classic),
            other => Err(format!("unknown pub/sub mode {other:?} (expected \"sharded\" or \"classic\")")),
        }
    }
}

/// Where Redis is and how to reach it.
#[derive(Clone, Default)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]`, `rediss://...` (TLS), `redis-cluster://host:port?node=h:p`.
    pub url: String,
    /// Treat the URL's hosts as Cluster seed nodes even if the scheme is plain `redis://`.
    pub force_cluster: bool,
    /// ACL user, overriding the URL's.
    pub username: Option<String>,
    /// ACL password, overriding the URL's.
    pub password: Option<String>,
    /// Pub/sub flavour on a Cluster (ignored on standalone, where only classic exists).
    pub pubsub: PubsubMode,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("force_cluster", &self.force_cluster)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("pubsub", &self.pubsub)
            .finish()
    }
}

/// A Redis setting that cannot work, with the offending value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    #[error("invalid Redis URL {url:?} ({}): expected redis://[user:pass@]host:port[/db], rediss:// for TLS, or redis-cluster://host:port; set REDIS_URI or --redis-uri", reason(error))]
    Url { url: String, error: fred::error::Error },
    #[error("cannot reach Redis at {url} ({}): is it running, and is that its address? set REDIS_URI or --redis-uri (and REDIS_PASSWORD if it needs one)", reason(error))]
    Connect { url: String, error: fred::error::Error },
}

/// The useful part of a fred error: "Connection refused", not fred's kind prefix or the Debug
/// form of the io::Error it carries as text (`Os { code: 111, .., message: "Connection refused" }`).
fn reason(e: &fred::error::Error) -> String {
    let details = e.details().trim();
    if let Some((_, rest)) = details.split_once("message: \"") {
        return rest.split('"').next().unwrap_or(rest).to_string();
    }
    if details.is_empty() {
        e.to_string()
    } else {
        details.to_string()
    }
}

/// rustls needs one process-wide crypto provider; with two compiled in (ring for fred,
/// aws-lc-rs for the AWS SDK) it will not pick, so pick ring, once. A provider installed earlier
/// by the embedding program wins.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Hides a password in a URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl RedisConfig {
    /// Whether this configuration addresses a Cluster.
    pub fn is_cluster(&self) -> bool {
        self.force_cluster || self.url.split("://").next().is_some_and(|scheme| scheme.ends_with("-cluster"))
    }

    /// The pub/sub mode actually used: sharded only makes sense on a Cluster.
    pub fn effective_pubsub(&self) -> PubsubMode {
        if self.is_cluster() {
            self.pubsub
        } else {
            PubsubMode::Classic
        }
    }

    /// "Redis standalone" / "Redis Cluster (sharded pub/sub)" for startup lines.
    pub fn describe(&self) -> String {
        match (self.is_cluster(), self.effective_pubsub()) {
            (false, _) => format!("Redis standalone at {}", redact_url(&self.url)),
            (true, PubsubMode::Sharded) => format!("Redis Cluster at {} (sharded pub/sub)", redact_url(&self.url)),
            (true, PubsubMode::Classic) => format!("Redis Cluster at {} (classic pub/sub)", redact_url(&self.url)),
        }
    }

    fn fred_config(&self) -> Result<Config, RedisConfigError> {
        let url_err = |error| RedisConfigError::Url { url: redact_url(&self.url), error };
        let mut config = if self.force_cluster {
            Config::from_url_clustered(&self.url).map_err(url_err)?
        } else {
            Config::from_url(&self.url).map_err(url_err)?
        };
        if let Some(user) = &self.username {
            config.username = Some(user.clone());
        }
        if let Some(pass) = &self.password {
            config.password = Some(pass.clone());
        }
        // Fail the first connection loudly (bad address, bad password) ...
        config.fail_fast = true;
        Ok(config)
    }

    /// A builder with this configuration; `broadcast_capacity` replaces fred's default size of
    /// the event channels (only the subscriber needs more).
    fn builder(&self, broadcast_capacity: Option<usize>) -> Result<Builder, RedisConfigError> {
        install_crypto_provider();
        let mut builder = Builder::from_config(self.fred_config()?);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = CONNECT_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                // One attempt: a command that failed because the connection dropped is reported
                // to the caller, which knows whether retrying is safe.
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
                if let Some(capacity) = broadcast_capacity {
                    p.broadcast_channel_capacity = capacity;
                }
            })
            // ... and, once connected, reconnect forever with capped exponential backoff.
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                RECONNECT_MIN.as_millis() as u32,
                RECONNECT_MAX.as_millis() as u32,
                2,
            ));
        Ok(builder)
    }

    /// A connected command client.
    pub async fn connect(&self) -> Result<Client, RedisConfigError> {
        let client = self.builder(None)?.build().map_err(|source| self.connect_err(source))?;
        client.init().await.map_err(|source| self.connect_err(source))?;
        Ok(client)
    }

    /// A connected subscriber client: the node's one pub/sub connection (per shard on a Cluster).
    pub async fn connect_subscriber(&self) -> Result<SubscriberClient, RedisConfigError> {
        let client = self.builder(Some(SUBSCRIBER_BROADCAST_CAPACITY))?.build_subscriber_client().map_err(|source| self.connect_err(source))?;
        client.init().await.map_err(|source| self.connect_err(source))?;
        Ok(client)
    }

    fn connect_err(&self, error: fred::error::Error) -> RedisConfigError {
        RedisConfigError::Connect { url: redact_url(&self.url), error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("redis://app:s3cret@h:6379/0"), "redis://app:***@h:6379/0");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        let c = RedisConfig { password: Some("pw".into()), ..Default::default() };
        assert!(!format!("{c:?}").contains("pw\""));
    }

    #[test]
    fn cluster_is_read_from_the_scheme_or_forced() {
        let c = |url: &str, force| RedisConfig { url: url.into(), force_cluster: force, ..Default::default() };
        assert!(!c("redis://h:1", false).is_cluster());
        assert!(c("redis-cluster://h:1", false).is_cluster());
        assert!(c("rediss-cluster://h:1", false).is_cluster());
        assert!(c("redis://h:1", true).is_cluster());
        assert_eq!(c("redis://h:1", false).effective_pubsub(), PubsubMode::Classic);
        assert_eq!(c("redis-cluster://h:1", false).effective_pubsub(), PubsubMode::Sharded);
    }

    /// The measurement behind [`SUBSCRIBER_BROADCAST_CAPACITY`]: a node's subscriber receives a
    /// burst of [`BURST`] envelopes published as fast as 4 pipelining clients and a local Redis
    /// allow, while a consumer does the broker's per-message work (parse the envelope); prints
    /// the deepest the receiver fell behind. A benchmark, not a check: run with --ignored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: prints the figure behind SUBSCRIBER_BROADCAST_CAPACITY"]
    async fn subscriber_lag_under_burst() {
        const BURST: usize = 100_000;
        const PUBLISHERS: usize = 4;
        const PIPELINE: usize = 500;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let config = RedisConfig { url: format!("redis://127.0.0.1:{port}"), ..Default::default() };
        let mut sub = None;
        for _ in 0..100 {
            // Large enough that nothing is lost: the point is to see how much of it is used.
            if let Ok(c) = config.builder(Some(1 << 20)).unwrap().build_subscriber_client() {
                if c.init().await.is_ok() {
                    sub = Some(c);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sub = sub.expect("redis-server answers");
        let _: () = sub.subscribe("server:lag").await.unwrap();
        let mut rx = sub.message_rx();
        let consumer = tokio::spawn(async move {
            let (mut got, mut max_lag) = (0, 0);
            while got < BURST {
                let m = rx.recv().await.expect("no message lost");
                max_lag = max_lag.max(rx.len());
                got += 1;
                let bytes = m.value.as_bytes().expect("bytes").to_vec();
                assert!(crate::protocol::parse_routed(&bytes).is_some());
            }
            max_lag
        });
        let envelope = format!(
            r#"{{"senderID":"alice","receiverID":"bob","messageID":"{}","timestamp":"2026-01-01T00:00:00.000Z","content":"{}"}}"#,
            uuid::Uuid::new_v4(),
            "x".repeat(100)
        );
        let started = std::time::Instant::now();
        let mut publishers = Vec::new();
        for _ in 0..PUBLISHERS {
            let client = config.connect().await.unwrap();
            let envelope = envelope.clone();
            publishers.push(tokio::spawn(async move {
                for _ in 0..BURST / PUBLISHERS / PIPELINE {
                    let p = client.pipeline();
                    for _ in 0..PIPELINE {
                        let _: () = p.publish("server:lag", envelope.clone()).await.unwrap();
                    }
                    let _: Value = p.all().await.unwrap();
                }
            }));
        }
        for p in publishers {
            p.await.unwrap();
        }
        let max_lag = tokio::time::timeout(Duration::from_secs(60), consumer).await.expect("burst received").unwrap();
        let secs = started.elapsed().as_secs_f64();
        println!("burst of {BURST} envelopes in {secs:.2} s ({:.0}/s): the receiver lagged by at most {max_lag}", BURST as f64 / secs);
        let _ = redis.kill();
        let _ = redis.wait();
    }
}
