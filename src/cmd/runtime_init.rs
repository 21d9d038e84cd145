//! Hidden verbs of the berth binary re-executed by itself: `__init` (a container's init,
//! see `berth_agent::host::container::init`). Not for people: no stable interface.

use std::process::ExitCode;

/// Runs `berth __init`: becomes the container's program, or returns 1 after reporting why
/// it could not.
pub fn init() -> ExitCode {
    ExitCode::from(berth_agent::host::container::init::main())
}
