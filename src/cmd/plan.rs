//! `berth plan` (placeholder until the manifests work lands).

use std::process::ExitCode;

/// Arguments of `berth plan`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `berth plan`.
pub fn run(_global: &super::Global, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("berth plan is not implemented yet")
}
