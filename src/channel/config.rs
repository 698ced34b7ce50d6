//! What a consumer asks of a channel, with the defaults a driver author would expect.

use core::net::SocketAddr;

use crate::tls::TlsParams;
use crate::tls::record::{MAX_FRAGMENT, MAX_RECORD, OVERHEAD};

/// Default limit on reaching the server (TCP connect).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 10_000;
/// Default limit on the TLS handshake, from the connected socket to the first record.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = 10_000;
/// Default limit on a graceful disconnect (close_notify out, FIN out).
pub const DEFAULT_DISCONNECT_TIMEOUT_MS: u32 = 5_000;
/// The send budget never goes below two full records (one on the wire, one being sealed)
/// nor above 1 MiB, whatever the ideal send backlog says.
pub const MIN_SEND_BUDGET: usize = 2 * (MAX_FRAGMENT + OVERHEAD);
pub const MAX_SEND_BUDGET: usize = 1 << 20;
/// The smallest receive buffer, and the default: eight whole pages, room for the largest
/// record a peer may send (MAX_RECORD) and most of the next. An idle channel holds it, so
/// it is most of what one costs; more only buys fewer WskReceives per byte.
pub const MIN_RECEIVE_BUFFER: usize = 32 * 1024;
const _: () = assert!(MIN_RECEIVE_BUFFER >= MAX_RECORD);
/// Smallest record size a consumer may choose.
pub const MIN_RECORD_SIZE: usize = 256;

/// A channel's parameters.
pub struct ChannelConfig {
    pub remote: SocketAddr,
    pub tls: TlsParams,
    /// Most plaintext bytes per record we send (MIN_RECORD_SIZE..=16384); full records
    /// carry `full_record_fill` of it.
    pub record_size: usize,
    /// Bytes of sealed records in flight at most; `None` to follow the socket's ideal send
    /// backlog. Clamped to MIN_SEND_BUDGET..=MAX_SEND_BUDGET.
    pub send_budget: Option<usize>,
    /// Bytes of received records (opened or not) the channel keeps for a consumer that is
    /// not reading; at least MIN_RECEIVE_BUFFER. While they are full no receive is posted.
    pub receive_buffer: usize,
    pub connect_timeout_ms: u32,
    pub handshake_timeout_ms: u32,
    /// Records one key may seal before we send KeyUpdate; `None` for the suite's
    /// confidentiality limit. Tests lower it to see key updates happen.
    pub key_update_after_records: Option<u64>,
}

impl ChannelConfig {
    pub fn new(remote: SocketAddr, tls: TlsParams) -> ChannelConfig {
        ChannelConfig {
            remote,
            tls,
            record_size: MAX_FRAGMENT,
            send_budget: None,
            receive_buffer: MIN_RECEIVE_BUFFER,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            key_update_after_records: None,
        }
    }

    pub(crate) fn is_valid(&self) -> bool {
        (MIN_RECORD_SIZE..=MAX_FRAGMENT).contains(&self.record_size)
            && self.connect_timeout_ms > 0
            && self.handshake_timeout_ms > 0
            && self.key_update_after_records.is_none_or(|n| n >= 2)
    }

    /// The budget for a socket whose ideal send backlog is `backlog` bytes.
    pub(crate) fn budget(&self, backlog: Option<usize>) -> usize {
        let wanted = self.send_budget.or(backlog).unwrap_or(MIN_SEND_BUDGET);
        wanted.clamp(MIN_SEND_BUDGET.max(2 * (self.record_size + OVERHEAD)), MAX_SEND_BUDGET)
    }
}
