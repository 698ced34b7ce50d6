//! The kernel's CNG random number generator, exported by ksecdd.sys: the only source of
//! random bytes a kernel build may use (keys, nonces, the TLS client random).

use crate::{NTSTATUS, PVOID};

/// `BCRYPT_RNG_USE_ENTROPY_IN_BUFFER` (bcrypt.h): ignored since Windows 8.
pub const BCRYPT_RNG_USE_ENTROPY_IN_BUFFER: u32 = 0x0000_0001;
/// `BCRYPT_USE_SYSTEM_PREFERRED_RNG` (bcrypt.h): use the system's default RNG; the
/// algorithm handle must be NULL. In kernel mode only at PASSIVE_LEVEL.
pub const BCRYPT_USE_SYSTEM_PREFERRED_RNG: u32 = 0x0000_0002;

unsafe extern "system" {
    /// Fills `cbBuffer` bytes at `pbBuffer` with random bytes (NIST SP 800-90 CTR_DRBG).
    ///
    /// wsktls always passes a NULL `hAlgorithm` with `BCRYPT_USE_SYSTEM_PREFERRED_RNG`,
    /// which kernel mode allows only at PASSIVE_LEVEL. (DISPATCH_LEVEL needs a provider
    /// handle opened with `BCRYPT_PROV_DISPATCH` and nonpaged buffers; we open none.)
    /// Returns STATUS_SUCCESS, STATUS_INVALID_HANDLE or STATUS_INVALID_PARAMETER.
    pub fn BCryptGenRandom(hAlgorithm: PVOID, pbBuffer: *mut u8, cbBuffer: u32, dwFlags: u32) -> NTSTATUS;
}

/// Fills `dest` from the system-preferred RNG. PASSIVE_LEVEL only.
pub fn system_random(dest: &mut [u8]) -> Result<(), NTSTATUS> {
    for chunk in dest.chunks_mut(u32::MAX as usize) {
        // SAFETY: `chunk` is writable for its length, which fits in a ULONG; NULL handle
        // with the system-preferred flag, as documented.
        let status = unsafe {
            BCryptGenRandom(
                core::ptr::null_mut(),
                chunk.as_mut_ptr(),
                chunk.len() as u32,
                BCRYPT_USE_SYSTEM_PREFERRED_RNG,
            )
        };
        if !status.is_success() {
            return Err(status);
        }
    }
    Ok(())
}
