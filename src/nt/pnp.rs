//! Device objects, the Plug and Play manager's side of them, device interfaces, and the
//! two object-manager and registry calls a WDM driver needs: what DriverEntry, AddDevice,
//! the PnP dispatch routine, and a consumer driver that looks for wsktls use.

use crate::{BOOLEAN, DEVICE_OBJECT, DRIVER_OBJECT, FILE_OBJECT, IRP, NTSTATUS, PVOID, UNICODE_STRING};

/// A GUID (guiddef.h), 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GUID {
    pub Data1: u32,
    pub Data2: u16,
    pub Data3: u16,
    pub Data4: [u8; 8],
}

/// `GUID_DEVICE_INTERFACE_ARRIVAL` (wdmguid.h): an interface was enabled.
pub const GUID_DEVICE_INTERFACE_ARRIVAL: GUID = GUID {
    Data1: 0xcb3a4004,
    Data2: 0x46f0,
    Data3: 0x11d0,
    Data4: [0xb0, 0x8f, 0x00, 0x60, 0x97, 0x13, 0x05, 0x3f],
};
/// `GUID_DEVICE_INTERFACE_REMOVAL` (wdmguid.h): an interface was disabled.
pub const GUID_DEVICE_INTERFACE_REMOVAL: GUID = GUID {
    Data1: 0xcb3a4005,
    Data2: 0x46f0,
    Data3: 0x11d0,
    Data4: [0xb0, 0x8f, 0x00, 0x60, 0x97, 0x13, 0x05, 0x3f],
};

/// `HANDLE`.
pub type HANDLE = PVOID;
/// `ACCESS_MASK`.
pub type ACCESS_MASK = u32;
/// `KEY_READ`: query values, enumerate subkeys, notify, read control.
pub const KEY_READ: ACCESS_MASK = 0x0002_0019;
/// `FILE_READ_DATA`, the access a consumer asks for when it opens wsktls.
pub const FILE_READ_DATA: ACCESS_MASK = 0x0001;
/// `DRIVER_REGKEY_TYPE` for IoOpenDriverRegistryKey: the service's `Parameters` key.
pub const DriverRegKeyParameters: u32 = 0;
/// `KEY_VALUE_INFORMATION_CLASS` for ZwQueryValueKey.
pub const KeyValuePartialInformation: u32 = 2;
/// `REG_DWORD`.
pub const REG_DWORD: u32 = 4;

/// `KEY_VALUE_PARTIAL_INFORMATION`: 12 bytes of header, then the value's data.
#[repr(C)]
pub struct KEY_VALUE_PARTIAL_INFORMATION {
    pub TitleIndex: u32,
    pub Type: u32,
    pub DataLength: u32,
    pub Data: [u8; 1],
}

/// `FILE_DEVICE_NETWORK`: the device type of wsktls's functional device object.
pub const FILE_DEVICE_NETWORK: u32 = 0x12;
/// `FILE_DEVICE_SECURE_OPEN`: the device's security descriptor also guards names below it.
pub const FILE_DEVICE_SECURE_OPEN: u32 = 0x100;
/// `DO_DEVICE_INITIALIZING`: cleared by AddDevice when the device is ready for IRPs.
pub const DO_DEVICE_INITIALIZING: u32 = 0x80;
/// `DO_POWER_PAGABLE`: power IRPs may arrive at PASSIVE_LEVEL (set by nonpaged drivers too).
pub const DO_POWER_PAGABLE: u32 = 0x2000;

/// `METHOD_NEITHER` and `FILE_ANY_ACCESS` for `CTL_CODE`.
pub const METHOD_NEITHER: u32 = 3;
pub const FILE_ANY_ACCESS: u32 = 0;

/// `CTL_CODE(DeviceType, Function, Method, Access)` (devioctl.h).
pub const fn CTL_CODE(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// Minor functions of IRP_MJ_PNP that wsktls handles itself.
pub const IRP_MN_START_DEVICE: u8 = 0x00;
pub const IRP_MN_QUERY_REMOVE_DEVICE: u8 = 0x01;
pub const IRP_MN_REMOVE_DEVICE: u8 = 0x02;
pub const IRP_MN_CANCEL_REMOVE_DEVICE: u8 = 0x03;
pub const IRP_MN_STOP_DEVICE: u8 = 0x04;
pub const IRP_MN_QUERY_STOP_DEVICE: u8 = 0x05;
pub const IRP_MN_CANCEL_STOP_DEVICE: u8 = 0x06;
pub const IRP_MN_SURPRISE_REMOVAL: u8 = 0x17;

/// `IO_NOTIFICATION_EVENT_CATEGORY`: device interface arrivals and removals.
pub const EventCategoryDeviceInterfaceChange: u32 = 2;
/// Also report interfaces that are enabled already, at registration.
pub const PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES: u32 = 1;

/// `DEVICE_INTERFACE_CHANGE_NOTIFICATION`: what an interface-change callback receives.
#[repr(C)]
pub struct DEVICE_INTERFACE_CHANGE_NOTIFICATION {
    pub Version: u16,
    pub Size: u16,
    /// GUID_DEVICE_INTERFACE_ARRIVAL or GUID_DEVICE_INTERFACE_REMOVAL.
    pub Event: GUID,
    pub InterfaceClassGuid: GUID,
    /// The interface's name, for IoGetDeviceObjectPointer. Valid during the callback only.
    pub SymbolicLinkName: *mut UNICODE_STRING,
}

/// `DRIVER_NOTIFICATION_CALLBACK_ROUTINE`: called at PASSIVE_LEVEL in a system thread.
pub type PDRIVER_NOTIFICATION_CALLBACK_ROUTINE =
    Option<unsafe extern "system" fn(NotificationStructure: PVOID, Context: PVOID) -> NTSTATUS>;

/// `DRIVER_ADD_DEVICE`: creates the driver's device object for a new physical device
/// object and attaches it to the stack. PASSIVE_LEVEL.
pub type PDRIVER_ADD_DEVICE = Option<
    unsafe extern "system" fn(
        DriverObject: *mut DRIVER_OBJECT,
        PhysicalDeviceObject: *mut DEVICE_OBJECT,
    ) -> NTSTATUS,
>;

/// `IoCallDriver` (the wdm.h macro over IofCallDriver): sends `irp`, whose next stack
/// location is filled in, to `device`.
///
/// # Safety
/// `device` is a device object that stays referenced across the call; `irp` is a valid IRP
/// the caller owns, with its next stack location prepared.
#[inline]
pub unsafe fn IoCallDriver(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: forwarded contract.
    unsafe { IofCallDriver(device, irp) }
}

/// `ObDereferenceObject` (the wdm.h macro over ObfDereferenceObject).
///
/// # Safety
/// `object` is an object the caller holds a reference to, which this call gives up.
#[inline]
pub unsafe fn ObDereferenceObject(object: PVOID) {
    // SAFETY: forwarded contract.
    unsafe { ObfDereferenceObject(object) };
}

unsafe extern "system" {
    /// Creates a device object with `DeviceExtensionSize` zeroed bytes of extension.
    /// PASSIVE_LEVEL.
    pub fn IoCreateDevice(
        DriverObject: *mut DRIVER_OBJECT,
        DeviceExtensionSize: u32,
        DeviceName: *mut UNICODE_STRING,
        DeviceType: u32,
        DeviceCharacteristics: u32,
        Exclusive: BOOLEAN,
        DeviceObject: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
    /// Deletes a device object; the memory goes once the last reference (open file
    /// objects among them) is gone. PASSIVE_LEVEL.
    pub fn IoDeleteDevice(DeviceObject: *mut DEVICE_OBJECT);
    /// Attaches `SourceDevice` on top of the stack `TargetDevice` is in; returns the device
    /// it attached to (IRPs go down to it), or NULL. PASSIVE_LEVEL.
    pub fn IoAttachDeviceToDeviceStack(
        SourceDevice: *mut DEVICE_OBJECT,
        TargetDevice: *mut DEVICE_OBJECT,
    ) -> *mut DEVICE_OBJECT;
    pub fn IoDetachDevice(TargetDevice: *mut DEVICE_OBJECT);
    /// Sends an IRP to a driver: makes the next stack location current and calls the
    /// device's dispatch routine for its major function. IRQL <= DISPATCH_LEVEL.
    pub fn IofCallDriver(DeviceObject: *mut DEVICE_OBJECT, Irp: *mut IRP) -> NTSTATUS;

    /// Registers an interface of class `InterfaceClassGuid` on a physical device object and
    /// returns its name (freed with RtlFreeUnicodeString). Disabled until
    /// IoSetDeviceInterfaceState. PASSIVE_LEVEL.
    pub fn IoRegisterDeviceInterface(
        PhysicalDeviceObject: *mut DEVICE_OBJECT,
        InterfaceClassGuid: *const GUID,
        ReferenceString: *mut UNICODE_STRING,
        SymbolicLinkName: *mut UNICODE_STRING,
    ) -> NTSTATUS;
    /// Enables or disables a registered interface; arrival and removal notifications
    /// follow. PASSIVE_LEVEL.
    pub fn IoSetDeviceInterfaceState(SymbolicLinkName: *mut UNICODE_STRING, Enable: BOOLEAN) -> NTSTATUS;
    pub fn RtlFreeUnicodeString(UnicodeString: *mut UNICODE_STRING);

    /// Registers `CallbackRoutine` for arrivals and removals of interfaces of the class
    /// `EventCategoryData` points at. PASSIVE_LEVEL.
    pub fn IoRegisterPlugPlayNotification(
        EventCategory: u32,
        EventCategoryFlags: u32,
        EventCategoryData: PVOID,
        DriverObject: *mut DRIVER_OBJECT,
        CallbackRoutine: PDRIVER_NOTIFICATION_CALLBACK_ROUTINE,
        Context: PVOID,
        NotificationEntry: *mut PVOID,
    ) -> NTSTATUS;
    /// Unregisters; when it returns no callback is running or will run. PASSIVE_LEVEL,
    /// and never from the callback itself.
    pub fn IoUnregisterPlugPlayNotificationEx(NotificationEntry: PVOID) -> NTSTATUS;

    /// Opens the device named `ObjectName` (an interface's symbolic link): sends
    /// IRP_MJ_CREATE from kernel mode and returns the file object (referenced) and the
    /// top of the device's stack. PASSIVE_LEVEL.
    pub fn IoGetDeviceObjectPointer(
        ObjectName: *mut UNICODE_STRING,
        DesiredAccess: ACCESS_MASK,
        FileObject: *mut *mut FILE_OBJECT,
        DeviceObject: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
    /// Gives up a reference; the last one on a file object sends IRP_MJ_CLEANUP and
    /// IRP_MJ_CLOSE. IRQL <= DISPATCH_LEVEL.
    pub fn ObfDereferenceObject(Object: PVOID) -> isize;

    /// Per-driver storage, allocated once (DriverEntry) and freed with the driver object.
    pub fn IoAllocateDriverObjectExtension(
        DriverObject: *mut DRIVER_OBJECT,
        ClientIdentificationAddress: PVOID,
        DriverObjectExtensionSize: u32,
        DriverObjectExtension: *mut PVOID,
    ) -> NTSTATUS;
    pub fn IoGetDriverObjectExtension(
        DriverObject: *mut DRIVER_OBJECT,
        ClientIdentificationAddress: PVOID,
    ) -> PVOID;

    /// Opens the driver's service `Parameters` key (DriverRegKeyParameters). PASSIVE_LEVEL.
    pub fn IoOpenDriverRegistryKey(
        DriverObject: *mut DRIVER_OBJECT,
        RegKeyType: u32,
        DesiredAccess: ACCESS_MASK,
        Flags: u32,
        DriverRegKey: *mut HANDLE,
    ) -> NTSTATUS;
    /// Reads one value of an open key. PASSIVE_LEVEL.
    pub fn ZwQueryValueKey(
        KeyHandle: HANDLE,
        ValueName: *mut UNICODE_STRING,
        KeyValueInformationClass: u32,
        KeyValueInformation: PVOID,
        Length: u32,
        ResultLength: *mut u32,
    ) -> NTSTATUS;
    pub fn ZwClose(Handle: HANDLE) -> NTSTATUS;
}
