//! Installs the default seccomp filter in a real child process and probes it with raw
//! syscalls. The probes run in the forked child (a `pre_exec` hook, after the filter is
//! installed), using only raw syscalls and a stack buffer, then report through a pipe; the
//! child then execs `sleep`, whose `/proc/<pid>/status` must show `Seccomp: 2`.
//!
//! Safety of the probes if the filter were broken: the child runs in its own UTS namespace
//! and session (so `sethostname`, `setdomainname`, `vhangup` cannot affect the host), stdin
//! is /dev/null, and every other probe uses null or zero arguments that fail or do nothing.
//! As root, so the EPERMs come from the filter, not from missing privileges; without root the
//! test is skipped (CI runs it as root).

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::unwrap_used, clippy::panic)]
#![cfg(target_arch = "x86_64")]

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use berth_agent::host::seccomp::{self, Arch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Errno(i32),
    Success,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    name: &'static str,
    nr: i64,
    args: [u64; 6],
    expect: Expect,
}

const SIGCHLD: u64 = libc::SIGCHLD as u64;
const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

fn nr(name: &str) -> i64 {
    seccomp::syscall_number(Arch::X86_64, name).unwrap_or_else(|| panic!("no number for {name}"))
}

fn probes(dev_null: &'static std::ffi::CStr) -> Vec<Probe> {
    let mut probes: Vec<Probe> = seccomp::FULLY_BLOCKED
        .iter()
        .map(|name| Probe {
            name,
            nr: nr(name),
            args: [0; 6],
            expect: Expect::Errno(libc::EPERM),
        })
        .collect();
    let p = |name: &'static str, syscall: &str, args: [u64; 6], expect| Probe {
        name,
        nr: nr(syscall),
        args,
        expect,
    };
    let eperm = Expect::Errno(libc::EPERM);
    probes.extend([
        p(
            "unshare(CLONE_NEWUSER)",
            "unshare",
            [CLONE_NEWUSER, 0, 0, 0, 0, 0],
            eperm,
        ),
        p(
            "clone(CLONE_NEWUSER)",
            "clone",
            [SIGCHLD | CLONE_NEWUSER, 0, 0, 0, 0, 0],
            eperm,
        ),
        p(
            "socket(AF_VSOCK)",
            "socket",
            [40, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
            eperm,
        ),
        p(
            "socket(AF_ALG)",
            "socket",
            [38, libc::SOCK_SEQPACKET as u64, 0, 0, 0, 0],
            eperm,
        ),
        p(
            "personality(0x1234)",
            "personality",
            [0x1234, 0, 0, 0, 0, 0],
            eperm,
        ),
        p("clone3", "clone3", [0; 6], Expect::Errno(libc::ENOSYS)),
        // Control calls: these must work.
        p("getpid", "getpid", [0; 6], Expect::Success),
        p(
            "clone(SIGCHLD)",
            "clone",
            [SIGCHLD, 0, 0, 0, 0, 0],
            Expect::Success,
        ),
        p(
            "socket(AF_INET)",
            "socket",
            [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
            Expect::Success,
        ),
        p(
            "personality(query)",
            "personality",
            [0xffff_ffff, 0, 0, 0, 0, 0],
            Expect::Success,
        ),
        p(
            "openat(/dev/null)",
            "openat",
            [
                libc::AT_FDCWD as u64,
                dev_null.as_ptr() as u64,
                libc::O_RDWR as u64,
                0,
                0,
                0,
            ],
            Expect::Success,
        ),
        // ptrace is allowed (kernel >= 4.8); a bogus pid gives ESRCH, not EPERM.
        p(
            "ptrace(bogus pid)",
            "ptrace",
            [libc::PTRACE_GETREGS as u64, 0x3fff_fff0, 0, 0, 0, 0],
            Expect::Errno(libc::ESRCH),
        ),
    ]);
    probes
}

const MAX_PROBES: usize = 128;

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// Runs in the forked child after the filter is installed: raw syscalls only, no allocation.
/// Each result is 0 for success or the errno.
fn run_probes(probes: &[Probe], results: &mut [i32; MAX_PROBES]) {
    for (slot, probe) in results.iter_mut().zip(probes) {
        let [a, b, c, d, e, f] = probe.args;
        // SAFETY: every probe passes null pointers or integers (or a pointer to a static
        // C string); the kernel validates them. A clone that succeeds returns 0 in the new
        // child, which exits at once.
        let rc = unsafe { libc::syscall(probe.nr, a, b, c, d, e, f) };
        *slot = if rc < 0 {
            last_errno()
        } else {
            after_success(probe, rc)
        };
    }
}

/// Cleans up after a probe that succeeded; for `openat`, also reads and writes the file.
fn after_success(probe: &Probe, rc: i64) -> i32 {
    let Ok(ret) = i32::try_from(rc) else {
        return 0;
    };
    if probe.nr == libc::SYS_clone {
        if ret == 0 {
            // SAFETY: we are the clone's child; leave without running anything.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: reaps the child just created.
        unsafe { libc::waitpid(ret, std::ptr::null_mut(), 0) };
        return 0;
    }
    let mut result = 0;
    if probe.name.starts_with("openat") {
        let mut buf = [b'x'];
        // SAFETY: `ret` is the /dev/null the probe opened; one-byte write and read.
        if unsafe { libc::write(ret, buf.as_ptr().cast(), 1) } != 1 {
            result = last_errno();
        // SAFETY: as above.
        } else if unsafe { libc::read(ret, buf.as_mut_ptr().cast(), 1) } != 0 {
            result = last_errno();
        }
    }
    if probe.name.starts_with("socket") || probe.name.starts_with("openat") {
        // SAFETY: closes the descriptor the probe opened.
        unsafe { libc::close(ret) };
    }
    result
}

/// A new session (no controlling terminal for `vhangup`) and UTS namespace (for
/// `sethostname`), so a broken filter could not touch the host.
fn isolate_probe_child() -> io::Result<()> {
    // SAFETY: plain syscall without pointers.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain syscall without pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWUTS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn no_new_privs() -> io::Result<()> {
    // SAFETY: plain prctl without pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn report(fd: i32, results: &[i32; MAX_PROBES]) -> io::Result<()> {
    let len = std::mem::size_of_val(results);
    // SAFETY: writes the stack buffer to the pipe's write end, open until exec.
    let written = unsafe { libc::write(fd, results.as_ptr().cast(), len) };
    if usize::try_from(written).ok() != Some(len) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn default_filter_denies_dangerous_calls_and_allows_ordinary_ones() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the seccomp probe needs root to make the EPERMs meaningful");
        return;
    }
    let filter = seccomp::default_filter(Arch::X86_64).unwrap();
    let probes = probes(c"/dev/null");
    assert!(probes.len() <= MAX_PROBES);
    let (mut reader, writer) = io::pipe().unwrap();
    let write_fd = writer.as_raw_fd();

    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("10").stdin(Stdio::null());
    let child_probes = probes.clone();
    // SAFETY: the hook runs between fork and exec and only makes raw syscalls; `filter` and
    // `child_probes` were allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            isolate_probe_child()?;
            no_new_privs()?;
            seccomp::apply(&filter).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let mut results = [0i32; MAX_PROBES];
            run_probes(&child_probes, &mut results);
            report(write_fd, &results)
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(writer);
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let _ = child.kill();
    let exit = child.wait().unwrap();

    assert_eq!(
        bytes.len(),
        MAX_PROBES * 4,
        "the probe child did not report: {exit:?} {status}"
    );
    let results: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    let mut failures = Vec::new();
    for (probe, &errno) in probes.iter().zip(&results) {
        let got = if errno == 0 {
            Expect::Success
        } else {
            Expect::Errno(errno)
        };
        if got != probe.expect {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                probe.name, probe.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!("{} probes behaved as expected", probes.len());

    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
}

#[test]
fn filtered_busybox_cannot_unshare_or_mount_but_runs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static is installed by scripts/install-deps.sh");
    let filter = seccomp::default_filter(Arch::X86_64).unwrap();
    let run = |args: &[&str]| {
        let filter = filter.clone();
        let mut cmd = Command::new(busybox);
        cmd.args(args).stdin(Stdio::null());
        // SAFETY: only raw syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                no_new_privs()?;
                seccomp::apply(&filter).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
            });
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&["unshare", "-m", "true"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run(&["mount", "-t", "tmpfs", "none", dir.path().to_str().unwrap()]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("Operation not permitted") || out.contains("permission denied"),
        "{out}"
    );
    let (code, out) = run(&["sh", "-c", "echo hi | cat; grep Seccomp: /proc/self/status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("hi") && out.contains("Seccomp:\t2"), "{out}");
}
