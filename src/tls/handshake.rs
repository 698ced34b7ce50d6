//! The TLS 1.3 handshake, driven by rustls's unbuffered client over a blocking transport
//! (the channel runs it at PASSIVE_LEVEL), ending in the hand-over to our record layer.

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use wsktls_crypto::{Platform, SecretBytes, Suite, TrafficKey, sha256, suite_of};

use super::TlsError;
use super::config::ClientSetup;
use super::record::{Opener, Sealer};

/// Runs a call into rustls with memory behind its heap allocations: rustls cannot take a
/// failed allocation, and in the kernel one is a bugcheck (the channel lends its heap
/// reserve, see `crate::heap`). Fails, without running `f`, if it cannot.
pub trait Lender {
    fn lend<R>(&self, f: impl FnOnce() -> R) -> Result<R, TlsError>;
}

/// Moves handshake bytes. Both calls block, and the implementation bounds them by the
/// handshake deadline.
pub trait Transport {
    type Error;
    /// Sends all of `data`.
    fn send(&mut self, data: &[u8]) -> Result<(), Self::Error>;
    /// Receives at least one byte into `into`, or returns 0 when the peer closed.
    fn receive(&mut self, into: &mut [u8]) -> Result<usize, Self::Error>;
}

#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError<E> {
    Transport(E),
    Tls(TlsError),
}

impl<E> From<TlsError> for HandshakeError<E> {
    fn from(e: TlsError) -> Self {
        HandshakeError::Tls(e)
    }
}

/// A finished handshake: our record layer's two directions and what the consumer may ask
/// about the session.
pub struct Established {
    /// Computes the next traffic secrets for KeyUpdate; files session tickets.
    pub kernel: KernelConnection<ClientConnectionData>,
    pub sealer: Sealer,
    pub opener: Opener,
    pub suite: Suite,
    pub alpn: Option<Protocol>,
    /// SHA-256 of the server's leaf certificate (DER).
    pub peer_certificate_sha256: [u8; 32],
    /// Bytes at the start of `incoming` that arrived after the handshake's last message:
    /// the beginning of the record stream our record layer reads next.
    pub leftover: usize,
    /// Application data the server sent with its last flight (rare), already decrypted.
    pub early_plaintext: SecretBytes,
}

/// The protocol ALPN chose: at most 255 bytes (RFC 7301 §3.1), held inline so that
/// asking a channel for it allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    len: u8,
    bytes: [u8; 255],
}

impl Protocol {
    pub fn new(name: &[u8]) -> Result<Protocol, TlsError> {
        let len = u8::try_from(name.len()).map_err(|_| TlsError::Internal)?;
        let mut bytes = [0; 255];
        bytes[..name.len()].copy_from_slice(name);
        Ok(Protocol { len, bytes })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl core::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.as_bytes().escape_ascii())
    }
}

/// Runs the handshake to completion. `incoming` must hold the largest record (it is the
/// buffer records are received into); `outgoing` must hold our largest flight.
/// `confidentiality_limit` caps the records one key may protect (lowered in tests).
/// Every call into rustls runs lent by `heap`; the transport's calls run without.
pub fn handshake<T: Transport, P: Platform, L: Lender>(
    setup: ClientSetup,
    platform: &P,
    heap: &L,
    io: &mut T,
    incoming: &mut [u8],
    outgoing: &mut [u8],
    confidentiality_limit: Option<u64>,
) -> Result<Established, HandshakeError<T::Error>> {
    let mut conn = heap
        .lend(|| UnbufferedClientConnection::new(setup.config, setup.server_name))?
        .map_err(TlsError::from)?;
    let mut filled = 0; // received bytes in `incoming`
    let mut encoded = 0; // handshake bytes waiting in `outgoing`
    let mut early_plaintext = SecretBytes::new();
    loop {
        let step = platform
            .with_vector_state(|| {
                heap.lend(|| {
                    step(&mut conn, &mut incoming[..filled], &mut outgoing[encoded..], &mut early_plaintext)
                })
            })
            .map_err(|_| TlsError::Internal)?;
        let step = match step.and_then(|s| s) {
            Ok(step) => step,
            Err(e) => {
                send_alert(&mut conn, platform, heap, io, &mut incoming[..filled], outgoing);
                return Err(e.into());
            }
        };
        incoming.copy_within(step.discard..filled, 0);
        filled -= step.discard;
        match step.next {
            Next::Encoded(n) => encoded += n,
            Next::Transmit => {
                io.send(&outgoing[..encoded]).map_err(HandshakeError::Transport)?;
                encoded = 0;
            }
            Next::Receive => {
                if filled == incoming.len() {
                    return Err(TlsError::IllegalMessage.into()); // a record larger than allowed
                }
                match io.receive(&mut incoming[filled..]).map_err(HandshakeError::Transport)? {
                    0 => return Err(TlsError::Truncated.into()),
                    n => filled += n,
                }
            }
            Next::Done => break,
        }
    }
    let alpn = conn.alpn_protocol().map(Protocol::new).transpose()?;
    let leaf = conn.peer_certificates().and_then(|c| c.first()).ok_or(TlsError::BadCertificate)?;
    let peer_certificate_sha256 = sha256(leaf);
    let suite = conn.negotiated_cipher_suite().ok_or(TlsError::Internal)?;
    let limit = suite.tls13().ok_or(TlsError::NoCommonParameters)?.common.confidentiality_limit;
    let limit = confidentiality_limit.map_or(limit, |l| l.min(limit));
    let suite = suite_of(suite).ok_or(TlsError::NoCommonParameters)?;
    let (secrets, kernel) = heap.lend(|| conn.dangerous_into_kernel_connection())?.map_err(TlsError::from)?;
    let (tx_sequence, tx) = secrets.tx;
    let (rx_sequence, rx) = secrets.rx;
    let tx = TrafficKey::new(&tx).ok_or(TlsError::Internal)?;
    let rx = TrafficKey::new(&rx).ok_or(TlsError::Internal)?;
    Ok(Established {
        kernel,
        sealer: Sealer::new(tx, tx_sequence, limit),
        opener: Opener::new(rx, rx_sequence),
        suite,
        alpn,
        peer_certificate_sha256,
        leftover: filled,
        early_plaintext,
    })
}

/// After a failure rustls queues the alert that says why (bad_certificate, ...): send it,
/// best effort, so the server's log names the reason rather than a dropped connection.
/// `incoming` must be the bytes of the failed call: rustls still counts in them (given an
/// empty slice after a malformed record it indexes past its end and panics).
fn send_alert<T: Transport, P: Platform, L: Lender>(
    conn: &mut UnbufferedClientConnection,
    platform: &P,
    heap: &L,
    io: &mut T,
    incoming: &mut [u8],
    outgoing: &mut [u8],
) {
    let encoded = platform.with_vector_state(|| {
        heap.lend(|| match conn.process_tls_records(incoming).state {
            Ok(ConnectionState::EncodeTlsData(mut data)) => data.encode(outgoing).ok(),
            _ => None,
        })
    });
    if let Ok(Ok(Some(n))) = encoded {
        let _ = io.send(&outgoing[..n]);
    }
}

/// What the handshake loop does after one rustls step.
enum Next {
    /// `n` more bytes were encoded into the outgoing buffer.
    Encoded(usize),
    /// Send everything encoded so far.
    Transmit,
    /// rustls needs more bytes from the peer.
    Receive,
    /// The handshake is complete and nothing is left to send.
    Done,
}

struct Step {
    /// Bytes to remove from the front of the incoming buffer.
    discard: usize,
    next: Next,
}

/// One call into rustls (all of the handshake's crypto happens here, so the caller wraps
/// it in the vector-state guard).
fn step(
    conn: &mut UnbufferedClientConnection,
    incoming: &mut [u8],
    outgoing: &mut [u8],
    early_plaintext: &mut SecretBytes,
) -> Result<Step, TlsError> {
    let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
    let next = match state? {
        ConnectionState::EncodeTlsData(mut data) => match data.encode(outgoing) {
            Ok(n) => Next::Encoded(n),
            // Our flight (a client certificate chain, say) does not fit the buffer.
            Err(EncodeError::InsufficientSize(_)) => return Err(TlsError::BadParameters),
            Err(EncodeError::AlreadyEncoded) => return Err(TlsError::Internal),
        },
        ConnectionState::TransmitTlsData(data) => {
            data.done();
            Next::Transmit
        }
        ConnectionState::BlockedHandshake => Next::Receive,
        ConnectionState::ReadTraffic(mut traffic) => {
            while let Some(record) = traffic.next_record() {
                let record = record?;
                discard += record.discard;
                early_plaintext.extend_from_slice(record.payload).map_err(|_| TlsError::Internal)?;
            }
            return Ok(Step { discard, next: Next::Encoded(0) });
        }
        ConnectionState::WriteTraffic(_) => Next::Done,
        // The peer closed during the handshake.
        ConnectionState::PeerClosed | ConnectionState::Closed => return Err(TlsError::Truncated),
        _ => return Err(TlsError::Internal),
    };
    Ok(Step { discard, next })
}
