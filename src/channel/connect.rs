//! Opening a channel (PASSIVE_LEVEL): connect the socket, run the handshake over it with
//! blocking sends and receives bounded by the handshake deadline, then set up the record
//! layer's buffers and start receiving.

use core::sync::atomic::AtomicPtr;

use super::config::{ChannelConfig, MIN_RECEIVE_BUFFER};
use super::keys::Keys;
use super::receive::Rx;
use super::send::{SEND_SLOTS, Tx};
use super::status::status_of;
use super::{Channel, ReceiveDone, SendDone, Shared};
use crate::heap::Reserve;
use crate::log;
use crate::log::Level;
use crate::nt::{
    Event, NTSTATUS, PoolBox, PoolBuffer, STATUS_INVALID_PARAMETER, STATUS_IO_TIMEOUT, SpinLock,
    interrupt_time_100ns, pool_tag, with_expanded_stack,
};
use crate::planted::{Bug, planted};
use crate::platform::PLATFORM;
use crate::tls::record::MAX_RECORD;
use crate::tls::{Established, HandshakeError, Lender, TlsError, Transport, handshake};
use crate::wsk::{BufferLease, Request, Socket, Span, WskClient};

const TAG_CHANNEL: u32 = pool_tag(b"WtCh");
const TAG_RECEIVE: u32 = pool_tag(b"WtRx");
const TAG_HANDSHAKE: u32 = pool_tag(b"WtHs");
const TAG_HEAP_RESERVE: u32 = pool_tag(b"WtHr");

/// The heap reserve behind rustls during connect: the most a handshake was seen to use
/// when every one of its heap allocations fell to the reserve, with room to spare (see
/// `tests/low_resources.rs`, which measures it, and README's Known limits).
pub const HANDSHAKE_HEAP: usize = 128 * 1024;

/// The heap reserve behind a KeyUpdate's derivations, kept by the open channel.
pub const KEY_UPDATE_HEAP: usize = 1024;

/// Stack for connect and its handshake: connect's own frame is about 9.6 KiB (release) and
/// ring's RSA verification about 10.5 KiB, with rustls and webpki between them; leave room.
const CONNECT_STACK: usize = 48 * 1024;

/// Room for our handshake flights: a ClientHello, or a client certificate chain with its
/// CertificateVerify and Finished.
const HANDSHAKE_OUT: usize = 4 * MAX_RECORD;

impl Channel {
    /// Connects to `config.remote`, authenticates the server and opens the channel.
    /// Blocks the calling thread (PASSIVE_LEVEL) for at most the connect timeout plus the
    /// handshake timeout. Statuses: STATUS_INVALID_PARAMETER for a bad configuration;
    /// the socket's (STATUS_CONNECTION_REFUSED, ...); STATUS_IO_TIMEOUT; and the TLS
    /// failures of README's table.
    pub fn connect(client: &WskClient, config: &ChannelConfig) -> Result<Channel, NTSTATUS> {
        // The handshake's depth (rustls, webpki, ring's RSA with a ~10 KiB frame) is more
        // than a 24 KiB kernel stack can spare: run it all on an expanded stack.
        let opened =
            with_expanded_stack(CONNECT_STACK, || Self::connect_here(client, config)).and_then(|r| r);
        match &opened {
            Ok(c) => log!(Level::Info, "channel open to {} ({:?})", config.remote, c.shared.suite),
            Err(status) => log!(Level::Warning, "channel to {} not opened: {:?}", config.remote, status),
        }
        opened
    }

    fn connect_here(client: &WskClient, config: &ChannelConfig) -> Result<Channel, NTSTATUS> {
        if !config.is_valid() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        // rustls cannot take a failed heap allocation: its calls run with a reserve behind
        // them (see crate::heap), taken while a failure is still a plain status.
        let heap = Reserve::new(HANDSHAKE_HEAP, TAG_HEAP_RESERVE)?;
        let (socket, established, receive_buffer) = Self::handshake_with(client, config, &heap)?;
        // The reserve stays with the channel if blocks it served live on in the session;
        // otherwise a small one, enough for KeyUpdates, takes its place.
        let heap = match heap.has_blocks_out() {
            true => heap,
            false => {
                drop(heap);
                Reserve::new(KEY_UPDATE_HEAP, TAG_HEAP_RESERVE)?
            }
        };
        let budget = config.budget(socket.ideal_send_backlog().ok());
        let lease = client.lease_buffers()?;
        Self::open(socket, established, heap, receive_buffer, lease, config, budget)
    }

    /// Connects the socket and runs the handshake over it.
    fn handshake_with(
        client: &WskClient,
        config: &ChannelConfig,
        heap: &Reserve,
    ) -> Result<(Socket, Established, PoolBuffer), NTSTATUS> {
        let setup = heap.lend(|| config.tls.client_setup(&PLATFORM))?.map_err(status_of)?;
        let receive_buffer = PoolBuffer::new(config.receive_buffer.max(MIN_RECEIVE_BUFFER), TAG_RECEIVE)?;
        // Connecting.
        let socket = client.connect(config.remote, config.connect_timeout_ms)?;
        // Handshaking.
        let established = {
            let out = PoolBuffer::new(HANDSHAKE_OUT, TAG_HANDSHAKE)?;
            let deadline = interrupt_time_100ns() + config.handshake_timeout_ms as u64 * 10_000;
            let mut io = HandshakeIo {
                socket: &socket,
                incoming: Region::of(&receive_buffer),
                outgoing: Region::of(&out),
                deadline,
            };
            // SAFETY: the two buffers are ours and only touched through these slices while
            // the handshake runs; `io` reaches them only by address, for the MDLs.
            let (incoming, outgoing) = unsafe { (io.incoming.slice(), io.outgoing.slice()) };
            handshake(setup, &PLATFORM, heap, &mut io, incoming, outgoing, config.key_update_after_records)
        };
        let established = established.map_err(|e| match e {
            HandshakeError::Transport(status) => status,
            HandshakeError::Tls(e) => status_of(e),
        });
        let established = match established {
            Ok(established) => established,
            Err(status) => {
                if planted(Bug::LeakReceiveBufferOnFailedHandshake) {
                    core::mem::forget(receive_buffer);
                }
                return Err(status);
            }
        };
        Ok((socket, established, receive_buffer))
    }

    /// Builds the open channel around a finished handshake and starts receiving.
    fn open(
        socket: Socket,
        e: Established,
        heap: Reserve,
        receive_buffer: PoolBuffer,
        lease: BufferLease,
        config: &ChannelConfig,
        budget: usize,
    ) -> Result<Channel, NTSTATUS> {
        let tx = Tx::new(e.sealer, config.record_size, budget, lease)?;
        let sends = [0, 1, 2, 3].map(|slot| Request::new(SendDone { owner: AtomicPtr::default(), slot }));
        let [s0, s1, s2, s3] = sends;
        let sends: [Request<SendDone>; SEND_SLOTS] = [s0?, s1?, s2?, s3?];
        let receive = Request::new(ReceiveDone { owner: AtomicPtr::default() })?;
        let rx = Rx::new(e.opener, receive_buffer, e.leftover, e.early_plaintext).map_err(status_of)?;
        let shared = Shared {
            socket,
            failure: Default::default(),
            tx: SpinLock::new(tx),
            rx: SpinLock::new(rx),
            keys: SpinLock::new(Keys::new(e.kernel, heap)),
            sends,
            receive,
            drained: Event::new(),
            suite: e.suite,
            alpn: e.alpn,
            peer_certificate_sha256: e.peer_certificate_sha256,
        };
        let mut shared = PoolBox::new(TAG_CHANNEL, shared)?;
        Shared::wire_up(&mut shared);
        let channel = Channel { shared };
        // Records that arrived with the handshake's last flight, then the first receive.
        channel.shared.pump_rx();
        Ok(channel)
    }
}

impl Lender for Reserve {
    fn lend<R>(&self, f: impl FnOnce() -> R) -> Result<R, TlsError> {
        // Only if all of the reserves' slots are taken: a thousand connects at once.
        Reserve::lend(self, f).map_err(|_| TlsError::Internal)
    }
}

/// A buffer the handshake uses: rustls writes and reads it through a slice, WSK through
/// spans of it, found by the slice's address.
struct Region<'a> {
    buffer: &'a PoolBuffer,
}

impl<'a> Region<'a> {
    fn of(buffer: &'a PoolBuffer) -> Region<'a> {
        Region { buffer }
    }

    /// # Safety
    /// Nothing else accesses the buffer's bytes while the slice lives (the buffer itself,
    /// borrowed by `self`, outlives it).
    unsafe fn slice<'s>(&self) -> &'s mut [u8] {
        // SAFETY: per the caller; the bytes belong to the buffer.
        unsafe { core::slice::from_raw_parts_mut(self.buffer.as_ptr(), self.buffer.len()) }
    }

    /// The span for `part`, which must lie inside this buffer.
    fn describe(&self, part: *const [u8]) -> Option<Span> {
        let start = (part as *const u8 as usize).checked_sub(self.buffer.as_ptr() as usize)?;
        Span::within(self.buffer, start, part.len())
    }
}

/// The handshake's transport: blocking WskSend/WskReceive on our own buffers, each bounded
/// by what is left of the handshake deadline.
struct HandshakeIo<'a> {
    socket: &'a Socket,
    incoming: Region<'a>,
    outgoing: Region<'a>,
    /// Interrupt time (100 ns units) when the handshake gives up.
    deadline: u64,
}

impl HandshakeIo<'_> {
    fn remaining_ms(&self) -> Result<u32, NTSTATUS> {
        let now = interrupt_time_100ns();
        if now >= self.deadline {
            return Err(STATUS_IO_TIMEOUT);
        }
        Ok((((self.deadline - now) / 10_000) as u32).max(1))
    }
}

impl Transport for HandshakeIo<'_> {
    type Error = NTSTATUS;

    fn send(&mut self, data: &[u8]) -> Result<(), NTSTATUS> {
        let buf = self.outgoing.describe(data).ok_or(STATUS_INVALID_PARAMETER)?;
        let timeout = self.remaining_ms()?;
        // SAFETY: `buf` lies within our locked nonpaged buffer, which outlives the call.
        let sent = unsafe { self.socket.transfer_and_wait(true, buf, timeout)? };
        if sent == data.len() { Ok(()) } else { Err(crate::nt::STATUS_CONNECTION_ABORTED) }
    }

    fn receive(&mut self, into: &mut [u8]) -> Result<usize, NTSTATUS> {
        let buf = self.incoming.describe(into).ok_or(STATUS_INVALID_PARAMETER)?;
        let timeout = self.remaining_ms()?;
        // SAFETY: as for send.
        unsafe { self.socket.transfer_and_wait(false, buf, timeout) }
    }
}
