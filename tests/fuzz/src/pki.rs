//! A small test PKI made in-process (rcgen, ECDSA P-256): a CA and a server certificate
//! for `localhost`, 127.0.0.1 and ::1, written as PEM for echo-peer. No `openssl` needed,
//! so a fuzz target starts in a fraction of a second.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// The name the server certificate carries (besides 127.0.0.1 and ::1).
pub const SERVER_NAME: &str = "localhost";

pub struct Pki {
    /// The trust anchor, DER.
    pub ca_der: Vec<u8>,
    /// The server's leaf certificate, DER.
    pub server_der: Vec<u8>,
    /// PEM files for echo-peer: the server's chain (leaf, CA) and its PKCS#8 key.
    pub chain_pem: PathBuf,
    pub key_pem: PathBuf,
    /// The server's key, PKCS#8 DER (for an in-harness rustls server).
    pub key_der: Vec<u8>,
}

const DIR_PREFIX: &str = "wsktls-fuzz-pki-";

/// The process's PKI, made on first use into a temporary directory of its own (stale
/// directories of processes that are gone are removed first).
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = std::env::temp_dir();
        remove_stale(&root);
        let dir = root.join(format!("{DIR_PREFIX}{}", std::process::id()));
        make(&dir).unwrap_or_else(|e| panic!("making the fuzz PKI in {}: {e}", dir.display()))
    })
}

fn remove_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn make(dir: &Path) -> Result<Pki, Box<dyn std::error::Error>> {
    fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = common_name("wsktls fuzz CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::new(vec![SERVER_NAME.into(), "127.0.0.1".into(), "::1".into()])?;
    leaf.distinguished_name = common_name(SERVER_NAME);
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;

    let chain_pem = dir.join("server-chain.pem");
    let key_pem = dir.join("server.key.pem");
    fs::write(&chain_pem, cert.pem() + &ca_cert.pem())?;
    fs::write(&key_pem, key.serialize_pem())?;
    Ok(Pki {
        ca_der: ca_cert.der().to_vec(),
        server_der: cert.der().to_vec(),
        chain_pem,
        key_pem,
        key_der: key.serialize_der(),
    })
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}
