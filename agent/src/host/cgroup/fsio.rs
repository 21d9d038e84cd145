//! Small helpers for cgroupfs files: every read and write names its path in the error.
//!
//! Writes open an existing file (never create one) with `O_TRUNC`, as runc does, so a fake
//! tree in a tempdir behaves like cgroupfs for a test that reads the value back.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::thread;
use std::time::Duration;

use super::error::CgroupError;

/// Writes `value` to the existing control file `path`.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(false)
        .open(path)
        .map_err(err)?;
    file.write_all(value.as_bytes()).map_err(err)
}

/// Reads a whole control file.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file holding one unsigned number (`memory.current`, `pids.current`, ...).
pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path)?;
    parse_u64(path, text.trim())
}

/// Reads the value of `key` from a flat keyed file of `key value` lines (`cpu.stat`,
/// `memory.events`, v1 `memory.oom_control`).
pub(crate) fn read_keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = read(path)?;
    keyed_value(&text, key)
        .ok_or_else(|| CgroupError::Parse {
            path: path.to_path_buf(),
            reason: format!("no {key:?} line"),
        })
        .and_then(|value| parse_u64(path, value))
}

/// The value of `key` in `key value` lines, if present.
pub(crate) fn keyed_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(key))
            .then(|| fields.next())
            .flatten()
    })
}

fn parse_u64(path: &Path, value: &str) -> Result<u64, CgroupError> {
    value.parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        reason: format!("{value:?} is not an unsigned number"),
    })
}

/// Reads `cgroup.procs`: one pid per line.
pub(crate) fn read_pids(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let text = read(path)?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim().parse().map_err(|_| CgroupError::Parse {
                path: path.to_path_buf(),
                reason: format!("{line:?} is not a pid"),
            })
        })
        .collect()
}

/// Creates `path` and its missing parents; an existing directory is fine.
pub(crate) fn create_dir(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(|source| CgroupError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// How often and how long [`remove_dir`] retries a busy cgroup: the kernel keeps a cgroup
/// busy for a moment after its last process exits (the exit is reaped asynchronously).
const REMOVE_ATTEMPTS: u32 = 12;
const REMOVE_FIRST_DELAY: Duration = Duration::from_millis(5);
const REMOVE_MAX_DELAY: Duration = Duration::from_millis(200);

/// Removes the (leaf) cgroup directory `path`; a missing directory is success. `EBUSY` is
/// retried with doubling delays (≈1.2 s in total), then reported as [`CgroupError::Busy`].
pub(crate) fn remove_dir(path: &Path) -> Result<(), CgroupError> {
    let mut delay = REMOVE_FIRST_DELAY;
    let mut attempt = 1;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                if attempt >= REMOVE_ATTEMPTS {
                    return Err(CgroupError::Busy {
                        path: path.to_path_buf(),
                        attempts: attempt,
                        source: err,
                    });
                }
                thread::sleep(delay);
                delay = (delay * 2).min(REMOVE_MAX_DELAY);
                attempt += 1;
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Polls `done` up to `attempts` times, 10 ms apart; true once it held.
pub(crate) fn poll(
    attempts: u32,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    for attempt in 0..attempts {
        if done()? {
            return Ok(true);
        }
        if attempt + 1 < attempts {
            thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(false)
}
