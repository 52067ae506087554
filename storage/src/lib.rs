//! `spate-storage`: the log-structured checkpoint store of Spate.
//!
//! It stores opaque blocks in per-writer append-only segment files (written with
//! O_DIRECT through io_uring, on the writer's own reactor), commits checkpoint
//! records to a CRC-framed manifest log (whose `fdatasync` is the commit point), and
//! reads blocks back zero-copy from `mmap`, 16-byte aligned for `rkyv::access`.
//!
//! What it owns: the byte format ([`format`], specified in `docs/storage-format.md`),
//! every file in a store directory, retention, garbage collection and compaction.
//! What it must not know: operators, key groups, what a block or checkpoint metadata
//! means. The engine refers to blocks from its metadata by *index* into
//! [`CheckpointRecord::handles`], so compaction can move blocks.
//!
//! Map:
//! - [`io`]: the I/O trait and the real glommio backend; [`sim`]: the simulated one.
//! - [`format`]: pure encoders and decoders for blocks, handles, manifest records.
//! - [`writer`]: [`SegmentWriter`], one per writer id (core).
//! - [`manifest`]: manifest log and replay.
//! - [`store`]: [`Store`]: open, commit, retention, GC, compaction.
//! - [`reader`]: [`StoreReader`]: read-only, `Send + Sync`, mmap, verification.
//! - [`lock`]: [`DirLock`], one writing process per directory.
//! - [`remote`]: the remote tier (S3, `file://`): upload of committed checkpoints,
//!   create-only remote commit records, restore into an empty directory, remote
//!   retention and GC, over a small object-request trait with a simulated backend.
//! - [`gc`]: garbage collection from outside a running store (for tools): a
//!   conservative plan from the manifest and the directory, and deleting it.
//! - [`error`]: typed errors per operation.
//!
//! Invariants: a reactor never blocks on store I/O (writes and syncs are io_uring
//! futures); nothing referenced by a retained checkpoint is ever deleted; a checkpoint
//! is reported only if its manifest record is fully valid; bytes read from disk never
//! cause a panic.

pub mod error;
pub mod format;
pub mod gc;
pub mod io;
pub mod lock;
pub mod manifest;
pub mod reader;
pub mod remote;
pub mod sim;
pub mod store;
pub mod writer;

pub use error::{CommitError, CompactError, OpenError, ReadError, WriteError};
pub use format::{
    BlockHandle, BlockKind, CheckpointRecord, FormatError, ManifestRecord, SegmentId,
};
pub use io::{GlommioIo, Io};
pub use lock::{DirLock, DirUse, LockError};
pub use reader::{BlockRef, StoreReader};
pub use sim::SimIo;
pub use store::{CommitReport, CompactionReport, OpenReport, Store, StoreOptions, StoreWarning};
pub use writer::{SegmentWriter, WriterSlot};
