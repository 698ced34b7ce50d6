//! What the echo-peer tests share: one PKI per test process, and a rustls std client.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use echo_peer::pki::{self, Identity, Pki};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub type Client = StreamOwned<ClientConnection, TcpStream>;

const PKI_DIR_PREFIX: &str = "echo-peer-pki-";

/// The test PKI, made once per test process into `target/tmp/echo-peer-pki-<pid>`; those
/// of processes that are gone are removed on the way.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PKI_DIR_PREFIX)) else { continue };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        pki::generate(&root.join(format!("{PKI_DIR_PREFIX}{}", std::process::id())))
            .expect("generate the test PKI")
    })
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A client that trusts the test CA, with `identity` as its certificate if given.
pub fn client_config(identity: Option<&Identity>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki().ca.cert).unwrap()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain =
                CertificateDer::pem_file_iter(&id.chain).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&id.key).unwrap()).unwrap()
        }
    };
    Arc::new(config)
}

/// Connects to `addr` as a client of `config`, for `localhost`, and completes the handshake.
pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Client> {
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
        .map_err(io::Error::other)?;
    let mut client = StreamOwned::new(conn, socket);
    while client.conn.is_handshaking() {
        client.conn.complete_io(&mut client.sock)?;
    }
    Ok(client)
}

/// Test data: not a multiple of anything, and different at every offset.
pub fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i >> 11) as u8).collect()
}

/// Writes `data` in `chunk`-byte pieces, reading each piece back before the next.
pub fn echo_through(client: &mut Client, data: &[u8], chunk: usize) -> io::Result<()> {
    let mut back = vec![0u8; chunk];
    for piece in data.chunks(chunk) {
        client.write_all(piece)?;
        client.flush()?;
        client.read_exact(&mut back[..piece.len()])?;
        assert!(back[..piece.len()] == *piece, "the echo differs from what was sent");
    }
    Ok(())
}

/// Sends close_notify and reads until the server's close_notify (a clean end of stream).
pub fn close_cleanly(client: &mut Client) -> io::Result<()> {
    client.conn.send_close_notify();
    client.flush()?;
    let mut rest = Vec::new();
    client.read_to_end(&mut rest)?;
    assert!(rest.is_empty(), "no data after close_notify");
    Ok(())
}
