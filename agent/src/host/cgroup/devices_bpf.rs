//! Device rules on cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`, built
//! from the same [`DeviceRule`] list the v1 controller takes, loaded and attached to the
//! cgroup with raw `bpf(2)` calls (what runc does in `devicefilter.go`/`ebpf_linux.go`).
//!
//! The kernel runs the program on every open or mknod of a device node by a task in the
//! cgroup, with `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`
//! (`access_type` = access bits << 16 | device type); a return of 1 allows, 0 denies (EPERM).
//!
//! Semantics match v1: the **last** rule that matches decides; nothing matching means deny.
//! An allow rule matches when every requested access bit is in the rule; a deny rule when
//! any requested bit is.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::devices::{DeviceKind, DeviceRule};
use super::error::CgroupError;

/// One eBPF instruction, in the kernel's `struct bpf_insn` layout.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    /// dst register in the low nibble, src register in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (include/uapi/linux/bpf.h, bpf_common.h).
pub(crate) const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
pub(crate) const ALU32_AND_K: u8 = 0x54; // dst &= imm
pub(crate) const ALU32_RSH_K: u8 = 0x74; // dst >>= imm
pub(crate) const ALU64_MOV_K: u8 = 0xb7; // dst = imm
pub(crate) const ALU64_MOV_X: u8 = 0xbf; // dst = src
pub(crate) const JMP_JEQ_K: u8 = 0x15; // if dst == imm goto +off
pub(crate) const JMP_JNE_K: u8 = 0x55; // if dst != imm goto +off
pub(crate) const JMP_EXIT: u8 = 0x95; // return r0

// BPF_DEVCG_* values.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

// Registers: r1 = ctx on entry, then scratch; r2 = type, r3 = access, r4 = major, r5 = minor.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

fn access_bits(rule: &DeviceRule) -> i32 {
    let a = rule.access;
    (if a.mknod { ACC_MKNOD } else { 0 })
        | (if a.read { ACC_READ } else { 0 })
        | (if a.write { ACC_WRITE } else { 0 })
}

/// Compiles `rules` into the device program.
pub fn compile(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut prog = vec![
        insn(LDX_MEM_W, R2, R1, 0, 0),       // r2 = access_type
        insn(ALU32_AND_K, R2, 0, 0, 0xffff), // r2 = type
        insn(LDX_MEM_W, R3, R1, 0, 0),       // r3 = access_type
        insn(ALU32_RSH_K, R3, 0, 0, 16),     // r3 = access
        insn(LDX_MEM_W, R4, R1, 4, 0),       // r4 = major
        insn(LDX_MEM_W, R5, R1, 8, 0),       // r5 = minor
    ];
    // Last match wins: test the rules from the last one backwards, first hit returns.
    for rule in rules.iter().rev() {
        // Each jump in a block skips to the end of the block; offsets are fixed up below.
        let mut block: Vec<BpfInsn> = Vec::new();
        let mut jumps = Vec::new();
        match rule.kind {
            DeviceKind::All => {}
            DeviceKind::Char | DeviceKind::Block => {
                let kind = if rule.kind == DeviceKind::Char {
                    DEV_CHAR
                } else {
                    DEV_BLOCK
                };
                jumps.push(block.len());
                block.push(insn(JMP_JNE_K, R2, 0, 0, kind));
            }
        }
        let access = access_bits(rule);
        block.push(insn(ALU64_MOV_X, R1, R3, 0, 0));
        if rule.allow {
            // Requested bits outside the rule: no match.
            block.push(insn(ALU32_AND_K, R1, 0, 0, !access & 0x7));
            jumps.push(block.len());
            block.push(insn(JMP_JNE_K, R1, 0, 0, 0));
        } else {
            // No requested bit inside the rule: no match.
            block.push(insn(ALU32_AND_K, R1, 0, 0, access));
            jumps.push(block.len());
            block.push(insn(JMP_JEQ_K, R1, 0, 0, 0));
        }
        for (reg, number) in [(R4, rule.major), (R5, rule.minor)] {
            if let Some(number) = number {
                jumps.push(block.len());
                // Device numbers are at most 32 bits; the cast keeps the bit pattern.
                #[allow(clippy::cast_possible_wrap)]
                block.push(insn(JMP_JNE_K, reg, 0, 0, number as i32));
            }
        }
        block.push(insn(ALU64_MOV_K, R0, 0, 0, i32::from(rule.allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for j in jumps {
            // Blocks are a dozen instructions at most.
            block[j].off = i16::try_from(len - j - 1).unwrap_or(i16::MAX);
        }
        prog.extend(block);
    }
    prog.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Lets other programs (e.g. systemd's on an ancestor) coexist; the kernel allows an access
/// only if every attached program allows it.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const LICENSE: &CStr = c"Apache-2.0";

/// Loads the program for `rules` and attaches it to the cgroup directory `dir`.
///
/// Apply once per cgroup: every call attaches one more program (all must allow).
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    let prog = compile(rules);
    let bpf_err = |step: &'static str, source: io::Error| CgroupError::DeviceProgram {
        path: dir.to_path_buf(),
        step,
        source,
    };
    let cgroup = File::open(dir).map_err(|source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"berth_device");
    let load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    // SAFETY: `load` is a valid BPF_PROG_LOAD attribute whose pointers (instructions,
    // license) outlive the call; the kernel copies what it needs.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const load,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(bpf_err("load", io::Error::last_os_error()));
    }
    let raw_fd = i32::try_from(fd).map_err(|_| bpf_err("load", io::Error::other("bad fd")))?;
    // SAFETY: the kernel just returned this new descriptor; we own it from here on.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };
    let attach = ProgAttachAttr {
        target_fd: u32::try_from(cgroup.as_raw_fd()).unwrap_or(u32::MAX),
        attach_bpf_fd: u32::try_from(prog_fd.as_raw_fd()).unwrap_or(u32::MAX),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attach` is a valid BPF_PROG_ATTACH attribute with two open descriptors.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &raw const attach,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(bpf_err("attach", io::Error::last_os_error()));
    }
    // The attachment holds its own reference: closing `prog_fd` keeps the program.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::devices::{DeviceAccess, default_device_rules};
    use super::*;

    /// Interprets the subset of eBPF `compile` emits, as the kernel would run it.
    fn run(prog: &[BpfInsn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access << 16) | kind) as u32, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            let imm32 = i.imm as u32;
            let jump = |taken: bool| {
                if taken {
                    (pc as isize + 1 + isize::from(i.off)) as usize
                } else {
                    pc + 1
                }
            };
            pc = match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads come from the context");
                    regs[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                    pc + 1
                }
                ALU32_AND_K => {
                    regs[dst] = u64::from((regs[dst] as u32) & imm32);
                    pc + 1
                }
                ALU32_RSH_K => {
                    regs[dst] = u64::from((regs[dst] as u32) >> imm32);
                    pc + 1
                }
                ALU64_MOV_K => {
                    regs[dst] = i64::from(i.imm) as u64;
                    pc + 1
                }
                ALU64_MOV_X => {
                    regs[dst] = regs[src];
                    pc + 1
                }
                JMP_JEQ_K => jump(regs[dst] == u64::from(imm32)),
                JMP_JNE_K => jump(regs[dst] != u64::from(imm32)),
                JMP_EXIT => return regs[0],
                code => panic!("unexpected opcode {code:#x}"),
            };
        }
    }

    const RW: i32 = ACC_READ | ACC_WRITE;

    #[test]
    fn default_rules_allow_the_standard_char_devices() {
        let prog = compile(&default_device_rules());
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert_eq!(run(&prog, DEV_CHAR, RW, major, minor), 1, "{major}:{minor}");
            assert_eq!(run(&prog, DEV_CHAR, ACC_MKNOD, major, minor), 1);
        }
        assert_eq!(run(&prog, DEV_CHAR, RW, 136, 0), 1, "pts");
        assert_eq!(run(&prog, DEV_CHAR, RW, 136, 41), 1, "pts");
    }

    #[test]
    fn default_rules_deny_everything_else() {
        let prog = compile(&default_device_rules());
        assert_eq!(run(&prog, DEV_BLOCK, ACC_READ, 8, 0), 0, "sda");
        assert_eq!(run(&prog, DEV_BLOCK, ACC_MKNOD, 7, 0), 0, "loop0 mknod");
        assert_eq!(
            run(&prog, DEV_BLOCK, ACC_READ, 1, 3),
            0,
            "block 1:3 is not null"
        );
        assert_eq!(run(&prog, DEV_CHAR, RW, 1, 1), 0, "/dev/mem");
        assert_eq!(run(&prog, DEV_CHAR, RW, 10, 229), 0, "fuse");
        assert_eq!(run(&prog, DEV_CHAR, RW, 10, 200), 0, "tun");
    }

    #[test]
    fn an_allow_rule_covers_only_its_access_bits() {
        let read_only = DeviceRule {
            access: DeviceAccess {
                read: true,
                write: false,
                mknod: false,
            },
            ..DeviceRule::allow_char(1, Some(3))
        };
        let prog = compile(&[DeviceRule::deny_all(), read_only]);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&prog, DEV_CHAR, RW, 1, 3), 0);
        assert_eq!(run(&prog, DEV_CHAR, ACC_WRITE, 1, 3), 0);
    }

    #[test]
    fn a_later_deny_overrides_an_earlier_allow() {
        let rules = [
            DeviceRule::deny_all(),
            DeviceRule::allow_char(10, None),
            DeviceRule {
                allow: false,
                ..DeviceRule::allow_char(10, Some(229))
            },
        ];
        let prog = compile(&rules);
        assert_eq!(run(&prog, DEV_CHAR, RW, 10, 200), 1);
        assert_eq!(run(&prog, DEV_CHAR, RW, 10, 229), 0);
    }

    #[test]
    fn no_rules_deny_everything() {
        let prog = compile(&[]);
        assert_eq!(run(&prog, DEV_CHAR, ACC_READ, 1, 3), 0);
    }
}
