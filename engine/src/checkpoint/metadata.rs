//! The engine's checkpoint metadata: what every block of a checkpoint holds,
//! source offsets and statistics. Archived with rkyv into the manifest
//! record's opaque payload; blocks are named by index into the record's
//! handle list (never by raw handle: compaction rewrites handles). The
//! schemas of the archived blocks ([`BlockSchema`]) are interned once per
//! record and named by index from each block's entry.

use crate::schema::BlockSchema;
use rkyv::{Archive, Deserialize, Serialize};

/// Version of this layout; bumped with any change to these types (2: block
/// schemas instead of Rust type names; `docs/storage-format.md` §6).
pub const METADATA_VERSION: u32 = 2;

/// A checkpoint's metadata cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The bytes are not a valid archive of [`CheckpointMetadata`].
    #[error("checkpoint metadata does not decode: {0}")]
    Decode(rkyv::rancor::Error),
    /// Another version of the layout.
    #[error("checkpoint metadata version {found} is not {METADATA_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
}

/// Name of the pseudo-table holding an operator's timers in checkpoints.
pub const TIMERS_TABLE: &str = "__timers";

/// Timers of one key group as archived: (timestamp, domain, key), domain 0 =
/// event time, 1 = processing time.
pub type TimerEntries<K> = Vec<(crate::time::Timestamp, u8, K)>;

/// One block of a key group's chain: a full base or a delta on what precedes it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChainBlock {
    /// Index into the manifest record's handles.
    pub handle: u32,
    /// A delta (upserts and deletes) rather than a full base.
    pub delta: bool,
    /// The checkpoint whose cut the block holds: the one that wrote it, or
    /// for a base materialised in the background, the one that requested it
    /// (the deltas after it in the chain are of later checkpoints).
    pub checkpoint: u64,
    /// Entries in the block (keys; upserts plus deletes for a delta).
    pub entries: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// The keyed state of one table of one operator in one key group: a base
/// block and the deltas to apply on it, oldest first.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StateBlock {
    /// Operator name.
    pub operator: String,
    /// State name within the operator (`__timers` for its timers).
    pub table: String,
    /// Key group.
    pub key_group: u32,
    /// Base first, then deltas.
    pub chain: Vec<ChainBlock>,
    /// Keys (or timers) after applying the chain.
    pub entries: u64,
    /// What the blocks archive: index into [`CheckpointMetadata::schemas`].
    pub schema: u32,
}

impl StateBlock {
    /// Payload bytes of the whole chain.
    pub fn bytes(&self) -> u64 {
        self.chain.iter().map(|b| b.bytes).sum()
    }
}

/// Records that were in flight on one channel of an exchange.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct InFlightBlock {
    /// The keyed operator the exchange feeds.
    pub operator: String,
    /// Which input of that operator (0 or 1).
    pub input: u32,
    /// Sending subtask.
    pub from: u32,
    /// Receiving subtask (the subtask that persisted them, for sender-side
    /// output the receiver they were meant for).
    pub to: u32,
    /// Index into the manifest record's handles.
    pub handle: u32,
    /// Records.
    pub records: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// What the block archives: index into [`CheckpointMetadata::schemas`].
    pub schema: u32,
}

/// A source subtask's position, or one split's.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SourceOffset {
    /// Source name.
    pub source: String,
    /// Subtask index, or split index if `split`.
    pub subtask: u32,
    /// Offset after the last record emitted before the barrier.
    pub offset: u64,
    /// `subtask` names a split of a split source (restorable on any
    /// parallelism), not a subtask.
    pub split: bool,
}

/// One subtask's figures for one checkpoint.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SubtaskStats {
    /// Subtask index.
    pub subtask: u32,
    /// Time spent snapshotting on the reactor (µs).
    pub sync_us: u64,
    /// From local completion to durable blocks (µs).
    pub async_us: u64,
    /// From the first barrier to the last, at the slowest input (µs).
    pub alignment_us: u64,
    /// Bytes of state written (full bases and deltas), counting the bases
    /// materialised in the background that this checkpoint is the first to
    /// reference (they were written for it, between checkpoints).
    pub state_bytes: u64,
    /// Of which deltas.
    pub delta_bytes: u64,
    /// Bytes of in-flight records written.
    pub in_flight_bytes: u64,
    /// Whether an aligned-with-timeout checkpoint went unaligned here.
    pub switched_to_unaligned: bool,
}

/// Everything the engine needs to restore a checkpoint.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMetadata {
    /// [`METADATA_VERSION`].
    pub version: u32,
    /// Checkpoint id.
    pub id: u64,
    /// Trigger time (epoch ms).
    pub trigger_ms: u64,
    /// Completion time (epoch ms).
    pub completed_ms: u64,
    /// Why it was triggered (see [`super::TriggerCause`]).
    pub cause: String,
    /// Barrier mode name.
    pub mode: String,
    /// Whether blocks are deltas on earlier checkpoints.
    pub incremental: bool,
    /// Subtasks of the job that took it.
    pub parallelism: u32,
    /// Key groups.
    pub max_parallelism: u32,
    /// The names of the job's sources, sinks, operators and states, hashed:
    /// a job with another fingerprint cannot restore this checkpoint (the
    /// states' types are checked by their schemas).
    pub fingerprint: u64,
    /// Keyed state blocks.
    pub state: Vec<StateBlock>,
    /// In-flight record blocks.
    pub in_flight: Vec<InFlightBlock>,
    /// Source offsets.
    pub sources: Vec<SourceOffset>,
    /// Per-subtask statistics.
    pub subtasks: Vec<SubtaskStats>,
    /// The schemas of the blocks, each once.
    pub schemas: Vec<BlockSchema>,
}

/// Whether undecodable metadata looks like version 1's, to say so rather
/// than "does not decode": version 1 had every field of version 2 but the
/// last (`schemas`, 8 bytes archived), so its root starts 8 bytes later and
/// begins with the version. Only the error's wording depends on it.
fn version_1(bytes: &[u8]) -> bool {
    let v1_root = std::mem::size_of::<ArchivedCheckpointMetadata>() - 8;
    bytes
        .len()
        .checked_sub(v1_root)
        .and_then(|at| bytes.get(at..at + 4))
        .is_some_and(|v| v == 1u32.to_le_bytes())
}

impl CheckpointMetadata {
    /// Archives the metadata.
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("metadata serialises")
            .to_vec()
    }

    /// Decodes metadata read from a manifest record; an error (never a panic)
    /// for anything that is not a valid archive of this version.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetadataError> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let metadata = rkyv::from_bytes::<CheckpointMetadata, rkyv::rancor::Error>(&aligned)
            .map_err(|e| match version_1(bytes) {
                true => MetadataError::Version { found: 1 },
                false => MetadataError::Decode(e),
            })?;
        if metadata.version != METADATA_VERSION {
            return Err(MetadataError::Version {
                found: metadata.version,
            });
        }
        Ok(metadata)
    }

    /// Bytes of state (whole chains) and in-flight blocks the checkpoint refers to.
    pub fn bytes(&self) -> u64 {
        self.state.iter().map(StateBlock::bytes).sum::<u64>() + self.in_flight_bytes()
    }

    /// Bytes this checkpoint added to the store (its new bases and deltas,
    /// the bases materialised in the background that it is the first to
    /// reference, its in-flight records): the subtasks' statistics.
    pub fn written_bytes(&self) -> u64 {
        self.subtasks.iter().map(|s| s.state_bytes).sum::<u64>() + self.in_flight_bytes()
    }

    /// Bytes of in-flight blocks.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight.iter().map(|b| b.bytes).sum()
    }

    /// Schema `index`, if the metadata has it.
    pub fn schema(&self, index: u32) -> Option<&BlockSchema> {
        self.schemas.get(index as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1's layout (its vectors empty: their element types do not
    /// matter to the root's size).
    #[derive(Archive, Serialize)]
    struct MetadataV1 {
        version: u32,
        id: u64,
        trigger_ms: u64,
        completed_ms: u64,
        cause: String,
        mode: String,
        incremental: bool,
        parallelism: u32,
        max_parallelism: u32,
        fingerprint: u64,
        state: Vec<u64>,
        in_flight: Vec<u64>,
        sources: Vec<u64>,
        subtasks: Vec<u64>,
    }

    #[test]
    fn version_1_metadata_is_named_as_such() {
        let v1 = MetadataV1 {
            version: 1,
            id: 3,
            trigger_ms: 1,
            completed_ms: 2,
            cause: "interval".into(),
            mode: "aligned".into(),
            incremental: false,
            parallelism: 2,
            max_parallelism: 128,
            fingerprint: 9,
            state: Vec::new(),
            in_flight: Vec::new(),
            sources: Vec::new(),
            subtasks: Vec::new(),
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&v1).unwrap();
        let e = CheckpointMetadata::decode(&bytes).unwrap_err();
        assert!(matches!(e, MetadataError::Version { found: 1 }), "{e}");
        assert!(matches!(
            CheckpointMetadata::decode(&[0u8; 7]),
            Err(MetadataError::Decode(_))
        ));
    }
}
