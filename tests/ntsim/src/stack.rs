//! KeExpandKernelStackAndCallout, checked.
//!
//! A host thread's stack (2 MiB for Rust's threads, 8 MiB for a main thread) is far larger
//! than MAXIMUM_EXPANSION_SIZE, so ntsim allocates no segment: it calls the callout on the
//! calling thread. What it checks is what the kernel refuses (too large a `Size`, a call
//! above APC_LEVEL) and what a callout must not do to its caller (return at another
//! IRQL, or with extended processor state still saved on a stack that is then freed).

use std::sync::atomic::Ordering;

use wsktls_nt::{
    MAXIMUM_EXPANSION_SIZE, NTSTATUS, PEXPAND_STACK_CALLOUT, PVOID, SIZE_T, STATUS_INVALID_PARAMETER_1,
    STATUS_INVALID_PARAMETER_3, STATUS_INVALID_PARAMETER_4, STATUS_SUCCESS,
};

use crate::irql::{current_irql, require_apc, with_irql};
use crate::kernel::current;
use crate::verifier::{Rule, report};

/// Calls `callout(parameter)` at the caller's IRQL and returns STATUS_SUCCESS, counting
/// it in `Stats::stack_expansions`. Refuses, with a report and without calling it:
/// above APC_LEVEL (IrqlTooHigh; STATUS_INVALID_PARAMETER_4, which is what
/// KeExpandKernelStackAndCalloutEx documents for a waiting call at DISPATCH_LEVEL — the
/// plain routine documents no code), a NULL callout (BadParameter;
/// STATUS_INVALID_PARAMETER_1), and a `size` above MAXIMUM_EXPANSION_SIZE (BadParameter;
/// STATUS_INVALID_PARAMETER_3, as KeExpandKernelStackAndCalloutEx documents).
///
/// # Safety
/// `callout` may be called with `parameter`, once, on this thread.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeExpandKernelStackAndCallout(
    callout: PEXPAND_STACK_CALLOUT,
    parameter: PVOID,
    size: SIZE_T,
) -> NTSTATUS {
    let k = current();
    if !require_apc("KeExpandKernelStackAndCallout") {
        return STATUS_INVALID_PARAMETER_4;
    }
    let Some(callout) = callout else {
        report(Rule::BadParameter, "KeExpandKernelStackAndCallout with a NULL Callout");
        return STATUS_INVALID_PARAMETER_1;
    };
    if size > MAXIMUM_EXPANSION_SIZE {
        report(
            Rule::BadParameter,
            format!(
                "KeExpandKernelStackAndCallout asked for {size} bytes of stack: more than MAXIMUM_EXPANSION_SIZE ({MAXIMUM_EXPANSION_SIZE})"
            ),
        );
        return STATUS_INVALID_PARAMETER_3;
    }
    k.counters.stack_expansions.fetch_add(1, Ordering::Relaxed);
    // SAFETY: per the caller, the callout may be called with its parameter, once, here.
    with_irql(current_irql(), "a KeExpandKernelStackAndCallout callout", || unsafe { callout(parameter) });
    STATUS_SUCCESS
}
