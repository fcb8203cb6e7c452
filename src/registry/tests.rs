use super::*;

#[test]
fn bad_arguments_are_refused() {
    assert_eq!(create(c"zero", 0, 0).err(), Some(Error::Invalid));
    assert_eq!(
        create(c"huge", POOL_MAX_SIZE + 1, 0).err(),
        Some(Error::Invalid)
    );
    assert_eq!(create(c"flags", 64, 4).err(), Some(Error::Invalid));
    assert!(create(c"max", POOL_MAX_SIZE, POOL_F_EXACT).is_ok());
}

#[test]
fn sizes_round_to_16_unless_exact() {
    assert_eq!(create(c"r1", 1, 0).unwrap().size, 16);
    assert_eq!(create(c"r33", 33, 0).unwrap().size, 48);
    assert_eq!(create(c"e33", 33, POOL_F_EXACT).unwrap().size, 33);
    let tiny = create(c"e1", 1, POOL_F_EXACT).unwrap();
    let o = tiny.alloc().unwrap();
    assert_eq!(o.as_ptr() as usize % os::OBJECT_ALIGN, 0);
    // SAFETY: an object of `tiny`, given back once.
    unsafe { tiny.free(o) };
}

#[test]
fn shared_pools_of_one_size_merge() {
    // A size no other test uses, so that merging is only with ourselves.
    let a = create(c"merge-a", 4000, POOL_F_SHARED).unwrap();
    let b = create(c"merge-b", 3999, POOL_F_SHARED).unwrap();
    let c = create(c"merge-c", 4000, 0).unwrap();
    assert!(ptr::eq(a, b));
    assert!(!ptr::eq(a, c));
    assert_eq!(stats(a).users, 2);
    assert_eq!(a.name(), c"merge-a");
    assert_eq!(destroy(a), Ok(Destroyed::Released));
    assert_eq!(stats(b).users, 1);
    assert_eq!(destroy(b), Ok(Destroyed::Released));
    assert_eq!(destroy(c), Ok(Destroyed::Released));
}

#[test]
fn a_span_tag_has_one_pool() {
    // A reserved tag no other test binds (span's tests bind the last).
    let tag = span::RESERVED_TAGS as u32 - 2;
    let p = create_span_pool(c"tag-a", 48, tag).unwrap();
    let q = create_span_pool(c"tag-b", 48, tag).unwrap();
    assert!(core::ptr::eq(p, q));
    assert_eq!(stats(p).users, 2);
    assert!(matches!(
        create_span_pool(c"tag-c", 64, tag),
        Err(Error::Invalid)
    ));
}

/// A span pool keeps the caller's static name as it is, and its destroy
/// leaves it alone (a name in read-only memory: freeing it into the
/// metadata arena would write its first word).
#[test]
fn a_span_pool_keeps_its_static_name() {
    static NAME: &core::ffi::CStr = c"tag-static";
    let tag = span::RESERVED_TAGS as u32 - 4;
    let p = create_span_pool(NAME, 64, tag).unwrap();
    assert!(core::ptr::eq(p.name().as_ptr(), NAME.as_ptr()));
    assert_eq!(destroy(p), Ok(Destroyed::Released));
    assert_eq!(NAME.to_bytes(), b"tag-static");
    // A copied name is the registry's.
    let q = create(c"copied", 64, 0).unwrap();
    let name = c"copied";
    assert!(!core::ptr::eq(q.name().as_ptr(), name.as_ptr()));
    assert_eq!(q.name(), name);
    assert_eq!(destroy(q), Ok(Destroyed::Released));
}

#[test]
fn destroy_is_refused_while_objects_are_held() {
    let p = create(c"in-use", 96, 0).unwrap();
    let o = p.alloc().unwrap();
    assert_eq!(destroy(p), Ok(Destroyed::InUse));
    assert_eq!(stats(p).used, 1);
    // SAFETY: the object came from `p`, given back once.
    unsafe { p.free(o) };
    assert_eq!(destroy(p), Ok(Destroyed::Released));
    // A second destroy is refused only while the head is not recycled,
    // which a test running in parallel may do at any time: the
    // single-threaded c-tests/test_errors.c checks it.
}

#[test]
fn gc_keeps_minavail_idle_objects() {
    let p = create(c"gc", 8192, 0).unwrap();
    let objs: Vec<_> = (0..20).map(|_| p.alloc().unwrap()).collect();
    for o in objs {
        // SAFETY: objects of `p`, each given back once.
        unsafe { p.free(o) };
    }
    crate::evict_local_cache();
    assert_eq!(stats(p).shared, 20);
    p.minavail.store(5, Relaxed);
    gc();
    let s = stats(p);
    assert_eq!((s.shared, s.allocated, s.used), (5, 5, 0));
    p.flush();
    assert_eq!(stats(p).allocated, 0);
    assert_eq!(destroy(p), Ok(Destroyed::Released));
}

#[test]
fn destroyed_heads_are_recycled_with_their_slot() {
    let p = create(c"recycle-1", 16, 0).unwrap();
    let slot = p.slot;
    assert_eq!(destroy(p), Ok(Destroyed::Released));
    // The head comes back once more than QUARANTINE other heads died
    // after it (other tests recycle heads concurrently, so allow more).
    let mut found = false;
    for _ in 0..8 * QUARANTINE {
        let q = create(c"recycle-2", 16, 0).unwrap();
        assert_eq!(q.name(), c"recycle-2");
        assert_eq!(stats(q).allocated, 0);
        found |= q.slot == slot;
        assert_eq!(destroy(q), Ok(Destroyed::Released));
        if found {
            break;
        }
    }
    assert!(found, "head not reused");
}

/// A destroyed head is not handed to the next pools: a stale handle
/// keeps failing with EINVAL instead of reaching a new pool.
#[test]
fn destroyed_heads_wait_in_quarantine() {
    let _serial = QUARANTINE_TEST.lock().unwrap();
    let p = create(c"quarantined", 48, 0).unwrap();
    assert_eq!(destroy(p), Ok(Destroyed::Released));
    let fresh: Vec<_> = (0..QUARANTINE / 2)
        .map(|_| create(c"quarantine-2", 48, 0).unwrap())
        .collect();
    // SAFETY: heads are never unmapped.
    assert!(
        unsafe { Pool::from_handle(p.handle) }.is_none(),
        "head reused early"
    );
    assert!(fresh.iter().all(|q| !ptr::eq(*q, p)));
    for q in fresh {
        assert_eq!(destroy(q), Ok(Destroyed::Released));
    }
}

/// Tests that count on the free list not being drained meanwhile.
static QUARANTINE_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn dump_names_every_pool_and_totals() {
    let p = create(c"dumped", 160, 0).unwrap();
    let o = p.alloc().unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    dump(fds[1]);
    // SAFETY: closing our own write end once.
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: closing our own read end once.
    unsafe { libc::close(fds[0]) };
    let out = String::from_utf8(out).unwrap();
    let line = out
        .lines()
        .find(|l| l.contains("Pool dumped "))
        .expect("pool line");
    assert!(
        line.contains("(160 bytes)") && line.contains("1 used"),
        "{line}"
    );
    assert!(out.lines().last().unwrap().starts_with("Total: "));
    // SAFETY: the object came from `p`, given back once.
    unsafe { p.free(o) };
}

#[test]
fn dump_to_buffer_is_the_dump_cut_like_snprintf() {
    let p = create(c"buffered", 176, 0).unwrap();
    let o = p.alloc().unwrap();
    let mut big = [0xffu8; 1 << 16];
    let len = dump_sorted_to_buffer(&mut big, DumpOrder::Name, 0);
    assert!(len > 0 && len < big.len(), "{len}");
    assert_eq!(big[len], 0, "NUL after the dump");
    let out = core::str::from_utf8(&big[..len]).unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains("Pool buffered ") && l.contains("(176 bytes)")),
        "{out}"
    );
    assert!(out.lines().last().unwrap().starts_with("Total: "), "{out}");
    // Other tests create pools meanwhile: compare what every dump starts
    // with, not two dumps.
    let mut small = [0xffu8; 10];
    let need = dump_sorted_to_buffer(&mut small, DumpOrder::Unsorted, 0);
    assert!(need > small.len(), "{need}");
    assert_eq!(&small[..9], b"  - Pool ");
    assert_eq!(small[9], 0);
    assert!(dump_sorted_to_buffer(&mut [], DumpOrder::Unsorted, 0) > 0);
    // SAFETY: the object came from `p`, given back once.
    unsafe { p.free(o) };
}
