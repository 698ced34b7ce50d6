//! The receive pipeline: one WskReceive at a time into the channel's nonpaged receive
//! buffer, records opened in place there, plaintext copied into consumer receives. The
//! buffer bounds what is kept for a consumer that is not reading: when it is full, no
//! receive is posted and TCP's window holds the peer back.

use wsktls_crypto::{Platform, SecretBytes};

use super::keys::Keys;
use super::pump::Pump;
use super::send::Failure;
use crate::interface::{Completions, ConsumerRequest, RequestQueue};
use crate::nt::{
    NTSTATUS, PoolBuffer, STATUS_CANCELLED, STATUS_INVALID_BUFFER_SIZE, STATUS_SUCCESS, SpinLock,
};
use crate::planted::{Bug, planted};
use crate::tls::{Alert, ContentType, HandshakeReader, Opener, PostHandshake, TlsError, read_alert};
use crate::wsk::Span;

/// Opened records whose plaintext waits for the consumer, at most. With tiny records this,
/// not the buffer, is what stops the opening.
const MAX_SEGMENTS: usize = 32;

/// Plaintext of one opened record, still in the receive buffer.
#[derive(Clone, Copy, Default)]
struct Segment {
    start: usize,
    len: usize,
}

/// A fixed ring of segments: no allocation on the receive path.
struct Segments {
    items: [Segment; MAX_SEGMENTS],
    head: usize,
    len: usize,
}

impl Segments {
    fn new() -> Segments {
        Segments { items: [Segment::default(); MAX_SEGMENTS], head: 0, len: 0 }
    }
    fn is_full(&self) -> bool {
        self.len == MAX_SEGMENTS
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn push(&mut self, s: Segment) {
        self.items[(self.head + self.len) % MAX_SEGMENTS] = s;
        self.len += 1;
    }
    fn front_mut(&mut self) -> Option<&mut Segment> {
        (self.len > 0).then(|| &mut self.items[self.head])
    }
    fn pop(&mut self) {
        self.head = (self.head + 1) % MAX_SEGMENTS;
        self.len -= 1;
    }
}

/// How the peer's side of the stream ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum End {
    Open,
    /// close_notify received: receives complete with what is left, then with 0 bytes.
    CloseNotify,
}

/// Counters the consumer may query.
#[derive(Clone, Copy, Default, Debug)]
pub struct ReceiveStats {
    /// Plaintext delivered to consumer receives.
    pub plaintext_bytes: u64,
    pub records: u64,
    pub key_updates: u64,
    pub tickets: u64,
    /// Bytes held in the receive buffer (records not yet opened, plaintext not yet read),
    /// out of `buffer_capacity`: what a consumer that is not reading costs.
    pub buffered_bytes: usize,
    pub buffer_capacity: usize,
    /// A WskReceive is posted: false while the buffer is full (or the stream ended).
    pub receive_posted: bool,
}

/// What the caller does after a pass, outside the lock.
#[derive(Default)]
pub(crate) struct Action {
    /// Post this receive.
    pub(crate) post: Option<Span>,
    /// The peer asked for our KeyUpdate.
    pub(crate) owe_key_update: bool,
}

pub(crate) struct Rx {
    opener: Opener,
    buffer: PoolBuffer,
    /// Received bytes are `[0, filled)`; records before `parsed` are opened.
    parsed: usize,
    filled: usize,
    segments: Segments,
    /// Application data rustls decrypted during the handshake (rare), delivered first.
    early: SecretBytes,
    early_at: usize,
    queue: RequestQueue,
    posted: bool,
    /// The outcome of the last receive, not yet looked at.
    received: Option<(NTSTATUS, usize)>,
    /// The transport delivered its end (a zero-byte receive).
    fin: bool,
    pub(crate) end: End,
    reader: HandshakeReader,
    /// Records in a row that gave the consumer nothing (empty application data, ignored
    /// warnings): a peer may send some, not an endless stream of them.
    idle_records: usize,
    pub(crate) pump: Pump,
    stats: ReceiveStats,
}

/// Most records in a row that carry nothing for the consumer (as rustls and OpenSSL cap
/// empty fragments and warnings): past this the peer is flooding us, unexpected_message.
const MAX_IDLE_RECORDS: usize = 32;

impl Rx {
    /// `leftover` bytes at the buffer's start arrived after the handshake.
    pub(crate) fn new(
        opener: Opener,
        buffer: PoolBuffer,
        leftover: usize,
        early: SecretBytes,
    ) -> Result<Rx, TlsError> {
        Ok(Rx {
            opener,
            buffer,
            parsed: 0,
            filled: leftover,
            segments: Segments::new(),
            early,
            early_at: 0,
            queue: RequestQueue::new(),
            posted: false,
            received: None,
            fin: false,
            end: End::Open,
            reader: HandshakeReader::new()?,
            idle_records: 0,
            pump: Pump::default(),
            stats: ReceiveStats::default(),
        })
    }

    pub(crate) fn stats(&self) -> ReceiveStats {
        let unread: usize = (0..self.segments.len)
            .map(|i| self.segments.items[(self.segments.head + i) % MAX_SEGMENTS].len)
            .sum();
        ReceiveStats {
            buffered_bytes: unread + (self.filled - self.parsed),
            buffer_capacity: self.buffer.len(),
            receive_posted: self.posted,
            ..self.stats
        }
    }

    pub(crate) fn push(&mut self, op: ConsumerRequest) {
        self.queue.push(op);
    }

    pub(crate) fn receive_completed(&mut self, status: NTSTATUS, bytes: usize) {
        self.posted = false;
        self.received = Some((status, bytes));
    }

    /// The receive was never issued (the socket is closing).
    pub(crate) fn receive_not_issued(&mut self) {
        self.posted = false;
    }

    /// One pass under the lock: take in what arrived, open what is complete, deliver what
    /// consumers asked for, and say whether to post the next receive.
    /// Opening happens inside `platform`'s vector-state guard, entered once per pass and
    /// only when a whole record is waiting.
    pub(crate) fn pass<P: Platform>(
        &mut self,
        failure: Option<NTSTATUS>,
        keys: &SpinLock<Keys>,
        done: &mut Completions,
        platform: &P,
    ) -> Result<Action, Failure> {
        if let Some(status) = failure {
            if planted(Bug::ForgetQueuedReceiveOnClose) && status == STATUS_CANCELLED {
                let _ = self.queue.pop();
            }
            // Only the first receive can hold bytes (a WSK_FLAG_WAITALL one, partly
            // filled); they go to the consumer with the failure, so they count.
            self.stats.plaintext_bytes += self.queue.front().map_or(0, |op| op.done() as u64);
            self.queue.fail_all(status, done);
            return Ok(Action::default());
        }
        if let Some((status, bytes)) = self.received.take() {
            if !status.is_success() {
                return Err(Failure::Transport(status));
            }
            // A provider that claims more than the room it was given is not believed.
            if bytes > self.buffer.len() - self.filled {
                return Err(Failure::Transport(STATUS_INVALID_BUFFER_SIZE));
            }
            self.filled += bytes;
            // The peer's FIN. Whether it cut the stream short is known only once every
            // record that arrived before it has been opened: its close_notify may be among
            // them, behind plaintext the consumer has not read yet.
            self.fin |= bytes == 0;
        }
        let mut action = Action::default();
        // Delivering can make room for more opened records (a consumer waiting on them),
        // so open and deliver until neither moves.
        // Each round opens at least one record, so this ends.
        loop {
            if self.record_waiting() {
                let opened =
                    platform.with_vector_state(|| self.open_records(keys, &mut action.owe_key_update));
                opened.map_err(|_| Failure::Tls(TlsError::Internal))?.map_err(Failure::Tls)?;
            }
            self.deliver(done);
            if !self.record_waiting() {
                break;
            }
        }
        if self.fin && self.end == End::Open && !self.complete_record_buffered() {
            return Err(Failure::Tls(TlsError::Truncated));
        }
        action.post = self.next_receive();
        Ok(action)
    }

    /// Whether a whole record (or a bad header) is in the buffer, opened or not yet: what
    /// the peer sent before its FIN.
    fn complete_record_buffered(&self) -> bool {
        match Opener::record_len(self.unopened()) {
            Ok(Some(total)) => total <= self.filled - self.parsed,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// The received bytes not yet opened.
    fn unopened(&self) -> &[u8] {
        // SAFETY: `[parsed, filled)` is received data inside the buffer; a posted receive
        // writes only at `filled` and beyond.
        unsafe {
            core::slice::from_raw_parts(self.buffer.as_ptr().add(self.parsed), self.filled - self.parsed)
        }
    }

    /// Whether `open_records` has a record to open (or a bad header to refuse).
    fn record_waiting(&self) -> bool {
        self.end == End::Open && !self.segments.is_full() && self.complete_record_buffered()
    }

    fn open_records(&mut self, keys: &SpinLock<Keys>, owe_key_update: &mut bool) -> Result<(), TlsError> {
        while self.end == End::Open && !self.segments.is_full() {
            // SAFETY: `[parsed, filled)` is received data inside the buffer; a posted
            // receive writes only at `filled` and beyond, so nothing else touches it.
            let window = unsafe {
                core::slice::from_raw_parts_mut(
                    self.buffer.as_ptr().add(self.parsed),
                    self.filled - self.parsed,
                )
            };
            let Some(opened) = self.opener.open(window)? else {
                break;
            };
            let plaintext = &window[opened.plaintext.clone()];
            // RFC 8446 §5.1: no other record type in the middle of a handshake message.
            if self.reader.is_mid_message() && opened.content_type != ContentType::Handshake {
                return Err(TlsError::IllegalMessage);
            }
            // Whether the record gave the consumer nothing (see MAX_IDLE_RECORDS).
            let idle = match opened.content_type {
                ContentType::ApplicationData => {
                    if !plaintext.is_empty() {
                        let start = self.parsed + opened.plaintext.start;
                        self.segments.push(Segment { start, len: plaintext.len() });
                    }
                    plaintext.is_empty()
                }
                ContentType::Handshake => {
                    let (opener, stats) = (&mut self.opener, &mut self.stats);
                    self.reader.feed(plaintext, |message| match message {
                        PostHandshake::KeyUpdate { update_requested } => {
                            opener.rekey(keys.lock().next_rx()?);
                            stats.key_updates += 1;
                            *owe_key_update |= update_requested;
                            Ok(())
                        }
                        PostHandshake::NewSessionTicket => {
                            stats.tickets += 1;
                            Ok(())
                        }
                    })?;
                    false
                }
                ContentType::Alert => match read_alert(plaintext)? {
                    Alert::CloseNotify => {
                        self.end = End::CloseNotify;
                        false
                    }
                    Alert::Ignored => true,
                },
                ContentType::ChangeCipherSpec => return Err(TlsError::IllegalMessage),
            };
            self.idle_records = if idle { self.idle_records + 1 } else { 0 };
            if self.idle_records > MAX_IDLE_RECORDS {
                return Err(TlsError::IllegalMessage);
            }
            self.stats.records += 1;
            self.parsed += opened.consumed;
        }
        Ok(())
    }

    /// The next plaintext waiting for the consumer, as (pointer, length).
    fn next_plaintext(&mut self) -> Option<(*const u8, usize)> {
        if self.early_at < self.early.len() {
            return Some((self.early.as_slice()[self.early_at..].as_ptr(), self.early.len() - self.early_at));
        }
        let base = self.buffer.as_ptr();
        // SAFETY: segments lie within `[0, parsed)` of the buffer.
        self.segments.front_mut().map(|s| (unsafe { base.add(s.start) } as *const u8, s.len))
    }

    fn consume(&mut self, n: usize) {
        if self.early_at < self.early.len() {
            self.early_at += n;
            if self.early_at == self.early.len() {
                self.early = SecretBytes::new(); // the old one wipes itself
                self.early_at = 0;
            }
            return;
        }
        if let Some(s) = self.segments.front_mut() {
            s.start += n;
            s.len -= n;
            if s.len == 0 {
                self.segments.pop();
            }
        }
    }

    /// Copies plaintext into waiting receives, in order, and completes those that are
    /// satisfied: any bytes at all, or all of them with WSK_FLAG_WAITALL, or whatever is
    /// left (possibly nothing) once the peer's close_notify is reached.
    fn deliver(&mut self, done: &mut Completions) {
        while let Some(op) = self.queue.front() {
            while op.done() < op.len() {
                let Some((p, available)) = self.next_plaintext() else {
                    break;
                };
                let n = available.min(op.len() - op.done());
                // SAFETY: `p` holds `available` bytes of plaintext (our buffer or `early`),
                // which stay put while we hold the lock.
                op.copy_in(op.done(), unsafe { core::slice::from_raw_parts(p, n) });
                op.set_done(op.done() + n);
                self.consume(n);
            }
            let waitall = op.wants_all();
            let drained = self.next_plaintext().is_none();
            let satisfied = op.done() == op.len() || (op.done() > 0 && !waitall);
            let ended = drained && self.end == End::CloseNotify;
            if !(satisfied || ended) {
                break;
            }
            self.queue.pop();
            let before = self.stats.plaintext_bytes;
            self.stats.plaintext_bytes += op.done() as u64;
            if planted(Bug::LoseReceivedByte) && before < 1 << 16 && self.stats.plaintext_bytes >= 1 << 16 {
                self.consume(1);
            }
            done.add(op, STATUS_SUCCESS, op.done());
        }
    }

    /// The next receive to post, if there is room and it is wanted. When every opened
    /// record has been delivered, the partial record left (if any) moves to the front.
    fn next_receive(&mut self) -> Option<Span> {
        if self.posted || self.fin || self.end != End::Open {
            return None;
        }
        if self.segments.is_empty() && self.parsed > 0 {
            let base = self.buffer.as_ptr();
            // SAFETY: within the buffer; no receive is posted, so nothing else writes it.
            unsafe { core::ptr::copy(base.add(self.parsed), base, self.filled - self.parsed) };
            self.filled -= self.parsed;
            self.parsed = 0;
        }
        if self.filled == self.buffer.len() {
            return None; // full: the consumer must read first
        }
        let span = Span::within(&self.buffer, self.filled, self.buffer.len() - self.filled)?;
        self.posted = true;
        Some(span)
    }
}
