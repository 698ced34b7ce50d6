//! Hostile TLS 1.3 peers (issue 7): a server that completes a real handshake and then
//! misbehaves on purpose, or misbehaves inside the handshake. Each misbehaviour gets its
//! specific status within a bounded time, nothing after the fault reaches the consumer,
//! later requests are refused, and nothing is left behind (the kernel's unload checks each
//! test for leaks and verifier reports).

mod common;

use std::io::{self, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use common::consumer::channel_config;
use common::hostile::*;
use common::requests::Request;
use common::{STALL, client};
use ntsim::{Faults, Kernel};
use rustls::{AlertDescription, CipherSuite};
use wsktls::channel::{Channel, ChannelConfig, State};
use wsktls::nt::{
    NTSTATUS, SEC_E_ILLEGAL_MESSAGE, STATUS_CANCELLED, STATUS_FILE_FORCED_CLOSED, STATUS_IO_TIMEOUT,
    STATUS_PENDING, STATUS_SUCCESS, STATUS_WSKTLS_PEER_ALERT, STATUS_WSKTLS_TRUNCATED, WSK_FLAG_WAITALL,
};

/// A fault after the handshake is reported within this (the driver needs microseconds;
/// the rest is slack for a loaded machine).
const PROMPT: Duration = Duration::from_secs(5);

/// How long a receive that must stay pending is watched.
const QUIET: Duration = Duration::from_millis(300);

/// Records in a flood or a storm: far more than any limit a TLS stack sets (rustls and
/// OpenSSL allow 32 consecutive empty records; rustls 4 warnings, OpenSSL 5).
const FLOOD: usize = 1000;

/// Empty records in a row that a peer may send harmlessly: fewer than those limits.
const FEW_EMPTY: usize = 16;

/// KeyUpdate requests in one burst (fewer than the 32 that rustls and BoringSSL allow
/// between data records).
const KEY_UPDATE_BURST: usize = 20;

const BEFORE: &[u8] = b"application data before the fault";
const AFTER: &[u8] = b"application data after the fault: never delivered";

/// A request on a failed channel is refused at once, with STATUS_FILE_FORCED_CLOSED.
fn assert_refused(channel: &Channel) {
    let (send, returned) = Request::send(channel, b"x");
    assert_eq!((returned, send.wait().status), (STATUS_FILE_FORCED_CLOSED, STATUS_FILE_FORCED_CLOSED));
    let (receive, returned) = Request::receive(channel, 100);
    assert_eq!((returned, receive.wait().status), (STATUS_FILE_FORCED_CLOSED, STATUS_FILE_FORCED_CLOSED));
}

#[test]
fn bytes_a_waitall_receive_holds_at_a_fault_go_with_the_failure_and_count_as_received() {
    with_peer(
        Options::default(),
        |_| {},
        |channel, mut peer| {
            let partial = Request::pending_or_ready_receive(&channel, 4096, WSK_FLAG_WAITALL);
            peer.send_data(BEFORE).expect("send");
            // Opened and copied into the receive, which waits for the rest.
            let deadline = Instant::now() + STALL;
            while channel.info().received.records == 0 {
                assert!(Instant::now() < deadline, "the record arrives");
                thread::sleep(Duration::from_millis(5));
            }
            peer.send_alert(FATAL, AlertDescription::InternalError).expect("send");
            let done = partial.wait();
            assert_eq!((done.status, partial.received(&done)), (STATUS_WSKTLS_PEER_ALERT, BEFORE));
            let counted = channel.info().received.plaintext_bytes;
            assert_eq!(counted, BEFORE.len() as u64, "the bytes the consumer was given count");
        },
    );
}

/// A channel lent to another thread, as a consumer's Disconnect runs on a work item while
/// its completions run elsewhere.
struct OtherThread<'a>(&'a Channel);

// SAFETY: a channel is driven from many threads at once in the kernel (calls, completion
// routines, work items); Channel keeps its state under its own locks.
unsafe impl Send for OtherThread<'_> {}

impl<'a> OtherThread<'a> {
    /// The channel, on the thread this was sent to (a method, so a closure takes `self`
    /// whole and not its field, which is not Send).
    fn channel(self) -> &'a Channel {
        self.0
    }
}

#[test]
fn a_key_update_owed_when_disconnect_comes_is_sent_before_close_notify_and_close_notify_still_goes() {
    // Small TCP buffers and a peer that is not reading: the driver's sends stay pending.
    let faults = Faults { send_buffer_bytes: Some(4096), ..Faults::default() };
    let kernel = Kernel::boot_with(ntsim::Config { faults, ..ntsim::Config::default() });
    let hostile = HostilePeer::start_with(Options { receive_buffer: Some(4096), ..Options::default() });
    {
        let _in = kernel.enter();
        let client = client();
        let mut config = channel_config(hostile.addr(), "localhost");
        config.send_budget = Some(1 << 20);
        let channel = Channel::connect(&client, &config).expect("connect");
        let mut peer = hostile.session(STALL);
        // Every byte is sealed at once (the budget is large), and every one of the four
        // send slots holds a batch the socket has not taken: one of 40 KiB, three small.
        let sends: Vec<_> =
            [40 * 1024, 100, 100, 100].iter().map(|&n| Request::send(&channel, &vec![7; n]).0).collect();
        // The peer asks for a KeyUpdate, which the driver owes but has no slot to send...
        peer.send_key_update(true).expect("KeyUpdate");
        let deadline = Instant::now() + STALL;
        while channel.info().received.key_updates == 0 {
            assert!(Instant::now() < deadline, "the driver takes the KeyUpdate");
            thread::sleep(Duration::from_millis(5));
        }
        thread::scope(|s| {
            // ...when the consumer disconnects: close_notify is asked for behind it.
            let (on, kernel) = (OtherThread(&channel), &kernel);
            let disconnect = s.spawn(move || {
                let _in = kernel.enter();
                on.channel().disconnect(10_000)
            });
            thread::sleep(Duration::from_millis(100));
            // The peer reads: the data, then our KeyUpdate, then close_notify under the
            // new key (read_record follows the KeyUpdate).
            let mut last = Vec::new();
            while let Some(r) = peer.read_record(STALL).expect("every record opens") {
                last.push((r.content_type, r.content.first().copied()));
            }
            let tail = &last[last.len().saturating_sub(2)..];
            assert_eq!(tail, [(HANDSHAKE, Some(KEY_UPDATE)), (ALERT, Some(WARNING))], "{last:?}");
            assert_eq!(disconnect.join().expect("joined"), Ok(()));
        });
        for send in &sends {
            assert_eq!(send.wait().status, STATUS_SUCCESS);
        }
        channel.close();
    }
    kernel.finish();
}

/// Opens a channel (with `config` adjusted) to a hostile peer made with `options` and runs
/// `test` with the channel and the peer's side of the connection.
fn with_peer(options: Options, adjust: impl FnOnce(&mut ChannelConfig), test: impl FnOnce(Channel, Session)) {
    with_peer_on(Kernel::boot(), options, adjust, test)
}

/// As [`with_peer`], on this kernel.
fn with_peer_on(
    kernel: Kernel,
    options: Options,
    adjust: impl FnOnce(&mut ChannelConfig),
    test: impl FnOnce(Channel, Session),
) {
    let peer = HostilePeer::start_with(options);
    {
        let _in = kernel.enter();
        let client = client();
        let mut config = channel_config(peer.addr(), "localhost");
        adjust(&mut config);
        let channel = Channel::connect(&client, &config).expect("connect to the hostile peer");
        test(channel, peer.session(STALL));
    }
    kernel.finish();
}

/// The shape of every fault after the handshake: the peer sends data, which the consumer
/// gets; then `fault`, then more data. The receive pending at the fault completes with
/// `expected`, promptly and with no byte; the channel stays failed with that status and
/// refuses later requests; the peer hears `alert` (a fatal alert) or, with `None`,
/// nothing at all.
fn fails_after_data(fault: impl FnOnce(&mut Session), expected: NTSTATUS, alert: Option<AlertDescription>) {
    with_peer(
        Options::default(),
        |_| {},
        |channel, mut peer| {
            let first = Request::pending_receive(&channel, 4096);
            peer.send_data(BEFORE).expect("send");
            let done = first.wait();
            assert_eq!(
                (done.status, first.received(&done)),
                (STATUS_SUCCESS, BEFORE),
                "data before the fault"
            );

            let second = Request::pending_receive(&channel, 4096);
            let start = Instant::now();
            fault(&mut peer);
            // The driver may have closed on us by now; what matters is that this never arrives.
            let _ = peer.send_data(AFTER);
            let done = second.wait();
            assert_eq!(done.status, expected, "the receive pending at the fault");
            assert!(start.elapsed() < PROMPT, "the fault took {:?} to report", start.elapsed());
            assert!(done.bytes == 0 && second.untouched(), "nothing after the fault is delivered: {done:?}");
            assert_eq!(channel.state(), State::Failed(expected));
            assert_refused(&channel);

            if let Some(alert) = alert {
                let heard = peer.read_alert(STALL).expect("the driver's alert");
                assert_eq!(heard, Some((FATAL, u8::from(alert))), "the alert the peer hears");
            }
            channel.close();
            assert_eq!(peer.read_record(STALL).expect("the end of the connection"), None, "nothing more");
        },
    );
}

#[test]
fn the_hostile_peers_own_records_carry_data_both_ways_in_every_suite_and_across_key_updates() {
    for suite in [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let options = Options { suite: Some(suite), ..Options::default() };
        with_peer(
            options,
            |_| {},
            |channel, mut peer| {
                assert_eq!(peer.suite(), suite);
                for round in 0..3 {
                    if round > 0 {
                        // Both sides switch keys: ours now, the driver's before it next sends.
                        peer.send_key_update(true).expect("KeyUpdate");
                    }
                    let receive = Request::pending_receive(&channel, 4096);
                    let data = format!("round {round}: sealed by the peer itself");
                    peer.send_data(data.as_bytes()).expect("send");
                    let done = receive.wait();
                    assert_eq!((done.status, receive.received(&done)), (STATUS_SUCCESS, data.as_bytes()));
                    let (send, status) = Request::send(&channel, b"opened by the peer itself");
                    assert_eq!(status, STATUS_PENDING);
                    assert_eq!(send.wait().status, STATUS_SUCCESS);
                    assert_eq!(peer.read_data(25, STALL).expect("data"), b"opened by the peer itself");
                }
                let info = channel.info();
                assert_eq!((info.received.key_updates, info.sent.key_updates), (2, 2));
                channel.close();
            },
        );
    }
}

// ---- Records past the size limits (RFC 8446 §5.2, §5.4) ----

#[test]
fn a_record_whose_ciphertext_exceeds_2_14_plus_256_is_a_record_overflow() {
    fails_after_data(
        |peer| {
            // Content, type byte and tag: one byte more than a ciphertext may hold.
            let record = peer.seal(APPLICATION_DATA, &vec![0x55; MAX_CIPHERTEXT - 16], 0);
            assert_eq!(record.len(), 5 + MAX_CIPHERTEXT + 1);
            peer.send_raw(&record).expect("send");
        },
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::RecordOverflow),
    );
}

#[test]
fn a_record_whose_plaintext_exceeds_2_14_is_a_record_overflow() {
    fails_after_data(
        |peer| peer.send_data(&vec![0x55; MAX_FRAGMENT + 1]).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::RecordOverflow),
    );
}

#[test]
fn padding_that_takes_the_inner_plaintext_past_2_14_plus_1_is_a_record_overflow() {
    // One byte, its type, and 2^14 zeros: a ciphertext well within 2^14 + 256.
    fails_after_data(
        |peer| peer.send_sealed(APPLICATION_DATA, b"x", MAX_FRAGMENT).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::RecordOverflow),
    );
}

#[test]
fn a_full_record_and_a_record_padded_to_the_limit_are_delivered() {
    with_peer(
        Options::default(),
        |_| {},
        |channel, mut peer| {
            let full: Vec<u8> = (0..MAX_FRAGMENT).map(|i| i as u8).collect();
            peer.send_data(&full).expect("send");
            // One byte and its type, then padding to exactly 2^14 + 1 inner bytes.
            peer.send_sealed(APPLICATION_DATA, b"!", MAX_FRAGMENT - 1).expect("send");
            let receive = Request::pending_or_ready_receive(&channel, MAX_FRAGMENT + 1, WSK_FLAG_WAITALL);
            let done = receive.wait();
            assert_eq!(done.status, STATUS_SUCCESS);
            assert_eq!(&receive.received(&done)[..MAX_FRAGMENT], &full[..]);
            assert_eq!(&receive.received(&done)[MAX_FRAGMENT..], b"!");
            assert_eq!(channel.state(), State::Open);
            channel.close();
        },
    );
}

// ---- Floods of empty records (RFC 8446 §5.4) ----

#[test]
fn a_few_empty_application_data_records_between_data_are_skipped() {
    with_peer(
        Options::default(),
        |_| {},
        |channel, mut peer| {
            peer.send_data(b"one").expect("send");
            for i in 0..FEW_EMPTY {
                // Zero-length application data is legal, padded or not.
                peer.send_sealed(APPLICATION_DATA, &[], i * 10).expect("send");
            }
            peer.send_data(b"two").expect("send");
            let receive = Request::pending_or_ready_receive(&channel, 6, WSK_FLAG_WAITALL);
            let done = receive.wait();
            assert_eq!((done.status, receive.received(&done)), (STATUS_SUCCESS, &b"onetwo"[..]));
            assert_eq!(channel.state(), State::Open);
            channel.close();
        },
    );
}

#[test]
fn a_flood_of_empty_application_data_records_fails_the_channel_as_an_unexpected_message() {
    fails_after_data(
        |peer| {
            let flood: Vec<u8> = (0..FLOOD).flat_map(|_| peer.seal(APPLICATION_DATA, &[], 0)).collect();
            peer.send_raw(&flood).expect("send");
        },
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_flood_of_padding_only_records_fails_at_the_first_with_one_unexpected_message_alert() {
    // Inner type 0 then zeros: all padding, no content type.
    fails_after_data(
        |peer| {
            let flood: Vec<u8> = (0..FLOOD).flat_map(|i| peer.seal(0, &[], i % 300)).collect();
            peer.send_raw(&flood).expect("send");
        },
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

// ---- Content types the peer may not send (RFC 8446 §5) ----

#[test]
fn an_unknown_inner_content_type_is_an_unexpected_message() {
    fails_after_data(
        |peer| peer.send_sealed(99, b"what is this", 0).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_protected_change_cipher_spec_is_an_unexpected_message() {
    fails_after_data(
        |peer| peer.send_sealed(CHANGE_CIPHER_SPEC, &[1], 0).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_plain_change_cipher_spec_after_the_handshake_is_an_unexpected_message() {
    fails_after_data(
        |peer| peer.send_raw(&plaintext_record(CHANGE_CIPHER_SPEC, &[1])).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_plaintext_handshake_record_after_the_handshake_is_an_unexpected_message() {
    fails_after_data(
        |peer| {
            let hello_request = handshake_message(HELLO_REQUEST, &[]);
            peer.send_raw(&plaintext_record(HANDSHAKE, &hello_request)).expect("send");
        },
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_protected_record_under_an_outer_type_other_than_application_data_is_an_unexpected_message() {
    fails_after_data(
        |peer| {
            let record = peer.seal_with_header(HANDSHAKE, TLS12, APPLICATION_DATA, b"in disguise", 0);
            peer.send_raw(&record).expect("send");
        },
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_legacy_record_version_other_than_tls_1_2_is_ignored_as_rfc_8446_says() {
    with_peer(
        Options::default(),
        |_| {},
        |channel, mut peer| {
            let record = peer.seal_with_header(APPLICATION_DATA, [3, 1], APPLICATION_DATA, b"old version", 0);
            peer.send_raw(&record).expect("send");
            let receive = Request::pending_or_ready_receive(&channel, 100, 0);
            let done = receive.wait();
            assert_eq!((done.status, receive.received(&done)), (STATUS_SUCCESS, &b"old version"[..]));
            channel.close();
        },
    );
}

// ---- Post-handshake messages wsktls does not support (RFC 8446 §4.6) ----

#[test]
fn a_hello_request_asking_for_renegotiation_is_an_unexpected_message() {
    fails_after_data(
        |peer| peer.send_handshake(HELLO_REQUEST, &[]).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_post_handshake_certificate_request_we_never_offered_is_an_unexpected_message() {
    // certificate_request_context "\x01", extensions: signature_algorithms [ecdsa_secp256r1_sha256].
    let body = [1, 1, 0, 8, 0, 13, 0, 4, 0, 2, 4, 3];
    fails_after_data(
        |peer| peer.send_handshake(CERTIFICATE_REQUEST, &body).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_second_server_hello_is_an_unexpected_message() {
    // legacy_version, random, empty session id, TLS_AES_128_GCM_SHA256, null compression,
    // supported_versions: TLS 1.3.
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x5a; 32]);
    body.extend_from_slice(&[0, 0x13, 0x01, 0, 0, 6, 0, 43, 0, 2, 3, 4]);
    fails_after_data(
        |peer| peer.send_handshake(SERVER_HELLO, &body).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_second_encrypted_extensions_is_an_unexpected_message() {
    fails_after_data(
        |peer| peer.send_handshake(ENCRYPTED_EXTENSIONS, &[0, 0]).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_key_update_with_an_invalid_request_value_is_an_illegal_parameter() {
    fails_after_data(
        |peer| peer.send_handshake(KEY_UPDATE, &[2]).expect("send"),
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::IllegalParameter),
    );
}

#[test]
fn key_update_requests_received_while_silent_are_answered_with_a_single_key_update() {
    with_peer(
        Options::default(),
        |_| {},
        |channel, mut peer| {
            let mut burst = Vec::new();
            for _ in 0..KEY_UPDATE_BURST {
                burst.extend(peer.seal(HANDSHAKE, &handshake_message(KEY_UPDATE, &[1]), 0));
                peer.switch_tx_key().expect("our next key");
            }
            burst.extend(peer.seal(APPLICATION_DATA, b"after the updates", 0));
            peer.send_raw(&burst).expect("send");
            let receive = Request::pending_or_ready_receive(&channel, 100, 0);
            let done = receive.wait();
            assert_eq!((done.status, receive.received(&done)), (STATUS_SUCCESS, &b"after the updates"[..]));
            assert_eq!(channel.info().received.key_updates, KEY_UPDATE_BURST as u64);

            let (send, _) = Request::send(&channel, b"reply");
            assert_eq!(send.wait().status, STATUS_SUCCESS);
            let mut updates = 0;
            loop {
                let record = peer.read_record(STALL).expect("a record").expect("the driver's records");
                match (record.content_type, record.content.as_slice()) {
                    (HANDSHAKE, [KEY_UPDATE, 0, 0, 1, 0]) => updates += 1,
                    (APPLICATION_DATA, b"reply") => break,
                    other => panic!("unexpected record {other:?}"),
                }
            }
            assert_eq!(updates, 1, "RFC 8446 §4.6.3: one KeyUpdate answers them all");
            channel.close();
        },
    );
}

// ---- Alert storms (RFC 8446 §6) ----

#[test]
fn a_storm_of_user_canceled_warnings_fails_the_channel_as_an_unexpected_message() {
    fails_after_data(
        |peer| {
            let user_canceled = [WARNING, u8::from(AlertDescription::UserCanceled)];
            let storm: Vec<u8> = (0..FLOOD).flat_map(|_| peer.seal(ALERT, &user_canceled, 0)).collect();
            peer.send_raw(&storm).expect("send");
        },
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

#[test]
fn a_user_canceled_warning_then_close_notify_ends_the_stream_and_nothing_after_it_is_delivered() {
    with_peer(
        Options::default(),
        |_| {},
        |channel, mut peer| {
            let first = Request::pending_receive(&channel, 4096);
            peer.send_data(BEFORE).expect("send");
            let done = first.wait();
            assert_eq!((done.status, first.received(&done)), (STATUS_SUCCESS, BEFORE));
            peer.send_alert(WARNING, AlertDescription::UserCanceled).expect("send");
            peer.send_alert(WARNING, AlertDescription::CloseNotify).expect("send");
            peer.send_data(AFTER).expect("send");
            for _ in 0..2 {
                let (end, _) = Request::receive(&channel, 4096);
                let done = end.wait();
                assert_eq!((done.status, done.bytes), (STATUS_SUCCESS, 0), "the end of the stream");
                assert!(end.untouched());
            }
            assert_eq!(channel.state(), State::Open, "our side is still open");
            channel.close();
        },
    );
}

#[test]
fn fatal_alerts_in_a_row_fail_the_channel_with_the_first_and_are_not_answered() {
    fails_after_data(
        |peer| {
            let mut storm = peer.seal(ALERT, &[FATAL, u8::from(AlertDescription::InternalError)], 0);
            for i in 0..FLOOD {
                // Each of these would map to a status of its own.
                let other = [AlertDescription::BadCertificate, AlertDescription::HandshakeFailure][i % 2];
                storm.extend(peer.seal(ALERT, &[FATAL, u8::from(other)], 0));
            }
            peer.send_raw(&storm).expect("send");
        },
        STATUS_WSKTLS_PEER_ALERT,
        None,
    );
}

#[test]
fn a_warning_level_alert_other_than_user_canceled_is_fatal_in_tls_1_3() {
    fails_after_data(
        |peer| peer.send_alert(WARNING, AlertDescription::InternalError).expect("send"),
        STATUS_WSKTLS_PEER_ALERT,
        None,
    );
}

#[test]
fn a_fatal_alert_padded_to_the_record_limit_is_the_peers_alert() {
    fails_after_data(
        |peer| {
            // Two alert bytes, the type, padding to exactly 2^14 + 1 inner bytes.
            let alert = [FATAL, u8::from(AlertDescription::InternalError)];
            peer.send_sealed(ALERT, &alert, MAX_FRAGMENT - 2).expect("send");
        },
        STATUS_WSKTLS_PEER_ALERT,
        None,
    );
}

#[test]
fn an_alert_padded_past_the_record_limit_is_a_record_overflow() {
    fails_after_data(
        |peer| {
            let alert = [FATAL, u8::from(AlertDescription::InternalError)];
            peer.send_sealed(ALERT, &alert, MAX_FRAGMENT - 1).expect("send");
        },
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::RecordOverflow),
    );
}

#[test]
fn an_alert_split_across_two_records_is_an_unexpected_message() {
    fails_after_data(
        |peer| {
            // RFC 8446 §5.1: alert messages must not be fragmented across records.
            peer.send_sealed(ALERT, &[FATAL], 0).expect("send");
            peer.send_sealed(ALERT, &[u8::from(AlertDescription::InternalError)], 0).expect("send");
        },
        SEC_E_ILLEGAL_MESSAGE,
        Some(AlertDescription::UnexpectedMessage),
    );
}

// ---- A stall mid-record ----

#[test]
fn a_peer_that_stalls_mid_record_delivers_nothing_and_disconnect_and_close_still_end() {
    with_peer(
        Options::default(),
        |_| {},
        |channel, mut peer| {
            let receives: Vec<Request> = (0..3).map(|_| Request::pending_receive(&channel, 4096)).collect();
            let record = peer.seal(APPLICATION_DATA, b"the second half of this record never comes", 0);
            peer.send_raw(&record[..record.len() / 2]).expect("send");
            receives[0].assert_pending(QUIET);

            // Our close_notify and FIN go out whatever the peer's half record.
            let start = Instant::now();
            assert_eq!(channel.disconnect(1_000), Ok(()));
            assert!(start.elapsed() < Duration::from_millis(1_000), "disconnect took {:?}", start.elapsed());
            assert_eq!(channel.state(), State::Closing);
            let close_notify = Record { content_type: ALERT, content: vec![WARNING, 0] };
            assert_eq!(peer.read_record(STALL).expect("our close_notify"), Some(close_notify));
            assert_eq!(peer.read_record(STALL).expect("our FIN"), None);
            receives[0].assert_pending(QUIET);

            // Close completes every receive still pending, with nothing of the half record.
            channel.close();
            for r in &receives {
                let done = r.completed_already();
                assert_eq!((done.status, done.bytes), (STATUS_CANCELLED, 0));
                assert!(r.untouched());
            }
        },
    );
}

#[test]
fn half_a_record_then_a_fin_is_a_truncation() {
    fails_after_data(
        |peer| {
            let record = peer.seal(APPLICATION_DATA, b"cut short", 0);
            peer.send_raw(&record[..record.len() / 2]).expect("send");
            peer.stream().shutdown(Shutdown::Write).expect("FIN");
        },
        STATUS_WSKTLS_TRUNCATED,
        None,
    );
}

// ---- A tiny receive window ----

/// A kernel whose sockets have a small send buffer, so that a peer with a small window
/// holds the channel's sends pending after a few KiB rather than megabytes.
fn throttled_kernel() -> Kernel {
    let faults = Faults { send_buffer_bytes: Some(4096), ..Faults::default() };
    Kernel::boot_with(ntsim::Config { faults, ..ntsim::Config::default() })
}

/// A peer whose socket receive buffer is 4 KiB (its window a few KiB).
const TINY_WINDOW: Options = Options { suite: None, receive_buffer: Some(4096) };

/// The tiny-window tests send this much at once...
const EACH: usize = 16 * 1024;

/// ...and this send cannot go out while the peer does not read: 48 KiB and more is past a
/// 4 KiB window and the throttled send buffer, but within the window of a peer with the
/// default receive buffer (so the tests fail if the window is not tiny).
const HELD: usize = 3;

/// Issues sends of `count` × `each` bytes of the test pattern.
fn pattern_sends(channel: &Channel, count: usize, each: usize) -> Vec<Request> {
    (0..count)
        .map(|i| {
            let data: Vec<u8> = (0..each).map(|j| common::pattern((i * each + j) as u64)).collect();
            let (send, status) = Request::send(channel, &data);
            assert_eq!(status, STATUS_PENDING);
            send
        })
        .collect()
}

#[test]
fn a_peer_with_a_tiny_window_that_reads_slowly_holds_sends_pending_and_gets_every_byte_in_order() {
    const SENDS: usize = 16;
    with_peer_on(
        throttled_kernel(),
        TINY_WINDOW,
        |_| {},
        |channel, mut peer| {
            let sends = pattern_sends(&channel, SENDS, EACH);
            // The peer does not read yet: its window holds the sends back.
            sends[HELD].assert_pending(QUIET);
            assert_eq!(channel.state(), State::Open);

            // Now it reads, slowly, a record at a time.
            let reader = thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < SENDS * EACH {
                    got.extend(peer.read_data(1, STALL).expect("data"));
                    thread::sleep(Duration::from_millis(2));
                }
                (peer, got)
            });
            for (i, send) in sends.iter().enumerate() {
                let done = send.wait();
                assert_eq!((done.status, done.bytes), (STATUS_SUCCESS, EACH), "send {i}");
            }
            let (mut peer, got) = reader.join().expect("the reader");
            assert_eq!(got.len(), SENDS * EACH);
            assert!(
                got.iter().enumerate().all(|(i, &b)| b == common::pattern(i as u64)),
                "every byte, in order"
            );

            assert_eq!(channel.disconnect(5_000), Ok(()));
            let close_notify = Record { content_type: ALERT, content: vec![WARNING, 0] };
            assert_eq!(peer.read_record(STALL).expect("our close_notify"), Some(close_notify));
            channel.close();
        },
    );
}

#[test]
fn a_peer_with_a_tiny_window_that_stops_reading_times_disconnect_out_and_close_still_ends() {
    const SENDS: usize = HELD + 1;
    with_peer_on(
        throttled_kernel(),
        TINY_WINDOW,
        |_| {},
        |channel, peer| {
            let sends = pattern_sends(&channel, SENDS, EACH);
            sends[HELD].assert_pending(QUIET);

            let start = Instant::now();
            assert_eq!(channel.disconnect(500), Err(STATUS_IO_TIMEOUT));
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(2_500), "{took:?}");

            // Close ends too, and completes every send it held.
            let start = Instant::now();
            channel.close();
            assert!(start.elapsed() < PROMPT, "close took {:?}", start.elapsed());
            let statuses: Vec<NTSTATUS> = sends.iter().map(|s| s.completed_already().status).collect();
            assert!(statuses.iter().all(|&s| s == STATUS_SUCCESS || s == STATUS_CANCELLED), "{statuses:?}");
            assert_eq!(statuses[SENDS - 1], STATUS_CANCELLED, "the send held back: {statuses:?}");
            drop(peer);
        },
    );
}

// ---- Misbehaviour inside the handshake ----

/// Connects, with a handshake timeout of `timeout_ms`, to a peer that runs `script` after
/// the ClientHello; checks the driver told the peer nothing or one fatal alert and left
/// nothing behind. The status the connect failed with, and how long that took.
fn handshake_fails(
    timeout_ms: u32,
    script: impl FnOnce(&mut RawPeer) -> io::Result<Vec<u8>> + Send + 'static,
) -> (NTSTATUS, Duration) {
    let kernel = Kernel::boot();
    let peer = HandshakePeer::start(script);
    let outcome = {
        let _in = kernel.enter();
        let client = client();
        let mut config = channel_config(peer.addr(), "localhost");
        config.handshake_timeout_ms = timeout_ms;
        let start = Instant::now();
        match Channel::connect(&client, &config) {
            Ok(_) => panic!("connected to a peer that never finished its handshake"),
            Err(status) => (status, start.elapsed()),
        }
    };
    let told = peer.result(STALL);
    assert!(told.is_empty() || is_fatal_alert(&told), "the driver sent {told:?}");
    kernel.finish();
    outcome
}

/// A single plaintext fatal alert record, as a driver that fails mid-handshake may send.
fn is_fatal_alert(bytes: &[u8]) -> bool {
    matches!(bytes, [ALERT, 3, 3, 0, 2, FATAL, _])
}

/// Writes `chunks` to the driver one after another, `apart`, until the driver closes or
/// they run out; then waits for the driver's close and returns what it sent.
fn dribble(
    peer: &mut RawPeer,
    chunks: impl Iterator<Item = Vec<u8>>,
    apart: Duration,
) -> io::Result<Vec<u8>> {
    for chunk in chunks {
        if peer.stream.write_all(&chunk).is_err() {
            break;
        }
        thread::sleep(apart);
    }
    peer.read_until_closed(STALL)
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "the driver did not close"))
}

#[test]
fn a_handshake_that_never_ends_fails_at_the_handshake_timeout() {
    let (status, took) = handshake_fails(500, |peer| {
        // A ServerHello of 65,535 bytes (as large as rustls takes), sent 16 bytes at a time.
        let start = plaintext_record(HANDSHAKE, &[SERVER_HELLO, 0, 0xff, 0xff, 3, 3]);
        let body = (0..).map(|_| plaintext_record(HANDSHAKE, &[0x42; 16])).take(4000);
        dribble(peer, std::iter::once(start).chain(body), Duration::from_millis(5))
    });
    assert_eq!(status, STATUS_IO_TIMEOUT);
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(2_500), "{took:?}");
}

#[test]
fn a_handshake_message_larger_than_the_receive_buffer_is_refused_before_the_timeout() {
    let (status, took) = handshake_fails(3_000, |peer| {
        // A ServerHello of 65,535 bytes, all at once: more than the 32 KiB the driver
        // receives the handshake into.
        let mut message = vec![SERVER_HELLO, 0, 0xff, 0xff];
        message.resize(4 + 0xffff, 0x42);
        let records =
            message.chunks(MAX_FRAGMENT).map(|c| plaintext_record(HANDSHAKE, c)).collect::<Vec<_>>();
        dribble(peer, records.into_iter(), Duration::ZERO)
    });
    assert_eq!(status, SEC_E_ILLEGAL_MESSAGE);
    assert!(took < Duration::from_millis(3_000), "refused by size, not by the timeout: {took:?}");
}

#[test]
fn a_handshake_message_announcing_2_24_minus_1_bytes_is_refused_at_once() {
    let (status, took) = handshake_fails(1_000, |peer| {
        // A ServerHello that says it is 16 MiB long, then its body, slowly.
        let start = plaintext_record(HANDSHAKE, &[SERVER_HELLO, 0xff, 0xff, 0xff, 3, 3]);
        let body = (0..).map(|_| plaintext_record(HANDSHAKE, &[0x42; 64])).take(100);
        dribble(peer, std::iter::once(start).chain(body), Duration::from_millis(20))
    });
    assert_eq!(status, SEC_E_ILLEGAL_MESSAGE);
    assert!(took < Duration::from_millis(1_000), "refused by size, not by the timeout: {took:?}");
}

#[test]
fn a_handshake_message_interleaved_with_an_alert_is_refused() {
    let (status, took) = handshake_fails(1_000, |peer| {
        // The start of a ServerHello, then a warning, then the rest: RFC 8446 §5.1 forbids it.
        let start = plaintext_record(HANDSHAKE, &[SERVER_HELLO, 0, 0, 40, 3, 3]);
        let warning = plaintext_record(ALERT, &[WARNING, u8::from(AlertDescription::UserCanceled)]);
        let rest = plaintext_record(HANDSHAKE, &[0x42; 38]);
        dribble(peer, [start, warning, rest].into_iter(), Duration::from_millis(20))
    });
    assert_eq!(status, SEC_E_ILLEGAL_MESSAGE);
    assert!(took < Duration::from_millis(1_000), "refused, not timed out: {took:?}");
}

#[test]
fn a_storm_of_warnings_in_the_handshake_is_refused_before_the_timeout() {
    let (status, took) = handshake_fails(3_000, |peer| {
        let warning = plaintext_record(ALERT, &[WARNING, u8::from(AlertDescription::UserCanceled)]);
        dribble(peer, std::iter::repeat_n(warning, FLOOD), Duration::from_millis(1))
    });
    assert_eq!(status, SEC_E_ILLEGAL_MESSAGE);
    assert!(took < Duration::from_millis(3_000), "refused, not timed out: {took:?}");
}
