//! wsktls's provider, as the sample holds it: the file object it opened the interface
//! with (which keeps the provider and its table valid), and the provider NPI.

use alloc::vec::Vec;
use core::ptr::null_mut;

use wsktls_nt::{
    DEVICE_OBJECT, Event, FALSE, FILE_OBJECT, FILE_READ_DATA, IOCTL_WSKTLS_GET_PROVIDER,
    IRP_MJ_INTERNAL_DEVICE_CONTROL, IoAllocateIrp, IoCallDriver, IoFreeIrp, IoGetDeviceObjectPointer,
    IoGetNextIrpStackLocation, KernelMode, NTSTATUS, ObDereferenceObject, PVOID,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_PENDING, STATUS_REVISION_MISMATCH, UNICODE_STRING, WSKTLS_DISPATCH,
    WSKTLS_PROVIDER, WSKTLS_PROVIDER_NPI, WSKTLS_PROVIDER_REQUEST, WSKTLS_VERSION_1_0,
};

pub struct Binding {
    file: *mut FILE_OBJECT,
    npi: WSKTLS_PROVIDER_NPI,
    /// The interface's name, to recognise its removal.
    name: Vec<u16>,
}

// SAFETY: the file object reference and the NPI may be used from any thread.
unsafe impl Send for Binding {}
// SAFETY: as above; nothing here is written after `open`.
unsafe impl Sync for Binding {}

impl Binding {
    /// Opens the interface named `link` and asks for the provider. PASSIVE_LEVEL.
    ///
    /// # Safety
    /// `link` is a valid interface name for the call.
    pub(crate) unsafe fn open(link: *mut UNICODE_STRING) -> Result<Binding, NTSTATUS> {
        let mut file: *mut FILE_OBJECT = null_mut();
        let mut device: *mut DEVICE_OBJECT = null_mut();
        // SAFETY: per the caller; the outputs are ours.
        let status = unsafe { IoGetDeviceObjectPointer(link, FILE_READ_DATA, &mut file, &mut device) };
        if !status.is_success() {
            return Err(status);
        }
        // SAFETY: the file object and device IoGetDeviceObjectPointer gave us.
        let npi = match unsafe { get_provider(file, device) } {
            Ok(npi) => npi,
            Err(status) => {
                // SAFETY: our one reference, given up once.
                unsafe { ObDereferenceObject(file.cast()) };
                return Err(status);
            }
        };
        // SAFETY: a valid UNICODE_STRING per the caller.
        let name = unsafe { name_of(&*link) };
        Ok(Binding { file, npi, name })
    }

    pub fn provider(&self) -> *mut WSKTLS_PROVIDER {
        self.npi.Provider
    }

    pub fn dispatch(&self) -> &WSKTLS_DISPATCH {
        // SAFETY: wsktls's table, valid while we hold the file object.
        unsafe { &*self.npi.Dispatch }
    }

    pub(crate) fn is_named(&self, name: &UNICODE_STRING) -> bool {
        // SAFETY: a valid UNICODE_STRING from the notification.
        unsafe { name_of(name) == self.name }
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // SAFETY: the reference IoGetDeviceObjectPointer gave us, given up once.
        unsafe { ObDereferenceObject(self.file.cast()) };
    }
}

/// # Safety
/// `name` is a valid UNICODE_STRING.
unsafe fn name_of(name: &UNICODE_STRING) -> Vec<u16> {
    if name.Buffer.is_null() {
        return Vec::new();
    }
    // SAFETY: per the caller, Length bytes of UTF-16.
    unsafe { core::slice::from_raw_parts(name.Buffer, name.Length as usize / 2) }.to_vec()
}

/// IOCTL_WSKTLS_GET_PROVIDER, sent and waited for.
///
/// # Safety
/// `file` and `device` from IoGetDeviceObjectPointer; PASSIVE_LEVEL.
unsafe fn get_provider(
    file: *mut FILE_OBJECT,
    device: *mut DEVICE_OBJECT,
) -> Result<WSKTLS_PROVIDER_NPI, NTSTATUS> {
    let request = WSKTLS_PROVIDER_REQUEST {
        Size: size_of::<WSKTLS_PROVIDER_REQUEST>() as u32,
        Version: WSKTLS_VERSION_1_0,
        Reserved: 0,
    };
    let mut npi = WSKTLS_PROVIDER_NPI {
        Size: 0,
        Version: 0,
        Reserved: 0,
        Provider: null_mut(),
        Dispatch: core::ptr::null(),
    };
    // SAFETY: the device's stack depth decides how many locations the IRP needs.
    let irp = unsafe { IoAllocateIrp((*device).StackSize, FALSE) };
    if irp.is_null() {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    let done = Event::new();
    // SAFETY: our IRP; the request, the NPI and the event stay on this frame until the
    // IRP has completed (we wait for it).
    let status = unsafe {
        done.initialize();
        (*irp).RequestorMode = KernelMode;
        (*irp).UserBuffer = (&mut npi as *mut WSKTLS_PROVIDER_NPI).cast();
        let next = IoGetNextIrpStackLocation(irp);
        (*next).MajorFunction = IRP_MJ_INTERNAL_DEVICE_CONTROL;
        (*next).FileObject = file;
        let control = &mut (*next).Parameters.DeviceIoControl;
        control.OutputBufferLength = size_of::<WSKTLS_PROVIDER_NPI>() as u32;
        control.InputBufferLength = size_of::<WSKTLS_PROVIDER_REQUEST>() as u32;
        control.IoControlCode = IOCTL_WSKTLS_GET_PROVIDER;
        control.Type3InputBuffer = &request as *const WSKTLS_PROVIDER_REQUEST as PVOID;
        done.receive_completion_of(irp);
        if IoCallDriver(device, irp) == STATUS_PENDING {
            let _ = done.wait(u32::MAX);
        }
        let status = (*irp).IoStatus.status();
        IoFreeIrp(irp);
        status
    };
    if !status.is_success() {
        return Err(status);
    }
    if npi.Version != WSKTLS_VERSION_1_0 || npi.Dispatch.is_null() {
        return Err(STATUS_REVISION_MISMATCH);
    }
    Ok(npi)
}
