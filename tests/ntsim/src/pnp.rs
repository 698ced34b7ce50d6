//! The Plug and Play manager's root bus: physical device objects (owned by ntsim's own
//! "PnpManager" driver) for a test's devices, AddDevice, and the PnP IRPs that start,
//! remove and surprise-remove a device stack, with the checks Driver Verifier makes
//! after them. A test drives it through [`Kernel::add_root_device`],
//! [`Kernel::remove_device`] and [`Kernel::surprise_remove_device`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wsktls_nt::{
    DEVICE_OBJECT, DO_DEVICE_INITIALIZING, DRIVER_OBJECT, FILE_DEVICE_SECURE_OPEN, IRP, IRP_MJ_PNP,
    IRP_MN_CANCEL_REMOVE_DEVICE, IRP_MN_CANCEL_STOP_DEVICE, IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_QUERY_STOP_DEVICE, IRP_MN_REMOVE_DEVICE, IRP_MN_START_DEVICE, IRP_MN_STOP_DEVICE,
    IRP_MN_SURPRISE_REMOVAL, IoGetCurrentIrpStackLocation, NT_SUCCESS, NTSTATUS, PASSIVE_LEVEL,
    STATUS_DELETE_PENDING, STATUS_DEVICE_BUSY, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE, STATUS_NOT_SUPPORTED,
    STATUS_SUCCESS,
};

use crate::device::{IRP_WAIT, IoDeleteDevice, initializing};
use crate::driver::Driver;
use crate::io::IofCompleteRequest;
use crate::irql::with_irql;
use crate::kernel::{Kernel, KernelInner, lock};
use crate::request::{Request, send_and_wait};
use crate::security::Descriptor;
use crate::verifier::{Rule, report};

/// `FILE_DEVICE_UNKNOWN`: the type of a root-enumerated PDO.
const FILE_DEVICE_UNKNOWN: u32 = 0x22;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PdoState {
    /// AddDevice ran; IRP_MN_START_DEVICE not yet completed.
    Added,
    Started,
    /// IRP_MN_QUERY_REMOVE_DEVICE succeeded; IRP_MN_REMOVE_DEVICE is next.
    RemovePending,
    SurpriseRemoved,
}

struct Pdo {
    /// The device instance path with `#` for `\`: `ROOT#WSKTLS#0000`.
    instance: String,
    security: Descriptor,
    state: PdoState,
}

#[derive(Default)]
struct State {
    /// ntsim's own driver object for the root bus's PDOs, made on first use.
    root: usize,
    pdos: HashMap<usize, Pdo>,
    /// Instances made so far per hardware id, for the instance number.
    instances: HashMap<String, u32>,
}

#[derive(Default)]
pub(crate) struct RootBus {
    state: Mutex<State>,
}

/// A device on the root bus, from [`Kernel::add_root_device`].
pub struct Device {
    k: Arc<KernelInner>,
    pdo: usize,
}

impl Device {
    /// The physical device object AddDevice received.
    pub fn pdo(&self) -> *mut DEVICE_OBJECT {
        self.pdo as *mut DEVICE_OBJECT
    }

    /// The top of the device's stack (the driver's device once attached), or NULL once
    /// the PDO is gone.
    pub fn top(&self) -> *mut DEVICE_OBJECT {
        self.k.devices.top_of(self.pdo()).unwrap_or(std::ptr::null_mut())
    }
}

impl RootBus {
    /// `\Driver\PnpManager`, made on first use.
    fn root_driver(&self, k: &KernelInner) -> Option<*mut DRIVER_OBJECT> {
        let mut st = lock(&self.state);
        if st.root == 0 {
            st.root = k.drivers.create("PnpManager", Some(root_dispatch))? as usize;
        }
        Some(st.root as *mut DRIVER_OBJECT)
    }

    /// `ROOT#<HARDWARE ID>#<instance>` for a physical device object of the root bus.
    pub(crate) fn instance_path(&self, pdo: *mut DEVICE_OBJECT) -> Option<String> {
        lock(&self.state).pdos.get(&(pdo as usize)).map(|p| p.instance.clone())
    }

    /// Whether an open may reach the stack of `pdo` now.
    pub(crate) fn open_status(&self, pdo: *mut DEVICE_OBJECT) -> Result<(), NTSTATUS> {
        match lock(&self.state).pdos.get(&(pdo as usize)).map(|p| p.state) {
            Some(PdoState::Started) => Ok(()),
            Some(PdoState::RemovePending) => Err(STATUS_DELETE_PENDING),
            Some(PdoState::Added) => Err(STATUS_INVALID_DEVICE_STATE),
            Some(PdoState::SurpriseRemoved) | None => Err(STATUS_NO_SUCH_DEVICE),
        }
    }

    /// The security descriptor of the stack of `pdo`.
    pub(crate) fn security(&self, pdo: *mut DEVICE_OBJECT) -> Option<Descriptor> {
        lock(&self.state).pdos.get(&(pdo as usize)).map(|p| p.security.clone())
    }

    fn set_state(&self, pdo: *mut DEVICE_OBJECT, state: PdoState) -> Option<PdoState> {
        let mut st = lock(&self.state);
        let p = st.pdos.get_mut(&(pdo as usize))?;
        Some(std::mem::replace(&mut p.state, state))
    }

    fn new_instance(&self, hardware_id: &str) -> String {
        let id = hardware_id.to_uppercase();
        let id = id.strip_prefix("ROOT\\").unwrap_or(&id).replace('\\', "#");
        let mut st = lock(&self.state);
        let n = st.instances.entry(id.clone()).or_insert(0);
        *n += 1;
        format!("ROOT#{id}#{:04}", *n - 1)
    }
}

/// ntsim's root bus driver: succeeds the PnP state changes, leaves other PnP requests'
/// status as it found it (the PnP convention), refuses everything else.
unsafe extern "system" fn root_dispatch(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: an IRP sent to one of our PDOs; completing it hands it back.
    unsafe {
        let sp = IoGetCurrentIrpStackLocation(irp);
        let status = match ((*sp).MajorFunction, (*sp).MinorFunction) {
            (
                IRP_MJ_PNP,
                IRP_MN_START_DEVICE
                | IRP_MN_QUERY_REMOVE_DEVICE
                | IRP_MN_REMOVE_DEVICE
                | IRP_MN_SURPRISE_REMOVAL
                | IRP_MN_CANCEL_REMOVE_DEVICE
                | IRP_MN_QUERY_STOP_DEVICE
                | IRP_MN_STOP_DEVICE
                | IRP_MN_CANCEL_STOP_DEVICE,
            ) => STATUS_SUCCESS,
            (IRP_MJ_PNP, _) => (*irp).IoStatus.status(),
            _ => STATUS_INVALID_DEVICE_REQUEST,
        };
        let information = (*irp).IoStatus.Information;
        (*irp).IoStatus.set(status, information);
        IofCompleteRequest(irp, 0);
        status
    }
}

/// Sends one PnP minor function to the top of the stack of `pdo` and waits for it.
fn send_pnp(k: &KernelInner, pdo: *mut DEVICE_OBJECT, minor: u8) -> NTSTATUS {
    let Some(top) = k.devices.top_of(pdo) else {
        return STATUS_NO_SUCH_DEVICE;
    };
    send_and_wait(top, &Request::new(IRP_MJ_PNP, minor, STATUS_NOT_SUPPORTED))
}

impl Kernel {
    /// Makes a root-enumerated device for `driver`: a PDO with the security descriptor
    /// `sddl`, the driver's AddDevice at PASSIVE_LEVEL, then IRP_MN_START_DEVICE. If
    /// AddDevice or the start fails, the device goes (IRP_MN_REMOVE_DEVICE once AddDevice
    /// has succeeded) and the status comes back.
    pub fn add_root_device(
        &self,
        driver: &Driver,
        hardware_id: &str,
        sddl: &str,
    ) -> Result<Device, NTSTATUS> {
        let _in = self.enter();
        let k = self.inner();
        let security = Descriptor::parse(sddl).map_err(|e| {
            eprintln!("ntsim: add_root_device: bad SDDL {sddl:?}: {e}");
            STATUS_INVALID_PARAMETER
        })?;
        // Arrivals of the interfaces the driver enables at start wait for the start.
        let _held = k.notify.hold();
        let pdo = create_pdo(k)?;
        let instance = k.pnp.new_instance(hardware_id);
        let record = Pdo { instance, security, state: PdoState::Added };
        lock(&k.pnp.state).pdos.insert(pdo as usize, record);
        if let Err(status) = add_device(k, driver.object(), pdo) {
            discard_pdo(k, pdo, "AddDevice failed");
            return Err(status);
        }
        let status = send_pnp(k, pdo, IRP_MN_START_DEVICE);
        if !NT_SUCCESS(status) {
            send_pnp(k, pdo, IRP_MN_REMOVE_DEVICE);
            finish_remove(k, pdo);
            return Err(status);
        }
        k.pnp.set_state(pdo, PdoState::Started);
        Ok(Device { k: Arc::clone(k), pdo: pdo as usize })
    }

    /// Removes a started device as Windows does when asked to: refused with
    /// STATUS_DEVICE_BUSY while file objects are open on it (the "outstanding open"
    /// veto); else IRP_MN_QUERY_REMOVE_DEVICE, and on failure IRP_MN_CANCEL_REMOVE_DEVICE
    /// and the query's status; on success IRP_MN_REMOVE_DEVICE and the PDO goes.
    pub fn remove_device(&self, device: &Device) -> Result<(), NTSTATUS> {
        let _in = self.enter();
        let k = self.inner();
        let pdo = device.pdo();
        if k.pnp.open_status(pdo) != Ok(()) {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        if k.files.open_on(pdo) > 0 {
            return Err(STATUS_DEVICE_BUSY);
        }
        let status = send_pnp(k, pdo, IRP_MN_QUERY_REMOVE_DEVICE);
        if !NT_SUCCESS(status) {
            send_pnp(k, pdo, IRP_MN_CANCEL_REMOVE_DEVICE);
            return Err(status);
        }
        k.pnp.set_state(pdo, PdoState::RemovePending);
        send_pnp(k, pdo, IRP_MN_REMOVE_DEVICE);
        finish_remove(k, pdo);
        Ok(())
    }

    /// Asks the device's stack whether it could be removed: IRP_MN_QUERY_REMOVE_DEVICE,
    /// sent as the PnP manager sends it once no open handle vetoes the removal, then
    /// IRP_MN_CANCEL_REMOVE_DEVICE either way (the device stays). Returns what the
    /// stack's drivers answered the query with: their own veto, apart from the
    /// outstanding-open one `remove_device` applies first.
    pub fn query_remove_device(&self, device: &Device) -> NTSTATUS {
        let _in = self.enter();
        let k = self.inner();
        let pdo = device.pdo();
        let status = send_pnp(k, pdo, IRP_MN_QUERY_REMOVE_DEVICE);
        send_pnp(k, pdo, IRP_MN_CANCEL_REMOVE_DEVICE);
        status
    }

    /// Pulls a started device out: IRP_MN_SURPRISE_REMOVAL, then, once every file object
    /// opened on it is closed (as Windows waits), IRP_MN_REMOVE_DEVICE; no query.
    pub fn surprise_remove_device(&self, device: &Device) {
        let _in = self.enter();
        let k = self.inner();
        let pdo = device.pdo();
        if k.pnp.set_state(pdo, PdoState::SurpriseRemoved).is_none() {
            return;
        }
        send_pnp(k, pdo, IRP_MN_SURPRISE_REMOVAL);
        k.files.wait_closed(pdo, IRP_WAIT);
        send_pnp(k, pdo, IRP_MN_REMOVE_DEVICE);
        finish_remove(k, pdo);
    }
}

fn create_pdo(k: &KernelInner) -> Result<*mut DEVICE_OBJECT, NTSTATUS> {
    let root = k.pnp.root_driver(k).ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
    let pdo = k.devices.create(root, 0, FILE_DEVICE_UNKNOWN, FILE_DEVICE_SECURE_OPEN);
    let pdo = pdo.ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
    // SAFETY: just created, ours.
    unsafe { (*pdo).Flags &= !DO_DEVICE_INITIALIZING };
    Ok(pdo)
}

/// Calls the driver's AddDevice; a device it made and left initializing is a report.
fn add_device(k: &KernelInner, driver: *mut DRIVER_OBJECT, pdo: *mut DEVICE_OBJECT) -> Result<(), NTSTATUS> {
    // SAFETY: a loaded driver's object and extension (ntsim's memory).
    let add = unsafe { (*(*driver).DriverExtension).AddDevice };
    let Some(add) = add else {
        return Err(STATUS_NOT_SUPPORTED);
    };
    let since = k.devices.next_serial();
    let status = with_irql(PASSIVE_LEVEL, "AddDevice", || {
        // SAFETY: the driver's AddDevice, called as the PnP manager does.
        unsafe { add(driver, pdo) }
    });
    if !NT_SUCCESS(status) {
        return Err(status);
    }
    for device in k.devices.created_since(driver, since) {
        if initializing(device) {
            report(
                Rule::DeviceStillInitializing,
                format!("AddDevice returned success with device {device:?} still DO_DEVICE_INITIALIZING"),
            );
        }
    }
    Ok(())
}

/// IRP_MN_REMOVE_DEVICE has returned: the driver must have detached and disabled its
/// interfaces; then the PDO goes (unless something is still attached to it).
fn finish_remove(k: &KernelInner, pdo: *mut DEVICE_OBJECT) {
    k.interfaces.device_removed(pdo);
    if k.devices.has_attached(pdo) {
        report(
            Rule::AttachedAfterRemove,
            format!("a device is still attached to PDO {pdo:?} after IRP_MN_REMOVE_DEVICE"),
        );
        k.pnp.set_state(pdo, PdoState::SurpriseRemoved);
        return;
    }
    lock(&k.pnp.state).pdos.remove(&(pdo as usize));
    // SAFETY: our PDO, with nothing attached.
    unsafe { IoDeleteDevice(pdo) };
}

/// AddDevice failed: it must have left nothing attached; the PDO goes.
fn discard_pdo(k: &KernelInner, pdo: *mut DEVICE_OBJECT, why: &str) {
    if k.devices.has_attached(pdo) {
        report(Rule::DeviceObjectMisuse, format!("{why}, leaving a device attached to PDO {pdo:?}"));
        return;
    }
    lock(&k.pnp.state).pdos.remove(&(pdo as usize));
    // SAFETY: our PDO, with nothing attached.
    unsafe { IoDeleteDevice(pdo) };
}
