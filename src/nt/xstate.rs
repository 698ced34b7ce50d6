//! Extended processor state: what a driver must save before it touches the vector
//! registers (SSE beyond the kernel's own use, AVX, AVX-512) and restore afterwards.
//!
//! Windows x64 does not preserve a thread's AVX state across kernel code: a driver that
//! runs AVX code (ring's AES-GCM and ChaCha20 pick it on capable CPUs) wraps that code in
//! `KeSaveExtendedProcessorState` / `KeRestoreExtendedProcessorState`. Saves nest like a
//! stack: restore at the same IRQL as the save, on the same thread, innermost first, and
//! never above DISPATCH_LEVEL (so never in an ISR). Save once per batch of work, not once
//! per record: each save is an XSAVE of the requested features, and a save can fail.

use crate::{NTSTATUS, PVOID};

/// `XSTATE_MASK_LEGACY_FLOATING_POINT` (winnt.h): the x87 state.
pub const XSTATE_MASK_LEGACY_FLOATING_POINT: u64 = 1 << 0;
/// `XSTATE_MASK_LEGACY_SSE` (winnt.h): XMM0-15 and MXCSR.
pub const XSTATE_MASK_LEGACY_SSE: u64 = 1 << 1;
/// `XSTATE_MASK_LEGACY`: x87 and SSE together.
pub const XSTATE_MASK_LEGACY: u64 = XSTATE_MASK_LEGACY_FLOATING_POINT | XSTATE_MASK_LEGACY_SSE;
/// `XSTATE_MASK_AVX` (winnt.h; `XSTATE_MASK_GSSE` in the DDK): the upper halves of YMM0-15.
pub const XSTATE_MASK_AVX: u64 = 1 << 2;
/// `XSTATE_MASK_AVX512` (winnt.h): opmask registers, upper halves of ZMM0-15, ZMM16-31.
pub const XSTATE_MASK_AVX512: u64 = (1 << 5) | (1 << 6) | (1 << 7);

/// `XSTATE_CONTEXT` (wdm.h / winnt.h), 32 bytes on x64: which features a save covers and
/// where the kernel put them. The kernel's own; drivers never read or write it.
#[repr(C)]
pub struct XSTATE_CONTEXT {
    pub Mask: u64,
    pub Length: u32,
    /// `Reserved1` in MinGW's headers and older WDKs; newer ones split the same four bytes
    /// into `Flags` and `Reserved0[3]`.
    pub Reserved1: u32,
    /// `PXSAVE_AREA`.
    pub Area: PVOID,
    pub Buffer: PVOID,
}

/// `XSTATE_SAVE` (wdm.h, the `_AMD64_` branch), 56 bytes on x64: the storage one
/// `KeSaveExtendedProcessorState` fills and the matching `KeRestoreExtendedProcessorState`
/// reads. The driver provides it (typically on the stack, which keeps saves nested) and
/// must neither move nor modify it in between. `Prev` links the thread's active saves;
/// `Thread` is the saving thread (`PKTHREAD`); `Level` is the kernel's own.
#[repr(C)]
pub struct XSTATE_SAVE {
    pub Prev: *mut XSTATE_SAVE,
    pub Thread: PVOID,
    pub Level: u8,
    pub XStateContext: XSTATE_CONTEXT,
}

impl XSTATE_SAVE {
    /// Storage for one save, before `KeSaveExtendedProcessorState` fills it.
    pub const fn zeroed() -> XSTATE_SAVE {
        XSTATE_SAVE {
            Prev: core::ptr::null_mut(),
            Thread: core::ptr::null_mut(),
            Level: 0,
            XStateContext: XSTATE_CONTEXT {
                Mask: 0,
                Length: 0,
                Reserved1: 0,
                Area: core::ptr::null_mut(),
                Buffer: core::ptr::null_mut(),
            },
        }
    }
}

unsafe extern "system" {
    /// Saves the extended processor state features in `Mask` (intersected with what the
    /// processor and the OS enable) into `XStateSave`, so the caller may use those
    /// registers. IRQL <= DISPATCH_LEVEL; a nested save must not run at a lower IRQL than
    /// the save that encloses it. On failure the caller must not touch the registers.
    pub fn KeSaveExtendedProcessorState(Mask: u64, XStateSave: *mut XSTATE_SAVE) -> NTSTATUS;

    /// Restores the state `XStateSave` holds. At the same IRQL as the save, on the same
    /// thread, and only the innermost active save (LIFO). IRQL <= DISPATCH_LEVEL.
    pub fn KeRestoreExtendedProcessorState(XStateSave: *mut XSTATE_SAVE);
}
