//! The Kafka client operations the connectors use, behind small traits, and
//! their librdkafka backend.
//!
//! Every method here may block (network round trips, librdkafka's own
//! queues): they are called only on the connectors' Kafka threads, never on
//! a reactor. The step logic of the source's and the sink's threads sees
//! only these traits, so another client can replace librdkafka, and the
//! seeded tests drive both with simulated clients (the tests of
//! [`crate::source`] and [`crate::sink`]).
//!
//! Owns: every call into rdkafka. Must not touch: the engine.

use crate::config::{redact_error, KafkaProperties};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client failure, as text without configuration values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

impl From<rdkafka::error::KafkaError> for ClientError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Self(redact_error(&e))
    }
}

/// One record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutRecord {
    /// The partition, or `None` for the client's partitioner (by key).
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub payload: Vec<u8>,
    /// The record timestamp (epoch ms), or `None` for the send time.
    pub timestamp_ms: Option<i64>,
}

/// The producer id and epoch a transactional producer holds: with its
/// transactional id, what a later process needs to commit a transaction the
/// producer left open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdentity {
    /// The producer id.
    pub producer_id: i64,
    /// The producer epoch.
    pub epoch: i16,
}

/// A producer: transactional (with a transactional id) or not.
pub trait KafkaProducer: Send {
    /// Transactional: registers the transactional id (fencing older
    /// producers and aborting what they left open) and returns the identity
    /// the coordinator gave this producer.
    fn init_transactions(&mut self) -> Result<ProducerIdentity, ClientError>;
    /// Starts a transaction.
    fn begin(&mut self) -> Result<(), ClientError>;
    /// Queues one record (waiting for queue space if needed).
    fn send(&mut self, record: &OutRecord) -> Result<(), ClientError>;
    /// Waits until every queued record is acknowledged; fails if any failed.
    fn flush(&mut self) -> Result<(), ClientError>;
    /// Commits the open transaction.
    fn commit(&mut self) -> Result<(), ClientError>;
    /// Aborts the open transaction.
    fn abort(&mut self) -> Result<(), ClientError>;
    /// Serves the acknowledgements that arrived, without waiting; returns
    /// whether records are still unacknowledged.
    fn serve(&mut self) -> bool {
        false
    }
}

/// Transaction control without a producer of one's own: what a restore
/// needs for transactions an earlier process left open.
pub trait TransactionControl: Send {
    /// Commits the transaction `identity` left open under `transactional_id`.
    fn commit_left_open(
        &mut self,
        transactional_id: &str,
        identity: ProducerIdentity,
    ) -> Result<(), ClientError>;
    /// Fences `transactional_id` (bumps its epoch), which aborts a
    /// transaction left open under it.
    fn fence(&mut self, transactional_id: &str) -> Result<(), ClientError>;
}

/// Makes producers (one per transactional id).
pub trait ProducerFactory: Send {
    /// A producer for `topic`; transactional when `transactional_id` is given.
    fn producer(
        &mut self,
        topic: &str,
        transactional_id: Option<&str>,
    ) -> Result<Box<dyn KafkaProducer>, ClientError>;
    /// Transaction control for restores.
    fn control(&mut self) -> Result<Box<dyn TransactionControl>, ClientError>;
}

/// The longest a consumer batch collects records.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// How long one blocking librdkafka call may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The transaction timeout the sink asks for: a pre-committed transaction
/// must outlive a crash until the restore commits it (the coordinator
/// aborts transactions older than this). Kafka's default ceiling
/// (`transaction.max.timeout.ms`) is 15 minutes.
pub const TRANSACTION_TIMEOUT_MS: i32 = 15 * 60 * 1000;

/// librdkafka context of the sink's producers: delivery failures and the
/// statistics that carry the producer id and epoch.
#[derive(Default)]
pub(crate) struct ProducerState {
    failures: Mutex<Option<String>>,
    identity: Mutex<Option<(ProducerIdentity, String)>>,
}

/// Called with the timestamps (epoch ms) of records that became visible to
/// consumers: acknowledged (at least once) or committed (exactly once).
/// Runs on the sink's Kafka thread; the benchmark measures latency with it.
pub type VisibilityObserver = Arc<dyn Fn(&[i64]) + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct SinkClientContext(Arc<ProducerState>, Option<VisibilityObserver>);

impl ClientContext for SinkClientContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(eos) = statistics.eos {
            if eos.producer_id >= 0 {
                if let Ok(epoch) = i16::try_from(eos.producer_epoch) {
                    *self.0.identity.lock().expect("identity lock") = Some((
                        ProducerIdentity {
                            producer_id: eos.producer_id,
                            epoch,
                        },
                        eos.txn_state,
                    ));
                }
            }
        }
    }
}

impl rdkafka::producer::ProducerContext for SinkClientContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let (Ok(message), Some(observe)) = (result, &self.1) {
            if let Some(ms) = message.timestamp().to_millis() {
                observe(&[ms]);
            }
        }
        if let Err((error, message)) = result {
            let mut f = self.0.failures.lock().expect("failures lock");
            if f.is_none() {
                *f = Some(format!(
                    "delivery to {} partition {} failed: {}",
                    message.topic(),
                    message.partition(),
                    redact_error(error)
                ));
            }
        }
    }
}

/// A producer over librdkafka.
pub struct RdProducer {
    producer: BaseProducer<SinkClientContext>,
    state: Arc<ProducerState>,
    topic: String,
}

impl KafkaProducer for RdProducer {
    fn init_transactions(&mut self) -> Result<ProducerIdentity, ClientError> {
        self.producer.init_transactions(CALL_TIMEOUT)?;
        // librdkafka publishes the producer id and epoch only in its
        // statistics ("eos" object); wait for a report taken after the
        // initialisation (transaction state "Ready").
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        loop {
            self.producer.poll(Duration::from_millis(50));
            if let Some((identity, state)) = &*self.state.identity.lock().expect("identity lock") {
                if state == "Ready" {
                    return Ok(*identity);
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(ClientError(
                    "librdkafka reported no producer id after init_transactions".into(),
                ));
            }
        }
    }

    fn begin(&mut self) -> Result<(), ClientError> {
        Ok(self.producer.begin_transaction()?)
    }

    fn send(&mut self, record: &OutRecord) -> Result<(), ClientError> {
        loop {
            let mut r: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.topic).payload(&record.payload[..]);
            if let Some(key) = &record.key {
                r = r.key(&key[..]);
            }
            if let Some(p) = record.partition {
                r = r.partition(p);
            }
            if let Some(t) = record.timestamp_ms {
                r = r.timestamp(t);
            }
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    // librdkafka's queue is full: serve delivery reports
                    // (this thread's own blocking wait) and retry.
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        self.producer.flush(CALL_TIMEOUT)?;
        if let Some(f) = self.state.failures.lock().expect("failures lock").take() {
            return Err(ClientError(f));
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), ClientError> {
        Ok(self.producer.commit_transaction(CALL_TIMEOUT)?)
    }

    fn abort(&mut self) -> Result<(), ClientError> {
        Ok(self.producer.abort_transaction(CALL_TIMEOUT)?)
    }

    fn serve(&mut self) -> bool {
        self.producer.poll(Duration::ZERO);
        self.producer.in_flight_count() > 0
    }
}

/// Transaction control through the Kafka protocol ([`crate::protocol`]).
pub struct WireControl {
    brokers: String,
}

fn protocol_error(e: crate::protocol::ProtocolError) -> ClientError {
    ClientError(e.to_string())
}

impl TransactionControl for WireControl {
    fn commit_left_open(
        &mut self,
        transactional_id: &str,
        identity: ProducerIdentity,
    ) -> Result<(), ClientError> {
        for attempt in 0..30u32 {
            let mut c = crate::protocol::coordinator(&self.brokers, transactional_id, 10)
                .map_err(protocol_error)?;
            let code = c
                .end_transaction(transactional_id, identity.producer_id, identity.epoch, true)
                .map_err(protocol_error)?;
            match code {
                0 => return Ok(()),
                c if crate::protocol::is_retriable(c) => {
                    std::thread::sleep(Duration::from_millis(50 << attempt.min(5)));
                }
                c => {
                    return Err(ClientError(format!(
                        "committing the transaction left open under {transactional_id:?} \
                         (producer id {}, epoch {}): Kafka error {c} ({})",
                        identity.producer_id,
                        identity.epoch,
                        crate::protocol::error_name(c)
                    )))
                }
            }
        }
        Err(ClientError(format!(
            "committing the transaction left open under {transactional_id:?}: coordinator busy"
        )))
    }

    fn fence(&mut self, transactional_id: &str) -> Result<(), ClientError> {
        for attempt in 0..30u32 {
            let mut c = crate::protocol::coordinator(&self.brokers, transactional_id, 10)
                .map_err(protocol_error)?;
            match c
                .init_producer_id(transactional_id, TRANSACTION_TIMEOUT_MS)
                .map_err(protocol_error)?
            {
                Ok(_) => return Ok(()),
                Err(code) if crate::protocol::is_retriable(code) => {
                    std::thread::sleep(Duration::from_millis(50 << attempt.min(5)));
                }
                Err(code) => {
                    return Err(ClientError(format!(
                        "fencing {transactional_id:?}: Kafka error {code} ({})",
                        crate::protocol::error_name(code)
                    )))
                }
            }
        }
        Err(ClientError(format!(
            "fencing {transactional_id:?}: coordinator busy"
        )))
    }
}

/// Producers over librdkafka with the user's properties.
pub struct RdProducerFactory {
    /// The client properties.
    pub properties: KafkaProperties,
    /// Told of acknowledged records (non-transactional producers only:
    /// a transaction's records become visible at its commit).
    pub on_delivered: Option<VisibilityObserver>,
}

impl RdProducerFactory {
    /// Producers with `properties`.
    pub fn new(properties: KafkaProperties) -> Self {
        Self {
            properties,
            on_delivered: None,
        }
    }
}

impl ProducerFactory for RdProducerFactory {
    fn producer(
        &mut self,
        topic: &str,
        transactional_id: Option<&str>,
    ) -> Result<Box<dyn KafkaProducer>, ClientError> {
        let mut config = self.properties.client_config();
        config.set("enable.idempotence", "true");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
            config.set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string());
            // The producer id and epoch come with the statistics.
            config.set("statistics.interval.ms", "100");
        }
        if config.get("linger.ms").is_none() {
            config.set("linger.ms", "5");
        }
        let observer = match transactional_id {
            None => self.on_delivered.clone(),
            Some(_) => None,
        };
        let context = SinkClientContext(Arc::default(), observer);
        let state = context.0.clone();
        let producer: BaseProducer<SinkClientContext> = config.create_with_context(context)?;
        Ok(Box::new(RdProducer {
            producer,
            state,
            topic: topic.to_string(),
        }))
    }

    fn control(&mut self) -> Result<Box<dyn TransactionControl>, ClientError> {
        if !self.properties.is_plaintext() {
            return Err(ClientError(
                "restoring an exactly-once Kafka sink commits transactions left open through \
                 its own protocol client, which speaks plaintext only; this cluster's \
                 security.protocol is not plaintext"
                    .into(),
            ));
        }
        Ok(Box::new(WireControl {
            brokers: self.properties.brokers().to_string(),
        }))
    }
}

/// One consumed record, borrowed from the client.
#[derive(Clone, Copy, Debug)]
pub struct KafkaRecord<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The record timestamp (epoch ms), if it has one.
    pub timestamp_ms: Option<i64>,
    /// The key.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub payload: Option<&'a [u8]>,
}

/// Where a partition starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOffset {
    /// The first offset still in the log.
    Earliest,
    /// The end of the log (only records produced after the assignment).
    Latest,
    /// The first record whose timestamp is at or after this (epoch ms).
    Timestamp(i64),
    /// The consumer group's committed offset, else the earliest.
    GroupOffsets,
}

/// What the source's Kafka thread needs of a consumer.
pub trait KafkaConsumer: Send {
    /// The partition count of `topic` (0 if it does not exist yet).
    fn partition_count(&mut self, topic: &str) -> Result<u32, ClientError>;
    /// Resolves `start` for a partition to an offset.
    fn resolve(
        &mut self,
        topic: &str,
        partition: i32,
        start: StartOffset,
    ) -> Result<i64, ClientError>;
    /// Replaces the assignment: read each (topic, partition) from the offset.
    fn assign(&mut self, partitions: &[(String, i32, i64)]) -> Result<(), ClientError>;
    /// Waits up to `timeout` for records and hands each to `each` (at most
    /// `max`, and for at most a few milliseconds after the first); returns
    /// how many.
    fn poll(
        &mut self,
        timeout: Duration,
        max: usize,
        each: &mut dyn FnMut(&KafkaRecord<'_>),
    ) -> Result<usize, ClientError>;
    /// Commits offsets to the consumer group (monitoring, and the start of
    /// a job started from the group's offsets); `wait`: until the broker
    /// answered.
    fn commit_offsets(
        &mut self,
        offsets: &[(String, i32, i64)],
        wait: bool,
    ) -> Result<(), ClientError>;
}

/// A consumer over librdkafka (manual assignment; the group id only names
/// where offsets are committed for monitoring).
pub struct RdConsumer {
    consumer: BaseConsumer,
}

impl RdConsumer {
    /// A consumer with the user's properties.
    pub fn new(properties: &KafkaProperties, group_id: &str) -> Result<Self, ClientError> {
        let mut config = properties.client_config();
        config.set("group.id", group_id);
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        if config.get("isolation.level").is_none() {
            config.set("isolation.level", "read_committed");
        }
        config.set("enable.partition.eof", "false");
        Ok(Self {
            consumer: config.create()?,
        })
    }
}

impl KafkaConsumer for RdConsumer {
    fn partition_count(&mut self, topic: &str) -> Result<u32, ClientError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as u32))
    }

    fn resolve(
        &mut self,
        topic: &str,
        partition: i32,
        start: StartOffset,
    ) -> Result<i64, ClientError> {
        let timeout = Duration::from_secs(10);
        let (low, high) = self.consumer.fetch_watermarks(topic, partition, timeout)?;
        Ok(match start {
            StartOffset::Earliest => low,
            StartOffset::Latest => high,
            StartOffset::Timestamp(ms) => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, partition, Offset::Offset(ms))?;
                let found = self.consumer.offsets_for_times(tpl, timeout)?;
                match found.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    // No record at or after the timestamp: the end.
                    _ => high,
                }
            }
            StartOffset::GroupOffsets => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let committed = self.consumer.committed_offsets(tpl, timeout)?;
                match committed
                    .find_partition(topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) if o >= low => o,
                    _ => low,
                }
            }
        })
    }

    fn assign(&mut self, partitions: &[(String, i32, i64)]) -> Result<(), ClientError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in partitions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        Ok(self.consumer.assign(&tpl)?)
    }

    fn poll(
        &mut self,
        timeout: Duration,
        max: usize,
        each: &mut dyn FnMut(&KafkaRecord<'_>),
    ) -> Result<usize, ClientError> {
        let mut n = 0;
        let mut wait = timeout;
        // A batch closes after `BATCH_WINDOW` of records too, so slow
        // deserialisation never holds records back for long.
        let mut first: Option<std::time::Instant> = None;
        while n < max && first.is_none_or(|f| f.elapsed() < BATCH_WINDOW) {
            match self.consumer.poll(wait) {
                None => break,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => {
                    let record = KafkaRecord {
                        topic: m.topic(),
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        key: m.key(),
                        payload: m.payload(),
                    };
                    first.get_or_insert_with(std::time::Instant::now);
                    each(&record);
                    n += 1;
                }
            }
            wait = Duration::ZERO;
        }
        Ok(n)
    }

    fn commit_offsets(
        &mut self,
        offsets: &[(String, i32, i64)],
        wait: bool,
    ) -> Result<(), ClientError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        let mode = if wait {
            rdkafka::consumer::CommitMode::Sync
        } else {
            rdkafka::consumer::CommitMode::Async
        };
        Ok(self.consumer.commit(&tpl, mode)?)
    }
}

/// Creates `topic` with `partitions` partitions unless it exists (blocks:
/// Kafka threads, tools and tests only).
pub fn create_topic(
    properties: &KafkaProperties,
    topic: &str,
    partitions: i32,
) -> Result<(), ClientError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        properties.client_config().create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_lite::future::block_on(admin.create_topics([&new], &options))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(ClientError(format!("creating topic {t}: {code}"))),
        }
    }
    Ok(())
}
