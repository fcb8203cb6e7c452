//! A pool head's life as the thread caches see it, and the handshake of
//! `pool_destroy` with threads that did not call it.
//!
//! `pool_destroy` does not reach into other threads' caches (see
//! `thread_cache`). Instead, every thread-cache entry bound to a pool *pins*
//! its head: the head cannot be recycled for a later pool while an entry
//! still holds its objects or may still put a cluster into its shared
//! cache. One atomic word holds both the state and the pins, so that the
//! handshake is a total order of read-modify-writes on one location, with
//! no fence:
//!
//! - `bind` adds a pin; if the word already said DEAD it takes it back and
//!   fails, so no entry binds to a dead pool;
//! - `kill` sets DEAD; every pin taken before it is still counted;
//! - `unbind` drops a pin after its entry gave its objects back; the last
//!   pin of a dead pool is told so, and its thread flushes what it put into
//!   the shared cache after the destroyer's own flush, then asks the
//!   registry to recycle;
//! - `claim_free` turns a dead, unpinned word into FREE, once, for the
//!   registry's free list; `revive` makes a recycled head live again.
//!
//! The loom model below explores every interleaving of binders, unbinders,
//! putters and a destroyer and checks the two promises: no free head is
//! pinned, and no cluster stays in a dead pool's shared cache.

use crate::sync::AtomicUsize;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

const DEAD: usize = 1;
const FREE: usize = 2;
const PIN: usize = 4;

/// The state of one pool head (module docs).
pub(crate) struct Lifecycle(AtomicUsize);

/// What dropping a pin found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unpinned {
    /// The pool is live, or other pins remain.
    Kept,
    /// That was the last pin of a dead pool: flush it and try to recycle.
    LastOfDead,
}

impl Lifecycle {
    /// A live head with no pins.
    pub(crate) fn new() -> Self {
        Lifecycle(AtomicUsize::new(0))
    }

    /// Pins a live head; `Err` (and no pin) if it is dead, saying what
    /// dropping the transient pin found: the destroyer may have seen it and
    /// left the recycling to us.
    pub(crate) fn bind(&self) -> Result<(), Unpinned> {
        // Acquire: a binder that succeeds sees the head as its last revive
        // made it. The RMW is ordered with `kill` in the word's
        // modification order: either kill comes later and counts this pin,
        // or this RMW reads DEAD.
        if self.0.fetch_add(PIN, Acquire) & DEAD == 0 {
            return Ok(());
        }
        Err(self.unbind())
    }

    /// Drops a pin, after everything its entry did to the pool.
    pub(crate) fn unbind(&self) -> Unpinned {
        // Release: whoever recycles acquires the word and sees every
        // object this entry gave back; Acquire: if this is the last pin of
        // a dead pool, we flush after the destroyer's kill.
        let old = self.0.fetch_sub(PIN, AcqRel);
        if old & DEAD != 0 && old & FREE == 0 && old >> 2 == 1 {
            Unpinned::LastOfDead
        } else {
            Unpinned::Kept
        }
    }

    /// Marks the head dead; returns whether no pin was left.
    pub(crate) fn kill(&self) -> bool {
        // AcqRel: ordered with every bind and unbind (module docs).
        self.0.fetch_or(DEAD, AcqRel) >> 2 == 0
    }

    /// Whether the pool is dead.
    pub(crate) fn is_dead(&self) -> bool {
        // Relaxed: a hint for cold paths; the decisions are the RMWs.
        self.0.load(Relaxed) & DEAD != 0
    }

    /// Pins held now.
    #[cfg(all(loom, test))]
    pub(crate) fn pins(&self) -> usize {
        // Relaxed: a statistic.
        self.0.load(Relaxed) >> 2
    }

    /// Turns a dead head with no pins into a free one; true exactly once.
    pub(crate) fn claim_free(&self) -> bool {
        // Acquire: the recycler sees what the last unbinder gave back.
        self.0
            .compare_exchange(DEAD, DEAD | FREE, Acquire, Relaxed)
            .is_ok()
    }

    /// A recycled (free) head becomes live again. Transient pins of failed
    /// binders are kept, so that their release balances.
    pub(crate) fn revive(&self) {
        // Release: a binder's Acquire sees the rewritten head.
        self.0.fetch_and(!(DEAD | FREE), Release);
    }
}

#[cfg(all(loom, test))]
mod loom_tests {
    use super::*;
    use crate::shared_cache::{Cluster, Item, SharedCache};
    use core::ptr::{self, NonNull};
    use loom::thread;
    use std::sync::atomic::{AtomicBool, AtomicUsize as StdUsize, Ordering::SeqCst};
    use std::sync::Arc;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        model_bounded(8, f)
    }

    fn model_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
        let mut model = loom::model::Builder::new();
        model.max_branches = 100_000;
        if model.preemption_bound.is_none() {
            model.preemption_bound = Some(bound);
        }
        model.check(f);
    }

    struct Head {
        life: Lifecycle,
        shared: SharedCache,
        /// Set by the recycler; a pinned entry must never see it.
        free: AtomicBool,
        flushed: StdUsize,
    }

    impl Head {
        fn flush(&self) {
            self.shared.take_all(|c| {
                self.flushed.fetch_add(c.len, SeqCst);
            });
        }

        /// What the registry's recycle does, minus the lists.
        fn recycle(&self) {
            if self.life.claim_free() {
                self.free.store(true, SeqCst);
            }
        }

        /// An entry's owner: binds, puts a cluster while pinned, unbinds.
        fn owner(&self, obj: *mut Item) {
            if let Err(u) = self.life.bind() {
                if u == Unpinned::LastOfDead {
                    self.flush();
                    self.recycle();
                }
                return;
            }
            assert!(!self.free.load(SeqCst), "a pinned head was recycled");
            self.shared.put(
                0,
                Cluster {
                    first: NonNull::new(obj).unwrap(),
                    len: 1,
                },
            );
            assert!(!self.free.load(SeqCst), "a pinned head was recycled");
            if self.life.unbind() == Unpinned::LastOfDead {
                self.flush();
                self.recycle();
            }
        }

        /// `registry::destroy`: kill, flush, recycle.
        fn destroy(&self) {
            self.life.kill();
            self.flush();
            self.recycle();
        }
    }

    fn new_head() -> Arc<Head> {
        Arc::new(Head {
            life: Lifecycle::new(),
            shared: SharedCache::new(),
            free: AtomicBool::new(false),
            flushed: StdUsize::new(0),
        })
    }

    fn new_item() -> *mut Item {
        let item = Box::into_raw(Box::new(Item {
            next: ptr::null_mut(),
            down: ptr::null_mut(),
        }));
        // SAFETY: a fresh box of ours; links are stored protected.
        unsafe { Item::set_down(item, ptr::null_mut()) };
        item
    }

    /// Whatever the interleaving, every cluster an owner put is flushed,
    /// the head ends free, and no pinned owner saw it free.
    fn check(owners: usize) {
        check_bounded(owners, 8)
    }

    fn check_bounded(owners: usize, bound: usize) {
        model_bounded(bound, move || {
            let h = new_head();
            let items: Vec<_> = (0..owners).map(|_| new_item() as usize).collect();
            let handles: Vec<_> = items
                .iter()
                .map(|&it| {
                    let h = Arc::clone(&h);
                    thread::spawn(move || h.owner(it as *mut Item))
                })
                .collect();
            h.destroy();
            for t in handles {
                t.join().unwrap();
            }
            let put = h.flushed.load(SeqCst);
            assert!(h.free.load(SeqCst), "the dead head was never recycled");
            assert_eq!(h.life.pins(), 0);
            // Nothing is left in the dead pool's shared cache.
            let mut left = 0;
            h.shared.take_all(|c| left += c.len);
            assert_eq!(left, 0, "a cluster stayed in a dead pool ({put} flushed)");
            for it in items {
                // SAFETY: made by Box::into_raw above; nothing uses it now.
                drop(unsafe { Box::from_raw(it as *mut Item) });
            }
        });
    }

    #[test]
    fn loom_destroy_with_one_owner() {
        check(1);
    }

    /// Two owners at a lower preemption bound: the model grows fast with
    /// the shared cache's spinning (LOOM_MAX_PREEMPTIONS overrides it).
    #[test]
    fn loom_destroy_with_two_owners() {
        check_bounded(2, 3);
    }

    /// The word alone: a failed bind's transient pin on a head being
    /// revived leaves the count balanced.
    #[test]
    fn loom_failed_bind_and_revive() {
        model(|| {
            let life = Arc::new(Lifecycle::new());
            assert!(life.kill());
            assert!(life.claim_free());
            let l = Arc::clone(&life);
            let t = thread::spawn(move || {
                if l.bind().is_ok() {
                    l.unbind();
                }
            });
            life.revive();
            t.join().unwrap();
            assert_eq!(life.pins(), 0);
            assert!(!life.is_dead());
        });
    }
}
