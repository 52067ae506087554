//! Event-time windows over keyed streams, with aggregate functions.
//!
//! Windows are aligned to the epoch: a tumbling window of size `s` covers
//! `[k·s, (k+1)·s)`; a sliding window of size `s` and slide `d` starts at
//! every multiple of `d`, so a record belongs to `s / d` windows (when `d`
//! divides `s`). A window's accumulator lives in keyed state (map state keyed
//! by window end) and an event-time timer at `end - 1` emits its result and
//! drops it, so windows are part of checkpointed state like anything else.
//! Records whose windows have all closed (timestamp at or below the watermark
//! minus the window size) are late and dropped, as in Flink without allowed
//! lateness.

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
        self.keyed.process(name, move |registry| WindowOperator {
            assigner,
            function,
            windows: registry.map_state::<u64, A::Acc>("windows"),
            late_records: 0,
        })
    }
}

struct WindowOperator<K, A: AggregateFunction<T>, T> {
    assigner: WindowAssigner,
    function: A,
    /// Accumulator per key and window end.
    windows: MapState<K, u64, A::Acc>,
    late_records: u64,
}

impl<K: Key, T: 'static, A: AggregateFunction<T>>
    KeyedProcessFunction<K, T, WindowResult<K, A::Out>> for WindowOperator<K, A, T>
{
    fn process_element(
        &mut self,
        value: T,
        ctx: &mut KeyedContext<'_, K, WindowResult<K, A::Out>>,
    ) -> Result<(), ProcessError> {
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
            self.windows.update(
                ctx,
                end,
                || function.create(),
                |acc| function.add(acc, &value),
            );
            ctx.register_event_time_timer(end - 1);
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
