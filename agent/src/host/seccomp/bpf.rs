//! A compact classic-BPF compiler for berth's seccomp policy.
//!
//! seccompiler emits one compare-and-branch block per syscall, in order: 1 592 instructions
//! for the default profile on x86_64, walked linearly. Installing such a filter is slow
//! (the kernel converts and JIT-compiles it, then runs it once per syscall number to fill
//! its allow-cache) and every syscall that misses the cache walks the chain. This compiler
//! splits the syscall numbers into intervals with one decision each and emits a binary
//! search over the interval bounds: about 300 instructions, about 10 per syscall.
//!
//! Layout: check the architecture (another one is killed), load the syscall number, then the
//! search tree; each leaf returns its decision, or, for a syscall allowed only with certain
//! first arguments, loads the argument's low 32 bits and tests it. Every jump is forward; the
//! tree's right branches use `ja` (32-bit offsets), everything else jumps a few
//! instructions, so the 8-bit `jt`/`jf` never overflow.

use std::collections::BTreeMap;

use super::sock_filter;

/// What the filter does with one syscall number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Allowed whatever its arguments.
    Allow,
    /// Fails with this errno.
    Errno(u32),
    /// Allowed when any of the checks on the low 32 bits of the first argument holds;
    /// fails with the default errno otherwise.
    AllowIf(Vec<Check>),
}

/// A test of the low 32 bits of a syscall's first argument (unsigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// `arg & mask == value`.
    MaskedEq { mask: u32, value: u32 },
    /// `arg < value`.
    Lt(u32),
    /// `arg == value`.
    Eq(u32),
    /// `arg > value`.
    Gt(u32),
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const NR_OFFSET: u32 = 0; // offsetof(struct seccomp_data, nr)
const ARCH_OFFSET: u32 = 4; // offsetof(struct seccomp_data, arch)
const ARG0_LOW_OFFSET: u32 = 16; // args[0], low word on little-endian x86_64 and aarch64

pub(super) const RET_ALLOW: u32 = 0x7fff_0000;
pub(super) const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub(super) const RET_ERRNO: u32 = 0x0005_0000;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Compiles `policy` (syscall number → decision; numbers not listed fail with
/// `default_errno`) for the architecture `audit_arch`.
pub(super) fn compile(
    audit_arch: u32,
    policy: &BTreeMap<u32, Decision>,
    default_errno: u32,
) -> Vec<sock_filter> {
    let mut out = vec![
        insn(LD_W_ABS, 0, 0, ARCH_OFFSET),
        insn(JEQ_K, 1, 0, audit_arch),
        insn(RET_K, 0, 0, RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, NR_OFFSET),
    ];
    let intervals = intervals(policy);
    tree(&intervals, 0, intervals.len(), default_errno, &mut out);
    out
}

/// The syscall numbers cut into intervals `[start, next start)` with one decision each
/// (`None`: not listed), adjacent intervals differing.
fn intervals(policy: &BTreeMap<u32, Decision>) -> Vec<(u64, Option<&Decision>)> {
    fn set<'a>(iv: &mut Vec<(u64, Option<&'a Decision>)>, start: u64, d: Option<&'a Decision>) {
        match iv.last_mut() {
            Some(last) if last.0 == start => last.1 = d,
            _ => iv.push((start, d)),
        }
    }
    let mut iv: Vec<(u64, Option<&Decision>)> = vec![(0, None)];
    for (&nr, d) in policy {
        set(&mut iv, u64::from(nr), Some(d));
        set(&mut iv, u64::from(nr) + 1, None);
    }
    let mut merged: Vec<(u64, Option<&Decision>)> = Vec::with_capacity(iv.len());
    for (start, d) in iv {
        if start > u64::from(u32::MAX) {
            continue;
        }
        match merged.last() {
            Some((_, last)) if *last == d => {}
            _ => merged.push((start, d)),
        }
    }
    merged
}

/// Emits a search over `iv[lo..hi]` (the accumulator holds the syscall number).
fn tree(
    iv: &[(u64, Option<&Decision>)],
    lo: usize,
    hi: usize,
    default_errno: u32,
    out: &mut Vec<sock_filter>,
) {
    if hi - lo <= 1 {
        leaf(iv[lo].1, default_errno, out);
        return;
    }
    let mid = lo + (hi - lo) / 2;
    // number >= bound: the `ja` to the right half; else skip it into the left half.
    let bound = u32::try_from(iv[mid].0).unwrap_or(u32::MAX);
    out.push(insn(JGE_K, 0, 1, bound));
    let ja = out.len();
    out.push(insn(JA, 0, 0, 0));
    tree(iv, lo, mid, default_errno, out);
    let right = out.len();
    out[ja].k = u32::try_from(right - ja - 1).unwrap_or(u32::MAX);
    tree(iv, mid, hi, default_errno, out);
}

fn leaf(d: Option<&Decision>, default_errno: u32, out: &mut Vec<sock_filter>) {
    let deny = RET_ERRNO | default_errno;
    match d {
        None => out.push(insn(RET_K, 0, 0, deny)),
        Some(Decision::Allow) => out.push(insn(RET_K, 0, 0, RET_ALLOW)),
        Some(Decision::Errno(e)) => out.push(insn(RET_K, 0, 0, RET_ERRNO | e)),
        Some(Decision::AllowIf(checks)) => {
            // Each check: [ld arg0] [and mask] jump-to-allow-if-true; then deny, allow.
            let sizes: Vec<usize> = checks
                .iter()
                .map(|c| match c {
                    Check::MaskedEq { .. } => 3,
                    _ => 2,
                })
                .collect();
            let total: usize = sizes.iter().sum();
            let allow_at = total + 1; // relative to the block start
            let mut at = 0usize;
            for (c, size) in checks.iter().zip(&sizes) {
                out.push(insn(LD_W_ABS, 0, 0, ARG0_LOW_OFFSET));
                if let Check::MaskedEq { mask, .. } = c {
                    out.push(insn(ALU_AND_K, 0, 0, *mask));
                }
                let jump_at = at + size - 1;
                // A handful of checks per syscall: always far below jt/jf's 255.
                debug_assert!(allow_at - jump_at - 1 <= usize::from(u8::MAX));
                let to_allow = u8::try_from(allow_at - jump_at - 1).unwrap_or(u8::MAX);
                out.push(match *c {
                    Check::MaskedEq { value, .. } | Check::Eq(value) => {
                        insn(JEQ_K, to_allow, 0, value)
                    }
                    Check::Gt(v) => insn(JGT_K, to_allow, 0, v),
                    Check::Lt(v) => insn(JGE_K, 0, to_allow, v),
                });
                at += size;
            }
            out.push(insn(RET_K, 0, 0, deny));
            out.push(insn(RET_K, 0, 0, RET_ALLOW));
        }
    }
}
