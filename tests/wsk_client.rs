//! The WSK client against ntsim's provider over real loopback TCP: bytes moved as MDL
//! chains, the hostile transport (every send pending, late and split completions), peer
//! resets and forced closes mid-transfer, connects that are refused or never answered,
//! and the life cycle from registration to deregistration.

mod common;

use std::time::{Duration, Instant};

use common::{EchoServer, Transfer, closed_port};
use ntsim::{Config, Faults, Kernel, Rule};
use wsktls::nt::{
    STATUS_CANCELLED, STATUS_CONNECTION_REFUSED, STATUS_CONNECTION_RESET,
    STATUS_FILE_FORCED_CLOSED, STATUS_IO_TIMEOUT, WSK_INFINITE_WAIT,
};
use wsktls::wsk::WskClient;

const MIB: u64 = 1024 * 1024;
const CONNECT_TIMEOUT_MS: u32 = 5_000;

fn client() -> WskClient {
    let mut client = WskClient::register().expect("WskRegister");
    client
        .capture_provider(WSK_INFINITE_WAIT)
        .expect("WskCaptureProviderNPI");
    client
}

/// Echoes `total` bytes over a fresh connection on `kernel`, then disconnects gracefully
/// and closes, checking that the peer's FIN completes the last receives with 0 bytes.
fn echo_over(kernel: &Kernel, ip: &str, total: u64) {
    let _in = kernel.enter();
    let server = EchoServer::start(ip);
    let client = client();
    let socket = client
        .connect(server.addr, CONNECT_TIMEOUT_MS)
        .expect("connect");
    let mut t = Transfer::new(total);
    t.echo_all(&socket)
        .unwrap_or_else(|e| panic!("{e} (seed {})", kernel.seed()));
    socket
        .disconnect(CONNECT_TIMEOUT_MS)
        .expect("graceful disconnect");
    t.drain(common::STALL)
        .expect("the peer's FIN completes the outstanding receives");
    assert!(t.eof, "the peer's FIN arrives as a zero-byte receive");
    socket.close();
    t.assert_quiet(Duration::from_millis(50));
    drop(t);
    drop(client);
    assert_eq!(kernel.stats().sockets, 0, "the socket is closed");
}

#[test]
fn moves_64_mib_through_an_echo_server_as_mdl_chains_byte_for_byte() {
    let kernel = Kernel::boot();
    echo_over(&kernel, "127.0.0.1", 64 * MIB);
    let stats = kernel.stats();
    assert!(stats.sends_inline + stats.sends_pended > 1000, "{stats:?}");
    kernel.finish();
}

#[test]
fn moves_64_mib_when_every_send_pends_completes_late_and_some_complete_split() {
    let kernel = Kernel::boot_with(Config {
        faults: Faults::hostile_transport(),
        ..Config::default()
    });
    echo_over(&kernel, "127.0.0.1", 64 * MIB);
    let stats = kernel.stats();
    assert_eq!(
        stats.sends_inline, 0,
        "every send returned STATUS_PENDING: {stats:?}"
    );
    assert!(stats.sends_pended > 1000, "{stats:?}");
    assert!(
        stats.completions_delayed > 1000,
        "completions came late: {stats:?}"
    );
    assert!(
        stats.send_pieces > 100,
        "sends went out in pieces: {stats:?}"
    );
    assert!(
        stats.receives_split > 100,
        "receives completed split: {stats:?}"
    );
    kernel.finish();
}

#[test]
fn connects_and_moves_bytes_over_ipv6_loopback() {
    let kernel = Kernel::boot();
    echo_over(&kernel, "::1", 4 * MIB);
    kernel.finish();
}

#[test]
fn ideal_send_backlog_is_reported_for_a_connected_socket() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let server = EchoServer::start("127.0.0.1");
    let client = client();
    let socket = client
        .connect(server.addr, CONNECT_TIMEOUT_MS)
        .expect("connect");
    let backlog = socket
        .ideal_send_backlog()
        .expect("SIO_WSK_QUERY_IDEAL_SEND_BACKLOG");
    assert!(backlog >= 4096, "backlog {backlog}");
    socket.close();
    drop(client);
    kernel.finish();
}

#[test]
fn peer_reset_mid_transfer_completes_every_outstanding_request_once_with_the_failure() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let server = EchoServer::resetting_after(8 * MIB);
    let client = client();
    let socket = client
        .connect(server.addr, CONNECT_TIMEOUT_MS)
        .expect("connect");
    let mut t = Transfer::new(64 * MIB);
    let err = t
        .echo_all(&socket)
        .expect_err("the peer resets before 64 MiB");
    assert!(err.starts_with("completion failed"), "{err}");
    t.drain(common::STALL)
        .expect("every outstanding request completes");
    assert!(
        t.failures.contains(&STATUS_CONNECTION_RESET),
        "{:?}",
        t.failures
    );
    // The socket no longer works; a new request fails through its completion, too.
    t.total = u64::MAX;
    t.issue(&socket).expect("issued");
    t.drain(common::STALL).expect("completes");
    assert!(
        t.failures.iter().all(|s| *s == STATUS_CONNECTION_RESET),
        "{:?}",
        t.failures
    );
    socket.close();
    t.assert_quiet(Duration::from_millis(50));
    drop(t);
    drop(client);
    kernel.finish();
}

#[test]
fn forced_close_mid_transfer_completes_every_outstanding_request_with_file_forced_closed() {
    let faults = Faults {
        forced_close_after_bytes: Some(8 * MIB),
        pend_every_send: true,
        ..Faults::default()
    };
    let kernel = Kernel::boot_with(Config {
        faults,
        ..Config::default()
    });
    let _in = kernel.enter();
    let server = EchoServer::start("127.0.0.1");
    let client = client();
    let socket = client
        .connect(server.addr, CONNECT_TIMEOUT_MS)
        .expect("connect");
    let mut t = Transfer::new(64 * MIB);
    t.echo_all(&socket)
        .expect_err("the transport goes away at 8 MiB");
    t.drain(common::STALL)
        .expect("every outstanding request completes");
    assert!(!t.failures.is_empty());
    assert!(
        t.failures.iter().all(|s| *s == STATUS_FILE_FORCED_CLOSED),
        "{:?}",
        t.failures
    );
    let before = t.failures.len();
    t.issue(&socket).expect("issued");
    t.drain(common::STALL).expect("completes");
    assert!(
        t.failures.len() > before && t.failures.iter().all(|s| *s == STATUS_FILE_FORCED_CLOSED)
    );
    socket.close();
    t.assert_quiet(Duration::from_millis(50));
    drop(t);
    drop(client);
    kernel.finish();
}

#[test]
fn forced_close_of_an_idle_socket_fails_its_pending_receives() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let server = EchoServer::start("127.0.0.1");
    let client = client();
    let socket = client
        .connect(server.addr, CONNECT_TIMEOUT_MS)
        .expect("connect");
    let mut t = Transfer::new(0);
    t.issue(&socket).expect("receives posted");
    kernel.force_close_sockets();
    t.drain(common::STALL).expect("every receive completes");
    assert_eq!(t.failures, vec![STATUS_FILE_FORCED_CLOSED; 3]);
    socket.close();
    drop(t);
    drop(client);
    kernel.finish();
}

#[test]
fn close_cancels_pending_receives_each_exactly_once() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let server = EchoServer::start("127.0.0.1");
    let client = client();
    let socket = client
        .connect(server.addr, CONNECT_TIMEOUT_MS)
        .expect("connect");
    let mut t = Transfer::new(0);
    t.issue(&socket).expect("receives posted");
    socket.close();
    t.drain(Duration::from_secs(5))
        .expect("every receive completes");
    assert_eq!(t.failures, vec![STATUS_CANCELLED; 3]);
    t.assert_quiet(Duration::from_millis(50));
    drop(t);
    drop(client);
    kernel.finish();
}

#[test]
fn refused_connect_returns_connection_refused_within_the_timeout() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let client = client();
    let started = Instant::now();
    let r = client.connect(closed_port(), 2_000);
    assert_eq!(r.err(), Some(STATUS_CONNECTION_REFUSED));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    drop(client);
    kernel.finish();
}

#[test]
fn connect_that_never_answers_is_cancelled_and_times_out() {
    let faults = Faults {
        connect_never_answers: true,
        ..Faults::default()
    };
    let kernel = Kernel::boot_with(Config {
        faults,
        ..Config::default()
    });
    let _in = kernel.enter();
    let client = client();
    let started = Instant::now();
    let r = client.connect("127.0.0.1:9".parse().expect("addr"), 300);
    let took = started.elapsed();
    assert_eq!(r.err(), Some(STATUS_IO_TIMEOUT));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    drop(client);
    kernel.finish();
}

#[test]
fn connect_before_capturing_the_provider_is_refused_cleanly() {
    let kernel = Kernel::boot();
    let _in = kernel.enter();
    let client = WskClient::register().expect("WskRegister");
    let r = client.connect(closed_port(), 1_000);
    assert_eq!(r.err(), Some(wsktls::nt::STATUS_DEVICE_NOT_READY));
    drop(client);
    kernel.finish();
}

#[test]
fn registering_in_driver_entry_and_capturing_later_is_clean() {
    let kernel = Kernel::boot();
    let mut client =
        kernel.driver_entry(|| WskClient::register().expect("WskRegister in DriverEntry"));
    let _in = kernel.enter();
    client
        .capture_provider(WSK_INFINITE_WAIT)
        .expect("capture after DriverEntry");
    drop(client);
    kernel.finish();
}

#[test]
fn capturing_the_provider_inside_driver_entry_is_reported() {
    let kernel = Kernel::boot();
    let client = kernel.driver_entry(|| {
        let mut c = WskClient::register().expect("WskRegister");
        c.capture_provider(WSK_INFINITE_WAIT).expect("capture");
        c
    });
    {
        let _in = kernel.enter();
        drop(client);
    }
    let reports = kernel.take_reports();
    assert!(
        reports
            .iter()
            .any(|r| r.rule == Rule::WskRegistration && r.detail.contains("DriverEntry")),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn a_small_transfer_leaves_no_pool_irp_or_mdl_behind() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let server = EchoServer::start("127.0.0.1");
        let client = client();
        let socket = client
            .connect(server.addr, CONNECT_TIMEOUT_MS)
            .expect("connect");
        let mut t = Transfer::new(MIB);
        t.echo_all(&socket).expect("echo");
        socket.close();
        t.drain(Duration::from_secs(5)).expect("drain");
        drop(t);
        drop(client);
    }
    let s = kernel.stats();
    assert_eq!(
        (s.pool_bytes, s.irps, s.mdls, s.sockets),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert!(s.pool_peak_bytes > 0);
    kernel.finish();
}

/// A handler that lingers after telling its owner the outcome.
struct SlowHandler {
    tx: std::sync::mpsc::Sender<()>,
    finished: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl wsktls::wsk::Completion for SlowHandler {
    fn completed(&self, _status: wsktls::nt::NTSTATUS, _bytes: usize) {
        let _ = self.tx.send(());
        // Still running on the request's memory while the owner reacts.
        std::thread::sleep(Duration::from_millis(50));
        self.finished.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn dropping_a_request_right_after_its_outcome_waits_for_the_completion_routine() {
    // Every send pends, so the outcome arrives from the provider thread while this thread
    // is free to drop the request at once.
    let faults = Faults { pend_every_send: true, ..Faults::default() };
    let kernel = Kernel::boot_with(Config { faults, ..Config::default() });
    let _in = kernel.enter();
    let server = EchoServer::start("127.0.0.1");
    let client = client();
    let socket = client.connect(server.addr, CONNECT_TIMEOUT_MS).expect("connect");
    let (tx, rx) = std::sync::mpsc::channel();
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = wsktls::wsk::Request::new(SlowHandler { tx, finished: finished.clone() }).expect("request");
    let buffer = wsktls::nt::PoolBuffer::new(100, common::TAG_TEST).expect("buffer");
    // SAFETY: the buffer is untouched until the outcome arrives.
    unsafe {
        let buf = wsktls::nt::WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: 100 };
        request.send(&socket, buf, 0).expect("issued");
    }
    rx.recv_timeout(Duration::from_secs(5)).expect("outcome");
    drop(request);
    assert!(finished.load(std::sync::atomic::Ordering::SeqCst), "drop returned while the handler still ran");
    drop(buffer);
    socket.close();
    drop(client);
    kernel.finish();
}
