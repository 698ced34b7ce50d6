//! The verifier can fail: each test commits one bug on purpose and asserts the report
//! ntsim makes of it. Every other test in the workspace fails on any report.

mod common;

use std::ffi::c_void;
use std::time::Duration;

use common::EchoServer;
use ntsim::{Config, Faults, Kernel, Report, Rule, with_irql};
use wsktls::nt::{
    DEVICE_OBJECT, DISPATCH_LEVEL, ExAllocatePool2, ExFreePoolWithTag, FALSE, IRP, IoAllocateIrp,
    IoAllocateMdl, IoCompleteRequest, IoFreeIrp, IoFreeMdl, IoSetCompletionRoutine,
    IoSetNextIrpStackLocation, MDL, MmBuildMdlForNonPagedPool, NTSTATUS, POOL_FLAG_NON_PAGED,
    PoolBuffer, STATUS_INVALID_PARAMETER, STATUS_MORE_PROCESSING_REQUIRED, STATUS_SUCCESS, WSK_BUF,
    WSK_INFINITE_WAIT,
};
use wsktls::wsk::{Request, Socket, WskClient};

const TAG: u32 = common::TAG_TEST;

fn reported(reports: &[Report], rule: Rule) -> bool {
    reports.iter().any(|r| r.rule == rule)
}

/// Sends stay in flight for a third of a second: long enough to misbehave meanwhile.
fn slow_sends() -> Config {
    let hold = Duration::from_millis(300);
    let faults = Faults {
        pend_every_send: true,
        completion_delay: Some((hold, hold)),
        ..Faults::default()
    };
    Config {
        faults,
        ..Config::default()
    }
}

/// Runs `f` with a socket connected to a loopback echo server, then closes everything.
fn connected(kernel: &Kernel, f: impl FnOnce(&Socket)) {
    let _in = kernel.enter();
    let server = EchoServer::start("127.0.0.1");
    let mut client = WskClient::register().expect("register");
    client.capture_provider(WSK_INFINITE_WAIT).expect("capture");
    let socket = client.connect(server.addr, 5_000).expect("connect");
    f(&socket);
    socket.close();
    drop(client);
}

/// A request whose completions arrive on a std channel.
fn request() -> (
    Request<common::Notify>,
    std::sync::mpsc::Receiver<common::Done>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    (common::request(7, &tx), rx)
}

/// Nonpaged pool with its own MDL, managed by hand so the test can free one without the other.
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
    let kernel = Kernel::boot_with(slow_sends());
    connected(&kernel, |socket| {
        let (request, rx) = request();
        let (p, mdl) = raw_buffer(4096);
        // SAFETY: a valid chain; the bug below is deliberate.
        unsafe {
            request
                .send(
                    socket,
                    WSK_BUF {
                        Mdl: mdl,
                        Offset: 0,
                        Length: 4096,
                    },
                    0,
                )
                .expect("issued");
            IoFreeMdl(mdl); // the bug: the send still carries it
        }
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the send completes");
        // SAFETY: the send has completed; the pool block is ours.
        unsafe { ExFreePoolWithTag(p, TAG) };
    });
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::MdlFreedInFlight), "{reports:?}");
    kernel.finish();
}

#[test]
fn pool_freed_while_a_send_carries_it_is_reported() {
    let kernel = Kernel::boot_with(slow_sends());
    connected(&kernel, |socket| {
        let (request, rx) = request();
        let buffer = PoolBuffer::new(4096, TAG).expect("buffer");
        // SAFETY: a valid chain; dropping it early is the deliberate bug.
        unsafe {
            request
                .send(
                    socket,
                    WSK_BUF {
                        Mdl: buffer.mdl(),
                        Offset: 0,
                        Length: 4096,
                    },
                    0,
                )
                .expect("issued")
        };
        drop(buffer);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the send completes");
    });
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::BufferFreedInFlight), "{reports:?}");
    kernel.finish();
}

#[test]
fn write_into_an_in_flight_send_buffer_is_reported() {
    let kernel = Kernel::boot_with(slow_sends());
    connected(&kernel, |socket| {
        let (request, rx) = request();
        let mut buffer = PoolBuffer::new(4096, TAG).expect("buffer");
        // SAFETY: a valid chain; the write below is the deliberate bug.
        unsafe {
            request
                .send(
                    socket,
                    WSK_BUF {
                        Mdl: buffer.mdl(),
                        Offset: 0,
                        Length: 4096,
                    },
                    0,
                )
                .expect("issued")
        };
        buffer.as_mut_slice()[100] ^= 0xFF;
        let done = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the send completes");
        assert_eq!(done.status, STATUS_SUCCESS);
    });
    let reports = kernel.take_reports();
    assert!(
        reported(&reports, Rule::InFlightBufferWritten),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn a_send_left_alone_while_in_flight_is_not_reported() {
    let kernel = Kernel::boot_with(slow_sends());
    connected(&kernel, |socket| {
        let (request, rx) = request();
        let buffer = PoolBuffer::new(4096, TAG).expect("buffer");
        // SAFETY: the chain is untouched until the completion below.
        unsafe {
            request
                .send(
                    socket,
                    WSK_BUF {
                        Mdl: buffer.mdl(),
                        Offset: 0,
                        Length: 4096,
                    },
                    0,
                )
                .expect("issued")
        };
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the send completes");
    });
    kernel.finish();
}

unsafe extern "system" fn keep_irp(
    _d: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    _c: *mut c_void,
) -> NTSTATUS {
    STATUS_MORE_PROCESSING_REQUIRED
}

unsafe extern "system" fn release_irp(
    _d: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    _c: *mut c_void,
) -> NTSTATUS {
    STATUS_SUCCESS
}

/// An IRP of one stack location, handed "down" as WSK would take it.
fn irp_with_routine(routine: wsktls::nt::PIO_COMPLETION_ROUTINE) -> *mut IRP {
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
        // SAFETY: the second completion is the deliberate bug; then the IRP is freed.
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
        let irp = irp_with_routine(Some(release_irp));
        // SAFETY: completing our own IRP; the routine's status is the deliberate bug.
        unsafe {
            IoCompleteRequest(irp, 0);
            IoFreeIrp(irp);
        }
    }
    let reports = kernel.take_reports();
    assert!(
        reported(&reports, Rule::CompletionFellThrough),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn irp_leaked_at_unload_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        // SAFETY: the leak is the deliberate bug.
        let irp = unsafe { IoAllocateIrp(1, FALSE) };
        assert!(!irp.is_null());
    }
    let reports = kernel.shutdown();
    assert!(reported(&reports, Rule::IrpLeaked), "{reports:?}");
}

#[test]
fn pool_leaked_at_unload_is_reported_with_its_tag() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        std::mem::forget(PoolBuffer::new(1000, TAG).expect("buffer"));
    }
    let reports = kernel.shutdown();
    let leak = reports
        .iter()
        .find(|r| r.rule == Rule::PoolLeak)
        .expect("a pool leak report");
    assert!(
        leak.detail.contains("'Test': 1 block(s), 1000 bytes"),
        "{leak}"
    );
    assert!(reported(&reports, Rule::MdlLeaked), "{reports:?}");
}

#[test]
fn passive_only_call_at_dispatch_level_is_reported() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let r = with_irql(DISPATCH_LEVEL, "the test", WskClient::register);
        assert!(r.is_err(), "WskRegister refuses DISPATCH_LEVEL");
    }
    let reports = kernel.take_reports();
    assert!(
        reports
            .iter()
            .any(|r| r.rule == Rule::IrqlTooHigh && r.detail.contains("WskRegister")),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn wsk_buf_length_beyond_its_mdl_chain_is_reported_and_the_send_fails() {
    let kernel = Kernel::boot();
    connected(&kernel, |socket| {
        let (request, rx) = request();
        let a = PoolBuffer::new(1000, TAG).expect("buffer");
        let b = PoolBuffer::new(1000, TAG).expect("buffer");
        // SAFETY: the chain is ours and idle; Length one byte past it is the deliberate bug.
        unsafe {
            let head = PoolBuffer::chain(&[&a, &b]);
            request
                .send(
                    socket,
                    WSK_BUF {
                        Mdl: head,
                        Offset: 10,
                        Length: 1991,
                    },
                    0,
                )
                .expect("issued");
        }
        let done = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the send completes");
        assert_eq!(done.status, STATUS_INVALID_PARAMETER);
    });
    let reports = kernel.take_reports();
    assert!(reported(&reports, Rule::WskBufBeyondChain), "{reports:?}");
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
            let mdl = IoAllocateMdl(
                stack_bytes.as_mut_ptr().cast(),
                64,
                FALSE,
                FALSE,
                std::ptr::null_mut(),
            );
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
    let _in = kernel.enter();
    // SAFETY: the leak is the deliberate bug.
    let _leaked = unsafe { IoAllocateIrp(1, FALSE) };
    drop(_in);
    drop(kernel);
}
