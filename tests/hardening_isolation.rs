//! Isolation end to end (issue 9): processes started by `berth exec` and by the agent's
//! exec-probe helper (`berth __probe_exec`, what an `health: { exec: … }` probe runs) get the
//! same profile as the container's init. Checked from the host, in `/proc/<pid>/` of each
//! process found in the container's pid namespace: capabilities (CapEff/CapPrm/CapBnd
//! a80425fb, CapInh/CapAmb 0), no_new_privs, seccomp mode 2 with the same filter count, every
//! namespace, the cgroup, and the uid.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers")]
#![allow(
    clippy::disallowed_methods,
    reason = "system tests wait on real processes with wall-clock deadlines"
)]

mod runtime_support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runtime_support::{Env, is_root, stderr, stdout};

/// A background `berth` process, killed (by its pid) on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fields of `/proc/<pid>/status` that make up the profile.
const FIELDS: [&str; 9] = [
    "Uid",
    "Gid",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
];
const NAMESPACES: [&str; 7] = ["ipc", "uts", "net", "pid", "mnt", "cgroup", "user"];

/// What identifies a process's confinement, read from the host.
fn profile(pid: u32) -> Option<BTreeMap<String, String>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut p = BTreeMap::new();
    for line in status.lines() {
        let (key, value) = line.split_once(':')?;
        if FIELDS.contains(&key) || key == "Seccomp_filters" {
            p.insert(key.to_string(), value.trim().to_string());
        }
    }
    for ns in NAMESPACES {
        let link = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()?;
        p.insert(format!("ns/{ns}"), link.display().to_string());
    }
    p.insert(
        "cgroup".into(),
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?,
    );
    Some(p)
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Host pids of the processes in the pid namespace of `init` (init included).
fn in_pid_ns(init: u32) -> Vec<u32> {
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() == Some(ns.clone()))
        .collect()
}

#[test]
fn exec_and_probe_processes_get_the_init_profile() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    let out = env
        .berth()
        .args(["run", "-d", "--rootfs"])
        .arg(&env.rootfs)
        .args(["--", "/bin/sleep", "120"])
        .output()
        .unwrap();
    assert!(out.status.success(), "run -d: {}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let ps = env.berth().args(["ps", "-o", "json"]).output().unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&ps.stdout).unwrap();
    let init = list
        .iter()
        .find(|c| c["id"] == id.as_str())
        .and_then(|c| c["pid"].as_u64())
        .unwrap_or_else(|| panic!("no pid for {id} in ps")) as u32;
    let init_profile = profile(init).unwrap();
    eprintln!("init {init}: {init_profile:#?}");
    for (key, want) in [
        ("CapInh", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("CapEff", "00000000a80425fb"),
        ("CapBnd", "00000000a80425fb"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
    ] {
        assert_eq!(init_profile[key], want, "init's {key}");
    }

    // one process through `berth exec`, one through the exec-probe helper
    let _exec = Bg(env
        .berth()
        .args(["exec", &id, "--", "/bin/sleep", "77"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap());
    let _probe = Bg(Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("__probe_exec")
        .arg(&env.data)
        .arg(&id)
        .args(["--", "/bin/sleep", "78"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let (exec_pid, probe_pid) = loop {
        let pids = in_pid_ns(init);
        let find = |arg: &str| {
            pids.iter()
                .copied()
                .find(|p| cmdline(*p).trim_end() == format!("/bin/sleep {arg}"))
        };
        if let (Some(e), Some(p)) = (find("77"), find("78")) {
            break (e, p);
        }
        assert!(
            Instant::now() < deadline,
            "exec'd processes not found in the container's pid namespace: {:?}",
            pids.iter().map(|p| (p, cmdline(*p))).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for (what, pid) in [("berth exec", exec_pid), ("exec probe", probe_pid)] {
        let p = profile(pid).unwrap();
        let differs: Vec<_> = init_profile
            .iter()
            .filter(|(k, v)| p.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: init {v:?}, {what} {:?}", p.get(k)))
            .collect();
        assert!(
            differs.is_empty(),
            "{what} (pid {pid}) does not have the init's profile:\n{}",
            differs.join("\n")
        );
        eprintln!("{what} pid {pid}: same profile as init");
    }
    let out = env.berth().args(["rm", "-f", &id]).output().unwrap();
    assert!(out.status.success(), "rm -f: {}", stderr(&out));
}
