//! The soak: many channels at once through the published dispatch table, each driven by a
//! consumer that does random things (sends and receives of random sizes over MDL chains
//! of random shapes, flags right and wrong, queries, a disconnect, a close at any moment
//! with requests pending), against peers that echo and misbehave at random
//! ([`super::chaos`] and echo-peer), while the transport's faults change every few
//! seconds (pended, late, split and inline-at-DISPATCH completions, resets, forced closes,
//! stalls, refused allocations, connects that never answer, small send buffers).
//!
//! What must hold is checked as each completion arrives, not at the end:
//! - every consumer IRP completes exactly once, and a call that did not return
//!   STATUS_PENDING completed with the status it returned;
//! - a successful send completes with all its bytes; receives deliver the bytes of the
//!   accepted sends, in order, each once (refused sends leave a hole the stream skips);
//! - a channel that fails fails with a status some injected fault or the peer's script
//!   explains, and stays failed: a call issued after the consumer saw the failure gets
//!   STATUS_FILE_FORCED_CLOSED and no byte; nothing follows the end of the stream;
//! - a peer that misbehaved after echoing N bytes got at most N delivered; a faithful
//!   peer's echo, read to its close_notify after ours, is every byte sent;
//! - Close completes, and when it has, so has everything else;
//! - at unload, no verifier report and nothing left (pool, IRPs, MDLs, sockets).
//!
//! Here: the plan, the fault phases and the run; `consumer` is one consumer thread and its
//! books, `verdict` the judgement of each channel's life once it is closed.
//!
//! Every random choice comes from one seed, printed at the start: the fault phases, ntsim's
//! draws, and each worker's n-th channel (its peer, parameters and operations) are the
//! same for the same seed. How many channels a worker gets through, and the moment a
//! fault meets a request, are the machine's timing.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use echo_peer::{Config as PeerConfig, Peer};
use ntsim::{AllocKind, Breaks, Config, Faults, Kernel, Rng};
use wsktls::nt::{WSKTLS_DISPATCH, WSKTLS_PROVIDER};

use super::peers::test_pki;
use super::rig::Rig;

mod consumer;
mod verdict;

use consumer::Worker;

/// A size up to `max`, small ones as likely as large (log-uniform).
fn size(rng: &mut Rng, max: usize) -> usize {
    let bits = rng.range(0, max.ilog2() as u64);
    (rng.range(1 << bits, (2 << bits) - 1) as usize).min(max)
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.range(0, items.len() as u64 - 1) as usize]
}

/// A soak: its seed, how long it starts channels for, how many at once.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub seed: u64,
    pub duration: Duration,
    pub channels_at_once: usize,
}

impl Plan {
    /// `WSKTLS_SOAK_SEED` (else random), `WSKTLS_SOAK_SECONDS` (else `seconds`),
    /// `WSKTLS_SOAK_CHANNELS` (else 12).
    pub fn from_env(seconds: u64) -> Plan {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        let random = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()) << 32)
            .unwrap_or(1);
        Plan {
            seed: var("WSKTLS_SOAK_SEED").unwrap_or_else(|| Rng::new(random).next_u64()),
            duration: Duration::from_secs(var("WSKTLS_SOAK_SECONDS").unwrap_or(seconds)),
            channels_at_once: var("WSKTLS_SOAK_CHANNELS").unwrap_or(12) as usize,
        }
    }
}

/// What a soak did.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub seed: u64,
    pub elapsed: Duration,
    pub channels: u64,
    pub connected: u64,
    /// Consumer calls made (Connect, Send, Receive, Disconnect, Close, Query).
    pub operations: u64,
    pub sends: u64,
    pub receives: u64,
    pub refused_on_purpose: u64,
    pub closes_with_requests_pending: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Echoes read to the peer's close_notify and found whole.
    pub whole_echoes: u64,
    /// How channels ended, by the first failure status (or "clean").
    pub endings: BTreeMap<String, u64>,
    /// Peer scripts played, by ending.
    pub peers: BTreeMap<String, u64>,
    pub fault_phases: u64,
    pub resets_injected: u64,
    pub forced_closes_injected: u64,
    pub stalls_injected: u64,
    pub allocations_failed: u64,
    pub sends_pended: u64,
    pub completions_delayed: u64,
    pub peer_key_updates: u64,
    pub peer_tickets: u64,
    pub peer_empty_records: u64,
    pub peer_warnings: u64,
    pub peer_pauses: u64,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "soak seed {} ran {:.1?}", self.seed, self.elapsed)?;
        writeln!(
            f,
            "  channels {} (connected {}), operations {} (sends {}, receives {}, refused on purpose {}), \
             closes with requests pending {}",
            self.channels,
            self.connected,
            self.operations,
            self.sends,
            self.receives,
            self.refused_on_purpose,
            self.closes_with_requests_pending
        )?;
        writeln!(
            f,
            "  bytes sent {}, received {}, whole echoes checked {}",
            self.bytes_sent, self.bytes_received, self.whole_echoes
        )?;
        writeln!(
            f,
            "  faults: {} phases, {} resets, {} forced closes, {} stalls, {} allocations failed, {} sends pended, \
             {} completions delayed",
            self.fault_phases,
            self.resets_injected,
            self.forced_closes_injected,
            self.stalls_injected,
            self.allocations_failed,
            self.sends_pended,
            self.completions_delayed
        )?;
        writeln!(
            f,
            "  peers: {:?}; their extras: {} KeyUpdates, {} tickets, {} empty records, {} warnings, {} pauses",
            self.peers,
            self.peer_key_updates,
            self.peer_tickets,
            self.peer_empty_records,
            self.peer_warnings,
            self.peer_pauses
        )?;
        write!(f, "  channel endings: {:?}", self.endings)
    }
}

/// Runs `plan` and returns what it did, or every broken promise it saw (with the seed).
pub fn run(plan: &Plan) -> Result<Figures, String> {
    eprintln!(
        "soak: seed {} for {:?}, {} channels at once (replay: WSKTLS_SOAK_SEED={})",
        plan.seed, plan.duration, plan.channels_at_once, plan.seed
    );
    let started = Instant::now();
    let mut seeds = Rng::new(plan.seed);
    let config = Config { seed: Some(seeds.next_u64()), ..Config::default() };
    let rig = Rig::boot_with(config, &[]);
    let shared = Shared::new(&rig);
    let deadline = started + plan.duration;
    // The consumers' IRPs and buffers are made before any fault is.
    let workers: Vec<_> =
        (0..plan.channels_at_once).map(|n| Worker::new(n, seeds.next_u64(), &shared)).collect();
    thread::scope(|scope| {
        let (shared, kernel, fault_seed) = (&shared, &rig.kernel, seeds.next_u64());
        let faults = scope.spawn(move || shared.change_faults(kernel, deadline, fault_seed));
        let workers: Vec<_> = workers
            .into_iter()
            .map(|worker| {
                scope.spawn(move || {
                    let _in = kernel.enter();
                    worker.run(deadline);
                })
            })
            .collect();
        for w in workers {
            if let Err(panic) = w.join() {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                shared.violation(format!("a worker panicked: {}", what.unwrap_or_default()));
            }
        }
        shared.done.store(true, Ordering::Relaxed);
        let _ = faults.join();
    });
    rig.kernel.set_faults(Faults::default());
    let stats = rig.kernel.stats();
    let mut figures = shared.figures.lock().unwrap().clone();
    figures.seed = plan.seed;
    figures.elapsed = started.elapsed();
    figures.resets_injected = stats.resets_injected;
    figures.forced_closes_injected = stats.forced_closes_injected;
    figures.stalls_injected = stats.stalls_injected;
    figures.allocations_failed = stats.allocations_failed;
    figures.sends_pended = stats.sends_pended;
    figures.completions_delayed = stats.completions_delayed;
    let mut broken = std::mem::take(&mut *shared.violations.lock().unwrap());
    drop(shared);
    let reports = rig.unload().shutdown();
    broken.extend(reports.iter().map(|r| format!("at unload: {r}")));
    if broken.is_empty() {
        Ok(figures)
    } else {
        Err(format!(
            "soak seed {} broke {} promise(s) (replay with WSKTLS_SOAK_SEED={}):\n  {}\n{figures}",
            plan.seed,
            broken.len(),
            plan.seed,
            broken.join("\n  ")
        ))
    }
}

/// The index of the echo peer that takes ChaCha20 only.
const CHACHA_ONLY: usize = 2;

/// Fault kinds, as bits: which statuses a channel may fail with depends on which were on
/// during its life.
const BREAKS: u32 = 1;
const STALLS: u32 = 2;
const ALLOCATIONS: u32 = 4;
const UNANSWERED: u32 = 8;

/// What the workers share.
struct Shared {
    dispatch: Dispatch,
    echo_peers: Vec<(&'static str, Peer)>,
    ca: Vec<u8>,
    /// The fault kinds of each phase so far; a channel's life spans a range of them.
    phases: Mutex<Vec<u32>>,
    violations: Mutex<Vec<String>>,
    figures: Mutex<Figures>,
    /// A promise was broken: workers stop starting channels.
    stop: AtomicBool,
    /// The workers are done: the fault phases stop.
    done: AtomicBool,
}

/// The dispatch table's calls and the provider handle, as a consumer holds them.
#[derive(Clone, Copy)]
struct Dispatch {
    provider: *mut WSKTLS_PROVIDER,
    table: &'static WSKTLS_DISPATCH,
}

// SAFETY: the provider handle and the table are valid from any thread while the sample
// holds its binding (the rig keeps it until unload, after the soak).
unsafe impl Send for Dispatch {}
// SAFETY: as above.
unsafe impl Sync for Dispatch {}

impl Shared {
    fn new(rig: &Rig) -> Shared {
        let pki = test_pki();
        let peer = |f: fn(&mut PeerConfig)| {
            let mut config = PeerConfig::new(&pki.server.chain, &pki.server.key);
            f(&mut config);
            Peer::start("127.0.0.1:0".parse().unwrap(), config).expect("echo-peer")
        };
        let echo_peers = vec![
            ("echo-peer", peer(|_| {})),
            // CHACHA_ONLY is this one's index.
            ("echo-peer, KeyUpdates every 64 KiB", peer(|c| c.key_update_every = Some(64 * 1024))),
            (
                "echo-peer, ChaCha20 only",
                peer(|c| c.suites = Some(vec![echo_peer::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256])),
            ),
        ];
        // SAFETY: the rig's binding lives until its unload, after the soak; the table is
        // wsktls's static DISPATCH.
        let table = unsafe { &*(rig.binding.dispatch() as *const WSKTLS_DISPATCH) };
        Shared {
            dispatch: Dispatch { provider: rig.binding.provider(), table },
            echo_peers,
            ca: super::rig::ca(),
            phases: Mutex::new(vec![0]),
            violations: Mutex::new(Vec::new()),
            figures: Mutex::new(Figures::default()),
            stop: AtomicBool::new(false),
            done: AtomicBool::new(false),
        }
    }

    fn violation(&self, what: String) {
        eprintln!("soak: {what}");
        self.violations.lock().unwrap().push(what);
        self.stop.store(true, Ordering::Relaxed);
    }

    fn phase(&self) -> usize {
        self.phases.lock().unwrap().len() - 1
    }

    /// Sets the kernel's faults and records their kinds as one step, so no channel's life
    /// can begin between the two and be judged against the phase before.
    fn set_phase(&self, kernel: &Kernel, faults: Faults, kinds: u32) {
        let mut phases = self.phases.lock().unwrap();
        kernel.set_faults(faults);
        phases.push(kinds);
    }

    /// The fault kinds on at any time in phases `from..=to`.
    fn kinds(&self, from: usize, to: usize) -> u32 {
        self.phases.lock().unwrap()[from..=to].iter().fold(0, |a, k| a | k)
    }

    /// Draws a new fault phase every 0.5 to 3 seconds until the workers are done (none
    /// after the deadline: the last channels close on a quiet transport only by chance).
    fn change_faults(&self, kernel: &Kernel, deadline: Instant, seed: u64) {
        let mut rng = Rng::new(seed);
        while !self.done.load(Ordering::Relaxed) {
            let (faults, kinds) =
                if Instant::now() < deadline { draw_faults(&mut rng) } else { (Faults::default(), 0) };
            self.set_phase(kernel, faults, kinds);
            self.figures.lock().unwrap().fault_phases += 1;
            let until = Instant::now() + Duration::from_millis(rng.range(500, 3000));
            while Instant::now() < until && !self.done.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// One phase of transport faults, and the kinds it holds.
fn draw_faults(rng: &mut Rng) -> (Faults, u32) {
    let mut faults = if rng.chance(0.5) { Faults::hostile_transport() } else { Faults::default() };
    let mut kinds = 0;
    if rng.chance(0.3) {
        faults.send_buffer_bytes = Some(rng.range(4 * 1024, 64 * 1024) as usize);
    }
    let mut breaks = Breaks::default();
    if rng.chance(0.35) {
        breaks.reset = 0.005;
        breaks.forced_close = 0.003;
        kinds |= BREAKS;
    }
    if rng.chance(0.35) {
        breaks.stall = 0.01;
        breaks.stall_time = (Duration::from_millis(5), Duration::from_millis(300));
        kinds |= STALLS;
    }
    if kinds != 0 {
        faults.breaks = Some(breaks);
    }
    if rng.chance(0.15) {
        let kind = pick(rng, &[AllocKind::Pool, AllocKind::Irp, AllocKind::Mdl]);
        // A connect makes about a hundred allocations: most still open.
        faults.fail_allocations = Some((kind, rng.range(1, 20) as f64 / 2000.0));
        kinds |= ALLOCATIONS;
    }
    if rng.chance(0.1) {
        faults.connect_never_answers = true;
        kinds |= UNANSWERED;
    }
    (faults, kinds)
}
