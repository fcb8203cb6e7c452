use super::*;
use loom::thread;
// The model's own bookkeeping uses std types: loom runs one thread at a
// time, so they are exact, and unlike loom's they add no branch points
// (each loom atomic is one more place to preempt, which made the
// three-thread model blow up). Only the shared cache's own atomics are
// loom's.
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

/// A model object: a header plus a "freed" flag that a read after
/// release would trip over.
#[repr(C)]
struct Obj {
    item: Item,
    freed: AtomicUsize,
}

fn new_obj() -> *mut Item {
    let o = Box::into_raw(Box::new(Obj {
        item: Item {
            next: ptr::null_mut(),
            down: ptr::null_mut(),
        },
        freed: AtomicUsize::new(0),
    }));
    // SAFETY: a fresh box of ours; links are stored protected.
    unsafe { Item::set_down(o.cast(), ptr::null_mut()) };
    o.cast()
}

fn single(p: *mut Item) -> Cluster {
    Cluster {
        first: NonNull::new(p).unwrap(),
        len: 1,
    }
}

/// "Frees" every object of a cluster: marks it, so a later use trips.
fn release(c: Cluster, count: &AtomicUsize) {
    // SAFETY: the cluster came out of the cache, so it is ours.
    unsafe {
        c.for_each(|i| {
            let o = i.as_ptr().cast::<Obj>();
            assert_eq!((*o).freed.swap(1, SeqCst), 0, "object released twice");
            count.fetch_add(1, SeqCst);
        })
    };
}

fn drain(cache: &SharedCache, count: &AtomicUsize) {
    cache.take_all(|c| release(c, count));
}

/// Runs `f` under loom and reports how many executions it explored.
///
/// The preemption bound (LOOM_MAX_PREEMPTIONS overrides it) is high
/// enough to be exhaustive for the two-thread models: from a bound of
/// 20 up, the count of executions no longer grows (4,069 and 5,214),
/// and the run takes about a second. Three-thread models use
/// `model_bounded` with a lower bound (see each).
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(30, f)
}

pub(super) fn model_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut model = loom::model::Builder::new();
    // Every atomic access is a branch point and spinners add more: the
    // default cap of 1,000 per execution is too small here.
    model.max_branches = 100_000;
    if model.preemption_bound.is_none() {
        model.preemption_bound = Some(bound);
    }
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&runs);
    model.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    let bound = model.preemption_bound.unwrap_or(usize::MAX);
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    println!("loom: {runs} executions explored (preemption bound {bound})");
}

/// Puts `n` single-object clusters, alternating buckets.
fn fill(cache: &SharedCache, n: usize) -> Vec<usize> {
    let objs: Vec<usize> = (0..n).map(|_| new_obj() as usize).collect();
    for (i, &o) in objs.iter().enumerate() {
        cache.put(i, single(o as *mut Item));
    }
    objs
}

/// Drains what is left, checks that every object was released exactly
/// once, and frees the model objects.
fn finish(cache: &SharedCache, released: &AtomicUsize, objs: Vec<usize>) {
    drain(cache, released);
    assert_eq!(released.load(SeqCst), objs.len(), "an object was lost");
    assert_eq!(cache.objects(), 0);
    for o in objs {
        // SAFETY: each model object was boxed once and is dropped once.
        drop(unsafe { Box::from_raw(o as *mut Obj) });
    }
}

/// A thread takes a cluster and puts it back while another flushes:
/// the flusher never releases an object the taker holds, and nothing is
/// lost.
#[test]
fn loom_take_put_vs_flush() {
    model(|| {
        let cache = Arc::new(SharedCache::new());
        let objs = fill(&cache, 3);
        let released = Arc::new(AtomicUsize::new(0));
        let worker = {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                if let Some(c) = cache.take(0) {
                    cache.put(0, c);
                }
            })
        };
        drain(&cache, &released);
        worker.join().unwrap();
        finish(&cache, &released, objs);
    });
}

/// One bucket (`POOL_SHARED_BUCKETS=1`): a putter that finds the only
/// head BUSY cannot move on and waits for it, while a taker puts back
/// and the main thread puts a new object and then flushes. Nothing is
/// lost, nothing is released twice.
#[test]
fn loom_one_bucket_put_waits_for_the_taker() {
    model(|| {
        let cache = Arc::new(SharedCache::with_buckets(1));
        let mut objs = fill(&cache, 1);
        let fresh = new_obj() as usize;
        objs.push(fresh);
        let released = Arc::new(AtomicUsize::new(0));
        let worker = {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                if let Some(c) = cache.take(1) {
                    cache.put(1, c);
                }
            })
        };
        // Home 1 of one bucket is bucket 0, where the flush looks.
        cache.put(1, single(fresh as *mut Item));
        drain(&cache, &released);
        worker.join().unwrap();
        finish(&cache, &released, objs);
    });
}

/// Two threads take and put back on the same buckets: no cluster is
/// handed to both, and none is lost.
#[test]
fn loom_two_takers() {
    model(|| {
        let cache = Arc::new(SharedCache::new());
        let objs = fill(&cache, 3);
        let released = Arc::new(AtomicUsize::new(0));
        let taken = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (cache, taken) = (Arc::clone(&cache), Arc::clone(&taken));
            thread::spawn(move || {
                if let Some(c) = cache.take(0) {
                    taken.fetch_add(c.len, SeqCst);
                    cache.put(1, c);
                }
            })
        };
        if let Some(c) = cache.take(0) {
            taken.fetch_add(c.len, SeqCst);
            cache.put(0, c);
        }
        worker.join().unwrap();
        assert_eq!(taken.load(SeqCst), 2, "each taker gets one cluster");
        finish(&cache, &released, objs);
    });
}

/// Two threads take and put back while a third flushes. Three threads
/// make the state space explode: one preemption gives 23 executions in
/// a blink, two ran for more than five minutes without finishing. So
/// it runs with a bound of 1 (LOOM_MAX_PREEMPTIONS raises it).
#[test]
fn loom_two_takers_and_flush() {
    model_bounded(1, || {
        let cache = Arc::new(SharedCache::new());
        let objs = fill(&cache, 2);
        let released = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let cache = Arc::clone(&cache);
                thread::spawn(move || {
                    if let Some(c) = cache.take(t) {
                        cache.put(t, c);
                    }
                })
            })
            .collect();
        drain(&cache, &released);
        for w in workers {
            w.join().unwrap();
        }
        finish(&cache, &released, objs);
    });
}

/// Three threads, one operation each: a taker that puts back, a putter
/// of a new object, and a flusher, over one object to start with. With
/// one operation per thread the space stays small enough to explore
/// deeply: 15,064 executions at bound 5 (about a second, what `make
/// test` runs), 1,954,277 at 12, 3,084,865 at 20 (four minutes);
/// `make verify-loom` runs it at a bound of 40.
#[test]
fn loom_taker_putter_flusher() {
    model_bounded(5, || {
        let cache = Arc::new(SharedCache::new());
        let mut objs = fill(&cache, 1);
        let fresh = new_obj() as usize;
        objs.push(fresh);
        let released = Arc::new(AtomicUsize::new(0));
        let taker = {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                if let Some(c) = cache.take(0) {
                    cache.put(0, c);
                }
            })
        };
        let putter = {
            let cache = Arc::clone(&cache);
            thread::spawn(move || cache.put(1, single(fresh as *mut Item)))
        };
        drain(&cache, &released);
        taker.join().unwrap();
        putter.join().unwrap();
        finish(&cache, &released, objs);
    });
}
