//! `berth inspect ID`: one container's full record (spec, state, exit) as JSON.

use std::process::ExitCode;

use berth_agent::host::container::{self as host, Store};

/// Arguments of `berth inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container id, unique id prefix or name
    pub id: String,
}

/// Runs `berth inspect`.
pub fn run(global: &super::Global, args: Args) -> anyhow::Result<ExitCode> {
    let store = Store::new(&global.data_dir);
    let listed = store.get(&args.id)?;
    let value = serde_json::json!({
        "summary": super::ps::row(&listed, &host::hostname()),
        "status": listed.status,
        "exit": listed.exit,
        "state": listed.state,
        "state_dir": store.dir(&listed.state.spec.id),
    });
    crate::output::json(&value)?;
    Ok(ExitCode::SUCCESS)
}
