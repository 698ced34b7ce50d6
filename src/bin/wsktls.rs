//! The host runner: wsktls, loaded into ntsim (the user-mode NT kernel the tests use) as
//! Windows loads it, driven through the sample consumer driver, which speaks only the
//! published interface. `wsktls demo` echoes data through it and prints the figures;
//! `wsktls connect` talks to a TLS 1.3 server on loopback; `wsktls bench` measures it
//! against ring, rustls and OpenSSL. See `wsktls help`.
//!
//! Linux only: on Windows the driver is the kernel image, and this is a stub. The runner
//! never sends traffic anywhere but loopback.

#[cfg(windows)]
fn main() {
    println!("the host runner runs on Linux");
}

// A crate root looks for its modules beside it: `path` keeps them in wsktls/.
#[cfg(not(windows))]
#[path = "wsktls/args.rs"]
mod args;
#[cfg(not(windows))]
#[path = "wsktls/bench/mod.rs"]
mod bench;
#[cfg(not(windows))]
#[path = "wsktls/connect.rs"]
mod connect;
#[cfg(not(windows))]
#[path = "wsktls/demo.rs"]
mod demo;
#[cfg(not(windows))]
#[path = "wsktls/echo.rs"]
mod echo;
#[cfg(not(windows))]
#[path = "wsktls/heap.rs"]
mod heap;
#[cfg(not(windows))]
#[path = "wsktls/host.rs"]
mod host;
#[cfg(not(windows))]
#[path = "wsktls/peer.rs"]
mod peer;
#[cfg(not(windows))]
#[path = "wsktls/progress.rs"]
mod progress;
#[cfg(not(windows))]
#[path = "wsktls/report.rs"]
mod report;
#[cfg(not(windows))]
#[path = "wsktls/words.rs"]
mod words;

/// Counts the heap, for the demo's peak-heap figure; wipes each block freed and falls back
/// on the heap reserve, as the kernel image's heap does (so the benchmarks pay what the
/// driver pays).
#[cfg(not(windows))]
#[global_allocator]
static HEAP: wsktls_crypto::WipeOnFree<wsktls::heap::Reserving<heap::Counting>> =
    wsktls_crypto::WipeOnFree(wsktls::heap::Reserving(heap::Counting));

/// Exit status of a usage error (as the shells' builtins use it).
#[cfg(not(windows))]
const USAGE_ERROR: u8 = 2;

#[cfg(not(windows))]
fn main() -> std::process::ExitCode {
    use std::process::ExitCode;

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args::parse(&args) {
        Ok(args::Command::Demo(options)) => demo::run(&options),
        Ok(args::Command::Connect(options)) => connect::run(&options),
        Ok(args::Command::Bench(options)) => bench::run(&options),
        Ok(args::Command::BenchSend(bytes)) => bench::send_only(bytes),
        Ok(args::Command::EchoPeer(rest)) => peer::serve(&rest),
        Ok(args::Command::Help) => {
            println!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Err(args::Usage(problem)) => {
            eprintln!("wsktls: {problem}\n\n{}", args::USAGE);
            ExitCode::from(USAGE_ERROR)
        }
    }
}
