//! The filter is checked by running it: a small classic-BPF interpreter evaluates the
//! generated program for a syscall number, architecture and arguments, as the kernel would.
//! That covers aarch64 on an x86_64 machine; `tests/seccomp_real.rs` installs it for real.

use std::collections::BTreeSet;

use super::*;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_EPERM: u32 = SECCOMP_RET_ERRNO | 1;
const RET_ENOSYS: u32 = SECCOMP_RET_ERRNO | 38;

/// Evaluates `prog` on a `struct seccomp_data` (little-endian, as on both arches).
fn run(prog: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
    let mut data = Vec::with_capacity(64);
    data.extend_from_slice(&(nr as i32).to_le_bytes());
    data.extend_from_slice(&arch.to_le_bytes());
    data.extend_from_slice(&0u64.to_le_bytes()); // instruction pointer
    for arg in args {
        data.extend_from_slice(&arg.to_le_bytes());
    }
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    loop {
        let insn = &prog[pc];
        let k = insn.k;
        let jump = |taken: bool| pc + 1 + usize::from(if taken { insn.jt } else { insn.jf });
        pc = match insn.code {
            0x20 => {
                let at = k as usize;
                acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                pc + 1
            }
            0x54 => {
                acc &= k;
                pc + 1
            }
            0x05 => pc + 1 + k as usize,
            0x15 => jump(acc == k),
            0x25 => jump(acc > k),
            0x35 => jump(acc >= k),
            0x45 => jump(acc & k != 0),
            0x06 => return k,
            code => panic!("unexpected BPF opcode {code:#x} at {pc}"),
        };
    }
}

fn decide(arch: Arch, name: &str, args: [u64; 6]) -> u32 {
    let prog = default_filter(arch).unwrap();
    let nr = syscall_number(arch, name).unwrap_or_else(|| panic!("{name} on {arch:?}"));
    run(&prog, arch.audit_arch(), nr, args)
}

const ARCHES: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

#[test]
fn filters_fit_the_kernel_limit_on_every_arch() {
    for arch in ARCHES {
        let prog = default_filter(arch).unwrap();
        eprintln!("{arch:?}: {} BPF instructions", prog.len());
        assert!(prog.len() < MAX_INSTRUCTIONS, "{arch:?}: {}", prog.len());
    }
}

#[test]
fn syscall_tables_are_sorted_and_unique() {
    for arch in ARCHES {
        let names: Vec<&str> = arch.table().iter().map(|(n, _)| *n).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{arch:?}");
        let numbers: BTreeSet<i64> = arch.table().iter().map(|(_, nr)| *nr).collect();
        assert_eq!(numbers.len(), names.len(), "{arch:?}: duplicate numbers");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_64_table_agrees_with_libc() {
    let known = [
        ("read", libc::SYS_read),
        ("write", libc::SYS_write),
        ("openat", libc::SYS_openat),
        ("close", libc::SYS_close),
        ("mmap", libc::SYS_mmap),
        ("clone", libc::SYS_clone),
        ("clone3", libc::SYS_clone3),
        ("fork", libc::SYS_fork),
        ("execve", libc::SYS_execve),
        ("socket", libc::SYS_socket),
        ("personality", libc::SYS_personality),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("keyctl", libc::SYS_keyctl),
        ("bpf", libc::SYS_bpf),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("ptrace", libc::SYS_ptrace),
        ("reboot", libc::SYS_reboot),
        ("kexec_load", libc::SYS_kexec_load),
        ("pivot_root", libc::SYS_pivot_root),
        ("seccomp", libc::SYS_seccomp),
        ("fchmodat2", libc::SYS_fchmodat2),
        ("mseal", libc::SYS_mseal),
        ("futex_waitv", libc::SYS_futex_waitv),
        ("set_mempolicy_home_node", libc::SYS_set_mempolicy_home_node),
        ("arch_prctl", libc::SYS_arch_prctl),
        ("newfstatat", libc::SYS_newfstatat),
        ("getpid", libc::SYS_getpid),
    ];
    for (name, nr) in known {
        assert_eq!(syscall_number(Arch::X86_64, name), Some(nr), "{name}");
    }
}

#[test]
fn aarch64_table_has_the_generic_numbers() {
    for (name, nr) in [
        ("io_setup", 0),
        ("openat", 56),
        ("read", 63),
        ("newfstatat", 79),
        ("personality", 92),
        ("unshare", 97),
        ("getpid", 172),
        ("socket", 198),
        ("clone", 220),
        ("execve", 221),
        ("mmap", 222),
        ("clone3", 435),
        ("mseal", 462),
    ] {
        assert_eq!(syscall_number(Arch::Aarch64, name), Some(nr), "{name}");
    }
    for absent in ["open", "fork", "stat", "arch_prctl", "uretprobe"] {
        assert_eq!(syscall_number(Arch::Aarch64, absent), None, "{absent}");
    }
}

#[test]
fn every_allowed_syscall_is_allowed() {
    for arch in ARCHES {
        let prog = default_filter(arch).unwrap();
        let names = profile::ALLOWED
            .iter()
            .chain(profile::ALLOWED_PTRACE)
            .chain(profile::ALLOWED_BY_DEFAULT_CAPS);
        for name in names {
            if let Some(nr) = syscall_number(arch, name) {
                assert_eq!(
                    run(&prog, arch.audit_arch(), nr, [0; 6]),
                    RET_ALLOW,
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn blocked_syscalls_fail_with_eperm() {
    for arch in ARCHES {
        let prog = default_filter(arch).unwrap();
        for name in FULLY_BLOCKED {
            if let Some(nr) = syscall_number(arch, name) {
                assert_eq!(
                    run(&prog, arch.audit_arch(), nr, [0; 6]),
                    RET_EPERM,
                    "{name}"
                );
            }
        }
    }
}

/// On x86_64, exactly SECURITY.md's list is denied for every argument: nothing else in the
/// syscall table is lost by accident, and nothing on the list slipped through.
#[test]
fn x86_64_denies_exactly_the_documented_set() {
    let arch = Arch::X86_64;
    let prog = default_filter(arch).unwrap();
    let conditional = ["clone", "socket", "personality", "clone3"];
    // Not in moby's lists at all (so denied there too): removed from the kernel, or newer
    // than the profile, or allowed by moby only with CAP_SYS_ADMIN.
    let also_denied = [
        "query_module",
        "lsm_get_self_attr",
        "lsm_list_modules",
        "lsm_set_self_attr",
        "open_tree_attr",
    ];
    let mut denied: BTreeSet<&str> = BTreeSet::new();
    for (name, nr) in arch.table() {
        if conditional.contains(name) {
            continue;
        }
        if run(&prog, arch.audit_arch(), *nr, [0; 6]) != RET_ALLOW {
            denied.insert(name);
        }
    }
    let expected: BTreeSet<&str> = FULLY_BLOCKED.iter().copied().collect();
    let unexpected: Vec<_> = denied
        .difference(&expected)
        .filter(|n| !also_denied.contains(n))
        .collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|n| syscall_number(arch, n).is_some() && !denied.contains(*n))
        .collect();
    assert!(
        unexpected.is_empty(),
        "denied but not documented: {unexpected:?}"
    );
    assert!(missing.is_empty(), "documented but allowed: {missing:?}");
}

#[test]
fn clone3_fails_with_enosys_so_libc_falls_back_to_clone() {
    for arch in ARCHES {
        assert_eq!(decide(arch, "clone3", [0; 6]), RET_ENOSYS, "{arch:?}");
    }
}

#[test]
fn clone_is_allowed_without_namespace_flags_only() {
    const SIGCHLD: u64 = 17;
    const THREAD_FLAGS: u64 = 0x003d_0f00; // what pthread_create passes
    for arch in ARCHES {
        assert_eq!(decide(arch, "clone", [SIGCHLD, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            decide(arch, "clone", [THREAD_FLAGS, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        for flag in [
            0x0002_0000, // CLONE_NEWNS
            0x0200_0000, // CLONE_NEWCGROUP
            0x0400_0000, // CLONE_NEWUTS
            0x0800_0000, // CLONE_NEWIPC
            0x1000_0000, // CLONE_NEWUSER
            0x2000_0000, // CLONE_NEWPID
            0x4000_0000, // CLONE_NEWNET
        ] {
            assert_eq!(
                decide(arch, "clone", [SIGCHLD | flag, 0, 0, 0, 0, 0]),
                RET_EPERM,
                "{arch:?} flag {flag:#x}"
            );
        }
    }
}

#[test]
fn socket_refuses_af_alg_and_af_vsock_only() {
    for arch in ARCHES {
        for domain in [1, 2, 10, 16, 17, 39, 41, 44] {
            assert_eq!(
                decide(arch, "socket", [domain, 1, 0, 0, 0, 0]),
                RET_ALLOW,
                "{domain}"
            );
        }
        for domain in [38, 40, 0x1_0000_0028] {
            assert_eq!(
                decide(arch, "socket", [domain, 1, 0, 0, 0, 0]),
                RET_EPERM,
                "{domain}"
            );
        }
    }
}

#[test]
fn personality_allows_only_the_harmless_personas() {
    for arch in ARCHES {
        for persona in profile::PERSONALITY_ALLOWED {
            assert_eq!(
                decide(arch, "personality", [persona, 0, 0, 0, 0, 0]),
                RET_ALLOW
            );
        }
        for persona in [0x1234, 0x0040_0000 /* ADDR_NO_RANDOMIZE */, 0x1] {
            assert_eq!(
                decide(arch, "personality", [persona, 0, 0, 0, 0, 0]),
                RET_EPERM,
                "{persona:#x}"
            );
        }
    }
}

#[test]
fn other_architectures_are_killed_and_x32_calls_denied() {
    let prog = default_filter(Arch::X86_64).unwrap();
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    assert_eq!(run(&prog, AUDIT_ARCH_I386, 20, [0; 6]), RET_KILL_PROCESS);
    let getpid = syscall_number(Arch::X86_64, "getpid").unwrap();
    const X32_BIT: i64 = 0x4000_0000;
    assert_eq!(
        run(&prog, Arch::X86_64.audit_arch(), getpid | X32_BIT, [0; 6]),
        RET_EPERM
    );
    let arm = default_filter(Arch::Aarch64).unwrap();
    assert_eq!(
        run(&arm, Arch::X86_64.audit_arch(), 435, [0; 6]),
        RET_KILL_PROCESS
    );
}

#[test]
fn unknown_syscalls_default_to_eperm() {
    for arch in ARCHES {
        let prog = default_filter(arch).unwrap();
        assert_eq!(run(&prog, arch.audit_arch(), 1000, [0; 6]), RET_EPERM);
    }
}

#[test]
fn applying_an_empty_filter_is_refused() {
    let err = apply(&Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

/// The compact program decides exactly like seccompiler's program of the same policy, for
/// every syscall number (and x32 ones, and out-of-range ones), every architecture value,
/// and the interesting first arguments of the conditional syscalls.
#[test]
fn compact_filter_decides_like_seccompiler() {
    for arch in ARCHES {
        let compact = default_filter(arch).unwrap();
        let reference = seccompiler_filter(arch).unwrap();
        let mut args0: Vec<u64> = (0..64).collect();
        args0.extend([
            0x8,
            0x2_0000,
            0x2_0008,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0026,
        ]);
        args0.extend((0..32).map(|b| 1u64 << b));
        args0.extend((0..32).map(|b| 0x11u64 | (1 << b)));
        let conditional: Vec<i64> = ["clone", "socket", "personality"]
            .iter()
            .filter_map(|n| syscall_number(arch, n))
            .collect();
        let mut numbers: Vec<i64> = (0..1100).collect();
        numbers.extend((0..500).map(|n| n | 0x4000_0000));
        numbers.extend([-1, i64::from(i32::MAX)]);
        for audit in [arch.audit_arch(), 0x4000_0003, 0xC000_003E, 0xC000_00B7] {
            for &nr in &numbers {
                let tried: &[u64] = if conditional.contains(&nr) {
                    &args0
                } else {
                    &[0]
                };
                for &a0 in tried {
                    let args = [a0, 0, 0, 0, 0, 0];
                    assert_eq!(
                        run(&compact, audit, nr, args),
                        run(&reference, audit, nr, args),
                        "{arch:?} audit {audit:#x} nr {nr} arg0 {a0:#x}"
                    );
                }
            }
        }
    }
}

#[test]
fn compact_filter_is_a_fraction_of_seccompilers() {
    for arch in ARCHES {
        let compact = default_filter(arch).unwrap().len();
        let reference = seccompiler_filter(arch).unwrap().len();
        assert!(
            compact * 3 < reference,
            "{arch:?}: {compact} vs {reference}"
        );
    }
}
