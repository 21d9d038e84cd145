//! The per-container shim: `berth __shim STORE_DIR ID [--rm] [--oci]`, started by `berth run -d` in
//! its own session, so it outlives the CLI. It creates the container's cgroup, spawns the
//! init (its child, so it can reap it and learn its exit status), reports the init's pid to
//! the CLI on fd 3, copies the container's stdout and stderr into size-rotated log files with
//! a timestamp per line, and, once the init has exited (which ends the container's pid
//! namespace and every process in it), records the exit code and OOM status in `exit.json`
//! and `state.json` and removes the cgroup.
//!
//! Kept small: no async runtime, no tracing, fixed buffers; the berth binary re-executed
//! dispatches here before parsing its command line. Once the container runs, the shim
//! replaces itself with [`LOGSHIM`], a tiny static program (`agent/logshim/main.rs`) that
//! copies the logs the same way, reaps the init and executes `berth __shim-exit` for the
//! bookkeeping ([`exit_main`]); where that program is unavailable, this code does it all.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Cgroups, ContainerError, Store, init, spawn};
use crate::host::sys;
use crate::runtime::state::{ContainerState, ProcessId, Status};

/// The fd on which the shim reports to the CLI that started it.
pub const REPORT_FD: i32 = 3;

/// Rotation limits of a container's log.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Rotate when the current file reaches this many bytes.
    pub max_size: u64,
    /// Keep this many files in all (current + rotated).
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

/// The current log file of a container.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("container.log")
}

/// The rotated log file number `n` (1 = newest).
pub fn rotated_log_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("container.log.{n}"))
}

/// A size-rotated log writer: each line is `<RFC 3339 time> <stream> <text>`.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
}

impl LogWriter {
    /// Opens (appends to) the container's log in `dir`.
    pub fn open(dir: &Path, limits: LogLimits) -> std::io::Result<LogWriter> {
        let file = open_log(&log_path(dir))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            limits,
        })
    }

    /// Writes one line (without its newline) from `stream`, stamped with `now`.
    pub fn line(&mut self, now: (u64, u32), stream: &str, text: &[u8]) -> std::io::Result<()> {
        if self.size >= self.limits.max_size {
            self.rotate()?;
        }
        let stamp = rfc3339(now.0, now.1);
        let mut buf = Vec::with_capacity(stamp.len() + stream.len() + text.len() + 3);
        buf.extend_from_slice(stamp.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(stream.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(text);
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.limits.max_files.max(1);
        if keep == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(rotated_log_path(&self.dir, keep - 1));
        for n in (1..keep - 1).rev() {
            let _ = std::fs::rename(
                rotated_log_path(&self.dir, n),
                rotated_log_path(&self.dir, n + 1),
            );
        }
        std::fs::rename(log_path(&self.dir), rotated_log_path(&self.dir, 1))?;
        self.file = open_log(&log_path(&self.dir))?;
        self.size = 0;
        Ok(())
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Formats Unix seconds + nanoseconds as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        nanos / 1000
    )
}

#[allow(clippy::disallowed_methods)] // the shim's clock edge: log timestamps
fn now() -> (u64, u32) {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs(), d.subsec_nanos()))
        .unwrap_or((0, 0))
}

/// Entry point of `berth __shim STORE_DIR ID [--rm] [--oci]`; returns the shim's exit code.
pub fn main(args: &[String], cgroups: &dyn Cgroups) -> u8 {
    let (Some(data_dir), Some(id)) = (args.first(), args.get(1)) else {
        return 2;
    };
    let remove = args.iter().any(|a| a == "--rm");
    let oci = args.iter().any(|a| a == "--oci");
    let report = if sys::fd_is_open(REPORT_FD) {
        // SAFETY: the CLI gave us fd 3 as the report pipe; nothing else owns it.
        Some(unsafe { OwnedFd::from_raw_fd(REPORT_FD) })
    } else {
        None
    };
    if let Some(r) = &report {
        let _ = sys::set_cloexec(r.as_raw_fd());
    }
    let store = Store::at(Path::new(data_dir));
    match run(&store, id, remove, oci, cgroups, report) {
        Ok(()) => 0,
        Err((report, e)) => {
            if let Some(r) = report {
                let _ = sys::write_all_fd(r.as_fd(), format!("E{e}").as_bytes());
            }
            1
        }
    }
}

/// The shim forked (not executed) from a single-threaded CLI: a new session, stdio on
/// `/dev/null` unless `null_stdio` is false (OCI: the container shares the caller's), the
/// report pipe on fd 3 and every other fd closed; then as [`main`].
pub fn forked_main(
    args: &[String],
    null_stdio: bool,
    report: OwnedFd,
    cgroups: &dyn Cgroups,
) -> u8 {
    let fail = |report: &OwnedFd, what: &str, e: std::io::Error| {
        let _ = sys::write_all_fd(report.as_fd(), format!("Eshim: {what}: {e}").as_bytes());
        1
    };
    if let Err(e) = sys::setsid() {
        return fail(&report, "new session", e);
    }
    if null_stdio {
        let null = match sys::open(Path::new("/dev/null"), libc::O_RDWR) {
            Ok(f) => f,
            Err(e) => return fail(&report, "open /dev/null", e),
        };
        for fd in 0..3 {
            if let Err(e) = sys::dup2(null.as_raw_fd(), fd) {
                return fail(&report, "redirect stdio", e);
            }
        }
    }
    if let Err(e) = sys::move_fds(&[report.as_raw_fd()], REPORT_FD) {
        return fail(&report, "move report pipe", e);
    }
    // Everything above fd 3 is the CLI's: close it (`report` included, hence the forget).
    std::mem::forget(report);
    if sys::close_from(REPORT_FD as u32 + 1).is_err() {
        return 1;
    }
    main(args, cgroups)
}

type Failed = (Option<OwnedFd>, ContainerError);

/// The start fifo of an OCI container (`runtime start` reads it to let the init exec).
pub fn start_fifo(dir: &Path) -> PathBuf {
    dir.join("exec.fifo")
}

fn run(
    store: &Store,
    id: &str,
    remove: bool,
    oci: bool,
    cgroups: &dyn Cgroups,
    report: Option<OwnedFd>,
) -> Result<(), Failed> {
    let fail = |report: Option<OwnedFd>| move |e: ContainerError| (report, e);
    let mut st = match store.read(id) {
        Ok(st) => st,
        Err(e) => return Err((report, e)),
    };
    let dir = store.dir(id);
    let spec = st.spec.clone();
    let started = (|| {
        cgroups.create(&spec)?;
        let cfg = init::InitConfig {
            spec: spec.clone(),
            state_dir: dir.clone(),
            rootfs_mount: spawn::rootfs_mount(&dir),
            start_fifo: oci.then(|| start_fifo(&dir)),
        };
        if oci {
            // OCI: the container shares the caller's stdio, as with runc.
            let self_join = cgroups.self_join(&spec);
            let mut spawned = spawn::spawn(
                &cfg,
                spawn::Stdio::default(),
                self_join.as_ref(),
                &mut |pid| cgroups.add(&spec, pid),
            )?;
            let ready = spawned.wait_ready(&spec.id)?;
            return Ok::<_, ContainerError>((spawned, ready, None));
        }
        let devnull = sys::open(Path::new("/dev/null"), libc::O_RDONLY)
            .map_err(ContainerError::io("open", "/dev/null"))?;
        let (out_r, out_w) = sys::pipe().map_err(ContainerError::io("create", "pipe"))?;
        let (err_r, err_w) = sys::pipe().map_err(ContainerError::io("create", "pipe"))?;
        let stdio = spawn::Stdio {
            stdin: Some(devnull.as_raw_fd()),
            stdout: Some(out_w.as_raw_fd()),
            stderr: Some(err_w.as_raw_fd()),
        };
        let self_join = cgroups.self_join(&spec);
        let mut spawned = spawn::spawn(&cfg, stdio, self_join.as_ref(), &mut |pid| {
            cgroups.add(&spec, pid)
        })?;
        drop((out_w, err_w, devnull));
        let ready = spawned.wait_ready(&spec.id)?;
        Ok((spawned, ready, Some((out_r, err_r))))
    })();
    let (mut spawned, ready, pipes) = match started {
        Ok(v) => v,
        Err(e) => {
            st.status = Status::Stopped;
            let _ = store.write(&st, true);
            let _ = cgroups.remove(&spec);
            return Err((report, e));
        }
    };
    let pid = spawned.pid;
    st.status = if ready == spawn::Ready::Created {
        Status::Created
    } else {
        Status::Running
    };
    st.init = store
        .start_time(pid)
        .map(|start_time| ProcessId { pid, start_time });
    let me = sys::getpid();
    st.shim = store.start_time(me).map(|start_time| ProcessId {
        pid: me,
        start_time,
    });
    // Visible at once (rename), durable right after the CLI is told: the start latency
    // does not wait for the disk, and a crash in between loses only a record whose init
    // dies with the host anyway.
    store.write(&st, false).map_err(fail(None))?;
    if pipes.is_some() {
        // The log exists once the CLI returns, so `berth logs -f` right after finds it.
        let _ = open_log(&log_path(&dir));
    }
    if let Some(r) = report {
        let _ = sys::write_all_fd(r.as_fd(), format!("R{pid}").as_bytes());
        drop(r);
    }
    let _ = store.sync(id);
    // The shim lives as long as the container: give back what setup allocated.
    // SAFETY: malloc_trim only releases free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    if ready == spawn::Ready::Created
        && spawned.wait_exec(id).is_ok()
        && let Ok(mut now) = store.read(id)
        && now.status == Status::Created
    {
        now.status = Status::Running;
        let _ = store.write(&now, true);
    }

    // From here on the shim only copies logs and waits: become the tiny static shim (same
    // pid, still the init's parent) so a running container costs a few pages, not the
    // berth image. If that is not possible, carry on here.
    let pipes = match become_logshim(&dir, pid, store, id, remove, pipes) {
        Ok(never) => match never {},
        Err(pipes) => pipes,
    };
    if let Some((out_r, err_r)) = pipes {
        copy_logs(&dir, out_r, err_r);
    }
    let (_, status) = sys::waitpid(pid, 0)
        .map_err(|e| (None, ContainerError::io("wait for", "container init")(e)))?;
    finish(store, id, Some(st), status, remove, cgroups).map_err(fail(None))
}

/// Records how the init ended (`status` from waitpid, plus the cgroup's OOM count) in
/// `exit.json` and `state.json`, removes the cgroup, and the container with `remove`.
fn finish(
    store: &Store,
    id: &str,
    known: Option<ContainerState>,
    status: i32,
    remove: bool,
    cgroups: &dyn Cgroups,
) -> Result<(), ContainerError> {
    let mut st = match store.read(id) {
        Ok(now) => now,
        Err(e) => match known {
            Some(st) => st,
            None => {
                // Without the record there is no spec: keep at least the exit code.
                let _ = store.write_exit(id, &super::exit_from_status(status, false), true);
                return Err(e);
            }
        },
    };
    let spec = st.spec.clone();
    let exit = super::exit_from_status(status, cgroups.oom_killed(&spec));
    store.write_exit(id, &exit, true)?;
    st.status = Status::Stopped;
    st.exit = Some(exit);
    store.write(&st, true)?;
    let _ = cgroups.remove(&spec);
    if remove {
        let _ = store.remove_dir(id);
    }
    Ok(())
}

/// Entry point of `berth __shim-exit STORE_DIR ID STATUS [--rm]`: the tiny shim executes it
/// after reaping the init, to record the exit and clean up ([`finish`]).
pub fn exit_main(args: &[String], cgroups: &dyn Cgroups) -> u8 {
    let (Some(store), Some(id), Some(status)) = (
        args.first(),
        args.get(1),
        args.get(2).and_then(|s| s.parse::<i32>().ok()),
    ) else {
        return 2;
    };
    let remove = args.iter().any(|a| a == "--rm");
    match finish(
        &Store::at(Path::new(store)),
        id,
        None,
        status,
        remove,
        cgroups,
    ) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// The tiny static shim (`agent/logshim/main.rs`, built by `build.rs`); empty where it could
/// not be built.
pub static LOGSHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-logshim"));

enum Never {}

type Pipes = Option<(OwnedFd, OwnedFd)>;

/// Replaces this process with [`LOGSHIM`] run from a sealed memfd: the container's output
/// pipes on fds 3 and 4, every other fd closed. Returns the pipes when it cannot.
fn become_logshim(
    dir: &Path,
    pid: i32,
    store: &Store,
    id: &str,
    remove: bool,
    pipes: Pipes,
) -> Result<Never, Pipes> {
    if LOGSHIM.is_empty() {
        return Err(pipes);
    }
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Err(pipes);
    };
    let exe = exe.display().to_string();
    if exe.ends_with(" (deleted)") {
        // The berth binary was replaced: `__shim-exit` must run this one's code.
        return Err(pipes);
    }
    let log_dir = if pipes.is_some() {
        dir.display().to_string()
    } else {
        "-".to_string()
    };
    if let Some((out_r, err_r)) = &pipes {
        let moved = sys::move_fds(&[out_r.as_raw_fd(), err_r.as_raw_fd()], 3);
        if moved.is_err() {
            return Err(pipes);
        }
    }
    // After the pipes took fds 3 and 4, so the memfd cannot land on either.
    let Ok(memfd) = sys::sealed_memfd("berth-shim", LOGSHIM) else {
        return Err(pipes);
    };
    let first_closed = if pipes.is_some() { 5 } else { 3 };
    if sys::cloexec_from(first_closed).is_err() {
        return Err(pipes);
    }
    let argv = [
        "berth-shim".to_string(),
        log_dir,
        pid.to_string(),
        exe,
        store.root.display().to_string(),
        id.to_string(),
        if remove { "1" } else { "0" }.to_string(),
    ];
    let _err = sys::execveat_empty(memfd.as_fd(), &argv, &[]);
    Err(pipes)
}

/// Copies both pipes line by line into the log until both reach EOF (every process of the
/// container closed them: at the latest when the init's pid namespace ends).
fn copy_logs(dir: &Path, out_r: OwnedFd, err_r: OwnedFd) {
    let Ok(mut log) = LogWriter::open(dir, LogLimits::default()) else {
        // Without a log file the container still runs; drain the pipes so it never blocks.
        drain(&[out_r, err_r]);
        return;
    };
    let streams = [(out_r, "stdout"), (err_r, "stderr")];
    let mut open = [true, true];
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut buf = [0u8; 16 * 1024];
    while open.iter().any(|o| *o) {
        let mut fds: Vec<libc::pollfd> = streams
            .iter()
            .zip(open)
            .map(|((fd, _), o)| libc::pollfd {
                fd: if o { fd.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 || !open[i] {
                continue;
            }
            // SAFETY: `buf` is a valid writable buffer of its length; the fd is open.
            let got =
                unsafe { libc::read(pfd.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if got <= 0 {
                if got < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                open[i] = false;
                if !pending[i].is_empty() {
                    let _ = log.line(now(), streams[i].1, &pending[i]);
                    pending[i].clear();
                }
                continue;
            }
            let data = buf.get(..got as usize).unwrap_or(&[]);
            let mut start = 0;
            for (j, b) in data.iter().enumerate() {
                if *b == b'\n' {
                    pending[i].extend_from_slice(data.get(start..j).unwrap_or(&[]));
                    let _ = log.line(now(), streams[i].1, &pending[i]);
                    pending[i].clear();
                    start = j + 1;
                }
            }
            pending[i].extend_from_slice(data.get(start..).unwrap_or(&[]));
            // A line longer than 16 KiB is split rather than buffered without bound.
            if pending[i].len() >= 16 * 1024 {
                let _ = log.line(now(), streams[i].1, &pending[i]);
                pending[i].clear();
            }
        }
    }
}

fn drain(fds: &[OwnedFd]) {
    let mut buf = [0u8; 4096];
    for fd in fds {
        // SAFETY: valid buffer and open fd.
        while unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        } > 0
        {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_795_464_000, 123_456_789),
            "2026-11-23T20:00:00.123456Z"
        );
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
    }

    /// Runs the tiny shim as `sh` would after `exec`: parent of a producer whose stdout and
    /// stderr reach it on fds 3 and 4; `berth` is a script that records its arguments.
    fn run_logshim(producer: &str, berth_exists: bool) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("logshim");
        std::fs::write(&shim, LOGSHIM).unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let berth = dir.path().join("berth");
        if berth_exists {
            std::fs::write(
                &berth,
                "#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\n",
            )
            .unwrap();
            std::fs::set_permissions(&berth, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir(dir.path().join("c1")).unwrap();
        std::fs::write(dir.path().join("producer.sh"), producer).unwrap();
        // The producer is the shell's direct child; after `exec` it is the shim's.
        let script = format!(
            "mkfifo {d}/o {d}/e; /bin/sh {d}/producer.sh >{d}/o 2>{d}/e & \
             exec 3<{d}/o 4<{d}/e {shim} {d} $! {berth} {d} c1 0",
            d = dir.path().display(),
            shim = shim.display(),
            berth = berth.display(),
        );
        let st = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap();
        assert_eq!(st.success(), berth_exists, "{st}");
        dir
    }

    #[test]
    fn tiny_shim_is_built_here() {
        if cfg!(all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        )) {
            assert!(
                LOGSHIM.starts_with(b"\x7fELF"),
                "agent/build.rs did not build logshim"
            );
            assert!(LOGSHIM.len() < 64 * 1024, "{} bytes", LOGSHIM.len());
        }
    }

    #[test]
    fn tiny_shim_logs_lines_like_the_berth_shim_and_hands_over_the_status() {
        if LOGSHIM.is_empty() {
            return;
        }
        let dir = run_logshim("printf 'a\\nb'; echo err >&2; exit 3", true);
        let log = std::fs::read_to_string(dir.path().join("container.log")).unwrap();
        let lines: Vec<(&str, &str)> = log.lines().map(|l| l.split_once(' ').unwrap()).collect();
        for (stamp, _) in &lines {
            assert_eq!(stamp.len(), 27, "{log}");
            assert!(
                stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
                "{log}"
            );
        }
        let mut rest: Vec<&str> = lines.iter().map(|(_, r)| *r).collect();
        rest.sort();
        assert_eq!(rest, ["stderr err", "stdout a", "stdout b"], "{log}");
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        // exit code 3 is wait status 3 << 8
        assert_eq!(
            args.trim(),
            format!("__shim-exit {} c1 768", dir.path().display())
        );
    }

    #[test]
    fn tiny_shim_records_the_exit_itself_when_berth_is_gone() {
        if LOGSHIM.is_empty() {
            return;
        }
        let dir = run_logshim("kill -TERM $$", false);
        let exit: crate::runtime::state::Exit =
            serde_json::from_slice(&std::fs::read(dir.path().join("c1/exit.json")).unwrap())
                .unwrap();
        assert_eq!(
            (exit.code, exit.signal, exit.oom_killed),
            (143, Some(15), false)
        );
    }

    #[test]
    fn tiny_shim_rotates_at_ten_mebibytes() {
        if LOGSHIM.is_empty() {
            return;
        }
        let dir = run_logshim("head -c 11000000 /dev/zero | tr '\\0' x | fold -w 99", true);
        let cur = std::fs::metadata(dir.path().join("container.log"))
            .unwrap()
            .len();
        let old = std::fs::metadata(dir.path().join("container.log.1"))
            .unwrap()
            .len();
        // Rotated before the first line that starts at or past 10 MiB.
        assert!((10 << 20..(10 << 20) + 135).contains(&old), "{old}");
        // 111 111 lines of 99 x and one of 11, each with a 27-byte stamp and " stdout ", "\n".
        assert_eq!(
            cur + old,
            111_111 * (99 + 36) + (11 + 36),
            "every line kept"
        );
    }

    #[test]
    fn logs_rotate_by_size_and_keep_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_size: 100,
            max_files: 3,
        };
        let mut w = LogWriter::open(dir.path(), limits).unwrap();
        for i in 0..20 {
            w.line((0, 0), "stdout", format!("line {i}").as_bytes())
                .unwrap();
        }
        assert!(log_path(dir.path()).exists());
        assert!(rotated_log_path(dir.path(), 1).exists());
        assert!(rotated_log_path(dir.path(), 2).exists());
        assert!(!rotated_log_path(dir.path(), 3).exists());
        let cur = std::fs::read_to_string(log_path(dir.path())).unwrap();
        assert!(cur.ends_with("stdout line 19\n"), "{cur}");
        assert!(std::fs::metadata(log_path(dir.path())).unwrap().len() <= 100 + 50);
    }
}
