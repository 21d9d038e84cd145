//! A daemon's pid file that cannot lie: the file is `flock`ed by the process for its whole
//! life (a second one is refused while the first runs, and a crash releases it), and it
//! records the pid with the process's start time, so a pid reused by another program after
//! a crash is never signalled. `berth up` writes one; `berth down` reads it to stop `up`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use super::sys;

/// What the file holds: the process and whatever its owner adds (`extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PidRecord {
    /// The process.
    pub pid: i32,
    /// Its start time (clock ticks after boot, `/proc/PID/stat` field 22).
    pub start_time: u64,
    /// The owner's fields (state, addresses, …).
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl PidRecord {
    /// Whether the recorded process still runs (same pid and start time).
    pub fn alive(&self) -> bool {
        sys::start_time(Path::new("/proc"), self.pid) == Some(self.start_time)
    }

    /// Sends `signal` if the recorded process still runs; whether it did.
    pub fn signal(&self, signal: i32) -> io::Result<bool> {
        if !self.alive() {
            return Ok(false);
        }
        match sys::kill(self.pid, signal) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PidLockError {
    /// Another process holds it.
    #[error("{path} is held by a running process (pid {pid})")]
    Held {
        /// The pid file.
        path: PathBuf,
        /// Its holder, as recorded (0 when unreadable).
        pid: i32,
    },
    /// The file could not be opened, locked or written.
    #[error("cannot use the pid file {path}: {source}")]
    Io {
        /// The pid file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The held lock; released when dropped (or when the process dies). The file stays, so
/// that `read` can tell a crash (file present, process gone) from a clean stop (file
/// removed by [`PidLock::release`]).
#[derive(Debug)]
pub struct PidLock {
    file: File,
    path: PathBuf,
    record: PidRecord,
}

impl PidLock {
    /// Takes the lock at `path` (mode 0600) for this process and records it with `extra`.
    pub fn acquire(path: &Path, extra: serde_json::Value) -> Result<PidLock, PidLockError> {
        let io_err = |source| PidLockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(io_err)?
        };
        if let Err(e) = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                return Err(PidLockError::Held {
                    path: path.to_path_buf(),
                    pid: read(path).map_or(0, |r| r.pid),
                });
            }
            return Err(io_err(e.into()));
        }
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let record = PidRecord {
            pid,
            start_time: sys::start_time(Path::new("/proc"), pid).unwrap_or(0),
            extra,
        };
        let mut lock = PidLock {
            file,
            path: path.to_path_buf(),
            record,
        };
        lock.write().map_err(io_err)?;
        Ok(lock)
    }

    /// Replaces the owner's fields.
    pub fn update(&mut self, extra: serde_json::Value) -> Result<(), PidLockError> {
        self.record.extra = extra;
        self.write().map_err(|source| PidLockError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// This process's record.
    pub fn record(&self) -> &PidRecord {
        &self.record
    }

    /// Removes the file and releases the lock (a clean stop).
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    fn write(&mut self) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.record).map_err(io::Error::other)?;
        // In place (the lock is on this inode): truncate, write, sync. A reader racing the
        // write sees an unparsable record and retries or treats it as "starting".
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(&bytes)?;
        self.file.sync_data()
    }
}

/// The record at `path`, if the file exists and parses.
pub fn read(path: &Path) -> Option<PidRecord> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_record_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("up/up.pid");
        let mut lock = PidLock::acquire(&path, serde_json::json!({"state": "starting"})).unwrap();
        let rec = read(&path).unwrap();
        assert_eq!(rec.pid, i32::try_from(std::process::id()).unwrap());
        assert!(rec.alive());
        assert_eq!(rec.extra["state"], "starting");

        // flock is per open file description: a second acquire in this process is refused too.
        match PidLock::acquire(&path, serde_json::Value::Null) {
            Err(PidLockError::Held { pid, .. }) => assert_eq!(pid, rec.pid),
            other => panic!("expected Held, got {other:?}"),
        }
        lock.update(serde_json::json!({"state": "ready"})).unwrap();
        assert_eq!(read(&path).unwrap().extra["state"], "ready");
        lock.release();
        assert!(read(&path).is_none());
        PidLock::acquire(&path, serde_json::Value::Null).unwrap();
    }

    #[test]
    fn a_reused_pid_is_not_alive() {
        let rec = PidRecord {
            pid: i32::try_from(std::process::id()).unwrap(),
            start_time: 1,
            extra: serde_json::Value::Null,
        };
        assert!(!rec.alive());
        assert!(!rec.signal(0).unwrap());
    }
}
