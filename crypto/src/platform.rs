//! What the platform supplies to the cryptography.

use core::fmt;

/// The vector registers could not be made usable (the kernel refused to save the extended
/// processor state); no crypto ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorStateUnavailable;

/// The platform's RNG failed; nothing was drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomUnavailable;

/// Services the host or the kernel provides. Implemented once per build by the driver.
pub trait Platform: Send + Sync + 'static {
    /// Fills `dest` with cryptographically secure random bytes. In the kernel this is the
    /// CNG RNG; on the host, the operating system's.
    fn fill_random(&self, dest: &mut [u8]) -> Result<(), RandomUnavailable>;

    /// Seconds since the Unix epoch, for certificate validity; `None` when unknown.
    fn unix_time(&self) -> Option<u64>;

    /// Runs `work` with the vector registers (SSE, AVX, AVX-512) usable by ring and
    /// restores them afterwards. In the kernel this is KeSaveExtendedProcessorState /
    /// KeRestoreExtendedProcessorState around `work`, so it is called once per batch of
    /// records or handshake step, never per record, and never at an IRQL above
    /// DISPATCH_LEVEL.
    fn with_vector_state<R>(&self, work: impl FnOnce() -> R) -> Result<R, VectorStateUnavailable>;
}

/// rustls's randomness, drawn from the platform.
#[repr(transparent)]
pub(crate) struct PlatformRandom<P>(P);

impl<P: Platform> PlatformRandom<P> {
    pub(crate) fn of(platform: &'static P) -> &'static Self {
        // SAFETY: `PlatformRandom<P>` is `repr(transparent)` over `P`, so the reference
        // keeps its layout, validity and lifetime.
        unsafe { &*(platform as *const P as *const Self) }
    }
}

impl<P> fmt::Debug for PlatformRandom<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlatformRandom")
    }
}

impl<P: Platform> rustls::crypto::SecureRandom for PlatformRandom<P> {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        self.0.fill_random(buf).map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

/// rustls's clock, read from the platform.
pub(crate) struct PlatformTime<P: 'static>(pub(crate) &'static P);

impl<P> fmt::Debug for PlatformTime<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlatformTime")
    }
}

impl<P: Platform> rustls::time_provider::TimeProvider for PlatformTime<P> {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        self.0
            .unix_time()
            .map(|secs| rustls::pki_types::UnixTime::since_unix_epoch(core::time::Duration::from_secs(secs)))
    }
}
