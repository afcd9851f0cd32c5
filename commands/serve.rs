//! `wsctl serve`: settings from flags and the original server's environment variables, a bound
//! listener, SIGTERM/SIGINT wired to the drain.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use wsctl::metrics::cloudwatch::{self, ClientOptions, Publisher};
use wsctl::metrics::{serve_metrics, Metrics};
use wsctl::broker::{HistoryConfig, DEFAULT_HISTORY_SIZE};
use wsctl::server::{self, Limits, ServerConfig};

use crate::cli::RedisArgs;
use crate::util::{parse_duration, raise_fd_limit};

#[derive(Debug, Args)]
#[command(after_help = "Without --redis-uri/REDIS_URI the node runs alone with an in-process broker.\n\
Examples:\n  wsctl serve\n  REDIS_URI=redis://127.0.0.1:6379 wsctl serve --server-id node-a\n  \
wsctl serve --redis-uri redis-cluster://10.0.0.5:7000 --pubsub classic\n  \
wsctl serve --metrics-addr 127.0.0.1:9090 --cloudwatch --cloudwatch-region eu-west-1")]
pub struct ServeArgs {
    /// Port to listen on.
    #[arg(short, long, env = "WSS_PORT", default_value_t = 8081)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "WSS_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// This node's id in the route table (must be unique among live nodes). Default: random.
    #[arg(long, env = "WSS_SERVER_ID")]
    pub server_id: Option<String>,
    /// Address other tools should use to reach this node (written into its lease).
    #[arg(long, env = "WSS_ADVERTISE")]
    pub advertise: Option<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub security: crate::serve_security::SecurityArgs,
    /// Frames queued per connection before it is closed as a slow consumer (4008).
    #[arg(long, env = "WSS_SEND_QUEUE", default_value_t = server::SEND_QUEUE, value_parser = clap::value_parser!(usize))]
    pub send_queue: usize,
    /// Bytes queued per connection before it is closed as a slow consumer (4008).
    #[arg(long, env = "WSS_SEND_QUEUE_BYTES", default_value_t = server::SEND_QUEUE_BYTES)]
    pub send_queue_bytes: usize,
    /// Go nodes (which write no `server_alive` lease) share this Redis: do not treat a route to a
    /// node without a lease as dead. Leave off otherwise: with it, a crashed node's users stay
    /// "online" until their presence keys expire (60 s).
    #[arg(long, env = "WSS_MIXED_FLEET")]
    pub mixed_fleet: bool,
    /// Keep every message to a user in a per-user history in Redis, with an offset and epoch, so a
    /// client reconnecting with `?since=<offset>&epoch=<epoch>` gets what it missed. Needs Redis.
    #[arg(long, env = "WSS_HISTORY", help_heading = "History")]
    pub history: bool,
    /// Messages kept per user (the newest), 1 to 10000.
    #[arg(long, env = "WSS_HISTORY_SIZE", default_value_t = DEFAULT_HISTORY_SIZE, help_heading = "History")]
    pub history_size: usize,
    /// A user's history expires this long after its last message.
    #[arg(long, env = "WSS_HISTORY_TTL", default_value = "5m", value_parser = parse_duration, help_heading = "History")]
    pub history_ttl: Duration,
    /// How long a sender's idempotency key (`"idem"` on chat_message, `"idempotency_key"` on the
    /// API) is remembered: a retry with the same key within it is answered `duplicate` and never
    /// delivered twice.
    #[arg(long, env = "WSS_IDEM_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub idem_window: Duration,
    /// Ask this backend (an http:// URL) about joins that no grant allows (auth on, room policy
    /// `claims`): it is POSTed {"user","room","client_ip"} and answers 200 {"allow":true,
    /// "read_only":false} or 403. A timeout, an error or garbage refuses the join (`unavailable`).
    #[arg(long, env = "WSS_JOIN_PROXY", help_heading = "Backend")]
    pub join_proxy: Option<String>,
    /// Bound of every call to the backend (the join proxy).
    #[arg(long, env = "WSS_PROXY_TIMEOUT", default_value = "1s", value_parser = parse_duration, help_heading = "Backend")]
    pub proxy_timeout: Duration,
    /// Largest frame a client may send, bytes (larger: error `too_large`, close 1009).
    #[arg(long, env = "WSS_MAX_FRAME", default_value_t = server::MAX_FRAME)]
    pub max_frame: usize,
    /// Interval between server pings.
    #[arg(long, env = "WSS_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Close a connection silent (no frame, pong or heartbeat) for this long (1001).
    #[arg(long, env = "WSS_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM, how long connections get to flush and close.
    #[arg(long, env = "WSS_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Turns on the HTTP API for backends (/api/publish, /api/publish/batch, /api/presence/{user},
    /// /api/rooms/{room}); callers send `Authorization: Bearer <key>`. Without it the API is off (404).
    #[arg(long, env = "WSS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Also serve GET /metrics (Prometheus text) on this address, e.g. 127.0.0.1:9090, to keep
    /// scrapes off the client port. /metrics on the main port stays available.
    #[arg(long, env = "WSS_METRICS_ADDR", help_heading = "Metrics")]
    pub metrics_addr: Option<SocketAddr>,
    /// Push metrics to CloudWatch (namespace, ServerID dimension, one push per interval).
    /// Credentials and region come from the AWS config chain (AWS_* variables, profile, role).
    #[arg(long, env = "WSS_CLOUDWATCH", help_heading = "Metrics")]
    pub cloudwatch: bool,
    /// CloudWatch namespace.
    #[arg(long, env = "WSS_CLOUDWATCH_NAMESPACE", default_value = wsctl::metrics::cloudwatch::DEFAULT_NAMESPACE, help_heading = "Metrics")]
    pub cloudwatch_namespace: String,
    /// How often to push (each push carries that interval's counts; below 60s uses
    /// high-resolution storage, which CloudWatch bills more for).
    #[arg(long, env = "WSS_CLOUDWATCH_INTERVAL", default_value = "60s", value_parser = parse_duration, help_heading = "Metrics")]
    pub cloudwatch_interval: Duration,
    /// AWS region (default: from AWS_REGION / the profile).
    #[arg(long, env = "WSS_CLOUDWATCH_REGION", help_heading = "Metrics")]
    pub cloudwatch_region: Option<String>,
    /// A CloudWatch-compatible endpoint URL instead of AWS's (e.g. http://127.0.0.1:5000 for moto_server).
    #[arg(long, env = "WSS_CLOUDWATCH_ENDPOINT", help_heading = "Metrics")]
    pub cloudwatch_endpoint: Option<String>,
    #[command(flatten)]
    pub settings: crate::config::ServeConfigArgs,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        if self.cloudwatch && self.cloudwatch_interval < Duration::from_secs(1) {
            anyhow::bail!("--cloudwatch-interval must be at least 1s (CloudWatch's finest resolution), got {:?}", self.cloudwatch_interval);
        }
        if self.cloudwatch && self.cloudwatch_namespace.trim().is_empty() {
            anyhow::bail!("--cloudwatch-namespace must not be empty");
        }
        if let Some(url) = self.join_proxy.as_deref().filter(|u| !u.is_empty()) {
            wsctl::hooks::HookClient::new(url, self.proxy_timeout).map_err(|e| anyhow::anyhow!("--join-proxy / --proxy-timeout: {e}"))?;
            if self.security.jwt_secret.is_none() && self.security.jwt_public_key.is_none() {
                anyhow::bail!("--join-proxy decides joins by user, so it needs auth on: set JWT_SECRET or --jwt-public-key (with auth off every room is open)");
            }
        }
        let limits = Limits {
            send_queue: self.send_queue,
            send_queue_bytes: self.send_queue_bytes,
            max_frame: self.max_frame,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            drain_timeout: self.drain_timeout,
            idem_window: self.idem_window,
            ..Limits::default()
        };
        limits.validate().map_err(|e| anyhow::anyhow!("{}", flag_names(&e.to_string())))?;
        let server_id = self.server_id.clone().unwrap_or_else(|| format!("wsctl-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        Ok(ServerConfig {
            server_id,
            redis: self.redis.config(),
            limits,
            advertise: self.advertise.clone(),
            require_lease: !self.mixed_fleet,
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            security: self.security.config()?,
            history: self.history.then_some(HistoryConfig { size: self.history_size, ttl: self.history_ttl }),
            join_proxy: self.join_proxy.clone().filter(|u| !u.is_empty()),
            proxy_timeout: self.proxy_timeout,
        })
    }
}

/// The library names limits in words; the command line user knows them as flags.
fn flag_names(msg: &str) -> String {
    [
        ("send queue bytes", "--send-queue-bytes"),
        ("send queue", "--send-queue"),
        ("max frame", "--max-frame"),
        ("idle timeout", "--idle-timeout"),
        ("ping interval", "--ping-interval"),
        ("drain timeout", "--drain-timeout"),
        ("idem window", "--idem-window"),
    ]
    .iter()
    .fold(msg.to_string(), |m, (words, flag)| m.replacen(words, flag, 1))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // A setting that parsed but cannot work is a usage error (exit 2), like one clap refuses.
    let config = args.config().map_err(crate::util::usage)?;
    let fds = raise_fd_limit();
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    info!(open_files = fds, "open-file limit (one per connection)");
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let metrics = Metrics::new();
    let mut metrics_server = None;
    if let Some(addr) = args.metrics_addr {
        let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        info!(address = %addr, "serving /metrics");
        metrics_server = Some(tokio::spawn(serve_metrics(l, metrics.clone(), config.security.http, shutdown.clone())));
    }
    // The publisher is its own task: a slow or failing CloudWatch never holds up the server.
    let publisher = if args.cloudwatch {
        let opts = ClientOptions { region: args.cloudwatch_region.clone(), endpoint: args.cloudwatch_endpoint.clone(), credentials: None };
        let client = cloudwatch::client(&opts).await.context("--cloudwatch")?;
        let p = Publisher::new(client, &opts, &args.cloudwatch_namespace, &config.server_id, metrics.clone(), args.cloudwatch_interval);
        Some(tokio::spawn(p.run(shutdown.clone())))
    } else {
        None
    };
    let served = server::serve_with_metrics(listener, config, metrics, shutdown.clone()).await;
    shutdown.cancel();
    // The final interval, pushed after the drain so it includes the drain's disconnects.
    if let Some(p) = publisher {
        if let (Ok(p), true) = (p.await, served.is_ok()) {
            p.finish().await;
        }
    }
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    // A setting the library found unworkable (server id, limits, history) is a usage error too.
    match served {
        Err(e) if e.is_config() => Err(crate::util::usage(e)),
        served => {
            served.context("serve")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT (Ctrl-C).
async fn on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
