//! The runtime's error type: what went wrong with which container, and its class.

use std::path::PathBuf;

pub use berth_manifests::ErrorKind;

/// Errors of the pure runtime layer (spec validation, state transitions, lookups).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A field of the container spec is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidSpec {
        /// The flag or field, e.g. `--volume` or `process.cwd`.
        field: &'static str,
        /// What is wrong and what to do instead.
        reason: String,
    },
    /// A transition the lifecycle does not allow.
    #[error("container {id} is {status}: cannot {action}{hint}")]
    BadState {
        /// The container.
        id: String,
        /// Its current status.
        status: crate::runtime::state::Status,
        /// What was asked.
        action: &'static str,
        /// What to do instead, with a leading separator, or empty.
        hint: &'static str,
    },
    /// A user or group name not found in the container's files.
    #[error("no {what} named {name:?} in the container's {file}")]
    UnknownUser {
        /// `user` or `group`.
        what: &'static str,
        /// The name asked for.
        name: String,
        /// `/etc/passwd` or `/etc/group`.
        file: &'static str,
    },
    /// A path given where a directory inside the data dir was expected.
    #[error("path {path} is not usable: {reason}")]
    BadPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl RuntimeError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidSpec { .. } | Self::BadPath { .. } => ErrorKind::InvalidInput,
            Self::UnknownUser { .. } => ErrorKind::NotFound,
            Self::BadState { .. } => ErrorKind::Conflict,
        }
    }
}
