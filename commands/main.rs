//! The `wsctl` binary: parses arguments (with an optional settings file), sets up logging, runs
//! one subcommand, and maps the outcome to an exit code. Subcommands live one per file and stay
//! thin: the work is in the `wsctl` library.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success (also: stdout closed early, as in `wsctl routes list \| head`; and `serve` after a drain that ran out of `--drain-timeout`, which it logs as a warning) |
//! | 1    | failure: Redis, CloudWatch or a node unreachable, a port that cannot be bound, a settings file with problems under `config check`, a `serve` whose `--server-id` another live node holds |
//! | 2    | usage: unknown flag, a value that does not parse (clap's own code) or cannot work (`util::UsageError`: an empty key, a zero timeout, a bad load profile or threshold), or a bad `--config` file |
//! | 3    | `wsctl load`: frames arrived but none was a message of this run (`load::NOTHING_RECOGNIZED`) |
//! | 99   | `wsctl load`: the run finished but an `--assert` threshold failed (`load::THRESHOLD_FAILED`): CI can tell "too slow" from "could not run" |

mod cli;
mod config;
mod load;
mod metrics;
mod routes;
mod serve;
mod serve_security;
mod token;
mod util;

use std::process::ExitCode;

use cli::Command;

/// Exit code of a usage error: clap's, and ours for a bad settings file or a setting that parsed
/// but cannot work (`util::UsageError`).
pub const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let parsed = match config::parse() {
        Ok(p) => p,
        Err(err) => {
            eprintln!("wsctl: {err:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if matches!(&parsed.cli.command, Command::Serve(a) if a.settings.print_config) {
        return report(config::print_effective(&parsed));
    }
    let cli = parsed.cli;
    util::init_logging(cli.log_format, cli.command.default_log_level());
    let mut builder = match cli.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    report(runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Routes(args) => routes::run(args).await,
            Command::Metrics(args) => metrics::run(args).await,
            Command::Config(args) => config::run(args),
            Command::Token(args) => token::run(args),
            Command::Completions(args) => cli::completions(args),
            Command::Generate(args) => cli::generate(args),
        }
    }))
}

/// The exit code for a subcommand's outcome, printing the error chain on failure.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            // A closed stdout (`wsctl routes list | head`) is not a failure (ripgrep does this).
            if err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
                return ExitCode::SUCCESS;
            }
            eprintln!("wsctl: {err:#}");
            if err.downcast_ref::<util::UsageError>().is_some() {
                return ExitCode::from(EXIT_USAGE);
            }
            ExitCode::FAILURE
        }
    }
}
