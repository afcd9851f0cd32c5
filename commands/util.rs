//! Process set-up shared by the subcommands: logging, the open-file limit, parsing of durations
//! and rates given on the command line.

use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Whether output to a stream may carry colour: only a terminal, and never with NO_COLOR set to
/// anything non-empty (no-color.org). `wsctl serve 2>log` writes plain text.
pub fn colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A failed log write is dropped: tracing-subscriber's default reports it with `eprintln!`,
    // which panics when stderr is a closed pipe (a log shipper gone), and a panic while stderr
    // is locked left the node deaf to SIGTERM.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(&std::io::stderr()))
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Raises the soft open-file limit to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024),
    }
}

/// Parses "30s", "1500ms", "2m" (humantime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (examples: 500ms, 30s, 2m)"))
}

/// A setting that parsed but cannot work (a zero timeout, an empty key, a file that is not a
/// key, values that contradict each other): a usage error like a value clap cannot parse, exit
/// code 2 (`EXIT_USAGE`) rather than 1, so a deploy can tell "fix the configuration" from
/// "something was unreachable".
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct UsageError(pub anyhow::Error);

/// Marks `e` as a [`UsageError`].
pub fn usage(e: impl Into<anyhow::Error>) -> anyhow::Error {
    UsageError(e.into()).into()
}
