//! Work items: IoAllocateWorkItem / IoQueueWorkItem / IoFreeWorkItem, run at PASSIVE_LEVEL
//! on the kernel's pool of system worker threads, with the life-cycle checks Driver
//! Verifier makes. A queued or running item keeps its device object referenced, so the
//! driver cannot unload under it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use wsktls_nt::{DEVICE_OBJECT, IO_WORKITEM, PASSIVE_LEVEL, PIO_WORKITEM_ROUTINE, PVOID, WORK_QUEUE_TYPE};

use crate::faults::{AllocKind, allocation_fails};
use crate::irql::{require_dispatch, with_irql};
use crate::kernel::{KernelInner, current, lock, wait};
use crate::pool::{raw_alloc, raw_free};
use crate::verifier::{Rule, report};

/// What ntsim allocates for an IO_WORKITEM (the real one is opaque too).
const ITEM_SIZE: usize = 64;

/// System worker threads: several, because drivers run work that waits (a connect, a
/// disconnect) and one slow item must not hold up the others.
pub(crate) const WORKER_THREADS: usize = 4;

/// One live work item.
struct Item {
    /// Queued and not yet started: queuing it again is a bug.
    queued: bool,
    /// Routines of it running now (it may be queued again once its routine started).
    running: u32,
    device: usize,
}

struct Queued {
    item: usize,
    routine: unsafe extern "system" fn(*mut DEVICE_OBJECT, PVOID),
    context: usize,
    /// Whether the queue took a reference on the device (ntsim's own device objects only).
    referenced: bool,
}

#[derive(Default)]
struct State {
    live: HashMap<usize, Item>,
    queue: VecDeque<Queued>,
    stopping: bool,
}

#[derive(Default)]
pub(crate) struct WorkItems {
    state: Mutex<State>,
    /// Where idle workers sleep: signalled once per item queued, and at shutdown. Nothing
    /// else waits on it (nothing waits for items to finish).
    changed: Condvar,
}

impl WorkItems {
    /// One system worker thread. At unload it finishes what is queued, then stops.
    pub(crate) fn run(&self, k: &KernelInner) {
        let mut st = lock(&self.state);
        loop {
            let Some(q) = st.queue.pop_front() else {
                if st.stopping {
                    return;
                }
                st = wait(&self.changed, st, Duration::from_millis(50));
                continue;
            };
            let device = match st.live.get_mut(&q.item) {
                Some(e) => {
                    e.queued = false;
                    e.running += 1;
                    e.device
                }
                None => continue,
            };
            drop(st);
            with_irql(PASSIVE_LEVEL, "a work item routine", || {
                // SAFETY: the driver's routine, called as the I/O manager does.
                unsafe { (q.routine)(device as *mut DEVICE_OBJECT, q.context as PVOID) }
            });
            if q.referenced {
                k.devices.dereference(device as *mut DEVICE_OBJECT);
            }
            st = lock(&self.state);
            if let Some(e) = st.live.get_mut(&q.item) {
                e.running = e.running.saturating_sub(1);
            }
        }
    }

    pub(crate) fn stop(&self) {
        lock(&self.state).stopping = true;
        // Every worker: each finishes the queue, then stops.
        self.changed.notify_all();
    }

    pub(crate) fn check_unload(&self) {
        let n = lock(&self.state).live.len();
        if n > 0 {
            report(Rule::WorkItemMisuse, format!("{n} work item(s) never freed"));
        }
    }
}

#[unsafe(no_mangle)]
pub extern "system" fn IoAllocateWorkItem(device: *mut DEVICE_OBJECT) -> *mut IO_WORKITEM {
    let k = current();
    if !require_dispatch("IoAllocateWorkItem") || allocation_fails(AllocKind::Pool, None) {
        return std::ptr::null_mut();
    }
    if device.is_null() {
        report(Rule::BadParameter, "IoAllocateWorkItem(NULL): a work item keeps a device object referenced");
        return std::ptr::null_mut();
    }
    if k.devices.was_freed(device) {
        report(
            Rule::DeviceObjectMisuse,
            format!("IoAllocateWorkItem({device:?}): the device was already freed"),
        );
        return std::ptr::null_mut();
    }
    let item = raw_alloc(ITEM_SIZE);
    if !item.is_null() {
        let idle = Item { queued: false, running: 0, device: device as usize };
        lock(&k.work.state).live.insert(item as usize, idle);
    }
    item.cast()
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoQueueWorkItem(
    item: *mut IO_WORKITEM,
    routine: PIO_WORKITEM_ROUTINE,
    _queue: WORK_QUEUE_TYPE,
    context: PVOID,
) {
    let k = current();
    require_dispatch("IoQueueWorkItem");
    let Some(routine) = routine else {
        report(Rule::BadParameter, "IoQueueWorkItem with a NULL routine");
        return;
    };
    let mut st = lock(&k.work.state);
    match st.live.get_mut(&(item as usize)) {
        None => {
            drop(st);
            report(Rule::WorkItemMisuse, format!("IoQueueWorkItem({item:?}): not a live work item"));
        }
        Some(e) if e.queued => {
            drop(st);
            report(
                Rule::WorkItemMisuse,
                format!("IoQueueWorkItem({item:?}) again before its routine started"),
            );
        }
        Some(e) => {
            e.queued = true;
            let device = e.device;
            drop(st);
            // Outside the work-item lock: the device table has its own.
            let referenced = k.devices.reference(device as *mut DEVICE_OBJECT, "IoQueueWorkItem");
            let q = Queued { item: item as usize, routine, context: context as usize, referenced };
            lock(&k.work.state).queue.push_back(q);
            // One worker per item, as the kernel's work queues release one thread per
            // item: a worker checks the queue before it sleeps, so a busy one takes the
            // item if no idle one is woken.
            k.work.changed.notify_one();
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn IoFreeWorkItem(item: *mut IO_WORKITEM) {
    let k = current();
    require_dispatch("IoFreeWorkItem");
    let mut st = lock(&k.work.state);
    match st.live.get(&(item as usize)).map(|e| e.queued) {
        None => {
            drop(st);
            report(Rule::WorkItemMisuse, format!("IoFreeWorkItem({item:?}): not a live work item"));
        }
        Some(true) => {
            drop(st);
            report(Rule::WorkItemMisuse, format!("IoFreeWorkItem({item:?}) while it is queued"));
        }
        Some(false) => {
            st.live.remove(&(item as usize));
            drop(st);
            // SAFETY: allocated by IoAllocateWorkItem with ITEM_SIZE; no longer tracked.
            unsafe { raw_free(item.cast(), ITEM_SIZE) };
        }
    }
}
