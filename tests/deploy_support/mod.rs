//! The deploy loop's system-test harness: a real registry (berth-testkit) with the test
//! images, a bare git repository the test pushes manifests to, and the real `berth
//! controller` and `berth agent` binaries sharing one temp data dir, with the instances under
//! a cgroup parent of their own. Everything berth runs (daemons, CLI, the agent's proxy and
//! bridge) runs in a network namespace of the test (`nsenter --net`), with the registry served
//! into it at 127.0.0.1:5000 and this test's bridge, subnet and name prefixes.
//! [`Cluster`]'s drop stops both daemons (by pid), runs `berth down` (instances, proxy,
//! network), removes any container left (SIGKILL, then the runtime's delete), the cgroup
//! parent in every hierarchy, the namespace and the temp dir, also when the test failed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::disallowed_methods,
    reason = "system tests wait on real daemons in real time"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use berth_agent::host::container::{self, Cgroups, HostCgroups, NoCgroups, Store};
use berth_agent::runtime::state::Status;
use berth_testkit::{GitRemote, Netns, Registry};
use serde_json::Value;

use crate::runtime_support::{CgroupParent, is_root};

/// A running container of the data dir, as the runtime records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Running {
    /// Container id (`web-2-0`).
    pub id: String,
    /// The app's revision number it runs.
    pub revision: String,
    /// Its init's pid.
    pub pid: i32,
    /// Its init's start time (clock ticks since boot): a restart changes it.
    pub start_time: u64,
}

/// What the CLI needs to talk to the test's controller and data dir; cheap to clone into
/// sampler threads.
#[derive(Debug, Clone)]
pub struct Cli {
    /// The shared data dir.
    pub data: PathBuf,
    /// The controller's URL (inside the namespace).
    pub url: String,
    /// The test's network namespace (`/run/netns/<name>`).
    pub netns: PathBuf,
    /// Environment of every berth process: cgroup parent, bridge, subnet, prefixes.
    env: Vec<(String, String)>,
    clog: PathBuf,
    alog: PathBuf,
}

/// The registry address inside the namespace.
pub const REGISTRY: &str = "127.0.0.1:5000";

/// Controller, agent, registry, git and data dir of one test.
pub struct Cluster {
    /// CLI access (also through `Deref`).
    pub cli: Cli,
    /// The registry with the test images (pushed to on the host's loopback).
    pub reg: Registry,
    /// The same storage served inside the namespace at [`REGISTRY`].
    inside: Registry,
    /// The bare repository the controller follows and the clone the test commits in.
    pub repo: GitRemote,
    listen: String,
    /// The instances' cgroup parent.
    pub cgroup: CgroupParent,
    controller: Option<Child>,
    agent: Option<Child>,
    /// Dropped after `berth down` ran in it.
    netns: Netns,
    tmp: tempfile::TempDir,
}

impl std::ops::Deref for Cluster {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Cluster {
    /// A registry with `images` pushed, an empty repository and no daemons yet; `None` when
    /// not root (the caller skips).
    pub fn new(images: &[&str]) -> Option<Cluster> {
        if !is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let reg = Registry::start().expect("start docker-registry");
        reg.push_test_images(images).expect("push test images");
        let tmp = tempfile::Builder::new()
            .prefix("berth-test-deploy-")
            .tempdir()
            .unwrap();
        let repo = GitRemote::init(tmp.path());
        let data = tmp.path().join("data");
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let cgroup = CgroupParent(format!("berth-test-{pid}-deploy{n}"));
        let netns = Netns::new(&format!("deploy{n}")).expect("create a network namespace");
        let inside = reg
            .serve_in(&netns, 5000)
            .expect("serve the registry in the namespace");
        let listen = "127.0.0.1:7070".to_string();
        let env = [
            ("BERTH_CGROUP_PARENT", cgroup.0.clone()),
            ("BERTH_BRIDGE", format!("dl{}{n}", pid % 100_000)),
            (
                "BERTH_SUBNET",
                format!("10.{}.{}.0/24", 180 + n % 20, pid % 250),
            ),
            ("BERTH_NETNS_PREFIX", format!("{}-i-", netns.name())),
            ("BERTH_VETH_PREFIX", "dv".to_string()),
            ("BERTH_INSECURE_REGISTRIES", REGISTRY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Some(Cluster {
            cli: Cli {
                data,
                url: format!("http://{listen}"),
                netns: netns.path(),
                env,
                clog: tmp.path().join("controller.log"),
                alog: tmp.path().join("agent.log"),
            },
            reg,
            inside,
            repo,
            listen,
            cgroup,
            controller: None,
            agent: None,
            netns,
            tmp,
        })
    }

    /// The image reference of a test image inside the namespace
    /// (`127.0.0.1:5000/berth-test/NAME:TAG`).
    pub fn image(&self, name_tag: &str) -> String {
        format!("{REGISTRY}/berth-test/{name_tag}")
    }

    fn daemon(&self, args: &[&str], log: &Path) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut c = self.berth();
        c.args(["--log", "info,berth_agent=debug,berth_controller=debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        c
    }

    /// Starts `berth controller` on the bare repository (polling every 200 ms; a push into
    /// the local repository is seen within 200 ms anyway).
    pub fn start_controller(&mut self) {
        assert!(self.controller.is_none(), "controller already running");
        let repo = self.repo.url();
        let child = self
            .daemon(
                &[
                    "controller",
                    "--branch",
                    "main",
                    "--repo",
                    &repo,
                    "--listen",
                    &self.listen,
                    "--poll-interval",
                    "200ms",
                ],
                &self.clog.clone(),
            )
            .spawn()
            .unwrap();
        self.controller = Some(child);
        self.wait_for("the controller to answer", 30, || {
            self.netns.http_get(&self.listen, "/metrics").map(|_| ())
        });
    }

    /// Stops the controller with SIGKILL (by pid).
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts `berth agent --name h1` with the test's cgroup parent.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let parent = self.cgroup.0.clone();
        let child = self
            .daemon(
                &[
                    "agent",
                    "--name",
                    "h1",
                    "--cgroup-parent",
                    &parent,
                    // the tests ask for more instances of the default `cpu: 1` than CI's
                    // two cores offer; capacity placement is tested in tests/multi_host.rs
                    "--capacity",
                    "cpu=64,memory=64Gi",
                ],
                &self.alog.clone(),
            )
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// kill -9 of the agent (by pid); its containers keep running.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// Writes `files` (path, content; `None` deletes) into the work tree, commits and pushes.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str) {
        self.repo.commit(files, message);
    }
}

impl Cli {
    /// `berth --data-dir D --controller URL` in the namespace, with the test's environment.
    pub fn berth(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_berth"))
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--controller")
            .arg(&self.url)
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_CONTROLLER")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// A program run in the namespace (`nsenter --net`).
    pub fn inside(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// `GET http://127.0.0.1:PORT/PATH` in the namespace: the body if 2xx.
    pub fn http_get(&self, port: u16, path: &str) -> Option<String> {
        let out = self
            .inside("curl")
            .args(["-sf", "--max-time", "3"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `berth ARGS` (see [`Cli::berth`]).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.berth()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `berth ARGS -o json`, which must succeed, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "berth {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("berth {args:?}: not JSON ({e}): {out:?}"))
    }

    /// Both daemons' logs (for failure messages).
    pub fn logs(&self) -> String {
        format!(
            "--- controller log:\n{}\n--- agent log:\n{}",
            tail(
                &std::fs::read_to_string(&self.clog).unwrap_or_default(),
                120
            ),
            tail(
                &std::fs::read_to_string(&self.alog).unwrap_or_default(),
                200
            )
        )
    }

    /// Polls `f` every 100 ms for up to `secs`; panics with the daemons' logs on timeout.
    pub fn wait_for<T>(&self, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
        berth_testkit::wait_for(what, secs, || self.logs(), f)
    }

    /// `berth rollout status APP --wait` for `revision`: (exit code, stdout + stderr).
    pub fn rollout_wait(&self, app: &str, revision: u64, timeout: &str) -> (i32, String) {
        let rev = revision.to_string();
        let out = self.cli(&[
            "rollout",
            "status",
            app,
            "--wait",
            "--timeout",
            timeout,
            "--revision",
            &rev,
        ]);
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Waits until revision `revision` of `app` exists at the controller (the commit was
    /// synced).
    pub fn wait_revision(&self, app: &str, revision: u64) {
        self.wait_for(&format!("{app} revision {revision}"), 30, || {
            let out = self.cli(&["revisions", app, "-o", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            v.as_array()?
                .iter()
                .any(|r| r["number"] == revision)
                .then_some(())
        });
    }

    /// The running containers of the data dir, by the runtime's records, sorted by id.
    pub fn running(&self) -> Vec<Running> {
        let store = Store::new(&self.data);
        let mut out: Vec<Running> = store
            .list()
            .map(|(l, _)| {
                l.into_iter()
                    .filter(|c| c.status == Status::Running)
                    .filter_map(|c| {
                        let init = c.state.init?;
                        Some(Running {
                            id: c.state.spec.id.clone(),
                            revision: c.state.spec.revision.clone(),
                            pid: init.pid,
                            start_time: init.start_time,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Ready instances per app from `berth ps -o json` (through the controller).
    pub fn ready_by_app(&self) -> Option<BTreeMap<String, u32>> {
        Some(
            self.instances()?
                .into_iter()
                .filter(|(_, state, _)| state == "ready")
                .fold(BTreeMap::new(), |mut by, (app, _, _)| {
                    *by.entry(app).or_insert(0) += 1;
                    by
                }),
        )
    }

    /// `berth ps -o json` (through the controller) as (app, state, revision) triples.
    pub fn instances(&self) -> Option<Vec<(String, String, u64)>> {
        let out = self.cli(&["ps", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?
            .iter()
            .map(|i| {
                Some((
                    i["app"].as_str()?.to_string(),
                    i["state"].as_str()?.to_string(),
                    i["revision"].as_u64()?,
                ))
            })
            .collect()
    }

    /// Runs `CMD` inside instance `id` (`berth exec`): (exit code, stdout).
    pub fn exec(&self, id: &str, cmd: &[&str]) -> (i32, String) {
        let mut args = vec!["exec", id, "--"];
        args.extend(cmd);
        let out = self
            .berth()
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_agent();
        self.kill_controller();
        // Instances, the proxy and the instances' network (namespaces, veths, bridge).
        let down = self.berth().args(["down", "--timeout", "5s"]).output();
        if let Ok(out) = &down
            && !out.status.success()
        {
            eprintln!("berth down: {}", String::from_utf8_lossy(&out.stderr));
        }
        let prefix = format!("{}-i-", self.netns.name());
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
        let store = Store::new(&self.data);
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
        // `cgroup` (the parent, every hierarchy) and `tmp` are dropped next.
    }
}

/// A sampler thread: calls `f` every `every` until stopped; returns the samples.
pub struct Sampler<T: Send + 'static> {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<T>>>,
}

impl<T: Send + 'static> Sampler<T> {
    /// Starts sampling.
    pub fn start(every: Duration, mut f: impl FnMut() -> T + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                out.push(f());
                std::thread::sleep(every);
            }
            out
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns the samples.
    pub fn finish(mut self) -> Vec<T> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl<T: Send + 'static> Drop for Sampler<T> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
