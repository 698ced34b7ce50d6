//! Section 5: what a channel costs in memory. wsktls's nonpaged pool is counted by its
//! tags ("Wt…", charged as the kernel charges: whole pages from a page up, otherwise
//! rounded to 16 bytes plus the pool header); the heap is the runner's counting allocator,
//! which in a host build also holds ntsim's own records of each socket and IRP, so the
//! heap figure overstates the driver's. The consumer's own buffers (the sample's, tagged
//! "Wc…") are not counted. In the kernel the driver's heap is pool too (tag "WtHp").

use std::sync::Arc;
use std::time::Duration;

use wsktls_sample_consumer::{Binding, ConnectParams, Session};

use super::Bench;
use super::table::{Row, Target};
use crate::heap;
use crate::host::Host;
use crate::peer::{PeerChild, SERVER_NAMES};
use crate::words::Failure;

/// Issue 6's bound on an idle open channel, heap plus pool.
const IDLE_TARGET: f64 = 48.0 * 1024.0;
/// What a send buffer takes from the pool (wsk::SEND_BUFFER_LEN), and a full record.
const SEND_BUFFER: u64 = 5 * 4096;
const FULL_RECORD: u64 = 16 * 1024 + 22;

/// wsktls's pool, as the kernel would charge it, and the heap in use outside the pool
/// (ntsim carves its pool from the same heap: that part is counted once, as pool).
fn footprint(host: &Host) -> (usize, usize) {
    let pool = host.kernel().pool_usage("");
    (host.kernel().pool_usage("Wt").charged, heap::figures().current.saturating_sub(pool.bytes))
}

fn open(binding: &Arc<Binding>, bench: &Bench, peer: &PeerChild, n: usize) -> Result<Vec<Session>, Failure> {
    let anchors = [bench.pki.ca_der.as_slice()];
    let params = ConnectParams::new(peer.addr(), SERVER_NAMES[0], &anchors);
    (0..n)
        .map(|i| {
            Session::connect(Arc::clone(binding), &params).map_err(|s| {
                Failure::status(format!("bench: open idle channel {i} of {n}"), s, "see the log above")
            })
        })
        .collect()
}

pub fn memory(
    host: &Host,
    binding: &Arc<Binding>,
    bench: &Bench,
    rows: &mut Vec<Row>,
) -> Result<(), Failure> {
    // A sink: the loaded channel's sends are never held back by an echo nobody reads.
    let peer = PeerChild::start_with(&bench.pki.chain, &bench.pki.key, &["--mode", "sink"])?;
    let counts = [100, 1000];
    for n in counts {
        let (pool0, heap0) = footprint(host);
        let sessions = open(binding, bench, &peer, n)?;
        // Let the server's tickets arrive and be dropped: the channels are then idle.
        std::thread::sleep(Duration::from_millis(200));
        let (pool1, heap1) = footprint(host);
        let pool = pool1.saturating_sub(pool0) as f64 / n as f64;
        let heap = heap1.saturating_sub(heap0) as f64 / n as f64;
        let section = "5 memory";
        rows.push(
            Row::new(section, format!("idle open channel, {n} open: pool + heap"), pool + heap, "bytes")
                .lower_is_better()
                .target(Target::Value(IDLE_TARGET)),
        );
        rows.push(
            Row::new(section, format!("idle open channel, {n} open: pool"), pool, "bytes").lower_is_better(),
        );
        rows.push(
            Row::new(section, format!("idle open channel, {n} open: heap (incl. ntsim)"), heap, "bytes")
                .lower_is_better(),
        );
        rows.push(
            Row::new(section, format!("{n} idle channels held open, all handshaken"), n as f64, "channels")
                .target(Target::Value(n as f64)),
        );
        if n == 100 {
            under_load(&sessions, pool + heap, rows)?;
        }
        for s in sessions {
            let _ = s.close();
        }
    }
    Ok(())
}

/// One channel sending: the idle figure plus the send buffers its peak in flight held.
fn under_load(sessions: &[Session], idle: f64, rows: &mut Vec<Row>) -> Result<(), Failure> {
    let Some(session) = sessions.first() else { return Ok(()) };
    let data = vec![0x42u8; 1 << 20];
    for _ in 0..32 {
        session.send(&data).map_err(|s| Failure::status("bench: send under load", s, ""))?;
    }
    let counters = session.counters().map_err(|s| Failure::status("bench: query counters", s, ""))?;
    // Each send buffer holds at least one full record; each of the 4 sends in flight may
    // end in a partly filled one.
    let buffers = counters.PeakInFlightBytes.div_ceil(FULL_RECORD) + 4;
    let load = idle + (buffers * SEND_BUFFER) as f64;
    rows.push(
        Row::new(
            "5 memory",
            format!(
                "channel under load: idle + {buffers} send buffers at peak in flight ({} KiB)",
                counters.PeakInFlightBytes / 1024
            ),
            load,
            "bytes",
        )
        .lower_is_better(),
    );
    Ok(())
}
