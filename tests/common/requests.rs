//! A consumer's requests on a channel, each on its own IRP, buffer and completion channel,
//! issued through the interface's calls as a driver issues them.

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use wsktls::channel::Channel;
use wsktls::interface;
use wsktls::nt::{NTSTATUS, PoolBuffer, STATUS_PENDING, STATUS_SUCCESS, WSK_BUF};

use super::consumer::ConsumerIrp;
use super::{Done, STALL, TAG_TEST};

/// One consumer request on its own IRP, buffer (zeroed) and completion channel.
pub struct Request {
    irp: ManuallyDrop<ConsumerIrp>,
    buffer: ManuallyDrop<PoolBuffer>,
    done: Receiver<Done>,
    /// Seen completed: its IRP and buffer are the test's again.
    completed: Cell<bool>,
}

impl Drop for Request {
    fn drop(&mut self) {
        // A test that failed may drop a request the channel still holds (the channel is
        // dropped later): leak its IRP and buffer rather than free them under the driver.
        if self.completed.get() || self.done.try_recv().is_ok() {
            // SAFETY: dropped once, here; the driver is done with both.
            unsafe {
                ManuallyDrop::drop(&mut self.irp);
                ManuallyDrop::drop(&mut self.buffer);
            }
        }
    }
}

impl Request {
    pub fn new(len: usize) -> Request {
        let (tx, done) = mpsc::channel();
        let buffer = PoolBuffer::new(len, TAG_TEST).expect("buffer");
        Request {
            irp: ManuallyDrop::new(ConsumerIrp::new(0, &tx)),
            buffer: ManuallyDrop::new(buffer),
            done,
            completed: Cell::new(false),
        }
    }

    pub fn buf(&self) -> WSK_BUF {
        WSK_BUF { Mdl: self.buffer.mdl(), Offset: 0, Length: self.buffer.len() }
    }

    /// A receive of up to `len` bytes, issued; returns what the call returned.
    pub fn receive(channel: &Channel, len: usize) -> (Request, NTSTATUS) {
        let r = Request::new(len);
        // SAFETY: our armed IRP and buffer, alive until the completion (the tests wait for
        // it, or close the channel, before dropping the request).
        let status = unsafe { interface::receive(channel, &r.buf(), 0, r.irp.arm()) };
        (r, status)
    }

    /// A receive with `flags` that may complete at once or later.
    pub fn pending_or_ready_receive(channel: &Channel, len: usize, flags: u32) -> Request {
        let r = Request::new(len);
        // SAFETY: as for receive.
        let status = unsafe { interface::receive(channel, &r.buf(), flags, r.irp.arm()) };
        assert!(status == STATUS_PENDING || status == STATUS_SUCCESS, "{status:?}");
        r
    }

    /// A receive that must pend.
    pub fn pending_receive(channel: &Channel, len: usize) -> Request {
        let (r, status) = Request::receive(channel, len);
        assert_eq!(status, STATUS_PENDING, "a receive with nothing to deliver pends");
        r
    }

    /// A send of `data`, issued; returns what the call returned.
    pub fn send(channel: &Channel, data: &[u8]) -> (Request, NTSTATUS) {
        let mut r = Request::new(data.len());
        r.buffer.as_mut_slice().copy_from_slice(data);
        // SAFETY: as for receive.
        let status = unsafe { interface::send(channel, &r.buf(), 0, r.irp.arm()) };
        (r, status)
    }

    pub fn wait(&self) -> Done {
        let done = self.done.recv_timeout(STALL).expect("the request completes");
        self.completed.set(true);
        done
    }

    /// The completion, which must have happened already (close returns after it).
    pub fn completed_already(&self) -> Done {
        let done = self.done.try_recv().expect("completed before close returned");
        self.completed.set(true);
        done
    }

    pub fn assert_pending(&self, watch: Duration) {
        if let Ok(d) = self.done.recv_timeout(watch) {
            self.completed.set(true);
            panic!("the request completed while it should pend: {d:?}");
        }
    }

    /// The bytes a completed receive delivered.
    pub fn received(&self, done: &Done) -> &[u8] {
        &self.buffer.as_slice()[..done.bytes]
    }

    pub fn untouched(&self) -> bool {
        self.buffer.as_slice().iter().all(|&b| b == 0)
    }
}
