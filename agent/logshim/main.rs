//! berth's steady-state shim: a tiny static program without libc, built by `agent/build.rs`
//! and embedded in the berth binary, which executes it from a sealed memfd once a detached
//! container runs (`host::container::shim`). It replaces the berth shim process in place
//! (same pid and start time, still the init's parent), so a shim costs well under a
//! megabyte of memory per container instead of the big berth image.
//!
//! `berth-shim LOG_DIR|- PID BERTH STORE ID 0|1`, with the container's stdout and stderr
//! pipes on fds 3 and 4 (absent with `-`): copies both into `LOG_DIR/container.log`, one
//! `<RFC 3339 UTC> stdout|stderr <text>` line per output line (lines over 16 KiB are split),
//! rotated at 10 MiB keeping 5 files; once both pipes reach EOF it reaps PID and executes
//! `BERTH __shim-exit STORE ID STATUS [--rm]`, which records the exit and removes the
//! cgroup (and the container with `1`). If that exec fails it writes `exit.json` itself.
//!
//! The format and limits mirror `host::container::shim::LogWriter`; the agent's tests run
//! both. Only raw system calls (x86_64 and aarch64 Linux), no allocation, no panics that
//! matter (the panic handler exits with 70).

#![no_std]
#![no_main]
#![no_builtins]

#[path = "../nolibc/mod.rs"]
mod nolibc;

use nolibc::{AT_FDCWD, Digits, EINTR, cstr, exit, nr};

const MAX_SIZE: u64 = 10 << 20;
const MAX_FILES: u32 = 5;
const LINE_MAX: usize = 16 * 1024;

fn sys(n: usize, a: [usize; 6]) -> isize {
    // SAFETY: every caller below passes pointers to live buffers of the stated lengths.
    unsafe { nolibc::syscall(n, a) }
}

/// A NUL-terminated path in a fixed buffer.
struct Path {
    buf: [u8; 4096],
    len: usize,
}

impl Path {
    fn new() -> Path {
        Path { buf: [0; 4096], len: 0 }
    }

    fn push(&mut self, s: &[u8]) -> &mut Path {
        for &b in s {
            if self.len + 1 < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self.buf[self.len] = 0;
        self
    }

    fn ptr(&self) -> usize {
        self.buf.as_ptr() as usize
    }
}

fn log_path(dir: &[u8], n: u32) -> Path {
    let mut p = Path::new();
    p.push(dir).push(b"/container.log");
    if n > 0 {
        let mut d = Digits::new();
        p.push(b".").push(d.fmt(u64::from(n)));
    }
    p
}

fn open_log(dir: &[u8]) -> isize {
    const O_WRONLY: usize = 0o1;
    const O_CREAT: usize = 0o100;
    const O_APPEND: usize = 0o2000;
    const O_CLOEXEC: usize = 0o2000000;
    let p = log_path(dir, 0);
    sys(
        nr::OPENAT,
        [AT_FDCWD, p.ptr(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600, 0, 0],
    )
}

struct Log<'a> {
    dir: &'a [u8],
    fd: isize,
    size: u64,
}

impl Log<'_> {
    fn rotate(&mut self) {
        let keep = MAX_FILES;
        let oldest = log_path(self.dir, keep - 1);
        sys(nr::UNLINKAT, [AT_FDCWD, oldest.ptr(), 0, 0, 0, 0]);
        let mut n = keep - 1;
        while n > 1 {
            let from = log_path(self.dir, n - 1);
            let to = log_path(self.dir, n);
            sys(nr::RENAMEAT2, [AT_FDCWD, from.ptr(), AT_FDCWD, to.ptr(), 0, 0]);
            n -= 1;
        }
        let cur = log_path(self.dir, 0);
        let first = log_path(self.dir, 1);
        sys(nr::RENAMEAT2, [AT_FDCWD, cur.ptr(), AT_FDCWD, first.ptr(), 0, 0]);
        sys(nr::CLOSE, [self.fd as usize, 0, 0, 0, 0, 0]);
        self.fd = open_log(self.dir);
        self.size = 0;
    }

    /// Writes one line made of `parts` from `stream`.
    fn line(&mut self, stream: &[u8], parts: [&[u8]; 2]) {
        if self.fd < 0 {
            return;
        }
        if self.size >= MAX_SIZE {
            self.rotate();
        }
        let mut stamp = [0u8; 27];
        rfc3339(now(), &mut stamp);
        let pieces: [&[u8]; 7] = [&stamp, b" ", stream, b" ", parts[0], parts[1], b"\n"];
        let mut iov = [[0usize; 2]; 7];
        let mut total = 0usize;
        for (v, p) in iov.iter_mut().zip(pieces) {
            *v = [p.as_ptr() as usize, p.len()];
            total += p.len();
        }
        let mut done = 0usize;
        let mut first = 0usize;
        // Retry short writes piece by piece (a regular file rarely writes short).
        while done < total && first < iov.len() {
            let n = sys(
                nr::WRITEV,
                [self.fd as usize, iov[first..].as_ptr() as usize, iov.len() - first, 0, 0, 0],
            );
            if n == EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            let mut left = n as usize;
            done += left;
            while first < iov.len() && left >= iov[first][1] {
                left -= iov[first][1];
                first += 1;
            }
            if first < iov.len() {
                iov[first][0] += left;
                iov[first][1] -= left;
            }
        }
        self.size += done as u64;
    }
}

fn now() -> (u64, u32) {
    let mut ts = [0i64; 2];
    sys(nr::CLOCK_GETTIME, [0, ts.as_mut_ptr() as usize, 0, 0, 0, 0]);
    (ts[0].max(0) as u64, ts[1].max(0) as u32)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (the same civil-date algorithm as the berth shim).
fn rfc3339(now: (u64, u32), out: &mut [u8; 27]) {
    let (secs, nanos) = now;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut put = |at: usize, width: usize, mut v: u64| {
        let mut i = at + width;
        while i > at {
            i -= 1;
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.max(0) as u64);
    put(5, 2, m as u64);
    put(8, 2, d as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 6, u64::from(nanos / 1000));
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out[19] = b'.';
    out[26] = b'Z';
}

struct Stream {
    fd: usize,
    name: &'static [u8],
    open: bool,
    pending: [u8; LINE_MAX],
    len: usize,
}

impl Stream {
    /// Splits `data` into lines; keeps the unterminated rest (split at 16 KiB).
    fn feed(&mut self, log: &mut Log<'_>, data: &[u8]) {
        let mut start = 0;
        for (j, &b) in data.iter().enumerate() {
            if b == b'\n' {
                log.line(self.name, [&self.pending[..self.len], &data[start..j]]);
                self.len = 0;
                start = j + 1;
            }
        }
        let rest = &data[start..];
        if self.len + rest.len() >= LINE_MAX {
            log.line(self.name, [&self.pending[..self.len], rest]);
            self.len = 0;
        } else {
            self.pending[self.len..self.len + rest.len()].copy_from_slice(rest);
            self.len += rest.len();
        }
    }

    fn close(&mut self, log: &mut Log<'_>) {
        self.open = false;
        if self.len > 0 {
            log.line(self.name, [&self.pending[..self.len], b""]);
            self.len = 0;
        }
        sys(nr::CLOSE, [self.fd, 0, 0, 0, 0, 0]);
    }
}

fn copy_logs(dir: &[u8]) {
    let mut log = Log { dir, fd: open_log(dir), size: 0 };
    if log.fd >= 0 {
        const SEEK_END: usize = 2;
        let end = sys(nr::LSEEK, [log.fd as usize, 0, SEEK_END, 0, 0, 0]);
        log.size = end.max(0) as u64;
    }
    let mut streams = [
        Stream { fd: 3, name: b"stdout", open: true, pending: [0; LINE_MAX], len: 0 },
        Stream { fd: 4, name: b"stderr", open: true, pending: [0; LINE_MAX], len: 0 },
    ];
    let mut buf = [0u8; LINE_MAX];
    while streams.iter().any(|s| s.open) {
        // struct pollfd { int fd; short events; short revents; }
        let mut fds = [[0u32; 2]; 2];
        for (p, s) in fds.iter_mut().zip(&streams) {
            let fd = if s.open { s.fd as i32 } else { -1 };
            *p = [fd as u32, 1]; // POLLIN, revents 0
        }
        let n = sys(nr::PPOLL, [fds.as_mut_ptr() as usize, 2, 0, 0, 8, 0]);
        if n == EINTR {
            continue;
        }
        if n < 0 {
            return;
        }
        for (p, s) in fds.iter().zip(streams.iter_mut()) {
            if !s.open || p[1] >> 16 == 0 {
                continue;
            }
            let got = sys(nr::READ, [s.fd, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0]);
            if got == EINTR {
                continue;
            }
            if got <= 0 {
                s.close(&mut log);
                continue;
            }
            s.feed(&mut log, &buf[..got as usize]);
        }
    }
}

fn parse(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Fallback when berth cannot be executed: `exit.json` as `runtime::state::Exit` writes it.
fn write_exit(store: &[u8], id: &[u8], status: u32) {
    let signalled = status & 0x7f != 0 && status & 0x7f != 0x7f;
    let (code, signal) = if signalled {
        let sig = status & 0x7f;
        (128 + sig, Some(sig))
    } else {
        ((status >> 8) & 0xff, None)
    };
    let mut body = Path::new();
    let (mut a, mut b, mut c) = (Digits::new(), Digits::new(), Digits::new());
    body.push(b"{\"code\":").push(a.fmt(u64::from(code))).push(b",\"signal\":");
    match signal {
        Some(s) => body.push(b.fmt(u64::from(s))),
        None => body.push(b"null"),
    };
    body.push(b",\"oom_killed\":false,\"finished\":").push(c.fmt(now().0)).push(b"}");
    let mut tmp = Path::new();
    tmp.push(store).push(b"/").push(id).push(b"/.exit.json.tmp");
    let mut fin = Path::new();
    fin.push(store).push(b"/").push(id).push(b"/exit.json");
    const O_WRONLY_CREAT_TRUNC_CLOEXEC: usize = 0o1 | 0o100 | 0o1000 | 0o2000000;
    let fd = sys(nr::OPENAT, [AT_FDCWD, tmp.ptr(), O_WRONLY_CREAT_TRUNC_CLOEXEC, 0o600, 0, 0]);
    if fd < 0 {
        return;
    }
    let iov = [[body.buf.as_ptr() as usize, body.len]];
    sys(nr::WRITEV, [fd as usize, iov.as_ptr() as usize, 1, 0, 0, 0]);
    sys(nr::CLOSE, [fd as usize, 0, 0, 0, 0, 0]);
    sys(nr::RENAMEAT2, [AT_FDCWD, tmp.ptr(), AT_FDCWD, fin.ptr(), 0, 0]);
}

extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: at `_start` the stack holds argc, then argc pointers to NUL-terminated
    // strings, as the kernel laid them out.
    let args: [&[u8]; 7] = unsafe {
        let argc = *sp;
        if argc < 7 {
            exit(2);
        }
        let argv = sp.add(1) as *const *const u8;
        let mut a: [&[u8]; 7] = [b""; 7];
        for (i, slot) in a.iter_mut().enumerate() {
            *slot = cstr(*argv.add(i));
        }
        a
    };
    let [_, dir, pid, berth, store, id, rm] = args;
    let Some(pid) = parse(pid) else { exit(2) };
    if dir != b"-" {
        copy_logs(dir);
    }
    let mut status: u32 = 0;
    loop {
        let r = sys(nr::WAIT4, [pid as usize, (&raw mut status) as usize, 0, 0, 0, 0]);
        if r != EINTR {
            if r < 0 {
                exit(1);
            }
            break;
        }
    }
    // Hand the bookkeeping to berth: exit record with OOM status, cgroup removal, --rm.
    let mut d = Digits::new();
    let mut st = Path::new();
    st.push(d.fmt(u64::from(status)));
    let mut exe = Path::new();
    exe.push(berth);
    let mut store_c = Path::new();
    store_c.push(store);
    let mut id_c = Path::new();
    id_c.push(id);
    let argv: [usize; 7] = [
        b"berth\0".as_ptr() as usize,
        b"__shim-exit\0".as_ptr() as usize,
        store_c.ptr(),
        id_c.ptr(),
        st.ptr(),
        if rm == b"1" { b"--rm\0".as_ptr() as usize } else { 0 },
        0,
    ];
    let envp: [usize; 1] = [0];
    sys(nr::EXECVE, [exe.ptr(), argv.as_ptr() as usize, envp.as_ptr() as usize, 0, 0, 0]);
    write_exit(store, id, status);
    exit(1)
}
