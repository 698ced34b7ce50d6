//! What only the kernel image has: its entry point, the global allocator over nonpaged
//! pool, the panic handler (a bugcheck), `_fltused`, `__chkstk`, and the one user-mode
//! import ring's getrandom names that the kernel lacks. Compiled for the Windows target only; host builds
//! get all of this from std and ntsim.

mod alloc;
mod chkstk;
mod entry;
mod panic;

/// MSVC's marker that floating point is used; the kernel CRT is not linked, so define it.
#[unsafe(no_mangle)]
#[used]
#[allow(non_upper_case_globals)]
pub static _fltused: i32 = 0;
