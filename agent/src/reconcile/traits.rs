//! The narrow traits the reconcile executor, the probe runner and the agent loop act through,
//! and the one error type their adapters return. Each lists only what is used.
//!
//! Real adapters: [`crate::host::agentstate::FileState`] ([`StateStore`]),
//! [`crate::host::probe::NetProber`] ([`Prober`]), [`crate::host::controller_client::HttpController`]
//! ([`ControllerClient`]). `Runtime` and `Images` adapters wrap `agent::host`'s container
//! runtime and image store once those land. Recording fakes for all of them live in
//! [`super::fake`].
//!
//! Instance lifecycle as the executor drives it through [`Runtime`]:
//!
//! ```text
//!   create_start(id)          signal(id, stop signal)        remove(id)
//!  ----------------> Running ------------------------> Exited ----------> (gone)
//!                       |  exits / OOM                   ^  |
//!                       +--------------------------------+  | create_start(id) again
//!                                                           v  (a restart keeps the id)
//! ```
//!
//! Every method is idempotent where the table says so, and may be called for different
//! instances concurrently; the executor never runs two calls for the same app at once.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_manifests::wire::{Assignment, HostReport, Registered, Registration, RevisionSpec};
use berth_manifests::{ErrorKind, ImageRef, Signal};

use super::history::History;

/// A failed effect: what was done, to what, its class and its cause.
#[derive(Debug, thiserror::Error)]
#[error("{op} {object}")]
pub struct EffectError {
    /// The operation (`create_start`, `pull`, `save assignment`).
    pub op: &'static str,
    /// What it was about (instance id, image, path, URL).
    pub object: String,
    /// The class that drives the retry policy.
    pub kind: ErrorKind,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl EffectError {
    /// An error from any cause.
    pub fn new(
        op: &'static str,
        object: impl Into<String>,
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            op,
            object: object.into(),
            kind,
            source: source.into(),
        }
    }

    /// The class.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying later may help (the reconcile error policy).
    pub fn transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unavailable | ErrorKind::ResourceExhausted | ErrorKind::Internal
        )
    }

    /// The error and its causes on one line.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*self.source);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}

/// An image present on the host, ready to be a container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    /// The reference pinned by digest (`registry/repo@sha256:…`).
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
}

/// One instance to create.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The container id (`web-3-0`), kept across restarts.
    pub id: String,
    /// The revision it runs (its labels: app, number, spec hash, digest).
    pub revision: Arc<RevisionSpec>,
    /// Restarts so far (a label, for `ps`).
    pub restarts: u32,
}

/// A container's state as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Its program runs.
    Running,
    /// Its program ended.
    Exited {
        /// Exit code (128 + signal for a signal death).
        code: i32,
        /// Killed by the OOM killer.
        oom_killed: bool,
        /// When (Unix ms).
        finished_at_ms: u64,
    },
}

/// One of the agent's containers, as listed by the runtime (re-adopted after an agent restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance {
    /// Container id.
    pub id: String,
    /// The app (label).
    pub app: String,
    /// Revision number (label).
    pub revision: u64,
    /// The revision's spec hash (label): with `image_digest`, its identity.
    pub spec_hash: String,
    /// The image digest (label).
    pub image_digest: String,
    /// Running or exited.
    pub state: RunState,
    /// When its current (or last) run started (Unix ms).
    pub started_at_ms: u64,
    /// Its address for probes and traffic (its netns address, or loopback in host mode).
    pub address: Option<IpAddr>,
    /// `network: host`: the host port the agent gave it as `$PORT`, standing in for the
    /// manifest's `port` (probes and traffic to the app's port go here). `None` otherwise.
    pub host_port: Option<u16>,
}

/// The container runtime, as the agent uses it.
pub trait Runtime: Send + Sync + 'static {
    /// Every container this agent manages, running or exited. Idempotent.
    fn list(&self) -> impl Future<Output = Result<Vec<ObservedInstance>, EffectError>> + Send;
    /// Creates and starts `spec.id` from `image` (an exited container of that id is replaced).
    fn create_start(
        &self,
        spec: &InstanceSpec,
        image: &LocalImage,
    ) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Sends `signal` to the instance's init. A gone or exited instance is not an error.
    fn signal(
        &self,
        id: &str,
        signal: Signal,
    ) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Removes an exited instance (state, cgroup, rootfs). Gone already is not an error.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Runs `command` inside the instance (same namespaces and profile); its exit code.
    fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<i32, EffectError>> + Send;
    /// The last `lines` lines of the instance's output (for crash-loop messages).
    fn log_tail(
        &self,
        id: &str,
        lines: usize,
    ) -> impl Future<Output = Result<Vec<String>, EffectError>> + Send;
    /// CPU time the instance used so far (its cgroup's usage), for the autoscaler; `None`
    /// when unknown.
    fn cpu_usage(&self, _id: &str) -> impl Future<Output = Option<Duration>> + Send {
        async { None }
    }
}

/// The image store, as the agent uses it.
pub trait Images: Send + Sync + 'static {
    /// Makes `image` pinned at `digest` present (pulling it when missing). Idempotent.
    fn ensure(
        &self,
        image: &ImageRef,
        digest: &str,
    ) -> impl Future<Output = Result<LocalImage, EffectError>> + Send;
}

/// Network probes (exec probes go through [`Runtime::exec`]).
pub trait Prober: Send + Sync + 'static {
    /// `GET path` on `addr`; the status code. Redirects are not followed.
    fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<u16, String>> + Send;
    /// A TCP connect to `addr`.
    fn tcp_connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Where an exposed app's proxy listener is, and how it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The listening address (`0.0.0.0:<expose.port>`).
    pub listen: SocketAddr,
    /// HTTP or plain TCP (`expose.protocol`).
    pub mode: crate::proxy::Mode,
    /// With no instance in rotation, how long a request is held waiting for one (scale from
    /// zero, restarts) before the 503.
    pub hold: Duration,
}

/// The traffic hook: the proxy admits ready instances and drains stopping ones. Edges
/// (`admit`, `drain`) are applied as the planner's steps, in order: `drain` returns only
/// once the instance is out of rotation and its requests ended (or `timeout` passed), so
/// the stop signal comes after. `sync` is level-triggered, once per reconcile pass: it makes
/// the proxy's listener and rotation of the app match (after an agent or proxy restart, or
/// an instance that died). [`NoTraffic`] does nothing.
pub trait Traffic: Load {
    /// `id` is ready: send it requests at `addr` (`None`: the app has no port, nothing to do).
    fn admit(
        &self,
        app: &str,
        id: &str,
        addr: Option<SocketAddr>,
    ) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// `id` is about to stop: take it out of rotation, then wait up to `timeout` for its
    /// in-flight requests. Unknown apps and instances are not an error.
    fn drain(
        &self,
        app: &str,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// The app's listener (`None`: no listener) and its rotation are exactly these.
    fn sync(
        &self,
        app: &str,
        route: Option<&Route>,
        backends: &[(String, SocketAddr)],
    ) -> impl Future<Output = Result<(), EffectError>> + Send;
}

/// The proxy's counters of one app, as the autoscaler reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppLoad {
    /// Requests started so far.
    pub requests_total: u64,
    /// Requests in progress now.
    pub in_flight: u64,
    /// Requests held now for want of an instance.
    pub waiting: u64,
}

/// What the autoscaler reads from the proxy. Defaults: no counters, no wake-ups.
pub trait Load: Send + Sync + 'static {
    /// Counters of every exposed app.
    fn load(&self) -> impl Future<Output = std::collections::BTreeMap<String, AppLoad>> + Send {
        async { std::collections::BTreeMap::new() }
    }
    /// Waits for a request that found no instance; its app (scale from zero). `None`: never.
    fn woken(&self) -> impl Future<Output = Option<String>> + Send {
        async { None }
    }
}

/// No proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTraffic;

impl Load for NoTraffic {}

impl Traffic for NoTraffic {
    async fn admit(&self, _: &str, _: &str, _: Option<SocketAddr>) -> Result<(), EffectError> {
        Ok(())
    }
    async fn drain(&self, _: &str, _: &str, _: Duration) -> Result<(), EffectError> {
        Ok(())
    }
    async fn sync(
        &self,
        _: &str,
        _: Option<&Route>,
        _: &[(String, SocketAddr)],
    ) -> Result<(), EffectError> {
        Ok(())
    }
}

/// The agent's local files: the cached assignment and the reconcile history. Writes are
/// atomic (the old or the new content, never a torn file).
pub trait StateStore: Send + Sync + 'static {
    /// The cached assignment, if any.
    fn load_assignment(&self) -> Result<Option<Assignment>, EffectError>;
    /// Replaces the cached assignment.
    fn save_assignment(&self, assignment: &Assignment) -> Result<(), EffectError>;
    /// The reconcile history (empty when none was saved).
    fn load_history(&self) -> Result<History, EffectError>;
    /// Replaces the history.
    fn save_history(&self, history: &History) -> Result<(), EffectError>;
}

/// The controller's agent API (`manifests::wire`'s table).
pub trait ControllerClient: Send + Sync + 'static {
    /// `POST /v1/agents/register`.
    fn register(
        &self,
        registration: &Registration,
    ) -> impl Future<Output = Result<Registered, EffectError>> + Send;
    /// `GET /v1/agents/{host}/assignment?after=V&wait=SECS`.
    fn assignment(
        &self,
        host: &str,
        after: u64,
        wait: Duration,
    ) -> impl Future<Output = Result<Assignment, EffectError>> + Send;
    /// `POST /v1/agents/{host}/report`.
    fn report(&self, report: &HostReport) -> impl Future<Output = Result<(), EffectError>> + Send;
}
