//! Shared helpers of the runtime system tests: a busybox rootfs in a temp dir, a temp data
//! dir, and `berth` invocations against both. Everything lives in temp dirs removed on drop;
//! containers are foreground `--rm` runs or are killed by [`Env`]'s drop guard.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Whether privileged tests can run (root). As root they always run.
pub fn is_root() -> bool {
    // SAFETY-free check through /proc: uid line of our own status.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A data dir and a rootfs for one test.
pub struct Env {
    /// Temp dir holding both.
    pub tmp: tempfile::TempDir,
    /// The data dir.
    pub data: PathBuf,
    /// The busybox rootfs.
    pub rootfs: PathBuf,
}

impl Env {
    /// A fresh data dir and busybox rootfs.
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .unwrap();
        let data = tmp.path().join("data");
        let rootfs = tmp.path().join("rootfs");
        berth_testkit::busybox_rootfs(&rootfs).unwrap();
        Env { tmp, data, rootfs }
    }

    /// `berth --data-dir D ARGS`.
    pub fn berth(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.arg("--data-dir").arg(&self.data);
        c
    }

    /// `berth run --rm --rootfs R EXTRA -- sh -c SCRIPT`.
    pub fn run_sh(&self, extra: &[&str], script: &str) -> Output {
        let mut c = self.berth();
        c.arg("run").arg("--rm").arg("--rootfs").arg(&self.rootfs);
        c.args(extra).args(["--", "/bin/sh", "-c", script]);
        c.output().unwrap()
    }

    /// Pids of running containers recorded in the data dir (init pid from state.json).
    pub fn running_inits(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.data.join("containers")) {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path().join("state.json"))
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&s)
                    && let Some(pid) = v["init"]["pid"].as_i64()
                {
                    pids.push(pid as i32);
                }
            }
        }
        pids
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Kill what the test started (recorded inits, then shims); by pid, checked against
        // the recorded start time so a reused pid is left alone.
        if let Ok(rd) = std::fs::read_dir(self.data.join("containers")) {
            for e in rd.flatten() {
                let Ok(s) = std::fs::read_to_string(e.path().join("state.json")) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) else {
                    continue;
                };
                for key in ["init", "shim"] {
                    if let (Some(pid), Some(start)) =
                        (v[key]["pid"].as_i64(), v[key]["start_time"].as_u64())
                        && start_time(pid as i32) == Some(start)
                    {
                        let _ = berth_agent::host::sys::kill(pid as i32, 9);
                    }
                }
            }
        }
        // Then remove each container with its cgroup (the data dir goes with the temp dir,
        // the cgroups would not).
        use berth_agent::host::container::{self, Cgroups, HostCgroups, NoCgroups, Store};
        let store = Store::new(&self.data);
        let cgroups: Box<dyn Cgroups> =
            match HostCgroups::detect(std::path::Path::new("/proc/self/mountinfo")) {
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

/// Field 22 of /proc/<pid>/stat.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// stdout as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Compiles `probe.c` (calls a syscall by name and prints its errno) statically into the
/// rootfs as `/probe`.
pub fn install_probe(rootfs: &std::path::Path) {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/runtime_support/probe.c");
    let out = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(rootfs.join("probe"))
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A unique cgroup parent for one test, removed (every hierarchy) on drop.
pub struct CgroupParent(pub String);

impl CgroupParent {
    /// `berth-test-<pid>-<n>`.
    pub fn new(n: u32) -> CgroupParent {
        CgroupParent(format!("berth-test-{}-{n}", std::process::id()))
    }

    /// Directories of this parent that exist in any hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let d = h.path().join(&self.0);
                if d.is_dir() {
                    dirs.push(d);
                }
            }
        }
        let d = PathBuf::from("/sys/fs/cgroup").join(&self.0);
        if d.is_dir() {
            dirs.push(d);
        }
        dirs
    }

    /// Child cgroups left under this parent.
    pub fn children(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in self.dirs() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                out.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
        out
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for child in self.children() {
            if let Ok(procs) = std::fs::read_to_string(child.join("cgroup.procs")) {
                for pid in procs.lines() {
                    if let Ok(pid) = pid.trim().parse::<i32>()
                        && pid > 0
                    {
                        let _ = berth_agent::host::sys::kill(pid, 9);
                    }
                }
            }
            let _ = std::fs::remove_dir(&child);
        }
        for d in self.dirs() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}
