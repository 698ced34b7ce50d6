//! Secrets left behind: a test names byte strings it must never find in memory a driver
//! has given back (the plaintext it sent, the channel's traffic secrets and keys), and
//! ntsim looks for them in every pool block of the watched tags as it is freed, before
//! poisoning it, and in the live blocks when asked. [`ScanningHeap`] does the same for
//! the process heap, where a host build's Rust allocations (rustls's among them) live.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use crate::kernel::KernelInner;
use crate::pool::tag_text;
use crate::verifier::{Rule, report};

/// What to look for: `(label, bytes)` pairs, in pool blocks whose tag starts with a prefix.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    prefix: String,
    needles: Vec<(String, Vec<u8>)>,
    /// Copies of the blocks freed since `Kernel::keep_freed_pool`, to scan once the
    /// needles are known: `(tag, bytes)`.
    kept: Option<Vec<(u32, Vec<u8>)>>,
}

impl Drop for Watch {
    /// The needles are secrets too: wiped before their memory goes back, so that a
    /// watched heap does not find them.
    fn drop(&mut self) {
        let kept = self.kept.iter_mut().flatten();
        for bytes in self.needles.iter_mut().map(|(_, b)| b).chain(kept.map(|(_, b)| b)) {
            bytes.fill(0);
        }
    }
}

/// The label of the first needle `haystack` holds.
fn find<'a>(needles: &'a [(String, Vec<u8>)], haystack: &[u8]) -> Option<&'a str> {
    needles.iter().find(|(_, n)| contains(haystack, n)).map(|(label, _)| label.as_str())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl KernelInner {
    pub(crate) fn keep_freed_pool(&self, prefix: &str) {
        *crate::kernel::lock(&self.secrets) =
            Watch { prefix: prefix.into(), needles: Vec::new(), kept: Some(Vec::new()) };
    }

    /// Watches for `needles`, first in the blocks kept since `keep_freed_pool`.
    pub(crate) fn watch_secrets(&self, prefix: &str, needles: Vec<(String, Vec<u8>)>) {
        let kept = {
            let mut watch = crate::kernel::lock(&self.secrets);
            let kept = watch.kept.take().unwrap_or_default();
            *watch = Watch { prefix: prefix.into(), needles, kept: None };
            kept
        };
        for (tag, mut bytes) in kept {
            self.check_freed_pool(&bytes, tag);
            bytes.fill(0);
        }
    }

    /// Called by ExFreePoolWithTag with the block's bytes, before they are poisoned.
    pub(crate) fn check_freed_pool(&self, bytes: &[u8], tag: u32) {
        let mut watch = crate::kernel::lock(&self.secrets);
        let tag_text = tag_text(tag);
        if !tag_text.starts_with(&watch.prefix) {
            return;
        }
        if let Some(kept) = &mut watch.kept {
            kept.push((tag, bytes.to_vec()));
            return;
        }
        if let Some(label) = find(&watch.needles, bytes) {
            let detail =
                format!("a '{tag_text}' pool block of {} bytes was freed holding {label}", bytes.len());
            drop(watch);
            report(Rule::SecretLeftBehind, detail);
        }
    }

    /// The live pool blocks of the watched tags that hold a needle: `(tag, size, label)`.
    pub(crate) fn secrets_in_live_pool(&self) -> Vec<(String, usize, String)> {
        let watch = crate::kernel::lock(&self.secrets);
        let mut found = Vec::new();
        self.pool.for_each_live(|tag, bytes| {
            let tag = tag_text(tag);
            if tag.starts_with(&watch.prefix)
                && let Some(label) = find(&watch.needles, bytes)
            {
                found.push((tag, bytes.len(), label.to_owned()));
            }
        });
        found
    }
}

/// The process heap, watched: a global allocator (over the system's) for a test binary.
/// Between [`ScanningHeap::quarantine`] and [`ScanningHeap::watch`] freed blocks are kept
/// (secrets are only known once a handshake made them); `watch` scans them, gives them
/// back, and from then on checks each block as it is freed. It records what it finds (it
/// cannot report from inside `dealloc`); [`ScanningHeap::found`] reads it. Growing a
/// block moves it: the old copy is freed, so it is checked too.
///
/// The test must keep its own copies of the needles out of freed heap (make plaintext in
/// pool, wipe parsed secrets): it is the process's heap, not only the driver's.
pub struct ScanningHeap;

static NEEDLES: RwLock<Vec<(String, Vec<u8>)>> = RwLock::new(Vec::new());
/// Hits so far: blocks freed holding a needle, and the index of the last needle found.
static HITS: AtomicU64 = AtomicU64::new(0);
static LAST_HIT: AtomicU64 = AtomicU64::new(u64::MAX);
static LAST_HIT_SIZE: AtomicU64 = AtomicU64::new(0);
/// Whether frees are kept, and the kept blocks: a stack of nodes from the system
/// allocator (never from this one, which is inside `dealloc`).
static QUARANTINE: AtomicBool = AtomicBool::new(false);
static KEPT: AtomicPtr<Kept> = AtomicPtr::new(std::ptr::null_mut());

struct Kept {
    block: *mut u8,
    layout: Layout,
    next: *mut Kept,
}

thread_local! {
    /// Set while this thread is inside the scanner: its own frees are not scanned.
    static SCANNING: Cell<bool> = const { Cell::new(false) };
}

impl ScanningHeap {
    /// From now on freed blocks are kept, unscanned, until [`ScanningHeap::watch`].
    pub fn quarantine() {
        QUARANTINE.store(true, Ordering::SeqCst);
    }

    /// Watches for `needles`: the kept blocks are scanned and given back, and from now on
    /// each block is scanned as it is freed. The old needles are wiped before their
    /// memory goes back.
    pub fn watch(needles: Vec<(String, Vec<u8>)>) {
        let mut old = std::mem::replace(&mut *NEEDLES.write().unwrap_or_else(|e| e.into_inner()), needles);
        for (_, bytes) in &mut old {
            bytes.fill(0);
        }
        drop(old);
        HITS.store(0, Ordering::SeqCst);
        QUARANTINE.store(false, Ordering::SeqCst);
        let mut kept = KEPT.swap(std::ptr::null_mut(), Ordering::SeqCst);
        while !kept.is_null() {
            // SAFETY: a node `dealloc` made with Box::into_raw-like System allocation below,
            // taken off the stack whole by the swap; its block is ours to free.
            unsafe {
                let node = kept.read();
                Self::check(std::slice::from_raw_parts(node.block, node.layout.size()));
                System.dealloc(node.block, node.layout);
                System.dealloc(kept.cast(), Layout::new::<Kept>());
                kept = node.next;
            }
        }
    }

    /// Stops watching (the needles are wiped).
    pub fn stop() {
        Self::watch(Vec::new());
    }

    /// How many freed blocks held a needle since `watch`, and the label and block size of
    /// the last one. With `NTSIM_SECRET_BACKTRACE=1` each hit found as it is freed also
    /// prints where.
    pub fn found() -> (u64, Option<(String, usize)>) {
        let hits = HITS.load(Ordering::SeqCst);
        let last = LAST_HIT.load(Ordering::SeqCst);
        let needles = NEEDLES.read().unwrap_or_else(|e| e.into_inner());
        let label = needles
            .get(last as usize)
            .map(|(l, _)| (l.clone(), LAST_HIT_SIZE.load(Ordering::SeqCst) as usize));
        (hits, label)
    }

    fn check(bytes: &[u8]) {
        // Not inside the scanner, nor on a thread whose locals are gone.
        if SCANNING.try_with(|s| s.replace(true)).unwrap_or(true) {
            return;
        }
        let hit = {
            let needles = NEEDLES.read().unwrap_or_else(|e| e.into_inner());
            needles.iter().position(|(_, n)| contains(bytes, n))
        };
        if let Some(i) = hit {
            HITS.fetch_add(1, Ordering::SeqCst);
            LAST_HIT.store(i as u64, Ordering::SeqCst);
            LAST_HIT_SIZE.store(bytes.len() as u64, Ordering::SeqCst);
            if std::env::var_os("NTSIM_SECRET_BACKTRACE").is_some() {
                eprintln!(
                    "ntsim: a heap block of {} bytes freed holding a watched secret:\n{}",
                    bytes.len(),
                    std::backtrace::Backtrace::force_capture()
                );
            }
        }
        let _ = SCANNING.try_with(|s| s.set(false));
    }

    /// Keeps the block instead of freeing it; false if no node could be had.
    fn keep(block: *mut u8, layout: Layout) -> bool {
        // SAFETY: a plain allocation from the system allocator, checked.
        let node = unsafe { System.alloc(Layout::new::<Kept>()) }.cast::<Kept>();
        if node.is_null() {
            return false;
        }
        let mut head = KEPT.load(Ordering::SeqCst);
        loop {
            // SAFETY: our fresh node, not yet shared.
            unsafe { node.write(Kept { block, layout, next: head }) };
            match KEPT.compare_exchange(head, node, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => head = now,
            }
        }
    }
}

// SAFETY: every call is passed to the system allocator unchanged, except that `dealloc`
// may keep a block (never touched again until `watch` frees it) instead of freeing it,
// and reads the block it is given before freeing it.
unsafe impl GlobalAlloc for ScanningHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if QUARANTINE.load(Ordering::Relaxed) && Self::keep(ptr, layout) {
            return;
        }
        // SAFETY: the caller's live block of `layout.size()` bytes, not yet freed.
        Self::check(unsafe { std::slice::from_raw_parts(ptr, layout.size()) });
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}
