//! A user-mode TLS 1.3 server on rustls (std, ring) for wsktls's tests, and the test PKI.
//!
//! The tests start a [`Peer`] in-process on a loopback address and connect the driver to it;
//! [`Stats`] then says what the server saw: plaintext bytes, connections, the KeyUpdates it
//! initiated, and how each connection ended (close_notify, a bare TCP close, an error).
//! The `echo-peer` binary runs the same server out of process; `make-test-pki` writes the
//! certificates that [`pki::generate`] makes.
//!
//! It must never listen anywhere but loopback, and never panic on what a client sends.

mod connection;
mod peer;
pub mod pki;

use std::io;
use std::path::PathBuf;
use std::str::FromStr;

pub use peer::{Ending, Peer, Stats};
pub use rustls::CipherSuite;

/// What the server does with the plaintext of each connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Write back every plaintext byte received, in order.
    #[default]
    Echo,
    /// Read and discard, counting the bytes.
    Sink,
    /// Write [`source_pattern`] endlessly, from stream offset 0, until the client closes;
    /// what the client sends is read and counted.
    Source,
}

impl FromStr for Mode {
    type Err = io::Error;

    fn from_str(s: &str) -> io::Result<Mode> {
        match s {
            "echo" => Ok(Mode::Echo),
            "sink" => Ok(Mode::Sink),
            "source" => Ok(Mode::Source),
            _ => Err(invalid(format!("unknown mode {s:?} (echo, sink or source)"))),
        }
    }
}

/// How a [`Peer`] serves: its identity, whom it trusts, and what it does with the data.
#[derive(Clone, Debug)]
pub struct Config {
    /// PEM: the server's certificate, then any intermediates, sent in this order.
    pub cert_chain_pem: PathBuf,
    /// PEM: the server's private key (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: PathBuf,
    /// PEM: trust anchors for client certificates. When set, every client must present a
    /// certificate that chains to one of them (mutual TLS); a client without one is refused.
    pub client_ca: Option<PathBuf>,
    pub mode: Mode,
    /// Initiate a TLS 1.3 KeyUpdate (asking the client to update too) after every this many
    /// plaintext bytes received on a connection: exactly at that byte, so in echo mode the
    /// echo of the bytes before it is sealed under the old key. `Some(0)` means never.
    pub key_update_every: Option<u64>,
    /// The TLS 1.3 cipher suites offered, in preference order; `None` for all of ring's.
    pub suites: Option<Vec<CipherSuite>>,
}

impl Config {
    /// An echo server with this identity, no client authentication, no KeyUpdates, every
    /// TLS 1.3 suite.
    pub fn new(cert_chain_pem: impl Into<PathBuf>, key_pem: impl Into<PathBuf>) -> Config {
        Config {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            client_ca: None,
            mode: Mode::Echo,
            key_update_every: None,
            suites: None,
        }
    }
}

/// The TLS 1.3 cipher suite with this name: IANA's (`TLS_AES_128_GCM_SHA256`) or rustls's
/// (`TLS13_AES_128_GCM_SHA256`).
pub fn suite_by_name(name: &str) -> io::Result<CipherSuite> {
    match name.strip_prefix("TLS13_").or_else(|| name.strip_prefix("TLS_")) {
        Some("AES_128_GCM_SHA256") => Ok(CipherSuite::TLS13_AES_128_GCM_SHA256),
        Some("AES_256_GCM_SHA384") => Ok(CipherSuite::TLS13_AES_256_GCM_SHA384),
        Some("CHACHA20_POLY1305_SHA256") => Ok(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
        _ => Err(invalid(format!("unknown TLS 1.3 cipher suite {name:?}"))),
    }
}

/// Fills `out` with the bytes a [`Mode::Source`] peer writes at stream offsets
/// `offset..offset + out.len()`. The stream is a SplitMix64 sequence, one 64-bit word per
/// eight bytes (little-endian), so a lost, repeated or reordered byte shows.
pub fn source_pattern(offset: u64, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        let at = offset + i as u64;
        *byte = splitmix64(at / 8).to_le_bytes()[(at % 8) as usize];
    }
}

fn splitmix64(index: u64) -> u64 {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_pattern_is_the_same_however_it_is_cut() {
        let mut whole = [0u8; 100];
        source_pattern(5, &mut whole);
        let mut parts = [0u8; 100];
        let (a, b) = parts.split_at_mut(37);
        source_pattern(5, a);
        source_pattern(42, b);
        assert_eq!(whole, parts);
        assert_ne!(whole[..8], whole[8..16], "the pattern does not repeat word to word");
    }

    #[test]
    fn suites_by_iana_and_rustls_name() {
        assert_eq!(suite_by_name("TLS_AES_256_GCM_SHA384").unwrap(), CipherSuite::TLS13_AES_256_GCM_SHA384);
        assert_eq!(
            suite_by_name("TLS13_CHACHA20_POLY1305_SHA256").unwrap(),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        assert!(suite_by_name("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").is_err());
    }
}
