//! System test of the real binary: `berth controller` on a git repository and `berth agent`
//! sharing its data dir, a real registry (berth-testkit) and real containers. A manifest
//! commit → the app runs and answers HTTP on its port; the agent killed with SIGKILL and
//! started again adopts the running container (same id, not restarted). Needs root,
//! docker-registry and git. Everything it starts is stopped and removed on drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod runtime_support;

use berth_agent::host::container::{self, Cgroups, HostCgroups, NoCgroups, Store};
use berth_testkit::Registry;
use berth_testkit::git;

/// A daemon killed (by pid) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the containers under the data dir on drop (after the daemons stopped).
struct Containers(PathBuf);

impl Drop for Containers {
    fn drop(&mut self) {
        let store = Store::new(&self.0);
        let cgroups: Box<dyn Cgroups> = match HostCgroups::detect(Path::new("/proc/self/mountinfo"))
        {
            Ok(c) => Box::new(c),
            Err(_) => Box::new(NoCgroups),
        };
        if let Ok((listed, _)) = store.list() {
            for l in listed {
                let _ = container::remove(&store, cgroups.as_ref(), &l.state.spec.id, true);
            }
        }
    }
}

fn berth(data: &Path, reg: &str, args: &[&str], log: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("berth"));
    c.args(["--log", "info"])
        .arg("--data-dir")
        .arg(data)
        .arg("--insecure-registry")
        .arg(reg)
        .args(args)
        .env_remove("BERTH_TOKEN")
        .stdout(Stdio::null())
        .stderr(log);
    c
}

fn http_get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_for<T>(
    what: &str,
    secs: u64,
    logs: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    for _ in 0..secs * 10 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}\n{}", logs());
}

fn running(data: &Path) -> Vec<(String, u64)> {
    let store = Store::new(data);
    store
        .list()
        .map(|(l, _)| {
            l.into_iter()
                .filter(|c| c.status == berth_agent::runtime::state::Status::Running)
                .map(|c| (c.state.spec.id.clone(), c.state.created))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_commit_runs_and_answers_and_a_killed_agent_adopts_it() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("skipped: needs root");
        return;
    }
    let reg = Registry::start().expect("start docker-registry");
    reg.push_test_images(&["hello"]).expect("push test images");
    let dir = tempfile::tempdir().unwrap();
    let (bare, work, data) = (
        dir.path().join("remote.git"),
        dir.path().join("work"),
        dir.path().join("data"),
    );
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    git(&bare, &["init", "--quiet", "--bare"]);
    git(&work, &["init", "--quiet"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    let app_port = berth_testkit::free_port().unwrap();
    let manifest = format!(
        "app: web\nimage: {}/berth-test/hello:latest\n\
         command: [/bin/busybox, httpd, -f, -p, '127.0.0.1:{app_port}', -h, /www]\n\
         port: {app_port}\nnetwork: host\nreplicas: 1\n\
         health: {{ http: /index.html, interval: 1s, timeout: 1s, failures: 2 }}\n",
        reg.addr()
    );
    std::fs::write(work.join("web.yaml"), manifest).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "add web"]);
    git(&work, &["push", "--quiet", "origin", "HEAD:main"]);

    // Dropped after the containers (reverse order): the cgroup parent goes last.
    let cgroup = runtime_support::CgroupParent::new(0);
    let _containers = Containers(data.clone());
    let (clog, alog) = (
        dir.path().join("controller.log"),
        dir.path().join("agent.log"),
    );
    let logs = || {
        format!(
            "controller:\n{}\nagent:\n{}",
            std::fs::read_to_string(&clog).unwrap_or_default(),
            std::fs::read_to_string(&alog).unwrap_or_default()
        )
    };
    let port = berth_testkit::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let _controller = Daemon(
        berth(
            &data,
            reg.addr(),
            &["controller", "--branch", "main"],
            &clog,
        )
        .arg("--repo")
        .arg(format!("file://{}", bare.display()))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--poll-interval",
            "200ms",
        ])
        .spawn()
        .unwrap(),
    );
    let agent_args = [
        "--controller",
        url.as_str(),
        "agent",
        "--name",
        "h1",
        "--cgroup-parent",
        cgroup.0.as_str(),
    ];
    let mut agent = Daemon(
        berth(&data, reg.addr(), &agent_args, &alog)
            .spawn()
            .unwrap(),
    );

    let body = wait_for("the app to answer", 60, logs, || http_get(app_port));
    assert!(body.contains("hello from berth"), "{body}");
    let before = running(&data);
    assert_eq!(before.len(), 1, "{before:?}");

    // kill -9 the agent; the app keeps serving; a new agent adopts it.
    agent.0.kill().unwrap();
    let _ = agent.0.wait();
    assert!(http_get(app_port).is_some(), "serving without the agent");
    agent = Daemon(
        berth(&data, reg.addr(), &agent_args, &alog)
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        running(&data),
        before,
        "adopted: same container, not restarted"
    );
    assert!(http_get(app_port).is_some());
    drop(agent);
}
