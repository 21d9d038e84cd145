//! The daemons' allocator bounds (agent/src/host/alloc.rs) on the real glibc: capped arenas
//! stay capped however many threads allocate, the heap totals follow what the program holds,
//! and a trim gives the free pages inside the heap back to the kernel. One test in this file:
//! the settings are process-wide (nextest runs it in a process of its own).
#![allow(clippy::unwrap_used, reason = "test helpers")]

use std::sync::{Arc, Barrier};

use berth_agent::host::alloc;

fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn arenas_stay_capped_heap_totals_follow_and_trim_returns_pages() {
    let before = alloc::arenas().unwrap();
    alloc::limit_arenas();
    let cap = std::env::var("MALLOC_ARENA_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::try_from(alloc::ARENAS).unwrap());

    // Eight threads allocating at once: glibc would give each its own arena (up to 8 x
    // cores); capped, they share.
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let v: Vec<Box<[u8; 64]>> = (0..10_000).map(|_| Box::new([i; 64])).collect();
                v.len()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 10_000);
    }
    let after = alloc::arenas().unwrap();
    assert!(
        after <= before.max(cap),
        "arenas went {before} -> {after} with a cap of {cap}"
    );

    // 64 MiB in 64 KiB-apart small blocks: in use while held.
    let heap0 = alloc::heap().unwrap();
    let mut blocks: Vec<Box<[u8; 1000]>> = (0..65_536).map(|_| Box::new([1u8; 1000])).collect();
    let heap1 = alloc::heap().unwrap();
    assert!(
        heap1.in_use >= heap0.in_use + (60 << 20),
        "in use {} -> {} after 64 MiB",
        heap0.in_use,
        heap1.in_use
    );
    // Free all but one block in 64: the heap cannot shrink from its top (the kept blocks pin
    // it), only a trim returns the free pages between them.
    let mut i = 0;
    blocks.retain(|_| {
        i += 1;
        i % 64 == 0
    });
    blocks.shrink_to_fit();
    let heap2 = alloc::heap().unwrap();
    assert!(heap2.in_use < heap1.in_use - (50 << 20), "freed: {heap2:?}");
    assert!(heap2.free >= 50 << 20, "held by the allocator: {heap2:?}");
    let rss_before = rss_anon_kib();
    alloc::trim();
    let rss_after = rss_anon_kib();
    assert!(
        rss_after + 40 * 1024 < rss_before,
        "trim returned too little: RssAnon {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(blocks.len(), 1024);
    assert!(blocks.iter().all(|b| b[999] == 1));
}
