//! Logging through DbgPrintEx (component IHVNETWORK), with its levels: what a kernel
//! engineer sees in WinDbg or DebugView with the component's filter mask set. Formatting
//! happens on the stack, into a line of at most LINE bytes (DbgPrintEx keeps 512); no
//! allocation, any IRQL up to DISPATCH_LEVEL.

use core::fmt::{self, Write};

use crate::nt::{
    DPFLTR_ERROR_LEVEL, DPFLTR_INFO_LEVEL, DPFLTR_TRACE_LEVEL, DPFLTR_WARNING_LEVEL, debug_print,
};

const LINE: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Trace,
    Info,
}

impl Level {
    fn dpfltr(self) -> u32 {
        match self {
            Level::Error => DPFLTR_ERROR_LEVEL,
            Level::Warning => DPFLTR_WARNING_LEVEL,
            Level::Trace => DPFLTR_TRACE_LEVEL,
            Level::Info => DPFLTR_INFO_LEVEL,
        }
    }
}

/// A line being formatted; what does not fit is cut, marked with "...".
struct Line {
    bytes: [u8; LINE],
    len: usize,
    cut: bool,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE - 4 - self.len; // keep room for "...\n"
        let take = s.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        self.cut |= take < s.len();
        Ok(())
    }
}

/// Writes one line, prefixed "wsktls: ".
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let mut line = Line { bytes: [0; LINE], len: 0, cut: false };
    let _ = line.write_str("wsktls: ");
    let _ = line.write_fmt(args);
    if line.cut {
        line.bytes[line.len..line.len + 3].copy_from_slice(b"...");
        line.len += 3;
    }
    line.bytes[line.len] = b'\n';
    line.len += 1;
    // The bytes are ASCII and cut only at char boundaries of the pieces written... except
    // a cut inside a multi-byte character: fall back to the longest valid prefix.
    let text = match core::str::from_utf8(&line.bytes[..line.len]) {
        Ok(t) => t,
        Err(e) => core::str::from_utf8(&line.bytes[..e.valid_up_to()]).unwrap_or(""),
    };
    debug_print(level.dpfltr(), text);
}

/// `log!(Level::Info, "channel open: {:?}", suite)`
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        $crate::log::write($level, format_args!($($arg)*))
    };
}
