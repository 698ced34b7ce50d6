//! Timers and DPCs: KeSetTimer / KeCancelTimer on the driver's KTIMER, its DPC run at
//! DISPATCH_LEVEL on the kernel's timer thread, timers signalled as dispatcher objects,
//! and KeFlushQueuedDpcs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use wsktls_nt::{
    BOOLEAN, DISPATCH_LEVEL, KDPC, KTIMER, LARGE_INTEGER, PKDEFERRED_ROUTINE, PVOID, TIMER_TYPE,
    TimerNotificationObject,
};

use crate::irql::{require_dispatch, require_passive, with_irql};
use crate::kernel::{KernelInner, current, lock, wait};
use crate::verifier::{Rule, report};

#[derive(Default)]
struct State {
    /// Set timers: address → (generation, due).
    set: HashMap<usize, (u64, Instant)>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    next_generation: u64,
    /// DPCs running now, by KDPC address.
    running: Vec<usize>,
    stopping: bool,
}

#[derive(Default)]
pub(crate) struct Timers {
    state: Mutex<State>,
    changed: Condvar,
}

impl Timers {
    /// The timer thread: fires due timers, runs their DPCs at DISPATCH_LEVEL.
    pub(crate) fn run(&self, k: &KernelInner) {
        let mut st = lock(&self.state);
        while !st.stopping {
            let Some(&Reverse((due, generation, timer))) = st.queue.peek() else {
                st = wait(&self.changed, st, Duration::from_millis(50));
                continue;
            };
            if st.set.get(&timer).map(|e| e.0) != Some(generation) {
                st.queue.pop(); // cancelled or reset since
                continue;
            }
            let now = Instant::now();
            if due > now {
                st = wait(&self.changed, st, due - now);
                continue;
            }
            st.queue.pop();
            st.set.remove(&timer);
            let t = timer as *mut KTIMER;
            // SAFETY: a set timer is live (freeing one is a report that keeps nothing
            // from running, but the driver owns the memory until it cancels).
            let dpc = unsafe { (*t).Dpc };
            if !dpc.is_null() {
                st.running.push(dpc as usize);
            }
            drop(st);
            signal(t, k);
            if !dpc.is_null() {
                // SAFETY: the driver's initialised KDPC, queued by KeSetTimer.
                let (routine, context) = unsafe { ((*dpc).DeferredRoutine, (*dpc).DeferredContext) };
                if let Some(routine) = routine {
                    with_irql(DISPATCH_LEVEL, "a DPC", || {
                        // SAFETY: running the driver's DPC as the kernel does.
                        unsafe { routine(dpc, context, std::ptr::null_mut(), std::ptr::null_mut()) }
                    });
                }
            }
            st = lock(&self.state);
            st.running.retain(|&d| d != dpc as usize);
            self.changed.notify_all();
        }
    }

    pub(crate) fn stop(&self) {
        lock(&self.state).stopping = true;
        self.changed.notify_all();
    }

    /// A set timer or a running DPC inside `[addr, addr+len)`.
    pub(crate) fn inside(&self, addr: usize, len: usize) -> Option<usize> {
        let st = lock(&self.state);
        st.set.keys().chain(&st.running).copied().find(|&a| a >= addr && a < addr + len)
    }

    pub(crate) fn check_unload(&self) {
        let n = lock(&self.state).set.len();
        if n > 0 {
            report(
                Rule::TimerMisuse,
                format!("{n} timer(s) still set at unload: they would fire into an unloaded driver"),
            );
        }
    }
}

fn signal_state(timer: *mut KTIMER) -> &'static AtomicI32 {
    // SAFETY: SignalState is an aligned LONG inside the driver's live KTIMER.
    unsafe { &*(std::ptr::addr_of_mut!((*timer).Header.SignalState) as *const AtomicI32) }
}

/// The timer expired: it is signalled, and releases its waiters (one, which takes the
/// signal, for a synchronization timer; all for a notification timer).
fn signal(timer: *mut KTIMER, k: &KernelInner) {
    crate::sync::signal_object(&k.dispatcher, timer as usize, signal_state(timer));
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeInitializeDpc(dpc: *mut KDPC, routine: PKDEFERRED_ROUTINE, context: PVOID) {
    // SAFETY: the caller's writable KDPC.
    unsafe {
        std::ptr::write_bytes(dpc, 0, 1);
        (*dpc).Type = 19; // DpcObject
        (*dpc).Importance = 1; // MediumImportance
        (*dpc).DeferredRoutine = routine;
        (*dpc).DeferredContext = context;
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeInitializeTimerEx(timer: *mut KTIMER, kind: TIMER_TYPE) {
    // SAFETY: the caller's writable KTIMER.
    unsafe {
        std::ptr::write_bytes(timer, 0, 1);
        (*timer).Header.Type = TimerNotificationObject + kind as u8;
        (*timer).Header.Size = (size_of::<KTIMER>() / 4) as u8;
        wsktls_nt::InitializeListHead(std::ptr::addr_of_mut!((*timer).Header.WaitListHead));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeSetTimer(timer: *mut KTIMER, due: LARGE_INTEGER, dpc: *mut KDPC) -> BOOLEAN {
    let k = current();
    require_dispatch("KeSetTimer");
    if due > 0 {
        report(Rule::BadParameter, "KeSetTimer with an absolute due time: ntsim models relative ones");
    }
    let at = Instant::now() + Duration::from_nanos(due.min(0).unsigned_abs().saturating_mul(100));
    // SAFETY: the caller's initialised KTIMER.
    unsafe { (*timer).Dpc = dpc };
    signal_state(timer).store(0, Ordering::Release);
    let mut st = lock(&k.timers.state);
    st.next_generation += 1;
    let generation = st.next_generation;
    let was_set = st.set.insert(timer as usize, (generation, at)).is_some();
    st.queue.push(Reverse((at, generation, timer as usize)));
    k.timers.changed.notify_all();
    u8::from(was_set)
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeCancelTimer(timer: *mut KTIMER) -> BOOLEAN {
    let k = current();
    require_dispatch("KeCancelTimer");
    u8::from(lock(&k.timers.state).set.remove(&(timer as usize)).is_some())
}

#[unsafe(no_mangle)]
pub extern "system" fn KeFlushQueuedDpcs() {
    let k = current();
    if !require_passive("KeFlushQueuedDpcs") {
        return;
    }
    let mut st = lock(&k.timers.state);
    loop {
        let now = Instant::now();
        let due = st.set.values().any(|&(_, at)| at <= now);
        if st.running.is_empty() && !due {
            return;
        }
        st = wait(&k.timers.changed, st, Duration::from_millis(5));
    }
}
