//! Hashes of certificates, for pinning and for telling the consumer whom it talks to.

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 of the DER SubjectPublicKeyInfo in an X.509 certificate (the value HPKP-style
/// pins name); `None` if the certificate cannot be parsed.
pub fn spki_sha256(certificate_der: &[u8]) -> Option<[u8; 32]> {
    let der = rustls::pki_types::CertificateDer::from(certificate_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(sha256(cert.subject_public_key_info().as_ref()))
}
