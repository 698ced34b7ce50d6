//! Memory descriptor lists: the MDL header, its flags, the Mm/Io functions that build and
//! map them, and the wdm.h inlines that read them.

use core::ffi::c_void;

use crate::{BOOLEAN, CSHORT, IRP, KPROCESSOR_MODE, PVOID, ULONG_PTR};

pub const PAGE_SIZE: usize = 0x1000;
pub const PAGE_SHIFT: u32 = 12;

pub const MDL_MAPPED_TO_SYSTEM_VA: CSHORT = 0x0001;
pub const MDL_PAGES_LOCKED: CSHORT = 0x0002;
pub const MDL_SOURCE_IS_NONPAGED_POOL: CSHORT = 0x0004;
pub const MDL_ALLOCATED_FIXED_SIZE: CSHORT = 0x0008;
pub const MDL_PARTIAL: CSHORT = 0x0010;
pub const MDL_PARTIAL_HAS_BEEN_MAPPED: CSHORT = 0x0020;
pub const MDL_IO_PAGE_READ: CSHORT = 0x0040;
pub const MDL_WRITE_OPERATION: CSHORT = 0x0080;
pub const MDL_NETWORK_HEADER: CSHORT = 0x1000;
pub const MDL_MAPPING_CAN_FAIL: CSHORT = 0x2000;

/// MM_PAGE_PRIORITY values, and the flag that keeps a mapping non-executable.
pub const LowPagePriority: u32 = 0;
pub const NormalPagePriority: u32 = 16;
pub const HighPagePriority: u32 = 32;
pub const MdlMappingNoExecute: u32 = 0x4000_0000;

/// MEMORY_CACHING_TYPE.
pub type MEMORY_CACHING_TYPE = i32;
pub const MmCached: MEMORY_CACHING_TYPE = 1;

/// The MDL header (wdm.h), 48 bytes on x64, followed by one PFN per page spanned.
#[repr(C)]
pub struct MDL {
    pub Next: *mut MDL,
    pub Size: CSHORT,
    pub MdlFlags: CSHORT,
    pub Process: PVOID,
    pub MappedSystemVa: PVOID,
    pub StartVa: PVOID,
    pub ByteCount: u32,
    pub ByteOffset: u32,
}

/// A page frame number, as stored after the MDL header.
pub type PFN_NUMBER = ULONG_PTR;

unsafe extern "system" {
    /// Allocates an MDL big enough to map `Length` bytes at `VirtualAddress`. NULL on
    /// failure. With a non-NULL `Irp`, also links it to `Irp->MdlAddress`.
    pub fn IoAllocateMdl(
        VirtualAddress: PVOID,
        Length: u32,
        SecondaryBuffer: BOOLEAN,
        ChargeQuota: BOOLEAN,
        Irp: *mut IRP,
    ) -> *mut MDL;
    pub fn IoFreeMdl(Mdl: *mut MDL);
    /// Fills in an MDL that describes a nonpaged-pool buffer (already resident and mapped).
    pub fn MmBuildMdlForNonPagedPool(MemoryDescriptorList: *mut MDL);
    pub fn MmMapLockedPagesSpecifyCache(
        MemoryDescriptorList: *mut MDL,
        AccessMode: KPROCESSOR_MODE,
        CacheType: MEMORY_CACHING_TYPE,
        RequestedAddress: PVOID,
        BugCheckOnFailure: u32,
        Priority: u32,
    ) -> PVOID;
}

/// `BYTE_OFFSET(Va)`.
#[inline]
pub fn BYTE_OFFSET(va: *const c_void) -> u32 {
    (va as usize & (PAGE_SIZE - 1)) as u32
}

/// `PAGE_ALIGN(Va)`.
#[inline]
pub fn PAGE_ALIGN(va: *const c_void) -> PVOID {
    (va as usize & !(PAGE_SIZE - 1)) as PVOID
}

/// `ADDRESS_AND_SIZE_TO_SPAN_PAGES(Va, Size)`.
#[inline]
pub fn ADDRESS_AND_SIZE_TO_SPAN_PAGES(va: *const c_void, size: usize) -> usize {
    (BYTE_OFFSET(va) as usize + size).div_ceil(PAGE_SIZE)
}

/// `MmGetMdlVirtualAddress`.
///
/// # Safety
/// `mdl` must be a valid MDL.
#[inline]
pub unsafe fn MmGetMdlVirtualAddress(mdl: *const MDL) -> PVOID {
    // SAFETY: per the caller.
    unsafe { ((*mdl).StartVa as usize + (*mdl).ByteOffset as usize) as PVOID }
}

/// `MmGetMdlByteCount`.
///
/// # Safety
/// `mdl` must be a valid MDL.
#[inline]
pub unsafe fn MmGetMdlByteCount(mdl: *const MDL) -> u32 {
    // SAFETY: per the caller.
    unsafe { (*mdl).ByteCount }
}

/// `MmGetSystemAddressForMdlSafe`: the system-space address of the buffer an MDL
/// describes, mapping it if it is not mapped yet. NULL when a mapping cannot be made.
///
/// # Safety
/// `mdl` must describe locked pages (or nonpaged pool).
#[inline]
pub unsafe fn MmGetSystemAddressForMdlSafe(mdl: *mut MDL, priority: u32) -> PVOID {
    // SAFETY: per the caller.
    unsafe {
        if (*mdl).MdlFlags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL) != 0 {
            (*mdl).MappedSystemVa
        } else {
            MmMapLockedPagesSpecifyCache(mdl, crate::KernelMode, MmCached, core::ptr::null_mut(), 0, priority)
        }
    }
}
