//! Test harness: loopback peers, and a transfer engine that drives the WSK client the way
//! the secure channel will (MDL chains of pool buffers, several requests in flight,
//! completions handled one at a time) and checks every byte and every completion.
#![allow(dead_code)]

pub mod chaos;
pub mod consumer;
pub mod hostile;
pub mod peers;
pub mod planted;
pub mod proxy;
pub mod requests;
pub mod rig;
pub mod soak;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use ntsim::Kernel;
use wsktls::nt::{NTSTATUS, PoolBuffer, STATUS_SUCCESS, WSK_BUF, WSK_INFINITE_WAIT, pool_tag};
use wsktls::wsk::{Completion, Request, Socket, WskClient};

pub const TAG_TEST: u32 = pool_tag(b"Test");

/// How long any single completion may take before a test calls the transfer stalled.
pub const STALL: Duration = Duration::from_secs(30);

pub const CONNECT_TIMEOUT_MS: u32 = 5_000;

/// A registered client with the provider NPI captured (outside DriverEntry).
pub fn client() -> WskClient {
    let mut client = WskClient::register().expect("WskRegister");
    client.capture_provider(WSK_INFINITE_WAIT).expect("WskCaptureProviderNPI");
    client
}

/// Runs `f` on `kernel` with a socket connected to `server`, then deregisters. Whatever
/// `f` allocated is released when it returns, before the caller unloads the kernel.
pub fn with_connection<R>(kernel: &Kernel, server: &EchoServer, f: impl FnOnce(Socket) -> R) -> R {
    let _in = kernel.enter();
    let client = client();
    let socket = client.connect(server.addr, CONNECT_TIMEOUT_MS).expect("connect");
    let r = f(socket);
    drop(client);
    r
}

/// A TCP echo server on a loopback address: it writes back every byte it reads and shuts
/// its side when the client does. With `reset_after`, it resets the connection (RST, via
/// SO_LINGER 0) once it has echoed that many bytes.
pub struct EchoServer {
    pub addr: SocketAddr,
}

impl EchoServer {
    pub fn start(ip: &str) -> EchoServer {
        Self::spawn(ip, Peer::Echo)
    }

    /// Echoes, but flips the byte at stream position `at`: proves the harness's check.
    pub fn corrupting_at(at: u64) -> EchoServer {
        Self::spawn("127.0.0.1", Peer::CorruptAt(at))
    }

    /// A peer that accepts and then never reads: sends to it stall once TCP's buffers fill.
    pub fn silent() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        let addr = listener.local_addr().expect("listener address");
        thread::spawn(move || {
            let held: Vec<TcpStream> = listener.incoming().map_while(Result::ok).collect();
            drop(held);
        });
        EchoServer { addr }
    }

    /// A peer that reads nothing until released, from a socket with a `receive_buffer`
    /// of a few KiB (SO_RCVBUF, set on the listener so the accepted socket advertises a
    /// small window from the start): a sender with a small send buffer is held back after
    /// a few KiB. Released, it reads to the client's FIN and hands over every byte.
    pub fn held_reader(receive_buffer: usize) -> (EchoServer, HeldReader) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        ntsim::set_receive_buffer(&listener, receive_buffer).expect("SO_RCVBUF on the listener");
        let addr = listener.local_addr().expect("listener address");
        let (release_tx, release_rx) = mpsc::channel();
        let (bytes_tx, bytes_rx) = mpsc::channel();
        thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else { return };
            if release_rx.recv().is_err() {
                return;
            }
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got);
            let _ = bytes_tx.send(got);
        });
        (EchoServer { addr }, HeldReader { release: release_tx, bytes: bytes_rx })
    }

    pub fn resetting_after(bytes: u64) -> EchoServer {
        Self::spawn("127.0.0.1", Peer::ResetAfter(bytes))
    }

    fn spawn(ip: &str, peer: Peer) -> EchoServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind a loopback listener");
        let addr = listener.local_addr().expect("listener address");
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                thread::spawn(move || echo(conn, peer));
            }
        });
        EchoServer { addr }
    }
}

/// The reading side of [`EchoServer::held_reader`].
pub struct HeldReader {
    release: Sender<()>,
    bytes: Receiver<Vec<u8>>,
}

impl HeldReader {
    /// Lets the peer start reading.
    pub fn release(&self) {
        let _ = self.release.send(());
    }

    /// Every byte the peer read, once the client has shut down its side.
    pub fn bytes(&self, wait: Duration) -> Vec<u8> {
        self.bytes.recv_timeout(wait).expect("the held reader reads to the client's FIN")
    }
}

/// How an echo peer misbehaves, if at all.
#[derive(Clone, Copy)]
enum Peer {
    Echo,
    ResetAfter(u64),
    CorruptAt(u64),
}

fn echo(mut conn: TcpStream, peer: Peer) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut echoed = 0u64;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Peer::CorruptAt(at) = peer {
            if (echoed..echoed + n as u64).contains(&at) {
                buf[(at - echoed) as usize] ^= 0x01;
            }
        }
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
        echoed += n as u64;
        if matches!(peer, Peer::ResetAfter(limit) if echoed >= limit) {
            reset(&conn);
            return;
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Closes with a reset instead of a FIN.
pub fn reset(conn: &TcpStream) {
    ntsim::set_abortive(conn);
    let _ = conn.shutdown(Shutdown::Both);
}

/// A loopback port nobody listens on.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// The byte at position `pos` of the test stream: varies with every position and has no
/// short period, so a dropped, repeated or reordered run is caught.
pub fn pattern(pos: u64) -> u8 {
    let x = pos.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 57) as u8 ^ pos as u8 ^ (pos >> 8) as u8
}

/// One completion, as the handler saw it.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    pub id: usize,
    pub status: NTSTATUS,
    pub bytes: usize,
}

/// The completion handler of every test request: report to the test thread.
pub struct Notify {
    id: usize,
    tx: Sender<Done>,
}

impl Completion for Notify {
    fn completed(&self, status: NTSTATUS, bytes: usize) {
        let _ = self.tx.send(Done { id: self.id, status, bytes });
    }
}

/// A request whose handler reports to `tx` with `id`.
pub fn request(id: usize, tx: &Sender<Done>) -> Request<Notify> {
    Request::new(Notify { id, tx: tx.clone() }).expect("request")
}

/// A chain of pool buffers as a consumer hands it over: data from `offset` in the first
/// buffer, `tail` bytes unused at the end (WSK_BUF's Offset, and a Length shorter than the
/// chain).
pub struct Chain {
    pub buffers: Vec<PoolBuffer>,
    pub offset: u32,
    pub tail: usize,
}

impl Chain {
    pub fn new(sizes: &[usize], offset: u32, tail: usize) -> Chain {
        let buffers = sizes.iter().map(|&n| PoolBuffer::new(n, TAG_TEST).expect("pool buffer")).collect();
        Chain { buffers, offset, tail }
    }

    pub fn capacity(&self) -> usize {
        self.buffers.iter().map(|b| b.len()).sum::<usize>() - self.offset as usize - self.tail
    }

    /// The WSK_BUF for `length` bytes of the chain. The chain must be idle.
    pub fn wsk_buf(&self, length: usize) -> WSK_BUF {
        let refs: Vec<&PoolBuffer> = self.buffers.iter().collect();
        // SAFETY: idle, per the caller: no request carries these MDLs.
        let mdl = unsafe { PoolBuffer::chain(&refs) };
        WSK_BUF { Mdl: mdl, Offset: self.offset, Length: length }
    }

    /// Calls `f(pos, byte)` for each of `length` data bytes, numbered from `stream_pos`.
    pub fn for_each(&mut self, stream_pos: u64, length: usize, mut f: impl FnMut(u64, &mut u8)) {
        let mut skip = self.offset as usize;
        let mut left = length;
        let mut pos = stream_pos;
        for b in &mut self.buffers {
            let bytes = b.as_mut_slice();
            let start = skip.min(bytes.len());
            skip -= start;
            for byte in bytes[start..].iter_mut().take(left) {
                f(pos, byte);
                pos += 1;
                left -= 1;
            }
            if left == 0 {
                break;
            }
        }
    }
}

/// A request with its own chain of pool buffers, and where its bytes sit in the stream.
pub struct Slot {
    pub request: Request<Notify>,
    pub chain: Chain,
    pub busy: bool,
    /// A receive that completed before one posted earlier: booked once those are.
    pub arrived: Option<Done>,
    pub stream_pos: u64,
    pub length: usize,
}

impl Slot {
    pub fn new(id: usize, tx: &Sender<Done>, sizes: &[usize], offset: u32, tail: usize) -> Slot {
        assert!(sizes.len() >= 4, "the transfer tests send chains of at least four MDLs");
        let chain = Chain::new(sizes, offset, tail);
        Slot { request: request(id, tx), chain, busy: false, arrived: None, stream_pos: 0, length: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.chain.capacity()
    }

    /// The WSK_BUF for `length` bytes of this slot's chain.
    pub fn wsk_buf(&self, length: usize) -> WSK_BUF {
        self.chain.wsk_buf(length)
    }

    fn for_each(&mut self, length: usize, f: impl FnMut(u64, &mut u8)) {
        self.chain.for_each(self.stream_pos, length, f)
    }

    pub fn fill(&mut self, stream_pos: u64, length: usize) {
        self.stream_pos = stream_pos;
        self.length = length;
        self.for_each(length, |pos, b| *b = pattern(pos));
    }

    /// Checks `length` received bytes against the stream; the first mismatch, if any.
    pub fn check(&mut self, length: usize) -> Result<(), String> {
        let mut bad = None;
        self.for_each(length, |pos, b| {
            if bad.is_none() && *b != pattern(pos) {
                bad = Some(pos);
            }
        });
        match bad {
            None => Ok(()),
            Some(pos) => Err(format!("byte {pos} of the stream is wrong")),
        }
    }
}

/// Drives sends and receives on one socket and keeps the books: every request completes
/// exactly once, receives complete in the order posted, and the bytes come back intact.
pub struct Transfer {
    pub sends: Vec<Slot>,
    pub receives: Vec<Slot>,
    rx: Receiver<Done>,
    posted: VecDeque<usize>,
    pub sent: u64,
    pub acknowledged: u64,
    pub received: u64,
    pub total: u64,
    pub eof: bool,
    pub failures: Vec<NTSTATUS>,
    pub completions: u64,
}

/// Receive slots' ids start here, so a completion names its direction.
const RECEIVE_ID: usize = 1000;

/// Chain shapes: uneven sizes, so records straddle MDLs in every way.
const SEND_CHAINS: [&[usize]; 4] = [
    &[4096 + 13, 16384, 777, 12288, 9000],
    &[1500, 1500, 1500, 1500, 30000],
    &[65536, 1, 3, 8192],
    &[20000, 20000, 7, 4093, 2],
];
const RECEIVE_CHAINS: [&[usize]; 3] =
    [&[16384, 16384, 16384, 16384], &[4096, 7, 30000, 1234], &[512, 512, 512, 60000]];

impl Transfer {
    pub fn new(total: u64) -> Transfer {
        let (tx, rx) = mpsc::channel();
        let sends = SEND_CHAINS
            .iter()
            .enumerate()
            .map(|(i, c)| Slot::new(i, &tx, c, (i * 5) as u32, i * 111))
            .collect();
        let receives = RECEIVE_CHAINS
            .iter()
            .enumerate()
            .map(|(i, c)| Slot::new(RECEIVE_ID + i, &tx, c, (i * 3 + 1) as u32, i * 17))
            .collect();
        Transfer {
            sends,
            receives,
            rx,
            posted: VecDeque::new(),
            sent: 0,
            acknowledged: 0,
            received: 0,
            total,
            eof: false,
            failures: Vec::new(),
            completions: 0,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.sends.iter().chain(&self.receives).filter(|s| s.busy).count()
    }

    /// Issues every idle send (while bytes remain) and every idle receive.
    pub fn issue(&mut self, socket: &Socket) -> Result<(), NTSTATUS> {
        for slot in &mut self.sends {
            if slot.busy || self.sent >= self.total {
                continue;
            }
            let length = (slot.capacity() as u64).min(self.total - self.sent) as usize;
            slot.fill(self.sent, length);
            let buf = slot.wsk_buf(length);
            // SAFETY: the chain is the slot's own pool buffers, untouched until completion.
            unsafe { slot.request.send(socket, buf, 0)? };
            slot.busy = true;
            self.sent += length as u64;
        }
        if self.eof {
            return Ok(());
        }
        for (i, slot) in self.receives.iter_mut().enumerate() {
            if slot.busy || slot.arrived.is_some() {
                continue;
            }
            let length = slot.capacity();
            let buf = slot.wsk_buf(length);
            // SAFETY: as above; the provider writes into the chain until completion.
            unsafe { slot.request.receive(socket, buf, 0)? };
            slot.busy = true;
            self.posted.push_back(i);
        }
        Ok(())
    }

    /// Waits for one completion and books it.
    pub fn complete_one(&mut self, wait: Duration) -> Result<Done, String> {
        let done = match self.rx.recv_timeout(wait) {
            Ok(d) => d,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "no completion for {wait:?}: {} in flight, sent {} received {} of {}",
                    self.in_flight(),
                    self.sent,
                    self.received,
                    self.total
                ));
            }
            Err(RecvTimeoutError::Disconnected) => return Err("completion channel closed".into()),
        };
        self.book(done)?;
        Ok(done)
    }

    fn book(&mut self, done: Done) -> Result<(), String> {
        self.completions += 1;
        if done.status != STATUS_SUCCESS {
            self.failures.push(done.status);
        }
        if done.id >= RECEIVE_ID {
            let i = done.id - RECEIVE_ID;
            if !self.receives[i].busy {
                return Err(format!("receive {i} completed while not in flight (completed twice?)"));
            }
            self.receives[i].busy = false;
            self.receives[i].arrived = Some(done);
            // Neither Windows nor ntsim orders completion routines across processors, but
            // the bytes go to receives in the order they were posted: book them so.
            while let Some(&front) = self.posted.front() {
                let Some(done) = self.receives[front].arrived.take() else { break };
                self.posted.pop_front();
                self.book_receive(front, done)?;
            }
        } else {
            let slot = &mut self.sends[done.id];
            if !slot.busy {
                return Err(format!("send {} completed while not in flight (completed twice?)", done.id));
            }
            slot.busy = false;
            if done.status == STATUS_SUCCESS {
                if done.bytes != slot.length {
                    return Err(format!("send of {} bytes completed with {}", slot.length, done.bytes));
                }
                self.acknowledged += done.bytes as u64;
            }
        }
        Ok(())
    }

    fn book_receive(&mut self, i: usize, done: Done) -> Result<(), String> {
        if done.status != STATUS_SUCCESS {
            return Ok(());
        }
        if done.bytes == 0 {
            self.eof = true;
            return Ok(());
        }
        let slot = &mut self.receives[i];
        slot.stream_pos = self.received;
        slot.check(done.bytes)?;
        self.received += done.bytes as u64;
        Ok(())
    }

    /// Moves `total` bytes to the echo peer and back, checking each byte.
    pub fn echo_all(&mut self, socket: &Socket) -> Result<(), String> {
        while self.received < self.total {
            self.issue(socket).map_err(|s| format!("issue failed: {s:?}"))?;
            let done = self.complete_one(STALL)?;
            if done.status != STATUS_SUCCESS {
                return Err(format!("completion failed: {done:?}"));
            }
            if self.eof {
                return Err(format!("peer closed after {} of {} bytes", self.received, self.total));
            }
        }
        if self.acknowledged != self.total && self.in_flight() > self.receives.len() {
            return Err("sends outstanding after every byte came back".into());
        }
        Ok(())
    }

    /// After a failure: waits until nothing is in flight (every request completed once).
    pub fn drain(&mut self, wait: Duration) -> Result<(), String> {
        while self.in_flight() > 0 {
            self.complete_one(wait)?;
        }
        Ok(())
    }

    /// No completion may arrive once nothing is in flight.
    pub fn assert_quiet(&self, wait: Duration) {
        if let Ok(extra) = self.rx.recv_timeout(wait) {
            panic!("a completion arrived with nothing in flight: {extra:?}");
        }
    }
}
