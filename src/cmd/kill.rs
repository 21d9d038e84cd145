//! `berth kill [-s SIG] ID`: sends one signal to the container's init now.

use std::process::ExitCode;

use berth_agent::host::container::{self as host, Store};

use super::UsageError;

/// Arguments of `berth kill`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Signal name or number
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    /// Container id, unique id prefix or name
    pub id: String,
}

/// Parses a signal name (`TERM`, `SIGTERM`) or number.
pub fn signal(s: &str) -> anyhow::Result<i32> {
    let sig: berth_manifests::Signal = s.parse().map_err(|e| UsageError(format!("{e}")))?;
    Ok(i32::from(sig.number()))
}

/// Runs `berth kill`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let sig = signal(&args.signal)?;
    let id = host::kill(&Store::new(&global.data_dir), &args.id, sig)?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}
