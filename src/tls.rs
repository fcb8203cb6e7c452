//! The one thread-local word of the hot path: this thread's cache pointer.
//!
//! Rust's `thread_local!` in a shared library uses the general-dynamic TLS
//! model: every access calls `__tls_get_addr` (its cost on the hot path is
//! in BENCHMARKS.md). On x86-64 Linux this module puts
//! the word in the *initial-exec* model instead: the symbol lives in the
//! module's static TLS block and an access is one GOT load plus one
//! `%fs`-relative load. glibc reserves static TLS for exactly such libraries,
//! even when they are `dlopen`ed; a static link relaxes the access further,
//! to a single `%fs` load. Elsewhere (other targets, Miri, loom) a plain
//! `thread_local!` holds the word.
//!
//! The symbol is hidden, so each library that embeds the pools (libpools.so,
//! libpools_malloc.so) has its own word. The word carries no destructor: the
//! thread-exit drain stays on a `thread_local!` in `thread_cache`, touched
//! only when a cache is created.
//!
//! The word is never null: until a thread has a cache it points to
//! [`EMPTY`], zero bytes that the thread cache reads as a table whose
//! entries match no pool, so the hit path needs no null test. On x86-64 this is the word's initial value in
//! the TLS image (`.tdata`, relocated by the loader before any thread copies
//! it); elsewhere `get` maps null to it.

/// Bytes of [`EMPTY`]: the most anyone reads through the word while the
/// thread has set none of its own (the thread cache checks that its table
/// fits).
pub(crate) const EMPTY_BYTES: usize = 1 << 18;

/// What the word points to until the thread sets its own: zeroes, never
/// written.
#[repr(C, align(64))]
pub(crate) struct Empty(core::cell::UnsafeCell<[u8; EMPTY_BYTES]>);
// SAFETY: nobody ever writes it.
unsafe impl Sync for Empty {}
pub(crate) static EMPTY: Empty = Empty(core::cell::UnsafeCell::new([0; EMPTY_BYTES]));

impl Empty {
    /// The address the word holds until the thread sets its own.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.0.get().cast()
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri), not(loom)))]
mod imp {
    // An 8-byte, 8-aligned TLS object (`.tdata`) whose initial value is
    // the address of the empty cache.
    core::arch::global_asm!(
        ".pushsection .tdata.pools_tls_word,\"awT\",@progbits",
        ".p2align 3",
        ".globl pools_tls_word",
        ".hidden pools_tls_word",
        ".type pools_tls_word,@object",
        ".size pools_tls_word,8",
        "pools_tls_word:",
        ".quad {empty}",
        ".popsection",
        empty = sym super::EMPTY,
    );

    /// This thread's word.
    #[inline(always)]
    pub(crate) fn get() -> *mut u8 {
        let word: *mut u8;
        // SAFETY: reads this thread's copy of `pools_tls_word`: the GOT slot
        // holds its offset from the thread pointer (`%fs` base), which the
        // loader fills in before any code of this module runs. Reads memory
        // only, touches no flags the compiler relies on.
        unsafe {
            core::arch::asm!(
                "mov {w}, qword ptr [rip + pools_tls_word@GOTTPOFF]",
                "mov {w}, qword ptr fs:[{w}]",
                w = out(reg) word,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        word
    }

    /// Sets this thread's word.
    #[inline]
    pub(crate) fn set(word: *mut u8) {
        // SAFETY: writes this thread's copy of `pools_tls_word` (see `get`);
        // no other thread can address it.
        unsafe {
            core::arch::asm!(
                "mov {off}, qword ptr [rip + pools_tls_word@GOTTPOFF]",
                "mov qword ptr fs:[{off}], {w}",
                off = out(reg) _,
                w = in(reg) word,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri), not(loom))))]
mod imp {
    use core::cell::Cell;

    thread_local! {
        static WORD: Cell<*mut u8> = const { Cell::new(core::ptr::null_mut()) };
    }

    /// This thread's word (the empty cache until it is set, and while the
    /// thread is being torn down).
    #[inline]
    pub(crate) fn get() -> *mut u8 {
        let w = WORD.try_with(Cell::get).unwrap_or(core::ptr::null_mut());
        if w.is_null() {
            super::EMPTY.ptr()
        } else {
            w
        }
    }

    /// Sets this thread's word.
    #[inline]
    pub(crate) fn set(word: *mut u8) {
        let _ = WORD.try_with(|w| w.set(word));
    }
}

pub(crate) use imp::{get, set};
