//! Every query's results on the engine equal the sequential reference's, for
//! several seeds and parallelisms, under the deterministic simulator (random
//! schedules, ring capacities and batch sizes) and on the glommio runtime.

use std::collections::BTreeMap;
use std::fmt::Debug;

use spate::internals::sim::Simulation;
use spate::sink::Collector;
use spate::{Dataflow, Job, JobConfig, Stream};
use spate_bench::nexmark::model::Event;
use spate_bench::nexmark::reference;
use spate_bench::nexmark::rows::Q4Row;
use spate_bench::nexmark::{Generator, GeneratorConfig};
use spate_bench::queries::{self, Query};
use spate_bench::source::{watermarks, NexmarkSource};

fn events(config: &GeneratorConfig, seed: u64, n: u64) -> Vec<Event> {
    let mut g = Generator::new(config.clone(), seed);
    (0..n).map(|_| g.next_event()).collect()
}

/// How a query's job is run: under the simulator with a seed, or on the runtime.
#[derive(Clone, Copy, Debug)]
enum Runner {
    Sim(u64),
    Job,
}

/// Runs `query` over the first `n` events of `(config, seed)` and returns its
/// rows, in no particular order.
fn run_query<T: Clone + Send + 'static>(
    runner: Runner,
    parallelism: usize,
    config: &GeneratorConfig,
    seed: u64,
    n: u64,
    query: fn(&Stream<Event>) -> Stream<T>,
) -> Vec<T> {
    let out = Collector::new();
    let (o, config) = (out.clone(), config.clone());
    let build = move |df: &Dataflow| {
        let source = NexmarkSource::new(config.clone(), seed, n);
        let events = df.source("nexmark", source, watermarks());
        query(&events).sink("out", o.sink());
    };
    let job_config = JobConfig {
        parallelism,
        max_parallelism: 64,
        ..JobConfig::default()
    };
    match runner {
        Runner::Sim(sim_seed) => {
            Simulation::new(job_config, sim_seed)
                .run(build)
                .unwrap_or_else(|e| panic!("simulation seed {sim_seed}: {e}"));
        }
        Runner::Job => {
            Job::new(JobConfig {
                pin_cores: false,
                ..job_config
            })
            .run(build)
            .unwrap_or_else(|e| panic!("job: {e}"));
        }
    }
    out.take()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// q4's canonical form: the final (largest `count`) row per category; also checks
/// that each category's counts run 1, 2, 3, … without gaps or repeats.
fn q4_finals(rows: Vec<Q4Row>) -> BTreeMap<u64, Q4Row> {
    let mut per_category: BTreeMap<u64, Vec<Q4Row>> = BTreeMap::new();
    for r in rows {
        per_category.entry(r.category).or_default().push(r);
    }
    per_category
        .into_iter()
        .map(|(c, mut rows)| {
            rows.sort_by_key(|r| r.count);
            for (i, r) in rows.iter().enumerate() {
                assert_eq!(
                    r.count,
                    i as u64 + 1,
                    "category {c}: counts must be 1, 2, …"
                );
                assert_eq!(r.avg_price, r.sum_price / r.count);
            }
            (c, rows.pop().expect("at least one row"))
        })
        .collect()
}

fn check<T: Ord + Debug>(what: &str, got: Vec<T>, expected: &[T]) {
    assert!(
        !expected.is_empty(),
        "{what}: the reference has no rows to compare"
    );
    let got = sorted(got);
    assert!(
        got.as_slice() == expected,
        "{what}: {} rows, expected {}; first difference at {:?}",
        got.len(),
        expected.len(),
        got.iter().zip(expected).position(|(a, b)| a != b)
    );
}

/// Checks every query with `runner` and `parallelism` on `(config, seed, n)`.
fn check_all(runner: Runner, parallelism: usize, config: &GeneratorConfig, seed: u64, n: u64) {
    let input = events(config, seed, n);
    let ctx = |q: Query| format!("{q} {runner:?} parallelism {parallelism} generator seed {seed}");
    macro_rules! go {
        ($q:expr, $f:expr) => {
            run_query(runner, parallelism, config, seed, n, $f)
        };
    }
    check(
        &ctx(Query::Q0),
        go!(Query::Q0, queries::q0),
        &reference::q0(&input),
    );
    check(
        &ctx(Query::Q1),
        go!(Query::Q1, queries::q1),
        &reference::q1(&input),
    );
    check(
        &ctx(Query::Q2),
        go!(Query::Q2, queries::q2),
        &reference::q2(&input),
    );
    check(
        &ctx(Query::Q3),
        go!(Query::Q3, queries::q3),
        &reference::q3(&input),
    );
    let q4 = reference::q4(&input);
    assert!(!q4.is_empty(), "{}: no reference rows", ctx(Query::Q4));
    assert_eq!(
        q4_finals(go!(Query::Q4, queries::q4)),
        q4,
        "{}",
        ctx(Query::Q4)
    );
    check(
        &ctx(Query::Q5),
        go!(Query::Q5, queries::q5),
        &reference::q5(&input),
    );
    check(
        &ctx(Query::Q7),
        go!(Query::Q7, queries::q7),
        &reference::q7(&input),
    );
    check(
        &ctx(Query::Q8),
        go!(Query::Q8, queries::q8),
        &reference::q8(&input),
    );
}

/// A generator with a high event-time rate, so that a few tens of thousands of
/// events span many windows and auction lifetimes.
fn fast_time() -> GeneratorConfig {
    GeneratorConfig {
        events_per_second: 1_000,
        ..GeneratorConfig::default()
    }
}

#[test]
fn simulated_runs_match_the_reference() {
    for (i, seed) in [0u64, 1, 7].into_iter().enumerate() {
        for parallelism in 1..=3 {
            let sim_seed = seed * 10 + parallelism as u64;
            let config = if i % 2 == 0 {
                fast_time()
            } else {
                GeneratorConfig::default()
            };
            check_all(Runner::Sim(sim_seed), parallelism, &config, seed, 20_000);
        }
    }
}

#[test]
fn runtime_runs_match_the_reference() {
    check_all(Runner::Job, 2, &fast_time(), 3, 30_000);
    check_all(Runner::Job, 3, &GeneratorConfig::default(), 4, 20_000);
}

#[test]
fn query_names_round_trip() {
    for q in Query::ALL {
        assert_eq!(q.to_string().parse::<Query>().unwrap(), q);
    }
    assert_eq!("Q5".parse::<Query>().unwrap(), Query::Q5);
    assert!("q6".parse::<Query>().is_err());
}

/// The paced (open-loop) source under the simulator's virtual clock: event time
/// is the schedule, and the windowed and timer-driven queries still match.
#[test]
fn paced_source_matches_the_reference_on_the_virtual_clock() {
    for sim_seed in [5u64, 6] {
        let out5 = Collector::new();
        let out4 = Collector::new();
        let (o5, o4) = (out5.clone(), out4.clone());
        // The simulator's virtual clock starts at 1,000,000 ms.
        let config = GeneratorConfig {
            events_per_second: 2_000,
            base_time_ms: 1_000_000,
            ..GeneratorConfig::default()
        };
        let c = config.clone();
        let n = 20_000;
        let report = Simulation::new(
            JobConfig {
                parallelism: 2,
                max_parallelism: 64,
                ..JobConfig::default()
            },
            sim_seed,
        )
        .run(move |df| {
            let source = NexmarkSource::new(c.clone(), 9, n).paced(df.clock());
            let events = df.source("nexmark", source, watermarks());
            queries::q5(&events).sink("q5", o5.sink());
            queries::q4(&events).sink("q4", o4.sink());
        })
        .unwrap();
        // 20,000 events at 2,000/s take 10 s of virtual time.
        assert!(
            report.virtual_ms >= 9_990,
            "the source must wait for its schedule ({report:?})"
        );
        let input = events(&config, 9, n);
        check("paced q5", out5.take(), &reference::q5(&input));
        assert_eq!(q4_finals(out4.take()), reference::q4(&input), "paced q4");
    }
}
