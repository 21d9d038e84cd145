//! Privileged system tests of `berth run` in the foreground: isolation, the default security
//! profile, volumes, users, exit codes, and the escape regressions of SECURITY.md §2. They
//! run as root (here and in CI) and are skipped only when not root.

mod runtime_support;

use runtime_support::{Env, is_root, stderr, stdout};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

#[test]
fn program_is_pid_1_with_its_own_hostname() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(
        &["--hostname", "box1"],
        "echo $$; hostname; cat /proc/sys/kernel/hostname",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1\nbox1\nbox1\n");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "box1");
}

#[test]
fn default_profile_caps_and_no_new_privs() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(
        &[],
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    for want in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t00000000a80425fb",
        "CapEff:\t00000000a80425fb",
        "CapBnd:\t00000000a80425fb",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
}

#[test]
fn the_program_starts_with_sigpipe_at_its_default() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(&[], "grep '^SigIgn' /proc/self/status");
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    let hex = s.trim().trim_start_matches("SigIgn:").trim();
    let ignored = u64::from_str_radix(hex, 16).unwrap();
    assert_eq!(
        ignored & (1 << (libc_sigpipe() - 1)),
        0,
        "SIGPIPE ignored: {s}"
    );
}

/// SIGPIPE is 13 on every architecture berth runs on.
fn libc_sigpipe() -> u32 {
    13
}

#[test]
fn non_root_user_from_the_rootfs_gets_no_capabilities() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(
        &["--user", "app", "--workdir", "/home/app"],
        "id -u; id -g; pwd; echo $HOME; grep -E '^CapEff' /proc/self/status",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "1000\n1000\n/home/app\n/home/app\nCapEff:\t0000000000000000\n"
    );
    let out = env.run_sh(&["--user", "4242:4343"], "id -u; id -g");
    assert_eq!(stdout(&out), "4242\n4343\n");
    let out = env.run_sh(&["--user", "ghost"], "true");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no user named \"ghost\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exit_code_is_the_containers() {
    require_root!();
    let env = Env::new();
    assert_eq!(env.run_sh(&[], "exit 7").status.code(), Some(7));
    assert_eq!(env.run_sh(&[], "true").status.code(), Some(0));
    // A child killed by a signal: the shell reports 128+9; pid 1 exits with it.
    assert_eq!(
        env.run_sh(&[], "sh -c 'kill -9 $$'; exit $?").status.code(),
        Some(137)
    );
    let out = env
        .berth()
        .args(["run", "--rm", "--rootfs"])
        .arg(&env.rootfs)
        .args(["--", "/no/such/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/no/such/program"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn masked_paths_read_empty_and_readonly_paths_refuse_writes() {
    require_root!();
    let env = Env::new();
    let script = "for f in /proc/keys /proc/timer_list /proc/interrupts; do [ -e $f ] && echo \"$f $(wc -c < $f)\"; done; \
                  ls -A /sys/firmware | wc -l; \
                  (echo 1 > /proc/sysrq-trigger) 2>&1 | grep -o 'Read-only'; \
                  (echo x > /proc/sys/kernel/hostname) 2>&1 | grep -o 'Read-only'; \
                  touch /sys/x 2>&1 | grep -o 'Read-only'";
    let out = env.run_sh(&[], script);
    let s = stdout(&out);
    assert!(
        s.contains("/proc/keys 0\n") && s.contains("/proc/interrupts 0\n"),
        "{s}"
    );
    // /proc/sysrq-trigger exists only on kernels with magic sysrq.
    let expected = if std::path::Path::new("/proc/sysrq-trigger").exists() {
        3
    } else {
        2
    };
    assert_eq!(
        s.matches("Read-only").count(),
        expected,
        "{s}\n{}",
        stderr(&out)
    );
    assert!(s.contains("\n0\n"), "/sys/firmware not empty: {s}");
}

#[test]
fn devices_and_default_mounts_exist() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(
        &[],
        "ls /dev | tr '\\n' ' '; echo; readlink /dev/ptmx; head -c 4 /dev/zero | wc -c; \
         grep -E ' /(proc|dev|dev/pts|dev/shm|dev/mqueue|sys|sys/fs/cgroup) ' /proc/self/mounts | cut -d' ' -f2,3,4 | cut -d, -f1",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(s.contains(&format!("{dev} ")), "no /dev/{dev}: {s}");
    }
    assert!(s.contains("pts/ptmx\n4\n"), "{s}");
    for m in [
        "/proc proc rw",
        "/dev tmpfs rw",
        "/dev/pts devpts rw",
        "/dev/shm tmpfs rw",
        "/dev/mqueue mqueue rw",
        "/sys sysfs ro",
        "/sys/fs/cgroup",
    ] {
        assert!(s.contains(m), "missing mount {m:?} in {s}");
    }
}

#[test]
fn private_network_has_only_loopback_and_host_network_is_the_hosts() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(&[], "ls /sys/class/net");
    assert_eq!(stdout(&out), "lo\n", "{}", stderr(&out));
    let out = env.run_sh(&["--network", "host"], "ls /sys/class/net | wc -l");
    let host_count = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(stdout(&out).trim(), host_count.to_string());
}

#[test]
fn volumes_are_writable_or_read_only_as_asked() {
    require_root!();
    let env = Env::new();
    let rw = env.tmp.path().join("rw");
    let ro = env.tmp.path().join("ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("f"), "hello").unwrap();
    let out = env.run_sh(
        &[
            "-v",
            &format!("{}:/data", rw.display()),
            "-v",
            &format!("{}:/cfg:ro", ro.display()),
        ],
        "echo written > /data/out; cat /cfg/f; echo; (echo x > /cfg/f) 2>&1 | grep -o Read-only",
    );
    assert_eq!(stdout(&out), "hello\nRead-only\n", "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "written\n"
    );
    assert_eq!(std::fs::read_to_string(ro.join("f")).unwrap(), "hello");
}

#[test]
fn env_cwd_rlimits_and_read_only_root() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(
        &[
            "-e",
            "GREETING=hi there",
            "-w",
            "/tmp",
            "--ulimit",
            "nofile=100:200",
            "--read-only",
        ],
        "echo \"$GREETING\"; pwd; ulimit -n; ulimit -Hn; touch /x 2>&1 | grep -o Read-only",
    );
    assert_eq!(
        stdout(&out),
        "hi there\n/tmp\n100\n200\nRead-only\n",
        "{}",
        stderr(&out)
    );
    let out = env.run_sh(&[], "ulimit -n; ulimit -Hn");
    assert_eq!(stdout(&out), "1024\n1024\n");
}

#[test]
fn overlay_rootfs_leaves_the_lower_dir_untouched() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(
        &["--overlay"],
        "echo new > /etc/added; rm /bin/ls; cat /etc/added",
    );
    assert_eq!(stdout(&out), "new\n", "{}", stderr(&out));
    assert!(!env.rootfs.join("etc/added").exists());
    assert!(env.rootfs.join("bin/ls").symlink_metadata().is_ok());
}

#[test]
fn rootfs_with_proc_symlink_to_a_host_path_is_refused() {
    require_root!();
    let env = Env::new();
    let target = env.tmp.path().join("host-target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::remove_dir(env.rootfs.join("proc")).unwrap();
    std::os::unix::fs::symlink(&target, env.rootfs.join("proc")).unwrap();
    let out = env.run_sh(&[], "true");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("must be mounted on ordinary directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "host dir touched"
    );
}

#[test]
fn rootfs_with_dev_null_symlink_is_refused() {
    require_root!();
    let env = Env::new();
    let target = env.tmp.path().join("core_pattern_stand_in");
    std::fs::write(&target, "untouched").unwrap();
    std::os::unix::fs::symlink(&target, env.rootfs.join("dev/null")).unwrap();
    let out = env.run_sh(&[], "true");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/dev/null") && stderr(&out).contains("ordinary"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
}

#[test]
fn cwd_through_a_leaked_fd_is_refused() {
    require_root!();
    let env = Env::new();
    for n in [3, 4, 5, 7, 64] {
        let out = env.run_sh(&["-w", &format!("/proc/self/fd/{n}")], "pwd");
        assert_eq!(out.status.code(), Some(2), "fd {n}: {}", stdout(&out));
        assert!(stderr(&out).contains("under /proc"), "{}", stderr(&out));
    }
    // A cwd that is an image symlink to /proc/self/fd/N is resolved after pivot_root, with
    // every fd but stdio closed: it must fail, never land outside.
    std::os::unix::fs::symlink("/proc/self/fd/4", env.rootfs.join("leak")).unwrap();
    let out = env.run_sh(&["-w", "/leak"], "pwd");
    assert_eq!(
        out.status.code(),
        Some(1),
        "cwd via symlink started: {}",
        stdout(&out)
    );
}

#[test]
fn mount_destinations_cannot_climb_out_of_the_rootfs() {
    require_root!();
    let env = Env::new();
    let src = env.tmp.path().join("vol");
    std::fs::create_dir_all(&src).unwrap();
    let out = env.run_sh(&["-v", &format!("{}:../../etc", src.display())], "true");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("absolute"), "{}", stderr(&out));
    let out = env.run_sh(&["-v", &format!("{}:/a/../../etc", src.display())], "true");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("climb out"), "{}", stderr(&out));
    // An image symlink climbing out of the rootfs is resolved inside it: the mount point
    // lands in the rootfs's /etc, never the host's.
    let name = format!("berth-test-{}-mnt", std::process::id());
    std::os::unix::fs::symlink("../../../../../../../etc", env.rootfs.join("escape")).unwrap();
    let out = env.run_sh(
        &["-v", &format!("{}:/escape/{name}", src.display())],
        &format!("echo in > /escape/{name}/f"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !std::path::Path::new("/etc").join(&name).exists(),
        "mount point created in the host's /etc"
    );
    assert!(env.rootfs.join("etc").join(&name).is_dir());
    assert_eq!(std::fs::read_to_string(src.join("f")).unwrap(), "in\n");
}

#[test]
fn the_program_starts_with_only_stdio_open() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(&[], "ls /proc/self/fd | sort -n | tr '\\n' ' '");
    // 0 1 2 plus the fd `ls` itself opens for the directory.
    assert_eq!(stdout(&out), "0 1 2 3 ", "{}", stderr(&out));
}

#[test]
fn foreground_run_leaves_no_state_with_rm() {
    require_root!();
    let env = Env::new();
    assert!(env.run_sh(&[], "true").status.success());
    let left = std::fs::read_dir(env.data.join("containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}

#[test]
fn init_keeps_the_programs_exit_code_and_is_pid_1() {
    require_root!();
    let env = Env::new();
    let out = env.run_sh(&["--init"], "echo $$; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stdout(&out), "2\n", "the program must be the init's child");
    // Killed by a signal: 128 + its number, like tini.
    let out = env.run_sh(&["--init"], "kill -USR1 $$");
    assert_eq!(out.status.code(), Some(138), "{}", stderr(&out));
}
