//! The checkpoint coordinator (Flink's `CheckpointCoordinator`).
//!
//! A plain state machine, driven by the runtime (an async task on reactor 0,
//! which owns the store) or by the simulator: it decides when to trigger
//! (interval, minimum pause, maximum concurrent, manual requests, change
//! volume), sends the trigger to every subtask's control ring, gathers the
//! subtasks' acknowledgements, builds the checkpoint's metadata (assembled
//! by `assemble.rs`) and hands the record to its driver to commit; it
//! fails checkpoints that time out and fails the job after too many
//! consecutive failures. It keeps the statistics of every checkpoint
//! (`stats.rs`).
//!
//! Invariants (asserted where they could break; the seeded simulation runs
//! them through thousands of crash/restore interleavings):
//!
//! 1. Checkpoint ids strictly increase: a trigger takes `next_id`, which only
//!    grows; every pending checkpoint's id is below it.
//! 2. At most `max_concurrent` (at least 1) checkpoints are pending, and none
//!    is triggered once the job has failed (`fatal`).
//! 3. Checkpoints complete in order: only the oldest pending checkpoint
//!    commits, once every subtask acknowledged it, so a later one never
//!    commits before every earlier one has completed or failed; completed
//!    ids strictly increase.
//! 4. At most one commit is outstanding, for the oldest pending checkpoint:
//!    the driver reports it (`committed` / `commit_failed`) before it polls
//!    again, and nothing else ends a checkpoint while it commits. A
//!    completion or commit failure is never for an unknown or already-ended
//!    checkpoint.
//! 5. An acknowledgement arrives on its subtask's ring, is for a checkpoint
//!    that was triggered and is counted once per subtask and checkpoint;
//!    those of checkpoints that already ended are dropped. A subtask
//!    finishes once. Only the id identifies the checkpoint: a subtask that
//!    met a barrier at an exchange before its trigger acknowledges a barrier
//!    it rebuilt from the id, with its own trigger time.
//! 6. A checkpoint ends once (completed, failed or declined): it leaves the
//!    pending set, is recorded once in the statistics, and only then is
//!    announced to the subtasks (`Complete` / `Abort`).
//! 7. Consecutive failures reset on a completion and declined checkpoints do
//!    not count; the job fails (`fatal`) exactly when they reach
//!    `tolerable_failures + 1` (its driver stops once it takes `fatal`).
//! 8. A restored id is below every id triggered after; a checkpoint builds
//!    only on earlier ones (`builds_on < id`), and a commit tells the store to
//!    keep only checkpoints before it (`keep_from < id`).

use super::assemble::{finished_ack, Assembly};
use super::metadata::{CheckpointMetadata, SourceOffset, SubtaskStats, METADATA_VERSION};
use super::schedule::Schedule;
use super::{Barrier, CheckpointConfig, Control};
use crate::park::Notifier;
use crate::ring::{Consumer, Producer};
use spate_storage::CheckpointRecord;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(crate) use super::assemble::Ack;
pub(crate) use super::shared::CoordinatorShared;
pub use super::stats::{CheckpointStats, CheckpointStatus, CheckpointSummary, TriggerCause};

struct InProgress {
    barrier: Barrier,
    cause: TriggerCause,
    acks: Vec<Option<Ack>>,
    committing: bool,
    /// The oldest checkpoint a subtask had seen complete when this one was
    /// triggered: its cuts build on that one's chains or a later one's.
    builds_on: Option<u64>,
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
    schedule: Schedule,
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
    /// The checkpoint the job restored, if any (for the invariants only).
    restored: Option<u64>,
    /// A part of a cluster job's checkpoints: the leader's global
    /// coordinator decides when a checkpoint starts (`trigger_external`)
    /// and whether it completes (`global.rs`).
    external: bool,
    /// In a part: checkpoints that ended failed here, for the leader (id,
    /// reason, declined).
    failed_out: Vec<(u64, String, bool)>,
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
        assert!(
            config.max_concurrent >= 1,
            "at least one checkpoint may be in progress"
        );
        assert!(first_id >= 1, "checkpoint ids start at 1 (0 means none)");
        assert!(
            control.len() == parallelism
                && acks.len() == parallelism
                && notifiers.len() == parallelism
                && shared.finished.len() == parallelism
                && shared.views.len() == parallelism,
            "one control ring, acknowledgement ring, notifier and view per subtask"
        );
        Self {
            schedule: Schedule::new(&config),
            config,
            parallelism,
            max_parallelism,
            fingerprint,
            next_id: first_id,
            in_progress: BTreeMap::new(),
            consecutive_failures: 0,
            control,
            acks,
            finished_parts: (0..parallelism).map(|_| None).collect(),
            notifiers,
            shared,
            fatal: None,
            restored: None,
            external: false,
            failed_out: Vec::new(),
        }
    }

    /// Makes this coordinator a part of a cluster job's checkpoints: it
    /// triggers only when the leader says so ([`trigger_external`](Self::trigger_external)),
    /// and reports what fails here ([`take_failed`](Self::take_failed)).
    pub(crate) fn set_external(&mut self) {
        assert!(
            !self.schedule.started(),
            "a coordinator becomes a part before its first poll"
        );
        self.external = true;
    }

    /// Checkpoints that ended failed in this part since the last call: (id,
    /// reason, declined).
    pub(crate) fn take_failed(&mut self) -> Vec<(u64, String, bool)> {
        std::mem::take(&mut self.failed_out)
    }

    /// In a part: the leader triggers checkpoint `id`. An error (and whether
    /// it is a decline, not a failure) if this part cannot take it.
    pub(crate) fn trigger_external(
        &mut self,
        id: u64,
        cause: TriggerCause,
        now_ms: u64,
    ) -> Result<(), (String, bool)> {
        assert!(self.external, "only a part is triggered by the leader");
        assert!(
            !self.committing(),
            "nothing triggers while a commit is outstanding"
        );
        self.schedule.start(now_ms);
        if id < self.next_id {
            return Err((
                format!(
                    "checkpoint {id} is not above this part's ids (next {})",
                    self.next_id
                ),
                false,
            ));
        }
        if self.fatal.is_some() || !self.can_trigger() {
            return Err((
                "a checkpoint of this part is still in progress".into(),
                false,
            ));
        }
        if self.awaiting_final_offsets() {
            return Err(("declined: a subtask of this part has finished".into(), true));
        }
        self.next_id = id;
        let changed = self.shared.changed_bytes();
        self.trigger(cause, now_ms, changed);
        assert!(self.in_progress.contains_key(&id) && self.next_id == id + 1);
        Ok(())
    }

    /// In a part: the leader aborted checkpoint `id` (nothing if it already
    /// ended here).
    pub(crate) fn abort_external(&mut self, id: u64, reason: String, now_ms: u64) {
        assert!(self.external, "only a part is aborted by the leader");
        assert!(
            !self.committing(),
            "an outstanding commit ends by commit_failed"
        );
        self.fail(id, reason, now_ms);
    }

    fn send(&mut self, message: Control) {
        match message {
            Control::Trigger(barrier) => assert!(
                barrier.id + 1 == self.next_id && self.in_progress.contains_key(&barrier.id),
                "checkpoint {}: triggered as the newest pending checkpoint",
                barrier.id
            ),
            Control::Abort(id) | Control::Complete(id) => assert!(
                id < self.next_id && !self.in_progress.contains_key(&id),
                "checkpoint {id}: announced as ended only once triggered and ended"
            ),
        }
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
        // Nothing can start before one ends: only timeouts are deadlines
        // (an overdue interval here would make the driver spin).
        let deadline = if self.can_trigger() {
            [timeout, self.schedule.next_trigger(now_ms)]
                .into_iter()
                .flatten()
                .min()
        } else {
            timeout
        };
        assert!(
            self.in_progress.is_empty() || deadline.is_some(),
            "a pending checkpoint always has a deadline: its timeout"
        );
        assert!(
            timeout.is_none_or(|t| deadline.is_some_and(|d| d <= t)),
            "the next deadline is never after the next timeout"
        );
        deadline
    }

    /// Triggers, gathers acknowledgements, fails late checkpoints; returns a
    /// checkpoint ready to commit, if any.
    pub(crate) fn poll(&mut self, now_ms: u64) -> Option<CommitRequest> {
        assert!(
            !self.committing(),
            "polled with a commit outstanding: the driver reports every commit before it polls again"
        );
        self.debug_check_pending();
        self.collect_acks(now_ms);
        self.expire(now_ms);
        self.decline_finished(now_ms);
        self.maybe_trigger(now_ms);
        let request = self.ready_to_commit(now_ms);
        self.debug_check_pending();
        assert!(
            request.is_some() == self.committing(),
            "a poll hands out a commit exactly when one is outstanding"
        );
        request
    }

    /// Whether a new checkpoint may start now (capacity and no fatal error).
    pub(crate) fn can_trigger(&self) -> bool {
        self.fatal.is_none() && self.in_progress.len() < self.config.max_concurrent
    }

    /// Whether a checkpoint is in progress.
    pub(crate) fn in_progress(&self) -> bool {
        !self.in_progress.is_empty()
    }

    /// Whether a commit is outstanding (only the oldest pending checkpoint
    /// can be committing).
    fn committing(&self) -> bool {
        self.in_progress
            .first_key_value()
            .is_some_and(|(_, c)| c.committing)
    }

    /// Whether `id` is the commit outstanding.
    fn commits(&self, id: u64) -> bool {
        self.in_progress
            .first_key_value()
            .is_some_and(|(&oldest, c)| oldest == id && c.committing)
    }

    /// Invariants 1 to 5 and 8 over every pending checkpoint (debug builds:
    /// O(pending × parallelism)).
    fn debug_check_pending(&self) {
        debug_assert!(
            self.in_progress.len() <= self.config.max_concurrent,
            "at most max_concurrent checkpoints are pending"
        );
        debug_assert!(
            self.in_progress.values().skip(1).all(|c| !c.committing),
            "only the oldest pending checkpoint commits"
        );
        debug_assert!(
            self.in_progress.iter().all(|(&id, c)| {
                id == c.barrier.id
                    && id < self.next_id
                    && c.builds_on.is_none_or(|b| b < id)
                    && self.restored.is_none_or(|r| r < id)
            }),
            "pending checkpoints are triggered, after the restored one, and build on earlier ones"
        );
        debug_assert!(
            self.in_progress.values().all(|c| {
                c.acks.len() == self.parallelism
                    && c.acks.iter().enumerate().all(|(i, a)| match a {
                        Some(Ack::Done {
                            barrier, subtask, ..
                        }) => barrier.id == c.barrier.id && *subtask == i,
                        Some(_) => false,
                        None => true,
                    })
            }),
            "a pending checkpoint holds at most one acknowledgement per subtask, its own"
        );
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
        assert!(
            !self.committing(),
            "nothing declines a checkpoint that commits"
        );
        let failures_before = self.consecutive_failures;
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
            let c = self
                .in_progress
                .remove(&id)
                .expect("declined while pending");
            if self.external {
                self.failed_out.push((id, reason.clone(), true));
            }
            self.end_failed(c, reason, now_ms);
        }
        assert_eq!(
            self.consecutive_failures, failures_before,
            "declined checkpoints do not count as failures"
        );
        debug_assert!(
            self.in_progress
                .values()
                .all(|c| finished.iter().all(|&i| c.acks[i].is_some())),
            "no pending checkpoint waits for a subtask that finished"
        );
    }

    /// The job restored checkpoint `id`: the first checkpoints build on it.
    pub(crate) fn restored(&mut self, id: u64) {
        assert!(
            id >= 1 && id < self.next_id,
            "restored checkpoint {id} is not below the first id {}",
            self.next_id
        );
        assert!(
            self.restored.is_none() && !self.schedule.started() && self.in_progress.is_empty(),
            "a job restores once, before the coordinator's first poll"
        );
        self.restored = Some(id);
        for subtask in 0..self.parallelism {
            self.shared.saw_completion(subtask, id);
        }
        debug_assert!(
            self.shared
                .views
                .iter()
                .all(|v| v.load(Ordering::SeqCst) >= id),
            "every subtask builds on the restored checkpoint"
        );
    }

    fn maybe_trigger(&mut self, now_ms: u64) {
        assert!(
            !self.committing(),
            "nothing triggers while a commit is outstanding"
        );
        self.schedule.start(now_ms);
        if self.external || !self.can_trigger() || self.awaiting_final_offsets() {
            return;
        }
        let manual = self.shared.manual_trigger.load(Ordering::SeqCst);
        let changed = self.shared.changed_bytes();
        let Some(cause) = self.schedule.due(now_ms, manual, changed) else {
            return;
        };
        if manual {
            self.shared.manual_trigger.store(false, Ordering::SeqCst);
        }
        let next_id = self.next_id;
        self.trigger(cause, now_ms, changed);
        assert!(
            self.next_id == next_id + 1 && self.in_progress.contains_key(&next_id),
            "checkpoint {next_id}: a due checkpoint is triggered with the next id"
        );
    }

    /// Whether a subtask finished without reporting its final offsets (it
    /// failed, or its report is not collected yet: the next poll will): it
    /// acknowledges nothing, so a checkpoint could only time out.
    fn awaiting_final_offsets(&self) -> bool {
        self.shared
            .finished_subtasks()
            .into_iter()
            .any(|i| self.finished_parts[i].is_none())
    }

    /// Starts the next checkpoint and sends its barrier to every subtask.
    fn trigger(&mut self, cause: TriggerCause, now_ms: u64, changed: u64) {
        assert!(
            self.can_trigger(),
            "a checkpoint starts only below max_concurrent and while the job has not failed"
        );
        assert!(
            self.in_progress
                .last_key_value()
                .is_none_or(|(&last, _)| last < self.next_id),
            "checkpoint ids strictly increase"
        );
        let barrier = Barrier {
            id: self.next_id,
            trigger_ms: now_ms,
            mode: self.config.mode,
        };
        self.next_id += 1;
        self.schedule.triggered(now_ms, changed);
        let builds_on = self.shared.oldest_view();
        assert!(
            builds_on.is_none_or(|b| b < barrier.id)
                && self.restored.is_none_or(|r| r < barrier.id),
            "checkpoint {}: builds only on earlier checkpoints (views {builds_on:?}, restored {:?})",
            barrier.id,
            self.restored
        );
        self.in_progress.insert(
            barrier.id,
            InProgress {
                barrier,
                cause,
                acks: (0..self.parallelism)
                    .map(|i| finished_ack(&self.finished_parts, barrier, i))
                    .collect(),
                committing: false,
                builds_on,
            },
        );
        assert!(
            self.in_progress.len() <= self.config.max_concurrent,
            "at most max_concurrent checkpoints are pending"
        );
        self.send(Control::Trigger(barrier));
    }

    fn collect_acks(&mut self, now_ms: u64) {
        assert!(
            !self.committing(),
            "acknowledgements are collected only while no commit is outstanding"
        );
        let mut failures = Vec::new();
        for ring in 0..self.acks.len() {
            while let Some(ack) = self.acks[ring].pop() {
                match ack {
                    Ack::Done {
                        barrier, subtask, ..
                    } => self.ack_done(ring, barrier, subtask, ack),
                    Ack::Failed {
                        id,
                        subtask,
                        reason,
                    } => {
                        assert!(
                            subtask == ring && id < self.next_id,
                            "subtask {subtask}'s failure of checkpoint {id} (ring {ring}, next id {})",
                            self.next_id
                        );
                        failures.push((id, format!("subtask {subtask}: {reason}")))
                    }
                    Ack::Finished { subtask, sources } => self.ack_finished(ring, subtask, sources),
                }
            }
        }
        for (id, reason) in failures {
            self.fail(id, reason, now_ms);
        }
    }

    /// Subtask `subtask` acknowledged its part of `barrier` (dropped when the
    /// checkpoint already ended).
    fn ack_done(&mut self, ring: usize, barrier: Barrier, subtask: usize, ack: Ack) {
        assert!(
            subtask == ring && barrier.id < self.next_id,
            "subtask {subtask}'s acknowledgement of checkpoint {} (ring {ring}, next id {})",
            barrier.id,
            self.next_id
        );
        if let Some(c) = self.in_progress.get_mut(&barrier.id) {
            assert!(
                c.barrier.id == barrier.id && !c.committing,
                "checkpoint {}: acknowledged before it commits",
                barrier.id
            );
            assert!(
                c.acks[subtask].is_none(),
                "checkpoint {}: subtask {subtask} acknowledged twice",
                barrier.id
            );
            c.acks[subtask] = Some(ack);
        }
    }

    /// Subtask `subtask` finished, with these final source offsets: it
    /// acknowledges every pending and later checkpoint without blocks.
    fn ack_finished(&mut self, ring: usize, subtask: usize, sources: Vec<SourceOffset>) {
        assert!(
            subtask == ring && self.finished_parts[subtask].is_none(),
            "subtask {subtask} finishes once, on its own ring ({ring})"
        );
        if let Some(part) = self.finished_parts.get_mut(subtask) {
            *part = Some(sources);
        }
        let parts = &self.finished_parts;
        for c in self.in_progress.values_mut() {
            if c.acks[subtask].is_none() {
                c.acks[subtask] = finished_ack(parts, c.barrier, subtask);
            }
        }
        debug_assert!(
            self.in_progress.values().all(|c| c.acks[subtask].is_some()),
            "a finished subtask has acknowledged every pending checkpoint"
        );
    }

    fn expire(&mut self, now_ms: u64) {
        assert!(
            !self.committing(),
            "nothing expires a checkpoint that commits"
        );
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
        debug_assert!(
            self.in_progress
                .values()
                .all(|c| now_ms < c.barrier.trigger_ms + self.config.timeout_ms),
            "no pending checkpoint is past its timeout"
        );
    }

    /// The oldest pending checkpoint, if every subtask acknowledged it, as a
    /// commit for the driver. In order: a later checkpoint waits for the
    /// earlier ones (the store takes strictly increasing ids, and subtasks
    /// build on the chains of the completions they were told of, in order).
    fn ready_to_commit(&mut self, now_ms: u64) -> Option<CommitRequest> {
        assert!(!self.committing(), "at most one commit is outstanding");
        let id = self.oldest_ready()?;
        let keep_from = self.keep_from(id);
        let c = self.in_progress.get_mut(&id).expect("found above");
        c.committing = true;
        let request = self.commit_request(id, keep_from, now_ms);
        assert!(
            request.id == id && request.record.id == id && self.committing(),
            "checkpoint {id}: the commit handed out is the oldest pending checkpoint's"
        );
        Some(request)
    }

    /// The oldest pending checkpoint, if every subtask acknowledged it.
    fn oldest_ready(&self) -> Option<u64> {
        let (&id, c) = self.in_progress.first_key_value()?;
        (!c.committing && c.acks.iter().all(Option::is_some)).then_some(id)
    }

    /// What the store must keep once `id` commits. Checkpoints in progress
    /// build on what their subtasks had seen complete when they were cut,
    /// and running subtasks' next cuts on what they have seen since (a
    /// subtask may not have processed the latest completion yet).
    fn keep_from(&self, id: u64) -> Option<u64> {
        assert!(
            self.in_progress
                .first_key_value()
                .is_some_and(|(&oldest, _)| oldest == id),
            "checkpoint {id}: only the oldest pending checkpoint commits"
        );
        let keep_from = self
            .in_progress
            .iter()
            .filter(|(&other, _)| other != id)
            .filter_map(|(_, c)| c.builds_on)
            .chain(self.shared.oldest_view())
            .min();
        assert!(
            keep_from.is_none_or(|k| k < id),
            "checkpoint {id}: the store keeps only checkpoints before it (from {keep_from:?})"
        );
        keep_from
    }

    /// The commit of checkpoint `id`: its metadata, assembled from its
    /// subtasks' acknowledgements, and the blocks it refers to.
    fn commit_request(&self, id: u64, keep_from: Option<u64>, now_ms: u64) -> CommitRequest {
        let c = &self.in_progress[&id];
        assert!(c.committing, "checkpoint {id}: assembled once it commits");
        let parts = Assembly::of(id, &c.acks);
        let metadata = CheckpointMetadata {
            version: METADATA_VERSION,
            id,
            trigger_ms: c.barrier.trigger_ms,
            completed_ms: now_ms,
            cause: c.cause.name().to_string(),
            mode: c.barrier.mode.name().to_string(),
            incremental: parts.incremental,
            parallelism: self.parallelism as u32,
            max_parallelism: self.max_parallelism,
            fingerprint: self.fingerprint,
            state: parts.state,
            in_flight: parts.in_flight,
            sources: parts.sources,
            subtasks: parts.subtasks,
            schemas: parts.schemas,
        };
        assert_eq!(
            metadata.subtasks.len(),
            self.parallelism,
            "checkpoint {id}: one figure per subtask"
        );
        CommitRequest {
            id,
            keep_from,
            record: CheckpointRecord {
                id,
                timestamp_ms: c.barrier.trigger_ms,
                metadata: metadata.encode(),
                handles: parts.handles,
            },
        }
    }

    fn stats_of(&self, c: &InProgress, status: CheckpointStatus, now_ms: u64) -> CheckpointStats {
        assert!(
            status != CheckpointStatus::InProgress,
            "checkpoint {}: statistics are taken when it ends",
            c.barrier.id
        );
        let subtasks: Vec<SubtaskStats> = c
            .acks
            .iter()
            .filter_map(|a| match a {
                Some(Ack::Done { stats, .. }) => Some(stats.clone()),
                _ => None,
            })
            .collect();
        assert!(
            subtasks.len() <= self.parallelism,
            "checkpoint {}: at most one figure per subtask",
            c.barrier.id
        );
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

    /// The driver committed `id`.
    pub(crate) fn committed(&mut self, id: u64, now_ms: u64) {
        assert!(
            self.commits(id),
            "checkpoint {id}: completed, but it is not the commit outstanding"
        );
        assert!(
            id > self.shared.latest_completed.load(Ordering::SeqCst),
            "checkpoint {id}: completed ids strictly increase"
        );
        let c = self.in_progress.remove(&id).expect("asserted above");
        let stats = self.stats_of(&c, CheckpointStatus::Completed, now_ms);
        self.shared.record(stats);
        self.consecutive_failures = 0;
        self.schedule.ended(now_ms);
        self.shared.completed.fetch_add(1, Ordering::SeqCst);
        self.shared.latest_completed.store(id, Ordering::SeqCst);
        self.send(Control::Complete(id));
        assert!(
            self.in_progress
                .first_key_value()
                .is_none_or(|(&next, _)| next > id),
            "checkpoint {id}: completed before every later one"
        );
    }

    /// The driver could not commit `id`.
    pub(crate) fn commit_failed(&mut self, id: u64, reason: String, now_ms: u64) {
        assert!(
            self.commits(id),
            "checkpoint {id}: its commit failed, but it is not the commit outstanding"
        );
        self.fail(id, format!("commit failed: {reason}"), now_ms);
        assert!(
            !self.in_progress.contains_key(&id) && !self.committing(),
            "checkpoint {id}: a failed commit ends it"
        );
    }

    /// Checkpoint `id` failed (nothing if it already ended: a late failure):
    /// it ends, and counts towards the tolerable failures.
    fn fail(&mut self, id: u64, reason: String, now_ms: u64) {
        let Some(c) = self.in_progress.remove(&id) else {
            return;
        };
        let failures_before = self.consecutive_failures;
        let fatal_before = self.fatal.is_some();
        if self.external {
            self.failed_out.push((id, reason.clone(), false));
        }
        self.end_failed(c, reason.clone(), now_ms);
        self.consecutive_failures += 1;
        if self.consecutive_failures > self.config.tolerable_failures && self.fatal.is_none() {
            self.fatal = Some(format!(
                "{} consecutive checkpoint failures (tolerable: {}); last: checkpoint {id} {reason}",
                self.consecutive_failures, self.config.tolerable_failures
            ));
        }
        assert_eq!(
            self.consecutive_failures,
            failures_before + 1,
            "checkpoint {id}: a failure counts once"
        );
        assert!(
            fatal_before
                || self.fatal.is_some()
                    == (self.consecutive_failures == self.config.tolerable_failures + 1),
            "the job fails exactly at tolerable_failures + 1 consecutive failures ({} after checkpoint {id})",
            self.consecutive_failures
        );
    }

    /// Ends `c`, taken out of the pending set, as failed (or declined): its
    /// statistics, and the abort to every subtask.
    fn end_failed(&mut self, c: InProgress, reason: String, now_ms: u64) {
        let id = c.barrier.id;
        assert!(
            !self.in_progress.contains_key(&id),
            "checkpoint {id}: leaves the pending set before it ends"
        );
        let stats = self.stats_of(&c, CheckpointStatus::Failed(reason), now_ms);
        self.shared.record(stats);
        self.schedule.ended(now_ms);
        let failed_before = self.shared.failed.fetch_add(1, Ordering::SeqCst);
        self.send(Control::Abort(id));
        assert_eq!(
            self.shared.failed.load(Ordering::SeqCst),
            failed_before + 1,
            "checkpoint {id}: a failed checkpoint counts once (only the coordinator counts)"
        );
    }
}
