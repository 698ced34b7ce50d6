//! The WSK provider: registration and NPI capture, the provider and connection dispatch
//! tables, and the socket registry. Sockets move real bytes over loopback TCP; their I/O
//! is driven by one provider thread (`reactor`), which completes requests at
//! DISPATCH_LEVEL. A test can turn a connected socket into a null transport (`null`),
//! for benchmarks of the driver alone.

mod entry;
mod null;
mod reactor;
mod socket;

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wsktls_nt::{
    NTSTATUS, PVOID, STATUS_DEVICE_NOT_READY, STATUS_INVALID_PARAMETER, STATUS_NOINTERFACE, STATUS_SUCCESS,
    WSK_CLIENT_NPI, WSK_NO_WAIT, WSK_PROVIDER_CONNECTION_DISPATCH, WSK_PROVIDER_DISPATCH, WSK_PROVIDER_NPI,
    WSK_REGISTRATION, WSK_VERSION_1_0,
};

use crate::irql::{require_dispatch, require_passive};
use crate::kernel::{current, lock};
use crate::verifier::{Rule, report};
pub use null::NullSource;
pub(crate) use reactor::Reactor;
use socket::Socket;
pub use socket::{set_abortive, set_receive_buffer};

/// `ReservedRegistrationState` of a block WskRegister initialised.
const REGISTERED: u64 = 0x5753_4B52_4547_4953; // "WSKREGIS"

struct Registration {
    captures: u32,
    sockets: u32,
    deregistering: bool,
}

pub(crate) struct Provider {
    registry: mio::Registry,
    waker: mio::Waker,
    dirty: Mutex<Vec<u64>>,
    timers: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    sockets: Mutex<HashMap<u64, Arc<Socket>>>,
    registrations: Mutex<HashMap<u64, Registration>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

/// Tables with raw pointers, shared read-only by every client.
struct Table<T>(T);
// SAFETY: the tables are immutable and hold only function pointers and NULLs.
unsafe impl<T> Sync for Table<T> {}

static PROVIDER_DISPATCH: Table<WSK_PROVIDER_DISPATCH> = Table(WSK_PROVIDER_DISPATCH {
    Version: WSK_VERSION_1_0,
    Reserved: 0,
    WskSocket: None,
    WskSocketConnect: Some(entry::WskSocketConnect),
    WskControlClient: std::ptr::null_mut(),
    WskGetAddressInfo: std::ptr::null_mut(),
    WskFreeAddressInfo: std::ptr::null_mut(),
    WskGetNameInfo: std::ptr::null_mut(),
});

static CONNECTION_DISPATCH: Table<WSK_PROVIDER_CONNECTION_DISPATCH> =
    Table(WSK_PROVIDER_CONNECTION_DISPATCH {
        Basic: wsktls_nt::WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: Some(entry::WskControlSocket),
            WskCloseSocket: Some(entry::WskCloseSocket),
        },
        WskBind: std::ptr::null_mut(),
        WskConnect: std::ptr::null_mut(),
        WskGetLocalAddress: std::ptr::null_mut(),
        WskGetRemoteAddress: std::ptr::null_mut(),
        WskSend: Some(entry::WskSend),
        WskReceive: Some(entry::WskReceive),
        WskDisconnect: Some(entry::WskDisconnect),
        WskRelease: std::ptr::null_mut(),
        WskConnectEx: std::ptr::null_mut(),
        WskSendEx: std::ptr::null_mut(),
        WskReceiveEx: std::ptr::null_mut(),
    });

const WAKE: mio::Token = mio::Token(usize::MAX);

impl Provider {
    pub(crate) fn new() -> (Provider, Reactor) {
        let poll = mio::Poll::new().expect("ntsim: epoll");
        let registry = poll.registry().try_clone().expect("ntsim: epoll registry");
        let waker = mio::Waker::new(poll.registry(), WAKE).expect("ntsim: waker");
        let provider = Provider {
            registry,
            waker,
            dirty: Mutex::new(Vec::new()),
            timers: Mutex::new(BinaryHeap::new()),
            sockets: Mutex::new(HashMap::new()),
            registrations: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        };
        (provider, Reactor::new(poll))
    }

    pub(crate) fn sockets_open(&self) -> usize {
        lock(&self.sockets).len()
    }

    fn sockets_to(&self, remote: SocketAddr) -> Vec<Arc<Socket>> {
        lock(&self.sockets).values().filter(|s| s.remote == remote).cloned().collect()
    }

    /// For each connected TCP socket to `remote`: whether Nagle's algorithm is on, as the
    /// stream itself says (TCP_NODELAY read back, not the provider's note of it).
    pub(crate) fn nagle(&self, remote: SocketAddr) -> Vec<bool> {
        let sockets = self.sockets_to(remote);
        let states = sockets.iter().map(|s| lock(&s.state));
        states.filter_map(|st| st.stream.as_ref().and_then(|t| t.nodelay().ok()).map(|off| !off)).collect()
    }

    /// Asks the provider thread to drive `socket` soon.
    fn poke(&self, socket: u64) {
        lock(&self.dirty).push(socket);
        let _ = self.waker.wake();
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    pub(crate) fn force_close_all(&self) {
        let sockets: Vec<Arc<Socket>> = lock(&self.sockets).values().cloned().collect();
        for s in sockets {
            s.request_forced_close();
            self.poke(s.id);
        }
    }

    pub(crate) fn check_unload(&self) {
        let open = lock(&self.sockets).len();
        if open > 0 {
            report(Rule::SocketLeaked, format!("{open} WSK socket(s) never closed"));
        }
        let regs = lock(&self.registrations);
        for r in regs.values() {
            if r.captures > 0 {
                report(
                    Rule::WskRegistration,
                    format!("{} provider NPI capture(s) never released", r.captures),
                );
            }
        }
        if !regs.is_empty() {
            let n = regs.len();
            drop(regs);
            report(Rule::WskRegistration, format!("{n} WSK registration(s) never deregistered"));
        }
    }

    fn socket(&self, id: u64) -> Option<Arc<Socket>> {
        lock(&self.sockets).get(&id).cloned()
    }

    fn socket_at(&self, wsk: *mut wsktls_nt::WSK_SOCKET) -> Option<Arc<Socket>> {
        lock(&self.sockets).values().find(|s| s.wsk_ptr() == wsk).cloned()
    }

    fn add_socket(&self, s: Arc<Socket>) {
        if let Some(r) = lock(&self.registrations).get_mut(&s.registration) {
            r.sockets += 1;
        }
        lock(&self.sockets).insert(s.id, s);
    }

    fn remove_socket(&self, s: &Socket) {
        lock(&self.sockets).remove(&s.id);
        if let Some(r) = lock(&self.registrations).get_mut(&s.registration) {
            r.sockets -= 1;
        }
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn registration_of(&self, client: PVOID) -> Option<u64> {
        let id = client as u64;
        lock(&self.registrations).get(&id).filter(|r| !r.deregistering).map(|_| id)
    }
}

thread_local! {
    static IN_DRIVER_ENTRY: Cell<bool> = const { Cell::new(false) };
}

pub(crate) fn in_driver_entry<R>(f: impl FnOnce() -> R) -> R {
    IN_DRIVER_ENTRY.with(|c| c.set(true));
    let r = f();
    IN_DRIVER_ENTRY.with(|c| c.set(false));
    r
}

fn registration_id(reg: *mut WSK_REGISTRATION) -> Option<u64> {
    // SAFETY: the client passes its registration block, which it keeps allocated.
    unsafe {
        if reg.is_null() || (*reg).ReservedRegistrationState != REGISTERED {
            return None;
        }
        Some((*reg).ReservedRegistrationContext as u64)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn WskRegister(npi: *mut WSK_CLIENT_NPI, reg: *mut WSK_REGISTRATION) -> NTSTATUS {
    let k = current();
    if !require_passive("WskRegister") {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the client passes its NPI and a writable registration block.
    unsafe {
        if npi.is_null() || reg.is_null() || (*npi).Dispatch.is_null() {
            report(Rule::BadParameter, "WskRegister with a NULL NPI, dispatch or registration");
            return STATUS_INVALID_PARAMETER;
        }
        if wsktls_nt::MAKE_WSK_VERSION(1, 0) >> 8 != (*(*npi).Dispatch).Version >> 8 {
            return STATUS_NOINTERFACE;
        }
        let id = k.wsk.new_id();
        lock(&k.wsk.registrations).insert(id, Registration { captures: 0, sockets: 0, deregistering: false });
        (*reg).ReservedRegistrationState = REGISTERED;
        (*reg).ReservedRegistrationContext = id as PVOID;
        (*reg).ReservedRegistrationLock = 0;
    }
    STATUS_SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn WskCaptureProviderNPI(
    reg: *mut WSK_REGISTRATION,
    wait: u32,
    out: *mut WSK_PROVIDER_NPI,
) -> NTSTATUS {
    let k = current();
    let ok = if wait == WSK_NO_WAIT {
        require_dispatch("WskCaptureProviderNPI(WSK_NO_WAIT)")
    } else {
        require_passive("WskCaptureProviderNPI (waiting)")
    };
    if !ok {
        return STATUS_DEVICE_NOT_READY;
    }
    if wait != WSK_NO_WAIT && IN_DRIVER_ENTRY.with(Cell::get) {
        report(
            Rule::WskRegistration,
            "WskCaptureProviderNPI waits inside DriverEntry: the provider may load after this driver, and boot hangs",
        );
    }
    let Some(id) = registration_id(reg) else {
        report(Rule::WskRegistration, "WskCaptureProviderNPI on a block WskRegister did not initialise");
        return STATUS_INVALID_PARAMETER;
    };
    let mut regs = lock(&k.wsk.registrations);
    match regs.get_mut(&id) {
        Some(r) if !r.deregistering => {
            r.captures += 1;
            // SAFETY: the client's output NPI.
            unsafe {
                (*out).Client = id as PVOID;
                (*out).Dispatch = &PROVIDER_DISPATCH.0;
            }
            STATUS_SUCCESS
        }
        _ => STATUS_DEVICE_NOT_READY,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn WskReleaseProviderNPI(reg: *mut WSK_REGISTRATION) {
    let k = current();
    require_dispatch("WskReleaseProviderNPI");
    let Some(id) = registration_id(reg) else {
        report(Rule::WskRegistration, "WskReleaseProviderNPI on an unregistered block");
        return;
    };
    let mut regs = lock(&k.wsk.registrations);
    match regs.get_mut(&id) {
        Some(r) if r.captures > 0 => r.captures -= 1,
        _ => {
            drop(regs);
            report(Rule::WskRegistration, "WskReleaseProviderNPI without a capture to release");
        }
    }
}

/// How long WskDeregister waits before ntsim calls the wait endless (Windows would hang).
const DEREGISTER_PATIENCE: Duration = Duration::from_secs(10);

#[unsafe(no_mangle)]
pub unsafe extern "system" fn WskDeregister(reg: *mut WSK_REGISTRATION) {
    let k = current();
    if !require_passive("WskDeregister") {
        return;
    }
    let Some(id) = registration_id(reg) else {
        report(Rule::WskRegistration, "WskDeregister on an unregistered block");
        return;
    };
    if let Some(r) = lock(&k.wsk.registrations).get_mut(&id) {
        r.deregistering = true;
    }
    let deadline = Instant::now() + DEREGISTER_PATIENCE;
    loop {
        let (captures, sockets) = match lock(&k.wsk.registrations).get(&id) {
            Some(r) => (r.captures, r.sockets),
            None => (0, 0),
        };
        if captures == 0 && sockets == 0 {
            break;
        }
        if Instant::now() >= deadline {
            report(
                Rule::WskRegistration,
                format!(
                    "WskDeregister would wait forever: {captures} NPI capture(s), {sockets} socket(s) outstanding"
                ),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    lock(&k.wsk.registrations).remove(&id);
    // SAFETY: the client's registration block; WskDeregister leaves it uninitialised.
    unsafe { std::ptr::write_bytes(reg, 0, 1) };
}
