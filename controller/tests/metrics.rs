//! The controller's `/metrics` against real components (redb store under a tempdir, a local
//! bare git repository pushed with the `git` CLI, the HTTP server on a free loopback port):
//! each metric moves when its code path runs, and no family stays at zero once every path
//! ran — a metric defined but never updated fails `every_family_is_updated_by_its_code_path`.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_controller::client::Client;
use berth_controller::resolve::FakeResolver;
use berth_controller::{Config, Controller, ControllerHandle};
use berth_manifests::wire::{AppReport, HostReport, Registration, RolloutState};
use berth_testkit::GitRemote;

/// A bare "remote", a work clone pushing to it, a data dir; all removed on drop.
struct Fixture {
    dir: tempfile::TempDir,
    repo: GitRemote,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRemote::init(dir.path());
        Fixture { dir, repo }
    }

    fn push(&self, text: &str, message: &str) {
        self.repo.push("web.yaml", text, message);
    }

    async fn start(&self, token_required: bool) -> (ControllerHandle, Client) {
        let mut config = Config::new(
            self.dir.path().join("data"),
            self.repo.url(),
            "main".into(),
            Arc::new(FakeResolver::new()),
        );
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.poll_interval = Duration::from_secs(3600);
        config.metrics_token_required = token_required;
        let handle = Controller::start(config).await.unwrap();
        let client = Client::new(&handle.url(), handle.token()).unwrap();
        (handle, client)
    }
}

fn web(n: u8) -> String {
    // a digest in the manifest needs no registry call
    format!(
        "app: web\nimage: busybox@sha256:{}\nreplicas: 1\n",
        format!("{n:x}").repeat(64)
    )
}

fn report(version: u64, target: u64, rollout: RolloutState) -> HostReport {
    HostReport {
        host: "h1".into(),
        assignment_version: version,
        instances: Vec::new(),
        apps: vec![AppReport {
            requests_total: None,
            app: "web".into(),
            target,
            desired: 1,
            ready: 1,
            rollout,
        }],
        events: Vec::new(),
    }
}

/// Families of an exposition: name → (type, [(series, value)]).
type Families = BTreeMap<String, (String, Vec<(String, f64)>)>;

fn parse(text: &str) -> Families {
    let mut out = Families::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            current = name.to_string();
            out.insert(current.clone(), (kind.to_string(), Vec::new()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            out.get_mut(&current)
                .unwrap()
                .1
                .push((series.to_string(), value.parse().unwrap()));
        }
    }
    out
}

fn value(f: &Families, series: &str) -> f64 {
    f.values()
        .flat_map(|(_, s)| s)
        .find(|(s, _)| s == series)
        .map_or_else(|| panic!("no series {series} in {f:#?}"), |(_, v)| *v)
}

async fn scrape(handle: &ControllerHandle, token: Option<&str>) -> reqwest::Response {
    // what Prometheus sends
    let mut req = reqwest::Client::new()
        .get(format!("{}/metrics", handle.url()))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn metrics(handle: &ControllerHandle) -> Families {
    let response = scrape(handle, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"));
    parse(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_updated_by_its_code_path() {
    let fx = Fixture::new();
    fx.push(&web(1), "web 1");
    let (handle, client) = fx.start(false).await;

    // sync ok (the webhook route), a host, its first assignment answer
    assert!(client.sync().await.unwrap().errors.is_empty());
    let before = metrics(&handle).await;
    assert!(value(&before, "berth_controller_sync_total{result=\"ok\"}") >= 1.0);
    assert!(
        value(
            &before,
            "berth_controller_sync_last_success_timestamp_seconds"
        ) > 1.6e9
    );
    assert_eq!(
        value(
            &before,
            "berth_controller_target_changes_total{app=\"web\",cause=\"commit\"}"
        ),
        1.0
    );
    let registered = client
        .register(&Registration {
            name: "h1".into(),
            labels: Default::default(),
            capacity: Default::default(),
            agent_version: "test".into(),
        })
        .await
        .unwrap();
    let a = client.assignment("h1", None, Duration::ZERO).await.unwrap();
    assert_eq!(a.version, registered.assignment_version);

    // revision 1 completes on h1
    client
        .report(&report(a.version, 1, RolloutState::Complete))
        .await
        .unwrap();
    // revision 2 arrives through a long-poll already waiting, then rolls back
    let waiting = {
        let client = client.clone();
        let after = a.version;
        tokio::spawn(async move {
            client
                .assignment("h1", Some(after), Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    fx.push(&web(2), "web 2");
    client.sync().await.unwrap();
    let a2 = waiting.await.unwrap();
    assert!(a2.version > a.version);
    // a user rollback (2 -> 1), then revision 3 rolls back on h1 (3 -> 1)
    client.rollback("web", Some(1)).await.unwrap();
    fx.push(&web(3), "web 3");
    client.sync().await.unwrap();
    client
        .report(&report(
            a2.version,
            3,
            RolloutState::RolledBack {
                to: 1,
                reason: "probe failed".into(),
            },
        ))
        .await
        .unwrap();
    // an invalid commit, an unreachable repository
    fx.push("app: web\nimage: [\n", "broken");
    assert!(!client.sync().await.unwrap().errors.is_empty());
    let moved = fx.dir.path().join("moved.git");
    std::fs::rename(fx.repo.bare(), &moved).unwrap();
    assert!(!client.sync().await.unwrap().errors.is_empty());
    std::fs::rename(&moved, fx.repo.bare()).unwrap();
    // a route with a path parameter, an unknown path, a wrong token
    client.revisions("web").await.unwrap();
    let unknown = reqwest::get(format!("{}/v1/nope", handle.url()))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown = reqwest::Client::new()
        .get(format!("{}/v1/nope", handle.url()))
        .bearer_auth(handle.token())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // an app no host can take (no host has its label)
    fx.push(
        &format!(
            "{}---\napp: db\nimage: busybox:1\nplacement: {{ labels: {{ role: db }} }}\n",
            web(3)
        ),
        "db",
    );
    assert!(client.sync().await.unwrap().errors.is_empty());

    let f = metrics(&handle).await;
    assert_eq!(
        value(&f, "berth_controller_unplaced_instances{app=\"db\"}"),
        1.0
    );
    assert_eq!(
        value(&f, "berth_controller_unplaced_instances{app=\"web\"}"),
        0.0
    );
    assert_eq!(
        value(&f, "berth_controller_host_converge_seconds_count"),
        1.0
    );
    // every registered family (families with labels show no series until first used)
    let unused: Vec<&String> = handle
        .core()
        .metrics()
        .family_names()
        .iter()
        .filter(|name| {
            let Some((kind, samples)) = f.get(name.as_str()) else {
                return true;
            };
            !samples.iter().any(|(series, v)| {
                (kind != "histogram" || series.starts_with(&format!("{name}_count"))) && *v != 0.0
            })
        })
        .collect();
    assert!(
        unused.is_empty(),
        "families defined but never updated by their code path: {unused:?}"
    );

    // the push watcher may sync the same head too: each sync counts
    assert!(value(&f, "berth_controller_sync_total{result=\"invalid\"}") >= 1.0);
    assert!(value(&f, "berth_controller_sync_total{result=\"error\"}") >= 1.0);
    assert!(value(&f, "berth_controller_sync_duration_seconds_count") >= 5.0);
    for cause in ["commit", "failure", "rollback"] {
        let want = if cause == "commit" { 3.0 } else { 1.0 };
        assert_eq!(
            value(
                &f,
                &format!("berth_controller_target_changes_total{{app=\"web\",cause=\"{cause}\"}}")
            ),
            want,
            "{cause}"
        );
    }
    assert_eq!(
        value(&f, "berth_rollouts_total{app=\"web\",result=\"complete\"}"),
        1.0
    );
    assert_eq!(
        value(
            &f,
            "berth_rollouts_total{app=\"web\",result=\"rolled_back\"}"
        ),
        1.0
    );
    // assignments written: registration, revision 2, the rollback, revision 3, the fallback;
    // only the first two were asked for
    assert_eq!(value(&f, "berth_assignment_latency_seconds_count"), 2.0);
    assert!(value(&f, "berth_assignment_latency_seconds_sum") < 5.0);
    eprintln!(
        "assignment latency: {} answers, {:.6}s in all; syncs: {}, {:.3}s in all",
        value(&f, "berth_assignment_latency_seconds_count"),
        value(&f, "berth_assignment_latency_seconds_sum"),
        value(&f, "berth_controller_sync_duration_seconds_count"),
        value(&f, "berth_controller_sync_duration_seconds_sum"),
    );
    assert_eq!(value(&f, "berth_controller_hosts{state=\"ready\"}"), 1.0);
    assert_eq!(value(&f, "berth_controller_hosts{state=\"down\"}"), 0.0);
    // route templates, never raw paths
    assert_eq!(
        value(
            &f,
            "berth_controller_api_requests_total{route=\"/v1/apps/{app}/revisions\",code=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &f,
            "berth_controller_api_requests_total{route=\"unmatched\",code=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &f,
            "berth_controller_api_requests_total{route=\"unmatched\",code=\"401\"}"
        ),
        1.0
    );
    assert!(
        value(
            &f,
            "berth_controller_api_request_duration_seconds_count{route=\"/v1/agents/{host}/assignment\"}"
        ) >= 2.0
    );
    let series: Vec<&String> = f.values().flat_map(|(_, s)| s).map(|(s, _)| s).collect();
    assert!(
        !series.iter().any(|s| s.contains("/v1/apps/web")),
        "a raw path became a label: {series:#?}"
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_needs_the_token_only_when_configured() {
    let fx = Fixture::new();
    fx.push(&web(1), "web 1");
    let (open, _) = fx.start(false).await;
    assert_eq!(scrape(&open, None).await.status(), 200);
    open.shutdown().await.unwrap();

    let (closed, _) = fx.start(true).await;
    assert_eq!(scrape(&closed, None).await.status(), 401);
    assert_eq!(scrape(&closed, Some("wrong")).await.status(), 401);
    let token = closed.token().to_string();
    assert_eq!(scrape(&closed, Some(&token)).await.status(), 200);
    closed.shutdown().await.unwrap();
}
