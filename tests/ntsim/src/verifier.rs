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
    crate::kernel::current().record(Report { rule, detail });
}
