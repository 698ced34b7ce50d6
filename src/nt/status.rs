//! NTSTATUS: the one result type of the NT and WSK interfaces.

use core::fmt;

/// An NTSTATUS value. `#[repr(transparent)]` over the C `LONG`, so it crosses `extern
/// "system"` boundaries unchanged.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NTSTATUS(pub i32);

impl NTSTATUS {
    /// `NT_SUCCESS`: success and informational codes, not warnings or errors.
    #[inline]
    pub const fn is_success(self) -> bool {
        self.0 >= 0
    }
}

/// `NT_SUCCESS(Status)` from ntdef.h.
#[inline]
pub const fn NT_SUCCESS(status: NTSTATUS) -> bool {
    status.is_success()
}

macro_rules! statuses {
    ($($name:ident = $value:literal,)*) => {
        $(pub const $name: NTSTATUS = NTSTATUS($value as u32 as i32);)*

        impl NTSTATUS {
            /// The ntstatus.h name of a value this crate declares.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $($name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }

        /// Every status this crate declares, for tests that check them against ntstatus.h.
        pub const DECLARED_STATUSES: &[(&str, NTSTATUS)] = &[$((stringify!($name), $name),)*];
    };
}

statuses! {
    STATUS_SUCCESS = 0x0000_0000,
    STATUS_TIMEOUT = 0x0000_0102,
    STATUS_PENDING = 0x0000_0103,
    STATUS_UNSUCCESSFUL = 0xC000_0001,
    STATUS_NOT_IMPLEMENTED = 0xC000_0002,
    STATUS_INVALID_PARAMETER = 0xC000_000D,
    STATUS_MORE_PROCESSING_REQUIRED = 0xC000_0016,
    STATUS_BUFFER_TOO_SMALL = 0xC000_0023,
    STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A,
    STATUS_DEVICE_NOT_READY = 0xC000_00A3,
    STATUS_IO_TIMEOUT = 0xC000_00B5,
    STATUS_FILE_FORCED_CLOSED = 0xC000_00B6,
    STATUS_NOT_SUPPORTED = 0xC000_00BB,
    STATUS_CANCELLED = 0xC000_0120,
    STATUS_INVALID_ADDRESS = 0xC000_0141,
    STATUS_INVALID_DEVICE_STATE = 0xC000_0184,
    STATUS_INVALID_BUFFER_SIZE = 0xC000_0206,
    STATUS_CONNECTION_DISCONNECTED = 0xC000_020C,
    STATUS_CONNECTION_RESET = 0xC000_020D,
    STATUS_CONNECTION_REFUSED = 0xC000_0236,
    STATUS_GRACEFUL_DISCONNECT = 0xC000_0237,
    STATUS_NETWORK_UNREACHABLE = 0xC000_023C,
    STATUS_HOST_UNREACHABLE = 0xC000_023D,
    STATUS_CONNECTION_ABORTED = 0xC000_0241,
    STATUS_NOINTERFACE = 0xC000_02B9,
}

impl fmt::Debug for NTSTATUS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({:#010X})", self.0 as u32),
            None => write!(f, "NTSTATUS({:#010X})", self.0 as u32),
        }
    }
}

impl fmt::Display for NTSTATUS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
