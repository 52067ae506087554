//! Event-time windows over keyed streams, with aggregate functions.
//!
//! Windows are aligned to the epoch: a tumbling window of size `s` covers
//! `[k·s, (k+1)·s)`; a sliding window of size `s` and slide `d` starts at
//! every multiple of `d`, so a record belongs to `s / d` windows (when `d`
//! divides `s`). Accumulators live in keyed state (map state keyed by an
//! end time) and event-time timers at `end - 1` emit results, so windows are
//! part of checkpointed state like anything else. Records whose windows have
//! all closed (timestamp at or below the watermark minus the window size)
//! are late and dropped, as in Flink without allowed lateness.
//!
//! **Panes.** When the slide divides the size and the aggregate can merge
//! accumulators ([`AggregateFunction::merge`]; tumbling windows need no
//! merge), the operator keeps one accumulator per key and *pane* (a slide's
//! worth of time, state `"panes"`; a tumbling window's pane is the window,
//! state `"windows"` as before) instead of one per window (`"windows"`):
//! a record updates one accumulator, not `size / slide`, and registers a
//! timer only when it opens a pane. A window's result merges its
//! `size / slide` panes when it closes; the pane that no later window
//! covers is dropped then, and the timer of the next window end is set
//! while the key still has panes that it covers. This is the pane technique
//! of Li et al., "No pane, no gain" (SIGMOD Record 2005).

use crate::dataflow::{
    Data, ExchangeData, KeyedContext, KeyedProcessFunction, KeyedStream, Stream,
};
use crate::error::ProcessError;
use crate::keygroup::Key;
use crate::state::{MapState, StateData};
use crate::time::{TimeDomain, Timestamp};

impl<K: Key, T: ExchangeData> KeyedStream<K, T> {
    /// Groups the keyed stream into event-time windows.
    pub fn window(&self, assigner: WindowAssigner) -> WindowedStream<K, T> {
        WindowedStream {
            keyed: KeyedStream {
                stream: self.stream.clone(),
                key: self.key.clone(),
            },
            assigner,
        }
    }
}

/// How records are assigned to windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowAssigner {
    size_ms: u64,
    slide_ms: u64,
}

impl WindowAssigner {
    /// Non-overlapping windows of `size_ms`.
    pub fn tumbling(size_ms: u64) -> Self {
        assert!(size_ms > 0, "window size must be positive");
        Self {
            size_ms,
            slide_ms: size_ms,
        }
    }

    /// Windows of `size_ms` starting every `slide_ms`.
    pub fn sliding(size_ms: u64, slide_ms: u64) -> Self {
        assert!(
            size_ms > 0 && slide_ms > 0,
            "window size and slide must be positive"
        );
        Self { size_ms, slide_ms }
    }

    /// Window size.
    pub fn size_ms(&self) -> u64 {
        self.size_ms
    }

    /// Window slide.
    pub fn slide_ms(&self) -> u64 {
        self.slide_ms
    }

    /// The start of every window containing `ts`, latest first.
    pub fn window_starts(&self, ts: Timestamp) -> impl Iterator<Item = Timestamp> {
        let last = ts - ts % self.slide_ms;
        let size = self.size_ms;
        let slide = self.slide_ms;
        (0..)
            .map(move |i: u64| i.checked_mul(slide).and_then(|d| last.checked_sub(d)))
            .take_while(move |start| matches!(start, Some(s) if s + size > ts))
            .map(|s| s.expect("checked in take_while"))
    }
}

/// An incremental aggregation (Flink's `AggregateFunction`).
pub trait AggregateFunction<T>: 'static {
    /// The accumulator kept in state per key and window.
    type Acc: StateData;
    /// The result emitted when the window closes.
    type Out: Data;
    /// A fresh accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds a record.
    fn add(&self, acc: &mut Self::Acc, value: &T);
    /// The window's result.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
    /// Whether [`merge`](Self::merge) is implemented; sliding windows then
    /// aggregate in panes (see the module doc). Default: false.
    fn can_merge(&self) -> bool {
        false
    }
    /// Adds everything `other` has accumulated to `acc`, as if `acc` had
    /// seen `other`'s records too. Called only when
    /// [`can_merge`](Self::can_merge) is true.
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        let _ = (acc, other);
        unreachable!("merge called on an aggregate whose can_merge is false");
    }
}

/// An [`AggregateFunction`] from three closures.
pub struct Aggregate<C, A, R> {
    create: C,
    add: A,
    result: R,
}

impl<C, A, R> Aggregate<C, A, R> {
    /// `create()` a fresh accumulator, `add(&mut acc, &record)`, `result(&acc)`.
    pub fn new(create: C, add: A, result: R) -> Self {
        Self {
            create,
            add,
            result,
        }
    }

    /// The same aggregate with `merge(&mut acc, &other)`, which adds what
    /// `other` accumulated to `acc` ([`AggregateFunction::merge`]): sliding
    /// windows then aggregate in panes.
    pub fn with_merge<M>(self, merge: M) -> MergingAggregate<C, A, R, M> {
        MergingAggregate {
            aggregate: self,
            merge,
        }
    }
}

/// An [`Aggregate`] that can merge accumulators ([`Aggregate::with_merge`]).
pub struct MergingAggregate<C, A, R, M> {
    aggregate: Aggregate<C, A, R>,
    merge: M,
}

impl<T, Acc: StateData, Out: Data, C, A, R, M> AggregateFunction<T> for MergingAggregate<C, A, R, M>
where
    C: Fn() -> Acc + 'static,
    A: Fn(&mut Acc, &T) + 'static,
    R: Fn(&Acc) -> Out + 'static,
    M: Fn(&mut Acc, &Acc) + 'static,
{
    type Acc = Acc;
    type Out = Out;
    fn create(&self) -> Acc {
        (self.aggregate.create)()
    }
    fn add(&self, acc: &mut Acc, value: &T) {
        (self.aggregate.add)(acc, value)
    }
    fn result(&self, acc: &Acc) -> Out {
        (self.aggregate.result)(acc)
    }
    fn can_merge(&self) -> bool {
        true
    }
    fn merge(&self, acc: &mut Acc, other: &Acc) {
        (self.merge)(acc, other)
    }
}

impl<T, Acc: StateData, Out: Data, C, A, R> AggregateFunction<T> for Aggregate<C, A, R>
where
    C: Fn() -> Acc + 'static,
    A: Fn(&mut Acc, &T) + 'static,
    R: Fn(&Acc) -> Out + 'static,
{
    type Acc = Acc;
    type Out = Out;
    fn create(&self) -> Acc {
        (self.create)()
    }
    fn add(&self, acc: &mut Acc, value: &T) {
        (self.add)(acc, value)
    }
    fn result(&self, acc: &Acc) -> Out {
        (self.result)(acc)
    }
}

/// Counts records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<T> AggregateFunction<T> for Count {
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _value: &T) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn can_merge(&self) -> bool {
        true
    }
    fn merge(&self, acc: &mut u64, other: &u64) {
        *acc += other;
    }
}

/// The result of one window for one key (archivable, so it can cross an
/// exchange when both `K` and `R` can).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    crate::Schema,
)]
pub struct WindowResult<K, R> {
    /// The key.
    pub key: K,
    /// Window start (inclusive), epoch ms.
    pub start: Timestamp,
    /// Window end (exclusive), epoch ms.
    pub end: Timestamp,
    /// The aggregate.
    pub value: R,
}

/// A keyed stream with a window assigner; [`aggregate`](Self::aggregate) it.
pub struct WindowedStream<K, T> {
    pub(crate) keyed: KeyedStream<K, T>,
    pub(crate) assigner: WindowAssigner,
}

impl<K: Key + Send, T: ExchangeData> WindowedStream<K, T> {
    /// Aggregates every window incrementally; emits one [`WindowResult`] per
    /// key and window when the watermark passes the window's end, with
    /// timestamp `end - 1`.
    pub fn aggregate<A: AggregateFunction<T>>(
        &self,
        name: &str,
        function: A,
    ) -> Stream<WindowResult<K, A::Out>> {
        let assigner = self.assigner;
        let (size, slide) = (assigner.size_ms, assigner.slide_ms);
        let panes = size % slide == 0 && (size == slide || function.can_merge());
        // A tumbling window's pane is the window: its state keeps the name
        // (and the contents) it had before panes.
        let state = if panes && size != slide {
            "panes"
        } else {
            "windows"
        };
        self.keyed.process(name, move |registry| WindowOperator {
            assigner,
            windows: registry.map_state::<u64, A::Acc>(state),
            panes,
            function,
            late_records: 0,
        })
    }
}

struct WindowOperator<K, A: AggregateFunction<T>, T> {
    assigner: WindowAssigner,
    function: A,
    /// Accumulator per key and window end, or per key and pane end when
    /// `panes`.
    windows: MapState<K, u64, A::Acc>,
    /// Whether the operator aggregates in panes (see the module doc).
    panes: bool,
    late_records: u64,
}

impl<K: Key, T: 'static, A: AggregateFunction<T>> WindowOperator<K, A, T> {
    /// One record into its pane: one accumulator updated, and a timer set
    /// when the pane opens (at the end of the first window covering the
    /// pane that has not fired).
    fn add_to_pane(&mut self, value: T, ctx: &mut KeyedContext<'_, K, WindowResult<K, A::Out>>) {
        let (size, slide) = (self.assigner.size_ms, self.assigner.slide_ms);
        let (ts, watermark) = (ctx.timestamp(), ctx.watermark());
        let pane_end = ts - ts % slide + slide;
        let fired = |end: u64| watermark > 0 && end - 1 <= watermark;
        // The last window covering the pane ends at pane_end + size - slide.
        if fired(pane_end + size - slide) {
            self.late_records += 1;
            return;
        }
        let function = &self.function;
        let mut opened = false;
        self.windows.update(
            ctx,
            pane_end,
            || {
                opened = true;
                function.create()
            },
            |acc| function.add(acc, &value),
        );
        if opened {
            let mut end = pane_end;
            while fired(end) {
                end += slide;
            }
            ctx.register_event_time_timer(end - 1);
        }
    }

    /// The window ending at `end` closes: its result from its panes; the
    /// pane no later window covers is dropped, and the next window end gets
    /// a timer if panes it covers remain.
    fn close_panes(&mut self, end: u64, ctx: &mut KeyedContext<'_, K, WindowResult<K, A::Out>>) {
        let (size, slide) = (self.assigner.size_ms, self.assigner.slide_ms);
        // Panes of the window: ends in (end - size, end].
        let first_pane_end = end.saturating_sub(size) + slide;
        let function = &self.function;
        let (result, later) = self.windows.update_all(ctx, |panes| {
            let mut merged: Option<A::Acc> = None;
            let mut later = false;
            let mut pane_end = first_pane_end;
            while pane_end <= end {
                if let Some(acc) = panes.get(&pane_end) {
                    later |= pane_end > first_pane_end;
                    match &mut merged {
                        None => merged = Some(acc.clone()),
                        Some(m) => function.merge(m, acc),
                    }
                }
                pane_end += slide;
            }
            panes.remove(&first_pane_end);
            (merged.map(|acc| function.result(&acc)), later)
        });
        if let Some(value) = result {
            ctx.emit(WindowResult {
                key: ctx.key().clone(),
                start: end - size,
                end,
                value,
            });
        }
        if later {
            ctx.register_event_time_timer(end + slide - 1);
        }
    }
}

impl<K: Key, T: 'static, A: AggregateFunction<T>>
    KeyedProcessFunction<K, T, WindowResult<K, A::Out>> for WindowOperator<K, A, T>
{
    fn process_element(
        &mut self,
        value: T,
        ctx: &mut KeyedContext<'_, K, WindowResult<K, A::Out>>,
    ) -> Result<(), ProcessError> {
        if self.panes {
            self.add_to_pane(value, ctx);
            return Ok(());
        }
        let ts = ctx.timestamp();
        let watermark = ctx.watermark();
        let mut assigned = false;
        for start in self.assigner.window_starts(ts) {
            let end = start + self.assigner.size_ms;
            if end - 1 <= watermark && watermark > 0 {
                continue; // this window already fired
            }
            assigned = true;
            let function = &self.function;
            let mut opened = false;
            self.windows.update(
                ctx,
                end,
                || {
                    opened = true;
                    function.create()
                },
                |acc| function.add(acc, &value),
            );
            if opened {
                ctx.register_event_time_timer(end - 1);
            }
        }
        if !assigned {
            self.late_records += 1;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, K, WindowResult<K, A::Out>>,
    ) -> Result<(), ProcessError> {
        debug_assert_eq!(domain, TimeDomain::EventTime);
        let end = timestamp + 1;
        if self.panes {
            self.close_panes(end, ctx);
            return Ok(());
        }
        if let Some(acc) = self.windows.remove(ctx, &end) {
            let result = WindowResult {
                key: ctx.key().clone(),
                start: end - self.assigner.size_ms,
                end,
                value: self.function.result(&acc),
            };
            ctx.emit(result);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts() {
        let tumbling = WindowAssigner::tumbling(10);
        assert_eq!(tumbling.window_starts(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(tumbling.window_starts(19).collect::<Vec<_>>(), vec![10]);
        let sliding = WindowAssigner::sliding(10, 2);
        assert_eq!(
            sliding.window_starts(13).collect::<Vec<_>>(),
            vec![12, 10, 8, 6, 4]
        );
        assert_eq!(sliding.window_starts(3).collect::<Vec<_>>(), vec![2, 0]);
        let gaps = WindowAssigner::sliding(2, 5);
        assert_eq!(gaps.window_starts(6).collect::<Vec<_>>(), vec![5]);
        assert_eq!(gaps.window_starts(8).collect::<Vec<_>>(), Vec::<u64>::new());
        assert_eq!(gaps.window_starts(11).collect::<Vec<_>>(), vec![10]);
    }
}
