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
//! Flink. A function may also act once per advance of the watermark, for all
//! its keys at once ([`KeyedProcessFunction::on_watermark`], after the event
//! timers the advance fired): with state kept per key group
//! ([`KeyGroupState`](crate::state::KeyGroupState)) it sweeps a key group's
//! structure instead of firing a timer per key (windows do so).

mod build;
mod operator;

pub(crate) use build::{build_connected, build_single};

use super::{
    exchange, ConnectedStreams, Cx, Data, ExchangeData, KeyFn, KeyedStream, Output, Push, Record,
    StatefulOperator, Stream,
};
use crate::checkpoint::metadata::{TimerEntries, TIMERS_TABLE};
use crate::checkpoint::subtask::{BlockDesc, Chain, SnapshotBlock, StateRef, SubtaskCheckpoints};
use crate::checkpoint::Barrier;
use crate::error::ProcessError;
use crate::keygroup::{key_group_for, Key, KeyGroupRange};
use crate::metrics::OperatorMetrics;
use crate::schema::BlockSchema;
use crate::state::{
    CutPlan, Decided, IncrementalBounds, KeyGroup, KeyScope, Serialized, StateRegistry,
};
use crate::time::{TimeDomain, Timestamp, MAX_WATERMARK};
use crate::JobError;
use std::cell::RefCell;
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

    /// The current key's key group (addresses
    /// [`KeyGroupState`](crate::state::KeyGroupState)).
    pub fn key_group(&self) -> KeyGroup {
        KeyGroup::new(self.key_group_index)
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

/// The context of [`KeyedProcessFunction::on_watermark`]: the operator's
/// new watermark, its key groups (to visit state kept per key group) and
/// output. There is no current key.
pub struct WatermarkContext<'a, O> {
    watermark: Timestamp,
    key_groups: usize,
    now_ms: u64,
    out: &'a mut Vec<Record<O>>,
}

impl<O> WatermarkContext<'_, O> {
    /// The operator's input watermark, just advanced.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    /// How many key groups the subtask's range holds.
    pub fn key_group_count(&self) -> usize {
        self.key_groups
    }

    /// Every key group of the subtask's range, in order.
    pub fn key_groups(&self) -> impl Iterator<Item = KeyGroup> {
        (0..self.key_groups).map(KeyGroup::new)
    }

    /// The subtask's processing time (epoch ms) at the start of this step.
    pub fn processing_time(&self) -> u64 {
        self.now_ms
    }

    /// Emits `value` with timestamp `ts`, which must not be above the
    /// watermark's (records emitted here go out before the watermark).
    pub fn emit_at(&mut self, ts: Timestamp, value: O) {
        debug_assert!(ts <= self.watermark, "emitted at {ts}, after the watermark");
        self.out.push(Record { ts, value });
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

    /// Called once each time the operator's input watermark advances, after
    /// the event-time timers it made due have fired, and before the
    /// watermark goes downstream. Default: nothing.
    fn on_watermark(&mut self, ctx: &mut WatermarkContext<'_, O>) -> Result<(), ProcessError> {
        let _ = ctx;
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

    /// As [`KeyedProcessFunction::on_watermark`]: once per advance of the
    /// watermark (the minimum over both inputs). Default: nothing.
    fn on_watermark(&mut self, ctx: &mut WatermarkContext<'_, O>) -> Result<(), ProcessError> {
        let _ = ctx;
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
    fn on_watermark(&mut self, ctx: &mut WatermarkContext<'_, O>) -> Result<(), ProcessError> {
        self.0.on_watermark(ctx)
    }
}

/// Pending timers of one operator, per key group (the truth, a hash set,
/// which a cut archives group by group, copy-on-write like state tables,
/// instead of all at the barrier), and per domain a firing queue by time.
///
/// The queues hold keys in one bucket per timestamp (timers share few
/// timestamps: window ends), so registering a timer costs a small per-group
/// set insert and a push, not an insert into one ordered set of every timer.
/// Deleting a timer removes it from its group only; the queue entry goes
/// stale and is skipped when popped (a timer fires only while its group
/// holds it, so a deleted and re-registered timer still fires once).
pub(crate) struct Timers<K> {
    event: TimerQueue<K>,
    processing: TimerQueue<K>,
    /// Per key group of the range: (time, domain, key), domain 0 = event time.
    by_group: Vec<crate::data::FxHashSet<(u64, u8, K)>>,
    /// Timers held by `by_group`, event and processing time.
    len: usize,
    /// Per key group: the checkpoint whose cut it was archived for.
    archived_for: Vec<u64>,
    cut: Option<TimerCut<K>>,
}

/// Keys by timer timestamp, in firing order of time; within one timestamp,
/// last registered first. May hold stale keys (see [`Timers`]).
struct TimerQueue<K>(std::collections::BTreeMap<u64, Vec<K>>);

impl<K> TimerQueue<K> {
    fn new() -> Self {
        Self(std::collections::BTreeMap::new())
    }

    fn push(&mut self, ts: u64, key: K) {
        self.0.entry(ts).or_default().push(key);
    }

    /// The earliest entry if due at `now`, removed (possibly stale).
    fn pop_due(&mut self, now: u64) -> Option<(u64, K)> {
        loop {
            let mut first = self.0.first_entry()?;
            let ts = *first.key();
            if ts > now {
                return None;
            }
            match first.get_mut().pop() {
                Some(key) => {
                    if first.get().is_empty() {
                        first.remove();
                    }
                    return Some((ts, key));
                }
                None => {
                    first.remove();
                }
            }
        }
    }

    /// The earliest timestamp queued (possibly of a stale entry: an early
    /// wake-up at worst).
    fn first_time(&self) -> Option<u64> {
        self.0.first_key_value().map(|(ts, _)| *ts)
    }
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
            event: TimerQueue::new(),
            processing: TimerQueue::new(),
            by_group: (0..groups).map(|_| Default::default()).collect(),
            len: 0,
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
            let mut entries: TimerEntries<K> = timers
                .iter()
                .map(|(ts, d, k)| (*ts, *d, k.clone()))
                .collect();
            // In a fixed order, so that equal timers archive to equal bytes.
            entries.sort_unstable();
            cut.archived.push((group, entries));
        }
    }

    fn queue(&mut self, domain: u8) -> &mut TimerQueue<K> {
        if domain == 0 {
            &mut self.event
        } else {
            &mut self.processing
        }
    }

    fn insert(&mut self, group: usize, domain: u8, ts: u64, key: &K) {
        self.touch(group);
        if self.by_group[group].insert((ts, domain, key.clone())) {
            self.len += 1;
            self.queue(domain).push(ts, key.clone());
        }
    }

    fn remove(&mut self, group: usize, domain: u8, ts: u64, key: &K) {
        self.touch(group);
        if self.by_group[group].remove(&(ts, domain, key.clone())) {
            self.len -= 1;
        }
    }

    /// The earliest timer of `domain` if it is due at `now`, removed, with
    /// its key group's index in the range.
    fn pop_due(
        &mut self,
        domain: u8,
        now: u64,
        group_of: impl Fn(&K) -> usize,
    ) -> Option<(u64, K, usize)> {
        loop {
            let (ts, key) = self.queue(domain).pop_due(now)?;
            let group = group_of(&key);
            self.touch(group);
            let entry = (ts, domain, key);
            if !self.by_group[group].remove(&entry) {
                continue; // deleted since it was queued
            }
            self.len -= 1;
            return Some((ts, entry.2, group));
        }
    }

    /// Timers pending, event and processing time.
    fn len(&self) -> usize {
        self.len
    }

    fn next_processing(&self) -> Option<u64> {
        self.processing.first_time()
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

#[cfg(test)]
mod tests {
    use super::Timers;

    fn drain(timers: &mut Timers<u64>, domain: u8, now: u64) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| timers.pop_due(domain, now, |k| (*k % 4) as usize))
            .map(|(ts, key, group)| {
                assert_eq!(group, (key % 4) as usize);
                (ts, key)
            })
            .collect()
    }

    #[test]
    fn timers_fire_once_in_time_order_and_deleted_ones_never() {
        let mut timers = Timers::<u64>::new(4);
        for (ts, key) in [(30, 1), (10, 2), (20, 3), (10, 2), (10, 5), (20, 6)] {
            timers.insert((key % 4) as usize, 0, ts, &key);
        }
        assert_eq!(timers.len(), 5, "a repeated (time, key) is one timer");
        // Deleted, then registered again: fires once. Deleted: never.
        timers.remove(3, 0, 20, &3);
        timers.insert(3, 0, 20, &3);
        timers.remove(1, 0, 10, &5);
        timers.insert(1, 1, 15, &9);
        assert_eq!(timers.len(), 5);
        let fired = drain(&mut timers, 0, 20);
        let mut times: Vec<u64> = fired.iter().map(|f| f.0).collect();
        times.dedup();
        assert_eq!(times, [10, 20], "in order of time");
        let mut got = fired.clone();
        got.sort();
        assert_eq!(got, [(10, 2), (20, 3), (20, 6)]);
        assert_eq!(drain(&mut timers, 0, 29), []);
        assert_eq!(timers.next_processing(), Some(15));
        assert_eq!(drain(&mut timers, 1, 100), [(15, 9)]);
        assert_eq!(drain(&mut timers, 0, 100), [(30, 1)]);
        assert_eq!(timers.len(), 0);
    }
}
