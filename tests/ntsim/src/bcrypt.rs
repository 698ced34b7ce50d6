//! ksecdd.sys's BCryptGenRandom: bytes from the host's RNG, with kernel-mode CNG's rules.
//! ntsim opens no algorithm providers, so the system-preferred RNG (NULL handle,
//! BCRYPT_USE_SYSTEM_PREFERRED_RNG, PASSIVE_LEVEL only) is the one way in.

use std::sync::atomic::Ordering;

use wsktls_nt::{
    BCRYPT_RNG_USE_ENTROPY_IN_BUFFER, BCRYPT_USE_SYSTEM_PREFERRED_RNG, NTSTATUS, PASSIVE_LEVEL, PVOID,
    STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
    STATUS_UNSUCCESSFUL,
};

use crate::irql::current_irql;
use crate::kernel::current;
use crate::verifier::{Rule, report};

/// Returns STATUS_INVALID_HANDLE for any algorithm handle (none can be valid here) and for
/// a NULL handle without BCRYPT_USE_SYSTEM_PREFERRED_RNG; STATUS_INVALID_PARAMETER for
/// unknown flags or a NULL buffer with a non-zero length; and, with a report,
/// STATUS_NOT_SUPPORTED above PASSIVE_LEVEL, leaving the buffer untouched.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn BCryptGenRandom(
    algorithm: PVOID,
    buffer: *mut u8,
    length: u32,
    flags: u32,
) -> NTSTATUS {
    let k = current();
    k.counters.rng_calls.fetch_add(1, Ordering::Relaxed);
    if flags & !(BCRYPT_RNG_USE_ENTROPY_IN_BUFFER | BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0 {
        return STATUS_INVALID_PARAMETER;
    }
    if !algorithm.is_null() || flags & BCRYPT_USE_SYSTEM_PREFERRED_RNG == 0 {
        return STATUS_INVALID_HANDLE;
    }
    let irql = current_irql();
    if irql > PASSIVE_LEVEL {
        report(
            Rule::RngAboveAllowedIrql,
            format!(
                "BCryptGenRandom(BCRYPT_USE_SYSTEM_PREFERRED_RNG) at IRQL {irql}: kernel mode allows it only at PASSIVE_LEVEL"
            ),
        );
        return STATUS_NOT_SUPPORTED;
    }
    if length == 0 {
        return STATUS_SUCCESS;
    }
    if buffer.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the caller gives `length` writable bytes at `buffer` (checked non-NULL).
    let dest = unsafe { std::slice::from_raw_parts_mut(buffer, length as usize) };
    if fill_from_host(dest).is_err() {
        return STATUS_UNSUCCESSFUL;
    }
    k.counters.rng_bytes.fetch_add(u64::from(length), Ordering::Relaxed);
    STATUS_SUCCESS
}

/// Fills `dest` from the host kernel's RNG (getrandom(2), which blocks only until the
/// pool is first seeded).
fn fill_from_host(dest: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < dest.len() {
        let rest = &mut dest[filled..];
        // SAFETY: `rest` is writable for its length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}
