//! Privileged tests of the cgroup adapter against this host's real cgroupfs (v1 or hybrid on
//! the development machines; v2 works too). Each test makes its own parent cgroup
//! `berth-test-<pid>-<n>` in every hierarchy, runs real processes in a child cgroup, and a
//! drop guard kills those processes and removes both cgroups even when the test fails.
//! They never touch a cgroup they did not create. Without root they are skipped with a note
//! (CI runs them as root).

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use berth_agent::host::cgroup::{
    Cgroup, CgroupJoin, CgroupLayout, CgroupManager, CgroupPath, ErrorKind, Resources,
    default_device_rules,
};

fn host_layout() -> CgroupLayout {
    CgroupLayout::detect(Path::new("/proc/self/mountinfo")).unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A test's parent cgroup and the one container cgroup under it; removed on drop.
struct TestCgroup {
    parent: Cgroup,
    cgroup: Cgroup,
}

impl TestCgroup {
    /// In the host's own layout (v1 or hybrid here).
    fn new() -> Option<Self> {
        if !is_root() {
            eprintln!("skipped: cgroup tests need root");
            return None;
        }
        Some(Self::new_in(&host_layout()))
    }

    fn new_in(layout: &CgroupLayout) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let parent_path =
            CgroupPath::new(&format!("berth-test-{}-{n}", std::process::id())).unwrap();
        let path = parent_path.join("c").unwrap();
        let guard = Self {
            parent: layout.cgroup(&parent_path),
            cgroup: layout.cgroup(&path),
        };
        guard.cgroup.create().unwrap();
        guard
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Only processes the test started are in here.
        let _ = self.cgroup.kill_all();
        for _ in 0..200 {
            if self.cgroup.pids().map(|p| p.is_empty()).unwrap_or(true) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        if let Err(err) = self.cgroup.delete() {
            eprintln!("cleanup: {err}");
        }
        if let Err(err) = self.parent.delete() {
            eprintln!("cleanup: {err}");
        }
    }
}

/// A `/bin/sh -c` child that waits on stdin before running `script`, so it can be moved into
/// the cgroup first. Killed and reaped on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn spawn(script: &str) -> Self {
        let mut child = Command::new("/bin/sh")
            .args(["-c", &format!("read _ ; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn go(&mut self) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(b"\n").unwrap();
    }

    fn wait_output(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        (status, out)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_in(cg: &TestCgroup, script: &str) -> Proc {
    let mut proc = Proc::spawn(script);
    cg.cgroup.add_pid(proc.pid()).unwrap();
    proc.go();
    proc
}

fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn busy_loop_under_half_a_core_uses_about_half_a_core() {
    let Some(cg) = TestCgroup::new() else { return };
    cg.cgroup
        .apply(&Resources {
            cpu_millicores: Some(500),
            ..Resources::default()
        })
        .unwrap();
    let _proc = start_in(&cg, "while :; do :; done");
    thread::sleep(Duration::from_millis(300));
    #[allow(clippy::disallowed_methods)] // measures wall time against cgroup cpu time
    let start = std::time::Instant::now();
    let before = cg.cgroup.stats().unwrap().cpu_usage_ns;
    thread::sleep(Duration::from_secs(2));
    let after = cg.cgroup.stats().unwrap().cpu_usage_ns;
    let wall = start.elapsed().as_nanos() as f64;
    let ratio = (after - before) as f64 / wall;
    eprintln!("cpu usage of a busy loop capped at 0.5 cores: {ratio:.3} cores");
    assert!(after > before, "cpu usage must grow");
    assert!(ratio < 0.6, "capped at 0.5 cores, used {ratio:.3}");
    assert!(ratio > 0.1, "the loop should run, used {ratio:.3}");
}

#[test]
fn pids_current_counts_and_pids_max_stops_forks() {
    let Some(cg) = TestCgroup::new() else { return };
    cg.cgroup
        .apply(&Resources {
            pids_max: Some(8),
            ..Resources::default()
        })
        .unwrap();
    let _proc = start_in(
        &cg,
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 30 & done 2>/dev/null; wait",
    );
    assert!(
        wait_until(|| cg.cgroup.stats().unwrap().pids_current == 8),
        "pids.current should reach the limit of 8, is {}",
        cg.cgroup.stats().unwrap().pids_current
    );
    thread::sleep(Duration::from_millis(200));
    let stats = cg.cgroup.stats().unwrap();
    assert_eq!(stats.pids_current, 8, "no fork past pids.max");
    // cgroup.procs lists live processes; pids.current also counts a task until it is reaped.
    let listed = cg.cgroup.pids().unwrap().len();
    assert!((2..=8).contains(&listed), "{listed} processes listed");
}

#[test]
fn memory_hog_in_32mi_is_oom_killed_and_counted() {
    let Some(cg) = TestCgroup::new() else { return };
    let limit = 32 << 20;
    cg.cgroup
        .apply(&Resources {
            memory_bytes: Some(limit),
            ..Resources::default()
        })
        .unwrap();
    assert_eq!(cg.cgroup.stats().unwrap().oom_kills, 0);
    // tail buffers a "line" of /dev/zero without end: it grows until killed.
    let proc = start_in(&cg, "exec tail /dev/zero");
    let (status, _) = proc.wait_output();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let stats = cg.cgroup.stats().unwrap();
    eprintln!("after OOM: {stats:?}");
    assert!(stats.oom_kills >= 1, "{stats:?}");
    let peak = stats.memory_peak_bytes.unwrap_or(limit);
    assert!(peak <= limit + (1 << 20), "peak {peak} above the limit");
    assert!(
        peak > limit / 2,
        "peak {peak}: the hog should have filled the cgroup"
    );
}

#[test]
fn frozen_cgroup_uses_no_cpu_until_thawed() {
    let Some(cg) = TestCgroup::new() else { return };
    let _proc = start_in(&cg, "while :; do :; done");
    thread::sleep(Duration::from_millis(100));
    cg.cgroup.freeze().unwrap();
    let frozen = cg.cgroup.stats().unwrap().cpu_usage_ns;
    thread::sleep(Duration::from_millis(300));
    assert_eq!(cg.cgroup.stats().unwrap().cpu_usage_ns, frozen);
    cg.cgroup.thaw().unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(cg.cgroup.stats().unwrap().cpu_usage_ns > frozen);
}

#[test]
fn kill_all_ends_every_process_then_delete_succeeds() {
    let Some(cg) = TestCgroup::new() else { return };
    let proc = start_in(&cg, "sleep 30 & sleep 30 & (sleep 30 &) ; wait");
    assert!(wait_until(|| cg.cgroup.pids().unwrap().len() >= 4));
    cg.cgroup.kill_all().unwrap();
    let (status, _) = proc.wait_output();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Orphans were reparented to init; they go once the kernel has delivered SIGKILL.
    assert!(wait_until(|| cg.cgroup.pids().unwrap().is_empty()));
    cg.cgroup.delete().unwrap();
    for dir in cg.cgroup.dirs() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn delete_of_a_cgroup_with_processes_reports_busy() {
    let Some(cg) = TestCgroup::new() else { return };
    let _proc = start_in(&cg, "sleep 30");
    let err = cg.cgroup.delete().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("kill"), "{err}");
}

/// Runs a shell in `cg` that writes /dev/null and reads a block node (loop0, 7:0) made
/// outside the cgroup; returns its output.
fn probe_devices(cg: &TestCgroup) -> String {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("blk");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(7, 0),
    )
    .unwrap();
    // head's error goes to stdout (2>&1 before >/dev/null), the data to /dev/null.
    let script = format!(
        "echo x > /dev/null && echo null-ok; head -c1 {} 2>&1 >/dev/null; echo done",
        node.display()
    );
    let proc = start_in(cg, &script);
    proc.wait_output().1
}

#[test]
fn default_devices_allow_null_and_deny_other_devices() {
    let Some(cg) = TestCgroup::new() else { return };
    cg.cgroup.apply_devices(&default_device_rules()).unwrap();
    let out = probe_devices(&cg);
    assert!(out.contains("null-ok"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
}

#[test]
fn v1_devices_list_shows_only_the_allowed_devices() {
    let Some(cg) = TestCgroup::new() else { return };
    let v1 = match &cg.cgroup {
        Cgroup::V1(v1) => v1,
        Cgroup::Hybrid(hybrid) => hybrid.v1(),
        Cgroup::V2(_) => {
            eprintln!("skipped: no v1 devices controller");
            return;
        }
    };
    cg.cgroup.apply_devices(&default_device_rules()).unwrap();
    let list = std::fs::read_to_string(v1.controller_dir("devices").unwrap().join("devices.list"))
        .unwrap();
    assert!(
        list.contains("c 1:3 rwm") && list.contains("c 136:* rwm"),
        "{list}"
    );
    assert!(!list.contains("a *:*") && !list.contains("b "), "{list}");
}

/// The v2 path for real: on a hybrid host the controller-less cgroup2 tree still runs
/// device programs for its members, so the eBPF filter is tested here too.
#[test]
fn v2_device_program_allows_null_and_denies_other_devices() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = match host_layout() {
        CgroupLayout::V2 { root } | CgroupLayout::Hybrid { unified: root, .. } => root,
        CgroupLayout::V1(_) => {
            eprintln!("skipped: no cgroup2 mount");
            return;
        }
    };
    let cg = TestCgroup::new_in(&CgroupLayout::V2 { root });
    // Without the program, the block node opens (loop0 without a backing file reads empty).
    let out = probe_devices(&cg);
    assert!(!out.contains("Operation not permitted"), "{out}");
    cg.cgroup.apply_devices(&default_device_rules()).unwrap();
    let out = probe_devices(&cg);
    assert!(out.contains("null-ok"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
}

#[test]
fn hybrid_tracks_the_process_in_the_unified_leaf_too() {
    let Some(cg) = TestCgroup::new() else { return };
    let Cgroup::Hybrid(hybrid) = &cg.cgroup else {
        eprintln!("skipped: not a hybrid host");
        return;
    };
    let proc = start_in(&cg, "sleep 30");
    assert_eq!(hybrid.unified().pids().unwrap(), vec![proc.pid()]);
    assert_eq!(cg.cgroup.pids().unwrap(), vec![proc.pid()]);
}

#[test]
fn a_child_joins_the_cgroup_itself_before_exec() {
    let Some(cg) = TestCgroup::new() else { return };
    let join = CgroupJoin::open(&cg.cgroup).unwrap();
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("30");
    // SAFETY: join_self only writes to descriptors opened before the fork.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || join.join_self());
    }
    let child = cmd.spawn().unwrap();
    let proc = Proc { child, stdin: None };
    assert_eq!(cg.cgroup.pids().unwrap(), vec![proc.pid()]);
    if let Cgroup::Hybrid(hybrid) = &cg.cgroup {
        assert_eq!(hybrid.unified().pids().unwrap(), vec![proc.pid()]);
    }
}

/// The v2 backend's freeze, kill (cgroup.kill) and delete on a real cgroup2 tree: the
/// unified mount of a hybrid host has no controllers, but these are core v2 features.
#[test]
fn v2_freeze_kill_and_delete_work_on_a_real_cgroup2_tree() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let root = match host_layout() {
        CgroupLayout::V2 { root } | CgroupLayout::Hybrid { unified: root, .. } => root,
        CgroupLayout::V1(_) => {
            eprintln!("skipped: no cgroup2 mount");
            return;
        }
    };
    let cg = TestCgroup::new_in(&CgroupLayout::V2 { root });
    let proc = start_in(&cg, "sleep 30 & sleep 30 & wait");
    assert!(wait_until(|| cg.cgroup.pids().unwrap().len() == 3));
    cg.cgroup.freeze().unwrap();
    cg.cgroup.thaw().unwrap();
    cg.cgroup.kill_all().unwrap();
    let (status, _) = proc.wait_output();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(wait_until(|| cg.cgroup.pids().unwrap().is_empty()));
    cg.cgroup.delete().unwrap();
    assert!(cg.cgroup.dirs().iter().all(|d| !d.exists()));
}
