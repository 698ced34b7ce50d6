//! The consumer interface fed what a kernel caller controls: Connect's parameter values
//! (sizes, versions, reserved fields, addresses, server names, trust anchors, pins, client
//! keys, ALPN lists, suites, record size, budgets, timeouts), WSK_BUFs over real MDL
//! chains of input-chosen shapes with any offset and length, flags, IRPs with too few
//! stack locations, DISPATCH_LEVEL callers, stale and null handles, IOCTL_WSKTLS_GET_PROVIDER
//! requests, in any order.
//!
//! Every pointer is real memory the harness made (a kernel trusts its callers' pointers).
//! Checked on every input: each call returns a status; one that is not STATUS_PENDING has
//! already completed its IRP with that status; every IRP completes exactly once (marked
//! pending when STATUS_PENDING was returned); a handle that is not an open channel never
//! reaches one; Connect writes a handle only on success; a successful send completes with
//! its length; the bytes each channel receives are a prefix of what it sent (an echo
//! peer); Connect's parameters can be wiped and freed once it returns; and at the end of
//! the input no verifier report and nothing left allocated.
#![no_main]
// wsktls.h's names for the information classes.
#![allow(non_upper_case_globals)]

use std::ffi::c_void;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use echo_peer::{Config as PeerConfig, Peer};
use libfuzzer_sys::fuzz_target;
use ntsim::{Device, Driver, Kernel};
use wsktls::nt::*;
use wsktls_fuzz::chain::{Chain, Piece};
use wsktls_fuzz::irp::{Stack, Tracked, wait_until};
use wsktls_fuzz::pki::pki;
use wsktls_fuzz::rig::{Ledger, quiet_kernel};
use wsktls_fuzz::stats;
use wsktls_sample_consumer::{Binding, Consumer};

/// How long any one request may take before the harness calls it a hang.
const HANG: Duration = Duration::from_secs(20);
/// Limits per input, so that one input stays in the milliseconds.
const MAX_OPS: usize = 24;
const MAX_CONNECTS: usize = 4;
const MAX_CHAIN_BYTES: usize = 256 * 1024;
const MAX_PIECES: usize = 8;

// ---------------------------------------------------------------------------------------
// The input. Variant 0 of every choice (what an all-zero input decodes to) is the right
// value, so the fuzzer starts from calls that work and mutates one field at a time.

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    Zero,
    Small(u8),
    Word(u16),
    Any(u32),
}

impl Num {
    fn get(self) -> u32 {
        match self {
            Num::Zero => 0,
            Num::Small(v) => v.into(),
            Num::Word(v) => v.into(),
            Num::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Bytes {
    /// Data NULL, Length 0.
    Empty,
    /// The trust anchor the peer's chain leads to.
    Ca,
    /// The server's own leaf certificate.
    Leaf,
    /// The CA with one bit flipped.
    CaFlipped {
        at: u16,
        bit: u8,
    },
    /// A prefix of the CA.
    CaPrefix(u16),
    Raw(Vec<u8>),
    /// Data NULL with a length: a length without its bytes.
    NullWithLength(u32),
    /// Data set, Length 0.
    EmptyNotNull,
    /// Length shorter than the bytes behind Data.
    Shorter {
        bytes: Vec<u8>,
        less: u16,
    },
}

#[derive(Arbitrary, Debug, Clone)]
struct Blob {
    bytes: Bytes,
    reserved: Num,
}

#[derive(Arbitrary, Debug)]
enum Array {
    /// NULL, count 0.
    None,
    /// NULL with a count.
    NullWithCount(u32),
    /// Real blobs; the count is their number less `less` (never more: the array must be
    /// valid for the count).
    Blobs { blobs: Vec<Blob>, less: u8 },
}

#[derive(Arbitrary, Debug)]
enum Anchors {
    Ca,
    Other(Array),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Localhost,
    Ip4,
    Ip6,
    Other(Blob),
}

#[derive(Arbitrary, Debug)]
enum Pin {
    None,
    Server,
    Wrong([u8; 32]),
}

#[derive(Arbitrary, Debug)]
enum Address {
    /// The echo peer (IPv4).
    Peer,
    /// The echo peer on ::1, when the machine has IPv6 loopback.
    Peer6 {
        flowinfo: u32,
    },
    /// A loopback port held bound but not listening: refused.
    Closed,
    Closed6,
    Null,
    /// Another family (a SOCKADDR_IN6-sized buffer behind it).
    Family(u16),
    Port0,
    Unspecified4,
    Unspecified6,
    /// ::1 with a scope id.
    Scoped {
        scope: u32,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Irp {
    One,
    /// The consumer used the IRP's only stack location itself.
    NoneLeft,
    Locations(u8),
    Null,
}

#[derive(Arbitrary, Debug)]
struct ConnectOp {
    size: Option<Num>,
    version: Option<u16>,
    reserved: Num,
    reserved2: Num,
    address: Address,
    name: Name,
    anchors: Anchors,
    pin: Pin,
    chain: Array,
    key: Blob,
    alpn: Array,
    suites: Num,
    record_size: Num,
    send_budget: Num,
    receive_buffer: Num,
    connect_timeout: Num,
    handshake_timeout: Num,
    null_provider: bool,
    null_out: bool,
    irp: Irp,
    dispatch_level: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Handle {
    /// The newest channel Connect gave.
    Latest,
    /// Any channel this input opened (maybe closed since).
    Index(u8),
    Null,
    /// A handle of this input with another generation in its low bits: a stale handle of
    /// the same slot.
    Generation {
        index: u8,
        tag: u8,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Flags {
    Zero,
    /// WSK_FLAG_NODELAY for a send, WSK_FLAG_WAITALL for a receive (the same value).
    Allowed,
    Any(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct PieceOp {
    len: u16,
    /// Where the MDL starts within its allocation (a nonzero byte offset).
    start: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Length {
    /// Exactly what the chain holds after the offset.
    Whole,
    Less(u16),
    More(u16),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum Buf {
    Chain {
        pieces: Vec<PieceOp>,
        offset: Num,
        length: Length,
        looped: bool,
    },
    /// No WSK_BUF at all.
    Null,
    /// A WSK_BUF with no MDL and this length.
    NoMdl(u32),
}

#[derive(Arbitrary, Debug)]
struct TransferOp {
    handle: Handle,
    buf: Buf,
    flags: Flags,
    irp: Irp,
    dispatch_level: bool,
}

#[derive(Arbitrary, Debug)]
enum QueryBuffer {
    Aligned,
    Null,
    Misaligned(u8),
}

#[derive(Arbitrary, Debug)]
enum Class {
    Session,
    Counters,
    Any(u32),
}

#[derive(Arbitrary, Debug)]
struct QueryOp {
    handle: Handle,
    class: Class,
    buffer: QueryBuffer,
    /// The length passed; the buffer behind it is exactly that long.
    length: Option<u16>,
    null_returned: bool,
    dispatch_level: bool,
}

#[derive(Arbitrary, Debug)]
struct GetProviderOp {
    size: Option<Num>,
    version: Option<u16>,
    reserved: u16,
    /// The output length (the buffer behind it is at least the NPI's size).
    out_less: Option<u8>,
    out_more: u16,
    other_code: Option<u32>,
    no_request: bool,
    user_mode: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect(Box<ConnectOp>),
    Send(TransferOp),
    Receive(TransferOp),
    Disconnect {
        handle: Handle,
        flags: Flags,
        irp: Irp,
        dispatch_level: bool,
    },
    Close {
        handle: Handle,
        irp: Irp,
        dispatch_level: bool,
    },
    Query(QueryOp),
    /// Lets outstanding requests complete, for at most this many milliseconds (max 50).
    Settle(u8),
    GetProvider(GetProviderOp),
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

// ---------------------------------------------------------------------------------------
// The rig: one kernel per process, wsktls loaded and started through PnP, the sample
// consumer bound to it (its Binding holds the provider), echo peers on loopback.

struct Rig {
    kernel: Kernel,
    binding: Arc<Binding>,
    peer: Peer,
    peer6: Option<Peer>,
    closed: SocketAddr,
    closed6: Option<SocketAddr>,
    ledger: Ledger,
    _held: Vec<OwnedFd>,
    _drivers: (Driver, Device, Driver),
}

// SAFETY: only the fuzzing thread uses the rig; the kernel's own threads reach it through
// ntsim, not through this struct.
unsafe impl Sync for Rig {}
// SAFETY: as above.
unsafe impl Send for Rig {}

/// The device's security descriptor, from the INF (what a real install gives it).
fn inf_sddl() -> String {
    let inx = include_str!("../../../inf/wsktls.inx");
    let line = inx.lines().find(|l| l.starts_with("HKR,,Security,,")).expect("the INF's device security");
    line.split('"').nth(1).expect("a quoted SDDL string").to_owned()
}

/// A loopback port bound but not listening, held for the process's life: connects to it
/// are refused, and no other process can take it meanwhile.
fn closed_port(v6: bool) -> Option<(SocketAddr, OwnedFd)> {
    // SAFETY: plain socket calls on a socket we own; the sockaddr is ours and sized.
    unsafe {
        let fd = libc::socket(if v6 { libc::AF_INET6 } else { libc::AF_INET }, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let any: SocketAddr = if v6 { "[::1]:0".parse().unwrap() } else { "127.0.0.1:0".parse().unwrap() };
        let listener_probe = TcpListener::bind(any).ok()?; // to learn a free port quickly
        let addr = listener_probe.local_addr().ok()?;
        drop(listener_probe);
        use std::os::fd::AsRawFd;
        let rc = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                libc::bind(
                    fd.as_raw_fd(),
                    (&sin as *const libc::sockaddr_in).cast(),
                    size_of_val(&sin) as u32,
                )
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as u16,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: 0,
                };
                libc::bind(
                    fd.as_raw_fd(),
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    size_of_val(&sin6) as u32,
                )
            }
        };
        (rc == 0).then_some((addr, fd))
    }
}

impl Rig {
    fn get() -> &'static Rig {
        static RIG: OnceLock<Rig> = OnceLock::new();
        RIG.get_or_init(|| {
            let kernel = quiet_kernel();
            let _in = kernel.enter();
            // Short disconnects, and a channel limit an input can reach.
            let parameters = [("DefaultDisconnectTimeoutMs", 300), ("MaxChannels", 3)];
            let wsktls = kernel
                .load_driver("wsktls", wsktls::driver::driver_entry, &parameters)
                .expect("wsktls DriverEntry");
            let device = kernel.add_root_device(&wsktls, "ROOT\\WSKTLS", &inf_sddl()).expect("wsktls start");
            let sample = kernel
                .load_driver("wsktls-sample", wsktls_sample_consumer::driver_entry, &[])
                .expect("sample DriverEntry");
            // SAFETY: the sample's own driver object.
            let consumer = unsafe { Consumer::of(sample.object()) }.expect("the sample's state");
            let binding = consumer.wait_for_provider(20_000).expect("the sample binds to wsktls");
            let pki = pki();
            let config = PeerConfig::new(&pki.chain_pem, &pki.key_pem);
            let peer = Peer::start("127.0.0.1:0".parse().unwrap(), config.clone()).expect("echo peer");
            let peer6 = Peer::start("[::1]:0".parse().unwrap(), config).ok();
            let mut held = Vec::new();
            let (closed, fd) = closed_port(false).expect("a closed loopback port");
            held.push(fd);
            let closed6 = closed_port(true).map(|(a, fd)| {
                held.push(fd);
                a
            });
            drop(_in);
            Rig {
                kernel,
                binding,
                peer,
                peer6,
                closed,
                closed6,
                ledger: Ledger::new(),
                _held: held,
                _drivers: (wsktls, device, sample),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Running an input.

/// With `WSKTLS_FUZZ_PLANT=1` the harness has a planted bug: a successful Send of 3,000
/// bytes or more fails the input. `.ci/run` runs the target so and requires the bounded
/// run to fail with it: the proof that a finding fails CI.
fn planted() -> bool {
    static PLANTED: OnceLock<bool> = OnceLock::new();
    *PLANTED.get_or_init(|| std::env::var("WSKTLS_FUZZ_PLANT").is_ok_and(|v| v == "1"))
}

/// A channel Connect gave this input, and what went through it.
struct Channel {
    handle: *mut WSKTLS_CHANNEL,
    open: bool,
    /// Bytes of every send the channel took (returned STATUS_PENDING), in order.
    sent: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Send,
    Receive,
    Disconnect,
    Close,
}

/// A request of this input: its IRP, its buffer, and what to check when it completes.
struct Request {
    tracked: Tracked,
    chain: Option<Chain>,
    kind: Kind,
    /// The channel it reached (an open one of ours), by index.
    channel: Option<usize>,
    offset: usize,
    length: usize,
}

struct Run<'a> {
    rig: &'a Rig,
    channels: Vec<Channel>,
    requests: Vec<Request>,
    connects: usize,
    chain_bytes: usize,
    fill: u8,
}

fn status_name(s: NTSTATUS) -> String {
    format!("{s:?}")
}

fn irp_stack(irp: Irp) -> Option<Stack> {
    match irp {
        Irp::One => Some(Stack::Locations(1)),
        Irp::NoneLeft => Some(Stack::NoneLeft),
        Irp::Locations(n) => Some(Stack::Locations((n % 4 + 1) as i8)),
        Irp::Null => None,
    }
}

/// Runs `f` at PASSIVE_LEVEL or, as a consumer may, at DISPATCH_LEVEL.
fn at_irql<R>(dispatch: bool, f: impl FnOnce() -> R) -> R {
    if dispatch { ntsim::with_irql(DISPATCH_LEVEL, "a consumer's call", f) } else { f() }
}

/// Storage that a blob's pointer points into, kept until Connect returns.
#[derive(Default)]
struct Store {
    bytes: Vec<Box<[u8]>>,
    blobs: Vec<Box<[WSKTLS_BLOB]>>,
}

impl Store {
    fn keep(&mut self, b: Vec<u8>) -> *const u8 {
        let b = b.into_boxed_slice();
        let p = b.as_ptr();
        self.bytes.push(b);
        p
    }

    fn blob(&mut self, blob: &Blob) -> WSKTLS_BLOB {
        let pki = pki();
        let real = |v: Vec<u8>, len: usize, store: &mut Store| {
            let len = len.min(v.len()) as u32;
            (store.keep(if v.is_empty() { vec![0] } else { v }), len)
        };
        let (data, length) = match &blob.bytes {
            Bytes::Empty => (std::ptr::null(), 0),
            Bytes::Ca => real(pki.ca_der.clone(), usize::MAX, self),
            Bytes::Leaf => real(pki.server_der.clone(), usize::MAX, self),
            Bytes::CaFlipped { at, bit } => {
                let mut v = pki.ca_der.clone();
                let i = *at as usize % v.len();
                v[i] ^= 1 << (bit % 8);
                real(v, usize::MAX, self)
            }
            Bytes::CaPrefix(n) => {
                let v = pki.ca_der[..(*n as usize).min(pki.ca_der.len())].to_vec();
                let len = v.len();
                real(v, len, self)
            }
            Bytes::Raw(v) => {
                let len = v.len();
                real(v.clone(), len, self)
            }
            Bytes::NullWithLength(n) => (std::ptr::null(), *n),
            Bytes::EmptyNotNull => (self.keep(vec![0x30]), 0),
            Bytes::Shorter { bytes, less } => {
                let len = bytes.len().saturating_sub(*less as usize);
                real(bytes.clone(), len, self)
            }
        };
        WSKTLS_BLOB { Data: data, Length: length, Reserved: blob.reserved.get() }
    }

    fn array(&mut self, a: &Array) -> (*const WSKTLS_BLOB, u32) {
        match a {
            Array::None => (std::ptr::null(), 0),
            Array::NullWithCount(n) => (std::ptr::null(), *n),
            Array::Blobs { blobs, less } => {
                let made: Vec<WSKTLS_BLOB> = blobs.iter().take(40).map(|b| self.blob(b)).collect();
                let count = made.len().saturating_sub(*less as usize) as u32;
                let boxed = made.into_boxed_slice();
                let p = if boxed.is_empty() { std::ptr::null() } else { boxed.as_ptr() };
                self.blobs.push(boxed);
                (p, count)
            }
        }
    }

    /// Overwrites everything with a pattern: Connect must have copied what it needs.
    fn wipe(&mut self) {
        for b in &mut self.bytes {
            b.fill(0xCC);
        }
        for a in &mut self.blobs {
            for blob in a.iter_mut() {
                *blob = WSKTLS_BLOB {
                    Data: 0xCCCC_CCCC_CCCC_CCCC_usize as *const u8,
                    Length: u32::MAX,
                    Reserved: 0,
                };
            }
        }
    }
}

/// A SOCKADDR_IN6-sized, 8-aligned buffer: whatever family it says, the bytes behind it
/// are there.
#[repr(C, align(8))]
struct SockaddrStorage([u8; 32]);

impl<'a> Run<'a> {
    fn dispatch(&self) -> &WSKTLS_DISPATCH {
        self.rig.binding.dispatch()
    }

    fn handle(&self, h: Handle) -> *mut WSKTLS_CHANNEL {
        let pick = |i: u8| self.channels.get(i as usize % self.channels.len().max(1)).map(|c| c.handle);
        match h {
            Handle::Latest => self.channels.last().map(|c| c.handle),
            Handle::Index(i) => pick(i),
            Handle::Null => None,
            Handle::Generation { index, tag } => {
                pick(index).map(|h| ((h as usize & !127) | (tag as usize & 127)) as *mut WSKTLS_CHANNEL)
            }
        }
        .unwrap_or(std::ptr::null_mut())
    }

    /// The open channel of ours this handle names, if any.
    fn open_channel(&self, h: *mut WSKTLS_CHANNEL) -> Option<usize> {
        self.channels.iter().position(|c| c.open && c.handle == h && !h.is_null())
    }

    fn address(&self, a: &Address) -> Option<Box<SockaddrStorage>> {
        let mut s = Box::new(SockaddrStorage([0; 32]));
        let v4 = |s: &mut SockaddrStorage, family: u16, addr: SocketAddr| {
            let SocketAddr::V4(a) = addr else { unreachable!() };
            let sin = SOCKADDR_IN {
                sin_family: family,
                sin_port: a.port().to_be(),
                sin_addr: a.ip().octets(),
                sin_zero: [0; 8],
            };
            // SAFETY: the storage is larger than a SOCKADDR_IN and aligned for it.
            unsafe { (s as *mut SockaddrStorage).cast::<SOCKADDR_IN>().write(sin) };
        };
        let v6 = |s: &mut SockaddrStorage, addr: SocketAddr, flowinfo: u32, scope: u32| {
            let SocketAddr::V6(a) = addr else { unreachable!() };
            let sin6 = SOCKADDR_IN6 {
                sin6_family: AF_INET6,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: flowinfo,
                sin6_addr: a.ip().octets(),
                sin6_scope_id: scope,
            };
            // SAFETY: as above, for a SOCKADDR_IN6.
            unsafe { (s as *mut SockaddrStorage).cast::<SOCKADDR_IN6>().write(sin6) };
        };
        let rig = self.rig;
        let closed6 = rig.closed6.unwrap_or(rig.closed);
        match a {
            Address::Peer => v4(&mut s, AF_INET, rig.peer.addr()),
            Address::Peer6 { flowinfo } => match &rig.peer6 {
                Some(p) => v6(&mut s, p.addr(), *flowinfo, 0),
                None => v4(&mut s, AF_INET, rig.closed),
            },
            Address::Closed => v4(&mut s, AF_INET, rig.closed),
            Address::Closed6 => match rig.closed6 {
                Some(a) => v6(&mut s, a, 0, 0),
                None => v4(&mut s, AF_INET, rig.closed),
            },
            Address::Null => return None,
            Address::Family(f) => {
                // ::1 at the closed port, then only the family changes: read as IPv6 it
                // is still ::1; read as IPv4 its address is the zero flowinfo
                // (unspecified, refused); any other family is refused.
                v6(&mut s, SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), closed6.port()), 0, 0);
                s.0[..2].copy_from_slice(&f.to_ne_bytes());
            }
            Address::Port0 => v4(&mut s, AF_INET, "127.0.0.1:0".parse().unwrap()),
            Address::Unspecified4 => {
                v4(&mut s, AF_INET, SocketAddr::new([0, 0, 0, 0].into(), rig.closed.port()))
            }
            Address::Unspecified6 => {
                v6(&mut s, SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), closed6.port()), 0, 0)
            }
            Address::Scoped { scope } => match rig.closed6 {
                Some(a) => v6(&mut s, a, 0, *scope),
                None => v4(&mut s, AF_INET, rig.closed),
            },
        }
        // Never anywhere but loopback: the families wsktls accepts must name ::1 or
        // 127.0.0.1 here, or be refused by its checks (unspecified, port 0).
        Some(s)
    }

    fn connect(&mut self, op: &ConnectOp) {
        let reaches_peer = matches!(op.address, Address::Peer | Address::Peer6 { .. });
        if reaches_peer {
            if self.connects >= MAX_CONNECTS {
                return;
            }
            self.connects += 1;
        }
        let pki = pki();
        let mut store = Store::default();
        let address = self.address(&op.address);
        let name = match &op.name {
            Name::Localhost => Blob { bytes: Bytes::Raw(b"localhost".to_vec()), reserved: Num::Zero },
            Name::Ip4 => Blob { bytes: Bytes::Raw(b"127.0.0.1".to_vec()), reserved: Num::Zero },
            Name::Ip6 => Blob { bytes: Bytes::Raw(b"::1".to_vec()), reserved: Num::Zero },
            Name::Other(b) => b.clone(),
        };
        let server_name = store.blob(&name);
        let (anchors, anchor_count) = match &op.anchors {
            Anchors::Ca => store.array(&Array::Blobs {
                blobs: vec![Blob { bytes: Bytes::Ca, reserved: Num::Zero }],
                less: 0,
            }),
            Anchors::Other(a) => store.array(a),
        };
        let pin = match &op.pin {
            Pin::None => std::ptr::null(),
            Pin::Server => {
                store.keep(wsktls_crypto::spki_sha256(&pki.server_der).expect("the leaf's SPKI").to_vec())
            }
            Pin::Wrong(p) => store.keep(p.to_vec()),
        };
        let (chain, chain_count) = store.array(&op.chain);
        let key = store.blob(&op.key);
        let (alpn, alpn_count) = store.array(&op.alpn);
        let mut parameters = Box::new(WSKTLS_CONNECT_PARAMETERS {
            Size: op.size.map_or(size_of::<WSKTLS_CONNECT_PARAMETERS>() as u32, Num::get),
            Version: op.version.unwrap_or(WSKTLS_VERSION_1_0),
            Reserved: op.reserved.get() as u16,
            RemoteAddress: address
                .as_ref()
                .map_or(std::ptr::null(), |a| (&**a as *const SockaddrStorage).cast()),
            ServerName: server_name,
            TrustAnchors: anchors,
            PinSha256: pin,
            ClientChain: chain,
            ClientKey: key,
            Alpn: alpn,
            TrustAnchorCount: anchor_count,
            ClientChainCount: chain_count,
            AlpnCount: alpn_count,
            Suites: op.suites.get(),
            RecordSize: op.record_size.get(),
            SendBudget: op.send_budget.get(),
            ReceiveBuffer: op.receive_buffer.get(),
            ConnectTimeoutMs: op.connect_timeout.get(),
            HandshakeTimeoutMs: op.handshake_timeout.get(),
            Reserved2: op.reserved2.get(),
        });
        let connect = self.dispatch().Connect.expect("Connect");
        let provider = if op.null_provider { std::ptr::null_mut() } else { self.rig.binding.provider() };
        // The out-pointer must stay valid until the IRP completes: boxed, kept below.
        let mut out = Box::new(0xDEAD_BEEF_usize as *mut WSKTLS_CHANNEL);
        let out_ptr: *mut *mut WSKTLS_CHANNEL = if op.null_out { std::ptr::null_mut() } else { &mut *out };
        let Some(stack) = irp_stack(op.irp) else {
            // SAFETY: valid parameters; a null IRP is refused without a completion.
            let status = at_irql(op.dispatch_level, || unsafe {
                connect(provider, &*parameters, out_ptr, std::ptr::null_mut())
            });
            assert_eq!(status, STATUS_INVALID_PARAMETER, "Connect with a null IRP");
            return;
        };
        let mut tracked = Tracked::new(stack);
        let irp = tracked.irp;
        // SAFETY: every pointer in the parameters is ours and valid for its length.
        let status = at_irql(op.dispatch_level, || unsafe { connect(provider, &*parameters, out_ptr, irp) });
        tracked.returned("Connect", status);
        // Everything Connect needs was copied before it returned: wipe and free it now.
        store.wipe();
        // SAFETY: plain bytes of our own box.
        unsafe { std::ptr::write_bytes(&mut *parameters as *mut WSKTLS_CONNECT_PARAMETERS, 0xCC, 1) };
        drop(parameters);
        drop(address);
        drop(store);
        assert!(tracked.wait(HANG), "Connect never completed (returned {})", status_name(status));
        tracked.check_completed("Connect");
        let completed = tracked.status();
        stats::note("Connect", completed);
        if op.null_out {
            assert!(!completed.is_success(), "Connect with no out-pointer succeeded");
            return;
        }
        let handle = *out;
        if completed.is_success() {
            assert!(!handle.is_null(), "Connect succeeded without a handle");
            assert!(
                self.open_channel(handle).is_none(),
                "Connect returned the handle of a channel that is still open"
            );
            self.channels.push(Channel { handle, open: true, sent: Vec::new() });
        } else {
            assert!(
                handle.is_null() || handle == 0xDEAD_BEEF_usize as *mut WSKTLS_CHANNEL,
                "Connect failed ({completed:?}) but wrote a handle"
            );
        }
    }

    fn build_chain(&mut self, pieces: &[PieceOp], looped: bool) -> Option<Chain> {
        let mut made = Vec::new();
        for p in pieces.iter().take(MAX_PIECES) {
            let len = (p.len as usize).max(1);
            if self.chain_bytes + len > MAX_CHAIN_BYTES {
                break;
            }
            self.chain_bytes += len;
            made.push(Piece { len, start: p.start as usize });
        }
        if made.is_empty() {
            return None;
        }
        let mut fill = self.fill;
        let chain = Chain::new(&made, looped, || {
            fill = fill.wrapping_mul(31).wrapping_add(7);
            fill
        });
        self.fill = fill;
        Some(chain)
    }

    fn transfer(&mut self, op: &TransferOp, kind: Kind) {
        let h = self.handle(op.handle);
        let target = self.open_channel(h);
        let (chain, mut wsk_buf, offset, length) = match &op.buf {
            Buf::Null => (None, None, 0, 0),
            Buf::NoMdl(n) => (
                None,
                Some(WSK_BUF { Mdl: std::ptr::null_mut(), Offset: 0, Length: *n as usize }),
                0,
                *n as usize,
            ),
            Buf::Chain { pieces, offset, length, looped } => {
                let chain = self.build_chain(pieces, *looped);
                let capacity = chain.as_ref().map_or(0, Chain::capacity);
                let off = offset.get();
                let rest = capacity.saturating_sub(off as usize);
                let mut len = match length {
                    Length::Whole => rest,
                    Length::Less(n) => rest.saturating_sub(*n as usize),
                    Length::More(n) => rest + *n as usize,
                    Length::Any(n) => *n as usize,
                };
                if *looped {
                    // A looped chain describes as many bytes as wsktls walks MDLs: keep
                    // the request to a few laps so that an input stays small.
                    len %= 4 * capacity + 1;
                }
                let buf = match &chain {
                    Some(c) => c.wsk_buf(off, len),
                    None => WSK_BUF { Mdl: std::ptr::null_mut(), Offset: off, Length: len },
                };
                (chain, Some(buf), off as usize, len)
            }
        };
        let flags = match op.flags {
            Flags::Zero => 0,
            Flags::Allowed => WSK_FLAG_NODELAY,
            Flags::Any(f) => f,
        };
        let d = self.dispatch();
        let call = if kind == Kind::Send { d.Send.expect("Send") } else { d.Receive.expect("Receive") };
        let buf_ptr: *mut WSK_BUF = wsk_buf.as_mut().map_or(std::ptr::null_mut(), |b| b as *mut WSK_BUF);
        let what = if kind == Kind::Send { "Send" } else { "Receive" };
        let Some(stack) = irp_stack(op.irp) else {
            // SAFETY: our buffer and chain; a null IRP is refused without a completion.
            let status =
                at_irql(op.dispatch_level, || unsafe { call(h, buf_ptr, flags, std::ptr::null_mut()) });
            assert_eq!(status, STATUS_INVALID_PARAMETER, "{what} with a null IRP");
            return;
        };
        let mut tracked = Tracked::new(stack);
        let irp = tracked.irp;
        // SAFETY: the chain's MDLs describe locked pool that stays until completion; the
        // WSK_BUF is read during the call only.
        let status = at_irql(op.dispatch_level, || unsafe { call(h, buf_ptr, flags, irp) });
        tracked.returned(what, status);
        stats::note(what, status);
        if status == STATUS_PENDING {
            let Some(index) = target else {
                panic!("{what} on a handle that names no open channel ({h:?}) was taken (STATUS_PENDING)");
            };
            if kind == Kind::Send {
                // The bytes the send took (wsktls only reads the chain meanwhile).
                let sent = match &chain {
                    _ if length == 0 => Some(Vec::new()),
                    Some(c) if offset.checked_add(length).is_some_and(|end| end <= c.capacity()) => {
                        Some(c.read(offset, length))
                    }
                    // Following the loop, as the MDLs do, within the laps wsktls walks.
                    Some(c) if c.looped() && offset / c.capacity() < 4096 => Some(c.read(offset, length)),
                    _ => None,
                };
                let bytes = sent.unwrap_or_else(|| {
                    panic!("a Send whose WSK_BUF lies beyond its chain was taken (offset {offset}, length {length})")
                });
                self.channels[index].sent.extend_from_slice(&bytes);
            }
        } else if target.is_none() {
            assert!(!status.is_success(), "{what} on a stale handle succeeded");
        }
        self.requests.push(Request {
            tracked,
            chain,
            kind,
            channel: if status == STATUS_PENDING { target } else { None },
            offset,
            length,
        });
    }

    fn disconnect(&mut self, handle: Handle, flags: Flags, irp: Irp, dispatch_level: bool) {
        let h = self.handle(handle);
        let target = self.open_channel(h);
        let flags = match flags {
            Flags::Zero => 0,
            Flags::Allowed => 1,
            Flags::Any(f) => f,
        };
        let disconnect = self.dispatch().Disconnect.expect("Disconnect");
        let Some(stack) = irp_stack(irp) else {
            // SAFETY: a null IRP is refused without a completion.
            let status = at_irql(dispatch_level, || unsafe { disconnect(h, flags, std::ptr::null_mut()) });
            assert_eq!(status, STATUS_INVALID_PARAMETER, "Disconnect with a null IRP");
            return;
        };
        let mut tracked = Tracked::new(stack);
        let irp = tracked.irp;
        // SAFETY: our IRP.
        let status = at_irql(dispatch_level, || unsafe { disconnect(h, flags, irp) });
        tracked.returned("Disconnect", status);
        if target.is_none() {
            assert!(status != STATUS_PENDING, "Disconnect on a handle that names no open channel was taken");
        }
        self.requests.push(Request {
            tracked,
            chain: None,
            kind: Kind::Disconnect,
            channel: target,
            offset: 0,
            length: 0,
        });
    }

    fn close(&mut self, handle: Handle, irp: Irp, dispatch_level: bool) {
        let h = self.handle(handle);
        let target = self.open_channel(h);
        let close = self.dispatch().Close.expect("Close");
        let Some(stack) = irp_stack(irp) else {
            // SAFETY: a null IRP is refused without a completion, and closes nothing.
            let status = at_irql(dispatch_level, || unsafe { close(h, std::ptr::null_mut()) });
            assert_eq!(status, STATUS_INVALID_PARAMETER, "Close with a null IRP");
            return;
        };
        let mut tracked = Tracked::new(stack);
        let irp = tracked.irp;
        // SAFETY: our IRP.
        let status = at_irql(dispatch_level, || unsafe { close(h, irp) });
        tracked.returned("Close", status);
        match target {
            // Close cannot fail on an open channel: with no stack location for wsktls the
            // IRP is refused, and the channel is closed all the same.
            Some(i) => {
                let expected =
                    if stack == Stack::NoneLeft { STATUS_INVALID_PARAMETER } else { STATUS_PENDING };
                assert_eq!(status, expected, "Close of an open channel");
                self.channels[i].open = false;
            }
            None => assert_eq!(status, STATUS_INVALID_HANDLE, "Close of a handle that names no open channel"),
        }
        self.requests.push(Request {
            tracked,
            chain: None,
            kind: Kind::Close,
            channel: target,
            offset: 0,
            length: 0,
        });
    }

    fn query(&mut self, op: &QueryOp) {
        let h = self.handle(op.handle);
        let target = self.open_channel(h);
        let class = match op.class {
            Class::Session => WskTlsInfoSession,
            Class::Counters => WskTlsInfoCounters,
            Class::Any(c) => c,
        };
        let needed = match class {
            WskTlsInfoSession => Some(size_of::<WSKTLS_SESSION_INFO>()),
            WskTlsInfoCounters => Some(size_of::<WSKTLS_COUNTERS>()),
            _ => None,
        };
        let length = op.length.map_or(needed.unwrap_or(64), usize::from);
        // 8-aligned storage with room for a misaligned start.
        let mut storage = vec![0u64; length.div_ceil(8) + 1];
        let base = storage.as_mut_ptr().cast::<u8>();
        let buffer: *mut c_void = match op.buffer {
            QueryBuffer::Aligned => base.cast(),
            QueryBuffer::Null => std::ptr::null_mut(),
            // SAFETY: within the storage (one spare word).
            QueryBuffer::Misaligned(m) => unsafe { base.add(m as usize % 8) }.cast(),
        };
        let mut returned = 0xFFFF_FFFFu32;
        let returned_ptr: *mut u32 = if op.null_returned { std::ptr::null_mut() } else { &mut returned };
        let query = self.dispatch().Query.expect("Query");
        // SAFETY: the buffer is writable for `length` bytes; `returned` is ours.
        let status =
            at_irql(op.dispatch_level, || unsafe { query(h, class, buffer, length as u32, returned_ptr) });
        assert!(status != STATUS_PENDING, "Query is synchronous");
        match needed {
            None => assert_eq!(status, STATUS_INVALID_INFO_CLASS, "Query of an unknown class"),
            Some(n) => {
                if !op.null_returned {
                    assert_eq!(returned as usize, n, "Query reports the size needed");
                }
                if status.is_success() {
                    assert!(target.is_some(), "Query of a handle that names no open channel succeeded");
                    assert!(length >= n && !buffer.is_null());
                }
            }
        }
    }

    fn get_provider(&mut self, op: &GetProviderOp) {
        let kernel = &self.rig.kernel;
        let link = kernel.interfaces(&GUID_DEVINTERFACE_WSKTLS).pop().expect("the interface is enabled");
        let mut name: Vec<u16> = link.encode_utf16().collect();
        let mut name = UNICODE_STRING {
            Length: (name.len() * 2) as u16,
            MaximumLength: (name.len() * 2) as u16,
            Buffer: name.as_mut_ptr(),
        };
        let request = WSKTLS_PROVIDER_REQUEST {
            Size: op.size.map_or(size_of::<WSKTLS_PROVIDER_REQUEST>() as u32, Num::get),
            Version: op.version.unwrap_or(WSKTLS_VERSION_1_0),
            Reserved: op.reserved,
        };
        let npi_size = size_of::<WSKTLS_PROVIDER_NPI>();
        let out_len = match op.out_less {
            Some(less) => npi_size.saturating_sub(less as usize),
            None => npi_size + (op.out_more as usize % 4096),
        };
        // The output buffer is valid for its length, and at least an NPI.
        let mut out = vec![0u64; out_len.max(npi_size).div_ceil(8)];
        let (mut file, mut device) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: a kernel-mode open of the interface, one IRP to it, and the reference
        // given back; everything outlives the IRP, which is waited for.
        unsafe {
            let opened = IoGetDeviceObjectPointer(&mut name, FILE_READ_DATA, &mut file, &mut device);
            assert_eq!(opened, STATUS_SUCCESS, "a kernel-mode open of the interface");
            let mut tracked = Tracked::new(Stack::Locations((*device).StackSize));
            let irp = tracked.irp;
            (*irp).UserBuffer = out.as_mut_ptr().cast();
            if op.user_mode {
                (*irp).RequestorMode = UserMode;
            }
            let next = IoGetNextIrpStackLocation(irp);
            (*next).MajorFunction = IRP_MJ_INTERNAL_DEVICE_CONTROL;
            (*next).FileObject = file;
            let control = &mut (*next).Parameters.DeviceIoControl;
            control.IoControlCode = op.other_code.unwrap_or(IOCTL_WSKTLS_GET_PROVIDER);
            control.OutputBufferLength = out_len as u32;
            control.InputBufferLength = size_of::<WSKTLS_PROVIDER_REQUEST>() as u32;
            control.Type3InputBuffer =
                if op.no_request { std::ptr::null_mut() } else { &request as *const _ as *mut c_void };
            let status = IoCallDriver(device, irp);
            tracked.returned("IOCTL_WSKTLS_GET_PROVIDER", status);
            assert!(tracked.wait(HANG), "IOCTL_WSKTLS_GET_PROVIDER never completed");
            tracked.check_completed("IOCTL_WSKTLS_GET_PROVIDER");
            if tracked.status().is_success() {
                let npi = &*out.as_ptr().cast::<WSKTLS_PROVIDER_NPI>();
                assert!(out_len >= npi_size, "the NPI was written into a short buffer");
                assert!(!op.user_mode, "a user-mode request got the provider");
                assert_eq!(npi.Provider, self.rig.binding.provider(), "one provider per device");
                assert_eq!(npi.Version, WSKTLS_VERSION_1_0);
            }
            drop(tracked);
            ObDereferenceObject(file.cast());
        }
    }

    fn settle(&self, ms: u8) {
        let ms = u64::from(ms.min(50));
        wait_until(Duration::from_millis(ms), || self.requests.iter().all(|r| r.tracked.count() > 0));
    }

    /// Closes every channel still open, waits for every request, and checks each.
    fn finish(mut self) {
        for i in 0..self.channels.len() {
            if self.channels[i].open {
                let handle = self.channels[i].handle;
                let close = self.dispatch().Close.expect("Close");
                let mut tracked = Tracked::new(Stack::Locations(1));
                // SAFETY: our IRP; an open channel's handle.
                let status = unsafe { close(handle, tracked.irp) };
                tracked.returned("Close", status);
                assert_eq!(status, STATUS_PENDING, "Close of an open channel");
                self.channels[i].open = false;
                self.requests.push(Request {
                    tracked,
                    chain: None,
                    kind: Kind::Close,
                    channel: Some(i),
                    offset: 0,
                    length: 0,
                });
            }
        }
        let all_done = wait_until(HANG, || self.requests.iter().all(|r| r.tracked.count() > 0));
        if !all_done {
            let stuck: Vec<String> = self
                .requests
                .iter()
                .filter(|r| r.tracked.count() == 0)
                .map(|r| format!("{:?} returned {:?}", r.kind, r.tracked.returned))
                .collect();
            panic!("requests never completed after every channel was closed: {stuck:?}");
        }
        // What each channel received, in the order its receives were posted.
        let mut received: Vec<Vec<u8>> = vec![Vec::new(); self.channels.len()];
        for r in &self.requests {
            let what = format!("{:?}", r.kind);
            r.tracked.check_completed(&what);
            let status = r.tracked.status();
            let info = r.tracked.information();
            stats::note(&format!("{what} completed"), status);
            match r.kind {
                Kind::Send if status.is_success() => {
                    assert_eq!(info, r.length, "a successful Send completed with another length");
                    if planted() && info >= 3000 {
                        panic!("planted bug (WSKTLS_FUZZ_PLANT=1): a send of {info} bytes completed");
                    }
                }
                Kind::Receive if status.is_success() => {
                    assert!(info <= r.length, "a Receive of {} bytes completed with {info}", r.length);
                    if let (Some(i), Some(chain)) = (r.channel, &r.chain) {
                        let got = &mut received[i];
                        // A looped chain is the same memory on every lap: a receive longer
                        // than one lap leaves only its last lap's bytes. Those are checked;
                        // the overwritten ones are taken to be what was sent there.
                        let overwritten =
                            if chain.looped() { info.saturating_sub(chain.capacity()) } else { 0 };
                        let sent = &self.channels[i].sent;
                        let at = got.len();
                        let mut assumed =
                            sent.get(at..(at + overwritten).min(sent.len())).unwrap_or(&[]).to_vec();
                        assumed.resize(overwritten, !sent.last().copied().unwrap_or(0));
                        got.extend_from_slice(&assumed);
                        got.extend_from_slice(&chain.read(r.offset + overwritten, info - overwritten));
                    }
                }
                _ => {}
            }
        }
        for (i, c) in self.channels.iter().enumerate() {
            let got = &received[i];
            assert!(
                got.len() <= c.sent.len() && got[..] == c.sent[..got.len()],
                "channel {i} received {} bytes that are not the start of the {} it sent (an echo peer)",
                got.len(),
                c.sent.len()
            );
        }
        drop(self.requests);
    }
}

fuzz_target!(|input: Input| {
    let rig = Rig::get();
    let _in = rig.kernel.enter();
    rig.ledger.begin(&rig.kernel);
    let mut run =
        Run { rig, channels: Vec::new(), requests: Vec::new(), connects: 0, chain_bytes: 0, fill: 1 };
    for op in input.ops.iter().take(MAX_OPS) {
        match op {
            Op::Connect(c) => run.connect(c),
            Op::Send(t) => run.transfer(t, Kind::Send),
            Op::Receive(t) => run.transfer(t, Kind::Receive),
            Op::Disconnect { handle, flags, irp, dispatch_level } => {
                run.disconnect(*handle, *flags, *irp, *dispatch_level)
            }
            Op::Close { handle, irp, dispatch_level } => run.close(*handle, *irp, *dispatch_level),
            Op::Query(q) => run.query(q),
            Op::Settle(ms) => run.settle(*ms),
            Op::GetProvider(g) => run.get_provider(g),
        }
    }
    run.finish();
    rig.ledger.end(&rig.kernel, Duration::from_secs(5));
    stats::input_done();
});
