//! Kafka connectors for Spate: a source whose partition offsets live in the
//! checkpoints ([`KafkaSource`]) and a sink that writes at least once or
//! exactly once through Kafka transactions committed with the checkpoints
//! ([`KafkaSink`]).
//!
//! Both run every librdkafka call on Kafka threads of their own (one per
//! source subtask, one per sink subtask), bridged to the subtask by a
//! bounded channel or queue and the subtask's notifier: a reactor never
//! calls into librdkafka. The client sits behind the traits of [`client`],
//! so another Kafka client can replace librdkafka, and the step logic of
//! the source's and the sink's Kafka threads is tested with simulated
//! clients (seeded, with injected failures and crashes).
//!
//! Owns: Kafka I/O. Must not touch: the engine's internals (it uses the
//! public source and two-phase sink contracts only).

pub mod client;
pub mod config;
pub mod intent;
pub mod protocol;
pub mod sink;
pub mod source;

pub use client::{KafkaRecord, OutRecord, StartOffset};
pub use config::KafkaProperties;
pub use sink::{Delivery, KafkaSink, KafkaSinkConfig, Serializer};
pub use source::{KafkaSource, KafkaSourceConfig, PoisonPolicy, StopAt};
