//! How the channel fails: each bad input gets its own status, failures are sticky, nothing
//! after a fault reaches the consumer, and nothing is left behind (the kernel's unload
//! checks every test for leaks and verifier reports).

mod common;

use std::sync::mpsc;

use common::consumer::{ConsumerIrp, ECHO, Stream, channel_config};
use common::peers::test_pki;
use common::proxy::{Fault, Proxy};
use common::{EchoServer, STALL, TAG_TEST, client};
use echo_peer::pki::Identity;
use echo_peer::{Config as PeerConfig, Peer};
use ntsim::{Config, Faults, Kernel};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wsktls::channel::{Channel, ChannelConfig, State};
use wsktls::interface;
use wsktls::nt::{
    NTSTATUS, PoolBuffer, SEC_E_CERT_EXPIRED, SEC_E_MESSAGE_ALTERED, SEC_E_UNTRUSTED_ROOT,
    SEC_E_WRONG_PRINCIPAL, STATUS_FILE_FORCED_CLOSED, STATUS_IO_TIMEOUT, STATUS_NOT_SUPPORTED,
    STATUS_WSKTLS_PIN_MISMATCH, STATUS_WSKTLS_TRUNCATED, WSK_BUF, WSK_FLAG_DRAIN, WSK_FLAG_WAITALL,
};

const MIB: u64 = 1024 * 1024;

fn peer_with(identity: &Identity) -> Peer {
    Peer::start("127.0.0.1:0".parse().unwrap(), PeerConfig::new(&identity.chain, &identity.key))
        .expect("peer")
}

/// Connects with `config` and returns the status of the failure.
fn connect_fails(kernel: &Kernel, config: &ChannelConfig) -> NTSTATUS {
    let _in = kernel.enter();
    let client = client();
    match Channel::connect(&client, config) {
        Ok(_) => panic!("connected to a server that should have been refused"),
        Err(status) => status,
    }
}

#[test]
fn a_certificate_for_another_name_is_refused_as_wrong_principal() {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().other_name);
    assert_eq!(connect_fails(&kernel, &channel_config(peer.addr(), "localhost")), SEC_E_WRONG_PRINCIPAL);
    kernel.finish();
}

#[test]
fn a_server_name_the_certificate_does_not_carry_is_refused_as_wrong_principal() {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().server);
    let mut config = channel_config(peer.addr(), "localhost");
    config.tls.server_name = "not-localhost.example".into();
    assert_eq!(connect_fails(&kernel, &config), SEC_E_WRONG_PRINCIPAL);
    kernel.finish();
}

#[test]
fn a_chain_to_an_untrusted_root_is_refused_and_the_server_is_told_why() {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().untrusted);
    assert_eq!(connect_fails(&kernel, &channel_config(peer.addr(), "localhost")), SEC_E_UNTRUSTED_ROOT);
    assert!(peer.stats().wait_finished(1, STALL));
    assert_eq!(peer.stats().last_ending(), Some(echo_peer::Ending::Error));
    assert_eq!(peer.stats().last_alert_received(), Some(rustls::AlertDescription::UnknownCA));
    kernel.finish();
}

#[test]
fn an_expired_certificate_is_refused() {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().expired);
    assert_eq!(connect_fails(&kernel, &channel_config(peer.addr(), "localhost")), SEC_E_CERT_EXPIRED);
    kernel.finish();
}

fn server_spki_pin() -> [u8; 32] {
    let der = CertificateDer::from_pem_file(&test_pki().server.cert).expect("server certificate");
    wsktls_crypto::spki_sha256(&der).expect("SPKI")
}

#[test]
fn a_pin_that_does_not_match_the_server_key_is_refused_after_a_valid_chain() {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().server);
    let mut config = channel_config(peer.addr(), "localhost");
    let mut pin = server_spki_pin();
    pin[0] ^= 1;
    config.tls.pin_sha256 = Some(pin);
    assert_eq!(connect_fails(&kernel, &config), STATUS_WSKTLS_PIN_MISMATCH);
    kernel.finish();
}

#[test]
fn a_pin_that_matches_the_server_key_connects() {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().server);
    {
        let _in = kernel.enter();
        let client = client();
        let mut config = channel_config(peer.addr(), "localhost");
        config.tls.pin_sha256 = Some(server_spki_pin());
        let channel = Channel::connect(&client, &config).expect("a matching pin connects");
        let mut stream = Stream::new(64 * 1024, ECHO);
        stream.run(&channel, STALL).expect("echo");
        channel.close();
        stream.drain_statuses(STALL).expect("close completes the receives still posted");
    }
    kernel.finish();
}

#[test]
fn a_connect_that_is_never_answered_times_out() {
    let faults = Faults { connect_never_answers: true, ..Faults::default() };
    let kernel = Kernel::boot_with(Config { faults, ..Config::default() });
    let peer = peer_with(&test_pki().server);
    let mut config = channel_config(peer.addr(), "localhost");
    config.connect_timeout_ms = 300;
    assert_eq!(connect_fails(&kernel, &config), STATUS_IO_TIMEOUT);
    kernel.finish();
}

#[test]
fn a_handshake_the_server_never_answers_times_out() {
    let kernel = Kernel::boot();
    let silent = EchoServer::silent();
    let mut config = channel_config(silent.addr, "localhost");
    config.handshake_timeout_ms = 300;
    assert_eq!(connect_fails(&kernel, &config), STATUS_IO_TIMEOUT);
    kernel.finish();
}

/// A send or receive on a fresh IRP; its return and completion statuses.
fn one_request(channel: &Channel, send: bool, flags: u32) -> (NTSTATUS, NTSTATUS) {
    let (tx, rx) = mpsc::channel();
    let irp = ConsumerIrp::new(7, &tx);
    let buffer = PoolBuffer::new(100, TAG_TEST).expect("buffer");
    let buf = WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: 100 };
    // SAFETY: our armed IRP and buffer, alive until the completion below.
    let returned = unsafe {
        if send {
            interface::send(channel, &buf, flags, irp.arm())
        } else {
            interface::receive(channel, &buf, flags, irp.arm())
        }
    };
    let done = rx.recv_timeout(STALL).expect("the request completes");
    (returned, done.status)
}

/// Runs a 4 MiB echo through a proxy with `fault` and checks the failure is sticky: it
/// surfaces as `expected`, bytes before it were all right (the stream checks each) and
/// fewer than `limit`, every queued request completes with it, and later calls get
/// STATUS_FILE_FORCED_CLOSED.
fn fails_sticky(fault: Fault, expected: NTSTATUS, limit: u64) {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().server);
    let proxy = Proxy::start(peer.addr(), fault);
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(proxy.addr, "localhost")).expect("connect");
        let mut stream = Stream::new(4 * MIB, ECHO);
        // Requests queued before the fault complete with its status; any issued after it
        // are refused with STATUS_FILE_FORCED_CLOSED. Nothing else.
        let err = stream.run(&channel, STALL).expect_err("the fault ends the stream");
        let forced = format!("{STATUS_FILE_FORCED_CLOSED:?}");
        assert!(err.contains(&format!("{expected:?}")) || err.contains(&forced), "{err}");
        for (id, status, _) in stream.drain_statuses(STALL).expect("every request completes") {
            assert!(status == expected || status == STATUS_FILE_FORCED_CLOSED, "request {id}: {status:?}");
        }
        // Every byte delivered was checked in order; none came from after the fault.
        assert!(stream.received < limit, "{} bytes delivered, the fault was before {limit}", stream.received);
        assert_eq!(channel.state(), State::Failed(expected));
        assert_eq!(one_request(&channel, true, 0), (STATUS_FILE_FORCED_CLOSED, STATUS_FILE_FORCED_CLOSED));
        assert_eq!(one_request(&channel, false, 0), (STATUS_FILE_FORCED_CLOSED, STATUS_FILE_FORCED_CLOSED));
        channel.close();
    }
    kernel.finish();
}

#[test]
fn a_tampered_record_fails_the_channel_for_good_and_nothing_after_it_is_delivered() {
    fails_sticky(Fault::FlipAt(MIB), SEC_E_MESSAGE_ALTERED, MIB);
}

#[test]
fn a_fin_without_close_notify_is_reported_as_truncation_not_as_an_end() {
    fails_sticky(Fault::CutAt(MIB + 1000), STATUS_WSKTLS_TRUNCATED, MIB + 1000);
}

#[test]
fn unsupported_flags_and_empty_receives_are_refused_without_hurting_the_channel() {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().server);
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(peer.addr(), "localhost")).expect("connect");
        // (WSK_FLAG_NODELAY and WSK_FLAG_WAITALL share a value, for different calls.)
        for flags in [WSK_FLAG_DRAIN, 0x8000] {
            assert_eq!(one_request(&channel, true, flags), (STATUS_NOT_SUPPORTED, STATUS_NOT_SUPPORTED));
            assert_eq!(one_request(&channel, false, flags), (STATUS_NOT_SUPPORTED, STATUS_NOT_SUPPORTED));
        }
        // A receive of nothing would look like the end of the stream.
        let (tx, rx) = mpsc::channel();
        let irp = ConsumerIrp::new(8, &tx);
        let empty = WSK_BUF { Mdl: std::ptr::null_mut(), Offset: 0, Length: 0 };
        // SAFETY: our armed IRP; no buffer to keep.
        let returned = unsafe { interface::receive(&channel, &empty, 0, irp.arm()) };
        assert_eq!(returned, wsktls::nt::STATUS_INVALID_PARAMETER);
        assert_eq!(rx.recv_timeout(STALL).expect("completed").status, wsktls::nt::STATUS_INVALID_PARAMETER);
        assert_eq!(channel.state(), State::Open, "a refused request does not hurt the channel");
        channel.close();
    }
    kernel.finish();
}

#[test]
fn every_receive_queued_at_a_tampered_record_completes_with_its_status_and_the_peer_hears_bad_record_mac() {
    let kernel = Kernel::boot();
    let peer = peer_with(&test_pki().server);
    // The tampered byte lies well inside the echoed data.
    let proxy = Proxy::start(peer.addr(), Fault::FlipAt(64 * 1024));
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(proxy.addr, "localhost")).expect("connect");
        let (tx, rx) = mpsc::channel();
        // Three receives that all 100 KiB cannot satisfy: WAITALL for 1 MiB each.
        let receives: Vec<(ConsumerIrp, PoolBuffer)> = (0..3)
            .map(|i| (ConsumerIrp::new(i, &tx), PoolBuffer::new(MIB as usize, TAG_TEST).expect("buffer")))
            .collect();
        for (irp, buffer) in &receives {
            let buf = WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: buffer.len() };
            // SAFETY: our armed IRP and buffer, alive until completion.
            let status = unsafe { interface::receive(&channel, &buf, WSK_FLAG_WAITALL, irp.arm()) };
            assert_eq!(status, wsktls::nt::STATUS_PENDING);
        }
        let (send_irp, mut data) = (ConsumerIrp::new(9, &tx), PoolBuffer::new(100 * 1024, TAG_TEST).unwrap());
        data.as_mut_slice().fill(0x5a);
        let buf = WSK_BUF { Mdl: data.mdl(), Offset: 0, Length: data.len() };
        // SAFETY: as above.
        unsafe { interface::send(&channel, &buf, 0, send_irp.arm()) };
        let mut receives_done = Vec::new();
        while receives_done.len() < 3 {
            let done = rx.recv_timeout(STALL).expect("completion");
            if done.id < 3 {
                receives_done.push(done);
            }
        }
        let ids: Vec<usize> = receives_done.iter().map(|d| d.id).collect();
        assert_eq!(ids, [0, 1, 2], "in the order posted");
        for d in &receives_done {
            assert_eq!(d.status, SEC_E_MESSAGE_ALTERED, "{d:?}");
            assert!(d.bytes < 64 * 1024, "only bytes from before the fault: {d:?}");
        }
        // The peer is told why (through the proxy, which forwards our side untouched).
        assert!(peer.stats().wait_finished(1, STALL));
        assert_eq!(peer.stats().last_alert_received(), Some(rustls::AlertDescription::BadRecordMac));
        channel.close();
        drop(send_irp);
    }
    kernel.finish();
}
