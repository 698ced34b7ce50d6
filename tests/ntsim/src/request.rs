//! The IRPs the I/O and PnP managers send themselves (PnP minor functions, create,
//! cleanup, close) and wait for: one IRP sized for the stack, one completion routine that
//! wakes the waiting thread, the status read back, the IRP freed.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use wsktls_nt::{
    DEVICE_OBJECT, FILE_OBJECT, IO_STACK_LOCATION, IRP, IoGetNextIrpStackLocation, IoSetCompletionRoutine,
    KPROCESSOR_MODE, KernelMode, NTSTATUS, PVOID, STATUS_INSUFFICIENT_RESOURCES, STATUS_IO_TIMEOUT,
    STATUS_MORE_PROCESSING_REQUIRED,
};

use crate::device::{IRP_WAIT, IofCallDriver};
use crate::io::{IoFreeIrp, new_irp};
use crate::kernel::{lock, wait};
use crate::verifier::{Rule, report};

/// What goes in the stack location of the device the IRP is sent to.
pub(crate) struct Request {
    pub(crate) major: u8,
    pub(crate) minor: u8,
    pub(crate) file: *mut FILE_OBJECT,
    pub(crate) mode: KPROCESSOR_MODE,
    /// IoStatus before the call: PnP IRPs start at STATUS_NOT_SUPPORTED.
    pub(crate) initial: NTSTATUS,
}

impl Request {
    pub(crate) fn new(major: u8, minor: u8, initial: NTSTATUS) -> Request {
        Request { major, minor, file: std::ptr::null_mut(), mode: KernelMode, initial }
    }
}

#[derive(Default)]
struct Done {
    done: Mutex<bool>,
    cv: Condvar,
}

/// Sends `request` to `device` (the top of its stack) and waits for it to complete.
/// Returns the IRP's final status; an IRP not completed in [`IRP_WAIT`] is reported and
/// left in flight.
pub(crate) fn send_and_wait(device: *mut DEVICE_OBJECT, request: &Request) -> NTSTATUS {
    // SAFETY: the caller holds a reference to `device` (a live device of a stack).
    let irp = new_irp(unsafe { (*device).StackSize });
    if irp.is_null() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let done = Arc::new(Done::default());
    // SAFETY: a fresh IRP with StackSize locations; the next one is the device's.
    unsafe { prepare(irp, request, Arc::into_raw(Arc::clone(&done)) as PVOID) };
    // SAFETY: as above; the completion routine owns one reference to `done`.
    unsafe { IofCallDriver(device, irp) };
    if !wait_done(&done) {
        report(
            Rule::IrpNeverCompleted,
            format!(
                "IRP {irp:?} (major {:#x}, minor {:#x}) sent to device {device:?} did not complete in {IRP_WAIT:?}",
                request.major, request.minor
            ),
        );
        return STATUS_IO_TIMEOUT;
    }
    // SAFETY: completed, and handed back to us by the completion routine.
    unsafe {
        let status = (*irp).IoStatus.status();
        IoFreeIrp(irp);
        status
    }
}

unsafe fn prepare(irp: *mut IRP, request: &Request, context: PVOID) {
    // SAFETY: per the caller.
    unsafe {
        (*irp).IoStatus.set(request.initial, 0);
        (*irp).RequestorMode = request.mode;
        (*irp).Tail.Overlay.OriginalFileObject = request.file;
        let sp: *mut IO_STACK_LOCATION = IoGetNextIrpStackLocation(irp);
        (*sp).MajorFunction = request.major;
        (*sp).MinorFunction = request.minor;
        (*sp).FileObject = request.file;
        IoSetCompletionRoutine(irp, Some(completed), context, true, true, true);
    }
}

fn wait_done(done: &Done) -> bool {
    let deadline = Instant::now() + IRP_WAIT;
    let mut g = lock(&done.done);
    while !*g {
        match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => g = wait(&done.cv, g, left),
            _ => return false,
        }
    }
    true
}

unsafe extern "system" fn completed(_device: *mut DEVICE_OBJECT, _irp: *mut IRP, context: PVOID) -> NTSTATUS {
    // SAFETY: the reference send_and_wait gave this routine.
    let done = unsafe { Arc::from_raw(context as *const Done) };
    *lock(&done.done) = true;
    done.cv.notify_all();
    STATUS_MORE_PROCESSING_REQUIRED
}
