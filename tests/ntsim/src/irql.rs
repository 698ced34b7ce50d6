//! The per-thread IRQL, and the checks every IRQL-restricted function makes.

use std::cell::Cell;

use wsktls_nt::{APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL, KIRQL, PASSIVE_LEVEL};

use crate::verifier::{Rule, report};

thread_local! {
    static IRQL: Cell<KIRQL> = const { Cell::new(PASSIVE_LEVEL) };
}

/// The IRQL of the calling thread.
pub fn current_irql() -> KIRQL {
    IRQL.with(Cell::get)
}

pub(crate) fn set_irql(irql: KIRQL) {
    IRQL.with(|c| c.set(irql));
}

/// Runs `f` at `irql` on this thread (as a DPC or provider thread would) and checks that
/// it comes back at the same IRQL, with no extended processor state left saved.
pub fn with_irql<R>(irql: KIRQL, what: &str, f: impl FnOnce() -> R) -> R {
    let old = current_irql();
    let saves = crate::xstate::depth();
    set_irql(irql);
    let r = f();
    let now = current_irql();
    if now != irql {
        report(Rule::IrqlMismatch, format!("{what} returned at IRQL {now}, entered at {irql}"));
    }
    crate::xstate::check_returned(saves, || what.to_owned());
    set_irql(old);
    r
}

/// `function` may only run at PASSIVE_LEVEL.
pub(crate) fn require_passive(function: &str) -> bool {
    require_at_most(PASSIVE_LEVEL, function)
}

/// `function` may only run at IRQL <= APC_LEVEL.
pub(crate) fn require_apc(function: &str) -> bool {
    require_at_most(APC_LEVEL, function)
}

/// `function` may only run at IRQL <= DISPATCH_LEVEL.
pub(crate) fn require_dispatch(function: &str) -> bool {
    require_at_most(DISPATCH_LEVEL, function)
}

fn require_at_most(max: KIRQL, function: &str) -> bool {
    let irql = current_irql();
    if irql > max {
        report(Rule::IrqlTooHigh, format!("{function} called at IRQL {irql}; it requires IRQL <= {max}"));
        return false;
    }
    true
}

#[unsafe(no_mangle)]
pub extern "system" fn KeGetCurrentIrql() -> KIRQL {
    current_irql()
}

/// A thread's KTHREAD, here an address unique to the thread. It allocates nothing and
/// needs no kernel: a global allocator may ask it, on any thread.
#[unsafe(no_mangle)]
pub extern "system" fn KeGetCurrentThread() -> *mut core::ffi::c_void {
    thread_local! {
        static THREAD: u8 = const { 0 };
    }
    THREAD.with(|t| t as *const u8 as *mut core::ffi::c_void)
}

#[unsafe(no_mangle)]
pub extern "system" fn KfRaiseIrql(new: KIRQL) -> KIRQL {
    let old = current_irql();
    if new < old || new > HIGH_LEVEL {
        report(Rule::IrqlMismatch, format!("KeRaiseIrql from {old} to {new}"));
    }
    set_irql(new);
    old
}

#[unsafe(no_mangle)]
pub extern "system" fn KeLowerIrql(new: KIRQL) {
    let old = current_irql();
    if new > old {
        report(Rule::IrqlMismatch, format!("KeLowerIrql from {old} to {new}"));
    }
    set_irql(new);
}
