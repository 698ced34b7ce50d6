//! Drivers: the driver object the I/O manager makes before DriverEntry, loading (DriverEntry
//! at PASSIVE_LEVEL) and unloading (DriverUnload only once every device object of the
//! driver is gone), and the per-driver storage of IoAllocateDriverObjectExtension.
//!
//! A driver's objects are ntsim's memory: the driver fills in MajorFunction, DriverUnload
//! and the extension's AddDevice, and never frees any of it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::mem::size_of;
use std::sync::Mutex;
use std::time::Duration;

use wsktls_nt::{
    DRIVER_EXTENSION, DRIVER_OBJECT, IRP_MJ_MAXIMUM_FUNCTION, NT_SUCCESS, NTSTATUS, PASSIVE_LEVEL,
    PDRIVER_DISPATCH, PVOID, STATUS_DEVICE_BUSY, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
    STATUS_SUCCESS, UNICODE_STRING,
};

use crate::device::invalid_request;
use crate::faults::{AllocKind, allocation_fails};
use crate::irql::{require_dispatch, with_irql};
use crate::kernel::{Kernel, KernelInner, current, lock};
use crate::pool::{raw_alloc, raw_free};
use crate::verifier::{Rule, report};
use crate::wsk;

/// `IO_TYPE_DRIVER`.
const IO_TYPE_DRIVER: i16 = 4;
/// `STATUS_OBJECT_NAME_COLLISION` (ntstatus.h), which wsktls-nt does not declare.
pub(crate) const STATUS_OBJECT_NAME_COLLISION: NTSTATUS = NTSTATUS(0xC000_0035_u32 as i32);
/// Where services keep their keys; DriverEntry's RegistryPath names one under it.
const SERVICES: &str = "\\Registry\\Machine\\System\\CurrentControlSet\\Services";

/// `DRIVER_INITIALIZE`, without the Option.
pub type DriverEntry = unsafe extern "system" fn(*mut DRIVER_OBJECT, *mut UNICODE_STRING) -> NTSTATUS;

/// A loaded driver, from [`Kernel::load_driver`]; give it back to [`Kernel::unload_driver`].
#[derive(Debug)]
pub struct Driver {
    object: usize,
}

impl Driver {
    /// The driver object DriverEntry received.
    pub fn object(&self) -> *mut DRIVER_OBJECT {
        self.object as *mut DRIVER_OBJECT
    }
}

struct DriverRecord {
    /// UTF-16 buffers the object's strings point into.
    _strings: Vec<Box<[u16]>>,
    extension: usize,
    /// IoAllocateDriverObjectExtension blocks: client id → (address, size).
    client_extensions: HashMap<usize, (usize, usize)>,
}

#[derive(Default)]
pub(crate) struct Drivers {
    live: Mutex<HashMap<usize, DriverRecord>>,
}

/// A counted string over `buffer` (which must outlive it).
pub(crate) fn unicode(buffer: &mut [u16]) -> UNICODE_STRING {
    let bytes = (buffer.len() * 2) as u16;
    UNICODE_STRING { Length: bytes, MaximumLength: bytes, Buffer: buffer.as_mut_ptr() }
}

pub(crate) fn utf16(s: &str) -> Box<[u16]> {
    s.encode_utf16().collect()
}

/// The text of a counted string, if it is readable.
pub(crate) fn text(s: *const UNICODE_STRING) -> Option<String> {
    // SAFETY: the caller passes a UNICODE_STRING it owns, whose buffer holds Length bytes.
    unsafe {
        let s = s.as_ref()?;
        if s.Buffer.is_null() {
            return (s.Length == 0).then(String::new);
        }
        let units = std::slice::from_raw_parts(s.Buffer, s.Length as usize / 2);
        Some(String::from_utf16_lossy(units))
    }
}

impl Drivers {
    /// Makes a driver object named `\Driver\<name>` whose every dispatch entry is `dispatch`.
    pub(crate) fn create(&self, name: &str, dispatch: PDRIVER_DISPATCH) -> Option<*mut DRIVER_OBJECT> {
        let driver = raw_alloc(size_of::<DRIVER_OBJECT>()) as *mut DRIVER_OBJECT;
        let extension = raw_alloc(size_of::<DRIVER_EXTENSION>()) as *mut DRIVER_EXTENSION;
        if driver.is_null() || extension.is_null() {
            return None;
        }
        let mut strings = vec![utf16(&format!("\\Driver\\{name}")), utf16(name)];
        // SAFETY: fresh zeroed allocations of the right sizes; the strings live in the
        // record as long as the object.
        unsafe {
            (*driver).Type = IO_TYPE_DRIVER;
            (*driver).Size = size_of::<DRIVER_OBJECT>() as i16;
            (*driver).DriverExtension = extension;
            (*driver).DriverName = unicode(&mut strings[0]);
            (*driver).MajorFunction = [dispatch; IRP_MJ_MAXIMUM_FUNCTION as usize + 1];
            (*extension).DriverObject = driver;
            (*extension).ServiceKeyName = unicode(&mut strings[1]);
        }
        let rec = DriverRecord {
            _strings: strings,
            extension: extension as usize,
            client_extensions: HashMap::new(),
        };
        lock(&self.live).insert(driver as usize, rec);
        Some(driver)
    }

    pub(crate) fn is_loaded(&self, driver: *mut DRIVER_OBJECT) -> bool {
        lock(&self.live).contains_key(&(driver as usize))
    }

    /// Frees a driver object, its extension and its client extensions. A driver that still
    /// has device objects keeps its object's memory (they point at it): a report.
    fn destroy(&self, k: &KernelInner, driver: *mut DRIVER_OBJECT) {
        let Some(rec) = lock(&self.live).remove(&(driver as usize)) else {
            return;
        };
        for (address, size) in rec.client_extensions.into_values() {
            // SAFETY: allocated by IoAllocateDriverObjectExtension with this size.
            unsafe { raw_free(address as PVOID, size) };
        }
        if !k.devices.created_since(driver, 0).is_empty() {
            report(
                Rule::DeviceObjectMisuse,
                format!("driver {driver:?} went away with device objects alive"),
            );
            return;
        }
        // SAFETY: allocated by create with these sizes; no device points at them any more.
        unsafe {
            raw_free(rec.extension as PVOID, size_of::<DRIVER_EXTENSION>());
            raw_free(driver.cast(), size_of::<DRIVER_OBJECT>());
        }
    }
}

/// What the I/O manager does after a failed DriverEntry or after DriverUnload: anything
/// the driver still holds is a report, then its objects and its key go.
fn release(k: &KernelInner, driver: *mut DRIVER_OBJECT, when: &str) {
    k.notify.release_driver(driver, when);
    k.registry.release_driver(driver, when);
    k.drivers.destroy(k, driver);
}

impl Kernel {
    /// Loads a driver: makes its driver object (every dispatch entry the I/O manager's
    /// "invalid device request") and its service key with `parameters` as REG_DWORD
    /// values under `Parameters`, then calls `entry` at PASSIVE_LEVEL as DriverEntry.
    /// A failed DriverEntry's status comes back, and DriverUnload is not called.
    pub fn load_driver(
        &self,
        name: &str,
        entry: DriverEntry,
        parameters: &[(&str, u32)],
    ) -> Result<Driver, NTSTATUS> {
        let _in = self.enter();
        let k = self.inner();
        let Some(driver) = k.drivers.create(name, Some(invalid_request)) else {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        };
        k.registry.create_key(driver, parameters);
        let mut path = utf16(&format!("{SERVICES}\\{name}"));
        let mut registry_path = unicode(&mut path);
        let status = wsk::in_driver_entry(|| {
            with_irql(PASSIVE_LEVEL, "DriverEntry", || {
                // SAFETY: the driver's entry point, called as the I/O manager does, with
                // objects that outlive the call.
                unsafe { entry(driver, &mut registry_path) }
            })
        });
        if !NT_SUCCESS(status) {
            release(k, driver, "after its DriverEntry failed");
            return Err(status);
        }
        Ok(Driver { object: driver as usize })
    }

    /// Unloads a driver as Windows does: once every device object of it is deleted and
    /// unreferenced (waiting up to `timeout`), DriverUnload runs at PASSIVE_LEVEL on this
    /// thread, then the driver object, its extensions and its key are freed. A driver
    /// whose devices are still there at `timeout` stays loaded: STATUS_DEVICE_BUSY (pass
    /// `&driver` to be able to try again).
    pub fn unload_driver(&self, driver: impl Borrow<Driver>, timeout: Duration) -> Result<(), NTSTATUS> {
        let _in = self.enter();
        let k = self.inner();
        let object = driver.borrow().object();
        if !k.drivers.is_loaded(object) {
            return Err(STATUS_INVALID_PARAMETER);
        }
        if !k.devices.wait_gone(object, timeout) {
            return Err(STATUS_DEVICE_BUSY);
        }
        // SAFETY: a loaded driver's object; DriverUnload was set by the driver, if at all.
        if let Some(unload) = unsafe { (*object).DriverUnload } {
            with_irql(PASSIVE_LEVEL, "DriverUnload", || {
                // SAFETY: the driver's unload routine, called once, as the I/O manager does.
                unsafe { unload(object) }
            });
        }
        release(k, object, "at unload");
        Ok(())
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoAllocateDriverObjectExtension(
    driver: *mut DRIVER_OBJECT,
    client: PVOID,
    size: u32,
    out: *mut PVOID,
) -> NTSTATUS {
    let k = current();
    if !require_dispatch("IoAllocateDriverObjectExtension") || out.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the caller's out pointer.
    unsafe { *out = std::ptr::null_mut() };
    let mut live = lock(&k.drivers.live);
    let Some(rec) = live.get_mut(&(driver as usize)) else {
        drop(live);
        report(
            Rule::BadParameter,
            format!("IoAllocateDriverObjectExtension({driver:?}): not a loaded driver"),
        );
        return STATUS_INVALID_PARAMETER;
    };
    if rec.client_extensions.contains_key(&(client as usize)) {
        return STATUS_OBJECT_NAME_COLLISION;
    }
    if allocation_fails(AllocKind::Pool, None) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let block = raw_alloc(size as usize);
    if block.is_null() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    rec.client_extensions.insert(client as usize, (block as usize, size as usize));
    // SAFETY: as above.
    unsafe { *out = block };
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub extern "system" fn IoGetDriverObjectExtension(driver: *mut DRIVER_OBJECT, client: PVOID) -> PVOID {
    let k = current();
    require_dispatch("IoGetDriverObjectExtension");
    let live = lock(&k.drivers.live);
    let found = live.get(&(driver as usize)).and_then(|r| r.client_extensions.get(&(client as usize)));
    found.map_or(std::ptr::null_mut(), |&(address, _)| address as PVOID)
}
