//! Clocks: the system time (wall clock, for certificate validity) and the interrupt time
//! (monotonic, for timeouts and rates). Both in 100 ns units and readable at any IRQL.

use crate::LARGE_INTEGER;

/// 100 ns intervals per second.
pub const SYSTEM_TIME_UNITS_PER_SECOND: i64 = 10_000_000;

/// The Unix epoch (1970-01-01 00:00 UTC) as a system time: 100 ns intervals since
/// 1601-01-01 00:00 UTC (369 years, 89 of them leap years).
pub const UNIX_EPOCH_AS_SYSTEM_TIME: i64 = 116_444_736_000_000_000;

unsafe extern "system" {
    /// Writes the current system time to `CurrentTime`: 100 ns intervals since
    /// 1601-01-01 UTC, accurate to a microsecond. Any IRQL. (Windows 8 and later.)
    pub fn KeQuerySystemTimePrecise(CurrentTime: *mut LARGE_INTEGER);

    /// Returns the interrupt time: 100 ns intervals since the system started, accurate
    /// to a microsecond and unaffected by changes of the system time. Writes the
    /// performance-counter value it interpolated from to `QpcTimeStamp`. Any IRQL.
    /// (Windows 8.1 and later.)
    pub fn KeQueryInterruptTimePrecise(QpcTimeStamp: *mut u64) -> u64;
}

/// Whole seconds since the Unix epoch, from the system time; `None` if the clock reads
/// before 1970. Any IRQL (so also at DISPATCH_LEVEL).
pub fn unix_time_seconds() -> Option<u64> {
    let mut now: LARGE_INTEGER = 0;
    // SAFETY: the function writes one LARGE_INTEGER to our local; callable at any IRQL.
    unsafe { KeQuerySystemTimePrecise(&mut now) };
    system_time_to_unix_seconds(now)
}

/// Converts a system time (100 ns since 1601-01-01 UTC) to whole seconds since the Unix
/// epoch; `None` before 1970.
pub const fn system_time_to_unix_seconds(system_time: LARGE_INTEGER) -> Option<u64> {
    match system_time.checked_sub(UNIX_EPOCH_AS_SYSTEM_TIME) {
        Some(since_epoch) if since_epoch >= 0 => Some((since_epoch / SYSTEM_TIME_UNITS_PER_SECOND) as u64),
        _ => None,
    }
}

/// The interrupt time in 100 ns units: monotonic, for measuring intervals. Any IRQL (so
/// also at DISPATCH_LEVEL).
pub fn interrupt_time_100ns() -> u64 {
    let mut qpc = 0u64;
    // SAFETY: the function writes one ULONG64 to our local; callable at any IRQL.
    unsafe { KeQueryInterruptTimePrecise(&mut qpc) }
}
