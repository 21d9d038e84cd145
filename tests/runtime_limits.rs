//! Privileged system tests of cgroup limits and the seccomp filter through `berth run`:
//! OOM → 137 with a message, a fork bomb held by `--pids`, `--cpus 0.5` near half a core,
//! dangerous syscalls → EPERM, host devices unreachable, cgroups removed afterwards.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod runtime_support;

use runtime_support::{CgroupParent, Env, install_probe, is_root, stderr, stdout};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

#[test]
fn seccomp_is_on_and_blocks_mount_unshare_keyctl_bpf() {
    require_root!();
    let env = Env::new();
    install_probe(&env.rootfs);
    let out = env.run_sh(
        &[],
        "grep '^Seccomp:' /proc/self/status; /probe getpid mount unshare keyctl bpf",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Seccomp:\t2\ngetpid ok\nmount Operation not permitted\nunshare Operation not permitted\n\
         keyctl Operation not permitted\nbpf Operation not permitted\n"
    );
}

#[test]
fn exec_gets_the_same_seccomp_filter() {
    require_root!();
    let env = Env::new();
    install_probe(&env.rootfs);
    let out = env
        .berth()
        .args(["run", "-d", "--rootfs"])
        .arg(&env.rootfs)
        .args(["--", "sleep", "30"])
        .output()
        .unwrap();
    let id = stdout(&out).trim().to_string();
    let out = env
        .berth()
        .args([
            "exec",
            &id,
            "--",
            "/bin/sh",
            "-c",
            "grep '^Seccomp:' /proc/self/status; /probe mount bpf",
        ])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "Seccomp:\t2\nmount Operation not permitted\nbpf Operation not permitted\n",
        "{}",
        stderr(&out)
    );
    env.berth().args(["rm", "-f", &id]).output().unwrap();
}

#[test]
fn memory_limit_oom_kills_with_137_and_a_message() {
    require_root!();
    let env = Env::new();
    let cg = CgroupParent::new(1);
    let out = env.run_sh(
        &["--memory", "32Mi", "--cgroup-parent", &cg.0],
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    );
    assert_eq!(out.status.code(), Some(137), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("killed: out of memory (limit 32Mi)"),
        "{}",
        stderr(&out)
    );
    assert!(
        cg.children().is_empty(),
        "cgroup left behind: {:?}",
        cg.children()
    );
}

#[test]
fn fork_bomb_is_held_by_the_pids_limit() {
    require_root!();
    let env = Env::new();
    let cg = CgroupParent::new(2);
    // Only shell builtins after the bomb: every fork fails while the limit is reached.
    // The bomb runs in a subshell: ash gives up on the first failed fork.
    let script = "(i=0; while [ $i -lt 300 ]; do sleep 5 & i=$((i+1)); done) 2>/dev/null; \
                  set -- /proc/[0-9]*; echo $#; \
                  f=/sys/fs/cgroup/pids/pids.max; [ -f $f ] || f=/sys/fs/cgroup/pids.max; read m < $f; echo $m";
    let out = env.run_sh(&["--pids", "64", "--cgroup-parent", &cg.0], script);
    let s = stdout(&out);
    let mut lines = s.lines();
    let count: usize = lines.next().unwrap_or("0").trim().parse().unwrap();
    assert!(count <= 64, "{count} processes under --pids 64");
    assert!(count >= 32, "the bomb never got going: {count}");
    assert_eq!(lines.next(), Some("64"));
    // The host still forks.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
    assert!(cg.children().is_empty(), "cgroup left behind");
}

#[test]
fn cpus_half_holds_a_busy_loop_near_half_a_core() {
    require_root!();
    let env = Env::new();
    let cg = CgroupParent::new(3);
    // cpuacct.usage (v1, ns) or cpu.stat usage_usec (v2), read inside the container's
    // cgroup namespace, before and after 3 s of a busy loop.
    let script = "u() { if [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then cat /sys/fs/cgroup/cpuacct/cpuacct.usage; \
                  else echo $(( $(grep usage_usec /sys/fs/cgroup/cpu.stat | cut -d' ' -f2) * 1000 )); fi; }; \
                  a=$(u); t0=$(date +%s%N 2>/dev/null || echo 0); (while :; do :; done) & p=$!; sleep 3; kill $p; b=$(u); \
                  echo $((b - a))";
    let out = env.run_sh(&["--cpus", "0.5", "--cgroup-parent", &cg.0], script);
    assert!(out.status.success(), "{}", stderr(&out));
    let used_ns: f64 = stdout(&out).trim().parse().unwrap();
    let cores = used_ns / 3e9;
    assert!(
        (0.3..=0.65).contains(&cores),
        "busy loop used {cores:.2} cores under --cpus 0.5"
    );
}

#[test]
fn host_devices_cannot_be_created_and_opened() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(&[], "mknod /tmp/sda b 8 0 2>&1; mknod /tmp/mem c 1 1 2>&1; head -c1 /tmp/mem 2>&1; head -c1 /dev/zero | wc -c");
    let s = stdout(&out);
    assert!(!s.contains("\n0\n") || s.ends_with("1\n"), "{s}");
    assert!(
        s.matches("Operation not permitted").count() >= 2 || s.contains("can't open"),
        "host device usable: {s}"
    );
    assert!(s.ends_with("1\n"), "/dev/zero unusable: {s}");
}

#[test]
fn detached_container_cgroup_is_removed_when_it_ends() {
    require_root!();
    let env = Env::new();
    let cg = CgroupParent::new(4);
    let out = env
        .berth()
        .args([
            "run",
            "-d",
            "--pids",
            "32",
            "--cgroup-parent",
            &cg.0,
            "--rootfs",
        ])
        .arg(&env.rootfs)
        .args(["--", "sleep", "30"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert!(
        !cg.children().is_empty(),
        "no cgroup for the detached container"
    );
    let out = env.berth().args(["stop", "-t", "0", &id]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        cg.children().is_empty(),
        "cgroup left after stop: {:?}",
        cg.children()
    );
    env.berth().args(["rm", &id]).output().unwrap();
}
