//! A TLS 1.3 echo peer whose behaviour is drawn from a seed: the soak's peer for one
//! channel.
//!
//! It completes a real handshake (rustls, via [`Session::accept`]), then echoes the
//! driver's application data under its own keys in records of random sizes and padding,
//! with KeyUpdates, session tickets (some split across records), empty records,
//! user_canceled warnings and pauses in its reading mixed in: everything a correct driver
//! must take without the consumer noticing. Its [`Ending`] says whether it stays faithful
//! to the end or, once it has echoed a given number of bytes, misbehaves in one way; the
//! [`Outcome`] says how many bytes it had echoed then, so the soak can check that nothing
//! after the fault reached the consumer.
//!
//! It listens on 127.0.0.1 only, for one connection; every wait is bounded.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use ntsim::Rng;

use super::hostile::{
    ALERT, APPLICATION_DATA, FATAL, HANDSHAKE, KEY_UPDATE, MAX_FRAGMENT, NEW_SESSION_TICKET, Session,
    WARNING, handshake_message,
};

/// How the peer's side of the channel ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ending {
    /// Echoes every byte; answers the driver's close_notify with its own, then a FIN.
    Faithful,
    /// Never answers the ClientHello (the driver's handshake timeout ends it).
    SilentHandshake,
    /// A record whose ciphertext has one bit flipped.
    Tamper,
    /// A FIN with no close_notify before it.
    Truncate,
    /// A TCP reset.
    Reset,
    /// A fatal internal_error alert.
    FatalAlert,
    /// A record of 2^14 + 1 plaintext bytes (RFC 8446 §5.1's limit plus one).
    Oversized,
    /// Its close_notify, early: it echoes nothing more, but keeps reading.
    EarlyCloseNotify,
}

pub const ENDINGS: [Ending; 8] = [
    Ending::Faithful,
    Ending::SilentHandshake,
    Ending::Tamper,
    Ending::Truncate,
    Ending::Reset,
    Ending::FatalAlert,
    Ending::Oversized,
    Ending::EarlyCloseNotify,
];

/// What a peer does, drawn by the soak.
#[derive(Clone, Copy, Debug)]
pub struct Script {
    pub ending: Ending,
    /// Echoed bytes after which it misbehaves (not for Faithful or SilentHandshake).
    pub after: u64,
    /// SO_RCVBUF of its socket: small, the driver's sends back up against it.
    pub receive_buffer: Option<usize>,
    pub seed: u64,
}

/// What the peer did, once its connection is over.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// The handshake completed.
    pub handshaken: bool,
    /// Application-data bytes it echoed.
    pub echoed: u64,
    /// It misbehaved as its script said, after echoing this many bytes.
    pub misbehaved_at: Option<u64>,
    /// Things a correct driver takes in its stride, sent along the echo.
    pub key_updates: u64,
    pub tickets: u64,
    pub empty_records: u64,
    pub warnings: u64,
    pub pauses: u64,
    /// How its side of the connection ended, after how many of the driver's records (for
    /// the soak's reports).
    pub end: &'static str,
    pub error: Option<io::ErrorKind>,
    pub records_read: u64,
}

/// How long the peer waits for the driver's connection, and for anything after.
const PATIENCE: Duration = Duration::from_secs(30);
/// One poll of the socket while the echo is idle.
const POLL: Duration = Duration::from_millis(10);

/// A running peer, until its connection is over.
pub struct ChaosPeer {
    addr: SocketAddr,
    outcome: Receiver<Outcome>,
    give_up: Arc<AtomicBool>,
}

impl ChaosPeer {
    pub fn start(script: Script) -> ChaosPeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        if let Some(bytes) = script.receive_buffer {
            ntsim::set_receive_buffer(&listener, bytes).expect("SO_RCVBUF on the listener");
        }
        let addr = listener.local_addr().expect("listener address");
        let give_up = Arc::new(AtomicBool::new(false));
        let (tx, outcome) = mpsc::channel();
        let stop = Arc::clone(&give_up);
        thread::spawn(move || {
            let mut outcome = Outcome { end: "never connected", ..Outcome::default() };
            if let Some(stream) = accept(&listener, &stop) {
                drop(listener);
                if let Err(e) = serve(stream, script, &mut outcome) {
                    outcome.error = Some(e.kind());
                }
            }
            let _ = tx.send(outcome);
        });
        ChaosPeer { addr, outcome, give_up }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the peer did, once its connection is over (`None` if it is not within `wait`).
    /// A peer whose driver never connected gives up at once.
    pub fn outcome(&self, connected: bool, wait: Duration) -> Option<Outcome> {
        if !connected {
            self.give_up.store(true, Ordering::Relaxed);
        }
        self.outcome.recv_timeout(wait).ok()
    }
}

fn accept(listener: &TcpListener, give_up: &AtomicBool) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline && !give_up.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok()?;
                stream.set_nodelay(true).ok()?;
                return Some(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(2)),
            Err(_) => return None,
        }
    }
    None
}

fn serve(stream: TcpStream, script: Script, outcome: &mut Outcome) -> io::Result<()> {
    outcome.end = "in the handshake";
    if script.ending == Ending::SilentHandshake {
        drain(&stream);
        return Ok(());
    }
    let mut peer =
        Echo { session: Session::accept(stream, None)?, rng: Rng::new(script.seed), pending: Vec::new() };
    outcome.handshaken = true;
    outcome.end = "echoing";
    let armed = script.ending != Ending::Faithful;
    loop {
        let bound = if armed && outcome.misbehaved_at.is_none() { script.after } else { u64::MAX };
        peer.echo(outcome, bound)?;
        if armed && outcome.misbehaved_at.is_none() && outcome.echoed >= script.after {
            outcome.misbehaved_at = Some(outcome.echoed);
            outcome.end = "misbehaved";
            return peer.misbehave(script.ending);
        }
        if peer.rng.chance(0.01) {
            outcome.pauses += 1;
            thread::sleep(Duration::from_millis(peer.rng.range(20, 400)));
        }
        let record = peer.session.read_record(POLL);
        outcome.records_read += matches!(record, Ok(Some(_))) as u64;
        match record {
            Ok(Some(r)) if r.content_type == APPLICATION_DATA => peer.pending.extend_from_slice(&r.content),
            Ok(Some(r)) if r.content_type == HANDSHAKE && r.content.first() == Some(&KEY_UPDATE) => {
                // The driver's KeyUpdate (read_record follows it); answer one that asks.
                if r.content.get(4) == Some(&1) {
                    peer.session.send_key_update(false)?;
                }
            }
            Ok(Some(r)) if r.content_type == ALERT && r.content == [WARNING, 0] => {
                // The driver's close_notify: echo what is left, answer, FIN.
                peer.echo(outcome, u64::MAX)?;
                peer.session.send_alert(WARNING, rustls::AlertDescription::CloseNotify)?;
                let _ = peer.session.stream().shutdown(Shutdown::Write);
                outcome.end = "answered the driver's close_notify";
                drain(peer.session.stream());
                return Ok(());
            }
            Ok(Some(r)) => {
                outcome.end = if r.content_type == ALERT {
                    "the driver's alert"
                } else {
                    "a record from the driver it did not expect"
                };
                return Ok(());
            }
            Ok(None) => {
                outcome.end = "the driver closed";
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e),
        }
    }
}

/// The echoing side of a session.
struct Echo {
    session: Session,
    rng: Rng,
    /// Received, not yet echoed.
    pending: Vec<u8>,
}

impl Echo {
    /// Echoes what is pending, at most up to `bound` bytes echoed in all, in records of
    /// random sizes and padding, with the harmless extras mixed in.
    fn echo(&mut self, outcome: &mut Outcome, bound: u64) -> io::Result<()> {
        while !self.pending.is_empty() && outcome.echoed < bound {
            self.extra(outcome)?;
            let most = (self.pending.len() as u64).min(bound - outcome.echoed).min(MAX_FRAGMENT as u64);
            let n = self.rng.range(1, most) as usize;
            // RFC 8446 §5.4: content, type and padding within 2^14 + 1 bytes.
            let padding = if self.rng.chance(0.2) { self.rng.range(0, (MAX_FRAGMENT - n) as u64) } else { 0 };
            self.session.send_sealed(APPLICATION_DATA, &self.pending[..n], padding as usize)?;
            self.pending.drain(..n);
            outcome.echoed += n as u64;
        }
        Ok(())
    }

    /// Now and then, something a correct driver takes without the consumer noticing.
    fn extra(&mut self, outcome: &mut Outcome) -> io::Result<()> {
        if !self.rng.chance(0.05) {
            return Ok(());
        }
        match self.rng.range(0, 4) {
            0 => {
                let requested = self.rng.chance(0.5);
                self.session.send_key_update(requested)?;
                outcome.key_updates += 1;
            }
            1 => {
                let ticket = handshake_message(NEW_SESSION_TICKET, &ticket_body(&mut self.rng));
                if self.rng.chance(0.5) {
                    // Split across two records: the driver reassembles it.
                    let cut = self.rng.range(1, ticket.len() as u64 - 1) as usize;
                    self.session.send_sealed(HANDSHAKE, &ticket[..cut], 0)?;
                    self.session.send_sealed(HANDSHAKE, &ticket[cut..], 0)?;
                } else {
                    self.session.send_sealed(HANDSHAKE, &ticket, 0)?;
                }
                outcome.tickets += 1;
            }
            2 => {
                let padding = self.rng.range(0, 64) as usize;
                self.session.send_sealed(APPLICATION_DATA, &[], padding)?;
                outcome.empty_records += 1;
            }
            _ => {
                self.session.send_alert(WARNING, rustls::AlertDescription::UserCanceled)?;
                outcome.warnings += 1;
            }
        }
        Ok(())
    }

    fn misbehave(mut self, ending: Ending) -> io::Result<()> {
        match ending {
            Ending::Tamper => {
                // The next echo's bytes, so a driver that took the record would show it.
                if self.pending.is_empty() {
                    self.pending.push(0);
                }
                let n = self.pending.len().min(MAX_FRAGMENT);
                let mut record = self.session.seal(APPLICATION_DATA, &self.pending[..n], 0);
                let at = 5 + self.rng.range(0, record.len() as u64 - 6) as usize;
                record[at] ^= 1 << self.rng.range(0, 7);
                self.session.send_raw(&record)?;
            }
            Ending::Truncate => self.session.stream().shutdown(Shutdown::Write)?,
            Ending::Reset => {
                ntsim::set_abortive(self.session.stream());
                return Ok(()); // dropping the stream resets it
            }
            Ending::FatalAlert => self.session.send_alert(FATAL, rustls::AlertDescription::InternalError)?,
            Ending::Oversized => self.session.send_sealed(APPLICATION_DATA, &vec![0; MAX_FRAGMENT + 1], 0)?,
            Ending::EarlyCloseNotify => {
                self.session.send_alert(WARNING, rustls::AlertDescription::CloseNotify)?
            }
            Ending::Faithful | Ending::SilentHandshake => {}
        }
        drain(self.session.stream());
        Ok(())
    }
}

/// RFC 8446 §4.6.1: lifetime, age_add, nonce, ticket, no extensions.
fn ticket_body(rng: &mut Rng) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(rng.range(1, 7 * 24 * 3600) as u32).to_be_bytes());
    body.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes());
    let nonce = rng.range(0, 32) as usize;
    body.push(nonce as u8);
    body.extend((0..nonce).map(|_| rng.next_u64() as u8));
    let ticket = rng.range(1, 300) as usize;
    body.extend_from_slice(&(ticket as u16).to_be_bytes());
    body.extend((0..ticket).map(|_| rng.next_u64() as u8));
    body.extend_from_slice(&[0, 0]);
    body
}

/// Reads and drops whatever the driver sends until it closes the connection (or the
/// peer's patience ends), so the driver meets no reset it did not cause.
fn drain(mut stream: &TcpStream) {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        if stream.set_read_timeout(Some(Duration::from_millis(100))).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
