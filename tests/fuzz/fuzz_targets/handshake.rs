//! The handshake fed arbitrary server flights: a loopback server (tests/common/hostile.rs's
//! `HandshakePeer`) reads the driver's ClientHello and answers with the input's bytes,
//! then closes (FIN or reset) or stays silent; the driver runs `Channel::connect`.
//!
//! Input: byte 0 says how (bits 0-1: 0 FIN, 1 reset, 2 silent until the driver gives up,
//! 3 FIN without waiting; bit 2: leave the ServerHello's legacy_session_id_echo as it is
//! rather than copying the ClientHello's into it; bits 3-7: write the flight in pieces of
//! that many times 7 bytes, 0 for one write); the rest is the flight. With the echo
//! copied, a replayed ServerHello gets past rustls's first check and on to the key
//! schedule. `seeds/handshake/` holds real flights (see examples/make_seeds.rs).
//!
//! Checked on every input: `Channel::connect` returns (fails: nothing without the server's
//! keys can finish a handshake), no panic, no verifier report, nothing left allocated.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wsktls::channel::{Channel, ChannelConfig};
use wsktls::tls::TlsParams;
use wsktls_fuzz::hostile::{HandshakePeer, RawPeer};
use wsktls_fuzz::pki::{SERVER_NAME, pki};
use wsktls_fuzz::rig::Bare;
use wsktls_fuzz::stats;

/// Where the ClientHello's and a ServerHello's legacy_session_id sits: record header (5),
/// handshake header (4), legacy_version (2), random (32), then its length byte.
const SESSION_ID_AT: usize = 5 + 4 + 2 + 32;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    Fin,
    Reset,
    Silent,
    FinNow,
}

/// Copies the ClientHello's legacy_session_id into a ServerHello at the start of
/// `flight`, when both have one of the same length.
fn echo_session_id(client_hello: &[u8], flight: &mut [u8]) {
    let is_server_hello = flight.first() == Some(&22) && flight.get(5) == Some(&2);
    let (Some(&theirs), Some(&ours)) = (client_hello.get(SESSION_ID_AT), flight.get(SESSION_ID_AT)) else {
        return;
    };
    let len = theirs as usize;
    let from = SESSION_ID_AT + 1;
    if is_server_hello && theirs == ours && client_hello.len() >= from + len && flight.len() >= from + len {
        flight[from..from + len].copy_from_slice(&client_hello[from..from + len]);
    }
}

fn serve(peer: &mut RawPeer, mut flight: Vec<u8>, end: End, keep_echo: bool, piece: usize) {
    if !keep_echo {
        echo_session_id(&peer.client_hello, &mut flight);
    }
    // Write errors mean the driver already left: nothing to check here.
    let _ = peer.stream.set_nodelay(true);
    if piece == 0 {
        let _ = peer.stream.write_all(&flight);
    } else {
        for chunk in flight.chunks(piece) {
            if peer.stream.write_all(chunk).is_err() {
                break;
            }
        }
    }
    match end {
        End::Fin => {
            let _ = peer.stream.shutdown(Shutdown::Write);
            // Let the driver read everything and answer (an alert) before the socket goes.
            peer.read_until_closed(Duration::from_secs(5));
        }
        End::FinNow => {
            let _ = peer.stream.shutdown(Shutdown::Write);
        }
        End::Reset => {
            ntsim::set_abortive(&peer.stream);
            let _ = peer.stream.shutdown(Shutdown::Both);
        }
        End::Silent => {
            peer.read_until_closed(Duration::from_secs(5));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, flight)) = data.split_first() else { return };
    let end = [End::Fin, End::Reset, End::Silent, End::FinNow][(how & 3) as usize];
    let keep_echo = how & 4 != 0;
    let piece = (how >> 3) as usize * 7;
    let flight = flight.to_vec();

    let rig = Bare::get();
    let _in = rig.kernel.enter();
    rig.ledger.begin(&rig.kernel);
    {
        let peer = HandshakePeer::start(move |p: &mut RawPeer| {
            serve(p, flight, end, keep_echo, piece);
            Ok(())
        });
        let tls = TlsParams {
            server_name: SERVER_NAME.into(),
            trust_anchors: vec![pki().ca_der.clone()],
            ..TlsParams::default()
        };
        let mut config = ChannelConfig::new(peer.addr(), tls);
        config.connect_timeout_ms = 5_000;
        // A silent server is given up on quickly; the others close, and the driver must
        // notice that without waiting for its deadline.
        config.handshake_timeout_ms = if end == End::Silent { 25 } else { 10_000 };
        match Channel::connect(&rig.client, &config) {
            Ok(channel) => {
                // Only a server with its keys can finish a handshake: this would mean
                // the driver took a forged flight for a real one.
                channel.close();
                panic!("a handshake completed against a server flight made of input bytes");
            }
            Err(status) => stats::note("connect", status),
        }
        // The peer's thread ends once the driver's socket is closed (already, here).
        drop(peer);
    }
    rig.ledger.end(&rig.kernel, Duration::from_secs(5));
    stats::input_done();
});
