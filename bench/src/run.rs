//! Running one benchmark: a query over the Nexmark source on the glommio
//! runtime, with the latency sink, timed.
//!
//! The job is the user's view of Spate: `source → query → sink` declared in the
//! build closure, run by [`Job`]. Throughput is `events processed / elapsed`
//! (a resumed run processes only what its checkpoint left), with
//! `elapsed` the job's wall time from start to the last subtask finishing
//! (generation included: the generator runs inside the source subtasks).
//!
//! With [`RunConfig::checkpoint`] the job checkpoints through the engine
//! (`JobConfig.checkpoint`: barriers, snapshots, io_uring writes into the state
//! directory) and the outcome carries the engine's checkpoint statistics and
//! the checkpoint the run restored, if any. Deciding whether to restore is
//! [`crate::resume`]'s job; [`run`] does what [`RunConfig::restore`] says.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use spate::sink::FileSinkMode;
use spate::{
    CheckpointStats, ConfigError, Dataflow, Job, JobConfig, JobError, RestoreFrom, Stream,
};

use crate::checkpoints::CheckpointSettings;

use crate::nexmark::GeneratorConfig;
use crate::queries::{self, Query};
use crate::sink::{BenchSink, LatencyOrigin, SinkOptions, SinkTotals};
use crate::source::{watermarks, NexmarkSource};

/// How long after the job starts the open-loop schedule begins, so that every
/// reactor is up before the first event is due.
pub const OPEN_LOOP_LEAD_MS: u64 = 50;

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    /// The query.
    #[serde(serialize_with = "serialize_display")]
    pub query: Query,
    /// Total events over all source subtasks.
    pub events: u64,
    /// Open-loop rate, events/s over all subtasks; `None` runs closed loop.
    pub rate_events_per_s: Option<u64>,
    /// Cores (= parallelism: one reactor per core).
    pub cores: usize,
    /// Key groups (the engine's max parallelism; fixed for a state directory).
    pub max_parallelism: u32,
    /// Generator seed.
    pub seed: u64,
    /// Where result rows go as JSON lines, if anywhere.
    pub output_dir: Option<PathBuf>,
    /// Show a progress bar on stderr (only if it is a terminal).
    #[serde(skip)]
    pub progress: bool,
    /// Serve the job's monitor on this address (`JobConfig::monitor`).
    #[serde(skip)]
    pub monitor: Option<std::net::SocketAddr>,
    /// Checkpointing; `None` runs without.
    pub checkpoint: Option<CheckpointSettings>,
    /// What the engine restores when checkpointing (ignored otherwise).
    #[serde(skip)]
    pub restore: RestoreFrom,
    /// The generator's event time of event 0 in an open-loop run (epoch ms);
    /// `None`: [`OPEN_LOOP_LEAD_MS`] after now. A resumed run passes the first
    /// run's, so that timestamps are the same function of the event index.
    pub base_time_ms: Option<u64>,
    /// At-least-once output instead of exactly once (for comparison).
    pub at_least_once_output: bool,
    /// Kafka as the source and/or the sink (`--source kafka`, `--sink-topic`).
    #[serde(skip)]
    pub kafka: Option<crate::kafka::KafkaRun>,
    /// Run as one process of a cluster (`--process-id`, see
    /// [`crate::cluster`]); `cores` is then this process's.
    #[serde(skip)]
    pub cluster: Option<spate::ClusterConfig>,
    /// Called with the job's failer once it started (a cluster process
    /// hands it to its etcd membership, which fails the job if the lease
    /// is lost).
    #[serde(skip)]
    pub on_start: Option<StartHook>,
}

/// What [`RunConfig::on_start`] calls.
#[derive(Clone)]
pub struct StartHook(pub Arc<dyn Fn(spate::JobFailer) + Send + Sync>);

impl std::fmt::Debug for StartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartHook")
    }
}

/// Key groups of a Nexmark run by default: a checkpoint pauses a core for
/// about one key group's archiving, and q5's window state in 128 key groups
/// took about 3 ms per key group at 750 k events/s.
pub const DEFAULT_MAX_PARALLELISM: u32 = 1024;

impl RunConfig {
    /// A run of `query` without checkpoints.
    pub fn new(query: Query, events: u64, rate_events_per_s: Option<u64>, cores: usize) -> Self {
        Self {
            query,
            events,
            rate_events_per_s,
            cores,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            seed: 0,
            output_dir: None,
            progress: false,
            checkpoint: None,
            restore: RestoreFrom::Nothing,
            base_time_ms: None,
            at_least_once_output: false,
            monitor: None,
            kafka: None,
            cluster: None,
            on_start: None,
        }
    }
}

fn serialize_display<S: serde::Serializer>(q: &Query, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(q)
}

/// What a run measured.
#[derive(Debug)]
pub struct RunOutcome {
    /// Wall time of the job.
    pub elapsed: Duration,
    /// Latency histogram in µs (empty in closed loop).
    pub latency_us: Histogram<u64>,
    /// Whether latencies were recorded (open loop).
    pub latency_measured: bool,
    /// Events this run's sources emitted (all of them in a fresh run; what
    /// was left after the restored checkpoint in a resumed one).
    pub events_processed: u64,
    /// Result rows produced.
    pub rows: u64,
    /// Rows that arrived before their latency origin (forced out by the end of
    /// input); not in the histogram.
    pub rows_before_origin: u64,
    /// The generator's configuration.
    pub generator: GeneratorConfig,
    /// The engine's statistics of every checkpoint of the run (empty without).
    pub checkpoints: Vec<CheckpointStats>,
    /// The checkpoint the run restored, if any.
    pub restored_from: Option<u64>,
    /// When the job started (epoch ms, the job's clock).
    pub started_ms: u64,
    /// The data plane's figures, in a cluster run.
    pub network: Option<spate::NetworkReport>,
    /// When the generator emitted the run's first event (epoch ms).
    pub first_event_ms: Option<u64>,
}

/// The generator configuration of a run: the defaults, or in open loop the rate
/// as event-time rate and `base_time_ms` as the schedule's start.
pub fn generator_config(rate_events_per_s: Option<u64>, base_time_ms: u64) -> GeneratorConfig {
    match rate_events_per_s {
        Some(rate) => GeneratorConfig {
            events_per_second: rate,
            base_time_ms,
            schedule_origins: true,
            ..GeneratorConfig::default()
        },
        None => GeneratorConfig::default(),
    }
}

/// Where a query's rows go.
pub enum QuerySink {
    /// The benchmark's sink (latency, optional files).
    Bench(BenchSink),
    /// A Kafka topic: rows as JSON, the record timestamp the row's event
    /// time; latencies are measured when rows become visible.
    Kafka(spate_kafka::KafkaSinkConfig),
}

/// Declares `source → query → sink` on one subtask.
pub fn build_query<S: spate::source::Source<crate::nexmark::Event>>(
    df: &Dataflow,
    query: Query,
    source: S,
    watermarks: spate::WatermarkStrategy<crate::nexmark::Event>,
    sink: QuerySink,
) {
    let events = df.source("nexmark", source, watermarks);
    fn to_sink<T: Serialize + LatencyOrigin + Clone + 'static>(rows: Stream<T>, sink: QuerySink) {
        match sink {
            QuerySink::Bench(sink) => rows.sink("bench-sink", sink),
            QuerySink::Kafka(config) => rows.sink(
                "kafka-sink",
                spate_kafka::KafkaSink::new(
                    config,
                    Arc::new(|r: &spate::Record<T>, out: &mut spate_kafka::OutRecord| {
                        // Rows serialise infallibly (plain structs). The
                        // record timestamp is the row's latency origin (ms).
                        out.payload = serde_json::to_vec(&r.value).unwrap_or_default();
                        out.timestamp_ms = Some((r.value.origin_us(r.ts) / 1000) as i64);
                    }),
                ),
            ),
        }
    }
    match query {
        Query::Q0 => to_sink(queries::q0(&events), sink),
        Query::Q1 => to_sink(queries::q1(&events), sink),
        Query::Q2 => to_sink(queries::q2(&events), sink),
        Query::Q3 => to_sink(queries::q3(&events), sink),
        Query::Q4 => to_sink(queries::q4(&events), sink),
        Query::Q5 => to_sink(queries::q5(&events), sink),
        Query::Q7 => to_sink(queries::q7(&events), sink),
        Query::Q8 => to_sink(queries::q8(&events), sink),
    }
}

/// Event time may run this far back across the partitions one Kafka source
/// subtask reads (they interleave), ms.
pub const KAFKA_OUT_OF_ORDERNESS_MS: u64 = 1000;

/// Runs `config` on the glommio runtime.
///
/// # Errors
/// [`JobError::Config`] for zero cores or a zero rate; otherwise if the job fails
/// (an operator, source or sink error, or a reactor that cannot start).
pub fn run(config: &RunConfig) -> Result<RunOutcome, JobError> {
    if config.cores == 0 {
        return Err(ConfigError::invalid("--cores", "must be at least 1").into());
    }
    if config.rate_events_per_s == Some(0) {
        return Err(ConfigError::invalid("--rate", "must be positive").into());
    }
    let clock: Arc<dyn spate::time::Clock> = Arc::new(spate::time::SystemClock);
    let started_ms = clock.now_ms();
    let base_time_ms = config
        .base_time_ms
        .unwrap_or(started_ms + OPEN_LOOP_LEAD_MS);
    let generator = generator_config(config.rate_events_per_s, base_time_ms);
    let open_loop = config.rate_events_per_s.is_some();
    let totals = SinkTotals::default();
    let emitted = Arc::new(AtomicU64::new(0));
    let first_event = Arc::new(AtomicU64::new(0));
    let sink_options = SinkOptions {
        measure_latency: open_loop,
        output: config.output_dir.clone().map(|dir| {
            let mode = if config.at_least_once_output {
                FileSinkMode::AtLeastOnce
            } else {
                FileSinkMode::ExactlyOnce
            };
            (dir, mode)
        }),
    };
    let kafka = config.kafka.clone();
    let kafka_partitions = match kafka
        .as_ref()
        .and_then(|k| k.topic.as_deref().map(|t| (k, t)))
    {
        Some((k, topic)) => Some(
            crate::kafka::partitions(&k.properties, topic)
                .map_err(|e| ConfigError::invalid("--topic", e.to_string()))?,
        ),
        None => None,
    };
    let kafka_sink = match kafka
        .as_ref()
        .and_then(|k| k.sink_topic.as_deref().map(|t| (k, t)))
    {
        Some((k, topic)) => {
            let delivery = match (&config.checkpoint, k.exactly_once) {
                (Some(settings), true) => spate_kafka::Delivery::ExactlyOnce {
                    prefix: format!("spate-bench-{topic}"),
                    transaction_log: settings.state_dir.join("kafka-transactions"),
                },
                (None, true) => {
                    return Err(ConfigError::invalid(
                        "--delivery",
                        "exactly-once needs checkpoints (--checkpoint-interval-ms > 0)",
                    )
                    .into())
                }
                (_, false) => spate_kafka::Delivery::AtLeastOnce,
            };
            let mut sink = spate_kafka::KafkaSinkConfig::new(k.properties.clone(), topic, delivery);
            // Latency and rows when rows become visible (acknowledged, or
            // committed with their transaction).
            let (histogram, rows, early) = (
                totals.latency_us.clone(),
                totals.rows.clone(),
                totals.rows_before_origin.clone(),
            );
            let measure = sink_options.measure_latency;
            sink.on_visible = Some(Arc::new(move |stamps: &[i64]| {
                rows.fetch_add(stamps.len() as u64, Ordering::Relaxed);
                if !measure {
                    return;
                }
                let now = crate::sink::now_us();
                let mut h = histogram.lock().expect("latency lock");
                // The record timestamps are the rows' latency origins, ms.
                for &ms in stamps {
                    let origin = (ms.max(0) as u64).saturating_mul(1000);
                    match now.checked_sub(origin) {
                        Some(latency) => h.saturating_record(latency),
                        None => {
                            early.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
            Some(sink)
        }
        None => None,
    };
    let build = {
        let (generator, totals, emitted) = (generator.clone(), totals.clone(), emitted.clone());
        let (first_event, wall) = (first_event.clone(), clock.clone());
        let (query, seed, events) = (config.query, config.seed, config.events);
        move |df: &Dataflow| {
            let sink = match &kafka_sink {
                Some(k) => QuerySink::Kafka(k.clone()),
                None => QuerySink::Bench(BenchSink::new(sink_options.clone(), totals.clone())),
            };
            match (&kafka, kafka_partitions) {
                (Some(k), Some(partitions)) => {
                    let topic = k.topic.as_deref().expect("partitions come from the topic");
                    let source =
                        crate::kafka::source(k, topic, events, partitions, emitted.clone());
                    let watermarks = spate::WatermarkStrategy::bounded_out_of_orderness(
                        KAFKA_OUT_OF_ORDERNESS_MS,
                        crate::nexmark::Event::timestamp_ms,
                    );
                    build_query(df, query, source, watermarks, sink);
                }
                _ => {
                    let mut source = NexmarkSource::new(generator.clone(), seed, events)
                        .counting(emitted.clone())
                        .first_event_into(first_event.clone(), wall.clone());
                    if open_loop {
                        source = source.paced(df.clock());
                    }
                    build_query(df, query, source, watermarks(), sink);
                }
            }
        }
    };
    let mut job_config = JobConfig::with_parallelism(config.cores);
    job_config.max_parallelism = config.max_parallelism;
    job_config.cluster = config.cluster.clone();
    job_config.monitor = config
        .monitor
        .map(|a| spate::MonitorConfig::new(a).with_job_name("nexmark"));
    if let Some(settings) = &config.checkpoint {
        job_config.checkpoint = Some(
            settings
                .engine_config(config.restore.clone())
                .map_err(|e| ConfigError::invalid("--checkpoint-mode", e))?,
        );
    }
    let handle = Job::new(job_config).with_clock(clock).start(build)?;
    if let Some(hook) = &config.on_start {
        (hook.0)(handle.failer());
    }
    if let Some(address) = handle.monitor_address() {
        eprintln!("spate-bench: monitor on http://{address}/ (metrics: /metrics)");
    }
    let done = Arc::new(AtomicBool::new(false));
    let progress = (config.progress && std::io::stderr().is_terminal()).then(|| {
        let (done, emitted, events) = (done.clone(), emitted.clone(), config.events);
        std::thread::spawn(move || progress_bar(&done, &emitted, events))
    });
    let report = handle.join();
    done.store(true, Ordering::SeqCst);
    if let Some(thread) = progress {
        let _ = thread.join();
    }
    let report = report?;
    let latency_us = std::mem::replace(
        &mut *totals.latency_us.lock().expect("latency lock"),
        crate::sink::new_histogram(),
    );
    Ok(RunOutcome {
        elapsed: report.elapsed,
        latency_us,
        latency_measured: open_loop,
        events_processed: emitted.load(Ordering::Relaxed),
        rows: totals.rows.load(Ordering::Relaxed),
        rows_before_origin: totals.rows_before_origin.load(Ordering::Relaxed),
        generator,
        checkpoints: report.checkpoints,
        restored_from: report.restored_from,
        started_ms,
        network: report.network,
        first_event_ms: Some(first_event.load(Ordering::Relaxed)).filter(|&ms| ms > 0),
    })
}

fn progress_bar(done: &AtomicBool, emitted: &AtomicU64, events: u64) {
    let bar = indicatif::ProgressBar::new(events);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} events ({per_sec})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    while !done.load(Ordering::SeqCst) {
        bar.set_position(emitted.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.set_position(emitted.load(Ordering::Relaxed));
    bar.finish_and_clear();
}
