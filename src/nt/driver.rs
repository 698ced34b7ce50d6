//! The driver object: what the I/O manager hands `DriverEntry`, and where the driver
//! leaves its dispatch routines and its unload routine.
//!
//! The I/O manager creates and owns the object; the driver only fills in `MajorFunction`
//! and `DriverUnload` (in DriverEntry, at PASSIVE_LEVEL) and reads `DriverName`. It never
//! frees the object or writes the other fields.

use crate::{
    CSHORT, DEVICE_OBJECT, IRP, IRP_MJ_MAXIMUM_FUNCTION, NTSTATUS, PDRIVER_ADD_DEVICE, PVOID, UNICODE_STRING,
};

/// `DRIVER_INITIALIZE`: the entry point, `DriverEntry(DriverObject, RegistryPath)`. Called
/// once, at PASSIVE_LEVEL, in a system thread.
pub type PDRIVER_INITIALIZE = Option<
    unsafe extern "system" fn(
        DriverObject: *mut DRIVER_OBJECT,
        RegistryPath: *mut UNICODE_STRING,
    ) -> NTSTATUS,
>;

/// `DRIVER_STARTIO`: the StartIo routine of drivers that queue IRPs through the I/O
/// manager's device queue (wsktls does not). Called at DISPATCH_LEVEL.
pub type PDRIVER_STARTIO = Option<unsafe extern "system" fn(DeviceObject: *mut DEVICE_OBJECT, Irp: *mut IRP)>;

/// `DRIVER_UNLOAD`: called once, at PASSIVE_LEVEL in a system thread, after every device
/// object of the driver has been deleted and no IRP can arrive; the driver must not
/// return from it with anything queued, pending or allocated.
pub type PDRIVER_UNLOAD = Option<unsafe extern "system" fn(DriverObject: *mut DRIVER_OBJECT)>;

/// `DRIVER_DISPATCH`: handles one IRP major function for a device of the driver. Runs at
/// IRQL <= DISPATCH_LEVEL (its SAL annotation): the I/O manager sends create, cleanup,
/// close and device control from PASSIVE_LEVEL in the caller's thread, while IRPs from
/// other drivers (IRP_MJ_INTERNAL_DEVICE_CONTROL) can arrive at up to DISPATCH_LEVEL.
pub type PDRIVER_DISPATCH =
    Option<unsafe extern "system" fn(DeviceObject: *mut DEVICE_OBJECT, Irp: *mut IRP) -> NTSTATUS>;

/// The driver extension (wdm.h): where a PnP driver leaves its AddDevice routine.
#[repr(C)]
pub struct DRIVER_EXTENSION {
    pub DriverObject: *mut DRIVER_OBJECT,
    pub AddDevice: PDRIVER_ADD_DEVICE,
    pub Count: u32,
    pub ServiceKeyName: UNICODE_STRING,
}

/// The fast I/O dispatch table of file system drivers, opaque: wsktls has none.
#[repr(C)]
pub struct FAST_IO_DISPATCH {
    _opaque: [u8; 0],
}

/// The driver object (wdm.h), 0x150 bytes on x64: `DriverUnload` at 0x68, `MajorFunction`
/// at 0x70. Read and written at PASSIVE_LEVEL (DriverEntry and unload); the I/O manager
/// reads `MajorFunction` at whatever IRQL an IRP is sent.
#[repr(C)]
pub struct DRIVER_OBJECT {
    /// `IO_TYPE_DRIVER`.
    pub Type: CSHORT,
    pub Size: CSHORT,
    /// The first of the driver's device objects, linked through their `NextDevice`.
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub Flags: u32,
    /// Where the image is loaded, and its size.
    pub DriverStart: PVOID,
    pub DriverSize: u32,
    pub DriverSection: PVOID,
    pub DriverExtension: *mut DRIVER_EXTENSION,
    /// `\Driver\<service name>`.
    pub DriverName: UNICODE_STRING,
    pub HardwareDatabase: *mut UNICODE_STRING,
    pub FastIoDispatch: *mut FAST_IO_DISPATCH,
    pub DriverInit: PDRIVER_INITIALIZE,
    pub DriverStartIo: PDRIVER_STARTIO,
    pub DriverUnload: PDRIVER_UNLOAD,
    /// One dispatch routine per IRP major function, indexed by the `IRP_MJ_*` code. The
    /// I/O manager fills every entry with its own "invalid request" routine before
    /// DriverEntry; the driver replaces the ones it handles.
    pub MajorFunction: [PDRIVER_DISPATCH; IRP_MJ_MAXIMUM_FUNCTION as usize + 1],
}
