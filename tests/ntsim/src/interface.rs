//! Device interfaces: IoRegisterDeviceInterface names an interface of a class on a
//! physical device object, IoSetDeviceInterfaceState enables and disables it (arrival and
//! removal notifications follow), and the names it hands out are ntsim's allocations,
//! freed with RtlFreeUnicodeString. A name never freed is a leak at shutdown.

use std::collections::HashMap;
use std::sync::Mutex;

use wsktls_nt::{
    BOOLEAN, DEVICE_OBJECT, GUID, GUID_DEVICE_INTERFACE_ARRIVAL, GUID_DEVICE_INTERFACE_REMOVAL, NTSTATUS,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS,
    UNICODE_STRING,
};

use crate::driver::text;
use crate::irql::require_passive;
use crate::kernel::{Kernel, current, lock};
use crate::verifier::{Rule, report};

/// `STATUS_OBJECT_NAME_EXISTS` (ntstatus.h, informational): enabling an enabled interface.
pub(crate) const STATUS_OBJECT_NAME_EXISTS: NTSTATUS = NTSTATUS(0x4000_0000);

/// A GUID as Windows writes it in interface names: `{59df11a2-...}`, lower-case.
pub fn guid_text(g: &GUID) -> String {
    let d = g.Data4;
    format!(
        "{{{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}}}",
        g.Data1, g.Data2, g.Data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
    )
}

struct InterfaceRecord {
    pdo: usize,
    class: GUID,
    link: String,
    enabled: bool,
}

#[derive(Default)]
struct State {
    interfaces: Vec<InterfaceRecord>,
    /// Names handed out and not yet freed: buffer address → the buffer.
    strings: HashMap<usize, Box<[u16]>>,
}

#[derive(Default)]
pub(crate) struct Interfaces {
    state: Mutex<State>,
}

impl Interfaces {
    pub(crate) fn enabled_count(&self) -> usize {
        lock(&self.state).interfaces.iter().filter(|i| i.enabled).count()
    }

    /// The physical device object of the enabled interface named `link`.
    pub(crate) fn lookup_enabled(&self, link: &str) -> Option<*mut DEVICE_OBJECT> {
        let st = lock(&self.state);
        let found = st.interfaces.iter().find(|i| i.enabled && i.link.eq_ignore_ascii_case(link));
        found.map(|i| i.pdo as *mut DEVICE_OBJECT)
    }

    /// Runs `f` with the enabled links of `class`, under the interface lock, so that no
    /// arrival or removal is announced meanwhile (registration needs that).
    pub(crate) fn with_enabled<R>(&self, class: &GUID, f: impl FnOnce(Vec<String>) -> R) -> R {
        let st = lock(&self.state);
        let links = st.interfaces.iter().filter(|i| i.enabled && i.class == *class).map(|i| i.link.clone());
        f(links.collect())
    }

    /// IRP_MN_REMOVE_DEVICE has returned for `pdo`: an interface still enabled is a report
    /// (and is disabled now, with its removal announced); the device's interfaces go.
    pub(crate) fn device_removed(&self, pdo: *mut DEVICE_OBJECT) {
        let k = current();
        let mut st = lock(&self.state);
        let mut left = Vec::new();
        for i in st.interfaces.iter().filter(|i| i.pdo == pdo as usize && i.enabled) {
            k.notify.announce(&i.class, &i.link, GUID_DEVICE_INTERFACE_REMOVAL);
            left.push(i.link.clone());
        }
        st.interfaces.retain(|i| i.pdo != pdo as usize);
        drop(st);
        for link in left {
            report(
                Rule::InterfaceEnabledAfterRemove,
                format!("interface {link} still enabled after IRP_MN_REMOVE_DEVICE returned"),
            );
        }
    }

    pub(crate) fn check_unload(&self) {
        let n = lock(&self.state).strings.len();
        if n > 0 {
            report(
                Rule::UnicodeStringMisuse,
                format!("{n} interface name(s) never freed (RtlFreeUnicodeString)"),
            );
        }
    }

    /// Hands out `link` as a NUL-terminated buffer of ntsim's.
    fn allocate_name(&self, st: &mut State, link: &str, out: *mut UNICODE_STRING) {
        let mut buffer: Box<[u16]> = link.encode_utf16().chain([0]).collect();
        let bytes = ((buffer.len() - 1) * 2) as u16;
        let address = buffer.as_mut_ptr();
        st.strings.insert(address as usize, buffer);
        // SAFETY: the caller's UNICODE_STRING, checked non-NULL; the buffer lives in the
        // table (a boxed slice does not move) until RtlFreeUnicodeString.
        unsafe { *out = UNICODE_STRING { Length: bytes, MaximumLength: bytes + 2, Buffer: address } };
    }
}

impl Kernel {
    /// The names of the enabled interfaces of `class`.
    pub fn interfaces(&self, class: &GUID) -> Vec<String> {
        self.inner().interfaces.with_enabled(class, |links| links)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoRegisterDeviceInterface(
    pdo: *mut DEVICE_OBJECT,
    class: *const GUID,
    reference: *mut UNICODE_STRING,
    out: *mut UNICODE_STRING,
) -> NTSTATUS {
    let k = current();
    if !require_passive("IoRegisterDeviceInterface") || out.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the caller's GUID, if any.
    let Some(class) = (unsafe { class.as_ref() }).copied() else {
        return STATUS_INVALID_PARAMETER;
    };
    let Some(instance) = k.pnp.instance_path(pdo) else {
        report(
            Rule::BadParameter,
            format!("IoRegisterDeviceInterface({pdo:?}): not a physical device object"),
        );
        return STATUS_INVALID_DEVICE_REQUEST;
    };
    let mut link = format!("\\??\\{instance}#{}", guid_text(&class));
    if let Some(r) = text(reference).filter(|r| !r.is_empty()) {
        link = format!("{link}\\{r}");
    }
    let mut st = lock(&k.interfaces.state);
    if !st.interfaces.iter().any(|i| i.link.eq_ignore_ascii_case(&link)) {
        let record = InterfaceRecord { pdo: pdo as usize, class, link: link.clone(), enabled: false };
        st.interfaces.push(record);
    }
    k.interfaces.allocate_name(&mut st, &link, out);
    STATUS_SUCCESS
}

/// Enabling an enabled interface returns STATUS_OBJECT_NAME_EXISTS and disabling a
/// disabled one STATUS_OBJECT_NAME_NOT_FOUND, as Windows does; neither notifies.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoSetDeviceInterfaceState(
    link: *mut UNICODE_STRING,
    enable: BOOLEAN,
) -> NTSTATUS {
    let k = current();
    if !require_passive("IoSetDeviceInterfaceState") {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(link) = text(link) else {
        return STATUS_INVALID_PARAMETER;
    };
    let mut st = lock(&k.interfaces.state);
    let Some(i) = st.interfaces.iter_mut().find(|i| i.link.eq_ignore_ascii_case(&link)) else {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    };
    let enable = enable != 0;
    if i.enabled == enable {
        return if enable { STATUS_OBJECT_NAME_EXISTS } else { STATUS_OBJECT_NAME_NOT_FOUND };
    }
    i.enabled = enable;
    let event = if enable { GUID_DEVICE_INTERFACE_ARRIVAL } else { GUID_DEVICE_INTERFACE_REMOVAL };
    k.notify.announce(&i.class, &i.link, event);
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn RtlFreeUnicodeString(s: *mut UNICODE_STRING) {
    let k = current();
    // SAFETY: the caller's UNICODE_STRING, if any.
    let Some(us) = (unsafe { s.as_mut() }) else {
        return;
    };
    if us.Buffer.is_null() {
        return;
    }
    if lock(&k.interfaces.state).strings.remove(&(us.Buffer as usize)).is_none() {
        report(
            Rule::UnicodeStringMisuse,
            format!(
                "RtlFreeUnicodeString({s:?}): buffer {:?} was not allocated by the system (or freed twice)",
                us.Buffer
            ),
        );
        return;
    }
    *us = UNICODE_STRING { Length: 0, MaximumLength: 0, Buffer: std::ptr::null_mut() };
}
