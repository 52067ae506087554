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
    /// Run as one process of a job spread over several ([`ClusterConfig`]);
    /// `None` (the default): the job is this process alone.
    pub cluster: Option<ClusterConfig>,
}

/// One process of a job that runs in several (the same binary and build
/// closure in each): process `process` of `processes`, each with
/// [`JobConfig::parallelism`] reactors. The job then has
/// `parallelism × processes` subtasks; this process runs subtasks
/// `process × parallelism ..`, and key groups and source splits are assigned
/// over all of them as over cores. Exchanges between processes go over TCP
/// (`docs/cluster.md`).
#[derive(Clone)]
pub struct ClusterConfig {
    /// This process's index, `0..processes`.
    pub process: usize,
    /// How many processes run the job (every one with the same parallelism).
    pub processes: usize,
    /// Where every process listens for the data plane, indexed by process;
    /// this process binds `peers[process]`.
    pub peers: Vec<std::net::SocketAddr>,
    /// The job's name: a process of another job is refused even if it
    /// knows the same secret (the handshake's proofs cover the name).
    pub job: String,
    /// The job's shared secret: a peer proves it knows it (HMAC-SHA256 over
    /// fresh nonces) before any data or control message; it never crosses
    /// the network.
    pub secret: Vec<u8>,
    /// How long to wait for every peer to connect at the start of a run.
    pub connect_timeout: std::time::Duration,
    /// How long a connection's writer waits after a write of 16 KiB or
    /// more (the channels to that peer are busy) before it collects the
    /// next one, so that the batches arriving meanwhile leave in one write:
    /// fewer, larger writes wake the link threads at both ends less often.
    /// Flink's buffer timeout, applied only under load: a batch that finds
    /// the connection idle leaves at once. Zero: never waits.
    /// [`DEFAULT_BUSY_LINGER`] is a good start (`docs/cluster.md` §11).
    pub busy_linger: std::time::Duration,
    /// Where completed global checkpoints are recorded beyond the
    /// checkpoint directory (etcd's checkpoint pointer in `spate-bench`);
    /// `None`: the global record's file is the commit point
    /// (`docs/cluster.md` §15).
    pub commit_point: Option<std::sync::Arc<dyn crate::checkpoint::global::CommitPoint>>,
}

impl PartialEq for ClusterConfig {
    fn eq(&self, other: &Self) -> bool {
        self.process == other.process
            && self.processes == other.processes
            && self.peers == other.peers
            && self.job == other.job
            && self.secret == other.secret
            && self.connect_timeout == other.connect_timeout
            && self.busy_linger == other.busy_linger
            && match (&self.commit_point, &other.commit_point) {
                (None, None) => true,
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("process", &self.process)
            .field("processes", &self.processes)
            .field("peers", &self.peers)
            .field("job", &self.job)
            .field("secret", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("busy_linger", &self.busy_linger)
            .field(
                "commit_point",
                &self.commit_point.as_ref().map(|c| c.describe()),
            )
            .finish()
    }
}

/// [`ClusterConfig::busy_linger`]'s suggested value: 1 ms. On 2 cores, q5
/// in 2 processes of 1 core ran at 6–7.6 M events/s without it and
/// 9.2–10.2 M with it (one process of 2 cores: about 10.5 M), while q3's
/// latency across processes at 2 M events/s kept its p50 and p99
/// (`bench/README.md`).
pub const DEFAULT_BUSY_LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Shortest shared secret accepted, in bytes.
pub const MIN_CLUSTER_SECRET: usize = 16;

impl ClusterConfig {
    /// Checks the cluster settings against the rest of the job's.
    fn validate(&self, job: &JobConfig) -> Result<(), JobError> {
        if self.processes == 0 || self.process >= self.processes {
            return Err(ConfigError::invalid(
                "cluster process",
                format!(
                    "process {} of {} does not exist (processes are numbered from 0)",
                    self.process, self.processes
                ),
            )
            .into());
        }
        if self.peers.len() != self.processes {
            return Err(ConfigError::invalid(
                "cluster peers",
                format!(
                    "{} addresses for {} processes: give one per process",
                    self.peers.len(),
                    self.processes
                ),
            )
            .into());
        }
        if self.secret.len() < MIN_CLUSTER_SECRET {
            return Err(ConfigError::invalid(
                "cluster secret",
                format!(
                    "{} bytes; at least {MIN_CLUSTER_SECRET} are needed",
                    self.secret.len()
                ),
            )
            .into());
        }
        let total = job.parallelism as u64 * self.processes as u64;
        if total > job.max_parallelism as u64 {
            return Err(ConfigError::Conflict(format!(
                "{} processes × parallelism {} exceeds max_parallelism {}",
                self.processes, job.parallelism, job.max_parallelism
            ))
            .into());
        }
        if let Some(c) = &job.checkpoint {
            // The leader runs one global checkpoint at a time, and a part
            // store must still hold the last completed checkpoint while it
            // prepares the next one (`docs/cluster.md` §15).
            let refused = if c.max_concurrent != 1 {
                Some("max_concurrent must be 1: the leader runs one checkpoint at a time")
            } else if c.retained < 2 {
                Some("retained must be at least 2: a part store keeps the last completed checkpoint while it prepares the next")
            } else if c.trigger_after_changed_bytes.is_some() {
                Some("the change-volume trigger is not supported across processes yet: the leader triggers by interval and on request")
            } else {
                None
            };
            if let Some(why) = refused {
                return Err(
                    ConfigError::Conflict(format!("checkpoints of a cluster job: {why}")).into(),
                );
            }
        }
        Ok(())
    }
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
            cluster: None,
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

    /// Subtasks of the whole job: [`JobConfig::parallelism`] times the
    /// processes of its cluster.
    pub fn total_parallelism(&self) -> usize {
        self.parallelism * self.cluster.as_ref().map_or(1, |c| c.processes)
    }

    /// The first subtask this process runs; it runs
    /// `first_subtask() .. first_subtask() + parallelism`.
    pub fn first_subtask(&self) -> usize {
        self.parallelism * self.cluster.as_ref().map_or(0, |c| c.process)
    }

    /// The configuration this process runs with: in a cluster job that
    /// checkpoints, [`CheckpointConfig::dir`](crate::CheckpointConfig::dir)
    /// names the job's checkpoint directory, shared by its processes, and
    /// each process keeps its store in `process-<p>` under it (the leader
    /// keeps the global records in `cluster/`, `docs/cluster.md` §15).
    pub(crate) fn for_this_process(mut self) -> Self {
        if let (Some(cluster), Some(c)) = (&self.cluster, &mut self.checkpoint) {
            c.dir = crate::checkpoint::global::files::part_dir(&c.dir, cluster.process as u32);
        }
        self
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
        if let Some(cluster) = &self.cluster {
            cluster.validate(self)?;
        }
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

    #[test]
    fn a_cluster_is_checked_and_refuses_what_it_cannot_do_yet() {
        let cluster = |process, processes, peers: usize, secret: &str| JobConfig {
            parallelism: 2,
            cluster: Some(ClusterConfig {
                process,
                processes,
                peers: (0..peers)
                    .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)))
                    .collect(),
                job: "orders".into(),
                secret: secret.as_bytes().to_vec(),
                connect_timeout: std::time::Duration::from_secs(1),
                busy_linger: DEFAULT_BUSY_LINGER,
                commit_point: None,
            }),
            ..JobConfig::default()
        };
        let good = cluster(1, 3, 3, "sixteen-bytes-ok");
        assert!(good.validate().is_ok());
        let checkpointing = JobConfig {
            checkpoint: Some(CheckpointConfig::new("/job", 100)),
            ..good.clone()
        };
        assert!(checkpointing.validate().is_ok());
        assert_eq!(
            checkpointing.for_this_process().checkpoint.unwrap().dir,
            std::path::Path::new("/job/process-1")
        );
        assert_eq!((good.total_parallelism(), good.first_subtask()), (6, 2));
        assert!(
            !format!("{good:?}").contains("sixteen"),
            "the secret is not printed"
        );
        for (bad, word) in [
            (cluster(3, 3, 3, "sixteen-bytes-ok"), "process 3 of 3"),
            (cluster(0, 3, 2, "sixteen-bytes-ok"), "2 addresses"),
            (cluster(0, 3, 3, "short"), "secret"),
            (
                JobConfig {
                    checkpoint: Some(CheckpointConfig {
                        max_concurrent: 2,
                        ..CheckpointConfig::new("/unused", 100)
                    }),
                    ..cluster(0, 3, 3, "sixteen-bytes-ok")
                },
                "max_concurrent must be 1",
            ),
            (
                JobConfig {
                    checkpoint: Some(CheckpointConfig {
                        retained: 1,
                        ..CheckpointConfig::new("/unused", 100)
                    }),
                    ..cluster(0, 3, 3, "sixteen-bytes-ok")
                },
                "retained must be at least 2",
            ),
            (
                JobConfig {
                    max_parallelism: 4,
                    ..cluster(0, 3, 3, "sixteen-bytes-ok")
                },
                "exceeds max_parallelism",
            ),
        ] {
            let error = bad.validate().unwrap_err().to_string();
            assert!(error.contains(word), "{error}");
        }
    }
}
