//! The send pipeline: consumer bytes → records sealed in place in nonpaged send buffers
//! borrowed from the WSK client's cache → one MDL chain per WskSend, never more sealed
//! bytes in flight than the budget. Records are packed back to back in a buffer; each
//! WskSend starts a fresh one, so a send's buffers go back to the cache when it
//! completes. An idle channel holds no send buffer. A consumer's send completes when its
//! last byte is on the wire.

use alloc::vec::Vec;

use wsktls_crypto::{Platform, wipe};

use super::config::MAX_SEND_BUDGET;
use super::keys::Keys;
use super::pump::Pump;
use crate::interface::{Completions, ConsumerRequest, RequestQueue};
use crate::nt::{NTSTATUS, PoolBuffer, STATUS_INSUFFICIENT_RESOURCES, STATUS_SUCCESS, SpinLock};
use crate::planted::{Bug, planted};
use crate::tls::record::{ContentType, HEADER_LEN, MAX_FRAGMENT, OVERHEAD, Sealer, full_record_fill};
use crate::tls::{TlsError, alert, key_update};
use crate::wsk::{BufferLease, PREFILLED, SEND_BUFFER_LEN, Span};

// A full record must fit in one send buffer, and the cache's first buffers must cover a
// channel at the largest budget with full records (see `Tx::new`'s places).
const _: () = assert!(MAX_FRAGMENT + OVERHEAD <= SEND_BUFFER_LEN);
const _: () = assert!(places(MAX_SEND_BUDGET, full_record_fill(MAX_FRAGMENT)) <= PREFILLED);

/// Places for the buffers of a channel with `budget` bytes in flight in records of `fill`
/// plaintext bytes: a budget of full records, one per buffer, and each send's last, partly
/// filled buffer. A mix of sizes that needs more waits for completions.
const fn places(budget: usize, fill: usize) -> usize {
    budget / (fill + OVERHEAD) + SEND_SLOTS + 1
}

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

/// One WskSend: a run of consecutive records in `buffers` send buffers.
#[derive(Clone, Copy)]
struct Slot {
    state: SlotState,
    buffers: usize,
    wire: usize,
    /// Stream position (plaintext bytes) once this send is on the wire.
    acked_after: u64,
    /// This send carries our close_notify.
    close_notify: bool,
}

const IDLE: Slot = Slot { state: SlotState::Idle, buffers: 0, wire: 0, acked_after: 0, close_notify: false };

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
    /// Plaintext bytes of a full record: the consumer's record size, trimmed to whole AEAD
    /// blocks.
    fill: usize,
    budget: usize,
    /// Where send buffers come from and go back to.
    lease: BufferLease,
    /// The send buffers of the sends in flight, oldest first.
    held: Held,
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
    /// A send side for `budget` bytes in flight. Allocates only its ring of buffer
    /// places; buffers are borrowed from `lease` as records are sealed.
    pub(crate) fn new(
        sealer: Sealer,
        record_size: usize,
        budget: usize,
        lease: BufferLease,
    ) -> Result<Tx, NTSTATUS> {
        let fill = full_record_fill(record_size);
        Ok(Tx {
            sealer,
            fill,
            budget,
            lease,
            held: Held::new(places(budget, fill))?,
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
        })
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
            for _ in 0..slot.buffers {
                if let Some(buffer) = self.held.pop_front() {
                    if planted(Bug::LeakFailedSendBuffers) && !status.is_success() {
                        core::mem::forget(buffer);
                        continue;
                    }
                    self.lease.give(buffer);
                }
            }
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
        keys: &SpinLock<Keys>,
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
            Ok((batch, failure)) => Pass { batch, failure },
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
            && self.held.has_room()
            && self.room_for(OVERHEAD)
    }

    fn slot_free(&self) -> bool {
        self.slots[self.next_slot].state == SlotState::Idle
    }

    /// Whether the budget allows a record of `wire` bytes now.
    fn room_for(&self, wire: usize) -> bool {
        self.in_flight_bytes + wire <= self.budget
    }

    /// Seals records into one batch, packed into send buffers taken as they fill. A
    /// failure part-way still returns the records sealed before it, so what goes on the
    /// wire matches the sequence numbers used (the alert that follows must be readable).
    fn seal_batch(&mut self, keys: &SpinLock<Keys>) -> (Option<Batch>, Option<Failure>) {
        let limit = self.batch_limit();
        // Wire bytes sealed into this batch (every record is at least OVERHEAD of them).
        let (mut wire, mut nodelay) = (0, false);
        // Send buffers this batch took, and bytes used in the last of them.
        let (mut buffers, mut used) = (0, 0);
        let mut close_notify = false;
        let mut error = None;
        loop {
            let unsealed = (self.queued - self.sealed).min(self.fill as u64) as usize;
            let need_key_update = self.key_update_owed || self.sealer.records_left() <= 1;
            // After every byte queued before it, and after a KeyUpdate owed (which this
            // record then is; the close_notify follows under the new key).
            let send_close_notify =
                !need_key_update && unsealed == 0 && self.close_notify == CloseNotify::Requested;
            let len = if need_key_update {
                KEY_UPDATE_LEN
            } else if send_close_notify {
                ALERT_LEN
            } else {
                unsealed
            };
            let more =
                len > 0 && self.room_for(len + OVERHEAD) && (wire == 0 || wire + len + OVERHEAD <= limit);
            if !more {
                break;
            }
            if buffers == 0 || used + len + OVERHEAD > SEND_BUFFER_LEN {
                if !self.take_buffer(buffers > 0) {
                    // Out of memory: wait for a completion to give buffers back; with
                    // nothing in flight none will, so the channel fails.
                    if wire == 0 && self.in_flight_bytes == 0 {
                        error = Some(Failure::Transport(STATUS_INSUFFICIENT_RESOURCES));
                    }
                    break;
                }
                (buffers, used) = (buffers + 1, 0);
            }
            // Our own records (KeyUpdate, close_notify; alerts below) go with
            // WSK_FLAG_NODELAY: there may be no consumer send after them for Nagle's
            // algorithm to wait for.
            nodelay |= need_key_update || send_close_notify;
            let sealed = if need_key_update {
                self.seal_control(used, ContentType::Handshake, &key_update(false))
            } else if send_close_notify {
                self.seal_control(used, ContentType::Alert, &alert(rustls::AlertDescription::CloseNotify))
            } else {
                self.seal_data(used, len).map(|(n, asked)| {
                    nodelay |= asked;
                    n
                })
            };
            let n = match sealed {
                Ok(n) => n,
                Err(e) => {
                    error = Some(Failure::Tls(e));
                    break;
                }
            };
            // Sealed: the record goes out whatever happens next, so the wire keeps pace
            // with the sequence number.
            used += n;
            self.held.set_last_len(used);
            wire += n;
            self.in_flight_bytes += n;
            if send_close_notify {
                close_notify = true;
                self.close_notify = CloseNotify::Sealed;
                break;
            }
            if need_key_update {
                if let Err(e) = self.rekey(keys) {
                    error = Some(Failure::Tls(e));
                    break;
                }
            }
        }
        (self.issue(buffers, wire, nodelay, close_notify), error)
    }

    /// Borrows a send buffer for the batch being built, chained after its last one when
    /// `chain`. `false` when the ring of places is full or no buffer can be had.
    fn take_buffer(&mut self, chain: bool) -> bool {
        if !self.held.has_room() {
            return false;
        }
        let Some(buffer) = self.lease.take() else {
            return false;
        };
        if chain {
            // SAFETY: the batch being built is in no request yet.
            unsafe { self.held.chain_to_last(&buffer) };
        }
        self.held.push(buffer);
        true
    }

    /// Takes the next slot for the batch in the last `buffers` held buffers, `wire` bytes
    /// of records: the batch to send.
    fn issue(&mut self, buffers: usize, wire: usize, nodelay: bool, close_notify: bool) -> Option<Batch> {
        if wire == 0 {
            // A buffer taken for a record that then failed to seal goes straight back.
            for _ in 0..buffers {
                if let Some(b) = self.held.pop_back() {
                    self.lease.give(b);
                }
            }
            return None;
        }
        // SAFETY: the batch's buffers are chained in order from the first (take_buffer),
        // each MDL sized to the records in it (set_last_len), and `wire` is their sum.
        let span = unsafe { Span::chain(self.held.nth_back(buffers)?, wire) };
        self.stats.peak_in_flight_bytes = self.stats.peak_in_flight_bytes.max(self.in_flight_bytes);
        let slot = self.next_slot;
        self.next_slot = (self.next_slot + 1) % SEND_SLOTS;
        self.slots[slot] =
            Slot { state: SlotState::InFlight, buffers, wire, acked_after: self.sealed, close_notify };
        Some(Batch { slot, span, nodelay })
    }

    /// The most one WskSend carries: the budget spread over the slots (at least one whole
    /// record), so no pass holds the lock to seal more than that.
    fn batch_limit(&self) -> usize {
        (self.budget / SEND_SLOTS).max(self.fill + OVERHEAD)
    }

    /// Seals up to `len` queued plaintext bytes, gathered across consumer sends, into the
    /// last held buffer at `at`. Returns the record's length and whether a send it took
    /// bytes from asked for WSK_FLAG_NODELAY.
    fn seal_data(&mut self, at: usize, len: usize) -> Result<(usize, bool), TlsError> {
        let record = &mut self.held.last_mut().ok_or(TlsError::Internal)?.as_mut_slice()[at..];
        let mut filled = 0;
        let mut nodelay = false;
        while filled < len {
            let Some(op) = self.cursor else {
                return Err(TlsError::Internal);
            };
            let take = (op.len() - op.done()).min(len - filled);
            op.copy_out(op.done(), &mut record[HEADER_LEN + filled..HEADER_LEN + filled + take]);
            op.set_done(op.done() + take);
            nodelay |= op.nodelay();
            filled += take;
            if op.done() == op.len() {
                self.cursor = self.queue.next(op);
            }
        }
        // Zero-length sends never hold the cursor.
        while let Some(op) = self.cursor.filter(|op| op.len() == 0) {
            self.cursor = self.queue.next(op);
        }
        let n = match self.sealer.seal(ContentType::ApplicationData, record, len) {
            Ok(n) => n,
            Err(e) => {
                // The buffer goes back to the shared cache: no plaintext may stay in it.
                wipe(&mut record[HEADER_LEN..HEADER_LEN + len]);
                return Err(e);
            }
        };
        self.sealed += len as u64;
        self.stats.plaintext_bytes += len as u64;
        self.stats.records += 1;
        Ok((n, nodelay))
    }

    fn seal_control(&mut self, at: usize, content_type: ContentType, body: &[u8]) -> Result<usize, TlsError> {
        let record = &mut self.held.last_mut().ok_or(TlsError::Internal)?.as_mut_slice()[at..];
        record[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        let n = self.sealer.seal(content_type, record, body.len())?;
        self.stats.records += 1;
        Ok(n)
    }

    /// After sealing our KeyUpdate: the next traffic key.
    fn rekey(&mut self, keys: &SpinLock<Keys>) -> Result<(), TlsError> {
        self.sealer.rekey(keys.lock().next_tx()?);
        self.key_update_owed = false;
        self.stats.key_updates += 1;
        Ok(())
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
        if !self.take_buffer(false) {
            return None;
        }
        // Not sealed (no vector state, or the key is spent): `issue` gives the buffer back.
        let sealed = platform.with_vector_state(|| self.seal_control(0, ContentType::Alert, &alert));
        let n = sealed.ok().and_then(Result::ok).unwrap_or(0);
        self.held.set_last_len(n);
        self.in_flight_bytes += n;
        self.issue(1, n, true, false)
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Nothing is in flight by now (the channel waited for every request).
        while let Some(buffer) = self.held.pop_front() {
            self.lease.give(buffer);
        }
    }
}

/// The send buffers held for sends in flight: a fixed ring of places, allocated when the
/// channel opens, so sealing and retiring never allocate.
struct Held {
    places: Vec<Option<PoolBuffer>>,
    head: usize,
    len: usize,
}

impl Held {
    fn new(places: usize) -> Result<Held, NTSTATUS> {
        let mut v = Vec::new();
        v.try_reserve_exact(places).map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        v.resize_with(places, || None);
        Ok(Held { places: v, head: 0, len: 0 })
    }

    fn has_room(&self) -> bool {
        self.len < self.places.len()
    }

    fn index(&self, i: usize) -> usize {
        (self.head + i) % self.places.len()
    }

    /// Callers check `has_room` first.
    fn push(&mut self, buffer: PoolBuffer) {
        let at = self.index(self.len);
        self.places[at] = Some(buffer);
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<PoolBuffer> {
        if self.len == 0 {
            return None;
        }
        let buffer = self.places[self.head].take();
        self.head = self.index(1);
        self.len -= 1;
        buffer
    }

    fn pop_back(&mut self) -> Option<PoolBuffer> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        let at = self.index(self.len);
        self.places[at].take()
    }

    fn last_mut(&mut self) -> Option<&mut PoolBuffer> {
        let at = self.index(self.len.checked_sub(1)?);
        self.places[at].as_mut()
    }

    /// The `n`th buffer from the back (1 is the last).
    fn nth_back(&self, n: usize) -> Option<&PoolBuffer> {
        let i = self.len.checked_sub(n)?;
        self.places[self.index(i)].as_ref()
    }

    /// Makes the last buffer's MDL describe its first `len` bytes.
    fn set_last_len(&mut self, len: usize) {
        if let Some(last) = self.last_mut() {
            // SAFETY: the last buffer belongs to the batch being built, in no request.
            unsafe { last.set_mdl_len(len) };
        }
    }

    /// Chains `next` after the last buffer.
    ///
    /// # Safety
    /// The last buffer is in no request.
    unsafe fn chain_to_last(&mut self, next: &PoolBuffer) {
        if let Some(last) = self.last_mut() {
            // SAFETY: per the caller.
            unsafe { last.set_next(Some(next)) };
        }
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
