//! Section 4: full TLS 1.3 handshakes on loopback, no resumption, against the same server
//! (echo-peer in its own process) with an ECDSA P-256 and an RSA-2048 server key. wsktls
//! is timed around the consumer's Connect call (TCP connect, handshake on wsktls's work
//! item, channel set up; the IRP's completion seen by the consumer); the rustls client
//! from its TCP connect to the handshake's end. `openssl s_time` reports only a rate.

use std::sync::Arc;
use std::time::Instant;

use wsktls_sample_consumer::{Binding, ConnectParams, Session};

use super::Bench;
use super::measure::{median, percentile};
use super::reference::{KeyType, make_bench_pki, openssl_handshakes_per_second, rustls_handshakes};
use super::table::{Row, Target};
use crate::peer::{PeerChild, SERVER_NAMES};
use crate::words::Failure;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn handshakes(binding: &Arc<Binding>, bench: &Bench, rows: &mut Vec<Row>) -> Result<(), Failure> {
    let n = if bench.quick { 50 } else { 300 };
    for (key_type, label) in [(KeyType::EcdsaP256, "ECDSA P-256"), (KeyType::Rsa2048, "RSA-2048")] {
        let pki = make_bench_pki(bench.dir.path(), key_type)?;
        let peer = PeerChild::start(&pki.chain, &pki.key)?;
        let anchors = [pki.ca_der.as_slice()];
        let params = ConnectParams::new(peer.addr(), SERVER_NAMES[0], &anchors);
        // Interleaved in rounds of 10, so a slow spell falls on both.
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..n / 10 {
            for _ in 0..10 {
                let started = Instant::now();
                let session = Session::connect(Arc::clone(binding), &params)
                    .map_err(|s| Failure::status("bench: handshake", s, "see the log above"))?;
                ours.push(ms(started.elapsed()));
                let _ = session.close();
            }
            theirs.extend(rustls_handshakes(peer.addr(), &pki.ca_der, 10)?.into_iter().map(ms));
        }
        let openssl =
            openssl_handshakes_per_second(peer.addr(), &pki.ca_pem, if bench.quick { 2 } else { 5 })?;
        let section = "4 handshake";
        rows.push(
            Row::new(section, format!("{label}: median"), median(&ours), "ms")
                .lower_is_better()
                .against("rustls client", median(&theirs))
                .target(Target::Ratio(1.2)),
        );
        rows.push(
            Row::new(section, format!("{label}: 99th percentile"), percentile(&ours, 99.0), "ms")
                .lower_is_better()
                .against("rustls client", percentile(&theirs, 99.0)),
        );
        let per_second = |xs: &[f64]| 1000.0 * xs.len() as f64 / xs.iter().sum::<f64>();
        let rate = Row::new(
            section,
            format!("{label}: handshakes per second, one at a time"),
            per_second(&ours),
            "/s",
        );
        rows.push(rate.clone().against("rustls client", per_second(&theirs)));
        rows.push(rate.against("openssl s_time", openssl));
    }
    Ok(())
}
