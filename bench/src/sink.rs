//! The benchmark's sink: records every output row's latency in an HDR histogram
//! and, optionally, writes the rows as JSON lines.
//!
//! **Latency** of an output record, in microseconds, is `now − origin`, where `now`
//! is the wall clock when the sink receives the record's batch and `origin` is the
//! earliest wall time the record could have been produced:
//! - rows emitted while processing an event (q0–q3) carry that event's timestamp
//!   `ts`, which in an open-loop run is the event's scheduled emission time, so
//!   `origin = ts`;
//! - rows emitted by an event-time timer (q4, q5, q7, q8, see
//!   [`Query::emitted_by_timer`](crate::queries::Query::emitted_by_timer)) carry the
//!   timer's time `ts` (window results `end − 1`); the timer can fire only once
//!   every source has emitted an event scheduled at `ts + 1` or later, so
//!   `origin = ts + 1 ms` (a window's end).
//!
//! At end of input the final watermark closes every open window and auction at
//! once, before its time: such rows arrive before their origin and are counted
//! ([`SinkTotals::rows_before_origin`]) but not recorded as latencies.
//!
//! Timestamps have millisecond resolution and event times are rounded to the
//! nearest millisecond, so a latency is exact to about ±0.5 ms. Latencies are only
//! meaningful in open-loop runs (timestamps are wall times); closed-loop runs do
//! not record them. Each subtask keeps its own histogram and merges it into the
//! shared one once, at end of input.
//!
//! **Output** (`--output DIR`): subtask `s` writes `DIR/part-<s>.jsonl`, one JSON
//! object per row, fields in declaration order. The files are plain, not
//! transactional (the exactly-once sink is another issue): a failed run leaves
//! partial files. In a checkpointing run the sink flushes after every batch, so
//! every row that reached it before a checkpoint's barrier is in the file when
//! the checkpoint completes, and a resumed run appends to the files (after
//! cutting a torn last line): the output is at-least-once — the union of the
//! rows, deduplicated, is the result — until the exactly-once sink exists.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;
use spate::sink::{Sink, SinkContext};
use spate::{Record, SinkError};

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
    /// Record latencies, adding this many µs to a record's timestamp (in µs) to get
    /// its origin; `None` records none (closed loop).
    pub latency_origin_offset_us: Option<u64>,
    /// Directory for `part-<subtask>.jsonl` files.
    pub output_dir: Option<PathBuf>,
    /// Append to existing files (cut after their last complete line) instead
    /// of replacing them.
    pub append: bool,
    /// Flush the rows of every batch to the file (checkpointing runs).
    pub flush_each_batch: bool,
}

/// One subtask's benchmark sink.
pub struct BenchSink {
    options: SinkOptions,
    totals: SinkTotals,
    histogram: Histogram<u64>,
    rows: u64,
    rows_before_origin: u64,
    writer: Option<BufWriter<File>>,
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
            writer: None,
        }
    }
}

/// Opens `path` for appending, first cutting a torn last line (left by a
/// crash in the middle of a write) so that appended rows start on a new line.
fn open_for_append(path: &std::path::Path) -> std::io::Result<File> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let len = file.metadata()?.len();
    // Find the end of the last complete line, reading backwards in blocks.
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        file.set_len(keep)?;
    }
    file.seek(SeekFrom::End(0))?;
    Ok(file)
}

/// Wall-clock time in microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl<T: Serialize + 'static> Sink<T> for BenchSink {
    fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        if let Some(dir) = &self.options.output_dir {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("part-{}.jsonl", context.subtask));
            let file = if self.options.append {
                open_for_append(&path)?
            } else {
                File::create(path)?
            };
            self.writer = Some(BufWriter::with_capacity(1 << 16, file));
        }
        Ok(())
    }

    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        self.rows += batch.len() as u64;
        if let Some(offset_us) = self.options.latency_origin_offset_us {
            let now = now_us();
            for record in batch.iter() {
                let origin = record.ts.saturating_mul(1000).saturating_add(offset_us);
                match now.checked_sub(origin) {
                    Some(latency) => self.histogram.saturating_record(latency),
                    None => self.rows_before_origin += 1,
                }
            }
        }
        if let Some(writer) = &mut self.writer {
            for record in batch.iter() {
                serde_json::to_writer(&mut *writer, &record.value)
                    .map_err(|e| SinkError::Other(e.to_string()))?;
                writer.write_all(b"\n")?;
            }
            if self.options.flush_each_batch {
                writer.flush()?;
            }
        }
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Some(writer) = &mut self.writer {
            writer.flush()?;
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
}
