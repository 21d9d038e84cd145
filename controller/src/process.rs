//! Child processes with deadlines (the controller runs `git`). Owns nothing else.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits for `child` up to `timeout`. On timeout the child (ours, by pid) is killed and
/// reaped, and `None` is returned.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    #[allow(
        clippy::disallowed_methods,
        reason = "a process deadline is wall time, not a decision"
    )]
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
