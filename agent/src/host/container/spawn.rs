//! Starts a container's init: `clone(2)` with the new namespaces from the calling
//! (single-threaded) process, then, in the child, a private mount propagation, a read-only
//! bind of the berth binary over itself and `execve` of it as `berth __init` (see
//! [`super::init`]).
//!
//! The config pipe (fd 3 of the helper) carries a little-endian `u32` length, the config,
//! and later one byte, [`CGROUP_JOINED`], once the parent has moved the child into its
//! cgroup. Moving a process between cgroups waits for an RCU grace period in the kernel
//! (5-15 ms here, on cgroup v1 and v2 alike), so the parent sends the config first and the
//! helper does everything that does not depend on its cgroup (exec, parsing, building the
//! seccomp filter, most of the rootfs) meanwhile; it reads the byte
//! ([`wait_cgroup_joined`]) before it makes its cgroup namespace, mounts cgroupfs, forks or
//! execs. EOF without the byte means the parent failed or died: the helper gives up.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use super::init::{CONFIG_FD, InitConfig, STATUS_FD};
use super::{ContainerError, SelfJoin};

/// The byte the parent sends on the config pipe once the helper is in its cgroup.
pub const CGROUP_JOINED: u8 = b'C';

/// The largest config the helpers accept (a spec is a few KiB).
const MAX_CONFIG: usize = 16 << 20;

/// In a helper: reads the length-prefixed config and the length-prefixed list of cgroup v1
/// `tasks` files to join (see [`join_tasks`]) from fd 3, and returns them with the pipe,
/// which [`wait_cgroup_joined`] reads again later.
pub fn read_config() -> Result<(Vec<u8>, Vec<PathBuf>, std::fs::File), String> {
    use std::os::fd::FromRawFd;
    // SAFETY: fd 3 is the config pipe the spawner made for this helper; nothing else owns it.
    let mut f = unsafe { std::fs::File::from_raw_fd(CONFIG_FD) };
    let mut read_part = |what: &str| -> Result<Vec<u8>, String> {
        let mut len = [0u8; 4];
        f.read_exact(&mut len)
            .map_err(|e| format!("read {what} length: {e}"))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_CONFIG {
            return Err(format!("{what} of {len} bytes is too large"));
        }
        let mut raw = vec![0u8; len];
        f.read_exact(&mut raw)
            .map_err(|e| format!("read {what}: {e}"))?;
        Ok(raw)
    };
    let raw = read_part("config")?;
    let tasks = String::from_utf8(read_part("cgroup list")?)
        .map_err(|e| format!("cgroup list: {e}"))?
        .lines()
        .map(PathBuf::from)
        .collect();
    Ok((raw, tasks, f))
}

/// In a (single-threaded) helper: moves this process into each cgroup v1 hierarchy by
/// writing `0` to the `tasks` files ([`super::SelfJoin`]).
pub fn join_tasks(tasks: &[PathBuf]) -> Result<(), String> {
    for t in tasks {
        std::fs::OpenOptions::new()
            .write(true)
            .open(t)
            .and_then(|mut f| f.write_all(b"0"))
            .map_err(|e| format!("join cgroup {}: {e}", t.display()))?;
    }
    Ok(())
}

/// In a helper: blocks until the parent reports that it moved this process into the
/// container's cgroup, then closes the pipe.
pub fn wait_cgroup_joined(mut pipe: std::fs::File) -> Result<(), String> {
    let mut b = [0u8; 1];
    loop {
        match pipe.read(&mut b) {
            Ok(1) if b[0] == CGROUP_JOINED => return Ok(()),
            Ok(0) => {
                return Err("the runtime ended before moving the container into its cgroup".into());
            }
            Ok(_) => return Err(format!("unexpected byte {:#04x} on the config pipe", b[0])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("wait for the container's cgroup: {e}")),
        }
    }
}
use crate::host::sys;
use crate::runtime::spec::Network;

/// Standard streams for the container (`None` = inherit the caller's).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdio {
    /// fd for the container's stdin.
    pub stdin: Option<RawFd>,
    /// fd for the container's stdout.
    pub stdout: Option<RawFd>,
    /// fd for the container's stderr.
    pub stderr: Option<RawFd>,
}

/// A spawned init whose setup report has not been read yet.
pub struct Spawned {
    /// Host pid of the container's init.
    pub pid: i32,
    status: OwnedFd,
}

/// How far the init got.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// The program was exec'd.
    Running,
    /// Set up; waits on the start fifo.
    Created,
}

/// Namespace flags for `clone`: mount always; the others as the spec says (the cgroup
/// namespace is made by the init after it was moved into its cgroup).
fn clone_flags(cfg: &InitConfig) -> libc::c_ulong {
    let ns = &cfg.spec.namespaces;
    let joined = |k: &str| {
        ns.join
            .iter()
            .any(|(t, _)| t == k || (k == "net" && t == "network"))
    };
    let mut flags = libc::CLONE_NEWNS;
    if ns.pid {
        flags |= libc::CLONE_NEWPID;
    }
    if ns.uts && !joined("uts") {
        flags |= libc::CLONE_NEWUTS;
    }
    if ns.ipc && !joined("ipc") {
        flags |= libc::CLONE_NEWIPC;
    }
    if ns.net && cfg.spec.network == Network::Private && !joined("net") {
        flags |= libc::CLONE_NEWNET;
    }
    flags as libc::c_ulong
}

/// Spawns the init. `join_cgroup` is called with the child's pid before the child may
/// continue. The caller must be single-threaded.
pub fn spawn(
    cfg: &InitConfig,
    stdio: Stdio,
    self_join: Option<&SelfJoin>,
    join_cgroup: &mut dyn FnMut(i32) -> Result<(), ContainerError>,
) -> Result<Spawned, ContainerError> {
    let config = serde_json::to_vec(cfg).map_err(|e| ContainerError::Setup {
        id: cfg.spec.id.clone(),
        message: format!("encode init config: {e}"),
    })?;
    // `--init` keeps the init as the container's pid 1 for its whole life: that must be the
    // berth re-executed from a read-only bind, never a fork of the caller's image.
    let verb = if cfg.spec.init { INIT_REEXEC } else { "__init" };
    spawn_helper(
        verb,
        &cfg.spec.id,
        &config,
        clone_flags(cfg),
        stdio,
        self_join,
        join_cgroup,
    )
}

/// The verb [`spawn`] gives [`spawn_helper`] for an init that must be berth re-executed as
/// `__init` (`--init`) even where inits normally run in the cloned child.
const INIT_REEXEC: &str = "__init (re-executed)";

/// Clones a child with `flags` (plus a new mount namespace for the read-only binary) that
/// re-executes berth as `verb` with `config` on fd 3 and the report pipe on fd 4.
pub fn spawn_helper(
    verb: &str,
    id: &str,
    config: &[u8],
    flags: libc::c_ulong,
    stdio: Stdio,
    self_join: Option<&SelfJoin>,
    join_cgroup: &mut dyn FnMut(i32) -> Result<(), ContainerError>,
) -> Result<Spawned, ContainerError> {
    // The init runs in the cloned child itself where it can start the program through the
    // trampoline (`init`'s module docs); everything else is berth re-executed.
    let in_process = verb == "__init" && super::init::in_process();
    let verb = if verb == INIT_REEXEC { "__init" } else { verb };
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(ContainerError::io("read", "/proc/self/exe"))?;
    let exe_s = exe.display().to_string();
    if !in_process && exe_s.ends_with(" (deleted)") {
        return Err(ContainerError::Setup {
            id: id.to_string(),
            message: format!("the berth binary {exe_s} was replaced: run the new one"),
        });
    }
    let (cfg_r, cfg_w) = sys::pipe().map_err(ContainerError::io("create", "pipe"))?;
    let (status_r, status_w) = sys::pipe().map_err(ContainerError::io("create", "pipe"))?;
    let flags = flags | libc::CLONE_NEWNS as libc::c_ulong;

    // Into its cgroup at birth (v2) and by itself (v1) where the host allows it; else the
    // parent moves it (`join_cgroup`), the slow way.
    let mut tasks: &[PathBuf] = &[];
    let forked = match self_join {
        Some(j) => match &j.clone_into {
            None if j.tasks.is_empty() => None,
            None => {
                tasks = &j.tasks;
                Some(
                    sys::clone_process(flags)
                        .map_err(ContainerError::io("clone", "container init"))?,
                )
            }
            Some(dir) => {
                let fd = sys::open(dir, libc::O_PATH | libc::O_DIRECTORY)
                    .map_err(ContainerError::io("open cgroup", dir.display()))?;
                match sys::clone_into_cgroup(flags, fd.as_fd()) {
                    Ok(f) => {
                        tasks = &j.tasks;
                        Some(f)
                    }
                    // An older kernel: no clone3 or no CLONE_INTO_CGROUP.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
                        ) =>
                    {
                        None
                    }
                    Err(e) => return Err(ContainerError::io("clone", "container init")(e)),
                }
            }
        },
        None => None,
    };
    let parent_joins = forked.is_none();
    let forked = match forked {
        Some(f) => f,
        None => sys::clone_process(flags).map_err(ContainerError::io("clone", "container init"))?,
    };
    match forked {
        sys::Forked::Child => {
            let exe = (!in_process).then_some(exe_s.as_str());
            let code = match child(exe, verb, &cfg_r, &status_w, stdio) {
                Ok(never) => match never {},
                Err(msg) => {
                    let _ = sys::write_all_fd(status_w.as_fd(), format!("E{msg}").as_bytes());
                    1
                }
            };
            sys::exit_now(code)
        }
        sys::Forked::Parent(pid) => {
            drop(cfg_r);
            drop(status_w);
            let mut spawned = Spawned {
                pid,
                status: status_r,
            };
            let fail = |e: ContainerError| {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = sys::waitpid(pid, 0);
                e
            };
            // Config first: the helper works on it while the kernel moves it into its
            // cgroup (see the module docs).
            let mut w = std::fs::File::from(cfg_w);
            let list = tasks
                .iter()
                .map(|t| t.display().to_string())
                .collect::<Vec<_>>()
                .join("\n");
            let sent = [config, list.as_bytes()].iter().try_for_each(|part| {
                let len = u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes();
                w.write_all(&len).and_then(|()| w.write_all(part))
            });
            if let Err(e) = sent {
                // A helper that failed early has said why on the status pipe.
                drop(w);
                let _ = sys::kill(spawned.pid, libc::SIGKILL);
                return Err(match spawned.wait_ready(id) {
                    Err(reported @ ContainerError::Setup { .. }) => reported,
                    _ => {
                        let _ = sys::waitpid(spawned.pid, 0);
                        ContainerError::io("send config to", "container init")(e)
                    }
                });
            }
            if parent_joins && let Err(e) = join_cgroup(pid) {
                return Err(fail(e));
            }
            if let Err(e) = w.write_all(&[CGROUP_JOINED]) {
                return Err(fail(ContainerError::io("signal", "container init")(e)));
            }
            drop(w);
            Ok(spawned)
        }
    }
}

enum Never {}

/// Runs in the cloned child: stdio, fds 3/4, private mounts, then either the init in this
/// process (`exe` is `None`) or a read-only bind of the berth binary `exe` and its exec.
fn child(
    exe: Option<&str>,
    verb: &str,
    cfg_r: &OwnedFd,
    status_w: &OwnedFd,
    stdio: Stdio,
) -> Result<Never, String> {
    if exe.is_none() {
        // Non-dumpable before anything else, as the re-executed init is from its start.
        crate::host::caps::set_non_dumpable()
            .map_err(|e| format!("make init non-dumpable: {e}"))?;
    }
    // Move the pipes well above the fds we are about to overwrite, then into place.
    let hi = |fd: RawFd| -> Result<RawFd, String> {
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd we own.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
        if n < 0 {
            Err(format!("dup: {}", std::io::Error::last_os_error()))
        } else {
            Ok(n)
        }
    };
    let cfg_hi = hi(cfg_r.as_raw_fd())?;
    let status_hi = hi(status_w.as_raw_fd())?;
    let stdio_hi: Vec<(RawFd, RawFd)> = [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)]
        .into_iter()
        .filter_map(|(src, dst)| src.map(|s| hi(s).map(|h| (h, dst))))
        .collect::<Result<_, _>>()?;
    for (src, dst) in stdio_hi {
        sys::dup2(src, dst).map_err(|e| format!("set up stdio: {e}"))?;
    }
    sys::dup2(cfg_hi, CONFIG_FD).map_err(|e| format!("dup config pipe: {e}"))?;
    sys::dup2(status_hi, STATUS_FD).map_err(|e| format!("dup status pipe: {e}"))?;
    if exe.is_some() {
        sys::cloexec_from(5).map_err(|e| format!("close inherited fds: {e}"))?;
    } else {
        // No exec closes them: the caller's fds go now (among them the config pipe's write
        // end, whose EOF tells the init that its parent gave up).
        sys::close_from(5).map_err(|e| format!("close inherited fds: {e}"))?;
    }

    sys::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| format!("make mounts private: {e}"))?;
    let Some(exe) = exe else {
        // `init::main_in_process` reports its own errors on fd 4 and never returns on success.
        sys::exit_now(i32::from(super::init::main_in_process()))
    };
    sys::mount(Some(exe), exe, None, libc::MS_BIND, None)
        .map_err(|e| format!("bind berth binary: {e}"))?;
    sys::mount(
        None,
        exe,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .map_err(|e| format!("make berth binary read-only: {e}"))?;
    let argv = ["berth".to_string(), verb.to_string()];
    let env: [String; 0] = [];
    let err = sys::execve(exe, &argv, &env);
    Err(format!("exec berth init {exe}: {err}"))
}

impl Spawned {
    /// Reads the init's report: EOF after nothing = the program runs; `R` = waiting for
    /// start; `E…` = setup failed (the init is reaped).
    pub fn wait_ready(&mut self, id: &str) -> Result<Ready, ContainerError> {
        let mut buf = Vec::new();
        let mut f = std::fs::File::from(
            self.status
                .try_clone()
                .map_err(ContainerError::io("dup", "status pipe"))?,
        );
        let mut byte = [0u8; 1];
        loop {
            match f.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => {
                    if buf.is_empty() && byte[0] == b'R' {
                        return Ok(Ready::Created);
                    }
                    buf.push(byte[0]);
                    let _ = f.read_to_end(&mut buf);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ContainerError::io("read", "status pipe")(e)),
            }
        }
        if buf.is_empty() {
            return Ok(Ready::Running);
        }
        let _ = sys::waitpid(self.pid, 0);
        let msg = String::from_utf8_lossy(buf.strip_prefix(b"E").unwrap_or(&buf)).into_owned();
        Err(ContainerError::Setup {
            id: id.to_string(),
            message: msg,
        })
    }

    /// Waits for the rest of the report after [`Ready::Created`] (EOF = exec'd).
    pub fn wait_exec(&mut self, id: &str) -> Result<(), ContainerError> {
        match self.wait_ready(id)? {
            Ready::Running => Ok(()),
            Ready::Created => Err(ContainerError::Setup {
                id: id.to_string(),
                message: "init reported ready twice".into(),
            }),
        }
    }
}

/// Where a container's rootfs is mounted before `pivot_root`.
pub fn rootfs_mount(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("rootfs")
}
