//! Containers on this host: their state dirs under `<data-dir>/containers/<id>/`, and the
//! operations of the CLI verbs (run in the foreground, run detached under a shim, list,
//! inspect, signal, stop, remove, exec).
//!
//! State dir layout: `state.json` (the [`ContainerState`], replaced atomically: write temp,
//! fsync, rename, fsync dir), `exit.json` (written once by whoever reaps the init), `lock`
//! (flock: one CLI at a time changes a container), `rootfs/` (mount point, only mounted inside
//! the container's own mount namespace), `upper/` and `work/` (overlay), `logs/`.
//! Processes are identified by pid *and* start time; a reused pid is never signalled.

pub mod exec;
pub mod init;
pub mod limits;
pub mod pty;
pub mod shim;
pub mod spawn;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::host::sys;
use crate::runtime::spec::{ContainerSpec, Rootfs};
use crate::runtime::state::{self, ContainerState, Exit, Observed, ProcessId, Status};
use crate::runtime::{ErrorKind, RuntimeError};

pub use limits::{Cgroups, HostCgroups, NoCgroups, SelfJoin};

/// Errors of container operations on this host.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The spec or state transition was refused.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A file or system operation failed.
    #[error("{op} {what}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The init could not set the container up (its own report).
    #[error("container {id}: {message}")]
    Setup {
        /// The container.
        id: String,
        /// The init's report.
        message: String,
    },
    /// No container matches.
    #[error("no container {0:?}: see `berth ps -a`")]
    NotFound(String),
    /// More than one container matches a prefix.
    #[error("{0:?} matches several containers: give more of the id")]
    Ambiguous(String),
    /// A container with this id or name exists.
    #[error("a container named {0:?} exists: remove it with `berth rm` or pick another name")]
    Exists(String),
    /// A cgroup operation failed.
    #[error("cgroup {path}: {message}")]
    Cgroup {
        /// The cgroup.
        path: String,
        /// What failed.
        message: String,
    },
}

impl ContainerError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Runtime(e) => e.kind(),
            Self::Io { .. } | Self::Cgroup { .. } => ErrorKind::Internal,
            Self::Setup { .. } => ErrorKind::InvalidInput,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Ambiguous(_) => ErrorKind::InvalidInput,
            Self::Exists(_) => ErrorKind::Conflict,
        }
    }

    /// Adds context to an io error.
    pub fn io(
        op: &'static str,
        what: impl std::fmt::Display,
    ) -> impl FnOnce(io::Error) -> ContainerError {
        let what = what.to_string();
        move |source| ContainerError::Io { op, what, source }
    }
}

/// Reads the clock: the runtime records creation and exit times (the edge where time enters).
#[allow(clippy::disallowed_methods)] // the runtime's clock edge: timestamps for state and logs
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The containers under one data dir.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    proc_root: PathBuf,
}

/// An exclusive lock on one container's state (released on drop).
pub struct Lock(#[allow(dead_code)] File);

impl Store {
    /// The store under `<data_dir>/containers`.
    /// A store kept directly in `root` (OCI `--root`): `<root>/<id>/`.
    pub fn at(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// The store under `<data_dir>/containers`.
    pub fn new(data_dir: &Path) -> Store {
        Store {
            root: data_dir.join("containers"),
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// The state dir of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates the state dir of a new container (0700), refusing duplicate ids and names.
    pub fn create(&self, spec: &ContainerSpec) -> Result<PathBuf, ContainerError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(ContainerError::io("create", self.root.display()))?;
        if let Some(name) = &spec.name
            && self
                .ids()?
                .iter()
                .any(|id| self.read(id).ok().and_then(|s| s.spec.name).as_deref() == Some(name))
        {
            return Err(ContainerError::Exists(name.clone()));
        }
        let dir = self.dir(&spec.id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(ContainerError::Exists(spec.id.clone()))
            }
            Err(e) => Err(ContainerError::io("create", dir.display())(e)),
        }
    }

    /// Ids of all containers.
    pub fn ids(&self) -> Result<Vec<String>, ContainerError> {
        let mut ids = Vec::new();
        match std::fs::read_dir(&self.root) {
            Ok(rd) => {
                for e in rd.flatten() {
                    if let Some(n) = e.file_name().to_str()
                        && e.path().join("state.json").exists()
                    {
                        ids.push(n.to_string());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ContainerError::io("list", self.root.display())(e)),
        }
        ids.sort();
        Ok(ids)
    }

    /// Finds a container by full id, name or unique id prefix.
    pub fn find(&self, key: &str) -> Result<String, ContainerError> {
        if key.is_empty() || key.contains('/') {
            return Err(ContainerError::NotFound(key.to_string()));
        }
        let ids = self.ids()?;
        if ids.iter().any(|i| i == key) {
            return Ok(key.to_string());
        }
        let by_name: Vec<&String> = ids
            .iter()
            .filter(|i| self.read(i).ok().and_then(|s| s.spec.name).as_deref() == Some(key))
            .collect();
        if let [one] = by_name.as_slice() {
            return Ok((*one).clone());
        }
        let by_prefix: Vec<&String> = ids.iter().filter(|i| i.starts_with(key)).collect();
        match by_prefix.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ContainerError::NotFound(key.to_string())),
            _ => Err(ContainerError::Ambiguous(key.to_string())),
        }
    }

    /// Takes the container's lock (blocks while another berth holds it).
    pub fn lock(&self, id: &str) -> Result<Lock, ContainerError> {
        let path = self.dir(id).join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(ContainerError::io("open", path.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ContainerError::io("lock", path.display())(
                io::Error::last_os_error(),
            ));
        }
        Ok(Lock(f))
    }

    /// Reads the recorded state.
    pub fn read(&self, id: &str) -> Result<ContainerState, ContainerError> {
        let path = self.dir(id).join("state.json");
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ContainerError::NotFound(id.to_string())
            } else {
                ContainerError::io("read", path.display())(e)
            }
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ContainerError::io("parse", path.display())(io::Error::other(e)))
    }

    /// Replaces the recorded state atomically; `durable` adds the fsyncs that make it
    /// survive a host crash.
    pub fn write(&self, state: &ContainerState, durable: bool) -> Result<(), ContainerError> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| ContainerError::io("encode", "state")(io::Error::other(e)))?;
        write_atomic(&self.dir(&state.spec.id), "state.json", &bytes, durable)
    }

    /// Makes the container's state dir durable (fsync of `state.json` and the dir).
    pub fn sync(&self, id: &str) -> Result<(), ContainerError> {
        let dir = self.dir(id);
        File::open(dir.join("state.json"))
            .and_then(|f| f.sync_all())
            .and_then(|()| File::open(&dir).and_then(|d| d.sync_all()))
            .map_err(ContainerError::io("fsync", dir.display()))
    }

    /// The exit record the reaper wrote, if any.
    pub fn read_exit(&self, id: &str) -> Option<Exit> {
        let bytes = std::fs::read(self.dir(id).join("exit.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records how the container's program ended.
    pub fn write_exit(&self, id: &str, exit: &Exit, durable: bool) -> Result<(), ContainerError> {
        let bytes = serde_json::to_vec(exit)
            .map_err(|e| ContainerError::io("encode", "exit")(io::Error::other(e)))?;
        write_atomic(&self.dir(id), "exit.json", &bytes, durable)
    }

    /// The true status now: the record checked against the live process (pid + start time)
    /// and the exit file.
    pub fn observe(&self, st: &ContainerState) -> (Status, Option<Exit>) {
        let now = Observed {
            init_start_time: st
                .init
                .and_then(|p| sys::start_time(&self.proc_root, p.pid)),
            exit: self.read_exit(&st.spec.id),
            shim_alive: st
                .shim
                .is_some_and(|p| state::same_process(p, sys::start_time(&self.proc_root, p.pid))),
        };
        state::observe(st, now)
    }

    /// The start time of the process at `pid` now.
    pub fn start_time(&self, pid: i32) -> Option<u64> {
        sys::start_time(&self.proc_root, pid)
    }

    /// Signals the container's init if (and only if) it is still the recorded process.
    pub fn signal_init(&self, init: ProcessId, signal: i32) -> Result<bool, ContainerError> {
        if !state::same_process(init, self.start_time(init.pid)) {
            return Ok(false);
        }
        match sys::kill(init.pid, signal) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(ContainerError::io("signal", format!("pid {}", init.pid))(e)),
        }
    }

    /// Removes the state dir (upper dir and logs included).
    pub fn remove_dir(&self, id: &str) -> Result<(), ContainerError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContainerError::io("remove", dir.display())(e)),
        }
    }
}

/// Writes `name` in `dir` atomically: temp file, (fsync), rename, (fsync dir).
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    durable: bool,
) -> Result<(), ContainerError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let fin = dir.join(name);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(ContainerError::io("create", tmp.display()))?;
    f.write_all(bytes)
        .map_err(ContainerError::io("write", tmp.display()))?;
    if durable {
        f.sync_all()
            .map_err(ContainerError::io("fsync", tmp.display()))?;
    }
    drop(f);
    std::fs::rename(&tmp, &fin).map_err(ContainerError::io("rename", fin.display()))?;
    if durable {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(ContainerError::io("fsync", dir.display()))?;
    }
    Ok(())
}

/// Prepares the state dir for a new container: overlay upper/work and the rootfs mount point.
pub fn prepare_dirs(dir: &Path, spec: &ContainerSpec) -> Result<(), ContainerError> {
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o700);
    let mk = |p: PathBuf| {
        b.create(&p)
            .map_err(ContainerError::io("create", p.display()))
    };
    mk(spawn::rootfs_mount(dir))?;
    if let Rootfs::Overlay { lowers } = &spec.rootfs {
        for l in lowers {
            let s = l.display().to_string();
            if s.contains(':') || s.contains(',') || !l.is_absolute() {
                return Err(RuntimeError::InvalidSpec {
                    field: "rootfs",
                    reason: format!(
                        "overlay lower dir {s:?} must be absolute and contain no ':' or ','"
                    ),
                }
                .into());
            }
        }
        mk(dir.join("upper"))?;
        mk(dir.join("work"))?;
    }
    Ok(())
}

/// Turns a raw wait status into an [`Exit`].
pub fn exit_from_status(status: i32, oom_killed: bool) -> Exit {
    let now = unix_now();
    if libc::WIFSIGNALED(status) {
        Exit::from_signal(libc::WTERMSIG(status), oom_killed, now)
    } else {
        Exit {
            code: libc::WEXITSTATUS(status),
            signal: None,
            oom_killed,
            finished: now,
        }
    }
}

/// Options of a foreground or detached run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Remove the container when it ends.
    pub remove: bool,
    /// Keep stdin attached (foreground only); otherwise the container reads `/dev/null`.
    pub interactive: bool,
}

static FORWARD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 received by this process
/// to `pid`.
pub fn forward_signals_to(pid: i32) {
    FORWARD_PID.store(pid, std::sync::atomic::Ordering::SeqCst);
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installing a handler that only calls async-signal-safe `kill`.
        unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
    }
}

/// Runs a container in the foreground of the calling process and returns how it ended.
/// The caller must be single-threaded.
pub fn run_foreground(
    store: &Store,
    cgroups: &dyn Cgroups,
    spec: ContainerSpec,
    opts: &RunOptions,
) -> Result<Exit, ContainerError> {
    spec.validate()?;
    let dir = store.create(&spec)?;
    let result = run_foreground_in(store, cgroups, &dir, spec.clone(), opts);
    let cleanup = cgroups.remove(&spec);
    if opts.remove {
        store.remove_dir(&spec.id)?;
    }
    let exit = result?;
    cleanup?;
    Ok(exit)
}

fn run_foreground_in(
    store: &Store,
    cgroups: &dyn Cgroups,
    dir: &Path,
    spec: ContainerSpec,
    opts: &RunOptions,
) -> Result<Exit, ContainerError> {
    let durable = !opts.remove;
    prepare_dirs(dir, &spec)?;
    let mut st = ContainerState {
        spec: spec.clone(),
        status: Status::Creating,
        created: unix_now(),
        init: None,
        shim: None,
        cgroup: cgroups.path(&spec),
        bundle: None,
        exit: None,
    };
    store.write(&st, durable)?;
    cgroups.create(&spec)?;
    let devnull = if opts.interactive {
        None
    } else {
        Some(
            sys::open(Path::new("/dev/null"), libc::O_RDONLY)
                .map_err(ContainerError::io("open", "/dev/null"))?,
        )
    };
    let cfg = init::InitConfig {
        spec: spec.clone(),
        state_dir: dir.to_path_buf(),
        rootfs_mount: spawn::rootfs_mount(dir),
        start_fifo: None,
    };
    let stdio = spawn::Stdio {
        stdin: devnull.as_ref().map(|f| f.as_raw_fd()),
        ..Default::default()
    };
    let self_join = cgroups.self_join(&spec);
    let mut spawned = spawn::spawn(&cfg, stdio, self_join.as_ref(), &mut |pid| {
        cgroups.add(&spec, pid)
    })?;
    drop(devnull);
    forward_signals_to(spawned.pid);
    let ready = spawned.wait_ready(&spec.id);
    if let Err(e) = ready {
        st.status = Status::Stopped;
        let _ = store.write(&st, durable);
        return Err(e);
    }
    st.status = Status::Running;
    st.init = store.start_time(spawned.pid).map(|start_time| ProcessId {
        pid: spawned.pid,
        start_time,
    });
    store.write(&st, durable)?;
    let (_, status) =
        sys::waitpid(spawned.pid, 0).map_err(ContainerError::io("wait for", "container init"))?;
    FORWARD_PID.store(0, std::sync::atomic::Ordering::SeqCst);
    let exit = exit_from_status(status, cgroups.oom_killed(&spec));
    if opts.remove {
        // The state dir goes right away: nobody will read the records.
        return Ok(exit);
    }
    store.write_exit(&spec.id, &exit, durable)?;
    st.status = Status::Stopped;
    st.exit = Some(exit);
    store.write(&st, durable)?;
    Ok(exit)
}

/// A new random container id.
pub fn new_id() -> Result<String, ContainerError> {
    let bytes = sys::random16().map_err(ContainerError::io("read", "random bytes"))?;
    Ok(crate::runtime::id::new_id(bytes))
}

/// Containers whose records could not be read, with why.
pub type Unreadable = Vec<(String, ContainerError)>;

/// One container as `berth ps` and `berth inspect` show it: the record plus its true
/// status now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    /// The record.
    pub state: ContainerState,
    /// The true status now.
    pub status: Status,
    /// How it ended, when it has.
    pub exit: Option<Exit>,
}

impl Store {
    /// Every container with its true status (unreadable records are skipped and named in
    /// the second list, so one corrupt record does not hide the others).
    pub fn list(&self) -> Result<(Vec<Listed>, Unreadable), ContainerError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for id in self.ids()? {
            match self.read(&id) {
                Ok(state) => {
                    let (status, exit) = self.observe(&state);
                    out.push(Listed {
                        state,
                        status,
                        exit,
                    });
                }
                Err(e) => bad.push((id, e)),
            }
        }
        out.sort_by_key(|l| std::cmp::Reverse(l.state.created));
        Ok((out, bad))
    }

    /// One container by id, name or prefix, with its true status.
    pub fn get(&self, key: &str) -> Result<Listed, ContainerError> {
        let id = self.find(key)?;
        let state = self.read(&id)?;
        let (status, exit) = self.observe(&state);
        Ok(Listed {
            state,
            status,
            exit,
        })
    }
}

/// This host's name (the `host` column of `berth ps`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Starts a container under a new shim (`berth __shim`, in its own session so it outlives
/// the caller) and returns the init's host pid once the program runs.
pub fn run_detached(
    store: &Store,
    spec: ContainerSpec,
    remove: bool,
) -> Result<i32, ContainerError> {
    start_shim(store, spec, remove, None, None)
}

/// [`run_detached`] from a single-threaded CLI: the shim is forked from this process instead
/// of executing the berth binary again (one exec less to start a container). Falls back to
/// the exec when this process has more than one thread.
pub fn run_detached_forked(
    store: &Store,
    cgroups: &dyn Cgroups,
    spec: ContainerSpec,
    remove: bool,
) -> Result<i32, ContainerError> {
    start_shim(store, spec, remove, None, Some(cgroups))
}

/// OCI `create`: a shim whose init stops before exec until `start` reads its fifo; the
/// container shares the caller's stdio. Returns the init's pid.
pub fn create_oci(
    store: &Store,
    spec: ContainerSpec,
    bundle: &Path,
) -> Result<i32, ContainerError> {
    start_shim(store, spec, false, Some(bundle), None)
}

/// [`create_oci`] from a single-threaded CLI, forking the shim (see [`run_detached_forked`]).
pub fn create_oci_forked(
    store: &Store,
    cgroups: &dyn Cgroups,
    spec: ContainerSpec,
    bundle: &Path,
) -> Result<i32, ContainerError> {
    start_shim(store, spec, false, Some(bundle), Some(cgroups))
}

/// OCI `start`: lets a created container's init exec its program.
pub fn start_oci(store: &Store, id: &str) -> Result<(), ContainerError> {
    use std::io::Read;
    let _lock = store.lock(id)?;
    let st = store.read(id)?;
    let (status, _) = store.observe(&st);
    status.require(
        id,
        "start",
        Status::can_start,
        ": only a created container starts",
    )?;
    let fifo = shim::start_fifo(&store.dir(id));
    let mut f = File::open(&fifo).map_err(ContainerError::io("open", fifo.display()))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)
        .map_err(ContainerError::io("read", fifo.display()))?;
    let _ = std::fs::remove_file(&fifo);
    // The shim records `running` once it sees the exec; wait for it briefly so `state`
    // right after `start` agrees.
    wait_until(std::time::Duration::from_secs(2), || {
        store
            .read(id)
            .map(|s| s.status != Status::Created)
            .unwrap_or(true)
    });
    Ok(())
}

fn start_shim(
    store: &Store,
    spec: ContainerSpec,
    remove: bool,
    bundle: Option<&Path>,
    fork_with: Option<&dyn Cgroups>,
) -> Result<i32, ContainerError> {
    use std::os::unix::process::CommandExt;
    spec.validate()?;
    let dir = store.create(&spec)?;
    let started = (|| {
        prepare_dirs(&dir, &spec)?;
        let st = ContainerState {
            spec: spec.clone(),
            status: Status::Creating,
            created: unix_now(),
            init: None,
            shim: None,
            cgroup: None,
            bundle: bundle.map(Path::to_path_buf),
            exit: None,
        };
        // Not durable: if the host dies now, there is no container to account for.
        store.write(&st, false)?;
        if bundle.is_some() {
            let fifo = shim::start_fifo(&dir);
            let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
                .map_err(|e| ContainerError::io("create", fifo.display())(io::Error::other(e)))?;
            // SAFETY: valid C string.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(ContainerError::io("create", fifo.display())(
                    io::Error::last_os_error(),
                ));
            }
        }
        let (report_r, report_w) = sys::pipe().map_err(ContainerError::io("create", "pipe"))?;
        let mut shim_args = vec![store.root.display().to_string(), spec.id.clone()];
        if remove {
            shim_args.push("--rm".into());
        }
        if bundle.is_some() {
            shim_args.push("--oci".into());
        }
        if let Some(cgroups) = fork_with.filter(|_| sys::single_threaded()) {
            match sys::clone_process(0).map_err(ContainerError::io("fork", "shim"))? {
                sys::Forked::Child => {
                    // The shim: what `berth __shim` does, without executing berth again.
                    drop(report_r);
                    let code = shim::forked_main(&shim_args, bundle.is_none(), report_w, cgroups);
                    sys::exit_now(i32::from(code))
                }
                sys::Forked::Parent(pid) => {
                    drop(report_w);
                    return read_shim_report(&spec.id, report_r, &mut |wait| {
                        let _ = sys::waitpid(pid, if wait { 0 } else { libc::WNOHANG });
                    });
                }
            }
        }
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg0("berth-shim").arg("__shim").args(&shim_args);
        if bundle.is_none() {
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
        }
        cmd.env_clear();
        let w = report_w.as_raw_fd();
        let in_child = move || {
            sys::setsid()?;
            sys::dup2(w, shim::REPORT_FD)
        };
        // SAFETY: the closure only makes async-signal-safe calls (setsid, dup2, fcntl).
        unsafe { cmd.pre_exec(in_child) };
        let mut child = cmd.spawn().map_err(ContainerError::io("start", "shim"))?;
        drop(report_w);
        read_shim_report(&spec.id, report_r, &mut |wait| {
            // The shim keeps running; it is not our child to wait for beyond this point,
            // but reap it if it already failed.
            if wait {
                let _ = child.wait();
            } else {
                let _ = child.try_wait();
            }
        })
    })();
    if started.is_err() {
        let _ = store.remove_dir(&spec.id);
    }
    started
}

/// Reads the shim's report (`R<init pid>` or `E<message>`); `reap(true)` waits for a shim
/// that failed, `reap(false)` only collects one that already ended.
fn read_shim_report(
    id: &str,
    report_r: std::os::fd::OwnedFd,
    reap: &mut dyn FnMut(bool),
) -> Result<i32, ContainerError> {
    use std::io::Read;
    let mut report = Vec::new();
    std::fs::File::from(report_r)
        .read_to_end(&mut report)
        .map_err(ContainerError::io("read", "shim report"))?;
    reap(false);
    let text = String::from_utf8_lossy(&report).into_owned();
    if let Some(pid) = text.strip_prefix('R').and_then(|p| p.parse().ok()) {
        Ok(pid)
    } else if let Some(msg) = text.strip_prefix('E') {
        reap(true);
        Err(ContainerError::Setup {
            id: id.to_string(),
            message: msg.to_string(),
        })
    } else {
        reap(true);
        Err(ContainerError::Setup {
            id: id.to_string(),
            message: "the shim exited without a report".into(),
        })
    }
}

/// Sends `signal` to the container's init (only if it is still the recorded process).
pub fn kill(store: &Store, key: &str, signal: i32) -> Result<String, ContainerError> {
    let id = store.find(key)?;
    let _lock = store.lock(&id)?;
    let st = store.read(&id)?;
    let (status, _) = store.observe(&st);
    status.require(&id, "kill", Status::can_kill, ": it is not running")?;
    let sent = match st.init {
        Some(init) => store.signal_init(init, signal)?,
        None => false,
    };
    if !sent {
        return Err(RuntimeError::BadState {
            id,
            status: Status::Stopped,
            action: "kill",
            hint: ": it is not running",
        }
        .into());
    }
    Ok(id)
}

/// Polls `done` every 20 ms until it holds or `timeout` passed; returns whether it held.
#[allow(clippy::disallowed_methods)] // a wait with a deadline: the edge where time enters
pub fn wait_until(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Stops a container: `signal`, up to `grace` for it to end, then SIGKILL to its whole
/// cgroup (or its init, which ends its pid namespace). Waits for the exit record.
pub fn stop(
    store: &Store,
    cgroups: &dyn Cgroups,
    key: &str,
    signal: i32,
    grace: std::time::Duration,
) -> Result<(String, Option<Exit>), ContainerError> {
    let id = store.find(key)?;
    let _lock = store.lock(&id)?;
    let st = store.read(&id)?;
    let (status, exit) = store.observe(&st);
    let Some(init) = st.init.filter(|_| status.can_kill()) else {
        return Ok((id, exit));
    };
    let gone = |store: &Store| !state::same_process(init, store.start_time(init.pid));
    if store.signal_init(init, signal)? && !wait_until(grace, || gone(store)) {
        if !cgroups.signal_all(&st.spec, libc::SIGKILL)? {
            store.signal_init(init, libc::SIGKILL)?;
        }
        wait_until(std::time::Duration::from_secs(10), || gone(store));
    }
    // The shim (or foreground CLI) records the exit right after reaping, then ends.
    wait_until(std::time::Duration::from_secs(5), || {
        store.read_exit(&id).is_some() || !store.dir(&id).exists()
    });
    if let Some(shim) = st.shim {
        wait_until(std::time::Duration::from_secs(5), || {
            !state::same_process(shim, store.start_time(shim.pid))
        });
    }
    Ok((id.clone(), store.read_exit(&id)))
}

/// Removes a stopped container (`force`: kill it first).
pub fn remove(
    store: &Store,
    cgroups: &dyn Cgroups,
    key: &str,
    force: bool,
) -> Result<String, ContainerError> {
    let id = store.find(key)?;
    let st = store.read(&id)?;
    let (status, _) = store.observe(&st);
    if !status.can_delete() {
        if !force {
            status.require(
                &id,
                "remove",
                Status::can_delete,
                ": stop it first or use --force",
            )?;
        }
        stop(
            store,
            cgroups,
            &id,
            libc::SIGKILL,
            std::time::Duration::from_secs(0),
        )?;
    }
    // The shim may still be writing its final record: let it finish first.
    if let Some(shim) = st.shim {
        wait_until(std::time::Duration::from_secs(5), || {
            !state::same_process(shim, store.start_time(shim.pid))
        });
    }
    let _lock = store.lock(&id)?;
    cgroups.remove(&st.spec)?;
    store.remove_dir(&id)?;
    Ok(id)
}

/// Runs OCI hooks in order with `state` (the OCI state JSON) on stdin; the first failure
/// (non-zero exit, or its timeout) is returned.
pub fn run_hooks(hooks: &[crate::runtime::oci::Hook], state: &[u8]) -> Result<(), ContainerError> {
    use std::os::unix::process::CommandExt;
    for h in hooks {
        let mut cmd = std::process::Command::new(&h.path);
        if let Some((first, rest)) = h.args.split_first() {
            cmd.arg0(first).args(rest);
        }
        cmd.env_clear();
        for e in &h.env {
            if let Some((k, v)) = e.split_once('=') {
                cmd.env(k, v);
            }
        }
        cmd.stdin(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(ContainerError::io("run hook", &h.path))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(state);
        }
        let timeout = std::time::Duration::from_secs(h.timeout.unwrap_or(60));
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                return Err(ContainerError::Setup {
                    id: String::new(),
                    message: format!("hook {} failed: {s}", h.path),
                });
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ContainerError::Setup {
                    id: String::new(),
                    message: format!("hook {} timed out", h.path),
                });
            }
        }
    }
    Ok(())
}
