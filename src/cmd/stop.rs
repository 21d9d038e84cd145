//! `berth stop [-t SECS] ID`: the stop signal, a grace period, then SIGKILL to the whole
//! container.

use std::process::ExitCode;
use std::time::Duration;

use berth_agent::host::container::{self as host, Store};

/// Arguments of `berth stop`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds to wait after the stop signal before SIGKILL
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// The stop signal
    #[arg(short = 's', long, default_value = "TERM")]
    pub signal: String,
    /// Container id, unique id prefix or name
    pub id: String,
}

/// Runs `berth stop`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let sig = super::kill::signal(&args.signal)?;
    let cgroups = super::cgroups();
    let (id, _) = host::stop(
        &Store::new(&global.data_dir),
        cgroups.as_ref(),
        &args.id,
        sig,
        Duration::from_secs(args.time),
    )?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}
