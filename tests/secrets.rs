//! Nothing secret left behind: after a channel has carried plaintext both ways through key
//! updates and closed, no pool block wsktls freed or still holds, and no heap block freed
//! in the process, holds the plaintext or any of the channel's traffic secrets, keys or
//! IVs (learned from the peer's key log and derived as RFC 8446 §7.1–7.3 say).
//!
//! The peer is `openssl s_server` in a process of its own, so that the heap watched here
//! is the driver's (and ntsim's). The plaintext is made and checked in the consumer's
//! pool buffers ('Test', not watched), never copied to the heap by the test.

mod common;

use std::path::Path;

use common::consumer::{RECORD_LINE, Shape, Stream, channel_config};
use common::peers::{Openssl, openssl_server, test_pki};
use common::{STALL, client};
use ntsim::{Kernel, ScanningHeap};
use ring::hkdf;
use wsktls::channel::Channel;
use wsktls_crypto::{Suite, WipeOnFree};

/// The kernel image's heap is WipeOnFree over the pool; here it is over the watched heap.
#[global_allocator]
static HEAP: WipeOnFree<ScanningHeap> = WipeOnFree(ScanningHeap);

/// Every line the consumer sends is this, over and over: any 31 bytes of plaintext hold
/// it whole, and `openssl s_server -rev` sends it back reversed.
const MARKER: &[u8; 16] = b"WSKTLS-PLAINTEXT";

/// Lines of RECORD_LINE bytes (one per record, so a KeyUpdate never splits a line, which
/// s_server -rev would mangle), the marker repeated, a newline last.
fn marker_line(pos: u64) -> u8 {
    let i = pos % RECORD_LINE;
    if i == RECORD_LINE - 1 { b'\n' } else { MARKER[i as usize % MARKER.len()] }
}

/// The line holding `pos`, reversed with its newline kept last: what s_server -rev sends.
fn reversed_marker_line(pos: u64) -> u8 {
    let i = pos % RECORD_LINE;
    if i == RECORD_LINE - 1 { b'\n' } else { marker_line(pos - i + (RECORD_LINE - 2 - i)) }
}

const MARKER_LINES: Shape = Shape { send: marker_line, expect: reversed_marker_line };

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(algorithm: hkdf::Algorithm, secret: &[u8], label: &str, len: usize) -> Vec<u8> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let label = [b"tls13 ", label.as_bytes()].concat();
    let info = [&(len as u16).to_be_bytes()[..], &[label.len() as u8], &label, &[0]];
    let mut out = vec![0; len];
    let prk = hkdf::Prk::new_less_safe(algorithm, secret);
    prk.expand(&info, Len(len)).and_then(|okm| okm.fill(&mut out)).expect("HKDF-Expand-Label");
    out
}

/// The secrets of the connection `keylog` (s_server's -keylogfile) records, each with the
/// key and IV derived from it, and `updates` generations of each application traffic
/// secret after it (RFC 8446 §7.2): labelled byte strings to watch for.
fn traffic_secrets(keylog: &Path, suite: Suite, updates: usize) -> Vec<(String, Vec<u8>)> {
    let (algorithm, key_len) = match suite {
        Suite::Aes128Gcm => (hkdf::HKDF_SHA256, 16),
        Suite::Aes256Gcm => (hkdf::HKDF_SHA384, 32),
        Suite::Chacha20Poly1305 => (hkdf::HKDF_SHA256, 32),
    };
    let log = std::fs::read_to_string(keylog).expect("the peer's key log");
    let mut watched = Vec::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [name, _random, hex] = fields[..] else { continue };
        if !name.contains("TRAFFIC_SECRET") {
            continue;
        }
        let mut secret: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
        let generations = if name.ends_with("_0") { updates + 1 } else { 1 };
        for n in 0..generations {
            let label = format!("{name} (generation {n})");
            watched.push((format!("{label} key"), expand_label(algorithm, &secret, "key", key_len)));
            watched.push((format!("{label} iv"), expand_label(algorithm, &secret, "iv", 12)));
            let next = expand_label(algorithm, &secret, "traffic upd", secret.len());
            watched.push((label, std::mem::replace(&mut secret, next)));
        }
        secret.fill(0);
    }
    assert!(watched.len() >= 4 * 3, "the key log has the four traffic secrets: {}", watched.len());
    watched
}

/// Echoes `records` lines through s_server with `suite`, sending a KeyUpdate every
/// `update_every` records, closes, and checks pool and heap for what it watched.
fn leaves_nothing_behind(suite: Suite, records: u64, update_every: u64) {
    let keylog = std::env::temp_dir().join(format!("wsktls-secrets-{}-{suite:?}.keys", std::process::id()));
    let keylog_arg = keylog.to_str().expect("a UTF-8 path");
    let args = Openssl { extra: &["-keylogfile", keylog_arg], ..Openssl::default() };
    let peer = match openssl_server(test_pki(), args) {
        Ok(p) => p,
        Err(skip) => return eprintln!("{skip}"),
    };
    let kernel = Kernel::boot();
    // The secrets are known only once the handshake is done: keep what is freed until then.
    kernel.keep_freed_pool("Wt");
    ScanningHeap::quarantine();
    {
        let _in = kernel.enter();
        let client = client();
        let mut config = channel_config(peer.addr(), "localhost");
        config.tls.suites = vec![suite];
        config.key_update_after_records = Some(update_every);
        config.record_size = RECORD_LINE as usize;
        let channel = Channel::connect(&client, &config).expect("connect");
        let updates = (records / update_every) as usize;
        let mut watched = traffic_secrets(&keylog, suite, updates);
        watched.push(("plaintext sent".into(), MARKER.to_vec()));
        watched.push(("plaintext received".into(), MARKER.iter().rev().copied().collect()));
        kernel.watch_secrets("Wt", watched.clone());
        ScanningHeap::watch(watched);

        let mut stream = Stream::new(records * RECORD_LINE, MARKER_LINES);
        stream.send_granularity = RECORD_LINE as usize;
        stream.run(&channel, STALL).expect("the echo");
        let info = channel.info();
        assert!(info.sent.key_updates as usize >= updates, "{info:?}");
        channel.disconnect(5_000).expect("disconnect");
        stream.expect_end(STALL).expect("the peer's close_notify");
        channel.close();
        drop(stream);
        let kept = kernel.secrets_in_live_pool();
        assert!(kept.is_empty(), "wsktls still holds, after the channel closed: {kept:?}");
        drop(client);
    }
    let reports = kernel.shutdown();
    let heap = ScanningHeap::found();
    ScanningHeap::stop();
    let _ = std::fs::remove_file(&keylog);
    assert!(reports.is_empty(), "{reports:#?}");
    assert_eq!(heap.0, 0, "heap blocks freed holding a secret; the last: {:?}", heap.1);
}

// One test: the heap is the process's, so two channels watched at once would see each
// other's needles come and go.
#[test]
fn no_plaintext_secret_or_key_is_left_in_freed_or_kept_memory_with_any_suite() {
    for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
        leaves_nothing_behind(suite, 100, 40);
    }
}
