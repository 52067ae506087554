//! The real runtime: one pinned glommio reactor per subtask, each looping over
//! its [`Worker`](crate::worker::Worker).
//!
//! Owns: starting and joining the reactors, the job-wide shared state
//! ([`JobEnv`]: exchange rings, parkers, stop and failure flags), turning
//! operator errors and panics into a [`JobError`] that stops every subtask.
//! A busy reactor steps without syscalls and yields to other glommio tasks
//! when its time slice is up; an idle one parks until a producer, the
//! ingress, a timer or a stop request wakes it.

use crate::checkpoint::coordinator::{Ack, CheckpointSummary};
use crate::checkpoint::subtask::{BackgroundBase, LocalSnapshot};
use crate::checkpoint::CheckpointStats;
use crate::checkpoint::RestoreFrom;
use crate::dataflow::Dataflow;
use crate::env::{ack_for, load_restore, CoordinatorEnds, JobEnv};
use crate::park::Parker;
use crate::restart::{RestartStats, RestartStrategy, RestartTracker};
use crate::time::{Clock, SystemClock};
use crate::worker::{SnapshotWriter, Step, SubtaskReport, Worker};
use crate::{JobConfig, JobError};
use spate_storage::{GlommioIo, Store, WriterSlot};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Longest a parked reactor blocks without re-checking its inputs. A safety
/// net against a lost wake-up (none is known: the park handshake is fenced on
/// both sides); it bounds the cost of one to a delay instead of a hang, at ten
/// wake-ups a second when idle.
const PARK_RECHECK: Duration = Duration::from_millis(100);

/// Longest a parked reactor blocks while its checkpoint tasks have I/O in
/// flight: glommio reaps completions only when the thread runs.
const PARK_WHILE_IO: Duration = Duration::from_millis(1);

/// What a reactor's tasks tell its idle loop (reactor-local).
#[derive(Default)]
struct ReactorIdle {
    /// Checkpoint tasks with work in hand (writing, committing).
    busy: Cell<usize>,
    /// The coordinator's next deadline (processing time), while it waits.
    coordinator_wake_at: Cell<Option<u64>>,
    /// Checkpoint tasks still running.
    live: Cell<usize>,
    /// Snapshot parts handed to the writer task that it has not taken yet.
    queued: Cell<usize>,
}

/// Counts a checkpoint task as busy while alive.
struct BusyGuard<'a>(&'a ReactorIdle);

impl<'a> BusyGuard<'a> {
    fn new(idle: &'a ReactorIdle) -> Self {
        idle.busy.set(idle.busy.get() + 1);
        Self(idle)
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
    }
}

/// How often a busy step loop hands the thread to the checkpoint tasks while
/// they have I/O in flight.
const HELPER_TURN: Duration = Duration::from_millis(1);

/// Whether a busy step loop should let glommio run its loop now: the
/// checkpoint tasks have I/O in flight and had no turn for [`HELPER_TURN`],
/// or (on reactor 0) the coordinator was notified or its deadline passed.
fn helpers_need_turn(
    env: &JobEnv,
    subtask: usize,
    idle: &ReactorIdle,
    last_turn: &mut Instant,
) -> bool {
    let coordinator = subtask == 0
        && (env.coordinator_parker.is_notified()
            || idle
                .coordinator_wake_at
                .get()
                .is_some_and(|at| at <= env.clock.now_ms()));
    let io = idle.busy.get() > 0 && last_turn.elapsed() >= HELPER_TURN;
    // A snapshot part waits for the writer: give it the thread at once
    // (glommio's own preemption would let the step loop run on for up to
    // its time slice, tens of milliseconds of checkpoint duration).
    let queued = idle.queued.get() > 0;
    if coordinator || io || queued {
        *last_turn = Instant::now();
        return true;
    }
    false
}

/// Idles the reactor after its owner published that it parks
/// ([`Parker::prepare_park`]) and found no work. First lets glommio run its
/// loop once, so that runnable tasks (a writer that was just handed a
/// snapshot), I/O completions, timers and foreign wakes are served: glommio
/// does that only when no task is runnable. Then blocks the thread until a
/// notification, `wake_at`, the coordinator's deadline or [`PARK_RECHECK`]
/// (1 ms while checkpoint I/O is in flight), whichever comes first, and lets
/// glommio run once more for what arrived meanwhile.
async fn idle_wait(env: &JobEnv, parker: &Parker, idle: &ReactorIdle, wake_at: Option<u64>) {
    glommio::timer::sleep(Duration::from_micros(1)).await;
    let now = env.clock.now_ms();
    let cap = if idle.busy.get() > 0 {
        PARK_WHILE_IO
    } else {
        PARK_RECHECK
    };
    let timeout = [wake_at, idle.coordinator_wake_at.get()]
        .into_iter()
        .flatten()
        .min()
        .map_or(cap, |at| {
            Duration::from_millis(at.saturating_sub(now)).min(cap)
        });
    if !timeout.is_zero() {
        parker.block(timeout);
    }
    glommio::timer::sleep(Duration::from_micros(1)).await;
}

/// Idle steps a reactor spins (yielding to other tasks) before it parks.
const SPIN_STEPS_BEFORE_PARK: u32 = 64;

/// What the step loop hands its reactor's writer task.
enum WriterJob {
    /// A subtask's part of a checkpoint: written first, then acknowledged.
    Part(LocalSnapshot),
    /// Bases materialised in the background: written when no part waits.
    Bases(Vec<BackgroundBase>),
    /// The subtask finished: acknowledged after every part before it.
    Finished(Vec<crate::checkpoint::metadata::SourceOffset>),
}

/// Hands finished snapshot parts to the reactor's writer task.
struct ChannelWriter(
    glommio::channels::local_channel::LocalSender<WriterJob>,
    Rc<ReactorIdle>,
);

impl SnapshotWriter for ChannelWriter {
    fn submit(&mut self, snapshot: LocalSnapshot) {
        // Unbounded: never blocks the step; at most `max_concurrent` parts wait.
        if self.0.try_send(WriterJob::Part(snapshot)).is_ok() {
            self.1.queued.set(self.1.queued.get() + 1);
        }
    }

    fn submit_bases(&mut self, bases: Vec<BackgroundBase>) {
        // Not counted in `queued`: the step loop need not yield for them.
        let _ = self.0.try_send(WriterJob::Bases(bases));
    }

    fn finished(&mut self, sources: Vec<crate::checkpoint::metadata::SourceOffset>) {
        let _ = self.0.try_send(WriterJob::Finished(sources));
    }
}

/// Segment writers handed from the reactor that owns the store to the others.
type WriterSlots = Mutex<Vec<Option<WriterSlot<GlommioIo>>>>;

/// Writes a subtask's snapshot parts through io_uring and acknowledges them.
async fn writer_task(
    env: Arc<JobEnv>,
    subtask: usize,
    snapshots: glommio::channels::local_channel::LocalReceiver<WriterJob>,
    slots: Arc<(OnceLock<()>, WriterSlots)>,
    checkpoints: std::rc::Rc<std::cell::RefCell<crate::checkpoint::subtask::SubtaskCheckpoints>>,
    idle: Rc<ReactorIdle>,
) {
    let Some(mut acks) = env.take_ack(subtask) else {
        return;
    };
    // The store is opened by reactor 0's coordinator task; wait for it (start-up only).
    let mut writer = loop {
        if slots.0.get().is_some() {
            match slots
                .1
                .lock()
                .ok()
                .and_then(|mut s| s.get_mut(subtask).and_then(Option::take))
            {
                Some(slot) => break slot.into_writer(),
                None => return,
            }
        }
        if env.failed() {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    };
    // Bases materialised in the background, waiting; and those appended
    // since the last flush (published as available once it succeeds).
    let mut bases = std::collections::VecDeque::new();
    let mut appended_bases = Vec::new();
    loop {
        if !bases.is_empty() && idle.queued.get() == 0 {
            // No part waits: write one base. A part handed over meanwhile
            // waits for at most this block.
            let _busy = BusyGuard::new(&idle);
            let mut base: BackgroundBase = bases.pop_front().expect("not empty");
            let handle = writer.append(base.block.kind, &base.block.bytes);
            appended_bases.extend(base.link(handle));
            crate::archive::recycle(std::mem::take(&mut base.block.bytes));
            writer.write_behind().await;
            if bases.is_empty() {
                // On a failed write these bases are never referenced (their
                // chains reach their bounds and materialise on the
                // checkpoint's path); the writer moves to a new segment.
                if writer.flush().await.is_ok() {
                    checkpoints
                        .borrow_mut()
                        .bases_written(std::mem::take(&mut appended_bases));
                }
                appended_bases.clear();
            }
            continue;
        }
        let Some(job) = snapshots.recv().await else {
            break;
        };
        let mut snapshot = match job {
            WriterJob::Bases(more) => {
                bases.extend(more);
                continue;
            }
            WriterJob::Finished(sources) => {
                push_ack(&env, &mut acks, Ack::Finished { subtask, sources }).await;
                continue;
            }
            WriterJob::Part(snapshot) => snapshot,
        };
        idle.queued.set(idle.queued.get().saturating_sub(1));
        let _busy = BusyGuard::new(&idle);
        let mut handles = Vec::with_capacity(snapshot.blocks.len());
        for block in &mut snapshot.blocks {
            handles.push(writer.append(block.kind, &block.bytes));
            // Copied into the writer's I/O buffers: the archive buffer can
            // hold the next key group.
            crate::archive::recycle(std::mem::replace(
                &mut block.bytes,
                crate::data::Bytes::new(),
            ));
            // Full buffers go to the device while the next blocks are copied.
            writer.write_behind().await;
        }
        let written = writer.flush().await.map_err(|e| e.to_string());
        if written.is_ok() {
            // Bases appended before the part are durable with it.
            checkpoints
                .borrow_mut()
                .bases_written(std::mem::take(&mut appended_bases));
        }
        appended_bases.clear();
        writer.abort_blocks(&checkpoints.borrow_mut().take_abandoned());
        let ack = ack_for(snapshot, subtask, handles, written, &checkpoints);
        if !push_ack(&env, &mut acks, ack).await {
            return;
        }
    }
    // The step loop ended (it dropped the channel) and every part it handed
    // over is acknowledged: nothing more will come from this subtask.
    env.coordinator.subtask_finished(subtask);
    env.coordinator_parker.notifier().notify();
}

/// Hands an acknowledgement to the coordinator (waiting while its ring is
/// full); false if the job failed meanwhile.
async fn push_ack(env: &JobEnv, acks: &mut crate::ring::Producer<Ack>, mut ack: Ack) -> bool {
    while let Err(back) = acks.try_push(ack) {
        if env.failed() {
            return false;
        }
        ack = back;
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    env.coordinator_parker.notifier().notify();
    true
}

/// Opens the job's store on reactor 0, before its subtask is built: a run
/// that restored an older checkpoint than the newest discards the newer ones
/// here, durably, before its sink rolls back their output (so that no later
/// restore can return to them). Hands every reactor's writer its slot.
async fn open_store(
    env: &JobEnv,
    slots: &(OnceLock<()>, WriterSlots),
) -> Option<Store<spate_storage::GlommioIo>> {
    let config = env.config.checkpoint.as_ref()?;
    let options = config.store_options(env.restore.as_ref().map(|r| r.metadata.id));
    let store = match Store::open_dir(&config.dir, options).await {
        Ok(store) => store,
        Err(e) => {
            env.fail(JobError::Checkpoint(format!(
                "cannot open the store in {}: {e}",
                config.dir.display()
            )));
            return None;
        }
    };
    let discarded = &store.open_report().checkpoints_discarded;
    if !discarded.is_empty() {
        eprintln!(
            "spate: checkpoint(s) {discarded:?} in {} are newer than the restored one and were discarded",
            config.dir.display()
        );
    }
    if let Ok(mut s) = slots.1.lock() {
        *s = (0..env.config.parallelism)
            .map(|i| Some(store.writer_slot(i as u16)))
            .collect();
    }
    let _ = slots.0.set(());
    Some(store)
}

/// Triggers checkpoints and commits them; runs on reactor 0, which owns the store.
async fn coordinator_task(
    env: Arc<JobEnv>,
    ends: CoordinatorEnds,
    mut store: Store<spate_storage::GlommioIo>,
    idle: Rc<ReactorIdle>,
) {
    let first_id = store.latest().map_or(1, |r| r.id + 1);
    let Some(mut coordinator) = env.coordinator_for(ends, first_id) else {
        return;
    };
    let parker = env.coordinator_parker.clone();
    let parallelism = env.config.parallelism;
    loop {
        if env.failed() || env.done.load(Ordering::SeqCst) == parallelism {
            break;
        }
        let now = env.clock.now_ms();
        if let Some(request) = coordinator.poll(now) {
            let _busy = BusyGuard::new(&idle);
            store.keep_from(request.keep_from);
            match store.commit_checkpoint_deferred(request.record).await {
                Ok(report) => {
                    coordinator.committed(request.id, env.clock.now_ms());
                    // After the completion is out: unlinking takes milliseconds.
                    for warning in store.remove_segment_files(&report.segments_deleted).await {
                        eprintln!("spate: checkpoint store: {warning:?}");
                    }
                }
                Err(e) => coordinator.commit_failed(request.id, e.to_string(), env.clock.now_ms()),
            }
            continue;
        }
        if let Some(reason) = coordinator.fatal.take() {
            env.fail(JobError::Checkpoint(reason));
            break;
        }
        env.coordinator
            .in_progress
            .store(coordinator.in_progress(), Ordering::SeqCst);
        parker.prepare_park();
        if coordinator.has_acks()
            || env.failed()
            || env.done.load(Ordering::SeqCst) == parallelism
            || (coordinator.can_trigger() && env.coordinator.manual_trigger.load(Ordering::SeqCst))
        {
            parker.unpark();
            // Never spin: this task shares reactor 0 with a subtask.
            futures_lite::future::yield_now().await;
            continue;
        }
        // The reactor's idle loop blocks the thread up to the deadline; a
        // notification unparks it and glommio then wakes this task.
        let deadline = coordinator.next_deadline(now);
        idle.coordinator_wake_at.set(deadline);
        match deadline {
            Some(at) if at <= now => futures_lite::future::yield_now().await,
            Some(at) => {
                let wait = Duration::from_millis(at - now);
                futures_lite::future::or(parker.wait(), async move {
                    glommio::timer::sleep(wait).await;
                })
                .await;
            }
            None => {
                // Safety net: re-check at least every PARK_RECHECK even
                // without a deadline (see PARK_RECHECK).
                futures_lite::future::or(parker.wait(), async {
                    glommio::timer::sleep(PARK_RECHECK).await;
                })
                .await;
            }
        }
        idle.coordinator_wake_at.set(None);
        parker.unpark();
    }
}

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
    pub fn start<F>(self, build: F) -> Result<JobHandle, JobError>
    where
        F: Fn(&Dataflow) + Send + Sync + 'static,
    {
        self.config.validate()?;
        // One writer per state directory, taken before anything in it is
        // read for a restore, held across restarts until the job ends.
        let dir_use = match &self.config.checkpoint {
            Some(c) => Some(spate_storage::DirLock::acquire(&c.dir)?.begin_use()?),
            None => None,
        };
        let build: Arc<dyn Fn(&Dataflow) + Send + Sync> = Arc::new(build);
        let stop = Arc::new(AtomicBool::new(false));
        let newest_before = self.config.checkpoint.as_ref().and_then(|c| {
            spate_storage::StoreReader::open(&c.dir)
                .ok()
                .and_then(|r| r.latest().map(|l| l.id))
        });
        let first = launch(&self.config, &self.clock, &build, &stop)?;
        // Restarts restore this job's own checkpoints only: the one it
        // restored and later ones, or (a fresh start) those after the
        // newest one the directory held before.
        let restore_floor = match &first.env.restore {
            Some(r) => r.metadata.id,
            None => newest_before.map_or(1, |id| id + 1),
        };
        let shared = Arc::new(Supervision {
            current: Mutex::new(first.env.clone()),
            stats: Mutex::new(RestartStats::default()),
        });
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
) -> Result<Run, JobError> {
    let started = Instant::now();
    let restore = load_restore(config)?;
    let (env, ends) = JobEnv::new(config.clone(), clock.clone(), restore, stop.clone());
    env.restore_us
        .store(started.elapsed().as_micros() as u64, Ordering::SeqCst);
    let slots: Arc<(OnceLock<()>, WriterSlots)> =
        Arc::new((OnceLock::new(), Mutex::new(Vec::new())));
    let mut ends = Some(ends);
    let cpus = core_affinity::get_core_ids()
        .map(|c| c.len())
        .unwrap_or(1)
        .max(1);
    let started = Instant::now();
    let mut reactors = Vec::with_capacity(config.parallelism);
    for subtask in 0..config.parallelism {
        let placement = if config.pin_cores {
            glommio::Placement::Fixed(subtask % cpus)
        } else {
            glommio::Placement::Unbound
        };
        let reactor_env = env.clone();
        let build = build.clone();
        let slots = slots.clone();
        let coordinator_ends = if subtask == 0 { ends.take() } else { None };
        // Never park inside glommio (see `idle_wait` and park.rs): the
        // reactor idles by blocking its thread in its own idle loop.
        let spawned = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("spate-{subtask}"))
            .spin_before_park(Duration::MAX)
            .spawn(move || async move {
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

/// One run of a job.
struct Run {
    env: Arc<JobEnv>,
    reactors: Vec<glommio::ExecutorJoinHandle<SubtaskReport>>,
    started: Instant,
}

/// What the handle sees of a supervised job: the current run and the restarts.
struct Supervision {
    current: Mutex<Arc<JobEnv>>,
    stats: Mutex<RestartStats>,
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
                    return Ok(report);
                }
                Err(error) => error,
            };
            if self.stop.load(Ordering::SeqCst) || matches!(error, JobError::Config(_)) {
                return Err(error);
            }
            let now = self.clock.now_ms();
            if let Ok(mut stats) = self.shared.stats.lock() {
                stats.last_failure = Some(error.to_string());
                stats.last_failure_ms = Some(now);
            }
            let Some(delay) = tracker.on_failure(now) else {
                return Err(error);
            };
            eprintln!(
                "spate: the job failed ({error}); restart {} in {delay:?} from the latest checkpoint",
                tracker.restarts()
            );
            if !self.wait(delay) {
                return Err(error);
            }
            if let Ok(mut stats) = self.shared.stats.lock() {
                stats.restarts = tracker.restarts();
            }
            let mut config = self.config.clone();
            if let Some(checkpoint) = &mut config.checkpoint {
                checkpoint.restore = RestoreFrom::LatestFrom(self.restore_floor);
            }
            result = launch(&config, &self.clock, &self.build, &self.stop).and_then(|run| {
                if let Ok(mut current) = self.shared.current.lock() {
                    *current = run.env.clone();
                }
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

/// Counts the subtask as done when dropped (the coordinator stops once every
/// subtask's step loop has ended).
struct DoneGuard(Arc<JobEnv>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.done.fetch_add(1, Ordering::SeqCst);
        self.0.coordinator_parker.notifier().notify();
    }
}

async fn reactor(
    env: Arc<JobEnv>,
    subtask: usize,
    build: Arc<dyn Fn(&Dataflow) + Send + Sync>,
    slots: Arc<(OnceLock<()>, WriterSlots)>,
    coordinator_ends: Option<CoordinatorEnds>,
) -> SubtaskReport {
    let done = DoneGuard(env.clone());
    let store = match (&coordinator_ends, &env.config.checkpoint) {
        (Some(_), Some(_)) => match open_store(&env, &slots).await {
            Some(store) => Some(store),
            None => return SubtaskReport::default(),
        },
        _ => None,
    };
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
    let _ = env.fingerprint.set(worker.fingerprint);
    env.built();
    let parker = env.parkers[subtask].clone();
    parker.bind_thread();
    let idle = Rc::new(ReactorIdle::default());
    let mut helpers = Vec::new();
    if env.config.checkpoint.is_some() {
        // The checkpoint tasks run in their own task queue. Not with a
        // latency requirement: glommio 0.9 then re-arms a 1 ms preemption
        // timer in its latency ring all the time, and with that a reactor
        // ended up asleep or spinning without running its tasks (seen every
        // few dozen runs of the q5 benchmark). The step loop hands them the
        // thread itself instead (`helpers_need_turn`).
        let io_queue = glommio::executor().create_task_queue(
            glommio::Shares::default(),
            glommio::Latency::NotImportant,
            "spate-checkpoint-io",
        );
        let spawn = |future: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
            let idle = idle.clone();
            let parker = parker.clone();
            idle.live.set(idle.live.get() + 1);
            glommio::spawn_local_into(
                async move {
                    future.await;
                    idle.live.set(idle.live.get() - 1);
                    parker.notifier().notify();
                },
                io_queue,
            )
            .expect("the task queue was just created")
            .detach()
        };
        if let (Some(ends), Some(store)) = (coordinator_ends, store) {
            env.coordinator_parker.bind_thread();
            helpers.push(spawn(Box::pin(coordinator_task(
                env.clone(),
                ends,
                store,
                idle.clone(),
            ))));
        }
        let (sender, receiver) = glommio::channels::local_channel::new_unbounded();
        worker.set_writer(Box::new(ChannelWriter(sender, idle.clone())));
        let checkpoints = worker.checkpoints();
        helpers.push(spawn(Box::pin(writer_task(
            env.clone(),
            subtask,
            receiver,
            slots,
            checkpoints,
            idle.clone(),
        ))));
    }
    let mut idle_steps = 0u32;
    let mut last_turn = Instant::now();
    let dump = std::env::var_os("SPATE_STALL_DUMP").is_some();
    let mut last_busy = Instant::now();
    let mut dumped = false;
    loop {
        if env.failed() {
            break;
        }
        if dump && !dumped && last_busy.elapsed() > Duration::from_secs(3) {
            dumped = true;
            eprintln!("STALL DUMP {}", worker.describe());
        }
        match catch_unwind(AssertUnwindSafe(|| worker.step())) {
            Ok(Ok(Step::Done)) => break,
            Ok(Ok(Step::Busy)) => {
                if dump {
                    last_busy = Instant::now();
                }
                idle_steps = 0;
                if helpers_need_turn(&env, subtask, &idle, &mut last_turn) {
                    // Glommio runs its loop (I/O, timers, foreign wakes)
                    // only when no task is runnable.
                    glommio::timer::sleep(Duration::from_micros(1)).await;
                } else {
                    glommio::yield_if_needed().await;
                }
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
                idle_wait(&env, &parker, &idle, worker.wake_at()).await;
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
    let report = worker.report.clone();
    // Closes the writer's channel: it finishes what was submitted, then ends.
    drop(worker);
    drop(done);
    // The checkpoint tasks finish (the writer drains, the coordinator stops
    // once every subtask is done); the thread idles between their turns.
    while idle.live.get() > 0 {
        parker.prepare_park();
        if idle.live.get() > 0 && !env.failed() {
            idle_wait(&env, &parker, &idle, None).await;
        } else {
            glommio::timer::sleep(Duration::from_micros(1)).await;
        }
        parker.unpark();
    }
    for helper in helpers {
        let _ = helper.await;
    }
    report
}

/// A running job.
pub struct JobHandle {
    shared: Arc<Supervision>,
    stop: Arc<AtomicBool>,
    inner: Inner,
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
            Inner::Supervised(_) => self
                .shared
                .current
                .lock()
                .map(|env| env.clone())
                .expect("the supervision lock is never poisoned"),
        }
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
        self.env()
            .coordinator
            .history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether some subtask is still running.
    pub fn is_running(&self) -> bool {
        self.env().done.load(Ordering::SeqCst) < self.env().config.parallelism
            && !self.env().failed()
    }

    /// Counts, histograms and rates over the checkpoints so far.
    pub fn checkpoint_summary(&self) -> CheckpointSummary {
        self.env()
            .coordinator
            .summary
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
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
            Inner::Direct(run) => run.join(),
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
            checkpoints: {
                self.env
                    .coordinator
                    .history
                    .lock()
                    .map(|h| h.iter().cloned().collect())
                    .unwrap_or_default()
            },
            restored_from: self.env.restore.as_ref().map(|r| r.metadata.id),
            checkpoint_summary: self
                .env
                .coordinator
                .summary
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
            restore_duration: self.env.restore_duration(),
            restarts: RestartStats::default(),
        })
    }
}
