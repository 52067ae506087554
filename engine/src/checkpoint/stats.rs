//! Checkpoint statistics: what the coordinator records of every checkpoint
//! that ended.
//!
//! Owns the figures of one checkpoint ([`CheckpointStats`], its
//! [`TriggerCause`] and [`CheckpointStatus`]), the figures over a whole run
//! ([`CheckpointSummary`], with its HDR histograms) and the bounded history
//! the job handle reads ([`record`]). Pure bookkeeping of ended checkpoints:
//! must not touch the coordinator's state (checkpoints in progress, ids,
//! failure counts), the control or acknowledgement rings, or the store, and
//! must never decide anything about a checkpoint.

use super::metadata::SubtaskStats;
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Checkpoint statistics kept in the history.
pub(crate) const HISTORY: usize = 256;

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
    /// State bytes per completed checkpoint.
    pub size_bytes: Histogram<u64>,
    /// Delta bytes per completed checkpoint.
    pub delta_size_bytes: Histogram<u64>,
    /// In-flight bytes per completed checkpoint.
    pub in_flight_size_bytes: Histogram<u64>,
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
            size_bytes: histogram(),
            delta_size_bytes: histogram(),
            in_flight_size_bytes: histogram(),
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

    /// Adds the figures of another run's summary (the monitor's view of a
    /// job across restarts).
    pub(crate) fn merge(&mut self, other: &CheckpointSummary) {
        self.completed += other.completed;
        self.failed += other.failed;
        for (to, from) in [
            (&mut self.duration_ms, &other.duration_ms),
            (&mut self.sync_pause_us, &other.sync_pause_us),
            (&mut self.async_us, &other.async_us),
            (&mut self.alignment_us, &other.alignment_us),
            (&mut self.size_bytes, &other.size_bytes),
            (&mut self.delta_size_bytes, &other.delta_size_bytes),
            (&mut self.in_flight_size_bytes, &other.in_flight_size_bytes),
        ] {
            let _ = to.add(from);
        }
        self.state_bytes += other.state_bytes;
        self.delta_bytes += other.delta_bytes;
        self.in_flight_bytes += other.in_flight_bytes;
        self.first_trigger_ms = match (self.first_trigger_ms, other.first_trigger_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_end_ms = self.last_end_ms.max(other.last_end_ms);
    }

    /// Adds a checkpoint that ended (completed or failed).
    fn add(&mut self, stats: &CheckpointStats) {
        assert!(
            stats.status != CheckpointStatus::InProgress,
            "checkpoint {}: only ended checkpoints enter the summary",
            stats.id
        );
        let ended_before = self.completed + self.failed;
        self.first_trigger_ms = Some(
            self.first_trigger_ms
                .map_or(stats.trigger_ms, |t| t.min(stats.trigger_ms)),
        );
        self.last_end_ms = Some(stats.trigger_ms + stats.duration_ms);
        match stats.status {
            CheckpointStatus::Completed => {
                self.completed += 1;
                let _ = self.duration_ms.record(stats.duration_ms);
                let delta: u64 = stats.subtasks.iter().map(|s| s.delta_bytes).sum();
                let _ = self.size_bytes.record(stats.state_bytes);
                let _ = self.delta_size_bytes.record(delta);
                let _ = self.in_flight_size_bytes.record(stats.in_flight_bytes);
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
        assert_eq!(
            self.completed + self.failed,
            ended_before + 1,
            "checkpoint {}: an ended checkpoint counts once",
            stats.id
        );
        assert!(
            self.first_trigger_ms <= self.last_end_ms,
            "checkpoint {}: the summary's first trigger is after its last end",
            stats.id
        );
    }
}

/// Records a checkpoint that ended: into the run's summary, and at the end
/// of the history (the oldest entry dropped beyond [`HISTORY`]).
pub(crate) fn record(
    summary: &Mutex<CheckpointSummary>,
    history: &Mutex<VecDeque<CheckpointStats>>,
    stats: CheckpointStats,
) {
    assert!(
        stats.status != CheckpointStatus::InProgress,
        "checkpoint {}: only ended checkpoints are recorded",
        stats.id
    );
    if let Ok(mut summary) = summary.lock() {
        summary.add(&stats);
    }
    if let Ok(mut history) = history.lock() {
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(stats);
        assert!(
            history.len() <= HISTORY,
            "the checkpoint history holds at most {HISTORY} entries"
        );
    }
}
