//! Typed errors, one enum per operation. Each variant says what failed and where
//! (segment, offset, file name). Operating errors (disk full, I/O error, corrupt
//! bytes) are values of these types; programmer errors are assertions.

use std::io;

use crate::format::{BlockHandle, FormatError, SegmentId};

/// Opening a [`Store`](crate::Store) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// An I/O operation on `name` failed.
    #[error("{op} {name:?}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file (empty for the directory).
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// [`StoreOptions`](crate::StoreOptions) are out of range.
    #[error("invalid store options: {0}")]
    InvalidOptions(&'static str),
    /// Segment files exist but no manifest does: the checkpoints they held
    /// are lost, and opening would delete them as orphans. Damage, not an
    /// empty store (unless [`StoreOptions::start_over_lost_manifest`](crate::StoreOptions::start_over_lost_manifest)).
    #[error("the store holds {segments} segment file(s) but no MANIFEST-* file: its checkpoints are lost or the manifest was removed; restore the manifest, or start over explicitly (the segments are then deleted)")]
    ManifestMissing {
        /// Segment files found.
        segments: usize,
    },
    /// The directory is locked by another writer.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

/// Writing or syncing a segment failed. Every handle returned since the last
/// successful flush is invalid; the writer continues in a new segment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// An I/O operation on a segment failed.
    #[error("{op} segment {segment} at offset {offset}: {source}")]
    Io {
        /// The operation (`create`, `write`, `fdatasync`).
        op: &'static str,
        /// The segment.
        segment: SegmentId,
        /// Offset of the write (0 for other operations).
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A write completed only partially.
    #[error("short write to segment {segment} at offset {offset}: {written} of {expected} bytes")]
    ShortWrite {
        /// The segment.
        segment: SegmentId,
        /// Offset of the write.
        offset: u64,
        /// Bytes requested.
        expected: usize,
        /// Bytes written.
        written: usize,
    },
    /// Syncing the store directory (after creating segment files) failed.
    #[error("sync of the store directory: {0}")]
    SyncDir(#[source] io::Error),
}

/// Committing a checkpoint (or a compaction) failed. Earlier checkpoints are intact.
///
/// After a [`CommitError::Manifest`] the outcome is uncertain only across a crash:
/// the running store treats the checkpoint as failed (it is not listed, and the next
/// commit rewrites the manifest from memory), but if the process crashes first and
/// the record happened to reach the disk, recovery may find it, complete and readable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Checkpoint ids must increase strictly.
    #[error("checkpoint id {id} is not above the latest committed id {latest}")]
    NonMonotonicId {
        /// The id given.
        id: u64,
        /// The latest committed id.
        latest: u64,
    },
    /// A handle names a segment the store does not know (never written or deleted).
    #[error("handle {handle:?} names an unknown or deleted segment")]
    UnknownSegment {
        /// The handle.
        handle: BlockHandle,
    },
    /// A handle names bytes that are not durable yet (its writer was not flushed).
    #[error("handle {handle:?} is not durable: flush its segment writer first")]
    NotDurable {
        /// The handle.
        handle: BlockHandle,
    },
    /// A handle is malformed.
    #[error("invalid handle {handle:?}: {source}")]
    InvalidHandle {
        /// The handle.
        handle: BlockHandle,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// Writing or syncing the manifest failed.
    #[error("manifest {file:?}: {source}")]
    Manifest {
        /// The manifest file.
        file: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Reading a block failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The segment file does not exist.
    #[error("segment {segment} ({name}) is missing")]
    MissingSegment {
        /// The segment.
        segment: SegmentId,
        /// Its file name.
        name: String,
    },
    /// I/O on the segment or manifest failed.
    #[error("reading {name:?}: {source}")]
    Io {
        /// The file.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The block is corrupt or truncated.
    #[error("corrupt block in segment {segment} at offset {offset}: {source}")]
    Corrupt {
        /// The segment.
        segment: SegmentId,
        /// Offset of the block header.
        offset: u64,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// No such checkpoint in the manifest.
    #[error("checkpoint {0} is not in the manifest")]
    UnknownCheckpoint(u64),
}

/// Compaction failed; the store is unchanged (copied blocks become garbage).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// Reading a live block failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the copies failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Committing the relocation failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
}
