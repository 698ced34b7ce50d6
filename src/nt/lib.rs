//! wsktls's only contact with Windows.
//!
//! One set of declarations for everything the driver uses from the NT kernel and from
//! Winsock Kernel: NTSTATUS values, the I/O manager's structures (IRP, IO_STACK_LOCATION,
//! MDL, ...), the WSK structures and dispatch tables, the imported functions, and the
//! wdm.h inline helpers written in Rust. Layouts are the real Windows x64 ones; the
//! `layout` test checks them against MinGW's DDK headers and wsk.h's documented values.
//!
//! The kernel build links the imports against ntoskrnl.exe, hal.dll, NETIO.SYS and
//! ksecdd.sys (`BCryptGenRandom`). Host builds link them against `ntsim`, the user-mode
//! kernel in `tests/ntsim`, which implements the same functions over the same structures.
//! The driver code is the same in both.
//!
//! Besides the declarations, `pool` holds the two owners of nonpaged memory every layer
//! uses (`PoolBox`, `PoolBuffer`) and `sync` the owners of a spin lock and an event, so no
//! code above this crate calls the pool, MDL, spin-lock or event functions directly. Names follow the Windows headers so a reader can check each item
//! against its documentation.
#![no_std]
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
#![deny(unsafe_op_in_unsafe_fn)]

mod basic;
mod bcrypt;
mod debug;
mod driver;
mod ex;
mod inet;
mod io;
mod ke;
mod mm;
mod pnp;
mod pool;
mod stack;
mod status;
mod sync;
mod time;
#[cfg(feature = "wdk")]
mod wdk;
mod work;
mod wsk;
mod wsktls;
mod xstate;

pub use basic::*;
pub use bcrypt::*;
pub use debug::*;
pub use driver::*;
pub use ex::*;
pub use inet::*;
pub use io::*;
pub use ke::*;
pub use mm::*;
pub use pnp::*;
pub use pool::{POOL_ALIGNMENT, PoolBox, PoolBuffer};
pub use stack::*;
pub use status::*;
pub use sync::{Event, Guard, Rundown, SpinLock, set_event_on_completion};
pub use time::*;
pub use work::{WorkItem, WorkRoutine};
pub use wsk::*;
pub use wsktls::*;
pub use xstate::*;
