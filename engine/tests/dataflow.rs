//! End-to-end behaviour of the engine on the glommio runtime: keyed results
//! independent of parallelism, windows against a sequential reference, joins,
//! backpressure, failures, ingress/egress, file input and stop on request.

mod common;

use common::*;
use proptest::prelude::*;
use spate::embed::{egress, ingress};
use spate::sink::{Collector, DiscardSink};
use spate::source::{FileLineSource, Source, SourcePoll};
use spate::window::WindowAssigner;
use spate::{
    CoProcessFunction, Job, JobConfig, JobError, KeyedContext, ProcessError, SourceError,
    WatermarkStrategy,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn config(parallelism: usize) -> JobConfig {
    JobConfig {
        parallelism,
        // Tests may run more subtasks than the machine has cores.
        pin_cores: false,
        ..JobConfig::default()
    }
}

#[test]
fn keyed_results_do_not_depend_on_parallelism() {
    let data = Arc::new(events(1, 50_000, 300, 3));
    let expected = reference_totals(&data);
    let expected_windows = reference_windows(&data, 1_000, 250);
    for parallelism in [1, 2, 4] {
        let totals = Collector::new();
        let windows = Collector::new();
        let (t, w, d) = (totals.clone(), windows.clone(), data.clone());
        Job::new(config(parallelism))
            .run(move |df| {
                let events = event_source(df, &d);
                running_totals(&events).sink("totals-out", t.sink());
                windowed(&events, WindowAssigner::sliding(1_000, 250))
                    .sink("windows-out", w.sink());
            })
            .unwrap();
        let updates = totals.take();
        assert_eq!(
            updates.len(),
            data.len(),
            "one update per event, parallelism {parallelism}"
        );
        assert_eq!(
            finals(&updates),
            expected,
            "totals with parallelism {parallelism}"
        );
        let mut got = windows.take();
        got.sort();
        assert_eq!(
            got, expected_windows,
            "windows with parallelism {parallelism}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn windows_match_a_sequential_reference(
        seed in any::<u64>(),
        n in 1usize..3_000,
        keys in 1u64..50,
        max_gap in 0u64..40,
        size in 1u64..500,
        slide_divisor in 1u64..5,
        parallelism in 1usize..4,
        panes in any::<bool>(),
    ) {
        let slide = (size / slide_divisor).max(1);
        let data = Arc::new(events(seed, n, keys, max_gap));
        let windows = Collector::new();
        let totals = Collector::new();
        let (w, t, d) = (windows.clone(), totals.clone(), data.clone());
        Job::new(config(parallelism))
            .run(move |df| {
                let events = event_source(df, &d);
                let assigner = WindowAssigner::sliding(size, slide);
                let results = if panes {
                    windowed(&events, assigner)
                } else {
                    windowed_per_window(&events, assigner)
                };
                window_totals(&results).sink("totals", t.sink());
                results.sink("out", w.sink());
            })
            .unwrap();
        let mut got = windows.take();
        got.sort();
        let expected = reference_windows(&data, size, slide);
        prop_assert_eq!(finals(&totals.take()), reference_window_totals(&expected));
        prop_assert_eq!(got, expected);
    }
}

/// A window top-1 (the keys with the largest count, ties kept) in two
/// stages: each subtask folds its keys' counts when a window closes
/// (`aggregate_fold`), then the window's subtask combines the folds. Equals
/// the top-1 of the sequential reference, whatever the parallelism.
#[test]
fn window_folds_make_a_top_1_per_window() {
    let data = Arc::new(events(5, 30_000, 200, 2));
    type Best = (u64, Vec<u64>);
    fn add(best: &mut Best, count: u64, keys: &[u64]) {
        if count > best.0 || best.1.is_empty() {
            *best = (count, Vec::new());
        }
        if count == best.0 {
            best.1.extend_from_slice(keys);
        }
    }
    let mut expected: BTreeMap<u64, Best> = BTreeMap::new();
    for w in reference_windows(&data, 600, 200) {
        add(expected.entry(w.end).or_default(), w.value.0, &[w.key]);
    }
    for best in expected.values_mut() {
        best.1.sort_unstable();
    }
    for parallelism in [1, 2, 3] {
        let tops = Collector::new();
        let (out, d) = (tops.clone(), data.clone());
        Job::new(config(parallelism))
            .run(move |df| {
                event_source(df, &d)
                    .key_by(|e: &Event| e.key)
                    .window(WindowAssigner::sliding(600, 200))
                    .aggregate_fold(
                        "top",
                        spate::window::Count,
                        Best::default,
                        |best: &mut Best, key: &u64, count: u64| add(best, count, &[*key]),
                    )
                    .key_by(|f: &spate::window::WindowFold<Best>| f.end)
                    .process("combine", |state| {
                        let best = state.value_state::<Best>("best");
                        move |f: spate::window::WindowFold<Best>,
                              ctx: &mut KeyedContext<u64, (u64, Best)>| {
                            let combined = best.update(ctx, Best::default, |b| {
                                add(b, f.value.0, &f.value.1);
                                b.clone()
                            });
                            ctx.emit((f.end, combined));
                            Ok(())
                        }
                    })
                    .sink("out", out.sink());
            })
            .unwrap();
        // The last combination per window end holds every subtask's fold.
        let mut got: BTreeMap<u64, Best> = BTreeMap::new();
        let mut folds: BTreeMap<u64, usize> = BTreeMap::new();
        for (end, mut best) in tops.take() {
            best.1.sort_unstable();
            *folds.entry(end).or_default() += 1;
            // Combinations only grow: a larger count, or more keys at it.
            let held = got.entry(end).or_default();
            if (best.0, best.1.len()) > (held.0, held.1.len()) {
                *held = best;
            }
        }
        assert_eq!(got, expected, "top-1 per window, parallelism {parallelism}");
        assert!(
            folds.values().all(|&n| n <= parallelism),
            "at most one fold per window and subtask, parallelism {parallelism}"
        );
    }
}

#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
struct Person {
    id: u64,
    name: String,
}

#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
struct Auction {
    id: u64,
    seller: u64,
}

/// Joins auctions with their seller, whichever arrives first.
struct SellerJoin {
    person: spate::ValueState<u64, String>,
    waiting: spate::ListState<u64, u64>,
}

impl CoProcessFunction<u64, Person, Auction, (u64, String)> for SellerJoin {
    fn process_element1(
        &mut self,
        p: Person,
        ctx: &mut KeyedContext<u64, (u64, String)>,
    ) -> Result<(), ProcessError> {
        for auction in self.waiting.get(ctx) {
            ctx.emit((auction, p.name.clone()));
        }
        self.waiting.clear(ctx);
        self.person.set(ctx, p.name);
        Ok(())
    }

    fn process_element2(
        &mut self,
        a: Auction,
        ctx: &mut KeyedContext<u64, (u64, String)>,
    ) -> Result<(), ProcessError> {
        match self.person.get(ctx) {
            Some(name) => ctx.emit((a.id, name)),
            None => self.waiting.add(ctx, a.id),
        }
        Ok(())
    }
}

#[test]
fn connected_streams_join_by_key() {
    let people: Arc<Vec<Person>> = Arc::new(
        (0..500)
            .map(|id| Person {
                id,
                name: format!("p{id}"),
            })
            .collect(),
    );
    let auctions: Arc<Vec<Auction>> = Arc::new(
        (0..3_000)
            .map(|id| Auction {
                id,
                seller: (id * 7919) % 500,
            })
            .collect(),
    );
    let mut expected: Vec<(u64, String)> = auctions
        .iter()
        .map(|a| (a.id, format!("p{}", a.seller)))
        .collect();
    expected.sort();
    let joined = Collector::new();
    let (out, p, a) = (joined.clone(), people.clone(), auctions.clone());
    Job::new(config(3))
        .run(move |df| {
            let people = df
                .source(
                    "people",
                    spate::source::VecSource::new(p.clone()),
                    WatermarkStrategy::none(),
                )
                .key_by(|p: &Person| p.id);
            let auctions = df
                .source(
                    "auctions",
                    spate::source::VecSource::new(a.clone()),
                    WatermarkStrategy::none(),
                )
                .key_by(|a: &Auction| a.seller);
            people
                .connect(&auctions)
                .process("join", |state| SellerJoin {
                    person: state.value_state("person"),
                    waiting: state.list_state("waiting"),
                })
                .sink("out", out.sink());
        })
        .unwrap();
    let mut got = joined.take();
    got.sort();
    assert_eq!(got, expected);
}

/// Counts what it emits, so a test can see how far ahead of the sink it ran.
struct CountingSource {
    next: u64,
    end: u64,
    stride: u64,
    emitted: Arc<AtomicU64>,
}

impl Source<u64> for CountingSource {
    fn open(&mut self, context: &spate::source::SourceContext) -> Result<(), SourceError> {
        self.next = context.subtask as u64;
        self.stride = context.parallelism as u64;
        Ok(())
    }
    fn poll(&mut self, out: &mut Vec<u64>, max: usize) -> Result<SourcePoll, SourceError> {
        for _ in 0..max {
            if self.next >= self.end {
                return Ok(SourcePoll::Finished);
            }
            out.push(self.next);
            self.emitted.fetch_add(1, Ordering::SeqCst);
            self.next += self.stride;
        }
        Ok(SourcePoll::Ready)
    }
    fn offset(&self) -> u64 {
        self.next
    }
    fn seek(&mut self, offset: u64) -> Result<(), SourceError> {
        self.next = offset;
        Ok(())
    }
}

#[test]
fn a_slow_sink_slows_the_sources_and_loses_nothing() {
    let n = 100_000u64;
    let parallelism = 2;
    let emitted = Arc::new(AtomicU64::new(0));
    let (sinks, mut receiver) = egress::<u64>(parallelism, 2);
    let mut cfg = config(parallelism);
    cfg.batch_size = 16;
    cfg.ring_capacity = 2;
    let e = emitted.clone();
    let handle = Job::new(cfg)
        .start(move |df| {
            df.source(
                "numbers",
                CountingSource {
                    next: 0,
                    end: n,
                    stride: 1,
                    emitted: e.clone(),
                },
                WatermarkStrategy::none(),
            )
            .key_by(|x: &u64| *x)
            .process("identity", |_| {
                |x: u64, ctx: &mut KeyedContext<u64, u64>| {
                    ctx.emit(x);
                    Ok(())
                }
            })
            .sink("egress", sinks.take(df.subtask()));
        })
        .unwrap();
    // A consumer much slower than the job: busy work per record.
    let mut received = Vec::with_capacity(n as usize);
    let mut max_ahead = 0;
    let mut sink_hole = 0u64;
    while let Some(record) = receiver.recv() {
        received.push(record.value);
        let ahead = emitted.load(Ordering::SeqCst) - received.len() as u64;
        max_ahead = max_ahead.max(ahead);
        for i in 0..2_000u64 {
            sink_hole = sink_hole
                .wrapping_mul(31)
                .wrapping_add(std::hint::black_box(i));
        }
    }
    std::hint::black_box(sink_hole);
    handle.join().unwrap();
    received.sort_unstable();
    assert_eq!(
        received,
        (0..n).collect::<Vec<_>>(),
        "every record exactly once"
    );
    // Everything in flight fits in the rings and one step's batches: a few
    // hundred records here. Without backpressure the sources would run all
    // the way ahead (n records).
    assert!(
        max_ahead < 2_000,
        "sources ran {max_ahead} records ahead of the sink"
    );
}

#[test]
fn a_panicking_operator_fails_the_job_instead_of_hanging() {
    let data = Arc::new(events(2, 20_000, 10, 1));
    let d = data.clone();
    let result = Job::new(config(2)).run(move |df| {
        event_source(df, &d)
            .map(|e| {
                if e.value == 999 {
                    panic!("bad record {e:?}");
                }
                e
            })
            .key_by(|e: &common::Event| e.key)
            .process("noop", |_| {
                |_e: common::Event, _ctx: &mut KeyedContext<u64, ()>| Ok(())
            })
            .sink("out", DiscardSink::new());
    });
    match result {
        Err(JobError::Panic { message, .. }) => {
            assert!(message.contains("bad record"), "{message}")
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
}

#[test]
fn an_operator_error_names_the_operator() {
    let data = Arc::new(events(3, 5_000, 10, 1));
    let d = data.clone();
    let result = Job::new(config(2)).run(move |df| {
        event_source(df, &d)
            .key_by(|e: &common::Event| e.key)
            .process("picky", |_| {
                |e: common::Event, _ctx: &mut KeyedContext<u64, ()>| {
                    if e.value == 500 {
                        return Err(format!("value {} rejected", e.value).into());
                    }
                    Ok(())
                }
            })
            .sink("out", DiscardSink::new());
    });
    match result {
        Err(JobError::Operator {
            operator, source, ..
        }) => {
            assert_eq!(operator, "picky");
            assert!(source.to_string().contains("rejected"));
        }
        other => panic!("expected an operator error, got {other:?}"),
    }
}

#[test]
fn ingress_and_egress_connect_a_service_to_a_running_job() {
    let parallelism = 2;
    let (mut input, sources) = ingress::<u64>(parallelism, 64);
    let (sinks, receiver) = egress::<(u64, u64)>(parallelism, 8);
    let handle = Job::new(config(parallelism))
        .start(move |df| {
            df.source("in", sources.take(df.subtask()), WatermarkStrategy::none())
                .key_by(|x: &u64| x % 10)
                .process("sum", |state| {
                    let sum = state.value_state::<u64>("sum");
                    move |x: u64, ctx: &mut KeyedContext<u64, (u64, u64)>| {
                        let s = sum.update(
                            ctx,
                            || 0,
                            |s| {
                                *s += x;
                                *s
                            },
                        );
                        ctx.emit((x % 10, s));
                        Ok(())
                    }
                })
                .sink("out", sinks.take(df.subtask()));
        })
        .unwrap();
    let reader = std::thread::spawn(move || receiver.map(|r| r.value).collect::<Vec<_>>());
    for x in 0..10_000u64 {
        input.push(x).unwrap();
    }
    drop(input); // ends the input: the job drains and finishes
    handle.join().unwrap();
    let outputs = reader.join().unwrap();
    assert_eq!(outputs.len(), 10_000);
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (k, s) in outputs {
        let e = last.entry(k).or_default();
        *e = (*e).max(s);
    }
    for k in 0..10 {
        let expected: u64 = (0..10_000u64).filter(|x| x % 10 == k).sum();
        assert_eq!(last[&k], expected, "sum for key {k}");
    }
}

#[test]
fn an_unbounded_job_stops_on_request() {
    let (mut input, sources) = ingress::<u64>(2, 16);
    let seen = Collector::new();
    let out = seen.clone();
    let handle = Job::new(config(2))
        .start(move |df| {
            df.source("in", sources.take(df.subtask()), WatermarkStrategy::none())
                .sink("out", out.sink());
        })
        .unwrap();
    for x in 0..100 {
        input.push(x).unwrap();
    }
    handle.stop();
    // The handle stays alive: only the stop request ends the job.
    handle.join().unwrap();
    assert!(seen.take().len() <= 100);
    drop(input);
}

#[test]
fn file_source_splits_lines_and_reports_malformed_ones() {
    let dir = std::env::temp_dir().join(format!("spate-file-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.csv");
    let text: String = (0..1_000).map(|i| format!("{},{}\n", i % 7, i)).collect();
    std::fs::write(&good, text).unwrap();
    let parse = |line: &str| -> Result<(u64, u64), String> {
        let (k, v) = line.split_once(',').ok_or("missing comma")?;
        Ok((
            k.parse().map_err(|e| format!("key: {e}"))?,
            v.parse().map_err(|e| format!("value: {e}"))?,
        ))
    };
    let sums = Collector::new();
    let (out, path) = (sums.clone(), good.clone());
    Job::new(config(3))
        .run(move |df| {
            df.source(
                "lines",
                FileLineSource::new(path.clone(), parse),
                WatermarkStrategy::none(),
            )
            .sink("out", out.sink());
        })
        .unwrap();
    let mut lines = sums.take();
    lines.sort_by_key(|l| l.1);
    assert_eq!(
        lines,
        (0..1_000).map(|i| (i % 7, i)).collect::<Vec<_>>(),
        "each line once"
    );

    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "1,1\n2,2\n3;3\n4,4\n").unwrap();
    let path = bad.clone();
    let result = Job::new(config(1)).run(move |df| {
        df.source(
            "lines",
            FileLineSource::new(path.clone(), parse),
            WatermarkStrategy::none(),
        )
        .sink("out", DiscardSink::new());
    });
    match result {
        Err(JobError::Source {
            error: SourceError::Malformed { location, reason },
            ..
        }) => {
            assert!(location.ends_with("bad.csv at byte 8"), "{location}");
            assert_eq!(reason, "missing comma");
        }
        other => panic!("expected a malformed-record error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_configuration_is_rejected() {
    let mut cfg = config(2);
    cfg.max_parallelism = 40_000;
    let err = Job::new(cfg).run(|_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            JobError::Config(spate::ConfigError::Invalid {
                setting: "max_parallelism",
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn stateless_operators_chain_and_fan_out() {
    let data = Arc::new((0..10_000u64).collect::<Vec<_>>());
    let evens = Collector::new();
    let pairs = Collector::new();
    let (e, p, d) = (evens.clone(), pairs.clone(), data.clone());
    Job::new(config(2))
        .run(move |df| {
            let numbers = df.source(
                "numbers",
                spate::source::VecSource::new(d.clone()),
                WatermarkStrategy::none(),
            );
            // Two consumers of one stream: each sees every record.
            numbers
                .filter(|x| x % 2 == 0)
                .map(|x| x / 2)
                .sink("evens", e.sink());
            numbers
                .flat_map(|x| (0..(x % 3)).map(move |i| (x, i)))
                .sink("pairs", p.sink());
        })
        .unwrap();
    let mut got = evens.take();
    got.sort_unstable();
    assert_eq!(got, (0..5_000).collect::<Vec<_>>());
    let mut got = pairs.take();
    got.sort_unstable();
    let expected: Vec<_> = (0..10_000u64)
        .flat_map(|x| (0..(x % 3)).map(move |i| (x, i)))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn window_results_cross_a_second_exchange() {
    // Count per key in tumbling windows, then the busiest key per window:
    // window results are archivable, so they key_by like any record.
    let data = Arc::new(events(12, 8_000, 30, 2));
    let busiest = Collector::new();
    let (out, d) = (busiest.clone(), data.clone());
    Job::new(config(2))
        .run(move |df| {
            windowed(&event_source(df, &d), WindowAssigner::tumbling(500))
                .key_by(|w| w.end)
                .window(WindowAssigner::tumbling(500))
                .aggregate(
                    "busiest",
                    spate::window::Aggregate::new(
                        || (0u64, 0u64),
                        |acc: &mut (u64, u64), w: &spate::window::WindowResult<u64, (u64, u64)>| {
                            if (w.value.0, w.key) > *acc {
                                *acc = (w.value.0, w.key);
                            }
                        },
                        |acc: &(u64, u64)| *acc,
                    ),
                )
                .sink("out", out.sink());
        })
        .unwrap();
    let mut got: Vec<(u64, u64, u64)> = busiest
        .take()
        .into_iter()
        .map(|w| (w.key, w.value.0, w.value.1))
        .collect();
    got.sort_unstable();
    let mut expected: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for w in reference_windows(&data, 500, 500) {
        let e = expected.entry(w.end).or_default();
        if (w.value.0, w.key) > *e {
            *e = (w.value.0, w.key);
        }
    }
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(end, (c, k))| (end, c, k))
        .collect();
    assert_eq!(got, expected);
}
