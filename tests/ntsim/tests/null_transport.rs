//! The null transport, for benchmarks of the driver alone: a socket that moved bytes over
//! real loopback TCP (its "handshake") is switched, and from then on WskSend completes
//! inline with every byte and none reaches the peer, WskReceive gets exactly what the
//! test's source gives, a receive the source cannot serve pends (cancellable, closable)
//! until `null_transport_ready`, and the verifier stays quiet.
//!
//! The WSK client below is the smallest one that works: one registration, IRPs with a
//! completion routine that records the outcome, MDL chains of pool buffers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ntsim::{Kernel, NullSource, Rule};
use wsktls_nt::{
    DEVICE_OBJECT, DISPATCH_LEVEL, FALSE, IPPROTO_TCP, IRP, IoAllocateIrp, IoCancelIrp, IoFreeIrp,
    IoReuseIrp, IoSetCompletionRoutine, KIRQL, KeGetCurrentIrql, NTSTATUS, PVOID, PoolBuffer, SOCK_STREAM,
    STATUS_CANCELLED, STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_MORE_PROCESSING_REQUIRED,
    STATUS_NOT_SUPPORTED, STATUS_PENDING, STATUS_SUCCESS, STATUS_UNSUCCESSFUL, WSK_BUF, WSK_CLIENT_DISPATCH,
    WSK_CLIENT_NPI, WSK_FLAG_ABORTIVE, WSK_FLAG_DRAIN, WSK_FLAG_NODELAY, WSK_FLAG_WAITALL, WSK_INFINITE_WAIT,
    WSK_PROVIDER_CONNECTION_DISPATCH, WSK_PROVIDER_NPI, WSK_REGISTRATION, WSK_SOCKET, WSK_VERSION_1_0,
    WinAddr, WskCaptureProviderNPI, WskDeregister, WskRegister, WskReleaseProviderNPI, pool_tag,
};

const TAG: u32 = pool_tag(b"Null");

/// The heap, with a count of this thread's allocations: a null send must make none.
struct CountingHeap;

thread_local! {
    static HEAP_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation() {
    let _ = HEAP_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn heap_allocations() -> u64 {
    HEAP_ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: CountingHeap = CountingHeap;
/// Longer than any completion may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long a request must stay pending to count as not completing.
const QUIET: Duration = Duration::from_millis(100);
/// What the client and the peer say over TCP before the switch.
const HELLO: &[u8] = b"client hello";
const WORLD: &[u8] = b"server hello";

// ---- The test client ---------------------------------------------------------------------

static CLIENT_DISPATCH: WSK_CLIENT_DISPATCH =
    WSK_CLIENT_DISPATCH { Version: WSK_VERSION_1_0, Reserved: 0, WskClientEvent: None };

/// What a completion routine saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outcome {
    status: NTSTATUS,
    information: usize,
    irql: KIRQL,
}

#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Outcome>>,
    /// Threads in `wait`: only they need a wake-up (a futex call would weigh more in the
    /// measured loop than the send it measures).
    waiters: AtomicUsize,
    completed: Condvar,
}

/// One IRP of the client and the slot its completion routine fills.
struct Call {
    irp: *mut IRP,
    slot: Box<Slot>,
}

unsafe extern "system" fn record(_device: *mut DEVICE_OBJECT, irp: *mut IRP, context: PVOID) -> NTSTATUS {
    // SAFETY: `context` is the slot of the Call that owns `irp`; it outlives the request.
    let slot = unsafe { &*(context as *const Slot) };
    // SAFETY: the completed IRP is ours again.
    let (status, information) = unsafe { ((*irp).IoStatus.status(), (*irp).IoStatus.Information) };
    // SAFETY: plain query.
    let irql = unsafe { KeGetCurrentIrql() };
    *slot.outcome.lock().unwrap() = Some(Outcome { status, information, irql });
    // A waiter counted itself before it locked `outcome`: if it is not counted yet, it
    // will find the outcome there.
    if slot.waiters.load(Ordering::SeqCst) > 0 {
        slot.completed.notify_all();
    }
    STATUS_MORE_PROCESSING_REQUIRED
}

impl Call {
    fn new() -> Call {
        // SAFETY: plain allocation, checked.
        let irp = unsafe { IoAllocateIrp(1, FALSE) };
        assert!(!irp.is_null(), "IoAllocateIrp");
        Call { irp, slot: Box::default() }
    }

    /// Readies the IRP for its next request.
    fn arm(&self) -> *mut IRP {
        *self.slot.outcome.lock().unwrap() = None;
        let context = &*self.slot as *const Slot as PVOID;
        // SAFETY: our idle IRP; the slot lives as long as the Call.
        unsafe {
            IoReuseIrp(self.irp, STATUS_UNSUCCESSFUL);
            IoSetCompletionRoutine(self.irp, Some(record), context, true, true, true);
        }
        self.irp
    }

    /// The outcome, if the request has completed.
    fn outcome(&self) -> Option<Outcome> {
        *self.slot.outcome.lock().unwrap()
    }

    fn wait(&self, timeout: Duration) -> Option<Outcome> {
        self.slot.waiters.fetch_add(1, Ordering::SeqCst);
        let guard = self.slot.outcome.lock().unwrap();
        let (guard, _) = self.slot.completed.wait_timeout_while(guard, timeout, |o| o.is_none()).unwrap();
        let outcome = *guard;
        drop(guard);
        self.slot.waiters.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // SAFETY: dropped only once its request completed.
        unsafe { IoFreeIrp(self.irp) };
    }
}

/// A registered WSK client with the provider NPI captured.
struct Client {
    registration: Box<WSK_REGISTRATION>,
    npi: WSK_PROVIDER_NPI,
}

impl Client {
    fn register() -> Client {
        let mut client_npi =
            WSK_CLIENT_NPI { ClientContext: std::ptr::null_mut(), Dispatch: &CLIENT_DISPATCH };
        // SAFETY: a zeroed block is what WskRegister initialises.
        let mut registration: Box<WSK_REGISTRATION> = Box::new(unsafe { std::mem::zeroed() });
        let mut npi = WSK_PROVIDER_NPI { Client: std::ptr::null_mut(), Dispatch: std::ptr::null() };
        // SAFETY: our NPI and registration block, at PASSIVE_LEVEL outside DriverEntry.
        unsafe {
            assert_eq!(WskRegister(&mut client_npi, &mut *registration), STATUS_SUCCESS);
            assert_eq!(
                WskCaptureProviderNPI(&mut *registration, WSK_INFINITE_WAIT, &mut npi),
                STATUS_SUCCESS
            );
        }
        Client { registration, npi }
    }

    fn connect(&self, remote: SocketAddr) -> Socket {
        let mut remote = WinAddr::new(remote);
        let mut local = remote.any_like();
        let call = Call::new();
        let irp = call.arm();
        // SAFETY: the captured provider's table; addresses and IRP live across the call.
        unsafe {
            let connect = (*self.npi.Dispatch).WskSocketConnect.expect("WskSocketConnect");
            connect(
                self.npi.Client,
                SOCK_STREAM,
                IPPROTO_TCP,
                local.as_mut_ptr(),
                remote.as_mut_ptr(),
                0,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                irp,
            );
        }
        let done = call.wait(WAIT).expect("the connect completes");
        assert_eq!(done.status, STATUS_SUCCESS, "connect");
        Socket { wsk: done.information as *mut WSK_SOCKET, closed: Cell::new(false) }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: our registration; every socket was closed.
        unsafe {
            WskReleaseProviderNPI(&mut *self.registration);
            WskDeregister(&mut *self.registration);
        }
    }
}

/// A connected socket, until it is closed.
struct Socket {
    wsk: *mut WSK_SOCKET,
    closed: Cell<bool>,
}

impl Socket {
    fn dispatch(&self) -> &WSK_PROVIDER_CONNECTION_DISPATCH {
        // SAFETY: a live socket's dispatch table is the provider's static one.
        unsafe { &*((*self.wsk).Dispatch as *const WSK_PROVIDER_CONNECTION_DISPATCH) }
    }

    fn send(&self, call: &Call, mut buf: WSK_BUF, flags: u32) -> NTSTATUS {
        let send = self.dispatch().WskSend.expect("WskSend");
        // SAFETY: a live socket; the buffers outlive the request (callers wait for it).
        unsafe { send(self.wsk, &mut buf, flags, call.arm()) }
    }

    fn receive(&self, call: &Call, mut buf: WSK_BUF, flags: u32) -> NTSTATUS {
        let receive = self.dispatch().WskReceive.expect("WskReceive");
        // SAFETY: as for send.
        unsafe { receive(self.wsk, &mut buf, flags, call.arm()) }
    }

    fn disconnect(&self, call: &Call, flags: u32) -> NTSTATUS {
        let disconnect = self.dispatch().WskDisconnect.expect("WskDisconnect");
        // SAFETY: a live socket, no buffer.
        unsafe { disconnect(self.wsk, std::ptr::null_mut(), flags, call.arm()) }
    }

    /// WskCloseSocket, waited for.
    fn close(&self) {
        self.closed.set(true);
        let call = Call::new();
        let close = self.dispatch().Basic.WskCloseSocket.expect("WskCloseSocket");
        // SAFETY: a live socket with no other call in progress.
        unsafe { close(self.wsk, call.arm()) };
        assert_eq!(call.wait(WAIT).map(|o| o.status), Some(STATUS_SUCCESS), "close");
    }

    /// Sends `bytes` over TCP and waits for the completion (the "handshake").
    fn send_bytes(&self, bytes: &[u8]) {
        let mut b = PoolBuffer::new(bytes.len(), TAG).expect("pool");
        b.as_mut_slice().copy_from_slice(bytes);
        let call = Call::new();
        self.send(&call, whole(&b), 0);
        let done = call.wait(WAIT).expect("the send completes");
        assert_eq!((done.status, done.information), (STATUS_SUCCESS, bytes.len()));
    }

    /// Receives exactly `n` bytes over TCP (WSK_FLAG_WAITALL).
    fn receive_bytes(&self, n: usize) -> Vec<u8> {
        let b = PoolBuffer::new(n, TAG).expect("pool");
        let call = Call::new();
        self.receive(&call, whole(&b), WSK_FLAG_WAITALL);
        let done = call.wait(WAIT).expect("the receive completes");
        assert_eq!((done.status, done.information), (STATUS_SUCCESS, n));
        b.as_slice().to_vec()
    }
}

fn whole(b: &PoolBuffer) -> WSK_BUF {
    WSK_BUF { Mdl: b.mdl(), Offset: 0, Length: b.len() }
}

/// Pool buffers of these sizes chained through their MDLs.
struct Chain(Vec<PoolBuffer>);

impl Chain {
    fn new(sizes: &[usize]) -> Chain {
        let buffers: Vec<PoolBuffer> =
            sizes.iter().map(|&n| PoolBuffer::new(n, TAG).expect("pool")).collect();
        let refs: Vec<&PoolBuffer> = buffers.iter().collect();
        // SAFETY: fresh buffers, in no request.
        unsafe { PoolBuffer::chain(&refs) };
        Chain(buffers)
    }

    fn capacity(&self) -> usize {
        self.0.iter().map(PoolBuffer::len).sum()
    }

    /// `Offset..Offset+Length` of the chain, for WSK.
    fn buf(&self, offset: usize, length: usize) -> WSK_BUF {
        WSK_BUF { Mdl: self.0[0].mdl(), Offset: offset as u32, Length: length }
    }

    fn fill(&mut self, byte: u8) {
        for b in &mut self.0 {
            b.as_mut_slice().fill(byte);
        }
    }

    /// The chain's bytes `offset..offset+n`, read back.
    fn bytes(&self, offset: usize, n: usize) -> Vec<u8> {
        let all: Vec<u8> = self.0.iter().flat_map(|b| b.as_slice().iter().copied()).collect();
        all[offset..offset + n].to_vec()
    }
}

// ---- The peer and the sources ------------------------------------------------------------

/// A loopback TCP peer: it answers the client's hello, then does `after` (send junk,
/// close...) and counts every byte that reaches it after the hello, until the client's
/// socket goes away.
struct Peer {
    addr: SocketAddr,
    late_bytes: Arc<AtomicUsize>,
    greeted: mpsc::Receiver<()>,
}

impl Peer {
    fn start(after: impl FnOnce(&mut TcpStream) + Send + 'static) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let addr = listener.local_addr().expect("listener address");
        let late_bytes = Arc::new(AtomicUsize::new(0));
        let late = Arc::clone(&late_bytes);
        let (greet, greeted) = mpsc::channel();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(WAIT)).expect("read timeout");
            let mut hello = vec![0; HELLO.len()];
            stream.read_exact(&mut hello).expect("the client's hello");
            assert_eq!(hello, HELLO);
            stream.write_all(WORLD).expect("answer");
            let _ = greet.send(());
            after(&mut stream);
            let mut sink = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut sink) {
                late.fetch_add(n, Ordering::SeqCst);
            }
        });
        Peer { addr, late_bytes, greeted }
    }

    fn quiet() -> Peer {
        Peer::start(|_| {})
    }

    /// Bytes that reached the peer after the hello.
    fn late_bytes(&self) -> usize {
        self.late_bytes.load(Ordering::SeqCst)
    }
}

/// The byte at stream position `i` of a source's pattern.
fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8 ^ (i / 251) as u8
}

/// `total` bytes of the pattern, at most `chunk` per call, then nothing.
fn pattern_source(total: usize, chunk: usize) -> NullSource {
    let mut at = 0;
    Box::new(move |into: &mut [u8]| {
        let n = into.len().min(chunk).min(total - at);
        for (i, b) in into[..n].iter_mut().enumerate() {
            *b = pattern_byte(at + i);
        }
        at += n;
        n
    })
}

fn pattern(from: usize, n: usize) -> Vec<u8> {
    (from..from + n).map(pattern_byte).collect()
}

/// Fails at the first byte where `got` and `want` differ, rather than printing both.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: byte {i} is {:#04x}, expected {:#04x}", got[i], want[i]);
    }
}

/// A source that gives what the test pushes into the queue, and nothing while it is empty.
fn queue_source() -> (NullSource, Arc<Mutex<VecDeque<u8>>>) {
    let queue = Arc::new(Mutex::new(VecDeque::new()));
    let q = Arc::clone(&queue);
    let source = Box::new(move |into: &mut [u8]| {
        let mut q = q.lock().unwrap();
        let n = into.len().min(q.len());
        for (b, v) in into.iter_mut().zip(q.drain(..n)) {
            *b = v;
        }
        n
    });
    (source, queue)
}

/// Boots a kernel, connects to `peer`, runs the "handshake" over TCP, and hands the
/// connected socket to `f`; deregisters after. The kernel then unloads and fails the test
/// on any verifier report.
fn with_handshaken(peer: &Peer, f: impl FnOnce(&Kernel, &Socket)) {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let client = Client::register();
        let socket = client.connect(peer.addr);
        socket.send_bytes(HELLO);
        assert_eq!(socket.receive_bytes(WORLD.len()), WORLD);
        peer.greeted.recv_timeout(WAIT).expect("the peer answered");
        f(&kernel, &socket);
        if !socket.closed.get() {
            socket.close();
        }
        drop(client);
    }
    assert_eq!(kernel.stats().irps, 0, "every IRP freed");
    kernel.finish();
}

/// Sends `buf` and asserts it completed inline, before returning, with every byte.
fn assert_sent_inline(socket: &Socket, call: &Call, buf: WSK_BUF, flags: u32) {
    let status = socket.send(call, buf, flags);
    let done = call.outcome().expect("the send completed before WskSend returned");
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!((done.status, done.information), (STATUS_SUCCESS, buf.Length), "completion of {buf:?}");
}

// ---- The tests ---------------------------------------------------------------------------

#[test]
fn sends_complete_inline_with_full_length_and_no_byte_reaches_the_peer_after_the_switch() {
    let peer = Peer::quiet();
    with_handshaken(&peer, |kernel, socket| {
        assert_eq!(kernel.set_null_transport(peer.addr, None), 1);
        let before = kernel.stats();
        let mut chain = Chain::new(&[100, 4096, 7, 20_000]);
        let call = Call::new();
        let mut sent = 0;
        let sends = [(0, chain.capacity()), (3, 1), (5, chain.capacity() - 5), (99, 4200), (0, 0)];
        for (i, (offset, length)) in sends.into_iter().enumerate() {
            // Rewritten at once, as a driver refills a buffer whose send completed: no
            // send is in flight, so the verifier has nothing to say.
            chain.fill(i as u8);
            assert_sent_inline(socket, &call, chain.buf(offset, length), WSK_FLAG_NODELAY);
            sent += length;
        }
        let stats = kernel.stats();
        assert_eq!(stats.null_bytes_sent - before.null_bytes_sent, sent as u64);
        assert_eq!(stats.sends_inline - before.sends_inline, 5);
        assert_eq!(stats.sends_pended, before.sends_pended, "no send pended");
        thread::sleep(QUIET);
        assert_eq!(peer.late_bytes(), 0, "nothing reached the peer after the hello");
        // A graceful disconnect completes at once; a send after it is refused, as on TCP.
        assert_eq!(socket.disconnect(&call, 0), STATUS_SUCCESS);
        assert_eq!(call.outcome().map(|o| o.status), Some(STATUS_SUCCESS));
        assert_eq!(socket.send(&call, chain.buf(0, 1), 0), STATUS_INVALID_DEVICE_STATE);
    });
    assert_eq!(peer.late_bytes(), 0, "nothing reached the peer, not even at close");
}

#[test]
fn null_sends_get_the_checks_every_send_gets() {
    let peer = Peer::quiet();
    with_handshaken(&peer, |kernel, socket| {
        assert_eq!(kernel.set_null_transport(peer.addr, None), 1);
        let chain = Chain::new(&[64, 64]);
        let call = Call::new();
        assert_eq!(socket.send(&call, chain.buf(0, 1), WSK_FLAG_DRAIN), STATUS_NOT_SUPPORTED);
        assert_eq!(call.outcome().map(|o| o.status), Some(STATUS_NOT_SUPPORTED));
        assert_eq!(socket.send(&call, chain.buf(1, 128), 0), STATUS_INVALID_PARAMETER);
        assert_eq!(call.outcome().map(|o| o.status), Some(STATUS_INVALID_PARAMETER));
        let reports = kernel.take_reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].rule, Rule::WskBufBeyondChain);
        assert_eq!(kernel.stats().null_bytes_sent, 0, "refused sends count nothing");
    });
}

#[test]
fn receives_get_exactly_the_source_bytes_in_order_across_receives_and_mdl_chains() {
    const TOTAL: usize = 100_000;
    // The peer's bytes after the switch must never show up in a receive.
    let peer = Peer::start(|s| s.write_all(&[0xEE; 4096]).expect("junk"));
    with_handshaken(&peer, |kernel, socket| {
        thread::sleep(QUIET); // the junk is in the socket's receive buffer
        assert_eq!(kernel.set_null_transport(peer.addr, Some(pattern_source(TOTAL, 1000))), 1);
        let chain = Chain::new(&[333, 1, 4096, 2500]);
        let call = Call::new();
        let mut at = 0;
        let mut receives = 0;
        while at < TOTAL {
            let (offset, flags) = if receives % 2 == 0 { (0, 0) } else { (17, WSK_FLAG_WAITALL) };
            let length = (chain.capacity() - offset).min(TOTAL - at);
            let heap = heap_allocations();
            let status = socket.receive(&call, chain.buf(offset, length), flags);
            assert_eq!(heap_allocations(), heap, "an inline null receive allocates nothing");
            let done = call.outcome().expect("the receive completed inline");
            assert_eq!((status, done.status), (STATUS_SUCCESS, STATUS_SUCCESS));
            // The source gives all it is asked for: each receive comes back full.
            assert_eq!(done.information, length);
            assert_same_bytes(
                &chain.bytes(offset, length),
                &pattern(at, length),
                &format!("receive {receives} at {at}"),
            );
            at += length;
            receives += 1;
        }
        assert!(receives > 10, "{receives} receives");
        assert_eq!(kernel.stats().null_bytes_received, TOTAL as u64);
    });
}

#[test]
fn a_source_with_nothing_now_leaves_the_receive_pending_until_ready() {
    let peer = Peer::quiet();
    with_handshaken(&peer, |kernel, socket| {
        let (source, queue) = queue_source();
        assert_eq!(kernel.set_null_transport(peer.addr, Some(source)), 1);
        let chain = Chain::new(&[10, 10]);
        let call = Call::new();
        assert_eq!(socket.receive(&call, chain.buf(2, 18), 0), STATUS_PENDING);
        kernel.null_transport_ready(peer.addr); // still nothing to give
        assert_eq!(call.wait(QUIET), None, "no bytes, no completion");
        queue.lock().unwrap().extend(b"abcdefghijkl");
        assert_eq!(call.wait(QUIET), None, "bytes alone do not complete it: ready does");
        kernel.null_transport_ready(peer.addr);
        let done = call.wait(WAIT).expect("ready completes the receive");
        assert_eq!(done, Outcome { status: STATUS_SUCCESS, information: 12, irql: DISPATCH_LEVEL });
        assert_eq!(chain.bytes(2, 12), b"abcdefghijkl");
        // With WSK_FLAG_WAITALL, a receive the source fills in part waits for the rest.
        queue.lock().unwrap().extend(b"0123");
        assert_eq!(socket.receive(&call, chain.buf(0, 10), WSK_FLAG_WAITALL), STATUS_PENDING);
        queue.lock().unwrap().extend(b"456789");
        kernel.null_transport_ready(peer.addr);
        let done = call.wait(WAIT).expect("ready completes the rest");
        assert_eq!((done.status, done.information), (STATUS_SUCCESS, 10));
        assert_eq!(chain.bytes(0, 10), b"0123456789");
    });
}

#[test]
fn receives_pending_on_tcp_at_the_switch_are_served_from_the_source() {
    let peer = Peer::quiet();
    with_handshaken(&peer, |kernel, socket| {
        let chain = Chain::new(&[64]);
        let call = Call::new();
        assert_eq!(socket.receive(&call, chain.buf(0, 64), 0), STATUS_PENDING, "the peer sends nothing");
        assert_eq!(kernel.set_null_transport(peer.addr, Some(pattern_source(40, 40))), 1);
        let done = call.wait(WAIT).expect("the switch serves the pending receive");
        assert_eq!(done, Outcome { status: STATUS_SUCCESS, information: 40, irql: DISPATCH_LEVEL });
        assert_same_bytes(&chain.bytes(0, 40), &pattern(0, 40), "the receive pending at the switch");
    });
}

#[test]
fn close_cancels_a_pending_null_receive_and_so_does_io_cancel_irp() {
    let peer = Peer::quiet();
    with_handshaken(&peer, |kernel, socket| {
        assert_eq!(kernel.set_null_transport(peer.addr, None), 1);
        let chain = Chain::new(&[128]);
        let call = Call::new();
        assert_eq!(socket.receive(&call, chain.buf(0, 64), 0), STATUS_PENDING);
        // SAFETY: our own IRP, pending in the provider.
        unsafe { IoCancelIrp(call.irp) };
        assert_eq!(call.wait(WAIT).map(|o| o.status), Some(STATUS_CANCELLED));
        assert_eq!(socket.receive(&call, chain.buf(64, 64), 0), STATUS_PENDING);
        kernel.null_transport_ready(peer.addr);
        assert_eq!(call.wait(QUIET), None, "no source: the receive stays pending");
        socket.close();
        assert_eq!(call.wait(WAIT).map(|o| o.status), Some(STATUS_CANCELLED));
        assert_eq!(kernel.stats().sockets, 0);
    });
}

#[test]
fn a_peer_closing_the_tcp_stream_does_not_touch_a_null_socket() {
    let (closed, peer_closed) = mpsc::channel();
    let peer = Peer::start(move |s| {
        let _ = s.shutdown(Shutdown::Both);
        let _ = closed.send(());
    });
    with_handshaken(&peer, |kernel, socket| {
        assert_eq!(kernel.set_null_transport(peer.addr, Some(pattern_source(1000, 1000))), 1);
        peer_closed.recv_timeout(WAIT).expect("the peer closed");
        thread::sleep(QUIET);
        let chain = Chain::new(&[500]);
        let call = Call::new();
        assert_sent_inline(socket, &call, chain.buf(0, 500), 0);
        assert_eq!(socket.receive(&call, chain.buf(0, 500), 0), STATUS_SUCCESS);
        assert_eq!(call.outcome().map(|o| (o.status, o.information)), Some((STATUS_SUCCESS, 500)));
        assert_same_bytes(&chain.bytes(0, 500), &pattern(0, 500), "the receive after the peer closed");
    });
}

/// Receives that post one another from their completion routines, as the driver's
/// receive pipeline posts its next WskReceive: each one completes inline, inside the
/// routine of the one before.
struct Relay {
    socket: *mut WSK_SOCKET,
    receive: unsafe extern "system" fn(*mut WSK_SOCKET, *mut WSK_BUF, u32, *mut IRP) -> NTSTATUS,
    calls: Vec<Call>,
    chain: Chain,
    next: AtomicUsize,
    got: Mutex<Vec<u8>>,
}

impl Relay {
    fn post(&self) {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        let Some(call) = self.calls.get(i) else { return };
        let mut buf = self.chain.buf(0, self.chain.capacity());
        // SAFETY: a fresh IRP of ours; the relay outlives every request it posts (the test
        // waits for the last), and the socket is live.
        unsafe {
            IoSetCompletionRoutine(call.irp, Some(relayed), self as *const Relay as PVOID, true, true, true);
            (self.receive)(self.socket, &mut buf, 0, call.irp);
        }
    }
}

unsafe extern "system" fn relayed(_device: *mut DEVICE_OBJECT, irp: *mut IRP, context: PVOID) -> NTSTATUS {
    // SAFETY: the Relay that posted the request.
    let relay = unsafe { &*(context as *const Relay) };
    // SAFETY: the completed IRP is ours again.
    let n = unsafe { (*irp).IoStatus.Information };
    relay.got.lock().unwrap().extend(relay.chain.bytes(0, n));
    relay.post();
    STATUS_MORE_PROCESSING_REQUIRED
}

#[test]
fn a_completion_routine_may_post_the_next_null_receive() {
    const RECEIVES: usize = 8;
    let peer = Peer::quiet();
    with_handshaken(&peer, |kernel, socket| {
        let total = RECEIVES * 100;
        assert_eq!(kernel.set_null_transport(peer.addr, Some(pattern_source(total, 37))), 1);
        let relay = Relay {
            socket: socket.wsk,
            receive: socket.dispatch().WskReceive.expect("WskReceive"),
            calls: (0..RECEIVES).map(|_| Call::new()).collect(),
            chain: Chain::new(&[60, 40]),
            next: AtomicUsize::new(0),
            got: Mutex::new(Vec::new()),
        };
        relay.post();
        // Every receive completed before the first WskReceive returned.
        assert_eq!(relay.next.load(Ordering::SeqCst), RECEIVES + 1);
        assert_same_bytes(&relay.got.lock().unwrap(), &pattern(0, total), "the relayed receives");
    });
}

#[test]
fn an_abortive_disconnect_fails_a_pending_null_receive_once() {
    let peer = Peer::quiet();
    with_handshaken(&peer, |kernel, socket| {
        assert_eq!(kernel.set_null_transport(peer.addr, None), 1);
        let chain = Chain::new(&[32]);
        let receive = Call::new();
        assert_eq!(socket.receive(&receive, chain.buf(0, 32), 0), STATUS_PENDING);
        let disconnect = Call::new();
        assert_eq!(socket.disconnect(&disconnect, WSK_FLAG_ABORTIVE), STATUS_SUCCESS);
        let done = receive.outcome().expect("the abort completes the receive");
        assert_eq!(done.status, wsktls_nt::STATUS_CONNECTION_ABORTED);
    });
}

/// The per-call cost of a null WskSend of one 16 KiB record, with nothing allocated:
/// `cargo test -p ntsim --release --test null_transport -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
fn null_send_cost() {
    measure_null_sends(2_000_000);
}

/// The same loop, short, so that a plain `cargo test` keeps it working.
#[test]
fn null_sends_in_a_loop_stay_inline_and_allocate_nothing() {
    measure_null_sends(20_000);
}

fn measure_null_sends(n: u64) {
    let peer = Peer::quiet();
    with_handshaken(&peer, |kernel, socket| {
        assert_eq!(kernel.set_null_transport(peer.addr, None), 1);
        let chains = [Chain::new(&[16 * 1024 + 22]), Chain::new(&[16 * 1024 + 22; 8])];
        let call = Call::new();
        for (chain, what) in chains.iter().zip(["one 16 KiB record", "eight records chained"]) {
            let buf = chain.buf(0, chain.capacity());
            let before = kernel.stats();
            let heap = heap_allocations();
            let started = Instant::now();
            for _ in 0..n {
                socket.send(&call, buf, 0);
            }
            let took = started.elapsed();
            assert_eq!(heap_allocations(), heap, "a null send allocates nothing from the heap");
            let after = kernel.stats();
            assert_eq!(call.outcome().map(|o| (o.status, o.information)), Some((STATUS_SUCCESS, buf.Length)));
            assert_eq!(after.sends_inline - before.sends_inline, n);
            assert_eq!(after.null_bytes_sent - before.null_bytes_sent, n * buf.Length as u64);
            assert_eq!(after.allocations, before.allocations, "no pool, IRP or MDL allocated");
            println!(
                "null WskSend, {what}: {:.0} ns per call ({n} calls)",
                took.as_nanos() as f64 / n as f64
            );
        }
    });
}
