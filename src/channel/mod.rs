//! One secure channel: a connected WSK socket, a TLS 1.3 session over it, and WskSend's
//! calling conventions offered upward.
//!
//! States: connecting → handshaking (both inside [`Channel::connect`], at PASSIVE_LEVEL)
//! → open → closing (our close_notify queued) → closed; or failed, from any of them.
//! Failure is sticky: every queued request completes with the failure's status, nothing
//! after the fault is delivered, and later calls get STATUS_FILE_FORCED_CLOSED until the
//! consumer closes the channel.
//!
//! Send and receive run in parallel under separate spin locks (TX and RX each own their
//! key and sequence number); the rustls key schedule that derives the next keys on a
//! KeyUpdate ([`keys::Keys`]) has a third, always taken last.

mod config;
mod connect;
mod keys;
mod pump;
mod receive;
mod send;
mod status;

use core::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use wsktls_crypto::Suite;

pub use config::{
    ChannelConfig, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DISCONNECT_TIMEOUT_MS, DEFAULT_HANDSHAKE_TIMEOUT_MS,
    MAX_SEND_BUDGET, MIN_RECEIVE_BUFFER, MIN_RECORD_SIZE, MIN_SEND_BUDGET,
};
pub use connect::{HANDSHAKE_HEAP, KEY_UPDATE_HEAP};
pub use receive::ReceiveStats;
pub use send::SendStats;

use keys::Keys;
use receive::{End, Rx};
use send::{CloseNotify, Failure, SEND_SLOTS, Tx};

use crate::interface::{Completions, ConsumerRequest};
use crate::nt::{
    Event, NTSTATUS, PoolBox, STATUS_CANCELLED, STATUS_FILE_FORCED_CLOSED, STATUS_INVALID_DEVICE_STATE,
    STATUS_IO_TIMEOUT, STATUS_SUCCESS, STATUS_TIMEOUT, SpinLock, interrupt_time_100ns,
};
use crate::platform::PLATFORM;
use crate::tls::Protocol;
use crate::wsk::{Completion, Request, Socket};

/// A channel's observable state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Open,
    /// Our close_notify is queued or sent; the peer's side may still be open.
    Closing,
    /// close_notify went both ways.
    Closed,
    Failed(NTSTATUS),
}

/// What the session negotiated, and the channel's counters.
#[derive(Clone, Debug)]
pub struct ChannelInfo {
    pub suite: Suite,
    pub alpn: Option<Protocol>,
    pub peer_certificate_sha256: [u8; 32],
    pub sent: SendStats,
    pub received: ReceiveStats,
}

/// A secure channel. Dropping it closes it (PASSIVE_LEVEL).
pub struct Channel {
    shared: PoolBox<Shared>,
}

/// Everything the completion routines reach: pool-resident, so its address is stable.
pub(crate) struct Shared {
    socket: Socket,
    /// 0 while healthy; otherwise the status of the first failure.
    failure: AtomicI32,
    tx: SpinLock<Tx>,
    rx: SpinLock<Rx>,
    keys: SpinLock<Keys>,
    sends: [Request<SendDone>; SEND_SLOTS],
    receive: Request<ReceiveDone>,
    /// Signalled whenever the send side drains (disconnect waits on it).
    drained: Event,
    suite: Suite,
    alpn: Option<Protocol>,
    peer_certificate_sha256: [u8; 32],
}

/// Completion of one send slot.
pub(crate) struct SendDone {
    owner: AtomicPtr<Shared>,
    slot: usize,
}

/// Completion of the receive.
pub(crate) struct ReceiveDone {
    owner: AtomicPtr<Shared>,
}

impl Completion for SendDone {
    fn completed(&self, status: NTSTATUS, bytes: usize) {
        // SAFETY: set (by wire_up) before any request is issued; Channel::drop frees
        // Shared only once every request is idle, so it outlives this routine.
        let shared = unsafe { &*self.owner.load(Ordering::Acquire) };
        shared.tx.lock().slot_completed(self.slot, status, bytes);
        shared.pump_tx();
    }
}

impl Completion for ReceiveDone {
    fn completed(&self, status: NTSTATUS, bytes: usize) {
        // SAFETY: as for SendDone.
        let shared = unsafe { &*self.owner.load(Ordering::Acquire) };
        shared.rx.lock().receive_completed(status, bytes);
        shared.pump_rx();
    }
}

impl Shared {
    fn failure(&self) -> Option<NTSTATUS> {
        match self.failure.load(Ordering::Acquire) {
            0 => None,
            s => Some(NTSTATUS(s)),
        }
    }

    /// Fails the channel (the first failure wins) and lets both pipelines complete what
    /// they hold. A TLS failure found by us also queues its alert for the peer.
    fn fail(&self, failure: Failure) {
        self.record(failure);
        self.pump_tx();
        self.pump_rx();
        self.signal_drained();
    }

    /// The first half of `fail`: the failure becomes the channel's (and its alert is
    /// queued), so every call from here on is refused; nothing is completed yet.
    fn record(&self, failure: Failure) {
        let status = match failure {
            Failure::Transport(s) => s,
            Failure::Tls(e) => {
                if let Some(a) = e.alert() {
                    self.tx.lock().queue_alert(crate::tls::alert(a));
                }
                status::status_of(e)
            }
        };
        if self.failure.compare_exchange(0, status.0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            crate::log!(crate::log::Level::Warning, "channel failed: {:?}", status);
        }
    }

    fn signal_drained(&self) {
        self.drained.set();
    }

    /// Runs the send pipeline until it has nothing to do. Only one thread pumps at a time;
    /// a call that finds the pump running asks it for another pass and returns.
    fn pump_tx(&self) {
        if !self.tx.lock().pump.begin() {
            return;
        }
        loop {
            let mut done = Completions::new();
            let (pass, drained) = {
                let mut tx = self.tx.lock();
                let failure = self.failure();
                let pass = tx.pass(failure, &self.keys, &mut done, &PLATFORM);
                (pass, tx.is_drained())
            };
            // The failure is the channel's before any send completes with it: a consumer
            // that sees one fail and calls again must be refused (STATUS_FILE_FORCED_CLOSED),
            // not queued behind it. The rest of `fail` follows the completions, so they
            // reach the consumer first, in order.
            let failed = pass.failure.is_some();
            if let Some(failure) = pass.failure {
                self.record(failure);
            }
            // Completed while still the pump, so consumers see completions in order.
            done.complete_all();
            // A failure takes one more pass: it fails what is queued and seals the alert.
            let idle = pass.batch.is_none() && !failed;
            if let Some(batch) = pass.batch {
                self.issue_send(batch);
            }
            if failed {
                self.pump_rx();
            }
            if failed || drained {
                self.signal_drained();
            }
            if idle && self.tx.lock().pump.end() {
                return;
            }
        }
    }

    fn issue_send(&self, batch: send::Batch) {
        // SAFETY: the batch's records are ours and stay untouched until the slot's
        // completion retires them; the chain holds exactly the span's bytes.
        let issued = unsafe { self.sends[batch.slot].send_span(&self.socket, batch.span, batch.nodelay) };
        if let Err(status) = issued {
            self.tx.lock().slot_not_issued(batch.slot, status);
            self.fail(Failure::Transport(status));
        }
    }

    /// Runs the receive pipeline until it has nothing to do (same discipline as TX).
    fn pump_rx(&self) {
        if !self.rx.lock().pump.begin() {
            return;
        }
        loop {
            let mut done = Completions::new();
            let result = {
                let mut rx = self.rx.lock();
                let failure = self.failure();
                rx.pass(failure, &self.keys, &mut done, &PLATFORM)
            };
            // TX learns it owes a KeyUpdate before any receive completes: a consumer that
            // answers the data at once must find its reply sealed after our KeyUpdate
            // (RFC 8446 §4.6.3).
            if matches!(&result, Ok(action) if action.owe_key_update) {
                self.tx.lock().owe_key_update();
            }
            // A pass that fails completes nothing with the failure (only what was delivered
            // before it), so here the failure may follow the completions.
            done.complete_all();
            let idle = matches!(&result, Ok(action) if action.post.is_none() && !action.owe_key_update);
            match result {
                Ok(action) => {
                    if action.owe_key_update {
                        self.pump_tx();
                    }
                    if let Some(span) = action.post {
                        // SAFETY: the free end of our receive buffer, which nothing else
                        // touches until the completion.
                        if let Err(status) = unsafe { self.receive.receive_span(&self.socket, span) } {
                            self.rx.lock().receive_not_issued();
                            self.fail(Failure::Transport(status));
                        }
                    }
                }
                Err(failure) => self.fail(failure),
            }
            if idle && self.rx.lock().pump.end() {
                return;
            }
        }
    }
}

impl Channel {
    /// The channel's state.
    pub fn state(&self) -> State {
        let s = &self.shared;
        if let Some(status) = s.failure() {
            return State::Failed(status);
        }
        let ours = s.tx.lock().close_notify;
        let theirs = s.rx.lock().end;
        match (ours, theirs) {
            (CloseNotify::NotRequested, _) => State::Open,
            (CloseNotify::Sent, End::CloseNotify) => State::Closed,
            _ => State::Closing,
        }
    }

    pub fn info(&self) -> ChannelInfo {
        let s = &self.shared;
        ChannelInfo {
            suite: s.suite,
            alpn: s.alpn,
            peer_certificate_sha256: s.peer_certificate_sha256,
            sent: s.tx.lock().stats(),
            received: s.rx.lock().stats(),
        }
    }

    /// Why a new send (`send`) or receive would be refused now, if it would.
    pub(crate) fn refusal(&self, send: bool) -> Option<NTSTATUS> {
        if self.shared.failure().is_some() {
            return Some(STATUS_FILE_FORCED_CLOSED);
        }
        let closing = send && self.shared.tx.lock().close_notify != CloseNotify::NotRequested;
        closing.then_some(STATUS_INVALID_DEVICE_STATE)
    }

    /// Queues a consumer's send (interface::send has checked it). It completes when its
    /// last byte is on the wire. A channel that failed, or has sent its close_notify,
    /// completes it at once with the status returned.
    pub(crate) fn send(&self, request: ConsumerRequest) -> Result<(), NTSTATUS> {
        let refused = {
            let mut tx = self.shared.tx.lock();
            if self.shared.failure().is_some() {
                Some(STATUS_FILE_FORCED_CLOSED)
            } else if tx.close_notify != CloseNotify::NotRequested {
                Some(STATUS_INVALID_DEVICE_STATE)
            } else {
                tx.push(request);
                None
            }
        };
        if let Some(status) = refused {
            request.complete(status, 0);
            return Err(status);
        }
        self.shared.pump_tx();
        Ok(())
    }

    /// Queues a consumer's receive (interface::receive has checked it). A channel that
    /// failed completes it at once with the status returned.
    pub(crate) fn receive(&self, request: ConsumerRequest) -> Result<(), NTSTATUS> {
        if self.shared.failure().is_some() {
            request.complete(STATUS_FILE_FORCED_CLOSED, 0);
            return Err(STATUS_FILE_FORCED_CLOSED);
        }
        self.shared.rx.lock().push(request);
        self.shared.pump_rx();
        Ok(())
    }

    /// Fails the channel with `status` (unless it failed already): what is queued on it
    /// completes with that status, later calls are refused. The socket stays open until
    /// the channel is dropped. IRQL <= DISPATCH_LEVEL.
    pub fn abort(&self, status: NTSTATUS) {
        self.shared.fail(Failure::Transport(status));
    }

    /// Graceful close of our side: our close_notify after every byte already queued, then
    /// a TCP FIN. Waits (PASSIVE_LEVEL) up to `timeout_ms`; the peer may still send until
    /// its own close_notify, which receives report as 0 bytes.
    pub fn disconnect(&self, timeout_ms: u32) -> Result<(), NTSTATUS> {
        let s = &self.shared;
        s.tx.lock().request_close_notify();
        s.pump_tx();
        let deadline = interrupt_time_100ns() + timeout_ms as u64 * 10_000;
        loop {
            // Cleared before the checks, so a signal in between is not lost.
            s.drained.clear();
            if let Some(status) = s.failure() {
                return Err(status);
            }
            if s.tx.lock().close_notify == CloseNotify::Sent {
                break;
            }
            let now = interrupt_time_100ns();
            if now >= deadline {
                return Err(STATUS_IO_TIMEOUT);
            }
            let waited = s.drained.wait((((deadline - now) / 10_000) as u32).max(1));
            if waited != STATUS_SUCCESS && waited != STATUS_TIMEOUT {
                return Err(waited);
            }
        }
        let left = deadline.saturating_sub(interrupt_time_100ns()) / 10_000;
        s.socket.disconnect((left as u32).max(1))
    }

    /// Closes the channel: pending requests complete with STATUS_CANCELLED, the socket is
    /// closed (cancelling what is in flight), and every buffer, key and secret is wiped and
    /// freed. Always allowed. PASSIVE_LEVEL.
    pub fn close(self) {
        drop(self)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let s = &self.shared;
        let _ = s.failure.compare_exchange(0, STATUS_CANCELLED.0, Ordering::AcqRel, Ordering::Acquire);
        s.pump_tx();
        s.pump_rx();
        // After this no request is pending and none can be issued.
        s.socket.shut();
        // A completion routine that already ran may still be on its way out of our code.
        while !(s.sends.iter().all(Request::is_idle) && s.receive.is_idle()) {
            core::hint::spin_loop();
        }
        // Dropping Shared wipes the keys (TrafficKey, KernelConnection's secrets) and
        // zeroes the buffers (PoolBuffer), then frees them.
    }
}

impl Shared {
    /// Initialises what must be set up in place, once `Shared` sits at its final address:
    /// the event, and the requests' back-pointers.
    fn wire_up(this: &mut PoolBox<Shared>) {
        let ptr = this.as_ptr();
        // SAFETY: Shared sits at its final (pool) address, and nothing has used the event.
        unsafe { this.drained.initialize() };
        for r in &this.sends {
            r.handler().owner.store(ptr, Ordering::Release);
        }
        this.receive.handler().owner.store(ptr, Ordering::Release);
    }
}
