//! Privileged system tests of `berth runtime` (the OCI runtime command line): the
//! create/start/state/kill/delete lifecycle on a bundle from `runc spec`, the spec's rules
//! where runc deviates, and hooks. Skipped only when not root.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "system test helpers"
)]

mod runtime_support;

use std::path::Path;
use std::process::Command;

use runtime_support::{Env, is_root, stderr};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A bundle in the env's temp dir: the busybox rootfs plus a `runc spec`-shaped config.
fn bundle(
    env: &Env,
    args: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let dir = env.tmp.path().join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::rename(&env.rootfs, dir.join("rootfs"));
    let mut config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                             "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                             "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "oci",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

fn runtime(_env: &Env, root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.arg("runtime").arg("--root").arg(root);
    c
}

/// Runs a verb whose container shares stdio (create, run -d): output goes to files so the
/// call returns without waiting for the container to close its pipes.
fn detached(env: &Env, cmd: &mut Command, out: &Path) -> (bool, String) {
    let err = env.tmp.path().join("stderr");
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    (
        status.success(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

fn state(env: &Env, root: &Path, id: &str) -> serde_json::Value {
    let out = runtime(env, root).args(["state", id]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn create_start_state_delete_follow_the_spec() {
    require_root!();
    let env = Env::new();
    let root = env.tmp.path().join("root");
    let out_file = env.tmp.path().join("out");
    let b = bundle(
        &env,
        &[
            "sh",
            "-c",
            "hostname; grep CapEff /proc/self/status; exit 3",
        ],
        |_| {},
    );
    let pid_file = env.tmp.path().join("pid");
    let (ok, err) = detached(
        &env,
        runtime(&env, &root)
            .args(["create", "--bundle"])
            .arg(&b)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("c1"),
        &out_file,
    );
    assert!(ok, "{err}");
    let st = state(&env, &root, "c1");
    assert_eq!(st["status"], "created");
    assert_eq!(
        st["pid"].to_string(),
        std::fs::read_to_string(&pid_file).unwrap()
    );
    assert_eq!(st["bundle"], b.display().to_string());
    // The spec: deleting a created container without --force is an error (runc allows it).
    let out = runtime(&env, &root)
        .args(["delete", "c1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = runtime(&env, &root).args(["start", "c1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = runtime(&env, &root).args(["start", "c1"]).output().unwrap();
    assert!(!out.status.success(), "started twice");
    for _ in 0..100 {
        if state(&env, &root, "c1")["status"] == "stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(state(&env, &root, "c1")["status"], "stopped");
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "oci\nCapEff:\t0000000020000420\n"
    );
    let out = runtime(&env, &root)
        .args(["delete", "c1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = runtime(&env, &root).args(["state", "c1"]).output().unwrap();
    assert!(!out.status.success(), "state of a deleted container");
}

#[test]
fn kill_and_force_delete_of_a_running_container() {
    require_root!();
    let env = Env::new();
    let root = env.tmp.path().join("root");
    let b = bundle(&env, &["sleep", "60"], |_| {});
    let (ok, err) = detached(
        &env,
        runtime(&env, &root)
            .args(["run", "-d", "-b"])
            .arg(&b)
            .arg("c2"),
        &env.tmp.path().join("out"),
    );
    assert!(ok, "{err}");
    assert_eq!(state(&env, &root, "c2")["status"], "running");
    let out = runtime(&env, &root)
        .args(["kill", "c2", "KILL"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..100 {
        if state(&env, &root, "c2")["status"] == "stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(state(&env, &root, "c2")["status"], "stopped");
    let out = runtime(&env, &root)
        .args(["delete", "--force", "c2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn unknown_capability_is_an_error() {
    require_root!();
    let env = Env::new();
    let root = env.tmp.path().join("root");
    let b = bundle(&env, &["true"], |c| {
        c["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_NOT_REAL"])
    });
    let (ok, err) = detached(
        &env,
        runtime(&env, &root)
            .args(["create", "-b"])
            .arg(&b)
            .arg("c3"),
        &env.tmp.path().join("out"),
    );
    assert!(!ok);
    assert!(
        err.contains("CAP_NOT_REAL") || err.contains("unknown"),
        "{err}"
    );
}

#[test]
fn run_passes_the_exit_code_and_hooks_see_the_state() {
    require_root!();
    let env = Env::new();
    let root = env.tmp.path().join("root");
    let hook_out = env.tmp.path().join("hook.json");
    let hook = format!("cat > {}", hook_out.display());
    let b = bundle(&env, &["sh", "-c", "exit 4"], |c| {
        c["hooks"] =
            serde_json::json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]});
    });
    let out = runtime(&env, &root)
        .args(["run", "-b"])
        .arg(&b)
        .arg("c4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // run -d goes through create, which runs the createRuntime hook with the state.
    let (ok, err) = detached(
        &env,
        runtime(&env, &root)
            .args(["run", "-d", "-b"])
            .arg(&b)
            .arg("c5"),
        &env.tmp.path().join("out"),
    );
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&hook_out).unwrap()).unwrap();
    assert_eq!(st["id"], "c5");
    assert_eq!(st["status"], "created");
    let _ = runtime(&env, &root).args(["delete", "-f", "c5"]).output();
}
