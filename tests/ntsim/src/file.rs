//! File objects: opening a device through an enabled interface's name (from kernel mode,
//! IoGetDeviceObjectPointer; from user mode, [`Kernel::open_from_user_mode`], after the
//! device's security descriptor), IRP_MJ_CREATE to the top of the stack, and on the last
//! ObfDereferenceObject IRP_MJ_CLEANUP and IRP_MJ_CLOSE. An open file object keeps the
//! device it was opened on referenced, so its driver cannot unload under it.

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use wsktls_nt::{
    ACCESS_MASK, DEVICE_OBJECT, FILE_OBJECT, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, KPROCESSOR_MODE,
    KernelMode, NT_SUCCESS, NTSTATUS, PASSIVE_LEVEL, PVOID, STATUS_ACCESS_DENIED,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS, UNICODE_STRING, UserMode,
};

use crate::device::initializing;
use crate::driver::text;
use crate::irql::{current_irql, require_dispatch, require_passive};
use crate::kernel::{Kernel, KernelInner, current, lock, wait};
use crate::pool::{raw_alloc, raw_free};
use crate::request::{Request, send_and_wait};
use crate::security::Caller;
use crate::verifier::{Rule, report};

/// `IO_TYPE_FILE`.
const IO_TYPE_FILE: i16 = 5;

struct FileRecord {
    /// The device the file was opened on (the top of the stack then), referenced.
    device: usize,
    /// The physical device object of that stack.
    pdo: usize,
    refs: u32,
}

#[derive(Default)]
pub(crate) struct Files {
    live: Mutex<HashMap<usize, FileRecord>>,
    /// Signalled whenever a file object is closed.
    changed: Condvar,
}

impl Files {
    pub(crate) fn alive(&self) -> usize {
        lock(&self.live).len()
    }

    /// File objects open on the stack of `pdo`.
    pub(crate) fn open_on(&self, pdo: *mut DEVICE_OBJECT) -> usize {
        lock(&self.live).values().filter(|f| f.pdo == pdo as usize).count()
    }

    /// Waits up to `timeout` for every file object on the stack of `pdo` to close.
    pub(crate) fn wait_closed(&self, pdo: *mut DEVICE_OBJECT, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut live = lock(&self.live);
        while live.values().any(|f| f.pdo == pdo as usize) {
            match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => live = wait(&self.changed, live, left),
                _ => return,
            }
        }
    }

    pub(crate) fn check_unload(&self) {
        let n = lock(&self.live).len();
        if n > 0 {
            // The memory stays: nothing runs any more.
            report(Rule::ObjectReferenceMisuse, format!("{n} file object(s) still referenced at shutdown"));
        }
    }
}

/// Opens the device behind the enabled interface `link`: a file object (one reference)
/// and the top of the stack, which the file object keeps referenced.
fn open(
    k: &KernelInner,
    link: &str,
    mode: KPROCESSOR_MODE,
) -> Result<(*mut FILE_OBJECT, *mut DEVICE_OBJECT), NTSTATUS> {
    let pdo = k.interfaces.lookup_enabled(link).ok_or(STATUS_OBJECT_NAME_NOT_FOUND)?;
    k.pnp.open_status(pdo)?;
    let top = k.devices.top_of(pdo).ok_or(STATUS_NO_SUCH_DEVICE)?;
    if initializing(top) || !k.devices.reference(top, "an open") {
        return Err(STATUS_NO_SUCH_DEVICE);
    }
    let file = raw_alloc(size_of::<FILE_OBJECT>()) as *mut FILE_OBJECT;
    if file.is_null() {
        k.devices.dereference(top);
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    // SAFETY: a fresh zeroed FILE_OBJECT.
    unsafe {
        (*file).Type = IO_TYPE_FILE;
        (*file).Size = size_of::<FILE_OBJECT>() as i16;
        (*file).DeviceObject = pdo;
    }
    k.counters.creates_sent.fetch_add(1, Ordering::Relaxed);
    let create = Request { file, mode, ..Request::new(IRP_MJ_CREATE, 0, STATUS_SUCCESS) };
    let status = send_and_wait(top, &create);
    if !NT_SUCCESS(status) {
        // SAFETY: ours; the driver refused the open and must not keep it.
        unsafe { raw_free(file.cast(), size_of::<FILE_OBJECT>()) };
        k.devices.dereference(top);
        return Err(status);
    }
    lock(&k.files.live)
        .insert(file as usize, FileRecord { device: top as usize, pdo: pdo as usize, refs: 1 });
    Ok((file, top))
}

/// The last reference to `file` is gone (its record removed): IRP_MJ_CLEANUP and
/// IRP_MJ_CLOSE to the device it was opened on, then the memory and the device reference.
pub(crate) fn close_now(k: &KernelInner, file: usize) {
    let Some(device) = lock(&k.files.live).get(&file).map(|f| f.device as *mut DEVICE_OBJECT) else {
        return;
    };
    let f = file as *mut FILE_OBJECT;
    for major in [IRP_MJ_CLEANUP, IRP_MJ_CLOSE] {
        send_and_wait(device, &Request { file: f, ..Request::new(major, 0, STATUS_SUCCESS) });
    }
    lock(&k.files.live).remove(&file);
    // SAFETY: allocated by `open`; no record, so nothing reaches it any more.
    unsafe { raw_free(f.cast(), size_of::<FILE_OBJECT>()) };
    k.devices.dereference(device);
    k.files.changed.notify_all();
}

impl Kernel {
    /// An open of the interface `link` from a user-mode process running as `caller`: the
    /// stack's security descriptor first (STATUS_ACCESS_DENIED without any IRP), then
    /// IRP_MJ_CREATE with RequestorMode UserMode; a successful open is closed at once
    /// (IRP_MJ_CLEANUP, IRP_MJ_CLOSE). Returns the create's status.
    pub fn open_from_user_mode(&self, link: &str, caller: Caller) -> NTSTATUS {
        let _in = self.enter();
        let k = self.inner();
        let Some(pdo) = k.interfaces.lookup_enabled(link) else {
            return STATUS_OBJECT_NAME_NOT_FOUND;
        };
        if !k.pnp.security(pdo).is_some_and(|s| s.grants(caller)) {
            return STATUS_ACCESS_DENIED;
        }
        match open(k, link, UserMode) {
            Ok((file, _)) => {
                // SAFETY: the reference `open` gave us.
                unsafe { ObfDereferenceObject(file.cast()) };
                STATUS_SUCCESS
            }
            Err(status) => status,
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoGetDeviceObjectPointer(
    name: *mut UNICODE_STRING,
    _access: ACCESS_MASK,
    file_out: *mut *mut FILE_OBJECT,
    device_out: *mut *mut DEVICE_OBJECT,
) -> NTSTATUS {
    let k = current();
    if !require_passive("IoGetDeviceObjectPointer") || file_out.is_null() || device_out.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(link) = text(name) else {
        return STATUS_INVALID_PARAMETER;
    };
    match open(&k, &link, KernelMode) {
        Ok((file, device)) => {
            // SAFETY: the caller's out pointers, checked non-NULL.
            unsafe {
                *file_out = file;
                *device_out = device;
            }
            STATUS_SUCCESS
        }
        Err(status) => status,
    }
}

/// File objects: the last reference closes the file (at PASSIVE_LEVEL here, else on the
/// PnP thread). Device objects: a reference from ntsim's own bookkeeping goes.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn ObfDereferenceObject(object: PVOID) -> isize {
    let k = current();
    require_dispatch("ObDereferenceObject");
    let mut live = lock(&k.files.live);
    if let Some(f) = live.get_mut(&(object as usize)) {
        if f.refs == 0 {
            drop(live);
            report(
                Rule::ObjectReferenceMisuse,
                format!("ObDereferenceObject({object:?}): the file is closing"),
            );
            return 0;
        }
        f.refs -= 1;
        let left = f.refs;
        drop(live);
        if left == 0 {
            if current_irql() == PASSIVE_LEVEL {
                close_now(&k, object as usize);
            } else {
                k.notify.defer_close(object as usize);
            }
        }
        return left as isize;
    }
    drop(live);
    if !k.devices.dereference(object.cast()) {
        report(
            Rule::ObjectReferenceMisuse,
            format!("ObDereferenceObject({object:?}): not a referenced object"),
        );
    }
    0
}
