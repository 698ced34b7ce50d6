//! The TLS 1.3 peers the channel tests rely on, proved with a plain rustls std client that
//! trusts the test CA: the in-process echo peer, OpenSSL's s_server (-rev, and KeyUpdates on
//! command), socat, and gnutls-serv. Each test skips when its tool is missing, unless
//! WSKTLS_REQUIRE_PEERS=1.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::peers::{
    Openssl, OpensslMode, PeerProcess, Skip, Suite, gnutls_server, openssl_server, socat_server, test_pki,
};
use echo_peer::{Config, Peer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

type Client = StreamOwned<ClientConnection, TcpStream>;

/// The peer, or `None` after saying why the test is skipped.
fn started(peer: Result<PeerProcess, Skip>) -> Option<PeerProcess> {
    peer.inspect_err(|skip| eprintln!("{skip}")).ok()
}

/// A rustls client trusting only the test CA, TLS 1.3 only, handshake completed.
fn connect(addr: SocketAddr) -> Client {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&test_pki().ca.cert).expect("ca.pem")).expect("the test CA");
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let socket = TcpStream::connect(addr).expect("connect to the peer");
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut client = StreamOwned::new(conn, socket);
    while client.conn.is_handshaking() {
        client.conn.complete_io(&mut client.sock).expect("TLS 1.3 handshake with the peer");
    }
    client
}

fn negotiated(client: &Client) -> u16 {
    client.conn.negotiated_cipher_suite().expect("a suite").suite().into()
}

/// Reads exactly `len` bytes.
fn read_n(client: &mut Client, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    client.read_exact(&mut got).expect("read from the peer");
    got
}

/// Sends close_notify and expects the peer's close_notify back with no data before it.
fn expect_close_notify(client: &mut Client) {
    client.conn.send_close_notify();
    client.flush().unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("the peer answers close_notify with close_notify");
    assert!(rest.is_empty());
}

/// `count` lines of `len` printable bytes and a `\n`: no `*` (gnutls-serv's commands start
/// with it), no NUL, none of s_server's stdin command letters.
fn lines(count: usize, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abdefghijlmnopstuvwxyz0123456789 .,-+=/ABCDEFGHIJLMNOTUVWXYZ";
    let mut out = Vec::with_capacity(count * (len + 1));
    for line in 0..count {
        out.extend((0..len).map(|i| ALPHABET[(line * 7 + i * 13 + i / 5) % ALPHABET.len()]));
        out.push(b'\n');
    }
    out
}

/// Each line of `text` reversed, as s_server -rev answers it.
fn reversed_lines(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend(line[..line.len() - 1].iter().rev());
        out.push(b'\n');
    }
    out
}

/// Writes `data` on one thread while reading `expect_back` on this one, so neither side's
/// buffering can deadlock the two; returns the client and the time it took. Whoever takes
/// records out of rustls holds the socket's write lock before letting go of rustls, so
/// records (a KeyUpdate answered by the reader, data sealed by the writer) reach the wire
/// in the order they were sealed.
fn round_trip(client: Client, data: &[u8], expect_back: &[u8]) -> (Client, Duration) {
    struct Duplex {
        conn: Mutex<ClientConnection>,
        wire: Mutex<TcpStream>,
    }
    impl Duplex {
        fn flush(&self, mut conn: MutexGuard<'_, ClientConnection>) {
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            let mut wire = self.wire.lock().unwrap();
            drop(conn);
            wire.write_all(&out).expect("write to the peer");
        }
    }

    let started = Instant::now();
    let StreamOwned { conn, sock } = client;
    let mut reader = sock.try_clone().unwrap();
    let duplex = Duplex { conn: Mutex::new(conn), wire: Mutex::new(sock) };
    let mut got = Vec::with_capacity(expect_back.len());
    thread::scope(|scope| {
        scope.spawn(|| {
            for piece in data.chunks(16 * 1024) {
                let mut conn = duplex.conn.lock().unwrap();
                conn.writer().write_all(piece).unwrap();
                duplex.flush(conn);
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < expect_back.len() {
            let n = reader.read(&mut buf).expect("read from the peer");
            assert!(n > 0, "the peer closed after {} of {} bytes", got.len(), expect_back.len());
            let mut conn = duplex.conn.lock().unwrap();
            let mut fed = &buf[..n];
            while !fed.is_empty() {
                conn.read_tls(&mut fed).unwrap();
                let state = conn.process_new_packets().expect("records from the peer");
                let at = got.len();
                got.resize(at + state.plaintext_bytes_to_read(), 0);
                conn.reader().read_exact(&mut got[at..]).unwrap();
            }
            duplex.flush(conn);
        }
    });
    assert!(got == expect_back, "the peer's answer differs from what was expected");
    let took = started.elapsed();
    let client = StreamOwned::new(duplex.conn.into_inner().unwrap(), duplex.wire.into_inner().unwrap());
    (client, took)
}

#[test]
fn echo_peer_in_process_echoes_across_key_updates() {
    let pki = test_pki();
    let config =
        Config { key_update_every: Some(64 * 1024), ..Config::new(&pki.server.chain, &pki.server.key) };
    let peer = Peer::start("127.0.0.1:0".parse().unwrap(), config).expect("start the echo peer");
    let c = connect(peer.addr());
    let sent = lines(1024, 4000);
    let (mut c, took) = round_trip(c, &sent, &sent);
    eprintln!("echo peer: {} bytes echoed in {took:?}", sent.len());
    expect_close_notify(&mut c);
    let stats = peer.stats();
    assert!(stats.wait_finished(1, IO_TIMEOUT));
    assert_eq!(stats.key_updates_initiated(), sent.len() as u64 / (64 * 1024));
    assert_eq!(stats.last_ending(), Some(echo_peer::Ending::CloseNotify));
}

#[test]
fn openssl_rev_reverses_each_line() {
    let Some(peer) = started(openssl_server(test_pki(), Openssl::default())) else { return };
    let mut c = connect(peer.addr());
    for (line, back) in [
        (&b"hello\n"[..], &b"olleh\n"[..]),
        (b"abc\r\n", b"cba\n"),
        (b"\n", b"\n"),
        (b"a\rb\x00c\n", b"c\x00b\ra\n"),
    ] {
        c.write_all(line).unwrap();
        assert_eq!(read_n(&mut c, back.len()), back, "{line:?}");
    }
    // Bytes without a newline wait for one.
    c.write_all(b"wait for ").unwrap();
    c.flush().unwrap();
    c.write_all(b"it\n").unwrap();
    assert_eq!(read_n(&mut c, 12), b"ti rof tiaw\n");
    expect_close_notify(&mut c);
}

#[test]
fn openssl_rev_answers_lines_up_to_16383_bytes_whole() {
    let Some(peer) = started(openssl_server(test_pki(), Openssl::default())) else { return };
    let mut c = connect(peer.addr());
    let longest = lines(1, 16383);
    c.write_all(&longest).unwrap();
    assert_eq!(read_n(&mut c, longest.len()), reversed_lines(&longest));

    // One byte more and s_server answers the first 16384 bytes, then the bare "\n".
    let over = lines(1, 16384);
    c.write_all(&over).unwrap();
    let mut want = over[..16384].to_vec();
    want.reverse();
    want.extend(b"\n\n");
    assert_eq!(read_n(&mut c, want.len()), want);

    // "CLOSE" ends the connection with close_notify.
    c.write_all(b"CLOSE\n").unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("close_notify after CLOSE");
    assert!(rest.is_empty());
}

#[test]
fn openssl_rev_bulk_with_each_suite() {
    for suite in Suite::ALL {
        let args = Openssl { suite: Some(suite), ..Openssl::default() };
        let Some(peer) = started(openssl_server(test_pki(), args)) else { return };
        let c = connect(peer.addr());
        assert_eq!(negotiated(&c), suite.id());
        let sent = lines(1024, 4000);
        let (mut c, took) = round_trip(c, &sent, &reversed_lines(&sent));
        eprintln!("openssl -rev {suite:?}: {} bytes in {took:?}", sent.len());
        expect_close_notify(&mut c);
    }
}

#[test]
fn openssl_rev_after_a_client_key_update() {
    let Some(peer) = started(openssl_server(test_pki(), Openssl::default())) else { return };
    let mut c = connect(peer.addr());
    c.write_all(b"before\n").unwrap();
    assert_eq!(read_n(&mut c, 7), b"erofeb\n");
    let started = Instant::now();
    c.conn.refresh_traffic_keys().expect("a KeyUpdate from the client");
    c.write_all(b"after\n").unwrap();
    assert_eq!(read_n(&mut c, 6), b"retfa\n");
    eprintln!("openssl -rev: a line after the client's KeyUpdate came back in {:?}", started.elapsed());
    expect_close_notify(&mut c);
}

#[test]
fn openssl_stdio_sends_key_updates_on_command() {
    let args = Openssl { mode: OpensslMode::Stdio, extra: &["-msg"], ..Openssl::default() };
    let Some(mut peer) = started(openssl_server(test_pki(), args)) else { return };
    let mut c = connect(peer.addr());
    c.write_all(b"hello server\n").unwrap();
    assert!(
        peer.wait_for_output(b"hello server\n", IO_TIMEOUT),
        "{}",
        String::from_utf8_lossy(&peer.output())
    );

    peer.request_key_update(true).unwrap();
    peer.send(b"under new keys\n").unwrap();
    assert_eq!(read_n(&mut c, 15), b"under new keys\n");
    // update_requested: the client answers with its own KeyUpdate before its next record.
    c.write_all(b"client after update\n").unwrap();
    assert!(peer.wait_for_output(b"client after update\n", IO_TIMEOUT));
    let out = String::from_utf8_lossy(&peer.output()).into_owned();
    assert!(out.contains(">>> TLS 1.3, Handshake [length 0005], KeyUpdate"), "{out}");
    assert!(out.contains("<<< TLS 1.3, Handshake [length 0005], KeyUpdate"), "{out}");

    peer.request_key_update(false).unwrap();
    peer.send(b"once more\n").unwrap();
    assert_eq!(read_n(&mut c, 10), b"once more\n");
    expect_close_notify(&mut c);
}

#[test]
fn socat_echoes_every_byte_with_each_suite() {
    for suite in [
        None,
        Some(Suite::Aes128GcmSha256),
        Some(Suite::Aes256GcmSha384),
        Some(Suite::Chacha20Poly1305Sha256),
    ] {
        let Some(peer) = started(socat_server(test_pki(), suite)) else { return };
        let c = connect(peer.addr());
        if let Some(suite) = suite {
            assert_eq!(negotiated(&c), suite.id());
        }
        let sent: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8 ^ (i >> 13) as u8).collect();
        let (mut c, took) = round_trip(c, &sent, &sent);
        eprintln!("socat {suite:?}: {} bytes in {took:?}", sent.len());
        expect_close_notify(&mut c);
    }
}

#[test]
fn gnutls_echoes_lines_with_each_suite() {
    for suite in [
        None,
        Some(Suite::Aes128GcmSha256),
        Some(Suite::Aes256GcmSha384),
        Some(Suite::Chacha20Poly1305Sha256),
    ] {
        let Some(peer) = started(gnutls_server(test_pki(), suite)) else { return };
        let c = connect(peer.addr());
        if let Some(suite) = suite {
            assert_eq!(negotiated(&c), suite.id());
        }
        let sent = lines(1024, 4000);
        let (mut c, took) = round_trip(c, &sent, &sent);
        eprintln!("gnutls-serv {suite:?}: {} bytes in {took:?}", sent.len());
        expect_close_notify(&mut c);
    }
}

#[test]
fn gnutls_sends_a_key_update_on_rehandshake_command() {
    let Some(peer) = started(gnutls_server(test_pki(), None)) else { return };
    let mut c = connect(peer.addr());
    c.write_all(b"**REHANDSHAKE**\n").unwrap();
    let answer = b"Successfully executed command\n";
    assert_eq!(read_n(&mut c, answer.len()), answer);
    // The KeyUpdate came before the answer (update_requested): both sides use new keys now.
    let line = lines(1, 100);
    c.write_all(&line).unwrap();
    assert_eq!(read_n(&mut c, line.len()), line);
    // A long line comes back whole.
    let long = lines(1, 64 * 1024);
    let (mut c, _) = round_trip(c, &long, &long);
    // A NUL hides every later "\n" from gnutls-serv (strchr stops at it): no echo, ever.
    c.write_all(b"cut\0here\n").unwrap();
    c.sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let err = c.read(&mut [0u8; 16]).expect_err("nothing comes back");
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
}
