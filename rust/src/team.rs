//! A thread team for one decode step: the calling thread plus rayon workers that spin between phases.
//!
//! A decode step of a small model is about a hundred matrix products of tens of microseconds each. With a
//! plain rayon loop per product, every product wakes a sleeping worker through the kernel (a futex wake
//! costs about as much as the product itself here) and the worker falls asleep again before the next one.
//! A team keeps its helpers spinning for the whole step, so a product starts on every thread at once.
//!
//! Work is handed out one chunk at a time from a shared counter, and the caller takes chunks too, so a
//! phase never waits for a helper to arrive: a helper that is descheduled (or busy with other rayon work,
//! or never started) just takes no chunks, and a step can never deadlock on a missing thread. Only a
//! chunk already claimed by a descheduled helper is waited for; chunks are small to keep that short.
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// One phase's work: `f(i)` for every chunk `i`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

const IDX_BITS: u32 = 20;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;
/// Most chunks one phase may have (the claim counter's width).
pub const MAX_CHUNKS: usize = IDX_MASK as usize;

/// `epoch | chunks | next` packed into one word, so that claiming a chunk (a compare-and-swap) also
/// proves that the phase it belongs to is still the current one.
fn pack(epoch: u64, chunks: usize, next: usize) -> u64 {
    (epoch << (2 * IDX_BITS)) | ((chunks as u64) << IDX_BITS) | next as u64
}

fn unpack(s: u64) -> (usize, usize) {
    (((s >> IDX_BITS) & IDX_MASK) as usize, (s & IDX_MASK) as usize)
}

/// Spins between polls before a waiting thread yields its CPU (keeps an oversubscribed machine moving).
const SPINS_BEFORE_YIELD: u32 = 256;

/// The shared state of one team; see the module docs.
pub struct Team {
    state: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    done: AtomicUsize,
    stop: AtomicBool,
    epoch: AtomicU64,
    threads: usize,
}

impl Team {
    /// Run `body` with a team of up to `threads` threads (the caller included); helpers leave when it returns.
    pub fn run<R: Send>(threads: usize, body: impl FnOnce(&Team) -> R + Send) -> R {
        let team = Team { state: AtomicU64::new(0), job: AtomicPtr::new(std::ptr::null_mut()),
                          done: AtomicUsize::new(0), stop: AtomicBool::new(false), epoch: AtomicU64::new(0),
                          threads: threads.max(1) };
        if team.threads == 1 {
            return body(&team);
        }
        let team = &team;
        rayon::scope(|s| {
            for _ in 1..team.threads {
                s.spawn(move |_| team.help());
            }
            let out = body(team);
            team.stop.store(true, Ordering::Release);
            out
        })
    }

    /// Claim and run some chunks of the current phase; false when none is left.
    ///
    /// Claims shrink as the phase drains (a share of what is left per thread, then one at a time): few
    /// claims on the shared word while there is much to do, fine balance at the end.
    fn take_some(&self) -> bool {
        let s = self.state.load(Ordering::Acquire);
        let (chunks, next) = unpack(s);
        if next >= chunks {
            return false;
        }
        let take = ((chunks - next) / (2 * self.threads)).max(1);
        let job = self.job.load(Ordering::Acquire);
        if self.state.compare_exchange_weak(s, s + take as u64, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            // SAFETY: the claim succeeded on the word of the phase that published `job` (a later phase
            // changes the epoch bits), and that phase cannot end before these chunks are counted done, so
            // the job (on the caller's stack inside `for_each`) is alive.
            let f = unsafe { (*job).f };
            (next..next + take).for_each(f);
            self.done.fetch_add(take, Ordering::Release);
        }
        true
    }

    fn help(&self) {
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            if self.take_some() {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle.is_multiple_of(SPINS_BEFORE_YIELD) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// `f(i)` for `i` in `0..chunks`, spread over the team; returns when every call has returned.
    pub fn for_each(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        assert!(chunks <= MAX_CHUNKS, "{chunks} chunks exceed the team's claim counter");
        if self.threads == 1 || chunks <= 1 {
            (0..chunks).for_each(f);
            return;
        }
        let job = Job { f };
        // SAFETY (lifetime erasure): helpers dereference the pointer only after claiming a chunk of this
        // phase, and this function does not return before every claimed chunk is done.
        self.job.store(&job as *const Job<'_> as *mut Job<'static>, Ordering::Release);
        self.done.store(0, Ordering::Relaxed);
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.state.store(pack(epoch & ((1 << (64 - 2 * IDX_BITS)) - 1), chunks, 0), Ordering::Release);
        while self.take_some() {}
        let mut idle = 0u32;
        while self.done.load(Ordering::Acquire) < chunks {
            idle += 1;
            if idle.is_multiple_of(SPINS_BEFORE_YIELD) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Where a parallel loop runs: on this thread, on rayon's pool (a call from outside a team), or on a team.
#[derive(Clone, Copy)]
pub enum Par<'a> {
    Serial,
    Rayon,
    Team(&'a Team),
}

impl Par<'_> {
    /// `f(i)` for `i` in `0..n`, in parallel where this says so.
    pub fn for_each(self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        match self {
            Par::Serial => (0..n).for_each(f),
            Par::Rayon => {
                use rayon::prelude::*;
                (0..n).into_par_iter().for_each(f)
            }
            Par::Team(team) => team.for_each(n, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_exactly_once_in_every_phase() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        pool.install(|| {
            Team::run(3, |team| {
                for chunks in [0usize, 1, 2, 7, 100, 1000] {
                    let hits: Vec<AtomicU32> = (0..chunks).map(|_| AtomicU32::new(0)).collect();
                    team.for_each(chunks, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{chunks} chunks");
                }
            })
        });
    }

    #[test]
    fn results_written_by_helpers_are_visible_to_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let total = pool.install(|| {
            Team::run(2, |team| {
                let mut sum = 0u64;
                for round in 0..500u64 {
                    let out: Vec<AtomicU64> = (0..64).map(|_| AtomicU64::new(0)).collect();
                    team.for_each(64, &|i| out[i].store(round * 64 + i as u64, Ordering::Relaxed));
                    sum += out.iter().map(|v| v.load(Ordering::Relaxed)).sum::<u64>();
                }
                sum
            })
        });
        let want: u64 = (0..500u64 * 64).sum();
        assert_eq!(total, want);
    }

    #[test]
    fn a_team_without_free_workers_still_finishes() {
        // one worker, busy running the caller: the helper job only starts after the body is done
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let n = pool.install(|| {
            Team::run(4, |team| {
                let count = AtomicUsize::new(0);
                team.for_each(50, &|_| {
                    count.fetch_add(1, Ordering::Relaxed);
                });
                count.load(Ordering::Relaxed)
            })
        });
        assert_eq!(n, 50);
    }
}
