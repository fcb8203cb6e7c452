use super::*;
use crate::os::in_child;
use std::collections::HashSet;
use std::sync::Mutex;

/// Spans mapped for `tag` (its spare included) and objects handed out.
fn tag_counts(tag: u32) -> (usize, usize) {
    let t = &TAGS[tag as usize];
    t.lock.lock();
    // SAFETY: we hold the tag's lock.
    let st = unsafe { &*t.inner.get() };
    let r = (st.spans, st.live);
    t.lock.unlock();
    r
}

/// The tag of `size`, which no other test (of any module) may use, so
/// that its counters are this test's alone.
fn own_tag(size: usize) -> u32 {
    let tag = tag_for_size(size).expect("a free tag");
    assert_eq!(tag_counts(tag), (0, 0), "size {size} is used elsewhere");
    tag
}

/// Whether carving slot `slot` of `tag` has a chunk.
fn has_chunk(tag: u32, slot: usize) -> bool {
    let t = &TAGS[tag as usize];
    t.lock.lock();
    // SAFETY: we hold the tag's lock.
    let set = unsafe { !(*t.inner.get()).chunk(slot).span.is_null() };
    t.lock.unlock();
    set
}

/// 4 KiB pages in which objects of both `a` and `b` start.
fn shared_pages(a: &[NonNull<u8>], b: &[NonNull<u8>]) -> usize {
    let pages = |v: &[NonNull<u8>]| -> HashSet<usize> {
        v.iter().map(|o| o.as_ptr() as usize / 4096).collect()
    };
    pages(a).intersection(&pages(b)).count()
}

fn base_of(p: NonNull<u8>) -> usize {
    p.as_ptr() as usize & !(SPAN - 1)
}

/// Whether any page of the span at `base` is mapped (mincore fails with
/// ENOMEM on an unmapped range).
fn mapped(base: usize) -> bool {
    let mut v = vec![0u8; SPAN / 4096];
    // SAFETY: mincore only inspects the range; `v` has a byte per page.
    let rc = unsafe { libc::mincore(ptr::with_exposed_provenance_mut(base), SPAN, v.as_mut_ptr()) };
    rc == 0
}

/// Runs `f` in a forked child, which must die of SIGABRT.
fn aborts_in_child(f: fn()) {
    // SAFETY: as in `in_child`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let ok = std::panic::catch_unwind(f).is_ok();
        // SAFETY: as in `in_child`.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
        "child not aborted: status {status:#x}"
    );
}

/// Gives back two objects of a fresh tag of `size`, overwrites the link of
/// the second (the list's head) with `forge(first)`, well encoded, and
/// takes an object: the take must abort.
fn take_after_forging(size: usize, forge: fn(NonNull<u8>) -> *mut u8) {
    let tag = own_tag(size);
    let _keep = obtain(tag, size, 0).unwrap(); // the span stays in use
    let a = obtain(tag, size, 0).unwrap();
    let b = obtain(tag, size, 0).unwrap();
    // SAFETY: each given back once.
    unsafe {
        release(tag, a);
        release(tag, b);
    }
    let at = b.as_ptr().cast::<*mut u8>();
    // SAFETY: the test's write after free of `b`, the list's head.
    unsafe { at.write(links::protect(at, forge(a))) };
    let _ = obtain(tag, size, 0);
}

#[test]
fn a_link_out_of_its_span_aborts_even_when_well_encoded() {
    // A forger who knew the secret could encode any pointer: the take
    // still checks that the link names an object of the same span.
    aborts_in_child(|| {
        take_after_forging(4112, |_| Box::into_raw(Box::new([0u128; 8])).cast::<u8>())
    });
    // The same with a link inside the span but off its object grid.
    aborts_in_child(|| take_after_forging(4128, |a| a.as_ptr().wrapping_add(16)));
}

#[test]
fn empty_spans_are_unmapped() {
    in_child(|| {
        let size = 2064;
        let tag = own_tag(size);
        let cap = (SPAN - data_offset(size)) / size;
        let objs: Vec<_> = (0..3 * cap)
            .map(|_| obtain(tag, size, 0).unwrap())
            .collect();
        let bases: Vec<usize> = objs.chunks(cap).map(|c| base_of(c[0])).collect();
        assert_eq!(tag_counts(tag), (3, 3 * cap));
        for chunk in objs.chunks(cap) {
            assert!(chunk.iter().all(|&o| base_of(o) == base_of(chunk[0])));
        }
        for &o in &objs {
            // SAFETY: each object is given back once.
            unsafe { release(tag, o) };
        }
        // The first span to empty is kept as the spare; the others are
        // gone: unmarked, then unmapped.
        assert_eq!(tag_counts(tag), (1, 0));
        assert!(mapped(bases[0]));
        assert_eq!(owner(objs[0].as_ptr()), Owner::Span { tag });
        for (i, &b) in bases.iter().enumerate().skip(1) {
            assert!(!mapped(b), "span {i} is still mapped");
            assert_eq!(owner(objs[i * cap].as_ptr()), Owner::Foreign);
        }
        // trim takes every tag's lock, which a parent thread may have
        // held at fork time: drop this tag's spare alone.
        let spare = take_spare(&TAGS[tag as usize]).expect("a spare");
        // SAFETY: as in `trim`.
        unsafe { os::unmap(spare.cast(), SPAN) };
        assert_eq!(tag_counts(tag), (0, 0));
        assert!(!mapped(bases[0]), "the spare is still mapped");
        assert_eq!(owner(objs[0].as_ptr()), Owner::Foreign);
    });
}

#[test]
fn spans_with_room_are_used_before_new_ones() {
    let size = 3088;
    let tag = own_tag(size);
    let cap = (SPAN - data_offset(size)) / size;
    // One full span A, and a span B with 5 objects out.
    let mut objs: Vec<_> = (0..cap + 5)
        .map(|_| obtain(tag, size, 0).unwrap())
        .collect();
    let (a, b) = (base_of(objs[0]), base_of(objs[cap]));
    assert!(objs[..cap].iter().all(|&o| base_of(o) == a));
    assert_ne!(a, b);
    assert_eq!(tag_counts(tag), (2, cap + 5));
    // A regains room: it goes in front of B, whose bump pointer still
    // has room, and its freed slots are used before anything else.
    let back: HashSet<_> = objs.drain(10..20).collect();
    for &o in &back {
        // SAFETY: each object is given back once.
        unsafe { release(tag, o) };
    }
    let again: HashSet<_> = (0..10).map(|_| obtain(tag, size, 0).unwrap()).collect();
    assert_eq!(
        again, back,
        "the freed slots of the fuller span were not reused"
    );
    objs.extend(again);
    // Both spans have room: nothing new is mapped.
    objs.push(obtain(tag, size, 0).unwrap());
    assert_eq!(base_of(*objs.last().unwrap()), b);
    assert_eq!(tag_counts(tag), (2, cap + 6));
    for o in objs {
        // SAFETY: each object is given back once.
        unsafe { release(tag, o) };
    }
    assert_eq!(tag_counts(tag), (1, 0));
    // The spare serves the next object: no new span.
    let o = obtain(tag, size, 0).unwrap();
    assert_eq!(tag_counts(tag), (1, 1));
    // SAFETY: given back once.
    unsafe { release(tag, o) };
}

#[test]
fn carving_slots_carve_apart() {
    // Sizes that divide the page and sizes that do not, up to objects
    // larger than a page; enough objects to cross spans.
    for size in [64usize, 48, 1040, 3008, 9008] {
        let tag = own_tag(size);
        let cap = (SPAN - data_offset(size)) / size;
        let n = (cap + cap / 2).min(3000);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..n {
            // In turns, as two threads would that allocate at the same time.
            a.push(obtain_in(tag, size, 0).unwrap());
            b.push(obtain_in(tag, size, 3).unwrap());
        }
        assert_eq!(
            shared_pages(&a, &b),
            0,
            "{size} B: a page holds objects of both slots"
        );
        assert_eq!(tag_counts(tag).1, 2 * n);
        if size < 2048 {
            // Within a slot, objects come in address order inside a chunk.
            assert_eq!(a[1].as_ptr() as usize, a[0].as_ptr() as usize + size);
        }
        let all: HashSet<_> = a.iter().chain(&b).map(|o| o.as_ptr() as usize).collect();
        assert_eq!(all.len(), 2 * n, "an object handed out twice");
        for o in a.into_iter().chain(b) {
            // SAFETY: each object is given back once.
            unsafe { release(tag, o) };
        }
        assert_eq!(tag_counts(tag), (1, 0));
        assert!(
            !has_chunk(tag, 0) && !has_chunk(tag, 3),
            "a chunk outlived its span"
        );
    }
}

#[test]
fn a_slot_that_stops_leaves_its_chunk_and_nothing_else() {
    let size = 1008;
    let tag = own_tag(size);
    let cap = (SPAN - data_offset(size)) / size;
    // Slot 1 carves a chunk of the first span, takes one object, stops.
    let first = obtain_in(tag, size, 1).unwrap();
    let span = base_of(first);
    // Slot 2 takes the rest of the span's room, then goes to a new span
    // rather than into slot 1's chunk.
    let mut objs = vec![first];
    let next = loop {
        let o = obtain_in(tag, size, 2).unwrap();
        if base_of(o) != span {
            break o;
        }
        objs.push(o);
    };
    let left = cap - objs.len();
    assert!(
        left >= 1 && left <= chunk_bytes(size) / size + 1,
        "slot 1's chunk: {left} objects"
    );
    assert_eq!(tag_counts(tag), (2, objs.len() + 1));
    // Slot 1 comes back: its chunk still serves it, in the first span.
    let again = obtain_in(tag, size, 1).unwrap();
    assert_eq!(again.as_ptr() as usize, first.as_ptr() as usize + size);
    objs.push(again);
    objs.push(next);
    for o in objs {
        // SAFETY: each object is given back once.
        unsafe { release(tag, o) };
    }
    // Both spans emptied although slot 1's chunk was not used up: one
    // became the spare, the other is unmapped, and no chunk is left.
    assert_eq!(tag_counts(tag), (1, 0));
    assert!(!has_chunk(tag, 1) && !has_chunk(tag, 2));
}

#[test]
fn a_batch_hands_out_free_objects_first_then_its_chunk_in_order() {
    let size = 80;
    let tag = own_tag(size);
    let cap = (SPAN - data_offset(size)) / size;
    let per_chunk = chunk_bytes(size) / size;
    // More than a chunk and more than a span: runs cross both.
    let mut out = vec![ptr::null_mut(); cap + per_chunk + 7];
    assert_eq!(obtain_batch(tag, size, 5, &mut out), out.len());
    let set: HashSet<_> = out.iter().map(|p| p.addr()).collect();
    assert_eq!(set.len(), out.len(), "an object handed out twice");
    assert_eq!(tag_counts(tag), (2, out.len()));
    // Inside a span, the objects come in address order.
    let span0 = out[0].addr() & !(SPAN - 1);
    for w in out.windows(2) {
        if w[1].addr() & !(SPAN - 1) == span0 {
            assert_eq!(w[1].addr(), w[0].addr() + size);
        }
    }
    // Two objects go back: the next batch hands them out first (the
    // first span's free list), then goes on with the chunk.
    let (a, b) = (out[3], out[cap - 1]);
    // SAFETY: each is given back once, and taken again below.
    unsafe {
        release(tag, NonNull::new(a).unwrap());
        release(tag, NonNull::new(b).unwrap());
    }
    let mut more = [ptr::null_mut(); 3];
    assert_eq!(obtain_batch(tag, size, 5, &mut more), 3);
    assert_eq!(
        HashSet::from([more[0].addr(), more[1].addr()]),
        HashSet::from([a.addr(), b.addr()])
    );
    assert_eq!(more[2].addr(), out[out.len() - 1].addr() + size);
    assert_eq!(tag_counts(tag), (2, out.len() + 1));
    for &o in out.iter().chain(&more[2..]) {
        // SAFETY: each object is given back once.
        unsafe { release(tag, NonNull::new(o).unwrap()) };
    }
    assert_eq!(tag_counts(tag), (1, 0));
    assert!(!has_chunk(tag, 5), "a chunk outlived its span");
}

#[test]
fn an_object_carved_for_a_slot_and_not_handed_out_is_not_taken_back() {
    // The chunk's next object lies below the bump pointer: the release
    // must still see that nobody was handed it.
    aborts_in_child(|| {
        let size = 256;
        let tag = own_tag(size);
        let o = obtain_in(tag, size, 0).unwrap();
        assert!(has_chunk(tag, 0));
        let never = NonNull::new(o.as_ptr().wrapping_add(size)).unwrap();
        // SAFETY: the test's invalid release; it must abort.
        unsafe { release(tag, never) };
    });
}

#[test]
fn live_counts_survive_threads() {
    let size = 5136;
    let tag = own_tag(size);
    // Objects handed out and not released, across all threads: one
    // handed out twice would be a broken free list or bump pointer.
    let live = Mutex::new(HashSet::new());
    // Objects handed from one thread to another, released by the taker.
    let passed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (live, passed) = (&live, &passed);
            s.spawn(move || {
                let mut mine = Vec::new();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for _ in 0..20_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match x % 4 {
                        0 | 1 => {
                            let o = obtain(tag, size, t as usize).unwrap();
                            assert!(live.lock().unwrap().insert(o.as_ptr() as usize));
                            // SAFETY: a fresh object of `size` bytes.
                            unsafe { o.as_ptr().add(8).cast::<u64>().write(t) };
                            mine.push(o);
                        }
                        2 => {
                            if let Some(o) = mine.pop() {
                                passed.lock().unwrap().push(o.as_ptr() as usize);
                            }
                        }
                        _ => {
                            let o =
                                if x & 8 == 0 {
                                    mine.pop()
                                } else {
                                    passed.lock().unwrap().pop().and_then(|a| {
                                        NonNull::new(ptr::with_exposed_provenance_mut(a))
                                    })
                                };
                            if let Some(o) = o {
                                assert!(live.lock().unwrap().remove(&(o.as_ptr() as usize)));
                                // SAFETY: each object is given back once.
                                unsafe { release(tag, o) };
                            }
                        }
                    }
                }
                for o in mine {
                    assert!(live.lock().unwrap().remove(&(o.as_ptr() as usize)));
                    // SAFETY: as above.
                    unsafe { release(tag, o) };
                }
            });
        }
    });
    let (spans, out) = tag_counts(tag);
    let rest = passed.into_inner().unwrap();
    assert_eq!(out, rest.len(), "live count != objects not released");
    assert!(spans >= 1);
    for a in rest {
        // SAFETY: the objects left in `passed`, each given back once.
        unsafe {
            release(
                tag,
                NonNull::new(ptr::with_exposed_provenance_mut(a)).unwrap(),
            )
        };
    }
    // Every span emptied: only the spare is left, and trim drops it.
    assert_eq!(tag_counts(tag), (1, 0));
    trim();
    assert_eq!(tag_counts(tag), (0, 0));
}

#[test]
fn tags_are_bound_once_per_size() {
    let a = tag_for_size(7000).unwrap();
    assert_eq!(tag_for_size(6999), Some(a), "sizes round up to 16");
    assert!(a as usize >= RESERVED_TAGS);
    assert_ne!(tag_for_size(7024), Some(a));
    assert_eq!(tag_for_size(SPAN / 8 + 16), None);
    assert_eq!(
        reserve(RESERVED_TAGS as u32, 64),
        None,
        "not a reserved tag"
    );
    // The first binding says so (the registry then knows the tag has no
    // pool), a second of the same size does not.
    assert_eq!(reserve(RESERVED_TAGS as u32 - 1, 9000), Some(true));
    assert_eq!(reserve(RESERVED_TAGS as u32 - 1, 9000), Some(false));
    assert_eq!(reserve(RESERVED_TAGS as u32 - 1, 9024), None, "rebound");
}

#[test]
fn span_objects_are_found_by_their_address() {
    let tag = tag_for_size(1040).unwrap();
    let objs: Vec<_> = (0..3000).map(|_| obtain(tag, 1040, 0).unwrap()).collect();
    for &o in &objs {
        assert_eq!(owner(o.as_ptr()), Owner::Span { tag });
        // Inside an object, not at its start: not a block we gave out.
        assert_eq!(owner(o.as_ptr().wrapping_add(16)), Owner::Foreign);
    }
    for o in objs {
        // SAFETY: each object is given back once.
        unsafe { release(tag, o) };
    }
    let again = obtain(tag, 1040, 0).unwrap();
    assert_eq!(owner(again.as_ptr()), Owner::Span { tag });
    // SAFETY: given back once.
    unsafe { release(tag, again) };
}

#[test]
fn the_slot_past_a_spans_last_object_is_no_object() {
    // 2064-byte objects leave a tail of 1952 bytes after the last one: a
    // slot there would end 112 bytes into the next mapping.
    let size = 2064;
    let tag = own_tag(size);
    let cap = (SPAN - data_offset(size)) / size;
    let o = obtain(tag, size, 0).unwrap();
    let base = base_of(o);
    let slot = |k: usize| ptr::with_exposed_provenance::<u8>(base + data_offset(size) + k * size);
    assert_eq!(owner(slot(cap - 1)), Owner::Span { tag });
    assert!(data_offset(size) + cap * size < SPAN);
    assert_eq!(owner(slot(cap)), Owner::Foreign);
    assert_eq!(span_object(slot(cap)), None);
    // SAFETY: given back once.
    unsafe { release(tag, o) };
}

#[test]
fn power_of_two_objects_are_aligned_to_their_size() {
    let tag = tag_for_size(4096).unwrap();
    let objs: Vec<_> = (0..600).map(|_| obtain(tag, 4096, 0).unwrap()).collect();
    for o in objs {
        assert_eq!(o.as_ptr() as usize % 4096, 0);
        // SAFETY: each object is given back once.
        unsafe { release(tag, o) };
    }
}

#[test]
fn large_blocks_are_found_and_unmapped() {
    for (size, align) in [(40_000usize, 16usize), (5 << 20, 64), (100, 8 << 20)] {
        let p = large_obtain(size, align).unwrap();
        assert_eq!(p.as_ptr() as usize % align, 0);
        match owner(p.as_ptr()) {
            Owner::Large { usable } => assert!(usable >= size),
            o => panic!("{o:?}"),
        }
        assert_eq!(owner(p.as_ptr().wrapping_add(4096)), Owner::Foreign);
        // SAFETY: `size` writable bytes, released once.
        unsafe {
            p.as_ptr().write_bytes(1, size);
            large_release(p);
        }
        assert_eq!(owner(p.as_ptr()), Owner::Foreign);
    }
}

/// A large mapping is placed as spans are: one `mmap` (`PROT_NONE`, the
/// guards included) and one `mprotect` of its middle, where the kernel's
/// choice takes two `munmap`s more. (In a child, where no other test maps;
/// the best of three, since a range found taken falls back once and moves
/// the area.) Its guard pages stay inaccessible.
#[test]
#[cfg_attr(miri, ignore = "fork")]
fn large_mappings_take_one_mmap_and_one_mprotect() {
    in_child(|| {
        let calls = (0..3)
            .map(|_| {
                let before = crate::os::hook::calls();
                let p = large_obtain(1 << 20, 16).expect("memory");
                let n = crate::os::hook::calls() - before;
                let guard = (p.as_ptr() as usize & !(SPAN - 1)) - GUARD;
                let mut v = [0u8; 1];
                // SAFETY: mincore only inspects the range.
                let rc = unsafe {
                    libc::mincore(ptr::with_exposed_provenance_mut(guard), 1, v.as_mut_ptr())
                };
                assert_eq!(rc, 0, "the guard below is mapped");
                // SAFETY: a large block, released once.
                unsafe { large_release(p) };
                n
            })
            .min();
        assert_eq!(calls, Some(2), "mmap and mprotect");
    });
}

#[test]
fn large_blocks_resize_keeping_their_contents() {
    let mut p = large_obtain(100_000, 16).unwrap();
    let fill = |p: NonNull<u8>, n: usize| {
        // SAFETY: `n` writable bytes of a live block.
        unsafe { (0..n).for_each(|i| p.as_ptr().add(i).write(i as u8 ^ (i >> 12) as u8)) }
    };
    let check = |p: NonNull<u8>, n: usize| {
        // SAFETY: `n` readable bytes of a live block.
        (0..n).all(|i| unsafe { p.as_ptr().add(i).read() } == i as u8 ^ (i >> 12) as u8)
    };
    fill(p, 100_000);
    let mut kept = 100_000;
    // Grow past several granules (in place or moved), then shrink.
    for size in [3 << 20, 9 << 20, 5 << 20, 50_000, 7 << 20] {
        // SAFETY: a live large block of ours, resized by its owner.
        p = unsafe { large_resize(p, size) }.unwrap();
        kept = kept.min(size);
        assert!(check(p, kept), "contents lost at {size}");
        match owner(p.as_ptr()) {
            Owner::Large { usable } => assert!(usable >= size && usable < size + 8192),
            o => panic!("{o:?}"),
        }
        fill(p, size);
        kept = size;
    }
    // SAFETY: released once.
    unsafe { large_release(p) };
    assert_eq!(owner(p.as_ptr()), Owner::Foreign);
}

#[test]
fn foreign_pointers_are_rejected() {
    let x = Box::new([0u64; 4]);
    assert_eq!(owner(ptr::from_ref(&*x).cast()), Owner::Foreign);
    assert_eq!(owner(ptr::null()), Owner::Foreign);
    assert_eq!(
        owner(ptr::with_exposed_provenance(usize::MAX & !15)),
        Owner::Foreign
    );
}

/// Whether `tag`'s lock is held (by anyone).
fn held(tag: u32) -> bool {
    let t = &TAGS[tag as usize];
    if t.lock.try_lock() {
        t.lock.unlock();
        false
    } else {
        true
    }
}

#[test]
fn fork_handlers_hold_the_locks_of_bound_tags_only() {
    let bound = own_tag(11_008);
    let unbound = MAX_TAGS as u32 - 1;
    // Relaxed: see SIZES.
    assert_eq!(
        SIZES[unbound as usize].load(Relaxed),
        0,
        "the last tag is unbound"
    );
    fork_prepare();
    let (b, u) = (held(bound), held(unbound));
    fork_release();
    assert!(b, "a bound tag's lock is held across fork()");
    assert!(!u, "an unbound tag's lock is left alone");
    assert!(!held(bound), "and released after it");
}

#[test]
fn a_tag_bound_inside_the_fork_window_is_held_until_release() {
    fork_prepare();
    crate::sync::open_window();
    // Not `own_tag`, which takes the lock: the window lets it through.
    let tag = tag_for_size(11_024).expect("a free tag");
    crate::sync::close_window();
    let h = held(tag);
    fork_release();
    assert!(h, "a tag bound inside the window is held like the others");
    assert!(!held(tag), "and released with them");
}

#[test]
fn placed_spans_are_marked_in_the_static_leaf() {
    let tag = own_tag(1104);
    let o = obtain(tag, 1104, 0).unwrap();
    let addr = o.as_ptr() as usize;
    // Spans are placed below `os::placement_top` (the test binary's own
    // statics, less 1 GiB), in the range of one leaf: the static one.
    let top = os::placement_top();
    assert!(
        addr < top && addr >= top - (16 << 30),
        "placed: {addr:#x} below {top:#x}"
    );
    let root = addr >> LEAF_SHIFT;
    assert_eq!(root, first_leaf_root());
    assert_eq!(
        ROOTS_MAP[root].load(Acquire).cast_const(),
        FIRST_LEAF.0.as_ptr(),
        "the leaf of the placed range is the static one"
    );
    assert_eq!(owner(o.as_ptr()), Owner::Span { tag });
    // SAFETY: given back once.
    unsafe { release(tag, o) };
}
