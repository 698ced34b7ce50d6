//! KeSaveExtendedProcessorState / KeRestoreExtendedProcessorState as a checked model.
//!
//! A host thread keeps its own vector registers, so nothing is saved. What ntsim keeps is
//! each thread's stack of active saves (the XSTATE_SAVE's address, the IRQL, the mask),
//! and it reports what would corrupt some other code's registers on Windows: a save above
//! DISPATCH_LEVEL, a restore that is not the innermost active save, on another thread or
//! at another IRQL, a restore of a save never made, and a save left active when a DPC,
//! work item or completion routine returns, or at unload. Each save is linked the way the
//! kernel links them: `Prev` is the thread's previous innermost save, `Thread` the thread,
//! `Level` the IRQL of the save.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, ThreadId};

use wsktls_nt::{
    KIRQL, NTSTATUS, PVOID, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, STATUS_UNSUCCESSFUL, XSTATE_SAVE,
};

use crate::irql::{current_irql, require_dispatch};
use crate::kernel::{current, lock, with_current};
use crate::verifier::{Rule, report};

/// One active save, and what ntsim wrote into its XSTATE_SAVE.
struct Active {
    save: usize,
    irql: KIRQL,
    mask: u64,
    prev: usize,
    thread_name: String,
}

/// Every thread's active saves, innermost last.
#[derive(Default)]
pub(crate) struct Saves {
    active: Mutex<HashMap<ThreadId, Vec<Active>>>,
    /// How many saves are active on all threads, recounted under the lock whenever a
    /// stack changes: at 0, the checks around every driver routine need no lock. Only a
    /// thread itself adds to its stack, so when it reads 0 its stack is empty.
    count: AtomicUsize,
}

impl Saves {
    fn depth(&self) -> usize {
        if self.count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        lock(&self.active).get(&thread::current().id()).map_or(0, Vec::len)
    }

    /// Recounts the active saves; called with `active` locked, after changing it.
    fn recount(&self, active: &HashMap<ThreadId, Vec<Active>>) {
        self.count.store(active.values().map(Vec::len).sum(), Ordering::Release);
    }

    /// Saves made on this thread since it had `depth` active, and left active: reported,
    /// and forgotten so that each is reported once.
    fn check_returned(&self, depth: usize, what: impl FnOnce() -> String) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut active = lock(&self.active);
        let Some(stack) = active.get_mut(&thread::current().id()) else { return };
        if stack.len() <= depth {
            return;
        }
        let left: Vec<String> = stack.drain(depth..).map(|a| describe(&a)).collect();
        self.recount(&active);
        drop(active);
        report(
            Rule::ExtendedStateNotRestored,
            format!("{} returned with extended state still saved: {}", what(), left.join(", ")),
        );
    }

    pub(crate) fn check_unload(&self) {
        let mut active = lock(&self.active);
        let left: Vec<String> = active.drain().flat_map(|(_, s)| s).map(|a| describe(&a)).collect();
        self.recount(&active);
        drop(active);
        if !left.is_empty() {
            report(
                Rule::ExtendedStateNotRestored,
                format!("extended state still saved at unload: {}", left.join(", ")),
            );
        }
    }
}

fn describe(a: &Active) -> String {
    format!("XSTATE_SAVE {:#x} (mask {:#x}, IRQL {}, thread '{}')", a.save, a.mask, a.irql, a.thread_name)
}

/// How many saves this thread has active (0 outside a kernel): taken before calling into
/// a driver routine, for [`check_returned`] after it.
pub(crate) fn depth() -> usize {
    with_current(|k| k.map_or(0, |k| k.xstate.depth()))
}

/// Reports saves that a driver routine (named by `what`) made and did not restore before
/// returning.
pub(crate) fn check_returned(depth: usize, what: impl FnOnce() -> String) {
    with_current(|k| {
        if let Some(k) = k {
            k.xstate.check_returned(depth, what);
        }
    });
}

thread_local! {
    /// Stands in for this thread's KTHREAD: a per-thread address for XSTATE_SAVE.Thread.
    static KTHREAD: u8 = const { 0 };
}

fn kthread() -> PVOID {
    KTHREAD.with(|t| t as *const u8 as PVOID)
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeSaveExtendedProcessorState(mask: u64, save: *mut XSTATE_SAVE) -> NTSTATUS {
    let k = current();
    if !require_dispatch("KeSaveExtendedProcessorState") {
        return STATUS_UNSUCCESSFUL;
    }
    if save.is_null() {
        report(Rule::BadParameter, "KeSaveExtendedProcessorState with a NULL XSTATE_SAVE");
        return STATUS_INVALID_PARAMETER;
    }
    let irql = current_irql();
    let me = thread::current();
    let mut active = lock(&k.xstate.active);
    if active.values().flatten().any(|a| a.save == save as usize) {
        drop(active);
        report(
            Rule::ExtendedStateMisuse,
            format!("KeSaveExtendedProcessorState into XSTATE_SAVE {save:?}, which holds an active save"),
        );
        return STATUS_INVALID_PARAMETER;
    }
    let stack = active.entry(me.id()).or_default();
    let enclosing = stack.last().map(|a| (a.save, a.irql));
    let prev = enclosing.map_or(0, |(s, _)| s);
    stack.push(Active {
        save: save as usize,
        irql,
        mask,
        prev,
        thread_name: me.name().unwrap_or("?").into(),
    });
    k.xstate.recount(&active);
    drop(active);
    if let Some((outer, outer_irql)) = enclosing.filter(|&(_, outer_irql)| irql < outer_irql) {
        report(
            Rule::ExtendedStateMisuse,
            format!(
                "KeSaveExtendedProcessorState at IRQL {irql} nested in the save {outer:#x} made at IRQL {outer_irql}: a nested save must not run at a lower IRQL"
            ),
        );
    }
    // SAFETY: the caller's XSTATE_SAVE (checked non-NULL), which the kernel fills.
    unsafe {
        save.write(XSTATE_SAVE::zeroed());
        (*save).Prev = prev as *mut XSTATE_SAVE;
        (*save).Thread = kthread();
        (*save).Level = irql;
        (*save).XStateContext.Mask = mask;
    }
    k.counters.xstate_saves.fetch_add(1, Ordering::Relaxed);
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeRestoreExtendedProcessorState(save: *mut XSTATE_SAVE) {
    let k = current();
    k.counters.xstate_restores.fetch_add(1, Ordering::Relaxed);
    let irql = current_irql();
    let me = thread::current().id();
    let key = save as usize;
    let mut active = lock(&k.xstate.active);
    let mine = active.get_mut(&me).and_then(|stack| {
        let i = stack.iter().rposition(|a| a.save == key)?;
        let inner: Vec<String> = stack[i + 1..].iter().map(|b| format!("{:#x}", b.save)).collect();
        Some((stack.remove(i), inner))
    });
    let (restored, problem) = match mine {
        Some((a, inner)) if !inner.is_empty() => {
            let problem = format!(
                "KeRestoreExtendedProcessorState({save:?}) while later saves on this thread are active ({}): restores must be LIFO",
                inner.join(", ")
            );
            (Some(a), Some(problem))
        }
        Some((a, _)) if a.irql != irql => {
            let problem = format!(
                "KeRestoreExtendedProcessorState({save:?}) at IRQL {irql}; it was saved at IRQL {}",
                a.irql
            );
            (Some(a), Some(problem))
        }
        Some((a, _)) => (Some(a), None),
        None => {
            let elsewhere = active.values_mut().find_map(|s| {
                let i = s.iter().position(|a| a.save == key)?;
                Some(s.remove(i))
            });
            let problem = match &elsewhere {
                Some(a) => format!(
                    "KeRestoreExtendedProcessorState({save:?}) on another thread than thread '{}', which saved it",
                    a.thread_name
                ),
                None => format!(
                    "KeRestoreExtendedProcessorState({save:?}): no active save there (never saved, or restored already)"
                ),
            };
            (elsewhere, Some(problem))
        }
    };
    k.xstate.recount(&active);
    drop(active);
    if let Some(problem) = problem {
        report(Rule::ExtendedStateMisuse, problem);
    }
    if let Some(a) = restored {
        // SAFETY: an XSTATE_SAVE that was saved into and that the driver keeps until this
        // restore returns.
        let intact = unsafe {
            (*save).Prev as usize == a.prev && (*save).Level == a.irql && (*save).XStateContext.Mask == a.mask
        };
        if !intact {
            report(
                Rule::ExtendedStateMisuse,
                format!("XSTATE_SAVE {save:?} changed between its save and its restore"),
            );
        }
    }
}
