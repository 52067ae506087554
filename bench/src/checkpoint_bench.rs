//! The checkpoint benchmark (`spate-bench checkpoints`): what checkpoints cost
//! a keyed job with large state.
//!
//! **The job.** `updates → key_by(key) → update → latency sink` on every core.
//! The keyed `update` operator keeps a [`ValueState`](spate::ValueState) of a
//! [`Payload`] (120 bytes) per key; an archived entry (8-byte key + payload) is
//! [`ENTRY_BYTES`], so `--state-mib M` means `K = M MiB / 128` keys. The source
//! ([`UpdateSource`]) first emits every key once, as fast as the job takes them
//! (**fill phase**), then — once the driver says so — `rate × seconds` updates
//! `(key, index)` with keys uniform in `0..K` (a SplitMix64 hash of the index),
//! open loop at `--rate` (**update phase**): update `i` is due at `start +
//! i / rate` and is not emitted before; a late engine does not delay the
//! schedule, so every 64th update's delay from its due time to the sink is a
//! latency without coordinated omission, and checkpoint pauses show in it.
//!
//! **One invocation, three variants**, run one after the other on fresh state:
//! (a) `none`: no checkpoints; (b) `full`: every checkpoint writes the whole
//! state; (c) `incremental`: deltas on bases, bases renewed gradually (the
//! engine's defaults: chain of at most 4 deltas, deltas at most the base's size).
//!
//! **Checkpoints** go through the engine (`JobConfig.checkpoint`, io_uring
//! writes into `<state-dir>/checkpoints-<variant>`), triggered by the driver
//! through [`JobHandle::trigger_checkpoint`] (cause `manual`; the engine's
//! interval is 0): the engine's periodic trigger counts from the job's start,
//! which would put checkpoints into the fill phase — and an incremental
//! baseline would then be a delta, not a full copy. One *baseline* checkpoint
//! after the fill (the first full copy of the state, which incremental
//! checkpoints build on; reported apart), then one every
//! `--checkpoint-interval-ms` from the update phase's start ([`Trigger`]). As
//! with the engine's interval, a trigger due while a checkpoint is in progress
//! fires as soon as that one ends.
//!
//! **Figures per variant** (update phase only): throughput (updates / time
//! from the phase's start to the last update processed), its ratio to (a),
//! latency percentiles, checkpoint end-to-end duration p50/p99, per-core
//! synchronous pause p50/p99/max, asynchronous and alignment p99, bytes per
//! checkpoint (mean; full bases and deltas apart). Written as
//! `checkpoints-summary.json` (and the table as `checkpoints-summary.txt`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use spate::sink::Sink;
use spate::source::{Source, SourceContext, SourcePoll};
use spate::time::Clock;
use spate::{
    CheckpointStats, CheckpointStatus, Dataflow, Job, JobConfig, JobHandle, KeyedContext, Record,
    RestoreFrom, SinkError, SourceError, WatermarkStrategy,
};

use crate::checkpoints::{mib, quantile, CheckpointSettings, CheckpointSummary};
use crate::report::{peak_rss_bytes, reset_peak_rss, LatencySummary, Machine};
use crate::sink::{new_histogram, now_us};

/// The report file.
pub const SUMMARY_FILE: &str = "checkpoints-summary.json";

/// Words of a [`Payload`].
pub const VALUE_WORDS: usize = 15;

/// A key's state: 120 bytes.
pub type Payload = [u64; VALUE_WORDS];

/// Bytes of one archived state entry: the `u64` key and the payload.
pub const ENTRY_BYTES: u64 = 8 + 8 * VALUE_WORDS as u64;

/// Every this many updates, one's latency is recorded.
pub const LATENCY_SAMPLE_EVERY: u64 = 64;

/// The `index` of fill-phase records.
const FILL: u64 = u64::MAX;

/// How long after the driver opens the update phase its first update is due.
const UPDATE_LEAD_US: u64 = 20_000;

/// Longest wait for the fill phase or the baseline checkpoint.
const PHASE_DEADLINE: Duration = Duration::from_secs(600);

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Cores (= parallelism).
    pub cores: usize,
    /// Target keyed state, MiB of archived entries.
    pub state_mib: u64,
    /// Duration of the update phase at the rate, seconds.
    pub seconds: f64,
    /// Update rate over all cores; `None`: as fast as possible (then
    /// `rate × seconds` is replaced by [`CLOSED_LOOP_UPDATES_PER_KEY`]` × K`).
    pub rate_events_per_s: Option<u64>,
    /// Time between checkpoint triggers in the update phase, ms.
    pub interval_ms: u64,
    /// Barrier mode name.
    pub mode: String,
    /// Alignment timeout (`aligned-timeout` only).
    pub alignment_timeout_ms: Option<u64>,
    /// Where the variants' checkpoint directories go.
    pub state_dir: PathBuf,
    /// Remote tier URL (`--remote`): each variant checkpoints under its own
    /// prefix below it, emptied first.
    pub remote: Option<String>,
    /// Keep the checkpoint directories after the run.
    pub keep_state: bool,
    /// Seed of the update keys.
    pub seed: u64,
    /// Key groups (the engine's max parallelism): a snapshot pauses a reactor
    /// for at most one key group's archiving, so more, smaller key groups
    /// mean shorter pauses.
    pub max_parallelism: u32,
    /// Deltas a key group's chain may hold before a fresh base (incremental
    /// variant; `None`: the engine's default). Each checkpoint renews about
    /// 1/(n+1) of the changed key groups, so this sets the base bytes per
    /// checkpoint.
    pub max_delta_chain: Option<u32>,
    /// Serve each job's monitor on this address (`JobConfig::monitor`).
    #[serde(default)]
    pub monitor: Option<std::net::SocketAddr>,
}

/// Updates per key of a closed-loop run.
pub const CLOSED_LOOP_UPDATES_PER_KEY: u64 = 2;

impl Default for BenchConfig {
    /// The configuration: about 1 GiB of state on the available cores,
    /// 20 s of updates at 200 k/s (2.4% of the keys change every second),
    /// checkpoints every second, aligned.
    fn default() -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            state_mib: 1024,
            seconds: 20.0,
            rate_events_per_s: Some(200_000),
            interval_ms: 1000,
            mode: "aligned".to_string(),
            alignment_timeout_ms: None,
            state_dir: PathBuf::from("spate-state"),
            remote: None,
            keep_state: false,
            seed: 0,
            max_parallelism: 4096,
            max_delta_chain: None,
            monitor: None,
        }
    }
}

impl BenchConfig {
    /// A configuration that runs in a few seconds: 16 MiB of state, 2 s at
    /// 200 k updates/s, checkpoints every 200 ms.
    pub fn quick() -> Self {
        Self {
            state_mib: 16,
            seconds: 2.0,
            rate_events_per_s: Some(200_000),
            interval_ms: 200,
            // 16 MiB in 128 key groups: 128 KiB each, as 1 GiB in 4096 (and a
            // cut walks 32 times fewer key groups).
            max_parallelism: 128,
            ..Self::default()
        }
    }

    /// Number of keys.
    pub fn keys(&self) -> u64 {
        (self.state_mib << 20) / ENTRY_BYTES
    }

    /// Number of updates.
    pub fn updates(&self) -> u64 {
        match self.rate_events_per_s {
            Some(rate) => (rate as f64 * self.seconds) as u64,
            None => self.keys() * CLOSED_LOOP_UPDATES_PER_KEY,
        }
    }
}

/// One update: `index` is the update's number (its due time), [`FILL`] in
/// the fill phase.
#[derive(Clone, Copy, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
pub struct Update {
    /// The key.
    pub key: u64,
    /// Update number, or `u64::MAX` for a fill record.
    pub index: u64,
}

/// SplitMix64's finaliser: the key of update `index`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Shared between the driver and the job: when the update phase starts.
#[derive(Debug, Default)]
pub struct Phase {
    /// Due time of update 0 (epoch µs); 0 until the driver opens the phase.
    pub update_start_us: AtomicU64,
}

impl Phase {
    fn start_us(&self) -> Option<u64> {
        match self.update_start_us.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }
}

/// The benchmark's source: subtask `s` of `p` emits the keys `s, s + p, …`
/// below `keys` (fill), waits for the update phase, then the updates
/// `s, s + p, …` below `updates`, each not before its due time.
///
/// The offset is the number of records the subtask emitted (fill first).
pub struct UpdateSource {
    keys: u64,
    updates: u64,
    seed: u64,
    rate: Option<u64>,
    phase: Arc<Phase>,
    clock: Arc<dyn Clock>,
    subtask: u64,
    stride: u64,
    /// Records emitted by this subtask.
    emitted: u64,
    /// This subtask's fill records (known after `open`).
    fill: u64,
    /// Start with the updates (no fill phase): a fresh start compared with
    /// a restored one in the recovery benchmark.
    skip_fill: bool,
}

impl UpdateSource {
    /// A source of `keys` fill records then `updates` updates at `rate`.
    pub fn new(
        keys: u64,
        updates: u64,
        seed: u64,
        rate: Option<u64>,
        phase: Arc<Phase>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            keys,
            updates,
            seed,
            rate,
            phase,
            clock,
            subtask: 0,
            stride: 1,
            emitted: 0,
            fill: keys,
            skip_fill: false,
        }
    }

    /// Starts with the updates, without the fill phase.
    pub fn skipping_fill(mut self) -> Self {
        self.skip_fill = true;
        self
    }

    fn due_us(&self, start_us: u64, index: u64) -> u64 {
        match self.rate {
            Some(rate) => start_us + (index as u128 * 1_000_000 / rate as u128) as u64,
            None => 0,
        }
    }
}

impl Source<Update> for UpdateSource {
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        self.subtask = context.subtask as u64;
        self.stride = context.parallelism.max(1) as u64;
        self.fill = self.keys.saturating_sub(self.subtask).div_ceil(self.stride);
        if self.skip_fill {
            self.emitted = self.emitted.max(self.fill);
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Update>, max: usize) -> Result<SourcePoll, SourceError> {
        let mut room = max;
        while self.emitted < self.fill && room > 0 {
            out.push(Update {
                key: self.subtask + self.emitted * self.stride,
                index: FILL,
            });
            self.emitted += 1;
            room -= 1;
        }
        if room == 0 {
            return Ok(SourcePoll::Ready);
        }
        let Some(start_us) = self.phase.start_us() else {
            // Waiting for the driver to open the update phase.
            return Ok(SourcePoll::PendingUntilUs(self.clock.now_us() + 1000));
        };
        let now_us = self.rate.map(|_| now_us());
        while room > 0 {
            let index = self.subtask + (self.emitted - self.fill) * self.stride;
            if index >= self.updates {
                return Ok(SourcePoll::Finished);
            }
            if let Some(now_us) = now_us {
                let due = self.due_us(start_us, index);
                if due > now_us {
                    return Ok(SourcePoll::PendingUntilUs(due));
                }
            }
            out.push(Update {
                key: mix(self.seed ^ index) % self.keys,
                index,
            });
            self.emitted += 1;
            room -= 1;
        }
        Ok(SourcePoll::Ready)
    }

    fn offset(&self) -> u64 {
        self.emitted
    }

    fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        self.emitted = offset;
        Ok(())
    }
}

/// A counter on its own cache lines (one writer: its subtask).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded(pub AtomicU64);

/// Records the latency of the sampled updates it receives (their indices).
struct LatencySink {
    phase: Arc<Phase>,
    rate: Option<u64>,
    histogram: Histogram<u64>,
    totals: Arc<Mutex<Histogram<u64>>>,
}

impl Sink<u64> for LatencySink {
    fn write(&mut self, batch: &mut Vec<Record<u64>>) -> Result<(), SinkError> {
        if let (Some(rate), Some(start)) = (self.rate, self.phase.start_us()) {
            let now = now_us();
            for record in batch.iter() {
                let due = start + (record.value as u128 * 1_000_000 / rate as u128) as u64;
                self.histogram
                    .saturating_record(now.saturating_sub(due).max(1));
            }
        }
        batch.clear();
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.totals
            .lock()
            .map_err(|_| SinkError::Other("latency histogram lock poisoned".into()))?
            .add(&self.histogram)
            .map_err(|e| SinkError::Other(format!("merging latency histograms: {e:?}")))
    }
}

/// Declares the job on one subtask.
pub(crate) fn build(
    df: &Dataflow,
    config: &BenchConfig,
    phase: &Arc<Phase>,
    processed: &Arc<Vec<Padded>>,
    latency: &Arc<Mutex<Histogram<u64>>>,
) {
    build_with(df, config, phase, processed, latency, false)
}

/// [`build`], optionally without the fill phase.
pub(crate) fn build_with(
    df: &Dataflow,
    config: &BenchConfig,
    phase: &Arc<Phase>,
    processed: &Arc<Vec<Padded>>,
    latency: &Arc<Mutex<Histogram<u64>>>,
    skip_fill: bool,
) {
    let mut source = UpdateSource::new(
        config.keys(),
        config.updates(),
        config.seed,
        config.rate_events_per_s,
        phase.clone(),
        df.clock(),
    );
    if skip_fill {
        source = source.skipping_fill();
    }
    let counters = processed.clone();
    let subtask = df.subtask();
    df.source("updates", source, WatermarkStrategy::none())
        .key_by(|u: &Update| u.key)
        .process("update", move |state| {
            let value = state.value_state::<Payload>("value");
            let counters = counters.clone();
            move |u: Update, ctx: &mut KeyedContext<u64, u64>| {
                value.update(
                    ctx,
                    || [u.key; VALUE_WORDS],
                    |v| {
                        v[0] = u.index;
                        v[1] = v[1].wrapping_add(1);
                    },
                );
                let counter = &counters[subtask].0;
                counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                if u.index != FILL && u.index % LATENCY_SAMPLE_EVERY == 0 {
                    ctx.emit(u.index);
                }
                Ok(())
            }
        })
        .sink(
            "latency",
            LatencySink {
                phase: phase.clone(),
                rate: config.rate_events_per_s,
                histogram: new_histogram(),
                totals: latency.clone(),
            },
        );
}

/// A variant of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// No checkpoints.
    None,
    /// Full checkpoints.
    Full,
    /// Incremental checkpoints.
    Incremental,
}

impl Variant {
    /// The variant's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Full => "full",
            Variant::Incremental => "incremental",
        }
    }
}

/// The baseline checkpoint taken after the fill phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineCheckpoint {
    /// End-to-end duration.
    pub duration_ms: u64,
    /// State and in-flight bytes written.
    pub bytes: u64,
    /// Longest synchronous pause of a core.
    pub sync_pause_us_max: u64,
    /// Longest asynchronous part of a core.
    pub async_us_max: u64,
}

/// The figures of one variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantSummary {
    /// `none`, `full` or `incremental`.
    pub name: String,
    /// Fill phase: wall time, s.
    pub fill_s: f64,
    /// Fill phase: keys inserted per second.
    pub fill_events_per_s: f64,
    /// The baseline checkpoint after the fill (checkpointing variants).
    pub baseline_checkpoint: Option<BaselineCheckpoint>,
    /// Updates processed in the update phase.
    pub updates: u64,
    /// Update phase: from the first update's due time to the last processed, s.
    pub update_s: f64,
    /// `updates / update_s`.
    pub throughput_events_per_s: f64,
    /// Throughput over that of the `none` variant.
    pub throughput_ratio_to_none: Option<f64>,
    /// Latency of sampled updates, µs (open loop only).
    pub latency_us: LatencySummary,
    /// Checkpoints triggered in the update phase.
    pub checkpoints: CheckpointSummary,
    /// Mean bytes per completed checkpoint (state + in flight).
    pub bytes_per_checkpoint_mean: Option<f64>,
    /// Of which full bases, mean.
    pub full_bytes_per_checkpoint_mean: Option<f64>,
    /// Of which deltas, mean.
    pub delta_bytes_per_checkpoint_mean: Option<f64>,
    /// Median asynchronous part of a core, µs.
    pub async_us_p50: Option<u64>,
    /// Peak RSS of the variant, bytes: the process's, its high-water mark
    /// reset as the variant starts (memory an earlier variant freed but the
    /// allocator kept counts; `None` if the mark could not be reset or read).
    pub peak_rss_bytes: Option<u64>,
    /// Every checkpoint of the update phase, in trigger order.
    pub each_checkpoint: Vec<CheckpointLine>,
}

/// One checkpoint of the update phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointLine {
    /// Checkpoint id.
    pub id: u64,
    /// Trigger time, ms after the update phase started.
    pub at_ms: u64,
    /// `completed`, or `failed: reason`.
    pub status: String,
    /// End-to-end duration, ms.
    pub duration_ms: u64,
    /// Full bases written, bytes.
    pub full_bytes: u64,
    /// Deltas written, bytes.
    pub delta_bytes: u64,
    /// Longest synchronous pause of a core, µs.
    pub sync_pause_us_max: u64,
    /// Longest asynchronous part of a core, µs.
    pub async_us_max: u64,
}

/// Whether the targets were met.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Targets {
    /// Incremental: synchronous pause p99 (µs) < 1000.
    pub incremental_sync_pause_us_p99: Option<u64>,
    /// Met?
    pub incremental_sync_pause_ok: bool,
    /// Incremental: end-to-end duration p99 (ms) < 100.
    pub incremental_duration_ms_p99: Option<f64>,
    /// Met?
    pub incremental_duration_ok: bool,
    /// Full: end-to-end duration p99 (ms) < 100.
    pub full_duration_ms_p99: Option<f64>,
    /// Met?
    pub full_duration_ok: bool,
    /// Throughput ratios (full, incremental) to none >= 0.95.
    pub throughput_ratios: (Option<f64>, Option<f64>),
    /// Met (both)?
    pub throughput_ok: bool,
}

/// `checkpoints-summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchSummary {
    /// The configuration.
    pub config: BenchConfig,
    /// Keys (state entries).
    pub keys: u64,
    /// Archived bytes per entry.
    pub entry_bytes: u64,
    /// `keys × entry_bytes`.
    pub state_bytes: u64,
    /// Updates per variant.
    pub updates: u64,
    /// (a) none, (b) full, (c) incremental.
    pub variants: Vec<VariantSummary>,
    /// The targets.
    pub targets: Targets,
    /// The machine.
    pub machine: Machine,
    /// Version of spate-bench.
    pub spate_bench_version: String,
}

/// Runs the three variants.
///
/// # Errors
/// A bad configuration, or a job that fails or does not get through a phase.
pub fn run(config: &BenchConfig) -> anyhow::Result<BenchSummary> {
    if config.cores == 0 {
        bail!("--cores must be at least 1");
    }
    if config.keys() == 0 {
        bail!("--state-mib must be at least 1");
    }
    if config.updates() == 0 {
        bail!("no updates: raise --seconds or --rate");
    }
    let mut variants: Vec<VariantSummary> = Vec::new();
    for variant in [Variant::None, Variant::Full, Variant::Incremental] {
        eprintln!(
            "spate-bench checkpoints: variant {} ({} keys, {} of state, {} updates)",
            variant.name(),
            config.keys(),
            mib(config.keys() * ENTRY_BYTES),
            config.updates()
        );
        let mut v =
            run_variant(config, variant).with_context(|| format!("variant {}", variant.name()))?;
        if let Some(none) = variants.first() {
            v.throughput_ratio_to_none =
                Some(v.throughput_events_per_s / none.throughput_events_per_s);
        }
        variants.push(v);
    }
    let by = |name: &str| variants.iter().find(|v| v.name == name);
    let (full, incremental) = (by("full"), by("incremental"));
    let incremental_sync = incremental.and_then(|v| v.checkpoints.sync_pause_us_p99);
    let incremental_duration = incremental.and_then(|v| v.checkpoints.duration_ms_p99);
    let full_duration = full.and_then(|v| v.checkpoints.duration_ms_p99);
    let ratios = (
        full.and_then(|v| v.throughput_ratio_to_none),
        incremental.and_then(|v| v.throughput_ratio_to_none),
    );
    let targets = Targets {
        incremental_sync_pause_us_p99: incremental_sync,
        incremental_sync_pause_ok: incremental_sync.is_some_and(|p| p < 1000),
        incremental_duration_ms_p99: incremental_duration,
        incremental_duration_ok: incremental_duration.is_some_and(|d| d < 100.0),
        full_duration_ms_p99: full_duration,
        full_duration_ok: full_duration.is_some_and(|d| d < 100.0),
        throughput_ratios: ratios,
        throughput_ok: ratios.0.is_some_and(|r| r >= 0.95) && ratios.1.is_some_and(|r| r >= 0.95),
    };
    Ok(BenchSummary {
        config: config.clone(),
        keys: config.keys(),
        entry_bytes: ENTRY_BYTES,
        state_bytes: config.keys() * ENTRY_BYTES,
        updates: config.updates(),
        variants,
        targets,
        machine: Machine::current(),
        spate_bench_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// The driver's checkpoint schedule (see the module docs): triggers a
/// checkpoint every interval, never while one is in progress; poll it often
/// (every millisecond).
#[derive(Debug)]
struct Trigger {
    interval_us: u64,
    next_us: u64,
    /// While a checkpoint triggered here may not have started or ended yet:
    /// the checkpoints finished (completed or failed) when it was triggered.
    pending: Option<u64>,
}

/// Checkpoints finished so far, completed or failed.
fn finished_checkpoints(handle: &JobHandle) -> u64 {
    handle.completed_checkpoints() + handle.failed_checkpoints()
}

impl Trigger {
    /// The first trigger at `first_us` (epoch µs), then every `interval_ms`.
    fn new(first_us: u64, interval_ms: u64) -> Self {
        Self {
            interval_us: interval_ms.max(1) * 1000,
            next_us: first_us,
            pending: None,
        }
    }

    /// Whether a checkpoint is in progress, or triggered here and not
    /// started yet (the coordinator has not seen the request).
    fn in_progress(&mut self, handle: &JobHandle) -> bool {
        if let Some(before) = self.pending {
            if finished_checkpoints(handle) == before {
                return true;
            }
            self.pending = None;
        }
        handle.checkpoint_in_progress()
    }

    /// Triggers now regardless of the schedule (if none is in progress);
    /// returns whether it did.
    fn trigger_now(&mut self, handle: &JobHandle) -> bool {
        if self.in_progress(handle) {
            return false;
        }
        self.pending = Some(finished_checkpoints(handle));
        handle.trigger_checkpoint();
        true
    }

    /// Triggers a checkpoint if one is due at `now_us` and none is in progress.
    fn poll(&mut self, handle: &JobHandle, now_us: u64) {
        if now_us < self.next_us || !self.trigger_now(handle) {
            return;
        }
        while self.next_us <= now_us {
            self.next_us += self.interval_us;
        }
    }
}

pub(crate) fn processed(counters: &[Padded]) -> u64 {
    counters.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
}

/// Waits until `done()` or the job ends; false if the job ended first.
fn wait_for(
    handle: &JobHandle,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    while !done() {
        if !handle.is_running() {
            return Ok(false);
        }
        if Instant::now() > deadline {
            bail!("{what} did not finish within {PHASE_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(true)
}

fn run_variant(config: &BenchConfig, variant: Variant) -> anyhow::Result<VariantSummary> {
    let peak_reset = reset_peak_rss();
    let keys = config.keys();
    let updates = config.updates();
    let phase = Arc::new(Phase::default());
    let counters: Arc<Vec<Padded>> =
        Arc::new((0..config.cores).map(|_| Padded::default()).collect());
    let latency = Arc::new(Mutex::new(new_histogram()));
    let mut job_config = JobConfig::with_parallelism(config.cores);
    job_config.max_parallelism = config.max_parallelism;
    job_config.monitor = config
        .monitor
        .map(|a| spate::MonitorConfig::new(a).with_job_name("checkpoints"));
    let settings = (variant != Variant::None).then(|| CheckpointSettings {
        state_dir: config
            .state_dir
            .join(format!("checkpoints-{}", variant.name())),
        // Triggered by the driver (see the module docs), not by the engine.
        interval_ms: 0,
        mode: config.mode.clone(),
        alignment_timeout_ms: config.alignment_timeout_ms,
        incremental: variant == Variant::Incremental,
        // Each variant under its own prefix, emptied like its directory.
        remote: config
            .remote
            .as_ref()
            .map(|url| crate::remote_run::sub_url(url, &format!("checkpoints-{}", variant.name()))),
    });
    if let Some(settings) = &settings {
        if let Some(url) = &settings.remote {
            crate::remote_run::clear(url)?;
        }
        match std::fs::remove_dir_all(&settings.state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing {}", settings.state_dir.display()))
            }
        }
        let mut engine = settings
            .engine_config(RestoreFrom::Nothing)
            .map_err(anyhow::Error::msg)?;
        if let Some(n) = config.max_delta_chain {
            engine.max_delta_chain = n;
        }
        job_config.checkpoint = Some(engine);
    }
    let handle = {
        let (config, phase, counters, latency) = (
            config.clone(),
            phase.clone(),
            counters.clone(),
            latency.clone(),
        );
        Job::new(job_config)
            .start(move |df| build(df, &config, &phase, &counters, &latency))
            .context("starting the job")?
    };
    if let Some(address) = handle.monitor_address() {
        eprintln!("spate-bench: monitor on http://{address}/ (metrics: /metrics)");
    }

    // Fill phase.
    let fill_started = Instant::now();
    if !wait_for(&handle, "the fill phase", || processed(&counters) >= keys)? {
        handle
            .join()
            .context("the job failed during the fill phase")?;
        bail!("the job ended during the fill phase");
    }
    let fill_s = fill_started.elapsed().as_secs_f64();

    // Baseline checkpoint.
    let mut trigger = Trigger::new(now_us(), config.interval_ms);
    if settings.is_some() {
        let before = handle.completed_checkpoints();
        trigger.trigger_now(&handle);
        let ok = wait_for(&handle, "the baseline checkpoint", || {
            !trigger.in_progress(&handle)
        })?;
        if !ok || handle.completed_checkpoints() == before {
            handle.stop();
            let failed = handle.failed_checkpoints();
            let stats = handle.checkpoint_stats();
            let report = handle.join();
            bail!(
                "the baseline checkpoint failed ({failed} failed checkpoint(s)): {stats:?} {:?}",
                report.err()
            );
        }
    }

    // Update phase.
    let start_us = now_us() + UPDATE_LEAD_US;
    phase.update_start_us.store(start_us, Ordering::Release);
    trigger = Trigger::new(start_us + config.interval_ms * 1000, config.interval_ms);
    let total = keys + updates;
    let mut end_us = None;
    let deadline = Instant::now()
        + Duration::from_secs_f64(config.seconds * 20.0 + PHASE_DEADLINE.as_secs_f64());
    while handle.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        let now = now_us();
        if processed(&counters) >= total {
            end_us = Some(now);
            break;
        }
        if settings.is_some() {
            trigger.poll(&handle, now);
        }
    }
    if end_us.is_none() && handle.is_running() {
        handle.stop();
    }
    let report = handle.join().context("the job failed")?;
    let Some(end_us) = end_us else {
        bail!(
            "the update phase did not finish: {} of {total} records processed",
            processed(&counters)
        );
    };
    let update_s = (end_us.saturating_sub(start_us)) as f64 / 1e6;
    let start_ms = start_us / 1000;
    let (baseline, steady): (Vec<CheckpointStats>, Vec<CheckpointStats>) = report
        .checkpoints
        .iter()
        .cloned()
        .partition(|c| c.trigger_ms < start_ms);
    let baseline_checkpoint = baseline
        .iter()
        .find(|c| c.status == CheckpointStatus::Completed)
        .map(|c| BaselineCheckpoint {
            duration_ms: c.duration_ms,
            bytes: c.state_bytes + c.in_flight_bytes,
            sync_pause_us_max: c.subtasks.iter().map(|s| s.sync_us).max().unwrap_or(0),
            async_us_max: c.subtasks.iter().map(|s| s.async_us).max().unwrap_or(0),
        });
    let completed: Vec<&CheckpointStats> = steady
        .iter()
        .filter(|c| c.status == CheckpointStatus::Completed)
        .collect();
    let mean = |f: &dyn Fn(&CheckpointStats) -> u64| {
        (!completed.is_empty())
            .then(|| completed.iter().map(|c| f(c) as f64).sum::<f64>() / completed.len() as f64)
    };
    let delta = |c: &CheckpointStats| c.subtasks.iter().map(|s| s.delta_bytes).sum::<u64>();
    let mut async_us: Vec<u64> = completed
        .iter()
        .flat_map(|c| c.subtasks.iter().map(|s| s.async_us))
        .collect();
    async_us.sort_unstable();
    let latency_us = {
        let h = latency
            .lock()
            .map_err(|_| anyhow::anyhow!("latency lock"))?;
        LatencySummary::of(&h, config.rate_events_per_s.is_some())
    };
    if let Some(settings) = &settings {
        if !config.keep_state {
            let _ = std::fs::remove_dir_all(&settings.state_dir);
        }
    }
    Ok(VariantSummary {
        name: variant.name().to_string(),
        fill_s,
        fill_events_per_s: keys as f64 / fill_s.max(1e-9),
        baseline_checkpoint,
        updates,
        update_s,
        throughput_events_per_s: updates as f64 / update_s.max(1e-9),
        throughput_ratio_to_none: None,
        latency_us,
        checkpoints: CheckpointSummary::of(&steady, settings.as_ref()),
        bytes_per_checkpoint_mean: mean(&|c| c.state_bytes + c.in_flight_bytes),
        full_bytes_per_checkpoint_mean: mean(&|c| c.state_bytes - delta(c)),
        delta_bytes_per_checkpoint_mean: mean(&delta),
        async_us_p50: quantile(&async_us, 0.5),
        peak_rss_bytes: peak_reset.then(peak_rss_bytes).flatten(),
        each_checkpoint: steady
            .iter()
            .map(|c| CheckpointLine {
                id: c.id,
                at_ms: c.trigger_ms.saturating_sub(start_ms),
                status: match &c.status {
                    CheckpointStatus::Completed => "completed".to_string(),
                    other => format!("{other:?}"),
                },
                duration_ms: c.duration_ms,
                full_bytes: c.state_bytes - delta(c),
                delta_bytes: delta(c),
                sync_pause_us_max: c.subtasks.iter().map(|s| s.sync_us).max().unwrap_or(0),
                async_us_max: c.subtasks.iter().map(|s| s.async_us).max().unwrap_or(0),
            })
            .collect(),
    })
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

fn opt_mib(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |b| {
        format!("{:.1}", b / (1u64 << 20) as f64)
    })
}

impl BenchSummary {
    /// The human table (also `checkpoints-summary.txt`).
    pub fn human(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let rate = c
            .rate_events_per_s
            .map_or("as fast as possible".to_string(), |r| {
                format!("at {r} updates/s")
            });
        let _ = writeln!(
            s,
            "spate-bench checkpoints: {} keys × {} B = {} of keyed state on {} core(s); \
             {} updates {rate}; checkpoints every {} ms, {}",
            self.keys,
            self.entry_bytes,
            mib(self.state_bytes),
            c.cores,
            self.updates,
            c.interval_ms,
            c.mode
        );
        let _ = writeln!(
            s,
            "{:<12} {:>10} {:>6} {:>9} {:>9} {:>5} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "variant",
            "updates/s",
            "ratio",
            "lat p99",
            "lat max",
            "ckpts",
            "dur p50",
            "dur p99",
            "sync p50",
            "sync p99",
            "sync max",
            "async p99",
            "MiB/ckpt",
            "full MiB",
            "delta MiB"
        );
        let _ = writeln!(
            s,
            "{:<12} {:>10} {:>6} {:>9} {:>9} {:>5} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "", "", "ms", "ms", "", "ms", "ms", "µs", "µs", "µs", "µs", "mean", "mean", "mean"
        );
        for v in &self.variants {
            let k = &v.checkpoints;
            let ms =
                |us: Option<u64>| us.map_or("-".to_string(), |u| format!("{:.1}", u as f64 / 1e3));
            let _ = writeln!(
                s,
                "{:<12} {:>10.0} {:>6} {:>9} {:>9} {:>5} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                v.name,
                v.throughput_events_per_s,
                v.throughput_ratio_to_none
                    .map_or("1".to_string(), |r| format!("{r:.3}")),
                ms(v.latency_us.p99),
                ms(v.latency_us.max),
                if k.mode.is_some() {
                    format!("{}", k.count)
                } else {
                    "-".to_string()
                },
                opt(k.duration_ms_p50),
                opt(k.duration_ms_p99),
                opt(k.sync_pause_us_p50),
                opt(k.sync_pause_us_p99),
                opt(k.sync_pause_us_max),
                opt(k.async_us_p99),
                opt_mib(v.bytes_per_checkpoint_mean),
                opt_mib(v.full_bytes_per_checkpoint_mean),
                opt_mib(v.delta_bytes_per_checkpoint_mean),
            );
        }
        for v in &self.variants {
            let _ = write!(
                s,
                "  {:<11} fill {:.2} s ({:.2} M keys/s)",
                v.name,
                v.fill_s,
                v.fill_events_per_s / 1e6
            );
            if let Some(b) = &v.baseline_checkpoint {
                let _ = write!(
                    s,
                    "; baseline checkpoint {} ms, {}, sync max {} µs, async max {} µs",
                    b.duration_ms,
                    mib(b.bytes),
                    b.sync_pause_us_max,
                    b.async_us_max
                );
            }
            if v.checkpoints.failed > 0 {
                let _ = write!(s, "; {} failed checkpoints", v.checkpoints.failed);
            }
            let _ = writeln!(
                s,
                "; peak RSS {}",
                v.peak_rss_bytes.map_or("-".to_string(), mib)
            );
        }
        let t = &self.targets;
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        let _ = writeln!(
            s,
            "  targets: incremental sync pause p99 < 1 ms: {} ({} µs); end-to-end p99 < 100 ms: \
             incremental {} ({} ms), full {} ({} ms); throughput >= 95% of none: {} ({} / {})",
            mark(t.incremental_sync_pause_ok),
            opt(t.incremental_sync_pause_us_p99),
            mark(t.incremental_duration_ok),
            opt(t.incremental_duration_ms_p99),
            mark(t.full_duration_ok),
            opt(t.full_duration_ms_p99),
            mark(t.throughput_ok),
            t.throughput_ratios
                .0
                .map_or("-".to_string(), |r| format!("{r:.3}")),
            t.throughput_ratios
                .1
                .map_or("-".to_string(), |r| format!("{r:.3}")),
        );
        s
    }
}

/// Writes `checkpoints-summary.json` and `checkpoints-summary.txt` into `dir`.
///
/// # Errors
/// If a file cannot be written.
pub fn write_report(dir: &Path, summary: &BenchSummary) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(SUMMARY_FILE), json + "\n")?;
    std::fs::write(dir.join("checkpoints-summary.txt"), summary.human())
}
