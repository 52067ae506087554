//! The Kafka crash harness's child process (connectors/kafka/tests/crash.rs)
//! and the README's example: Kafka → keyed count → Kafka, exactly once.
//!
//! Reads `key,seq` records from the input topic (a bounded read of what it
//! holds when a partition is assigned), counts per key in keyed state, and
//! writes `key:count` to the output topic in Kafka transactions committed
//! with the checkpoints. Checkpoints go to `--state-dir`; a restart on the
//! same directory resumes from the latest one (on any parallelism).
//!
//! ```text
//! kafka-count-job --brokers 127.0.0.1:19092 --input in --output out \
//!     --state-dir /tmp/count-state [--parallelism 2] [--interval-ms 50] \
//!     [--records-per-s 0] [--end-offset N] [--crash-before-commit K]
//! ```
//!
//! `--end-offset N` reads every partition up to offset `N` instead of up to
//! its end offset found at the start.
//!
//! `--crash-before-commit K` (tests): the process aborts when the K-th
//! checkpoint of this run has completed, before its Kafka transactions are
//! committed (the case docs/checkpoints.md analyses).

use spate::{CheckpointConfig, Job, JobConfig, KeyedContext, WatermarkStrategy};
use spate_kafka::{
    Delivery, KafkaProperties, KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig,
    OutRecord, StopAt,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn main() {
    if let Err(e) = run() {
        eprintln!("kafka-count-job: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut brokers = String::new();
    let mut input = String::new();
    let mut output = String::new();
    let mut state_dir = String::new();
    let mut parallelism = 2usize;
    let mut interval_ms = 50u64;
    let mut records_per_s = 0u64;
    let mut crash_before_commit = 0u64;
    let mut end_offset = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--brokers" => brokers = value()?,
            "--input" => input = value()?,
            "--output" => output = value()?,
            "--state-dir" => state_dir = value()?,
            "--parallelism" => parallelism = number(value()?)? as usize,
            "--interval-ms" => interval_ms = number(value()?)?,
            "--records-per-s" => records_per_s = number(value()?)?,
            "--crash-before-commit" => crash_before_commit = number(value()?)?,
            "--end-offset" => end_offset = Some(number(value()?)? as i64),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if [&brokers, &input, &output, &state_dir]
        .iter()
        .any(|s| s.is_empty())
    {
        return Err("--brokers, --input, --output and --state-dir are required".into());
    }
    let properties = KafkaProperties::new(&brokers);
    let mut source = KafkaSourceConfig::new(properties.clone(), &[&input], "kafka-count-job");
    source.stop = match end_offset {
        Some(end) => {
            let mut probe = spate_kafka::client::RdConsumer::new(&properties, "kafka-count-job")
                .map_err(|e| e.to_string())?;
            let partitions =
                spate_kafka::client::KafkaConsumer::partition_count(&mut probe, &input)
                    .map_err(|e| e.to_string())?;
            StopAt::At(
                (0..partitions as i32)
                    .map(|p| (input.clone(), p, end))
                    .collect(),
            )
        }
        None => StopAt::Latest,
    };
    let mut sink = KafkaSinkConfig::new(
        properties,
        &output,
        Delivery::ExactlyOnce {
            prefix: format!("kafka-count-job-{output}"),
            transaction_log: std::path::Path::new(&state_dir).join("kafka-transactions"),
        },
    );
    if crash_before_commit > 0 {
        let completed = Arc::new(AtomicU64::new(0));
        sink.before_commit = Some(Arc::new(move |checkpoint| {
            if completed.fetch_add(1, Ordering::SeqCst) + 1 == crash_before_commit {
                eprintln!(
                    "kafka-count-job: checkpoint {checkpoint} complete; aborting before its commit"
                );
                std::process::abort();
            }
        }));
    }
    // The test's slow producer: the Kafka thread (never a reactor) waits
    // to keep the input at `records_per_s` per subtask.
    let started = std::time::Instant::now();
    let read = Arc::new(AtomicU64::new(0));
    let deserialize = Arc::new(move |r: &spate_kafka::KafkaRecord<'_>| {
        if records_per_s > 0 {
            let n = read.fetch_add(1, Ordering::Relaxed);
            let due = std::time::Duration::from_secs_f64(n as f64 / records_per_s as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let text = std::str::from_utf8(r.payload.unwrap_or_default()).map_err(|e| e.to_string())?;
        let (key, seq) = text.split_once(',').ok_or("expected key,seq")?;
        let key: u64 = key.parse().map_err(|_| format!("key {key:?}"))?;
        let seq: u64 = seq.parse().map_err(|_| format!("seq {seq:?}"))?;
        Ok((key, seq))
    });
    let mut config = JobConfig::with_parallelism(parallelism);
    config.pin_cores = false;
    config.checkpoint = Some(CheckpointConfig::new(&state_dir, interval_ms));
    let report = Job::new(config)
        .run(move |df| {
            df.source(
                "kafka-in",
                KafkaSource::new(source.clone(), deserialize.clone()),
                WatermarkStrategy::none(),
            )
            .key_by(|r: &(u64, u64)| r.0)
            .process("count", |state| {
                let count = state.value_state::<u64>("count");
                move |r: (u64, u64), ctx: &mut KeyedContext<u64, (u64, u64)>| {
                    let n = count.update(
                        ctx,
                        || 0,
                        |c| {
                            *c += 1;
                            *c
                        },
                    );
                    ctx.emit((r.0, n));
                    Ok(())
                }
            })
            .sink(
                "kafka-out",
                KafkaSink::new(
                    sink.clone(),
                    Arc::new(|r: &spate::Record<(u64, u64)>, out: &mut OutRecord| {
                        out.key = Some(r.value.0.to_string().into_bytes());
                        out.payload = format!("{}:{}", r.value.0, r.value.1).into_bytes();
                    }),
                ),
            );
        })
        .map_err(|e| e.to_string())?;
    eprintln!(
        "kafka-count-job: finished in {:.2} s",
        report.elapsed.as_secs_f64()
    );
    Ok(())
}
