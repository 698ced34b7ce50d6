//! The owner of an I/O work item: allocated with a device object (which stays referenced
//! while the item is queued), queued at IRQL <= DISPATCH_LEVEL, run at PASSIVE_LEVEL on a
//! system worker thread, freed when its owner drops it.

use core::ptr::NonNull;

use crate::{
    DEVICE_OBJECT, DelayedWorkQueue, IO_WORKITEM, IoAllocateWorkItem, IoFreeWorkItem, IoQueueWorkItem,
    NTSTATUS, PVOID, STATUS_INSUFFICIENT_RESOURCES,
};

/// What a work item runs: `(device, context)`, at PASSIVE_LEVEL.
pub type WorkRoutine = unsafe extern "system" fn(DeviceObject: *mut DEVICE_OBJECT, Context: PVOID);

pub struct WorkItem {
    item: NonNull<IO_WORKITEM>,
}

// SAFETY: a work item may be queued and freed from any thread.
unsafe impl Send for WorkItem {}
// SAFETY: queueing goes through the I/O manager, which serialises it.
unsafe impl Sync for WorkItem {}

impl WorkItem {
    /// IoAllocateWorkItem for `device`. IRQL <= DISPATCH_LEVEL.
    ///
    /// # Safety
    /// `device` is a device object of the caller's driver that outlives the item.
    pub unsafe fn new(device: *mut DEVICE_OBJECT) -> Result<WorkItem, NTSTATUS> {
        // SAFETY: per the caller; the result is checked.
        let item = unsafe { IoAllocateWorkItem(device) };
        NonNull::new(item).map(|item| WorkItem { item }).ok_or(STATUS_INSUFFICIENT_RESOURCES)
    }

    /// IoQueueWorkItem. IRQL <= DISPATCH_LEVEL.
    ///
    /// # Safety
    /// The item is not queued already (or its routine has started), `context` stays
    /// valid until `routine` has run, and the item is not dropped before then.
    pub unsafe fn queue(&self, routine: WorkRoutine, context: PVOID) {
        // SAFETY: per the caller.
        unsafe { IoQueueWorkItem(self.item.as_ptr(), Some(routine), DelayedWorkQueue, context) };
    }
}

impl Drop for WorkItem {
    fn drop(&mut self) {
        // SAFETY: ours, allocated once; not queued (the owner's contract).
        unsafe { IoFreeWorkItem(self.item.as_ptr()) };
    }
}
