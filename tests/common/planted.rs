//! Bugs planted in the driver, one test at a time. `wsktls::planted` plants a bug for the
//! whole process, so in a binary where some tests plant bugs every other test runs under
//! [`none`] (shared) and each planted test under [`one`] (alone).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use wsktls::planted::{Bug, plant};

static PLANTS: RwLock<()> = RwLock::new(());

/// No bug is planted while this is held.
pub fn none() -> RwLockReadGuard<'static, ()> {
    PLANTS.read().unwrap_or_else(|e| e.into_inner())
}

/// `bug` is planted, and nothing else runs under [`none`], while this is held; dropping it
/// (a failing test's unwinding too) removes the bug.
pub struct One {
    _alone: RwLockWriteGuard<'static, ()>,
}

pub fn one(bug: Bug) -> One {
    let alone = PLANTS.write().unwrap_or_else(|e| e.into_inner());
    plant(Some(bug));
    One { _alone: alone }
}

impl Drop for One {
    fn drop(&mut self) {
        plant(None);
    }
}
