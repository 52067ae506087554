//! What the checkpoint layer sees of a keyed state table, whatever its key
//! and value types ([`StateTable`]), what archiving a key group produces
//! ([`Serialized`]), and how it fails ([`StateError`]). The tables themselves
//! are the parent module's.

use super::{CutPlan, Decided};
use crate::schema::BlockSchema;
use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;
use std::rc::Rc;
use std::sync::Arc;

/// A key group of a state table does not archive, or a block of its chain
/// does not read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StateError {
    /// Archiving a key group failed.
    #[error("state `{table}`, key group {group}: does not archive: {source}")]
    Archive {
        /// The state's name.
        table: String,
        /// The key group.
        group: u32,
        /// What rkyv said.
        #[source]
        source: RkyvError,
    },
    /// A block of a restored chain does not check or decode.
    #[error("state `{table}`, block {} offset {}: {source}", block.segment.file_name(), block.offset)]
    Load {
        /// The state's name.
        table: String,
        /// The block.
        block: spate_storage::BlockHandle,
        /// What rkyv said.
        #[source]
        source: RkyvError,
    },
    /// A block of a restored chain did not arrive from the remote tier.
    #[error("state `{table}`, block {} offset {}: {reason}", block.segment.file_name(), block.offset)]
    Arrive {
        /// The state's name.
        table: String,
        /// The block.
        block: spate_storage::BlockHandle,
        /// Why.
        reason: String,
    },
}

/// What the checkpoint layer needs from any keyed state table, whatever its
/// types: a name, sizes, and archiving one key group at a time.
pub(crate) trait StateTable {
    /// The state's name, unique within its operator.
    fn name(&self) -> &str;
    /// Number of keys with state in the key group at `index` of the range
    /// (loaded ones: a restored key group not yet loaded counts none); for
    /// a state whose values are maps, their entries.
    fn keys_in_group(&self, index: usize) -> usize;
    /// Bytes the key group at `index` holds in memory: its slots, or its
    /// entries and their index ([`crate::data::StateMap::memory_bytes`]),
    /// and for a state whose values are maps, their tables; not what other
    /// values point to. For the monitor's state size.
    fn group_memory_bytes(&self, index: usize) -> usize;
    /// What the table's blocks archive: recorded in checkpoints (for
    /// inspection tools), compared on restore.
    fn schema(&self) -> &Arc<BlockSchema>;
    /// Archives the key group at `index` (rkyv, a `Vec<(key, value)>`).
    fn snapshot_group(&self, index: usize) -> Result<AlignedVec, RkyvError>;
    /// Loads an archive made by [`snapshot_group`](Self::snapshot_group)
    /// into the key group at `index`; an error for bytes that do not check.
    fn restore_group(&mut self, index: usize, archive: &[u8]) -> Result<(), RkyvError>;
    /// Cuts the key group for checkpoint `id` without copying anything: its
    /// changes count as captured by `id`, and it is archived later (a full
    /// base, or a delta of the captured keys) by
    /// [`serialize_frozen`](Self::serialize_frozen), or at once before the
    /// next write to it, whichever comes first (copy-on-write per key group).
    /// `since` is the last completed checkpoint the cut builds on: keys
    /// captured by later checkpoints still in progress belong to a delta too.
    fn freeze(&mut self, index: usize, id: u64, since: u64, delta: bool);
    /// Archives up to `max` frozen key groups; returns how many.
    fn serialize_frozen(&mut self, max: usize) -> usize;
    /// Key groups frozen and not archived yet.
    fn frozen_groups(&self) -> usize;
    /// First writes to frozen key groups may archive them (copy-on-write per
    /// key group) until their archives reach `bytes` (`usize::MAX`: no
    /// bound); from then on, and at once for 0, the first write to a frozen
    /// key group keeps the written key's value at the cut instead
    /// (copy-on-write per entry). What archiving ahead of a slow writer would
    /// hold is a full copy of every group written, what this holds is the
    /// entries written. Counted per write, not per step: under uniform
    /// updates one step's batch writes hundreds of key groups.
    fn set_copy_allowance(&mut self, bytes: usize);
    /// Values kept at a cut per entry since the table was made (each is a
    /// write that found the writer behind).
    fn values_kept(&self) -> u64;
    /// Archives up to `max` bases to materialise in the background (see
    /// [`Decided`]); returns how many.
    fn serialize_requested_bases(&mut self, max: usize) -> usize;
    /// Bases to materialise in the background not archived yet.
    fn requested_bases(&self) -> usize;
    /// Archives made since the last call (`Err` if one failed).
    fn take_serialized(&mut self) -> Vec<Result<Serialized, StateError>>;
    /// The longest single archiving pause since the last call, µs.
    fn take_max_pause_us(&mut self) -> u64;
    /// Applies a delta archived from a frozen key group.
    fn restore_delta(&mut self, index: usize, archive: &[u8]) -> Result<(), RkyvError>;
    /// Restores the key group from its chain (base, then deltas, mapped
    /// zero-copy) on first access or in the background: a restored job runs
    /// before every key group is deserialised.
    fn restore_lazily(
        &mut self,
        index: usize,
        chain: Vec<(bool, crate::checkpoint::restore::RestoredBlock)>,
    );
    /// Loads up to `max` key groups still waiting; returns how many, or the
    /// first error met (also on loads made on access).
    fn load_pending(&mut self, max: usize) -> Result<usize, StateError>;
    /// Whether a key group waiting to be loaded can load without waiting
    /// for the remote tier (one restored from it may still be arriving).
    fn loads_ready(&self) -> bool;
    /// Starts the cut of `plan.id` in O(1): every key group decides what it
    /// becomes in the checkpoint (see [`Decided`]) before its next write, or
    /// in the background ([`decide_pending`](Self::decide_pending)). Until
    /// then a key group is unchanged, so the decision is the one a walk over
    /// every key group at the barrier would have made. `table` is the
    /// table's name in checkpoint keys. A previous cut still undecided (its
    /// checkpoint was aborted) is dropped.
    fn begin_cut(&mut self, plan: Rc<CutPlan>, table: Arc<str>);
    /// Decides up to `max` key groups of the current cut; returns how many.
    fn decide_pending(&mut self, max: usize) -> usize;
    /// Key groups of the current cut not decided yet.
    fn undecided(&self) -> usize;
    /// Decisions made since the last call (on writes or in the background),
    /// by key group index; the first error met, if any.
    fn take_decided(&mut self) -> Result<Vec<(usize, Decided)>, StateError>;
    /// Keys of a restored key group (reported while it is still unloaded).
    fn set_restored_entries(&mut self, index: usize, entries: u64);
    /// Forgets the changes captured by `id` (it completed).
    fn checkpoint_complete(&mut self, id: u64);
    /// Returns the changes captured by `id` to the next checkpoint (it failed).
    fn checkpoint_aborted(&mut self, id: u64);
}

/// A key group archived for a checkpoint.
pub struct Serialized {
    /// Index of the key group in the subtask's range.
    pub index: usize,
    /// The checkpoint.
    pub id: u64,
    /// A delta rather than a full base.
    pub delta: bool,
    /// The archive.
    pub bytes: AlignedVec,
    /// Keys in a base; upserts plus deletes in a delta.
    pub entries: u64,
    /// A base materialised in the background, not part of checkpoint `id`.
    pub background: bool,
}
