//! Running code inside a network namespace: a helper thread enters it with setns (only that
//! thread moves), runs the closure and ends. Sockets created there stay in that namespace, so
//! tests and probes can connect into an instance without spawning processes.

use std::fs::File;
use std::path::Path;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::net::NetError;

/// Runs `f` on a thread that has joined the network namespace at `path`.
pub fn run_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
    let setns_err = |source: std::io::Error| NetError::Setns {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(setns_err)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(LinkNameSpaceType::Network),
            )
            .map_err(|e| setns_err(e.into()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(setns_err(std::io::Error::other(
                "the thread inside the namespace panicked",
            )))
        })
    })
}
