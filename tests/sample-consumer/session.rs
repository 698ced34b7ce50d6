//! One secure channel, as the sample uses it: each call builds its request, hands wsktls
//! an IRP of its own with a completion routine, and waits for the completion.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::net::SocketAddr;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};

use wsktls_nt::{
    Event, FALSE, IRP, IoAllocateIrp, IoFreeIrp, IoReuseIrp, NTSTATUS, PVOID, PoolBox, PoolBuffer,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_STATE, STATUS_NOT_SUPPORTED, STATUS_UNSUCCESSFUL,
    WSK_BUF, WSKTLS_BLOB, WSKTLS_CHANNEL, WSKTLS_CONNECT_PARAMETERS, WSKTLS_COUNTERS, WSKTLS_SESSION_INFO,
    WSKTLS_VERSION_1_0, WinAddr, WskTlsInfoCounters, WskTlsInfoSession, pool_tag,
};

use crate::binding::Binding;

const TAG: u32 = pool_tag(b"WcSm");
/// Bytes one Send or Receive of the sample moves at most.
pub const CHUNK: usize = 64 * 1024;

/// What to connect to, and how. Zero in a size or timeout takes wsktls's default.
#[derive(Clone, Copy)]
pub struct ConnectParams<'a> {
    pub remote: SocketAddr,
    pub server_name: &'a str,
    pub trust_anchors: &'a [&'a [u8]],
    pub pin_sha256: Option<&'a [u8; 32]>,
    pub client_chain: &'a [&'a [u8]],
    pub client_key: &'a [u8],
    pub alpn: &'a [&'a [u8]],
    /// WSKTLS_SUITE_* bits; zero for all.
    pub suites: u32,
    pub record_size: u32,
    pub send_budget: u32,
    pub receive_buffer: u32,
    pub connect_timeout_ms: u32,
    pub handshake_timeout_ms: u32,
}

impl<'a> ConnectParams<'a> {
    pub fn new(remote: SocketAddr, server_name: &'a str, trust_anchors: &'a [&'a [u8]]) -> ConnectParams<'a> {
        ConnectParams {
            remote,
            server_name,
            trust_anchors,
            pin_sha256: None,
            client_chain: &[],
            client_key: &[],
            alpn: &[],
            suites: 0,
            record_size: 0,
            send_budget: 0,
            receive_buffer: 0,
            connect_timeout_ms: 0,
            handshake_timeout_ms: 0,
        }
    }
}

fn blob(bytes: &[u8]) -> WSKTLS_BLOB {
    WSKTLS_BLOB { Data: bytes.as_ptr(), Length: bytes.len() as u32, Reserved: 0 }
}

fn blobs(list: &[&[u8]]) -> Vec<WSKTLS_BLOB> {
    list.iter().map(|b| blob(b)).collect()
}

/// One kind of call: its IRP, the event its completion sets, its buffer, and a flag that
/// keeps two threads from using them at once.
struct Call {
    irp: *mut IRP,
    done: Event,
    buffer: UnsafeCell<Option<PoolBuffer>>,
    busy: AtomicBool,
}

impl Call {
    fn new(buffer: usize) -> Result<Call, NTSTATUS> {
        // SAFETY: one stack location: wsktls's (our completion routine sits in it).
        let irp = unsafe { IoAllocateIrp(1, FALSE) };
        if irp.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let buffer = match buffer {
            0 => None,
            n => match PoolBuffer::new(n, TAG) {
                Ok(b) => Some(b),
                Err(status) => {
                    // SAFETY: ours, never issued.
                    unsafe { IoFreeIrp(irp) };
                    return Err(status);
                }
            },
        };
        Ok(Call { irp, done: Event::new(), buffer: UnsafeCell::new(buffer), busy: AtomicBool::new(false) })
    }

    /// Runs one call: `issue` gets the armed IRP and returns what the dispatch routine
    /// returned; we wait for the completion (whatever was returned, wsktls completes the
    /// IRP) and return its status and byte count. PASSIVE_LEVEL.
    fn run(&self, issue: impl FnOnce(*mut IRP, Option<&mut PoolBuffer>) -> NTSTATUS) -> (NTSTATUS, usize) {
        if self.busy.swap(true, Ordering::Acquire) {
            return (STATUS_INVALID_DEVICE_STATE, 0);
        }
        self.done.clear();
        // SAFETY: our idle IRP and event; the event lives in pool with the session.
        unsafe {
            IoReuseIrp(self.irp, STATUS_UNSUCCESSFUL);
            self.done.receive_completion_of(self.irp);
        }
        // SAFETY: `busy` gives this thread the buffer until it is cleared.
        let buffer = unsafe { (*self.buffer.get()).as_mut() };
        let _ = issue(self.irp, buffer);
        let _ = self.done.wait(u32::MAX);
        // SAFETY: completed: ours again.
        let outcome = unsafe { ((*self.irp).IoStatus.status(), (*self.irp).IoStatus.Information) };
        self.busy.store(false, Ordering::Release);
        outcome
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // SAFETY: ours and idle (every run waited for its completion).
        unsafe { IoFreeIrp(self.irp) };
    }
}

/// The three calls a session makes, in pool (their events must not move).
struct Io {
    send: Call,
    receive: Call,
    control: Call,
}

/// A channel opened through wsktls's dispatch table. Closing it (or dropping it) closes
/// the channel; PASSIVE_LEVEL throughout.
pub struct Session {
    binding: Arc<Binding>,
    channel: *mut WSKTLS_CHANNEL,
    io: PoolBox<Io>,
    closed: bool,
}

// SAFETY: the handle may be used from any thread; each Call keeps its own exclusivity.
unsafe impl Send for Session {}
// SAFETY: as above.
unsafe impl Sync for Session {}

fn outcome(status: NTSTATUS, bytes: usize) -> Result<usize, NTSTATUS> {
    if status.is_success() { Ok(bytes) } else { Err(status) }
}

impl Session {
    /// Connect: connects, handshakes, and returns the open channel.
    pub fn connect(binding: Arc<Binding>, p: &ConnectParams<'_>) -> Result<Session, NTSTATUS> {
        let io = PoolBox::new(
            TAG,
            Io { send: Call::new(CHUNK)?, receive: Call::new(CHUNK)?, control: Call::new(0)? },
        )?;
        for call in [&io.send, &io.receive, &io.control] {
            // SAFETY: the events sit in pool, where they stay with the session.
            unsafe { call.done.initialize() };
        }
        let address = WinAddr::new(p.remote);
        let (anchors, chain, alpn) = (blobs(p.trust_anchors), blobs(p.client_chain), blobs(p.alpn));
        let parameters = WSKTLS_CONNECT_PARAMETERS {
            Size: size_of::<WSKTLS_CONNECT_PARAMETERS>() as u32,
            Version: WSKTLS_VERSION_1_0,
            Reserved: 0,
            RemoteAddress: address.as_ptr(),
            ServerName: blob(p.server_name.as_bytes()),
            TrustAnchors: anchors.as_ptr(),
            PinSha256: p.pin_sha256.map_or(core::ptr::null(), |pin| pin.as_ptr()),
            ClientChain: chain.as_ptr(),
            ClientKey: blob(p.client_key),
            Alpn: alpn.as_ptr(),
            TrustAnchorCount: anchors.len() as u32,
            ClientChainCount: chain.len() as u32,
            AlpnCount: alpn.len() as u32,
            Suites: p.suites,
            RecordSize: p.record_size,
            SendBudget: p.send_budget,
            ReceiveBuffer: p.receive_buffer,
            ConnectTimeoutMs: p.connect_timeout_ms,
            HandshakeTimeoutMs: p.handshake_timeout_ms,
            Reserved2: 0,
        };
        let mut channel: *mut WSKTLS_CHANNEL = null_mut();
        let connect = binding.dispatch().Connect.ok_or(STATUS_NOT_SUPPORTED)?;
        let provider = binding.provider();
        // SAFETY: the parameters and `channel` outlive the call, which we wait for.
        let (status, _) =
            io.control.run(|irp, _| unsafe { connect(provider, &parameters, &mut channel, irp) });
        if !status.is_success() {
            return Err(status);
        }
        Ok(Session { binding, channel, io, closed: false })
    }

    /// The channel handle, for calls the sample does not wrap.
    pub fn handle(&self) -> *mut WSKTLS_CHANNEL {
        self.channel
    }

    pub fn binding(&self) -> &Arc<Binding> {
        &self.binding
    }

    /// Sends all of `data` (in CHUNK-sized Sends); returns the bytes sent.
    pub fn send(&self, data: &[u8]) -> Result<usize, NTSTATUS> {
        let send = self.binding.dispatch().Send.ok_or(STATUS_NOT_SUPPORTED)?;
        let mut sent = 0;
        for piece in data.chunks(CHUNK) {
            let (status, bytes) = self.io.send.run(|irp, buffer| {
                let Some(buffer) = buffer else { return STATUS_INSUFFICIENT_RESOURCES };
                buffer.as_mut_slice()[..piece.len()].copy_from_slice(piece);
                let mut buf = WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: piece.len() };
                // SAFETY: the buffer's MDL describes locked pool that stays put until the
                // completion, which `run` waits for.
                unsafe { send(self.channel, &mut buf, 0, irp) }
            });
            sent += outcome(status, bytes)?;
        }
        Ok(sent)
    }

    /// Receives at least one byte into `data` (at most CHUNK); 0 is the peer's close_notify.
    pub fn receive(&self, data: &mut [u8]) -> Result<usize, NTSTATUS> {
        let receive = self.binding.dispatch().Receive.ok_or(STATUS_NOT_SUPPORTED)?;
        let want = data.len().min(CHUNK);
        let (status, bytes) = self.io.receive.run(|irp, buffer| {
            let Some(buffer) = buffer else { return STATUS_INSUFFICIENT_RESOURCES };
            let mut buf = WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: want };
            // SAFETY: as for `send`.
            unsafe { receive(self.channel, &mut buf, 0, irp) }
        });
        let n = outcome(status, bytes)?.min(want);
        // SAFETY: `run` has returned: the buffer is ours again.
        if let Some(buffer) = unsafe { (*self.io.receive.buffer.get()).as_ref() } {
            data[..n].copy_from_slice(&buffer.as_slice()[..n]);
        }
        Ok(n)
    }

    /// Disconnect: our close_notify after everything sent, then a graceful TCP close.
    pub fn disconnect(&self) -> Result<(), NTSTATUS> {
        let disconnect = self.binding.dispatch().Disconnect.ok_or(STATUS_NOT_SUPPORTED)?;
        // SAFETY: the caller's IRP is ours.
        let (status, _) = self.io.control.run(|irp, _| unsafe { disconnect(self.channel, 0, irp) });
        outcome(status, 0).map(drop)
    }

    pub fn session_info(&self) -> Result<WSKTLS_SESSION_INFO, NTSTATUS> {
        // SAFETY: a plain-data structure; all zeroes is a valid one.
        let mut info: WSKTLS_SESSION_INFO = unsafe { core::mem::zeroed() };
        self.query(WskTlsInfoSession, (&mut info as *mut WSKTLS_SESSION_INFO).cast(), size_of_val(&info))?;
        Ok(info)
    }

    pub fn counters(&self) -> Result<WSKTLS_COUNTERS, NTSTATUS> {
        let mut counters = WSKTLS_COUNTERS::default();
        self.query(
            WskTlsInfoCounters,
            (&mut counters as *mut WSKTLS_COUNTERS).cast(),
            size_of_val(&counters),
        )?;
        Ok(counters)
    }

    fn query(&self, class: u32, buffer: PVOID, length: usize) -> Result<(), NTSTATUS> {
        let query = self.binding.dispatch().Query.ok_or(STATUS_NOT_SUPPORTED)?;
        let mut returned = 0u32;
        // SAFETY: a buffer of `length` bytes for the call.
        let status = unsafe { query(self.channel, class, buffer, length as u32, &mut returned) };
        outcome(status, 0).map(drop)
    }

    /// Close: what is pending completes with STATUS_CANCELLED, then the channel is gone.
    pub fn close(mut self) -> NTSTATUS {
        self.close_now()
    }

    fn close_now(&mut self) -> NTSTATUS {
        if core::mem::replace(&mut self.closed, true) {
            return wsktls_nt::STATUS_SUCCESS;
        }
        let Some(close) = self.binding.dispatch().Close else { return STATUS_NOT_SUPPORTED };
        // SAFETY: the caller's IRP is ours.
        let (status, _) = self.io.control.run(|irp, _| unsafe { close(self.channel, irp) });
        status
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.close_now();
    }
}
