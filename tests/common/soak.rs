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
//! Every random choice comes from one seed, printed at the start: the fault phases, ntsim's
//! draws, and each worker's n-th channel (its peer, parameters and operations) are the
//! same for the same seed. How many channels a worker gets through, and the moment a
//! fault meets a request, are the machine's timing.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use echo_peer::{Config as PeerConfig, Peer};
use ntsim::{AllocKind, Breaks, Config, Faults, Kernel, Rng};
use wsktls::nt::*;

use super::chaos::{ChaosPeer, ENDINGS, Ending, Outcome, Script};
use super::consumer::ConsumerIrp;
use super::peers::test_pki;
use super::rig::{Good, Rig};
use super::{Chain, Done, pattern};

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

/// Request slots of a worker, by IRP id.
const CONNECT: usize = 0;
const DISCONNECT: usize = 1;
const CLOSE: usize = 2;
const FIRST_SEND: usize = 3;
const SENDS: usize = 4;
const FIRST_RECEIVE: usize = FIRST_SEND + SENDS;
const RECEIVES: usize = 3;
const SLOTS: usize = FIRST_RECEIVE + RECEIVES;

const MAX_SEND: usize = 256 * 1024;
const MAX_RECEIVE: usize = 64 * 1024;

/// How long Close, and then everything else, may take to complete.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// How long a graceful ending may go without a byte before it is called stuck.
const QUIET_WAIT: Duration = Duration::from_secs(20);

/// What an IRP in flight was issued for.
#[derive(Clone, Copy, Debug)]
enum Call {
    Connect,
    Send { len: usize },
    Receive { len: usize },
    Disconnect,
    Close,
}

#[derive(Clone, Copy, Debug)]
struct Busy {
    call: Call,
    /// What the call returned (None until it has).
    returned: Option<NTSTATUS>,
    /// Issued with flags the call does not take: STATUS_NOT_SUPPORTED is owed.
    bad_flags: bool,
    /// Issued after the consumer had seen the channel fail: STATUS_FILE_FORCED_CLOSED owed.
    after_failure: bool,
    /// Issued after the consumer's Disconnect.
    after_disconnect: bool,
}

struct Slot {
    /// Leaked rather than freed if the driver never completes it (a broken promise).
    irp: ManuallyDrop<ConsumerIrp>,
    chain: Chain,
    busy: Option<Busy>,
    /// A receive completed before one issued earlier: booked in issue order.
    arrived: Option<(Busy, Done)>,
}

/// The peer of one channel.
enum PeerOf {
    Echo(usize),
    Chaos(ChaosPeer, Script),
}

/// One channel's life, as its consumer keeps the books.
struct Life {
    handle: Box<*mut WSKTLS_CHANNEL>,
    /// This channel's bytes are pattern(base + position): no two channels' alike.
    base: u64,
    /// Stream positions of the sends accepted, in order (refused sends leave holes).
    accepted: VecDeque<(u64, usize)>,
    next_position: u64,
    sent: u64,
    received: u64,
    eof: bool,
    /// Failure statuses seen on sends and receives issued before the consumer saw one.
    failures: Vec<NTSTATUS>,
    disconnect: Option<NTSTATUS>,
    disconnected: bool,
    closing: bool,
    /// Receive slots in the order they were issued (and accepted).
    posted: VecDeque<usize>,
    first_phase: usize,
}

impl Life {
    fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    /// The stream position of the next byte a receive should deliver.
    fn take_expected_position(&mut self) -> Option<u64> {
        while let Some(&(start, len)) = self.accepted.front() {
            if len > 0 {
                if let Some(front) = self.accepted.front_mut() {
                    front.0 += 1;
                    front.1 -= 1;
                }
                return Some(start);
            }
            self.accepted.pop_front();
        }
        None
    }
}

struct Worker<'a> {
    n: usize,
    seed: u64,
    /// This life's choices: drawn from (seed, channel number).
    rng: Rng,
    shared: &'a Shared,
    slots: Vec<Slot>,
    done: Receiver<Done>,
    channels: u64,
}

impl Busy {
    /// Whether completing with `status` is the channel failing, as the consumer first
    /// learns of it: not a success, nor a refusal the call was owed (flags it does not
    /// take, a send after Disconnect), nor the sticky refusal after a failure it has seen.
    fn newly_failed(&self, status: NTSTATUS) -> bool {
        let owed = self.bad_flags
            || self.after_failure
            || self.after_disconnect && status == STATUS_INVALID_DEVICE_STATE;
        !status.is_success() && !owed
    }
}

impl<'a> Worker<'a> {
    fn new(n: usize, seed: u64, shared: &'a Shared) -> Worker<'a> {
        let mut rng = Rng::new(seed);
        let (tx, done) = mpsc::channel();
        let slots = (0..SLOTS)
            .map(|id| {
                let most = if id >= FIRST_RECEIVE { MAX_RECEIVE } else { MAX_SEND };
                Slot {
                    irp: ManuallyDrop::new(ConsumerIrp::new(id, &tx)),
                    chain: chain(&mut rng, most),
                    busy: None,
                    arrived: None,
                }
            })
            .collect();
        Worker { n, seed, rng, shared, slots, done, channels: 0 }
    }

    fn violation(&self, what: String) {
        self.shared.violation(format!("worker {} channel {}: {what}", self.n, self.channels));
    }

    fn run(mut self, deadline: Instant) {
        while Instant::now() < deadline && !self.shared.stop.load(Ordering::Relaxed) {
            self.channels += 1;
            self.rng = Rng::new(self.seed ^ self.channels.wrapping_mul(0xD6E8_FEB8_6659_FD93));
            self.life();
        }
        let stuck = self.slots.iter().any(|s| s.busy.is_some());
        for slot in &mut self.slots {
            if slot.busy.is_none() {
                // SAFETY: idle: the driver is done with it.
                unsafe { ManuallyDrop::drop(&mut slot.irp) };
            }
        }
        if stuck {
            // Their chains stay too: the driver may still write into them.
            std::mem::forget(self.slots);
        }
    }

    /// One channel, from Connect to Close.
    fn life(&mut self) {
        let (addr, peer) = self.draw_peer();
        let shared = self.shared;
        let figures = |f: &dyn Fn(&mut Figures)| f(&mut shared.figures.lock().unwrap());
        figures(&|f| f.channels += 1);
        let mut life = Life {
            handle: Box::new(std::ptr::null_mut()),
            base: ((self.n as u64) << 48) | (self.channels << 32),
            accepted: VecDeque::new(),
            next_position: 0,
            sent: 0,
            received: 0,
            eof: false,
            failures: Vec::new(),
            disconnect: None,
            disconnected: false,
            closing: false,
            posted: VecDeque::new(),
            first_phase: self.shared.phase(),
        };
        let connected = self.connect(&mut life, addr, &peer);
        if connected {
            figures(&|f| f.connected += 1);
            let start = Instant::now();
            let until = start + Duration::from_millis(self.rng.range(50, 3000));
            // One life in five disconnects mid-way, and keeps using the channel.
            let disconnect_at = self
                .rng
                .chance(0.2)
                .then(|| start + (until - start).mul_f64(self.rng.range(0, 100) as f64 / 100.0));
            let most = size(&mut self.rng, 8 << 20) as u64;
            while Instant::now() < until && !self.shared.stop.load(Ordering::Relaxed) {
                if disconnect_at.is_some_and(|at| Instant::now() >= at) && !life.disconnected {
                    self.disconnect(&mut life);
                }
                self.step(&mut life, most);
            }
            self.end(&mut life);
        }
        let outcome = match &peer {
            PeerOf::Chaos(chaos, _) => chaos.outcome(connected, CLOSE_WAIT),
            PeerOf::Echo(_) => None,
        };
        self.judge(&life, &peer, outcome, connected);
    }

    fn draw_peer(&mut self) -> (SocketAddr, PeerOf) {
        if self.rng.chance(0.4) {
            let i = self.rng.range(0, self.shared.echo_peers.len() as u64 - 1) as usize;
            return (self.shared.echo_peers[i].1.addr(), PeerOf::Echo(i));
        }
        let ending = pick(&mut self.rng, &ENDINGS);
        let script = Script {
            ending,
            after: size(&mut self.rng, 1 << 20) as u64,
            receive_buffer: self.rng.chance(0.2).then(|| self.rng.range(4 * 1024, 64 * 1024) as usize),
            seed: self.rng.next_u64(),
        };
        let chaos = ChaosPeer::start(script);
        (chaos.addr(), PeerOf::Chaos(chaos, script))
    }

    /// Connects with parameters drawn at random; true if a channel opened.
    fn connect(&mut self, life: &mut Life, addr: SocketAddr, peer: &PeerOf) -> bool {
        let good = Good::at(addr);
        let mut p = good.parameters();
        let r = &mut self.rng;
        if r.chance(0.3) {
            p.RecordSize = r.range(256, 16384) as u32;
        }
        if r.chance(0.3) {
            p.SendBudget = r.range(2 * (16384 + 22), 1 << 20) as u32;
        }
        if r.chance(0.3) {
            p.ReceiveBuffer = r.range(32 * 1024, 256 * 1024) as u32;
        }
        if r.chance(0.3) {
            p.Suites = r.range(1, 7) as u32;
        }
        if matches!(peer, PeerOf::Echo(CHACHA_ONLY)) {
            // Offer what it takes, at least.
            p.Suites |= WSKTLS_SUITE_CHACHA20_POLY1305_SHA256;
        }
        let unanswered = self.shared.kinds(life.first_phase, life.first_phase) & UNANSWERED != 0;
        p.ConnectTimeoutMs = if unanswered { r.range(100, 1500) } else { 5_000 } as u32;
        let silent = matches!(peer, PeerOf::Chaos(_, s) if s.ending == Ending::SilentHandshake);
        p.HandshakeTimeoutMs = if silent { r.range(100, 1500) } else { 10_000 } as u32;
        let connect = self.shared.dispatch.table.Connect.expect("Connect");
        let provider = self.shared.dispatch.provider;
        let handle: *mut *mut WSKTLS_CHANNEL = &mut *life.handle;
        // SAFETY: the parameters are read during the call; `handle` (boxed) and the slot's
        // IRP outlive the completion, which `wait` waits for.
        self.issue(life, CONNECT, Call::Connect, false, |irp| unsafe { connect(provider, &p, handle, irp) });
        // Connects queue for the system worker threads, where others may sit out their
        // timeouts.
        let Some(done) = self.wait(life, CONNECT, Duration::from_secs(90)) else { return false };
        if done.status.is_success() {
            if life.handle.is_null() {
                self.violation("Connect succeeded without a handle".into());
                return false;
            }
            return true;
        }
        if !life.handle.is_null() {
            self.violation(format!("a failed Connect ({:?}) wrote a handle", done.status));
        }
        life.failures.push(done.status);
        false
    }

    /// One random step of an open channel's life.
    fn step(&mut self, life: &mut Life, most: u64) {
        self.book_arrived(life, Duration::ZERO);
        match self.rng.range(0, 99) {
            0..=34 if life.next_position < most => self.send(life),
            35..=69 => self.receive(life, false),
            70..=72 => self.query(life),
            _ => {
                let wait = Duration::from_millis(self.rng.range(0, 5));
                self.book_arrived(life, wait);
            }
        }
    }

    fn idle_slot(&self, first: usize, count: usize) -> Option<usize> {
        (first..first + count).find(|&i| self.slots[i].busy.is_none() && self.slots[i].arrived.is_none())
    }

    fn send(&mut self, life: &mut Life) {
        let Some(i) = self.idle_slot(FIRST_SEND, SENDS) else { return };
        let capacity = self.slots[i].chain.buffers.iter().map(|b| b.len()).sum::<usize>();
        let offset = self.rng.range(0, self.slots[i].chain.buffers[0].len() as u64 - 1) as u32;
        let len = size(&mut self.rng, capacity - offset as usize);
        let bad_flags = self.rng.chance(0.02);
        let flags = if bad_flags {
            self.bad_flags()
        } else if self.rng.chance(0.5) {
            WSK_FLAG_NODELAY
        } else {
            0
        };
        let start = life.next_position;
        life.next_position += len as u64;
        let base = life.base;
        let chain = &mut self.slots[i].chain;
        chain.offset = offset;
        chain.tail = 0;
        chain.for_each(start, len, |pos, b| *b = pattern(base + pos));
        let mut buf = chain.wsk_buf(len);
        let send = self.shared.dispatch.table.Send.expect("Send");
        let channel = *life.handle;
        // SAFETY: the chain is the slot's, idle until the completion; `buf` is read during
        // the call.
        let returned = self.issue(life, i, Call::Send { len }, bad_flags, |irp| unsafe {
            send(channel, &mut buf, flags, irp)
        });
        if returned == STATUS_PENDING || returned.is_success() {
            life.accepted.push_back((start, len));
        }
        self.shared.figures.lock().unwrap().sends += 1;
    }

    /// A receive of random size and flags; `whole`: of all the slot's chain, with
    /// WSK_FLAG_WAITALL (one that stays pending while the echo is short of it).
    fn receive(&mut self, life: &mut Life, whole: bool) {
        let Some(i) = self.idle_slot(FIRST_RECEIVE, RECEIVES) else { return };
        let capacity = self.slots[i].chain.buffers.iter().map(|b| b.len()).sum::<usize>();
        let offset = self.rng.range(0, self.slots[i].chain.buffers[0].len() as u64 - 1) as u32;
        let len =
            if whole { capacity - offset as usize } else { size(&mut self.rng, capacity - offset as usize) };
        let bad_flags = !whole && self.rng.chance(0.02);
        let flags = if whole {
            WSK_FLAG_WAITALL
        } else if bad_flags {
            self.bad_flags()
        } else if self.rng.chance(0.2) {
            WSK_FLAG_WAITALL
        } else {
            0
        };
        let chain = &mut self.slots[i].chain;
        chain.offset = offset;
        chain.tail = 0;
        let mut buf = chain.wsk_buf(len);
        let receive = self.shared.dispatch.table.Receive.expect("Receive");
        let channel = *life.handle;
        // SAFETY: as for send; the driver writes into the chain until the completion.
        let returned = self.issue(life, i, Call::Receive { len }, bad_flags, |irp| unsafe {
            receive(channel, &mut buf, flags, irp)
        });
        if returned == STATUS_PENDING {
            life.posted.push_back(i);
        }
        self.shared.figures.lock().unwrap().receives += 1;
    }

    /// Flags neither Send nor Receive takes (WSK_FLAG_NODELAY and WSK_FLAG_WAITALL are
    /// one bit, each call's own).
    fn bad_flags(&mut self) -> u32 {
        pick(&mut self.rng, &[WSK_FLAG_ABORTIVE, WSK_FLAG_DRAIN, WSK_FLAG_AT_DISPATCH_LEVEL, 0x100])
    }

    fn query(&mut self, life: &mut Life) {
        let query = self.shared.dispatch.table.Query.expect("Query");
        let mut counters = WSKTLS_COUNTERS::default();
        let mut returned = 0u32;
        let before = life.received;
        // SAFETY: a buffer of the class's size, and its length.
        let status = unsafe {
            query(
                *life.handle,
                WskTlsInfoCounters,
                (&mut counters as *mut WSKTLS_COUNTERS).cast(),
                size_of::<WSKTLS_COUNTERS>() as u32,
                &mut returned,
            )
        };
        self.shared.figures.lock().unwrap().operations += 1;
        if status.is_success() {
            if counters.BytesReceived < before {
                self.violation(format!(
                    "Query counts {} bytes received, the consumer has {before}",
                    counters.BytesReceived
                ));
            }
        } else if status != STATUS_FILE_FORCED_CLOSED {
            self.violation(format!("Query failed with {status:?}"));
        }
    }

    fn disconnect(&mut self, life: &mut Life) {
        let disconnect = self.shared.dispatch.table.Disconnect.expect("Disconnect");
        let channel = *life.handle;
        life.disconnected = true;
        // SAFETY: the slot's idle IRP.
        self.issue(life, DISCONNECT, Call::Disconnect, false, |irp| unsafe { disconnect(channel, 0, irp) });
    }

    /// How the consumer ends the channel: gracefully (Disconnect, then read to the end
    /// of the stream), by Disconnect and Close at once, or by Close alone, whatever is
    /// pending.
    fn end(&mut self, life: &mut Life) {
        if self.rng.chance(0.5) {
            self.finish_gracefully(life);
        } else {
            if self.rng.chance(0.4) && !life.disconnected {
                self.disconnect(life);
            }
            if self.rng.chance(0.7) {
                // Requests for Close to meet in flight.
                self.send(life);
                for _ in 0..RECEIVES {
                    self.receive(life, true);
                }
            }
        }
        self.book_arrived(life, Duration::ZERO);
        self.learn_failure(life);
        if self.slots.iter().any(|s| s.busy.is_some()) {
            self.shared.figures.lock().unwrap().closes_with_requests_pending += 1;
        }
        let close = self.shared.dispatch.table.Close.expect("Close");
        let channel = *life.handle;
        life.closing = true;
        // SAFETY: the slot's idle IRP.
        self.issue(life, CLOSE, Call::Close, false, |irp| unsafe { close(channel, irp) });
        if self.wait(life, CLOSE, CLOSE_WAIT).is_none() {
            return;
        }
        // Close completes after what was pending on the channel, and those completions
        // reached this thread first (`wait` books in arrival order).
        let left: Vec<_> = self.slots.iter().filter_map(|s| s.busy.map(|b| b.call)).collect();
        if left.iter().any(|c| matches!(c, Call::Send { .. } | Call::Receive { .. })) {
            self.violation(format!("Close completed before these requests did: {left:?}"));
        }
        // A Disconnect's IRP may still be on its way out of its work item.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.slots.iter().any(|s| s.busy.is_some()) && Instant::now() < deadline {
            self.book_arrived(life, Duration::from_millis(10));
        }
        let left: Vec<_> = self.slots.iter().filter_map(|s| s.busy.map(|b| b.call)).collect();
        if !left.is_empty() {
            self.violation(format!("Close completed, and these requests never did: {left:?}"));
        }
    }

    /// A consumer that met the channel's failure only as the refusal that follows one
    /// (STATUS_FILE_FORCED_CLOSED) asks Disconnect, which answers with the failure itself.
    fn learn_failure(&mut self, life: &mut Life) {
        if life.failures.is_empty() || life.failures.iter().any(|s| *s != STATUS_FILE_FORCED_CLOSED) {
            return;
        }
        if self.slots[DISCONNECT].busy.is_some() {
            let earlier = self.wait(life, DISCONNECT, CLOSE_WAIT);
            // One that got through (or timed out) before the failure has nothing to say.
            if earlier.is_none_or(|d| ![STATUS_SUCCESS, STATUS_IO_TIMEOUT].contains(&d.status)) {
                if let Some(d) = earlier {
                    life.failures.push(d.status);
                }
                return;
            }
        }
        self.disconnect(life);
        if let Some(done) = self.wait(life, DISCONNECT, CLOSE_WAIT) {
            life.failures.push(done.status);
        }
    }

    fn finish_gracefully(&mut self, life: &mut Life) {
        if !life.disconnected {
            self.disconnect(life);
        }
        let mut last = (life.received, Instant::now());
        while !life.eof && !life.failed() && life.disconnect.is_none_or(|s| s.is_success()) {
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            self.receive(life, false);
            self.book_arrived(life, Duration::from_millis(5));
            if life.received != last.0 {
                last = (life.received, Instant::now());
            } else if last.1.elapsed() > QUIET_WAIT {
                self.violation(format!(
                    "after Disconnect, nothing arrived for {QUIET_WAIT:?} ({} of {} bytes echoed)",
                    life.received, life.sent
                ));
                return;
            }
        }
    }

    /// Issues one call on slot `i` and returns what it returned.
    fn issue(
        &mut self,
        life: &Life,
        i: usize,
        call: Call,
        bad_flags: bool,
        f: impl FnOnce(*mut IRP) -> NTSTATUS,
    ) -> NTSTATUS {
        if self.slots[i].busy.is_some() {
            self.violation(format!("harness: slot {i} reused while busy"));
        }
        let slot = &mut self.slots[i];
        let irp = slot.irp.arm();
        slot.busy = Some(Busy {
            call,
            returned: None,
            bad_flags,
            after_failure: life.failed(),
            after_disconnect: life.disconnected,
        });
        let returned = f(irp);
        if let Some(b) = &mut self.slots[i].busy {
            b.returned = Some(returned);
        }
        let mut figures = self.shared.figures.lock().unwrap();
        figures.operations += 1;
        figures.refused_on_purpose += bad_flags as u64;
        returned
    }

    /// Books completions until slot `i` has completed (or `wait` passes: a broken promise).
    fn wait(&mut self, life: &mut Life, i: usize, wait: Duration) -> Option<Done> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(done) if done.id == i => {
                    self.book(life, done);
                    return Some(done);
                }
                Ok(done) => self.book(life, done),
                Err(RecvTimeoutError::Timeout) => {
                    let call = self.slots[i].busy.map(|b| b.call);
                    self.violation(format!("{call:?} did not complete within {wait:?}"));
                    return None;
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Books what has completed, waiting up to `wait` for the first.
    fn book_arrived(&mut self, life: &mut Life, wait: Duration) {
        if let Ok(done) = self.done.recv_timeout(wait) {
            self.book(life, done);
        }
        while let Ok(done) = self.done.try_recv() {
            self.book(life, done);
        }
    }

    /// Checks one completion against what its call was owed.
    fn book(&mut self, life: &mut Life, done: Done) {
        let Some(busy) = self.slots[done.id].busy.take() else {
            self.violation(format!(
                "slot {} completed while nothing was in flight on it (twice?): {done:?}",
                done.id
            ));
            return;
        };
        if let Some(r) = busy.returned {
            if r != STATUS_PENDING && r != done.status {
                self.violation(format!(
                    "{:?} returned {r:?} but completed with {:?}",
                    busy.call, done.status
                ));
            }
        }
        if busy.bad_flags && done.status != STATUS_NOT_SUPPORTED {
            self.violation(format!(
                "{:?} with flags it does not take completed with {:?}",
                busy.call, done.status
            ));
        }
        let transfer = matches!(busy.call, Call::Send { .. } | Call::Receive { .. });
        if transfer
            && busy.after_failure
            && !busy.bad_flags
            && (done.status != STATUS_FILE_FORCED_CLOSED || done.bytes != 0)
        {
            self.violation(format!(
                "{:?} issued after the channel failed completed with {done:?}",
                busy.call
            ));
        }
        if done.status == STATUS_CANCELLED && !life.closing {
            self.violation(format!("{:?} cancelled with no Close issued", busy.call));
        }
        match busy.call {
            Call::Send { len } => self.book_send(life, &busy, done, len),
            // Receives deliver in the order they were queued: booked so, whatever order
            // their completions reach this thread in.
            Call::Receive { .. } if busy.returned == Some(STATUS_PENDING) => {
                self.slots[done.id].arrived = Some((busy, done));
                while let Some(&front) = life.posted.front() {
                    let Some((busy, done)) = self.slots[front].arrived.take() else { break };
                    life.posted.pop_front();
                    self.book_receive(life, &busy, done);
                }
            }
            // Refused at the call: never queued.
            Call::Receive { .. } => self.book_receive(life, &busy, done),
            Call::Disconnect => life.disconnect = Some(done.status),
            Call::Connect | Call::Close => {}
        }
    }

    fn book_send(&mut self, life: &mut Life, busy: &Busy, done: Done, len: usize) {
        if done.status.is_success() {
            if done.bytes != len {
                self.violation(format!("a send of {len} bytes completed with {}", done.bytes));
            }
            life.sent += len as u64;
            self.shared.figures.lock().unwrap().bytes_sent += len as u64;
        } else if busy.newly_failed(done.status) {
            life.failures.push(done.status);
        }
    }

    fn book_receive(&mut self, life: &mut Life, busy: &Busy, done: Done) {
        let Call::Receive { len } = busy.call else { return };
        if done.bytes > len {
            self.violation(format!("a receive of {len} bytes completed with {}", done.bytes));
            return;
        }
        if done.status.is_success() && done.bytes == 0 {
            life.eof = true;
            return;
        }
        if done.bytes > 0 && (life.eof || busy.after_failure) {
            self.violation(format!("{} bytes delivered after the end or a failure: {done:?}", done.bytes));
        }
        let base = life.base;
        let (mut wrong, mut beyond) = (None, false);
        let at = life.received;
        // Each byte's expected position comes from the accepted sends, in order.
        self.slots[done.id].chain.for_each(at, done.bytes, |offset, b| match life.take_expected_position() {
            Some(p) if *b != pattern(base + p) => wrong = wrong.or(Some(offset)),
            Some(_) => {}
            None => beyond = true,
        });
        if beyond {
            self.violation(format!("more bytes delivered than were sent ({} after {at})", done.bytes));
        } else if let Some(byte) = wrong {
            self.violation(format!(
                "byte {byte} of the stream arrived wrong (lost, repeated or out of order)"
            ));
        }
        life.received += done.bytes as u64;
        self.shared.figures.lock().unwrap().bytes_received += done.bytes as u64;
        if busy.newly_failed(done.status) {
            life.failures.push(done.status);
        }
    }

    /// The end of a life: was every failure explained, and did the peer's echo arrive as
    /// its script says?
    fn judge(&mut self, life: &Life, peer: &PeerOf, outcome: Option<Outcome>, connected: bool) {
        let kinds = self.shared.kinds(life.first_phase, self.shared.phase());
        let script = match peer {
            PeerOf::Chaos(_, s) => Some(*s),
            PeerOf::Echo(_) => None,
        };
        let mut allowed = vec![];
        if life.closing {
            allowed.push(STATUS_CANCELLED);
        }
        if kinds & BREAKS != 0 {
            allowed.extend([STATUS_CONNECTION_RESET, STATUS_FILE_FORCED_CLOSED]);
        }
        // Stalls last at most 300 ms: too short for a connect or handshake timeout.
        if kinds & UNANSWERED != 0 {
            allowed.push(STATUS_IO_TIMEOUT);
        }
        if kinds & ALLOCATIONS != 0 {
            allowed.push(STATUS_INSUFFICIENT_RESOURCES);
        }
        if let Some(s) = script {
            allowed.extend(match s.ending {
                Ending::Faithful | Ending::EarlyCloseNotify => vec![],
                Ending::SilentHandshake => vec![STATUS_IO_TIMEOUT],
                Ending::Tamper => vec![SEC_E_MESSAGE_ALTERED],
                Ending::Truncate => vec![STATUS_WSKTLS_TRUNCATED],
                Ending::Reset => vec![STATUS_CONNECTION_RESET],
                Ending::FatalAlert => vec![STATUS_WSKTLS_PEER_ALERT],
                Ending::Oversized => vec![SEC_E_ILLEGAL_MESSAGE],
            });
        }
        // A call that meets a failure the consumer has not seen yet is refused with
        // STATUS_FILE_FORCED_CLOSED (`end` asks Disconnect for the failure itself).
        if life.failures.iter().any(|s| ![STATUS_FILE_FORCED_CLOSED, STATUS_CANCELLED].contains(s)) {
            allowed.push(STATUS_FILE_FORCED_CLOSED);
        }
        for status in &life.failures {
            if !allowed.contains(status) {
                self.violation(format!(
                    "failed with {status:?}, which nothing injected explains (fault kinds {kinds:#x}, peer {:?}, \
                     its end: {:?}, all: {:?})",
                    script.map(|s| s.ending),
                    outcome.map(|o| (o.end, o.error)),
                    life.failures
                ));
            }
        }
        if let Some(s) = life.disconnect {
            // A Disconnect may time out honestly: our sends cannot drain while a peer with
            // a small window waits for a consumer that is not reading.
            let ok = s.is_success() || s == STATUS_IO_TIMEOUT || allowed.contains(&s);
            if !ok {
                self.violation(format!("Disconnect completed with {s:?}"));
            }
        }
        let clean_end = life.eof && !life.failed() && life.disconnect.is_some_and(|s| s.is_success());
        let mut whole = false;
        match (script, outcome) {
            (Some(s), Some(o)) => {
                let got = life.received;
                if got > o.echoed {
                    self.violation(format!("{got} bytes delivered, the peer echoed {}", o.echoed));
                }
                if let Some(at) = o.misbehaved_at {
                    if got > at {
                        self.violation(format!(
                            "{got} bytes delivered past the peer's {:?} at {at}",
                            s.ending
                        ));
                    }
                }
                let faithful = s.ending == Ending::Faithful || o.misbehaved_at.is_none();
                if clean_end && faithful && got != life.sent {
                    self.violation(format!("the echo ended cleanly with {got} of {} bytes", life.sent));
                }
                if clean_end
                    && s.ending == Ending::EarlyCloseNotify
                    && o.misbehaved_at.is_some_and(|at| got != at)
                {
                    self.violation(format!(
                        "the stream ended cleanly with {got} bytes, the peer echoed {:?}",
                        o.misbehaved_at
                    ));
                }
                whole = clean_end && faithful;
            }
            (Some(_), None) if connected => {
                self.violation("the chaos peer did not finish after Close".into());
            }
            (None, _) => {
                if clean_end && life.received != life.sent {
                    self.violation(format!(
                        "echo-peer's echo ended cleanly with {} of {} bytes",
                        life.received, life.sent
                    ));
                }
                whole = clean_end;
            }
            _ => {}
        }
        let mut f = self.shared.figures.lock().unwrap();
        f.whole_echoes += whole as u64;
        let ending = match life.failures.iter().find(|s| **s != STATUS_FILE_FORCED_CLOSED) {
            Some(s) => format!("{s:?}"),
            None if !connected => "no channel".into(),
            None => "clean".into(),
        };
        *f.endings.entry(ending).or_default() += 1;
        let name = match peer {
            PeerOf::Echo(i) => self.shared.echo_peers[*i].0.to_string(),
            PeerOf::Chaos(_, s) => format!("chaos {:?}", s.ending),
        };
        *f.peers.entry(name).or_default() += 1;
        if let Some(o) = outcome {
            f.peer_key_updates += o.key_updates;
            f.peer_tickets += o.tickets;
            f.peer_empty_records += o.empty_records;
            f.peer_warnings += o.warnings;
            f.peer_pauses += o.pauses;
        }
    }
}

/// A chain of 1 to 6 pool buffers of random sizes, `most` bytes in all at most.
fn chain(rng: &mut Rng, most: usize) -> Chain {
    let count = rng.range(1, 6) as usize;
    let mut sizes: Vec<usize> = (0..count).map(|_| size(rng, most / count).max(1)).collect();
    if rng.chance(0.5) {
        // One buffer big enough for the largest requests.
        let total: usize = sizes.iter().sum();
        if let Some(last) = sizes.last_mut() {
            *last += most.saturating_sub(total);
        }
    }
    Chain::new(&sizes, 0, 0)
}
