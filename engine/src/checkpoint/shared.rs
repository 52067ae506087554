//! What the checkpoint coordinator shares with the job handle and the
//! subtasks, across threads.
//!
//! Owns [`CoordinatorShared`]: the manual trigger request, the counters and
//! statistics the job handle reads, the subtasks' change volume, which
//! subtasks finished, and which completion each subtask has processed (what
//! its next cut builds on). Atomics and locks only: must not decide anything
//! about a checkpoint, and must not touch the coordinator's own state, the
//! rings or the store. Only the coordinator writes the counters and the
//! statistics.

use super::stats::{self, CheckpointStats, CheckpointSummary};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The statistics of the checkpoints so far (bounded history, oldest first).
    pub(crate) fn history(&self) -> Vec<CheckpointStats> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Counts, histograms and rates over the checkpoints so far.
    pub(crate) fn summary(&self) -> CheckpointSummary {
        self.summary.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Subtask `subtask` finished (its step loop ended).
    pub(crate) fn subtask_finished(&self, subtask: usize) {
        if let Some(f) = self.finished.get(subtask) {
            f.store(true, Ordering::SeqCst);
        }
    }

    pub(super) fn finished_subtasks(&self) -> Vec<usize> {
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
    pub(super) fn oldest_view(&self) -> Option<u64> {
        (0..self.views.len())
            .filter(|&i| !self.finished[i].load(Ordering::SeqCst))
            .map(|i| self.views[i].load(Ordering::SeqCst))
            .filter(|&v| v > 0)
            .min()
    }

    pub(super) fn changed_bytes(&self) -> u64 {
        self.changed_bytes
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Records the statistics of a checkpoint that ended; a failed one is
    /// also logged with its reason (stderr), as the job goes on without it.
    pub(super) fn record(&self, stats: CheckpointStats) {
        if let stats::CheckpointStatus::Failed(reason) = &stats.status {
            eprintln!("spate: checkpoint {} failed: {reason}", stats.id);
        }
        stats::record(&self.summary, &self.history, stats);
    }
}
