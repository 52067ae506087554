//! Benchmark reports: `summary.json`, `summary.txt`, `latency.hgrm`,
//! `latency.svg` and `checkpoints.svg` in the report directory, and `compare`
//! of two summaries.
//!
//! `summary.json` keys (stable, so scripts can read any report): `query`,
//! `events`, `events_processed` (fewer than `events` in a resumed run), `cores`, `elapsed_s`, `throughput_events_per_s`,
//! `throughput_events_per_s_per_core`, `rows`, `rows_before_origin`, `latency_us` (`p50`, `p90`,
//! `p99`, `p999`, `p9999`, `max`, `mean`, `count`; all `null` in a closed-loop
//! run, which measures no latency), `checkpoints`, `peak_rss_bytes`,
//! `resumed_from_checkpoint`, `config`, `generator`, `machine`, `spate_bench_version`.
//!
//! `checkpoints` ([`CheckpointSummary`], from the engine's statistics of the
//! run) has `count` (completed), `failed`, `mode` (`null` when checkpointing
//! was off), `incremental`, `duration_ms_p50`, `duration_ms_p99` (end to end,
//! completed checkpoints), `sync_pause_us_p50`, `sync_pause_us_p99`,
//! `sync_pause_us_max` (over every (checkpoint, subtask) synchronous part),
//! `async_us_p99`, `alignment_us_p99`, `bytes_total` (state + in-flight bytes
//! of completed checkpoints), `delta_bytes_total`, `in_flight_bytes_total` and
//! `switched_to_unaligned` (count of (checkpoint, subtask) pairs); figures are
//! `null` when no checkpoint completed. `resumed_from_checkpoint` is the id of
//! the checkpoint the run restored (see [`crate::resume`]), or `null`.
//!
//! `checkpoints.svg` plots every checkpoint's end-to-end duration against its
//! trigger time since the job's start; it is written when the run took at
//! least one checkpoint.
//!
//! `latency.hgrm` is HdrHistogram's percentile distribution text format (as
//! `outputPercentileDistribution` writes it, 5 ticks per half distance), values
//! in microseconds: a header line, rows `value percentile total_count
//! 1/(1-percentile)`, the last row (percentile 1) without the fourth column, and
//! the `#[Mean …]`, `#[Max …]`, `#[Buckets …]` footer. It is written only when
//! latency was measured.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::checkpoints::checkpoints_svg;
pub use crate::checkpoints::CheckpointSummary;
use crate::nexmark::GeneratorConfig;
use crate::run::{RunConfig, RunOutcome};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: Option<u64>,
    /// 90th percentile.
    pub p90: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
    /// 99.9th percentile.
    pub p999: Option<u64>,
    /// 99.99th percentile.
    pub p9999: Option<u64>,
    /// Maximum.
    pub max: Option<u64>,
    /// Mean.
    pub mean: Option<f64>,
    /// Number of latencies recorded (output rows in an open-loop run).
    pub count: u64,
}

impl LatencySummary {
    /// The summary of `h`; all `None` if it is empty or latency was not measured.
    pub fn of(h: &Histogram<u64>, measured: bool) -> Self {
        if !measured || h.is_empty() {
            return Self::default();
        }
        let q = |q: f64| Some(h.value_at_quantile(q));
        Self {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: Some(h.max()),
            mean: Some(h.mean()),
            count: h.len(),
        }
    }
}

/// The machine a report was taken on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Cores available to this process.
    pub cores: usize,
    /// Total memory from `/proc/meminfo`.
    pub memory_bytes: Option<u64>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// Host name.
    pub hostname: Option<String>,
}

impl Machine {
    /// Reads the current machine's description from `/proc`.
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let cpu_model = read("/proc/cpuinfo").and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        let memory_bytes = read("/proc/meminfo").and_then(|s| proc_kib(&s, "MemTotal:"));
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
            hostname: read("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()),
        }
    }
}

/// Reads a `Key:   123 kB` line of a `/proc` file, in bytes.
fn proc_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l[key.len()..].split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Resets this process's peak resident set size to its current one (Linux
/// `clear_refs` mode 5), so that [`peak_rss_bytes`] then reports the peak
/// of what follows; false where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| proc_kib(&s, "VmHWM:"))
}

/// The generator settings worth recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratorSummary {
    /// Event-time rate, events/s.
    pub events_per_second: u64,
    /// Event time of event 0, epoch ms.
    pub base_time_ms: u64,
}

impl From<&GeneratorConfig> for GeneratorSummary {
    fn from(c: &GeneratorConfig) -> Self {
        Self {
            events_per_second: c.events_per_second,
            base_time_ms: c.base_time_ms,
        }
    }
}

/// Everything `summary.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Query name, `q0`…`q8`.
    pub query: String,
    /// Events of the run (`--events`).
    pub events: u64,
    /// Events this process generated and processed: `events` in a fresh
    /// run, what the restored checkpoint left in a resumed one.
    pub events_processed: u64,
    /// Cores (reactors).
    pub cores: usize,
    /// Wall time of the job, seconds.
    pub elapsed_s: f64,
    /// `events_processed / elapsed_s`.
    pub throughput_events_per_s: f64,
    /// `throughput_events_per_s / cores`.
    pub throughput_events_per_s_per_core: f64,
    /// Result rows produced.
    pub rows: u64,
    /// Rows the end of input forced out before their latency origin (windows
    /// and auctions closed early); counted in `rows`, not in `latency_us`.
    pub rows_before_origin: u64,
    /// Latency percentiles (open loop only).
    pub latency_us: LatencySummary,
    /// Checkpoint figures.
    pub checkpoints: CheckpointSummary,
    /// Peak resident set size, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// The checkpoint this run restored (a resumed run), or `null`.
    pub resumed_from_checkpoint: Option<u64>,
    /// The run's configuration.
    pub config: serde_json::Value,
    /// The generator's event-time settings.
    pub generator: GeneratorSummary,
    /// The machine.
    pub machine: Machine,
    /// Version of spate-bench.
    pub spate_bench_version: String,
    /// A cluster run: every process's own figures (`events_processed`,
    /// `rows` and the latency above are over all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessSummary>,
    /// When this run's generator emitted its first event (epoch ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_event_ms: Option<u64>,
    /// A cluster run that lost a process and was restarted from its latest
    /// global checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSummary>,
}

/// How a cluster run came back from a lost process.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FailoverSummary {
    /// Restarts of every process.
    pub restarts: u32,
    /// The process killed by `--kill-process`, if one was.
    pub killed_process: Option<usize>,
    /// The newest global checkpoint when it was killed.
    pub killed_after_checkpoint: Option<u64>,
    /// The global checkpoint the last run restored.
    pub restored_from: Option<u64>,
    /// Processes of the last run.
    pub processes_after: usize,
    /// From the kill to the first event the restarted job emitted, ms.
    pub kill_to_first_event_ms: Option<u64>,
}

/// One process of a cluster run, as its own report has it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessSummary {
    /// Its index.
    pub process: usize,
    /// Events its sources emitted.
    pub events_processed: u64,
    /// Its job's wall time, seconds.
    pub elapsed_s: f64,
    /// `events_processed / elapsed_s`.
    pub throughput_events_per_s: f64,
    /// Rows its sinks produced.
    pub rows: u64,
    /// Latency of its rows.
    pub latency_us: LatencySummary,
    /// Its peak resident set size, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// Bytes it sent to, and received from, the other processes.
    pub network_bytes_sent: u64,
    /// See `network_bytes_sent`.
    pub network_bytes_received: u64,
}

impl Summary {
    /// The summary of a finished run.
    pub fn new(config: &RunConfig, outcome: &RunOutcome) -> Self {
        let elapsed_s = outcome.elapsed.as_secs_f64();
        let throughput = outcome.events_processed as f64 / elapsed_s.max(1e-9);
        Self {
            query: config.query.to_string(),
            events: config.events,
            events_processed: outcome.events_processed,
            cores: config.cores,
            elapsed_s,
            throughput_events_per_s: throughput,
            throughput_events_per_s_per_core: throughput / config.cores as f64,
            rows: outcome.rows,
            rows_before_origin: outcome.rows_before_origin,
            latency_us: LatencySummary::of(&outcome.latency_us, outcome.latency_measured),
            checkpoints: CheckpointSummary::of(&outcome.checkpoints, config.checkpoint.as_ref()),
            peak_rss_bytes: peak_rss_bytes(),
            resumed_from_checkpoint: outcome.restored_from,
            config: serde_json::to_value(config).unwrap_or(serde_json::Value::Null),
            generator: GeneratorSummary::from(&outcome.generator),
            machine: Machine::current(),
            spate_bench_version: env!("CARGO_PKG_VERSION").to_string(),
            processes: Vec::new(),
            first_event_ms: outcome.first_event_ms,
            failover: None,
        }
    }

    /// The short human summary (also `summary.txt`).
    pub fn human(&self) -> String {
        let mut s = String::new();
        let rate = match self
            .config
            .get("rate_events_per_s")
            .and_then(|r| r.as_u64())
        {
            Some(r) => format!("open loop at {}", si(r as f64)),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            s,
            "spate-bench nexmark {}: {} events on {} core(s), {rate}",
            self.query,
            si(self.events as f64),
            self.cores
        );
        let _ = writeln!(
            s,
            "  elapsed     {:.3} s, {} result rows",
            self.elapsed_s, self.rows
        );
        if self.rows_before_origin > 0 {
            let _ = writeln!(
                s,
                "              ({} rows closed early by the end of input: no latency)",
                self.rows_before_origin
            );
        }
        let _ = writeln!(
            s,
            "  throughput  {} events/s ({} per core)",
            si(self.throughput_events_per_s),
            si(self.throughput_events_per_s_per_core)
        );
        let l = &self.latency_us;
        match (l.p50, l.p90, l.p99, l.p999, l.p9999, l.max) {
            (Some(p50), Some(p90), Some(p99), Some(p999), Some(p9999), Some(max)) => {
                let _ = writeln!(
                    s,
                    "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
                    us(p50),
                    us(p90),
                    us(p99),
                    us(p999),
                    us(p9999),
                    us(max)
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "  latency     not measured (closed loop or no output; pass --rate)"
                );
            }
        }
        s += &self.checkpoints.human();
        if let Some(id) = self.resumed_from_checkpoint {
            let _ = writeln!(
                s,
                "  resumed     from checkpoint {id}: this run processed {} of the {} events",
                si(self.events_processed as f64),
                si(self.events as f64)
            );
        }
        if let Some(rss) = self.peak_rss_bytes {
            let _ = writeln!(s, "  peak RSS    {:.1} MiB", rss as f64 / (1 << 20) as f64);
        }
        if !self.processes.is_empty() {
            let _ = writeln!(
                s,
                "  processes   {} (events/s, rows, p50/p99 latency, MiB sent/received over TCP)",
                self.processes.len()
            );
            for p in &self.processes {
                let lat = match (p.latency_us.p50, p.latency_us.p99) {
                    (Some(a), Some(b)) => format!("{}/{}", us(a), us(b)),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    s,
                    "    {:>3}       {}/s, {} rows, {lat}, {:.1}/{:.1} MiB",
                    p.process,
                    si(p.throughput_events_per_s),
                    p.rows,
                    p.network_bytes_sent as f64 / (1 << 20) as f64,
                    p.network_bytes_received as f64 / (1 << 20) as f64
                );
            }
        }
        if let Some(f) = &self.failover {
            let killed = match (f.killed_process, f.killed_after_checkpoint) {
                (Some(p), Some(c)) => format!("process {p} killed after global checkpoint {c}; "),
                _ => String::new(),
            };
            let first = f.kill_to_first_event_ms.map_or(String::new(), |ms| {
                format!("; first event {ms} ms after the kill")
            });
            let _ = writeln!(
                s,
                "  failover    {killed}{} restart(s), restored {} on {} process(es){first}",
                f.restarts,
                f.restored_from
                    .map_or("nothing".to_string(), |c| format!("global checkpoint {c}")),
                f.processes_after
            );
        }
        s
    }
}

fn si(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn us(x: u64) -> String {
    if x >= 1_000_000 {
        format!("{:.2} s", x as f64 / 1e6)
    } else if x >= 1_000 {
        format!("{:.2} ms", x as f64 / 1e3)
    } else {
        format!("{x} µs")
    }
}

/// Ticks per half distance of the percentile distribution (HdrHistogram's usual 5).
pub const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// `h` in HdrHistogram's percentile distribution format, values divided by
/// `scale` (1.0 keeps the recorded unit).
pub fn hgrm(h: &Histogram<u64>, scale: f64) -> String {
    let digits = usize::from(h.sigfig());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let p = v.quantile_iterated_to();
            if p < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.digits$} {p:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - p)
                );
            } else {
                let _ = writeln!(s, "{value:12.digits$} {p:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    // Sub-buckets per bucket: the power of two holding 2 · 10^digits.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(
        s,
        "#[Mean    = {mean:12.digits$}, StdDeviation   = {stdev:12.digits$}]"
    );
    let _ = writeln!(
        s,
        "#[Max     = {max:12.digits$}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    );
    s
}

/// Plots latency by percentile as SVG: x is `1/(1-p)` on a log scale (so 90 %,
/// 99 %, 99.9 % … are equally spaced), y the latency in milliseconds.
///
/// # Errors
/// If plotting fails (for example the file cannot be written).
pub fn latency_svg(h: &Histogram<u64>, title: &str, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let points: Vec<(f64, f64)> = if h.is_empty() {
        Vec::new()
    } else {
        h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE)
            .filter(|v| v.quantile_iterated_to() < 1.0)
            .map(|v| {
                (
                    1.0 / (1.0 - v.quantile_iterated_to()),
                    v.value_iterated_to() as f64 / 1000.0,
                )
            })
            .collect()
    };
    let x_max = points
        .iter()
        .map(|p| p.0)
        .fold(100.0f64, f64::max)
        .max(10.0);
    let y_max = if h.is_empty() {
        1.0
    } else {
        (h.max() as f64 / 1000.0 * 1.1).max(0.01)
    };
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0f64..x_max).log_scale(), 0.0f64..y_max)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 1.0 / x);
            format!("{p:.4}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
                + "%"
        })
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Writes `summary.json`, `summary.txt`, when latency was measured
/// `latency.hgrm` and `latency.svg`, and when the run took checkpoints
/// `checkpoints.svg` into `dir` (created if missing).
///
/// # Errors
/// If a file cannot be written.
pub fn write_report(dir: &Path, summary: &Summary, outcome: &RunOutcome) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("summary.json"), json + "\n")?;
    std::fs::write(dir.join("summary.txt"), summary.human())?;
    for stale in [
        "latency.hgrm",
        "latency.svg",
        "latency-us.txt",
        "checkpoints.svg",
    ] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    if outcome.latency_measured {
        write_latency(dir, summary, &outcome.latency_us)?;
    }
    if !outcome.checkpoints.is_empty() {
        let title = format!(
            "spate {} checkpoints ({}{}), {} core(s)",
            summary.query,
            summary.checkpoints.mode.as_deref().unwrap_or("-"),
            if summary.checkpoints.incremental == Some(true) {
                ", incremental"
            } else {
                ""
            },
            summary.cores
        );
        checkpoints_svg(
            &outcome.checkpoints,
            outcome.started_ms,
            &title,
            &dir.join("checkpoints.svg"),
        )
        .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// `latency.hgrm`, `latency.svg`, and `latency-us.txt` (every recorded
/// value and its count, which a cluster's launcher merges).
pub fn write_latency(dir: &Path, summary: &Summary, h: &Histogram<u64>) -> std::io::Result<()> {
    std::fs::write(dir.join("latency.hgrm"), hgrm(h, 1.0))?;
    let mut raw = String::new();
    for v in h.iter_recorded() {
        let _ = writeln!(raw, "{} {}", v.value_iterated_to(), v.count_at_value());
    }
    std::fs::write(dir.join("latency-us.txt"), raw)?;
    let title = format!(
        "spate {} latency, {} events/s, {} core(s)",
        summary.query,
        summary
            .config
            .get("rate_events_per_s")
            .and_then(|r| r.as_u64())
            .unwrap_or(0),
        summary.cores
    );
    latency_svg(h, &title, &dir.join("latency.svg")).map_err(std::io::Error::other)
}

/// The figures `compare` puts side by side: (name, JSON pointer, higher is better).
const COMPARED: [(&str, &str, bool); 12] = [
    ("elapsed_s", "/elapsed_s", false),
    ("throughput_events_per_s", "/throughput_events_per_s", true),
    ("latency_us.p50", "/latency_us/p50", false),
    ("latency_us.p90", "/latency_us/p90", false),
    ("latency_us.p99", "/latency_us/p99", false),
    ("latency_us.p999", "/latency_us/p999", false),
    ("latency_us.p9999", "/latency_us/p9999", false),
    ("latency_us.max", "/latency_us/max", false),
    (
        "checkpoints.duration_ms_p99",
        "/checkpoints/duration_ms_p99",
        false,
    ),
    (
        "checkpoints.sync_pause_us_p99",
        "/checkpoints/sync_pause_us_p99",
        false,
    ),
    ("checkpoints.bytes_total", "/checkpoints/bytes_total", false),
    ("peak_rss_bytes", "/peak_rss_bytes", false),
];

/// A table of two summaries' figures and their ratios `b / a`.
pub fn compare(a: &serde_json::Value, b: &serde_json::Value) -> String {
    let mut s = String::new();
    let text = |v: &serde_json::Value, p: &str| {
        v.pointer(p)
            .map(|x| x.to_string().trim_matches('"').to_string())
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        s,
        "A: {} {} events, {} core(s)   B: {} {} events, {} core(s)",
        text(a, "/query"),
        text(a, "/events"),
        text(a, "/cores"),
        text(b, "/query"),
        text(b, "/events"),
        text(b, "/cores"),
    );
    let _ = writeln!(s, "{:<30} {:>16} {:>16} {:>9}  ", "figure", "A", "B", "B/A");
    for (name, pointer, higher_is_better) in COMPARED {
        let x = a.pointer(pointer).and_then(|v| v.as_f64());
        let y = b.pointer(pointer).and_then(|v| v.as_f64());
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let (ratio, verdict) = match (x, y) {
            (Some(x), Some(y)) if x != 0.0 => {
                let r = y / x;
                let better = if higher_is_better { r > 1.0 } else { r < 1.0 };
                let verdict = if (r - 1.0).abs() < 0.005 {
                    ""
                } else if better {
                    "B better"
                } else {
                    "B worse"
                };
                (format!("{r:.3}"), verdict)
            }
            _ => ("-".to_string(), ""),
        };
        let _ = writeln!(
            s,
            "{name:<30} {:>16} {:>16} {ratio:>9}  {verdict}",
            fmt(x),
            fmt(y)
        );
    }
    s
}
