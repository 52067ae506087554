//! `/metrics`: the job's figures in the Prometheus text format (0.0.4),
//! encoded by the `prometheus-client` crate from families built at each
//! scrape. Names follow Prometheus conventions (`spate_` prefix, base units
//! last: `_seconds`, `_bytes`; counters end in `_total`, which the encoder
//! adds); every metric has a `spate_job` label (not
//! `job`, Prometheus's own target label), operator figures `operator` and
//! `subtask`. Each metric is documented in `docs/monitoring.md`.

use super::sampler::{watermark_lags, Sample, Sampler};
use crate::watch::JobView;
use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the exposition.
pub(super) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Value {
    Int(u64),
    Float(f64),
    /// Sum, count, and the count in each bucket up to its bound.
    Histogram(f64, u64, Vec<(f64, u64)>),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

/// Every family of one scrape.
#[derive(Debug, Default)]
struct Exposition(Vec<Family>);

impl Exposition {
    fn add(&mut self, name: &'static str, help: &'static str, kind: MetricType) -> &mut Family {
        self.0.push(Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        });
        self.0.last_mut().expect("just pushed")
    }
}

impl Family {
    fn with(&mut self, labels: Labels, value: Value) -> &mut Self {
        self.samples.push((labels, value));
        self
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let mut m = metric.encode_family(labels)?;
                match (family.kind, value) {
                    (MetricType::Counter, Value::Int(v)) => {
                        m.encode_counter::<NoLabelSet, u64, u64>(v, None)?
                    }
                    (MetricType::Counter, Value::Float(v)) => {
                        m.encode_counter::<NoLabelSet, f64, f64>(v, None)?
                    }
                    (_, Value::Int(v)) => m.encode_gauge(v)?,
                    (_, Value::Float(v)) => m.encode_gauge(v)?,
                    (_, Value::Histogram(sum, count, buckets)) => {
                        m.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// Bucket bounds (s) of checkpoint durations.
const DURATION_BOUNDS_S: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Bucket bounds (s) of per-subtask pauses, asynchronous parts and alignments.
const PAUSE_BOUNDS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    30.0,
];

/// A Prometheus histogram from an HDR histogram recorded in `unit` per
/// base unit (1000 for ms, 1e6 for µs, 1 for bytes); the sum is the HDR
/// mean times the count (3 significant digits). The bounds are finite: the
/// text format 0.0.4 encoder adds the `le="+Inf"` bucket itself, with the
/// count (`tests/monitor.rs` checks it equals `_count`).
fn histogram(h: &Histogram<u64>, unit: f64, bounds: &[f64]) -> Value {
    let mut buckets = Vec::with_capacity(bounds.len());
    let mut below = 0u64;
    for &bound in bounds {
        let upto = (bound * unit).round() as u64;
        let cumulative = if h.is_empty() {
            0
        } else {
            h.count_between(0, upto)
        };
        buckets.push((bound, cumulative.saturating_sub(below)));
        below = below.max(cumulative);
    }
    let count = h.len();
    let sum = if count == 0 {
        0.0
    } else {
        h.mean() * count as f64 / unit
    };
    Value::Histogram(sum, count, buckets)
}

/// Powers of 4 from 1 KiB to 64 GiB.
fn byte_bounds() -> Vec<f64> {
    (0..14).map(|i| 1024.0 * 4f64.powi(i)).collect()
}

/// The exposition of one scrape.
pub(super) fn encode(
    job: &str,
    view: &JobView,
    (now, sampler): (&Sample, &Sampler),
    store: (u64, u64),
) -> String {
    let mut e = Exposition::default();
    let base = || -> Labels { vec![("spate_job", job.to_string())] };
    job_families(&mut e, &base(), view, store);
    checkpoint_families(&mut e, &base(), view);
    operator_families(&mut e, job, now, sampler);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(e));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String never fails");
    out
}

fn job_families(e: &mut Exposition, base: &Labels, view: &JobView, store: (u64, u64)) {
    let mut status = base.clone();
    status.push(("status", view.status.name().to_string()));
    e.add(
        "spate_job_status",
        "The job's status (1 for the status in the label).",
        MetricType::Gauge,
    )
    .with(status, Value::Int(1));
    e.add(
        "spate_job_restarts",
        "Restarts of the job by its restart strategy.",
        MetricType::Counter,
    )
    .with(base.clone(), Value::Int(u64::from(view.restarts.restarts)));
    if let Some(ms) = view.restarts.last_failure_ms {
        e.add(
            "spate_job_last_failure_timestamp_seconds",
            "When the last run failed (epoch seconds; the reason is in /api/job).",
            MetricType::Gauge,
        )
        .with(base.clone(), Value::Float(ms as f64 / 1000.0));
    }
    e.add(
        "spate_restores",
        "Runs that restored a checkpoint.",
        MetricType::Counter,
    )
    .with(base.clone(), Value::Int(view.restores.len() as u64));
    if let Some(last) = view.restores.last() {
        e.add(
            "spate_restore_duration_seconds",
            "Time the last restore took, from the run's start until every subtask had restored.",
            MetricType::Gauge,
        )
        .with(base.clone(), Value::Float(last.duration.as_secs_f64()));
        e.add(
            "spate_restored_checkpoint_id",
            "The checkpoint the last restore read.",
            MetricType::Gauge,
        )
        .with(base.clone(), Value::Int(last.checkpoint));
    }
    e.add(
        "spate_store_bytes",
        "Bytes of segment files and manifest in the state directory.",
        MetricType::Gauge,
    )
    .with(base.clone(), Value::Int(store.0));
    e.add(
        "spate_store_segments",
        "Segment files in the state directory.",
        MetricType::Gauge,
    )
    .with(base.clone(), Value::Int(store.1));
    if let Some(n) = &view.network {
        for (name, help, value) in [
            (
                "spate_network_sent_bytes",
                "Bytes this process wrote to the other processes of the cluster (the current run).",
                n.bytes_sent,
            ),
            (
                "spate_network_received_bytes",
                "Bytes this process read from the other processes of the cluster (the current run).",
                n.bytes_received,
            ),
            (
                "spate_network_sent_frames",
                "Frames this process wrote to the other processes (the current run).",
                n.frames_sent,
            ),
            (
                "spate_network_received_frames",
                "Frames this process read from the other processes (the current run).",
                n.frames_received,
            ),
            (
                "spate_network_refused_connections",
                "Data-plane connections refused: a failed handshake, an unexpected peer, or anything once the cluster was complete.",
                n.refused_connections,
            ),
        ] {
            e.add(name, help, MetricType::Counter)
                .with(base.clone(), Value::Int(value));
        }
    }
}

fn checkpoint_families(e: &mut Exposition, base: &Labels, view: &JobView) {
    let s = &view.summary;
    e.add(
        "spate_checkpoints_completed",
        "Completed checkpoints (every run).",
        MetricType::Counter,
    )
    .with(base.clone(), Value::Int(s.completed));
    e.add(
        "spate_checkpoints_failed",
        "Failed checkpoints (every run).",
        MetricType::Counter,
    )
    .with(base.clone(), Value::Int(s.failed));
    e.add(
        "spate_checkpoints_in_progress",
        "Checkpoints in progress.",
        MetricType::Gauge,
    )
    .with(base.clone(), Value::Int(u64::from(view.in_progress)));
    let hist = [
        (
            "spate_checkpoint_duration_seconds",
            "End-to-end duration of completed checkpoints, trigger to commit.",
            &s.duration_ms,
            1e3,
            DURATION_BOUNDS_S.to_vec(),
        ),
        (
            "spate_checkpoint_sync_pause_seconds",
            "Longest synchronous pause per subtask and checkpoint.",
            &s.sync_pause_us,
            1e6,
            PAUSE_BOUNDS_S.to_vec(),
        ),
        (
            "spate_checkpoint_async_seconds",
            "Asynchronous part per subtask and checkpoint (local completion to durable blocks).",
            &s.async_us,
            1e6,
            PAUSE_BOUNDS_S.to_vec(),
        ),
        (
            "spate_checkpoint_alignment_seconds",
            "Barrier alignment per subtask and checkpoint.",
            &s.alignment_us,
            1e6,
            PAUSE_BOUNDS_S.to_vec(),
        ),
        (
            "spate_checkpoint_size_bytes",
            "State bytes written per completed checkpoint (full and delta).",
            &s.size_bytes,
            1.0,
            byte_bounds(),
        ),
        (
            "spate_checkpoint_delta_size_bytes",
            "Delta bytes written per completed checkpoint.",
            &s.delta_size_bytes,
            1.0,
            byte_bounds(),
        ),
        (
            "spate_checkpoint_in_flight_size_bytes",
            "In-flight record bytes written per completed checkpoint.",
            &s.in_flight_size_bytes,
            1.0,
            byte_bounds(),
        ),
    ];
    for (name, help, h, unit, bounds) in hist {
        e.add(name, help, MetricType::Histogram)
            .with(base.clone(), histogram(h, unit, &bounds));
    }
    let latest = view
        .history
        .iter()
        .rev()
        .find(|c| c.stats.status == crate::checkpoint::CheckpointStatus::Completed);
    if let Some(c) = latest {
        let s = &c.stats;
        e.add(
            "spate_last_checkpoint_id",
            "Id of the latest completed checkpoint.",
            MetricType::Gauge,
        )
        .with(base.clone(), Value::Int(s.id));
        e.add(
            "spate_last_checkpoint_duration_seconds",
            "End-to-end duration of the latest completed checkpoint.",
            MetricType::Gauge,
        )
        .with(base.clone(), Value::Float(s.duration_ms as f64 / 1e3));
        e.add(
            "spate_last_checkpoint_size_bytes",
            "State bytes of the latest completed checkpoint.",
            MetricType::Gauge,
        )
        .with(base.clone(), Value::Int(s.state_bytes));
        e.add(
            "spate_last_checkpoint_completed_timestamp_seconds",
            "When the latest completed checkpoint completed (epoch seconds).",
            MetricType::Gauge,
        )
        .with(
            base.clone(),
            Value::Float((s.trigger_ms + s.duration_ms) as f64 / 1e3),
        );
    }
}

fn operator_families(e: &mut Exposition, job: &str, latest: &Sample, sampler: &Sampler) {
    let rates = sampler.rates();
    let held = sampler.backpressure();
    let ops = &latest.figures.operators;
    let labels = |name: &str, subtask: usize| -> Labels {
        vec![
            ("spate_job", job.to_string()),
            ("operator", name.to_string()),
            ("subtask", subtask.to_string()),
        ]
    };
    type Get = fn(&crate::metrics::OperatorSample) -> u64;
    let families: [(&'static str, &'static str, MetricType, Get); 7] = [
        (
            "spate_operator_records_in",
            "Records into the operator.",
            MetricType::Counter,
            |o| o.records_in,
        ),
        (
            "spate_operator_records_out",
            "Records out of the operator.",
            MetricType::Counter,
            |o| o.records_out,
        ),
        (
            "spate_operator_timers_pending",
            "Timers pending (event and processing time).",
            MetricType::Gauge,
            |o| o.timers,
        ),
        (
            "spate_keyed_state_keys",
            "Keys in the operator's keyed state (sampled every second).",
            MetricType::Gauge,
            |o| o.state_keys,
        ),
        (
            "spate_keyed_state_size_bytes",
            "In-memory bytes of the keyed state's tables (slots, or entries and index).",
            MetricType::Gauge,
            |o| o.state_bytes,
        ),
        (
            "spate_keyed_state_values_kept_at_cut",
            "Values of keyed state kept at a checkpoint's cut one entry at a time, because the checkpoint writer was behind (sampled every second).",
            MetricType::Counter,
            |o| o.values_kept,
        ),
        (
            "spate_operator_watermark_seconds",
            "The operator's current watermark (event time, epoch seconds).",
            MetricType::Gauge,
            |o| o.watermark_ms,
        ),
    ];
    for (name, help, kind, get) in families {
        let f = e.add(name, help, kind);
        for o in ops {
            if name == "spate_operator_watermark_seconds" {
                if o.watermark_ms > 0 {
                    f.with(
                        labels(&o.name, o.subtask),
                        Value::Float(get(o) as f64 / 1e3),
                    );
                }
            } else {
                f.with(labels(&o.name, o.subtask), Value::Int(get(o)));
            }
        }
    }
    let f = e.add(
        "spate_operator_records_in_per_second",
        "Records into the operator per second, over the last second.",
        MetricType::Gauge,
    );
    for ((name, subtask), r) in &rates {
        f.with(
            labels(name, *subtask),
            Value::Float(r.records_in_per_second),
        );
    }
    let f = e.add(
        "spate_operator_records_out_per_second",
        "Records out of the operator per second, over the last second.",
        MetricType::Gauge,
    );
    for ((name, subtask), r) in &rates {
        f.with(
            labels(name, *subtask),
            Value::Float(r.records_out_per_second),
        );
    }
    let f = e.add(
        "spate_operator_watermark_lag_seconds",
        "Processing time minus the operator's lowest watermark over its subtasks.",
        MetricType::Gauge,
    );
    for (name, lag) in watermark_lags(latest) {
        f.with(
            vec![("spate_job", job.to_string()), ("operator", name)],
            Value::Float(lag),
        );
    }
    let exchange = |operator: &str, input: u32, subtask: usize| -> Labels {
        vec![
            ("spate_job", job.to_string()),
            ("operator", operator.to_string()),
            ("input", input.to_string()),
            ("subtask", subtask.to_string()),
        ]
    };
    let exchanges = &latest.figures.exchanges;
    let f = e.add(
        "spate_exchange_records_sent",
        "Records a subtask sent into the exchange feeding an operator's input.",
        MetricType::Counter,
    );
    for x in exchanges {
        f.with(
            exchange(&x.operator, x.input, x.subtask),
            Value::Int(x.records_sent),
        );
    }
    let f = e.add(
        "spate_exchange_backpressured_seconds",
        "Time the sending subtask held its chain back because a ring was full.",
        MetricType::Counter,
    );
    for x in exchanges {
        f.with(
            exchange(&x.operator, x.input, x.subtask),
            Value::Float(x.backpressured_us as f64 / 1e6),
        );
    }
    let f = e.add(
        "spate_exchange_backpressured_ratio",
        "Share of the last second the sending subtask was held back (0 to 1).",
        MetricType::Gauge,
    );
    for ((operator, input, subtask), ratio) in &held {
        f.with(exchange(operator, *input, *subtask), Value::Float(*ratio));
    }
    let f = e.add(
        "spate_exchange_ring_batches",
        "Batches in the ring from a sending subtask to a receiving one.",
        MetricType::Gauge,
    );
    for x in exchanges {
        for (to, batches) in x.ring_batches.iter().enumerate() {
            let mut l = exchange(&x.operator, x.input, x.subtask);
            l.push(("receiver", to.to_string()));
            f.with(l, Value::Int(*batches));
        }
    }
    let f = e.add(
        "spate_exchange_ring_capacity_batches",
        "Capacity of each ring of the exchange, in batches.",
        MetricType::Gauge,
    );
    for x in exchanges {
        f.with(
            exchange(&x.operator, x.input, x.subtask),
            Value::Int(x.ring_capacity),
        );
    }
}
