//! The sending side of an exchange: routes each record by key group into a
//! batch per destination, moves full batches into the rings (holding them
//! back when a ring is full), and sends barriers in-band and out-of-band.

use super::*;

/// Takes a partly filled batch to send it, leaving an empty one with the
/// capacity this one needed (rounded up to a power of two, at most a full
/// batch): a subtask that flushes a few records per step (a source paced to
/// the microsecond) allocates room for a few, not for a full batch.
fn take_partial<T>(batch: &mut Vec<T>, batch_size: usize) -> Vec<T> {
    let capacity = batch.len().next_power_of_two().min(batch_size);
    std::mem::replace(batch, Vec::with_capacity(capacity))
}

pub(super) struct Target<T> {
    pub(super) channel: ChannelSender<Message<T>>,
    pub(super) batch: Vec<Record<T>>,
    pub(super) pending: VecDeque<Message<T>>,
    pub(super) notices: VecDeque<Notice>,
    pub(super) notifier: Notifier,
}

impl<T: Send> Target<T> {
    fn send(&mut self, message: Message<T>) {
        if !self.pending.is_empty() {
            self.pending.push_back(message);
        } else if let Err(message) = self.channel.data.try_push(message) {
            self.pending.push_back(message);
        } else {
            self.notifier.notify();
        }
    }

    /// Sends `message` ahead of everything pending; returns its position.
    fn send_first(&mut self, message: Message<T>) -> u64 {
        let position = self.channel.data.position();
        if self.pending.is_empty() {
            if let Err(message) = self.channel.data.try_push(message) {
                self.pending.push_back(message);
            }
        } else {
            self.pending.push_front(message);
        }
        self.notifier.notify();
        position
    }

    fn notice(&mut self, notice: Notice) {
        if self.notices.is_empty() && self.channel.notices.try_push(notice).is_ok() {
            self.notifier.notify();
        } else {
            self.notices.push_back(notice);
        }
    }

    fn drain(&mut self) -> bool {
        let mut moved = false;
        while let Some(message) = self.pending.pop_front() {
            if let Err(message) = self.channel.data.try_push(message) {
                self.pending.push_front(message);
                break;
            }
            moved = true;
        }
        while let Some(notice) = self.notices.pop_front() {
            if self.channel.notices.try_push(notice).is_err() {
                self.notices.push_front(notice);
                break;
            }
            moved = true;
        }
        if moved {
            self.notifier.notify();
        }
        moved
    }
}

pub(super) struct SenderState<K, T> {
    pub(super) key: Rc<dyn Fn(&T) -> K>,
    /// Owner subtask of every key group.
    pub(super) owner: Vec<u32>,
    pub(super) max_parallelism: u32,
    pub(super) targets: Vec<Target<T>>,
    pub(super) batch_size: usize,
    pub(super) watermark: Timestamp,
    pub(super) sent_watermark: Timestamp,
    pub(super) ended: bool,
    pub(super) subtask: usize,
    /// The keyed operator and input the exchange feeds.
    pub(super) operator: (String, u32),
    pub(super) checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    /// What this exchange's in-flight blocks archive.
    pub(super) schema: Arc<BlockSchema>,
    /// The last barrier sent.
    pub(super) last_barrier: u64,
    /// Live figures for the monitor: records sent, time held back.
    pub(super) metrics: Arc<ExchangeMetrics>,
}

impl<K, T> SenderState<K, T> {
    /// Publishes whether a full ring holds the chain back (after every
    /// batch, flush, drain and barrier; a clock read only on a change).
    fn publish_blocked(&self) {
        let blocked = self.targets.iter().any(|t| !t.pending.is_empty());
        self.metrics.blocked(blocked);
    }
}

/// The sending half of an exchange on one subtask.
pub(crate) struct ExchangeSender<K, T>(pub(super) RefCell<SenderState<K, T>>);

impl<K: Key, T: ExchangeData> ExchangeSender<K, T> {
    fn flush_batches(state: &mut SenderState<K, T>) {
        for target in &mut state.targets {
            if !target.batch.is_empty() {
                let batch = take_partial(&mut target.batch, state.batch_size);
                target.send(Message::Records(batch));
            }
        }
    }
}

pub(crate) struct SenderPush<K, T>(pub(super) Rc<ExchangeSender<K, T>>);

impl<K: Key, T: ExchangeData> Push<T> for SenderPush<K, T> {
    fn push(&mut self, batch: &mut Vec<Record<T>>, _cx: &mut Cx) -> Result<(), JobError> {
        let mut guard = self.0 .0.borrow_mut();
        let state = &mut *guard;
        let batch_size = state.batch_size;
        state.metrics.records_sent.add(batch.len() as u64);
        for record in batch.drain(..) {
            let key = (state.key)(&record.value);
            let group = key_group_for(&key, state.max_parallelism);
            let target = &mut state.targets[state.owner[group as usize] as usize];
            target.batch.push(record);
            if target.batch.len() >= batch_size {
                let full = std::mem::replace(&mut target.batch, Vec::with_capacity(batch_size));
                target.send(Message::Records(full));
            }
        }
        state.publish_blocked();
        Ok(())
    }

    fn watermark(&mut self, watermark: Timestamp, _cx: &mut Cx) -> Result<(), JobError> {
        // Sent with the next flush: records that follow the watermark in this
        // step may overtake it, which only delays it (they are later anyway).
        let mut state = self.0 .0.borrow_mut();
        state.watermark = state.watermark.max(watermark);
        Ok(())
    }

    fn end(&mut self, _cx: &mut Cx) -> Result<(), JobError> {
        let mut state = self.0 .0.borrow_mut();
        ExchangeSender::flush_batches(&mut state);
        state.sent_watermark = MAX_WATERMARK;
        for target in &mut state.targets {
            target.send(Message::Watermark(MAX_WATERMARK));
            target.send(Message::End);
        }
        state.ended = true;
        state.publish_blocked();
        Ok(())
    }

    fn barrier(&mut self, barrier: Barrier, _cx: &mut Cx) -> Result<(), JobError> {
        let mut guard = self.0 .0.borrow_mut();
        let state = &mut *guard;
        assert!(
            barrier.id > state.last_barrier && !state.ended,
            "exchange to `{}`: barrier {} after barrier {} (input ended: {})",
            state.operator.0,
            barrier.id,
            state.last_barrier,
            state.ended
        );
        state.last_barrier = barrier.id;
        let unaligned = state.checkpoints.borrow().is_unaligned(barrier.id);
        let batch_size = state.batch_size;
        for (to, target) in state.targets.iter_mut().enumerate() {
            let position = if unaligned {
                // Overtake: what is not in the ring yet is persisted here as
                // in-flight output and still sent, after the marker.
                let mut records: InFlightRecords<T> = Vec::new();
                for message in &target.pending {
                    if let Message::Records(batch) = message {
                        records.extend(batch.iter().map(|r| (r.ts, r.value.clone())));
                    }
                }
                records.extend(target.batch.iter().map(|r| (r.ts, r.value.clone())));
                if !records.is_empty() {
                    let bytes = archive(&records)?;
                    state.checkpoints.borrow_mut().add_block(
                        barrier.id,
                        SnapshotBlock {
                            kind: spate_storage::BlockKind::IN_FLIGHT,
                            desc: BlockDesc::InFlight {
                                block: InFlightBlock {
                                    operator: state.operator.0.clone(),
                                    input: state.operator.1,
                                    from: state.subtask as u32,
                                    to: to as u32,
                                    handle: 0,
                                    records: records.len() as u64,
                                    bytes: bytes.len() as u64,
                                    schema: 0,
                                },
                                schema: state.schema.clone(),
                            },
                            bytes,
                        },
                    );
                }
                let position = target.send_first(Message::Barrier(barrier));
                debug_assert!(
                    target
                        .pending
                        .front()
                        .is_none_or(|m| matches!(m, Message::Barrier(_))),
                    "an unaligned marker goes before what waits"
                );
                if !target.batch.is_empty() {
                    let batch = take_partial(&mut target.batch, batch_size);
                    target.send(Message::Records(batch));
                }
                position
            } else {
                if !target.batch.is_empty() {
                    let batch = take_partial(&mut target.batch, batch_size);
                    target.send(Message::Records(batch));
                }
                let position = target.channel.data.position() + target.pending.len() as u64;
                target.send(Message::Barrier(barrier));
                debug_assert_eq!(
                    target.channel.data.position() + target.pending.len() as u64,
                    position + 1,
                    "an aligned marker goes after everything sent"
                );
                position
            };
            target.notice(Notice {
                checkpoint_id: barrier.id,
                position,
            });
        }
        state.publish_blocked();
        Ok(())
    }
}

impl<K: Key, T: ExchangeData> OutputBuffer for ExchangeSender<K, T> {
    fn is_blocked(&self) -> bool {
        self.0
            .borrow()
            .targets
            .iter()
            .any(|t| !t.pending.is_empty())
    }

    fn drain(&self, _cx: &mut Cx) -> Result<bool, JobError> {
        let mut state = self.0.borrow_mut();
        let mut moved = false;
        for target in &mut state.targets {
            moved |= target.drain();
        }
        if moved {
            state.publish_blocked();
        }
        Ok(moved)
    }

    fn flush(&self, _cx: &mut Cx) -> Result<(), JobError> {
        let mut state = self.0.borrow_mut();
        if state.ended {
            return Ok(());
        }
        Self::flush_batches(&mut state);
        if state.watermark > state.sent_watermark {
            let watermark = state.watermark;
            state.sent_watermark = watermark;
            for target in &mut state.targets {
                target.send(Message::Watermark(watermark));
            }
        }
        state.publish_blocked();
        Ok(())
    }

    fn can_drain(&self) -> bool {
        let mut state = self.0.borrow_mut();
        state.targets.iter_mut().any(|t| {
            (!t.pending.is_empty() && t.channel.data.free_slots() > 0)
                || (!t.notices.is_empty() && t.channel.notices.free_slots() > 0)
        })
    }

    fn has_pending(&self) -> bool {
        self.0
            .borrow()
            .targets
            .iter()
            .any(|t| !t.pending.is_empty() || !t.notices.is_empty())
    }

    fn describe(&self) -> String {
        let mut state = self.0.borrow_mut();
        let op = state.operator.clone();
        let ended = state.ended;
        let t: Vec<String> = state
            .targets
            .iter_mut()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "to{i}: pending={} notices={} batch={} free={} nfree={} pos={}",
                    t.pending.len(),
                    t.notices.len(),
                    t.batch.len(),
                    t.channel.data.free_slots(),
                    t.channel.notices.free_slots(),
                    t.channel.data.position()
                )
            })
            .collect();
        format!("sender->{op:?} ended={ended} [{}]", t.join("; "))
    }
}
