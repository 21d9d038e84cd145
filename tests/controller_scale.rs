//! The scale harness in small (issue 7): 300 simulated agents (`berth __sim-agents`, the
//! agent's own HTTP client) against the real `berth controller` binary on loopback; two
//! manifest changes, each a `git push` plus the webhook, must reach every agent's long-poll.
//! `scripts/bench-controller` runs the same with 10,000 agents (not in CI).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::path::Path;
use std::process::{Child, Command, Stdio};

use berth_testkit::{GitRemote, git};

const TOKEN: &str = "scale-test-token-0123456789abcdef";
const AGENTS: usize = 300;

/// The controller process, stopped (by its pid) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn manifest(work: &Path, text: &str) {
    std::fs::write(work.join("web.yaml"), text).unwrap();
}

#[test]
fn every_simulated_agent_gets_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    let work = repo.work().to_path_buf();
    let digest = |n: u32| format!("sha256:{n:064}");
    // at first the app matches no host
    manifest(
        &work,
        &format!(
            "app: web\nimage: busybox@{}\nplacement:\n  labels:\n    pool: none\n",
            digest(0)
        ),
    );
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "v0"]);
    git(&work, &["push", "--quiet", "origin", "HEAD:main"]);
    let port = berth_testkit::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let berth = assert_cmd::cargo::cargo_bin("berth");
    let _controller = Running(
        Command::new(&berth)
            .args(["controller", "--repo"])
            .arg(repo.url())
            .args(["--branch", "main", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--poll-interval",
                "1h",
                "--host-grace",
                "1h",
                "--token",
                TOKEN,
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // each trigger writes the manifest, commits, pushes and sends the webhook
    let trigger = |n: u32, extra: &str| {
        format!(
            "cd '{work}' && printf 'app: web\\nimage: busybox@{d}\\n{extra}' > web.yaml && \
             git -c user.name=t -c user.email=t@t -c commit.gpgsign=false commit -qam c{n} && \
             git push -q origin HEAD:main && \
             curl -sf -o /dev/null -X POST -H 'Authorization: Bearer {TOKEN}' {url}/v1/sync",
            work = work.display(),
            d = digest(n),
        )
    };
    // the harness retries registration until the controller listens
    let out = Command::new(&berth)
        .args(["__sim-agents", "--controller", &url, "--token", TOKEN])
        .args(["--count", &AGENTS.to_string(), "--source-addrs", "2"])
        .args(["--report-interval", "2s", "--timeout", "60s"])
        .args(["--trigger", &trigger(1, &format!("replicas: {AGENTS}\\n"))])
        .args(["--trigger", &trigger(2, &format!("replicas: {AGENTS}\\n"))])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "harness failed: {stdout}");
    let phases: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(phases.len(), 3, "register and two changes: {stdout}");
    assert_eq!(phases[0]["polling"], AGENTS);
    for change in &phases[1..] {
        assert_eq!(change["received"], AGENTS, "{change}");
        let p99 = change["p99_ms"].as_f64().unwrap();
        // generous: a debug build on a loaded CI machine
        assert!(p99 < 20_000.0, "p99 {p99} ms: {change}");
    }
    // the controller took the agents' reports: every host is known and ready
    let status = Command::new(&berth)
        .args([
            "status",
            "-o",
            "json",
            "--controller",
            &url,
            "--token",
            TOKEN,
        ])
        .output()
        .unwrap();
    assert!(status.status.success());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let hosts = status["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), AGENTS);
    assert!(hosts.iter().all(|h| h["ready"] == true), "{hosts:?}");
    let web = &status["apps"][0];
    assert_eq!(web["revision"], 3, "{web}");
    assert_eq!(
        web["ready"], AGENTS,
        "every agent reported its instance: {web}"
    );
}
