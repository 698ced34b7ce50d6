//! Executive support: pool allocation and rundown protection.

use crate::{BOOLEAN, PVOID, SIZE_T, ULONG_PTR};

/// POOL_FLAGS for `ExAllocatePool2` (wdm.h, Windows 10 2004 and later).
pub type POOL_FLAGS = u64;
pub const POOL_FLAG_USE_QUOTA: POOL_FLAGS = 0x0000_0001;
/// Leave the allocation uninitialised (by default ExAllocatePool2 zeroes it).
pub const POOL_FLAG_UNINITIALIZED: POOL_FLAGS = 0x0000_0002;
pub const POOL_FLAG_SESSION: POOL_FLAGS = 0x0000_0004;
pub const POOL_FLAG_CACHE_ALIGNED: POOL_FLAGS = 0x0000_0008;
pub const POOL_FLAG_RAISE_ON_FAILURE: POOL_FLAGS = 0x0000_0020;
/// Nonpaged, non-executable pool.
pub const POOL_FLAG_NON_PAGED: POOL_FLAGS = 0x0000_0040;
pub const POOL_FLAG_NON_PAGED_EXECUTE: POOL_FLAGS = 0x0000_0080;
pub const POOL_FLAG_PAGED: POOL_FLAGS = 0x0000_0100;

/// Builds a pool tag the way the C multi-character literal `'tksW'` does: the tag reads
/// `b"Wskt"` in a pool dump.
pub const fn pool_tag(tag: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*tag)
}

/// Rundown protection: a count of accesses in progress plus a "running down" bit.
#[repr(C)]
pub struct EX_RUNDOWN_REF {
    /// Union with `Ptr`.
    pub Count: ULONG_PTR,
}

unsafe extern "system" {
    /// Allocates pool; NULL on failure (unless POOL_FLAG_RAISE_ON_FAILURE).
    /// IRQL <= DISPATCH_LEVEL for nonpaged pool.
    pub fn ExAllocatePool2(Flags: POOL_FLAGS, NumberOfBytes: SIZE_T, Tag: u32) -> PVOID;
    /// Frees pool allocated with the same tag.
    pub fn ExFreePoolWithTag(P: PVOID, Tag: u32);

    pub fn ExInitializeRundownProtection(RunRef: *mut EX_RUNDOWN_REF);
    pub fn ExReInitializeRundownProtection(RunRef: *mut EX_RUNDOWN_REF);
    /// Takes a reference unless rundown has started. IRQL <= DISPATCH_LEVEL.
    pub fn ExAcquireRundownProtection(RunRef: *mut EX_RUNDOWN_REF) -> BOOLEAN;
    pub fn ExReleaseRundownProtection(RunRef: *mut EX_RUNDOWN_REF);
    /// Starts rundown and waits until every reference is released. PASSIVE_LEVEL.
    pub fn ExWaitForRundownProtectionRelease(RunRef: *mut EX_RUNDOWN_REF);
    pub fn ExRundownCompleted(RunRef: *mut EX_RUNDOWN_REF);
}
