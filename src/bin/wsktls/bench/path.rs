//! Sections 1 and 2: the driver's send and receive paths against the crypto limit.
//!
//! A channel is opened through wsktls's dispatch table (a real handshake over loopback),
//! then ntsim turns its socket into a null transport: WskSend completes inline without
//! touching a byte, and WskReceive is filled from records the bench sealed beforehand with
//! the server's own key. What is timed is then the driver's path alone: a consumer Send
//! (an MDL over the consumer's buffer) → plaintext copied into send buffers and sealed in
//! place → WskSend → completion; and WskReceive → records opened in place → plaintext
//! copied into the consumer's receive buffers. The receive side also pays the transport's
//! copy into the channel's buffer (ntsim's stand-in for TCP's copy-out), which the bare
//! baseline does not.
//!
//! Baselines, same bytes, same machine, interleaved with the driver's runs: ring sealing
//! (or opening) the same bytes in place in records of the same size, and a memcpy of them.
//! The send side adds the floor of any design that copies then seals in place (ring has no
//! out-of-place seal): each record's plaintext copied into a send-buffer-sized buffer, then
//! sealed there, with no driver, no IRP and no WskSend around it.

use std::sync::{Arc, Mutex};

use rustls::CipherSuite;
use wsktls_sample_consumer::{Binding, ConnectParams, Session};

use super::consumer::{Direction, Pipe};
use super::measure::{Run, interleaved, mib_s, rate};
use super::records::{BareAead, KeyedServer, ServerKeys, seal_stream};
use super::table::{Row, Target};
use super::{Bench, SUITES, suite_bit, suite_label};
use crate::host::Host;
use crate::words::Failure;
use wsktls::tls::record::HEADER_LEN;
use wsktls::wsk::SEND_BUFFER_LEN;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Record sizes measured for every suite (at 1 MiB sends).
const RECORD_SIZES: [usize; 3] = [KIB, 4 * KIB, 16 * KIB];
/// Send sizes measured at 16 KiB records, AES-128-GCM.
const SEND_SIZES: [usize; 8] = [64, 256, KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB];
/// The largest request either path issues.
const LARGEST: usize = MIB;

/// Bytes one timed run moves: enough for tens of milliseconds at GB/s, fewer for tiny
/// requests (a run of 64-byte sends is a million calls at the full size).
fn run_bytes(bench: &Bench, request: usize) -> u64 {
    let full = if bench.quick { 16 * MIB } else { 64 * MIB };
    (full as u64).min(request as u64 * if bench.quick { 20_000 } else { 100_000 })
}

/// A channel whose socket ntsim has made a null transport, and the server's keys.
struct NullChannel {
    session: Session,
    keys: ServerKeys,
    /// Where the null receive reads from: records the bench sealed, and how far it got.
    incoming: Arc<Mutex<(Vec<u8>, usize)>>,
    /// Kept until the channel closes: its end of the real connection stays open.
    server: KeyedServer,
}

fn open_null(
    host: &Host,
    binding: &Arc<Binding>,
    bench: &Bench,
    suite: CipherSuite,
    record_size: usize,
) -> Result<NullChannel, Failure> {
    let server = KeyedServer::start(&bench.pki.chain, &bench.pki.key, suite)?;
    let anchors = [bench.pki.ca_der.as_slice()];
    let mut params = ConnectParams::new(server.addr(), crate::peer::SERVER_NAMES[0], &anchors);
    params.suites = suite_bit(suite);
    params.record_size = record_size as u32;
    let session = Session::connect(Arc::clone(binding), &params)
        .map_err(|s| Failure::status("bench: connect for the path benchmark", s, "see the log above"))?;
    let keys = server.keys(std::time::Duration::from_secs(10))?;
    let incoming = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let source = Arc::clone(&incoming);
    let switched = host.kernel().set_null_transport(
        server.addr(),
        Some(Box::new(move |into: &mut [u8]| {
            let Ok(mut s) = source.lock() else { return 0 };
            let (records, at) = &mut *s;
            let n = into.len().min(records.len() - *at);
            into[..n].copy_from_slice(&records[*at..*at + n]);
            *at += n;
            n
        })),
    );
    if switched != 1 {
        return Err(Failure::plain("bench: null transport", format!("{switched} sockets switched, not 1")));
    }
    Ok(NullChannel { session, keys, incoming, server })
}

/// Section 1: send path, for every suite and record size, then every send size.
pub fn send_path(
    host: &Host,
    binding: &Arc<Binding>,
    bench: &Bench,
    rows: &mut Vec<Row>,
) -> Result<(), Failure> {
    for suite in SUITES {
        for record in RECORD_SIZES {
            let what = format!("send {}, {} KiB records, 1 MiB sends", suite_label(suite), record / KIB);
            send_case(host, binding, bench, suite, record, LARGEST, what, rows)?;
        }
    }
    for size in SEND_SIZES {
        let what = format!("send AES-128-GCM, 16 KiB records, {} sends", size_label(size));
        send_case(host, binding, bench, CipherSuite::TLS13_AES_128_GCM_SHA256, 16 * KIB, size, what, rows)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn send_case(
    host: &Host,
    binding: &Arc<Binding>,
    bench: &Bench,
    suite: CipherSuite,
    record: usize,
    size: usize,
    what: String,
    rows: &mut Vec<Row>,
) -> Result<(), Failure> {
    let channel = open_null(host, binding, bench, suite, record)?;
    let total = run_bytes(bench, size);
    let mut pipe = Pipe::new(&channel.session, Direction::Send, size, |b| b.fill(0x5a))
        .map_err(|s| Failure::status("bench: consumer buffers", s, "out of pool"))?;
    let bare = BareAead::new(suite, &channel.keys.key, channel.keys.iv)?;
    let mut plain = vec![0x5au8; size];
    let source = vec![0x5au8; size];
    let mut copy = vec![0u8; size];
    let mut send_buffers = CopyThenSeal::new(&channel.keys, suite)?;
    let rounds = total / size as u64;
    let mut runs: Vec<Run<'_>> = vec![
        Box::new(|| {
            let started = std::time::Instant::now();
            let moved =
                pipe.run(rounds * size as u64, size).map_err(|s| Failure::status("bench: send", s, ""))?;
            Ok(rate(moved, started.elapsed()))
        }),
        Box::new(|| {
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                bare.seal_chunks(&mut plain, record, 0)?;
            }
            Ok(rate(rounds * size as u64, started.elapsed()))
        }),
        Box::new(|| {
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                copy.copy_from_slice(std::hint::black_box(&source));
                std::hint::black_box(&mut copy);
            }
            Ok(rate(rounds * size as u64, started.elapsed()))
        }),
        Box::new(|| {
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                send_buffers.run(&source, record)?;
            }
            Ok(rate(rounds * size as u64, started.elapsed()))
        }),
    ];
    let m = interleaved(bench.reps, &mut runs)?;
    drop(runs);
    drop(pipe);
    let _ = channel.session.close();
    let target = match (suite, record, size) {
        (CipherSuite::TLS13_AES_128_GCM_SHA256, r, LARGEST) if r == 16 * KIB => Some(Target::Ratio(0.90)),
        (CipherSuite::TLS13_AES_128_GCM_SHA256, r, LARGEST) if r == 4 * KIB => Some(Target::Ratio(0.80)),
        _ => None,
    };
    let mut row =
        Row::new("1 send path", what.clone(), mib_s(m[0]), "MiB/s").against("ring seal", mib_s(m[1]));
    if let Some(t) = target {
        row = row.target(t);
    }
    rows.push(row);
    rows.push(Row::new("1 send path", format!("{what}: memcpy of the same bytes"), mib_s(m[2]), "MiB/s"));
    rows.push(
        Row::new("1 send path", format!("{what}: copy then seal in place, no driver"), mib_s(m[3]), "MiB/s")
            .against("ring seal", mib_s(m[1])),
    );
    Ok(())
}

/// The copy-then-seal floor: what the send path would cost with nothing but its one copy
/// and ring's seal. Buffers are the driver's size and rotate as a batch of them would.
struct CopyThenSeal {
    aead: BareAead,
    buffers: Vec<Vec<u8>>,
    next: usize,
}

impl CopyThenSeal {
    /// As many buffers as one WskSend of the largest batch carries.
    const BUFFERS: usize = 16;

    fn new(keys: &ServerKeys, suite: CipherSuite) -> Result<CopyThenSeal, Failure> {
        let aead = BareAead::new(suite, &keys.key, keys.iv)?;
        let buffers = vec![vec![0u8; SEND_BUFFER_LEN]; Self::BUFFERS];
        Ok(CopyThenSeal { aead, buffers, next: 0 })
    }

    /// Copies each `record` bytes of `source` after a record header's room in the next
    /// buffer and seals them there.
    fn run(&mut self, source: &[u8], record: usize) -> Result<(), Failure> {
        for chunk in source.chunks(record) {
            let buffer = &mut self.buffers[self.next];
            self.next = (self.next + 1) % Self::BUFFERS;
            let plaintext = &mut buffer[HEADER_LEN..HEADER_LEN + chunk.len()];
            plaintext.copy_from_slice(chunk);
            self.aead.seal_chunks(plaintext, record, 0)?;
        }
        Ok(())
    }
}

/// Section 2: receive path, for every suite and record size, into 64 KiB receives.
pub fn receive_path(
    host: &Host,
    binding: &Arc<Binding>,
    bench: &Bench,
    rows: &mut Vec<Row>,
) -> Result<(), Failure> {
    for suite in SUITES {
        for record in RECORD_SIZES {
            let what =
                format!("receive {}, {} KiB records, 64 KiB receives", suite_label(suite), record / KIB);
            receive_case(host, binding, bench, suite, record, what, rows)?;
        }
    }
    Ok(())
}

fn receive_case(
    host: &Host,
    binding: &Arc<Binding>,
    bench: &Bench,
    suite: CipherSuite,
    record: usize,
    what: String,
    rows: &mut Vec<Row>,
) -> Result<(), Failure> {
    let size = 64 * KIB;
    let mut channel = open_null(host, binding, bench, suite, record)?;
    let total = run_bytes(bench, LARGEST) as usize;
    let mut pipe = Pipe::new(&channel.session, Direction::Receive, size, |_| {})
        .map_err(|s| Failure::status("bench: consumer buffers", s, "out of pool"))?;
    let bare = BareAead::new(suite, &channel.keys.key, channel.keys.iv)?;
    // The bare baseline opens the same kind of stream (its own copy, sequence from 0).
    let mut bare_keys = ServerKeys { sequence: 0, ..channel.keys.clone() };
    let mut bare_stream = Vec::new();
    seal_stream(&mut bare_keys, record, total, &mut bare_stream)?;
    let mut scratch = bare_stream.clone();
    let (incoming, keys) = (Arc::clone(&channel.incoming), &mut channel.keys);
    let remote = channel.server.addr();
    let mut runs: Vec<Run<'_>> = vec![
        Box::new(|| {
            // Sealed outside the timing, with the sequence numbers the channel expects next.
            let mut next = Vec::new();
            seal_stream(keys, record, total, &mut next)?;
            if let Ok(mut s) = incoming.lock() {
                *s = (next, 0);
            }
            let started = std::time::Instant::now();
            host.kernel().null_transport_ready(remote);
            let moved = pipe.run(total as u64, size).map_err(|s| Failure::status("bench: receive", s, ""))?;
            Ok(rate(moved, started.elapsed()))
        }),
        Box::new(|| {
            scratch.copy_from_slice(&bare_stream);
            let started = std::time::Instant::now();
            let opened = bare.open_stream(&mut scratch, 0)?;
            Ok(rate(opened as u64, started.elapsed()))
        }),
    ];
    let m = interleaved(bench.reps, &mut runs)?;
    drop(runs);
    drop(pipe);
    let _ = channel.session.close();
    rows.push(Row::new("2 receive path", what, mib_s(m[0]), "MiB/s").against("ring open", mib_s(m[1])));
    Ok(())
}

fn size_label(size: usize) -> String {
    match size {
        s if s >= MIB => format!("{} MiB", s / MIB),
        s if s >= KIB => format!("{} KiB", s / KIB),
        s => format!("{s} B"),
    }
}

/// The send path alone, for callgrind: `bytes` in 1 MiB sends, AES-128-GCM, 16 KiB records.
pub fn send_bytes(host: &Host, binding: &Arc<Binding>, bench: &Bench, bytes: u64) -> Result<u64, Failure> {
    let channel = open_null(host, binding, bench, CipherSuite::TLS13_AES_128_GCM_SHA256, 16 * KIB)?;
    let mut pipe = Pipe::new(&channel.session, Direction::Send, LARGEST, |b| b.fill(0x5a))
        .map_err(|s| Failure::status("bench: consumer buffers", s, "out of pool"))?;
    let moved = pipe.run(bytes, LARGEST).map_err(|s| Failure::status("bench: send", s, ""))?;
    drop(pipe);
    let _ = channel.session.close();
    Ok(moved)
}
