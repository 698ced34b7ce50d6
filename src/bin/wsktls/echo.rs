//! One channel's echo: a sender that writes a deterministic pattern and a receiver that
//! checks every byte that comes back against it. Both run on kernel threads (the sample's
//! calls wait at PASSIVE_LEVEL) and keep their buffers on their stacks, so that the heap
//! figures are the driver's and ntsim's. A receiver that finds a wrong byte keeps reading
//! to the end, so that the sender is never left waiting on a peer we stopped draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use wsktls_sample_consumer::Session;

use crate::words::{Failure, channel_advice};

/// Bytes per Send or Receive: the most one call of the sample moves (its `CHUNK`).
pub const PIECE: usize = 64 * 1024;

/// Bytes moved so far, over every channel, for the progress display and the stall check.
#[derive(Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// The pattern's byte at `offset` of channel `channel`'s stream, eight at a time: a
/// SplitMix64 word per eight bytes, so a lost, repeated or reordered byte shows, and no
/// two channels send the same stream.
pub fn fill(channel: u64, offset: u64, out: &mut [u8]) {
    let mut at = offset;
    let mut i = 0;
    while i < out.len() {
        let word = splitmix64((at / 8) ^ (channel << 48)).to_le_bytes();
        let skip = (at % 8) as usize;
        let n = (8 - skip).min(out.len() - i);
        out[i..i + n].copy_from_slice(&word[skip..skip + n]);
        i += n;
        at += n as u64;
    }
}

fn splitmix64(index: u64) -> u64 {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sends `total` bytes of channel `channel`'s pattern; returns when the last is on the wire.
pub fn send_all(
    session: &Session,
    channel: u64,
    total: u64,
    progress: &Progress,
) -> Result<Instant, Failure> {
    let mut piece = [0u8; PIECE];
    let mut offset = 0;
    while offset < total {
        let n = PIECE.min((total - offset) as usize);
        fill(channel, offset, &mut piece[..n]);
        let sent = session.send(&piece[..n]).map_err(|s| {
            Failure::status(format!("send on channel {channel} at byte {offset}"), s, channel_advice(s))
        })?;
        offset += sent as u64;
        progress.sent.fetch_add(sent as u64, Ordering::Relaxed);
    }
    Ok(Instant::now())
}

/// Receives `total` bytes and checks each against the pattern; returns when the last came.
pub fn receive_all(
    session: &Session,
    channel: u64,
    total: u64,
    progress: &Progress,
) -> Result<Instant, Failure> {
    let (mut piece, mut expected) = ([0u8; PIECE], [0u8; PIECE]);
    let mut got = 0;
    let mut first_wrong = None;
    while got < total {
        let want = PIECE.min((total - got) as usize);
        let n = session.receive(&mut piece[..want]).map_err(|s| {
            Failure::status(format!("receive on channel {channel} at byte {got}"), s, channel_advice(s))
        })?;
        if n == 0 {
            let advice = format!("the server sent close_notify after {got} of {total} bytes");
            return Err(Failure::plain(format!("receive on channel {channel}"), advice));
        }
        fill(channel, got, &mut expected[..n]);
        if first_wrong.is_none() {
            first_wrong =
                piece[..n].iter().zip(&expected[..n]).position(|(a, b)| a != b).map(|i| got + i as u64);
        }
        got += n as u64;
        progress.received.fetch_add(n as u64, Ordering::Relaxed);
    }
    match first_wrong {
        None => Ok(Instant::now()),
        Some(at) => Err(Failure::plain(
            format!("echo check on channel {channel}"),
            format!("byte {at} came back different from the byte sent: the data was corrupted"),
        )),
    }
}

/// A sender and a receiver for one channel, on kernel threads.
pub struct Flows {
    pub send: std::thread::JoinHandle<Result<Instant, Failure>>,
    pub receive: std::thread::JoinHandle<Result<Instant, Failure>>,
}

impl Flows {
    pub fn start(
        kernel: &ntsim::Kernel,
        session: &Arc<Session>,
        channel: u64,
        total: u64,
        progress: &Arc<Progress>,
    ) -> Flows {
        let (s, p) = (Arc::clone(session), Arc::clone(progress));
        let send = kernel.spawn(move || send_all(&s, channel, total, &p));
        let (s, p) = (Arc::clone(session), Arc::clone(progress));
        let receive = kernel.spawn(move || receive_all(&s, channel, total, &p));
        Flows { send, receive }
    }

    pub fn finished(&self) -> bool {
        self.send.is_finished() && self.receive.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::fill;

    #[test]
    fn the_pattern_is_the_same_however_it_is_cut() {
        let mut whole = [0u8; 100];
        fill(3, 5, &mut whole);
        let mut parts = [0u8; 100];
        let (a, b) = parts.split_at_mut(37);
        fill(3, 5, a);
        fill(3, 42, b);
        assert_eq!(whole, parts);
        let mut other = [0u8; 100];
        fill(4, 5, &mut other);
        assert_ne!(whole, other, "channels differ");
    }
}
