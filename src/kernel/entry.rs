//! The image's entry point, and the one import the kernel lacks. The life cycle itself is
//! `crate::driver` (the same code ntsim loads in host builds).

use core::ffi::c_void;

use crate::nt::{DRIVER_OBJECT, NTSTATUS, UNICODE_STRING, system_random};

/// The entry point the image's header names (`/ENTRY:DriverEntry`).
///
/// # Safety
/// Called once by the I/O manager with its driver object, at PASSIVE_LEVEL.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DriverEntry(
    driver: *mut DRIVER_OBJECT,
    registry: *mut UNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: forwarded contract.
    unsafe { crate::driver::driver_entry(driver, registry) }
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
