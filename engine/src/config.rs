//! Job configuration.

use crate::checkpoint::{CheckpointConfig, CheckpointMode};
use crate::keygroup::MAX_MAX_PARALLELISM;
use crate::monitor::MonitorConfig;
use crate::restart::RestartStrategy;
use crate::{ConfigError, JobError};

/// Most checkpoints that may be in progress at once (the control and
/// acknowledgement rings hold a few messages per checkpoint).
pub const MAX_CONCURRENT_CHECKPOINTS: usize = 16;

/// Longest checkpoint interval, minimum pause, timeout or alignment timeout
/// accepted: a week. The coordinator adds them to epoch milliseconds, so a
/// bound keeps that arithmetic far from overflowing; nothing longer is
/// useful for a checkpoint.
pub const MAX_CHECKPOINT_TIME_MS: u64 = 7 * 24 * 3600 * 1000;

/// How a job runs.
#[derive(Clone, Debug, PartialEq)]
pub struct JobConfig {
    /// Number of subtasks of every operator, one reactor each. Default: the
    /// number of available cores. May exceed the core count (reactors then
    /// share cores), which tests use.
    pub parallelism: usize,
    /// Number of key groups, the upper bound for rescaling (Flink's max
    /// parallelism). Default 128, at most 32768.
    pub max_parallelism: u32,
    /// Records per batch crossing a ring. Default 1024.
    pub batch_size: usize,
    /// Batches each exchange ring holds. Default 64.
    pub ring_capacity: usize,
    /// Pin reactor `i` to core `i mod cores`. Default true.
    pub pin_cores: bool,
    /// Checkpointing; `None` (the default) runs without fault tolerance.
    pub checkpoint: Option<CheckpointConfig>,
    /// What happens when a run fails. Default: [`RestartStrategy::None`].
    pub restart: RestartStrategy,
    /// Serve the job's metrics, checkpoint API and live page over HTTP from
    /// a thread of its own ([`crate::monitor`]). Default `None`: off.
    pub monitor: Option<MonitorConfig>,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            parallelism: core_affinity::get_core_ids()
                .map(|c| c.len())
                .unwrap_or(1)
                .max(1),
            max_parallelism: crate::keygroup::DEFAULT_MAX_PARALLELISM,
            batch_size: 1024,
            ring_capacity: 64,
            pin_cores: true,
            checkpoint: None,
            restart: RestartStrategy::None,
            monitor: None,
        }
    }
}

impl JobConfig {
    /// The defaults with `parallelism` subtasks.
    pub fn with_parallelism(parallelism: usize) -> Self {
        Self {
            parallelism,
            ..Self::default()
        }
    }

    /// Checks the configuration, naming the first bad setting.
    pub fn validate(&self) -> Result<(), JobError> {
        if self.parallelism == 0 {
            return Err(ConfigError::invalid("parallelism", "must be at least 1").into());
        }
        if self.max_parallelism == 0 || self.max_parallelism > MAX_MAX_PARALLELISM {
            return Err(ConfigError::invalid(
                "max_parallelism",
                format!(
                    "must be in 1..={MAX_MAX_PARALLELISM}, got {}",
                    self.max_parallelism
                ),
            )
            .into());
        }
        if self.parallelism as u64 > self.max_parallelism as u64 {
            return Err(ConfigError::Conflict(format!(
                "parallelism {} exceeds max_parallelism {}",
                self.parallelism, self.max_parallelism
            ))
            .into());
        }
        if self.batch_size == 0 {
            return Err(ConfigError::invalid("batch_size", "must be at least 1").into());
        }
        if self.ring_capacity < 2 {
            return Err(ConfigError::invalid("ring_capacity", "must be at least 2").into());
        }
        self.restart.validate()?;
        if let Some(monitor) = &self.monitor {
            monitor.validate()?;
        }
        if let Some(c) = &self.checkpoint {
            if c.max_concurrent == 0 || c.max_concurrent > MAX_CONCURRENT_CHECKPOINTS {
                return Err(ConfigError::invalid(
                    "checkpoint max_concurrent",
                    format!(
                        "must be between 1 and {MAX_CONCURRENT_CHECKPOINTS}, not {}",
                        c.max_concurrent
                    ),
                )
                .into());
            }
            if c.max_concurrent > 1 && c.mode != CheckpointMode::Aligned {
                // As in Flink: an unaligned barrier overtakes the in-flight
                // records of the checkpoint before it, and at-least-once
                // inputs would have to count several barriers at once.
                return Err(ConfigError::Conflict(format!(
                    "checkpoint max_concurrent {} needs the aligned mode, not {}",
                    c.max_concurrent,
                    c.mode.name()
                ))
                .into());
            }
            let alignment_timeout_ms = match c.mode {
                CheckpointMode::AlignedWithTimeout { timeout_ms } => timeout_ms,
                _ => 0,
            };
            for (name, ms) in [
                ("checkpoint interval_ms", c.interval_ms),
                ("checkpoint min_pause_ms", c.min_pause_ms),
                ("checkpoint timeout_ms", c.timeout_ms),
                ("checkpoint alignment timeout_ms", alignment_timeout_ms),
            ] {
                if ms > MAX_CHECKPOINT_TIME_MS {
                    return Err(ConfigError::invalid(
                        name,
                        format!("{ms} is longer than a week ({MAX_CHECKPOINT_TIME_MS} ms), the longest accepted"),
                    )
                    .into());
                }
            }
            if c.timeout_ms == 0 {
                return Err(
                    ConfigError::invalid("checkpoint timeout_ms", "must be positive").into(),
                );
            }
            if c.retained == 0 {
                return Err(
                    ConfigError::invalid("checkpoint retained", "must be at least 1").into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(max_concurrent: usize, mode: CheckpointMode) -> JobConfig {
        JobConfig {
            checkpoint: Some(CheckpointConfig {
                max_concurrent,
                mode,
                ..CheckpointConfig::new("/unused", 100)
            }),
            ..JobConfig::default()
        }
    }

    #[test]
    fn checkpoint_times_are_bounded() {
        let mut config = with(1, CheckpointMode::Aligned);
        let c = config.checkpoint.as_mut().unwrap();
        c.interval_ms = MAX_CHECKPOINT_TIME_MS;
        assert!(config.validate().is_ok());
        for set in [
            |c: &mut CheckpointConfig| c.interval_ms = u64::MAX,
            |c: &mut CheckpointConfig| c.min_pause_ms = MAX_CHECKPOINT_TIME_MS + 1,
            |c: &mut CheckpointConfig| c.timeout_ms = u64::MAX,
            |c: &mut CheckpointConfig| {
                c.mode = CheckpointMode::AlignedWithTimeout {
                    timeout_ms: u64::MAX,
                }
            },
        ] {
            let mut config = with(1, CheckpointMode::Aligned);
            set(config.checkpoint.as_mut().unwrap());
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("longer than a week"), "{error}");
        }
    }

    #[test]
    fn concurrent_checkpoints_need_the_aligned_mode_and_a_bound() {
        assert!(with(1, CheckpointMode::Unaligned).validate().is_ok());
        assert!(with(3, CheckpointMode::Aligned).validate().is_ok());
        for (n, mode) in [
            (0, CheckpointMode::Aligned),
            (MAX_CONCURRENT_CHECKPOINTS + 1, CheckpointMode::Aligned),
            (2, CheckpointMode::Unaligned),
            (2, CheckpointMode::AtLeastOnce),
            (2, CheckpointMode::AlignedWithTimeout { timeout_ms: 5 }),
        ] {
            let err = with(n, mode).validate().unwrap_err().to_string();
            assert!(err.contains("max_concurrent"), "{n} {mode:?}: {err}");
        }
    }
}
