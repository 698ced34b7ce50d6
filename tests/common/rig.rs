//! wsktls as other drivers meet it, loaded into a kernel: DriverEntry, AddDevice and
//! START through ntsim's I/O manager, the sample consumer (which uses only the published
//! interface) bound to its device interface, and an echo peer to connect to.

use std::sync::Arc;
use std::time::Duration;

use echo_peer::{Config as PeerConfig, Peer};
use ntsim::{Config, Device, Driver, EnterGuard, Kernel};
use wsktls::nt::*;
use wsktls_sample_consumer::{Binding, ConnectParams, Consumer, Session};

use super::peers::test_pki;

pub const WAIT: Duration = Duration::from_secs(20);

/// The security descriptor the INF gives the device.
fn inf_sddl() -> String {
    let inx = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/inf/wsktls.inx"))
        .expect("inf/wsktls.inx");
    let line =
        inx.lines().find(|l| l.starts_with("HKR,,Security,,")).expect("the INF sets the device's security");
    line.split('"').nth(1).expect("a quoted SDDL string").to_owned()
}

/// wsktls loaded with the service `parameters`, its root device added and started.
pub fn load_wsktls(kernel: &Kernel, parameters: &[(&str, u32)]) -> (Driver, Device) {
    let driver =
        kernel.load_driver("wsktls", wsktls::driver::driver_entry, parameters).expect("wsktls DriverEntry");
    let device =
        kernel.add_root_device(&driver, "ROOT\\WSKTLS", &inf_sddl()).expect("wsktls AddDevice and start");
    (driver, device)
}

pub fn load_consumer(kernel: &Kernel) -> Driver {
    kernel
        .load_driver("wsktls-sample", wsktls_sample_consumer::driver_entry, &[])
        .expect("sample DriverEntry")
}

pub fn consumer(driver: &Driver) -> &'static Consumer {
    // SAFETY: the sample's own driver object, loaded through its driver_entry.
    unsafe { Consumer::of(driver.object()) }.expect("the sample's state")
}

pub fn echo_peer() -> Peer {
    let pki = test_pki();
    Peer::start("127.0.0.1:0".parse().unwrap(), PeerConfig::new(&pki.server.chain, &pki.server.key))
        .expect("echo-peer")
}

pub fn ca() -> Vec<u8> {
    std::fs::read(&test_pki().ca.der).expect("CA DER")
}

pub fn open_session(binding: &Arc<Binding>, peer: &Peer) -> Session {
    let ca = ca();
    let anchors = [ca.as_slice()];
    Session::connect(Arc::clone(binding), &ConnectParams::new(peer.addr(), "localhost", &anchors))
        .expect("connect")
}

/// A kernel with wsktls loaded and started and the sample bound to it.
pub struct Rig {
    pub kernel: Kernel,
    pub wsktls: Driver,
    pub device: Device,
    pub sample: Driver,
    pub binding: Arc<Binding>,
    pub peer: Peer,
    pub _in: EnterGuard,
}

impl Rig {
    pub fn new(parameters: &[(&str, u32)]) -> Rig {
        Rig::boot_with(Config::default(), parameters)
    }

    /// As [`Rig::new`], on a kernel booted with `config` (its seed, its faults).
    pub fn boot_with(config: Config, parameters: &[(&str, u32)]) -> Rig {
        let kernel = Kernel::boot_with(config);
        let _in = kernel.enter();
        let (wsktls, device) = load_wsktls(&kernel, parameters);
        let sample = load_consumer(&kernel);
        let binding = consumer(&sample).wait_for_provider(20_000).expect("bound");
        Rig { kernel, wsktls, device, sample, binding, peer: echo_peer(), _in }
    }

    pub fn session(&self) -> Session {
        open_session(&self.binding, &self.peer)
    }

    /// The sample lets go, the device is removed and both drivers unload; the kernel is
    /// left to say what is left (`Kernel::finish` or `Kernel::shutdown`).
    pub fn unload(self) -> Kernel {
        let Rig { kernel, wsktls, device, sample, binding, peer: _, _in } = self;
        drop(binding);
        consumer(&sample).release();
        kernel.remove_device(&device).expect("removal once no handle is open");
        kernel.unload_driver(wsktls, WAIT).expect("wsktls unloads");
        kernel.unload_driver(sample, WAIT).expect("the sample unloads");
        drop(_in);
        kernel
    }

    /// Unloads, and fails on anything left behind or reported.
    pub fn finish(self) {
        self.unload().finish();
    }
}

/// Connect parameters that are right, as a base for the wrong ones.
pub struct Good {
    pub address: SOCKADDR_IN,
    pub name: &'static [u8],
    pub ca: Vec<u8>,
    pub anchors: Vec<WSKTLS_BLOB>,
}

impl Good {
    pub fn new(peer: &Peer) -> Box<Good> {
        Good::at(peer.addr())
    }

    /// Good parameters for a server at `addr` with the test PKI's identity.
    pub fn at(addr: std::net::SocketAddr) -> Box<Good> {
        let std::net::SocketAddr::V4(a) = addr else { panic!("IPv4 peer") };
        let address = SOCKADDR_IN {
            sin_family: AF_INET,
            sin_port: a.port().to_be(),
            sin_addr: a.ip().octets(),
            sin_zero: [0; 8],
        };
        let mut good = Box::new(Good { address, name: b"localhost", ca: ca(), anchors: Vec::new() });
        good.anchors =
            vec![WSKTLS_BLOB { Data: good.ca.as_ptr(), Length: good.ca.len() as u32, Reserved: 0 }];
        good
    }

    pub fn parameters(&self) -> WSKTLS_CONNECT_PARAMETERS {
        let none = WSKTLS_BLOB { Data: std::ptr::null(), Length: 0, Reserved: 0 };
        WSKTLS_CONNECT_PARAMETERS {
            Size: size_of::<WSKTLS_CONNECT_PARAMETERS>() as u32,
            Version: WSKTLS_VERSION_1_0,
            Reserved: 0,
            RemoteAddress: (&self.address as *const SOCKADDR_IN).cast(),
            ServerName: WSKTLS_BLOB { Data: self.name.as_ptr(), Length: self.name.len() as u32, Reserved: 0 },
            TrustAnchors: self.anchors.as_ptr(),
            PinSha256: std::ptr::null(),
            ClientChain: std::ptr::null(),
            ClientKey: none,
            Alpn: std::ptr::null(),
            TrustAnchorCount: 1,
            ClientChainCount: 0,
            AlpnCount: 0,
            Suites: 0,
            RecordSize: 0,
            SendBudget: 0,
            ReceiveBuffer: 0,
            ConnectTimeoutMs: 0,
            HandshakeTimeoutMs: 0,
            Reserved2: 0,
        }
    }
}
