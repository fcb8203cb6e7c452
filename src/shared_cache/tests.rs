use super::*;
use std::collections::HashSet;
use std::sync::Arc;

/// Test objects: boxed slots, addresses tracked as integers so the test
/// can free every one at the end.
pub(crate) fn make_cluster(objs: &mut Vec<usize>, len: usize) -> Cluster {
    let mut first: *mut Item = ptr::null_mut();
    for _ in 0..len {
        let item = Box::into_raw(Box::new(Item {
            next: ptr::null_mut(),
            down: ptr::null_mut(),
        }));
        // SAFETY: a fresh box of ours; links are stored protected.
        unsafe { Item::set_down(item, first) };
        objs.push(item as usize);
        first = item;
    }
    Cluster {
        first: NonNull::new(first).unwrap(),
        len,
    }
}

pub(crate) fn collect(c: Cluster, out: &mut Vec<usize>) {
    // SAFETY: the cluster came out of the cache, so it is ours.
    unsafe { c.for_each(|i| out.push(i.as_ptr() as usize)) };
}

pub(crate) fn free_all(objs: &[usize]) {
    for &o in objs {
        // SAFETY: every address came from Box::into_raw and is freed once.
        drop(unsafe { Box::from_raw(o as *mut Item) });
    }
}

#[test]
fn put_then_take_returns_the_same_objects() {
    let cache = SharedCache::new();
    let mut objs = Vec::new();
    let c = make_cluster(&mut objs, 5);
    cache.put(0, c);
    assert_eq!(cache.objects(), 5);
    let c = cache.take(0).expect("a cluster");
    assert_eq!(c.len, 5);
    let mut got = Vec::new();
    collect(c, &mut got);
    got.sort();
    let mut want = objs.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(cache.take(0).is_none());
    assert_eq!(cache.objects(), 0);
    free_all(&objs);
}

#[test]
fn take_finds_clusters_in_other_buckets() {
    let cache = SharedCache::new();
    let mut objs = Vec::new();
    for home in 0..BUCKETS {
        cache.put(home, make_cluster(&mut objs, 1));
    }
    let mut got = Vec::new();
    while let Some(c) = cache.take(2) {
        collect(c, &mut got);
    }
    assert_eq!(got.len(), BUCKETS);
    assert_eq!(cache.objects(), 0);
    free_all(&objs);
}

#[test]
fn take_all_empties_every_bucket() {
    let cache = SharedCache::new();
    let mut objs = Vec::new();
    for i in 0..10 {
        cache.put(i, make_cluster(&mut objs, 1 + i % CLUSTER));
    }
    let mut got = Vec::new();
    cache.take_all(|c| collect(c, &mut got));
    assert_eq!(got.len(), objs.len());
    assert_eq!(cache.objects(), 0);
    assert!(cache.take(0).is_none());
    free_all(&objs);
}

#[test]
fn allocated_counts_sum_over_buckets() {
    let cache = SharedCache::new();
    cache.count_allocated(0, 3);
    cache.count_allocated(5, 2);
    cache.count_allocated(2, -4);
    assert_eq!(cache.allocated(), 1);
}

/// Threads pass clusters through the cache; every object must come out
/// exactly once in the end.
#[test]
fn concurrent_put_take_loses_and_duplicates_nothing() {
    let threads = 4;
    let rounds = if cfg!(miri) { 20 } else { 5_000 };
    let cache = Arc::new(SharedCache::new());
    let mut objs = Vec::new();
    for t in 0..threads {
        cache.put(t, make_cluster(&mut objs, CLUSTER));
    }
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    if let Some(c) = cache.take(t) {
                        cache.put(t + 1, c);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut got = Vec::new();
    cache.take_all(|c| collect(c, &mut got));
    let unique: HashSet<_> = got.iter().copied().collect();
    assert_eq!(got.len(), objs.len(), "objects lost or duplicated");
    assert_eq!(unique.len(), objs.len());
    assert_eq!(cache.objects(), 0);
    free_all(&objs);
}
