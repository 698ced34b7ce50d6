//! Channel handles, and the table of slots behind them.
//!
//! A consumer's `PWSKTLS_CHANNEL` is the address of a slot with the low seven bits of the
//! slot's generation in its low bits (slots are 128-byte aligned). Slots are type-stable:
//! made in chunks on demand, reused, and freed only with the provider, so following a
//! closed or stale handle reads a slot, never freed memory, and the generation refuses it
//! (STATUS_INVALID_HANDLE) unless the slot has been reused a multiple of 128 times since.
//! A handle that never came from Connect is undefined, as a forged WSK_SOCKET is.
//!
//! Each slot's state, its count of calls in progress and its generation share one atomic
//! word, so Send, Receive and Query take and drop a reference without a lock; only
//! reserving and freeing slots take the table's spin lock. A slot also owns the two work
//! items its Disconnect and Close run on, made with the slot, so neither call can fail for
//! want of memory.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crate::channel::Channel;
use crate::nt::{
    DEVICE_OBJECT, Event, IRP, NTSTATUS, PoolBox, STATUS_DEVICE_REMOVED, STATUS_FILE_FORCED_CLOSED,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_HANDLE, WSKTLS_CHANNEL, WorkItem, pool_tag,
};

const TAG_CHANNEL_BOX: u32 = pool_tag(b"WtCb");

/// Slots per chunk.
const CHUNK: usize = 32;
/// The handle bits that carry the generation.
const TAG_MASK: usize = 127;

/// Slot states, the low three bits of the word.
const FREE: u64 = 0;
/// Reserved by a Connect in progress; its handle is not out yet.
const CONNECTING: u64 = 1;
const OPEN: u64 = 2;
/// Ended because the device went away: calls get STATUS_FILE_FORCED_CLOSED until the
/// consumer closes the handle.
const DEAD: u64 = 3;
/// Close in progress: the handle is no longer valid.
const CLOSING: u64 = 4;
const STATE: u64 = 0x7;
/// One reference (bits 3..32): a call in progress, or a Disconnect until it completes.
const REF: u64 = 1 << 3;
const REFS: u64 = 0xFFFF_FFF8;
const GENERATION_SHIFT: u32 = 32;

fn state(word: u64) -> u64 {
    word & STATE
}

fn refs(word: u64) -> u64 {
    (word & REFS) >> 3
}

fn tag_of(word: u64) -> usize {
    (word >> GENERATION_SHIFT) as usize & TAG_MASK
}

#[repr(C, align(128))]
pub(crate) struct Slot {
    word: AtomicU64,
    /// The channel (a PoolBox's raw pointer) while it exists. Set by the connect while
    /// CONNECTING, read by reference holders, claimed (swapped out) by whoever ends it.
    channel: AtomicPtr<Channel>,
    /// The IRP of the Close or Disconnect in progress, for its work item.
    pub(crate) close_irp: AtomicPtr<IRP>,
    pub(crate) disconnect_irp: AtomicPtr<IRP>,
    pub(crate) close_work: WorkItem,
    pub(crate) disconnect_work: WorkItem,
    /// Set when the last reference leaves a slot that is no longer OPEN.
    idle: Event,
    index: u32,
    provider: *const super::provider::Provider,
    device: *mut DEVICE_OBJECT,
}

// SAFETY: `word` orders every access to the channel (see its comment); the IRP pointers
// are atomics; the rest is immutable once the chunk is made.
unsafe impl Sync for Slot {}
// SAFETY: as above.
unsafe impl Send for Slot {}

impl Slot {
    fn handle(&self) -> *mut WSKTLS_CHANNEL {
        let tag = tag_of(self.word.load(Ordering::Acquire));
        (self as *const Slot as usize | tag) as *mut WSKTLS_CHANNEL
    }

    /// The provider that owns this slot's table.
    pub(crate) fn provider(&self) -> &super::provider::Provider {
        // SAFETY: set when the chunk was made; the provider outlives its table.
        unsafe { &*self.provider }
    }

    /// The device object the slot's work items were made with.
    pub(crate) fn device(&self) -> *mut DEVICE_OBJECT {
        self.device
    }

    /// One more reference, whatever the state: for the owner of a CLOSING or DEAD slot,
    /// which must reach the channel without racing whoever ends it.
    fn pin(&self) -> SlotRef<'_> {
        self.word.fetch_add(REF, Ordering::AcqRel);
        SlotRef { slot: self }
    }

    fn channel(&self) -> Option<&Channel> {
        // SAFETY: read under a reference: nobody frees the channel while one is held.
        unsafe { self.channel.load(Ordering::Acquire).as_ref() }
    }

    /// Ends the channel if it is still there: fails it with `status` (so a Disconnect
    /// waiting on it returns), waits out the references, then closes and frees it.
    /// Whoever calls this first does the work. PASSIVE_LEVEL.
    pub(crate) fn end(&self, status: NTSTATUS) {
        {
            let pinned = self.pin();
            if let Some(channel) = pinned.slot.channel() {
                channel.abort(status);
            }
        }
        self.wait_idle();
        let claimed = self.channel.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !claimed.is_null() {
            // SAFETY: claimed once (the swap), from `publish`'s into_raw; no reference left.
            drop(unsafe { PoolBox::from_raw(claimed, TAG_CHANNEL_BOX) });
        }
    }

    /// Waits (PASSIVE_LEVEL) until no reference is held. The slot has left OPEN, so no
    /// new call can take one; a Disconnect in progress keeps its own until it completes.
    fn wait_idle(&self) {
        loop {
            // Cleared before the check: a release between the two still wakes us.
            self.idle.clear();
            if refs(self.word.load(Ordering::Acquire)) == 0 {
                return;
            }
            let _ = self.idle.wait(100);
        }
    }
}

/// A reference to an open channel, for one call (or one Disconnect).
pub(crate) struct SlotRef<'a> {
    slot: &'a Slot,
}

impl<'a> SlotRef<'a> {
    pub(crate) fn slot(&self) -> &'a Slot {
        self.slot
    }

    /// Keeps the reference past this call (a Disconnect's work item gives it back with
    /// [`SlotRef::adopt`]).
    pub(crate) fn keep(self) -> &'a Slot {
        let slot = self.slot;
        core::mem::forget(self);
        slot
    }

    /// Takes back a reference that [`SlotRef::keep`] kept.
    ///
    /// # Safety
    /// Once per `keep`.
    pub(crate) unsafe fn adopt(slot: &'a Slot) -> SlotRef<'a> {
        SlotRef { slot }
    }

    /// The channel. Present: the slot was OPEN when the reference was taken, and ending a
    /// channel waits for every reference to go first.
    pub(crate) fn channel(&self) -> Result<&Channel, NTSTATUS> {
        self.slot.channel().ok_or(STATUS_FILE_FORCED_CLOSED)
    }
}

impl Drop for SlotRef<'_> {
    fn drop(&mut self) {
        let word = self.slot.word.fetch_sub(REF, Ordering::AcqRel) - REF;
        if refs(word) == 0 && state(word) != OPEN {
            self.slot.idle.set();
        }
    }
}

/// The slot a handle names, and the generation tag the handle carries.
///
/// # Safety
/// `handle` is null or came from this driver's Connect, and its consumer still holds the
/// file object it found the provider through (so the table is alive).
unsafe fn lookup<'a>(handle: *mut WSKTLS_CHANNEL) -> Result<(&'a Slot, usize), NTSTATUS> {
    let value = handle as usize;
    // SAFETY: per the contract, a live slot's address with a tag, or null.
    let slot = unsafe { ((value & !TAG_MASK) as *const Slot).as_ref() }.ok_or(STATUS_INVALID_HANDLE)?;
    Ok((slot, value & TAG_MASK))
}

/// Takes a reference for one call: STATUS_INVALID_HANDLE for a closed, closing or stale
/// handle, STATUS_FILE_FORCED_CLOSED for a channel the device's removal ended.
///
/// # Safety
/// As for [`lookup`].
pub(crate) unsafe fn acquire<'a>(handle: *mut WSKTLS_CHANNEL) -> Result<SlotRef<'a>, NTSTATUS> {
    // SAFETY: forwarded contract.
    let (slot, tag) = unsafe { lookup(handle)? };
    let mut word = slot.word.load(Ordering::Acquire);
    loop {
        if tag_of(word) != tag {
            return Err(STATUS_INVALID_HANDLE);
        }
        match state(word) {
            OPEN => {}
            DEAD => return Err(STATUS_FILE_FORCED_CLOSED),
            _ => return Err(STATUS_INVALID_HANDLE),
        }
        match slot.word.compare_exchange_weak(word, word + REF, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(SlotRef { slot }),
            Err(now) => word = now,
        }
    }
}

/// Starts a Close: an OPEN or DEAD slot becomes CLOSING (its handle is now invalid) and
/// is returned for the close work; anything else is STATUS_INVALID_HANDLE (a second
/// Close among them).
///
/// # Safety
/// As for [`lookup`].
pub(crate) unsafe fn begin_close<'a>(handle: *mut WSKTLS_CHANNEL) -> Result<&'a Slot, NTSTATUS> {
    // SAFETY: forwarded contract.
    let (slot, tag) = unsafe { lookup(handle)? };
    let mut word = slot.word.load(Ordering::Acquire);
    loop {
        if tag_of(word) != tag || !matches!(state(word), OPEN | DEAD) {
            return Err(STATUS_INVALID_HANDLE);
        }
        let closing = word - state(word) + CLOSING;
        match slot.word.compare_exchange_weak(word, closing, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(slot),
            Err(now) => word = now,
        }
    }
}

/// Every slot, in chunks that never move.
pub(crate) struct Table {
    provider: *const super::provider::Provider,
    device: *mut DEVICE_OBJECT,
    /// Each exactly CHUNK slots, never grown: slots do not move. (The global allocator
    /// honours the slots' 128-byte alignment; pool blocks only promise 16.)
    chunks: Vec<Vec<Slot>>,
    free: Vec<u32>,
    /// Slots made so far.
    made: u32,
    limit: u32,
    /// Slots not FREE: channels connecting, open, dead or closing.
    live: u32,
    removed: bool,
}

// SAFETY: slots are Send; the device pointer is only handed to IoAllocateWorkItem.
unsafe impl Send for Table {}

impl Table {
    /// A table of at most `limit` channels whose work items run with `device`. Room for its bookkeeping is reserved now: opening a channel
    /// later only allocates chunks.
    pub(crate) fn new(
        provider: *const super::provider::Provider,
        device: *mut DEVICE_OBJECT,
        limit: u32,
    ) -> Result<Table, NTSTATUS> {
        let limit = limit.max(1);
        let chunks = (limit as usize).div_ceil(CHUNK);
        let mut table = Table {
            provider,
            device,
            chunks: Vec::new(),
            free: Vec::new(),
            made: 0,
            limit,
            live: 0,
            removed: false,
        };
        table.chunks.try_reserve_exact(chunks).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        table.free.try_reserve_exact(limit as usize).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        Ok(table)
    }

    pub(crate) fn live(&self) -> u32 {
        self.live
    }

    fn slot(&self, index: u32) -> &Slot {
        &self.chunks[index as usize / CHUNK][index as usize % CHUNK]
    }

    /// Reserves a slot for a Connect: STATUS_DEVICE_REMOVED once the device is going,
    /// STATUS_INSUFFICIENT_RESOURCES when the table is full or a chunk cannot be made.
    pub(crate) fn reserve(&mut self) -> Result<&Slot, NTSTATUS> {
        if self.removed {
            return Err(STATUS_DEVICE_REMOVED);
        }
        let index = match self.free.pop() {
            Some(index) => index,
            None => self.make_slot()?,
        };
        self.live += 1;
        let slot = self.slot(index);
        let word = slot.word.load(Ordering::Acquire);
        slot.word.store(word - state(word) + CONNECTING, Ordering::Release);
        Ok(slot)
    }

    fn make_slot(&mut self) -> Result<u32, NTSTATUS> {
        if self.made >= self.limit {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        if self.made as usize % CHUNK == 0 {
            self.make_chunk()?;
        }
        self.made += 1;
        Ok(self.made - 1)
    }

    fn make_chunk(&mut self) -> Result<(), NTSTATUS> {
        let base = self.made;
        let mut works = Vec::new();
        works.try_reserve_exact(2 * CHUNK).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        for _ in 0..2 * CHUNK {
            // SAFETY: the provider's device, which outlives its table.
            works.push(unsafe { WorkItem::new(self.device)? });
        }
        let mut works = works.into_iter();
        let mut next_work = || works.next().ok_or(STATUS_INSUFFICIENT_RESOURCES);
        let mut slots = Vec::new();
        slots.try_reserve_exact(CHUNK).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        for i in 0..CHUNK {
            slots.push(Slot {
                // Generation 1: a handle is never just an address.
                word: AtomicU64::new(1 << GENERATION_SHIFT),
                channel: AtomicPtr::new(core::ptr::null_mut()),
                close_irp: AtomicPtr::new(core::ptr::null_mut()),
                disconnect_irp: AtomicPtr::new(core::ptr::null_mut()),
                close_work: next_work()?,
                disconnect_work: next_work()?,
                idle: Event::new(),
                index: base + i as u32,
                provider: self.provider,
                device: self.device,
            });
        }
        for slot in slots.iter() {
            // SAFETY: the slots sit where they stay until the table drops (the vector
            // is never grown).
            unsafe { slot.idle.initialize() };
        }
        self.chunks.push(slots);
        Ok(())
    }

    /// Opens a reserved slot with its channel and returns the consumer's handle; gives the
    /// channel back when the device is being removed (the caller closes it).
    pub(crate) fn publish(
        &mut self,
        slot: &Slot,
        channel: PoolBox<Channel>,
    ) -> Result<*mut WSKTLS_CHANNEL, PoolBox<Channel>> {
        if self.removed {
            return Err(channel);
        }
        slot.channel.store(channel.into_raw(), Ordering::Release);
        slot.word.fetch_add(OPEN - CONNECTING, Ordering::AcqRel);
        Ok(slot.handle())
    }

    /// Frees a slot whose Connect failed or whose Close has finished: the next generation,
    /// so every handle to it is stale.
    pub(crate) fn release(&mut self, slot: &Slot) {
        let word = slot.word.load(Ordering::Acquire);
        let next = ((word >> GENERATION_SHIFT) + 1) << GENERATION_SHIFT;
        slot.word.store(next | FREE, Ordering::Release);
        self.free.push(slot.index);
        self.live -= 1;
    }

    /// Marks every open channel DEAD (the device is going away) and refuses new ones; the
    /// caller then ends each with [`Table::dead_from`] and [`Slot::end`].
    pub(crate) fn remove_all(&mut self) {
        self.removed = true;
        for i in 0..self.made {
            let word = self.slot(i).word.load(Ordering::Acquire);
            if state(word) == OPEN {
                self.slot(i).word.fetch_add(DEAD - OPEN, Ordering::AcqRel);
            }
        }
    }

    /// Whether a Connect or a Close is still running on some slot.
    pub(crate) fn closing(&self) -> bool {
        (0..self.made)
            .any(|i| matches!(state(self.slot(i).word.load(Ordering::Acquire)), CONNECTING | CLOSING))
    }

    /// The first slot from index `from` on that still holds a channel, with its index.
    pub(crate) fn holding_from(&self, from: u32) -> Option<(u32, &Slot)> {
        (from..self.made)
            .map(|i| (i, self.slot(i)))
            .find(|(_, s)| !s.channel.load(Ordering::Acquire).is_null())
    }
}

/// Moves a connected channel into pool for its slot.
pub(crate) fn boxed(channel: Channel) -> Result<PoolBox<Channel>, NTSTATUS> {
    PoolBox::new(TAG_CHANNEL_BOX, channel)
}
