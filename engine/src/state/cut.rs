//! A checkpoint's cut of keyed state: the plan a keyed operator hands its
//! tables at the barrier, the bounds of incremental chains, and what each
//! key group decides to become. The tables (the parent module) own the
//! decisions themselves.

use super::FxHashMap;
use crate::checkpoint::subtask::{Chain, ChainLink, StateKey, StateRef};
use std::rc::Rc;
use std::sync::Arc;

/// Bounds of incremental checkpoints (see `CheckpointConfig`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IncrementalBounds {
    pub max_delta_chain: u32,
    pub max_delta_ratio: f64,
}

/// A checkpoint's cut of one operator's keyed state, shared by its tables:
/// what each key group's decision needs, as of the barrier.
pub(crate) struct CutPlan {
    /// The checkpoint.
    pub id: u64,
    /// Committed chains at the barrier (deltas build on them).
    pub committed: Rc<FxHashMap<StateKey, Chain>>,
    /// The checkpoint those chains are of (0: none, or restored).
    pub committed_id: u64,
    /// Bases materialised in the background since, durable and not yet
    /// committed: a key group's chain may start from one of them instead.
    pub bases: Rc<FxHashMap<StateKey, ChainLink>>,
    /// `None` for full checkpoints.
    pub incremental: Option<IncrementalBounds>,
    /// The operator's name in checkpoint keys.
    pub operator: Arc<str>,
    /// First key group of the subtask's range.
    pub range_start: u32,
}

/// The share (between 1/2 and 3/4) of the incremental bounds at which key
/// group `group` is materialised in the background: spread evenly over key
/// groups by a fixed hash, so that it is the same in every run and on every
/// core count. The last quarter of the bounds leaves the background base
/// time to arrive before the chain reaches a bound (where the checkpoint
/// itself would write the base).
pub(super) fn materialise_share(group: u32) -> f64 {
    let h = u64::from(group).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    0.5 + 0.25 * (h as f64 / u32::MAX as f64)
}

/// What a key group becomes in a checkpoint (empty key groups become nothing).
///
/// In incremental mode a key group is materialised (its chain replaced by a
/// fresh base) off the checkpoint's path, as Flink's changelog backend does:
/// when its chain reaches its share of the bounds, the checkpoint still
/// writes a delta, and a base of the same cut is archived in the background
/// and written after the checkpoint's part. A later checkpoint references
/// that base, then the committed deltas of later checkpoints
/// ([`SubtaskCheckpoints::bases_snapshot`](crate::checkpoint::subtask::SubtaskCheckpoints::bases_snapshot)).
/// Only a chain at the bounds themselves (its background base not written
/// in time) gets a base on the checkpoint's path. The background base needs
/// no copy-on-write: it may hold any state between its cut and the cut of the
/// checkpoint that takes it up (it is archived, written and made available
/// before that checkpoint decides), because the committed deltas after its
/// cut hold the final values of every key changed since.
#[derive(Debug)]
pub(crate) enum Decided {
    /// Unchanged since the committed chain: referenced again, nothing written.
    Reused(StateRef),
    /// Frozen: a base (empty prefix) or a delta on `prefix` will be archived.
    Frozen(StateRef),
}

/// The cut in progress of a table.
pub(super) struct Cut {
    pub(super) plan: Rc<CutPlan>,
    pub(super) table: Arc<str>,
    pub(super) undecided: usize,
    /// Next key group the background decides.
    pub(super) cursor: usize,
}
