//! Stateless chained operators, the source input and the sink operator.

use super::{Cx, Data, Dataflow, Input, InputState, Output, OutputBuffer, Push, Record};
use crate::checkpoint::metadata::SourceOffset;
use crate::checkpoint::restore::SourceRestore;
use crate::checkpoint::subtask::SubtaskCheckpoints;
use crate::checkpoint::Barrier;
use crate::error::{JobError, SinkError};
use crate::metrics::{OperatorKind, OperatorMetrics};
use crate::sink::{Sink, SinkContext};
use crate::source::{Source, SourceContext, SourcePoll};
use crate::time::{Timestamp, WatermarkStrategy, MAX_WATERMARK};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

pub(crate) struct Map<T, U, F> {
    f: F,
    out: Vec<Record<U>>,
    output: Output<U>,
    _in: std::marker::PhantomData<T>,
}

impl<T, U: Data, F: FnMut(T) -> U> Map<T, U, F> {
    pub(crate) fn new(f: F, output: Output<U>) -> Self {
        Self {
            f,
            out: Vec::new(),
            output,
            _in: std::marker::PhantomData,
        }
    }
}

impl<T, U: Data, F: FnMut(T) -> U> Push<T> for Map<T, U, F> {
    fn push(&mut self, batch: &mut Vec<Record<T>>, cx: &mut Cx) -> Result<(), JobError> {
        let f = &mut self.f;
        self.out.extend(batch.drain(..).map(|r| Record {
            ts: r.ts,
            value: f(r.value),
        }));
        self.output.push(&mut self.out, cx)
    }
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        self.output.watermark(watermark, cx)
    }
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.output.end(cx)
    }
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        self.output.barrier(barrier, cx)
    }
}

pub(crate) struct Filter<F, T> {
    f: F,
    output: Output<T>,
}

impl<T: Data, G: FnMut(&T) -> bool> Filter<FilterValue<G>, T> {
    pub(crate) fn new(f: G, output: Output<T>) -> Self {
        Self {
            f: FilterValue(f),
            output,
        }
    }
}

impl<T: Data, G: FnMut(&Record<T>) -> bool> Filter<G, T> {
    pub(crate) fn with_record(f: G, output: Output<T>) -> Self {
        Self { f, output }
    }
}

/// Adapts a predicate on values to one on records.
pub(crate) struct FilterValue<G>(G);

pub(crate) trait RecordPredicate<T> {
    fn keep(&mut self, record: &Record<T>) -> bool;
}

impl<T, G: FnMut(&T) -> bool> RecordPredicate<T> for FilterValue<G> {
    #[inline]
    fn keep(&mut self, record: &Record<T>) -> bool {
        (self.0)(&record.value)
    }
}

impl<T, G: FnMut(&Record<T>) -> bool> RecordPredicate<T> for G {
    #[inline]
    fn keep(&mut self, record: &Record<T>) -> bool {
        self(record)
    }
}

impl<T: Data, F: RecordPredicate<T>> Push<T> for Filter<F, T> {
    fn push(&mut self, batch: &mut Vec<Record<T>>, cx: &mut Cx) -> Result<(), JobError> {
        batch.retain(|r| self.f.keep(r));
        self.output.push(batch, cx)
    }
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        self.output.watermark(watermark, cx)
    }
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.output.end(cx)
    }
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        self.output.barrier(barrier, cx)
    }
}

pub(crate) struct FlatMap<T, U, F> {
    f: F,
    out: Vec<Record<U>>,
    output: Output<U>,
    _in: std::marker::PhantomData<T>,
}

impl<T, U: Data, I: IntoIterator<Item = U>, F: FnMut(T) -> I> FlatMap<T, U, F> {
    pub(crate) fn new(f: F, output: Output<U>) -> Self {
        Self {
            f,
            out: Vec::new(),
            output,
            _in: std::marker::PhantomData,
        }
    }
}

impl<T, U: Data, I: IntoIterator<Item = U>, F: FnMut(T) -> I> Push<T> for FlatMap<T, U, F> {
    fn push(&mut self, batch: &mut Vec<Record<T>>, cx: &mut Cx) -> Result<(), JobError> {
        for r in batch.drain(..) {
            let ts = r.ts;
            self.out.extend(
                (self.f)(r.value)
                    .into_iter()
                    .map(|value| Record { ts, value }),
            );
        }
        self.output.push(&mut self.out, cx)
    }
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        self.output.watermark(watermark, cx)
    }
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.output.end(cx)
    }
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        self.output.barrier(barrier, cx)
    }
}

/// Local pre-aggregation ([`Stream::pre_aggregate`](super::Stream::pre_aggregate)):
/// records of equal key and timestamp merged in memory until the watermark
/// reaches their timestamp, a barrier passes or the input ends.
pub(crate) struct PreAggregate<T, K, KF, M> {
    key: KF,
    merge: M,
    /// Held partial results by timestamp, then key.
    held: std::collections::BTreeMap<Timestamp, crate::data::FxHashMap<K, T>>,
    /// The last watermark passed on: records at or below it pass at once.
    watermark: Option<Timestamp>,
    out: Vec<Record<T>>,
    output: Output<T>,
}

impl<T: Data, K: std::hash::Hash + Eq, KF: Fn(&T) -> K, M: FnMut(&mut T, T)>
    PreAggregate<T, K, KF, M>
{
    pub(crate) fn new(key: KF, merge: M, output: Output<T>) -> Self {
        Self {
            key,
            merge,
            held: std::collections::BTreeMap::new(),
            watermark: None,
            out: Vec::new(),
            output,
        }
    }

    /// Emits the partial results with timestamps up to `upto`.
    fn release(&mut self, upto: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > upto {
                break;
            }
            let (ts, partials) = entry.remove_entry();
            self.out
                .extend(partials.into_values().map(|value| Record { ts, value }));
        }
        self.output.push(&mut self.out, cx)
    }
}

impl<T: Data, K: std::hash::Hash + Eq, KF: Fn(&T) -> K, M: FnMut(&mut T, T)> Push<T>
    for PreAggregate<T, K, KF, M>
{
    fn push(&mut self, batch: &mut Vec<Record<T>>, cx: &mut Cx) -> Result<(), JobError> {
        for Record { ts, value } in batch.drain(..) {
            if self.watermark.is_some_and(|w| ts <= w) {
                self.out.push(Record { ts, value });
                continue;
            }
            let key = (self.key)(&value);
            match self.held.entry(ts).or_default().entry(key) {
                std::collections::hash_map::Entry::Occupied(mut held) => {
                    (self.merge)(held.get_mut(), value)
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
            }
        }
        self.output.push(&mut self.out, cx)
    }
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        self.watermark = Some(watermark);
        self.release(watermark, cx)?;
        self.output.watermark(watermark, cx)
    }
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.release(MAX_WATERMARK, cx)?;
        self.output.end(cx)
    }
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        // Nothing is held across a checkpoint: the operator has no state.
        self.release(MAX_WATERMARK, cx)?;
        self.output.barrier(barrier, cx)
    }
}

pub(crate) struct ForEach<F>(pub F);

impl<T, F: FnMut(Record<T>)> Push<T> for ForEach<F> {
    fn push(&mut self, batch: &mut Vec<Record<T>>, _cx: &mut Cx) -> Result<(), JobError> {
        batch.drain(..).for_each(&mut self.0);
        Ok(())
    }
    fn watermark(&mut self, _watermark: Timestamp, _cx: &mut Cx) -> Result<(), JobError> {
        Ok(())
    }
    fn end(&mut self, _cx: &mut Cx) -> Result<(), JobError> {
        Ok(())
    }
    fn barrier(&mut self, _barrier: Barrier, _cx: &mut Cx) -> Result<(), JobError> {
        Ok(())
    }
}

/// A sink, shared between its chain (which pushes) and the subtask (which
/// asks it whether it holds the chain back).
pub(crate) struct SinkOp<S, T> {
    name: String,
    subtask: usize,
    sink: RefCell<S>,
    /// Its input ended.
    ended: std::cell::Cell<bool>,
    /// The last checkpoint it pre-committed.
    pre_committed: std::cell::Cell<u64>,
    /// Checkpoints whose pre-commit has not finished: each holds the
    /// subtask's part open (as an open log does) until it has.
    holding: RefCell<Vec<u64>>,
    checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    metrics: Arc<OperatorMetrics>,
    _in: std::marker::PhantomData<fn(T)>,
}

impl<T, S: Sink<T>> SinkOp<S, T> {
    pub(crate) fn new(
        name: &str,
        mut sink: S,
        context: &SinkContext,
        checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
        metrics: Arc<OperatorMetrics>,
    ) -> Result<Self, JobError> {
        let error = |error| JobError::Sink {
            sink: name.to_string(),
            subtask: context.subtask,
            error,
        };
        sink.open(context).map_err(error)?;
        Ok(Self {
            name: name.to_string(),
            subtask: context.subtask,
            sink: RefCell::new(sink),
            ended: std::cell::Cell::new(false),
            pre_committed: std::cell::Cell::new(0),
            holding: RefCell::new(Vec::new()),
            checkpoints,
            metrics,
            _in: std::marker::PhantomData,
        })
    }

    fn error(&self, error: SinkError) -> JobError {
        JobError::Sink {
            sink: self.name.clone(),
            subtask: self.subtask,
            error,
        }
    }

    fn pre_commit(&self, checkpoint_id: u64) -> Result<(), JobError> {
        if checkpoint_id <= self.pre_committed.get() {
            return Ok(());
        }
        self.pre_committed.set(checkpoint_id);
        let mut sink = self.sink.borrow_mut();
        sink.pre_commit(checkpoint_id).map_err(|e| self.error(e))?;
        if !sink.is_pre_committed(checkpoint_id) {
            self.checkpoints.borrow_mut().open_log(checkpoint_id);
            self.holding.borrow_mut().push(checkpoint_id);
        }
        Ok(())
    }

    /// Lets go of the parts whose pre-commit has finished since; returns
    /// whether any.
    fn release_finished(&self) -> bool {
        let mut sink = self.sink.borrow_mut();
        let mut holding = self.holding.borrow_mut();
        let before = holding.len();
        holding.retain(|&id| {
            let finished = sink.is_pre_committed(id);
            if finished {
                self.checkpoints.borrow_mut().close_log(id);
            }
            !finished
        });
        holding.len() != before
    }
}

impl<T, S: Sink<T>> super::SinkCheckpoints for SinkOp<S, T> {
    fn is_transactional(&self) -> bool {
        self.sink.borrow().is_transactional()
    }

    fn pre_commit_if_finished(&self, checkpoint_id: u64) -> Result<(), JobError> {
        if self.ended.get() {
            self.pre_commit(checkpoint_id)?;
        }
        Ok(())
    }

    fn commit(&self, checkpoint_id: u64) -> Result<(), JobError> {
        let result = self.sink.borrow_mut().commit(checkpoint_id);
        result.map_err(|e| self.error(e))
    }

    fn abort(&self, checkpoint_id: u64) {
        self.holding.borrow_mut().retain(|&id| id != checkpoint_id);
    }
}

pub(crate) struct SinkPush<S, T>(pub std::rc::Rc<SinkOp<S, T>>);

impl<T, S: Sink<T>> Push<T> for SinkPush<S, T> {
    fn push(&mut self, batch: &mut Vec<Record<T>>, _cx: &mut Cx) -> Result<(), JobError> {
        let op = &self.0;
        op.metrics.records_in.add(batch.len() as u64);
        let result = op.sink.borrow_mut().write(batch);
        batch.clear();
        result.map_err(|e| op.error(e))
    }
    fn watermark(&mut self, _watermark: Timestamp, _cx: &mut Cx) -> Result<(), JobError> {
        Ok(())
    }
    fn end(&mut self, _cx: &mut Cx) -> Result<(), JobError> {
        let op = &self.0;
        op.ended.set(true);
        let result = op.sink.borrow_mut().finish();
        result.map_err(|e| op.error(e))
    }
    fn barrier(&mut self, barrier: Barrier, _cx: &mut Cx) -> Result<(), JobError> {
        // Phase one of the two-phase commit (a no-op for other sinks).
        self.0.pre_commit(barrier.id)
    }
}

impl<T, S: Sink<T>> OutputBuffer for SinkOp<S, T> {
    fn is_blocked(&self) -> bool {
        self.sink.borrow().is_blocked()
    }
    fn drain(&self, _cx: &mut Cx) -> Result<bool, JobError> {
        let released = !self.holding.borrow().is_empty() && self.release_finished();
        let result = self.sink.borrow_mut().drain();
        Ok(result.map_err(|e| self.error(e))? || released)
    }
    fn flush(&self, _cx: &mut Cx) -> Result<(), JobError> {
        Ok(())
    }
    fn can_drain(&self) -> bool {
        let mut sink = self.sink.borrow_mut();
        sink.can_drain()
            || self
                .holding
                .borrow()
                .iter()
                .any(|&id| sink.is_pre_committed(id))
    }
    fn has_pending(&self) -> bool {
        self.sink.borrow().is_blocked() || !self.holding.borrow().is_empty()
    }
}

/// Where a source stands between polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    No,
    Notified,
    /// Until this processing time, epoch µs.
    Until(u64),
}

pub(crate) struct SourceInput<T, S> {
    name: String,
    source: S,
    timestamp: Option<crate::time::TimestampFn<T>>,
    out_of_orderness_ms: u64,
    values: Vec<T>,
    records: Vec<Record<T>>,
    max_ts: Option<Timestamp>,
    watermark: Timestamp,
    output: Output<T>,
    batch_size: usize,
    waiting: Waiting,
    opened: bool,
    context: SourceContext,
    stop: Arc<std::sync::atomic::AtomicBool>,
    checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    input: usize,
    restore: Option<SourceRestore>,
    finished: bool,
    /// The positions recorded for each checkpoint not yet complete here,
    /// oldest first (handed to the source when one completes).
    recorded: Vec<(u64, Vec<(u32, u64)>)>,
    metrics: Arc<OperatorMetrics>,
}

impl<T: Data, S: Source<T>> SourceInput<T, S> {
    pub(crate) fn new(
        name: &str,
        source: S,
        watermarks: WatermarkStrategy<T>,
        output: Output<T>,
        df: &Dataflow,
    ) -> Self {
        let input = df.next_input_index();
        let restore = match df.restore_state() {
            Some(r) => match r.source_restore(name, df.subtask(), df.parallelism()) {
                Ok(restore) => restore,
                Err(e) => {
                    df.fail_build(e);
                    None
                }
            },
            None => None,
        };
        let checkpoints = df.checkpoints();
        let g = df.0.borrow();
        // Splits are assigned like key groups: contiguous ranges of the max
        // parallelism, so a restore on another parallelism moves whole splits.
        let splits = crate::keygroup::key_group_range(
            g.max_parallelism,
            g.parallelism as u32,
            g.subtask as u32,
        );
        let context = SourceContext {
            subtask: g.subtask,
            parallelism: g.parallelism,
            notifier: g.env.parkers[g.subtask].notifier(),
            split_count: g.max_parallelism,
            splits: u32::from(splits.start)..u32::from(splits.end),
            run: g.env.run_id,
            restored_checkpoint: g.restore.as_ref().map(|r| r.metadata.id),
        };
        Self {
            name: name.to_string(),
            source,
            timestamp: watermarks.timestamp,
            out_of_orderness_ms: watermarks.out_of_orderness_ms,
            values: Vec::with_capacity(g.batch_size),
            records: Vec::with_capacity(g.batch_size),
            max_ts: None,
            watermark: 0,
            output,
            batch_size: g.batch_size,
            waiting: Waiting::No,
            opened: false,
            context,
            stop: g.env.stop.clone(),
            checkpoints,
            input,
            restore,
            finished: false,
            recorded: Vec::new(),
            metrics: g
                .env
                .metrics
                .operator(name, OperatorKind::Source, g.subtask),
        }
    }

    fn error(&self, error: crate::SourceError) -> JobError {
        JobError::Source {
            source_name: self.name.clone(),
            subtask: self.context.subtask,
            error,
        }
    }

    /// Opens the source and restores its position, once.
    fn ensure_open(&mut self) -> Result<(), JobError> {
        if self.opened {
            return Ok(());
        }
        self.opened = true;
        self.source.open(&self.context).map_err(|e| self.error(e))?;
        let restored = match self.restore.take() {
            None => Ok(()),
            Some(SourceRestore::Offset(offset)) => self.source.seek(offset),
            Some(SourceRestore::Splits(splits)) => {
                let owned: Vec<(u32, u64)> = splits
                    .into_iter()
                    .filter(|(split, _)| self.context.splits.contains(split))
                    .collect();
                self.source.seek_splits(&owned)
            }
        };
        restored.map_err(|e| self.error(e))
    }

    fn finish(&mut self, cx: &mut Cx) -> Result<InputState, JobError> {
        self.finished = true;
        self.output.watermark(MAX_WATERMARK, cx)?;
        self.output.end(cx)?;
        Ok(InputState::Finished)
    }
}

impl<T: Data, S: Source<T>> Input for SourceInput<T, S> {
    fn step(&mut self, cx: &mut Cx) -> Result<InputState, JobError> {
        self.ensure_open()?;
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return self.finish(cx);
        }
        debug_assert!(self.records.is_empty() && self.values.is_empty());
        let poll = self
            .source
            .poll_records(&mut self.records, self.batch_size, &mut self.values)
            .map_err(|e| self.error(e))?;
        self.values.clear();
        let produced = !self.records.is_empty();
        if produced {
            // Event time set in place: records are not moved again.
            if let Some(ts_of) = &self.timestamp {
                let mut max = self.max_ts.unwrap_or(0);
                for record in &mut self.records {
                    record.ts = ts_of(&record.value);
                    max = max.max(record.ts);
                }
                self.max_ts = Some(max);
            }
            self.metrics.records_out.add(self.records.len() as u64);
            self.output.push(&mut self.records, cx)?;
        }
        // The source's own watermark (per split), else the strategy's.
        let watermark = match self.source.watermark() {
            Some(w) => Some(w),
            None if produced => self
                .max_ts
                .map(|max| max.saturating_sub(self.out_of_orderness_ms + 1)),
            None => None,
        };
        if let Some(watermark) = watermark {
            if watermark > self.watermark {
                self.watermark = watermark;
                self.metrics.watermark_ms.set(watermark);
                self.output.watermark(watermark, cx)?;
            }
        }
        self.waiting = Waiting::No;
        match poll {
            SourcePoll::Ready => Ok(InputState::Busy),
            SourcePoll::Finished => self.finish(cx),
            SourcePoll::Pending => {
                self.waiting = Waiting::Notified;
                Ok(if produced {
                    InputState::Busy
                } else {
                    InputState::Idle
                })
            }
            SourcePoll::PendingUntilUs(at_us) => {
                self.waiting = Waiting::Until(at_us);
                Ok(if produced {
                    InputState::Busy
                } else {
                    InputState::Idle
                })
            }
        }
    }

    fn has_work(&mut self, now_us: u64) -> bool {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        match self.waiting {
            Waiting::No => true,
            Waiting::Notified => self.source.is_ready(),
            Waiting::Until(at_us) => now_us >= at_us || self.source.is_ready(),
        }
    }

    fn wake_at_us(&self) -> Option<u64> {
        match self.waiting {
            Waiting::Until(at) => Some(at),
            _ => None,
        }
    }

    fn final_offsets(&mut self) -> Result<Vec<SourceOffset>, JobError> {
        self.ensure_open()?;
        Ok(match self.source.split_offsets() {
            Some(splits) => splits
                .into_iter()
                .map(|(split, offset)| SourceOffset {
                    source: self.name.clone(),
                    subtask: split,
                    offset,
                    split: true,
                })
                .collect(),
            None => vec![SourceOffset {
                source: self.name.clone(),
                subtask: self.context.subtask as u32,
                offset: self.source.offset(),
                split: false,
            }],
        })
    }

    fn abort(&mut self, id: u64) {
        self.recorded.retain(|(recorded, _)| *recorded != id);
    }

    fn checkpoint_complete(&mut self, id: u64) -> Result<(), JobError> {
        // Completions arrive in order; a checkpoint aborted here is covered
        // by the next one that completes.
        let Some(newest) = self.recorded.iter().rposition(|(r, _)| *r <= id) else {
            return Ok(());
        };
        let positions = self.recorded.drain(..=newest).next_back().map(|(_, p)| p);
        let positions = positions.expect("drained at least the newest");
        let result = self.source.checkpoint_complete(id, &positions);
        result.map_err(|e| self.error(e))
    }

    fn trigger(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        if !self.checkpoints.borrow_mut().begin(barrier) {
            return Ok(());
        }
        // Everything polled so far was pushed downstream within its step, so
        // the offset is exactly the cut: records before it are in the
        // snapshot, records after it are replayed on restore.
        let offsets = self.final_offsets()?;
        self.recorded.push((
            barrier.id,
            offsets.iter().map(|o| (o.subtask, o.offset)).collect(),
        ));
        for offset in offsets {
            self.checkpoints
                .borrow_mut()
                .add_source_offset(barrier.id, offset);
        }
        // A finished source still records its final offset (so a restore
        // does not replay it), but its chain has ended: no barrier follows.
        if !self.finished {
            self.output.barrier(barrier, cx)?;
        }
        self.checkpoints
            .borrow_mut()
            .delivered(barrier.id, self.input, 0);
        Ok(())
    }
}
