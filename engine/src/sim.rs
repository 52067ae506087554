//! The deterministic simulator: every subtask of a job on one thread, stepped
//! in an order chosen by a seeded generator (TigerBeetle's VOPR idea).
//!
//! The simulator drives the very same [`Worker`] step logic and rings as the
//! glommio runtime; only the scheduling and the clock differ. A seed fixes the
//! whole run: which subtask steps next, how far the virtual clock moves, and
//! (unless disabled) the ring capacity and batch size, chosen small to force
//! full rings and backpressure. A failing run is reproduced by its seed, which
//! every error and report carries.

use crate::dataflow::Dataflow;
use crate::runtime::JobEnv;
use crate::time::{Clock, ManualClock};
use crate::worker::{Step, SubtaskReport, Worker};
use crate::{JobConfig, JobError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// SplitMix64: a tiny, fixed, documented generator (so a seed means the same
/// run on every platform and version of the dependencies).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// What a simulated run reports.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The seed of the run.
    pub seed: u64,
    /// Total steps over all subtasks.
    pub steps: u64,
    /// The ring capacity and batch size the run used.
    pub ring_capacity: usize,
    /// Records per batch.
    pub batch_size: usize,
    /// Virtual processing time at the end, ms after the start.
    pub virtual_ms: u64,
    /// Per-subtask counters.
    pub subtasks: Vec<SubtaskReport>,
}

/// A job run by the deterministic simulator.
pub struct Simulation {
    config: JobConfig,
    seed: u64,
    randomize_buffers: bool,
    max_steps: u64,
}

impl Simulation {
    /// Simulates `config` with `seed`; ring capacity and batch size are drawn
    /// from the seed (small, to exercise full rings) unless
    /// [`keep_buffers`](Self::keep_buffers) is called.
    pub fn new(config: JobConfig, seed: u64) -> Self {
        Self {
            config,
            seed,
            randomize_buffers: true,
            max_steps: 50_000_000,
        }
    }

    /// Uses the configuration's ring capacity and batch size as given.
    pub fn keep_buffers(mut self) -> Self {
        self.randomize_buffers = false;
        self
    }

    /// Fails the run with [`JobError::Stalled`] after this many steps.
    pub fn max_steps(mut self, steps: u64) -> Self {
        self.max_steps = steps;
        self
    }

    /// Runs the job on this thread until it finishes or fails.
    pub fn run<F>(self, build: F) -> Result<SimReport, JobError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        let mut rng = SplitMix64::new(self.seed);
        let mut config = self.config.clone();
        if self.randomize_buffers {
            config.ring_capacity = 2 << rng.below(4); // 2..=16 batches
            config.batch_size = 1 + rng.below(64) as usize;
        }
        config.validate()?;
        let start_ms = 1_000_000;
        let clock = ManualClock::new(start_ms);
        let env = JobEnv::new(config.clone(), Arc::new(clock.clone()));
        let seed = self.seed;
        let panic_error = |subtask, panic: Box<dyn std::any::Any + Send>| JobError::Panic {
            subtask,
            message: format!("{} (seed {seed})", crate::error::panic_message(&*panic)),
        };
        let mut workers = Vec::with_capacity(config.parallelism);
        for subtask in 0..config.parallelism {
            let built = catch_unwind(AssertUnwindSafe(|| {
                Worker::build(env.clone(), subtask, &build)
            }));
            match built {
                Ok(Ok(worker)) => workers.push(Some(worker)),
                Ok(Err(e)) => return Err(e),
                Err(panic) => return Err(panic_error(subtask, panic)),
            }
        }
        let mut finished: Vec<SubtaskReport> = Vec::new();
        let mut steps = 0u64;
        let mut idle_in_a_row = 0usize;
        loop {
            let live: Vec<usize> = (0..workers.len())
                .filter(|&i| workers[i].is_some())
                .collect();
            if live.is_empty() {
                break;
            }
            if steps >= self.max_steps {
                return Err(JobError::Stalled { steps, seed });
            }
            let subtask = live[rng.below(live.len() as u64) as usize];
            let worker = workers[subtask].as_mut().expect("live");
            steps += 1;
            clock.advance(rng.below(3));
            match catch_unwind(AssertUnwindSafe(|| worker.step())) {
                Ok(Ok(Step::Done)) => {
                    finished.push(worker.report.clone());
                    workers[subtask] = None;
                    idle_in_a_row = 0;
                }
                Ok(Ok(Step::Busy)) => idle_in_a_row = 0,
                Ok(Ok(Step::Idle)) => {
                    idle_in_a_row += 1;
                    if idle_in_a_row > 4 * live.len() + 16 {
                        // Everyone looks idle: jump the clock to the next timer
                        // or source schedule; if there is none, nothing can ever
                        // happen again.
                        let any_work = workers.iter_mut().flatten().any(|w| w.has_work());
                        if !any_work {
                            let next = workers.iter().flatten().filter_map(|w| w.wake_at()).min();
                            match next {
                                Some(at) => clock.advance_to(at),
                                None => return Err(JobError::Stalled { steps, seed }),
                            }
                        }
                        idle_in_a_row = 0;
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(panic) => return Err(panic_error(subtask, panic)),
            }
        }
        finished.sort_by_key(|r| r.subtask);
        Ok(SimReport {
            seed,
            steps,
            ring_capacity: config.ring_capacity,
            batch_size: config.batch_size,
            virtual_ms: clock.now_ms() - start_ms,
            subtasks: finished,
        })
    }
}
