//! Command-line arguments for every subcommand (clap derive), shared argument groups (Redis
//! connection), and `wsctl completions`.

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

/// Non-sticky real-time WebSocket messaging over Redis: the server, a load generator, the
/// route-table tool and a live metrics view, in one binary.
#[derive(Debug, Parser)]
#[command(name = "wsctl", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr: human-readable text, or one JSON object per line for log shippers.
    /// Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WSS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no
    /// cross-thread wake-ups: the cheapest per message when several processes share few cores.
    #[arg(long, global = true, env = "WSCTL_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: WebSocket server, alone (in-process broker) or in a fleet sharing Redis.
    Serve(crate::serve::ServeArgs),
    /// Simulate thousands of clients: connect, send, measure latency, audit delivery.
    Load(crate::load::LoadArgs),
    /// Inspect and purge the Redis route table (user_servers:<user> sets).
    Routes(crate::routes::RoutesArgs),
    /// Watch the fleet's metrics live, from CloudWatch or the nodes' /metrics endpoints.
    Metrics(crate::metrics::MetricsArgs),
    /// Mint a JWT that `serve` accepts (HS256 from JWT_SECRET, or RS256/ES256 from a PEM key).
    Token(crate::token::TokenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
}

impl Command {
    /// `serve` logs at info by default; the client tools only warn (they draw their own output).
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate for.
    pub shell: Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "wsctl", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// How to reach Redis: shared by `serve` and `routes`, with the original server's variable names.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL: redis://[user:pass@]host:port[/db], rediss:// for TLS, redis-cluster://host:port
    /// (or rediss-cluster://) for a Cluster (add ?node=host:port for more seeds).
    #[arg(long = "redis-uri", env = "REDIS_URI", hide_env_values = true)]
    pub redis_uri: Option<String>,
    /// Treat the URL's host(s) as Redis Cluster seed nodes even with a plain redis:// scheme.
    #[arg(long, env = "REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// ACL user name (overrides the URL's).
    #[arg(long, env = "REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// ACL password (overrides the URL's).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Pub/sub on a Cluster: sharded (SPUBLISH/SSUBSCRIBE, Redis 7+) or classic (PUBLISH,
    /// copied to every shard; needed while Go nodes share the Cluster). Ignored on standalone.
    #[arg(long, env = "WSS_PUBSUB", value_enum, default_value_t = PubsubArg::Sharded)]
    pub pubsub: PubsubArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PubsubArg {
    Sharded,
    Classic,
}

impl RedisArgs {
    /// The validated Redis settings, or None when no URL was given.
    pub fn config(&self) -> Option<wsctl::RedisConfig> {
        let url = self.redis_uri.as_ref().filter(|u| !u.trim().is_empty())?;
        Some(wsctl::RedisConfig {
            url: url.trim().to_string(),
            force_cluster: self.redis_cluster,
            username: self.redis_username.clone(),
            password: self.redis_password.clone(),
            pubsub: match self.pubsub {
                PubsubArg::Sharded => wsctl::PubsubMode::Sharded,
                PubsubArg::Classic => wsctl::PubsubMode::Classic,
            },
        })
    }
}
