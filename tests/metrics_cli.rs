//! System test of the real binary's `/metrics`: `berth controller` on a free loopback port
//! syncing a local bare git repository; its scraped text must pass `promtool check metrics`
//! (Debian `prometheus`), and `--metrics-token-required` closes it to scrapes without the
//! token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_controller::client::Client;
use berth_manifests::wire::{AppReport, HostReport, Registration, RolloutState};
use berth_testkit::GitRemote;

/// The controller process, stopped (by its pid) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bare repository with one valid app, in a tempdir removed on drop.
fn repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    let bare = repo.bare().to_path_buf();
    repo.push(
        "web.yaml",
        &format!(
            "app: web\nimage: busybox@sha256:{}\nreplicas: 1\n",
            "1".repeat(64)
        ),
        "add web",
    );
    (dir, bare)
}

fn controller(dir: &Path, bare: &Path, port: u16, extra: &[&str]) -> Daemon {
    Daemon(
        Command::new(assert_cmd::cargo::cargo_bin("berth"))
            .args(["controller", "--repo"])
            .arg(format!("file://{}", bare.display()))
            .args(["--branch", "main", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll-interval", "200ms", "--data-dir"])
            .arg(dir.join("data"))
            .args(extra)
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `GET /metrics` once the listener answers.
fn wait_status(addr: &str) -> u16 {
    for _ in 0..100 {
        if let Ok(code) = berth_testkit::http_status(addr, "/metrics") {
            return code;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("controller at {addr} never answered");
}

#[test]
fn controller_metrics_pass_promtool_check_metrics() {
    let (dir, bare) = repo();
    let port = berth_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _daemon = controller(dir.path(), &bare, port, &[]);
    assert_eq!(wait_status(&addr), 200);
    // wait for the first sync, so the sync families have non-zero samples
    let mut text = String::new();
    for _ in 0..100 {
        text = berth_testkit::http_get(&addr, "/metrics").unwrap();
        // the first sync applied revision 1
        // (the sync is counted when it ends, just after revision 1 is applied)
        if text.contains("berth_controller_target_changes_total{app=\"web\",cause=\"commit\"} 1")
            && !text.contains("berth_controller_sync_total{result=\"ok\"} 0")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !text.contains("berth_controller_sync_total{result=\"ok\"} 0"),
        "{text}"
    );
    // a host registers, takes its assignment and reports revision 1 complete, so every
    // family has series (rollouts, assignment latency, hosts)
    let token = std::fs::read_to_string(dir.path().join("data/controller/token")).unwrap();
    let client = Client::new(&format!("http://{addr}"), token.trim()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        client
            .register(&Registration {
                name: "h1".into(),
                labels: Default::default(),
                capacity: Default::default(),
                agent_version: "test".into(),
            })
            .await
            .unwrap();
        let a = client.assignment("h1", None, Duration::ZERO).await.unwrap();
        client
            .report(&HostReport {
                host: "h1".into(),
                assignment_version: a.version,
                instances: Vec::new(),
                apps: vec![AppReport {
                    requests_total: None,
                    app: "web".into(),
                    target: 1,
                    desired: 1,
                    ready: 1,
                    rollout: RolloutState::Complete,
                }],
                events: Vec::new(),
            })
            .await
            .unwrap();
    });
    let text = berth_testkit::http_get(&addr, "/metrics").unwrap();
    for series in [
        "berth_rollouts_total{app=\"web\",result=\"complete\"} 1",
        "berth_assignment_latency_seconds_count 1",
        "berth_controller_hosts{state=\"ready\"} 1",
        "berth_controller_target_changes_total{app=\"web\",cause=\"commit\"} 1",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }
    assert!(text.contains("berth_controller_api_requests_total{route=\"/metrics\",code=\"200\"}"));

    berth_testkit::promtool_check(&text);
}

#[test]
fn metrics_token_required_flag_closes_metrics_to_anonymous_scrapes() {
    let (dir, bare) = repo();
    let port = berth_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _daemon = controller(dir.path(), &bare, port, &["--metrics-token-required"]);
    assert_eq!(wait_status(&addr), 401);
}

#[test]
fn a_real_prometheus_scrapes_the_controller() {
    let (dir, bare) = repo();
    let port = berth_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let _controller = controller(dir.path(), &bare, port, &[]);
    assert_eq!(wait_status(&addr), 200);
    let prometheus = berth_testkit::Prometheus::start(
        &[("berth-controller", &addr)],
        None,
        berth_testkit::free_port().unwrap(),
    )
    .unwrap();

    // The target is up, the first sync was counted, requests are counted by route, and the
    // sync histogram has observations with a sane (positive, under two minutes) mean.
    prometheus.wait_value(r#"up{job="berth-controller"}"#, |v| v == 1.0);
    prometheus.wait_value(r#"berth_controller_sync_total{result="ok"}"#, |v| v >= 1.0);
    prometheus.wait_value(
        r#"sum(berth_controller_api_requests_total{route="/metrics",code="200"})"#,
        |v| v >= 1.0,
    );
    let mean = prometheus.wait_value(
        "berth_controller_sync_duration_seconds_sum / berth_controller_sync_duration_seconds_count",
        |v| v.is_finite(),
    );
    assert!(mean > 0.0 && mean < 120.0, "mean sync duration {mean}");
    let last = prometheus.wait_value(
        "berth_controller_sync_last_success_timestamp_seconds",
        |v| v > 0.0,
    );
    let now = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 600.0, "last success {last}, now {now}");
}
