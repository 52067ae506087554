//! Event-time windows over keyed streams, with aggregate functions.
//!
//! Windows are aligned to the epoch: a tumbling window of size `s` covers
//! `[k·s, (k+1)·s)`; a sliding window of size `s` and slide `d` starts at
//! every multiple of `d`, so a record belongs to `s / d` windows (when `d`
//! divides `s`). Accumulators live in keyed state, so windows are part of
//! checkpointed state like anything else. A window closes when the
//! watermark reaches its `end - 1`; its results carry that timestamp.
//! Records whose windows have all closed are late and dropped, as in Flink
//! without allowed lateness.
//!
//! **Panes, swept per key group.** When the slide divides the size and the
//! aggregate can merge accumulators ([`AggregateFunction::merge`]; tumbling
//! windows need no merge), the operator keeps one accumulator per key and
//! *pane* (a slide's worth of time; a tumbling window's pane is the window),
//! so a record updates one accumulator, not `size / slide`. The panes are
//! kept per key group, not per key ([`KeyGroupState`]): state `"panes"`
//! (`"windows"` for tumbling windows) maps a pane's end to the pane's
//! accumulators by key, and state `"progress"` holds, per key group, the
//! end of the last window it closed and of the next one to close. No timer
//! is set: when the watermark passes a window's end, the operator sweeps
//! every key group due (`on_watermark`), merges the window's panes key by
//! key, hands each key's result on, and drops the pane no later window
//! covers. This is the pane technique of Li et al., "No pane, no gain"
//! (SIGMOD Record 2005), with the firing of Flink's window operator replaced
//! by one sweep per key group and window.
//!
//! Each key's result is emitted ([`WindowedStream::aggregate`]) or folded,
//! at the sweep, into one value per window and subtask
//! ([`WindowedStream::aggregate_fold`]: the local stage of a window top-N,
//! as Flink's local-global aggregation plans it), so that a window of
//! many keys sends one record per subtask downstream instead of one per key.
//!
//! Other windows (a slide that does not divide the size, or a sliding
//! window over an aggregate without `merge`) keep an accumulator per key
//! and window (state `"windows"`) and an event-time timer per key at each
//! window's end.

use crate::data::FxHashMap;
use crate::dataflow::{
    Data, ExchangeData, KeyedContext, KeyedProcessFunction, KeyedStream, Stream, WatermarkContext,
};
use crate::error::ProcessError;
use crate::keygroup::Key;
use crate::schema::{Schema, SchemaBuilder, TypeDef};
use crate::state::{KeyGroup, KeyGroupState, MapState, StateData, StateRegistry};
use crate::time::{TimeDomain, Timestamp};
use rkyv::rancor::Fallible;
use rkyv::tuple::ArchivedTuple2;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::Archive;

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

/// The fold of one window's results on one subtask
/// ([`WindowedStream::aggregate_fold`]); archivable, so it can cross an
/// exchange when `P` can.
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
pub struct WindowFold<P> {
    /// Window start (inclusive), epoch ms.
    pub start: Timestamp,
    /// Window end (exclusive), epoch ms.
    pub end: Timestamp,
    /// The fold of the window's results of this subtask's keys.
    pub value: P,
}

/// A keyed stream with a window assigner; [`aggregate`](Self::aggregate) it.
pub struct WindowedStream<K, T> {
    pub(crate) keyed: KeyedStream<K, T>,
    pub(crate) assigner: WindowAssigner,
}

impl<K: Key + Send, T: ExchangeData> WindowedStream<K, T> {
    /// Whether `function` aggregates this stream's windows in panes (see the
    /// module doc).
    fn in_panes<A: AggregateFunction<T>>(&self, function: &A) -> bool {
        let (size, slide) = (self.assigner.size_ms, self.assigner.slide_ms);
        size % slide == 0 && (size == slide || function.can_merge())
    }

    /// Aggregates every window incrementally; emits one [`WindowResult`] per
    /// key and window when the watermark passes the window's end, with
    /// timestamp `end - 1`.
    pub fn aggregate<A: AggregateFunction<T>>(
        &self,
        name: &str,
        function: A,
    ) -> Stream<WindowResult<K, A::Out>> {
        let assigner = self.assigner;
        if self.in_panes(&function) {
            return self.keyed.process(name, move |registry| {
                PaneOperator::new(registry, assigner, function, PerKey)
            });
        }
        self.keyed.process(name, move |registry| WindowOperator {
            assigner,
            windows: registry.map_state::<u64, A::Acc>("windows"),
            function,
            late_records: 0,
        })
    }

    /// Aggregates every window incrementally like
    /// [`aggregate`](Self::aggregate), then folds each window's per-key
    /// results on each subtask into one value, `fold(&mut value, &key,
    /// result)` from `init()`, when the window closes: emits one
    /// [`WindowFold`] per window and subtask that has keys in it, with
    /// timestamp `end - 1`. Downstream combines the subtasks' folds (key
    /// them by `end`). The local stage of a window top-N: folding into the
    /// best results leaves one small record per subtask where
    /// [`aggregate`](Self::aggregate) emits one per key.
    ///
    /// Panics unless the windows aggregate in panes: the slide divides the
    /// size, and the aggregate merges ([`AggregateFunction::can_merge`]) or
    /// the windows are tumbling.
    pub fn aggregate_fold<A, P, I, F>(
        &self,
        name: &str,
        function: A,
        init: I,
        fold: F,
    ) -> Stream<WindowFold<P>>
    where
        A: AggregateFunction<T>,
        P: Data,
        I: Fn() -> P + 'static,
        F: FnMut(&mut P, &K, A::Out) + 'static,
    {
        assert!(
            self.in_panes(&function),
            "aggregate_fold `{name}`: windows of {} ms sliding by {} ms do not aggregate in \
             panes (the slide must divide the size, and a sliding window's aggregate must merge)",
            self.assigner.size_ms,
            self.assigner.slide_ms
        );
        let assigner = self.assigner;
        self.keyed.process(name, move |registry| {
            let output = Fold {
                init,
                fold,
                held: None,
            };
            PaneOperator::new(registry, assigner, function, output)
        })
    }
}

/// What a window operator in panes makes of a closing window's per-key
/// results.
trait WindowOutput<K, R>: 'static {
    /// The records it emits.
    type Row: Data;
    /// One key's result in the window `start..end` that is closing.
    fn add(
        &mut self,
        start: Timestamp,
        end: Timestamp,
        key: &K,
        result: R,
        ctx: &mut WatermarkContext<'_, Self::Row>,
    );
    /// Every key group of the subtask has added its results of `start..end`.
    fn close(
        &mut self,
        start: Timestamp,
        end: Timestamp,
        ctx: &mut WatermarkContext<'_, Self::Row>,
    );
}

/// One [`WindowResult`] per key and window.
struct PerKey;

impl<K: Key, R: Data> WindowOutput<K, R> for PerKey {
    type Row = WindowResult<K, R>;
    fn add(
        &mut self,
        start: Timestamp,
        end: Timestamp,
        key: &K,
        value: R,
        ctx: &mut WatermarkContext<'_, Self::Row>,
    ) {
        let key = key.clone();
        ctx.emit_at(
            end - 1,
            WindowResult {
                key,
                start,
                end,
                value,
            },
        );
    }
    fn close(&mut self, _: Timestamp, _: Timestamp, _: &mut WatermarkContext<'_, Self::Row>) {}
}

/// One [`WindowFold`] per window and subtask.
struct Fold<P, I, F> {
    init: I,
    fold: F,
    /// The fold of the window closing, once a key has added to it.
    held: Option<P>,
}

impl<K, R, P, I, F> WindowOutput<K, R> for Fold<P, I, F>
where
    P: Data,
    I: Fn() -> P + 'static,
    F: FnMut(&mut P, &K, R) + 'static,
{
    type Row = WindowFold<P>;
    fn add(
        &mut self,
        _: Timestamp,
        _: Timestamp,
        key: &K,
        result: R,
        _: &mut WatermarkContext<'_, Self::Row>,
    ) {
        let held = self.held.get_or_insert_with(&self.init);
        (self.fold)(held, key, result);
    }
    fn close(
        &mut self,
        start: Timestamp,
        end: Timestamp,
        ctx: &mut WatermarkContext<'_, Self::Row>,
    ) {
        if let Some(value) = self.held.take() {
            ctx.emit_at(end - 1, WindowFold { start, end, value });
        }
    }
}

/// One pane of one key group: the accumulators of its keys. A hash map in
/// memory, archived exactly like `Vec<(K, Acc)>` (so a key's archived form
/// needs no hashing, unlike a map's).
pub(crate) struct PaneMap<K, Acc>(FxHashMap<K, Acc>);

impl<K, Acc> PaneMap<K, Acc> {
    /// Its keys and the bytes its table takes (for the monitor).
    fn size(&self) -> (usize, usize) {
        (
            self.0.len(),
            crate::data::hash_map_bytes::<K, Acc>(self.0.capacity()),
        )
    }
}

impl<K: Clone, Acc: Clone> Clone for PaneMap<K, Acc> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Archive, Acc: Archive> Archive for PaneMap<K, Acc> {
    type Archived = ArchivedVec<ArchivedTuple2<K::Archived, Acc::Archived>>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<K, Acc, S> rkyv::Serialize<S> for PaneMap<K, Acc>
where
    K: rkyv::Serialize<S>,
    Acc: rkyv::Serialize<S>,
    S: Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        crate::archive::Entries(self.0.iter().map(|(k, a)| crate::archive::EntryRef(k, a)))
            .serialize(serializer)
    }
}

impl<K, Acc, D> rkyv::Deserialize<PaneMap<K, Acc>, D>
    for ArchivedVec<ArchivedTuple2<K::Archived, Acc::Archived>>
where
    K: Archive + std::hash::Hash + Eq,
    Acc: Archive,
    K::Archived: rkyv::Deserialize<K, D>,
    Acc::Archived: rkyv::Deserialize<Acc, D>,
    D: Fallible + ?Sized,
{
    fn deserialize(&self, deserializer: &mut D) -> Result<PaneMap<K, Acc>, D::Error> {
        let mut map = FxHashMap::with_capacity_and_hasher(self.len(), Default::default());
        for entry in self.iter() {
            map.insert(
                entry.0.deserialize(deserializer)?,
                entry.1.deserialize(deserializer)?,
            );
        }
        Ok(PaneMap(map))
    }
}

impl<K: Schema + Archive, Acc: Schema + Archive> Schema for PaneMap<K, Acc> {
    fn describe(b: &mut SchemaBuilder) -> TypeDef {
        // The archived layout of `Vec<(K, Acc)>`.
        <Vec<(K, Acc)> as Schema>::describe(b)
    }
}

/// A key group's progress through the windows (state `"progress"`, one
/// entry per key group): every window ending at or before `fired_end` has
/// closed for its keys, and `next_end` is the end of the next window one of
/// its panes is in (`u64::MAX`: it has no pane).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    fired_end: u64,
    next_end: u64,
}

impl Progress {
    const EMPTY: Progress = Progress {
        fired_end: 0,
        next_end: u64::MAX,
    };
}

/// Sliding (or tumbling) windows in panes kept per key group, closed by a
/// sweep of each key group due when the watermark passes a window's end
/// (see the module doc).
struct PaneOperator<K, T, A: AggregateFunction<T>, W> {
    assigner: WindowAssigner,
    function: A,
    output: W,
    /// Per key group: pane end -> the pane's accumulators by key.
    panes: KeyGroupState<u64, PaneMap<K, A::Acc>>,
    /// Per key group: `(fired_end, next_end)` of its [`Progress`].
    progress: KeyGroupState<(), (u64, u64)>,
    /// The key groups' progress as read from `progress` this run (`None`:
    /// not read yet): the record path reads it without a lookup.
    groups: Vec<Option<Progress>>,
    /// Whether every key group's progress has been read (the first
    /// watermark reads them all; a restored checkpoint holds them).
    all_read: bool,
    /// The earliest `next_end` of the key groups (`u64::MAX`: none).
    next_end: u64,
    /// Where a window's panes are merged, key by key (kept for its capacity).
    merged: FxHashMap<K, A::Acc>,
    late_records: u64,
    _records: std::marker::PhantomData<fn(T)>,
}

impl<K: Key, T: 'static, A: AggregateFunction<T>, W: WindowOutput<K, A::Out>>
    PaneOperator<K, T, A, W>
{
    fn new(
        registry: &mut StateRegistry<K>,
        assigner: WindowAssigner,
        function: A,
        output: W,
    ) -> Self {
        // A tumbling window's pane is the window: its state keeps its name.
        let panes = if assigner.size_ms == assigner.slide_ms {
            "windows"
        } else {
            "panes"
        };
        Self {
            assigner,
            function,
            output,
            panes: registry.key_group_state(panes).of_maps(PaneMap::size),
            progress: registry.key_group_state("progress"),
            groups: vec![None; registry.key_group_range().len()],
            all_read: false,
            next_end: u64::MAX,
            merged: FxHashMap::default(),
            late_records: 0,
            _records: std::marker::PhantomData,
        }
    }

    /// Key group `group`'s progress (read from state on first use).
    fn progress_of(&mut self, group: KeyGroup) -> Progress {
        if let Some(p) = self.groups[group.index()] {
            return p;
        }
        let p = self
            .progress
            .get(group, &())
            .map_or(Progress::EMPTY, |(fired_end, next_end)| Progress {
                fired_end,
                next_end,
            });
        self.groups[group.index()] = Some(p);
        p
    }

    fn set_progress(&mut self, group: KeyGroup, p: Progress) {
        self.groups[group.index()] = Some(p);
        self.progress.insert(group, (), (p.fired_end, p.next_end));
    }

    /// The end of the last window that has closed for `group`'s keys: its
    /// own record, or the last window end the watermark passed (every key
    /// group due was swept when it did).
    fn fired_end(&self, p: Progress, watermark: Timestamp) -> u64 {
        let slide = self.assigner.slide_ms;
        let passed = if watermark == 0 {
            0 // no watermark yet
        } else {
            let end = watermark.saturating_add(1);
            end - end % slide
        };
        p.fired_end.max(passed)
    }

    /// The end of the first window after `fired_end` that covers the pane
    /// ending at `pane_end`, if any.
    fn first_window(&self, pane_end: u64, fired_end: u64) -> Option<u64> {
        let (size, slide) = (self.assigner.size_ms, self.assigner.slide_ms);
        // Windows covering the pane end at pane_end ..= pane_end + size - slide,
        // and none starts before the epoch.
        let first = pane_end.max(fired_end.saturating_add(slide)).max(size);
        (first <= pane_end + size - slide).then_some(first)
    }

    /// Closes the window ending at `end` for key group `group`: merges its
    /// panes key by key, hands every key's result on, drops the panes no
    /// later window covers, and records the group's progress.
    fn sweep(&mut self, group: KeyGroup, end: u64, ctx: &mut WatermarkContext<'_, W::Row>) {
        let (size, slide) = (self.assigner.size_ms, self.assigner.slide_ms);
        let start = end - size;
        // Panes of the window end in (start, end]; those ending at or before
        // `expired` are in no later window.
        let expired = start + slide;
        let (function, output, merged) = (&self.function, &mut self.output, &mut self.merged);
        let (expired_panes, next_end) = self.panes.with(group, |panes| {
            let mut window: Vec<(u64, &PaneMap<K, A::Acc>)> = panes
                .iter()
                .filter(|(&pane_end, _)| pane_end > start && pane_end <= end)
                .map(|(&pane_end, pane)| (pane_end, pane))
                .collect();
            window.sort_unstable_by_key(|&(pane_end, _)| pane_end);
            if let [(_, pane)] = window.as_slice() {
                for (key, acc) in &pane.0 {
                    output.add(start, end, key, function.result(acc), ctx);
                }
            } else if !window.is_empty() {
                // Oldest pane first, as if each key's accumulator had seen
                // the window's records in order of time.
                for (_, pane) in &window {
                    for (key, acc) in &pane.0 {
                        match merged.get_mut(key) {
                            Some(m) => function.merge(m, acc),
                            None => {
                                merged.insert(key.clone(), acc.clone());
                            }
                        }
                    }
                }
                for (key, acc) in merged.iter() {
                    output.add(start, end, key, function.result(acc), ctx);
                }
                merged.clear();
            }
            let expired_panes: Vec<u64> = panes.keys().copied().filter(|&p| p <= expired).collect();
            let next_end = panes
                .keys()
                .filter(|&&p| p > expired)
                .map(|&p| p.max(end + slide))
                .min()
                .unwrap_or(u64::MAX);
            (expired_panes, next_end)
        });
        for pane_end in expired_panes {
            self.panes.remove(group, &pane_end);
        }
        self.set_progress(
            group,
            Progress {
                fired_end: end,
                next_end,
            },
        );
    }
}

impl<K: Key, T: 'static, A: AggregateFunction<T>, W: WindowOutput<K, A::Out>>
    KeyedProcessFunction<K, T, W::Row> for PaneOperator<K, T, A, W>
{
    fn process_element(
        &mut self,
        value: T,
        ctx: &mut KeyedContext<'_, K, W::Row>,
    ) -> Result<(), ProcessError> {
        let slide = self.assigner.slide_ms;
        let group = ctx.key_group();
        let ts = ctx.timestamp();
        let pane_end = ts - ts % slide + slide;
        let progress = self.progress_of(group);
        let fired_end = self.fired_end(progress, ctx.watermark());
        let Some(first) = self.first_window(pane_end, fired_end) else {
            self.late_records += 1; // every window of its pane has closed
            return Ok(());
        };
        let function = &self.function;
        let key = ctx.key();
        self.panes.update(
            group,
            &pane_end,
            || PaneMap(FxHashMap::default()),
            |pane| match pane.0.get_mut(key) {
                Some(acc) => function.add(acc, &value),
                None => {
                    let mut acc = function.create();
                    function.add(&mut acc, &value);
                    pane.0.insert(key.clone(), acc);
                }
            },
        );
        if first < progress.next_end {
            // The windows the watermark passed are closed for the group too:
            // recorded, so that a restore (where the watermark starts over)
            // finds this pane's windows as this run did.
            self.set_progress(
                group,
                Progress {
                    fired_end,
                    next_end: first,
                },
            );
            self.next_end = self.next_end.min(first);
        }
        Ok(())
    }

    fn on_watermark(&mut self, ctx: &mut WatermarkContext<'_, W::Row>) -> Result<(), ProcessError> {
        let watermark = ctx.watermark();
        if !self.all_read {
            // Once per run: a restored checkpoint's key groups may have
            // windows to close (their progress is small state).
            for group in ctx.key_groups() {
                let p = self.progress_of(group);
                self.next_end = self.next_end.min(p.next_end);
            }
            self.all_read = true;
        }
        let size = self.assigner.size_ms;
        while self.next_end != u64::MAX && self.next_end - 1 <= watermark {
            let end = self.next_end;
            for group in ctx.key_groups() {
                if self.groups[group.index()].is_some_and(|p| p.next_end == end) {
                    self.sweep(group, end, ctx);
                }
            }
            self.output.close(end - size, end, ctx);
            self.next_end = self
                .groups
                .iter()
                .map(|p| p.map_or(u64::MAX, |p| p.next_end))
                .min()
                .unwrap_or(u64::MAX);
        }
        Ok(())
    }
}

/// Windows with an accumulator per key and window and a timer per key at
/// each window's end (those that do not aggregate in panes).
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
    fn a_pane_archives_and_describes_itself_like_a_vector_of_pairs() {
        let mut map = FxHashMap::default();
        for k in 0..50u64 {
            map.insert(format!("auction {k}"), k * 3);
        }
        let pane = PaneMap(map.clone());
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&pane).unwrap();
        let pairs: Vec<(String, u64)> = pane.0.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let as_pairs = rkyv::to_bytes::<rkyv::rancor::Error>(&pairs).unwrap();
        assert_eq!(bytes.as_slice(), as_pairs.as_slice());
        let back = rkyv::from_bytes::<PaneMap<String, u64>, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back.0, map);
        assert_eq!(
            crate::schema::BlockSchema::keyed::<u64, PaneMap<String, u64>>(),
            crate::schema::BlockSchema::keyed::<u64, Vec<(String, u64)>>()
        );
    }

    /// The monitor counts a pane state's (key, pane) entries as its keys and
    /// the panes' tables in its size, not one key and slot per pane.
    #[test]
    fn pane_states_count_their_entries_and_tables() {
        use crate::keygroup::KeyGroupRange;
        use crate::state::{KeyGroup, StateRegistry};
        let mut registry =
            StateRegistry::<u64>::new(KeyGroupRange { start: 0, end: 2 }, false, None);
        let panes = registry
            .key_group_state::<u64, PaneMap<u64, u64>>("panes")
            .of_maps(PaneMap::size);
        let pane = |keys: std::ops::Range<u64>| PaneMap(keys.map(|k| (k, k)).collect());
        panes.insert(KeyGroup::new(0), 10, pane(0..300));
        panes.insert(KeyGroup::new(0), 12, pane(0..5));
        panes.insert(KeyGroup::new(1), 10, pane(0..7));
        let table = registry.tables()[0].clone();
        let table = table.borrow();
        assert_eq!((table.keys_in_group(0), table.keys_in_group(1)), (305, 7));
        let inner = |n: u64| crate::data::hash_map_bytes::<u64, u64>(pane(0..n).0.capacity());
        assert!(table.group_memory_bytes(0) >= inner(300) + inner(5));
        assert!(
            table.group_memory_bytes(0) > 300 * 16,
            "the entries' bytes count"
        );
    }

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
