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

/// Counts zombies in the container (from an exec'd shell, which reaps its own children).
fn zombies(env: &Env, id: &str) -> String {
    let out = env
        .berth()
        .args(["exec", id, "--", "/bin/sh", "-c"])
        .arg("cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ' || true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

#[test]
fn init_reaps_orphans_and_forwards_sigterm() {
    require_root!();
    let env = Env::new();
    // Two orphans whose parent is gone; the program that stays is `sleep`, which never
    // reaps. As pid 1 (no --init) it leaves them as zombies; under --init it is pid 2 and the
    // orphans are reparented to the init, which reaps them.
    let script = "sh -c 'sleep 0.1 & sleep 0.1 &'; exec sleep 30";
    let plain = run_d(&env, &[], script);
    let with_init = run_d(&env, &["--init"], script);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        zombies(&env, &plain),
        "2",
        "control: sleep as pid 1 reaps nothing"
    );
    assert_eq!(zombies(&env, &with_init), "0", "the init left zombies");
    let out = env
        .berth()
        .args(["exec", &with_init, "--", "cat", "/proc/1/cmdline"])
        .output()
        .unwrap();
    assert!(
        !stdout(&out).starts_with("sleep"),
        "the program is pid 1 despite --init"
    );
    // SIGTERM from `berth stop` reaches the program through the init (sleep dies of it:
    // 128 + 15); without the init, pid 1 ignores it and only the SIGKILL ends it.
    let t = Instant::now();
    let out = env
        .berth()
        .args(["stop", "-t", "10", &with_init])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "SIGTERM did not reach the program"
    );
    assert_eq!(entry(&env, &with_init)["exit_code"], 143);
}

/// A pty pair standing in for the caller's terminal: (master, slave).
fn openpty(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid out pointers; name and termios may be null.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two new fds we own.
    let master = unsafe { std::fs::File::from_raw_fd(m) };
    // SAFETY: as above.
    let slave = unsafe { std::fs::File::from_raw_fd(s) };
    (master, slave)
}

fn lflag(f: &std::fs::File) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data; all zeroes is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into `t`.
    assert_eq!(unsafe { libc::tcgetattr(f.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}

#[test]
fn exec_t_gives_a_container_terminal_that_follows_the_window_size() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    require_root!();
    let env = Env::new();
    let id = run_d(&env, &[], "sleep 30");
    let (mut master, slave) = openpty(24, 80);
    assert_ne!(lflag(&slave) & libc::ICANON, 0);
    let mut cmd = env.berth();
    cmd.args(["exec", "-i", "-t", &id, "--", "/bin/sh"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    let make_controlling = || {
        // SAFETY: plain syscall in the child before exec.
        if unsafe { libc::setsid() } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above; fd 0 is the pty's slave side.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: setsid and ioctl are async-signal-safe: the pty becomes the controlling
    // terminal of berth's session, so resizing it signals berth's process group.
    unsafe { cmd.pre_exec(make_controlling) };
    let mut child = cmd.spawn().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut reader = master.try_clone().unwrap();
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_output = |what: &str| {
        wait_for(
            &format!("{what:?} from exec -t"),
            Duration::from_secs(20),
            || seen.lock().unwrap().contains(what),
        )
    };
    master.write_all(b"tty; stty size\n").unwrap();
    wait_output("24 80\r\n");
    let out = seen.lock().unwrap().clone();
    assert!(
        out.contains("\r\n/dev/pts/0\r\n"),
        "tty is not the container's pts: {out:?}"
    );
    assert_eq!(
        lflag(&slave) & libc::ICANON,
        0,
        "the caller's terminal is not raw"
    );
    // Resize the caller's terminal: the kernel signals SIGWINCH, berth copies the size.
    let ws = libc::winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize.
    let resized = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(resized, 0);
    std::thread::sleep(Duration::from_millis(200));
    master.write_all(b"stty size\n").unwrap();
    wait_output("40 100\r\n");
    master.write_all(b"exit 3\n").unwrap();
    let mut status = None;
    wait_for("exec -t to end", Duration::from_secs(20), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(3), "{}", seen.lock().unwrap());
    assert_ne!(lflag(&slave) & libc::ICANON, 0, "terminal not restored");
}
