//! ntsim's timers, DPCs and work items, as the secure channel will use them (timeouts,
//! the handshake's work item): what runs, at which IRQL, and what the verifier says of
//! misuse.

mod common;

use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ntsim::{Kernel, Rule};
use wsktls::nt::{
    DEVICE_OBJECT, DISPATCH_LEVEL, DelayedWorkQueue, Executive, FALSE, IO_WORKITEM, IoAllocateWorkItem,
    IoFreeWorkItem, IoQueueWorkItem, KDPC, KTIMER, KeCancelTimer, KeFlushQueuedDpcs, KeGetCurrentIrql,
    KeInitializeDpc, KeInitializeTimerEx, KeSetTimer, KeWaitForSingleObject, KernelMode, NotificationTimer,
    PASSIVE_LEVEL, PoolBox, STATUS_SUCCESS, STATUS_TIMEOUT, relative_timeout_ms,
};

/// What a DPC or work item saw when it ran.
#[derive(Default)]
struct Seen {
    runs: AtomicU32,
    irql: AtomicU8,
}

unsafe extern "system" fn count_dpc(_dpc: *mut KDPC, context: *mut c_void, _a: *mut c_void, _b: *mut c_void) {
    // SAFETY: the test passes a `Seen` that outlives the timer.
    let seen = unsafe { &*(context as *const Seen) };
    // SAFETY: reading this thread's IRQL.
    seen.irql.store(unsafe { KeGetCurrentIrql() }, Ordering::SeqCst);
    seen.runs.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "system" fn count_work(_device: *mut DEVICE_OBJECT, context: *mut c_void) {
    // SAFETY: as above.
    let seen = unsafe { &*(context as *const Seen) };
    // SAFETY: reading this thread's IRQL.
    seen.irql.store(unsafe { KeGetCurrentIrql() }, Ordering::SeqCst);
    seen.runs.fetch_add(1, Ordering::SeqCst);
}

/// A timer and its DPC in nonpaged pool, as a driver keeps them.
struct Timer {
    timer: PoolBox<KTIMER>,
    dpc: PoolBox<KDPC>,
}

impl Timer {
    fn new(seen: &Seen) -> Timer {
        // SAFETY: zeroed KTIMER/KDPC are valid storage, initialised right after.
        let mut t = unsafe {
            Timer {
                timer: PoolBox::new(common::TAG_TEST, std::mem::zeroed()).expect("timer"),
                dpc: PoolBox::new(common::TAG_TEST, std::mem::zeroed()).expect("dpc"),
            }
        };
        // SAFETY: initialising our own objects.
        unsafe {
            KeInitializeTimerEx(&mut *t.timer, NotificationTimer);
            KeInitializeDpc(&mut *t.dpc, Some(count_dpc), seen as *const Seen as *mut c_void);
        }
        t
    }

    fn set(&mut self, ms: u32) -> bool {
        // SAFETY: our initialised timer and DPC, alive until dropped after cancel/flush.
        unsafe { KeSetTimer(&mut *self.timer, relative_timeout_ms(ms), &mut *self.dpc) != 0 }
    }

    fn cancel(&mut self) -> bool {
        // SAFETY: our timer.
        unsafe { KeCancelTimer(&mut *self.timer) != 0 }
    }
}

#[test]
fn timer_runs_its_dpc_at_dispatch_level_after_the_due_time() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let seen = Seen::default();
        let mut t = Timer::new(&seen);
        let started = Instant::now();
        assert!(!t.set(50), "was not set before");
        let timeout = relative_timeout_ms(5_000);
        // SAFETY: waiting on our timer (a dispatcher object) at PASSIVE_LEVEL.
        let waited = unsafe {
            KeWaitForSingleObject(
                (&mut *t.timer as *mut KTIMER).cast(),
                Executive,
                KernelMode,
                FALSE,
                &timeout,
            )
        };
        assert_eq!(waited, STATUS_SUCCESS);
        assert!(started.elapsed() >= Duration::from_millis(50));
        // SAFETY: PASSIVE_LEVEL, waiting for our DPC.
        unsafe { KeFlushQueuedDpcs() };
        assert_eq!(seen.runs.load(Ordering::SeqCst), 1);
        assert_eq!(seen.irql.load(Ordering::SeqCst), DISPATCH_LEVEL);
    }
    kernel.finish();
}

#[test]
fn cancelled_timer_never_fires_and_a_reset_fires_once() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let seen = Seen::default();
        let mut t = Timer::new(&seen);
        t.set(30);
        assert!(t.cancel(), "the timer was set");
        assert!(!t.cancel(), "and is no longer");
        assert!(!t.set(10_000));
        assert!(t.set(20), "resetting a set timer replaces its due time");
        std::thread::sleep(Duration::from_millis(150));
        // SAFETY: PASSIVE_LEVEL, waiting for our DPC.
        unsafe { KeFlushQueuedDpcs() };
        assert_eq!(seen.runs.load(Ordering::SeqCst), 1);
        let zero = 0i64;
        // SAFETY: polling our expired timer.
        let state = unsafe {
            KeWaitForSingleObject((&mut *t.timer as *mut KTIMER).cast(), Executive, KernelMode, FALSE, &zero)
        };
        assert_eq!(state, STATUS_SUCCESS, "an expired notification timer stays signalled");
        t.set(10_000);
        // SAFETY: as above; a set timer is not signalled.
        let state = unsafe {
            KeWaitForSingleObject((&mut *t.timer as *mut KTIMER).cast(), Executive, KernelMode, FALSE, &zero)
        };
        assert_eq!(state, STATUS_TIMEOUT);
        t.cancel();
    }
    kernel.finish();
}

/// A stand-in device object: IoCreateDevice comes with the driver life cycle.
fn device() -> PoolBox<[u64; 42]> {
    PoolBox::new(common::TAG_TEST, [0u64; 42]).expect("device stand-in")
}

fn work_item(device: &PoolBox<[u64; 42]>) -> *mut IO_WORKITEM {
    // SAFETY: a non-NULL device pointer that outlives the item.
    let item = unsafe { IoAllocateWorkItem(device.as_ptr().cast()) };
    assert!(!item.is_null());
    item
}

#[test]
fn work_item_runs_at_passive_level_on_a_system_thread() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let seen = Seen::default();
        seen.irql.store(0xFF, Ordering::SeqCst);
        let device = device();
        let item = work_item(&device);
        // SAFETY: queuing our idle item with a context that outlives it.
        unsafe {
            IoQueueWorkItem(item, Some(count_work), DelayedWorkQueue, &seen as *const Seen as *mut c_void)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.runs.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen.runs.load(Ordering::SeqCst), 1);
        assert_eq!(seen.irql.load(Ordering::SeqCst), PASSIVE_LEVEL);
        // SAFETY: the routine has run; the item is idle.
        unsafe { IoFreeWorkItem(item) };
    }
    kernel.finish();
}

#[test]
fn work_item_queued_again_before_it_ran_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let seen = Seen::default();
        let device = device();
        let item = work_item(&device);
        let context = &seen as *const Seen as *mut c_void;
        // SAFETY: the second queue is the bug; the sleep keeps the worker busy meanwhile.
        unsafe {
            IoQueueWorkItem(item, Some(slow_work), DelayedWorkQueue, context);
            IoQueueWorkItem(item, Some(count_work), DelayedWorkQueue, context);
            IoQueueWorkItem(item, Some(count_work), DelayedWorkQueue, context);
        }
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: idle again by now.
        unsafe { IoFreeWorkItem(item) };
    }
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::WorkItemMisuse && r.detail.contains("again")),
        "{reports:?}"
    );
    kernel.finish();
}

unsafe extern "system" fn slow_work(_device: *mut DEVICE_OBJECT, _context: *mut c_void) {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn timer_freed_while_set_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let seen = Seen::default();
        let mut t = Timer::new(&seen);
        t.set(10_000);
        let Timer { timer, dpc } = t;
        drop(timer); // the bug: freed while set
        drop(dpc);
    }
    let reports = kernel.shutdown();
    assert!(reports.iter().any(|r| r.rule == Rule::TimerMisuse && r.detail.contains("freed")), "{reports:?}");
    assert!(
        reports.iter().any(|r| r.rule == Rule::TimerMisuse && r.detail.contains("unload")),
        "{reports:?}"
    );
}
