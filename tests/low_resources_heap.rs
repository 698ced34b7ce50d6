//! Low resources, the heap. rustls allocates from the heap and cannot take a failure, so
//! the driver lends rustls's calls a reserve (src/heap.rs): the handshake's, and each
//! KeyUpdate's derivation. Here every heap allocation made under a loan fails in turn,
//! then all of them at once, and each time the channel must still open, carry data both
//! ways across a KeyUpdate each way, close, and leave nothing behind (pool included: the
//! reserves are pool).
//!
//! A binary of its own: the heap is the process's, and this file's one test owns it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use common::client;
use common::consumer::channel_config;
use common::hostile::HostilePeer;
use common::requests::Request;
use ntsim::Kernel;
use wsktls::channel::{Channel, HANDSHAKE_HEAP, KEY_UPDATE_HEAP};
use wsktls::heap::{Reserving, lent_here, most_used};
use wsktls::nt::{STATUS_PENDING, STATUS_SUCCESS};

use common::STALL;

#[global_allocator]
static HEAP: Reserving<Failing> = Reserving(Failing);

/// The system's heap, made to fail the allocations a reserve covers (those made while one
/// is lent), by their number.
struct Failing;

/// Allocations made under a loan, counted from the start of the run.
static LENT: AtomicU64 = AtomicU64::new(0);
/// Those numbered in FAIL_FROM..=FAIL_TO fail.
static FAIL_FROM: AtomicU64 = AtomicU64::new(u64::MAX);
static FAIL_TO: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every block comes from System and goes back to it; a refused allocation
// returns null, which GlobalAlloc allows.
unsafe impl GlobalAlloc for Failing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if lent_here() {
            let n = LENT.fetch_add(1, Relaxed);
            if (FAIL_FROM.load(Relaxed)..=FAIL_TO.load(Relaxed)).contains(&n) {
                FAILED.fetch_add(1, Relaxed);
                return std::ptr::null_mut();
            }
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// What a run saw: allocations made under a loan (in all, and by Connect), and how many
/// of them failed.
#[derive(Debug)]
struct Run {
    lent: u64,
    lent_in_connect: u64,
    failed: u64,
}

/// A channel's life with the lent allocations numbered in `fail` failing (none if `None`): connect, data
/// both ways, a KeyUpdate each way (the peer asks for ours), data again, close. Panics on
/// any wrong status or byte, and on anything the kernel reports or finds left.
fn life(fail: Option<RangeInclusive<u64>>) -> Run {
    let peer = HostilePeer::start();
    let kernel = Kernel::boot();
    let lent_in_connect = {
        let _in = kernel.enter();
        let client = client();
        let config = channel_config(peer.addr(), "localhost");
        LENT.store(0, Relaxed);
        FAILED.store(0, Relaxed);
        if let Some(fail) = fail {
            FAIL_TO.store(*fail.end(), Relaxed);
            FAIL_FROM.store(*fail.start(), Relaxed);
        }
        let channel = Channel::connect(&client, &config).expect("connect, with the reserve behind rustls");
        let lent_in_connect = LENT.load(Relaxed);
        let mut peer = peer.session(STALL);
        for round in 0..2 {
            if round == 1 {
                peer.send_key_update(true).expect("KeyUpdate");
            }
            let receive = Request::pending_receive(&channel, 4096);
            let data = format!("round {round}, from the peer");
            peer.send_data(data.as_bytes()).expect("send");
            let done = receive.wait();
            assert_eq!((done.status, receive.received(&done)), (STATUS_SUCCESS, data.as_bytes()));
            let (send, status) = Request::send(&channel, b"from the driver");
            assert_eq!(status, STATUS_PENDING);
            assert_eq!(send.wait().status, STATUS_SUCCESS);
            assert_eq!(peer.read_data(15, STALL).expect("data"), b"from the driver");
        }
        let info = channel.info();
        assert_eq!((info.received.key_updates, info.sent.key_updates), (1, 1));
        channel.close();
        FAIL_FROM.store(u64::MAX, Relaxed);
        lent_in_connect
    };
    kernel.finish();
    Run { lent: LENT.load(Relaxed), lent_in_connect, failed: FAILED.load(Relaxed) }
}

#[test]
fn every_heap_allocation_rustls_makes_fails_in_turn_and_then_all_at_once_and_the_reserve_serves_it() {
    let clean = life(None);
    assert_eq!(clean.failed, 0);
    assert!(clean.lent > 50, "the handshake's allocations were not made under a loan: {clean:?}");
    println!("heap allocations made under a loan in a channel's life: {}", clean.lent);
    let mut missed = 0;
    for n in 0..clean.lent {
        let run = life(Some(n..=n));
        // The count can differ by a few between runs (rustls's buffers grow with what
        // each read returned); a run that never reached `n` is counted, not checked.
        match run.failed {
            1 => {}
            0 if run.lent <= n => missed += 1,
            _ => panic!("allocation {n}: {run:?}"),
        }
    }
    assert!(missed <= clean.lent / 20, "{missed} runs never reached the allocation to fail");
    let all = life(Some(0..=u64::MAX));
    assert_eq!(all.failed, all.lent, "every lent allocation failed, and the reserve served them all");
    println!(
        "with every one of them failing: {} served by the reserves, most in use at once {} bytes of {}",
        all.failed,
        most_used(),
        HANDSHAKE_HEAP
    );
    assert!(most_used() <= HANDSHAKE_HEAP / 2, "the handshake's reserve has too little room to spare");
    // A handshake that needed no reserve leaves the channel a small one for KeyUpdates:
    // every KeyUpdate allocation failing must fit it.
    let key_updates = life(Some(clean.lent_in_connect..=u64::MAX));
    assert_eq!(key_updates.failed, key_updates.lent - key_updates.lent_in_connect, "{key_updates:?}");
    assert!(key_updates.failed > 0, "the KeyUpdates made no lent allocation: {key_updates:?}");
    println!(
        "the KeyUpdates' {} allocations, all failing, served by a reserve of {KEY_UPDATE_HEAP} bytes",
        key_updates.failed
    );
}
