//! What the inputs did, for a person tuning the targets: with `WSKTLS_FUZZ_STATS=N` in the
//! environment, every N inputs the counts of (call, status) seen so far go to stderr.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
static INPUTS: AtomicU64 = AtomicU64::new(0);

fn every() -> Option<u64> {
    static EVERY: OnceLock<Option<u64>> = OnceLock::new();
    *EVERY.get_or_init(|| std::env::var("WSKTLS_FUZZ_STATS").ok()?.parse().ok().filter(|&n| n > 0))
}

/// Counts one outcome, e.g. `("Connect", status)`.
pub fn note(what: &str, outcome: impl std::fmt::Debug) {
    if every().is_some() {
        let key = format!("{what} {outcome:?}");
        *COUNTS.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
    }
}

/// Call once per input.
pub fn input_done() {
    let Some(every) = every() else { return };
    let n = INPUTS.fetch_add(1, Ordering::Relaxed) + 1;
    if n % every == 0 {
        let counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!("--- after {n} inputs:");
        for (k, v) in counts.iter() {
            eprintln!("  {v:>10}  {k}");
        }
    }
}
