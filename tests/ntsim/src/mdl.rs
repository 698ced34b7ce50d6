//! MDLs: allocation, building for nonpaged pool, mapping, and the in-flight registry that
//! lets the verifier catch an MDL or buffer freed, or a send buffer written, while an IRP
//! carries it.

use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Mutex;

use wsktls_nt::{
    ADDRESS_AND_SIZE_TO_SPAN_PAGES, BOOLEAN, BYTE_OFFSET, IRP, KPROCESSOR_MODE, MDL, MDL_MAPPED_TO_SYSTEM_VA,
    MDL_PAGES_LOCKED, MDL_SOURCE_IS_NONPAGED_POOL, PAGE_ALIGN, PAGE_SHIFT, PFN_NUMBER, PVOID, WSK_BUF,
};

use crate::faults::{AllocKind, allocation_fails};
use crate::irql::require_dispatch;
use crate::kernel::{AddrMap, KernelInner, current, lock};
use crate::pool::{raw_alloc, raw_free};
use crate::verifier::{Rule, report};

/// A run of bytes an MDL chain describes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub(crate) addr: usize,
    pub(crate) len: usize,
}

struct InFlight {
    mdls: Vec<usize>,
    segments: Vec<Segment>,
    /// Each MDL's header (Next, StartVa, ByteCount, ByteOffset, flags) when submitted:
    /// Windows walks the chain while the request is in flight, so it must not change.
    headers: Vec<[usize; 5]>,
}

fn header(mdl: usize) -> [usize; 5] {
    // SAFETY: an MDL in flight is live or quarantined (never freed while in flight).
    let m = unsafe { &*(mdl as *const MDL) };
    [
        m.Next as usize,
        m.StartVa as usize,
        m.ByteCount as usize,
        m.ByteOffset as usize,
        m.MdlFlags as u16 as usize,
    ]
}

#[derive(Default)]
pub(crate) struct Mdls {
    /// Live MDLs and their allocation sizes.
    live: Mutex<AddrMap<usize>>,
    /// IRP address → what it carries.
    in_flight: Mutex<AddrMap<InFlight>>,
    /// MDLs freed while in flight: kept, never reused, so the provider stays safe.
    quarantined: Mutex<Vec<usize>>,
}

impl Mdls {
    pub(crate) fn outstanding(&self) -> usize {
        lock(&self.live).len()
    }

    pub(crate) fn check_unload(&self) {
        let n = self.outstanding();
        if n > 0 {
            report(Rule::MdlLeaked, format!("{n} MDL(s) still allocated at unload"));
        }
    }

    pub(crate) fn is_live(&self, mdl: *const MDL) -> bool {
        lock(&self.live).contains_key(&(mdl as usize))
    }

    pub(crate) fn mark_in_flight(&self, irp: *mut IRP, mdls: Vec<usize>, segments: Vec<Segment>) {
        let headers = mdls.iter().map(|&m| header(m)).collect();
        lock(&self.in_flight).insert(irp as usize, InFlight { mdls, segments, headers });
    }

    /// The request is over: its MDLs are free to change, and must not have changed before.
    pub(crate) fn clear_in_flight(&self, irp: *mut IRP) {
        let Some(f) = lock(&self.in_flight).remove(&(irp as usize)) else { return };
        // The last MDL's Next is not part of the request (Length ended inside it).
        let n = f.mdls.len();
        for (i, (&mdl, before)) in f.mdls.iter().zip(&f.headers).enumerate() {
            let mut now = header(mdl);
            let mut was = *before;
            if i + 1 == n {
                now[0] = 0;
                was[0] = 0;
            }
            if now != was {
                report(Rule::BadMdl, format!("MDL {mdl:#x} was changed while IRP {irp:?} carried it"));
            }
        }
    }

    /// The IRP (if any) whose chain describes bytes in `[addr, addr+len)`.
    pub(crate) fn in_flight_overlapping(&self, addr: usize, len: usize) -> Option<usize> {
        let f = lock(&self.in_flight);
        f.iter()
            .find(|(_, i)| i.segments.iter().any(|s| s.addr < addr + len && addr < s.addr + s.len))
            .map(|(irp, _)| *irp)
    }

    fn carrying(&self, mdl: usize) -> Option<usize> {
        let f = lock(&self.in_flight);
        f.iter().find(|(_, i)| i.mdls.contains(&mdl)).map(|(irp, _)| *irp)
    }
}

fn mdl_size(va: *const c_void, len: usize) -> usize {
    size_of::<MDL>() + ADDRESS_AND_SIZE_TO_SPAN_PAGES(va, len) * size_of::<PFN_NUMBER>()
}

#[unsafe(no_mangle)]
pub extern "system" fn IoAllocateMdl(
    va: PVOID,
    length: u32,
    secondary: BOOLEAN,
    _charge_quota: BOOLEAN,
    irp: *mut IRP,
) -> *mut MDL {
    let k = current();
    if !require_dispatch("IoAllocateMdl") || allocation_fails(AllocKind::Mdl, None) {
        return std::ptr::null_mut();
    }
    let size = mdl_size(va, length as usize);
    let mdl = raw_alloc(size) as *mut MDL;
    if mdl.is_null() {
        return mdl;
    }
    k.counters.allocations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: fresh, zeroed allocation big enough for the header and the PFN array.
    unsafe {
        (*mdl).Size = size as i16;
        (*mdl).StartVa = PAGE_ALIGN(va);
        (*mdl).ByteOffset = BYTE_OFFSET(va);
        (*mdl).ByteCount = length;
        if !irp.is_null() {
            if secondary == 0 {
                (*irp).MdlAddress = mdl;
            } else {
                let mut last = (*irp).MdlAddress;
                while !(*last).Next.is_null() {
                    last = (*last).Next;
                }
                (*last).Next = mdl;
            }
        }
    }
    lock(&k.mdls.live).insert(mdl as usize, size);
    mdl
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoFreeMdl(mdl: *mut MDL) {
    let k = current();
    require_dispatch("IoFreeMdl");
    let Some(size) = lock(&k.mdls.live).get(&(mdl as usize)).copied() else {
        report(Rule::BadMdl, format!("IoFreeMdl({mdl:?}): not a live MDL (double free?)"));
        return;
    };
    lock(&k.mdls.live).remove(&(mdl as usize));
    if let Some(irp) = k.mdls.carrying(mdl as usize) {
        report(Rule::MdlFreedInFlight, format!("MDL {mdl:?} freed while IRP {irp:#x} carries it"));
        lock(&k.mdls.quarantined).push(mdl as usize);
        return;
    }
    // SAFETY: the MDL came from IoAllocateMdl with this size and is no longer tracked.
    unsafe { raw_free(mdl.cast(), size) };
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn MmBuildMdlForNonPagedPool(mdl: *mut MDL) {
    let k = current();
    require_dispatch("MmBuildMdlForNonPagedPool");
    if !k.mdls.is_live(mdl) {
        report(Rule::BadMdl, format!("MmBuildMdlForNonPagedPool({mdl:?}): not a live MDL"));
        return;
    }
    // SAFETY: a live MDL from IoAllocateMdl, sized for its pages.
    unsafe {
        let va = (*mdl).StartVa as usize + (*mdl).ByteOffset as usize;
        let len = (*mdl).ByteCount as usize;
        if !k.pool.is_live_nonpaged(va, len) {
            report(
                Rule::MdlNotNonPagedPool,
                format!(
                    "MmBuildMdlForNonPagedPool: {len} bytes at {va:#x} are not inside a live nonpaged pool block"
                ),
            );
            return;
        }
        let pages = ADDRESS_AND_SIZE_TO_SPAN_PAGES(va as *const c_void, len);
        let pfns = mdl.add(1) as *mut PFN_NUMBER;
        for i in 0..pages {
            *pfns.add(i) = ((*mdl).StartVa as usize >> PAGE_SHIFT) + i;
        }
        (*mdl).MappedSystemVa = va as PVOID;
        (*mdl).MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL;
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn MmMapLockedPagesSpecifyCache(
    mdl: *mut MDL,
    _mode: KPROCESSOR_MODE,
    _cache: i32,
    _requested: PVOID,
    _bugcheck: u32,
    _priority: u32,
) -> PVOID {
    let k = current();
    require_dispatch("MmMapLockedPagesSpecifyCache");
    // SAFETY: checked live below before any field is read.
    unsafe {
        if !k.mdls.is_live(mdl) || (*mdl).MdlFlags & (MDL_PAGES_LOCKED | MDL_SOURCE_IS_NONPAGED_POOL) == 0 {
            report(Rule::BadMdl, format!("MmMapLockedPagesSpecifyCache({mdl:?}): MDL not locked"));
            return std::ptr::null_mut();
        }
        // User-mode has one address space: the system mapping is the buffer itself.
        (*mdl).MappedSystemVa = ((*mdl).StartVa as usize + (*mdl).ByteOffset as usize) as PVOID;
        (*mdl).MdlFlags |= MDL_MAPPED_TO_SYSTEM_VA;
        (*mdl).MappedSystemVa
    }
}

/// One MDL of a chain, as the provider reads it.
struct Link {
    flags: i16,
    count: usize,
    /// Where its bytes are: the system mapping when there is one.
    va: usize,
    next: *mut MDL,
}

/// # Safety
/// `mdl` is a live MDL allocated by IoAllocateMdl.
unsafe fn link(mdl: *mut MDL) -> Link {
    // SAFETY: per the caller.
    let m = unsafe { &*mdl };
    let va = if m.MdlFlags & (MDL_SOURCE_IS_NONPAGED_POOL | MDL_MAPPED_TO_SYSTEM_VA) != 0 {
        m.MappedSystemVa as usize
    } else {
        m.StartVa as usize + m.ByteOffset as usize
    };
    Link { flags: m.MdlFlags, count: m.ByteCount as usize, va, next: m.Next }
}

/// Walks a WSK_BUF's MDL chain as the WSK provider would, checking what Windows would
/// crash on, and calls `each` with every MDL the request covers and the byte run of it
/// that `Offset..Offset+Length` takes (empty runs are not passed). Allocates nothing.
/// Returns false, after a report, when the request must fail.
fn walk(k: &KernelInner, buf: &WSK_BUF, what: &str, mut each: impl FnMut(usize, Option<Segment>)) -> bool {
    // Locked once for the whole chain, not twice per MDL. Nothing takes these two locks
    // in the other order (nothing else holds both).
    let live = lock(&k.mdls.live);
    let pool = k.pool.blocks();
    let mut need = buf.Length;
    let mut mdl = buf.Mdl;
    let mut skip = buf.Offset as usize;
    if mdl.is_null() {
        report(Rule::BadParameter, format!("{what}: WSK_BUF with a NULL MDL"));
        return false;
    }
    let mut chain_bytes = 0usize;
    let mut first = true;
    while need > 0 || first {
        if mdl.is_null() {
            report(
                Rule::WskBufBeyondChain,
                format!(
                    "{what}: WSK_BUF Offset {} + Length {} reaches beyond its MDL chain of {chain_bytes} bytes",
                    buf.Offset, buf.Length
                ),
            );
            return false;
        }
        if !live.contains_key(&(mdl as usize)) {
            report(Rule::BadMdl, format!("{what}: {mdl:?} in the chain is not a live MDL"));
            return false;
        }
        // SAFETY: a live MDL allocated by IoAllocateMdl.
        let Link { flags, count, va, next } = unsafe { link(mdl) };
        if flags & (MDL_SOURCE_IS_NONPAGED_POOL | MDL_PAGES_LOCKED) == 0 {
            report(
                Rule::BadMdl,
                format!("{what}: MDL {mdl:?} is neither built for nonpaged pool nor locked"),
            );
            return false;
        }
        // wsk.h: "Offset is required to lie entirely within the first MDL in the chain".
        if first && (skip > count || (skip == count && need > 0)) {
            report(
                Rule::WskBufBeyondChain,
                format!("{what}: WSK_BUF Offset {skip} lies outside its first MDL ({count} bytes)"),
            );
            return false;
        }
        chain_bytes += count;
        let take = (count - skip.min(count)).min(need);
        let run = (take > 0).then_some(Segment { addr: va + skip, len: take });
        if take > 0 && !pool.hold_nonpaged(va + skip, take) {
            report(Rule::BadMdl, format!("{what}: MDL {mdl:?} describes memory that is no longer live pool"));
            return false;
        }
        each(mdl as usize, run);
        first = false;
        need -= take;
        skip = 0;
        mdl = next;
    }
    true
}

/// Walks a WSK_BUF's MDL chain (see `walk`). Returns the MDLs and the byte runs
/// `Offset..Offset+Length` covers.
pub(crate) fn describe(k: &KernelInner, buf: &WSK_BUF, what: &str) -> Option<(Vec<usize>, Vec<Segment>)> {
    let mut mdls = Vec::new();
    let mut segments = Vec::new();
    let ok = walk(k, buf, what, |mdl, run| {
        mdls.push(mdl);
        segments.extend(run);
    });
    ok.then_some((mdls, segments))
}

/// The checks of `describe`, for a request that completes before returning and so never
/// has to remember its chain: no allocation.
pub(crate) fn check(k: &KernelInner, buf: &WSK_BUF, what: &str) -> bool {
    walk(k, buf, what, |_, _| {})
}

/// The byte runs of a WSK_BUF that `check` accepted, in order, read again without the
/// checks.
///
/// # Safety
/// `check` accepted `buf`, and the request is still in progress (its chain unchanged).
pub(crate) unsafe fn runs(buf: &WSK_BUF) -> impl Iterator<Item = Segment> {
    let mut mdl = buf.Mdl;
    let mut skip = buf.Offset as usize;
    let mut need = buf.Length;
    std::iter::from_fn(move || {
        while need > 0 && !mdl.is_null() {
            // SAFETY: per the caller, every MDL up to the one that ends the request is live.
            let Link { count, va, next, .. } = unsafe { link(mdl) };
            let take = (count - skip.min(count)).min(need);
            let run = Segment { addr: va + skip, len: take };
            need -= take;
            skip = 0;
            mdl = next;
            if take > 0 {
                return Some(run);
            }
        }
        None
    })
}

/// A fast hash of the bytes segments describe: taken when a send is submitted and again
/// when it completes, so a write into an in-flight buffer is seen.
pub(crate) fn hash_segments(segments: &[Segment]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for s in segments {
        let p = s.addr as *const u8;
        let words = s.len / 8;
        for i in 0..words {
            // SAFETY: the segment lies inside live pool (checked by `describe`); reads may
            // race with a buggy driver's writes, which is the bug this detects.
            let w = unsafe { (p.add(i * 8) as *const u64).read_unaligned() };
            h = (h ^ w).wrapping_mul(0x100_0000_01B3).rotate_left(29);
        }
        for i in words * 8..s.len {
            // SAFETY: as above.
            let b = unsafe { p.add(i).read_volatile() };
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3).rotate_left(29);
        }
    }
    h
}
