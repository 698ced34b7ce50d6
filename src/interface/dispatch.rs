//! The dispatch table consumers get from IOCTL_WSKTLS_GET_PROVIDER, and its six calls.
//!
//! Every call follows WskSend's conventions: the caller owns the IRP and gives us its
//! next stack location; we return STATUS_PENDING and complete it later, or complete it at
//! once and return the same status. Only a null IRP is returned without a completion
//! (there is nothing to complete). Connect, Disconnect and Close do their work on a work
//! item at PASSIVE_LEVEL, so all six may be called at IRQL <= DISPATCH_LEVEL.

use core::sync::atomic::Ordering;

use super::params;
use super::provider::{Entered, Provider};
use super::request::ConsumerRequest;
use super::table::{self, Slot, SlotRef};
use crate::channel::{Channel, ChannelConfig};
use crate::nt::{
    DEVICE_OBJECT, IO_NO_INCREMENT, IRP, IoCompleteRequest, NTSTATUS, PVOID, PoolBox,
    STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED, STATUS_PENDING,
    STATUS_SUCCESS, WSK_BUF, WSKTLS_CHANNEL, WSKTLS_CONNECT_PARAMETERS, WSKTLS_DISPATCH, WSKTLS_PROVIDER,
    WSKTLS_VERSION_1_0, WorkItem, pool_tag,
};

const TAG_CONNECT: u32 = pool_tag(b"WtCn");

/// The table every consumer gets.
pub static DISPATCH: WSKTLS_DISPATCH = WSKTLS_DISPATCH {
    Version: WSKTLS_VERSION_1_0,
    Reserved: 0,
    Size: size_of::<WSKTLS_DISPATCH>() as u32,
    Connect: Some(connect),
    Send: Some(send),
    Receive: Some(receive),
    Disconnect: Some(disconnect),
    Close: Some(close),
    Query: Some(super::query::query),
};

/// Completes a call's IRP at once with `status`, which the call also returns. An IRP with
/// no stack location for us is completed where it stands.
///
/// # Safety
/// `irp` is a valid IRP the consumer handed us and does not touch until it completes.
unsafe fn refuse(irp: *mut IRP, status: NTSTATUS) -> NTSTATUS {
    // SAFETY: forwarded contract.
    match unsafe { ConsumerRequest::take_call(irp, false) } {
        Some(request) => request.complete(status, 0),
        // SAFETY: as above.
        None => unsafe {
            (*irp).IoStatus.set(status, 0);
            IoCompleteRequest(irp, IO_NO_INCREMENT);
        },
    }
    status
}

/// Takes a call's IRP for later completion, or completes it with STATUS_INVALID_PARAMETER
/// when it has no stack location for us.
///
/// # Safety
/// As for [`refuse`].
unsafe fn take(irp: *mut IRP) -> Result<ConsumerRequest, NTSTATUS> {
    // SAFETY: forwarded contract.
    unsafe { ConsumerRequest::take_call(irp, true) }.ok_or_else(|| {
        // SAFETY: as above; nothing was changed in the IRP.
        unsafe { refuse(irp, STATUS_INVALID_PARAMETER) }
    })
}

/// A Connect waiting for its work item.
struct Pending {
    config: ChannelConfig,
    request: ConsumerRequest,
    out: *mut *mut WSKTLS_CHANNEL,
    slot: *const Slot,
    provider: *const Provider,
    work: WorkItem,
}

/// `PFN_WSKTLS_CONNECT`.
///
/// # Safety
/// The documented contract: `provider` from IOCTL_WSKTLS_GET_PROVIDER, `parameters` valid
/// for the call, `channel` valid until the IRP completes, `irp` the caller's.
unsafe extern "system" fn connect(
    provider: *mut WSKTLS_PROVIDER,
    parameters: *const WSKTLS_CONNECT_PARAMETERS,
    channel: *mut *mut WSKTLS_CHANNEL,
    irp: *mut IRP,
) -> NTSTATUS {
    if irp.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: forwarded contract.
    match unsafe { start_connect(provider, parameters, channel, irp) } {
        Ok(()) => STATUS_PENDING,
        // SAFETY: not taken: still the caller's IRP to complete.
        Err(status) => unsafe { refuse(irp, status) },
    }
}

/// # Safety
/// As for [`connect`]; on `Err` the IRP is untouched.
unsafe fn start_connect(
    provider: *mut WSKTLS_PROVIDER,
    parameters: *const WSKTLS_CONNECT_PARAMETERS,
    out: *mut *mut WSKTLS_CHANNEL,
    irp: *mut IRP,
) -> Result<(), NTSTATUS> {
    // SAFETY: forwarded contract.
    let provider = unsafe { Provider::from_handle(provider)? };
    if out.is_null() {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let entered = provider.enter()?;
    // SAFETY: forwarded contract.
    let config = unsafe { params::capture(parameters, &provider.defaults)? };
    // SAFETY: `out` is the caller's, valid until completion.
    unsafe { *out = core::ptr::null_mut() };
    let slot: *const Slot = provider.table().reserve()?;
    // SAFETY: the provider's device, which outlives this connect (its rundown).
    let pending = unsafe { WorkItem::new(device_of(slot)) }.and_then(|work| {
        PoolBox::new(
            TAG_CONNECT,
            Pending { config, request: ConsumerRequest::NONE, out, slot, provider, work },
        )
    });
    let mut pending = match pending {
        Ok(p) => p,
        Err(status) => {
            // SAFETY: reserved above and not published.
            provider.table().release(unsafe { &*slot });
            return Err(status);
        }
    };
    // Nothing can fail from here on: the IRP becomes ours.
    // SAFETY: the caller's IRP, checked for a stack location.
    pending.request = match unsafe { ConsumerRequest::take_call(irp, true) } {
        Some(r) => r,
        None => {
            // SAFETY: as above.
            provider.table().release(unsafe { &*slot });
            return Err(STATUS_INVALID_PARAMETER);
        }
    };
    entered.keep();
    let pending = pending.into_raw();
    // SAFETY: a fresh item; the context is ours until the routine takes it back.
    unsafe { (*pending).work.queue(connect_work, pending.cast()) };
    Ok(())
}

/// The work item's device: the one the slot's own work items were made with.
fn device_of(slot: *const Slot) -> *mut DEVICE_OBJECT {
    // SAFETY: a reserved slot of a live table.
    unsafe { (*slot).device() }
}

/// Connect's work item: connects, handshakes, publishes the handle, completes the IRP.
unsafe extern "system" fn connect_work(_device: *mut DEVICE_OBJECT, context: PVOID) {
    // SAFETY: the context is the Pending that start_connect gave up.
    let pending = unsafe { PoolBox::from_raw(context.cast::<Pending>(), TAG_CONNECT) };
    // SAFETY: the provider outlives the rundown this connect holds; the slot, the table.
    let (provider, slot) = unsafe { (&*pending.provider, &*pending.slot) };
    // SAFETY: kept by start_connect.
    let entered = unsafe { Entered::adopt(provider) };
    let opened = match entered.client() {
        Some(client) => Channel::connect(client, &pending.config),
        None => Err(crate::nt::STATUS_DEVICE_NOT_READY),
    };
    let status = match opened.and_then(table::boxed) {
        Ok(channel) => {
            let published = provider.table().publish(slot, channel);
            match published {
                Ok(handle) => {
                    // SAFETY: the caller's storage, valid until the IRP completes.
                    unsafe { pending.out.write(handle) };
                    STATUS_SUCCESS
                }
                Err(channel) => {
                    // The device went away during the handshake.
                    drop(channel);
                    provider.table().release(slot);
                    crate::nt::STATUS_DEVICE_REMOVED
                }
            }
        }
        Err(status) => {
            provider.table().release(slot);
            status
        }
    };
    let request = pending.request;
    // The work item goes with the Pending; the I/O manager holds the device until we return.
    drop(pending);
    request.complete(status, 0);
    drop(entered);
}

/// `PFN_WSKTLS_SEND`: WskSend's contract on a channel.
///
/// # Safety
/// The documented contract: `channel` from Connect (or stale), `buffer` describing locked
/// pages valid until completion, `irp` the caller's.
unsafe extern "system" fn send(
    channel: *mut WSKTLS_CHANNEL,
    buffer: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: forwarded contract.
    unsafe { transfer(channel, buffer, flags, irp, super::send) }
}

/// `PFN_WSKTLS_RECEIVE`: WskReceive's contract on a channel.
///
/// # Safety
/// As for [`send`].
unsafe extern "system" fn receive(
    channel: *mut WSKTLS_CHANNEL,
    buffer: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: forwarded contract.
    unsafe { transfer(channel, buffer, flags, irp, super::receive) }
}

/// # Safety
/// As for [`send`].
unsafe fn transfer(
    channel: *mut WSKTLS_CHANNEL,
    buffer: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
    call: unsafe fn(&Channel, &WSK_BUF, u32, *mut IRP) -> NTSTATUS,
) -> NTSTATUS {
    if irp.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: forwarded contract.
    let Some(buffer) = (unsafe { buffer.as_ref() }) else {
        // SAFETY: the caller's IRP.
        return unsafe { refuse(irp, STATUS_INVALID_PARAMETER) };
    };
    // SAFETY: forwarded contract.
    let held = match unsafe { table::acquire(channel) } {
        Ok(held) => held,
        // SAFETY: the caller's IRP.
        Err(status) => return unsafe { refuse(irp, status) },
    };
    match held.channel() {
        // SAFETY: forwarded contract; the reference keeps the channel for the call.
        Ok(channel) => unsafe { call(channel, buffer, flags, irp) },
        // SAFETY: the caller's IRP.
        Err(status) => unsafe { refuse(irp, status) },
    }
}

/// `PFN_WSKTLS_DISCONNECT`: our close_notify after every byte already queued, then a
/// graceful TCP disconnect, within the service's DefaultDisconnectTimeoutMs. Flags must be
/// zero; one Disconnect at a time (STATUS_INVALID_DEVICE_STATE otherwise).
///
/// # Safety
/// As for [`send`].
unsafe extern "system" fn disconnect(channel: *mut WSKTLS_CHANNEL, flags: u32, irp: *mut IRP) -> NTSTATUS {
    if irp.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    if flags != 0 {
        // SAFETY: the caller's IRP.
        return unsafe { refuse(irp, STATUS_NOT_SUPPORTED) };
    }
    // SAFETY: forwarded contract.
    let held = match unsafe { table::acquire(channel) } {
        Ok(held) => held,
        // SAFETY: the caller's IRP.
        Err(status) => return unsafe { refuse(irp, status) },
    };
    let slot = held.slot();
    if slot
        .disconnect_irp
        .compare_exchange(core::ptr::null_mut(), irp, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // SAFETY: the caller's IRP.
        return unsafe { refuse(irp, STATUS_INVALID_DEVICE_STATE) };
    }
    // SAFETY: the caller's IRP.
    match unsafe { take(irp) } {
        Ok(_) => {
            held.keep();
            // SAFETY: the slot's own item, idle (one Disconnect at a time); slots outlive it.
            unsafe { slot.disconnect_work.queue(disconnect_work, slot as *const Slot as PVOID) };
            STATUS_PENDING
        }
        Err(status) => {
            slot.disconnect_irp.store(core::ptr::null_mut(), Ordering::Release);
            status
        }
    }
}

unsafe extern "system" fn disconnect_work(_device: *mut DEVICE_OBJECT, context: PVOID) {
    // SAFETY: the slot Disconnect queued us for, alive as long as the table.
    let slot = unsafe { &*context.cast::<Slot>() };
    // SAFETY: Disconnect kept this reference for us.
    let held = unsafe { SlotRef::adopt(slot) };
    let timeout = slot.provider().defaults.disconnect_timeout_ms;
    let status = match held.channel() {
        Ok(channel) => channel.disconnect(timeout).err().unwrap_or(STATUS_SUCCESS),
        Err(status) => status,
    };
    let irp = slot.disconnect_irp.swap(core::ptr::null_mut(), Ordering::AcqRel);
    drop(held);
    complete_taken(irp, status);
}

/// `PFN_WSKTLS_CLOSE`: always allowed on a handle from Connect; what is pending on the
/// channel completes with STATUS_CANCELLED, then the channel is closed and wiped, then the
/// IRP completes. A second Close, or a stale handle, is STATUS_INVALID_HANDLE.
///
/// # Safety
/// As for [`send`].
unsafe extern "system" fn close(channel: *mut WSKTLS_CHANNEL, irp: *mut IRP) -> NTSTATUS {
    if irp.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: forwarded contract.
    let slot = match unsafe { table::begin_close(channel) } {
        Ok(slot) => slot,
        // SAFETY: the caller's IRP.
        Err(status) => return unsafe { refuse(irp, status) },
    };
    // SAFETY: the caller's IRP. A Close without a stack location for us is completed
    // with STATUS_INVALID_PARAMETER, and the channel is still closed: Close cannot fail.
    let taken = unsafe { take(irp) }.is_ok();
    let irp = if taken { irp } else { core::ptr::null_mut() };
    slot.close_irp.store(irp, Ordering::Release);
    // SAFETY: the slot's own item, idle (CLOSING happens once per generation).
    unsafe { slot.close_work.queue(close_work, slot as *const Slot as PVOID) };
    if taken { STATUS_PENDING } else { STATUS_INVALID_PARAMETER }
}

unsafe extern "system" fn close_work(_device: *mut DEVICE_OBJECT, context: PVOID) {
    // SAFETY: the slot Close queued us for, alive as long as the table.
    let slot = unsafe { &*context.cast::<Slot>() };
    let irp = slot.close_irp.swap(core::ptr::null_mut(), Ordering::AcqRel);
    slot.end(crate::nt::STATUS_CANCELLED);
    let provider = slot.provider();
    provider.table().release(slot);
    provider.slot_freed();
    complete_taken(irp, STATUS_SUCCESS);
}

/// Completes an IRP taken with [`take`] (none when null).
fn complete_taken(irp: *mut IRP, status: NTSTATUS) {
    if !irp.is_null() {
        // SAFETY: an IRP we took; this is its one completion. Its stack location is ours.
        unsafe {
            (*irp).IoStatus.set(status, 0);
            IoCompleteRequest(irp, IO_NO_INCREMENT);
        }
    }
}
