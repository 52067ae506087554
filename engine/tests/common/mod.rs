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

// The type is the aggregate's three closures; a name would not help.
#[allow(clippy::type_complexity)]
fn count_and_sum() -> Aggregate<
    impl Fn() -> (u64, u64),
    impl Fn(&mut (u64, u64), &Event),
    impl Fn(&(u64, u64)) -> (u64, u64),
> {
    Aggregate::new(
        || (0u64, 0u64),
        |acc: &mut (u64, u64), e: &Event| {
            acc.0 += 1;
            acc.1 += e.value;
        },
        |acc: &(u64, u64)| *acc,
    )
}

/// Windowed (count, sum) per key, with a merging aggregate: sliding windows
/// whose slide divides their size aggregate in panes.
pub fn windowed(
    events: &Stream<Event>,
    assigner: WindowAssigner,
) -> Stream<WindowResult<u64, (u64, u64)>> {
    events.key_by(|e: &Event| e.key).window(assigner).aggregate(
        "window",
        count_and_sum().with_merge(|acc: &mut (u64, u64), other: &(u64, u64)| {
            acc.0 += other.0;
            acc.1 += other.1;
        }),
    )
}

/// [`windowed`] without a merge: one accumulator per key and window.
pub fn windowed_per_window(
    events: &Stream<Event>,
    assigner: WindowAssigner,
) -> Stream<WindowResult<u64, (u64, u64)>> {
    events
        .key_by(|e: &Event| e.key)
        .window(assigner)
        .aggregate("window", count_and_sum())
}

/// Per window end, (count, sum) over every key's window: each subtask
/// pre-aggregates its window results per end (`pre_aggregate`), then the
/// end's subtask adds the partial results up, emitting the running total
/// `(end, count, sum)` on each (the last per end is the total, as [`finals`]
/// reads it).
pub fn window_totals(windows: &Stream<WindowResult<u64, (u64, u64)>>) -> Stream<(u64, u64, u64)> {
    pre_aggregated_totals(
        "window-totals",
        &windows.map(|r: WindowResult<u64, (u64, u64)>| (r.end, r.value.0, r.value.1)),
    )
}

/// Per `ts / 50` (a bucket of event time), (count, sum) of the events,
/// pre-aggregated on each subtask straight from the source: partial results
/// wait there for the watermark, so checkpoint barriers find some held.
pub fn bucket_totals(events: &Stream<Event>) -> Stream<(u64, u64, u64)> {
    pre_aggregated_totals(
        "bucket-totals",
        &events.map(|e: Event| (e.ts / 50, 1, e.value)),
    )
}

/// Sequential reference of [`bucket_totals`].
pub fn reference_bucket_totals(data: &[Event]) -> BTreeMap<u64, (u64, u64)> {
    let mut out = BTreeMap::new();
    for e in data {
        let t = out.entry(e.ts / 50).or_insert((0, 0));
        t.0 += 1;
        t.1 += e.value;
    }
    out
}

/// `(key, count, sum)` records pre-aggregated per key on each subtask, then
/// added up on the key's subtask, emitting running totals.
fn pre_aggregated_totals(
    name: &str,
    partials: &Stream<(u64, u64, u64)>,
) -> Stream<(u64, u64, u64)> {
    partials
        .pre_aggregate(
            |p: &(u64, u64, u64)| p.0,
            |held, next| {
                held.1 += next.1;
                held.2 += next.2;
            },
        )
        .key_by(|p: &(u64, u64, u64)| p.0)
        .process(name, |state| {
            let totals = state.value_state::<(u64, u64)>("totals");
            move |p: (u64, u64, u64), ctx: &mut KeyedContext<u64, (u64, u64, u64)>| {
                let (count, sum) = totals.update(
                    ctx,
                    || (0, 0),
                    |t| {
                        t.0 += p.1;
                        t.1 += p.2;
                        *t
                    },
                );
                ctx.emit((p.0, count, sum));
                Ok(())
            }
        })
}

/// Sequential reference of [`window_totals`] from the reference windows.
pub fn reference_window_totals(
    windows: &[WindowResult<u64, (u64, u64)>],
) -> BTreeMap<u64, (u64, u64)> {
    let mut out = BTreeMap::new();
    for w in windows {
        let t = out.entry(w.end).or_insert((0, 0));
        t.0 += w.value.0;
        t.1 += w.value.1;
    }
    out
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

/// The lines of the committed files (`*.jsonl`) of a file sink's directory, sorted.
pub fn committed_lines(dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let text = std::fs::read_to_string(&path).unwrap();
            lines.extend(text.lines().map(str::to_string));
        }
    }
    lines.sort();
    lines
}
