//! Once-a-second samples of the job's figures: rates (records per second,
//! backpressured time per second) come from the last two samples, and the
//! page's charts from the last two minutes of them.

use crate::metrics::{MetricsSnapshot, OperatorKind};
use std::collections::{BTreeMap, VecDeque};

/// Samples kept (one a second: two minutes).
const SAMPLES: usize = 120;

/// The figures at one moment.
pub(super) struct Sample {
    /// Processing time (epoch ms).
    pub at_ms: u64,
    pub figures: MetricsSnapshot,
}

/// The last [`SAMPLES`] samples.
#[derive(Default)]
pub(super) struct Sampler {
    samples: VecDeque<Sample>,
}

/// Rates of one operator on one subtask between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Rates {
    pub records_in_per_second: f64,
    pub records_out_per_second: f64,
}

/// One point of an operator's or exchange's series for the page.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct Point {
    /// Epoch ms.
    pub t: u64,
    pub v: f64,
}

/// The page's series, by operator (summed over subtasks) and by exchange.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(super) struct Series {
    /// Records per second out of each source and keyed operator, into each sink.
    pub throughput: BTreeMap<String, Vec<Point>>,
    /// Share of time (0 to 1) the senders into each exchange were held back.
    pub backpressure: BTreeMap<String, Vec<Point>>,
    /// Processing time minus the lowest watermark of each operator (s).
    pub watermark_lag_seconds: BTreeMap<String, Vec<Point>>,
}

/// The name of an exchange in series: its target and input.
pub(super) fn exchange_name(operator: &str, input: u32) -> String {
    format!("{operator}#{input}")
}

impl Sampler {
    pub(super) fn add(&mut self, sample: Sample) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Rates per (operator, subtask) between the last two samples.
    pub(super) fn rates(&self) -> BTreeMap<(String, usize), Rates> {
        let mut out = BTreeMap::new();
        let n = self.samples.len();
        if n < 2 {
            return out;
        }
        let (a, b) = (&self.samples[n - 2], &self.samples[n - 1]);
        let seconds = (b.at_ms.saturating_sub(a.at_ms)).max(1) as f64 / 1000.0;
        for op in &b.figures.operators {
            let before = a
                .figures
                .operators
                .iter()
                .find(|o| o.name == op.name && o.subtask == op.subtask);
            let (records_in, records_out) =
                before.map_or((0, 0), |o| (o.records_in, o.records_out));
            out.insert(
                (op.name.to_string(), op.subtask),
                Rates {
                    records_in_per_second: op.records_in.saturating_sub(records_in) as f64
                        / seconds,
                    records_out_per_second: op.records_out.saturating_sub(records_out) as f64
                        / seconds,
                },
            );
        }
        out
    }

    /// Share of the time between the last two samples that each
    /// (exchange, sending subtask) was held back.
    pub(super) fn backpressure(&self) -> BTreeMap<(String, u32, usize), f64> {
        let mut out = BTreeMap::new();
        let n = self.samples.len();
        if n < 2 {
            return out;
        }
        let (a, b) = (&self.samples[n - 2], &self.samples[n - 1]);
        let us = (b.at_ms.saturating_sub(a.at_ms)).max(1) as f64 * 1000.0;
        for e in &b.figures.exchanges {
            let before =
                a.figures.exchanges.iter().find(|x| {
                    x.operator == e.operator && x.input == e.input && x.subtask == e.subtask
                });
            let held = e
                .backpressured_us
                .saturating_sub(before.map_or(0, |x| x.backpressured_us));
            out.insert(
                (e.operator.to_string(), e.input, e.subtask),
                (held as f64 / us).min(1.0),
            );
        }
        out
    }

    /// The page's series over the samples kept.
    pub(super) fn series(&self) -> Series {
        let mut series = Series::default();
        for pair in self.samples.iter().collect::<Vec<_>>().windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let seconds = (b.at_ms.saturating_sub(a.at_ms)).max(1) as f64 / 1000.0;
            let mut throughput: BTreeMap<String, f64> = BTreeMap::new();
            for op in &b.figures.operators {
                let before = a
                    .figures
                    .operators
                    .iter()
                    .find(|o| o.name == op.name && o.subtask == op.subtask);
                let delta = match op.kind {
                    OperatorKind::Sink => op
                        .records_in
                        .saturating_sub(before.map_or(0, |o| o.records_in)),
                    _ => op
                        .records_out
                        .saturating_sub(before.map_or(0, |o| o.records_out)),
                };
                *throughput.entry(op.name.to_string()).or_default() += delta as f64 / seconds;
            }
            for (name, v) in throughput {
                series
                    .throughput
                    .entry(name)
                    .or_default()
                    .push(Point { t: b.at_ms, v });
            }
            let mut held: BTreeMap<String, (f64, usize)> = BTreeMap::new();
            for e in &b.figures.exchanges {
                let before = a.figures.exchanges.iter().find(|x| {
                    x.operator == e.operator && x.input == e.input && x.subtask == e.subtask
                });
                let us = e
                    .backpressured_us
                    .saturating_sub(before.map_or(0, |x| x.backpressured_us));
                let entry = held.entry(exchange_name(&e.operator, e.input)).or_default();
                entry.0 += (us as f64 / (seconds * 1e6)).min(1.0);
                entry.1 += 1;
            }
            for (name, (sum, n)) in held {
                series.backpressure.entry(name).or_default().push(Point {
                    t: b.at_ms,
                    v: sum / n.max(1) as f64,
                });
            }
            for (name, lag) in watermark_lags(b) {
                series
                    .watermark_lag_seconds
                    .entry(name)
                    .or_default()
                    .push(Point { t: b.at_ms, v: lag });
            }
        }
        series
    }
}

/// Per operator with a watermark: processing time minus its lowest
/// watermark over the subtasks (s), at the sample's time.
pub(super) fn watermark_lags(sample: &Sample) -> BTreeMap<String, f64> {
    let mut lowest: BTreeMap<String, u64> = BTreeMap::new();
    for op in &sample.figures.operators {
        if op.watermark_ms == 0 {
            continue;
        }
        let w = lowest.entry(op.name.to_string()).or_insert(u64::MAX);
        *w = (*w).min(op.watermark_ms);
    }
    lowest
        .into_iter()
        .map(|(name, w)| (name, sample.at_ms.saturating_sub(w) as f64 / 1000.0))
        .collect()
}
