//! Terminals for `berth exec -t`: a pseudo-terminal from the *container's* devpts instance
//! (so `tty` inside prints `/dev/pts/N` and the container's own `/dev/pts` lists it), and the
//! relay between the caller's terminal and its master side.
//!
//! The exec helper opens `/dev/pts/ptmx` after joining the container's mount namespace
//! (its root is then the container's), checks that it is the pty multiplexer (char 5:2),
//! and gets the peer with `TIOCGPTPEER`, so no path the container controls is looked up for
//! the terminal itself. The program's process makes the peer its controlling terminal in a
//! new session; the helper stays outside and copies bytes both ways, and on SIGWINCH copies
//! the caller's window size to the pty (the helper is in the caller's process group, so it
//! gets the signal with the CLI). The CLI puts the caller's terminal in raw mode and restores
//! it ([`RawMode`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::host::sys;

/// A pty pair: the master stays with the relay, the peer becomes the program's stdio.
pub struct Pty {
    /// The master side.
    pub master: OwnedFd,
    /// The terminal the program gets.
    pub peer: OwnedFd,
}

/// Opens a new pty of the devpts instance mounted at `/dev/pts` of the current root.
pub fn open_in_root() -> Result<Pty, String> {
    let path = std::path::Path::new("/dev/pts/ptmx");
    let master = sys::open(
        path,
        libc::O_RDWR | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
    )
    .map_err(|e| format!("open the container's {}: {e}", path.display()))?;
    let st =
        sys::lstatat(master.as_fd(), "").map_err(|e| format!("stat {}: {e}", path.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(5, 2) {
        return Err(format!(
            "the container's {} is not the pty multiplexer (char 5:2): refusing to use it",
            path.display()
        ));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(format!("unlock pty: {}", io::Error::last_os_error()));
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(format!("open pty peer: {}", io::Error::last_os_error()));
    }
    // SAFETY: the kernel returned a new fd nobody else owns.
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    Ok(Pty { master, peer })
}

/// In the program's process: a new session whose controlling terminal is `peer`, which
/// becomes stdin, stdout and stderr.
pub fn attach(peer: BorrowedFd<'_>) -> Result<(), String> {
    sys::setsid().map_err(|e| format!("new session: {e}"))?;
    // SAFETY: TIOCSCTTY with argument 0 on an fd we hold.
    if unsafe { libc::ioctl(peer.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(format!(
            "make the pty the controlling terminal: {}",
            io::Error::last_os_error()
        ));
    }
    for fd in 0..3 {
        sys::dup2(peer.as_raw_fd(), fd).map_err(|e| format!("pty as fd {fd}: {e}"))?;
    }
    Ok(())
}

/// The window size of the first of stdin, stdout, stderr that is a terminal.
fn caller_winsize() -> Option<libc::winsize> {
    (0..3).find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into `ws`.
        (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some(ws)
    })
}

/// Copies the caller's window size to the pty (the kernel sends SIGWINCH inside).
pub fn copy_winsize(master: BorrowedFd<'_>) {
    if let Some(ws) = caller_winsize() {
        // SAFETY: TIOCSWINSZ reads the winsize.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

static WINCH: AtomicBool = AtomicBool::new(false);

extern "C" fn note_signal(sig: libc::c_int) {
    if sig == libc::SIGWINCH {
        WINCH.store(true, Ordering::SeqCst);
    }
}

/// Installs the relay's SIGWINCH and SIGCHLD handlers and blocks both (they are delivered
/// only inside `ppoll`, so none is lost between a check and the wait). Returns the mask to
/// wait with, which the forked program must also get back before exec.
pub fn prepare_signals() -> Result<sys::SigSet, String> {
    for sig in [libc::SIGWINCH, libc::SIGCHLD] {
        // SAFETY: the handler only stores to an atomic.
        if unsafe { libc::signal(sig, note_signal as *const () as libc::sighandler_t) }
            == libc::SIG_ERR
        {
            return Err(format!(
                "install signal handler: {}",
                io::Error::last_os_error()
            ));
        }
    }
    sys::sigprocmask(
        libc::SIG_BLOCK,
        &sys::SigSet::of(&[libc::SIGWINCH, libc::SIGCHLD]),
    )
    .map_err(|e| format!("block signals: {e}"))
}

/// Relays stdin → master and master → stdout until `child` ends; returns its wait status.
/// `mask` is the mask from [`prepare_signals`].
pub fn relay(master: OwnedFd, child: i32, mask: &sys::SigSet) -> Result<i32, String> {
    copy_winsize(master.as_fd());
    let mut stdin_open = true;
    let mut master_open = true;
    let mut buf = [0u8; 8192];
    loop {
        if WINCH.swap(false, Ordering::SeqCst) {
            copy_winsize(master.as_fd());
        }
        if let Ok((pid, status)) = sys::waitpid(child, libc::WNOHANG)
            && pid == child
        {
            if master_open {
                drain(master.as_fd(), &mut buf);
            }
            return Ok(status);
        }
        if !master_open {
            // The terminal is gone; nothing left to relay.
            let (_, status) = sys::waitpid(child, 0).map_err(|e| format!("wait: {e}"))?;
            return Ok(status);
        }
        let mut fds = Vec::with_capacity(2);
        fds.push(libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        if stdin_open {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of its length; the mask is valid; no timeout.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                std::ptr::null(),
                mask.as_raw(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll the terminal: {e}"));
        }
        if fds[0].revents != 0 {
            match read_fd(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => master_open = false,
                Ok(k) => {
                    let _ = sys::write_all_fd(stdout(), &buf[..k]);
                }
            }
        }
        if stdin_open && fds.get(1).is_some_and(|p| p.revents != 0) {
            match read_fd(0, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(k) => {
                    if sys::write_all_fd(master.as_fd(), &buf[..k]).is_err() {
                        master_open = false;
                    }
                }
            }
        }
    }
}

fn stdout() -> BorrowedFd<'static> {
    // SAFETY: fd 1 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(1) }
}

/// Copies what the program wrote before it ended, without waiting for more (a background
/// process may still hold the terminal).
fn drain(master: BorrowedFd<'_>, buf: &mut [u8]) {
    // SAFETY: fcntl on an fd we hold.
    let fl = unsafe { libc::fcntl(master.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) };
    while let Ok(k) = read_fd(master.as_raw_fd(), buf) {
        if k == 0 {
            break;
        }
        let _ = sys::write_all_fd(stdout(), buf.get(..k).unwrap_or(&[]));
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The caller's terminal in raw mode until dropped (then restored).
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode if it is a terminal; `None` otherwise.
    pub fn enable(fd: RawFd) -> Option<RawMode> {
        // SAFETY: termios is plain data; all zeroes is a valid value.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into `saved`; a non-terminal fd only fails.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw changes the valid struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads the valid struct.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved from the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
