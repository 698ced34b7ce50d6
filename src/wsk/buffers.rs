//! The client's cache of send buffers, shared by every socket's sender (msquic's send-buffer
//! lookaside idea): nonpaged pool whose MDL was built once, when the buffer was made. An
//! idle channel holds none; a busy one borrows what its in-flight budget allows and gives
//! each back when the send carrying it completes. Taking from the cache and giving back
//! allocate nothing. The cache starts with [`PREFILLED`] buffers, what one channel at the
//! largest budget can hold, so a lone channel never allocates on its data path; it grows
//! only when channels together need more, and keeps at most [`CACHED`], freeing the rest.

use alloc::vec::Vec;
use core::ptr::NonNull;

use super::TAG_SEND_BUFFER;
use crate::nt::{
    NTSTATUS, PAGE_SIZE, PoolBuffer, Rundown, STATUS_DELETE_PENDING, STATUS_INSUFFICIENT_RESOURCES, SpinLock,
};

/// Bytes of one send buffer: five whole pages, so that the allocation wastes nothing (a
/// full TLS record, 16,406 bytes, is just over four pages) and smaller records pack into
/// the rest.
pub const SEND_BUFFER_LEN: usize = 5 * PAGE_SIZE;

/// Buffers the cache keeps when they come back (20 MiB); beyond that they are freed.
pub const CACHED: usize = 1024;

/// Buffers made when the client registers (1.4 MiB): a channel at the largest send budget
/// (1 MiB of full records, 64 buffers) plus the partly filled last buffer of each of its
/// sends in flight (the channel checks this at compile time).
pub const PREFILLED: usize = 72;

/// The cache itself: lives in the client's pool-resident registration block.
pub(crate) struct SendBuffers {
    free: SpinLock<Vec<PoolBuffer>>,
    /// One reference per [`BufferLease`]: the client's teardown waits for them.
    leases: Rundown,
}

impl SendBuffers {
    /// A cache of PREFILLED buffers with room reserved for CACHED, so giving back never
    /// allocates. `initialize` must follow once it sits at its final address.
    pub(crate) fn new() -> Result<SendBuffers, NTSTATUS> {
        let mut free = Vec::new();
        free.try_reserve_exact(CACHED).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        for _ in 0..PREFILLED {
            free.push(PoolBuffer::new(SEND_BUFFER_LEN, TAG_SEND_BUFFER)?);
        }
        Ok(SendBuffers { free: SpinLock::new(free), leases: Rundown::new() })
    }

    /// # Safety
    /// Once, at the final address, before any lease.
    pub(crate) unsafe fn initialize(&self) {
        // SAFETY: per the caller.
        unsafe { self.leases.initialize() };
    }

    /// A lease for one sender; `STATUS_DELETE_PENDING` once teardown began.
    pub(crate) fn lease(&self) -> Result<BufferLease, NTSTATUS> {
        if !self.leases.acquire() {
            return Err(STATUS_DELETE_PENDING);
        }
        Ok(BufferLease { cache: NonNull::from(self) })
    }

    /// Refuses new leases and waits for the current ones to end. PASSIVE_LEVEL.
    pub(crate) fn wait_for_leases(&self) {
        self.leases.wait();
    }

    /// Buffers cached now.
    pub(crate) fn cached(&self) -> usize {
        self.free.lock().len()
    }
}

/// A sender's right to borrow from the cache, held for the sender's whole life: the
/// cache outlives every lease (the client's teardown waits for them).
pub struct BufferLease {
    cache: NonNull<SendBuffers>,
}

// SAFETY: the cache it points at is synchronised (spin lock, rundown) and outlives it.
unsafe impl Send for BufferLease {}
// SAFETY: as above; `take` and `give` only go through the lock.
unsafe impl Sync for BufferLease {}

impl BufferLease {
    fn cache(&self) -> &SendBuffers {
        // SAFETY: the lease holds rundown protection on the cache, whose owner waits for
        // it before freeing the cache.
        unsafe { self.cache.as_ref() }
    }

    /// A buffer of SEND_BUFFER_LEN bytes whose MDL describes all of it: from the cache,
    /// or newly allocated when the cache is empty (`None` when that fails).
    /// IRQL <= DISPATCH_LEVEL.
    pub fn take(&self) -> Option<PoolBuffer> {
        let cached = self.cache().free.lock().pop();
        let mut buffer = match cached {
            Some(b) => b,
            None => PoolBuffer::new(SEND_BUFFER_LEN, TAG_SEND_BUFFER).ok()?,
        };
        // SAFETY: a buffer no request carries (it was free, or is new).
        unsafe {
            buffer.set_next(None);
            buffer.set_mdl_len(SEND_BUFFER_LEN);
        }
        Some(buffer)
    }

    /// Gives a buffer back once no request carries it; beyond CACHED it is freed.
    /// It may hold ciphertext only: callers wipe any plaintext first.
    /// IRQL <= DISPATCH_LEVEL.
    pub fn give(&self, buffer: PoolBuffer) {
        let spare = {
            let mut free = self.cache().free.lock();
            if free.len() < free.capacity() {
                free.push(buffer);
                None
            } else {
                Some(buffer)
            }
        };
        // Freed (and wiped) outside the lock.
        drop(spare);
    }
}

impl Drop for BufferLease {
    fn drop(&mut self) {
        self.cache().leases.release();
    }
}
