//! The verifier can fail: each test commits one bug on purpose and asserts the report
//! ntsim makes of it. Every other test in the workspace fails on any report.

mod common;

use std::ffi::c_void;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::{Done, EchoServer, Notify, TAG_TEST as TAG};
use ntsim::{Config, Faults, Kernel, Report, Rule, with_irql};
use wsktls::nt::{
    DEVICE_OBJECT, DISPATCH_LEVEL, ExAllocatePool2, ExFreePoolWithTag, FALSE, IRP, IoAllocateIrp,
    IoAllocateMdl, IoCompleteRequest, IoFreeIrp, IoFreeMdl, IoSetCompletionRoutine,
    IoSetNextIrpStackLocation, MDL, MmBuildMdlForNonPagedPool, NTSTATUS, PIO_COMPLETION_ROUTINE,
    POOL_FLAG_NON_PAGED, PoolBuffer, STATUS_INVALID_PARAMETER, STATUS_MORE_PROCESSING_REQUIRED,
    STATUS_SUCCESS, WSK_BUF,
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
    // SAFETY: allocation and the wdm.h inlines on a fresh IRP we own.
    unsafe {
        let irp = IoAllocateIrp(1, FALSE);
        assert!(!irp.is_null());
        IoSetCompletionRoutine(irp, routine, std::ptr::null_mut(), true, true, true);
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
