//! Record protection for one direction: the AEAD key and IV of a TLS 1.3 traffic secret,
//! the per-record nonce (RFC 8446 §5.3), and sealing and opening in place.

use ring::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use zeroize::Zeroize;

use crate::secret::Wiped;

/// Bytes of authentication tag after every protected record, for all three suites.
pub const TAG_LEN: usize = 16;

/// The record-protection algorithm a traffic secret is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// Sealing or opening failed. Opening: the record is not authentic (wrong key, wrong
/// sequence number, or tampered bytes). Sealing: the input cannot be sealed (too long).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AeadFailed;

/// One direction's key and IV. Both are wiped when it is dropped.
pub struct TrafficKey {
    suite: Suite,
    key: Wiped<LessSafeKey>,
    iv: [u8; NONCE_LEN],
}

impl TrafficKey {
    /// The key for `secrets`, which rustls derived. `None` for a suite we do not offer
    /// (rustls may add variants).
    pub fn new(secrets: &ConnectionTrafficSecrets) -> Option<TrafficKey> {
        let (suite, algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (Suite::Aes128Gcm, &aead::AES_128_GCM, key, iv)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (Suite::Aes256Gcm, &aead::AES_256_GCM, key, iv)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Suite::Chacha20Poly1305, &aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return None,
        };
        Self::from_parts(suite, algorithm, key.as_ref(), iv.as_ref())
    }

    /// The key from raw bytes: what the known-answer tests and the benchmarks use.
    pub fn from_raw(suite: Suite, key: &[u8], iv: &[u8]) -> Option<TrafficKey> {
        let algorithm = match suite {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        Self::from_parts(suite, algorithm, key, iv)
    }

    fn from_parts(
        suite: Suite,
        algorithm: &'static aead::Algorithm,
        key: &[u8],
        iv: &[u8],
    ) -> Option<TrafficKey> {
        let iv: [u8; NONCE_LEN] = iv.try_into().ok()?;
        let key = UnboundKey::new(algorithm, key).ok()?;
        Some(TrafficKey { suite, key: Wiped::new(LessSafeKey::new(key)), iv })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// RFC 8446 §5.3: the sequence number, big-endian and left-padded to the IV's length,
    /// XORed with the IV.
    fn nonce(&self, sequence: u64) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(sequence.to_be_bytes()) {
            *n ^= s;
        }
        Nonce::assume_unique_for_key(nonce)
    }

    /// Encrypts `data` in place as record number `sequence` with `header` as additional
    /// data, and writes the tag into `tag` (TAG_LEN bytes: where it goes in the record, so
    /// that it is not moved through the stack on the way).
    pub fn seal_in_place(
        &self,
        sequence: u64,
        header: &[u8],
        data: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), AeadFailed> {
        if tag.len() != TAG_LEN {
            return Err(AeadFailed);
        }
        let sealed = self.key.seal_in_place_separate_tag(self.nonce(sequence), Aad::from(header), data);
        tag.copy_from_slice(sealed.map_err(|_| AeadFailed)?.as_ref());
        Ok(())
    }

    /// Decrypts `data` (ciphertext followed by the tag) in place as record number
    /// `sequence`, and returns the plaintext, which is `data` without the tag. On failure
    /// the contents of `data` are unspecified and must not be used.
    pub fn open_in_place<'a>(
        &self,
        sequence: u64,
        header: &[u8],
        data: &'a mut [u8],
    ) -> Result<&'a mut [u8], AeadFailed> {
        self.key.open_in_place(self.nonce(sequence), Aad::from(header), data).map_err(|_| AeadFailed)
    }
}

impl Drop for TrafficKey {
    fn drop(&mut self) {
        // The key schedule is wiped by `Wiped`; the IV is derived from the same secret.
        self.iv.zeroize();
    }
}
