//! Socket addresses as ws2def.h / ws2ipdef.h lay them out (ports and addresses in
//! network byte order).

use core::net::SocketAddr;

pub type ADDRESS_FAMILY = u16;
pub const AF_INET: ADDRESS_FAMILY = 2;
pub const AF_INET6: ADDRESS_FAMILY = 23;
pub const SOCK_STREAM: u16 = 1;
pub const IPPROTO_TCP: u32 = 6;

/// The generic socket address header.
#[repr(C)]
pub struct SOCKADDR {
    pub sa_family: ADDRESS_FAMILY,
    pub sa_data: [u8; 14],
}

/// An IPv4 socket address, 16 bytes, 4-aligned: `IN_ADDR` is a union with a `ULONG`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SOCKADDR_IN {
    pub sin_family: ADDRESS_FAMILY,
    pub sin_port: u16,
    /// `IN_ADDR`, the four octets in network order.
    pub sin_addr: [u8; 4],
    pub sin_zero: [u8; 8],
}

/// An IPv6 socket address, 28 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SOCKADDR_IN6 {
    pub sin6_family: ADDRESS_FAMILY,
    pub sin6_port: u16,
    pub sin6_flowinfo: u32,
    /// `IN6_ADDR`, sixteen octets in network order.
    pub sin6_addr: [u8; 16],
    /// Union with `SCOPE_ID`.
    pub sin6_scope_id: u32,
}

/// Room for any socket address, 128 bytes, 8-aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct SOCKADDR_STORAGE {
    pub ss_family: ADDRESS_FAMILY,
    pub __ss_pad: [u8; 126],
}

/// A socket address in the layout WSK (and wsktls.h) takes, made from a Rust one.
pub enum WinAddr {
    V4(SOCKADDR_IN),
    V6(SOCKADDR_IN6),
}

impl WinAddr {
    pub fn new(addr: SocketAddr) -> WinAddr {
        match addr {
            SocketAddr::V4(a) => WinAddr::V4(SOCKADDR_IN {
                sin_family: AF_INET,
                sin_port: a.port().to_be(),
                sin_addr: a.ip().octets(),
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => WinAddr::V6(SOCKADDR_IN6 {
                sin6_family: AF_INET6,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: a.ip().octets(),
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    /// The wildcard local address of the same family, port 0.
    pub fn any_like(&self) -> WinAddr {
        match self {
            WinAddr::V4(_) => WinAddr::new(SocketAddr::from(([0, 0, 0, 0], 0))),
            WinAddr::V6(_) => WinAddr::new(SocketAddr::from(([0u16; 8], 0))),
        }
    }

    pub fn as_ptr(&self) -> *const SOCKADDR {
        match self {
            WinAddr::V4(a) => (a as *const SOCKADDR_IN).cast(),
            WinAddr::V6(a) => (a as *const SOCKADDR_IN6).cast(),
        }
    }

    pub fn as_mut_ptr(&mut self) -> *mut SOCKADDR {
        match self {
            WinAddr::V4(a) => (a as *mut SOCKADDR_IN).cast(),
            WinAddr::V6(a) => (a as *mut SOCKADDR_IN6).cast(),
        }
    }
}
