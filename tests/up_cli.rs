//! `berth up` and `berth down` with the real binary, git, registry and containers: a plain
//! manifest directory deployed and answering HTTP, an edit of the directory rolled out as a
//! new revision, an invalid edit refused with `path:line:col` while the last good revision
//! keeps serving, a second `up` refused, and `down` removing everything it started.
//!
//! Everything `up` starts runs in a network namespace the test creates (entered with
//! `nsenter --net`, which, unlike `ip netns exec`, leaves /sys and the cgroup mounts alone),
//! so its listeners and any bridge it makes never touch the machine's own network. The
//! registry runs in the host's namespace, so the image is pulled into the data dir first and
//! the manifest pins its digest: the controller then has no tag to resolve and the agent
//! finds the image locally.

// Test helpers outside #[test] functions: clippy's allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods, reason = "tests time their own waits")]

use std::path::Path;
use std::process::Command;

use berth_testkit::{Registry, run_ok};

mod up_support;
use up_support::Sandbox;

fn wait_for<T>(what: &str, secs: u64, sandbox: &Sandbox, f: impl FnMut() -> Option<T>) -> T {
    sandbox.wait_for(what, secs, f)
}

fn manifest(digest_ref: &str, extra: &str) -> String {
    format!(
        "app: hello\nimage: {digest_ref}\nport: 8080\nexpose: {{ port: 8080 }}\n\
         health: {{ http: /up, interval: 1s, timeout: 1s }}\n\
         update: {{ max_surge: 1, max_unavailable: 0, deadline: 30s }}\n\
         stop: {{ grace: 2s }}\n{extra}"
    )
}

#[test]
fn up_deploys_a_directory_follows_its_edits_and_down_removes_everything() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello"]).unwrap();
    let sandbox = Sandbox::new("up");

    // The registry's storage served inside the namespace too, as a docker.io mirror: the
    // controller resolves the tag there and the agent pulls from it.
    let _inside = reg.serve_in(&sandbox.netns, 5000).unwrap();
    let image = "berth-test/hello:latest";
    let registry_flags = [
        "--insecure-registry",
        "127.0.0.1:5000",
        "--registry-mirror",
        "docker.io=127.0.0.1:5000",
    ];

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.yaml"), manifest(image, "")).unwrap();
    let dir_arg = dir.path().to_str().unwrap();

    let mut up = vec!["up", "-d", "--manifests", dir_arg, "--name", "t1"];
    up.extend(registry_flags);
    let out = run_ok(&mut sandbox.berth(&up));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("berth up running in the background"),
        "{said}"
    );

    let body = wait_for("the app to answer", 60, &sandbox, || {
        sandbox.http(8080, "/up")
    });
    assert!(!body.is_empty());
    let st = sandbox.status();
    assert_eq!(st["apps"][0]["name"], "hello", "{st}");
    assert_eq!(st["apps"][0]["revision"], 1, "{st}");
    assert_eq!(st["hosts"][0]["name"], "t1", "{st}");

    // A second `up` on the same data dir is refused and changes nothing.
    let again = sandbox
        .berth(&["up", "-d", "--manifests", dir_arg])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already runs"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // An edit of the directory → revision 2, serving.
    std::fs::write(
        dir.path().join("hello.yaml"),
        manifest(image, "env: { GREETING: hi }\n"),
    )
    .unwrap();
    wait_for("revision 2 to be ready", 60, &sandbox, || {
        let st = sandbox.status();
        (st["apps"][0]["revision"] == 2 && st["apps"][0]["ready"] == 1).then_some(())
    });
    // (In host mode with a fixed port the old instance may hold the port for its grace
    // period; the new one serves once it has it.)
    wait_for("revision 2 to answer", 30, &sandbox, || {
        sandbox.http(8080, "/up")
    });

    // An invalid edit → refused with path:line:col; revision 2 keeps serving.
    std::fs::write(
        dir.path().join("hello.yaml"),
        manifest(image, "replicas: lots\n"),
    )
    .unwrap();
    let error = wait_for("the invalid edit to be reported", 30, &sandbox, || {
        let st = sandbox.status();
        let errors: Vec<String> = st["sync"]["errors"]
            .as_array()?
            .iter()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect();
        (!errors.is_empty()).then(|| errors.join("\n"))
    });
    assert!(error.contains("hello.yaml:8:11: replicas"), "{error}");
    let st = sandbox.status();
    assert_eq!(st["apps"][0]["revision"], 2, "{st}");
    assert!(sandbox.http(8080, "/up").is_some());

    // The old instance leaves after its drain and grace period.
    wait_for("revision 1's instance to be gone", 60, &sandbox, || {
        let out = sandbox.berth(&["ps", "-o", "json"]).output().ok()?;
        let ps: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let ps = ps.as_array()?;
        (ps.len() == 1 && ps[0]["revision"] == 2).then_some(())
    });

    // down: up stopped, the instance gone, nothing answering, a second down has nothing to do.
    let up_pid = std::fs::read_to_string(sandbox.data().join("up/up.pid")).unwrap();
    let up_pid: serde_json::Value = serde_json::from_str(&up_pid).unwrap();
    let up_pid = up_pid["pid"].as_i64().unwrap();
    let out = run_ok(&mut sandbox.berth(&["down"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("removed 1 instance"), "{said}");
    assert!(
        !Path::new(&format!("/proc/{up_pid}")).exists(),
        "up still runs"
    );
    assert!(sandbox.http(8080, "/up").is_none());
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(sandbox.cgroup_parent())
            .exists(),
        "down left the parent cgroup"
    );
    let ps = run_ok(&mut sandbox.berth(&["ps", "-a", "--local", "-o", "json"]));
    let ps: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(ps.as_array().map(Vec::len), Some(0), "{ps}");
    let out = run_ok(&mut sandbox.berth(&["down"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 instances"));
}

/// `berth up`'s one /metrics: promtool accepts it; every agent family has samples and the
/// ones this run must have moved did; a real Prometheus in the namespace scrapes both halves.
fn check_metrics(sandbox: &Sandbox, app: &str) {
    // Every agent family gets samples once the first passes, probes, autoscaler evaluations
    // and proxy refreshes have happened: wait for that, then check the text.
    let families = berth_agent::metrics::global().family_names();
    let sampled = |text: &str, family: &str| {
        let exposed = family.strip_suffix("_total").unwrap_or(family);
        text.lines()
            .any(|l| l.starts_with(exposed) && !l.starts_with('#'))
    };
    let text = wait_for("every agent family to have samples", 30, sandbox, || {
        let text = sandbox.http(7070, "/metrics")?;
        families.iter().all(|f| sampled(&text, f)).then_some(text)
    });
    berth_testkit::promtool_check(&text);
    let value = |series: &str| -> f64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(series))
            .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for family in families {
        assert!(
            sampled(&text, family),
            "agent family {family} has no sample:\n{text}"
        );
    }
    let a = format!("app=\"{app}\"");
    for series in [
        format!("berth_instances{{{a},state=\"ready\"}}"),
        format!("berth_probe_total{{{a},result=\"success\"}}"),
        "berth_image_pulls_total{result=\"ok\"}".to_string(),
        "berth_image_pull_bytes_total".to_string(),
        format!("berth_reconcile_duration_seconds_count{{{a}}}"),
        format!("berth_instance_cpu_seconds_total{{{a}"),
        format!("berth_instance_memory_bytes{{{a}"),
        format!("berth_autoscaler_desired_replicas{{{a}}}"),
        format!("berth_proxy_requests_total{{{a},code=\"200\"}}"),
        format!("berth_proxy_request_duration_seconds_count{{{a}}}"),
        "berth_controller_sync_total{result=\"ok\"}".to_string(),
    ] {
        let series = series.as_str();
        assert!(value(series) > 0.0, "{series} is not above 0:\n{text}");
    }

    let prometheus = berth_testkit::Prometheus::start(
        &[("berth", "127.0.0.1:7070")],
        Some(&sandbox.netns),
        9090,
    )
    .unwrap();
    prometheus.wait_value(r#"up{job="berth"}"#, |v| v == 1.0);
    prometheus.wait_value(&format!("berth_instances{{{a},state=\"ready\"}}"), |v| {
        v >= 1.0
    });
    prometheus.wait_value(r#"berth_controller_sync_total{result="ok"}"#, |v| v >= 1.0);
    prometheus.wait_value(&format!("berth_instance_memory_bytes{{{a}}}"), |v| {
        v > 0.0 && v < 64.0 * 1024.0 * 1024.0
    });
    prometheus.wait_value(&format!("sum(berth_proxy_requests_total{{{a}}})"), |v| {
        v >= 1.0
    });
    prometheus.wait_value(&format!("berth_autoscaler_desired_replicas{{{a}}}"), |v| {
        (1.0..=5.0).contains(&v)
    });
}

#[test]
fn up_on_an_invalid_directory_exits_1_and_starts_nothing() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "app: Bad_Name\nimage: x\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["up", "--manifests", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bad.yaml:1:")
            || String::from_utf8_lossy(&out.stderr).contains("bad.yaml:1:"),
        "{out:?}"
    );
    assert!(!data.path().join("up/up.pid").exists());
}

/// The README's main command, minus the install and build: `berth up` on
/// `manifests/examples` with the example images from a local registry mirroring docker.io
/// (what scripts/up.sh sets up) → every exposed port answers through the proxy, the worker
/// runs; `berth down` removes it all, network included.
#[test]
fn the_examples_deploy_and_answer_on_their_exposed_ports() {
    let reg = Registry::start().unwrap();
    reg.push_test_images(&["hello", "sleeper"]).unwrap();
    let sandbox = Sandbox::new("examples");
    let _inside = reg.serve_in(&sandbox.netns, 5000).unwrap();
    let examples = berth_testkit::repo_root().join("manifests/examples");
    run_ok(&mut sandbox.berth(&[
        "up",
        "-d",
        "--manifests",
        examples.to_str().unwrap(),
        "--insecure-registry",
        "127.0.0.1:5000",
        "--registry-mirror",
        "docker.io=127.0.0.1:5000",
    ]));
    for port in [8000, 8081, 8082] {
        let body = wait_for(&format!("port {port} to answer"), 90, &sandbox, || {
            sandbox.http(port, "/")
        });
        assert!(body.contains("hello from berth"), "{port}: {body}");
    }
    wait_for("every app ready", 60, &sandbox, || {
        let st = sandbox.status();
        let apps = st["apps"].as_array()?;
        (apps.len() == 4
            && apps
                .iter()
                .all(|a| a["ready"] == a["desired"] && a["desired"].as_u64() > Some(0)))
        .then_some(())
    });
    check_metrics(&sandbox, "web");
    let out = run_ok(&mut sandbox.berth(&["down"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("removed 6 instances"), "{said}");
    for port in [8000, 8081, 8082] {
        assert!(sandbox.http(port, "/").is_none(), "{port} still answers");
    }
    let links = sandbox
        .netns
        .command("ip")
        .args(["-br", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "only lo should be left: {links}");
}
