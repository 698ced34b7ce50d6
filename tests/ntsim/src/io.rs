//! The I/O manager: IRP allocation, completion (the walk up the stack locations with the
//! control flags honoured, STATUS_MORE_PROCESSING_REQUIRED stopping it, PendingReturned
//! propagated), reuse, cancel, and the IRP life-cycle checks.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::mem::size_of;
use std::sync::Mutex;

use wsktls_nt::{
    BOOLEAN, CCHAR, IO_STACK_LOCATION, IO_TYPE_IRP, IRP, IoGetCurrentIrpStackLocation, IoMarkIrpPending,
    IoSetCancelRoutine, IoSetNextIrpStackLocation, IoSizeOfIrp, KIRQL, KSPIN_LOCK, NT_SUCCESS, NTSTATUS,
    SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS, SL_PENDING_RETURNED,
    STATUS_INVALID_PARAMETER, STATUS_MORE_PROCESSING_REQUIRED,
};

use crate::faults::{AllocKind, allocation_fails};
use crate::irql::{current_irql, require_dispatch, set_irql};
use crate::kernel::{AddrMap, KernelInner, current, lock};
use crate::mdl::{Segment, hash_segments};
use crate::pool::{raw_alloc, raw_free};
use crate::verifier::{Rule, report};
use crate::xstate;

/// Where an IRP is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IrpState {
    /// Owned by the driver; never handed down since allocation or IoReuseIrp.
    Fresh,
    /// Handed to the WSK provider, not yet completed.
    InFlight,
    /// Completed; owned by the driver again (a completion routine returned
    /// STATUS_MORE_PROCESSING_REQUIRED).
    Completed,
}

struct IrpRecord {
    size: usize,
    state: IrpState,
    /// For sends: the hash of the bytes when submitted.
    send_hash: Option<(u64, Vec<Segment>)>,
}

#[derive(Default)]
pub(crate) struct Irps {
    live: Mutex<AddrMap<IrpRecord>>,
    /// IofCallDriver calls in progress, by (IRP, stack location): how many (a driver that
    /// skips its location sends on in the same one) and whether the completion walk saw
    /// SL_PENDING_RETURNED there (it clears Control as it passes).
    calls: Mutex<HashMap<(usize, i8), (u32, bool)>>,
    cancel_lock: CancelLock,
}

#[derive(Default)]
struct CancelLock(UnsafeCell<KSPIN_LOCK>);
// SAFETY: the word is only touched through the spin-lock functions, which use atomics.
unsafe impl Sync for CancelLock {}
// SAFETY: as above.
unsafe impl Send for CancelLock {}

impl Irps {
    pub(crate) fn outstanding(&self) -> usize {
        lock(&self.live).len()
    }

    pub(crate) fn check_unload(&self) {
        let live = lock(&self.live);
        if !live.is_empty() {
            let states: Vec<String> = live.iter().map(|(a, r)| format!("{a:#x} ({:?})", r.state)).collect();
            drop(live);
            report(Rule::IrpLeaked, format!("IRP(s) still allocated at unload: {}", states.join(", ")));
        }
    }

    /// The provider takes an IRP for a request: it must be fresh, and have a stack location
    /// for the provider (the one the client's completion routine is in).
    pub(crate) fn submit(&self, irp: *mut IRP, what: &str) -> bool {
        let mut live = lock(&self.live);
        let Some(rec) = live.get_mut(&(irp as usize)) else {
            drop(live);
            report(Rule::BadParameter, format!("{what}: {irp:?} is not an IRP from IoAllocateIrp"));
            return false;
        };
        match rec.state {
            IrpState::Fresh => {}
            IrpState::InFlight => {
                drop(live);
                report(Rule::IrpInFlightMisuse, format!("{what}: IRP {irp:?} is already in flight"));
                return false;
            }
            IrpState::Completed => {
                drop(live);
                report(
                    Rule::IrpSubmittedWithoutReuse,
                    format!("{what}: IRP {irp:?} completed before and was not IoReuseIrp'd"),
                );
                return false;
            }
        }
        // SAFETY: a live IRP from IoAllocateIrp.
        let location = unsafe { (*irp).CurrentLocation };
        if location <= 1 {
            drop(live);
            report(
                Rule::BadParameter,
                format!("{what}: IRP {irp:?} has no stack location left for the provider"),
            );
            return false;
        }
        rec.state = IrpState::InFlight;
        drop(live);
        // SAFETY: checked above that a lower location exists.
        unsafe { IoSetNextIrpStackLocation(irp) };
        true
    }

    /// IofCallDriver takes an IRP: fresh ones go in flight, ones already in flight are
    /// being passed down a stack. Makes the next stack location current and returns its
    /// index, or the status to return when the IRP cannot be sent.
    pub(crate) fn call_begin(&self, irp: *mut IRP) -> Result<i8, NTSTATUS> {
        let mut live = lock(&self.live);
        let Some(rec) = live.get_mut(&(irp as usize)) else {
            drop(live);
            report(Rule::BadParameter, format!("IofCallDriver: {irp:?} is not an IRP from IoAllocateIrp"));
            return Err(STATUS_INVALID_PARAMETER);
        };
        if rec.state == IrpState::Completed {
            drop(live);
            report(
                Rule::IrpSubmittedWithoutReuse,
                format!("IofCallDriver: IRP {irp:?} completed before and was not IoReuseIrp'd"),
            );
            return Err(STATUS_INVALID_PARAMETER);
        }
        // SAFETY: a live IRP, which cannot be freed while `live` is locked.
        let location = unsafe { (*irp).CurrentLocation };
        if location <= 1 {
            drop(live);
            report(
                Rule::NoIrpStackLocation,
                format!("IofCallDriver: IRP {irp:?} has no stack location left"),
            );
            return Err(STATUS_INVALID_PARAMETER);
        }
        rec.state = IrpState::InFlight;
        drop(live);
        lock(&self.calls).entry((irp as usize, location - 1)).or_default().0 += 1;
        // SAFETY: checked above that a lower location exists.
        unsafe { IoSetNextIrpStackLocation(irp) };
        Ok(location - 1)
    }

    /// The dispatch routine of an IofCallDriver call returned: whether the IRP was marked
    /// pending in the stack location it had.
    pub(crate) fn call_end(&self, irp: *mut IRP, location: i8) -> bool {
        let seen = {
            let mut calls = lock(&self.calls);
            let key = (irp as usize, location);
            let (depth, seen) = calls.get(&key).copied().unwrap_or((1, false));
            if depth <= 1 {
                calls.remove(&key);
            } else {
                calls.insert(key, (depth - 1, seen));
            }
            seen
        };
        if seen {
            return true;
        }
        let live = lock(&self.live);
        if !live.contains_key(&(irp as usize)) {
            return false;
        }
        // SAFETY: live (freeing takes `live`); a location the completion walk has not
        // passed still holds the dispatch routine's Control byte.
        unsafe {
            if (*irp).CurrentLocation > location || location > (*irp).StackCount {
                return false;
            }
            let base = (irp as *mut u8).add(size_of::<IRP>()) as *mut IO_STACK_LOCATION;
            std::ptr::read_volatile(std::ptr::addr_of!((*base.add(location as usize - 1)).Control))
                & SL_PENDING_RETURNED
                != 0
        }
    }

    /// The completion walk passed `location` with SL_PENDING_RETURNED set in it.
    fn note_pending(&self, irp: *mut IRP, location: i8) {
        if let Some(call) = lock(&self.calls).get_mut(&(irp as usize, location)) {
            call.1 = true;
        }
    }

    /// A completion routine mid-stack stopped the walk: the driver that owns that stack
    /// location owns the IRP again and will complete it once more.
    fn back_in_flight(&self, irp: *mut IRP) {
        if let Some(rec) = lock(&self.live).get_mut(&(irp as usize)) {
            rec.state = IrpState::InFlight;
        }
    }

    /// Remembers the bytes of a send so completion can tell whether they changed.
    pub(crate) fn remember_send(&self, irp: *mut IRP, segments: Vec<Segment>) {
        if crate::kernel::current().unchecked_send_buffers {
            return;
        }
        let h = hash_segments(&segments);
        if let Some(rec) = lock(&self.live).get_mut(&(irp as usize)) {
            rec.send_hash = Some((h, segments));
        }
    }
}

#[unsafe(no_mangle)]
pub extern "system" fn IoAllocateIrp(stack_size: CCHAR, _charge_quota: BOOLEAN) -> *mut IRP {
    let k = current();
    if !require_dispatch("IoAllocateIrp") || allocation_fails(AllocKind::Irp, None) {
        return std::ptr::null_mut();
    }
    if stack_size < 1 {
        report(Rule::BadParameter, format!("IoAllocateIrp({stack_size})"));
        return std::ptr::null_mut();
    }
    let irp = new_irp(stack_size);
    if !irp.is_null() {
        k.counters.allocations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    irp
}

/// An IRP for the I/O and PnP managers' own requests: tracked like the driver's, but
/// never failed by fault injection nor counted in `Stats::allocations`.
pub(crate) fn new_irp(stack_size: CCHAR) -> *mut IRP {
    let size = IoSizeOfIrp(stack_size);
    let irp = raw_alloc(size) as *mut IRP;
    if irp.is_null() {
        return irp;
    }
    // SAFETY: fresh zeroed allocation of IoSizeOfIrp(stack_size) bytes (IoInitializeIrp).
    unsafe { initialize(irp, size, stack_size) };
    lock(&current().irps.live)
        .insert(irp as usize, IrpRecord { size, state: IrpState::Fresh, send_hash: None });
    irp
}

/// IoInitializeIrp: header fields, and the current location one past the last.
unsafe fn initialize(irp: *mut IRP, size: usize, stack_size: CCHAR) {
    // SAFETY: per the caller, `irp` points at `size` writable bytes.
    unsafe {
        (irp as *mut u8).write_bytes(0, size);
        (*irp).Type = IO_TYPE_IRP;
        (*irp).Size = size as u16;
        (*irp).StackCount = stack_size;
        (*irp).CurrentLocation = stack_size + 1;
        let list = std::ptr::addr_of_mut!((*irp).ThreadListEntry);
        wsktls_nt::InitializeListHead(list);
        (*irp).Tail.Overlay.CurrentStackLocation = (irp as *mut u8)
            .add(size_of::<IRP>() + stack_size as usize * size_of::<IO_STACK_LOCATION>())
            .cast();
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoFreeIrp(irp: *mut IRP) {
    let k = current();
    require_dispatch("IoFreeIrp");
    let mut live = lock(&k.irps.live);
    let Some(rec) = live.get(&(irp as usize)) else {
        drop(live);
        report(Rule::BadParameter, format!("IoFreeIrp({irp:?}): not a live IRP (double free?)"));
        return;
    };
    if rec.state == IrpState::InFlight {
        drop(live);
        report(Rule::IrpInFlightMisuse, format!("IoFreeIrp({irp:?}) while the IRP is in flight"));
        return;
    }
    let size = rec.size;
    live.remove(&(irp as usize));
    drop(live);
    // SAFETY: allocated by IoAllocateIrp with this size; no longer tracked.
    unsafe { raw_free(irp.cast(), size) };
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoReuseIrp(irp: *mut IRP, status: NTSTATUS) {
    let k = current();
    let mut live = lock(&k.irps.live);
    let Some(rec) = live.get_mut(&(irp as usize)) else {
        drop(live);
        report(Rule::BadParameter, format!("IoReuseIrp({irp:?}): not a live IRP"));
        return;
    };
    if rec.state == IrpState::InFlight {
        drop(live);
        report(Rule::IrpInFlightMisuse, format!("IoReuseIrp({irp:?}) while the IRP is in flight"));
        return;
    }
    rec.state = IrpState::Fresh;
    rec.send_hash = None;
    let size = rec.size;
    drop(live);
    // SAFETY: a live IRP that the caller owns; reinitialised as IoReuseIrp does, keeping
    // its allocation flags.
    unsafe {
        if (*irp).CancelRoutine.is_some() {
            report(
                Rule::CancelRoutineStillSet,
                format!("IoReuseIrp({irp:?}) with its cancel routine still set"),
            );
        }
        let flags = (*irp).AllocationFlags;
        let stack = (*irp).StackCount;
        initialize(irp, size, stack);
        (*irp).AllocationFlags = flags;
        (*irp).IoStatus.set(status, 0);
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IofCompleteRequest(irp: *mut IRP, _boost: CCHAR) {
    // SAFETY: forwarded from the caller.
    unsafe { complete_request(&current(), irp) }
}

/// IofCompleteRequest in `k`, the kernel this thread is in.
unsafe fn complete_request(k: &KernelInner, irp: *mut IRP) {
    require_dispatch("IoCompleteRequest");
    {
        let mut live = lock(&k.irps.live);
        let Some(rec) = live.get_mut(&(irp as usize)) else {
            drop(live);
            report(Rule::BadParameter, format!("IoCompleteRequest({irp:?}): not a live IRP"));
            return;
        };
        if rec.state == IrpState::Completed {
            drop(live);
            report(Rule::IrpCompletedTwice, format!("IoCompleteRequest({irp:?}): the IRP already completed"));
            return;
        }
        rec.state = IrpState::Completed;
    }
    // SAFETY: per the caller.
    unsafe { walk_completed(irp) };
}

/// The rest of IofCompleteRequest, once the IRP is recorded as completed.
///
/// # Safety
/// A live IRP being completed by its current owner.
unsafe fn walk_completed(irp: *mut IRP) {
    // SAFETY: per the caller.
    unsafe {
        if (*irp).CancelRoutine.is_some() {
            report(
                Rule::CancelRoutineStillSet,
                format!("IoCompleteRequest({irp:?}) with its cancel routine still set"),
            );
        }
        walk_completion(irp)
    };
}

/// IopfCompleteRequest's walk: from the current stack location up, call each completion
/// routine whose control flags match the outcome; stop at STATUS_MORE_PROCESSING_REQUIRED.
unsafe fn walk_completion(irp: *mut IRP) {
    // SAFETY: `irp` is live and owned by this completion; stack pointers stay within its
    // allocation because CurrentLocation is checked against StackCount before each use.
    unsafe {
        if (*irp).CurrentLocation > (*irp).StackCount + 1 {
            report(
                Rule::IrpCompletedTwice,
                format!("IoCompleteRequest({irp:?}): CurrentLocation past the stack"),
            );
            return;
        }
        let status = (*irp).IoStatus.status();
        let mut sp = IoGetCurrentIrpStackLocation(irp);
        (*irp).CurrentLocation += 1;
        (*irp).Tail.Overlay.CurrentStackLocation = sp.add(1);
        while (*irp).CurrentLocation <= (*irp).StackCount + 1 {
            let control = (*sp).Control;
            (*irp).PendingReturned = control & SL_PENDING_RETURNED;
            if control & SL_PENDING_RETURNED != 0 {
                current().irps.note_pending(irp, (*irp).CurrentLocation - 1);
            }
            let invoke = (NT_SUCCESS(status) && control & SL_INVOKE_ON_SUCCESS != 0)
                || (!NT_SUCCESS(status) && control & SL_INVOKE_ON_ERROR != 0)
                || ((*irp).Cancel != 0 && control & SL_INVOKE_ON_CANCEL != 0);
            let routine = (*sp).CompletionRoutine;
            let context = (*sp).Context;
            zero_stack_location(sp);
            match routine {
                Some(routine) if invoke => {
                    let device = if (*irp).CurrentLocation == (*irp).StackCount + 1 {
                        std::ptr::null_mut()
                    } else {
                        (*IoGetCurrentIrpStackLocation(irp)).DeviceObject
                    };
                    let irql = current_irql();
                    let saves = xstate::depth();
                    let r = routine(device, irp, context);
                    xstate::check_returned(saves, || format!("the completion routine of {irp:?}"));
                    if current_irql() != irql {
                        report(
                            Rule::IrqlMismatch,
                            format!(
                                "completion routine of {irp:?} returned at IRQL {}, called at {irql}",
                                current_irql()
                            ),
                        );
                        set_irql(irql);
                    }
                    if r == STATUS_MORE_PROCESSING_REQUIRED {
                        if (*irp).CurrentLocation <= (*irp).StackCount {
                            current().irps.back_in_flight(irp);
                        }
                        return;
                    }
                }
                _ => {
                    if (*irp).PendingReturned != 0 && (*irp).CurrentLocation <= (*irp).StackCount {
                        IoMarkIrpPending(irp);
                    }
                }
            }
            sp = sp.add(1);
            (*irp).CurrentLocation += 1;
            (*irp).Tail.Overlay.CurrentStackLocation = sp.add(1);
        }
        if (*irp).Tail.Overlay.Thread.is_null() {
            report(
                Rule::CompletionFellThrough,
                format!(
                    "IRP {irp:?} has no thread, yet no completion routine returned STATUS_MORE_PROCESSING_REQUIRED"
                ),
            );
        }
    }
}

unsafe fn zero_stack_location(sp: *mut IO_STACK_LOCATION) {
    // SAFETY: per the caller, `sp` is inside the IRP's stack array.
    unsafe {
        (*sp).MinorFunction = 0;
        (*sp).Flags = 0;
        (*sp).Control = 0;
        (*sp).CompletionRoutine = None;
        (*sp).Context = std::ptr::null_mut();
    }
}

/// The provider completes a request it took with [`Irps::submit`]: status and
/// information in the IRP, the in-flight bytes released and checked, then the walk.
pub(crate) fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) {
    complete_in(&current(), irp, status, information);
}

/// [`complete`] in `k`, the kernel this thread is in (for a caller that has it already).
pub(crate) fn complete_in(k: &KernelInner, irp: *mut IRP, status: NTSTATUS, information: usize) {
    let send = {
        let mut live = lock(&k.irps.live);
        match live.get_mut(&(irp as usize)) {
            Some(rec) if rec.state == IrpState::InFlight => {
                // What IofCompleteRequest records, done here under the same lock.
                rec.state = IrpState::Completed;
                rec.send_hash.take()
            }
            _ => {
                drop(live);
                report(
                    Rule::IrpCompletedTwice,
                    format!("provider completion of {irp:?}, which is not in flight"),
                );
                return;
            }
        }
    };
    if let Some((hash, segments)) = send {
        if hash_segments(&segments) != hash {
            report(
                Rule::InFlightBufferWritten,
                format!("the send buffer of IRP {irp:?} changed while the send was in flight"),
            );
        }
    }
    k.mdls.clear_in_flight(irp);
    require_dispatch("IoCompleteRequest");
    // SAFETY: the provider owns the in-flight IRP until this call hands it back.
    unsafe {
        IoSetCancelRoutine(irp, None);
        (*irp).IoStatus.set(status, information);
        walk_completed(irp);
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoCancelIrp(irp: *mut IRP) -> BOOLEAN {
    require_dispatch("IoCancelIrp");
    if !lock(&current().irps.live).contains_key(&(irp as usize)) {
        report(Rule::BadParameter, format!("IoCancelIrp({irp:?}): not a live IRP"));
        return 0;
    }
    let mut irql: KIRQL = 0;
    // SAFETY: `irp` is owned by the caller (the driver that allocated it).
    unsafe {
        IoAcquireCancelSpinLock(&mut irql);
        (*irp).Cancel = 1;
        match IoSetCancelRoutine(irp, None) {
            Some(routine) => {
                (*irp).CancelIrql = irql;
                routine(std::ptr::null_mut(), irp);
                1
            }
            None => {
                IoReleaseCancelSpinLock(irql);
                0
            }
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoAcquireCancelSpinLock(irql: *mut KIRQL) {
    let k = current();
    // SAFETY: the cancel lock word lives as long as the kernel; `irql` is the caller's.
    unsafe { *irql = crate::sync::KeAcquireSpinLockRaiseToDpc(k.irps.cancel_lock.0.get()) };
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoReleaseCancelSpinLock(irql: KIRQL) {
    let k = current();
    // SAFETY: as above; the caller holds the lock.
    crate::sync::KeReleaseSpinLock(k.irps.cancel_lock.0.get(), irql);
}
