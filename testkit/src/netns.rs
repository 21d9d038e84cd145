//! Network namespaces for tests: [`Netns`] creates one with a unique name and `lo` up, and
//! deletes it on drop; [`Netns::command`] runs a program inside it with `nsenter --net`,
//! which (unlike `ip netns exec`) leaves the mount namespace alone, so `/sys/fs/cgroup` stays
//! as the host has it. Everything a test starts in there reaches only that namespace's
//! loopback and what the test itself wires into it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Registry;

/// A network namespace owned by the test.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `berth-t-<tag>-<pid>` (removing a stale one of that name first) with `lo` up.
    pub fn new(tag: &str) -> std::io::Result<Netns> {
        let name = format!("berth-t-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let out = Command::new("ip").args(&args).output()?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        Ok(Netns { name })
    }

    /// Its name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// `GET http://ADDR/PATH` from inside the namespace (curl): the body, if 2xx.
    pub fn http_get(&self, addr: &str, path: &str) -> Option<String> {
        let out = self
            .command("curl")
            .args(["-sf", "--max-time", "3"])
            .arg(format!("http://{addr}{path}"))
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Registry {
    /// A second registry process inside `netns` on `127.0.0.1:port`, serving this one's
    /// storage (read it only: push to the original). Stopped by pid on drop.
    pub fn serve_in(&self, netns: &Netns, port: u16) -> std::io::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-registry-")
            .tempdir()?;
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog: {{ level: warn, accesslog: {{ disabled: true }} }}\n\
             storage:\n  filesystem: {{ rootdirectory: {} }}\n\
             http: {{ addr: {addr}, secret: berth-test-secret }}\n",
            self.storage_dir().display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = netns
            .command("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut registry = Registry::adopt(child, addr, dir);
        for _ in 0..200 {
            if let Some(status) = registry.child_mut().try_wait()? {
                return Err(std::io::Error::other(format!(
                    "registry in {} exited: {status}",
                    netns.name()
                )));
            }
            if netns.http_get(registry.addr(), "/v2/").is_some() {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "registry in {} on {} did not become ready",
            netns.name(),
            registry.addr()
        )))
    }
}
