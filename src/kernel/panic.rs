//! A panic in the kernel is a bug in wsktls: stop the machine with wsktls's bugcheck code
//! and where it happened, rather than run on in an unknown state. (Nothing a peer or a
//! consumer sends can reach a panic; errors are values.)

use core::panic::PanicInfo;

use crate::nt::{KeBugCheckEx, ULONG_PTR};

/// Bugcheck code: 0xE7A5_0B0C, "wsktls panicked". Parameters: the source file's name (a
/// pointer to its bytes, not NUL-terminated), its length, the line, the column.
pub const WSKTLS_PANIC: u32 = 0xE7A5_0B0C;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let (file, line, column) =
        info.location().map_or(("", 0, 0), |l| (l.file(), l.line() as ULONG_PTR, l.column() as ULONG_PTR));
    crate::log!(crate::log::Level::Error, "panic at {}:{}:{}", file, line, column);
    // SAFETY: KeBugCheckEx may be called at any IRQL and does not return.
    unsafe { KeBugCheckEx(WSKTLS_PANIC, file.as_ptr() as ULONG_PTR, file.len(), line, column) }
}
