//! The job API: [`Job`] starts a job's runs on the runtime's reactors,
//! [`JobHandle`] watches and stops it, a supervisor thread restarts failed
//! runs from the latest checkpoint of the job ([`RestartStrategy`]), and
//! [`JobReport`] is what a finished job reports.

use crate::checkpoint::coordinator::CheckpointSummary;
use crate::checkpoint::{CheckpointStats, RestoreFrom};
use crate::dataflow::Dataflow;
use crate::env::{load_restore_with, JobEnv};
use crate::metrics::MetricsRegistry;
use crate::monitor::{Listening, Monitor};
use crate::restart::{RestartStats, RestartStrategy, RestartTracker};
use crate::runtime::{reactor, WriterSlots};
use crate::time::{Clock, SystemClock};
use crate::watch::{JobStatus, Supervision};
use crate::worker::SubtaskReport;
use crate::{JobConfig, JobError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// Wall time from start to the last subtask finishing.
    pub elapsed: Duration,
    /// Per-subtask counters.
    pub subtasks: Vec<SubtaskReport>,
    /// Statistics of every checkpoint of the run (bounded history).
    pub checkpoints: Vec<CheckpointStats>,
    /// The checkpoint the run restored, if any.
    pub restored_from: Option<u64>,
    /// Counts, histograms and rates over every checkpoint of the run.
    pub checkpoint_summary: CheckpointSummary,
    /// Time from the start of the run until every subtask had restored its
    /// state (reading the manifest, verifying and loading blocks).
    pub restore_duration: Option<Duration>,
    /// Restarts before this (last) run, and the last failure.
    pub restarts: RestartStats,
    /// The data plane's figures, in a cluster job.
    pub network: Option<crate::net::NetworkReport>,
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
    /// unbounded job, [`JobHandle::join`] waits for it. With a
    /// [`RestartStrategy`] other than `None`, a failed run is restarted from
    /// the latest completed checkpoint by a supervisor thread.
    pub fn start<F>(mut self, build: F) -> Result<JobHandle, JobError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        self.config.validate()?;
        self.config = self.config.for_this_process();
        // One writer per state directory, taken before anything in it is
        // read for a restore, held across restarts until the job ends.
        let dir_use = match &self.config.checkpoint {
            Some(c) => Some(spate_storage::DirLock::acquire(&c.dir)?.begin_use()?),
            None => None,
        };
        let build: Arc<dyn Fn(&Dataflow) + Send + Sync> = Arc::new(build);
        let stop = Arc::new(AtomicBool::new(false));
        let newest_before = self.config.checkpoint.as_ref().and_then(|c| {
            let local = spate_storage::StoreReader::open(&c.dir)
                .ok()
                .and_then(|r| r.latest().map(|l| l.id));
            // A cluster job's own checkpoints are also above every global
            // record there was (this process's store may be new).
            let global = self.config.cluster.as_ref().and_then(|_| {
                let root = crate::checkpoint::global::files::root_of(&c.dir);
                crate::checkpoint::global::Records::of_job(&root, c.remote.as_deref())
                    .and_then(|r| r.ids())
                    .ok()
                    .and_then(|ids| ids.last().copied())
            });
            local.max(global)
        });
        // Listens before the first run starts: a port in use fails here,
        // with no reactor running and the directory lock still held.
        let listening = match &self.config.monitor {
            Some(monitor) => Some(Listening::bind(monitor)?),
            None => None,
        };
        let metrics = Arc::new(MetricsRegistry::default());
        let first = launch(&self.config, &self.clock, &build, &stop, &metrics)?;
        // Restarts restore this job's own checkpoints only: the one it
        // restored and later ones, or (a fresh start) those after the
        // newest one the directory held before.
        let restore_floor = match &first.env.restore {
            Some(r) => r.metadata.id,
            None => newest_before.map_or(1, |id| id + 1),
        };
        let shared = Arc::new(Supervision::new(
            first.env.clone(),
            self.config.clone(),
            metrics.clone(),
        ));
        let monitor = match listening.map(|l| l.serve(shared.clone())) {
            Some(Ok(monitor)) => Some(monitor),
            Some(Err(e)) => {
                // No thread to serve from: stop the run rather than leave
                // it running with nobody to join it.
                stop.store(true, Ordering::SeqCst);
                first.env.wake_all();
                let _ = first.join();
                return Err(e);
            }
            None => None,
        };
        let inner = if self.config.restart == RestartStrategy::None {
            Inner::Direct(first)
        } else {
            let supervisor = Supervisor {
                config: self.config,
                clock: self.clock,
                build,
                stop: stop.clone(),
                shared: shared.clone(),
                restore_floor,
            };
            let thread = std::thread::Builder::new()
                .name("spate-supervisor".into())
                .spawn(move || supervisor.run(first))
                .map_err(|e| JobError::Runtime(format!("cannot start the supervisor: {e}")))?;
            Inner::Supervised(thread)
        };
        Ok(JobHandle {
            shared,
            stop,
            inner,
            monitor,
            _dir_use: dir_use,
        })
    }
}

/// Starts one run of a job: its reactors, restoring what the configuration says.
fn launch(
    config: &JobConfig,
    clock: &Arc<dyn Clock>,
    build: &Arc<dyn Fn(&Dataflow) + Send + Sync>,
    stop: &Arc<AtomicBool>,
    metrics: &Arc<MetricsRegistry>,
) -> Result<Run, JobError> {
    let started = Instant::now();
    let remote = match &config.checkpoint {
        Some(c) => {
            crate::checkpoint::remote::connect(c, config.cluster.as_ref().map(|k| k.process))?
        }
        None => None,
    };
    // Every peer connected and authenticated before any subtask runs, and
    // in a cluster before the restore is chosen: every process's previous
    // run (the leader's last record write included) has ended by the time
    // all of them connect, so each reads the same global records.
    let net = match &config.cluster {
        Some(cluster) => Some(crate::net::Network::connect(cluster, config.parallelism)?),
        None => None,
    };
    let restore = match restore_in_run(config, remote.as_deref(), net.as_deref()) {
        Ok(restore) => restore,
        Err(e) => {
            if let Some(net) = &net {
                net.abort_unstarted(&e.to_string());
            }
            return Err(e);
        }
    };
    let (env, ends) = JobEnv::new(
        config.clone(),
        clock.clone(),
        restore,
        stop.clone(),
        metrics.clone(),
        net.clone(),
        None,
    );
    if let Some(net) = &net {
        let run: Arc<dyn crate::net::RunState> = env.clone();
        if let Err(e) = net.start(&run) {
            env.fail(e);
        }
    }
    env.restore_us
        .store(started.elapsed().as_micros() as u64, Ordering::SeqCst);
    if let Some(remote) = remote {
        let _ = env.remote.set(remote);
    }
    let slots: Arc<(OnceLock<()>, WriterSlots)> =
        Arc::new((OnceLock::new(), Mutex::new(Vec::new())));
    let mut ends = Some(ends);
    let cpus = core_affinity::get_core_ids()
        .map(|c| c.len())
        .unwrap_or(1)
        .max(1);
    let started = Instant::now();
    let mut reactors = Vec::with_capacity(config.parallelism);
    let first = config.first_subtask();
    for subtask in first..first + config.parallelism {
        let placement = if config.pin_cores {
            glommio::Placement::Fixed(subtask % cpus)
        } else {
            glommio::Placement::Unbound
        };
        let reactor_env = env.clone();
        let build = build.clone();
        let slots = slots.clone();
        let coordinator_ends = if subtask == first { ends.take() } else { None };
        // Never park inside glommio (see `idle_wait` and park.rs): the
        // reactor idles by blocking its thread in its own idle loop.
        let spawned = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("spate-{subtask}"))
            .spin_before_park(Duration::MAX)
            .spawn(move || async move {
                crate::park::tighten_timer_slack();
                reactor(reactor_env, subtask, build, slots, coordinator_ends).await
            });
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
    Ok(Run {
        env,
        reactors,
        started,
    })
}

/// The checkpoint a run restores. In a cluster job that checkpoints, the
/// leader chooses and tells the others before anything else on the
/// connections, and they restore exactly that one: a process that could
/// not read a record the leader read (a transient error of the object
/// store, a damaged local copy) fails the run rather than restore an
/// older one (`docs/cluster.md` §15.5).
fn restore_in_run(
    config: &JobConfig,
    remote: Option<&crate::checkpoint::remote::JobRemote>,
    net: Option<&crate::net::Network>,
) -> Result<Option<Arc<crate::checkpoint::restore::RestoreState>>, JobError> {
    let Some(net) = net.filter(|_| config.checkpoint.is_some()) else {
        return load_restore_with(config, remote);
    };
    if net.process() == 0 {
        let restored = load_restore_with(config, remote)?;
        net.send_restore(restored.as_ref().map_or(0, |r| r.metadata.id))?;
        return Ok(restored);
    }
    let id = net.receive_restore()?;
    let mut decided = config.clone();
    if let Some(c) = &mut decided.checkpoint {
        c.restore = match id {
            0 => RestoreFrom::Nothing,
            id => RestoreFrom::Checkpoint(id),
        };
    }
    load_restore_with(&decided, remote)
}

/// One run of a job.
struct Run {
    env: Arc<JobEnv>,
    reactors: Vec<glommio::ExecutorJoinHandle<SubtaskReport>>,
    started: Instant,
}

/// Restarts failed runs as the job's [`RestartStrategy`] allows.
struct Supervisor {
    config: JobConfig,
    clock: Arc<dyn Clock>,
    build: Arc<dyn Fn(&Dataflow) + Send + Sync>,
    stop: Arc<AtomicBool>,
    shared: Arc<Supervision>,
    /// The lowest checkpoint id a restart may restore.
    restore_floor: u64,
}

impl Supervisor {
    fn run(self, first: Run) -> Result<JobReport, JobError> {
        let mut tracker = RestartTracker::new(self.config.restart.clone(), self.clock.now_ms());
        let mut result = first.join();
        loop {
            let error = match result {
                Ok(mut report) => {
                    report.restarts = self.stats();
                    self.shared.end(JobStatus::Finished);
                    return Ok(report);
                }
                Err(error) => error,
            };
            if self.stop.load(Ordering::SeqCst) || matches!(error, JobError::Config(_)) {
                self.shared.end(JobStatus::Failed);
                return Err(error);
            }
            let now = self.clock.now_ms();
            if let Ok(mut stats) = self.shared.stats.lock() {
                stats.last_failure = Some(error.to_string());
                stats.last_failure_ms = Some(now);
            }
            let Some(delay) = tracker.on_failure(now) else {
                self.shared.end(JobStatus::Failed);
                return Err(error);
            };
            eprintln!(
                "spate: the job failed ({error}); restart {} in {delay:?} from the latest checkpoint",
                tracker.restarts()
            );
            if !self.wait(delay) {
                self.shared.end(JobStatus::Failed);
                return Err(error);
            }
            if let Ok(mut stats) = self.shared.stats.lock() {
                stats.restarts = tracker.restarts();
            }
            let mut config = self.config.clone();
            if let Some(checkpoint) = &mut config.checkpoint {
                checkpoint.restore = RestoreFrom::LatestFrom(self.restore_floor);
            }
            if let Some(cluster) = &mut config.cluster {
                // Every process of a cluster job fails with each run and
                // restarts: each restart is a generation of its own, and
                // the handshake (its proofs cover the job's name) refuses
                // a peer still in another one.
                cluster.job = format!("{}#restart-{}", cluster.job, tracker.restarts());
            }
            let metrics = &self.shared.metrics;
            result =
                launch(&config, &self.clock, &self.build, &self.stop, metrics).and_then(|run| {
                    self.shared.next_run(run.env.clone());
                    run.join()
                });
        }
    }

    /// Waits `delay` unless the job is stopped first; returns whether to go on.
    fn wait(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        while !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            // Bounded slices so that a stop request ends the wait.
            std::thread::park_timeout(left.min(Duration::from_millis(10)));
        }
        false
    }

    fn stats(&self) -> RestartStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

/// Fails a running job from outside it ([`JobHandle::failer`]); cheap to
/// clone and to send to another thread.
#[derive(Clone)]
pub struct JobFailer(Arc<Supervision>);

impl JobFailer {
    /// Fails the current run with `error`: every subtask stops, and
    /// [`JobHandle::join`] returns the error unless the restart strategy
    /// restarts the job.
    pub fn fail(&self, error: JobError) {
        self.0.env().fail(error);
    }
}

/// A running job.
pub struct JobHandle {
    shared: Arc<Supervision>,
    stop: Arc<AtomicBool>,
    inner: Inner,
    /// Serves the job's figures while the handle lives (`JobConfig::monitor`).
    monitor: Option<Monitor>,
    /// The state directory, used by this job until the handle drops.
    _dir_use: Option<spate_storage::DirUse>,
}

enum Inner {
    /// No restart strategy: the one run.
    Direct(Run),
    /// Runs (and restarts) on the supervisor thread.
    Supervised(std::thread::JoinHandle<Result<JobReport, JobError>>),
}

impl JobHandle {
    /// The current run's shared state.
    fn env(&self) -> Arc<JobEnv> {
        match &self.inner {
            Inner::Direct(run) => run.env.clone(),
            Inner::Supervised(_) => self.shared.env(),
        }
    }

    /// The address the monitor listens on, when `JobConfig::monitor` asked
    /// for one (with the port the system chose, if it asked for port 0).
    pub fn monitor_address(&self) -> Option<std::net::SocketAddr> {
        self.monitor.as_ref().map(Monitor::address)
    }

    /// A handle that fails the job from another thread: a cluster process
    /// whose membership lease is lost, a watchdog.
    pub fn failer(&self) -> JobFailer {
        JobFailer(self.shared.clone())
    }

    /// Asks every source to end; the job then drains and finishes (and is
    /// not restarted).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.env().wake_all();
    }

    /// Restarts so far, and the last failure.
    pub fn restart_stats(&self) -> RestartStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Asks the coordinator for a checkpoint now (Flink's manual trigger); it
    /// starts as soon as no other checkpoint is in progress.
    pub fn trigger_checkpoint(&self) {
        self.env().request_checkpoint();
    }

    /// Statistics of the checkpoints so far (bounded history, oldest first).
    pub fn checkpoint_stats(&self) -> Vec<CheckpointStats> {
        self.env().coordinator.history()
    }

    /// Whether some subtask is still running.
    pub fn is_running(&self) -> bool {
        self.env().done.load(Ordering::SeqCst) < self.env().config.parallelism
            && !self.env().failed()
    }

    /// Counts, histograms and rates over the checkpoints so far.
    pub fn checkpoint_summary(&self) -> CheckpointSummary {
        self.env().coordinator.summary()
    }

    /// Whether a checkpoint is in progress.
    pub fn checkpoint_in_progress(&self) -> bool {
        self.env().coordinator.in_progress.load(Ordering::SeqCst)
    }

    /// Number of failed checkpoints so far.
    pub fn failed_checkpoints(&self) -> u64 {
        self.env().coordinator.failed.load(Ordering::SeqCst)
    }

    /// Number of completed checkpoints so far.
    pub fn completed_checkpoints(&self) -> u64 {
        self.env().coordinator.completed.load(Ordering::SeqCst)
    }

    /// Waits for the job (every run, with restarts); returns the report or
    /// the error that ended it.
    pub fn join(self) -> Result<JobReport, JobError> {
        match self.inner {
            Inner::Direct(run) => {
                let result = run.join();
                self.shared.end(match result {
                    Ok(_) => JobStatus::Finished,
                    Err(_) => JobStatus::Failed,
                });
                result
            }
            Inner::Supervised(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(JobError::Runtime("the supervisor panicked".into()))),
        }
    }
}

impl Run {
    /// Waits for every subtask; returns the report or the first error.
    fn join(self) -> Result<JobReport, JobError> {
        let mut subtasks = Vec::new();
        let first = self.env.config.first_subtask();
        for (i, reactor) in self.reactors.into_iter().enumerate() {
            match reactor.join() {
                Ok(report) => subtasks.push(report),
                Err(e) => self.env.fail(JobError::Runtime(format!(
                    "reactor {} failed: {e}",
                    first + i
                ))),
            }
        }
        // The link threads end once every peer said bye (or the job failed).
        let network = self.env.net.as_ref().map(|n| n.join(self.env.failed()));
        if let Some(error) = self.env.take_error() {
            return Err(error);
        }
        Ok(JobReport {
            elapsed: self.started.elapsed(),
            subtasks,
            checkpoints: self.env.coordinator.history(),
            restored_from: self.env.restore.as_ref().map(|r| r.metadata.id),
            checkpoint_summary: self.env.coordinator.summary(),
            restore_duration: self.env.restore_duration(),
            restarts: RestartStats::default(),
            network,
        })
    }
}
