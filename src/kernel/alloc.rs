//! The global allocator: nonpaged pool, tagged 'WtHp', any alignment. ExAllocatePool2
//! aligns to 16 bytes; larger alignments over-allocate and keep the pool address just
//! before the aligned block.

use core::alloc::{GlobalAlloc, Layout};

use crate::heap::Reserving;
use crate::nt::{ExAllocatePool2, ExFreePoolWithTag, POOL_ALIGNMENT, POOL_FLAG_NON_PAGED, pool_tag};

const TAG_HEAP: u32 = pool_tag(b"WtHp");

struct NonPagedPool;

/// Every heap block is wiped before it goes back to the pool: secrets moved out of a
/// block leave copies in it (see WipeOnFree). An allocation the pool refuses falls back on
/// the heap reserve lent to the thread, if any (see crate::heap).
#[global_allocator]
static ALLOCATOR: wsktls_crypto::WipeOnFree<Reserving<NonPagedPool>> =
    wsktls_crypto::WipeOnFree(Reserving(NonPagedPool));

// SAFETY: every block comes from ExAllocatePool2 (zeroed, 16-aligned) or is carved out of
// one with the pool address stored just before it; dealloc frees exactly that block.
unsafe impl GlobalAlloc for NonPagedPool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= POOL_ALIGNMENT {
            // SAFETY: a plain allocation call; NULL is passed on as failure.
            return unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, layout.size().max(1), TAG_HEAP) }.cast();
        }
        // Room to move up to an aligned address and to keep the pool address before it.
        let Some(size) = layout.size().checked_add(layout.align() + size_of::<usize>()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: as above.
        let base = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, size, TAG_HEAP) }.cast::<u8>();
        if base.is_null() {
            return base;
        }
        let start = base as usize + size_of::<usize>();
        let aligned = (start + layout.align() - 1) & !(layout.align() - 1);
        let block = base.wrapping_add(aligned - base as usize);
        // SAFETY: `aligned - 8 >= base` and the slot lies inside the allocation; pool is
        // 16-aligned and `aligned` a multiple of a larger power of two, so the slot is
        // 8-aligned.
        unsafe { block.cast::<usize>().sub(1).write(base as usize) };
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let base = if layout.align() <= POOL_ALIGNMENT {
            ptr
        } else {
            // SAFETY: written by `alloc` just before the block it returned.
            unsafe { ptr.cast::<usize>().sub(1).read() as *mut u8 }
        };
        // SAFETY: a block we allocated with this tag, freed once (GlobalAlloc's contract).
        unsafe { ExFreePoolWithTag(base.cast(), TAG_HEAP) };
    }
}
