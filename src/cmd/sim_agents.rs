//! `berth __sim-agents` (hidden; the scale harness, issue 7): thousands of lightweight
//! simulated agents in one process, against a real controller over real HTTP. Each speaks
//! the agent protocol with the agent's own client ([`HttpController`]): register, long-poll
//! its assignment (`after=V&wait=S`), report after every new assignment (its apps complete,
//! as a healthy host would) and every `--report-interval`. Nothing runs containers. Every
//! host declares `--cpu-millis` and `--memory-mib` (default 1024 cores and 1 TiB: room for
//! every instance of the benchmark, which measures placement, not capacity refusals).
//!
//! Once every agent is registered and holds a long-poll, each `--trigger` command (a shell
//! line: a `git push` and the webhook) runs in turn; the harness measures, per agent, the
//! time from just before the command started to the moment its long-poll returned a newer
//! assignment, and prints one JSON line per phase on stdout (`register`, then one `change`
//! per trigger with p50/p95/p99/max in ms). Exit 0 when every agent got every change within
//! `--timeout`, 1 otherwise. `scripts/bench-controller` drives it; tests/controller_scale.rs
//! keeps it working in CI with a few hundred agents.

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_agent::host::controller_client::HttpController;
use berth_agent::reconcile::traits::ControllerClient;
use berth_manifests::ErrorKind;
use berth_manifests::wire::{
    AppReport, Assignment, HostReport, InstanceReport, InstanceState, Registration, RolloutState,
    Scale,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Global, UsageError};

/// `berth __sim-agents` flags (the controller and token are the global `--controller` and
/// `--token`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many agents to simulate
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Host names are PREFIX-00001, PREFIX-00002, …
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Placement labels of every simulated host, k=v,…
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Label host i `zone=z<i mod N>` as well (0: no zone label), so apps can be placed
    /// on parts of the fleet
    #[arg(long, default_value_t = 0)]
    pub zones: usize,
    /// Spread connections over this many loopback source addresses (127.0.0.2, …);
    /// 0: the system's choice
    #[arg(long, default_value_t = 0)]
    pub source_addrs: u8,
    /// Long-poll wait (the agent's default is 30 s)
    #[arg(long, default_value = "30s")]
    pub wait: berth_manifests::Duration,
    /// Heartbeat reports every this long, as agents do (0s: only after a new assignment)
    #[arg(long, default_value = "10s")]
    pub report_interval: berth_manifests::Duration,
    /// After a new assignment, report it within this long (each agent waits its own share
    /// of it): a host reports a change once its new instances run, seconds later, not all
    /// in the same millisecond
    #[arg(long, default_value = "3s")]
    pub report_spread: berth_manifests::Duration,
    /// Send no report at all (register and long-poll only)
    #[arg(long)]
    pub no_reports: bool,
    /// CPU every simulated host declares, in millicores (default 1024 cores: every
    /// instance of the benchmark fits, so placement is measured, not capacity refusals;
    /// 0: not limited)
    #[arg(long, default_value_t = 1_024_000)]
    pub cpu_millis: u64,
    /// Memory every simulated host declares, in MiB (default 1 TiB; 0: not limited)
    #[arg(long, default_value_t = 1 << 20)]
    pub memory_mib: u64,
    /// Registrations in flight at once
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// A shell command that changes the manifests (run after all agents poll); repeatable
    #[arg(long)]
    pub trigger: Vec<String>,
    /// Longest wait for registration, and for each change to reach every agent
    #[arg(long, default_value = "120s")]
    pub timeout: berth_manifests::Duration,
}

/// An agent's news: agent `index` got assignment `version` at `at`.
struct Got {
    index: usize,
    version: u64,
    at: Instant,
}

/// Counters shared by every agent.
#[derive(Default)]
struct Counters {
    errors: AtomicU64,
    reports: AtomicU64,
}

/// Runs the simulation.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.count > 99_999 {
        return Err(UsageError("--count must be between 1 and 99999".into()).into());
    }
    let labels = super::agent::labels(&args.labels)?;
    let nofile = berth_agent::host::sys::raise_nofile_limit().unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(simulate(global, args, labels, nofile))
}

async fn simulate(
    global: &Global,
    args: Args,
    labels: std::collections::BTreeMap<String, String>,
    nofile: u64,
) -> anyhow::Result<ExitCode> {
    let mut clients = Vec::new();
    if args.source_addrs == 0 {
        clients.push(HttpController::new(
            &global.controller,
            global.token.clone(),
        )?);
    }
    for i in 0..args.source_addrs {
        let local = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i.saturating_add(2)));
        clients.push(HttpController::bound(
            &global.controller,
            global.token.clone(),
            local,
        )?);
    }
    let counters = Arc::new(Counters::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<Got>();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.count {
        let agent = SimAgent {
            index,
            name: format!("{}-{:05}", args.prefix, index + 1),
            client: clients[index % clients.len()].clone(),
            capacity: berth_manifests::wire::Capacity {
                cpu_millis: args.cpu_millis,
                memory_bytes: args.memory_mib.saturating_mul(1 << 20),
            },
            labels: {
                let mut labels = labels.clone();
                if args.zones > 0 {
                    labels.insert("zone".into(), format!("z{}", index % args.zones));
                }
                labels
            },
            wait: args.wait.as_std(),
            report_interval: (!args.no_reports && args.report_interval.as_millis() > 0)
                .then(|| args.report_interval.as_std()),
            reports: !args.no_reports,
            report_delay: args
                .report_spread
                .as_std()
                .mul_f64(spread(index) as f64 / 1000.0),
            counters: counters.clone(),
            tx: tx.clone(),
            current: tokio::sync::Mutex::new(None),
        };
        tasks.spawn(agent.run(gate.clone()));
    }
    drop(tx);
    let timeout = args.timeout.as_std();
    // every agent's version as the harness knows it (0: none received yet)
    let mut versions = vec![0u64; args.count];
    let mut have = 0usize;
    let deadline = started + timeout;
    while have < args.count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(got)) => {
                if versions[got.index] == 0 {
                    have += 1;
                }
                versions[got.index] = versions[got.index].max(got.version);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let register_s = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "phase": "register", "agents": args.count, "polling": have,
            "seconds": round3(register_s), "nofile": nofile,
            "errors": counters.errors.load(Ordering::Relaxed),
        })
    );
    eprintln!(
        "{have} of {} simulated agents registered and long-polling after {register_s:.1} s",
        args.count
    );
    if have < args.count {
        return Ok(ExitCode::from(1));
    }
    // let the last long-polls reach the controller before the first change
    tokio::time::sleep(Duration::from_millis(500 + (args.count as u64) / 20)).await;
    let mut ok = true;
    for (n, trigger) in args.trigger.iter().enumerate() {
        let baseline = versions.clone();
        let mut latencies: Vec<f64> = Vec::with_capacity(args.count);
        let mut done = vec![false; args.count];
        let t0 = Instant::now();
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(trigger).kill_on_drop(true);
        let mut trigger_run = Box::pin(command.status());
        let mut trigger_ms = None;
        let deadline = t0 + timeout;
        while latencies.len() < args.count || trigger_ms.is_none() {
            tokio::select! {
                got = tokio::time::timeout_at(deadline, rx.recv()), if latencies.len() < args.count => {
                    let Ok(Some(got)) = got else { break };
                    versions[got.index] = versions[got.index].max(got.version);
                    if !done[got.index] && got.version > baseline[got.index] {
                        done[got.index] = true;
                        latencies.push(got.at.saturating_duration_since(t0).as_secs_f64() * 1e3);
                    }
                }
                status = &mut trigger_run, if trigger_ms.is_none() => {
                    let status = status?;
                    if !status.success() {
                        anyhow::bail!("trigger {trigger:?} failed: {status}");
                    }
                    trigger_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        latencies.sort_by(f64::total_cmp);
        let q = |p: f64| percentile(&latencies, p);
        println!(
            "{}",
            serde_json::json!({
                "phase": "change", "change": n + 1, "agents": args.count,
                "received": latencies.len(),
                "p50_ms": round3(q(0.50)), "p95_ms": round3(q(0.95)),
                "p99_ms": round3(q(0.99)), "max_ms": round3(q(1.0)),
                "trigger_ms": trigger_ms.map(round3),
                "errors": counters.errors.load(Ordering::Relaxed),
                "reports": counters.reports.load(Ordering::Relaxed),
            })
        );
        eprintln!(
            "change {}: {} of {} agents got it; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            n + 1,
            latencies.len(),
            args.count,
            q(0.50),
            q(0.99),
            q(1.0)
        );
        if latencies.len() < args.count {
            ok = false;
            break;
        }
    }
    tasks.abort_all();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `p` quantile (nearest rank) of sorted values; 0 when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A number in 0..1000 that looks random but is the same for an agent every run.
fn spread(index: usize) -> u64 {
    (index as u64).wrapping_mul(2_654_435_761) % 1000
}

/// One simulated agent.
struct SimAgent {
    index: usize,
    name: String,
    client: HttpController,
    labels: std::collections::BTreeMap<String, String>,
    capacity: berth_manifests::wire::Capacity,
    wait: Duration,
    report_interval: Option<Duration>,
    reports: bool,
    report_delay: Duration,
    counters: Arc<Counters>,
    tx: mpsc::UnboundedSender<Got>,
    /// The newest assignment; reports are sent one at a time, each about the newest (as
    /// the agent's single reporter does), so the last report never carries an old one.
    current: tokio::sync::Mutex<Option<Assignment>>,
}

impl SimAgent {
    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        let n = self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if n < 20 {
            eprintln!("simulated agent {}: {what}: {error}", self.name);
        }
    }

    async fn register(&self) {
        let registration = Registration {
            name: self.name.clone(),
            labels: self.labels.clone(),
            capacity: self.capacity,
            agent_version: concat!(env!("CARGO_PKG_VERSION"), "-sim").to_string(),
        };
        let mut pause = Duration::from_millis(200);
        loop {
            match self.client.register(&registration).await {
                Ok(_) => return,
                Err(e) => {
                    self.failed("register", &e.chain());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn run(self, gate: Arc<tokio::sync::Semaphore>) {
        {
            let _permit = gate.acquire().await;
            self.register().await;
        }
        let me = Arc::new(self);
        if let Some(every) = me.report_interval {
            let agent = me.clone();
            tokio::spawn(async move {
                // spread heartbeats over the interval, as agents started at different times
                let offset = every.mul_f64((agent.index % 1000) as f64 / 1000.0);
                tokio::time::sleep(offset).await;
                loop {
                    agent.report_newest(None).await;
                    tokio::time::sleep(every).await;
                }
            });
        }
        let mut version = 0u64;
        loop {
            match me.client.assignment(&me.name, version, me.wait).await {
                Ok(a) if a.version != version => {
                    let at = Instant::now();
                    version = a.version;
                    // reported before the harness hears of it: when every agent has the
                    // change, the controller has every agent's report of it too
                    if me.reports {
                        tokio::time::sleep(me.report_delay).await;
                        me.report_newest(Some(a)).await;
                    } else {
                        *me.current.lock().await = Some(a);
                    }
                    let _ = me.tx.send(Got {
                        index: me.index,
                        version,
                        at,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    me.failed("long-poll", &e.chain());
                    if e.kind() == ErrorKind::NotFound {
                        me.register().await;
                    } else {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// Reports the newest assignment (`new` first becomes it), one report at a time.
    async fn report_newest(&self, new: Option<Assignment>) {
        let mut current = self.current.lock().await;
        if new.is_some() {
            *current = new;
        }
        if let Some(a) = current.as_ref() {
            self.report(a).await;
        }
    }

    /// Reports the assignment's apps as running and complete (a healthy host).
    async fn report(&self, a: &Assignment) {
        let mut instances = Vec::new();
        let mut apps = Vec::new();
        for app in &a.apps {
            let want = match app.scale {
                Scale::Fixed { replicas } => replicas,
                Scale::Auto { min, .. } => min,
            };
            for i in 0..want {
                instances.push(InstanceReport {
                    id: format!("{}-{}-{i}", app.target.app, app.target.number),
                    app: app.target.app.clone(),
                    revision: app.target.number,
                    state: InstanceState::Ready,
                    restarts: 0,
                    last_exit_code: None,
                    message: String::new(),
                    started_at_ms: 0,
                });
            }
            apps.push(AppReport {
                app: app.target.app.clone(),
                target: app.target.number,
                desired: want,
                ready: want,
                rollout: RolloutState::Complete,
                requests_total: None,
            });
        }
        let report = HostReport {
            host: self.name.clone(),
            assignment_version: a.version,
            instances,
            apps,
            events: Vec::new(),
        };
        match self.client.report(&report).await {
            Ok(()) => {
                self.counters.reports.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed("report", &e.chain()),
        }
    }
}
