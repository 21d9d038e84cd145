//! Privileged system tests of detached containers: the shim, re-adoption after the CLI is
//! killed, `ps`, `logs`, `stop`, `kill`, `rm`, `exec`, and that the berth binary cannot be
//! reached for writing from inside (CVE-2019-5736). Skipped only when not root.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "system tests wait on real processes with wall-clock deadlines"
)]

mod runtime_support;

use std::process::Command;
use std::time::{Duration, Instant};

use runtime_support::{Env, is_root, start_time, stderr, stdout};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

fn run_d(env: &Env, extra: &[&str], script: &str) -> String {
    let out = env
        .berth()
        .args(["run", "-d", "--rootfs"])
        .arg(&env.rootfs)
        .args(extra)
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "run -d failed: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn ps_json(env: &Env) -> Vec<serde_json::Value> {
    let out = env
        .berth()
        .args(["ps", "-a", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entry(env: &Env, id: &str) -> serde_json::Value {
    ps_json(env)
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in ps"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn detached_container_outlives_a_killed_cli_and_reports_its_exit() {
    require_root!();
    let env = Env::new();
    let mut cli = env.berth();
    cli.args(["run", "-d", "--name", "survivor", "--rootfs"])
        .arg(&env.rootfs)
        .args(["--", "/bin/sh", "-c", "sleep 1.5; exit 7"]);
    std::os::unix::process::CommandExt::process_group(&mut cli, 0);
    let mut child = cli.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pgid = child.id() as i32;
    wait_for("the container to run", Duration::from_secs(10), || {
        ps_json(&env)
            .iter()
            .any(|c| c["name"] == "survivor" && c["state"] == "running")
    });
    // kill -9 the CLI and everything in its process group.
    // Through kill(2) directly: procps-ng 4.0.2's `kill -9 -PGID` is not to be trusted.
    let _ = berth_agent::host::sys::kill(-pgid, 9);
    let _ = child.wait();
    let c = ps_json(&env)
        .into_iter()
        .find(|c| c["name"] == "survivor")
        .unwrap();
    assert_eq!(c["state"], "running", "{c}");
    let pid = c["pid"].as_i64().unwrap() as i32;
    assert!(
        start_time(pid).is_some(),
        "init gone after the CLI was killed"
    );
    // A fresh berth process reads the real exit code once it ends.
    wait_for("the exit code", Duration::from_secs(10), || {
        ps_json(&env)
            .iter()
            .any(|c| c["name"] == "survivor" && c["state"] == "stopped")
    });
    let c = ps_json(&env)
        .into_iter()
        .find(|c| c["name"] == "survivor")
        .unwrap();
    assert_eq!(c["exit_code"], 7, "{c}");
    // Only running containers without -a.
    let out = env.berth().args(["ps", "-o", "json"]).output().unwrap();
    assert_eq!(
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn ps_json_has_the_contract_fields() {
    require_root!();
    let env = Env::new();
    let id = run_d(&env, &["--name", "fields"], "sleep 30");
    let c = entry(&env, &id);
    for key in [
        "id",
        "app",
        "host",
        "revision",
        "state",
        "name",
        "image",
        "pid",
        "created",
        "exit_code",
    ] {
        assert!(c.get(key).is_some(), "missing {key} in {c}");
    }
    assert_eq!(c["state"], "running");
    assert_eq!(c["name"], "fields");
    assert_eq!(c["image"], env.rootfs.display().to_string());
    let inspect = env.berth().args(["inspect", "fields"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["state"]["spec"]["id"], id.as_str());
    let rm = env.berth().args(["rm", "fields"]).output().unwrap();
    assert!(
        !rm.status.success(),
        "removed a running container without -f"
    );
    assert!(stderr(&rm).contains("--force"), "{}", stderr(&rm));
    let rm = env.berth().args(["rm", "-f", "fields"]).output().unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(ps_json(&env).is_empty());
    assert!(!env.data.join("containers").join(&id).exists());
}

#[test]
fn logs_keep_stdout_and_stderr_with_timestamps() {
    require_root!();
    let env = Env::new();
    let id = run_d(&env, &[], "echo out1; echo err1 >&2; sleep 0.3; echo out2");
    let out = env.berth().args(["logs", "-f", &id]).output().unwrap();
    assert_eq!(stdout(&out), "out1\nout2\n");
    assert_eq!(stderr(&out), "err1\n");
    let out = env.berth().args(["logs", "-t", &id]).output().unwrap();
    let first = stdout(&out).lines().next().unwrap().to_string();
    assert!(
        first.ends_with("Z out1") && first.starts_with("20"),
        "{first}"
    );
}

#[test]
fn stop_sends_the_signal_then_kills_after_the_grace_period() {
    require_root!();
    let env = Env::new();
    let polite = run_d(
        &env,
        &[],
        "trap 'exit 3' TERM; while true; do sleep 0.1; done",
    );
    let stubborn = run_d(&env, &[], "trap '' TERM; while true; do sleep 0.1; done");
    std::thread::sleep(Duration::from_millis(300));
    let out = env
        .berth()
        .args(["stop", "-t", "5", &polite])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(entry(&env, &polite)["exit_code"], 3);
    let t = Instant::now();
    let out = env
        .berth()
        .args(["stop", "-t", "1", &stubborn])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(entry(&env, &stubborn)["exit_code"], 137);
}

#[test]
fn kill_sends_one_signal_now() {
    require_root!();
    let env = Env::new();
    let id = run_d(
        &env,
        &[],
        "trap 'exit 10' USR1; while true; do sleep 0.1; done",
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = env
        .berth()
        .args(["kill", "-s", "USR1", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("exit", Duration::from_secs(5), || {
        entry(&env, &id)["state"] == "stopped"
    });
    assert_eq!(entry(&env, &id)["exit_code"], 10);
    let out = env.berth().args(["kill", &id]).output().unwrap();
    assert!(!out.status.success(), "killed a stopped container");
}

#[test]
fn a_reused_pid_is_never_signalled() {
    require_root!();
    let env = Env::new();
    let id = run_d(&env, &[], "sleep 30");
    let stop = env.berth().args(["rm", "-f", &id]).output().unwrap();
    assert!(stop.status.success());
    // Forge a record whose init pid is now an unrelated process (our own sleep) with a
    // different start time, as after a reboot or pid wrap-around.
    let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
    let dir = env.data.join("containers").join("forged");
    std::fs::create_dir_all(&dir).unwrap();
    let other = run_d(&env, &["--name", "template"], "sleep 30");
    let mut state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.data.join("containers").join(&other).join("state.json"))
            .unwrap(),
    )
    .unwrap();
    state["spec"]["id"] = "forged".into();
    state["spec"]["name"] = serde_json::Value::Null;
    state["shim"] = serde_json::Value::Null;
    state["init"]["pid"] = victim.id().into();
    state["init"]["start_time"] = (start_time(victim.id() as i32).unwrap() - 1).into();
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    let out = env
        .berth()
        .args(["kill", "-s", "KILL", "forged"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = env
        .berth()
        .args(["stop", "-t", "0", "forged"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        victim.try_wait().unwrap().is_none(),
        "an unrelated process was signalled"
    );
    assert_eq!(entry(&env, "forged")["state"], "stopped");
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn exec_joins_the_same_namespaces_and_profile() {
    require_root!();
    let env = Env::new();
    let id = run_d(&env, &["--hostname", "exectest"], "sleep 30");
    let script = "for n in ipc uts net pid mnt cgroup; do [ \"$(readlink /proc/1/ns/$n)\" = \"$(readlink /proc/self/ns/$n)\" ] && echo same-$n; done; \
                  hostname; grep -E '^(CapInh|CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ls /proc/self/fd | wc -l";
    let out = env
        .berth()
        .args(["exec", &id, "--", "/bin/sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    for n in ["ipc", "uts", "net", "pid", "mnt", "cgroup"] {
        assert!(
            s.contains(&format!("same-{n}\n")),
            "exec not in the container's {n} namespace: {s}"
        );
    }
    for want in [
        "exectest\n",
        "CapInh:\t0000000000000000",
        "CapEff:\t00000000a80425fb",
        "CapBnd:\t00000000a80425fb",
        "NoNewPrivs:\t1",
    ] {
        assert!(s.contains(want), "missing {want:?} in {s}");
    }
    // stdio plus the fd `ls` opens.
    assert!(s.ends_with("4\n"), "exec'd process has extra fds: {s}");
    let out = env
        .berth()
        .args(["exec", &id, "--", "/bin/sh", "-c", "exit 5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let out = env
        .berth()
        .args(["exec", "-u", "app", &id, "--", "id", "-u"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "1000\n");
}

#[test]
fn berth_binary_cannot_be_reached_for_writing_from_inside() {
    require_root!();
    let env = Env::new();
    let exe = std::fs::read(env!("CARGO_BIN_EXE_berth")).unwrap();
    // Entry point 1 (CVE-2019-5736): the container's program is `#!/proc/self/exe`, so the
    // kernel would run the runtime's own binary inside the container.
    std::fs::write(env.rootfs.join("evil"), "#!/proc/self/exe\n").unwrap();
    std::fs::set_permissions(
        env.rootfs.join("evil"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = env
        .berth()
        .args(["run", "--rm", "--rootfs"])
        .arg(&env.rootfs)
        .args(["--", "/evil"])
        .output()
        .unwrap();
    assert!(
        !stdout(&out).contains("Usage"),
        "berth ran inside the container: {}",
        stdout(&out)
    );
    let id = run_d(&env, &[], "sleep 60");
    // Entry point 2: exec of /proc/self/exe through `berth exec`.
    let out = env
        .berth()
        .args(["exec", &id, "--", "/proc/self/exe", "--version"])
        .output()
        .unwrap();
    // The helper's binary is a read-only bind in a mount namespace that no longer exists:
    // the kernel refuses to exec it from inside (ENOENT), and it could not be written anyway.
    assert!(
        !out.status.success(),
        "berth ran inside the container: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("exec /proc/self/exe"),
        "{}",
        stderr(&out)
    );
    // Entry point 3: any berth process visible in the container's pid namespace.
    let scan = "for p in /proc/[0-9]*; do readlink $p/exe; done 2>/dev/null | sort -u";
    let out = env
        .berth()
        .args(["exec", &id, "--", "/bin/sh", "-c", scan])
        .output()
        .unwrap();
    assert!(
        !stdout(&out).contains("berth"),
        "a berth process is visible inside: {}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read(env!("CARGO_BIN_EXE_berth")).unwrap(),
        exe,
        "berth binary changed"
    );
}
