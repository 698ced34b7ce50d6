//! The next traffic keys, for KeyUpdate: rustls's key schedule, and the heap reserve its
//! derivations run with (rustls boxes an HKDF expander for each; see [`crate::heap`]).

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use wsktls_crypto::TrafficKey;

use crate::heap::Reserve;
use crate::tls::TlsError;

pub(crate) struct Keys {
    schedule: KernelConnection<ClientConnectionData>,
    /// Declared last so dropped last: the schedule's blocks may have come from it.
    heap: Reserve,
}

impl Keys {
    pub(crate) fn new(schedule: KernelConnection<ClientConnectionData>, heap: Reserve) -> Keys {
        Keys { schedule, heap }
    }

    /// Our next traffic key, after we sent a KeyUpdate.
    pub(crate) fn next_tx(&mut self) -> Result<TrafficKey, TlsError> {
        let Keys { schedule, heap } = self;
        let (_, secrets) = heap.lend(|| schedule.update_tx_secret()).map_err(|_| TlsError::Internal)??;
        TrafficKey::new(&secrets).ok_or(TlsError::Internal)
    }

    /// The peer's next traffic key, after it sent a KeyUpdate.
    pub(crate) fn next_rx(&mut self) -> Result<TrafficKey, TlsError> {
        let Keys { schedule, heap } = self;
        let (_, secrets) = heap.lend(|| schedule.update_rx_secret()).map_err(|_| TlsError::Internal)??;
        TrafficKey::new(&secrets).ok_or(TlsError::Internal)
    }
}
