//! The dataflow API and the operators behind it.
//!
//! A job is built by a closure that runs once on every subtask (Timely's
//! worker model): it receives a [`Dataflow`] for that subtask and declares
//! sources, transformations and sinks on typed [`Stream`]s. Operators on one
//! subtask are chained by direct calls (`Push`); only `key_by` exchanges
//! cross cores, through the rings of `exchange.rs`.
//!
//! Owns: the per-subtask graph (inputs, output buffers, timer operators) and
//! the typed builder. Must not touch glommio: the same graph is driven by the
//! real runtime and by the deterministic simulator.

pub(crate) mod exchange;
pub(crate) mod keyed;
pub(crate) mod mesh;
pub(crate) mod operators;

use crate::checkpoint::metadata::SourceOffset;
use crate::checkpoint::restore::RestoreState;
use crate::checkpoint::subtask::SubtaskCheckpoints;
use crate::checkpoint::{Barrier, CheckpointMode};
use crate::env::JobEnv;
use crate::keygroup::{Key, KeyGroupRange};
use crate::sink::Sink;
use crate::source::Source;
use crate::time::{Timestamp, WatermarkStrategy};
use crate::JobError;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

pub use keyed::{CoProcessFunction, KeyedContext, KeyedProcessFunction, WatermarkContext};

/// Extracts a record's key.
pub(crate) type KeyFn<T, K> = Rc<dyn Fn(&T) -> K>;

pub use crate::data::{Data, ExchangeData, Record};
pub(crate) use mesh::Message;

/// Per-step context handed down the operator chain.
pub(crate) struct Cx {
    /// Processing time at the start of the step.
    pub now_ms: u64,
}

/// The push side of an operator input. A call consumes (drains) the batch.
pub(crate) trait Push<T> {
    fn push(&mut self, batch: &mut Vec<Record<T>>, cx: &mut Cx) -> Result<(), JobError>;
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError>;
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError>;
    /// A checkpoint barrier reached this input: snapshot (if all inputs have
    /// it, or at once when unaligned) and pass it on.
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError>;
}

/// The fan-out point of a stream: every operator attached to it.
pub(crate) struct Output<T>(Rc<RefCell<Vec<Box<dyn Push<T>>>>>);

impl<T> Clone for Output<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Data> Output<T> {
    pub(crate) fn new() -> Self {
        Self(Rc::new(RefCell::new(Vec::new())))
    }

    pub(crate) fn attach(&self, target: Box<dyn Push<T>>) {
        self.0.borrow_mut().push(target);
    }

    pub(crate) fn push(&self, batch: &mut Vec<Record<T>>, cx: &mut Cx) -> Result<(), JobError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut targets = self.0.borrow_mut();
        match targets.split_last_mut() {
            None => batch.clear(),
            Some((last, rest)) => {
                for target in rest {
                    target.push(&mut batch.clone(), cx)?;
                }
                last.push(batch, cx)?;
            }
        }
        Ok(())
    }

    pub(crate) fn watermark(&self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        for target in self.0.borrow_mut().iter_mut() {
            target.watermark(watermark, cx)?;
        }
        Ok(())
    }

    pub(crate) fn end(&self, cx: &mut Cx) -> Result<(), JobError> {
        for target in self.0.borrow_mut().iter_mut() {
            target.end(cx)?;
        }
        Ok(())
    }

    pub(crate) fn barrier(&self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        for target in self.0.borrow_mut().iter_mut() {
            target.barrier(barrier, cx)?;
        }
        Ok(())
    }
}

/// Progress of one input in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputState {
    /// Did work; call again.
    Busy,
    /// Nothing to do now.
    Idle,
    /// Will never produce again.
    Finished,
}

/// Something that feeds a chain: a source or an exchange receiver.
pub(crate) trait Input {
    fn step(&mut self, cx: &mut Cx) -> Result<InputState, JobError>;
    /// Whether a step now would do work (checked before parking), at
    /// processing time `now_us` (epoch µs).
    fn has_work(&mut self, now_us: u64) -> bool;
    /// Processing time (epoch µs) at which the input wants to be stepped
    /// again, if idle.
    fn wake_at_us(&self) -> Option<u64> {
        None
    }
    /// The coordinator triggered a checkpoint: sources record their offset
    /// and emit the barrier; other inputs wait for it from upstream.
    fn trigger(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        let _ = (barrier, cx);
        Ok(())
    }
    /// Checkpoint `id` was aborted: drop its alignment and logs.
    fn abort(&mut self, id: u64) {
        let _ = id;
    }
    /// Checkpoint `id` completed: a source learns which of its positions
    /// are now durable.
    fn checkpoint_complete(&mut self, id: u64) -> Result<(), JobError> {
        let _ = id;
        Ok(())
    }
    /// The subtask finished: a source's final offsets, which every later
    /// checkpoint records for it (nothing for other inputs).
    fn final_offsets(&mut self) -> Result<Vec<SourceOffset>, JobError> {
        Ok(Vec::new())
    }
    /// Its state in one line, for `SPATE_STALL_DUMP` (see ARCHITECTURE.md).
    fn describe(&mut self) -> String {
        String::new()
    }
}

/// Buffers between a chain and the outside (exchange senders, egress sinks):
/// they can hold back their chain's input (backpressure) and must be flushed.
pub(crate) trait OutputBuffer {
    /// The chain must not take more input until this drains.
    fn is_blocked(&self) -> bool;
    /// Moves held-back messages on; returns whether anything moved.
    fn drain(&self, cx: &mut Cx) -> Result<bool, JobError>;
    /// Sends partly filled batches and pending watermarks (end of a step).
    fn flush(&self, cx: &mut Cx) -> Result<(), JobError>;
    /// Whether `drain` would move something now (checked before parking).
    fn can_drain(&self) -> bool;
    /// Whether anything is still held back (the subtask is not done).
    fn has_pending(&self) -> bool;
    /// Its state in one line, for `SPATE_STALL_DUMP` (see ARCHITECTURE.md).
    fn describe(&self) -> String {
        String::new()
    }
}

/// A sink, as the subtask sees it at checkpoints.
pub(crate) trait SinkCheckpoints {
    /// Whether it commits with checkpoints (the job ends with a final one).
    fn is_transactional(&self) -> bool;
    /// At a trigger: a sink whose input ended pre-commits at once (no
    /// barrier will arrive through its input).
    fn pre_commit_if_finished(&self, checkpoint_id: u64) -> Result<(), JobError>;
    /// Checkpoint `checkpoint_id` is complete: commit.
    fn commit(&self, checkpoint_id: u64) -> Result<(), JobError>;
    /// Checkpoint `checkpoint_id` was aborted: stop holding its part.
    fn abort(&self, checkpoint_id: u64);
}

/// A keyed operator (state and timers), as the subtask drives it between
/// records: its processing-time timers, and its part of checkpoints (a
/// snapshot once its inputs have ended, since no barrier reaches it any more;
/// archiving in the background; completions and aborts).
pub(crate) trait StatefulOperator {
    fn fire_processing_timers(&self, cx: &mut Cx) -> Result<bool, JobError>;
    fn next_processing_timer(&self) -> Option<u64>;
    /// At a trigger: an operator whose inputs all ended snapshots its final
    /// state (no barrier will arrive through its inputs).
    fn snapshot_if_finished(&self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError>;
    /// Archives part of a snapshot in progress; returns whether it did.
    fn continue_snapshot(&self) -> Result<bool, JobError>;
    /// Whether a snapshot is still being archived.
    fn has_snapshot_work(&self) -> bool;
    /// Whether bases wait to be materialised in the background (work that
    /// does not hold up the end of the job).
    fn has_background_work(&self) -> bool;
    /// Checkpoint `id` is committed: changes it captured need no tracking.
    fn checkpoint_complete(&self, id: u64);
    /// Checkpoint `id` failed: changes it captured go to the next one.
    fn checkpoint_aborted(&self, id: u64);
}

pub(crate) struct InputSlot {
    pub input: Box<dyn Input>,
    pub chain: usize,
    pub finished: bool,
}

/// One subtask's operator graph.
pub(crate) struct Graph {
    pub subtask: usize,
    pub parallelism: usize,
    pub max_parallelism: u32,
    pub range: KeyGroupRange,
    pub batch_size: usize,
    pub env: Arc<JobEnv>,
    pub inputs: Vec<InputSlot>,
    pub chains: Vec<Vec<Rc<dyn OutputBuffer>>>,
    pub buffers: Vec<Rc<dyn OutputBuffer>>,
    pub stateful_operators: Vec<Rc<dyn StatefulOperator>>,
    /// Sinks, told about checkpoints (two-phase commit).
    pub sinks: Vec<Rc<dyn SinkCheckpoints>>,
    pub names: Vec<String>,
    pub build_error: Option<JobError>,
    pub checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    pub restore: Option<Arc<RestoreState>>,
    /// Pairs of inputs that feed one multi-input operator.
    pub links: Vec<(usize, usize)>,
    /// Source, sink, operator and state names, hashed into the job
    /// fingerprint (types are checked by their schemas, not by name).
    pub signature: Vec<String>,
    next_exchange: usize,
}

/// The builder handed to the job's build closure, once per subtask.
#[derive(Clone)]
pub struct Dataflow(Rc<RefCell<Graph>>);

impl Dataflow {
    pub(crate) fn new(env: Arc<JobEnv>, subtask: usize) -> Self {
        // Every process's subtasks: key groups and splits are assigned over
        // the whole job.
        let parallelism = env.config.total_parallelism();
        let max_parallelism = env.config.max_parallelism;
        let range =
            crate::keygroup::key_group_range(max_parallelism, parallelism as u32, subtask as u32);
        let restore = env.restore.clone();
        let backlog_budget = env
            .config
            .checkpoint
            .as_ref()
            .map_or(usize::MAX, |c| c.archive_backlog_bytes);
        Self(Rc::new(RefCell::new(Graph {
            subtask,
            parallelism,
            max_parallelism,
            range,
            batch_size: env.config.batch_size,
            env,
            inputs: Vec::new(),
            chains: Vec::new(),
            buffers: Vec::new(),
            stateful_operators: Vec::new(),
            sinks: Vec::new(),
            names: Vec::new(),
            build_error: None,
            checkpoints: Rc::new(RefCell::new(SubtaskCheckpoints::new(
                subtask,
                backlog_budget,
            ))),
            restore,
            links: Vec::new(),
            signature: Vec::new(),
            next_exchange: 0,
        })))
    }

    pub(crate) fn graph(&self) -> std::cell::RefMut<'_, Graph> {
        self.0.borrow_mut()
    }

    /// This subtask's index, `0..parallelism()`.
    pub fn subtask(&self) -> usize {
        self.0.borrow().subtask
    }

    /// Number of subtasks of every operator.
    pub fn parallelism(&self) -> usize {
        self.0.borrow().parallelism
    }

    /// The job's max parallelism (number of key groups).
    pub fn max_parallelism(&self) -> u32 {
        self.0.borrow().max_parallelism
    }

    /// The key groups this subtask owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.0.borrow().range
    }

    /// The job's processing-time clock (the simulator's virtual one under
    /// simulation), for sources that pace themselves.
    pub fn clock(&self) -> Arc<dyn crate::time::Clock> {
        self.0.borrow().env.clock.clone()
    }

    /// Records batch size of the job.
    pub fn batch_size(&self) -> usize {
        self.0.borrow().batch_size
    }

    pub(crate) fn claim_name(&self, name: &str) {
        let mut g = self.0.borrow_mut();
        assert!(
            !g.names.iter().any(|n| n == name),
            "operator name `{name}` is used twice in one job"
        );
        g.names.push(name.to_string());
    }

    /// The job's checkpoint mode, if it checkpoints.
    pub(crate) fn checkpoint_mode(&self) -> Option<CheckpointMode> {
        let g = self.0.borrow();
        g.env.config.checkpoint.as_ref().map(|c| c.mode)
    }

    /// The live figures of operator `name` on this subtask.
    pub(crate) fn operator_metrics(
        &self,
        name: &str,
        kind: crate::metrics::OperatorKind,
    ) -> Arc<crate::metrics::OperatorMetrics> {
        let g = self.0.borrow();
        g.env.metrics.operator(name, kind, g.subtask)
    }

    pub(crate) fn sink_context(&self) -> crate::sink::SinkContext {
        let g = self.0.borrow();
        crate::sink::SinkContext {
            subtask: g.subtask,
            parallelism: g.parallelism,
            notifier: g.env.parkers[g.subtask].notifier(),
            checkpointing: g.env.config.checkpoint.is_some(),
            restored_checkpoint: g.restore.as_ref().map(|r| r.metadata.id),
            run: g.env.run_id,
        }
    }

    /// Records an error raised while building (for example a sink that cannot
    /// open its output); the run fails with it once the build closure returns.
    pub(crate) fn fail_build(&self, error: JobError) {
        let mut g = self.0.borrow_mut();
        if g.build_error.is_none() {
            g.build_error = Some(error);
        }
    }

    pub(crate) fn new_chain(&self) -> usize {
        let mut g = self.0.borrow_mut();
        g.chains.push(Vec::new());
        g.chains.len() - 1
    }

    /// Registers an input; it is the head of chain `chain`, and inputs and
    /// chains are numbered alike.
    pub(crate) fn add_input(&self, input: Box<dyn Input>, chain: usize) {
        let mut g = self.0.borrow_mut();
        assert_eq!(g.inputs.len(), chain, "input and chain numbers agree");
        g.inputs.push(InputSlot {
            input,
            chain,
            finished: false,
        });
    }

    /// The index the next input will get.
    pub(crate) fn next_input_index(&self) -> usize {
        self.0.borrow().inputs.len()
    }

    pub(crate) fn checkpoints(&self) -> Rc<RefCell<SubtaskCheckpoints>> {
        self.0.borrow().checkpoints.clone()
    }

    pub(crate) fn restore_state(&self) -> Option<Arc<RestoreState>> {
        self.0.borrow().restore.clone()
    }

    /// Declares that inputs `a` and `b` feed one operator (they align together).
    pub(crate) fn link_inputs(&self, a: usize, b: usize) {
        self.0.borrow_mut().links.push((a, b));
    }

    pub(crate) fn sign(&self, entry: String) {
        self.0.borrow_mut().signature.push(entry);
    }

    pub(crate) fn add_buffer(&self, chains: &[usize], buffer: Rc<dyn OutputBuffer>) {
        let mut g = self.0.borrow_mut();
        for &c in chains {
            g.chains[c].push(buffer.clone());
        }
        g.buffers.push(buffer);
    }

    pub(crate) fn next_exchange_id(&self) -> usize {
        let mut g = self.0.borrow_mut();
        g.next_exchange += 1;
        g.next_exchange - 1
    }

    /// Adds a source. `name` must be unique in the job; it names the source's
    /// offsets in checkpoints.
    pub fn source<T: Data, S: Source<T>>(
        &self,
        name: &str,
        source: S,
        watermarks: WatermarkStrategy<T>,
    ) -> Stream<T> {
        self.claim_name(name);
        self.sign(format!("source {name}"));
        let chain = self.new_chain();
        let output = Output::new();
        let input = operators::SourceInput::new(name, source, watermarks, output.clone(), self);
        self.add_input(Box::new(input), chain);
        Stream {
            df: self.clone(),
            output,
            chains: Rc::new(vec![chain]),
        }
    }
}

/// A stream of records on one subtask. Methods take `&self`: attaching two
/// operators to one stream fans it out (records are cloned).
pub struct Stream<T> {
    pub(crate) df: Dataflow,
    pub(crate) output: Output<T>,
    /// The inputs whose records reach this stream (for backpressure).
    pub(crate) chains: Rc<Vec<usize>>,
}

impl<T> Clone for Stream<T> {
    fn clone(&self) -> Self {
        Self {
            df: self.df.clone(),
            output: self.output.clone(),
            chains: self.chains.clone(),
        }
    }
}

impl<T: Data> Stream<T> {
    pub(crate) fn derive<U: Data>(
        &self,
        op: impl FnOnce(Output<U>) -> Box<dyn Push<T>>,
    ) -> Stream<U> {
        let output = Output::new();
        self.output.attach(op(output.clone()));
        Stream {
            df: self.df.clone(),
            output,
            chains: self.chains.clone(),
        }
    }

    /// Applies `f` to every record (timestamps are kept).
    pub fn map<U: Data>(&self, f: impl FnMut(T) -> U + 'static) -> Stream<U> {
        self.derive(|output| Box::new(operators::Map::new(f, output)))
    }

    /// Keeps the records for which `f` is true.
    pub fn filter(&self, f: impl FnMut(&T) -> bool + 'static) -> Stream<T> {
        self.derive(|output| Box::new(operators::Filter::new(f, output)))
    }

    /// Replaces every record by the records `f` returns (same timestamp).
    pub fn flat_map<U: Data, I: IntoIterator<Item = U>>(
        &self,
        f: impl FnMut(T) -> I + 'static,
    ) -> Stream<U> {
        self.derive(|output| Box::new(operators::FlatMap::new(f, output)))
    }

    /// Local pre-aggregation before an exchange (Flink's local-global
    /// aggregation): on each subtask, records with the same `key` and
    /// timestamp are merged into one with `merge(&mut held, next)` and held
    /// in memory until the watermark reaches their timestamp, a checkpoint
    /// barrier passes, or the input ends; then they go on, before that
    /// watermark, barrier or end. A record at or below the last watermark
    /// passes at once. Downstream sees fewer records, each a *partial*
    /// result, and must combine them with the same merge (it must be
    /// associative and commutative). Nothing is held across a barrier, so
    /// the operator has no state to checkpoint.
    ///
    /// Typical use: window results (timestamp `end - 1`) reduced per window
    /// on every subtask before one subtask per window combines them.
    pub fn pre_aggregate<K: std::hash::Hash + Eq + 'static>(
        &self,
        key: impl Fn(&T) -> K + 'static,
        merge: impl FnMut(&mut T, T) + 'static,
    ) -> Stream<T> {
        self.derive(|output| Box::new(operators::PreAggregate::new(key, merge, output)))
    }

    /// Calls `f` on every record and passes it on unchanged.
    pub fn inspect(&self, mut f: impl FnMut(&Record<T>) + 'static) -> Stream<T> {
        self.derive(|output| {
            Box::new(operators::Filter::with_record(
                move |r: &Record<T>| {
                    f(r);
                    true
                },
                output,
            ))
        })
    }

    /// Partitions the stream by key: records with equal keys meet on the
    /// subtask owning the key's key group. The exchange happens at the keyed
    /// operator applied next (`process`, `window`, `connect`).
    pub fn key_by<K: Key>(&self, key: impl Fn(&T) -> K + 'static) -> KeyedStream<K, T>
    where
        T: ExchangeData,
    {
        KeyedStream {
            stream: self.clone(),
            key: Rc::new(key),
        }
    }

    /// Writes the stream to `sink`. `name` must be unique in the job.
    pub fn sink<S: Sink<T>>(&self, name: &str, sink: S) {
        self.df.claim_name(name);
        self.df.sign(format!("sink {name}"));
        let context = self.df.sink_context();
        let metrics = self
            .df
            .operator_metrics(name, crate::metrics::OperatorKind::Sink);
        let op = match operators::SinkOp::new(name, sink, &context, self.df.checkpoints(), metrics)
        {
            Ok(op) => Rc::new(op),
            Err(error) => return self.df.fail_build(error),
        };
        if op.is_transactional() && self.df.checkpoint_mode() == Some(CheckpointMode::AtLeastOnce) {
            // Its two-phase commit would make replayed records permanent
            // twice: exactly-once output needs exactly-once state.
            return self
                .df
                .fail_build(JobError::from(crate::ConfigError::Conflict(format!(
                "sink `{name}` commits exactly once with the checkpoints, but the at-least-once \
                 checkpoint mode replays records a checkpoint already counted, so its committed \
                 output would hold them twice: use an exactly-once mode (aligned, unaligned, \
                 aligned with timeout) or an at-least-once sink"
            ))));
        }
        self.df.add_buffer(&self.chains, op.clone());
        self.df.graph().sinks.push(op.clone());
        self.output.attach(Box::new(operators::SinkPush(op)));
    }

    /// Calls `f` on every record (a sink without a name or backpressure).
    pub fn for_each(&self, f: impl FnMut(Record<T>) + 'static) {
        self.output.attach(Box::new(operators::ForEach(f)));
    }
}

/// A stream partitioned by key; keyed operators apply to it.
pub struct KeyedStream<K, T> {
    pub(crate) stream: Stream<T>,
    pub(crate) key: Rc<dyn Fn(&T) -> K>,
}

impl<K: Key, T: ExchangeData> KeyedStream<K, T> {
    /// Applies a keyed process function with keyed state and timers. The
    /// factory runs once per subtask and declares the function's state.
    pub fn process<O: Data, P: KeyedProcessFunction<K, T, O>>(
        &self,
        name: &str,
        factory: impl FnOnce(&mut crate::state::StateRegistry<K>) -> P,
    ) -> Stream<O> {
        keyed::build_single(self, name, factory)
    }

    /// Connects with another stream keyed by the same key type, for a keyed
    /// two-input operator (joins).
    pub fn connect<T2: ExchangeData>(
        &self,
        other: &KeyedStream<K, T2>,
    ) -> ConnectedStreams<K, T, T2> {
        ConnectedStreams {
            first: KeyedStream {
                stream: self.stream.clone(),
                key: self.key.clone(),
            },
            second: KeyedStream {
                stream: other.stream.clone(),
                key: other.key.clone(),
            },
        }
    }
}

/// Two keyed streams with the same key type, ready for a [`CoProcessFunction`].
pub struct ConnectedStreams<K, T1, T2> {
    pub(crate) first: KeyedStream<K, T1>,
    pub(crate) second: KeyedStream<K, T2>,
}

impl<K: Key, T1: ExchangeData, T2: ExchangeData> ConnectedStreams<K, T1, T2> {
    /// Applies a keyed two-input process function; both inputs share its
    /// keyed state and timers.
    pub fn process<O: Data, P: CoProcessFunction<K, T1, T2, O>>(
        &self,
        name: &str,
        factory: impl FnOnce(&mut crate::state::StateRegistry<K>) -> P,
    ) -> Stream<O> {
        keyed::build_connected(self, name, factory)
    }
}
