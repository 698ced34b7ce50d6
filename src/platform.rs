//! The services wsktls-crypto asks of the platform, supplied through `src/nt`: CNG's
//! system RNG (ksecdd.sys), the system clock, and the extended processor state around
//! bulk crypto. On the host the same imports resolve to ntsim, whose versions check the
//! IRQL and pairing rules the kernel enforces.

use wsktls_crypto::{Platform, RandomUnavailable, VectorStateUnavailable};

use crate::nt::{
    KeRestoreExtendedProcessorState, KeSaveExtendedProcessorState, XSTATE_MASK_AVX, XSTATE_MASK_AVX512,
    XSTATE_MASK_LEGACY, XSTATE_SAVE, system_random, unix_time_seconds,
};

/// The one platform of a wsktls build.
pub struct NtPlatform;

pub static PLATFORM: NtPlatform = NtPlatform;

/// The register state ring may use: SSE, AVX and AVX-512 (ring picks its code at run time).
const CRYPTO_STATE: u64 = XSTATE_MASK_LEGACY | XSTATE_MASK_AVX | XSTATE_MASK_AVX512;

impl Platform for NtPlatform {
    /// PASSIVE_LEVEL: the system-preferred RNG allows nothing higher. Only the handshake
    /// draws random bytes.
    fn fill_random(&self, dest: &mut [u8]) -> Result<(), RandomUnavailable> {
        system_random(dest).map_err(|_| RandomUnavailable)
    }

    fn unix_time(&self) -> Option<u64> {
        unix_time_seconds()
    }

    fn with_vector_state<R>(&self, work: impl FnOnce() -> R) -> Result<R, VectorStateUnavailable> {
        // The save area stays on this stack frame, unmoved, until the restore below, as
        // the kernel requires (it links active saves through it).
        let mut save = XSTATE_SAVE::zeroed();
        // SAFETY: our own save area; IRQL <= DISPATCH_LEVEL is the caller's contract.
        let status = unsafe { KeSaveExtendedProcessorState(CRYPTO_STATE, &mut save) };
        if !status.is_success() {
            return Err(VectorStateUnavailable);
        }
        let result = work();
        // SAFETY: the innermost save on this thread, at the IRQL it was made.
        unsafe { KeRestoreExtendedProcessorState(&mut save) };
        Ok(result)
    }
}
