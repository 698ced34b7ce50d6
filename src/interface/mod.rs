//! What consumer drivers call: the provider a device hands out, its dispatch table
//! (`wsktls.h` is the C view; `crate::nt::WSKTLS_*` the Rust one), the channel handles
//! behind it, and WskSend's and WskReceive's contracts on a channel.
//!
//! This is where consumer IRPs, MDL chains and parameters are met: checked, taken over,
//! copied from and into, and completed. The channel below sees requests with lengths and
//! copies.

mod chain;
mod dispatch;
mod params;
mod provider;
mod query;
mod request;
mod table;

pub use dispatch::DISPATCH;
pub use provider::{Defaults, Provider};
pub(crate) use request::{Completions, ConsumerRequest, RequestQueue};

use crate::channel::Channel;
use crate::nt::{
    IO_NO_INCREMENT, IRP, IoCompleteRequest, NTSTATUS, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED,
    STATUS_PENDING, WSK_BUF, WSK_FLAG_NODELAY, WSK_FLAG_WAITALL,
};

/// Sends the bytes `buf` describes on `channel`, WskSend's way: returns STATUS_PENDING (the
/// IRP marked pending) and completes `irp` once every byte is on the wire
/// (IoStatus.Information = the plaintext bytes), or completes it at once with the error it
/// also returns (bad flags or buffer, a failed channel: STATUS_FILE_FORCED_CLOSED, a send
/// after our close_notify: STATUS_INVALID_DEVICE_STATE). A channel that fails after the
/// IRP was taken completes it with the failure, after returning STATUS_PENDING. Flags: WSK_FLAG_NODELAY
/// only (passed down); anything else is STATUS_NOT_SUPPORTED. Sends complete in order.
/// IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// `irp` is a valid IRP with a stack location for us (the consumer's completion routine in
/// the next one), which the consumer does not touch until it completes; `buf` describes
/// locked pages that stay valid until then.
pub unsafe fn send(channel: &Channel, buf: &WSK_BUF, flags: u32, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: forwarded contract.
    match unsafe { accept(channel.refusal(true), buf, flags, WSK_FLAG_NODELAY, false, irp) } {
        // Taken, so marked pending: whatever the channel does with it, the answer is
        // STATUS_PENDING and the completion routine has the outcome.
        Ok(request) => {
            let _ = channel.send(request);
            STATUS_PENDING
        }
        Err(status) => status,
    }
}

/// Receives into `buf` from `channel`, WskReceive's way: completes `irp` when at least one
/// byte arrived (all of them with WSK_FLAG_WAITALL, the only flag accepted), with 0 bytes
/// and success once the peer's close_notify is reached. An empty `buf` is
/// STATUS_INVALID_PARAMETER (its completion would look like the end of the stream).
/// IRQL <= DISPATCH_LEVEL.
///
/// # Safety
/// As for [`send`].
pub unsafe fn receive(channel: &Channel, buf: &WSK_BUF, flags: u32, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: forwarded contract.
    match unsafe { accept(channel.refusal(false), buf, flags, WSK_FLAG_WAITALL, true, irp) } {
        Ok(request) => {
            let _ = channel.receive(request);
            STATUS_PENDING
        }
        Err(status) => status,
    }
}

/// The checks every request passes before the channel sees it (`refusal`: the channel's
/// own, a failure or a close in progress); on failure the IRP is completed with the
/// returned status, not marked pending.
///
/// # Safety
/// As for [`send`].
unsafe fn accept(
    refusal: Option<NTSTATUS>,
    buf: &WSK_BUF,
    flags: u32,
    allowed: u32,
    receive: bool,
    irp: *mut IRP,
) -> Result<ConsumerRequest, NTSTATUS> {
    let check = if flags & !allowed != 0 {
        Err(STATUS_NOT_SUPPORTED)
    } else if receive && buf.Length == 0 {
        Err(STATUS_INVALID_PARAMETER)
    } else if let Some(status) = refusal {
        Err(status)
    } else {
        // SAFETY: locked pages per the contract.
        unsafe { chain::check_and_map(buf) }
    };
    // SAFETY: a valid IRP handed to us per the contract.
    let Some(request) = (unsafe { ConsumerRequest::take(irp, buf, flags, check.is_ok()) }) else {
        // No stack location for us: complete it where it stands.
        // SAFETY: as above.
        unsafe {
            (*irp).IoStatus.set(STATUS_INVALID_PARAMETER, 0);
            IoCompleteRequest(irp, IO_NO_INCREMENT);
        }
        return Err(STATUS_INVALID_PARAMETER);
    };
    match check {
        Ok(()) => Ok(request),
        Err(status) => {
            request.complete(status, 0);
            Err(status)
        }
    }
}
