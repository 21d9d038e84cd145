//! Errors of the cgroup adapter.

use std::io;
use std::path::PathBuf;

/// The class of an error, shared by every crate (containerd's `errdefs`).
pub use berth_manifests::ErrorKind;

/// Everything that can go wrong while managing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "invalid cgroup path {path:?}: {reason}; use a relative path of [A-Za-z0-9_.+-] components such as berth/<container-id>"
    )]
    InvalidPath { path: String, reason: &'static str },

    #[error("invalid cgroup resources: {reason}")]
    InvalidResources { reason: String },

    #[error(
        "no usable cgroup hierarchy in {source_name}: mount cgroup v1 controllers or cgroup2 at /sys/fs/cgroup"
    )]
    NoHierarchy { source_name: String },

    #[error(
        "cgroup v1 controller {controller} is not mounted; mount it under /sys/fs/cgroup or drop the limit that needs it"
    )]
    ControllerMissing { controller: &'static str },

    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },

    #[error("failed to create cgroup directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "cgroup {path} is still busy after {attempts} removal attempts; kill its processes (kill_all) and wait for them first"
    )]
    Busy {
        path: PathBuf,
        attempts: u32,
        #[source]
        source: io::Error,
    },

    #[error("failed to remove cgroup directory {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("unexpected content in {path}: {reason}")]
    Parse { path: PathBuf, reason: String },

    #[error("failed to signal pid {pid} of cgroup {path}")]
    Signal {
        pid: u32,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error(
        "failed to {step} the eBPF device program for cgroup {path}; the kernel needs CONFIG_CGROUP_BPF and the caller CAP_SYS_ADMIN (or CAP_BPF)"
    )]
    DeviceProgram {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "cgroup {path} did not become {state} in time; check for processes stuck in the kernel"
    )]
    FreezeTimeout { path: PathBuf, state: &'static str },
}

impl CgroupError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidPath { .. } | Self::InvalidResources { .. } => ErrorKind::InvalidInput,
            Self::NoHierarchy { .. } | Self::ControllerMissing { .. } => ErrorKind::Unavailable,
            Self::Read { source, .. }
            | Self::Write { source, .. }
            | Self::Create { source, .. }
            | Self::Remove { source, .. }
            | Self::DeviceProgram { source, .. } => io_kind(source),
            Self::Busy { .. } => ErrorKind::Conflict,
            Self::Signal { .. } | Self::Parse { .. } | Self::FreezeTimeout { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

fn io_kind(err: &io::Error) -> ErrorKind {
    match err.raw_os_error() {
        Some(libc::ENOENT) => ErrorKind::NotFound,
        Some(libc::EBUSY) => ErrorKind::Conflict,
        Some(libc::EINVAL) => ErrorKind::InvalidInput,
        Some(libc::ENOSPC) | Some(libc::EAGAIN) | Some(libc::ENOMEM) => {
            ErrorKind::ResourceExhausted
        }
        _ => ErrorKind::Internal,
    }
}
