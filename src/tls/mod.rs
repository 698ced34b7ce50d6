//! TLS 1.3 for the channel: the handshake (rustls's unbuffered client, run at
//! PASSIVE_LEVEL over a blocking transport) and, after it, our own record layer
//! (RFC 8446 §5), which seals and opens records in place in the channel's buffers.
//!
//! Nothing here knows of NT: the channel supplies the transport and the buffers, and turns
//! [`TlsError`] into the statuses consumers see.

mod config;
mod error;
mod handshake;
mod message;
pub mod record;

pub use config::{ClientAuth, ClientSetup, TlsParams};
pub use error::TlsError;
pub use handshake::{Established, HandshakeError, Lender, Protocol, Transport, handshake};
pub use message::{Alert, HandshakeReader, PostHandshake, alert, key_update, read_alert};
pub use record::{ContentType, Opened, Opener, Sealer};
