//! `berth validate` (placeholder until the manifests work lands).

use std::process::ExitCode;

/// Arguments of `berth validate`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `berth validate`.
pub fn run(_global: &super::Global, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("berth validate is not implemented yet")
}
