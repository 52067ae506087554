//! Time: event-time timestamps and watermarks, and the processing-time clock.
//!
//! Timestamps are milliseconds since the Unix epoch as `u64`. A watermark `w`
//! promises that no record with a timestamp `<= w` follows (Flink's meaning).
//! Processing time comes from a [`Clock`], so the deterministic simulator can
//! substitute a virtual one. Event time stays in milliseconds; processing
//! time is also readable in microseconds ([`Clock::now_us`]), which is what
//! sources pace by and latencies are measured with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub type Timestamp = u64;

/// The watermark that ends event time: every timer fires, every window closes.
pub const MAX_WATERMARK: Timestamp = u64::MAX;

/// The watermark before any record.
pub const MIN_WATERMARK: Timestamp = 0;

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeDomain {
    /// Fires when the watermark passes the timer.
    EventTime,
    /// Fires when the processing-time clock passes the timer.
    ProcessingTime,
}

/// A processing-time clock.
pub trait Clock: Send + Sync + 'static {
    /// Current processing time, in epoch milliseconds.
    fn now_ms(&self) -> u64;

    /// Current processing time, in epoch microseconds: the same clock as
    /// [`Clock::now_ms`] (`now_us() / 1000 == now_ms()` when read together).
    /// The default has millisecond resolution.
    fn now_us(&self) -> u64 {
        self.now_ms().saturating_mul(1000)
    }
}

/// The system's clock: epoch time that never goes backwards. The wall clock
/// is read once per process; after that, time is that reading plus the
/// monotonic clock's progress (`CLOCK_MONOTONIC`, microsecond resolution),
/// so a wall-clock step (NTP, an operator) never makes a latency negative
/// or a timer fire twice. Over a long run it can drift from the wall clock
/// by what NTP slews; event times stay comparable within the process.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// The wall clock and the monotonic clock, read together once per process.
fn system_clock_origin() -> &'static (u64, std::time::Instant) {
    static ORIGIN: std::sync::OnceLock<(u64, std::time::Instant)> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(|| {
        let wall_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        (wall_us, std::time::Instant::now())
    })
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }

    fn now_us(&self) -> u64 {
        let (wall_us, instant) = system_clock_origin();
        wall_us + instant.elapsed().as_micros() as u64
    }
}

/// A clock that moves only when told to (tests and the simulator).
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Moves the clock forward by `delta_ms`.
    pub fn advance(&self, delta_ms: u64) {
        self.0.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ms` if that is later than its reading.
    pub fn advance_to(&self, now_ms: u64) {
        self.0.fetch_max(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Extracts a record's event timestamp.
pub(crate) type TimestampFn<T> = Box<dyn Fn(&T) -> Timestamp>;

/// How a source assigns event timestamps and generates watermarks.
pub struct WatermarkStrategy<T> {
    pub(crate) timestamp: Option<TimestampFn<T>>,
    pub(crate) out_of_orderness_ms: u64,
}

impl<T> WatermarkStrategy<T> {
    /// No event time: records carry timestamp 0 and the only watermark is the
    /// final one at end of input.
    pub fn none() -> Self {
        Self {
            timestamp: None,
            out_of_orderness_ms: 0,
        }
    }

    /// Timestamps from `timestamp`, and watermarks trailing the largest
    /// timestamp seen by `out_of_orderness_ms` (Flink's
    /// `forBoundedOutOfOrderness`): watermark = max - out_of_orderness - 1.
    pub fn bounded_out_of_orderness(
        out_of_orderness_ms: u64,
        timestamp: impl Fn(&T) -> Timestamp + 'static,
    ) -> Self {
        Self {
            timestamp: Some(Box::new(timestamp)),
            out_of_orderness_ms,
        }
    }

    /// Timestamps from `timestamp`, which must not decrease within one source
    /// subtask (Flink's `forMonotonousTimestamps`).
    pub fn monotonous(timestamp: impl Fn(&T) -> Timestamp + 'static) -> Self {
        Self::bounded_out_of_orderness(0, timestamp)
    }
}
