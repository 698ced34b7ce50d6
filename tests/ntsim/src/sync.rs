//! Spin locks, dispatcher events and waits, and rundown protection, on the driver's own
//! KSPIN_LOCK / KEVENT / EX_RUNDOWN_REF memory.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use wsktls_nt::{
    BOOLEAN, DISPATCH_LEVEL, EX_RUNDOWN_REF, EventNotificationObject, EventSynchronizationObject, KEVENT,
    KIRQL, KPRIORITY, KPROCESSOR_MODE, KSPIN_LOCK, KWAIT_REASON, LARGE_INTEGER, NTSTATUS, STATUS_SUCCESS,
    STATUS_TIMEOUT, TimerNotificationObject, TimerSynchronizationObject,
};

use crate::irql::{current_irql, require_apc, require_dispatch, require_passive, set_irql};
use crate::kernel::{current, lock, wait};
use crate::verifier::{Rule, report};

/// The dispatcher lock: every signal and wait goes through it, as in the real kernel.
#[derive(Default)]
pub(crate) struct Dispatcher {
    lock: Mutex<()>,
    changed: Condvar,
}

impl Dispatcher {
    pub(crate) fn notify(&self) {
        let _g = lock(&self.lock);
        self.changed.notify_all();
    }

    /// Waits until `ready` (evaluated under the dispatcher lock) or the deadline.
    fn wait_until(&self, deadline: Option<Instant>, mut ready: impl FnMut() -> bool) -> bool {
        let mut g = lock(&self.lock);
        loop {
            if ready() {
                return true;
            }
            let step = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
                None => Duration::from_millis(100),
            };
            g = wait(&self.changed, g, step);
        }
    }
}

thread_local! {
    /// The spin locks this thread holds, to catch recursion and foreign releases.
    static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn word(lock: *mut KSPIN_LOCK) -> &'static AtomicUsize {
    // SAFETY: KSPIN_LOCK is a pointer-sized, aligned word the driver keeps alive while it
    // uses the lock; all access is atomic.
    unsafe { &*(lock as *const AtomicUsize) }
}

fn acquire(lock: *mut KSPIN_LOCK, function: &str) {
    if HELD.with(|h| h.borrow().contains(&(lock as usize))) {
        report(
            Rule::SpinLockMisuse,
            format!("{function}: spin lock {lock:?} acquired recursively (deadlock)"),
        );
        panic!("ntsim: recursive spin lock acquisition would hang the processor");
    }
    let w = word(lock);
    let mut spins = 0u32;
    while w.compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
        spins += 1;
        if spins % 64 == 0 {
            // Host threads can be descheduled while holding a lock; don't burn the core.
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    HELD.with(|h| h.borrow_mut().push(lock as usize));
}

fn release(lock: *mut KSPIN_LOCK, function: &str) {
    let held = HELD.with(|h| {
        let mut h = h.borrow_mut();
        match h.iter().rposition(|&l| l == lock as usize) {
            Some(i) => {
                h.remove(i);
                true
            }
            None => false,
        }
    });
    if !held {
        report(
            Rule::SpinLockMisuse,
            format!("{function}: spin lock {lock:?} released by a thread that does not hold it"),
        );
        return;
    }
    word(lock).store(0, Ordering::Release);
}

#[unsafe(no_mangle)]
pub extern "system" fn KeAcquireSpinLockRaiseToDpc(lock: *mut KSPIN_LOCK) -> KIRQL {
    require_dispatch("KeAcquireSpinLock");
    let old = current_irql();
    set_irql(DISPATCH_LEVEL);
    acquire(lock, "KeAcquireSpinLock");
    old
}

#[unsafe(no_mangle)]
pub extern "system" fn KeReleaseSpinLock(lock: *mut KSPIN_LOCK, new_irql: KIRQL) {
    if current_irql() != DISPATCH_LEVEL {
        report(Rule::IrqlMismatch, format!("KeReleaseSpinLock at IRQL {}", current_irql()));
    }
    release(lock, "KeReleaseSpinLock");
    set_irql(new_irql);
}

#[unsafe(no_mangle)]
pub extern "system" fn KeAcquireSpinLockAtDpcLevel(lock: *mut KSPIN_LOCK) {
    if current_irql() != DISPATCH_LEVEL {
        report(Rule::IrqlMismatch, format!("KeAcquireSpinLockAtDpcLevel at IRQL {}", current_irql()));
    }
    acquire(lock, "KeAcquireSpinLockAtDpcLevel");
}

#[unsafe(no_mangle)]
pub extern "system" fn KeReleaseSpinLockFromDpcLevel(lock: *mut KSPIN_LOCK) {
    release(lock, "KeReleaseSpinLockFromDpcLevel");
}

fn signal_state(event: *mut KEVENT) -> &'static AtomicI32 {
    // SAFETY: SignalState is an aligned LONG inside the driver's live KEVENT.
    unsafe { &*(std::ptr::addr_of_mut!((*event).Header.SignalState) as *const AtomicI32) }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeInitializeEvent(event: *mut KEVENT, kind: i32, state: BOOLEAN) {
    // SAFETY: the caller gives a writable KEVENT.
    unsafe {
        std::ptr::write_bytes(event, 0, 1);
        (*event).Header.Type = kind as u8;
        (*event).Header.Size = (std::mem::size_of::<KEVENT>() / 4) as u8;
        let head = std::ptr::addr_of_mut!((*event).Header.WaitListHead);
        wsktls_nt::InitializeListHead(head);
    }
    signal_state(event).store(i32::from(state != 0), Ordering::Release);
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeSetEvent(event: *mut KEVENT, _increment: KPRIORITY, _wait: BOOLEAN) -> i32 {
    let k = current();
    require_dispatch("KeSetEvent");
    let _g = lock(&k.dispatcher.lock);
    let previous = signal_state(event).swap(1, Ordering::AcqRel);
    k.dispatcher.changed.notify_all();
    previous
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeClearEvent(event: *mut KEVENT) {
    signal_state(event).store(0, Ordering::Release);
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeResetEvent(event: *mut KEVENT) -> i32 {
    require_dispatch("KeResetEvent");
    signal_state(event).swap(0, Ordering::AcqRel)
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeReadStateEvent(event: *mut KEVENT) -> i32 {
    signal_state(event).load(Ordering::Acquire)
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeWaitForSingleObject(
    object: *mut c_void,
    _reason: KWAIT_REASON,
    _mode: KPROCESSOR_MODE,
    _alertable: BOOLEAN,
    timeout: *const LARGE_INTEGER,
) -> NTSTATUS {
    let k = current();
    // SAFETY: a NULL timeout means forever; otherwise the caller's LARGE_INTEGER.
    let timeout = unsafe { timeout.as_ref().copied() };
    let zero_wait = timeout == Some(0);
    if !zero_wait && !require_apc("KeWaitForSingleObject (with a non-zero timeout)") {
        return STATUS_TIMEOUT;
    }
    if zero_wait {
        require_dispatch("KeWaitForSingleObject");
    }
    // Events and timers both start with a DISPATCHER_HEADER; that is all a wait reads.
    let event = object as *mut KEVENT;
    // SAFETY: the caller waits on a live dispatcher object.
    let synchronization = match unsafe { (*event).Header.Type } {
        EventNotificationObject | TimerNotificationObject => false,
        EventSynchronizationObject | TimerSynchronizationObject => true,
        other => {
            report(
                Rule::BadParameter,
                format!("KeWaitForSingleObject on object type {other}: ntsim models events and timers"),
            );
            return STATUS_TIMEOUT;
        }
    };
    let deadline = timeout.map(|t| {
        // Negative: relative, in 100 ns units. Positive (absolute) is treated as relative
        // to now, which is all wsktls uses.
        Instant::now() + Duration::from_nanos(t.unsigned_abs().saturating_mul(100))
    });
    let state = signal_state(event);
    let satisfied = k.dispatcher.wait_until(deadline, || {
        if synchronization {
            state.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
        } else {
            state.load(Ordering::Acquire) != 0
        }
    });
    if satisfied { STATUS_SUCCESS } else { STATUS_TIMEOUT }
}

/// EX_RUNDOWN_REF.Count: references in units of 2, bit 0 set once rundown has begun.
const RUNDOWN_ACTIVE: usize = 1;
const RUNDOWN_COUNT_INC: usize = 2;

fn rundown(r: *mut EX_RUNDOWN_REF) -> &'static AtomicUsize {
    // SAFETY: Count is an aligned pointer-sized word inside the driver's live structure.
    unsafe { &*(std::ptr::addr_of_mut!((*r).Count) as *const AtomicUsize) }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn ExInitializeRundownProtection(r: *mut EX_RUNDOWN_REF) {
    rundown(r).store(0, Ordering::Release);
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn ExReInitializeRundownProtection(r: *mut EX_RUNDOWN_REF) {
    rundown(r).store(0, Ordering::Release);
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn ExRundownCompleted(r: *mut EX_RUNDOWN_REF) {
    rundown(r).store(RUNDOWN_ACTIVE, Ordering::Release);
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn ExAcquireRundownProtection(r: *mut EX_RUNDOWN_REF) -> BOOLEAN {
    require_dispatch("ExAcquireRundownProtection");
    let c = rundown(r);
    let mut v = c.load(Ordering::Acquire);
    loop {
        if v & RUNDOWN_ACTIVE != 0 {
            return 0;
        }
        match c.compare_exchange_weak(v, v + RUNDOWN_COUNT_INC, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return 1,
            Err(now) => v = now,
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn ExReleaseRundownProtection(r: *mut EX_RUNDOWN_REF) {
    let k = current();
    require_dispatch("ExReleaseRundownProtection");
    let after = rundown(r).fetch_sub(RUNDOWN_COUNT_INC, Ordering::AcqRel) - RUNDOWN_COUNT_INC;
    if after == RUNDOWN_ACTIVE {
        k.dispatcher.notify();
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn ExWaitForRundownProtectionRelease(r: *mut EX_RUNDOWN_REF) {
    let k = current();
    if !require_passive("ExWaitForRundownProtectionRelease") {
        return;
    }
    let c = rundown(r);
    c.fetch_or(RUNDOWN_ACTIVE, Ordering::AcqRel);
    k.dispatcher.wait_until(None, || c.load(Ordering::Acquire) == RUNDOWN_ACTIVE);
}
