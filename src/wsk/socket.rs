//! One connected WSK socket.
//!
//! Every call on the socket holds rundown protection for as long as the call runs (not
//! for as long as its IRP is pending): WSK forbids WskCloseSocket while another call is in
//! progress, but allows it with IRPs pending, which it cancels. `close` waits for the
//! rundown, then closes with an IRP allocated at connect time, so closing cannot fail.

use core::cell::UnsafeCell;
use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, Ordering};

use super::TAG_SOCKET;
use super::irp::{Irp, Outcome};
use super::span::Span;
use crate::nt::{
    EX_RUNDOWN_REF, ExAcquireRundownProtection, ExInitializeRundownProtection, ExReleaseRundownProtection,
    ExWaitForRundownProtectionRelease, IPPROTO_TCP, IRP, NTSTATUS, PoolBox, SIO_WSK_QUERY_IDEAL_SEND_BACKLOG,
    SIZE_T, SOCK_STREAM, STATUS_CANCELLED, STATUS_FILE_FORCED_CLOSED, STATUS_IO_TIMEOUT, STATUS_UNSUCCESSFUL,
    WSK_BUF, WSK_FLAG_NODELAY, WSK_PROVIDER_CONNECTION_DISPATCH, WSK_PROVIDER_NPI, WSK_SOCKET, WinAddr,
    WskIoctl,
};

pub(crate) struct SocketCore {
    wsk: *mut WSK_SOCKET,
    dispatch: *const WSK_PROVIDER_CONNECTION_DISPATCH,
    /// Calls in progress on the socket. Written by the Ex*Rundown* functions through
    /// shared references, hence the cell.
    rundown: UnsafeCell<EX_RUNDOWN_REF>,
    /// The connect IRP, kept for WskCloseSocket.
    close_irp: Irp,
    /// WskCloseSocket has been called (or is running).
    closed: AtomicBool,
}

/// A connected TCP socket. Dropping it closes it (PASSIVE_LEVEL).
pub struct Socket {
    core: PoolBox<SocketCore>,
}

// SAFETY: WSK sockets may be used from any thread; the rundown reference orders close
// after every call.
unsafe impl Send for Socket {}
// SAFETY: as above; shared calls only read the socket pointers.
unsafe impl Sync for Socket {}

impl Socket {
    /// WskSocketConnect with a timeout (PASSIVE_LEVEL). A connect still pending when the
    /// time is up is cancelled and reported as STATUS_IO_TIMEOUT.
    pub(crate) fn connect(
        npi: &WSK_PROVIDER_NPI,
        remote: SocketAddr,
        timeout_ms: u32,
    ) -> Result<Socket, NTSTATUS> {
        // Everything the socket needs is allocated before it exists, so nothing can fail
        // once it is connected.
        let close_irp = Irp::allocate()?;
        let empty = SocketCore {
            wsk: core::ptr::null_mut(),
            dispatch: core::ptr::null(),
            rundown: UnsafeCell::new(EX_RUNDOWN_REF { Count: 0 }),
            close_irp,
            closed: AtomicBool::new(false),
        };
        let mut core = PoolBox::new(TAG_SOCKET, empty)?;
        let mut remote = WinAddr::new(remote);
        let mut local = remote.any_like();
        // SAFETY: a valid captured NPI; its dispatch table is the provider's.
        let socket_connect = unsafe { (*npi.Dispatch).WskSocketConnect }.ok_or(STATUS_UNSUCCESSFUL)?;
        let outcome = core.close_irp.call_and_wait(Some(timeout_ms), |irp| {
            // SAFETY: the addresses live until the call completes (we wait for it); no
            // event callbacks are enabled, so no context or dispatch is given.
            unsafe {
                socket_connect(
                    npi.Client,
                    SOCK_STREAM,
                    IPPROTO_TCP,
                    local.as_mut_ptr(),
                    remote.as_mut_ptr(),
                    0,
                    core::ptr::null_mut(),
                    core::ptr::null(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    irp,
                );
            }
            Ok(())
        })?;
        match outcome {
            Outcome { status, .. } if status.is_success() => {}
            Outcome { status: STATUS_CANCELLED, timed_out: true, .. } => return Err(STATUS_IO_TIMEOUT),
            Outcome { status, .. } => return Err(status),
        }
        core.wsk = outcome.information as *mut WSK_SOCKET;
        // SAFETY: WSK returned a connection socket, whose dispatch is the connection table.
        core.dispatch = unsafe { (*core.wsk).Dispatch }.cast();
        // SAFETY: the rundown reference sits at its final (pool) address.
        unsafe { ExInitializeRundownProtection(core.rundown.get()) };
        Ok(Socket { core })
    }

    pub(crate) fn core(&self) -> &SocketCore {
        &self.core
    }

    /// SIO_WSK_QUERY_IDEAL_SEND_BACKLOG: how many bytes to keep in flight to fill the pipe.
    /// PASSIVE_LEVEL.
    pub fn ideal_send_backlog(&self) -> Result<usize, NTSTATUS> {
        let irp = Irp::allocate()?;
        let mut backlog: SIZE_T = 0;
        let output = (&mut backlog as *mut SIZE_T).cast();
        let outcome = irp.call_and_wait(None, |irp| {
            self.core().call(|dispatch, wsk| {
                // SAFETY: reading the provider's table.
                let control = unsafe { (*dispatch).Basic.WskControlSocket }.ok_or(STATUS_UNSUCCESSFUL)?;
                // SAFETY: an open socket under rundown protection; `backlog` outlives the
                // request because call_and_wait returns only after its completion.
                unsafe {
                    control(
                        wsk,
                        WskIoctl,
                        SIO_WSK_QUERY_IDEAL_SEND_BACKLOG,
                        0,
                        0,
                        core::ptr::null_mut(),
                        size_of::<SIZE_T>(),
                        output,
                        core::ptr::null_mut(),
                        irp,
                    );
                }
                Ok(())
            })
        })?;
        if outcome.status.is_success() { Ok(backlog) } else { Err(outcome.status) }
    }

    /// Graceful disconnect: the peer gets a FIN after every pending send. PASSIVE_LEVEL;
    /// gives up (cancelling it) after `timeout_ms`. Rundown covers the call, not the wait,
    /// so a close from another thread is never held up by a slow disconnect.
    pub fn disconnect(&self, timeout_ms: u32) -> Result<(), NTSTATUS> {
        let irp = Irp::allocate()?;
        let outcome = irp.call_and_wait(Some(timeout_ms), |irp| {
            self.core().call(|dispatch, wsk| {
                // SAFETY: reading the provider's table.
                let disconnect = unsafe { (*dispatch).WskDisconnect }.ok_or(STATUS_UNSUCCESSFUL)?;
                // SAFETY: an open socket under rundown protection; no data with the disconnect.
                unsafe { disconnect(wsk, core::ptr::null_mut(), 0, irp) };
                Ok(())
            })
        })?;
        match outcome {
            Outcome { status, .. } if status.is_success() => Ok(()),
            Outcome { timed_out: true, .. } => Err(STATUS_IO_TIMEOUT),
            Outcome { status, .. } => Err(status),
        }
    }

    /// Closes the socket: waits until no call on it is in progress, then WskCloseSocket,
    /// which cancels and completes any request still pending. PASSIVE_LEVEL.
    pub fn close(self) {
        drop(self)
    }

    /// Closes the socket now, while others may still hold it: from here on every call
    /// fails with STATUS_FILE_FORCED_CLOSED, and when this returns no request is pending.
    /// The owner of the socket calls it once it has stopped issuing; later calls do
    /// nothing. PASSIVE_LEVEL.
    pub fn shut(&self) {
        self.core.shut()
    }

    /// One send or receive of `span`, waited for at PASSIVE_LEVEL, giving up (cancelling
    /// it, which leaves the stream unusable) after `timeout_ms`. Returns the bytes moved;
    /// 0 from a receive means the peer closed. A send goes with WSK_FLAG_NODELAY: its
    /// caller waits for it, so nothing follows that Nagle's algorithm could add to it.
    ///
    /// # Safety
    /// The span's buffers stay valid for the call.
    pub(crate) unsafe fn transfer_and_wait(
        &self,
        send: bool,
        span: Span,
        timeout_ms: u32,
    ) -> Result<usize, NTSTATUS> {
        let irp = Irp::allocate()?;
        let mut buf = span.0;
        let buf_ptr: *mut WSK_BUF = &mut buf;
        let outcome = irp.call_and_wait(Some(timeout_ms), |irp| {
            // SAFETY: per this function's contract; `buf` outlives the request because
            // call_and_wait returns only after its completion.
            unsafe { self.core().transfer(send, buf_ptr, if send { WSK_FLAG_NODELAY } else { 0 }, irp) }
        })?;
        match outcome {
            Outcome { status, information, .. } if status.is_success() => Ok(information),
            Outcome { timed_out: true, .. } => Err(STATUS_IO_TIMEOUT),
            Outcome { status, .. } => Err(status),
        }
    }
}

impl SocketCore {
    /// Runs one call on the socket under rundown protection. Fails with
    /// STATUS_FILE_FORCED_CLOSED once close has begun.
    pub(crate) fn call<R>(
        &self,
        f: impl FnOnce(*const WSK_PROVIDER_CONNECTION_DISPATCH, *mut WSK_SOCKET) -> Result<R, NTSTATUS>,
    ) -> Result<R, NTSTATUS> {
        let rundown = self.rundown.get();
        // SAFETY: the rundown reference lives as long as the socket core.
        if unsafe { ExAcquireRundownProtection(rundown) } == 0 {
            return Err(STATUS_FILE_FORCED_CLOSED);
        }
        let r = f(self.dispatch, self.wsk);
        // SAFETY: releasing the reference taken above.
        unsafe { ExReleaseRundownProtection(rundown) };
        r
    }

    /// WskSend or WskReceive of `buf` with `irp`, under rundown protection.
    ///
    /// # Safety
    /// `irp` is prepared with a completion routine; `buf` describes a locked chain that
    /// stays valid until that routine runs.
    pub(crate) unsafe fn transfer(
        &self,
        send: bool,
        buf: *mut WSK_BUF,
        flags: u32,
        irp: *mut IRP,
    ) -> Result<(), NTSTATUS> {
        self.call(|dispatch, wsk| {
            // SAFETY: reading the provider's table.
            let f = unsafe { if send { (*dispatch).WskSend } else { (*dispatch).WskReceive } };
            let f = f.ok_or(STATUS_UNSUCCESSFUL)?;
            // SAFETY: per this function's contract; the inline status is the completion
            // routine's business.
            let _ = unsafe { f(wsk, buf, flags, irp) };
            Ok(())
        })
    }
}

impl Drop for SocketCore {
    fn drop(&mut self) {
        self.shut();
    }
}

impl SocketCore {
    fn shut(&self) {
        if self.wsk.is_null() || self.closed.swap(true, Ordering::AcqRel) {
            return; // never connected, or closed already
        }
        let rundown = self.rundown.get();
        // SAFETY: PASSIVE_LEVEL per Socket's contract; afterwards no call is in progress
        // and none can start, so WskCloseSocket is allowed.
        unsafe { ExWaitForRundownProtectionRelease(rundown) };
        let (wsk, dispatch) = (self.wsk, self.dispatch);
        // SAFETY: reading the provider's table of a socket that is still open.
        let Some(close) = (unsafe { (*dispatch).Basic.WskCloseSocket }) else {
            return;
        };
        // SAFETY: the socket is open and idle; the close IRP is ours.
        let _ = self.close_irp.call_and_wait(None, |irp| {
            // SAFETY: the socket is open and no call is in progress; the IRP is ours.
            unsafe { close(wsk, irp) };
            Ok(())
        });
    }
}
