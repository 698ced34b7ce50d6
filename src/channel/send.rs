//! The send pipeline: consumer bytes → records sealed in place in the channel's own
//! nonpaged buffers → one MDL chain per WskSend, never more sealed bytes in flight than
//! the budget. A consumer's send completes when its last byte is on the wire.

use alloc::vec::Vec;

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use wsktls_crypto::{Platform, TrafficKey};

use super::pump::Pump;
use crate::interface::{Completions, ConsumerRequest, RequestQueue};
use crate::nt::{NTSTATUS, PoolBuffer, STATUS_SUCCESS, SpinLock};
use crate::tls::record::{ContentType, HEADER_LEN, OVERHEAD, Sealer};
use crate::tls::{TlsError, alert, key_update};
use crate::wsk::Span;

/// Plaintext bytes of the control records we send.
const KEY_UPDATE_LEN: usize = 5;
const ALERT_LEN: usize = 2;

/// WskSends in flight at most: enough to keep the pipe full while one completes.
pub(crate) const SEND_SLOTS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SlotState {
    Idle,
    InFlight,
    Done { status: NTSTATUS, bytes: usize },
}

/// One WskSend: a run of consecutive records.
#[derive(Clone, Copy)]
struct Slot {
    state: SlotState,
    records: usize,
    wire: usize,
    /// Stream position (plaintext bytes) once this send is on the wire.
    acked_after: u64,
    /// This send carries our close_notify.
    close_notify: bool,
}

const IDLE: Slot = Slot { state: SlotState::Idle, records: 0, wire: 0, acked_after: 0, close_notify: false };

/// Where our close_notify is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CloseNotify {
    NotRequested,
    /// Disconnect asked for it: it follows the data already queued.
    Requested,
    Sealed,
    /// On the wire: nothing more will be sent.
    Sent,
}

/// A batch ready for WskSend, made under the lock and issued outside it.
pub(crate) struct Batch {
    pub(crate) slot: usize,
    pub(crate) span: Span,
    pub(crate) nodelay: bool,
}

/// Counters the consumer may query.
#[derive(Clone, Copy, Default, Debug)]
pub struct SendStats {
    pub plaintext_bytes: u64,
    pub records: u64,
    pub key_updates: u64,
    pub in_flight_bytes: usize,
    pub peak_in_flight_bytes: usize,
    pub budget: usize,
}

pub(crate) struct Tx {
    sealer: Sealer,
    record_size: usize,
    budget: usize,
    /// The record buffers, used strictly in ring order.
    records: Vec<PoolBuffer>,
    first_in_flight: usize,
    records_in_flight: usize,
    slots: [Slot; SEND_SLOTS],
    /// Next slot to issue and oldest slot not yet retired (issue order).
    next_slot: usize,
    oldest_slot: usize,
    /// Consumer sends not yet completed, in order.
    queue: RequestQueue,
    /// The first queued send with bytes not yet sealed.
    cursor: Option<ConsumerRequest>,
    /// Stream positions in plaintext bytes: queued, sealed, and on the wire.
    queued: u64,
    sealed: u64,
    acked: u64,
    in_flight_bytes: usize,
    /// The peer asked for a KeyUpdate in return.
    key_update_owed: bool,
    pub(crate) close_notify: CloseNotify,
    /// A fatal alert to send once, after failing.
    alert: Option<[u8; 2]>,
    pub(crate) pump: Pump,
    stats: SendStats,
}

impl Tx {
    pub(crate) fn new(sealer: Sealer, record_size: usize, budget: usize, records: Vec<PoolBuffer>) -> Tx {
        Tx {
            sealer,
            record_size,
            budget,
            records,
            first_in_flight: 0,
            records_in_flight: 0,
            slots: [IDLE; SEND_SLOTS],
            next_slot: 0,
            oldest_slot: 0,
            queue: RequestQueue::new(),
            cursor: None,
            queued: 0,
            sealed: 0,
            acked: 0,
            in_flight_bytes: 0,
            key_update_owed: false,
            close_notify: CloseNotify::NotRequested,
            alert: None,
            pump: Pump::default(),
            stats: SendStats { budget, ..SendStats::default() },
        }
    }

    pub(crate) fn stats(&self) -> SendStats {
        SendStats { in_flight_bytes: self.in_flight_bytes, ..self.stats }
    }

    /// Queues a consumer send (already checked). It completes when its last byte is sent.
    pub(crate) fn push(&mut self, op: ConsumerRequest) {
        self.queued += op.len() as u64;
        op.set_end(self.queued);
        self.queue.push(op);
        // A zero-length send has nothing to seal: it completes once everything before it
        // is on the wire.
        if self.cursor.is_none() && op.len() > 0 {
            self.cursor = Some(op);
        }
    }

    pub(crate) fn owe_key_update(&mut self) {
        self.key_update_owed = true;
    }

    pub(crate) fn request_close_notify(&mut self) {
        if self.close_notify == CloseNotify::NotRequested {
            self.close_notify = CloseNotify::Requested;
        }
    }

    pub(crate) fn queue_alert(&mut self, alert: [u8; 2]) {
        // Nothing may follow our close_notify (RFC 8446 §6.1).
        if self.alert.is_none() && !matches!(self.close_notify, CloseNotify::Sealed | CloseNotify::Sent) {
            self.alert = Some(alert);
        }
    }

    /// Everything queued is on the wire and nothing is in flight.
    pub(crate) fn is_drained(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(|s| s.state == SlotState::Idle)
    }

    pub(crate) fn slot_completed(&mut self, slot: usize, status: NTSTATUS, bytes: usize) {
        self.slots[slot].state = SlotState::Done { status, bytes };
    }

    /// The WskSend for `slot` was never issued (the socket is closing).
    pub(crate) fn slot_not_issued(&mut self, slot: usize, status: NTSTATUS) {
        self.slots[slot].state = SlotState::Done { status, bytes: 0 };
    }

    /// Retires finished sends in order: returns their buffers and moves `acked`. A send
    /// that failed or came up short is the transport's failure, returned to the caller.
    fn retire(&mut self) -> Result<(), NTSTATUS> {
        while let SlotState::Done { status, bytes } = self.slots[self.oldest_slot].state {
            let slot = self.slots[self.oldest_slot];
            self.slots[self.oldest_slot] = IDLE;
            self.oldest_slot = (self.oldest_slot + 1) % SEND_SLOTS;
            self.first_in_flight = (self.first_in_flight + slot.records) % self.records.len();
            self.records_in_flight -= slot.records;
            self.in_flight_bytes -= slot.wire;
            if !status.is_success() {
                return Err(status);
            }
            if bytes != slot.wire {
                return Err(crate::nt::STATUS_CONNECTION_ABORTED);
            }
            self.acked = slot.acked_after;
            if slot.close_notify {
                self.close_notify = CloseNotify::Sent;
            }
        }
        Ok(())
    }

    /// Completes every consumer send whose last byte is on the wire.
    fn complete_sent(&mut self, done: &mut Completions) {
        while let Some(op) = self.queue.front() {
            if Some(op) == self.cursor || op.end() > self.acked {
                break;
            }
            self.queue.pop();
            done.add(op, STATUS_SUCCESS, op.len());
        }
    }

    /// Fails every consumer send still queued.
    fn fail_all(&mut self, status: NTSTATUS, done: &mut Completions) {
        self.queue.fail_all(status, done);
        self.cursor = None;
    }

    /// One pass under the lock: retire finished sends, complete the consumer sends whose
    /// bytes are all on the wire, and seal the next batch if a slot, a buffer and the budget
    /// allow. `failure` is the channel's sticky status. Sealing happens inside `platform`'s
    /// vector-state guard, entered once per batch and only when there is something to seal.
    pub(crate) fn pass<P: Platform>(
        &mut self,
        failure: Option<NTSTATUS>,
        keys: &SpinLock<KernelConnection<ClientConnectionData>>,
        done: &mut Completions,
        platform: &P,
    ) -> Pass {
        let transport = self.retire().err();
        // Sends whose bytes are already on the wire succeeded, whatever happens next.
        self.complete_sent(done);
        if let Some(status) = failure.or(transport) {
            self.fail_all(status, done);
            // A failing channel sends nothing but its one alert.
            let batch = self.alert_batch(platform);
            return Pass { batch, failure: transport.map(Failure::Transport) };
        }
        if !self.has_work() {
            return Pass::default();
        }
        match platform.with_vector_state(|| self.seal_batch(keys)) {
            Ok((batch, error)) => Pass { batch, failure: error.map(Failure::Tls) },
            Err(_) => Pass { batch: None, failure: Some(Failure::Tls(TlsError::Internal)) },
        }
    }

    /// Whether `seal_batch` would seal anything.
    fn has_work(&self) -> bool {
        let pending = self.queued > self.sealed
            || self.key_update_owed
            || self.sealer.records_left() <= 1
            || self.close_notify == CloseNotify::Requested;
        pending
            && self.slot_free()
            && !matches!(self.close_notify, CloseNotify::Sealed | CloseNotify::Sent)
            && self.room_for(OVERHEAD)
    }

    fn slot_free(&self) -> bool {
        self.slots[self.next_slot].state == SlotState::Idle
    }

    /// Whether a record of `wire` bytes may be sealed now.
    fn room_for(&self, wire: usize) -> bool {
        self.records_in_flight < self.records.len() && self.in_flight_bytes + wire <= self.budget
    }

    /// Seals records into one batch. A failure part-way still returns the records sealed
    /// before it, so what goes on the wire matches the sequence numbers used (the alert
    /// that follows must be readable).
    fn seal_batch(
        &mut self,
        keys: &SpinLock<KernelConnection<ClientConnectionData>>,
    ) -> (Option<Batch>, Option<TlsError>) {
        let start = (self.first_in_flight + self.records_in_flight) % self.records.len();
        let limit = self.batch_limit();
        let (mut count, mut wire, mut nodelay) = (0, 0, false);
        let mut close_notify = false;
        let mut error = None;
        loop {
            let unsealed = (self.queued - self.sealed).min(self.record_size as u64) as usize;
            let need_key_update = self.key_update_owed || self.sealer.records_left() <= 1;
            let send_close_notify = unsealed == 0 && self.close_notify == CloseNotify::Requested;
            let len = if need_key_update {
                KEY_UPDATE_LEN
            } else if send_close_notify {
                ALERT_LEN
            } else {
                unsealed
            };
            let more =
                len > 0 && self.room_for(len + OVERHEAD) && (count == 0 || wire + len + OVERHEAD <= limit);
            if !more {
                break;
            }
            let index = (start + count) % self.records.len();
            let sealed = if need_key_update {
                self.seal_control(index, ContentType::Handshake, &key_update(false))
            } else if send_close_notify {
                self.seal_control(index, ContentType::Alert, &alert(rustls::AlertDescription::CloseNotify))
            } else {
                self.seal_data(index, len).map(|(n, asked)| {
                    nodelay |= asked;
                    n
                })
            };
            let n = match sealed {
                Ok(n) => n,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            // Sealed: the record goes out whatever happens next, so the wire keeps pace
            // with the sequence number.
            self.link(start, count, n);
            count += 1;
            wire += n;
            self.records_in_flight += 1;
            self.in_flight_bytes += n;
            if send_close_notify {
                close_notify = true;
                self.close_notify = CloseNotify::Sealed;
                break;
            }
            if need_key_update {
                if let Err(e) = self.rekey(keys) {
                    error = Some(e);
                    break;
                }
            }
        }
        (self.issue(start, count, wire, nodelay, close_notify), error)
    }

    /// Takes the next slot for the `count` records from `start`: the batch to send.
    fn issue(
        &mut self,
        start: usize,
        count: usize,
        wire: usize,
        nodelay: bool,
        close_notify: bool,
    ) -> Option<Batch> {
        if count == 0 {
            return None;
        }
        self.stats.peak_in_flight_bytes = self.stats.peak_in_flight_bytes.max(self.in_flight_bytes);
        let slot = self.next_slot;
        self.next_slot = (self.next_slot + 1) % SEND_SLOTS;
        self.slots[slot] =
            Slot { state: SlotState::InFlight, records: count, wire, acked_after: self.sealed, close_notify };
        // SAFETY: `link` chained the `count` records from `start`, each MDL sized to its
        // record, and `wire` is the sum of those sizes.
        let span = unsafe { Span::chain(&self.records[start], wire) };
        Some(Batch { slot, span, nodelay })
    }

    /// The most one WskSend carries: the budget spread over the slots (at least one whole
    /// record), so no pass holds the lock to seal more than that.
    fn batch_limit(&self) -> usize {
        (self.budget / SEND_SLOTS).max(self.record_size + OVERHEAD)
    }

    /// Seals up to `len` queued plaintext bytes, gathered across consumer sends, into
    /// record buffer `index`. Returns the record's length and whether a send it took bytes
    /// from asked for WSK_FLAG_NODELAY.
    fn seal_data(&mut self, index: usize, len: usize) -> Result<(usize, bool), TlsError> {
        let record = self.records[index].as_mut_slice();
        let mut at = 0;
        let mut nodelay = false;
        while at < len {
            let Some(op) = self.cursor else {
                return Err(TlsError::Internal);
            };
            let take = (op.len() - op.done()).min(len - at);
            op.copy_out(op.done(), &mut record[HEADER_LEN + at..HEADER_LEN + at + take]);
            op.set_done(op.done() + take);
            nodelay |= op.nodelay();
            at += take;
            if op.done() == op.len() {
                self.cursor = self.queue.next(op);
            }
        }
        // Zero-length sends never hold the cursor.
        while let Some(op) = self.cursor.filter(|op| op.len() == 0) {
            self.cursor = self.queue.next(op);
        }
        let n = self.sealer.seal(ContentType::ApplicationData, record, len)?;
        self.sealed += len as u64;
        self.stats.plaintext_bytes += len as u64;
        self.stats.records += 1;
        Ok((n, nodelay))
    }

    fn seal_control(
        &mut self,
        index: usize,
        content_type: ContentType,
        body: &[u8],
    ) -> Result<usize, TlsError> {
        let record = self.records[index].as_mut_slice();
        record[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        let n = self.sealer.seal(content_type, record, body.len())?;
        self.stats.records += 1;
        Ok(n)
    }

    /// After sealing our KeyUpdate: the next traffic key.
    fn rekey(&mut self, keys: &SpinLock<KernelConnection<ClientConnectionData>>) -> Result<(), TlsError> {
        let (_, secrets) = keys.lock().update_tx_secret().map_err(TlsError::from)?;
        let key = TrafficKey::new(&secrets).ok_or(TlsError::Internal)?;
        self.sealer.rekey(key);
        self.key_update_owed = false;
        self.stats.key_updates += 1;
        Ok(())
    }

    /// Sets record `count` of the batch starting at `start` to `len` bytes and chains it
    /// after the previous one (NdisAdjustMdlLength's idea: the MDL describes the record,
    /// not the whole buffer).
    fn link(&mut self, start: usize, count: usize, len: usize) {
        let r = self.records.len();
        let (at, previous) = ((start + count) % r, (start + count + r - 1) % r);
        // SAFETY: records being batched are in no request (they were free until now).
        unsafe {
            self.records[at].set_mdl_len(len);
            self.records[at].set_next(None);
        }
        if count > 0 {
            let (a, b) = (previous.min(at), previous.max(at));
            let (low, high) = self.records.split_at_mut(b);
            let (previous, next) =
                if previous < at { (&mut low[a], &high[0]) } else { (&mut high[0], &low[a]) };
            // SAFETY: as above.
            unsafe { previous.set_next(Some(next)) };
        }
    }

    /// The fatal alert, alone in a batch, once a slot and the budget allow (it waits,
    /// queued, until then). Never after our close_notify.
    fn alert_batch<P: Platform>(&mut self, platform: &P) -> Option<Batch> {
        let alert = self.alert?;
        let closed = matches!(self.close_notify, CloseNotify::Sealed | CloseNotify::Sent);
        if closed || !self.slot_free() || !self.room_for(ALERT_LEN + OVERHEAD) {
            return None;
        }
        self.alert = None;
        let index = (self.first_in_flight + self.records_in_flight) % self.records.len();
        let n =
            platform.with_vector_state(|| self.seal_control(index, ContentType::Alert, &alert)).ok()?.ok()?;
        self.link(index, 0, n);
        self.records_in_flight += 1;
        self.in_flight_bytes += n;
        self.issue(index, 1, n, false, false)
    }
}

/// Why a pass failed the channel.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Failure {
    Transport(NTSTATUS),
    Tls(TlsError),
}

/// What a send pass produced: a batch to issue, a failure to report, or both (the records
/// sealed before a failure still go out).
#[derive(Default)]
pub(crate) struct Pass {
    pub(crate) batch: Option<Batch>,
    pub(crate) failure: Option<Failure>,
}
