//! A value whose bytes are wiped after it is dropped.

use alloc::vec::Vec;
use core::mem::{ManuallyDrop, size_of};
use core::ops::{Deref, DerefMut};

/// Holds a `T` (a key schedule, a traffic secret) and, when dropped, drops it and then
/// overwrites its bytes with zeros using volatile writes, so the wipe is not optimised
/// away. For types with no zeroizing drop of their own, such as ring's expanded AEAD keys.
///
/// Only the bytes of `T` itself are wiped: `T` must not own secrets elsewhere (no heap).
/// Moving a `Wiped` moves the bytes; keep it where it was first placed.
pub struct Wiped<T>(ManuallyDrop<T>);

impl<T> Wiped<T> {
    pub fn new(value: T) -> Self {
        Wiped(ManuallyDrop::new(value))
    }
}

impl<T> Deref for Wiped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Wiped<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> Drop for Wiped<T> {
    fn drop(&mut self) {
        let bytes = (&mut *self.0 as *mut T).cast::<u8>();
        // SAFETY: the value is dropped exactly once, here, and never used again; afterwards
        // its storage is plain bytes we own until `self` goes away.
        unsafe {
            ManuallyDrop::drop(&mut self.0);
            for i in 0..size_of::<T>() {
                bytes.add(i).write_volatile(0);
            }
        }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// Overwrites `bytes` with zeros in a way the optimiser keeps: for plaintext and secrets in
/// ordinary buffers before they are released.
pub fn wipe(bytes: &mut [u8]) {
    zeroize::Zeroize::zeroize(bytes);
}

/// A global allocator that wipes every block before it gives it back to `A`. Drop-time
/// zeroizing cannot reach the copies a move leaves behind: rustls moves its key schedule
/// from one boxed handshake state to the next, and the old box is freed holding the
/// handshake traffic secrets (seen by tests/secrets.rs). Wiping at free catches every
/// such copy. Only the connect and close paths free heap blocks; the data path does not.
pub struct WipeOnFree<A>(pub A);

// SAFETY: every call goes to `A` unchanged; `dealloc` first overwrites the block it was
// given, which is still the caller's (valid for `layout.size()` bytes) until `A` frees it.
unsafe impl<A: core::alloc::GlobalAlloc> core::alloc::GlobalAlloc for WipeOnFree<A> {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        // A plain memset (zeroize's volatile byte loop costs a cycle a byte), kept from
        // being optimised away by handing the pointer to black_box after it.
        // SAFETY: the caller's live block of `layout.size()` bytes.
        unsafe { ptr.write_bytes(0, layout.size()) };
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        core::hint::black_box(ptr);
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    // `realloc` is GlobalAlloc's own: a new block, a copy, and the old one through
    // `dealloc`, so a block that grows leaves no copy behind either.
}

/// An allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory;

/// Bytes on the heap that are wiped whenever they are released: when dropped, and the old
/// allocation when growing moves them. For plaintext and private keys.
#[derive(Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new() -> SecretBytes {
        SecretBytes(Vec::new())
    }

    /// Appends `data`; `Err` if memory ran out (nothing was appended).
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<(), OutOfMemory> {
        if self.0.capacity() - self.0.len() < data.len() {
            let needed = self.0.len().checked_add(data.len()).ok_or(OutOfMemory)?;
            let mut grown = Vec::new();
            grown.try_reserve_exact(needed.max(2 * self.0.capacity())).map_err(|_| OutOfMemory)?;
            grown.extend_from_slice(&self.0);
            wipe(&mut self.0);
            self.0 = grown;
        }
        self.0.extend_from_slice(data);
        Ok(())
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&[u8]> for SecretBytes {
    /// A copy of `bytes` (which the caller should wipe if they matter). Infallible: for
    /// configuration, not the data path.
    fn from(bytes: &[u8]) -> SecretBytes {
        SecretBytes(bytes.to_vec())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}
