//! The NT and WSK declarations in `wsktls::nt` have the real Windows x64 layouts and values.
//!
//! Each check turns Rust facts (`size_of`, `align_of`, `offset_of!`, constant values) into C
//! `_Static_assert`s and compiles them with a compiler that targets Windows x64
//! (`x86_64-w64-mingw32-gcc`, where LONG is 32 bits and pointers 64, as on Windows) against
//! MinGW's DDK and winsock headers. Any difference is a compile error that names the Rust
//! item. MinGW has no wsk.h, so the WSK structures are compiled against
//! `tests/layout/wsk_documented.h`, written down from Microsoft's wsk.h documentation.
//! Function types are the exception to "Rust facts": each is written in C beside its Rust
//! type (which must be the declaration's), and the compiler compares that with the header.
//!
//! wsktls's own published header, `src/interface/wsktls.h`, is checked the same way against
//! its Rust twin `src/nt/wsktls.rs` (layouts, member types, prototypes, values, the GUID);
//! there the C side is ours, written to match.
//!
//! The compiler is required: without it these tests fail, naming the Debian packages to
//! install. They never skip.

use std::io::ErrorKind;
use std::mem::{align_of, offset_of, size_of};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use wsktls::nt::*;

const COMPILER: &str = "x86_64-w64-mingw32-gcc";
const DDK_HEADERS: &str = "/usr/share/mingw-w64/include/ddk";
const PACKAGES: &str = "gcc-mingw-w64-x86-64 and mingw-w64-x86-64-dev";

/// Kernel-mode translation units: MinGW's ntddk.h (which includes wdm.h) and ntstatus.h.
const NT_HEADERS: &[&str] = &["<ntddk.h>", "<ntstatus.h>"];
/// The WSK structures: the kernel headers plus wsk.h as documented.
const WSK_HEADERS: &[&str] = &["<ntddk.h>", "\"wsk_documented.h\""];
/// wsktls's published header, included as a consumer driver does: after the kernel
/// headers and wsk.h.
const WSKTLS_HEADERS: &[&str] = &["<ntddk.h>", "\"wsk_documented.h\"", "\"wsktls.h\""];
/// The socket address types come from the user-mode winsock headers, which clash with the
/// DDK's in one translation unit.
const WINSOCK_HEADERS: &[&str] = &["<winsock2.h>", "<ws2tcpip.h>"];
/// CNG as a kernel driver includes it: bcrypt.h after the DDK.
const CNG_HEADERS: &[&str] = &["<ntddk.h>", "<bcrypt.h>"];
/// The XSTATE_MASK_* values. MinGW's ntddk.h spells them with MSVC's `1i64` suffix, which
/// gcc rejects, and lacks the AVX and AVX-512 ones; winnt.h has them all.
const WINNT_HEADERS: &[&str] = &["<windows.h>"];

// ---------------------------------------------------------------------------------------
// The tables: what Rust says, in a form the generator turns into C.

/// A structure as Rust lays it out.
struct Layout {
    c_type: &'static str,
    size: usize,
    align: usize,
    fields: Vec<Field>,
}

/// One field, by its Rust path and the C member designator that names the same storage.
struct Field {
    rust: String,
    c: String,
    offset: usize,
    /// `None` when the C member is only the start of the Rust field (see `starts` below).
    size: Option<usize>,
}

/// The size of the field a (never called) projection closure points at.
fn field_size<T, F>(_projection: fn(*const T) -> *const F) -> usize {
    size_of::<F>()
}

/// `field!(T, a.b.c)`: the C member has the same path.
/// `field!(T, a.b as "c")`: the C member is spelt differently (MinGW's anonymous unions).
/// `field!(T, a starts "c")`: the C member begins where the Rust field does but is smaller
/// (the Rust field covers several C members); only the offset is compared.
macro_rules! field {
    ($ty:ident, $($f:ident).+ $(as $c:literal)? $(starts $s:literal)?) => {{
        let rust = [$(stringify!($f)),+].join(".");
        let starts: Option<&str> = None $(.or(Some($s)))?;
        let c: Option<&str> = None $(.or(Some($c)))?;
        Field {
            c: c.or(starts).map_or_else(|| rust.clone(), str::to_owned),
            offset: offset_of!($ty, $($f).+),
            // SAFETY: never called; it only names the field's type.
            size: starts.is_none().then(|| field_size(|p: *const $ty| unsafe { &raw const (*p)$(.$f)+ })),
            rust,
        }
    }};
}

/// `layout!(T { every top-level field } nested { a.b, ... })`.
///
/// The top-level list must name every field of `T`: it is also a struct pattern without
/// `..`, so a field added to the Rust declaration and not listed here does not compile.
macro_rules! layout {
    ($ty:ident {
        $($top:ident $(as $tc:literal)? $(starts $ts:literal)?),* $(,)?
    } $(nested {
        $($($path:ident).+ $(as $pc:literal)? $(starts $ps:literal)?),* $(,)?
    })?) => {{
        let _every_field_is_listed = |v: &$ty| {
            let $ty { $($top: _),* } = v;
        };
        Layout {
            c_type: stringify!($ty),
            size: size_of::<$ty>(),
            align: align_of::<$ty>(),
            fields: vec![
                $(field!($ty, $top $(as $tc)? $(starts $ts)?),)*
                $($(field!($ty, $($path).+ $(as $pc)? $(starts $ps)?),)*)?
            ],
        }
    }};
    // A type the driver only holds, never looks into: size and alignment only.
    ($ty:ident opaque) => {
        Layout { c_type: stringify!($ty), size: size_of::<$ty>(), align: align_of::<$ty>(), fields: vec![] }
    };
}

/// A scalar typedef: its size, and for integers its signedness.
struct Scalar {
    c_type: &'static str,
    size: usize,
    signed: Option<bool>,
}

macro_rules! scalars {
    (integers: [$($int:ident),* $(,)?], others: [$($other:ident),* $(,)?] $(,)?) => {
        vec![
            $(Scalar { c_type: stringify!($int), size: size_of::<$int>(), signed: Some($int::MIN != 0) },)*
            $(Scalar { c_type: stringify!($other), size: size_of::<$other>(), signed: None },)*
        ]
    };
}

/// A constant: a C expression and the value Rust gives it.
struct Constant {
    c_expr: String,
    value: i64,
}

macro_rules! constants {
    ($($name:ident),* $(,)?) => {
        vec![$(Constant { c_expr: stringify!($name).to_owned(), value: $name as i64 },)*]
    };
}

/// An imported function or a callback type, as a C function-pointer type written from
/// its Rust declaration.
struct Prototype {
    /// What C compares: `&Function`, or the name of a pointer typedef.
    c_expr: &'static str,
    /// The C type, with `(CONV *)` where the declarator goes.
    c_type: &'static str,
}

/// `prototype!(fn F: <Rust fn pointer type> => "<C fn pointer type>")` for an import,
/// `prototype!(type T: <Rust type> => "<C type>")` for a callback typedef. The Rust type
/// must be exactly the declaration's (checked when the table is built), so a row ties the
/// Rust declaration to the C type beside it, and the C compiler checks that against the
/// header.
macro_rules! prototype {
    (fn $name:ident: $rust:ty => $c:literal) => {{
        let _same_rust_type: $rust = $name;
        Prototype { c_expr: concat!("&", stringify!($name)), c_type: $c }
    }};
    (type $name:ident: $rust:ty => $c:literal) => {{
        let _same_rust_type: fn($name) -> $rust = |x| x;
        Prototype { c_expr: stringify!($name), c_type: $c }
    }};
}

/// A structure wsktls publishes: its layout, and each member's C type.
struct Published {
    layout: Layout,
    members: Vec<Member>,
}

/// One member's type as the header must spell it.
struct Member {
    rust: &'static str,
    c_type: &'static str,
}

/// `published!(T { Field: <Rust type> => "<C type>", ... })`: every field of `T`, in any
/// order (the list is also an exhaustive struct pattern, so a field added in Rust and not
/// here does not compile). Each row gives the field's offset and size (as `layout!`) and
/// its type: the Rust type must be exactly the field's, and the C compiler checks the
/// header's member against the C type beside it (signedness, pointee, `const`).
macro_rules! published {
    ($ty:ident { $($f:ident: $rust:ty => $c:literal),* $(,)? }) => {{
        let _every_field_is_listed = |v: &$ty| {
            let $ty { $($f: _),* } = v;
        };
        Published {
            layout: Layout {
                c_type: stringify!($ty),
                size: size_of::<$ty>(),
                align: align_of::<$ty>(),
                fields: vec![$(field!($ty, $f),)*],
            },
            members: vec![$({
                let _same_rust_type: fn(&$ty) -> &$rust = |v| &v.$f;
                Member { rust: stringify!($f), c_type: $c }
            },)*],
        }
    }};
}

/// A GUID the header declares with DEFINE_GUID, and Rust's value of it.
struct Guid {
    name: &'static str,
    value: GUID,
}

// ---------------------------------------------------------------------------------------
// What is checked. (The tables are laid out by hand, hence `rustfmt::skip`.)

/// The NT structures, against MinGW's wdm.h. C paths differ only where MinGW uses
/// anonymous unions and structs.
#[rustfmt::skip]
fn nt_layouts() -> Vec<Layout> {
    vec![
        layout!(IRP {
            Type, Size, MdlAddress, Flags, AssociatedIrp, ThreadListEntry, IoStatus,
            RequestorMode, PendingReturned, StackCount, CurrentLocation, Cancel, CancelIrql,
            ApcEnvironment, AllocationFlags, UserIosb, UserEvent, Overlay, CancelRoutine,
            UserBuffer, Tail,
        } nested {
            AssociatedIrp.MasterIrp, AssociatedIrp.IrpCount, AssociatedIrp.SystemBuffer,
            IoStatus.u starts "IoStatus.Status",
            IoStatus.u.Status as "IoStatus.Status",
            IoStatus.u.Pointer as "IoStatus.Pointer",
            IoStatus.Information,
            Overlay.AsynchronousParameters,
            Overlay.AsynchronousParameters.UserApcRoutine,
            Overlay.AsynchronousParameters.UserApcContext,
            Overlay.AllocationSize,
            Tail.Overlay,
            Tail.Overlay.DriverContext, Tail.Overlay.Thread, Tail.Overlay.AuxiliaryBuffer,
            Tail.Overlay.ListEntry, Tail.Overlay.CurrentStackLocation,
            Tail.Overlay.OriginalFileObject,
            Tail.Apc, Tail.CompletionKey,
        }),
        layout!(IO_STACK_LOCATION {
            MajorFunction, MinorFunction, Flags, Control, Parameters, DeviceObject, FileObject,
            CompletionRoutine, Context,
        } nested {
            Parameters.Others,
            Parameters.Others.Argument1, Parameters.Others.Argument2,
            Parameters.Others.Argument3, Parameters.Others.Argument4,
            Parameters.DeviceIoControl,
            Parameters.DeviceIoControl.OutputBufferLength,
            Parameters.DeviceIoControl.InputBufferLength,
            Parameters.DeviceIoControl.IoControlCode,
            Parameters.DeviceIoControl.Type3InputBuffer,
        }),
        layout!(IO_STATUS_BLOCK {
            u starts "Status", Information,
        } nested {
            u.Status as "Status", u.Pointer as "Pointer",
        }),
        layout!(MDL {
            Next, Size, MdlFlags, Process, MappedSystemVa, StartVa, ByteCount, ByteOffset,
        }),
        layout!(KEVENT {
            Header,
        } nested {
            Header.Type, Header.Signalling, Header.Size, Header.SignalState, Header.WaitListHead,
        }),
        // The current WDK names the fourth byte Reserved1; MinGW's older declaration calls
        // that byte DpcActive.
        layout!(DISPATCHER_HEADER {
            Type, Signalling, Size, Reserved1 as "DpcActive", SignalState, WaitListHead,
        }),
        layout!(KDPC {
            Type, Importance, Number, DpcListEntry, DeferredRoutine, DeferredContext,
            SystemArgument1, SystemArgument2, DpcData,
        }),
        layout!(KTIMER {
            Header, DueTime, TimerListEntry, Dpc, Processor, Period,
        }),
        layout!(LIST_ENTRY { Flink, Blink }),
        layout!(EX_RUNDOWN_REF { Count }),
        layout!(KAPC opaque),
        layout!(XSTATE_SAVE {
            Prev, Thread, Level, XStateContext,
        } nested {
            XStateContext.Mask, XStateContext.Length, XStateContext.Reserved1,
            XStateContext.Area, XStateContext.Buffer,
        }),
        layout!(XSTATE_CONTEXT { Mask, Length, Reserved1, Area, Buffer }),
        layout!(UNICODE_STRING { Length, MaximumLength, Buffer }),
        layout!(DRIVER_OBJECT {
            Type, Size, DeviceObject, Flags, DriverStart, DriverSize, DriverSection,
            DriverExtension, DriverName, HardwareDatabase, FastIoDispatch, DriverInit,
            DriverStartIo, DriverUnload, MajorFunction,
        } nested {
            DriverName.Length, DriverName.MaximumLength, DriverName.Buffer,
        }),
        layout!(DRIVER_EXTENSION { DriverObject, AddDevice, Count, ServiceKeyName }),
        layout!(GUID { Data1, Data2, Data3, Data4 }),
        layout!(KEY_VALUE_PARTIAL_INFORMATION { TitleIndex, Type, DataLength, Data }),
        layout!(DEVICE_INTERFACE_CHANGE_NOTIFICATION {
            Version, Size, Event, InterfaceClassGuid, SymbolicLinkName,
        }),
    ]
}

/// The scalar typedefs the NT structures and imports are built from.
#[rustfmt::skip]
fn nt_scalars() -> Vec<Scalar> {
    scalars!(
        integers: [
            BOOLEAN, CCHAR, CSHORT, ULONG_PTR, SIZE_T, LONGLONG, KPROCESSOR_MODE, KIRQL,
            KSPIN_LOCK, KPRIORITY, PFN_NUMBER,
        ],
        others: [
            NTSTATUS, LARGE_INTEGER, EVENT_TYPE, KWAIT_REASON, MEMORY_CACHING_TYPE, TIMER_TYPE,
            WORK_QUEUE_TYPE, PDRIVER_INITIALIZE, PDRIVER_STARTIO, PDRIVER_UNLOAD, PDRIVER_DISPATCH,
            PEXPAND_STACK_CALLOUT,
        ],
    )
}

/// The wdm.h constants (the NTSTATUS values have a test of their own).
#[rustfmt::skip]
fn nt_constants() -> Vec<Constant> {
    let mut constants = constants![
        MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED, MDL_SOURCE_IS_NONPAGED_POOL,
        MDL_ALLOCATED_FIXED_SIZE, MDL_PARTIAL, MDL_PARTIAL_HAS_BEEN_MAPPED, MDL_IO_PAGE_READ,
        MDL_WRITE_OPERATION, MDL_NETWORK_HEADER, MDL_MAPPING_CAN_FAIL,
        SL_PENDING_RETURNED, SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_SUCCESS, SL_INVOKE_ON_ERROR,
        IRP_MJ_CREATE, IRP_MJ_CLOSE, IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL,
        IRP_MJ_CLEANUP, IRP_MJ_PNP, IRP_MJ_POWER, IRP_MJ_SYSTEM_CONTROL, IRP_MJ_MAXIMUM_FUNCTION,
        IRP_MN_START_DEVICE, IRP_MN_QUERY_REMOVE_DEVICE, IRP_MN_REMOVE_DEVICE,
        IRP_MN_CANCEL_REMOVE_DEVICE, IRP_MN_STOP_DEVICE, IRP_MN_QUERY_STOP_DEVICE,
        IRP_MN_CANCEL_STOP_DEVICE, IRP_MN_SURPRISE_REMOVAL,
        DO_DEVICE_INITIALIZING, DO_POWER_PAGABLE, FILE_DEVICE_NETWORK, FILE_DEVICE_SECURE_OPEN,
        METHOD_NEITHER, FILE_ANY_ACCESS, KEY_READ, REG_DWORD, KeyValuePartialInformation,
        EventCategoryDeviceInterfaceChange, PNPNOTIFY_DEVICE_INTERFACE_INCLUDE_EXISTING_INTERFACES,
        IO_TYPE_IRP, IO_NO_INCREMENT, IO_NETWORK_INCREMENT,
        PAGE_SIZE, PAGE_SHIFT,
        PASSIVE_LEVEL, APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL,
        NotificationEvent, SynchronizationEvent, Executive, KernelMode, UserMode,
        NotificationTimer, SynchronizationTimer, CriticalWorkQueue, DelayedWorkQueue,
        LowPagePriority, NormalPagePriority, HighPagePriority, MmCached,
        TRUE, FALSE,
        DPFLTR_IHVNETWORK_ID, DPFLTR_ERROR_LEVEL, DPFLTR_WARNING_LEVEL, DPFLTR_TRACE_LEVEL,
        DPFLTR_INFO_LEVEL,
        KERNEL_STACK_SIZE, KERNEL_LARGE_STACK_SIZE, MAXIMUM_EXPANSION_SIZE,
    ];
    // The DDK's feature numbers, against the masks built from them.
    for (c_expr, value) in [
        ("1LL << XSTATE_LEGACY_FLOATING_POINT", XSTATE_MASK_LEGACY_FLOATING_POINT),
        ("1LL << XSTATE_LEGACY_SSE", XSTATE_MASK_LEGACY_SSE),
        ("1LL << XSTATE_GSSE", XSTATE_MASK_AVX),
    ] {
        constants.push(Constant { c_expr: c_expr.to_owned(), value: value as i64 });
    }
    constants
}

/// Imports and callback types, against the prototypes in MinGW's wdm.h and ntddk.h.
#[rustfmt::skip]
fn nt_prototypes() -> Vec<Prototype> {
    vec![
        prototype!(fn KeBugCheckEx:
            unsafe extern "system" fn(u32, ULONG_PTR, ULONG_PTR, ULONG_PTR, ULONG_PTR) -> !
            => "DECLSPEC_NORETURN VOID (NTAPI *)(ULONG, ULONG_PTR, ULONG_PTR, ULONG_PTR, ULONG_PTR)"),
        prototype!(fn DbgPrintEx:
            unsafe extern "C" fn(u32, u32, *const u8, ...) -> u32
            => "ULONG (__cdecl *)(ULONG, ULONG, PCSTR, ...)"),
        prototype!(fn KeExpandKernelStackAndCallout:
            unsafe extern "system" fn(PEXPAND_STACK_CALLOUT, PVOID, SIZE_T) -> NTSTATUS
            => "NTSTATUS (NTAPI *)(PEXPAND_STACK_CALLOUT, PVOID, SIZE_T)"),
        prototype!(type PEXPAND_STACK_CALLOUT:
            Option<unsafe extern "system" fn(PVOID)>
            => "VOID (NTAPI *)(PVOID)"),
        prototype!(type PDRIVER_INITIALIZE:
            Option<unsafe extern "system" fn(*mut DRIVER_OBJECT, *mut UNICODE_STRING) -> NTSTATUS>
            => "NTSTATUS (NTAPI *)(PDRIVER_OBJECT, PUNICODE_STRING)"),
        prototype!(type PDRIVER_STARTIO:
            Option<unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP)>
            => "VOID (NTAPI *)(PDEVICE_OBJECT, PIRP)"),
        prototype!(type PDRIVER_UNLOAD:
            Option<unsafe extern "system" fn(*mut DRIVER_OBJECT)>
            => "VOID (NTAPI *)(PDRIVER_OBJECT)"),
        prototype!(type PDRIVER_DISPATCH:
            Option<unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP) -> NTSTATUS>
            => "NTSTATUS (NTAPI *)(PDEVICE_OBJECT, PIRP)"),
    ]
}

/// The extended processor state masks, against winnt.h.
#[rustfmt::skip]
fn xstate_mask_constants() -> Vec<Constant> {
    constants![
        XSTATE_MASK_LEGACY_FLOATING_POINT, XSTATE_MASK_LEGACY_SSE, XSTATE_MASK_LEGACY,
        XSTATE_MASK_AVX, XSTATE_MASK_AVX512,
    ]
}

/// BCryptGenRandom's flags, against bcrypt.h.
fn cng_constants() -> Vec<Constant> {
    constants![BCRYPT_RNG_USE_ENTROPY_IN_BUFFER, BCRYPT_USE_SYSTEM_PREFERRED_RNG]
}

/// Every NTSTATUS the crate declares. `(NTSTATUS)` makes the C side a 32-bit LONG, so a
/// value only matches if Rust's i32 has the same sign and bits.
/// The Schannel (SSPI) statuses the channel returns, against winerror.h: HRESULT-shaped,
/// so the C side is cast to a 32-bit LONG like NTSTATUS.
fn security_status_constants() -> Vec<Constant> {
    SECURITY_STATUSES
        .iter()
        .map(|&(name, status)| Constant { c_expr: format!("(LONG){name}"), value: status.0.into() })
        .collect()
}

fn status_constants() -> Vec<Constant> {
    DECLARED_STATUSES
        .iter()
        .map(|&(name, status)| Constant { c_expr: format!("(NTSTATUS){name}"), value: status.0.into() })
        .collect()
}

/// The WSK structures, against the documented declarations (same names on both sides).
#[rustfmt::skip]
fn wsk_layouts() -> Vec<Layout> {
    vec![
        layout!(WSK_BUF { Mdl, Offset, Length }),
        layout!(WSK_SOCKET { Dispatch }),
        layout!(WSK_DATA_INDICATION {
            Next, Buffer,
        } nested {
            Buffer.Mdl, Buffer.Offset, Buffer.Length,
        }),
        layout!(WSK_CLIENT_DISPATCH { Version, Reserved, WskClientEvent }),
        layout!(WSK_CLIENT_NPI { ClientContext, Dispatch }),
        layout!(WSK_PROVIDER_NPI { Client, Dispatch }),
        layout!(WSK_REGISTRATION {
            ReservedRegistrationState, ReservedRegistrationContext, ReservedRegistrationLock,
        }),
        layout!(WSK_PROVIDER_DISPATCH {
            Version, Reserved, WskSocket, WskSocketConnect, WskControlClient, WskGetAddressInfo,
            WskFreeAddressInfo, WskGetNameInfo,
        }),
        layout!(WSK_PROVIDER_BASIC_DISPATCH { WskControlSocket, WskCloseSocket }),
        layout!(WSK_PROVIDER_CONNECTION_DISPATCH {
            Basic, WskBind, WskConnect, WskGetLocalAddress, WskGetRemoteAddress, WskSend,
            WskReceive, WskDisconnect, WskRelease, WskConnectEx, WskSendEx, WskReceiveEx,
        } nested {
            Basic.WskControlSocket, Basic.WskCloseSocket,
        }),
        layout!(WSK_CLIENT_CONNECTION_DISPATCH {
            WskReceiveEvent, WskDisconnectEvent, WskSendBacklogEvent,
        }),
    ]
}

/// The socket addresses, against MinGW's winsock headers.
#[rustfmt::skip]
fn socket_address_layouts() -> Vec<Layout> {
    vec![
        layout!(SOCKADDR { sa_family, sa_data }),
        layout!(SOCKADDR_IN { sin_family, sin_port, sin_addr, sin_zero }),
        layout!(SOCKADDR_IN6 { sin6_family, sin6_port, sin6_flowinfo, sin6_addr, sin6_scope_id }),
        // Rust keeps the padding as one array; ws2def.h splits it around an __int64.
        layout!(SOCKADDR_STORAGE { ss_family, __ss_pad starts "__ss_pad1" }),
    ]
}

/// ADDRESS_FAMILY, the type of every `*_family` field (ws2def.h).
fn socket_scalars() -> Vec<Scalar> {
    scalars!(integers: [ADDRESS_FAMILY], others: [])
}

/// Address families, socket types and the Winsock ioctl code pieces, including the WSK
/// ioctl built with winsock2.h's own `_WSAIOR` (IOC_WSK is wsk.h's `IOC_WS2 | 0x07000000`).
#[rustfmt::skip]
fn socket_constants() -> Vec<Constant> {
    let mut constants = constants![AF_INET, AF_INET6, SOCK_STREAM, IPPROTO_TCP, IOC_OUT, IOC_IN, IOC_WS2];
    for (c_expr, value) in [
        ("(IOC_WS2 | 0x07000000)", IOC_WSK),
        ("_WSAIOR(IOC_WS2 | 0x07000000, 3)", SIO_WSK_QUERY_IDEAL_SEND_BACKLOG),
        ("_WSAIOR(IOC_WS2 | 0x07000000, 4)", SIO_WSK_QUERY_RECEIVE_BACKLOG),
    ] {
        constants.push(Constant { c_expr: c_expr.to_owned(), value: value.into() });
    }
    constants
}

// wsktls.h, the header consumer drivers include. When the interface grows, its row goes
// here before the header compiles against it: a structure or a field, in
// `wsktls_structures` (Rust refuses to build while a field is missing from its row); a
// function-pointer type, in `wsktls_prototypes` (and its member in WSKTLS_DISPATCH's row);
// a constant, in `wsktls_constants` (a new `STATUS_WSKTLS_*` needs no row: every entry of
// WSKTLS_STATUSES is checked); a GUID, in `wsktls_guids` (a DEFINE_GUID in the header
// without a row does not compile). A new version keeps the old structures: grow them only
// at the end, behind their Size, so the rows' offsets for the old fields stay as they are.

/// Every structure in src/nt/wsktls.rs (the opaque handles have no layout: C only names
/// them, as incomplete types behind the PWSKTLS_* pointers the prototypes check).
#[rustfmt::skip]
fn wsktls_structures() -> Vec<Published> {
    vec![
        published!(WSKTLS_PROVIDER_REQUEST {
            Size: u32 => "ULONG",
            Version: u16 => "USHORT",
            Reserved: u16 => "USHORT",
        }),
        published!(WSKTLS_PROVIDER_NPI {
            Size: u32 => "ULONG",
            Version: u16 => "USHORT",
            Reserved: u16 => "USHORT",
            Provider: *mut WSKTLS_PROVIDER => "PWSKTLS_PROVIDER",
            Dispatch: *const WSKTLS_DISPATCH => "const WSKTLS_DISPATCH *",
        }),
        published!(WSKTLS_BLOB {
            Data: *const u8 => "const UCHAR *",
            Length: u32 => "ULONG",
            Reserved: u32 => "ULONG",
        }),
        published!(WSKTLS_CONNECT_PARAMETERS {
            Size: u32 => "ULONG",
            Version: u16 => "USHORT",
            Reserved: u16 => "USHORT",
            RemoteAddress: *const SOCKADDR => "const struct sockaddr *",
            ServerName: WSKTLS_BLOB => "WSKTLS_BLOB",
            TrustAnchors: *const WSKTLS_BLOB => "const WSKTLS_BLOB *",
            PinSha256: *const u8 => "const UCHAR *",
            ClientChain: *const WSKTLS_BLOB => "const WSKTLS_BLOB *",
            ClientKey: WSKTLS_BLOB => "WSKTLS_BLOB",
            Alpn: *const WSKTLS_BLOB => "const WSKTLS_BLOB *",
            TrustAnchorCount: u32 => "ULONG",
            ClientChainCount: u32 => "ULONG",
            AlpnCount: u32 => "ULONG",
            Suites: u32 => "ULONG",
            RecordSize: u32 => "ULONG",
            SendBudget: u32 => "ULONG",
            ReceiveBuffer: u32 => "ULONG",
            ConnectTimeoutMs: u32 => "ULONG",
            HandshakeTimeoutMs: u32 => "ULONG",
            Reserved2: u32 => "ULONG",
        }),
        published!(WSKTLS_SESSION_INFO {
            ProtocolVersion: u16 => "USHORT",
            CipherSuite: u16 => "USHORT",
            AlpnLength: u8 => "UCHAR",
            Alpn: [u8; 255] => "UCHAR[255]",
            PeerCertificateSha256: [u8; 32] => "UCHAR[32]",
        }),
        published!(WSKTLS_COUNTERS {
            BytesSent: u64 => "ULONGLONG",
            RecordsSent: u64 => "ULONGLONG",
            KeyUpdatesSent: u64 => "ULONGLONG",
            BytesReceived: u64 => "ULONGLONG",
            RecordsReceived: u64 => "ULONGLONG",
            KeyUpdatesReceived: u64 => "ULONGLONG",
            InFlightBytes: u64 => "ULONGLONG",
            PeakInFlightBytes: u64 => "ULONGLONG",
            SendBudget: u64 => "ULONGLONG",
            BufferedBytes: u64 => "ULONGLONG",
        }),
        published!(WSKTLS_DISPATCH {
            Size: u32 => "ULONG",
            Version: u16 => "USHORT",
            Reserved: u16 => "USHORT",
            Connect: PFN_WSKTLS_CONNECT => "PFN_WSKTLS_CONNECT",
            Send: PFN_WSKTLS_SEND => "PFN_WSKTLS_SEND",
            Receive: PFN_WSKTLS_RECEIVE => "PFN_WSKTLS_RECEIVE",
            Disconnect: PFN_WSKTLS_DISCONNECT => "PFN_WSKTLS_DISCONNECT",
            Close: PFN_WSKTLS_CLOSE => "PFN_WSKTLS_CLOSE",
            Query: PFN_WSKTLS_QUERY => "PFN_WSKTLS_QUERY",
        }),
    ]
}

/// The dispatch table's function-pointer types.
#[rustfmt::skip]
fn wsktls_prototypes() -> Vec<Prototype> {
    vec![
        prototype!(type PFN_WSKTLS_CONNECT:
            Option<unsafe extern "system" fn(
                *mut WSKTLS_PROVIDER, *const WSKTLS_CONNECT_PARAMETERS, *mut *mut WSKTLS_CHANNEL, *mut IRP,
            ) -> NTSTATUS>
            => "NTSTATUS (WSKAPI *)(PWSKTLS_PROVIDER, const WSKTLS_CONNECT_PARAMETERS *, PWSKTLS_CHANNEL *, PIRP)"),
        prototype!(type PFN_WSKTLS_SEND:
            Option<unsafe extern "system" fn(*mut WSKTLS_CHANNEL, *mut WSK_BUF, u32, *mut IRP) -> NTSTATUS>
            => "NTSTATUS (WSKAPI *)(PWSKTLS_CHANNEL, PWSK_BUF, ULONG, PIRP)"),
        prototype!(type PFN_WSKTLS_RECEIVE:
            Option<unsafe extern "system" fn(*mut WSKTLS_CHANNEL, *mut WSK_BUF, u32, *mut IRP) -> NTSTATUS>
            => "NTSTATUS (WSKAPI *)(PWSKTLS_CHANNEL, PWSK_BUF, ULONG, PIRP)"),
        prototype!(type PFN_WSKTLS_DISCONNECT:
            Option<unsafe extern "system" fn(*mut WSKTLS_CHANNEL, u32, *mut IRP) -> NTSTATUS>
            => "NTSTATUS (WSKAPI *)(PWSKTLS_CHANNEL, ULONG, PIRP)"),
        prototype!(type PFN_WSKTLS_CLOSE:
            Option<unsafe extern "system" fn(*mut WSKTLS_CHANNEL, *mut IRP) -> NTSTATUS>
            => "NTSTATUS (WSKAPI *)(PWSKTLS_CHANNEL, PIRP)"),
        prototype!(type PFN_WSKTLS_QUERY:
            Option<unsafe extern "system" fn(*mut WSKTLS_CHANNEL, u32, PVOID, u32, *mut u32) -> NTSTATUS>
            => "NTSTATUS (WSKAPI *)(PWSKTLS_CHANNEL, ULONG, PVOID, ULONG, PULONG)"),
    ]
}

/// The header's values: versions (and WSKTLS_MAKE_VERSION itself, at a few points), the
/// IOCTL, suite bits, information classes, and every `STATUS_WSKTLS_*` (as NTSTATUS, so
/// sign and bits must both agree).
#[rustfmt::skip]
fn wsktls_constants() -> Vec<Constant> {
    let mut constants = constants![
        WSKTLS_VERSION_1_0, FILE_DEVICE_WSKTLS, IOCTL_WSKTLS_GET_PROVIDER,
        WSKTLS_SUITE_AES_128_GCM_SHA256, WSKTLS_SUITE_AES_256_GCM_SHA384,
        WSKTLS_SUITE_CHACHA20_POLY1305_SHA256,
        WskTlsInfoSession, WskTlsInfoCounters,
    ];
    for (major, minor) in [(1, 0), (2, 5), (0xff, 0xff), (0x1ff, 0x1ff)] {
        constants.push(Constant {
            c_expr: format!("WSKTLS_MAKE_VERSION({major:#x}, {minor:#x})"),
            value: WSKTLS_MAKE_VERSION(major, minor).into(),
        });
    }
    assert!(!WSKTLS_STATUSES.is_empty());
    for &(name, status) in WSKTLS_STATUSES {
        constants.push(Constant { c_expr: format!("(NTSTATUS){name}"), value: status.0.into() });
    }
    constants
}

macro_rules! guids {
    ($($name:ident),* $(,)?) => {
        vec![$(Guid { name: stringify!($name), value: $name },)*]
    };
}

/// The header's GUIDs.
fn wsktls_guids() -> Vec<Guid> {
    guids![GUID_DEVINTERFACE_WSKTLS]
}

// ---------------------------------------------------------------------------------------
// The generator and the compiler.

fn layout_asserts(layouts: &[Layout]) -> Vec<String> {
    let mut out = Vec::new();
    for l in layouts {
        let t = l.c_type;
        out.push(format!("_Static_assert(sizeof({t}) == {}, \"sizeof {t}: Rust says {}\");", l.size, l.size));
        out.push(format!(
            "_Static_assert(_Alignof({t}) == {}, \"alignof {t}: Rust says {}\");",
            l.align, l.align
        ));
        for f in &l.fields {
            let (rust, c, offset) = (&f.rust, &f.c, f.offset);
            out.push(format!(
                "_Static_assert(offsetof({t}, {c}) == {offset}, \"{t}.{rust}: Rust says offset {offset}\");"
            ));
            if let Some(size) = f.size {
                out.push(format!(
                    "_Static_assert(sizeof((({t} *)0)->{c}) == {size}, \"{t}.{rust}: Rust says size {size}\");"
                ));
            }
        }
    }
    out
}

fn scalar_asserts(scalars: &[Scalar]) -> Vec<String> {
    let mut out = Vec::new();
    for s in scalars {
        let (t, size) = (s.c_type, s.size);
        out.push(format!("_Static_assert(sizeof({t}) == {size}, \"sizeof {t}: Rust says {size}\");"));
        if let Some(signed) = s.signed {
            let word = if signed { "signed" } else { "unsigned" };
            out.push(format!(
                "_Static_assert((({t})-1 < 0) == {}, \"{t}: Rust says {word}\");",
                u8::from(signed)
            ));
        }
    }
    out
}

fn prototype_asserts(prototypes: &[Prototype]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in prototypes.iter().enumerate() {
        let (expr, c_type) = (p.c_expr, p.c_type);
        let declarator = c_type.replacen("*)", &format!("*wsktls_prototype_{i})"), 1);
        assert_ne!(declarator, c_type, "{expr}: a C function-pointer type has a `*)`");
        out.push(format!("typedef {declarator};"));
        out.push(format!(
            "_Static_assert(__builtin_types_compatible_p(__typeof__({expr}), wsktls_prototype_{i}), \
             \"{expr}: Rust says {c_type}\");"
        ));
    }
    out
}

fn constant_asserts(constants: &[Constant]) -> Vec<String> {
    constants
        .iter()
        .map(|k| {
            let (expr, value) = (&k.c_expr, k.value);
            format!("_Static_assert((long long)({expr}) == {value}LL, \"{expr}: Rust says {value} ({value:#x})\");")
        })
        .collect()
}

/// Each structure's layout, then its members' types.
fn published_asserts(structures: &[Published]) -> Vec<String> {
    let mut out = Vec::new();
    for p in structures {
        out.extend(layout_asserts(std::slice::from_ref(&p.layout)));
        let t = p.layout.c_type;
        for m in &p.members {
            let (member, c_type) = (m.rust, m.c_type);
            out.push(format!(
                "_Static_assert(__builtin_types_compatible_p(__typeof__((({t} *)0)->{member}), {c_type}), \
                 \"{t}.{member}: Rust says {c_type}\");"
            ));
        }
    }
    out
}

/// A GUID object's value is no constant expression, so the header's own DEFINE_GUID line
/// is checked instead: these lines, placed just before the header, redefine DEFINE_GUID
/// so that each use becomes static asserts of its arguments, member by member (cast to
/// the GUID member's type, as the initializer would convert them), plus a typedef that
/// `guid_declared_asserts` requires. A DEFINE_GUID with no Rust row expands to a call of
/// an undefined macro, which does not compile.
fn guid_hooks(guids: &[Guid]) -> Vec<String> {
    const ARGS: [&str; 11] = ["l", "w1", "w2", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"];
    let args = ARGS.join(", ");
    let mut out = vec![
        "#undef DEFINE_GUID".to_owned(),
        format!(
            "#define DEFINE_GUID(name, {args}) wsktls_guid_##name({args}) typedef int wsktls_guid_declared_##name"
        ),
    ];
    for g in guids {
        let v = &g.value;
        let mut members = vec![
            ("Data1".to_owned(), u64::from(v.Data1)),
            ("Data2".to_owned(), u64::from(v.Data2)),
            ("Data3".to_owned(), u64::from(v.Data3)),
        ];
        members.extend(v.Data4.iter().enumerate().map(|(i, &b)| (format!("Data4[{i}]"), u64::from(b))));
        let name = g.name;
        let checks: Vec<String> = members
            .iter()
            .zip(ARGS)
            .map(|((member, value), arg)| {
                format!(
                    "_Static_assert((__typeof__(((GUID *)0)->{member}))({arg}) == {value:#x}ULL, \
                     \"{name}.{member}: Rust says {value:#x}\");"
                )
            })
            .collect();
        out.push(format!("#define wsktls_guid_{name}({args}) {}", checks.join(" ")));
    }
    out
}

/// After the header: each GUID went through DEFINE_GUID (and so through its checks).
fn guid_declared_asserts(guids: &[Guid]) -> Vec<String> {
    guids
        .iter()
        .map(|g| {
            let name = g.name;
            format!(
                "_Static_assert(sizeof(wsktls_guid_declared_{name}) == sizeof(int), \
                 \"{name}: declared with DEFINE_GUID\");"
            )
        })
        .collect()
}

/// Compiles `asserts` after `headers` with the Windows x64 compiler. `Err` holds the
/// compiler's diagnostics. Panics (never skips) if the compiler or headers are missing.
fn compile(unit: &str, headers: &[&str], asserts: &[String]) -> Result<(), String> {
    compile_unit(unit, headers, &[], asserts, &[])
}

/// `compile`, with `hooks` (C lines placed just before the last header, the one under
/// test) and extra compiler `flags`.
fn compile_unit(
    unit: &str,
    headers: &[&str],
    hooks: &[String],
    asserts: &[String],
    flags: &[&str],
) -> Result<(), String> {
    assert!(
        Path::new(DDK_HEADERS).join("wdm.h").is_file(),
        "MinGW's DDK headers are missing ({DDK_HEADERS}/wdm.h): install {PACKAGES}"
    );
    let mut source = String::from(
        "/* Generated by wsktls's tests/layout.rs from the Rust declarations. */\n\
         #if !defined(_WIN64) || !defined(__x86_64__)\n\
         #error \"not a Windows x64 compiler\"\n\
         #endif\n",
    );
    for (i, h) in headers.iter().enumerate() {
        if i + 1 == headers.len() {
            for line in hooks {
                source += line;
                source += "\n";
            }
        }
        source += &format!("#include {h}\n");
    }
    source += "#include <stddef.h>\n\
               _Static_assert(sizeof(void *) == 8, \"x64: pointers are 64 bits\");\n\
               _Static_assert(sizeof(LONG) == 4, \"Windows: LONG is 32 bits\");\n";
    for a in asserts {
        source += a;
        source += "\n";
    }

    static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wsktls-layout-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let file = dir.join(format!("{unit}.c"));
    std::fs::write(&file, &source).expect("write the generated C");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(COMPILER)
        .arg("-fsyntax-only")
        .args(flags)
        .arg("-I")
        .arg(DDK_HEADERS)
        .arg("-I")
        .arg(root.join("tests/layout"))
        .arg("-I")
        .arg(root.join("src/interface"))
        .arg(&file)
        .output();
    std::fs::remove_dir_all(&dir).expect("remove the temporary directory");
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "{COMPILER} not found: the layout test needs a Windows x64 C compiler and MinGW's \
             headers; install the Debian packages {PACKAGES}"
        ),
        Err(e) => panic!("could not run {COMPILER}: {e}"),
    };
    if output.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&output.stderr).into_owned()) }
}

/// `compile`, failing the test with the compiler's diagnostics.
fn check(unit: &str, headers: &[&str], asserts: &[String]) {
    check_unit(unit, headers, &[], asserts, &[]);
}

/// `compile_unit`, failing the test with the compiler's diagnostics.
fn check_unit(unit: &str, headers: &[&str], hooks: &[String], asserts: &[String], flags: &[&str]) {
    if let Err(diagnostics) = compile_unit(unit, headers, hooks, asserts, flags) {
        panic!("the Rust declarations differ from the C ones ({unit}):\n{diagnostics}");
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn nt_structures_match_mingw_ddk_headers() {
    let mut asserts = layout_asserts(&nt_layouts());
    asserts.extend(scalar_asserts(&nt_scalars()));
    check("nt_structures", NT_HEADERS, &asserts);
}

#[test]
fn prototypes_match_mingw_ddk_headers() {
    check("nt_prototypes", NT_HEADERS, &prototype_asserts(&nt_prototypes()));
}

#[test]
fn status_codes_match_ntstatus_h() {
    assert!(!DECLARED_STATUSES.is_empty());
    check("status_codes", NT_HEADERS, &constant_asserts(&status_constants()));
}

#[test]
fn nt_constants_match_mingw_ddk_headers() {
    check("nt_constants", NT_HEADERS, &constant_asserts(&nt_constants()));
}

#[test]
fn xstate_masks_match_mingw_winnt_h() {
    check("xstate_masks", WINNT_HEADERS, &constant_asserts(&xstate_mask_constants()));
}

#[test]
fn schannel_statuses_match_winerror_h() {
    assert!(!SECURITY_STATUSES.is_empty());
    check("security_statuses", WINNT_HEADERS, &constant_asserts(&security_status_constants()));
}

#[test]
fn cng_rng_flags_match_mingw_bcrypt_h() {
    check("cng_constants", CNG_HEADERS, &constant_asserts(&cng_constants()));
}

#[test]
fn wsk_structures_match_documented_wsk_h() {
    check("wsk_structures", WSK_HEADERS, &layout_asserts(&wsk_layouts()));
}

#[test]
fn socket_addresses_match_mingw_winsock_headers() {
    let mut asserts = layout_asserts(&socket_address_layouts());
    asserts.extend(scalar_asserts(&socket_scalars()));
    asserts.extend(constant_asserts(&socket_constants()));
    check("socket_addresses", WINSOCK_HEADERS, &asserts);
}

/// wsk.h's constants, which MinGW does not have, against the documented values.
#[test]
fn wsk_constants_have_their_documented_values() {
    assert_eq!(WSK_FLAG_NODELAY, 0x2);
    assert_eq!(WSK_FLAG_WAITALL, 0x2);
    assert_eq!(WSK_FLAG_DRAIN, 0x4);
    assert_eq!(WSK_FLAG_ABORTIVE, 0x1);
    assert_eq!(WSK_FLAG_AT_DISPATCH_LEVEL, 0x8);
    assert_eq!(WSK_FLAG_BASIC_SOCKET, 0x0);
    assert_eq!(WSK_FLAG_LISTEN_SOCKET, 0x1);
    assert_eq!(WSK_FLAG_CONNECTION_SOCKET, 0x2);
    assert_eq!(WSK_FLAG_DATAGRAM_SOCKET, 0x4);
    assert_eq!(WSK_FLAG_STREAM_SOCKET, 0x8);
    assert_eq!(WSK_NO_WAIT, 0);
    assert_eq!(WSK_INFINITE_WAIT, 0xFFFF_FFFF);
    assert_eq!((WskSetOption, WskGetOption, WskIoctl), (0, 1, 2));
    assert_eq!(WSK_VERSION_1_0, 0x0100);
    assert_eq!(IOC_WSK, 0x0F00_0000);
    assert_eq!(SIO_WSK_QUERY_IDEAL_SEND_BACKLOG, 0x4F00_0003);
    assert_eq!(SIO_WSK_QUERY_RECEIVE_BACKLOG, 0x4F00_0004);
}

/// wdm.h constants newer than MinGW's copy, against the documented values.
#[test]
fn pool_flags_and_mdl_mapping_flags_have_their_documented_values() {
    assert_eq!(POOL_FLAG_USE_QUOTA, 0x1);
    assert_eq!(POOL_FLAG_UNINITIALIZED, 0x2);
    assert_eq!(POOL_FLAG_SESSION, 0x4);
    assert_eq!(POOL_FLAG_CACHE_ALIGNED, 0x8);
    assert_eq!(POOL_FLAG_RAISE_ON_FAILURE, 0x20);
    assert_eq!(POOL_FLAG_NON_PAGED, 0x40);
    assert_eq!(POOL_FLAG_NON_PAGED_EXECUTE, 0x80);
    assert_eq!(POOL_FLAG_PAGED, 0x100);
    assert_eq!(MdlMappingNoExecute, 0x4000_0000);
}

/// A few well-known x64 numbers, stated outright.
#[test]
fn well_known_x64_sizes_and_offsets_hold() {
    assert_eq!(size_of::<IRP>(), 208);
    assert_eq!(size_of::<MDL>(), 48);
    assert_eq!(size_of::<IO_STACK_LOCATION>(), 72);
    assert_eq!(offset_of!(IRP, IoStatus), 48);
    assert_eq!(offset_of!(IRP, Tail.Overlay.CurrentStackLocation), 184);
    assert_eq!(offset_of!(IO_STACK_LOCATION, CompletionRoutine), 56);
    assert_eq!(IoSizeOfIrp(2), 208 + 2 * 72);
    assert_eq!(size_of::<XSTATE_SAVE>(), 56);
    assert_eq!(offset_of!(XSTATE_SAVE, XStateContext), 24);
    assert_eq!(size_of::<UNICODE_STRING>(), 16);
    assert_eq!(size_of::<DRIVER_OBJECT>(), 0x150);
    assert_eq!(offset_of!(DRIVER_OBJECT, DriverUnload), 0x68);
    assert_eq!(offset_of!(DRIVER_OBJECT, MajorFunction), 0x70);
    // DEVICE_OBJECT is DECLSPEC_ALIGN(16) in the WDK, which MinGW's header leaves out (so
    // its size, 0x148 there, cannot be compared); the offsets are MinGW's.
    assert_eq!((size_of::<DEVICE_OBJECT>(), align_of::<DEVICE_OBJECT>()), (0x150, 16));
    assert_eq!(offset_of!(DEVICE_OBJECT, Flags), 48);
    assert_eq!(offset_of!(DEVICE_OBJECT, DeviceExtension), 64);
    assert_eq!(offset_of!(DEVICE_OBJECT, StackSize), 76);
    assert_eq!(offset_of!(DEVICE_OBJECT, AlignmentRequirement), 152);
    assert_eq!(offset_of!(DEVICE_OBJECT, Dpc), 200);
    assert_eq!(offset_of!(DEVICE_OBJECT, SecurityDescriptor), 272);
    assert_eq!(offset_of!(DEVICE_OBJECT, DeviceLock), 280);
    assert_eq!(offset_of!(DEVICE_OBJECT, SectorSize), 304);
    assert_eq!(offset_of!(DEVICE_OBJECT, Reserved), 320);
    assert_eq!(size_of::<FILE_OBJECT>(), 216);
    assert_eq!(offset_of!(FILE_OBJECT, FsContext2), 32);
    assert_eq!(KERNEL_STACK_SIZE, 0x6000);
    assert_eq!(MAXIMUM_EXPANSION_SIZE, 0x12000 - 0x800);
}

/// DbgPrintEx's documented limit: one call transmits at most 512 bytes.
#[test]
fn debug_print_limit_is_the_documented_512_bytes() {
    assert_eq!(DEBUG_PRINT_LIMIT, 512);
}

/// The check is not vacuous: one wrong offset among the real ones fails the compile, and
/// the diagnostic names the field.
#[test]
fn layout_check_rejects_a_wrong_offset() {
    let mut layouts = nt_layouts();
    let irp = layouts.iter_mut().find(|l| l.c_type == "IRP").expect("IRP is checked");
    let io_status = irp.fields.iter_mut().find(|f| f.rust == "IoStatus").expect("IRP.IoStatus is checked");
    assert_eq!(io_status.offset, 48);
    io_status.offset = 56;

    let diagnostics = compile("wrong_offset", NT_HEADERS, &layout_asserts(&layouts))
        .expect_err("IRP.IoStatus claimed at 56 must not compile");
    println!("{diagnostics}");
    assert!(diagnostics.contains("IRP.IoStatus: Rust says offset 56"), "{diagnostics}");
    assert_eq!(diagnostics.matches("static assertion failed").count(), 1, "{diagnostics}");
}

/// Likewise for prototypes: one parameter of the wrong width fails, named.
#[test]
fn layout_check_rejects_a_wrong_prototype() {
    let mut prototypes = nt_prototypes();
    let expand = prototypes
        .iter_mut()
        .find(|p| p.c_expr == "&KeExpandKernelStackAndCallout")
        .expect("KeExpandKernelStackAndCallout is checked");
    expand.c_type = "NTSTATUS (NTAPI *)(PEXPAND_STACK_CALLOUT, PVOID, ULONG)";

    let diagnostics = compile("wrong_prototype", NT_HEADERS, &prototype_asserts(&prototypes))
        .expect_err("a ULONG Size must not compile");
    println!("{diagnostics}");
    assert!(diagnostics.contains("&KeExpandKernelStackAndCallout: Rust says"), "{diagnostics}");
    assert_eq!(diagnostics.matches("static assertion failed").count(), 1, "{diagnostics}");
}

/// Likewise for constants: one wrong NTSTATUS value fails, named.
#[test]
fn layout_check_rejects_a_wrong_status_code() {
    let mut statuses = status_constants();
    let pending = statuses
        .iter_mut()
        .find(|k| k.c_expr == "(NTSTATUS)STATUS_PENDING")
        .expect("STATUS_PENDING is checked");
    pending.value = 0x104;

    let diagnostics = compile("wrong_status", NT_HEADERS, &constant_asserts(&statuses))
        .expect_err("STATUS_PENDING claimed as 0x104 must not compile");
    println!("{diagnostics}");
    assert!(diagnostics.contains("(NTSTATUS)STATUS_PENDING: Rust says 260"), "{diagnostics}");
    assert_eq!(diagnostics.matches("static assertion failed").count(), 1, "{diagnostics}");
}

#[test]
fn wsktls_h_structures_match_the_rust_interface() {
    check("wsktls_structures", WSKTLS_HEADERS, &published_asserts(&wsktls_structures()));
}

#[test]
fn wsktls_h_prototypes_match_the_rust_interface() {
    check("wsktls_prototypes", WSKTLS_HEADERS, &prototype_asserts(&wsktls_prototypes()));
}

#[test]
fn wsktls_h_values_and_guid_match_the_rust_interface() {
    let guids = wsktls_guids();
    let mut asserts = constant_asserts(&wsktls_constants());
    asserts.extend(guid_declared_asserts(&guids));
    check_unit("wsktls_values", WSKTLS_HEADERS, &guid_hooks(&guids), &asserts, &[]);
}

/// As a consumer builds it: C11 with -Wall -Wextra as errors, included twice, and after
/// <initguid.h>, so the real DEFINE_GUID defines the GUID object.
#[test]
fn wsktls_h_compiles_warning_free_and_defines_its_guid() {
    let headers = ["<ntddk.h>", "\"wsk_documented.h\"", "<initguid.h>", "\"wsktls.h\"", "\"wsktls.h\""];
    let asserts =
        ["_Static_assert(__builtin_types_compatible_p(__typeof__(GUID_DEVINTERFACE_WSKTLS), const GUID), \
                    \"GUID_DEVINTERFACE_WSKTLS: a const GUID\");"
            .to_owned()];
    check_unit("wsktls_warnings", &headers, &[], &asserts, &["-std=c11", "-Wall", "-Wextra", "-Werror"]);
}

/// The wsktls.h checks are not vacuous: one wrong offset among the real ones fails, named.
#[test]
fn wsktls_h_check_rejects_a_wrong_offset() {
    let mut structures = wsktls_structures();
    let parameters = structures
        .iter_mut()
        .find(|p| p.layout.c_type == "WSKTLS_CONNECT_PARAMETERS")
        .expect("WSKTLS_CONNECT_PARAMETERS is checked");
    let anchors =
        parameters.layout.fields.iter_mut().find(|f| f.rust == "TrustAnchors").expect("TrustAnchors");
    anchors.offset += 8;
    let claim = format!("WSKTLS_CONNECT_PARAMETERS.TrustAnchors: Rust says offset {}", anchors.offset);

    let diagnostics = compile("wsktls_wrong_offset", WSKTLS_HEADERS, &published_asserts(&structures))
        .expect_err("a wrong TrustAnchors offset must not compile");
    println!("{diagnostics}");
    assert!(diagnostics.contains(&claim), "{diagnostics}");
    assert_eq!(diagnostics.matches("static assertion failed").count(), 1, "{diagnostics}");
}

/// A field Rust has and the header lacks fails: by name, and by the structure's size.
#[test]
fn wsktls_h_check_rejects_a_field_the_header_lacks() {
    let mut structures = wsktls_structures();
    let request = structures
        .iter_mut()
        .find(|p| p.layout.c_type == "WSKTLS_PROVIDER_REQUEST")
        .expect("WSKTLS_PROVIDER_REQUEST is checked");
    assert_eq!(request.layout.size, 8);
    request.layout.size = 12;
    request.layout.fields.push(Field {
        rust: "Flags".to_owned(),
        c: "Flags".to_owned(),
        offset: 8,
        size: Some(4),
    });
    request.members.push(Member { rust: "Flags", c_type: "ULONG" });

    let diagnostics = compile("wsktls_missing_field", WSKTLS_HEADERS, &published_asserts(&structures))
        .expect_err("a field the header lacks must not compile");
    println!("{diagnostics}");
    assert!(diagnostics.contains("sizeof WSKTLS_PROVIDER_REQUEST: Rust says 12"), "{diagnostics}");
    assert!(
        diagnostics.lines().any(|l| l.contains("has no member named") && l.contains("Flags")),
        "{diagnostics}"
    );
}

/// A member of the right size but the wrong type (signedness here) fails, named.
#[test]
fn wsktls_h_check_rejects_a_wrong_member_type() {
    let mut structures = wsktls_structures();
    let npi = structures
        .iter_mut()
        .find(|p| p.layout.c_type == "WSKTLS_PROVIDER_NPI")
        .expect("WSKTLS_PROVIDER_NPI is checked");
    npi.members.iter_mut().find(|m| m.rust == "Version").expect("Version").c_type = "SHORT";

    let diagnostics = compile("wsktls_wrong_member_type", WSKTLS_HEADERS, &published_asserts(&structures))
        .expect_err("a SHORT Version must not compile");
    println!("{diagnostics}");
    assert!(diagnostics.contains("WSKTLS_PROVIDER_NPI.Version: Rust says SHORT"), "{diagnostics}");
    assert_eq!(diagnostics.matches("static assertion failed").count(), 1, "{diagnostics}");
}

/// One wrong byte of the GUID fails, named, through the header's own DEFINE_GUID line.
#[test]
fn wsktls_h_check_rejects_a_wrong_guid() {
    let mut guids = wsktls_guids();
    guids[0].value.Data4[7] ^= 1;
    let claim = format!("GUID_DEVINTERFACE_WSKTLS.Data4[7]: Rust says {:#x}", guids[0].value.Data4[7]);

    let diagnostics = compile_unit(
        "wsktls_wrong_guid",
        WSKTLS_HEADERS,
        &guid_hooks(&guids),
        &guid_declared_asserts(&guids),
        &[],
    )
    .expect_err("a wrong GUID byte must not compile");
    println!("{diagnostics}");
    assert!(diagnostics.contains(&claim), "{diagnostics}");
    assert_eq!(diagnostics.matches("static assertion failed").count(), 1, "{diagnostics}");
}
