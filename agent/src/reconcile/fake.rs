//! Recording fakes of the reconcile traits, for unit tests of the executor and the agent loop.
//! Each records its calls in order, and can fail the next N calls with a chosen error class.
//! Their behaviour is pinned to the real adapters by shared tests (`agent/tests/deploy_*.rs`):
//! the state store and the prober have real twins; the runtime and image fakes follow the
//! trait contract in [`super::traits`] until the real runtime and image store land.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_manifests::wire::{Assignment, HostReport, Registered, Registration};
use berth_manifests::{ErrorKind, ImageRef, Signal};
use tokio::sync::watch;

use super::history::History;
use super::traits::{
    ControllerClient, EffectError, Images, InstanceSpec, LocalImage, ObservedInstance, Prober,
    Route, RunState, Runtime, StateStore, Traffic,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// "fail the next N calls": a countdown with an error class.
#[derive(Debug, Default)]
struct Failures {
    left: u32,
    kind: Option<ErrorKind>,
}

impl Failures {
    fn take(&mut self, op: &'static str, object: &str) -> Result<(), EffectError> {
        if self.left == 0 {
            return Ok(());
        }
        self.left -= 1;
        Err(EffectError::new(
            op,
            object,
            self.kind.unwrap_or(ErrorKind::Unavailable),
            "injected failure",
        ))
    }
}

#[derive(Debug)]
struct FakeInstance {
    observed: ObservedInstance,
    logs: Vec<String>,
}

#[derive(Debug, Default)]
struct RuntimeState {
    now_ms: u64,
    instances: BTreeMap<String, FakeInstance>,
    calls: Vec<String>,
    fail: Failures,
    ignore_term: bool,
    exec_codes: BTreeMap<u64, i32>,
    next_addr: u32,
}

/// An in-memory runtime. Instances run until the test ends them ([`FakeRuntime::exit`]) or a
/// signal does (SIGTERM ends them with 143 unless [`FakeRuntime::ignore_term`], SIGKILL with
/// 137). Each instance gets its own address `10.0.x.y`.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    state: Mutex<RuntimeState>,
}

impl FakeRuntime {
    /// A new, empty runtime.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Sets the fake's clock (start and exit times).
    pub fn set_now(&self, now_ms: u64) {
        lock(&self.state).now_ms = now_ms;
    }

    /// Fails the next `n` calls with `kind`.
    pub fn fail_next(&self, n: u32, kind: ErrorKind) {
        lock(&self.state).fail = Failures {
            left: n,
            kind: Some(kind),
        };
    }

    /// Makes SIGTERM do nothing (SIGKILL still works).
    pub fn ignore_term(&self, ignore: bool) {
        lock(&self.state).ignore_term = ignore;
    }

    /// Exec probes of `revision` exit with `code`.
    pub fn set_exec_code(&self, revision: u64, code: i32) {
        lock(&self.state).exec_codes.insert(revision, code);
    }

    /// Ends instance `id` with `code` (and its output so far).
    pub fn exit(&self, id: &str, code: i32, oom_killed: bool, logs: &[&str]) {
        let mut s = lock(&self.state);
        let now = s.now_ms;
        if let Some(i) = s.instances.get_mut(id) {
            i.observed.state = RunState::Exited {
                code,
                oom_killed,
                finished_at_ms: now,
            };
            i.logs = logs.iter().map(|l| (*l).to_string()).collect();
        }
    }

    /// Adds an instance as if a previous agent had started it (re-adoption tests).
    pub fn adopt(&self, observed: ObservedInstance) {
        lock(&self.state).instances.insert(
            observed.id.clone(),
            FakeInstance {
                observed,
                logs: Vec::new(),
            },
        );
    }

    /// Every call so far (`create_start web-2-0`, `signal web-1-0 15`, …).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        lock(&self.state).calls.clear();
    }

    /// The instances now present.
    pub fn instances(&self) -> Vec<ObservedInstance> {
        lock(&self.state)
            .instances
            .values()
            .map(|i| i.observed.clone())
            .collect()
    }

    /// Running instances of `app` at `revision`.
    pub fn running(&self, app: &str, revision: u64) -> usize {
        self.instances()
            .iter()
            .filter(|i| i.app == app && i.revision == revision && i.state == RunState::Running)
            .count()
    }

    fn call(&self, what: String, op: &'static str, object: &str) -> Result<(), EffectError> {
        let mut s = lock(&self.state);
        s.calls.push(what);
        s.fail.take(op, object)
    }
}

impl Runtime for FakeRuntime {
    async fn list(&self) -> Result<Vec<ObservedInstance>, EffectError> {
        self.call("list".into(), "list", "instances")?;
        Ok(self.instances())
    }

    async fn create_start(
        &self,
        spec: &InstanceSpec,
        image: &LocalImage,
    ) -> Result<(), EffectError> {
        self.call(
            format!("create_start {}", spec.id),
            "create_start",
            &spec.id,
        )?;
        let mut s = lock(&self.state);
        if let Some(i) = s.instances.get(&spec.id)
            && i.observed.state == RunState::Running
        {
            return Err(EffectError::new(
                "create_start",
                &spec.id,
                ErrorKind::Conflict,
                "already running",
            ));
        }
        s.next_addr += 1;
        let n = s.next_addr;
        let address = IpAddr::V4(Ipv4Addr::new(10, 0, (n >> 8) as u8, (n & 0xff) as u8));
        let observed = ObservedInstance {
            id: spec.id.clone(),
            app: spec.revision.app.clone(),
            revision: spec.revision.number,
            spec_hash: spec.revision.spec_hash.clone(),
            image_digest: image.digest.clone(),
            state: RunState::Running,
            started_at_ms: s.now_ms,
            address: Some(address),
            host_port: None,
        };
        s.instances.insert(
            spec.id.clone(),
            FakeInstance {
                observed,
                logs: Vec::new(),
            },
        );
        Ok(())
    }

    async fn signal(&self, id: &str, signal: Signal) -> Result<(), EffectError> {
        self.call(format!("signal {id} {}", signal.number()), "signal", id)?;
        let ignore = lock(&self.state).ignore_term;
        if signal == Signal::KILL {
            self.exit(id, 137, false, &[]);
        } else if !ignore {
            self.exit(id, 128 + i32::from(signal.number()), false, &[]);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), EffectError> {
        self.call(format!("remove {id}"), "remove", id)?;
        let mut s = lock(&self.state);
        if let Some(i) = s.instances.get(id)
            && i.observed.state == RunState::Running
        {
            return Err(EffectError::new(
                "remove",
                id,
                ErrorKind::Conflict,
                "still running",
            ));
        }
        s.instances.remove(id);
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        _timeout: Duration,
    ) -> Result<i32, EffectError> {
        self.call(format!("exec {id} {}", command.join(" ")), "exec", id)?;
        let s = lock(&self.state);
        let Some(i) = s.instances.get(id) else {
            return Err(EffectError::new(
                "exec",
                id,
                ErrorKind::NotFound,
                "no such instance",
            ));
        };
        Ok(s.exec_codes.get(&i.observed.revision).copied().unwrap_or(0))
    }

    async fn log_tail(&self, id: &str, lines: usize) -> Result<Vec<String>, EffectError> {
        let s = lock(&self.state);
        let logs = s
            .instances
            .get(id)
            .map(|i| i.logs.clone())
            .unwrap_or_default();
        let start = logs.len().saturating_sub(lines);
        Ok(logs[start..].to_vec())
    }
}

/// An image store that "has" every image, recording `ensure` calls.
#[derive(Debug, Default)]
pub struct FakeImages {
    calls: Mutex<Vec<String>>,
    fail: Mutex<Failures>,
}

impl FakeImages {
    /// A new store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Fails the next `n` calls with `kind`.
    pub fn fail_next(&self, n: u32, kind: ErrorKind) {
        *lock(&self.fail) = Failures {
            left: n,
            kind: Some(kind),
        };
    }

    /// The references ensured so far.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

impl Images for FakeImages {
    async fn ensure(&self, image: &ImageRef, digest: &str) -> Result<LocalImage, EffectError> {
        let reference = format!("{}@{digest}", image.name());
        lock(&self.calls).push(reference.clone());
        lock(&self.fail).take("pull", &reference)?;
        Ok(LocalImage {
            reference,
            digest: digest.to_string(),
        })
    }
}

/// Probe answers chosen per revision number (default: `200` / connected), found through the
/// runtime's address table.
#[derive(Debug)]
pub struct FakeProber {
    runtime: Arc<FakeRuntime>,
    answers: Mutex<BTreeMap<u64, Result<u16, String>>>,
    calls: Mutex<Vec<String>>,
}

impl FakeProber {
    /// Probes against `runtime`'s instances.
    pub fn new(runtime: Arc<FakeRuntime>) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            answers: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    /// Probes of `revision` answer this (an HTTP status, or a connect error).
    pub fn answer(&self, revision: u64, answer: Result<u16, String>) {
        lock(&self.answers).insert(revision, answer);
    }

    /// Probes so far (`GET 10.0.0.1:8080/up`).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn answer_for(&self, addr: SocketAddr) -> Result<u16, String> {
        let revision = self
            .runtime
            .instances()
            .into_iter()
            .find(|i| i.address == Some(addr.ip()) && i.state == RunState::Running)
            .map(|i| i.revision);
        match revision {
            None => Err("connection refused".into()),
            Some(r) => lock(&self.answers).get(&r).cloned().unwrap_or(Ok(200)),
        }
    }
}

impl Prober for FakeProber {
    async fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        _timeout: Duration,
    ) -> Result<u16, String> {
        lock(&self.calls).push(format!("GET {addr}{path}"));
        self.answer_for(addr)
    }

    async fn tcp_connect(&self, addr: SocketAddr, _timeout: Duration) -> Result<(), String> {
        lock(&self.calls).push(format!("TCP {addr}"));
        self.answer_for(addr).map(|_| ())
    }
}

/// An app's last `sync`: its route and backends.
pub type Synced = (Option<Route>, Vec<(String, SocketAddr)>);

/// Records admits and drains, and keeps the last `sync` of each app.
#[derive(Debug, Default)]
pub struct FakeTraffic {
    calls: Mutex<Vec<String>>,
    synced: Mutex<BTreeMap<String, Synced>>,
    /// Per app: requests per second since the instant, requests before it, in flight.
    load: Mutex<BTreeMap<String, (f64, tokio::time::Instant, u64, u64)>>,
    woken: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    wake_tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
}

impl FakeTraffic {
    /// A new hook.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `admit web-1-0`, `drain web-1-0`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// The last `sync` of `app`: its route and backends.
    pub fn synced(&self, app: &str) -> Option<Synced> {
        lock(&self.synced).get(app).cloned()
    }

    /// From now on `app` receives `rps` requests per second with `in_flight` in progress
    /// (the counters follow tokio's clock, so paused-time tests control them).
    pub fn set_load(&self, app: &str, rps: f64, in_flight: u64) {
        let mut load = lock(&self.load);
        let before = load.get(app).map_or(0, requests_at);
        load.insert(
            app.to_owned(),
            (rps, tokio::time::Instant::now(), before, in_flight),
        );
    }

    /// A request of `app` found no instance (what the proxy reports for scale from zero).
    pub fn hold_request(&self, app: &str) {
        let mut tx = lock(&self.wake_tx);
        if tx.is_none() {
            let (t, r) = tokio::sync::mpsc::unbounded_channel();
            *tx = Some(t);
            *lock(&self.woken) = Some(r);
        }
        if let Some(t) = tx.as_ref() {
            let _ = t.send(app.to_owned());
        }
    }
}

fn requests_at(l: &(f64, tokio::time::Instant, u64, u64)) -> u64 {
    let (rps, since, before, _) = *l;
    before + (rps * since.elapsed().as_secs_f64()) as u64
}

impl super::traits::Load for FakeTraffic {
    async fn load(&self) -> BTreeMap<String, super::traits::AppLoad> {
        lock(&self.load)
            .iter()
            .map(|(app, l)| {
                let load = super::traits::AppLoad {
                    requests_total: requests_at(l),
                    in_flight: l.3,
                    waiting: 0,
                };
                (app.clone(), load)
            })
            .collect()
    }

    async fn woken(&self) -> Option<String> {
        loop {
            let rx = lock(&self.woken).take();
            let Some(mut rx) = rx else {
                // Nothing held yet: look again later.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let app = rx.recv().await;
            *lock(&self.woken) = Some(rx);
            return app;
        }
    }
}

impl Traffic for FakeTraffic {
    async fn admit(
        &self,
        _app: &str,
        id: &str,
        _addr: Option<SocketAddr>,
    ) -> Result<(), EffectError> {
        lock(&self.calls).push(format!("admit {id}"));
        Ok(())
    }

    async fn drain(&self, _app: &str, id: &str, _timeout: Duration) -> Result<(), EffectError> {
        lock(&self.calls).push(format!("drain {id}"));
        Ok(())
    }

    async fn sync(
        &self,
        app: &str,
        route: Option<&Route>,
        backends: &[(String, SocketAddr)],
    ) -> Result<(), EffectError> {
        lock(&self.synced).insert(app.to_owned(), (route.cloned(), backends.to_vec()));
        Ok(())
    }
}

/// State kept in memory.
#[derive(Debug, Default)]
pub struct FakeState {
    assignment: Mutex<Option<Assignment>>,
    history: Mutex<History>,
    fail: Mutex<Failures>,
}

impl FakeState {
    /// Empty state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Fails the next `n` calls with `kind`.
    pub fn fail_next(&self, n: u32, kind: ErrorKind) {
        *lock(&self.fail) = Failures {
            left: n,
            kind: Some(kind),
        };
    }
}

impl StateStore for FakeState {
    fn load_assignment(&self) -> Result<Option<Assignment>, EffectError> {
        lock(&self.fail).take("load assignment", "memory")?;
        Ok(lock(&self.assignment).clone())
    }

    fn save_assignment(&self, assignment: &Assignment) -> Result<(), EffectError> {
        lock(&self.fail).take("save assignment", "memory")?;
        *lock(&self.assignment) = Some(assignment.clone());
        Ok(())
    }

    fn load_history(&self) -> Result<History, EffectError> {
        lock(&self.fail).take("load history", "memory")?;
        Ok(lock(&self.history).clone())
    }

    fn save_history(&self, history: &History) -> Result<(), EffectError> {
        lock(&self.fail).take("save history", "memory")?;
        *lock(&self.history) = history.clone();
        Ok(())
    }
}

/// A controller in memory: a settable assignment served by long-poll, switchable down, and
/// the reports it received.
#[derive(Debug)]
pub struct FakeController {
    assignment: watch::Sender<Assignment>,
    down: Mutex<bool>,
    reports: Mutex<Vec<HostReport>>,
    registrations: Mutex<Vec<Registration>>,
}

impl FakeController {
    /// Serves `assignment`.
    pub fn new(assignment: Assignment) -> Arc<Self> {
        Arc::new(Self {
            assignment: watch::Sender::new(assignment),
            down: Mutex::new(false),
            reports: Mutex::default(),
            registrations: Mutex::default(),
        })
    }

    /// Replaces the assignment (its version should grow).
    pub fn set(&self, assignment: Assignment) {
        self.assignment.send_replace(assignment);
    }

    /// Makes every call fail as unreachable (or work again).
    pub fn set_down(&self, down: bool) {
        *lock(&self.down) = down;
    }

    /// Reports received.
    pub fn reports(&self) -> Vec<HostReport> {
        lock(&self.reports).clone()
    }

    /// Registrations received.
    pub fn registrations(&self) -> Vec<Registration> {
        lock(&self.registrations).clone()
    }

    fn check(&self, op: &'static str) -> Result<(), EffectError> {
        if *lock(&self.down) {
            return Err(EffectError::new(
                op,
                "fake controller",
                ErrorKind::Unavailable,
                "connection refused",
            ));
        }
        Ok(())
    }
}

impl ControllerClient for FakeController {
    async fn register(&self, registration: &Registration) -> Result<Registered, EffectError> {
        self.check("register")?;
        lock(&self.registrations).push(registration.clone());
        Ok(Registered {
            name: registration.name.clone(),
            assignment_version: self.assignment.borrow().version,
        })
    }

    async fn assignment(
        &self,
        _host: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Assignment, EffectError> {
        self.check("assignment")?;
        let mut rx = self.assignment.subscribe();
        if rx.borrow_and_update().version != after {
            return Ok(rx.borrow().clone());
        }
        let _ = tokio::time::timeout(wait, rx.changed()).await;
        self.check("assignment")?;
        Ok(rx.borrow().clone())
    }

    async fn report(&self, report: &HostReport) -> Result<(), EffectError> {
        self.check("report")?;
        lock(&self.reports).push(report.clone());
        Ok(())
    }
}
