//! The kernel core: IRQL, spin locks, dispatcher events and waits.
//!
//! On x64 Windows the IRQL lives in CR8 and `KeGetCurrentIrql`, `KeRaiseIrql` and
//! `KeLowerIrql` are wdm.h inlines over it, as `KeGetCurrentThread` is over gs; ntsim has
//! neither, so host builds import them instead. Both present the same functions to the
//! driver.

use core::ffi::c_void;

use crate::{BOOLEAN, LARGE_INTEGER, LIST_ENTRY, NTSTATUS, PVOID};

pub type KIRQL = u8;
pub const PASSIVE_LEVEL: KIRQL = 0;
pub const APC_LEVEL: KIRQL = 1;
pub const DISPATCH_LEVEL: KIRQL = 2;
pub const HIGH_LEVEL: KIRQL = 15;

/// A spin lock is one pointer-sized word.
pub type KSPIN_LOCK = usize;

/// EVENT_TYPE.
pub type EVENT_TYPE = i32;
pub const NotificationEvent: EVENT_TYPE = 0;
pub const SynchronizationEvent: EVENT_TYPE = 1;

/// KWAIT_REASON values used by drivers.
pub type KWAIT_REASON = i32;
pub const Executive: KWAIT_REASON = 0;

/// KPRIORITY, the increment passed to `KeSetEvent`.
pub type KPRIORITY = i32;

/// The header every dispatcher object starts with (wdm.h), 24 bytes on x64.
#[repr(C)]
pub struct DISPATCHER_HEADER {
    /// Union with `Lock`; the first byte is the object type.
    pub Type: u8,
    pub Signalling: u8,
    pub Size: u8,
    pub Reserved1: u8,
    pub SignalState: i32,
    pub WaitListHead: LIST_ENTRY,
}

/// A dispatcher event (wdm.h), 24 bytes on x64.
#[repr(C)]
pub struct KEVENT {
    pub Header: DISPATCHER_HEADER,
}

/// DISPATCHER_HEADER.Type of the objects wsktls waits on.
pub const EventNotificationObject: u8 = 0;
pub const EventSynchronizationObject: u8 = 1;
pub const TimerNotificationObject: u8 = 8;
pub const TimerSynchronizationObject: u8 = 9;

/// TIMER_TYPE for `KeInitializeTimerEx`.
pub type TIMER_TYPE = i32;
pub const NotificationTimer: TIMER_TYPE = 0;
pub const SynchronizationTimer: TIMER_TYPE = 1;

/// `KDEFERRED_ROUTINE`: a DPC, run at DISPATCH_LEVEL.
pub type PKDEFERRED_ROUTINE = Option<
    unsafe extern "system" fn(
        Dpc: *mut KDPC,
        DeferredContext: PVOID,
        SystemArgument1: PVOID,
        SystemArgument2: PVOID,
    ),
>;

/// A deferred procedure call object (wdm.h), 64 bytes on x64.
#[repr(C)]
pub struct KDPC {
    pub Type: u8,
    pub Importance: u8,
    pub Number: u16,
    /// A LIST_ENTRY in older headers; a SINGLE_LIST_ENTRY plus ProcessorHistory in newer
    /// ones. Same 16 bytes either way; the kernel's own.
    pub DpcListEntry: LIST_ENTRY,
    pub DeferredRoutine: PKDEFERRED_ROUTINE,
    pub DeferredContext: PVOID,
    pub SystemArgument1: PVOID,
    pub SystemArgument2: PVOID,
    pub DpcData: PVOID,
}

/// A kernel timer (wdm.h), 64 bytes on x64: a dispatcher object that is signalled when it
/// expires, and queues its DPC, if it has one.
#[repr(C)]
pub struct KTIMER {
    pub Header: DISPATCHER_HEADER,
    pub DueTime: u64,
    pub TimerListEntry: LIST_ENTRY,
    pub Dpc: *mut KDPC,
    pub Processor: u32,
    pub Period: u32,
}

unsafe extern "system" {
    /// Raises to DISPATCH_LEVEL and acquires the lock; returns the previous IRQL.
    pub fn KeAcquireSpinLockRaiseToDpc(SpinLock: *mut KSPIN_LOCK) -> KIRQL;
    /// Releases the lock and returns to `NewIrql`.
    pub fn KeReleaseSpinLock(SpinLock: *mut KSPIN_LOCK, NewIrql: KIRQL);
    /// Acquires the lock when the caller is already at DISPATCH_LEVEL.
    pub fn KeAcquireSpinLockAtDpcLevel(SpinLock: *mut KSPIN_LOCK);
    pub fn KeReleaseSpinLockFromDpcLevel(SpinLock: *mut KSPIN_LOCK);

    pub fn KeInitializeEvent(Event: *mut KEVENT, Type: EVENT_TYPE, State: BOOLEAN);
    /// Signals the event; returns its previous state. IRQL <= DISPATCH_LEVEL.
    pub fn KeSetEvent(Event: *mut KEVENT, Increment: KPRIORITY, Wait: BOOLEAN) -> i32;
    pub fn KeClearEvent(Event: *mut KEVENT);
    pub fn KeResetEvent(Event: *mut KEVENT) -> i32;
    pub fn KeReadStateEvent(Event: *mut KEVENT) -> i32;
    /// Waits for a dispatcher object. `Timeout` is in 100 ns units, negative for relative;
    /// NULL waits forever. IRQL <= APC_LEVEL, or DISPATCH_LEVEL with a zero timeout.
    /// Returns STATUS_SUCCESS or STATUS_TIMEOUT.
    pub fn KeInitializeDpc(Dpc: *mut KDPC, DeferredRoutine: PKDEFERRED_ROUTINE, DeferredContext: PVOID);
    pub fn KeInitializeTimerEx(Timer: *mut KTIMER, Type: TIMER_TYPE);
    /// Sets (or resets) the timer to expire at `DueTime` (100 ns units, negative for
    /// relative), then queue `Dpc` if not NULL. Returns whether it was already set.
    /// IRQL <= DISPATCH_LEVEL.
    pub fn KeSetTimer(Timer: *mut KTIMER, DueTime: LARGE_INTEGER, Dpc: *mut KDPC) -> BOOLEAN;
    /// Removes the timer from the queue; returns whether it was set.
    pub fn KeCancelTimer(Timer: *mut KTIMER) -> BOOLEAN;
    /// Waits until every queued DPC has run. PASSIVE_LEVEL.
    pub fn KeFlushQueuedDpcs();

    pub fn KeWaitForSingleObject(
        Object: *mut c_void,
        WaitReason: KWAIT_REASON,
        WaitMode: crate::KPROCESSOR_MODE,
        Alertable: BOOLEAN,
        Timeout: *const LARGE_INTEGER,
    ) -> NTSTATUS;
}

#[cfg(not(all(windows, target_arch = "x86_64")))]
unsafe extern "system" {
    /// Host builds: ntsim keeps a per-thread IRQL.
    pub fn KeGetCurrentIrql() -> KIRQL;
    /// Host builds: `KeRaiseIrql` without the out-parameter; returns the old IRQL.
    pub fn KfRaiseIrql(NewIrql: KIRQL) -> KIRQL;
    pub fn KeLowerIrql(NewIrql: KIRQL);
    /// Host builds: ntsim names each thread by an address of its own.
    pub fn KeGetCurrentThread() -> PVOID;
}

/// `KeGetCurrentThread` (x64 inline): the KTHREAD is at gs:[0x188], in the processor's
/// control block.
///
/// # Safety
/// Kernel mode only (gs is the KPCR there).
#[cfg(all(windows, target_arch = "x86_64"))]
#[inline]
pub unsafe fn KeGetCurrentThread() -> PVOID {
    let thread: u64;
    // SAFETY: how wdm.h implements KeGetCurrentThread on x64; kernel mode only.
    unsafe {
        core::arch::asm!("mov {}, gs:[0x188]", out(reg) thread, options(nostack, preserves_flags, readonly))
    };
    thread as PVOID
}

/// The current thread, as a number that no other live thread has.
pub fn current_thread() -> usize {
    // SAFETY: no preconditions in kernel mode; host builds ask ntsim.
    unsafe { KeGetCurrentThread() as usize }
}

/// `KeGetCurrentIrql` (x64 inline): the IRQL is CR8.
///
/// # Safety
/// Kernel mode only (CR8 is privileged).
#[cfg(all(windows, target_arch = "x86_64"))]
#[inline]
pub unsafe fn KeGetCurrentIrql() -> KIRQL {
    let irql: u64;
    // SAFETY: reading CR8 is how wdm.h implements KeGetCurrentIrql on x64; kernel mode only.
    unsafe { core::arch::asm!("mov {}, cr8", out(reg) irql, options(nomem, nostack, preserves_flags)) };
    irql as KIRQL
}

/// `KfRaiseIrql` (x64 inline): write CR8, return the old value.
///
/// # Safety
/// Kernel mode only; `new_irql` is not below the current IRQL.
#[cfg(all(windows, target_arch = "x86_64"))]
#[inline]
pub unsafe fn KfRaiseIrql(new_irql: KIRQL) -> KIRQL {
    // SAFETY: as wdm.h on x64; the caller raises, never lowers, through this function.
    unsafe {
        let old = KeGetCurrentIrql();
        core::arch::asm!("mov cr8, {}", in(reg) new_irql as u64, options(nomem, nostack, preserves_flags));
        old
    }
}

/// `KeLowerIrql` (x64 inline): write CR8.
///
/// # Safety
/// Kernel mode only; `new_irql` is the IRQL this processor was raised from.
#[cfg(all(windows, target_arch = "x86_64"))]
#[inline]
pub unsafe fn KeLowerIrql(new_irql: KIRQL) {
    // SAFETY: as wdm.h on x64; the caller lowers to an IRQL it raised from.
    unsafe {
        core::arch::asm!("mov cr8, {}", in(reg) new_irql as u64, options(nomem, nostack, preserves_flags))
    };
}

/// `KeInitializeSpinLock` (x64 inline).
///
/// # Safety
/// `lock` must be writable and not held.
#[inline]
pub unsafe fn KeInitializeSpinLock(lock: *mut KSPIN_LOCK) {
    // SAFETY: per the caller.
    unsafe { *lock = 0 }
}

/// Relative timeout in 100 ns units for `KeWaitForSingleObject`, from milliseconds.
#[inline]
pub const fn relative_timeout_ms(ms: u32) -> LARGE_INTEGER {
    -(ms as i64) * 10_000
}
