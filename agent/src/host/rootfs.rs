//! Builds a container's filesystem view inside its own (already private) mount namespace:
//! the rootfs (a bind of a directory or an overlay), `/proc`, a fresh `/dev`, `/sys`
//! read-only, `/sys/fs/cgroup`, volumes, masked and read-only paths, then `pivot_root`.
//!
//! Every destination inside the rootfs is resolved with `openat2(RESOLVE_IN_ROOT)` from an
//! fd of the rootfs, and mounts target that fd (`/proc/self/fd/N`), so neither `..` nor a
//! symlink shipped in the image can send a mount to a host path. `/proc`, `/sys`, `/dev` and
//! `/dev/null` must not be symlinks in the image: such a rootfs is refused.
//! Must not be used outside a fresh mount namespace: it changes the calling process's mounts.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::host::sys;
use crate::runtime::spec::{ContainerSpec, Mount};

/// A setup step that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The path inside or outside the container.
        path: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The rootfs itself is unsafe to use.
    #[error(
        "rootfs {path} is a symlink: {what} must be mounted on ordinary directory (fix the image)"
    )]
    SymlinkInRootfs {
        /// The path inside the rootfs.
        path: String,
        /// `/proc`, `/sys`, `/dev` or `/dev/null`.
        what: &'static str,
    },
    /// The container could not be moved into its cgroup before cgroupfs was mounted.
    #[error("join the container's cgroup: {message}")]
    Cgroup {
        /// What failed.
        message: String,
    },
    /// The container's `/dev/null` is not the real device.
    #[error(
        "container /dev/null is not the null device (char 1:3): refusing to mask paths with it"
    )]
    FakeDevNull,
}

fn sys_err(op: &'static str, path: impl Into<String>) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.into();
    move |source| RootfsError::Sys { op, path, source }
}

const MS_RO: libc::c_ulong = libc::MS_RDONLY;
const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Resolution flags for paths inside the rootfs: stay inside it, no magic links.
const IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// Opens `path` (absolute, inside the container) below `root` as an `O_PATH` fd.
pub fn open_in_root(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    sys::openat2(root, path.trim_start_matches('/'), libc::O_PATH, 0, IN_ROOT)
}

/// Creates `path` inside `root` as a directory (with missing parents), resolving every
/// existing component inside the root. Returns an `O_PATH` fd of it.
pub fn mkdir_all_in_root(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    let rel = path.trim_matches('/');
    if rel.is_empty() {
        return sys::openat2(root, ".", libc::O_PATH | libc::O_DIRECTORY, 0, IN_ROOT);
    }
    match sys::openat2(root, rel, libc::O_PATH | libc::O_DIRECTORY, 0, IN_ROOT) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    let parent_fd = mkdir_all_in_root(root, parent)?;
    match sys::mkdirat(parent_fd.as_fd(), name, 0o755) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    sys::openat2(
        parent_fd.as_fd(),
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        IN_ROOT,
    )
}

/// Creates an empty file at `path` inside `root` (parents as directories) if missing and
/// returns an `O_PATH` fd of it.
pub fn touch_in_root(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    let rel = path.trim_matches('/');
    match sys::openat2(root, rel, libc::O_PATH, 0, IN_ROOT) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let parent_fd = mkdir_all_in_root(root, parent)?;
    // A concurrent creator or a dangling symlink makes this fail; the open below then
    // reports the real problem (O_NOFOLLOW refuses the symlink).
    let _created = sys::openat2(
        parent_fd.as_fd(),
        name,
        libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY,
        0o644,
        IN_ROOT,
    );
    sys::openat2(
        parent_fd.as_fd(),
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        IN_ROOT,
    )
}

fn is_symlink(root: BorrowedFd<'_>, rel: &str) -> io::Result<bool> {
    match sys::lstatat(root, rel) {
        Ok(st) => Ok(st.st_mode & libc::S_IFMT == libc::S_IFLNK),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Refuses a rootfs whose `/proc`, `/sys`, `/dev` or `/dev/null` is a symlink (the class
/// of CVE-2019-16884, CVE-2023-27561 and CVE-2025-31133).
pub fn check_rootfs(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    for (rel, what) in [("proc", "/proc"), ("sys", "/sys"), ("dev", "/dev")] {
        if is_symlink(root, rel).map_err(sys_err("inspect", format!("/{rel}")))? {
            return Err(RootfsError::SymlinkInRootfs {
                path: format!("/{rel}"),
                what,
            });
        }
    }
    // `dev` is now known not to be a symlink; look at the image's `dev/null` inside it.
    if is_symlink(root, "dev/null").map_err(sys_err("inspect", "/dev/null"))? {
        return Err(RootfsError::SymlinkInRootfs {
            path: "/dev/null".into(),
            what: "/dev/null",
        });
    }
    Ok(())
}

/// Mounts `fstype` on `path` inside `root`, creating the directory when missing.
fn mount_fs(
    root: BorrowedFd<'_>,
    path: &str,
    fstype: &str,
    source: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    let target = mkdir_all_in_root(root, path).map_err(sys_err("create mount point", path))?;
    sys::mount(
        Some(source),
        &sys::fd_path(target.as_fd()),
        Some(fstype),
        flags,
        data,
    )
    .map_err(sys_err("mount", format!("{fstype} on {path}")))
}

/// Remounts the mount at `path` inside `root` read-only (keeping its other flags).
fn remount_ro(root: BorrowedFd<'_>, path: &str, extra: libc::c_ulong) -> Result<(), RootfsError> {
    let fd = open_in_root(root, path).map_err(sys_err("open", path))?;
    sys::mount(
        None,
        &sys::fd_path(fd.as_fd()),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | MS_RO | extra,
        None,
    )
    .map_err(sys_err("remount read-only", path))
}

/// Makes the rootfs a mount point at `target` (bind of a dir, or an overlay) and returns it
/// opened as a directory.
pub fn mount_rootfs(
    spec: &ContainerSpec,
    target: &Path,
    state_dir: &Path,
) -> Result<OwnedFd, RootfsError> {
    let tgt = target.display().to_string();
    match &spec.rootfs {
        crate::runtime::spec::Rootfs::Dir { path } => {
            let p = path.display().to_string();
            sys::mount(Some(&p), &tgt, None, libc::MS_BIND | libc::MS_REC, None)
                .map_err(sys_err("bind rootfs", p))?;
        }
        crate::runtime::spec::Rootfs::Overlay { lowers } => {
            let lower = lowers
                .iter()
                .map(|l| l.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            let data = format!(
                "lowerdir={lower},upperdir={},workdir={}",
                state_dir.join("upper").display(),
                state_dir.join("work").display()
            );
            sys::mount(Some("overlay"), &tgt, Some("overlay"), 0, Some(&data))
                .map_err(sys_err("mount overlay rootfs", tgt.clone()))?;
        }
    }
    sys::open(target, libc::O_PATH | libc::O_DIRECTORY).map_err(sys_err("open rootfs", tgt))
}

/// The default mounts (SECURITY.md §1.2), devices, volumes, masked and read-only paths.
pub fn setup_mounts(root: BorrowedFd<'_>, spec: &ContainerSpec) -> Result<(), RootfsError> {
    setup_mounts_with(root, spec, &mut || Ok(()))
}

/// [`setup_mounts`], calling `enter_cgroup` right before each cgroupfs mount (the caller
/// makes its cgroup namespace there; it must be idempotent).
pub fn setup_mounts_with(
    root: BorrowedFd<'_>,
    spec: &ContainerSpec,
    enter_cgroup: &mut dyn FnMut() -> Result<(), RootfsError>,
) -> Result<(), RootfsError> {
    check_rootfs(root)?;
    if !spec.default_mounts {
        return setup_listed_mounts(root, spec, enter_cgroup);
    }
    mount_fs(root, "/proc", "proc", "proc", NOSUID_NODEV_NOEXEC, None)?;
    mount_fs(
        root,
        "/dev",
        "tmpfs",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    setup_dev(root)?;
    mount_fs(
        root,
        "/dev/pts",
        "devpts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs(
        root,
        "/dev/shm",
        "tmpfs",
        "shm",
        NOSUID_NODEV_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    mount_fs(
        root,
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        NOSUID_NODEV_NOEXEC,
        None,
    )?;
    mount_fs(
        root,
        "/sys",
        "sysfs",
        "sysfs",
        NOSUID_NODEV_NOEXEC | MS_RO,
        None,
    )?;
    enter_cgroup()?;
    mount_cgroupfs(root)?;
    for m in &spec.mounts {
        mount_one(root, m)?;
    }
    mask_paths(root, &spec.masked_paths)?;
    for p in &spec.readonly_paths {
        readonly_path(root, p)?;
    }
    Ok(())
}

/// OCI: exactly the bundle's mounts in order (a `cgroup` mount becomes the read-only
/// cgroupfs view, a tmpfs on `/dev` gets the default devices), then masked and read-only
/// paths.
fn setup_listed_mounts(
    root: BorrowedFd<'_>,
    spec: &ContainerSpec,
    enter_cgroup: &mut dyn FnMut() -> Result<(), RootfsError>,
) -> Result<(), RootfsError> {
    for m in &spec.mounts {
        if m.kind == "cgroup" || m.kind == "cgroup2" {
            mkdir_all_in_root(root, &m.destination)
                .map_err(sys_err("create mount point", m.destination.clone()))?;
            enter_cgroup()?;
            mount_cgroupfs(root)?;
            continue;
        }
        mount_one(root, m)?;
        if m.destination.trim_end_matches('/') == "/dev" && !m.is_bind() {
            setup_dev(root)?;
        }
    }
    if !spec
        .mounts
        .iter()
        .any(|m| m.destination.trim_end_matches('/') == "/dev")
    {
        // No /dev in the bundle: the default devices still go into a fresh tmpfs.
        mount_fs(
            root,
            "/dev",
            "tmpfs",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )?;
        setup_dev(root)?;
    }
    for d in &spec.devices {
        make_device(root, d)?;
    }
    mask_paths(root, &spec.masked_paths)?;
    for p in &spec.readonly_paths {
        readonly_path(root, p)?;
    }
    Ok(())
}

/// Creates the default device nodes in the fresh `/dev` tmpfs (runtime spec "Default
/// Devices"), the `/dev/ptmx` symlink and the fd links.
fn setup_dev(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    let dev = open_in_root(root, "/dev").map_err(sys_err("open", "/dev"))?;
    // An O_PATH fd cannot be used as mknodat's dirfd on every kernel; reopen as a directory.
    let dev = sys::openat2(
        dev.as_fd(),
        ".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
        libc::RESOLVE_NO_SYMLINKS,
    )
    .map_err(sys_err("open", "/dev"))?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        sys::mknodat(dev.as_fd(), name, libc::S_IFCHR | 0o666, major, minor)
            .map_err(sys_err("mknod", format!("/dev/{name}")))?;
        // mknod applies the umask; make the mode exactly 0666.
        let fd = sys::openat2(
            dev.as_fd(),
            name,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            libc::RESOLVE_NO_SYMLINKS,
        )
        .map_err(sys_err("open", format!("/dev/{name}")))?;
        std::fs::set_permissions(
            sys::fd_path(fd.as_fd()),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .map_err(sys_err("chmod", format!("/dev/{name}")))?;
    }
    for (target, name) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("/proc/kcore", "core"),
    ] {
        sys::symlinkat(target, dev.as_fd(), name)
            .map_err(sys_err("symlink", format!("/dev/{name}")))?;
    }
    Ok(())
}

/// Creates one OCI device node (an existing file of that name is replaced, as runc does),
/// with its mode and owner. The parent is created inside the root; nothing is followed out
/// of it.
fn make_device(root: BorrowedFd<'_>, d: &crate::runtime::spec::Device) -> Result<(), RootfsError> {
    let p = Path::new(&d.path);
    let (parent, name) = match (p.parent(), p.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) => (parent.to_string_lossy().into_owned(), name),
        _ => {
            return Err(sys_err("create device", d.path.clone())(
                io::ErrorKind::InvalidInput.into(),
            ));
        }
    };
    let dir = mkdir_all_in_root(root, &parent).map_err(sys_err("create", parent.clone()))?;
    let dir = sys::openat2(
        dir.as_fd(),
        ".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
        libc::RESOLVE_NO_SYMLINKS,
    )
    .map_err(sys_err("open", parent))?;
    let kind = match d.kind {
        'b' => libc::S_IFBLK,
        'p' => libc::S_IFIFO,
        _ => libc::S_IFCHR,
    };
    let mode = d.mode.unwrap_or(0o666) & 0o7777;
    let c = std::ffi::CString::new(name)
        .map_err(|e| sys_err("create device", d.path.clone())(io::Error::other(e)))?;
    // SAFETY: unlinkat on a directory fd we own and a valid C string; a missing file is fine.
    unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
    sys::mknodat(dir.as_fd(), name, kind | mode, d.major, d.minor)
        .map_err(sys_err("mknod", d.path.clone()))?;
    let node = sys::openat2(
        dir.as_fd(),
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        libc::RESOLVE_NO_SYMLINKS,
    )
    .map_err(sys_err("open", d.path.clone()))?;
    // mknod applied the umask: set the exact mode, then the owner.
    std::fs::set_permissions(
        sys::fd_path(node.as_fd()),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .map_err(sys_err("chmod", d.path.clone()))?;
    // SAFETY: fchownat on an O_PATH fd we own with an empty path (AT_EMPTY_PATH): the node
    // itself, nothing is looked up.
    let r = unsafe {
        libc::fchownat(
            node.as_raw_fd(),
            c"".as_ptr(),
            d.uid.unwrap_or(0),
            d.gid.unwrap_or(0),
            libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(sys_err("chown", d.path.clone())(io::Error::last_os_error()));
    }
    Ok(())
}

/// Mounts `/sys/fs/cgroup` read-only as the host has it: one cgroup2 mount on pure v2
/// hosts; on v1 and hybrid hosts a tmpfs with each hierarchy mounted below (the container's
/// cgroup namespace makes each show only the container's own subtree).
fn mount_cgroupfs(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(sys_err("read", "/proc/self/mountinfo"))?;
    let mut subs: Vec<(String, String, String)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mountpoint = left.split_whitespace().nth(4).unwrap_or("");
        let mut r = right.split_whitespace();
        let (fstype, _src, superopts) = (r.next().unwrap_or(""), r.next(), r.next().unwrap_or(""));
        if !(fstype == "cgroup" || fstype == "cgroup2") {
            continue;
        }
        if mountpoint == "/sys/fs/cgroup" && fstype == "cgroup2" {
            return mount_fs(
                root,
                "/sys/fs/cgroup",
                "cgroup2",
                "cgroup2",
                NOSUID_NODEV_NOEXEC | MS_RO,
                None,
            );
        }
        if let Some(sub) = mountpoint.strip_prefix("/sys/fs/cgroup/") {
            if sub.contains('/') || sub.is_empty() {
                continue;
            }
            let opts = superopts
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .collect::<Vec<_>>()
                .join(",");
            subs.push((sub.to_string(), fstype.to_string(), opts));
        }
    }
    if subs.is_empty() {
        return Ok(());
    }
    mount_fs(
        root,
        "/sys/fs/cgroup",
        "tmpfs",
        "cgroup",
        NOSUID_NODEV_NOEXEC,
        Some("mode=755"),
    )?;
    for (sub, fstype, opts) in &subs {
        let path = format!("/sys/fs/cgroup/{sub}");
        let data = if opts.is_empty() {
            None
        } else {
            Some(opts.as_str())
        };
        mount_fs(
            root,
            &path,
            fstype,
            fstype,
            NOSUID_NODEV_NOEXEC | MS_RO,
            data,
        )?;
    }
    remount_ro(root, "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC)
}

/// A volume (bind from the host) or an OCI filesystem mount.
fn mount_one(root: BorrowedFd<'_>, m: &Mount) -> Result<(), RootfsError> {
    if !m.is_bind() {
        let (flags, data) = parse_options(&m.options);
        mount_fs(
            root,
            &m.destination,
            &m.kind,
            &m.source,
            flags,
            data.as_deref(),
        )?;
        return apply_propagation(root, m);
    }
    let src = sys::open(Path::new(&m.source), libc::O_PATH)
        .map_err(sys_err("open volume source", m.source.clone()))?;
    let st =
        sys::lstatat(src.as_fd(), "").map_err(sys_err("stat volume source", m.source.clone()))?;
    let target = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mkdir_all_in_root(root, &m.destination)
    } else {
        touch_in_root(root, &m.destination)
    }
    .map_err(sys_err("create mount point", m.destination.clone()))?;
    let rec = if m.options.iter().any(|o| o == "bind") {
        0
    } else {
        libc::MS_REC
    };
    sys::mount(
        Some(&sys::fd_path(src.as_fd())),
        &sys::fd_path(target.as_fd()),
        None,
        libc::MS_BIND | rec,
        None,
    )
    .map_err(sys_err(
        "bind",
        format!("{} on {}", m.source, m.destination),
    ))?;
    let (flags, _) = parse_options(&m.options);
    let extra = flags & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
    if m.readonly() {
        remount_ro(root, &m.destination, extra)?;
    } else if extra != 0 {
        let fd =
            open_in_root(root, &m.destination).map_err(sys_err("open", m.destination.clone()))?;
        sys::mount(
            None,
            &sys::fd_path(fd.as_fd()),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | extra,
            None,
        )
        .map_err(sys_err("remount", m.destination.clone()))?;
    }
    apply_propagation(root, m)
}

/// The propagation type a mount's options ask for (`shared`, `rslave`, ...), if any: the
/// last one wins, as with mount(8).
pub fn propagation(options: &[String]) -> Option<libc::c_ulong> {
    options.iter().rev().find_map(|o| {
        let (rec, kind) = match o.strip_prefix('r') {
            Some(k @ ("shared" | "slave" | "private" | "unbindable")) => (libc::MS_REC, k),
            _ => (0, o.as_str()),
        };
        let flag = match kind {
            "shared" => libc::MS_SHARED,
            "slave" => libc::MS_SLAVE,
            "private" => libc::MS_PRIVATE,
            "unbindable" => libc::MS_UNBINDABLE,
            _ => return None,
        };
        Some(flag | rec)
    })
}

/// Sets the propagation type of a just-made mount (a separate mount(2) call: the kernel
/// ignores it among the flags of a new mount). The container's mount namespace is private,
/// so a shared mount here forms a peer group inside the container only.
fn apply_propagation(root: BorrowedFd<'_>, m: &Mount) -> Result<(), RootfsError> {
    let Some(flag) = propagation(&m.options) else {
        return Ok(());
    };
    let fd = open_in_root(root, &m.destination).map_err(sys_err("open", m.destination.clone()))?;
    sys::mount(None, &sys::fd_path(fd.as_fd()), None, flag, None)
        .map_err(sys_err("set propagation of", m.destination.clone()))
}

/// Splits mount(8)-style options into flags and filesystem data.
pub fn parse_options(options: &[String]) -> (libc::c_ulong, Option<String>) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MS_RO,
            "rw" | "bind" | "rbind" | "defaults" => {}
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" | "unbindable"
            | "runbindable" => {} // see `propagation`
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "suid" | "dev" | "exec" | "atime" | "async" => {}
            other => data.push(other.to_string()),
        }
    }
    (
        flags,
        if data.is_empty() {
            None
        } else {
            Some(data.join(","))
        },
    )
}

/// Masks each path: a file gets the container's `/dev/null` (verified to be char 1:3
/// through an `O_PATH` fd) bound over it, a directory an empty read-only tmpfs. Missing
/// paths are skipped. Adds every cpu's `thermal_throttle` directory.
fn mask_paths(root: BorrowedFd<'_>, paths: &[String]) -> Result<(), RootfsError> {
    if paths.is_empty() {
        return Ok(());
    }
    let null = open_in_root(root, "/dev/null").map_err(sys_err("open", "/dev/null"))?;
    let st = sys::lstatat(null.as_fd(), "").map_err(sys_err("stat", "/dev/null"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(1, 3) {
        return Err(RootfsError::FakeDevNull);
    }
    let null_path = sys::fd_path(null.as_fd());
    let mut all: Vec<String> = paths.to_vec();
    if let Ok(cpus) = std::fs::read_dir("/sys/devices/system/cpu") {
        for cpu in cpus.flatten() {
            let tt = cpu.path().join("thermal_throttle");
            if tt.is_dir() {
                all.push(tt.display().to_string());
            }
        }
    }
    for p in &all {
        let fd = match sys::openat2(
            root,
            p.trim_start_matches('/'),
            libc::O_PATH,
            0,
            IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
        ) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                continue;
            }
            Err(e) => return Err(sys_err("open masked path", p.clone())(e)),
        };
        let st = sys::lstatat(fd.as_fd(), "").map_err(sys_err("stat masked path", p.clone()))?;
        let target = sys::fd_path(fd.as_fd());
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            sys::mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MS_RO | NOSUID_NODEV_NOEXEC,
                Some("nr_blocks=1,nr_inodes=1"),
            )
            .map_err(sys_err("mask", p.clone()))?;
        } else {
            sys::mount(Some(&null_path), &target, None, libc::MS_BIND, None)
                .map_err(sys_err("mask", p.clone()))?;
        }
    }
    Ok(())
}

/// Binds `path` onto itself and remounts it read-only; missing paths are skipped.
fn readonly_path(root: BorrowedFd<'_>, path: &str) -> Result<(), RootfsError> {
    let fd = match sys::openat2(
        root,
        path.trim_start_matches('/'),
        libc::O_PATH,
        0,
        IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(sys_err("open read-only path", path)(e)),
    };
    let p = sys::fd_path(fd.as_fd());
    sys::mount(Some(&p), &p, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(sys_err("bind", path))?;
    remount_ro(root, path, NOSUID_NODEV_NOEXEC)
}

/// Moves the root to `root` with `pivot_root(".", ".")` and detaches the old root; the
/// host's filesystem is unreachable afterwards.
pub fn pivot(root: BorrowedFd<'_>, readonly: bool) -> Result<(), RootfsError> {
    sys::fchdir(root).map_err(sys_err("chdir", "rootfs"))?;
    sys::pivot_root_here().map_err(sys_err("pivot_root", "rootfs"))?;
    sys::umount2(".", libc::MNT_DETACH).map_err(sys_err("detach old root", "/"))?;
    std::env::set_current_dir("/").map_err(sys_err("chdir", "/"))?;
    if readonly {
        sys::mount(
            None,
            "/",
            None,
            libc::MS_BIND | libc::MS_REMOUNT | MS_RO,
            None,
        )
        .map_err(sys_err("remount read-only", "/"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> Vec<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn propagation_options_are_flags_not_filesystem_data() {
        assert_eq!(propagation(&opts(&["nosuid", "size=1m"])), None);
        assert_eq!(propagation(&opts(&["shared"])), Some(libc::MS_SHARED));
        assert_eq!(
            propagation(&opts(&["rbind", "rslave"])),
            Some(libc::MS_SLAVE | libc::MS_REC)
        );
        // The last one wins, as with mount(8).
        assert_eq!(
            propagation(&opts(&["shared", "private"])),
            Some(libc::MS_PRIVATE)
        );
        assert_eq!(
            propagation(&opts(&["runbindable"])),
            Some(libc::MS_UNBINDABLE | libc::MS_REC)
        );
        // tmpfs with "shared" used to get "shared" as mount data (EINVAL).
        assert_eq!(
            parse_options(&opts(&["shared", "mode=755"])),
            (0, Some("mode=755".to_string()))
        );
    }
}
