//! Consumer IRPs whose completions are counted: every one must complete exactly once, with
//! the status its call returned when the call did not return STATUS_PENDING, and marked
//! pending when it did.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use wsktls::nt::{
    DEVICE_OBJECT, FALSE, IRP, IoAllocateIrp, IoReuseIrp, IoSetCompletionRoutine, IoSetNextIrpStackLocation,
    NTSTATUS, STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING, STATUS_UNSUCCESSFUL,
};

/// Signalled on every completion, so waiters need not poll.
static COMPLETED: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// What the completion routine saw.
#[derive(Default)]
pub struct Track {
    pub count: AtomicU32,
    pub status: AtomicI32,
    pub information: AtomicUsize,
    pub pending_returned: AtomicBool,
}

/// How the consumer made the IRP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// `n` (1..=4) stack locations, the consumer's routine in the next one.
    Locations(i8),
    /// One location, already used by the consumer itself: none left for wsktls.
    NoneLeft,
}

/// A consumer IRP and what its completion routine saw. Freed on drop, which panics (a
/// finding) if the IRP has not completed: freeing it would be a use-after-free by wsktls.
pub struct Tracked {
    pub irp: *mut IRP,
    pub track: Box<Track>,
    pub stack: Stack,
    /// What the call returned (set by [`Tracked::returned`]).
    pub returned: Option<NTSTATUS>,
}

unsafe extern "system" fn completed(_d: *mut DEVICE_OBJECT, irp: *mut IRP, context: *mut c_void) -> NTSTATUS {
    // SAFETY: the Track box `Tracked` passed, alive until the IRP completed (Tracked's drop
    // waits for that); the IRP is the one completing.
    unsafe {
        let t = &*context.cast::<Track>();
        t.status.store((*irp).IoStatus.status().0, Ordering::Release);
        t.information.store((*irp).IoStatus.Information, Ordering::Release);
        t.pending_returned.store((*irp).PendingReturned != 0, Ordering::Release);
        t.count.fetch_add(1, Ordering::AcqRel);
    }
    let (lock, cv) = &COMPLETED;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    cv.notify_all();
    STATUS_MORE_PROCESSING_REQUIRED
}

impl Tracked {
    pub fn new(stack: Stack) -> Tracked {
        let track = Box::<Track>::default();
        let size = match stack {
            Stack::Locations(n) => n.clamp(1, 4),
            Stack::NoneLeft => 1,
        };
        let irp = take_idle(size);
        // SAFETY: an idle IRP of ours (fresh, or completed long enough ago); our routine
        // and context, which outlive its use.
        unsafe {
            IoReuseIrp(irp, STATUS_UNSUCCESSFUL);
            let ctx = &*track as *const Track as *mut c_void;
            IoSetCompletionRoutine(irp, Some(completed), ctx, true, true, true);
            if stack == Stack::NoneLeft {
                IoSetNextIrpStackLocation(irp);
            }
        }
        Tracked { irp, track, stack, returned: None }
    }

    pub fn count(&self) -> u32 {
        self.track.count.load(Ordering::Acquire)
    }

    pub fn status(&self) -> NTSTATUS {
        NTSTATUS(self.track.status.load(Ordering::Acquire))
    }

    pub fn information(&self) -> usize {
        self.track.information.load(Ordering::Acquire)
    }

    /// Records what the call returned and checks WskSend's convention: a status other
    /// than STATUS_PENDING means the IRP already completed, once, with that status.
    pub fn returned(&mut self, what: &str, status: NTSTATUS) {
        self.returned = Some(status);
        if status != STATUS_PENDING {
            let n = self.count();
            assert_eq!(n, 1, "{what}: returned {status:?} but the IRP completed {n} times by then");
            assert_eq!(self.status(), status, "{what}: returned {status:?}, completed with another status");
        }
    }

    /// Waits until the IRP has completed; false after `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.count() > 0)
    }

    /// After completion: exactly once, and a pended IRP says so.
    pub fn check_completed(&self, what: &str) {
        let n = self.count();
        assert_eq!(n, 1, "{what}: the IRP completed {n} times");
        if self.returned == Some(STATUS_PENDING) {
            assert!(
                self.track.pending_returned.load(Ordering::Acquire),
                "{what}: returned STATUS_PENDING but the IRP completed without PendingReturned"
            );
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.count() == 0 && !std::thread::panicking() {
            panic!("a consumer IRP was never completed (returned {:?})", self.returned);
        }
        if self.count() > 0 {
            // Completed, so ours again: back to the pool, to be reused a while later.
            lock(&POOL).resting.push((self.irp as usize, Instant::now()));
        }
        // One that never completed stays where it is (the harness is failing anyway).
    }
}

/// The harness's IRPs, never freed: reused with IoReuseIrp. ntsim's IofCompleteRequest
/// still reads an IRP (its CurrentLocation, tests/ntsim/src/io.rs walk_completion) after
/// its completion routine returned STATUS_MORE_PROCESSING_REQUIRED, which Windows never
/// does. An owner that frees or reuses the IRP as soon as its routine signalled, from
/// another thread, races with that read: freed, it is a use-after-free (AddressSanitizer
/// reports it, in wsktls's own socket IRPs too); reallocated at the same address and
/// taken by a driver, ntsim marks the new IRP in flight again and later reports a
/// spurious "IoFreeIrp while the IRP is in flight". So the harness never frees its IRPs
/// (no freed driver IRP's address can become one of them) and reuses each only a while
/// after it completed.
struct Pool {
    /// (IRP, its stack size) made so far.
    all: Vec<(usize, i8)>,
    /// Completed IRPs and when they were given back.
    resting: Vec<(usize, Instant)>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { all: Vec::new(), resting: Vec::new() });

/// How long after its completion an IRP may be used again.
const REST: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn take_idle(size: i8) -> *mut IRP {
    let mut pool = lock(&POOL);
    let now = Instant::now();
    let Pool { all, resting } = &mut *pool;
    let found = resting.iter().position(|&(irp, since)| {
        now.duration_since(since) >= REST && all.iter().any(|&(a, s)| a == irp && s == size)
    });
    if let Some(i) = found {
        return resting.swap_remove(i).0 as *mut IRP;
    }
    // SAFETY: plain allocation.
    let irp = unsafe { IoAllocateIrp(size, FALSE) };
    assert!(!irp.is_null(), "IoAllocateIrp failed (no fault injection here)");
    all.push((irp as usize, size));
    irp
}

/// IRPs the harness holds (idle or in use): the kernel counts them, the driver has none
/// of them.
pub fn harness_irps() -> usize {
    lock(&POOL).all.len()
}

/// Waits until `done()` holds, woken by completions; false after `timeout`.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let (lock, cv) = &COMPLETED;
    let mut seen = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // Bounded waits: a completion may land between `done()` and the wait.
        let step = (deadline - now).min(Duration::from_millis(5));
        seen = cv.wait_timeout(seen, step).unwrap_or_else(|e| e.into_inner()).0;
    }
}
