//! A consumer driver of wsktls, written against its published interface only: the GUID,
//! the IOCTL, the dispatch table and the structures of `wsktls.h` (here their Rust twins
//! in `wsktls_nt`). It is what a driver author starts from:
//!
//! 1. DriverEntry registers for arrivals of `GUID_DEVINTERFACE_WSKTLS`, including the
//!    ones already there, so it does not matter which driver loads first.
//! 2. On arrival it opens the interface (IoGetDeviceObjectPointer) and sends one
//!    IRP_MJ_INTERNAL_DEVICE_CONTROL, IOCTL_WSKTLS_GET_PROVIDER, to get the provider and
//!    its dispatch table. It keeps the file object referenced while it uses them.
//! 3. [`Session`]s connect, send, receive, query, disconnect and close, each call with an
//!    IRP of its own that wsktls completes.
//! 4. When the interface goes away it lets go of the file object (once its last session
//!    is closed); unload unregisters the notification.
//!
//! The calls here wait for their IRPs (PASSIVE_LEVEL), which keeps the sample short; a
//! driver that cannot wait sets a completion routine that does its work instead.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod binding;
mod session;

pub use binding::Binding;
pub use session::{ConnectParams, Session};

use alloc::sync::Arc;
use core::ptr::null_mut;

use wsktls_nt::{
    DEVICE_INTERFACE_CHANGE_NOTIFICATION, DRIVER_OBJECT, Event, EventCategoryDeviceInterfaceChange,
    GUID_DEVICE_INTERFACE_ARRIVAL, GUID_DEVICE_INTERFACE_REMOVAL, GUID_DEVINTERFACE_WSKTLS,
    IoAllocateDriverObjectExtension, IoGetDriverObjectExtension, IoRegisterPlugPlayNotification,
    IoUnregisterPlugPlayNotificationEx, NTSTATUS, PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES,
    PVOID, STATUS_DEVICE_NOT_READY, STATUS_SUCCESS, SpinLock, UNICODE_STRING,
};

/// Identifies this driver's per-driver storage: its address.
static STORAGE_ID: u8 = 0;

/// The driver's state, in its driver object's extension.
pub struct Consumer {
    notification: PVOID,
    /// wsktls's provider, while its interface is there.
    binding: SpinLock<Option<Arc<Binding>>>,
    /// Signalled while a binding is there.
    bound: Event,
}

// SAFETY: the notification entry is an opaque token; the rest synchronises itself.
unsafe impl Sync for Consumer {}
// SAFETY: as above.
unsafe impl Send for Consumer {}

/// DriverEntry. PASSIVE_LEVEL.
///
/// # Safety
/// Called once by the I/O manager with its driver object.
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry: *mut UNICODE_STRING,
) -> NTSTATUS {
    let mut storage: PVOID = null_mut();
    let id = &STORAGE_ID as *const u8 as PVOID;
    // SAFETY: the I/O manager's driver object, in DriverEntry.
    let status =
        unsafe { IoAllocateDriverObjectExtension(driver, id, size_of::<Consumer>() as u32, &mut storage) };
    if !status.is_success() {
        return status;
    }
    let consumer = storage.cast::<Consumer>();
    // SAFETY: fresh storage of the right size, which stays put until the driver object goes.
    unsafe {
        consumer.write(Consumer {
            notification: null_mut(),
            binding: SpinLock::new(None),
            bound: Event::new(),
        });
        (*consumer).bound.initialize();
        (*driver).DriverUnload = Some(unload);
        let guid = &GUID_DEVINTERFACE_WSKTLS as *const _ as PVOID;
        IoRegisterPlugPlayNotification(
            EventCategoryDeviceInterfaceChange,
            PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES,
            guid,
            driver,
            Some(interface_changed),
            consumer.cast(),
            &mut (*consumer).notification,
        )
    }
}

/// Unload: no more notifications, and the provider let go of. Every session must have
/// been closed. PASSIVE_LEVEL.
unsafe extern "system" fn unload(driver: *mut DRIVER_OBJECT) {
    // SAFETY: our driver object, whose storage DriverEntry set up.
    if let Some(consumer) = unsafe { Consumer::of(driver) } {
        // SAFETY: registered in DriverEntry; unregistered once, outside the callback.
        unsafe { IoUnregisterPlugPlayNotificationEx(consumer.notification) };
        // Taken under the lock, let go of outside it: closing the file object sends
        // IRP_MJ_CLEANUP and IRP_MJ_CLOSE, at PASSIVE_LEVEL.
        let gone = consumer.binding.lock().take();
        drop(gone);
        // SAFETY: written in DriverEntry; dropped once, here.
        unsafe { core::ptr::drop_in_place(consumer as *const Consumer as *mut Consumer) };
    }
}

/// Arrival: bind to the provider (if not bound). Removal: let go of it. PASSIVE_LEVEL.
unsafe extern "system" fn interface_changed(notification: PVOID, context: PVOID) -> NTSTATUS {
    // SAFETY: the PnP manager's notification and our Consumer, valid for the call.
    let (n, consumer) = unsafe {
        (&*notification.cast::<DEVICE_INTERFACE_CHANGE_NOTIFICATION>(), &*context.cast::<Consumer>())
    };
    if n.Event == GUID_DEVICE_INTERFACE_ARRIVAL && consumer.binding.lock().is_none() {
        // A failure (the interface already going) waits for the next arrival.
        // SAFETY: the interface's name, valid for the call.
        if let Ok(binding) = unsafe { Binding::open(n.SymbolicLinkName) } {
            *consumer.binding.lock() = Some(Arc::new(binding));
            consumer.bound.set();
        }
    } else if n.Event == GUID_DEVICE_INTERFACE_REMOVAL {
        // SAFETY: as above.
        let name = unsafe { &*n.SymbolicLinkName };
        let mut binding = consumer.binding.lock();
        if binding.as_ref().is_some_and(|b| b.is_named(name)) {
            consumer.bound.clear();
            // Sessions still open keep the file object until they close.
            let gone = binding.take();
            drop(binding);
            drop(gone);
        }
    }
    STATUS_SUCCESS
}

impl Consumer {
    /// The state of a loaded sample driver.
    ///
    /// # Safety
    /// `driver` is this driver's object, loaded through [`driver_entry`].
    pub unsafe fn of<'a>(driver: *mut DRIVER_OBJECT) -> Option<&'a Consumer> {
        let id = &STORAGE_ID as *const u8 as PVOID;
        // SAFETY: per the caller.
        unsafe { IoGetDriverObjectExtension(driver, id).cast::<Consumer>().as_ref() }
    }

    /// Waits up to `timeout_ms` for wsktls's interface (PASSIVE_LEVEL).
    pub fn wait_for_provider(&self, timeout_ms: u32) -> Result<Arc<Binding>, NTSTATUS> {
        let _ = self.bound.wait(timeout_ms);
        self.binding.lock().clone().ok_or(STATUS_DEVICE_NOT_READY)
    }

    /// Lets go of the provider: the file object closes once the last session is closed.
    /// A driver calls this when it no longer needs wsktls; a production consumer also
    /// does it from a target-device notification (EventCategoryTargetDeviceChange,
    /// GUID_TARGET_DEVICE_QUERY_REMOVE) on its file object, which this sample does not
    /// register, so that a graceful removal of wsktls is not vetoed by its open handle.
    pub fn release(&self) {
        self.bound.clear();
        let gone = self.binding.lock().take();
        drop(gone);
    }

    /// The provider, if bound now.
    pub fn provider(&self) -> Option<Arc<Binding>> {
        self.binding.lock().clone()
    }
}
