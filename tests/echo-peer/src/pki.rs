//! The test PKI: every certificate and key the tests use, made fresh into a directory.
//!
//! Nothing here is a secret: keys are random on each run and live only in the output
//! directory. ECDSA keys come from ring (through rcgen). RSA and Ed25519 keys come from
//! `openssl genpkey`: ring cannot generate RSA keys, and writes Ed25519 keys as PKCS#8 v2,
//! which OpenSSL 3.0 cannot read. rcgen signs every certificate.
//! `keys/README.md` lists the files and what each one is for.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256,
    SignatureAlgorithm, date_time_ymd,
};
use time::{Duration, OffsetDateTime};

/// The name every server certificate (but `other_name`'s) carries, besides 127.0.0.1 and ::1.
pub const SERVER_NAME: &str = "localhost";

/// The only name in `other_name`'s certificate: a client that expects `SERVER_NAME` must
/// refuse it.
pub const OTHER_NAME: &str = "other.example";

/// The subject alternative names of the server certificates.
const SERVER_SANS: [&str; 3] = [SERVER_NAME, "127.0.0.1", "::1"];

/// Validity of everything current: from a day ago (clock skew), for about ten years.
const BACKDATE: Duration = Duration::days(1);
const LIFETIME: Duration = Duration::days(3653);

/// A certificate authority: its certificate (PEM and DER) and its key.
#[derive(Clone, Debug)]
pub struct Authority {
    pub cert: PathBuf,
    pub der: PathBuf,
    pub key: PathBuf,
}

/// An end-entity certificate, its PKCS#8 key, and `chain`: the certificate then its issuer's.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: PathBuf,
}

/// The files [`generate`] wrote. Servers are for `SERVER_NAME`, 127.0.0.1 and ::1 and
/// signed by `ca` unless said otherwise.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
    /// The trust anchor the tests give the driver: ECDSA P-256.
    pub ca: Authority,
    /// ECDSA P-256: signatures ecdsa_secp256r1_sha256.
    pub server: Identity,
    /// ECDSA P-384: signatures ecdsa_secp384r1_sha384.
    pub server_p384: Identity,
    /// RSA-2048: TLS 1.3 signs with RSA-PSS (rsa_pss_rsae_*).
    pub server_rsa: Identity,
    /// RSA-4096, made only with [`Options::rsa4096`] (its key takes ~1 s to generate).
    pub server_rsa4096: Option<Identity>,
    /// Ed25519: signatures ed25519.
    pub server_ed25519: Identity,
    /// Valid from 2020-01-01 to 2021-01-01 only.
    pub expired: Identity,
    /// Named `OTHER_NAME` only.
    pub other_name: Identity,
    /// A second CA, which the tests never trust.
    pub untrusted_ca: Authority,
    /// A server certificate signed by `untrusted_ca`.
    pub untrusted: Identity,
    /// The CA a mutual-TLS server trusts for client certificates.
    pub client_ca: Authority,
    /// A client certificate (extended key usage clientAuth) signed by `client_ca`.
    pub client: Identity,
}

/// What [`generate_with`] makes beyond the standard set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Also an RSA-4096 server (`server-rsa4096.*`).
    pub rsa4096: bool,
}

/// Writes the standard set into `dir` (created if missing; files there are replaced).
pub fn generate(dir: &Path) -> io::Result<Pki> {
    generate_with(dir, Options::default())
}

/// Writes the standard set and the `options` extras into `dir`.
pub fn generate_with(dir: &Path, options: Options) -> io::Result<Pki> {
    fs::create_dir_all(dir)?;
    // RSA key generation is the slow part: start it first and let it run meanwhile.
    let rsa2048 = OpensslKey::rsa(2048)?;
    let rsa4096 = if options.rsa4096 { Some(OpensslKey::rsa(4096)?) } else { None };
    let ed25519 = OpensslKey::ed25519()?;

    let now = OffsetDateTime::now_utc().replace_nanosecond(0).map_err(other)?;
    let current = (now - BACKDATE, now + LIFETIME);
    let out = Out { dir };

    let (ca, ca_issuer) = out.authority("ca", "wsktls test CA", current)?;
    let server_cert = |name: &str, key: KeyPair| {
        out.leaf(name, &key, &ca_issuer, &ca, &Leaf { sans: &SERVER_SANS, validity: current, client: false })
    };
    let server = server_cert("server", generate_key(&PKCS_ECDSA_P256_SHA256)?)?;
    let server_p384 = server_cert("server-p384", generate_key(&PKCS_ECDSA_P384_SHA384)?)?;
    let expired = out.leaf(
        "expired",
        &generate_key(&PKCS_ECDSA_P256_SHA256)?,
        &ca_issuer,
        &ca,
        &Leaf {
            sans: &SERVER_SANS,
            validity: (date_time_ymd(2020, 1, 1), date_time_ymd(2021, 1, 1)),
            client: false,
        },
    )?;
    let other_name = out.leaf(
        "other-name",
        &generate_key(&PKCS_ECDSA_P256_SHA256)?,
        &ca_issuer,
        &ca,
        &Leaf { sans: &[OTHER_NAME], validity: current, client: false },
    )?;

    let (untrusted_ca, untrusted_issuer) = out.authority("untrusted-ca", "wsktls untrusted CA", current)?;
    let untrusted = out.leaf(
        "untrusted",
        &generate_key(&PKCS_ECDSA_P256_SHA256)?,
        &untrusted_issuer,
        &untrusted_ca,
        &Leaf { sans: &SERVER_SANS, validity: current, client: false },
    )?;

    let (client_ca, client_issuer) = out.authority("client-ca", "wsktls test client CA", current)?;
    let client = out.leaf(
        "client",
        &generate_key(&PKCS_ECDSA_P256_SHA256)?,
        &client_issuer,
        &client_ca,
        &Leaf { sans: &["client.wsktls.test"], validity: current, client: true },
    )?;

    let server_ed25519 = server_cert("server-ed25519", ed25519.finish()?)?;
    let server_rsa = server_cert("server-rsa", rsa2048.finish()?)?;
    let server_rsa4096 = match rsa4096 {
        Some(key) => Some(server_cert("server-rsa4096", key.finish()?)?),
        None => None,
    };

    Ok(Pki {
        dir: dir.to_path_buf(),
        ca,
        server,
        server_p384,
        server_rsa,
        server_rsa4096,
        server_ed25519,
        expired,
        other_name,
        untrusted_ca,
        untrusted,
        client_ca,
        client,
    })
}

/// What distinguishes one end-entity certificate from another.
struct Leaf<'a> {
    sans: &'a [&'a str],
    validity: (OffsetDateTime, OffsetDateTime),
    /// clientAuth rather than serverAuth.
    client: bool,
}

struct Out<'a> {
    dir: &'a Path,
}

impl Out<'_> {
    /// A self-signed CA `name`, written as `name.pem`, `name.der` and `name.key.pem`.
    fn authority(
        &self,
        name: &str,
        common_name: &str,
        (not_before, not_after): (OffsetDateTime, OffsetDateTime),
    ) -> io::Result<(Authority, Issuer<'static, KeyPair>)> {
        let key = generate_key(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_only(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).map_err(other)?;
        let authority = Authority {
            cert: self.write(&format!("{name}.pem"), cert.pem().as_bytes())?,
            der: self.write(&format!("{name}.der"), cert.der())?,
            key: self.write(&format!("{name}.key.pem"), key.serialize_pem().as_bytes())?,
        };
        Ok((authority, Issuer::new(params, key)))
    }

    /// An end-entity certificate `name` for `key`, signed by `issuer` (whose certificate is
    /// `authority`), written as `name.pem`, `name.key.pem` and `name-chain.pem`.
    fn leaf(
        &self,
        name: &str,
        key: &KeyPair,
        issuer: &Issuer<'_, KeyPair>,
        authority: &Authority,
        leaf: &Leaf<'_>,
    ) -> io::Result<Identity> {
        let mut params = CertificateParams::new(leaf.sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(other)?;
        params.distinguished_name = common_name_only(leaf.sans[0]);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if leaf.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = leaf.validity;
        let cert = params.signed_by(key, issuer).map_err(other)?;
        let ca_pem = fs::read_to_string(&authority.cert)?;
        Ok(Identity {
            cert: self.write(&format!("{name}.pem"), cert.pem().as_bytes())?,
            key: self.write(&format!("{name}.key.pem"), key.serialize_pem().as_bytes())?,
            chain: self.write(&format!("{name}-chain.pem"), (cert.pem() + &ca_pem).as_bytes())?,
        })
    }

    /// Writes `file` whole or not at all (a reader never sees half of it).
    fn write(&self, file: &str, contents: &[u8]) -> io::Result<PathBuf> {
        let path = self.dir.join(file);
        let partial = self.dir.join(format!(".{file}.{}.partial", std::process::id()));
        fs::write(&partial, contents)?;
        fs::rename(&partial, &path)?;
        Ok(path)
    }
}

/// A key being generated by `openssl genpkey` (PKCS#8 v1 PEM on its stdout).
struct OpensslKey {
    what: String,
    alg: &'static SignatureAlgorithm,
    child: Child,
}

impl OpensslKey {
    fn rsa(bits: u32) -> io::Result<OpensslKey> {
        let bits_option = format!("rsa_keygen_bits:{bits}");
        Self::start(format!("RSA-{bits}"), &PKCS_RSA_SHA256, &["-algorithm", "RSA", "-pkeyopt", &bits_option])
    }

    fn ed25519() -> io::Result<OpensslKey> {
        Self::start("Ed25519".into(), &PKCS_ED25519, &["-algorithm", "ED25519"])
    }

    fn start(what: String, alg: &'static SignatureAlgorithm, args: &[&str]) -> io::Result<OpensslKey> {
        let child = Command::new("openssl")
            .arg("genpkey")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("running `openssl genpkey` for an {what} key: {e}"))
            })?;
        Ok(OpensslKey { what, alg, child })
    }

    fn finish(self) -> io::Result<KeyPair> {
        let output = self.child.wait_with_output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "`openssl genpkey` ({}) failed: {}",
                self.what,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let pem = String::from_utf8(output.stdout).map_err(other)?;
        KeyPair::from_pkcs8_pem_and_sign_algo(&pem, self.alg).map_err(other)
    }
}

fn generate_key(alg: &'static SignatureAlgorithm) -> io::Result<KeyPair> {
    KeyPair::generate_for(alg).map_err(other)
}

fn common_name_only(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}
