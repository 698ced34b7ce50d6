//! Plug and Play notifications: IoRegisterPlugPlayNotification for device interface
//! changes, the callbacks run one at a time, in order, at PASSIVE_LEVEL on the kernel's
//! "ntsim-pnp" thread, and IoUnregisterPlugPlayNotificationEx, which waits for a running
//! callback. The same thread closes file objects whose last reference went above
//! PASSIVE_LEVEL (the object manager's deferred delete).
//!
//! A registration still held when its driver unloads is a report; so is unregistering
//! from inside the registration's own callback (Windows would deadlock there).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use wsktls_nt::{
    DEVICE_INTERFACE_CHANGE_NOTIFICATION, DRIVER_OBJECT, EventCategoryDeviceInterfaceChange, GUID, NTSTATUS,
    PASSIVE_LEVEL, PDRIVER_NOTIFICATION_CALLBACK_ROUTINE,
    PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES, PVOID, STATUS_INVALID_PARAMETER,
    STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};

use crate::driver::{unicode, utf16};
use crate::irql::{require_passive, with_irql};
use crate::kernel::{KernelInner, current, lock, wait};
use crate::pool::{raw_alloc, raw_free};
use crate::verifier::{Rule, report};

/// What ntsim allocates for a notification entry (opaque to the driver).
const ENTRY_SIZE: usize = 16;

type Callback = unsafe extern "system" fn(PVOID, PVOID) -> NTSTATUS;

struct Registration {
    /// Registration order: a change is announced to registrations in this order.
    order: u64,
    driver: usize,
    class: GUID,
    callback: Callback,
    context: usize,
}

enum Job {
    Notify { entry: usize, event: GUID, class: GUID, link: String },
    Close(usize),
}

#[derive(Default)]
struct State {
    /// Registrations by entry address.
    registrations: HashMap<usize, Registration>,
    queue: VecDeque<Job>,
    /// The entry whose callback is running now.
    running: Option<usize>,
    stopping: bool,
    next_order: u64,
    /// PnP operations in progress (a device being added and started): as on Windows,
    /// where the PnP thread that starts a device is the one that delivers notifications,
    /// none is delivered until they are done.
    held: usize,
}

#[derive(Default)]
pub(crate) struct Notifications {
    state: Mutex<State>,
    changed: Condvar,
}

thread_local! {
    /// The entry whose callback this thread is running, if any.
    static IN_CALLBACK: Cell<usize> = const { Cell::new(0) };
}

impl Notifications {
    /// The "ntsim-pnp" thread. At shutdown it drops pending notifications but still
    /// closes the file objects queued to it.
    pub(crate) fn run(&self, k: &KernelInner) {
        let mut st = lock(&self.state);
        loop {
            let notify_held = st.held > 0 && matches!(st.queue.front(), Some(Job::Notify { .. }));
            let next = if notify_held && !st.stopping { None } else { st.queue.pop_front() };
            let Some(job) = next else {
                if st.stopping {
                    return;
                }
                st = wait(&self.changed, st, Duration::from_millis(50));
                continue;
            };
            match job {
                Job::Close(file) => {
                    drop(st);
                    crate::file::close_now(k, file);
                }
                Job::Notify { entry, event, class, link } => {
                    let Some(r) = st.registrations.get(&entry).filter(|_| !st.stopping) else {
                        continue;
                    };
                    let (callback, context) = (r.callback, r.context);
                    st.running = Some(entry);
                    drop(st);
                    deliver(entry, callback, context, event, class, &link);
                }
            }
            st = lock(&self.state);
            st.running = None;
            self.changed.notify_all();
        }
    }

    /// Holds notifications back until the guard goes (a PnP operation in progress).
    pub(crate) fn hold(&self) -> Held<'_> {
        lock(&self.state).held += 1;
        Held { notifications: self }
    }

    pub(crate) fn stop(&self) {
        lock(&self.state).stopping = true;
        self.changed.notify_all();
    }

    pub(crate) fn count(&self) -> usize {
        lock(&self.state).registrations.len()
    }

    /// Queues `event` for `link` to every registration for `class`.
    pub(crate) fn announce(&self, class: &GUID, link: &str, event: GUID) {
        let mut st = lock(&self.state);
        let mut entries: Vec<(u64, usize)> =
            st.registrations.iter().filter(|(_, r)| r.class == *class).map(|(&e, r)| (r.order, e)).collect();
        entries.sort_unstable();
        for (_, entry) in entries {
            st.queue.push_back(Job::Notify { entry, event, class: *class, link: link.to_owned() });
        }
        self.changed.notify_all();
    }

    /// Closes `file` on the PnP thread (its last reference went at DISPATCH_LEVEL).
    pub(crate) fn defer_close(&self, file: usize) {
        lock(&self.state).queue.push_back(Job::Close(file));
        self.changed.notify_all();
    }

    /// The driver is going: a registration it still holds is a report, and goes.
    pub(crate) fn release_driver(&self, driver: *mut DRIVER_OBJECT, when: &str) {
        let mut st = lock(&self.state);
        let held: Vec<usize> =
            st.registrations.iter().filter(|(_, r)| r.driver == driver as usize).map(|(&e, _)| e).collect();
        for entry in &held {
            remove(&mut st, *entry);
        }
        drop(st);
        if !held.is_empty() {
            report(
                Rule::NotificationMisuse,
                format!(
                    "driver {driver:?} still held {} PnP notification registration(s) {when}",
                    held.len()
                ),
            );
        }
    }

    pub(crate) fn check_unload(&self) {
        let mut st = lock(&self.state);
        let entries: Vec<usize> = st.registrations.keys().copied().collect();
        for entry in &entries {
            remove(&mut st, *entry);
        }
        drop(st);
        if !entries.is_empty() {
            report(
                Rule::NotificationMisuse,
                format!("{} PnP notification registration(s) still held at shutdown", entries.len()),
            );
        }
    }
}

/// Forgets a registration and its queued notifications, and frees its entry.
fn remove(st: &mut State, entry: usize) {
    st.registrations.remove(&entry);
    st.queue.retain(|j| !matches!(j, Job::Notify { entry: e, .. } if *e == entry));
    // SAFETY: allocated by IoRegisterPlugPlayNotification; the driver may keep the
    // pointer but must not use it after unregistering.
    unsafe { raw_free(entry as PVOID, ENTRY_SIZE) };
}

/// Runs one callback with a notification that lives for the call.
fn deliver(entry: usize, callback: Callback, context: usize, event: GUID, class: GUID, link: &str) {
    let mut buffer = utf16(link);
    let mut name = unicode(&mut buffer);
    let mut n = DEVICE_INTERFACE_CHANGE_NOTIFICATION {
        Version: 1,
        Size: size_of::<DEVICE_INTERFACE_CHANGE_NOTIFICATION>() as u16,
        Event: event,
        InterfaceClassGuid: class,
        SymbolicLinkName: &mut name,
    };
    IN_CALLBACK.with(|c| c.set(entry));
    with_irql(PASSIVE_LEVEL, "a PnP notification callback", || {
        // SAFETY: the driver's callback, called as the PnP manager does; the notification
        // and the name it points to outlive the call.
        unsafe { callback(&mut n as *mut DEVICE_INTERFACE_CHANGE_NOTIFICATION as PVOID, context as PVOID) }
    });
    IN_CALLBACK.with(|c| c.set(0));
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoRegisterPlugPlayNotification(
    category: u32,
    flags: u32,
    data: PVOID,
    driver: *mut DRIVER_OBJECT,
    callback: PDRIVER_NOTIFICATION_CALLBACK_ROUTINE,
    context: PVOID,
    out: *mut PVOID,
) -> NTSTATUS {
    let k = current();
    if !require_passive("IoRegisterPlugPlayNotification") || out.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    if category != EventCategoryDeviceInterfaceChange {
        return STATUS_NOT_SUPPORTED;
    }
    // SAFETY: for this category the data is the interface class GUID.
    let class = unsafe { (data as *const GUID).as_ref() }.copied();
    let (Some(callback), Some(class)) = (callback, class) else {
        return STATUS_INVALID_PARAMETER;
    };
    if !k.drivers.is_loaded(driver) {
        report(
            Rule::BadParameter,
            format!("IoRegisterPlugPlayNotification: {driver:?} is not a loaded driver"),
        );
        return STATUS_INVALID_PARAMETER;
    }
    let entry = raw_alloc(ENTRY_SIZE) as usize;
    k.interfaces.with_enabled(&class, |existing| {
        let mut st = lock(&k.notify.state);
        let order = st.next_order;
        st.next_order += 1;
        let registration =
            Registration { order, driver: driver as usize, class, callback, context: context as usize };
        st.registrations.insert(entry, registration);
        if flags & PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES != 0 {
            for link in existing {
                let event = wsktls_nt::GUID_DEVICE_INTERFACE_ARRIVAL;
                st.queue.push_back(Job::Notify { entry, event, class, link });
            }
        }
        k.notify.changed.notify_all();
    });
    // SAFETY: the caller's out pointer, checked non-NULL.
    unsafe { *out = entry as PVOID };
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoUnregisterPlugPlayNotificationEx(entry: PVOID) -> NTSTATUS {
    let k = current();
    if !require_passive("IoUnregisterPlugPlayNotificationEx") {
        return STATUS_INVALID_PARAMETER;
    }
    let mut st = lock(&k.notify.state);
    if !st.registrations.contains_key(&(entry as usize)) {
        drop(st);
        report(
            Rule::NotificationMisuse,
            format!("IoUnregisterPlugPlayNotificationEx({entry:?}): not registered"),
        );
        return STATUS_INVALID_PARAMETER;
    }
    remove(&mut st, entry as usize);
    if IN_CALLBACK.with(Cell::get) == entry as usize {
        drop(st);
        report(
            Rule::NotificationMisuse,
            format!("IoUnregisterPlugPlayNotificationEx({entry:?}) from inside its own callback (deadlock)"),
        );
        return STATUS_SUCCESS;
    }
    while st.running == Some(entry as usize) {
        st = wait(&k.notify.changed, st, Duration::from_millis(50));
    }
    STATUS_SUCCESS
}

/// Notifications held back while this lives.
pub(crate) struct Held<'a> {
    notifications: &'a Notifications,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        lock(&self.notifications.state).held -= 1;
        self.notifications.changed.notify_all();
    }
}
