//! The JSON documents of `/api/...`, shaped like Flink's checkpoint REST
//! responses (`counts`, `summary`, `latest`, `history`) with the unit last
//! in every name. Every field is documented in `docs/monitoring.md`.
//! Free text (failure reasons) goes through [`redact`].

use super::redact::redact;
use super::sampler::{exchange_name, Sample, Sampler, Series};
use crate::checkpoint::{CheckpointStats, CheckpointStatus};
use crate::watch::{JobView, RunCheckpoint, Supervision};
use hdrhistogram::Histogram;
use serde::Serialize;

/// `GET /api/job`.
#[derive(Serialize)]
pub(super) struct Job {
    pub name: String,
    pub status: &'static str,
    pub start_timestamp_ms: u64,
    pub duration_ms: u64,
    pub attempt: u32,
    pub parallelism: usize,
    pub max_parallelism: u32,
    pub restarts: Restarts,
    pub config: Config,
}

#[derive(Serialize)]
pub(super) struct Restarts {
    pub count: u32,
    pub strategy: String,
    pub last_failure: Option<String>,
    pub last_failure_timestamp_ms: Option<u64>,
}

/// The job's configuration: settings only, nothing secret (the action
/// token is never shown; whether one is set is).
#[derive(Serialize)]
pub(super) struct Config {
    pub batch_size: usize,
    pub ring_capacity_batches: usize,
    pub pin_cores: bool,
    pub checkpoints: Option<CheckpointConfig>,
    pub monitor_address: String,
    pub actions_enabled: bool,
}

/// `GET /api/checkpoints/config` (Flink's `/checkpoints/config`).
#[derive(Serialize)]
pub(super) struct CheckpointConfig {
    pub mode: &'static str,
    pub interval_ms: u64,
    pub min_pause_ms: u64,
    pub timeout_ms: u64,
    pub max_concurrent: usize,
    pub tolerable_failures: u32,
    pub retained: usize,
    pub incremental: bool,
    pub max_delta_chain: u32,
    pub max_delta_ratio: f64,
    pub trigger_after_changed_bytes: Option<u64>,
    pub state_dir: String,
}

/// `GET /api/checkpoints` (Flink's `/jobs/:id/checkpoints`).
#[derive(Serialize)]
pub(super) struct Checkpoints {
    pub counts: Counts,
    pub summary: Summary,
    pub rates: Rates,
    pub latest: Latest,
    pub history: Vec<Checkpoint>,
}

#[derive(Serialize)]
pub(super) struct Counts {
    pub restored: usize,
    pub total: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Statistics of one figure over the completed checkpoints.
#[derive(Serialize)]
pub(super) struct Stat {
    pub count: u64,
    pub min: u64,
    pub max: u64,
    pub avg: f64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
}

#[derive(Serialize)]
pub(super) struct Summary {
    pub end_to_end_duration_ms: Stat,
    pub sync_pause_us: Stat,
    pub async_duration_us: Stat,
    pub alignment_duration_us: Stat,
    pub state_size_bytes: Stat,
    pub delta_size_bytes: Stat,
    pub in_flight_size_bytes: Stat,
    pub total_state_bytes: u64,
    pub total_delta_bytes: u64,
    pub total_in_flight_bytes: u64,
}

#[derive(Serialize)]
pub(super) struct Rates {
    pub completed_per_minute: f64,
    /// Completed over ended checkpoints (0 to 1); null before the first end.
    pub success_rate: Option<f64>,
    pub failure_rate: Option<f64>,
    pub restores: usize,
    pub mean_restore_duration_ms: Option<f64>,
}

#[derive(Serialize)]
pub(super) struct Latest {
    pub completed: Option<Checkpoint>,
    pub failed: Option<Checkpoint>,
    pub restored: Option<Restored>,
}

#[derive(Serialize)]
pub(super) struct Restored {
    pub id: u64,
    pub attempt: u32,
    pub restore_timestamp_ms: u64,
    pub restore_duration_ms: u64,
}

/// One checkpoint (`history`, `latest`, `/api/checkpoints/details/:id`).
#[derive(Serialize)]
pub(super) struct Checkpoint {
    pub id: u64,
    pub attempt: u32,
    pub status: &'static str,
    pub failure_message: Option<String>,
    pub cause: &'static str,
    pub checkpoint_type: &'static str,
    pub trigger_timestamp_ms: u64,
    pub end_timestamp_ms: u64,
    pub end_to_end_duration_ms: u64,
    pub state_size_bytes: u64,
    pub delta_size_bytes: u64,
    pub in_flight_size_bytes: u64,
    pub num_acknowledged_subtasks: usize,
    pub subtasks: Vec<Subtask>,
}

#[derive(Serialize)]
pub(super) struct Subtask {
    pub subtask: u32,
    pub sync_pause_us: u64,
    pub async_duration_us: u64,
    pub alignment_duration_us: u64,
    pub state_size_bytes: u64,
    pub delta_size_bytes: u64,
    pub in_flight_size_bytes: u64,
    pub unaligned: bool,
}

/// `GET /api/operators`: the live figures.
#[derive(Serialize)]
pub(super) struct Operators {
    pub timestamp_ms: u64,
    pub operators: Vec<Operator>,
    pub exchanges: Vec<Exchange>,
    pub series: Series,
}

#[derive(Serialize)]
pub(super) struct Operator {
    pub name: String,
    pub kind: &'static str,
    pub subtask: usize,
    pub records_in: u64,
    pub records_out: u64,
    pub records_in_per_second: f64,
    pub records_out_per_second: f64,
    pub watermark_ms: Option<u64>,
    pub watermark_lag_ms: Option<u64>,
    pub timers_pending: u64,
    pub state_keys: u64,
    pub state_size_bytes: u64,
    pub values_kept_at_cut: u64,
}

#[derive(Serialize)]
pub(super) struct Exchange {
    pub name: String,
    pub operator: String,
    pub input: u32,
    pub subtask: usize,
    pub records_sent: u64,
    pub backpressured_ms: u64,
    pub backpressured_now: bool,
    pub backpressured_ratio: f64,
    pub ring_batches: Vec<u64>,
    pub ring_capacity_batches: u64,
}

/// `GET /api/overview`: what the page shows, in one request.
#[derive(Serialize)]
pub(super) struct Overview {
    pub job: Job,
    pub checkpoints: Checkpoints,
    pub operators: Operators,
}

fn stat(h: &Histogram<u64>) -> Stat {
    let q = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    Stat {
        count: h.len(),
        min: if h.is_empty() { 0 } else { h.min() },
        max: h.max(),
        avg: if h.is_empty() { 0.0 } else { h.mean() },
        p50: q(0.5),
        p90: q(0.9),
        p95: q(0.95),
        p99: q(0.99),
        p999: q(0.999),
    }
}

pub(super) fn checkpoint_config(job: &Supervision) -> Option<CheckpointConfig> {
    let c = job.config.checkpoint.as_ref()?;
    Some(CheckpointConfig {
        mode: c.mode.name(),
        interval_ms: c.interval_ms,
        min_pause_ms: c.min_pause_ms,
        timeout_ms: c.timeout_ms,
        max_concurrent: c.max_concurrent,
        tolerable_failures: c.tolerable_failures,
        retained: c.retained,
        incremental: c.incremental,
        max_delta_chain: c.max_delta_chain,
        max_delta_ratio: c.max_delta_ratio,
        trigger_after_changed_bytes: c.trigger_after_changed_bytes,
        state_dir: c.dir.display().to_string(),
    })
}

pub(super) fn job(job: &Supervision, view: &JobView, name: &str, address: String) -> Job {
    let config = &job.config;
    Job {
        name: name.to_string(),
        status: view.status.name(),
        start_timestamp_ms: job.started_ms,
        duration_ms: view.now_ms.saturating_sub(job.started_ms),
        attempt: view.attempt,
        parallelism: config.parallelism,
        max_parallelism: config.max_parallelism,
        restarts: Restarts {
            count: view.restarts.restarts,
            strategy: format!("{:?}", config.restart),
            last_failure: view.restarts.last_failure.as_deref().map(redact),
            last_failure_timestamp_ms: view.restarts.last_failure_ms,
        },
        config: Config {
            batch_size: config.batch_size,
            ring_capacity_batches: config.ring_capacity,
            pin_cores: config.pin_cores,
            checkpoints: checkpoint_config(job),
            monitor_address: address,
            actions_enabled: config
                .monitor
                .as_ref()
                .is_some_and(|m| m.action_token.is_some()),
        },
    }
}

pub(super) fn checkpoint(c: &RunCheckpoint) -> Checkpoint {
    let s: &CheckpointStats = &c.stats;
    let (status, failure_message) = match &s.status {
        CheckpointStatus::InProgress => ("IN_PROGRESS", None),
        CheckpointStatus::Completed => ("COMPLETED", None),
        CheckpointStatus::Failed(reason) => ("FAILED", Some(redact(reason))),
    };
    Checkpoint {
        id: s.id,
        attempt: c.attempt,
        status,
        failure_message,
        cause: s.cause.name(),
        checkpoint_type: s.mode,
        trigger_timestamp_ms: s.trigger_ms,
        end_timestamp_ms: s.trigger_ms + s.duration_ms,
        end_to_end_duration_ms: s.duration_ms,
        state_size_bytes: s.state_bytes,
        delta_size_bytes: s.subtasks.iter().map(|t| t.delta_bytes).sum(),
        in_flight_size_bytes: s.in_flight_bytes,
        num_acknowledged_subtasks: s.subtasks.len(),
        subtasks: s
            .subtasks
            .iter()
            .map(|t| Subtask {
                subtask: t.subtask,
                sync_pause_us: t.sync_us,
                async_duration_us: t.async_us,
                alignment_duration_us: t.alignment_us,
                state_size_bytes: t.state_bytes,
                delta_size_bytes: t.delta_bytes,
                in_flight_size_bytes: t.in_flight_bytes,
                unaligned: t.switched_to_unaligned,
            })
            .collect(),
    }
}

pub(super) fn checkpoints(view: &JobView) -> Checkpoints {
    let s = &view.summary;
    let ended = s.completed + s.failed;
    let rate = |n: u64| (ended > 0).then(|| n as f64 / ended as f64);
    let restore_ms: Vec<f64> = view
        .restores
        .iter()
        .map(|r| r.duration.as_secs_f64() * 1000.0)
        .collect();
    let latest = |completed: bool| {
        view.history
            .iter()
            .rev()
            .find(|c| (c.stats.status == CheckpointStatus::Completed) == completed)
            .map(checkpoint)
    };
    Checkpoints {
        counts: Counts {
            restored: view.restores.len(),
            total: ended + u64::from(view.in_progress),
            in_progress: u64::from(view.in_progress),
            completed: s.completed,
            failed: s.failed,
        },
        summary: Summary {
            end_to_end_duration_ms: stat(&s.duration_ms),
            sync_pause_us: stat(&s.sync_pause_us),
            async_duration_us: stat(&s.async_us),
            alignment_duration_us: stat(&s.alignment_us),
            state_size_bytes: stat(&s.size_bytes),
            delta_size_bytes: stat(&s.delta_size_bytes),
            in_flight_size_bytes: stat(&s.in_flight_size_bytes),
            total_state_bytes: s.state_bytes,
            total_delta_bytes: s.delta_bytes,
            total_in_flight_bytes: s.in_flight_bytes,
        },
        rates: Rates {
            completed_per_minute: s.completed_per_minute(),
            success_rate: rate(s.completed),
            failure_rate: rate(s.failed),
            restores: restore_ms.len(),
            mean_restore_duration_ms: (!restore_ms.is_empty())
                .then(|| restore_ms.iter().sum::<f64>() / restore_ms.len() as f64),
        },
        latest: Latest {
            completed: latest(true),
            failed: latest(false),
            restored: view.restores.last().map(|r| Restored {
                id: r.checkpoint,
                attempt: r.attempt,
                restore_timestamp_ms: r.at_ms,
                restore_duration_ms: r.duration.as_millis() as u64,
            }),
        },
        history: view.history.iter().map(checkpoint).collect(),
    }
}

pub(super) fn operators(latest: &Sample, sampler: &Sampler) -> Operators {
    let rates = sampler.rates();
    let held = sampler.backpressure();
    let operators = latest
        .figures
        .operators
        .iter()
        .map(|o| {
            let r = rates
                .get(&(o.name.to_string(), o.subtask))
                .copied()
                .unwrap_or_default();
            let watermark = (o.watermark_ms > 0).then_some(o.watermark_ms);
            Operator {
                name: o.name.to_string(),
                kind: o.kind.name(),
                subtask: o.subtask,
                records_in: o.records_in,
                records_out: o.records_out,
                records_in_per_second: r.records_in_per_second,
                records_out_per_second: r.records_out_per_second,
                watermark_ms: watermark,
                watermark_lag_ms: watermark.map(|w| latest.at_ms.saturating_sub(w)),
                timers_pending: o.timers,
                state_keys: o.state_keys,
                state_size_bytes: o.state_bytes,
                values_kept_at_cut: o.values_kept,
            }
        })
        .collect();
    let exchanges = latest
        .figures
        .exchanges
        .iter()
        .map(|e| Exchange {
            name: exchange_name(&e.operator, e.input),
            operator: e.operator.to_string(),
            input: e.input,
            subtask: e.subtask,
            records_sent: e.records_sent,
            backpressured_ms: e.backpressured_us / 1000,
            backpressured_now: e.backpressured_now,
            backpressured_ratio: held
                .get(&(e.operator.to_string(), e.input, e.subtask))
                .copied()
                .unwrap_or(0.0),
            ring_batches: e.ring_batches.clone(),
            ring_capacity_batches: e.ring_capacity,
        })
        .collect();
    Operators {
        timestamp_ms: latest.at_ms,
        operators,
        exchanges,
        series: sampler.series(),
    }
}
