//! Consumer buffers as a kernel caller really hands them over: MDL chains over nonpaged
//! pool, of sizes (and start offsets within their allocations) the input chooses. No wild
//! pointer is ever made: a kernel trusts its callers' pointers, so a harness that forged
//! them would find bugs in itself.

use wsktls::nt::{
    ExAllocatePool2, ExFreePoolWithTag, FALSE, IoAllocateMdl, IoFreeMdl, MDL, MmBuildMdlForNonPagedPool,
    POOL_FLAG_NON_PAGED, WSK_BUF, pool_tag,
};

pub const TAG: u32 = pool_tag(b"Fzbf");

/// One MDL of a chain: `len` bytes starting `start` bytes into an allocation of its own.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    pub len: usize,
    pub start: usize,
}

pub struct Chain {
    /// (allocation, its size, the described bytes, their length, the MDL)
    pieces: Vec<(*mut u8, usize, *mut u8, usize, *mut MDL)>,
    looped: bool,
}

// SAFETY: plain pool memory, used by one request at a time.
unsafe impl Send for Chain {}

impl Chain {
    /// Builds the chain and fills its bytes from `fill`. With `looped`, the last MDL's
    /// Next points back at the first (a consumer's mistake wsktls bounds).
    pub fn new(pieces: &[Piece], looped: bool, mut fill: impl FnMut() -> u8) -> Chain {
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            let size = p.start + p.len;
            // SAFETY: allocation and MDL calls, checked; the MDL describes resident pool.
            unsafe {
                let base = ExAllocatePool2(POOL_FLAG_NON_PAGED, size, TAG).cast::<u8>();
                assert!(!base.is_null(), "pool allocation failed (no fault injection here)");
                let data = base.add(p.start);
                for i in 0..p.len {
                    data.add(i).write(fill());
                }
                let mdl = IoAllocateMdl(data.cast(), p.len as u32, FALSE, FALSE, std::ptr::null_mut());
                assert!(!mdl.is_null(), "IoAllocateMdl failed (no fault injection here)");
                MmBuildMdlForNonPagedPool(mdl);
                out.push((base, size, data, p.len, mdl));
            }
        }
        for i in 0..out.len() {
            let next = match out.get(i + 1) {
                Some(n) => n.4,
                None if looped => out[0].4,
                None => std::ptr::null_mut(),
            };
            // SAFETY: our own MDL, carried by no request yet.
            unsafe { (*out[i].4).Next = next };
        }
        Chain { pieces: out, looped }
    }

    pub fn looped(&self) -> bool {
        self.looped
    }

    pub fn head(&self) -> *mut MDL {
        self.pieces.first().map_or(std::ptr::null_mut(), |p| p.4)
    }

    /// Bytes the chain describes (one pass, even when looped).
    pub fn capacity(&self) -> usize {
        self.pieces.iter().map(|p| p.3).sum()
    }

    pub fn wsk_buf(&self, offset: u32, length: usize) -> WSK_BUF {
        WSK_BUF { Mdl: self.head(), Offset: offset, Length: length }
    }

    /// The `len` bytes at `offset` in the chain's data (following a loop as the MDLs do).
    /// Only after the request that carried the chain completed.
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        if self.pieces.is_empty() {
            return out;
        }
        let mut skip = offset;
        let mut i = 0;
        while out.len() < len {
            let (_, _, data, n, _) = self.pieces[i];
            if skip >= n {
                skip -= n;
            } else {
                let take = (n - skip).min(len - out.len());
                // SAFETY: our allocation, idle now.
                out.extend_from_slice(unsafe { std::slice::from_raw_parts(data.add(skip), take) });
                skip = 0;
            }
            i += 1;
            if i == self.pieces.len() {
                if !self.looped {
                    break;
                }
                i = 0;
            }
        }
        out
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for &(base, _, _, _, mdl) in &self.pieces {
            // SAFETY: ours, and no request carries them any more (the caller dropped the
            // chain after its request completed). Unlinked first, then freed once.
            unsafe {
                (*mdl).Next = std::ptr::null_mut();
                IoFreeMdl(mdl);
                ExFreePoolWithTag(base.cast(), TAG);
            }
        }
    }
}
