//! The driver's life cycle, WDM's way: DriverEntry reads the service's Parameters key and
//! fills in the dispatch routines; AddDevice creates the functional device object on the
//! root-enumerated PDO and registers `GUID_DEVINTERFACE_WSKTLS`; IRP_MN_START_DEVICE
//! registers with WSK and enables the interface; a query-remove is refused while any
//! channel is open; removal disables the interface, ends every channel, waits for every
//! Connect in progress, releases WSK and deletes the device. The provider itself (the
//! channel table) lives until the last consumer's file object is closed, so a consumer
//! never calls into freed memory, and unload comes after that.
//!
//! Consumers reach the device only from kernel mode: creates whose requestor mode is user
//! mode are refused, and the INF gives the device a SYSTEM-only security descriptor with
//! FILE_DEVICE_SECURE_OPEN (IoCreateDeviceSecure lives in wdmsec.lib, which a WDK-less
//! build cannot link).

use core::ptr::{addr_of_mut, null_mut};

use crate::interface::{DISPATCH, Defaults, Provider};
use crate::log;
use crate::log::Level;
use crate::nt::{
    DEVICE_OBJECT, DO_DEVICE_INITIALIZING, DO_POWER_PAGABLE, DRIVER_OBJECT, DriverRegKeyParameters, Event,
    FALSE, FILE_DEVICE_NETWORK, FILE_DEVICE_SECURE_OPEN, GUID_DEVINTERFACE_WSKTLS, HANDLE, IO_NO_INCREMENT,
    IOCTL_WSKTLS_GET_PROVIDER, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL,
    IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_PNP, IRP_MJ_POWER, IRP_MJ_SYSTEM_CONTROL,
    IRP_MN_CANCEL_REMOVE_DEVICE, IRP_MN_CANCEL_STOP_DEVICE, IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_QUERY_STOP_DEVICE, IRP_MN_REMOVE_DEVICE, IRP_MN_START_DEVICE, IRP_MN_STOP_DEVICE,
    IRP_MN_SURPRISE_REMOVAL, IoAllocateDriverObjectExtension, IoAttachDeviceToDeviceStack, IoCallDriver,
    IoCompleteRequest, IoCopyCurrentIrpStackLocationToNext, IoCreateDevice, IoDeleteDevice, IoDetachDevice,
    IoGetCurrentIrpStackLocation, IoGetDriverObjectExtension, IoOpenDriverRegistryKey,
    IoRegisterDeviceInterface, IoSetDeviceInterfaceState, IoSkipCurrentIrpStackLocation, KEY_READ,
    KEY_VALUE_PARTIAL_INFORMATION, KernelMode, KeyValuePartialInformation, NTSTATUS, PVOID, REG_DWORD,
    RtlFreeUnicodeString, STATUS_ACCESS_DENIED, STATUS_BUFFER_TOO_SMALL, STATUS_DELETE_PENDING,
    STATUS_DEVICE_REMOVED, STATUS_INVALID_BUFFER_SIZE, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE, STATUS_PENDING, STATUS_REVISION_MISMATCH,
    STATUS_SUCCESS, SpinLock, TRUE, UNICODE_STRING, WSKTLS_PROVIDER_NPI, WSKTLS_PROVIDER_REQUEST,
    WSKTLS_VERSION_1_0, ZwClose, ZwQueryValueKey,
};

/// Identifies wsktls's per-driver storage (IoAllocateDriverObjectExtension): its address.
static DRIVER_STORAGE_ID: u8 = 0;

/// The functional device object's extension.
struct Device {
    provider: Provider,
    lower: *mut DEVICE_OBJECT,
    /// The interface's name, from IoRegisterDeviceInterface.
    interface: UNICODE_STRING,
    life: SpinLock<Life>,
}

#[derive(Default)]
struct Life {
    /// File objects open on the device.
    opens: u32,
    interface_enabled: bool,
    removed: bool,
    /// The provider has been dropped: removed, and no file object left.
    released: bool,
}

/// DriverEntry: reads the configuration and fills in the driver object. PASSIVE_LEVEL.
///
/// # Safety
/// Called once by the I/O manager with its driver object.
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry: *mut UNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: the I/O manager's driver object, at PASSIVE_LEVEL in DriverEntry.
    unsafe {
        let defaults = read_parameters(driver);
        let mut storage: PVOID = null_mut();
        let id = &DRIVER_STORAGE_ID as *const u8 as PVOID;
        let status = IoAllocateDriverObjectExtension(driver, id, size_of::<Defaults>() as u32, &mut storage);
        if !status.is_success() {
            return status;
        }
        storage.cast::<Defaults>().write(defaults);
        let d = &mut *driver;
        d.MajorFunction[IRP_MJ_CREATE as usize] = Some(dispatch_create);
        d.MajorFunction[IRP_MJ_CLEANUP as usize] = Some(dispatch_complete);
        d.MajorFunction[IRP_MJ_CLOSE as usize] = Some(dispatch_close);
        d.MajorFunction[IRP_MJ_DEVICE_CONTROL as usize] = Some(dispatch_refuse);
        d.MajorFunction[IRP_MJ_INTERNAL_DEVICE_CONTROL as usize] = Some(dispatch_internal_control);
        d.MajorFunction[IRP_MJ_PNP as usize] = Some(dispatch_pnp);
        d.MajorFunction[IRP_MJ_POWER as usize] = Some(dispatch_pass_down);
        d.MajorFunction[IRP_MJ_SYSTEM_CONTROL as usize] = Some(dispatch_pass_down);
        (*d.DriverExtension).AddDevice = Some(add_device);
        d.DriverUnload = Some(unload);
        log!(Level::Info, "loaded ({}): {:?}", env!("CARGO_PKG_VERSION"), defaults);
    }
    STATUS_SUCCESS
}

unsafe extern "system" fn unload(_driver: *mut DRIVER_OBJECT) {
    // Every device is gone by now (the I/O manager unloads only then), and each took its
    // channels, its WSK registration and its provider with it.
    log!(Level::Info, "unloaded");
}

/// The service's Parameters values, each within its bounds, else the default.
///
/// # Safety
/// DriverEntry's driver object, at PASSIVE_LEVEL.
unsafe fn read_parameters(driver: *mut DRIVER_OBJECT) -> Defaults {
    let mut d = Defaults::default();
    let mut key: HANDLE = null_mut();
    // SAFETY: per the caller.
    let status = unsafe { IoOpenDriverRegistryKey(driver, DriverRegKeyParameters, KEY_READ, 0, &mut key) };
    if !status.is_success() {
        log!(Level::Warning, "no Parameters key ({:?}): defaults", status);
        return d;
    }
    let timeouts = 1..=600_000;
    for (name, field, range) in [
        (utf16!("DefaultConnectTimeoutMs"), &mut d.connect_timeout_ms, timeouts.clone()),
        (utf16!("DefaultHandshakeTimeoutMs"), &mut d.handshake_timeout_ms, timeouts.clone()),
        (utf16!("DefaultDisconnectTimeoutMs"), &mut d.disconnect_timeout_ms, timeouts),
        (utf16!("MaxChannels"), &mut d.max_channels, 1..=65_536),
    ] {
        // SAFETY: our open key.
        match unsafe { query_dword(key, name) } {
            Some(v) if range.contains(&v) => *field = v,
            Some(v) => log!(Level::Warning, "Parameters value {} out of range: default kept", v),
            None => {}
        }
    }
    // SAFETY: opened above, closed once.
    unsafe { ZwClose(key) };
    d
}

/// A REG_DWORD value of an open key, if it is there and is one.
///
/// # Safety
/// `key` is an open key handle; PASSIVE_LEVEL.
unsafe fn query_dword(key: HANDLE, name: &[u16]) -> Option<u32> {
    // KEY_VALUE_PARTIAL_INFORMATION (12 bytes) and four bytes of data, 4-aligned.
    let mut info = [0u32; 4];
    let mut name = UNICODE_STRING {
        Length: (name.len() * 2) as u16,
        MaximumLength: (name.len() * 2) as u16,
        Buffer: name.as_ptr() as *mut u16,
    };
    let mut got = 0u32;
    // SAFETY: an open key, a name valid for the call, and a buffer of the size given.
    let status = unsafe {
        ZwQueryValueKey(key, &mut name, KeyValuePartialInformation, info.as_mut_ptr().cast(), 16, &mut got)
    };
    // SAFETY: filled by the call when it succeeded.
    let value = unsafe { &*info.as_ptr().cast::<KEY_VALUE_PARTIAL_INFORMATION>() };
    (status.is_success() && value.Type == REG_DWORD && value.DataLength == 4).then_some(info[3])
}

/// An ASCII string literal as UTF-16, for registry value names.
macro_rules! utf16 {
    ($s:literal) => {{
        const S: &str = $s;
        const N: usize = S.len();
        const W: [u16; N] = {
            let bytes = S.as_bytes();
            let mut w = [0u16; N];
            let mut i = 0;
            while i < N {
                w[i] = bytes[i] as u16;
                i += 1;
            }
            w
        };
        &W[..]
    }};
}
use utf16;

/// AddDevice: creates the functional device object, attaches it to the PDO's stack and
/// registers the interface (enabled at start). PASSIVE_LEVEL.
unsafe extern "system" fn add_device(driver: *mut DRIVER_OBJECT, pdo: *mut DEVICE_OBJECT) -> NTSTATUS {
    // SAFETY: the PnP manager's driver object and PDO, at PASSIVE_LEVEL.
    unsafe {
        let id = &DRIVER_STORAGE_ID as *const u8 as PVOID;
        let defaults = match IoGetDriverObjectExtension(driver, id).cast::<Defaults>().as_ref() {
            Some(d) => *d,
            None => return STATUS_NO_SUCH_DEVICE,
        };
        let mut fdo: *mut DEVICE_OBJECT = null_mut();
        let status = IoCreateDevice(
            driver,
            size_of::<Device>() as u32,
            null_mut(),
            FILE_DEVICE_NETWORK,
            FILE_DEVICE_SECURE_OPEN,
            FALSE,
            &mut fdo,
        );
        if !status.is_success() {
            return status;
        }
        let status = set_up(fdo, pdo, defaults);
        if !status.is_success() {
            IoDeleteDevice(fdo);
            return status;
        }
        (*fdo).Flags |= DO_POWER_PAGABLE;
        (*fdo).Flags &= !DO_DEVICE_INITIALIZING;
        log!(Level::Info, "device added");
        STATUS_SUCCESS
    }
}

/// Builds the extension in place, attaches and registers; undoes its own steps on failure.
///
/// # Safety
/// `fdo` is a fresh device object whose extension holds a `Device`; `pdo` the PnP
/// manager's. PASSIVE_LEVEL.
unsafe fn set_up(fdo: *mut DEVICE_OBJECT, pdo: *mut DEVICE_OBJECT, defaults: Defaults) -> NTSTATUS {
    // SAFETY: per the caller; fields are written before anything reads them.
    unsafe {
        let device = (*fdo).DeviceExtension.cast::<Device>();
        if let Err(status) = Provider::initialize(addr_of_mut!((*device).provider), fdo, defaults) {
            return status;
        }
        addr_of_mut!((*device).life).write(SpinLock::new(Life::default()));
        addr_of_mut!((*device).interface).write(UNICODE_STRING {
            Length: 0,
            MaximumLength: 0,
            Buffer: null_mut(),
        });
        let lower = IoAttachDeviceToDeviceStack(fdo, pdo);
        addr_of_mut!((*device).lower).write(lower);
        let status = if lower.is_null() {
            STATUS_NO_SUCH_DEVICE
        } else {
            IoRegisterDeviceInterface(pdo, &GUID_DEVINTERFACE_WSKTLS, null_mut(), &mut (*device).interface)
        };
        if !status.is_success() {
            if !lower.is_null() {
                IoDetachDevice(lower);
            }
            core::ptr::drop_in_place(device);
        }
        status
    }
}

/// # Safety
/// `fdo` is our functional device object (its extension is a `Device` until the
/// I/O manager frees it).
unsafe fn device<'a>(fdo: *mut DEVICE_OBJECT) -> &'a mut Device {
    // SAFETY: per the caller.
    unsafe { &mut *(*fdo).DeviceExtension.cast::<Device>() }
}

/// Completes `irp` with `status` (and `information`) and returns the status.
///
/// # Safety
/// `irp` is an IRP sent to us that we have not passed on.
unsafe fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    // SAFETY: per the caller; completed once.
    unsafe {
        (*irp).IoStatus.set(status, information);
        IoCompleteRequest(irp, IO_NO_INCREMENT);
    }
    status
}

unsafe extern "system" fn dispatch_complete(_fdo: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the I/O manager's IRP for us.
    unsafe { complete(irp, STATUS_SUCCESS, 0) }
}

/// IRP_MJ_DEVICE_CONTROL: what user mode could send; wsktls answers nothing there.
unsafe extern "system" fn dispatch_refuse(_fdo: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the I/O manager's IRP for us.
    unsafe { complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0) }
}

/// IRP_MJ_CREATE: kernel-mode opens only, and none once the device is being removed.
unsafe extern "system" fn dispatch_create(fdo: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: our device and the I/O manager's IRP.
    unsafe {
        if (*irp).RequestorMode != KernelMode {
            log!(Level::Warning, "refused an open from user mode");
            return complete(irp, STATUS_ACCESS_DENIED, 0);
        }
        let mut life = device(fdo).life.lock();
        let status = if life.removed {
            STATUS_DELETE_PENDING
        } else {
            life.opens += 1;
            STATUS_SUCCESS
        };
        drop(life);
        complete(irp, status, 0)
    }
}

/// IRP_MJ_CLOSE: the last file object closed after removal releases the provider.
unsafe extern "system" fn dispatch_close(fdo: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: our device and the I/O manager's IRP, at PASSIVE_LEVEL.
    unsafe {
        let device = device(fdo);
        device.life.lock().opens -= 1;
        release_if_unused(device);
        complete(irp, STATUS_SUCCESS, 0)
    }
}

/// Drops the provider once the device is removed and no file object is open. PASSIVE_LEVEL.
fn release_if_unused(device: &mut Device) {
    let release = {
        let mut life = device.life.lock();
        let release = life.removed && life.opens == 0 && !life.released;
        life.released |= release;
        release
    };
    if release {
        device.provider.wait_closes();
        // SAFETY: released once (the flag), with no consumer left to reach it.
        unsafe { core::ptr::drop_in_place(&mut device.provider) };
        log!(Level::Info, "provider released");
    }
}

/// IRP_MJ_INTERNAL_DEVICE_CONTROL: IOCTL_WSKTLS_GET_PROVIDER, from kernel mode.
unsafe extern "system" fn dispatch_internal_control(fdo: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: our device and the IRP sent to it.
    unsafe {
        let (status, information) = match get_provider(device(fdo), irp) {
            Ok(()) => (STATUS_SUCCESS, size_of::<WSKTLS_PROVIDER_NPI>()),
            Err(status) => (status, 0),
        };
        complete(irp, status, information)
    }
}

/// # Safety
/// An internal device-control IRP sent to our device.
unsafe fn get_provider(device: &Device, irp: *mut IRP) -> Result<(), NTSTATUS> {
    // SAFETY: per the caller; METHOD_NEITHER buffers are the kernel-mode sender's.
    unsafe {
        let stack = &*IoGetCurrentIrpStackLocation(irp);
        let p = stack.Parameters.DeviceIoControl;
        if p.IoControlCode != IOCTL_WSKTLS_GET_PROVIDER {
            return Err(STATUS_INVALID_DEVICE_REQUEST);
        }
        if (*irp).RequestorMode != KernelMode {
            return Err(STATUS_ACCESS_DENIED);
        }
        let request = p.Type3InputBuffer.cast::<WSKTLS_PROVIDER_REQUEST>();
        if request.is_null() || (p.InputBufferLength as usize) < size_of::<WSKTLS_PROVIDER_REQUEST>() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let request = request.read_unaligned();
        if request.Size as usize != size_of::<WSKTLS_PROVIDER_REQUEST>() || request.Reserved != 0 {
            return Err(STATUS_INVALID_BUFFER_SIZE);
        }
        // Version 1.x asks for what 1.0 offers; any other major version is not ours.
        if request.Version >> 8 != WSKTLS_VERSION_1_0 >> 8 {
            return Err(STATUS_REVISION_MISMATCH);
        }
        let out = (*irp).UserBuffer.cast::<WSKTLS_PROVIDER_NPI>();
        if out.is_null() || (p.OutputBufferLength as usize) < size_of::<WSKTLS_PROVIDER_NPI>() {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        if device.life.lock().removed || device.provider.is_removed() {
            return Err(STATUS_DEVICE_REMOVED);
        }
        out.write_unaligned(WSKTLS_PROVIDER_NPI {
            Size: size_of::<WSKTLS_PROVIDER_NPI>() as u32,
            Version: WSKTLS_VERSION_1_0,
            Reserved: 0,
            Provider: device.provider.handle(),
            Dispatch: &DISPATCH,
        });
        Ok(())
    }
}

/// Power and WMI IRPs: not ours to handle; the PDO below completes them.
unsafe extern "system" fn dispatch_pass_down(fdo: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: our device and the IRP sent to it.
    unsafe { pass_down(device(fdo), irp) }
}

/// # Safety
/// An IRP sent to our device, which we give to the device below.
unsafe fn pass_down(device: &Device, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: per the caller; our stack location is reused by the lower driver.
    unsafe {
        IoSkipCurrentIrpStackLocation(irp);
        IoCallDriver(device.lower, irp)
    }
}

/// Sends `irp` down and waits for the lower drivers to finish with it; it is ours again
/// afterwards, to complete. PASSIVE_LEVEL.
///
/// # Safety
/// As for [`pass_down`].
unsafe fn pass_down_and_wait(device: &Device, irp: *mut IRP) -> NTSTATUS {
    let done = Event::new();
    // SAFETY: the event stays on this frame until the wait below returns; the routine
    // hands the IRP back to us with STATUS_MORE_PROCESSING_REQUIRED.
    unsafe {
        done.initialize();
        IoCopyCurrentIrpStackLocationToNext(irp);
        done.receive_completion_of(irp);
        if IoCallDriver(device.lower, irp) == STATUS_PENDING {
            let _ = done.wait(u32::MAX);
        }
        (*irp).IoStatus.status()
    }
}

/// IRP_MJ_PNP. PASSIVE_LEVEL.
unsafe extern "system" fn dispatch_pnp(fdo: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: our device and the PnP manager's IRP.
    unsafe {
        let device = device(fdo);
        match (*IoGetCurrentIrpStackLocation(irp)).MinorFunction {
            IRP_MN_START_DEVICE => start(device, irp),
            IRP_MN_QUERY_REMOVE_DEVICE | IRP_MN_QUERY_STOP_DEVICE => match device.provider.query_remove() {
                Ok(()) => succeed_down(device, irp),
                Err(status) => complete(irp, status, 0),
            },
            IRP_MN_CANCEL_REMOVE_DEVICE | IRP_MN_CANCEL_STOP_DEVICE => {
                device.provider.resume();
                succeed_down(device, irp)
            }
            IRP_MN_STOP_DEVICE => {
                set_interface(device, false);
                device.provider.stop();
                succeed_down(device, irp)
            }
            IRP_MN_SURPRISE_REMOVAL => {
                set_interface(device, false);
                device.provider.remove();
                succeed_down(device, irp)
            }
            IRP_MN_REMOVE_DEVICE => remove(fdo, device, irp),
            _ => pass_down(device, irp),
        }
    }
}

/// # Safety
/// As for [`pass_down`].
unsafe fn succeed_down(device: &Device, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: per the caller.
    unsafe {
        (*irp).IoStatus.set(STATUS_SUCCESS, 0);
        pass_down(device, irp)
    }
}

/// IRP_MN_START_DEVICE: the PDO starts first, then we register with WSK and enable the
/// interface.
///
/// # Safety
/// As for [`pass_down`].
unsafe fn start(device: &mut Device, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: per the caller.
    unsafe {
        let mut status = pass_down_and_wait(device, irp);
        if status.is_success() {
            status = match device.provider.start() {
                Ok(()) => set_interface(device, true),
                Err(status) => status,
            };
        }
        log!(Level::Info, "device start: {:?}", status);
        complete(irp, status, 0)
    }
}

/// Enables or disables the interface (each once).
fn set_interface(device: &mut Device, enable: bool) -> NTSTATUS {
    {
        let mut life = device.life.lock();
        if life.interface_enabled == enable {
            return STATUS_SUCCESS;
        }
        life.interface_enabled = enable;
    }
    // SAFETY: the name IoRegisterDeviceInterface gave us, at PASSIVE_LEVEL.
    unsafe { IoSetDeviceInterfaceState(&mut device.interface, if enable { TRUE } else { FALSE }) }
}

/// IRP_MN_REMOVE_DEVICE: ends everything, passes the IRP down, detaches and deletes.
///
/// # Safety
/// As for [`pass_down`]; `fdo` is `device`'s object.
unsafe fn remove(fdo: *mut DEVICE_OBJECT, device: &mut Device, irp: *mut IRP) -> NTSTATUS {
    set_interface(device, false);
    device.provider.remove();
    // SAFETY: per the caller; after IoDeleteDevice the extension lives on while file
    // objects still reference the device, which is what release_if_unused relies on.
    unsafe {
        let status = succeed_down(device, irp);
        IoDetachDevice(device.lower);
        RtlFreeUnicodeString(&mut device.interface);
        device.life.lock().removed = true;
        release_if_unused(device);
        log!(Level::Info, "device removed");
        IoDeleteDevice(fdo);
        status
    }
}
