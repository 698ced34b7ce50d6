//! The channel against TLS servers that are not ours: `openssl s_server -rev`, socat's
//! OpenSSL echo, and `gnutls-serv --echo`, each with each suite, 256 MiB byte for byte.
//! A test whose tool is missing says so and passes, unless WSKTLS_REQUIRE_PEERS=1 (set by
//! .ci/run), under which a missing peer fails.

mod common;

use std::net::SocketAddr;

use common::consumer::{
    ECHO, LINES, RECORD_LINE, REVERSED_LINES, REVERSED_RECORD_LINES, Shape, Stream, channel_config,
};
use common::peers::{
    Openssl, PeerProcess, Skip, Suite as PeerSuite, gnutls_server, openssl_server, socat_server, test_pki,
};
use common::{STALL, client};
use ntsim::Kernel;
use wsktls::channel::{Channel, ChannelConfig, State};
use wsktls_crypto::Suite;

const MIB: u64 = 1024 * 1024;

const SUITES: [(Suite, PeerSuite); 3] = [
    (Suite::Aes128Gcm, PeerSuite::Aes128GcmSha256),
    (Suite::Aes256Gcm, PeerSuite::Aes256GcmSha384),
    (Suite::Chacha20Poly1305, PeerSuite::Chacha20Poly1305Sha256),
];

fn config(addr: SocketAddr, suite: Suite) -> ChannelConfig {
    let mut config = channel_config(addr, "localhost");
    config.tls.suites = vec![suite];
    config
}

/// Echoes `total` bytes of `shape` through `peer` with `suite`, then closes both ways.
fn echo(
    kernel: &Kernel,
    peer: &PeerProcess,
    suite: Suite,
    total: u64,
    shape: Shape,
    tune: impl Fn(&mut ChannelConfig, &mut Stream),
) -> wsktls::channel::ChannelInfo {
    let _in = kernel.enter();
    let client = client();
    let mut config = config(peer.addr(), suite);
    let mut stream = Stream::new(total, shape);
    tune(&mut config, &mut stream);
    let channel =
        Channel::connect(&client, &config).unwrap_or_else(|s| panic!("connect: {s:?}\n{}", peer.log()));
    if let Err(e) = stream.run(&channel, STALL) {
        // Close first: the stream's IRPs must not be freed while the channel holds them.
        let (info, state) = (channel.info(), channel.state());
        channel.close();
        let _ = stream.drain_statuses(STALL);
        panic!("{e} (seed {})\n{state:?} {info:?}\n{}", kernel.seed(), peer.log());
    }
    let info = channel.info();
    assert_eq!(info.suite, suite);
    channel.disconnect(5_000).expect("disconnect");
    stream.expect_end(STALL).expect("the peer answers close_notify with its own");
    assert_eq!(channel.state(), State::Closed);
    channel.close();
    info
}

fn each_suite(start: impl Fn(PeerSuite) -> Result<PeerProcess, Skip>, shape: Shape) {
    let kernel = Kernel::boot();
    for (suite, peer_suite) in SUITES {
        let peer = match start(peer_suite) {
            Ok(p) => p,
            Err(skip) => {
                eprintln!("{skip}");
                return;
            }
        };
        echo(&kernel, &peer, suite, 256 * MIB, shape, |_, _| {});
    }
    kernel.finish();
}

#[test]
fn moves_256_mib_through_openssl_s_server_rev_with_each_suite() {
    each_suite(
        |suite| openssl_server(test_pki(), Openssl { suite: Some(suite), ..Openssl::default() }),
        REVERSED_LINES,
    );
}

#[test]
fn moves_256_mib_through_socat_openssl_echo_with_each_suite() {
    each_suite(|suite| socat_server(test_pki(), Some(suite)), ECHO);
}

#[test]
fn moves_256_mib_through_gnutls_serv_echo_with_each_suite() {
    each_suite(|suite| gnutls_server(test_pki(), Some(suite)), LINES);
}

#[test]
fn key_updates_before_a_low_confidentiality_limit_are_accepted_by_openssl() {
    let kernel = Kernel::boot();
    let peer = match openssl_server(test_pki(), Openssl::default()) {
        Ok(p) => p,
        Err(skip) => return eprintln!("{skip}"),
    };
    // openssl s_server -rev pauses a second on each KeyUpdate it reads: keep them few.
    // And it mangles a line that a KeyUpdate splits (BIO_gets hands back the part before
    // it as a whole line), so every send is whole lines and every full record one line.
    let records = 320;
    let info =
        echo(&kernel, &peer, Suite::Aes128Gcm, records * RECORD_LINE, REVERSED_RECORD_LINES, |c, s| {
            c.key_update_after_records = Some(80);
            c.record_size = RECORD_LINE as usize;
            s.send_granularity = RECORD_LINE as usize;
        });
    assert!(info.sent.key_updates >= 3, "{info:?}");
    kernel.finish();
}

#[test]
fn agrees_keys_with_x25519_p256_and_p384() {
    let kernel = Kernel::boot();
    for group in ["X25519", "P-256", "P-384"] {
        let extra = ["-groups", group];
        let peer = match openssl_server(test_pki(), Openssl { extra: &extra, ..Openssl::default() }) {
            Ok(p) => p,
            Err(skip) => return eprintln!("{skip}"),
        };
        echo(&kernel, &peer, Suite::Aes128Gcm, 64 * 1024, REVERSED_LINES, |_, _| {});
    }
    kernel.finish();
}

#[test]
fn negotiates_alpn_and_reports_the_protocol() {
    let kernel = Kernel::boot();
    let extra = ["-alpn", "h2,http/1.1"];
    let peer = match openssl_server(test_pki(), Openssl { extra: &extra, ..Openssl::default() }) {
        Ok(p) => p,
        Err(skip) => return eprintln!("{skip}"),
    };
    let info = echo(&kernel, &peer, Suite::Aes128Gcm, 64 * 1024, REVERSED_LINES, |c, _| {
        c.tls.alpn = vec![b"http/1.1".to_vec(), b"h3".to_vec()];
    });
    assert_eq!(info.alpn.as_ref().map(|p| p.as_bytes()), Some(&b"http/1.1"[..]));
    kernel.finish();
}
