//! One subtask's step loop, independent of any executor.
//!
//! A [`Worker`] owns the operator graph of one subtask. [`Worker::step`] does
//! a bounded amount of work: move held-back batches into rings, fire due
//! processing-time timers, give every input whose chain is not held back one
//! turn, and flush partly filled batches. The glommio runtime calls it in a
//! loop on a pinned reactor; the simulator calls it for every subtask on one
//! thread in a seeded order. Nothing here blocks.

use crate::checkpoint::metadata::SourceOffset;
use crate::checkpoint::subtask::{BackgroundBase, LocalSnapshot, Outbox, SubtaskCheckpoints};
use crate::checkpoint::Control;
use crate::dataflow::{
    Cx, Dataflow, InputSlot, InputState, OutputBuffer, SinkCheckpoints, StatefulOperator,
};
use crate::env::JobEnv;
use crate::ring::Consumer;
use crate::JobError;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Where a subtask's finished checkpoint parts go: the runtime's writer task
/// (asynchronous, io_uring) or the simulator's inline writer.
pub(crate) trait SnapshotWriter {
    /// Blocks of checkpoints in progress, as they are made, and the
    /// checkpoints aborted since the last call (drop their blocks). Each
    /// block's bytes count in the subtask's backlog until the writer has
    /// copied them ([`SubtaskCheckpoints::blocks_taken`]).
    ///
    /// [`SubtaskCheckpoints::blocks_taken`]: crate::checkpoint::subtask::SubtaskCheckpoints::blocks_taken
    fn stream(&mut self, outbox: Outbox);
    /// Called once per step: a writer that runs inline (the simulator's)
    /// gets on with blocks it holds.
    fn progress(&mut self) {}
    /// Whether [`progress`](Self::progress) has blocks to get on with (the
    /// runtime's writer is a task of its own: never).
    fn holds_blocks(&self) -> bool {
        false
    }
    /// A complete part: its blocks were streamed before it.
    fn submit(&mut self, snapshot: LocalSnapshot);
    /// Bases materialised in the background: written after the parts
    /// handed over before them; a part handed over later goes first.
    fn submit_bases(&mut self, bases: Vec<BackgroundBase>);
    /// The subtask finished, after every part it handed over: the
    /// coordinator records `sources` for it in every later checkpoint.
    fn finished(&mut self, sources: Vec<SourceOffset>);
}

/// What one step achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Work was done; step again.
    Busy,
    /// Nothing could be done; park until notified or [`Worker::wake_at`].
    Idle,
    /// Every input has ended and every output is flushed.
    Done,
}

/// Counters of one subtask's run.
#[derive(Clone, Debug, Default)]
pub struct SubtaskReport {
    /// The subtask's index.
    pub subtask: usize,
    /// Steps taken.
    pub steps: u64,
    /// Times the subtask parked for lack of work.
    pub parks: u64,
}

pub(crate) struct Worker {
    env: Arc<JobEnv>,
    inputs: Vec<InputSlot>,
    chains: Vec<Vec<Rc<dyn OutputBuffer>>>,
    buffers: Vec<Rc<dyn OutputBuffer>>,
    stateful_operators: Vec<Rc<dyn StatefulOperator>>,
    sinks: Vec<Rc<dyn SinkCheckpoints>>,
    /// A sink commits with checkpoints: the subtask ends only after a
    /// checkpoint triggered once all its input ended has completed.
    final_checkpoint: FinalCheckpoint,
    checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    control: Option<Consumer<Control>>,
    writer: Option<Box<dyn SnapshotWriter>>,
    /// Hash of the job's source, sink, operator and state names.
    pub(crate) fingerprint: u64,
    pub(crate) report: SubtaskReport,
}

/// Where a subtask with a transactional sink stands with its final checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FinalCheckpoint {
    /// Not needed (no transactional sink, or no checkpointing).
    None,
    /// Input still flowing.
    Pending,
    /// All input ended and flushed; waiting for a trigger (`None`) or for
    /// the completion of the checkpoint triggered since.
    Drained(Option<u64>),
    /// Complete: the subtask may end.
    Done,
}

/// Alignment groups: inputs linked by a multi-input operator share a group.
fn groups(inputs: usize, links: &[(usize, usize)]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..inputs).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for &(a, b) in links {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        parent[ra] = rb;
    }
    (0..inputs).map(|i| root(&mut parent, i)).collect()
}

/// FNV-1a over the job's signature lines: stable across runs and builds.
fn fingerprint(signature: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in signature {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl Worker {
    /// Runs the job's build closure for `subtask` and takes the graph it built.
    pub(crate) fn build(
        env: Arc<JobEnv>,
        subtask: usize,
        build: &(dyn Fn(&Dataflow) + Send + Sync),
    ) -> Result<Self, JobError> {
        let df = Dataflow::new(env.clone(), subtask);
        build(&df);
        let mut g = df.graph();
        let fingerprint = fingerprint(&g.signature);
        if let Some(restore) = &g.restore {
            if restore.metadata.fingerprint != fingerprint {
                return Err(crate::RestoreError::IncompatibleJob {
                    id: restore.metadata.id,
                    found: restore.metadata.fingerprint,
                    expected: fingerprint,
                }
                .into());
            }
        }
        if let Some(error) = g.build_error.take() {
            return Err(error);
        }
        g.checkpoints
            .borrow_mut()
            .set_groups(groups(g.inputs.len(), &g.links));
        let control = env.take_control(subtask);
        let transactional = control.is_some() && g.sinks.iter().any(|s| s.is_transactional());
        Ok(Self {
            env: env.clone(),
            inputs: std::mem::take(&mut g.inputs),
            chains: std::mem::take(&mut g.chains),
            buffers: std::mem::take(&mut g.buffers),
            stateful_operators: std::mem::take(&mut g.stateful_operators),
            sinks: std::mem::take(&mut g.sinks),
            final_checkpoint: if transactional {
                FinalCheckpoint::Pending
            } else {
                FinalCheckpoint::None
            },
            checkpoints: g.checkpoints.clone(),
            control,
            writer: None,
            fingerprint,
            report: SubtaskReport {
                subtask,
                ..SubtaskReport::default()
            },
        })
    }

    pub(crate) fn checkpoints(&self) -> Rc<RefCell<SubtaskCheckpoints>> {
        self.checkpoints.clone()
    }

    pub(crate) fn set_writer(&mut self, writer: Box<dyn SnapshotWriter>) {
        self.writer = Some(writer);
    }

    fn handle_control(&mut self, cx: &mut Cx) -> Result<bool, JobError> {
        let Some(control) = &mut self.control else {
            return Ok(false);
        };
        let mut any = false;
        while let Some(message) = control.pop() {
            any = true;
            match message {
                Control::Trigger(barrier) => {
                    if !self.checkpoints.borrow_mut().begin(barrier) {
                        continue;
                    }
                    // An operator whose inputs all ended cuts its final
                    // state first: its snapshot keeps the part open until it
                    // is archived. (After the inputs' triggers, the part of
                    // a subtask whose inputs all ended was ready, and
                    // acknowledged, before the cut began, without that
                    // state.)
                    for operator in &self.stateful_operators {
                        operator.snapshot_if_finished(barrier, cx)?;
                    }
                    // So do sinks whose input ended: a pre-commit that
                    // finishes later (the committed egress) holds the part
                    // open, which it can only do before the part is ready.
                    for sink in &self.sinks {
                        sink.pre_commit_if_finished(barrier.id)?;
                    }
                    // Finished sources still record their final offset.
                    for slot in &mut self.inputs {
                        slot.input.trigger(barrier, cx)?;
                    }
                    // Drained before this barrier: it covers all of this
                    // subtask's output. Final if every subtask says so (asked
                    // on completion, when all have handled the barrier; a
                    // subtask's own view of the others when the barrier
                    // reaches it could differ from theirs).
                    if matches!(self.final_checkpoint, FinalCheckpoint::Drained(_)) {
                        self.env.vote_final(barrier.id);
                        self.final_checkpoint = FinalCheckpoint::Drained(Some(barrier.id));
                    }
                    self.checkpoints.borrow_mut().check_ready(barrier.id);
                }
                Control::Abort(id) => {
                    self.checkpoints.borrow_mut().abort(id);
                    for slot in &mut self.inputs {
                        slot.input.abort(id);
                    }
                    for operator in &self.stateful_operators {
                        operator.checkpoint_aborted(id);
                    }
                    for sink in &self.sinks {
                        sink.abort(id);
                    }
                    if self.final_checkpoint == FinalCheckpoint::Drained(Some(id)) {
                        // Ask for another final checkpoint.
                        self.final_checkpoint = FinalCheckpoint::Drained(None);
                        self.env.request_checkpoint();
                    }
                }
                Control::Complete(id) => {
                    self.checkpoints.borrow_mut().complete(id);
                    self.env
                        .coordinator
                        .saw_completion(self.env.local_index(self.report.subtask), id);
                    for operator in &self.stateful_operators {
                        operator.checkpoint_complete(id);
                    }
                    for sink in &self.sinks {
                        sink.commit(id)?;
                    }
                    for slot in &mut self.inputs {
                        slot.input.checkpoint_complete(id)?;
                    }
                    if let FinalCheckpoint::Drained(Some(voted)) = self.final_checkpoint {
                        if id == voted && self.env.is_final(id) {
                            self.final_checkpoint = FinalCheckpoint::Done;
                        }
                    }
                }
            }
        }
        Ok(any)
    }

    fn now_ms(&self) -> u64 {
        self.env.clock.now_ms()
    }

    pub(crate) fn step(&mut self) -> Result<Step, JobError> {
        self.report.steps += 1;
        let mut cx = Cx {
            now_ms: self.now_ms(),
        };
        let mut busy = self.handle_control(&mut cx)?;
        for buffer in &self.buffers {
            busy |= buffer.drain(&mut cx)?;
        }
        for operator in &self.stateful_operators {
            busy |= operator.fire_processing_timers(&mut cx)?;
            busy |= operator.continue_snapshot()?;
        }
        let mut all_finished = true;
        for (index, slot) in self.inputs.iter_mut().enumerate() {
            if slot.finished {
                continue;
            }
            all_finished = false;
            if self.chains[slot.chain].iter().any(|b| b.is_blocked())
                || self.checkpoints.borrow().paused(index)
            {
                continue;
            }
            match slot.input.step(&mut cx)? {
                InputState::Busy => busy = true,
                InputState::Idle => {}
                InputState::Finished => {
                    slot.finished = true;
                    self.checkpoints.borrow_mut().input_finished(index);
                    busy = true;
                }
            }
        }
        for buffer in &self.buffers {
            buffer.flush(&mut cx)?;
        }
        // Blocks first: a part handed over after them finds them written.
        let outbox = self.checkpoints.borrow_mut().take_outbox();
        if !outbox.blocks.is_empty() || !outbox.aborted.is_empty() {
            match &mut self.writer {
                Some(writer) => writer.stream(outbox),
                None => {
                    let bytes = outbox.blocks.iter().map(|(_, b)| b.bytes.len()).sum();
                    self.checkpoints.borrow_mut().blocks_taken(bytes);
                }
            }
        }
        if let Some(writer) = &mut self.writer {
            writer.progress();
        }
        let ready = self.checkpoints.borrow_mut().take_ready();
        for snapshot in ready {
            if let Some(writer) = &mut self.writer {
                writer.submit(snapshot);
            }
        }
        let bases = self.checkpoints.borrow_mut().take_background_bases();
        if !bases.is_empty() {
            if let Some(writer) = &mut self.writer {
                writer.submit_bases(bases);
            }
        }
        if all_finished
            && !self.buffers.iter().any(|b| b.has_pending())
            && !self
                .stateful_operators
                .iter()
                .any(|o| o.has_snapshot_work())
        {
            match self.final_checkpoint {
                FinalCheckpoint::None | FinalCheckpoint::Done => {
                    // Later checkpoints record this subtask as finished,
                    // with its sources' final offsets (Flink's FLIP-147).
                    if let Some(writer) = &mut self.writer {
                        let mut offsets = Vec::new();
                        for slot in &mut self.inputs {
                            offsets.extend(slot.input.final_offsets()?);
                        }
                        writer.finished(offsets);
                    }
                    return Ok(Step::Done);
                }
                FinalCheckpoint::Pending => {
                    self.final_checkpoint = FinalCheckpoint::Drained(None);
                    self.env.drained();
                    busy = true;
                }
                FinalCheckpoint::Drained(_) => {}
            }
        }
        Ok(if busy { Step::Busy } else { Step::Idle })
    }

    /// Whether a step now would do work. Called after the subtask published
    /// that it parks, so a producer that pushed before sees the flag or this
    /// check sees its push.
    pub(crate) fn has_work(&mut self) -> bool {
        let now_us = self.env.clock.now_us();
        let now = now_us / 1000;
        if self.control.as_mut().is_some_and(|c| c.has_message()) {
            return true;
        }
        // A snapshot waiting for the writer to catch up is no work: the
        // reactor must give the writer the thread (it notifies the subtask
        // once it has caught up). An inline writer with blocks in hand is.
        if self.writer.as_ref().is_some_and(|w| w.holds_blocks()) {
            return true;
        }
        let snapshot_waits = self.checkpoints.borrow().archive_behind();
        if self.buffers.iter().any(|b| b.can_drain())
            || self
                .stateful_operators
                .iter()
                .any(|o| (o.has_snapshot_work() && !snapshot_waits) || o.has_background_work())
        {
            return true;
        }
        if self
            .stateful_operators
            .iter()
            .any(|t| t.next_processing_timer().is_some_and(|at| at <= now))
        {
            return true;
        }
        let chains = &self.chains;
        let checkpoints = self.checkpoints.borrow();
        self.inputs.iter_mut().enumerate().any(|(index, slot)| {
            !slot.finished
                && !chains[slot.chain].iter().any(|b| b.is_blocked())
                && !checkpoints.paused(index)
                && slot.input.has_work(now_us)
        })
    }

    /// The subtask's state, for `SPATE_STALL_DUMP` (see ARCHITECTURE.md).
    pub(crate) fn describe(&mut self) -> String {
        let mut out = format!("subtask {}:\n", self.report.subtask);
        let checkpoints = self.checkpoints.clone();
        for (index, slot) in self.inputs.iter_mut().enumerate() {
            let blocked = self.chains[slot.chain].iter().any(|b| b.is_blocked());
            out += &format!(
                "  input {index} chain {} finished={} chain_blocked={blocked} paused={} has_work={} : {}\n",
                slot.chain,
                slot.finished,
                checkpoints.borrow().paused(index),
                slot.input.has_work(self.env.clock.now_us()),
                slot.input.describe()
            );
        }
        for b in &self.buffers {
            out += &format!(
                "  buffer blocked={} pending={} can_drain={}: {}\n",
                b.is_blocked(),
                b.has_pending(),
                b.can_drain(),
                b.describe()
            );
        }
        out += &format!("  checkpoints: {}\n", checkpoints.borrow().describe());
        out += &format!(
            "  snapshot work: {}\n",
            self.stateful_operators
                .iter()
                .any(|o| o.has_snapshot_work())
        );
        out
    }

    /// The earliest processing time (epoch µs) at which an idle subtask must
    /// step again.
    pub(crate) fn wake_at_us(&self) -> Option<u64> {
        let inputs = self
            .inputs
            .iter()
            .filter(|s| !s.finished)
            .filter_map(|s| s.input.wake_at_us());
        let timers = self
            .stateful_operators
            .iter()
            .filter_map(|t| t.next_processing_timer())
            .map(|at_ms| at_ms.saturating_mul(1000));
        inputs.chain(timers).min()
    }
}
