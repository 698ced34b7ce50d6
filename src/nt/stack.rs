//! Kernel stacks: how big they are, and how to run code that needs more.
//!
//! A kernel thread's stack is small ([`KERNEL_STACK_SIZE`], 24 KiB on x64) and cannot
//! grow; running off its end is a bug check. Code with a deep or wide frame (ring's RSA
//! signing has a ~10.5 KB frame) runs inside `KeExpandKernelStackAndCallout`, which
//! guarantees the callout the stack it asks for, on a new stack segment if need be.
//! Never call such code on a stack that was not expanded for it.

use crate::{NTSTATUS, PAGE_SIZE, PVOID, SIZE_T, STATUS_UNSUCCESSFUL};

/// `KERNEL_STACK_SIZE` (ntddk.h, x64): the size of a kernel thread's stack.
pub const KERNEL_STACK_SIZE: usize = 0x6000;

/// `KERNEL_LARGE_STACK_SIZE` (ntddk.h, x64): the size of an expanded stack segment.
pub const KERNEL_LARGE_STACK_SIZE: usize = 0x12000;

/// `MAXIMUM_EXPANSION_SIZE` (ntddk.h): the most stack `KeExpandKernelStackAndCallout`
/// can guarantee, `KERNEL_LARGE_STACK_SIZE - PAGE_SIZE / 2` (70 KiB on x64).
pub const MAXIMUM_EXPANSION_SIZE: usize = KERNEL_LARGE_STACK_SIZE - PAGE_SIZE / 2;

/// `EXPAND_STACK_CALLOUT`: the routine `KeExpandKernelStackAndCallout` calls, on the
/// caller's thread at the caller's IRQL, with at least the requested stack available.
/// It must return at the IRQL it was called at, with every extended-state save it made
/// restored (its frames are on the expanded stack, which is freed when it returns).
pub type PEXPAND_STACK_CALLOUT = Option<unsafe extern "system" fn(Parameter: PVOID)>;

unsafe extern "system" {
    /// Calls `Callout(Parameter)` with at least `Size` bytes of stack, first allocating a
    /// new stack segment if the current stack has less. `Size` must not exceed
    /// [`MAXIMUM_EXPANSION_SIZE`]. Returns STATUS_SUCCESS once the callout has been called
    /// and has returned; on failure (too large a `Size`, no memory for the segment) it
    /// returns a failure status and does not call the callout. IRQL <= APC_LEVEL.
    pub fn KeExpandKernelStackAndCallout(
        Callout: PEXPAND_STACK_CALLOUT,
        Parameter: PVOID,
        Size: SIZE_T,
    ) -> NTSTATUS;
}

/// Runs `f` with at least `size` bytes of kernel stack (at most
/// [`MAXIMUM_EXPANSION_SIZE`]) and returns its value, or the failure status of
/// `KeExpandKernelStackAndCallout`, in which case `f` did not run. IRQL <= APC_LEVEL.
///
/// `f` runs on the calling thread, at the calling IRQL, before this returns; it may borrow
/// from the caller. A panic in `f` does not unwind out of the callout: it aborts (which is
/// what the kernel build's `panic = "abort"` does anyway).
pub fn with_expanded_stack<F: FnOnce() -> R, R>(size: usize, f: F) -> Result<R, NTSTATUS> {
    let mut call: Call<F, R> = Call { f: Some(f), result: None };
    // SAFETY: the callout is `trampoline` instantiated for exactly this `Call`'s types,
    // and its parameter points at `call`, which lives on this frame until the function
    // returns; the kernel calls the callout at most once, before it returns, on this
    // thread, so nothing else touches `call` meanwhile.
    let status =
        unsafe { KeExpandKernelStackAndCallout(Some(trampoline::<F, R>), (&raw mut call).cast(), size) };
    if !status.is_success() {
        return Err(status);
    }
    // A kernel that reported success without calling the callout would leave no result.
    call.result.ok_or(STATUS_UNSUCCESSFUL)
}

/// What one [`with_expanded_stack`] hands its callout: the closure to run, and where its
/// value goes.
struct Call<F, R> {
    f: Option<F>,
    result: Option<R>,
}

/// The callout of [`with_expanded_stack`]: runs the closure in the `Call` at `parameter`.
///
/// # Safety
/// `parameter` points at a live `Call<F, R>` that nothing else accesses during the call.
unsafe extern "system" fn trampoline<F: FnOnce() -> R, R>(parameter: PVOID) {
    // SAFETY: per this function's contract, which with_expanded_stack upholds.
    let call = unsafe { &mut *parameter.cast::<Call<F, R>>() };
    if let Some(f) = call.f.take() {
        call.result = Some(f());
    }
}
