//! The heap reserve: pool set aside, fallibly and before the call, for the heap
//! allocations of code that cannot take a failure.
//!
//! rustls allocates from the heap, Rust's global allocator, and Rust's allocation is
//! infallible: an allocation that fails ends in `handle_alloc_error`, which in the kernel
//! is a bugcheck. So the driver calls rustls only while it lends the calling thread a
//! [`Reserve`]. If the pool refuses one of that call's heap allocations, the reserve serves
//! it. Taking the reserve is an ordinary pool allocation, whose failure is an ordinary
//! STATUS_INSUFFICIENT_RESOURCES, before anything has started.
//!
//! [`Reserving`] is the allocator's half, wrapped around the kernel image's pool
//! allocator (and the test binaries'). It finds the reserve by the current thread and
//! IRQL: a DPC that interrupts the borrower runs at another IRQL and is not served, so
//! the borrower's bump pointer has one writer.
//!
//! A reserve is a bump allocator that takes back the last block it gave (the pattern of a
//! growing Vec). Its bookkeeping lives in a fixed table of slots, so that any thread can
//! tell whether a block it frees came from a reserve; a slot is held only while a reserve
//! is lent or still has blocks out, and the table is scanned only while some slot is.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering, fence};

use crate::nt::{
    KIRQL, KeGetCurrentIrql, NTSTATUS, PoolBox, PoolBuffer, STATUS_INSUFFICIENT_RESOURCES, current_thread,
    pool_tag,
};

/// Reserves lent or with blocks out at once: a connect in progress holds one, a KeyUpdate
/// holds its channel's for the call, and a reserve that served a block that outlives the
/// call holds one until the block is freed.
const SLOTS: usize = 1024;

/// The reserve's own reference in its slot's `live`.
const OWNER: usize = 1;

/// The small box that holds a reserve's buffer, so that the slot can take it over.
const TAG_OF_BOX: u32 = pool_tag(b"WtHb");

/// Pool set aside for one thread's heap allocations while it runs code that cannot fail
/// an allocation. Lent with [`Reserve::lend`]; its memory is wiped when released
/// (it is a [`PoolBuffer`]) and every block served from it is wiped when freed (the heap
/// frees through [`wsktls_crypto::WipeOnFree`]).
pub struct Reserve {
    /// Released when the reserve is dropped, or if a block served from it is still out
    /// then, when the last such block is freed (the slot holds it till then).
    buffer: *mut PoolBuffer,
    /// The slot that describes the reserve while it is registered, plus one; 0 when not.
    slot: AtomicUsize,
    /// The most of it in use at once, in bytes, over every loan so far.
    high_water: AtomicUsize,
}

// SAFETY: the reserve owns its buffer's box outright (the pointer is `into_raw`'s); what
// other threads see of it goes through the slot's atomics. Not Sync: `lend` assumes one
// call at a time, which its owner ensures (connect's thread, or the channel's keys lock).
unsafe impl Send for Reserve {}

impl Reserve {
    /// `bytes` of nonpaged pool, tagged `tag`. IRQL <= DISPATCH_LEVEL.
    pub fn new(bytes: usize, tag: u32) -> Result<Reserve, NTSTATUS> {
        let buffer = PoolBox::new(TAG_OF_BOX, PoolBuffer::new(bytes, tag)?)?.into_raw();
        Ok(Reserve { buffer, slot: AtomicUsize::new(0), high_water: AtomicUsize::new(0) })
    }

    /// Runs `f` with the reserve lent to this thread at this IRQL. Fails (without running
    /// `f`) only if every slot of the table is taken. Not reentrant: a reserve is lent to
    /// one call at a time (its owner serialises them).
    pub fn lend<R>(&self, f: impl FnOnce() -> R) -> Result<R, NTSTATUS> {
        let slot = match self.slot.load(Ordering::Acquire) {
            0 => {
                let (index, slot) = claim().ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
                // SAFETY: ours until drop hands it to the slot.
                let buffer = unsafe { &*self.buffer };
                let start = buffer.as_ptr() as usize;
                slot.buffer.store(self.buffer, Ordering::Relaxed);
                slot.write(|s| {
                    s.start.store(start, Ordering::Relaxed);
                    s.end.store(start + buffer.len(), Ordering::Relaxed);
                    s.next.store(start, Ordering::Relaxed);
                    s.registered.store(true, Ordering::Relaxed);
                });
                self.slot.store(index + 1, Ordering::Release);
                slot
            }
            n => &TABLE[n - 1],
        };
        let (thread, irql) = here();
        slot.irql.store(irql, Ordering::Relaxed);
        slot.thread.store(thread, Ordering::Release);
        let r = f();
        slot.thread.store(0, Ordering::Release);
        self.high_water.fetch_max(slot.high_water.load(Ordering::Relaxed), Ordering::Relaxed);
        // Nothing allocates from the slot now (it has no borrower), so `live` only falls.
        if slot.live.load(Ordering::Acquire) == OWNER {
            slot.unregister();
            self.slot.store(0, Ordering::Release);
        }
        Ok(r)
    }

    /// Whether blocks served from the reserve are still out (they outlived a call).
    pub fn has_blocks_out(&self) -> bool {
        match self.slot.load(Ordering::Acquire) {
            0 => false,
            n => TABLE[n - 1].live.load(Ordering::Acquire) > OWNER,
        }
    }

    /// The most of the reserve in use at once, in bytes, over its loans so far: the
    /// figure that sizes reserves (0 if it never served a block).
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        match self.slot.load(Ordering::Acquire) {
            // Blocks may be out: the slot's last reference, ours or a block's, releases.
            n @ 1.. => TABLE[n - 1].release_one(),
            // SAFETY: not registered, so no block of it is out; from `into_raw`, once.
            0 => drop(unsafe { PoolBox::from_raw(self.buffer, TAG_OF_BOX) }),
        }
    }
}

/// The most of any one reserve in use at once since the driver loaded, in bytes: the
/// figure that sizes reserves.
pub fn most_used() -> usize {
    MOST_USED.load(Ordering::Relaxed)
}

/// Whether this thread, at this IRQL, is lent a reserve now: what a test allocator asks
/// to fail only the allocations a reserve covers.
pub fn lent_here() -> bool {
    borrowed_slot().is_some()
}

/// The allocator that falls back on the reserve lent to the current thread when `A`
/// refuses an allocation.
pub struct Reserving<A>(pub A);

// SAFETY: a block comes either from `A` or from a registered reserve's memory, which
// stays allocated while the block is out (`live` keeps the slot registered); `dealloc`
// tells the two apart by address, and a reserve's range cannot hold a block of `A`.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Reserving<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            return p;
        }
        borrowed_slot().map_or(core::ptr::null_mut(), |slot| slot.serve(layout))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match reserve_of(ptr) {
            Some(slot) => slot.take_back(ptr, layout),
            // SAFETY: not a reserve's block, so one of `A`'s; forwarded contract.
            None => unsafe { self.0.dealloc(ptr, layout) },
        }
    }
}

/// One registered reserve, as every thread sees it. What says which memory is the
/// reserve's (`registered`, `start`, `end`) changes under `seq`, a seqlock, and only when
/// no block of it is out (claim, unregister): so a free that sees `seq` odd or changed
/// knows its block is not the reserve's. The borrower (`thread`, then `irql`) is set and
/// cleared by the borrower itself, `irql` first: another thread never matches it, and a
/// DPC that interrupts the borrower runs at another IRQL.
struct Slot {
    /// Claimed by a reserve (the one writer of the fields under `seq`).
    owned: AtomicBool,
    seq: AtomicUsize,
    registered: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
    /// The borrower, or 0.
    thread: AtomicUsize,
    /// The borrower's IRQL.
    irql: AtomicU8,
    /// The bump pointer; only the borrower moves it.
    next: AtomicUsize,
    /// Blocks out, plus [`OWNER`] while the reserve itself is alive.
    live: AtomicUsize,
    /// The reserve's memory, released by the slot's last reference.
    buffer: AtomicPtr<PoolBuffer>,
    high_water: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // the initialiser of each array element
const EMPTY: Slot = Slot {
    owned: AtomicBool::new(false),
    seq: AtomicUsize::new(0),
    registered: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    thread: AtomicUsize::new(0),
    irql: AtomicU8::new(0),
    next: AtomicUsize::new(0),
    live: AtomicUsize::new(0),
    buffer: AtomicPtr::new(core::ptr::null_mut()),
    high_water: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Slots registered; while 0, freeing a block needs no look at the table.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);
static MOST_USED: AtomicUsize = AtomicUsize::new(0);
/// One past the highest slot ever claimed: how far a scan looks.
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// A free slot, now ours, counted as registered (so frees look at the table from now on).
fn claim() -> Option<(usize, &'static Slot)> {
    let (index, slot) = TABLE
        .iter()
        .enumerate()
        .find(|(_, s)| s.owned.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
    REGISTERED.fetch_add(1, Ordering::AcqRel);
    HIGH.fetch_max(index + 1, Ordering::AcqRel);
    slot.live.store(OWNER, Ordering::Relaxed);
    slot.high_water.store(0, Ordering::Relaxed);
    Some((index, slot))
}

/// The slots that may be registered now.
fn in_use() -> &'static [Slot] {
    if REGISTERED.load(Ordering::Acquire) == 0 {
        return &[];
    }
    &TABLE[..HIGH.load(Ordering::Acquire)]
}

/// The reserve lent to this thread at this IRQL.
fn borrowed_slot() -> Option<&'static Slot> {
    let slots = in_use();
    if slots.is_empty() {
        return None;
    }
    let here = here();
    slots.iter().find(|s| s.borrowed_by(here))
}

/// The current thread and its IRQL: who a reserve is lent to.
fn here() -> (usize, KIRQL) {
    // SAFETY: reading the IRQL has no preconditions.
    (current_thread(), unsafe { KeGetCurrentIrql() })
}

/// The registered reserve whose memory holds `ptr`.
fn reserve_of(ptr: *mut u8) -> Option<&'static Slot> {
    let at = ptr as usize;
    in_use().iter().find(|s| {
        s.read(|s| {
            s.registered.load(Ordering::Relaxed)
                && s.start.load(Ordering::Relaxed) <= at
                && at < s.end.load(Ordering::Relaxed)
        })
    })
}

impl Slot {
    /// Changes fields under the seqlock. Only the slot's owner calls it.
    fn write(&self, f: impl FnOnce(&Slot)) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        f(self);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// `f` over a consistent view of the fields, or false if they were changing.
    fn read(&self, f: impl FnOnce(&Slot) -> bool) -> bool {
        let before = self.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            return false;
        }
        let answer = f(self);
        fence(Ordering::Acquire);
        answer && self.seq.load(Ordering::Relaxed) == before
    }

    /// Whether `who` is the borrower.
    fn borrowed_by(&self, who: (usize, KIRQL)) -> bool {
        self.thread.load(Ordering::Acquire) == who.0 && self.irql.load(Ordering::Relaxed) == who.1
    }

    /// A block for the borrower, or null if the reserve is spent.
    fn serve(&self, layout: Layout) -> *mut u8 {
        let next = self.next.load(Ordering::Relaxed);
        let start = self.start.load(Ordering::Relaxed);
        let Some(at) = next.checked_next_multiple_of(layout.align()) else { return core::ptr::null_mut() };
        let Some(after) = at.checked_add(layout.size().max(1)) else { return core::ptr::null_mut() };
        if after > self.end.load(Ordering::Relaxed) {
            return core::ptr::null_mut();
        }
        self.live.fetch_add(1, Ordering::AcqRel);
        self.next.store(after, Ordering::Relaxed);
        self.high_water.fetch_max(after - start, Ordering::Relaxed);
        MOST_USED.fetch_max(after - start, Ordering::Relaxed);
        at as *mut u8
    }

    /// A block of this reserve is freed. The borrower takes back the last block it was
    /// served; any other free only counts.
    fn take_back(&self, ptr: *mut u8, layout: Layout) {
        let at = ptr as usize;
        if self.borrowed_by(here()) && self.next.load(Ordering::Relaxed) == at + layout.size().max(1) {
            self.next.store(at, Ordering::Relaxed);
        }
        self.release_one();
    }

    /// Drops a reference: a block, or the reserve itself. The last one releases the
    /// memory and the slot.
    fn release_one(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            let buffer = self.buffer.swap(core::ptr::null_mut(), Ordering::AcqRel);
            self.unregister();
            // SAFETY: the reserve's box (from `into_raw`), released once: by the last
            // reference, after which no block of it is out and no reserve names it.
            drop(unsafe { PoolBox::from_raw(buffer, TAG_OF_BOX) });
        }
    }

    /// The slot describes no reserve any more and may be claimed again.
    fn unregister(&self) {
        self.write(|s| s.registered.store(false, Ordering::Relaxed));
        self.owned.store(false, Ordering::Release);
        REGISTERED.fetch_sub(1, Ordering::AcqRel);
    }
}
