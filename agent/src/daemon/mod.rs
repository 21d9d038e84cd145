//! The agent loop (`berth agent`, and the agent half of `berth up`): register, long-poll the
//! assignment, cache it on disk, reconcile every app in its own task, report.
//!
//! ```text
//!            register ──► long-poll GET assignment?after=V ──► save assignment.json ──┐
//!              ▲  (retry with backoff when the controller is down; the cache runs)    │ watch
//!              └───────────────────────────────────────────────────────────────────── ┤
//!   supervisor: one worker per app (assigned, or still running here) ◄───────────────┘
//!   worker(app): loop { reconcile once; save history.json; publish status;
//!                       wait for a new desired state or the requeue time }
//!   reporter: POST report every `report_interval` and soon after a change (events kept
//!             until the controller accepts them)
//! ```
//!
//! Started from a cached assignment, the agent converges without the controller; containers
//! outlive the agent and are re-adopted by the next one (the runtime lists them, the history
//! remembers their restarts and probes). The loop owns no container or file code itself: it
//! acts through the traits in [`crate::reconcile::traits`].

/// The HTTP controller client, by the path it first had (it lives under `host`, with the
/// agent's other network code).
pub use crate::host::controller_client as client;

mod autoscale;

pub mod teardown;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_manifests::ErrorKind;
use berth_manifests::wire::{
    AppReport, AssignedApp, Assignment, Capacity, Event, HostReport, InstanceReport, Registration,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::reconcile::exec::{self, Effects, retry_delay_ms};
use crate::reconcile::history::History;
use crate::reconcile::traits::{
    ControllerClient, EffectError, Images, Prober, Runtime, StateStore, Traffic,
};

/// Events kept while the controller is unreachable; older ones are dropped first.
pub const MAX_PENDING_EVENTS: usize = 1_000;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The host's name (a DNS label).
    pub name: String,
    /// Placement labels.
    pub labels: BTreeMap<String, String>,
    /// What the host offers.
    pub capacity: Capacity,
    /// How long one long-poll waits for a change.
    pub poll_wait: Duration,
    /// Report at least this often.
    pub report_interval: Duration,
    /// Longest wait between attempts to reach the controller.
    pub retry_max: Duration,
}

impl AgentConfig {
    /// Defaults: 30 s long-polls, a report every 10 s, retries up to 5 s apart.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            capacity: Capacity::default(),
            poll_wait: Duration::from_secs(30),
            report_interval: Duration::from_secs(10),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// The agent's clock: Unix milliseconds that follow tokio's clock, so paused-time tests are
/// virtual and production reads the system clock once.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    /// Starts at the system time.
    #[allow(
        clippy::disallowed_methods,
        reason = "the agent's clock edge: read the wall clock once, then follow tokio's"
    )]
    pub fn system() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::at(base_ms)
    }

    /// Starts at `base_ms` (tests).
    pub fn at(base_ms: u64) -> Self {
        Self {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }

    /// Now, in Unix ms.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

/// A failure that stops the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory cannot be read.
    #[error("agent state cannot be loaded; check the data dir's permissions and free space")]
    State(#[source] EffectError),
}

impl AgentError {
    /// The class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::State(e) => e.kind(),
        }
    }
}

#[derive(Debug, Default)]
struct Status {
    apps: BTreeMap<String, (Option<AppReport>, Vec<InstanceReport>)>,
    events: Vec<Event>,
    /// Sequence number of `events[0]` (events are numbered as they come).
    first_event: u64,
}

#[derive(Debug)]
struct Shared {
    assignment: watch::Sender<Option<Assignment>>,
    history: Mutex<History>,
    status: Mutex<Status>,
    changed: Notify,
    /// The autoscaler's instance count of each autoscaled app.
    scales: Mutex<BTreeMap<String, u32>>,
    /// A scale changed: the supervisor hands it to the app's worker.
    rescale: Notify,
    /// Apps a held request is waiting for (scale from zero), and the autoscaler's wake-up.
    woken: Mutex<BTreeSet<String>>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A view of a running agent (for `berth up`'s local status and for tests).
#[derive(Debug, Clone)]
pub struct AgentHandle {
    name: String,
    shared: Arc<Shared>,
}

impl AgentHandle {
    /// The report the agent would send now (pending events included).
    pub fn report(&self) -> HostReport {
        build_report(&self.name, &self.shared).0
    }

    /// The assignment being run (cached or fresh).
    pub fn assignment(&self) -> Option<Assignment> {
        self.shared.assignment.borrow().clone()
    }
}

/// The report, and the sequence number of its first event.
fn build_report(name: &str, shared: &Shared) -> (HostReport, u64) {
    let version = shared.assignment.borrow().as_ref().map_or(0, |a| a.version);
    let status = lock(&shared.status);
    let report = HostReport {
        host: name.to_string(),
        assignment_version: version,
        instances: status
            .apps
            .values()
            .flat_map(|(_, i)| i.iter().cloned())
            .collect(),
        apps: status
            .apps
            .values()
            .filter_map(|(r, _)| r.clone())
            .map(|mut r| {
                r.requests_total = crate::metrics::global().proxy_requests(&r.app);
                r
            })
            .collect(),
        events: status.events.clone(),
    };
    (report, status.first_event)
}

/// The agent: its configuration and the effects it acts through.
pub struct Agent<C, S, R, I, P, T> {
    config: AgentConfig,
    controller: Arc<C>,
    state: Arc<S>,
    fx: Effects<R, I, P, T>,
    clock: Clock,
    shared: Arc<Shared>,
}

impl<C, S, R, I, P, T> Agent<C, S, R, I, P, T>
where
    C: ControllerClient,
    S: StateStore,
    R: Runtime,
    I: Images,
    P: Prober,
    T: Traffic,
{
    /// Loads the cached assignment and history from `state` (a corrupt cache is logged and
    /// ignored: the controller sends it again).
    pub fn new(
        config: AgentConfig,
        controller: Arc<C>,
        state: Arc<S>,
        fx: Effects<R, I, P, T>,
        clock: Clock,
    ) -> Result<Self, AgentError> {
        let cached = match state.load_assignment() {
            Ok(a) => a,
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                tracing::warn!(error = %e.chain(), "ignoring the cached assignment");
                None
            }
            Err(e) => return Err(AgentError::State(e)),
        };
        let history = match state.load_history() {
            Ok(h) => h,
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                tracing::warn!(error = %e.chain(), "ignoring the reconcile history");
                History::default()
            }
            Err(e) => return Err(AgentError::State(e)),
        };
        let shared = Arc::new(Shared {
            assignment: watch::Sender::new(cached),
            history: Mutex::new(history),
            status: Mutex::default(),
            changed: Notify::new(),
            scales: Mutex::default(),
            rescale: Notify::new(),
            woken: Mutex::default(),
            wake: Notify::new(),
        });
        Ok(Self {
            config,
            controller,
            state,
            fx,
            clock,
            shared,
        })
    }

    /// A view of the running agent.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            name: self.config.name.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Runs until `shutdown` completes. Containers keep running after it returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        tasks.spawn(sync(
            self.config.clone(),
            self.controller.clone(),
            self.state.clone(),
            self.shared.clone(),
        ));
        tasks.spawn(reporter(
            self.config.clone(),
            self.controller.clone(),
            self.shared.clone(),
        ));
        tasks.spawn(supervise(
            self.fx.clone(),
            self.state.clone(),
            self.shared.clone(),
            self.clock,
        ));
        tasks.spawn(autoscale::run(
            self.fx.clone(),
            self.shared.clone(),
            self.clock,
        ));
        tasks.spawn(autoscale::wake_on_held_requests(
            self.fx.traffic.clone(),
            self.shared.clone(),
        ));
        shutdown.await;
        tasks.shutdown().await;
        let history = lock(&self.shared.history).clone();
        if let Err(e) = self.state.save_history(&history) {
            tracing::warn!(error = %e.chain(), "saving the history at shutdown");
        }
    }
}

fn retry_wait(config: &AgentConfig, attempts: u32) -> Duration {
    Duration::from_millis(retry_delay_ms(&config.name, attempts)).min(config.retry_max)
}

/// Registers, then long-polls forever; every new assignment is cached, then published.
async fn sync<C: ControllerClient, S: StateStore>(
    config: AgentConfig,
    controller: Arc<C>,
    state: Arc<S>,
    shared: Arc<Shared>,
) {
    let registration = Registration {
        name: config.name.clone(),
        labels: config.labels.clone(),
        capacity: config.capacity,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut registered = false;
    let mut attempts = 0u32;
    loop {
        if !registered {
            match controller.register(&registration).await {
                Ok(_) => {
                    registered = true;
                    attempts = 0;
                    tracing::info!(host = %config.name, "registered");
                }
                Err(e) => {
                    attempts = attempts.saturating_add(1);
                    tracing::warn!(error = %e.chain(), "controller unreachable; running the cached assignment");
                    tokio::time::sleep(retry_wait(&config, attempts)).await;
                    continue;
                }
            }
        }
        let current = shared.assignment.borrow().as_ref().map(|a| a.version);
        match controller
            .assignment(&config.name, current.unwrap_or(0), config.poll_wait)
            .await
        {
            Ok(assignment) => {
                attempts = 0;
                if Some(assignment.version) == current {
                    continue;
                }
                if assignment.host != config.name {
                    tracing::warn!(host = %assignment.host, "ignoring an assignment for another host");
                    continue;
                }
                if let Err(e) = state.save_assignment(&assignment) {
                    tracing::warn!(error = %e.chain(), "caching the assignment failed; running it anyway");
                }
                tracing::info!(version = assignment.version, "new assignment");
                shared.assignment.send_replace(Some(assignment));
            }
            Err(e) => {
                attempts = attempts.saturating_add(1);
                if e.kind() == ErrorKind::NotFound {
                    registered = false;
                }
                tracing::warn!(error = %e.chain(), "long-poll failed; running the cached assignment");
                tokio::time::sleep(retry_wait(&config, attempts)).await;
            }
        }
    }
}

/// One worker per app: the apps assigned, plus the apps the history or the runtime still has
/// instances of (so an unassigned app is stopped, even after an agent restart).
async fn supervise<R: Runtime, I: Images, P: Prober, T: Traffic, S: StateStore>(
    fx: Effects<R, I, P, T>,
    state: Arc<S>,
    shared: Arc<Shared>,
    clock: Clock,
) {
    let mut rx = shared.assignment.subscribe();
    let mut workers: BTreeMap<String, watch::Sender<Option<AssignedApp>>> = BTreeMap::new();
    let mut running: JoinSet<String> = JoinSet::new();
    let mut orphans_checked = false;
    loop {
        let assignment = rx.borrow_and_update().clone();
        let mut names: BTreeSet<String> = lock(&shared.history).apps.keys().cloned().collect();
        if let Some(a) = &assignment {
            names.extend(a.apps.iter().map(|app| app.target.app.clone()));
        }
        if !orphans_checked {
            match fx.runtime.list().await {
                Ok(list) => {
                    names.extend(list.into_iter().map(|i| i.app));
                    orphans_checked = true;
                }
                Err(e) => tracing::warn!(error = %e.chain(), "listing instances failed; retrying"),
            }
        }
        for name in names {
            let desired = assignment
                .as_ref()
                .and_then(|a| a.apps.iter().find(|app| app.target.app == name))
                .cloned()
                .map(|d| autoscale::scaled(d, &lock(&shared.scales)));
            if let Some(tx) = workers.get(&name) {
                tx.send_if_modified(|d| {
                    let changed = *d != desired;
                    *d = desired.clone();
                    changed
                });
            } else {
                let (tx, wrx) = watch::channel(desired);
                workers.insert(name.clone(), tx);
                running.spawn(worker(
                    name,
                    wrx,
                    fx.clone(),
                    state.clone(),
                    shared.clone(),
                    clock,
                ));
            }
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(done) = running.join_next() => {
                if let Ok(name) = done {
                    workers.remove(&name);
                }
            }
            () = shared.rescale.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(crate::reconcile::plan::RESYNC_MS)) => {}
        }
    }
}

/// Reconciles one app until it is unassigned and nothing of it is left.
async fn worker<R: Runtime, I: Images, P: Prober, T: Traffic, S: StateStore>(
    name: String,
    mut desired: watch::Receiver<Option<AssignedApp>>,
    fx: Effects<R, I, P, T>,
    state: Arc<S>,
    shared: Arc<Shared>,
    clock: Clock,
) -> String {
    loop {
        let want = desired.borrow_and_update().clone();
        let mut history = lock(&shared.history)
            .apps
            .get(&name)
            .cloned()
            .unwrap_or_default();
        let now = clock.now_ms();
        #[allow(
            clippy::disallowed_methods,
            reason = "metrics edge: the pass's duration"
        )]
        let started = std::time::Instant::now();
        let out = exec::reconcile(&fx, &name, want.as_ref(), &mut history, now).await;
        record_metrics(&name, started.elapsed().as_secs_f64(), &out);
        for e in &out.errors {
            tracing::warn!(app = %name, error = %e.chain(), "reconcile step failed");
        }
        tracing::debug!(
            app = %name,
            steps = out.steps,
            requeue_ms = out.requeue_after.as_millis(),
            took_ms = clock.now_ms().saturating_sub(now),
            "reconciled"
        );
        let finished = want.is_none() && out.instances.is_empty() && out.errors.is_empty();
        {
            let mut all = lock(&shared.history);
            if finished {
                all.apps.remove(&name);
            } else {
                all.apps.insert(name.clone(), history);
            }
            if let Err(e) = state.save_history(&all) {
                tracing::warn!(error = %e.chain(), "saving the reconcile history failed");
            }
        }
        publish(&shared, &name, &out, finished);
        if finished {
            crate::metrics::global().app_gone(&name);
        }
        // Instances came or went: let the allocator return what the churn freed (throttled;
        // host/alloc.rs says why).
        crate::host::alloc::after_pass(clock.now_ms(), out.steps > 0 || finished);
        if finished {
            return name;
        }
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return name;
                }
            }
            () = tokio::time::sleep(out.requeue_after) => {}
        }
    }
}

/// Adds events (the autoscaler's) to the next report.
fn push_events(shared: &Shared, events: Vec<Event>) {
    if events.is_empty() {
        return;
    }
    let mut status = lock(&shared.status);
    status.events.extend(events);
    let excess = status.events.len().saturating_sub(MAX_PENDING_EVENTS);
    status.events.drain(..excess);
    status.first_event = status
        .first_event
        .saturating_add(u64::try_from(excess).unwrap_or(u64::MAX));
    drop(status);
    shared.changed.notify_one();
}

fn record_metrics(app: &str, seconds: f64, out: &exec::Outcome) {
    let instances: Vec<(String, String, u32)> = out
        .instances
        .iter()
        .map(|i| {
            let state = serde_json::to_value(i.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            (i.id.clone(), state, i.restarts)
        })
        .collect();
    crate::metrics::global().reconciled(app, seconds, &instances);
}

fn publish(shared: &Shared, name: &str, out: &exec::Outcome, finished: bool) {
    let mut status = lock(&shared.status);
    let entry = (out.report.clone(), out.instances.clone());
    let changed = if finished {
        status.apps.remove(name).is_some()
    } else {
        status.apps.get(name) != Some(&entry)
    };
    if !finished {
        status.apps.insert(name.to_string(), entry);
    }
    status.events.extend(out.events.iter().cloned());
    let excess = status.events.len().saturating_sub(MAX_PENDING_EVENTS);
    status.events.drain(..excess);
    status.first_event = status
        .first_event
        .saturating_add(u64::try_from(excess).unwrap_or(u64::MAX));
    if changed || !out.events.is_empty() {
        shared.changed.notify_one();
    }
}

/// Reports periodically and soon after a change; events are dropped once accepted.
async fn reporter<C: ControllerClient>(
    config: AgentConfig,
    controller: Arc<C>,
    shared: Arc<Shared>,
) {
    let mut attempts = 0u32;
    loop {
        tokio::select! {
            () = shared.changed.notified() => {
                // Gather a burst of changes into one report.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            () = tokio::time::sleep(config.report_interval) => {}
        }
        let (report, first) = build_report(&config.name, &shared);
        match controller.report(&report).await {
            Ok(()) => {
                attempts = 0;
                // Events only append, or drop from the front when too many wait: drop the
                // ones this report carried that are still there.
                let sent_end =
                    first.saturating_add(u64::try_from(report.events.len()).unwrap_or(0));
                let mut status = lock(&shared.status);
                let gone = usize::try_from(sent_end.saturating_sub(status.first_event))
                    .unwrap_or(usize::MAX)
                    .min(status.events.len());
                status.events.drain(..gone);
                status.first_event = status
                    .first_event
                    .saturating_add(u64::try_from(gone).unwrap_or(u64::MAX));
            }
            Err(e) => {
                attempts = attempts.saturating_add(1);
                tracing::warn!(error = %e.chain(), "report failed; keeping its events");
                tokio::time::sleep(retry_wait(&config, attempts)).await;
            }
        }
    }
}
