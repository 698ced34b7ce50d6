//! The consumer's TLS parameters, and the rustls client configuration made from them:
//! TLS 1.3 only, the consumer's trust anchors (never a system store), hostname checks,
//! an optional public-key pin, an optional client certificate, ALPN.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use wsktls_crypto::{Platform, SecretBytes, Suite, provider, spki_sha256, suite_of};

use super::TlsError;

/// A client certificate chain (leaf first, DER) and its PKCS#8 private key (DER), which
/// is wiped when released.
pub struct ClientAuth {
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: SecretBytes,
}

/// What the consumer tells us about the server it wants.
#[derive(Default)]
pub struct TlsParams {
    /// DNS name (sent as SNI and checked against the certificate) or IP address literal
    /// (checked against the certificate's IP SANs; no SNI).
    pub server_name: String,
    /// DER certificates to trust as roots. At least one: there is no system store in the
    /// kernel, and validation is never skipped.
    pub trust_anchors: Vec<Vec<u8>>,
    /// SHA-256 of the server's SubjectPublicKeyInfo, checked after (not instead of) chain
    /// and name validation.
    pub pin_sha256: Option<[u8; 32]>,
    pub client_auth: Option<ClientAuth>,
    /// Protocols to offer, most preferred first; empty for no ALPN.
    pub alpn: Vec<Vec<u8>>,
    /// Suites to offer, most preferred first; empty for all three.
    pub suites: Vec<Suite>,
}

/// The rustls configuration and server name for one connection.
pub struct ClientSetup {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsParams {
    /// Builds the rustls configuration. `BadParameters` for anything the consumer got
    /// wrong: no anchors, an anchor or key that does not parse, an invalid server name.
    pub fn client_setup<P: Platform>(&self, platform: &'static P) -> Result<ClientSetup, TlsError> {
        let server_name =
            ServerName::try_from(self.server_name.as_str()).map_err(|_| TlsError::BadParameters)?.to_owned();
        let (mut provider, time) = provider(platform);
        if !self.suites.is_empty() {
            let mut chosen = Vec::new();
            for want in &self.suites {
                chosen.extend(provider.cipher_suites.iter().copied().filter(|s| suite_of(*s) == Some(*want)));
            }
            Arc::get_mut(&mut provider).ok_or(TlsError::Internal)?.cipher_suites = chosen;
        }
        let verifier = self.verifier(&provider)?;
        let builder = ClientConfig::builder_with_details(provider, time)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|_| TlsError::Internal)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client_auth {
            None => builder.with_no_client_auth(),
            Some(auth) => {
                let chain = auth.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
                // Parsed from the consumer's bytes in place: no copy of the key to wipe.
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(auth.key_pkcs8.as_slice()));
                let key = any_supported_type(&key).map_err(|_| TlsError::BadParameters)?;
                let certified = CertifiedKey::new(chain, key);
                // The chain's leaf must be the key's (a mismatch would fail every handshake).
                certified.keys_match().map_err(|_| TlsError::BadParameters)?;
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
            }
        };
        config.alpn_protocols = self.alpn.clone();
        // The record layer is ours after the handshake: rustls must hand over the secrets.
        config.enable_secret_extraction = true;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ClientSetup { config: Arc::new(config), server_name })
    }

    fn verifier(&self, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        if self.trust_anchors.is_empty() {
            return Err(TlsError::BadParameters);
        }
        let mut roots = RootCertStore::empty();
        for der in &self.trust_anchors {
            roots.add(CertificateDer::from(der.as_slice())).map_err(|_| TlsError::BadParameters)?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|_| TlsError::BadParameters)?;
        Ok(match self.pin_sha256 {
            None => webpki,
            Some(pin) => Arc::new(PinnedVerifier { inner: webpki, pin }),
        })
    }
}

/// Full WebPKI validation, then the leaf's public key against the pin.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pin: [u8; 32],
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match spki_sha256(end_entity) {
            Some(hash) if hash == self.pin => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
