//! The real runtime: one pinned glommio reactor per subtask, each looping over
//! its [`Worker`](crate::worker::Worker).
//!
//! Owns: starting and joining the reactors, the job-wide shared state
//! ([`JobEnv`]: exchange rings, parkers, stop and failure flags), turning
//! operator errors and panics into a [`JobError`] that stops every subtask.
//! A busy reactor steps without syscalls and yields to other glommio tasks
//! when its time slice is up; an idle one parks until a producer, the
//! ingress, a timer or a stop request wakes it.

use crate::dataflow::exchange::ExchangeRegistry;
use crate::dataflow::Dataflow;
use crate::park::Parker;
use crate::time::{Clock, SystemClock};
use crate::worker::{Step, SubtaskReport, Worker};
use crate::{JobConfig, JobError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Idle steps a reactor spins (yielding to other tasks) before it parks.
const SPIN_STEPS_BEFORE_PARK: u32 = 64;

/// State shared by every subtask of a running job.
pub(crate) struct JobEnv {
    pub config: JobConfig,
    pub exchanges: ExchangeRegistry,
    pub parkers: Vec<Arc<Parker>>,
    pub stop: Arc<AtomicBool>,
    pub failed: AtomicBool,
    pub error: Mutex<Option<JobError>>,
    pub clock: Arc<dyn Clock>,
}

impl JobEnv {
    pub(crate) fn new(config: JobConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            exchanges: ExchangeRegistry::new(config.parallelism, config.ring_capacity),
            parkers: (0..config.parallelism)
                .map(|_| Arc::new(Parker::default()))
                .collect(),
            stop: Arc::new(AtomicBool::new(false)),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            clock,
            config,
        })
    }

    /// Records the first failure and wakes every subtask so all of them stop.
    pub(crate) fn fail(&self, error: JobError) {
        if let Ok(mut slot) = self.error.lock() {
            if slot.is_none() {
                *slot = Some(error);
            }
        }
        self.failed.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn wake_all(&self) {
        for parker in &self.parkers {
            parker.notifier().notify();
        }
    }

    pub(crate) fn take_error(&self) -> Option<JobError> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// Wall time from start to the last subtask finishing.
    pub elapsed: Duration,
    /// Per-subtask counters.
    pub subtasks: Vec<SubtaskReport>,
}

/// A job ready to run: its configuration and its processing-time clock.
pub struct Job {
    config: JobConfig,
    clock: Arc<dyn Clock>,
}

impl Job {
    /// A job with the given configuration and the system clock.
    pub fn new(config: JobConfig) -> Self {
        Self {
            config,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for processing time.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs the job to completion: `build` runs once on every subtask to
    /// declare its dataflow. Returns when every source has ended and every
    /// record and timer has drained, or with the first error.
    pub fn run<F>(self, build: F) -> Result<JobReport, JobError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        self.start(build)?.join()
    }

    /// Starts the job and returns at once; [`JobHandle::stop`] ends an
    /// unbounded job, [`JobHandle::join`] waits for it.
    pub fn start<F>(self, build: F) -> Result<JobHandle, JobError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        self.config.validate()?;
        let env = JobEnv::new(self.config.clone(), self.clock);
        let build: Arc<dyn Fn(&Dataflow) + Send + Sync> = Arc::new(build);
        let cpus = core_affinity::get_core_ids()
            .map(|c| c.len())
            .unwrap_or(1)
            .max(1);
        let started = Instant::now();
        let mut reactors = Vec::with_capacity(self.config.parallelism);
        for subtask in 0..self.config.parallelism {
            let placement = if self.config.pin_cores {
                glommio::Placement::Fixed(subtask % cpus)
            } else {
                glommio::Placement::Unbound
            };
            let reactor_env = env.clone();
            let build = build.clone();
            let spawned = glommio::LocalExecutorBuilder::new(placement)
                .name(&format!("spate-{subtask}"))
                .spawn(move || async move { reactor(reactor_env, subtask, build).await });
            match spawned {
                Ok(handle) => reactors.push(handle),
                Err(e) => {
                    env.fail(JobError::Runtime(format!(
                        "cannot start reactor {subtask}: {e}"
                    )));
                    break;
                }
            }
        }
        Ok(JobHandle {
            env,
            reactors,
            started,
        })
    }
}

async fn reactor(
    env: Arc<JobEnv>,
    subtask: usize,
    build: Arc<dyn Fn(&Dataflow) + Send + Sync>,
) -> SubtaskReport {
    let built = catch_unwind(AssertUnwindSafe(|| {
        Worker::build(env.clone(), subtask, &*build)
    }));
    let mut worker = match built {
        Ok(Ok(worker)) => worker,
        Ok(Err(error)) => {
            env.fail(error);
            return SubtaskReport::default();
        }
        Err(panic) => {
            env.fail(JobError::Panic {
                subtask,
                message: crate::error::panic_message(&*panic),
            });
            return SubtaskReport::default();
        }
    };
    let parker = env.parkers[subtask].clone();
    let mut idle_steps = 0u32;
    loop {
        if env.failed() {
            break;
        }
        match catch_unwind(AssertUnwindSafe(|| worker.step())) {
            Ok(Ok(Step::Done)) => break,
            Ok(Ok(Step::Busy)) => {
                idle_steps = 0;
                glommio::yield_if_needed().await;
            }
            Ok(Ok(Step::Idle)) => {
                idle_steps += 1;
                if idle_steps < SPIN_STEPS_BEFORE_PARK {
                    futures_lite::future::yield_now().await;
                    continue;
                }
                parker.prepare_park();
                if env.failed() || worker.has_work() {
                    parker.unpark();
                    continue;
                }
                worker.report.parks += 1;
                match worker.wake_at() {
                    Some(at) => {
                        let wait_ms = at.saturating_sub(env.clock.now_ms()).max(1);
                        futures_lite::future::or(parker.wait(), async move {
                            glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
                        })
                        .await;
                    }
                    None => parker.wait().await,
                }
                parker.unpark();
            }
            Ok(Err(error)) => {
                env.fail(error);
                break;
            }
            Err(panic) => {
                env.fail(JobError::Panic {
                    subtask,
                    message: crate::error::panic_message(&*panic),
                });
                break;
            }
        }
    }
    worker.report.clone()
}

/// A running job.
pub struct JobHandle {
    env: Arc<JobEnv>,
    reactors: Vec<glommio::ExecutorJoinHandle<SubtaskReport>>,
    started: Instant,
}

impl JobHandle {
    /// Asks every source to end; the job then drains and finishes.
    pub fn stop(&self) {
        self.env.stop.store(true, Ordering::SeqCst);
        self.env.wake_all();
    }

    /// Waits for every subtask; returns the report or the first error.
    pub fn join(self) -> Result<JobReport, JobError> {
        let mut subtasks = Vec::new();
        for (subtask, reactor) in self.reactors.into_iter().enumerate() {
            match reactor.join() {
                Ok(report) => subtasks.push(report),
                Err(e) => self
                    .env
                    .fail(JobError::Runtime(format!("reactor {subtask} failed: {e}"))),
            }
        }
        if let Some(error) = self.env.take_error() {
            return Err(error);
        }
        Ok(JobReport {
            elapsed: self.started.elapsed(),
            subtasks,
        })
    }
}
