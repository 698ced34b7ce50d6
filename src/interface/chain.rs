//! Copying between a consumer's WSK_BUF (an MDL chain, an offset into it, a length) and our
//! own buffers: the one copy the design makes on each path. Chains are checked and mapped
//! once, when the request arrives, so the data path cannot fail on them later.

use crate::nt::{
    MDL, MdlMappingNoExecute, MmGetSystemAddressForMdlSafe, NTSTATUS, NormalPagePriority,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, WSK_BUF,
};

/// More MDLs than this in one chain is not a buffer but a mistake (or a loop).
const MAX_CHAIN: usize = 4096;

/// Checks that `buf`'s chain holds `Offset + Length` bytes and maps every MDL it uses into
/// system space. STATUS_INVALID_PARAMETER for a missing or short chain (Windows would crash
/// on one), STATUS_INSUFFICIENT_RESOURCES when a mapping cannot be made. IRQL <=
/// DISPATCH_LEVEL.
///
/// # Safety
/// Every MDL in the chain describes locked pages, as WskSend requires of its caller.
pub(crate) unsafe fn check_and_map(buf: &WSK_BUF) -> Result<(), NTSTATUS> {
    let Some(needed) = (buf.Offset as usize).checked_add(buf.Length) else {
        return Err(STATUS_INVALID_PARAMETER);
    };
    if buf.Length == 0 {
        return Ok(());
    }
    let mut mdl = buf.Mdl;
    let mut described = 0usize;
    for _ in 0..MAX_CHAIN {
        if mdl.is_null() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        // SAFETY: a locked MDL per the caller.
        let va = unsafe { MmGetSystemAddressForMdlSafe(mdl, NormalPagePriority | MdlMappingNoExecute) };
        if va.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        // SAFETY: as above.
        described += unsafe { (*mdl).ByteCount } as usize;
        if described >= needed {
            return Ok(());
        }
        // SAFETY: as above.
        mdl = unsafe { (*mdl).Next };
    }
    Err(STATUS_INVALID_PARAMETER)
}

/// Walks the bytes `[from, from + len)` of a checked buffer's data, handing each mapped
/// piece to `f` in order.
///
/// # Safety
/// `buf` passed `check_and_map` and its pages stay locked; `from + len <= buf.Length`.
unsafe fn for_each_piece(buf: &WSK_BUF, from: usize, len: usize, mut f: impl FnMut(*mut u8, usize)) {
    let mut skip = buf.Offset as usize + from;
    let mut left = len;
    let mut mdl: *mut MDL = buf.Mdl;
    while left > 0 && !mdl.is_null() {
        // SAFETY: checked and mapped by `check_and_map`; MappedSystemVa is set now.
        let (va, count, next) =
            unsafe { ((*mdl).MappedSystemVa.cast::<u8>(), (*mdl).ByteCount as usize, (*mdl).Next) };
        if skip >= count {
            skip -= count;
        } else {
            let n = (count - skip).min(left);
            // SAFETY: within this MDL's mapped bytes.
            f(unsafe { va.add(skip) }, n);
            left -= n;
            skip = 0;
        }
        mdl = next;
    }
}

/// Copies `dst.len()` bytes from the buffer's data at `from` into `dst`.
///
/// # Safety
/// As for `for_each_piece`, with `len = dst.len()`.
pub(crate) unsafe fn copy_from(buf: &WSK_BUF, from: usize, dst: &mut [u8]) {
    let mut at = 0;
    // SAFETY: forwarded contract.
    unsafe {
        for_each_piece(buf, from, dst.len(), |p, n| {
            // SAFETY: `p` holds `n` mapped bytes; `dst` has room for them.
            core::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(at), n);
            at += n;
        })
    }
}

/// Copies `src` into the buffer's data at `at`.
///
/// # Safety
/// As for `for_each_piece`, with `len = src.len()`.
pub(crate) unsafe fn copy_into(buf: &WSK_BUF, at: usize, src: &[u8]) {
    let mut from = 0;
    // SAFETY: forwarded contract.
    unsafe {
        for_each_piece(buf, at, src.len(), |p, n| {
            // SAFETY: `p` has room for `n` bytes; `src` holds them.
            core::ptr::copy_nonoverlapping(src.as_ptr().add(from), p, n);
            from += n;
        })
    }
}
