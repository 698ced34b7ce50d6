//! The secure channel end to end: ntsim's WSK over real loopback sockets, the TLS 1.3
//! handshake in the driver, our record layer, against real TLS servers.

mod common;

use common::consumer::{ECHO, Stream, channel_config};
use common::peers::test_pki;
use common::{STALL, client};
use echo_peer::{Config as PeerConfig, Ending, Peer};
use ntsim::Kernel;
use wsktls::channel::{Channel, ChannelConfig, State};
use wsktls::interface;
use wsktls_crypto::Suite;

const MIB: u64 = 1024 * 1024;

fn echo_peer() -> Peer {
    let pki = test_pki();
    Peer::start("127.0.0.1:0".parse().unwrap(), PeerConfig::new(&pki.server.chain, &pki.server.key))
        .expect("echo-peer")
}

/// Connects with `suites` offered, echoes `total` bytes, disconnects both ways, closes.
/// Returns the channel's info as it was before closing.
fn echo_through_echo_peer(kernel: &Kernel, suites: &[Suite], total: u64) -> wsktls::channel::ChannelInfo {
    let peer = echo_peer();
    let info = {
        let _in = kernel.enter();
        let client = client();
        let mut config = channel_config(peer.addr(), "localhost");
        config.tls.suites = suites.to_vec();
        let channel = Channel::connect(&client, &config).expect("connect");
        assert_eq!(channel.state(), State::Open);
        let mut stream = Stream::new(total, ECHO);
        stream.run(&channel, STALL).unwrap_or_else(|e| panic!("{e} (seed {})", kernel.seed()));
        channel.disconnect(5_000).expect("disconnect");
        stream.expect_end(STALL).expect("close_notify from the peer ends the stream");
        assert_eq!(channel.state(), State::Closed);
        let info = channel.info();
        channel.close();
        drop(stream);
        info
    };
    assert!(peer.stats().wait_finished(1, STALL), "the peer saw the connection end");
    assert_eq!(peer.stats().bytes_received(), total, "the peer received every byte once");
    assert_eq!(peer.stats().last_ending(), Some(Ending::CloseNotify), "we sent close_notify");
    assert_eq!(info.sent.plaintext_bytes, total);
    assert_eq!(info.received.plaintext_bytes, total);
    assert_eq!(info.received.tickets, 2, "echo-peer's two NewSessionTickets were accepted");
    assert!(info.sent.peak_in_flight_bytes <= info.sent.budget, "{info:?}");
    info
}

#[test]
fn echoes_through_echo_peer_with_each_suite_byte_for_byte() {
    let kernel = Kernel::boot();
    for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
        let info = echo_through_echo_peer(&kernel, &[suite], 8 * MIB);
        assert_eq!(info.suite, suite);
        assert!(info.sent.records >= 8 * MIB / 16384, "{info:?}");
    }
    kernel.finish();
}

/// Echoes `total` bytes with `config` through `peer` and returns the channel's info.
fn echo_with(kernel: &Kernel, config: &ChannelConfig, total: u64) -> wsktls::channel::ChannelInfo {
    let _in = kernel.enter();
    let client = client();
    let channel = Channel::connect(&client, config).expect("connect");
    let mut stream = Stream::new(total, ECHO);
    stream.run(&channel, STALL).unwrap_or_else(|e| panic!("{e} (seed {})", kernel.seed()));
    channel.disconnect(5_000).expect("disconnect");
    stream.expect_end(STALL).expect("the peer's close_notify");
    let info = channel.info();
    channel.close();
    info
}

#[test]
fn key_updates_before_a_low_confidentiality_limit_keep_every_byte_exact() {
    let kernel = Kernel::boot();
    let peer = echo_peer();
    let mut config = channel_config(peer.addr(), "localhost");
    // Test-only: a new key every 64 records instead of the suite's 2^24.
    config.key_update_after_records = Some(64);
    let info = echo_with(&kernel, &config, 16 * MIB);
    assert!(info.sent.key_updates >= 3, "{info:?}");
    assert_eq!(peer.stats().bytes_received(), 16 * MIB);
    kernel.finish();
}

#[test]
fn a_key_update_the_peer_initiates_is_honoured_and_answered() {
    let kernel = Kernel::boot();
    let pki = test_pki();
    let mut peer_config = PeerConfig::new(&pki.server.chain, &pki.server.key);
    // The peer updates its key, and asks us to update ours, every MiB it receives.
    peer_config.key_update_every = Some(MIB);
    let peer = Peer::start("127.0.0.1:0".parse().unwrap(), peer_config).expect("echo-peer");
    let info = echo_with(&kernel, &channel_config(peer.addr(), "localhost"), 8 * MIB);
    let initiated = peer.stats().key_updates_initiated();
    assert!(initiated >= 3, "the peer initiated {initiated}");
    assert_eq!(info.received.key_updates, initiated, "we followed every update: {info:?}");
    assert!(info.sent.key_updates >= initiated, "and answered each: {info:?}");
    kernel.finish();
}

fn client_auth() -> wsktls::tls::ClientAuth {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let pki = test_pki();
    let cert = CertificateDer::from_pem_file(&pki.client.cert).expect("client certificate");
    let key = PrivatePkcs8KeyDer::from_pem_file(&pki.client.key).expect("client key (PKCS#8)");
    wsktls::tls::ClientAuth { chain: vec![cert.to_vec()], key_pkcs8: key.secret_pkcs8_der().into() }
}

fn mutual_tls_peer() -> Peer {
    let pki = test_pki();
    let mut peer_config = PeerConfig::new(&pki.server.chain, &pki.server.key);
    peer_config.client_ca = Some(pki.client_ca.cert.clone());
    Peer::start("127.0.0.1:0".parse().unwrap(), peer_config).expect("echo-peer")
}

#[test]
fn mutual_tls_presents_the_client_certificate_the_peer_requires() {
    let kernel = Kernel::boot();
    let peer = mutual_tls_peer();
    let mut config = channel_config(peer.addr(), "localhost");
    config.tls.client_auth = Some(client_auth());
    echo_with(&kernel, &config, MIB);
    assert_eq!(peer.stats().bytes_received(), MIB);
    kernel.finish();
}

#[test]
fn a_server_that_requires_a_client_certificate_we_lack_fails_the_channel() {
    let kernel = Kernel::boot();
    let peer = mutual_tls_peer();
    {
        let _in = kernel.enter();
        let client = client();
        // TLS 1.3 clients finish first: the server's refusal may arrive after connect.
        match Channel::connect(&client, &channel_config(peer.addr(), "localhost")) {
            Err(status) => assert_eq!(status, wsktls::nt::SEC_E_CERT_UNKNOWN),
            Ok(channel) => {
                // Only a receive: a send of ours racing the server's close could end in a
                // reset that hides the alert.
                let (tx, rx) = std::sync::mpsc::channel();
                let irp = common::consumer::ConsumerIrp::new(0, &tx);
                let buffer = wsktls::nt::PoolBuffer::new(4096, common::TAG_TEST).expect("buffer");
                let buf = wsktls::nt::WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: buffer.len() };
                // SAFETY: our armed IRP and buffer, alive until the completion.
                unsafe { interface::receive(&channel, &buf, 0, irp.arm()) };
                // The alert may have failed the channel already (then the receive is refused
                // as coming after the failure) or fail the receive itself.
                let done = rx.recv_timeout(STALL).expect("the receive completes");
                let unknown = wsktls::nt::SEC_E_CERT_UNKNOWN;
                assert_eq!(channel.state(), State::Failed(unknown), "the server's alert");
                assert!(
                    done.status == unknown || done.status == wsktls::nt::STATUS_FILE_FORCED_CLOSED,
                    "{done:?}"
                );
                channel.close();
            }
        }
    }
    kernel.finish();
}

#[test]
fn moves_256_mib_through_echo_peer_with_each_suite() {
    let kernel = Kernel::boot();
    for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
        echo_through_echo_peer(&kernel, &[suite], 256 * MIB);
    }
    kernel.finish();
}

#[test]
fn a_throttled_socket_and_a_stalled_reader_hold_sends_pending_within_the_budget() {
    use common::consumer::ConsumerIrp;
    use common::proxy::{Fault, Gate, Proxy};
    use wsktls::nt::{PoolBuffer, STATUS_PENDING, STATUS_SUCCESS, WSK_BUF};

    let faults = ntsim::Faults { send_buffer_bytes: Some(4096), ..ntsim::Faults::default() };
    let kernel = Kernel::boot_with(ntsim::Config { faults, ..ntsim::Config::default() });
    let pki = test_pki();
    let mut sink = PeerConfig::new(&pki.server.chain, &pki.server.key);
    sink.mode = echo_peer::Mode::Sink;
    let peer = Peer::start("127.0.0.1:0".parse().unwrap(), sink).expect("echo-peer --mode sink");
    let gate = Gate::default();
    let proxy = Proxy::start(peer.addr(), Fault::Gate(gate.clone()));
    const SENDS: usize = 16;
    const EACH: usize = 512 * 1024;
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(proxy.addr, "localhost")).expect("connect");
        gate.hold();
        let (tx, rx) = std::sync::mpsc::channel();
        let requests: Vec<(ConsumerIrp, PoolBuffer)> = (0..SENDS)
            .map(|i| {
                let mut b = PoolBuffer::new(EACH, common::TAG_TEST).expect("buffer");
                b.as_mut_slice()
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x = common::pattern((i * EACH + j) as u64));
                (ConsumerIrp::new(i, &tx), b)
            })
            .collect();
        for (irp, b) in &requests {
            let buf = WSK_BUF { Mdl: b.mdl(), Offset: 0, Length: b.len() };
            // SAFETY: our armed IRP and buffer, alive until completion.
            assert_eq!(unsafe { interface::send(&channel, &buf, 0, irp.arm()) }, STATUS_PENDING);
        }
        // Held back: the sends wait (pending, not failed) and the budget holds.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let early: Vec<_> = rx.try_iter().collect();
        assert!(early.len() < SENDS, "all sends completed while the reader was stalled");
        assert!(early.iter().all(|d| d.status == STATUS_SUCCESS), "{early:?}");
        let held = channel.info().sent;
        assert!(held.in_flight_bytes > 0 && held.in_flight_bytes <= held.budget, "{held:?}");
        assert_eq!(channel.state(), State::Open);
        gate.release();
        let mut done = early;
        while done.len() < SENDS {
            done.push(rx.recv_timeout(STALL).expect("every send completes once the reader reads"));
        }
        let ids: Vec<usize> = done.iter().map(|d| d.id).collect();
        assert_eq!(ids, (0..SENDS).collect::<Vec<_>>(), "sends complete in order");
        assert!(done.iter().all(|d| d.status == STATUS_SUCCESS && d.bytes == EACH), "{done:?}");
        let sent = channel.info().sent;
        assert!(sent.peak_in_flight_bytes <= sent.budget, "{sent:?}");
        channel.disconnect(5_000).expect("disconnect");
        // Close only once the peer has read to our close_notify: closing earlier would
        // reset the proxy's connection with our last bytes still in its socket.
        assert!(peer.stats().wait_finished(1, STALL));
        channel.close();
    }
    assert_eq!(peer.stats().bytes_received(), (SENDS * EACH) as u64, "all data arrived");
    kernel.finish();
}

#[test]
fn verifies_ecdsa_p256_p384_rsa_pss_and_ed25519_servers() {
    let kernel = Kernel::boot();
    let pki = test_pki();
    for identity in [&pki.server, &pki.server_p384, &pki.server_rsa, &pki.server_ed25519] {
        let peer =
            Peer::start("127.0.0.1:0".parse().unwrap(), PeerConfig::new(&identity.chain, &identity.key))
                .expect("echo-peer");
        echo_with(&kernel, &channel_config(peer.addr(), "localhost"), 64 * 1024);
        assert_eq!(peer.stats().bytes_received(), 64 * 1024, "{}", identity.cert.display());
    }
    kernel.finish();
}

#[test]
fn a_client_key_that_is_not_the_certificates_is_refused_as_a_bad_parameter() {
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject;
    let kernel = Kernel::boot();
    let peer = mutual_tls_peer();
    {
        let _in = kernel.enter();
        let client = client();
        let mut config = channel_config(peer.addr(), "localhost");
        let mut auth = client_auth();
        let other = PrivatePkcs8KeyDer::from_pem_file(&test_pki().server.key).expect("another key");
        auth.key_pkcs8 = other.secret_pkcs8_der().into();
        config.tls.client_auth = Some(auth);
        assert_eq!(Channel::connect(&client, &config).err(), Some(wsktls::nt::STATUS_INVALID_PARAMETER));
    }
    kernel.finish();
}
