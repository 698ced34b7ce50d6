//! Pool: ExAllocatePool2 / ExFreePoolWithTag with per-tag accounting, poisoning of freed
//! memory, a quarantine for blocks freed while in flight, and the leak report at unload.

use std::alloc::{Layout, alloc, dealloc};
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

use wsktls_nt::{
    POOL_FLAG_NON_PAGED, POOL_FLAG_PAGED, POOL_FLAG_RAISE_ON_FAILURE, POOL_FLAG_UNINITIALIZED, POOL_FLAGS,
    PVOID,
};

use crate::faults::{AllocKind, allocation_fails};
use crate::irql::require_dispatch;
use crate::kernel::{current, lock};
use crate::verifier::{Rule, report};

/// Freed pool is filled with this byte, so a use after free reads garbage, not data.
const POISON_FREED: u8 = 0xDF;
/// Uninitialised allocations start with this byte, so code relying on zeroes fails.
const POISON_UNINIT: u8 = 0xA5;

#[derive(Clone, Copy)]
struct Block {
    size: usize,
    tag: u32,
    nonpaged: bool,
}

#[derive(Default)]
struct PoolState {
    live: BTreeMap<usize, Block>,
    bytes: usize,
    peak_bytes: usize,
}

#[derive(Default)]
pub(crate) struct Pool {
    state: Mutex<PoolState>,
}

pub(crate) struct Totals {
    pub(crate) bytes: usize,
    pub(crate) blocks: usize,
    pub(crate) peak_bytes: usize,
}

fn layout(size: usize) -> Layout {
    // Like the real pool: 16-byte alignment, whole pages for page-sized requests.
    let align = if size >= wsktls_nt::PAGE_SIZE { wsktls_nt::PAGE_SIZE } else { 16 };
    Layout::from_size_align(size.max(1), align).expect("pool layout")
}

/// What a pool allocation costs the real kernel: whole pages from a page up, otherwise
/// the request rounded to 16 bytes plus the 16-byte POOL_HEADER.
fn charged(size: usize) -> usize {
    let page = wsktls_nt::PAGE_SIZE;
    if size >= page { size.div_ceil(page) * page } else { size.div_ceil(16) * 16 + 16 }
}

/// Pool in use by some tags: blocks, bytes asked for, and bytes the kernel would charge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub blocks: usize,
    pub bytes: usize,
    pub charged: usize,
}

pub(crate) fn tag_text(tag: u32) -> String {
    tag.to_le_bytes().iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }).collect()
}

impl Pool {
    pub(crate) fn totals(&self) -> Totals {
        let s = lock(&self.state);
        Totals { bytes: s.bytes, blocks: s.live.len(), peak_bytes: s.peak_bytes }
    }

    /// Live blocks whose tag starts with `prefix` (e.g. "Wt" for all of one driver's).
    pub(crate) fn usage(&self, prefix: &str) -> PoolUsage {
        let s = lock(&self.state);
        let mut usage = PoolUsage::default();
        for b in s.live.values().filter(|b| tag_text(b.tag).starts_with(prefix)) {
            usage.blocks += 1;
            usage.bytes += b.size;
            usage.charged += charged(b.size);
        }
        usage
    }

    /// Calls `f(tag, bytes)` for each live block, with the pool locked.
    pub(crate) fn for_each_live(&self, mut f: impl FnMut(u32, &[u8])) {
        let s = lock(&self.state);
        for (&addr, b) in &s.live {
            // SAFETY: a live block of `b.size` bytes; the lock keeps it from being freed.
            f(b.tag, unsafe { std::slice::from_raw_parts(addr as *const u8, b.size) });
        }
    }

    /// Whether `[start, start+len)` lies inside one live nonpaged block.
    pub(crate) fn is_live_nonpaged(&self, start: usize, len: usize) -> bool {
        self.blocks().hold_nonpaged(start, len)
    }

    /// The live blocks, locked, for several questions in a row (an MDL chain's runs).
    pub(crate) fn blocks(&self) -> LiveBlocks<'_> {
        LiveBlocks(lock(&self.state))
    }
}

pub(crate) struct LiveBlocks<'a>(MutexGuard<'a, PoolState>);

impl LiveBlocks<'_> {
    /// Whether `[start, start+len)` lies inside one live nonpaged block.
    pub(crate) fn hold_nonpaged(&self, start: usize, len: usize) -> bool {
        match self.0.live.range(..=start).next_back() {
            Some((&base, b)) => b.nonpaged && start + len <= base + b.size,
            None => false,
        }
    }
}

impl Pool {
    pub(crate) fn check_unload(&self) {
        let s = lock(&self.state);
        if s.live.is_empty() {
            return;
        }
        let mut by_tag: HashMap<u32, (usize, usize)> = HashMap::new();
        for b in s.live.values() {
            let e = by_tag.entry(b.tag).or_default();
            e.0 += 1;
            e.1 += b.size;
        }
        let mut lines: Vec<String> = by_tag
            .iter()
            .map(|(t, (n, bytes))| format!("tag '{}': {n} block(s), {bytes} bytes", tag_text(*t)))
            .collect();
        lines.sort();
        drop(s);
        report(Rule::PoolLeak, format!("pool still allocated at unload: {}", lines.join("; ")));
    }
}

#[unsafe(no_mangle)]
pub extern "system" fn ExAllocatePool2(flags: POOL_FLAGS, size: usize, tag: u32) -> PVOID {
    let k = current();
    if !require_dispatch("ExAllocatePool2") {
        return std::ptr::null_mut();
    }
    if flags & (POOL_FLAG_NON_PAGED | POOL_FLAG_PAGED) == 0 || tag == 0 {
        report(Rule::BadParameter, format!("ExAllocatePool2 flags {flags:#x} tag {tag:#x}"));
        return std::ptr::null_mut();
    }
    if flags & POOL_FLAG_RAISE_ON_FAILURE != 0 {
        report(Rule::BadParameter, "POOL_FLAG_RAISE_ON_FAILURE: wsktls handles failures as values");
    }
    if allocation_fails(AllocKind::Pool, Some(tag)) {
        return std::ptr::null_mut();
    }
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc(layout(size)) };
    if p.is_null() {
        return p.cast();
    }
    let fill = if flags & POOL_FLAG_UNINITIALIZED != 0 { POISON_UNINIT } else { 0 };
    // SAFETY: `p` is a fresh allocation of `size` bytes.
    unsafe { p.write_bytes(fill, size) };
    let mut s = lock(&k.pool.state);
    s.live.insert(p as usize, Block { size, tag, nonpaged: flags & POOL_FLAG_NON_PAGED != 0 });
    s.bytes += size;
    s.peak_bytes = s.peak_bytes.max(s.bytes);
    k.counters.allocations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    p.cast()
}

#[unsafe(no_mangle)]
pub extern "system" fn ExFreePoolWithTag(p: PVOID, tag: u32) {
    let k = current();
    require_dispatch("ExFreePoolWithTag");
    let addr = p as usize;
    let block = {
        let s = lock(&k.pool.state);
        s.live.get(&addr).copied()
    };
    let Some(block) = block else {
        report(Rule::BadPoolFree, format!("ExFreePoolWithTag({p:?}): not a live pool block (double free?)"));
        return;
    };
    if block.tag != tag {
        report(
            Rule::BadPoolFree,
            format!(
                "ExFreePoolWithTag({p:?}) with tag '{}', allocated with '{}'",
                tag_text(tag),
                tag_text(block.tag)
            ),
        );
        return;
    }
    // The driver has let go of the block, whatever becomes of its memory below.
    {
        let mut s = lock(&k.pool.state);
        s.live.remove(&addr);
        s.bytes -= block.size;
    }
    if let Some(timer) = k.timers.inside(addr, block.size) {
        // Kept, like a buffer freed in flight: the timer thread may still touch it.
        report(
            Rule::TimerMisuse,
            format!("pool block {p:?} freed with a set timer or running DPC at {timer:#x} inside it"),
        );
        return;
    }
    if let Some(irp) = k.mdls.in_flight_overlapping(addr, block.size) {
        // Keep the memory (quarantined, never reused) so the provider still reads valid
        // bytes; the report is the bugcheck.
        report(
            Rule::BufferFreedInFlight,
            format!(
                "pool block {p:?} ({} bytes, tag '{}') freed while IRP {irp:#x} still carries it",
                block.size,
                tag_text(tag)
            ),
        );
        return;
    }
    // SAFETY: the block is still allocated; nothing else may touch it once freed.
    k.check_freed_pool(unsafe { std::slice::from_raw_parts(p as *const u8, block.size) }, tag);
    // SAFETY: the block was allocated above with this layout and is no longer tracked.
    unsafe {
        (p as *mut u8).write_bytes(POISON_FREED, block.size);
        dealloc(p as *mut u8, layout(block.size));
    }
}

/// For ntsim's own bookkeeping structures (IRPs, MDLs) that live in simulated memory.
pub(crate) fn raw_alloc(size: usize) -> *mut c_void {
    // SAFETY: non-zero size.
    let p = unsafe { alloc(Layout::from_size_align(size.max(1), 16).expect("layout")) };
    if !p.is_null() {
        // SAFETY: fresh allocation of `size` bytes.
        unsafe { p.write_bytes(0, size) };
    }
    p.cast()
}

/// Frees what `raw_alloc` returned, poisoning it first.
pub(crate) unsafe fn raw_free(p: *mut c_void, size: usize) {
    // SAFETY: per the caller, `p` came from raw_alloc(size).
    unsafe {
        (p as *mut u8).write_bytes(POISON_FREED, size);
        dealloc(p.cast(), Layout::from_size_align(size.max(1), 16).expect("layout"));
    }
}
