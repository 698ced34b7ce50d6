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
//! key and sequence number); the rustls `KernelConnection` that derives the next keys on a
//! KeyUpdate has a third, always taken last.

mod chain;
mod config;
mod connect;
mod lock;
mod pump;
mod queue;
mod receive;
mod send;
mod status;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use wsktls_crypto::Suite;

pub use config::{
    ChannelConfig, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DISCONNECT_TIMEOUT_MS, DEFAULT_HANDSHAKE_TIMEOUT_MS,
    MAX_SEND_BUDGET, MIN_RECORD_SIZE, MIN_SEND_BUDGET,
};
pub use receive::ReceiveStats;
pub use send::SendStats;

use lock::SpinLock;
use queue::{Completions, Op};
use receive::{End, Rx};
use send::{CloseNotify, Failure, SEND_SLOTS, Tx};

use crate::nt::{
    Executive, FALSE, IRP, KEVENT, KeInitializeEvent, KeSetEvent, KeWaitForSingleObject, KernelMode,
    NTSTATUS, NotificationEvent, PoolBox, STATUS_CANCELLED, STATUS_FILE_FORCED_CLOSED,
    STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_IO_TIMEOUT, STATUS_NOT_SUPPORTED,
    STATUS_PENDING, STATUS_SUCCESS, STATUS_TIMEOUT, WSK_BUF, WSK_FLAG_NODELAY, WSK_FLAG_WAITALL,
    relative_timeout_ms,
};
use crate::platform::PLATFORM;
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
    pub alpn: Option<Vec<u8>>,
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
    keys: SpinLock<KernelConnection<ClientConnectionData>>,
    sends: [Request<SendDone>; SEND_SLOTS],
    receive: Request<ReceiveDone>,
    /// Signalled whenever the send side drains (disconnect waits on it).
    drained: KEVENT,
    suite: Suite,
    alpn: Option<Vec<u8>>,
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
        let status = match failure {
            Failure::Transport(s) => s,
            Failure::Tls(e) => {
                if let Some(a) = e.alert() {
                    self.tx.lock().queue_alert(crate::tls::alert(a));
                }
                status::status_of(e)
            }
        };
        let _ = self.failure.compare_exchange(0, status.0, Ordering::AcqRel, Ordering::Acquire);
        self.pump_tx();
        self.pump_rx();
        self.signal_drained();
    }

    fn signal_drained(&self) {
        let event = &self.drained as *const KEVENT as *mut KEVENT;
        // SAFETY: our initialised event, pool-resident; KeSetEvent allows DISPATCH_LEVEL.
        unsafe { KeSetEvent(event, 0, FALSE) };
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
            // Completed while still the pump, so consumers see completions in order.
            done.complete_all();
            let idle = pass.batch.is_none();
            if let Some(batch) = pass.batch {
                self.issue_send(batch);
            }
            if let Some(failure) = pass.failure {
                self.fail(failure);
            }
            if drained {
                self.signal_drained();
            }
            if idle && self.tx.lock().pump.end() {
                return;
            }
        }
    }

    fn issue_send(&self, batch: send::Batch) {
        // SAFETY: the batch's records are ours and stay untouched until the slot's
        // completion retires them; the chain holds exactly `Length` bytes.
        let issued = unsafe { self.sends[batch.slot].send(&self.socket, batch.buf, batch.flags) };
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
            done.complete_all();
            let idle = matches!(&result, Ok(action) if action.post.is_none() && !action.owe_key_update);
            match result {
                Ok(action) => {
                    if action.owe_key_update {
                        self.tx.lock().owe_key_update();
                        self.pump_tx();
                    }
                    if let Some(buf) = action.post {
                        // SAFETY: `[Offset, Offset + Length)` of our receive buffer, which
                        // nothing else touches until the completion.
                        if let Err(status) = unsafe { self.receive.receive(&self.socket, buf, 0) } {
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
            alpn: s.alpn.clone(),
            peer_certificate_sha256: s.peer_certificate_sha256,
            sent: s.tx.lock().stats(),
            received: s.rx.lock().stats(),
        }
    }

    /// Sends the bytes `buf` describes, WskSend's way: returns STATUS_PENDING and
    /// completes `irp` once every byte is on the wire (IoStatus.Information = the
    /// plaintext bytes), or completes it at once with the error it also returns.
    /// Flags: WSK_FLAG_NODELAY only (passed down); anything else is STATUS_NOT_SUPPORTED.
    /// Sends complete in order. IRQL <= DISPATCH_LEVEL.
    ///
    /// # Safety
    /// `irp` is a valid IRP with a stack location for us (the consumer's completion routine
    /// in the next one), which the consumer does not touch until it completes; `buf`
    /// describes locked pages that stay valid until then.
    pub unsafe fn send(&self, buf: &WSK_BUF, flags: u32, irp: *mut IRP) -> NTSTATUS {
        // SAFETY: forwarded contract.
        let op = match unsafe { self.admit(buf, flags, WSK_FLAG_NODELAY, irp) } {
            Ok(op) => op,
            Err(status) => return status,
        };
        {
            let mut tx = self.shared.tx.lock();
            if tx.close_notify != CloseNotify::NotRequested {
                drop(tx);
                op.complete(STATUS_INVALID_DEVICE_STATE, 0);
                return STATUS_INVALID_DEVICE_STATE;
            }
            tx.push(op);
        }
        self.shared.pump_tx();
        STATUS_PENDING
    }

    /// Receives into `buf`, WskReceive's way: completes `irp` when at least one byte
    /// arrived (all of them with WSK_FLAG_WAITALL, the only flag accepted), with 0 bytes
    /// and success once the peer's close_notify is reached. IRQL <= DISPATCH_LEVEL.
    ///
    /// # Safety
    /// As for [`Channel::send`].
    pub unsafe fn receive(&self, buf: &WSK_BUF, flags: u32, irp: *mut IRP) -> NTSTATUS {
        // SAFETY: forwarded contract.
        let op = match unsafe { self.admit(buf, flags, WSK_FLAG_WAITALL, irp) } {
            Ok(op) => op,
            Err(status) => return status,
        };
        self.shared.rx.lock().push(op);
        self.shared.pump_rx();
        STATUS_PENDING
    }

    /// The checks every request passes before it is queued. On failure the IRP is
    /// completed with the returned status.
    ///
    /// # Safety
    /// As for [`Channel::send`].
    unsafe fn admit(&self, buf: &WSK_BUF, flags: u32, allowed: u32, irp: *mut IRP) -> Result<Op, NTSTATUS> {
        let check = if flags & !allowed != 0 {
            Err(STATUS_NOT_SUPPORTED)
        } else if buf.Length == 0 && allowed == WSK_FLAG_WAITALL {
            // A receive of nothing would complete with 0 bytes: the end-of-stream signal.
            Err(STATUS_INVALID_PARAMETER)
        } else if self.shared.failure().is_some() {
            Err(STATUS_FILE_FORCED_CLOSED)
        } else {
            // SAFETY: locked pages per the contract.
            unsafe { chain::check_and_map(buf) }
        };
        // SAFETY: a valid IRP handed to us per the contract.
        let Some(op) = (unsafe { Op::take(irp, buf, flags) }) else {
            // No stack location for us: the consumer's completion routine cannot be
            // reached through us; complete it where it stands.
            // SAFETY: as above.
            unsafe { (*irp).IoStatus.set(STATUS_INVALID_PARAMETER, 0) };
            // SAFETY: as above.
            unsafe { crate::nt::IoCompleteRequest(irp, crate::nt::IO_NO_INCREMENT) };
            return Err(STATUS_INVALID_PARAMETER);
        };
        match check {
            Ok(()) => Ok(op),
            Err(status) => {
                op.complete(status, 0);
                Err(status)
            }
        }
    }

    /// Graceful close of our side: our close_notify after every byte already queued, then
    /// a TCP FIN. Waits (PASSIVE_LEVEL) up to `timeout_ms`; the peer may still send until
    /// its own close_notify, which receives report as 0 bytes.
    pub fn disconnect(&self, timeout_ms: u32) -> Result<(), NTSTATUS> {
        let s = &self.shared;
        s.tx.lock().request_close_notify();
        s.pump_tx();
        let deadline = crate::nt::interrupt_time_100ns() + timeout_ms as u64 * 10_000;
        loop {
            if let Some(status) = s.failure() {
                return Err(status);
            }
            if s.tx.lock().close_notify == CloseNotify::Sent {
                break;
            }
            let now = crate::nt::interrupt_time_100ns();
            if now >= deadline {
                return Err(STATUS_IO_TIMEOUT);
            }
            let event = &s.drained as *const KEVENT as *mut KEVENT;
            let wait = relative_timeout_ms((((deadline - now) / 10_000) as u32).max(1));
            // SAFETY: our event; PASSIVE_LEVEL per this function's contract. Cleared before
            // the re-check so a signal in between is not lost.
            let waited = unsafe {
                crate::nt::KeClearEvent(event);
                if s.tx.lock().close_notify == CloseNotify::Sent {
                    break;
                }
                KeWaitForSingleObject(event.cast(), Executive, KernelMode, FALSE, &wait)
            };
            if waited != STATUS_SUCCESS && waited != STATUS_TIMEOUT {
                return Err(waited);
            }
        }
        let left = deadline.saturating_sub(crate::nt::interrupt_time_100ns()) / 10_000;
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
        // SAFETY: the event is pool-resident and initialised before any wait or signal.
        unsafe { KeInitializeEvent(core::ptr::addr_of_mut!((*ptr).drained), NotificationEvent, FALSE) };
        for r in &this.sends {
            r.handler().owner.store(ptr, Ordering::Release);
        }
        this.receive.handler().owner.store(ptr, Ordering::Release);
    }
}

// SAFETY: the KEVENT is touched only through the Ke* functions, which synchronise.
unsafe impl Sync for Shared {}
// SAFETY: as above; everything else is Send.
unsafe impl Send for Shared {}
