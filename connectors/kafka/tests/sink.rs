//! The Kafka sink against the real broker, without failures: at least once
//! and exactly once, with and without checkpoints; what is committed is
//! read from the partitions' batches and markers (`common::committed`).

mod common;

use spate::source::VecSource;
use spate::{CheckpointConfig, Job, JobConfig, WatermarkStrategy};
use spate_kafka::{Delivery, KafkaSink, KafkaSinkConfig, OutRecord};
use std::sync::Arc;

fn run(brokers: &str, topic: &str, delivery: Delivery, checkpoints: Option<&std::path::Path>) {
    let values: Arc<Vec<u64>> = Arc::new((0..2_000).collect());
    let config_sink = KafkaSinkConfig::new(common::properties(brokers), topic, delivery);
    let mut config = JobConfig::with_parallelism(2);
    config.pin_cores = false;
    config.checkpoint = checkpoints.map(|dir| CheckpointConfig::new(dir, 20));
    Job::new(config)
        .run(move |df| {
            df.source(
                "values",
                VecSource::new(values.clone()),
                WatermarkStrategy::none(),
            )
            .sink(
                "kafka",
                KafkaSink::new(
                    config_sink.clone(),
                    Arc::new(|r: &spate::Record<u64>, out: &mut OutRecord| {
                        // Keyed: the client's partitioner spreads them.
                        out.key = Some(r.value.to_le_bytes().to_vec());
                        out.payload = r.value.to_string().into_bytes();
                    }),
                ),
            );
        })
        .unwrap();
}

fn committed_values(brokers: &str, topic: &str) -> Vec<u64> {
    let mut v: Vec<u64> = common::committed(brokers, topic, 3)
        .into_iter()
        .flatten()
        .map(|r| {
            String::from_utf8(r.value.unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn every_record_is_committed_once_in_each_mode() {
    let Some(brokers) = common::brokers() else {
        return;
    };
    let all: Vec<u64> = (0..2_000).collect();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kafka-sink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (name, exactly_once, checkpoints) in [
        ("alo", false, false),
        ("alo-ckpt", false, true),
        ("eo", true, false),
        ("eo-ckpt", true, true),
    ] {
        let topic = common::topic(&format!("sink-{name}"));
        common::create(&brokers, &topic, 3);
        let delivery = if exactly_once {
            Delivery::ExactlyOnce {
                prefix: topic.clone(),
                transaction_log: dir.join(name).join("transactions"),
            }
        } else {
            Delivery::AtLeastOnce
        };
        let state = dir.join(name).join("state");
        run(
            &brokers,
            &topic,
            delivery,
            checkpoints.then_some(state.as_path()),
        );
        assert_eq!(committed_values(&brokers, &topic), all, "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
