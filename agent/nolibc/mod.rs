//! What the two tiny static programs (`logshim/main.rs`, `trampoline/main.rs`) share: the
//! `_start` entry, raw system calls, the numbers of the calls they make, and the few symbols
//! the compiler expects from a libc (`memcpy` and co., the panic handler). Each program
//! includes it with `#[path = "../nolibc/mod.rs"] mod nolibc;` and defines
//! `extern "C" fn entry(sp: *const usize) -> !`, which `_start` calls with the kernel's
//! initial stack (argc, argv…, NULL, envp…, NULL). `agent/build.rs` compiles both with
//! `-nostdlib -static`: no libc, no std, no allocation.
//!
//! Only raw system calls on x86_64 and aarch64 Linux. Not every program uses every item.

#![allow(dead_code, reason = "each program uses a part")]

use core::arch::{asm, global_asm};

/// System call numbers.
#[cfg(target_arch = "x86_64")]
pub mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const LSEEK: usize = 8;
    pub const WRITEV: usize = 20;
    pub const EXECVE: usize = 59;
    pub const WAIT4: usize = 61;
    pub const FCNTL: usize = 72;
    pub const CLOCK_GETTIME: usize = 228;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const UNLINKAT: usize = 263;
    pub const PPOLL: usize = 271;
    pub const RENAMEAT2: usize = 316;
}

/// System call numbers.
#[cfg(target_arch = "aarch64")]
pub mod nr {
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const LSEEK: usize = 62;
    pub const WRITEV: usize = 66;
    pub const EXECVE: usize = 221;
    pub const WAIT4: usize = 260;
    pub const FCNTL: usize = 25;
    pub const CLOCK_GETTIME: usize = 113;
    pub const EXIT_GROUP: usize = 94;
    pub const OPENAT: usize = 56;
    pub const UNLINKAT: usize = 35;
    pub const PPOLL: usize = 73;
    pub const RENAMEAT2: usize = 276;
}

/// `-EINTR`, as a system call returns it.
pub const EINTR: isize = -4;
/// `AT_FDCWD` for the `*at` calls.
pub const AT_FDCWD: usize = -100isize as usize;

// `_start`: no frame, the stack pointer (argc first) as the argument, 16-byte aligned.
#[cfg(target_arch = "x86_64")]
global_asm!(
    ".globl _start",
    "_start:",
    "xor rbp, rbp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym crate::entry,
);

#[cfg(target_arch = "aarch64")]
global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, #0",
    "mov x30, #0",
    "mov x0, sp",
    "and x1, x0, #-16",
    "mov sp, x1",
    "bl {entry}",
    "brk #0",
    entry = sym crate::entry,
);

/// System call `n` with up to six arguments; the kernel's return (negative errno on error).
///
/// # Safety
/// `n` and its arguments must be a valid system call: pointers to live buffers of the
/// stated lengths.
#[cfg(target_arch = "x86_64")]
pub unsafe fn syscall(n: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the caller passes a valid system call and arguments.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a[0], in("rsi") a[1],
             in("rdx") a[2], in("r10") a[3], in("r8") a[4], in("r9") a[5],
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// System call `n` with up to six arguments; the kernel's return (negative errno on error).
///
/// # Safety
/// `n` and its arguments must be a valid system call: pointers to live buffers of the
/// stated lengths.
#[cfg(target_arch = "aarch64")]
pub unsafe fn syscall(n: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the caller passes a valid system call and arguments.
    unsafe {
        asm!("svc 0", in("x8") n, inlateout("x0") a[0] as isize => ret, in("x1") a[1],
             in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5], options(nostack));
    }
    ret
}

/// Ends the process with `code`.
pub fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes no pointers.
        unsafe { syscall(nr::EXIT_GROUP, [code, 0, 0, 0, 0, 0]) };
    }
}

/// Writes all of `bytes` to `fd` (retrying short writes and EINTR; gives up on an error).
pub fn write_all(fd: usize, bytes: &[u8]) {
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { syscall(nr::WRITE, [fd, rest.as_ptr() as usize, rest.len(), 0, 0, 0]) };
        if n == EINTR {
            continue;
        }
        if n <= 0 {
            return;
        }
        done += n as usize;
    }
}

/// The bytes of the C string at `p`.
///
/// # Safety
/// `p` must point at a NUL-terminated string that lives for the whole program (argv).
pub unsafe fn cstr(p: *const u8) -> &'static [u8] {
    let mut n = 0;
    // SAFETY: the caller guarantees a terminating NUL.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: `n` bytes from `p` are initialised and live for the program.
    unsafe { core::slice::from_raw_parts(p, n) }
}

/// Decimal formatting without allocation.
pub struct Digits([u8; 24]);

impl Digits {
    pub fn new() -> Digits {
        Digits([0; 24])
    }

    /// `v` in decimal.
    pub fn fmt(&mut self, mut v: u64) -> &[u8] {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        &self.0[i..]
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit(70)
}

// The precompiled `core` refers to the unwinder's personality routine from its landing
// pads; with panic=abort nothing ever unwinds, so it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

// The compiler may call these for copies and comparisons; there is no libc to supply them.
// `#![no_builtins]` (in each program) keeps the loops from being turned back into calls to
// themselves.

/// # Safety
/// As C's `memcpy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes.
        unsafe { *d.add(i) = *s.add(i) };
        i += 1;
    }
    d
}

/// # Safety
/// As C's `memmove`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) < (s as usize) {
        // SAFETY: as memcpy, copying forwards is safe when the destination is below.
        return unsafe { memcpy(d, s, n) };
    }
    let mut i = n;
    while i > 0 {
        i -= 1;
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes.
        unsafe { *d.add(i) = *s.add(i) };
    }
    d
}

/// # Safety
/// As C's `memset`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees the range is valid for `n` bytes.
        unsafe { *d.add(i) = c as u8 };
        i += 1;
    }
    d
}

/// # Safety
/// As C's `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As C's `bcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
