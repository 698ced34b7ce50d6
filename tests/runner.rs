//! The host runner (`src/bin/wsktls.rs`) as a user runs it: the built executable, its exit
//! status, its stdout and stderr. Sizes are small (the debug build); `cargo run --release
//! -- demo` is the full-size run.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::peers::{Openssl, REQUIRE_PEERS, openssl_server, test_pki};
use echo_peer::pki::Pki;
use echo_peer::{Config as PeerConfig, Peer};

fn wsktls(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsktls")).args(args).output().expect("run the wsktls runner")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails with everything the runner said unless it exited with `code`.
fn expect_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The demo's JSON figures: the last line of stdout.
fn figures(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {last:?}"))
}

#[test]
fn demo_echoes_8_mib_and_reports_json() {
    let out = wsktls(&["demo", "--bytes", "8MiB", "--json"]);
    expect_exit(&out, 0);
    let f = figures(&out);
    assert_eq!(f["ok"], true);
    assert_eq!(f["bytes"], 8 << 20);
    assert_eq!(f["channels"], 1);
    assert_eq!(f["verifier_reports"], 0);
    assert_eq!(f["protocol"], "TLS 1.3");
    let suites = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];
    assert!(suites.iter().any(|s| f["suite"] == *s), "{}", f["suite"]);
    for key in ["handshake_ms", "mib_per_s", "seconds", "peak_pool_bytes", "peak_heap_bytes"] {
        assert!(f[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {}", f[key]);
    }
    assert!(text(&out.stdout).contains("verifier      clean"));
}

#[test]
fn demo_keeps_64_channels_byte_exact() {
    let out = wsktls(&["demo", "--channels", "64", "--bytes", "64MiB", "--json"]);
    expect_exit(&out, 0);
    let f = figures(&out);
    assert_eq!(
        (f["ok"].clone(), f["channels"].clone(), f["bytes"].clone()),
        (true.into(), 64.into(), (64 << 20).into())
    );
    assert_eq!(f["verifier_reports"], 0);
    assert!(f["handshake_ms_max"].as_f64() >= f["handshake_ms"].as_f64());
}

#[test]
fn demo_with_chacha20_negotiates_it() {
    let out = wsktls(&["demo", "--suite", "chacha20", "--bytes", "1MiB"]);
    expect_exit(&out, 0);
    assert!(text(&out.stdout).contains("0x1303 TLS_CHACHA20_POLY1305_SHA256"), "{}", text(&out.stdout));
}

#[test]
fn usage_errors_exit_2_with_the_usage() {
    for args in [&[][..], &["frob"], &["demo", "--bytes", "lots"], &["demo", "--suite", "rc4"], &["connect"]]
    {
        let out = wsktls(args);
        expect_exit(&out, 2);
        assert!(text(&out.stderr).contains("usage: wsktls demo"), "{args:?}: {}", text(&out.stderr));
    }
}

/// The test PKI, or None (the test is skipped) when `openssl`, which makes its RSA and
/// Ed25519 keys, is missing and WSKTLS_REQUIRE_PEERS is not 1.
fn pki() -> Option<&'static Pki> {
    let present = Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success());
    if !present {
        assert!(!std::env::var(REQUIRE_PEERS).is_ok_and(|v| v == "1"), "{REQUIRE_PEERS}=1 but no openssl");
        eprintln!("skipped: openssl is not installed");
        return None;
    }
    Some(test_pki())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A file of `contents` in the test's scratch directory.
fn scratch_file(name: &str, contents: &[u8]) -> PathBuf {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("runner-{}-{name}", std::process::id()));
    std::fs::write(&file, contents).expect("write a scratch file");
    file
}

#[test]
fn connect_sends_a_file_to_openssl_rev_and_prints_the_lines_reversed() {
    let Some(pki) = pki() else { return };
    let server = match openssl_server(pki, Openssl::default()) {
        Ok(server) => server,
        Err(skip) => return eprintln!("{skip}"),
    };
    let lines = scratch_file("lines.txt", b"hello, kernel\nTLS 1.3 over WSK\nstressed\n");
    let addr = server.addr().to_string();
    let out = wsktls(&["connect", &addr, "--ca", path(&pki.ca.cert), "--send", path(&lines)]);
    expect_exit(&out, 0);
    assert_eq!(text(&out.stdout), "lenrek ,olleh\nKSW revo 3.1 SLT\ndesserts\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("TLS 1.3") && stderr.contains("peer cert     SHA-256 "), "{stderr}");
    assert!(stderr.contains("verifier: clean"), "{stderr}");
}

#[test]
fn connect_with_a_ca_that_did_not_sign_the_server_names_untrusted_root() {
    let Some(pki) = pki() else { return };
    let peer = Peer::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        PeerConfig::new(&pki.server.chain, &pki.server.key),
    )
    .expect("echo-peer");
    let addr = peer.addr().to_string();
    let out = wsktls(&["connect", &addr, "--ca", path(&pki.untrusted_ca.cert)]);
    expect_exit(&out, 1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("SEC_E_UNTRUSTED_ROOT"), "{stderr}");
    assert!(stderr.contains("does not chain to the CA in --ca"), "says what to do: {stderr}");
    assert!(stderr.contains("verifier: clean"), "{stderr}");
}

#[test]
fn connect_to_a_closed_port_names_connection_refused() {
    let Some(pki) = pki() else { return };
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let addr = format!("127.0.0.1:{port}");
    let out = wsktls(&["connect", &addr, "--ca", path(&pki.ca.der)]);
    expect_exit(&out, 1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("STATUS_CONNECTION_REFUSED"), "{stderr}");
    assert!(stderr.contains(&format!("nothing is listening at {addr}")), "{stderr}");
}

#[test]
fn connect_refuses_an_address_that_is_not_loopback_before_sending_anything() {
    let ca = scratch_file("not-a-ca.der", b"\x30\x00");
    let out = wsktls(&["connect", "192.0.2.1:443", "--ca", path(&ca)]);
    expect_exit(&out, 1);
    assert!(text(&out.stderr).contains("not loopback"), "{}", text(&out.stderr));
}
