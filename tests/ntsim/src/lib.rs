//! ntsim: a user-mode model of the NT kernel services and the WSK provider that wsktls
//! imports, faithful enough that a driver which passes here has exercised its real IRP,
//! MDL and WSK code paths.
//!
//! The driver's `extern "system"` imports (declared once, in `wsktls-nt`) resolve to the
//! `#[no_mangle]` functions of this crate in host builds. They work on the real
//! structures: IRPs with stack locations and completion routines, MDL chains, KEVENTs,
//! spin locks, rundown references, WSK registration blocks and socket objects. The WSK
//! provider moves real bytes over loopback TCP.
//!
//! Drivers load and unload as in Windows ([`Kernel::load_driver`], DriverEntry, AddDevice
//! for a root-enumerated [`Device`], the PnP IRPs, DriverUnload once its devices are
//! gone); device interfaces, their notifications, file objects (kernel-mode opens and
//! [`Kernel::open_from_user_mode`] behind the device's SDDL) and the service's
//! `Parameters` key are modelled with the checks Driver Verifier makes on them.
//!
//! Every test boots its own [`Kernel`]; a thread reaches it through [`Kernel::enter`]
//! (ntsim's own threads are entered already), so tests in one binary do not share
//! state. The [`verifier`] records what Driver Verifier would bugcheck on; dropping a
//! kernel with an unexpected report fails the test and prints the fault-injection seed.
//!
//! For benchmarks, [`Kernel::set_null_transport`] turns a connected socket into a null
//! transport once its handshake has run over TCP: sends complete inline without a byte
//! being touched, receives are filled from a [`NullSource`].
//!
//! ntsim never sends traffic anywhere but loopback: a connect to any other address is a
//! verifier report, not a packet.
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_snake_case, non_upper_case_globals, clippy::missing_safety_doc)]

mod bcrypt;
mod debug;
mod device;
mod driver;
mod faults;
mod file;
mod interface;
mod io;
mod irql;
mod kernel;
mod mdl;
mod notify;
mod pnp;
mod pool;
mod registry;
mod request;
mod rng;
mod secrets;
mod security;
mod stack;
mod sync;
mod time;
mod timer;
pub mod verifier;
mod workitem;
mod wsk;
mod xstate;

pub use driver::{Driver, DriverEntry};
pub use faults::{AllocKind, Breaks, Faults, InjectedFailure};
pub use interface::guid_text;
pub use irql::{current_irql, with_irql};
pub use kernel::{Config, EnterGuard, Kernel, Stats};
pub use pnp::Device;
pub use pool::PoolUsage;
pub use rng::Rng;
pub use secrets::ScanningHeap;
pub use security::Caller;
pub use verifier::{Report, Rule};
pub use wsk::{NullSource, set_abortive, set_receive_buffer};
