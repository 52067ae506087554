//! Keyed count over all cores: the W1 workload of `bench/README.md`.
//!
//! Synthetic bids (SplitMix64 of the event index: auction uniform in
//! 1..=10 000, bidder in 1..=100 000, price in 1..=1 000 000), keyed by
//! auction; keyed state keeps (count, max price) per auction and emits one
//! update per event into a discarding sink. Prints events per second.
//!
//! ```text
//! cargo run --release -p spate --example keyed_count -- [events] [parallelism] [monitor address]
//! ```
//!
//! With `W1_CHECKPOINT_DIR` set, the job checkpoints every second (aligned,
//! full) into that directory, which must be empty or absent (a run would
//! restore what is there).

use spate::internals::sim::SplitMix64;
use spate::sink::DiscardSink;
use spate::source::SequenceSource;
use spate::{Job, JobConfig, KeyedContext, WatermarkStrategy};

#[derive(Clone, Copy, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
struct Bid {
    auction: u64,
    #[allow(dead_code)]
    bidder: u64,
    price: u64,
}

fn bid(index: u64) -> Bid {
    let mut rng = SplitMix64::new(index);
    Bid {
        auction: 1 + rng.below(10_000),
        bidder: 1 + rng.below(100_000),
        price: 1 + rng.below(1_000_000),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .map(|a| a.parse().expect("events"))
        .unwrap_or(50_000_000);
    let mut config = JobConfig::default();
    if let Some(p) = args.next() {
        config.parallelism = p.parse().expect("parallelism");
    }
    // A third argument serves the job's monitor there (the cost check of
    // docs/monitoring.md compares runs with and without it).
    if let Some(address) = args.next() {
        let address = address
            .parse()
            .expect("monitor address, e.g. 127.0.0.1:9249");
        config.monitor = Some(spate::MonitorConfig::new(address));
    }
    if let Some(dir) = std::env::var_os("W1_CHECKPOINT_DIR") {
        let used = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
        if used {
            eprintln!(
                "W1_CHECKPOINT_DIR {} is not empty: remove it first (a run would restore it)",
                std::path::Path::new(&dir).display()
            );
            std::process::exit(2);
        }
        config.checkpoint = Some(spate::CheckpointConfig::new(dir, 1000));
    }
    // One process of a cluster (bench/README.md, "Two processes"): W1_PEERS
    // lists every process's data-plane address, W1_PROCESS is this one's
    // index, SPATE_CLUSTER_SECRET the shared secret.
    if let Ok(peers) = std::env::var("W1_PEERS") {
        let peers: Vec<std::net::SocketAddr> = peers
            .split(',')
            .map(|a| a.parse().expect("W1_PEERS: host:port,host:port,..."))
            .collect();
        config.cluster = Some(spate::ClusterConfig {
            process: std::env::var("W1_PROCESS")
                .expect("W1_PROCESS with W1_PEERS")
                .parse()
                .expect("W1_PROCESS"),
            processes: peers.len(),
            peers,
            job: "w1".into(),
            secret: std::env::var("SPATE_CLUSTER_SECRET")
                .expect("SPATE_CLUSTER_SECRET with W1_PEERS")
                .into_bytes(),
            connect_timeout: std::time::Duration::from_secs(60),
            // W1_LINGER_US: the connections' busy linger, µs.
            busy_linger: std::env::var("W1_LINGER_US")
                .ok()
                .map(|v| v.parse().expect("W1_LINGER_US: microseconds"))
                .map_or(spate::DEFAULT_BUSY_LINGER, std::time::Duration::from_micros),
            commit_point: None,
        });
    }
    let clustered = config.cluster.is_some();
    let parallelism = config.total_parallelism();
    let sink = DiscardSink::new();
    let emitted = sink.counter();
    let report = Job::new(config)
        .run(move |df| {
            df.source(
                "bids",
                SequenceSource::new(events, bid),
                WatermarkStrategy::none(),
            )
            .key_by(|b: &Bid| b.auction)
            .process("count-max", |state| {
                let count_max = state.value_state::<(u64, u64)>("count_max");
                move |b: Bid, ctx: &mut KeyedContext<u64, (u64, u64, u64)>| {
                    let (count, max) = count_max.update(
                        ctx,
                        || (0, 0),
                        |s| {
                            s.0 += 1;
                            s.1 = s.1.max(b.price);
                            *s
                        },
                    );
                    ctx.emit((b.auction, count, max));
                    Ok(())
                }
            })
            .sink("discard", sink.clone());
        })
        .expect("job failed");
    let secs = report.elapsed.as_secs_f64();
    let out = emitted.load(std::sync::atomic::Ordering::Relaxed);
    if clustered {
        // This process's share; the processes' lines add up to `events`.
        println!("W1 process emitted {out} updates in {secs:.2} s");
        return;
    }
    assert_eq!(out, events, "one update per event");
    let completed = report
        .checkpoints
        .iter()
        .filter(|c| c.status == spate::CheckpointStatus::Completed)
        .count();
    println!(
        "W1 keyed count: {events} events on {parallelism} subtasks in {secs:.2} s = {:.2} M events/s ({:.2} M/s per subtask), {completed} checkpoints",
        events as f64 / secs / 1e6,
        events as f64 / secs / 1e6 / parallelism as f64
    );
}
