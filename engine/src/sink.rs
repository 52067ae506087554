//! Sinks: where records leave the job.
//!
//! A [`Sink`] subtask takes every batch it is given. A sink whose consumer can
//! fall behind (the egress to another thread) holds the batch back and reports
//! itself blocked: the subtask then stops pulling the inputs that feed it
//! (backpressure), so nothing is dropped and memory stays bounded.
//! Built-ins: [`DiscardSink`], [`CollectSink`] (gathers values for the caller
//! at end of input) and [`egress`] (a bounded ring per subtask to a consumer
//! thread).

use crate::dataflow::Record;
use crate::park::Notifier;
use crate::ring::{ring, Consumer, Producer};
use crate::SinkError;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a sink subtask knows about itself.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// This subtask's index.
    pub subtask: usize,
    /// Number of sink subtasks.
    pub parallelism: usize,
    /// Wakes this subtask when it is parked (for sinks drained by other threads).
    pub notifier: Notifier,
}

/// A sink subtask.
pub trait Sink<T>: 'static {
    /// Called once when the job is built on the subtask.
    fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        let _ = context;
        Ok(())
    }

    /// Takes the whole batch (the caller clears it afterwards). A sink that
    /// cannot pass it on now keeps it and reports [`is_blocked`](Self::is_blocked).
    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError>;

    /// End of input: flush everything.
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Whether the sink holds records back (its inputs must pause).
    fn is_blocked(&self) -> bool {
        false
    }

    /// Whether [`drain`](Self::drain) would pass held-back records on now.
    fn can_drain(&mut self) -> bool {
        false
    }

    /// Passes held-back records on as far as possible; returns whether any moved.
    fn drain(&mut self) -> Result<bool, SinkError> {
        Ok(false)
    }
}

/// Drops every record, counting them.
#[derive(Clone, Debug, Default)]
pub struct DiscardSink {
    count: Arc<AtomicU64>,
}

impl DiscardSink {
    /// A sink whose count is readable through [`DiscardSink::counter`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink adding to a shared counter.
    pub fn counting(count: Arc<AtomicU64>) -> Self {
        Self { count }
    }

    /// The shared count of discarded records.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }
}

impl<T> Sink<T> for DiscardSink {
    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
        Ok(())
    }
}

/// Collects the values of every subtask for the caller (tests, small jobs).
/// Each subtask keeps its records locally and hands them over at end of input.
pub struct Collector<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Collector<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Collector<T> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }
}

impl<T: Send + 'static> Collector<T> {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink subtask feeding this collector.
    pub fn sink(&self) -> CollectSink<T> {
        CollectSink {
            local: Vec::new(),
            into: self.clone(),
        }
    }

    /// Takes everything collected so far.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().expect("collector lock"))
    }
}

/// The sink subtask of a [`Collector`].
pub struct CollectSink<T> {
    local: Vec<T>,
    into: Collector<T>,
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        self.local.extend(batch.drain(..).map(|r| r.value));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.into
            .0
            .lock()
            .map_err(|_| SinkError::Other("collector lock poisoned".into()))?
            .append(&mut self.local);
        Ok(())
    }
}

/// Per-subtask ring producers, taken once each.
type Slots<T> = Mutex<Vec<Option<Producer<Vec<Record<T>>>>>>;

struct EgressShared<T> {
    consumers: Slots<T>,
    notifiers: Vec<std::sync::OnceLock<Notifier>>,
}

/// Creates an egress: each of `parallelism` sink subtasks sends batches to
/// one consumer thread through a ring of `capacity` batches. When the
/// consumer falls behind, the sinks block and the job slows down to its pace.
pub fn egress<T: Send + 'static>(
    parallelism: usize,
    capacity: usize,
) -> (EgressSinks<T>, EgressReceiver<T>) {
    let (producers, consumers): (Vec<_>, Vec<_>) = (0..parallelism).map(|_| ring(capacity)).unzip();
    let shared = Arc::new(EgressShared {
        consumers: Mutex::new(producers.into_iter().map(Some).collect()),
        notifiers: (0..parallelism)
            .map(|_| std::sync::OnceLock::new())
            .collect(),
    });
    (
        EgressSinks {
            shared: shared.clone(),
        },
        EgressReceiver {
            consumers,
            shared,
            next: 0,
            current: VecDeque::new(),
        },
    )
}

/// The sink side of an [`egress`]; `Send + Sync` for the build closure.
pub struct EgressSinks<T> {
    shared: Arc<EgressShared<T>>,
}

impl<T: Send + 'static> EgressSinks<T> {
    /// The sink of subtask `subtask`. Panics if taken twice.
    pub fn take(&self, subtask: usize) -> EgressSink<T> {
        let producer = self.shared.consumers.lock().expect("egress lock")[subtask]
            .take()
            .expect("each egress subtask sink is taken once");
        EgressSink {
            producer,
            pending: VecDeque::new(),
            shared: self.shared.clone(),
        }
    }
}

/// One subtask's egress sink.
pub struct EgressSink<T> {
    producer: Producer<Vec<Record<T>>>,
    pending: VecDeque<Vec<Record<T>>>,
    shared: Arc<EgressShared<T>>,
}

impl<T: Send + 'static> Sink<T> for EgressSink<T> {
    fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        // The receiver wakes this subtask through it after freeing space.
        let _ = self.shared.notifiers[context.subtask].set(context.notifier.clone());
        Ok(())
    }

    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(batch);
        if self.pending.is_empty() {
            if let Err(batch) = self.producer.try_push(batch) {
                self.pending.push_back(batch);
            }
        } else {
            self.pending.push_back(batch);
        }
        Ok(())
    }

    fn is_blocked(&self) -> bool {
        !self.pending.is_empty()
    }

    fn can_drain(&mut self) -> bool {
        !self.pending.is_empty() && self.producer.free_slots() > 0
    }

    fn drain(&mut self) -> Result<bool, SinkError> {
        let mut moved = false;
        while let Some(batch) = self.pending.pop_front() {
            if let Err(batch) = self.producer.try_push(batch) {
                self.pending.push_front(batch);
                break;
            }
            moved = true;
        }
        Ok(moved)
    }
}

/// The consumer of an [`egress`], on a thread of the embedding service.
pub struct EgressReceiver<T> {
    consumers: Vec<Consumer<Vec<Record<T>>>>,
    shared: Arc<EgressShared<T>>,
    next: usize,
    current: VecDeque<Record<T>>,
}

impl<T: Send + 'static> EgressReceiver<T> {
    /// Takes a record if one is ready.
    pub fn try_recv(&mut self) -> Option<Record<T>> {
        if let Some(r) = self.current.pop_front() {
            return Some(r);
        }
        for _ in 0..self.consumers.len() {
            let i = self.next;
            self.next = (self.next + 1) % self.consumers.len();
            if let Some(batch) = self.consumers[i].pop() {
                if let Some(n) = self.shared.notifiers[i].get() {
                    n.notify();
                }
                self.current.extend(batch);
                return self.current.pop_front();
            }
        }
        None
    }

    /// Waits (yielding this thread) for the next record; `None` once every
    /// sink subtask is gone and everything was received.
    pub fn recv(&mut self) -> Option<Record<T>> {
        loop {
            if let Some(r) = self.try_recv() {
                return Some(r);
            }
            if self.consumers.iter().all(|c| c.is_closed()) {
                return self.try_recv();
            }
            std::thread::yield_now();
        }
    }
}

impl<T: Send + 'static> Iterator for EgressReceiver<T> {
    type Item = Record<T>;
    fn next(&mut self) -> Option<Record<T>> {
        self.recv()
    }
}
