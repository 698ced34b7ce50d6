//! Fault injection: what the simulated transport and allocator do wrong on purpose.
//! Every random decision comes from the kernel's seeded generator.

use std::time::Duration;

/// The allocation sites ntsim can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocKind {
    Pool,
    Irp,
    Mdl,
}

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// WskSend never completes inline: every send returns STATUS_PENDING.
    pub pend_every_send: bool,
    /// WskReceive never completes inline.
    pub pend_every_receive: bool,
    /// Asynchronous completions are held back by a random delay in this range.
    pub completion_delay: Option<(Duration, Duration)>,
    /// The provider writes each send to TCP in random pieces, completing after the last.
    pub split_sends: bool,
    /// Receives complete with a random part (at least one byte) of what is available.
    pub split_receives: bool,
    /// After this many bytes have been sent on a socket, the provider force-closes it.
    pub forced_close_after_bytes: Option<u64>,
    /// Completions that happen inline (on the caller's thread) run at DISPATCH_LEVEL too,
    /// so a completion routine that assumes PASSIVE_LEVEL is caught on every path.
    pub dispatch_level_completions: bool,
    /// Connects never answer; they end only when cancelled.
    pub connect_never_answers: bool,
    /// Allocations of these kinds fail with this probability.
    pub fail_allocations: Option<(AllocKind, f64)>,
    /// A throttled transport: the provider's TCP sockets get this send buffer (SO_SNDBUF,
    /// set when the socket is made; Linux doubles the value and keeps at least about
    /// 4.5 KiB). WskSend then rarely finishes inline, and a peer that reads slowly holds
    /// sends pending after a few KiB instead of after megabytes of autotuned buffer. The
    /// ideal send backlog the provider reports shrinks with it.
    pub send_buffer_bytes: Option<usize>,
    /// Connections that break or stall at random moments: see [`Breaks`].
    pub breaks: Option<Breaks>,
}

/// What can happen to a connected socket's connection, drawn once per WskSend and
/// WskReceive the connection takes (not one refused at once) from the socket's seeded
/// generator: each field is the chance that the request is the one it happens under. The
/// request is queued first, so it meets the fault with whatever else is pending.
#[derive(Clone, Debug, Default)]
pub struct Breaks {
    /// The connection is reset: pending and later requests fail with
    /// STATUS_CONNECTION_RESET, and the peer sees an RST.
    pub reset: f64,
    /// The transport goes away: pending and later requests fail with
    /// STATUS_FILE_FORCED_CLOSED (as [`crate::Kernel::force_close_sockets`] does to all).
    pub forced_close: f64,
    /// Nothing moves on the connection for a while: no byte is written or read and
    /// nothing completes, then it carries on.
    pub stall: f64,
    /// How long a stall lasts: uniform in this range.
    pub stall_time: (Duration, Duration),
}

impl Faults {
    /// Every send pends and completes late, some in pieces; receives split too.
    pub fn hostile_transport() -> Faults {
        Faults {
            pend_every_send: true,
            pend_every_receive: true,
            completion_delay: Some((Duration::from_micros(50), Duration::from_millis(2))),
            split_sends: true,
            split_receives: true,
            dispatch_level_completions: true,
            ..Faults::default()
        }
    }
}

/// The allocation [`crate::Kernel::fail_allocation`] made fail: which attempt, of what,
/// and where it was asked for (resolved only if printed).
#[derive(Debug)]
pub struct InjectedFailure {
    pub attempt: u64,
    pub kind: AllocKind,
    /// The pool tag asked for, for pool allocations.
    pub tag: Option<String>,
    pub site: std::backtrace::Backtrace,
}

impl std::fmt::Display for InjectedFailure {
    /// The attempt, its kind and tag, and the first frames of the caller's stack that are
    /// neither ntsim's nor the standard library's: the allocation site.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "allocation attempt {} ({:?}", self.attempt, self.kind)?;
        if let Some(tag) = &self.tag {
            write!(f, " '{tag}'")?;
        }
        write!(f, ")")?;
        let trace = self.site.to_string();
        let frames = trace.lines().map(str::trim).filter(|l| {
            l.contains("wsktls::") && !l.starts_with("at ") || l.starts_with("at ") && l.contains("/src/")
        });
        for line in frames.take(6) {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

/// Whether this allocation of `kind` (of pool tag `tag`) should fail: it is the attempt
/// [`crate::Kernel::fail_allocation`] named, or `Faults::fail_allocations` says so. Every
/// call counts as an attempt.
pub(crate) fn allocation_fails(kind: AllocKind, tag: Option<u32>) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let k = crate::kernel::current();
    let attempt = k.counters.allocation_attempts.fetch_add(1, Relaxed);
    let fail = if attempt == k.fail_at.load(Relaxed) {
        let tag = tag.map(crate::pool::tag_text);
        let site = std::backtrace::Backtrace::force_capture();
        *crate::kernel::lock(&k.injected) = Some(InjectedFailure { attempt, kind, tag, site });
        true
    } else {
        match k.faults().fail_allocations {
            Some((which, p)) => which == kind && k.with_rng(|r| r.chance(p)),
            None => false,
        }
    };
    if fail {
        k.counters.allocations_failed.fetch_add(1, Relaxed);
    }
    fail
}
