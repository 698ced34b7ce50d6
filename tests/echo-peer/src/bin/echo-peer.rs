//! `echo-peer --listen 127.0.0.1:0 --cert CHAIN.pem --key KEY.pem [--client-ca CA.pem]
//! [--mode echo|sink|source] [--key-update-every N] [--suite NAME]...`
//!
//! Serves until killed. Once bound it prints exactly one line, `listening on <addr>`, to
//! stdout; diagnostics go to stderr.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;

use echo_peer::{Config, Peer, suite_by_name};

const USAGE: &str = "usage: echo-peer --listen ADDR:PORT --cert CHAIN.pem --key KEY.pem [--client-ca CA.pem] \
                     [--mode echo|sink|source] [--key-update-every N] [--suite TLS_AES_128_GCM_SHA256]...";

fn main() -> ExitCode {
    let (listen, config) = match parse(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("echo-peer: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let peer = match Peer::start(listen, config) {
        Ok(peer) => peer,
        Err(e) => {
            eprintln!("echo-peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout().lock();
    if writeln!(stdout, "listening on {}", peer.addr()).and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    loop {
        thread::park();
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> io::Result<(SocketAddr, Config)> {
    let (mut listen, mut cert, mut key) = (None, None, None);
    let mut config = Config::new("", "");
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| invalid(format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| invalid(format!("--listen: {e}")))?),
            "--cert" => cert = Some(PathBuf::from(value()?)),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--client-ca" => config.client_ca = Some(PathBuf::from(value()?)),
            "--mode" => config.mode = value()?.parse()?,
            "--key-update-every" => {
                let n = value()?.parse().map_err(|e| invalid(format!("--key-update-every: {e}")))?;
                config.key_update_every = Some(n);
            }
            "--suite" => config.suites.get_or_insert_with(Vec::new).push(suite_by_name(&value()?)?),
            _ => return Err(invalid(format!("unexpected argument {flag:?}"))),
        }
    }
    config.cert_chain_pem = cert.ok_or_else(|| invalid("--cert is required".into()))?;
    config.key_pem = key.ok_or_else(|| invalid("--key is required".into()))?;
    Ok((listen.ok_or_else(|| invalid("--listen is required".into()))?, config))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}
