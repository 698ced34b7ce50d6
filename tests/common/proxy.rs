//! A loopback TCP proxy between the driver and a TLS server that misbehaves on purpose in
//! the server-to-client direction: it flips one byte (a tampered record) or ends the stream
//! with a FIN at some point (a truncation: no close_notify).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward faithfully, but stop reading from the client while the gate is held (with a
    /// small receive buffer, so the client's sends back up quickly).
    Gate(Gate),
    /// XOR 0x01 into the byte at this position of the server's stream.
    FlipAt(u64),
    /// Forward this many bytes of the server's stream, then reset the client's connection.
    ResetAt(u64),
    /// Forward this many bytes of the server's stream, then FIN the client (and keep
    /// taking what the client sends, so its sends are not reset).
    CutAt(u64),
}

/// Holds a [`Fault::Gate`] proxy's reading from the client.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    pub fn hold(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn release(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
    fn wait_open(&self) {
        while self.0.load(Ordering::SeqCst) {
            thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// Bytes of the server's stream forwarded to the client.
    pub forwarded: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
        if let Fault::Gate(_) = fault {
            ntsim::set_receive_buffer(&listener, 4096).expect("SO_RCVBUF");
        }
        let addr = listener.local_addr().expect("listener address");
        let forwarded = Arc::new(AtomicU64::new(0));
        let count = forwarded.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else { return };
                let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let gate = match &fault {
                    Fault::Gate(g) => g.clone(),
                    _ => Gate::default(),
                };
                thread::spawn(move || forward_plain(c2, s2, gate));
                let (count, fault) = (count.clone(), fault.clone());
                thread::spawn(move || forward_faulty(server, client, fault, &count));
            }
        });
        Proxy { addr, forwarded }
    }
}

/// Client to server, untouched (read only while the gate is open).
fn forward_plain(mut from: TcpStream, mut to: TcpStream, gate: Gate) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        gate.wait_open();
        let Ok(n) = from.read(&mut buf) else { break };
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Server to client, with the fault.
fn forward_faulty(mut from: TcpStream, mut to: TcpStream, fault: Fault, count: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut n = n;
        match fault {
            Fault::FlipAt(at) if (pos..pos + n as u64).contains(&at) => buf[(at - pos) as usize] ^= 0x01,
            Fault::CutAt(at) | Fault::ResetAt(at) if pos + n as u64 >= at => n = (at - pos) as usize,
            _ => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        pos += n as u64;
        count.store(pos, Ordering::SeqCst);
        if matches!(fault, Fault::ResetAt(at) if pos >= at) {
            super::reset(&to);
            return;
        }
        if matches!(fault, Fault::CutAt(at) if pos >= at) {
            let _ = to.shutdown(Shutdown::Write);
            // Swallow the rest of the server's stream.
            while matches!(from.read(&mut buf), Ok(n) if n > 0) {}
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
