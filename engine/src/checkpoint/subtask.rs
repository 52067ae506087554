//! One subtask's side of the checkpoints in progress.
//!
//! Shared (`Rc<RefCell<_>>`) by the subtask's inputs, operators and exchange
//! senders: sources and receivers report when they delivered a barrier,
//! operators deposit their archived key groups, receivers and senders their
//! in-flight records. When every input of the subtask has delivered barrier
//! `n` and every in-flight log of `n` is closed, the subtask's part of `n` is
//! ready to be written ([`LocalSnapshot`]); the worker hands it to the writer.
//!
//! Inputs that share a multi-input operator form an *alignment group*: in the
//! aligned modes an input that delivered `n` pauses until its whole group has,
//! so the operator never sees records from after `n` on one input before `n`
//! arrived on the other.
//!
//! Invariants (asserted where they are established or relied on):
//! 1. Checkpoint ids only grow: a checkpoint begun here is newer than the
//!    last one completed here, and completions come in increasing order.
//! 2. A checkpoint is pending or done here, never both; a done one is never
//!    begun again.
//! 3. A pending checkpoint has one delivery flag per input, and its
//!    in-flight logs open before they close (the count never goes below 0).
//! 4. A part is ready only when every input delivered its barrier and
//!    every in-flight log of it closed; no log opens for it afterwards (an
//!    operator whose inputs ended cuts before the inputs report the barrier).
//! 5. Chains are written for a checkpoint after it was begun here and before
//!    it completes; once it completes, they are the committed chains, and
//!    every link of them was written by that checkpoint or an earlier one
//!    (committed chains reference only committed blocks).
//! 6. Restored chains are installed before any checkpoint completes here.

use super::metadata::{InFlightBlock, SourceOffset, SubtaskStats};
use super::Barrier;
use crate::data::FxHashMap;
use crate::schema::BlockSchema;
use spate_storage::{BlockHandle, BlockKind};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Names a key group's state: (operator, table, key group).
pub(crate) type StateKey = (Arc<str>, Arc<str>, u32);

/// A key group's chain: base first, then deltas (shared, cheap to clone).
pub(crate) type Chain = Arc<[ChainLink]>;

/// A durable block of a key group's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainLink {
    pub handle: BlockHandle,
    pub delta: bool,
    pub checkpoint: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// A key group's state in a checkpoint: the committed chain it builds on
/// (empty for a new base) and what it holds afterwards.
#[derive(Clone, Debug)]
pub(crate) struct StateRef {
    pub key: StateKey,
    pub prefix: Chain,
    pub entries: u64,
    /// What the table's blocks archive (one per table, shared).
    pub schema: Arc<BlockSchema>,
}

pub(crate) use crate::data::Bytes;

/// What a block holds (its handle is assigned when it is written).
#[derive(Clone, Debug)]
pub(crate) enum BlockDesc {
    /// A new base (`delta == false`) or delta appended to `state.prefix`.
    State {
        state: StateRef,
        delta: bool,
        block_entries: u64,
        bytes: u64,
    },
    /// In-flight records (`block.schema` is set when the metadata is
    /// assembled, from `schema`).
    InFlight {
        block: InFlightBlock,
        schema: Arc<BlockSchema>,
    },
}

/// A block waiting to be written.
pub(crate) struct SnapshotBlock {
    pub kind: BlockKind,
    pub bytes: Bytes,
    pub desc: BlockDesc,
}

/// A key group's base materialised off a checkpoint's path: requested by the
/// cut of `checkpoint`, archived in the background once no snapshot is in
/// progress on its operator, written when no checkpoint part waits for the
/// writer, and referenced by a later checkpoint in place of the chain up to
/// that cut (see [`SubtaskCheckpoints::bases_snapshot`]).
pub(crate) struct BackgroundBase {
    pub checkpoint: u64,
    pub block: SnapshotBlock,
}

impl BackgroundBase {
    /// The chain link of this base once written at `handle`.
    pub(crate) fn link(&self, handle: BlockHandle) -> Option<(StateKey, ChainLink)> {
        match &self.block.desc {
            BlockDesc::State {
                state,
                block_entries,
                bytes,
                ..
            } => Some((
                state.key.clone(),
                ChainLink {
                    handle,
                    delta: false,
                    checkpoint: self.checkpoint,
                    entries: *block_entries,
                    bytes: *bytes,
                },
            )),
            BlockDesc::InFlight { .. } => None,
        }
    }
}

/// A subtask's complete part of one checkpoint.
pub(crate) struct LocalSnapshot {
    pub barrier: Barrier,
    /// Empty when the part is handed over: its blocks went to the writer as
    /// they were made ([`SubtaskCheckpoints::take_outbox`]), and the writer
    /// puts them back here, their bytes taken, with their handles.
    pub blocks: Vec<SnapshotBlock>,
    /// Key groups unchanged since the last completed checkpoint: their
    /// committed chains are referenced again, nothing is written.
    pub reused: Vec<StateRef>,
    pub sources: Vec<SourceOffset>,
    pub stats: SubtaskStats,
    pub ready_at: Instant,
}

impl LocalSnapshot {
    /// The chains this snapshot leaves once its blocks got `handles` (same
    /// order as `blocks`).
    pub(crate) fn chains(&self, handles: &[BlockHandle]) -> HashMap<StateKey, Chain> {
        let mut chains = HashMap::new();
        for (block, handle) in self.blocks.iter().zip(handles) {
            if let BlockDesc::State {
                state,
                delta,
                block_entries,
                bytes,
            } = &block.desc
            {
                let mut chain = state.prefix.to_vec();
                chain.push(ChainLink {
                    handle: *handle,
                    delta: *delta,
                    checkpoint: self.barrier.id,
                    entries: *block_entries,
                    bytes: *bytes,
                });
                chains.insert(state.key.clone(), chain.into());
            }
        }
        for state in &self.reused {
            chains.insert(state.key.clone(), state.prefix.clone());
        }
        chains
    }
}

struct Pending {
    barrier: Barrier,
    delivered: Vec<bool>,
    open_logs: usize,
    unaligned: bool,
    reused: Vec<StateRef>,
    sources: Vec<SourceOffset>,
    stats: SubtaskStats,
}

pub(crate) struct SubtaskCheckpoints {
    subtask: usize,
    /// Alignment group of every input (filled when the graph is complete).
    group_of: Vec<usize>,
    /// Inputs that ended: they deliver every later barrier at once.
    finished: Vec<bool>,
    pending: BTreeMap<u64, Pending>,
    /// Ids that were completed locally or aborted: late barriers are ignored.
    done: BTreeSet<u64>,
    ready: Vec<LocalSnapshot>,
    /// The chains of the last completed checkpoint (what deltas build on);
    /// shared with the cuts in progress, replaced whole on completion.
    committed: Rc<FxHashMap<StateKey, Chain>>,
    /// The checkpoint `committed` is of (0: none yet, or restored).
    committed_id: u64,
    /// The chains of checkpoints written here but not yet completed.
    written: BTreeMap<u64, HashMap<StateKey, Chain>>,
    /// Bases archived in the background, waiting for the writer.
    bases_to_write: Vec<BackgroundBase>,
    /// Bases materialised in the background, durable and not yet part of a
    /// committed chain (at most one per key group: the newest).
    bases: Rc<FxHashMap<StateKey, ChainLink>>,
    /// Bases that no committed chain took up (overtaken or replaced), each
    /// with the latest checkpoint begun when it retired: only checkpoints up
    /// to that one can reference it, so it is abandoned once one of them or
    /// a later one completes (completions are in order).
    retired: Vec<(ChainLink, u64)>,
    /// The latest checkpoint begun here.
    latest_begun: u64,
    /// Retired bases to declare dead in the store (by the writer).
    abandoned: Vec<BlockHandle>,
    /// Blocks of checkpoints in progress, for the writer as they are made
    /// (it writes them before their part is complete).
    outbox: Vec<(u64, SnapshotBlock)>,
    /// Checkpoints aborted since the last [`take_outbox`](Self::take_outbox):
    /// the writer drops the blocks it has of them.
    aborted_streams: Vec<u64>,
    /// Bytes of blocks made and not yet copied into the writer's buffers.
    backlog_bytes: usize,
    /// Above this backlog, archiving waits for the writer
    /// ([`archive_behind`](Self::archive_behind)).
    backlog_budget: usize,
}

/// Blocks of checkpoints in progress handed to the writer early, and the
/// checkpoints aborted since (whose blocks it has are dead).
pub(crate) struct Outbox {
    pub blocks: Vec<(u64, SnapshotBlock)>,
    pub aborted: Vec<u64>,
}

impl SubtaskCheckpoints {
    /// `backlog_budget`: see [`crate::CheckpointConfig::archive_backlog_bytes`].
    pub(crate) fn new(subtask: usize, backlog_budget: usize) -> Self {
        Self {
            subtask,
            group_of: Vec::new(),
            finished: Vec::new(),
            pending: BTreeMap::new(),
            done: BTreeSet::new(),
            ready: Vec::new(),
            committed: Rc::default(),
            committed_id: 0,
            written: BTreeMap::new(),
            bases_to_write: Vec::new(),
            bases: Rc::default(),
            retired: Vec::new(),
            latest_begun: 0,
            abandoned: Vec::new(),
            outbox: Vec::new(),
            aborted_streams: Vec::new(),
            backlog_bytes: 0,
            backlog_budget,
        }
    }

    /// Whether archives made and not yet in the writer's buffers reach the
    /// budget: archiving in the background waits, and writes to frozen key
    /// groups keep values per entry ([`crate::state`]). Never while nothing
    /// waits, so that a snapshot always progresses.
    pub(crate) fn archive_behind(&self) -> bool {
        self.backlog_bytes > 0 && self.backlog_bytes >= self.backlog_budget
    }

    /// Bytes of archives that may still be made before archiving is behind
    /// ([`archive_behind`](Self::archive_behind)), counting the blocks
    /// added so far and not those the state tables made and have not handed
    /// over yet (they count those themselves): at least one block while
    /// nothing waits.
    pub(crate) fn archive_allowance(&self) -> usize {
        if self.backlog_bytes == 0 {
            self.backlog_budget.max(1)
        } else {
            self.backlog_budget.saturating_sub(self.backlog_bytes)
        }
    }

    /// Sets the backlog budget (the simulator draws small ones).
    pub(crate) fn set_backlog_budget(&mut self, bytes: usize) {
        self.backlog_budget = bytes;
    }

    /// The blocks made since the last call, for the writer, and the
    /// checkpoints aborted since.
    pub(crate) fn take_outbox(&mut self) -> Outbox {
        Outbox {
            blocks: std::mem::take(&mut self.outbox),
            aborted: std::mem::take(&mut self.aborted_streams),
        }
    }

    /// The writer copied `bytes` of blocks into its buffers (or dropped them).
    pub(crate) fn blocks_taken(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.backlog_bytes, "backlog accounting");
        self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes);
    }

    /// Sets the alignment groups once the graph is built.
    pub(crate) fn set_groups(&mut self, group_of: Vec<usize>) {
        self.finished = vec![false; group_of.len()];
        self.group_of = group_of;
    }

    /// Starts tracking `barrier` (idempotent). Returns false for a checkpoint
    /// already finished or aborted here.
    pub(crate) fn begin(&mut self, barrier: Barrier) -> bool {
        if self.done.contains(&barrier.id) {
            return false;
        }
        assert!(
            barrier.id > self.committed_id,
            "subtask {}: checkpoint {} begun after checkpoint {} completed",
            self.subtask,
            barrier.id,
            self.committed_id
        );
        self.latest_begun = self.latest_begun.max(barrier.id);
        let inputs = self.group_of.len();
        let finished = self.finished.clone();
        let subtask = self.subtask as u32;
        self.pending.entry(barrier.id).or_insert_with(|| Pending {
            barrier,
            delivered: finished,
            open_logs: 0,
            unaligned: barrier.mode == super::CheckpointMode::Unaligned,
            reused: Vec::new(),
            sources: Vec::new(),
            stats: SubtaskStats {
                subtask,
                ..SubtaskStats::default()
            },
        });
        debug_assert_eq!(self.pending[&barrier.id].delivered.len(), inputs);
        debug_assert!(!self.done.contains(&barrier.id), "pending and done");
        true
    }

    /// Whether checkpoint `id` was finished or aborted here.
    pub(crate) fn is_done(&self, id: u64) -> bool {
        self.done.contains(&id)
    }

    /// Whether `id` is running unaligned (by mode, or after a timeout switch).
    pub(crate) fn is_unaligned(&self, id: u64) -> bool {
        self.pending.get(&id).is_some_and(|p| p.unaligned)
    }

    /// The oldest checkpoint in progress.
    pub(crate) fn oldest_pending(&self) -> Option<Barrier> {
        self.pending.values().next().map(|p| p.barrier)
    }

    /// An aligned-with-timeout checkpoint goes unaligned.
    pub(crate) fn switch_to_unaligned(&mut self, id: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.unaligned = true;
            p.stats.switched_to_unaligned = true;
        }
    }

    /// Input `input` has delivered barrier `id` downstream.
    pub(crate) fn delivered(&mut self, id: u64, input: usize, alignment_us: u64) {
        assert!(
            input < self.group_of.len(),
            "input {input} of {}",
            self.group_of.len()
        );
        if let Some(p) = self.pending.get_mut(&id) {
            debug_assert_eq!(p.delivered.len(), self.group_of.len());
            p.delivered[input] = true;
            p.stats.alignment_us = p.stats.alignment_us.max(alignment_us);
        }
        self.check_ready(id);
    }

    /// Input `input` ended: it delivers every barrier from now on.
    pub(crate) fn input_finished(&mut self, input: usize) {
        assert!(
            input < self.finished.len(),
            "input {input} finished twice or unknown"
        );
        self.finished[input] = true;
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            self.delivered(id, input, 0);
        }
    }

    /// Whether `input` must not be stepped: in an aligned checkpoint it has
    /// delivered the barrier but an input of its group has not.
    pub(crate) fn paused(&self, input: usize) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let group = self.group_of[input];
        self.pending.values().any(|p| {
            !p.unaligned
                && p.barrier.mode != super::CheckpointMode::AtLeastOnce
                && p.delivered[input]
                && self
                    .group_of
                    .iter()
                    .enumerate()
                    .any(|(i, &g)| g == group && !p.delivered[i])
        })
    }

    pub(crate) fn add_block(&mut self, id: u64, block: SnapshotBlock) {
        debug_assert!(
            !self.ready.iter().any(|r| r.barrier.id == id),
            "checkpoint {id}: a block added after its part was ready"
        );
        let taken_up = match &block.desc {
            BlockDesc::State { state, .. } => self.base_taken_up(state),
            BlockDesc::InFlight { .. } => 0,
        };
        if let Some(p) = self.pending.get_mut(&id) {
            match &block.desc {
                BlockDesc::State { delta, bytes, .. } => {
                    p.stats.state_bytes += bytes + taken_up;
                    if *delta {
                        p.stats.delta_bytes += bytes;
                    }
                }
                BlockDesc::InFlight { block, .. } => p.stats.in_flight_bytes += block.bytes,
            }
            self.backlog_bytes += block.bytes.len();
            self.outbox.push((id, block));
        }
    }

    /// A key group unchanged since the last completed checkpoint.
    pub(crate) fn add_reused(&mut self, id: u64, state: StateRef) {
        debug_assert!(
            !self.ready.iter().any(|r| r.barrier.id == id),
            "checkpoint {id}: a reused chain added after its part was ready"
        );
        debug_assert!(!state.prefix.is_empty(), "a reused key group has a chain");
        let taken_up = self.base_taken_up(&state);
        if let Some(p) = self.pending.get_mut(&id) {
            p.stats.state_bytes += taken_up;
            p.reused.push(state);
        }
    }

    /// Bytes of a base materialised in the background that `state`'s chain
    /// takes up in place of its committed prefix: the checkpoint that first
    /// references such a base counts it as written (it was written for it).
    /// Checkpoints that take it up before one of them completes (concurrent
    /// ones, or after an abort) each count it.
    fn base_taken_up(&self, state: &StateRef) -> u64 {
        match state.prefix.first() {
            Some(link) if self.bases.get(&state.key) == Some(link) => link.bytes,
            _ => 0,
        }
    }

    /// A key group's base archived in the background, for the writer.
    pub(crate) fn add_background_base(&mut self, checkpoint: u64, block: SnapshotBlock) {
        self.bases_to_write
            .push(BackgroundBase { checkpoint, block });
    }

    /// Takes the bases archived in the background since the last call.
    pub(crate) fn take_background_bases(&mut self) -> Vec<BackgroundBase> {
        std::mem::take(&mut self.bases_to_write)
    }

    /// The writer made bases materialised in the background durable. A base
    /// already overtaken by its key group's committed chain (a newer base,
    /// or no chain any more) is retired at once.
    pub(crate) fn bases_written(&mut self, written: Vec<(StateKey, ChainLink)>) {
        let bases = Rc::make_mut(&mut self.bases);
        let bound = self.latest_begun;
        for (key, link) in written {
            assert!(
                link.checkpoint <= bound && !link.delta,
                "a background base is a base, cut for a checkpoint begun here"
            );
            let stale = self
                .committed
                .get(&key)
                .and_then(|c| c.first())
                .is_none_or(|first| first.checkpoint >= link.checkpoint);
            if stale {
                self.retired.push((link, bound));
                continue;
            }
            match bases.get(&key) {
                Some(old) if old.checkpoint >= link.checkpoint => self.retired.push((link, bound)),
                _ => {
                    if let Some(old) = bases.insert(key, link) {
                        // A cut may have taken up the replaced base already.
                        self.retired.push((old, bound));
                    }
                }
            }
        }
        debug_assert!(
            self.bases.iter().all(|(key, link)| self
                .committed
                .get(key)
                .and_then(|c| c.first())
                .is_some_and(|first| first.checkpoint < link.checkpoint)),
            "an available base is newer than its key group's committed base"
        );
    }

    /// Bases materialised in the background, durable and not part of a
    /// committed chain yet. A key group whose committed chain starts with an
    /// older base than one of these (`base.checkpoint`) may take it up in its
    /// next checkpoint: its chain becomes that base, then the committed deltas
    /// of later checkpoints. This is exact because a delta holds the final
    /// values of every key changed since the checkpoint before it that
    /// completed, so the committed deltas after the base's cut cover every
    /// change since (an aborted checkpoint's changes return to the next delta).
    pub(crate) fn bases_snapshot(&self) -> Rc<FxHashMap<StateKey, ChainLink>> {
        self.bases.clone()
    }

    /// Blocks of bases no checkpoint will reference, for the writer to
    /// declare dead in the store (so their segments can be collected).
    pub(crate) fn take_abandoned(&mut self) -> Vec<BlockHandle> {
        std::mem::take(&mut self.abandoned)
    }

    /// The committed chains as of now (a cut keeps them: a completion
    /// arriving during the cut does not change what it builds on).
    pub(crate) fn committed_snapshot(&self) -> Rc<FxHashMap<StateKey, Chain>> {
        self.committed.clone()
    }

    /// The checkpoint the committed chains are of (0: none yet, or restored).
    pub(crate) fn committed_id(&self) -> u64 {
        self.committed_id
    }

    /// Installs a restored chain as committed (deltas build on it).
    pub(crate) fn set_committed(&mut self, key: StateKey, chain: Vec<ChainLink>) {
        assert!(
            self.committed_id == 0 && self.written.is_empty(),
            "restored chains are installed before any checkpoint completes"
        );
        assert!(!chain.is_empty(), "a restored chain has a block");
        Rc::make_mut(&mut self.committed).insert(key, chain.into());
    }

    /// The writer made checkpoint `id`'s blocks durable: these are its chains.
    pub(crate) fn written(&mut self, id: u64, chains: HashMap<StateKey, Chain>) {
        assert!(
            id > self.committed_id && id <= self.latest_begun,
            "checkpoint {id} written (latest begun {}, committed {})",
            self.latest_begun,
            self.committed_id
        );
        debug_assert!(
            chains
                .values()
                .flat_map(|c| c.iter())
                .all(|link| link.checkpoint <= id),
            "checkpoint {id}'s chains reference a later checkpoint's block"
        );
        let previous = self.written.insert(id, chains);
        assert!(previous.is_none(), "checkpoint {id} written twice");
    }

    /// Checkpoint `id` is committed: its chains become the base of deltas.
    pub(crate) fn complete(&mut self, id: u64) {
        assert!(
            id >= self.committed_id,
            "subtask {}: checkpoint {id} completed after checkpoint {}",
            self.subtask,
            self.committed_id
        );
        if let Some(chains) = self.written.remove(&id) {
            self.committed = Rc::new(chains.into_iter().collect());
            self.committed_id = id;
        }
        self.written.retain(|&k, _| k > id);
        debug_assert!(
            self.committed_id != id
                || self
                    .committed
                    .values()
                    .flat_map(|c| c.iter())
                    .all(|l| l.checkpoint <= id),
            "committed chains reference only committed blocks"
        );
        if self.bases.is_empty() && self.retired.is_empty() {
            return;
        }
        // Bases now committed are the store's to keep; those a newer
        // committed base overtook (or whose key group has no chain) retire.
        let committed = &self.committed;
        let bound = self.latest_begun;
        let mut retired = Vec::new();
        Rc::make_mut(&mut self.bases).retain(|key, link| {
            let first = committed.get(key).and_then(|c| c.first());
            if first == Some(link) {
                return false;
            }
            let overtaken = first.is_none_or(|f| f.checkpoint >= link.checkpoint);
            if overtaken {
                retired.push((link.clone(), bound));
            }
            !overtaken
        });
        self.retired.extend(retired);
        // Checkpoints up to `id` are complete or failed (completions are in
        // order): a base retired while at most `id` had begun is referenced
        // by no checkpoint to come, unless `id` itself took it up.
        let committed_firsts: BTreeSet<(u64, u64)> = committed
            .values()
            .filter_map(|c| c.first())
            .map(|l| (l.handle.segment.0, l.handle.offset))
            .collect();
        let abandoned = &mut self.abandoned;
        self.retired.retain(|(link, bound)| {
            if *bound > id {
                return true;
            }
            if !committed_firsts.contains(&(link.handle.segment.0, link.handle.offset)) {
                abandoned.push(link.handle);
            }
            false
        });
    }

    pub(crate) fn add_source_offset(&mut self, id: u64, offset: SourceOffset) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.sources.push(offset);
        }
    }

    /// A synchronous pause of `micros` for checkpoint `id` (the cut, or
    /// archiving one key group): the statistics keep the longest.
    pub(crate) fn add_pause(&mut self, id: u64, micros: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.stats.sync_us = p.stats.sync_us.max(micros);
        }
    }

    /// An in-flight log of `id` opened (it must close before `id` is ready).
    pub(crate) fn open_log(&mut self, id: u64) {
        debug_assert!(
            self.pending.contains_key(&id) || !self.ready.iter().any(|r| r.barrier.id == id),
            "checkpoint {id}: a log opens after its part was ready (what it logs is lost)"
        );
        if let Some(p) = self.pending.get_mut(&id) {
            p.open_logs += 1;
        }
    }

    /// An in-flight log of `id` closed.
    pub(crate) fn close_log(&mut self, id: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            assert!(
                p.open_logs > 0,
                "checkpoint {id}: a log closed that never opened"
            );
            p.open_logs -= 1;
        }
        self.check_ready(id);
    }

    /// Drops everything pending for `id`.
    pub(crate) fn abort(&mut self, id: u64) {
        assert!(
            id > self.committed_id,
            "checkpoint {id} aborted after it completed"
        );
        self.pending.remove(&id);
        self.written.remove(&id);
        self.done.insert(id);
        // Its blocks not handed over yet go; the writer drops the others.
        let mut dropped = 0;
        self.outbox.retain(|(i, b)| {
            if *i == id {
                dropped += b.bytes.len();
            }
            *i != id
        });
        self.blocks_taken(dropped);
        self.aborted_streams.push(id);
        debug_assert!(!self.pending.contains_key(&id) && !self.written.contains_key(&id));
    }

    /// Moves `id` to the ready list if every input delivered it and no log is open.
    pub(crate) fn check_ready(&mut self, id: u64) {
        let ready = self
            .pending
            .get(&id)
            .is_some_and(|p| p.open_logs == 0 && p.delivered.iter().all(|&d| d));
        if ready {
            let p = self.pending.remove(&id).expect("checked above");
            let first_time = self.done.insert(id);
            assert!(first_time, "checkpoint {id} ready twice");
            debug_assert!(p.delivered.iter().all(|&d| d) && p.open_logs == 0);
            self.ready.push(LocalSnapshot {
                barrier: p.barrier,
                // Handed to the writer as they were made: it puts them back.
                blocks: Vec::new(),
                reused: p.reused,
                sources: p.sources,
                stats: p.stats,
                ready_at: Instant::now(),
            });
        }
    }

    /// The checkpoints in progress, for `SPATE_STALL_DUMP`.
    pub(crate) fn describe(&self) -> String {
        let p: Vec<String> = self
            .pending
            .values()
            .map(|p| {
                format!(
                    "{:?} delivered={:?} logs={} unaligned={}",
                    p.barrier, p.delivered, p.open_logs, p.unaligned
                )
            })
            .collect();
        format!(
            "groups={:?} finished={:?} pending=[{}] done_max={:?} backlog={} of {} ({} blocks not handed over)",
            self.group_of,
            self.finished,
            p.join(", "),
            self.done.last(),
            self.backlog_bytes,
            self.backlog_budget,
            self.outbox.len()
        )
    }

    /// Takes the subtask's finished parts of checkpoints.
    pub(crate) fn take_ready(&mut self) -> Vec<LocalSnapshot> {
        debug_assert!(
            self.ready
                .iter()
                .all(|r| self.done.contains(&r.barrier.id)
                    && !self.pending.contains_key(&r.barrier.id)),
            "a ready part is done and no longer pending"
        );
        std::mem::take(&mut self.ready)
    }
}

/// What a writer did with the blocks handed to it early, per checkpoint in
/// progress: the blocks (bytes taken) and their handles, until the part
/// comes ([`Streams::take`]) or the checkpoint is aborted.
#[derive(Default)]
pub(crate) struct Streams {
    by_id: BTreeMap<u64, Streamed>,
}

/// Blocks of one checkpoint a writer appended before its part came.
#[derive(Default)]
struct Streamed {
    blocks: Vec<SnapshotBlock>,
    handles: Vec<BlockHandle>,
    /// A flush failed after one of them was appended: they may be lost, and
    /// the part fails with this.
    lost: Option<String>,
}

impl Streams {
    /// Appends block `block` of checkpoint `id` with `writer` (copied into
    /// its buffers: the archive buffer goes back to the pool) and takes its
    /// bytes off the subtask's backlog. Returns whether that brought the
    /// backlog back under its budget (archiving waited for this).
    pub(crate) fn append<I: spate_storage::Io>(
        &mut self,
        writer: &mut spate_storage::SegmentWriter<I>,
        checkpoints: &std::cell::RefCell<SubtaskCheckpoints>,
        id: u64,
        mut block: SnapshotBlock,
    ) -> bool {
        let handle = writer.append(block.kind, &block.bytes);
        let bytes = std::mem::take(&mut block.bytes);
        let s = self.by_id.entry(id).or_default();
        s.blocks.push(block);
        s.handles.push(handle);
        let caught_up = {
            let mut checkpoints = checkpoints.borrow_mut();
            let behind = checkpoints.archive_behind();
            checkpoints.blocks_taken(bytes.len());
            behind && !checkpoints.archive_behind()
        };
        crate::archive::recycle(bytes);
        caught_up
    }

    /// Part `snapshot` was flushed with outcome `flushed`: puts its blocks
    /// back in it and returns their handles and whether the part is written
    /// (not if a block was appended before an earlier failed flush). A
    /// failed flush may have lost the blocks of parts to come too.
    pub(crate) fn complete(
        &mut self,
        snapshot: &mut LocalSnapshot,
        flushed: Result<(), String>,
    ) -> (Vec<BlockHandle>, Result<(), String>) {
        debug_assert!(snapshot.blocks.is_empty(), "a part's blocks come before it");
        let streamed = self.take(snapshot.barrier.id);
        if let Err(reason) = &flushed {
            self.flush_failed(reason);
        }
        snapshot.blocks = streamed.blocks;
        let written = flushed.and(streamed.lost.map_or(Ok(()), Err));
        (streamed.handles, written)
    }

    /// Checkpoint `id` was aborted: the handles of its blocks, dead.
    pub(crate) fn abort(&mut self, id: u64) -> Vec<BlockHandle> {
        self.by_id
            .remove(&id)
            .map(|s| s.handles)
            .unwrap_or_default()
    }

    /// A flush failed (`reason`): every block appended so far may be lost.
    pub(crate) fn flush_failed(&mut self, reason: &str) {
        for s in self.by_id.values_mut() {
            s.lost
                .get_or_insert_with(|| format!("a write of its blocks failed: {reason}"));
        }
    }

    /// The blocks of checkpoint `id`, for its part.
    fn take(&mut self, id: u64) -> Streamed {
        self.by_id.remove(&id).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_storage::SegmentId;

    fn link(checkpoint: u64, offset: u64) -> ChainLink {
        ChainLink {
            handle: BlockHandle {
                segment: SegmentId(1),
                offset,
                len: 16,
                kind: BlockKind::KEYED_STATE_FULL,
            },
            delta: false,
            checkpoint,
            entries: 1,
            bytes: 16,
        }
    }

    fn key(group: u32) -> StateKey {
        (Arc::from("op"), Arc::from("table"), group)
    }

    /// Completes checkpoint `id` with these chains.
    fn complete(c: &mut SubtaskCheckpoints, id: u64, chains: Vec<(StateKey, Vec<ChainLink>)>) {
        let chains = chains.into_iter().map(|(k, l)| (k, l.into())).collect();
        c.begin(Barrier {
            id,
            trigger_ms: 0,
            mode: crate::checkpoint::CheckpointMode::Aligned,
        });
        c.written(id, chains);
        c.complete(id);
    }

    /// A background base is available until a committed chain takes it up;
    /// one overtaken by a newer committed base is abandoned in the store,
    /// but only once every checkpoint that could reference it has ended.
    #[test]
    fn background_bases_are_taken_up_or_abandoned() {
        let mut c = SubtaskCheckpoints::new(0, usize::MAX);
        c.set_groups(vec![0]);
        complete(
            &mut c,
            1,
            vec![(key(0), vec![link(1, 0)]), (key(1), vec![link(1, 64)])],
        );
        // Bases of both key groups, cut at checkpoint 2.
        c.begin(Barrier {
            id: 2,
            trigger_ms: 0,
            mode: crate::checkpoint::CheckpointMode::Aligned,
        });
        c.bases_written(vec![(key(0), link(2, 128)), (key(1), link(2, 192))]);
        assert_eq!(c.bases_snapshot().len(), 2);
        // A base older than the committed one is retired at once.
        c.bases_written(vec![(key(0), link(1, 256))]);
        // Checkpoint 3 takes up key group 0's base; key group 1 got a base
        // on the checkpoint's path instead (at the bounds).
        c.begin(Barrier {
            id: 4,
            trigger_ms: 0,
            mode: crate::checkpoint::CheckpointMode::Aligned,
        });
        complete(
            &mut c,
            3,
            vec![(key(0), vec![link(2, 128)]), (key(1), vec![link(3, 320)])],
        );
        assert!(c.bases_snapshot().is_empty(), "taken up or overtaken");
        // The stale base retired before checkpoint 2 began; the overtaken
        // one while checkpoint 4 had begun, which may reference it.
        let offsets = |c: &mut SubtaskCheckpoints| -> Vec<u64> {
            c.take_abandoned().iter().map(|h| h.offset).collect()
        };
        assert_eq!(offsets(&mut c), vec![256], "the stale base");
        c.abort(4);
        complete(
            &mut c,
            5,
            vec![(key(0), vec![link(2, 128)]), (key(1), vec![link(3, 320)])],
        );
        assert_eq!(offsets(&mut c), vec![192], "the overtaken base");
    }
}
