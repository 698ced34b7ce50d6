//! What a send or receive moves: a span of bytes in pool buffers, in the form WSK takes
//! (a WSK_BUF over their MDLs), so layers above name buffers, not MDLs.

use crate::nt::{PoolBuffer, WSK_BUF};

/// A run of bytes in one pool buffer, or in a chain of them.
#[derive(Clone, Copy)]
pub struct Span(pub(crate) WSK_BUF);

impl Span {
    /// The first `len` bytes of the chain that starts at `first` (linked with
    /// `PoolBuffer::set_next`, each MDL sized with `set_mdl_len`).
    ///
    /// # Safety
    /// The chain holds at least `len` bytes: WSK_BUF.Length beyond the chain crashes
    /// Windows.
    pub unsafe fn chain(first: &PoolBuffer, len: usize) -> Span {
        Span(WSK_BUF { Mdl: first.mdl(), Offset: 0, Length: len })
    }

    /// `len` bytes at `offset` in `buffer`; `None` unless they lie inside it.
    pub fn within(buffer: &PoolBuffer, offset: usize, len: usize) -> Option<Span> {
        let end = offset.checked_add(len)?;
        let offset32 = u32::try_from(offset).ok()?;
        (end <= buffer.len()).then_some(Span(WSK_BUF { Mdl: buffer.mdl(), Offset: offset32, Length: len }))
    }

    pub fn len(&self) -> usize {
        self.0.Length
    }

    pub fn is_empty(&self) -> bool {
        self.0.Length == 0
    }
}
