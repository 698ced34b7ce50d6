//! Socket addresses as ws2def.h / ws2ipdef.h lay them out (ports and addresses in
//! network byte order).

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
