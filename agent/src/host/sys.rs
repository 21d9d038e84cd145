//! Thin safe wrappers over the few system calls the runtime makes that neither std nor nix
//! offer in the shape needed (openat2, mount onto an fd, close_range, capset, prctl, raw
//! clone). Each returns `io::Result` with the kernel's errno; callers add context.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn cpath(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat2(dirfd, path, flags, resolve)`: the path is resolved with `resolve` flags
/// (e.g. `RESOLVE_IN_ROOT`: `..` and absolute symlinks stay below `dirfd`).
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain integers; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = resolve;
    // SAFETY: `c` and `how` outlive the call; the kernel reads `size_of::<open_how>()` bytes.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `open(path, flags)` with `O_CLOEXEC`.
pub fn open(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid C string for the duration of the call.
    let fd = check_int(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check_int(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) })?;
    Ok(())
}

/// `mknodat(dir, name, mode, dev)`.
pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &str,
    mode: u32,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: valid fd and C string.
    check_int(unsafe {
        libc::mknodat(
            dir.as_raw_fd(),
            c.as_ptr(),
            mode,
            libc::makedev(major, minor),
        )
    })?;
    Ok(())
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let t = cstr(target)?;
    let n = cstr(name)?;
    // SAFETY: valid fd and C strings.
    check_int(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) })?;
    Ok(())
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` (or `fstat` of `dir` itself when `name` is
/// empty).
pub fn lstatat(dir: BorrowedFd<'_>, name: &str) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: zeroed `stat` is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and out pointer.
    check_int(unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// The path through which `fd` can be named in `mount(2)` (`/proc/self/fd/N`).
pub fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `mount(source, target, fstype, flags, data)` with optional parts.
pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let s = source.map(cstr).transpose()?;
    let t = cstr(target)?;
    let f = fstype.map(cstr).transpose()?;
    let d = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a valid C string that outlives the call.
    check_int(unsafe {
        libc::mount(
            ptr(&s),
            t.as_ptr(),
            ptr(&f),
            flags,
            ptr(&d) as *const libc::c_void,
        )
    })?;
    Ok(())
}

/// `umount2(target, flags)`.
pub fn umount2(target: &str, flags: i32) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C string.
    check_int(unsafe { libc::umount2(t.as_ptr(), flags) })?;
    Ok(())
}

/// `pivot_root(".", ".")` after `chdir(new_root)`: stacks the old root under the new one,
/// to be detached with `umount2(".", MNT_DETACH)`.
pub fn pivot_root_here() -> io::Result<()> {
    let dot = cstr(".")?;
    // SAFETY: valid C strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) })?;
    Ok(())
}

/// `fchdir(fd)`.
pub fn fchdir(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    check_int(unsafe { libc::fchdir(fd.as_raw_fd()) })?;
    Ok(())
}

/// Marks every fd from `first` up close-on-exec (`close_range(..., CLOSE_RANGE_CLOEXEC)`).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: plain syscall on integers.
    check_int(unsafe { libc::close_range(first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) })?;
    Ok(())
}

/// Closes every fd from `first` up.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: plain syscall on integers; callers own every fd from `first` up.
    check_int(unsafe { libc::close_range(first, u32::MAX, 0) })?;
    Ok(())
}

/// `prctl(option, arg2, 0, 0, 0)`.
pub fn prctl(option: i32, arg2: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the options used here take integer arguments only.
    check_int(unsafe {
        libc::prctl(
            option,
            arg2,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

/// `prctl(PR_CAP_AMBIENT, op, cap)`.
pub fn prctl_ambient(op: libc::c_ulong, cap: libc::c_ulong) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check_int(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            op,
            cap,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset(2)` for the calling thread (version 3: 64-bit sets).
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let lo = |v: u64| (v & 0xffff_ffff) as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let data = [
        CapData {
            effective: lo(effective),
            permitted: lo(permitted),
            inheritable: lo(inheritable),
        },
        CapData {
            effective: hi(effective),
            permitted: hi(permitted),
            inheritable: hi(inheritable),
        },
    ];
    // SAFETY: header and the two data words live across the call, as capset v3 expects.
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) })?;
    Ok(())
}

/// The result of [`clone_process`] in the calling process.
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `clone(flags | SIGCHLD)` with the parent's stack, like `fork(2)` but with namespace
/// flags (the child of `CLONE_NEWPID` is pid 1 of the new namespace).
///
/// The caller must be single-threaded: the child has one thread, and locks held by other
/// threads at the time of the call would stay locked forever in it.
pub fn clone_process(flags: libc::c_ulong) -> io::Result<Forked> {
    // SAFETY: with a null stack the child resumes on a copy of the caller's stack, exactly
    // like fork; the caller guarantees it is single-threaded.
    let ret = check(unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    })?;
    if ret == 0 {
        Ok(Forked::Child)
    } else {
        Ok(Forked::Parent(ret as i32))
    }
}

/// Leaves the process immediately without running destructors or atexit handlers (for a
/// forked child that must not flush the parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Writes all of `buf` to the raw fd (used by forked children that own no `File`).
pub fn write_all_fd(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = buf.get(n as usize..).unwrap_or(&[]);
    }
    Ok(())
}

/// `dup2(from, to)`, clearing close-on-exec on `to`.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    if from == to {
        // SAFETY: fcntl on an fd the caller owns.
        let flags = check_int(unsafe { libc::fcntl(from, libc::F_GETFD) })?;
        // SAFETY: as above.
        check_int(unsafe { libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
        return Ok(());
    }
    // SAFETY: both are fds the caller owns or may replace.
    check_int(unsafe { libc::dup2(from, to) })?;
    Ok(())
}

/// Sets close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns.
    let flags = check_int(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    Ok(())
}

static MOUNTINFO: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static MOUNTINFO_STALE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process's `/proc/self/mountinfo`, read once per process: the CLI's cgroup detection
/// and the init it forks (whose new mount namespace starts as a copy, with the same cgroup
/// mounts) share one read. The kernel generates the text on every read, which costs 0.5–1 ms
/// on a host with a few hundred mounts. After [`mountinfo_changed`], every call reads anew.
pub fn self_mountinfo() -> io::Result<std::borrow::Cow<'static, str>> {
    use std::borrow::Cow;
    let fresh = || std::fs::read_to_string("/proc/self/mountinfo");
    if MOUNTINFO_STALE.load(std::sync::atomic::Ordering::SeqCst) {
        return fresh().map(Cow::Owned);
    }
    if let Some(text) = MOUNTINFO.get() {
        return Ok(Cow::Borrowed(text));
    }
    let text = fresh()?;
    Ok(Cow::Borrowed(MOUNTINFO.get_or_init(|| text)))
}

/// Marks [`self_mountinfo`]'s copy outdated (this process joined another mount namespace).
pub fn mountinfo_changed() {
    MOUNTINFO_STALE.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Clears close-on-exec on `fd` (it survives the next exec).
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns.
    let flags = check_int(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
    Ok(())
}

/// `execve(path, argv, envp)`; returns only on failure.
pub fn execve(path: &str, argv: &[String], envp: &[String]) -> io::Error {
    let conv = |v: &[String]| -> io::Result<Vec<CString>> { v.iter().map(|s| cstr(s)).collect() };
    let (p, a, e) = match (cstr(path), conv(argv), conv(envp)) {
        (Ok(p), Ok(a), Ok(e)) => (p, a, e),
        _ => return io::Error::new(io::ErrorKind::InvalidInput, "argument contains NUL"),
    };
    let mut ap: Vec<*const libc::c_char> = a.iter().map(|c| c.as_ptr()).collect();
    ap.push(std::ptr::null());
    let mut ep: Vec<*const libc::c_char> = e.iter().map(|c| c.as_ptr()).collect();
    ep.push(std::ptr::null());
    // SAFETY: null-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(p.as_ptr(), ap.as_ptr(), ep.as_ptr()) };
    io::Error::last_os_error()
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: runs the program open at `fd`; returns
/// only on failure.
pub fn execveat_empty(fd: BorrowedFd<'_>, argv: &[String], envp: &[String]) -> io::Error {
    let conv = |v: &[String]| -> io::Result<Vec<CString>> { v.iter().map(|s| cstr(s)).collect() };
    let (a, e) = match (conv(argv), conv(envp)) {
        (Ok(a), Ok(e)) => (a, e),
        _ => return io::Error::new(io::ErrorKind::InvalidInput, "argument contains NUL"),
    };
    let mut ap: Vec<*const libc::c_char> = a.iter().map(|c| c.as_ptr()).collect();
    ap.push(std::ptr::null());
    let mut ep: Vec<*const libc::c_char> = e.iter().map(|c| c.as_ptr()).collect();
    ep.push(std::ptr::null());
    let empty = c"";
    // SAFETY: null-terminated arrays of valid C strings that outlive the call; `fd` is open.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            empty.as_ptr(),
            ap.as_ptr(),
            ep.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// A close-on-exec memfd named `name` holding `bytes`, sealed against any change.
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let n = cstr(name)?;
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3): executable even where `vm.memfd_noexec` makes memfds
    // non-executable by default; older kernels refuse the flag (EINVAL), so retry without.
    const MFD_EXEC: libc::c_uint = 0x0010;
    // SAFETY: a valid C string and integer flags.
    let fd = match check_int(unsafe { libc::memfd_create(n.as_ptr(), flags | MFD_EXEC) }) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // SAFETY: as above.
            check_int(unsafe { libc::memfd_create(n.as_ptr(), flags) })?
        }
        other => other?,
    };
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    write_all_fd(fd.as_fd(), bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on the fd we own.
    check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(fd)
}

/// Duplicates `fds` onto `first`, `first + 1`, … (not close-on-exec), whatever numbers they
/// have now; the originals stay open.
pub fn move_fds(fds: &[RawFd], first: RawFd) -> io::Result<()> {
    // Out of the way first, so a source that sits on a target number is not overwritten.
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: F_DUPFD_CLOEXEC on an fd the caller owns returns a new fd we own.
        let h = check_int(unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100) })?;
        // SAFETY: `h` was just returned to us.
        high.push(unsafe { OwnedFd::from_raw_fd(h) });
    }
    for (i, h) in high.iter().enumerate() {
        dup2(h.as_raw_fd(), first + i as RawFd)?;
    }
    Ok(())
}

/// `clone3` into the cgroup v2 directory open at `cgroup` (`CLONE_INTO_CGROUP`), with
/// `flags` and SIGCHLD, on the caller's stack like [`clone_process`]: the child starts in
/// that cgroup, so nobody has to move it there. The caller must be single-threaded.
pub fn clone_into_cgroup(flags: libc::c_ulong, cgroup: BorrowedFd<'_>) -> io::Result<Forked> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    /// `struct clone_args` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let args = CloneArgs {
        flags: flags | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: u64::try_from(cgroup.as_raw_fd()).unwrap_or(u64::MAX),
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; with no stack the child
    // resumes on a copy of the caller's stack, exactly like fork; the caller guarantees it
    // is single-threaded.
    let ret = check(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    })?;
    if ret == 0 {
        Ok(Forked::Child)
    } else {
        Ok(Forked::Parent(ret as i32))
    }
}

/// Whether this process has exactly one thread (so `fork` is safe); false when unsure.
pub fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|n| n.trim() == "1")
        })
        .unwrap_or(false)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation.
    let sock = check_int(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: the kernel returned a new fd.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFFLAGS.
    check_int(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the flags member of the union was just filled in by the kernel.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: `req` is a valid ifreq for SIOCSIFFLAGS.
    check_int(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

/// Field 22 of `/proc/<pid>/stat`: the process's start time in clock ticks after boot, or
/// `None` when no such process exists. `proc_root` is normally `/proc`.
pub fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Restores the default action of SIGPIPE (Rust starts programs with it ignored), so that a
/// CLI whose reader went away (`berth status | head`) ends quietly like other Unix tools
/// instead of panicking on the failed write.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Sends `signal` to `pid`.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall on integers.
    check_int(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// The calling process's pid.
pub fn getpid() -> i32 {
    // SAFETY: always succeeds.
    unsafe { libc::getpid() }
}

/// Waits for `pid` and returns its raw wait status, retrying on `EINTR`.
pub fn waitpid(pid: i32, flags: i32) -> io::Result<(i32, i32)> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok((ret, status));
    }
}

/// A pipe with both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-int out buffer.
    check_int(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: the kernel returned a new fd nobody else owns.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((r, w))
}

/// `setns(fd, nstype)`.
pub fn setns(fd: BorrowedFd<'_>, nstype: i32) -> io::Result<()> {
    // SAFETY: valid fd.
    check_int(unsafe { libc::setns(fd.as_raw_fd(), nstype) })?;
    Ok(())
}

/// `unshare(flags)`.
pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: plain syscall on integers.
    check_int(unsafe { libc::unshare(flags) })?;
    Ok(())
}

/// `sethostname(name)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check_int(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) })?;
    Ok(())
}

/// `setrlimit(resource, soft, hard)`.
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: valid rlimit pointer.
    check_int(unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &lim) })?;
    Ok(())
}

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) as far as allowed: the hard limit
/// up to the kernel's `fs.nr_open` when privileged (root), then the soft limit to the hard
/// one. Servers of many connections (the controller, the scale harness's simulated agents)
/// call it at start. Returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointer for the kernel to fill.
    check_int(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    if nr_open > lim.rlim_max {
        let wider = libc::rlimit {
            rlim_cur: nr_open,
            rlim_max: nr_open,
        };
        // SAFETY: valid rlimit pointer. Refused (EPERM) without CAP_SYS_RESOURCE: then the
        // soft limit is raised to the existing hard one below.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wider) } == 0 {
            return Ok(nr_open);
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid rlimit pointer.
        check_int(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// `setgroups`, `setgid`, `setuid` in that order (the kernel clears the permitted and
/// effective capabilities when a root process becomes non-root).
pub fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: pointer and length describe `groups`.
    check_int(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain syscalls (the raw syscalls act on this thread; we are single-threaded).
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })?;
    Ok(())
}

/// Whether `fd` is open (fcntl F_GETFD succeeds).
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Borrows a raw fd number the caller knows to be open for the borrow's duration.
///
/// # Safety
/// `fd` must stay open while the returned value is used.
pub unsafe fn borrow_raw<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: guaranteed by the caller.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// 16 random bytes from the kernel (`getrandom(2)`).
pub fn random16() -> io::Result<[u8; 16]> {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = buf.get_mut(filled..).unwrap_or(&mut []);
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr() as *mut libc::c_void, rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf)
}

/// Restores the default action of `signal` (e.g. SIGPIPE, which Rust's runtime ignores and
/// `execve` would pass on ignored).
pub fn default_signal_action(signal: i32) -> io::Result<()> {
    // SAFETY: installing SIG_DFL involves no handler code.
    if unsafe { libc::signal(signal, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setsid()`: a new session (and process group) led by the caller.
pub fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::setsid() })?;
    Ok(())
}

/// A signal mask (`sigset_t`).
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    /// Every signal.
    pub fn full() -> SigSet {
        // SAFETY: sigset_t is plain data; all zeroes is a valid (empty) value.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        unsafe { libc::sigfillset(&mut set) };
        SigSet(set)
    }

    /// Just these signals.
    pub fn of(signals: &[i32]) -> SigSet {
        // SAFETY: sigset_t is plain data; all zeroes is a valid (empty) value.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &s in signals {
            // SAFETY: as above; an invalid signal number only returns EINVAL.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        SigSet(set)
    }

    /// The raw set.
    pub fn as_raw(&self) -> &libc::sigset_t {
        &self.0
    }
}

/// `sigprocmask(how, set)`; returns the previous mask.
pub fn sigprocmask(how: i32, set: &SigSet) -> io::Result<SigSet> {
    // SAFETY: sigset_t is plain data; all zeroes is a valid value.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid; `old` is an out parameter.
    check_int(unsafe { libc::sigprocmask(how, &set.0, &mut old) })?;
    Ok(SigSet(old))
}

/// Waits for one of the (blocked) signals in `set` and returns its number, retrying on
/// `EINTR`.
pub fn sigwait(set: &SigSet) -> io::Result<i32> {
    loop {
        // SAFETY: `set` is valid; a null siginfo pointer is allowed.
        let ret = unsafe { libc::sigwaitinfo(&set.0, std::ptr::null_mut()) };
        if ret >= 0 {
            return Ok(ret);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
