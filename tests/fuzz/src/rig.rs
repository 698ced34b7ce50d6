//! One simulated kernel per fuzzing process (booting one per input would cost more than
//! the input), and the checks made after every input: no verifier report, and pool, IRPs,
//! MDLs and sockets back to what they were before the first input.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ntsim::{Kernel, Stats};
use wsktls::nt::{WSK_INFINITE_WAIT, pool_tag};
use wsktls::wsk::WskClient;

/// The WSK client's send-buffer cache: it grows when channels together need more than it
/// was made with, and keeps what it grew (at most 1,024 buffers). Growth is not a leak.
const TAG_SEND_CACHE: u32 = pool_tag(b"WtTx");
const SEND_CACHE_MAX: usize = 1024;

/// What must come back after every input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Pool outside the send-buffer cache.
    pub pool_blocks: usize,
    pub pool_bytes: usize,
    pub irps: usize,
    pub mdls: usize,
    pub sockets: usize,
    pub file_objects: usize,
}

fn tag_text(tag: u32) -> String {
    tag.to_le_bytes().iter().map(|&b| b as char).collect()
}

pub fn held(kernel: &Kernel) -> Held {
    let s: Stats = kernel.stats();
    let cache = kernel.pool_usage(&tag_text(TAG_SEND_CACHE));
    Held {
        pool_blocks: s.pool_blocks - cache.blocks,
        pool_bytes: s.pool_bytes - cache.bytes,
        irps: s.irps,
        mdls: s.mdls - cache.blocks, // each cached buffer keeps its MDL
        sockets: s.sockets,
        file_objects: s.file_objects,
    }
}

/// The baseline, taken before the first input, and the check after each.
pub struct Ledger {
    baseline: OnceLock<Held>,
}

impl Ledger {
    pub const fn new() -> Ledger {
        Ledger { baseline: OnceLock::new() }
    }

    /// Call at the start of each input: the first call takes the baseline.
    pub fn begin(&self, kernel: &Kernel) {
        self.baseline.get_or_init(|| {
            let mut h = held(kernel);
            h.irps -= crate::irp::harness_irps().min(h.irps);
            h
        });
        Self::no_reports(kernel, "before the input");
    }

    /// Call at the end of each input, once every request of the input has completed:
    /// teardown that finishes on system threads (socket closes, work items) is given up
    /// to `settle` to bring the books back.
    pub fn end(&self, kernel: &Kernel, settle: Duration) {
        Self::no_reports(kernel, "during the input");
        let baseline = self.baseline.get().expect("Ledger::begin first");
        let deadline = Instant::now() + settle;
        loop {
            let mut now = held(kernel);
            // The harness's own IRPs (kept for reuse) are not the driver's.
            now.irps -= crate::irp::harness_irps().min(now.irps);
            if now == *baseline {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "leak: after the input the kernel holds {now:?}, before the first input {baseline:?}\n\
                     pool by tag now: {}",
                    pool_by_tag(kernel)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let cache = kernel.pool_usage(&tag_text(TAG_SEND_CACHE)).blocks;
        assert!(cache <= SEND_CACHE_MAX, "the send-buffer cache keeps {cache} buffers, more than it may");
        Self::no_reports(kernel, "at the end of the input");
    }

    fn no_reports(kernel: &Kernel, when: &str) {
        let reports = kernel.take_reports();
        if !reports.is_empty() {
            let text: Vec<String> = reports.iter().map(|r| format!("  {r}")).collect();
            panic!("ntsim verifier: {} report(s) {when}:\n{}", reports.len(), text.join("\n"));
        }
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

/// wsktls's own tags and the harness's, with what each holds: for a leak's message.
fn pool_by_tag(kernel: &Kernel) -> String {
    ["WtCh", "WtRx", "WtHs", "WtPv", "WtCn", "WtCb", "WtCl", "WtSo", "WtRq", "WtTx", "Fz"]
        .iter()
        .map(|t| {
            let u = kernel.pool_usage(t);
            format!("{t}: {} blocks {} bytes", u.blocks, u.bytes)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A kernel with a registered WSK client (provider NPI captured), for targets that drive
/// `Channel::connect` directly.
pub struct Bare {
    pub kernel: Kernel,
    pub client: WskClient,
    pub ledger: Ledger,
}

// SAFETY: the client's calls may be made from any thread that entered the kernel (the
// fuzzing thread only, here).
unsafe impl Sync for Bare {}
// SAFETY: as above.
unsafe impl Send for Bare {}

impl Bare {
    pub fn get() -> &'static Bare {
        static BARE: OnceLock<Bare> = OnceLock::new();
        BARE.get_or_init(|| {
            let kernel = quiet_kernel();
            let client = {
                let _in = kernel.enter();
                let mut client = WskClient::register().expect("WskRegister");
                client.capture_provider(WSK_INFINITE_WAIT).expect("WskCaptureProviderNPI");
                client
            };
            Bare { kernel, client, ledger: Ledger::new() }
        })
    }
}

/// A kernel with no fault injection and a fixed seed (an input must replay alike).
pub fn quiet_kernel() -> Kernel {
    // libFuzzer's main, not Rust's, starts the process, so SIGPIPE is not ignored as in
    // a Rust program: a peer writing to a socket the driver closed would kill the fuzzer.
    // SAFETY: setting a signal's disposition to SIG_IGN, before any peer thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Kernel::boot_with(ntsim::Config { seed: Some(1), ..ntsim::Config::default() })
}
