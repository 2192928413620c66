//! Handing the allocator's per-thread caches back once no doc is open.
//!
//! jemalloc keeps a cache of freed blocks per thread and trims it only as that thread goes on
//! allocating. When the last doc unloads, the runtime's workers and the redb writer stop
//! allocating, so whatever the unload freed into their caches stays there, and the slabs
//! those blocks belong to stay resident, for as long as the server stays idle. [`release`]
//! (called when the hub's last doc is gone) asks every such thread to empty its cache: the
//! writer does it at once after dropping redb's page cache, each worker the next time it
//! parks ([`on_worker_park`], hooked into the runtime by the server's `main.rs`): the one that ran the
//! unload right after it, one that was already parked whenever it next has work.
//!
//! Emptying is switching the thread's cache off and on again through jemalloc's
//! `thread.tcache.enabled`, which flushes every block back to its slab. The pages that leaves
//! unused are then handed back to the OS at once (each arena's dirty decay time set to zero
//! and back), not after the decay time: jemalloc's background threads wake up for new dirty
//! pages only past a threshold of megabytes, so an idle server's last few would otherwise stay
//! resident. See [`release_this_thread`].
//!
//! Without the `jemalloc` feature (a build for heap profilers) these are no-ops.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped each time the last doc unloads.
static RELEASES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The last value of [`RELEASES`] this thread emptied its cache for.
    static RELEASED: Cell<u64> = const { Cell::new(0) };
}

/// No doc is open: every worker empties its cache when it next parks.
pub(crate) fn release() {
    RELEASES.fetch_add(1, Ordering::Relaxed);
}

/// The runtime's park hook: empties this worker's cache if a release is pending for it (one
/// atomic load and a thread-local read otherwise).
pub fn on_worker_park() {
    let releases = RELEASES.load(Ordering::Relaxed);
    if RELEASED.with(|released| released.replace(releases)) != releases {
        release_this_thread();
    }
}

/// Empties the calling thread's cache now, then hands back the pages that left unused.
pub(crate) fn release_this_thread() {
    empty_this_thread_cache();
    purge_arenas();
}

/// Empties the calling thread's cache.
fn empty_this_thread_cache() {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{Access, AsName};
        let name = b"thread.tcache.enabled\0".name();
        // Switched on again only if it was on: `MALLOC_CONF=tcache:false` stays honoured.
        let emptied = name
            .update(false)
            .and_then(|was_on| if was_on { name.write(true) } else { Ok(()) });
        if let Err(error) = emptied {
            tracing::debug!(%error, "could not empty the thread's allocation cache");
        }
    }
}

/// Hands every arena's unused dirty pages back to the OS now.
///
/// One thread at a time: the decay time is read, set to zero and set back, and a second
/// thread reading it in between would read the zero. (It would then skip the arena: a zero
/// read is never written back, so no arena is left purging at every turn for good.)
fn purge_arenas() {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{Access, AsName};
        static PURGING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = PURGING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(arenas) = tikv_jemalloc_ctl::arenas::narenas::read() else {
            return;
        };
        for arena in 0..arenas {
            let key = format!("arena.{arena}.dirty_decay_ms\0");
            let name = key.as_bytes().name();
            // An arena no thread has used yet answers with an error; one whose decay time is
            // already zero (the huge-allocation arena) purges at once anyway, and -1 is an
            // operator's "never purge".
            if let Ok(decay_ms @ 1..) = Access::<isize>::read(name) {
                // Zero purges everything dirty at once; the old value restarts the decay.
                let _ = name.write(0isize).and_then(|()| name.write(decay_ms));
            }
        }
    }
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use tikv_jemalloc_ctl::{Access, AsName};

    fn tcache_enabled() -> bool {
        b"thread.tcache.enabled\0".name().read().unwrap()
    }

    fn decay_times() -> Vec<Option<isize>> {
        let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap();
        (0..arenas)
            .map(|arena| {
                let key = format!("arena.{arena}.dirty_decay_ms\0");
                Access::<isize>::read(key.as_bytes().name()).ok()
            })
            .collect()
    }

    #[test]
    fn emptying_the_cache_leaves_it_as_it_was() {
        std::thread::spawn(|| {
            assert!(tcache_enabled());
            super::empty_this_thread_cache();
            assert!(tcache_enabled());
            // A thread whose cache is off (as with `tcache:false`) keeps it off.
            b"thread.tcache.enabled\0".name().write(false).unwrap();
            super::empty_this_thread_cache();
            assert!(!tcache_enabled());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn purges_racing_from_many_threads_restore_every_decay_time() {
        let before = decay_times();
        assert!(
            before.iter().any(|decay| matches!(decay, Some(1..))),
            "{before:?}"
        );
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..2_000 {
                        super::purge_arenas();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // Arenas the new threads brought up start with arena 0's default; none is left at 0.
        let default = before[0];
        for (arena, (then, now)) in before.iter().zip(decay_times()).enumerate() {
            match then {
                Some(_) => assert_eq!(now, *then, "arena {arena}"),
                None => assert!(now.is_none() || now == default, "arena {arena}: {now:?}"),
            }
        }
    }
}
