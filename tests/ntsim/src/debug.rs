//! The kernel debugger's end of DbgPrintEx, and KeBugCheckEx.
//!
//! DbgPrintEx messages are counted and the newest [`DEBUG_MESSAGES_KEPT`] kept, so a test
//! can read what the driver said ([`crate::Kernel::debug_messages`]); with
//! `NTSIM_DBGPRINT=1` in the environment they are also printed to stderr. KeBugCheckEx
//! stops the machine: ntsim records the report, prints the stop code and aborts.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};

use wsktls_nt::{DEBUG_PRINT_LIMIT, STATUS_SUCCESS, ULONG_PTR};

use crate::kernel::{lock, try_current};
use crate::verifier::{Report, Rule};

/// How many DbgPrintEx messages a kernel keeps: the newest.
pub(crate) const DEBUG_MESSAGES_KEPT: usize = 256;

/// A kernel's debugger output: `(level, text)`, oldest first.
#[derive(Default)]
pub(crate) struct DebugLog {
    messages: Mutex<VecDeque<(u32, String)>>,
}

impl DebugLog {
    fn push(&self, level: u32, text: String) {
        let mut messages = lock(&self.messages);
        if messages.len() == DEBUG_MESSAGES_KEPT {
            messages.pop_front();
        }
        messages.push_back((level, text));
    }

    pub(crate) fn messages(&self) -> Vec<(u32, String)> {
        lock(&self.messages).iter().cloned().collect()
    }
}

/// Whether `NTSIM_DBGPRINT=1`: print every message to stderr as well.
fn echo_to_stderr() -> bool {
    static ECHO: OnceLock<bool> = OnceLock::new();
    *ECHO.get_or_init(|| std::env::var("NTSIM_DBGPRINT").is_ok_and(|v| v.trim() == "1"))
}

// Stable Rust cannot define a C-variadic function, so ntsim's DbgPrintEx is an ordinary
// `extern "C"` function with two integer parameters after the format. That serves a
// variadic call correctly only where variadic integer and pointer arguments travel
// exactly like named ones: on x86-64 (System V and Windows alike) and on AAPCS64 other
// than Apple's, which puts variadic arguments on the stack.
#[cfg(not(any(target_arch = "x86_64", all(target_arch = "aarch64", not(target_vendor = "apple")))))]
compile_error!("ntsim's DbgPrintEx reads its variadic arguments as named ones: not on this target");

/// `DbgPrintEx` as the driver calls it: `DbgPrintEx(component, level, "%.*s", length,
/// text)` (what `wsktls_nt::debug_print` passes). The driver's declaration is C-variadic;
/// this definition is not (see above): on x86-64 System V the first six integer and
/// pointer arguments of a variadic call are passed in the same registers as those of a
/// call to this function, so a caller that passes at most two integer or pointer
/// arguments after the format is served correctly. `arg0` and `arg1` hold whatever the
/// caller passed there, or garbage if it passed fewer; they are read only when the format
/// is exactly `"%.*s"`. Any other format is recorded as its own text, unformatted.
///
/// The message keeps at most `DEBUG_PRINT_LIMIT` bytes, as the kernel transmits at most
/// that many per call. Returns STATUS_SUCCESS.
///
/// # Safety
/// `format` is NULL or a NUL-terminated string; with `"%.*s"`, `arg1` is NULL or points
/// at readable bytes: `arg0` of them (the low 32 bits, as a C `int`), or up to a NUL if
/// that is negative, as printf reads them.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn DbgPrintEx(
    component: u32,
    level: u32,
    format: *const u8,
    arg0: usize,
    arg1: usize,
) -> u32 {
    // SAFETY: forwarded contract.
    let mut bytes = unsafe { format_message(format, arg0, arg1) };
    bytes.truncate(DEBUG_PRINT_LIMIT);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if echo_to_stderr() {
        eprintln!("[DbgPrintEx comp={component} level={level}] {}", text.trim_end_matches('\n'));
    }
    if let Some(k) = try_current() {
        k.counters.debug_prints.fetch_add(1, Ordering::Relaxed);
        k.debug.push(level, text);
    }
    STATUS_SUCCESS.0 as u32
}

/// The bytes printf would produce for the one format ntsim supports, `"%.*s"`; any other
/// format as it stands.
///
/// # Safety
/// As for [`DbgPrintEx`].
unsafe fn format_message(format: *const u8, arg0: usize, arg1: usize) -> Vec<u8> {
    if format.is_null() {
        return b"(null format)".to_vec();
    }
    // SAFETY: a non-NULL format is NUL-terminated, per the caller.
    let format = unsafe { CStr::from_ptr(format.cast()) }.to_bytes();
    if format != b"%.*s" {
        return format.to_vec();
    }
    // The precision is a C `int`: the low 32 bits of its register; the upper half of an
    // `int` argument is unspecified.
    let precision = arg0 as u32 as i32;
    let text = arg1 as *const u8;
    if text.is_null() {
        return b"(null)".to_vec();
    }
    let Ok(limit) = usize::try_from(precision) else {
        // A negative precision is taken as if omitted: up to the NUL.
        // SAFETY: per the caller, the string is NUL-terminated in this case.
        return unsafe { CStr::from_ptr(text.cast()) }.to_bytes().to_vec();
    };
    let mut length = 0;
    // SAFETY: per the caller, `limit` bytes at `text` are readable; printf reads no
    // further than the first NUL among them, and neither does this.
    while length < limit && unsafe { *text.add(length) } != 0 {
        length += 1;
    }
    // SAFETY: the `length` bytes just read.
    unsafe { std::slice::from_raw_parts(text, length) }.to_vec()
}

/// `KeBugCheckEx`: the machine stops. Prints `BUGCHECK <code> (<parameters>)` and the
/// fault-injection seed to stderr, records a [`Rule::BugCheck`] report against the
/// thread's kernel (if it entered one), and aborts the process: ntsim's functions are
/// `extern "system"` and cannot unwind, so a test observes a bug check from a parent
/// process, by the child's abnormal exit and its stderr.
#[unsafe(no_mangle)]
pub extern "system" fn KeBugCheckEx(
    code: u32,
    p1: ULONG_PTR,
    p2: ULONG_PTR,
    p3: ULONG_PTR,
    p4: ULONG_PTR,
) -> ! {
    let stop = format!("BUGCHECK {code:#010X} ({p1:#x}, {p2:#x}, {p3:#x}, {p4:#x})");
    eprintln!("ntsim: *** {stop}: the machine stops here");
    if let Some(k) = try_current() {
        eprintln!("ntsim: fault-injection seed NTSIM_SEED={}", k.seed);
        k.record(Report { rule: Rule::BugCheck, detail: stop });
    }
    // The stop line is this machine's crash dump; a core file of the simulator would only
    // litter the working directory.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_DUMPABLE takes an integer and changes only this process's flag.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
    }
    std::process::abort()
}
