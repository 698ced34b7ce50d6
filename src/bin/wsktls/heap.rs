//! A counting global allocator: the runner's heap in use now and at its peak. ntsim's
//! pool is carved from this heap, so the figures cover the driver, ntsim and the runner's
//! own few buffers (the demo's peer runs in another process so that it is not counted).
//! It must never allocate itself, nor change what the system allocator returns.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counted.
pub struct Counting;

/// Heap bytes in use now, and the most in use at once since the last [`reset_peak`].
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    pub current: usize,
    pub peak: usize,
}

pub fn figures() -> Heap {
    Heap { current: CURRENT.load(Ordering::Relaxed), peak: PEAK.load(Ordering::Relaxed) }
}

/// Starts a new peak from what is in use now (so setup before the kernel boots is left out).
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every call is passed to System unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: the caller's block, allocated by System through us with this layout.
        unsafe { System.dealloc(p, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for dealloc; new_size is the caller's, as GlobalAlloc::realloc requires.
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        q
    }
}
