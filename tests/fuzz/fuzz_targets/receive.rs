//! The receive path fed arbitrary records after a real handshake: tests/common/hostile.rs's
//! `HostilePeer` completes a TLS 1.3 handshake with the driver, takes its traffic keys out
//! of rustls, and then writes what the input says: records it seals itself with the real
//! keys (any inner content type, content and padding, any outer header), application
//! data, alerts, handshake messages (KeyUpdate, NewSessionTicket, anything), key changes,
//! raw bytes, records split across writes; then it ends (close_notify and FIN, FIN alone,
//! a reset, or nothing). Meanwhile a consumer keeps two receives posted on the channel,
//! with input-chosen chains and flags, until the stream ends or goes quiet, then closes.
//!
//! Checked on every input: no panic, no verifier report, nothing left allocated; every
//! receive completes exactly once; the bytes delivered are a prefix of the application
//! data the peer sealed; a clean end (0 bytes, success) comes only after a close_notify
//! and then with every byte sealed before it.
#![no_main]

use std::io::Read;
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wsktls::channel::{Channel, ChannelConfig};
use wsktls::nt::{STATUS_PENDING, STATUS_SUCCESS, WSK_FLAG_WAITALL};
use wsktls::tls::TlsParams;
use wsktls_fuzz::chain::{Chain, Piece};
use wsktls_fuzz::hostile::{ALERT, APPLICATION_DATA, HANDSHAKE, HostilePeer, KEY_UPDATE, Session};
use wsktls_fuzz::irp::{Stack, Tracked, wait_until};
use wsktls_fuzz::pki::{SERVER_NAME, pki};
use wsktls_fuzz::rig::Bare;
use wsktls_fuzz::stats;

const MAX_ITEMS: usize = 64;
/// Bytes the peer may write per input: well under loopback's socket buffers.
const MAX_WRITTEN: usize = 512 * 1024;
/// How long the stream may stay quiet, once the peer has written everything, before the
/// consumer closes the channel.
const QUIET: Duration = Duration::from_millis(30);
const HANG: Duration = Duration::from_secs(20);

#[derive(Arbitrary, Debug)]
enum Item {
    /// An application_data record.
    Data(Vec<u8>),
    /// Any inner content type, content and zero padding, under the standard header.
    Sealed { inner_type: u8, content: Vec<u8>, padding: u16 },
    /// A handshake message of any type and body, sealed.
    Handshake { kind: u8, body: Vec<u8> },
    /// A valid KeyUpdate, then the peer's next key.
    KeyUpdate { requested: bool },
    /// An alert; (1, 0) is close_notify.
    Alert { level: u8, description: u8 },
    /// The peer moves to its next key without telling.
    SwitchKey,
    /// Bytes as they are.
    Raw(Vec<u8>),
    /// A sealed record under another outer type or legacy version.
    Header { outer_type: u8, version: [u8; 2], inner_type: u8, content: Vec<u8> },
    /// The next record goes out in two writes, `at` bytes first, a moment apart.
    Split { at: u16 },
    /// A pause of up to 3 ms before the next write.
    Pause(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    CloseNotifyThenFin,
    Fin,
    Reset,
    /// The peer keeps the connection open; the consumer closes it.
    Open,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct ReceiveShape {
    /// Sizes of the chain's buffers (1 to 3 of them; 0 means 1 byte).
    sizes: [u16; 3],
    count: u8,
    offset: u8,
    wait_all: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    end: End,
    receives: [ReceiveShape; 2],
    items: Vec<Item>,
}

/// What the peer wrote, as the checks need it.
#[derive(Default)]
struct Written {
    /// Application data sealed, in order.
    data: Vec<u8>,
    /// The application data sealed before the first alert with description 0, if one was
    /// written.
    before_close_notify: Option<usize>,
}

fn write(session: &mut Session, bytes: &[u8], split: &mut Option<usize>) -> std::io::Result<()> {
    match split.take() {
        Some(at) if at < bytes.len() => {
            session.send_raw(&bytes[..at])?;
            thread::sleep(Duration::from_millis(1));
            session.send_raw(&bytes[at..])
        }
        _ => session.send_raw(bytes),
    }
}

/// Content plus padding, cut so the sealed record still fits a record header.
fn fit(content: &[u8], padding: usize) -> (&[u8], usize) {
    let room = 65535 - 16 - 1;
    let content = &content[..content.len().min(room)];
    (content, padding.min(room - content.len()))
}

/// The peer's side: every item, then the end. Stops at the first write that fails (the
/// driver closed).
fn play(
    mut session: Session,
    items: Vec<Item>,
    end: End,
    done: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
) -> Written {
    let mut w = Written::default();
    let mut written = 0usize;
    let mut split = None;
    let _ = session.stream().set_nodelay(true);
    for item in items.into_iter().take(MAX_ITEMS) {
        let record = match item {
            Item::Data(d) => {
                let (d, _) = fit(&d, 0);
                w.data.extend_from_slice(d);
                session.seal(APPLICATION_DATA, d, 0)
            }
            Item::Sealed { inner_type, content, padding } => {
                let (c, p) = fit(&content, padding as usize);
                if inner_type == APPLICATION_DATA {
                    w.data.extend_from_slice(c);
                }
                if inner_type == ALERT && c.get(1) == Some(&0) && w.before_close_notify.is_none() {
                    w.before_close_notify = Some(w.data.len());
                }
                session.seal(inner_type, c, p)
            }
            Item::Handshake { kind, body } => {
                let body = &body[..body.len().min(65535 - 16 - 1 - 4)];
                let mut message = vec![kind, 0, (body.len() >> 8) as u8, body.len() as u8];
                message.extend_from_slice(body);
                session.seal(HANDSHAKE, &message, 0)
            }
            Item::KeyUpdate { requested } => {
                let record = session.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, requested as u8], 0);
                if write(&mut session, &record, &mut split).is_err() || session.switch_tx_key().is_err() {
                    break;
                }
                continue;
            }
            Item::Alert { level, description } => {
                if description == 0 && w.before_close_notify.is_none() {
                    w.before_close_notify = Some(w.data.len());
                }
                session.seal(ALERT, &[level, description], 0)
            }
            Item::SwitchKey => {
                if session.switch_tx_key().is_err() {
                    break;
                }
                continue;
            }
            Item::Raw(bytes) => bytes,
            Item::Header { outer_type, version, inner_type, content } => {
                let (c, _) = fit(&content, 0);
                // Data under a wrong header is not data the driver may deliver; counted
                // only when the header is the standard one.
                if inner_type == APPLICATION_DATA && outer_type == APPLICATION_DATA && version == [3, 3] {
                    w.data.extend_from_slice(c);
                }
                session.seal_with_header(outer_type, version, inner_type, c, 0)
            }
            Item::Split { at } => {
                split = Some(at as usize);
                continue;
            }
            Item::Pause(ms) => {
                thread::sleep(Duration::from_millis(u64::from(ms % 4)));
                continue;
            }
        };
        written += record.len();
        if written > MAX_WRITTEN || write(&mut session, &record, &mut split).is_err() {
            break;
        }
    }
    match end {
        End::CloseNotifyThenFin => {
            if w.before_close_notify.is_none() {
                w.before_close_notify = Some(w.data.len());
            }
            let _ = session.send_sealed(ALERT, &[1, 0], 0);
            let _ = session.stream().shutdown(Shutdown::Write);
        }
        End::Fin => {
            let _ = session.stream().shutdown(Shutdown::Write);
        }
        End::Reset => {
            ntsim::set_abortive(session.stream());
            let _ = session.stream().shutdown(Shutdown::Both);
        }
        End::Open => {}
    }
    done.store(true, Ordering::Release);
    // Hold the socket (reading what the driver sends) until the consumer has closed the
    // channel, so that the end is the one chosen.
    let mut stream = session.stream();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(5)));
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + HANG;
    while !closed.load(Ordering::Acquire) && Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    w
}

/// One posted receive: its IRP and its chain.
struct Posted {
    tracked: Tracked,
    chain: Chain,
    offset: usize,
    length: usize,
    /// Booked (its bytes taken) already.
    booked: bool,
}

fn post(channel: &Channel, shape: &ReceiveShape) -> Posted {
    let count = (shape.count % 3) as usize + 1;
    let pieces: Vec<Piece> =
        shape.sizes[..count].iter().map(|&s| Piece { len: (s as usize).max(1), start: 0 }).collect();
    let chain = Chain::new(&pieces, false, || 0);
    let offset = (shape.offset as usize).min(chain.capacity() - 1);
    let length = chain.capacity() - offset;
    let buf = chain.wsk_buf(offset as u32, length);
    let mut tracked = Tracked::new(Stack::Locations(1));
    let flags = if shape.wait_all { WSK_FLAG_WAITALL } else { 0 };
    // SAFETY: the chain is pool with MDLs, kept until the IRP completes; our IRP.
    let status = unsafe { wsktls::interface::receive(channel, &buf, flags, tracked.irp) };
    tracked.returned("Receive", status);
    Posted { tracked, chain, offset, length, booked: false }
}

fuzz_target!(|input: Input| {
    let rig = Bare::get();
    let _in = rig.kernel.enter();
    rig.ledger.begin(&rig.kernel);
    {
        let peer = HostilePeer::start();
        let tls = TlsParams {
            server_name: SERVER_NAME.into(),
            trust_anchors: vec![pki().ca_der.clone()],
            ..TlsParams::default()
        };
        let config = ChannelConfig::new(peer.addr(), tls);
        let channel = Channel::connect(&rig.client, &config).expect("the handshake with the hostile peer");
        let session = peer.session(HANG);
        let (done, closed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let writer = {
            let (items, end, done, closed) = (input.items, input.end, Arc::clone(&done), Arc::clone(&closed));
            thread::spawn(move || play(session, items, end, done, closed))
        };

        // The consumer: two receives posted at all times until the stream ends.
        let mut posted: Vec<Posted> = Vec::new();
        let mut live = [None::<usize>; 2];
        let mut delivered = Vec::new();
        let mut end_of_stream = false;
        let mut failed = None;
        let mut last_progress = Instant::now();
        loop {
            if !end_of_stream && failed.is_none() {
                for (slot, live) in live.iter_mut().enumerate() {
                    if live.is_none() {
                        let p = post(&channel, &input.receives[slot]);
                        let refused = p.tracked.returned != Some(STATUS_PENDING);
                        posted.push(p);
                        *live = Some(posted.len() - 1);
                        if refused {
                            break;
                        }
                    }
                }
            }
            // Book completions in the order the receives were posted (their bytes came in
            // that order), stopping at the first still pending.
            let mut progressed = false;
            let mut order: Vec<(usize, usize)> =
                live.iter().enumerate().filter_map(|(slot, i)| i.map(|i| (i, slot))).collect();
            order.sort();
            for (i, slot) in order {
                let p = &mut posted[i];
                if p.tracked.count() == 0 {
                    break;
                }
                p.booked = true;
                live[slot] = None;
                progressed = true;
                let status = p.tracked.status();
                let n = p.tracked.information();
                stats::note("receive", status);
                if status == STATUS_SUCCESS && n == 0 {
                    end_of_stream = true;
                } else if status == STATUS_SUCCESS {
                    assert!(n <= p.length, "a receive of {} bytes completed with {n}", p.length);
                    delivered.extend_from_slice(&p.chain.read(p.offset, n));
                } else {
                    failed = Some(status);
                }
            }
            if progressed {
                last_progress = Instant::now();
            }
            if end_of_stream || failed.is_some() {
                break;
            }
            if done.load(Ordering::Acquire) && last_progress.elapsed() >= QUIET {
                break;
            }
            assert!(last_progress.elapsed() < HANG, "the receive path made no progress for {HANG:?}");
            wait_until(Duration::from_millis(2), || {
                live.iter().flatten().any(|&i| posted[i].tracked.count() > 0)
            });
        }
        channel.close();
        closed.store(true, Ordering::Release);
        assert!(
            wait_until(HANG, || posted.iter().all(|p| p.tracked.count() > 0)),
            "a receive never completed after the channel was closed"
        );
        for p in &posted {
            p.tracked.check_completed("Receive");
        }
        let written = writer.join().expect("the peer's thread");
        assert!(
            delivered.len() <= written.data.len() && delivered[..] == written.data[..delivered.len()],
            "delivered {} bytes that are not the start of the {} bytes of application data sealed",
            delivered.len(),
            written.data.len()
        );
        if end_of_stream {
            let Some(before) = written.before_close_notify else {
                panic!("the stream ended cleanly (0 bytes, success) but the peer sent no close_notify");
            };
            assert_eq!(
                delivered.len(),
                before,
                "a clean end, but not every byte sealed before the close_notify was delivered"
            );
        }
        stats::note("end", (end_of_stream, failed));
        drop(posted);
    }
    rig.ledger.end(&rig.kernel, Duration::from_secs(5));
    stats::input_done();
});
