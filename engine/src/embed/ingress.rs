//! Acknowledged ingress: positions, per-split progress in the checkpoints,
//! durability and rewinds (see the module above for the contract).
//!
//! Invariants:
//! 1. Position `p` goes to split `p mod S` and only to the subtask owning
//!    that split in the current run; each split consumes its positions in
//!    increasing order, one `S` apart, so "the next position a split
//!    expects" is its whole progress.
//! 2. `durable` only grows within a run, and every position below it was
//!    consumed before a completed checkpoint's cut.
//! 3. The handle pushes into the rings of one run only; when a newer run has
//!    registered all its sources (it is then kept in `Runs::ready`, which
//!    the opening of yet another run leaves alone) the handle takes that
//!    run's rings, and rewinds to the least position a split of that run
//!    expects if it had pushed beyond.

use super::RECHECK;
use crate::park::{Notifier, ThreadWaiter};
use crate::ring::{ring, Consumer, Producer};
use crate::source::{Source, SourceContext, SourcePoll};
use crate::SourceError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A record's place in an ingress: 0 for the first record pushed, one more
/// for each next record.
pub type Position = u64;

/// No end of input yet.
const OPEN: u64 = u64::MAX;

/// The sources of the run being opened.
struct RunState<T> {
    run: Option<u64>,
    /// Sources of this run that opened (and so made their ring).
    producers: Vec<Option<Producer<(Position, T)>>>,
    notifiers: Vec<Option<Notifier>>,
    /// Sources that registered the positions they start from.
    registered: usize,
    /// Owning subtask of every split.
    owners: Vec<u32>,
    /// Per split, the position it expects first in this run.
    start: Vec<Position>,
}

/// The newest run whose sources all registered, until the handle takes it
/// (a newer run being opened does not touch it).
struct ReadyRun<T> {
    generation: u64,
    producers: Vec<Producer<(Position, T)>>,
    notifiers: Vec<Notifier>,
    owners: Vec<u32>,
    /// The least position a split of the run expects.
    from: Position,
}

struct Runs<T> {
    opening: RunState<T>,
    ready: Option<ReadyRun<T>>,
}

struct IngressShared<T> {
    parallelism: usize,
    capacity: usize,
    state: Mutex<Runs<T>>,
    /// Bumped when a run has registered every source (0: none yet); the
    /// run is then in `Runs::ready`.
    generation: AtomicU64,
    /// Per split, the next position a completed checkpoint expects.
    durable_splits: Mutex<Vec<Position>>,
    /// The least of `durable_splits`.
    durable: AtomicU64,
    /// Where the input ends ([`OPEN`] until the handle closes it).
    end: AtomicU64,
    handle_gone: AtomicBool,
    sources_gone: AtomicBool,
    /// The service thread pushing (waiting for space, a run or durability).
    waiter: ThreadWaiter,
}

/// Creates an ingress for a job of `parallelism` subtasks, with a ring of
/// `capacity` records per subtask: the [`IngressHandle`] pushes from one
/// thread of the service, [`IngressSources::take`] gives each subtask its
/// source (in the job's build closure, every run).
pub fn ingress<T: Send + 'static>(
    parallelism: usize,
    capacity: usize,
) -> (IngressHandle<T>, IngressSources<T>) {
    assert!(parallelism > 0, "an ingress needs a subtask");
    let shared = Arc::new(IngressShared {
        parallelism,
        capacity,
        state: Mutex::new(Runs {
            opening: RunState {
                run: None,
                producers: Vec::new(),
                notifiers: Vec::new(),
                registered: 0,
                owners: Vec::new(),
                start: Vec::new(),
            },
            ready: None,
        }),
        generation: AtomicU64::new(0),
        durable_splits: Mutex::new(Vec::new()),
        durable: AtomicU64::new(0),
        end: AtomicU64::new(OPEN),
        handle_gone: AtomicBool::new(false),
        sources_gone: AtomicBool::new(false),
        waiter: ThreadWaiter::default(),
    });
    (
        IngressHandle {
            shared: shared.clone(),
            generation: 0,
            producers: Vec::new(),
            notifiers: Vec::new(),
            owners: Vec::new(),
            next: 0,
        },
        IngressSources { shared },
    )
}

/// Why a push did not take its record (the record comes back).
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The job restored a checkpoint: push again from `from`, in the same
    /// order (this record was at [`IngressHandle::next_position`] before the
    /// rewind, so it comes again in its turn).
    Rewind {
        /// The position to push next.
        from: Position,
        /// The record that was not taken.
        value: T,
    },
    /// The ring of the subtask owning this position is full, or no run has
    /// opened its sources yet ([`IngressHandle::try_push`] only).
    Full(T),
    /// The job has ended, or the input was closed before this position.
    Closed(T),
}

/// Pushes records into a running job, from one thread of the service.
pub struct IngressHandle<T> {
    shared: Arc<IngressShared<T>>,
    generation: u64,
    producers: Vec<Producer<(Position, T)>>,
    notifiers: Vec<Notifier>,
    owners: Vec<u32>,
    next: Position,
}

impl<T: Send + 'static> IngressHandle<T> {
    /// The position the next pushed record gets.
    pub fn next_position(&self) -> Position {
        self.next
    }

    /// Every position below this one is covered by a completed checkpoint:
    /// the service may forget those records.
    pub fn durable(&self) -> Position {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Waits until the job's current run has opened its sources and returns
    /// the position it expects next (what a service resuming a checkpoint in
    /// a new process pushes from); `None` once the job has ended.
    pub fn resume_position(&mut self) -> Option<Position> {
        let shared = self.shared.clone();
        shared.waiter.wait_for(RECHECK, || {
            (shared.generation.load(Ordering::Acquire) != 0 || self.job_ended()).then_some(())
        });
        if self.job_ended() {
            return None;
        }
        if let Some(from) = self.adopt_run() {
            self.next = from;
        }
        Some(self.next)
    }

    /// Pushes `value` at [`next_position`](Self::next_position), waiting
    /// (parked, not spinning) while its subtask's ring is full and, before
    /// the first run, until the job's sources are open.
    pub fn push(&mut self, mut value: T) -> Result<Position, PushError<T>> {
        loop {
            match self.try_push(value) {
                Err(PushError::Full(v)) => value = v,
                other => return other,
            }
            let shared = self.shared.clone();
            shared.waiter.wait_for(RECHECK, || {
                if self.run_changed() || self.job_ended() {
                    return Some(());
                }
                if self.producers.is_empty() {
                    return None; // no run has opened its sources yet
                }
                let owner = self.owner_of(self.next);
                (self.producers[owner].free_slots() > 0).then_some(())
            });
        }
    }

    /// Pushes `value` if its subtask's ring has room now.
    pub fn try_push(&mut self, value: T) -> Result<Position, PushError<T>> {
        if self.run_changed() {
            if let Some(from) = self.adopt_run().filter(|&from| from != self.next) {
                self.next = from;
                return Err(PushError::Rewind { from, value });
            }
        }
        if self.job_ended() {
            return Err(PushError::Closed(value));
        }
        if self.producers.is_empty() {
            return Err(PushError::Full(value)); // no run has opened its sources yet
        }
        if self.next >= self.shared.end.load(Ordering::Acquire) {
            return Err(PushError::Closed(value));
        }
        let position = self.next;
        let owner = self.owner_of(position);
        match self.producers[owner].try_push((position, value)) {
            Ok(()) => {
                self.notifiers[owner].notify();
                self.next += 1;
                Ok(position)
            }
            Err((_, value)) => Err(PushError::Full(value)),
        }
    }

    /// Ends the input at [`next_position`](Self::next_position): the job
    /// finishes once everything below it is consumed. Keep the handle until
    /// the job has finished: a restart after the close still rewinds it
    /// ([`wait_rewind`](Self::wait_rewind)).
    pub fn close(&mut self) {
        self.shared.end.store(self.next, Ordering::Release);
        self.notify_all();
    }

    /// After [`close`](Self::close): waits until either a run restored a
    /// checkpoint that needs records again (returns the position to push
    /// from, up to the end) or the job has ended (`None`).
    pub fn wait_rewind(&mut self) -> Option<Position> {
        loop {
            let shared = self.shared.clone();
            shared.waiter.wait_for(RECHECK, || {
                (self.run_changed() || self.job_ended()).then_some(())
            });
            if let Some(from) = self.poll_rewind() {
                return Some(from);
            }
            if self.job_ended() {
                return None;
            }
        }
    }

    /// If a run restored a checkpoint that needs records before
    /// [`next_position`](Self::next_position) again, moves there and returns
    /// it (what the next push would say with [`PushError::Rewind`]).
    pub fn poll_rewind(&mut self) -> Option<Position> {
        if !self.run_changed() {
            return None;
        }
        let from = self.adopt_run().filter(|&from| from != self.next)?;
        self.next = from;
        Some(from)
    }

    /// Whether the job has ended (no run will take records any more).
    pub fn job_ended(&self) -> bool {
        self.shared.sources_gone.load(Ordering::Acquire)
    }

    /// Waits until the durable position passes `position`, the job
    /// restored a checkpoint (the next push rewinds), or the job ended;
    /// returns the durable position.
    pub fn wait_durable(&mut self, position: Position) -> Position {
        let shared = self.shared.clone();
        shared.waiter.wait_for(RECHECK, || {
            let durable = shared.durable.load(Ordering::Acquire);
            (durable > position || self.run_changed() || self.job_ended()).then_some(durable)
        })
    }

    fn owner_of(&self, position: Position) -> usize {
        self.owners[(position % self.owners.len() as u64) as usize] as usize
    }

    fn run_changed(&self) -> bool {
        let generation = self.shared.generation.load(Ordering::Acquire);
        generation != 0 && generation != self.generation
    }

    /// Takes the rings of the newest run whose sources all registered;
    /// returns the least position one of its splits expects (`None`: no
    /// run newer than the one it has).
    fn adopt_run(&mut self) -> Option<Position> {
        let mut runs = self.shared.state.lock().expect("ingress lock");
        let ready = runs.ready.take()?;
        self.generation = ready.generation;
        self.producers = ready.producers;
        self.notifiers = ready.notifiers;
        self.owners = ready.owners;
        Some(ready.from)
    }

    /// Wakes every source that may wait for the end of input: the adopted
    /// run's and the one being opened.
    fn notify_all(&self) {
        for n in &self.notifiers {
            n.notify();
        }
        let runs = self.shared.state.lock().expect("ingress lock");
        for n in runs.opening.notifiers.iter().flatten() {
            n.notify();
        }
    }
}

impl<T> Drop for IngressHandle<T> {
    fn drop(&mut self) {
        let _ =
            self.shared
                .end
                .compare_exchange(OPEN, self.next, Ordering::AcqRel, Ordering::Acquire);
        self.shared.handle_gone.store(true, Ordering::Release);
        if let Ok(runs) = self.shared.state.lock() {
            for n in self
                .notifiers
                .iter()
                .chain(runs.opening.notifiers.iter().flatten())
            {
                n.notify();
            }
        }
    }
}

/// The source side of an [`ingress`]; `Send + Sync`, for the build closure.
pub struct IngressSources<T> {
    shared: Arc<IngressShared<T>>,
}

impl<T: Send + 'static> IngressSources<T> {
    /// The source of subtask `subtask` for the run being built.
    pub fn take(&self, subtask: usize) -> IngressSource<T> {
        assert!(
            subtask < self.shared.parallelism,
            "subtask {subtask} out of range"
        );
        IngressSource {
            shared: self.shared.clone(),
            consumer: None,
            first_split: 0,
            split_count: 0,
            next: Vec::new(),
            restored: false,
            registered: false,
        }
    }
}

impl<T> Drop for IngressSources<T> {
    fn drop(&mut self) {
        // The job is over: no run will open sources again.
        self.shared.sources_gone.store(true, Ordering::Release);
        self.shared.waiter.wake();
    }
}

/// One subtask's ingress source: a split source whose splits are positions
/// modulo the split count.
pub struct IngressSource<T> {
    shared: Arc<IngressShared<T>>,
    consumer: Option<Consumer<(Position, T)>>,
    first_split: u32,
    split_count: u32,
    /// Per owned split (from `first_split`), the next position it expects.
    next: Vec<Position>,
    restored: bool,
    registered: bool,
}

impl<T: Send + 'static> IngressSource<T> {
    /// Publishes the positions this run starts from; the last source to do
    /// so makes the run the one the handle pushes to.
    fn register(&mut self) {
        let shared = &self.shared;
        let mut runs = shared.state.lock().expect("ingress lock");
        let state = &mut runs.opening;
        for (i, &next) in self.next.iter().enumerate() {
            state.start[self.first_split as usize + i] = next;
        }
        if self.restored {
            // What a restore starts from was covered by a completed checkpoint.
            let mut durable = shared.durable_splits.lock().expect("ingress lock");
            publish_durable(
                shared,
                &mut durable,
                self.split_count,
                self.first_split,
                &self.next,
            );
        }
        state.registered += 1;
        if state.registered == shared.parallelism {
            let generation = shared.generation.load(Ordering::Acquire) + 1;
            let ready = ReadyRun {
                generation,
                producers: state
                    .producers
                    .iter_mut()
                    .map(|p| p.take().expect("a registered source made its ring"))
                    .collect(),
                notifiers: state.notifiers.iter().flatten().cloned().collect(),
                owners: state.owners.clone(),
                from: state.start.iter().copied().min().unwrap_or(0),
            };
            runs.ready = Some(ready);
            shared.generation.store(generation, Ordering::Release);
            shared.waiter.wake();
        }
        self.registered = true;
    }

    fn all_consumed(&self, end: Position) -> bool {
        end != OPEN && self.next.iter().all(|&n| n >= end)
    }
}

/// Raises the durable positions of splits `first..` to `next` and the
/// ingress's least durable position with them.
fn publish_durable<T>(
    shared: &IngressShared<T>,
    durable: &mut Vec<Position>,
    split_count: u32,
    first: u32,
    next: &[Position],
) {
    if durable.len() != split_count as usize {
        *durable = (0..u64::from(split_count)).collect();
    }
    for (i, &n) in next.iter().enumerate() {
        let d = &mut durable[first as usize + i];
        *d = (*d).max(n);
    }
    let least = durable.iter().copied().min().unwrap_or(0);
    shared.durable.fetch_max(least, Ordering::AcqRel);
    shared.waiter.wake();
}

impl<T: Send + 'static> Source<T> for IngressSource<T> {
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        let shared = &self.shared;
        if context.parallelism != shared.parallelism {
            return Err(SourceError::Other(format!(
                "the ingress was made for {} subtasks, the job runs {}",
                shared.parallelism, context.parallelism
            )));
        }
        let (producer, consumer) = ring(shared.capacity);
        let mut runs = shared.state.lock().expect("ingress lock");
        let state = &mut runs.opening;
        if state.run != Some(context.run) {
            // The first source of a new run: the old run's rings are dead.
            let splits = context.split_count as usize;
            *state = RunState {
                run: Some(context.run),
                producers: (0..shared.parallelism).map(|_| None).collect(),
                notifiers: (0..shared.parallelism).map(|_| None).collect(),
                registered: 0,
                owners: vec![0; splits],
                start: (0..splits as u64).collect(),
            };
        }
        state.producers[context.subtask] = Some(producer);
        state.notifiers[context.subtask] = Some(context.notifier.clone());
        for split in context.splits.clone() {
            state.owners[split as usize] = context.subtask as u32;
        }
        self.consumer = Some(consumer);
        self.first_split = context.splits.start;
        self.split_count = context.split_count;
        self.next = context.splits.clone().map(u64::from).collect();
        self.restored = context.restored_checkpoint.is_some();
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, SourceError> {
        if !self.registered {
            self.register();
        }
        let split_count = u64::from(self.split_count);
        let consumer = self.consumer.as_mut().expect("polled after open");
        let mut popped = false;
        let mut produced = 0;
        while produced < max {
            let Some((position, value)) = consumer.pop() else {
                break;
            };
            popped = true;
            let split = position % split_count;
            let Some(expected) = split
                .checked_sub(u64::from(self.first_split))
                .and_then(|i| self.next.get_mut(i as usize))
            else {
                return Err(SourceError::Other(format!(
                    "ingress position {position} (split {split}) reached a subtask that does not own it"
                )));
            };
            if position < *expected {
                continue; // a replay of what this split already consumed
            }
            if position > *expected {
                return Err(SourceError::Other(format!(
                    "ingress position {position} arrived before position {} of split {split}: \
                     records were pushed out of order or skipped after a rewind",
                    *expected
                )));
            }
            *expected += split_count;
            out.push(value);
            produced += 1;
        }
        if popped {
            self.shared.waiter.wake();
        }
        if self.all_consumed(self.shared.end.load(Ordering::Acquire)) {
            return Ok(SourcePoll::Finished);
        }
        if produced == max {
            return Ok(SourcePoll::Ready);
        }
        let consumer = self.consumer.as_mut().expect("polled after open");
        if self.shared.handle_gone.load(Ordering::Acquire) && !consumer.has_message() {
            let least = self.next.iter().copied().min().unwrap_or(0);
            return Err(SourceError::Other(format!(
                "the ingress handle was dropped, but this run needs its records from position \
                 {least} again (a restore rewound it): keep the handle until the job has finished"
            )));
        }
        Ok(SourcePoll::Pending)
    }

    fn is_ready(&mut self) -> bool {
        let end = self.shared.end.load(Ordering::Acquire);
        self.consumer.as_mut().is_some_and(|c| c.has_message())
            || self.all_consumed(end)
            || self.shared.handle_gone.load(Ordering::Acquire)
    }

    fn offset(&self) -> u64 {
        self.next.iter().copied().min().unwrap_or(0)
    }

    fn seek(&mut self, _offset: u64) -> Result<(), SourceError> {
        Err(SourceError::Other(
            "an ingress restores per split (checkpoints record its splits)".into(),
        ))
    }

    fn split_offsets(&self) -> Option<Vec<(u32, u64)>> {
        Some(
            self.next
                .iter()
                .enumerate()
                .map(|(i, &next)| (self.first_split + i as u32, next))
                .collect(),
        )
    }

    fn seek_splits(&mut self, offsets: &[(u32, u64)]) -> Result<(), SourceError> {
        for &(split, position) in offsets {
            let i = split
                .checked_sub(self.first_split)
                .filter(|&i| (i as usize) < self.next.len())
                .ok_or_else(|| {
                    SourceError::Other(format!("split {split} is not this subtask's"))
                })?;
            if position % u64::from(self.split_count) != u64::from(split) {
                return Err(SourceError::Other(format!(
                    "checkpointed ingress position {position} is not of split {split} \
                     (the checkpoint was taken with another max parallelism)"
                )));
            }
            self.next[i as usize] = position;
        }
        Ok(())
    }

    fn checkpoint_complete(
        &mut self,
        _checkpoint_id: u64,
        positions: &[(u32, u64)],
    ) -> Result<(), SourceError> {
        let Some(first) = positions.iter().map(|&(s, _)| s).min() else {
            return Ok(());
        };
        debug_assert!(positions.windows(2).all(|w| w[1].0 == w[0].0 + 1));
        let next: Vec<Position> = positions.iter().map(|&(_, p)| p).collect();
        let mut durable = self.shared.durable_splits.lock().expect("ingress lock");
        publish_durable(&self.shared, &mut durable, self.split_count, first, &next);
        Ok(())
    }
}
