//! Wire types between the controller and its agents (and the CLI): JSON over HTTP under
//! `/v1/`. Plain data with serde; no I/O, no clock (times are passed in as Unix milliseconds).
//!
//! The agent API (DESIGN.md §2):
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/agents/register` | [`Registration`] | [`Registered`] |
//! | `GET /v1/agents/{host}/assignment?after=V&wait=SECS` | — | [`Assignment`]; at once when its version ≠ V, else when it changes or after `wait` (then the same version) |
//! | `POST /v1/agents/{host}/report` | [`HostReport`] | `204` |
//!
//! Until mTLS lands (the multi-host layer), a shared token in `Authorization: Bearer` guards
//! it. Compatibility: fields are only added, with `#[serde(default)]`, never renamed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::App;

/// A host announcing itself to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The host's name (a DNS label), unique in the cluster.
    pub name: String,
    /// Labels for placement (`role=web`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the host offers.
    #[serde(default)]
    pub capacity: Capacity,
    /// The agent's version (`CARGO_PKG_VERSION`).
    #[serde(default)]
    pub agent_version: String,
}

/// Resources a host offers to apps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// The controller's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The host's name as the controller recorded it.
    pub name: String,
    /// The current assignment version for the host (long-poll from here).
    pub assignment_version: u64,
}

/// `POST /v1/agents/join` (with a join token) and `POST /v1/agents/{host}/certificate`
/// (renewal, over mTLS): a certificate signing request for host `name`. The agent makes its
/// key itself; the controller signs the CSR's public key for `name` alone (CN and DNS SAN),
/// ignoring any other names the CSR asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertRequest {
    /// The host.
    pub name: String,
    /// The PKCS#10 request, PEM.
    pub csr: String,
}

/// The controller's answer to a [`NodeCertRequest`]: the node certificate and the CA that
/// issued it (the CA the agent trusts from then on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertificate {
    /// The host.
    pub name: String,
    /// The node certificate, PEM.
    pub certificate: String,
    /// The controller's CA certificate, PEM.
    pub ca: String,
    /// When the certificate stops being valid (Unix ms).
    pub not_after_ms: u64,
    /// Its lifetime as issued (ms); agents renew when a third of it is left.
    pub lifetime_ms: u64,
}

/// Everything one host should run. Versions only grow; an agent caches the newest it saw
/// and keeps running it while the controller is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The host.
    pub host: String,
    /// Grows with every change of this host's assignment.
    pub version: u64,
    /// The apps placed on the host, sorted by name.
    pub apps: Vec<AssignedApp>,
}

/// One app's desired state on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedApp {
    /// The revision to run.
    pub target: RevisionSpec,
    /// The last revision known good (active before `target`), to roll back to when `target`
    /// fails its rollout; `None` for an app's first revision.
    #[serde(default)]
    pub fallback: Option<RevisionSpec>,
    /// This host's share of the app's instances.
    pub scale: Scale,
    /// Set while `berth rollback` pins the app to `target`.
    #[serde(default)]
    pub pinned: bool,
}

/// A numbered revision of an app with everything an agent needs to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSpec {
    /// The app's name.
    pub app: String,
    /// The revision number (1, 2, …) per app.
    pub number: u64,
    /// The normalized spec.
    pub spec: App,
    /// The revision's identity: the spec's content hash.
    pub spec_hash: String,
    /// The image's manifest digest, resolved once at the controller (`sha256:…`); agents
    /// pull `spec.image` by this digest so every host runs the same bytes.
    pub image_digest: String,
}

/// How many instances of an app a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Scale {
    /// Exactly this many.
    Fixed {
        /// Instances on this host.
        replicas: u32,
    },
    /// The agent's autoscaler decides within these bounds (this host's share of the app's).
    Auto {
        /// Fewest instances on this host (0: scale to zero).
        min: u32,
        /// Most instances on this host.
        max: u32,
    },
}

/// What an agent tells the controller about its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The host.
    pub host: String,
    /// The assignment version the agent is working on.
    pub assignment_version: u64,
    /// Every instance on the host.
    pub instances: Vec<InstanceReport>,
    /// Rollout progress per app.
    pub apps: Vec<AppReport>,
    /// Events since the last report (the agent keeps them until a report is accepted).
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One instance (container) of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// Container id.
    pub id: String,
    /// The app.
    pub app: String,
    /// The revision number it runs.
    pub revision: u64,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Restarts since it was created.
    pub restarts: u32,
    /// Exit code of its last run, if it ever exited.
    #[serde(default)]
    pub last_exit_code: Option<i32>,
    /// Why it is not ready, or why it last exited (probe failure, OOM kill, …).
    #[serde(default)]
    pub message: String,
    /// When it was started (Unix ms).
    pub started_at_ms: u64,
}

/// An instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Being pulled, created or started.
    Starting,
    /// Running and passing its readiness probe (or without one).
    Ready,
    /// Running but failing its probe.
    Unhealthy,
    /// Waiting to be restarted after an exit (backoff).
    Restarting,
    /// Draining or being stopped.
    Stopping,
    /// Exited and not to be restarted.
    Exited,
}

/// Where an app's rollout on a host stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    /// The app.
    pub app: String,
    /// The revision the assignment asks for.
    pub target: u64,
    /// Instances wanted on this host now (the autoscaler's choice within bounds).
    pub desired: u32,
    /// Instances of `target` that are ready.
    pub ready: u32,
    /// The rollout's state.
    pub rollout: RolloutState,
    /// Requests the host's proxy has answered for the app since it started (its counter),
    /// when the app is exposed; rates come from differences between reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_total: Option<u64>,
}

/// `GET /v1/placement`: which host runs how many instances of what, and what did not fit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementView {
    /// Every host, sorted by name.
    pub hosts: Vec<HostPlacement>,
    /// The apps with instances on no host, sorted by name.
    pub unplaced: Vec<UnplacedApp>,
}

/// One host's share of the placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlacement {
    /// The host.
    pub name: String,
    /// `ready`, `returning` or `down`.
    pub state: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it offers (0: not limited).
    pub capacity: Capacity,
    /// What its instances request.
    pub allocated: Capacity,
    /// Instances per app, sorted by app.
    pub apps: Vec<PlacedApp>,
}

/// Instances of one app on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedApp {
    /// The app.
    pub app: String,
    /// Its instances there (the autoscale maximum for autoscaled apps).
    pub instances: u32,
}

/// An app placement could not (entirely) place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnplacedApp {
    /// The app.
    pub app: String,
    /// Instances wanted.
    pub wanted: u32,
    /// Instances placed.
    pub placed: u32,
    /// Why: what one instance needs and what is free where.
    pub reason: String,
}

/// A rollout's state on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RolloutState {
    /// Replacing old instances with `target`.
    Progressing,
    /// All desired instances run `target` and are ready.
    Complete,
    /// `target` failed (deadline, crash loop) and the host went back to `to`.
    RolledBack {
        /// The revision now running.
        to: u64,
        /// What failed, e.g. `health check GET /up failed 3 times: status 500`.
        reason: String,
    },
    /// `target` failed and there was nothing to roll back to.
    Failed {
        /// What failed.
        reason: String,
    },
}

/// Something that happened, for `berth events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (Unix ms).
    pub time_ms: u64,
    /// What it is about: `app/web`, `instance/web-3-ab12`, `host/h1`, `sync`.
    pub object: String,
    /// A CamelCase reason (`RolloutStarted`, `ProbeFailed`, `RolledBack`, `SyncFailed`).
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

/// `GET /v1/status` and `berth status -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every app, sorted by name.
    pub apps: Vec<AppStatus>,
    /// Every host, sorted by name.
    pub hosts: Vec<HostStatus>,
    /// The git source.
    pub sync: SyncStatus,
}

/// One app in `berth status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// The app.
    pub name: String,
    /// The revision the cluster should run.
    pub revision: u64,
    /// Instances wanted (sum over hosts).
    pub desired: u32,
    /// Instances of `revision` ready (sum over hosts).
    pub ready: u32,
    /// Pinned by `berth rollback`.
    pub pinned: bool,
    /// The last failure (rollout or sync) concerning the app, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The newest revision git defines (differs from `revision` while pinned or after a
    /// failed rollout).
    #[serde(default)]
    pub head: u64,
    /// Requests answered for the app by the hosts' proxies (sum of their counters, as last
    /// reported); `None` when no host reports any (the app is not exposed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_total: Option<u64>,
    /// Why some of its instances are on no host (no ready matching host with room): what
    /// one instance needs and what is free where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced: Option<String>,
}

/// One host in `berth status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host.
    pub name: String,
    /// Heartbeating within its grace period.
    pub ready: bool,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it last reported (Unix ms).
    pub last_seen_ms: u64,
    /// `ready`, `returning` (back from down, gets work once it reported for a grace
    /// period) or `down` (silent past its grace period; its work went elsewhere).
    #[serde(default)]
    pub state: String,
    /// What it offers (0 in a dimension: not declared, not limited).
    #[serde(default)]
    pub capacity: Capacity,
    /// What its assigned instances request.
    #[serde(default)]
    pub allocated: Capacity,
    /// How long its last convergence took: registration → every assigned instance ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged_in_ms: Option<u64>,
}

/// The git source's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The repository.
    pub repo: String,
    /// The branch.
    pub branch: String,
    /// The last commit applied (all manifests valid).
    #[serde(default)]
    pub commit: Option<String>,
    /// Errors of the newest commit when it was refused: `path:line:col: message` lines,
    /// prefixed by the commit.
    #[serde(default)]
    pub errors: Vec<String>,
    /// When the source was last fetched (Unix ms).
    #[serde(default)]
    pub fetched_at_ms: u64,
    /// The newest commit fetched, applied or refused.
    #[serde(default)]
    pub head: Option<String>,
    /// The refused commit's errors by the app they concern (the apps defined in a file with
    /// errors, or whose image did not resolve), shown as those apps' `last_error`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_errors: BTreeMap<String, Vec<String>>,
}

/// A revision in `berth revisions APP -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    /// The app.
    pub app: String,
    /// Its number.
    pub number: u64,
    /// The image reference as written, normalized.
    pub image: String,
    /// The resolved manifest digest.
    pub digest: String,
    /// Where it stands.
    pub state: RevisionState,
    /// `berth rollback` pinned the app to it.
    pub pinned: bool,
    /// Why it exists: `commit 1a2b3c4d5e6f: <subject>` or `rollback to 3`.
    pub cause: String,
    /// The commit it came from.
    pub commit: String,
    /// The spec hash.
    pub spec_hash: String,
    /// When it was made (Unix ms).
    pub created_ms: u64,
    /// Why it failed, when it did.
    #[serde(default)]
    pub failure: Option<String>,
}

/// A revision's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionState {
    /// The app's current revision (being rolled out, or running).
    Active,
    /// Its rollout failed; not retried until the manifest changes.
    Failed,
    /// A newer revision replaced it.
    Superseded,
}

/// An instance in `berth ps -o json` (through the controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Container id.
    pub id: String,
    /// The app.
    pub app: String,
    /// The host it runs on.
    pub host: String,
    /// Its revision number.
    pub revision: u64,
    /// Its state.
    pub state: InstanceState,
    /// Restarts.
    pub restarts: u32,
    /// Why it is not ready or last exited.
    #[serde(default)]
    pub message: String,
}

/// `GET /v1/apps/{app}/rollout?revision=N` and `berth rollout status APP -o json`: how the
/// rollout of one revision (default: the app's newest) stands over all hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The app.
    pub app: String,
    /// The revision whose rollout this is.
    pub revision: u64,
    /// The revision the cluster should run now.
    pub target: u64,
    /// Where the rollout stands.
    pub phase: RolloutPhase,
    /// Instances wanted (sum over hosts).
    pub desired: u32,
    /// Instances of `revision` ready (sum over hosts).
    pub ready: u32,
    /// For people: why it failed, or what it waits for.
    pub message: String,
    /// Every host the app is assigned to, with its newest report.
    pub hosts: Vec<HostRollout>,
}

/// One host's part of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRollout {
    /// The host.
    pub host: String,
    /// Its newest report for the app, if any.
    #[serde(default)]
    pub report: Option<AppReport>,
}

/// A rollout's state over the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Not every host runs the revision ready yet.
    Progressing,
    /// Every host the app is assigned to runs the revision, all instances ready.
    Complete,
    /// The revision failed (rolled back, or nothing to roll back to).
    Failed,
    /// Another revision replaced it before it completed (a newer commit, or a rollback).
    Superseded,
}

/// An API error body: `{"error": "...", "kind": "not_found"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for people.
    pub error: String,
    /// Its class.
    pub kind: crate::ErrorKind,
}

/// `POST /v1/apps/{app}/rollback` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// The revision to pin; default: the previous good one.
    #[serde(default)]
    pub to: Option<u64>,
}
