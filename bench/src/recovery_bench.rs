//! The recovery benchmark (`spate-bench recovery`): how fast a job with large
//! keyed state is back at work after a restart.
//!
//! **Prepare** (in this process): the checkpoint benchmark's keyed job
//! ([`crate::checkpoint_bench`]) fills `--state-mib` of state (a 120-byte
//! value per key), takes one full checkpoint into `--state-dir` and stops.
//!
//! **Measure** (a new process per run, `spate-bench recovery-child`, started
//! by this one): the same job, closed loop, updates only, for `--seconds`:
//! - `resumed`: restores the checkpoint (`RestoreFrom::Latest`): key groups
//!   are attached to their mapped blocks and loaded on first access or in the
//!   background, so records flow before the state is deserialised;
//! - `fresh`: starts without state (the baseline: process start, reactors,
//!   an empty job);
//! - `remote` (with `--remote URL`, where the prepared checkpoint was also
//!   committed): restores it onto an empty state directory from the remote
//!   tier (ranged reads of every block it references, then the local path).
//!
//! Figures per run, from the moment this process spawned the child (so exec,
//! loading and the runtime's start count): time to the first processed
//! update, and time to full throughput (the end of the first 100 ms window
//! whose rate reaches 90% of the median rate of the run's second half); also
//! the engine's restore duration (until every subtask had its state
//! attached). `--runs` runs per variant; medians are reported. Written to
//! `recovery-summary.json` in `--report` and as a table on stdout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use spate::{CheckpointConfig, Job, JobConfig, RestoreFrom};

use crate::checkpoint_bench::{build_with, processed, BenchConfig, Padded, Phase, ENTRY_BYTES};
use crate::checkpoints::mib;
use crate::report::Machine;
use crate::sink::{new_histogram, now_us};

/// The report file.
pub const SUMMARY_FILE: &str = "recovery-summary.json";

/// Throughput windows, µs.
const WINDOW_US: u64 = 100_000;

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryConfig {
    /// Cores (= parallelism).
    pub cores: usize,
    /// Keyed state, MiB of archived entries.
    pub state_mib: u64,
    /// Length of each measured run, seconds.
    pub seconds: f64,
    /// Measured runs per variant.
    pub runs: usize,
    /// Where the checkpoint goes.
    pub state_dir: PathBuf,
    /// Key groups.
    pub max_parallelism: u32,
    /// Serve each measured run's monitor on this address (`JobConfig::monitor`).
    #[serde(default)]
    pub monitor: Option<std::net::SocketAddr>,
    /// Remote tier (`--remote`).
    #[serde(default)]
    pub remote: Option<String>,
}

impl RecoveryConfig {
    /// The job's configuration, as the checkpoint benchmark's (closed loop).
    fn bench(&self) -> BenchConfig {
        BenchConfig {
            cores: self.cores,
            state_mib: self.state_mib,
            rate_events_per_s: None,
            state_dir: self.state_dir.clone(),
            max_parallelism: self.max_parallelism,
            ..BenchConfig::default()
        }
    }

    fn job_config(&self, restore: RestoreFrom) -> JobConfig {
        let mut job = JobConfig::with_parallelism(self.cores);
        job.max_parallelism = self.max_parallelism;
        job.checkpoint = Some(CheckpointConfig {
            restore,
            timeout_ms: 600_000,
            remote: self.remote.clone(),
            ..CheckpointConfig::new(&self.state_dir, 0)
        });
        job.monitor = self
            .monitor
            .map(|a| spate::MonitorConfig::new(a).with_job_name("recovery"));
        job
    }
}

/// One measured run, as the child reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunFigures {
    /// `resumed` or `fresh`.
    pub variant: String,
    /// From spawning the process to the first processed update, ms.
    pub first_record_ms: f64,
    /// From spawning the process to full throughput, ms (`None`: not within
    /// the run).
    pub full_throughput_ms: Option<f64>,
    /// The engine's restore duration (state attached on every subtask), ms.
    pub restore_ms: Option<f64>,
    /// The checkpoint restored.
    pub restored_from: Option<u64>,
    /// Median rate of the run's second half, updates/s.
    pub steady_updates_per_s: f64,
}

/// The benchmark's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoverySummary {
    /// The configuration.
    pub config: RecoveryConfig,
    /// State bytes (archived entries).
    pub state_bytes: u64,
    /// Bytes of the prepared checkpoint.
    pub checkpoint_bytes: u64,
    /// Every run.
    pub runs: Vec<RunFigures>,
    /// Medians per variant: (variant, first record ms, full throughput ms).
    pub medians: Vec<(String, f64, Option<f64>)>,
    /// Whether the resumed job processed records within 1 s (median).
    pub resumed_within_1s: bool,
    /// The machine.
    pub machine: Machine,
}

/// Prepares the checkpoint, then measures `runs` resumed and fresh starts of
/// `exe` (this program).
pub fn run(config: &RecoveryConfig, exe: &Path) -> anyhow::Result<RecoverySummary> {
    if config.cores == 0 || config.state_mib == 0 || config.runs == 0 {
        bail!("--cores, --state-mib and --runs must be at least 1");
    }
    let checkpoint_bytes = prepare(config).context("preparing the checkpoint")?;
    let variants: &[&str] = if config.remote.is_some() {
        &["resumed", "fresh", "remote"]
    } else {
        &["resumed", "fresh"]
    };
    let mut runs = Vec::new();
    for i in 0..config.runs {
        for &variant in variants {
            eprintln!("spate-bench recovery: {variant} run {}", i + 1);
            runs.push(spawn_child(config, exe, variant)?);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let medians: Vec<(String, f64, Option<f64>)> = variants
        .iter()
        .map(|variant| {
            let of = |f: &dyn Fn(&RunFigures) -> Option<f64>| {
                median(
                    runs.iter()
                        .filter(|r| r.variant == *variant)
                        .filter_map(f)
                        .collect(),
                )
            };
            (
                variant.to_string(),
                of(&|r| Some(r.first_record_ms)).unwrap_or(f64::NAN),
                of(&|r| r.full_throughput_ms),
            )
        })
        .collect();
    let resumed_within_1s = medians[0].1 < 1000.0;
    Ok(RecoverySummary {
        config: config.clone(),
        state_bytes: config.bench().keys() * ENTRY_BYTES,
        checkpoint_bytes,
        runs,
        medians,
        resumed_within_1s,
        machine: Machine::current(),
    })
}

/// Fills the state and takes one checkpoint; returns its bytes.
fn prepare(config: &RecoveryConfig) -> anyhow::Result<u64> {
    if let Some(url) = &config.remote {
        crate::remote_run::clear(url)?;
    }
    match std::fs::remove_dir_all(&config.state_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("removing {}", config.state_dir.display())),
    }
    let bench = config.bench();
    let keys = bench.keys();
    eprintln!(
        "spate-bench recovery: filling {} keys ({}) on {} cores",
        keys,
        mib(keys * ENTRY_BYTES),
        config.cores
    );
    let phase = Arc::new(Phase::default());
    let counters: Arc<Vec<Padded>> =
        Arc::new((0..config.cores).map(|_| Padded::default()).collect());
    let latency = Arc::new(Mutex::new(new_histogram()));
    let handle = {
        let (bench, phase, counters, latency) = (
            bench.clone(),
            phase.clone(),
            counters.clone(),
            latency.clone(),
        );
        Job::new(config.job_config(RestoreFrom::Nothing))
            .start(move |df| build_with(df, &bench, &phase, &counters, &latency, false))?
    };
    while processed(&counters) < keys {
        if !handle.is_running() {
            bail!("the job ended during the fill");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.trigger_checkpoint();
    while handle.completed_checkpoints() < 1 {
        if !handle.is_running() || handle.failed_checkpoints() > 0 {
            bail!("the checkpoint of the filled state did not complete");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let bytes = handle
        .checkpoint_stats()
        .last()
        .map_or(0, |s| s.state_bytes + s.in_flight_bytes);
    handle.stop();
    handle.join()?;
    eprintln!("spate-bench recovery: checkpoint of {} written", mib(bytes));
    Ok(bytes)
}

/// The empty directory the `remote` variant restores into.
fn remote_restore_dir(config: &RecoveryConfig) -> PathBuf {
    let mut name = config.state_dir.as_os_str().to_owned();
    name.push("-remote-restore");
    PathBuf::from(name)
}

fn spawn_child(config: &RecoveryConfig, exe: &Path, variant: &str) -> anyhow::Result<RunFigures> {
    // `remote`: an empty directory and the remote tier; the others: the
    // local checkpoint alone.
    let (state_dir, remote) = if variant == "remote" {
        let dir = remote_restore_dir(config);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("removing {}", dir.display())),
        }
        (dir, config.remote.clone())
    } else {
        (config.state_dir.clone(), None)
    };
    let spawned_us = now_us();
    let out = Command::new(exe)
        .arg("recovery-child")
        .args(["--variant", variant])
        .args(["--spawned-us", &spawned_us.to_string()])
        .args(["--cores", &config.cores.to_string()])
        .args(["--state-mib", &config.state_mib.to_string()])
        .args(["--seconds", &config.seconds.to_string()])
        .args(["--max-parallelism", &config.max_parallelism.to_string()])
        .args(config.monitor.map(|a| format!("--monitor={a}")))
        .args(remote.map(|url| format!("--remote={url}")))
        .arg("--state-dir")
        .arg(&state_dir)
        .output()
        .context("spawning the measured run")?;
    if !out.status.success() {
        bail!(
            "the {variant} run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("reading the {variant} run's figures: {line}"))
}

/// The measured run (in the child process): prints its [`RunFigures`] as one
/// JSON line.
pub fn child(config: &RecoveryConfig, variant: &str, spawned_us: u64) -> anyhow::Result<()> {
    let resumed = match variant {
        "resumed" | "remote" => true,
        "fresh" => false,
        other => bail!("unknown variant {other}: resumed or fresh"),
    };
    let bench = config.bench();
    let phase = Arc::new(Phase::default());
    phase.update_start_us.store(now_us(), Ordering::Release);
    let counters: Arc<Vec<Padded>> =
        Arc::new((0..config.cores).map(|_| Padded::default()).collect());
    let latency = Arc::new(Mutex::new(new_histogram()));
    let restore = if resumed {
        RestoreFrom::Latest
    } else {
        RestoreFrom::Nothing
    };
    let handle = {
        let (bench, phase, counters, latency) = (
            bench.clone(),
            phase.clone(),
            counters.clone(),
            latency.clone(),
        );
        Job::new(config.job_config(restore))
            .start(move |df| build_with(df, &bench, &phase, &counters, &latency, !resumed))?
    };
    // Samples of (µs since spawn, updates processed), every millisecond.
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(config.seconds);
    while Instant::now() < end && handle.is_running() {
        samples.push((now_us().saturating_sub(spawned_us), processed(&counters)));
        std::thread::sleep(Duration::from_millis(1));
    }
    handle.stop();
    let report = handle.join()?;
    if resumed && report.restored_from.is_none() {
        bail!(
            "the resumed run found no checkpoint in {}",
            config.state_dir.display()
        );
    }
    let figures = figures(variant, &samples, &report);
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}

fn figures(variant: &str, samples: &[(u64, u64)], report: &spate::JobReport) -> RunFigures {
    let first_record_us = samples
        .iter()
        .find(|(_, n)| *n > 0)
        .map_or(u64::MAX, |(t, _)| *t);
    // Rates of consecutive 100 ms windows: (window end µs, updates/s).
    let mut windows: Vec<(u64, f64)> = Vec::new();
    let mut start = 0;
    for i in 0..samples.len() {
        let (t0, n0) = samples[start];
        let (t, n) = samples[i];
        if t - t0 >= WINDOW_US {
            windows.push((t, (n - n0) as f64 * 1e6 / (t - t0) as f64));
            start = i;
        }
    }
    let mut second_half: Vec<f64> = windows[windows.len() / 2..].iter().map(|w| w.1).collect();
    second_half.sort_by(f64::total_cmp);
    let steady = second_half
        .get(second_half.len() / 2)
        .copied()
        .unwrap_or(0.0);
    let full = windows
        .iter()
        .find(|(_, rate)| steady > 0.0 && *rate >= 0.9 * steady)
        .map(|(t, _)| *t as f64 / 1000.0);
    RunFigures {
        variant: variant.to_string(),
        first_record_ms: first_record_us as f64 / 1000.0,
        full_throughput_ms: full,
        restore_ms: report.restore_duration.map(|d| d.as_secs_f64() * 1000.0),
        restored_from: report.restored_from,
        steady_updates_per_s: steady,
    }
}

impl RecoverySummary {
    /// The table printed on stdout.
    pub fn human(&self) -> String {
        let mut out = format!(
            "spate-bench recovery: {} of keyed state ({} checkpoint) on {} core(s), {} run(s) per variant\n",
            mib(self.state_bytes),
            mib(self.checkpoint_bytes),
            self.config.cores,
            self.config.runs
        );
        out += "  variant   first record   full throughput   restore   steady rate\n";
        for r in &self.runs {
            out += &format!(
                "  {:<8} {:>10.0} ms {:>14} {:>9} {:>10.2} M/s\n",
                r.variant,
                r.first_record_ms,
                r.full_throughput_ms
                    .map_or("-".to_string(), |v| format!("{v:.0} ms")),
                r.restore_ms
                    .map_or("-".to_string(), |v| format!("{v:.0} ms")),
                r.steady_updates_per_s / 1e6
            );
        }
        for (variant, first, full) in &self.medians {
            out += &format!(
                "  median {variant}: first record {first:.0} ms, full throughput {}\n",
                full.map_or("-".to_string(), |v| format!("{v:.0} ms"))
            );
        }
        out += &format!(
            "  target: resumed job processing records within 1 s: {}\n",
            if self.resumed_within_1s {
                "met"
            } else {
                "missed"
            }
        );
        out
    }
}
