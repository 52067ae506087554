//! Live figures that the data path publishes for a job's monitor: per
//! operator and subtask (records in and out, watermark, timers, keyed state)
//! and per exchange and sending subtask (records sent, time backpressured,
//! the fill level of its rings).
//!
//! Owns [`MetricsRegistry`] and the cells in it. Every cell has one writer,
//! the subtask that owns it, which publishes with plain `Relaxed` loads and
//! stores once per batch, per step or per second, never per record: no
//! locks, no read-modify-write instructions, no allocation on the data path.
//! The registry's lock is taken when an operator registers (while a subtask
//! is built) and when the monitor reads a [`MetricsSnapshot`]. The registry
//! belongs to the job, not to a run: a restarted run registers the same
//! names and continues the same counters, so they never go backwards.
//!
//! Must not know about the monitor's server, HTTP or Prometheus.

use crate::ring::Occupancy;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// A figure with a single writer: the subtask that owns it.
#[derive(Debug, Default)]
pub(crate) struct Cell(AtomicU64);

impl Cell {
    /// Adds `n` (the owning subtask only: a load and a store, no lock prefix).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub(crate) fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Microseconds on a monotonic clock that starts with the process (at 1, so
/// that 0 can mean "not set").
pub(crate) fn monotonic_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// What kind of named operator a figure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OperatorKind {
    /// A source: records out, the watermark it emits.
    Source,
    /// A keyed operator (process, window, join): records in and out, the
    /// watermark of its inputs, timers and keyed state.
    Keyed,
    /// A sink: records in.
    Sink,
}

impl OperatorKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            OperatorKind::Source => "source",
            OperatorKind::Keyed => "keyed",
            OperatorKind::Sink => "sink",
        }
    }
}

/// One operator on one subtask.
#[derive(Debug, Default)]
pub(crate) struct OperatorMetrics {
    pub records_in: Cell,
    pub records_out: Cell,
    /// Event time (ms) of the operator's watermark; 0 before the first.
    pub watermark_ms: Cell,
    /// Timers pending (event and processing time).
    pub timers: Cell,
    /// Keys in the operator's keyed state (summed over its states), sampled
    /// about once a second.
    pub state_keys: Cell,
    /// Estimated in-memory bytes of those entries (keys times entry size).
    pub state_bytes: Cell,
    /// Values of keyed state kept at a checkpoint's cut per entry, because
    /// the checkpoint writer was behind (copy-on-write per entry), summed
    /// over the job's runs; sampled about once a second.
    pub values_kept: Cell,
}

/// One exchange (named by the keyed operator and input it feeds) on one
/// sending subtask.
#[derive(Debug, Default)]
pub(crate) struct ExchangeMetrics {
    pub records_sent: Cell,
    /// The time the sender held its chain back (a ring was full), in one
    /// word so that a reader sees a closed total and an open period that
    /// agree (two cells, read while the writer closes a period, could count
    /// it twice and then go backwards). Not blocked: the total of closed
    /// periods (µs). Blocked since `s` ([`monotonic_us`]): [`BLOCKED`] set
    /// and the low bits `total - s` modulo 2^63, so that adding the time
    /// now gives the total including the open period.
    backpressure: AtomicU64,
}

/// The flag of [`ExchangeMetrics::backpressure`]: held back now.
const BLOCKED: u64 = 1 << 63;
/// The low bits of [`ExchangeMetrics::backpressure`].
const LOW: u64 = BLOCKED - 1;

impl ExchangeMetrics {
    /// Records whether the sender holds its chain back now (called after
    /// every batch, flush and drain; a transition costs a clock read). The
    /// owning subtask only: a load and a store, no read-modify-write.
    #[inline]
    pub(crate) fn blocked(&self, blocked: bool) {
        let v = self.backpressure.load(Ordering::Relaxed);
        let was = v & BLOCKED != 0;
        if blocked && !was {
            let open = v.wrapping_sub(monotonic_us()) & LOW;
            self.backpressure.store(BLOCKED | open, Ordering::Release);
        } else if !blocked && was {
            let closed = v.wrapping_add(monotonic_us()) & LOW;
            self.backpressure.store(closed, Ordering::Release);
        }
    }

    /// Time held back so far (µs, including the open period) and whether
    /// the sender is held back now. A closed total and an open period that
    /// agree; an open period extrapolated to the clock now may exceed, by
    /// the time a store takes to be seen, the period as the writer closes it
    /// (the registry's snapshot keeps its readings from going back).
    pub(crate) fn backpressure(&self) -> (u64, bool) {
        let v = self.backpressure.load(Ordering::Acquire);
        if v & BLOCKED == 0 {
            return (v, false);
        }
        // The clock is read after the word: the period began before now.
        (v.wrapping_add(monotonic_us()) & LOW, true)
    }
}

struct OperatorEntry {
    name: Arc<str>,
    kind: OperatorKind,
    subtask: usize,
    metrics: Arc<OperatorMetrics>,
}

struct ExchangeEntry {
    operator: Arc<str>,
    input: u32,
    subtask: usize,
    metrics: Arc<ExchangeMetrics>,
    /// The current run's rings from this subtask, by receiving subtask.
    rings: Vec<Occupancy>,
    ring_capacity: u64,
    /// The backpressured time last read (µs). A reading extrapolates an
    /// open period to the reader's clock, which may be past the time the
    /// writer closes it at; later readings report at least this much.
    reported_us: u64,
}

/// Every figure of a job, across its runs.
#[derive(Default)]
pub(crate) struct MetricsRegistry {
    operators: Mutex<Vec<OperatorEntry>>,
    exchanges: Mutex<Vec<ExchangeEntry>>,
}

/// An operator's figures at one moment.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OperatorSample {
    pub name: Arc<str>,
    pub kind: OperatorKind,
    pub subtask: usize,
    pub records_in: u64,
    pub records_out: u64,
    pub watermark_ms: u64,
    pub timers: u64,
    pub state_keys: u64,
    pub state_bytes: u64,
    pub values_kept: u64,
}

/// An exchange's figures on one sending subtask at one moment.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExchangeSample {
    pub operator: Arc<str>,
    pub input: u32,
    pub subtask: usize,
    pub records_sent: u64,
    /// Including the current period, if the sender is held back now.
    pub backpressured_us: u64,
    pub backpressured_now: bool,
    /// Batches in each ring to a receiving subtask (index), and the capacity.
    pub ring_batches: Vec<u64>,
    pub ring_capacity: u64,
}

/// The figures of every operator and exchange at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct MetricsSnapshot {
    pub operators: Vec<OperatorSample>,
    pub exchanges: Vec<ExchangeSample>,
}

impl MetricsRegistry {
    /// The cells of operator `name` on `subtask` (the same ones on every run).
    pub(crate) fn operator(
        &self,
        name: &str,
        kind: OperatorKind,
        subtask: usize,
    ) -> Arc<OperatorMetrics> {
        let mut operators = self.operators.lock().expect("metrics lock");
        if let Some(e) = operators
            .iter()
            .find(|e| &*e.name == name && e.subtask == subtask)
        {
            return e.metrics.clone();
        }
        let metrics = Arc::new(OperatorMetrics::default());
        operators.push(OperatorEntry {
            name: name.into(),
            kind,
            subtask,
            metrics: metrics.clone(),
        });
        metrics
    }

    /// The cells of the exchange into `operator`'s `input` on sending
    /// `subtask`; `rings` are this run's rings to every receiver.
    pub(crate) fn exchange(
        &self,
        operator: &str,
        input: u32,
        subtask: usize,
        rings: Vec<Occupancy>,
        ring_capacity: u64,
    ) -> Arc<ExchangeMetrics> {
        let mut exchanges = self.exchanges.lock().expect("metrics lock");
        if let Some(e) = exchanges
            .iter_mut()
            .find(|e| &*e.operator == operator && e.input == input && e.subtask == subtask)
        {
            e.rings = rings;
            e.ring_capacity = ring_capacity;
            // A new run starts unblocked: close the old run's open period.
            e.metrics.blocked(false);
            return e.metrics.clone();
        }
        let metrics = Arc::new(ExchangeMetrics::default());
        exchanges.push(ExchangeEntry {
            operator: operator.into(),
            input,
            subtask,
            metrics: metrics.clone(),
            rings,
            ring_capacity,
            reported_us: 0,
        });
        metrics
    }

    /// Reads every figure (the monitor's thread; never the data path).
    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let operators = self
            .operators
            .lock()
            .map(|ops| {
                ops.iter()
                    .map(|e| OperatorSample {
                        name: e.name.clone(),
                        kind: e.kind,
                        subtask: e.subtask,
                        records_in: e.metrics.records_in.get(),
                        records_out: e.metrics.records_out.get(),
                        watermark_ms: e.metrics.watermark_ms.get(),
                        timers: e.metrics.timers.get(),
                        state_keys: e.metrics.state_keys.get(),
                        state_bytes: e.metrics.state_bytes.get(),
                        values_kept: e.metrics.values_kept.get(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let exchanges = self
            .exchanges
            .lock()
            .map(|mut exs| {
                exs.iter_mut()
                    .map(|e| {
                        let (read_us, backpressured_now) = e.metrics.backpressure();
                        let backpressured_us = read_us.max(e.reported_us);
                        e.reported_us = backpressured_us;
                        ExchangeSample {
                            operator: e.operator.clone(),
                            input: e.input,
                            subtask: e.subtask,
                            records_sent: e.metrics.records_sent.get(),
                            backpressured_us,
                            backpressured_now,
                            ring_batches: e.rings.iter().map(Occupancy::messages).collect(),
                            ring_capacity: e.ring_capacity,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        MetricsSnapshot {
            operators,
            exchanges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_run_continues_the_same_counters() {
        let registry = MetricsRegistry::default();
        let first = registry.operator("count", OperatorKind::Keyed, 1);
        first.records_in.add(5);
        let again = registry.operator("count", OperatorKind::Keyed, 1);
        again.records_in.add(2);
        let other = registry.operator("count", OperatorKind::Keyed, 0);
        other.records_in.add(1);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot.operators.len(), 2);
        assert_eq!(snapshot.operators[0].records_in, 7);
        assert_eq!(snapshot.operators[1].records_in, 1);
    }

    #[test]
    fn backpressure_counts_closed_and_open_periods() {
        let registry = MetricsRegistry::default();
        let e = registry.exchange("join", 0, 0, Vec::new(), 64);
        assert_eq!(e.backpressure(), (0, false));
        e.blocked(true);
        std::thread::sleep(std::time::Duration::from_millis(2));
        e.blocked(false);
        let (closed, now) = e.backpressure();
        assert!(closed >= 2_000 && !now, "{closed}");
        e.blocked(true);
        let s = registry.snapshot();
        assert!(s.exchanges[0].backpressured_now);
        assert!(s.exchanges[0].backpressured_us >= closed);
        // A new run closes the open period.
        registry.exchange("join", 0, 0, Vec::new(), 64);
        let (total, now) = e.backpressure();
        assert!(!now && total >= s.exchanges[0].backpressured_us);
    }

    #[test]
    fn backpressure_never_goes_backwards_while_the_writer_flips() {
        let registry = MetricsRegistry::default();
        let e = registry.exchange("join", 0, 0, Vec::new(), 64);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut blocked = false;
                while !stop.load(Ordering::Relaxed) {
                    blocked = !blocked;
                    e.blocked(blocked);
                }
            })
        };
        let mut last = 0;
        for _ in 0..200_000 {
            let total = registry.snapshot().exchanges[0].backpressured_us;
            assert!(total >= last, "{total} after {last}");
            last = total;
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }
}
