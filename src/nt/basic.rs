//! The scalar and list types of ntdef.h / wdm.h, with their x64 sizes.

use core::ffi::c_void;

pub type PVOID = *mut c_void;
pub type BOOLEAN = u8;
pub const TRUE: BOOLEAN = 1;
pub const FALSE: BOOLEAN = 0;
pub type CCHAR = i8;
pub type CSHORT = i16;
pub type ULONG_PTR = usize;
pub type SIZE_T = usize;
pub type LONGLONG = i64;

/// `LARGE_INTEGER` as the kernel takes it by pointer: a signed 64-bit quantity.
pub type LARGE_INTEGER = i64;

/// KPROCESSOR_MODE: who made a request.
pub type KPROCESSOR_MODE = i8;
pub const KernelMode: KPROCESSOR_MODE = 0;
pub const UserMode: KPROCESSOR_MODE = 1;

/// A counted UTF-16 string (ntdef.h), 16 bytes on x64. `Length` and `MaximumLength` are
/// in bytes, not characters; `Buffer` need not be NUL-terminated. Plain data: usable at
/// any IRQL if `Buffer` is in nonpaged memory, else at IRQL <= APC_LEVEL.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UNICODE_STRING {
    pub Length: u16,
    pub MaximumLength: u16,
    pub Buffer: *mut u16,
}

#[repr(C)]
#[derive(Debug)]
pub struct LIST_ENTRY {
    pub Flink: *mut LIST_ENTRY,
    pub Blink: *mut LIST_ENTRY,
}

/// `InitializeListHead` (wdm.h inline).
///
/// # Safety
/// `head` must be valid for writes.
#[inline]
pub unsafe fn InitializeListHead(head: *mut LIST_ENTRY) {
    // SAFETY: the caller gives a writable LIST_ENTRY.
    unsafe {
        (*head).Flink = head;
        (*head).Blink = head;
    }
}

/// `IsListEmpty` (wdm.h inline).
///
/// # Safety
/// `head` must be an initialised list head.
#[inline]
pub unsafe fn IsListEmpty(head: *const LIST_ENTRY) -> bool {
    // SAFETY: the caller gives an initialised list head.
    unsafe { core::ptr::eq((*head).Flink, head) }
}

/// `InsertTailList` (wdm.h inline).
///
/// # Safety
/// `head` is an initialised list head; `entry` is writable and on no list.
#[inline]
pub unsafe fn InsertTailList(head: *mut LIST_ENTRY, entry: *mut LIST_ENTRY) {
    // SAFETY: both are valid per the caller; the list is consistent before and after.
    unsafe {
        let blink = (*head).Blink;
        (*entry).Flink = head;
        (*entry).Blink = blink;
        (*blink).Flink = entry;
        (*head).Blink = entry;
    }
}

/// `RemoveHeadList` (wdm.h inline). Returns `head` itself when the list is empty.
///
/// # Safety
/// `head` must be an initialised list head.
#[inline]
pub unsafe fn RemoveHeadList(head: *mut LIST_ENTRY) -> *mut LIST_ENTRY {
    // SAFETY: the list is consistent per the caller; an empty list unlinks nothing.
    unsafe {
        let entry = (*head).Flink;
        RemoveEntryList(entry);
        entry
    }
}

/// `RemoveEntryList` (wdm.h inline). Returns whether the list is now empty.
///
/// # Safety
/// `entry` must be on a consistent list.
#[inline]
pub unsafe fn RemoveEntryList(entry: *mut LIST_ENTRY) -> bool {
    // SAFETY: the caller guarantees `entry` and its neighbours are valid.
    unsafe {
        let flink = (*entry).Flink;
        let blink = (*entry).Blink;
        (*blink).Flink = flink;
        (*flink).Blink = blink;
        flink == blink
    }
}

/// `CONTAINING_RECORD` for a field at byte offset `offset` of `T`.
///
/// # Safety
/// `field` must point at that field inside a live `T`.
#[inline]
pub unsafe fn containing_record<T>(field: *mut u8, offset: usize) -> *mut T {
    // SAFETY: per the caller, stepping back `offset` bytes stays inside the same object.
    unsafe { field.sub(offset).cast() }
}
