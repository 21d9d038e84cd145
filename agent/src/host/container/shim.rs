//! The per-container shim: `berth __shim STORE_DIR ID [--rm] [--oci]`, started by `berth run -d` in
//! its own session, so it outlives the CLI. It creates the container's cgroup, spawns the
//! init (its child, so it can reap it and learn its exit status), reports the init's pid to
//! the CLI on fd 3, copies the container's stdout and stderr into size-rotated log files with
//! a timestamp per line, and, once the init has exited (which ends the container's pid
//! namespace and every process in it), records the exit code and OOM status in `exit.json`
//! and `state.json` and removes the cgroup.
//!
//! Kept small: no async runtime, no tracing, fixed buffers; the berth binary re-executed
//! dispatches here before parsing its command line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Cgroups, ContainerError, Store, init, spawn};
use crate::host::sys;
use crate::runtime::state::{ProcessId, Status};

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
            let mut spawned = spawn::spawn(&cfg, spawn::Stdio::default(), &mut |pid| {
                cgroups.add(&spec, pid)
            })?;
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
        let mut spawned = spawn::spawn(&cfg, stdio, &mut |pid| cgroups.add(&spec, pid))?;
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

    if let Some((out_r, err_r)) = pipes {
        copy_logs(&dir, out_r, err_r);
    }
    let (_, status) = sys::waitpid(pid, 0)
        .map_err(|e| (None, ContainerError::io("wait for", "container init")(e)))?;
    let exit = super::exit_from_status(status, cgroups.oom_killed(&spec));
    store.write_exit(id, &exit, true).map_err(fail(None))?;
    if let Ok(now) = store.read(id) {
        st = now;
    }
    st.status = Status::Stopped;
    st.exit = Some(exit);
    store.write(&st, true).map_err(fail(None))?;
    let _ = cgroups.remove(&spec);
    if remove {
        let _ = store.remove_dir(id);
    }
    Ok(())
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
