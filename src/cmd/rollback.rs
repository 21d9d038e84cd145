//! `berth rollback APP [--to N]`: pins the app to revision N (default: the previous good
//! one) until its manifest changes in git.

use std::process::ExitCode;

use super::Global;
use super::remote::{block_on, client};
use crate::output::{self, Format};

/// Arguments of `berth rollback`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The app
    pub app: String,
    /// The revision to pin (default: the previous good one)
    #[arg(long)]
    pub to: Option<u64>,
}

/// Runs `berth rollback`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let rev = block_on(client(global)?.rollback(&args.app, args.to))??;
    if global.output == Format::Json {
        output::json(&rev)?;
    } else {
        println!(
            "{} pinned to revision {} ({}); the next change of its manifest clears the pin",
            rev.app, rev.number, rev.image
        );
    }
    Ok(ExitCode::SUCCESS)
}
