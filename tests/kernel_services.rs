//! ntsim's timers, DPCs and work items, as the secure channel will use them (timeouts,
//! the handshake's work item): what runs, at which IRQL, and what the verifier says of
//! misuse. And the services the cryptography needs: the CNG random number generator, the
//! clocks, saving the extended processor state around vector code, and an expanded stack
//! for deep frames. And the debugger: DbgPrintEx, and KeBugCheckEx, which stops the machine.

mod common;

use std::ffi::c_void;
use std::process::Command;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ntsim::{Kernel, Rule, with_irql};
use wsktls::nt::{
    APC_LEVEL, BCRYPT_USE_SYSTEM_PREFERRED_RNG, BCryptGenRandom, DEBUG_PRINT_LIMIT, DEVICE_OBJECT,
    DISPATCH_LEVEL, DPFLTR_ERROR_LEVEL, DPFLTR_IHVNETWORK_ID, DPFLTR_INFO_LEVEL, DPFLTR_TRACE_LEVEL,
    DPFLTR_WARNING_LEVEL, DbgPrintEx, DelayedWorkQueue, Executive, FALSE, IO_WORKITEM, IoAllocateWorkItem,
    IoFreeWorkItem, IoQueueWorkItem, KDPC, KTIMER, KeBugCheckEx, KeCancelTimer, KeFlushQueuedDpcs,
    KeGetCurrentIrql, KeInitializeDpc, KeInitializeTimerEx, KeQueryInterruptTimePrecise,
    KeQuerySystemTimePrecise, KeRestoreExtendedProcessorState, KeSaveExtendedProcessorState, KeSetTimer,
    KeWaitForSingleObject, KernelMode, MAXIMUM_EXPANSION_SIZE, NotificationTimer, PASSIVE_LEVEL, PoolBox,
    STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, STATUS_TIMEOUT,
    SYSTEM_TIME_UNITS_PER_SECOND, UNIX_EPOCH_AS_SYSTEM_TIME, XSTATE_MASK_AVX, XSTATE_MASK_AVX512,
    XSTATE_MASK_LEGACY, XSTATE_SAVE, debug_print, interrupt_time_100ns, relative_timeout_ms, system_random,
    system_time_to_unix_seconds, unix_time_seconds, with_expanded_stack,
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

#[test]
fn system_rng_fills_every_byte_and_differs_between_calls() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        system_random(&mut a).expect("PASSIVE_LEVEL, system-preferred RNG");
        system_random(&mut b).expect("again");
        assert_ne!(a, [0u8; 64]);
        assert_ne!(a, b, "two draws of 512 bits never repeat");
        let mut big = vec![0u8; 64 * 1024];
        system_random(&mut big).expect("a large draw");
        let zeros = big.iter().filter(|&&x| x == 0).count();
        assert!(zeros < 512, "{zeros} zero bytes: about 256 expected when every byte is written");
    }
    let stats = kernel.stats();
    assert_eq!((stats.rng_calls, stats.rng_bytes), (3, 64 + 64 + 64 * 1024));
    kernel.finish();
}

#[test]
fn system_rng_refuses_a_provider_handle_a_missing_flag_and_a_null_buffer() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut buf = [0u8; 16];
        let mut not_a_provider = 0u64;
        let handle: *mut c_void = (&mut not_a_provider as *mut u64).cast();
        let null = std::ptr::null_mut();
        // SAFETY: each call gets a writable 16-byte buffer or NULL; the failures are the test.
        unsafe {
            assert_eq!(BCryptGenRandom(handle, buf.as_mut_ptr(), 16, 0), STATUS_INVALID_HANDLE);
            assert_eq!(BCryptGenRandom(null, buf.as_mut_ptr(), 16, 0), STATUS_INVALID_HANDLE);
            let preferred = BCRYPT_USE_SYSTEM_PREFERRED_RNG;
            assert_eq!(
                BCryptGenRandom(null, buf.as_mut_ptr(), 16, preferred | 0x100),
                STATUS_INVALID_PARAMETER
            );
            assert_eq!(BCryptGenRandom(null, std::ptr::null_mut(), 16, preferred), STATUS_INVALID_PARAMETER);
            assert_eq!(BCryptGenRandom(null, std::ptr::null_mut(), 0, preferred), STATUS_SUCCESS);
        }
        assert_eq!(buf, [0u8; 16], "no failed call wrote a byte");
    }
    kernel.finish();
}

#[test]
fn system_time_is_the_wall_clock_counted_in_100ns_from_1601() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        let ours = unix_time_seconds().expect("the clock reads after 1970");
        assert!(ours.abs_diff(wall) <= 2, "ntsim {ours} s, std {wall} s");
        let mut raw = 0i64;
        // SAFETY: writes our LARGE_INTEGER.
        unsafe { KeQuerySystemTimePrecise(&mut raw) };
        let from_raw = system_time_to_unix_seconds(raw).expect("after 1970");
        assert!(from_raw.abs_diff(wall) <= 2, "raw {raw} is {from_raw} s since 1970, std says {wall} s");
        let at_dispatch = with_irql(DISPATCH_LEVEL, "the test", unix_time_seconds);
        assert!(at_dispatch.is_some_and(|t| t.abs_diff(wall) <= 2), "readable at DISPATCH_LEVEL too");
    }
    kernel.finish();
}

#[test]
fn unix_time_conversion_counts_369_years_from_1601_and_refuses_earlier_times() {
    // 1601-01-01 to 1970-01-01: 369 years, 89 of them leap years.
    let days = 369 * 365 + 89;
    assert_eq!(UNIX_EPOCH_AS_SYSTEM_TIME, days * 86_400 * SYSTEM_TIME_UNITS_PER_SECOND);
    assert_eq!(system_time_to_unix_seconds(UNIX_EPOCH_AS_SYSTEM_TIME), Some(0));
    assert_eq!(system_time_to_unix_seconds(UNIX_EPOCH_AS_SYSTEM_TIME + 25_000_000), Some(2));
    assert_eq!(system_time_to_unix_seconds(UNIX_EPOCH_AS_SYSTEM_TIME - 1), None);
    assert_eq!(system_time_to_unix_seconds(i64::MIN), None);
}

#[test]
fn interrupt_time_is_monotonic_in_100ns_units_and_stamps_its_qpc_value() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut last = interrupt_time_100ns();
        for _ in 0..10_000 {
            let now = interrupt_time_100ns();
            assert!(now >= last, "interrupt time went back from {last} to {now}");
            last = now;
        }
        let outer = Instant::now();
        let before = interrupt_time_100ns();
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = interrupt_time_100ns() - before;
        let real = outer.elapsed().as_nanos() as u64 / 100;
        assert!((500_000..=real).contains(&elapsed), "50 ms sleep: {elapsed} units, at most {real}");
        let mut qpc = 0u64;
        // SAFETY: writes our ULONG64.
        let now = unsafe { KeQueryInterruptTimePrecise(&mut qpc) };
        assert_eq!(qpc, now, "ntsim's performance counter runs at 10 MHz");
        assert!(with_irql(DISPATCH_LEVEL, "the test", interrupt_time_100ns) >= now);
    }
    kernel.finish();
}

#[test]
fn extended_state_saves_nest_link_to_each_other_and_restore_cleanly() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut outer = XSTATE_SAVE::zeroed();
        let mut inner = XSTATE_SAVE::zeroed();
        let (outer, inner): (*mut XSTATE_SAVE, *mut XSTATE_SAVE) = (&mut outer, &mut inner);
        // SAFETY: saves into our own storage, restored innermost first, each at the IRQL
        // of its save; the fields are read between save and restore.
        unsafe {
            assert_eq!(
                KeSaveExtendedProcessorState(XSTATE_MASK_LEGACY | XSTATE_MASK_AVX, outer),
                STATUS_SUCCESS
            );
            assert!((*outer).Prev.is_null(), "the thread's first save");
            assert_eq!((*outer).Level, PASSIVE_LEVEL);
            with_irql(DISPATCH_LEVEL, "the test", || {
                assert_eq!(KeSaveExtendedProcessorState(XSTATE_MASK_AVX512, inner), STATUS_SUCCESS);
                assert_eq!((*inner).Prev, outer, "a nested save links to the one it is nested in");
                assert_eq!((*inner).Thread, (*outer).Thread);
                assert_eq!((*inner).Level, DISPATCH_LEVEL);
                assert_eq!((*inner).XStateContext.Mask, XSTATE_MASK_AVX512);
                KeRestoreExtendedProcessorState(inner);
            });
            KeRestoreExtendedProcessorState(outer);
        }
    }
    let stats = kernel.stats();
    assert_eq!((stats.xstate_saves, stats.xstate_restores), (2, 2));
    kernel.finish();
}

unsafe extern "system" fn save_and_restore_work(device: *mut DEVICE_OBJECT, context: *mut c_void) {
    let mut save = XSTATE_SAVE::zeroed();
    // SAFETY: a save into this frame's storage, restored before returning.
    unsafe {
        if KeSaveExtendedProcessorState(XSTATE_MASK_LEGACY | XSTATE_MASK_AVX, &mut save) == STATUS_SUCCESS {
            KeRestoreExtendedProcessorState(&mut save);
        }
        count_work(device, context);
    }
}

#[test]
fn work_item_that_restores_what_it_saved_is_clean() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let seen = Seen::default();
        let device = device();
        let item = work_item(&device);
        // SAFETY: queuing our idle item with a context that outlives it.
        unsafe {
            IoQueueWorkItem(
                item,
                Some(save_and_restore_work),
                DelayedWorkQueue,
                &seen as *const Seen as *mut c_void,
            )
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.runs.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen.runs.load(Ordering::SeqCst), 1);
        // SAFETY: the routine has run; the item is idle.
        unsafe { IoFreeWorkItem(item) };
    }
    assert_eq!(kernel.stats().xstate_saves, 1);
    kernel.finish();
}

#[test]
fn debug_print_reaches_the_debugger_with_its_level_and_text() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        debug_print(DPFLTR_INFO_LEVEL, "channel open: 100% of the handshake done\n");
        debug_print(DPFLTR_ERROR_LEVEL, &"peer said: goodbye"[..9]);
        debug_print(DPFLTR_TRACE_LEVEL, &"x".repeat(DEBUG_PRINT_LIMIT + 100));
        with_irql(DISPATCH_LEVEL, "the test", || debug_print(DPFLTR_WARNING_LEVEL, "from a DPC"));
        // SAFETY: a NUL-terminated format without conversions, and no arguments.
        unsafe { DbgPrintEx(DPFLTR_IHVNETWORK_ID, DPFLTR_WARNING_LEVEL, c"a plain line\n".as_ptr().cast()) };
    }
    let messages = kernel.debug_messages();
    let expected: [(u32, &str); 5] = [
        (DPFLTR_INFO_LEVEL, "channel open: 100% of the handshake done\n"),
        (DPFLTR_ERROR_LEVEL, "peer said"),
        (DPFLTR_TRACE_LEVEL, &"x".repeat(DEBUG_PRINT_LIMIT)),
        (DPFLTR_WARNING_LEVEL, "from a DPC"),
        (DPFLTR_WARNING_LEVEL, "a plain line\n"),
    ];
    let messages: Vec<(u32, &str)> = messages.iter().map(|(level, text)| (*level, text.as_str())).collect();
    assert_eq!(messages, expected, "a `%` prints as itself, a slice ends where it ends, 512 bytes at most");
    assert_eq!(kernel.stats().debug_prints, 5);
    kernel.finish();
}

#[test]
fn expanded_stack_runs_the_closure_here_and_returns_its_value() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let caller = std::thread::current().id();
        let mut borrowed = 0u32;
        let result = with_expanded_stack(MAXIMUM_EXPANSION_SIZE, || {
            // A frame as wide as RSA signing's (~10.5 KB), which a 24 KiB stack can't spare.
            let wide = std::hint::black_box([7u8; 12 * 1024]);
            borrowed += 1;
            // SAFETY: reading this thread's IRQL.
            let irql = unsafe { KeGetCurrentIrql() };
            (std::thread::current().id(), irql, wide.iter().map(|&b| u32::from(b)).sum::<u32>())
        });
        assert_eq!(result, Ok((caller, PASSIVE_LEVEL, 7 * 12 * 1024)));
        assert_eq!(borrowed, 1, "the closure ran once and could borrow from its caller");
        // SAFETY: reading this thread's IRQL.
        let irql = || unsafe { KeGetCurrentIrql() };
        let at_apc = with_irql(APC_LEVEL, "the test", || with_expanded_stack(4096, irql));
        assert_eq!(at_apc, Ok(APC_LEVEL), "the callout runs at the caller's IRQL");
    }
    assert_eq!(kernel.stats().stack_expansions, 2);
    kernel.finish();
}

/// Set in the child process of [`bugcheck_stops_the_machine_and_names_its_code`].
const BUGCHECK_CHILD: &str = "NTSIM_BUGCHECK_CHILD";

/// KeBugCheckEx never returns, and ntsim's cannot unwind: it aborts the process. So the
/// test runs its own binary again, as a child that bug-checks, and reads how it died.
#[test]
fn bugcheck_stops_the_machine_and_names_its_code() {
    const NAME: &str = "bugcheck_stops_the_machine_and_names_its_code";
    // A code no Windows bug check uses.
    const CODE: u32 = 0xE7A5_0001;
    if std::env::var_os(BUGCHECK_CHILD).is_some() {
        let kernel = Kernel::boot();
        let _in = kernel.enter();
        // SAFETY: stopping the machine is the test.
        unsafe { KeBugCheckEx(CODE, 1, 2, 3, 0xDEAD) };
    }
    let child = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([NAME, "--exact", "--nocapture"])
        .env(BUGCHECK_CHILD, "1")
        .output()
        .expect("run the test binary again");
    let stderr = String::from_utf8_lossy(&child.stderr);
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(!child.status.success(), "the child must not finish: {}\n{stdout}\n{stderr}", child.status);
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        const SIGABRT: i32 = 6;
        assert_eq!(child.status.signal(), Some(SIGABRT), "{stderr}");
    }
    assert!(stdout.contains("running 1 test"), "the child ran this test: {stdout}");
    assert!(stderr.contains("BUGCHECK 0xE7A50001 (0x1, 0x2, 0x3, 0xdead)"), "{stderr}");
}
