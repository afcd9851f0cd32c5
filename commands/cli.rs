//! Command-line arguments for every subcommand (clap derive), shared argument groups (Redis
//! connection), `wsctl completions`, and the hidden `wsctl generate` that writes the checked-in
//! man pages and completions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

/// `--version`: the package version and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("WSCTL_GIT_COMMIT"), ")");
/// Shells whose completions are checked into completions/, with their file names.
pub const COMPLETION_FILES: [(Shell, &str); 3] = [(Shell::Bash, "wsctl.bash"), (Shell::Zsh, "_wsctl"), (Shell::Fish, "wsctl.fish")];

/// Non-sticky real-time WebSocket messaging over Redis: the server, a load generator, the
/// route-table tool and a live metrics view, in one binary.
#[derive(Debug, Parser)]
#[command(after_help = "Exit codes: 0 ok (a drain that ran out of time too), 1 failure (Redis, CloudWatch or a node\n\
unreachable, a port in use, problems found by config check), 2 usage (a bad flag or value, a setting\n\
that cannot work, a bad settings file), 3 `wsctl load` recognized none of the frames, 99 a load\n\
threshold failed.\n\
Examples:\n  wsctl serve --redis-uri redis://127.0.0.1:6379\n  wsctl load --spawn-local\n  \
wsctl routes servers --redis-uri redis://127.0.0.1:6379\n  wsctl metrics tail --prometheus http://127.0.0.1:8081/metrics\n  \
wsctl config default > wsctl.yaml")]
#[command(name = "wsctl", version = VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr: human-readable text, or one JSON object per line for log shippers.
    /// Verbosity comes from RUST_LOG (e.g. RUST_LOG=wsctl=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WSS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Runtime worker threads (default: one per CPU). 1 runs everything on one thread with no
    /// cross-thread wake-ups: the cheapest per message when several processes share few cores.
    /// `wsctl load` also runs as many connection loops (one thread each), which carry the
    /// traffic of the connections split among them.
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
    /// Settings files: print a complete default one, or check one.
    Config(crate::config::ConfigArgs),
    /// Mint a JWT that `serve` accepts (HS256 from JWT_SECRET, or RS256/ES256 from a PEM key).
    Token(crate::token::TokenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write the man pages (DIR/man) and shell completions (DIR/completions) checked into the repo.
    #[command(hide = true, after_help = "Examples:\n  cargo run -q -- generate .")]
    Generate(GenerateArgs),
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
#[command(after_help = "Examples:\n  wsctl completions bash > /etc/bash_completion.d/wsctl\n  \
wsctl completions zsh > \"${fpath[1]}/_wsctl\"\n  wsctl completions fish > ~/.config/fish/completions/wsctl.fish")]
pub struct CompletionsArgs {
    /// The shell to generate for.
    pub shell: Shell,
}

/// The command-line definition: [`Cli`]'s, with examples filled in for subcommands that have
/// none of their own (from the example lines of their parent that name them, or, for a group,
/// from its children's), so every `--help` ends with examples.
pub fn command() -> clap::Command {
    let cmd = Cli::command();
    let root_examples = examples(&cmd);
    fill_examples(cmd, "wsctl", &root_examples)
}

/// The example lines ("  wsctl ...") of a command's after-help.
fn examples(cmd: &clap::Command) -> Vec<String> {
    let text = cmd.get_after_help().map(|h| h.to_string()).unwrap_or_default();
    text.lines().skip_while(|l| !l.starts_with("Examples:")).skip(1).filter(|l| l.starts_with("  ")).map(str::to_string).collect()
}

fn fill_examples(cmd: clap::Command, path: &str, from_parent: &[String]) -> clap::Command {
    let own = examples(&cmd);
    let inherited: Vec<String> = from_parent.iter().filter(|l| l.contains(&format!("{path} ")) || l.ends_with(path)).cloned().collect();
    let mut cmd = cmd;
    if own.is_empty() {
        let mut lines = inherited;
        if lines.is_empty() {
            for sub in cmd.get_subcommands() {
                lines.extend(examples(sub).into_iter().take(2));
            }
        }
        if !lines.is_empty() {
            let before = cmd.get_after_help().map(|h| format!("{h}\n")).unwrap_or_default();
            cmd = cmd.after_help(format!("{before}Examples:\n{}", lines.join("\n")));
        }
    }
    let lines = examples(&cmd);
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        let sub_path = format!("{path} {name}");
        cmd = cmd.mut_subcommand(&name, |s| fill_examples(s, &sub_path, &lines));
    }
    cmd
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = command();
    clap_complete::generate(args.shell, &mut cmd, "wsctl", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The repository root: writes DIR/man/*.1 and DIR/completions/*.
    pub dir: PathBuf,
}

/// Writes one man page per (sub)command and the completions for [`COMPLETION_FILES`].
pub fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let man = args.dir.join("man");
    let completions = args.dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // The commit would make every page stale at every commit: pages carry the version only.
    let cmd = command().version(env!("CARGO_PKG_VERSION"));
    write_man_pages(&cmd, "", &man)?;
    for (shell, file) in COMPLETION_FILES {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command(), "wsctl", &mut out);
        write(&completions.join(file), &out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_man_pages(cmd: &clap::Command, prefix: &str, dir: &Path) -> anyhow::Result<()> {
    let name = if prefix.is_empty() { cmd.get_name().to_string() } else { format!("{prefix}-{}", cmd.get_name()) };
    let page = cmd.clone().name(&name).bin_name(name.replace('-', " "));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    write(&dir.join(format!("{name}.1")), &out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, &name, dir)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
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
