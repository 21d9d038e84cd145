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

#[test]
fn devices_propagation_groups_and_cgroup_extras_are_applied() {
    require_root!();
    let env = Env::new();
    let root = env.tmp.path().join("root");
    let script = "stat -c '%F %t:%T %a %u:%g' /dev/test1 /dev/fifo1; \
                  grep -c ' /tmp/shared .* shared:' /proc/self/mountinfo; \
                  grep '^Groups:' /proc/self/status; \
                  cat /sys/fs/cgroup/memory/memory.soft_limit_in_bytes /sys/fs/cgroup/memory.low 2>/dev/null; \
                  cat /sys/fs/cgroup/cpuset/cpuset.cpus /sys/fs/cgroup/cpuset.cpus 2>/dev/null; \
                  exit 0";
    let b = bundle(&env, &["sh", "-c", script], |c| {
        c["process"]["user"]["additionalGids"] = serde_json::json!([5, 7]);
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(
            serde_json::json!({"destination": "/tmp/shared", "type": "tmpfs",
                                       "source": "tmpfs", "options": ["shared", "mode=755"]}),
        );
        mounts.push(
            serde_json::json!({"destination": "/sys/fs/cgroup", "type": "cgroup",
                                       "source": "cgroup", "options": ["ro"]}),
        );
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "cgroup"}));
        c["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/test1", "type": "c", "major": 10, "minor": 666, "fileMode": 432,
             "uid": 1, "gid": 2},
            {"path": "/dev/fifo1", "type": "p", "fileMode": 384}
        ]);
        c["linux"]["resources"] = serde_json::json!({
            "memory": {"reservation": 33554432},
            "cpu": {"cpus": "0", "mems": "0"}
        });
        c["linux"]["cgroupsPath"] =
            serde_json::json!(format!("/berth-test-{}-oci-extras", std::process::id()));
    });
    let out = runtime(&env, &root)
        .args(["run", "-b"])
        .arg(&b)
        .arg("extras")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}{s}", stderr(&out));
    let mut lines: Vec<&str> = s.lines().collect();
    // Groups from the rootfs's /etc/group for root come first; the additional ones follow.
    let groups: Vec<&str> = lines.remove(3).split_whitespace().collect();
    assert!(
        groups.contains(&"5") && groups.contains(&"7"),
        "additionalGids missing: {groups:?}"
    );
    assert_eq!(
        lines,
        [
            "character special file a:29a 660 1:2",
            "fifo 0:0 600 0:0",
            "1",
            "33554432",
            "0",
        ],
        "{s}"
    );
}
