//! Kafka for the benchmark: writing the Nexmark stream into a topic
//! (`spate-bench kafka-load`), reading it with a plain librdkafka consumer
//! as the throughput baseline (`spate-bench kafka-consume`), and the
//! Kafka source and sink settings of `spate-bench nexmark --source kafka`
//! and `--sink-topic`.
//!
//! Events are JSON lines, exactly those `spate-bench gen` writes; event `i`
//! goes to partition `i mod P` with the event's timestamp as the record
//! timestamp. With a rate, `kafka-load` writes event `i` no earlier than its
//! scheduled time (open loop, base time = start + lead), so a job reading
//! the topic concurrently measures latency from the schedule as the
//! generator source does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use spate_kafka::client::{
    KafkaConsumer, OutRecord, ProducerFactory, RdConsumer, RdProducerFactory,
};
use spate_kafka::{KafkaProperties, KafkaRecord, KafkaSource, KafkaSourceConfig, StopAt};

use crate::nexmark::{Event, Generator};

/// The Kafka side of a `nexmark` run.
#[derive(Clone, Debug)]
pub struct KafkaRun {
    /// Client properties.
    pub properties: KafkaProperties,
    /// The input topic, if the source is Kafka.
    pub topic: Option<String>,
    /// The output topic, if the sink is Kafka.
    pub sink_topic: Option<String>,
    /// Exactly once (transactions) or at least once, for the sink.
    pub exactly_once: bool,
}

/// The end offsets of a topic `kafka-load` wrote `events` events into, over
/// `partitions` partitions (event `i` in partition `i mod P`).
pub fn end_offsets(topic: &str, events: u64, partitions: u32) -> Vec<(String, i32, i64)> {
    (0..partitions)
        .map(|p| {
            let p64 = u64::from(p);
            let count = if events > p64 {
                (events - p64).div_ceil(u64::from(partitions))
            } else {
                0
            };
            (topic.to_string(), p as i32, count as i64)
        })
        .collect()
}

/// The partition count of `topic`.
pub fn partitions(properties: &KafkaProperties, topic: &str) -> anyhow::Result<u32> {
    let mut consumer =
        RdConsumer::new(properties, "spate-bench-metadata").map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = consumer
        .partition_count(topic)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if n == 0 {
        anyhow::bail!("Kafka topic {topic} does not exist (write it with spate-bench kafka-load)");
    }
    Ok(n)
}

/// A Kafka source of the Nexmark events `kafka-load` wrote, reading events
/// `0..events` (each partition up to its share), counting into `emitted`.
pub fn source(
    run: &KafkaRun,
    topic: &str,
    events: u64,
    partitions: u32,
    emitted: Arc<AtomicU64>,
) -> KafkaSource<Event> {
    let mut config = KafkaSourceConfig::new(run.properties.clone(), &[topic], "spate-bench");
    config.stop = StopAt::At(end_offsets(topic, events, partitions));
    config.discovery_interval_ms = 0;
    KafkaSource::new(
        config,
        Arc::new(move |r: &KafkaRecord<'_>| {
            let mut event: Event = serde_json::from_slice(r.payload.unwrap_or_default())
                .map_err(|e| format!("not a Nexmark event: {e}"))?;
            // JSON carries no latency origin: a bid's is its record
            // timestamp, the schedule `kafka-load` wrote it at (ms).
            if let (Event::Bid(bid), Some(ms)) = (&mut event, r.timestamp_ms) {
                bid.origin = crate::nexmark::Origin(ms.max(0) as u64 * 1000);
            }
            emitted.fetch_add(1, Ordering::Relaxed);
            Ok(event)
        }),
    )
}

/// Writes events `0..events` of the generator into `topic` (created with
/// `partitions` partitions if missing); with a rate, paced open loop.
/// Returns events/s.
pub fn load(
    properties: &KafkaProperties,
    topic: &str,
    events: u64,
    partitions: u32,
    seed: u64,
    rate_events_per_s: Option<u64>,
    base_time_ms: u64,
) -> anyhow::Result<f64> {
    spate_kafka::client::create_topic(properties, topic, partitions as i32)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("creating topic {topic}"))?;
    let generator = Generator::new(
        crate::run::generator_config(rate_events_per_s, base_time_ms),
        seed,
    );
    let mut factory = RdProducerFactory::new(properties.clone());
    let mut producer = factory
        .producer(topic, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let mut line = Vec::with_capacity(256);
    for i in 0..events {
        let event = generator.event_at(i);
        if rate_events_per_s.is_some() {
            // Open loop: not before the event's scheduled time (this is the
            // loader's own thread).
            let due = event.timestamp_ms();
            let now = spate::time::Clock::now_ms(&spate::time::SystemClock);
            if due > now {
                std::thread::sleep(Duration::from_millis(due - now));
            }
        }
        line.clear();
        serde_json::to_writer(&mut line, &event)?;
        producer
            .send(&OutRecord {
                partition: Some((i % u64::from(partitions)) as i32),
                key: None,
                payload: line.clone(),
                timestamp_ms: Some(event.timestamp_ms() as i64),
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    producer.flush().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

/// The baseline: one plain librdkafka consumer (one thread) reading
/// `events` events of `topic` from the earliest offsets and decoding each,
/// as the Kafka source does. Returns events/s.
pub fn consume_plain(
    properties: &KafkaProperties,
    topic: &str,
    events: u64,
) -> anyhow::Result<f64> {
    let partitions = partitions(properties, topic)?;
    let mut consumer =
        RdConsumer::new(properties, "spate-bench-plain").map_err(|e| anyhow::anyhow!("{e}"))?;
    let ends = end_offsets(topic, events, partitions);
    consumer
        .assign(
            &ends
                .iter()
                .map(|(t, p, _)| (t.clone(), *p, 0))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let mut read = 0u64;
    let mut failed = None;
    while read < events {
        consumer
            .poll(
                Duration::from_millis(100),
                2048,
                &mut |r| match serde_json::from_slice::<Event>(r.payload.unwrap_or_default()) {
                    Ok(e) => {
                        std::hint::black_box(e);
                        read += 1;
                    }
                    Err(e) => failed = Some(e.to_string()),
                },
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(e) = failed.take() {
            anyhow::bail!("not a Nexmark event in {topic}: {e}");
        }
        if start.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("{topic} holds fewer than {events} events ({read} read)");
        }
    }
    Ok(read as f64 / start.elapsed().as_secs_f64())
}

/// Client properties for `brokers`.
pub fn properties(brokers: &str) -> KafkaProperties {
    KafkaProperties::new(brokers)
}

/// The default brokers: `SPATE_KAFKA_BROKERS`, else the address
/// `.ci/kafka-broker start` uses.
pub fn default_brokers() -> String {
    std::env::var("SPATE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn end_offsets_share_the_events() {
        let ends = super::end_offsets("t", 10, 4);
        let counts: Vec<i64> = ends.iter().map(|e| e.2).collect();
        assert_eq!(counts, vec![3, 3, 2, 2]);
        assert_eq!(super::end_offsets("t", 2, 4)[3].2, 0);
    }
}
