//! An IRP owned by the WSK client: allocated once with one stack location (all a WSK call
//! needs), reused for every request, freed on drop. And the synchronous pattern for the
//! PASSIVE-level control calls: issue, wait for the completion routine's event, cancel on
//! timeout.

use core::ffi::c_void;
use core::ptr::NonNull;

use crate::nt::{
    Executive, FALSE, IRP, IoAllocateIrp, IoCancelIrp, IoFreeIrp, IoReuseIrp, IoSetCompletionRoutine, KEVENT,
    KeInitializeEvent, KeSetEvent, KeWaitForSingleObject, KernelMode, NTSTATUS, NotificationEvent,
    PIO_COMPLETION_ROUTINE, STATUS_INSUFFICIENT_RESOURCES, STATUS_MORE_PROCESSING_REQUIRED, STATUS_TIMEOUT,
    STATUS_UNSUCCESSFUL, relative_timeout_ms,
};

pub(crate) struct Irp(NonNull<IRP>);

// SAFETY: an IRP is a kernel object usable from any thread; ownership rules are the
// I/O manager's, which the users of this type follow.
unsafe impl Send for Irp {}
// SAFETY: as above; shared access only reads the status after completion.
unsafe impl Sync for Irp {}

/// What a completed request left in its IRP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) status: NTSTATUS,
    pub(crate) information: usize,
    /// The wait ran out and the request was cancelled.
    pub(crate) timed_out: bool,
}

impl Irp {
    /// IoAllocateIrp(1, FALSE). IRQL <= DISPATCH_LEVEL.
    pub(crate) fn allocate() -> Result<Irp, NTSTATUS> {
        // SAFETY: plain allocation; checked.
        let irp = unsafe { IoAllocateIrp(1, FALSE) };
        NonNull::new(irp).map(Irp).ok_or(STATUS_INSUFFICIENT_RESOURCES)
    }

    pub(crate) fn as_ptr(&self) -> *mut IRP {
        self.0.as_ptr()
    }

    /// Readies the IRP for the next call: IoReuseIrp, then our completion routine in the
    /// next stack location, invoked on success, error and cancel.
    ///
    /// # Safety
    /// The IRP is not in flight; `context` stays valid until `routine` runs.
    pub(crate) unsafe fn prepare(&self, routine: PIO_COMPLETION_ROUTINE, context: *mut c_void) {
        // SAFETY: per the caller, we own the idle IRP.
        unsafe {
            IoReuseIrp(self.as_ptr(), STATUS_UNSUCCESSFUL);
            IoSetCompletionRoutine(self.as_ptr(), routine, context, true, true, true);
        }
    }

    /// The final status and information. Meaningful once the request completed.
    pub(crate) fn outcome(&self) -> (NTSTATUS, usize) {
        // SAFETY: the IRP is ours and completed; IoStatus is plain data.
        unsafe {
            let s = &(*self.as_ptr()).IoStatus;
            (s.status(), s.Information)
        }
    }

    /// Issues one WSK call with this IRP and waits, at PASSIVE_LEVEL, for its completion
    /// routine. If `timeout_ms` passes first the IRP is cancelled and the wait continues
    /// until the provider completes it: the IRP is never left in flight. `issue` makes the
    /// call (its inline status is the completion routine's business) or returns `Err` when
    /// it did not, in which case there is nothing to wait for.
    pub(crate) fn call_and_wait(
        &self,
        timeout_ms: Option<u32>,
        issue: impl FnOnce(*mut IRP) -> Result<(), NTSTATUS>,
    ) -> Result<Outcome, NTSTATUS> {
        // SAFETY: a zeroed KEVENT is valid storage; it is initialised before use and, as a
        // kernel-mode wait on our own stack, stays resident until the wait ends.
        let mut event: KEVENT = unsafe { core::mem::zeroed() };
        let event_ptr: *mut KEVENT = &mut event;
        // SAFETY: initialising our own event; the IRP is idle (we own it between calls) and
        // the event outlives the request because we wait for completion below.
        unsafe {
            KeInitializeEvent(event_ptr, NotificationEvent, FALSE);
            self.prepare(Some(signal_event), event_ptr.cast());
        }
        issue(self.as_ptr())?;
        let timed_out = match timeout_ms {
            Some(ms) => {
                let timeout = relative_timeout_ms(ms);
                // SAFETY: waiting on our initialised event at PASSIVE_LEVEL.
                let waited = unsafe {
                    KeWaitForSingleObject(event_ptr.cast(), Executive, KernelMode, FALSE, &timeout)
                };
                waited == STATUS_TIMEOUT
            }
            None => false,
        };
        // SAFETY: the IRP is ours (allocated by us), so cancelling it is allowed; then we
        // wait without limit because the provider must complete a cancelled IRP.
        unsafe {
            if timed_out {
                IoCancelIrp(self.as_ptr());
            }
            KeWaitForSingleObject(event_ptr.cast(), Executive, KernelMode, FALSE, core::ptr::null());
        }
        let (status, information) = self.outcome();
        Ok(Outcome { status, information, timed_out })
    }
}

impl Drop for Irp {
    fn drop(&mut self) {
        // SAFETY: owners drop an Irp only when it is not in flight.
        unsafe { IoFreeIrp(self.as_ptr()) };
    }
}

/// Completion routine of the synchronous calls: wake the waiter, keep the IRP.
unsafe extern "system" fn signal_event(
    _device: *mut crate::nt::DEVICE_OBJECT,
    _irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: `context` is the waiter's event, alive until this signal is seen.
    unsafe { KeSetEvent(context.cast(), 0, FALSE) };
    STATUS_MORE_PROCESSING_REQUIRED
}
