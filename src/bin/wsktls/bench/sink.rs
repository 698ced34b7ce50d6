//! Sections 3 and 6: whole channels on loopback. wsktls (in ntsim, through its dispatch
//! table) against the rustls client and OpenSSL's s_client, each sending the same bytes
//! with the same suite into the same sink (echo-peer `--mode sink`, in its own process),
//! and an echo both ways; then the aggregate over 1, 2, 8 and 64 channels.
//!
//! Every client is timed the same way: from its first write to the server's close_notify
//! after its own (so every byte has reached the server), handshake excluded.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::CipherSuite;
use wsktls_sample_consumer::{Binding, ConnectParams, Session};

use super::consumer::{Direction, Pipe};
use super::measure::{Run, interleaved, mib_s, rate};
use super::reference::{openssl_send, rustls_echo, rustls_send};
use super::table::{Row, Target};
use super::{Bench, SUITES, suite_bit, suite_label, suite_name};
use crate::host::Host;
use crate::peer::{PeerChild, SERVER_NAMES};
use crate::words::Failure;

const MIB: u64 = 1024 * 1024;
/// The consumer's request size.
const SEND_SIZE: usize = 256 * 1024;

/// Bytes per run: a full run lasts about a third of a second at these rates, long enough
/// for the steady state to outweigh a run's start (256 MiB runs of about 75 ms gave
/// ratios 0.05 lower and twice as scattered).
fn run_bytes(bench: &Bench) -> u64 {
    if bench.quick { 64 * MIB } else { 1024 * MIB }
}

fn connect(
    binding: &Arc<Binding>,
    bench: &Bench,
    peer: &PeerChild,
    suite: CipherSuite,
) -> Result<Session, Failure> {
    let anchors = [bench.pki.ca_der.as_slice()];
    let mut params = ConnectParams::new(peer.addr(), SERVER_NAMES[0], &anchors);
    params.suites = suite_bit(suite);
    Session::connect(Arc::clone(binding), &params)
        .map_err(|s| Failure::status("bench: connect", s, "see the log above"))
}

/// After the last send: our close_notify, then the server's, which says every byte is in.
fn finish(session: &Session) -> Result<(), Failure> {
    session.disconnect().map_err(|s| Failure::status("bench: disconnect", s, ""))?;
    let mut rest = [0u8; 64];
    loop {
        match session.receive(&mut rest) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(s) => return Err(Failure::status("bench: wait for the server's close_notify", s, "")),
        }
    }
}

/// One wsktls channel sends `total` bytes into the sink: seconds from the first Send.
fn wsktls_send(session: &Session, total: u64) -> Result<Duration, Failure> {
    let mut pipe = Pipe::new(session, Direction::Send, SEND_SIZE, |b| b.fill(0x5a))
        .map_err(|s| Failure::status("bench: consumer buffers", s, "out of pool"))?;
    let started = Instant::now();
    pipe.run(total, SEND_SIZE).map_err(|s| Failure::status("bench: send", s, ""))?;
    finish(session)?;
    Ok(started.elapsed())
}

pub fn sink(host: &Host, binding: &Arc<Binding>, bench: &Bench, rows: &mut Vec<Row>) -> Result<(), Failure> {
    let total = run_bytes(bench);
    for suite in SUITES {
        let peer = PeerChild::start_with(
            &bench.pki.chain,
            &bench.pki.key,
            &["--mode", "sink", "--suite", suite_name(suite)],
        )?;
        let mut runs: Vec<Run<'_>> = vec![
            Box::new(|| {
                let session = connect(binding, bench, &peer, suite)?;
                let elapsed = wsktls_send(&session, total)?;
                let _ = session.close();
                Ok(rate(total, elapsed))
            }),
            Box::new(|| {
                Ok(rate(total, rustls_send(peer.addr(), &bench.pki.ca_der, suite, total, SEND_SIZE)?))
            }),
            Box::new(|| {
                Ok(rate(
                    total,
                    openssl_send(peer.addr(), &bench.pki.ca_pem, suite_name(suite), total, bench.dir.path())?,
                ))
            }),
        ];
        let m = interleaved(bench.reps.min(5), &mut runs)?;
        let what = format!("one channel into a sink, {}, {} MiB", suite_label(suite), total / MIB);
        rows.push(
            Row::new("3 channel", what.clone(), mib_s(m[0]), "MiB/s")
                .against("rustls client", mib_s(m[1]))
                .target(Target::Ratio(1.10)),
        );
        rows.push(
            Row::new("3 channel", what, mib_s(m[0]), "MiB/s")
                .against("openssl s_client", mib_s(m[2]))
                .target(Target::Ratio(1.0)),
        );
    }
    echo(host, binding, bench, rows)
}

/// Both ways at once: wsktls and the rustls client against the echo server.
fn echo(host: &Host, binding: &Arc<Binding>, bench: &Bench, rows: &mut Vec<Row>) -> Result<(), Failure> {
    let total = run_bytes(bench) / 2;
    let suite = CipherSuite::TLS13_AES_128_GCM_SHA256;
    let peer = PeerChild::start_with(&bench.pki.chain, &bench.pki.key, &["--suite", suite_name(suite)])?;
    let mut runs: Vec<Run<'_>> = vec![
        Box::new(|| {
            let session = connect(binding, bench, &peer, suite)?;
            let elapsed = wsktls_echo(host, &session, total)?;
            let _ = session.close();
            Ok(rate(total, elapsed))
        }),
        Box::new(|| Ok(rate(total, rustls_echo(peer.addr(), &bench.pki.ca_der, suite, total)?))),
    ];
    let m = interleaved(bench.reps.min(5), &mut runs)?;
    let what = format!("one channel, echo both ways, AES-128-GCM, {} MiB each way", total / MIB);
    rows.push(Row::new("3 channel", what, mib_s(m[0]), "MiB/s").against("rustls client", mib_s(m[1])));
    Ok(())
}

/// Sends and receives `total` bytes at once on one channel: seconds to the last byte back.
fn wsktls_echo(host: &Host, session: &Session, total: u64) -> Result<Duration, Failure> {
    let mut out = Pipe::new(session, Direction::Send, SEND_SIZE, |b| b.fill(0x33))
        .map_err(|s| Failure::status("bench: consumer buffers", s, "out of pool"))?;
    let back = Pipe::new(session, Direction::Receive, SEND_SIZE, |_| {})
        .map_err(|s| Failure::status("bench: consumer buffers", s, "out of pool"))?;
    let started = Instant::now();
    let received = thread::scope(|scope| {
        let receiver = scope.spawn(move || {
            let _in = host.kernel().enter();
            // Moved in here so that it is dropped (its IRPs freed) inside the kernel.
            let mut back = back;
            back.run(total, SEND_SIZE)
        });
        let sent = out.run(total, SEND_SIZE);
        let received =
            receiver.join().map_err(|_| Failure::plain("bench: echo", "the receiving thread panicked"))?;
        sent.map_err(|s| Failure::status("bench: echo send", s, ""))?;
        received.map_err(|s| Failure::status("bench: echo receive", s, ""))
    })?;
    let elapsed = started.elapsed();
    if received != total {
        return Err(Failure::plain("bench: echo", format!("{received} of {total} bytes came back")));
    }
    Ok(elapsed)
}

/// Section 6: `n` channels each sending total/n bytes into the sink at once.
pub fn scale(host: &Host, binding: &Arc<Binding>, bench: &Bench, rows: &mut Vec<Row>) -> Result<(), Failure> {
    let suite = CipherSuite::TLS13_AES_128_GCM_SHA256;
    let peer = PeerChild::start_with(
        &bench.pki.chain,
        &bench.pki.key,
        &["--mode", "sink", "--suite", suite_name(suite)],
    )?;
    let total = run_bytes(bench);
    let mut one = 0.0;
    for n in [1usize, 2, 8, 64] {
        let mut samples = Vec::new();
        for _ in 0..bench.reps.min(5) {
            let sessions: Vec<Session> =
                (0..n).map(|_| connect(binding, bench, &peer, suite)).collect::<Result<_, _>>()?;
            let each = total / n as u64;
            let started = Instant::now();
            let results: Vec<Result<Duration, Failure>> = thread::scope(|scope| {
                let handles: Vec<_> = sessions
                    .iter()
                    .map(|s| {
                        scope.spawn(move || {
                            let _in = host.kernel().enter();
                            wsktls_send(s, each)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| Err(Failure::plain("bench: scale", "a sender panicked")))
                    })
                    .collect()
            });
            let elapsed = started.elapsed();
            for r in results {
                r?;
            }
            for s in sessions {
                let _ = s.close();
            }
            samples.push(rate(each * n as u64, elapsed));
        }
        let aggregate = mib_s(super::measure::median(&samples));
        if n == 1 {
            one = aggregate;
        }
        rows.push(
            Row::new("6 scale", format!("{n} channels into a sink, aggregate"), aggregate, "MiB/s")
                .against("1 channel", one),
        );
    }
    Ok(())
}
