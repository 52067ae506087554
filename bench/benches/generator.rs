//! Benchmark program: Nexmark generator throughput, single-threaded (all
//! events, bids only with each sampling mode, one partition of two).
//!
//! `cargo bench -p spate-bench --bench generator`

use std::hint::black_box;
use std::time::Instant;

use spate_bench::nexmark::generator::kind_at;
use spate_bench::nexmark::{EventKind, Generator, GeneratorConfig, Sampling};

fn main() {
    let n: u64 = 20_000_000;
    let mut generator = Generator::new(GeneratorConfig::default(), 1);
    let start = Instant::now();
    for _ in 0..n {
        black_box(generator.next_event());
    }
    let all_s = start.elapsed().as_secs_f64();

    let bids_only = |sampling| {
        let config = GeneratorConfig {
            sampling,
            ..Default::default()
        };
        let generator = Generator::new(config, 1);
        let mut bids = 0u64;
        let start = Instant::now();
        for i in 0..n {
            if kind_at(i) == EventKind::Bid {
                black_box(generator.event_at(i));
                bids += 1;
            }
        }
        (bids, start.elapsed().as_secs_f64())
    };
    let (bids, bids_s) = bids_only(Sampling::Fast);
    let (_, reference_bids_s) = bids_only(Sampling::Reference);

    let mut partition = Generator::new(GeneratorConfig::default(), 1).with_partition(1, 2);
    let start = Instant::now();
    for _ in 0..n / 2 {
        black_box(partition.next_event());
    }
    let partition_s = start.elapsed().as_secs_f64();

    let config = GeneratorConfig::default();
    let start = Instant::now();
    for i in 0..n {
        black_box(config.timestamp_ms(black_box(i)));
    }
    let ts_s = start.elapsed().as_secs_f64();
    println!("timestamps: {:.1} ns each", ts_s * 1e9 / n as f64);

    println!(
        "all events: {n} in {all_s:.3} s = {:.1} M events/s",
        n as f64 / all_s / 1e6
    );
    println!(
        "bids only: {bids} in {bids_s:.3} s = {:.1} M bids/s",
        bids as f64 / bids_s / 1e6
    );
    println!(
        "bids only, Sampling::Reference: {bids} in {reference_bids_s:.3} s = {:.1} M bids/s",
        bids as f64 / reference_bids_s / 1e6
    );
    println!(
        "partition 1 of 2: {} in {partition_s:.3} s = {:.1} M events/s",
        n / 2,
        (n / 2) as f64 / partition_s / 1e6
    );
}
