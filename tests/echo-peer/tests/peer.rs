//! The echo peer against a rustls std client: echo, sink and source modes, mutual TLS,
//! KeyUpdates, session tickets, suites, how connections end, and the binary.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Child, Command, Stdio};

use echo_peer::{CipherSuite, Config, Ending, Mode, Peer, source_pattern};
use rustls::HandshakeKind;
use support::{
    Client, IO_TIMEOUT, client_config, close_cleanly, connect, data, echo_through, localhost, pki,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn peer(config: impl FnOnce(&mut Config)) -> Peer {
    let mut c = Config::new(&pki().server.chain, &pki().server.key);
    config(&mut c);
    Peer::start(localhost(), c).expect("start the echo peer")
}

fn client(peer: &Peer) -> Client {
    connect(peer.addr(), client_config(None)).expect("connect and handshake")
}

#[test]
fn echo_round_trips_every_byte_and_ends_on_close_notify() {
    let peer = peer(|_| {});
    let mut c = client(&peer);
    let sent = data(3 * MIB + 17);
    echo_through(&mut c, &sent, 100 * KIB).unwrap();
    close_cleanly(&mut c).unwrap();

    let stats = peer.stats();
    assert!(stats.wait_finished(1, IO_TIMEOUT));
    assert_eq!(stats.bytes_received(), sent.len() as u64);
    assert_eq!(stats.bytes_sent(), sent.len() as u64);
    assert_eq!(stats.connections_accepted(), 1);
    assert_eq!(stats.handshakes_completed(), 1);
    assert_eq!(stats.last_ending(), Some(Ending::CloseNotify));
}

#[test]
fn a_tcp_close_without_close_notify_is_told_apart() {
    let peer = peer(|_| {});
    let mut c = client(&peer);
    echo_through(&mut c, b"hello", 5).unwrap();
    c.sock.shutdown(Shutdown::Write).unwrap();
    assert!(peer.stats().wait_finished(1, IO_TIMEOUT));
    assert_eq!(peer.stats().last_ending(), Some(Ending::TcpCloseWithoutNotify));
}

#[test]
fn sink_counts_and_discards() {
    let peer = peer(|c| c.mode = Mode::Sink);
    let mut c = client(&peer);
    c.write_all(&data(MIB + 1)).unwrap();
    close_cleanly(&mut c).unwrap();
    assert!(peer.stats().wait_finished(1, IO_TIMEOUT));
    assert_eq!(peer.stats().bytes_received(), (MIB + 1) as u64);
    assert_eq!(peer.stats().bytes_sent(), 0);
    assert_eq!(peer.stats().last_ending(), Some(Ending::CloseNotify));
}

#[test]
fn source_sends_the_pattern_until_close_notify() {
    let peer = peer(|c| c.mode = Mode::Source);
    let mut c = client(&peer);
    let mut got = vec![0u8; 2 * MIB + 5];
    c.read_exact(&mut got).unwrap();
    let mut want = vec![0u8; got.len()];
    source_pattern(0, &mut want);
    assert!(got == want, "the source pattern arrives exactly");

    // The server keeps writing until it sees our close_notify; its own follows the data.
    c.conn.send_close_notify();
    c.flush().unwrap();
    let mut tail = Vec::new();
    c.read_to_end(&mut tail).expect("a clean close_notify after the data");
    let mut want = vec![0u8; tail.len()];
    source_pattern(got.len() as u64, &mut want);
    assert!(tail == want);
    assert!(peer.stats().wait_finished(1, IO_TIMEOUT));
    assert_eq!(peer.stats().last_ending(), Some(Ending::CloseNotify));
    assert_eq!(peer.stats().bytes_sent(), (got.len() + tail.len()) as u64);
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let peer = peer(|c| c.client_ca = Some(pki().client_ca.cert.clone()));
    // TLS 1.3: the client finishes its side before the server has judged the (empty)
    // certificate, so the refusal arrives as an alert on the first read.
    let refused = connect(peer.addr(), client_config(None)).and_then(|mut c| {
        c.write_all(b"ping\n")?;
        c.read(&mut [0u8; 8])
    });
    let err = refused.expect_err("a client without a certificate is refused");
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    assert!(peer.stats().wait_finished(1, IO_TIMEOUT));
    assert_eq!(peer.stats().last_ending(), Some(Ending::Error));
    assert_eq!(peer.stats().handshakes_completed(), 0);
}

#[test]
fn mutual_tls_accepts_the_test_client_certificate() {
    let peer = peer(|c| c.client_ca = Some(pki().client_ca.cert.clone()));
    let mut c = connect(peer.addr(), client_config(Some(&pki().client))).unwrap();
    echo_through(&mut c, &data(10_000), 4096).unwrap();
    close_cleanly(&mut c).unwrap();
}

#[test]
fn mutual_tls_refuses_a_certificate_from_another_ca() {
    let peer = peer(|c| c.client_ca = Some(pki().client_ca.cert.clone()));
    let refused = connect(peer.addr(), client_config(Some(&pki().untrusted))).and_then(|mut c| {
        c.write_all(b"ping\n")?;
        c.read(&mut [0u8; 8])
    });
    assert!(refused.is_err());
    assert!(peer.stats().wait_finished(1, IO_TIMEOUT));
    assert_eq!(peer.stats().last_ending(), Some(Ending::Error));
}

#[test]
fn key_update_every_n_bytes_and_the_data_stays_exact() {
    const EVERY: u64 = 64 * 1024;
    let peer = peer(|c| c.key_update_every = Some(EVERY));
    let mut c = client(&peer);
    let sent = data(MIB + 3);
    echo_through(&mut c, &sent, 50_000).unwrap();
    close_cleanly(&mut c).unwrap();
    assert!(peer.stats().wait_finished(1, IO_TIMEOUT));
    assert_eq!(peer.stats().key_updates_initiated(), sent.len() as u64 / EVERY);
    assert_eq!(peer.stats().bytes_received(), sent.len() as u64);
    assert_eq!(peer.stats().last_ending(), Some(Ending::CloseNotify));
}

#[test]
fn key_update_after_every_byte_survives_a_stream_of_them() {
    let peer = peer(|c| c.key_update_every = Some(1));
    let mut c = client(&peer);
    echo_through(&mut c, &data(300), 7).unwrap();
    close_cleanly(&mut c).unwrap();
    assert_eq!(peer.stats().key_updates_initiated(), 300);
}

#[test]
fn tickets_are_sent_and_resume_a_second_connection() {
    let peer = peer(|_| {});
    let config = client_config(None);
    let mut first = connect(peer.addr(), config.clone()).unwrap();
    // NewSessionTicket follows the handshake; a round trip makes sure the client read it.
    echo_through(&mut first, b"x", 1).unwrap();
    close_cleanly(&mut first).unwrap();
    let second = connect(peer.addr(), config).unwrap();
    assert_eq!(second.conn.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn suites_restrict_what_is_negotiated() {
    for suite in [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let peer = peer(|c| c.suites = Some(vec![suite]));
        let mut c = client(&peer);
        assert_eq!(c.conn.negotiated_cipher_suite().map(|s| s.suite()), Some(suite));
        echo_through(&mut c, b"suite", 5).unwrap();
    }
}

#[test]
fn every_server_identity_works_and_the_bad_ones_are_refused() {
    let pki = pki();
    for id in [&pki.server, &pki.server_p384, &pki.server_rsa, &pki.server_ed25519] {
        let peer = Peer::start(localhost(), Config::new(&id.chain, &id.key)).unwrap();
        let mut c = client(&peer);
        echo_through(&mut c, b"identity", 8).unwrap_or_else(|e| panic!("{}: {e}", id.cert.display()));
    }
    for (id, why) in [
        (&pki.expired, "expired"),
        (&pki.other_name, "not valid for name"),
        (&pki.untrusted, "UnknownIssuer"),
    ] {
        let peer = Peer::start(localhost(), Config::new(&id.chain, &id.key)).unwrap();
        let err = connect(peer.addr(), client_config(None)).expect_err("the client refuses it");
        assert!(err.to_string().contains(why), "{}: {err}", id.cert.display());
    }
}

#[test]
fn non_loopback_listen_addresses_are_refused() {
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0", "[::ffff:10.0.0.1]:0"] {
        let addr: SocketAddr = addr.parse().unwrap();
        let err = Peer::start(addr, Config::new(&pki().server.chain, &pki().server.key))
            .err()
            .unwrap_or_else(|| panic!("{addr} was accepted"));
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{addr}");
    }
    let v6 = Peer::start("[::1]:0".parse().unwrap(), Config::new(&pki().server.chain, &pki().server.key));
    // ::1 is loopback; it may only fail where the machine has no IPv6 at all.
    if let Ok(peer) = v6 {
        let mut c = client(&peer);
        echo_through(&mut c, b"v6", 2).unwrap();
    }
}

#[test]
fn dropping_the_peer_stops_accepting_and_cuts_open_connections() {
    let peer = peer(|_| {});
    let (addr, stats) = (peer.addr(), peer.stats());
    let mut c = client(&peer);
    echo_through(&mut c, b"before", 6).unwrap();
    drop(peer);
    assert!(stats.wait_finished(1, IO_TIMEOUT));
    assert_eq!(stats.last_ending(), Some(Ending::Stopped));
    assert!(c.read(&mut [0u8; 1]).is_err(), "the connection was cut without close_notify");
    assert!(connect(addr, client_config(None)).is_err(), "nothing listens any more");
}

/// The binary, run as the tests' launchers run it.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_says_where_it_listens_and_echoes() {
    let mut child = Process(
        Command::new(env!("CARGO_BIN_EXE_echo-peer"))
            .args(["--listen", "127.0.0.1:0", "--mode", "echo", "--suite", "TLS_AES_256_GCM_SHA384"])
            .arg("--cert")
            .arg(&pki().server.chain)
            .arg("--key")
            .arg(&pki().server.key)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.strip_prefix("listening on ").unwrap().trim().parse().unwrap();
    let mut c = connect(addr, client_config(None)).unwrap();
    assert_eq!(
        c.conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(CipherSuite::TLS13_AES_256_GCM_SHA384)
    );
    echo_through(&mut c, &data(100_000), 30_000).unwrap();
    close_cleanly(&mut c).unwrap();
}

#[test]
fn the_binary_refuses_a_non_loopback_address() {
    let status = Command::new(env!("CARGO_BIN_EXE_echo-peer"))
        .args(["--listen", "0.0.0.0:0"])
        .arg("--cert")
        .arg(&pki().server.chain)
        .arg("--key")
        .arg(&pki().server.key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
}
