//! A server whose keys the bench knows, and records sealed with them.
//!
//! The receive benchmark times the driver's receive path alone: the driver completes a real
//! handshake with [`KeyedServer`] over loopback, then its socket is switched to a null
//! transport fed from memory. What it is fed must be what the server would have sent, so
//! the server hands over its application traffic key, IV and next sequence number, and
//! [`seal_stream`] seals records with them. [`BareAead`] is the limit the driver is measured
//! against: ring sealing and opening the same records in place, and nothing else.
//!
//! Bench code only: the keys leave the server on purpose. It must never listen anywhere
//! but loopback, and nothing a client sends may make it panic.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::crypto::ring as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::{CipherSuite, ConnectionTrafficSecrets, ServerConfig, ServerConnection};

use crate::words::Failure;

/// TLS 1.3 record header: type (1), legacy_record_version (2), length (2) (RFC 8446 §5.1).
const HEADER_LEN: usize = 5;
/// ContentType application_data (RFC 8446 §5.1); also the inner content type of our records.
const APPLICATION_DATA: u8 = 23;
/// legacy_record_version: 0x0303 on every TLS 1.3 record after the ClientHello (§5.1).
const LEGACY_VERSION: [u8; 2] = [3, 3];
/// The most plaintext a record may carry: 2^14 bytes (§5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// The most a record's encrypted body may be: 2^14 + 256 bytes (§5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The AEAD tag of all three suites.
const TAG_LEN: usize = 16;
/// The per-record nonce length, and so the IV's (§5.3).
const NONCE_LEN: usize = aead::NONCE_LEN;
/// How long the server waits on a silent client during the handshake before giving up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server will seal its next application-data record with.
#[derive(Clone)]
pub struct ServerKeys {
    pub suite: CipherSuite,
    /// The server_application_traffic_secret's key: 16 bytes (AES-128) or 32.
    pub key: Vec<u8>,
    pub iv: [u8; NONCE_LEN],
    /// The sequence number of the server's next record under this key.
    pub sequence: u64,
}

/// A one-connection TLS 1.3 server on 127.0.0.1 whose keys the bench learns.
///
/// It sends no NewSessionTicket (`send_tls13_tickets = 0`), so no post-handshake message
/// precedes the bench's records: the client's next record from the server is sequence 0
/// of the server's application traffic key. After the handshake the TCP connection stays
/// open, neither read nor written, until the `KeyedServer` is dropped.
pub struct KeyedServer {
    addr: SocketAddr,
    state: Mutex<Handover>,
}

/// Where the server's thread is, as `keys()` last saw it.
enum Handover {
    /// The handshake is under way (or no client has come yet).
    Waiting(Receiver<Result<(ServerKeys, TcpStream), Failure>>),
    /// The keys, and the connection, held (idle) only so that it stays open until drop.
    Done { keys: ServerKeys, _connection: TcpStream },
    /// The handshake failed, in these words.
    Failed(String),
}

impl KeyedServer {
    /// Listens on a free loopback port and serves one handshake on a thread of its own.
    pub fn start(chain_pem: &Path, key_pem: &Path, suite: CipherSuite) -> Result<KeyedServer, Failure> {
        let config = Arc::new(server_config(chain_pem, key_pem, suite)?);
        let failed = |e: std::io::Error| Failure::plain("listen on 127.0.0.1", e.to_string());
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(failed)?;
        let addr = listener.local_addr().map_err(failed)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("keyed-server".into())
            .spawn(move || {
                // The receiver may be gone (the server was dropped): nobody is left to tell.
                let _ = tx.send(serve_one(listener, config));
            })
            .map_err(|e| Failure::plain("start the keyed server's thread", e.to_string()))?;
        Ok(KeyedServer { addr, state: Mutex::new(Handover::Waiting(rx)) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits (up to `timeout`) for the handshake and returns the keys. After a timeout it
    /// may be called again; once it has the keys it returns the same keys every time.
    pub fn keys(&self, timeout: Duration) -> Result<ServerKeys, Failure> {
        let what = "learn the keyed server's traffic keys";
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Handover::Waiting(rx) = &*state {
            *state = match rx.recv_timeout(timeout) {
                Ok(Ok((keys, connection))) => Handover::Done { keys, _connection: connection },
                Ok(Err(failure)) => {
                    // The first caller hears the failure as it was; later ones, in its words.
                    *state = Handover::Failed(failure.to_string());
                    return Err(failure);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Failure::plain(what, format!("no handshake completed within {timeout:?}")));
                }
                Err(RecvTimeoutError::Disconnected) => Handover::Failed("its thread ended".into()),
            };
        }
        match &*state {
            Handover::Done { keys, .. } => Ok(keys.clone()),
            Handover::Failed(why) => Err(Failure::plain(what, why.clone())),
            Handover::Waiting(_) => Err(Failure::plain(what, "still waiting")),
        }
    }
}

impl Drop for KeyedServer {
    fn drop(&mut self) {
        // A thread still blocked in accept() would outlive us: connect once so that it
        // accepts, fails the handshake on our close, and ends. Refused means it had already
        // accepted; a stalled handshake ends at HANDSHAKE_TIMEOUT.
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if matches!(state, Handover::Waiting(_)) {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
    }
}

/// A TLS 1.3-only server offering `suite` alone, whose secrets can be extracted, and which
/// sends no tickets (so nothing follows its Finished).
fn server_config(chain_pem: &Path, key_pem: &Path, suite: CipherSuite) -> Result<ServerConfig, Failure> {
    let what = "configure the keyed server";
    let failed = |e: &dyn std::fmt::Display| Failure::plain(what, e.to_string());
    let mut crypto = provider::default_provider();
    crypto.cipher_suites.retain(|s| s.suite() == suite && s.tls13().is_some());
    if crypto.cipher_suites.is_empty() {
        return Err(Failure::plain(what, format!("{suite:?} is not a TLS 1.3 suite ring offers")));
    }
    let chain = CertificateDer::pem_file_iter(chain_pem)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(&format!("{}: {e}", chain_pem.display())))?;
    let key =
        PrivateKeyDer::from_pem_file(key_pem).map_err(|e| failed(&format!("{}: {e}", key_pem.display())))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(crypto))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| failed(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| failed(&e))?;
    config.enable_secret_extraction = true;
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Accepts one connection, completes the handshake (through the client's Finished), and
/// returns the server's sending keys with the connection, which the caller keeps open.
fn serve_one(listener: TcpListener, config: Arc<ServerConfig>) -> Result<(ServerKeys, TcpStream), Failure> {
    let what = "keyed server handshake";
    let failed = |e: &dyn std::fmt::Display| Failure::plain(what, e.to_string());
    let (mut stream, _) = listener.accept().map_err(|e| failed(&e))?;
    // One connection only: later clients are refused rather than left hanging.
    drop(listener);
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| failed(&e))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| failed(&e))?;
    let mut conn = ServerConnection::new(config).map_err(|e| failed(&e))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut stream).map_err(|e| failed(&e))?;
    }
    let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
    let secrets = conn.dangerous_extract_secrets().map_err(|e| failed(&e))?;
    let (sequence, traffic) = secrets.tx;
    let (key, iv) = match traffic {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => return Err(Failure::plain(what, "rustls extracted secrets of an unknown kind")),
    };
    let iv = iv.as_ref().try_into().map_err(|_| Failure::plain(what, "the IV is not 12 bytes"))?;
    let suite = suite.ok_or_else(|| Failure::plain(what, "no cipher suite was negotiated"))?;
    Ok((ServerKeys { suite, key: key.as_ref().to_vec(), iv, sequence }, stream))
}

/// The plaintext byte [`seal_stream`] puts at stream offset `offset`: echo-peer's source
/// pattern (SplitMix64), so a lost, repeated or reordered byte shows.
#[cfg(test)]
pub fn pattern_byte(offset: u64) -> u8 {
    let mut byte = [0u8];
    echo_peer::source_pattern(offset, &mut byte);
    byte[0]
}

/// Seals `plaintext_len` bytes of [`pattern_byte`] (each call from stream offset 0) as
/// TLS 1.3 application-data records of `record_size` plaintext bytes (the last one shorter),
/// from `keys.sequence` on, which it advances. `out` is cleared first.
pub fn seal_stream(
    keys: &mut ServerKeys,
    record_size: usize,
    plaintext_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    check_record_size(record_size)?;
    let aead = BareAead::new(keys.suite, &keys.key, keys.iv)?;
    let records = plaintext_len.div_ceil(record_size);
    out.clear();
    out.reserve(plaintext_len + records * (HEADER_LEN + 1 + TAG_LEN));
    for start in (0..plaintext_len).step_by(record_size) {
        let len = record_size.min(plaintext_len - start);
        aead.seal_record(keys.sequence, start as u64, len, out)?;
        keys.sequence = keys.sequence.checked_add(1).ok_or_else(|| {
            Failure::plain("seal records", "the sequence number would wrap (RFC 8446 §5.3)")
        })?;
    }
    Ok(())
}

/// Refuses record sizes TLS 1.3 does not allow (and 0, which would never end).
fn check_record_size(record_size: usize) -> Result<(), Failure> {
    if record_size == 0 || record_size > MAX_PLAINTEXT {
        return Err(Failure::plain(
            "seal records",
            format!("record size {record_size}: a TLS 1.3 record carries 1 to {MAX_PLAINTEXT} bytes"),
        ));
    }
    Ok(())
}

/// ring's AEAD with a TLS 1.3 IV: the bare limit the driver's record layer is held to.
pub struct BareAead {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
}

impl BareAead {
    pub fn new(suite: CipherSuite, key: &[u8], iv: [u8; NONCE_LEN]) -> Result<BareAead, Failure> {
        let algorithm = algorithm(suite)?;
        let key = UnboundKey::new(algorithm, key).map_err(|_| {
            Failure::plain(
                "make an AEAD key",
                format!("{suite:?} needs a {}-byte key, not {}", algorithm.key_len(), key.len()),
            )
        })?;
        Ok(BareAead { key: LessSafeKey::new(key), iv })
    }

    /// Seals each `record_size` chunk of `buf` in place as one record's plaintext, sequence
    /// numbers from `first_sequence`; each tag is written to a side array, overwriting the
    /// last (a sender would put it after the ciphertext). The AAD is the header such a record
    /// would have.
    pub fn seal_chunks(
        &self,
        buf: &mut [u8],
        record_size: usize,
        first_sequence: u64,
    ) -> Result<(), Failure> {
        check_record_size(record_size)?;
        let mut tag = [0u8; TAG_LEN];
        for (i, chunk) in buf.chunks_mut(record_size).enumerate() {
            // Wrapping: a baseline over a caller's buffer only needs distinct nonces.
            let nonce = nonce(&self.iv, first_sequence.wrapping_add(i as u64));
            let header = header(chunk.len() + TAG_LEN);
            let sealed = self
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(header), chunk)
                .map_err(|_| Failure::plain("seal a record", "ring refused it"))?;
            tag.copy_from_slice(sealed.as_ref());
        }
        // The tags are the baseline's output too: keep the compiler from dropping their copy.
        std::hint::black_box(&tag);
        Ok(())
    }

    /// Opens in place a stream of TLS 1.3 records (as [`seal_stream`] makes them), sequence
    /// numbers from `first_sequence`, and returns how many application-data bytes they held.
    /// Fails on a malformed or truncated record, one that fails authentication, or one whose
    /// inner content type is not application_data.
    pub fn open_stream(&self, records: &mut [u8], first_sequence: u64) -> Result<usize, Failure> {
        let mut rest = records;
        let mut sequence = first_sequence;
        let mut opened = 0;
        while !rest.is_empty() {
            let (header, body_len) = parse_header(rest)?;
            let (record, tail) = rest.split_at_mut(HEADER_LEN + body_len);
            let nonce = nonce(&self.iv, sequence);
            let inner = self.key.open_in_place(nonce, Aad::from(header), &mut record[HEADER_LEN..]).map_err(
                |_| Failure::plain("open a record", format!("record {sequence} failed authentication")),
            )?;
            opened += content_len(inner, sequence)?;
            sequence = sequence.wrapping_add(1);
            rest = tail;
        }
        Ok(opened)
    }

    /// Appends one record: the header, `len` pattern bytes from `offset`, the inner content
    /// type, sealed in place, and the tag.
    fn seal_record(&self, sequence: u64, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<(), Failure> {
        let header = header(len + 1 + TAG_LEN);
        out.extend_from_slice(&header);
        let body = out.len();
        out.resize(body + len, 0);
        echo_peer::source_pattern(offset, &mut out[body..]);
        out.push(APPLICATION_DATA);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(&self.iv, sequence), Aad::from(header), &mut out[body..])
            .map_err(|_| Failure::plain("seal a record", "ring refused it"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// ring's AEAD for a TLS 1.3 suite.
fn algorithm(suite: CipherSuite) -> Result<&'static aead::Algorithm, Failure> {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => Ok(&aead::AES_128_GCM),
        CipherSuite::TLS13_AES_256_GCM_SHA384 => Ok(&aead::AES_256_GCM),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Ok(&aead::CHACHA20_POLY1305),
        _ => Err(Failure::plain("choose an AEAD", format!("{suite:?} is not a TLS 1.3 suite"))),
    }
}

/// The per-record nonce: the IV XOR the sequence number, left-padded to 12 bytes
/// big-endian (RFC 8446 §5.3).
fn nonce(iv: &[u8; NONCE_LEN], sequence: u64) -> Nonce {
    let mut nonce = *iv;
    for (byte, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(sequence.to_be_bytes()) {
        *byte ^= s;
    }
    Nonce::assume_unique_for_key(nonce)
}

/// The header of an application-data record whose encrypted body is `body_len` bytes; it
/// is also the record's AAD (§5.2). `body_len` is at most MAX_CIPHERTEXT, so it fits.
fn header(body_len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (body_len as u16).to_be_bytes();
    [APPLICATION_DATA, LEGACY_VERSION[0], LEGACY_VERSION[1], hi, lo]
}

/// The header at the start of `bytes` and its body's length, checked against what follows.
fn parse_header(bytes: &[u8]) -> Result<([u8; HEADER_LEN], usize), Failure> {
    let malformed = |why: String| Failure::plain("open a record", why);
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(malformed(format!("{} bytes left: a truncated header", bytes.len())));
    };
    if header[0] != APPLICATION_DATA || header[1..3] != LEGACY_VERSION {
        return Err(malformed(format!("not an application-data record header: {header:02x?}")));
    }
    let body_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if !(TAG_LEN + 1..=MAX_CIPHERTEXT).contains(&body_len) {
        return Err(malformed(format!("record length {body_len} is out of range (RFC 8446 §5.2)")));
    }
    if bytes.len() - HEADER_LEN < body_len {
        return Err(malformed(format!("a {body_len}-byte record is cut short")));
    }
    Ok((*header, body_len))
}

/// The length of the content in an opened record: the inner plaintext without its zero
/// padding and content type (RFC 8446 §5.4), which must be application_data.
fn content_len(inner: &[u8], sequence: u64) -> Result<usize, Failure> {
    match inner.iter().rposition(|&b| b != 0) {
        Some(at) if inner[at] == APPLICATION_DATA => Ok(at),
        _ => {
            Err(Failure::plain("open a record", format!("record {sequence} does not hold application data")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read};

    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use super::*;
    use crate::peer::{DemoPki, SERVER_NAMES, TempDir, make_pki};

    const SUITES: [CipherSuite; 3] = [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    const WAIT: Duration = Duration::from_secs(10);

    /// A rustls std client that has completed a handshake with a fresh KeyedServer, and
    /// the server's keys. The TempDir and server stay alive as long as the client.
    struct Handshaken {
        client: StreamOwned<ClientConnection, TcpStream>,
        keys: ServerKeys,
        _server: KeyedServer,
        _dir: TempDir,
    }

    fn handshake(suite: CipherSuite) -> Handshaken {
        let dir = TempDir::new("wsktls-records-test").unwrap();
        let pki = make_pki(dir.path()).unwrap();
        let server = KeyedServer::start(&pki.chain, &pki.key, suite).unwrap();
        let mut client = connect(&pki, server.addr());
        while client.conn.is_handshaking() {
            client.conn.complete_io(&mut client.sock).unwrap();
        }
        let keys = server.keys(WAIT).unwrap();
        Handshaken { client, keys, _server: server, _dir: dir }
    }

    fn connect(pki: &DemoPki, addr: SocketAddr) -> StreamOwned<ClientConnection, TcpStream> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(pki.ca_der.clone())).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = SERVER_NAMES[0].try_into().unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        StreamOwned::new(conn, TcpStream::connect(addr).unwrap())
    }

    /// Feeds `records` to the client as if from the wire and returns the plaintext.
    fn receive(conn: &mut ClientConnection, mut records: &[u8]) -> Vec<u8> {
        let mut plaintext = Vec::new();
        while !records.is_empty() {
            conn.read_tls(&mut records).unwrap();
            conn.process_new_packets().unwrap();
            // rustls buffers only so much plaintext: drain it before reading more.
            let mut chunk = [0u8; 4096];
            loop {
                match conn.reader().read(&mut chunk) {
                    Ok(n) if n > 0 => plaintext.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() != ErrorKind::WouldBlock => panic!("{e}"),
                    _ => break,
                }
            }
        }
        plaintext
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len as u64).map(pattern_byte).collect()
    }

    /// Keys for BareAead tests that need no server.
    fn made_up_keys(suite: CipherSuite) -> ServerKeys {
        let key_len = algorithm(suite).unwrap().key_len();
        ServerKeys { suite, key: vec![0x42; key_len], iv: [7; NONCE_LEN], sequence: 0 }
    }

    #[test]
    fn rustls_client_reads_sealed_stream_for_every_suite() {
        for suite in SUITES {
            let Handshaken { mut client, mut keys, .. } = handshake(suite);
            assert_eq!(keys.sequence, 0, "{suite:?}: no tickets, so nothing precedes our records");
            assert_eq!(client.conn.negotiated_cipher_suite().map(|s| s.suite()), Some(suite));
            let mut records = Vec::new();
            for (record_size, len) in [(MAX_PLAINTEXT, 100 << 10), (1000, 100 << 10), (1, 3)] {
                let before = keys.sequence;
                seal_stream(&mut keys, record_size, len, &mut records).unwrap();
                assert_eq!(keys.sequence - before, len.div_ceil(record_size) as u64);
                assert!(receive(&mut client.conn, &records) == pattern(len), "{suite:?} {record_size}");
            }
        }
    }

    #[test]
    fn keys_are_refused_when_no_client_comes() {
        let dir = TempDir::new("wsktls-records-test").unwrap();
        let pki = make_pki(dir.path()).unwrap();
        let server = KeyedServer::start(&pki.chain, &pki.key, SUITES[0]).unwrap();
        assert!(server.keys(Duration::from_millis(50)).is_err());
        // Dropping it now must not hang on the thread still in accept().
    }

    #[test]
    fn open_stream_opens_seal_stream_output_and_fails_on_a_flipped_byte() {
        for suite in SUITES {
            let mut keys = made_up_keys(suite);
            keys.sequence = 5;
            let aead = BareAead::new(suite, &keys.key, keys.iv).unwrap();
            let mut records = Vec::new();
            seal_stream(&mut keys, 1000, 10_500, &mut records).unwrap();
            let mut tampered = records.clone();
            assert_eq!(aead.open_stream(&mut records, 5).unwrap(), 10_500);
            assert_eq!(records[HEADER_LEN..HEADER_LEN + 1000], pattern(1000));
            tampered[3000] ^= 1;
            assert!(aead.open_stream(&mut tampered, 5).is_err());
        }
    }

    #[test]
    fn open_stream_needs_the_right_sequence_and_whole_records() {
        let mut keys = made_up_keys(SUITES[0]);
        let aead = BareAead::new(keys.suite, &keys.key, keys.iv).unwrap();
        let mut records = Vec::new();
        seal_stream(&mut keys, 100, 250, &mut records).unwrap();
        assert!(aead.open_stream(&mut records.clone(), 1).is_err());
        let cut = records.len() - 1;
        assert!(aead.open_stream(&mut records[..cut], 0).is_err());
    }

    #[test]
    fn seal_chunks_is_deterministic_and_changes_the_buffer() {
        for suite in SUITES {
            let keys = made_up_keys(suite);
            let aead = BareAead::new(suite, &keys.key, keys.iv).unwrap();
            let plain = pattern(40_000);
            let (mut a, mut b) = (plain.clone(), plain.clone());
            aead.seal_chunks(&mut a, MAX_PLAINTEXT, 0).unwrap();
            aead.seal_chunks(&mut b, MAX_PLAINTEXT, 0).unwrap();
            assert!(a == b && a != plain);
            // Chunk 0 sealed at sequence 0 and at sequence 1 differ: the nonce moves.
            let mut c = plain.clone();
            aead.seal_chunks(&mut c, MAX_PLAINTEXT, 1).unwrap();
            assert!(c[..MAX_PLAINTEXT] != a[..MAX_PLAINTEXT]);
        }
    }

    #[test]
    fn record_sizes_outside_tls_limits_are_refused() {
        let mut keys = made_up_keys(SUITES[2]);
        let mut out = Vec::new();
        assert!(seal_stream(&mut keys, 0, 10, &mut out).is_err());
        assert!(seal_stream(&mut keys, MAX_PLAINTEXT + 1, 10, &mut out).is_err());
        let aead = BareAead::new(keys.suite, &keys.key, keys.iv).unwrap();
        assert!(aead.seal_chunks(&mut [0; 10], 0, 0).is_err());
    }

    #[test]
    fn wrong_key_length_is_refused() {
        assert!(BareAead::new(SUITES[1], &[0; 16], [0; NONCE_LEN]).is_err());
    }
}
