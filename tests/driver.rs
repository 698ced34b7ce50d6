//! The driver as other drivers meet it: loaded by ntsim's I/O manager through
//! DriverEntry/AddDevice/START, found through its device interface by the sample consumer
//! (`tests/sample-consumer`, which uses only the published interface), and used through
//! the dispatch table. Life-cycle orders, removal, user-mode opens, and every
//! invalid-parameter case of the interface.

mod common;

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::rig::*;
use ntsim::{Caller, Kernel};
use wsktls::nt::*;
use wsktls_sample_consumer::{ConnectParams, Session};

fn echo(session: &Session, bytes: usize) {
    let data: Vec<u8> = (0..bytes as u64).map(common::pattern).collect();
    assert_eq!(session.send(&data), Ok(bytes));
    let mut back = vec![0u8; bytes];
    let mut got = 0;
    while got < bytes {
        let n = session.receive(&mut back[got..]).expect("receive");
        assert!(n > 0, "the peer ended the stream early");
        got += n;
    }
    assert!(back == data, "echoed bytes differ");
}

#[test]
fn a_consumer_loaded_first_binds_when_the_interface_arrives_and_echoes() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let sample = load_consumer(&kernel);
    assert!(consumer(&sample).provider().is_none(), "no wsktls yet");
    let (wsktls, device) = load_wsktls(&kernel, &[]);
    let binding = consumer(&sample).wait_for_provider(20_000).expect("bound on arrival");
    let rig = Rig { kernel, wsktls, device, sample, binding, peer: echo_peer(), _in };
    let session = rig.session();
    echo(&session, 1 << 20);
    let info = session.session_info().expect("session info");
    assert_eq!(info.ProtocolVersion, 0x0304);
    assert!([0x1301, 0x1302, 0x1303].contains(&info.CipherSuite), "{:#x}", info.CipherSuite);
    let counters = session.counters().expect("counters");
    assert_eq!((counters.BytesSent, counters.BytesReceived), (1 << 20, 1 << 20));
    assert!(counters.PeakInFlightBytes <= counters.SendBudget);
    assert_eq!(session.disconnect(), Ok(()));
    assert_eq!(session.close(), STATUS_SUCCESS);
    assert_eq!(
        rig.kernel.remove_device(&rig.device),
        Err(STATUS_DEVICE_BUSY),
        "the sample's open handle vetoes removal"
    );
    rig.finish();
}

#[test]
fn a_consumer_loaded_second_finds_the_interface_already_there() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let (wsktls, device) = load_wsktls(&kernel, &[]);
    let sample = load_consumer(&kernel);
    let binding = consumer(&sample).wait_for_provider(20_000).expect("bound to the existing interface");
    let peer = echo_peer();
    let session = open_session(&binding, &peer);
    echo(&session, 64 * 1024);
    drop(session);
    drop(binding);
    // The sample goes first this time: it lets go of the provider at unload.
    kernel.unload_driver(sample, WAIT).expect("the sample unloads");
    kernel.remove_device(&device).expect("removal");
    kernel.unload_driver(wsktls, WAIT).expect("wsktls unloads");
    drop(_in);
    kernel.finish();
}

#[test]
fn wsktls_refuses_a_query_remove_while_a_channel_is_open() {
    let rig = Rig::new(&[]);
    let session = rig.session();
    assert_eq!(rig.kernel.query_remove_device(&rig.device), STATUS_DEVICE_BUSY, "wsktls's own veto");
    echo(&session, 64 * 1024);
    assert_eq!(session.close(), STATUS_SUCCESS);
    assert_eq!(rig.kernel.query_remove_device(&rig.device), STATUS_SUCCESS, "no channel open: no veto");
    // After a cancelled query-remove the device works as before.
    let session = rig.session();
    echo(&session, 64 * 1024);
    assert_eq!(session.close(), STATUS_SUCCESS);
    rig.finish();
}

#[test]
fn surprise_removal_ends_open_channels_and_completes_pending_irps_without_a_leak() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let (wsktls, device) = load_wsktls(&kernel, &[]);
    let sample = load_consumer(&kernel);
    let binding = consumer(&sample).wait_for_provider(20_000).expect("bound");
    let peer = echo_peer();
    let sessions: Vec<Arc<Session>> = (0..3).map(|_| Arc::new(open_session(&binding, &peer))).collect();
    // A receive pending on each channel (the peer sends nothing unasked).
    let receivers: Vec<_> = sessions
        .iter()
        .map(|s| {
            let s = Arc::clone(s);
            kernel.spawn(move || s.receive(&mut [0u8; 100]))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The PnP manager's side runs on its own thread: after IRP_MN_SURPRISE_REMOVAL it
    // waits for the open handles to close before IRP_MN_REMOVE_DEVICE.
    std::thread::scope(|scope| {
        let remover = scope.spawn(|| kernel.surprise_remove_device(&device));
        for r in receivers {
            assert_eq!(
                r.join().expect("receiver"),
                Err(STATUS_FILE_FORCED_CLOSED),
                "pending receives complete"
            );
        }
        for s in &sessions {
            assert_eq!(s.send(b"late"), Err(STATUS_FILE_FORCED_CLOSED), "a dead channel refuses sends");
        }
        assert!(kernel.interfaces(&GUID_DEVINTERFACE_WSKTLS).is_empty(), "the interface is gone");
        // The sample let go of the provider on the interface's removal; closing its
        // sessions lets go of the file object, and with it the device.
        drop(binding);
        for s in sessions {
            let s = Arc::into_inner(s).expect("the only reference");
            assert_eq!(s.close(), STATUS_SUCCESS, "a dead channel still closes");
        }
        remover.join().expect("removal finishes once the handles are closed");
    });
    kernel.unload_driver(wsktls, WAIT).expect("wsktls unloads once the consumer let go");
    kernel.unload_driver(sample, WAIT).expect("the sample unloads");
    drop(_in);
    kernel.finish();
}

#[test]
fn user_mode_cannot_open_the_device() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let (wsktls, device) = load_wsktls(&kernel, &[]);
    let link = kernel.interfaces(&GUID_DEVINTERFACE_WSKTLS).pop().expect("the interface is enabled");
    let before = kernel.stats().creates_sent;
    assert_eq!(kernel.open_from_user_mode(&link, Caller::User), STATUS_ACCESS_DENIED);
    assert_eq!(kernel.open_from_user_mode(&link, Caller::Administrators), STATUS_ACCESS_DENIED);
    assert_eq!(kernel.stats().creates_sent, before, "the INF's descriptor stops them before the driver");
    // SYSTEM passes the descriptor; the driver refuses a create from user mode itself.
    assert_eq!(kernel.open_from_user_mode(&link, Caller::System), STATUS_ACCESS_DENIED);
    assert_eq!(kernel.stats().creates_sent, before + 1, "this one reached the driver");
    kernel.remove_device(&device).expect("removal");
    kernel.unload_driver(wsktls, WAIT).expect("unload");
    drop(_in);
    kernel.finish();
}

// ---------------------------------------------------------------------------------------
// Invalid parameters: each gets its own status, returned and completed alike.

/// Counts the completions of an IRP.
unsafe extern "system" fn counted(_d: *mut DEVICE_OBJECT, _irp: *mut IRP, context: *mut c_void) -> NTSTATUS {
    // SAFETY: the counter `call` passes, alive until it has seen the completion.
    unsafe { (*context.cast::<AtomicUsize>()).fetch_add(1, Ordering::AcqRel) };
    STATUS_MORE_PROCESSING_REQUIRED
}

/// Issues one call with a fresh IRP of `stack` locations and returns what it returned and
/// what the IRP completed with, checking that it completed exactly once.
fn call_with(stack: i8, f: impl FnOnce(*mut IRP) -> NTSTATUS) -> (NTSTATUS, NTSTATUS) {
    let completions = AtomicUsize::new(0);
    // SAFETY: a fresh IRP with our completion routine, freed after its one completion.
    unsafe {
        let irp = IoAllocateIrp(stack, FALSE);
        assert!(!irp.is_null());
        let ctx = &completions as *const AtomicUsize as *mut c_void;
        IoSetCompletionRoutine(irp, Some(counted), ctx, true, true, true);
        let returned = f(irp);
        let deadline = std::time::Instant::now() + WAIT;
        while completions.load(Ordering::Acquire) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let completed = (*irp).IoStatus.status();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(completions.load(Ordering::Acquire), 1, "completed exactly once");
        IoFreeIrp(irp);
        (returned, completed)
    }
}

/// A call whose IRP has no stack location left for wsktls (its sender used the last):
/// what it returned, and the status left in the IRP.
fn call_without_a_location(f: impl FnOnce(*mut IRP) -> NTSTATUS) -> (NTSTATUS, NTSTATUS) {
    let completions = AtomicUsize::new(0);
    // SAFETY: a fresh IRP whose one location the "sender" has taken (its completion
    // routine in it); freed afterwards.
    unsafe {
        let irp = IoAllocateIrp(1, FALSE);
        assert!(!irp.is_null());
        let ctx = &completions as *const AtomicUsize as *mut c_void;
        IoSetCompletionRoutine(irp, Some(counted), ctx, true, true, true);
        IoSetNextIrpStackLocation(irp);
        let returned = f(irp);
        let completed = (*irp).IoStatus.status();
        assert_eq!(completions.load(Ordering::Acquire), 1, "completed where it stands, once");
        IoFreeIrp(irp);
        (returned, completed)
    }
}

fn call(f: impl FnOnce(*mut IRP) -> NTSTATUS) -> (NTSTATUS, NTSTATUS) {
    call_with(1, f)
}

/// The status a call returned, which must also be the one it completed with.
fn refused(f: impl FnOnce(*mut IRP) -> NTSTATUS) -> NTSTATUS {
    let (returned, completed) = call(f);
    assert_eq!(returned, completed, "the IRP completes with the status returned");
    returned
}

#[test]
fn every_invalid_parameter_gets_its_own_status_and_nothing_is_corrupted() {
    let rig = Rig::new(&[]);
    let (kernel, binding, peer) = (&rig.kernel, &rig.binding, &rig.peer);
    let d = binding.dispatch();
    let (connect, send, receive) = (d.Connect.unwrap(), d.Send.unwrap(), d.Receive.unwrap());
    let (disconnect, close, query) = (d.Disconnect.unwrap(), d.Close.unwrap(), d.Query.unwrap());
    assert_eq!(d.Size as usize, size_of::<WSKTLS_DISPATCH>());
    assert_eq!(d.Version, WSKTLS_VERSION_1_0);
    let provider = binding.provider();
    let good = Good::new(peer);

    // Connect: each wrong field, one at a time.
    let try_connect = |p: &WSKTLS_CONNECT_PARAMETERS| {
        let mut channel = std::ptr::null_mut();
        // SAFETY: the parameters and channel outlive the call, which `refused` waits for.
        let status = refused(|irp| unsafe { connect(provider, p, &mut channel, irp) });
        assert!(status.is_success() || channel.is_null(), "no handle from a failed Connect");
        status
    };
    type Wrong = Box<dyn Fn(&mut WSKTLS_CONNECT_PARAMETERS)>;
    let cases: Vec<(&str, Wrong, NTSTATUS)> = vec![
        ("wrong Size", Box::new(|p| p.Size -= 8), STATUS_INVALID_BUFFER_SIZE),
        ("wrong Version", Box::new(|p| p.Version = 0x0200), STATUS_REVISION_MISMATCH),
        ("Reserved set", Box::new(|p| p.Reserved = 1), STATUS_INVALID_PARAMETER),
        ("Reserved2 set", Box::new(|p| p.Reserved2 = 1), STATUS_INVALID_PARAMETER),
        ("no address", Box::new(|p| p.RemoteAddress = std::ptr::null()), STATUS_INVALID_PARAMETER),
        ("no trust anchor", Box::new(|p| p.TrustAnchorCount = 0), STATUS_INVALID_PARAMETER),
        (
            "a count without its array",
            Box::new(|p| p.TrustAnchors = std::ptr::null()),
            STATUS_INVALID_PARAMETER,
        ),
        ("too many anchors", Box::new(|p| p.TrustAnchorCount = 1000), STATUS_INVALID_PARAMETER),
        ("empty server name", Box::new(|p| p.ServerName.Length = 0), STATUS_INVALID_PARAMETER),
        (
            "a name without its bytes",
            Box::new(|p| p.ServerName.Data = std::ptr::null()),
            STATUS_INVALID_PARAMETER,
        ),
        ("unknown suite bits", Box::new(|p| p.Suites = 0x8), STATUS_INVALID_PARAMETER),
        ("record size too small", Box::new(|p| p.RecordSize = 100), STATUS_INVALID_PARAMETER),
        ("record size too large", Box::new(|p| p.RecordSize = 16385), STATUS_INVALID_PARAMETER),
        ("send budget too small", Box::new(|p| p.SendBudget = 1000), STATUS_INVALID_PARAMETER),
        ("receive buffer too small", Box::new(|p| p.ReceiveBuffer = 100), STATUS_INVALID_PARAMETER),
        ("a key without a chain", Box::new(|p| p.ClientKey.Length = 5), STATUS_INVALID_PARAMETER),
    ];
    for (what, wrong, expected) in &cases {
        let mut p = good.parameters();
        wrong(&mut p);
        if *what == "a key without a chain" {
            p.ClientKey.Data = good.ca.as_ptr();
        }
        assert_eq!(try_connect(&p), *expected, "{what}");
    }
    let mut v6 = good.parameters();
    let bad_family = SOCKADDR { sa_family: 99, sa_data: [0; 14] };
    v6.RemoteAddress = &bad_family;
    assert_eq!(try_connect(&v6), STATUS_INVALID_ADDRESS, "an address of no known family");
    // SAFETY: the calls below pass null or invalid handles on purpose; wsktls refuses them.
    unsafe {
        let p = good.parameters();
        let mut channel = std::ptr::null_mut();
        assert_eq!(
            refused(|irp| connect(std::ptr::null_mut(), &p, &mut channel, irp)),
            STATUS_INVALID_HANDLE
        );
        assert_eq!(
            refused(|irp| connect(provider, std::ptr::null(), &mut channel, irp)),
            STATUS_INVALID_PARAMETER
        );
        assert_eq!(refused(|irp| connect(provider, &p, std::ptr::null_mut(), irp)), STATUS_INVALID_PARAMETER);
        assert_eq!(connect(provider, &p, &mut channel, std::ptr::null_mut()), STATUS_INVALID_PARAMETER);
    }
    assert_eq!(kernel.stats().sockets, 0, "no refused Connect opened a socket");

    // A real channel for the per-call checks.
    let session = open_session(binding, peer);
    let h = session.handle();
    let chain = common::Chain::new(&[4096], 0, 0);
    // SAFETY: the chain's MDLs describe locked pool for the calls.
    unsafe {
        let mut buf = chain.wsk_buf(100);
        assert_eq!(
            refused(|irp| send(h, &mut buf, 0x100, irp)),
            STATUS_NOT_SUPPORTED,
            "an unknown send flag"
        );
        assert_eq!(
            refused(|irp| receive(h, &mut buf, 0x100, irp)),
            STATUS_NOT_SUPPORTED,
            "an unknown receive flag"
        );
        assert_eq!(
            refused(|irp| send(h, std::ptr::null_mut(), 0, irp)),
            STATUS_INVALID_PARAMETER,
            "no WSK_BUF"
        );
        let mut beyond = chain.wsk_buf(4097);
        assert_eq!(
            refused(|irp| send(h, &mut beyond, 0, irp)),
            STATUS_INVALID_PARAMETER,
            "WSK_BUF beyond its chain"
        );
        let mut no_mdl = WSK_BUF { Mdl: std::ptr::null_mut(), Offset: 0, Length: 10 };
        assert_eq!(
            refused(|irp| send(h, &mut no_mdl, 0, irp)),
            STATUS_INVALID_PARAMETER,
            "a length without an MDL"
        );
        let mut empty = chain.wsk_buf(0);
        assert_eq!(
            refused(|irp| receive(h, &mut empty, 0, irp)),
            STATUS_INVALID_PARAMETER,
            "an empty receive"
        );
        assert_eq!(refused(|irp| disconnect(h, 1, irp)), STATUS_NOT_SUPPORTED, "disconnect flags");
        let mut returned = 0u32;
        let mut info = [0u8; 512];
        assert_eq!(query(h, 77, info.as_mut_ptr().cast(), 512, &mut returned), STATUS_INVALID_INFO_CLASS);
        assert_eq!(
            query(h, WskTlsInfoSession, info.as_mut_ptr().cast(), 8, &mut returned),
            STATUS_BUFFER_TOO_SMALL
        );
        assert_eq!(returned as usize, size_of::<WSKTLS_SESSION_INFO>(), "the size needed is reported");
        assert_eq!(
            query(h, WskTlsInfoSession, std::ptr::null_mut(), 512, &mut returned),
            STATUS_BUFFER_TOO_SMALL
        );
        // A call with no stack location left for wsktls.
        let (returned, completed) = call_without_a_location(|irp| send(h, &mut buf, 0, irp));
        assert_eq!((returned, completed), (STATUS_INVALID_PARAMETER, STATUS_INVALID_PARAMETER));
    }
    echo(&session, 4096);

    // Close, then every call on the stale handle, and a second Close, with a new channel
    // in the same slot (the free slot is reused at once): the handle's generation refuses
    // them, and the new channel does not see them.
    assert_eq!(session.close(), STATUS_SUCCESS);
    let other = open_session(binding, peer);
    assert_eq!(other.handle() as usize & !127, h as usize & !127, "the slot is reused");
    // SAFETY: a closed handle is refused, not followed.
    unsafe {
        let mut buf = chain.wsk_buf(10);
        assert_eq!(refused(|irp| close(h, irp)), STATUS_INVALID_HANDLE, "a second Close");
        assert_eq!(refused(|irp| send(h, &mut buf, 0, irp)), STATUS_INVALID_HANDLE, "send after Close");
        assert_eq!(refused(|irp| receive(h, &mut buf, 0, irp)), STATUS_INVALID_HANDLE, "receive after Close");
        assert_eq!(refused(|irp| disconnect(h, 0, irp)), STATUS_INVALID_HANDLE, "disconnect after Close");
        let mut info = [0u8; 512];
        let mut returned = 0;
        assert_eq!(
            query(h, WskTlsInfoSession, info.as_mut_ptr().cast(), 512, &mut returned),
            STATUS_INVALID_HANDLE
        );
        assert_eq!(refused(|irp| close(std::ptr::null_mut(), irp)), STATUS_INVALID_HANDLE, "a null handle");
    }
    // The channel in the reused slot is untouched by all of this.
    echo(&other, 64 * 1024);
    assert_eq!(other.disconnect(), Ok(()));
    // SAFETY: the chain's MDL describes locked pool for the call.
    unsafe {
        let mut buf = chain.wsk_buf(10);
        let h = other.handle();
        assert_eq!(
            refused(|irp| send(h, &mut buf, 0, irp)),
            STATUS_INVALID_DEVICE_STATE,
            "send after Disconnect"
        );
    }
    drop(other);
    drop(chain);
    rig.finish();
}

/// IOCTL_WSKTLS_GET_PROVIDER sent by hand, with `request` in and `out_len` bytes out.
fn get_provider(
    kernel: &Kernel,
    code: u32,
    request: Option<WSKTLS_PROVIDER_REQUEST>,
    out_len: u32,
) -> (NTSTATUS, WSKTLS_PROVIDER_NPI) {
    get_provider_as(kernel, KernelMode, IRP_MJ_INTERNAL_DEVICE_CONTROL, code, request, out_len)
}

/// As [`get_provider`], in an IRP of `major` function whose requestor is `mode`.
fn get_provider_as(
    kernel: &Kernel,
    mode: KPROCESSOR_MODE,
    major: u8,
    code: u32,
    request: Option<WSKTLS_PROVIDER_REQUEST>,
    out_len: u32,
) -> (NTSTATUS, WSKTLS_PROVIDER_NPI) {
    let link = kernel.interfaces(&GUID_DEVINTERFACE_WSKTLS).pop().expect("the interface is enabled");
    let mut name: Vec<u16> = link.encode_utf16().collect();
    let mut name = UNICODE_STRING {
        Length: (name.len() * 2) as u16,
        MaximumLength: (name.len() * 2) as u16,
        Buffer: name.as_mut_ptr(),
    };
    let mut npi = WSKTLS_PROVIDER_NPI {
        Size: 0,
        Version: 0,
        Reserved: 0,
        Provider: std::ptr::null_mut(),
        Dispatch: std::ptr::null(),
    };
    let (mut file, mut device) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: a kernel-mode open and one IRP to the device it returns; everything outlives
    // the IRP, which `call_with` waits for.
    unsafe {
        assert_eq!(
            IoGetDeviceObjectPointer(&mut name, FILE_READ_DATA, &mut file, &mut device),
            STATUS_SUCCESS
        );
        let (returned, completed) = call_with((*device).StackSize, |irp| {
            (*irp).UserBuffer = (&mut npi as *mut WSKTLS_PROVIDER_NPI).cast();
            (*irp).RequestorMode = mode;
            let next = IoGetNextIrpStackLocation(irp);
            (*next).MajorFunction = major;
            (*next).FileObject = file;
            let control = &mut (*next).Parameters.DeviceIoControl;
            control.IoControlCode = code;
            control.OutputBufferLength = out_len;
            control.InputBufferLength = size_of::<WSKTLS_PROVIDER_REQUEST>() as u32;
            control.Type3InputBuffer =
                request.as_ref().map_or(std::ptr::null_mut(), |r| r as *const _ as *mut c_void);
            IoCallDriver(device, irp)
        });
        assert_eq!(returned, completed);
        ObDereferenceObject(file.cast());
        (returned, npi)
    }
}

#[test]
fn get_provider_checks_its_request_and_answers_kernel_callers_only() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let (wsktls, device) = load_wsktls(&kernel, &[]);
    let size = size_of::<WSKTLS_PROVIDER_NPI>() as u32;
    let good = WSKTLS_PROVIDER_REQUEST {
        Size: size_of::<WSKTLS_PROVIDER_REQUEST>() as u32,
        Version: WSKTLS_VERSION_1_0,
        Reserved: 0,
    };
    let code = IOCTL_WSKTLS_GET_PROVIDER;
    let (status, npi) = get_provider(&kernel, code, Some(good), size);
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!((npi.Size, npi.Version), (size, WSKTLS_VERSION_1_0));
    assert!(!npi.Provider.is_null() && !npi.Dispatch.is_null());
    let minor = WSKTLS_PROVIDER_REQUEST { Version: WSKTLS_MAKE_VERSION(1, 3), ..good };
    assert_eq!(
        get_provider(&kernel, code, Some(minor), size).1.Version,
        WSKTLS_VERSION_1_0,
        "1.x is granted 1.0"
    );
    let cases = [
        (
            "another major version",
            code,
            Some(WSKTLS_PROVIDER_REQUEST { Version: WSKTLS_MAKE_VERSION(2, 0), ..good }),
            size,
            STATUS_REVISION_MISMATCH,
        ),
        (
            "a wrong Size",
            code,
            Some(WSKTLS_PROVIDER_REQUEST { Size: 4, ..good }),
            size,
            STATUS_INVALID_BUFFER_SIZE,
        ),
        ("no request", code, None, size, STATUS_INVALID_PARAMETER),
        ("a short output buffer", code, Some(good), size - 1, STATUS_BUFFER_TOO_SMALL),
        ("another control code", code + 4, Some(good), size, STATUS_INVALID_DEVICE_REQUEST),
    ];
    for (what, code, request, out_len, expected) in cases {
        assert_eq!(get_provider(&kernel, code, request, out_len).0, expected, "{what}");
    }
    // The interface is for kernel callers only: the same request from user mode, or in
    // the control IRP user mode can send, gets nothing.
    let internal = IRP_MJ_INTERNAL_DEVICE_CONTROL;
    let (status, npi) = get_provider_as(&kernel, UserMode, internal, code, Some(good), size);
    assert_eq!((status, npi.Provider), (STATUS_ACCESS_DENIED, std::ptr::null_mut()), "from user mode");
    let (status, npi) = get_provider_as(&kernel, UserMode, IRP_MJ_DEVICE_CONTROL, code, Some(good), size);
    assert_eq!(
        (status, npi.Provider),
        (STATUS_INVALID_DEVICE_REQUEST, std::ptr::null_mut()),
        "as IRP_MJ_DEVICE_CONTROL"
    );
    kernel.remove_device(&device).expect("removal");
    kernel.unload_driver(wsktls, WAIT).expect("unload");
    drop(_in);
    kernel.finish();
}

#[test]
fn the_service_parameters_set_the_channel_limit_and_the_inf_holds_the_defaults() {
    let defaults = wsktls::interface::Defaults::default();
    let inx =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/inf/wsktls.inx")).expect("the INF");
    let value = |name: &str| -> u32 {
        let line = inx.lines().find(|l| l.starts_with(&format!("HKR,Parameters,{name},"))).expect(name);
        line.rsplit(',').next().and_then(|v| v.trim().parse().ok()).expect("a number")
    };
    assert_eq!(value("DefaultConnectTimeoutMs"), defaults.connect_timeout_ms);
    assert_eq!(value("DefaultHandshakeTimeoutMs"), defaults.handshake_timeout_ms);
    assert_eq!(value("DefaultDisconnectTimeoutMs"), defaults.disconnect_timeout_ms);
    assert_eq!(value("MaxChannels"), defaults.max_channels);

    let rig = Rig::new(&[("MaxChannels", 2), ("DefaultConnectTimeoutMs", 0)]);
    let (first, second) = (rig.session(), rig.session());
    let ca = ca();
    let anchors = [ca.as_slice()];
    let third = Session::connect(
        Arc::clone(&rig.binding),
        &ConnectParams::new(rig.peer.addr(), "localhost", &anchors),
    );
    assert_eq!(third.err(), Some(STATUS_INSUFFICIENT_RESOURCES), "MaxChannels = 2");
    assert_eq!(first.close(), STATUS_SUCCESS);
    let third = rig.session();
    echo(&third, 4096);
    drop((second, third));
    rig.finish();
}
