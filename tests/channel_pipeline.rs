//! The channel's send and receive pipelines under a hostile transport, transport failures,
//! a consumer that stops reading, WSK_FLAG_WAITALL, close with requests pending, and the
//! end of the stream.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use common::consumer::{ConsumerIrp, ECHO, Stream, channel_config};
use common::peers::test_pki;
use common::proxy::{Fault, Proxy};
use common::{Done, STALL, TAG_TEST, client};
use echo_peer::{Config as PeerConfig, Mode, Peer};
use ntsim::{Breaks, Config, Faults, Kernel};
use wsktls::channel::{Channel, ReceiveStats, State};
use wsktls::interface;
use wsktls::nt::{
    NTSTATUS, PoolBuffer, STATUS_CANCELLED, STATUS_CONNECTION_RESET, STATUS_FILE_FORCED_CLOSED,
    STATUS_INVALID_DEVICE_STATE, STATUS_PENDING, STATUS_SUCCESS, WSK_BUF, WSK_FLAG_NODELAY, WSK_FLAG_WAITALL,
};
use wsktls::wsk::PREFILLED;

const MIB: u64 = 1024 * 1024;

fn peer(mode: Mode) -> Peer {
    let pki = test_pki();
    let mut c = PeerConfig::new(&pki.server.chain, &pki.server.key);
    c.mode = mode;
    Peer::start("127.0.0.1:0".parse().unwrap(), c).expect("echo-peer")
}

/// One request of `len` bytes on a fresh IRP and buffer, issued; the caller waits.
struct One {
    irp: ConsumerIrp,
    buffer: PoolBuffer,
}

impl One {
    fn new(id: usize, tx: &mpsc::Sender<Done>, len: usize) -> One {
        One { irp: ConsumerIrp::new(id, tx), buffer: PoolBuffer::new(len, TAG_TEST).expect("buffer") }
    }

    fn buf(&self) -> WSK_BUF {
        WSK_BUF { Mdl: self.buffer.mdl(), Offset: 0, Length: self.buffer.len() }
    }

    fn receive(&self, channel: &Channel, flags: u32) -> NTSTATUS {
        // SAFETY: our armed IRP and buffer, alive until the completion.
        unsafe { interface::receive(channel, &self.buf(), flags, self.irp.arm()) }
    }

    fn send(&self, channel: &Channel, flags: u32) -> NTSTATUS {
        // SAFETY: as above.
        unsafe { interface::send(channel, &self.buf(), flags, self.irp.arm()) }
    }
}

#[test]
fn echoes_32_mib_when_every_request_pends_completes_late_split_or_inline_at_dispatch() {
    let kernel = Kernel::boot_with(Config { faults: Faults::hostile_transport(), ..Config::default() });
    let peer = peer(Mode::Echo);
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(peer.addr(), "localhost")).expect("connect");
        let mut stream = Stream::new(32 * MIB, ECHO);
        stream.run(&channel, STALL).unwrap_or_else(|e| panic!("{e} (seed {})", kernel.seed()));
        channel.disconnect(5_000).expect("disconnect");
        stream.expect_end(STALL).expect("end");
        channel.close();
    }
    let stats = kernel.stats();
    assert!(stats.sends_pended > 100 && stats.receives_split > 100, "{stats:?}");
    kernel.finish();
}

#[test]
fn bulk_crypto_saves_the_extended_state_once_per_batch_not_per_record() {
    let kernel = Kernel::boot();
    let peer = peer(Mode::Echo);
    let records = {
        let _in = kernel.enter();
        let client = client();
        // Batches of several records each way, so that once per batch is not once per
        // record: a budget of 16 records (4 per WskSend) and a receive buffer of 8.
        let mut config = channel_config(peer.addr(), "localhost");
        config.send_budget = Some(256 * 1024);
        config.receive_buffer = 128 * 1024;
        let channel = Channel::connect(&client, &config).expect("connect");
        let before = kernel.stats().xstate_saves;
        let mut stream = Stream::new(16 * MIB, ECHO);
        stream.run(&channel, STALL).expect("echo");
        let info = channel.info();
        channel.close();
        stream.drain_statuses(STALL).expect("close completes the posted receives");
        let saves = kernel.stats().xstate_saves - before;
        let records = info.sent.records + info.received.records;
        assert!(saves > 0, "crypto ran with the extended state saved");
        (records, saves)
    };
    let (records, saves) = records;
    eprintln!("{saves} extended-state saves for {records} records");
    // Every save was restored (ntsim reports otherwise); and they are far fewer than records.
    assert!(saves * 2 <= records, "{saves} saves for {records} records");
    kernel.finish();
}

/// Echo through a proxy that breaks the connection; the failure is `expected` and sticky.
fn transport_fails(kernel: &Kernel, addr: SocketAddr, expected: NTSTATUS, during: impl FnOnce()) {
    let _in = kernel.enter();
    let client = client();
    let channel = Channel::connect(&client, &channel_config(addr, "localhost")).expect("connect");
    let mut stream = Stream::new(64 * MIB, ECHO);
    during();
    let err = stream.run(&channel, STALL).expect_err("the transport fails");
    assert!(
        err.contains(&format!("{expected:?}")) || err.contains(&format!("{STATUS_FILE_FORCED_CLOSED:?}")),
        "{err}"
    );
    for (id, status, _) in stream.drain_statuses(STALL).expect("every request completes") {
        assert!(status == expected || status == STATUS_FILE_FORCED_CLOSED, "request {id}: {status:?}");
    }
    assert_eq!(channel.state(), State::Failed(expected));
    channel.close();
}

#[test]
fn a_peer_reset_fails_the_channel_with_connection_reset() {
    let kernel = Kernel::boot();
    let peer = peer(Mode::Echo);
    let proxy = Proxy::start(peer.addr(), Fault::ResetAt(2 * MIB));
    transport_fails(&kernel, proxy.addr, STATUS_CONNECTION_RESET, || {});
    kernel.finish();
}

#[test]
fn a_forced_close_of_the_socket_fails_the_channel_with_forced_closed() {
    let faults = Faults { forced_close_after_bytes: Some(3 * MIB), ..Faults::default() };
    let kernel = Kernel::boot_with(Config { faults, ..Config::default() });
    let peer = peer(Mode::Echo);
    transport_fails(&kernel, peer.addr(), STATUS_FILE_FORCED_CLOSED, || {});
    kernel.finish();
}

/// Waits (2 s at most) until a channel from a Source peer whose consumer is not reading
/// has filled its receive buffer and stopped posting receives; its receive side then.
fn receiving_stops(channel: &Channel) -> ReceiveStats {
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        let r = channel.info().received;
        if !r.receive_posted {
            return r;
        }
    }
    panic!("the receive buffer fills and receiving stops");
}

/// What a consumer's completion routine does with a send that failed: sends again at
/// once, from the routine, as a driver that retries might; the second call's return.
struct Retry {
    channel: *const Channel,
    again: One,
    returned: std::sync::Mutex<Option<NTSTATUS>>,
    done: mpsc::Sender<Done>,
}

unsafe extern "system" fn send_again_if_failed(
    _device: *mut wsktls::nt::DEVICE_OBJECT,
    irp: *mut wsktls::nt::IRP,
    context: *mut std::ffi::c_void,
) -> NTSTATUS {
    // SAFETY: the context is the test's Retry, alive until both sends complete.
    let retry = unsafe { &*(context as *const Retry) };
    // SAFETY: the completed IRP.
    let (status, bytes) = unsafe { ((*irp).IoStatus.status(), (*irp).IoStatus.Information) };
    if !status.is_success() {
        // SAFETY: the channel outlives both sends; `again` is idle until now.
        let r = unsafe { retry.again.send(&*retry.channel, 0) };
        *retry.returned.lock().unwrap() = Some(r);
    }
    let _ = retry.done.send(Done { id: 0, status, bytes });
    wsktls::nt::STATUS_MORE_PROCESSING_REQUIRED
}

#[test]
fn a_send_issued_from_the_completion_of_a_send_the_transport_failed_is_refused_as_forced_closed() {
    let kernel = Kernel::boot();
    let source = peer(Mode::Source);
    {
        let _in = kernel.enter();
        let client = client();
        let channel =
            Channel::connect(&client, &channel_config(source.addr(), "localhost")).expect("connect");
        // Nobody reads: once the receive buffer is full no WskReceive is posted, so only
        // the send pipeline can learn of the reset.
        receiving_stops(&channel);
        // From now on the first WskSend resets the connection.
        kernel.set_faults(Faults {
            breaks: Some(Breaks { reset: 1.0, ..Breaks::default() }),
            ..Faults::default()
        });
        let (tx, rx) = mpsc::channel();
        let retry =
            Retry { channel: &channel, again: One::new(1, &tx, 100), returned: Default::default(), done: tx };
        let first = PoolBuffer::new(1000, TAG_TEST).expect("buffer");
        // SAFETY: a fresh IRP with one stack location for the consumer's routine.
        let irp = unsafe { wsktls::nt::IoAllocateIrp(1, wsktls::nt::FALSE) };
        assert!(!irp.is_null());
        let context = &retry as *const Retry as *mut std::ffi::c_void;
        let buf = WSK_BUF { Mdl: first.mdl(), Offset: 0, Length: first.len() };
        // SAFETY: our IRP and buffer, alive until the completion; `retry` outlives it.
        let returned = unsafe {
            wsktls::nt::IoSetCompletionRoutine(irp, Some(send_again_if_failed), context, true, true, true);
            interface::send(&channel, &buf, 0, irp)
        };
        assert_eq!(returned, STATUS_PENDING);
        // The second send completes inside the first's routine, before it reports.
        let mut done: Vec<Done> =
            (0..2).map(|_| rx.recv_timeout(STALL).expect("both sends complete")).collect();
        done.sort_by_key(|d| d.id);
        assert_eq!(done[0].status, STATUS_CONNECTION_RESET, "the first send meets the reset");
        assert_eq!(
            *retry.returned.lock().unwrap(),
            Some(STATUS_FILE_FORCED_CLOSED),
            "the failure is sticky at once"
        );
        assert_eq!(done[1].status, STATUS_FILE_FORCED_CLOSED);
        channel.close();
        // SAFETY: completed, and ours again.
        unsafe { wsktls::nt::IoFreeIrp(irp) };
        assert_eq!(kernel.stats().resets_injected, 1);
    }
    kernel.finish();
}

#[test]
fn a_consumer_that_stops_reading_holds_a_bounded_buffer_and_no_receive_is_posted() {
    let kernel = Kernel::boot();
    let source = peer(Mode::Source);
    {
        let _in = kernel.enter();
        let client = client();
        let channel =
            Channel::connect(&client, &channel_config(source.addr(), "localhost")).expect("connect");
        // Nobody reads: the receive buffer fills, and then no receive is posted.
        let full = receiving_stops(&channel);
        assert!(full.buffered_bytes <= full.buffer_capacity, "{full:?}");
        let sent = source.stats().bytes_sent();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(channel.info().received.buffered_bytes, full.buffered_bytes, "nothing more is taken");
        assert!(source.stats().bytes_sent() - sent < 8 * MIB, "TCP's window holds the peer back");
        // Reading again drains the buffer and the bytes are the source's, in order.
        let (tx, rx) = mpsc::channel();
        let one = One::new(1, &tx, 4 * MIB as usize);
        assert_eq!(one.receive(&channel, WSK_FLAG_WAITALL), STATUS_PENDING);
        let done = rx.recv_timeout(STALL).expect("the receive completes");
        assert_eq!((done.status, done.bytes), (STATUS_SUCCESS, 4 * MIB as usize), "WAITALL fills it");
        let mut expected = vec![0u8; 4 * MIB as usize];
        echo_peer::source_pattern(0, &mut expected);
        assert!(one.buffer.as_slice() == &expected[..], "the source's bytes, in order");
        channel.close();
    }
    kernel.finish();
}

#[test]
fn close_completes_pending_requests_as_cancelled_and_leaves_nothing() {
    let kernel = Kernel::boot();
    let sink = peer(Mode::Sink);
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(sink.addr(), "localhost")).expect("connect");
        let (tx, rx) = mpsc::channel();
        let receives: Vec<One> = (0..3).map(|i| One::new(i, &tx, 4096)).collect();
        for r in &receives {
            assert_eq!(r.receive(&channel, 0), STATUS_PENDING);
        }
        channel.close();
        let mut done: Vec<Done> = rx.try_iter().collect();
        done.sort_by_key(|d| d.id);
        assert_eq!(done.len(), 3, "close returns after every request completed");
        assert!(done.iter().all(|d| d.status == STATUS_CANCELLED), "{done:?}");
    }
    kernel.finish();
}

#[test]
fn after_close_notify_both_ways_receives_complete_with_zero_bytes_and_sends_are_refused() {
    let kernel = Kernel::boot();
    let echo = peer(Mode::Echo);
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(echo.addr(), "localhost")).expect("connect");
        let (tx, rx) = mpsc::channel();
        let send = One::new(0, &tx, 1000);
        assert_eq!(send.send(&channel, 0), STATUS_PENDING);
        let receive = One::new(1, &tx, 1000);
        assert_eq!(receive.receive(&channel, WSK_FLAG_WAITALL), STATUS_PENDING);
        let mut got: Vec<Done> = (0..2).map(|_| rx.recv_timeout(STALL).expect("completion")).collect();
        got.sort_by_key(|d| d.id);
        assert!(got.iter().all(|d| d.status == STATUS_SUCCESS && d.bytes == 1000), "{got:?}");
        channel.disconnect(5_000).expect("disconnect");
        assert_eq!(
            send.send(&channel, 0),
            STATUS_INVALID_DEVICE_STATE,
            "nothing may follow our close_notify"
        );
        rx.recv_timeout(STALL).expect("the refused send completes too");
        // The peer answers with its own close_notify: the end of the stream, every time.
        for _ in 0..2 {
            assert_eq!(receive.receive(&channel, 0), STATUS_PENDING);
            let d = rx.recv_timeout(STALL).expect("completion");
            assert_eq!((d.status, d.bytes), (STATUS_SUCCESS, 0));
        }
        assert_eq!(channel.state(), State::Closed);
        channel.close();
    }
    kernel.finish();
}

#[test]
fn nagle_holds_back_no_flight_or_record_of_ours_and_follows_each_consumer_sends_wsk_flag_nodelay() {
    let kernel = Kernel::boot();
    let sink = peer(Mode::Sink);
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(sink.addr(), "localhost")).expect("connect");
        assert_eq!(kernel.nagle(sink.addr()), [false], "the handshake's flights went with WSK_FLAG_NODELAY");
        let (tx, rx) = mpsc::channel();
        let send = One::new(0, &tx, 1000);
        for (flags, nagle) in [(0, true), (WSK_FLAG_NODELAY, false), (0, true)] {
            assert_eq!(send.send(&channel, flags), STATUS_PENDING);
            let d = rx.recv_timeout(STALL).expect("completion");
            assert_eq!((d.status, d.bytes), (STATUS_SUCCESS, 1000));
            assert_eq!(kernel.nagle(sink.addr()), [nagle], "after a consumer send with flags {flags:#x}");
        }
        channel.disconnect(5_000).expect("disconnect");
        assert_eq!(kernel.nagle(sink.addr()), [false], "our close_notify went with WSK_FLAG_NODELAY");
        channel.close();
    }
    kernel.finish();
}

/// A TLS server that, once the handshake is done, sends `records` records of `size` bytes
/// (byte i of the stream is `i as u8`), then close_notify, then a FIN, and reads nothing.
fn tiny_records_server(records: usize, size: usize) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::Write;
    let pki = test_pki();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&pki.server.chain).expect("chain").map(|c| c.expect("cert")).collect();
    let key = PrivateKeyDer::from_pem_file(&pki.server.key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut tcp, _)) = listener.accept() else { return };
        let mut conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).expect("server");
        while conn.is_handshaking() {
            if conn.complete_io(&mut tcp).is_err() {
                return;
            }
        }
        for r in 0..records {
            let bytes: Vec<u8> = (0..size).map(|i| (r * size + i) as u8).collect();
            // One write, one record.
            let _ = conn.writer().write_all(&bytes);
        }
        conn.send_close_notify();
        while conn.wants_write() {
            if conn.write_tls(&mut tcp).is_err() {
                return;
            }
        }
        let _ = tcp.shutdown(std::net::Shutdown::Write);
        // Stay until the client is done, so our socket's end is a FIN, not a reset.
        let _ = std::io::Read::read_to_end(&mut tcp, &mut Vec::new());
    });
    addr
}

#[test]
fn close_notify_behind_unread_records_is_a_clean_end_not_a_truncation() {
    let kernel = Kernel::boot();
    // More records than the channel keeps opened for a consumer that is not reading.
    let addr = tiny_records_server(40, 10);
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(addr, "localhost")).expect("connect");
        // Let every record, the close_notify and the FIN arrive before anyone reads.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(channel.state(), State::Open);
        let (tx, rx) = mpsc::channel();
        // One WAITALL receive for all of it: opening must go on as delivering makes room.
        let all = One::new(0, &tx, 400);
        assert_eq!(all.receive(&channel, WSK_FLAG_WAITALL), STATUS_PENDING);
        let d = rx.recv_timeout(STALL).expect("the receive completes");
        assert_eq!((d.status, d.bytes), (STATUS_SUCCESS, 400));
        assert!(all.buffer.as_slice().iter().enumerate().all(|(i, &b)| b == i as u8), "in order");
        assert_eq!(all.receive(&channel, 0), STATUS_PENDING);
        let d = rx.recv_timeout(STALL).expect("completion");
        assert_eq!((d.status, d.bytes), (STATUS_SUCCESS, 0), "then the end of the stream");
        channel.close();
    }
    kernel.finish();
}

#[test]
fn once_open_the_data_path_allocates_no_pool_irp_or_mdl() {
    let kernel = Kernel::boot();
    let echo = peer(Mode::Echo);
    {
        let _in = kernel.enter();
        let client = client();
        let channel = Channel::connect(&client, &channel_config(echo.addr(), "localhost")).expect("connect");
        // The consumer's own IRPs and buffers are made first; then only the channel runs.
        let mut stream = Stream::new(16 * MIB, ECHO);
        let before = kernel.stats().allocations;
        stream.run(&channel, STALL).expect("echo");
        let during = kernel.stats().allocations - before;
        assert_eq!(during, 0, "{during} allocations while 16 MiB went out and came back");
        channel.close();
        stream.drain_statuses(STALL).expect("close completes the posted receives");
    }
    kernel.finish();
}

#[test]
fn send_buffers_are_borrowed_from_the_client_while_in_flight_and_an_idle_channel_holds_none() {
    let kernel = Kernel::boot();
    let echo = peer(Mode::Echo);
    {
        let _in = kernel.enter();
        let client = client();
        assert_eq!(client.cached_send_buffers(), PREFILLED);
        let channels: Vec<Channel> = (0..3)
            .map(|_| Channel::connect(&client, &channel_config(echo.addr(), "localhost")).expect("connect"))
            .collect();
        assert_eq!(client.cached_send_buffers(), PREFILLED, "open channels borrow nothing until they send");
        let mut stream = Stream::new(8 * MIB, ECHO);
        stream.run(&channels[0], STALL).expect("echo");
        // Every send completed, so every buffer is back, for the next channel to use.
        assert_eq!(client.cached_send_buffers(), PREFILLED, "the idle channel gave its buffers back");
        for c in channels {
            c.close();
        }
        stream.drain_statuses(STALL).expect("close completes the posted receives");
    }
    kernel.finish();
}
