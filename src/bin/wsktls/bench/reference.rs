//! The libraries people would use instead of wsktls, measured as the bench measures wsktls:
//! a rustls client (std, buffered, written as an application would write it) and the
//! `openssl` command line (s_client for data, s_time for handshakes), against the same
//! server, with the same suite and the same bytes. Each function's doc says where its
//! clock starts and stops; nothing of the measured work happens outside that region but
//! what the doc names.
//!
//! It must never talk to anything but the loopback server it is given, and never report a
//! figure without proof that the bytes arrived: the server's close_notify (which the
//! echo-peer sink sends only after reading everything), the echo compared byte for byte,
//! or s_client's exit, which follows the server's FIN.

use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::peer::{DemoPki, SERVER_NAMES, make_pki_with_key};
use crate::words::Failure;

/// The name every client here asks for (SNI) and checks the certificate against.
const SERVER_NAME: &str = SERVER_NAMES[0];

/// Plaintext per write in the echo: the sample consumer's largest Send (echo.rs's PIECE),
/// so that wsktls's echo and this one hand the library the same pieces.
const ECHO_PIECE: usize = 64 * 1024;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// The echo's data: this many bytes of SplitMix64 pattern, sent over and over. A multiple
/// of ECHO_PIECE, so that no piece wraps.
const PATTERN_LEN: usize = 1 << 20;

/// s_client runs with an empty input to measure its start, handshake and close, which
/// `openssl_send` subtracts; the median of this many.
const BASELINE_RUNS: usize = 3;

const OPENSSL: &str = "openssl";

/// The server key types the handshake comparison covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// The server signs its CertificateVerify with ecdsa_secp256r1_sha256.
    EcdsaP256,
    /// The server signs with rsa_pss_rsae_sha256 (TLS 1.3 allows RSA only with PSS).
    Rsa2048,
}

impl KeyType {
    /// For tables: "ECDSA P-256", "RSA-2048".
    pub fn label(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ECDSA P-256",
            KeyType::Rsa2048 => "RSA-2048",
        }
    }

    /// For file names.
    fn slug(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa2048",
        }
    }
}

/// The bench's PKI for one [`KeyType`] (peer::make_pki_with_key, files named for the key
/// type, so both can share a directory). The CA is ECDSA P-256 whatever the server's key,
/// so that verifying the chain costs a client the same (one ECDSA signature) for both key
/// types, and the only difference between them is the one that matters for a handshake:
/// the server's CertificateVerify signature (and the client's verification of it). ECDSA
/// keys come from ring; the RSA key from `openssl genpkey`, since ring cannot generate RSA
/// keys.
pub fn make_bench_pki(dir: &Path, key_type: KeyType) -> Result<DemoPki, Failure> {
    let key = server_key(key_type)
        .map_err(|e| Failure::plain(format!("make the bench's {} PKI", key_type.label()), e.to_string()))?;
    make_pki_with_key(dir, &format!("bench-{}-", key_type.slug()), key)
}

fn server_key(key_type: KeyType) -> io::Result<KeyPair> {
    match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(io::Error::other),
        KeyType::Rsa2048 => openssl_rsa_key(),
    }
}

/// A fresh RSA-2048 key from `openssl genpkey` (PKCS#8 PEM on its stdout).
fn openssl_rsa_key() -> io::Result<KeyPair> {
    let output = Command::new(OPENSSL)
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running `openssl genpkey`: {e}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "`openssl genpkey` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let pem = String::from_utf8(output.stdout).map_err(io::Error::other)?;
    KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &PKCS_RSA_SHA256).map_err(io::Error::other)
}

/// One rustls client (std, `StreamOwned<ClientConnection, TcpStream>` with rustls's
/// default buffering, TCP_NODELAY) that connects to `addr`, trusting `ca_der`, SNI
/// "localhost", offering only `suite`, then writes `bytes` bytes from a preallocated
/// buffer in writes of `chunk` bytes, sends close_notify and reads until the server's
/// close_notify.
///
/// The clock starts just before the first write (the handshake is completed explicitly
/// before, the client's Finished on the wire) and stops when the server's close_notify has
/// been read: the sink sends it only after reading every byte, so the figure includes the
/// delivery of the last byte and one round trip. A TCP close without close_notify is an
/// error (the delivery would be unproven).
pub fn rustls_send(
    addr: SocketAddr,
    ca_der: &[u8],
    suite: CipherSuite,
    bytes: u64,
    chunk: usize,
) -> Result<Duration, Failure> {
    let what = format!("send {bytes} bytes with rustls ({suite:?}) to {addr}");
    if chunk == 0 {
        return Err(Failure::plain(what, "the write size must be at least one byte"));
    }
    let config = client_config(ca_der, Some(suite))?;
    send(addr, &config, bytes, chunk).map_err(|e| Failure::plain(what, e.to_string()))
}

fn send(addr: SocketAddr, config: &Arc<ClientConfig>, bytes: u64, chunk: usize) -> io::Result<Duration> {
    let (mut sock, mut conn) = connect(addr, config)?;
    handshake(&mut conn, &mut sock)?;
    let payload = pattern(chunk);
    let mut stream = StreamOwned::new(conn, sock);

    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(chunk, |left| left.min(chunk));
        stream.write_all(&payload[..n])?;
        left -= n as u64;
    }
    stream.conn.send_close_notify();
    stream.flush()?;
    read_to_close_notify(&mut stream)?;
    Ok(start.elapsed())
}

/// Reads (and drops) until the server's close_notify. rustls says Ok(0) for it, and
/// UnexpectedEof for a TCP close without one.
fn read_to_close_notify(stream: &mut impl Read) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// As [`rustls_send`], against an echo server: one thread writes 64 KiB pieces (as
/// wsktls's echo does) while another reads and compares every echoed byte with what was
/// sent. The two share the `ClientConnection` behind a mutex (rustls has one state object
/// per connection); the reader only decrypts and never writes to the socket, so the
/// writer, who alone takes bytes out of rustls, can never deadlock against it, and
/// neither holds the lock while it waits on the socket.
///
/// The clock starts just before the first write and stops when the last echoed byte has
/// been decrypted and checked. A wrong, missing or extra byte is an error.
pub fn rustls_echo(
    addr: SocketAddr,
    ca_der: &[u8],
    suite: CipherSuite,
    bytes: u64,
) -> Result<Duration, Failure> {
    let what = format!("echo {bytes} bytes with rustls ({suite:?}) through {addr}");
    let config = client_config(ca_der, Some(suite))?;
    echo(addr, &config, bytes).map_err(|e| Failure::plain(what, e.to_string()))
}

fn echo(addr: SocketAddr, config: &Arc<ClientConfig>, bytes: u64) -> io::Result<Duration> {
    let (mut sock, mut conn) = connect(addr, config)?;
    handshake(&mut conn, &mut sock)?;
    // Every write is drained at once, so rustls's buffers stay a piece deep without a
    // limit; with one, a write could be cut short.
    conn.set_buffer_limit(None);
    let data = pattern(PATTERN_LEN);
    let read_half = sock.try_clone()?;
    let tls = Mutex::new(conn);

    thread::scope(|scope| {
        let receiver = scope.spawn(|| receive(&tls, read_half, &data, bytes));
        let sent = transmit(&tls, &mut sock, &data, bytes);
        if sent.is_err() {
            // Wakes the receiver, which would otherwise wait for bytes that never come.
            let _ = sock.shutdown(Shutdown::Both);
        }
        let received = receiver.join().map_err(|_| io::Error::other("the receiving thread panicked"))?;
        // The receiver's failure first: a wrong byte also breaks the writer's socket, and
        // the wrong byte is the news.
        let end = received?;
        Ok(end.saturating_duration_since(sent?))
    })
}

/// Seals and writes `bytes` of `data` (repeated) in ECHO_PIECE pieces, then close_notify;
/// returns when the first write began.
fn transmit(
    tls: &Mutex<ClientConnection>,
    sock: &mut TcpStream,
    data: &[u8],
    bytes: u64,
) -> io::Result<Instant> {
    let mut wire = Vec::with_capacity(2 * ECHO_PIECE);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let at = (sent % data.len() as u64) as usize;
        let n = usize::try_from(bytes - sent).map_or(ECHO_PIECE, |left| left.min(ECHO_PIECE));
        let n = n.min(data.len() - at);
        seal(&mut lock(tls), Some(&data[at..at + n]), &mut wire)?;
        sock.write_all(&wire)?;
        wire.clear();
        sent += n as u64;
    }
    seal(&mut lock(tls), None, &mut wire)?;
    sock.write_all(&wire)?;
    Ok(start)
}

/// Encrypts `plain` (or, for None, close_notify) and moves every TLS byte rustls has
/// queued into `wire`, so that the socket write happens without the lock.
fn seal(conn: &mut ClientConnection, plain: Option<&[u8]>, wire: &mut Vec<u8>) -> io::Result<()> {
    match plain {
        Some(plain) => conn.writer().write_all(plain)?,
        None => conn.send_close_notify(),
    }
    while conn.wants_write() {
        conn.write_tls(wire)?;
    }
    Ok(())
}

/// Reads the echo and checks it; returns when the last byte came. On any failure it shuts
/// the socket, so that the writer stops too.
fn receive(
    tls: &Mutex<ClientConnection>,
    mut sock: TcpStream,
    data: &[u8],
    bytes: u64,
) -> io::Result<Instant> {
    let received = check_echo(tls, &mut sock, data, bytes);
    if received.is_err() {
        let _ = sock.shutdown(Shutdown::Both);
    }
    received
}

fn check_echo(
    tls: &Mutex<ClientConnection>,
    sock: &mut TcpStream,
    data: &[u8],
    bytes: u64,
) -> io::Result<Instant> {
    let mut echo = Echo { data, expected: bytes, got: 0, done: None };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => return Err(short("the server closed TCP before its close_notify", echo.got, bytes)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if echo.take(&mut lock(tls), &buf[..n])? {
            return echo
                .done
                .ok_or_else(|| short("the server closed before echoing everything", echo.got, bytes));
        }
    }
}

/// The echo so far: what should come back, and how much has.
struct Echo<'a> {
    data: &'a [u8],
    expected: u64,
    got: u64,
    /// When the last expected byte came.
    done: Option<Instant>,
}

impl Echo<'_> {
    /// Feeds TLS bytes to rustls and checks the plaintext out of them; true once the
    /// server's close_notify came.
    fn take(&mut self, conn: &mut ClientConnection, mut tls: &[u8]) -> io::Result<bool> {
        let mut plain = [0u8; 16 * 1024];
        while !tls.is_empty() {
            conn.read_tls(&mut tls)?;
            let state = conn.process_new_packets().map_err(io::Error::other)?;
            loop {
                match conn.reader().read(&mut plain) {
                    Ok(0) => break,
                    Ok(n) => self.check(&plain[..n])?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if state.peer_has_closed() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn check(&mut self, plain: &[u8]) -> io::Result<()> {
        if self.got + plain.len() as u64 > self.expected {
            return Err(io::Error::other(format!(
                "the server echoed more than the {} bytes sent",
                self.expected
            )));
        }
        if let Some(at) = first_difference(self.data, self.got, plain) {
            return Err(io::Error::other(format!("the echo differs from what was sent at byte {at}")));
        }
        self.got += plain.len() as u64;
        if self.got == self.expected {
            self.done = Some(Instant::now());
        }
        Ok(())
    }
}

/// Where `got`, found at stream offset `offset`, first differs from `data` repeated; None
/// if it does not.
fn first_difference(data: &[u8], offset: u64, got: &[u8]) -> Option<u64> {
    let mut at = offset;
    let mut rest = got;
    while !rest.is_empty() {
        let start = (at % data.len() as u64) as usize;
        let n = rest.len().min(data.len() - start);
        if rest[..n] != data[start..start + n] {
            let i = rest[..n].iter().zip(&data[start..]).position(|(a, b)| a != b).unwrap_or(0);
            return Some(at + i as u64);
        }
        rest = &rest[n..];
        at += n as u64;
    }
    None
}

fn short(why: &str, got: u64, expected: u64) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("{why} ({got} of {expected} bytes back)"))
}

/// `n` full TLS 1.3 handshakes with rustls: each a fresh TCP connection and a fresh
/// `ClientConnection`, no resumption (`Resumption::disabled()`), every suite and group
/// ring offers, in rustls's order (so AES-256-GCM and X25519, as `openssl` picks too).
///
/// Each is timed from the start of the TCP connect to the end of the handshake: the
/// server's Finished read and verified (with its certificate chain and name) and the
/// client's Finished written to the socket. Then, untimed, close_notify and a close. The
/// `ClientConfig` is built once, outside the timing, as an application would.
pub fn rustls_handshakes(addr: SocketAddr, ca_der: &[u8], n: usize) -> Result<Vec<Duration>, Failure> {
    let config = client_config(ca_der, None)?;
    (0..n)
        .map(|i| {
            full_handshake(addr, &config).map_err(|e| {
                Failure::plain(format!("rustls handshake {} of {n} with {addr}", i + 1), e.to_string())
            })
        })
        .collect()
}

fn full_handshake(addr: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<Duration> {
    let start = Instant::now();
    let (mut sock, mut conn) = connect(addr, config)?;
    handshake(&mut conn, &mut sock)?;
    let took = start.elapsed();
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    sock.shutdown(Shutdown::Write)?;
    Ok(took)
}

/// A TLS 1.3-only rustls client on ring that trusts `ca_der` alone and never resumes;
/// offering only `suite`, or every ring suite for None.
fn client_config(ca_der: &[u8], suite: Option<CipherSuite>) -> Result<Arc<ClientConfig>, Failure> {
    let failed = |e: &dyn Display| Failure::plain("configure the rustls client", e.to_string());
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider.cipher_suites.retain(|s| s.suite() == suite);
    }
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(|e| failed(&e))?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| failed(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A TCP connection to `addr` with Nagle off (each record leaves as it is written) and a
/// fresh rustls client for it, its ClientHello (and key share) made but not yet sent.
fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<(TcpStream, ClientConnection)> {
    let sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME).map_err(io::Error::other)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    Ok((sock, conn))
}

/// Drives the handshake to its end, the client's Finished included: `complete_io` returns
/// as soon as the server's Finished is read, with ours still queued.
fn handshake(conn: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    Ok(())
}

/// `n` bytes of the SplitMix64 pattern (echo-peer's), made before any clock starts.
fn pattern(n: usize) -> Vec<u8> {
    let mut data = vec![0u8; n];
    echo_peer::source_pattern(0, &mut data);
    data
}

fn lock(tls: &Mutex<ClientConnection>) -> MutexGuard<'_, ClientConnection> {
    tls.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `openssl s_client` sending `bytes` bytes to the sink at `addr` with `suite_name`
/// (e.g. "TLS_AES_128_GCM_SHA256"): TLS 1.3 only, `-CAfile ca_pem`, SNI and name check
/// "localhost", verification enforced (`-verify_return_error`), `-nocommands` (else a read
/// that starts with 'Q' quits, silently short), stdin a regular file of `bytes` bytes made
/// in `dir` (kept there for later calls), so that what is measured is s_client's own loop:
/// read(2) of 8 KiB from stdin, SSL_write of that as one record, pselect(2) before each
/// read and each write.
///
/// The figure is the process's wall time minus the median of BASELINE_RUNS runs of the
/// same command with an empty file (process start, handshake, close), measured in the
/// same call: it approximates the data phase. At stdin's end s_client sends close_notify,
/// shuts its write side and reads until the server's FIN (`-no_ign_eof`); the sink sends
/// its close_notify and FIN only after reading every byte, so the exit comes after the
/// delivery. The residual doubt: s_client waits for that FIN at most 0.5 s (its own
/// limit); a sink slower than that to drain its socket buffers (a few MiB on loopback)
/// would let it exit early. An exit status other than 0 is an error.
pub fn openssl_send(
    addr: SocketAddr,
    ca_pem: &Path,
    suite_name: &str,
    bytes: u64,
    dir: &Path,
) -> Result<Duration, Failure> {
    let what = format!("send {bytes} bytes with openssl s_client ({suite_name}) to {addr}");
    let failed = |e: io::Error| Failure::plain(what.clone(), openssl_advice(e));
    let data = payload_file(dir, bytes).map_err(failed)?;
    let empty = payload_file(dir, 0).map_err(failed)?;
    let mut idle = (0..BASELINE_RUNS)
        .map(|_| s_client(addr, ca_pem, suite_name, &empty))
        .collect::<io::Result<Vec<_>>>()
        .map_err(failed)?;
    let whole = s_client(addr, ca_pem, suite_name, &data).map_err(failed)?;
    idle.sort();
    Ok(whole.saturating_sub(idle[idle.len() / 2]))
}

/// One s_client run with `input` as its stdin; its wall time, from spawn to exit.
fn s_client(addr: SocketAddr, ca_pem: &Path, suite_name: &str, input: &Path) -> io::Result<Duration> {
    let stdin = File::open(input)?;
    let mut command = Command::new(OPENSSL);
    command
        .args(["s_client", "-connect", &addr.to_string(), "-tls1_3", "-ciphersuites", suite_name])
        .arg("-CAfile")
        .arg(ca_pem)
        .args(["-servername", SERVER_NAME, "-verify_hostname", SERVER_NAME, "-verify_return_error"])
        // -quiet implies -ign_eof; -no_ign_eof after it makes stdin's end the end. Without
        // -nocommands, a read that starts with 'Q' quits and one with 'R' or 'K'
        // renegotiates or updates keys: the data would be taken for commands.
        .args(["-verify_quiet", "-quiet", "-no_ign_eof", "-nocommands"])
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let output = command.output()?;
    let took = start.elapsed();
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "s_client exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(took)
}

/// `dir/openssl-send-BYTES.bin`: BYTES bytes of pattern, written once (a later call with
/// the same size reuses it). Written through the page cache, where s_client finds it.
fn payload_file(dir: &Path, bytes: u64) -> io::Result<PathBuf> {
    let path = dir.join(format!("openssl-send-{bytes}.bin"));
    if fs::metadata(&path).is_ok_and(|m| m.len() == bytes) {
        return Ok(path);
    }
    let block = pattern(PATTERN_LEN);
    let partial = dir.join(format!(".openssl-send-{bytes}.partial"));
    let mut file = File::create(&partial)?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(block.len(), |left| left.min(block.len()));
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    drop(file);
    fs::rename(&partial, &path)?;
    Ok(path)
}

/// `openssl s_time -connect addr -new -tls1_3 -time seconds -CAfile ca_pem`: full
/// handshakes, one after another, for `seconds` (s_time stops at the first whole-second
/// tick after that, so it runs between `seconds` and `seconds + 1` s). Returns full
/// handshakes per second of real time.
///
/// Per connection, OpenSSL 3.0's s_time does: a TCP connect (Nagle left on), a new SSL, a
/// full TLS 1.3 handshake (no session is ever offered with -new), in which OpenSSL
/// verifies the chain against `ca_pem` although s_time does not enforce the result (its
/// -verify only sets a depth) and sends no SNI and checks no name; then no data (no -www,
/// so no GET), no close_notify (it marks the SSL shut down quietly), an abortive close
/// (SO_LINGER 0: a RST), and one mark ('*') on stdout, flushed. Its summary counts real
/// time in whole seconds, too coarse for a one- or two-second run, so the rate is taken
/// from the marks instead: the connections between the first and the last mark over the
/// time between them as read here (which leaves out the process's start and its first
/// handshake). The count is checked against the summary's "N connections in T real
/// seconds". Unlike [`rustls_handshakes`], the rate includes each connection's close.
pub fn openssl_handshakes_per_second(addr: SocketAddr, ca_pem: &Path, seconds: u32) -> Result<f64, Failure> {
    let what = format!("time handshakes with openssl s_time against {addr}");
    if seconds == 0 {
        return Err(Failure::plain(what, "s_time needs at least one second"));
    }
    s_time(addr, ca_pem, seconds).map_err(|e| Failure::plain(what, openssl_advice(e)))
}

fn s_time(addr: SocketAddr, ca_pem: &Path, seconds: u32) -> io::Result<f64> {
    let mut child = Command::new(OPENSSL)
        .args(["s_time", "-connect", &addr.to_string(), "-new", "-tls1_3", "-time", &seconds.to_string()])
        .arg("-CAfile")
        .arg(ca_pem)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let watched = watch_s_time(&mut child);
    if watched.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let (marks, errors) = watched?;
    if !status.success() {
        return Err(io::Error::other(format!("s_time exited with {status}: {}", errors.trim())));
    }
    marks.rate()
}

/// Reads s_time's stdout as it comes (stderr meanwhile on another thread, so that neither
/// pipe fills); returns the marks and what s_time said on stderr.
fn watch_s_time(child: &mut Child) -> io::Result<(Marks, String)> {
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("s_time's output was not captured"));
    };
    thread::scope(|scope| {
        let errors = scope.spawn(move || {
            let mut text = String::new();
            stderr.read_to_string(&mut text).map(|_| text)
        });
        let marks = Marks::read(stdout);
        let errors = errors.join().map_err(|_| io::Error::other("the stderr reader panicked"))?;
        Ok((marks?, errors?))
    })
}

/// What s_time printed: a banner line, one mark per connection, then its summary.
#[derive(Debug, Default)]
struct Marks {
    count: u64,
    /// When the first and the last mark were read.
    first: Option<Instant>,
    last: Option<Instant>,
    /// Marks of resumed sessions ('r'): none should appear with -new.
    resumed: u64,
    /// The summary after the marks.
    summary: String,
}

/// Where in s_time's stdout a byte falls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Banner,
    Marks,
    Summary,
}

impl Marks {
    fn read(mut out: impl Read) -> io::Result<Marks> {
        let mut marks = Marks::default();
        let mut part = Part::Banner;
        let mut buf = [0u8; 4096];
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) => return Ok(marks),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            part = marks.take(part, &buf[..n], Instant::now());
        }
    }

    /// Takes `bytes` read at `now`; returns the part the next byte falls in.
    fn take(&mut self, mut part: Part, bytes: &[u8], now: Instant) -> Part {
        for &b in bytes {
            match (part, b) {
                (Part::Banner, b'\n') => part = Part::Marks,
                (Part::Banner, _) => {}
                (Part::Marks, b'\n') => part = Part::Summary,
                (Part::Marks, mark) => {
                    self.count += 1;
                    self.resumed += u64::from(mark == b'r');
                    self.first.get_or_insert(now);
                    self.last = Some(now);
                }
                (Part::Summary, b) => self.summary.push(char::from(b)),
            }
        }
        part
    }

    /// Full handshakes per second between the first mark and the last.
    fn rate(&self) -> io::Result<f64> {
        let (reported, _) = parse_summary(&self.summary)?;
        if reported != self.count {
            return Err(io::Error::other(format!(
                "s_time's summary says {reported} connections but it marked {}",
                self.count
            )));
        }
        if self.resumed > 0 {
            return Err(io::Error::other(format!("s_time resumed {} sessions", self.resumed)));
        }
        let span = match (self.first, self.last) {
            (Some(first), Some(last)) if self.count >= 2 => last.duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        if span <= 0.0 {
            return Err(io::Error::other(format!("s_time made {} connections, too few to time", self.count)));
        }
        Ok((self.count - 1) as f64 / span)
    }
}

/// "N connections in T real seconds, ..." from s_time's summary: (N, T).
fn parse_summary(summary: &str) -> io::Result<(u64, u64)> {
    summary
        .lines()
        .find_map(|line| {
            let words = line.split_whitespace().collect::<Vec<_>>();
            match words.as_slice() {
                [n, "connections", "in", t, "real", ..] => Some((n.parse().ok()?, t.parse().ok()?)),
                _ => None,
            }
        })
        .ok_or_else(|| io::Error::other(format!("s_time printed no summary: {:?}", summary.trim())))
}

/// Says what to do when the `openssl` command itself is missing.
fn openssl_advice(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("`openssl` is not installed: the reference needs it ({e})"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use echo_peer::{Config, Mode, Peer};

    use crate::peer::TempDir;

    const MIB: u64 = 1 << 20;
    const SUITE: CipherSuite = CipherSuite::TLS13_AES_128_GCM_SHA256;

    /// A PKI of `key_type` and an in-process echo-peer serving it in `mode`, AES-128 only.
    fn server(key_type: KeyType, mode: Mode) -> (TempDir, DemoPki, Peer) {
        let dir = TempDir::new("wsktls-reference-test").unwrap();
        let pki = make_bench_pki(dir.path(), key_type).unwrap();
        let config = Config { mode, suites: Some(vec![SUITE]), ..Config::new(&pki.chain, &pki.key) };
        let peer = Peer::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).unwrap();
        (dir, pki, peer)
    }

    /// Whether the `openssl` tests can run; fails instead of skipping when
    /// WSKTLS_REQUIRE_PEERS=1.
    fn have_openssl() -> bool {
        let found = Command::new(OPENSSL).arg("version").output().is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("WSKTLS_REQUIRE_PEERS").as_deref() != Ok("1"),
                "`openssl` is not installed"
            );
            eprintln!("skipped: `openssl` is not installed");
        }
        found
    }

    #[test]
    fn rustls_send_returns_only_after_the_sink_has_every_byte() {
        for key_type in [KeyType::EcdsaP256, KeyType::Rsa2048] {
            if key_type == KeyType::Rsa2048 && !have_openssl() {
                continue;
            }
            let (_dir, pki, peer) = server(key_type, Mode::Sink);
            let took = rustls_send(peer.addr(), &pki.ca_der, SUITE, MIB, 16 * 1024).unwrap();
            // Read at once: the server counted before its close_notify, which we waited for.
            assert_eq!(peer.stats().bytes_received(), MIB, "{key_type:?}");
            assert!(took > Duration::ZERO);
        }
    }

    #[test]
    fn rustls_send_sends_a_last_short_write() {
        let (_dir, pki, peer) = server(KeyType::EcdsaP256, Mode::Sink);
        rustls_send(peer.addr(), &pki.ca_der, SUITE, 100_001, 4096).unwrap();
        assert_eq!(peer.stats().bytes_received(), 100_001);
    }

    #[test]
    fn rustls_echo_round_trips_every_byte() {
        let (_dir, pki, peer) = server(KeyType::EcdsaP256, Mode::Echo);
        let bytes = MIB + 12_345;
        rustls_echo(peer.addr(), &pki.ca_der, SUITE, bytes).unwrap();
        assert_eq!(peer.stats().bytes_sent(), bytes);
    }

    #[test]
    fn rustls_echo_fails_when_the_server_does_not_echo() {
        let (_dir, pki, peer) = server(KeyType::EcdsaP256, Mode::Sink);
        assert!(rustls_echo(peer.addr(), &pki.ca_der, SUITE, 100_000).is_err());
    }

    #[test]
    fn rustls_handshakes_are_full_and_one_per_connection() {
        for key_type in [KeyType::EcdsaP256, KeyType::Rsa2048] {
            if key_type == KeyType::Rsa2048 && !have_openssl() {
                continue;
            }
            let (_dir, pki, peer) = server(key_type, Mode::Echo);
            let times = rustls_handshakes(peer.addr(), &pki.ca_der, 5).unwrap();
            assert_eq!(times.len(), 5);
            assert!(times.iter().all(|t| *t > Duration::ZERO));
            assert!(peer.stats().wait_finished(5, Duration::from_secs(5)));
            assert_eq!(peer.stats().connections_accepted(), 5, "{key_type:?}");
            assert_eq!(peer.stats().handshakes_completed(), 5, "{key_type:?}");
        }
    }

    #[test]
    fn rustls_refuses_a_server_its_ca_did_not_sign() {
        let (_dir, _pki, peer) = server(KeyType::EcdsaP256, Mode::Echo);
        let other_dir = TempDir::new("wsktls-reference-test").unwrap();
        let other = make_bench_pki(other_dir.path(), KeyType::EcdsaP256).unwrap();
        assert!(rustls_handshakes(peer.addr(), &other.ca_der, 1).is_err());
    }

    #[test]
    fn openssl_send_returns_only_after_the_sink_has_every_byte() {
        if !have_openssl() {
            return;
        }
        // s_client reads 8 KiB at a time; a read that starts with 'Q' would make it quit
        // early unless -nocommands, and this payload has one.
        let commands =
            pattern(MIB as usize).chunks(8192).filter(|c| matches!(c[0], b'Q' | b'R' | b'K' | b'k')).count();
        assert!(commands > 0);
        let (dir, pki, peer) = server(KeyType::EcdsaP256, Mode::Sink);
        openssl_send(peer.addr(), &pki.ca_pem, "TLS_AES_128_GCM_SHA256", MIB, dir.path()).unwrap();
        // The baseline runs sent nothing; every byte counted is the measured run's.
        assert_eq!(peer.stats().bytes_received(), MIB);
        assert_eq!(peer.stats().connections_accepted(), BASELINE_RUNS as u64 + 1);
    }

    #[test]
    fn openssl_send_fails_when_verification_fails() {
        if !have_openssl() {
            return;
        }
        let (dir, _pki, peer) = server(KeyType::EcdsaP256, Mode::Sink);
        let other = make_bench_pki(dir.path(), KeyType::Rsa2048).unwrap();
        assert!(
            openssl_send(peer.addr(), &other.ca_pem, "TLS_AES_128_GCM_SHA256", 1000, dir.path()).is_err()
        );
    }

    #[test]
    fn openssl_s_time_makes_full_handshakes() {
        if !have_openssl() {
            return;
        }
        let (_dir, pki, peer) = server(KeyType::EcdsaP256, Mode::Echo);
        let rate = openssl_handshakes_per_second(peer.addr(), &pki.ca_pem, 1).unwrap();
        assert!(rate > 0.0);
        assert!(peer.stats().handshakes_completed() > 1);
    }

    #[test]
    fn s_time_marks_and_summary_make_a_rate() {
        let t0 = Instant::now();
        let mut marks = Marks::default();
        let part = marks.take(Part::Banner, b"Collecting connection statistics for 1 seconds\n**", t0);
        let part = marks.take(part, b"**", t0 + Duration::from_millis(300));
        marks.take(
            part,
            b"\n\n4 connections in 0.01s; 400.00 connections/user sec, bytes read 0\n\
              4 connections in 2 real seconds, 0 bytes read per connection\n",
            t0 + Duration::from_millis(400),
        );
        assert_eq!(marks.count, 4);
        assert!((marks.rate().unwrap() - 10.0).abs() < 1e-9, "3 connections in 0.3 s");
        marks.count = 5;
        assert!(marks.rate().is_err(), "the marks must agree with the summary");
    }

    #[test]
    fn echo_check_finds_the_first_wrong_byte_across_the_pattern_wrap() {
        let data = pattern(64);
        let mut got = [data[60..].to_vec(), data[..10].to_vec()].concat();
        assert_eq!(first_difference(&data, 60 + 64, &got), None);
        got[6] ^= 1;
        assert_eq!(first_difference(&data, 60, &got), Some(66));
    }
}
