//! A small fork-join team for the many short parallel steps of decoding.
//!
//! Decoding one token runs ~150 parallel steps of 50-200 µs each (matrix-vector products,
//! attention over the cache). A general scheduler that puts idle threads to sleep pays a wake-up
//! on nearly every step; here workers spin briefly on a generation counter before parking, so
//! back-to-back steps find them awake. The calling thread takes tasks too, and a step returns
//! only when every task of it has finished, which is what lets tasks borrow the caller's data.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Incremented for every step; workers wait for it to move.
    epoch: AtomicU64,
    job: Mutex<Option<SendJob>>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers still inside the current step.
    busy: AtomicUsize,
    panicked: AtomicBool,
    park: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the pointer is only dereferenced while `run` keeps the closure alive (it returns
// after every worker has left the step), and the closure is `Sync`.
unsafe impl Send for SendJob {}

struct Team {
    shared: &'static Shared,
    workers: usize,
    /// One step at a time: steps started from several threads take turns.
    turn: Mutex<()>,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            park: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let workers = rayon::current_num_threads().saturating_sub(1);
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("headhunt-team-{i}"))
                .spawn(move || worker(shared))
                .expect("spawning a team worker");
        }
        Team {
            shared,
            workers,
            turn: Mutex::new(()),
        }
    })
}

fn take_tasks(shared: &Shared, job: Job) {
    let n = shared.tasks.load(Ordering::Acquire);
    loop {
        let i = shared.next.fetch_add(1, Ordering::AcqRel);
        if i >= n {
            break;
        }
        // SAFETY: see `SendJob`: the step that published `job` is still running.
        let f = unsafe { &*job };
        if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
            shared.panicked.store(true, Ordering::Release);
        }
    }
}

fn worker(shared: &'static Shared) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while shared.epoch.load(Ordering::Acquire) == seen {
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let guard = shared.park.lock().unwrap_or_else(|e| e.into_inner());
                if shared.epoch.load(Ordering::Acquire) == seen {
                    drop(shared.wake.wait_timeout(guard, Duration::from_millis(50)));
                }
            } else {
                std::hint::spin_loop();
            }
        }
        seen = shared.epoch.load(Ordering::Acquire);
        let job = shared.job.lock().unwrap_or_else(|e| e.into_inner()).map(|j| j.0);
        if let Some(job) = job {
            take_tasks(shared, job);
        }
        shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Run `f(0)`, ..., `f(n - 1)` on the team and the calling thread; returns when all are done.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let team = team();
    if n <= 1 || team.workers == 0 {
        (0..n).for_each(f);
        return;
    }
    let _turn = team.turn.lock().unwrap_or_else(|e| e.into_inner());
    let s = team.shared;
    let job: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: erasing the lifetime is sound because this function does not return before every
    // worker has finished this step (`busy` back to zero) and the job is cleared.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(job) };
    *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(SendJob(job));
    s.tasks.store(n, Ordering::Release);
    s.next.store(0, Ordering::Release);
    s.busy.store(team.workers, Ordering::Release);
    s.epoch.fetch_add(1, Ordering::AcqRel);
    {
        let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    take_tasks(s, job);
    while s.busy.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
    }
    *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if s.panicked.swap(false, Ordering::AcqRel) {
        panic!("a task of a parallel step panicked");
    }
}

/// Split `out` into chunks of `chunk` values and run `f(i, chunk i)` for each on the team.
pub fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let (len, chunk) = (out.len(), chunk.max(1));
    let out = Disjoint::new(out);
    for_each(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        // SAFETY: `for_each` runs each index once; chunk i is [i * chunk, min(len, (i + 1) * chunk)).
        f(i, unsafe { out.part(start, chunk.min(len - start)) });
    });
}

/// A slice that the tasks of a step write in parts no two of them share (rows of several
/// buffers, columns of a matrix): each task takes its part with [`Disjoint::part`].
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: the slice is borrowed mutably for the wrapper's life, and `part`'s contract keeps the
// tasks' parts apart.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        Disjoint {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _slice: std::marker::PhantomData,
        }
    }

    /// Elements `at .. at + len`.
    ///
    /// # Safety
    /// No other part alive at the same time overlaps them.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, at: usize, len: usize) -> &mut [T] {
        assert!(at + len <= self.len, "part {at}..{} of a slice of {}", at + len, self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(at), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_borrows_work() {
        for n in [0, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
        }
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        for (len, chunk) in [(0, 3), (1, 3), (10, 3), (12, 4), (5, 100)] {
            let mut v = vec![0usize; len];
            for_each_chunk(&mut v, chunk, |i, part| part.iter_mut().for_each(|x| *x += i + 1));
            assert!(v.iter().enumerate().all(|(j, &x)| x == j / chunk + 1), "{len} {chunk}: {v:?}");
        }
    }

    #[test]
    fn steps_from_several_threads_take_turns() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        for_each(16, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 100 * 16);
    }
}
