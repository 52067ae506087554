//! One subtask's step loop, independent of any executor.
//!
//! A [`Worker`] owns the operator graph of one subtask. [`Worker::step`] does
//! a bounded amount of work: move held-back batches into rings, fire due
//! processing-time timers, give every input whose chain is not held back one
//! turn, and flush partly filled batches. The glommio runtime calls it in a
//! loop on a pinned reactor; the simulator calls it for every subtask on one
//! thread in a seeded order. Nothing here blocks.

use crate::dataflow::{Cx, Dataflow, InputSlot, InputState, OutputBuffer, ProcessingTimers};
use crate::runtime::JobEnv;
use crate::JobError;
use std::rc::Rc;
use std::sync::Arc;

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
    timer_operators: Vec<Rc<dyn ProcessingTimers>>,
    pub(crate) report: SubtaskReport,
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
        if let Some(error) = g.build_error.take() {
            return Err(error);
        }
        Ok(Self {
            env: env.clone(),
            inputs: std::mem::take(&mut g.inputs),
            chains: std::mem::take(&mut g.chains),
            buffers: std::mem::take(&mut g.buffers),
            timer_operators: std::mem::take(&mut g.timer_operators),
            report: SubtaskReport {
                subtask,
                ..SubtaskReport::default()
            },
        })
    }

    fn now_ms(&self) -> u64 {
        self.env.clock.now_ms()
    }

    pub(crate) fn step(&mut self) -> Result<Step, JobError> {
        self.report.steps += 1;
        let mut cx = Cx {
            now_ms: self.now_ms(),
        };
        let mut busy = false;
        for buffer in &self.buffers {
            busy |= buffer.drain(&mut cx)?;
        }
        for operator in &self.timer_operators {
            busy |= operator.fire_processing_timers(&mut cx)?;
        }
        let mut all_finished = true;
        for slot in &mut self.inputs {
            if slot.finished {
                continue;
            }
            all_finished = false;
            if self.chains[slot.chain].iter().any(|b| b.is_blocked()) {
                continue;
            }
            match slot.input.step(&mut cx)? {
                InputState::Busy => busy = true,
                InputState::Idle => {}
                InputState::Finished => {
                    slot.finished = true;
                    busy = true;
                }
            }
        }
        for buffer in &self.buffers {
            buffer.flush(&mut cx)?;
        }
        if all_finished && !self.buffers.iter().any(|b| b.has_pending()) {
            return Ok(Step::Done);
        }
        Ok(if busy { Step::Busy } else { Step::Idle })
    }

    /// Whether a step now would do work. Called after the subtask published
    /// that it parks, so a producer that pushed before sees the flag or this
    /// check sees its push.
    pub(crate) fn has_work(&mut self) -> bool {
        let now = self.now_ms();
        if self.buffers.iter().any(|b| b.can_drain()) {
            return true;
        }
        if self
            .timer_operators
            .iter()
            .any(|t| t.next_processing_timer().is_some_and(|at| at <= now))
        {
            return true;
        }
        let chains = &self.chains;
        self.inputs.iter_mut().any(|slot| {
            !slot.finished
                && !chains[slot.chain].iter().any(|b| b.is_blocked())
                && slot.input.has_work(now)
        })
    }

    /// The earliest processing time at which an idle subtask must step again.
    pub(crate) fn wake_at(&self) -> Option<u64> {
        let inputs = self
            .inputs
            .iter()
            .filter(|s| !s.finished)
            .filter_map(|s| s.input.wake_at());
        let timers = self
            .timer_operators
            .iter()
            .filter_map(|t| t.next_processing_timer());
        inputs.chain(timers).min()
    }
}
