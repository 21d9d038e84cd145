//! The sandbox of the `berth up` system tests (`up_cli.rs`, `hardening_faults.rs`): a network
//! namespace of the test (berth-testkit's `Netns`), a data dir and a cgroup parent of its own.
//! `berth` runs inside the namespace with instance namespaces named after it (`/run/netns` is
//! shared by every namespace). Dropped: `berth down`, then our (empty) parent cgroups.
#![allow(dead_code, reason = "each test file uses a part")]

use std::path::Path;
use std::process::Command;

/// A network namespace, a data dir and a cgroup parent of one test.
pub struct Sandbox {
    /// The test's network namespace.
    pub netns: berth_testkit::Netns,
    data: tempfile::TempDir,
    cgroup_parent: String,
}

impl Sandbox {
    /// With a data dir in the default temp dir.
    pub fn new(tag: &str) -> Sandbox {
        Sandbox::with_data(tag, tempfile::tempdir().unwrap())
    }

    /// With `data` as the data dir (a small tmpfs, say).
    pub fn with_data(tag: &str, data: tempfile::TempDir) -> Sandbox {
        Sandbox {
            netns: berth_testkit::Netns::new(tag).unwrap(),
            data,
            cgroup_parent: format!("berth-t-{tag}-{}", std::process::id()),
        }
    }

    pub fn data(&self) -> &Path {
        self.data.path()
    }

    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// `berth --data-dir … ARGS` inside the namespace.
    pub fn berth(&self, args: &[&str]) -> Command {
        let mut c = self.netns.command(env!("CARGO_BIN_EXE_berth"));
        c.arg("--data-dir")
            .arg(self.data())
            .args(args)
            .env_remove("BERTH_CONTROLLER")
            .env_remove("BERTH_TOKEN")
            .env("BERTH_CGROUP_PARENT", &self.cgroup_parent)
            // /run/netns is shared by every namespace: instance names of our own.
            .env("BERTH_NETNS_PREFIX", format!("{}-i-", self.netns.name()));
        c
    }

    /// `GET http://127.0.0.1:PORT/PATH` from inside the namespace: the body, if 2xx.
    pub fn http(&self, port: u16, path: &str) -> Option<String> {
        self.netns.http_get(&format!("127.0.0.1:{port}"), path)
    }

    /// `berth status -o json` (`null` when it fails).
    pub fn status(&self) -> serde_json::Value {
        let out = self.berth(&["status", "-o", "json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The last 60 lines of `up.log`.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data().join("up/up.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Polls `f` (berth-testkit's `wait_for`); on a timeout prints the status and `up.log`.
    pub fn wait_for<T>(&self, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
        berth_testkit::wait_for(
            what,
            secs,
            || format!("status: {}\nup.log:\n{}", self.status(), self.log_tail()),
            f,
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.berth(&["down", "--timeout", "5s"]).output();
        // The agent leaves its (empty) parent cgroups: remove ours, only ours.
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join(&self.cgroup_parent));
            }
        }
    }
}
