//! The keyed operator itself: records and timers through the user's
//! function, and the operator's part of a checkpoint (cutting, deciding and
//! archiving its tables' key groups and its timers, within a step budget).

use super::*;

pub(super) struct Operator<K, I1, I2, O, F> {
    pub(super) name: String,
    pub(super) subtask: usize,
    pub(super) function: F,
    pub(super) key1: KeyFn<I1, K>,
    pub(super) key2: Option<KeyFn<I2, K>>,
    pub(super) range: KeyGroupRange,
    pub(super) max_parallelism: u32,
    pub(super) timers: Timers<K>,
    pub(super) out: Vec<Record<O>>,
    pub(super) output: Output<O>,
    pub(super) watermarks: [Timestamp; 2],
    pub(super) watermark: Timestamp,
    pub(super) open_inputs: usize,
    pub(super) ended: [bool; 2],
    pub(super) state: StateRegistry<K>,
    pub(super) checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    /// Last barrier seen on each input.
    pub(super) barriers: [Option<u64>; 2],
    /// Last checkpoint snapshotted.
    pub(super) snapshotted: u64,
    /// Incremental checkpoint bounds, when the job checkpoints incrementally.
    pub(super) incremental: Option<IncrementalBounds>,
    /// The snapshot being archived, key group by key group.
    pub(super) lazy: Option<LazySnapshot>,
    /// The operator's and its tables' names, shared into checkpoint keys
    /// (no allocation per key group at a cut).
    pub(super) names: (Arc<str>, Vec<Arc<str>>),
    /// What the operator's timer blocks archive.
    pub(super) timers_schema: Arc<BlockSchema>,
    /// The longest pause archiving bases in the background while no
    /// snapshot was in progress (µs): counted in the next checkpoint's.
    pub(super) background_pause_us: u64,
    /// How much a step archives in the background.
    pub(super) budget: StepBudget,
    /// Live figures for the monitor, published per batch (keyed state
    /// about once a second: counting keys visits every key group).
    pub(super) metrics: Arc<OperatorMetrics>,
    pub(super) next_state_sample_ms: u64,
    /// Values kept at a cut that this run already added to the metrics.
    pub(super) values_kept_published: u64,
}

/// A snapshot cut and not fully archived: what each frozen key group of
/// each table (by position) becomes in the checkpoint.
pub(super) struct LazySnapshot {
    pub(super) id: u64,
    pub(super) refs: crate::data::FxHashMap<(usize, usize), StateRef>,
}

/// How long a step archives frozen key groups in the background while a
/// snapshot is in progress (besides those archived before their next
/// change): at least one key group, more while this lasts. The pause a
/// snapshot adds to a step is about this plus one key group's archiving.
pub(super) const ARCHIVE_STEP_BUDGET: std::time::Duration = std::time::Duration::from_micros(200);

/// How much a step archives in the background: at least one key group, then
/// more while the budget lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StepBudget {
    /// A time ([`ARCHIVE_STEP_BUDGET`]).
    Time(std::time::Duration),
    /// A number of rounds (one key group per table and the timers each): the
    /// simulator's, so that a seed reproduces whatever the machine's speed.
    Rounds(usize),
    /// Until nothing is left (a snapshot finished before the next cut).
    Unbounded,
}

impl StepBudget {
    fn exhausted(self, started: std::time::Instant, rounds: usize) -> bool {
        match self {
            StepBudget::Time(budget) => started.elapsed() >= budget,
            StepBudget::Rounds(max) => rounds >= max,
            StepBudget::Unbounded => false,
        }
    }
}

/// Key groups of timers archived per round of a step's background work
/// (copying a key group's timers out is cheap; rkyv comes after).
pub(super) const TIMER_GROUPS_PER_ROUND: usize = 1;

/// Restored key groups a keyed operator loads per step in the background.
pub(super) const KEY_GROUPS_PER_STEP: usize = 1;

/// Key groups of a cut a keyed operator decides per step in the background
/// (besides those decided before their next write): a decision is a few
/// lookups, no copy.
pub(super) const DECISIONS_PER_STEP: usize = 64;

impl<K: Key, I1, I2, O: Data, F: CoProcessFunction<K, I1, I2, O>> Operator<K, I1, I2, O, F> {
    pub(super) fn error(&self, source: ProcessError) -> JobError {
        JobError::Operator {
            operator: self.name.clone(),
            subtask: self.subtask,
            source,
        }
    }

    /// Pushes what the function emitted downstream, counting it.
    pub(super) fn emit_out(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.metrics.records_out.add(self.out.len() as u64);
        self.output.push(&mut self.out, cx)
    }

    /// Publishes the timers pending and, once a second, the keyed state's
    /// size (after a batch or a round of timers, never per record).
    pub(super) fn publish_metrics(&mut self, now_ms: u64) {
        self.metrics.timers.set(self.timers.len() as u64);
        if now_ms < self.next_state_sample_ms {
            return;
        }
        self.next_state_sample_ms = now_ms + 1_000;
        let (mut keys, mut bytes, mut kept) = (0u64, 0u64, 0u64);
        for table in self.state.tables() {
            let table = table.borrow();
            for i in 0..self.range.len() {
                keys += table.keys_in_group(i) as u64;
                bytes += table.group_memory_bytes(i) as u64;
            }
            kept += table.values_kept();
        }
        self.metrics.state_keys.set(keys);
        self.metrics.state_bytes.set(bytes);
        // A counter across runs: this run's tables count from zero.
        self.metrics
            .values_kept
            .add(kept.saturating_sub(self.values_kept_published));
        self.values_kept_published = kept;
    }

    pub(super) fn key_group_index(&self, key: &K) -> usize {
        let group = key_group_for(key, self.max_parallelism);
        assert!(
            self.range.contains(group),
            "operator `{}` on subtask {} got key group {group} outside its range {:?}",
            self.name,
            self.subtask,
            self.range
        );
        (group - self.range.start) as usize
    }

    pub(super) fn process<I>(
        &mut self,
        batch: &mut Vec<Record<I>>,
        cx: &mut Cx,
        key_of: impl Fn(&Self, &I) -> K,
        call: impl Fn(&mut F, I, &mut KeyedContext<'_, K, O>) -> Result<(), ProcessError>,
    ) -> Result<(), JobError> {
        self.metrics.records_in.add(batch.len() as u64);
        for record in batch.drain(..) {
            let key = key_of(self, &record.value);
            let key_group_index = self.key_group_index(&key);
            let mut ctx = KeyedContext {
                key: &key,
                key_group_index,
                timestamp: record.ts,
                watermark: self.watermark,
                now_ms: cx.now_ms,
                out: &mut self.out,
                timers: &mut self.timers,
            };
            if let Err(e) = call(&mut self.function, record.value, &mut ctx) {
                return Err(self.error(e));
            }
        }
        self.publish_metrics(cx.now_ms);
        self.emit_out(cx)
    }

    pub(super) fn fire_event_timers(
        &mut self,
        watermark: Timestamp,
        cx: &mut Cx,
    ) -> Result<(), JobError> {
        loop {
            let (range, max_parallelism) = (self.range, self.max_parallelism);
            let group_of = |key: &K| (key_group_for(key, max_parallelism) - range.start) as usize;
            let Some((ts, key, group)) = self.timers.pop_due(0, watermark, group_of) else {
                break;
            };
            self.fire(ts, TimeDomain::EventTime, key, group, cx)?;
        }
        Ok(())
    }

    /// Fires the timer of `key` at `ts`; `key_group_index` is the key's
    /// group's index in the range (the timers know it: no second hash).
    pub(super) fn fire(
        &mut self,
        ts: Timestamp,
        domain: TimeDomain,
        key: K,
        key_group_index: usize,
        cx: &mut Cx,
    ) -> Result<(), JobError> {
        let mut ctx = KeyedContext {
            key: &key,
            key_group_index,
            timestamp: ts,
            watermark: self.watermark,
            now_ms: cx.now_ms,
            out: &mut self.out,
            timers: &mut self.timers,
        };
        if let Err(e) = self.function.on_timer(ts, domain, &mut ctx) {
            return Err(self.error(e));
        }
        if self.out.len() >= 1024 {
            self.emit_out(cx)?;
        }
        Ok(())
    }

    pub(super) fn input_watermark(
        &mut self,
        input: usize,
        watermark: Timestamp,
        cx: &mut Cx,
    ) -> Result<(), JobError> {
        self.watermarks[input] = self.watermarks[input].max(watermark);
        let min = self.watermarks[0].min(self.watermarks[1]);
        if min > self.watermark {
            self.watermark = min;
            if min != MAX_WATERMARK {
                self.metrics.watermark_ms.set(min);
            }
            self.fire_event_timers(min, cx)?;
            let mut ctx = WatermarkContext {
                watermark: min,
                key_groups: self.range.len(),
                now_ms: cx.now_ms,
                out: &mut self.out,
            };
            if let Err(e) = self.function.on_watermark(&mut ctx) {
                return Err(self.error(e));
            }
            self.emit_out(cx)?;
            self.output.watermark(min, cx)?;
        }
        Ok(())
    }

    pub(super) fn input_end(&mut self, input: usize, cx: &mut Cx) -> Result<(), JobError> {
        self.input_watermark(input, MAX_WATERMARK, cx)?;
        self.open_inputs -= 1;
        self.ended[input] = true;
        // A barrier waiting for this input now has every input it needs.
        if let Some(id) = self.barriers[1 - input] {
            if id > self.snapshotted {
                let pending = self.checkpoints.borrow().oldest_pending();
                if let Some(barrier) = pending.filter(|b| b.id == id) {
                    self.snapshot_and_forward(barrier, cx)?;
                }
            }
        }
        if self.open_inputs == 0 {
            // Checkpoints whose barrier never reached this operator were
            // triggered after its sources finished: its final state is their cut.
            let pending = self.checkpoints.borrow().oldest_pending();
            if let Some(barrier) = pending.filter(|b| b.id > self.snapshotted) {
                self.snapshot_and_forward(barrier, cx)?;
            }
            self.output.end(cx)?;
        }
        Ok(())
    }

    pub(super) fn input_barrier(
        &mut self,
        input: usize,
        barrier: Barrier,
        cx: &mut Cx,
    ) -> Result<(), JobError> {
        if barrier.id <= self.snapshotted {
            return Ok(()); // unaligned: the first input already took it
        }
        self.barriers[input] = Some(barrier.id);
        let unaligned = self.checkpoints.borrow().is_unaligned(barrier.id);
        let all = (0..2).all(|i| self.ended[i] || self.barriers[i] == Some(barrier.id));
        if unaligned || all {
            self.snapshot_and_forward(barrier, cx)?;
        }
        Ok(())
    }

    pub(super) fn snapshot_and_forward(
        &mut self,
        barrier: Barrier,
        cx: &mut Cx,
    ) -> Result<(), JobError> {
        self.cut(barrier.id)?;
        // Pending output belongs before the barrier.
        self.emit_out(cx)?;
        self.output.barrier(barrier, cx)
    }

    pub(super) fn snapshot_error(&self, id: u64, e: impl std::fmt::Display) -> JobError {
        JobError::from(crate::CheckpointError::Archive {
            what: format!(
                "operator `{}` on subtask {}: snapshot of checkpoint {id}",
                self.name, self.subtask
            ),
            reason: e.to_string(),
        })
    }

    /// The synchronous part of a snapshot, O(1) in the key groups: start
    /// the cut of every table (each key group decides what it becomes, a
    /// full base, a delta or nothing, before its next write or in the
    /// background) and archive the timers. Key groups are archived by
    /// [`continue_snapshot`](Self::continue_snapshot), a few per step, or
    /// before their next change (copy-on-write).
    pub(super) fn cut(&mut self, id: u64) -> Result<(), JobError> {
        // Concurrent checkpoints: the previous snapshot is archived first
        // (a key group is frozen for one checkpoint at a time).
        self.finish_snapshot()?;
        self.snapshotted = id;
        let started = std::time::Instant::now();
        let plan = Rc::new(CutPlan {
            id,
            committed: self.checkpoints.borrow().committed_snapshot(),
            committed_id: self.checkpoints.borrow().committed_id(),
            bases: self.checkpoints.borrow().bases_snapshot(),
            incremental: self.incremental,
            operator: self.names.0.clone(),
            range_start: u32::from(self.range.start),
        });
        let mut undecided = 0;
        // Writes later in this step may archive frozen key groups up to the
        // writer's backlog budget, then keep values per entry.
        let allowance = self.checkpoints.borrow().archive_allowance();
        for (position, table) in self.state.tables().iter().enumerate() {
            let mut table = table.borrow_mut();
            table.begin_cut(plan.clone(), self.names.1[position].clone());
            table.set_copy_allowance(allowance);
            undecided += table.undecided();
        }
        self.timers.begin_cut(id);
        undecided += self.timers.pending();
        let mut checkpoints = self.checkpoints.borrow_mut();
        // Background archiving since the last cut paused this reactor too.
        checkpoints.add_pause(id, std::mem::take(&mut self.background_pause_us));
        if undecided > 0 {
            self.lazy = Some(LazySnapshot {
                id,
                refs: crate::data::FxHashMap::default(),
            });
            checkpoints.open_log(id);
        } else {
            self.lazy = None;
        }
        checkpoints.add_pause(id, started.elapsed().as_micros() as u64);
        Ok(())
    }

    /// Finishes the snapshot in progress, if any, at once: decides and
    /// archives what is left (a pause counted in its checkpoint's).
    pub(super) fn finish_snapshot(&mut self) -> Result<(), JobError> {
        while let Some(id) = self.lazy.as_ref().map(|l| l.id) {
            if !self.continue_snapshot(StepBudget::Unbounded)? && self.lazy.is_some() {
                return Err(self.snapshot_error(
                    id,
                    "the snapshot in progress could not be finished before the next one",
                ));
            }
        }
        Ok(())
    }

    /// Archives up to `groups` frozen key groups (and collects those archived
    /// on demand); closes the snapshot when nothing is left. Returns whether
    /// it did anything.
    pub(super) fn continue_snapshot(&mut self, budget: StepBudget) -> Result<bool, JobError> {
        let Some(lazy) = &mut self.lazy else {
            return Ok(false);
        };
        let id = lazy.id;
        let step_started = std::time::Instant::now();
        let mut remaining = 0;
        let mut archived = Vec::new();
        let mut decided = Vec::new();
        // Archives made before writes since the last step were pauses of their own.
        let mut pause = 0;
        let tables = self.state.tables();
        // The writer is behind: archiving in the background waits for it,
        // and writes keep values per entry rather than copying whole key
        // groups ahead of it (memory stays the state plus the budget plus
        // the entries written meanwhile). Finishing a snapshot at once does
        // not wait.
        let behind = budget != StepBudget::Unbounded && self.checkpoints.borrow().archive_behind();
        for (position, table) in tables.iter().enumerate() {
            let mut table = table.borrow_mut();
            pause = pause.max(table.take_max_pause_us());
            table.decide_pending(match budget {
                StepBudget::Unbounded => usize::MAX,
                _ => DECISIONS_PER_STEP,
            });
            let decisions = table
                .take_decided()
                .map_err(|e| self.snapshot_error(id, e))?;
            decided.extend(decisions.into_iter().map(|(index, d)| (position, index, d)));
        }
        // Background archiving: one key group at least, more while the step's
        // budget lasts; the whole step counts as one pause.
        let mut timer_blocks = Vec::new();
        let mut rounds = 0;
        loop {
            rounds += 1;
            // Timers: serialize one key group copied out (before a change or
            // in the background), else copy one out.
            let mut any = match self.timers.take_archived(id) {
                Some((index, entries)) => {
                    timer_blocks.push(
                        self.timer_block(index, &entries)
                            .map_err(|e| self.snapshot_error(id, e))?,
                    );
                    true
                }
                None => self.timers.archive_pending(TIMER_GROUPS_PER_ROUND) > 0,
            };
            if !behind {
                for table in tables {
                    let mut table = table.borrow_mut();
                    if table.frozen_groups() > 0 {
                        any |= table.serialize_frozen(1) > 0;
                    }
                }
            }
            if !any || budget.exhausted(step_started, rounds) {
                break;
            }
        }
        for (position, table) in tables.iter().enumerate() {
            let mut table = table.borrow_mut();
            remaining += table.frozen_groups() + table.undecided();
            table.take_max_pause_us(); // within this step's pause
            archived.extend(table.take_serialized().into_iter().map(|r| (position, r)));
        }
        remaining += self.timers.pending() + self.timers.archived_waiting(id);
        let progressed = !timer_blocks.is_empty() || !archived.is_empty() || !decided.is_empty();
        if !decided.is_empty() {
            let lazy = self.lazy.as_mut().expect("checked above");
            let mut checkpoints = self.checkpoints.borrow_mut();
            for (position, index, decision) in decided {
                match decision {
                    Decided::Reused(state) => checkpoints.add_reused(id, state),
                    Decided::Frozen(state) => {
                        lazy.refs.insert((position, index), state);
                    }
                }
            }
        }
        let mut blocks = Vec::with_capacity(archived.len());
        for (position, result) in archived {
            let serialized = result.map_err(|e| self.snapshot_error(id, e))?;
            let lazy = self.lazy.as_mut().expect("checked above");
            if serialized.id != id {
                continue; // an aborted checkpoint's leftover
            }
            let Some(state) = lazy.refs.remove(&(position, serialized.index)) else {
                continue;
            };
            blocks.push(state_block(state, serialized));
        }
        let mut checkpoints = self.checkpoints.borrow_mut();
        for block in blocks.into_iter().chain(timer_blocks) {
            checkpoints.add_block(id, block);
        }
        // Writes until the next step may archive frozen key groups up to
        // the backlog budget, counting what is in the outbox now.
        let allowance = match budget {
            StepBudget::Unbounded => usize::MAX,
            _ => checkpoints.archive_allowance(),
        };
        for table in tables {
            table.borrow_mut().set_copy_allowance(allowance);
        }
        checkpoints.add_pause(id, pause.max(step_started.elapsed().as_micros() as u64));
        if remaining == 0 && self.lazy.as_ref().is_some_and(|l| l.refs.is_empty()) {
            self.lazy = None;
            checkpoints.close_log(id);
        }
        Ok(progressed)
    }

    /// Archives bases to materialise in the background (see
    /// [`crate::state::Decided`]) while no snapshot is in progress: at least
    /// one key group, more while the step's budget lasts, and hands them to
    /// the writer. Returns whether it did anything.
    pub(super) fn continue_background_bases(&mut self) -> Result<bool, JobError> {
        let tables = self.state.tables();
        // Every step calls this: nothing (not even the clock) when idle.
        if !tables.iter().any(|t| t.borrow().requested_bases() > 0) {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let mut worked = false;
        let mut rounds = 0;
        loop {
            rounds += 1;
            let mut any = false;
            for table in tables {
                let mut table = table.borrow_mut();
                if table.requested_bases() > 0 {
                    any |= table.serialize_requested_bases(1) > 0;
                }
            }
            worked |= any;
            if !any || self.budget.exhausted(started, rounds) {
                break;
            }
        }
        let mut pause = if worked {
            started.elapsed().as_micros() as u64
        } else {
            0
        };
        let mut archived = Vec::new();
        for (position, table) in tables.iter().enumerate() {
            let mut table = table.borrow_mut();
            // Archives made before writes since the last step.
            pause = pause.max(table.take_max_pause_us());
            archived.extend(table.take_serialized().into_iter().map(|r| (position, r)));
        }
        self.background_pause_us = self.background_pause_us.max(pause);
        let progressed = !archived.is_empty();
        for (position, result) in archived {
            let serialized = result.map_err(|e| {
                JobError::from(crate::CheckpointError::Archive {
                    what: format!(
                        "operator `{}` on subtask {}: a base archived in the background",
                        self.name, self.subtask
                    ),
                    reason: e.to_string(),
                })
            })?;
            // Nothing is frozen while no snapshot is in progress.
            debug_assert!(serialized.background);
            self.hand_over_base(position, serialized);
        }
        Ok(progressed)
    }

    /// Hands a base archived in the background to the writer.
    pub(super) fn hand_over_base(&self, position: usize, serialized: Serialized) {
        let group = (self.range.start as usize + serialized.index) as u32;
        let state = StateRef {
            key: (self.names.0.clone(), self.names.1[position].clone(), group),
            prefix: Chain::default(),
            entries: serialized.entries,
            schema: self.state.tables()[position].borrow().schema().clone(),
        };
        let checkpoint = serialized.id;
        self.checkpoints
            .borrow_mut()
            .add_background_base(checkpoint, state_block(state, serialized));
    }

    /// The block of key group `index`'s timers as a cut archived them (in
    /// full: timers are few per key group).
    pub(super) fn timer_block(
        &self,
        index: usize,
        entries: &TimerEntries<K>,
    ) -> Result<SnapshotBlock, rkyv::rancor::Error> {
        let count = entries.len() as u64;
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(entries)?;
        Ok(SnapshotBlock {
            kind: spate_storage::BlockKind::KEYED_STATE_FULL,
            desc: BlockDesc::State {
                state: StateRef {
                    key: (
                        self.names.0.clone(),
                        Arc::from(TIMERS_TABLE),
                        (self.range.start as usize + index) as u32,
                    ),
                    prefix: Chain::default(),
                    entries: count,
                    schema: self.timers_schema.clone(),
                },
                delta: false,
                block_entries: count,
                bytes: bytes.len() as u64,
            },
            bytes,
        })
    }

    /// Loads this subtask's key groups of a checkpoint: each chain's base,
    /// then its deltas in order; the chains become the committed base of the
    /// next incremental checkpoint.
    pub(super) fn restore(
        &mut self,
        restore: &crate::checkpoint::restore::RestoreState,
    ) -> Result<(), JobError> {
        let fail = |reason: String| {
            JobError::from(crate::RestoreError::Damaged {
                what: format!("operator `{}`", self.name),
                reason,
            })
        };
        // The types first: a changed layout is an error naming the state
        // and the field, before any block is attached.
        for table in self.state.tables() {
            let table = table.borrow();
            restore.check_state_schema(&self.name, table.name(), table.schema())?;
        }
        restore.check_state_schema(&self.name, TIMERS_TABLE, &self.timers_schema)?;
        for (position, table) in self.state.tables().iter().enumerate() {
            let mut table = table.borrow_mut();
            for index in 0..self.range.len() {
                let group = (self.range.start as usize + index) as u32;
                let Some((blocks, links, entries)) =
                    restore.state_chain(&self.name, table.name(), group)?
                else {
                    continue;
                };
                table.set_restored_entries(index, entries);
                // Loaded on first access or in the background (a few key
                // groups per step): records flow before the state is copied.
                table.restore_lazily(index, blocks);
                // No links: the chain is in another process's store, and
                // the next checkpoint writes the key group afresh.
                if !links.is_empty() {
                    self.checkpoints.borrow_mut().set_committed(
                        (self.names.0.clone(), self.names.1[position].clone(), group),
                        links,
                    );
                }
            }
        }
        for index in 0..self.range.len() {
            let group = (self.range.start as usize + index) as u32;
            let Some((blocks, _, _)) = restore.state_chain(&self.name, TIMERS_TABLE, group)? else {
                continue;
            };
            for (_, block) in blocks {
                let block = block
                    .resolve()
                    .map_err(|e| fail(format!("timers of key group {group}: {e}")))?;
                let entries = rkyv::from_bytes::<TimerEntries<K>, rkyv::rancor::Error>(&block)
                    .map_err(|e| fail(format!("timers of key group {group}: {e}")))?;
                for (ts, domain, key) in entries {
                    self.timers.insert(index, domain.min(1), ts, &key);
                }
            }
        }
        Ok(())
    }
}

/// The block of a key group archived for `state`.
pub(super) fn state_block(state: StateRef, serialized: Serialized) -> SnapshotBlock {
    SnapshotBlock {
        kind: if serialized.delta {
            spate_storage::BlockKind::KEYED_STATE_DELTA
        } else {
            spate_storage::BlockKind::KEYED_STATE_FULL
        },
        desc: BlockDesc::State {
            state,
            delta: serialized.delta,
            block_entries: serialized.entries,
            bytes: serialized.bytes.len() as u64,
        },
        bytes: serialized.bytes,
    }
}
