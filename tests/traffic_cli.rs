//! Traffic (issue 6) with the real binary, registry and containers: `berth up` in a network
//! namespace the test creates (entered with `nsenter --net`), a `network: private` app with
//! `expose` reached through the agent's proxy, a rolling update and an automatic rollback
//! under continuous load with every response 2xx, and `berth down` removing the proxy, the
//! instance namespaces and the bridge.
//!
//! Everything the agent creates lives in the test's namespace: the bridge (unique name and
//! subnet per test), the veths, the proxy's listeners; instance namespaces are named with a
//! prefix unique to the test. Load comes from a thread that joined the test's namespace and
//! talks to 127.0.0.1 there.

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods, reason = "tests time their own waits")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_testkit::{Registry, run_ok};

/// A network namespace of this test, with `lo` up; `berth down` and removed on drop.
struct Sandbox {
    netns: String,
    data: tempfile::TempDir,
    cgroup_parent: String,
    net_prefix: String,
    bridge: String,
    subnet: String,
}

impl Sandbox {
    fn new(tag: &str, n: u8) -> Sandbox {
        let pid = std::process::id();
        let netns = format!("berth-t-{tag}-{pid}");
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        run_ok(Command::new("ip").args(["netns", "add", &netns]));
        run_ok(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        Sandbox {
            net_prefix: format!("{netns}-i-"),
            bridge: format!("tb{}{n}", pid % 100_000),
            subnet: format!("10.{}.{}.0/24", 200 + u32::from(n), pid % 250),
            netns,
            data: tempfile::tempdir().unwrap(),
            cgroup_parent: format!("berth-t-{tag}-{pid}"),
        }
    }

    fn data(&self) -> &Path {
        self.data.path()
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// `berth --data-dir … ARGS` inside the namespace, with this test's network names.
    fn berth(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_berth"))
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .env_remove("BERTH_CONTROLLER")
            .env_remove("BERTH_TOKEN")
            .env("BERTH_CGROUP_PARENT", &self.cgroup_parent)
            .env("BERTH_BRIDGE", &self.bridge)
            .env("BERTH_SUBNET", &self.subnet)
            .env("BERTH_NETNS_PREFIX", &self.net_prefix)
            .env("BERTH_VETH_PREFIX", "tv");
        c
    }

    fn status(&self) -> serde_json::Value {
        let out = self.berth(&["status", "-o", "json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Instance namespaces of this test that exist.
    fn instance_netns(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.net_prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data().join("up/up.log")).unwrap_or_default()
    }

    /// The proxy process's log: its failures and retries, one line each.
    fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.data().join("run/proxy.log")).unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.berth(&["down", "--timeout", "5s"]).output();
        // Should `down` have failed: the instance namespaces of this test, only those.
        for ns in self.instance_netns() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join(&self.cgroup_parent));
            }
        }
        let _ = std::fs::remove_dir(PathBuf::from("/sys/fs/cgroup").join(&self.cgroup_parent));
    }
}

fn wait_for<T>(what: &str, secs: u64, sandbox: &Sandbox, f: impl FnMut() -> Option<T>) -> T {
    berth_testkit::wait_for(
        what,
        secs,
        || format!("status: {}\nup.log:\n{}", sandbox.status(), sandbox.log()),
        f,
    )
}

/// One `GET path` on 127.0.0.1:port of the current thread's namespace: status and body.
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {out:?}"))?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((code, body))
}

/// `get` from inside the sandbox's namespace.
fn get_in(sandbox: &Sandbox, port: u16, path: &str) -> Result<(u16, String), String> {
    let path = path.to_owned();
    berth_agent::host::net::run_in_netns(&sandbox.netns_path(), move || get(port, &path))
        .map_err(|e| e.to_string())?
}

/// Requests one after the other from inside the namespace until stopped; every outcome.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Result<u16, String>>>,
}

impl Load {
    fn start(sandbox: &Sandbox, port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let path = sandbox.netns_path();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            berth_agent::host::net::run_in_netns(&path, move || {
                let mut outcomes = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    outcomes.push(get(port, "/up").map(|(code, _)| code));
                }
                outcomes
            })
            .unwrap()
        });
        Load { stop, thread }
    }

    fn finish(self) -> Vec<Result<u16, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn pull(sandbox: &Sandbox, reg: &Registry) -> String {
    let mirror = format!("docker.io={}", reg.addr());
    let pulled = run_ok(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("--data-dir")
            .arg(sandbox.data())
            .args([
                "--insecure-registry",
                reg.addr(),
                "--registry-mirror",
                &mirror,
            ])
            .args(["pull", "berth-test/hello"]),
    );
    let pulled = String::from_utf8_lossy(&pulled.stdout).into_owned();
    let digest = pulled
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no digest in {pulled}"))
        .trim()
        .to_string();
    format!("berth-test/hello@{digest}")
}

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn runs(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn proxy_pid(sandbox: &Sandbox) -> Option<i64> {
    let rec = std::fs::read_to_string(sandbox.data().join("run/proxy.json")).ok()?;
    let rec: serde_json::Value = serde_json::from_str(&rec).ok()?;
    rec["pid"].as_i64()
}

const PROXY_PORT: u16 = 8000;

fn web(image: &str, extra: &str) -> String {
    format!(
        "app: web\nimage: {image}\nport: 8080\nexpose: {{ port: {PROXY_PORT} }}\n\
         stop: {{ grace: 3s }}\n{extra}"
    )
}

#[test]
fn private_app_answers_through_the_proxy_and_down_removes_its_network() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let sandbox = Sandbox::new("trafa", 1);
    let image = pull(&sandbox, &reg);
    let dir = tempfile::tempdir().unwrap();
    let health = "health: { http: /up, interval: 1s, timeout: 1s }\nreplicas: 2\n";
    std::fs::write(dir.path().join("web.yaml"), web(&image, health)).unwrap();
    run_ok(&mut sandbox.berth(&[
        "up",
        "-d",
        "--manifests",
        dir.path().to_str().unwrap(),
        "--name",
        "t1",
    ]));

    let (code, body) = wait_for("the app to answer through the proxy", 60, &sandbox, || {
        get_in(&sandbox, PROXY_PORT, "/up")
            .ok()
            .filter(|(c, _)| *c == 200)
    });
    assert_eq!(code, 200);
    assert!(!body.is_empty());
    // Two instances, each in its own namespace of this test.
    wait_for("2 ready instances", 30, &sandbox, || {
        (sandbox.status()["apps"][0]["ready"] == 2).then_some(())
    });
    assert_eq!(
        sandbox.instance_netns().len(),
        2,
        "{:?}",
        sandbox.instance_netns()
    );
    let bridge_up = Command::new("ip")
        .args(["-n", &sandbox.netns, "link", "show", "dev", &sandbox.bridge])
        .output()
        .unwrap();
    assert!(
        bridge_up.status.success(),
        "the bridge is in the test's namespace"
    );
    let pid = proxy_pid(&sandbox).expect("the proxy's pid is recorded");
    assert!(runs(pid));

    // down: instances, proxy, instance namespaces and the bridge are gone.
    let out = run_ok(&mut sandbox.berth(&["down"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("removed 2 instances"), "{said}");
    assert!(said.contains("stopped the proxy"), "{said}");
    assert!(!runs(pid), "proxy still runs");
    assert!(
        sandbox.instance_netns().is_empty(),
        "{:?}",
        sandbox.instance_netns()
    );
    let bridge = Command::new("ip")
        .args(["-n", &sandbox.netns, "link", "show", "dev", &sandbox.bridge])
        .output()
        .unwrap();
    assert!(!bridge.status.success(), "the bridge is removed");
    assert!(get_in(&sandbox, PROXY_PORT, "/up").is_err());
}

#[test]
fn rolling_update_and_rollback_under_load_answer_every_request() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let sandbox = Sandbox::new("trafb", 2);
    let image = pull(&sandbox, &reg);
    let dir = tempfile::tempdir().unwrap();
    let manifest = |extra: &str| {
        web(
            &image,
            &format!(
                "replicas: 2\nupdate: {{ max_surge: 1, max_unavailable: 0, deadline: 8s }}\n{extra}"
            ),
        )
    };
    let healthy = "health: { http: /up, interval: 1s, timeout: 1s }\n";
    std::fs::write(dir.path().join("web.yaml"), manifest(healthy)).unwrap();
    run_ok(&mut sandbox.berth(&[
        "up",
        "-d",
        "--manifests",
        dir.path().to_str().unwrap(),
        "--name",
        "t1",
    ]));
    wait_for("2 ready instances of revision 1", 60, &sandbox, || {
        let st = sandbox.status();
        (st["apps"][0]["ready"] == 2 && st["apps"][0]["revision"] == 1).then_some(())
    });

    let load = Load::start(&sandbox, PROXY_PORT);
    // Revision 2: a new environment, rolled out one surge instance at a time.
    std::fs::write(
        dir.path().join("web.yaml"),
        manifest(&format!("{healthy}env: {{ GREETING: two }}\n")),
    )
    .unwrap();
    wait_for("revision 2 to complete", 90, &sandbox, || {
        let st = sandbox.status();
        (st["apps"][0]["revision"] == 2
            && st["apps"][0]["ready"] == 2
            && st["apps"][0]["desired"] == 2)
            .then_some(())
    });
    wait_for("revision 1 instances to be gone", 30, &sandbox, || {
        (sandbox.instance_netns().len() == 2).then_some(())
    });
    // Revision 3 never becomes healthy: rolled back to 2 by its deadline.
    std::fs::write(
        dir.path().join("web.yaml"),
        manifest("health: { http: /missing, interval: 1s, timeout: 1s }\n"),
    )
    .unwrap();
    let err = wait_for("revision 3 to be rolled back", 90, &sandbox, || {
        let st = sandbox.status();
        let e = st["apps"][0]["last_error"].as_str()?.to_string();
        // The controller moves the target back to revision 2 and keeps the reason.
        (st["apps"][0]["revision"] == 2 && e.contains("revision 3")).then_some(e)
    });
    wait_for("the failed instance to be gone", 30, &sandbox, || {
        (sandbox.instance_netns().len() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.finish();

    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| !matches!(o, Ok(c) if (200..300).contains(c)))
        .collect();
    let proxy_log = sandbox.proxy_log();
    let retried = proxy_log.matches("retrying on another backend").count();
    eprintln!(
        "{} requests across a rolling update and a rollback ({err}), {} failed, {retried} \
         retried by the proxy\nproxy log:\n{proxy_log}",
        outcomes.len(),
        failed.len()
    );
    assert!(outcomes.len() > 100, "too little load: {}", outcomes.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}\n{}\nproxy log:\n{proxy_log}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)],
        sandbox.log()
    );
}

fn up(sandbox: &Sandbox, manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), manifest).unwrap();
    run_ok(&mut sandbox.berth(&[
        "up",
        "-d",
        "--manifests",
        dir.path().to_str().unwrap(),
        "--name",
        "t1",
    ]));
    dir
}

fn events(sandbox: &Sandbox) -> String {
    let out = sandbox.berth(&["events"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Backends in the proxy's rotation for `app`, read from its control socket.
fn in_rotation(sandbox: &Sandbox, app: &str) -> Option<usize> {
    use std::io::BufRead;
    let mut s =
        std::os::unix::net::UnixStream::connect(sandbox.data().join("run/proxy.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"{\"op\":\"state\"}\n").ok()?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    let apps = v["apps"].as_array()?;
    let a = apps.iter().find(|a| a["config"]["name"] == app)?;
    Some(
        a["backends"]
            .as_array()?
            .iter()
            .filter(|b| b["in_rotation"] == true)
            .count(),
    )
}

/// Seconds since midnight UTC of a tracing timestamp (`2026-11-24T02:15:00.123456Z …`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let t = t.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_of_day() -> f64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    since % 86_400.0
}

/// The phases from the load step to the second instance in rotation, from the agent's log
/// (`berth_agent` at debug): the decision, the start step, its first passing probe and the
/// admit step, in ms after `t0` (seconds of the day).
/// `s` without ANSI escape sequences (the log's colours).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters… final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn phases(log: &str, t0: f64, from: u32) -> String {
    let log = strip_ansi(log);
    let after: Vec<(f64, &str)> = log
        .lines()
        .filter_map(|l| Some((log_time(l)?, l)))
        .filter(|(t, _)| *t >= t0)
        .collect();
    let field = |line: &str, name: &str| -> Option<String> {
        let v = line.split(&format!(" {name}=")).nth(1)?;
        Some(v.split_whitespace().next()?.trim_matches('"').to_string())
    };
    let ms =
        |t: Option<f64>| t.map_or_else(|| "?".to_string(), |t| format!("{:.0}", (t - t0) * 1000.0));
    let find = |pred: &dyn Fn(&str) -> bool| after.iter().find(|(_, l)| pred(l)).copied();
    let from = format!("from={from} ");
    let decision = find(&|l| l.contains("autoscaled") && l.contains(&from));
    let start = find(&|l| l.contains("applying") && l.contains("step=\"start\""));
    let id = start.and_then(|(_, l)| field(l, "id")).unwrap_or_default();
    let probed = |ok: bool| {
        find(&|l| {
            l.contains("probed")
                && field(l, "id").as_deref() == Some(id.as_str())
                && l.contains("Ok(") == ok
        })
    };
    let admit = find(&|l| {
        l.contains("applying")
            && l.contains("step=\"admit\"")
            && field(l, "id").as_deref() == Some(id.as_str())
    });
    format!(
        "decision +{} ms, start step +{} ms, first probe +{} ms, first passing probe +{} ms, admit step +{} ms",
        ms(decision.map(|x| x.0)),
        ms(start.map(|x| x.0)),
        ms(after
            .iter()
            .find(|(_, l)| l.contains("probed") && field(l, "id").as_deref() == Some(id.as_str()))
            .map(|x| x.0)),
        ms(probed(true).map(|x| x.0)),
        ms(admit.map(|x| x.0)),
    )
}

#[test]
fn load_scales_out_within_bounds_and_back_in_after_the_window() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let sandbox = Sandbox::new("trafc", 3);
    let image = pull(&sandbox, &reg);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.yaml"),
        web(
            &image,
            "health: { http: /up, interval: 1s, timeout: 1s, start_period: 10s }\n\
             autoscale: { min: 1, max: 3, metric: rps, target: 20, scale_down_window: 3s }\n",
        ),
    )
    .unwrap();
    // Debug logs of the agent: the phases of the scale out are read from them.
    run_ok(
        sandbox
            .berth(&[
                "up",
                "-d",
                "--manifests",
                dir.path().to_str().unwrap(),
                "--name",
                "t1",
            ])
            .env("BERTH_LOG", "warn,berth_agent=debug"),
    );
    wait_for("1 ready instance", 60, &sandbox, || {
        (in_rotation(&sandbox, "web") == Some(1)).then_some(())
    });
    assert_eq!(sandbox.instance_netns().len(), 1);

    // 20 s of load (one client, as fast as it goes: far above 20 rps per instance).
    let t0 = now_of_day();
    let load = Load::start(&sandbox, PROXY_PORT);
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut second_ready = None;
    let mut polled = Instant::now() - Duration::from_secs(1);
    while started.elapsed() < Duration::from_secs(20) {
        // The step's end: a second backend in the proxy's rotation (polled every 20 ms).
        if second_ready.is_none() && in_rotation(&sandbox, "web").is_some_and(|n| n >= 2) {
            second_ready = Some(started.elapsed());
            eprintln!(
                "load step → second instance in rotation: {:?} ({})",
                started.elapsed(),
                phases(&sandbox.log(), t0, 1)
            );
        }
        if polled.elapsed() >= Duration::from_millis(100) {
            polled = Instant::now();
            seen.push(sandbox.instance_netns().len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcomes = load.finish();
    let peak = seen.iter().copied().max().unwrap_or(0);
    eprintln!(
        "{} requests in 20 s; instances seen {:?}..{peak}; second instance serving after {:?}",
        outcomes.len(),
        seen.iter().min(),
        second_ready
    );
    assert!(
        second_ready.is_some(),
        "no second instance became ready\n{}",
        sandbox.log()
    );
    assert_eq!(peak, 3, "load drives it to max (seen {seen:?})");
    assert!(seen.iter().all(|n| (1..=3).contains(n)), "{seen:?}");
    let failed = outcomes
        .iter()
        .filter(|o| !matches!(o, Ok(c) if (200..300).contains(c)))
        .count();
    assert_eq!(failed, 0, "requests failed while scaling out");

    // No load: back to min after the scale-down window (plus the stop grace).
    let idle = Instant::now();
    wait_for("the scale to return to 1", 40, &sandbox, || {
        let n = sandbox.instance_netns().len();
        assert!((1..=3).contains(&n), "{n} instances");
        (n == 1).then_some(())
    });
    eprintln!(
        "back to 1 instance {:?} after the load stopped",
        idle.elapsed()
    );
    // Each change is an event naming its reason and the measured value.
    let ev = events(&sandbox);
    assert!(
        ev.contains("ScaledUp") && ev.contains("rps per instance"),
        "{ev}"
    );
    assert!(ev.contains("ScaledDown"), "{ev}");
}

#[test]
fn scale_to_zero_holds_the_first_request_and_serves_it() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let sandbox = Sandbox::new("trafd", 4);
    let image = pull(&sandbox, &reg);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.yaml"),
        web(
            &image,
            "health: { http: /up, interval: 1s, timeout: 1s, start_period: 10s }\n\
             autoscale: { min: 0, max: 2, metric: rps, target: 50, scale_down_window: 1s }\n",
        ),
    )
    .unwrap();
    // Debug logs of the agent: the phases of the cold start are read from them.
    run_ok(
        sandbox
            .berth(&[
                "up",
                "-d",
                "--manifests",
                dir.path().to_str().unwrap(),
                "--name",
                "t1",
            ])
            .env("BERTH_LOG", "warn,berth_agent=debug"),
    );
    wait_for("1 ready instance", 60, &sandbox, || {
        (sandbox.status()["apps"][0]["ready"] == 1).then_some(())
    });
    // Idle: the last instance stops after the idle window.
    wait_for("scale to zero", 90, &sandbox, || {
        sandbox.instance_netns().is_empty().then_some(())
    });
    let t0 = now_of_day();
    let t = Instant::now();
    let (code, body) = get_in(&sandbox, PROXY_PORT, "/up").unwrap();
    let cold = t.elapsed();
    eprintln!(
        "cold start from zero: {cold:?} for the first request ({})",
        phases(&sandbox.log(), t0, 0)
    );
    assert_eq!(code, 200, "{body}\n{}", sandbox.log());
    assert_eq!(sandbox.instance_netns().len(), 1);
    // The decisions reach the controller with the agent's next report.
    wait_for("the idle and wake events", 15, &sandbox, || {
        let ev = events(&sandbox);
        (ev.contains("1 → 0 instances: idle") && ev.contains("0 → 1 instances: wake")).then_some(())
    });
}

/// A connection to 127.0.0.1:port made inside the sandbox's namespace (it stays there).
fn connect_in(sandbox: &Sandbox, port: u16) -> std::io::Result<TcpStream> {
    let s = berth_agent::host::net::run_in_netns(&sandbox.netns_path(), move || {
        TcpStream::connect(("127.0.0.1", port))
    })
    .map_err(std::io::Error::other)??;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Sends one line and reads back what the echo server returned.
fn echo(s: &mut TcpStream, line: &str) -> std::io::Result<String> {
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while got.last() != Some(&b'\n') {
        if s.read(&mut byte)? == 0 {
            break;
        }
        got.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&got).trim_end().to_string())
}

#[test]
fn tcp_app_is_proxied_byte_for_byte_and_scales_on_open_connections() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let sandbox = Sandbox::new("trafe", 5);
    let image = pull(&sandbox, &reg);
    // Not HTTP: busybox nc echoing every connection (`-ll`: keep listening, a child each).
    let manifest = format!(
        "app: echo\nimage: {image}\nport: 7000\n\
         command: [/bin/sh, -c, 'exec nc -ll -p \"$PORT\" -e /bin/cat']\n\
         expose: {{ port: {PROXY_PORT}, protocol: tcp }}\n\
         health: {{ tcp: 7000, interval: 1s, timeout: 1s, start_period: 10s }}\n\
         stop: {{ grace: 1s }}\n\
         autoscale: {{ min: 1, max: 2, metric: concurrency, target: 2, scale_down_window: 2s }}\n"
    );
    let _dir = up(&sandbox, &manifest);
    let mut first = wait_for(
        "the echo app to answer through the proxy",
        60,
        &sandbox,
        || {
            let mut s = connect_in(&sandbox, PROXY_PORT).ok()?;
            (echo(&mut s, "hello").ok()? == "hello").then_some(s)
        },
    );
    assert_eq!(sandbox.instance_netns().len(), 1);

    // Four open connections against a target of 2 per instance: a second instance.
    let mut conns: Vec<TcpStream> = (0..3)
        .map(|_| connect_in(&sandbox, PROXY_PORT).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(echo(c, &format!("line {i}")).unwrap(), format!("line {i}"));
    }
    wait_for(
        "a second instance for 4 open connections",
        30,
        &sandbox,
        || (sandbox.status()["apps"][0]["ready"].as_u64() == Some(2)).then_some(()),
    );
    // New connections are balanced to the new instance too; every one still echoes.
    for i in 0..4 {
        let mut c = connect_in(&sandbox, PROXY_PORT).unwrap();
        assert_eq!(
            echo(&mut c, &format!("new {i}")).unwrap(),
            format!("new {i}")
        );
        conns.push(c);
    }
    assert_eq!(echo(&mut first, "still there").unwrap(), "still there");
    let ev = events(&sandbox);
    assert!(
        ev.contains("ScaledUp") && ev.contains("in-flight per instance"),
        "{ev}"
    );

    // All closed: back to one instance after the window.
    drop(conns);
    drop(first);
    wait_for("the scale to return to 1", 40, &sandbox, || {
        (sandbox.instance_netns().len() == 1).then_some(())
    });
    let mut c = connect_in(&sandbox, PROXY_PORT).unwrap();
    assert_eq!(echo(&mut c, "after").unwrap(), "after");
}
