//! `wsctl metrics`: not built yet (issue 5).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct MetricsArgs {}

pub async fn run(_args: MetricsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`wsctl metrics` is not built yet")
}
