//! wsktls's published interface, as consumer drivers see it: the Rust twin of
//! `src/interface/wsktls.h` (a test compiles C static asserts of every size, offset and
//! value below against that header).
//!
//! A consumer finds the device interface `GUID_DEVINTERFACE_WSKTLS`, opens it
//! (IoGetDeviceObjectPointer) and sends one IRP_MJ_INTERNAL_DEVICE_CONTROL,
//! `IOCTL_WSKTLS_GET_PROVIDER`, with a [`WSKTLS_PROVIDER_REQUEST`] in and a
//! [`WSKTLS_PROVIDER_NPI`] out: the provider handle and the dispatch table, as WSK hands out
//! its provider NPI. Both stay valid while the consumer holds the file object it opened.
//! The calls follow WskSend's conventions: the caller owns the IRP; STATUS_PENDING, then
//! the completion; every other return has completed the IRP with the same status.

use crate::{CTL_CODE, FILE_ANY_ACCESS, GUID, IRP, METHOD_NEITHER, NTSTATUS, PVOID, SOCKADDR, WSK_BUF};

/// `GUID_DEVINTERFACE_WSKTLS` {59DF11A2-7D70-4712-9894-1CA0DB32F2E1}: the interface class
/// wsktls enables while its device is started.
pub const GUID_DEVINTERFACE_WSKTLS: GUID = GUID {
    Data1: 0x59df11a2,
    Data2: 0x7d70,
    Data3: 0x4712,
    Data4: [0x98, 0x94, 0x1c, 0xa0, 0xdb, 0x32, 0xf2, 0xe1],
};

/// `WSKTLS_MAKE_VERSION(major, minor)`, as MAKE_WSK_VERSION.
pub const fn WSKTLS_MAKE_VERSION(major: u16, minor: u16) -> u16 {
    (major << 8) | (minor & 0xff)
}
/// The interface version this header describes.
pub const WSKTLS_VERSION_1_0: u16 = WSKTLS_MAKE_VERSION(1, 0);

/// The device type of wsktls's control codes: one from the range Microsoft leaves to
/// third parties (0x8000 and up).
pub const FILE_DEVICE_WSKTLS: u32 = 0x87A5;

/// The one internal device-control request: METHOD_NEITHER, input
/// (Parameters.DeviceIoControl.Type3InputBuffer) a WSKTLS_PROVIDER_REQUEST, output
/// (Irp->UserBuffer) a WSKTLS_PROVIDER_NPI. Kernel-mode senders only.
pub const IOCTL_WSKTLS_GET_PROVIDER: u32 =
    CTL_CODE(FILE_DEVICE_WSKTLS, 0x801, METHOD_NEITHER, FILE_ANY_ACCESS);

/// What the consumer asks for: the interface version it was built against.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSKTLS_PROVIDER_REQUEST {
    /// `sizeof(WSKTLS_PROVIDER_REQUEST)`.
    pub Size: u32,
    pub Version: u16,
    /// Zero.
    pub Reserved: u16,
}

/// An opaque provider handle: the first argument of Connect.
#[repr(C)]
pub struct WSKTLS_PROVIDER {
    _opaque: [u8; 0],
}

/// An opaque channel handle. A handle, not a pointer: a closed or forged one is refused
/// with STATUS_INVALID_HANDLE rather than followed.
#[repr(C)]
pub struct WSKTLS_CHANNEL {
    _opaque: [u8; 0],
}

/// What the consumer gets back.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSKTLS_PROVIDER_NPI {
    /// `sizeof(WSKTLS_PROVIDER_NPI)`.
    pub Size: u32,
    /// The version granted (the one asked for).
    pub Version: u16,
    pub Reserved: u16,
    pub Provider: *mut WSKTLS_PROVIDER,
    pub Dispatch: *const WSKTLS_DISPATCH,
}

/// A counted byte string the consumer owns; wsktls copies what it keeps before Connect
/// returns.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSKTLS_BLOB {
    pub Data: *const u8,
    pub Length: u32,
    /// Zero.
    pub Reserved: u32,
}

/// `WSKTLS_CONNECT_PARAMETERS.Suites` bits; zero offers all three.
pub const WSKTLS_SUITE_AES_128_GCM_SHA256: u32 = 0x1;
pub const WSKTLS_SUITE_AES_256_GCM_SHA384: u32 = 0x2;
pub const WSKTLS_SUITE_CHACHA20_POLY1305_SHA256: u32 = 0x4;

/// What Connect needs. Everything is copied before Connect returns; a zero in any size or
/// timeout field takes the default (README).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSKTLS_CONNECT_PARAMETERS {
    /// `sizeof(WSKTLS_CONNECT_PARAMETERS)`.
    pub Size: u32,
    /// WSKTLS_VERSION_1_0.
    pub Version: u16,
    /// Zero, as every Reserved field.
    pub Reserved: u16,
    /// A SOCKADDR_IN or SOCKADDR_IN6 (by its family).
    pub RemoteAddress: *const SOCKADDR,
    /// The server's DNS name (sent as SNI and checked against its certificate) or an IP
    /// literal (checked against its IP SANs), ASCII, no terminating NUL needed.
    pub ServerName: WSKTLS_BLOB,
    /// TrustAnchorCount DER certificates to trust as roots: at least one.
    pub TrustAnchors: *const WSKTLS_BLOB,
    /// NULL, or 32 bytes: SHA-256 of the server's SubjectPublicKeyInfo.
    pub PinSha256: *const u8,
    /// Optional client certificate chain (ClientChainCount certificates, leaf first, DER)
    /// and its PKCS#8 key (DER): both or neither.
    pub ClientChain: *const WSKTLS_BLOB,
    pub ClientKey: WSKTLS_BLOB,
    /// AlpnCount protocols to offer, most preferred first.
    pub Alpn: *const WSKTLS_BLOB,
    pub TrustAnchorCount: u32,
    pub ClientChainCount: u32,
    pub AlpnCount: u32,
    /// WSKTLS_SUITE_* bits.
    pub Suites: u32,
    /// Plaintext bytes per record sent at most: 256..=16384 (a full record carries up to 15
    /// fewer, so that it seals as whole AEAD blocks).
    pub RecordSize: u32,
    /// Sealed bytes in flight at most; zero follows the socket's ideal send backlog.
    pub SendBudget: u32,
    /// Plaintext kept for a consumer that is not receiving.
    pub ReceiveBuffer: u32,
    pub ConnectTimeoutMs: u32,
    pub HandshakeTimeoutMs: u32,
    pub Reserved2: u32,
}

/// Query information classes.
pub const WskTlsInfoSession: u32 = 1;
pub const WskTlsInfoCounters: u32 = 2;

/// `WskTlsInfoSession`: what the handshake negotiated.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSKTLS_SESSION_INFO {
    /// 0x0304: TLS 1.3.
    pub ProtocolVersion: u16,
    /// The IANA value: 0x1301, 0x1302 or 0x1303.
    pub CipherSuite: u16,
    /// The protocol ALPN chose (AlpnLength bytes), or none (0).
    pub AlpnLength: u8,
    pub Alpn: [u8; 255],
    pub PeerCertificateSha256: [u8; 32],
}

/// `WskTlsInfoCounters`: the channel's counters since it opened.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WSKTLS_COUNTERS {
    pub BytesSent: u64,
    pub RecordsSent: u64,
    pub KeyUpdatesSent: u64,
    pub BytesReceived: u64,
    pub RecordsReceived: u64,
    pub KeyUpdatesReceived: u64,
    pub InFlightBytes: u64,
    pub PeakInFlightBytes: u64,
    pub SendBudget: u64,
    pub BufferedBytes: u64,
}

/// Connect(Provider, Parameters, &Channel, Irp): opens a channel; `*Channel` is written
/// before the IRP completes with success. IRQL <= DISPATCH_LEVEL.
pub type PFN_WSKTLS_CONNECT = Option<
    unsafe extern "system" fn(
        Provider: *mut WSKTLS_PROVIDER,
        Parameters: *const WSKTLS_CONNECT_PARAMETERS,
        Channel: *mut *mut WSKTLS_CHANNEL,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// Send(Channel, Buffer, Flags, Irp): WskSend's contract. IRQL <= DISPATCH_LEVEL.
pub type PFN_WSKTLS_SEND = Option<
    unsafe extern "system" fn(
        Channel: *mut WSKTLS_CHANNEL,
        Buffer: *mut WSK_BUF,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// Receive(Channel, Buffer, Flags, Irp): WskReceive's contract. IRQL <= DISPATCH_LEVEL.
pub type PFN_WSKTLS_RECEIVE = PFN_WSKTLS_SEND;
/// Disconnect(Channel, Flags, Irp): close_notify, then a graceful TCP disconnect.
pub type PFN_WSKTLS_DISCONNECT =
    Option<unsafe extern "system" fn(Channel: *mut WSKTLS_CHANNEL, Flags: u32, Irp: *mut IRP) -> NTSTATUS>;
/// Close(Channel, Irp): always allowed; what is pending completes with STATUS_CANCELLED.
pub type PFN_WSKTLS_CLOSE =
    Option<unsafe extern "system" fn(Channel: *mut WSKTLS_CHANNEL, Irp: *mut IRP) -> NTSTATUS>;
/// Query(Channel, Class, Buffer, Length, &Returned): synchronous. IRQL <= DISPATCH_LEVEL.
pub type PFN_WSKTLS_QUERY = Option<
    unsafe extern "system" fn(
        Channel: *mut WSKTLS_CHANNEL,
        InformationClass: u32,
        Buffer: PVOID,
        Length: u32,
        ReturnLength: *mut u32,
    ) -> NTSTATUS,
>;

/// The dispatch table.
#[repr(C)]
pub struct WSKTLS_DISPATCH {
    /// `sizeof(WSKTLS_DISPATCH)`.
    pub Size: u32,
    pub Version: u16,
    pub Reserved: u16,
    pub Connect: PFN_WSKTLS_CONNECT,
    pub Send: PFN_WSKTLS_SEND,
    pub Receive: PFN_WSKTLS_RECEIVE,
    pub Disconnect: PFN_WSKTLS_DISCONNECT,
    pub Close: PFN_WSKTLS_CLOSE,
    pub Query: PFN_WSKTLS_QUERY,
}

// SAFETY: a table of function pointers, immutable once published.
unsafe impl Sync for WSKTLS_DISPATCH {}
