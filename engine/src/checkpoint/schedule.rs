//! When the checkpoint coordinator triggers: the periodic interval, the
//! minimum pause after a checkpoint ended, manual requests and the change
//! volume.
//!
//! Owns the trigger times (the last trigger, the last end) and the change
//! volume at the last trigger; decides whether a checkpoint is due, and why,
//! and when the next one may be. Timing only: must not touch the checkpoints
//! in progress, the rings, the store or the shared state (the coordinator
//! reads the manual request and the change volume and passes them in), and
//! must not check capacity or the job's failure (the coordinator does).
//! Never assumes that processing time moves forward: the runtime's clock is
//! the system's.

use super::stats::TriggerCause;
use super::CheckpointConfig;

/// How often the coordinator looks at the change volume, ms.
const CHANGE_VOLUME_POLL_MS: u64 = 10;

/// The trigger policy of one coordinator.
pub(super) struct Schedule {
    interval_ms: u64,
    min_pause_ms: u64,
    trigger_after_changed_bytes: Option<u64>,
    last_trigger_ms: Option<u64>,
    last_end_ms: Option<u64>,
    /// Changed-state estimate at the last trigger.
    changed_at_trigger: u64,
}

impl Schedule {
    pub(super) fn new(config: &CheckpointConfig) -> Self {
        Self {
            interval_ms: config.interval_ms,
            min_pause_ms: config.min_pause_ms,
            trigger_after_changed_bytes: config.trigger_after_changed_bytes,
            last_trigger_ms: None,
            last_end_ms: None,
            changed_at_trigger: 0,
        }
    }

    /// The coordinator polls: the first periodic checkpoint comes one
    /// interval after the first poll.
    pub(super) fn start(&mut self, now_ms: u64) {
        self.last_trigger_ms.get_or_insert(now_ms);
    }

    /// Whether the coordinator has polled yet.
    pub(super) fn started(&self) -> bool {
        self.last_trigger_ms.is_some()
    }

    /// Why a checkpoint is due now, if one is: a `manual` request at once,
    /// the interval or a `changed` volume outside the minimum pause.
    pub(super) fn due(&self, now_ms: u64, manual: bool, changed: u64) -> Option<TriggerCause> {
        assert!(
            self.started(),
            "a checkpoint is due only once the coordinator polls"
        );
        let paused = self
            .last_end_ms
            .is_some_and(|t| now_ms < t + self.min_pause_ms);
        let interval_due = self.interval_ms > 0
            && self
                .last_trigger_ms
                .is_none_or(|t| now_ms >= t + self.interval_ms);
        let volume_due = self
            .trigger_after_changed_bytes
            .is_some_and(|limit| changed.saturating_sub(self.changed_at_trigger) >= limit);
        let cause = if manual {
            TriggerCause::Manual
        } else if interval_due && !paused {
            TriggerCause::Interval
        } else if volume_due && !paused {
            TriggerCause::ChangeVolume
        } else {
            return None;
        };
        assert!(
            (cause == TriggerCause::Manual) == manual,
            "a manual request always triggers, and only it is manual"
        );
        Some(cause)
    }

    /// A checkpoint was triggered at `now_ms`, with `changed` bytes of state
    /// changed so far.
    pub(super) fn triggered(&mut self, now_ms: u64, changed: u64) {
        assert!(
            self.started(),
            "a checkpoint is triggered only once the coordinator polls"
        );
        self.changed_at_trigger = changed;
        self.last_trigger_ms = Some(now_ms);
    }

    /// A checkpoint ended (completed, failed or declined) at `now_ms`: the
    /// minimum pause starts.
    pub(super) fn ended(&mut self, now_ms: u64) {
        self.last_end_ms = Some(now_ms);
    }

    /// When a checkpoint may be due next without a request: the interval
    /// (after the minimum pause) or the next look at the change volume
    /// (`None`: only manual checkpoints).
    pub(super) fn next_trigger(&self, now_ms: u64) -> Option<u64> {
        let interval = (self.interval_ms > 0).then(|| {
            let after_interval = self
                .last_trigger_ms
                .map_or(now_ms + self.interval_ms, |t| t + self.interval_ms);
            let after_pause = self.last_end_ms.map_or(0, |t| t + self.min_pause_ms);
            after_interval.max(after_pause)
        });
        // The change-volume trigger is polled.
        let volume = self
            .trigger_after_changed_bytes
            .map(|_| now_ms + CHANGE_VOLUME_POLL_MS);
        assert!(
            interval.is_none_or(|t| self.last_end_ms.is_none_or(|e| t >= e + self.min_pause_ms)),
            "the next periodic trigger is never within the minimum pause"
        );
        let next = [interval, volume].into_iter().flatten().min();
        assert!(
            next.is_some() == (self.interval_ms > 0 || self.trigger_after_changed_bytes.is_some()),
            "periodic and change-volume checkpoints always have a next trigger"
        );
        next
    }
}
