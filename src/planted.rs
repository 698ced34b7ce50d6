//! Bugs a host test can plant in the driver, to show that the checks that should catch
//! them do: the soak (tests/soak_planted.rs) a byte lost, an IRP never completed, pool
//! leaked; the low-resources sweep a leak on a failure path.
//! The kernel image has no switch: there `planted` is a constant `false` and every planted
//! branch is compiled out.

/// The bugs there are to plant. Each fires only on a path a test reaches by chance or by
/// design (a channel past 64 KiB, a close with receives queued, a send failed in flight,
/// a handshake failed), so a test that finds it shows that it gets there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// The receive that takes a channel past 64 KiB of plaintext delivered skips the byte
    /// after its last, if one is waiting already: the consumer's stream loses one byte.
    LoseReceivedByte = 1,
    /// A close that fails the channel's queued receives forgets the first: its IRP never
    /// completes.
    ForgetQueuedReceiveOnClose = 2,
    /// A send that failed in flight keeps its buffers instead of returning them: pool
    /// leaked until unload.
    LeakFailedSendBuffers = 3,
    /// A handshake that fails keeps the channel's receive buffer: pool leaked until
    /// unload, on a failure path only a failed allocation or a hostile peer reaches
    /// (tests/low_resources.rs).
    LeakReceiveBufferOnFailedHandshake = 4,
}

#[cfg(not(windows))]
mod switch {
    use core::sync::atomic::{AtomicU8, Ordering};

    use super::Bug;

    static PLANTED: AtomicU8 = AtomicU8::new(0);

    /// Plants `bug` in every channel of this process from now on (`None` removes it).
    pub fn plant(bug: Option<Bug>) {
        PLANTED.store(bug.map_or(0, |b| b as u8), Ordering::Relaxed);
    }

    pub(crate) fn planted(bug: Bug) -> bool {
        PLANTED.load(Ordering::Relaxed) == bug as u8
    }
}

#[cfg(windows)]
mod switch {
    use super::Bug;

    pub(crate) const fn planted(_: Bug) -> bool {
        false
    }
}

#[cfg(not(windows))]
pub use switch::plant;
pub(crate) use switch::planted;
