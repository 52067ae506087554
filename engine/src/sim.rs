//! The deterministic simulator: every subtask of a job on one thread, stepped
//! in an order chosen by a seeded generator (TigerBeetle's VOPR idea).
//!
//! The simulator drives the very same [`Worker`] step logic and rings as the
//! glommio runtime; only the scheduling and the clock differ. A seed fixes the
//! whole run: which subtask steps next, how far the virtual clock moves, and
//! (unless disabled) the ring capacity and batch size, chosen small to force
//! full rings and backpressure. A failing run is reproduced by its seed, which
//! every error and report carries.

use crate::checkpoint::coordinator::Ack;
use crate::checkpoint::restore::RestoreState;
use crate::checkpoint::subtask::LocalSnapshot;
use crate::dataflow::Dataflow;
use crate::env::{ack_for, check_restored, JobEnv};
use crate::ring::Producer;
use crate::time::{Clock, ManualClock};
use crate::worker::SnapshotWriter;
use crate::worker::{Step, SubtaskReport, Worker};
use crate::{JobConfig, JobError};
use spate_storage::sim::block_on;
use spate_storage::{SegmentWriter, SimIo, Store, StoreReader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

pub use crate::rng::SplitMix64;

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
    /// Statistics of every checkpoint of the run.
    pub checkpoints: Vec<crate::checkpoint::CheckpointStats>,
    /// The checkpoint the run restored, if any.
    pub restored_from: Option<u64>,
    /// Counts and histograms over every checkpoint of the run.
    pub checkpoint_summary: crate::checkpoint::coordinator::CheckpointSummary,
    /// Bytes written onto the links between simulated processes.
    pub network_bytes: u64,
    /// The run ended because a link between simulated processes dropped
    /// ([`Simulation::drop_link_at`]).
    pub link_dropped: bool,
}

/// Writes snapshot parts synchronously into the simulated store.
/// Bases materialised in the background are written at once, or, as drawn
/// after each part, only after the next part (then too late for the
/// checkpoint after their cut, as on a busy device).
struct SimWriter {
    writer: SegmentWriter<SimIo>,
    acks: Producer<Ack>,
    subtask: usize,
    checkpoints: std::rc::Rc<std::cell::RefCell<crate::checkpoint::subtask::SubtaskCheckpoints>>,
    bases: Vec<crate::checkpoint::subtask::BackgroundBase>,
    rng: SplitMix64,
    /// Bases wait for the next part (drawn after each part).
    slow_bases: bool,
    /// Blocks handed over early and appended, per checkpoint in progress.
    streams: crate::checkpoint::subtask::Streams,
    /// Blocks handed over and not appended yet: a writer one step or more
    /// behind (drawn per writer), so that archiving waits for it and writes
    /// keep values per entry. Those handed over in this step, and earlier.
    held_new: Vec<(u64, crate::checkpoint::subtask::SnapshotBlock)>,
    held: Vec<(u64, crate::checkpoint::subtask::SnapshotBlock)>,
    slow_blocks: bool,
}

impl SimWriter {
    /// Appends every block held back.
    fn append_held(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        held.append(&mut self.held_new);
        self.append(held);
    }

    fn append(&mut self, blocks: Vec<(u64, crate::checkpoint::subtask::SnapshotBlock)>) {
        for (id, block) in blocks {
            self.streams
                .append(&mut self.writer, &self.checkpoints, id, block);
        }
    }

    /// Writes the bases waiting, unless they wait for the next part.
    fn write_bases(&mut self) {
        if self.bases.is_empty() || self.slow_bases {
            return;
        }
        let bases = std::mem::take(&mut self.bases);
        let handles: Vec<_> = bases
            .iter()
            .map(|b| self.writer.append(b.block.kind, &b.block.bytes))
            .collect();
        match block_on(self.writer.flush()) {
            Ok(()) => {
                let links = bases.iter().zip(handles).filter_map(|(b, h)| b.link(h));
                self.checkpoints.borrow_mut().bases_written(links.collect());
            }
            Err(e) => self.streams.flush_failed(&e.to_string()),
        }
    }
}

impl SnapshotWriter for SimWriter {
    fn stream(&mut self, outbox: crate::checkpoint::subtask::Outbox) {
        for id in outbox.aborted {
            let mut dropped = 0;
            for held in [&mut self.held, &mut self.held_new] {
                held.retain(|(i, b)| {
                    if *i == id {
                        dropped += b.bytes.len();
                    }
                    *i != id
                });
            }
            self.checkpoints.borrow_mut().blocks_taken(dropped);
            self.writer.abort_blocks(&self.streams.abort(id));
        }
        self.held_new.extend(outbox.blocks);
        if !self.slow_blocks {
            self.append_held();
        }
    }

    fn holds_blocks(&self) -> bool {
        !self.held.is_empty() || !self.held_new.is_empty()
    }

    fn progress(&mut self) {
        // Blocks handed over in an earlier step are appended, or (one time
        // in four) wait one step more; this step's wait for the next.
        if !self.held.is_empty() && self.rng.below(4) != 0 {
            let held = std::mem::take(&mut self.held);
            self.append(held);
        }
        self.held.append(&mut self.held_new);
    }

    fn submit(&mut self, mut snapshot: LocalSnapshot) {
        self.append_held();
        let flushed = block_on(self.writer.flush()).map_err(|e| e.to_string());
        let (handles, written) = self.streams.complete(&mut snapshot, flushed);
        let ack = ack_for(snapshot, self.subtask, handles, written, &self.checkpoints);
        // Sized for every checkpoint the coordinator can have outstanding.
        let _ = self.acks.try_push(ack);
        self.writer
            .abort_blocks(&self.checkpoints.borrow_mut().take_abandoned());
        self.slow_bases = false;
        self.write_bases();
        self.slow_bases = self.rng.below(2) == 0;
    }

    fn finished(&mut self, sources: Vec<crate::checkpoint::metadata::SourceOffset>) {
        let _ = self.acks.try_push(Ack::Finished {
            subtask: self.subtask,
            sources,
        });
    }

    fn submit_bases(&mut self, bases: Vec<crate::checkpoint::subtask::BackgroundBase>) {
        self.bases.extend(bases);
        self.write_bases();
    }
}

/// A job run by the deterministic simulator.
pub struct Simulation {
    config: JobConfig,
    seed: u64,
    randomize_buffers: bool,
    max_steps: u64,
    storage: Option<SimIo>,
    stop_after_checkpoints: Option<u64>,
    slow: Option<(usize, u64)>,
    processes: usize,
    drop_link_at: Option<u64>,
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
            storage: None,
            stop_after_checkpoints: None,
            slow: None,
            processes: 1,
            drop_link_at: None,
        }
    }

    /// With [`processes`](Self::processes): a connection between two
    /// simulated processes drops at the `step`-th step of the links. As in
    /// a cluster, where a lost connection fails the whole job, the run ends
    /// there like a crash (the storage keeps what was durable, the links
    /// lose what they carried); the report says so
    /// ([`SimReport::link_dropped`]).
    pub fn drop_link_at(mut self, step: u64) -> Self {
        self.drop_link_at = Some(step);
        self
    }

    /// Splits the subtasks into `processes` simulated processes (contiguous
    /// blocks, as a cluster numbers them): every channel between two of
    /// them crosses a seeded link through the data plane's channel ends and
    /// frames (`net/sim.rs`), with credits, slow links, and whatever is on
    /// a link lost at a crash.
    pub fn processes(mut self, processes: usize) -> Self {
        self.processes = processes.max(1);
        self
    }

    /// Makes `subtask` slow: it gets one step where the others get `factor`
    /// (a slow operator: its input rings fill and backpressure builds up).
    pub fn slow_subtask(mut self, subtask: usize, factor: u64) -> Self {
        self.slow = Some((subtask, factor.max(1)));
        self
    }

    /// Checkpoints (per `config.checkpoint`) go to this simulated storage
    /// instead of the directory; restore reads from it. Hand the same
    /// `SimIo` (or its crash image) to a later simulation to resume.
    pub fn storage(mut self, io: SimIo) -> Self {
        self.storage = Some(io);
        self
    }

    /// Ends the run as a crash once this many checkpoints completed: the
    /// subtasks are dropped where they stand (the storage keeps what was
    /// durable). Returns the report of the truncated run.
    pub fn crash_after_checkpoints(mut self, completed: u64) -> Self {
        self.stop_after_checkpoints = Some(completed);
        self
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
        let mut run = self.start(&build)?;
        while run.workers.iter().any(Option::is_some) {
            if run.steps >= self.max_steps {
                return Err(JobError::Stalled {
                    steps: run.steps,
                    seed: self.seed,
                });
            }
            if run.coordinate(self.stop_after_checkpoints)? == Round::Crash {
                break;
            }
            if let Some(links) = &run.links {
                if links.dropped() {
                    break;
                }
                if run.rng.below(2) == 0 {
                    links.step()?;
                    continue;
                }
            }
            run.step_one(self.slow)?;
        }
        Ok(run.report())
    }

    /// Prepares a run: buffers drawn from the seed, the checkpoint to
    /// restore, the store (opened before the subtasks are built, as on the
    /// runtime: its open discards checkpoints newer than the restored one),
    /// every subtask's worker and the coordinator.
    fn start(&self, build: &(dyn Fn(&Dataflow) + Send + Sync)) -> Result<SimRun, JobError> {
        let mut rng = SplitMix64::new(self.seed);
        let mut config = self.config.clone();
        if self.randomize_buffers {
            config.ring_capacity = 2 << rng.below(4); // 2..=16 batches
            config.batch_size = 1 + rng.below(64) as usize;
        }
        config.validate()?;
        if config.cluster.is_some() {
            return Err(crate::ConfigError::Conflict(
                "the simulator runs one process: a cluster configuration does not apply".into(),
            )
            .into());
        }
        let clock = ManualClock::new(SIM_START_MS);
        let seed = self.seed;
        let io = match (&config.checkpoint, &self.storage) {
            (Some(_), Some(io)) => Some(io.clone()),
            (Some(_), None) => Some(SimIo::new()),
            _ => None,
        };
        let restore = match (&config.checkpoint, &io) {
            (Some(checkpoint), Some(io)) => {
                let reader = StoreReader::from_source(Arc::new(io.clone())).map_err(|source| {
                    crate::RestoreError::Open {
                        dir: "(simulated storage)".into(),
                        source,
                    }
                })?;
                check_restored(
                    RestoreState::load(reader, checkpoint, None, None, false)?,
                    &config,
                )?
            }
            _ => None,
        };
        let restored_from = restore.as_ref().map(|r| r.metadata.id);
        let links = (self.processes > 1).then(|| {
            let links = crate::net::sim::SimNet::new(config.parallelism, self.processes, self.seed);
            if let Some(step) = self.drop_link_at {
                links.drop_at(step);
            }
            Arc::new(links)
        });
        let (env, ends) = JobEnv::new(
            config.clone(),
            Arc::new(clock.clone()),
            restore,
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
            Arc::default(),
            None,
            links.clone().map(|l| l as Arc<dyn crate::net::ChannelHost>),
        );
        // Drawn apart from `rng`, so that the seeds' interleavings stay.
        let mut background_rng = SplitMix64::new(seed ^ 0x5EED_BA5E);
        env.archive_groups_per_step.store(
            8 << background_rng.below(4), // 8 to 64 rounds
            std::sync::atomic::Ordering::Relaxed,
        );
        let store = match (&config.checkpoint, &io) {
            (Some(checkpoint), Some(io)) => {
                let options = checkpoint.store_options(restored_from);
                Some(
                    block_on(Store::open(io.clone(), options)).map_err(|source| {
                        crate::CheckpointError::OpenStore {
                            dir: "(simulated storage)".into(),
                            source,
                        }
                    })?,
                )
            }
            _ => None,
        };
        let mut workers = Vec::with_capacity(config.parallelism);
        for subtask in 0..config.parallelism {
            let built = catch_unwind(AssertUnwindSafe(|| {
                Worker::build(env.clone(), subtask, build)
            }));
            match built {
                Ok(Ok(worker)) => {
                    let _ = env.fingerprint.set(worker.fingerprint);
                    workers.push(Some(worker))
                }
                Ok(Err(e)) => return Err(e),
                Err(panic) => return Err(panic_error(seed, subtask, panic)),
            }
        }
        let mut coordinator = None;
        if let Some(opened) = &store {
            attach_writers(&env, opened, &mut workers, &mut background_rng);
            coordinator = env.coordinator_for(ends, opened.latest().map_or(1, |r| r.id + 1));
        }
        Ok(SimRun {
            seed,
            rng,
            clock,
            config,
            env,
            store,
            coordinator,
            workers,
            finished: Vec::new(),
            steps: 0,
            idle_in_a_row: 0,
            restored_from,
            links,
        })
    }
}

/// Gives every subtask a simulated snapshot writer on `store`, each with a
/// generator of its own for when background bases are written.
fn attach_writers(
    env: &JobEnv,
    store: &Store<SimIo>,
    workers: &mut [Option<Worker>],
    background_rng: &mut SplitMix64,
) {
    for (subtask, worker) in workers.iter_mut().enumerate() {
        let acks = env.take_ack(subtask).expect("one ack ring per subtask");
        if let Some(worker) = worker {
            let checkpoints = worker.checkpoints();
            let mut rng = SplitMix64::new(background_rng.next_u64());
            // Half the writers fall behind, against a backlog budget of a
            // byte or a few blocks: archiving waits for them.
            let slow_blocks = rng.below(2) == 0;
            if slow_blocks {
                let budget = [1, 4096, 64 << 10][rng.below(3) as usize];
                checkpoints.borrow_mut().set_backlog_budget(budget);
            }
            worker.set_writer(Box::new(SimWriter {
                writer: store.segment_writer(subtask as u16),
                acks,
                subtask,
                checkpoints,
                bases: Vec::new(),
                rng,
                slow_bases: false,
                streams: Default::default(),
                held: Vec::new(),
                held_new: Vec::new(),
                slow_blocks,
            }));
        }
    }
}

/// Virtual time at which every simulated run starts (epoch ms).
const SIM_START_MS: u64 = 1_000_000;

fn panic_error(seed: u64, subtask: usize, panic: Box<dyn std::any::Any + Send>) -> JobError {
    JobError::Panic {
        subtask,
        message: format!("{} (seed {seed})", crate::error::panic_message(&*panic)),
    }
}

/// Whether a simulated run goes on after the coordinator's turn.
#[derive(PartialEq, Eq)]
enum Round {
    Continue,
    /// The crash point was reached: the run ends where it stands.
    Crash,
}

/// One simulated run in progress.
struct SimRun {
    seed: u64,
    rng: SplitMix64,
    clock: ManualClock,
    config: JobConfig,
    env: Arc<JobEnv>,
    store: Option<Store<SimIo>>,
    coordinator: Option<crate::checkpoint::coordinator::Coordinator>,
    /// `None` once the subtask finished.
    workers: Vec<Option<Worker>>,
    finished: Vec<SubtaskReport>,
    steps: u64,
    idle_in_a_row: usize,
    restored_from: Option<u64>,
    /// The links between simulated processes, if the run has several.
    links: Option<Arc<crate::net::sim::SimNet>>,
}

impl SimRun {
    /// The coordinator's turn: a commit if one is ready; a checkpoint
    /// failure beyond tolerance fails the run.
    fn coordinate(&mut self, crash_after: Option<u64>) -> Result<Round, JobError> {
        let (Some(c), Some(store)) = (&mut self.coordinator, &mut self.store) else {
            return Ok(Round::Continue);
        };
        let now = self.clock.now_ms();
        if let Some(request) = c.poll(now) {
            store.keep_from(request.keep_from);
            match block_on(store.commit_checkpoint(request.record)) {
                Ok(_) => c.committed(request.id, now),
                Err(e) => c.commit_failed(request.id, e.to_string(), now),
            }
        }
        if let Some(reason) = c.fatal.take() {
            let seed = self.seed;
            return Err(crate::CheckpointError::TooManyFailures {
                reason: format!("{reason} (seed {seed})"),
            }
            .into());
        }
        let completed = || {
            self.env
                .coordinator
                .completed
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        Ok(match crash_after {
            Some(n) if completed() >= n => Round::Crash,
            _ => Round::Continue,
        })
    }

    /// Steps one live subtask chosen by the seed (a slow one only now and
    /// then), advancing the virtual clock a little.
    fn step_one(&mut self, slow: Option<(usize, u64)>) -> Result<(), JobError> {
        let live: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].is_some())
            .collect();
        let subtask = live[self.rng.below(live.len() as u64) as usize];
        if let Some((slow, factor)) = slow {
            if subtask == slow && live.len() > 1 && self.rng.below(factor) != 0 {
                self.clock.advance(self.rng.below(3));
                return Ok(());
            }
        }
        let worker = self.workers[subtask].as_mut().expect("live");
        self.steps += 1;
        self.clock.advance(self.rng.below(3));
        match catch_unwind(AssertUnwindSafe(|| worker.step())) {
            Ok(Ok(Step::Done)) => {
                self.env.coordinator.subtask_finished(subtask);
                self.finished.push(worker.report.clone());
                self.workers[subtask] = None;
                self.idle_in_a_row = 0;
            }
            Ok(Ok(Step::Busy)) => self.idle_in_a_row = 0,
            Ok(Ok(Step::Idle)) => {
                self.idle_in_a_row += 1;
                if self.idle_in_a_row > 4 * live.len() + 16 {
                    self.jump_clock()?;
                    self.idle_in_a_row = 0;
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(panic) => return Err(panic_error(self.seed, subtask, panic)),
        }
        Ok(())
    }

    /// Everyone looks idle: jumps the clock to the next timer or source
    /// schedule; if there is none, nothing can ever happen again (a stall).
    fn jump_clock(&mut self) -> Result<(), JobError> {
        let moved_on_links = match &self.links {
            Some(links) => links.flush()?,
            None => false,
        };
        let any_work = moved_on_links
            || self.workers.iter_mut().flatten().any(|w| w.has_work())
            || self.coordinator.as_mut().is_some_and(|c| c.has_acks());
        if any_work {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let next = self
            .workers
            .iter()
            .flatten()
            .filter_map(|w| w.wake_at_us())
            .map(|at_us| at_us.div_ceil(1000))
            .chain(self.coordinator.as_ref().and_then(|c| c.next_deadline(now)))
            .min();
        match next {
            // The virtual clock moves in whole milliseconds: the first one at
            // or after every wake-up time in microseconds.
            Some(at) => {
                self.clock.advance_to(at);
                Ok(())
            }
            None => Err(JobError::Stalled {
                steps: self.steps,
                seed: self.seed,
            }),
        }
    }

    fn report(mut self) -> SimReport {
        self.finished.sort_by_key(|r| r.subtask);
        SimReport {
            seed: self.seed,
            steps: self.steps,
            ring_capacity: self.config.ring_capacity,
            batch_size: self.config.batch_size,
            virtual_ms: self.clock.now_ms() - SIM_START_MS,
            subtasks: self.finished,
            checkpoints: self.env.coordinator.history(),
            restored_from: self.restored_from,
            checkpoint_summary: self.env.coordinator.summary(),
            network_bytes: self.links.as_ref().map_or(0, |l| l.bytes()),
            link_dropped: self.links.as_ref().is_some_and(|l| l.dropped()),
        }
    }
}
