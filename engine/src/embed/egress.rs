//! Egress: sink subtasks to one service thread, immediately, by sealed
//! epochs, or committed (see the module above for the contract).
//!
//! Invariants:
//! 1. A sink subtask's ring carries, in order, its batches, a seal after the
//!    last record before each checkpoint's barrier (epochs and committed
//!    modes), and an end mark when its input ended normally (only seals of
//!    the checkpoints after that follow it).
//! 2. The receiver reads a ring only up to its next seal until every ring
//!    has reached a seal (or ended): so a [`Delivery::Sealed`]`(n)` follows
//!    every record of epoch `n` of every subtask and precedes every record
//!    after it. A seal some ring skipped (its checkpoint was aborted) and
//!    the seals of a run that died are not delivered.
//! 3. A sink acknowledges its part of checkpoint `n` only once the receiver
//!    acknowledged `n` for the sink's own run: a completed checkpoint covers
//!    only output the service holds. [`Delivery::Committed`] never runs
//!    ahead of the seals.
//! 4. The receiver reads one run's rings; a newer run's rings replace them
//!    when all its sinks opened (epochs: what the old run's rings still held
//!    belongs to epochs after the restored checkpoint and is dropped).

use super::RECHECK;
use crate::data::Record;
use crate::park::{Notifier, ThreadWaiter};
use crate::ring::{ring, Consumer, Producer};
use crate::sink::{Sink, SinkContext};
use crate::SinkError;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What travels on an egress ring.
enum Item<T> {
    Batch(Vec<Record<T>>),
    /// Every record before it belongs to this checkpoint's epoch or earlier.
    Seal(u64),
    /// The sink's input ended.
    End,
}

/// The sinks of the run being opened.
struct RunState<T> {
    run: Option<u64>,
    consumers: Vec<Option<Consumer<Item<T>>>>,
    notifiers: Vec<Option<Notifier>>,
    opened: usize,
    restored: Option<u64>,
    /// The newest checkpoint of this run the receiver acknowledged (a
    /// failed run's acknowledgements never reach the next run's sinks).
    acked: Arc<AtomicU64>,
}

/// The newest run whose sinks all opened, until the receiver takes it (a
/// newer run being opened does not touch it).
struct ReadyRun<T> {
    generation: u64,
    consumers: Vec<Consumer<Item<T>>>,
    notifiers: Vec<Notifier>,
    restored: Option<u64>,
    acked: Arc<AtomicU64>,
}

struct Runs<T> {
    opening: RunState<T>,
    ready: Option<ReadyRun<T>>,
}

struct EgressShared<T> {
    parallelism: usize,
    capacity: usize,
    /// Seals and acknowledgements (epochs and committed modes).
    epochs: bool,
    state: Mutex<Runs<T>>,
    /// Bumped when a run's sinks have all opened (0: none yet); the run is
    /// then in `Runs::ready`.
    generation: AtomicU64,
    /// The newest completed checkpoint a sink of the current run was told of.
    committed: AtomicU64,
    sinks_gone: AtomicBool,
    /// The service thread receiving.
    waiter: ThreadWaiter,
}

fn shared<T>(parallelism: usize, capacity: usize, epochs: bool) -> Arc<EgressShared<T>> {
    assert!(parallelism > 0, "an egress needs a subtask");
    Arc::new(EgressShared {
        parallelism,
        capacity,
        epochs,
        state: Mutex::new(Runs {
            opening: RunState {
                run: None,
                consumers: Vec::new(),
                notifiers: Vec::new(),
                opened: 0,
                restored: None,
                acked: Arc::default(),
            },
            ready: None,
        }),
        generation: AtomicU64::new(0),
        committed: AtomicU64::new(0),
        sinks_gone: AtomicBool::new(false),
        waiter: ThreadWaiter::default(),
    })
}

/// An immediate egress: each of `parallelism` sink subtasks sends batches to
/// one service thread through a ring of `capacity` batches; when the
/// service falls behind, the sinks block and the job slows to its pace. At
/// least once: after a restore the service may receive results again.
pub fn egress<T: Send + 'static>(
    parallelism: usize,
    capacity: usize,
) -> (EgressSinks<T>, EgressReceiver<T>) {
    let shared = shared(parallelism, capacity, false);
    let receiver = Core::new(shared.clone());
    (EgressSinks { shared }, EgressReceiver { core: receiver })
}

/// An egress that delivers records at once, with the checkpoint epoch
/// boundaries and commits ([`Delivery`]); its checkpoints complete only
/// after the service acknowledged each epoch. Needs a checkpointing job.
pub fn egress_epochs<T: Send + 'static>(
    parallelism: usize,
    capacity: usize,
) -> (EgressSinks<T>, EpochReceiver<T>) {
    let shared = shared(parallelism, capacity, true);
    let receiver = Core::new(shared.clone());
    (EgressSinks { shared }, EpochReceiver { core: receiver })
}

/// An egress that releases each record only when the checkpoint covering it
/// has completed: exactly once across the restarts of one process, with no
/// logic in the service. Needs a checkpointing job.
pub fn egress_committed<T: Send + 'static>(
    parallelism: usize,
    capacity: usize,
) -> (EgressSinks<T>, CommittedReceiver<T>) {
    let (sinks, epochs) = egress_epochs(parallelism, capacity);
    (
        sinks,
        CommittedReceiver {
            epochs,
            open: Vec::new(),
            sealed: VecDeque::new(),
            ready: VecDeque::new(),
        },
    )
}

/// The sink side of an egress; `Send + Sync` for the build closure.
pub struct EgressSinks<T> {
    shared: Arc<EgressShared<T>>,
}

impl<T: Send + 'static> EgressSinks<T> {
    /// The sink of subtask `subtask` for the run being built.
    pub fn take(&self, subtask: usize) -> EgressSink<T> {
        assert!(
            subtask < self.shared.parallelism,
            "subtask {subtask} out of range"
        );
        EgressSink {
            producer: None,
            pending: VecDeque::new(),
            acked: Arc::default(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for EgressSinks<T> {
    fn drop(&mut self) {
        // The job is over: no run will open sinks again.
        self.shared.sinks_gone.store(true, Ordering::Release);
        self.shared.waiter.wake();
    }
}

/// One subtask's egress sink.
pub struct EgressSink<T> {
    producer: Option<Producer<Item<T>>>,
    pending: VecDeque<Item<T>>,
    /// Its run's acknowledgements.
    acked: Arc<AtomicU64>,
    shared: Arc<EgressShared<T>>,
}

impl<T> Drop for EgressSink<T> {
    fn drop(&mut self) {
        // Its ring closes: the receiver learns that the run ended or died.
        self.producer = None;
        self.shared.waiter.wake();
    }
}

impl<T: Send + 'static> EgressSink<T> {
    fn send(&mut self, item: Item<T>) {
        let producer = self.producer.as_mut().expect("written after open");
        if self.pending.is_empty() {
            if let Err(item) = producer.try_push(item) {
                self.pending.push_back(item);
            }
        } else {
            self.pending.push_back(item);
        }
        self.shared.waiter.wake();
    }
}

impl<T: Send + 'static> Sink<T> for EgressSink<T> {
    fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        let shared = &self.shared;
        if context.parallelism != shared.parallelism {
            return Err(SinkError::Other(format!(
                "the egress was made for {} subtasks, the job runs {}",
                shared.parallelism, context.parallelism
            )));
        }
        if shared.epochs && !context.checkpointing {
            return Err(SinkError::Other(
                "a committed egress commits with checkpoints: configure checkpoints, or use \
                 the immediate egress"
                    .into(),
            ));
        }
        let (producer, consumer) = ring(shared.capacity);
        let mut runs = shared.state.lock().expect("egress lock");
        let state = &mut runs.opening;
        if state.run != Some(context.run) {
            // The first sink of a new run. Its restored checkpoint decides:
            // epochs up to it are final, later ones are void.
            let restored = context.restored_checkpoint;
            *state = RunState {
                run: Some(context.run),
                consumers: (0..shared.parallelism).map(|_| None).collect(),
                notifiers: (0..shared.parallelism).map(|_| None).collect(),
                opened: 0,
                restored,
                acked: Arc::new(AtomicU64::new(restored.unwrap_or(0))),
            };
            shared
                .committed
                .store(restored.unwrap_or(0), Ordering::Release);
        }
        state.consumers[context.subtask] = Some(consumer);
        state.notifiers[context.subtask] = Some(context.notifier.clone());
        state.opened += 1;
        self.acked = state.acked.clone();
        if state.opened == shared.parallelism {
            let generation = shared.generation.load(Ordering::Acquire) + 1;
            let ready = ReadyRun {
                generation,
                consumers: state
                    .consumers
                    .iter_mut()
                    .map(|c| c.take().expect("every sink of an opened run made its ring"))
                    .collect(),
                notifiers: state.notifiers.iter().flatten().cloned().collect(),
                restored: state.restored,
                acked: state.acked.clone(),
            };
            runs.ready = Some(ready);
            shared.generation.store(generation, Ordering::Release);
            shared.waiter.wake();
        }
        self.producer = Some(producer);
        Ok(())
    }

    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        if !batch.is_empty() {
            self.send(Item::Batch(std::mem::take(batch)));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.send(Item::End);
        Ok(())
    }

    fn is_blocked(&self) -> bool {
        !self.pending.is_empty()
    }

    fn can_drain(&mut self) -> bool {
        !self.pending.is_empty() && self.producer.as_mut().is_some_and(|p| p.free_slots() > 0)
    }

    fn drain(&mut self) -> Result<bool, SinkError> {
        let Some(producer) = self.producer.as_mut() else {
            return Ok(false);
        };
        let mut moved = false;
        while let Some(item) = self.pending.pop_front() {
            if let Err(item) = producer.try_push(item) {
                self.pending.push_front(item);
                break;
            }
            moved = true;
        }
        if moved {
            self.shared.waiter.wake();
        }
        Ok(moved)
    }

    fn is_transactional(&self) -> bool {
        self.shared.epochs
    }

    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        if self.shared.epochs {
            self.send(Item::Seal(checkpoint_id));
        }
        Ok(())
    }

    fn is_pre_committed(&mut self, checkpoint_id: u64) -> bool {
        !self.shared.epochs || self.acked.load(Ordering::Acquire) >= checkpoint_id
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        self.shared
            .committed
            .fetch_max(checkpoint_id, Ordering::AcqRel);
        self.shared.waiter.wake();
        Ok(())
    }
}

/// What an epochs receiver delivers, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery<T> {
    /// A result of the epoch the next [`Delivery::Sealed`] closes.
    Record(Record<T>),
    /// Every record of checkpoint `n`'s epoch (and of earlier epochs not
    /// sealed yet) was delivered. Make them durable on the service's side,
    /// then [`EpochReceiver::acknowledge`] `n`: the checkpoint waits for it.
    Sealed(u64),
    /// Checkpoint `n` completed: every epoch up to `n` is final.
    Committed(u64),
    /// A run of the job restored checkpoint `r` (`None`: it started from
    /// nothing): epochs up to `r` are final, every later one (and every
    /// record not sealed yet) is void and will be produced again. The first
    /// delivery of every run.
    Restored(Option<u64>),
}

/// Reads the rings of the current run (shared by the three receivers).
struct Core<T> {
    shared: Arc<EgressShared<T>>,
    generation: u64,
    consumers: Vec<Consumer<Item<T>>>,
    /// The subtasks of the rings (woken after the receiver frees space).
    notifiers: Vec<Notifier>,
    /// Per ring: the seal it stopped at, or `u64::MAX` once it is closed
    /// and empty.
    held: Vec<Option<u64>>,
    /// Per ring: its sink's input ended (an end mark; a ring closed without
    /// one belongs to a run that failed).
    ended: Vec<bool>,
    sealed: u64,
    committed_seen: u64,
    /// The adopted run's acknowledgements.
    acked: Arc<AtomicU64>,
    records: VecDeque<Record<T>>,
    next: usize,
}

/// What the core has now.
enum Next<T> {
    Delivery(Delivery<T>),
    Nothing,
    Finished,
}

impl<T: Send + 'static> Core<T> {
    fn new(shared: Arc<EgressShared<T>>) -> Self {
        Self {
            shared,
            generation: 0,
            consumers: Vec::new(),
            notifiers: Vec::new(),
            held: Vec::new(),
            ended: Vec::new(),
            sealed: 0,
            committed_seen: 0,
            acked: Arc::default(),
            records: VecDeque::new(),
            next: 0,
        }
    }

    fn poll(&mut self) -> Next<T> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != 0 && generation != self.generation {
            // Immediate: what the old run sent still goes out first.
            if self.shared.epochs || self.old_run_drained() {
                if let Some(restored) = self.adopt_run() {
                    return Next::Delivery(restored);
                }
            }
        }
        if self.shared.epochs {
            // Never ahead of the seals: a commit covers sealed epochs only.
            let committed = self
                .shared
                .committed
                .load(Ordering::Acquire)
                .min(self.sealed);
            if committed > self.committed_seen {
                self.committed_seen = committed;
                return Next::Delivery(Delivery::Committed(committed));
            }
        }
        loop {
            if let Some(record) = self.records.pop_front() {
                return Next::Delivery(Delivery::Record(record));
            }
            if let Some(record) = self.read_rings() {
                return Next::Delivery(Delivery::Record(record));
            }
            let gone = self.shared.sinks_gone.load(Ordering::Acquire);
            if self.held.is_empty() {
                // No run has opened all its sinks; none will once they are gone.
                return if gone { Next::Finished } else { Next::Nothing };
            }
            if self.held.iter().any(Option::is_none) {
                return Next::Nothing;
            }
            let closed = |h: &Option<u64>| *h == Some(u64::MAX);
            if self
                .held
                .iter()
                .zip(&self.ended)
                .any(|(h, &e)| closed(h) && !e)
            {
                // A ring closed without its end mark: the run died. Its
                // seals mean nothing (a checkpoint of it cannot complete
                // now); wait for the next run, or the end of the job.
                return if gone { Next::Finished } else { Next::Nothing };
            }
            let seals = self
                .held
                .iter()
                .flatten()
                .copied()
                .filter(|&h| h != u64::MAX);
            let (Some(least), Some(most)) = (seals.clone().min(), seals.max()) else {
                // Every ring ended and closed. Immediate: the input ended, so
                // the job is done. Epochs: the run may still fail before its
                // final checkpoint completes, and the next run would produce
                // the epochs after its restored checkpoint again: only the
                // end of the job (the sinks dropped with the build closure)
                // ends the deliveries.
                let all_ended = self.ended.iter().all(|&e| e);
                return if gone || (all_ended && !self.shared.epochs) {
                    Next::Finished
                } else {
                    Next::Nothing
                };
            };
            for held in &mut self.held {
                if *held == Some(least) {
                    *held = None;
                }
            }
            self.sealed = least;
            if least == most {
                return Next::Delivery(Delivery::Sealed(least));
            }
            // A ring went past `least` without its seal: checkpoint `least`
            // was aborted before that subtask's sink saw it. Its epoch merges
            // into the next one; no `Sealed` for it.
        }
    }

    /// Pops batches from rings not held at a seal; the first record of the
    /// first batch found.
    fn read_rings(&mut self) -> Option<Record<T>> {
        for _ in 0..self.consumers.len() {
            let i = self.next;
            self.next = (self.next + 1) % self.consumers.len();
            while self.held[i].is_none() {
                match self.consumers[i].pop() {
                    Some(Item::Batch(batch)) => {
                        self.records.extend(batch);
                        self.notify(i);
                        return self.records.pop_front();
                    }
                    Some(Item::Seal(id)) => {
                        self.notify(i);
                        if id > self.sealed {
                            self.held[i] = Some(id);
                        }
                    }
                    Some(Item::End) => {
                        // The final checkpoint's seal may still follow.
                        self.ended[i] = true;
                    }
                    None if self.consumers[i].is_closed() => {
                        // Closed (Release) before the last check: re-read.
                        if !self.consumers[i].has_message() {
                            self.held[i] = Some(u64::MAX);
                        }
                    }
                    None => break,
                }
            }
        }
        None
    }

    fn notify(&self, ring: usize) {
        self.notifiers[ring].notify();
    }

    fn old_run_drained(&mut self) -> bool {
        self.records.is_empty()
            && self
                .consumers
                .iter_mut()
                .all(|c| c.is_closed() && !c.has_message())
    }

    /// Takes the rings of the newest run whose sinks all opened (`None`: no
    /// run newer than the one it reads).
    fn adopt_run(&mut self) -> Option<Delivery<T>> {
        let ready = self
            .shared
            .state
            .lock()
            .expect("egress lock")
            .ready
            .take()?;
        self.generation = ready.generation;
        self.consumers = ready.consumers;
        self.notifiers = ready.notifiers;
        self.acked = ready.acked;
        self.held = vec![None; self.consumers.len()];
        self.ended = vec![false; self.consumers.len()];
        self.records.clear();
        self.next = 0;
        self.sealed = ready.restored.unwrap_or(0);
        self.committed_seen = ready.restored.unwrap_or(0);
        Some(Delivery::Restored(ready.restored))
    }

    /// The next delivery, waiting for it; `None` once the job has finished.
    fn recv(&mut self) -> Option<Delivery<T>> {
        let shared = self.shared.clone();
        shared.waiter.wait_for(RECHECK, || match self.poll() {
            Next::Delivery(d) => Some(Some(d)),
            Next::Finished => Some(None),
            Next::Nothing => None,
        })
    }

    fn try_recv(&mut self) -> Option<Delivery<T>> {
        match self.poll() {
            Next::Delivery(d) => Some(d),
            _ => None,
        }
    }

    fn acknowledge(&self, checkpoint: u64) {
        if checkpoint > self.sealed {
            // A seal of a run that failed since (its checkpoints cannot
            // complete) or not delivered at all: nothing to let go of.
            return;
        }
        self.acked.fetch_max(checkpoint, Ordering::AcqRel);
        for n in &self.notifiers {
            n.notify();
        }
    }
}

/// The service's end of an immediate [`egress`].
pub struct EgressReceiver<T> {
    core: Core<T>,
}

impl<T: Send + 'static> EgressReceiver<T> {
    /// Takes a record if one is ready.
    pub fn try_recv(&mut self) -> Option<Record<T>> {
        loop {
            match self.core.try_recv()? {
                Delivery::Record(r) => return Some(r),
                _ => continue,
            }
        }
    }

    /// Waits (parked) for the next record; `None` once the job has finished
    /// and everything was received.
    pub fn recv(&mut self) -> Option<Record<T>> {
        loop {
            match self.core.recv()? {
                Delivery::Record(r) => return Some(r),
                _ => continue,
            }
        }
    }
}

impl<T: Send + 'static> Iterator for EgressReceiver<T> {
    type Item = Record<T>;
    fn next(&mut self) -> Option<Record<T>> {
        self.recv()
    }
}

/// The service's end of an [`egress_epochs`].
pub struct EpochReceiver<T> {
    core: Core<T>,
}

impl<T: Send + 'static> EpochReceiver<T> {
    /// Waits (parked) for the next delivery; `None` once the job has ended
    /// (its build closure, which holds the [`EgressSinks`], is dropped when
    /// its last run ends) and everything was delivered.
    pub fn recv(&mut self) -> Option<Delivery<T>> {
        self.core.recv()
    }

    /// The next delivery if there is one now.
    pub fn try_recv(&mut self) -> Option<Delivery<T>> {
        self.core.try_recv()
    }

    /// The service holds everything up to [`Delivery::Sealed`]`(checkpoint)`
    /// durably: the checkpoint may complete. Ignored for a seal of a run
    /// that has been replaced since (after [`Delivery::Restored`]).
    pub fn acknowledge(&self, checkpoint: u64) {
        self.core.acknowledge(checkpoint);
    }
}

/// The service's end of an [`egress_committed`]: each record once its
/// checkpoint has completed.
pub struct CommittedReceiver<T> {
    epochs: EpochReceiver<T>,
    /// Records of the epoch not sealed yet.
    open: Vec<Record<T>>,
    /// Sealed epochs waiting for their commit, oldest first.
    sealed: VecDeque<(u64, Vec<Record<T>>)>,
    ready: VecDeque<Record<T>>,
}

impl<T: Send + 'static> CommittedReceiver<T> {
    /// Waits (parked) for the next committed record; `None` once the job has
    /// finished and everything committed was received.
    pub fn recv(&mut self) -> Option<Record<T>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            let delivery = self.epochs.recv()?;
            self.apply(delivery);
        }
    }

    /// A committed record if one is ready now.
    pub fn try_recv(&mut self) -> Option<Record<T>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            let delivery = self.epochs.try_recv()?;
            self.apply(delivery);
        }
    }

    fn apply(&mut self, delivery: Delivery<T>) {
        match delivery {
            Delivery::Record(r) => self.open.push(r),
            Delivery::Sealed(n) => {
                self.sealed.push_back((n, std::mem::take(&mut self.open)));
                // Held in memory: the checkpoint may complete at once.
                self.epochs.acknowledge(n);
            }
            Delivery::Committed(n) => self.release(n),
            Delivery::Restored(r) => {
                self.release(r.unwrap_or(0));
                self.sealed.clear();
                self.open.clear();
            }
        }
    }

    fn release(&mut self, upto: u64) {
        while self.sealed.front().is_some_and(|(n, _)| *n <= upto) {
            let (_, records) = self.sealed.pop_front().expect("checked");
            self.ready.extend(records);
        }
    }
}

impl<T: Send + 'static> Iterator for CommittedReceiver<T> {
    type Item = Record<T>;
    fn next(&mut self) -> Option<Record<T>> {
        self.recv()
    }
}
