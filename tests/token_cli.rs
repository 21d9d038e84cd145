//! System test of `berth token` against the real `berth controller` binary (embedded store,
//! real git repository): on the controller's host its `--data-dir` gives admin access, so
//! `berth token create --role R` works without `--token`; the printed token then carries
//! its role (a read token may look, not roll back), and a revoked token is refused.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use berth_testkit::GitRemote;

/// The controller process, stopped (by its pid) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn berth(data: &Path, url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("berth"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(data)
        .args(["--controller", url])
        .env_remove("BERTH_TOKEN");
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    cmd.output().unwrap()
}

#[test]
fn token_create_issues_role_tokens_that_the_controller_enforces() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRemote::init(dir.path());
    let digest = "1".repeat(64);
    repo.push(
        "web.yaml",
        &format!("app: web\nimage: busybox@sha256:{digest}\nreplicas: 1\n"),
        "add web",
    );
    let data = dir.path().join("data");
    let port = berth_testkit::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let _daemon = Daemon(
        Command::new(assert_cmd::cargo::cargo_bin("berth"))
            .args(["controller", "--repo"])
            .arg(repo.url())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll-interval", "200ms", "--data-dir"])
            .arg(&data)
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // the admin token file appears once the controller runs; web is synced
    let mut ready = false;
    for _ in 0..100 {
        let out = berth(&data, &url, None, &["revisions", "web", "-o", "json"]);
        if out.status.success() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "the controller never served web's revisions");

    // create: the token alone on stdout
    let out = berth(&data, &url, None, &["token", "create", "--role", "read"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("bt."), "{token}");
    let elsewhere = dir.path().join("elsewhere");
    let out = berth(&elsewhere, &url, Some(&token), &["status", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a read token cannot roll back: exit 1 naming the role it needs
    let out = berth(
        &elsewhere,
        &url,
        Some(&token),
        &["rollback", "web", "--to", "1"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs deploy"), "{stderr}");
    // nor make tokens
    let out = berth(
        &elsewhere,
        &url,
        Some(&token),
        &["token", "create", "--role", "admin"],
    );
    assert_eq!(out.status.code(), Some(1));
    // an unknown role is a usage error, and makes nothing
    let out = berth(&data, &url, None, &["token", "create", "--role", "root"]);
    assert_eq!(out.status.code(), Some(2));
    // list shows the one token, no secret; revoke ends it
    let out = berth(&data, &url, None, &["token", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["role"], "read");
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(token.rsplit('.').next().unwrap()));
    let out = berth(&data, &url, None, &["token", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = berth(&elsewhere, &url, Some(&token), &["status"]);
    assert_eq!(out.status.code(), Some(1));
}
