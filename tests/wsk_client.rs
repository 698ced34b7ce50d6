//! The WSK client against ntsim's provider over real loopback TCP: bytes moved as MDL
//! chains, the hostile transport (every send pending, late and split completions), the
//! throttled transport (small send buffers, a peer that reads slowly), peer resets and
//! forced closes mid-transfer, connects that are refused or never answered, and the life
//! cycle from registration to deregistration.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    CONNECT_TIMEOUT_MS, EchoServer, STALL, TAG_TEST, Transfer, client, closed_port, pattern, with_connection,
};
use ntsim::{Breaks, Config, Faults, Kernel, Rule};
use wsktls::nt::{
    NTSTATUS, PoolBuffer, STATUS_CANCELLED, STATUS_CONNECTION_REFUSED, STATUS_CONNECTION_RESET,
    STATUS_DEVICE_NOT_READY, STATUS_FILE_FORCED_CLOSED, STATUS_IO_TIMEOUT, STATUS_SUCCESS, WSK_BUF,
    WSK_FLAG_NODELAY, WSK_INFINITE_WAIT,
};
use wsktls::wsk::{Completion, Request, WskClient};

const MIB: u64 = 1024 * 1024;
const QUIET: Duration = Duration::from_millis(50);
/// How long a send must stay pending to count as held back by the peer.
const HELD: Duration = Duration::from_millis(300);

fn booted(faults: Faults) -> Kernel {
    Kernel::boot_with(Config { faults, ..Config::default() })
}

/// Echoes `total` bytes to a server on `ip` and back, then disconnects gracefully: the
/// peer's FIN completes the last receives with 0 bytes. Every byte is checked.
fn echo(kernel: &Kernel, ip: &str, total: u64) {
    with_connection(kernel, &EchoServer::start(ip), |socket| {
        let mut t = Transfer::new(total);
        t.echo_all(&socket).unwrap_or_else(|e| panic!("{e} (seed {})", kernel.seed()));
        socket.disconnect(CONNECT_TIMEOUT_MS).expect("graceful disconnect");
        t.drain(STALL).expect("the peer's FIN completes the outstanding receives");
        assert!(t.eof, "the peer's FIN arrives as a zero-byte receive");
        socket.close();
        t.assert_quiet(QUIET);
    });
    assert_eq!(kernel.stats().sockets, 0, "the socket is closed");
}

#[test]
fn moves_64_mib_through_an_echo_server_as_mdl_chains_byte_for_byte() {
    let kernel = Kernel::boot();
    echo(&kernel, "127.0.0.1", 64 * MIB);
    let stats = kernel.stats();
    assert!(stats.sends_inline + stats.sends_pended > 1000, "{stats:?}");
    kernel.finish();
}

#[test]
fn moves_64_mib_when_every_send_pends_completes_late_and_some_complete_split() {
    let kernel = booted(Faults::hostile_transport());
    echo(&kernel, "127.0.0.1", 64 * MIB);
    let stats = kernel.stats();
    assert_eq!(stats.sends_inline, 0, "every send returned STATUS_PENDING: {stats:?}");
    assert!(stats.sends_pended > 1000, "{stats:?}");
    assert!(stats.completions_delayed > 1000, "completions came late: {stats:?}");
    assert!(stats.send_pieces > 100, "sends went out in pieces: {stats:?}");
    assert!(stats.receives_split > 100, "receives completed split: {stats:?}");
    kernel.finish();
}

#[test]
fn connects_and_moves_bytes_over_ipv6_loopback() {
    let kernel = Kernel::boot();
    echo(&kernel, "::1", 4 * MIB);
    kernel.finish();
}

#[test]
fn ideal_send_backlog_is_reported_for_a_connected_socket() {
    let kernel = Kernel::boot();
    with_connection(&kernel, &EchoServer::start("127.0.0.1"), |socket| {
        let backlog = socket.ideal_send_backlog().expect("SIO_WSK_QUERY_IDEAL_SEND_BACKLOG");
        assert!(backlog >= 4096, "backlog {backlog}");
    });
    kernel.finish();
}

#[test]
fn peer_reset_mid_transfer_completes_every_outstanding_request_once_with_the_failure() {
    let kernel = Kernel::boot();
    with_connection(&kernel, &EchoServer::resetting_after(8 * MIB), |socket| {
        let mut t = Transfer::new(64 * MIB);
        let err = t.echo_all(&socket).expect_err("the peer resets before 64 MiB");
        assert!(err.starts_with("completion failed"), "{err}");
        t.drain(STALL).expect("every outstanding request completes");
        assert!(t.failures.contains(&STATUS_CONNECTION_RESET), "{:?}", t.failures);
        // The socket no longer works: a new request fails through its completion, too.
        t.total = u64::MAX;
        t.issue(&socket).expect("issued");
        t.drain(STALL).expect("completes");
        assert!(t.failures.iter().all(|s| *s == STATUS_CONNECTION_RESET), "{:?}", t.failures);
        socket.close();
        t.assert_quiet(QUIET);
    });
    kernel.finish();
}

#[test]
fn forced_close_mid_transfer_completes_every_outstanding_request_with_file_forced_closed() {
    let kernel = booted(Faults {
        forced_close_after_bytes: Some(8 * MIB),
        pend_every_send: true,
        ..Faults::default()
    });
    with_connection(&kernel, &EchoServer::start("127.0.0.1"), |socket| {
        let mut t = Transfer::new(64 * MIB);
        t.echo_all(&socket).expect_err("the transport goes away at 8 MiB");
        t.drain(STALL).expect("every outstanding request completes");
        assert!(!t.failures.is_empty());
        assert!(t.failures.iter().all(|s| *s == STATUS_FILE_FORCED_CLOSED), "{:?}", t.failures);
        let before = t.failures.len();
        t.issue(&socket).expect("issued");
        t.drain(STALL).expect("completes");
        assert!(t.failures.len() > before);
        assert!(t.failures.iter().all(|s| *s == STATUS_FILE_FORCED_CLOSED), "{:?}", t.failures);
        socket.close();
        t.assert_quiet(QUIET);
    });
    kernel.finish();
}

/// A transport where the first request on a connection breaks it as `breaks` says.
fn breaking(breaks: Breaks) -> Kernel {
    booted(Faults { breaks: Some(breaks), ..Faults::default() })
}

/// Echoes until the break, then checks that every request completed once, each failure
/// with `status`, and that a request issued afterwards fails the same way.
fn echo_until_broken(kernel: &Kernel, status: NTSTATUS) {
    with_connection(kernel, &EchoServer::start("127.0.0.1"), |socket| {
        let mut t = Transfer::new(MIB);
        t.echo_all(&socket).expect_err("the connection breaks");
        t.drain(STALL).expect("every outstanding request completes");
        assert!(!t.failures.is_empty() && t.failures.iter().all(|s| *s == status), "{:?}", t.failures);
        let before = t.failures.len();
        t.issue(&socket).expect("issued");
        t.drain(STALL).expect("completes");
        assert!(t.failures.len() > before && t.failures.iter().all(|s| *s == status), "{:?}", t.failures);
        socket.close();
        t.assert_quiet(QUIET);
    });
}

#[test]
fn a_drawn_reset_fails_every_request_with_connection_reset_and_is_counted() {
    let kernel = breaking(Breaks { reset: 1.0, ..Breaks::default() });
    echo_until_broken(&kernel, STATUS_CONNECTION_RESET);
    assert_eq!(kernel.stats().resets_injected, 1, "one connection, reset once");
    kernel.finish();
}

#[test]
fn a_drawn_forced_close_fails_every_request_with_file_forced_closed_and_is_counted() {
    let kernel = breaking(Breaks { forced_close: 1.0, ..Breaks::default() });
    echo_until_broken(&kernel, STATUS_FILE_FORCED_CLOSED);
    assert_eq!(kernel.stats().forced_closes_injected, 1);
    kernel.finish();
}

#[test]
fn a_drawn_stall_holds_a_connection_still_for_its_time_then_it_carries_on() {
    let stall = Duration::from_millis(300);
    let kernel = breaking(Breaks { stall: 1.0, stall_time: (stall, stall), ..Breaks::default() });
    let started = Instant::now();
    echo(&kernel, "127.0.0.1", MIB);
    assert!(started.elapsed() >= stall, "the echo took {:?}, less than the stall", started.elapsed());
    assert!(kernel.stats().stalls_injected >= 1);
    kernel.finish();
}

#[test]
fn forced_close_of_an_idle_socket_fails_its_pending_receives() {
    let kernel = Kernel::boot();
    with_connection(&kernel, &EchoServer::start("127.0.0.1"), |socket| {
        let mut t = Transfer::new(0);
        t.issue(&socket).expect("receives posted");
        kernel.force_close_sockets();
        t.drain(STALL).expect("every receive completes");
        assert_eq!(t.failures, vec![STATUS_FILE_FORCED_CLOSED; 3]);
    });
    kernel.finish();
}

#[test]
fn close_cancels_pending_receives_each_exactly_once() {
    let kernel = Kernel::boot();
    with_connection(&kernel, &EchoServer::start("127.0.0.1"), |socket| {
        let mut t = Transfer::new(0);
        t.issue(&socket).expect("receives posted");
        socket.close();
        t.drain(STALL).expect("every receive completes");
        assert_eq!(t.failures, vec![STATUS_CANCELLED; 3]);
        t.assert_quiet(QUIET);
    });
    kernel.finish();
}

#[test]
fn refused_connect_returns_connection_refused_within_the_timeout() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let started = Instant::now();
        let r = client().connect(closed_port(), 2_000);
        assert_eq!(r.err(), Some(STATUS_CONNECTION_REFUSED));
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }
    kernel.finish();
}

#[test]
fn connect_that_never_answers_is_cancelled_and_times_out() {
    let kernel = booted(Faults { connect_never_answers: true, ..Faults::default() });
    {
        let _in = kernel.enter();
        let started = Instant::now();
        let r = client().connect("127.0.0.1:9".parse().expect("addr"), 300);
        let took = started.elapsed();
        assert_eq!(r.err(), Some(STATUS_IO_TIMEOUT));
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "took {took:?}");
    }
    kernel.finish();
}

#[test]
fn connect_before_capturing_the_provider_is_refused_cleanly() {
    let kernel = Kernel::boot();
    {
        let _in = kernel.enter();
        let client = WskClient::register().expect("WskRegister");
        assert_eq!(client.connect(closed_port(), 1_000).err(), Some(STATUS_DEVICE_NOT_READY));
    }
    kernel.finish();
}

#[test]
fn registering_in_driver_entry_and_capturing_later_is_clean() {
    let kernel = Kernel::boot();
    let mut client = kernel.driver_entry(|| WskClient::register().expect("WskRegister in DriverEntry"));
    {
        let _in = kernel.enter();
        client.capture_provider(WSK_INFINITE_WAIT).expect("capture after DriverEntry");
        drop(client);
    }
    kernel.finish();
}

#[test]
fn capturing_the_provider_inside_driver_entry_is_reported() {
    let kernel = Kernel::boot();
    let client = kernel.driver_entry(client);
    {
        let _in = kernel.enter();
        drop(client);
    }
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::WskRegistration && r.detail.contains("DriverEntry")),
        "{reports:?}"
    );
    kernel.finish();
}

#[test]
fn a_transfer_leaves_no_pool_irp_or_mdl_behind() {
    let kernel = Kernel::boot();
    with_connection(&kernel, &EchoServer::start("127.0.0.1"), |socket| {
        let mut t = Transfer::new(MIB);
        t.echo_all(&socket).expect("echo");
        socket.close();
        t.drain(STALL).expect("drain");
    });
    let s = kernel.stats();
    assert_eq!((s.pool_bytes, s.irps, s.mdls, s.sockets), (0, 0, 0, 0), "{s:?}");
    assert!(s.pool_peak_bytes > 0);
    kernel.finish();
}

/// A handler that lingers after telling its owner the outcome.
struct SlowHandler {
    tx: mpsc::Sender<()>,
    finished: Arc<AtomicBool>,
}

impl Completion for SlowHandler {
    fn completed(&self, _status: NTSTATUS, _bytes: usize) {
        let _ = self.tx.send(());
        // Still running on the request's memory while the owner reacts.
        std::thread::sleep(QUIET);
        self.finished.store(true, Ordering::SeqCst);
    }
}

#[test]
fn dropping_a_request_right_after_its_outcome_waits_for_the_completion_routine() {
    // Every send pends, so the outcome arrives from the provider thread while this thread
    // is free to drop the request at once.
    let kernel = booted(Faults { pend_every_send: true, ..Faults::default() });
    with_connection(&kernel, &EchoServer::start("127.0.0.1"), |socket| {
        let (tx, rx) = mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let request = Request::new(SlowHandler { tx, finished: finished.clone() }).expect("request");
        let buffer = PoolBuffer::new(100, TAG_TEST).expect("buffer");
        // SAFETY: the buffer is untouched until the outcome arrives.
        unsafe { request.send(&socket, WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: 100 }, 0) }
            .expect("issued");
        rx.recv_timeout(Duration::from_secs(5)).expect("outcome");
        drop(request);
        assert!(finished.load(Ordering::SeqCst), "drop returned while the handler still ran");
    });
    kernel.finish();
}

#[test]
fn disconnect_stuck_behind_a_stalled_send_times_out_and_close_still_cancels_the_send() {
    let kernel = Kernel::boot();
    with_connection(&kernel, &EchoServer::silent(), |socket| {
        let (tx, rx) = mpsc::channel();
        let request = common::request(0, &tx);
        let chunks: Vec<PoolBuffer> =
            (0..4).map(|_| PoolBuffer::new(8 << 20, TAG_TEST).expect("8 MiB")).collect();
        let refs: Vec<&PoolBuffer> = chunks.iter().collect();
        // SAFETY: the chain is ours; nothing touches it until the outcome arrives.
        unsafe {
            let head = PoolBuffer::chain(&refs);
            request.send(&socket, WSK_BUF { Mdl: head, Offset: 0, Length: 32 << 20 }, 0).expect("issued");
        }
        // The FIN queues behind 32 MiB the peer will never read.
        assert_eq!(socket.disconnect(300), Err(STATUS_IO_TIMEOUT));
        let started = Instant::now();
        socket.close();
        assert!(started.elapsed() < Duration::from_secs(2), "close took {:?}", started.elapsed());
        let done = rx.recv_timeout(STALL).expect("the send completes");
        assert_eq!(done.status, STATUS_CANCELLED);
    });
    kernel.finish();
}

#[test]
fn forced_close_while_connecting_fails_the_connect_and_leaves_no_socket() {
    let kernel = booted(Faults { connect_never_answers: true, ..Faults::default() });
    let connecting = kernel.spawn(|| client().connect("127.0.0.1:9".parse().expect("addr"), 10_000).err());
    while kernel.stats().sockets == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    kernel.force_close_sockets();
    assert_eq!(connecting.join().expect("connect thread"), Some(STATUS_FILE_FORCED_CLOSED));
    assert_eq!(kernel.stats().sockets, 0);
    kernel.finish();
}

#[test]
fn a_byte_changed_on_the_wire_is_caught_by_the_transfer_check() {
    let kernel = Kernel::boot();
    with_connection(&kernel, &EchoServer::corrupting_at(3 * MIB + 12345), |socket| {
        let mut t = Transfer::new(8 * MIB);
        let err = t.echo_all(&socket).expect_err("the corrupted byte is found");
        assert_eq!(err, format!("byte {} of the stream is wrong", 3 * MIB + 12345));
        socket.close(); // completes every request still pending; their bytes are moot now
    });
    kernel.finish();
}

/// A throttled transport: socket send buffers of a few KiB.
fn throttled() -> Faults {
    Faults { send_buffer_bytes: Some(4096), ..Faults::default() }
}

#[test]
fn throttled_transport_pends_many_sends_and_still_echoes_4_mib_byte_for_byte() {
    let kernel = booted(throttled());
    echo(&kernel, "127.0.0.1", 4 * MIB);
    let stats = kernel.stats();
    // Unthrottled, none of these sends pends; throttled, about half do (loopback acks
    // some of them within the write).
    let sends = stats.sends_pended + stats.sends_inline;
    assert!(stats.sends_pended * 5 >= sends, "at least one send in five pended: {stats:?}");
    kernel.finish();
}

#[test]
fn throttled_transport_reports_an_ideal_send_backlog_of_its_small_send_buffer() {
    let kernel = booted(throttled());
    with_connection(&kernel, &EchoServer::start("127.0.0.1"), |socket| {
        let backlog = socket.ideal_send_backlog().expect("SIO_WSK_QUERY_IDEAL_SEND_BACKLOG");
        assert!((4096..=16 * 1024).contains(&backlog), "backlog {backlog}");
    });
    kernel.finish();
}

#[test]
fn throttled_send_to_a_peer_that_reads_nothing_stays_pending_until_the_peer_reads() {
    let kernel = booted(throttled());
    let (server, reader) = EchoServer::held_reader(4096);
    let length = MIB as usize;
    with_connection(&kernel, &server, |socket| {
        let mut buffer = PoolBuffer::new(length, TAG_TEST).expect("buffer");
        for (pos, b) in buffer.as_mut_slice().iter_mut().enumerate() {
            *b = pattern(pos as u64);
        }
        let (tx, rx) = mpsc::channel();
        let request = common::request(1, &tx);
        let buf = WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: length };
        // SAFETY: our buffer and its MDL, left alone until the send completes.
        unsafe { request.send(&socket, buf, 0) }.expect("issued");
        assert!(rx.recv_timeout(HELD).is_err(), "the send completed though the peer read nothing");
        assert_eq!(kernel.stats().sends_pended, 1);

        reader.release();
        let done = rx.recv_timeout(STALL).expect("the send completes once the peer reads");
        assert_eq!((done.status, done.bytes), (STATUS_SUCCESS, length));
        socket.disconnect(CONNECT_TIMEOUT_MS).expect("graceful disconnect");
        let got = reader.bytes(STALL);
        assert_eq!(got.len(), length, "every byte reached the peer");
        assert!(got.iter().enumerate().all(|(pos, &b)| b == pattern(pos as u64)), "and in order");
        socket.close();
    });
    kernel.finish();
}

/// Sends with and without WSK_FLAG_NODELAY, each waited for, and reads Nagle's state off
/// the TCP socket after each.
fn nagle_follows_each_sends_flag(kernel: &Kernel) {
    let server = EchoServer::start("127.0.0.1");
    with_connection(kernel, &server, |socket| {
        assert_eq!(kernel.nagle(server.addr), [true], "Nagle is on, as on Windows, until a send asks");
        let buffer = PoolBuffer::new(100, TAG_TEST).expect("buffer");
        let (tx, rx) = mpsc::channel();
        let request = common::request(0, &tx);
        for (flags, nagle) in
            [(WSK_FLAG_NODELAY, false), (WSK_FLAG_NODELAY, false), (0, true), (WSK_FLAG_NODELAY, false)]
        {
            // SAFETY: our buffer and its MDL, left alone until the send completes.
            unsafe { request.send(&socket, WSK_BUF { Mdl: buffer.mdl(), Offset: 0, Length: 100 }, flags) }
                .expect("issued");
            let done = rx.recv_timeout(STALL).expect("the send completes");
            assert_eq!((done.status, done.bytes), (STATUS_SUCCESS, 100));
            assert_eq!(kernel.nagle(server.addr), [nagle], "after a send with flags {flags:#x}");
        }
        socket.close();
    });
}

#[test]
fn wsk_flag_nodelay_turns_nagle_off_for_its_send_and_a_send_without_it_turns_it_back_on() {
    let kernel = Kernel::boot();
    nagle_follows_each_sends_flag(&kernel);
    assert!(kernel.stats().sends_inline >= 4, "{:?}", kernel.stats());
    kernel.finish();
}

#[test]
fn a_pended_send_keeps_its_wsk_flag_nodelay_until_the_provider_writes_it() {
    let kernel = booted(Faults { pend_every_send: true, ..Faults::default() });
    nagle_follows_each_sends_flag(&kernel);
    assert!(kernel.stats().sends_pended >= 4, "{:?}", kernel.stats());
    kernel.finish();
}
