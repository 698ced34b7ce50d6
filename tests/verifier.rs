//! The verifier can fail: each test commits one bug on purpose and asserts the report
//! ntsim makes of it. Every other test in the workspace fails on any report.

mod common;

use std::ffi::c_void;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::{Done, EchoServer, Notify, TAG_TEST as TAG};
use ntsim::{Config, Faults, Kernel, Report, Rule, with_irql};
use wsktls::nt::{
    DEVICE_OBJECT, DISPATCH_LEVEL, ExAllocatePool2, ExFreePoolWithTag, FALSE, HIGH_LEVEL, IRP, IoAllocateIrp,
    IoAllocateMdl, IoCompleteRequest, IoFreeIrp, IoFreeMdl, IoSetCompletionRoutine,
    IoSetNextIrpStackLocation, KeRestoreExtendedProcessorState, KeSaveExtendedProcessorState,
    MAXIMUM_EXPANSION_SIZE, MDL, MmBuildMdlForNonPagedPool, NTSTATUS, PIO_COMPLETION_ROUTINE,
    POOL_FLAG_NON_PAGED, PoolBuffer, STATUS_INVALID_PARAMETER, STATUS_INVALID_PARAMETER_3,
    STATUS_INVALID_PARAMETER_4, STATUS_MORE_PROCESSING_REQUIRED, STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
    WSK_BUF, XSTATE_MASK_AVX, XSTATE_MASK_LEGACY, XSTATE_SAVE, system_random, with_expanded_stack,
};
use wsktls::wsk::{Request, Socket, WskClient};

fn reported(reports: &[Report], rule: Rule) -> bool {
    reports.iter().any(|r| r.rule == rule)
}

/// Boots a kernel whose sends stay in flight for a third of a second: long enough to
/// misbehave meanwhile.
fn slow_sends() -> Kernel {
    let hold = Duration::from_millis(300);
    let faults = Faults { pend_every_send: true, completion_delay: Some((hold, hold)), ..Faults::default() };
    Kernel::boot_with(Config { faults, ..Config::default() })
}

/// Runs `f` with a socket connected to a loopback echo server, then closes everything.
fn connected(kernel: &Kernel, f: impl FnOnce(&Socket)) {
    common::with_connection(kernel, &EchoServer::start("127.0.0.1"), |socket| f(&socket));
}

/// Sends `length` bytes of the chain at `mdl`; returns the request and its outcome channel.
fn send(socket: &Socket, mdl: *mut MDL, offset: u32, length: usize) -> (Request<Notify>, Receiver<Done>) {
    let (tx, rx) = mpsc::channel();
    let request = common::request(7, &tx);
    // SAFETY: the callers pass a live chain; what they do to it next is the test.
    unsafe { request.send(socket, WSK_BUF { Mdl: mdl, Offset: offset, Length: length }, 0) }.expect("issued");
    (request, rx)
}

fn outcome(rx: &Receiver<Done>) -> Done {
    rx.recv_timeout(Duration::from_secs(5)).expect("the send completes")
}

/// Nonpaged pool with its own MDL, managed by hand so a test can free one without the other.
fn raw_buffer(len: usize) -> (*mut c_void, *mut MDL) {
    // SAFETY: allocation calls on the entered kernel; results checked.
    unsafe {
        let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, len, TAG);
        assert!(!p.is_null());
        let mdl = IoAllocateMdl(p, len as u32, FALSE, FALSE, std::ptr::null_mut());
        assert!(!mdl.is_null());
        MmBuildMdlForNonPagedPool(mdl);
        (p, mdl)
    }
}

#[test]
fn mdl_freed_while_its_irp_is_in_flight_is_reported() {
    let kernel = slow_sends();
    connected(&kernel, |socket| {
        let (p, mdl) = raw_buffer(4096);
        let (_request, rx) = send(socket, mdl, 0, 4096);
        // SAFETY: the bug: the send still carries this MDL.
        unsafe { IoFreeMdl(mdl) };
        outcome(&rx);
        // SAFETY: the send has completed; the pool block is ours.
        unsafe { ExFreePoolWithTag(p, TAG) };
    });
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::MdlFreedInFlight), "{reports:?}");
    kernel.finish();
}

#[test]
fn pool_freed_while_a_send_carries_it_is_reported() {
    let kernel = slow_sends();
    connected(&kernel, |socket| {
        let buffer = PoolBuffer::new(4096, TAG).expect("buffer");
        let (_request, rx) = send(socket, buffer.mdl(), 0, 4096);
        drop(buffer); // the bug
        outcome(&rx);
    });
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::BufferFreedInFlight), "{reports:?}");
    kernel.finish();
}

#[test]
fn write_into_an_in_flight_send_buffer_is_reported() {
    let kernel = slow_sends();
    connected(&kernel, |socket| {
        let mut buffer = PoolBuffer::new(4096, TAG).expect("buffer");
        let (_request, rx) = send(socket, buffer.mdl(), 0, 4096);
        buffer.as_mut_slice()[100] ^= 0xFF; // the bug
        assert_eq!(outcome(&rx).status, STATUS_SUCCESS);
    });
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::InFlightBufferWritten), "{reports:?}");
    kernel.finish();
}

#[test]
fn mdl_chain_relinked_while_in_flight_is_reported() {
    let kernel = slow_sends();
    connected(&kernel, |socket| {
        let a = PoolBuffer::new(1000, TAG).expect("buffer");
        let b = PoolBuffer::new(1000, TAG).expect("buffer");
        // SAFETY: the chain is ours and idle.
        let head = unsafe { PoolBuffer::chain(&[&a, &b]) };
        let (_request, rx) = send(socket, head, 0, 2000);
        // SAFETY: relinking MDLs that the send carries is the bug.
        unsafe { PoolBuffer::chain(&[&b, &a]) };
        outcome(&rx);
    });
    let reports = kernel.take_reports();
    assert!(reports.iter().any(|r| r.rule == Rule::BadMdl && r.detail.contains("changed")), "{reports:?}");
    kernel.finish();
}

#[test]
fn a_send_left_alone_while_in_flight_is_not_reported() {
    let kernel = slow_sends();
    connected(&kernel, |socket| {
        let buffer = PoolBuffer::new(4096, TAG).expect("buffer");
        let (_request, rx) = send(socket, buffer.mdl(), 0, 4096);
        assert_eq!(outcome(&rx).status, STATUS_SUCCESS);
    });
    kernel.finish();
}

#[test]
fn wsk_buf_length_beyond_its_mdl_chain_is_reported_and_the_send_fails() {
    let kernel = Kernel::boot();
    connected(&kernel, |socket| {
        let a = PoolBuffer::new(1000, TAG).expect("buffer");
        let b = PoolBuffer::new(1000, TAG).expect("buffer");
        // SAFETY: the chain is ours and idle.
        let head = unsafe { PoolBuffer::chain(&[&a, &b]) };
        let (_request, rx) = send(socket, head, 10, 1991); // the bug: one byte past the chain
        assert_eq!(outcome(&rx).status, STATUS_INVALID_PARAMETER);
    });
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::WskBufBeyondChain), "{reports:?}");
    kernel.finish();
}

unsafe extern "system" fn keep_irp(_d: *mut DEVICE_OBJECT, _irp: *mut IRP, _c: *mut c_void) -> NTSTATUS {
    STATUS_MORE_PROCESSING_REQUIRED
}

unsafe extern "system" fn release_irp(_d: *mut DEVICE_OBJECT, _irp: *mut IRP, _c: *mut c_void) -> NTSTATUS {
    STATUS_SUCCESS
}

/// An IRP of one stack location, taken by a lower driver as WSK would take it.
fn irp_with_routine(routine: PIO_COMPLETION_ROUTINE) -> *mut IRP {
    irp_with_routine_and_context(routine, std::ptr::null_mut())
}

fn irp_with_routine_and_context(routine: PIO_COMPLETION_ROUTINE, context: *mut c_void) -> *mut IRP {
    // SAFETY: allocation and the wdm.h inlines on a fresh IRP we own.
    unsafe {
        let irp = IoAllocateIrp(1, FALSE);
        assert!(!irp.is_null());
        IoSetCompletionRoutine(irp, routine, context, true, true, true);
        IoSetNextIrpStackLocation(irp);
        (*irp).IoStatus.set(STATUS_SUCCESS, 0);
        irp
    }
}

#[test]
fn irp_completed_twice_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let irp = irp_with_routine(Some(keep_irp));
        // SAFETY: the second completion is the bug; then the IRP is freed.
        unsafe {
            IoCompleteRequest(irp, 0);
            IoCompleteRequest(irp, 0);
            IoFreeIrp(irp);
        }
    }
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::IrpCompletedTwice), "{reports:?}");
    kernel.finish();
}

#[test]
fn completion_routine_that_lets_the_io_manager_run_off_the_stack_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let irp = irp_with_routine(Some(release_irp)); // the bug: not MORE_PROCESSING_REQUIRED
        // SAFETY: completing and freeing our own IRP.
        unsafe {
            IoCompleteRequest(irp, 0);
            IoFreeIrp(irp);
        }
    }
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::CompletionFellThrough), "{reports:?}");
    kernel.finish();
}

#[test]
fn irp_leaked_at_unload_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        // SAFETY: the leak is the bug.
        assert!(!unsafe { IoAllocateIrp(1, FALSE) }.is_null());
    }
    let reports = kernel.shutdown();
    assert!(reported(&reports, Rule::IrpLeaked), "{reports:?}");
}

#[test]
fn pool_leaked_at_unload_is_reported_with_its_tag() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        std::mem::forget(PoolBuffer::new(1000, TAG).expect("buffer")); // the bug
    }
    let reports = kernel.shutdown();
    let leak = reports.iter().find(|r| r.rule == Rule::PoolLeak).expect("a pool leak report");
    assert!(leak.detail.contains("'Test': 1 block(s), 1000 bytes"), "{leak}");
    assert!(reported(&reports, Rule::MdlLeaked), "{reports:?}");
}

#[test]
fn passive_only_call_at_dispatch_level_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let r = with_irql(DISPATCH_LEVEL, "the test", WskClient::register); // the bug
        assert!(r.is_err(), "WskRegister refuses DISPATCH_LEVEL");
    }
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::IrqlTooHigh && r.detail.contains("WskRegister")),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn mdl_built_over_memory_that_is_not_nonpaged_pool_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut stack_bytes = [0u8; 64];
        // SAFETY: describing our own stack array; building it for pool is the bug.
        unsafe {
            let mdl = IoAllocateMdl(stack_bytes.as_mut_ptr().cast(), 64, FALSE, FALSE, std::ptr::null_mut());
            MmBuildMdlForNonPagedPool(mdl);
            IoFreeMdl(mdl);
        }
    }
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::MdlNotNonPagedPool), "{reports:?}");
    kernel.finish();
}

#[test]
fn system_rng_at_dispatch_level_is_reported_and_fills_nothing() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut key = [0u8; 32];
        let r = with_irql(DISPATCH_LEVEL, "the test", || system_random(&mut key)); // the bug
        assert_eq!(r, Err(STATUS_NOT_SUPPORTED));
        assert_eq!(key, [0u8; 32], "no byte was written");
    }
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::RngAboveAllowedIrql), "{reports:?}");
    kernel.finish();
}

/// The vector-state mask a driver running ring's AVX code saves.
const VECTOR_STATE: u64 = XSTATE_MASK_LEGACY | XSTATE_MASK_AVX;

fn save(storage: &mut XSTATE_SAVE) -> NTSTATUS {
    // SAFETY: our own storage, which outlives the save.
    unsafe { KeSaveExtendedProcessorState(VECTOR_STATE, storage) }
}

fn restore(storage: &mut XSTATE_SAVE) {
    // SAFETY: our own storage; whether a save is active there is up to the test.
    unsafe { KeRestoreExtendedProcessorState(storage) }
}

#[test]
fn extended_state_restored_out_of_order_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let (mut outer, mut inner) = (XSTATE_SAVE::zeroed(), XSTATE_SAVE::zeroed());
        assert_eq!(save(&mut outer), STATUS_SUCCESS);
        assert_eq!(save(&mut inner), STATUS_SUCCESS);
        restore(&mut outer); // the bug: the inner save is still active
        restore(&mut inner);
    }
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::ExtendedStateMisuse && r.detail.contains("LIFO")),
        "{reports:?}"
    );
    assert_eq!(reports.len(), 1, "the restore after it is in order again: {reports:?}");
    kernel.finish();
}

#[test]
fn extended_state_restore_without_a_save_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut never_saved = XSTATE_SAVE::zeroed();
        restore(&mut never_saved); // the bug
    }
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::ExtendedStateMisuse && r.detail.contains("never saved")),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn extended_state_restored_at_another_irql_than_its_save_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut storage = XSTATE_SAVE::zeroed();
        assert_eq!(save(&mut storage), STATUS_SUCCESS);
        with_irql(DISPATCH_LEVEL, "the test", || restore(&mut storage)); // the bug
    }
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::ExtendedStateMisuse && r.detail.contains("saved at IRQL 0")),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn extended_state_saved_above_dispatch_level_is_reported_and_fails() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut storage = XSTATE_SAVE::zeroed();
        let status = with_irql(HIGH_LEVEL, "the test", || save(&mut storage)); // the bug: as in an ISR
        assert!(!status.is_success(), "{status:?}");
    }
    let reports = kernel.take_reports();
    assert!(
        reports
            .iter()
            .any(|r| r.rule == Rule::IrqlTooHigh && r.detail.contains("KeSaveExtendedProcessorState")),
        "{reports:?}"
    );
    assert_eq!(kernel.stats().xstate_saves, 0, "nothing was saved");
    kernel.finish();
}

#[test]
fn extended_state_never_restored_is_reported_at_unload() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut storage = XSTATE_SAVE::zeroed();
        assert_eq!(save(&mut storage), STATUS_SUCCESS); // the bug: no restore
    }
    let reports = kernel.shutdown();
    assert!(reported(&reports, Rule::ExtendedStateNotRestored), "{reports:?}");
}

unsafe extern "system" fn save_and_return(
    _d: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the test passes an XSTATE_SAVE that outlives the completion.
    let storage = unsafe { &mut *(context as *mut XSTATE_SAVE) };
    save(storage); // the bug: the routine returns with the state saved
    STATUS_MORE_PROCESSING_REQUIRED
}

#[test]
fn completion_routine_returning_with_extended_state_saved_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut storage = XSTATE_SAVE::zeroed();
        let irp =
            irp_with_routine_and_context(Some(save_and_return), (&mut storage as *mut XSTATE_SAVE).cast());
        // SAFETY: completing and freeing our own IRP; the routine's storage outlives it.
        unsafe {
            with_irql(DISPATCH_LEVEL, "the test", || IoCompleteRequest(irp, 0));
            IoFreeIrp(irp);
        }
    }
    let reports = kernel.take_reports();
    assert!(
        reports
            .iter()
            .any(|r| r.rule == Rule::ExtendedStateNotRestored && r.detail.contains("completion routine")),
        "{reports:?}"
    );
    assert_eq!(reports.len(), 1, "reported once, not again at unload: {reports:?}");
    kernel.finish();
}

#[test]
fn stack_expansion_beyond_the_maximum_is_refused_and_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut ran = false;
        let r = with_expanded_stack(MAXIMUM_EXPANSION_SIZE + 1, || ran = true); // the bug
        assert_eq!(r, Err(STATUS_INVALID_PARAMETER_3));
        assert!(!ran, "a refused expansion runs nothing");
    }
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::BadParameter && r.detail.contains("MAXIMUM_EXPANSION_SIZE")),
        "{reports:?}"
    );
    assert_eq!(kernel.stats().stack_expansions, 0);
    kernel.finish();
}

#[test]
fn stack_expansion_at_dispatch_level_is_reported_and_refused() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut ran = false;
        let r = with_irql(DISPATCH_LEVEL, "the test", || with_expanded_stack(4096, || ran = true)); // the bug
        assert_eq!(r, Err(STATUS_INVALID_PARAMETER_4));
        assert!(!ran, "a refused expansion runs nothing");
    }
    let reports = kernel.take_reports();
    assert!(
        reports
            .iter()
            .any(|r| r.rule == Rule::IrqlTooHigh && r.detail.contains("KeExpandKernelStackAndCallout")),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn stack_expansion_callout_returning_with_extended_state_saved_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let mut storage = XSTATE_SAVE::zeroed();
        let r = with_expanded_stack(4096, || save(&mut storage)); // the bug: no restore inside
        assert_eq!(r, Ok(STATUS_SUCCESS));
    }
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::ExtendedStateNotRestored
            && r.detail.contains("KeExpandKernelStackAndCallout callout")),
        "{reports:?}"
    );
    assert_eq!(reports.len(), 1, "reported once, not again at unload: {reports:?}");
    kernel.finish();
}

#[test]
#[should_panic(expected = "ntsim verifier: 1 report(s); replay with NTSIM_SEED=")]
fn a_report_nobody_expected_fails_the_test_and_names_the_seed() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        // SAFETY: the leak is the bug.
        let _leaked = unsafe { IoAllocateIrp(1, FALSE) };
    }
    drop(kernel);
}
