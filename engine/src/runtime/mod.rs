//! The real runtime: one pinned glommio reactor per subtask, each looping over
//! its [`Worker`](crate::worker::Worker), with the checkpoint tasks that share
//! its thread (the snapshot writer on every reactor; on reactor 0 the
//! coordinator, which owns the store).
//!
//! Owns: a reactor's life (opening the store, building its subtask, the step
//! loop, idling, the checkpoint tasks), turning operator errors and panics
//! into a [`JobError`] that stops every subtask. The only engine module that
//! names glommio, with `crate::job` that spawns the reactors; the state they
//! share is [`JobEnv`] (`crate::env`).
//! A busy reactor steps without syscalls and yields to other glommio tasks
//! when its time slice is up; an idle one parks until a producer, the
//! ingress, a timer or a stop request wakes it.

mod cluster;

use crate::checkpoint::coordinator::Ack;
use crate::checkpoint::subtask::{BackgroundBase, LocalSnapshot, Outbox, Streams};
use crate::dataflow::Dataflow;
use crate::env::{ack_for, CoordinatorEnds, JobEnv};
use crate::park::Parker;
use crate::worker::{SnapshotWriter, Step, SubtaskReport, Worker};
use crate::JobError;
use spate_storage::{GlommioIo, Store, WriterSlot};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering;
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
    /// Batches of blocks handed to the writer task that it has not taken
    /// yet (they go before bases; the step loop yields for them only when
    /// its archiving waits for the writer).
    blocks_queued: Cell<usize>,
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
async fn idle_wait(env: &JobEnv, parker: &Parker, idle: &ReactorIdle, wake_at_us: Option<u64>) {
    glommio::timer::sleep(Duration::from_micros(1)).await;
    let now_us = env.clock.now_us();
    let cap = if idle.busy.get() > 0 {
        PARK_WHILE_IO
    } else {
        PARK_RECHECK
    };
    let coordinator_us = idle
        .coordinator_wake_at
        .get()
        .map(|ms| ms.saturating_mul(1000));
    let timeout = [wake_at_us, coordinator_us]
        .into_iter()
        .flatten()
        .min()
        .map_or(cap, |at_us| {
            Duration::from_micros(at_us.saturating_sub(now_us)).min(cap)
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
    /// Blocks of checkpoints in progress (written as they come), and
    /// checkpoints aborted (their blocks are dead).
    Blocks(Outbox),
    /// A subtask's part of a checkpoint: its blocks came before it; flushed,
    /// then acknowledged.
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
    fn stream(&mut self, outbox: Outbox) {
        if self.0.try_send(WriterJob::Blocks(outbox)).is_ok() {
            self.1.blocks_queued.set(self.1.blocks_queued.get() + 1);
        }
    }

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
pub(crate) type WriterSlots = Mutex<Vec<Option<WriterSlot<GlommioIo>>>>;

/// Writes a subtask's snapshot parts through io_uring and acknowledges them.
async fn writer_task(
    env: Arc<JobEnv>,
    subtask: usize,
    snapshots: glommio::channels::local_channel::LocalReceiver<WriterJob>,
    slots: Arc<(OnceLock<()>, WriterSlots)>,
    checkpoints: std::rc::Rc<std::cell::RefCell<crate::checkpoint::subtask::SubtaskCheckpoints>>,
    idle: Rc<ReactorIdle>,
    step_notifier: crate::park::Notifier,
) {
    // The coordinator of this process numbers its subtasks from 0.
    let local = env.local_index(subtask);
    let Some(mut acks) = env.take_ack(subtask) else {
        return;
    };
    let Some(mut writer) = take_writer(&env, subtask, &slots).await else {
        return;
    };
    // Bases materialised in the background, waiting; and those appended
    // since the last flush (published as available once it succeeds).
    let mut bases = std::collections::VecDeque::new();
    let mut appended_bases = Vec::new();
    let mut streams = Streams::default();
    loop {
        if !bases.is_empty() && idle.queued.get() == 0 && idle.blocks_queued.get() == 0 {
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
                // checkpoint's path); the writer moves to a new segment,
                // and the blocks of parts to come may be lost with them.
                match writer.flush().await {
                    Ok(()) => checkpoints
                        .borrow_mut()
                        .bases_written(std::mem::take(&mut appended_bases)),
                    Err(e) => streams.flush_failed(&e.to_string()),
                }
                appended_bases.clear();
            }
            continue;
        }
        let Some(job) = snapshots.recv().await else {
            break;
        };
        let mut snapshot = match job {
            WriterJob::Blocks(outbox) => {
                idle.blocks_queued
                    .set(idle.blocks_queued.get().saturating_sub(1));
                let _busy = BusyGuard::new(&idle);
                for id in outbox.aborted {
                    writer.abort_blocks(&streams.abort(id));
                }
                for (id, block) in outbox.blocks {
                    if streams.append(&mut writer, &checkpoints, id, block) {
                        // The subtask's archiving waited for this.
                        step_notifier.notify();
                    }
                    // Full buffers go to the device while the next blocks
                    // are copied.
                    writer.write_behind().await;
                }
                continue;
            }
            WriterJob::Bases(more) => {
                bases.extend(more);
                continue;
            }
            WriterJob::Finished(sources) => {
                push_ack(
                    &env,
                    &mut acks,
                    Ack::Finished {
                        subtask: local,
                        sources,
                    },
                )
                .await;
                continue;
            }
            WriterJob::Part(snapshot) => snapshot,
        };
        idle.queued.set(idle.queued.get().saturating_sub(1));
        let _busy = BusyGuard::new(&idle);
        let flushed = writer.flush().await.map_err(|e| e.to_string());
        if flushed.is_ok() {
            // Bases appended before the part are durable with it.
            checkpoints
                .borrow_mut()
                .bases_written(std::mem::take(&mut appended_bases));
        }
        appended_bases.clear();
        writer.abort_blocks(&checkpoints.borrow_mut().take_abandoned());
        let (handles, written) = streams.complete(&mut snapshot, flushed);
        let ack = ack_for(snapshot, local, handles, written, &checkpoints);
        if !push_ack(&env, &mut acks, ack).await {
            return;
        }
    }
    // The step loop ended (it dropped the channel) and every part it handed
    // over is acknowledged: nothing more will come from this subtask.
    env.coordinator.subtask_finished(local);
    env.coordinator_parker.notifier().notify();
}

/// The segment writer of `subtask`, once reactor 0 opened the store (it
/// waits for that at start-up only); `None` if the job failed first.
async fn take_writer(
    env: &JobEnv,
    subtask: usize,
    slots: &(OnceLock<()>, WriterSlots),
) -> Option<spate_storage::SegmentWriter<GlommioIo>> {
    loop {
        if slots.0.get().is_some() {
            return slots
                .1
                .lock()
                .ok()
                .and_then(|mut s| s.get_mut(env.local_index(subtask)).and_then(Option::take))
                .map(WriterSlot::into_writer);
        }
        if env.failed() {
            return None;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
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
    let mut options = config.store_options(env.restore.as_ref().map(|r| r.metadata.id));
    if env.config.cluster.is_some() {
        // A part store also holds the part it prepared for the checkpoint
        // in progress: one more, so that every global record retained has
        // its parts (`docs/cluster.md` §15.4).
        options.retained_checkpoints += 1;
    }
    if let Some(remote) = env.remote.get() {
        options.segments_in_use = remote
            .segments_in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
    }
    let store = match Store::open_dir(&config.dir, options).await {
        Ok(store) => store,
        Err(e) => {
            env.fail(
                crate::CheckpointError::OpenStore {
                    dir: config.dir.clone(),
                    source: e,
                }
                .into(),
            );
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
    let first_id = store.latest().map_or(1, |r| r.id + 1).max(
        env.remote
            .get()
            .map_or(1, |r| r.newest.load(Ordering::SeqCst) + 1),
    );
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
            let id = request.id;
            let (outcome, freed) =
                commit_checkpoint(&env, &mut store, request.record, request.keep_from, &parker)
                    .await;
            match outcome {
                RemoteOutcome::Committed => coordinator.committed(id, env.clock.now_ms()),
                RemoteOutcome::Failed(reason) => {
                    coordinator.commit_failed(id, reason, env.clock.now_ms())
                }
                RemoteOutcome::Fatal(error) => {
                    env.fail(error);
                    break;
                }
            }
            remove_freed(&mut store, &freed).await;
            continue;
        }
        if let Some(reason) = coordinator.fatal.take() {
            env.fail(crate::CheckpointError::TooManyFailures { reason }.into());
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

/// Commits checkpoint `record` to the store (retaining every checkpoint
/// from `keep_from` on) and, with a remote tier, uploads it and commits it
/// there: the remote record is then the commit point, so the checkpoint is
/// complete only once it is durable. Returns how that ended and the
/// segment files the local commit freed, to unlink once the outcome is
/// told ([`remove_freed`]: unlinking takes milliseconds).
pub(super) async fn commit_checkpoint(
    env: &JobEnv,
    store: &mut Store<spate_storage::GlommioIo>,
    record: spate_storage::CheckpointRecord,
    keep_from: Option<u64>,
    parker: &Arc<Parker>,
) -> (RemoteOutcome, Vec<spate_storage::format::SegmentId>) {
    store.keep_from(keep_from);
    let copy = env.remote.get().map(|_| record.clone());
    let report = match store.commit_checkpoint_deferred(record).await {
        Ok(report) => report,
        Err(e) => return (RemoteOutcome::Failed(e.to_string()), Vec::new()),
    };
    let outcome = match (env.remote.get(), copy) {
        (Some(remote), Some(record)) => {
            complete_remotely(env, remote, store, record, keep_from, parker).await
        }
        _ => RemoteOutcome::Committed,
    };
    (outcome, report.segments_deleted)
}

/// Unlinks the segment files a commit freed ([`commit_checkpoint`]).
pub(super) async fn remove_freed(
    store: &mut Store<spate_storage::GlommioIo>,
    freed: &[spate_storage::format::SegmentId],
) {
    for warning in store.remove_segment_files(freed).await {
        eprintln!("spate: checkpoint store: {warning:?}");
    }
}

/// How a checkpoint's remote commit ended.
pub(super) enum RemoteOutcome {
    /// The record is durable remotely: the checkpoint is complete.
    Committed,
    /// It failed (and was discarded locally again): the checkpoint fails.
    Failed(String),
    /// Its outcome is unknown, or the local store could not discard it: the
    /// run fails (a restart restores what the remote tier holds).
    Fatal(JobError),
}

/// Uploads the locally committed checkpoint `record` and commits it remotely
/// (on the remote runtime; this task waits on the coordinator's parker). A
/// checkpoint that failed remotely is discarded from the local store again, so
/// that neither a restore nor a later incremental checkpoint builds on it.
async fn complete_remotely(
    env: &JobEnv,
    remote: &crate::checkpoint::remote::JobRemote,
    store: &mut Store<spate_storage::GlommioIo>,
    record: spate_storage::CheckpointRecord,
    keep_from: Option<u64>,
    parker: &Arc<Parker>,
) -> RemoteOutcome {
    use spate_storage::remote::RemoteError;
    let id = record.id;
    let dir = env
        .config
        .checkpoint
        .as_ref()
        .map(|c| c.dir.clone())
        .unwrap_or_default();
    let uploaded = match crate::checkpoint::remote::start_upload(
        remote,
        dir,
        record,
        keep_from,
        parker.notifier(),
    ) {
        Ok(done) => wait_for_remote(&done, parker).await,
        Err(e) => Err(e),
    };
    let fatal = |reason: String| {
        RemoteOutcome::Fatal(
            crate::CheckpointError::RemoteCommitUnknown {
                url: remote.url.clone(),
                reason,
            }
            .into(),
        )
    };
    match uploaded {
        Ok(report) => {
            for w in &report.warnings {
                eprintln!("spate: remote tier {}: {w}", remote.url);
            }
            RemoteOutcome::Committed
        }
        Err(RemoteError::CommitUnknown { id, reason }) => {
            fatal(format!("checkpoint {id}: {reason}"))
        }
        Err(e) => match store.discard_checkpoint(id).await {
            Ok(()) => RemoteOutcome::Failed(format!("remote tier {}: {e}", remote.url)),
            Err(d) => fatal(format!(
                "checkpoint {id} failed remotely ({e}) and could not be discarded locally: {d}"
            )),
        },
    }
}

/// Waits on the coordinator's parker until a remote request is done: the
/// remote runtime's thread fills `done`, then notifies the parker (which
/// unparks reactor 0 and wakes this task). Publish, re-check, wait: no
/// wake-up is lost, nothing spins; the timer is the same safety net as the
/// coordinator's idle wait ([`PARK_RECHECK`]).
pub(super) async fn wait_for_remote<T>(
    done: &spate_storage::remote::runtime::Completion<T>,
    parker: &Arc<crate::park::Parker>,
) -> T {
    loop {
        if let Some(r) = done.take() {
            return r;
        }
        parker.prepare_park();
        if let Some(r) = done.take() {
            parker.unpark();
            return r;
        }
        futures_lite::future::or(parker.wait(), async {
            glommio::timer::sleep(PARK_RECHECK).await;
        })
        .await;
        parker.unpark();
    }
}

/// Counts the subtask as done when dropped (the coordinator stops once every
/// subtask's step loop has ended).
struct DoneGuard(Arc<JobEnv>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.done.fetch_add(1, Ordering::SeqCst);
        self.0.coordinator_parker.notifier().notify();
        if let Some(net) = &self.0.net {
            // The link writers say bye once every reactor is done.
            net.wake_writers();
        }
    }
}

pub(crate) async fn reactor(
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
    let Some(mut worker) = build_worker(&env, subtask, &*build) else {
        return SubtaskReport::default();
    };
    let parker = env.parkers[subtask].clone();
    parker.bind_thread();
    let idle = Rc::new(ReactorIdle::default());
    let helpers = if env.config.checkpoint.is_some() {
        let ends = coordinator_ends.zip(store);
        start_checkpoint_tasks(&env, subtask, &mut worker, &parker, &idle, slots, ends)
    } else {
        Vec::new()
    };
    step_loop(&env, subtask, &mut worker, &parker, &idle).await;
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

/// Builds subtask `subtask`'s worker; `None` (the job failed) on an error or
/// a panic of the build closure.
fn build_worker(
    env: &Arc<JobEnv>,
    subtask: usize,
    build: &(dyn Fn(&Dataflow) + Send + Sync),
) -> Option<Worker> {
    let built = catch_unwind(AssertUnwindSafe(|| {
        Worker::build(env.clone(), subtask, build)
    }));
    match built {
        Ok(Ok(worker)) => {
            let _ = env.fingerprint.set(worker.fingerprint);
            env.built();
            Some(worker)
        }
        Ok(Err(error)) => {
            env.fail(error);
            None
        }
        Err(panic) => {
            env.fail(JobError::Panic {
                subtask,
                message: crate::error::panic_message(&*panic),
            });
            None
        }
    }
}

/// Spawns the reactor's checkpoint tasks: its snapshot writer and, on
/// reactor 0, the coordinator with the store.
fn start_checkpoint_tasks(
    env: &Arc<JobEnv>,
    subtask: usize,
    worker: &mut Worker,
    parker: &Arc<Parker>,
    idle: &Rc<ReactorIdle>,
    slots: Arc<(OnceLock<()>, WriterSlots)>,
    coordinator: Option<(CoordinatorEnds, Store<GlommioIo>)>,
) -> Vec<glommio::task::JoinHandle<()>> {
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
    let mut helpers = Vec::new();
    if let Some((ends, store)) = coordinator {
        env.coordinator_parker.bind_thread();
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> =
            if env.config.cluster.is_some() {
                Box::pin(cluster::coordinator_task(
                    env.clone(),
                    ends,
                    store,
                    idle.clone(),
                ))
            } else {
                Box::pin(coordinator_task(env.clone(), ends, store, idle.clone()))
            };
        helpers.push(spawn(task));
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
        parker.notifier(),
    ))));
    helpers
}

/// Steps the worker until its input ended or the job failed: busy, it hands
/// glommio the thread when the checkpoint tasks need it; idle, it spins a
/// little, then parks ([`idle_wait`]).
async fn step_loop(
    env: &JobEnv,
    subtask: usize,
    worker: &mut Worker,
    parker: &Parker,
    idle: &ReactorIdle,
) {
    let mut idle_steps = 0u32;
    let mut last_turn = Instant::now();
    let dump = std::env::var_os("SPATE_STALL_DUMP").is_some();
    let mut last_busy = Instant::now();
    let mut dumped = false;
    let checkpoints = worker.checkpoints();
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
                // Archiving waits for the writer: it gets the thread now.
                let snapshot_waits = checkpoints.borrow().archive_behind();
                if helpers_need_turn(env, subtask, idle, &mut last_turn) || snapshot_waits {
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
                idle_wait(env, parker, idle, worker.wake_at_us()).await;
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
}
