//! The bench's consumer: what a driver that wants throughput does with wsktls's dispatch
//! table. Its IRPs, buffers and MDLs are made once; it keeps `DEPTH` requests in flight,
//! reusing each IRP once its completion has signalled; it never copies its data (the
//! sample consumer copies every chunk into its own buffer, one request at a time, which
//! would measure the sample, not wsktls). Its sends carry WSK_FLAG_NODELAY, as the rustls
//! client's socket has TCP_NODELAY: the two contenders run with Nagle's algorithm off.

use std::sync::Arc;

use wsktls::nt::{
    Event, FALSE, IRP, IoAllocateIrp, IoFreeIrp, IoReuseIrp, NTSTATUS, PoolBox, PoolBuffer,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_NOT_SUPPORTED, STATUS_UNSUCCESSFUL, WSK_BUF, WSK_FLAG_NODELAY,
    WSKTLS_CHANNEL, pool_tag,
};
use wsktls_sample_consumer::{Binding, Session};

const TAG: u32 = pool_tag(b"WcBn");
/// Requests in flight at most: enough to keep the channel's pipeline fed while the
/// consumer handles a completion.
pub const DEPTH: usize = 4;

/// One request: its IRP, the event its completion sets, and its buffer.
struct Slot {
    irp: *mut IRP,
    done: Event,
    buffer: PoolBuffer,
    busy: bool,
    /// Bytes asked of the request in flight.
    len: usize,
}

/// Which call the requests make.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Send,
    Receive,
}

/// DEPTH requests of one direction on one channel.
pub struct Pipe {
    binding: Arc<Binding>,
    channel: *mut WSKTLS_CHANNEL,
    direction: Direction,
    slots: PoolBox<Vec<Slot>>,
    next: usize,
}

// SAFETY: the channel handle may be used from any thread; the slots are used only through
// `&mut self`.
unsafe impl Send for Pipe {}

impl Pipe {
    /// Requests of `len`-byte buffers on `session`'s channel; send buffers hold `fill`'s
    /// bytes (written once, here). PASSIVE_LEVEL.
    pub fn new(
        session: &Session,
        direction: Direction,
        len: usize,
        fill: impl Fn(&mut [u8]),
    ) -> Result<Pipe, NTSTATUS> {
        let mut slots = Vec::with_capacity(DEPTH);
        for _ in 0..DEPTH {
            let mut buffer = PoolBuffer::new(len, TAG)?;
            fill(buffer.as_mut_slice());
            // SAFETY: one stack location, wsktls's.
            let irp = unsafe { IoAllocateIrp(1, FALSE) };
            if irp.is_null() {
                return Err(STATUS_INSUFFICIENT_RESOURCES);
            }
            slots.push(Slot { irp, done: Event::new(), buffer, busy: false, len: 0 });
        }
        let slots = PoolBox::new(TAG, slots)?;
        for s in slots.iter() {
            // SAFETY: each event sits in the pool-resident vector, which never grows again.
            unsafe { s.done.initialize() };
        }
        let binding = Arc::clone(session.binding());
        Ok(Pipe { binding, channel: session.handle(), direction, slots, next: 0 })
    }

    /// Moves `total` bytes in requests of `size` bytes (at most the buffer's length),
    /// DEPTH at a time, and waits for the last; returns the bytes the completions
    /// reported. Receives never ask for more than is left of `total` (a receive posted
    /// beyond the stream's end would wait for ever); one that completes with 0 bytes (the
    /// peer's close_notify) ends the run early.
    pub fn run(&mut self, total: u64, size: usize) -> Result<u64, NTSTATUS> {
        let size = size.min(self.slots[0].buffer.len()) as u64;
        // Bytes moved by completed requests, and asked for by those in flight.
        let (mut moved, mut asked) = (0u64, 0u64);
        let mut ended = false;
        loop {
            let i = self.next;
            if self.slots[i].busy {
                asked -= self.slots[i].len as u64;
                let n = self.wait(i)? as u64;
                ended |= n == 0 && self.direction == Direction::Receive;
                moved += n;
            }
            let left = total.saturating_sub(moved + asked);
            if left == 0 || ended {
                if self.slots.iter().all(|s| !s.busy) {
                    return Ok(moved);
                }
                self.next = (i + 1) % DEPTH;
                continue;
            }
            let len = left.min(size) as usize;
            self.issue(i, len)?;
            asked += len as u64;
            self.next = (i + 1) % DEPTH;
        }
    }

    /// Waits for every request still in flight; returns their bytes.
    fn drain(&mut self) -> Result<u64, NTSTATUS> {
        let mut moved = 0;
        for i in 0..DEPTH {
            if self.slots[i].busy {
                moved += self.wait(i)? as u64;
            }
        }
        Ok(moved)
    }

    fn issue(&mut self, i: usize, len: usize) -> Result<(), NTSTATUS> {
        let dispatch = self.binding.dispatch();
        let (call, flags) = match self.direction {
            Direction::Send => (dispatch.Send, WSK_FLAG_NODELAY),
            Direction::Receive => (dispatch.Receive, 0),
        };
        let call = call.ok_or(STATUS_NOT_SUPPORTED)?;
        let slot = &mut self.slots[i];
        slot.done.clear();
        // SAFETY: our idle IRP; the event lives in pool with the slots.
        unsafe {
            IoReuseIrp(slot.irp, STATUS_UNSUCCESSFUL);
            slot.done.receive_completion_of(slot.irp);
        }
        let mut buf = WSK_BUF { Mdl: slot.buffer.mdl(), Offset: 0, Length: len };
        (slot.busy, slot.len) = (true, len);
        // SAFETY: the buffer's MDL describes locked pool that stays untouched until the
        // completion, which `wait` waits for; wsktls completes the IRP whatever it returns.
        let _ = unsafe { call(self.channel, &mut buf, flags, slot.irp) };
        Ok(())
    }

    /// Waits for request `i`'s completion: its byte count, or its failure.
    fn wait(&mut self, i: usize) -> Result<usize, NTSTATUS> {
        let slot = &mut self.slots[i];
        let _ = slot.done.wait(u32::MAX);
        slot.busy = false;
        // SAFETY: completed: the IRP is ours again.
        let (status, bytes) = unsafe { ((*slot.irp).IoStatus.status(), (*slot.irp).IoStatus.Information) };
        if status.is_success() { Ok(bytes) } else { Err(status) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: ours, and idle: a Pipe waits for every request before its slots go.
        unsafe { IoFreeIrp(self.irp) };
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // Every request must have completed before the IRPs are freed.
        let _ = self.drain();
    }
}
