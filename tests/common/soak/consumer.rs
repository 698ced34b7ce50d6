//! The soak's consumer: one worker thread that opens channel after channel through the
//! dispatch table and uses each at random, keeping the books on every request it issues
//! and checking each completion as it arrives.

use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ntsim::Rng;
use wsktls::nt::*;

use super::super::chaos::{ChaosPeer, ENDINGS, Ending, Script};
use super::super::consumer::ConsumerIrp;
use super::super::rig::Good;
use super::super::{Chain, Done, pattern};
use super::{CHACHA_ONLY, Figures, Shared, UNANSWERED, pick, size, verdict};

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
pub(super) enum PeerOf {
    Echo(usize),
    Chaos(ChaosPeer, Script),
}

/// One channel's life, as its consumer keeps the books.
pub(super) struct Life {
    handle: Box<*mut WSKTLS_CHANNEL>,
    /// This channel's bytes are pattern(base + position): no two channels' alike.
    base: u64,
    /// Stream positions of the sends accepted, in order (refused sends leave holes).
    accepted: VecDeque<(u64, usize)>,
    next_position: u64,
    pub(super) sent: u64,
    pub(super) received: u64,
    pub(super) eof: bool,
    /// Failure statuses seen on sends and receives issued before the consumer saw one.
    pub(super) failures: Vec<NTSTATUS>,
    pub(super) disconnect: Option<NTSTATUS>,
    disconnected: bool,
    pub(super) closing: bool,
    /// Receive slots in the order they were issued (and accepted).
    posted: VecDeque<usize>,
    pub(super) first_phase: usize,
}

impl Life {
    pub(super) fn failed(&self) -> bool {
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

pub(super) struct Worker<'a> {
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
    pub(super) fn new(n: usize, seed: u64, shared: &'a Shared) -> Worker<'a> {
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

    pub(super) fn run(mut self, deadline: Instant) {
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
        for wrong in verdict::judge(self.shared, &life, &peer, outcome, connected) {
            self.violation(wrong);
        }
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
