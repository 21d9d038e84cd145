//! The berth binary's allocator: glibc's malloc, except in `berth proxy`, which switches to
//! mimalloc as it starts.
//!
//! The proxy allocates and frees on every request (hyper's buffers and header maps, tokio's
//! tasks, which glibc serves through its slow aligned path); mimalloc took ~10 % off its CPU
//! per request in `scripts/bench-proxy`. The other verbs stay on glibc: a container start
//! (`berth run`, the shim) measured a few percent slower with mimalloc in
//! `scripts/bench-runtime`, and the daemons' memory is tuned for glibc (`host::alloc`).
//!
//! mimalloc's process constructor is compiled out (`.cargo/config.toml`): it would set
//! mimalloc up in every berth process, ~50 µs each, and a container start runs several.
//! mimalloc sets itself up on its first allocation instead, in the proxy only.
//!
//! Memory that glibc handed out before the switch (argument parsing, logging set-up) is
//! still freed by glibc: a pointer goes back to mimalloc only if mimalloc's page map owns it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use libmimalloc_sys as mi;

/// The `#[global_allocator]` of the berth binary.
pub struct BerthAlloc;

static MIMALLOC: AtomicBool = AtomicBool::new(false);

/// New allocations come from mimalloc from now on. Called once, before threads start
/// (thread creation orders this store before anything they allocate).
pub fn use_mimalloc() {
    // SAFETY: what mimalloc's process constructor does (compiled out), called once from
    // the main thread before any other thread starts, as the constructor would be.
    unsafe { _mi_auto_process_init() };
    MIMALLOC.store(true, Ordering::Relaxed);
}

unsafe extern "C" {
    /// mimalloc's process set-up as its constructor runs it (`src/prim/prim.c`): besides
    /// `mi_process_init`, it ends the "preloading" state in which mimalloc maps and unmaps
    /// memory per segment (0.1 `munmap` per proxied request measured without it). Not in
    /// mimalloc's public header, so a rename shows up as a link error.
    fn _mi_auto_process_init();
}

fn mimalloc() -> bool {
    MIMALLOC.load(Ordering::Relaxed)
}

/// Whether `p` came from mimalloc (its page map knows the address).
fn owned_by_mimalloc(p: *mut u8) -> bool {
    // SAFETY: a lookup in mimalloc's page map; any address may be asked about.
    mimalloc() && unsafe { mi::mi_is_in_heap_region(p.cast::<c_void>().cast_const()) }
}

// SAFETY: each pointer is freed or resized by the allocator that returned it: mimalloc's
// only if its page map owns it (mimalloc serves nothing before `use_mimalloc`), glibc's
// otherwise. mimalloc's aligned calls honour every `Layout` alignment.
unsafe impl GlobalAlloc for BerthAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mimalloc() {
            // SAFETY: as `GlobalAlloc::alloc`; layout size is non-zero.
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        } else {
            // SAFETY: forwarded as is.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mimalloc() {
            // SAFETY: as above, zeroed.
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        } else {
            // SAFETY: forwarded as is.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if owned_by_mimalloc(ptr) {
            // SAFETY: `ptr` is a live mimalloc allocation.
            unsafe { mi::mi_free(ptr.cast()) }
        } else {
            // SAFETY: `ptr` is a live glibc allocation of `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if owned_by_mimalloc(ptr) {
            // SAFETY: `ptr` is a live mimalloc allocation; the alignment is kept.
            unsafe { mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast() }
        } else {
            // SAFETY: `ptr` is a live glibc allocation of `layout`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aligned(p: *mut u8, align: usize) -> bool {
        (p as usize).is_multiple_of(align)
    }

    // Each pointer below is used within its layout and freed once, by the allocator under
    // test (nextest runs this test in a process of its own, so the switch is its own).
    #[test]
    fn memory_from_before_the_switch_goes_back_to_glibc_and_after_it_to_mimalloc() {
        let a = BerthAlloc;
        let small = Layout::from_size_align(24, 8).unwrap();
        let page = Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: non-zero size.
        let before = unsafe { a.alloc(small) };
        assert!(!before.is_null());
        // SAFETY: a page-map lookup.
        assert!(!unsafe { mi::mi_is_in_heap_region(before.cast::<c_void>().cast_const()) });
        // SAFETY: 24 bytes of `before`.
        unsafe { before.write_bytes(7, 24) };

        use_mimalloc();
        // SAFETY: non-zero size.
        let after = unsafe { a.alloc_zeroed(page) };
        assert!(!after.is_null() && aligned(after, 4096));
        assert!(owned_by_mimalloc(after));
        // SAFETY: `after` holds 4096 initialised (zeroed) bytes.
        let zeroed = unsafe { std::slice::from_raw_parts(after, 4096) };
        assert!(zeroed.iter().all(|&b| b == 0));

        // A glibc block grown after the switch stays glibc's, its bytes kept.
        // SAFETY: `before` is live, of `small`.
        let grown = unsafe { a.realloc(before, small, 4000) };
        assert!(!grown.is_null() && !owned_by_mimalloc(grown));
        // SAFETY: the first 24 bytes were copied over.
        let kept = unsafe { std::slice::from_raw_parts(grown, 24) };
        assert!(kept.iter().all(|&b| b == 7));
        // SAFETY: `grown` is live, of 4000 bytes.
        unsafe { a.dealloc(grown, Layout::from_size_align(4000, 8).unwrap()) };

        // SAFETY: `after` is live, of `page`.
        let moved = unsafe { a.realloc(after, page, 100_000) };
        assert!(owned_by_mimalloc(moved) && aligned(moved, 4096));
        // SAFETY: `moved` is live, of 100 000 bytes aligned to 4096.
        unsafe { a.dealloc(moved, Layout::from_size_align(100_000, 4096).unwrap()) };
    }
}
