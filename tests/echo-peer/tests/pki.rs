//! The test PKI: quick, repeatable into the same directory, and each file what it claims.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use echo_peer::pki::{self, Options};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[test]
fn generates_quickly_and_again_into_the_same_directory() {
    let dir = dir("pki-twice");
    let started = Instant::now();
    let first = pki::generate(&dir).unwrap();
    let took = started.elapsed();
    eprintln!("standard PKI generated in {took:?}");
    assert!(took < Duration::from_secs(5), "generation took {took:?}");
    let ca_before = fs::read(&first.ca.der).unwrap();

    let second = pki::generate(&dir).unwrap();
    assert_eq!(first.server.cert, second.server.cert, "same paths");
    assert_ne!(fs::read(&second.ca.der).unwrap(), ca_before, "fresh keys and certificates");
    assert!(second.server_rsa4096.is_none());
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_file_parses_as_what_it_claims() {
    let pki = pki::generate_with(&dir("pki-files"), Options { rsa4096: true }).unwrap();
    let rsa4096 = pki.server_rsa4096.clone().expect("asked for");
    for ca in [&pki.ca, &pki.untrusted_ca, &pki.client_ca] {
        let pem = CertificateDer::from_pem_file(&ca.cert).unwrap();
        assert_eq!(pem.as_ref(), fs::read(&ca.der).unwrap(), "{} is {}", ca.der.display(), ca.cert.display());
        PrivateKeyDer::from_pem_file(&ca.key).unwrap();
    }
    for id in [
        &pki.server,
        &pki.server_p384,
        &pki.server_rsa,
        &rsa4096,
        &pki.server_ed25519,
        &pki.expired,
        &pki.other_name,
        &pki.untrusted,
        &pki.client,
    ] {
        let chain = CertificateDer::pem_file_iter(&id.chain).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(chain.len(), 2, "{}: leaf then CA", id.chain.display());
        assert_eq!(chain[0], CertificateDer::from_pem_file(&id.cert).unwrap());
        // Every key is PKCS#8 ("BEGIN PRIVATE KEY"), which all three peers read.
        PrivatePkcs8KeyDer::from_pem_file(&id.key).unwrap_or_else(|e| panic!("{}: {e}", id.key.display()));
    }
    fs::remove_dir_all(&pki.dir).unwrap();
}
