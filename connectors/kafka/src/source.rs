//! The Kafka source: the partitions of the topics are the splits, their
//! offsets live in the checkpoints.
//!
//! Splits: partition `p` of the `t`-th of `T` configured topics has index
//! `i = p * T + t`, and split id `i * g mod S`, where `S` is the split count
//! (the job's max parallelism) and `g` the integer nearest `0.618 S` that is
//! coprime with `S` ([`split_stride`]). The index depends only on the topic's
//! place in the list and the partition number, and Kafka only ever adds
//! partitions, so an id never changes meaning while the topic list and the
//! max parallelism stay the same (both are fixed for a job's life). The
//! multiplication is a bijection on `0..S` that spreads consecutive indices
//! over the whole range (a golden-ratio sequence), so the contiguous split
//! ranges subtasks own, like key groups, each get a fair share of a topic's
//! few partitions, and a partition added later lands wherever the sequence
//! puts it, owned by whichever subtask owns that id. More than `S`
//! partitions × topics is a configuration error that names the partition.
//! A restore on another parallelism hands every partition and its offset to
//! its new owner.
//!
//! Positions: a split's position is the offset of the next record to read.
//! On restore the checkpoint is the truth: owned partitions it lists resume
//! there; owned partitions it does not list (created since) start at the
//! earliest offset. Without a checkpoint, the partitions present at the
//! start begin at the configured [`StartOffset`]; partitions discovered
//! later (every `discovery_interval_ms`) begin at the earliest offset. On
//! completion of a checkpoint the positions are committed to the consumer
//! group, for monitoring only; nothing reads them back except the
//! `GroupOffsets` start of a job without a checkpoint. (A bounded source
//! that finished before a checkpoint's trigger is not told of that
//! checkpoint, so the group may lag behind a finished bounded job's last
//! records.)
//!
//! Event time: with [`KafkaSourceConfig::watermarks`] the source keeps a
//! watermark per owned partition (from record timestamps or a user
//! function) and hands the engine the smallest over the partitions that
//! are not idle ([`PartitionWatermarks`], through `Source::watermark`).
//!
//! Threads: each source subtask has one Kafka thread that owns its
//! librdkafka consumer (manual assignment of the owned partitions, no group
//! membership), deserialises records with the user's function, applies the
//! poison-record policy, and hands batches to the subtask over a bounded
//! channel, waking it through its notifier. The reactor only takes batches
//! out of the channel; it never calls librdkafka.
//!
//! Owns: its Kafka thread and consumer. Must not touch: the topics' data
//! (the source only reads; the dead-letter topic is written at least once).

use crate::client::{ClientError, KafkaConsumer, KafkaRecord, RdConsumer, StartOffset};
use crate::config::KafkaProperties;
use spate::source::{Source, SourceContext, SourcePoll};
use spate::SourceError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What happens to a record the deserializer rejects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoisonPolicy {
    /// Fail the job with an error naming topic, partition and offset.
    Fail,
    /// Skip it and count it ([`KafkaSourceConfig::skipped`]).
    Skip,
    /// Write its key and value, unchanged, to this topic (at least once)
    /// and go on; counted too.
    DeadLetter(String),
}

/// Where a bounded source stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopAt {
    /// Never: the source runs until the job is stopped.
    Never,
    /// At each partition's end offset as found when it was assigned (a
    /// bounded read of what the topic holds; Flink's `setBounded(latest)`).
    Latest,
    /// At the given end offsets (topic, partition, offset), for partitions
    /// written while the job runs (the benchmark's); a partition not listed
    /// ends at once.
    At(Vec<(String, i32, i64)>),
}

impl StopAt {
    fn is_bounded(&self) -> bool {
        !matches!(self, StopAt::Never)
    }
}

/// The Kafka source's settings.
#[derive(Clone)]
pub struct KafkaSourceConfig {
    /// Client properties (brokers, security).
    pub properties: KafkaProperties,
    /// The topics read; their order fixes the split ids.
    pub topics: Vec<String>,
    /// The consumer group the positions are committed to (monitoring).
    pub group_id: String,
    /// Where partitions begin when there is no checkpoint.
    pub start: StartOffset,
    /// Where the source ends.
    pub stop: StopAt,
    /// How often the Kafka thread looks for new partitions (0: never).
    pub discovery_interval_ms: u64,
    /// What happens to records the deserializer rejects.
    pub poison: PoisonPolicy,
    /// Records rejected and skipped or dead-lettered, over all subtasks.
    pub skipped: Arc<AtomicU64>,
    /// Batches the channel to the subtask holds.
    pub channel_batches: usize,
    /// Per-partition watermarks with idleness (`None`: the job's
    /// [`WatermarkStrategy`](spate::WatermarkStrategy) alone).
    pub watermarks: Option<PartitionWatermarks>,
}

/// A record's event time for watermarks: from the Kafka record (`None`:
/// the record timestamp is used).
pub type RecordTime = Arc<dyn Fn(&KafkaRecord<'_>) -> Option<i64> + Send + Sync>;

/// Watermarks per partition (Flink's per-split watermarks): each owned
/// partition's watermark trails the largest event time it delivered by
/// `out_of_orderness_ms`; the subtask's watermark is the smallest over its
/// partitions that are not idle. A partition is idle once it delivered
/// nothing for `idle_timeout_ms` of processing time (also before its
/// first record), so an empty or quiet partition does not stall event
/// time. When every owned partition is idle, the subtask's watermark is the
/// largest partition watermark (the engine has no idle state across
/// subtasks: a subtask owning only idle partitions holds its watermark).
#[derive(Clone)]
pub struct PartitionWatermarks {
    /// Out-of-orderness allowed within a partition, ms.
    pub out_of_orderness_ms: u64,
    /// Processing time without records after which a partition is idle, ms.
    pub idle_timeout_ms: u64,
    /// Event time of a record; `None` uses the Kafka record timestamp.
    pub event_time: Option<RecordTime>,
}

impl std::fmt::Debug for KafkaSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSourceConfig")
            .field("properties", &self.properties)
            .field("topics", &self.topics)
            .field("group_id", &self.group_id)
            .field("start", &self.start)
            .field("stop", &self.stop)
            .field("poison", &self.poison)
            .finish_non_exhaustive()
    }
}

impl KafkaSourceConfig {
    /// Reads `topics` from the earliest offsets, unbounded, failing on
    /// poison records, committing positions to `group_id`.
    pub fn new(properties: KafkaProperties, topics: &[&str], group_id: impl Into<String>) -> Self {
        Self {
            properties,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            group_id: group_id.into(),
            start: StartOffset::Earliest,
            stop: StopAt::Never,
            discovery_interval_ms: 5_000,
            poison: PoisonPolicy::Fail,
            skipped: Arc::new(AtomicU64::new(0)),
            channel_batches: 16,
            watermarks: None,
        }
    }
}

/// Positions of a completed checkpoint, for the Kafka thread to commit to
/// the group (split, offset).
type CommitRequest = Arc<Mutex<Option<Vec<(u32, i64)>>>>;

/// A record deserializer: the value, or why not.
pub type Deserializer<T> = Arc<dyn Fn(&KafkaRecord<'_>) -> Result<T, String> + Send + Sync>;

/// A batch from the Kafka thread: records and, per record, its split,
/// offset and event time (for watermarks; -1 if none).
struct Batch<T> {
    records: Vec<T>,
    positions: Vec<(u32, i64, i64)>,
}

/// Event time of one owned split (per-partition watermarks).
#[derive(Clone, Copy, Debug)]
struct SplitTime {
    /// Largest event time delivered.
    max_ms: Option<i64>,
    /// Processing time of the last delivery (or of the assignment).
    active_ms: u64,
}

enum Message<T> {
    /// Splits assigned and the offsets they start at.
    Assigned(Vec<(u32, i64)>),
    Batch(Batch<T>),
    /// Every owned partition reached its end (bounded reads).
    Finished,
    Failed(String),
}

/// The Kafka source subtask.
pub struct KafkaSource<T> {
    config: KafkaSourceConfig,
    deserialize: Deserializer<T>,
    context: Option<SourceContext>,
    /// Owned split → offset of the next record.
    positions: BTreeMap<u32, i64>,
    /// Owned split → its event time (per-partition watermarks only).
    times: BTreeMap<u32, SplitTime>,
    restored: Option<BTreeMap<u32, i64>>,
    receiver: Option<Receiver<Message<T>>>,
    current: Option<Batch<T>>,
    taken: usize,
    peeked: Option<Message<T>>,
    finished: bool,
    stop: Arc<AtomicBool>,
    commit_request: CommitRequest,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> KafkaSource<T> {
    /// A source subtask deserializing with `deserialize`.
    pub fn new(config: KafkaSourceConfig, deserialize: Deserializer<T>) -> Self {
        Self {
            config,
            deserialize,
            context: None,
            positions: BTreeMap::new(),
            times: BTreeMap::new(),
            restored: None,
            receiver: None,
            current: None,
            taken: 0,
            peeked: None,
            finished: false,
            stop: Arc::new(AtomicBool::new(false)),
            commit_request: Arc::new(Mutex::new(None)),
            thread: None,
        }
    }

    fn start_thread(&mut self) -> Result<(), SourceError> {
        let context = self
            .context
            .clone()
            .ok_or_else(|| SourceError::Other("polled before open".into()))?;
        let (tx, rx) = sync_channel(self.config.channel_batches.max(1));
        let reader = Reader {
            config: self.config.clone(),
            deserialize: self.deserialize.clone(),
            split_count: context.split_count,
            owned: context.splits.clone(),
            restored: self.restored.clone(),
            tx,
            wake: {
                let notifier = context.notifier.clone();
                Arc::new(move || notifier.notify())
            },
            stop: self.stop.clone(),
            commit_request: self.commit_request.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("kafka-source-{}", context.subtask))
            .spawn(move || {
                let consumer = RdConsumer::new(&reader.config.properties, &reader.config.group_id);
                match consumer {
                    Ok(c) => reader.run(Box::new(c)),
                    Err(e) => {
                        reader.send(Message::Failed(format!("Kafka consumer: {e}")));
                    }
                };
            })
            .map_err(|e| SourceError::Other(format!("cannot start the Kafka thread: {e}")))?;
        self.receiver = Some(rx);
        self.thread = Some(thread);
        Ok(())
    }

    fn next_message(&mut self) -> Option<Message<T>> {
        if let Some(m) = self.peeked.take() {
            return Some(m);
        }
        match self.receiver.as_ref()?.try_recv() {
            Ok(m) => Some(m),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Message::Failed(
                "the Kafka thread ended unexpectedly".into(),
            )),
        }
    }
}

impl<T: Send + 'static> Source<T> for KafkaSource<T> {
    fn open(&mut self, context: &SourceContext) -> Result<(), SourceError> {
        if self.config.topics.is_empty() {
            return Err(SourceError::Other("the Kafka source has no topic".into()));
        }
        self.context = Some(context.clone());
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourcePoll, SourceError> {
        if self.finished {
            return Ok(SourcePoll::Finished);
        }
        if self.receiver.is_none() {
            self.start_thread()?;
        }
        let mut n = 0;
        while n < max {
            if let Some(batch) = &mut self.current {
                let take = batch.records.len().min(max - n);
                out.extend(batch.records.drain(..take));
                let now_ms = if self.config.watermarks.is_some() {
                    now_ms()
                } else {
                    0
                };
                for &(split, offset, time_ms) in &batch.positions[self.taken..self.taken + take] {
                    self.positions.insert(split, offset + 1);
                    if self.config.watermarks.is_some() {
                        let t = self.times.entry(split).or_insert(SplitTime {
                            max_ms: None,
                            active_ms: now_ms,
                        });
                        t.active_ms = now_ms;
                        if time_ms >= 0 {
                            t.max_ms = Some(t.max_ms.map_or(time_ms, |m| m.max(time_ms)));
                        }
                    }
                }
                self.taken += take;
                n += take;
                if self.taken == batch.positions.len() {
                    self.current = None;
                    self.taken = 0;
                }
                continue;
            }
            match self.next_message() {
                None => break,
                Some(Message::Assigned(splits)) => {
                    let now_ms = now_ms();
                    for (split, offset) in splits {
                        self.positions.insert(split, offset);
                        self.times.entry(split).or_insert(SplitTime {
                            max_ms: None,
                            active_ms: now_ms,
                        });
                    }
                }
                Some(Message::Batch(b)) => self.current = Some(b),
                Some(Message::Finished) => {
                    self.finished = true;
                    break;
                }
                Some(Message::Failed(e)) => return Err(SourceError::Other(e)),
            }
        }
        Ok(if n > 0 {
            SourcePoll::Ready
        } else if self.finished {
            SourcePoll::Finished
        } else {
            // With idleness: poll again when the next partition turns idle
            // (its watermark then stops holding the subtask's back).
            match self.next_idle_ms() {
                Some(at_ms) => SourcePoll::PendingUntilUs(at_ms.saturating_mul(1000)),
                None => SourcePoll::Pending,
            }
        })
    }

    fn watermark(&mut self) -> Option<spate::Timestamp> {
        let w = self.config.watermarks.as_ref()?;
        let now = now_ms();
        let trailing = |t: &SplitTime| {
            t.max_ms
                .map(|m| (m.max(0) as u64).saturating_sub(w.out_of_orderness_ms + 1))
        };
        let mut active = self
            .times
            .values()
            .filter(|t| now < t.active_ms + w.idle_timeout_ms)
            .peekable();
        // 0 never advances the subtask's watermark (and, unlike `None`,
        // keeps the strategy's watermarks out).
        Some(if active.peek().is_some() {
            // An active partition without records yet holds it back.
            active.map(trailing).min().flatten().unwrap_or(0)
        } else {
            self.times.values().filter_map(trailing).max().unwrap_or(0)
        })
    }

    fn is_ready(&mut self) -> bool {
        if self.current.is_some() || self.peeked.is_some() {
            return true;
        }
        self.peeked = self.next_message();
        self.peeked.is_some()
    }

    fn offset(&self) -> u64 {
        0
    }

    fn seek(&mut self, _offset: u64) -> Result<(), SourceError> {
        Err(SourceError::Other(
            "the Kafka source restores per partition".into(),
        ))
    }

    fn split_offsets(&self) -> Option<Vec<(u32, u64)>> {
        Some(
            self.positions
                .iter()
                .map(|(&s, &o)| (s, o.max(0) as u64))
                .collect(),
        )
    }

    fn seek_splits(&mut self, offsets: &[(u32, u64)]) -> Result<(), SourceError> {
        if self.receiver.is_some() {
            return Err(SourceError::Other("seek after the first poll".into()));
        }
        let mut restored = BTreeMap::new();
        for &(split, offset) in offsets {
            let offset = i64::try_from(offset).map_err(|_| SourceError::Seek {
                offset,
                reason: format!("split {split}: not a Kafka offset"),
            })?;
            restored.insert(split, offset);
            self.positions.insert(split, offset);
        }
        self.restored = Some(restored);
        Ok(())
    }

    fn checkpoint_complete(
        &mut self,
        _checkpoint_id: u64,
        positions: &[(u32, u64)],
    ) -> Result<(), SourceError> {
        // Monitoring only: the Kafka thread commits them to the group.
        *self.commit_request.lock().expect("commit lock") = Some(
            positions
                .iter()
                .map(|&(s, o)| (s, o.min(i64::MAX as u64) as i64))
                .collect(),
        );
        Ok(())
    }
}

impl<T> KafkaSource<T> {
    /// With idleness: the processing time the next active partition turns
    /// idle.
    fn next_idle_ms(&self) -> Option<u64> {
        let w = self.config.watermarks.as_ref()?;
        let now = now_ms();
        self.times
            .values()
            .map(|t| t.active_ms + w.idle_timeout_ms)
            .filter(|&at| at > now)
            .min()
    }
}

/// Processing time, epoch ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<T> Drop for KafkaSource<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Dropping the receiver ends a thread blocked on a full channel.
        self.receiver = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The multiplier that spreads partition indices over `split_count` splits:
/// the integer nearest `0.618 × split_count` that is coprime with it (so
/// that `i ↦ i × stride mod split_count` is a bijection).
pub fn split_stride(split_count: u32) -> u64 {
    let n = u64::from(split_count.max(1));
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut g = ((n as f64) * 0.618_033_988_75).round().max(1.0) as u64;
    while gcd(g, n) != 1 {
        g += 1;
    }
    g
}

/// One owned partition on the Kafka thread.
struct Owned {
    topic: String,
    partition: i32,
    split: u32,
    /// The next offset to read.
    next: i64,
    /// Bounded reads: the end offset.
    end: Option<i64>,
    /// A timestamp start: records before the first one stamped at or after
    /// this are skipped (whatever offset the broker's time index gave).
    from_ms: Option<i64>,
}

/// The Kafka thread's state.
struct Reader<T> {
    config: KafkaSourceConfig,
    deserialize: Deserializer<T>,
    split_count: u32,
    owned: std::ops::Range<u32>,
    restored: Option<BTreeMap<u32, i64>>,
    tx: SyncSender<Message<T>>,
    /// Wakes the subtask (its notifier).
    wake: Arc<dyn Fn() + Send + Sync>,
    stop: Arc<AtomicBool>,
    commit_request: CommitRequest,
}

impl<T: Send + 'static> Reader<T> {
    /// Sends to the subtask and wakes it; false once the subtask is gone.
    fn send(&self, m: Message<T>) -> bool {
        let ok = self.tx.send(m).is_ok();
        (self.wake)();
        ok
    }

    fn split_of(&self, topic_index: usize, partition: u32) -> Result<u32, String> {
        let t = self.config.topics.len() as u64;
        let n = u64::from(self.split_count.max(1));
        let index = u64::from(partition) * t + topic_index as u64;
        if index >= n {
            return Err(format!(
                "Kafka topic {} partition {partition} is partition number {index} of the job's \
                 topics, but the job has only {n} splits (its max parallelism): raise \
                 max_parallelism above partitions × topics",
                self.config.topics[topic_index]
            ));
        }
        Ok((index * split_stride(self.split_count) % n) as u32)
    }

    /// New owned partitions, with their start offsets resolved.
    fn discover(
        &self,
        consumer: &mut dyn KafkaConsumer,
        known: &[Owned],
        first: bool,
    ) -> Result<Vec<Owned>, String> {
        let mut found = Vec::new();
        for (ti, topic) in self.config.topics.iter().enumerate() {
            let err = |e: ClientError| format!("Kafka topic {topic}: {e}");
            let count = consumer.partition_count(topic).map_err(err)?;
            for p in 0..count {
                let split = self.split_of(ti, p)?;
                if !self.owned.contains(&split) || known.iter().any(|o| o.split == split) {
                    continue;
                }
                let partition = p as i32;
                let mut from_ms = None;
                let next = match self.restored.as_ref().and_then(|r| r.get(&split)) {
                    Some(&o) => o,
                    None => {
                        let start = if first && self.restored.is_none() {
                            self.config.start
                        } else {
                            StartOffset::Earliest
                        };
                        if let StartOffset::Timestamp(ms) = start {
                            from_ms = Some(ms);
                        }
                        consumer.resolve(topic, partition, start).map_err(err)?
                    }
                };
                let end = match &self.config.stop {
                    StopAt::Never => None,
                    StopAt::Latest => Some(
                        consumer
                            .resolve(topic, partition, StartOffset::Latest)
                            .map_err(err)?,
                    ),
                    StopAt::At(ends) => Some(
                        ends.iter()
                            .find(|(t, p, _)| t == topic && *p == partition)
                            .map_or(0, |e| e.2),
                    ),
                };
                found.push(Owned {
                    topic: topic.clone(),
                    partition,
                    split,
                    next,
                    end,
                    from_ms,
                });
            }
        }
        Ok(found)
    }

    fn run(self, mut consumer: Box<dyn KafkaConsumer>) {
        if let Err(e) = self.read(&mut *consumer) {
            self.send(Message::Failed(e));
        }
    }

    /// Commits the positions of the newest completed checkpoint, if any, to
    /// the consumer group (monitoring: a failure is reported, not the job's).
    fn commit_positions(&self, consumer: &mut dyn KafkaConsumer, owned: &[Owned], wait: bool) {
        let Some(positions) = self.commit_request.lock().expect("commit lock").take() else {
            return;
        };
        let offsets: Vec<(String, i32, i64)> = positions
            .iter()
            .filter_map(|&(split, offset)| {
                owned
                    .iter()
                    .find(|o| o.split == split)
                    .map(|o| (o.topic.clone(), o.partition, offset))
            })
            .collect();
        if !offsets.is_empty() {
            if let Err(e) = consumer.commit_offsets(&offsets, wait) {
                eprintln!("spate-kafka: committing offsets to the group: {e}");
            }
        }
    }

    fn read(&self, consumer: &mut dyn KafkaConsumer) -> Result<(), String> {
        let mut owned: Vec<Owned> = Vec::new();
        let mut dead_letters: Option<Box<dyn crate::client::KafkaProducer>> = None;
        let mut next_discovery = Instant::now();
        let mut first = true;
        let mut finished_sent = false;
        'reading: loop {
            if self.stop.load(Ordering::SeqCst) {
                break 'reading;
            }
            if Instant::now() >= next_discovery {
                let new = self.discover(consumer, &owned, first)?;
                first = false;
                if !new.is_empty() {
                    let assigned: Vec<(u32, i64)> = new.iter().map(|o| (o.split, o.next)).collect();
                    owned.extend(new);
                    let assignment: Vec<(String, i32, i64)> = owned
                        .iter()
                        .filter(|o| o.end.is_none_or(|e| o.next < e))
                        .map(|o| (o.topic.clone(), o.partition, o.next))
                        .collect();
                    consumer
                        .assign(&assignment)
                        .map_err(|e| format!("Kafka assign: {e}"))?;
                    if !self.send(Message::Assigned(assigned)) {
                        break 'reading;
                    }
                }
                next_discovery =
                    if self.config.discovery_interval_ms == 0 || self.config.stop.is_bounded() {
                        Instant::now() + Duration::from_secs(365 * 24 * 3600)
                    } else {
                        Instant::now() + Duration::from_millis(self.config.discovery_interval_ms)
                    };
            }
            self.commit_positions(consumer, &owned, false);
            if self.config.stop.is_bounded()
                && owned.iter().all(|o| o.end.is_some_and(|e| o.next >= e))
            {
                if !finished_sent {
                    finished_sent = true;
                    if !self.send(Message::Finished) {
                        break 'reading;
                    }
                }
                // Stay to serve offset commits until the subtask drops.
                std::thread::park_timeout(Duration::from_millis(50));
                continue;
            }
            let mut batch = Batch {
                records: Vec::new(),
                positions: Vec::new(),
            };
            let mut failure = None;
            // Rejected records' keys and values, for the dead-letter topic.
            let mut poison: Vec<crate::client::OutRecord> = Vec::new();
            consumer
                .poll(Duration::from_millis(100), 2048, &mut |r| {
                    if failure.is_some() {
                        return;
                    }
                    let Some(o) = owned
                        .iter_mut()
                        .find(|o| o.partition == r.partition && o.topic == r.topic)
                    else {
                        return;
                    };
                    if r.offset < o.next || o.end.is_some_and(|e| r.offset >= e) {
                        return; // before the position, or past a bounded end
                    }
                    o.next = r.offset + 1;
                    if let Some(from) = o.from_ms {
                        if r.timestamp_ms.is_some_and(|t| t < from) {
                            return; // before a timestamp start
                        }
                        o.from_ms = None;
                    }
                    match (self.deserialize)(r) {
                        Ok(v) => {
                            let time_ms = match &self.config.watermarks {
                                Some(PartitionWatermarks {
                                    event_time: Some(f),
                                    ..
                                }) => f(r),
                                _ => r.timestamp_ms,
                            };
                            batch.records.push(v);
                            batch
                                .positions
                                .push((o.split, r.offset, time_ms.unwrap_or(-1)));
                        }
                        Err(reason) => match &self.config.poison {
                            PoisonPolicy::Fail => {
                                failure = Some(format!(
                                    "Kafka record at topic {} partition {} offset {} cannot be \
                                     deserialized: {reason}",
                                    r.topic, r.partition, r.offset
                                ));
                            }
                            PoisonPolicy::Skip => {
                                self.config.skipped.fetch_add(1, Ordering::Relaxed);
                            }
                            PoisonPolicy::DeadLetter(_) => {
                                poison.push(crate::client::OutRecord {
                                    partition: None,
                                    key: r.key.map(<[u8]>::to_vec),
                                    payload: r.payload.map(<[u8]>::to_vec).unwrap_or_default(),
                                    timestamp_ms: None,
                                });
                            }
                        },
                    }
                })
                .map_err(|e| format!("Kafka poll: {e}"))?;
            if let Some(f) = failure {
                return Err(f);
            }
            if let PoisonPolicy::DeadLetter(topic) = &self.config.poison {
                if !poison.is_empty() {
                    if dead_letters.is_none() {
                        let mut factory =
                            crate::client::RdProducerFactory::new(self.config.properties.clone());
                        use crate::client::ProducerFactory;
                        dead_letters = Some(
                            factory
                                .producer(topic, None)
                                .map_err(|e| format!("Kafka dead-letter producer: {e}"))?,
                        );
                    }
                    let p = dead_letters.as_mut().expect("created above");
                    for record in &poison {
                        p.send(record)
                            .map_err(|e| format!("Kafka dead-letter topic {topic}: {e}"))?;
                    }
                    // Written before the positions past them can be
                    // checkpointed (they follow in the batch below).
                    p.flush()
                        .map_err(|e| format!("Kafka dead-letter topic {topic}: {e}"))?;
                    self.config
                        .skipped
                        .fetch_add(poison.len() as u64, Ordering::Relaxed);
                }
            }
            if !batch.records.is_empty() && !self.send(Message::Batch(batch)) {
                break 'reading;
            }
        }
        // The subtask is gone: the last completed checkpoint's positions
        // reach the group before the consumer closes.
        self.commit_positions(consumer, &owned, true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated cluster for the Kafka thread's logic: partitions of
    /// records, manual assignment, and a poll that fails when told to.
    struct SimConsumer {
        /// (topic, partition) → record values.
        logs: BTreeMap<(String, i32), Vec<Vec<u8>>>,
        assigned: Vec<(String, i32, i64)>,
        polls: usize,
        fail_at_poll: Option<usize>,
        rng: spate::internals::sim::SplitMix64,
    }

    impl KafkaConsumer for SimConsumer {
        fn partition_count(&mut self, topic: &str) -> Result<u32, ClientError> {
            Ok(self.logs.keys().filter(|(t, _)| t == topic).count() as u32)
        }
        fn resolve(
            &mut self,
            topic: &str,
            partition: i32,
            start: StartOffset,
        ) -> Result<i64, ClientError> {
            let len = self.logs[&(topic.to_string(), partition)].len() as i64;
            Ok(match start {
                StartOffset::Latest => len,
                _ => 0,
            })
        }
        fn assign(&mut self, partitions: &[(String, i32, i64)]) -> Result<(), ClientError> {
            self.assigned = partitions.to_vec();
            Ok(())
        }
        fn poll(
            &mut self,
            _timeout: Duration,
            max: usize,
            each: &mut dyn FnMut(&KafkaRecord<'_>),
        ) -> Result<usize, ClientError> {
            self.polls += 1;
            if self.fail_at_poll == Some(self.polls) {
                return Err(ClientError("simulated broker failure".into()));
            }
            let mut n = 0;
            // A random partition each time, a random number of records.
            if self.assigned.is_empty() {
                return Ok(0);
            }
            let i = self.rng.below(self.assigned.len() as u64) as usize;
            let take = 1 + self.rng.below(max.min(7) as u64) as usize;
            let (topic, partition, next) = self.assigned[i].clone();
            let log = &self.logs[&(topic.clone(), partition)];
            for offset in next..(next + take as i64).min(log.len() as i64) {
                each(&KafkaRecord {
                    topic: &topic,
                    partition,
                    offset,
                    timestamp_ms: Some(offset),
                    key: None,
                    payload: Some(&log[offset as usize]),
                });
                self.assigned[i].2 = offset + 1;
                n += 1;
            }
            Ok(n)
        }
        fn commit_offsets(&mut self, _: &[(String, i32, i64)], _: bool) -> Result<(), ClientError> {
            Ok(())
        }
    }

    fn reader(
        config: KafkaSourceConfig,
        owned: std::ops::Range<u32>,
        restored: Option<BTreeMap<u32, i64>>,
    ) -> (Reader<String>, Receiver<Message<String>>) {
        let (tx, rx) = sync_channel(1 << 16);
        let reader = Reader {
            config,
            deserialize: Arc::new(|r: &KafkaRecord<'_>| {
                let v = String::from_utf8_lossy(r.payload.unwrap_or_default()).into_owned();
                if v.starts_with("bad") {
                    Err("poison".to_string())
                } else {
                    Ok(v)
                }
            }),
            split_count: 16,
            owned,
            restored,
            tx,
            wake: Arc::new(|| {}),
            stop: Arc::new(AtomicBool::new(false)),
            commit_request: Arc::default(),
        };
        (reader, rx)
    }

    /// Seeded runs of the Kafka thread over random topics: every good
    /// record of the owned partitions from the start (or the restored
    /// offset) comes once, in offset order per partition; poison records
    /// are skipped and counted; a broker failure fails the source.
    #[test]
    fn the_kafka_thread_delivers_each_owned_record_once() {
        for seed in 0..100u64 {
            let mut rng = spate::internals::sim::SplitMix64::new(seed);
            let topics = ["a", "b"];
            let mut logs = BTreeMap::new();
            for t in topics {
                for p in 0..1 + rng.below(4) as i32 {
                    let log: Vec<Vec<u8>> = (0..rng.below(40))
                        .map(|i| {
                            if rng.below(10) == 0 {
                                format!("bad-{t}{p}-{i}").into_bytes()
                            } else {
                                format!("{t}{p}-{i}").into_bytes()
                            }
                        })
                        .collect();
                    logs.insert((t.to_string(), p), log);
                }
            }
            let mut config = KafkaSourceConfig::new(KafkaProperties::new("sim"), &topics, "g");
            config.stop = StopAt::Latest;
            config.poison = PoisonPolicy::Skip;
            let owned = if rng.below(2) == 0 { 0..16 } else { 0..8 };
            // Some partitions restored mid-way.
            let mut restored = BTreeMap::new();
            let stride = split_stride(16);
            let mut expected = Vec::new();
            let mut poison = 0;
            for ((t, p), log) in &logs {
                let ti = topics.iter().position(|x| x == t).unwrap() as u64;
                let split = ((*p as u64 * 2 + ti) * stride % 16) as u32;
                if !owned.contains(&split) {
                    continue;
                }
                let from = if rng.below(2) == 0 {
                    rng.below(log.len() as u64 + 1)
                } else {
                    0
                };
                if from > 0 {
                    restored.insert(split, from as i64);
                }
                for v in &log[from as usize..] {
                    if v.starts_with(b"bad") {
                        poison += 1;
                    } else {
                        expected.push(String::from_utf8(v.clone()).unwrap());
                    }
                }
            }
            let fail = rng.below(5) == 0;
            let consumer = SimConsumer {
                logs,
                assigned: Vec::new(),
                polls: 0,
                fail_at_poll: fail.then(|| 1 + rng.below(5) as usize),
                rng: spate::internals::sim::SplitMix64::new(seed ^ 0xabc),
            };
            let skipped = config.skipped.clone();
            let (reader, rx) = reader(config, owned, Some(restored));
            let stop = reader.stop.clone();
            let thread = std::thread::spawn(move || reader.run(Box::new(consumer)));
            let mut got = Vec::new();
            let mut failed = None;
            loop {
                match rx.recv().expect("the thread ends with Finished or Failed") {
                    Message::Assigned(_) => {}
                    Message::Batch(b) => got.extend(b.records),
                    Message::Finished => break,
                    Message::Failed(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            stop.store(true, Ordering::SeqCst);
            drop(rx);
            thread.join().unwrap();
            if let Some(e) = failed {
                assert!(
                    fail && e.contains("simulated broker failure"),
                    "seed {seed}: {e}"
                );
                continue;
            }
            // Per partition in offset order: compare sorted by (partition,
            // index) after checking each partition's order.
            let mut by_partition: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for v in &got {
                let (p, i) = v.split_once('-').unwrap();
                by_partition
                    .entry(p.to_string())
                    .or_default()
                    .push(i.parse().unwrap());
            }
            for (p, idx) in &by_partition {
                assert!(
                    idx.windows(2).all(|w| w[0] < w[1]),
                    "seed {seed}: {p} out of order"
                );
            }
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "seed {seed}");
            assert_eq!(
                skipped.load(Ordering::Relaxed),
                poison,
                "seed {seed}: skipped"
            );
        }
    }

    use super::split_stride;

    /// The spread is a bijection, and the first partitions of a topic fall
    /// evenly into the contiguous ranges of any parallelism.
    #[test]
    fn partitions_spread_over_the_owners() {
        for n in [1u32, 2, 7, 128, 1000, 1024] {
            let g = split_stride(n);
            let mut seen = vec![false; n as usize];
            for i in 0..u64::from(n) {
                let s = (i * g % u64::from(n)) as usize;
                assert!(!seen[s], "{n} splits: {s} twice");
                seen[s] = true;
            }
        }
        let n = 1024u64;
        let g = split_stride(1024);
        for parallelism in [2u64, 3, 4] {
            let partitions = parallelism * 2;
            let mut per_owner = vec![0; parallelism as usize];
            for i in 0..partitions {
                let split = i * g % n;
                // Contiguous ranges, as key groups are assigned.
                per_owner[(split * parallelism / n) as usize] += 1;
            }
            assert!(
                per_owner.iter().all(|&c| c >= 1),
                "{partitions} partitions on {parallelism} owners: {per_owner:?}"
            );
        }
    }
}
