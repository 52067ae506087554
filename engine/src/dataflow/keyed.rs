//! Keyed operators: process functions with keyed state and timers, on one or
//! two inputs.
//!
//! One implementation serves both shapes: a single-input
//! [`KeyedProcessFunction`] runs as a two-input operator whose second input
//! never exists. Records arrive through exchanges, so every key seen here
//! belongs to this subtask's key-group range (asserted). Event-time timers
//! fire in timestamp order when the operator's input watermark (the minimum
//! over its inputs) passes them; processing-time timers fire when the
//! subtask's clock does. Timers are deduplicated per (timestamp, key) as in
//! Flink.

use super::{
    exchange, ConnectedStreams, Cx, Data, ExchangeData, KeyFn, KeyedStream, Output,
    ProcessingTimers, Push, Record, Stream,
};
use crate::checkpoint::metadata::{timers_type_name, TimerEntries, TIMERS_TABLE};
use crate::checkpoint::subtask::{BlockDesc, Chain, SnapshotBlock, StateRef, SubtaskCheckpoints};
use crate::checkpoint::Barrier;
use crate::error::ProcessError;
use crate::keygroup::{key_group_for, Key, KeyGroupRange};
use crate::state::{CutPlan, Decided, IncrementalBounds, KeyScope, Serialized, StateRegistry};
use crate::time::{TimeDomain, Timestamp, MAX_WATERMARK};
use crate::JobError;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

/// The context of one keyed function call: the current key (which scopes
/// state handles), the record's or timer's timestamp, timers and output.
pub struct KeyedContext<'a, K, O> {
    key: &'a K,
    key_group_index: usize,
    timestamp: Timestamp,
    watermark: Timestamp,
    now_ms: u64,
    out: &'a mut Vec<Record<O>>,
    timers: &'a mut Timers<K>,
}

impl<K: Key, O> KeyedContext<'_, K, O> {
    /// The current key.
    pub fn key(&self) -> &K {
        self.key
    }

    /// Timestamp of the current record, or of the firing timer.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The operator's current input watermark.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    /// The subtask's processing time (epoch ms) at the start of this step.
    pub fn processing_time(&self) -> u64 {
        self.now_ms
    }

    /// Emits `value` with the current timestamp.
    pub fn emit(&mut self, value: O) {
        self.out.push(Record {
            ts: self.timestamp,
            value,
        });
    }

    /// Emits `value` with timestamp `ts`.
    pub fn emit_at(&mut self, ts: Timestamp, value: O) {
        self.out.push(Record { ts, value });
    }

    /// Fires [`on_timer`](KeyedProcessFunction::on_timer) for the current key
    /// once the watermark reaches `ts`.
    pub fn register_event_time_timer(&mut self, ts: Timestamp) {
        self.timers.insert(self.key_group_index, 0, ts, self.key);
    }

    /// Fires the timer for the current key once processing time reaches `ts`.
    pub fn register_processing_time_timer(&mut self, ts: u64) {
        self.timers.insert(self.key_group_index, 1, ts, self.key);
    }

    /// Removes the current key's event-time timer at `ts`, if any.
    pub fn delete_event_time_timer(&mut self, ts: Timestamp) {
        self.timers.remove(self.key_group_index, 0, ts, self.key);
    }

    /// Removes the current key's processing-time timer at `ts`, if any.
    pub fn delete_processing_time_timer(&mut self, ts: u64) {
        self.timers.remove(self.key_group_index, 1, ts, self.key);
    }
}

impl<K: Key, O> KeyScope<K> for KeyedContext<'_, K, O> {
    fn current_key(&self) -> &K {
        self.key
    }
    fn key_group_index(&self) -> usize {
        self.key_group_index
    }
}

/// A function over a keyed stream (Flink's `KeyedProcessFunction`). Closures
/// `FnMut(I, &mut KeyedContext<K, O>) -> Result<(), ProcessError>` implement it.
pub trait KeyedProcessFunction<K, I, O>: 'static {
    /// Called for every record.
    fn process_element(
        &mut self,
        value: I,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError>;

    /// Called when a timer of the current key fires.
    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError> {
        let _ = (timestamp, domain, ctx);
        Ok(())
    }
}

impl<K, I, O, F> KeyedProcessFunction<K, I, O> for F
where
    F: FnMut(I, &mut KeyedContext<'_, K, O>) -> Result<(), ProcessError> + 'static,
{
    fn process_element(
        &mut self,
        value: I,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError> {
        self(value, ctx)
    }
}

/// A function over two connected keyed streams (Flink's
/// `KeyedCoProcessFunction`): both inputs share keyed state and timers.
pub trait CoProcessFunction<K, I1, I2, O>: 'static {
    /// Called for every record of the first input.
    fn process_element1(
        &mut self,
        value: I1,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError>;

    /// Called for every record of the second input.
    fn process_element2(
        &mut self,
        value: I2,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError>;

    /// Called when a timer of the current key fires.
    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError> {
        let _ = (timestamp, domain, ctx);
        Ok(())
    }
}

/// Runs a single-input function as a two-input one without a second input
/// (whose type is `()`; no record ever arrives on it).
struct Single<P>(P);

impl<K, I, O, P: KeyedProcessFunction<K, I, O>> CoProcessFunction<K, I, (), O> for Single<P> {
    fn process_element1(
        &mut self,
        value: I,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError> {
        self.0.process_element(value, ctx)
    }
    fn process_element2(
        &mut self,
        _value: (),
        _ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError> {
        unreachable!("a single-input operator has no second input")
    }
    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), ProcessError> {
        self.0.on_timer(timestamp, domain, ctx)
    }
}

/// Pending timers of one operator: the firing order (by time) and, for
/// checkpoints, the same timers per key group, which a cut archives group by
/// group (copy-on-write, like state tables) instead of all at the barrier.
pub(crate) struct Timers<K> {
    event: BTreeSet<(Timestamp, K)>,
    processing: BTreeSet<(u64, K)>,
    /// Per key group of the range: (time, domain, key), domain 0 = event time.
    by_group: Vec<BTreeSet<(u64, u8, K)>>,
    /// Per key group: the checkpoint whose cut it was archived for.
    archived_for: Vec<u64>,
    cut: Option<TimerCut<K>>,
}

/// A cut of the timers in progress.
struct TimerCut<K> {
    id: u64,
    /// Key groups not archived yet.
    remaining: usize,
    /// Next key group the background archives.
    cursor: usize,
    /// Archived key groups that have timers, by range index.
    archived: Vec<(usize, TimerEntries<K>)>,
}

impl<K: Key> Timers<K> {
    fn new(groups: usize) -> Self {
        Self {
            event: BTreeSet::new(),
            processing: BTreeSet::new(),
            by_group: (0..groups).map(|_| BTreeSet::new()).collect(),
            archived_for: vec![0; groups],
            cut: None,
        }
    }

    /// Before a change to key group `group`: archive it first if a cut waits for it.
    #[inline]
    fn touch(&mut self, group: usize) {
        if let Some(cut) = &self.cut {
            if self.archived_for[group] != cut.id {
                self.archive(group);
            }
        }
    }

    fn archive(&mut self, group: usize) {
        let Some(cut) = &mut self.cut else {
            return;
        };
        self.archived_for[group] = cut.id;
        cut.remaining -= 1;
        let timers = &self.by_group[group];
        if !timers.is_empty() {
            let entries = timers
                .iter()
                .map(|(ts, d, k)| (*ts, *d, k.clone()))
                .collect();
            cut.archived.push((group, entries));
        }
    }

    fn domain_set(&mut self, domain: u8) -> &mut BTreeSet<(u64, K)> {
        if domain == 0 {
            &mut self.event
        } else {
            &mut self.processing
        }
    }

    fn insert(&mut self, group: usize, domain: u8, ts: u64, key: &K) {
        self.touch(group);
        if self.domain_set(domain).insert((ts, key.clone())) {
            self.by_group[group].insert((ts, domain, key.clone()));
        }
    }

    fn remove(&mut self, group: usize, domain: u8, ts: u64, key: &K) {
        self.touch(group);
        if self.domain_set(domain).remove(&(ts, key.clone())) {
            self.by_group[group].remove(&(ts, domain, key.clone()));
        }
    }

    /// The earliest timer of `domain` if it is due at `now`, removed.
    fn pop_due(
        &mut self,
        domain: u8,
        now: u64,
        group_of: impl Fn(&K) -> usize,
    ) -> Option<(u64, K)> {
        let (ts, key) = self.domain_set(domain).first()?;
        if *ts > now {
            return None;
        }
        let (ts, key) = (*ts, key.clone());
        let group = group_of(&key);
        self.touch(group);
        self.domain_set(domain).remove(&(ts, key.clone()));
        self.by_group[group].remove(&(ts, domain, key.clone()));
        Some((ts, key))
    }

    fn next_processing(&self) -> Option<u64> {
        self.processing.first().map(|(ts, _)| *ts)
    }

    /// Starts the cut of checkpoint `id` (a previous one still pending was aborted).
    fn begin_cut(&mut self, id: u64) {
        let groups = self.by_group.len();
        self.cut = (groups > 0).then(|| TimerCut {
            id,
            remaining: groups,
            cursor: 0,
            archived: Vec::new(),
        });
    }

    /// Archives up to `max` key groups of the cut; returns how many.
    fn archive_pending(&mut self, max: usize) -> usize {
        let mut done = 0;
        while done < max {
            let Some(cut) = &mut self.cut else {
                break;
            };
            if cut.remaining == 0 || cut.cursor >= self.by_group.len() {
                break;
            }
            let group = cut.cursor;
            cut.cursor += 1;
            if self.archived_for[group] != cut.id {
                self.archive(group);
                done += 1;
            }
        }
        done
    }

    /// Key groups of the cut not archived yet.
    fn pending(&self) -> usize {
        self.cut.as_ref().map_or(0, |c| c.remaining)
    }

    /// One key group archived for checkpoint `id` and not serialized yet.
    fn take_archived(&mut self, id: u64) -> Option<(usize, TimerEntries<K>)> {
        match &mut self.cut {
            Some(cut) if cut.id == id => cut.archived.pop(),
            _ => None,
        }
    }

    /// Key groups copied out for checkpoint `id` and not serialized yet.
    fn archived_waiting(&self, id: u64) -> usize {
        match &self.cut {
            Some(cut) if cut.id == id => cut.archived.len(),
            _ => 0,
        }
    }
}

struct Operator<K, I1, I2, O, F> {
    name: String,
    subtask: usize,
    function: F,
    key1: KeyFn<I1, K>,
    key2: Option<KeyFn<I2, K>>,
    range: KeyGroupRange,
    max_parallelism: u32,
    timers: Timers<K>,
    out: Vec<Record<O>>,
    output: Output<O>,
    watermarks: [Timestamp; 2],
    watermark: Timestamp,
    open_inputs: usize,
    ended: [bool; 2],
    state: StateRegistry<K>,
    checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    /// Last barrier seen on each input.
    barriers: [Option<u64>; 2],
    /// Last checkpoint snapshotted.
    snapshotted: u64,
    /// Incremental checkpoint bounds, when the job checkpoints incrementally.
    incremental: Option<IncrementalBounds>,
    /// The snapshot being archived, key group by key group.
    lazy: Option<LazySnapshot>,
    /// The operator's and its tables' names, shared into checkpoint keys
    /// (no allocation per key group at a cut).
    names: (Arc<str>, Vec<Arc<str>>),
    /// The longest pause archiving bases in the background while no
    /// snapshot was in progress (µs): counted in the next checkpoint's.
    background_pause_us: u64,
    /// How much a step archives in the background.
    budget: StepBudget,
}

/// A snapshot cut and not fully archived: what each frozen key group of
/// each table (by position) becomes in the checkpoint.
struct LazySnapshot {
    id: u64,
    refs: crate::data::FxHashMap<(usize, usize), StateRef>,
}

/// How long a step archives frozen key groups in the background while a
/// snapshot is in progress (besides those archived before their next
/// change): at least one key group, more while this lasts. The pause a
/// snapshot adds to a step is about this plus one key group's archiving.
const ARCHIVE_STEP_BUDGET: std::time::Duration = std::time::Duration::from_micros(200);

/// How much a step archives in the background: at least one key group, then
/// more while the budget lasts.
#[derive(Clone, Copy, Debug)]
enum StepBudget {
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
const TIMER_GROUPS_PER_ROUND: usize = 1;

/// Restored key groups a keyed operator loads per step in the background.
const KEY_GROUPS_PER_STEP: usize = 1;

/// Key groups of a cut a keyed operator decides per step in the background
/// (besides those decided before their next write): a decision is a few
/// lookups, no copy.
const DECISIONS_PER_STEP: usize = 64;

impl<K: Key, I1, I2, O: Data, F: CoProcessFunction<K, I1, I2, O>> Operator<K, I1, I2, O, F> {
    fn error(&self, source: ProcessError) -> JobError {
        JobError::Operator {
            operator: self.name.clone(),
            subtask: self.subtask,
            source,
        }
    }

    fn key_group_index(&self, key: &K) -> usize {
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

    fn process<I>(
        &mut self,
        batch: &mut Vec<Record<I>>,
        cx: &mut Cx,
        key_of: impl Fn(&Self, &I) -> K,
        call: impl Fn(&mut F, I, &mut KeyedContext<'_, K, O>) -> Result<(), ProcessError>,
    ) -> Result<(), JobError> {
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
        self.output.push(&mut self.out, cx)
    }

    fn fire_event_timers(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        loop {
            let (range, max_parallelism) = (self.range, self.max_parallelism);
            let group_of = |key: &K| (key_group_for(key, max_parallelism) - range.start) as usize;
            let Some((ts, key)) = self.timers.pop_due(0, watermark, group_of) else {
                break;
            };
            self.fire(ts, TimeDomain::EventTime, key, cx)?;
        }
        Ok(())
    }

    fn fire(
        &mut self,
        ts: Timestamp,
        domain: TimeDomain,
        key: K,
        cx: &mut Cx,
    ) -> Result<(), JobError> {
        let key_group_index = self.key_group_index(&key);
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
            self.output.push(&mut self.out, cx)?;
        }
        Ok(())
    }

    fn input_watermark(
        &mut self,
        input: usize,
        watermark: Timestamp,
        cx: &mut Cx,
    ) -> Result<(), JobError> {
        self.watermarks[input] = self.watermarks[input].max(watermark);
        let min = self.watermarks[0].min(self.watermarks[1]);
        if min > self.watermark {
            self.watermark = min;
            self.fire_event_timers(min, cx)?;
            self.output.push(&mut self.out, cx)?;
            self.output.watermark(min, cx)?;
        }
        Ok(())
    }

    fn input_end(&mut self, input: usize, cx: &mut Cx) -> Result<(), JobError> {
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

    fn input_barrier(
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

    fn snapshot_and_forward(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        self.cut(barrier.id)?;
        // Pending output belongs before the barrier.
        self.output.push(&mut self.out, cx)?;
        self.output.barrier(barrier, cx)
    }

    fn snapshot_error(&self, id: u64, e: String) -> JobError {
        JobError::Checkpoint(format!(
            "operator `{}` on subtask {}: snapshot of checkpoint {id} failed: {e}",
            self.name, self.subtask
        ))
    }

    /// The synchronous part of a snapshot, O(1) in the key groups: start
    /// the cut of every table (each key group decides what it becomes, a
    /// full base, a delta or nothing, before its next write or in the
    /// background) and archive the timers. Key groups are archived by
    /// [`continue_snapshot`](Self::continue_snapshot), a few per step, or
    /// before their next change (copy-on-write).
    fn cut(&mut self, id: u64) -> Result<(), JobError> {
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
        for (position, table) in self.state.tables().iter().enumerate() {
            let mut table = table.borrow_mut();
            table.begin_cut(plan.clone(), self.names.1[position].clone());
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
    fn finish_snapshot(&mut self) -> Result<(), JobError> {
        while let Some(id) = self.lazy.as_ref().map(|l| l.id) {
            if !self.continue_snapshot(StepBudget::Unbounded)? && self.lazy.is_some() {
                return Err(self.snapshot_error(
                    id,
                    "the snapshot in progress could not be finished before the next one".into(),
                ));
            }
        }
        Ok(())
    }

    /// Archives up to `groups` frozen key groups (and collects those archived
    /// on demand); closes the snapshot when nothing is left. Returns whether
    /// it did anything.
    fn continue_snapshot(&mut self, budget: StepBudget) -> Result<bool, JobError> {
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
            for table in tables {
                let mut table = table.borrow_mut();
                if table.frozen_groups() > 0 {
                    any |= table.serialize_frozen(1) > 0;
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
    fn continue_background_bases(&mut self) -> Result<bool, JobError> {
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
                JobError::Checkpoint(format!(
                    "operator `{}` on subtask {}: a base archived in the background failed: {e}",
                    self.name, self.subtask
                ))
            })?;
            // Nothing is frozen while no snapshot is in progress.
            debug_assert!(serialized.background);
            self.hand_over_base(position, serialized);
        }
        Ok(progressed)
    }

    /// Hands a base archived in the background to the writer.
    fn hand_over_base(&self, position: usize, serialized: Serialized) {
        let group = (self.range.start as usize + serialized.index) as u32;
        let state = StateRef {
            key: (self.names.0.clone(), self.names.1[position].clone(), group),
            prefix: Chain::default(),
            entries: serialized.entries,
            type_name: self.state.tables()[position].borrow().type_name(),
        };
        let checkpoint = serialized.id;
        self.checkpoints
            .borrow_mut()
            .add_background_base(checkpoint, state_block(state, serialized));
    }

    /// The block of key group `index`'s timers as a cut archived them (in
    /// full: timers are few per key group).
    fn timer_block(
        &self,
        index: usize,
        entries: &TimerEntries<K>,
    ) -> Result<SnapshotBlock, String> {
        let count = entries.len() as u64;
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(entries).map_err(|e| e.to_string())?;
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
                    type_name: timers_type_name::<K>(),
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
    fn restore(
        &mut self,
        restore: &crate::checkpoint::restore::RestoreState,
    ) -> Result<(), JobError> {
        let fail = |what: String| JobError::Restore(format!("operator `{}`: {what}", self.name));
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
                self.checkpoints.borrow_mut().set_committed(
                    (self.names.0.clone(), self.names.1[position].clone(), group),
                    links,
                );
            }
        }
        for index in 0..self.range.len() {
            let group = (self.range.start as usize + index) as u32;
            let Some((blocks, _, _)) = restore.state_chain(&self.name, TIMERS_TABLE, group)? else {
                continue;
            };
            for (_, block) in blocks {
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
fn state_block(state: StateRef, serialized: Serialized) -> SnapshotBlock {
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

type Shared<K, I1, I2, O, F> = Rc<RefCell<Operator<K, I1, I2, O, F>>>;

struct Input1<K, I1, I2, O, F>(Shared<K, I1, I2, O, F>);
struct Input2<K, I1, I2, O, F>(Shared<K, I1, I2, O, F>);

impl<K: Key, I1, I2, O: Data, F: CoProcessFunction<K, I1, I2, O>> Push<I1>
    for Input1<K, I1, I2, O, F>
{
    fn push(&mut self, batch: &mut Vec<Record<I1>>, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().process(
            batch,
            cx,
            |op, v| (op.key1)(v),
            |f, v, ctx| f.process_element1(v, ctx),
        )
    }
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_watermark(0, watermark, cx)
    }
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_end(0, cx)
    }
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_barrier(0, barrier, cx)
    }
}

impl<K: Key, I1, I2, O: Data, F: CoProcessFunction<K, I1, I2, O>> Push<I2>
    for Input2<K, I1, I2, O, F>
{
    fn push(&mut self, batch: &mut Vec<Record<I2>>, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().process(
            batch,
            cx,
            |op, v| (op.key2.as_ref().expect("second input is keyed"))(v),
            |f, v, ctx| f.process_element2(v, ctx),
        )
    }
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_watermark(1, watermark, cx)
    }
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_end(1, cx)
    }
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_barrier(1, barrier, cx)
    }
}

impl<K: Key, I1: 'static, I2: 'static, O: Data, F: CoProcessFunction<K, I1, I2, O>> ProcessingTimers
    for RefCell<Operator<K, I1, I2, O, F>>
{
    fn fire_processing_timers(&self, cx: &mut Cx) -> Result<bool, JobError> {
        let mut op = self.borrow_mut();
        let mut fired = false;
        loop {
            let (range, max_parallelism) = (op.range, op.max_parallelism);
            let group_of = |key: &K| (key_group_for(key, max_parallelism) - range.start) as usize;
            let Some((ts, key)) = op.timers.pop_due(1, cx.now_ms, group_of) else {
                break;
            };
            op.fire(ts, TimeDomain::ProcessingTime, key, cx)?;
            fired = true;
        }
        if fired {
            let op = &mut *op;
            op.output.push(&mut op.out, cx)?;
        }
        Ok(fired)
    }

    fn next_processing_timer(&self) -> Option<u64> {
        self.borrow().timers.next_processing()
    }

    fn checkpoint_complete(&self, id: u64) {
        for table in self.borrow().state.tables() {
            table.borrow_mut().checkpoint_complete(id);
        }
    }

    fn checkpoint_aborted(&self, id: u64) {
        let mut op = self.borrow_mut();
        if op.lazy.as_ref().is_some_and(|l| l.id == id) {
            op.lazy = None;
        }
        for table in op.state.tables() {
            table.borrow_mut().checkpoint_aborted(id);
        }
    }

    fn snapshot_if_finished(&self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        let mut op = self.borrow_mut();
        if op.open_inputs == 0 && barrier.id > op.snapshotted {
            op.cut(barrier.id)?;
        }
        let _ = cx;
        Ok(())
    }

    fn continue_snapshot(&self) -> Result<bool, JobError> {
        let mut op = self.borrow_mut();
        let mut progressed = false;
        // Restored key groups load in the background, a few per step; a
        // load that failed on access is reported here too.
        let mut budget = KEY_GROUPS_PER_STEP;
        for table in op.state.tables() {
            let loaded = table
                .borrow_mut()
                .load_pending(budget)
                .map_err(|e| JobError::Restore(format!("operator `{}`: {e}", op.name)))?;
            budget -= loaded;
            progressed |= loaded > 0;
        }
        if op.lazy.is_none() {
            return Ok(op.continue_background_bases()? || progressed);
        }
        let budget = op.budget;
        Ok(op.continue_snapshot(budget)? || progressed)
    }

    fn has_background_work(&self) -> bool {
        self.borrow()
            .state
            .tables()
            .iter()
            .any(|t| t.borrow().requested_bases() > 0)
    }

    fn has_snapshot_work(&self) -> bool {
        let op = self.borrow();
        op.lazy.is_some()
            || op
                .state
                .tables()
                .iter()
                .any(|t| t.borrow().pending_loads() > 0)
    }
}

#[allow(clippy::type_complexity)]
fn build<
    K: Key,
    I1: ExchangeData,
    I2: ExchangeData,
    O: Data,
    F: CoProcessFunction<K, I1, I2, O>,
>(
    first: &KeyedStream<K, I1>,
    second: Option<&KeyedStream<K, I2>>,
    name: &str,
    factory: impl FnOnce(&mut StateRegistry<K>) -> F,
) -> Stream<O> {
    let df = &first.stream.df;
    df.claim_name(name);
    let (range, max_parallelism, subtask) = {
        let g = df.graph();
        (g.range, g.max_parallelism, g.subtask)
    };
    let incremental = df
        .graph()
        .env
        .config
        .checkpoint
        .as_ref()
        .filter(|c| c.incremental)
        .map(|c| IncrementalBounds {
            max_delta_chain: c.max_delta_chain.max(1),
            max_delta_ratio: c.max_delta_ratio,
        });
    let (track_changes, changed_bytes) = {
        let g = df.graph();
        let checkpoint = g.env.config.checkpoint.as_ref();
        let volume = checkpoint.is_some_and(|c| c.trigger_after_changed_bytes.is_some());
        (
            incremental.is_some() || volume,
            volume.then(|| g.env.coordinator.changed_bytes[g.subtask].clone()),
        )
    };
    let budget = match df
        .graph()
        .env
        .archive_groups_per_step
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        0 => StepBudget::Time(ARCHIVE_STEP_BUDGET),
        rounds => StepBudget::Rounds(rounds),
    };
    let mut registry = StateRegistry::new(range, track_changes, changed_bytes);
    let function = factory(&mut registry);
    df.sign(format!(
        "keyed {name}: {} [{}]",
        std::any::type_name::<K>(),
        registry
            .tables()
            .iter()
            .map(|t| {
                let t = t.borrow();
                format!("{}: {}", t.name(), t.type_name())
            })
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let names = (
        Arc::<str>::from(name),
        registry
            .tables()
            .iter()
            .map(|t| Arc::<str>::from(t.borrow().name()))
            .collect(),
    );
    let output = Output::new();
    let op = Rc::new(RefCell::new(Operator {
        name: name.to_string(),
        subtask,
        function,
        key1: first.key.clone(),
        key2: second.map(|s| s.key.clone()),
        range,
        max_parallelism,
        timers: Timers::new(range.len()),
        out: Vec::new(),
        output: output.clone(),
        watermarks: [0, if second.is_some() { 0 } else { MAX_WATERMARK }],
        watermark: 0,
        open_inputs: if second.is_some() { 2 } else { 1 },
        ended: [false, second.is_none()],
        state: registry,
        checkpoints: df.checkpoints(),
        barriers: [None, None],
        snapshotted: 0,
        incremental,
        lazy: None,
        background_pause_us: 0,
        budget,
        names,
    }));
    if let Some(restore) = df.restore_state() {
        let restored = op.borrow_mut().restore(&restore);
        if let Err(e) = restored {
            df.fail_build(e);
        }
    }
    let (in1, chain1) = exchange::exchange(
        df,
        &first.stream.output,
        &first.stream.chains,
        first.key.clone(),
        (name, 0),
    );
    in1.attach(Box::new(Input1(op.clone())));
    let mut chains = vec![chain1];
    if let Some(second) = second {
        let (in2, chain2) = exchange::exchange(
            df,
            &second.stream.output,
            &second.stream.chains,
            second.key.clone(),
            (name, 1),
        );
        in2.attach(Box::new(Input2(op.clone())));
        df.link_inputs(chain1, chain2);
        chains.push(chain2);
    }
    df.graph().timer_operators.push(op);
    Stream {
        df: df.clone(),
        output,
        chains: Rc::new(chains),
    }
}

pub(crate) fn build_single<K: Key, T: ExchangeData, O: Data, P: KeyedProcessFunction<K, T, O>>(
    keyed: &KeyedStream<K, T>,
    name: &str,
    factory: impl FnOnce(&mut StateRegistry<K>) -> P,
) -> Stream<O> {
    build::<K, T, (), O, _>(keyed, None, name, |registry| Single(factory(registry)))
}

pub(crate) fn build_connected<
    K: Key,
    T1: ExchangeData,
    T2: ExchangeData,
    O: Data,
    P: CoProcessFunction<K, T1, T2, O>,
>(
    connected: &ConnectedStreams<K, T1, T2>,
    name: &str,
    factory: impl FnOnce(&mut StateRegistry<K>) -> P,
) -> Stream<O> {
    build(&connected.first, Some(&connected.second), name, factory)
}
