//! Query: what a channel negotiated, and its counters, copied into the consumer's buffer.

// The information classes keep wsktls.h's names.
#![allow(non_upper_case_globals)]

use core::ffi::c_void;

use super::table;
use crate::channel::ChannelInfo;
use crate::nt::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_INFO_CLASS, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
    WSKTLS_CHANNEL, WSKTLS_COUNTERS, WSKTLS_SESSION_INFO, WskTlsInfoCounters, WskTlsInfoSession,
};
use wsktls_crypto::Suite;

/// `PFN_WSKTLS_QUERY`: synchronous, IRQL <= DISPATCH_LEVEL. STATUS_INVALID_INFO_CLASS for
/// an unknown class; STATUS_BUFFER_TOO_SMALL (with the size needed in `*returned`) for a
/// short or null buffer; the handle's own status (STATUS_INVALID_HANDLE,
/// STATUS_FILE_FORCED_CLOSED) for a channel that cannot be asked.
///
/// # Safety
/// `channel` from Connect (or stale); `buffer` null or writable for `length` bytes;
/// `returned` null or writable.
pub(super) unsafe extern "system" fn query(
    channel: *mut WSKTLS_CHANNEL,
    class: u32,
    buffer: *mut c_void,
    length: u32,
    returned: *mut u32,
) -> NTSTATUS {
    let needed = match class {
        WskTlsInfoSession => size_of::<WSKTLS_SESSION_INFO>(),
        WskTlsInfoCounters => size_of::<WSKTLS_COUNTERS>(),
        _ => return STATUS_INVALID_INFO_CLASS,
    };
    if !returned.is_null() {
        // SAFETY: writable per the contract.
        unsafe { *returned = needed as u32 };
    }
    if buffer.is_null() || (length as usize) < needed {
        return STATUS_BUFFER_TOO_SMALL;
    }
    if buffer as usize % align_of::<u64>() != 0 && class == WskTlsInfoCounters {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: forwarded contract.
    let held = match unsafe { table::acquire(channel) } {
        Ok(held) => held,
        Err(status) => return status,
    };
    let info = match held.channel() {
        Ok(channel) => channel.info(),
        Err(status) => return status,
    };
    // SAFETY: writable for `needed` bytes (checked above), aligned for the counters.
    unsafe {
        match class {
            WskTlsInfoSession => buffer.cast::<WSKTLS_SESSION_INFO>().write_unaligned(session(&info)),
            _ => buffer.cast::<WSKTLS_COUNTERS>().write(counters(&info)),
        }
    }
    STATUS_SUCCESS
}

fn session(info: &ChannelInfo) -> WSKTLS_SESSION_INFO {
    let mut s = WSKTLS_SESSION_INFO {
        ProtocolVersion: 0x0304,
        CipherSuite: match info.suite {
            Suite::Aes128Gcm => 0x1301,
            Suite::Aes256Gcm => 0x1302,
            Suite::Chacha20Poly1305 => 0x1303,
        },
        AlpnLength: 0,
        Alpn: [0; 255],
        PeerCertificateSha256: info.peer_certificate_sha256,
    };
    if let Some(alpn) = info.alpn.as_ref().map(|p| p.as_bytes()) {
        let n = alpn.len().min(s.Alpn.len());
        s.Alpn[..n].copy_from_slice(&alpn[..n]);
        s.AlpnLength = n as u8;
    }
    s
}

fn counters(info: &ChannelInfo) -> WSKTLS_COUNTERS {
    let (tx, rx) = (&info.sent, &info.received);
    WSKTLS_COUNTERS {
        BytesSent: tx.plaintext_bytes,
        RecordsSent: tx.records,
        KeyUpdatesSent: tx.key_updates,
        BytesReceived: rx.plaintext_bytes,
        RecordsReceived: rx.records,
        KeyUpdatesReceived: rx.key_updates,
        InFlightBytes: tx.in_flight_bytes as u64,
        PeakInFlightBytes: tx.peak_in_flight_bytes as u64,
        SendBudget: tx.budget as u64,
        BufferedBytes: rx.buffered_bytes as u64,
    }
}
