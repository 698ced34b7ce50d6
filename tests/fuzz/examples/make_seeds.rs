//! Writes `seeds/handshake/`: real server flights, each the answer of a rustls server
//! (std, the fuzz PKI) to a real ClientHello of the driver (`Channel::connect` in ntsim),
//! prefixed with the handshake target's control byte (0: write it whole, then FIN).
//!
//! `cargo run --manifest-path tests/fuzz/Cargo.toml --example make_seeds` (any build of
//! the crate will do; the flights differ from run to run only in random values and keys).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CipherSuite, NamedGroup, ServerConfig, ServerConnection};
use wsktls::channel::{Channel, ChannelConfig};
use wsktls::tls::TlsParams;
use wsktls_fuzz::hostile::{HandshakePeer, RawPeer};
use wsktls_fuzz::pki::{SERVER_NAME, pki};
use wsktls_fuzz::rig::Bare;

/// A TLS 1.3 rustls server limited to `suites` and `groups` (empty: all of ring's).
fn server(suites: &[CipherSuite], groups: &[NamedGroup]) -> Arc<ServerConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !suites.is_empty() {
        provider.cipher_suites.retain(|s| suites.contains(&s.suite()));
    }
    if !groups.is_empty() {
        provider.kx_groups.retain(|g| groups.contains(&g.name()));
    }
    let p = pki();
    let chain = CertificateDer::pem_file_iter(&p.chain_pem).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&p.key_pem).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// The flight `config` answers the driver's ClientHello with.
fn capture(config: Arc<ServerConfig>) -> Vec<u8> {
    let rig = Bare::get();
    let _in = rig.kernel.enter();
    let peer = HandshakePeer::start(move |p: &mut RawPeer| {
        let mut conn = ServerConnection::new(config).map_err(std::io::Error::other)?;
        conn.read_tls(&mut &p.client_hello[..])?;
        conn.process_new_packets().map_err(std::io::Error::other)?;
        let mut flight = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut flight)?;
        }
        p.stream.write_all(&flight)?;
        p.stream.shutdown(Shutdown::Write)?;
        let _ = p.stream.read_to_end(&mut Vec::new());
        Ok(flight)
    });
    let tls = TlsParams {
        server_name: SERVER_NAME.into(),
        trust_anchors: vec![pki().ca_der.clone()],
        ..TlsParams::default()
    };
    let config = ChannelConfig::new(peer.addr(), tls);
    let status = Channel::connect(&rig.client, &config).err();
    println!("the driver's connect ended with {status:?}");
    peer.result(Duration::from_secs(10))
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/handshake");
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, Vec<CipherSuite>, Vec<NamedGroup>); 4] = [
        ("flight-aes128", vec![CipherSuite::TLS13_AES_128_GCM_SHA256], vec![]),
        ("flight-aes256", vec![CipherSuite::TLS13_AES_256_GCM_SHA384], vec![]),
        ("flight-chacha20", vec![CipherSuite::TLS13_CHACHA20_POLY1305_SHA256], vec![]),
        // The driver's first key share is not P-256's: the server asks again.
        ("hello-retry-request", vec![], vec![NamedGroup::secp256r1]),
    ];
    for (name, suites, groups) in cases {
        let flight = capture(server(&suites, &groups));
        let mut seed = vec![0u8];
        seed.extend_from_slice(&flight);
        std::fs::write(dir.join(name), &seed).unwrap();
        println!("{name}: {} bytes", flight.len());
    }
}
