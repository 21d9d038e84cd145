//! Client connections of the HTTP mode served on single-threaded runtimes, one per core
//! (`berth proxy` starts them; an in-process proxy without them serves on the caller's
//! runtime).
//!
//! A proxied request is a chain of small wake-ups: the client's bytes, the backend's
//! connect, its response, the client's write. On tokio's work-stealing runtime each of them
//! can land on another worker and wake it through the kernel (futex, epoll), which on a busy
//! host costs as much as the proxying itself. Here a client connection, its requests and
//! the backend connections they make all stay on one thread, nginx's worker model;
//! connections are dealt round-robin as they are accepted.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use tokio::runtime::Handle;

use super::connect::ARM_AFTER;

static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Starts `n` worker threads (at least one), once per process; later calls do nothing.
pub fn start(n: usize) -> std::io::Result<()> {
    if WORKERS.get().is_some() {
        return Ok(());
    }
    let mut handles = Vec::new();
    for i in 0..n.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("proxy-worker-{i}"))
            .spawn(move || rt.block_on(keep_timer_ahead()))?;
    }
    let _ = WORKERS.set(handles);
    Ok(())
}

/// Keeps a timer of the runtime due within [`TIMER_AHEAD`], forever.
///
/// Arming a timer that would be the runtime's earliest wakes its driver (a write to its
/// eventfd, then a turn of epoll) so that the driver can shorten its sleep; arming a later
/// one costs no system call. Every backend connection arms one of [`ARM_AFTER`] (its
/// dead-peer check, `connect.rs`), which on an otherwise quiet runtime would be the earliest
/// each time: this one keeps it from being, for one wake-up of the thread per
/// [`TIMER_AHEAD`].
async fn keep_timer_ahead() {
    loop {
        tokio::time::sleep(TIMER_AHEAD).await;
    }
}

/// Less than [`ARM_AFTER`], the timer every backend connection arms.
const TIMER_AHEAD: Duration = Duration::from_millis(ARM_AFTER.as_millis() as u64 / 2);

/// The runtime the next accepted connection is served on, if workers were started.
pub(crate) fn next() -> Option<&'static Handle> {
    let w = WORKERS.get()?;
    w.get(NEXT.fetch_add(1, Ordering::Relaxed) % w.len())
}
