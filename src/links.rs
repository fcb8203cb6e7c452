//! Protected links: how a free object holds a pointer to the next one (the
//! shared cache's clusters, a span's free list), so that a write after free
//! cannot plant a pointer of its choosing.
//!
//! A link is stored XORed with the address of the word that holds it,
//! shifted right by 12 (glibc's safe-linking), and with a per-process
//! random secret (mimalloc's secure mode). A write after free that stores
//! a chosen pointer without knowing the secret (and where it writes) makes
//! the link decode to an address that is random in its low and high bits:
//! [`reveal`] checks that every decoded link is aligned and below 2^47
//! (user space on x86-64 Linux), and aborts with a message when it is not,
//! so a forged link is caught at its pop with a probability of about
//! 1 - 2^-21. The span's free list checks more (the span and the object
//! grid, see `span`). Links are written and read on slow paths only (a
//! cluster at a time, or under a span's lock), never on the hit path.
//!
//! Stored values keep the link's provenance (`map_addr`), so that the
//! encoding is invisible to the pointer model.

use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::Relaxed;

/// The alignment every linked object has: `os::OBJECT_ALIGN`. Unit tests
/// link boxed `Item`s, aligned to their 8 bytes.
const ALIGN: usize = if cfg!(test) {
    8
} else {
    crate::os::OBJECT_ALIGN
};

/// Bits of a user-space address on x86-64 Linux (4-level page tables).
const ADDR_BITS: u32 = 47;

/// The per-process secret, 0 until first use.
//
// Relaxed: every thread that finds it 0 computes the same value from the
// same process-constant source (AT_RANDOM), so whichever store wins, every
// link ever written and read uses that one value.
static SECRET: AtomicUsize = AtomicUsize::new(0);

/// The secret, computed on first use.
#[inline(always)]
fn secret() -> usize {
    let s = SECRET.load(Relaxed);
    if s != 0 {
        return s;
    }
    init_secret()
}

#[cold]
#[inline(never)]
fn init_secret() -> usize {
    #[allow(unused_mut)]
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    #[cfg(not(miri))]
    {
        // SAFETY: AT_RANDOM points to 16 random bytes the kernel gave the
        // process, valid for its whole life (glibc and musl).
        let r = unsafe { libc::getauxval(libc::AT_RANDOM) } as *const u64;
        if !r.is_null() {
            // SAFETY: as above; possibly unaligned. The first word (not the
            // second, which seeds the pool keys), mixed below.
            seed ^= unsafe { r.read_unaligned() };
        }
    }
    // splitmix64's finaliser: the secret shares no bits with the raw word.
    let mut z = seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let s = (z as usize) | 1 << 63;
    SECRET.store(s, Relaxed);
    s
}

/// What a link stored at `at` is XORed with.
#[inline(always)]
fn mask<T>(at: *const *mut T) -> usize {
    (at.addr() >> 12) ^ secret()
}

/// The value to store at `at` for a link to `next` (null included).
#[inline(always)]
pub(crate) fn protect<T>(at: *const *mut T, next: *mut T) -> *mut T {
    let m = mask(at);
    next.map_addr(|a| a ^ m)
}

/// The link stored at `at` as `stored`, unchecked (for a read that may race,
/// checked later with [`check`]).
#[inline(always)]
pub(crate) fn decode<T>(at: *const *mut T, stored: *mut T) -> *mut T {
    let m = mask(at);
    stored.map_addr(|a| a ^ m)
}

/// The link stored at `at` as `stored`; aborts with a message if it does
/// not decode to null or an aligned user-space address.
#[inline(always)]
pub(crate) fn reveal<T>(at: *const *mut T, stored: *mut T) -> *mut T {
    let next = decode(at, stored);
    check(at, next);
    next
}

/// Aborts with a message unless `next` (read at `at`) is null or an
/// aligned user-space address.
#[inline(always)]
pub(crate) fn check<T>(at: *const *mut T, next: *mut T) {
    // One test: the low bits of a misaligned address, the high bits of one
    // outside user space.
    if next.addr() & ((ALIGN - 1) | !((1 << ADDR_BITS) - 1)) != 0 {
        forged(at.addr(), next.addr());
    }
}

/// A link at `at` decoded to `next`, which no free object can be.
#[cold]
#[inline(never)]
fn forged(at: usize, next: usize) -> ! {
    corrupted(b"a free object's link was overwritten", at, next)
}

/// Writes `libpools: corrupted free list (WHAT): the link at 0xAT decodes to 0xV
/// (a write after free?); aborting` to stderr without allocating, and
/// aborts.
#[cold]
#[inline(never)]
pub(crate) fn corrupted(what: &[u8], at: usize, value: usize) -> ! {
    let mut buf = [0u8; 256];
    let mut len = 0;
    let mut put = |s: &[u8]| {
        let n = s.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&s[..n]);
        len += n;
    };
    put(b"libpools: corrupted free list (");
    put(what);
    put(b"): the link at ");
    hex(&mut put, at);
    put(b" decodes to ");
    hex(&mut put, value);
    put(b" (a write after free?); aborting\n");
    // SAFETY: writing our own buffer to fd 2.
    unsafe { libc::write(2, buf.as_ptr().cast(), len) };
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// A pointer given back to a span that is not the start of an object it
/// handed out: writes `libpools: invalid free of 0xP (...); aborting` to
/// stderr without allocating, and aborts.
#[cold]
#[inline(never)]
pub(crate) fn invalid_object(p: usize) -> ! {
    let mut buf = [0u8; 200];
    let mut len = 0;
    let mut put = |s: &[u8]| {
        let n = s.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&s[..n]);
        len += n;
    };
    put(b"libpools: invalid free of ");
    hex(&mut put, p);
    put(b" (not the start of an object: a pointer inside or past one?); aborting\n");
    // SAFETY: writing our own buffer to fd 2.
    unsafe { libc::write(2, buf.as_ptr().cast(), len) };
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

fn hex(put: &mut impl FnMut(&[u8]), v: usize) {
    put(b"0x");
    let digits = (usize::BITS - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        put(&[b"0123456789abcdef"[(v >> (4 * i)) & 15]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_round_trip_and_differ_from_the_pointer() {
        let mut slot: *mut u64 = core::ptr::null_mut();
        let mut target = 0u64;
        let at = &raw const slot;
        let p = &raw mut target;
        slot = protect(at, p);
        assert_ne!(slot.addr(), p.addr());
        assert_eq!(reveal(at, slot), p);
        slot = protect(at, core::ptr::null_mut());
        assert_ne!(slot.addr(), 0, "a null link is stored masked too");
        assert!(reveal(at, slot).is_null());
    }

    #[test]
    fn a_planted_pointer_decodes_to_garbage() {
        let slot: *mut u64 = core::ptr::null_mut();
        let at = &raw const slot;
        let planted: *mut u64 = core::ptr::without_provenance_mut(0x7f00_dead_b000);
        let d = decode(at, planted);
        assert!(d.addr() >> ADDR_BITS != 0, "the secret sets the top bit");
    }
}
