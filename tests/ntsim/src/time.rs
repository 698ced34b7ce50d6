//! The clocks: system time from the host's wall clock, interrupt time from a monotonic
//! clock started when this kernel booted. Both in 100 ns units, readable at any IRQL.

use std::time::{SystemTime, UNIX_EPOCH};

use wsktls_nt::{LARGE_INTEGER, UNIX_EPOCH_AS_SYSTEM_TIME};

use crate::kernel::current;
use crate::verifier::{Rule, report};

/// 100 ns units in a duration, saturating (no clock here runs for 29,000 years).
fn units(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX)
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeQuerySystemTimePrecise(current_time: *mut LARGE_INTEGER) {
    let _k = current();
    if current_time.is_null() {
        report(Rule::BadParameter, "KeQuerySystemTimePrecise(NULL)");
        return;
    }
    let now = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(after) => UNIX_EPOCH_AS_SYSTEM_TIME.saturating_add(units(after)),
        Err(before) => UNIX_EPOCH_AS_SYSTEM_TIME.saturating_sub(units(before.duration())),
    };
    // SAFETY: the caller's LARGE_INTEGER (checked non-NULL).
    unsafe { current_time.write(now) };
}

/// The performance counter ntsim reports runs at 10 MHz (the usual QPC frequency on
/// Windows 10 and later), so its value equals the interrupt time.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeQueryInterruptTimePrecise(qpc_time_stamp: *mut u64) -> u64 {
    let k = current();
    let now = units(k.booted.elapsed()) as u64;
    if qpc_time_stamp.is_null() {
        report(Rule::BadParameter, "KeQueryInterruptTimePrecise(NULL)");
    } else {
        // SAFETY: the caller's ULONG64 (checked non-NULL).
        unsafe { qpc_time_stamp.write(now) };
    }
    now
}
