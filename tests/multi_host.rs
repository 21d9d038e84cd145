//! Several hosts, for real: `berth controller` in a network namespace of the test (the hub)
//! and two or three `berth agent`s, each in its own namespace wired to the hub by a veth
//! pair, with its own data dir, cgroup parent, instance-namespace prefix and a registry served
//! into it (berth-testkit), running real containers. Apps are spread by labels; a host whose
//! agent is killed (SIGKILL) and whose containers are stopped (`berth down` in its data dir)
//! is marked down after the grace period and its instances start on another matching host;
//! wiped (its data dir removed) and started again under the same name, it converges. Needs
//! root, docker-registry, git, curl and iproute2. Everything is stopped and removed on drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "system tests wait on real daemons in real time"
)]

mod runtime_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_agent::host::container::{self, Cgroups, HostCgroups, NoCgroups, Store};
use berth_testkit::{GitRemote, Netns, Registry};
use runtime_support::{CgroupParent, is_root};
use serde_json::Value;

/// The registry address inside every namespace.
const REGISTRY: &str = "127.0.0.1:5000";
/// The controller's grace period: a silent host is down after this.
const GRACE: Duration = Duration::from_secs(2);

struct Host {
    name: String,
    /// Dropped (stopped) before its namespace.
    _registry: Registry,
    netns: Netns,
    data: PathBuf,
    log: PathBuf,
    cgroup: CgroupParent,
    labels: String,
    token: String,
    env: Vec<(String, String)>,
    agent: Option<Child>,
}

struct Hub {
    reg: Registry,
    /// The registry served in the hub (the controller resolves tags there).
    _inside: Registry,
    netns: Netns,
    data: PathBuf,
    clog: PathBuf,
    repo: GitRemote,
    controller: Option<Child>,
    hosts: Vec<Host>,
    tmp: tempfile::TempDir,
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Hub {
    /// The hub with a controller following an empty repository, and one agent namespace per
    /// `labels` entry (agents not started); `None` when not root.
    fn new(labels: &[&str]) -> Option<Hub> {
        if !is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reg = Registry::start().expect("start docker-registry");
        reg.push_test_images(&["hello"]).expect("push test images");
        let tmp = tempfile::Builder::new()
            .prefix("berth-test-multi-")
            .tempdir()
            .unwrap();
        let repo = GitRemote::init(tmp.path());
        let data = tmp.path().join("controller");
        let netns = Netns::new(&format!("mh{n}")).expect("hub namespace");
        let inside = reg.serve_in(&netns, 5000).expect("registry in the hub");
        let mut hub = Hub {
            reg,
            _inside: inside,
            netns,
            clog: tmp.path().join("controller.log"),
            data,
            repo,
            controller: None,
            hosts: Vec::new(),
            tmp,
        };
        for (i, l) in labels.iter().enumerate() {
            let name = format!("h{}", i + 1);
            let ns = Netns::new(&format!("mh{n}{name}")).expect("host namespace");
            // a veth pair: hub side 10.250.I.1, host side 10.250.I.2, both in namespaces
            // of this test
            let hub_if = format!("to{name}");
            run(Command::new("ip").args([
                "-n",
                hub.netns.name(),
                "link",
                "add",
                &hub_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ]));
            let k = i + 1;
            run(Command::new("ip").args([
                "-n",
                hub.netns.name(),
                "addr",
                "add",
                &format!("10.250.{k}.1/24"),
                "dev",
                &hub_if,
            ]));
            run(Command::new("ip").args(["-n", hub.netns.name(), "link", "set", &hub_if, "up"]));
            run(Command::new("ip").args([
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("10.250.{k}.2/24"),
                "dev",
                "eth0",
            ]));
            run(Command::new("ip").args(["-n", ns.name(), "link", "set", "eth0", "up"]));
            let registry = hub
                .reg
                .serve_in(&ns, 5000)
                .expect("registry in the host namespace");
            let cgroup = CgroupParent(format!("berth-test-{}-mh{n}{name}", std::process::id()));
            let env = [
                ("BERTH_CGROUP_PARENT", cgroup.0.clone()),
                ("BERTH_BRIDGE", format!("mhb{name}")),
                ("BERTH_SUBNET", "10.177.0.0/24".to_string()),
                ("BERTH_NETNS_PREFIX", format!("{}-i-", ns.name())),
                ("BERTH_VETH_PREFIX", "mv".to_string()),
                ("BERTH_INSECURE_REGISTRIES", REGISTRY.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            hub.hosts.push(Host {
                data: hub.tmp.path().join(&name),
                log: hub.tmp.path().join(format!("{name}.log")),
                name,
                netns: ns,
                _registry: registry,
                cgroup,
                labels: l.to_string(),
                token: String::new(),
                env,
                agent: None,
            });
        }
        Some(hub)
    }

    fn image(&self, name_tag: &str) -> String {
        format!("{REGISTRY}/berth-test/{name_tag}")
    }

    /// `berth --data-dir <controller> --controller http://127.0.0.1:7070 ARGS` in the hub.
    fn cli(&self, args: &[&str]) -> Output {
        self.netns
            .command(env!("CARGO_BIN_EXE_berth"))
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--controller", "http://127.0.0.1:7070"])
            .args(args)
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_CONTROLLER")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn start_controller(&mut self) {
        let repo = self.repo.url();
        let grace = format!("{}ms", GRACE.as_millis());
        let log = std::fs::File::create(&self.clog).unwrap();
        let child = self
            .netns
            .command(env!("CARGO_BIN_EXE_berth"))
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--log",
                "info,berth_controller=debug",
                "controller",
                "--repo",
                &repo,
            ])
            .args([
                "--branch",
                "main",
                "--listen",
                "0.0.0.0:7070",
                // plain HTTP (the agents use tokens here); tests/agent_mtls.rs covers --join
                "--insecure-http",
                "--poll-interval",
                "200ms",
            ])
            .args(["--node-grace", &grace])
            .env("BERTH_INSECURE_REGISTRIES", REGISTRY)
            .env_remove("BERTH_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.controller = Some(child);
        self.wait_for("the controller to answer", 30, || {
            self.netns
                .http_get("127.0.0.1:7070", "/metrics")
                .map(|_| ())
        });
        for i in 0..self.hosts.len() {
            let name = self.hosts[i].name.clone();
            let out = self.cli(&["token", "create", "--role", "join", "--host", &name]);
            assert!(out.status.success(), "{out:?}");
            self.hosts[i].token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
    }

    fn start_agent(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        assert!(h.agent.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .unwrap();
        let url = format!("http://10.250.{}.1:7070", i + 1);
        let child = h
            .netns
            .command(env!("CARGO_BIN_EXE_berth"))
            .arg("--data-dir")
            .arg(&h.data)
            .args(["--controller", &url, "--token", &h.token])
            .args([
                "--log",
                "info,berth_agent=debug",
                "agent",
                "--name",
                &h.name,
            ])
            .args(["--labels", &h.labels, "--cgroup-parent", &h.cgroup.0])
            .args([
                "--capacity",
                "cpu=4,memory=4Gi",
                "--report-interval",
                "300ms",
            ])
            .envs(h.env.iter().map(|(k, v)| (k, v)))
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_CONTROLLER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        h.agent = Some(child);
    }

    /// SIGKILL to host `i`'s agent (by pid), then `berth down` in its data dir: its
    /// containers, proxy and network go too, as when the machine dies.
    fn kill_host(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if let Some(mut a) = h.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        h.down();
    }

    fn commit(&self, path: &str, content: &str) {
        self.repo.push(path, content, path);
    }

    /// Ready instances per (app, host), through the controller.
    fn ready(&self) -> BTreeMap<(String, String), u32> {
        let mut out = BTreeMap::new();
        for i in self
            .json(&["ps"])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
        {
            if i["state"] == "ready" {
                let key = (
                    i["app"].as_str().unwrap_or_default().to_string(),
                    i["host"].as_str().unwrap_or_default().to_string(),
                );
                *out.entry(key).or_insert(0) += 1;
            }
        }
        out
    }

    fn logs(&self) -> String {
        let mut s = format!(
            "--- controller:\n{}",
            tail(&std::fs::read_to_string(&self.clog).unwrap_or_default(), 80)
        );
        for h in &self.hosts {
            s.push_str(&format!(
                "\n--- {}:\n{}",
                h.name,
                tail(&std::fs::read_to_string(&h.log).unwrap_or_default(), 60)
            ));
        }
        s
    }

    fn wait_for<T>(&self, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
        berth_testkit::wait_for(what, secs, || self.logs(), f)
    }
}

impl Host {
    /// `berth down` for this host's data dir, in its namespace.
    fn down(&self) {
        let out = self
            .netns
            .command(env!("CARGO_BIN_EXE_berth"))
            .arg("--data-dir")
            .arg(&self.data)
            .args(["down", "--timeout", "3s"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output();
        if let Ok(out) = &out
            && !out.status.success()
        {
            eprintln!(
                "berth down ({}): {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Hub {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut a) = h.agent.take() {
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let cgroups: Box<dyn Cgroups> = match HostCgroups::detect(Path::new("/proc/self/mountinfo"))
        {
            Ok(c) => Box::new(c),
            Err(_) => Box::new(NoCgroups),
        };
        for h in &self.hosts {
            if h.data.exists() {
                h.down();
                let store = Store::new(&h.data);
                if let Ok((listed, _)) = store.list() {
                    for l in listed {
                        let _ = container::remove(&store, cgroups.as_ref(), &l.state.spec.id, true);
                    }
                }
            }
            let prefix = format!("{}-i-", h.netns.name());
            if let Ok(rd) = std::fs::read_dir("/run/netns") {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&prefix) {
                        let _ = Command::new("ip").args(["netns", "del", &name]).output();
                    }
                }
            }
        }
        // the hosts' cgroup parents, registries and namespaces, then the hub's, drop next
    }
}

fn web(hub: &Hub, replicas: u32) -> String {
    format!(
        "app: web\nimage: {}\nport: 8080\nexpose: {{ port: 8000 }}\nreplicas: {replicas}\n\
         resources: {{ cpu: 100m, memory: 64Mi }}\nplacement: {{ labels: {{ role: web }} }}\n\
         health: {{ http: /index.html, interval: 1s, timeout: 1s, failures: 2 }}\n\
         stop: {{ grace: 1s }}\n",
        hub.image("hello:latest")
    )
}

#[test]
fn three_hosts_spread_by_labels_survive_a_dead_host_and_a_wiped_one_converges() {
    let Some(mut hub) = Hub::new(&["role=web,zone=a", "role=web,zone=b", "role=db"]) else {
        return;
    };
    hub.commit("web.yaml", &web(&hub, 2));
    hub.commit(
        "db.yaml",
        &format!(
            "app: db\nimage: {}\nport: 8080\nreplicas: 1\nresources: {{ cpu: 100m, memory: 64Mi }}\n\
             placement: {{ labels: {{ role: db }} }}\nstop: {{ grace: 1s }}\n",
            hub.image("hello:latest")
        ),
    );
    hub.start_controller();
    for i in 0..3 {
        hub.start_agent(i);
    }
    let key = |a: &str, h: &str| (a.to_string(), h.to_string());
    // spread by labels: web once on each role=web host, db on the role=db host
    let spread = BTreeMap::from([
        (key("db", "h3"), 1),
        (key("web", "h1"), 1),
        (key("web", "h2"), 1),
    ]);
    hub.wait_for("web spread over h1 and h2, db on h3", 60, || {
        (hub.ready() == spread).then_some(())
    });
    let plan = hub.json(&["plan"]).unwrap();
    let hosts = plan["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{plan}");
    assert_eq!(hosts[0]["apps"][0]["app"], "web");
    assert_eq!(hosts[0]["allocated"]["cpu_millis"], 100);

    // h1 dies: agent killed, containers gone; web runs twice on h2 within grace + start
    let killed = Instant::now();
    hub.kill_host(0);
    let moved = BTreeMap::from([(key("db", "h3"), 1), (key("web", "h2"), 2)]);
    hub.wait_for("web's instances on h2 alone", 40, || {
        (hub.ready() == moved).then_some(())
    });
    let took = killed.elapsed();
    eprintln!("h1 killed → its web instance ready on h2 after {took:?} (grace {GRACE:?})");
    assert!(
        took < GRACE + Duration::from_secs(15),
        "rescheduling took {took:?}, more than the grace period and a start"
    );
    let status = hub.json(&["status"]).unwrap();
    let h1 = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "h1")
        .unwrap()
        .clone();
    assert_eq!(h1["state"], "down", "{status}");
    assert!(!hub.cli(&["events"]).stdout.is_empty());
    let events = String::from_utf8_lossy(&hub.cli(&["events"]).stdout).into_owned();
    assert!(events.contains("HostDown"), "{events}");

    // h1 wiped and started again under the same name: it comes back, gets its share of web
    // after a grace period (h2 stops its extra one), and converges
    std::fs::remove_dir_all(&hub.hosts[0].data).unwrap();
    let rejoined = Instant::now();
    hub.start_agent(0);
    hub.wait_for("web spread over h1 and h2 again", 60, || {
        (hub.ready() == spread).then_some(())
    });
    let converged = hub.wait_for("h1 to report converged", 30, || {
        let status = hub.json(&["status"])?;
        status["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["name"] == "h1")?["converged_in_ms"]
            .as_u64()
    });
    eprintln!(
        "wiped h1 converged {converged} ms after registering ({:?} after its agent started)",
        rejoined.elapsed()
    );
    assert!(
        converged >= GRACE.as_millis() as u64,
        "work comes back after a grace period"
    );
    let metrics = hub.netns.http_get("127.0.0.1:7070", "/metrics").unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("berth_controller_host_converge_seconds_count") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_controller_hosts{state=\"ready\"} 3"),
        "{metrics}"
    );
}

#[test]
fn two_hosts_place_within_capacity_and_report_what_does_not_fit() {
    let Some(mut hub) = Hub::new(&["role=web", "role=web"]) else {
        return;
    };
    // 4 cpus per host (--capacity), 1.5 cpu per instance: two per host, the fifth fits nowhere
    hub.commit("web.yaml", &web(&hub, 5).replace("cpu: 100m", "cpu: 1500m"));
    hub.start_controller();
    hub.start_agent(0);
    hub.start_agent(1);
    let key = |a: &str, h: &str| (a.to_string(), h.to_string());
    let placed = BTreeMap::from([(key("web", "h1"), 2), (key("web", "h2"), 2)]);
    hub.wait_for("two instances on each host", 60, || {
        (hub.ready() == placed).then_some(())
    });
    let status = hub.json(&["status"]).unwrap();
    let unplaced = status["apps"][0]["unplaced"].as_str().unwrap().to_string();
    assert_eq!(
        unplaced,
        "1 of 5 instance(s) not placed: each needs cpu 1.5, memory 64Mi; free on the matching hosts: h1 cpu 1, memory 3.8Gi; h2 cpu 1, memory 3.8Gi"
    );
    let table = String::from_utf8_lossy(&hub.cli(&["plan"]).stdout).into_owned();
    assert!(table.contains("unplaced: app web: 1 of 5"), "{table}");
    assert!(table.contains("3/4"), "cpu 3 of 4 allocated: {table}");
    let events = String::from_utf8_lossy(&hub.cli(&["events"]).stdout).into_owned();
    assert!(events.contains("AppUnplaced"), "{events}");
}
