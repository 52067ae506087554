//! The benchmark's sink: records every output row's latency in an HDR histogram
//! and, optionally, writes the rows as JSON lines.
//!
//! **Latency** of an output record, in microseconds, is `now − origin`, where `now`
//! is the job's clock ([`now_us`]: microseconds, monotonic) when the sink
//! receives the record's batch and `origin` is the earliest time the record
//! could have been produced ([`LatencyOrigin`]):
//! - q0–q2 rows carry their bid's [`Origin`](crate::nexmark::model::Origin): the microsecond the bid was due
//!   (the open-loop schedule), exact;
//! - rows emitted by an event-time timer (q4, q5, q7, q8) carry the timer's
//!   time `ts` (window results `end − 1`). The timer fires once every source
//!   has emitted an event with event time `ts + 1` or later; event time is
//!   the schedule rounded to the millisecond, so the first such event is due
//!   at `ts + 0.5 ms` at the earliest: `origin = ts · 1000 + 500` µs (exact to
//!   the schedule's spacing, `1/rate`);
//! - q3 rows (a join, emitted by the second of two events) carry that event's
//!   event time only: `origin = ts · 1000`, exact to ±0.5 ms.
//!
//! At end of input the final watermark closes every open window and auction at
//! once, before its time: such rows arrive before their origin and are counted
//! ([`SinkTotals::rows_before_origin`]) but not recorded as latencies.
//!
//! Latencies are only meaningful in open-loop runs; closed-loop runs do not
//! record them. Each subtask keeps its own histogram and merges it into the
//! shared one once, at end of input.
//!
//! **Output** (`--output DIR`): the rows as JSON lines, one object per row,
//! fields in declaration order, through the engine's transactional
//! [`PartFiles`]: committed files are `DIR/*.jsonl`, pending ones live in
//! `DIR/.pending/`. In a checkpointing run the output is exactly once (two-phase
//! commit with the checkpoints: a resumed or restarted run commits what its
//! restored checkpoint covered and writes the rest again), or at least once
//! with `--at-least-once-output`. Without checkpoints it is committed at end of
//! input.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Serialize;
use spate::sink::{FileSinkMode, PartFiles, Sink, SinkContext};
use spate::{Record, SinkError};

use crate::nexmark::model::Bid;
use crate::nexmark::rows::{Q1Row, Q2Row, Q3Row, Q4Row, Q5Row, Q7Row, Q8Row};

/// Where a result row's latency is measured from (see the module doc).
pub trait LatencyOrigin {
    /// The row's latency origin, epoch µs, given its record's timestamp.
    fn origin_us(&self, ts_ms: u64) -> u64;
}

impl LatencyOrigin for Bid {
    fn origin_us(&self, _: u64) -> u64 {
        self.origin.0
    }
}

impl LatencyOrigin for Q1Row {
    fn origin_us(&self, _: u64) -> u64 {
        self.origin.0
    }
}

impl LatencyOrigin for Q2Row {
    fn origin_us(&self, _: u64) -> u64 {
        self.origin.0
    }
}

impl LatencyOrigin for Q3Row {
    fn origin_us(&self, ts_ms: u64) -> u64 {
        ts_ms.saturating_mul(1000)
    }
}

/// Rows emitted by an event-time timer at `ts`: the first event with event
/// time `ts + 1` was due at `ts + 0.5 ms` at the earliest.
macro_rules! timer_origin {
    ($($row:ty),*) => {$(
        impl LatencyOrigin for $row {
            fn origin_us(&self, ts_ms: u64) -> u64 {
                ts_ms.saturating_mul(1000).saturating_add(500)
            }
        }
    )*};
}
timer_origin!(Q4Row, Q5Row, Q7Row, Q8Row);

/// Significant decimal digits of the latency histograms.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Highest latency the histograms track, µs (one hour); longer ones are recorded
/// as this value.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

/// A fresh latency histogram: 1 µs to [`LATENCY_MAX_US`], 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
        .expect("valid histogram bounds")
}

/// What every subtask's sink adds to at end of input.
#[derive(Clone)]
pub struct SinkTotals {
    /// Merged latency histogram, µs.
    pub latency_us: Arc<Mutex<Histogram<u64>>>,
    /// Number of output rows.
    pub rows: Arc<AtomicU64>,
    /// Rows received before their latency origin (not recorded): window results
    /// and auction closes forced out by the end of input before their time.
    pub rows_before_origin: Arc<AtomicU64>,
}

impl Default for SinkTotals {
    fn default() -> Self {
        Self {
            latency_us: Arc::new(Mutex::new(new_histogram())),
            rows: Arc::new(AtomicU64::new(0)),
            rows_before_origin: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// How the sinks of a run behave.
#[derive(Clone, Debug, Default)]
pub struct SinkOptions {
    /// Record latencies (open loop), from each row's [`LatencyOrigin`].
    pub measure_latency: bool,
    /// Directory of the JSON-lines output, and its guarantee.
    pub output: Option<(PathBuf, FileSinkMode)>,
}

/// One subtask's benchmark sink.
pub struct BenchSink {
    options: SinkOptions,
    totals: SinkTotals,
    histogram: Histogram<u64>,
    rows: u64,
    rows_before_origin: u64,
    files: Option<PartFiles>,
    line: Vec<u8>,
}

impl BenchSink {
    /// A sink adding to `totals` at end of input.
    pub fn new(options: SinkOptions, totals: SinkTotals) -> Self {
        Self {
            options,
            totals,
            histogram: new_histogram(),
            rows: 0,
            rows_before_origin: 0,
            files: None,
            line: Vec::new(),
        }
    }
}

/// Now in microseconds since the Unix epoch, on the engine's
/// [`SystemClock`](spate::time::SystemClock) (monotonic: read once from the
/// wall clock, then advanced by the monotonic clock), the clock the jobs'
/// sources pace by.
pub fn now_us() -> u64 {
    use spate::time::Clock as _;
    spate::time::SystemClock.now_us()
}

impl<T: Serialize + LatencyOrigin + 'static> Sink<T> for BenchSink {
    fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        if let Some((dir, mode)) = &self.options.output {
            let mut files = PartFiles::new(dir, *mode);
            files.open(context)?;
            self.files = Some(files);
        }
        Ok(())
    }

    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        self.rows += batch.len() as u64;
        if self.options.measure_latency {
            let now = now_us();
            for record in batch.iter() {
                match now.checked_sub(record.value.origin_us(record.ts)) {
                    Some(latency) => self.histogram.saturating_record(latency),
                    None => self.rows_before_origin += 1,
                }
            }
        }
        if let Some(files) = &mut self.files {
            self.line.clear();
            for record in batch.iter() {
                serde_json::to_writer(&mut self.line, &record.value)
                    .map_err(|e| SinkError::Other(e.to_string()))?;
                self.line.push(b'\n');
            }
            files.write(&self.line)?;
        }
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Some(files) = &mut self.files {
            files.finish()?;
        }
        self.totals.rows.fetch_add(self.rows, Ordering::Relaxed);
        self.totals
            .rows_before_origin
            .fetch_add(self.rows_before_origin, Ordering::Relaxed);
        self.totals
            .latency_us
            .lock()
            .map_err(|_| SinkError::Other("latency histogram lock poisoned".into()))?
            .add(&self.histogram)
            .map_err(|e| SinkError::Other(format!("merging latency histograms: {e:?}")))?;
        Ok(())
    }

    fn is_transactional(&self) -> bool {
        self.files.as_ref().is_some_and(PartFiles::is_transactional)
    }

    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        match &mut self.files {
            Some(files) => files.pre_commit(checkpoint_id),
            None => Ok(()),
        }
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        match &mut self.files {
            Some(files) => files.commit(checkpoint_id),
            None => Ok(()),
        }
    }
}
