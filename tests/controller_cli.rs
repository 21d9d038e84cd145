//! System test of the real binary: `berth controller` on a free loopback port syncing a real
//! local bare git repository, driven by `berth status/apps/revisions/rollback/rollout/events`
//! with the token read from the shared `--data-dir`. A host is simulated through the agent
//! API (the agent has its own tests) to report a rolled-back rollout.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
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

struct Env {
    dir: tempfile::TempDir,
    repo: GitRemote,
    url: String,
}

impl Env {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn push(&self, text: &str, message: &str) {
        self.repo.push("web.yaml", text, message);
    }

    fn berth(&self, args: &[&str]) -> Output {
        Command::new(assert_cmd::cargo::cargo_bin("berth"))
            .args(args)
            .arg("--data-dir")
            .arg(self.data())
            .arg("--controller")
            .arg(&self.url)
            .env_remove("BERTH_TOKEN")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.berth(&all);
        assert!(
            out.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Polls `berth status -o json` until `pred` holds (the controller polls git every 200ms).
    fn wait_status(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..100 {
            let out = self.berth(&["status", "-o", "json"]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if pred(&v) {
                    return v;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "status never matched; last: {}",
            String::from_utf8_lossy(&self.berth(&["status"]).stdout)
        );
    }
}

fn image(n: u8) -> String {
    // digests in the manifest need no registry call
    format!("busybox@sha256:{}", format!("{n:x}").repeat(64))
}

#[test]
fn controller_binary_serves_status_revisions_rollback_and_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    let port = berth_testkit::free_port().unwrap();
    let env = Env {
        repo,
        url: format!("http://127.0.0.1:{port}"),
        dir,
    };
    env.push(
        &format!("app: web\nimage: {}\nreplicas: 2\n", image(1)),
        "add web",
    );

    let _daemon = Daemon(
        Command::new(assert_cmd::cargo::cargo_bin("berth"))
            .args(["controller", "--repo"])
            .arg(env.repo.url())
            .args(["--branch", "main", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll-interval", "200ms", "--data-dir"])
            .arg(env.data())
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // the token file was created 0600 and the CLI uses it through --data-dir
    let status = env.wait_status(|s| s["apps"][0]["revision"] == 1);
    assert_eq!(status["apps"][0]["name"], "web");
    assert_eq!(status["apps"][0]["pinned"], false);
    assert!(status["hosts"].as_array().unwrap().is_empty());
    let token_file = env.data().join("controller/token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // a wrong token is refused: exit 1 with the reason
    let out = Command::new(assert_cmd::cargo::cargo_bin("berth"))
        .args(["status", "--controller", &env.url, "--token", "wrong"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));

    // a host registers and reports revision 2 rolled back
    env.push(
        &format!("app: web\nimage: {}\nreplicas: 2\n", image(2)),
        "web 2",
    );
    env.wait_status(|s| s["apps"][0]["revision"] == 2);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Client::new(&env.url, token.trim()).unwrap();
    rt.block_on(async {
        let reg = Registration {
            name: "h1".into(),
            labels: Default::default(),
            capacity: Default::default(),
            agent_version: "test".into(),
        };
        let r = client.register(&reg).await.unwrap();
        client
            .report(&HostReport {
                host: "h1".into(),
                assignment_version: r.assignment_version,
                instances: Vec::new(),
                apps: vec![AppReport {
                    requests_total: None,
                    app: "web".into(),
                    target: 2,
                    desired: 2,
                    ready: 0,
                    rollout: RolloutState::RolledBack {
                        to: 1,
                        reason: "health check GET /up failed 3 times: status 500".into(),
                    },
                }],
                events: Vec::new(),
            })
            .await
            .unwrap();
    });
    let out = env.berth(&["rollout", "status", "web", "--wait", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("GET /up failed"), "{text}");

    let revs = env.json(&["revisions", "web"]);
    assert_eq!(revs[1]["state"], "failed");
    assert_eq!(revs[0]["state"], "active");
    for key in ["number", "image", "digest", "state", "pinned", "cause"] {
        assert!(revs[0].get(key).is_some(), "revisions -o json lacks {key}");
    }
    let status = env.json(&["status"]);
    assert_eq!(status["apps"][0]["revision"], 1);
    assert!(
        status["apps"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("status 500")
    );
    assert_eq!(status["hosts"][0]["name"], "h1");
    assert_eq!(status["hosts"][0]["ready"], true);

    // a third revision, then a manual rollback pins revision 1; a new manifest unpins
    env.push(
        &format!("app: web\nimage: {}\nreplicas: 2\n", image(3)),
        "web 3",
    );
    env.wait_status(|s| s["apps"][0]["revision"] == 3);
    let out = env.berth(&["rollback", "web", "--to", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = env.json(&["status"]);
    assert_eq!(status["apps"][0]["pinned"], true);
    assert_eq!(status["apps"][0]["revision"], 1);
    let table = String::from_utf8(env.berth(&["revisions", "web"]).stdout).unwrap();
    assert!(table.contains("pinned"), "{table}");
    // rolling back to a revision that does not exist: exit 1; no app argument: usage, exit 2
    assert_eq!(
        env.berth(&["rollback", "web", "--to", "9"]).status.code(),
        Some(1)
    );
    assert_eq!(env.berth(&["rollback"]).status.code(), Some(2));
    env.push(
        &format!("app: web\nimage: {}\nreplicas: 2\n", image(4)),
        "web 4",
    );
    let status = env.wait_status(|s| s["apps"][0]["revision"] == 4);
    assert_eq!(status["apps"][0]["pinned"], false);

    // an invalid commit: nothing changes, the error with path:line:col is in status
    env.push("app: web\nimage: busybox\nreplicas: -1\n", "break web");
    let status = env.wait_status(|s| !s["sync"]["errors"].as_array().unwrap().is_empty());
    assert_eq!(status["apps"][0]["revision"], 4);
    let errors = status["sync"]["errors"].to_string();
    assert!(errors.contains("web.yaml:3:"), "{errors}");

    let out = env.berth(&["events"]);
    assert!(out.status.success());
    let events = String::from_utf8_lossy(&out.stdout);
    for reason in [
        "RevisionCreated",
        "RevisionFailed",
        "RolledBackByUser",
        "SyncFailed",
    ] {
        assert!(events.contains(reason), "no {reason} in:\n{events}");
    }
    assert!(env.berth(&["apps"]).status.success());
}
