//! The cryptography wsktls runs in the kernel.
//!
//! - [`provider`]: the rustls `CryptoProvider` for the handshake: the three TLS 1.3
//!   suites, X25519 / P-256 / P-384, and signature verification for ECDSA P-256/P-384,
//!   Ed25519, RSA-PSS and RSA PKCS#1 with 2048- to 4096-bit keys. Randomness and time come
//!   from the [`Platform`].
//! - [`TrafficKey`]: one direction's record-protection key (AEAD key and IV) for the record
//!   layer that runs after the handshake; wiped when dropped.
//! - [`Platform`]: what the host or the kernel supplies: random bytes, wall-clock time, and
//!   the vector-register state that bulk crypto needs saved around it.
//!
//! Nothing here names an NT item; the driver implements [`Platform`] over `src/nt`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod aead;
mod digest;
mod platform;
mod provider;
mod secret;

pub use aead::{AeadFailed, Suite, TAG_LEN, TrafficKey};
pub use digest::{sha256, spki_sha256};
pub use platform::{Platform, RandomUnavailable, VectorStateUnavailable};
pub use provider::{provider, suite_of};
pub use secret::{OutOfMemory, SecretBytes, WipeOnFree, Wiped, wipe};

/// Re-exported so the driver names the exact rustls this provider was built for.
pub use rustls;
