//! Starts a container's init: `clone(2)` with the new namespaces from the calling
//! (single-threaded) process, then, in the child, a private mount propagation, a read-only
//! bind of the berth binary over itself and `execve` of it as `berth __init` (see
//! [`super::init`]). The parent joins the child to its cgroup *before* sending the config,
//! so the init's cgroup namespace is rooted at the container's cgroup.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use super::ContainerError;
use super::init::{CONFIG_FD, InitConfig, STATUS_FD};
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
    join_cgroup: &mut dyn FnMut(i32) -> Result<(), ContainerError>,
) -> Result<Spawned, ContainerError> {
    let config = serde_json::to_vec(cfg).map_err(|e| ContainerError::Setup {
        id: cfg.spec.id.clone(),
        message: format!("encode init config: {e}"),
    })?;
    spawn_helper(
        "__init",
        &cfg.spec.id,
        &config,
        clone_flags(cfg),
        stdio,
        join_cgroup,
    )
}

/// Clones a child with `flags` (plus a new mount namespace for the read-only binary) that
/// re-executes berth as `verb` with `config` on fd 3 and the report pipe on fd 4.
pub fn spawn_helper(
    verb: &str,
    id: &str,
    config: &[u8],
    flags: libc::c_ulong,
    stdio: Stdio,
    join_cgroup: &mut dyn FnMut(i32) -> Result<(), ContainerError>,
) -> Result<Spawned, ContainerError> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(ContainerError::io("read", "/proc/self/exe"))?;
    let exe_s = exe.display().to_string();
    if exe_s.ends_with(" (deleted)") {
        return Err(ContainerError::Setup {
            id: id.to_string(),
            message: format!("the berth binary {exe_s} was replaced: run the new one"),
        });
    }
    let (cfg_r, cfg_w) = sys::pipe().map_err(ContainerError::io("create", "pipe"))?;
    let (status_r, status_w) = sys::pipe().map_err(ContainerError::io("create", "pipe"))?;
    let flags = flags | libc::CLONE_NEWNS as libc::c_ulong;

    match sys::clone_process(flags).map_err(ContainerError::io("clone", "container init"))? {
        sys::Forked::Child => {
            let code = match child(&exe_s, verb, &cfg_r, &status_w, stdio) {
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
            let spawned = Spawned {
                pid,
                status: status_r,
            };
            if let Err(e) = join_cgroup(pid) {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = sys::waitpid(pid, 0);
                return Err(e);
            }
            let mut w = std::fs::File::from(cfg_w);
            if let Err(e) = w.write_all(config) {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = sys::waitpid(pid, 0);
                return Err(ContainerError::io("send config to", "container init")(e));
            }
            Ok(spawned)
        }
    }
}

enum Never {}

/// Runs in the cloned child: stdio, fds 3/4, private mounts, read-only berth binary, exec.
fn child(
    exe: &str,
    verb: &str,
    cfg_r: &OwnedFd,
    status_w: &OwnedFd,
    stdio: Stdio,
) -> Result<Never, String> {
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
    sys::cloexec_from(5).map_err(|e| format!("close inherited fds: {e}"))?;

    sys::mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(|e| format!("make mounts private: {e}"))?;
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
