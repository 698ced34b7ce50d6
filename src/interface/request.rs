//! A consumer's send or receive, taken over with its IRP the way a WSK provider takes one,
//! and the FIFO it waits in: linked through the IRP itself, so queueing allocates nothing.
//! While we own a consumer's IRP, its current stack location (ours, after
//! IoSetNextIrpStackLocation) holds the request's WSK_BUF and flags, and
//! `Tail.Overlay.DriverContext` our bookkeeping. The channel sees lengths, progress and
//! copies; never the IRP or its MDLs.

use super::chain;
use crate::nt::{
    IO_NO_INCREMENT, IRP, IoCompleteRequest, IoGetCurrentIrpStackLocation, IoMarkIrpPending,
    IoSetNextIrpStackLocation, MDL, NTSTATUS, PVOID, WSK_BUF, WSK_FLAG_NODELAY, WSK_FLAG_WAITALL,
};

/// DriverContext slots.
const NEXT: usize = 0;
const DONE: usize = 1;
const END: usize = 2;

/// A consumer's send or receive, ours from `take` until `complete`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ConsumerRequest(*mut IRP);

impl ConsumerRequest {
    /// No request: a placeholder until one is taken.
    pub(crate) const NONE: ConsumerRequest = ConsumerRequest(core::ptr::null_mut());

    /// Takes over the IRP of a call that moves no data (Connect, Disconnect, Close), as
    /// [`ConsumerRequest::take`] does.
    ///
    /// # Safety
    /// As for `take`.
    pub(crate) unsafe fn take_call(irp: *mut IRP, pending: bool) -> Option<ConsumerRequest> {
        let nothing = WSK_BUF { Mdl: core::ptr::null_mut(), Offset: 0, Length: 0 };
        // SAFETY: forwarded contract.
        unsafe { Self::take(irp, &nothing, 0, pending) }
    }

    /// Takes `irp` over as its provider: the consumer prepared the next stack location (its
    /// completion routine), which becomes ours to use. `false` when the IRP has no stack
    /// location left for us (the consumer allocated too few).
    ///
    /// # Safety
    /// `irp` is a valid IRP the consumer hands us and does not touch until it completes.
    /// `pending`: the request will be queued, so the IRP is marked pending (the caller
    /// then returns STATUS_PENDING); otherwise it is about to be completed at once.
    pub(crate) unsafe fn take(
        irp: *mut IRP,
        buf: &WSK_BUF,
        flags: u32,
        pending: bool,
    ) -> Option<ConsumerRequest> {
        // (The chain itself is checked and mapped by the caller, before.)
        // SAFETY: per the contract, a valid IRP that is now ours.
        unsafe {
            if (*irp).CurrentLocation <= 1 {
                return None;
            }
            IoSetNextIrpStackLocation(irp);
            if pending {
                // The consumer's routine sees PendingReturned, as for any pended IRP.
                IoMarkIrpPending(irp);
            }
            let args = &mut (*IoGetCurrentIrpStackLocation(irp)).Parameters.Others;
            args.Argument1 = buf.Mdl.cast();
            args.Argument2 = buf.Offset as PVOID;
            args.Argument3 = buf.Length as PVOID;
            args.Argument4 = flags as usize as PVOID;
            (*irp).Tail.Overlay.DriverContext = [core::ptr::null_mut(); 4];
        }
        Some(ConsumerRequest(irp))
    }

    fn get(&self, slot: usize) -> PVOID {
        // SAFETY: a taken IRP is ours; its DriverContext is our bookkeeping, touched only
        // under the lock of the queue that holds it.
        unsafe { (*self.0).Tail.Overlay.DriverContext[slot] }
    }

    fn set(&self, slot: usize, value: PVOID) {
        // SAFETY: as for `get`.
        unsafe { (*self.0).Tail.Overlay.DriverContext[slot] = value };
    }

    /// The consumer's buffer.
    fn buf(&self) -> WSK_BUF {
        // SAFETY: written by `take` into our stack location.
        let args = unsafe { &(*IoGetCurrentIrpStackLocation(self.0)).Parameters.Others };
        WSK_BUF {
            Mdl: args.Argument1.cast::<MDL>(),
            Offset: args.Argument2 as usize as u32,
            Length: args.Argument3 as usize,
        }
    }

    fn flags(&self) -> u32 {
        // SAFETY: as for `buf`.
        unsafe { (*IoGetCurrentIrpStackLocation(self.0)).Parameters.Others.Argument4 as usize as u32 }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf().Length
    }

    /// A send that asked for WSK_FLAG_NODELAY.
    pub(crate) fn nodelay(&self) -> bool {
        self.flags() & WSK_FLAG_NODELAY != 0
    }

    /// A receive that asked for WSK_FLAG_WAITALL (the two flags share a value: the kind of
    /// request says which it is).
    pub(crate) fn wants_all(&self) -> bool {
        self.flags() & WSK_FLAG_WAITALL != 0
    }

    /// Copies `dst.len()` bytes of the consumer's data, from `from`, into `dst`.
    /// `from + dst.len()` must not exceed `len()`.
    pub(crate) fn copy_out(&self, from: usize, dst: &mut [u8]) {
        if from + dst.len() <= self.len() {
            // SAFETY: the chain was checked and mapped when the request was taken, and the
            // consumer keeps it locked until we complete it; the range is inside it.
            unsafe { chain::copy_from(&self.buf(), from, dst) };
        }
    }

    /// Copies `src` into the consumer's buffer at `at`. `at + src.len()` must not exceed
    /// `len()`.
    pub(crate) fn copy_in(&self, at: usize, src: &[u8]) {
        if at + src.len() <= self.len() {
            // SAFETY: as for `copy_out`.
            unsafe { chain::copy_into(&self.buf(), at, src) };
        }
    }

    /// Bytes of the request already handled (sealed from it, or received into it).
    pub(crate) fn done(&self) -> usize {
        self.get(DONE) as usize
    }

    pub(crate) fn set_done(&self, n: usize) {
        self.set(DONE, n as PVOID);
    }

    /// A stream position kept with the request (a send's last byte).
    pub(crate) fn end(&self) -> u64 {
        self.get(END) as usize as u64
    }

    pub(crate) fn set_end(&self, end: u64) {
        self.set(END, end as usize as PVOID);
    }

    /// Completes the request to its consumer. Never under one of our locks: the consumer's
    /// completion routine may call us again.
    pub(crate) fn complete(self, status: NTSTATUS, information: usize) {
        // SAFETY: ours until this call, never touched afterwards.
        unsafe {
            (*self.0).IoStatus.set(status, information);
            IoCompleteRequest(self.0, IO_NO_INCREMENT);
        }
    }
}

/// A FIFO of taken requests.
pub(crate) struct RequestQueue {
    head: *mut IRP,
    tail: *mut IRP,
}

// SAFETY: the IRPs are ours while queued; the queue lives under a lock.
unsafe impl Send for RequestQueue {}

impl RequestQueue {
    pub(crate) const fn new() -> RequestQueue {
        RequestQueue { head: core::ptr::null_mut(), tail: core::ptr::null_mut() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    pub(crate) fn push(&mut self, request: ConsumerRequest) {
        request.set(NEXT, core::ptr::null_mut());
        if self.tail.is_null() {
            self.head = request.0;
        } else {
            ConsumerRequest(self.tail).set(NEXT, request.0.cast());
        }
        self.tail = request.0;
    }

    pub(crate) fn front(&self) -> Option<ConsumerRequest> {
        (!self.head.is_null()).then_some(ConsumerRequest(self.head))
    }

    /// The request after `request` in this queue.
    pub(crate) fn next(&self, request: ConsumerRequest) -> Option<ConsumerRequest> {
        let next = request.get(NEXT).cast::<IRP>();
        (!next.is_null()).then_some(ConsumerRequest(next))
    }

    /// Moves every request to `done` with `status` and the bytes each had moved.
    pub(crate) fn fail_all(&mut self, status: NTSTATUS, done: &mut Completions) {
        while let Some(request) = self.pop() {
            done.add(request, status, request.done());
        }
    }

    pub(crate) fn pop(&mut self) -> Option<ConsumerRequest> {
        let front = self.front()?;
        self.head = front.get(NEXT).cast();
        if self.head.is_null() {
            self.tail = core::ptr::null_mut();
        }
        Some(front)
    }
}

/// Requests to complete once the lock is released, each with its status and byte count.
pub(crate) struct Completions {
    queue: RequestQueue,
}

impl Completions {
    pub(crate) const fn new() -> Completions {
        Completions { queue: RequestQueue::new() }
    }

    /// Records the outcome in the IRP now; the IRP completes in `complete_all`.
    pub(crate) fn add(&mut self, request: ConsumerRequest, status: NTSTATUS, information: usize) {
        // SAFETY: ours until completed; IoStatus is written once more by nobody else.
        unsafe { (*request.0).IoStatus.set(status, information) };
        self.queue.push(request);
    }

    /// Completes every request, in the order added. Call with no lock held.
    pub(crate) fn complete_all(mut self) {
        while let Some(r) = self.queue.pop() {
            // SAFETY: the status was stored by `add`; ours until this call.
            unsafe { IoCompleteRequest(r.0, IO_NO_INCREMENT) };
        }
    }
}
