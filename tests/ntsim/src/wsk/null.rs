//! The null transport: a connected socket whose TCP stream is set aside once its TLS
//! handshake has run over it, so that a benchmark sees the cost of the driver alone.
//! WskSend completes inline with every byte "sent", and WskReceive is filled from a
//! test's [`NullSource`].
//!
//! The send path must never read, copy or hash a payload byte, nor allocate: it does the
//! checks every WskSend gets (IRQL, socket, IRP, flags, the WSK_BUF against its chain)
//! and completes. Nothing of a null request is ever in flight after the call returns,
//! except receives that wait for their source.
//!
//! Lock order: a socket's feed (the source's mutex) before its state. A receive that
//! completes inline fills while holding only the feed, so a send on the same socket does
//! not wait for its copy; the provider thread, filling receives that waited, holds both.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use wsktls_nt::{NTSTATUS, STATUS_CANCELLED, STATUS_INVALID_DEVICE_STATE, STATUS_PENDING, STATUS_SUCCESS};

use super::Provider;
use super::entry::{Request, finish_inline_in, make_pending};
use super::socket::{Completion, Phase, Socket, State};
use crate::kernel::{KernelInner, lock};
use crate::mdl::{self, Segment};

/// Where a null socket's incoming bytes come from: fills `into` with up to `into.len()`
/// bytes and returns how many. 0 means "nothing now": the receive stays pending until
/// [`crate::Kernel::null_transport_ready`]; it never means the end of the stream. A
/// count above `into.len()` counts as `into.len()`. It is called with the socket's feed
/// (and, on the provider thread, its state) locked: it must not call WSK on that socket
/// nor `set_null_transport`.
pub type NullSource = Box<dyn FnMut(&mut [u8]) -> usize + Send>;

/// The source of the sockets one switch made null, shared by them: each receive takes the
/// next bytes it gives. Its lock also orders receives: one is filled or queued only while
/// it is held.
pub(super) type Feed = Mutex<Option<NullSource>>;

impl Provider {
    /// Makes the connected sockets whose remote address is `remote` null transports fed
    /// by `incoming`, and returns how many it switched. Sockets that are already null,
    /// not connected, or closing are left as they are.
    pub(crate) fn set_null(&self, remote: SocketAddr, incoming: Option<NullSource>) -> usize {
        let feed = Arc::new(Mutex::new(incoming));
        let mut switched = 0;
        for s in self.sockets_to(remote) {
            if self.switch(&s, &feed) {
                switched += 1;
                // The provider thread serves what was pending on TCP from the source now.
                self.poke(s.id);
            }
        }
        switched
    }

    /// The source of the null sockets to `remote` has bytes now: serve their pending
    /// receives, on the provider thread, as TCP data would be.
    pub(crate) fn null_ready(&self, remote: SocketAddr) {
        for s in self.sockets_to(remote) {
            if s.feed().is_some() {
                self.poke(s.id);
            }
        }
    }

    /// From now on the provider neither reads nor writes the socket's TCP stream; it stays
    /// open (whatever the peer does with it) until the socket closes.
    fn switch(&self, s: &Socket, feed: &Arc<Feed>) -> bool {
        let mut st = lock(&s.state);
        if st.phase != Phase::Connected || st.close.is_some() || s.closing.load(Ordering::SeqCst) {
            return false;
        }
        if !s.set_feed(feed) {
            return false;
        }
        if let Some(stream) = st.stream.as_mut() {
            // Its readiness no longer concerns anyone: a peer's FIN or reset is not seen.
            let _ = self.registry.deregister(stream);
        }
        true
    }
}

/// Why a request on a null socket fails before it starts, if it does: as on TCP, a dead
/// socket fails with its status, and a send after WskDisconnect is refused.
fn refusal(st: &State, sending: bool) -> Option<NTSTATUS> {
    match st.phase {
        Phase::Dead(status) => Some(status),
        Phase::Connecting => Some(STATUS_INVALID_DEVICE_STATE),
        Phase::Connected if sending && (st.write_shut || st.disconnect.is_some()) => {
            Some(STATUS_INVALID_DEVICE_STATE)
        }
        Phase::Connected => None,
    }
}

/// WskSend on a null socket: checked as any send, then complete inline with every byte.
pub(super) fn send(k: &KernelInner, s: &Socket, _feed: &Feed, req: Request) -> NTSTATUS {
    let irp = req.irp;
    if !mdl::check(k, &req.buf, req.what) {
        return finish_inline_in(k, irp, wsktls_nt::STATUS_INVALID_PARAMETER, 0);
    }
    let refused = refusal(&lock(&s.state), true);
    if let Some(status) = refused {
        return finish_inline_in(k, irp, status, 0);
    }
    k.counters.sends_inline.fetch_add(1, Ordering::Relaxed);
    k.counters.null_bytes_sent.fetch_add(req.buf.Length as u64, Ordering::Relaxed);
    finish_inline_in(k, irp, STATUS_SUCCESS, req.buf.Length)
}

/// WskReceive on a null socket: filled from the source and completed inline when that
/// gave at least one byte (every byte with WSK_FLAG_WAITALL); otherwise queued, behind
/// any receive already waiting, until `pump` fills it.
pub(super) fn receive(k: &KernelInner, s: &Socket, feed: &Feed, req: Request) -> NTSTATUS {
    let irp = req.irp;
    if !mdl::check(k, &req.buf, req.what) {
        return finish_inline_in(k, irp, wsktls_nt::STATUS_INVALID_PARAMETER, 0);
    }
    let mut source = lock(feed);
    let st = lock(&s.state);
    if let Some(status) = refusal(&st, false) {
        drop(st);
        drop(source);
        return finish_inline_in(k, irp, status, 0);
    }
    let queued = !st.receives.is_empty();
    drop(st);
    let total = req.buf.Length;
    let got = if queued {
        0
    } else {
        // SAFETY: `check` accepted the WSK_BUF, and this call is still in progress.
        fill(k, &mut source, unsafe { mdl::runs(&req.buf) })
    };
    if !queued && satisfied(got, total, req.waitall) {
        // Unlocked first: the completion routine may post the next receive.
        drop(source);
        return finish_inline_in(k, irp, STATUS_SUCCESS, got);
    }
    let pending = queue(k, s, &req, got);
    // Unlocked before any completion, as above.
    drop(source);
    match pending {
        Ok(()) => STATUS_PENDING,
        Err(status) => finish_inline_in(k, irp, status, 0),
    }
}

/// Queues a null receive that the source could not satisfy (holding the feed, so no fill
/// can come between), or returns the status to complete it with instead. Only here does
/// a null request get the in-flight tracking.
fn queue(k: &KernelInner, s: &Socket, req: &Request, got: usize) -> Result<(), NTSTATUS> {
    let irp = req.irp;
    let Some((mdls, segments)) = mdl::describe(k, &req.buf, req.what) else {
        return Err(wsktls_nt::STATUS_INVALID_PARAMETER);
    };
    let mut st = lock(&s.state);
    if let Some(status) = refusal(&st, false) {
        return Err(status);
    }
    k.mdls.mark_in_flight(irp, mdls, segments.clone());
    // SAFETY: the provider owns the IRP, and still holds the state lock.
    if !unsafe { make_pending(irp) } {
        return Err(STATUS_CANCELLED);
    }
    st.receives.push_back(req.op(segments, got));
    Ok(())
}

/// A receive completes with at least one byte (all of them with WSK_FLAG_WAITALL); a
/// receive of nothing is full at once.
fn satisfied(got: usize, total: usize, waitall: bool) -> bool {
    got == total || (got > 0 && !waitall)
}

/// The provider thread's step for a null socket (feed and state locked): what was pending
/// on TCP at the switch finishes as the null transport would have finished it, and
/// waiting receives are filled from the source, in order, while it gives bytes.
pub(super) fn pump(
    k: &KernelInner,
    st: &mut State,
    source: &mut Option<NullSource>,
    done: &mut Vec<Completion>,
) {
    // Every byte a null transport is given is sent; a half-written send is no exception.
    for op in st.sends.drain(..) {
        done.push((op.irp, STATUS_SUCCESS, op.total));
    }
    if let Some(irp) = st.disconnect.take() {
        st.write_shut = true;
        done.push((irp, STATUS_SUCCESS, 0));
    }
    while let Some(op) = st.receives.front_mut() {
        // Bytes TCP already delivered into it complete it as they were (a completion
        // delay fault no longer applies).
        if op.complete_at.is_none() {
            op.done += fill(k, source, from(&op.segments, op.done));
            if !satisfied(op.done, op.total, op.waitall) {
                return;
            }
        }
        if let Some(op) = st.receives.pop_front() {
            done.push((op.irp, STATUS_SUCCESS, op.done));
        }
    }
}

/// The runs of `segments` after the first `skip` bytes.
fn from(segments: &[Segment], mut skip: usize) -> impl Iterator<Item = Segment> + '_ {
    segments.iter().filter_map(move |s| {
        let cut = skip.min(s.len);
        skip -= cut;
        (cut < s.len).then_some(Segment { addr: s.addr + cut, len: s.len - cut })
    })
}

/// Fills `runs` from the source, in order, until they are full or the source has nothing
/// now. Returns the bytes filled (counted in the kernel's statistics).
fn fill(k: &KernelInner, source: &mut Option<NullSource>, runs: impl Iterator<Item = Segment>) -> usize {
    let Some(source) = source.as_mut() else { return 0 };
    let mut filled = 0;
    'runs: for run in runs {
        let mut at = 0;
        while at < run.len {
            // SAFETY: the run lies in live nonpaged pool that a receive in progress (or
            // pending, its buffers marked in flight) carries; the provider owns these
            // bytes until the receive completes.
            let into = unsafe { std::slice::from_raw_parts_mut((run.addr + at) as *mut u8, run.len - at) };
            let n = source(into).min(into.len());
            if n == 0 {
                filled += at;
                break 'runs;
            }
            at += n;
        }
        filled += at;
    }
    k.counters.null_bytes_received.fetch_add(filled as u64, Ordering::Relaxed);
    filled
}
