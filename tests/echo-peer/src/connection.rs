//! One connection, served on blocking sockets: this thread reads, decrypts, echoes or counts,
//! and initiates KeyUpdates; in source mode a second thread writes the pattern. Nothing the
//! client sends can make it panic: every failure ends the connection with an [`Ending`].
//!
//! The rustls connection sits behind one lock and the socket's write side behind another.
//! Whoever takes bytes out of rustls takes the write lock before letting go of the rustls
//! lock, so records reach the wire in the order rustls sealed them (their sequence numbers,
//! RFC 8446 §5.3, depend on it).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, Scope};

use rustls::ServerConnection;

use crate::peer::{Ending, Stats};
use crate::{Mode, source_pattern};

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// Plaintext a source-mode peer seals at once: one full record (RFC 8446 §5.1: 2^14 bytes).
const SOURCE_CHUNK: usize = 1 << 14;

struct Shared<'a> {
    tls: Mutex<Tls>,
    wire: Mutex<TcpStream>,
    stats: &'a Stats,
}

struct Tls {
    conn: ServerConnection,
    /// Set when the connection is over: a source thread stops at its next record.
    closed: bool,
}

/// Serves `socket` until the client closes it, fails, or is cut off; says how it ended.
pub(crate) fn serve(
    socket: TcpStream,
    mut conn: ServerConnection,
    mode: Mode,
    key_update_every: Option<u64>,
    stats: &Stats,
) -> Ending {
    let Ok(write_half) = socket.try_clone() else { return Ending::Error };
    // Every step drains what rustls sealed, so its buffers stay small without a limit; with
    // one, a write could be cut short.
    conn.set_buffer_limit(None);
    let shared = Shared { tls: Mutex::new(Tls { conn, closed: false }), wire: Mutex::new(write_half), stats };
    thread::scope(|scope| {
        let mut receiver =
            Receiver { shared: &shared, mode, key_update_every, received: 0, handshaken: false };
        let ending = receiver.run(&socket, scope);
        shared.lock_tls().closed = true;
        // Our close_notify (if any) is already queued: a FIN follows it. This also wakes a
        // source thread blocked in a write.
        let how = if ending == Ending::CloseNotify { Shutdown::Write } else { Shutdown::Both };
        let _ = socket.shutdown(how);
        ending
    })
}

struct Receiver<'s, 'a> {
    shared: &'s Shared<'a>,
    mode: Mode,
    key_update_every: Option<u64>,
    /// Plaintext bytes received on this connection.
    received: u64,
    handshaken: bool,
}

/// What one batch of TLS bytes from the socket amounted to.
enum Batch {
    More,
    CloseNotify,
    Failed,
}

impl<'s, 'a: 's> Receiver<'s, 'a> {
    fn run<'scope>(&mut self, mut socket: &TcpStream, scope: &'scope Scope<'scope, '_>) -> Ending
    where
        's: 'scope,
    {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match socket.read(&mut buf) {
                Ok(0) => return Ending::TcpCloseWithoutNotify,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Ending::Error,
            };
            let mut tls = self.shared.lock_tls();
            let batch = self.take(&mut tls, &buf[..n]);
            if !self.handshaken && !tls.conn.is_handshaking() && !matches!(batch, Batch::Failed) {
                self.handshaken = true;
                self.shared.stats.count_handshake();
                if self.mode == Mode::Source {
                    let shared = self.shared;
                    scope.spawn(move || source(shared));
                }
            }
            match batch {
                // RFC 8446 §6.1: answer close_notify with our own; nothing may follow it.
                Batch::CloseNotify => {
                    tls.conn.send_close_notify();
                    tls.closed = true;
                }
                // rustls has queued the alert; the flush sends it, and the source stops.
                Batch::Failed => tls.closed = true,
                Batch::More => {}
            }
            let sent = self.shared.flush(tls);
            match batch {
                Batch::Failed => return Ending::Error,
                Batch::CloseNotify if sent.is_ok() => return Ending::CloseNotify,
                _ if sent.is_err() => return Ending::Error,
                _ => {}
            }
        }
    }

    /// Feeds `data` to rustls and handles the plaintext that comes out of it.
    fn take(&mut self, tls: &mut Tls, mut data: &[u8]) -> Batch {
        let mut plain = Vec::new();
        while !data.is_empty() {
            let Ok(taken) = tls.conn.read_tls(&mut data) else { return Batch::Failed };
            // On an error rustls has queued the alert to send; the flush after us sends it.
            let state = match tls.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    if let rustls::Error::AlertReceived(alert) = e {
                        self.shared.stats.record_alert(alert);
                    }
                    return Batch::Failed;
                }
            };
            plain.resize(state.plaintext_bytes_to_read(), 0);
            if tls.conn.reader().read_exact(&mut plain).is_err() {
                return Batch::Failed;
            }
            if self.handle(tls, &plain).is_err() {
                return Batch::Failed;
            }
            if state.peer_has_closed() {
                return Batch::CloseNotify;
            }
            if taken == 0 {
                // rustls took nothing and is not closed: it would never take more.
                return Batch::Failed;
            }
        }
        Batch::More
    }

    /// Echoes or counts `plain`, with a KeyUpdate exactly where every `key_update_every`th
    /// byte falls.
    fn handle(&mut self, tls: &mut Tls, mut plain: &[u8]) -> Result<(), rustls::Error> {
        while !plain.is_empty() {
            let until_update = match self.key_update_every {
                Some(every) => every - self.received % every,
                None => u64::MAX,
            };
            let take = usize::try_from(until_update).unwrap_or(usize::MAX).min(plain.len());
            let (now, rest) = plain.split_at(take);
            self.shared.stats.count_received(now.len());
            self.received += now.len() as u64;
            if self.mode == Mode::Echo {
                // Cannot fall short: the connection has no buffer limit.
                let _ = tls.conn.writer().write_all(now);
                self.shared.stats.count_sent(now.len());
            }
            if take as u64 == until_update {
                // RFC 8446 §4.6.3: sent with request_update = update_requested.
                tls.conn.refresh_traffic_keys()?;
                self.shared.stats.count_key_update();
            }
            plain = rest;
        }
        Ok(())
    }
}

/// Source mode: seals the pattern record by record until the connection is over.
fn source(shared: &Shared<'_>) {
    let mut chunk = vec![0u8; SOURCE_CHUNK];
    let mut offset = 0u64;
    loop {
        source_pattern(offset, &mut chunk);
        let mut tls = shared.lock_tls();
        if tls.closed || tls.conn.writer().write_all(&chunk).is_err() {
            return;
        }
        offset += chunk.len() as u64;
        shared.stats.count_sent(chunk.len());
        if shared.flush(tls).is_err() {
            return;
        }
    }
}

impl Shared<'_> {
    fn lock_tls(&self) -> MutexGuard<'_, Tls> {
        self.tls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes everything rustls has sealed and writes it, in order with every other flush.
    fn flush(&self, mut tls: MutexGuard<'_, Tls>) -> io::Result<()> {
        let mut out = Vec::new();
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut out)?;
        }
        if out.is_empty() {
            return Ok(());
        }
        let mut wire = self.wire.lock().unwrap_or_else(PoisonError::into_inner);
        drop(tls);
        wire.write_all(&out)
    }
}
