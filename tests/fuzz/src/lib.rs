//! The fuzz targets' shared harness: a simulated kernel per process with the checks made
//! after every input (no verifier report, nothing left allocated), consumer IRPs whose
//! completions are counted, MDL chains of input-chosen shapes, and the test PKI.

pub mod chain;
pub mod irp;
pub mod pki;
pub mod rig;
pub mod stats;

/// What tests/common/hostile.rs asks of its parent module: `peers::test_pki().server`'s
/// chain and key, here the fuzz PKI's.
pub mod peers {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    pub struct Identity {
        pub chain: PathBuf,
        pub key: PathBuf,
    }

    pub struct Pki {
        pub server: Identity,
    }

    pub fn test_pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| {
            let p = crate::pki::pki();
            Pki { server: Identity { chain: p.chain_pem.clone(), key: p.key_pem.clone() } }
        })
    }
}

/// The issue7-hostile helper's loopback TLS 1.3 server, reused as it is: a raw peer
/// after the ClientHello, and a real handshake followed by records sealed with the
/// extracted keys.
#[path = "../../common/hostile.rs"]
pub mod hostile;
