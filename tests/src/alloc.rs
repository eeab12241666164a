//! A counting global allocator, to measure the peak bytes a reader allocates
//! on hostile input. A binary that uses it declares
//! `#[global_allocator] static A: memimg_tests::alloc::Counting = memimg_tests::alloc::Counting;`
//! (tests/tests/bounds.rs, the `structured` fuzz target); its counts are
//! process-wide, so measure one thing at a time.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes allocated through it, and defers to the system allocator.
#[derive(Debug, Clone, Copy)]
pub struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator, with the same layout,
// and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller keeps GlobalAlloc::alloc's contract, which is System's.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` was allocated by System.alloc with `l`, above.
        unsafe { System.dealloc(p, l) }
    }
}

/// Peak bytes allocated above the level at the start while `f` runs (0 when
/// [`Counting`] is not the global allocator).
pub fn peak_during(f: impl FnOnce()) -> usize {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}
