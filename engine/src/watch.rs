//! What a job's handle and its monitor see of a job across its runs:
//! [`Supervision`] (the current run, restarts, the checkpoints and restores
//! of earlier runs, the live figures) and [`JobView`], one consistent
//! reading of it.
//!
//! The supervisor writes it (a new run, a failure, the end); the handle and
//! the monitor's thread read it. Locks only, taken at a run's start and end
//! and when someone reads: never on the data path. Must not start or stop
//! runs, and must not know about the monitor's server.

use crate::checkpoint::coordinator::CheckpointSummary;
use crate::checkpoint::CheckpointStats;
use crate::env::JobEnv;
use crate::metrics::MetricsRegistry;
use crate::restart::{RestartStats, RestartStrategy};
use crate::JobConfig;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Checkpoints kept in the job's history across runs (the newest).
const JOB_HISTORY: usize = 256;

/// A checkpoint of some run of the job.
#[derive(Clone, Debug)]
pub(crate) struct RunCheckpoint {
    /// The run: 0 for the first, then one more per restart.
    pub attempt: u32,
    pub stats: CheckpointStats,
}

/// A run that restored a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Restore {
    pub attempt: u32,
    pub checkpoint: u64,
    /// Processing time (epoch ms) at which the run started restoring.
    pub at_ms: u64,
    pub duration: Duration,
}

/// How a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobStatus {
    Running,
    /// A run failed and the restart strategy runs the job again.
    Restarting,
    Finished,
    Failed,
}

impl JobStatus {
    pub(crate) fn name(self) -> &'static str {
        match self {
            JobStatus::Running => "RUNNING",
            JobStatus::Restarting => "RESTARTING",
            JobStatus::Finished => "FINISHED",
            JobStatus::Failed => "FAILED",
        }
    }
}

/// The checkpoints and restores of the runs before the current one.
#[derive(Default)]
struct PastRuns {
    summary: CheckpointSummary,
    history: VecDeque<RunCheckpoint>,
    restores: Vec<Restore>,
}

/// What the handle and the monitor see of a job.
pub(crate) struct Supervision {
    pub current: Mutex<Arc<JobEnv>>,
    pub stats: Mutex<RestartStats>,
    /// The job's figures (every run registers into the same cells).
    pub metrics: Arc<MetricsRegistry>,
    pub config: JobConfig,
    /// Processing time (epoch ms) at which the job started.
    pub started_ms: u64,
    past: Mutex<PastRuns>,
    /// The run's number: 0, then one more per restart.
    attempt: Mutex<u32>,
    /// Set when the supervisor ended the job (with or without an error).
    ended: Mutex<Option<JobStatus>>,
}

/// One reading of a job, for the monitor.
pub(crate) struct JobView {
    pub status: JobStatus,
    pub attempt: u32,
    pub restarts: RestartStats,
    /// Over every run.
    pub summary: CheckpointSummary,
    /// Of every run, oldest first (the newest [`JOB_HISTORY`]).
    pub history: Vec<RunCheckpoint>,
    pub restores: Vec<Restore>,
    pub in_progress: bool,
    /// Processing time (epoch ms) of the reading.
    pub now_ms: u64,
    /// The current run's data plane, in a cluster job.
    pub network: Option<crate::net::NetworkReport>,
}

impl Supervision {
    pub(crate) fn new(
        first: Arc<JobEnv>,
        config: JobConfig,
        metrics: Arc<MetricsRegistry>,
    ) -> Self {
        let started_ms = first.clock.now_ms();
        Self {
            current: Mutex::new(first),
            stats: Mutex::new(RestartStats::default()),
            metrics,
            config,
            started_ms,
            past: Mutex::new(PastRuns::default()),
            attempt: Mutex::new(0),
            ended: Mutex::new(None),
        }
    }

    /// The current run's shared state.
    pub(crate) fn env(&self) -> Arc<JobEnv> {
        self.current
            .lock()
            .map(|env| env.clone())
            .expect("the supervision lock is never poisoned")
    }

    /// A restarted run replaces the current one; the old run's checkpoints
    /// and restore join the past.
    pub(crate) fn next_run(&self, env: Arc<JobEnv>) {
        let old = std::mem::replace(&mut *self.current.lock().expect("supervision lock"), env);
        let mut attempt = self.attempt.lock().expect("supervision lock");
        let mut past = self.past.lock().expect("supervision lock");
        past.summary.merge(&old.coordinator.summary());
        for stats in old.coordinator.history() {
            if past.history.len() == JOB_HISTORY {
                past.history.pop_front();
            }
            past.history.push_back(RunCheckpoint {
                attempt: *attempt,
                stats,
            });
        }
        past.restores.extend(restore_of(&old, *attempt));
        *attempt += 1;
    }

    /// The supervisor ended the job.
    pub(crate) fn end(&self, status: JobStatus) {
        if let Ok(mut ended) = self.ended.lock() {
            *ended = Some(status);
        }
    }

    fn status(&self, env: &JobEnv) -> JobStatus {
        if let Some(status) = self.ended.lock().ok().and_then(|e| *e) {
            return status;
        }
        if env.failed() {
            if self.config.restart == RestartStrategy::None {
                JobStatus::Failed
            } else {
                JobStatus::Restarting
            }
        } else if env.done.load(Ordering::SeqCst) >= env.config.parallelism {
            JobStatus::Finished
        } else {
            JobStatus::Running
        }
    }

    /// Reads the job: every run's checkpoints and restores, the current
    /// run's status.
    pub(crate) fn view(&self) -> JobView {
        let env = self.env();
        let attempt = *self.attempt.lock().expect("supervision lock");
        let past = self.past.lock().expect("supervision lock");
        let mut summary = past.summary.clone();
        summary.merge(&env.coordinator.summary());
        let current = env.coordinator.history();
        let keep = JOB_HISTORY.saturating_sub(current.len());
        let skip = past.history.len().saturating_sub(keep);
        let mut history: Vec<RunCheckpoint> = past.history.iter().skip(skip).cloned().collect();
        history.extend(
            current
                .into_iter()
                .map(|stats| RunCheckpoint { attempt, stats }),
        );
        let mut restores = past.restores.clone();
        restores.extend(restore_of(&env, attempt));
        JobView {
            status: self.status(&env),
            attempt,
            restarts: self.stats.lock().map(|s| s.clone()).unwrap_or_default(),
            summary,
            history,
            restores,
            in_progress: env.coordinator.in_progress.load(Ordering::SeqCst),
            now_ms: env.clock.now_ms(),
            network: env.net.as_ref().map(|n| n.report()),
        }
    }
}

/// The restore a run made, once it finished restoring.
fn restore_of(env: &JobEnv, attempt: u32) -> Option<Restore> {
    let restore = env.restore.as_ref()?;
    Some(Restore {
        attempt,
        checkpoint: restore.metadata.id,
        at_ms: env
            .clock
            .now_ms()
            .saturating_sub(env.started.elapsed().as_millis() as u64),
        duration: env.restore_duration()?,
    })
}
