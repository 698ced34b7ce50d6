//! A spin lock that owns what it protects: KeAcquireSpinLockRaiseToDpc on lock,
//! KeReleaseSpinLock (back to the caller's IRQL) when the guard drops.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use crate::nt::{KIRQL, KSPIN_LOCK, KeAcquireSpinLockRaiseToDpc, KeReleaseSpinLock};

pub(crate) struct SpinLock<T> {
    lock: UnsafeCell<KSPIN_LOCK>,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises every access to `value`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as for a Mutex: moving the lock moves the value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) fn new(value: T) -> Self {
        // KeInitializeSpinLock stores zero: a zero KSPIN_LOCK is an initialised, free lock.
        SpinLock { lock: UnsafeCell::new(0), value: UnsafeCell::new(value) }
    }

    /// Raises to DISPATCH_LEVEL and takes the lock. IRQL <= DISPATCH_LEVEL. Never hold it
    /// across a call that can complete a request inline (WskSend, IoCompleteRequest): the
    /// completion may come back for the same lock.
    pub(crate) fn lock(&self) -> Guard<'_, T> {
        // SAFETY: our initialised lock; the guard releases it once.
        let irql = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        Guard { owner: self, irql }
    }
}

pub(crate) struct Guard<'a, T> {
    owner: &'a SpinLock<T>,
    irql: KIRQL,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held for the guard's life.
        unsafe { &*self.owner.value.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held for the guard's life, and the guard is unique.
        unsafe { &mut *self.owner.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: releasing the lock this guard took, to the IRQL it was taken at.
        unsafe { KeReleaseSpinLock(self.owner.lock.get(), self.irql) };
    }
}
