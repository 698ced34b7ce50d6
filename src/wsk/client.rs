//! Registration with WSK and the captured provider NPI.

use core::net::SocketAddr;

use super::TAG_CLIENT;
use super::buffers::{BufferLease, SendBuffers};
use super::socket::Socket;
use crate::nt::{
    NTSTATUS, PoolBox, STATUS_DEVICE_NOT_READY, WSK_CLIENT_DISPATCH, WSK_CLIENT_NPI, WSK_PROVIDER_NPI,
    WSK_REGISTRATION, WSK_VERSION_1_0, WskCaptureProviderNPI, WskDeregister, WskRegister,
    WskReleaseProviderNPI,
};

/// wsktls enables no client-level events.
static CLIENT_DISPATCH: WSK_CLIENT_DISPATCH =
    WSK_CLIENT_DISPATCH { Version: WSK_VERSION_1_0, Reserved: 0, WskClientEvent: None };

/// The registration block WSK writes into must not move: it lives in pool, with the send
/// buffers every socket's sender borrows.
struct Registration {
    block: WSK_REGISTRATION,
    provider: Option<WSK_PROVIDER_NPI>,
    buffers: SendBuffers,
}

/// A registered WSK client. Dropping it releases the provider NPI and deregisters, which
/// waits for every socket it opened to be closed, then waits for every send-buffer lease
/// to end and frees the cached buffers (PASSIVE_LEVEL).
pub struct WskClient {
    registration: PoolBox<Registration>,
}

// SAFETY: the provider NPI is a pair of pointers WSK allows any thread to use.
unsafe impl Send for WskClient {}
// SAFETY: after capture the NPI is only read.
unsafe impl Sync for WskClient {}

impl WskClient {
    /// WskRegister. PASSIVE_LEVEL; allowed in DriverEntry (capturing is not).
    pub fn register() -> Result<WskClient, NTSTATUS> {
        // SAFETY: an all-zero registration block is what WskRegister expects to fill.
        let block: WSK_REGISTRATION = unsafe { core::mem::zeroed() };
        let buffers = SendBuffers::new()?;
        let mut registration = PoolBox::new(TAG_CLIENT, Registration { block, provider: None, buffers })?;
        // SAFETY: the cache sits at its final (pool) address and has no lease yet.
        unsafe { registration.buffers.initialize() };
        let mut npi = WSK_CLIENT_NPI { ClientContext: core::ptr::null_mut(), Dispatch: &CLIENT_DISPATCH };
        // SAFETY: the NPI and the pool-resident block are valid for the call; the block
        // stays put until WskDeregister in drop.
        let status = unsafe { WskRegister(&mut npi, &mut registration.block) };
        if !status.is_success() {
            // Not registered: the block is simply freed, no WskDeregister is owed.
            return Err(status);
        }
        Ok(WskClient { registration })
    }

    /// WskCaptureProviderNPI, waiting up to `wait_ms` for the provider. PASSIVE_LEVEL and
    /// not from DriverEntry, where the provider may not have loaded yet.
    pub fn capture_provider(&mut self, wait_ms: u32) -> Result<(), NTSTATUS> {
        if self.registration.provider.is_some() {
            return Ok(());
        }
        // SAFETY: a zeroed NPI is valid output storage.
        let mut npi: WSK_PROVIDER_NPI = unsafe { core::mem::zeroed() };
        // SAFETY: our registered block and an output NPI.
        let status = unsafe { WskCaptureProviderNPI(&mut self.registration.block, wait_ms, &mut npi) };
        if !status.is_success() {
            return Err(status);
        }
        self.registration.provider = Some(npi);
        Ok(())
    }

    /// Connects a TCP socket to `remote` (IPv4 or IPv6), giving up with STATUS_IO_TIMEOUT
    /// after `timeout_ms`. PASSIVE_LEVEL.
    pub fn connect(&self, remote: SocketAddr, timeout_ms: u32) -> Result<Socket, NTSTATUS> {
        let npi = self.registration.provider.as_ref().ok_or(STATUS_DEVICE_NOT_READY)?;
        Socket::connect(npi, remote, timeout_ms)
    }

    /// A lease on the client's send-buffer cache, for one sender's life.
    pub fn lease_buffers(&self) -> Result<BufferLease, NTSTATUS> {
        self.registration.buffers.lease()
    }

    /// Send buffers cached now (none is lent out or being freed).
    pub fn cached_send_buffers(&self) -> usize {
        self.registration.buffers.cached()
    }
}

impl Drop for WskClient {
    fn drop(&mut self) {
        // SAFETY: our registered block; one release per successful capture, then the one
        // deregistration, which waits for our sockets to close.
        unsafe {
            if self.registration.provider.take().is_some() {
                WskReleaseProviderNPI(&mut self.registration.block);
            }
            WskDeregister(&mut self.registration.block);
        }
        // A channel gives its buffers back after its socket closed: wait for the last.
        self.registration.buffers.wait_for_leases();
    }
}
