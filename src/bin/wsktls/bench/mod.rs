//! `wsktls bench`: wsktls measured against the crypto limit and against the libraries
//! people would use instead, in one run, on this machine, one section after another:
//!
//! 1. send path (null transport) against ring's bare seal and a memcpy;
//! 2. receive path against ring's bare open;
//! 3. one channel into a sink (and an echo) on loopback against the rustls and OpenSSL
//!    clients, same server, same suite, same bytes;
//! 4. full handshakes against the rustls client and `openssl s_time`;
//! 5. memory per idle channel and for 1,000 idle channels;
//! 6. aggregate throughput over 1, 2, 8 and 64 channels.
//!
//! (7, instructions per byte under callgrind, is `cargo xtask bench`'s: it runs the hidden
//! `__bench-send` under valgrind.) Every figure is a median over repetitions, and the
//! contenders of a comparison run interleaved. Nothing here is a test: targets are
//! reported as met or MISSED, and the exit status says only whether the bench ran.

mod consumer;
mod handshake;
mod measure;
mod memory;
mod path;
mod records;
mod reference;
mod sink;
mod table;

use std::process::ExitCode;
use std::sync::Arc;

use rustls::CipherSuite;
use wsktls::nt::{
    WSKTLS_SUITE_AES_128_GCM_SHA256, WSKTLS_SUITE_AES_256_GCM_SHA384, WSKTLS_SUITE_CHACHA20_POLY1305_SHA256,
};
use wsktls_sample_consumer::Binding;

use crate::host::Host;
use crate::peer::{DemoPki, TempDir, make_pki};
use crate::words::Failure;
pub use table::Row;

/// The suites every comparison covers.
pub const SUITES: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The sections, by the names `--only` takes.
pub const SECTIONS: [&str; 6] = ["send", "receive", "sink", "handshake", "memory", "scale"];

/// What `wsktls bench` was asked for.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub json: bool,
    /// Fewer bytes and repetitions: for CI-sized runs, not for the README.
    pub quick: bool,
    /// Only these sections (names from SECTIONS); empty for all.
    pub only: Vec<String>,
}

/// What every section shares.
pub struct Bench {
    pub quick: bool,
    pub reps: usize,
    /// The bench's ECDSA P-256 PKI (CA and server for "localhost").
    pub pki: DemoPki,
    pub dir: TempDir,
}

pub fn suite_bit(suite: CipherSuite) -> u32 {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => WSKTLS_SUITE_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => WSKTLS_SUITE_CHACHA20_POLY1305_SHA256,
        _ => WSKTLS_SUITE_AES_128_GCM_SHA256,
    }
}

pub fn suite_label(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "AES-256-GCM",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "ChaCha20-Poly1305",
        _ => "AES-128-GCM",
    }
}

/// The IANA name OpenSSL and echo-peer take.
pub fn suite_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        _ => "TLS_AES_128_GCM_SHA256",
    }
}

/// The machine, for the table's header: CPU model, cores, and the kernel.
fn machine() -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    vec![("cpu", model), ("cores", cores.to_string()), ("linux", kernel.trim().to_owned())]
}

pub fn run(options: &BenchOptions) -> ExitCode {
    let wanted = |name: &str| options.only.is_empty() || options.only.iter().any(|o| o == name);
    let bench = match setup(options) {
        Ok(b) => b,
        Err(f) => {
            eprintln!("wsktls bench: {f}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = Vec::new();
    let (outcome, verdict) = Host::run_with(kernel_config(), |host, binding| {
        let result = sections(host, &binding, &bench, &wanted, &mut rows);
        drop(binding);
        result
    });
    let machine = machine();
    let header = format!(
        "wsktls bench{}: {} ({} cores), Linux {}; medians of {} runs",
        if options.quick { " --quick" } else { "" },
        machine[0].1,
        machine[1].1,
        machine[2].1,
        bench.reps
    );
    if options.json {
        let mut head: Vec<(&str, String)> = machine;
        head.push(("verifier", verdict.describe()));
        println!("{}", table::json(&head, &rows));
    } else {
        println!("{}", table::markdown(&header, &rows));
        println!("verifier: {}", verdict.describe());
    }
    match outcome {
        Err(f) => {
            eprintln!("wsktls bench: {f}");
            ExitCode::FAILURE
        }
        Ok(()) if !verdict.clean() => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// ntsim as the bench runs it: every verifier rule on but the per-byte hash of send
/// buffers in flight, which costs more than the AES-GCM it would be measured with and which
/// no real kernel does (the tests keep it on).
fn kernel_config() -> ntsim::Config {
    ntsim::Config { unchecked_send_buffers: true, ..ntsim::Config::default() }
}

fn setup(options: &BenchOptions) -> Result<Bench, Failure> {
    let dir = TempDir::new("wsktls-bench")
        .map_err(|e| Failure::plain("make a temporary directory", e.to_string()))?;
    let pki = make_pki(dir.path())?;
    Ok(Bench { quick: options.quick, reps: if options.quick { 3 } else { 7 }, pki, dir })
}

fn sections(
    host: &Host,
    binding: &Arc<Binding>,
    bench: &Bench,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let mut section = |name: &str, f: &mut dyn FnMut(&mut Vec<Row>) -> Result<(), Failure>| {
        if !wanted(name) {
            return Ok(());
        }
        eprintln!("wsktls bench: {name} ({:.0} s in)", started.elapsed().as_secs_f64());
        f(rows)
    };
    section("send", &mut |rows| path::send_path(host, binding, bench, rows))?;
    section("receive", &mut |rows| path::receive_path(host, binding, bench, rows))?;
    section("sink", &mut |rows| sink::sink(host, binding, bench, rows))?;
    section("handshake", &mut |rows| handshake::handshakes(binding, bench, rows))?;
    section("memory", &mut |rows| memory::memory(host, binding, bench, rows))?;
    section("scale", &mut |rows| sink::scale(host, binding, bench, rows))?;
    Ok(())
}

/// The hidden subcommand `cargo xtask bench` runs under callgrind.
pub const SEND_ONLY: &str = "__bench-send";

/// `__bench-send BYTES`: one channel's send path (null transport, AES-128-GCM, 16 KiB
/// records, 1 MiB sends) moving BYTES, and nothing else timed or printed but the bytes.
/// Run twice with different BYTES under callgrind, the difference of the instruction
/// counts divided by the difference of the bytes is the path's instructions per byte,
/// free of the setup (boot, handshake) both runs share.
pub fn send_only(bytes: u64) -> ExitCode {
    let options = BenchOptions { json: false, quick: true, only: Vec::new() };
    let bench = match setup(&options) {
        Ok(b) => b,
        Err(f) => {
            eprintln!("wsktls: {f}");
            return ExitCode::FAILURE;
        }
    };
    let (outcome, verdict) =
        Host::run_with(kernel_config(), |host, binding| path::send_bytes(host, &binding, &bench, bytes));
    match outcome {
        Ok(moved) if verdict.clean() => {
            println!("{moved}");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("wsktls: verifier: {}", verdict.describe());
            ExitCode::FAILURE
        }
        Err(f) => {
            eprintln!("wsktls: {f}");
            ExitCode::FAILURE
        }
    }
}
