//! `berth rm [-f] ID…`: removes stopped containers (state dir, upper layer, logs, cgroup);
//! `-f` kills running ones first.

use std::process::ExitCode;

use berth_agent::host::container::{self as host, Store};

/// Arguments of `berth rm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kill running containers first
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Container ids, unique id prefixes or names
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// Runs `berth rm`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let store = Store::new(&global.data_dir);
    let cgroups = super::cgroups();
    let mut failed = false;
    for key in &args.ids {
        match host::remove(&store, cgroups.as_ref(), key, args.force) {
            Ok(id) => println!("{id}"),
            Err(e) => {
                eprintln!("berth: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
