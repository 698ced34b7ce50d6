//! The I/O manager: IRP, IO_STACK_LOCATION, IO_STATUS_BLOCK, completion and cancel
//! routines, the imported Io* functions and the wdm.h inlines that move through an
//! IRP's stack locations.

use core::ffi::c_void;
use core::mem::size_of;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::{
    BOOLEAN, CCHAR, CSHORT, DRIVER_OBJECT, KDPC, KEVENT, KIRQL, KPROCESSOR_MODE, LIST_ENTRY, MDL, NTSTATUS,
    PVOID, ULONG_PTR,
};

/// `IO_TYPE_IRP`: the `Type` of every IRP.
pub const IO_TYPE_IRP: CSHORT = 6;
/// `IO_NO_INCREMENT`: the priority boost for completions that waited on nothing.
pub const IO_NO_INCREMENT: CCHAR = 0;
/// `IO_NETWORK_INCREMENT`.
pub const IO_NETWORK_INCREMENT: CCHAR = 2;

/// IO_STACK_LOCATION.Control bits.
pub const SL_PENDING_RETURNED: u8 = 0x01;
pub const SL_INVOKE_ON_CANCEL: u8 = 0x20;
pub const SL_INVOKE_ON_SUCCESS: u8 = 0x40;
pub const SL_INVOKE_ON_ERROR: u8 = 0x80;

/// IRP major function codes the driver dispatches or builds.
pub const IRP_MJ_CREATE: u8 = 0x00;
pub const IRP_MJ_CLOSE: u8 = 0x02;
pub const IRP_MJ_DEVICE_CONTROL: u8 = 0x0e;
pub const IRP_MJ_INTERNAL_DEVICE_CONTROL: u8 = 0x0f;
pub const IRP_MJ_CLEANUP: u8 = 0x12;
pub const IRP_MJ_POWER: u8 = 0x16;
pub const IRP_MJ_SYSTEM_CONTROL: u8 = 0x17;
pub const IRP_MJ_PNP: u8 = 0x1b;
/// `IRP_MJ_MAXIMUM_FUNCTION`: the highest major function code; `DRIVER_OBJECT.MajorFunction`
/// has one entry per code, `IRP_MJ_MAXIMUM_FUNCTION + 1` in all.
pub const IRP_MJ_MAXIMUM_FUNCTION: u8 = 0x1b;

/// A device object (wdm.h), 0x150 bytes on x64 (DECLSPEC_ALIGN(MEMORY_ALLOCATION_ALIGNMENT),
/// which MinGW's header leaves out). The I/O manager allocates it with the driver's
/// extension behind it (IoCreateDevice); the driver reads `DeviceExtension`, sets `Flags`
/// and `StackSize` while creating it, and leaves the rest alone.
#[repr(C, align(16))]
pub struct DEVICE_OBJECT {
    pub Type: CSHORT,
    pub Size: u16,
    pub ReferenceCount: i32,
    pub DriverObject: *mut DRIVER_OBJECT,
    pub NextDevice: *mut DEVICE_OBJECT,
    /// The device attached above this one, if any.
    pub AttachedDevice: *mut DEVICE_OBJECT,
    pub CurrentIrp: *mut IRP,
    pub Timer: PVOID,
    /// `DO_*` flags: AddDevice clears DO_DEVICE_INITIALIZING.
    pub Flags: u32,
    pub Characteristics: u32,
    pub Vpb: PVOID,
    /// The driver's own per-device storage.
    pub DeviceExtension: PVOID,
    pub DeviceType: u32,
    /// Stack locations an IRP sent to this device needs (one more than the device below).
    pub StackSize: CCHAR,
    /// WAIT_CONTEXT_BLOCK / LIST_ENTRY union: the I/O manager's.
    pub Queue: [u64; 9],
    pub AlignmentRequirement: u32,
    /// KDEVICE_QUEUE: the I/O manager's.
    pub DeviceQueue: [u64; 5],
    pub Dpc: KDPC,
    pub ActiveThreadCount: u32,
    pub SecurityDescriptor: PVOID,
    pub DeviceLock: KEVENT,
    pub SectorSize: u16,
    pub Spare1: u16,
    pub DeviceObjectExtension: PVOID,
    pub Reserved: PVOID,
}

/// A file object (wdm.h), 0xD8 bytes on x64; what a consumer's open of wsktls's device
/// makes. wsktls reads the fields up to `FsContext2` (its per-open state goes there).
#[repr(C)]
pub struct FILE_OBJECT {
    pub Type: CSHORT,
    pub Size: CSHORT,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub Vpb: PVOID,
    pub FsContext: PVOID,
    pub FsContext2: PVOID,
    /// The rest (section pointers, flags, the file name, locks...): the I/O manager's.
    pub _Rest: [u64; 22],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union IO_STATUS_BLOCK_0 {
    pub Status: NTSTATUS,
    pub Pointer: PVOID,
}

/// The final status of a request and its request-specific information
/// (bytes transferred, or the new socket for WskSocketConnect).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IO_STATUS_BLOCK {
    pub u: IO_STATUS_BLOCK_0,
    pub Information: ULONG_PTR,
}

impl IO_STATUS_BLOCK {
    #[inline]
    pub fn status(&self) -> NTSTATUS {
        // SAFETY: both union members are plain data; the low 32 bits are always a valid i32.
        unsafe { self.u.Status }
    }

    #[inline]
    pub fn set(&mut self, status: NTSTATUS, information: ULONG_PTR) {
        self.u = IO_STATUS_BLOCK_0 { Pointer: core::ptr::null_mut() };
        self.u.Status = status;
        self.Information = information;
    }
}

/// `IO_COMPLETION_ROUTINE`. Runs at IRQL <= DISPATCH_LEVEL.
pub type PIO_COMPLETION_ROUTINE =
    Option<unsafe extern "system" fn(device: *mut DEVICE_OBJECT, irp: *mut IRP, context: PVOID) -> NTSTATUS>;

/// `DRIVER_CANCEL`. Called with the cancel spin lock held, at DISPATCH_LEVEL.
pub type PDRIVER_CANCEL = Option<unsafe extern "system" fn(device: *mut DEVICE_OBJECT, irp: *mut IRP)>;

#[repr(C)]
#[derive(Clone, Copy)]
pub union IRP_AssociatedIrp {
    pub MasterIrp: *mut IRP,
    pub IrpCount: i32,
    pub SystemBuffer: PVOID,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IRP_AsynchronousParameters {
    pub UserApcRoutine: PVOID,
    pub UserApcContext: PVOID,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union IRP_Overlay {
    pub AsynchronousParameters: IRP_AsynchronousParameters,
    pub AllocationSize: i64,
}

/// `Irp->Tail.Overlay`: where a driver that owns the IRP keeps its per-request state.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IRP_TailOverlay {
    /// Four pointers for the current owner (union with the device queue entry).
    pub DriverContext: [PVOID; 4],
    pub Thread: PVOID,
    pub AuxiliaryBuffer: *mut u8,
    pub ListEntry: LIST_ENTRY,
    /// Union with `PacketType`.
    pub CurrentStackLocation: *mut IO_STACK_LOCATION,
    pub OriginalFileObject: *mut FILE_OBJECT,
}

impl Clone for LIST_ENTRY {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for LIST_ENTRY {}

/// `KAPC`, opaque: only its size matters here (it is the largest member of `Irp->Tail`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KAPC {
    _opaque: [u64; 11],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union IRP_Tail {
    pub Overlay: IRP_TailOverlay,
    pub Apc: KAPC,
    pub CompletionKey: PVOID,
}

/// The I/O request packet (wdm.h), 208 bytes on x64, followed in memory by its
/// `StackCount` stack locations.
#[repr(C)]
pub struct IRP {
    pub Type: CSHORT,
    pub Size: u16,
    pub MdlAddress: *mut MDL,
    pub Flags: u32,
    pub AssociatedIrp: IRP_AssociatedIrp,
    pub ThreadListEntry: LIST_ENTRY,
    pub IoStatus: IO_STATUS_BLOCK,
    pub RequestorMode: KPROCESSOR_MODE,
    pub PendingReturned: BOOLEAN,
    pub StackCount: CCHAR,
    pub CurrentLocation: CCHAR,
    pub Cancel: BOOLEAN,
    pub CancelIrql: KIRQL,
    pub ApcEnvironment: CCHAR,
    pub AllocationFlags: u8,
    /// Union with `IoRingContext`.
    pub UserIosb: *mut IO_STATUS_BLOCK,
    pub UserEvent: *mut KEVENT,
    pub Overlay: IRP_Overlay,
    /// Written with interlocked exchanges only (`IoSetCancelRoutine`, `IoCancelIrp`).
    pub CancelRoutine: PDRIVER_CANCEL,
    pub UserBuffer: PVOID,
    pub Tail: IRP_Tail,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IO_STACK_LOCATION_Others {
    pub Argument1: PVOID,
    pub Argument2: PVOID,
    pub Argument3: PVOID,
    pub Argument4: PVOID,
}

/// `Parameters.DeviceIoControl`; each ULONG is POINTER_ALIGNMENT in wdm.h.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IO_STACK_LOCATION_DeviceIoControl {
    pub OutputBufferLength: u32,
    _pad0: u32,
    pub InputBufferLength: u32,
    _pad1: u32,
    pub IoControlCode: u32,
    _pad2: u32,
    pub Type3InputBuffer: PVOID,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union IO_STACK_LOCATION_Parameters {
    pub Others: IO_STACK_LOCATION_Others,
    pub DeviceIoControl: IO_STACK_LOCATION_DeviceIoControl,
}

/// One driver's view of an IRP (wdm.h), 72 bytes on x64.
#[repr(C)]
pub struct IO_STACK_LOCATION {
    pub MajorFunction: u8,
    pub MinorFunction: u8,
    pub Flags: u8,
    pub Control: u8,
    pub Parameters: IO_STACK_LOCATION_Parameters,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub FileObject: *mut FILE_OBJECT,
    pub CompletionRoutine: PIO_COMPLETION_ROUTINE,
    pub Context: PVOID,
}

/// A work item, opaque: the I/O manager's, allocated by `IoAllocateWorkItem`.
#[repr(C)]
pub struct IO_WORKITEM {
    _opaque: [u8; 0],
}

/// `IO_WORKITEM_ROUTINE`: runs at PASSIVE_LEVEL on a system worker thread.
pub type PIO_WORKITEM_ROUTINE =
    Option<unsafe extern "system" fn(DeviceObject: *mut DEVICE_OBJECT, Context: PVOID)>;

/// WORK_QUEUE_TYPE.
pub type WORK_QUEUE_TYPE = i32;
pub const CriticalWorkQueue: WORK_QUEUE_TYPE = 0;
pub const DelayedWorkQueue: WORK_QUEUE_TYPE = 1;

unsafe extern "system" {
    /// Allocates a work item that keeps `DeviceObject` (and its driver) loaded while
    /// queued. IRQL <= DISPATCH_LEVEL. NULL on failure.
    pub fn IoAllocateWorkItem(DeviceObject: *mut DEVICE_OBJECT) -> *mut IO_WORKITEM;
    pub fn IoFreeWorkItem(IoWorkItem: *mut IO_WORKITEM);
    /// Queues the item to run `WorkerRoutine(DeviceObject, Context)` at PASSIVE_LEVEL.
    /// An item must not be queued again until its routine has started.
    pub fn IoQueueWorkItem(
        IoWorkItem: *mut IO_WORKITEM,
        WorkerRoutine: PIO_WORKITEM_ROUTINE,
        QueueType: WORK_QUEUE_TYPE,
        Context: PVOID,
    );

    /// Allocates and initialises an IRP with `StackSize` stack locations. NULL on failure.
    pub fn IoAllocateIrp(StackSize: CCHAR, ChargeQuota: BOOLEAN) -> *mut IRP;
    /// Frees an IRP from `IoAllocateIrp` that is not in flight.
    pub fn IoFreeIrp(Irp: *mut IRP);
    /// Reinitialises a completed IRP for another request.
    pub fn IoReuseIrp(Irp: *mut IRP, Status: NTSTATUS);
    /// Completes a request: runs the completion routines from the current stack location up.
    pub fn IofCompleteRequest(Irp: *mut IRP, PriorityBoost: CCHAR);
    /// Sets `Irp->Cancel` and calls the IRP's cancel routine, if it has one.
    pub fn IoCancelIrp(Irp: *mut IRP) -> BOOLEAN;
    pub fn IoAcquireCancelSpinLock(Irql: *mut KIRQL);
    pub fn IoReleaseCancelSpinLock(Irql: KIRQL);
}

/// `IoSizeOfIrp(StackSize)`.
#[inline]
pub const fn IoSizeOfIrp(stack_size: CCHAR) -> usize {
    size_of::<IRP>() + stack_size as usize * size_of::<IO_STACK_LOCATION>()
}

/// `IoCompleteRequest` (a macro over `IofCompleteRequest`).
///
/// # Safety
/// The caller owns `irp` and has finished with it; it must not touch it afterwards unless
/// a completion routine hands it back.
#[inline]
pub unsafe fn IoCompleteRequest(irp: *mut IRP, boost: CCHAR) {
    // SAFETY: forwarded contract.
    unsafe { IofCompleteRequest(irp, boost) }
}

/// `IoGetCurrentIrpStackLocation`.
///
/// # Safety
/// `irp` must be a valid IRP.
#[inline]
pub unsafe fn IoGetCurrentIrpStackLocation(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the Overlay member is the one the I/O manager keeps current for live IRPs.
    unsafe { (*irp).Tail.Overlay.CurrentStackLocation }
}

/// `IoGetNextIrpStackLocation`: the location the next-lower driver (or WSK) will use.
///
/// # Safety
/// `irp` must be a valid IRP with a stack location below the current one.
#[inline]
pub unsafe fn IoGetNextIrpStackLocation(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: per the caller, the previous location is inside the IRP's stack array.
    unsafe { IoGetCurrentIrpStackLocation(irp).sub(1) }
}

/// `IoSetNextIrpStackLocation`: makes the next location current (what IoCallDriver does).
///
/// # Safety
/// `irp` must be a valid IRP with a stack location below the current one.
#[inline]
pub unsafe fn IoSetNextIrpStackLocation(irp: *mut IRP) {
    // SAFETY: per the caller; keeps CurrentLocation and CurrentStackLocation in step.
    unsafe {
        (*irp).CurrentLocation -= 1;
        (*irp).Tail.Overlay.CurrentStackLocation = (*irp).Tail.Overlay.CurrentStackLocation.sub(1);
    }
}

/// `IoSkipCurrentIrpStackLocation`.
///
/// # Safety
/// `irp` must be a valid IRP whose current location is inside its stack.
#[inline]
pub unsafe fn IoSkipCurrentIrpStackLocation(irp: *mut IRP) {
    // SAFETY: per the caller; the inverse of IoSetNextIrpStackLocation.
    unsafe {
        (*irp).CurrentLocation += 1;
        (*irp).Tail.Overlay.CurrentStackLocation = (*irp).Tail.Overlay.CurrentStackLocation.add(1);
    }
}

/// `IoCopyCurrentIrpStackLocationToNext`: the next driver gets the same parameters (and
/// no completion routine of ours until one is set).
///
/// # Safety
/// `irp` must be a valid IRP with a stack location below the current one.
#[inline]
pub unsafe fn IoCopyCurrentIrpStackLocationToNext(irp: *mut IRP) {
    // SAFETY: per the caller, both locations are inside the IRP's stack array.
    unsafe {
        let current = IoGetCurrentIrpStackLocation(irp);
        let next = IoGetNextIrpStackLocation(irp);
        (*next).MajorFunction = (*current).MajorFunction;
        (*next).MinorFunction = (*current).MinorFunction;
        (*next).Flags = (*current).Flags;
        (*next).Parameters = (*current).Parameters;
        (*next).FileObject = (*current).FileObject;
        (*next).Control = 0;
        (*next).CompletionRoutine = None;
        (*next).Context = core::ptr::null_mut();
    }
}

/// `IoSetCompletionRoutine`: installs `routine` in the next stack location, to be called
/// on success, error and/or cancel.
///
/// # Safety
/// `irp` must be a valid IRP with a next stack location.
#[inline]
pub unsafe fn IoSetCompletionRoutine(
    irp: *mut IRP,
    routine: PIO_COMPLETION_ROUTINE,
    context: *mut c_void,
    invoke_on_success: bool,
    invoke_on_error: bool,
    invoke_on_cancel: bool,
) {
    // SAFETY: per the caller the next stack location exists and belongs to us.
    unsafe {
        let sp = IoGetNextIrpStackLocation(irp);
        (*sp).CompletionRoutine = routine;
        (*sp).Context = context;
        (*sp).Control = 0;
        if invoke_on_success {
            (*sp).Control |= SL_INVOKE_ON_SUCCESS;
        }
        if invoke_on_error {
            (*sp).Control |= SL_INVOKE_ON_ERROR;
        }
        if invoke_on_cancel {
            (*sp).Control |= SL_INVOKE_ON_CANCEL;
        }
    }
}

/// `IoMarkIrpPending`: records in the current location that the dispatch returned pending.
///
/// # Safety
/// `irp` must be a valid IRP whose current location is inside its stack.
#[inline]
pub unsafe fn IoMarkIrpPending(irp: *mut IRP) {
    // SAFETY: per the caller.
    unsafe { (*IoGetCurrentIrpStackLocation(irp)).Control |= SL_PENDING_RETURNED }
}

/// `IoSetCancelRoutine`: an interlocked exchange of `Irp->CancelRoutine`.
///
/// # Safety
/// `irp` must be a valid IRP.
#[inline]
pub unsafe fn IoSetCancelRoutine(irp: *mut IRP, routine: PDRIVER_CANCEL) -> PDRIVER_CANCEL {
    let new = match routine {
        Some(f) => f as *mut c_void,
        None => core::ptr::null_mut(),
    };
    // SAFETY: the field is pointer-sized and aligned; every writer goes through this
    // exchange (or IoCancelIrp's), as the I/O manager requires.
    let old = unsafe {
        let slot = &*(core::ptr::addr_of_mut!((*irp).CancelRoutine) as *const AtomicPtr<c_void>);
        slot.swap(new, Ordering::AcqRel)
    };
    if old.is_null() {
        None
    } else {
        // SAFETY: the slot only ever holds NULL or a DRIVER_CANCEL written above.
        Some(unsafe {
            core::mem::transmute::<*mut c_void, unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP)>(old)
        })
    }
}
