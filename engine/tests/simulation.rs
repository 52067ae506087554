//! The deterministic simulator: the same keyed job under many seeded
//! schedules (random step order, ring capacities and batch sizes) gives the
//! reference results, and one seed reproduces a run exactly.

mod common;

use common::*;
use spate::internals::sim::Simulation;
use spate::sink::Collector;
use spate::source::SequenceSource;
use spate::time::{Clock, TimeDomain};
use spate::window::WindowAssigner;
use spate::{JobConfig, KeyedContext, KeyedProcessFunction, ProcessError, WatermarkStrategy};
use std::sync::Arc;

fn sim_config(parallelism: usize) -> JobConfig {
    JobConfig {
        parallelism,
        max_parallelism: 64,
        ..JobConfig::default()
    }
}

#[test]
fn many_seeds_give_the_reference_results() {
    let data = Arc::new(events(11, 4_000, 40, 5));
    let expected_totals = reference_totals(&data);
    let expected_windows = reference_windows(&data, 200, 50);
    for seed in 0..40u64 {
        let parallelism = 1 + (seed % 4) as usize;
        let totals = Collector::new();
        let windows = Collector::new();
        let (t, w, d) = (totals.clone(), windows.clone(), data.clone());
        let report = Simulation::new(sim_config(parallelism), seed)
            .run(move |df| {
                let events = event_source(df, &d);
                running_totals(&events).sink("totals-out", t.sink());
                windowed(&events, WindowAssigner::sliding(200, 50)).sink("windows-out", w.sink());
            })
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(
            finals(&totals.take()),
            expected_totals,
            "seed {seed} ({report:?})"
        );
        let mut got = windows.take();
        got.sort();
        assert_eq!(got, expected_windows, "seed {seed} ({report:?})");
    }
}

#[test]
fn a_seed_reproduces_the_run_exactly() {
    let data = Arc::new(events(5, 3_000, 20, 3));
    let run = |seed: u64| {
        let out = Collector::new();
        let (o, d) = (out.clone(), data.clone());
        let report = Simulation::new(sim_config(3), seed)
            .run(move |df| running_totals(&event_source(df, &d)).sink("out", o.sink()))
            .unwrap();
        // Collected per subtask in emission order: equal vectors mean the same
        // interleaving of every record, not just the same results.
        (report.steps, report.virtual_ms, out.take())
    };
    let a = run(42);
    let b = run(42);
    assert_eq!(a, b, "seed 42 must reproduce step for step");
    let c = run(43);
    assert_ne!(a.0, c.0, "another seed schedules differently");
}

/// Registers a processing-time timer 100 ms after each key's first record and
/// reports when it fired.
struct FirstSeen {
    seen: spate::ValueState<u64, u64>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64, u64)> for FirstSeen {
    fn process_element(
        &mut self,
        x: u64,
        ctx: &mut KeyedContext<u64, (u64, u64, u64)>,
    ) -> Result<(), ProcessError> {
        if self.seen.get(ctx).is_none() {
            let at = ctx.processing_time() + 100;
            self.seen.set(ctx, at);
            ctx.register_processing_time_timer(at);
        }
        let _ = x;
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: u64,
        domain: TimeDomain,
        ctx: &mut KeyedContext<u64, (u64, u64, u64)>,
    ) -> Result<(), ProcessError> {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        ctx.emit((*ctx.key(), timestamp, ctx.processing_time()));
        Ok(())
    }
}

#[test]
fn processing_time_timers_fire_on_the_virtual_clock() {
    // 20 keys, one event every 10 ms of processing time for 2 s: the
    // rate-limited source waits on the simulator's clock, and every key's
    // timer (100 ms after its first event) fires long before the input ends.
    for seed in 0..5 {
        let fired = Collector::new();
        let out = fired.clone();
        Simulation::new(sim_config(2), seed)
            .run(move |df| {
                let clock: Arc<dyn Clock> = df.clock();
                let start = clock.now_ms();
                df.source(
                    "ticks",
                    SequenceSource::new(200, |i| i % 20).with_rate(100.0, start, clock),
                    WatermarkStrategy::none(),
                )
                .key_by(|x: &u64| *x)
                .process("first-seen", |state| FirstSeen {
                    seen: state.value_state("seen"),
                })
                .sink("out", out.sink());
            })
            .unwrap();
        let mut fired = fired.take();
        fired.sort();
        assert_eq!(fired.len(), 20, "seed {seed}: one timer per key");
        for (key, at, now) in fired {
            assert!(
                now >= at,
                "seed {seed}: key {key} fired at {now} before its time {at}"
            );
        }
    }
}
