use super::{Taken, ThreadCache};
use crate::head::{self, Pool};
use crate::registry::{self, Destroyed};
use crate::shared_cache::CLUSTER;
use core::ptr::NonNull;
use core::sync::atomic::AtomicBool;
use core::sync::atomic::Ordering::{Acquire, Release};
use std::collections::HashMap;
use std::sync::mpsc;

/// A pool whose shared cache a concurrent test's `gc()` leaves alone.
fn pool(name: &core::ffi::CStr, size: usize) -> &'static Pool {
    let p = registry::create(name, size, 0).expect("pool");
    p.minavail
        .store(usize::MAX, core::sync::atomic::Ordering::Relaxed);
    p
}

#[test]
fn newest_object_comes_back_first() {
    let p = pool(c"tc-lifo", 64);
    let a = p.alloc().unwrap();
    let b = p.alloc().unwrap();
    // SAFETY: both objects came from `p` and are given back once.
    unsafe {
        p.free(a);
        p.free(b);
    }
    assert_eq!(p.alloc(), Some(b));
    assert_eq!(p.alloc(), Some(a));
    // SAFETY: as above.
    unsafe {
        p.free(a);
        p.free(b);
    }
    assert_eq!(registry::stats(p).cached, 2);
}

/// Over budget, the oldest objects leave for the shared cache; what
/// stays is the newest, and comes back newest first.
#[test]
fn eviction_sends_the_oldest_to_the_shared_cache() {
    let size = 4096;
    let p = pool(c"tc-lru", size);
    let budget = crate::options::cache_size();
    let n = 2 * budget / size;
    let objs: Vec<_> = (0..n).map(|_| p.alloc().unwrap()).collect();
    for &o in &objs {
        // SAFETY: each object came from `p` and is given back once.
        unsafe { p.free(o) };
    }
    let s = registry::stats(p);
    assert!(s.cached * size <= budget, "over budget: {s:?}");
    assert!(s.cached * size > budget / 2, "evicted far too much: {s:?}");
    assert_eq!(s.cached + s.shared, n);
    assert_eq!(s.used, 0);
    // The cached ones are the last freed, returned newest first.
    for i in 0..s.cached {
        assert_eq!(p.alloc(), Some(objs[n - 1 - i]));
    }
    // Then come objects of the shared cache: all from the oldest ones.
    let next = p.alloc().unwrap();
    assert!(objs[..n - s.cached].contains(&next));
    // Give back what the test still holds (Miri's leak check sees it).
    for &o in objs[n - s.cached..].iter().chain([&next]) {
        // SAFETY: each object came from `p` and is given back once.
        unsafe { p.free(o) };
    }
}

/// Small objects leave in clusters of about `CLUSTER_BYTES`, not of
/// `CLUSTER` objects.
#[test]
#[cfg_attr(
    miri,
    ignore = "thousands of objects; eviction's memory safety is covered above"
)]
fn small_objects_leave_in_large_clusters() {
    let p = pool(c"tc-cluster", 64);
    let budget = crate::options::cache_size();
    let len = super::evict::cluster_len(p);
    assert_eq!(len, super::evict::CLUSTER_BYTES.min(budget / 16) / 64);
    assert!(len > CLUSTER);
    let n = budget / 64 + 1;
    let objs: Vec<_> = (0..n).map(|_| p.alloc().unwrap()).collect();
    for &o in &objs {
        // SAFETY: each object came from `p` and is given back once.
        unsafe { p.free(o) };
    }
    let s = registry::stats(p);
    // The fewest whole clusters that bring the thread to 7/8 of budget.
    let excess = n - (budget - budget / 8) / 64;
    assert_eq!(s.shared, excess.div_ceil(len) * len, "{s:?}");
}

/// Eviction is oldest-first across pools, in clusters: with objects of
/// two pools freed alternately, both pools keep their newest objects,
/// and about as many each (a per-pool order would empty one pool).
#[test]
fn eviction_is_oldest_first_across_pools() {
    let size = 4096;
    let (a, b) = (pool(c"tc-lru-a", size), pool(c"tc-lru-b", size));
    let budget = crate::options::cache_size();
    // Twice the budget, half of it from each pool.
    let n = budget / size;
    let objs: Vec<_> = (0..n)
        .flat_map(|_| [(a, a.alloc().unwrap()), (b, b.alloc().unwrap())])
        .collect();
    for &(p, o) in &objs {
        // SAFETY: each object came from `p` and is given back once.
        unsafe { p.free(o) };
    }
    let (sa, sb) = (registry::stats(a), registry::stats(b));
    assert!((sa.cached + sb.cached) * size <= budget, "{sa:?} {sb:?}");
    assert!(sa.cached.abs_diff(sb.cached) <= CLUSTER, "{sa:?} {sb:?}");
    for (p, kept) in [(a, sa.cached), (b, sb.cached)] {
        let newest = objs.iter().rev().filter(|(q, _)| core::ptr::eq(*q, p));
        let got: Vec<_> = (0..kept).map(|_| p.alloc().unwrap()).collect();
        let want: Vec<_> = newest.take(kept).map(|&(_, o)| o).collect();
        assert_eq!(got, want);
        for o in got {
            // SAFETY: as above.
            unsafe { p.free(o) };
        }
    }
}

/// An entry's array starts as a 1 KiB block of the metadata arena and
/// moves to larger ones as it fills: every object freed within the budget
/// stays cached, and they come back newest first.
#[test]
fn an_entry_starts_small_and_grows() {
    let size = 64;
    let p = pool(c"tc-grow", size);
    let n = 500;
    assert!(n * size * 8 <= crate::options::cache_size());
    let objs: Vec<_> = (0..n).map(|_| p.alloc().unwrap()).collect();
    let tc = ThreadCache::current().unwrap();
    let e = &tc.table[p.slot];
    let first = (1024 - size_of::<super::Marks>()) / size_of::<*mut u8>();
    assert_eq!(tc.capacity(e), first);
    for &o in &objs {
        // SAFETY: each object came from `p` and is given back once.
        unsafe { p.free(o) };
    }
    assert!(tc.capacity(e) >= n, "capacity {}", tc.capacity(e));
    assert_eq!(registry::stats(p).cached, n);
    let back: Vec<_> = (0..n).map(|_| p.alloc().unwrap()).collect();
    assert!(back.iter().eq(objs.iter().rev()));
    for &o in &back {
        // SAFETY: as above.
        unsafe { p.free(o) };
    }
}

/// While entries' arrays move to larger ones (a thread freeing many
/// objects), a statistics reader on another thread never counts more
/// cached objects than there are.
#[test]
fn counts_stay_bounded_while_arrays_grow() {
    let p = pool(c"tc-grow-stats", 64);
    // 64-byte objects: the array grows from 97 slots to 481, 2017, 8065.
    let (n, rounds) = if cfg!(miri) { (120, 2) } else { (4000, 50) };
    assert!(n * size_of::<u64>() * 8 <= crate::options::cache_size());
    for _ in 0..rounds {
        // Joined (not scoped): a round starts once the previous thread's
        // exit drain is over, so one thread's cache holds the objects.
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let t = std::thread::spawn(move || {
            // A new thread: new entries, which start small.
            let objs: Vec<_> = (0..n).map(|_| p.alloc().unwrap()).collect();
            for &o in &objs {
                // SAFETY: each object came from `p` and is given back once.
                unsafe { p.free(o) };
            }
            d.store(true, Release);
        });
        while !done.load(Acquire) {
            let st = registry::stats(p);
            assert!(st.cached <= n, "{st:?}");
        }
        t.join().unwrap();
    }
}

/// The stack's two ends: a plain take pops the newest, `take_oldest` (the
/// `cold-first` option) the bottom, across pushes and pops in between.
#[test]
fn both_ends_of_the_stack() {
    let p = pool(c"tc-ends", 64);
    let [a, b, c] = [(); 3].map(|_| p.alloc().unwrap());
    let tc = ThreadCache::current().unwrap();
    // SAFETY: each object came from `p` and is not used while cached; the
    // key marks it free, as `Pool::free` does.
    let put = |o| unsafe {
        head::set_key(p, o);
        assert!(tc.put(p, o));
    };
    put(a);
    put(b);
    assert_eq!(tc.take(p), Taken::Object(b));
    put(c);
    assert_eq!(tc.take_oldest(p), Some(a));
    assert_eq!(tc.take_oldest(p), Some(c));
    for o in [a, b, c] {
        // SAFETY: the objects are ours again: clear the free mark, give
        // them back once.
        unsafe {
            super::clear_key(o.as_ptr());
            p.free(o);
        }
    }
    assert_eq!(registry::stats(p).cached, 3);
}

#[test]
fn exiting_thread_gives_its_cache_back() {
    let p = pool(c"tc-exit", 128);
    std::thread::spawn(move || {
        let objs: Vec<_> = (0..10).map(|_| p.alloc().unwrap()).collect();
        for o in objs {
            // SAFETY: each object came from `p` and is given back once.
            unsafe { p.free(o) };
        }
        assert_eq!(registry::stats(p).cached, 10);
    })
    .join()
    .unwrap();
    let s = registry::stats(p);
    assert_eq!((s.cached, s.shared, s.used, s.allocated), (0, 10, 0, 10));
}

/// pool_destroy succeeds while a thread that is alive and blocked caches
/// the pool's objects; that thread gives them back to the system at its
/// next eviction, and its cache keeps working afterwards.
#[test]
fn destroy_reclaims_from_a_blocked_thread() {
    let p = pool(c"tc-destroy", 256);
    let other = pool(c"tc-destroy-other", 256);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let objs: Vec<_> = (0..20).map(|_| p.alloc().unwrap()).collect();
        let o = other.alloc().unwrap();
        for x in objs {
            // SAFETY: each object came from `p` and is given back once.
            unsafe { p.free(x) };
        }
        // SAFETY: as above.
        unsafe { other.free(o) };
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        // Evicting everything gives back the destroyed pool's objects (to
        // the system) and moves only `other`'s object to a shared cache.
        crate::evict_local_cache();
        let s = registry::stats(other);
        (s.cached, s.shared)
    });
    ready_rx.recv().unwrap();
    assert_eq!(registry::stats(p).cached, 20);
    assert_eq!(registry::destroy(p), Ok(Destroyed::Released));
    go_tx.send(()).unwrap();
    assert_eq!(t.join().unwrap(), (0, 1));
    assert_eq!(p.shared.allocated(), 0, "the dead pool's objects went back");
    // SAFETY: heads are never released; `p` is now a dead handle.
    assert!(unsafe { Pool::from_handle(p.handle) }.is_none());
}

/// An object crossing threads, with its pointer's provenance (an address
/// turned back into a pointer would hide it from Miri's leak check).
struct Obj(NonNull<u8>);
// SAFETY: an object is plain memory owned by whoever holds the `Obj`.
unsafe impl Send for Obj {}

/// Many threads allocate, hand objects to each other and free them; no
/// object is handed out twice and every counter balances at the end.
#[test]
fn cross_thread_traffic_balances() {
    let p = pool(c"tc-stress", 48);
    let threads = 4;
    let rounds = if cfg!(miri) { 50 } else { 20_000 };
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<Obj>()).unzip();
    let free = |x: Obj| {
        // SAFETY: every object passed here is an object of `p` that
        // its holder gives back exactly once.
        unsafe { p.free(x.0) }
    };
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let next = txs[(t + 1) % threads].clone();
            std::thread::spawn(move || {
                let mut live = HashMap::new();
                for i in 0..rounds {
                    let o = p.alloc().unwrap();
                    let a = o.as_ptr().addr();
                    assert!(live.insert(a, Obj(o)).is_none(), "object handed out twice");
                    if i % 3 == 0 {
                        next.send(live.remove(&a).unwrap()).unwrap();
                    }
                    rx.try_iter().for_each(free);
                    if live.len() > 64 {
                        let x = *live.keys().next().unwrap();
                        free(live.remove(&x).unwrap());
                    }
                }
                live.into_values().for_each(free);
                rx
            })
        })
        .collect();
    drop(txs);
    let rxs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    rxs.iter().for_each(|rx| rx.try_iter().for_each(free));
    let s = registry::stats(p);
    assert_eq!(s.used, 0, "objects lost: {s:?}");
    assert_eq!(s.allocated, s.cached + s.shared);
}

/// A thread that frees objects of many pools in turns, past its budget,
/// stays on the hit path: a grant lasts a cluster of its pool's frees, and
/// an eviction an eighth of the budget, whatever the other pools do.
#[test]
#[cfg_attr(miri, ignore = "thousands of objects")]
fn frees_of_many_pools_near_the_budget_stay_on_the_hit_path() {
    let pools: Vec<_> = (1..=16)
        .map(|k| {
            let name = std::ffi::CString::new(format!("tc-many-{k}")).unwrap();
            pool(Box::leak(name.into_boxed_c_str()), 64 * k)
        })
        .collect();
    let budget = crate::options::cache_size();
    let per_pool = 2 * budget / pools.iter().map(|p| p.obj_size).sum::<usize>();
    let objs: Vec<Vec<_>> = pools
        .iter()
        .map(|p| (0..per_pool).map(|_| p.alloc().unwrap()).collect())
        .collect();
    let tc = ThreadCache::existing().expect("a cache");
    let before = tc.tick.get();
    for i in 0..per_pool {
        for (p, o) in pools.iter().zip(&objs) {
            // SAFETY: each object came from its pool and is given back once.
            unsafe { p.free(o[i]) };
        }
    }
    let slow = tc.tick.get() - before;
    let frees = (per_pool * pools.len()) as u64;
    // A grant per cluster (8 to 64 objects here, 8 for most of these
    // sizes) and a few evictions: about one slow free in ten. (Taking back
    // every pool's room at each grant near the budget made it more than
    // one in two.)
    assert!(slow * 5 <= frees, "{slow} slow events for {frees} frees");
    for (p, o) in pools.iter().zip(&objs) {
        let s = registry::stats(p);
        assert_eq!(s.cached + s.shared, o.len(), "{s:?}");
    }
}

/// A thread that has no cache reads, through its bias, the zero word in
/// front of the handle as the key of the pool's entry: both hit paths miss
/// and leave it without a cache, and the object stays the caller's.
#[test]
fn a_thread_without_a_cache_misses_on_both_hit_paths() {
    let p = pool(c"tc-no-cache", 64);
    let obj = p.alloc().unwrap();
    // SAFETY: given back to `p` once.
    unsafe { p.free(obj) };
    let obj = p.alloc().unwrap();
    let shared = core::sync::atomic::AtomicPtr::new(obj.as_ptr());
    std::thread::spawn(move || {
        assert!(ThreadCache::existing().is_none());
        assert_eq!(p.handle.alloc_hit(), None);
        let obj = NonNull::new(shared.into_inner()).unwrap();
        // SAFETY: an aligned object of `p`; a miss leaves it to us.
        assert!(!unsafe { p.handle.free_hit(obj) });
        assert!(ThreadCache::existing().is_none());
    })
    .join()
    .unwrap();
    // SAFETY: still ours: given back once.
    unsafe { p.free(obj) };
    assert_eq!(registry::stats(p).used, 0);
}

/// A class pool (one that refills in batches) takes a kilobyte of new
/// objects at its first refill, not a page of them; each later refill takes
/// as many as the pool counts taken on the thread's bucket, so batches
/// double up to a page (or a cluster).
#[test]
#[cfg_attr(miri, ignore = "spans: Miri cannot trim their mappings")]
fn new_objects_come_in_batches_that_double() {
    // A reserved tag no other test binds (registry's and span's tests bind
    // the last two).
    let tag = crate::span::RESERVED_TAGS as u32 - 3;
    let p = registry::create_span_pool(c"tc-batches", 64, tag).expect("pool");
    assert!(p.refills_in_batches());
    let mut held = Vec::new();
    let mut allocated = Vec::new();
    for _ in 0..200 {
        held.push(p.alloc().expect("object"));
        let a = registry::stats(p).allocated;
        if allocated.last() != Some(&a) {
            allocated.push(a);
        }
    }
    // 1024 / 64, then doubling, then steps of 4096 / 64.
    assert_eq!(allocated, [16, 32, 64, 128, 192, 256]);
    for o in held {
        // SAFETY: objects of `p`, each given back once.
        unsafe { p.free(o) };
    }
}

/// An entry's first array holds one of its pool's clusters: 1 KiB for
/// small objects (64 slots), 512 bytes from 128-byte objects up (32 slots
/// or fewer), so that the entries of a process's little-used pools share
/// fewer pages.
#[test]
fn first_arrays_hold_one_cluster() {
    let small = pool(c"tc-first-array-64", 64);
    let large = pool(c"tc-first-array-256", 256);
    assert_eq!(super::first_block(small), 1024);
    assert_eq!(super::first_block(large), 512);
    // The entry starts with that many slots, and grows when filled.
    let objs: Vec<_> = (0..200).map(|_| large.alloc().expect("object")).collect();
    for &o in &objs {
        // SAFETY: objects of `large`, each given back once.
        unsafe { large.free(o) };
    }
    assert_eq!(registry::stats(large).cached, 200);
}

/// The static first cache, given back, is zeroed by its next owner, with
/// one `madvise`, and given back again without a system call (in a forked
/// child: no other thread takes it meanwhile; the child uses no pool
/// afterwards, so a cache of its own there may be overwritten).
#[test]
#[cfg_attr(miri, ignore = "fork")]
fn the_static_cache_is_zeroed_for_its_next_owner() {
    use super::{map_cache, unmap, FIRST_CACHE, FIRST_CACHE_STATE};
    use crate::os::hook;
    crate::os::in_child(|| {
        let first = FIRST_CACHE.0.get().cast::<u8>();
        let len = core::mem::size_of::<ThreadCache>();
        // As if its last owner had written it and given it back.
        // SAFETY: the static cache's bytes, nobody else's in the child.
        unsafe {
            first.write_bytes(0xa5, 64);
            first.add(len - 64).write_bytes(0xa5, 64);
        }
        FIRST_CACHE_STATE.store(super::DIRTY, Release);
        let before = hook::calls();
        let tc = map_cache().expect("the static cache");
        assert_eq!(hook::calls() - before, 1, "zeroed with one call");
        assert_eq!(tc.as_ptr().cast::<u8>(), first);
        // SAFETY: as above.
        assert!(unsafe { *first == 0 && *first.add(len - 1) == 0 }, "zeroed");
        let before = hook::calls();
        // SAFETY: the cache we were given, unused.
        unsafe { unmap(tc) };
        assert_eq!(hook::calls(), before, "given back without a call");
        assert_eq!(FIRST_CACHE_STATE.load(Acquire), super::DIRTY);
    });
}
