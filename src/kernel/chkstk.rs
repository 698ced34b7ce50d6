//! `__chkstk`, which MSVC-ABI code calls before a frame larger than a page: it touches each
//! page of the new frame in order, so the kernel stack's guard page is met one page at a
//! time rather than jumped over. The MSVC CRT provides it in user mode; a driver without the
//! CRT provides its own. Contract (x64): RAX holds the frame size; RSP is not changed; every
//! register but R10, R11 and the flags is preserved.

core::arch::global_asm!(
    ".globl __chkstk",
    "__chkstk:",
    // Keep RCX and RAX; RCX walks down from the caller's stack pointer (above our two pushes
    // and the return address).
    "push rcx",
    "push rax",
    "lea rcx, [rsp + 24]",
    "2:",
    "cmp rax, 0x1000",
    "jb 3f",
    "sub rcx, 0x1000",
    "test [rcx], rcx",
    "sub rax, 0x1000",
    "jmp 2b",
    "3:",
    "sub rcx, rax",
    "test [rcx], rcx",
    "pop rax",
    "pop rcx",
    "ret",
);
