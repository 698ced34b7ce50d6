//! Device objects: IoCreateDevice / IoDeleteDevice, device stacks (IoAttachDeviceToDeviceStack,
//! IoDetachDevice), references (file objects and queued work items keep a deleted device's
//! memory alive), and IofCallDriver, the one way an IRP reaches a driver.
//!
//! A device's memory is freed only when it is deleted and unreferenced; a driver cannot
//! unload before then. Nothing here calls a driver while holding the device table lock.

use std::collections::{HashMap, HashSet};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wsktls_nt::{
    BOOLEAN, DEVICE_OBJECT, DO_DEVICE_INITIALIZING, DRIVER_OBJECT, IRP, IRP_MJ_MAXIMUM_FUNCTION,
    IoGetCurrentIrpStackLocation, NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE, STATUS_NOT_SUPPORTED, STATUS_PENDING, STATUS_SUCCESS,
    UNICODE_STRING,
};

use crate::faults::{AllocKind, allocation_fails};
use crate::io::IofCompleteRequest;
use crate::irql::{current_irql, require_dispatch, require_passive, set_irql};
use crate::kernel::{current, lock, wait};
use crate::pool::{raw_alloc, raw_free};
use crate::verifier::{Rule, report};

/// `IO_TYPE_DEVICE`.
const IO_TYPE_DEVICE: i16 = 3;

/// Where the extension starts: the real DEVICE_OBJECT is DECLSPEC_ALIGN(16), 0x150 bytes.
const EXTENSION_OFFSET: usize = size_of::<DEVICE_OBJECT>().next_multiple_of(16);

struct DeviceRecord {
    /// Bytes allocated (object and extension).
    size: usize,
    driver: usize,
    deleted: bool,
    /// References: open file objects, queued or running work items.
    refs: u32,
    /// The device this one is attached on top of, until IoDetachDevice.
    attached_to: usize,
    /// Creation order, so AddDevice's devices can be told from older ones.
    serial: u64,
}

#[derive(Default)]
struct State {
    live: HashMap<usize, DeviceRecord>,
    /// Addresses of freed devices (until reused), to tell use-after-free from garbage.
    freed: HashSet<usize>,
}

#[derive(Default)]
pub(crate) struct Devices {
    state: Mutex<State>,
    /// Signalled whenever a device is freed (unload_driver waits for its driver's).
    changed: Condvar,
    serial: AtomicU64,
}

impl Devices {
    pub(crate) fn alive(&self) -> usize {
        lock(&self.state).live.len()
    }

    /// The serial the next device will get.
    pub(crate) fn next_serial(&self) -> u64 {
        self.serial.load(Ordering::Relaxed)
    }

    /// The devices of `driver` created at or after `serial`, still alive.
    pub(crate) fn created_since(&self, driver: *mut DRIVER_OBJECT, serial: u64) -> Vec<*mut DEVICE_OBJECT> {
        let st = lock(&self.state);
        st.live
            .iter()
            .filter(|(_, r)| r.driver == driver as usize && r.serial >= serial)
            .map(|(&d, _)| d as *mut DEVICE_OBJECT)
            .collect()
    }

    /// Whether `device` is one of ntsim's live (not yet freed) device objects.
    pub(crate) fn is_live(&self, device: *mut DEVICE_OBJECT) -> bool {
        lock(&self.state).live.contains_key(&(device as usize))
    }

    /// Whether `device` is the address of a device object ntsim has freed (and not reused).
    pub(crate) fn was_freed(&self, device: *mut DEVICE_OBJECT) -> bool {
        lock(&self.state).freed.contains(&(device as usize))
    }

    /// Takes a reference on one of ntsim's devices. False (and no reference) for a pointer
    /// ntsim did not create, such as a test's stand-in; a freed device is a report.
    pub(crate) fn reference(&self, device: *mut DEVICE_OBJECT, what: &str) -> bool {
        let mut st = lock(&self.state);
        if let Some(rec) = st.live.get_mut(&(device as usize)) {
            rec.refs += 1;
            // SAFETY: live device memory; the field mirrors the record.
            unsafe { (*device).ReferenceCount = rec.refs as i32 };
            return true;
        }
        let freed = st.freed.contains(&(device as usize));
        drop(st);
        if freed {
            report(Rule::DeviceObjectMisuse, format!("{what}: device {device:?} was already freed"));
        }
        false
    }

    /// Gives up a reference from [`Devices::reference`]; the last one of a deleted device
    /// frees it. False if `device` is not a live device of ntsim's.
    pub(crate) fn dereference(&self, device: *mut DEVICE_OBJECT) -> bool {
        let mut st = lock(&self.state);
        let Some(rec) = st.live.get_mut(&(device as usize)) else {
            return false;
        };
        if rec.refs == 0 {
            drop(st);
            report(Rule::ObjectReferenceMisuse, format!("device {device:?} dereferenced with no reference"));
            return true;
        }
        rec.refs -= 1;
        // SAFETY: live device memory.
        unsafe { (*device).ReferenceCount = rec.refs as i32 };
        if rec.refs == 0 && rec.deleted {
            self.free(&mut st, device);
        }
        true
    }

    fn free(&self, st: &mut MutexGuard<'_, State>, device: *mut DEVICE_OBJECT) {
        if let Some(rec) = st.live.remove(&(device as usize)) {
            st.freed.insert(device as usize);
            // SAFETY: allocated by IoCreateDevice with this size; no longer tracked.
            unsafe { raw_free(device.cast(), rec.size) };
            self.changed.notify_all();
        }
    }

    /// Waits up to `timeout` until `driver` has no device object left. False on timeout.
    pub(crate) fn wait_gone(&self, driver: *mut DRIVER_OBJECT, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        loop {
            if !st.live.values().any(|r| r.driver == driver as usize) {
                return true;
            }
            match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => st = wait(&self.changed, st, left),
                _ => return false,
            }
        }
    }

    /// The top of the stack `device` is in, if `device` is live.
    pub(crate) fn top_of(&self, device: *mut DEVICE_OBJECT) -> Option<*mut DEVICE_OBJECT> {
        let st = lock(&self.state);
        if !st.live.contains_key(&(device as usize)) {
            return None;
        }
        Some(top_locked(device))
    }

    /// Whether something is attached above `device`, which must be live.
    pub(crate) fn has_attached(&self, device: *mut DEVICE_OBJECT) -> bool {
        let _st = lock(&self.state);
        // SAFETY: per the caller, live; attach and detach write under this lock.
        unsafe { !(*device).AttachedDevice.is_null() }
    }

    pub(crate) fn check_unload(&self) {
        let st = lock(&self.state);
        if st.live.is_empty() {
            return;
        }
        let list: Vec<String> = st
            .live
            .iter()
            .map(|(d, r)| format!("{d:#x} (deleted: {}, references: {})", r.deleted, r.refs))
            .collect();
        drop(st);
        // The memory stays: nothing runs any more, and a driver might still point at it.
        report(
            Rule::DeviceObjectMisuse,
            format!("device object(s) still alive at shutdown: {}", list.join(", ")),
        );
    }
}

/// Follows AttachedDevice to the top of a stack. The caller holds the device table lock.
fn top_locked(mut device: *mut DEVICE_OBJECT) -> *mut DEVICE_OBJECT {
    // SAFETY: devices in a stack are live: one that is attached to cannot be freed
    // before its attachment is undone (the deletion is a report, the memory stays).
    unsafe {
        while !(*device).AttachedDevice.is_null() {
            device = (*device).AttachedDevice;
        }
    }
    device
}

/// A report naming what `device` is when it is not a live device object.
fn unknown_device(function: &str, device: *mut DEVICE_OBJECT) {
    if current().devices.was_freed(device) {
        report(Rule::DeviceObjectMisuse, format!("{function}({device:?}): the device was already freed"));
    } else {
        report(Rule::BadParameter, format!("{function}({device:?}): not a device object"));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoCreateDevice(
    driver: *mut DRIVER_OBJECT,
    extension_size: u32,
    name: *mut UNICODE_STRING,
    device_type: u32,
    characteristics: u32,
    _exclusive: BOOLEAN,
    out: *mut *mut DEVICE_OBJECT,
) -> NTSTATUS {
    let k = current();
    if !require_passive("IoCreateDevice") {
        return STATUS_INVALID_PARAMETER;
    }
    if out.is_null() || !k.drivers.is_loaded(driver) {
        report(Rule::BadParameter, format!("IoCreateDevice({driver:?}, out {out:?}): not a loaded driver"));
        return STATUS_INVALID_PARAMETER;
    }
    if !name.is_null() {
        // Named devices would need the object manager's namespace, which ntsim lacks.
        return STATUS_NOT_SUPPORTED;
    }
    if allocation_fails(AllocKind::Pool, None) {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    match k.devices.create(driver, extension_size, device_type, characteristics) {
        Some(device) => {
            // SAFETY: the caller's out pointer, checked non-NULL.
            unsafe { *out = device };
            STATUS_SUCCESS
        }
        None => STATUS_INSUFFICIENT_RESOURCES,
    }
}

impl Devices {
    /// A new device object of `driver` (a loaded one), initializing, at the head of the
    /// driver's list. No fault injection: the PnP manager's own PDOs come from here too.
    pub(crate) fn create(
        &self,
        driver: *mut DRIVER_OBJECT,
        extension_size: u32,
        device_type: u32,
        characteristics: u32,
    ) -> Option<*mut DEVICE_OBJECT> {
        let size = EXTENSION_OFFSET + (extension_size as usize).next_multiple_of(16);
        let device = raw_alloc(size) as *mut DEVICE_OBJECT;
        if device.is_null() {
            return None;
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.state);
        // SAFETY: fresh zeroed allocation of `size` bytes; the driver object is loaded and
        // its device list is only changed under the device table lock.
        unsafe { initialize(device, driver, extension_size, device_type, characteristics) };
        st.freed.remove(&(device as usize));
        let rec =
            DeviceRecord { size, driver: driver as usize, deleted: false, refs: 0, attached_to: 0, serial };
        st.live.insert(device as usize, rec);
        Some(device)
    }
}

/// IoCreateDevice's fields, and the link into the driver's device list.
unsafe fn initialize(
    device: *mut DEVICE_OBJECT,
    driver: *mut DRIVER_OBJECT,
    extension_size: u32,
    device_type: u32,
    characteristics: u32,
) {
    // SAFETY: per the caller.
    unsafe {
        (*device).Type = IO_TYPE_DEVICE;
        (*device).Size = (EXTENSION_OFFSET + extension_size as usize) as u16;
        (*device).DriverObject = driver;
        (*device).Flags = DO_DEVICE_INITIALIZING;
        (*device).Characteristics = characteristics;
        (*device).DeviceType = device_type;
        (*device).StackSize = 1;
        if extension_size > 0 {
            (*device).DeviceExtension = (device as *mut u8).add(EXTENSION_OFFSET).cast();
        }
        (*device).NextDevice = (*driver).DeviceObject;
        (*driver).DeviceObject = device;
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoDeleteDevice(device: *mut DEVICE_OBJECT) {
    let k = current();
    if !require_passive("IoDeleteDevice") {
        return;
    }
    let mut st = lock(&k.devices.state);
    let Some(rec) = st.live.get_mut(&(device as usize)) else {
        drop(st);
        return unknown_device("IoDeleteDevice", device);
    };
    if rec.deleted {
        drop(st);
        report(Rule::DeviceObjectMisuse, format!("IoDeleteDevice({device:?}): deleted twice"));
        return;
    }
    if rec.attached_to != 0 {
        let below = rec.attached_to;
        drop(st);
        report(
            Rule::DeviceObjectMisuse,
            format!("IoDeleteDevice({device:?}) while still attached to {below:#x} (no IoDetachDevice)"),
        );
        return;
    }
    rec.deleted = true;
    let (driver, free_now) = (rec.driver as *mut DRIVER_OBJECT, rec.refs == 0);
    // SAFETY: the driver object outlives its devices; its list changes under this lock.
    unsafe { unlink(driver, device) };
    if free_now {
        k.devices.free(&mut st, device);
    }
}

/// Removes `device` from its driver's NextDevice list.
unsafe fn unlink(driver: *mut DRIVER_OBJECT, device: *mut DEVICE_OBJECT) {
    // SAFETY: per the caller, the list is consistent and only changed under the lock held.
    unsafe {
        let mut link: *mut *mut DEVICE_OBJECT = &mut (*driver).DeviceObject;
        while !(*link).is_null() {
            if *link == device {
                *link = (*device).NextDevice;
                (*device).NextDevice = std::ptr::null_mut();
                return;
            }
            link = &mut (**link).NextDevice;
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoAttachDeviceToDeviceStack(
    source: *mut DEVICE_OBJECT,
    target: *mut DEVICE_OBJECT,
) -> *mut DEVICE_OBJECT {
    let k = current();
    if !require_passive("IoAttachDeviceToDeviceStack") {
        return std::ptr::null_mut();
    }
    let mut st = lock(&k.devices.state);
    if !st.live.contains_key(&(source as usize)) || !st.live.contains_key(&(target as usize)) {
        drop(st);
        let bad = if k.devices.is_live(source) { target } else { source };
        unknown_device("IoAttachDeviceToDeviceStack", bad);
        return std::ptr::null_mut();
    }
    let top = top_locked(target);
    if st.live.get(&(top as usize)).is_none_or(|r| r.deleted) {
        return std::ptr::null_mut(); // the stack is being torn down
    }
    if let Some(rec) = st.live.get_mut(&(source as usize)) {
        rec.attached_to = top as usize;
    }
    // SAFETY: both live; stack links change under the device table lock.
    unsafe {
        (*top).AttachedDevice = source;
        (*source).StackSize = (*top).StackSize + 1;
        (*source).AlignmentRequirement = (*top).AlignmentRequirement;
        (*source).SectorSize = (*top).SectorSize;
    }
    top
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoDetachDevice(target: *mut DEVICE_OBJECT) {
    let k = current();
    if !require_passive("IoDetachDevice") {
        return;
    }
    let mut st = lock(&k.devices.state);
    if !st.live.contains_key(&(target as usize)) {
        drop(st);
        return unknown_device("IoDetachDevice", target);
    }
    // SAFETY: live; stack links change under the device table lock.
    let above = unsafe { std::mem::replace(&mut (*target).AttachedDevice, std::ptr::null_mut()) };
    match st.live.get_mut(&(above as usize)) {
        Some(rec) => rec.attached_to = 0,
        None => {
            drop(st);
            report(Rule::BadParameter, format!("IoDetachDevice({target:?}): nothing is attached to it"));
        }
    }
}

/// How long ntsim waits for an IRP it sent itself before calling it lost.
pub(crate) const IRP_WAIT: Duration = Duration::from_secs(30);

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IofCallDriver(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    let k = current();
    require_dispatch("IoCallDriver");
    let location = match k.irps.call_begin(irp) {
        Ok(location) => location,
        Err(status) => return status,
    };
    // SAFETY: call_begin made the next location current; the IRP is the caller's.
    let sp = unsafe { IoGetCurrentIrpStackLocation(irp) };
    // SAFETY: as above.
    unsafe { (*sp).DeviceObject = device };
    let Some(dispatch) = dispatch_routine(device, irp) else {
        // The IRP went nowhere: complete it so its sender's completion routine still runs.
        // SAFETY: the IRP is in flight to nobody; completing it hands it back.
        unsafe {
            (*irp).IoStatus.set(STATUS_NO_SUCH_DEVICE, 0);
            IofCompleteRequest(irp, 0);
        }
        k.irps.call_end(irp, location);
        return STATUS_NO_SUCH_DEVICE;
    };
    let irql = current_irql();
    // SAFETY: the driver's dispatch routine, called as the I/O manager does.
    let status = unsafe { dispatch(device, irp) };
    if current_irql() != irql {
        report(
            Rule::IrqlMismatch,
            format!(
                "the dispatch routine for IRP {irp:?} returned at IRQL {}, called at {irql}",
                current_irql()
            ),
        );
        set_irql(irql);
    }
    let marked = k.irps.call_end(irp, location);
    if status == STATUS_PENDING && !marked {
        report(
            Rule::PendingNotMarked,
            format!(
                "the dispatch routine of device {device:?} returned STATUS_PENDING for IRP {irp:?} without IoMarkIrpPending"
            ),
        );
    }
    status
}

type Dispatch = unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP) -> NTSTATUS;

/// The routine `device`'s driver has for the IRP's current major function, or None
/// (reported) when the device is not live or the function is out of range.
fn dispatch_routine(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> Option<Dispatch> {
    let k = current();
    let st = lock(&k.devices.state);
    if !st.live.contains_key(&(device as usize)) {
        drop(st);
        unknown_device("IoCallDriver", device);
        return None;
    }
    // SAFETY: the device is live (a deleted one still referenced may get IRPs, as CLOSE);
    // its driver object outlives it; the current location was set by call_begin.
    let (major, routine) = unsafe {
        let major = (*IoGetCurrentIrpStackLocation(irp)).MajorFunction;
        let table = &(*(*device).DriverObject).MajorFunction;
        (major, table.get(major as usize).copied().flatten())
    };
    drop(st);
    if major > IRP_MJ_MAXIMUM_FUNCTION {
        report(Rule::BadParameter, format!("IoCallDriver: IRP {irp:?} has major function {major:#x}"));
        return None;
    }
    Some(routine.unwrap_or(invalid_request))
}

/// The I/O manager's "invalid device request" routine: every MajorFunction entry a driver
/// does not fill in.
pub(crate) unsafe extern "system" fn invalid_request(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the IRP was sent to us; completing it hands it back.
    unsafe {
        (*irp).IoStatus.set(STATUS_INVALID_DEVICE_REQUEST, 0);
        IofCompleteRequest(irp, 0);
    }
    STATUS_INVALID_DEVICE_REQUEST
}

/// Whether `device` still says DO_DEVICE_INITIALIZING. `device` must be live.
pub(crate) fn initializing(device: *mut DEVICE_OBJECT) -> bool {
    // SAFETY: per the caller.
    unsafe { (*device).Flags & DO_DEVICE_INITIALIZING != 0 }
}
