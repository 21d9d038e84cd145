//! The last step of a container's init: a tiny static program without libc, built by
//! `agent/build.rs` and embedded in the berth binary, that the init (a fork of berth, not a
//! re-executed berth) executes from a sealed memfd once the container is set up, and that
//! executes the container's program. So the process whose `/proc/self/exe` the kernel
//! resolves during that last `execve` (for `#!/proc/self/exe` or an ELF interpreter of that
//! name: CVE-2019-5736) is this sealed, unwritable copy, never the host's berth binary.
//! Like runc's `runc-dmz`.
//!
//! `"" PROGRAM ARG0 ARG1…` with the container's environment and the init's report pipe on
//! fd 4 (not close-on-exec): marks fd 4 close-on-exec and executes PROGRAM with ARG0… as
//! its argv. If that fails it writes `Eexec ARG0: <error> (os error N)` to fd 4 (the init's
//! report format) and exits 1. Run any other way (its first argument is not empty: the
//! kernel always sets it to the interpreter's path for `#!`) it refuses and exits 126, so a
//! container cannot make it loop.

#![no_std]
#![no_main]
#![no_builtins]

use core::arch::{asm, global_asm};

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const WRITE: usize = 1;
    pub const FCNTL: usize = 72;
    pub const EXECVE: usize = 59;
    pub const EXIT_GROUP: usize = 231;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const WRITE: usize = 64;
    pub const FCNTL: usize = 25;
    pub const EXECVE: usize = 221;
    pub const EXIT_GROUP: usize = 94;
}

#[cfg(target_arch = "x86_64")]
global_asm!(
    ".globl _start",
    "_start:",
    "xor rbp, rbp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
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
    entry = sym entry,
);

#[cfg(target_arch = "x86_64")]
unsafe fn syscall3(n: usize, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes a valid system call and arguments.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
             in("rdx") c, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn syscall3(n: usize, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes a valid system call and arguments.
    unsafe {
        asm!("svc 0", in("x8") n, inlateout("x0") a as isize => ret, in("x1") b, in("x2") c,
             options(nostack));
    }
    ret
}

const REPORT_FD: usize = 4;
const F_SETFD: usize = 2;
const FD_CLOEXEC: usize = 1;

fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes no pointers.
        unsafe { syscall3(nr::EXIT_GROUP, code, 0, 0) };
    }
}

fn write(fd: usize, bytes: &[u8]) {
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe {
            syscall3(nr::WRITE, fd, bytes[done..].as_ptr() as usize, bytes.len() - done)
        };
        if n == -4 {
            continue;
        }
        if n <= 0 {
            return;
        }
        done += n as usize;
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

/// The bytes of the C string at `p`.
///
/// # Safety
/// `p` must point at a NUL-terminated string that lives for the whole program (argv).
unsafe fn cstr(p: *const u8) -> &'static [u8] {
    let mut n = 0;
    // SAFETY: the caller guarantees a terminating NUL.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: `n` bytes from `p` are initialised and live for the program.
    unsafe { core::slice::from_raw_parts(p, n) }
}

/// The text Rust's `io::Error` prints for the errors `execve` gives (glibc's strerror).
fn describe(errno: usize) -> &'static [u8] {
    match errno {
        1 => b"Operation not permitted",
        2 => b"No such file or directory",
        7 => b"Argument list too long",
        8 => b"Exec format error",
        12 => b"Cannot allocate memory",
        13 => b"Permission denied",
        14 => b"Bad address",
        20 => b"Not a directory",
        21 => b"Is a directory",
        22 => b"Invalid argument",
        24 => b"Too many open files",
        26 => b"Text file busy",
        36 => b"File name too long",
        40 => b"Too many levels of symbolic links",
        _ => b"error",
    }
}

fn digits(mut v: usize, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &out[i..];
        }
    }
}

extern "C" fn entry(sp: *const usize) -> ! {
    // SAFETY: at `_start` the stack holds argc, argc pointers to NUL-terminated strings, a
    // NULL, then the environment pointers and a NULL, as the kernel laid them out.
    let (argc, argv, envp) = unsafe {
        let argc = *sp;
        let argv = sp.add(1) as *const *const u8;
        (argc, argv, argv.add(argc + 1))
    };
    // SAFETY: argv[0] exists when argc > 0.
    if argc < 3 || !unsafe { cstr(*argv) }.is_empty() {
        write(2, b"berth: this program only starts a container's process\n");
        exit(126);
    }
    // SAFETY: argc >= 3, so argv[1] and argv[2] are NUL-terminated strings.
    let (program, arg0) = unsafe { (*argv.add(1), cstr(*argv.add(2))) };
    // SAFETY: fcntl takes no pointers.
    unsafe { syscall3(nr::FCNTL, REPORT_FD, F_SETFD, FD_CLOEXEC) };
    // SAFETY: `program` is a C string; argv + 2 is a NULL-terminated array of C strings
    // (ARG0…), `envp` the kernel's NULL-terminated environment.
    let err = unsafe {
        syscall3(nr::EXECVE, program as usize, argv.add(2) as usize, envp as usize)
    };
    let errno = err.unsigned_abs();
    let mut buf = [0u8; 20];
    let n = digits(errno, &mut buf);
    for part in [
        b"Eexec " as &[u8],
        arg0,
        b": ",
        describe(errno),
        b" (os error ",
        n,
        b")",
    ] {
        write(REPORT_FD, part);
    }
    exit(1)
}
