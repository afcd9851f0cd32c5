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
use wsctl::server::{self, Limits, ServerConfig};

use crate::cli::RedisArgs;
use crate::util::{parse_duration, raise_fd_limit};

#[derive(Debug, Args)]
#[command(after_help = "Without --redis-uri/REDIS_URI the node runs alone with an in-process broker.\n\
Examples:\n  wsctl serve\n  REDIS_URI=redis://127.0.0.1:6379 wsctl serve --server-id node-a\n  \
wsctl serve --redis-uri redis-cluster://10.0.0.5:7000 --pubsub classic")]
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
    /// Frames queued per connection before it is closed as a slow consumer (4008).
    #[arg(long, env = "WSS_SEND_QUEUE", default_value_t = server::SEND_QUEUE, value_parser = clap::value_parser!(usize))]
    pub send_queue: usize,
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
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        if self.send_queue == 0 {
            anyhow::bail!("--send-queue must be at least 1, got 0");
        }
        if self.max_frame < 128 {
            anyhow::bail!("--max-frame must be at least 128 bytes, got {}", self.max_frame);
        }
        if self.idle_timeout <= self.ping_interval {
            anyhow::bail!(
                "--idle-timeout ({:?}) must be longer than --ping-interval ({:?}), or healthy clients get closed",
                self.idle_timeout,
                self.ping_interval
            );
        }
        let server_id = self.server_id.clone().unwrap_or_else(|| format!("wsctl-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        Ok(ServerConfig {
            server_id,
            redis: self.redis.config(),
            limits: Limits {
                send_queue: self.send_queue,
                max_frame: self.max_frame,
                ping_interval: self.ping_interval,
                idle_timeout: self.idle_timeout,
                drain_timeout: self.drain_timeout,
                ..Limits::default()
            },
            advertise: self.advertise.clone(),
        })
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let fds = raise_fd_limit();
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    info!(open_files = fds, "open-file limit (one per connection)");
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    server::serve(listener, config, shutdown).await.context("serve")?;
    Ok(ExitCode::SUCCESS)
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
