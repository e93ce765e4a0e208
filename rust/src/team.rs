//! A thread team for one decode step: the calling thread plus helper threads that spin between phases.
//!
//! A decode step of a small model is about a hundred matrix products of tens of microseconds each. With a
//! plain rayon loop per product, every product wakes a sleeping worker through the kernel (a futex wake
//! costs about as much as the product itself here) and the worker falls asleep again before the next one.
//! A team keeps its helpers spinning for the whole step, so a product starts on every thread at once.
//!
//! The helpers are this module's own threads, not rayon's: a `rayon::scope` entered from the Python
//! thread runs its body on a pool worker while the caller sleeps, so every step paid two wake-ups (about
//! 35 µs each here) and its helper joined 100-200 µs late. These helpers keep polling for a while after a
//! step ends (`SPIN_WINDOW`, longer than the Python work between two steps), then sleep until the next.
//!
//! Work is handed out one chunk at a time from a shared counter, and the caller takes chunks too, so a
//! phase never waits for a helper to arrive: a helper that is descheduled (or never started, or serving
//! another team) just takes no chunks, and a step can never deadlock on a missing thread. Only a chunk
//! already claimed by a descheduled helper is waited for; chunks are small to keep that short.
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

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
    /// Helpers that may still join (the team's size less the caller and those that joined).
    seats: AtomicUsize,
    /// A helper's panic, raised on the caller when the phase ends (`failed` says there is one).
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    failed: AtomicBool,
}

/// How long an idle helper keeps polling for the next team before it sleeps.
const SPIN_WINDOW: Duration = Duration::from_millis(2);

/// The helper threads every team draws on, one team at a time.
struct Pool {
    /// The team helpers should join; null between teams.
    team: AtomicPtr<Team>,
    /// Bumped when a team starts, so that an idle helper notices.
    generation: AtomicU64,
    /// Whether a team holds the helpers (a second team at the same time runs on its caller alone).
    held: AtomicBool,
    /// Helpers between noticing a team and leaving it; a team is not dropped before this is back to 0.
    inside: AtomicUsize,
    /// Helpers asleep on `wake`.
    parked: AtomicUsize,
    spawned: Mutex<usize>,
    lock: Mutex<()>,
    wake: Condvar,
}

static POOL: Pool = Pool {
    team: AtomicPtr::new(std::ptr::null_mut()),
    generation: AtomicU64::new(0),
    held: AtomicBool::new(false),
    inside: AtomicUsize::new(0),
    parked: AtomicUsize::new(0),
    spawned: Mutex::new(0),
    lock: Mutex::new(()),
    wake: Condvar::new(),
};

impl Pool {
    /// Start helpers until there are `n` (fewer if the system refuses threads: teams work without them).
    fn ensure(&'static self, n: usize) {
        let mut spawned = self.spawned.lock().unwrap_or_else(|e| e.into_inner());
        while *spawned < n {
            let started = std::thread::Builder::new().name("pyagent-team".into()).spawn(move || self.serve());
            if started.is_err() {
                break;
            }
            *spawned += 1;
        }
    }

    /// A helper's life: join each team that starts, poll for `SPIN_WINDOW` after it, then sleep.
    fn serve(&self) {
        let mut seen = self.generation.load(Ordering::SeqCst);
        let (mut idle_since, mut polls) = (Instant::now(), 0u32);
        loop {
            let g = self.generation.load(Ordering::SeqCst);
            if g != seen {
                seen = g;
                // counted inside before reading the pointer: a team ends only after nulling the pointer and
                // then seeing no helper inside, so a pointer read here is of a team that is still alive
                self.inside.fetch_add(1, Ordering::SeqCst);
                let t = self.team.load(Ordering::SeqCst);
                if !t.is_null() {
                    // SAFETY: see above; the team lives on its caller's stack until `inside` drops to 0.
                    let team = unsafe { &*t };
                    if team.seats.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| s.checked_sub(1)).is_ok() {
                        // a panicking chunk would end this thread and its phase with it: the caller raises it
                        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| team.help())) {
                            team.fail(payload);
                        }
                    }
                }
                self.inside.fetch_sub(1, Ordering::SeqCst);
                (idle_since, polls) = (Instant::now(), 0);
                continue;
            }
            polls += 1;
            if !polls.is_multiple_of(SPINS_BEFORE_YIELD) {
                std::hint::spin_loop();
            } else if idle_since.elapsed() < SPIN_WINDOW {
                std::thread::yield_now();
            } else {
                // counted parked before the last look at the generation, and a starting team bumps the
                // generation before it looks at `parked`: one of the two sees the other
                self.parked.fetch_add(1, Ordering::SeqCst);
                let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                while self.generation.load(Ordering::SeqCst) == seen {
                    guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                drop(guard);
                self.parked.fetch_sub(1, Ordering::SeqCst);
                (idle_since, polls) = (Instant::now(), 0);
            }
        }
    }
}

/// Ends a team's use of the pool, on return or unwind: no helper may touch the team once this is done.
struct Leave<'a>(&'a Team);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
        POOL.team.store(std::ptr::null_mut(), Ordering::SeqCst);
        while POOL.inside.load(Ordering::SeqCst) > 0 {
            std::hint::spin_loop();
        }
        POOL.held.store(false, Ordering::Release);
    }
}

impl Team {
    fn new(threads: usize) -> Team {
        Team { state: AtomicU64::new(0), job: AtomicPtr::new(std::ptr::null_mut()), done: AtomicUsize::new(0),
               stop: AtomicBool::new(false), epoch: AtomicU64::new(0), threads,
               seats: AtomicUsize::new(threads - 1), panic: Mutex::new(None), failed: AtomicBool::new(false) }
    }

    /// Run `body` on the calling thread with a team of up to `threads` threads (the caller included);
    /// helpers leave when it returns. While another team holds the helpers, `body` runs on the caller alone.
    pub fn run<R>(threads: usize, body: impl FnOnce(&Team) -> R) -> R {
        let threads = threads.max(1);
        if threads == 1 || POOL.held.swap(true, Ordering::Acquire) {
            return body(&Team::new(1));
        }
        let team = Team::new(threads);
        let _leave = Leave(&team);
        POOL.ensure(threads - 1);
        POOL.team.store(&team as *const Team as *mut Team, Ordering::SeqCst);
        POOL.generation.fetch_add(1, Ordering::SeqCst);
        if POOL.parked.load(Ordering::SeqCst) > 0 {
            let _guard = POOL.lock.lock().unwrap_or_else(|e| e.into_inner());
            POOL.wake.notify_all();
        }
        body(&team)
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
            // counted done on unwind too, so that a panicking chunk cannot leave its phase waiting for ever
            let _done = Done(&self.done, take);
            (next..next + take).for_each(f);
        }
        true
    }

    /// Claim every chunk of the phase not yet claimed and count it done without running it (the caller
    /// is unwinding: its phase has failed, and only the chunks already running must be waited for).
    fn skip_rest(&self) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            let (chunks, next) = unpack(s);
            if next >= chunks {
                return;
            }
            let left = chunks - next;
            if self.state.compare_exchange_weak(s, s + left as u64, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.done.fetch_add(left, Ordering::Release);
                return;
            }
        }
    }

    /// Keep a helper's panic for the caller to raise when the current phase is over.
    fn fail(&self, payload: Box<dyn std::any::Any + Send>) {
        self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
        self.failed.store(true, Ordering::Release);
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
        {
            // waits for the helpers' chunks on return and on unwind (their closures borrow this frame's callers)
            let _end = PhaseEnd(self, chunks);
            while self.take_some() {}
        }
        if self.failed.load(Ordering::Acquire) {
            if let Some(payload) = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
                std::panic::resume_unwind(payload);
            }
        }
    }
}

/// Adds a claim's chunks to the done count when they have run or unwound.
struct Done<'a>(&'a AtomicUsize, usize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(self.1, Ordering::Release);
    }
}

/// Waits until every chunk of the phase is done.
struct PhaseEnd<'a>(&'a Team, usize);

impl Drop for PhaseEnd<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.skip_rest();
        }
        let mut idle = 0u32;
        while self.0.done.load(Ordering::Acquire) < self.1 {
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
    fn teams_at_the_same_time_all_finish_and_a_panicking_body_gives_the_helpers_back() {
        // the helpers serve one team at a time: the others run on their callers alone, and are still right
        let sums: Vec<u64> = std::thread::scope(|s| {
            let teams: Vec<_> = (0..4u64).map(|k| s.spawn(move || Team::run(3, |team| {
                let mut total = 0u64;
                for _ in 0..200 {
                    let out: Vec<AtomicU64> = (0..32).map(|_| AtomicU64::new(0)).collect();
                    team.for_each(32, &|i| out[i].store(k * 1000 + i as u64, Ordering::Relaxed));
                    total += out.iter().map(|v| v.load(Ordering::Relaxed)).sum::<u64>();
                }
                total
            }))).collect();
            teams.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let want = |k: u64| 200 * (0..32u64).map(|i| k * 1000 + i).sum::<u64>();
        assert_eq!(sums, (0..4).map(want).collect::<Vec<_>>());
        let panicked = std::panic::catch_unwind(|| Team::run(2, |team| {
            team.for_each(4, &|_| ());
            panic!("body fails")
        }));
        assert!(panicked.is_err());
        // the pool is free again (tries: other tests' teams may hold it for a moment)
        assert!((0..50).any(|_| a_helper_joins()), "no helper joined a team after the panic");
    }

    #[test]
    fn a_chunk_that_panics_is_raised_on_the_caller_once_no_chunk_of_its_phase_is_running() {
        // on a helper: the caller raises it when the phase ends; on the caller: it unwinds once the
        // helper's running chunks are done (they borrow the caller's frames)
        for on_helper in [true, false] {
            let raised = (0..50).find_map(|_| {
                let caller = std::thread::current().id();
                let (ran, helped) = (AtomicUsize::new(0), AtomicBool::new(false));
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Team::run(2, |team| {
                    team.for_each(40, &|_| {
                        std::thread::sleep(Duration::from_millis(1));
                        ran.fetch_add(1, Ordering::Relaxed);
                        let mine = std::thread::current().id() == caller;
                        helped.fetch_or(!mine, Ordering::Relaxed);
                        if mine != on_helper && helped.load(Ordering::Relaxed) {
                            panic!("a chunk failed");
                        }
                    })
                })));
                let after = ran.load(Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
                assert_eq!(ran.load(Ordering::Relaxed), after, "a chunk ran after the call was over");
                out.err()
            });
            let payload = raised.unwrap_or_else(|| panic!("no helper joined in 50 teams (on_helper {on_helper})"));
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"a chunk failed"));
            assert!((0..50).any(|_| a_helper_joins()), "the pool is unusable after a chunk panicked");
        }
    }

    /// Whether a helper (not the caller) ran some chunks of a phase long enough for it to join.
    fn a_helper_joins() -> bool {
        let caller = std::thread::current().id();
        let others = AtomicUsize::new(0);
        Team::run(2, |team| {
            team.for_each(40, &|_| {
                std::thread::sleep(Duration::from_millis(1));
                if std::thread::current().id() != caller {
                    others.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        others.load(Ordering::Relaxed) > 0
    }

    #[test]
    fn helpers_asleep_after_an_idle_spell_wake_for_the_next_team() {
        let woke = (0..20).any(|_| {
            Team::run(2, |team| team.for_each(2, &|_| ()));
            std::thread::sleep(SPIN_WINDOW * 5);
            a_helper_joins()
        });
        assert!(woke, "a sleeping helper did not wake for the next team");
    }
}
