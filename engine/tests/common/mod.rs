//! Shared inputs and reference implementations for the engine tests.
#![allow(dead_code)]

use spate::internals::sim::SplitMix64;
use spate::source::VecSource;
use spate::window::{Aggregate, WindowAssigner, WindowResult};
use spate::{Dataflow, KeyedContext, Stream, WatermarkStrategy};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A test event: key, event time, value.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    spate::Schema,
)]
pub struct Event {
    pub key: u64,
    pub ts: u64,
    pub value: u64,
}

/// `n` events over `keys` keys with non-decreasing timestamps (random gaps
/// of 0..max_gap ms), so every striped source subtask is monotone.
pub fn events(seed: u64, n: usize, keys: u64, max_gap: u64) -> Vec<Event> {
    let mut rng = SplitMix64::new(seed);
    let mut ts = 1_000;
    (0..n)
        .map(|_| {
            ts += rng.below(max_gap + 1);
            Event {
                key: rng.below(keys),
                ts,
                value: rng.below(1_000),
            }
        })
        .collect()
}

/// The source every test job starts from.
pub fn event_source(df: &Dataflow, data: &Arc<Vec<Event>>) -> Stream<Event> {
    df.source(
        "events",
        VecSource::new(data.clone()),
        WatermarkStrategy::monotonous(|e: &Event| e.ts),
    )
}

/// Per key: (count, sum) over the whole input, as a keyed process function
/// emits it on every record; the last emission per key is the total.
pub fn running_totals(events: &Stream<Event>) -> Stream<(u64, u64, u64)> {
    events.key_by(|e: &Event| e.key).process("totals", |state| {
        let totals = state.value_state::<(u64, u64)>("totals");
        move |e: Event, ctx: &mut KeyedContext<u64, (u64, u64, u64)>| {
            let (count, sum) = totals.update(
                ctx,
                || (0, 0),
                |t| {
                    t.0 += 1;
                    t.1 += e.value;
                    *t
                },
            );
            ctx.emit((e.key, count, sum));
            Ok(())
        }
    })
}

/// The final (count, sum) per key from a stream of running totals.
pub fn finals(updates: &[(u64, u64, u64)]) -> BTreeMap<u64, (u64, u64)> {
    let mut out = BTreeMap::new();
    for &(key, count, sum) in updates {
        let e = out.entry(key).or_insert((0, 0));
        if count > e.0 {
            *e = (count, sum);
        }
    }
    out
}

/// Sequential reference of the totals.
pub fn reference_totals(data: &[Event]) -> BTreeMap<u64, (u64, u64)> {
    let mut out = BTreeMap::new();
    for e in data {
        let t = out.entry(e.key).or_insert((0, 0));
        t.0 += 1;
        t.1 += e.value;
    }
    out
}

/// Windowed (count, sum) per key.
pub fn windowed(
    events: &Stream<Event>,
    assigner: WindowAssigner,
) -> Stream<WindowResult<u64, (u64, u64)>> {
    events.key_by(|e: &Event| e.key).window(assigner).aggregate(
        "window",
        Aggregate::new(
            || (0u64, 0u64),
            |acc: &mut (u64, u64), e: &Event| {
                acc.0 += 1;
                acc.1 += e.value;
            },
            |acc: &(u64, u64)| *acc,
        ),
    )
}

/// Sequential reference of windowed (count, sum): every window holding an
/// event, sorted.
pub fn reference_windows(
    data: &[Event],
    size: u64,
    slide: u64,
) -> Vec<WindowResult<u64, (u64, u64)>> {
    let mut acc: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    for e in data {
        let mut start = e.ts - e.ts % slide;
        loop {
            if start + size > e.ts {
                let a = acc.entry((e.key, start)).or_insert((0, 0));
                a.0 += 1;
                a.1 += e.value;
            }
            if start < slide || start + size <= e.ts {
                break;
            }
            start -= slide;
        }
    }
    let mut out: Vec<_> = acc
        .into_iter()
        .map(|((key, start), value)| WindowResult {
            key,
            start,
            end: start + size,
            value,
        })
        .collect();
    out.sort();
    out
}
pub mod http;
