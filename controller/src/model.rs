//! The controller's records as stored (JSON values in the [`Store`](crate::store::Store)) and
//! their keys. Plain data plus conversions to the wire types; no I/O, no clock.
//!
//! Key layout (every key is under one of these prefixes):
//!
//! | key | value |
//! |---|---|
//! | `apps/<app>/current` | [`AppRecord`]: target revision, pin, whether git still has the app |
//! | `apps/<app>/revisions/<n, 8 digits>` | [`StoredRevision`] (history kept forever) |
//! | `hosts/<host>` | [`HostRecord`]: registration, last report, last seen |
//! | `assignments/<host>` | [`Assignment`](berth_manifests::wire::Assignment) |
//! | `events/<seq, 20 digits>` | [`Event`](berth_manifests::wire::Event) (the newest few thousand) |
//! | `sync` | [`SyncStatus`](berth_manifests::wire::SyncStatus) |
//! | `unplaced` | the apps that did not fit, [`Unplaced`](crate::assign::Unplaced) list |

use berth_manifests::App;
use berth_manifests::wire::{HostReport, Registration, RevisionInfo, RevisionSpec, RevisionState};
use serde::{Deserialize, Serialize};

/// Key of an app's record.
pub fn app_key(app: &str) -> String {
    format!("apps/{app}/current")
}

/// Prefix of an app's revisions.
pub fn revisions_prefix(app: &str) -> String {
    format!("apps/{app}/revisions/")
}

/// Key of one revision (zero-padded so keys sort by number).
pub fn revision_key(app: &str, number: u64) -> String {
    format!("apps/{app}/revisions/{number:08}")
}

/// Key of a host's record.
pub fn host_key(host: &str) -> String {
    format!("hosts/{host}")
}

/// Key of a host's assignment.
pub fn assignment_key(host: &str) -> String {
    format!("assignments/{host}")
}

/// Key of an event.
pub fn event_key(seq: u64) -> String {
    format!("events/{seq:020}")
}

/// Key of the git source's state.
pub const SYNC_KEY: &str = "sync";

/// Key of the apps placement could not (entirely) place, as the last placement found them.
pub const UNPLACED_KEY: &str = "unplaced";

/// One numbered revision of an app, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRevision {
    /// The app.
    pub app: String,
    /// 1, 2, … per app.
    pub number: u64,
    /// The normalized spec.
    pub spec: App,
    /// The spec's content hash.
    pub spec_hash: String,
    /// The image's manifest digest.
    pub image_digest: String,
    /// The commit it came from.
    pub commit: String,
    /// Why it exists (`commit 1a2b3c4d5e6f: subject`).
    pub cause: String,
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// Where it stands.
    pub state: RevisionState,
    /// Why it failed.
    #[serde(default)]
    pub failure: Option<String>,
    /// When a host first reported its rollout complete: it is known good.
    #[serde(default)]
    pub completed_ms: Option<u64>,
}

impl StoredRevision {
    /// What an agent needs to run it.
    pub fn to_spec(&self) -> RevisionSpec {
        RevisionSpec {
            app: self.app.clone(),
            number: self.number,
            spec: self.spec.clone(),
            spec_hash: self.spec_hash.clone(),
            image_digest: self.image_digest.clone(),
        }
    }

    /// The `berth revisions` row; `pinned` when the app is pinned to it.
    pub fn to_info(&self, pinned: bool) -> RevisionInfo {
        RevisionInfo {
            app: self.app.clone(),
            number: self.number,
            image: self.spec.image.to_string(),
            digest: self.image_digest.clone(),
            state: self.state,
            pinned,
            cause: self.cause.clone(),
            commit: self.commit.clone(),
            spec_hash: self.spec_hash.clone(),
            created_ms: self.created_ms,
            failure: self.failure.clone(),
        }
    }
}

/// An app's current state, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The app.
    pub name: String,
    /// The revision the cluster should run.
    pub target: u64,
    /// `berth rollback` pinned the app to `target`.
    #[serde(default)]
    pub pinned: bool,
    /// The newest commit still defines the app; when false the app is on no host.
    pub in_git: bool,
    /// The last failure concerning the app.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// An app's record and every revision of it, sorted by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHistory {
    /// The record.
    pub record: AppRecord,
    /// The revisions, oldest first.
    pub revisions: Vec<StoredRevision>,
}

impl AppHistory {
    /// Revision `number`, if it exists.
    pub fn revision(&self, number: u64) -> Option<&StoredRevision> {
        self.revisions.iter().find(|r| r.number == number)
    }

    /// The newest revision (from git).
    pub fn newest(&self) -> Option<&StoredRevision> {
        self.revisions.last()
    }

    /// The revision the cluster should run.
    pub fn target(&self) -> Option<&StoredRevision> {
        self.revision(self.record.target)
    }
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// What the agent announced.
    pub registration: Registration,
    /// When it registered first (Unix ms).
    pub registered_ms: u64,
    /// When it last registered or reported (Unix ms).
    pub last_seen_ms: u64,
    /// Its newest report.
    #[serde(default)]
    pub last_report: Option<HostReport>,
    /// When the controller marked it down (silent past its grace period); `None` while up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since_ms: Option<u64>,
    /// When it came back after being down (it gets work one grace period later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_ms: Option<u64>,
    /// When it last registered, until it reports its whole assignment ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converging_since_ms: Option<u64>,
    /// How long its last convergence took (registration → every assigned instance ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged_in_ms: Option<u64>,
}
