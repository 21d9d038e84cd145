//! The persisted allocation states of networking under `<data-dir>/net/`:
//!
//! ```text
//! net/            0700
//!   net.lock      flock: exclusive for every read-modify-write of the files below
//!   ipam.json     net::IpamState (instance -> address)
//!   ports.json    net::PortState (instance -> host port, `network: host`)
//!   bridge.json   the bridge this data dir created (teardown deletes only that one)
//!   config.json   the NetConfig the agent last opened with (teardown reads it)
//! ```
//!
//! Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash leaves the
//! old or the new state, never a torn one. It must not: touch anything outside its directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::net::NetError;

/// The directory of the networking state, and its lock.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// An exclusive hold on the state directory; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_owned();
    move |source| NetError::State { path, op, source }
}

impl StateDir {
    /// `<data_dir>/net`, created 0700 if missing.
    pub fn open(data_dir: &Path) -> Result<Self, NetError> {
        let dir = data_dir.join("net");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir, "create directory"))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive lock (blocking).
    pub fn lock(&self) -> Result<StateLock, NetError> {
        let path = self.dir.join("net.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path, "open lock"))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive).map_err(|e| NetError::State {
            path: path.clone(),
            op: "lock",
            source: e.into(),
        })?;
        Ok(StateLock { _file: file })
    }

    /// Reads `name`, or `None` if it does not exist. Call with the lock held.
    pub fn read<T: DeserializeOwned>(
        &self,
        _lock: &StateLock,
        name: &str,
    ) -> Result<Option<T>, NetError> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| NetError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, "read")(e)),
        }
    }

    /// Removes `name` (gone already is fine). Call with the lock held.
    pub fn remove(&self, _lock: &StateLock, name: &str) -> Result<(), NetError> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, "remove")(e)),
        }
    }

    /// Replaces `name` atomically. Call with the lock held.
    pub fn write<T: Serialize>(
        &self,
        _lock: &StateLock,
        name: &str,
        value: &T,
    ) -> Result<(), NetError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| NetError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        f.write_all(&bytes).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir, "fsync directory"))
    }
}
