//! Spin locks, dispatcher events and waits, and rundown protection, on the driver's own
//! KSPIN_LOCK / KEVENT / EX_RUNDOWN_REF memory.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wsktls_nt::{
    BOOLEAN, DISPATCH_LEVEL, EX_RUNDOWN_REF, EventNotificationObject, EventSynchronizationObject, KEVENT,
    KIRQL, KPRIORITY, KPROCESSOR_MODE, KSPIN_LOCK, KWAIT_REASON, LARGE_INTEGER, NTSTATUS, STATUS_SUCCESS,
    STATUS_TIMEOUT, TimerNotificationObject, TimerSynchronizationObject,
};

use crate::irql::{current_irql, require_apc, require_dispatch, require_passive, set_irql};
use crate::kernel::{current, lock};
use crate::verifier::{Rule, report};

/// The dispatcher lock and the waits in progress. As in the real kernel, where each
/// dispatcher object heads its own list of wait blocks, a signal wakes the threads waiting
/// on the object signalled and no other: one of them for a synchronization object (the
/// signal is handed to it), all of them for a notification object.
#[derive(Default)]
pub(crate) struct Dispatcher {
    /// The waits in progress, oldest first: (object address, waiter). A handful at most,
    /// so a list (that keeps its capacity: no allocation per wait) beats a map.
    waiting: Mutex<Vec<(usize, Arc<Waiter>)>>,
    /// Threads a signal woke (Stats::waits_woken).
    woken: AtomicU64,
}

/// One thread blocked in a dispatcher wait.
struct Waiter {
    thread: Thread,
    /// Set, under the dispatcher lock, by the signal that took this waiter off the list: the
    /// wait is satisfied.
    satisfied: AtomicBool,
}

impl Waiter {
    fn new() -> Waiter {
        Waiter { thread: std::thread::current(), satisfied: AtomicBool::new(false) }
    }
}

thread_local! {
    /// This thread's waiter, reused by each of its waits (a thread waits on one object at
    /// a time).
    static WAITER: Arc<Waiter> = Arc::new(Waiter::new());
}

/// How many waiters of the signalled object a signal releases.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// A synchronization object: the longest waiting thread.
    One,
    /// A notification object, or a rundown reference that reached zero: every waiter.
    All,
}

/// A wait re-checks its condition this often even if no signal woke it (a lost wakeup
/// delays a wait, never hangs it).
const RECHECK: Duration = Duration::from_millis(100);

impl Dispatcher {
    /// Under the dispatcher lock, `signal` puts `object` in the signalled state; then its
    /// waiters are released as `release` says, and woken once the lock is dropped. For
    /// `Release::One`, `consume` runs if a waiter is released: the signal goes to that
    /// waiter and the object is reset. Returns what `signal` returned.
    pub(crate) fn signal<R>(
        &self,
        object: usize,
        release: Release,
        signal: impl FnOnce() -> R,
        consume: impl FnOnce(),
    ) -> R {
        let mut waiting = lock(&self.waiting);
        let result = signal();
        // Most signals release no waiter or one: no allocation for those.
        let mut first: Option<Arc<Waiter>> = None;
        let mut more: Vec<Arc<Waiter>> = Vec::new();
        let mut i = 0;
        while i < waiting.len() {
            if waiting[i].0 != object {
                i += 1;
                continue;
            }
            let (_, w) = waiting.remove(i);
            w.satisfied.store(true, Ordering::Relaxed);
            match first {
                None => first = Some(w),
                Some(_) => more.push(w),
            }
            if release == Release::One {
                consume();
                break;
            }
        }
        drop(waiting);
        let n = usize::from(first.is_some()) + more.len();
        if n > 0 {
            self.woken.fetch_add(n as u64, Ordering::Relaxed);
        }
        for w in first.into_iter().chain(more) {
            w.thread.unpark();
        }
        result
    }

    /// Waits on `object` until `ready` (evaluated under the dispatcher lock), a signal of
    /// `object` releases this thread, or the deadline. True unless the deadline passed.
    fn wait_until(&self, object: usize, deadline: Option<Instant>, mut ready: impl FnMut() -> bool) -> bool {
        // A thread-local destroyed already (a wait from another thread-local's destructor)
        // costs an allocation, nothing else.
        let me = WAITER.try_with(Arc::clone).unwrap_or_else(|_| Arc::new(Waiter::new()));
        let mut waiting = lock(&self.waiting);
        let mut listed = false;
        let satisfied = loop {
            if listed && me.satisfied.load(Ordering::Relaxed) {
                // A signal of `object` took this waiter off the list and handed it the signal.
                listed = false;
                break true;
            }
            if ready() {
                break true;
            }
            let step = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(RECHECK),
                    _ => break false,
                },
                None => RECHECK,
            };
            if !listed {
                me.satisfied.store(false, Ordering::Relaxed);
                waiting.push((object, Arc::clone(&me)));
                listed = true;
            }
            drop(waiting);
            // Returns early on an unpark meant for an earlier wait of this thread (or for
            // some other parker in it): the loop re-checks.
            std::thread::park_timeout(step);
            waiting = lock(&self.waiting);
        };
        if listed {
            if let Some(i) = waiting.iter().position(|(_, w)| Arc::ptr_eq(w, &me)) {
                waiting.remove(i);
            }
        }
        satisfied
    }

    pub(crate) fn woken(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
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

/// Signals the event or timer at `object` (its `state`): releases one waiter, which takes
/// the signal, for a synchronization object; every waiter for a notification object.
/// Returns the previous state.
pub(crate) fn signal_object(dispatcher: &Dispatcher, object: usize, state: &AtomicI32) -> i32 {
    // SAFETY: the caller's live event or timer; both start with a DISPATCHER_HEADER.
    let synchronization = matches!(
        unsafe { (*(object as *const KEVENT)).Header.Type },
        EventSynchronizationObject | TimerSynchronizationObject
    );
    let release = if synchronization { Release::One } else { Release::All };
    dispatcher.signal(
        object,
        release,
        || state.swap(1, Ordering::AcqRel),
        || state.store(0, Ordering::Release),
    )
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
    signal_object(&k.dispatcher, event as usize, signal_state(event))
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
    let satisfied = k.dispatcher.wait_until(object as usize, deadline, || {
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
        // The last reference of a rundown in progress: release its waiter. A wait that
        // checked the count before the decrement is on the list by now (it checks and
        // joins the list under the dispatcher lock); one that checks after sees zero.
        k.dispatcher.signal(r as usize, Release::All, || {}, || {});
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
    k.dispatcher.wait_until(r as usize, None, || c.load(Ordering::Acquire) == RUNDOWN_ACTIVE);
}
