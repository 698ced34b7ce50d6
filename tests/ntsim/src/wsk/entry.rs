//! The provider's entry points, reached through the dispatch tables. Each checks its
//! IRQL and parameters, takes the IRP (from then on the provider completes it exactly
//! once, inline or later), and either finishes inline or queues the request for the
//! provider thread and returns STATUS_PENDING.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use wsktls_nt::{
    AF_INET, AF_INET6, DISPATCH_LEVEL, IPPROTO_TCP, IRP, IoMarkIrpPending, IoSetCancelRoutine, NTSTATUS,
    PVOID, SIO_WSK_QUERY_IDEAL_SEND_BACKLOG, SIZE_T, SOCK_STREAM, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6,
    STATUS_BUFFER_TOO_SMALL, STATUS_CANCELLED, STATUS_CONNECTION_ABORTED, STATUS_HOST_UNREACHABLE,
    STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_NOT_IMPLEMENTED, STATUS_NOT_SUPPORTED,
    STATUS_PENDING, STATUS_SUCCESS, WSK_BUF, WSK_CLIENT_CONNECTION_DISPATCH, WSK_CONTROL_SOCKET_TYPE,
    WSK_FLAG_ABORTIVE, WSK_FLAG_NODELAY, WSK_FLAG_WAITALL, WSK_SOCKET, WskIoctl,
};

use super::null;
use super::reactor::deliver;
use super::socket::{
    Op, Phase, Socket, State, read_some, send_buffer_size, set_send_buffer_size, status_of, write_some,
};
use crate::io::complete_in;
use crate::irql::{require_dispatch, with_irql};
use crate::kernel::{KernelInner, current, lock};
use crate::mdl::{Segment, describe};
use crate::verifier::{Rule, report};

/// Completes a request the provider took, on the caller's thread, and returns its status
/// (what a WSK function returns when it finishes inline).
fn finish_inline(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    finish_inline_in(&current(), irp, status, information)
}

/// [`finish_inline`] in `k`, the kernel this thread is in.
pub(super) fn finish_inline_in(
    k: &KernelInner,
    irp: *mut IRP,
    status: NTSTATUS,
    information: usize,
) -> NTSTATUS {
    if k.inline_completions_at_dispatch() {
        with_irql(DISPATCH_LEVEL, "an inline WSK completion routine", || {
            complete_in(k, irp, status, information)
        });
    } else {
        complete_in(k, irp, status, information);
    }
    status
}

/// Looks the socket up; a pointer that is not a live socket is a verifier report.
fn live_socket(k: &KernelInner, sock: *mut WSK_SOCKET, what: &str) -> Option<Arc<Socket>> {
    let s = k.wsk.socket_at(sock);
    if s.is_none() {
        report(Rule::SocketUsedAfterClose, format!("{what} on {sock:?}, which is not an open socket"));
    }
    s
}

fn sockaddr(p: *const SOCKADDR) -> Option<SocketAddr> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the client passes a SOCKADDR of the family it names.
    unsafe {
        match (*p).sa_family {
            AF_INET => {
                let a = &*(p as *const SOCKADDR_IN);
                Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a.sin_addr), u16::from_be(a.sin_port))))
            }
            AF_INET6 => {
                let a = &*(p as *const SOCKADDR_IN6);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

pub(super) unsafe extern "system" fn WskSocketConnect(
    client: PVOID,
    socket_type: u16,
    protocol: u32,
    local: *mut SOCKADDR,
    remote: *mut SOCKADDR,
    flags: u32,
    _context: PVOID,
    _dispatch: *const WSK_CLIENT_CONNECTION_DISPATCH,
    _process: PVOID,
    _thread: PVOID,
    _security: PVOID,
    irp: *mut IRP,
) -> NTSTATUS {
    let k = current();
    if !require_dispatch("WskSocketConnect") || !k.irps.submit(irp, "WskSocketConnect") {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(registration) = k.wsk.registration_of(client) else {
        report(Rule::WskRegistration, "WskSocketConnect with a client that is not a captured registration");
        return finish_inline(irp, STATUS_INVALID_PARAMETER, 0);
    };
    let (Some(local), Some(remote)) = (sockaddr(local), sockaddr(remote)) else {
        report(Rule::BadParameter, "WskSocketConnect needs a local and a remote IPv4 or IPv6 address");
        return finish_inline(irp, STATUS_INVALID_PARAMETER, 0);
    };
    if socket_type != SOCK_STREAM
        || protocol != IPPROTO_TCP
        || flags != 0
        || local.is_ipv4() != remote.is_ipv4()
    {
        report(
            Rule::BadParameter,
            format!(
                "WskSocketConnect type {socket_type} protocol {protocol} flags {flags} {local} -> {remote}"
            ),
        );
        return finish_inline(irp, STATUS_INVALID_PARAMETER, 0);
    }
    if !remote.ip().is_loopback() {
        report(
            Rule::NonLoopbackAddress,
            format!("WskSocketConnect to {remote}: ntsim only connects to loopback"),
        );
        return finish_inline(irp, STATUS_HOST_UNREACHABLE, 0);
    }
    let socket = Arc::new(Socket::new(k.wsk.new_id(), registration, remote, k.fork_rng()));
    let mut st = lock(&socket.state);
    st.connect = Some(irp as usize);
    let faults = k.faults();
    if !faults.connect_never_answers {
        match mio::net::TcpStream::connect(remote) {
            Ok(mut stream) => {
                if let Some(bytes) = faults.send_buffer_bytes {
                    if let Err(e) = set_send_buffer_size(&stream, bytes) {
                        st.connect = None;
                        return finish_inline(irp, status_of(&e), 0);
                    }
                }
                let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
                if let Err(e) = k.wsk.registry.register(&mut stream, mio::Token(socket.id as usize), interest)
                {
                    st.connect = None;
                    return finish_inline(irp, status_of(&e), 0);
                }
                st.stream = Some(stream);
            }
            Err(e) => {
                st.connect = None;
                return finish_inline(irp, status_of(&e), 0);
            }
        }
    }
    let id = socket.id;
    k.wsk.add_socket(Arc::clone(&socket));
    // SAFETY: the provider owns the IRP; the cancel routine is how a timeout ends it.
    if !unsafe { make_pending(irp) } {
        st.connect = None;
        st.phase = Phase::Dead(STATUS_CANCELLED);
        drop(st);
        k.wsk.remove_socket(&socket);
        return finish_inline(irp, STATUS_CANCELLED, 0);
    }
    drop(st);
    k.wsk.poke(id);
    STATUS_PENDING
}

/// A WskSend or WskReceive the provider took: its IRP, the caller's WSK_BUF (read once,
/// as the provider does) and whether it waits for every byte.
pub(super) struct Request {
    pub(super) irp: *mut IRP,
    pub(super) buf: WSK_BUF,
    pub(super) waitall: bool,
    pub(super) nodelay: bool,
    pub(super) what: &'static str,
}

impl Request {
    /// The request as the provider tracks it: over `segments`, with `done` bytes moved.
    pub(super) fn op(&self, segments: Vec<Segment>, done: usize) -> Op {
        Op {
            irp: self.irp as usize,
            segments,
            done,
            total: self.buf.Length,
            waitall: self.waitall,
            nodelay: self.nodelay,
            complete_at: None,
        }
    }
}

/// How one direction handles a request: `stream` on a socket that moves bytes over TCP
/// (given the connected socket's state and the request as an operation, it decides
/// between finishing inline and pending), `null` on a null transport.
struct Direction {
    what: &'static str,
    allowed_flags: u32,
    stream: fn(&Socket, std::sync::MutexGuard<'_, State>, Op) -> NTSTATUS,
    null: fn(&KernelInner, &Socket, &null::Feed, Request) -> NTSTATUS,
}

const SEND: Direction =
    Direction { what: "WskSend", allowed_flags: WSK_FLAG_NODELAY, stream: send_body, null: null::send };
const RECEIVE: Direction = Direction {
    what: "WskReceive",
    allowed_flags: WSK_FLAG_WAITALL,
    stream: receive_body,
    null: null::receive,
};

/// What WskSend and WskReceive share: the IRQL, the socket, taking the IRP and the flags;
/// then the transport the socket uses takes over.
unsafe fn transfer(
    sock: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
    d: &Direction,
) -> NTSTATUS {
    let k = current();
    let what = d.what;
    if !require_dispatch(what) {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(s) = live_socket(&k, sock, what) else {
        return STATUS_INVALID_DEVICE_STATE;
    };
    let Some(_call) = s.enter_call(what) else { return STATUS_INVALID_DEVICE_STATE };
    if !k.irps.submit(irp, what) {
        return STATUS_INVALID_PARAMETER;
    }
    if flags & !d.allowed_flags != 0 {
        return finish_inline(irp, STATUS_NOT_SUPPORTED, 0);
    }
    // SAFETY: the caller's WSK_BUF, read once here as the provider does.
    let buf = unsafe { *buf };
    let waitall = flags & WSK_FLAG_WAITALL != 0 && d.allowed_flags & WSK_FLAG_WAITALL != 0;
    let nodelay = flags & WSK_FLAG_NODELAY != 0 && d.allowed_flags & WSK_FLAG_NODELAY != 0;
    let req = Request { irp, buf, waitall, nodelay, what };
    match s.feed() {
        Some(feed) => (d.null)(&k, &s, feed, req),
        None => over_tcp(&k, &s, req, d),
    }
}

/// The TCP half of `transfer`: the WSK_BUF's chain, the socket's phase, the in-flight
/// tracking; then `d.stream`.
fn over_tcp(k: &KernelInner, s: &Socket, req: Request, d: &Direction) -> NTSTATUS {
    let irp = req.irp;
    let Some((mdls, segments)) = describe(k, &req.buf, req.what) else {
        return finish_inline(irp, STATUS_INVALID_PARAMETER, 0);
    };
    let st = lock(&s.state);
    match st.phase {
        Phase::Dead(status) => return finish_inline_unlocked(st, irp, status),
        Phase::Connecting => return finish_inline_unlocked(st, irp, STATUS_INVALID_DEVICE_STATE),
        Phase::Connected => {}
    }
    if let Some(feed) = s.feed() {
        // The socket became a null transport since `transfer` looked.
        drop(st);
        return (d.null)(k, s, feed, req);
    }
    k.mdls.mark_in_flight(irp, mdls, segments.clone());
    (d.stream)(s, st, req.op(segments, 0))
}

pub(super) unsafe extern "system" fn WskSend(
    sock: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: forwarded from the caller.
    unsafe { transfer(sock, buf, flags, irp, &SEND) }
}

fn send_body(s: &Socket, mut st: std::sync::MutexGuard<'_, State>, mut op: Op) -> NTSTATUS {
    let k = current();
    let irp = op.irp as *mut IRP;
    if st.write_shut || st.disconnect.is_some() {
        return finish_inline_unlocked(st, irp, STATUS_INVALID_DEVICE_STATE);
    }
    k.irps.remember_send(irp, op.segments.clone());
    let faults = k.faults();
    st.draw_breaks(&k, faults.breaks.as_ref());
    let mut done = Vec::new();
    if !faults.pend_every_send
        && !faults.split_sends
        && faults.completion_delay.is_none()
        && st.sends.is_empty()
        && st.flowing()
    {
        let state = &mut *st;
        if let Some(stream) = state.stream.as_ref() {
            match write_some(stream, &mut state.nodelay, &op, op.total) {
                Ok(n) => {
                    op.done = n;
                    st.wrote(&k, n, &mut done);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => st.kill(status_of(&e), false, &mut done),
            }
        }
        if op.done == op.total && st.phase == Phase::Connected {
            drop(st);
            deliver_inline(done);
            k.counters.sends_inline.fetch_add(1, Ordering::Relaxed);
            return finish_inline(irp, STATUS_SUCCESS, op.total);
        }
        if let Phase::Dead(status) = st.phase {
            drop(st);
            deliver_inline(done);
            return finish_inline(irp, status, 0);
        }
    }
    // SAFETY: the provider owns the IRP, and still holds the state lock.
    if !unsafe { make_pending(irp) } {
        return finish_inline_unlocked(st, irp, STATUS_CANCELLED);
    }
    st.sends.push_back(op);
    drop(st);
    k.counters.sends_pended.fetch_add(1, Ordering::Relaxed);
    k.wsk.poke(s.id);
    STATUS_PENDING
}

fn finish_inline_unlocked(st: std::sync::MutexGuard<'_, State>, irp: *mut IRP, status: NTSTATUS) -> NTSTATUS {
    drop(st);
    finish_inline(irp, status, 0)
}

/// Completions that a fault produced while a call was in progress: delivered on the
/// calling thread, like any inline completion.
fn deliver_inline(done: Vec<super::socket::Completion>) {
    for c in done {
        finish_inline(c.0 as *mut IRP, c.1, c.2);
    }
}

/// Queues-side half of pending a request: marks it pending and makes it cancellable,
/// while the caller still holds the socket's state lock (so the cancel routine, which
/// takes that lock, finds the request queued). Returns false when the IRP was cancelled
/// before it became cancellable: the caller completes it with STATUS_CANCELLED instead.
pub(super) unsafe fn make_pending(irp: *mut IRP) -> bool {
    // SAFETY: the provider owns the IRP between taking it and completing it.
    unsafe {
        IoMarkIrpPending(irp);
        IoSetCancelRoutine(irp, Some(cancel_pending));
        !((*irp).Cancel != 0 && IoSetCancelRoutine(irp, None).is_some())
    }
}

/// The provider's cancel routine for every pending request. A cancelled connect destroys
/// its socket; a cancelled send that was partly written leaves the stream unusable, so
/// the connection is aborted. Called by IoCancelIrp with the cancel spin lock held.
unsafe extern "system" fn cancel_pending(_device: *mut wsktls_nt::DEVICE_OBJECT, irp: *mut IRP) {
    // SAFETY: IoCancelIrp calls this with the cancel lock held and CancelIrql set.
    unsafe { wsktls_nt::IoReleaseCancelSpinLock((*irp).CancelIrql) };
    let k = current();
    let key = irp as usize;
    let sockets: Vec<Arc<Socket>> = lock(&k.wsk.sockets).values().cloned().collect();
    for s in sockets {
        let mut done = Vec::new();
        let mut st = lock(&s.state);
        if st.connect == Some(key) {
            st.connect = None;
            st.phase = Phase::Dead(STATUS_CANCELLED);
            st.stream = None;
            drop(st);
            k.wsk.remove_socket(&s);
            deliver(vec![(key, STATUS_CANCELLED, 0)]);
            return;
        }
        if let Some(i) = st.sends.iter().position(|op| op.irp == key) {
            let partly_sent = st.sends[i].done > 0;
            st.sends.remove(i);
            done.push((key, STATUS_CANCELLED, 0));
            if partly_sent {
                st.kill(STATUS_CONNECTION_ABORTED, true, &mut done);
            }
        } else if let Some(i) = st.receives.iter().position(|op| op.irp == key) {
            st.receives.remove(i);
            done.push((key, STATUS_CANCELLED, 0));
        } else if st.disconnect == Some(key) {
            st.disconnect = None;
            done.push((key, STATUS_CANCELLED, 0));
        }
        drop(st);
        if !done.is_empty() {
            deliver(done);
            return;
        }
    }
}

pub(super) unsafe extern "system" fn WskReceive(
    sock: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: forwarded from the caller.
    unsafe { transfer(sock, buf, flags, irp, &RECEIVE) }
}

fn receive_body(s: &Socket, mut st: std::sync::MutexGuard<'_, State>, mut op: Op) -> NTSTATUS {
    let k = current();
    let irp = op.irp as *mut IRP;
    if st.eof && st.receives.is_empty() {
        return finish_inline_unlocked(st, irp, STATUS_SUCCESS);
    }
    let faults = k.faults();
    st.draw_breaks(&k, faults.breaks.as_ref());
    if !faults.pend_every_receive
        && !faults.split_receives
        && faults.completion_delay.is_none()
        && st.receives.is_empty()
        && st.flowing()
    {
        let mut done = Vec::new();
        if let Some(stream) = st.stream.as_ref() {
            match read_some(stream, &op, op.total) {
                Ok(0) => st.eof = true,
                Ok(n) => op.done = n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => st.kill(status_of(&e), false, &mut done),
            }
        }
        if let Phase::Dead(status) = st.phase {
            drop(st);
            deliver_inline(done);
            return finish_inline(irp, status, 0);
        }
        if st.eof || (op.done > 0 && (!op.waitall || op.done == op.total)) {
            drop(st);
            return finish_inline(irp, STATUS_SUCCESS, op.done);
        }
    }
    // SAFETY: the provider owns the IRP, and still holds the state lock.
    if !unsafe { make_pending(irp) } {
        return finish_inline_unlocked(st, irp, STATUS_CANCELLED);
    }
    st.receives.push_back(op);
    drop(st);
    k.wsk.poke(s.id);
    STATUS_PENDING
}

pub(super) unsafe extern "system" fn WskDisconnect(
    sock: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    let k = current();
    if !require_dispatch("WskDisconnect") {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(s) = live_socket(&k, sock, "WskDisconnect") else {
        return STATUS_INVALID_DEVICE_STATE;
    };
    let Some(_call) = s.enter_call("WskDisconnect") else { return STATUS_INVALID_DEVICE_STATE };
    if !k.irps.submit(irp, "WskDisconnect") {
        return STATUS_INVALID_PARAMETER;
    }
    if !buf.is_null() {
        return finish_inline(irp, STATUS_NOT_IMPLEMENTED, 0);
    }
    if flags & !WSK_FLAG_ABORTIVE != 0 {
        return finish_inline(irp, STATUS_NOT_SUPPORTED, 0);
    }
    let mut st = lock(&s.state);
    match st.phase {
        Phase::Dead(status) => return finish_inline_unlocked(st, irp, status),
        Phase::Connecting => return finish_inline_unlocked(st, irp, STATUS_INVALID_DEVICE_STATE),
        Phase::Connected if st.disconnect.is_some() || st.write_shut => {
            return finish_inline_unlocked(st, irp, STATUS_INVALID_DEVICE_STATE);
        }
        Phase::Connected => {}
    }
    if flags & WSK_FLAG_ABORTIVE != 0 {
        let mut done = Vec::new();
        st.kill(wsktls_nt::STATUS_CONNECTION_ABORTED, true, &mut done);
        drop(st);
        deliver_inline(done);
        return finish_inline(irp, STATUS_SUCCESS, 0);
    }
    if s.feed().is_some() {
        // A null transport has no send in flight to wait for: the FIN is "sent" at once.
        st.write_shut = true;
        return finish_inline_unlocked(st, irp, STATUS_SUCCESS);
    }
    // SAFETY: the provider owns the IRP, and still holds the state lock.
    if !unsafe { make_pending(irp) } {
        return finish_inline_unlocked(st, irp, STATUS_CANCELLED);
    }
    st.disconnect = Some(irp as usize);
    drop(st);
    k.wsk.poke(s.id);
    STATUS_PENDING
}

pub(super) unsafe extern "system" fn WskControlSocket(
    sock: *mut WSK_SOCKET,
    request: WSK_CONTROL_SOCKET_TYPE,
    code: u32,
    _level: u32,
    _input_size: SIZE_T,
    _input: PVOID,
    output_size: SIZE_T,
    output: PVOID,
    _output_returned: *mut SIZE_T,
    irp: *mut IRP,
) -> NTSTATUS {
    let k = current();
    if !require_dispatch("WskControlSocket") {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(s) = live_socket(&k, sock, "WskControlSocket") else {
        return STATUS_INVALID_DEVICE_STATE;
    };
    let Some(_call) = s.enter_call("WskControlSocket") else { return STATUS_INVALID_DEVICE_STATE };
    if irp.is_null() {
        report(Rule::BadParameter, "WskControlSocket(WskIoctl) requires an IRP");
        return STATUS_INVALID_PARAMETER;
    }
    if !k.irps.submit(irp, "WskControlSocket") {
        return STATUS_INVALID_PARAMETER;
    }
    if request != WskIoctl || code != SIO_WSK_QUERY_IDEAL_SEND_BACKLOG {
        return finish_inline(irp, STATUS_NOT_SUPPORTED, 0);
    }
    if output.is_null() || output_size < size_of::<SIZE_T>() {
        return finish_inline(irp, STATUS_BUFFER_TOO_SMALL, 0);
    }
    let st = lock(&s.state);
    let backlog = match (st.phase, &st.stream) {
        (Phase::Connected, Some(stream)) => send_buffer_size(stream),
        (Phase::Dead(status), _) => return finish_inline_unlocked(st, irp, status),
        _ => return finish_inline_unlocked(st, irp, STATUS_INVALID_DEVICE_STATE),
    };
    drop(st);
    // SAFETY: the caller's output buffer, at least SIZE_T bytes (checked above).
    unsafe { (output as *mut SIZE_T).write_unaligned(backlog) };
    finish_inline(irp, STATUS_SUCCESS, size_of::<SIZE_T>())
}

pub(super) unsafe extern "system" fn WskCloseSocket(sock: *mut WSK_SOCKET, irp: *mut IRP) -> NTSTATUS {
    let k = current();
    if !require_dispatch("WskCloseSocket") {
        return STATUS_INVALID_PARAMETER;
    }
    let Some(s) = live_socket(&k, sock, "WskCloseSocket") else {
        return STATUS_INVALID_DEVICE_STATE;
    };
    if s.closing.swap(true, Ordering::SeqCst) {
        report(Rule::SocketUsedAfterClose, format!("WskCloseSocket on {sock:?} a second time"));
        return STATUS_INVALID_DEVICE_STATE;
    }
    // Dekker with enter_call: either this sees the call's count, or the call sees closing.
    let in_progress = s.calls.load(Ordering::SeqCst);
    if in_progress > 0 {
        report(
            Rule::CloseWithCallInProgress,
            format!("WskCloseSocket on {sock:?} while {in_progress} other call(s) on it are in progress"),
        );
    }
    if !k.irps.submit(irp, "WskCloseSocket") {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the provider owns the IRP; marking before it can complete.
    unsafe { IoMarkIrpPending(irp) };
    lock(&s.state).close = Some(irp as usize);
    k.wsk.poke(s.id);
    STATUS_PENDING
}
