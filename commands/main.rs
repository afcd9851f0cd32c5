//! The `wsctl` binary: parses arguments, sets up logging, runs one subcommand, and maps the
//! outcome to an exit code. Subcommands live one per file and stay thin: the work is in the
//! `wsctl` library.

mod cli;
mod load;
mod metrics;
mod routes;
mod serve;
mod serve_security;
mod token;
mod util;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Routes(args) => routes::run(args).await,
            Command::Metrics(args) => metrics::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Completions(args) => cli::completions(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            // A closed stdout (`wsctl routes list | head`) is not a failure (ripgrep does this).
            if err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
                return ExitCode::SUCCESS;
            }
            eprintln!("wsctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}
