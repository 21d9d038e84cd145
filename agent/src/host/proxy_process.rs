//! The long-lived `berth proxy` process of one data dir: started by the agent (in its own
//! process group, so it survives the agent's restart or `kill -9`), found again by the next
//! agent through its control socket, and stopped by `berth down`.
//!
//! ```text
//! <data-dir>/run/          0700
//!   proxy.sock             the control socket (0600), see proxy::control
//!   proxy.json             {"pid":…, "start_time":…} of the proxy this data dir started
//! ```
//!
//! The record holds the pid and its start time (field 22 of `/proc/<pid>/stat`): [`stop`]
//! signals the pid only while the process at that pid started at that time, so a reused pid
//! is never signalled. It must not: signal any process it did not start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::agentstate::write_atomic;
use crate::host::sys;
use crate::proxy::ProxyError;
use crate::proxy::control::{ProxyClient, connect_or_spawn};

const RECORD: &str = "proxy.json";

/// The pid and start time of the proxy a data dir's agent started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    /// Its pid.
    pub pid: i32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// `<data_dir>/run`.
pub fn run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

/// The control socket of `data_dir`'s proxy.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    run_dir(data_dir).join("proxy.sock")
}

fn control_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ProxyError {
    let path = path.to_owned();
    move |source| ProxyError::Control { path, op, source }
}

/// The recorded proxy of `data_dir`, if any.
pub fn record(data_dir: &Path) -> Option<ProxyRecord> {
    let bytes = std::fs::read(run_dir(data_dir).join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the recorded process still runs (same pid, same start time, not a zombie).
pub fn alive(rec: &ProxyRecord) -> bool {
    let proc_root = Path::new("/proc");
    if sys::start_time(proc_root, rec.pid) != Some(rec.start_time) {
        return false;
    }
    // A zombie keeps its stat until reaped: it is gone for our purposes.
    let stat = std::fs::read_to_string(proc_root.join(rec.pid.to_string()).join("stat"))
        .unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Connects to `data_dir`'s proxy, starting `<exe> proxy --socket …` when none answers, and
/// records a started one. Returns the client and whether it was started now.
pub async fn ensure(exe: &Path, data_dir: &Path) -> Result<(ProxyClient, bool), ProxyError> {
    let socket = socket_path(data_dir);
    let dir = run_dir(data_dir);
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(control_err(&dir, "create directory"))?;
    }
    let (client, spawned) = connect_or_spawn(exe, &socket, Duration::from_secs(10)).await?;
    let Some(spawned) = spawned else {
        return Ok((client, false));
    };
    let pid = i32::try_from(spawned.pid).unwrap_or(0);
    let Some(start_time) = sys::start_time(Path::new("/proc"), pid) else {
        return Err(ProxyError::Protocol {
            reason: format!("the proxy started as pid {pid} is already gone"),
        });
    };
    let bytes =
        serde_json::to_vec(&ProxyRecord { pid, start_time }).map_err(|e| ProxyError::Protocol {
            reason: e.to_string(),
        })?;
    write_atomic(&dir, RECORD, &bytes).map_err(control_err(&dir.join(RECORD), "record"))?;
    Ok((client, true))
}

/// Stops `data_dir`'s recorded proxy: SIGTERM, then SIGKILL after `grace`; removes the
/// record and the socket. Returns whether a process was signalled. A record whose process
/// is gone (or whose pid now belongs to another process) is just removed.
pub async fn stop(data_dir: &Path, grace: Duration) -> Result<bool, ProxyError> {
    let dir = run_dir(data_dir);
    let mut signalled = false;
    if let Some(rec) = record(data_dir) {
        if alive(&rec) {
            sys::kill(rec.pid, libc::SIGTERM).map_err(control_err(&dir, "signal the proxy"))?;
            signalled = true;
            let deadline = tokio::time::Instant::now() + grace;
            while alive(&rec) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if alive(&rec) {
                sys::kill(rec.pid, libc::SIGKILL).map_err(control_err(&dir, "kill the proxy"))?;
                while alive(&rec) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        remove_if_present(&dir.join(RECORD))?;
    }
    remove_if_present(&socket_path(data_dir))?;
    Ok(signalled)
}

fn remove_if_present(path: &Path) -> Result<(), ProxyError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(control_err(path, "remove")(e)),
    }
}
