//! With the `wdk` feature, on a Windows host with the WDK: our declarations checked at
//! compile time against wdk-sys (Microsoft's bindgen output of the WDK headers). Sizes and
//! offsets must agree, and wdk-sys's functions must have the signatures we declare (in its
//! types, whose sizes must equal ours). wdk-sys has no WSK bindings; those are checked by
//! the layout test against wsk.h's documented declarations instead.
//!
//! Not exercised on Linux: wdk-sys needs the WDK to build. Build with
//! `cargo check -p wsktls-nt --features wdk --target x86_64-pc-windows-msvc` on Windows.

use core::mem::{offset_of, size_of};

use wdk_sys as w;

macro_rules! same_size {
    ($($ours:ty = $theirs:ty;)*) => {
        $(const _: () = assert!(size_of::<$ours>() == size_of::<$theirs>(), stringify!($ours));)*
    };
}

macro_rules! same_offsets {
    ($($ty:ident { $($field:ident),* })*) => {
        $($(const _: () = assert!(
            offset_of!(crate::$ty, $field) == offset_of!(w::$ty, $field),
            concat!(stringify!($ty), ".", stringify!($field))
        );)*)*
    };
}

same_size! {
    crate::IRP = w::IRP;
    crate::IO_STACK_LOCATION = w::IO_STACK_LOCATION;
    crate::IO_STATUS_BLOCK = w::IO_STATUS_BLOCK;
    crate::MDL = w::MDL;
    crate::KEVENT = w::KEVENT;
    crate::KDPC = w::KDPC;
    crate::KTIMER = w::KTIMER;
    crate::DRIVER_OBJECT = w::DRIVER_OBJECT;
    crate::UNICODE_STRING = w::UNICODE_STRING;
    crate::XSTATE_SAVE = w::XSTATE_SAVE;
    crate::EX_RUNDOWN_REF = w::EX_RUNDOWN_REF;
    crate::CCHAR = w::CCHAR;
    crate::BOOLEAN = w::BOOLEAN;
    crate::KPRIORITY = w::KPRIORITY;
    crate::POOL_FLAGS = w::POOL_FLAGS;
    crate::NTSTATUS = w::NTSTATUS;
}

same_offsets! {
    IRP { MdlAddress, IoStatus, CancelRoutine, Tail }
    IO_STACK_LOCATION { CompletionRoutine, Context }
    MDL { Next, MappedSystemVa, ByteCount, ByteOffset }
    DRIVER_OBJECT { DriverUnload, MajorFunction }
}

// The functions, written in wdk-sys's types (sized like ours, above) as src/nt declares
// them: a different signature fails to compile.
const _: unsafe extern "C" fn(w::CCHAR, w::BOOLEAN) -> w::PIRP = w::ntddk::IoAllocateIrp;
const _: unsafe extern "C" fn(w::PIRP) = w::ntddk::IoFreeIrp;
const _: unsafe extern "C" fn(w::PIRP, w::CCHAR) = w::ntddk::IofCompleteRequest;
const _: unsafe extern "C" fn(w::POOL_FLAGS, w::SIZE_T, w::ULONG) -> w::PVOID = w::ntddk::ExAllocatePool2;
const _: unsafe extern "C" fn(w::PVOID, w::ULONG) = w::ntddk::ExFreePoolWithTag;
const _: unsafe extern "C" fn(w::PRKEVENT, w::KPRIORITY, w::BOOLEAN) -> w::LONG = w::ntddk::KeSetEvent;
const _: unsafe extern "C" fn(w::ULONG64, w::PXSTATE_SAVE) -> w::NTSTATUS =
    w::ntddk::KeSaveExtendedProcessorState;
