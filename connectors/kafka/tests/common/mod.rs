//! Shared helpers of the Kafka integration tests: the broker under test,
//! topics, and reading a topic's committed records by honouring the
//! transaction markers in the partitions (tansu 0.6.0 returns no
//! aborted-transaction list, so a `read_committed` librdkafka consumer would
//! also see aborted records).

#![allow(dead_code)]

use spate_kafka::protocol::{committed_records, Connection, FetchedRecord};
use spate_kafka::KafkaProperties;

/// The broker the tests use, from `SPATE_KAFKA_BROKERS`. Unset: the test
/// fails saying how to start one, unless `SPATE_SKIP_KAFKA_TESTS=1` asks to
/// skip (then `None`).
pub fn brokers() -> Option<String> {
    match std::env::var("SPATE_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            if std::env::var("SPATE_SKIP_KAFKA_TESTS").is_ok_and(|v| v == "1") {
                eprintln!("SPATE_SKIP_KAFKA_TESTS=1: Kafka test skipped");
                return None;
            }
            panic!(
                "the Kafka tests need a broker: start one with `.ci/kafka-broker start` and \
                 set SPATE_KAFKA_BROKERS=127.0.0.1:19092 (README: Kafka), or set \
                 SPATE_SKIP_KAFKA_TESTS=1 to skip them"
            );
        }
    }
}

/// Client properties for the broker.
pub fn properties(brokers: &str) -> KafkaProperties {
    KafkaProperties::new(brokers)
}

/// A topic name unique to this test process.
pub fn topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Creates a topic.
pub fn create(brokers: &str, topic: &str, partitions: i32) {
    spate_kafka::client::create_topic(&properties(brokers), topic, partitions).unwrap();
}

/// The records a read-committed reader must see in `topic`, per partition
/// in offset order, computed from the batches and their transaction markers.
pub fn committed(brokers: &str, topic: &str, partitions: i32) -> Vec<Vec<FetchedRecord>> {
    let first = brokers.split(',').next().unwrap();
    let mut c = Connection::connect(first).unwrap();
    (0..partitions)
        .map(|p| committed_records(&c.fetch_all(topic, p).unwrap()))
        .collect()
}

/// Every record of `topic` (committed or not), per partition.
pub fn all_records(brokers: &str, topic: &str, partitions: i32) -> Vec<Vec<FetchedRecord>> {
    let first = brokers.split(',').next().unwrap();
    let mut c = Connection::connect(first).unwrap();
    (0..partitions)
        .map(|p| {
            c.fetch_all(topic, p)
                .unwrap()
                .into_iter()
                .flat_map(|b| b.records)
                .collect()
        })
        .collect()
}
