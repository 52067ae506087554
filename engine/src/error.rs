//! Typed errors of a job run. Operating errors (bad input, a failing operator,
//! I/O) are values of [`JobError`]; programmer errors are assertions.

/// The error a user function returns to fail the job (like an exception
/// thrown from Flink's `processElement`).
pub type ProcessError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a job run ended without finishing its input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// A user function returned an error.
    #[error("operator `{operator}` on subtask {subtask} failed: {source}")]
    Operator {
        /// The operator's name.
        operator: String,
        /// The subtask (core) it ran on.
        subtask: usize,
        /// What the function returned.
        #[source]
        source: ProcessError,
    },
    /// A user function or the engine panicked.
    #[error("subtask {subtask} panicked: {message}")]
    Panic {
        /// The subtask (core) that panicked.
        subtask: usize,
        /// The panic payload, if it was a string.
        message: String,
    },
    /// A source could not read its input.
    #[error("source `{source_name}` on subtask {subtask}: {error}")]
    Source {
        /// The source's name.
        source_name: String,
        /// The subtask that read it.
        subtask: usize,
        /// What went wrong.
        error: SourceError,
    },
    /// A sink could not write its output.
    #[error("sink `{sink}` on subtask {subtask}: {error}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// The subtask that wrote it.
        subtask: usize,
        /// What went wrong.
        error: SinkError,
    },
    /// Checkpointing failed beyond what the job tolerates.
    #[error("checkpointing: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint to resume from cannot be used.
    #[error("restore: {0}")]
    Restore(#[from] RestoreError),
    /// The state directory is locked by another process, or used by another
    /// job of this one.
    #[error("state directory: {0}")]
    StateDirectory(#[from] spate_storage::LockError),
    /// The job's configuration is invalid.
    #[error("invalid job configuration: {0}")]
    Config(#[from] ConfigError),
    /// The runtime could not start or run a reactor.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The data plane between the processes of a cluster job failed: a
    /// peer unreachable, refused, gone or failed (the message names it).
    #[error("cluster: {0}")]
    Network(String),
    /// The deterministic simulator found no runnable subtask before the job ended.
    #[error("simulation stalled after {steps} steps (seed {seed}): no subtask can make progress")]
    Stalled {
        /// Steps taken before the stall.
        steps: u64,
        /// The seed of the run, to reproduce it.
        seed: u64,
    },
}

/// Checkpointing failed beyond what the job tolerates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The store could not be opened.
    #[error("cannot open the store in {}: {source}", dir.display())]
    OpenStore {
        /// The state directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: spate_storage::OpenError,
    },
    /// Whether the remote tier committed a checkpoint is unknown: the run
    /// stops (a restart restores what the remote tier holds).
    #[error("remote tier {url}: {reason}")]
    RemoteCommitUnknown {
        /// The remote URL (no query, no credential).
        url: String,
        /// Why.
        reason: String,
    },
    /// The cluster's commit point did not complete global checkpoint `id`
    /// and this run must stop: its outcome is unknown, or this leader was
    /// deposed. The checkpoint is kept; a restart's leader reads the commit
    /// point to learn whether it completed.
    #[error("global checkpoint {id} at the commit point: {reason}")]
    CommitPointStops {
        /// The checkpoint.
        id: u64,
        /// Where and why.
        reason: String,
    },
    /// Checkpoints failed more often in a row than `tolerable_failures`.
    #[error("{reason}")]
    TooManyFailures {
        /// The coordinator's account of the failures.
        reason: String,
    },
    /// State, timers or in-flight records could not be archived.
    #[error("{what}: {reason}")]
    Archive {
        /// What: operator, subtask, checkpoint.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The checkpoint to resume from cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// A cluster job's global checkpoint records cannot be read.
    #[error("the global checkpoint records in {}: {reason}", dir.display())]
    ClusterRecords {
        /// The directory of the records.
        dir: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The state directory cannot be read.
    #[error("cannot open {}: {source}", dir.display())]
    Open {
        /// The state directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: spate_storage::ReadError,
    },
    /// The remote tier failed while choosing or downloading a checkpoint.
    #[error("remote tier {url}: {source}")]
    Remote {
        /// The remote URL (no query, no credential).
        url: String,
        /// Why.
        #[source]
        source: spate_storage::remote::RemoteError,
    },
    /// The remote URL is malformed or its client cannot be built.
    #[error("{0}")]
    RemoteUrl(String),
    /// The local store does not hold the newest remote checkpoint (it belongs
    /// to another history, or fell behind).
    #[error("the store in {} does not hold checkpoint {id}, the newest committed in {url}: move the directory away (or empty it) to restore from the remote tier", dir.display())]
    LocalBehindRemote {
        /// The state directory.
        dir: std::path::PathBuf,
        /// The remote checkpoint.
        id: u64,
        /// The remote URL.
        url: String,
    },
    /// The directory holds a restore from a remote tier that did not complete
    /// (its segment files may have holes), and the job has no remote tier.
    #[error("{} holds a restore from a remote tier that did not complete (the file remote-fill.incomplete): configure the same remote tier to restore again, or empty the directory", dir.display())]
    InterruptedRemoteRestore {
        /// The state directory.
        dir: std::path::PathBuf,
    },
    /// Segment files exist but no manifest does.
    #[error("{} holds {segments} segment file(s) but no MANIFEST-* file: the checkpoints are lost or the manifest was removed, which is damage, not a fresh start; restore the manifest, or start fresh explicitly (RestoreFrom::Nothing, `--fresh`), which deletes the segments", dir.display())]
    ManifestMissing {
        /// The state directory.
        dir: std::path::PathBuf,
        /// Segment files found.
        segments: usize,
    },
    /// The checkpoint asked for (`RestoreFrom::Checkpoint`) does not read back.
    #[error("checkpoint {id} cannot be restored: {}", problems.join("; "))]
    CheckpointUnusable {
        /// The checkpoint.
        id: u64,
        /// What is wrong with it.
        problems: Vec<String>,
    },
    /// Checkpoints exist and none of them reads back.
    #[error("no checkpoint in {} can be restored: {}", dir.display(), problems.join("; "))]
    NoneIntact {
        /// The state directory.
        dir: std::path::PathBuf,
        /// What is wrong with each.
        problems: Vec<String>,
    },
    /// A state's type changed since the checkpoint in a way the job cannot
    /// restore (its archived layout differs; `docs/checkpoints.md`, "State
    /// evolution"). Names the operator, the state and the field.
    #[error("checkpoint {id} cannot be restored: the type of state `{state}` of operator `{operator}` changed at field `{field}`: {reason}; a changed layout cannot be restored (see \"State evolution\" in docs/checkpoints.md): start fresh, use another state directory, or keep the old type")]
    IncompatibleState {
        /// The checkpoint.
        id: u64,
        /// The operator.
        operator: String,
        /// The state (`__timers` for the operator's timers).
        state: String,
        /// The field that differs, from the state's key or value (`value.address.city`).
        field: String,
        /// How it differs.
        reason: String,
    },
    /// The type of the records in flight into an operator's input changed
    /// since an unaligned checkpoint persisted some of them.
    #[error("checkpoint {id} cannot be restored: the records in flight into input {input} of operator `{operator}` changed type at field `{field}`: {reason}; start fresh, or restore with the old record type")]
    IncompatibleRecords {
        /// The checkpoint.
        id: u64,
        /// The operator.
        operator: String,
        /// Its input (0 or 1).
        input: u32,
        /// The field that differs, from the record (`record.price`).
        field: String,
        /// How it differs.
        reason: String,
    },
    /// The checkpoint was taken by another job (other operators or states).
    #[error("checkpoint {id} was taken by an incompatible job (fingerprint {found:016x}, this job {expected:016x}): start fresh or use another state directory")]
    IncompatibleJob {
        /// The checkpoint.
        id: u64,
        /// Its job fingerprint.
        found: u64,
        /// This job's.
        expected: u64,
    },
    /// The job's max parallelism differs from the checkpoint's.
    #[error("checkpoint {id} has max parallelism {checkpoint} and the job {job}: max parallelism cannot change")]
    MaxParallelismChanged {
        /// The checkpoint.
        id: u64,
        /// The checkpoint's max parallelism.
        checkpoint: u32,
        /// The job's.
        job: u32,
    },
    /// A source without splits cannot restore on another parallelism.
    #[error("checkpoint {id} was taken with {checkpoint} subtasks and source `{source_name}` has one offset per subtask (it has no splits): it cannot restore on {job}")]
    SourceNotRescalable {
        /// The checkpoint.
        id: u64,
        /// The source.
        source_name: String,
        /// The checkpoint's parallelism.
        checkpoint: u32,
        /// The job's.
        job: usize,
    },
    /// Part of the checkpoint is damaged or does not decode.
    #[error("{what}: {reason}")]
    Damaged {
        /// What: checkpoint, operator, state, block.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The job's configuration is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting is out of its range.
    #[error("{setting} {reason}")]
    Invalid {
        /// The setting, as the API or the command line names it.
        setting: &'static str,
        /// What it must be, and what it is.
        reason: String,
    },
    /// Settings that do not go together.
    #[error("{0}")]
    Conflict(String),
}

impl ConfigError {
    /// An invalid `setting`.
    pub fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting,
            reason: reason.into(),
        }
    }
}

/// An error from a [`Source`](crate::source::Source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A record could not be parsed.
    #[error("malformed record at {location}: {reason}")]
    Malformed {
        /// Where: file and line, or offset.
        location: String,
        /// What the parser said.
        reason: String,
    },
    /// Reading the input failed.
    #[error("I/O error on {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The source cannot seek to the requested offset.
    #[error("cannot seek to offset {offset}: {reason}")]
    Seek {
        /// The requested offset.
        offset: u64,
        /// Why not.
        reason: String,
    },
    /// Any other source failure.
    #[error("{0}")]
    Other(String),
}

/// An error from a [`Sink`](crate::sink::Sink).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The consumer of an egress sink went away.
    #[error("the receiving side is gone")]
    Disconnected,
    /// A restore needs output the sink already committed rolled back (it
    /// belongs to checkpoints the restored one does not cover), and this
    /// sink cannot roll it back.
    #[error("cannot roll back committed output: {0}")]
    CannotRollBack(String),
    /// Any other sink failure.
    #[error("{0}")]
    Other(String),
}

/// Renders a panic payload as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
