//! The benchmark's view of the engine's checkpoints: the command-line
//! settings ([`CheckpointSettings`], turned into the engine's
//! [`CheckpointConfig`]), the figures a report prints ([`CheckpointSummary`],
//! computed from [`CheckpointStats`]) and the plot of checkpoint durations over
//! a run ([`checkpoints_svg`]).
//!
//! Checkpoints go through the engine's real path: `JobConfig.checkpoint`, the
//! coordinator on reactor 0 (which triggers them every interval, cause
//! `interval`), barriers, snapshots, io_uring writes into the state directory.
//! This module configures them and reads their statistics.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spate::{CheckpointConfig, CheckpointMode, CheckpointStats, CheckpointStatus, RestoreFrom};

/// Alignment timeout of `--checkpoint-mode aligned-timeout` when
/// `--alignment-timeout-ms` is not given.
pub const DEFAULT_ALIGNMENT_TIMEOUT_MS: u64 = 100;

/// Consecutive failed checkpoints a benchmark tolerates before the job fails:
/// a benchmark reports failures (`failed` in the summary) rather than dying on
/// the first one.
pub const TOLERABLE_FAILURES: u32 = 10;

/// The names `--checkpoint-mode` accepts.
pub const MODE_NAMES: [&str; 4] = ["aligned", "unaligned", "aligned-timeout", "at-least-once"];

/// Parses `--checkpoint-mode` and `--alignment-timeout-ms`: the timeout is only
/// valid with `aligned-timeout` (default [`DEFAULT_ALIGNMENT_TIMEOUT_MS`]).
///
/// # Errors
/// An unknown mode, or a timeout given with another mode, with a message
/// naming the flags.
pub fn parse_mode(name: &str, alignment_timeout_ms: Option<u64>) -> Result<CheckpointMode, String> {
    if let Some(timeout) = alignment_timeout_ms {
        if name != "aligned-timeout" {
            return Err(format!(
                "--alignment-timeout-ms {timeout} is only valid with --checkpoint-mode \
                 aligned-timeout, not with --checkpoint-mode {name}"
            ));
        }
    }
    CheckpointMode::from_name(
        name,
        alignment_timeout_ms.unwrap_or(DEFAULT_ALIGNMENT_TIMEOUT_MS),
    )
    .ok_or_else(|| {
        format!(
            "unknown --checkpoint-mode {name}: expected one of {}",
            MODE_NAMES.join(", ")
        )
    })
}

/// How a benchmark checkpoints (the `--checkpoint-*` flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSettings {
    /// The state directory (segments and manifest).
    pub state_dir: PathBuf,
    /// Time between the engine's periodic checkpoint triggers; 0: none (the
    /// caller triggers them through the job handle).
    pub interval_ms: u64,
    /// Barrier mode name (`aligned`, `unaligned`, `aligned-timeout`, `at-least-once`).
    pub mode: String,
    /// Alignment timeout (`aligned-timeout` only).
    pub alignment_timeout_ms: Option<u64>,
    /// Incremental checkpoints (deltas on a base).
    pub incremental: bool,
    /// Remote tier URL (`s3://bucket/prefix`, `file:///path`), if any.
    pub remote: Option<String>,
}

impl CheckpointSettings {
    /// The engine's barrier mode.
    ///
    /// # Errors
    /// As [`parse_mode`].
    pub fn engine_mode(&self) -> Result<CheckpointMode, String> {
        let timeout = (self.mode == "aligned-timeout").then(|| {
            self.alignment_timeout_ms
                .unwrap_or(DEFAULT_ALIGNMENT_TIMEOUT_MS)
        });
        parse_mode(&self.mode, timeout)
    }

    /// The engine's checkpoint configuration: the flags, [`TOLERABLE_FAILURES`],
    /// a timeout of 20 intervals (at least 10 s) so that a stuck checkpoint
    /// is aborted (and counted as failed) instead of holding the run, and the
    /// engine's defaults for the rest (one checkpoint at a time, 3 retained). The engine triggers a checkpoint every
    /// `interval_ms` (the first one interval after the start; one due while
    /// another is in progress fires as soon as that one ends).
    ///
    /// # Errors
    /// As [`parse_mode`].
    pub fn engine_config(&self, restore: RestoreFrom) -> Result<CheckpointConfig, String> {
        Ok(CheckpointConfig {
            mode: self.engine_mode()?,
            incremental: self.incremental,
            restore,
            tolerable_failures: TOLERABLE_FAILURES,
            timeout_ms: self
                .interval_ms
                .saturating_mul(20)
                .clamp(10_000, spate::MAX_CHECKPOINT_TIME_MS),
            remote: self.remote.clone(),
            ..CheckpointConfig::new(&self.state_dir, self.interval_ms)
        })
    }
}

/// Checkpoint figures of a run (`checkpoints` in `summary.json`).
///
/// Durations and bytes are over completed checkpoints; synchronous pauses,
/// asynchronous and alignment durations over every (completed checkpoint,
/// subtask) pair. Every figure is `null` when no checkpoint completed; `mode`
/// and `incremental` are `null` when checkpointing was off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    /// Completed checkpoints.
    pub count: u64,
    /// Failed checkpoints.
    pub failed: u64,
    /// `aligned`, `unaligned`, `aligned-timeout`, `at-least-once`; `null`: off.
    pub mode: Option<String>,
    /// Whether checkpoints were incremental; `null`: off.
    pub incremental: Option<bool>,
    /// Median end-to-end checkpoint duration (trigger to commit).
    pub duration_ms_p50: Option<f64>,
    /// 99th percentile end-to-end checkpoint duration.
    pub duration_ms_p99: Option<f64>,
    /// Median synchronous pause of a core (snapshot on the reactor).
    pub sync_pause_us_p50: Option<u64>,
    /// 99th percentile synchronous pause.
    pub sync_pause_us_p99: Option<u64>,
    /// Longest synchronous pause.
    pub sync_pause_us_max: Option<u64>,
    /// 99th percentile asynchronous part of a core (snapshot ready to durable).
    pub async_us_p99: Option<u64>,
    /// 99th percentile alignment of a core (first barrier to last).
    pub alignment_us_p99: Option<u64>,
    /// Bytes written by all completed checkpoints: state and in-flight records.
    pub bytes_total: Option<u64>,
    /// Of which state deltas (incremental checkpoints).
    pub delta_bytes_total: Option<u64>,
    /// In-flight (channel state) bytes persisted by all completed checkpoints.
    pub in_flight_bytes_total: Option<u64>,
    /// (Checkpoint, subtask) pairs where an aligned-with-timeout checkpoint
    /// switched to unaligned.
    pub switched_to_unaligned: Option<u64>,
}

/// The nearest-rank `q` quantile of sorted `v`.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl CheckpointSummary {
    /// The figures of `stats` (checkpoints of one run); `settings` is `None`
    /// when the run did not checkpoint.
    pub fn of(stats: &[CheckpointStats], settings: Option<&CheckpointSettings>) -> Self {
        let Some(settings) = settings else {
            return Self::default();
        };
        let completed: Vec<&CheckpointStats> = stats
            .iter()
            .filter(|c| c.status == CheckpointStatus::Completed)
            .collect();
        let failed = stats
            .iter()
            .filter(|c| matches!(c.status, CheckpointStatus::Failed(_)))
            .count() as u64;
        let mut summary = Self {
            count: completed.len() as u64,
            failed,
            mode: Some(settings.mode.clone()),
            incremental: Some(settings.incremental),
            ..Self::default()
        };
        if completed.is_empty() {
            return summary;
        }
        let sorted = |mut v: Vec<u64>| {
            v.sort_unstable();
            v
        };
        let durations = sorted(completed.iter().map(|c| c.duration_ms).collect());
        let per_subtask = |f: fn(&spate::checkpoint::metadata::SubtaskStats) -> u64| {
            sorted(
                completed
                    .iter()
                    .flat_map(|c| c.subtasks.iter().map(f))
                    .collect(),
            )
        };
        let sync = per_subtask(|s| s.sync_us);
        let async_us = per_subtask(|s| s.async_us);
        let alignment = per_subtask(|s| s.alignment_us);
        summary.duration_ms_p50 = quantile(&durations, 0.5).map(|d| d as f64);
        summary.duration_ms_p99 = quantile(&durations, 0.99).map(|d| d as f64);
        summary.sync_pause_us_p50 = quantile(&sync, 0.5);
        summary.sync_pause_us_p99 = quantile(&sync, 0.99);
        summary.sync_pause_us_max = sync.last().copied();
        summary.async_us_p99 = quantile(&async_us, 0.99);
        summary.alignment_us_p99 = quantile(&alignment, 0.99);
        summary.bytes_total = Some(
            completed
                .iter()
                .map(|c| c.state_bytes + c.in_flight_bytes)
                .sum(),
        );
        summary.delta_bytes_total = Some(
            completed
                .iter()
                .flat_map(|c| c.subtasks.iter().map(|s| s.delta_bytes))
                .sum(),
        );
        summary.in_flight_bytes_total = Some(completed.iter().map(|c| c.in_flight_bytes).sum());
        summary.switched_to_unaligned = Some(
            completed
                .iter()
                .flat_map(|c| c.subtasks.iter())
                .filter(|s| s.switched_to_unaligned)
                .count() as u64,
        );
        summary
    }

    /// One or two lines for a human summary (each starting with two spaces).
    pub fn human(&self) -> String {
        let Some(mode) = &self.mode else {
            return "  checkpoints off (--checkpoint-interval-ms 0)\n".to_string();
        };
        let kind = if self.incremental == Some(true) {
            "incremental"
        } else {
            "full"
        };
        let mut s = format!(
            "  checkpoints {} completed, {} failed ({mode}, {kind})\n",
            self.count, self.failed
        );
        if let (Some(d50), Some(d99), Some(s50), Some(s99), Some(smax)) = (
            self.duration_ms_p50,
            self.duration_ms_p99,
            self.sync_pause_us_p50,
            self.sync_pause_us_p99,
            self.sync_pause_us_max,
        ) {
            s += &format!(
                "              duration p50 {d50:.0} ms  p99 {d99:.0} ms; sync pause p50 {s50} µs  \
                 p99 {s99} µs  max {smax} µs; async p99 {} µs; alignment p99 {} µs\n",
                self.async_us_p99.unwrap_or(0),
                self.alignment_us_p99.unwrap_or(0),
            );
            s += &format!(
                "              {} written ({} deltas, {} in flight); {} switched to unaligned\n",
                mib(self.bytes_total.unwrap_or(0)),
                mib(self.delta_bytes_total.unwrap_or(0)),
                mib(self.in_flight_bytes_total.unwrap_or(0)),
                self.switched_to_unaligned.unwrap_or(0),
            );
        }
        s
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Plots every checkpoint's end-to-end duration over the run as SVG: x is the
/// trigger time in seconds since `start_ms` (epoch ms), y the duration in ms;
/// completed checkpoints in blue, failed ones in red.
///
/// # Errors
/// If plotting fails (for example the file cannot be written).
pub fn checkpoints_svg(
    stats: &[CheckpointStats],
    start_ms: u64,
    title: &str,
    path: &Path,
) -> Result<(), String> {
    use plotters::prelude::*;
    let point = |c: &CheckpointStats| {
        (
            c.trigger_ms.saturating_sub(start_ms) as f64 / 1000.0,
            c.duration_ms as f64,
        )
    };
    let done: Vec<(f64, f64)> = stats
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .map(point)
        .collect();
    let failed: Vec<(f64, f64)> = stats
        .iter()
        .filter(|c| matches!(c.status, CheckpointStatus::Failed(_)))
        .map(point)
        .collect();
    let all = || done.iter().chain(&failed);
    let x_max = all().map(|p| p.0).fold(1.0f64, f64::max) * 1.05;
    let y_max = all().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0f64..x_max, 0.0f64..y_max)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("checkpoint trigger (s since start)")
        .y_desc("end-to-end duration (ms)")
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(done.iter().copied(), &BLUE))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(done.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(
            failed
                .iter()
                .map(|&p| Cross::new(p, 5, RED.stroke_width(2))),
        )
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
