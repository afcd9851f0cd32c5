//! `wsctl load`: not built yet (issue 3).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct LoadArgs {}

pub async fn run(_args: LoadArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`wsctl load` is not built yet")
}
