//! Winsock Kernel (wsk.h): the client and provider NPIs, the registration block, the
//! socket object and dispatch tables, WSK_BUF, the flags, and the four NETIO.SYS imports.
//!
//! MinGW has no wsk.h, so these layouts are written down from Microsoft's wsk.h
//! documentation; the `layout` test holds them to the documented x64 sizes and offsets.

use core::ffi::c_void;

use crate::{ADDRESS_FAMILY, IRP, KSPIN_LOCK, NTSTATUS, PVOID, SIZE_T, SOCKADDR};

/// `MAKE_WSK_VERSION(Mj, Mn)`.
pub const fn MAKE_WSK_VERSION(major: u8, minor: u8) -> u16 {
    ((major as u16) << 8) | minor as u16
}
/// The WSK version wsktls asks for: 1.0, what every Windows since Vista provides.
pub const WSK_VERSION_1_0: u16 = MAKE_WSK_VERSION(1, 0);

pub const WSK_NO_WAIT: u32 = 0;
pub const WSK_INFINITE_WAIT: u32 = 0xFFFF_FFFF;

/// WskSend flags.
pub const WSK_FLAG_NODELAY: u32 = 0x0000_0002;
/// WskReceive flags.
pub const WSK_FLAG_WAITALL: u32 = 0x0000_0002;
pub const WSK_FLAG_DRAIN: u32 = 0x0000_0004;
/// WskDisconnect flags.
pub const WSK_FLAG_ABORTIVE: u32 = 0x0000_0001;
/// Set on event callbacks made at DISPATCH_LEVEL.
pub const WSK_FLAG_AT_DISPATCH_LEVEL: u32 = 0x0000_0008;

/// Socket categories for WskSocket.
pub const WSK_FLAG_BASIC_SOCKET: u32 = 0x0000_0000;
pub const WSK_FLAG_LISTEN_SOCKET: u32 = 0x0000_0001;
pub const WSK_FLAG_CONNECTION_SOCKET: u32 = 0x0000_0002;
pub const WSK_FLAG_DATAGRAM_SOCKET: u32 = 0x0000_0004;
pub const WSK_FLAG_STREAM_SOCKET: u32 = 0x0000_0008;

/// WSK_CONTROL_SOCKET_TYPE.
pub type WSK_CONTROL_SOCKET_TYPE = i32;
pub const WskSetOption: WSK_CONTROL_SOCKET_TYPE = 0;
pub const WskGetOption: WSK_CONTROL_SOCKET_TYPE = 1;
pub const WskIoctl: WSK_CONTROL_SOCKET_TYPE = 2;

/// Winsock ioctl code construction (ws2def.h).
pub const IOC_OUT: u32 = 0x4000_0000;
pub const IOC_IN: u32 = 0x8000_0000;
pub const IOC_WS2: u32 = 0x0800_0000;
/// WSK-specific codes: Winsock 2 codes with the top three vendor bits set.
pub const IOC_WSK: u32 = IOC_WS2 | 0x0700_0000;
/// `_WSAIOR(IOC_WSK, 3)`: the amount of send data to keep outstanding to fill the pipe.
/// The output is a `SIZE_T`.
pub const SIO_WSK_QUERY_IDEAL_SEND_BACKLOG: u32 = IOC_OUT | IOC_WSK | 0x3;
/// `_WSAIOR(IOC_WSK, 4)`.
pub const SIO_WSK_QUERY_RECEIVE_BACKLOG: u32 = IOC_OUT | IOC_WSK | 0x4;

/// The socket object: an opaque provider structure whose first member is its dispatch
/// table (one of the WSK_PROVIDER_*_DISPATCH tables, by socket category).
#[repr(C)]
pub struct WSK_SOCKET {
    pub Dispatch: *const c_void,
}

/// `PWSK_CLIENT`: the provider's opaque handle for a registered client.
pub type PWSK_CLIENT = PVOID;

/// Data to send or room to receive: `Length` bytes starting `Offset` bytes into the first
/// MDL of a locked chain. `Offset` lies inside the first MDL, and the chain must hold at
/// least `Offset + Length` bytes (a longer `Length` crashes Windows).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSK_BUF {
    pub Mdl: *mut crate::MDL,
    pub Offset: u32,
    pub Length: SIZE_T,
}

/// A buffer the provider indicates to a receive-event callback.
#[repr(C)]
pub struct WSK_DATA_INDICATION {
    pub Next: *mut WSK_DATA_INDICATION,
    pub Buffer: WSK_BUF,
}

pub type PFN_WSK_CLIENT_EVENT = Option<
    unsafe extern "system" fn(
        ClientContext: PVOID,
        EventType: u32,
        Information: PVOID,
        InformationLength: SIZE_T,
    ) -> NTSTATUS,
>;

/// The client's level-one callback table, handed to WskRegister.
#[repr(C)]
pub struct WSK_CLIENT_DISPATCH {
    pub Version: u16,
    pub Reserved: u16,
    pub WskClientEvent: PFN_WSK_CLIENT_EVENT,
}

#[repr(C)]
pub struct WSK_CLIENT_NPI {
    pub ClientContext: PVOID,
    pub Dispatch: *const WSK_CLIENT_DISPATCH,
}

/// Filled in by WskCaptureProviderNPI; valid until WskReleaseProviderNPI.
#[repr(C)]
pub struct WSK_PROVIDER_NPI {
    pub Client: PWSK_CLIENT,
    pub Dispatch: *const WSK_PROVIDER_DISPATCH,
}

/// The registration block: owned by the client, written only by the WSK subsystem.
/// It must stay allocated from WskRegister until WskDeregister returns.
#[repr(C)]
pub struct WSK_REGISTRATION {
    pub ReservedRegistrationState: u64,
    pub ReservedRegistrationContext: PVOID,
    pub ReservedRegistrationLock: KSPIN_LOCK,
}

/// Socket event callbacks for connection sockets (wsktls enables none of them).
#[repr(C)]
pub struct WSK_CLIENT_CONNECTION_DISPATCH {
    pub WskReceiveEvent: PVOID,
    pub WskDisconnectEvent: PVOID,
    pub WskSendBacklogEvent: PVOID,
}

pub type PFN_WSK_SOCKET_CONNECT = Option<
    unsafe extern "system" fn(
        Client: PWSK_CLIENT,
        SocketType: u16,
        Protocol: u32,
        LocalAddress: *mut SOCKADDR,
        RemoteAddress: *mut SOCKADDR,
        Flags: u32,
        SocketContext: PVOID,
        Dispatch: *const WSK_CLIENT_CONNECTION_DISPATCH,
        OwningProcess: PVOID,
        OwningThread: PVOID,
        SecurityDescriptor: PVOID,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

pub type PFN_WSK_SOCKET = Option<
    unsafe extern "system" fn(
        Client: PWSK_CLIENT,
        AddressFamily: ADDRESS_FAMILY,
        SocketType: u16,
        Protocol: u32,
        Flags: u32,
        SocketContext: PVOID,
        Dispatch: *const c_void,
        OwningProcess: PVOID,
        OwningThread: PVOID,
        SecurityDescriptor: PVOID,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

pub type PFN_WSK_CONTROL_SOCKET = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        RequestType: WSK_CONTROL_SOCKET_TYPE,
        ControlCode: u32,
        Level: u32,
        InputSize: SIZE_T,
        InputBuffer: PVOID,
        OutputSize: SIZE_T,
        OutputBuffer: PVOID,
        OutputSizeReturned: *mut SIZE_T,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

pub type PFN_WSK_CLOSE_SOCKET =
    Option<unsafe extern "system" fn(Socket: *mut WSK_SOCKET, Irp: *mut IRP) -> NTSTATUS>;

/// WskSend, WskReceive and WskDisconnect share this shape (WskDisconnect's buffer is
/// optional).
pub type PFN_WSK_SEND = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        Buffer: *mut WSK_BUF,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;
pub type PFN_WSK_RECEIVE = PFN_WSK_SEND;
pub type PFN_WSK_DISCONNECT = PFN_WSK_SEND;

/// Entries wsktls never calls are kept as untyped pointers: their slots matter, their
/// signatures do not.
pub type PFN_WSK_UNUSED = PVOID;

/// The provider's level-one table (with the Windows 7 additions).
#[repr(C)]
pub struct WSK_PROVIDER_DISPATCH {
    pub Version: u16,
    pub Reserved: u16,
    pub WskSocket: PFN_WSK_SOCKET,
    pub WskSocketConnect: PFN_WSK_SOCKET_CONNECT,
    pub WskControlClient: PFN_WSK_UNUSED,
    pub WskGetAddressInfo: PFN_WSK_UNUSED,
    pub WskFreeAddressInfo: PFN_WSK_UNUSED,
    pub WskGetNameInfo: PFN_WSK_UNUSED,
}

/// The calls every socket supports.
#[repr(C)]
pub struct WSK_PROVIDER_BASIC_DISPATCH {
    pub WskControlSocket: PFN_WSK_CONTROL_SOCKET,
    pub WskCloseSocket: PFN_WSK_CLOSE_SOCKET,
}

/// The calls of a connection-oriented socket, as in the current wsk.h (Windows 10 RS2
/// added the three `Ex` entries at the end).
#[repr(C)]
pub struct WSK_PROVIDER_CONNECTION_DISPATCH {
    pub Basic: WSK_PROVIDER_BASIC_DISPATCH,
    pub WskBind: PFN_WSK_UNUSED,
    pub WskConnect: PFN_WSK_UNUSED,
    pub WskGetLocalAddress: PFN_WSK_UNUSED,
    pub WskGetRemoteAddress: PFN_WSK_UNUSED,
    pub WskSend: PFN_WSK_SEND,
    pub WskReceive: PFN_WSK_RECEIVE,
    pub WskDisconnect: PFN_WSK_DISCONNECT,
    pub WskRelease: PFN_WSK_UNUSED,
    pub WskConnectEx: PFN_WSK_UNUSED,
    pub WskSendEx: PFN_WSK_UNUSED,
    pub WskReceiveEx: PFN_WSK_UNUSED,
}

unsafe extern "system" {
    /// Registers a WSK client. PASSIVE_LEVEL.
    pub fn WskRegister(WskClientNpi: *mut WSK_CLIENT_NPI, WskRegistration: *mut WSK_REGISTRATION)
    -> NTSTATUS;
    /// Captures the provider NPI, waiting up to `WaitTimeout` ms for the provider.
    /// PASSIVE_LEVEL unless `WaitTimeout` is WSK_NO_WAIT.
    pub fn WskCaptureProviderNPI(
        WskRegistration: *mut WSK_REGISTRATION,
        WaitTimeout: u32,
        WskProviderNpi: *mut WSK_PROVIDER_NPI,
    ) -> NTSTATUS;
    /// Releases one capture. IRQL <= DISPATCH_LEVEL.
    pub fn WskReleaseProviderNPI(WskRegistration: *mut WSK_REGISTRATION);
    /// Waits until every capture is released and every socket closed. PASSIVE_LEVEL.
    pub fn WskDeregister(WskRegistration: *mut WSK_REGISTRATION);
}
