//! The embedding tests' job and checks: a service pushes numbered records
//! (record `p` is the number `p`) through an ingress, the job counts them
//! per key, and the service collects `(id, key, count)` rows from an egress.
//! Exactly once means every id once, and per key the counts `1..=c` with `c`
//! the number of ids of that key: what any uninterrupted run produces,
//! whatever the order records of one key met in.

use spate::embed::{EgressSinks, IngressSources};
use spate::internals::sim::SplitMix64;
use spate::{Dataflow, KeyedContext, ProcessError, WatermarkStrategy};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Keys of the counting job.
pub const KEYS: u64 = 61;

/// A result row: (id, key, count of the key's records so far).
pub type Row = (u64, u64, u64);

/// Operator failures at seeded moments: the job fails when the number of
/// records processed (over all subtasks and runs) reaches each point, once.
#[derive(Debug, Default)]
pub struct Faults {
    processed: AtomicU64,
    points: Mutex<BTreeSet<u64>>,
}

impl Faults {
    /// `count` failure points drawn from `seed` in `[n/10, n)`.
    pub fn seeded(seed: u64, n: u64, count: usize) -> Arc<Self> {
        let mut rng = SplitMix64::new(seed);
        let mut points = BTreeSet::new();
        while points.len() < count {
            points.insert(n / 10 + rng.below(n - n / 10));
        }
        Arc::new(Self {
            processed: AtomicU64::new(0),
            points: Mutex::new(points),
        })
    }

    /// The failure points not reached yet.
    pub fn remaining(&self) -> usize {
        self.points.lock().expect("faults lock").len()
    }

    fn tick(&self) -> Result<(), ProcessError> {
        let n = self.processed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.points.lock().expect("faults lock").remove(&n) {
            return Err(format!("injected failure at record {n}").into());
        }
        Ok(())
    }
}

/// Declares the counting job: ingress `ids` → key by `id % KEYS` → count →
/// egress `results`.
pub fn counting_job(
    df: &Dataflow,
    sources: &IngressSources<u64>,
    sinks: &EgressSinks<Row>,
    faults: Option<&Arc<Faults>>,
) {
    let faults = faults.cloned();
    df.source("ids", sources.take(df.subtask()), WatermarkStrategy::none())
        .key_by(|id: &u64| id % KEYS)
        .process("count", move |state| {
            let count = state.value_state::<u64>("count");
            let faults = faults.clone();
            move |id: u64, ctx: &mut KeyedContext<u64, Row>| {
                if let Some(faults) = &faults {
                    faults.tick()?;
                }
                let n = count.update(
                    ctx,
                    || 0,
                    |c| {
                        *c += 1;
                        *c
                    },
                );
                ctx.emit((id, id % KEYS, n));
                Ok(())
            }
        })
        .sink("results", sinks.take(df.subtask()));
}

/// Whether `rows` are exactly once for ids `0..n`: the first problem found.
pub fn check_exactly_once(rows: &[Row], n: u64) -> Result<(), String> {
    let mut ids = vec![0u32; n as usize];
    let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(id, key, count) in rows {
        let seen = ids
            .get_mut(id as usize)
            .ok_or_else(|| format!("id {id} was never pushed"))?;
        *seen += 1;
        if key != id % KEYS {
            return Err(format!("id {id} counted under key {key}"));
        }
        counts.entry(key).or_default().push(count);
    }
    if let Some(id) = ids.iter().position(|&s| s != 1) {
        let times = ids[id];
        return Err(format!("id {id} delivered {times} times"));
    }
    for (key, mut got) in counts {
        got.sort_unstable();
        let expected: Vec<u64> = (1..=got.len() as u64).collect();
        if got != expected {
            let first = got.iter().zip(&expected).position(|(g, e)| g != e);
            return Err(format!("key {key}: counts differ first at rank {first:?}"));
        }
    }
    Ok(())
}

/// The rows as an order-free summary comparable between runs: per key, its
/// counts; and the ids.
pub fn summary(rows: &[Row]) -> (BTreeMap<u64, Vec<u64>>, Vec<u64>) {
    let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
    for &(_, key, count) in rows {
        counts.entry(key).or_default().push(count);
    }
    counts.values_mut().for_each(|c| c.sort_unstable());
    ids.sort_unstable();
    (counts, ids)
}
