//! Owners of nonpaged pool: a typed box, and a byte buffer with its MDL built once.
//!
//! Both free what they own exactly once, on drop, and report allocation failure as
//! STATUS_INSUFFICIENT_RESOURCES (never a panic). A `PoolBuffer` is zeroed before it is
//! released, because it may have held plaintext or key material.

use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use crate::{
    ExAllocatePool2, ExFreePoolWithTag, FALSE, IoAllocateMdl, IoFreeMdl, MDL, MmBuildMdlForNonPagedPool,
    NTSTATUS, POOL_FLAG_NON_PAGED, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
};

/// The alignment ExAllocatePool2 guarantees on x64.
pub const POOL_ALIGNMENT: usize = 16;

/// A `T` in nonpaged pool, at an address that never changes: what an IRP's completion
/// context or a WSK registration block needs.
pub struct PoolBox<T> {
    ptr: NonNull<T>,
    tag: u32,
}

// SAFETY: PoolBox owns its T exactly like Box does.
unsafe impl<T: Send> Send for PoolBox<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for PoolBox<T> {}

impl<T> PoolBox<T> {
    const FITS_POOL_ALIGNMENT: () = assert!(align_of::<T>() <= POOL_ALIGNMENT);

    /// Moves `value` into nonpaged pool tagged `tag`. IRQL <= DISPATCH_LEVEL.
    pub fn new(tag: u32, value: T) -> Result<Self, NTSTATUS> {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS_POOL_ALIGNMENT;
        // SAFETY: a plain allocation call; the result is checked before use.
        let p = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, size_of::<T>().max(1), tag) };
        let ptr = NonNull::new(p.cast::<T>()).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
        // SAFETY: fresh, suitably aligned (checked at compile time) allocation of size_of::<T>().
        unsafe { ptr.as_ptr().write(value) };
        Ok(PoolBox { ptr, tag })
    }

    pub fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// Gives up ownership: the value stays in pool until [`PoolBox::from_raw`] takes it back.
    pub fn into_raw(self) -> *mut T {
        let ptr = self.ptr.as_ptr();
        core::mem::forget(self);
        ptr
    }

    /// Takes back what [`PoolBox::into_raw`] gave up.
    ///
    /// # Safety
    /// `ptr` came from `into_raw` of a box with this `tag`, and is taken back once.
    pub unsafe fn from_raw(ptr: *mut T, tag: u32) -> PoolBox<T> {
        // SAFETY: per the caller, a live box's pointer: never null.
        PoolBox { ptr: unsafe { NonNull::new_unchecked(ptr) }, tag }
    }
}

impl<T> core::ops::Deref for PoolBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: owned, initialised, live until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> core::ops::DerefMut for PoolBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: owned, initialised, live until drop; &mut self gives exclusivity.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for PoolBox<T> {
    fn drop(&mut self) {
        // SAFETY: we own the value and the allocation; each is released once.
        unsafe {
            core::ptr::drop_in_place(self.ptr.as_ptr());
            ExFreePoolWithTag(self.ptr.as_ptr().cast(), self.tag);
        }
    }
}

/// `len` bytes of nonpaged pool with an MDL that describes them, built once when the
/// buffer is made (msquic's send-buffer idea): sending or receiving through it allocates
/// nothing.
pub struct PoolBuffer {
    data: NonNull<u8>,
    len: usize,
    mdl: NonNull<MDL>,
    tag: u32,
}

// SAFETY: the buffer is plain owned memory; the MDL is private to it.
unsafe impl Send for PoolBuffer {}
// SAFETY: through `&PoolBuffer` safe code can only read; writes need `&mut` or go through
// the raw pointers (`as_ptr`, `mdl`), whose users synchronise them (unsafe code).
unsafe impl Sync for PoolBuffer {}

impl PoolBuffer {
    /// Allocates `len` (1..=u32::MAX) zeroed bytes and builds their MDL.
    /// IRQL <= DISPATCH_LEVEL.
    pub fn new(len: usize, tag: u32) -> Result<Self, NTSTATUS> {
        let Ok(byte_count) = u32::try_from(len) else {
            return Err(STATUS_INVALID_PARAMETER);
        };
        if len == 0 {
            return Err(STATUS_INVALID_PARAMETER);
        }
        // SAFETY: allocation call; result checked.
        let p = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, len, tag) };
        let data = NonNull::new(p.cast::<u8>()).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
        // SAFETY: describes exactly the allocation above; NULL IRP links it nowhere.
        let mdl = unsafe { IoAllocateMdl(p, byte_count, FALSE, FALSE, core::ptr::null_mut()) };
        let Some(mdl) = NonNull::new(mdl) else {
            // SAFETY: freeing the allocation made above, once.
            unsafe { ExFreePoolWithTag(p, tag) };
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        };
        // SAFETY: a fresh MDL over resident nonpaged pool.
        unsafe { MmBuildMdlForNonPagedPool(mdl.as_ptr()) };
        Ok(PoolBuffer { data, len, mdl, tag })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The MDL, for a WSK_BUF or a chain. Its `Next` belongs to whoever chains it.
    pub fn mdl(&self) -> *mut MDL {
        self.mdl.as_ptr()
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.data.as_ptr()
    }

    /// Chains `next`'s MDL after this buffer's (`None` ends the chain here).
    ///
    /// # Safety
    /// No request may be carrying either MDL.
    pub unsafe fn set_next(&mut self, next: Option<&PoolBuffer>) {
        let next = next.map_or(core::ptr::null_mut(), PoolBuffer::mdl);
        // SAFETY: our own MDL, not in flight per the caller.
        unsafe { (*self.mdl.as_ptr()).Next = next };
    }

    /// Makes the MDL describe only the first `len` bytes (at most the buffer), as
    /// NdisAdjustMdlLength does: a chain of partly filled buffers then carries exactly
    /// their contents.
    ///
    /// # Safety
    /// No request may be carrying the MDL.
    pub unsafe fn set_mdl_len(&mut self, len: usize) {
        let len = len.min(self.len) as u32;
        // SAFETY: our own MDL, not in flight per the caller; shrinking ByteCount keeps it
        // within the pages it was built for.
        unsafe { (*self.mdl.as_ptr()).ByteCount = len };
    }

    /// The bytes. The caller must not hold this across a request that writes them.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by self.
        unsafe { core::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusive through &mut self.
        unsafe { core::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
    }

    /// Chains `buffers` in order through their MDLs' `Next` and ends the chain. Returns
    /// the head MDL (NULL for an empty slice).
    ///
    /// # Safety
    /// No request may be carrying any of these MDLs.
    pub unsafe fn chain(buffers: &[&PoolBuffer]) -> *mut MDL {
        for (i, b) in buffers.iter().enumerate() {
            let next = buffers.get(i + 1).map_or(core::ptr::null_mut(), |n| n.mdl());
            // SAFETY: our own MDL, not in flight per the caller.
            unsafe { (*b.mdl()).Next = next };
        }
        buffers.first().map_or(core::ptr::null_mut(), |b| b.mdl())
    }
}

impl Drop for PoolBuffer {
    fn drop(&mut self) {
        // SAFETY: we own the bytes and the MDL. The zeroing is a plain memset (a volatile
        // loop costs a cycle a byte: 100 µs for a heap reserve), kept from being optimised
        // away by the fence and by handing the pointer to black_box; then each is freed once.
        unsafe {
            self.data.as_ptr().write_bytes(0, self.len);
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
            core::hint::black_box(self.data.as_ptr());
            IoFreeMdl(self.mdl.as_ptr());
            ExFreePoolWithTag(self.data.as_ptr().cast(), self.tag);
        }
    }
}
