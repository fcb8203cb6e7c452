//! A multi-threaded stress of the whole library, written for the sanitizers
//! (ThreadSanitizer runs it: `make verify-tsan`) and Miri, and run by plain
//! `cargo test` too.
//!
//! More threads than cores move objects of three pools (a small one, a
//! medium one, and a large one that skips the thread caches) between each
//! other: an object is often freed by another thread than the one that
//! allocated it. Meanwhile a janitor thread calls `flush`, `gc`, statistics
//! and evicts its own cache at random moments, and a churn thread creates
//! short-lived pools whose objects sit in the warm caches of live threads
//! when it destroys them (the claim handshake of `pool_destroy`), threads
//! busy with another pool or idle, and of threads that already exited.
//! Every thread exits with a warm cache.
//!
//! Each object carries a unique token at both ends while the application
//! holds it; the token is checked when the object is freed, so an object
//! handed out twice, or written by the library while in use, fails the test.
//! At the end every counter must balance exactly: nothing used, everything
//! allocated is cached or shared, and after a flush nothing is allocated.
//!
//! `STRESS_ROUNDS` (default 200000, 40 under Miri) sets each worker's
//! iterations.

use core::ptr::NonNull;
use pools::registry::{self, Destroyed, Error};
use pools::Pool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;

/// An object held by the application, with the token written into it. It
/// crosses threads with its pointer (and so its provenance, for Miri).
struct Obj {
    pool: usize,
    ptr: NonNull<u8>,
    token: u64,
}

// SAFETY: an object is plain memory owned by whoever holds the `Obj`.
unsafe impl Send for Obj {}

/// xorshift64*: a small seeded generator, so that a failing run can be
/// repeated with the same choices per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn rounds() -> usize {
    if cfg!(miri) {
        return 40;
    }
    std::env::var("STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A pool and its object size.
type P = (&'static Pool, usize);

/// Allocates from `pools[i]` and stamps a fresh token at both ends.
fn alloc(pools: &[P], i: usize) -> Obj {
    let (pool, size) = pools[i];
    let ptr = pool.alloc().expect("pool_alloc returned NULL");
    let token = NEXT_TOKEN.fetch_add(1, Relaxed);
    assert!(size >= 16);
    // SAFETY: the object has `size` writable bytes and is ours.
    unsafe {
        ptr.as_ptr().cast::<u64>().write_unaligned(token);
        ptr.as_ptr()
            .add(size - 8)
            .cast::<u64>()
            .write_unaligned(!token);
    }
    Obj {
        pool: i,
        ptr,
        token,
    }
}

/// Checks the token and gives the object back.
fn free(pools: &[P], o: Obj) {
    let (pool, size) = pools[o.pool];
    // SAFETY: the object is ours until `free` below; it has `size` bytes.
    let (head, tail) = unsafe {
        (
            o.ptr.as_ptr().cast::<u64>().read_unaligned(),
            o.ptr.as_ptr().add(size - 8).cast::<u64>().read_unaligned(),
        )
    };
    assert_eq!(
        (head, tail),
        (o.token, !o.token),
        "object {:p} of pool {} changed while the application held it",
        o.ptr,
        o.pool
    );
    // SAFETY: an object of this pool, given back exactly once.
    unsafe { pool.free(o.ptr) };
}

/// One worker: allocates, sends a third of its objects to the next worker,
/// frees what it receives and some of its own, and exits with a warm cache.
fn worker(
    id: u64,
    pools: Vec<P>,
    next: mpsc::Sender<Obj>,
    rx: mpsc::Receiver<Obj>,
) -> mpsc::Receiver<Obj> {
    let mut rng = Rng::new(id + 1);
    let mut held: Vec<Obj> = Vec::new();
    let limit = if cfg!(miri) { 8 } else { 96 };
    for _ in 0..rounds() {
        // Mostly small objects, some medium, a few large.
        let i = match rng.below(16) {
            0 => 2,
            1..=4 => 1,
            _ => 0,
        };
        let o = alloc(&pools, i);
        if rng.below(3) == 0 {
            if let Err(mpsc::SendError(o)) = next.send(o) {
                free(&pools, o);
            }
        } else {
            held.push(o);
        }
        for o in rx.try_iter() {
            free(&pools, o);
        }
        while held.len() > limit || (!held.is_empty() && rng.below(4) == 0) {
            let k = rng.below(held.len() as u64) as usize;
            free(&pools, held.swap_remove(k));
        }
    }
    // Everything held goes back to this thread's cache, which stays warm
    // until the thread exits.
    for o in held {
        free(&pools, o);
    }
    rx
}

/// Calls flush, gc, statistics and evicts its own cache at random moments
/// until told to stop.
fn janitor(pools: Vec<P>, stop: Arc<AtomicBool>) {
    let mut rng = Rng::new(0xa11ce);
    let mut mine: Vec<Obj> = Vec::new();
    while !stop.load(Relaxed) {
        let i = rng.below(pools.len() as u64) as usize;
        match rng.below(6) {
            0 => pools[i].0.flush(),
            1 => registry::gc(),
            2 => {
                let s = registry::stats(pools[i].0);
                assert_eq!(s.failed, 0, "{s:?}");
            }
            3 => pools::evict_local_cache(),
            4 => mine.push(alloc(&pools, i)),
            _ => {
                if let Some(o) = mine.pop() {
                    free(&pools, o);
                }
            }
        }
        if cfg!(miri) {
            thread::yield_now();
        } else if rng.below(8) == 0 {
            thread::sleep(std::time::Duration::from_micros(rng.below(200)));
        }
    }
    for o in mine {
        free(&pools, o);
    }
}

/// What the helpers of a short-lived pool do while it is destroyed.
#[derive(Clone, Copy, PartialEq)]
enum During {
    /// Keep allocating and freeing objects of another pool: the claim
    /// handshake races with their own operations on the same cache.
    Busy,
    /// Already exited: their caches were drained to the shared cache.
    Exited,
    /// Wait, idle, on a barrier.
    Idle,
}

/// Creates a short-lived pool, lets helper threads warm their caches with
/// its objects, and destroys it: refused while they hold objects, then
/// accepted while they are busy with another pool, idle, or exited (the
/// dying pool's objects are taken back from their caches).
fn churn(main_pool: P, iterations: usize) {
    let per_helper = if cfg!(miri) { 3 } else { 50 };
    for it in 0..iterations {
        let size = [64, 320, 4096][it % 3];
        let during = [During::Busy, During::Exited, During::Idle][it % 3];
        let tmp = registry::create(c"stress-tmp", size, 0).expect("pool_create");
        let helpers = 2;
        let sync = Arc::new(Barrier::new(helpers + 1));
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..helpers)
            .map(|h| {
                let (sync, stop) = (Arc::clone(&sync), Arc::clone(&stop));
                thread::spawn(move || {
                    let pools = [(tmp, size), main_pool];
                    let objs: Vec<_> = (0..per_helper).map(|_| alloc(&pools, 0)).collect();
                    sync.wait(); // held
                    sync.wait(); // destroy refused
                    for o in objs {
                        free(&pools, o);
                    }
                    if during == During::Exited {
                        return;
                    }
                    sync.wait(); // freed: warm caches
                    let mut rng = Rng::new(h as u64 + 100);
                    let mut held = Vec::new();
                    // Busy: until the pool is destroyed. Idle: afterwards,
                    // the cache keeps working for the other pools.
                    if during == During::Idle {
                        sync.wait(); // destroyed
                    }
                    let mut n = 0;
                    while n < per_helper || (during == During::Busy && !stop.load(Relaxed)) {
                        held.push(alloc(&pools, 1));
                        if held.len() > 8 || rng.below(2) == 0 {
                            let k = rng.below(held.len() as u64) as usize;
                            free(&pools, held.swap_remove(k));
                        }
                        n += 1;
                    }
                    held.into_iter().for_each(|o| free(&pools, o));
                })
            })
            .collect();
        sync.wait(); // held
        assert_eq!(registry::destroy(tmp), Ok(Destroyed::InUse));
        assert_eq!(registry::stats(tmp).used, helpers * per_helper);
        sync.wait(); // destroy refused
        if during == During::Exited {
            handles.into_iter().for_each(|h| h.join().unwrap());
            let s = registry::stats(tmp);
            assert_eq!((s.used, s.cached), (0, 0), "{s:?}");
            assert_eq!(registry::destroy(tmp), Ok(Destroyed::Released));
        } else {
            sync.wait(); // freed
            let s = registry::stats(tmp);
            assert_eq!(s.used, 0, "{s:?}");
            assert_eq!(s.allocated, s.cached + s.shared, "{s:?}");
            assert_eq!(registry::destroy(tmp), Ok(Destroyed::Released));
            if during == During::Idle {
                sync.wait(); // destroyed
            }
            stop.store(true, Relaxed);
            handles.into_iter().for_each(|h| h.join().unwrap());
        }
        // Only this thread creates pools during the run, so the head is not
        // reused yet: the handle is recognisably dead.
        assert_eq!(registry::destroy(tmp), Err(Error::Invalid));
    }
}

#[test]
fn threads_move_objects_and_every_counter_balances() {
    let pools: Vec<P> = [
        (c"stress-small", 48),
        (c"stress-medium", 1000),
        // Over 1/8 of the default 512 KiB budget: skips the thread caches.
        (c"stress-large", 100_000),
    ]
    .into_iter()
    .map(|(name, size)| (registry::create(name, size, 0).expect("pool_create"), size))
    .collect();

    let workers = if cfg!(miri) { 3 } else { 4 };
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::channel::<Obj>()).unzip();
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(w, rx)| {
            let next = txs[(w + 1) % workers].clone();
            let pools = pools.clone();
            thread::spawn(move || worker(w as u64, pools, next, rx))
        })
        .collect();
    drop(txs);

    let stop = Arc::new(AtomicBool::new(false));
    let jan = {
        let (pools, stop) = (pools.clone(), Arc::clone(&stop));
        thread::spawn(move || janitor(pools, stop))
    };
    let small = pools[0];
    let churner = thread::spawn(move || churn(small, if cfg!(miri) { 2 } else { 12 }));

    let rxs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    churner.join().unwrap();
    stop.store(true, Relaxed);
    jan.join().unwrap();
    // Objects still in flight between workers: freed by this thread.
    for rx in &rxs {
        for o in rx.try_iter() {
            free(&pools, o);
        }
    }

    // Quiescent: every counter is exact.
    for &(p, _) in &pools {
        let s = registry::stats(p);
        assert_eq!(s.used, 0, "objects lost or counted twice: {s:?}");
        assert_eq!(s.allocated, s.cached + s.shared, "{s:?}");
        assert_eq!(s.failed, 0, "{s:?}");
    }
    // Every other thread has exited and drained its cache; this one evicts
    // its own, then a flush gives everything back to the allocator.
    pools::evict_local_cache();
    for &(p, _) in &pools {
        p.flush();
        let s = registry::stats(p);
        assert_eq!(
            (s.allocated, s.used, s.cached, s.shared),
            (0, 0, 0, 0),
            "not everything came back: {s:?}"
        );
    }
    registry::gc();
    for &(p, _) in &pools {
        assert_eq!(registry::destroy(p), Ok(Destroyed::Released));
    }
}
