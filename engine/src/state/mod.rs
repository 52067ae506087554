//! Keyed state: per (operator, key group) hash maps of rkyv-archivable values.
//!
//! Owns the state tables and the handles user functions read and write them
//! through ([`ValueState`], [`MapState`], [`ListState`]). Each table keeps one
//! map per key group of the subtask's range, so a checkpoint can archive, and
//! a rescale can move, each key group by itself. Handles are scoped to the
//! current key by the context they are given ([`KeyScope`]), as in Flink.
//!
//! Maps use a fixed hasher (FxHash): iteration order depends only on the
//! inserted keys, which keeps simulated runs reproducible.
//!
//! Invariants (asserted in the tables below):
//! 1. A key group is decided at most once per cut, before its first write
//!    after the barrier or in the background, and the cut ends exactly when
//!    its last key group is decided (the count of undecided groups is exact).
//! 2. A cut's checkpoint is newer than the completion it builds on, and cuts
//!    of one table come in increasing checkpoint order.
//! 3. A frozen key group is archived before its next write (copy-on-write
//!    per key group), or, once such archives would run past the writer's
//!    backlog budget ([`StateTable::set_copy_allowance`]), the value a key
//!    had at the cut is kept before its first write (copy-on-write per
//!    entry); the archive is the group as it is with those values in place.
//!    The count of frozen groups is the number of `Some` slots.
//! 4. A key group restored lazily is loaded before it is read or written,
//!    and loaded once (a cut may reuse its restored chain unloaded).
//! 5. Keys captured by a checkpoint in progress stay held until it completes
//!    (and any cut building on an older completion ended) or it fails; they
//!    then return to the dirty set.

use crate::archive::{prefetched, take_buffer, Entries, EntryRef};
use crate::checkpoint::restore::RestoredBlock;
use crate::checkpoint::subtask::{Chain, StateKey, StateRef};
use crate::keygroup::{Key, KeyGroupRange};
use crate::schema::BlockSchema;
use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A first guess at the archived size of `n` entries (pooled buffers are
/// usually large enough already; the buffer grows if not).
fn archive_estimate<K, V>(n: usize) -> usize {
    n * std::mem::size_of::<(K, V)>() + 64
}

mod cut;
mod handles;
mod table;
#[cfg(test)]
mod tests;

pub use crate::data::{FxHashMap, StateData, StateMap};

use cut::{materialise_share, Cut};
pub(crate) use cut::{CutPlan, Decided, IncrementalBounds};
pub use handles::{KeyGroup, KeyGroupState, ListState, MapState, StateRegistry, ValueState};
pub use table::Serialized;
pub(crate) use table::{StateError, StateTable};

/// The current key of a keyed function call, as state handles see it.
pub trait KeyScope<K> {
    /// The key of the record or timer being processed.
    fn current_key(&self) -> &K;
    /// Index of the key's group within the subtask's key-group range.
    fn key_group_index(&self) -> usize;
}

/// Hash set with the engine's fixed hasher.
pub type FxHashSet<K> = std::collections::HashSet<K, BuildHasherDefault<rustc_hash::FxHasher>>;

/// Keys changed since the last completed checkpoint, per key group (for
/// incremental checkpoints). Keys captured by a checkpoint in progress wait
/// in `in_flight` until it completes, and return to `dirty` if it fails.
struct Changes<K> {
    dirty: Vec<FxHashSet<K>>,
    in_flight: Vec<(u64, Vec<FxHashSet<K>>)>,
    /// A checkpoint that completed while a cut building on older chains was
    /// in progress: its keys are forgotten when that cut ends.
    completed_during_cut: u64,
}

impl<K> Changes<K> {
    /// Group `index`'s keys held by checkpoints after `since`.
    fn held_after(&self, since: u64, index: usize) -> impl Iterator<Item = &FxHashSet<K>> {
        self.in_flight
            .iter()
            .filter(move |(id, _)| *id > since)
            .map(move |(_, groups)| &groups[index])
    }
}

/// A key group cut for a checkpoint and not archived yet.
struct Frozen<K, V> {
    id: u64,
    /// The captured keys, for a delta; `None` for a full base.
    delta: Option<FxHashSet<K>>,
    /// Keys written since the cut, with their value at the cut (`None`:
    /// absent then); only keys the archive includes (all for a base, the
    /// captured ones for a delta).
    before: FxHashMap<K, Option<V>>,
}

impl<K: Key, V: StateData> Frozen<K, V> {
    /// Keeps `key`'s value at the cut, `current` (before its first write
    /// since the cut; nothing if the archive does not include the key).
    /// Returns whether it kept one.
    fn keep_before(&mut self, key: &K, current: Option<&V>) -> bool {
        let included = self.delta.as_ref().is_none_or(|keys| keys.contains(key));
        if included && !self.before.contains_key(key) {
            self.before.insert(key.clone(), current.cloned());
            return true;
        }
        false
    }
}

/// The entries of `group` as they were at the cut: the current ones, with
/// the values in `before` in place of those written since.
fn entries_at_cut<'a, K: Key, V>(
    group: &'a StateMap<K, V>,
    before: &'a FxHashMap<K, Option<V>>,
) -> Vec<EntryRef<'a, K, V>> {
    let mut entries: Vec<EntryRef<'a, K, V>> = group
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .map(|(k, v)| EntryRef(k, v))
        .collect();
    entries.extend(
        before
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| EntryRef(k, v))),
    );
    entries
}

/// For a value that is a map itself: its entries and the bytes its table
/// takes.
pub(crate) type InnerSize<V> = fn(&V) -> (usize, usize);

/// A table of per-key values, one map per key group of the range.
pub(crate) struct KeyedTable<K, V> {
    name: String,
    groups: Vec<StateMap<K, V>>,
    changes: Option<Changes<K>>,
    frozen: Vec<Option<Frozen<K, V>>>,
    frozen_count: usize,
    /// Bytes of archives that first writes to frozen key groups may still
    /// make; at 0 they keep values at the cut per entry instead (the writer
    /// is behind).
    copy_allowance: usize,
    /// Values kept at a cut per entry so far (for the monitor).
    values_kept: u64,
    /// For values that are maps themselves: their entries and the bytes
    /// their tables take (for the monitor's keys and state size).
    inner_size: Option<InnerSize<V>>,
    /// Chains of a restored checkpoint not loaded yet, per key group.
    to_load: Vec<Option<Vec<(bool, RestoredBlock)>>>,
    to_load_count: usize,
    load_error: Option<StateError>,
    serialized: Vec<Result<Serialized, StateError>>,
    max_pause_us: u64,
    /// Estimated changed bytes of the subtask (change-volume trigger).
    changed_bytes: Option<Arc<AtomicU64>>,
    /// The cut in progress, while key groups are undecided.
    cut: Option<Cut>,
    /// Per key group: the checkpoint it last decided for.
    decided_for: Vec<u64>,
    decisions: Vec<(usize, Decided)>,
    cut_error: Option<StateError>,
    /// Keys per restored key group (for chains reused while unloaded).
    restored_entries: Vec<u64>,
    /// Per key group: a base to materialise in the background, requested by
    /// this checkpoint. It is archived whenever the background gets to it,
    /// with no copy-on-write: any state between this checkpoint's cut and
    /// the cut of the checkpoint that takes the base up will do, since the
    /// committed deltas after this cut overwrite every key changed since.
    base_requests: Vec<Option<u64>>,
    /// Key groups with `base_requests` set, roughly in the order they were set.
    base_request_queue: std::collections::VecDeque<usize>,
    base_request_count: usize,
    /// Per key group: the cut of the last base requested in the background
    /// (none is requested again while one newer than the chain is on its way).
    base_requested: Vec<u64>,
    /// The first key group of the subtask's range (for error messages).
    first_group: u32,
    /// What the table's blocks archive (recorded with them).
    schema: Arc<BlockSchema>,
}

impl<K: Key, V: StateData> KeyedTable<K, V> {
    fn new(
        name: &str,
        range: KeyGroupRange,
        track_changes: bool,
        changed_bytes: Option<Arc<AtomicU64>>,
    ) -> Self {
        Self {
            first_group: u32::from(range.start),
            changed_bytes,
            name: name.to_string(),
            groups: (0..range.len()).map(|_| StateMap::default()).collect(),
            changes: track_changes.then(|| Changes {
                dirty: (0..range.len()).map(|_| FxHashSet::default()).collect(),
                in_flight: Vec::new(),
                completed_during_cut: 0,
            }),
            frozen: (0..range.len()).map(|_| None).collect(),
            frozen_count: 0,
            copy_allowance: usize::MAX,
            values_kept: 0,
            inner_size: None,
            to_load: (0..range.len()).map(|_| None).collect(),
            to_load_count: 0,
            load_error: None,
            serialized: Vec::new(),
            max_pause_us: 0,
            cut: None,
            decided_for: vec![0; range.len()],
            decisions: Vec::new(),
            cut_error: None,
            restored_entries: vec![0; range.len()],
            base_requests: vec![None; range.len()],
            base_request_queue: std::collections::VecDeque::new(),
            base_request_count: 0,
            base_requested: vec![0; range.len()],
            schema: Arc::new(BlockSchema::keyed::<K, V>()),
        }
    }
}

impl<K: Key, V: StateData> KeyedTable<K, V> {
    /// Counts each value as the entries of a map, `size` giving its entries
    /// and the bytes its table takes ([`KeyGroupState::of_maps`]).
    pub(crate) fn set_inner_size(&mut self, size: InnerSize<V>) {
        self.inner_size = Some(size);
    }

    /// The current key's group, for a read (loaded first if restored lazily).
    #[inline]
    fn read(&mut self, scope: &impl KeyScope<K>) -> &StateMap<K, V> {
        self.read_group(scope.key_group_index())
    }

    /// Group `index`, for a read (loaded first if restored lazily).
    #[inline]
    fn read_group(&mut self, index: usize) -> &StateMap<K, V> {
        if self.to_load_count > 0 {
            self.load(index);
        }
        &self.groups[index]
    }

    /// Loads group `index` from its restored chain, if it waits.
    fn load(&mut self, index: usize) {
        let Some(chain) = self.to_load[index].take() else {
            return;
        };
        assert!(self.to_load_count > 0, "state `{}`: load count", self.name);
        self.to_load_count -= 1;
        debug_assert!(self.to_load_count < self.to_load.len(), "loads pending");
        for (delta, block) in chain {
            let handle = block.handle();
            let block = match block.resolve() {
                Ok(block) => block,
                Err(reason) => {
                    self.load_error.get_or_insert(StateError::Arrive {
                        table: self.name.clone(),
                        block: handle,
                        reason,
                    });
                    continue;
                }
            };
            let applied = if delta {
                self.restore_delta(index, &block)
            } else {
                self.restore_group(index, &block)
            };
            if let Err(e) = applied {
                self.load_error.get_or_insert(StateError::Load {
                    table: self.name.clone(),
                    block: block.handle(),
                    source: e,
                });
            }
        }
    }

    /// The current key's group, for a write: the key is recorded as changed.
    #[inline]
    fn touched(&mut self, scope: &impl KeyScope<K>) -> &mut StateMap<K, V> {
        let index = scope.key_group_index();
        if self.to_load_count > 0 {
            self.load(index);
        }
        if let Some(cut) = &self.cut {
            if self.decided_for[index] != cut.plan.id {
                // First write since the barrier: decide on the state as it was.
                self.decide(index);
            }
        }
        if self.frozen_count > 0 {
            if let Some(frozen) = &mut self.frozen[index] {
                if self.copy_allowance == 0 {
                    // Copy-on-write per entry: the key's value at the cut.
                    let key = scope.current_key();
                    if frozen.keep_before(key, self.groups[index].get(key)) {
                        self.values_kept += 1;
                    }
                } else {
                    // Copy-on-write per key group: archive the cut now.
                    let made = self.archive_frozen(index);
                    self.copy_allowance = self.copy_allowance.saturating_sub(made.max(1));
                }
            }
        }
        if let Some(changes) = &mut self.changes {
            let dirty = &mut changes.dirty[index];
            if !dirty.contains(scope.current_key()) {
                dirty.insert(scope.current_key().clone());
                if let Some(counter) = &self.changed_bytes {
                    counter.fetch_add(std::mem::size_of::<(K, V)>() as u64, Ordering::Relaxed);
                }
            }
        }
        &mut self.groups[index]
    }

    /// Decides what key group `index` becomes in the current cut: the
    /// decision the barrier would have made (the group has not changed since).
    fn decide(&mut self, index: usize) {
        let Some(cut) = &mut self.cut else {
            return;
        };
        let plan = cut.plan.clone();
        let key: StateKey = (
            plan.operator.clone(),
            cut.table.clone(),
            plan.range_start + index as u32,
        );
        assert!(
            cut.undecided > 0 && self.decided_for[index] != plan.id,
            "state `{}`: key group {index} decided twice for checkpoint {}",
            self.name,
            plan.id
        );
        cut.undecided -= 1;
        let last = cut.undecided == 0;
        self.decided_for[index] = plan.id;
        self.decide_group(index, &plan, key);
        if last {
            // After the last group's capture: completions held back until
            // the cut ended may drop the keys it needed only now.
            self.end_cut();
        }
    }

    /// [`decide`](Self::decide) for one key group, named `key` in the plan.
    fn decide_group(&mut self, index: usize, plan: &CutPlan, key: StateKey) {
        let id = plan.id;
        let mut committed = plan.committed.get(&key).cloned().unwrap_or_default();
        if let (Some(base), Some(first)) = (plan.bases.get(&key), committed.first()) {
            if base.checkpoint > first.checkpoint {
                // Take up the base materialised in the background: it holds
                // the state at its cut, the committed deltas after that cut
                // hold every change since.
                committed = std::iter::once(base.clone())
                    .chain(
                        committed
                            .iter()
                            .filter(|l| l.checkpoint > base.checkpoint)
                            .cloned(),
                    )
                    .collect();
            }
        }
        let schema = self.schema.clone();
        if self.to_load[index].is_some() {
            if plan.incremental.is_some() && !committed.is_empty() {
                // Restored and untouched since: the chain stands as is.
                let state = StateRef {
                    key,
                    prefix: committed,
                    entries: self.restored_entries[index],
                    schema,
                };
                self.decisions.push((index, Decided::Reused(state)));
                return;
            }
            self.load(index);
            if let Some(e) = self.load_error.take() {
                self.cut_error.get_or_insert(e);
                return;
            }
        }
        let entries = self.groups[index].len() as u64;
        let state = StateRef {
            key,
            prefix: Chain::default(),
            entries,
            schema,
        };
        if entries == 0 {
            // Empty: no block and no chain (absence restores empty).
            let keys = self.capture(index, plan.committed_id);
            self.hold_captured(index, id, keys);
            return;
        }
        if let Some(bounds) = plan.incremental {
            if !committed.is_empty() {
                if !self.changed_since(index, plan.committed_id) {
                    let state = StateRef {
                        prefix: committed,
                        ..state
                    };
                    self.decisions.push((index, Decided::Reused(state)));
                    return;
                }
                let deltas = committed.len() as u32 - 1;
                let base = committed[0].bytes as f64;
                let delta_bytes: u64 = committed[1..].iter().map(|l| l.bytes).sum();
                let group = plan.range_start + index as u32;
                // Materialise in the background when the chain or its bytes
                // reach this key group's share of their bounds: between half
                // and all of them, fixed per key group. Key groups updated
                // alike would otherwise all reach a bound at the same
                // checkpoint and write their bases together, a burst every
                // few checkpoints. At the bounds themselves (no background
                // base arrived in time), the checkpoint writes the base.
                let reached = |share: f64| {
                    f64::from(deltas) >= f64::from(bounds.max_delta_chain) * share
                        || delta_bytes as f64 > base * bounds.max_delta_ratio * share
                };
                if !reached(1.0) {
                    self.freeze(index, id, plan.committed_id, true);
                    let in_progress = self.base_requested[index] > committed[0].checkpoint;
                    if reached(materialise_share(group)) && !in_progress {
                        // Materialise off the checkpoint's path.
                        self.base_requested[index] = id;
                        if self.base_requests[index].replace(id).is_none() {
                            self.base_request_count += 1;
                            self.base_request_queue.push_back(index);
                        }
                    }
                    let state = StateRef {
                        prefix: committed,
                        ..state
                    };
                    self.decisions.push((index, Decided::Frozen(state)));
                    return;
                }
            }
        }
        self.freeze(index, id, plan.committed_id, false);
        self.decisions.push((index, Decided::Frozen(state)));
    }

    /// Takes group `index`'s keys changed since checkpoint `since` completed:
    /// those changed since the last cut, and (concurrent checkpoints) copies
    /// of those captured by checkpoints after `since` still in progress.
    fn capture(&mut self, index: usize, since: u64) -> FxHashSet<K> {
        let Some(changes) = &mut self.changes else {
            return FxHashSet::default();
        };
        let mut keys = std::mem::take(&mut changes.dirty[index]);
        for held in changes.held_after(since, index) {
            keys.extend(held.iter().cloned());
        }
        keys
    }

    /// Whether group `index` changed since checkpoint `since` completed.
    fn changed_since(&self, index: usize, since: u64) -> bool {
        self.changes.as_ref().is_some_and(|c| {
            !c.dirty[index].is_empty() || c.held_after(since, index).any(|h| !h.is_empty())
        })
    }

    /// The cut in progress ended: completions it held back take effect.
    fn end_cut(&mut self) {
        self.cut = None;
        if let Some(changes) = &mut self.changes {
            let completed = std::mem::take(&mut changes.completed_during_cut);
            changes.in_flight.retain(|(i, _)| *i > completed);
        }
    }

    /// Keeps keys captured by checkpoint `id` until it completes or fails.
    fn hold_captured(&mut self, index: usize, id: u64, keys: FxHashSet<K>) {
        let Some(changes) = &mut self.changes else {
            return;
        };
        let slot = match changes.in_flight.iter().position(|(i, _)| *i == id) {
            Some(p) => p,
            None => {
                let groups = changes.dirty.len();
                changes
                    .in_flight
                    .push((id, (0..groups).map(|_| FxHashSet::default()).collect()));
                changes.in_flight.len() - 1
            }
        };
        let held = &mut changes.in_flight[slot].1[index];
        if held.is_empty() {
            *held = keys;
        } else {
            held.extend(keys);
        }
    }

    /// Archives frozen group `index` now; returns the archive's bytes.
    fn archive_frozen(&mut self, index: usize) -> usize {
        let Some(frozen) = self.frozen[index].take() else {
            return 0;
        };
        assert!(self.frozen_count > 0, "state `{}`: frozen count", self.name);
        self.frozen_count -= 1;
        let started = std::time::Instant::now();
        let before = &frozen.before;
        let result = match frozen.delta {
            None => self.archive_base(index, frozen.id, false, before),
            Some(keys) => {
                let group = &self.groups[index];
                let mut upserts: Vec<(&K, &V)> = Vec::with_capacity(keys.len());
                let mut deletes: Vec<K> = Vec::new();
                for key in &keys {
                    let at_cut = match before.get_key_value(key) {
                        Some((k, v)) => v.as_ref().map(|v| (k, v)),
                        None => group.get_key_value(key),
                    };
                    match at_cut {
                        Some((k, v)) => upserts.push((k, v)),
                        None => deletes.push(key.clone()),
                    }
                }
                let entries = (upserts.len() + deletes.len()) as u64;
                let buffer = take_buffer(archive_estimate::<K, V>(keys.len()));
                // Archives exactly like `(Vec<(K, V)>, Vec<K>)`, which restore reads.
                let archived = rkyv::api::high::to_bytes_in::<_, RkyvError>(
                    &(Entries(prefetched(&upserts)), deletes),
                    buffer,
                );
                drop(upserts);
                self.hold_captured(index, frozen.id, keys);
                archived
                    .map_err(|e| self.archive_error(index, e))
                    .map(|bytes| Serialized {
                        index,
                        id: frozen.id,
                        delta: true,
                        entries,
                        bytes,
                        background: false,
                    })
            }
        };
        self.max_pause_us = self.max_pause_us.max(started.elapsed().as_micros() as u64);
        let bytes = result.as_ref().map_or(0, |s| s.bytes.len());
        self.serialized.push(result);
        bytes
    }

    /// Archives group `index`'s base to materialise in the background now.
    fn archive_requested_base(&mut self, index: usize) {
        let Some(id) = self.base_requests[index].take() else {
            return;
        };
        self.base_request_count -= 1;
        let started = std::time::Instant::now();
        let result = self.archive_base(index, id, true, &FxHashMap::default());
        self.max_pause_us = self.max_pause_us.max(started.elapsed().as_micros() as u64);
        self.serialized.push(result);
    }

    /// Archiving group `index` failed.
    fn archive_error(&self, index: usize, source: RkyvError) -> StateError {
        StateError::Archive {
            table: self.name.clone(),
            group: self.first_group + index as u32,
            source,
        }
    }

    /// Group `index` archived as a full base for checkpoint `id`, with the
    /// values in `before` in place of the current ones (the group at its cut).
    fn archive_base(
        &self,
        index: usize,
        id: u64,
        background: bool,
        before: &FxHashMap<K, Option<V>>,
    ) -> Result<Serialized, StateError> {
        let (archived, entries) = if before.is_empty() {
            (self.snapshot_group(index), self.groups[index].len())
        } else {
            let entries = entries_at_cut(&self.groups[index], before);
            let buffer = take_buffer(archive_estimate::<K, V>(entries.len()));
            let archived = rkyv::api::high::to_bytes_in::<_, RkyvError>(
                &Entries(entries.iter().map(|e| EntryRef(e.0, e.1))),
                buffer,
            );
            (archived, entries.len())
        };
        archived
            .map_err(|e| self.archive_error(index, e))
            .map(|bytes| Serialized {
                index,
                id,
                delta: false,
                entries: entries as u64,
                bytes,
                background,
            })
    }
}

impl<K: Key, V: StateData> KeyedTable<K, V> {
    /// Loads one key group from its chain (a base, then deltas, oldest first)
    /// exactly as a restore does, into a table of its own; for inspection
    /// ([`crate::inspect`]). On failure: the position in the chain of the block
    /// that does not check, and why.
    pub(crate) fn load_detached<'a>(
        chain: impl IntoIterator<Item = (bool, &'a [u8])>,
    ) -> Result<StateMap<K, V>, (usize, RkyvError)> {
        let mut table = Self::new("inspect", KeyGroupRange { start: 0, end: 1 }, false, None);
        for (position, (delta, bytes)) in chain.into_iter().enumerate() {
            let applied = if delta {
                table.restore_delta(0, bytes)
            } else {
                table.restore_group(0, bytes)
            };
            applied.map_err(|e| (position, e))?;
        }
        Ok(table.groups.pop().expect("a table of one key group"))
    }
}

impl<K: Key, V: StateData> StateTable for KeyedTable<K, V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn keys_in_group(&self, index: usize) -> usize {
        match self.inner_size {
            Some(size) => self.groups[index].iter().map(|(_, v)| size(v).0).sum(),
            None => self.groups[index].len(),
        }
    }

    fn group_memory_bytes(&self, index: usize) -> usize {
        let inner = match self.inner_size {
            Some(size) => self.groups[index].iter().map(|(_, v)| size(v).1).sum(),
            None => 0,
        };
        self.groups[index].memory_bytes() + inner
    }

    fn schema(&self) -> &Arc<BlockSchema> {
        &self.schema
    }

    fn snapshot_group(&self, index: usize) -> Result<AlignedVec, RkyvError> {
        let group = &self.groups[index];
        let entries = Entries(group.iter().map(|(k, v)| EntryRef(k, v)));
        let buffer = take_buffer(archive_estimate::<K, V>(group.len()));
        rkyv::api::high::to_bytes_in::<_, RkyvError>(&entries, buffer)
    }

    fn restore_group(&mut self, index: usize, archive: &[u8]) -> Result<(), RkyvError> {
        let entries = rkyv::from_bytes::<Vec<(K, V)>, RkyvError>(archive)?;
        let group = &mut self.groups[index];
        group.clear();
        group.reserve(entries.len());
        group.extend(entries);
        Ok(())
    }

    fn freeze(&mut self, index: usize, id: u64, since: u64, delta: bool) {
        assert!(
            id > since,
            "state `{}`: checkpoint {id} cut on checkpoint {since}",
            self.name
        );
        let keys = self.capture(index, since);
        let frozen = if delta {
            Frozen {
                id,
                delta: Some(keys),
                before: FxHashMap::default(),
            }
        } else {
            self.hold_captured(index, id, keys);
            Frozen {
                id,
                delta: None,
                before: FxHashMap::default(),
            }
        };
        if self.frozen[index].replace(frozen).is_none() {
            self.frozen_count += 1;
        }
        debug_assert!(
            self.frozen_count <= self.frozen.len() && self.frozen[index].is_some(),
            "frozen groups"
        );
    }

    fn restore_lazily(&mut self, index: usize, chain: Vec<(bool, RestoredBlock)>) {
        if self.to_load[index].replace(chain).is_none() {
            self.to_load_count += 1;
        }
    }

    fn load_pending(&mut self, max: usize) -> Result<usize, StateError> {
        let mut loaded = 0;
        let mut index = 0;
        while loaded < max && self.to_load_count > 0 && index < self.to_load.len() {
            // In the background only what has arrived: a key group still
            // arriving from the remote tier waits for its first access.
            if self.to_load[index]
                .as_ref()
                .is_some_and(|chain| chain.iter().all(|(_, b)| b.is_ready()))
            {
                self.load(index);
                loaded += 1;
            }
            index += 1;
        }
        match self.load_error.take() {
            Some(e) => Err(e),
            None => Ok(loaded),
        }
    }

    fn loads_ready(&self) -> bool {
        self.to_load_count > 0
            && self
                .to_load
                .iter()
                .flatten()
                .any(|chain| chain.iter().all(|(_, b)| b.is_ready()))
    }

    fn serialize_frozen(&mut self, max: usize) -> usize {
        let mut done = 0;
        let mut index = 0;
        while done < max && self.frozen_count > 0 && index < self.frozen.len() {
            if self.frozen[index].is_some() {
                self.archive_frozen(index);
                done += 1;
            }
            index += 1;
        }
        done
    }

    fn frozen_groups(&self) -> usize {
        self.frozen_count
    }

    fn set_copy_allowance(&mut self, bytes: usize) {
        self.copy_allowance = bytes;
    }

    fn values_kept(&self) -> u64 {
        self.values_kept
    }

    fn serialize_requested_bases(&mut self, max: usize) -> usize {
        let mut done = 0;
        while done < max && self.base_request_count > 0 {
            let Some(index) = self.base_request_queue.pop_front() else {
                break; // unreachable while the count is right
            };
            if self.base_requests[index].is_some() {
                self.archive_requested_base(index);
                done += 1;
            }
        }
        done
    }

    fn requested_bases(&self) -> usize {
        self.base_request_count
    }

    fn take_serialized(&mut self) -> Vec<Result<Serialized, StateError>> {
        std::mem::take(&mut self.serialized)
    }

    fn take_max_pause_us(&mut self) -> u64 {
        std::mem::take(&mut self.max_pause_us)
    }

    fn restore_delta(&mut self, index: usize, archive: &[u8]) -> Result<(), RkyvError> {
        let (upserts, deletes) = rkyv::from_bytes::<(Vec<(K, V)>, Vec<K>), RkyvError>(archive)?;
        let group = &mut self.groups[index];
        for key in deletes {
            group.remove(&key);
        }
        group.extend(upserts);
        Ok(())
    }

    fn begin_cut(&mut self, plan: Rc<CutPlan>, table: Arc<str>) {
        assert!(
            plan.id > plan.committed_id,
            "state `{}`: checkpoint {} cut on checkpoint {}",
            self.name,
            plan.id,
            plan.committed_id
        );
        debug_assert!(
            self.decided_for.iter().all(|&d| d < plan.id),
            "state `{}`: checkpoint {} cut after a later one",
            self.name,
            plan.id
        );
        self.end_cut();
        self.decisions.clear();
        self.cut_error = None;
        let undecided = self.groups.len();
        self.cut = (undecided > 0).then_some(Cut {
            plan,
            table,
            undecided,
            cursor: 0,
        });
    }

    fn decide_pending(&mut self, max: usize) -> usize {
        let mut done = 0;
        while done < max {
            let Some(cut) = &mut self.cut else {
                break;
            };
            let index = cut.cursor;
            if index >= self.groups.len() {
                break; // unreachable while the count is right
            }
            cut.cursor += 1;
            if self.decided_for[index] != cut.plan.id {
                self.decide(index);
                done += 1;
            }
        }
        done
    }

    fn undecided(&self) -> usize {
        self.cut.as_ref().map_or(0, |c| c.undecided)
    }

    fn take_decided(&mut self) -> Result<Vec<(usize, Decided)>, StateError> {
        match self.cut_error.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut self.decisions)),
        }
    }

    fn set_restored_entries(&mut self, index: usize, entries: u64) {
        self.restored_entries[index] = entries;
    }

    fn checkpoint_complete(&mut self, id: u64) {
        let building_on_older = self.cut.as_ref().is_some_and(|c| c.plan.committed_id < id);
        if let Some(changes) = &mut self.changes {
            if building_on_older {
                // Concurrent checkpoints: the cut in progress builds on the
                // chains before `id` and still needs the keys `id` captured.
                changes.completed_during_cut = changes.completed_during_cut.max(id);
            } else {
                changes.in_flight.retain(|(i, _)| *i > id);
            }
        }
    }

    fn checkpoint_aborted(&mut self, id: u64) {
        if self.cut.as_ref().is_some_and(|c| c.plan.id == id) {
            // Undecided key groups captured nothing: their changes stay dirty.
            self.end_cut();
            self.decisions.clear();
        }
        for index in 0..self.frozen.len() {
            if self.frozen[index].as_ref().is_some_and(|f| f.id == id) {
                let frozen = self.frozen[index].take().expect("checked");
                self.frozen_count -= 1;
                if let (Some(keys), Some(changes)) = (frozen.delta, &mut self.changes) {
                    changes.dirty[index].extend(keys);
                }
            }
        }
        self.serialized
            .retain(|s| s.as_ref().map_or(true, |s| s.id != id));
        if let Some(changes) = &mut self.changes {
            if let Some(p) = changes.in_flight.iter().position(|(i, _)| *i == id) {
                let (_, groups) = changes.in_flight.remove(p);
                for (dirty, keys) in changes.dirty.iter_mut().zip(groups) {
                    dirty.extend(keys);
                }
            }
        }
    }
}
