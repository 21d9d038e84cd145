//! `berth up` (placeholder until the manifests work lands).

use std::process::ExitCode;

/// Arguments of `berth up`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `berth up`.
pub fn run(_global: &super::Global, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("berth up is not implemented yet")
}
