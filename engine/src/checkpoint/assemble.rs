//! A checkpoint's subtask acknowledgements, and the metadata assembled from
//! them.
//!
//! Owns [`Ack`], what a subtask reports to the coordinator for its part of a
//! checkpoint, and [`Assembly`], which turns the acknowledgements of every
//! subtask for checkpoint `id` into the parts of its metadata: the block
//! handles the metadata refers to (by index), each key group's chain (its
//! committed prefix, then this checkpoint's block), the in-flight blocks,
//! the source offsets, the per-subtask figures, and the schemas of the
//! blocks, each once (interned: a table's schema is one shared value per
//! subtask, so each is compared by value at most once per subtask and
//! checkpoint). Pure data: must not touch
//! the coordinator's bookkeeping (checkpoints in progress, ids, failure
//! counts, shared counters), the control rings or the store, and decides
//! nothing about when a checkpoint commits.

use super::metadata::{ChainBlock, InFlightBlock, SourceOffset, StateBlock, SubtaskStats};
use super::subtask::{BlockDesc, ChainLink, StateRef};
use super::Barrier;
use crate::schema::BlockSchema;
use spate_storage::BlockHandle;
use std::collections::HashMap;
use std::sync::Arc;

/// A subtask's acknowledgement of its part of a checkpoint.
pub(crate) enum Ack {
    /// Written and durable.
    Done {
        barrier: Barrier,
        subtask: usize,
        handles: Vec<BlockHandle>,
        /// One per handle, same order.
        blocks: Vec<BlockDesc>,
        /// Unchanged key groups: committed chains referenced again.
        reused: Vec<StateRef>,
        sources: Vec<SourceOffset>,
        stats: SubtaskStats,
    },
    /// Could not be written.
    Failed {
        id: u64,
        subtask: usize,
        reason: String,
    },
    /// The subtask finished (after acknowledging every part before): every
    /// later checkpoint records it as finished, with these source offsets.
    Finished {
        subtask: usize,
        sources: Vec<SourceOffset>,
    },
}

/// The acknowledgement of a finished subtask for `barrier`: no blocks, its
/// final source offsets (`None` while it runs).
pub(super) fn finished_ack(
    parts: &[Option<Vec<SourceOffset>>],
    barrier: Barrier,
    subtask: usize,
) -> Option<Ack> {
    let sources = parts.get(subtask)?.clone()?;
    Some(Ack::Done {
        barrier,
        subtask,
        handles: Vec::new(),
        blocks: Vec::new(),
        reused: Vec::new(),
        sources,
        stats: SubtaskStats {
            subtask: subtask as u32,
            ..SubtaskStats::default()
        },
    })
}

/// The parts of checkpoint `id`'s metadata, gathered from its subtasks'
/// acknowledgements in subtask order.
pub(super) struct Assembly {
    id: u64,
    /// The blocks the metadata refers to, by index.
    pub handles: Vec<BlockHandle>,
    /// One per key group, sorted by (operator, table, key group) once
    /// [`finish`](Self::finish)ed.
    pub state: Vec<StateBlock>,
    pub in_flight: Vec<InFlightBlock>,
    pub sources: Vec<SourceOffset>,
    pub subtasks: Vec<SubtaskStats>,
    /// Whether a chain holds a delta or a key group was reused.
    pub incremental: bool,
    /// The blocks' schemas, each once; blocks name them by index.
    pub schemas: Vec<BlockSchema>,
    /// Index in `schemas` by the address of a subtask's shared schema.
    interned: HashMap<usize, u32>,
}

impl Assembly {
    /// Assembles checkpoint `id` from one acknowledgement per subtask.
    pub(super) fn of(id: u64, acks: &[Option<Ack>]) -> Self {
        assert!(
            acks.iter().all(Option::is_some),
            "checkpoint {id}: assembled before every subtask acknowledged"
        );
        let mut assembly = Assembly {
            id,
            handles: Vec::new(),
            state: Vec::new(),
            in_flight: Vec::new(),
            sources: Vec::new(),
            subtasks: Vec::new(),
            incremental: false,
            schemas: Vec::new(),
            interned: HashMap::new(),
        };
        for ack in acks.iter().flatten() {
            assembly.add_ack(ack);
        }
        assembly.finish();
        assert_eq!(
            assembly.subtasks.len(),
            acks.len(),
            "checkpoint {id}: one figure per subtask"
        );
        assembly
    }

    /// Adds one subtask's part: its blocks, its reused chains, its offsets.
    fn add_ack(&mut self, ack: &Ack) {
        let Ack::Done {
            barrier,
            handles,
            blocks,
            reused,
            sources,
            stats,
            ..
        } = ack
        else {
            unreachable!("only Done acks are stored");
        };
        assert_eq!(
            barrier.id, self.id,
            "checkpoint {}: an acknowledgement of checkpoint {} in its assembly",
            self.id, barrier.id
        );
        assert_eq!(
            handles.len(),
            blocks.len(),
            "checkpoint {}: one block description per handle",
            self.id
        );
        let handles_before = self.handles.len();
        for (handle, desc) in handles.iter().zip(blocks) {
            self.add_block(*handle, desc);
        }
        for r in reused {
            assert!(
                !r.prefix.is_empty(),
                "checkpoint {}: a reused key group references a committed chain",
                self.id
            );
            self.incremental = true;
            self.add_chain(r, None);
        }
        self.sources.extend(sources.iter().cloned());
        self.subtasks.push(stats.clone());
        assert!(
            self.handles.len() >= handles_before + handles.len(),
            "checkpoint {}: every written block is referenced",
            self.id
        );
    }

    /// Adds a block this checkpoint wrote at `handle`.
    fn add_block(&mut self, handle: BlockHandle, desc: &BlockDesc) {
        match desc {
            BlockDesc::State {
                state,
                delta,
                block_entries,
                bytes,
            } => {
                assert_eq!(
                    *delta,
                    !state.prefix.is_empty(),
                    "checkpoint {}: a delta extends a committed chain, a base starts one",
                    self.id
                );
                self.incremental |= *delta;
                let link = ChainLink {
                    handle,
                    delta: *delta,
                    checkpoint: self.id,
                    entries: *block_entries,
                    bytes: *bytes,
                };
                self.add_chain(state, Some(&link));
            }
            BlockDesc::InFlight { block, schema } => {
                self.handles.push(handle);
                let schema = self.intern(schema);
                self.in_flight.push(InFlightBlock {
                    handle: self.handles.len() as u32 - 1,
                    schema,
                    ..block.clone()
                });
            }
        }
        assert_eq!(
            self.handles.last(),
            Some(&handle),
            "checkpoint {}: a written block's handle follows its chain's",
            self.id
        );
    }

    /// Adds `state`'s chain: its committed prefix, then `own` (the block
    /// this checkpoint wrote, if any).
    fn add_chain(&mut self, state: &StateRef, own: Option<&ChainLink>) {
        let chain: Vec<ChainBlock> = state
            .prefix
            .iter()
            .chain(own)
            .map(|link| self.push_link(link))
            .collect();
        debug_assert!(
            chain.first().is_some_and(|b| !b.delta),
            "checkpoint {}: the chain of {:?} starts with a base",
            self.id,
            state.key
        );
        debug_assert!(
            chain.windows(2).all(|w| w[0].checkpoint < w[1].checkpoint)
                && chain.last().is_some_and(|b| b.checkpoint <= self.id),
            "checkpoint {}: the chain of {:?} holds blocks of strictly increasing, earlier or own checkpoints",
            self.id,
            state.key
        );
        let schema = self.intern(&state.schema);
        self.state.push(StateBlock {
            operator: state.key.0.to_string(),
            table: state.key.1.to_string(),
            key_group: state.key.2,
            chain,
            entries: state.entries,
            schema,
        });
    }

    /// The index of `schema` in the metadata's schemas, added if new. The
    /// acknowledgements hold every `Arc` while the assembly lives, so an
    /// address names one schema throughout.
    fn intern(&mut self, schema: &Arc<BlockSchema>) -> u32 {
        let address = Arc::as_ptr(schema) as usize;
        if let Some(&index) = self.interned.get(&address) {
            return index;
        }
        let index = match self.schemas.iter().position(|s| s == schema.as_ref()) {
            Some(i) => i as u32,
            None => {
                self.schemas.push(BlockSchema::clone(schema));
                self.schemas.len() as u32 - 1
            }
        };
        self.interned.insert(address, index);
        index
    }

    /// Adds `link`'s handle; the chain block referring to it.
    fn push_link(&mut self, link: &ChainLink) -> ChainBlock {
        self.handles.push(link.handle);
        ChainBlock {
            handle: self.handles.len() as u32 - 1,
            delta: link.delta,
            checkpoint: link.checkpoint,
            entries: link.entries,
            bytes: link.bytes,
        }
    }

    /// Sorts the key groups; checks that the metadata refers only to its
    /// own handles and lists every key group once.
    fn finish(&mut self) {
        self.state.sort_by(|a, b| {
            (&a.operator, &a.table, a.key_group).cmp(&(&b.operator, &b.table, b.key_group))
        });
        let handles = self.handles.len();
        debug_assert!(
            self.state
                .iter()
                .flat_map(|s| &s.chain)
                .map(|b| b.handle)
                .chain(self.in_flight.iter().map(|b| b.handle))
                .all(|h| (h as usize) < handles),
            "checkpoint {}: the metadata refers to a handle it does not hold",
            self.id
        );
        let schemas = self.schemas.len();
        debug_assert!(
            self.state
                .iter()
                .map(|s| s.schema)
                .chain(self.in_flight.iter().map(|b| b.schema))
                .all(|i| (i as usize) < schemas),
            "checkpoint {}: the metadata refers to a schema it does not hold",
            self.id
        );
        debug_assert!(
            self.state.windows(2).all(|w| {
                (&w[0].operator, &w[0].table, w[0].key_group)
                    < (&w[1].operator, &w[1].table, w[1].key_group)
            }),
            "checkpoint {}: a key group's state is listed twice",
            self.id
        );
    }
}
