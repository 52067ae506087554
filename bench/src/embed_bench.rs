//! The embedding benchmark (`spate-bench embed`): round-trip latency of a
//! service that pushes records through an ingress and reads results from an
//! egress, immediate (at least once) against committed (exactly once).
//!
//! The job is ingress → key by record % 1024 → a keyed count → egress. A
//! pusher thread paces records open loop: record `i` is due at `start +
//! i / rate` on a monotonic clock and carries that due time, so a stalled
//! job shows as latency, not as a slower schedule (no coordinated
//! omission). It sleeps until the next record is due and then pushes all
//! that are due, so it never spins. A receiver thread records, per result,
//! the time from its record's due time to its arrival, in nanoseconds (the
//! histogram keeps 3 significant digits). The first 1.5 s are warm-up.
//!
//! Immediate: the raw `IngressHandle` and `egress`. Committed: a
//! `ReplayIngress` (every record kept until durable) and `egress_committed`
//! (results released when their checkpoint completes), the exactly-once
//! path of `spate::embed`.

use hdrhistogram::Histogram;
use serde::Serialize;
use spate::checkpoint::{CheckpointConfig, CheckpointMode};
use spate::embed::{egress, egress_committed, ingress, IngressHandle, ReplayIngress};
use spate::{Job, JobConfig, KeyedContext, RestoreFrom, WatermarkStrategy};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the summary file in the report directory.
pub const SUMMARY_FILE: &str = "embed-summary.json";

/// Distinct keys of the job.
const KEYS: u64 = 1024;
/// Results before this much time of the run are not measured: start-up,
/// and the first checkpoint of the fresh store (at 1 s intervals), which
/// stalls a lightly loaded reactor for tens of milliseconds once (creating
/// the store's first segment; see bench/README.md).
const WARM_UP: Duration = Duration::from_millis(1_500);

/// How results leave the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// `egress`: at once, at least once.
    Immediate,
    /// `egress_committed` with a `ReplayIngress`: exactly once.
    Committed,
}

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct EmbedConfig {
    /// Records per second pushed.
    pub rate: u64,
    /// Subtasks.
    pub parallelism: usize,
    /// Checkpoint interval.
    pub interval_ms: u64,
    /// Egress mode.
    pub egress: Egress,
    /// Measured time after the warm-up.
    pub seconds: f64,
    /// Where the checkpoints go (removed after the run).
    pub state_dir: PathBuf,
}

/// What one configuration measured.
#[derive(Clone, Debug, Serialize)]
pub struct EmbedResult {
    /// Records per second pushed.
    pub rate: u64,
    /// Subtasks.
    pub parallelism: usize,
    /// Checkpoint interval, ms.
    pub interval_ms: u64,
    /// Egress mode.
    pub egress: Egress,
    /// Results measured.
    pub results: u64,
    /// Round trip, µs.
    pub p50_us: f64,
    /// Round trip, µs.
    pub p99_us: f64,
    /// Round trip, µs.
    pub p999_us: f64,
    /// Round trip, µs.
    pub max_us: f64,
    /// Checkpoints completed.
    pub checkpoints: u64,
}

/// The job's result: the due time (ns after the start) of the record.
type Due = u64;

/// Runs one configuration.
pub fn run_one(config: &EmbedConfig) -> anyhow::Result<EmbedResult> {
    let _ = std::fs::remove_dir_all(&config.state_dir);
    let p = config.parallelism;
    let job_config = JobConfig {
        parallelism: p,
        max_parallelism: 128,
        checkpoint: Some(CheckpointConfig {
            mode: CheckpointMode::Aligned,
            restore: RestoreFrom::Nothing,
            ..CheckpointConfig::new(&config.state_dir, config.interval_ms)
        }),
        ..JobConfig::default()
    };
    let records = (config.rate as f64 * (config.seconds + WARM_UP.as_secs_f64())) as u64;
    let (input, sources) = ingress::<(u64, Due)>(p, 4096);
    let start = Instant::now();
    let (histogram, report) = match config.egress {
        Egress::Immediate => {
            let (sinks, receiver) = egress::<Due>(p, 256);
            let job =
                Job::new(job_config).start(move |df| build(df, &sources, |d| sinks.take(d)))?;
            let reader = std::thread::spawn(move || measure(receiver.map(|r| r.value), start));
            push_paced(Pusher::Raw(input), records, config.rate, start)?;
            let report = job.join()?;
            (reader.join().expect("receiver thread"), report)
        }
        Egress::Committed => {
            let (sinks, receiver) = egress_committed::<Due>(p, 256);
            let job =
                Job::new(job_config).start(move |df| build(df, &sources, |d| sinks.take(d)))?;
            let reader = std::thread::spawn(move || measure(receiver.map(|r| r.value), start));
            let (replay, _) = ReplayIngress::new(input, 4_000_000)?;
            push_paced(Pusher::Replay(replay), records, config.rate, start)?;
            let report = job.join()?;
            (reader.join().expect("receiver thread"), report)
        }
    };
    let _ = std::fs::remove_dir_all(&config.state_dir);
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
    Ok(EmbedResult {
        rate: config.rate,
        parallelism: p,
        interval_ms: config.interval_ms,
        egress: config.egress,
        results: histogram.len(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: histogram.max() as f64 / 1_000.0,
        checkpoints: report.checkpoint_summary.completed,
    })
}

/// Declares the job on one subtask.
fn build<S: spate::sink::Sink<Due>>(
    df: &spate::Dataflow,
    sources: &spate::embed::IngressSources<(u64, Due)>,
    sink: impl Fn(usize) -> S,
) {
    df.source("in", sources.take(df.subtask()), WatermarkStrategy::none())
        .key_by(|r: &(u64, Due)| r.0 % KEYS)
        .process("count", |state| {
            let count = state.value_state::<u64>("count");
            move |r: (u64, Due), ctx: &mut KeyedContext<u64, Due>| {
                count.update(ctx, || 0, |c| *c += 1);
                ctx.emit(r.1);
                Ok(())
            }
        })
        .sink("out", sink(df.subtask()));
}

enum Pusher {
    Raw(IngressHandle<(u64, Due)>),
    Replay(ReplayIngress<(u64, Due)>),
}

/// Pushes `records` records, record `i` due `i / rate` seconds after
/// `start`; sleeps until the next one is due, then pushes every due one.
fn push_paced(mut pusher: Pusher, records: u64, rate: u64, start: Instant) -> anyhow::Result<()> {
    let ns_per_record = 1e9 / rate as f64;
    let mut i = 0u64;
    while i < records {
        let now = start.elapsed().as_nanos() as f64;
        let due_now = ((now / ns_per_record) as u64 + 1).min(records);
        while i < due_now {
            let due = (i as f64 * ns_per_record) as u64;
            match &mut pusher {
                Pusher::Raw(h) => {
                    h.push((i, due))
                        .map_err(|e| anyhow::anyhow!("push: {e:?}"))?;
                }
                Pusher::Replay(r) => {
                    r.push((i, due))?;
                }
            }
            i += 1;
        }
        let next_due = Duration::from_nanos((i as f64 * ns_per_record) as u64);
        if let Some(wait) = next_due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    match pusher {
        Pusher::Raw(mut h) => h.close(),
        Pusher::Replay(r) => r.finish()?,
    }
    Ok(())
}

/// Round trips of every result after the warm-up, ns.
fn measure(results: impl Iterator<Item = Due>, start: Instant) -> Histogram<u64> {
    // 1 ns to 100 s (values above are counted at 100 s).
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).expect("bounds");
    let warm_up = WARM_UP.as_nanos() as u64;
    for due in results {
        if due >= warm_up {
            let now = start.elapsed().as_nanos() as u64;
            histogram.saturating_record(now.saturating_sub(due).max(1));
        }
    }
    histogram
}

/// Runs every combination, interleaving immediate and committed runs of the
/// same setting; prints a table as it goes.
pub fn run_all(
    rates: &[u64],
    parallelisms: &[usize],
    intervals_ms: &[u64],
    seconds: f64,
    state_dir: &Path,
) -> anyhow::Result<Vec<EmbedResult>> {
    let mut results = Vec::new();
    println!(
        "{:>9} {:>3} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "rate/s", "p", "ckpt ms", "egress", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "ckpts"
    );
    for &rate in rates {
        for &parallelism in parallelisms {
            for &interval_ms in intervals_ms {
                for egress in [Egress::Immediate, Egress::Committed] {
                    let config = EmbedConfig {
                        rate,
                        parallelism,
                        interval_ms,
                        egress,
                        seconds,
                        state_dir: state_dir.join("embed-bench"),
                    };
                    let r = run_one(&config)?;
                    println!(
                        "{:>9} {:>3} {:>7} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>6}",
                        r.rate,
                        r.parallelism,
                        r.interval_ms,
                        format!("{:?}", r.egress).to_lowercase(),
                        r.p50_us,
                        r.p99_us,
                        r.p999_us,
                        r.max_us,
                        r.checkpoints
                    );
                    results.push(r);
                }
            }
        }
    }
    Ok(results)
}
