//! One WSK connection socket: its state, its queues of pending requests, and `drive`, the
//! provider thread's step that moves bytes and collects completions.
//!
//! Requests complete in the order they were queued, sends only when every byte has been
//! written to TCP (WSK does no buffering: completion means sent), receives when at least
//! one byte arrived (all of them with WSK_FLAG_WAITALL), with zero bytes at the peer's
//! graceful disconnect.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wsktls_nt::{
    IRP, NTSTATUS, STATUS_CANCELLED, STATUS_CONNECTION_ABORTED, STATUS_CONNECTION_DISCONNECTED,
    STATUS_CONNECTION_REFUSED, STATUS_CONNECTION_RESET, STATUS_FILE_FORCED_CLOSED, STATUS_HOST_UNREACHABLE,
    STATUS_IO_TIMEOUT, STATUS_NETWORK_UNREACHABLE, STATUS_SUCCESS, STATUS_UNSUCCESSFUL, WSK_SOCKET,
};

use super::CONNECTION_DISPATCH;
use super::null::{self, Feed, NullSource};
use crate::faults::Breaks;
use crate::kernel::{KernelInner, lock};
use crate::mdl::Segment;
use crate::rng::Rng;

/// A completion to deliver once no socket lock is held: (IRP, status, information).
pub(super) type Completion = (usize, NTSTATUS, usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Connecting,
    Connected,
    /// No longer functional; every request fails with this status.
    Dead(NTSTATUS),
}

/// A pending send or receive.
pub(super) struct Op {
    pub(super) irp: usize,
    pub(super) segments: Vec<Segment>,
    pub(super) done: usize,
    pub(super) total: usize,
    pub(super) waitall: bool,
    /// A send with WSK_FLAG_NODELAY: Nagle's algorithm must not hold its bytes back.
    pub(super) nodelay: bool,
    /// Set once the op may complete; it completes when this time has passed.
    pub(super) complete_at: Option<Instant>,
}

pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) stream: Option<mio::net::TcpStream>,
    pub(super) rng: Rng,
    pub(super) connect: Option<usize>,
    pub(super) sends: VecDeque<Op>,
    pub(super) receives: VecDeque<Op>,
    pub(super) disconnect: Option<usize>,
    pub(super) close: Option<usize>,
    pub(super) bytes_sent: u64,
    pub(super) eof: bool,
    pub(super) write_shut: bool,
    /// TCP_NODELAY as last set on the stream (off, Windows's default, until a send asks).
    pub(super) nodelay: bool,
    /// A break `Faults::breaks` drew, for the provider thread to apply: the status the
    /// connection dies with.
    pub(super) breaking: Option<NTSTATUS>,
    /// A stall `Faults::breaks` drew: nothing moves until then.
    pub(super) stalled_until: Option<Instant>,
}

/// The provider's socket object. `wsk` comes first: the client's PWSK_SOCKET points at it.
#[repr(C)]
pub(crate) struct Socket {
    wsk: WSK_SOCKET,
    pub(super) id: u64,
    pub(super) registration: u64,
    /// The address WskSocketConnect connected to: how a test names the socket.
    pub(super) remote: SocketAddr,
    /// Set once, under the state lock, when the socket becomes a null transport; never
    /// cleared (a null socket does not go back to TCP).
    feed: OnceLock<Arc<Feed>>,
    /// Provider calls on this socket in progress (WskCloseSocket must see none but itself).
    pub(super) calls: AtomicU32,
    /// Set by WskCloseSocket; no call may start after it.
    pub(super) closing: AtomicBool,
    forced_close: AtomicBool,
    pub(super) state: Mutex<State>,
}

// SAFETY: `wsk` only points at the immutable static dispatch table; everything else is
// synchronised.
unsafe impl Send for Socket {}
// SAFETY: as above.
unsafe impl Sync for Socket {}

impl Socket {
    pub(super) fn new(id: u64, registration: u64, remote: SocketAddr, rng: Rng) -> Socket {
        Socket {
            wsk: WSK_SOCKET {
                Dispatch: (&CONNECTION_DISPATCH.0 as *const wsktls_nt::WSK_PROVIDER_CONNECTION_DISPATCH)
                    .cast(),
            },
            id,
            registration,
            remote,
            feed: OnceLock::new(),
            calls: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            forced_close: AtomicBool::new(false),
            state: Mutex::new(State {
                phase: Phase::Connecting,
                stream: None,
                rng,
                connect: None,
                sends: VecDeque::new(),
                receives: VecDeque::new(),
                disconnect: None,
                close: None,
                bytes_sent: 0,
                eof: false,
                write_shut: false,
                nodelay: false,
                breaking: None,
                stalled_until: None,
            }),
        }
    }

    pub(crate) fn wsk_ptr(&self) -> *mut WSK_SOCKET {
        &self.wsk as *const WSK_SOCKET as *mut WSK_SOCKET
    }

    /// The source of a null transport's incoming bytes; None while the socket uses TCP.
    /// Read under the state lock it is final for that critical section: the switch sets it
    /// under that lock.
    pub(super) fn feed(&self) -> Option<&Arc<Feed>> {
        self.feed.get()
    }

    /// Makes the socket a null transport fed by `feed`; false if it already is one.
    /// The caller holds the state lock.
    pub(super) fn set_feed(&self, feed: &Arc<Feed>) -> bool {
        self.feed.set(Arc::clone(feed)).is_ok()
    }

    pub(super) fn request_forced_close(&self) {
        self.forced_close.store(true, Ordering::Release);
    }

    /// Counts a provider call in progress until the guard drops; a call that starts once
    /// WskCloseSocket has is a verifier report.
    pub(super) fn enter_call(&self, what: &str) -> Option<CallGuard<'_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let guard = CallGuard(self);
        if self.closing.load(Ordering::SeqCst) {
            crate::verifier::report(
                crate::verifier::Rule::SocketUsedAfterClose,
                format!("{what} on {:?} after WskCloseSocket", self.wsk_ptr()),
            );
            return None;
        }
        Some(guard)
    }
}

pub(super) struct CallGuard<'a>(&'a Socket);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// NTSTATUS for a socket error, as the Windows transport would report it.
pub(super) fn status_of(e: &io::Error) -> NTSTATUS {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => STATUS_CONNECTION_REFUSED,
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => STATUS_CONNECTION_RESET,
        io::ErrorKind::ConnectionAborted => STATUS_CONNECTION_ABORTED,
        io::ErrorKind::NotConnected => STATUS_CONNECTION_DISCONNECTED,
        io::ErrorKind::HostUnreachable => STATUS_HOST_UNREACHABLE,
        io::ErrorKind::NetworkUnreachable => STATUS_NETWORK_UNREACHABLE,
        io::ErrorKind::TimedOut => STATUS_IO_TIMEOUT,
        _ => STATUS_UNSUCCESSFUL,
    }
}

/// Makes the next close of a TCP socket send a reset rather than a FIN. Public so that
/// test peers reset connections the same way the provider does.
pub fn set_abortive(stream: &impl AsRawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket fd and a correctly sized SO_LINGER value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Sets the socket's send buffer (SO_SNDBUF), for the throttled-transport fault.
pub(super) fn set_send_buffer_size(stream: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    set_int_option(stream, libc::SO_SNDBUF, bytes)
}

/// Sets a socket's receive buffer (SO_RCVBUF; Linux doubles the value and keeps a
/// minimum of about 2 KiB). Public so that a test peer can read slowly through a small
/// window: set on a listener, it applies to the sockets it accepts from their first
/// segment.
pub fn set_receive_buffer(socket: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    set_int_option(socket, libc::SO_RCVBUF, bytes)
}

fn set_int_option(socket: &impl AsRawFd, option: libc::c_int, value: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket fd and an int-sized input.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The socket's send buffer size: what ntsim reports as the ideal send backlog.
pub(super) fn send_buffer_size(stream: &mio::net::TcpStream) -> usize {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket fd and an int-sized output.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 && v > 0 { v as usize } else { 64 * 1024 }
}

/// The segments' bytes from `skip`, at most `limit` of them, as (address, length) runs.
fn window(segments: &[Segment], mut skip: usize, mut limit: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for s in segments {
        if limit == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(limit);
        out.push((s.addr + skip, n));
        limit -= n;
        skip = 0;
    }
    out
}

/// Writes up to `limit` more bytes of `op` to TCP.
/// `nodelay` is the stream's TCP_NODELAY as last set: WSK_FLAG_NODELAY applies to one send,
/// Linux's option to the socket, so it is switched whenever a send asks for the other
/// setting (switching it on pushes whatever Nagle held, as the flag would).
pub(super) fn write_some(
    stream: &mio::net::TcpStream,
    nodelay: &mut bool,
    op: &Op,
    limit: usize,
) -> io::Result<usize> {
    if *nodelay != op.nodelay {
        stream.set_nodelay(op.nodelay)?;
        *nodelay = op.nodelay;
    }
    let runs = window(&op.segments, op.done, limit);
    // SAFETY: the runs lie in live pool that an in-flight IRP carries (checked when the
    // request was submitted; freeing it while in flight is a verifier report that keeps
    // the memory).
    let slices: Vec<IoSlice<'_>> = runs
        .iter()
        .map(|&(a, n)| IoSlice::new(unsafe { std::slice::from_raw_parts(a as *const u8, n) }))
        .collect();
    let mut s = stream;
    s.write_vectored(&slices)
}

/// Reads up to `limit` more bytes of `op` from TCP into its buffers.
pub(super) fn read_some(stream: &mio::net::TcpStream, op: &Op, limit: usize) -> io::Result<usize> {
    let runs = window(&op.segments, op.done, limit);
    // SAFETY: as for write_some; the provider owns these bytes until the receive completes.
    let mut slices: Vec<IoSliceMut<'_>> = runs
        .iter()
        .map(|&(a, n)| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(a as *mut u8, n) }))
        .collect();
    let mut s = stream;
    s.read_vectored(&mut slices)
}

impl State {
    /// Fails every pending request with `status` and makes the socket dead. With
    /// `abortive`, the peer sees a reset (and the TCP socket is closed at once).
    pub(super) fn kill(&mut self, status: NTSTATUS, abortive: bool, done: &mut Vec<Completion>) {
        if let Phase::Dead(_) = self.phase {
            return;
        }
        self.phase = Phase::Dead(status);
        if let Some(irp) = self.connect.take() {
            done.push((irp, status, 0));
        }
        for op in self.sends.drain(..).chain(self.receives.drain(..)) {
            done.push((op.irp, status, 0));
        }
        if let Some(irp) = self.disconnect.take() {
            done.push((irp, status, 0));
        }
        if abortive {
            // An RST takes a close with SO_LINGER 0; shutdown alone would send a FIN,
            // which the peer would take for a graceful end.
            if let Some(stream) = self.stream.take() {
                set_abortive(&stream);
            }
        } else if let Some(stream) = &self.stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Counts bytes written, and applies the forced-close fault when its threshold passes.
    pub(super) fn wrote(&mut self, k: &KernelInner, n: usize, done: &mut Vec<Completion>) {
        self.bytes_sent += n as u64;
        if let Some(limit) = k.faults().forced_close_after_bytes {
            if self.bytes_sent >= limit {
                self.kill(STATUS_FILE_FORCED_CLOSED, true, done);
            }
        }
    }

    /// Draws the faults of `breaks` (the request's `Faults::breaks`) for one request this
    /// connection is about to take (it goes to the provider thread if one is drawn), and
    /// counts what it drew.
    pub(super) fn draw_breaks(&mut self, k: &KernelInner, breaks: Option<&Breaks>) {
        let Some(b) = breaks else { return };
        let c = &k.counters;
        if self.breaking.is_none() {
            if self.rng.chance(b.reset) {
                self.breaking = Some(STATUS_CONNECTION_RESET);
                c.resets_injected.fetch_add(1, Ordering::Relaxed);
            } else if self.rng.chance(b.forced_close) {
                self.breaking = Some(STATUS_FILE_FORCED_CLOSED);
                c.forced_closes_injected.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A connection about to break does not stall first.
        if self.breaking.is_none() && self.stalled_until.is_none() && self.rng.chance(b.stall) {
            let (lo, hi) = b.stall_time;
            let micros = self.rng.range(lo.as_micros() as u64, hi.as_micros() as u64);
            self.stalled_until = Some(Instant::now() + Duration::from_micros(micros));
            c.stalls_injected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether a request may be served on the caller's thread: no break or stall drawn
    /// is waiting for the provider thread.
    pub(super) fn flowing(&self) -> bool {
        self.breaking.is_none() && self.stalled_until.is_none()
    }

    fn delay(&mut self, k: &KernelInner) -> Option<Duration> {
        let (lo, hi) = k.faults().completion_delay?;
        let micros = self.rng.range(lo.as_micros() as u64, hi.as_micros() as u64);
        k.counters.completions_delayed.fetch_add(1, Ordering::Relaxed);
        Some(Duration::from_micros(micros))
    }
}

/// What `drive` needs from the provider: when to come back.
pub(super) trait Wake {
    fn again_at(&self, at: Instant);
}

/// One step of the provider for one socket: connect, sends, disconnect, receives, then
/// forced close and close. A null socket's TCP stream is left alone: its requests are
/// served from `source`, the socket's feed, which the caller locked before the state (the
/// lock order of null receives). Returns the completions to deliver.
pub(super) fn drive(
    k: &KernelInner,
    s: &Socket,
    wake: &impl Wake,
    source: Option<&mut Option<NullSource>>,
) -> (Vec<Completion>, bool) {
    let mut done = Vec::new();
    let mut st = lock(&s.state);
    let now = Instant::now();
    if s.forced_close.swap(false, Ordering::AcqRel) {
        let connecting = st.phase == Phase::Connecting;
        st.kill(STATUS_FILE_FORCED_CLOSED, true, &mut done);
        if connecting {
            // The client never saw this socket: it goes with its failed connect.
            return (done, true);
        }
    }
    match st.phase {
        Phase::Connecting => {
            if let Some(failed) = check_connect(&mut st, s, &mut done) {
                return (done, failed);
            }
        }
        Phase::Connected if s.feed().is_some() => {
            // Without the feed locked (the switch came after the caller looked), the
            // switch's own poke serves the socket next.
            if let Some(source) = source {
                null::pump(k, &mut st, source, &mut done);
            }
        }
        Phase::Connected => {
            if let Some(status) = st.breaking.take() {
                st.kill(status, true, &mut done);
            } else if let Some(until) = st.stalled_until.filter(|&until| until > now) {
                wake.again_at(until);
            } else {
                st.stalled_until = None;
                pump_sends(k, &mut st, now, wake, &mut done);
                pump_disconnect(&mut st, &mut done);
                pump_receives(k, &mut st, now, wake, &mut done);
            }
        }
        Phase::Dead(_) => {}
    }
    let closed = if let Some(close) = st.close.take() {
        close_now(&mut st, close, &mut done);
        true
    } else {
        false
    };
    (done, closed)
}

/// Returns Some(true) when the connect failed (the socket is to be destroyed).
fn check_connect(st: &mut State, s: &Socket, done: &mut Vec<Completion>) -> Option<bool> {
    let stream = st.stream.as_ref()?;
    let failure = match stream.take_error() {
        Ok(Some(e)) | Err(e) => Some(status_of(&e)),
        Ok(None) => match stream.peer_addr() {
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Some(false),
            Err(e) => Some(status_of(&e)),
        },
    };
    let irp = st.connect.take()?;
    match failure {
        None => {
            st.phase = Phase::Connected;
            done.push((irp, STATUS_SUCCESS, s.wsk_ptr() as usize));
            Some(false)
        }
        Some(status) => {
            st.phase = Phase::Dead(status);
            done.push((irp, status, 0));
            Some(true)
        }
    }
}

fn pump_sends(k: &KernelInner, st: &mut State, now: Instant, wake: &impl Wake, done: &mut Vec<Completion>) {
    let split = k.faults().split_sends;
    while let Some(op) = st.sends.front() {
        if op.done < op.total {
            let remaining = op.total - op.done;
            let limit = if split { st.rng.range(1, remaining as u64) as usize } else { remaining };
            let Some(stream) = st.stream.as_ref() else {
                return;
            };
            match write_some(stream, &mut st.nodelay, op, limit) {
                Ok(n) => {
                    if let Some(op) = st.sends.front_mut() {
                        op.done += n;
                    }
                    st.wrote(k, n, done);
                    if st.phase != Phase::Connected {
                        return;
                    }
                    let op = &st.sends[0];
                    if split && op.done < op.total {
                        // Let time pass between pieces, so the peer sees them apart.
                        k.counters.send_pieces.fetch_add(1, Ordering::Relaxed);
                        wake.again_at(now + Duration::from_micros(st.rng.range(0, 200)));
                        return;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    st.kill(status_of(&e), false, done);
                    return;
                }
            }
        }
        if st.sends[0].complete_at.is_none() {
            let at = st.delay(k).map_or(now, |d| now + d);
            st.sends[0].complete_at = Some(at);
        }
        let at = st.sends[0].complete_at.unwrap_or(now);
        if at > now {
            wake.again_at(at);
            return;
        }
        if let Some(op) = st.sends.pop_front() {
            done.push((op.irp, STATUS_SUCCESS, op.total));
        }
    }
}

fn pump_disconnect(st: &mut State, done: &mut Vec<Completion>) {
    if st.disconnect.is_some() && st.sends.is_empty() {
        if let Some(stream) = &st.stream {
            let _ = stream.shutdown(Shutdown::Write);
        }
        st.write_shut = true;
        if let Some(irp) = st.disconnect.take() {
            done.push((irp, STATUS_SUCCESS, 0));
        }
    }
}

fn pump_receives(
    k: &KernelInner,
    st: &mut State,
    now: Instant,
    wake: &impl Wake,
    done: &mut Vec<Completion>,
) {
    let split = k.faults().split_receives;
    while let Some(op) = st.receives.front() {
        if let Some(at) = op.complete_at {
            if at > now {
                wake.again_at(at);
                return;
            }
            if let Some(op) = st.receives.pop_front() {
                done.push((op.irp, STATUS_SUCCESS, op.done));
            }
            continue;
        }
        if st.eof {
            if let Some(op) = st.receives.pop_front() {
                done.push((op.irp, STATUS_SUCCESS, op.done));
            }
            continue;
        }
        let remaining = op.total - op.done;
        let limit =
            if split && remaining > 1 { st.rng.range(1, remaining as u64) as usize } else { remaining };
        let Some(stream) = st.stream.as_ref() else {
            return;
        };
        match read_some(stream, op, limit) {
            Ok(0) => st.eof = true,
            Ok(n) => {
                if split && n < remaining {
                    k.counters.receives_split.fetch_add(1, Ordering::Relaxed);
                }
                let delay = st.delay(k);
                if let Some(op) = st.receives.front_mut() {
                    op.done += n;
                    if !op.waitall || op.done == op.total {
                        op.complete_at = Some(delay.map_or(now, |d| now + d));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                st.kill(status_of(&e), false, done);
                return;
            }
        }
    }
}

/// WskCloseSocket's work: cancel and complete every pending request, close the TCP
/// socket (abortively unless both directions are already shut), complete the close.
fn close_now(st: &mut State, close: usize, done: &mut Vec<Completion>) {
    if let Some(irp) = st.connect.take() {
        done.push((irp, STATUS_CANCELLED, 0));
    }
    for op in st.sends.drain(..).chain(st.receives.drain(..)) {
        done.push((op.irp, STATUS_CANCELLED, 0));
    }
    if let Some(irp) = st.disconnect.take() {
        done.push((irp, STATUS_CANCELLED, 0));
    }
    if let Some(stream) = st.stream.take() {
        if !(st.write_shut && st.eof) {
            set_abortive(&stream);
        }
        drop(stream);
    }
    done.push((close, STATUS_SUCCESS, 0));
}

/// The IRP behind a completion, for delivery.
pub(super) fn irp(c: &Completion) -> *mut IRP {
    c.0 as *mut IRP
}
