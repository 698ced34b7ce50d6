//! What Driver Verifier would stop the machine for, recorded instead so a test can
//! assert it. A kernel with a report it was not told to expect fails its test on drop.

use std::fmt;

/// The rules ntsim checks. Each names one thing a driver must never do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// An MDL was freed while an IRP that carries it was in flight.
    MdlFreedInFlight,
    /// Pool that an in-flight IRP's MDL chain describes was freed.
    BufferFreedInFlight,
    /// The bytes of an in-flight send changed before the send completed.
    InFlightBufferWritten,
    /// An IRP was completed after it had already completed.
    IrpCompletedTwice,
    /// An IRP was still allocated when the kernel shut down.
    IrpLeaked,
    /// An IRP was freed, reused or submitted again while in flight.
    IrpInFlightMisuse,
    /// An IRP completed or reused with a cancel routine still set.
    CancelRoutineStillSet,
    /// A completed IRP was handed to WSK again without `IoReuseIrp`.
    IrpSubmittedWithoutReuse,
    /// The I/O manager ran out of stack locations: a driver-allocated IRP's completion
    /// routine did not return STATUS_MORE_PROCESSING_REQUIRED.
    CompletionFellThrough,
    /// A function was called above the IRQL it allows.
    IrqlTooHigh,
    /// IRQL raised or lowered the wrong way, or a routine returned at another IRQL.
    IrqlMismatch,
    /// Pool was still allocated when the kernel shut down.
    PoolLeak,
    /// A free of memory that is not a live pool block, or with the wrong tag.
    BadPoolFree,
    /// A WSK_BUF's Offset + Length reaches beyond its MDL chain.
    WskBufBeyondChain,
    /// An MDL in a request is not locked, not built, or describes freed memory.
    BadMdl,
    /// MmBuildMdlForNonPagedPool on memory that is not nonpaged pool.
    MdlNotNonPagedPool,
    /// An MDL was still allocated when the kernel shut down.
    MdlLeaked,
    /// WskCloseSocket while another call on the socket was in progress.
    CloseWithCallInProgress,
    /// A call on a socket that was closed (or never existed).
    SocketUsedAfterClose,
    /// A socket was still open when the kernel shut down.
    SocketLeaked,
    /// WSK registration misuse: a capture not released, a registration not deregistered,
    /// a deregistration that would wait forever, a capture that waits inside DriverEntry.
    WskRegistration,
    /// A timer freed while set (or a DPC's memory freed while it runs), or still set at
    /// unload, where it would fire into an unloaded driver.
    TimerMisuse,
    /// A work item queued again before its routine started, freed while queued, or never
    /// freed.
    WorkItemMisuse,
    /// A spin lock acquired twice by one thread, or released by one that does not hold it.
    SpinLockMisuse,
    /// A connect to an address outside loopback (ntsim never sends such traffic).
    NonLoopbackAddress,
    /// A request ntsim models but whose parameters are invalid (wrong type, NULL IRP...).
    BadParameter,
    /// BCryptGenRandom with BCRYPT_USE_SYSTEM_PREFERRED_RNG above PASSIVE_LEVEL, where
    /// kernel-mode CNG does not support the system-preferred RNG.
    RngAboveAllowedIrql,
    /// Extended processor state restored out of order (not the thread's innermost active
    /// save), on another thread or at another IRQL than its save, or never saved; a save
    /// nested at a lower IRQL than the one enclosing it; an XSTATE_SAVE saved into while
    /// active, or changed between its save and its restore.
    ExtendedStateMisuse,
    /// An extended-state save still active when the routine that made it returned (a DPC,
    /// work item or completion routine), or at unload: the next code on that processor
    /// would run with the driver's vector registers.
    ExtendedStateNotRestored,
    /// AddDevice returned success with a device it created still marked
    /// DO_DEVICE_INITIALIZING: the I/O manager would refuse every open of it.
    DeviceStillInitializing,
    /// A device object deleted twice, deleted while still attached to a lower device, used
    /// after its memory was freed, or still alive at shutdown.
    DeviceObjectMisuse,
    /// IofCallDriver with no stack location left for the device the IRP is sent to.
    NoIrpStackLocation,
    /// A dispatch routine returned STATUS_PENDING without IoMarkIrpPending: the I/O
    /// manager's completion would not know the IRP pended.
    PendingNotMarked,
    /// An IRP that ntsim sent and waits for (PnP, create, cleanup, close) did not complete.
    IrpNeverCompleted,
    /// After IRP_MN_REMOVE_DEVICE returned, the driver's device was still attached to the
    /// physical device object.
    AttachedAfterRemove,
    /// After IRP_MN_REMOVE_DEVICE returned, an interface of the device was still enabled.
    InterfaceEnabledAfterRemove,
    /// An interface name from IoRegisterDeviceInterface never freed, or RtlFreeUnicodeString
    /// of a buffer ntsim did not allocate.
    UnicodeStringMisuse,
    /// A PnP notification registration still held when its driver unloaded (or at
    /// shutdown), unregistered from inside its own callback, or unknown.
    NotificationMisuse,
    /// A registry key handle left open when its driver unloaded (or at shutdown), or a
    /// handle closed or queried that is not open.
    RegistryHandleMisuse,
    /// ObfDereferenceObject of an object with no reference to give up, or a file object
    /// still referenced at shutdown.
    ObjectReferenceMisuse,
    /// Pool of a watched tag was freed still holding a secret the test named (plaintext it
    /// sent, a traffic secret or key): `Kernel::watch_secrets`.
    SecretLeftBehind,
    /// The driver called KeBugCheckEx: the machine stops. ntsim records the code and the
    /// four parameters, prints them to stderr and aborts the process.
    BugCheck,
}

/// One verifier finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub rule: Rule,
    pub detail: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.rule, self.detail)
    }
}

/// Records a finding against the kernel this thread is in.
pub(crate) fn report(rule: Rule, detail: impl Into<String>) {
    let detail = detail.into();
    eprintln!("ntsim verifier: {rule:?}: {detail}");
    if std::env::var_os("NTSIM_REPORT_BACKTRACE").is_some() {
        eprintln!("{}", std::backtrace::Backtrace::force_capture());
    }
    crate::kernel::current().record(Report { rule, detail });
}
