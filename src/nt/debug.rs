//! Talking to the kernel debugger, and stopping the machine.
//!
//! `DbgPrintEx` sends a line to the kernel debugger (or DebugView) through the
//! component filter; `KeBugCheckEx` stops the system with a bug check code. Nothing here
//! may be used for data the peer or the consumer controls without bounding it first:
//! a debug line is diagnostics, not a channel.

use crate::ULONG_PTR;

/// `DPFLTR_IHVNETWORK_ID` (dpfilter.h, `DPFLTR_TYPE`): the component ID of third-party
/// network drivers. Its messages pass the filter per the `IHVNETWORK` component mask
/// (`Kd_IHVNETWORK_Mask`, or `HKLM\...\Debug Print Filter\IHVNETWORK`).
pub const DPFLTR_IHVNETWORK_ID: u32 = 80;

/// `DbgPrintEx` levels (dpfilter.h). A level from 0 to 31 is a bit number (`1 << Level`)
/// tested against the component's filter mask; by default only error-level messages pass.
pub const DPFLTR_ERROR_LEVEL: u32 = 0;
pub const DPFLTR_WARNING_LEVEL: u32 = 1;
pub const DPFLTR_TRACE_LEVEL: u32 = 2;
pub const DPFLTR_INFO_LEVEL: u32 = 3;

/// How many bytes of output one `DbgPrintEx` call transmits at most; the rest of a longer
/// message is lost.
pub const DEBUG_PRINT_LIMIT: usize = 512;

unsafe extern "C" {
    /// Formats `Format` with its arguments (printf-style; `__cdecl`, the one C-variadic
    /// convention of Windows x64) and sends the result to the kernel debugger if the
    /// component filter for `ComponentId` passes `Level`. Transmits at most
    /// [`DEBUG_PRINT_LIMIT`] bytes per call. Returns an NTSTATUS as a ULONG.
    ///
    /// IRQL <= DIRQL, with narrow-character conversions only (`%wZ`, `%ws` and the other
    /// Unicode conversions only at PASSIVE_LEVEL). Above APC_LEVEL, the format and every
    /// argument it dereferences must be in nonpaged memory.
    pub fn DbgPrintEx(ComponentId: u32, Level: u32, Format: *const u8, ...) -> u32;
}

unsafe extern "system" {
    /// Brings the system down in a controlled way: the blue screen, a crash dump that
    /// records `BugCheckCode` and the four parameters, and (with a debugger attached) a
    /// break. Never returns. Any IRQL.
    pub fn KeBugCheckEx(
        BugCheckCode: u32,
        BugCheckParameter1: ULONG_PTR,
        BugCheckParameter2: ULONG_PTR,
        BugCheckParameter3: ULONG_PTR,
        BugCheckParameter4: ULONG_PTR,
    ) -> !;
}

/// Sends `text` to the kernel debugger as wsktls's component (`DPFLTR_IHVNETWORK_ID`)
/// at `level` (a `DPFLTR_*_LEVEL`). No newline is added.
///
/// The text is passed as `"%.*s"`, never as a format, so `%` in it prints as itself. The
/// kernel transmits at most [`DEBUG_PRINT_LIMIT`] bytes of one call and drops the rest;
/// `%.*s` also stops at an embedded NUL. Lengths above `i32::MAX` are clamped (the
/// precision is a C `int`).
///
/// IRQL <= DIRQL; at DISPATCH_LEVEL or above, `text` must be in nonpaged memory (string
/// literals are: the driver's sections are non-paged).
pub fn debug_print(level: u32, text: &str) {
    let length = text.len().min(i32::MAX as usize) as i32;
    // SAFETY: the format is a NUL-terminated literal whose one conversion, `%.*s`, takes
    // an `int` precision and a `char` pointer: exactly the two arguments passed. It reads
    // at most `length` bytes from `text.as_ptr()`, all inside `text`.
    unsafe { DbgPrintEx(DPFLTR_IHVNETWORK_ID, level, c"%.*s".as_ptr().cast(), length, text.as_ptr()) };
}
