//! A consumer driver, as the channel's tests need one: IRPs it allocates and arms with its
//! own completion routine, buffers as MDL chains of pool buffers, and a stream engine that
//! keeps several sends and receives in flight on a channel and checks every byte, every
//! completion, and their order.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::{Chain, Done};
use std::net::SocketAddr;
use wsktls::channel::{Channel, ChannelConfig};
use wsktls::interface;
use wsktls::nt::{
    DEVICE_OBJECT, FALSE, IRP, IoAllocateIrp, IoFreeIrp, IoReuseIrp, IoSetCompletionRoutine, NTSTATUS,
    STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING, STATUS_SUCCESS, STATUS_UNSUCCESSFUL, WSK_BUF,
};
use wsktls::tls::TlsParams;

/// A channel to `server_name` at `addr` that trusts the test CA, with defaults otherwise.
pub fn channel_config(addr: SocketAddr, server_name: &str) -> ChannelConfig {
    let tls = TlsParams {
        server_name: server_name.into(),
        trust_anchors: vec![std::fs::read(&super::peers::test_pki().ca.der).expect("CA DER")],
        ..TlsParams::default()
    };
    ChannelConfig::new(addr, tls)
}

/// A consumer-owned IRP whose completion reports `Done { id, .. }` to the test.
pub struct ConsumerIrp {
    irp: *mut IRP,
    context: Box<(usize, Sender<Done>)>,
}

// SAFETY: the IRP is plain kernel memory; the test hands it to one call at a time.
unsafe impl Send for ConsumerIrp {}

impl ConsumerIrp {
    pub fn new(id: usize, tx: &Sender<Done>) -> ConsumerIrp {
        // SAFETY: allocation; checked.
        let irp = unsafe { IoAllocateIrp(1, FALSE) };
        assert!(!irp.is_null(), "IoAllocateIrp");
        ConsumerIrp { irp, context: Box::new((id, tx.clone())) }
    }

    /// Readies the IRP for one request: reused, our routine in the next stack location.
    pub fn arm(&self) -> *mut IRP {
        let context = &*self.context as *const (usize, Sender<Done>) as *mut c_void;
        // SAFETY: our idle IRP; the context box outlives it.
        unsafe {
            IoReuseIrp(self.irp, STATUS_UNSUCCESSFUL);
            IoSetCompletionRoutine(self.irp, Some(consumer_completed), context, true, true, true);
        }
        self.irp
    }
}

impl Drop for ConsumerIrp {
    fn drop(&mut self) {
        // SAFETY: ours and idle (the tests drop only completed IRPs).
        unsafe { IoFreeIrp(self.irp) };
    }
}

unsafe extern "system" fn consumer_completed(
    _d: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    ctx: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the context is the IRP's (id, sender) box.
    let (id, tx) = unsafe { &*(ctx as *const (usize, Sender<Done>)) };
    // SAFETY: the completed IRP.
    let (status, bytes) = unsafe { ((*irp).IoStatus.status(), (*irp).IoStatus.Information) };
    let _ = tx.send(Done { id: *id, status, bytes });
    STATUS_MORE_PROCESSING_REQUIRED
}

/// What a stream's bytes are: what we send at each position, and what must come back.
#[derive(Clone, Copy)]
pub struct Shape {
    pub send: fn(u64) -> u8,
    pub expect: fn(u64) -> u8,
}

/// Plain echo of the test pattern.
pub const ECHO: Shape = Shape { send: super::pattern, expect: super::pattern };

/// Length of one line in the line-oriented shapes, newline included.
pub const LINE: u64 = 1024;

/// Letters and digits only: no NUL, `*`, `\r` or command letter a line peer could act on.
const LINE_ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Lines of LINE bytes (for peers that echo lines: gnutls-serv, openssl -rev).
pub fn line_byte(pos: u64) -> u8 {
    line_byte_of::<LINE>(pos)
}

/// Lines of `L` bytes, newline included.
fn line_byte_of<const L: u64>(pos: u64) -> u8 {
    if pos % L == L - 1 { b'\n' } else { LINE_ALPHABET[super::pattern(pos) as usize % 62] }
}

/// Lines, echoed as they are.
pub const LINES: Shape = Shape { send: line_byte, expect: line_byte };

/// The line holding `pos`, reversed (newline kept last): what `openssl s_server -rev`
/// returns.
fn reversed_line_byte_of<const L: u64>(pos: u64) -> u8 {
    let i = pos % L;
    if i == L - 1 { b'\n' } else { line_byte_of::<L>(pos - i + (L - 2 - i)) }
}

pub const REVERSED_LINES: Shape = Shape { send: line_byte, expect: reversed_line_byte_of::<LINE> };

/// A line exactly as long as a full record of this record size carries (1023 bytes: with
/// the content-type byte, whole AEAD blocks), so that records sent back to back each end
/// on a line: for a peer that mangles a line split by a KeyUpdate (openssl -rev).
pub const RECORD_LINE: u64 = 1023;

/// Lines of RECORD_LINE bytes, reversed as openssl -rev returns them.
pub const REVERSED_RECORD_LINES: Shape =
    Shape { send: line_byte_of::<RECORD_LINE>, expect: reversed_line_byte_of::<RECORD_LINE> };

/// One buffer of the engine: its IRP and its chain of pool buffers.
struct Buf {
    irp: ConsumerIrp,
    chain: Chain,
    busy: bool,
    stream_pos: u64,
    length: usize,
}

impl Buf {
    fn new(id: usize, tx: &Sender<Done>, sizes: &[usize], offset: u32) -> Buf {
        Buf {
            irp: ConsumerIrp::new(id, tx),
            chain: Chain::new(sizes, offset, 0),
            busy: false,
            stream_pos: 0,
            length: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.chain.capacity()
    }

    fn wsk_buf(&self, length: usize) -> WSK_BUF {
        self.chain.wsk_buf(length)
    }

    fn for_each(&mut self, length: usize, f: impl FnMut(u64, &mut u8)) {
        self.chain.for_each(self.stream_pos, length, f)
    }
}

const RECEIVE_ID: usize = 1000;
const SEND_CHAINS: [&[usize]; 3] =
    [&[4096 + 13, 16384, 777, 30000], &[1500, 1500, 1, 50000], &[65536, 3, 8192]];
const RECEIVE_CHAINS: [&[usize]; 3] = [&[16384, 7, 16384, 20000], &[4096, 30000, 1234], &[512, 512, 60000]];

/// Keeps sends and receives in flight on a channel until `total` bytes went out and came
/// back, checking each byte against the shape, that every request completes exactly once,
/// and that sends and receives complete in the order issued.
pub struct Stream {
    shape: Shape,
    sends: Vec<Buf>,
    receives: Vec<Buf>,
    rx: Receiver<Done>,
    send_order: VecDeque<usize>,
    receive_order: VecDeque<usize>,
    pub total: u64,
    pub sent: u64,
    pub acknowledged: u64,
    pub received: u64,
    pub eof: bool,
    pub receive_flags: u32,
    /// Every send's length is a multiple of this (for peers that mangle a line split by
    /// a KeyUpdate); `total` must be one too.
    pub send_granularity: usize,
}

impl Stream {
    pub fn new(total: u64, shape: Shape) -> Stream {
        let (tx, rx) = mpsc::channel();
        let sends =
            SEND_CHAINS.iter().enumerate().map(|(i, c)| Buf::new(i, &tx, c, (i * 5) as u32)).collect();
        let receives = RECEIVE_CHAINS
            .iter()
            .enumerate()
            .map(|(i, c)| Buf::new(RECEIVE_ID + i, &tx, c, (i * 3 + 1) as u32))
            .collect();
        Stream {
            shape,
            sends,
            receives,
            rx,
            send_order: VecDeque::new(),
            receive_order: VecDeque::new(),
            total,
            sent: 0,
            acknowledged: 0,
            received: 0,
            eof: false,
            receive_flags: 0,
            send_granularity: 1,
        }
    }

    fn issue(&mut self, channel: &Channel) -> Result<(), String> {
        for (i, b) in self.sends.iter_mut().enumerate() {
            if b.busy || self.sent >= self.total {
                continue;
            }
            let length = (b.capacity() as u64).min(self.total - self.sent) as usize;
            let length = length / self.send_granularity * self.send_granularity;
            b.stream_pos = self.sent;
            b.length = length;
            let send = self.shape.send;
            b.for_each(length, |pos, byte| *byte = send(pos));
            let buf = b.wsk_buf(length);
            b.busy = true;
            self.send_order.push_back(i);
            self.sent += length as u64;
            // SAFETY: our armed IRP and our chain, untouched until completion.
            let status = unsafe { interface::send(channel, &buf, 0, b.irp.arm()) };
            if status != STATUS_PENDING {
                return Err(format!("send returned {status:?}"));
            }
        }
        if self.eof {
            return Ok(());
        }
        for (i, b) in self.receives.iter_mut().enumerate() {
            if b.busy {
                continue;
            }
            let length = b.capacity();
            let buf = b.wsk_buf(length);
            b.busy = true;
            b.length = length;
            self.receive_order.push_back(i);
            // SAFETY: as above.
            let status = unsafe { interface::receive(channel, &buf, self.receive_flags, b.irp.arm()) };
            if status != STATUS_PENDING {
                return Err(format!("receive returned {status:?}"));
            }
        }
        Ok(())
    }

    fn book(&mut self, done: Done) -> Result<(), String> {
        if done.status != STATUS_SUCCESS {
            return Err(format!("request {} failed: {:?}", done.id, done.status));
        }
        if done.id >= RECEIVE_ID {
            let i = done.id - RECEIVE_ID;
            if self.receive_order.pop_front() != Some(i) {
                return Err(format!("receive {i} completed out of order (or twice)"));
            }
            let b = &mut self.receives[i];
            b.busy = false;
            if done.bytes == 0 {
                self.eof = true;
                return Ok(());
            }
            b.stream_pos = self.received;
            let expect = self.shape.expect;
            let mut bad = None;
            b.for_each(done.bytes, |pos, byte| {
                if bad.is_none() && *byte != expect(pos) {
                    bad = Some(pos);
                }
            });
            if let Some(pos) = bad {
                return Err(format!("byte {pos} of the stream is wrong"));
            }
            self.received += done.bytes as u64;
        } else {
            if self.send_order.pop_front() != Some(done.id) {
                return Err(format!("send {} completed out of order (or twice)", done.id));
            }
            let b = &mut self.sends[done.id];
            b.busy = false;
            if done.bytes != b.length {
                return Err(format!("send of {} bytes completed with {}", b.length, done.bytes));
            }
            self.acknowledged += done.bytes as u64;
        }
        Ok(())
    }

    fn next(&mut self, wait: Duration) -> Result<Done, String> {
        match self.rx.recv_timeout(wait) {
            Ok(d) => Ok(d),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "no completion for {wait:?}: sent {} acknowledged {} received {} of {}",
                self.sent, self.acknowledged, self.received, self.total
            )),
            Err(RecvTimeoutError::Disconnected) => Err("completion channel closed".into()),
        }
    }

    /// Sends `total` bytes and receives them back.
    pub fn run(&mut self, channel: &Channel, wait: Duration) -> Result<(), String> {
        while self.received < self.total {
            self.issue(channel)?;
            let done = self.next(wait)?;
            self.book(done)?;
            if self.eof && self.received < self.total {
                return Err(format!("end of stream after {} of {} bytes", self.received, self.total));
            }
        }
        self.settle(wait)
    }

    /// Waits for every send still in flight.
    pub fn settle(&mut self, wait: Duration) -> Result<(), String> {
        while !self.send_order.is_empty() {
            let done = self.next(wait)?;
            self.book(done)?;
        }
        Ok(())
    }

    /// Waits for the receives still posted, which must end with the peer's close_notify
    /// (a zero-byte completion) and bring no more data.
    pub fn expect_end(&mut self, wait: Duration) -> Result<(), String> {
        while !self.receive_order.is_empty() {
            let done = self.next(wait)?;
            self.book(done)?;
        }
        if self.eof { Ok(()) } else { Err("no end of stream".into()) }
    }

    /// Waits for every outstanding request. Successes are booked as usual (bytes checked,
    /// order kept); the failures are returned, in completion order, for the test to judge.
    pub fn drain_statuses(&mut self, wait: Duration) -> Result<Vec<(usize, NTSTATUS, usize)>, String> {
        let mut failures = Vec::new();
        while self.outstanding() > 0 {
            let done = self.next(wait)?;
            if done.status == STATUS_SUCCESS {
                self.book(done)?;
                continue;
            }
            let receive = done.id >= RECEIVE_ID;
            let (order, i) = if receive {
                (&mut self.receive_order, done.id - RECEIVE_ID)
            } else {
                (&mut self.send_order, done.id)
            };
            if order.pop_front() != Some(i) {
                return Err(format!("request {} completed out of order (or twice)", done.id));
            }
            if receive {
                self.receives[i].busy = false
            } else {
                self.sends[i].busy = false
            }
            failures.push((done.id, done.status, done.bytes));
        }
        Ok(failures)
    }

    /// Requests still outstanding, which must not be freed before they complete (close
    /// the channel first).
    pub fn outstanding(&self) -> usize {
        self.send_order.len() + self.receive_order.len()
    }

    /// No completion arrives within `quiet`: nothing completed twice.
    pub fn assert_quiet(&self, quiet: Duration) {
        if let Ok(d) = self.rx.recv_timeout(quiet) {
            panic!("unexpected completion {d:?}");
        }
    }
}
