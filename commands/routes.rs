//! `wsctl routes`: not built yet (issue 4).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct RoutesArgs {}

pub async fn run(_args: RoutesArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`wsctl routes` is not built yet")
}
