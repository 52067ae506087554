//! The `spate-bench` command line (the binary is a call of [`main`], and so is
//! the crash tests' child process in `tests/`).
//!
//! `spate-bench nexmark` runs a query and writes a report (see
//! [`crate::report`]), checkpointing through the engine and resuming an
//! unfinished run (see [`crate::resume`]); `spate-bench checkpoints` runs
//! the checkpoint benchmark (see [`crate::checkpoint_bench`]);
//! `spate-bench gen` writes generated events as JSON lines; `spate-bench
//! compare` puts two reports side by side.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;

use crate::checkpoint_bench::{self, BenchConfig};
use crate::checkpoints::{parse_mode, CheckpointSettings, MODE_NAMES};
use crate::queries::Query;
use crate::recovery_bench::{self, RecoveryConfig};
use crate::report::{compare, write_report, Summary};
use crate::resume::{self, RunIdentity};
use crate::run::{run, RunConfig, OPEN_LOOP_LEAD_MS};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use spate::time::Clock;
use spate::RestoreFrom;

/// Default number of events of `spate-bench nexmark`: 20 s at the default rate,
/// so that q5's 10 s windows also close during the run, not only at its end.
const DEFAULT_EVENTS: u64 = 15_000_000;
/// Default open-loop rate, events/s: about half of what the default query (q5)
/// sustains open loop on the 2-core reference machine (about 1.5 M events/s).
const DEFAULT_RATE: &str = "750000";

#[derive(Parser, Debug)]
#[command(
    name = "spate-bench",
    version,
    about = "Nexmark benchmarks for the Spate stream processing engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a Nexmark query and writes a report (summary.json, summary.txt,
    /// latency.hgrm, latency.svg, checkpoints.svg).
    ///
    /// Latency is measured open loop: event i is scheduled at start + i/rate and
    /// its event time is that scheduled time; a result's latency is the time from
    /// the scheduled time of the event that made it possible to the sink (window
    /// results: from the window's end).
    ///
    /// The job checkpoints every --checkpoint-interval-ms into --state-dir
    /// (0 turns checkpoints off). Rerunning the same command on the same state
    /// directory after a crash or kill resumes the unfinished run from its latest
    /// checkpoint; --fresh starts over.
    Nexmark(Box<NexmarkArgs>),
    /// The checkpoint benchmark: a keyed job with large state (--state-mib) on
    /// the given cores, run three times in one invocation — without checkpoints,
    /// with full checkpoints and with incremental ones — reporting update
    /// throughput, checkpoint durations, synchronous pauses and bytes per
    /// checkpoint (checkpoints-summary.json in --report, a table on stdout).
    Checkpoints(CheckpointsArgs),
    /// The recovery benchmark: fills --state-mib of keyed state, takes a
    /// checkpoint, then starts the job in new processes, resumed from the
    /// checkpoint and fresh, reporting the time from process start to the
    /// first processed record and to full throughput
    /// (recovery-summary.json in --report, a table on stdout).
    Recovery(RecoveryArgs),
    /// The embedding benchmark: a service pushes records through an ingress
    /// (paced open loop on a monotonic clock) into a keyed count and reads
    /// the results from an egress; reports round-trip latency percentiles in
    /// microseconds for immediate (at-least-once) and committed
    /// (exactly-once) egress, for every combination of the rates, subtask
    /// counts and checkpoint intervals given (embed-summary.json in
    /// --report, a table on stdout).
    Embed(EmbedArgs),
    /// One measured run of the recovery benchmark (started by `recovery`).
    #[command(hide = true)]
    RecoveryChild(RecoveryChildArgs),
    /// The remote tier's upload throughput: a checkpoint of --mib MiB of new
    /// blocks uploaded and committed by the tier, against a plain multipart
    /// PUT of the same bytes to the same server, interleaved runs, medians.
    RemoteUpload {
        /// Remote tier URL (`s3://bucket/prefix?endpoint=…`, `file:///dir`);
        /// the runs use prefixes below it, deleted afterwards.
        #[arg(long, value_name = "URL")]
        remote: String,
        /// Checkpoint size, MiB.
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Runs per variant.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Writes generated Nexmark events as JSON lines (one event per line).
    Gen {
        /// Number of events.
        #[arg(long, default_value_t = 1000)]
        events: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Writes the Nexmark events (as `gen` makes them, JSON) into a Kafka
    /// topic, event i in partition i mod --partitions; with --rate, paced
    /// open loop so that a concurrent `nexmark --source kafka` run measures
    /// latency from the schedule (bench/README.md, Kafka).
    KafkaLoad(KafkaLoadArgs),
    /// The Kafka throughput baseline: one plain librdkafka consumer reads
    /// --events events of --topic from the start and decodes them.
    KafkaConsume {
        /// The topic `kafka-load` wrote.
        #[arg(long)]
        topic: String,
        /// Events to read.
        #[arg(long)]
        events: u64,
        /// Kafka bootstrap servers [default: $SPATE_KAFKA_BROKERS or 127.0.0.1:19092].
        #[arg(long)]
        kafka_brokers: Option<String>,
        /// A librdkafka client property, KEY=VALUE (repeatable).
        #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = property_parser)]
        kafka_properties: Vec<(String, String)>,
    },
    /// Prints the figures of two reports side by side with their ratios B/A.
    Compare {
        /// summary.json of report A.
        a: PathBuf,
        /// summary.json of report B.
        b: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct NexmarkArgs {
    /// Query: q0, q1, q2, q3, q4, q5, q7 or q8.
    #[arg(long, default_value = "q5")]
    query: Query,
    /// Number of events to generate (over all cores).
    #[arg(long, default_value_t = DEFAULT_EVENTS)]
    events: u64,
    /// Open-loop rate in events/s over all cores (also the generator's event-time
    /// rate). `--rate 0` runs closed loop (as fast as possible, no latency figures).
    #[arg(long, default_value = DEFAULT_RATE, value_parser = rate_parser())]
    rate: u64,
    /// Cores to run on, one pinned reactor each (default: all available).
    #[arg(long)]
    cores: Option<usize>,
    /// Key groups (the engine's max parallelism): the unit of state
    /// redistribution and of a checkpoint's pauses; a state directory keeps
    /// the value it was created with.
    #[arg(long, default_value_t = crate::run::DEFAULT_MAX_PARALLELISM,
          value_parser = clap::value_parser!(u32).range(1..=32768))]
    max_parallelism: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report directory.
    #[arg(long, default_value = "spate-report")]
    report: PathBuf,
    /// Writes result rows as JSON lines to DIR/*.jsonl through the
    /// exactly-once file sink (two-phase commit with the checkpoints; pending
    /// files in DIR/.pending/): a killed and resumed run commits every row
    /// exactly once.
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// With --output: at-least-once output instead (rows written again by a
    /// resumed run appear twice), for comparison.
    #[arg(long, requires = "output")]
    at_least_once_output: bool,
    /// Event time of event 0 in an open-loop run (epoch ms; default: now plus
    /// a short lead). Fixing it makes the results of two runs comparable byte
    /// for byte (the crash tests do).
    #[arg(long, value_name = "MS")]
    base_time_ms: Option<u64>,
    /// Serve the running job's metrics (/metrics), checkpoint API (/api) and
    /// live page (/) on ADDR, e.g. 127.0.0.1:9249 (docs/monitoring.md).
    #[arg(long, value_name = "ADDR")]
    monitor: Option<std::net::SocketAddr>,
    #[command(flatten)]
    checkpoint: CheckpointFlags,
    /// Incremental checkpoints: write only the state changed since the last
    /// checkpoint (deltas on a base).
    #[arg(long)]
    incremental: bool,
    /// Start fresh even if --state-dir holds an unfinished run (do not restore).
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    kafka: KafkaFlags,
    /// Run the query as a cluster of this many processes joined by TCP
    /// (docs/cluster.md). Alone: start them all on this machine, each with
    /// --cores, and merge their reports. With --process-id and --peers: be
    /// one of them (the secret in SPATE_CLUSTER_SECRET). With checkpoints,
    /// every process keeps its part under --state-dir (one directory every
    /// process reaches), and the launcher restarts every process from the
    /// latest global checkpoint when one is lost (docs/cluster.md §15).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    processes: Option<u64>,
    /// Launcher, after a lost process: restart on as many processes
    /// (`replace`) or on one fewer (`shrink`: rescaled onto the survivors).
    #[arg(long, value_parser = ["replace", "shrink"], default_value = "replace", requires = "processes")]
    failover: String,
    /// Launcher: restarts of the whole cluster before it gives up.
    #[arg(long, default_value_t = 3, requires = "processes")]
    max_restarts: u32,
    /// Launcher, fault injection for failover measurements and tests:
    /// SIGKILL this process once --kill-after-checkpoints global
    /// checkpoints completed.
    #[arg(long, requires = "kill_after_checkpoints")]
    kill_process: Option<usize>,
    /// See --kill-process: the global checkpoint id to wait for.
    #[arg(long, requires = "kill_process")]
    kill_after_checkpoints: Option<u64>,
    /// A process of a launched cluster: restore the latest global checkpoint
    /// from this id on (the launcher sets it on restarts, to the first id
    /// its launch could have taken: never a checkpoint of an earlier launch
    /// on the same directory).
    #[arg(long, hide = true, requires = "process_id")]
    cluster_restore_from: Option<u64>,
    /// A cluster's connections: how long a writer waits after a write of
    /// 16 KiB or more before collecting the next (fewer, larger writes
    /// under load; 0: never waits). `ClusterConfig::busy_linger`.
    #[arg(long, default_value_t = 1000, requires = "processes")]
    busy_linger_us: u64,
    /// A process of a launched cluster: the run it belongs to (the launcher
    /// counts its restarts; each joins under a name of its own).
    #[arg(long, hide = true, default_value_t = 0, requires = "process_id")]
    cluster_generation: u32,
    /// This process's index in the cluster, 0-based.
    #[arg(long, requires = "processes")]
    process_id: Option<usize>,
    /// Every process's data-plane address, in process order, comma-separated
    /// (this process listens on its own).
    #[arg(
        long,
        value_delimiter = ',',
        requires = "process_id",
        conflicts_with = "cluster"
    )]
    peers: Vec<std::net::SocketAddr>,
    /// Find the peers through etcd instead of --peers (`etcd://HOST:PORT`):
    /// each process publishes its --listen address under its id, bound to
    /// a lease it renews (2 s); a lost lease fails the job.
    #[arg(long, value_name = "URL", requires = "processes")]
    cluster: Option<String>,
    /// The job's name: in etcd, its keys are under /spate/<NAME>/; on the
    /// data plane, processes of another name are refused. The launcher
    /// names its processes' job <NAME>-<random>.
    #[arg(long, default_value = "spate-bench", requires = "processes")]
    cluster_job: String,
    /// This process's data-plane address with --cluster (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0", requires = "cluster")]
    listen: std::net::SocketAddr,
}

/// `nexmark`'s Kafka flags.
#[derive(clap::Args, Debug)]
struct KafkaFlags {
    /// Where events come from: the built-in generator, or a Kafka topic
    /// written by `kafka-load` (--topic; its first --events events).
    #[arg(long, value_parser = ["generator", "kafka"], default_value = "generator")]
    source: String,
    /// The input topic (--source kafka).
    #[arg(long)]
    topic: Option<String>,
    /// Write the query's rows as JSON to this Kafka topic instead of the
    /// benchmark sink (latency measured when rows become visible).
    #[arg(long)]
    sink_topic: Option<String>,
    /// The Kafka sink's guarantee [default: exactly-once].
    #[arg(long, value_parser = ["exactly-once", "at-least-once"], requires = "sink_topic")]
    delivery: Option<String>,
    /// Kafka bootstrap servers [default: $SPATE_KAFKA_BROKERS or 127.0.0.1:19092].
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// A librdkafka client property, KEY=VALUE (repeatable): security
    /// settings (`security.protocol`, `sasl.*`, `ssl.*`) and tuning pass
    /// through unchanged; values are never printed.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = property_parser)]
    kafka_properties: Vec<(String, String)>,
}

/// Parses `KEY=VALUE` (the error never repeats the value: it may be secret).
fn property_parser(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE".to_string()),
    }
}

/// Client properties for `brokers` with the `--kafka-property` settings.
fn kafka_properties(brokers: &str, extra: &[(String, String)]) -> spate_kafka::KafkaProperties {
    let mut p = crate::kafka::properties(brokers);
    for (k, v) in extra {
        p.set(k.clone(), v.clone());
    }
    p
}

impl KafkaFlags {
    /// The Kafka side of the run, if any; refuses flags that would be ignored.
    fn run(&self, output: bool) -> anyhow::Result<Option<crate::kafka::KafkaRun>> {
        let kafka_source = self.source == "kafka";
        if kafka_source != self.topic.is_some() {
            bail!("--source kafka and --topic go together");
        }
        if self.sink_topic.is_some() && output {
            bail!("--sink-topic and --output are two sinks: give one");
        }
        if !kafka_source && self.sink_topic.is_none() {
            if self.kafka_brokers.is_some() || !self.kafka_properties.is_empty() {
                bail!("--kafka-brokers and --kafka-property need --source kafka or --sink-topic");
            }
            return Ok(None);
        }
        let brokers = self
            .kafka_brokers
            .clone()
            .unwrap_or_else(crate::kafka::default_brokers);
        Ok(Some(crate::kafka::KafkaRun {
            properties: kafka_properties(&brokers, &self.kafka_properties),
            topic: self.topic.clone(),
            sink_topic: self.sink_topic.clone(),
            exactly_once: self.delivery.as_deref() != Some("at-least-once"),
        }))
    }
}

#[derive(clap::Args, Debug)]
struct KafkaLoadArgs {
    /// The topic (created if missing).
    #[arg(long)]
    topic: String,
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Partitions of a created topic (and the spread of the events).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Open-loop rate, events/s (0: as fast as possible, the generator's
    /// default event times).
    #[arg(long, default_value_t = 0, value_parser = rate_parser())]
    rate: u64,
    /// Kafka bootstrap servers [default: $SPATE_KAFKA_BROKERS or 127.0.0.1:19092].
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// A librdkafka client property, KEY=VALUE (repeatable).
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = property_parser)]
    kafka_properties: Vec<(String, String)>,
}

/// Checkpoint flags shared by `nexmark` and `checkpoints`.
#[derive(clap::Args, Debug)]
struct CheckpointFlags {
    /// State directory: checkpoints (segments, manifest) and, for `nexmark`,
    /// the run's identity (spate-bench-run.json) for resuming.
    #[arg(long, value_name = "DIR", default_value = "spate-state")]
    state_dir: PathBuf,
    /// Time between checkpoints, ms; 0 turns checkpointing off (`nexmark`)
    /// [default: 1000].
    #[arg(long, value_parser = time_ms_parser())]
    checkpoint_interval_ms: Option<u64>,
    /// Barrier mode [default: aligned].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MODE_NAMES))]
    checkpoint_mode: Option<String>,
    /// Alignment timeout after which an aligned checkpoint goes unaligned; only
    /// with --checkpoint-mode aligned-timeout [default: 100].
    #[arg(long, value_parser = time_ms_parser())]
    alignment_timeout_ms: Option<u64>,
    /// Remote checkpoint tier: `s3://bucket/prefix` (credentials from the
    /// environment / AWS files; `?endpoint=URL&allow_http=true` for a local
    /// server) or `file:///dir`. A checkpoint completes once it is committed
    /// there; a run on an empty --state-dir resumes from it.
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
}

/// Highest `--rate` accepted, events/s: far above what a machine generates,
/// and low enough that the generator's exact timestamp arithmetic cannot
/// overflow (it needs rates below 2^53).
pub const MAX_RATE: u64 = 1_000_000_000_000;

fn rate_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(0..=MAX_RATE)
}

/// Checkpoint times are bounded as the engine bounds them.
fn time_ms_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(0..=spate::MAX_CHECKPOINT_TIME_MS)
}

impl CheckpointFlags {
    /// The settings, or `None` when checkpointing is off; refuses mode flags
    /// that would be ignored.
    fn settings(&self, incremental: bool) -> anyhow::Result<Option<CheckpointSettings>> {
        let interval_ms = self.checkpoint_interval_ms.unwrap_or(1000);
        if interval_ms == 0 {
            let ignored = [
                (self.checkpoint_mode.is_some(), "--checkpoint-mode"),
                (
                    self.alignment_timeout_ms.is_some(),
                    "--alignment-timeout-ms",
                ),
                (incremental, "--incremental"),
            ];
            if let Some((_, flag)) = ignored.iter().find(|(given, _)| *given) {
                bail!("{flag} needs checkpoints, but --checkpoint-interval-ms 0 turns them off");
            }
            return Ok(None);
        }
        let mode = self.checkpoint_mode.as_deref().unwrap_or("aligned");
        parse_mode(mode, self.alignment_timeout_ms).map_err(anyhow::Error::msg)?;
        Ok(Some(CheckpointSettings {
            state_dir: self.state_dir.clone(),
            interval_ms,
            mode: mode.to_string(),
            alignment_timeout_ms: self.alignment_timeout_ms,
            incremental,
            remote: self.remote.clone(),
        }))
    }
}

#[derive(clap::Args, Debug)]
struct RecoveryArgs {
    /// Keyed state, MiB (8-byte key + 120-byte value per key).
    #[arg(long, default_value_t = 1024)]
    state_mib: u64,
    /// Serve the running job's metrics (/metrics), checkpoint API (/api) and
    /// live page (/) on ADDR, e.g. 127.0.0.1:9249 (docs/monitoring.md).
    #[arg(long, value_name = "ADDR")]
    monitor: Option<std::net::SocketAddr>,
    /// Length of each measured run, seconds.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Measured runs per variant (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Cores to run on (default: all available).
    #[arg(long)]
    cores: Option<usize>,
    /// Where the checkpoint goes (replaced).
    #[arg(long, default_value = "spate-state/recovery")]
    state_dir: PathBuf,
    /// Key groups (the engine's max parallelism).
    #[arg(long, default_value_t = 4096)]
    max_parallelism: u32,
    /// Remote tier (emptied first): the checkpoint is also committed there,
    /// and a third variant, `remote`, restores it onto an empty directory.
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// Report directory.
    #[arg(long, default_value = "spate-report")]
    report: PathBuf,
}

#[derive(clap::Args, Debug)]
struct RecoveryChildArgs {
    #[arg(long)]
    monitor: Option<std::net::SocketAddr>,
    #[arg(long)]
    variant: String,
    #[arg(long)]
    spawned_us: u64,
    #[arg(long)]
    cores: usize,
    #[arg(long)]
    state_mib: u64,
    #[arg(long)]
    seconds: f64,
    #[arg(long)]
    max_parallelism: u32,
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    remote: Option<String>,
}

#[derive(clap::Args, Debug)]
struct CheckpointsArgs {
    /// Keyed state to build, MiB (archived entries: 8-byte key + 120-byte value)
    /// [default: 1024].
    #[arg(long)]
    state_mib: Option<u64>,
    /// Duration of the update phase, seconds [default: 20].
    #[arg(long)]
    seconds: Option<f64>,
    /// Update rate over all cores, events/s; 0: as fast as possible (then 2
    /// updates per key) [default: 200000].
    #[arg(long, value_parser = rate_parser())]
    rate: Option<u64>,
    /// Cores to run on (default: all available).
    #[arg(long)]
    cores: Option<usize>,
    /// A small configuration that runs in a few seconds (16 MiB of state in
    /// 128 key groups, 2 s at 200 k updates/s, checkpoints every 200 ms); other
    /// flags override it.
    #[arg(long)]
    quick: bool,
    /// Report directory (checkpoints-summary.json, checkpoints-summary.txt).
    #[arg(long, default_value = "spate-report")]
    report: PathBuf,
    /// Keep the variants' checkpoint directories (default: removed after each).
    #[arg(long)]
    keep_state: bool,
    /// Key groups (the engine's max parallelism); the longest snapshot pause
    /// is archiving one key group [default: 4096].
    #[arg(long)]
    max_parallelism: Option<u32>,
    /// Incremental variant: deltas a key group's chain may hold (a key group
    /// is materialised in the background from half to three quarters of it)
    /// [default: the engine's, 16].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_delta_chain: Option<u32>,
    /// Serve the running job's metrics (/metrics), checkpoint API (/api) and
    /// live page (/) on ADDR, e.g. 127.0.0.1:9249 (docs/monitoring.md).
    #[arg(long, value_name = "ADDR")]
    monitor: Option<std::net::SocketAddr>,
    #[command(flatten)]
    checkpoint: CheckpointFlags,
}

#[derive(clap::Args, Debug)]
struct EmbedArgs {
    /// Records per second pushed, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 1_000_000])]
    rates: Vec<u64>,
    /// Subtask counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    parallelism: Vec<usize>,
    /// Checkpoint intervals in ms, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100u64, 1000])]
    intervals_ms: Vec<u64>,
    /// Measured seconds per configuration (after 1.5 s of warm-up).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Where the runs checkpoint (a directory of their own is made and
    /// removed below it).
    #[arg(long, default_value = "spate-state")]
    state_dir: PathBuf,
    /// Report directory (embed-summary.json).
    #[arg(long, default_value = "spate-report")]
    report: PathBuf,
}

fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    if args.rates.iter().any(|&r| r == 0 || r > 100_000_000) {
        bail!("--rates must be between 1 and 100000000 records/s");
    }
    if args.parallelism.contains(&0) || args.intervals_ms.contains(&0) {
        bail!("--parallelism and --intervals-ms must be positive");
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    let results = crate::embed_bench::run_all(
        &args.rates,
        &args.parallelism,
        &args.intervals_ms,
        args.seconds,
        &args.state_dir,
    )?;
    std::fs::create_dir_all(&args.report)
        .with_context(|| format!("creating {}", args.report.display()))?;
    let path = args.report.join(crate::embed_bench::SUMMARY_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("  report      {}", path.display());
    Ok(())
}

/// Parses the command line and runs the command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Nexmark(args) => nexmark(*args),
        Command::Checkpoints(args) => checkpoints(args),
        Command::Embed(args) => embed(args),
        Command::Recovery(args) => {
            let config = RecoveryConfig {
                cores: args
                    .cores
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                state_mib: args.state_mib,
                seconds: args.seconds,
                runs: args.runs,
                state_dir: args.state_dir,
                max_parallelism: args.max_parallelism,
                monitor: args.monitor,
                remote: args.remote,
            };
            let exe = std::env::current_exe().context("locating this program")?;
            let summary = recovery_bench::run(&config, &exe)?;
            print!("{}", summary.human());
            std::fs::create_dir_all(&args.report)
                .with_context(|| format!("creating {}", args.report.display()))?;
            let path = args.report.join(recovery_bench::SUMMARY_FILE);
            std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("  report      {}", path.display());
            Ok(())
        }
        Command::RemoteUpload { remote, mib, runs } => {
            let s = crate::remote_bench::run(&remote, mib, runs)?;
            println!(
                "spate-bench remote-upload: {} MiB, {} run(s): tier {:.1} MB/s (median; {} PUTs per upload), plain multipart PUT {:.1} MB/s: {:.0}%",
                s.bytes >> 20,
                s.runs,
                s.tier_median_mb_per_s,
                s.tier_put_requests,
                s.plain_median_mb_per_s,
                s.ratio * 100.0
            );
            println!("{}", serde_json::to_string(&s)?);
            Ok(())
        }
        Command::RecoveryChild(args) => {
            let config = RecoveryConfig {
                cores: args.cores,
                state_mib: args.state_mib,
                seconds: args.seconds,
                runs: 1,
                state_dir: args.state_dir,
                max_parallelism: args.max_parallelism,
                monitor: args.monitor,
                remote: args.remote,
            };
            recovery_bench::child(&config, &args.variant, args.spawned_us)
        }
        Command::Gen { events, seed, out } => {
            match out {
                Some(path) => {
                    let file = File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    crate::nexmark::json::gen_jsonl(events, seed, file)?;
                }
                None => crate::nexmark::json::gen_jsonl(events, seed, std::io::stdout().lock())?,
            }
            Ok(())
        }
        Command::KafkaLoad(args) => {
            if args.partitions == 0 {
                bail!("--partitions must be at least 1");
            }
            let brokers = args
                .kafka_brokers
                .unwrap_or_else(crate::kafka::default_brokers);
            let rate = (args.rate > 0).then_some(args.rate);
            let base_time_ms = spate::time::SystemClock.now_ms() + OPEN_LOOP_LEAD_MS;
            let per_s = crate::kafka::load(
                &kafka_properties(&brokers, &args.kafka_properties),
                &args.topic,
                args.events,
                args.partitions,
                args.seed,
                rate,
                base_time_ms,
            )?;
            println!(
                "kafka-load: {} events into {} ({} partitions) at {:.0} events/s",
                args.events, args.topic, args.partitions, per_s
            );
            Ok(())
        }
        Command::KafkaConsume {
            topic,
            events,
            kafka_brokers,
            kafka_properties: extra,
        } => {
            let brokers = kafka_brokers.unwrap_or_else(crate::kafka::default_brokers);
            let properties = kafka_properties(&brokers, &extra);
            let per_s = crate::kafka::consume_plain(&properties, &topic, events)?;
            println!("kafka-consume: {events} events of {topic}: {per_s:.0} events/s (one plain librdkafka consumer, JSON decoded)");
            Ok(())
        }
        Command::Compare { a, b } => {
            let read = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
                let file = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                serde_json::from_reader(BufReader::new(file))
                    .with_context(|| format!("parsing {}", p.display()))
            };
            print!("{}", compare(&read(&a)?, &read(&b)?));
            Ok(())
        }
    }
}

/// Refuses a path that exists and is not a directory, before any work.
fn check_dir_arg(flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() && !path.is_dir() {
        bail!("{flag} {} is not a directory", path.display());
    }
    Ok(())
}

/// Checks every `nexmark` argument before anything runs or is written.
fn check_nexmark_args(
    args: &NexmarkArgs,
    cores: usize,
    checkpoint: Option<&CheckpointSettings>,
) -> anyhow::Result<()> {
    if cores == 0 {
        bail!("--cores must be at least 1");
    }
    check_dir_arg("--report", &args.report)?;
    if let Some(output) = &args.output {
        check_dir_arg("--output", output)?;
    }
    if let Some(settings) = checkpoint {
        check_dir_arg("--state-dir", &settings.state_dir)?;
        if settings.mode == "at-least-once" && args.output.is_some() && !args.at_least_once_output {
            bail!(
                "--checkpoint-mode at-least-once replays records that a checkpoint already \
                 counted, so --output cannot be exactly once: use an exactly-once mode \
                 (aligned, unaligned, aligned-timeout), or pass --at-least-once-output to \
                 accept rows counted twice after a restore"
            );
        }
    }
    Ok(())
}

fn nexmark(args: NexmarkArgs) -> anyhow::Result<()> {
    let cores = args
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rate_events_per_s = (args.rate > 0).then_some(args.rate);
    let checkpoint = args.checkpoint.settings(args.incremental)?;
    check_nexmark_args(&args, cores, checkpoint.as_ref())?;
    if args.at_least_once_output {
        eprintln!(
            "spate-bench: warning: --at-least-once-output: rows that a restore replays are \
             committed again, so {} may hold some rows twice",
            args.output
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display()
        );
    }
    let kafka = args.kafka.run(args.output.is_some())?;
    if let Some(processes) = args.processes {
        if checkpoint.is_none() && args.kill_process.is_some() {
            bail!(
                "--kill-process needs checkpoints: without them a lost process cannot be recovered"
            );
        }
        if args.kill_process.is_some_and(|p| p as u64 >= processes) {
            bail!("--kill-process names a process of the {processes}");
        }
        if kafka.is_some() {
            bail!("--processes does not combine with Kafka yet");
        }
        if args.monitor.is_some() && args.process_id.is_none() {
            bail!(
                "--monitor with the launcher would give every process one address: \
                 start the processes with --process-id, each with a --monitor of its own"
            );
        }
        if args.process_id.is_none() {
            let failover = checkpoint.as_ref().map(|c| crate::cluster::Failover {
                state_dir: c.state_dir.clone(),
                remote: c.remote.clone(),
                shrink: args.failover == "shrink",
                max_restarts: args.max_restarts,
                kill: args.kill_process.zip(args.kill_after_checkpoints),
            });
            let summary = crate::cluster::launch(
                processes as usize,
                &args.report,
                args.base_time_ms,
                rate_events_per_s,
                args.cluster.is_some(),
                &args.cluster_job,
                failover,
            )?;
            let mut stdout = std::io::stdout().lock();
            write!(stdout, "{}", summary.human())?;
            writeln!(stdout, "  report      {}", args.report.display())?;
            return Ok(());
        }
        if rate_events_per_s.is_some() && args.base_time_ms.is_none() {
            bail!(
                "an open-loop process of a cluster needs --base-time-ms, the same in every process"
            );
        }
    }
    let mut membership = None;
    let mut on_start = None;
    let cluster = match (args.process_id, &args.cluster) {
        (Some(id), Some(url)) => {
            let (cluster, joined, hook) = crate::cluster::discover(
                url,
                &args.cluster_job,
                args.cluster_generation,
                id,
                args.processes.unwrap_or(1) as usize,
                args.listen,
                cores,
            )?;
            eprintln!(
                "spate-bench: process {id} joined `{}` in etcd (lease {}); peers {:?}",
                args.cluster_job,
                joined.lease().0,
                joined.peers
            );
            membership = Some(joined);
            on_start = Some(hook);
            Some(cluster)
        }
        (Some(id), None) => {
            if args.peers.is_empty() {
                bail!("--process-id needs --peers or --cluster etcd://HOST:PORT");
            }
            Some(crate::cluster::config(
                id,
                args.processes.unwrap_or(1) as usize,
                args.peers.clone(),
                &crate::cluster::generation_name(&args.cluster_job, args.cluster_generation),
            )?)
        }
        (None, _) => None,
    };
    let cluster = cluster.map(|c| spate::ClusterConfig {
        busy_linger: std::time::Duration::from_micros(args.busy_linger_us),
        ..c
    });
    let mut config = RunConfig {
        cluster,
        on_start,
        kafka,
        max_parallelism: args.max_parallelism,
        seed: args.seed,
        output_dir: args.output.clone(),
        at_least_once_output: args.at_least_once_output,
        base_time_ms: args.base_time_ms,
        progress: true,
        checkpoint,
        monitor: args.monitor,
        ..RunConfig::new(args.query, args.events, rate_events_per_s, cores)
    };
    let mut _lock = None;
    let plan = match &config.checkpoint {
        // A process of a cluster: its part of every checkpoint is in a
        // store of its own under --state-dir (the engine locks it); what to
        // restore is the launcher's (or the operator's) call.
        Some(_) if args.process_id.is_some() => {
            config.restore = match args.cluster_restore_from {
                Some(floor) => RestoreFrom::LatestFrom(floor),
                None => RestoreFrom::Nothing,
            };
            None
        }
        Some(settings) => {
            // One writer per state directory: taken before the directory is
            // read, held through the run (the engine's job shares it).
            _lock = Some(spate_storage::DirLock::acquire(&settings.state_dir)?);
            let wanted = RunIdentity {
                query: config.query.to_string(),
                events: config.events,
                seed: config.seed,
                rate_events_per_s,
                cores,
                base_time_ms: args
                    .base_time_ms
                    .unwrap_or_else(|| spate::time::SystemClock.now_ms() + OPEN_LOOP_LEAD_MS),
                checkpoint_interval_ms: settings.interval_ms,
                checkpoint_mode: settings.mode.clone(),
                alignment_timeout_ms: settings.alignment_timeout_ms,
                incremental: settings.incremental,
                checkpoint_before: None,
                completed: false,
                output: args.output.clone(),
            };
            // With a remote tier, the run's identity and its newest
            // checkpoint are also remote: an empty --state-dir resumes.
            let remote_latest = match &settings.remote {
                Some(url) => crate::remote_run::fetch_identity(url, &settings.state_dir)?,
                None => None,
            };
            let plan = resume::plan(&settings.state_dir, &wanted, args.fresh, remote_latest)
                .map_err(anyhow::Error::msg)?;
            if plan.resuming {
                eprintln!(
                    "spate-bench: resuming the unfinished run in {} ({})",
                    settings.state_dir.display(),
                    match plan.restore {
                        RestoreFrom::Nothing => "it took no checkpoint: from the first event",
                        _ => "from its latest checkpoint",
                    }
                );
            }
            config.restore = plan.restore.clone();
            config.base_time_ms = Some(plan.identity.base_time_ms);
            resume::write_identity(&settings.state_dir, &plan.identity).with_context(|| {
                format!(
                    "writing the run's identity into {}",
                    settings.state_dir.display()
                )
            })?;
            if let Some(url) = &settings.remote {
                crate::remote_run::put_identity(url, &plan.identity)?;
            }
            Some((settings.state_dir.clone(), settings.remote.clone(), plan))
        }
        None => None,
    };
    let outcome = run(&config).with_context(|| format!("running {}", config.query));
    if let Some(membership) = membership {
        // Leaves at once (the others see the member go), whatever happened.
        if let Err(e) = membership.leave() {
            eprintln!("spate-bench: leaving the cluster in etcd: {e}");
        }
    }
    let outcome = outcome?;
    if let Some((dir, remote, plan)) = plan {
        let done = RunIdentity {
            completed: true,
            ..plan.identity
        };
        resume::write_identity(&dir, &done)
            .with_context(|| format!("marking the run completed in {}", dir.display()))?;
        if let Some(url) = &remote {
            crate::remote_run::put_identity(url, &done)?;
        }
    }
    let mut summary = Summary::new(&config, &outcome);
    if let Some(id) = args.process_id {
        let network = outcome.network.clone().unwrap_or_default();
        summary.processes = vec![crate::report::ProcessSummary {
            process: id,
            events_processed: summary.events_processed,
            elapsed_s: summary.elapsed_s,
            throughput_events_per_s: summary.throughput_events_per_s,
            rows: summary.rows,
            latency_us: summary.latency_us.clone(),
            peak_rss_bytes: summary.peak_rss_bytes,
            network_bytes_sent: network.bytes_sent,
            network_bytes_received: network.bytes_received,
        }];
    }
    write_report(&args.report, &summary, &outcome)
        .with_context(|| format!("writing the report to {}", args.report.display()))?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", summary.human())?;
    writeln!(stdout, "  report      {}", args.report.display())?;
    Ok(())
}

fn checkpoints(args: CheckpointsArgs) -> anyhow::Result<()> {
    let mut config = if args.quick {
        BenchConfig::quick()
    } else {
        BenchConfig::default()
    };
    if let Some(cores) = args.cores {
        config.cores = cores;
    }
    if let Some(mib) = args.state_mib {
        config.state_mib = mib;
    }
    if let Some(seconds) = args.seconds {
        config.seconds = seconds;
    }
    if let Some(rate) = args.rate {
        config.rate_events_per_s = (rate > 0).then_some(rate);
    }
    let flags = &args.checkpoint;
    if let Some(interval_ms) = flags.checkpoint_interval_ms {
        if interval_ms == 0 {
            bail!("the checkpoint benchmark needs --checkpoint-interval-ms > 0");
        }
        config.interval_ms = interval_ms;
    }
    config.mode = flags
        .checkpoint_mode
        .clone()
        .unwrap_or_else(|| "aligned".to_string());
    parse_mode(&config.mode, flags.alignment_timeout_ms).map_err(anyhow::Error::msg)?;
    config.alignment_timeout_ms = flags.alignment_timeout_ms;
    config.state_dir = flags.state_dir.clone();
    config.remote = flags.remote.clone();
    config.keep_state = args.keep_state;
    if let Some(max_parallelism) = args.max_parallelism {
        config.max_parallelism = max_parallelism;
    }
    config.max_delta_chain = args.max_delta_chain.or(config.max_delta_chain);
    config.monitor = args.monitor;
    let summary = checkpoint_bench::run(&config)?;
    checkpoint_bench::write_report(&args.report, &summary)
        .with_context(|| format!("writing the report to {}", args.report.display()))?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", summary.human())?;
    writeln!(
        stdout,
        "  report      {}",
        args.report.join(checkpoint_bench::SUMMARY_FILE).display()
    )?;
    Ok(())
}
