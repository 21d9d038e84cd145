//! The container's init: berth re-executed as `berth __init` by [`super::spawn`], already
//! pid 1 of the container's new pid namespace and in its new mount, uts, ipc and network
//! namespaces, running from a read-only bind of the berth binary (so a container that runs
//! `/proc/self/exe` or opens `/proc/1/exe` finds a file it cannot write: CVE-2019-5736).
//!
//! It reads its [`InitConfig`] from fd 3, reports on fd 4 (`E<message>` on failure, `R`
//! when set up and waiting for `start`; the fd is close-on-exec, so EOF means the program
//! was exec'd), builds the filesystem view ([`crate::host::rootfs`]), sets hostname,
//! loopback, rlimits, user, capabilities and no_new_privs, closes every other fd, checks the
//! cwd, applies seccomp last, and execs the program. It never forks and never returns on
//! success.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spawn;
use crate::host::{caps, rootfs, sys};
use crate::runtime::spec::{ContainerSpec, Network};

/// The fd the init reads its config from.
pub const CONFIG_FD: i32 = 3;
/// The fd the init reports on.
pub const STATUS_FD: i32 = 4;

/// What the init needs besides the spec.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    /// The container.
    pub spec: ContainerSpec,
    /// The container's state dir (overlay upper/work live here).
    pub state_dir: PathBuf,
    /// Where the rootfs is mounted before `pivot_root` (inside the init's mount namespace).
    pub rootfs_mount: PathBuf,
    /// A FIFO to open for writing before exec: blocks until `runtime start` reads it.
    pub start_fifo: Option<PathBuf>,
}

/// Entry point of `berth __init`. Returns the exit code to use when setup fails; on success
/// the process has become the container's program.
pub fn main() -> u8 {
    // SAFETY: fd 4 was set up by the spawner as the status pipe and nothing else owns it.
    let status = unsafe { OwnedFd::from_raw_fd(STATUS_FD) };
    let _ = sys::set_cloexec(STATUS_FD);
    let err = match run(&status) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = sys::write_all_fd(status.as_fd(), format!("E{err}").as_bytes());
    1
}

enum Never {}

fn run(status: &OwnedFd) -> Result<Never, String> {
    caps::set_non_dumpable().map_err(|e| format!("make init non-dumpable: {e}"))?;
    let (raw, tasks, cgroup_pipe) = spawn::read_config()?;
    // Into the v1 hierarchies first (still in the host's view of /sys/fs/cgroup).
    spawn::join_tasks(&tasks)?;
    let cfg: InitConfig =
        serde_json::from_slice(&raw).map_err(|e| format!("parse init config: {e}"))?;
    drop(raw);
    let spec = &cfg.spec;
    // Built while the parent moves us into our cgroup (spawn's module docs).
    prepare_seccomp(spec)?;

    for (kind, path) in &spec.namespaces.join {
        join_namespace(kind, path)?;
    }
    // Everything from here on that depends on the cgroup (the cgroup namespace, cgroupfs,
    // the program) waits for the parent's word first.
    let mut cgroup_pipe = Some(cgroup_pipe);
    let mut enter_cgroup = || -> Result<(), String> {
        if let Some(pipe) = cgroup_pipe.take() {
            spawn::wait_cgroup_joined(pipe)?;
            if spec.namespaces.cgroup {
                sys::unshare(libc::CLONE_NEWCGROUP)
                    .map_err(|e| format!("new cgroup namespace: {e}"))?;
            }
        }
        Ok(())
    };

    let root =
        rootfs::mount_rootfs(spec, &cfg.rootfs_mount, &cfg.state_dir).map_err(|e| e.to_string())?;
    rootfs::setup_mounts_with(root.as_fd(), spec, &mut || {
        enter_cgroup().map_err(|message| rootfs::RootfsError::Cgroup { message })
    })
    .map_err(|e| e.to_string())?;
    enter_cgroup()?;
    let fifo = match &cfg.start_fifo {
        Some(p) => Some(
            sys::open(p, libc::O_PATH)
                .map_err(|e| format!("open start fifo {}: {e}", p.display()))?,
        ),
        None => None,
    };
    rootfs::pivot(root.as_fd(), spec.readonly_rootfs).map_err(|e| e.to_string())?;
    drop(root);
    // Namespaced sysctls (validated: only the container's own ipc/net namespaces) and the
    // OOM score, through the container's procfs.
    for (key, value) in &spec.sysctl {
        set_sysctl(key, value)?;
    }
    if let Some(adj) = spec.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("set oom_score_adj {adj}: {e}"))?;
    }

    if spec.namespaces.uts {
        sys::sethostname(spec.effective_hostname()).map_err(|e| format!("set hostname: {e}"))?;
    }
    if spec.namespaces.net && spec.network == Network::Private {
        sys::loopback_up().map_err(|e| format!("bring loopback up: {e}"))?;
    }
    let fifo_fd = fifo.as_ref().map(|f| f.as_raw_fd());
    let (program, env) = prepare_process(spec, &[STATUS_FD], fifo_fd)?;

    if let Some(fifo) = fifo {
        let _ = sys::write_all_fd(status.as_fd(), b"R");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(sys::fd_path(fifo.as_fd()))
            .map_err(|e| format!("wait for start: {e}"))?;
        let _ = f.write_all(b"0");
    }

    apply_seccomp(spec)?;
    if spec.init {
        return run_as_init(&program, &spec.args, &env, status);
    }
    let err = sys::execve(&program, &spec.args, &env);
    Err(format!("exec {}: {err}", spec.args[0]))
}

/// `--init`: stays pid 1 as a minimal init (like tini, docker's `--init`) and runs the
/// program as its child. With the process profile (user, capabilities, no_new_privs,
/// seccomp) already applied, it blocks every signal, forks the program (which gets the old
/// mask back before exec), then waits for signals: SIGCHLD reaps every exited child (orphans
/// are reparented to pid 1), any other signal is forwarded to the program. When the program
/// ends, the init exits with its code (128 + signal when it was killed) and the kernel ends
/// the rest of the pid namespace. Blocking the signals (instead of leaving them at their
/// default action, which pid 1 ignores) is what lets SIGTERM from outside the namespace, as
/// `berth stop` sends it, reach the init and so the program.
fn run_as_init(
    program: &str,
    args: &[String],
    env: &[String],
    status: &OwnedFd,
) -> Result<Never, String> {
    let all = sys::SigSet::full();
    let old =
        sys::sigprocmask(libc::SIG_SETMASK, &all).map_err(|e| format!("block signals: {e}"))?;
    match sys::clone_process(0).map_err(|e| format!("fork the program: {e}"))? {
        sys::Forked::Child => {
            let err = match sys::sigprocmask(libc::SIG_SETMASK, &old) {
                Ok(_) => sys::execve(program, args, env),
                Err(e) => e,
            };
            // The report pipe is close-on-exec: the spawner sees EOF once the program runs.
            let _ = sys::write_all_fd(
                status.as_fd(),
                format!("Eexec {}: {err}", args[0]).as_bytes(),
            );
            sys::exit_now(127)
        }
        sys::Forked::Parent(child) => {
            // Only the program's copy of the report pipe may keep it open.
            // SAFETY: fd 4 is the report pipe, owned by `main`'s OwnedFd, which this
            // function never returns to: nothing uses or closes it again.
            unsafe { libc::close(status.as_raw_fd()) };
            let code = reap_until_exit(child, &all);
            sys::exit_now(code)
        }
    }
}

/// The init's loop: reaps every child, forwards other signals to `child`, and returns the
/// exit code once `child` has ended.
fn reap_until_exit(child: i32, waited: &sys::SigSet) -> i32 {
    loop {
        let sig = match sys::sigwait(waited) {
            Ok(sig) => sig,
            // Cannot happen with a valid set; reap what there is and carry on.
            Err(_) => libc::SIGCHLD,
        };
        if sig != libc::SIGCHLD {
            let _ = sys::kill(child, sig);
            continue;
        }
        // SIGCHLDs coalesce: collect every child that has exited.
        while let Ok((pid, st)) = sys::waitpid(-1, libc::WNOHANG) {
            if pid <= 0 {
                break;
            }
            if pid == child {
                return if libc::WIFSIGNALED(st) {
                    128 + libc::WTERMSIG(st)
                } else {
                    libc::WEXITSTATUS(st)
                };
            }
        }
    }
}

/// The process half of the profile, shared by the init and `berth exec`: rlimits, user
/// (names from the container's files: call after entering its root), `HOME`/`HOSTNAME`,
/// program lookup, closing every fd but stdio and `keep` (`extra` too, if given), the
/// bounding set, no_new_privs, user switch with the capability sets, and cwd (verified).
/// Returns the program path and environment; the caller applies seccomp and execs.
pub fn prepare_process(
    spec: &ContainerSpec,
    keep: &[i32],
    extra: Option<i32>,
) -> Result<(String, Vec<String>), String> {
    for r in &spec.rlimits {
        sys::setrlimit(r.resource, r.soft, r.hard)
            .map_err(|e| format!("set rlimit {}: {e}", r.resource))?;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let group = std::fs::read_to_string("/etc/group").ok();
    let mut ids = crate::runtime::user::resolve(&spec.user, passwd.as_deref(), group.as_deref())
        .map_err(|e| e.to_string())?;
    // OCI `additionalGids` on top of the groups from the container's /etc/group.
    for g in &spec.additional_gids {
        if !ids.groups.contains(g) {
            ids.groups.push(*g);
        }
    }
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", ids.home));
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", spec.effective_hostname()));
    }
    let program = find_program(&spec.args[0], &env)?;

    // Only stdio and the (close-on-exec) report fds survive: the program starts with stdio
    // only (CVE-2024-21626).
    let mut keep: Vec<i32> = keep.to_vec();
    keep.extend(extra);
    close_others(&keep)?;

    caps::drop_bounding(spec.capabilities, caps::last_cap())
        .map_err(|e| format!("drop bounding capabilities: {e}"))?;
    if spec.no_new_privs {
        caps::set_no_new_privs().map_err(|e| format!("set no_new_privs: {e}"))?;
    } else {
        // Without no_new_privs the filter can only be installed while CAP_SYS_ADMIN is
        // still effective, i.e. before the capability sets shrink (OCI bundles only).
        apply_seccomp(spec)?;
    }
    caps::switch_user_with(
        &ids,
        spec.capabilities,
        spec.effective,
        spec.permitted,
        spec.inheritable,
        spec.ambient,
    )
    .map_err(|e| format!("switch to user {}:{}: {e}", ids.uid, ids.gid))?;

    // berth's runtime ignores SIGPIPE; the program starts with the default, as under runc.
    sys::default_signal_action(libc::SIGPIPE).map_err(|e| format!("reset SIGPIPE: {e}"))?;
    std::env::set_current_dir(&spec.cwd).map_err(|e| format!("cwd {}: {e}", spec.cwd))?;
    verify_cwd(&spec.cwd)?;
    Ok((program, env))
}

/// Builds the default seccomp filter (`host::seccomp`) once per process when the spec asks
/// for it, so that building it can overlap with waiting for the cgroup.
pub fn prepare_seccomp(spec: &ContainerSpec) -> Result<(), String> {
    if spec.seccomp {
        default_filter()?;
    }
    Ok(())
}

fn default_filter() -> Result<&'static crate::host::seccomp::BpfProgram, String> {
    use crate::host::seccomp;
    static FILTER: std::sync::OnceLock<seccomp::BpfProgram> = std::sync::OnceLock::new();
    if let Some(f) = FILTER.get() {
        return Ok(f);
    }
    let built = seccomp::Arch::native()
        .and_then(seccomp::default_filter)
        .map_err(|e| format!("build seccomp filter: {e}"))?;
    Ok(FILTER.get_or_init(|| built))
}

/// Installs the default seccomp filter when the spec asks for it: the last step before
/// exec, after no_new_privs and the capability changes.
pub fn apply_seccomp(spec: &ContainerSpec) -> Result<(), String> {
    static APPLIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !spec.seccomp || APPLIED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    let filter = default_filter()?;
    crate::host::seccomp::apply(filter).map_err(|e| format!("apply seccomp filter: {e}"))
}

fn join_namespace(kind: &str, path: &Path) -> Result<(), String> {
    let flag = match kind {
        "network" | "net" => libc::CLONE_NEWNET,
        "ipc" => libc::CLONE_NEWIPC,
        "uts" => libc::CLONE_NEWUTS,
        "mount" | "mnt" => libc::CLONE_NEWNS,
        "cgroup" => libc::CLONE_NEWCGROUP,
        other => return Err(format!("joining a {other} namespace is not supported")),
    };
    let fd = sys::open(path, libc::O_RDONLY)
        .map_err(|e| format!("open namespace {}: {e}", path.display()))?;
    sys::setns(fd.as_fd(), flag)
        .map_err(|e| format!("join {kind} namespace {}: {e}", path.display()))
}

/// Writes one namespaced sysctl. `/proc/sys` may be a read-only bind by now, so the value
/// is written through a private, temporary procfs mount of the container's pid namespace.
fn set_sysctl(key: &str, value: &str) -> Result<(), String> {
    let rel = key.replace('.', "/");
    let direct = format!("/proc/sys/{rel}");
    if std::fs::write(&direct, value).is_ok() {
        return Ok(());
    }
    let tmp = "/dev/.berth-sysctl";
    std::fs::create_dir_all(tmp).map_err(|e| format!("sysctl {key}: {e}"))?;
    let r = sys::mount(
        Some("proc"),
        tmp,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(|e| format!("sysctl {key}: mount proc: {e}"))
    .and_then(|()| {
        let w = std::fs::write(format!("{tmp}/sys/{rel}"), value)
            .map_err(|e| format!("sysctl {key}={value}: {e}"));
        let _ = sys::umount2(tmp, libc::MNT_DETACH);
        w
    });
    let _ = std::fs::remove_dir(tmp);
    r
}

/// Closes every fd above 2 except `keep`.
fn close_others(keep: &[i32]) -> Result<(), String> {
    let hi = keep.iter().copied().max().unwrap_or(2);
    for fd in 3..hi {
        if !keep.contains(&fd) && sys::fd_is_open(fd) {
            // SAFETY: we own every fd of this process except stdio and `keep`.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    let first = u32::try_from(hi + 1).unwrap_or(u32::MAX);
    sys::close_from(first).map_err(|e| format!("close inherited fds: {e}"))
}

/// After chdir, the cwd must be reachable from the container's root (getcwd fails or
/// reports `(unreachable)` for a directory outside it, e.g. reached through a leaked fd).
fn verify_cwd(wanted: &str) -> Result<(), String> {
    match std::env::current_dir() {
        Ok(p) if p.is_absolute() && !p.to_string_lossy().starts_with("(unreachable)") => Ok(()),
        _ => Err(format!(
            "cwd {wanted} is outside the container's root: refusing to start"
        )),
    }
}

/// Finds `arg0` in the container's `PATH` (when it has no `/`).
pub fn find_program(arg0: &str, env: &[String]) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    if arg0.contains('/') {
        return Ok(arg0.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate.display().to_string());
        }
    }
    Err(format!(
        "exec {arg0}: not found in the container's PATH ({path})"
    ))
}
