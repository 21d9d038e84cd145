//! `berth exec`: runs another program in a running container with the same profile as its
//! init: its namespaces (ipc, uts, net, pid, cgroup, mount), its cgroup, its capabilities,
//! no_new_privs, user, rlimits and seccomp.
//!
//! The helper is berth re-executed as `berth __exec` from a read-only bind of the binary (in
//! a private mount namespace of its own, like the init), non-dumpable from its first
//! instruction. It opens the init's namespace files, checks the init's start time again
//! (so a reused pid is never joined), joins them, and forks the program's process: the only
//! berth code visible in the container's pid namespace runs from a read-only, non-dumpable
//! image and execs right away.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::init::STATUS_FD;
use super::{Cgroups, ContainerError, Store, pty, spawn};
use crate::host::{caps, sys};
use crate::runtime::spec::ContainerSpec;
use crate::runtime::state::{self, ProcessId, Status};

/// What the exec helper needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The container's spec with the exec's args, env, cwd and user in place.
    pub spec: ContainerSpec,
    /// The container's init, to join.
    pub init: ProcessId,
    /// `/proc` of the host (a parameter for tests).
    pub proc_root: PathBuf,
    /// Give the program a terminal of the container's devpts and relay it ([`super::pty`]).
    #[serde(default)]
    pub tty: bool,
}

/// What to run: args, extra env, and optional cwd and user overrides.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Program and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` added to the container's env.
    pub env: Vec<String>,
    /// Working directory (default: the container's).
    pub cwd: Option<String>,
    /// User (default: the container's).
    pub user: Option<String>,
    /// Keep stdin attached.
    pub interactive: bool,
    /// Allocate a terminal in the container for the program and relay the caller's.
    pub tty: bool,
}

/// Runs `req` in the container `key`, waits for it, and returns its exit code.
pub fn exec(
    store: &Store,
    cgroups: &dyn Cgroups,
    key: &str,
    req: ExecRequest,
) -> Result<i32, ContainerError> {
    let listed = store.get(key)?;
    let id = listed.state.spec.id.clone();
    listed
        .status
        .require(&id, "exec in", |s| s == Status::Running, ": start it first")?;
    let init = listed
        .state
        .init
        .ok_or_else(|| ContainerError::NotFound(id.clone()))?;
    let mut spec = listed.state.spec.clone();
    spec.args = req.args;
    for e in &req.env {
        spec.set_env(e);
    }
    if let Some(cwd) = req.cwd {
        spec.cwd = cwd;
    }
    if let Some(user) = req.user {
        spec.user = user;
    }
    spec.validate()?;
    let cfg = ExecConfig {
        spec: spec.clone(),
        init,
        proc_root: PathBuf::from("/proc"),
        tty: req.tty,
    };
    let config = serde_json::to_vec(&cfg).map_err(|e| ContainerError::Setup {
        id: id.clone(),
        message: format!("encode exec config: {e}"),
    })?;
    let devnull = if req.interactive {
        None
    } else {
        Some(
            sys::open(std::path::Path::new("/dev/null"), libc::O_RDONLY)
                .map_err(ContainerError::io("open", "/dev/null"))?,
        )
    };
    let stdio = spawn::Stdio {
        stdin: devnull.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
        ..Default::default()
    };
    let self_join = cgroups.self_join(&spec);
    let mut helper = spawn::spawn_helper(
        "__exec",
        &id,
        &config,
        0,
        stdio,
        self_join.as_ref(),
        &mut |pid| cgroups.add(&spec, pid),
    )?;
    drop(devnull);
    super::forward_signals_to(helper.pid);
    helper.wait_exec(&id)?;
    let (_, status) =
        sys::waitpid(helper.pid, 0).map_err(ContainerError::io("wait for", "exec helper"))?;
    Ok(super::exit_from_status(status, false).code)
}

/// Entry point of `berth __exec`: joins the container, forks the program, waits for it and
/// exits with its code; reports setup failures on fd 4.
pub fn main() -> u8 {
    // SAFETY: fd 4 is the report pipe the spawner set up for us.
    let status = unsafe { OwnedFd::from_raw_fd(STATUS_FD) };
    let _ = sys::set_cloexec(STATUS_FD);
    match run(&status) {
        Ok(code) => code,
        Err(e) => {
            let _ = sys::write_all_fd(status.as_fd(), format!("E{e}").as_bytes());
            1
        }
    }
}

fn run(status: &OwnedFd) -> Result<u8, String> {
    caps::set_non_dumpable().map_err(|e| format!("make exec helper non-dumpable: {e}"))?;
    let (raw, tasks, cgroup_pipe) = spawn::read_config()?;
    // Before joining the container's mount namespace, whose /sys/fs/cgroup is read-only.
    spawn::join_tasks(&tasks)?;
    let cfg: ExecConfig =
        serde_json::from_slice(&raw).map_err(|e| format!("parse exec config: {e}"))?;
    super::init::prepare_seccomp(&cfg.spec)?;
    let pid = cfg.init.pid;
    let ns = &cfg.spec.namespaces;
    let mut fds = Vec::new();
    for (name, flag, wanted) in [
        ("cgroup", libc::CLONE_NEWCGROUP, ns.cgroup),
        ("ipc", libc::CLONE_NEWIPC, ns.ipc),
        ("uts", libc::CLONE_NEWUTS, ns.uts),
        (
            "net",
            libc::CLONE_NEWNET,
            ns.net && cfg.spec.network == crate::runtime::spec::Network::Private,
        ),
        ("pid", libc::CLONE_NEWPID, ns.pid),
        ("mnt", libc::CLONE_NEWNS, true),
    ] {
        if wanted {
            let path = cfg.proc_root.join(pid.to_string()).join("ns").join(name);
            let fd = sys::open(&path, libc::O_RDONLY)
                .map_err(|e| format!("open {}: {e}", path.display()))?;
            fds.push((name, flag, fd));
        }
    }
    // The fds are now bound to whatever process had the pid: make sure it is the init.
    if !state::same_process(cfg.init, sys::start_time(&cfg.proc_root, pid)) {
        return Err(format!("container {} is no longer running", cfg.spec.id));
    }
    for (name, flag, fd) in &fds {
        sys::setns(fd.as_fd(), *flag).map_err(|e| format!("join {name} namespace: {e}"))?;
    }
    drop(fds);
    // The program is forked from here: it must start in the container's cgroup.
    spawn::wait_cgroup_joined(cgroup_pipe)?;
    // Our root is the container's now: its devpts instance is at /dev/pts.
    let tty = match cfg.tty {
        true => Some((pty::open_in_root()?, pty::prepare_signals()?)),
        false => None,
    };
    match sys::clone_process(0).map_err(|e| format!("fork: {e}"))? {
        sys::Forked::Child => {
            let attached = match &tty {
                Some((p, mask)) => sys::sigprocmask(libc::SIG_SETMASK, mask)
                    .map_err(|e| format!("restore signal mask: {e}"))
                    .and_then(|_| pty::attach(p.peer.as_fd())),
                None => Ok(()),
            };
            let err = match attached.and_then(|()| exec_in_container(&cfg.spec)) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = sys::write_all_fd(status.as_fd(), format!("E{err}").as_bytes());
            sys::exit_now(127)
        }
        sys::Forked::Parent(child) => {
            super::forward_signals_to(child);
            let st = match tty {
                Some((p, mask)) => {
                    drop(p.peer);
                    pty::relay(p.master, child, &mask)?
                }
                None => sys::waitpid(child, 0).map_err(|e| format!("wait: {e}"))?.1,
            };
            let code = super::exit_from_status(st, false).code;
            Ok(u8::try_from(code).unwrap_or(255))
        }
    }
}

enum Never {}

fn exec_in_container(spec: &ContainerSpec) -> Result<Never, String> {
    let (program, env) = super::init::prepare_process(spec, &[STATUS_FD], None)?;
    super::init::apply_seccomp(spec)?;
    let err = sys::execve(&program, &spec.args, &env);
    Err(format!("exec {}: {err}", spec.args[0]))
}
