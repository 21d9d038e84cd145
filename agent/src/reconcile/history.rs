//! What the agent remembers about its apps between reconciles and across its own restarts
//! (saved by the [`super::traits::StateStore`] after every reconcile): rollout progress,
//! failed revisions, and per-instance restart backoff, probe state and stop deadlines.
//! Plain data; the planner reads it and returns the next version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::health::ProbeState;
use crate::restart::Backoff;

/// The identity of a revision on a host: spec hash and image digest. Two revisions with the
/// same key run the same thing (a `berth rollback` to N is the same key as N).
pub fn revision_key(spec_hash: &str, image_digest: &str) -> String {
    format!("{spec_hash}@{image_digest}")
}

/// The whole agent's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Per app.
    #[serde(default)]
    pub apps: BTreeMap<String, AppHistory>,
}

/// One app's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppHistory {
    /// The next instance sequence number (ids are `<app>-<revision>-<seq>`).
    #[serde(default)]
    pub next_seq: u64,
    /// The revision key whose rollout last completed here.
    #[serde(default)]
    pub current: Option<String>,
    /// The rollout in progress.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Revisions that failed here (key → reason): not retried until the target changes.
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
    /// Per instance id.
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceMemory>,
    /// The transient-error backoff of the app's reconcile.
    #[serde(default)]
    pub retry: Retry,
}

/// A rollout in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The revision key being rolled out.
    pub key: String,
    /// Its number.
    pub number: u64,
    /// When it started (Unix ms); the deadline counts from here.
    pub started_at_ms: u64,
}

/// Backoff after transient errors (pull failed, runtime busy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Failed attempts in a row.
    pub attempts: u32,
    /// No new instance is started before this (Unix ms).
    pub not_before_ms: u64,
    /// The last error, for status.
    #[serde(default)]
    pub last_error: String,
}

/// What the agent knows of one instance beyond what the runtime says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMemory {
    /// Restart backoff.
    #[serde(default)]
    pub backoff: Backoff,
    /// Probe state of the current run.
    #[serde(default)]
    pub probe: ProbeState,
    /// A restart is scheduled at this time (Unix ms).
    #[serde(default)]
    pub restart_at_ms: Option<u64>,
    /// The backoff to keep once the scheduled restart happened.
    #[serde(default)]
    pub pending_backoff: Option<Backoff>,
    /// Being stopped: SIGKILL at this time if still running (Unix ms).
    #[serde(default)]
    pub kill_at_ms: Option<u64>,
    /// SIGKILL was sent.
    #[serde(default)]
    pub killed: bool,
    /// Handed to the traffic hook as ready.
    #[serde(default)]
    pub admitted: bool,
    /// Exit code of the last run.
    #[serde(default)]
    pub last_exit_code: Option<i32>,
    /// Why it is not ready or last exited.
    #[serde(default)]
    pub message: String,
}
