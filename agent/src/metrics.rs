//! The agent's Prometheus metrics (docs/metrics.md has the reference). One process-wide set,
//! [`global`], so every part of the agent records without plumbing: the daemon (reconcile
//! passes, instance states and restarts), the executor (probe results), the image adapter
//! (pulls). Usage that the kernel keeps (cpu time, memory, OOM kills) is read at scrape time
//! from the instances' cgroups through the [`UsageSource`] the agent installs.
//!
//! Tests that read values use app names of their own: the set is shared by the process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

/// Buckets of reconcile passes, in seconds (1 ms … 60 s: a pass may pull an image).
const RECONCILE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0, 60.0,
];
/// Buckets of image pulls, in seconds (10 ms … 10 min).
const PULL_BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 600.0];

/// Instance states as reported (`starting`, `ready`, `unhealthy`, `exited`, `stopping`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppState {
    app: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppResult {
    app: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Instance {
    app: String,
    instance: String,
}

/// One instance's kernel counters, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceUsage {
    /// The app.
    pub app: String,
    /// The instance id.
    pub instance: String,
    /// CPU time of all its processes, seconds.
    pub cpu_seconds: f64,
    /// Memory in use (page cache included), bytes.
    pub memory_bytes: u64,
    /// Processes the OOM killer killed in it.
    pub oom_kills: u64,
}

/// Where scrape-time usage comes from (the runtime's cgroups in production).
pub trait UsageSource: Send + Sync + 'static {
    /// Every running instance's counters.
    fn usage(&self) -> Vec<InstanceUsage>;
}

/// The agent's metric families.
pub struct AgentMetrics {
    registry: Registry,
    names: Vec<String>,
    instances: Family<AppState, Gauge>,
    restarts: Family<AppLabel, Counter>,
    probes: Family<AppResult, Counter>,
    pulls: Family<ResultLabel, Counter>,
    pull_bytes: Counter,
    pull_duration: Histogram,
    reconcile_duration: Family<AppLabel, Histogram>,
    /// Restart counts last seen per app and instance, to count only increases.
    seen_restarts: Mutex<BTreeMap<String, BTreeMap<String, u32>>>,
    /// Instance states published per app, to zero the states that went away.
    seen_states: Mutex<BTreeMap<String, Vec<String>>>,
    usage: Arc<UsageCollector>,
    desired_replicas: Family<AppLabel, Gauge>,
    decisions: Family<Decision, Counter>,
    /// The decision series made, so an app's can be removed with it.
    seen_decisions: Mutex<std::collections::BTreeSet<Decision>>,
    proxy: Arc<ProxyCollector>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct Decision {
    app: String,
    direction: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppCode {
    app: String,
    code: String,
}

/// The proxy's per-app counters as last fetched (the proxy is its own process; the agent
/// refreshes this copy every few seconds and whenever the autoscaler samples).
#[derive(Default)]
struct ProxyCollector {
    apps: Mutex<BTreeMap<String, crate::proxy::metrics::MetricsSnapshot>>,
}

impl std::fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCollector").finish_non_exhaustive()
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps = lock(&self.apps).clone();
        let app_label = |app: &str| AppLabel { app: app.into() };
        {
            let mut family = encoder.encode_descriptor(
                "berth_proxy_requests",
                "Requests the proxy answered, by app and status code (its own 502/503 included)",
                None,
                MetricType::Counter,
            )?;
            for (app, s) in &apps {
                for (code, n) in &s.by_code {
                    let label = AppCode {
                        app: app.clone(),
                        code: code.to_string(),
                    };
                    ConstCounter::new(*n).encode(family.encode_family(&label)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_proxy_in_flight",
                "Requests (TCP: connections) in progress at the proxy, by app",
                None,
                MetricType::Gauge,
            )?;
            for (app, s) in &apps {
                let n = i64::try_from(s.in_flight).unwrap_or(i64::MAX);
                ConstGauge::new(n).encode(family.encode_family(&app_label(app))?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_proxy_no_backend",
                "Requests the proxy answered 503 for want of a ready instance, by app",
                None,
                MetricType::Counter,
            )?;
            for (app, s) in &apps {
                ConstCounter::new(s.no_backend_total)
                    .encode(family.encode_family(&app_label(app))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "berth_proxy_request_duration",
            "Time from a request's arrival at the proxy to the end of its response body, by app",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (app, s) in &apps {
            // The snapshot's buckets are cumulative; the encoder wants each bucket's own count.
            let mut before = 0u64;
            let buckets: Vec<(f64, u64)> = s
                .latency
                .buckets
                .iter()
                .map(|(upper_us, cumulative)| {
                    #[allow(clippy::cast_precision_loss, reason = "µs bounds as seconds")]
                    let upper = upper_us.map_or(f64::INFINITY, |us| us as f64 / 1e6);
                    let own = cumulative.saturating_sub(before);
                    before = *cumulative;
                    (upper, own)
                })
                .collect();
            #[allow(clippy::cast_precision_loss, reason = "µs sum as seconds")]
            let sum = s.latency.sum_us as f64 / 1e6;
            family
                .encode_family(&app_label(app))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum,
                    s.latency.count,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

/// The C allocator's totals of the whole process, read at scrape time.
#[derive(Debug, Default)]
struct HeapCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeapState {
    state: &'static str,
}

impl Collector for HeapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(heap) = crate::host::alloc::heap() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "berth_process_heap",
            "The process's C allocator: bytes in use by the program, and bytes freed but held",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (state, bytes) in [("in_use", heap.in_use), ("free", heap.free)] {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            ConstGauge::new(bytes).encode(family.encode_family(&HeapState { state })?)?;
        }
        Ok(())
    }
}

/// The process's agent metrics.
pub fn global() -> &'static AgentMetrics {
    static METRICS: OnceLock<AgentMetrics> = OnceLock::new();
    METRICS.get_or_init(AgentMetrics::new)
}

#[derive(Default)]
struct UsageCollector {
    source: OnceLock<Box<dyn UsageSource>>,
}

impl std::fmt::Debug for UsageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageCollector").finish_non_exhaustive()
    }
}

impl Collector for UsageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let usage = self.source.get().map(|s| s.usage()).unwrap_or_default();
        let label = |u: &InstanceUsage| Instance {
            app: u.app.clone(),
            instance: u.instance.clone(),
        };
        {
            let mut family = encoder.encode_descriptor(
                "berth_instance_cpu",
                "CPU time used by an instance's processes (its cgroup)",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for u in &usage {
                ConstCounter::new(u.cpu_seconds).encode(family.encode_family(&label(u))?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "berth_instance_memory",
                "Memory an instance uses, page cache included (its cgroup)",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            for u in &usage {
                let bytes = i64::try_from(u.memory_bytes).unwrap_or(i64::MAX);
                ConstGauge::new(bytes).encode(family.encode_family(&label(u))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "berth_instance_oom_kills",
            "Processes of an instance killed by the kernel's OOM killer",
            None,
            MetricType::Counter,
        )?;
        for u in &usage {
            ConstCounter::new(u.oom_kills).encode(family.encode_family(&label(u))?)?;
        }
        Ok(())
    }
}

impl AgentMetrics {
    fn new() -> AgentMetrics {
        let mut registry = Registry::default();
        let mut names = Vec::new();
        let instances = Family::<AppState, Gauge>::default();
        plain(
            &mut registry,
            &mut names,
            "berth_instances",
            "Instances on this host by app and state (starting, ready, unhealthy, exited, …)",
            instances.clone(),
        );
        let restarts = Family::<AppLabel, Counter>::default();
        plain(
            &mut registry,
            &mut names,
            "berth_instance_restarts",
            "Restarts of an app's instances by the restart policy",
            restarts.clone(),
        );
        let probes = Family::<AppResult, Counter>::default();
        plain(
            &mut registry,
            &mut names,
            "berth_probe",
            "Health probes by app and result (success, failure)",
            probes.clone(),
        );
        let pulls = Family::<ResultLabel, Counter>::default();
        plain(
            &mut registry,
            &mut names,
            "berth_image_pulls",
            "Image pulls by result (ok, error); a cached image is no pull",
            pulls.clone(),
        );
        let pull_bytes = Counter::default();
        names.push("berth_image_pull_bytes".into());
        registry.register_with_unit(
            "berth_image_pull",
            "Compressed bytes of layers pulled",
            Unit::Bytes,
            pull_bytes.clone(),
        );
        let pull_duration = Histogram::new(PULL_BUCKETS);
        names.push("berth_image_pull_duration_seconds".into());
        registry.register_with_unit(
            "berth_image_pull_duration",
            "Time a pull took, unpacking included",
            Unit::Seconds,
            pull_duration.clone(),
        );
        let reconcile_duration = Family::<AppLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(RECONCILE_BUCKETS)
        });
        names.push("berth_reconcile_duration_seconds".into());
        registry.register_with_unit(
            "berth_reconcile_duration",
            "Time of one reconcile pass of an app (observe, probe, act)",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let usage = Arc::new(UsageCollector::default());
        registry.register_collector(Box::new(usage.clone()));
        names.extend(
            [
                "berth_instance_cpu_seconds",
                "berth_instance_memory_bytes",
                "berth_instance_oom_kills",
            ]
            .map(String::from),
        );
        let desired_replicas = Family::<AppLabel, Gauge>::default();
        plain(
            &mut registry,
            &mut names,
            "berth_autoscaler_desired_replicas",
            "Instances the autoscaler wants on this host, by app (evaluated every second)",
            desired_replicas.clone(),
        );
        let decisions = Family::<Decision, Counter>::default();
        plain(
            &mut registry,
            &mut names,
            "berth_autoscaler_decisions",
            "Autoscaler evaluations by app, direction (up, down, hold) and reason",
            decisions.clone(),
        );
        let proxy = Arc::new(ProxyCollector::default());
        registry.register_collector(Box::new(proxy.clone()));
        names.extend(
            [
                "berth_proxy_requests",
                "berth_proxy_in_flight",
                "berth_proxy_no_backend",
                "berth_proxy_request_duration_seconds",
            ]
            .map(String::from),
        );
        registry.register_collector(Box::new(HeapCollector));
        names.push("berth_process_heap_bytes".into());
        for result in ["ok", "error"] {
            let _ = pulls.get_or_create(&ResultLabel { result });
        }
        AgentMetrics {
            registry,
            names,
            instances,
            restarts,
            probes,
            pulls,
            pull_bytes,
            pull_duration,
            reconcile_duration,
            seen_restarts: Mutex::new(BTreeMap::new()),
            seen_states: Mutex::new(BTreeMap::new()),
            usage,
            desired_replicas,
            decisions,
            seen_decisions: Mutex::default(),
            proxy,
        }
    }

    /// Installs the scrape-time source of instance usage (once; later calls are ignored).
    pub fn set_usage_source(&self, source: Box<dyn UsageSource>) {
        let _ = self.usage.source.set(source);
    }

    /// The registered families' exposed names (tests check each gets samples).
    pub fn family_names(&self) -> &[String] {
        &self.names
    }

    /// One reconcile pass of `app` took `seconds`; `instances` are (id, state, restarts)
    /// after it, all of this host's instances of the app.
    pub fn reconciled(&self, app: &str, seconds: f64, instances: &[(String, String, u32)]) {
        self.reconcile_duration
            .get_or_create(&AppLabel { app: app.into() })
            .observe(seconds);
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for (_, state, _) in instances {
            *counts.entry(state.as_str()).or_default() += 1;
        }
        {
            // Every state this app has had stays known (at 0 once empty) until the app goes.
            let mut seen = lock(&self.seen_states);
            let known = seen.entry(app.into()).or_default();
            for state in known.iter() {
                if !counts.contains_key(state.as_str()) {
                    self.instances
                        .get_or_create(&AppState {
                            app: app.into(),
                            state: state.clone(),
                        })
                        .set(0);
                }
            }
            for (state, n) in &counts {
                self.instances
                    .get_or_create(&AppState {
                        app: app.into(),
                        state: (*state).into(),
                    })
                    .set(*n);
                if !known.iter().any(|k| k == state) {
                    known.push((*state).to_string());
                }
            }
        }
        // Restart counts of the app's current instances only: the gone ones are forgotten.
        let mut seen = lock(&self.seen_restarts);
        let before = seen.remove(app).unwrap_or_default();
        let restarts = self.restarts.get_or_create(&AppLabel { app: app.into() });
        let mut now = BTreeMap::new();
        for (id, _, n) in instances {
            let was = before.get(id).copied().unwrap_or(0);
            if *n > was {
                restarts.inc_by(u64::from(*n - was));
            }
            now.insert(id.clone(), *n);
        }
        if !now.is_empty() {
            seen.insert(app.into(), now);
        }
    }

    /// A health probe of `app` ended.
    pub fn probe(&self, app: &str, success: bool) {
        self.probes
            .get_or_create(&AppResult {
                app: app.into(),
                result: if success { "success" } else { "failure" },
            })
            .inc();
    }

    /// An image pull ended after `seconds`, having fetched `bytes` (`ok` false: it failed).
    pub fn pulled(&self, ok: bool, bytes: u64, seconds: f64) {
        self.pulls
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        self.pull_bytes.inc_by(bytes);
        self.pull_duration.observe(seconds);
    }

    /// One autoscaler evaluation of `app`: the count it wants, and which way it moved and why
    /// (`direction` `up`, `down` or `hold`).
    pub fn autoscaled(
        &self,
        app: &str,
        desired: u32,
        direction: &'static str,
        reason: &'static str,
    ) {
        self.desired_replicas
            .get_or_create(&AppLabel { app: app.into() })
            .set(i64::from(desired));
        let decision = Decision {
            app: app.into(),
            direction,
            reason,
        };
        self.decisions.get_or_create(&decision).inc();
        lock(&self.seen_decisions).insert(decision);
    }

    /// `app` left this host (unassigned, nothing of it left): its series go, so an agent
    /// that sees many apps come and go keeps only the series of the apps it runs.
    pub fn app_gone(&self, app: &str) {
        let label = AppLabel { app: app.into() };
        self.reconcile_duration.remove(&label);
        self.restarts.remove(&label);
        self.desired_replicas.remove(&label);
        for result in ["success", "failure"] {
            self.probes.remove(&AppResult {
                app: app.into(),
                result,
            });
        }
        for state in lock(&self.seen_states).remove(app).unwrap_or_default() {
            self.instances.remove(&AppState {
                app: app.into(),
                state,
            });
        }
        lock(&self.seen_decisions).retain(|d| {
            let gone = d.app == app;
            if gone {
                self.decisions.remove(d);
            }
            !gone
        });
        lock(&self.seen_restarts).remove(app);
    }

    /// What the metrics keep about `app` besides its series: the states it has had and the
    /// instances whose restart counts are known (tests: the current ones only, none once
    /// the app is gone).
    pub fn remembered(&self, app: &str) -> (usize, usize) {
        let states = lock(&self.seen_states).get(app).map_or(0, Vec::len);
        let instances = lock(&self.seen_restarts).get(app).map_or(0, BTreeMap::len);
        (states, instances)
    }

    /// An app left autoscaling (or this host): its desired-replicas series goes.
    pub fn not_autoscaled(&self, app: &str) {
        self.desired_replicas.remove(&AppLabel { app: app.into() });
    }

    /// The proxy's counters, as just fetched from it.
    pub fn proxy_snapshot(&self, apps: BTreeMap<String, crate::proxy::metrics::MetricsSnapshot>) {
        *lock(&self.proxy.apps) = apps;
    }

    /// The proxy's request counter for `app`, as last fetched (reported to the controller,
    /// whose status and dashboard turn it into a rate).
    pub fn proxy_requests(&self, app: &str) -> Option<u64> {
        lock(&self.proxy.apps).get(app).map(|s| s.requests_total)
    }

    /// The families as OpenMetrics text without the final `# EOF` line, so that a process
    /// serving other metrics too (`berth up`) can join the texts.
    pub fn encode_body(&self) -> String {
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out
    }

    /// The complete OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = self.encode_body();
        out.push_str("# EOF\n");
        out
    }
}

fn plain(registry: &mut Registry, names: &mut Vec<String>, name: &str, help: &str, m: impl Metric) {
    names.push(name.to_string());
    registry.register(name, help, m);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn states_restarts_probes_and_pulls_are_counted() {
        let m = AgentMetrics::new();
        let inst = |id: &str, state: &str, r: u32| (id.to_string(), state.to_string(), r);
        m.reconciled(
            "web",
            0.01,
            &[inst("web-1-0", "ready", 0), inst("web-1-1", "starting", 0)],
        );
        m.reconciled(
            "web",
            0.01,
            &[inst("web-1-0", "ready", 2), inst("web-1-1", "ready", 0)],
        );
        m.reconciled(
            "web",
            0.01,
            &[inst("web-1-0", "ready", 3), inst("web-1-1", "ready", 0)],
        );
        m.probe("web", true);
        m.probe("web", false);
        m.pulled(true, 1000, 0.5);
        let text = m.encode();
        assert_eq!(
            value(&text, r#"berth_instances{app="web",state="ready"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(&text, r#"berth_instances{app="web",state="starting"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(&text, r#"berth_instance_restarts_total{app="web"}"#),
            Some(3.0)
        );
        assert_eq!(
            value(&text, r#"berth_probe_total{app="web",result="failure"}"#),
            Some(1.0)
        );
        assert_eq!(value(&text, "berth_image_pull_bytes_total"), Some(1000.0));
        assert_eq!(
            value(&text, r#"berth_image_pulls_total{result="ok"}"#),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn autoscaler_and_proxy_families() {
        use crate::proxy::metrics::{Histogram as Latency, MetricsSnapshot};
        let m = AgentMetrics::new();
        m.autoscaled("web", 3, "up", "above_target");
        m.autoscaled("web", 3, "hold", "within_tolerance");
        let snapshot = MetricsSnapshot {
            requests_total: 3,
            by_code: [(200, 2), (503, 1)].into(),
            in_flight: 1,
            waiting: 0,
            no_backend_total: 1,
            upstream_errors_total: 0,
            connections_total: 2,
            connections_open: 1,
            latency: Latency {
                buckets: vec![(Some(500), 1), (Some(1_000_000), 2), (None, 3)],
                sum_us: 1_500_500,
                count: 3,
            },
        };
        m.proxy_snapshot([("web".to_string(), snapshot)].into());
        let text = m.encode();
        assert_eq!(
            value(&text, r#"berth_autoscaler_desired_replicas{app="web"}"#),
            Some(3.0)
        );
        assert_eq!(
            value(
                &text,
                r#"berth_autoscaler_decisions_total{app="web",direction="up",reason="above_target"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"berth_proxy_requests_total{app="web",code="503"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"berth_proxy_in_flight{app="web"}"#),
            Some(1.0)
        );
        // cumulative in the exposition again
        assert_eq!(
            value(
                &text,
                r#"berth_proxy_request_duration_seconds_bucket{le="1.0",app="web"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                r#"berth_proxy_request_duration_seconds_bucket{le="+Inf",app="web"}"#
            ),
            Some(3.0)
        );
        m.not_autoscaled("web");
        assert!(!m.encode().contains("berth_autoscaler_desired_replicas{"));
    }

    #[test]
    fn a_removed_app_takes_its_series_and_memory_along() {
        let m = AgentMetrics::new();
        let inst = |id: &str, state: &str, r: u32| (id.to_string(), state.to_string(), r);
        m.reconciled("gone", 0.01, &[inst("gone-1-0", "starting", 0)]);
        m.reconciled("gone", 0.01, &[inst("gone-1-0", "ready", 1)]);
        m.probe("gone", true);
        m.probe("gone", false);
        m.autoscaled("gone", 2, "up", "above_target");
        m.reconciled("stays", 0.01, &[inst("stays-1-0", "ready", 0)]);
        assert_eq!(m.remembered("gone"), (2, 1));
        // its last pass: no instance left
        m.reconciled("gone", 0.01, &[]);
        assert_eq!(m.remembered("gone"), (2, 0));
        assert_eq!(
            value(&m.encode(), r#"berth_instances{app="gone",state="ready"}"#),
            Some(0.0)
        );
        m.app_gone("gone");
        let text = m.encode();
        assert!(!text.contains(r#"app="gone""#), "{text}");
        assert!(text.contains(r#"berth_instances{app="stays",state="ready"} 1"#));
        assert_eq!(m.remembered("gone"), (0, 0));
    }

    #[test]
    fn restarts_of_apps_sharing_a_name_prefix_are_counted_once() {
        // `web`'s instances are `web-<rev>-<n>`, and so would start those of `web-api`: a
        // pass of one app must not forget the other's counts (and count them again).
        let m = AgentMetrics::new();
        let inst = |id: &str, r: u32| (id.to_string(), "ready".to_string(), r);
        m.reconciled("web-api", 0.01, &[inst("web-api-1-0", 2)]);
        m.reconciled("web", 0.01, &[inst("web-1-0", 0)]);
        m.reconciled("web-api", 0.01, &[inst("web-api-1-0", 2)]);
        assert_eq!(
            value(
                &m.encode(),
                r#"berth_instance_restarts_total{app="web-api"}"#
            ),
            Some(2.0)
        );
    }

    #[test]
    fn heap_totals_are_read_at_scrape_time() {
        let m = AgentMetrics::new();
        let text = m.encode();
        let in_use = value(&text, r#"berth_process_heap_bytes{state="in_use"}"#).unwrap();
        assert!(in_use > 0.0, "{text}");
        assert!(value(&text, r#"berth_process_heap_bytes{state="free"}"#).is_some());
    }

    #[test]
    fn usage_is_read_at_scrape_time() {
        struct Fixed;
        impl UsageSource for Fixed {
            fn usage(&self) -> Vec<InstanceUsage> {
                vec![InstanceUsage {
                    app: "web".into(),
                    instance: "web-1-0".into(),
                    cpu_seconds: 1.5,
                    memory_bytes: 4096,
                    oom_kills: 1,
                }]
            }
        }
        let m = AgentMetrics::new();
        m.set_usage_source(Box::new(Fixed));
        let text = m.encode();
        let labels = r#"{app="web",instance="web-1-0"}"#;
        assert_eq!(
            value(&text, &format!("berth_instance_cpu_seconds_total{labels}")),
            Some(1.5)
        );
        assert_eq!(
            value(&text, &format!("berth_instance_memory_bytes{labels}")),
            Some(4096.0)
        );
        assert_eq!(
            value(&text, &format!("berth_instance_oom_kills_total{labels}")),
            Some(1.0)
        );
    }
}
