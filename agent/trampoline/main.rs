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

#[path = "../nolibc/mod.rs"]
mod nolibc;

use nolibc::{Digits, cstr, exit, nr, syscall, write_all as write};

const REPORT_FD: usize = 4;
const F_SETFD: usize = 2;
const FD_CLOEXEC: usize = 1;

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
    unsafe { syscall(nr::FCNTL, [REPORT_FD, F_SETFD, FD_CLOEXEC, 0, 0, 0]) };
    // SAFETY: `program` is a C string; argv + 2 is a NULL-terminated array of C strings
    // (ARG0…), `envp` the kernel's NULL-terminated environment.
    let err = unsafe {
        syscall(nr::EXECVE, [program as usize, argv.add(2) as usize, envp as usize, 0, 0, 0])
    };
    let errno = err.unsigned_abs();
    let mut buf = Digits::new();
    let n = buf.fmt(errno as u64);
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
