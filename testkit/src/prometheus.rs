//! A real Prometheus server (Debian `prometheus`) for tests: scrapes the given targets every
//! second, answers queries through its HTTP API, and is stopped (by pid) on drop with its
//! data in a temp dir. Optionally inside a test's network namespace.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::Netns;

/// A running Prometheus owned by the test.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: String,
    netns: Option<String>,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on `127.0.0.1:port` scraping `targets` (job name, `host:port`)
    /// every second, inside `netns` when given.
    pub fn start(
        targets: &[(&str, &str)],
        netns: Option<&Netns>,
        port: u16,
    ) -> std::io::Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-prometheus-")
            .tempdir()?;
        let mut config = String::from(
            "global: { scrape_interval: 1s, scrape_timeout: 900ms }\nscrape_configs:\n",
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs: [ {{ targets: ['{target}'] }} ]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = format!("127.0.0.1:{port}");
        let mut c = match netns {
            Some(ns) => ns.command("prometheus"),
            None => Command::new("prometheus"),
        };
        let child = c
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start prometheus ({e}): run scripts/install-deps.sh"
                ))
            })?;
        Ok(Prometheus {
            child,
            addr,
            netns: netns.map(|n| n.path().display().to_string()),
            _dir: dir,
        })
    }

    /// The instant vector of `query` (empty while it has no series).
    pub fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let mut c = match &self.netns {
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={path}")).arg("--").arg("curl");
                c
            }
            None => Command::new("curl"),
        };
        let Ok(out) = c
            .args(["-sf", "--max-time", "5", "-G"])
            .arg(format!("http://{}/api/v1/query", self.addr))
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()
        else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `query` (up to 30 s) until one of its series has a value `ok` accepts.
    pub fn wait_value(&self, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        for _ in 0..120 {
            for series in self.query(query) {
                let value: f64 = series["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                if ok(value) {
                    return value;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("prometheus at {} never had {query} as expected", self.addr);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
