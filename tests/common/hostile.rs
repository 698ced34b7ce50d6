//! A TLS 1.3 server that misbehaves on purpose, on a loopback address.
//!
//! [`HostilePeer`] completes a real handshake with the driver (rustls's server, the test
//! PKI's ECDSA identity, no session tickets), then takes its traffic keys out of rustls
//! (`dangerous_into_kernel_connection`, which also derives KeyUpdate keys) and from there on seals and opens records itself with
//! ring: RFC 8446 §5.2–5.3 written out again (nonce = IV XOR sequence number, AAD = the
//! record header, inner plaintext = content || type || zeros), so a test can write any
//! record the protocol forbids: any inner type, any padding, a record past the size
//! limits, raw bytes, half a record. It also reads and opens what the driver sends, to see
//! the alert the driver answered with.
//!
//! [`HandshakePeer`] misbehaves earlier: it reads the ClientHello and then runs a script on
//! the raw socket (an endless handshake, a flood of alerts, ...).
//!
//! Neither ever listens anywhere but 127.0.0.1. Every blocking read has a timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{CipherSuite, ConnectionTrafficSecrets, ServerConfig};

use super::peers::test_pki;

/// Record content types (RFC 8446 §5.1).
pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// Handshake message types (RFC 8446 §4; HelloRequest is TLS 1.2's).
pub const HELLO_REQUEST: u8 = 0;
pub const SERVER_HELLO: u8 = 2;
pub const NEW_SESSION_TICKET: u8 = 4;
pub const ENCRYPTED_EXTENSIONS: u8 = 8;
pub const CERTIFICATE_REQUEST: u8 = 13;
pub const KEY_UPDATE: u8 = 24;

/// Alert levels.
pub const WARNING: u8 = 1;
pub const FATAL: u8 = 2;

/// The largest plaintext of a record (2^14) and the largest ciphertext (2^14 + 256).
pub const MAX_FRAGMENT: usize = 1 << 14;
pub const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;

/// legacy_record_version of every record after the ClientHello.
pub const TLS12: [u8; 2] = [3, 3];

const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;

/// How long the peer waits for the driver during the handshake before giving up.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// How a [`HostilePeer`] is set up.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The one TLS 1.3 suite the server accepts; `None` for all of ring's.
    pub suite: Option<CipherSuite>,
    /// SO_RCVBUF of the accepted socket (set on the listener, so the window is small from
    /// the first segment): with a reader that reads slowly, the driver's sends back up.
    pub receive_buffer: Option<usize>,
}

/// A server that completes one real handshake and then hands its side to the test.
pub struct HostilePeer {
    addr: SocketAddr,
    sessions: Receiver<io::Result<Session>>,
}

impl HostilePeer {
    pub fn start() -> HostilePeer {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> HostilePeer {
        let config = Arc::new(server_config(options.suite));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        if let Some(bytes) = options.receive_buffer {
            ntsim::set_receive_buffer(&listener, bytes).expect("SO_RCVBUF on the listener");
        }
        let addr = listener.local_addr().expect("listener address");
        let (tx, sessions) = mpsc::channel();
        thread::spawn(move || {
            let session = listener.accept().and_then(|(stream, _)| Session::handshake(stream, config));
            let _ = tx.send(session);
        });
        HostilePeer { addr, sessions }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's side of the connection, once its handshake is complete.
    pub fn session(&self, wait: Duration) -> Session {
        match self.sessions.recv_timeout(wait) {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => panic!("the hostile peer's handshake failed: {e}"),
            Err(e) => panic!("no handshake with the hostile peer within {wait:?}: {e}"),
        }
    }
}

/// A record the driver sent, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub content_type: u8,
    pub content: Vec<u8>,
}

/// One direction's record protection: AEAD key, IV, next sequence number.
struct Protection {
    key: LessSafeKey,
    iv: [u8; 12],
    sequence: u64,
}

impl Protection {
    fn new(secrets: ConnectionTrafficSecrets, sequence: u64) -> io::Result<Protection> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(invalid("a suite the hostile peer cannot seal")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| invalid("AEAD key"))?;
        let iv = iv.as_ref().try_into().map_err(|_| invalid("IV"))?;
        Ok(Protection { key: LessSafeKey::new(key), iv, sequence })
    }

    /// RFC 8446 §5.3: the IV XOR the sequence number, left-padded to the IV's length.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.sequence.to_be_bytes()) {
            *n ^= s;
        }
        self.sequence += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// The server's side of an established connection: the socket and both directions' keys.
pub struct Session {
    stream: TcpStream,
    suite: CipherSuite,
    tx: Protection,
    rx: Protection,
    /// Derives the next traffic keys for KeyUpdates, ours and the driver's.
    keys: KernelConnection<ServerConnectionData>,
    /// Bytes from the driver not yet opened.
    unread: Vec<u8>,
}

impl Session {
    /// Runs rustls's (unbuffered) server over `stream` until the handshake is complete,
    /// feeding it one record at a time so that nothing the driver sends afterwards is
    /// taken by rustls, then takes the keys out of it.
    fn handshake(mut stream: TcpStream, config: Arc<ServerConfig>) -> io::Result<Session> {
        stream.set_nodelay(true)?;
        let deadline = Instant::now() + HANDSHAKE_WAIT;
        let mut conn = UnbufferedServerConnection::new(config).map_err(other)?;
        // Records for rustls, and what the socket gave beyond the last whole record.
        let (mut incoming, mut unread) = (Vec::new(), Vec::new());
        let mut outgoing = vec![0u8; 64 * 1024];
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming);
            let (mut read_more, mut writable) = (false, false);
            match state.map_err(other)? {
                ConnectionState::EncodeTlsData(mut data) => {
                    let n = data.encode(&mut outgoing).map_err(other)?;
                    stream.write_all(&outgoing[..n])?;
                }
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::BlockedHandshake => read_more = true,
                ConnectionState::WriteTraffic(_) => writable = true,
                _ => return Err(invalid("the driver's handshake went somewhere unexpected")),
            }
            incoming.drain(..discard);
            // The server may write from its own Finished on; the handshake ends with the
            // driver's Finished.
            if writable && !conn.is_handshaking() {
                break;
            }
            if read_more || writable {
                let record = read_record_bytes(&mut stream, &mut unread, deadline)?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the driver left mid-handshake")
                })?;
                incoming.extend_from_slice(&record);
            }
        }
        if !incoming.is_empty() {
            return Err(invalid("bytes left over after the handshake"));
        }
        let suite = conn.negotiated_cipher_suite().ok_or_else(|| invalid("no suite"))?.suite();
        let (secrets, keys) = conn.dangerous_into_kernel_connection().map_err(other)?;
        let (tx_sequence, tx) = secrets.tx;
        let (rx_sequence, rx) = secrets.rx;
        Ok(Session {
            stream,
            suite,
            tx: Protection::new(tx, tx_sequence)?,
            rx: Protection::new(rx, rx_sequence)?,
            keys,
            unread,
        })
    }

    /// The server's side of `stream`, a connection from the driver, once a real
    /// handshake over it is complete: what [`HostilePeer`] does with the one connection
    /// it accepts, for a test that accepts its own.
    pub fn accept(stream: TcpStream, suite: Option<CipherSuite>) -> io::Result<Session> {
        Session::handshake(stream, Arc::new(server_config(suite)))
    }

    /// The suite negotiated.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The socket, for what the helpers here do not cover.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The sequence number the next sealed record will carry.
    pub fn tx_sequence(&self) -> u64 {
        self.tx.sequence
    }

    /// Seals `content` as a record of inner type `inner_type` followed by `padding` zeros,
    /// under a standard header (application_data, TLS 1.2, the true length). Neither
    /// length is checked: this is how a test makes a record too large.
    pub fn seal(&mut self, inner_type: u8, content: &[u8], padding: usize) -> Vec<u8> {
        self.seal_with_header(APPLICATION_DATA, TLS12, inner_type, content, padding)
    }

    /// As [`Session::seal`], with this outer type and legacy version in the header (and
    /// so in the AAD). The ciphertext must fit the header's 16-bit length.
    pub fn seal_with_header(
        &mut self,
        outer_type: u8,
        version: [u8; 2],
        inner_type: u8,
        content: &[u8],
        padding: usize,
    ) -> Vec<u8> {
        let inner_len = content.len() + 1 + padding;
        let length = u16::try_from(inner_len + TAG_LEN).expect("the ciphertext fits a record header");
        let mut record = Vec::with_capacity(HEADER_LEN + inner_len + TAG_LEN);
        record.push(outer_type);
        record.extend_from_slice(&version);
        record.extend_from_slice(&length.to_be_bytes());
        record.extend_from_slice(content);
        record.push(inner_type);
        record.resize(HEADER_LEN + inner_len, 0);
        let nonce = self.tx.next_nonce();
        let (header, inner) = record.split_at_mut(HEADER_LEN);
        let tag = self.tx.key.seal_in_place_separate_tag(nonce, Aad::from(&*header), inner).expect("seal");
        record.extend_from_slice(tag.as_ref());
        record
    }

    /// Writes `bytes` as they are: whole records, pieces of records, anything.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Seals and sends one record (see [`Session::seal`]).
    pub fn send_sealed(&mut self, inner_type: u8, content: &[u8], padding: usize) -> io::Result<()> {
        let record = self.seal(inner_type, content, padding);
        self.send_raw(&record)
    }

    /// One application_data record carrying `data`.
    pub fn send_data(&mut self, data: &[u8]) -> io::Result<()> {
        self.send_sealed(APPLICATION_DATA, data, 0)
    }

    /// One alert record.
    pub fn send_alert(&mut self, level: u8, description: rustls::AlertDescription) -> io::Result<()> {
        self.send_sealed(ALERT, &[level, u8::from(description)], 0)
    }

    /// One handshake record holding one message of `kind` with `body`.
    pub fn send_handshake(&mut self, kind: u8, body: &[u8]) -> io::Result<()> {
        self.send_sealed(HANDSHAKE, &handshake_message(kind, body), 0)
    }

    /// A valid KeyUpdate (RFC 8446 §4.6.3), sealed under the current key; every record
    /// after it is sealed under the next one. `update_requested` asks the driver to
    /// update its own key too ([`Session::read_record`] follows it when it does).
    pub fn send_key_update(&mut self, update_requested: bool) -> io::Result<()> {
        self.send_handshake(KEY_UPDATE, &[update_requested as u8])?;
        self.switch_tx_key()
    }

    /// Moves our sending side to the next traffic key, as after sending a KeyUpdate (for
    /// a test that seals its KeyUpdates itself, [`Session::seal`] then this).
    pub fn switch_tx_key(&mut self) -> io::Result<()> {
        let (sequence, secrets) = self.keys.update_tx_secret().map_err(other)?;
        self.tx = Protection::new(secrets, sequence)?;
        Ok(())
    }

    /// The next record the driver sends, opened; `None` when the driver closed the
    /// connection (FIN or reset) first. Fails on a timeout or a record that does not open.
    /// A KeyUpdate from the driver is returned like any record, and the records after it
    /// are opened under the driver's next key.
    pub fn read_record(&mut self, wait: Duration) -> io::Result<Option<Record>> {
        let deadline = Instant::now() + wait;
        let Some(mut record) = read_record_bytes(&mut self.stream, &mut self.unread, deadline)? else {
            return Ok(None);
        };
        if record[0] != APPLICATION_DATA {
            return Err(invalid("the driver sent an unprotected record after the handshake"));
        }
        let nonce = self.rx.next_nonce();
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let inner = self
            .rx
            .key
            .open_in_place(nonce, Aad::from(&*header), body)
            .map_err(|_| invalid("a record from the driver does not open"))?;
        let type_at = inner.iter().rposition(|&b| b != 0).ok_or_else(|| invalid("no content type"))?;
        let record = Record { content_type: inner[type_at], content: inner[..type_at].to_vec() };
        if record.content_type == HANDSHAKE && record.content.first() == Some(&KEY_UPDATE) {
            let (sequence, secrets) = self.keys.update_rx_secret().map_err(other)?;
            self.rx = Protection::new(secrets, sequence)?;
        }
        Ok(Some(record))
    }

    /// The alert the driver sends next, as (level, description), skipping application
    /// data; `None` if the driver closed the connection without one.
    pub fn read_alert(&mut self, wait: Duration) -> io::Result<Option<(u8, u8)>> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_record(left)? {
                None => return Ok(None),
                Some(r) if r.content_type == ALERT && r.content.len() == 2 => {
                    return Ok(Some((r.content[0], r.content[1])));
                }
                Some(r) if r.content_type == APPLICATION_DATA => continue,
                Some(r) => return Err(invalid(&format!("the driver sent {r:?}"))),
            }
        }
    }

    /// Reads and opens records until `len` bytes of application data have come, or fails.
    /// KeyUpdates from the driver on the way are followed.
    pub fn read_data(&mut self, len: usize, wait: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_record(left)? {
                Some(r) if r.content_type == APPLICATION_DATA => data.extend_from_slice(&r.content),
                Some(r) if r.content_type == HANDSHAKE && r.content.first() == Some(&KEY_UPDATE) => {}
                Some(r) => return Err(invalid(&format!("expected data, the driver sent {r:?}"))),
                None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the driver closed")),
            }
        }
        Ok(data)
    }
}

/// A server that reads the driver's ClientHello and then runs a script on the raw socket
/// instead of answering it. The script's result comes back through [`HandshakePeer::result`].
pub struct HandshakePeer<T> {
    addr: SocketAddr,
    result: Receiver<io::Result<T>>,
}

/// What a [`HandshakePeer`]'s script gets: the socket, and the ClientHello record read
/// from it.
pub struct RawPeer {
    pub stream: TcpStream,
    pub client_hello: Vec<u8>,
}

impl RawPeer {
    /// A plaintext record of `content_type` around `fragment` (TLS 1.2 legacy version).
    pub fn plaintext(content_type: u8, fragment: &[u8]) -> Vec<u8> {
        plaintext_record(content_type, fragment)
    }

    /// Everything the driver sends until it closes the connection (FIN or reset);
    /// `None` if it has not closed within `wait`.
    pub fn read_until_closed(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return None;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if timed_out(&e) => return None,
                Err(_) => return Some(got),
            }
        }
    }
}

impl<T: Send + 'static> HandshakePeer<T> {
    pub fn start(script: impl FnOnce(&mut RawPeer) -> io::Result<T> + Send + 'static) -> HandshakePeer<T> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let addr = listener.local_addr().expect("listener address");
        let (tx, result) = mpsc::channel();
        thread::spawn(move || {
            let run = || -> io::Result<T> {
                let (stream, _) = listener.accept()?;
                stream.set_nodelay(true)?;
                let mut stream = stream;
                let deadline = Instant::now() + HANDSHAKE_WAIT;
                let client_hello = read_record_bytes(&mut stream, &mut Vec::new(), deadline)?
                    .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no ClientHello"))?;
                if client_hello[0] != HANDSHAKE || client_hello.get(HEADER_LEN) != Some(&1) {
                    return Err(invalid("the driver's first record is not a ClientHello"));
                }
                script(&mut RawPeer { stream, client_hello })
            };
            let _ = tx.send(run());
        });
        HandshakePeer { addr, result }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the script returned.
    pub fn result(&self, wait: Duration) -> T {
        match self.result.recv_timeout(wait) {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => panic!("the handshake peer's script failed: {e}"),
            Err(e) => panic!("the handshake peer's script did not end within {wait:?}: {e}"),
        }
    }
}

/// A handshake message: type, 24-bit length, body.
pub fn handshake_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("length").to_be_bytes();
    assert_eq!(len[0], 0, "a handshake body is shorter than 2^24");
    let mut message = vec![kind, len[1], len[2], len[3]];
    message.extend_from_slice(body);
    message
}

/// A plaintext record: type, TLS 1.2, 16-bit length, fragment.
pub fn plaintext_record(content_type: u8, fragment: &[u8]) -> Vec<u8> {
    let len = u16::try_from(fragment.len()).expect("the fragment fits a record header");
    let mut record = vec![content_type, TLS12[0], TLS12[1]];
    record.extend_from_slice(&len.to_be_bytes());
    record.extend_from_slice(fragment);
    record
}

/// The next whole record from `stream` (header and body, as sent), using and refilling
/// `unread`; `None` at the end of the stream (or a reset) between records.
fn read_record_bytes(
    stream: &mut TcpStream,
    unread: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if unread.len() >= HEADER_LEN {
            let total = HEADER_LEN + u16::from_be_bytes([unread[3], unread[4]]) as usize;
            if unread.len() >= total {
                return Ok(Some(unread.drain(..total).collect()));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no whole record from the driver in time"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return eof(unread),
            Ok(n) => unread.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if timed_out(&e) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no whole record from the driver in time",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return eof(unread),
            Err(e) => return Err(e),
        }
    }
}

fn eof(unread: &[u8]) -> io::Result<Option<Vec<u8>>> {
    if unread.is_empty() {
        Ok(None)
    } else {
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the driver closed mid-record"))
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// A TLS 1.3-only rustls server on ring with the test PKI's ECDSA identity, no tickets
/// (nothing of rustls's follows the handshake), and its secrets extractable.
fn server_config(suite: Option<CipherSuite>) -> ServerConfig {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider.cipher_suites.retain(|s| s.suite() == suite);
        assert!(!provider.cipher_suites.is_empty(), "ring has no {suite:?}");
    }
    let identity = &test_pki().server;
    let chain = CertificateDer::pem_file_iter(&identity.chain)
        .expect("the server chain")
        .collect::<Result<Vec<_>, _>>()
        .expect("the server chain parses");
    let key = PrivateKeyDer::from_pem_file(&identity.key).expect("the server key");
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the server identity");
    config.send_tls13_tickets = 0;
    config.enable_secret_extraction = true;
    config
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}
