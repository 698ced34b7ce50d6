//! Which threads a signal wakes. As in the NT kernel, setting an event (or a timer
//! expiring, or the last rundown reference going) wakes the threads waiting on that
//! object and no other: one of them for a synchronization object, all of them for a
//! notification object. A queued work item wakes one system worker.
//!
//! The "woken for nothing" tests count the voluntary context switches Linux keeps per
//! thread (/proc/self/task/TID/status): a thread asleep in a wait that a signal wakes to
//! re-check its condition sleeps again, and each sleep is one switch.
//!
//! The tests here run one at a time: a kernel booted by another test would add its own
//! wakeups to the counts, and the work-item test finds the kernel's system workers by
//! thread name.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ntsim::Kernel;
use wsktls_nt::{
    EVENT_TYPE, EX_RUNDOWN_REF, ExAcquireRundownProtection, ExInitializeRundownProtection,
    ExReleaseRundownProtection, ExWaitForRundownProtectionRelease, Executive, FALSE, KEVENT, KTIMER,
    KeClearEvent, KeInitializeEvent, KeInitializeTimerEx, KeReadStateEvent, KeResetEvent, KeSetEvent,
    KeSetTimer, KeWaitForSingleObject, KernelMode, NTSTATUS, NotificationEvent, NotificationTimer,
    STATUS_SUCCESS, STATUS_TIMEOUT, SynchronizationEvent, SynchronizationTimer, TIMER_TYPE,
    relative_timeout_ms,
};

/// Longer than any wake-up may take.
const WAIT: Duration = Duration::from_secs(5);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A dispatcher object at a fixed address, shared with the threads that wait on it.
struct Object<T>(Box<UnsafeCell<T>>);

// SAFETY: the Ke*/Ex* functions synchronise every access to the object.
unsafe impl<T> Sync for Object<T> {}

impl<T> Object<T> {
    fn zeroed() -> Object<T> {
        // SAFETY: an all-zero KEVENT, KTIMER or EX_RUNDOWN_REF is plain storage until
        // initialised.
        Object(Box::new(unsafe { std::mem::zeroed() }))
    }

    fn ptr(&self) -> *mut T {
        self.0.get()
    }

    /// The address, to hand to another thread.
    fn addr(&self) -> usize {
        self.0.get() as usize
    }
}

fn event(kind: EVENT_TYPE) -> Object<KEVENT> {
    let e = Object::zeroed();
    // SAFETY: our own storage, at its final address.
    unsafe { KeInitializeEvent(e.ptr(), kind, FALSE) };
    e
}

fn timer(kind: TIMER_TYPE) -> Object<KTIMER> {
    let t = Object::zeroed();
    // SAFETY: our own storage, at its final address.
    unsafe { KeInitializeTimerEx(t.ptr(), kind) };
    t
}

fn set(e: &Object<KEVENT>) {
    // SAFETY: an initialised event that outlives the call.
    unsafe { KeSetEvent(e.ptr(), 0, FALSE) };
}

fn state(e: &Object<KEVENT>) -> i32 {
    // SAFETY: as for `set`.
    unsafe { KeReadStateEvent(e.ptr()) }
}

/// Threads dispatcher signals have woken so far.
fn waits_woken(kernel: &Kernel) -> u64 {
    kernel.stats().waits_woken
}

/// Boots a kernel for one test (one test at a time), runs `test` inside it, and checks
/// the kernel's state at the end.
fn in_kernel(test: impl FnOnce(&Kernel)) {
    let _one = one_at_a_time();
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        test(&kernel);
    }
    kernel.finish();
}

/// A thread blocked in a wait, with its Linux thread id.
struct Waiter {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    tid: u32,
    thread: JoinHandle<NTSTATUS>,
}

/// Runs `wait` on a kernel thread and returns once that thread is blocked in it.
fn spawn_waiter(kernel: &Kernel, wait: impl FnOnce() -> NTSTATUS + Send + 'static) -> Waiter {
    let (tx, rx) = mpsc::channel();
    let thread = kernel.spawn(move || {
        tx.send(this_tid()).unwrap();
        wait()
    });
    let tid = rx.recv().unwrap();
    until_asleep(tid);
    Waiter { tid, thread }
}

/// A thread waiting on the object at `object` (at most `timeout_ms`, or forever).
fn wait_on(kernel: &Kernel, object: usize, timeout_ms: Option<u32>) -> Waiter {
    spawn_waiter(kernel, move || {
        let timeout = timeout_ms.map(relative_timeout_ms);
        let timeout = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: the test keeps the object alive until this thread is joined.
        unsafe { KeWaitForSingleObject(object as *mut c_void, Executive, KernelMode, FALSE, timeout) }
    })
}

/// A thread waiting for the rundown at `rundown` to complete.
fn wait_for_rundown(kernel: &Kernel, rundown: usize) -> Waiter {
    spawn_waiter(kernel, move || {
        // SAFETY: the test keeps the reference alive until this thread is joined.
        unsafe { ExWaitForRundownProtectionRelease(rundown as *mut EX_RUNDOWN_REF) };
        STATUS_SUCCESS
    })
}

impl Waiter {
    /// The wait's status, once it has returned (a test failure if it does not in WAIT).
    fn join(self) -> NTSTATUS {
        let deadline = Instant::now() + WAIT;
        while !self.thread.is_finished() {
            assert!(Instant::now() < deadline, "the wait did not end in {WAIT:?}");
            thread::sleep(Duration::from_millis(1));
        }
        self.thread.join().unwrap()
    }

    fn returned(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Joins whichever of `waiters` returns first (within WAIT), leaving the others.
fn first_to_return(waiters: &mut Vec<Waiter>) -> NTSTATUS {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(i) = waiters.iter().position(Waiter::returned) {
            return waiters.remove(i).join();
        }
        assert!(Instant::now() < deadline, "no wait ended in {WAIT:?}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// The calling thread's id.
fn this_tid() -> u32 {
    #[cfg(target_os = "linux")]
    {
        let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        link.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).expect("a thread id")
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Returns once thread `tid` is blocked (and a little more, for it to settle in its wait).
fn until_asleep(tid: u32) {
    #[cfg(target_os = "linux")]
    {
        let deadline = Instant::now() + WAIT;
        while !asleep(tid) {
            assert!(Instant::now() < deadline, "thread {tid} did not block in {WAIT:?}");
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(20));
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tid;
        thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(target_os = "linux")]
fn asleep(tid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // "TID (comm) STATE ...": the comm may hold spaces and parentheses, the state follows
    // the last ')'.
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
}

/// How many times thread `tid` has gone to sleep.
#[cfg(target_os = "linux")]
fn sleeps(tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("thread status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// Signals of another object a waiter must sleep through, and how many times it may
/// wake meanwhile anyway (its bounded re-check of the condition, every 100 ms).
#[cfg(target_os = "linux")]
const OTHER_SIGNALS: u64 = 200;
#[cfg(target_os = "linux")]
const SLACK: u64 = 10;

#[cfg(target_os = "linux")]
#[test]
fn a_wait_on_one_event_sleeps_through_every_signal_of_another() {
    in_kernel(|kernel| {
        let (a, b) = (event(NotificationEvent), event(NotificationEvent));
        let waiter = wait_on(kernel, a.addr(), None);
        let before = sleeps(waiter.tid);
        let woken_before = waits_woken(kernel);
        for _ in 0..OTHER_SIGNALS {
            set(&b);
            // SAFETY: as for `set`.
            unsafe { KeClearEvent(b.ptr()) };
            thread::sleep(Duration::from_micros(200));
        }
        let woken = sleeps(waiter.tid) - before;
        assert!(!waiter.returned(), "a wait on A ended when B was set");
        assert!(
            woken <= SLACK,
            "the thread waiting on A woke {woken} times while B was set {OTHER_SIGNALS} times"
        );
        assert_eq!(waits_woken(kernel), woken_before, "a signal of B woke a thread");
        set(&a);
        assert_eq!(waiter.join(), STATUS_SUCCESS);
        assert_eq!(waits_woken(kernel), woken_before + 1);
    });
}

#[cfg(target_os = "linux")]
#[test]
fn a_rundown_wait_sleeps_through_signals_of_events() {
    in_kernel(|kernel| {
        let r: Object<EX_RUNDOWN_REF> = Object::zeroed();
        // SAFETY: our own storage, at its final address; one reference taken.
        unsafe {
            ExInitializeRundownProtection(r.ptr());
            assert_eq!(ExAcquireRundownProtection(r.ptr()), 1);
        }
        let e = event(SynchronizationEvent);
        let waiter = wait_for_rundown(kernel, r.addr());
        let before = sleeps(waiter.tid);
        let woken_before = waits_woken(kernel);
        for _ in 0..OTHER_SIGNALS {
            set(&e);
            thread::sleep(Duration::from_micros(200));
        }
        let woken = sleeps(waiter.tid) - before;
        assert_eq!(waits_woken(kernel), woken_before, "a signal of an event woke a thread");
        assert!(!waiter.returned(), "the rundown wait ended with a reference held");
        assert!(
            woken <= SLACK,
            "the rundown waiter woke {woken} times while an event was set {OTHER_SIGNALS} times"
        );
        // SAFETY: the reference taken above.
        unsafe { ExReleaseRundownProtection(r.ptr()) };
        assert_eq!(waiter.join(), STATUS_SUCCESS);
    });
}

#[test]
fn a_synchronization_event_set_once_releases_exactly_one_of_two_waiters() {
    in_kernel(|kernel| {
        let e = event(SynchronizationEvent);
        let mut waiters =
            vec![wait_on(kernel, e.addr(), Some(10_000)), wait_on(kernel, e.addr(), Some(10_000))];
        let woken_before = waits_woken(kernel);
        set(&e);
        assert_eq!(first_to_return(&mut waiters), STATUS_SUCCESS);
        thread::sleep(Duration::from_millis(200));
        assert!(!waiters[0].returned(), "one set of a synchronization event released both waiters");
        assert_eq!(state(&e), 0, "the released waiter did not consume the signal");
        assert_eq!(
            waits_woken(kernel),
            woken_before + 1,
            "one set of a synchronization event woke both waiters"
        );
        set(&e);
        assert_eq!(waiters.remove(0).join(), STATUS_SUCCESS);
        assert_eq!(state(&e), 0);
        assert_eq!(waits_woken(kernel), woken_before + 2);
    });
}

#[test]
fn a_notification_event_releases_every_waiter_and_stays_signalled() {
    in_kernel(|kernel| {
        let e = event(NotificationEvent);
        let waiters: Vec<Waiter> = (0..3).map(|_| wait_on(kernel, e.addr(), Some(10_000))).collect();
        let woken_before = waits_woken(kernel);
        set(&e);
        for w in waiters {
            assert_eq!(w.join(), STATUS_SUCCESS);
        }
        assert_eq!(state(&e), 1);
        assert_eq!(waits_woken(kernel), woken_before + 3);
    });
}

#[test]
fn a_set_satisfies_the_waits_in_progress_even_if_the_event_is_reset_at_once() {
    in_kernel(|kernel| {
        let e = event(NotificationEvent);
        let waiters: Vec<Waiter> = (0..2).map(|_| wait_on(kernel, e.addr(), Some(2_000))).collect();
        set(&e);
        // SAFETY: as for `set`.
        assert_eq!(unsafe { KeResetEvent(e.ptr()) }, 1);
        for w in waiters {
            assert_eq!(w.join(), STATUS_SUCCESS, "a wait in progress when the event was set timed out");
        }
    });
}

#[test]
fn a_timed_wait_times_out_while_other_events_are_set() {
    in_kernel(|kernel| {
        let (a, b) = (event(SynchronizationEvent), event(NotificationEvent));
        let started = Instant::now();
        // Longer than the waits' 100 ms re-check, which must not end the wait early.
        let waiter = wait_on(kernel, a.addr(), Some(250));
        while !waiter.returned() && started.elapsed() < WAIT {
            set(&b);
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(waiter.join(), STATUS_TIMEOUT);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "a 250 ms wait ended after {took:?}");
        // A zero timeout only tests the state.
        let zero = 0i64;
        // SAFETY: an initialised event; a zero timeout polls at PASSIVE_LEVEL.
        let polled = unsafe { KeWaitForSingleObject(a.ptr().cast(), Executive, KernelMode, FALSE, &zero) };
        assert_eq!(polled, STATUS_TIMEOUT);
        set(&a);
        // SAFETY: as above.
        let polled = unsafe { KeWaitForSingleObject(a.ptr().cast(), Executive, KernelMode, FALSE, &zero) };
        assert_eq!(polled, STATUS_SUCCESS);
        assert_eq!(state(&a), 0, "a satisfied wait on a synchronization event resets it");
    });
}

#[test]
fn a_rundown_wait_ends_when_the_last_reference_goes() {
    in_kernel(|kernel| {
        let r: Object<EX_RUNDOWN_REF> = Object::zeroed();
        // SAFETY: our own storage, at its final address; two references taken.
        unsafe {
            ExInitializeRundownProtection(r.ptr());
            assert_eq!(ExAcquireRundownProtection(r.ptr()), 1);
            assert_eq!(ExAcquireRundownProtection(r.ptr()), 1);
        }
        let waiter = wait_for_rundown(kernel, r.addr());
        // SAFETY: rundown has begun: no new reference.
        assert_eq!(unsafe { ExAcquireRundownProtection(r.ptr()) }, 0);
        // SAFETY: the first of the two references taken above.
        unsafe { ExReleaseRundownProtection(r.ptr()) };
        thread::sleep(Duration::from_millis(150));
        assert!(!waiter.returned(), "the rundown wait ended with a reference held");
        let woken_before = waits_woken(kernel);
        // SAFETY: the last reference.
        unsafe { ExReleaseRundownProtection(r.ptr()) };
        assert_eq!(waiter.join(), STATUS_SUCCESS);
        assert_eq!(waits_woken(kernel), woken_before + 1, "the last reference going did not wake the waiter");
    });
}

#[test]
fn a_notification_timer_releases_every_waiter_and_a_synchronization_timer_one() {
    in_kernel(|kernel| {
        let n = timer(NotificationTimer);
        let waiters: Vec<Waiter> = (0..2).map(|_| wait_on(kernel, n.addr(), Some(10_000))).collect();
        let woken_before = waits_woken(kernel);
        // SAFETY: an initialised timer that outlives its expiry; no DPC.
        unsafe { KeSetTimer(n.ptr(), relative_timeout_ms(20), std::ptr::null_mut()) };
        for w in waiters {
            assert_eq!(w.join(), STATUS_SUCCESS);
        }
        assert_eq!(waits_woken(kernel), woken_before + 2);

        let s = timer(SynchronizationTimer);
        let mut waiters: Vec<Waiter> = (0..2).map(|_| wait_on(kernel, s.addr(), Some(1_000))).collect();
        let woken_before = waits_woken(kernel);
        // SAFETY: as above.
        unsafe { KeSetTimer(s.ptr(), relative_timeout_ms(20), std::ptr::null_mut()) };
        assert_eq!(first_to_return(&mut waiters), STATUS_SUCCESS);
        assert_eq!(waiters.remove(0).join(), STATUS_TIMEOUT, "a synchronization timer released two waiters");
        assert_eq!(waits_woken(kernel), woken_before + 1);
    });
}

/// One work item at a time: each wakes one system worker.
#[cfg(target_os = "linux")]
mod system_workers {
    use super::*;
    use wsktls_nt::{
        DEVICE_OBJECT, DelayedWorkQueue, IoAllocateWorkItem, IoFreeWorkItem, IoQueueWorkItem, PVOID,
    };

    /// The system workers' thread ids (the kernel names them ntsim-worker-N).
    fn worker_tids() -> Vec<u32> {
        let mut workers = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
            let task = task.expect("a task");
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with("ntsim-worker-") {
                workers.push(task.file_name().to_str().and_then(|n| n.parse().ok()).expect("a thread id"));
            }
        }
        workers
    }

    unsafe extern "system" fn set_done(_device: *mut DEVICE_OBJECT, context: PVOID) {
        // SAFETY: the test's event, alive until every item has run.
        unsafe { KeSetEvent(context.cast(), 0, FALSE) };
    }

    /// Work items queued one after another, each run before the next is queued.
    const ITEMS: u64 = 100;

    #[test]
    fn a_queued_work_item_wakes_one_system_worker() {
        in_kernel(|_| {
            // A thread names itself once it runs: wait for all four.
            let deadline = Instant::now() + WAIT;
            let workers = loop {
                let workers = worker_tids();
                if workers.len() == 4 || Instant::now() > deadline {
                    break workers;
                }
                thread::sleep(Duration::from_millis(1));
            };
            assert_eq!(workers.len(), 4, "ntsim boots four system workers");
            for &w in &workers {
                until_asleep(w);
            }
            // A stand-in device object: IoCreateDevice comes with the driver life cycle.
            let device = Box::new([0u64; 42]);
            // SAFETY: a non-NULL device pointer that outlives the item.
            let item = unsafe { IoAllocateWorkItem(device.as_ptr() as *mut DEVICE_OBJECT) };
            assert!(!item.is_null());
            let done = event(SynchronizationEvent);
            let before: u64 = workers.iter().map(|&w| sleeps(w)).sum();
            let timeout = relative_timeout_ms(5_000);
            for _ in 0..ITEMS {
                // SAFETY: our item, idle (its last routine has started); the event outlives it.
                let waited = unsafe {
                    IoQueueWorkItem(item, Some(set_done), DelayedWorkQueue, done.ptr().cast());
                    KeWaitForSingleObject(done.ptr().cast(), Executive, KernelMode, FALSE, &timeout)
                };
                assert_eq!(waited, STATUS_SUCCESS);
                // Time for the worker to go back to sleep: each item finds them all asleep.
                thread::sleep(Duration::from_millis(1));
            }
            // Let the last routine return before the item goes.
            thread::sleep(Duration::from_millis(20));
            let woken: u64 = workers.iter().map(|&w| sleeps(w)).sum::<u64>() - before;
            // SAFETY: idle, its routines returned.
            unsafe { IoFreeWorkItem(item) };
            // One worker wakes per item (a second at times, when the first is still on its
            // way back from the previous item). Waking every worker for each item, and
            // again when it was done, measured four per item.
            assert!(
                woken <= ITEMS * 2 + SLACK,
                "{ITEMS} work items run one at a time woke the system workers {woken} times"
            );
        });
    }
}
