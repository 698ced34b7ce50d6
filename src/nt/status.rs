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
    (
        nt { $($nt:ident = $ntv:literal,)* }
        sspi { $($sec:ident = $secv:literal,)* }
        wsktls { $($own:ident = $ownv:literal,)* }
    ) => {
        $(pub const $nt: NTSTATUS = NTSTATUS($ntv as u32 as i32);)*
        $(pub const $sec: NTSTATUS = NTSTATUS($secv as u32 as i32);)*
        $(pub const $own: NTSTATUS = NTSTATUS($ownv as u32 as i32);)*

        impl NTSTATUS {
            /// The header name of a value this crate declares.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $($nt => Some(stringify!($nt)),)*
                    $($sec => Some(stringify!($sec)),)*
                    $($own => Some(stringify!($own)),)*
                    _ => None,
                }
            }
        }

        /// Every ntstatus.h status this crate declares, for tests that check them.
        pub const DECLARED_STATUSES: &[(&str, NTSTATUS)] = &[$((stringify!($nt), $nt),)*];
        /// The SSPI (Schannel) statuses, checked against winerror.h.
        pub const SECURITY_STATUSES: &[(&str, NTSTATUS)] = &[$((stringify!($sec), $sec),)*];
        /// wsktls's own statuses (customer bit set), for wsktls.h.
        pub const WSKTLS_STATUSES: &[(&str, NTSTATUS)] = &[$((stringify!($own), $own),)*];
    };
}

statuses! {
    nt {
    STATUS_SUCCESS = 0x0000_0000,
    STATUS_TIMEOUT = 0x0000_0102,
    STATUS_PENDING = 0x0000_0103,
    STATUS_UNSUCCESSFUL = 0xC000_0001,
    STATUS_NOT_IMPLEMENTED = 0xC000_0002,
    STATUS_INVALID_INFO_CLASS = 0xC000_0003,
    STATUS_INVALID_HANDLE = 0xC000_0008,
    STATUS_INVALID_PARAMETER = 0xC000_000D,
    STATUS_NO_SUCH_DEVICE = 0xC000_000E,
    STATUS_INVALID_DEVICE_REQUEST = 0xC000_0010,
    STATUS_MORE_PROCESSING_REQUIRED = 0xC000_0016,
    STATUS_ACCESS_DENIED = 0xC000_0022,
    STATUS_BUFFER_TOO_SMALL = 0xC000_0023,
    STATUS_OBJECT_NAME_NOT_FOUND = 0xC000_0034,
    STATUS_DELETE_PENDING = 0xC000_0056,
    STATUS_REVISION_MISMATCH = 0xC000_0059,
    STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A,
    STATUS_DEVICE_NOT_READY = 0xC000_00A3,
    STATUS_IO_TIMEOUT = 0xC000_00B5,
    STATUS_FILE_FORCED_CLOSED = 0xC000_00B6,
    STATUS_NOT_SUPPORTED = 0xC000_00BB,
    STATUS_INVALID_PARAMETER_1 = 0xC000_00EF,
    STATUS_INVALID_PARAMETER_3 = 0xC000_00F1,
    STATUS_INVALID_PARAMETER_4 = 0xC000_00F2,
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
    STATUS_DEVICE_REMOVED = 0xC000_02B6,
    STATUS_NOINTERFACE = 0xC000_02B9,
    STATUS_DEVICE_BUSY = 0x8000_0011,
    }
    // What the kernel's SSPI (Schannel) returns for the same failures: kernel consumers of
    // TLS already know these (winerror.h; negative, so NT_SUCCESS is false).
    sspi {
        SEC_E_INTERNAL_ERROR = 0x8009_0304,
        SEC_E_MESSAGE_ALTERED = 0x8009_030F,
        SEC_E_WRONG_PRINCIPAL = 0x8009_0322,
        SEC_E_ILLEGAL_MESSAGE = 0x8009_0326,
        SEC_E_UNTRUSTED_ROOT = 0x8009_0325,
        SEC_E_CERT_UNKNOWN = 0x8009_0327,
        SEC_E_CERT_EXPIRED = 0x8009_0328,
        SEC_E_ALGORITHM_MISMATCH = 0x8009_0331,
    }
    // Failures with no Windows equivalent: severity error, customer bit, facility 0x7A5.
    wsktls {
        STATUS_WSKTLS_PIN_MISMATCH = 0xE7A5_0001,
        STATUS_WSKTLS_TRUNCATED = 0xE7A5_0002,
        STATUS_WSKTLS_PEER_ALERT = 0xE7A5_0003,
    }
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
