//! Memory for the library's own metadata (pool heads, name copies), taken
//! from `mmap` and never from `malloc`: inside the LD_PRELOAD malloc
//! (`libpools_malloc.so`) a call to the libc allocator would come back into
//! the pools themselves.
//!
//! Blocks are powers of two from 16 bytes to [`ARENA_MAX`], carved from
//! 64 KiB chunks (the first of each kind static, in the bss; the others
//! mapped) at offsets that are multiples of their size (so a
//! block is aligned to its size) and recycled through one free list per size.
//! Blocks up to [`SMALL_MAX`] (name copies) and larger ones (pool heads) are
//! carved from separate chunks: a name between two heads would leave a gap
//! as large as a head before the next one. The thread caches' arrays
//! ([`obtain_array`]) have chunks and free lists of their own: between the
//! heads they would double the pages that hold heads, which the fork
//! handlers write in every pool (so a forked process copies each such page,
//! in the parent and in the child). Larger blocks get their own mapping.
//! Chunks are never unmapped: metadata is small and pool heads are
//! recycled, never freed.

use crate::os;
use crate::sync::SpinLock;
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};

/// Largest block served from the arena; larger ones are mapped alone.
const ARENA_MAX: usize = 4096;
/// Bytes mapped at a time for the arena.
const CHUNK: usize = 64 * 1024;
/// Block sizes 16, 32, ..., ARENA_MAX.
const CLASSES: usize = (ARENA_MAX.trailing_zeros() - 4 + 1) as usize;
/// Largest block carved from the chunks of small blocks (names): a name
/// carved between two heads would push the next head a whole head further.
const SMALL_MAX: usize = 256;

/// A chunk being carved: null before the first, and the bytes used in it.
struct Bump {
    chunk: *mut u8,
    used: usize,
}

struct Arena {
    /// The chunk of blocks up to `SMALL_MAX` bytes, that of larger ones, and
    /// that of the thread caches' arrays.
    bump: [Bump; 3],
    /// Freed blocks, one list per size, linked through their first word:
    /// metadata, and arrays.
    free: [[*mut u8; CLASSES]; 2],
}

impl Arena {
    /// No chunk and no freed block yet.
    const EMPTY: Arena = Arena {
        bump: [const {
            Bump {
                chunk: ptr::null_mut(),
                used: 0,
            }
        }; 3],
        free: [[ptr::null_mut(); CLASSES]; 2],
    };
}

/// Which chunks and free lists serve a block.
#[derive(Clone, Copy)]
enum Kind {
    Meta = 0,
    Array = 1,
}

/// The arena under a lock that the fork handlers hold across `fork()`
/// (thread caches take blocks from it outside the registry lock).
struct Locked {
    lock: SpinLock,
    arena: UnsafeCell<Arena>,
}

// SAFETY: `arena` is only touched under `lock`; the memory its pointers
// point to is not tied to any thread.
unsafe impl Sync for Locked {}

/// The first chunk of each kind, in the bss: a process that needs no
/// second one maps none (only the pages it touches are backed, as for a
/// mapped chunk).
#[repr(C, align(4096))]
struct FirstChunks(UnsafeCell<[[u8; CHUNK]; 3]>);

// SAFETY: each chunk is carved under the arena's lock, as a mapped one.
unsafe impl Sync for FirstChunks {}

// Out of the preload's ordered bss (malloc/build.rs), whose small statics
// would otherwise be spread over the chunks' pages.
#[link_section = ".bss.pools_first"]
static FIRST_CHUNKS: FirstChunks = FirstChunks(UnsafeCell::new([[0; CHUNK]; 3]));

/// The chunk `i` of [`FIRST_CHUNKS`].
const fn first_chunk(i: usize) -> Bump {
    Bump {
        // The chunks' bytes are only written through this pointer.
        chunk: FIRST_CHUNKS.0.get().cast::<u8>().wrapping_add(i * CHUNK),
        used: 0,
    }
}

/// The process's arena before its first block: on the static chunks.
const FIRST: Arena = Arena {
    bump: [first_chunk(0), first_chunk(1), first_chunk(2)],
    ..Arena::EMPTY
};

static ARENA: Locked = Locked {
    lock: SpinLock::new(),
    arena: UnsafeCell::new(FIRST),
};

/// Runs `f` on the arena, under its lock.
fn with_arena<R>(f: impl FnOnce(&mut Arena) -> R) -> R {
    ARENA.lock.lock();
    // SAFETY: we hold the lock (or, inside the fork window, the forking
    // thread holds it for us while every other thread waits).
    let r = f(unsafe { &mut *ARENA.arena.get() });
    ARENA.lock.unlock();
    r
}

/// Takes the arena's lock for `fork()` (the prepare handler).
pub(crate) fn fork_prepare() {
    ARENA.lock.lock();
}

/// Releases it (the parent and child handlers).
pub(crate) fn fork_release() {
    ARENA.lock.unlock();
}

/// The block size serving `size` bytes, at least 16.
fn block_size(size: usize) -> usize {
    size.max(16).next_power_of_two()
}

/// `size` bytes of zeroed memory aligned to `block_size(size)` (to the page
/// beyond `ARENA_MAX`), or `None` when no memory can be mapped.
pub(crate) fn obtain(size: usize) -> Option<NonNull<u8>> {
    obtain_kind(size, Kind::Meta)
}

/// [`obtain`] for a thread cache's array, carved apart from the metadata.
pub(crate) fn obtain_array(size: usize) -> Option<NonNull<u8>> {
    obtain_kind(size, Kind::Array)
}

fn obtain_kind(size: usize, kind: Kind) -> Option<NonNull<u8>> {
    let bs = block_size(size);
    if bs > ARENA_MAX {
        return os::map_zeroed(bs);
    }
    let class = (bs.trailing_zeros() - 4) as usize;
    with_arena(|a| obtain_locked(a, class, bs, kind))
}

fn obtain_locked(a: &mut Arena, class: usize, bs: usize, kind: Kind) -> Option<NonNull<u8>> {
    let free = &mut a.free[kind as usize][class];
    if let Some(p) = NonNull::new(*free) {
        // SAFETY: a free block holds the next free block in its first word.
        *free = unsafe { p.as_ptr().cast::<*mut u8>().read() };
        // SAFETY: the block has `bs` bytes and is ours now.
        unsafe { p.as_ptr().write_bytes(0, bs) };
        return Some(p);
    }
    let b = match kind {
        Kind::Meta => &mut a.bump[usize::from(bs > SMALL_MAX)],
        Kind::Array => &mut a.bump[2],
    };
    // Chunks are page-aligned, so an offset that is a multiple of `bs`
    // gives a block aligned to `bs`.
    let mut start = b.used.next_multiple_of(bs);
    if b.chunk.is_null() || start + bs > CHUNK {
        // The rest of the old chunk is dropped (at most a few KiB): simple,
        // and metadata allocations are rare.
        b.chunk = os::map_zeroed(CHUNK)?.as_ptr();
        start = 0;
    }
    b.used = start + bs;
    // SAFETY: `start + bs <= CHUNK`: inside the chunk; fresh mapped memory
    // is zeroed.
    NonNull::new(unsafe { b.chunk.add(start) })
}

/// Gives back a block from [`obtain`].
///
/// # Safety
/// `p` came from `obtain(size)` with the same `size` and is not used any more.
pub(crate) unsafe fn release(p: NonNull<u8>, size: usize) {
    // SAFETY: forwarded (caller's contract).
    unsafe { release_kind(p, size, Kind::Meta) }
}

/// Gives back a block from [`obtain_array`].
///
/// # Safety
/// `p` came from `obtain_array(size)` with the same `size` and is not used
/// any more.
pub(crate) unsafe fn release_array(p: NonNull<u8>, size: usize) {
    // SAFETY: forwarded (caller's contract).
    unsafe { release_kind(p, size, Kind::Array) }
}

/// # Safety
/// `p` came from `obtain_kind(size, kind)` and is not used any more.
unsafe fn release_kind(p: NonNull<u8>, size: usize, kind: Kind) {
    let bs = block_size(size);
    if bs > ARENA_MAX {
        // SAFETY: a block of this size is a mapping of its own (caller).
        unsafe { os::unmap(p, bs) };
        return;
    }
    let class = (bs.trailing_zeros() - 4) as usize;
    with_arena(|a| {
        // SAFETY: the block is ours (caller) and at least a pointer wide.
        unsafe {
            p.as_ptr()
                .cast::<*mut u8>()
                .write(a.free[kind as usize][class])
        };
        a.free[kind as usize][class] = p.as_ptr();
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Arrays come from chunks of their own: pool heads carved around
    /// them stay neighbours (on a private arena, so that other tests'
    /// blocks do not interleave).
    #[test]
    fn arrays_are_carved_apart_from_heads() {
        let mut a = Arena::EMPTY;
        let (bs, class) = (1024, (1024u32.trailing_zeros() - 4) as usize);
        let h1 = obtain_locked(&mut a, class, bs, Kind::Meta).expect("memory");
        let arr = obtain_locked(&mut a, class, bs, Kind::Array).expect("memory");
        let h2 = obtain_locked(&mut a, class, bs, Kind::Meta).expect("memory");
        assert_eq!(h2.as_ptr() as usize, h1.as_ptr() as usize + bs);
        assert_ne!(arr.as_ptr() as usize, h1.as_ptr() as usize + bs);
        for b in &a.bump[1..] {
            // SAFETY: each chunk was mapped by obtain_locked with CHUNK
            // bytes; nothing uses its blocks any more.
            unsafe { os::unmap(NonNull::new(b.chunk).expect("a chunk"), CHUNK) };
        }
    }

    #[test]
    fn blocks_are_aligned_zeroed_and_recycled() {
        for size in [1usize, 16, 17, 600, 1000, 4096, 5000, 70_000] {
            let p = obtain(size).expect("memory");
            let bs = block_size(size);
            assert_eq!(p.as_ptr() as usize % bs.min(4096), 0, "size {size}");
            // SAFETY: the block has `size` bytes, given back once.
            unsafe {
                assert!(core::slice::from_raw_parts(p.as_ptr(), size)
                    .iter()
                    .all(|&b| b == 0));
                p.as_ptr().write_bytes(0xa5, size);
                release(p, size);
            }
            let q = obtain(size).expect("memory");
            // SAFETY: as above.
            unsafe {
                assert!(core::slice::from_raw_parts(q.as_ptr(), size)
                    .iter()
                    .all(|&b| b == 0));
                release(q, size);
            }
        }
    }

    /// The process's arena starts on the static chunks, one per kind,
    /// page-aligned (so that blocks are aligned to their size): the first
    /// block of each kind needs no mapping.
    #[test]
    fn the_first_chunks_are_static() {
        let start = FIRST_CHUNKS.0.get() as usize;
        assert_eq!(start % 4096, 0);
        for (i, b) in FIRST.bump.iter().enumerate() {
            assert_eq!((b.chunk as usize, b.used), (start + i * CHUNK, 0));
        }
    }
}
