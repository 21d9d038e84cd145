//! The process's C allocator (glibc malloc, which Rust's global allocator calls): how the
//! daemons (`berth up`, `agent`, `controller`, `proxy`) bound what it keeps, and its totals
//! for `/metrics`. Owns `mallopt`, `malloc_trim` and `mallinfo2`; nothing else.
//!
//! Why (docs/hardening.md, the soak): under rolling updates the agent's heap in use stays
//! level, but glibc gives every new thread its own arena up to 8 × cores (16 here: tokio's
//! workers plus the blocking pool that runs container starts, lists and store writes), and
//! each arena keeps the pages it once used. The soak measured 14.4 MB held for 5.3 MB in
//! use, and the process's RSS crept up round after round. Two bounds:
//!
//! - [`limit_arenas`] at start, before any thread: [`ARENAS`] arenas (the main one and one
//!   more) for the whole process. The daemons' allocation rate is low (a reconcile pass per
//!   app, a few a second), so lock contention on two arenas costs nothing measurable, while
//!   fewer arenas means less memory stranded in half-empty heaps. An operator's
//!   `MALLOC_ARENA_MAX` wins (glibc reads it at start; we leave it alone when it is set).
//! - [`Trimmer`]: after reconcile passes that changed something (instances started or
//!   stopped, the churn that fragments), `malloc_trim(0)`, at most once per
//!   [`TRIM_EVERY_MS`], and once more when the churn has settled. It returns the free pages
//!   inside the arenas to the kernel (`MADV_DONTNEED`), not only the top of the heap, so RSS
//!   follows what is in use. It walks the free lists under the arena locks: well under a
//!   millisecond for heaps of this size.
//!
//! Each thread also caches freed chunks (glibc's tcache, counted as in use by `mallinfo2`, up
//! to ~236 KiB a thread): the daemons' runtimes let idle blocking threads end after 1 s
//! (`src/cmd/pull.rs`, `BLOCKING_KEEP_ALIVE`), so the pool and its caches shrink after a
//! rollout instead of staying at their peak.
//!
//! Other C libraries (musl) have none of these knobs: the functions do nothing there.

use std::sync::{Mutex, PoisonError};

/// Arenas the daemons allow (glibc's default is 8 × cores).
pub const ARENAS: i32 = 2;

/// Shortest time between two trims.
pub const TRIM_EVERY_MS: u64 = 10_000;

/// Caps the allocator's arenas at [`ARENAS`] unless `MALLOC_ARENA_MAX` is set. Call first in
/// `main`, before any thread starts (arenas made before stay).
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; any value is accepted or refused
    // by its return code (ignored: an allocator that refuses keeps its default).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns the allocator's free pages to the kernel now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes the arena locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims after changes, at most once per [`TRIM_EVERY_MS`] (by the caller's clock), and
/// once more at least [`TRIM_EVERY_MS`] after the last change: what is freed after a burst
/// of churn (the blocking pool's idle threads ending and handing back their caches, the
/// last stops) is returned too.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// When the last trim ran and when something last changed (Unix ms).
    state: Mutex<(Option<u64>, Option<u64>)>,
}

impl Trimmer {
    /// A trimmer that has not trimmed yet.
    pub const fn new() -> Trimmer {
        Trimmer {
            state: Mutex::new((None, None)),
        }
    }

    /// A pass ended at `now_ms`, having `changed` something or not. Returns whether it
    /// trimmed.
    pub fn pass(&self, now_ms: u64, changed: bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last_trim, last_change) = &mut *state;
        if changed {
            *last_change = Some(now_ms);
        }
        let Some(change) = *last_change else {
            return false;
        };
        let due = last_trim.is_none_or(|t| now_ms.saturating_sub(t) >= TRIM_EVERY_MS);
        let settled = last_trim.is_some_and(|t| t >= change.saturating_add(TRIM_EVERY_MS));
        if !due || settled {
            return false;
        }
        *last_trim = Some(now_ms);
        drop(state);
        trim();
        true
    }
}

/// The process's [`Trimmer`]: every reconcile pass reports to it (`daemon::worker`).
pub fn after_pass(now_ms: u64, changed: bool) -> bool {
    static TRIMMER: Trimmer = Trimmer::new();
    TRIMMER.pass(now_ms, changed)
}

/// The allocator's totals (all arenas), bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heap {
    /// Allocated by the program and not yet freed (`mallinfo2`'s `uordblks + hblkhd`).
    pub in_use: u64,
    /// Freed by the program, still held by the allocator (`fordblks`; resident or not: a
    /// trim leaves the chunks in the free lists but gives their pages back).
    pub free: u64,
}

/// The allocator's totals now (`None` where the C library cannot tell).
pub fn heap() -> Option<Heap> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 fills and returns a plain struct; it takes the arena locks itself.
        let m = unsafe { libc::mallinfo2() };
        let bytes = |n: libc::size_t| u64::try_from(n).unwrap_or(u64::MAX);
        Some(Heap {
            in_use: bytes(m.uordblks).saturating_add(bytes(m.hblkhd)),
            free: bytes(m.fordblks),
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// The allocator's arenas (`malloc_info`'s `<heap>` elements), for tests and diagnostics.
pub fn arenas() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: open_memstream returns a stream writing into a buffer it allocates and
        // reports through `buf`/`len` once the stream is closed.
        let stream = unsafe { libc::open_memstream(&mut buf, &mut len) };
        if stream.is_null() {
            return None;
        }
        // SAFETY: `stream` is the open stream just made; fclose flushes into `buf`.
        let ok = unsafe { libc::malloc_info(0, stream) } == 0;
        // SAFETY: closes the stream once; afterwards `buf` holds `len` bytes.
        unsafe { libc::fclose(stream) };
        if buf.is_null() {
            return None;
        }
        // SAFETY: `buf` points to `len` bytes written by the stream.
        let text = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
        let n = String::from_utf8_lossy(text).matches("<heap nr=").count();
        // SAFETY: `buf` was allocated by open_memstream with malloc; freed once here.
        unsafe { libc::free(buf.cast()) };
        ok.then_some(n)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_changes_and_once_after_they_settle() {
        let t = Trimmer::new();
        assert!(!t.pass(500, false), "nothing changed yet");
        assert!(t.pass(1_000, true));
        assert!(!t.pass(1_000 + TRIM_EVERY_MS - 1, true), "too soon");
        // the change that came too soon is trimmed by the next pass that is due
        let second = 1_000 + TRIM_EVERY_MS;
        assert!(t.pass(second, false));
        // and once more when the interval has passed since the last change
        assert!(!t.pass(second + 1, false), "too soon");
        assert!(t.pass(second + TRIM_EVERY_MS, false));
        assert!(
            !t.pass(second + 3 * TRIM_EVERY_MS, false),
            "settled and trimmed"
        );
        assert!(t.pass(second + 4 * TRIM_EVERY_MS, true), "a new change");
    }
}
