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
    Checkpoint(String),
    /// The checkpoint to resume from cannot be used.
    #[error("restore: {0}")]
    Restore(String),
    /// The state directory is locked by another process, or used by another
    /// job of this one.
    #[error("state directory: {0}")]
    StateDirectory(#[from] spate_storage::LockError),
    /// The job's configuration is invalid.
    #[error("invalid job configuration: {0}")]
    Config(String),
    /// The runtime could not start or run a reactor.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The deterministic simulator found no runnable subtask before the job ended.
    #[error("simulation stalled after {steps} steps (seed {seed}): no subtask can make progress")]
    Stalled {
        /// Steps taken before the stall.
        steps: u64,
        /// The seed of the run, to reproduce it.
        seed: u64,
    },
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
