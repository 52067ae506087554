//! The Kafka sink: at least once (flushed on every barrier) or exactly once
//! (a Kafka transaction per checkpoint, pre-committed on the barrier and
//! committed when the checkpoint completes).
//!
//! Each sink subtask has one Kafka thread of its own ([`Worker`]): the
//! reactor serialises records (the user's function), queues them with the
//! barrier's pre-commit and the completion's commit as commands, and never
//! calls librdkafka. The thread executes the commands in order and wakes
//! the subtask through its notifier when a pre-commit finished or queue
//! space freed. The queue is bounded: a full one blocks the sink, so the
//! subtask stops pulling its inputs (backpressure).
//!
//! Exactly once, per subtask `s`: transactional ids `<prefix>-<s>-<k>` for
//! slots `k = 0, 1, ...`. A slot's producer holds at most one transaction:
//! records go to the open one; the barrier of checkpoint `n` flushes it
//! (every record acknowledged), records its producer id and epoch as
//! pre-committed for `n` in the transaction log ([`crate::intent`]) and
//! only then acknowledges the barrier; the completion of `n` commits every
//! slot pre-committed up to `n` and marks it committed in the log. Records
//! after a barrier whose checkpoint has not completed yet go to the next
//! free slot (a new slot if none is free; a checkpoint that fails leaves
//! its slot pre-committed until a later completion commits it).
//!
//! Restore (the sink's `open`, before any producer of this run starts),
//! from checkpoint `r` (`None`: a fresh start): for every transaction in the
//! log that this subtask reconciles (those of old subtask `s`, and subtask 0
//! also those of old subtasks at or above the new parallelism):
//! pre-committed for `n <= r` is committed through the transaction protocol
//! with the recorded producer id and epoch; pre-committed for `n > r` is
//! aborted by fencing its id; committed for `n > r` cannot be rolled back
//! and fails the open ([`SinkError::CannotRollBack`]). The crash analysis is
//! in docs/checkpoints.md ("Kafka transactions").
//!
//! Owns: its Kafka threads, the transaction log directory. Must not touch:
//! other sinks' transactional ids (the prefix must be unique per job).

use crate::client::{
    ClientError, KafkaProducer, OutRecord, ProducerFactory, RdProducerFactory, TransactionControl,
};
use crate::config::KafkaProperties;
use crate::intent::{Intent, IntentLog, TxnState};
use spate::sink::{Sink, SinkContext};
use spate::Notifier;
use spate::Record;
use spate::SinkError;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The sink's delivery guarantee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Records are produced as they come; every barrier waits until all of
    /// them are acknowledged. A restart produces the replayed part again.
    AtLeastOnce,
    /// A transaction per checkpoint; consumers reading `read_committed` see
    /// each record once. `transaction_log` is a directory on storage that
    /// survives the process (next to the checkpoints), where the sink keeps
    /// its transactions' identities; `prefix` names the transactional ids
    /// and must be unique per job (the job's name). A job without
    /// checkpoints writes one transaction, committed at the end of input
    /// and recorded like a checkpoint's: starting such a job again on the
    /// same log is a fresh start over committed output, which the sink
    /// refuses (`SinkError::CannotRollBack`) unless the log is cleared.
    ExactlyOnce {
        /// The transactional id prefix.
        prefix: String,
        /// The transaction log directory.
        transaction_log: PathBuf,
    },
}

/// Fills the record to produce from a job record (key, value, optionally
/// partition and timestamp).
pub type Serializer<T> = Arc<dyn Fn(&Record<T>, &mut OutRecord) + Send + Sync>;

/// A hook called on the reactor with the checkpoint id when a checkpoint
/// completed, before its transactions are committed (the crash harness
/// kills the process there).
pub type CommitHook = Arc<dyn Fn(u64) + Send + Sync>;

/// The Kafka sink's settings.
#[derive(Clone)]
pub struct KafkaSinkConfig {
    /// Client properties (brokers, security).
    pub properties: KafkaProperties,
    /// The topic written.
    pub topic: String,
    /// The guarantee.
    pub delivery: Delivery,
    /// Commands queued to the Kafka thread before the sink blocks.
    pub queue_capacity: usize,
    /// Test hook: runs when a checkpoint completed, before its commit.
    pub before_commit: Option<CommitHook>,
    /// Told of the timestamps of records as they become visible (the
    /// benchmark's latency).
    pub on_visible: Option<crate::client::VisibilityObserver>,
}

impl std::fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSinkConfig")
            .field("properties", &self.properties)
            .field("topic", &self.topic)
            .field("delivery", &self.delivery)
            .field("queue_capacity", &self.queue_capacity)
            .finish_non_exhaustive()
    }
}

impl KafkaSinkConfig {
    /// Writes `topic` with `delivery`.
    pub fn new(properties: KafkaProperties, topic: impl Into<String>, delivery: Delivery) -> Self {
        Self {
            properties,
            topic: topic.into(),
            delivery,
            queue_capacity: 64,
            before_commit: None,
            on_visible: None,
        }
    }
}

/// A command to the sink's Kafka thread.
#[derive(Debug)]
pub(crate) enum Command {
    Send(Vec<OutRecord>),
    PreCommit(u64),
    Commit(u64),
    /// End of input without checkpoints: make everything visible.
    Finish,
    Shutdown,
}

/// What the reactor and the Kafka thread share.
struct Shared {
    queue: Mutex<VecDeque<Command>>,
    wake_thread: Condvar,
    /// Commands queued and not yet executed.
    queued: AtomicUsize,
    /// The newest checkpoint whose pre-commit finished.
    pre_committed: AtomicU64,
    error: Mutex<Option<String>>,
    failed: AtomicBool,
    notifier: Mutex<Option<Notifier>>,
}

impl Shared {
    fn push(&self, command: Command) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.queue.lock().expect("queue lock").push_back(command);
        self.wake_thread.notify_one();
    }

    fn notify(&self) {
        if let Some(n) = &*self.notifier.lock().expect("notifier lock") {
            n.notify();
        }
    }

    fn fail(&self, error: String) {
        let mut e = self.error.lock().expect("error lock");
        if e.is_none() {
            *e = Some(error);
        }
        self.failed.store(true, Ordering::SeqCst);
        drop(e);
        self.notify();
    }
}

/// A transaction slot of the exactly-once mode.
struct Slot {
    transactional_id: String,
    producer: Box<dyn KafkaProducer>,
    identity: crate::client::ProducerIdentity,
    /// `None`: idle; `Some(None)`: open; `Some(Some(n))`: pre-committed for `n`.
    transaction: Option<Option<u64>>,
    /// The open transaction's record timestamps (with an observer).
    stamps: Vec<i64>,
}

/// The step logic of a sink subtask's Kafka thread (no threads, no engine:
/// the tests drive it with a simulated client).
pub(crate) struct Worker {
    factory: Box<dyn ProducerFactory>,
    /// Told of committed records' timestamps (exactly once).
    on_visible: Option<crate::client::VisibilityObserver>,
    topic: String,
    subtask: usize,
    mode: WorkerMode,
}

enum WorkerMode {
    AtLeastOnce {
        producer: Option<Box<dyn KafkaProducer>>,
    },
    ExactlyOnce {
        prefix: String,
        log: IntentLog,
        slots: Vec<Slot>,
        /// The slot holding the open transaction.
        open: Option<usize>,
    },
}

impl Worker {
    pub(crate) fn new(
        factory: Box<dyn ProducerFactory>,
        topic: &str,
        subtask: usize,
        delivery: &Delivery,
    ) -> Result<Self, String> {
        let mode = match delivery {
            Delivery::AtLeastOnce => WorkerMode::AtLeastOnce { producer: None },
            Delivery::ExactlyOnce {
                prefix,
                transaction_log,
            } => WorkerMode::ExactlyOnce {
                prefix: prefix.clone(),
                log: IntentLog::open(transaction_log).map_err(|e| e.to_string())?,
                slots: Vec::new(),
                open: None,
            },
        };
        Ok(Self {
            factory,
            on_visible: None,
            topic: topic.to_string(),
            subtask,
            mode,
        })
    }

    /// Restore reconciliation (exactly once), then the first producer.
    pub(crate) fn start(
        &mut self,
        restored: Option<u64>,
        parallelism: usize,
    ) -> Result<(), SinkError> {
        let subtask = self.subtask;
        match &mut self.mode {
            WorkerMode::AtLeastOnce { producer } => {
                *producer = Some(
                    self.factory
                        .producer(&self.topic, None)
                        .map_err(|e| SinkError::Other(format!("Kafka producer: {e}")))?,
                );
                Ok(())
            }
            WorkerMode::ExactlyOnce { prefix, log, .. } => {
                let intents = log
                    .read_all()
                    .map_err(|e| SinkError::Other(e.to_string()))?;
                let mine: Vec<Intent> = intents
                    .into_iter()
                    .filter(|i| {
                        belongs(&i.transactional_id, prefix)
                            && (i.subtask == subtask || (subtask == 0 && i.subtask >= parallelism))
                    })
                    .collect();
                if mine.is_empty() {
                    return Ok(());
                }
                let mut control = self
                    .factory
                    .control()
                    .map_err(|e| SinkError::Other(e.to_string()))?;
                reconcile(&mut *control, log, &mine, restored)
            }
        }
    }

    /// Serves the producers' acknowledgements (delivery reports: failures,
    /// and at least once the visibility observer); returns whether records
    /// are still unacknowledged.
    pub(crate) fn serve(&mut self) -> bool {
        match &mut self.mode {
            WorkerMode::AtLeastOnce { producer } => producer.as_mut().is_some_and(|p| p.serve()),
            WorkerMode::ExactlyOnce { slots, .. } => {
                let mut pending = false;
                for s in slots.iter_mut() {
                    pending |= s.producer.serve();
                }
                pending
            }
        }
    }

    /// Executes one command.
    pub(crate) fn execute(&mut self, command: Command) -> Result<(), String> {
        match command {
            Command::Send(records) => self.send(&records),
            Command::PreCommit(n) => self.pre_commit(n),
            Command::Commit(n) => self.commit(n),
            Command::Finish => {
                self.pre_commit(u64::MAX - 1)?;
                self.commit(u64::MAX - 1)
            }
            Command::Shutdown => Ok(()),
        }
    }

    fn send(&mut self, records: &[OutRecord]) -> Result<(), String> {
        let topic = self.topic.clone();
        let subtask = self.subtask;
        let err = |what: &str, e: ClientError| {
            format!("Kafka sink (topic {topic}, subtask {subtask}): {what}: {e}")
        };
        match &mut self.mode {
            WorkerMode::AtLeastOnce { producer } => {
                let p = producer.as_mut().expect("started");
                for r in records {
                    p.send(r).map_err(|e| err("produce", e))?;
                }
                Ok(())
            }
            WorkerMode::ExactlyOnce {
                prefix,
                log,
                slots,
                open,
            } => {
                let slot = match *open {
                    Some(slot) => slot,
                    None => {
                        let slot = match slots.iter().position(|s| s.transaction.is_none()) {
                            Some(free) => free,
                            None => {
                                let id = format!("{prefix}-{subtask}-{}", slots.len());
                                let mut producer = self
                                    .factory
                                    .producer(&topic, Some(&id))
                                    .map_err(|e| err("creating the producer", e))?;
                                let identity = producer
                                    .init_transactions()
                                    .map_err(|e| err("init_transactions", e))?;
                                // Registered before its first transaction, so
                                // that a restore finds the id and fences
                                // what it may have left open (an id with a
                                // record of an earlier run keeps it).
                                if !log.contains(&id) {
                                    log.write(&Intent {
                                        transactional_id: id.clone(),
                                        subtask,
                                        checkpoint: 0,
                                        identity,
                                        state: TxnState::Aborted,
                                    })
                                    .map_err(|e| e.to_string())?;
                                }
                                slots.push(Slot {
                                    transactional_id: id,
                                    producer,
                                    identity,
                                    transaction: None,
                                    stamps: Vec::new(),
                                });
                                slots.len() - 1
                            }
                        };
                        slots[slot]
                            .producer
                            .begin()
                            .map_err(|e| err("begin_transaction", e))?;
                        slots[slot].transaction = Some(None);
                        *open = Some(slot);
                        slot
                    }
                };
                let s = &mut slots[slot];
                for r in records {
                    s.producer.send(r).map_err(|e| err("produce", e))?;
                }
                if self.on_visible.is_some() {
                    s.stamps
                        .extend(records.iter().filter_map(|r| r.timestamp_ms));
                }
                Ok(())
            }
        }
    }

    fn pre_commit(&mut self, checkpoint: u64) -> Result<(), String> {
        let subtask = self.subtask;
        match &mut self.mode {
            WorkerMode::AtLeastOnce { producer } => {
                let p = producer.as_mut().expect("started");
                p.flush()
                    .map_err(|e| format!("Kafka sink subtask {subtask}: flush: {e}"))
            }
            WorkerMode::ExactlyOnce {
                log, slots, open, ..
            } => {
                let Some(slot) = open.take() else {
                    return Ok(()); // nothing written since the last barrier
                };
                let s = &mut slots[slot];
                s.producer.flush().map_err(|e| {
                    format!(
                        "Kafka sink subtask {subtask}: flushing transaction {}: {e}",
                        s.transactional_id
                    )
                })?;
                log.write(&Intent {
                    transactional_id: s.transactional_id.clone(),
                    subtask,
                    checkpoint,
                    identity: s.identity,
                    state: TxnState::PreCommitted,
                })
                .map_err(|e| e.to_string())?;
                s.transaction = Some(Some(checkpoint));
                Ok(())
            }
        }
    }

    fn commit(&mut self, checkpoint: u64) -> Result<(), String> {
        let subtask = self.subtask;
        if let WorkerMode::ExactlyOnce { log, slots, .. } = &mut self.mode {
            // Oldest first: the transactions of earlier checkpoints.
            let mut due: Vec<usize> = (0..slots.len())
                .filter(|&i| matches!(slots[i].transaction, Some(Some(n)) if n <= checkpoint))
                .collect();
            due.sort_by_key(|&i| slots[i].transaction);
            for i in due {
                let s = &mut slots[i];
                let n = s.transaction.flatten().expect("pre-committed");
                s.producer.commit().map_err(|e| {
                    format!(
                        "Kafka sink subtask {subtask}: committing transaction {} of checkpoint {n}: {e}",
                        s.transactional_id
                    )
                })?;
                s.transaction = None;
                if let Some(observe) = &self.on_visible {
                    observe(&s.stamps);
                }
                s.stamps.clear();
                log.write(&Intent {
                    transactional_id: s.transactional_id.clone(),
                    subtask,
                    checkpoint: n,
                    identity: s.identity,
                    state: TxnState::Committed,
                })
                .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Whether `id` is one of this sink's transactional ids (`<prefix>-<s>-<k>`).
fn belongs(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| {
            let mut parts = r.split('-');
            let ok = |p: Option<&str>| {
                p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            };
            ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
        })
}

/// The restore rule for the transactions of earlier runs.
fn reconcile(
    control: &mut dyn TransactionControl,
    log: &IntentLog,
    intents: &[Intent],
    restored: Option<u64>,
) -> Result<(), SinkError> {
    let covered = |n: u64| restored.is_some_and(|r| n <= r);
    let uncovered: Vec<&Intent> = intents
        .iter()
        .filter(|i| i.state == TxnState::Committed && !covered(i.checkpoint))
        .collect();
    if !uncovered.is_empty() {
        let list: Vec<String> = uncovered
            .iter()
            .map(|i| format!("{} (checkpoint {})", i.transactional_id, i.checkpoint))
            .collect();
        return Err(SinkError::CannotRollBack(format!(
            "Kafka transactions {} were committed for checkpoints {} does not include; \
             Kafka cannot take them back. To accept that their records appear twice, \
             remove their files from the transaction log and start again",
            list.join(", "),
            match restored {
                Some(r) => format!("the restored checkpoint {r}"),
                None => "a fresh start".to_string(),
            }
        )));
    }
    for intent in intents {
        let id = &intent.transactional_id;
        match intent.state {
            TxnState::Committed => {}
            TxnState::PreCommitted if covered(intent.checkpoint) => {
                control
                    .commit_left_open(id, intent.identity)
                    .map_err(|e| SinkError::Other(e.to_string()))?;
                log.write(&Intent {
                    state: TxnState::Committed,
                    ..intent.clone()
                })
                .map_err(|e| SinkError::Other(e.to_string()))?;
                eprintln!(
                    "spate-kafka: committed transaction {id} of checkpoint {} left open by an earlier run",
                    intent.checkpoint
                );
            }
            TxnState::PreCommitted | TxnState::Aborted => {
                // Recorded as aborted first: a later restore must never try
                // to commit it (its epoch is fenced below).
                if intent.state == TxnState::PreCommitted {
                    log.write(&Intent {
                        state: TxnState::Aborted,
                        ..intent.clone()
                    })
                    .map_err(|e| SinkError::Other(e.to_string()))?;
                }
            }
        }
    }
    // Every id in the log is fenced: this aborts what an id holds open
    // beyond its record (a transaction begun after its last pre-commit, or
    // before its first), and fences zombies of older runs, also on ids the
    // new run does not use (a rescale down).
    for intent in intents {
        control
            .fence(&intent.transactional_id)
            .map_err(|e| SinkError::Other(e.to_string()))?;
    }
    Ok(())
}

/// The Kafka sink subtask.
pub struct KafkaSink<T> {
    config: KafkaSinkConfig,
    serialize: Serializer<T>,
    factory: Option<Box<dyn ProducerFactory>>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Serialised records not yet queued (the queue was full).
    held: Vec<OutRecord>,
    checkpointing: bool,
}

impl<T: 'static> KafkaSink<T> {
    /// A sink subtask; `serialize` fills the record to produce (key,
    /// value, optionally partition and timestamp) from each record.
    pub fn new(config: KafkaSinkConfig, serialize: Serializer<T>) -> Self {
        let factory = Box::new(RdProducerFactory {
            properties: config.properties.clone(),
            on_delivered: config.on_visible.clone(),
        });
        Self::with_factory(config, serialize, factory)
    }

    /// A sink over another client.
    pub fn with_factory(
        config: KafkaSinkConfig,
        serialize: Serializer<T>,
        factory: Box<dyn ProducerFactory>,
    ) -> Self {
        Self {
            config,
            serialize,
            factory: Some(factory),
            shared: Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                wake_thread: Condvar::new(),
                queued: AtomicUsize::new(0),
                pre_committed: AtomicU64::new(0),
                error: Mutex::new(None),
                failed: AtomicBool::new(false),
                notifier: Mutex::new(None),
            }),
            thread: None,
            held: Vec::new(),
            checkpointing: false,
        }
    }

    fn check(&self) -> Result<(), SinkError> {
        if self.shared.failed.load(Ordering::SeqCst) {
            let e = self.shared.error.lock().expect("error lock").clone();
            return Err(SinkError::Other(e.unwrap_or_default()));
        }
        Ok(())
    }

    fn has_room(&self) -> bool {
        self.shared.queued.load(Ordering::SeqCst) < self.config.queue_capacity
    }
}

/// How often the sink's Kafka thread serves acknowledgements while records
/// are in flight and no command comes.
const ACK_SERVICE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

fn run_thread(shared: Arc<Shared>, mut worker: Worker, restored: Option<u64>, parallelism: usize) {
    if let Err(e) = worker.start(restored, parallelism) {
        shared.fail(e.to_string());
    }
    let mut unacknowledged = false;
    loop {
        let command = {
            let mut q = shared.queue.lock().expect("queue lock");
            loop {
                if let Some(c) = q.pop_front() {
                    break c;
                }
                if unacknowledged {
                    // Records in flight: wake to serve their acknowledgements
                    // (this is the sink's own Kafka thread, not a reactor).
                    q = shared
                        .wake_thread
                        .wait_timeout(q, ACK_SERVICE_INTERVAL)
                        .expect("queue lock")
                        .0;
                    drop(q);
                    unacknowledged = worker.serve();
                    q = shared.queue.lock().expect("queue lock");
                } else {
                    q = shared.wake_thread.wait(q).expect("queue lock");
                }
            }
        };
        let shutdown = matches!(command, Command::Shutdown);
        let pre_commit = match command {
            Command::PreCommit(n) => Some(n),
            _ => None,
        };
        if !shared.failed.load(Ordering::SeqCst) {
            match worker.execute(command) {
                Ok(()) => {
                    if let Some(n) = pre_commit {
                        shared.pre_committed.fetch_max(n, Ordering::SeqCst);
                    }
                }
                Err(e) => shared.fail(e),
            }
        }
        unacknowledged = worker.serve();
        shared.queued.fetch_sub(1, Ordering::SeqCst);
        shared.notify();
        if shutdown {
            return;
        }
    }
}

impl<T: 'static> Sink<T> for KafkaSink<T> {
    fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        self.checkpointing = context.checkpointing;
        *self.shared.notifier.lock().expect("notifier lock") = Some(context.notifier.clone());
        let factory = self.factory.take().expect("opened once");
        let mut worker = Worker::new(
            factory,
            &self.config.topic,
            context.subtask,
            &self.config.delivery,
        )
        .map_err(SinkError::Other)?;
        worker.on_visible = self.config.on_visible.clone();
        let shared = self.shared.clone();
        let restored = context.restored_checkpoint;
        let parallelism = context.parallelism;
        // The Kafka thread: restore reconciliation and every librdkafka call.
        let thread = std::thread::Builder::new()
            .name(format!("kafka-sink-{}", context.subtask))
            .spawn(move || run_thread(shared, worker, restored, parallelism))
            .map_err(SinkError::Io)?;
        self.thread = Some(thread);
        Ok(())
    }

    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        self.check()?;
        for record in batch.drain(..) {
            let mut out = OutRecord::default();
            (self.serialize)(&record, &mut out);
            self.held.push(out);
        }
        self.drain().map(|_| ())
    }

    fn is_blocked(&self) -> bool {
        !self.held.is_empty()
    }

    fn can_drain(&mut self) -> bool {
        (!self.held.is_empty() && self.has_room()) || self.shared.failed.load(Ordering::SeqCst)
    }

    fn drain(&mut self) -> Result<bool, SinkError> {
        self.check()?;
        if self.held.is_empty() || !self.has_room() {
            return Ok(false);
        }
        self.shared
            .push(Command::Send(std::mem::take(&mut self.held)));
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.check()?;
        if !self.held.is_empty() {
            self.shared
                .push(Command::Send(std::mem::take(&mut self.held)));
        }
        // At least once: everything acknowledged before the job ends.
        // Exactly once: without checkpoints the one transaction commits
        // now; with them, the final checkpoint commits it.
        if !self.is_transactional() {
            self.shared.push(Command::Finish);
        }
        Ok(())
    }

    fn is_transactional(&self) -> bool {
        matches!(self.config.delivery, Delivery::ExactlyOnce { .. }) && self.checkpointing
    }

    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        self.check()?;
        // Records held back belong before this barrier.
        if !self.held.is_empty() {
            self.shared
                .push(Command::Send(std::mem::take(&mut self.held)));
        }
        self.shared.push(Command::PreCommit(checkpoint_id));
        Ok(())
    }

    fn is_pre_committed(&mut self, checkpoint_id: u64) -> bool {
        // A failure finishes nothing: the next write or drain reports it.
        self.shared.pre_committed.load(Ordering::SeqCst) >= checkpoint_id
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        self.check()?;
        if let Some(hook) = &self.config.before_commit {
            hook(checkpoint_id);
        }
        self.shared.push(Command::Commit(checkpoint_id));
        Ok(())
    }
}

impl<T> Drop for KafkaSink<T> {
    /// Waits for the Kafka thread to carry out what it was given (the final
    /// checkpoint's commit), then ends it.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.push(Command::Shutdown);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ProducerIdentity;
    use std::collections::BTreeMap;

    /// A simulated cluster: transactions per transactional id, records
    /// visible once committed.
    #[derive(Default)]
    struct Cluster {
        /// Per id: (producer id, epoch, open transaction's records).
        ids: BTreeMap<String, SimId>,
        committed: Vec<Vec<u8>>,
        next_pid: i64,
    }

    type Sim = Arc<Mutex<Cluster>>;

    /// Per transactional id: producer id, epoch, open transaction's records.
    type SimId = (i64, i16, Option<Vec<Vec<u8>>>);

    struct SimProducer {
        cluster: Sim,
        id: String,
        epoch: i16,
        buffered: Vec<Vec<u8>>,
    }

    impl KafkaProducer for SimProducer {
        fn init_transactions(&mut self) -> Result<ProducerIdentity, ClientError> {
            let mut c = self.cluster.lock().unwrap();
            c.next_pid += 1;
            let pid = c.next_pid;
            let e = c.ids.entry(self.id.clone()).or_insert((pid, -1, None));
            e.1 += 1;
            e.2 = None; // fencing aborts what was open
            self.epoch = e.1;
            Ok(ProducerIdentity {
                producer_id: e.0,
                epoch: e.1,
            })
        }
        fn begin(&mut self) -> Result<(), ClientError> {
            let mut c = self.cluster.lock().unwrap();
            c.ids.get_mut(&self.id).unwrap().2 = Some(Vec::new());
            Ok(())
        }
        fn send(&mut self, r: &OutRecord) -> Result<(), ClientError> {
            self.buffered.push(r.payload.clone());
            Ok(())
        }
        fn flush(&mut self) -> Result<(), ClientError> {
            let mut c = self.cluster.lock().unwrap();
            let e = c.ids.get_mut(&self.id).unwrap();
            if e.1 != self.epoch {
                return Err(ClientError("fenced".into()));
            }
            e.2.as_mut().unwrap().append(&mut self.buffered);
            Ok(())
        }
        fn commit(&mut self) -> Result<(), ClientError> {
            self.flush()?;
            let mut c = self.cluster.lock().unwrap();
            let records = c.ids.get_mut(&self.id).unwrap().2.take().unwrap();
            c.committed.extend(records);
            Ok(())
        }
        fn abort(&mut self) -> Result<(), ClientError> {
            Ok(())
        }
    }

    struct SimControl(Sim);
    impl TransactionControl for SimControl {
        fn commit_left_open(
            &mut self,
            id: &str,
            identity: ProducerIdentity,
        ) -> Result<(), ClientError> {
            let mut c = self.0.lock().unwrap();
            let e = c
                .ids
                .get_mut(id)
                .ok_or_else(|| ClientError("unknown id".into()))?;
            if (e.0, e.1) != (identity.producer_id, identity.epoch) {
                return Err(ClientError("fenced".into()));
            }
            if let Some(records) = e.2.take() {
                c.committed.extend(records);
            }
            Ok(())
        }
        fn fence(&mut self, id: &str) -> Result<(), ClientError> {
            let mut c = self.0.lock().unwrap();
            if let Some(e) = c.ids.get_mut(id) {
                e.1 += 1;
                e.2 = None;
            }
            Ok(())
        }
    }

    struct SimFactory(Sim);
    impl ProducerFactory for SimFactory {
        fn producer(
            &mut self,
            _topic: &str,
            id: Option<&str>,
        ) -> Result<Box<dyn KafkaProducer>, ClientError> {
            Ok(Box::new(SimProducer {
                cluster: self.0.clone(),
                id: id.unwrap_or("idempotent").to_string(),
                epoch: 0,
                buffered: Vec::new(),
            }))
        }
        fn control(&mut self) -> Result<Box<dyn TransactionControl>, ClientError> {
            Ok(Box::new(SimControl(self.0.clone())))
        }
    }

    fn record(i: u64) -> OutRecord {
        OutRecord {
            payload: i.to_le_bytes().to_vec(),
            ..OutRecord::default()
        }
    }

    /// Seeded runs of one subtask's sink logic with crashes at random
    /// steps, including after a checkpoint completed and before its commit:
    /// the committed records are exactly those of the restored checkpoint's
    /// epochs plus the replay, each once.
    #[test]
    fn crashes_anywhere_commit_each_record_once() {
        for seed in 0..200u64 {
            let mut rng = spate::internals::sim::SplitMix64::new(seed);
            let dir =
                std::env::temp_dir().join(format!("spate-kafka-sim-{}-{seed}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let delivery = Delivery::ExactlyOnce {
                prefix: "job".into(),
                transaction_log: dir.clone(),
            };
            let cluster: Sim = Arc::default();
            const TOTAL: u64 = 60;
            // The "checkpoint store": the newest completed checkpoint and
            // the input position it recorded.
            let mut completed: Option<(u64, u64)> = None;
            let mut next_checkpoint = 1u64;
            let mut done = false;
            let mut runs = 0;
            while !done {
                runs += 1;
                assert!(runs < 100, "seed {seed}: no progress");
                let mut w = Worker::new(Box::new(SimFactory(cluster.clone())), "out", 0, &delivery)
                    .unwrap();
                w.start(completed.map(|c| c.0), 1).unwrap();
                let mut position = completed.map_or(0, |c| c.1);
                let crash_at = 1 + rng.below(40);
                let mut step = 0;
                // A checkpoint pre-committed, not yet completed.
                let mut in_flight: Option<(u64, u64)> = None;
                loop {
                    step += 1;
                    if step == crash_at {
                        break; // crash: the worker is dropped mid-way
                    }
                    match rng.below(4) {
                        0 | 1 if position < TOTAL => {
                            let n = 1 + rng.below(5).min(TOTAL - position - 1);
                            let recs: Vec<_> = (position..position + n).map(record).collect();
                            w.execute(Command::Send(recs)).unwrap();
                            position += n;
                        }
                        2 if in_flight.is_none() => {
                            let id = next_checkpoint;
                            next_checkpoint += 1;
                            w.execute(Command::PreCommit(id)).unwrap();
                            in_flight = Some((id, position));
                        }
                        _ => {
                            if let Some((id, pos)) = in_flight.take() {
                                completed = Some((id, pos)); // durable now
                                if rng.below(3) == 0 {
                                    break; // crash between completion and commit
                                }
                                w.execute(Command::Commit(id)).unwrap();
                                if pos == TOTAL {
                                    done = true;
                                    break;
                                }
                            }
                        }
                    }
                }
                // Checkpoint ids keep rising across runs, as the engine's do.
            }
            let mut got: Vec<u64> = cluster
                .lock()
                .unwrap()
                .committed
                .iter()
                .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap()))
                .collect();
            got.sort_unstable();
            let expected: Vec<u64> = (0..TOTAL).collect();
            assert_eq!(got, expected, "seed {seed}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn ids_are_recognised() {
        assert!(belongs("job-0-1", "job"));
        assert!(belongs("my-job-12-0", "my-job"));
        assert!(!belongs("job-x-1", "job"));
        assert!(!belongs("jobs-0-1", "job"));
        assert!(!belongs("job-0-1-2", "job"));
    }
}
