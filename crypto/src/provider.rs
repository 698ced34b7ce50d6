//! The rustls `CryptoProvider` for the kernel handshake.

use alloc::sync::Arc;
use alloc::vec;

use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};
use rustls::{CipherSuite, SignatureScheme, SupportedCipherSuite};
use webpki::ring as algs;

use crate::aead::Suite;
use crate::platform::{Platform, PlatformRandom, PlatformTime};

/// The provider, and the clock certificate validation reads. Suites in order of
/// preference: AES-128-GCM (the cheapest with AES-NI), AES-256-GCM, ChaCha20-Poly1305.
///
/// Ephemeral key exchange and client-certificate signing run inside ring, which draws
/// from its own system RNG: `getrandom`, whose Windows import the kernel link resolves to
/// ksecdd.sys's BCryptGenRandom (the kernel build's business). Everything rustls itself
/// draws (client random, session IDs, padding) comes from `platform`.
pub fn provider<P: Platform>(
    platform: &'static P,
) -> (Arc<CryptoProvider>, Arc<dyn rustls::time_provider::TimeProvider>) {
    let provider = CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: PlatformRandom::of(platform),
        key_provider: default_provider().key_provider,
    };
    (Arc::new(provider), Arc::new(PlatformTime(platform)))
}

/// The record-protection algorithm of a negotiated suite; `None` for anything but our
/// three TLS 1.3 suites.
pub fn suite_of(suite: SupportedCipherSuite) -> Option<Suite> {
    match suite.suite() {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128Gcm),
        CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256Gcm),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(Suite::Chacha20Poly1305),
        _ => None,
    }
}

/// An RSA verification algorithm limited to moduli of 2048 to 4096 bits: webpki's accept
/// up to 8192, whose verification costs a kernel thread several times as long for no
/// deployment we serve.
#[derive(Debug)]
struct RsaUpTo4096(&'static dyn SignatureVerificationAlgorithm);

const RSA_MAX_BITS: usize = 4096;

impl SignatureVerificationAlgorithm for RsaUpTo4096 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        match rsa_modulus_bits(public_key) {
            Some(bits) if bits <= RSA_MAX_BITS => self.0.verify_signature(public_key, message, signature),
            _ => Err(InvalidSignature),
        }
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.0.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.0.signature_alg_id()
    }
}

/// The modulus length in bits of a DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER,
/// publicExponent INTEGER }`; `None` if it is not one. The lower bound (2048) is webpki's.
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let (tag, sequence, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, modulus, _) = der_element(sequence)?;
    if tag != 0x02 {
        return None;
    }
    let first = modulus.iter().position(|&b| b != 0)?;
    let significant = &modulus[first..];
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

/// One DER element: (tag, contents, rest). Definite lengths of up to four bytes.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

static RSA_PSS_SHA256: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY);
static RSA_PSS_SHA384: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY);
static RSA_PSS_SHA512: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY);
static RSA_PKCS1_SHA256: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PKCS1_2048_8192_SHA256);
static RSA_PKCS1_SHA384: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PKCS1_2048_8192_SHA384);
static RSA_PKCS1_SHA512: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PKCS1_2048_8192_SHA512);
static RSA_PKCS1_SHA256_ABSENT: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS);
static RSA_PKCS1_SHA384_ABSENT: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS);
static RSA_PKCS1_SHA512_ABSENT: RsaUpTo4096 = RsaUpTo4096(algs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS);

/// Certificate-chain signatures (`all`) and TLS 1.3 CertificateVerify schemes (`mapping`).
/// (rustls itself refuses PKCS#1 in a TLS 1.3 CertificateVerify; it stays for certificates.)
static SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        algs::ECDSA_P256_SHA256,
        algs::ECDSA_P256_SHA384,
        algs::ECDSA_P384_SHA256,
        algs::ECDSA_P384_SHA384,
        algs::ED25519,
        &RSA_PSS_SHA256,
        &RSA_PSS_SHA384,
        &RSA_PSS_SHA512,
        &RSA_PKCS1_SHA256,
        &RSA_PKCS1_SHA384,
        &RSA_PKCS1_SHA512,
        &RSA_PKCS1_SHA256_ABSENT,
        &RSA_PKCS1_SHA384_ABSENT,
        &RSA_PKCS1_SHA512_ABSENT,
    ],
    mapping: &[
        (SignatureScheme::ECDSA_NISTP384_SHA384, &[algs::ECDSA_P384_SHA384, algs::ECDSA_P256_SHA384]),
        (SignatureScheme::ECDSA_NISTP256_SHA256, &[algs::ECDSA_P256_SHA256, algs::ECDSA_P384_SHA256]),
        (SignatureScheme::ED25519, &[algs::ED25519]),
        (SignatureScheme::RSA_PSS_SHA512, &[&RSA_PSS_SHA512]),
        (SignatureScheme::RSA_PSS_SHA384, &[&RSA_PSS_SHA384]),
        (SignatureScheme::RSA_PSS_SHA256, &[&RSA_PSS_SHA256]),
        (SignatureScheme::RSA_PKCS1_SHA512, &[&RSA_PKCS1_SHA512]),
        (SignatureScheme::RSA_PKCS1_SHA384, &[&RSA_PKCS1_SHA384]),
        (SignatureScheme::RSA_PKCS1_SHA256, &[&RSA_PKCS1_SHA256]),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_public_key(modulus: &[u8]) -> alloc::vec::Vec<u8> {
        let mut integer = vec![0x02, 0x82, (modulus.len() >> 8) as u8, modulus.len() as u8];
        integer.extend_from_slice(modulus);
        integer.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut der = vec![0x30, 0x82, (integer.len() >> 8) as u8, integer.len() as u8];
        der.extend_from_slice(&integer);
        der
    }

    #[test]
    fn modulus_length_counts_significant_bits() {
        // A leading zero byte keeps a modulus with its top bit set positive.
        let mut m = vec![0u8; 513];
        m[1] = 0x80;
        assert_eq!(rsa_modulus_bits(&rsa_public_key(&m)), Some(4096));
        let mut m = vec![0u8; 1025];
        m[1] = 0x80;
        assert_eq!(rsa_modulus_bits(&rsa_public_key(&m)), Some(8192));
        assert_eq!(rsa_modulus_bits(&[0x30, 0x05, 0x02]), None);
    }

    #[test]
    fn an_rsa_key_above_4096_bits_is_refused_before_verification() {
        let mut m = vec![0u8; 1025];
        m[1] = 0x80;
        let key = rsa_public_key(&m);
        assert!(RSA_PSS_SHA256.verify_signature(&key, b"m", &[0; 1024]).is_err());
    }

    #[test]
    fn every_signature_family_the_issue_names_is_offered() {
        let schemes = SIGNATURE_ALGORITHMS.supported_schemes();
        for scheme in [
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ] {
            assert!(schemes.contains(&scheme), "{scheme:?}");
        }
    }
}
