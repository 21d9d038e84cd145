//! seccomp: builds berth's default syscall filter (the equivalent of Docker's default
//! profile) as a classic-BPF program, and installs a filter on the calling thread.
//!
//! Owns: the policy ([`profile`](self) tables), the syscall number tables, the BPF program
//! (compiled by `bpf.rs`, a binary search over syscall numbers, checked against seccompiler's
//! output of the same policy in the tests)
//! and the `seccomp(2)` call. It does not set `no_new_privs`, fork or exec: the runtime does,
//! and calls [`apply`] in the container's init as the last step before `execve`.
//!
//! # Use (in the runtime)
//!
//! ```no_run
//! use berth_agent::host::seccomp::{self, Arch};
//! # fn main() -> Result<(), seccomp::SeccompError> {
//! // In the parent, before fork: building allocates.
//! let filter = seccomp::default_filter(Arch::native()?)?;
//! // In the child, after the capabilities are dropped and after
//! // prctl(PR_SET_NO_NEW_PRIVS, 1), immediately before execve: no allocation happens here.
//! seccomp::apply(&filter)?;
//! # Ok(()) }
//! ```
//!
//! # The policy
//!
//! Deny by default with EPERM; allow moby's list of ~360 syscalls; `clone` only without
//! namespace flags; `clone3` fails with ENOSYS (so libc falls back to `clone`); `socket` not
//! for AF_ALG or AF_VSOCK; `personality` only for the five harmless personas. Everything
//! moby allows only with a capability outside the default 14 (mount, unshare, setns, bpf,
//! keyctl, ptrace-like `kcmp`, module loading, reboot, clock setting, ...) is denied.
//! Processes of another architecture (i386, and x32 calls on x86_64) are not served: an
//! i386 process is killed, an x32 call gets EPERM. See docs/seccomp.md.

mod bpf;
mod profile;
mod syscalls;

use std::collections::BTreeMap;
use std::io;

pub use seccompiler::{BpfProgram, sock_filter};
#[cfg(test)]
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

pub use crate::host::cgroup::ErrorKind;

/// The syscalls SECURITY.md §1.8 requires the default profile to refuse entirely for a
/// container with the default capabilities (`clone3` is not here: it gets ENOSYS). The
/// expectation the filter's unit tests and the real-process test (`agent/tests/seccomp_real.rs`)
/// check against; the profile itself is an allow-list and does not read it.
pub const FULLY_BLOCKED: &[&str] = &[
    "_sysctl",
    "acct",
    "add_key",
    "bpf",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "migrate_pages",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pidfd_getfd",
    "pivot_root",
    "process_madvise",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "setdomainname",
    "sethostname",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "afs_syscall",
    "getpmsg",
    "putpmsg",
    "security",
    "tuxcall",
    "vserver",
];

/// The kernel refuses classic-BPF programs longer than this (BPF_MAXINSNS).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// The CPU architectures the default filter is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this binary runs on.
    pub fn native() -> Result<Self, SeccompError> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(Self::X86_64),
            "aarch64" => Ok(Self::Aarch64),
            other => Err(SeccompError::UnsupportedArch {
                arch: other.to_owned(),
            }),
        }
    }

    #[cfg(test)]
    fn target(self) -> TargetArch {
        match self {
            Self::X86_64 => TargetArch::x86_64,
            Self::Aarch64 => TargetArch::aarch64,
        }
    }

    /// The `AUDIT_ARCH_*` value the kernel reports in `seccomp_data.arch`.
    pub fn audit_arch(self) -> u32 {
        match self {
            Self::X86_64 => 0xC000_003E,  // EM_X86_64 | 64BIT | LE
            Self::Aarch64 => 0xC000_00B7, // EM_AARCH64 | 64BIT | LE
        }
    }

    fn table(self) -> &'static [(&'static str, i64)] {
        match self {
            Self::X86_64 => syscalls::X86_64,
            Self::Aarch64 => syscalls::AARCH64,
        }
    }
}

/// What can go wrong building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no seccomp profile for architecture {arch}; berth supports x86_64 and aarch64")]
    UnsupportedArch { arch: String },

    #[error("seccomp policy uses syscall {name}, which is unknown on every architecture")]
    UnknownSyscall { name: &'static str },

    #[error("failed to compile the seccomp filter for {arch:?}")]
    Compile {
        arch: Arch,
        #[source]
        source: seccompiler::BackendError,
    },

    #[error("seccomp filter for {arch:?} has {len} instructions, over the kernel's limit of 4096")]
    TooLong { arch: Arch, len: usize },

    #[error("failed to install the seccomp filter; without CAP_SYS_ADMIN, set no_new_privs first")]
    Install {
        #[source]
        source: io::Error,
    },

    #[error("seccomp filter synchronization failed in thread {tid}")]
    ThreadSync { tid: i64 },
}

impl SeccompError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnsupportedArch { .. } => ErrorKind::Unavailable,
            Self::UnknownSyscall { .. }
            | Self::Compile { .. }
            | Self::TooLong { .. }
            | Self::ThreadSync { .. } => ErrorKind::Internal,
            Self::Install { source } => match source.raw_os_error() {
                Some(libc::EACCES) => ErrorKind::Conflict,
                Some(libc::EINVAL) => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        }
    }
}

/// The number of syscall `name` on `arch`, from berth's tables (generated from the kernel
/// headers by `scripts/gen-seccomp-syscalls.py`).
pub fn syscall_number(arch: Arch, name: &str) -> Option<i64> {
    let table = arch.table();
    table
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| table[i].1)
}

/// Builds the default filter for `arch` (see the module docs for the policy) with berth's
/// compact compiler (`bpf.rs`): a binary search over the syscall numbers.
pub fn default_filter(arch: Arch) -> Result<BpfProgram, SeccompError> {
    let program = bpf::compile(arch.audit_arch(), &policy(arch)?, libc::EPERM as u32);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong {
            arch,
            len: program.len(),
        });
    }
    Ok(program)
}

/// The default policy for `arch` as syscall number → decision (unlisted: EPERM).
fn policy(arch: Arch) -> Result<BTreeMap<u32, bpf::Decision>, SeccompError> {
    use bpf::{Check, Decision};
    let number = |name: &'static str| -> Result<Option<u32>, SeccompError> {
        resolve(arch, name)?
            .map(|nr| u32::try_from(nr).map_err(|_| SeccompError::UnknownSyscall { name }))
            .transpose()
    };
    let low = |v: u64| u32::try_from(v & 0xffff_ffff).unwrap_or(u32::MAX);
    let mut rules = BTreeMap::new();
    let arch_specific = match arch {
        Arch::X86_64 => profile::ALLOWED_X86_64,
        Arch::Aarch64 => profile::ALLOWED_AARCH64,
    };
    let all_names = profile::ALLOWED
        .iter()
        .chain(profile::ALLOWED_PTRACE)
        .chain(profile::ALLOWED_BY_DEFAULT_CAPS)
        .chain(arch_specific);
    for &name in all_names {
        if let Some(nr) = number(name)? {
            rules.insert(nr, Decision::Allow);
        }
    }
    if let Some(nr) = number("clone")? {
        let mask = low(profile::CLONE_NAMESPACE_FLAGS);
        rules.insert(
            nr,
            Decision::AllowIf(vec![Check::MaskedEq { mask, value: 0 }]),
        );
    }
    if let Some(nr) = number("socket")? {
        let [alg, vsock] = profile::SOCKET_DENIED_DOMAINS.map(low);
        rules.insert(
            nr,
            Decision::AllowIf(vec![Check::Lt(alg), Check::Eq(alg + 1), Check::Gt(vsock)]),
        );
    }
    if let Some(nr) = number("personality")? {
        let allowed = profile::PERSONALITY_ALLOWED
            .iter()
            .map(|&p| Check::Eq(low(p)));
        rules.insert(nr, Decision::AllowIf(allowed.collect()));
    }
    let clone3 = number("clone3")?.ok_or(SeccompError::UnknownSyscall { name: "clone3" })?;
    rules.insert(clone3, Decision::Errno(profile::CLONE3_ERRNO));
    Ok(rules)
}

/// The same policy compiled by seccompiler (one block per syscall, 1 592 instructions on
/// x86_64): the reference the compact program is checked against.
#[cfg(test)]
fn seccompiler_filter(arch: Arch) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let arch_specific = match arch {
        Arch::X86_64 => profile::ALLOWED_X86_64,
        Arch::Aarch64 => profile::ALLOWED_AARCH64,
    };
    let all_names = profile::ALLOWED
        .iter()
        .chain(profile::ALLOWED_PTRACE)
        .chain(profile::ALLOWED_BY_DEFAULT_CAPS)
        .chain(arch_specific);
    for &name in all_names {
        if let Some(nr) = resolve(arch, name)? {
            // An empty rule list matches unconditionally.
            rules.insert(nr, Vec::new());
        }
    }
    let compile = |source| SeccompError::Compile { arch, source };

    if let Some(nr) = resolve(arch, "clone")? {
        let no_namespace = condition(0, SeccompCmpOp::MaskedEq(profile::CLONE_NAMESPACE_FLAGS), 0)
            .map_err(compile)?;
        rules.insert(
            nr,
            vec![SeccompRule::new(vec![no_namespace]).map_err(compile)?],
        );
    }
    if let Some(nr) = resolve(arch, "socket")? {
        let [alg, vsock] = profile::SOCKET_DENIED_DOMAINS;
        let allowed = [
            condition(0, SeccompCmpOp::Lt, alg),
            condition(0, SeccompCmpOp::Eq, alg + 1),
            condition(0, SeccompCmpOp::Gt, vsock),
        ];
        let socket_rules = allowed
            .into_iter()
            .map(|c| SeccompRule::new(vec![c.map_err(compile)?]).map_err(compile))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, socket_rules);
    }
    if let Some(nr) = resolve(arch, "personality")? {
        let personality_rules = profile::PERSONALITY_ALLOWED
            .iter()
            .map(|&p| {
                let c = condition(0, SeccompCmpOp::Eq, p).map_err(compile)?;
                SeccompRule::new(vec![c]).map_err(compile)
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, personality_rules);
    }

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch.target(),
    )
    .map_err(compile)?;
    let body: BpfProgram = filter.try_into().map_err(compile)?;

    let mut program = clone3_prologue(arch)?;
    program.extend(body);
    Ok(program)
}

/// The number of `name` on `arch`, `None` if it does not exist there; an error if it exists
/// nowhere (a typo in the policy).
fn resolve(arch: Arch, name: &'static str) -> Result<Option<i64>, SeccompError> {
    match syscall_number(arch, name) {
        Some(nr) => Ok(Some(nr)),
        None if KNOWN_ELSEWHERE.contains(&name) => Ok(None),
        None if syscall_number(Arch::X86_64, name).is_some()
            || syscall_number(Arch::Aarch64, name).is_some() =>
        {
            Ok(None)
        }
        None => Err(SeccompError::UnknownSyscall { name }),
    }
}

/// Names in moby's list that exist only on architectures berth has no table for (32-bit
/// x86 and arm, s390, riscv): they are legitimately absent from both tables.
const KNOWN_ELSEWHERE: &[&str] = &[
    "_llseek",
    "_newselect",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "breakpoint",
    "cacheflush",
    "chown32",
    "clock_adjtime64",
    "clock_getres_time64",
    "clock_gettime64",
    "clock_nanosleep_time64",
    "fadvise64_64",
    "fchown32",
    "fcntl64",
    "fstat64",
    "fstatat64",
    "fstatfs64",
    "ftruncate64",
    "futex_time64",
    "getegid32",
    "geteuid32",
    "getgid32",
    "getgroups32",
    "getresgid32",
    "getresuid32",
    "getuid32",
    "io_pgetevents_time64",
    "ipc",
    "lchown32",
    "lstat64",
    "mmap2",
    "mq_timedreceive_time64",
    "mq_timedsend_time64",
    "ppoll_time64",
    "pselect6_time64",
    "recv",
    "recvmmsg_time64",
    "riscv_hwprobe",
    "rt_sigtimedwait_time64",
    "sched_rr_get_interval_time64",
    "semtimedop_time64",
    "send",
    "sendfile64",
    "set_tls",
    "setfsgid32",
    "setfsuid32",
    "setgid32",
    "setgroups32",
    "setregid32",
    "setresgid32",
    "setresuid32",
    "setreuid32",
    "setuid32",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "stat64",
    "statfs64",
    "sync_file_range2",
    "timer_gettime64",
    "timer_settime64",
    "timerfd_gettime64",
    "timerfd_settime64",
    "truncate64",
    "ugetrlimit",
    "utimensat_time64",
    "waitpid",
];

#[cfg(test)]
fn condition(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    // Every argument compared here is 32 bits wide (int domain, unsigned persona, the
    // low word of clone's flags where the namespace bits live).
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

#[cfg(test)]
/// Four instructions put before seccompiler's program (whose jumps are all relative, so the
/// prefix does not disturb them): on the filter's own architecture, `clone3` returns ENOSYS;
/// everything else falls through to the main program.
fn clone3_prologue(arch: Arch) -> Result<BpfProgram, SeccompError> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const NR_OFFSET: u32 = 0; // offsetof(struct seccomp_data, nr)
    const ARCH_OFFSET: u32 = 4; // offsetof(struct seccomp_data, arch)
    let clone3 = resolve(arch, "clone3")?.ok_or(SeccompError::UnknownSyscall { name: "clone3" })?;
    let clone3 =
        u32::try_from(clone3).map_err(|_| SeccompError::UnknownSyscall { name: "clone3" })?;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    Ok(vec![
        insn(LD_W_ABS, 0, 0, ARCH_OFFSET),
        // Another architecture: let the main program decide (it kills the process).
        insn(JEQ_K, 0, 3, arch.audit_arch()),
        insn(LD_W_ABS, 0, 0, NR_OFFSET),
        insn(JEQ_K, 0, 1, clone3),
        insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | profile::CLONE3_ERRNO),
    ])
}

#[cfg(test)]
const SECCOMP_RET_ERRNO: u32 = bpf::RET_ERRNO;

/// Installs `filter` on the calling thread with `seccomp(SECCOMP_SET_MODE_FILTER)`.
///
/// The caller must have set `no_new_privs` (or hold CAP_SYS_ADMIN). Meant for a freshly
/// forked, single-threaded child just before `execve`: it does not allocate, so it is safe in
/// a `pre_exec` hook. The filter is inherited by children and survives `execve`.
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    install(filter, 0)
}

/// Installs `filter` on every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`).
pub fn apply_all_threads(filter: &BpfProgram) -> Result<(), SeccompError> {
    install(filter, libc::SECCOMP_FILTER_FLAG_TSYNC)
}

fn install(filter: &BpfProgram, flags: libc::c_ulong) -> Result<(), SeccompError> {
    let len = u16::try_from(filter.len())
        .ok()
        .filter(|len| *len > 0)
        .ok_or(SeccompError::Install {
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    let prog = libc::sock_fprog {
        len,
        // seccompiler's sock_filter is #[repr(C)] with the kernel's layout, as libc's is.
        filter: filter.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the
    // program and does not keep the pointer. The other arguments are plain integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &raw const prog,
        )
    };
    match rc {
        0 => Ok(()),
        rc if rc < 0 => Err(SeccompError::Install {
            source: io::Error::last_os_error(),
        }),
        tid => Err(SeccompError::ThreadSync { tid }),
    }
}

#[cfg(test)]
mod tests;
