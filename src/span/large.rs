//! The mappings for requests above the largest malloc class: one
//! `SPAN`-aligned mapping per block between guard pages, its header
//! checked on free and realloc (see the parent module).

use super::*;

/// A block of `size` bytes aligned to `align` (a power of two) in a mapping
/// of its own, zeroed; `None` when it cannot be mapped or the size overflows.
pub fn large_obtain(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two());
    let off = size_of::<LargeHeader>().next_multiple_of(align.max(16));
    // At least one byte past `off`, so the block lies inside the mapping.
    let len = off
        .checked_add(size.max(1))?
        .checked_next_multiple_of(4096)?;
    let base = map_guarded(len, align.max(SPAN))?;
    if !cover(base.as_ptr() as usize, len) {
        // SAFETY: the fresh mapping is ours and unused.
        unsafe { unmap_guarded(base.as_ptr(), len) };
        return None;
    }
    // SAFETY: `off + size <= len`: inside the fresh mapping.
    let user = unsafe { base.as_ptr().add(off) };
    // SAFETY: the header lies at the start of the fresh writable mapping.
    unsafe {
        base.as_ptr().cast::<LargeHeader>().write(LargeHeader {
            magic: seal(len, user, len - off),
            map_len: len,
            user,
            usable: len - off,
        })
    };
    mark(base.as_ptr() as usize, len, KIND_LARGE, KIND_LARGE_CONT);
    NonNull::new(user)
}

/// Where a block of `large_obtain(size, align)` with `align <= 16` starts in
/// its mapping: its mapping is `large_offset() + usable` bytes from a
/// [`large_align`]-aligned base, so a caller that asks for `len -
/// large_offset()` bytes (`len` a multiple of 4096) gets a mapping of
/// exactly `len` bytes. (Functions, not constants: cbindgen would copy
/// constants into the C header.)
#[inline]
pub const fn large_offset() -> usize {
    size_of::<LargeHeader>().next_multiple_of(16)
}

/// Every large mapping starts at a multiple of this (the span size).
#[inline]
pub const fn large_align() -> usize {
    SPAN
}

/// Resizes the large block `p` to at least `size` bytes without copying:
/// shrinks its mapping in place, grows it in place when the addresses after
/// it are free, or else moves its pages with `mremap` to a fresh
/// `SPAN`-aligned range. Returns the block's (possibly new) address, whose
/// contents up to `min(old usable, size)` are the old ones and whose usable
/// size [`owner`] reports; `None` (the block untouched, still at `p`) when
/// the size overflows or the kernel refuses. The block keeps its offset in
/// the mapping; after a move only the 16-byte alignment is kept.
///
/// # Safety
/// `p` is a live block of [`large_obtain`] (as [`owner`] says) that the
/// caller owns: no other thread uses or frees it meanwhile.
pub unsafe fn large_resize(p: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
    let base = large_base(p.as_ptr() as usize)?;
    let h = base.cast::<LargeHeader>();
    // SAFETY: a large mapping's header is at its base; the block is the
    // caller's, so nobody changes the header meanwhile.
    let (old_len, user) = unsafe { ((*h).map_len, (*h).user) };
    let off = user as usize - base as usize;
    let new_len = off
        .checked_add(size.max(1))?
        .checked_next_multiple_of(4096)?;
    let b = base as usize;
    // The new base, and whether its granules must be marked (after the
    // header is rewritten, so that a reader acquiring the kind sees it).
    let (new_base, to_mark) = if new_len == old_len {
        (base, false)
    } else if new_len < old_len {
        // Unmark the granules that no longer hold any of the mapping first:
        // once unmapped, their addresses may be mapped again by anyone.
        let keep_last = (b + new_len - 1) >> SPAN_SHIFT;
        let old_last = (b + old_len - 1) >> SPAN_SHIFT;
        if old_last > keep_last {
            let from = (keep_last + 1) << SPAN_SHIFT;
            mark(from, b + old_len - from, FOREIGN, FOREIGN);
        }
        // SAFETY: our own mapping, which nobody else uses: the page after
        // the new end becomes its guard, and the pages past it (the old
        // guard included) are unmapped.
        let ok = unsafe {
            let guard = base.add(new_len).cast::<libc::c_void>();
            if libc::mprotect(guard, GUARD, libc::PROT_NONE) != 0 {
                false
            } else if libc::munmap(base.add(new_len + GUARD).cast(), old_len - new_len) != 0 {
                libc::mprotect(guard, GUARD, libc::PROT_READ | libc::PROT_WRITE);
                false
            } else {
                true
            }
        };
        if !ok {
            mark(b, old_len, KIND_LARGE, KIND_LARGE_CONT);
            return None;
        }
        (base, false)
    } else {
        // The leaves the grown range would need, before it exists.
        if !cover(b, new_len) {
            return None;
        }
        // SAFETY: growing our own mapping in place (no MAYMOVE): the old
        // guard page is made writable (one range with the block, as mremap
        // needs), the kernel only extends the range over addresses nobody
        // has mapped, and the page after the new end becomes the guard; if
        // the kernel refuses, the old guard is restored.
        let grown = unsafe {
            let old_guard = base.add(old_len).cast::<libc::c_void>();
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            if libc::mprotect(old_guard, GUARD, rw) != 0 {
                false
            } else if libc::mremap(base.cast(), old_len + GUARD, new_len + GUARD, 0) == base.cast()
            {
                // Should this fail (no memory for the split), the block is
                // whole and usable, only unguarded after its end.
                libc::mprotect(base.add(new_len).cast(), GUARD, libc::PROT_NONE);
                true
            } else {
                libc::mprotect(old_guard, GUARD, libc::PROT_NONE);
                false
            }
        };
        if grown {
            (base, true)
        } else {
            // A SPAN-aligned range of the new length, for the header lookup.
            let dest = map_guarded(new_len, SPAN)?;
            if !cover(dest.as_ptr() as usize, new_len) {
                // SAFETY: `dest` is our fresh, unused mapping.
                unsafe { unmap_guarded(dest.as_ptr(), new_len) };
                return None;
            }
            // Unmark the old range first: once moved, its addresses may be
            // mapped again by anyone.
            mark(b, old_len, FOREIGN, FOREIGN);
            wait_header_readers();
            // SAFETY: moves the pages of our own mapping (nobody else uses
            // the block) over `dest`, a fresh mapping of ours of `new_len`
            // bytes, which MREMAP_FIXED replaces.
            let r = unsafe {
                libc::mremap(
                    base.cast(),
                    old_len,
                    new_len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    dest.as_ptr().cast::<libc::c_void>(),
                )
            };
            if r != dest.as_ptr().cast() {
                // MREMAP_FIXED may have unmapped `dest`'s range before the
                // kernel refused (and another thread's `mmap` may have got
                // addresses in it since): only its guards are surely ours.
                // What is left between them is either nothing, another's,
                // or our untouched `dest`, then kept unused (a rare
                // failure's cost: address space, no page).
                // SAFETY: `dest`'s guards are ours and unused.
                unsafe { unmap_guards(dest.as_ptr(), new_len) };
                mark(b, old_len, KIND_LARGE, KIND_LARGE_CONT);
                return None;
            }
            // The old range is gone (moved) and its addresses are free for
            // anyone's `mmap` right now: only its two guard pages are left
            // of it, and only they may be unmapped.
            // SAFETY: the old mapping's guards, ours and unused.
            unsafe { unmap_guards(base, old_len) };
            (dest.as_ptr(), true)
        }
    };
    // SAFETY: the header moved with the mapping's first page; `off +
    // size <= new_len`: the block lies inside the mapping.
    let user = unsafe {
        let h = new_base.cast::<LargeHeader>();
        (*h).map_len = new_len;
        (*h).user = new_base.add(off);
        (*h).usable = new_len - off;
        (*h).magic = seal(new_len, (*h).user, new_len - off);
        (*h).user
    };
    if to_mark {
        mark(new_base as usize, new_len, KIND_LARGE, KIND_LARGE_CONT);
    }
    NonNull::new(user)
}

/// Unmaps a block of [`large_obtain`].
///
/// # Safety
/// `p` came from `large_obtain` (as [`owner`] says) and is not used any more.
pub unsafe fn large_release(p: NonNull<u8>) {
    let Some(base) = large_base(p.as_ptr() as usize) else {
        return;
    };
    // SAFETY: a large mapping's header is at its base (caller's contract).
    let len = unsafe { (*base.cast::<LargeHeader>()).map_len };
    // Unmark first: once unmapped, the range may be mapped again by anyone.
    mark(base as usize, len, FOREIGN, FOREIGN);
    wait_header_readers();
    // SAFETY: the whole mapping is this block's, which nobody uses now.
    unsafe { unmap_guarded(base, len) };
}

/// The base of the large mapping whose granules cover `addr`.
pub(super) fn large_base(addr: usize) -> Option<*mut u8> {
    if addr >> ADDR_BITS != 0 {
        return None;
    }
    let mut g = addr >> SPAN_SHIFT;
    loop {
        // Acquire: pairs with `mark`, so the header is visible.
        match entry(g)?.load(Acquire) {
            KIND_LARGE => return Some(ptr::with_exposed_provenance_mut(g << SPAN_SHIFT)),
            KIND_LARGE_CONT if g > 0 => g -= 1,
            _ => return None,
        }
    }
}
