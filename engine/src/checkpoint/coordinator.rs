//! The checkpoint coordinator (Flink's `CheckpointCoordinator`).
//!
//! A plain state machine, driven by the runtime (an async task on reactor 0,
//! which owns the store) or by the simulator: it decides when to trigger
//! (interval, minimum pause, maximum concurrent, manual requests, change
//! volume), sends the trigger to every subtask's control ring, gathers the
//! subtasks' acknowledgements, builds the checkpoint's metadata and hands the
//! record to its driver to commit; it fails checkpoints that time out and
//! fails the job after too many consecutive failures. It keeps the
//! statistics of every checkpoint.

use super::metadata::{
    ChainBlock, CheckpointMetadata, InFlightBlock, SourceOffset, StateBlock, SubtaskStats,
    METADATA_VERSION,
};
use super::subtask::{BlockDesc, ChainLink, StateRef};
use super::{Barrier, CheckpointConfig, Control};
use crate::park::Notifier;
use crate::ring::{Consumer, Producer};
use hdrhistogram::Histogram;
use spate_storage::{BlockHandle, CheckpointRecord};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Checkpoint statistics kept in the history.
const HISTORY: usize = 256;

/// How often the coordinator looks at the change volume, ms.
const CHANGE_VOLUME_POLL_MS: u64 = 10;

/// Why a checkpoint was triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerCause {
    /// The periodic interval.
    Interval,
    /// A request through the API.
    Manual,
    /// Enough state changed since the last trigger.
    ChangeVolume,
}

impl TriggerCause {
    /// The cause as stored in metadata.
    pub fn name(self) -> &'static str {
        match self {
            TriggerCause::Interval => "interval",
            TriggerCause::Manual => "manual",
            TriggerCause::ChangeVolume => "change-volume",
        }
    }
}

/// Where a checkpoint stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointStatus {
    /// Triggered, not complete.
    InProgress,
    /// Durable in the manifest.
    Completed,
    /// Failed, with the reason.
    Failed(String),
}

/// Statistics of one checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointStats {
    /// Checkpoint id.
    pub id: u64,
    /// Trigger time (epoch ms, processing time).
    pub trigger_ms: u64,
    /// Why it was triggered.
    pub cause: TriggerCause,
    /// Barrier mode.
    pub mode: &'static str,
    /// Status.
    pub status: CheckpointStatus,
    /// Trigger to commit (or failure), ms.
    pub duration_ms: u64,
    /// Bytes of state written.
    pub state_bytes: u64,
    /// Bytes of in-flight records written.
    pub in_flight_bytes: u64,
    /// Per-subtask figures (synchronous pause, asynchronous write, alignment).
    pub subtasks: Vec<SubtaskStats>,
}

/// A subtask's acknowledgement of its part of a checkpoint.
pub(crate) enum Ack {
    /// Written and durable.
    Done {
        barrier: Barrier,
        subtask: usize,
        handles: Vec<BlockHandle>,
        /// One per handle, same order.
        blocks: Vec<BlockDesc>,
        /// Unchanged key groups: committed chains referenced again.
        reused: Vec<StateRef>,
        sources: Vec<SourceOffset>,
        stats: SubtaskStats,
    },
    /// Could not be written.
    Failed {
        id: u64,
        subtask: usize,
        reason: String,
    },
    /// The subtask finished (after acknowledging every part before): every
    /// later checkpoint records it as finished, with these source offsets.
    Finished {
        subtask: usize,
        sources: Vec<SourceOffset>,
    },
}

struct InProgress {
    barrier: Barrier,
    cause: TriggerCause,
    acks: Vec<Option<Ack>>,
    committing: bool,
    /// The oldest checkpoint a subtask had seen complete when this one was
    /// triggered: its cuts build on that one's chains or a later one's.
    builds_on: Option<u64>,
}

/// Figures over every checkpoint of a run (Flink's checkpoint statistics
/// summary): counts, HDR histograms of durations, bytes, rates.
#[derive(Clone, Debug)]
pub struct CheckpointSummary {
    /// Completed checkpoints.
    pub completed: u64,
    /// Failed checkpoints.
    pub failed: u64,
    /// End-to-end duration of completed checkpoints, ms.
    pub duration_ms: Histogram<u64>,
    /// Synchronous pause per subtask and checkpoint, µs.
    pub sync_pause_us: Histogram<u64>,
    /// Asynchronous write per subtask and checkpoint, µs.
    pub async_us: Histogram<u64>,
    /// Alignment per subtask and checkpoint, µs.
    pub alignment_us: Histogram<u64>,
    /// State bytes written (bases and deltas).
    pub state_bytes: u64,
    /// Of which deltas.
    pub delta_bytes: u64,
    /// In-flight bytes written.
    pub in_flight_bytes: u64,
    /// Processing time of the first trigger (epoch ms).
    pub first_trigger_ms: Option<u64>,
    /// Processing time of the last completion or failure (epoch ms).
    pub last_end_ms: Option<u64>,
}

impl Default for CheckpointSummary {
    fn default() -> Self {
        let histogram = || Histogram::new(3).expect("3 significant digits is valid");
        Self {
            completed: 0,
            failed: 0,
            duration_ms: histogram(),
            sync_pause_us: histogram(),
            async_us: histogram(),
            alignment_us: histogram(),
            state_bytes: 0,
            delta_bytes: 0,
            in_flight_bytes: 0,
            first_trigger_ms: None,
            last_end_ms: None,
        }
    }
}

impl CheckpointSummary {
    /// Completed checkpoints per minute between the first trigger and the
    /// last completion.
    pub fn completed_per_minute(&self) -> f64 {
        match (self.first_trigger_ms, self.last_end_ms) {
            (Some(a), Some(b)) if b > a => self.completed as f64 * 60_000.0 / (b - a) as f64,
            _ => 0.0,
        }
    }

    fn add(&mut self, stats: &CheckpointStats) {
        self.first_trigger_ms = Some(
            self.first_trigger_ms
                .map_or(stats.trigger_ms, |t| t.min(stats.trigger_ms)),
        );
        self.last_end_ms = Some(stats.trigger_ms + stats.duration_ms);
        match stats.status {
            CheckpointStatus::Completed => {
                self.completed += 1;
                let _ = self.duration_ms.record(stats.duration_ms);
                for s in &stats.subtasks {
                    let _ = self.sync_pause_us.record(s.sync_us);
                    let _ = self.async_us.record(s.async_us);
                    let _ = self.alignment_us.record(s.alignment_us);
                    self.delta_bytes += s.delta_bytes;
                }
                self.state_bytes += stats.state_bytes;
                self.in_flight_bytes += stats.in_flight_bytes;
            }
            CheckpointStatus::Failed(_) => self.failed += 1,
            CheckpointStatus::InProgress => {}
        }
    }
}

/// What the coordinator shares with the job handle.
pub(crate) struct CoordinatorShared {
    pub manual_trigger: AtomicBool,
    pub in_progress: AtomicBool,
    pub history: Mutex<VecDeque<CheckpointStats>>,
    pub summary: Mutex<CheckpointSummary>,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub latest_completed: AtomicU64,
    /// Estimated bytes of keyed state changed, per subtask (monotonic).
    pub changed_bytes: Vec<Arc<AtomicU64>>,
    /// Subtasks whose step loop has ended: they acknowledge nothing more.
    pub finished: Vec<AtomicBool>,
    /// Per subtask: the latest completion it has processed (or the restored
    /// checkpoint; 0: none). Its next cut builds on that checkpoint's chains
    /// (or a later one's), so the store keeps it (see `keep_from`).
    pub views: Vec<AtomicU64>,
}

impl CoordinatorShared {
    /// Subtask `subtask` finished (its step loop ended).
    pub(crate) fn subtask_finished(&self, subtask: usize) {
        if let Some(f) = self.finished.get(subtask) {
            f.store(true, Ordering::SeqCst);
        }
    }

    fn finished_subtasks(&self) -> Vec<usize> {
        (0..self.finished.len())
            .filter(|&i| self.finished[i].load(Ordering::SeqCst))
            .collect()
    }

    pub(crate) fn new(parallelism: usize) -> Self {
        Self {
            manual_trigger: AtomicBool::new(false),
            in_progress: AtomicBool::new(false),
            history: Mutex::new(VecDeque::new()),
            summary: Mutex::new(CheckpointSummary::default()),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latest_completed: AtomicU64::new(0),
            changed_bytes: (0..parallelism)
                .map(|_| Arc::new(AtomicU64::new(0)))
                .collect(),
            finished: (0..parallelism).map(|_| AtomicBool::new(false)).collect(),
            views: (0..parallelism).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Subtask `subtask` processed the completion of `id`.
    pub(crate) fn saw_completion(&self, subtask: usize, id: u64) {
        if let Some(v) = self.views.get(subtask) {
            v.fetch_max(id, Ordering::SeqCst);
        }
    }

    /// The oldest checkpoint a running subtask may still build a cut on
    /// (`None`: none, every cut starts from scratch).
    fn oldest_view(&self) -> Option<u64> {
        (0..self.views.len())
            .filter(|&i| !self.finished[i].load(Ordering::SeqCst))
            .map(|i| self.views[i].load(Ordering::SeqCst))
            .filter(|&v| v > 0)
            .min()
    }

    fn changed_bytes(&self) -> u64 {
        self.changed_bytes
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// The acknowledgement of a finished subtask for `barrier`: no blocks, its
/// final source offsets (`None` while it runs).
fn finished_ack(
    parts: &[Option<Vec<SourceOffset>>],
    barrier: Barrier,
    subtask: usize,
) -> Option<Ack> {
    let sources = parts.get(subtask)?.clone()?;
    Some(Ack::Done {
        barrier,
        subtask,
        handles: Vec::new(),
        blocks: Vec::new(),
        reused: Vec::new(),
        sources,
        stats: SubtaskStats {
            subtask: subtask as u32,
            ..SubtaskStats::default()
        },
    })
}

/// A commit the driver must perform, then report with
/// [`Coordinator::committed`] or [`Coordinator::commit_failed`].
pub(crate) struct CommitRequest {
    pub id: u64,
    pub record: CheckpointRecord,
    /// The store must keep the checkpoints from this id on: the other
    /// checkpoints in progress may build on their blocks
    /// ([`Store::keep_from`](spate_storage::Store::keep_from)).
    pub keep_from: Option<u64>,
}

pub(crate) struct Coordinator {
    config: CheckpointConfig,
    parallelism: usize,
    max_parallelism: u32,
    fingerprint: u64,
    next_id: u64,

    last_trigger_ms: Option<u64>,
    last_end_ms: Option<u64>,
    in_progress: BTreeMap<u64, InProgress>,
    consecutive_failures: u32,
    control: Vec<Producer<Control>>,
    acks: Vec<Consumer<Ack>>,
    /// Per subtask that finished: its sources' final offsets.
    finished_parts: Vec<Option<Vec<SourceOffset>>>,
    notifiers: Vec<Notifier>,
    shared: Arc<CoordinatorShared>,
    /// Set when too many checkpoints failed in a row.
    pub(crate) fatal: Option<String>,
    /// Changed-state estimate at the last trigger.
    changed_at_trigger: u64,
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: CheckpointConfig,
        parallelism: usize,
        max_parallelism: u32,
        fingerprint: u64,
        first_id: u64,
        control: Vec<Producer<Control>>,
        acks: Vec<Consumer<Ack>>,
        notifiers: Vec<Notifier>,
        shared: Arc<CoordinatorShared>,
    ) -> Self {
        Self {
            config,
            parallelism,
            max_parallelism,
            fingerprint,
            next_id: first_id,
            last_trigger_ms: None,
            last_end_ms: None,
            in_progress: BTreeMap::new(),
            consecutive_failures: 0,
            control,
            acks,
            finished_parts: (0..parallelism).map(|_| None).collect(),
            notifiers,
            shared,
            fatal: None,
            changed_at_trigger: 0,
        }
    }

    fn send(&mut self, message: Control) {
        for (producer, notifier) in self.control.iter_mut().zip(&self.notifiers) {
            // The control ring is sized for every message the coordinator can
            // have outstanding; a full ring means a subtask stopped reading.
            let _ = producer.try_push(message);
            notifier.notify();
        }
    }

    /// Whether an acknowledgement is waiting.
    pub(crate) fn has_acks(&mut self) -> bool {
        self.acks.iter_mut().any(|a| a.has_message())
    }

    /// The processing time at which [`poll`](Self::poll) has something to do
    /// next without any acknowledgement arriving.
    pub(crate) fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        let timeout = self
            .in_progress
            .values()
            .map(|c| c.barrier.trigger_ms + self.config.timeout_ms)
            .min();
        if !self.can_trigger() {
            // Nothing can start before one ends: only timeouts are deadlines
            // (an overdue interval here would make the driver spin).
            return timeout;
        }
        let trigger = if self.config.interval_ms > 0 {
            let after_interval = self
                .last_trigger_ms
                .map_or(now_ms + self.config.interval_ms, |t| {
                    t + self.config.interval_ms
                });
            let after_pause = self.last_end_ms.map_or(0, |t| t + self.config.min_pause_ms);
            Some(after_interval.max(after_pause))
        } else {
            None
        };
        // The change-volume trigger is polled.
        let volume = self
            .config
            .trigger_after_changed_bytes
            .map(|_| now_ms + CHANGE_VOLUME_POLL_MS);
        [timeout, trigger, volume].into_iter().flatten().min()
    }

    /// Triggers, gathers acknowledgements, fails late checkpoints; returns a
    /// checkpoint ready to commit, if any.
    pub(crate) fn poll(&mut self, now_ms: u64) -> Option<CommitRequest> {
        self.collect_acks(now_ms);
        self.expire(now_ms);
        self.decline_finished(now_ms);
        self.maybe_trigger(now_ms);
        self.ready_to_commit(now_ms)
    }

    /// Whether a new checkpoint may start now (capacity and no fatal error).
    pub(crate) fn can_trigger(&self) -> bool {
        self.fatal.is_none() && self.in_progress.len() < self.config.max_concurrent
    }

    /// Whether a checkpoint is in progress.
    pub(crate) fn in_progress(&self) -> bool {
        !self.in_progress.is_empty()
    }

    /// Checkpoints still waiting for a subtask that has finished can never
    /// complete: they end at once, as failed, without counting towards the
    /// tolerable failures (nothing went wrong; Flink declines them the same
    /// way when tasks have finished).
    fn decline_finished(&mut self, now_ms: u64) {
        if self.in_progress.is_empty() {
            return;
        }
        // A subtask acknowledges before it is marked finished: what it sent
        // last is in the rings now.
        self.collect_acks(now_ms);
        // Those that reported their final offsets are part of every
        // checkpoint from then on.
        let finished: Vec<usize> = self
            .shared
            .finished_subtasks()
            .into_iter()
            .filter(|&i| self.finished_parts[i].is_none())
            .collect();
        if finished.is_empty() {
            return;
        }
        let declined: Vec<(u64, Vec<usize>)> = self
            .in_progress
            .values()
            .filter(|c| !c.committing)
            .filter_map(|c| {
                let missing: Vec<usize> = finished
                    .iter()
                    .copied()
                    .filter(|&i| c.acks[i].is_none())
                    .collect();
                (!missing.is_empty()).then_some((c.barrier.id, missing))
            })
            .collect();
        for (id, missing) in declined {
            let reason = format!(
                "declined: subtasks {missing:?} finished before acknowledging (no checkpoint starts once a subtask has finished)"
            );
            if let Some(c) = self.in_progress.remove(&id) {
                let stats = self.stats_of(&c, CheckpointStatus::Failed(reason), now_ms);
                self.record(stats);
                self.last_end_ms = Some(now_ms);
                self.shared.failed.fetch_add(1, Ordering::SeqCst);
                self.send(Control::Abort(id));
            }
        }
    }

    /// The job restored checkpoint `id`: the first checkpoints build on it.
    pub(crate) fn restored(&mut self, id: u64) {
        for subtask in 0..self.parallelism {
            self.shared.saw_completion(subtask, id);
        }
    }

    fn maybe_trigger(&mut self, now_ms: u64) {
        // The first periodic checkpoint comes one interval after the start.
        self.last_trigger_ms.get_or_insert(now_ms);
        if self.fatal.is_some() || self.in_progress.len() >= self.config.max_concurrent {
            return;
        }
        if self
            .shared
            .finished_subtasks()
            .into_iter()
            .any(|i| self.finished_parts[i].is_none())
        {
            // A subtask that finished without reporting its final offsets
            // (it failed, or its report is not collected yet: the next poll
            // will) acknowledges nothing: a checkpoint could only time out.
            return;
        }
        let manual = self.shared.manual_trigger.load(Ordering::SeqCst);
        let paused = self
            .last_end_ms
            .is_some_and(|t| now_ms < t + self.config.min_pause_ms);
        let interval_due = self.config.interval_ms > 0
            && self
                .last_trigger_ms
                .is_none_or(|t| now_ms >= t + self.config.interval_ms);
        let changed = self.shared.changed_bytes();
        let volume_due = self
            .config
            .trigger_after_changed_bytes
            .is_some_and(|limit| changed.saturating_sub(self.changed_at_trigger) >= limit);
        let cause = if manual {
            TriggerCause::Manual
        } else if interval_due && !paused {
            TriggerCause::Interval
        } else if volume_due && !paused {
            TriggerCause::ChangeVolume
        } else {
            return;
        };
        self.changed_at_trigger = changed;
        if manual {
            self.shared.manual_trigger.store(false, Ordering::SeqCst);
        }
        let barrier = Barrier {
            id: self.next_id,
            trigger_ms: now_ms,
            mode: self.config.mode,
        };
        self.next_id += 1;
        self.last_trigger_ms = Some(now_ms);
        self.in_progress.insert(
            barrier.id,
            InProgress {
                barrier,
                cause,
                acks: (0..self.parallelism)
                    .map(|i| finished_ack(&self.finished_parts, barrier, i))
                    .collect(),
                committing: false,
                builds_on: self.shared.oldest_view(),
            },
        );
        self.send(Control::Trigger(barrier));
    }

    fn collect_acks(&mut self, now_ms: u64) {
        let mut failures = Vec::new();
        for consumer in &mut self.acks {
            while let Some(ack) = consumer.pop() {
                match ack {
                    Ack::Done {
                        barrier, subtask, ..
                    } => {
                        if let Some(c) = self.in_progress.get_mut(&barrier.id) {
                            c.acks[subtask] = Some(ack);
                        }
                    }
                    Ack::Failed {
                        id,
                        subtask,
                        reason,
                    } => failures.push((id, format!("subtask {subtask}: {reason}"))),
                    Ack::Finished { subtask, sources } => {
                        if let Some(part) = self.finished_parts.get_mut(subtask) {
                            *part = Some(sources);
                        }
                        let parts = &self.finished_parts;
                        for c in self.in_progress.values_mut() {
                            if c.acks[subtask].is_none() {
                                c.acks[subtask] = finished_ack(parts, c.barrier, subtask);
                            }
                        }
                    }
                }
            }
        }
        for (id, reason) in failures {
            self.fail(id, reason, now_ms);
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let late: Vec<u64> = self
            .in_progress
            .values()
            .filter(|c| !c.committing && now_ms >= c.barrier.trigger_ms + self.config.timeout_ms)
            .map(|c| c.barrier.id)
            .collect();
        for id in late {
            let missing: Vec<usize> = self.in_progress[&id]
                .acks
                .iter()
                .enumerate()
                .filter(|(_, a)| a.is_none())
                .map(|(i, _)| i)
                .collect();
            let reason = format!(
                "timed out after {} ms, waiting for subtasks {missing:?}",
                self.config.timeout_ms
            );
            self.fail(id, reason, now_ms);
        }
    }

    fn ready_to_commit(&mut self, now_ms: u64) -> Option<CommitRequest> {
        // In order: a later checkpoint waits for the earlier ones (the store
        // takes strictly increasing ids, and subtasks build on the chains of
        // the completions they were told of, in order).
        let id = *self
            .in_progress
            .iter()
            .next()
            .filter(|(_, c)| !c.committing && c.acks.iter().all(Option::is_some))?
            .0;
        // Checkpoints in progress build on what their subtasks had seen
        // complete when they were cut, and running subtasks' next cuts on
        // what they have seen since (a subtask may not have processed the
        // latest completion yet).
        let keep_from = self
            .in_progress
            .iter()
            .filter(|(&other, _)| other != id)
            .filter_map(|(_, c)| c.builds_on)
            .chain(self.shared.oldest_view())
            .min();
        let c = self.in_progress.get_mut(&id).expect("found above");
        c.committing = true;
        let mut handles = Vec::new();
        let mut state = Vec::new();
        let mut in_flight = Vec::new();
        let mut sources = Vec::new();
        let mut subtasks = Vec::new();
        let push = |link: &ChainLink, handles: &mut Vec<BlockHandle>| {
            handles.push(link.handle);
            ChainBlock {
                handle: handles.len() as u32 - 1,
                delta: link.delta,
                checkpoint: link.checkpoint,
                entries: link.entries,
                bytes: link.bytes,
            }
        };
        let state_block = |s: &StateRef, chain: Vec<ChainBlock>| StateBlock {
            operator: s.key.0.to_string(),
            table: s.key.1.to_string(),
            key_group: s.key.2,
            chain,
            entries: s.entries,
            type_name: s.type_name.to_string(),
        };
        let mut incremental = false;
        for ack in c.acks.iter() {
            let Some(Ack::Done {
                handles: h,
                blocks,
                reused,
                sources: s,
                stats,
                ..
            }) = ack
            else {
                unreachable!("only Done acks are stored");
            };
            for (handle, desc) in h.iter().zip(blocks) {
                match desc {
                    BlockDesc::State {
                        state: s,
                        delta,
                        block_entries,
                        bytes,
                    } => {
                        incremental |= *delta;
                        let mut chain: Vec<ChainBlock> =
                            s.prefix.iter().map(|l| push(l, &mut handles)).collect();
                        let link = ChainLink {
                            handle: *handle,
                            delta: *delta,
                            checkpoint: id,
                            entries: *block_entries,
                            bytes: *bytes,
                        };
                        chain.push(push(&link, &mut handles));
                        state.push(state_block(s, chain));
                    }
                    BlockDesc::InFlight(b) => {
                        handles.push(*handle);
                        in_flight.push(InFlightBlock {
                            handle: handles.len() as u32 - 1,
                            ..b.clone()
                        });
                    }
                }
            }
            for r in reused {
                incremental = true;
                let chain = r.prefix.iter().map(|l| push(l, &mut handles)).collect();
                state.push(state_block(r, chain));
            }
            sources.extend(s.iter().cloned());
            subtasks.push(stats.clone());
        }
        state.sort_by(|a, b| {
            (&a.operator, &a.table, a.key_group).cmp(&(&b.operator, &b.table, b.key_group))
        });
        let metadata = CheckpointMetadata {
            version: METADATA_VERSION,
            id,
            trigger_ms: c.barrier.trigger_ms,
            completed_ms: now_ms,
            cause: c.cause.name().to_string(),
            mode: c.barrier.mode.name().to_string(),
            incremental,
            parallelism: self.parallelism as u32,
            max_parallelism: self.max_parallelism,
            fingerprint: self.fingerprint,
            state,
            in_flight,
            sources,
            subtasks,
        };
        Some(CommitRequest {
            id,
            keep_from,
            record: CheckpointRecord {
                id,
                timestamp_ms: c.barrier.trigger_ms,
                metadata: metadata.encode(),
                handles,
            },
        })
    }

    fn stats_of(&self, c: &InProgress, status: CheckpointStatus, now_ms: u64) -> CheckpointStats {
        let subtasks: Vec<SubtaskStats> = c
            .acks
            .iter()
            .filter_map(|a| match a {
                Some(Ack::Done { stats, .. }) => Some(stats.clone()),
                _ => None,
            })
            .collect();
        CheckpointStats {
            id: c.barrier.id,
            trigger_ms: c.barrier.trigger_ms,
            cause: c.cause,
            mode: c.barrier.mode.name(),
            status,
            duration_ms: now_ms.saturating_sub(c.barrier.trigger_ms),
            state_bytes: subtasks.iter().map(|s| s.state_bytes).sum(),
            in_flight_bytes: subtasks.iter().map(|s| s.in_flight_bytes).sum(),
            subtasks,
        }
    }

    fn record(&self, stats: CheckpointStats) {
        if let Ok(mut summary) = self.shared.summary.lock() {
            summary.add(&stats);
        }
        if let Ok(mut history) = self.shared.history.lock() {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(stats);
        }
    }

    /// The driver committed `id`.
    pub(crate) fn committed(&mut self, id: u64, now_ms: u64) {
        if let Some(c) = self.in_progress.remove(&id) {
            let stats = self.stats_of(&c, CheckpointStatus::Completed, now_ms);
            self.record(stats);
            self.consecutive_failures = 0;
            self.last_end_ms = Some(now_ms);
            self.shared.completed.fetch_add(1, Ordering::SeqCst);
            self.shared.latest_completed.store(id, Ordering::SeqCst);
            self.send(Control::Complete(id));
        }
    }

    /// The driver could not commit `id`.
    pub(crate) fn commit_failed(&mut self, id: u64, reason: String, now_ms: u64) {
        self.fail(id, format!("commit failed: {reason}"), now_ms);
    }

    fn fail(&mut self, id: u64, reason: String, now_ms: u64) {
        if let Some(c) = self.in_progress.remove(&id) {
            let stats = self.stats_of(&c, CheckpointStatus::Failed(reason.clone()), now_ms);
            self.record(stats);
            self.last_end_ms = Some(now_ms);
            self.shared.failed.fetch_add(1, Ordering::SeqCst);
            self.send(Control::Abort(id));
            self.consecutive_failures += 1;
            if self.consecutive_failures > self.config.tolerable_failures && self.fatal.is_none() {
                self.fatal = Some(format!(
                    "{} consecutive checkpoint failures (tolerable: {}); last: checkpoint {id} {reason}",
                    self.consecutive_failures, self.config.tolerable_failures
                ));
            }
        }
    }
}
