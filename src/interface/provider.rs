//! The provider: what a consumer's `PWSKTLS_PROVIDER` names. One per device: the WSK
//! client, the defaults read from the registry, the channel table, and the rundown that
//! lets the device's removal wait for every Connect in progress.

use core::cell::UnsafeCell;

use super::table::Table;
use crate::nt::{
    DEVICE_OBJECT, Event, Guard, NTSTATUS, Rundown, STATUS_DELETE_PENDING, STATUS_DEVICE_NOT_READY,
    STATUS_DEVICE_REMOVED, STATUS_FILE_FORCED_CLOSED, STATUS_INVALID_HANDLE, SpinLock, WSKTLS_PROVIDER,
    pool_tag,
};
use crate::wsk::WskClient;

/// Marks a live provider, so a stray pointer passed as one is refused, not followed far.
const SIGNATURE: u32 = pool_tag(b"WtPv");

/// How long starting the device waits for the WSK provider (NETIO) to be ready.
const CAPTURE_WAIT_MS: u32 = 30_000;

/// What a channel gets when its consumer leaves a field at zero, and how many channels
/// there may be: the service's Parameters key, or these defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub connect_timeout_ms: u32,
    pub handshake_timeout_ms: u32,
    pub disconnect_timeout_ms: u32,
    pub max_channels: u32,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            connect_timeout_ms: crate::channel::DEFAULT_CONNECT_TIMEOUT_MS,
            handshake_timeout_ms: crate::channel::DEFAULT_HANDSHAKE_TIMEOUT_MS,
            disconnect_timeout_ms: crate::channel::DEFAULT_DISCONNECT_TIMEOUT_MS,
            max_channels: 4096,
        }
    }
}

/// Whether new channels may open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    /// Not started yet, or stopped.
    NotReady,
    Open,
    /// A query-remove succeeded: no new channel until it is cancelled.
    RemovePending,
    Removed,
}

pub struct Provider {
    signature: u32,
    pub(crate) defaults: Defaults,
    /// Set by `start` and taken by `remove`, both in PnP IRPs (serialised by the PnP
    /// manager); read only by Connects, which hold `rundown`.
    client: UnsafeCell<Option<WskClient>>,
    table: SpinLock<Table>,
    admit: SpinLock<Admit>,
    /// Connects in progress.
    rundown: Rundown,
    /// Signalled whenever a slot is freed (teardown waits for Closes in progress).
    freed: Event,
}

// SAFETY: `client` is ordered by the PnP manager and the rundown (see its comment); the
// rest synchronises itself.
unsafe impl Sync for Provider {}
// SAFETY: as above.
unsafe impl Send for Provider {}

impl Provider {
    /// Builds the provider at `at`, its final address (the device extension).
    ///
    /// # Safety
    /// `at` is writable, suitably aligned storage that stays put until `drop_in_place`.
    pub unsafe fn initialize(
        at: *mut Provider,
        device: *mut DEVICE_OBJECT,
        defaults: Defaults,
    ) -> Result<(), NTSTATUS> {
        let table = Table::new(at, device, defaults.max_channels)?;
        let provider = Provider {
            signature: SIGNATURE,
            defaults,
            client: UnsafeCell::new(None),
            table: SpinLock::new(table),
            admit: SpinLock::new(Admit::NotReady),
            rundown: Rundown::new(),
            freed: Event::new(),
        };
        // SAFETY: per the caller; the rundown and event are initialised where they stay.
        unsafe {
            at.write(provider);
            (*at).rundown.initialize();
            (*at).freed.initialize();
        }
        Ok(())
    }

    /// The provider a consumer names: STATUS_INVALID_HANDLE for null or a pointer without
    /// our signature.
    ///
    /// # Safety
    /// `p` is null or came from this driver's IOCTL_WSKTLS_GET_PROVIDER, and the consumer
    /// still holds the file object it came through.
    pub(crate) unsafe fn from_handle<'a>(p: *mut WSKTLS_PROVIDER) -> Result<&'a Provider, NTSTATUS> {
        // SAFETY: per the contract.
        let provider = unsafe { p.cast::<Provider>().as_ref() }.ok_or(STATUS_INVALID_HANDLE)?;
        if provider.signature != SIGNATURE {
            return Err(STATUS_INVALID_HANDLE);
        }
        Ok(provider)
    }

    pub fn handle(&self) -> *mut WSKTLS_PROVIDER {
        self as *const Provider as *mut WSKTLS_PROVIDER
    }

    /// IRP_MN_START_DEVICE: registers with WSK (once) and captures its provider NPI, then
    /// admits channels. PASSIVE_LEVEL.
    pub fn start(&self) -> Result<(), NTSTATUS> {
        // SAFETY: PnP IRPs are serialised, and no Connect runs before we admit them.
        let client = unsafe { &mut *self.client.get() };
        if client.is_none() {
            let mut registered = WskClient::register()?;
            registered.capture_provider(CAPTURE_WAIT_MS)?;
            *client = Some(registered);
        }
        *self.admit.lock() = Admit::Open;
        Ok(())
    }

    /// IRP_MN_QUERY_REMOVE_DEVICE and IRP_MN_QUERY_STOP_DEVICE: refused
    /// (STATUS_DEVICE_BUSY) while any channel is open, connecting or closing; otherwise
    /// no new channel opens until `resume`.
    pub fn query_remove(&self) -> Result<(), NTSTATUS> {
        let mut admit = self.admit.lock();
        let live = self.table.lock().live();
        if live > 0 {
            crate::log!(crate::log::Level::Info, "removal refused: {} channel(s) open", live);
            return Err(crate::nt::STATUS_DEVICE_BUSY);
        }
        *admit = Admit::RemovePending;
        Ok(())
    }

    /// IRP_MN_CANCEL_REMOVE_DEVICE / IRP_MN_CANCEL_STOP_DEVICE.
    pub fn resume(&self) {
        let mut admit = self.admit.lock();
        if *admit == Admit::RemovePending {
            *admit = Admit::Open;
        }
    }

    /// IRP_MN_STOP_DEVICE: no new channel until started again (the query refused a stop
    /// with channels open).
    pub fn stop(&self) {
        let mut admit = self.admit.lock();
        if *admit != Admit::Removed {
            *admit = Admit::NotReady;
        }
    }

    /// IRP_MN_SURPRISE_REMOVAL / IRP_MN_REMOVE_DEVICE: refuses new channels, ends every
    /// open one (what is pending on it completes with STATUS_FILE_FORCED_CLOSED; its
    /// handle stays valid until the consumer closes it), waits for every Connect in
    /// progress, then releases the WSK NPI and deregisters. PASSIVE_LEVEL; idempotent.
    pub fn remove(&self) {
        {
            let mut admit = self.admit.lock();
            if *admit == Admit::Removed {
                return;
            }
            *admit = Admit::Removed;
            self.table.lock().remove_all();
        }
        self.rundown.wait();
        // Connects that finished after remove_all found the table removed and closed
        // their channels; what remains is what remove_all marked.
        let mut from = 0;
        loop {
            let next =
                self.table.lock().holding_from(from).map(|(i, slot)| (i, slot as *const super::table::Slot));
            let Some((i, slot)) = next else { break };
            // SAFETY: slots live as long as the table, which lives as long as we do.
            unsafe { (*slot).end(STATUS_FILE_FORCED_CLOSED) };
            from = i + 1;
        }
        // SAFETY: no Connect can run any more (rundown), and PnP IRPs are serialised.
        drop(unsafe { (*self.client.get()).take() });
        crate::log!(crate::log::Level::Info, "provider removed");
    }

    /// Waits (PASSIVE_LEVEL) until no Close is still running, before the provider's
    /// memory goes (the last file object closed after removal).
    pub fn wait_closes(&self) {
        loop {
            self.freed.clear();
            if !self.table.lock().closing() {
                return;
            }
            let _ = self.freed.wait(100);
        }
    }

    /// Starts a Connect: STATUS_DEVICE_NOT_READY before start, STATUS_DELETE_PENDING after
    /// a query-remove, STATUS_DEVICE_REMOVED once removed. The guard ends it.
    pub(crate) fn enter(&self) -> Result<Entered<'_>, NTSTATUS> {
        match *self.admit.lock() {
            Admit::Open => {}
            Admit::NotReady => return Err(STATUS_DEVICE_NOT_READY),
            Admit::RemovePending => return Err(STATUS_DELETE_PENDING),
            Admit::Removed => return Err(STATUS_DEVICE_REMOVED),
        }
        if !self.rundown.acquire() {
            return Err(STATUS_DEVICE_REMOVED);
        }
        Ok(Entered { provider: self })
    }

    /// The table, under its lock (DISPATCH_LEVEL while held).
    pub(crate) fn table(&self) -> Guard<'_, Table> {
        self.table.lock()
    }

    pub(crate) fn slot_freed(&self) {
        self.freed.set();
    }

    /// Whether new channels may open now (for IOCTL_WSKTLS_GET_PROVIDER).
    pub fn is_removed(&self) -> bool {
        *self.admit.lock() == Admit::Removed
    }
}

/// A Connect in progress: holds the provider's rundown, and with it the WSK client.
pub(crate) struct Entered<'a> {
    provider: &'a Provider,
}

impl Entered<'_> {
    pub(crate) fn client(&self) -> Option<&WskClient> {
        // SAFETY: `remove` takes the client only after waiting for every holder of the
        // rundown, which we are.
        unsafe { (*self.provider.client.get()).as_ref() }
    }

    /// Keeps the rundown past this call (the connect's work item ends it with `adopt`).
    pub(crate) fn keep(self) {
        core::mem::forget(self);
    }

    /// # Safety
    /// Once per `keep`.
    pub(crate) unsafe fn adopt(provider: &Provider) -> Entered<'_> {
        Entered { provider }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.provider.rundown.release();
    }
}
