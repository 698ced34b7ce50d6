//! The demo's server: a throwaway PKI in a temporary directory, and echo-peer run in a
//! child process (the runner's own executable, `__echo-peer`), so that the runner's heap
//! figures count the driver and ntsim and not the server. The child listens on 127.0.0.1
//! only, and exits when its stdin closes, so it never outlives the runner.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use echo_peer::{Config, Peer};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use crate::words::Failure;

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "__echo-peer";
/// The names the demo's server certificate carries; the demo connects as the first.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// What the child prints, then the address, once it listens.
const READY: &str = "listening on ";

/// A directory of our own under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo's PKI: an ECDSA P-256 CA and a server certificate it signed.
#[derive(Clone, Debug)]
pub struct DemoPki {
    /// The trust anchor the demo gives wsktls (and rustls).
    pub ca_der: Vec<u8>,
    /// The trust anchor, PEM, for `openssl -CAfile`.
    pub ca_pem: PathBuf,
    /// PEM: the server certificate, then the CA's.
    pub chain: PathBuf,
    /// PEM: the server's PKCS#8 key.
    pub key: PathBuf,
}

/// Makes the demo's PKI in `dir`. ECDSA only: ring makes the keys, no `openssl` needed.
pub fn make_pki(dir: &Path) -> Result<DemoPki, Failure> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Failure::plain("make the demo PKI", e.to_string()))?;
    make_pki_with_key(dir, "", key)
}

/// An ECDSA P-256 CA and a certificate for SERVER_NAMES with the server key `key`, written
/// to `dir` under file names that start with `prefix` (so several can share a directory).
pub fn make_pki_with_key(dir: &Path, prefix: &str, key: KeyPair) -> Result<DemoPki, Failure> {
    let failed = |e: &dyn std::fmt::Display| Failure::plain("make a PKI", e.to_string());
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| failed(&e))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = common_name("wsktls demo CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| failed(&e))?;
    let issuer = Issuer::new(ca, ca_key);

    let names = SERVER_NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut server = CertificateParams::new(names).map_err(|e| failed(&e))?;
    server.distinguished_name = common_name(SERVER_NAMES[0]);
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    let server_cert = server.signed_by(&key, &issuer).map_err(|e| failed(&e))?;

    let write = |name: &str, text: String| {
        let path = dir.join(format!("{prefix}{name}"));
        std::fs::write(&path, text).map(|()| path).map_err(|e| failed(&e))
    };
    Ok(DemoPki {
        ca_der: ca_cert.der().to_vec(),
        ca_pem: write("ca.pem", ca_cert.pem())?,
        chain: write("server-chain.pem", server_cert.pem() + &ca_cert.pem())?,
        key: write("server.key.pem", key.serialize_pem())?,
    })
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// echo-peer in a child process; killed when dropped.
pub struct PeerChild {
    child: Child,
    addr: SocketAddr,
}

impl PeerChild {
    /// Starts the child with this identity and waits until it listens.
    pub fn start(chain: &Path, key: &Path) -> Result<PeerChild, Failure> {
        PeerChild::start_with(chain, key, &[])
    }

    /// As `start`, with echo-peer's `--mode` and `--suite` options in `options`
    /// (e.g. `["--mode", "sink", "--suite", "TLS_AES_128_GCM_SHA256"]`).
    pub fn start_with(chain: &Path, key: &Path, options: &[&str]) -> Result<PeerChild, Failure> {
        let failed = |e: &dyn std::fmt::Display| Failure::plain("start echo-peer", e.to_string());
        let exe = std::env::current_exe().map_err(|e| failed(&e))?;
        let child = Command::new(exe)
            .arg(SUBCOMMAND)
            .arg("--cert")
            .arg(chain)
            .arg("--key")
            .arg(key)
            .args(options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed(&e))?;
        // Owned by a PeerChild at once, so that the child is killed on every way out.
        let mut peer = PeerChild { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        peer.addr = peer.wait_ready()?;
        Ok(peer)
    }

    /// Reads the child's one line: "listening on ADDR".
    fn wait_ready(&mut self) -> Result<SocketAddr, Failure> {
        let Some(stdout) = self.child.stdout.take() else {
            return Err(Failure::plain("start echo-peer", "its stdout was not captured"));
        };
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        line.trim()
            .strip_prefix(READY)
            .and_then(|addr| addr.parse().ok())
            .filter(|_| read.is_ok())
            .ok_or_else(|| {
                Failure::plain("start echo-peer", format!("it did not start (said {:?})", line.trim()))
            })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PeerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: `__echo-peer --cert CHAIN --key KEY [--mode echo|sink|source]
/// [--suite NAME]...`. Serves on 127.0.0.1 (a free port) until its stdin closes.
pub fn serve(args: &[String]) -> ExitCode {
    let (mut cert, mut key) = (None, None);
    let mut config = Config::new("", "");
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let parsed = match (flag.as_str(), args.next()) {
            ("--cert", Some(v)) => {
                cert = Some(PathBuf::from(v));
                Ok(())
            }
            ("--key", Some(v)) => {
                key = Some(PathBuf::from(v));
                Ok(())
            }
            ("--mode", Some(v)) => v.parse().map(|m| config.mode = m),
            ("--suite", Some(v)) => {
                echo_peer::suite_by_name(v).map(|s| config.suites.get_or_insert_with(Vec::new).push(s))
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unexpected argument {flag:?}"))),
        };
        if let Err(e) = parsed {
            eprintln!("{SUBCOMMAND}: {e}");
            return ExitCode::from(2);
        }
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        eprintln!("{SUBCOMMAND}: needs --cert and --key");
        return ExitCode::from(2);
    };
    (config.cert_chain_pem, config.key_pem) = (cert, key);
    let peer = match Peer::start(SocketAddr::from(([127, 0, 0, 1], 0)), config) {
        Ok(peer) => peer,
        Err(e) => {
            eprintln!("{SUBCOMMAND}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout().lock();
    if writeln!(stdout, "{READY}{}", peer.addr()).and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    // Serve until the runner closes our stdin (or dies): then nothing is left behind.
    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
    drop(peer);
    ExitCode::SUCCESS
}
