//! DriverEntry and unload. The driver's life cycle (configuration, the device, its
//! interface, WSK registration) belongs to the interface work; today the entry point sets
//! the unload routine and keeps the consumer-facing entry points in the image.

use core::ffi::c_void;

use crate::channel::{Channel, ChannelConfig};
use crate::interface;
use crate::nt::{DRIVER_OBJECT, IRP, NTSTATUS, STATUS_SUCCESS, UNICODE_STRING, WSK_BUF, system_random};
use crate::wsk::WskClient;

/// The entry point the image's header names (`/ENTRY:DriverEntry`).
///
/// # Safety
/// Called once by the I/O manager with its driver object, at PASSIVE_LEVEL.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DriverEntry(
    driver: *mut DRIVER_OBJECT,
    _registry: *mut UNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: the I/O manager's driver object, ours to fill in DriverEntry.
    unsafe { (*driver).DriverUnload = Some(unload) };
    crate::log!(crate::log::Level::Info, "loaded ({})", env!("CARGO_PKG_VERSION"));
    STATUS_SUCCESS
}

unsafe extern "system" fn unload(_driver: *mut DRIVER_OBJECT) {
    crate::log!(crate::log::Level::Info, "unloaded");
}

/// ring's getrandom falls back to advapi32's RtlGenRandom (`SystemFunction036`) when
/// BCryptGenRandom fails; the kernel has no advapi32. This definition of the import slot
/// satisfies that reference inside the image, with the kernel's RNG.
#[unsafe(no_mangle)]
#[used]
#[allow(non_upper_case_globals)]
pub static __imp_SystemFunction036: unsafe extern "system" fn(*mut c_void, u32) -> u8 = rtl_gen_random;

unsafe extern "system" fn rtl_gen_random(buffer: *mut c_void, length: u32) -> u8 {
    // SAFETY: getrandom passes a writable buffer of `length` bytes.
    let bytes = unsafe { core::slice::from_raw_parts_mut(buffer.cast::<u8>(), length as usize) };
    system_random(bytes).is_ok() as u8
}

/// The consumer-facing entry points. Until the interface work hands them to consumers
/// through its dispatch table (reached from DriverEntry), the link keeps them in the image
/// by name (`/INCLUDE:WSKTLS_ENTRY_POINTS`), so the image holds the whole driver.
#[allow(dead_code)] // read by consumers through the table, not by Rust code here
pub struct EntryPoints {
    pub connect: fn(&WskClient, &ChannelConfig) -> Result<Channel, NTSTATUS>,
    pub send: unsafe fn(&Channel, &WSK_BUF, u32, *mut IRP) -> NTSTATUS,
    pub receive: unsafe fn(&Channel, &WSK_BUF, u32, *mut IRP) -> NTSTATUS,
    pub disconnect: fn(&Channel, u32) -> Result<(), NTSTATUS>,
    pub close: fn(Channel),
    pub register: fn() -> Result<WskClient, NTSTATUS>,
    pub capture: fn(&mut WskClient, u32) -> Result<(), NTSTATUS>,
    pub deregister: fn(WskClient),
}

#[unsafe(no_mangle)]
#[used]
pub static WSKTLS_ENTRY_POINTS: EntryPoints = EntryPoints {
    connect: Channel::connect,
    send: interface::send,
    receive: interface::receive,
    disconnect: Channel::disconnect,
    close: Channel::close,
    register: WskClient::register,
    capture: WskClient::capture_provider,
    deregister: core::mem::drop::<WskClient>,
};
