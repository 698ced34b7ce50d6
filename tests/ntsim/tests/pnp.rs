//! ntsim's I/O manager, PnP manager, device interfaces, notifications and registry, driven
//! by a tiny WDM function driver written below (DriverEntry, AddDevice, one dispatch
//! routine) and a consumer that finds it through an interface notification, as a
//! kernel consumer of wsktls does.
//!
//! Each test gives its driver a unique service name; the driver finds the test's
//! [`Probe`] by that name and reads its planted bugs from its `Parameters` key.

use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicI8, AtomicI32, AtomicPtr, AtomicU32, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ntsim::{Caller, Driver, Kernel, Rule};
use wsktls_nt::{
    CTL_CODE, DEVICE_INTERFACE_CHANGE_NOTIFICATION, DEVICE_OBJECT, DO_DEVICE_INITIALIZING, DO_POWER_PAGABLE,
    DRIVER_OBJECT, DelayedWorkQueue, DriverRegKeyParameters, EventCategoryDeviceInterfaceChange, Executive,
    FALSE, FILE_ANY_ACCESS, FILE_DEVICE_NETWORK, FILE_DEVICE_SECURE_OPEN, FILE_OBJECT, FILE_READ_DATA, GUID,
    GUID_DEVICE_INTERFACE_ARRIVAL, HANDLE, IO_NO_INCREMENT, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE,
    IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_PNP, IRP_MN_CANCEL_REMOVE_DEVICE, IRP_MN_QUERY_REMOVE_DEVICE,
    IRP_MN_REMOVE_DEVICE, IRP_MN_START_DEVICE, IRP_MN_SURPRISE_REMOVAL, IoAllocateDriverObjectExtension,
    IoAllocateIrp, IoAllocateWorkItem, IoAttachDeviceToDeviceStack, IoCallDriver, IoCompleteRequest,
    IoCopyCurrentIrpStackLocationToNext, IoCreateDevice, IoDeleteDevice, IoDetachDevice, IoFreeIrp,
    IoFreeWorkItem, IoGetCurrentIrpStackLocation, IoGetDeviceObjectPointer, IoGetDriverObjectExtension,
    IoGetNextIrpStackLocation, IoMarkIrpPending, IoOpenDriverRegistryKey, IoQueueWorkItem,
    IoRegisterDeviceInterface, IoRegisterPlugPlayNotification, IoSetCompletionRoutine,
    IoSetDeviceInterfaceState, IoSkipCurrentIrpStackLocation, IoUnregisterPlugPlayNotificationEx, KEVENT,
    KEY_READ, KEY_VALUE_PARTIAL_INFORMATION, KeInitializeEvent, KeSetEvent, KeWaitForSingleObject,
    KernelMode, KeyValuePartialInformation, METHOD_NEITHER, NT_SUCCESS, NTSTATUS, NotificationEvent,
    ObDereferenceObject, PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES, PVOID, REG_DWORD,
    RtlFreeUnicodeString, STATUS_ACCESS_DENIED, STATUS_BUFFER_TOO_SMALL, STATUS_DEVICE_BUSY,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST, STATUS_MORE_PROCESSING_REQUIRED,
    STATUS_NO_SUCH_DEVICE, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_PENDING, STATUS_SUCCESS, STATUS_UNSUCCESSFUL,
    TRUE, UNICODE_STRING, UserMode, ZwClose, ZwQueryValueKey,
};

/// The interface class the test driver registers.
const GUID_TEST: GUID = GUID {
    Data1: 0x59df11a2,
    Data2: 0x1c2b,
    Data3: 0x4e3f,
    Data4: [0x9a, 0x10, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77],
};
/// Completed inline with Information 42.
const IOCTL_ECHO: u32 = CTL_CODE(FILE_DEVICE_NETWORK, 0x800, METHOD_NEITHER, FILE_ANY_ACCESS);
/// Marked pending, completed by a work item with Information 7.
const IOCTL_PEND: u32 = CTL_CODE(FILE_DEVICE_NETWORK, 0x801, METHOD_NEITHER, FILE_ANY_ACCESS);
/// The planted bug: STATUS_PENDING without IoMarkIrpPending.
const IOCTL_PEND_UNMARKED: u32 = CTL_CODE(FILE_DEVICE_NETWORK, 0x802, METHOD_NEITHER, FILE_ANY_ACCESS);
/// The DriverObjectExtension id of the test driver: this byte's address.
static CLIENT_ID: u8 = 0;
const WAIT: Duration = Duration::from_secs(5);
const SDDL_SYSTEM_AND_ADMINS: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";

/// What one test's driver saw.
#[derive(Default)]
struct Probe {
    unloads: AtomicU32,
    creates: AtomicU32,
    cleanups: AtomicU32,
    closes: AtomicU32,
    last_create_mode: AtomicI8,
    pnp: Mutex<Vec<u8>>,
    refuse_query_remove: AtomicBool,
}

static PROBES: Mutex<Vec<(String, Arc<Probe>)>> = Mutex::new(Vec::new());

fn probe(name: &str) -> Arc<Probe> {
    let p = Arc::new(Probe::default());
    PROBES.lock().unwrap().push((name.to_owned(), Arc::clone(&p)));
    p
}

fn probe_named(name: &str) -> Option<Arc<Probe>> {
    PROBES.lock().unwrap().iter().find(|(n, _)| n == name).map(|(_, p)| Arc::clone(p))
}

// ---- The test driver -------------------------------------------------------------------

/// Per driver object (IoAllocateDriverObjectExtension).
struct DriverState {
    probe: *const Probe,
    leave_initializing: bool,
    leave_enabled: bool,
}

/// Per device (the FDO's extension).
struct DeviceState {
    lower: *mut DEVICE_OBJECT,
    link: UNICODE_STRING,
    probe: *const Probe,
    leave_enabled: bool,
}

fn client_id() -> PVOID {
    &CLIENT_ID as *const u8 as PVOID
}

fn text(s: &UNICODE_STRING) -> String {
    // SAFETY: a counted string whose buffer holds Length bytes.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(s.Buffer, s.Length as usize / 2) })
}

fn counted(buffer: &mut [u16]) -> UNICODE_STRING {
    let bytes = (buffer.len() * 2) as u16;
    UNICODE_STRING { Length: bytes, MaximumLength: bytes, Buffer: buffer.as_mut_ptr() }
}

/// A REG_DWORD from the driver's Parameters key.
unsafe fn parameter(driver: *mut DRIVER_OBJECT, name: &str) -> Option<u32> {
    let mut key: HANDLE = std::ptr::null_mut();
    let mut name: Vec<u16> = name.encode_utf16().collect();
    let mut info = [0u32; 4];
    let mut length = 0;
    // SAFETY: our driver object and buffers.
    unsafe {
        if !NT_SUCCESS(IoOpenDriverRegistryKey(driver, DriverRegKeyParameters, KEY_READ, 0, &mut key)) {
            return None;
        }
        let status = ZwQueryValueKey(
            key,
            &mut counted(&mut name),
            KeyValuePartialInformation,
            info.as_mut_ptr().cast(),
            16,
            &mut length,
        );
        ZwClose(key);
        NT_SUCCESS(status).then_some(info[3])
    }
}

unsafe extern "system" fn driver_entry(driver: *mut DRIVER_OBJECT, path: *mut UNICODE_STRING) -> NTSTATUS {
    // SAFETY: DriverEntry's arguments, as the I/O manager gives them.
    unsafe {
        let path = text(&*path);
        let Some(probe) = probe_named(path.rsplit('\\').next().unwrap_or("")) else {
            return STATUS_UNSUCCESSFUL;
        };
        let mut state: PVOID = std::ptr::null_mut();
        let status =
            IoAllocateDriverObjectExtension(driver, client_id(), size_of::<DriverState>() as u32, &mut state);
        if !NT_SUCCESS(status) {
            return status;
        }
        state.cast::<DriverState>().write(DriverState {
            probe: Arc::into_raw(probe),
            leave_initializing: parameter(driver, "LeaveInitializing") == Some(1),
            leave_enabled: parameter(driver, "LeaveInterfaceEnabled") == Some(1),
        });
        (*driver).DriverUnload = Some(driver_unload);
        (*(*driver).DriverExtension).AddDevice = Some(add_device);
        for major in [IRP_MJ_CREATE, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_PNP]
        {
            (*driver).MajorFunction[major as usize] = Some(dispatch);
        }
    }
    STATUS_SUCCESS
}

unsafe extern "system" fn driver_unload(driver: *mut DRIVER_OBJECT) {
    // SAFETY: our extension, allocated in DriverEntry; the probe reference it holds.
    unsafe {
        let state = IoGetDriverObjectExtension(driver, client_id()) as *mut DriverState;
        let probe = Arc::from_raw((*state).probe);
        probe.unloads.fetch_add(1, Ordering::SeqCst);
    }
}

unsafe extern "system" fn add_device(driver: *mut DRIVER_OBJECT, pdo: *mut DEVICE_OBJECT) -> NTSTATUS {
    // SAFETY: AddDevice's arguments; every object below is ours or the PnP manager's.
    unsafe {
        let state = &*(IoGetDriverObjectExtension(driver, client_id()) as *const DriverState);
        let mut fdo = std::ptr::null_mut();
        let size = size_of::<DeviceState>() as u32;
        let status = IoCreateDevice(
            driver,
            size,
            std::ptr::null_mut(),
            FILE_DEVICE_NETWORK,
            FILE_DEVICE_SECURE_OPEN,
            FALSE,
            &mut fdo,
        );
        if !NT_SUCCESS(status) {
            return status;
        }
        let lower = IoAttachDeviceToDeviceStack(fdo, pdo);
        if lower.is_null() {
            IoDeleteDevice(fdo);
            return STATUS_NO_SUCH_DEVICE;
        }
        let mut link = UNICODE_STRING { Length: 0, MaximumLength: 0, Buffer: std::ptr::null_mut() };
        let status = IoRegisterDeviceInterface(pdo, &GUID_TEST, std::ptr::null_mut(), &mut link);
        if !NT_SUCCESS(status) {
            IoDetachDevice(lower);
            IoDeleteDevice(fdo);
            return status;
        }
        let ext = DeviceState { lower, link, probe: state.probe, leave_enabled: state.leave_enabled };
        (*fdo).DeviceExtension.cast::<DeviceState>().write(ext);
        (*fdo).Flags |= DO_POWER_PAGABLE;
        if !state.leave_initializing {
            (*fdo).Flags &= !DO_DEVICE_INITIALIZING;
        }
    }
    STATUS_SUCCESS
}

unsafe fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    // SAFETY: an IRP sent to us.
    unsafe {
        (*irp).IoStatus.set(status, information);
        IoCompleteRequest(irp, IO_NO_INCREMENT);
    }
    status
}

unsafe extern "system" fn dispatch(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: an IRP sent to our device, whose extension we filled in AddDevice.
    unsafe {
        let ext = (*device).DeviceExtension as *mut DeviceState;
        let probe = &*(*ext).probe;
        let sp = IoGetCurrentIrpStackLocation(irp);
        match (*sp).MajorFunction {
            IRP_MJ_CREATE => {
                probe.creates.fetch_add(1, Ordering::SeqCst);
                probe.last_create_mode.store((*irp).RequestorMode, Ordering::SeqCst);
                complete(irp, STATUS_SUCCESS, 0)
            }
            IRP_MJ_CLEANUP => {
                probe.cleanups.fetch_add(1, Ordering::SeqCst);
                complete(irp, STATUS_SUCCESS, 0)
            }
            IRP_MJ_CLOSE => {
                probe.closes.fetch_add(1, Ordering::SeqCst);
                complete(irp, STATUS_SUCCESS, 0)
            }
            IRP_MJ_INTERNAL_DEVICE_CONTROL => {
                ioctl(device, irp, (*sp).Parameters.DeviceIoControl.IoControlCode)
            }
            IRP_MJ_PNP => pnp(device, ext, irp, (*sp).MinorFunction),
            _ => complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0),
        }
    }
}

unsafe fn ioctl(device: *mut DEVICE_OBJECT, irp: *mut IRP, code: u32) -> NTSTATUS {
    // SAFETY: an IRP sent to our device; the work item keeps the device referenced.
    unsafe {
        match code {
            IOCTL_ECHO => complete(irp, STATUS_SUCCESS, 42),
            IOCTL_PEND | IOCTL_PEND_UNMARKED => {
                let item = IoAllocateWorkItem(device);
                if item.is_null() {
                    return complete(irp, STATUS_INSUFFICIENT_RESOURCES, 0);
                }
                (*irp).Tail.Overlay.DriverContext[0] = item.cast();
                if code == IOCTL_PEND {
                    IoMarkIrpPending(irp);
                }
                IoQueueWorkItem(item, Some(finish_pended), DelayedWorkQueue, irp.cast());
                STATUS_PENDING
            }
            _ => complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0),
        }
    }
}

unsafe extern "system" fn finish_pended(_device: *mut DEVICE_OBJECT, context: PVOID) {
    std::thread::sleep(Duration::from_millis(20));
    let irp = context as *mut IRP;
    // SAFETY: the IRP we pended, and its work item, which we free from its own routine.
    unsafe {
        let item = (*irp).Tail.Overlay.DriverContext[0];
        complete(irp, STATUS_SUCCESS, 7);
        IoFreeWorkItem(item.cast());
    }
}

unsafe fn pnp(device: *mut DEVICE_OBJECT, ext: *mut DeviceState, irp: *mut IRP, minor: u8) -> NTSTATUS {
    // SAFETY: a PnP IRP for our device; `ext` is its extension until IoDeleteDevice.
    unsafe {
        let probe = &*(*ext).probe;
        probe.pnp.lock().unwrap().push(minor);
        match minor {
            IRP_MN_START_DEVICE => {
                let status = forward_and_wait((*ext).lower, irp);
                if NT_SUCCESS(status) {
                    IoSetDeviceInterfaceState(&mut (*ext).link, TRUE);
                }
                complete(irp, status, 0)
            }
            IRP_MN_QUERY_REMOVE_DEVICE if probe.refuse_query_remove.load(Ordering::SeqCst) => {
                complete(irp, STATUS_DEVICE_BUSY, 0)
            }
            IRP_MN_SURPRISE_REMOVAL => {
                IoSetDeviceInterfaceState(&mut (*ext).link, FALSE);
                pass_down((*ext).lower, irp, STATUS_SUCCESS)
            }
            IRP_MN_REMOVE_DEVICE => {
                let lower = (*ext).lower;
                if !(*ext).leave_enabled {
                    IoSetDeviceInterfaceState(&mut (*ext).link, FALSE);
                }
                RtlFreeUnicodeString(&mut (*ext).link);
                let status = pass_down(lower, irp, STATUS_SUCCESS);
                IoDetachDevice(lower);
                IoDeleteDevice(device);
                status
            }
            IRP_MN_QUERY_REMOVE_DEVICE | IRP_MN_CANCEL_REMOVE_DEVICE => {
                pass_down((*ext).lower, irp, STATUS_SUCCESS)
            }
            _ => pass_down((*ext).lower, irp, (*irp).IoStatus.status()),
        }
    }
}

unsafe fn pass_down(lower: *mut DEVICE_OBJECT, irp: *mut IRP, status: NTSTATUS) -> NTSTATUS {
    // SAFETY: an IRP we own, handed to the device below us.
    unsafe {
        (*irp).IoStatus.set(status, 0);
        IoSkipCurrentIrpStackLocation(irp);
        IoCallDriver(lower, irp)
    }
}

/// Sends the IRP down and takes it back when the lower driver completes it.
unsafe fn forward_and_wait(lower: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: an IRP we own; the event outlives the wait, which the completion ends.
    unsafe {
        let mut event: KEVENT = std::mem::zeroed();
        KeInitializeEvent(&mut event, NotificationEvent, FALSE);
        IoCopyCurrentIrpStackLocationToNext(irp);
        IoSetCompletionRoutine(irp, Some(signal), (&mut event as *mut KEVENT).cast(), true, true, true);
        if IoCallDriver(lower, irp) == STATUS_PENDING {
            KeWaitForSingleObject(
                (&mut event as *mut KEVENT).cast(),
                Executive,
                KernelMode,
                FALSE,
                std::ptr::null(),
            );
        }
        (*irp).IoStatus.status()
    }
}

unsafe extern "system" fn signal(_device: *mut DEVICE_OBJECT, _irp: *mut IRP, event: PVOID) -> NTSTATUS {
    // SAFETY: the event forward_and_wait waits on.
    unsafe { KeSetEvent(event.cast(), 0, FALSE) };
    STATUS_MORE_PROCESSING_REQUIRED
}

// ---- The consumer ----------------------------------------------------------------------

unsafe extern "system" fn consumer_entry(
    _driver: *mut DRIVER_OBJECT,
    _path: *mut UNICODE_STRING,
) -> NTSTATUS {
    STATUS_SUCCESS
}

/// Interface changes a registration saw: (arrival?, link).
type Seen = Mutex<Vec<(bool, String)>>;

unsafe extern "system" fn on_change(notification: PVOID, context: PVOID) -> NTSTATUS {
    // SAFETY: the PnP manager's notification, valid during the call; our Seen.
    unsafe {
        let n = &*(notification as *const DEVICE_INTERFACE_CHANGE_NOTIFICATION);
        assert_eq!(n.Version, 1);
        assert_eq!(n.Size as usize, size_of::<DEVICE_INTERFACE_CHANGE_NOTIFICATION>());
        assert_eq!(n.InterfaceClassGuid, GUID_TEST);
        let seen = &*(context as *const Seen);
        seen.lock().unwrap().push((n.Event == GUID_DEVICE_INTERFACE_ARRIVAL, text(&*n.SymbolicLinkName)));
    }
    STATUS_SUCCESS
}

fn register(consumer: &Driver, seen: &Arc<Seen>, flags: u32) -> PVOID {
    let mut entry = std::ptr::null_mut();
    let mut class = GUID_TEST;
    // SAFETY: `seen` outlives the registration (the tests unregister before dropping it).
    let status = unsafe {
        IoRegisterPlugPlayNotification(
            EventCategoryDeviceInterfaceChange,
            flags,
            (&mut class as *mut GUID).cast(),
            consumer.object(),
            Some(on_change),
            Arc::as_ptr(seen) as PVOID,
            &mut entry,
        )
    };
    assert_eq!(status, STATUS_SUCCESS);
    entry
}

fn wait_for(seen: &Seen, n: usize) -> Vec<(bool, String)> {
    let deadline = Instant::now() + WAIT;
    while seen.lock().unwrap().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    seen.lock().unwrap().clone()
}

fn open(link: &str) -> Result<(*mut FILE_OBJECT, *mut DEVICE_OBJECT), NTSTATUS> {
    let mut name: Vec<u16> = link.encode_utf16().collect();
    let (mut file, mut device) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: our name and out pointers.
    let status =
        unsafe { IoGetDeviceObjectPointer(&mut counted(&mut name), FILE_READ_DATA, &mut file, &mut device) };
    if NT_SUCCESS(status) { Ok((file, device)) } else { Err(status) }
}

unsafe extern "system" fn ioctl_done(_d: *mut DEVICE_OBJECT, irp: *mut IRP, context: PVOID) -> NTSTATUS {
    // SAFETY: the sender send_ioctl boxed; the completed IRP.
    unsafe {
        let tx = Box::from_raw(context as *mut Sender<(NTSTATUS, usize)>);
        let _ = tx.send(((*irp).IoStatus.status(), (*irp).IoStatus.Information));
    }
    STATUS_MORE_PROCESSING_REQUIRED
}

/// Sends an internal IOCTL in an IRP of ours and waits for its completion.
fn send_ioctl(device: *mut DEVICE_OBJECT, code: u32) -> (NTSTATUS, usize) {
    let (tx, rx) = mpsc::channel();
    // SAFETY: a device the test holds a file object on; our IRP, freed once completed.
    unsafe {
        let irp = IoAllocateIrp((*device).StackSize, FALSE);
        assert!(!irp.is_null());
        let sp = IoGetNextIrpStackLocation(irp);
        (*sp).MajorFunction = IRP_MJ_INTERNAL_DEVICE_CONTROL;
        (*sp).Parameters.DeviceIoControl.IoControlCode = code;
        let context = Box::into_raw(Box::new(tx)) as PVOID;
        IoSetCompletionRoutine(irp, Some(ioctl_done), context, true, true, true);
        IoCallDriver(device, irp);
        let done = rx.recv_timeout(WAIT).expect("the IOCTL completes");
        IoFreeIrp(irp);
        done
    }
}

/// A loaded test driver and its started device, with the consumer driver.
struct Setup {
    driver: Driver,
    consumer: Driver,
    probe: Arc<Probe>,
}

fn load(kernel: &Kernel, name: &str, parameters: &[(&str, u32)]) -> Setup {
    let probe = probe(name);
    let driver = kernel.load_driver(name, driver_entry, parameters).expect("DriverEntry");
    let consumer = kernel.load_driver(&format!("{name}Consumer"), consumer_entry, &[]).expect("consumer");
    Setup { driver, consumer, probe }
}

fn unload_both(kernel: &Kernel, s: Setup) {
    kernel.unload_driver(s.driver, WAIT).expect("unload");
    kernel.unload_driver(s.consumer, WAIT).expect("unload consumer");
    assert_eq!(s.probe.unloads.load(Ordering::SeqCst), 1);
}

// ---- Tests -----------------------------------------------------------------------------

#[test]
fn device_life_cycle_from_load_to_unload_is_clean() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "LifeCycle", &[]);
    let _in = kernel.enter();
    let before = Arc::new(Seen::default());
    let early = register(&s.consumer, &before, 0);
    let device = kernel.add_root_device(&s.driver, "Root\\LifeCycle", "").expect("device starts");
    let links = kernel.interfaces(&GUID_TEST);
    assert_eq!(links.len(), 1);
    assert!(links[0].starts_with("\\??\\ROOT#LIFECYCLE#0000#{59df11a2-1c2b-4e3f-9a10-"), "{links:?}");
    assert_eq!(wait_for(&before, 1), vec![(true, links[0].clone())]);
    let after = Arc::new(Seen::default());
    let late = register(&s.consumer, &after, PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES);
    assert_eq!(wait_for(&after, 1), vec![(true, links[0].clone())]);

    let (file, top) = open(&links[0]).expect("open");
    assert_eq!(top, device.top());
    assert_ne!(top, device.pdo());
    assert_eq!(s.probe.last_create_mode.load(Ordering::SeqCst), KernelMode);
    assert_eq!(send_ioctl(top, IOCTL_ECHO), (STATUS_SUCCESS, 42));
    assert_eq!(send_ioctl(top, IOCTL_PEND), (STATUS_SUCCESS, 7));
    assert_eq!(kernel.stats().file_objects, 1);
    // SAFETY: the reference IoGetDeviceObjectPointer gave us.
    unsafe { ObDereferenceObject(file.cast()) };
    assert_eq!((s.probe.cleanups.load(Ordering::SeqCst), s.probe.closes.load(Ordering::SeqCst)), (1, 1));

    s.probe.refuse_query_remove.store(true, Ordering::SeqCst);
    assert_eq!(kernel.remove_device(&device), Err(STATUS_DEVICE_BUSY));
    assert_eq!(kernel.interfaces(&GUID_TEST), links, "a refused removal leaves the device started");
    let (file, _) = open(&links[0]).expect("still opens");
    // SAFETY: as above.
    unsafe { ObDereferenceObject(file.cast()) };
    s.probe.refuse_query_remove.store(false, Ordering::SeqCst);
    kernel.remove_device(&device).expect("removal");
    assert_eq!(
        *s.probe.pnp.lock().unwrap(),
        [
            IRP_MN_START_DEVICE,
            IRP_MN_QUERY_REMOVE_DEVICE,
            IRP_MN_CANCEL_REMOVE_DEVICE,
            IRP_MN_QUERY_REMOVE_DEVICE,
            IRP_MN_REMOVE_DEVICE
        ]
    );
    assert_eq!(wait_for(&before, 2)[1], (false, links[0].clone()));
    assert_eq!(wait_for(&after, 2)[1], (false, links[0].clone()));
    assert_eq!(open(&links[0]).err(), Some(STATUS_OBJECT_NAME_NOT_FOUND));
    // SAFETY: our registrations, unregistered once each.
    unsafe {
        assert_eq!(IoUnregisterPlugPlayNotificationEx(early), STATUS_SUCCESS);
        assert_eq!(IoUnregisterPlugPlayNotificationEx(late), STATUS_SUCCESS);
    }
    unload_both(&kernel, s);
    let stats = kernel.stats();
    assert_eq!(
        (stats.devices, stats.file_objects, stats.notifications, stats.interfaces_enabled),
        (0, 0, 0, 0)
    );
    assert_eq!(stats.creates_sent, 2);
    drop(_in);
    kernel.finish();
}

#[test]
fn unload_waits_until_the_devices_are_gone() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "UnloadWaits", &[]);
    let device = kernel.add_root_device(&s.driver, "Root\\UnloadWaits", "").expect("device starts");
    assert_eq!(kernel.unload_driver(&s.driver, Duration::from_millis(50)), Err(STATUS_DEVICE_BUSY));
    assert_eq!(s.probe.unloads.load(Ordering::SeqCst), 0);
    kernel.remove_device(&device).expect("removal");
    unload_both(&kernel, s);
    kernel.finish();
}

#[test]
fn surprise_removal_sends_remove_only_after_the_last_close() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "Surprise", &[]);
    let device = kernel.add_root_device(&s.driver, "Root\\Surprise", "").expect("device starts");
    let _in = kernel.enter();
    let link = kernel.interfaces(&GUID_TEST).remove(0);
    let (file, _) = open(&link).expect("open");
    assert_eq!(kernel.remove_device(&device), Err(STATUS_DEVICE_BUSY), "an open file vetoes a removal");
    std::thread::scope(|scope| {
        let pulled = scope.spawn(|| kernel.surprise_remove_device(&device));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*s.probe.pnp.lock().unwrap().last().unwrap(), IRP_MN_SURPRISE_REMOVAL);
        assert_eq!(open(&link).err(), Some(STATUS_OBJECT_NAME_NOT_FOUND));
        // SAFETY: our reference.
        unsafe { ObDereferenceObject(file.cast()) };
        pulled.join().unwrap();
    });
    assert_eq!(*s.probe.pnp.lock().unwrap().last().unwrap(), IRP_MN_REMOVE_DEVICE);
    unload_both(&kernel, s);
    drop(_in);
    kernel.finish();
}

#[test]
fn user_mode_open_is_checked_against_the_descriptor_before_the_driver() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "UserOpen", &[]);
    let device =
        kernel.add_root_device(&s.driver, "Root\\UserOpen", SDDL_SYSTEM_AND_ADMINS).expect("device starts");
    let link = kernel.interfaces(&GUID_TEST).remove(0);
    assert_eq!(kernel.open_from_user_mode(&link, Caller::User), STATUS_ACCESS_DENIED);
    assert_eq!(kernel.stats().creates_sent, 0);
    assert_eq!(s.probe.creates.load(Ordering::SeqCst), 0);
    assert_eq!(kernel.open_from_user_mode(&link, Caller::System), STATUS_SUCCESS);
    assert_eq!(kernel.stats().creates_sent, 1);
    assert_eq!(s.probe.last_create_mode.load(Ordering::SeqCst), UserMode);
    assert_eq!(s.probe.closes.load(Ordering::SeqCst), 1);
    kernel.remove_device(&device).expect("removal");
    unload_both(&kernel, s);
    kernel.finish();
}

#[test]
fn registry_values_come_back_as_windows_sizes_them() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "Registry", &[("Answer", 42)]);
    let _in = kernel.enter();
    let mut key: HANDLE = std::ptr::null_mut();
    let mut name: Vec<u16> = "answer".encode_utf16().collect();
    let mut missing: Vec<u16> = "Question".encode_utf16().collect();
    let mut info = [0u32; 4];
    let mut needed = 0;
    // SAFETY: our buffers; the key is closed before the driver unloads.
    unsafe {
        assert_eq!(
            IoOpenDriverRegistryKey(s.driver.object(), DriverRegKeyParameters, KEY_READ, 0, &mut key),
            STATUS_SUCCESS
        );
        let mut query = |name: &mut Vec<u16>, len: u32| {
            ZwQueryValueKey(
                key,
                &mut counted(name),
                KeyValuePartialInformation,
                info.as_mut_ptr().cast(),
                len,
                &mut needed,
            )
        };
        assert_eq!(query(&mut missing, 16), STATUS_OBJECT_NAME_NOT_FOUND);
        assert_eq!(query(&mut name, 8), STATUS_BUFFER_TOO_SMALL);
        assert_eq!(query(&mut name, 12).0 as u32, 0x8000_0005, "STATUS_BUFFER_OVERFLOW");
        assert_eq!(query(&mut name, 16), STATUS_SUCCESS);
        assert_eq!(needed, 16);
        let header = &*(info.as_ptr() as *const KEY_VALUE_PARTIAL_INFORMATION);
        assert_eq!((header.Type, header.DataLength, info[3]), (REG_DWORD, 4, 42));
        assert_eq!(ZwClose(key), STATUS_SUCCESS);
    }
    drop(_in);
    unload_both(&kernel, s);
    kernel.finish();
}

#[test]
fn add_device_leaving_its_device_initializing_is_reported() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "Initializing", &[("LeaveInitializing", 1)]);
    let device = kernel.add_root_device(&s.driver, "Root\\Initializing", "").expect("device starts");
    let reports = kernel.take_reports();
    assert!(reports.iter().any(|r| r.rule == Rule::DeviceStillInitializing), "{reports:?}");
    let link = kernel.interfaces(&GUID_TEST).remove(0);
    let _in = kernel.enter();
    assert_eq!(open(&link).err(), Some(STATUS_NO_SUCH_DEVICE), "no open reaches an initializing device");
    drop(_in);
    kernel.remove_device(&device).expect("removal");
    unload_both(&kernel, s);
    kernel.finish();
}

#[test]
fn interface_left_enabled_at_remove_is_reported() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "LeftEnabled", &[("LeaveInterfaceEnabled", 1)]);
    let device = kernel.add_root_device(&s.driver, "Root\\LeftEnabled", "").expect("device starts");
    kernel.remove_device(&device).expect("removal");
    let reports = kernel.take_reports();
    assert!(reports.iter().any(|r| r.rule == Rule::InterfaceEnabledAfterRemove), "{reports:?}");
    assert_eq!(kernel.stats().interfaces_enabled, 0);
    unload_both(&kernel, s);
    kernel.finish();
}

#[test]
fn registration_left_at_unload_is_reported() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "LeftRegistered", &[]);
    let seen = Arc::new(Seen::default());
    {
        let _in = kernel.enter();
        register(&s.consumer, &seen, 0); // the bug: never unregistered
    }
    unload_both(&kernel, s);
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::NotificationMisuse && r.detail.contains("unload")),
        "{reports:?}"
    );
    assert_eq!(kernel.stats().notifications, 0);
    kernel.finish();
}

#[test]
fn pending_without_mark_is_reported() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "Unmarked", &[]);
    let device = kernel.add_root_device(&s.driver, "Root\\Unmarked", "").expect("device starts");
    let _in = kernel.enter();
    let link = kernel.interfaces(&GUID_TEST).remove(0);
    let (file, top) = open(&link).expect("open");
    assert_eq!(send_ioctl(top, IOCTL_PEND_UNMARKED), (STATUS_SUCCESS, 7));
    // SAFETY: our reference.
    unsafe { ObDereferenceObject(file.cast()) };
    let reports = kernel.take_reports();
    assert!(reports.iter().any(|r| r.rule == Rule::PendingNotMarked), "{reports:?}");
    drop(_in);
    kernel.remove_device(&device).expect("removal");
    unload_both(&kernel, s);
    kernel.finish();
}

#[test]
fn a_second_driver_object_extension_with_the_same_id_collides() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "Collision", &[]);
    let _in = kernel.enter();
    let mut again: PVOID = std::ptr::null_mut();
    // SAFETY: a loaded driver object; our out pointer.
    let status = unsafe { IoAllocateDriverObjectExtension(s.driver.object(), client_id(), 8, &mut again) };
    assert_eq!(status.0 as u32, 0xC000_0035, "STATUS_OBJECT_NAME_COLLISION");
    assert!(again.is_null());
    drop(_in);
    unload_both(&kernel, s);
    kernel.finish();
}

/// A registration whose callback unregisters it: the planted bug.
#[derive(Default)]
struct SelfUnregister {
    entry: AtomicPtr<std::ffi::c_void>,
    status: AtomicI32,
    calls: AtomicU32,
}

unsafe extern "system" fn unregister_self(_notification: PVOID, context: PVOID) -> NTSTATUS {
    // SAFETY: our SelfUnregister, which outlives the registration.
    let s = unsafe { &*(context as *const SelfUnregister) };
    let deadline = Instant::now() + WAIT;
    while s.entry.load(Ordering::SeqCst).is_null() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    // SAFETY: the bug under test: our own entry, from inside its callback.
    let status = unsafe { IoUnregisterPlugPlayNotificationEx(s.entry.load(Ordering::SeqCst)) };
    s.status.store(status.0, Ordering::SeqCst);
    s.calls.fetch_add(1, Ordering::SeqCst);
    STATUS_SUCCESS
}

#[test]
fn unregistering_from_the_own_callback_is_reported_and_does_not_hang() {
    let kernel = Kernel::boot();
    let s = load(&kernel, "SelfUnregister", &[]);
    let device = kernel.add_root_device(&s.driver, "Root\\SelfUnregister", "").expect("device starts");
    let state = Arc::new(SelfUnregister::default());
    {
        let _in = kernel.enter();
        let mut entry = std::ptr::null_mut();
        let mut class = GUID_TEST;
        // SAFETY: `state` outlives the registration, which its callback ends.
        let status = unsafe {
            IoRegisterPlugPlayNotification(
                EventCategoryDeviceInterfaceChange,
                PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES,
                (&mut class as *mut GUID).cast(),
                s.consumer.object(),
                Some(unregister_self),
                Arc::as_ptr(&state) as PVOID,
                &mut entry,
            )
        };
        assert_eq!(status, STATUS_SUCCESS);
        state.entry.store(entry, Ordering::SeqCst);
    }
    let deadline = Instant::now() + WAIT;
    while state.calls.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    assert_eq!(kernel.stats().notifications, 0);
    let reports = kernel.take_reports();
    assert!(
        reports.iter().any(|r| r.rule == Rule::NotificationMisuse && r.detail.contains("own callback")),
        "{reports:?}"
    );
    kernel.remove_device(&device).expect("removal");
    unload_both(&kernel, s);
    kernel.finish();
}
