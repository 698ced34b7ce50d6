//! The registry, as far as a driver reads it: each loaded driver's service `Parameters`
//! key with REG_DWORD values, opened with IoOpenDriverRegistryKey, read with
//! ZwQueryValueKey, closed with ZwClose. A handle left open when its driver unloads is a
//! report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use wsktls_nt::{
    ACCESS_MASK, DRIVER_OBJECT, DriverRegKeyParameters, HANDLE, KEY_VALUE_PARTIAL_INFORMATION,
    KeyValuePartialInformation, NTSTATUS, PVOID, REG_DWORD, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS,
    UNICODE_STRING,
};

use crate::driver::{Driver, text};
use crate::irql::require_passive;
use crate::kernel::{Kernel, current, lock};
use crate::verifier::{Rule, report};

/// `STATUS_BUFFER_OVERFLOW` (ntstatus.h, a warning), which wsktls-nt does not declare.
pub(crate) const STATUS_BUFFER_OVERFLOW: NTSTATUS = NTSTATUS(0x8000_0005_u32 as i32);
/// `FIELD_OFFSET(KEY_VALUE_PARTIAL_INFORMATION, Data)`.
const PARTIAL_HEADER: usize = 12;
/// Kernel handles have the top bit set; ntsim's are numbered from here, 4 apart.
const FIRST_HANDLE: usize = 0xFFFF_8000_0000_0004;

#[derive(Default)]
struct State {
    /// Each driver's Parameters values, by lower-cased name.
    keys: HashMap<usize, BTreeMap<String, u32>>,
    /// Open handles → the driver whose key they name.
    handles: HashMap<usize, usize>,
    next_handle: usize,
}

#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
}

impl Registry {
    pub(crate) fn create_key(&self, driver: *mut DRIVER_OBJECT, values: &[(&str, u32)]) {
        let key = values.iter().map(|&(n, v)| (n.to_lowercase(), v)).collect();
        lock(&self.state).keys.insert(driver as usize, key);
    }

    /// The driver is going: a handle it left open is a report; its key goes.
    pub(crate) fn release_driver(&self, driver: *mut DRIVER_OBJECT, when: &str) {
        let mut st = lock(&self.state);
        st.keys.remove(&(driver as usize));
        let before = st.handles.len();
        st.handles.retain(|_, d| *d != driver as usize);
        let left = before - st.handles.len();
        drop(st);
        if left > 0 {
            report(
                Rule::RegistryHandleMisuse,
                format!("driver {driver:?} left {left} registry handle(s) open {when}"),
            );
        }
    }

    pub(crate) fn check_unload(&self) {
        let n = lock(&self.state).handles.len();
        if n > 0 {
            report(Rule::RegistryHandleMisuse, format!("{n} registry handle(s) still open at shutdown"));
        }
    }

    fn value(&self, handle: HANDLE, name: &str) -> Result<Option<u32>, ()> {
        let st = lock(&self.state);
        let driver = st.handles.get(&(handle as usize)).ok_or(())?;
        Ok(st.keys.get(driver).and_then(|k| k.get(&name.to_lowercase())).copied())
    }
}

impl Kernel {
    /// Sets (or adds) a REG_DWORD value in a loaded driver's `Parameters` key.
    pub fn set_parameter(&self, driver: &Driver, name: &str, value: u32) {
        let mut st = lock(&self.inner().registry.state);
        if let Some(key) = st.keys.get_mut(&(driver.object() as usize)) {
            key.insert(name.to_lowercase(), value);
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoOpenDriverRegistryKey(
    driver: *mut DRIVER_OBJECT,
    key_type: u32,
    _access: ACCESS_MASK,
    _flags: u32,
    out: *mut HANDLE,
) -> NTSTATUS {
    let k = current();
    if !require_passive("IoOpenDriverRegistryKey") || out.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    if key_type != DriverRegKeyParameters {
        return STATUS_NOT_SUPPORTED;
    }
    let mut st = lock(&k.registry.state);
    if !st.keys.contains_key(&(driver as usize)) {
        drop(st);
        report(Rule::BadParameter, format!("IoOpenDriverRegistryKey({driver:?}): not a loaded driver"));
        return STATUS_INVALID_PARAMETER;
    }
    let handle = FIRST_HANDLE + 4 * st.next_handle;
    st.next_handle += 1;
    st.handles.insert(handle, driver as usize);
    // SAFETY: the caller's out pointer, checked non-NULL.
    unsafe { *out = handle as HANDLE };
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn ZwQueryValueKey(
    handle: HANDLE,
    name: *mut UNICODE_STRING,
    class: u32,
    information: PVOID,
    length: u32,
    result: *mut u32,
) -> NTSTATUS {
    let k = current();
    if !require_passive("ZwQueryValueKey") || result.is_null() || class != KeyValuePartialInformation {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(name) = text(name) else {
        return STATUS_INVALID_PARAMETER;
    };
    let value = match k.registry.value(handle, &name) {
        Ok(Some(v)) => v,
        Ok(None) => return STATUS_OBJECT_NAME_NOT_FOUND,
        Err(()) => {
            report(
                Rule::RegistryHandleMisuse,
                format!("ZwQueryValueKey({handle:?}): not an open key handle"),
            );
            return STATUS_INVALID_HANDLE;
        }
    };
    // SAFETY: the caller's buffer of `length` bytes and its result pointer.
    unsafe { fill(information.cast(), length as usize, result, value) }
}

/// Writes a KEY_VALUE_PARTIAL_INFORMATION for a REG_DWORD as far as `length` allows.
unsafe fn fill(
    info: *mut KEY_VALUE_PARTIAL_INFORMATION,
    length: usize,
    result: *mut u32,
    value: u32,
) -> NTSTATUS {
    let needed = PARTIAL_HEADER + size_of::<u32>();
    // SAFETY: per the caller, `info` holds `length` bytes; nothing is written past them.
    unsafe {
        *result = needed as u32;
        if length < PARTIAL_HEADER || info.is_null() {
            return STATUS_BUFFER_TOO_SMALL;
        }
        (*info).TitleIndex = 0;
        (*info).Type = REG_DWORD;
        (*info).DataLength = size_of::<u32>() as u32;
        if length < needed {
            return STATUS_BUFFER_OVERFLOW;
        }
        let data = std::ptr::addr_of_mut!((*info).Data) as *mut u8;
        std::ptr::copy_nonoverlapping(value.to_le_bytes().as_ptr(), data, size_of::<u32>());
    }
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub extern "system" fn ZwClose(handle: HANDLE) -> NTSTATUS {
    let k = current();
    if !require_passive("ZwClose") {
        return STATUS_INVALID_PARAMETER;
    }
    if lock(&k.registry.state).handles.remove(&(handle as usize)).is_none() {
        report(Rule::RegistryHandleMisuse, format!("ZwClose({handle:?}): not an open handle"));
        return STATUS_INVALID_HANDLE;
    }
    STATUS_SUCCESS
}
