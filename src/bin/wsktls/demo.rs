//! `wsktls demo`: a throwaway PKI, echo-peer in a child process, and N channels opened
//! through the sample consumer that echo the requested bytes, each checked byte for byte;
//! then the figures and the verifier's verdict. It needs nothing but this executable.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wsktls::nt::WSKTLS_COUNTERS;
use wsktls_sample_consumer::{Binding, ConnectParams, Session};

use crate::args::DemoOptions;
use crate::echo::{Flows, Progress};
use crate::heap::{self, Heap};
use crate::host::{Host, Verdict};
use crate::peer::{DemoPki, PeerChild, SERVER_NAMES, TempDir, make_pki};
use crate::progress::Bar;
use crate::report::{Json, mib, protocol_name, suite_name};
use crate::words::{Failure, Target, connect_advice, connect_stage};

/// No byte moved in either direction for this long: the transfer is stalled.
const STALL: Duration = Duration::from_secs(30);
/// How often the progress display and the stall check look.
const POLL: Duration = Duration::from_millis(50);

/// What the demo needs before the kernel boots; dropped after it shut down.
struct Setup {
    pki: DemoPki,
    peer: PeerChild,
    // Last: removed once the peer that reads from it is gone.
    _dir: TempDir,
}

/// What an echo moved, and how fast.
#[derive(Default)]
struct Figures {
    protocol: u16,
    suite: u16,
    /// Each channel's Connect call (TCP connect and handshake), in channel order.
    handshakes: Vec<Duration>,
    bytes: u64,
    channels: u32,
    /// From the first Send to the last byte back.
    elapsed: Duration,
    /// From the first Send to the last Send's completion, and to the last byte back.
    out: Duration,
    back: Duration,
    key_updates_sent: u64,
    key_updates_received: u64,
}

pub fn run(options: &DemoOptions) -> ExitCode {
    let setup = match setup() {
        Ok(setup) => setup,
        Err(failure) => {
            eprintln!("wsktls: {failure}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("wsktls demo: echo-peer (pid {}) on {}", setup.peer.pid(), setup.peer.addr());
    heap::reset_peak();
    let mut figures = Figures::default();
    let (outcome, verdict) = Host::run(|host, binding| echo(host, binding, &setup, options, &mut figures));
    let heap = heap::figures();
    drop(setup);
    report(options, &figures, outcome.err(), &verdict, heap)
}

fn setup() -> Result<Setup, Failure> {
    let dir = TempDir::new("wsktls-demo")
        .map_err(|e| Failure::plain("make a temporary directory", e.to_string()))?;
    let pki = make_pki(dir.path())?;
    let peer = PeerChild::start(&pki.chain, &pki.key)?;
    Ok(Setup { pki, peer, _dir: dir })
}

/// Opens the channels, echoes through them, and closes them; `figures` gets what was
/// measured, as far as it got.
fn echo(
    host: &Host,
    binding: Arc<Binding>,
    setup: &Setup,
    options: &DemoOptions,
    figures: &mut Figures,
) -> Result<(), Failure> {
    let anchors = [setup.pki.ca_der.as_slice()];
    let mut params = ConnectParams::new(setup.peer.addr(), SERVER_NAMES[0], &anchors);
    params.suites = options.suites;
    let sessions = open(&binding, &params, options.channels, &mut figures.handshakes)?;
    drop(binding);
    negotiated(&sessions, figures)?;
    (figures.bytes, figures.channels) = (options.bytes, options.channels);
    transfer(host, &sessions, options.bytes, figures)?;
    check_counters(&sessions, options.bytes, figures)?;
    close(sessions)
}

/// Connects `channels` channels one after the other, timing each Connect.
fn open(
    binding: &Arc<Binding>,
    params: &ConnectParams<'_>,
    channels: u32,
    handshakes: &mut Vec<Duration>,
) -> Result<Vec<Arc<Session>>, Failure> {
    let address = params.remote.to_string();
    let target = Target { address: &address, server_name: params.server_name, ca: "the demo's CA" };
    let mut sessions = Vec::new();
    for channel in 0..channels {
        let started = Instant::now();
        let session = Session::connect(Arc::clone(binding), params).map_err(|s| {
            let what = format!("{} of channel {channel} to {}", connect_stage(s), params.remote);
            Failure::status(what, s, connect_advice(s, &target))
        })?;
        handshakes.push(started.elapsed());
        sessions.push(Arc::new(session));
    }
    Ok(sessions)
}

/// The protocol and suite every channel negotiated (the same on each, or a failure).
fn negotiated(sessions: &[Arc<Session>], figures: &mut Figures) -> Result<(), Failure> {
    for (channel, session) in sessions.iter().enumerate() {
        let info = session.session_info().map_err(|s| {
            Failure::status(format!("query channel {channel}"), s, "wsktls refused WskTlsInfoSession")
        })?;
        if channel > 0 && (info.ProtocolVersion, info.CipherSuite) != (figures.protocol, figures.suite) {
            return Err(Failure::plain(
                "negotiation",
                format!(
                    "channel {channel} negotiated {:#06x}, channel 0 {:#06x}",
                    info.CipherSuite, figures.suite
                ),
            ));
        }
        (figures.protocol, figures.suite) = (info.ProtocolVersion, info.CipherSuite);
    }
    Ok(())
}

/// `total` bytes split evenly over `channels`, the remainder to the first channels.
fn shares(total: u64, channels: usize) -> Vec<u64> {
    let n = channels.max(1) as u64;
    (0..n).map(|i| total / n + u64::from(i < total % n)).collect()
}

/// Runs every channel's sender and receiver to the end, with the progress bar.
fn transfer(
    host: &Host,
    sessions: &[Arc<Session>],
    total: u64,
    figures: &mut Figures,
) -> Result<(), Failure> {
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let flows: Vec<Flows> = sessions
        .iter()
        .zip(shares(total, sessions.len()))
        .enumerate()
        .map(|(channel, (session, share))| {
            Flows::start(host.kernel(), session, channel as u64, share, &progress)
        })
        .collect();
    let stalled = watch(host, &flows, &progress, total);
    let mut failures = Vec::new();
    for flow in flows {
        for (done, way) in [(flow.send.join(), &mut figures.out), (flow.receive.join(), &mut figures.back)] {
            match done {
                Ok(Ok(at)) => *way = (*way).max(at - started),
                Ok(Err(failure)) => failures.push(failure),
                Err(_) => failures.push(Failure::plain("a channel thread", "it panicked (see above)")),
            }
        }
    }
    // The last byte back, not when the poll noticed it.
    figures.elapsed = figures.back.max(figures.out);
    first_of(stalled.into_iter().chain(failures))
}

/// Ok if there is no failure; else the first, with the others printed as they are.
fn first_of(failures: impl IntoIterator<Item = Failure>) -> Result<(), Failure> {
    let mut failures = failures.into_iter();
    let Some(first) = failures.next() else { return Ok(()) };
    for other in failures {
        eprintln!("wsktls: also: {other}");
    }
    Err(first)
}

/// Draws progress until every flow is done; closes every socket if nothing moves for
/// [`STALL`], which fails what is pending so that the threads end.
fn watch(host: &Host, flows: &[Flows], progress: &Progress, total: u64) -> Option<Failure> {
    let mut bar = Bar::new(total);
    let (mut last, mut last_change, mut stalled) = (0, Instant::now(), None);
    while !flows.iter().all(Flows::finished) {
        std::thread::sleep(POLL);
        let back = progress.received.load(Ordering::Relaxed);
        let moved = progress.sent.load(Ordering::Relaxed) + back;
        bar.update(back);
        if moved != last {
            (last, last_change) = (moved, Instant::now());
        } else if stalled.is_none() && last_change.elapsed() >= STALL {
            host.kernel().force_close_sockets();
            let advice = format!("no byte moved for {} s; the runner closed the sockets", STALL.as_secs());
            stalled = Some(Failure::plain("echo", advice));
        }
    }
    bar.finish(progress.received.load(Ordering::Relaxed));
    stalled
}

/// wsktls's own count of each channel's bytes must match ours; sums the KeyUpdates.
fn check_counters(sessions: &[Arc<Session>], total: u64, figures: &mut Figures) -> Result<(), Failure> {
    for (channel, (session, share)) in sessions.iter().zip(shares(total, sessions.len())).enumerate() {
        let c: WSKTLS_COUNTERS = session.counters().map_err(|s| {
            Failure::status(format!("query channel {channel}"), s, "wsktls refused WskTlsInfoCounters")
        })?;
        if (c.BytesSent, c.BytesReceived) != (share, share) {
            let counted = format!("{} sent, {} received", c.BytesSent, c.BytesReceived);
            return Err(Failure::plain(
                format!("counters of channel {channel}"),
                format!("wsktls counted {counted}; the runner moved {share} each way"),
            ));
        }
        figures.key_updates_sent += c.KeyUpdatesSent;
        figures.key_updates_received += c.KeyUpdatesReceived;
    }
    Ok(())
}

/// Disconnect (close_notify) and Close on every channel.
fn close(sessions: Vec<Arc<Session>>) -> Result<(), Failure> {
    let mut failures = Vec::new();
    for (channel, session) in sessions.into_iter().enumerate() {
        if let Err(s) = session.disconnect() {
            let advice = crate::words::channel_advice(s);
            failures.push(Failure::status(format!("disconnect of channel {channel}"), s, advice));
        }
        // Every thread that held it has been joined: this is the last reference.
        if let Some(session) = Arc::into_inner(session) {
            let status = session.close();
            if !status.is_success() {
                failures.push(Failure::status(format!("close of channel {channel}"), status, "see the log"));
            }
        }
    }
    first_of(failures)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median and the largest of the handshake times, in ms.
fn handshake_ms(handshakes: &[Duration]) -> (f64, f64) {
    let mut sorted: Vec<f64> = handshakes.iter().copied().map(ms).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => (0.0, 0.0),
        _ if n % 2 == 1 => (sorted[n / 2], sorted[n - 1]),
        _ => ((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0, sorted[n - 1]),
    }
}

fn rate(bytes: u64, over: Duration) -> f64 {
    mib(bytes) / over.as_secs_f64().max(1e-9)
}

/// Prints the figures (stdout), the failure if any (stderr), the verdict, and the JSON
/// line; the exit status says whether all of it was good.
fn report(
    options: &DemoOptions,
    figures: &Figures,
    failure: Option<Failure>,
    verdict: &Verdict,
    heap: Heap,
) -> ExitCode {
    let ok = failure.is_none() && verdict.clean();
    match &failure {
        // Throughput of a run that failed would mislead: the failure instead.
        Some(failure) => eprintln!("wsktls: {failure}"),
        None => print_figures(figures, verdict, heap),
    }
    println!("verifier      {}", verdict.describe());
    if options.json {
        println!("{}", json(figures, failure.as_ref(), verdict, heap, ok));
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn print_figures(f: &Figures, verdict: &Verdict, heap: Heap) {
    let (median, max) = handshake_ms(&f.handshakes);
    let each = if f.channels > 1 { ", each byte-exact" } else { ", byte-exact" };
    println!("protocol      {}", protocol_name(f.protocol));
    println!("suite         {:#06x} {}", f.suite, suite_name(f.suite));
    println!("handshake     {median:.2} ms (median), {max:.2} ms (max)");
    println!("throughput    {:.1} MiB/s out, {:.1} MiB/s back", rate(f.bytes, f.out), rate(f.bytes, f.back));
    println!("channels      {}{each}", f.channels);
    println!("bytes         {} each way ({:.1} MiB)", f.bytes, mib(f.bytes));
    println!("elapsed       {:.2} s", f.elapsed.as_secs_f64());
    println!(
        "peak pool     {} bytes ({:.2} MiB, nonpaged)",
        verdict.stats.pool_peak_bytes,
        mib(pool_peak(verdict))
    );
    println!(
        "peak heap     {} bytes ({:.2} MiB); {} bytes in use at the end",
        heap.peak,
        mib(heap.peak as u64),
        heap.current
    );
    println!("key updates   {} sent, {} received", f.key_updates_sent, f.key_updates_received);
}

fn pool_peak(verdict: &Verdict) -> u64 {
    verdict.stats.pool_peak_bytes as u64
}

fn json(f: &Figures, failure: Option<&Failure>, verdict: &Verdict, heap: Heap, ok: bool) -> String {
    let (median, max) = handshake_ms(&f.handshakes);
    let mut j = Json::default();
    j.str("protocol", &protocol_name(f.protocol))
        .str("suite", suite_name(f.suite))
        .int("suite_id", f.suite.into())
        .num("handshake_ms", median)
        .num("handshake_ms_max", max)
        .int("bytes", f.bytes)
        .int("channels", f.channels.into())
        .num("seconds", f.elapsed.as_secs_f64())
        .num("mib_per_s", rate(f.bytes, f.elapsed))
        .num("mib_per_s_out", rate(f.bytes, f.out))
        .num("mib_per_s_back", rate(f.bytes, f.back))
        .int("peak_pool_bytes", pool_peak(verdict))
        .int("peak_heap_bytes", heap.peak as u64)
        .int("heap_bytes_at_end", heap.current as u64)
        .int("key_updates_sent", f.key_updates_sent)
        .int("key_updates_received", f.key_updates_received)
        .int("verifier_reports", verdict.reports.len() as u64)
        .bool("ok", ok);
    if let Some(failure) = failure {
        j.str("error", &failure.to_string());
    }
    j.finish()
}
