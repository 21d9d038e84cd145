//! The controller's Prometheus metrics: one [`Metrics`] value owns one `Registry` and every
//! metric family in it, and encodes them for `GET /metrics` (OpenMetrics text, which
//! `promtool check metrics` and Prometheus accept).
//!
//! Scrapers that ask for OpenMetrics (`Accept: application/openmetrics-text`, as Prometheus
//! does) get it; anything else (curl, `promtool check metrics`, older scrapers) gets the
//! classic Prometheus text format 0.0.4 ([`Metrics::encode_prometheus`]).
//!
//! Metrics are updated by the code that does the work (sync, report handling, long-poll
//! answers, the API middleware), never by a timer; the one gauge that depends on the clock
//! (hosts by readiness) is recomputed on the code paths that see hosts (register, report)
//! and when `/metrics` is scraped. docs/metrics.md lists every family; a test fails when a
//! family is never updated or missing from that page.
//!
//! This module owns no I/O and no store access: callers pass what happened.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};
use tokio::time::Instant;

pub use berth_manifests::exposition::{CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

/// The text and content type for a scraper's `Accept` header: OpenMetrics when it asks for
/// it, else the classic Prometheus text format.
pub fn negotiate(metrics: &Metrics, accept: Option<&str>) -> (&'static str, String) {
    berth_manifests::exposition::negotiate(metrics.encode(), accept)
}

/// Outcome of one sync (`result` label of `berth_controller_sync_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncResult {
    /// The head is applied (newly, or it already was).
    Ok,
    /// The head was refused: invalid manifests, or an image tag that does not exist.
    Invalid,
    /// The sync could not finish: git fetch failed, a registry was unreachable, the store
    /// failed.
    Error,
}

impl SyncResult {
    fn label(self) -> &'static str {
        match self {
            SyncResult::Ok => "ok",
            SyncResult::Invalid => "invalid",
            SyncResult::Error => "error",
        }
    }
}

/// Why an app's target revision changed (`cause` label of
/// `berth_controller_target_changes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetCause {
    /// A commit made a new revision.
    Commit,
    /// A host reported the target failed; the target went back to the fallback.
    Failure,
    /// A user pinned the app (`berth rollback`).
    Rollback,
}

impl TargetCause {
    fn label(self) -> &'static str {
        match self {
            TargetCause::Commit => "commit",
            TargetCause::Failure => "failure",
            TargetCause::Rollback => "rollback",
        }
    }
}

/// A rollout's end as agents reported it (`result` label of `berth_rollouts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutResult {
    /// Ready on a host.
    Complete,
    /// The agent rolled back to the fallback.
    RolledBack,
    /// Failed with nothing to roll back to.
    Failed,
}

impl RolloutResult {
    fn label(self) -> &'static str {
        match self {
            RolloutResult::Complete => "complete",
            RolloutResult::RolledBack => "rolled_back",
            RolloutResult::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppCause {
    app: String,
    cause: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppResult {
    app: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteCode {
    route: String,
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// Buckets of the API duration histogram, in seconds: 1 ms up to 60 s (long-polls wait up
/// to 60 s).
const API_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0, 60.0,
];
/// Buckets of the sync duration histogram (a fetch may take up to 120 s).
const SYNC_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];
/// Buckets of the assignment latency histogram (agents long-poll; a gap means one was not
/// waiting).
const ASSIGNMENT_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Buckets of the host convergence histogram: pulls and starts take seconds to minutes.
const CONVERGE_BUCKETS: [f64; 10] = [0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// The route label of a request no route matched (keeps cardinality bounded).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Every controller metric, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// The family names as exposed (with the unit, without `_total`), in registration order.
    names: Vec<String>,
    sync: Family<ResultLabel, Counter>,
    sync_duration: Histogram,
    sync_last_success: Gauge<f64, AtomicU64>,
    target_changes: Family<AppCause, Counter>,
    rollouts: Family<AppResult, Counter>,
    assignment_latency: Histogram,
    hosts: Family<StateLabel, Gauge>,
    host_converge: Histogram,
    unplaced: Family<AppLabel, Gauge>,
    unplaced_apps: Mutex<Vec<String>>,
    leader: Gauge,
    api_requests: Family<RouteCode, Counter>,
    api_duration: Family<RouteLabel, Histogram>,
    /// Assignment versions written but not yet answered to their host: host → (version,
    /// when the oldest undelivered change was written).
    undelivered: Mutex<HashMap<String, (u64, Instant)>>,
    /// More families served with these (`berth up`: the agent's), as OpenMetrics text
    /// without `# EOF`.
    extra: std::sync::OnceLock<Box<dyn Fn() -> String + Send + Sync>>,
}

/// A registry that remembers the names it registered.
#[derive(Default)]
struct Registrar {
    registry: Registry,
    names: Vec<String>,
}

impl Registrar {
    fn plain(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.names.push(name.to_string());
        self.registry.register(name, help, metric);
    }

    fn unit(&mut self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.names.push(format!("{name}_{}", unit.as_str()));
        self.registry.register_with_unit(name, help, unit, metric);
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every family registered, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registrar::default();
        let sync = Family::<ResultLabel, Counter>::default();
        registry.plain(
            "berth_controller_sync",
            "Syncs of the git branch, by result (ok, invalid, error)",
            sync.clone(),
        );
        let sync_duration = Histogram::new(SYNC_BUCKETS);
        registry.unit(
            "berth_controller_sync_duration",
            "Time one sync took: fetch, validation, digest resolution and store writes",
            Unit::Seconds,
            sync_duration.clone(),
        );
        let sync_last_success = Gauge::<f64, AtomicU64>::default();
        registry.unit(
            "berth_controller_sync_last_success_timestamp",
            "Unix time of the last sync that ended with the branch head applied",
            Unit::Seconds,
            sync_last_success.clone(),
        );
        let target_changes = Family::<AppCause, Counter>::default();
        registry.plain(
            "berth_controller_target_changes",
            "Changes of an app's target revision, by cause (commit, failure, rollback)",
            target_changes.clone(),
        );
        let rollouts = Family::<AppResult, Counter>::default();
        registry.plain(
            "berth_rollouts",
            "Rollout outcomes reported by agents for an app's target revision, by result \
             (complete, rolled_back, failed)",
            rollouts.clone(),
        );
        let assignment_latency = Histogram::new(ASSIGNMENT_BUCKETS);
        registry.unit(
            "berth_assignment_latency",
            "Time from a host's new assignment being written to the store to the first \
             assignment answer that carries it",
            Unit::Seconds,
            assignment_latency.clone(),
        );
        let hosts = Family::<StateLabel, Gauge>::default();
        registry.plain(
            "berth_controller_hosts",
            "Registered hosts by state (ready: reported within the grace period; down: \
             silent past it, its work placed elsewhere; returning: back, given work once it \
             reported for a grace period)",
            hosts.clone(),
        );
        let host_converge = Histogram::new(CONVERGE_BUCKETS);
        registry.unit(
            "berth_controller_host_converge",
            "Time from a host's registration to its report of every assigned instance ready",
            Unit::Seconds,
            host_converge.clone(),
        );
        let unplaced = Family::<AppLabel, Gauge>::default();
        registry.plain(
            "berth_controller_unplaced_instances",
            "Instances of an app that placement could not place (no ready matching host with \
             room)",
            unplaced.clone(),
        );
        let leader = Gauge::default();
        registry.plain(
            "berth_controller_leader",
            "1 while this controller leads (always, on the embedded store), 0 while it follows \
             another on etcd",
            leader.clone(),
        );
        let api_requests = Family::<RouteCode, Counter>::default();
        registry.plain(
            "berth_controller_api_requests",
            "API requests by matched route template and status code",
            api_requests.clone(),
        );
        let api_duration =
            Family::<RouteLabel, Histogram>::new_with_constructor(|| Histogram::new(API_BUCKETS));
        registry.unit(
            "berth_controller_api_request_duration",
            "Time to answer an API request (to its headers), by matched route template",
            Unit::Seconds,
            api_duration.clone(),
        );
        let sync_results = [SyncResult::Ok, SyncResult::Invalid, SyncResult::Error];
        for result in sync_results {
            // every result shows from the start (0), so rates and alerts see the series
            let _ = sync.get_or_create(&ResultLabel {
                result: result.label(),
            });
        }
        Metrics {
            registry: registry.registry,
            names: registry.names,
            sync,
            sync_duration,
            sync_last_success,
            target_changes,
            rollouts,
            assignment_latency,
            hosts,
            host_converge,
            unplaced,
            unplaced_apps: Mutex::new(Vec::new()),
            leader,
            api_requests,
            api_duration,
            undelivered: Mutex::new(HashMap::new()),
            extra: std::sync::OnceLock::new(),
        }
    }

    /// Every registered family's name as exposed (the `# TYPE` name: unit included,
    /// `_total` not), so tests can tell a family that never got a sample.
    pub fn family_names(&self) -> &[String] {
        &self.names
    }

    /// The exposition text (OpenMetrics, ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // writing to a String cannot fail
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        if let Some(extra) = self.extra.get() {
            out.push_str(&extra());
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }

    /// Serves the families `extra` returns (OpenMetrics text without `# EOF`) with the
    /// controller's, at the same `/metrics` (`berth up` adds the agent's). Set once.
    pub fn set_extra(&self, extra: Box<dyn Fn() -> String + Send + Sync>) {
        let _ = self.extra.set(extra);
    }

    /// The exposition text in the Prometheus text format 0.0.4.
    pub fn encode_prometheus(&self) -> String {
        berth_manifests::exposition::openmetrics_to_prometheus(&self.encode())
    }

    /// One sync ended after `seconds`; `now_ms` is the wall clock (Unix ms).
    pub fn sync_done(&self, result: SyncResult, seconds: f64, now_ms: u64) {
        self.sync
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .inc();
        self.sync_duration.observe(seconds);
        if result == SyncResult::Ok {
            #[allow(clippy::cast_precision_loss, reason = "ms since 1970 fit f64 exactly")]
            self.sync_last_success.set(now_ms as f64 / 1000.0);
        }
    }

    /// `app`'s target revision changed.
    pub fn target_changed(&self, app: &str, cause: TargetCause) {
        self.target_changes
            .get_or_create(&AppCause {
                app: app.to_string(),
                cause: cause.label(),
            })
            .inc();
    }

    /// An agent reported a rollout outcome of `app`'s target.
    pub fn rollout(&self, app: &str, result: RolloutResult) {
        self.rollouts
            .get_or_create(&AppResult {
                app: app.to_string(),
                result: result.label(),
            })
            .inc();
    }

    /// `host`'s assignment `version` was written at `at`. The clock of the oldest change
    /// not yet delivered keeps running: the latency is the host's staleness.
    pub fn assignment_written(&self, host: &str, version: u64, at: Instant) {
        if let Ok(mut map) = self.undelivered.lock() {
            map.entry(host.to_string())
                .and_modify(|(v, _)| *v = (*v).max(version))
                .or_insert((version, at));
        }
    }

    /// An assignment answer carrying `version` goes to `host` at `at`.
    pub fn assignment_answered(&self, host: &str, version: u64, at: Instant) {
        let written = match self.undelivered.lock() {
            Ok(mut map) => match map.get(host) {
                Some((v, _)) if *v <= version => map.remove(host).map(|(_, t)| t),
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(written) = written {
            self.assignment_latency
                .observe(at.saturating_duration_since(written).as_secs_f64());
        }
    }

    /// Sets the host gauges: `ready`, `returning` (back from down, not yet given work) and
    /// `down` (silent past the grace period) hosts.
    pub fn set_hosts(&self, ready: u64, returning: u64, down: u64) {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (state, n) in [("ready", ready), ("returning", returning), ("down", down)] {
            self.hosts
                .get_or_create(&StateLabel { state })
                .set(as_i64(n));
        }
    }

    /// A host reported its whole assignment ready `seconds` after it registered.
    pub fn host_converged(&self, seconds: f64) {
        self.host_converge.observe(seconds);
    }

    /// Sets the instances of each app placement could not place (apps absent: 0, and
    /// dropped once they were 0 before).
    pub fn set_unplaced(&self, unplaced: &[(String, u32)]) {
        let mut known = self
            .unplaced_apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for app in known.iter() {
            if !unplaced.iter().any(|(a, _)| a == app) {
                self.unplaced
                    .get_or_create(&AppLabel { app: app.clone() })
                    .set(0);
            }
        }
        known.clear();
        for (app, n) in unplaced {
            self.unplaced
                .get_or_create(&AppLabel { app: app.clone() })
                .set(i64::from(*n));
            known.push(app.clone());
        }
    }

    /// Whether this controller leads now.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// An API request on `route` (the matched template, or [`UNMATCHED_ROUTE`]) answered
    /// `code` after `seconds`.
    pub fn api_request(&self, route: &str, code: u16, seconds: f64) {
        self.api_requests
            .get_or_create(&RouteCode {
                route: route.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.api_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(seconds);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// Families of an exposition text: name → (type, samples as (series, value)).
    pub(crate) type Families = BTreeMap<String, (String, Vec<(String, f64)>)>;

    /// Parses the OpenMetrics text [`Metrics::encode`] writes (enough for tests).
    pub(crate) fn parse(text: &str) -> Families {
        let mut out = Families::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                current = name.to_string();
                out.insert(current.clone(), (kind.to_string(), Vec::new()));
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                assert!(
                    series.starts_with(&current),
                    "sample {series} outside its family {current}"
                );
                let value: f64 = value.parse().unwrap();
                out.get_mut(&current)
                    .unwrap()
                    .1
                    .push((series.to_string(), value));
            }
        }
        out
    }

    /// The value of the sample named exactly `series` (e.g. `a_total{x="y"}`).
    pub(crate) fn sample(families: &Families, series: &str) -> Option<f64> {
        families
            .values()
            .flat_map(|(_, s)| s)
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
    }

    /// The registered families that have no sample with a non-zero value in `families`:
    /// defined but never updated (for histograms, `_count` must be non-zero).
    pub(crate) fn never_updated(m: &Metrics, families: &Families) -> Vec<String> {
        m.family_names()
            .iter()
            .filter(|name| {
                let Some((kind, samples)) = families.get(name.as_str()) else {
                    return true;
                };
                !samples.iter().any(|(series, v)| {
                    let counted =
                        kind != "histogram" || series.starts_with(&format!("{name}_count"));
                    counted && *v != 0.0
                })
            })
            .cloned()
            .collect()
    }

    #[test]
    fn a_fresh_registry_encodes_with_eof_and_every_family_unused() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(m.family_names().len(), 12);
        // families with labels have no series until first used
        assert_eq!(never_updated(&m, &parse(&text)).len(), 12);
        // fixed label sets start at zero
        assert_eq!(
            sample(
                &parse(&text),
                "berth_controller_sync_total{result=\"error\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn every_family_moves_when_every_method_is_called() {
        let m = Metrics::new();
        let t0 = Instant::now();
        m.sync_done(SyncResult::Ok, 0.2, 1_000);
        m.target_changed("web", TargetCause::Commit);
        m.rollout("web", RolloutResult::RolledBack);
        m.assignment_written("h1", 1, t0);
        m.assignment_answered("h1", 1, t0 + Duration::from_millis(3));
        m.set_hosts(1, 0, 0);
        m.host_converged(2.5);
        m.set_unplaced(&[("web".to_string(), 1)]);
        m.set_leader(true);
        m.api_request("/v1/status", 200, 0.001);
        // a new family without a method called here fails
        assert_eq!(never_updated(&m, &parse(&m.encode())), Vec::<String>::new());
    }

    #[test]
    fn prometheus_text_names_counters_with_total_and_drops_unit_and_eof() {
        let m = Metrics::new();
        m.sync_done(SyncResult::Ok, 0.2, 1_000);
        let text = m.encode_prometheus();
        assert!(
            text.contains(
                "# HELP berth_controller_sync_total Syncs of the git branch, by result \
                 (ok, invalid, error).\n# TYPE berth_controller_sync_total counter\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nberth_controller_sync_total{result=\"ok\"} 1\n"));
        assert!(text.contains("# TYPE berth_controller_sync_duration_seconds histogram\n"));
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        // the same samples in both formats
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        assert_eq!(samples(&text), samples(&m.encode()));
        assert_eq!(negotiate(&m, None).0, PROMETHEUS_CONTENT_TYPE);
        assert_eq!(
            negotiate(
                &m,
                Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
            )
            .0,
            CONTENT_TYPE
        );
    }

    #[test]
    fn sync_counts_by_result_and_sets_last_success_only_on_ok() {
        let m = Metrics::new();
        m.sync_done(SyncResult::Invalid, 0.5, 9_000);
        let f = parse(&m.encode());
        assert_eq!(
            sample(&f, "berth_controller_sync_total{result=\"invalid\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&f, "berth_controller_sync_last_success_timestamp_seconds"),
            Some(0.0)
        );
        assert_eq!(
            sample(&f, "berth_controller_sync_duration_seconds_count"),
            Some(1.0)
        );
        m.sync_done(SyncResult::Ok, 0.1, 1_700_000_000_500);
        let f = parse(&m.encode());
        assert_eq!(
            sample(&f, "berth_controller_sync_last_success_timestamp_seconds"),
            Some(1_700_000_000.5)
        );
    }

    #[test]
    fn assignment_latency_runs_from_the_oldest_undelivered_write() {
        let m = Metrics::new();
        let count = |m: &Metrics| {
            sample(
                &parse(&m.encode()),
                "berth_assignment_latency_seconds_count",
            )
            .unwrap()
        };
        let t0 = Instant::now();
        m.assignment_written("h1", 3, t0);
        m.assignment_written("h1", 4, t0 + Duration::from_secs(1));
        // an answer with an older version delivers nothing
        m.assignment_answered("h1", 3, t0 + Duration::from_secs(2));
        assert_eq!(count(&m), 0.0);
        m.assignment_answered("h1", 4, t0 + Duration::from_millis(2500));
        assert_eq!(count(&m), 1.0);
        let f = parse(&m.encode());
        assert_eq!(
            sample(&f, "berth_assignment_latency_seconds_sum"),
            Some(2.5)
        );
        assert_eq!(
            sample(&f, "berth_assignment_latency_seconds_bucket{le=\"1.0\"}"),
            Some(0.0)
        );
        // delivered once: a second answer with the same version is not a new delivery
        m.assignment_answered("h1", 4, t0 + Duration::from_secs(9));
        assert_eq!(count(&m), 1.0);
        // another host's answers deliver nothing of h1's
        m.assignment_written("h1", 5, t0);
        m.assignment_answered("h2", 5, t0 + Duration::from_secs(1));
        assert_eq!(count(&m), 1.0);
    }

    #[test]
    fn hosts_gauge_is_set_not_accumulated() {
        let m = Metrics::new();
        m.set_hosts(2, 0, 1);
        m.set_hosts(1, 0, 0);
        let f = parse(&m.encode());
        assert_eq!(
            sample(&f, "berth_controller_hosts{state=\"ready\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&f, "berth_controller_hosts{state=\"down\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn every_family_is_documented_in_docs_metrics_md() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
                .unwrap();
        let m = Metrics::new();
        for name in m.family_names() {
            assert!(
                doc.contains(&format!("`{name}")),
                "docs/metrics.md lacks {name}"
            );
        }
    }
}
