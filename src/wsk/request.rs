//! A send or receive slot: the IRP and WSK_BUF of one request, allocated once and reused,
//! and the completion routine that hands the outcome to the owner's handler. The
//! completion routine is the only cleanup path: whatever WskSend or WskReceive returns
//! inline, the outcome arrives there, exactly once per issued request.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::mem::ManuallyDrop;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::TAG_REQUEST;
use super::irp::Irp;
use super::socket::Socket;
use super::span::Span;
use crate::nt::{
    DEVICE_OBJECT, IRP, NTSTATUS, PoolBox, STATUS_INVALID_DEVICE_STATE, STATUS_MORE_PROCESSING_REQUIRED,
    WSK_BUF, WSK_FLAG_NODELAY,
};

/// Receives a request's outcome.
pub trait Completion: Send + Sync {
    /// Called once per issued request, from its completion routine, at IRQL <=
    /// DISPATCH_LEVEL: never block here. `bytes` is IoStatus.Information (bytes sent or
    /// received). The request is idle again when this runs, so it may be reissued.
    ///
    /// The owner may drop the request as soon as it learns of the outcome (drop waits for
    /// this call to return), but the handler itself must never drop its own request.
    fn completed(&self, status: NTSTATUS, bytes: usize);
}

struct Slot<H> {
    irp: Irp,
    /// The WSK_BUF handed to WSK, kept alive with the request; written by `issue` through
    /// a shared reference, hence the cell.
    buf: UnsafeCell<WSK_BUF>,
    in_flight: AtomicBool,
    /// Completion routines running on this slot (more than one when a handler reissues and
    /// the request completes inline). The slot must outlive them: the handler that just
    /// told the owner "done" is still executing on it.
    in_routine: AtomicU32,
    handler: H,
}

/// A reusable send or receive request. Lives in nonpaged pool: its address is the
/// completion routine's context.
pub struct Request<H: Completion> {
    /// Dropped by hand: a slot still in flight must outlive its owner.
    slot: ManuallyDrop<PoolBox<Slot<H>>>,
}

impl<H: Completion> Request<H> {
    /// Allocates the IRP and the slot. IRQL <= DISPATCH_LEVEL; do it before the data path
    /// starts, so that sending allocates nothing.
    pub fn new(handler: H) -> Result<Self, NTSTATUS> {
        let irp = Irp::allocate()?;
        let buf = UnsafeCell::new(WSK_BUF { Mdl: core::ptr::null_mut(), Offset: 0, Length: 0 });
        let slot = PoolBox::new(
            TAG_REQUEST,
            Slot { irp, buf, in_flight: AtomicBool::new(false), in_routine: AtomicU32::new(0), handler },
        )?;
        Ok(Request { slot: ManuallyDrop::new(slot) })
    }

    pub fn handler(&self) -> &H {
        &self.slot().handler
    }

    pub fn is_in_flight(&self) -> bool {
        self.slot().in_flight.load(Ordering::Acquire)
    }

    /// Neither in flight nor inside its completion routine: once the socket is closed and
    /// every request is idle, nothing can run on the requests' owner any more.
    pub fn is_idle(&self) -> bool {
        let slot = self.slot();
        !slot.in_flight.load(Ordering::Acquire) && slot.in_routine.load(Ordering::Acquire) == 0
    }

    fn slot(&self) -> &Slot<H> {
        &self.slot
    }

    /// Issues WskSend (`send`) or WskReceive. `Ok` means the handler will be called exactly
    /// once with the outcome; `Err` means nothing was issued and it will not be
    /// (STATUS_INVALID_DEVICE_STATE: this request is already in flight;
    /// STATUS_FILE_FORCED_CLOSED: the socket is closing).
    ///
    /// # Safety
    /// `buf` describes a chain of locked MDLs holding at least `Offset + Length` bytes,
    /// which stays valid (and, for a send, unchanged) until the handler runs.
    unsafe fn issue(&self, socket: &Socket, send: bool, buf: WSK_BUF, flags: u32) -> Result<(), NTSTATUS> {
        let slot = self.slot();
        if slot.in_flight.swap(true, Ordering::AcqRel) {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        let context = slot as *const Slot<H> as *mut c_void;
        // SAFETY: the request is idle (in_flight was false), so we own its IRP and buffer;
        // the slot is pool-resident and outlives the request (drop never frees an in-flight
        // slot).
        let r = unsafe {
            *slot.buf.get() = buf;
            slot.irp.prepare(Some(completed::<H>), context);
            socket.core().transfer(send, slot.buf.get(), flags, slot.irp.as_ptr())
        };
        if r.is_err() {
            slot.in_flight.store(false, Ordering::Release);
        }
        r
    }

    /// WskSend of `buf`; see `issue` for the outcome contract.
    ///
    /// # Safety
    /// As for `issue`.
    pub unsafe fn send(&self, socket: &Socket, buf: WSK_BUF, flags: u32) -> Result<(), NTSTATUS> {
        // SAFETY: forwarded contract.
        unsafe { self.issue(socket, true, buf, flags) }
    }

    /// WskSend of `span`, with WSK_FLAG_NODELAY when `nodelay`; see `issue`.
    ///
    /// # Safety
    /// The span's buffers stay valid and unchanged until the handler runs.
    pub unsafe fn send_span(&self, socket: &Socket, span: Span, nodelay: bool) -> Result<(), NTSTATUS> {
        let flags = if nodelay { WSK_FLAG_NODELAY } else { 0 };
        // SAFETY: forwarded contract; a Span's bytes lie within its buffers (`within`
        // checks it, `chain`'s caller promises it).
        unsafe { self.issue(socket, true, span.0, flags) }
    }

    /// WskReceive into `span`; see `issue`.
    ///
    /// # Safety
    /// The span's buffers stay valid, and untouched by anyone else, until the handler runs.
    pub unsafe fn receive_span(&self, socket: &Socket, span: Span) -> Result<(), NTSTATUS> {
        // SAFETY: as for `send_span`.
        unsafe { self.issue(socket, false, span.0, 0) }
    }

    /// WskReceive into `buf`; see `issue` for the outcome contract.
    ///
    /// # Safety
    /// As for `issue`.
    pub unsafe fn receive(&self, socket: &Socket, buf: WSK_BUF, flags: u32) -> Result<(), NTSTATUS> {
        // SAFETY: forwarded contract.
        unsafe { self.issue(socket, false, buf, flags) }
    }
}

impl<H: Completion> Drop for Request<H> {
    fn drop(&mut self) {
        // A slot still in flight is kept (the leak report at unload names the mistake):
        // freeing it would let WSK complete into freed memory.
        if self.slot.in_flight.load(Ordering::Acquire) {
            return;
        }
        // Seeing in_flight cleared (Acquire) means seeing the routine's earlier
        // increment of in_routine: a routine that already told us the outcome but still
        // runs on another processor is waited out here. It runs at DISPATCH_LEVEL and
        // never waits, so this wait is short.
        while self.slot.in_routine.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
        // SAFETY: idle, no routine on it: dropped exactly once, here, never used again.
        unsafe { ManuallyDrop::drop(&mut self.slot) };
    }
}

/// The completion routine of every send and receive.
unsafe extern "system" fn completed<H: Completion>(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: `context` is the slot that issued this IRP; it stays allocated while the
    // request is in flight.
    let slot = unsafe { &*(context as *const Slot<H>) };
    // SAFETY: the completed IRP is ours again.
    let (status, bytes) = unsafe { ((*irp).IoStatus.status(), (*irp).IoStatus.Information) };
    slot.in_routine.fetch_add(1, Ordering::AcqRel);
    slot.in_flight.store(false, Ordering::Release);
    slot.handler.completed(status, bytes);
    // The last touch of the slot: after this the owner may free it.
    slot.in_routine.fetch_sub(1, Ordering::Release);
    STATUS_MORE_PROCESSING_REQUIRED
}
