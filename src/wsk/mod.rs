//! The WSK client: what the secure channel uses to reach the network.
//!
//! - [`WskClient`]: WskRegister, then WskCaptureProviderNPI at PASSIVE_LEVEL outside
//!   DriverEntry; releases the NPI and deregisters when dropped.
//! - [`Socket`]: one connected TCP socket (WskSocketConnect to IPv4 or IPv6, with a
//!   timeout that cancels the connect), the ideal-send-backlog query, graceful
//!   disconnect, and close under rundown protection so that no call is in progress when
//!   WskCloseSocket runs.
//! - [`BufferLease`]: a sender's share of the client's cache of send buffers (nonpaged,
//!   MDL built once), borrowed while sends are in flight and given back after.
//! - [`Request`]: a send or receive slot whose IRP is allocated once and reused; its
//!   completion routine is the only place a request's outcome is handled.
//!
//! This module never blocks above PASSIVE_LEVEL: the synchronous calls (connect, query,
//! disconnect, close) are PASSIVE-only and say so; sends and receives may be issued at
//! DISPATCH_LEVEL, including from a completion routine.

mod buffers;
mod client;
mod irp;
mod request;
mod socket;
mod span;

pub use buffers::{BufferLease, CACHED, PREFILLED, SEND_BUFFER_LEN};
pub use client::WskClient;
pub use request::{Completion, Request};
pub use socket::Socket;
pub use span::Span;

use crate::nt::pool_tag;

/// Pool tags, one per kind of allocation, so a leak names its owner.
pub(crate) const TAG_CLIENT: u32 = pool_tag(b"WtCl");
pub(crate) const TAG_SOCKET: u32 = pool_tag(b"WtSo");
pub(crate) const TAG_REQUEST: u32 = pool_tag(b"WtRq");
pub(crate) const TAG_SEND_BUFFER: u32 = pool_tag(b"WtTx");
