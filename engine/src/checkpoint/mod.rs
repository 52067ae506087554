//! Checkpoints: barriers, snapshots, the coordinator and restore.
//!
//! Owns the checkpoint protocol (`docs/checkpoints.md`): a [`coordinator`] triggers
//! checkpoint `n` at every subtask; sources record their offsets and push a
//! barrier down their chains; barriers cross exchanges in-band (a marker at
//! ring position `P`) and out-of-band (a [`crate::ring::Notice`] carrying `P`);
//! receivers align them ([`CheckpointMode::Aligned`]), let the first one
//! trigger the snapshot and persist the channels' in-flight records
//! ([`CheckpointMode::Unaligned`]), switch from the first to the second after a
//! timeout, or never block ([`CheckpointMode::AtLeastOnce`]). Operators archive
//! their keyed state per key group with rkyv (`subtask.rs`); the blocks go to the
//! store asynchronously and the coordinator commits the checkpoint's metadata
//! ([`metadata`]) to the manifest; `restore.rs` reads it back.
//!
//! Must not touch glommio: the runtime and the simulator drive the same code.

mod assemble;
pub mod coordinator;
pub mod global;
pub mod metadata;
pub(crate) mod remote;
pub(crate) mod restore;
mod schedule;
mod shared;
mod stats;
pub(crate) mod subtask;

use std::path::PathBuf;

pub use metadata::CheckpointMetadata;
pub use stats::{CheckpointStats, CheckpointStatus, TriggerCause};

/// How barriers are handled at inputs with several channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Exactly-once: a channel that delivered the barrier is not read until
    /// every channel has; no in-flight data is stored.
    Aligned,
    /// Exactly-once: the first barrier (in-band or out-of-band) triggers the
    /// snapshot; records in flight before each channel's barrier are persisted
    /// with the checkpoint. Processing never blocks.
    Unaligned,
    /// Aligned, switching to unaligned when alignment lasts longer than the
    /// timeout.
    AlignedWithTimeout {
        /// Alignment time after which the checkpoint goes unaligned.
        timeout_ms: u64,
    },
    /// Never blocks and stores no in-flight data; records may be replayed
    /// twice after recovery.
    AtLeastOnce,
}

impl CheckpointMode {
    /// The mode's name as the tools print it.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointMode::Aligned => "aligned",
            CheckpointMode::Unaligned => "unaligned",
            CheckpointMode::AlignedWithTimeout { .. } => "aligned-timeout",
            CheckpointMode::AtLeastOnce => "at-least-once",
        }
    }

    /// Parses a name as printed by [`name`](Self::name) (the timeout of
    /// `aligned-timeout` is given separately).
    pub fn from_name(name: &str, alignment_timeout_ms: u64) -> Option<Self> {
        Some(match name {
            "aligned" => CheckpointMode::Aligned,
            "unaligned" => CheckpointMode::Unaligned,
            "aligned-timeout" => CheckpointMode::AlignedWithTimeout {
                timeout_ms: alignment_timeout_ms,
            },
            "at-least-once" => CheckpointMode::AtLeastOnce,
            _ => return None,
        })
    }
}

/// Where a job starts from when its checkpoint directory holds checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The latest completed checkpoint that reads back intact (an unreadable
    /// latest one is reported and the previous one used).
    Latest,
    /// A given checkpoint id.
    Checkpoint(u64),
    /// The latest completed checkpoint with an id of at least this one that
    /// reads back intact; nothing if there is none, an error if there are
    /// some and none reads back. Checkpoints below it belong to an earlier
    /// job on the same directory, which a restore must not fall back into
    /// (the supervisor's restarts and a resumed benchmark use it).
    LatestFrom(u64),
    /// Ignore existing checkpoints and start fresh (they are kept until
    /// retention removes them).
    Nothing,
}

/// Checkpointing of a job (Flink's `CheckpointConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointConfig {
    /// The state directory: segments and manifest live here.
    pub dir: PathBuf,
    /// Time between checkpoint triggers; 0 disables periodic checkpoints
    /// (manual triggers still work).
    pub interval_ms: u64,
    /// Minimum time from the end of one checkpoint to the next trigger.
    pub min_pause_ms: u64,
    /// A checkpoint not complete after this long is declared failed.
    pub timeout_ms: u64,
    /// Checkpoints that may be in progress at once (1 to 16; above 1 only
    /// in the aligned mode, as in Flink). They complete in order: a later
    /// one that is ready waits for the earlier ones to complete or fail.
    pub max_concurrent: usize,
    /// Consecutive failed checkpoints tolerated; one more fails the job.
    pub tolerable_failures: u32,
    /// Completed checkpoints retained in the store.
    pub retained: usize,
    /// Barrier handling.
    pub mode: CheckpointMode,
    /// Where to start from.
    pub restore: RestoreFrom,
    /// Write only what changed since the last completed checkpoint (deltas
    /// on a base), materialising fresh bases gradually.
    pub incremental: bool,
    /// Most deltas on one base before the key group is materialised (each
    /// key group at a fixed share of this, between half and all, so that
    /// bases spread over checkpoints). Longer chains mean fewer base bytes
    /// per checkpoint and more blocks to read on restore (default 16);
    /// `max_delta_ratio` bounds the space either way.
    pub max_delta_chain: u32,
    /// A key group is materialised once its deltas outweigh its base by
    /// this factor (bounds the space overhead).
    pub max_delta_ratio: f64,
    /// Besides the interval: trigger as soon as this many bytes of keyed
    /// state changed since the last trigger (estimated as changed keys times
    /// the in-memory size of an entry), which bounds the work of a recovery.
    pub trigger_after_changed_bytes: Option<u64>,
    /// The remote tier: `s3://bucket/prefix` (credentials and settings from
    /// the environment and the AWS files; `?endpoint=…&region=…&allow_http=true`
    /// accepted) or `file:///path`. With one, a checkpoint is complete only
    /// once it is committed remotely, restores use remotely committed
    /// checkpoints only, and an empty `dir` is filled from the remote tier.
    pub remote: Option<String>,
    /// Bytes of a subtask's archived blocks that may wait for its writer.
    /// Past this, archiving a checkpoint in the background waits, and a
    /// write to a key group not archived yet keeps the written entry's value
    /// at the cut instead of archiving the whole group (copy-on-write per
    /// entry, as Flink's heap state does): memory during a checkpoint is the
    /// state, this budget, and the entries written before the writer caught
    /// up, rather than a second copy of the state (default 16 MiB).
    pub archive_backlog_bytes: usize,
}

impl CheckpointConfig {
    /// Checkpoints every `interval_ms` into `dir`, aligned, with Flink-like
    /// defaults for the other knobs (timeout 10 min, no pause, one at a time,
    /// no tolerated failure, 3 retained), resuming from the latest checkpoint.
    pub fn new(dir: impl Into<PathBuf>, interval_ms: u64) -> Self {
        Self {
            dir: dir.into(),
            interval_ms,
            min_pause_ms: 0,
            timeout_ms: 600_000,
            max_concurrent: 1,
            tolerable_failures: 0,
            retained: 3,
            mode: CheckpointMode::Aligned,
            restore: RestoreFrom::Latest,
            incremental: false,
            max_delta_chain: 16,
            max_delta_ratio: 1.0,
            trigger_after_changed_bytes: None,
            remote: None,
            archive_backlog_bytes: 16 << 20,
        }
    }
}

impl CheckpointConfig {
    /// How a run opens its store, having restored checkpoint `restored`:
    /// the newer checkpoints are discarded at open (a restore that fell back
    /// past damage, or to an older id on purpose, starts a branch, and its
    /// sinks roll back their output: no later restore may return to them);
    /// segments without a manifest are discarded only by a fresh start.
    pub(crate) fn store_options(&self, restored: Option<u64>) -> spate_storage::StoreOptions {
        spate_storage::StoreOptions {
            retained_checkpoints: self.retained,
            start_over_lost_manifest: self.restore == RestoreFrom::Nothing,
            discard_after: restored,
            ..spate_storage::StoreOptions::default()
        }
    }
}

/// A checkpoint barrier as it travels through a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Barrier {
    /// The checkpoint id.
    pub id: u64,
    /// Processing time of the trigger (epoch ms).
    pub trigger_ms: u64,
    /// How inputs handle it.
    pub mode: CheckpointMode,
}

/// From the coordinator to a subtask.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Control {
    /// Start checkpoint `barrier.id` at the sources.
    Trigger(Barrier),
    /// Checkpoint `id` failed or timed out: drop what is pending for it.
    Abort(u64),
    /// Checkpoint `id` is committed: later deltas build on it.
    Complete(u64),
}
