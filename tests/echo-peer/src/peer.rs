//! The listening side: the rustls server configuration, the accept thread, one thread per
//! connection, and the counters the tests read. Binds to loopback addresses only.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::connection;
use crate::{Config, Mode};

/// How long `Drop` waits for its own wake-up connection to the listener.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// A running server. Dropping it stops accepting and closes every connection still open
/// (without close_notify).
pub struct Peer {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stopping: Arc<AtomicBool>,
    live: Arc<Live>,
    accept: Option<JoinHandle<()>>,
}

impl Peer {
    /// Binds `listen` (a loopback address; port 0 picks a free one) and serves `config`
    /// until dropped. Fails with `InvalidInput` for any address that is not loopback, and
    /// when the certificates, key or suites cannot make a TLS 1.3 server.
    pub fn start(listen: SocketAddr, config: Config) -> io::Result<Peer> {
        if !is_loopback(listen.ip()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("echo-peer listens on loopback addresses only, not {}", listen.ip()),
            ));
        }
        let tls = Arc::new(server_config(&config)?);
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Live::default());
        let serve = Serve {
            tls,
            mode: config.mode,
            key_update_every: config.key_update_every.filter(|&n| n > 0),
            stats: stats.clone(),
            stopping: stopping.clone(),
            live: live.clone(),
        };
        let accept = thread::Builder::new()
            .name(format!("echo-peer {addr}"))
            .spawn(move || serve.accept_loop(listener))?;
        Ok(Peer { addr, stats, stopping, live, accept: Some(accept) })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the server has seen so far; stays readable after the peer is dropped.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // The accept thread sits in accept(): one connection of our own wakes it up.
        let _ = TcpStream::connect_timeout(&self.addr, WAKE_TIMEOUT);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        self.live.close_all();
    }
}

/// Counters over every connection a [`Peer`] served.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    finished: AtomicU64,
    handshakes: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    key_updates: AtomicU64,
    last_ending: AtomicU8,
    /// The last fatal alert a client sent (its code + 1; 0 for none).
    last_alert: AtomicU16,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client sent close_notify; the server answered with its own and closed.
    CloseNotify,
    /// The client's TCP stream ended (FIN) without a close_notify.
    TcpCloseWithoutNotify,
    /// A TLS error (the handshake failed, a record did not decrypt, an alert arrived) or a
    /// socket error such as a reset.
    Error,
    /// The [`Peer`] was dropped while the connection was open.
    Stopped,
}

impl Ending {
    const ALL: [Ending; 4] =
        [Ending::CloseNotify, Ending::TcpCloseWithoutNotify, Ending::Error, Ending::Stopped];

    fn code(self) -> u8 {
        self as u8 + 1
    }
}

impl Stats {
    /// Connections accepted.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose thread has finished, however they ended.
    pub fn connections_finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    /// Handshakes that completed.
    pub fn handshakes_completed(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Plaintext bytes received, over all connections.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Plaintext bytes handed to TLS for sending (echoed or sourced), over all connections.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// KeyUpdates the server initiated (each one also asked the client to update).
    pub fn key_updates_initiated(&self) -> u64 {
        self.key_updates.load(Ordering::SeqCst)
    }

    /// How the most recently finished connection ended.
    pub fn last_ending(&self) -> Option<Ending> {
        let code = self.last_ending.load(Ordering::SeqCst);
        Ending::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Waits until at least `n` connections have finished; false if `timeout` passed first.
    pub fn wait_finished(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.connections_finished() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub(crate) fn count_received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::SeqCst);
    }

    pub(crate) fn count_sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::SeqCst);
    }

    pub(crate) fn count_key_update(&self) {
        self.key_updates.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn count_handshake(&self) {
        self.handshakes.fetch_add(1, Ordering::SeqCst);
    }

    /// The description of the last fatal alert a client sent us, if any.
    pub fn last_alert_received(&self) -> Option<rustls::AlertDescription> {
        match self.last_alert.load(Ordering::SeqCst) {
            0 => None,
            code => Some(rustls::AlertDescription::from((code - 1) as u8)),
        }
    }

    pub(crate) fn record_alert(&self, alert: rustls::AlertDescription) {
        self.last_alert.store(u16::from(u8::from(alert)) + 1, Ordering::SeqCst);
    }

    fn finish(&self, ending: Ending) {
        self.last_ending.store(ending.code(), Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// What every connection thread shares.
struct Serve {
    tls: Arc<ServerConfig>,
    mode: Mode,
    key_update_every: Option<u64>,
    stats: Arc<Stats>,
    stopping: Arc<AtomicBool>,
    live: Arc<Live>,
}

impl Serve {
    fn accept_loop(self, listener: TcpListener) {
        let serve = Arc::new(self);
        for (id, stream) in listener.incoming().enumerate() {
            if serve.stopping.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else { continue };
            serve.stats.accepted.fetch_add(1, Ordering::SeqCst);
            let conn = serve.clone();
            let spawned = thread::Builder::new().name(format!("echo-peer conn {id}")).spawn(move || {
                let ending = conn.serve_one(id, stream);
                conn.stats.finish(ending);
            });
            if spawned.is_err() {
                // The connection went down with the closure: the client sees it closed.
                serve.stats.finish(Ending::Error);
            }
        }
    }

    fn serve_one(&self, id: usize, stream: TcpStream) -> Ending {
        let Ok(handle) = stream.try_clone() else { return Ending::Error };
        self.live.insert(id, handle);
        let _ = stream.set_nodelay(true);
        let ending = match rustls::ServerConnection::new(self.tls.clone()) {
            Ok(tls) => connection::serve(stream, tls, self.mode, self.key_update_every, &self.stats),
            Err(_) => Ending::Error,
        };
        self.live.remove(id);
        if self.stopping.load(Ordering::SeqCst) && ending != Ending::CloseNotify {
            Ending::Stopped
        } else {
            ending
        }
    }
}

/// Sockets of the connections being served, so `Drop` can close them.
#[derive(Default)]
struct Live(Mutex<HashMap<usize, TcpStream>>);

impl Live {
    fn insert(&self, id: usize, stream: TcpStream) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(id, stream);
    }

    fn remove(&self, id: usize) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    fn close_all(&self) {
        for stream in self.0.lock().unwrap_or_else(PoisonError::into_inner).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// A TLS 1.3-only rustls server on ring: the identity from `config`, the chosen suites,
/// optional client authentication, and stateless tickets (two NewSessionTickets after each
/// full handshake, rustls's default count).
fn server_config(config: &Config) -> io::Result<ServerConfig> {
    let mut provider = ring::default_provider();
    if let Some(wanted) = &config.suites {
        provider.cipher_suites = wanted
            .iter()
            .filter_map(|w| provider.cipher_suites.iter().find(|s| s.suite() == *w).copied())
            .collect();
    }
    let provider = Arc::new(provider);
    let chain = read_certs(&config.cert_chain_pem)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_pem).map_err(|e| pem_error(&config.key_pem, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(tls_error)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(chain, key).map_err(tls_error)?;
    server.ticketer = ring::Ticketer::new().map_err(tls_error)?;
    Ok(server)
}

fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    // Read first, so a missing file says so rather than "no certificates".
    let pem = fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no certificates", path.display()),
        ));
    }
    Ok(certs)
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_means_127_8_and_v6_loopback_and_their_mapped_forms() {
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["0.0.0.0", "::", "10.0.0.1", "192.0.2.1", "::ffff:192.0.2.1", "fe80::1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
