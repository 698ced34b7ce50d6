//! Owners of kernel synchronisation objects: a spin lock that owns what it protects
//! (KeAcquireSpinLockRaiseToDpc on lock, KeReleaseSpinLock back to the caller's IRQL when
//! the guard drops), and a notification event.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::{
    EX_RUNDOWN_REF, ExAcquireRundownProtection, ExInitializeRundownProtection, ExReleaseRundownProtection,
    ExWaitForRundownProtectionRelease, Executive, FALSE, KEVENT, KIRQL, KSPIN_LOCK,
    KeAcquireSpinLockRaiseToDpc, KeClearEvent, KeInitializeEvent, KeReleaseSpinLock, KeSetEvent,
    KeWaitForSingleObject, KernelMode, NTSTATUS, NotificationEvent, STATUS_INVALID_DEVICE_STATE,
    relative_timeout_ms,
};

pub struct SpinLock<T> {
    lock: UnsafeCell<KSPIN_LOCK>,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises every access to `value`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as for a Mutex: moving the lock moves the value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        // KeInitializeSpinLock stores zero: a zero KSPIN_LOCK is an initialised, free lock.
        SpinLock { lock: UnsafeCell::new(0), value: UnsafeCell::new(value) }
    }

    /// Raises to DISPATCH_LEVEL and takes the lock. IRQL <= DISPATCH_LEVEL. Never hold it
    /// across a call that can complete a request inline (WskSend, IoCompleteRequest): the
    /// completion may come back for the same lock.
    pub fn lock(&self) -> Guard<'_, T> {
        // SAFETY: our initialised lock; the guard releases it once.
        let irql = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        Guard { owner: self, irql, _here: core::marker::PhantomData }
    }
}

pub struct Guard<'a, T> {
    owner: &'a SpinLock<T>,
    irql: KIRQL,
    /// Released on the processor that took it (it restores that processor's IRQL): !Send.
    _here: core::marker::PhantomData<*const ()>,
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

/// A notification event. It must sit at its final address (pool, or a structure in pool)
/// before `initialize`, and stay there: the kernel links waiters through it. Until then
/// `set` and `clear` do nothing and `wait` fails.
pub struct Event {
    event: UnsafeCell<KEVENT>,
    ready: AtomicBool,
}

// SAFETY: the Ke* event functions synchronise every access; `ready` is atomic.
unsafe impl Sync for Event {}
// SAFETY: as above.
unsafe impl Send for Event {}

impl Event {
    /// Storage for an event; `initialize` makes it one.
    pub const fn new() -> Event {
        // SAFETY: an all-zero KEVENT is plain storage until KeInitializeEvent.
        Event { event: UnsafeCell::new(unsafe { core::mem::zeroed() }), ready: AtomicBool::new(false) }
    }

    /// KeInitializeEvent, not signalled.
    ///
    /// # Safety
    /// Once, at the event's final address, which it keeps from now on.
    pub unsafe fn initialize(&self) {
        // SAFETY: per the caller.
        unsafe { KeInitializeEvent(self.event.get(), NotificationEvent, FALSE) };
        self.ready.store(true, Ordering::Release);
    }

    /// KeSetEvent. IRQL <= DISPATCH_LEVEL.
    pub fn set(&self) {
        if self.ready.load(Ordering::Acquire) {
            // SAFETY: initialised (seen above), at its final address.
            unsafe { KeSetEvent(self.event.get(), 0, FALSE) };
        }
    }

    /// KeClearEvent. IRQL <= DISPATCH_LEVEL.
    pub fn clear(&self) {
        if self.ready.load(Ordering::Acquire) {
            // SAFETY: as for `set`.
            unsafe { KeClearEvent(self.event.get()) };
        }
    }

    /// Waits up to `timeout_ms` (PASSIVE_LEVEL): STATUS_SUCCESS when signalled,
    /// STATUS_TIMEOUT when the time ran out, STATUS_INVALID_DEVICE_STATE before
    /// `initialize`.
    pub fn wait(&self, timeout_ms: u32) -> NTSTATUS {
        if !self.ready.load(Ordering::Acquire) {
            return STATUS_INVALID_DEVICE_STATE;
        }
        let timeout = relative_timeout_ms(timeout_ms);
        // SAFETY: as for `set`; a kernel-mode wait at PASSIVE_LEVEL (the caller's).
        unsafe { KeWaitForSingleObject(self.event.get().cast(), Executive, KernelMode, FALSE, &timeout) }
    }
}

impl Event {
    /// Makes this event the way `irp` comes back: its completion routine (in the next
    /// stack location) becomes [`set_event_on_completion`] with this event, invoked on
    /// success, error and cancel alike.
    ///
    /// # Safety
    /// `irp` is the caller's, with a next stack location; this event is initialised and
    /// stays put until the routine has set it.
    pub unsafe fn receive_completion_of(&self, irp: *mut crate::IRP) {
        let context = self as *const Event as crate::PVOID;
        // SAFETY: per the caller.
        unsafe {
            crate::IoSetCompletionRoutine(irp, Some(set_event_on_completion), context, true, true, true)
        };
    }
}

/// A completion routine that hands the IRP back to its issuer: sets the [`Event`] its
/// context points at and returns STATUS_MORE_PROCESSING_REQUIRED (the issuer, waiting on
/// the event, owns the IRP again and frees or reuses it).
///
/// # Safety
/// `context` is an initialised `Event` that stays put until it has been set.
pub unsafe extern "system" fn set_event_on_completion(
    _device: *mut crate::DEVICE_OBJECT,
    _irp: *mut crate::IRP,
    context: crate::PVOID,
) -> NTSTATUS {
    // SAFETY: per the contract.
    unsafe { (*context.cast::<Event>()).set() };
    crate::STATUS_MORE_PROCESSING_REQUIRED
}

impl Default for Event {
    fn default() -> Self {
        Event::new()
    }
}

/// Rundown protection (EX_RUNDOWN_REF): calls acquire it for as long as they run; the
/// owner's teardown waits for every holder and refuses new ones. Like [`Event`], it must
/// sit at its final address before `initialize`.
pub struct Rundown {
    rundown: UnsafeCell<EX_RUNDOWN_REF>,
}

// SAFETY: the Ex*Rundown* functions synchronise every access.
unsafe impl Sync for Rundown {}
// SAFETY: as above.
unsafe impl Send for Rundown {}

impl Rundown {
    pub const fn new() -> Rundown {
        // SAFETY: zero is what ExInitializeRundownProtection stores.
        Rundown { rundown: UnsafeCell::new(unsafe { core::mem::zeroed() }) }
    }

    /// ExInitializeRundownProtection.
    ///
    /// # Safety
    /// Once, at the final address, before any other call.
    pub unsafe fn initialize(&self) {
        // SAFETY: per the caller.
        unsafe { ExInitializeRundownProtection(self.rundown.get()) };
    }

    /// ExAcquireRundownProtection: `false` once teardown has begun. IRQL <= DISPATCH_LEVEL.
    pub fn acquire(&self) -> bool {
        // SAFETY: initialised per `initialize`'s contract.
        unsafe { ExAcquireRundownProtection(self.rundown.get()) != 0 }
    }

    /// ExReleaseRundownProtection, once per successful `acquire`.
    pub fn release(&self) {
        // SAFETY: as for `acquire`.
        unsafe { ExReleaseRundownProtection(self.rundown.get()) };
    }

    /// ExWaitForRundownProtectionRelease: refuses new holders and waits for the current
    /// ones. PASSIVE_LEVEL (APC_LEVEL at most).
    pub fn wait(&self) {
        // SAFETY: as for `acquire`.
        unsafe { ExWaitForRundownProtectionRelease(self.rundown.get()) };
    }
}

impl Default for Rundown {
    fn default() -> Self {
        Rundown::new()
    }
}
