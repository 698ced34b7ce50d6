//! wsktls: TLS 1.3 secure channels over Winsock Kernel, for other Windows kernel drivers.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub use wsktls_nt as nt;

pub mod channel;
pub mod driver;
pub mod heap;
pub mod interface;
#[cfg(target_os = "windows")]
mod kernel;
pub mod log;
pub mod planted;
pub mod platform;
pub mod tls;
pub mod wsk;
