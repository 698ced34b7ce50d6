//! `wsktls connect`: one channel through the sample consumer to a TLS 1.3 server on
//! loopback. What was negotiated goes to stderr, what the server sends goes to stdout
//! (nothing else does, so it can be piped), and a summary and the verifier's verdict end
//! stderr. It never sends to anything but loopback: ntsim would refuse, and we say so first.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use wsktls::nt::*;
use wsktls_sample_consumer::{Binding, ConnectParams, Session};

use crate::args::ConnectOptions;
use crate::echo::PIECE;
use crate::host::Host;
use crate::report::{hex, protocol_name, suite_name};
use crate::words::{Failure, Target, channel_advice, connect_advice, connect_stage};

/// What the runner needs before it boots the kernel: checked first, so that a bad file
/// or address fails fast.
struct Prepared {
    addr: SocketAddr,
    server_name: String,
    anchors: Vec<Vec<u8>>,
    payload: Vec<u8>,
    ca_label: String,
}

/// How the server's side of the stream ended.
enum Ending {
    CloseNotify,
    /// A status that means "no more data" rather than a broken channel.
    Closed(NTSTATUS),
    Silence(Duration),
}

pub fn run(options: &ConnectOptions) -> ExitCode {
    let prepared = match prepare(options) {
        Ok(prepared) => prepared,
        Err(failure) => {
            eprintln!("wsktls: {failure}");
            return ExitCode::FAILURE;
        }
    };
    let (outcome, verdict) = Host::run(|host, binding| converse(host, binding, &prepared, options));
    match &outcome {
        Ok(summary) => eprintln!("wsktls: {summary}"),
        Err(failure) => eprintln!("wsktls: {failure}"),
    }
    eprintln!("wsktls: verifier: {}", verdict.describe());
    if outcome.is_ok() && verdict.clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn prepare(options: &ConnectOptions) -> Result<Prepared, Failure> {
    let addr = resolve(options)?;
    let anchors = read_anchors(&options.ca)?;
    let payload = match &options.send {
        None => Vec::new(),
        Some(path) => std::fs::read(path)
            .map_err(|e| Failure::plain(format!("read --send {}", path.display()), e.to_string()))?,
    };
    Ok(Prepared {
        addr,
        server_name: options.sni.clone().unwrap_or_else(|| options.host.clone()),
        anchors,
        payload,
        ca_label: format!("--ca {}", options.ca.display()),
    })
}

/// HOST's loopback address; anything else is refused before ntsim would refuse it.
fn resolve(options: &ConnectOptions) -> Result<SocketAddr, Failure> {
    let what = format!("connect to {}", options.target);
    let addrs: Vec<SocketAddr> = (options.host.as_str(), options.port)
        .to_socket_addrs()
        .map_err(|e| Failure::plain(what.clone(), format!("cannot resolve {}: {e}", options.host)))?
        .collect();
    addrs.iter().find(|a| a.ip().is_loopback()).copied().ok_or_else(|| {
        let found: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        let found = found.join(", ");
        let named = if found == options.host { found } else { format!("{} ({found})", options.host) };
        Failure::plain(
            what,
            format!(
                "{named} is not loopback: the runner drives wsktls inside ntsim, which connects only \
                 to 127.0.0.0/8 and ::1; run the server on this machine"
            ),
        )
    })
}

/// The trust anchors in `path`: every CERTIFICATE block of a PEM file, or the file itself
/// as DER (wsktls checks that it parses: STATUS_INVALID_PARAMETER if not).
fn read_anchors(path: &Path) -> Result<Vec<Vec<u8>>, Failure> {
    let what = format!("read --ca {}", path.display());
    let bytes = std::fs::read(path).map_err(|e| Failure::plain(what.clone(), e.to_string()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Ok(vec![bytes]);
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::plain(what.clone(), format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Failure::plain(
            what,
            "it is PEM but holds no CERTIFICATE block: pass the CA's certificate",
        ));
    }
    Ok(certs)
}

/// Connect, show the session, send, Disconnect, receive to the end, Close.
fn converse(
    host: &Host,
    binding: Arc<Binding>,
    p: &Prepared,
    options: &ConnectOptions,
) -> Result<String, Failure> {
    let session = Arc::new(open(binding, p, options)?);
    if !p.payload.is_empty() {
        session.send(&p.payload).map_err(|s| Failure::status("send", s, channel_advice(s)))?;
    }
    session.disconnect().map_err(|s| Failure::status("disconnect (close_notify)", s, channel_advice(s)))?;
    let (ending, received) = receive(host, &session, options.silence)?;
    if let Some(session) = Arc::into_inner(session) {
        let status = session.close();
        if !status.is_success() {
            return Err(Failure::status("close", status, channel_advice(status)));
        }
    }
    Ok(format!("sent {} bytes, received {received} bytes; {}", p.payload.len(), describe(&ending)))
}

/// Connects and prints what was negotiated.
fn open(binding: Arc<Binding>, p: &Prepared, options: &ConnectOptions) -> Result<Session, Failure> {
    let anchors: Vec<&[u8]> = p.anchors.iter().map(Vec::as_slice).collect();
    let mut params = ConnectParams::new(p.addr, &p.server_name, &anchors);
    params.pin_sha256 = options.pin.as_ref();
    let started = Instant::now();
    let session = Session::connect(binding, &params).map_err(|s| {
        let target = Target { address: &options.target, server_name: &p.server_name, ca: &p.ca_label };
        Failure::status(
            format!("{} with {}", connect_stage(s), options.target),
            s,
            connect_advice(s, &target),
        )
    })?;
    let handshake = started.elapsed();
    let info =
        session.session_info().map_err(|s| Failure::status("query the session", s, channel_advice(s)))?;
    eprintln!("connected     {} ({}) as {}", options.target, p.addr, p.server_name);
    eprintln!("protocol      {}", protocol_name(info.ProtocolVersion));
    eprintln!("suite         {:#06x} {}", info.CipherSuite, suite_name(info.CipherSuite));
    eprintln!("handshake     {:.2} ms", handshake.as_secs_f64() * 1000.0);
    eprintln!("peer cert     SHA-256 {}", hex(&info.PeerCertificateSha256));
    Ok(session)
}

/// Statuses that end the server's side without breaking what came before them.
fn ends_the_stream(status: NTSTATUS) -> bool {
    matches!(status, STATUS_WSKTLS_TRUNCATED | STATUS_GRACEFUL_DISCONNECT | STATUS_CONNECTION_DISCONNECTED)
}

fn describe(ending: &Ending) -> String {
    match ending {
        Ending::CloseNotify => "the server ended with close_notify".into(),
        Ending::Closed(status) => format!("the server closed without close_notify ({status:?})"),
        Ending::Silence(d) => {
            format!("the server said nothing for {} s; the runner stopped waiting", d.as_secs())
        }
    }
}

/// What the reader thread hands over: data, the end (empty), or the failure.
type Piece = Result<Vec<u8>, NTSTATUS>;

/// Writes what arrives to stdout until the server's side ends or `silence` passes.
fn receive(host: &Host, session: &Arc<Session>, silence: Duration) -> Result<(Ending, u64), Failure> {
    let (tx, rx) = mpsc::channel::<Piece>();
    let reader = {
        let session = Arc::clone(session);
        host.kernel().spawn(move || read_all(&session, &tx))
    };
    let (outcome, reader_ended, received) = drain(&rx, silence);
    if !reader_ended {
        // Its receive is still pending and cannot be cancelled: end it by closing the
        // sockets, which completes it with STATUS_FILE_FORCED_CLOSED.
        host.kernel().force_close_sockets();
    }
    join(reader);
    outcome.map(|ending| (ending, received))
}

fn read_all(session: &Session, tx: &mpsc::Sender<Piece>) {
    let mut piece = [0u8; PIECE];
    loop {
        let got = session.receive(&mut piece).map(|n| piece[..n].to_vec());
        let last = !matches!(&got, Ok(data) if !data.is_empty());
        if tx.send(got).is_err() || last {
            return;
        }
    }
}

/// How the stream ended, whether the reader thread has ended, and the bytes written.
fn drain(rx: &Receiver<Piece>, silence: Duration) -> (Result<Ending, Failure>, bool, u64) {
    let mut out = std::io::stdout().lock();
    let mut received = 0u64;
    let (ending, reader_ended) = loop {
        match rx.recv_timeout(silence) {
            Ok(Ok(data)) if data.is_empty() => break (Ok(Ending::CloseNotify), true),
            Ok(Ok(data)) => {
                if let Err(e) = out.write_all(&data).and_then(|()| out.flush()) {
                    break (Err(Failure::plain("write to stdout", e.to_string())), false);
                }
                received += data.len() as u64;
            }
            Ok(Err(status)) if ends_the_stream(status) => break (Ok(Ending::Closed(status)), true),
            Ok(Err(status)) => break (Err(Failure::status("receive", status, channel_advice(status))), true),
            Err(RecvTimeoutError::Timeout) => break (Ok(Ending::Silence(silence)), false),
            Err(RecvTimeoutError::Disconnected) => {
                break (Err(Failure::plain("receive", "the reading thread ended without a word")), true);
            }
        }
    };
    (ending, reader_ended, received)
}

fn join(reader: JoinHandle<()>) {
    if reader.join().is_err() {
        eprintln!("wsktls: the reading thread panicked (see above)");
    }
}
