//! Hidden verbs of the berth binary re-executed by itself: `__init` (a container's init,
//! see `berth_agent::host::container::init`). Not for people: no stable interface.

use std::process::ExitCode;

/// Runs `berth __init`: becomes the container's program, or returns 1 after reporting why
/// it could not.
pub fn init() -> ExitCode {
    ExitCode::from(berth_agent::host::container::init::main())
}

/// Runs `berth __shim DATA_DIR ID [--rm]` (see `berth_agent::host::container::shim`).
pub fn shim() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let cgroups = super::cgroups();
    ExitCode::from(berth_agent::host::container::shim::main(
        &args,
        cgroups.as_ref(),
    ))
}

/// Runs `berth __shim-exit STORE_DIR ID STATUS [--rm]`: the tiny shim's last step
/// (`berth_agent::host::container::shim::exit_main`).
pub fn shim_exit() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let cgroups = super::cgroups();
    ExitCode::from(berth_agent::host::container::shim::exit_main(
        &args,
        cgroups.as_ref(),
    ))
}

/// Runs `berth __exec` (see `berth_agent::host::container::exec`).
pub fn exec() -> ExitCode {
    ExitCode::from(berth_agent::host::container::exec::main())
}
