//! `key_by` exchanges: the only place records cross cores, and where
//! checkpoint barriers are aligned or overtake.
//!
//! Every exchange has one channel ([`crate::ring::channel`]) per (sender
//! subtask, receiver subtask) pair. The sender routes each record by its key
//! group to the owning subtask, fills one batch per destination and moves full
//! batches into the ring; at the end of every step it also sends partly filled
//! batches and the latest watermark, so latency stays low when traffic is
//! light. When a ring is full the batch waits in the sender's pending queue
//! and the sender reports itself blocked: the subtask stops pulling the inputs
//! of that chain until the receiver catches up (backpressure; nothing is
//! dropped, memory is bounded by ring capacity plus one step's output).
//!
//! Barriers. The sender puts a barrier in-band (a [`Message::Barrier`] at ring
//! position `P`) and announces it out-of-band (a [`Notice`] carrying `P`).
//! Aligned: the marker follows everything sent before it; the receiver stops
//! reading a channel once its marker arrived and delivers the barrier when
//! every channel has. Unaligned: the marker goes in front of the sender's
//! pending batches, which the sender persists as in-flight output; the
//! receiver delivers the barrier on the first notice or marker and persists,
//! per channel, the records at positions from its read position to `P`
//! (peeked in the ring without consuming, or logged as consumed until `P` is
//! known). Aligned with timeout switches from the first to the second.
//! At-least-once: counted like aligned, never blocking.

use super::{
    Cx, Dataflow, ExchangeData, Input, InputState, Message, Output, OutputBuffer, Push, Record,
};
use crate::checkpoint::metadata::InFlightBlock;
use crate::checkpoint::subtask::{BlockDesc, SnapshotBlock, SubtaskCheckpoints};
use crate::checkpoint::{Barrier, CheckpointMode};
use crate::keygroup::{key_group_for, subtask_for_key_group, Key, KeyGroupRange};
use crate::park::Notifier;
use crate::ring::{ChannelReceiver, ChannelSender, Notice};
use crate::time::{Timestamp, MAX_WATERMARK};
use crate::JobError;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

/// Messages a receiver takes from one channel in one step before moving on to
/// the next channel (fairness between senders).
const MESSAGES_PER_CHANNEL_STEP: usize = 8;

/// Records as persisted in flight: (timestamp, value).
type InFlightRecords<T> = Vec<(Timestamp, T)>;

fn archive<T: ExchangeData>(
    records: &InFlightRecords<T>,
) -> Result<rkyv::util::AlignedVec<16>, JobError> {
    rkyv::to_bytes::<rkyv::rancor::Error>(records)
        .map_err(|e| JobError::Checkpoint(format!("in-flight records do not archive: {e}")))
}

struct Target<T> {
    channel: ChannelSender<Message<T>>,
    batch: Vec<Record<T>>,
    pending: VecDeque<Message<T>>,
    notices: VecDeque<Notice>,
    notifier: Notifier,
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

struct SenderState<K, T> {
    key: Rc<dyn Fn(&T) -> K>,
    /// Owner subtask of every key group.
    owner: Vec<u32>,
    max_parallelism: u32,
    targets: Vec<Target<T>>,
    batch_size: usize,
    watermark: Timestamp,
    sent_watermark: Timestamp,
    ended: bool,
    subtask: usize,
    /// The keyed operator and input the exchange feeds.
    operator: (String, u32),
    checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
}

/// The sending half of an exchange on one subtask.
pub(crate) struct ExchangeSender<K, T>(RefCell<SenderState<K, T>>);

impl<K: Key, T: ExchangeData> ExchangeSender<K, T> {
    fn flush_batches(state: &mut SenderState<K, T>) {
        for target in &mut state.targets {
            if !target.batch.is_empty() {
                let batch =
                    std::mem::replace(&mut target.batch, Vec::with_capacity(state.batch_size));
                target.send(Message::Records(batch));
            }
        }
    }
}

pub(crate) struct SenderPush<K, T>(Rc<ExchangeSender<K, T>>);

impl<K: Key, T: ExchangeData> Push<T> for SenderPush<K, T> {
    fn push(&mut self, batch: &mut Vec<Record<T>>, _cx: &mut Cx) -> Result<(), JobError> {
        let mut guard = self.0 .0.borrow_mut();
        let state = &mut *guard;
        let batch_size = state.batch_size;
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
        Ok(())
    }

    fn barrier(&mut self, barrier: Barrier, _cx: &mut Cx) -> Result<(), JobError> {
        let mut guard = self.0 .0.borrow_mut();
        let state = &mut *guard;
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
                            desc: BlockDesc::InFlight(InFlightBlock {
                                operator: state.operator.0.clone(),
                                input: state.operator.1,
                                from: state.subtask as u32,
                                to: to as u32,
                                handle: 0,
                                records: records.len() as u64,
                                bytes: bytes.len() as u64,
                            }),
                            bytes,
                        },
                    );
                }
                let position = target.send_first(Message::Barrier(barrier));
                if !target.batch.is_empty() {
                    let batch =
                        std::mem::replace(&mut target.batch, Vec::with_capacity(batch_size));
                    target.send(Message::Records(batch));
                }
                position
            } else {
                if !target.batch.is_empty() {
                    let batch =
                        std::mem::replace(&mut target.batch, Vec::with_capacity(batch_size));
                    target.send(Message::Records(batch));
                }
                let position = target.channel.data.position() + target.pending.len() as u64;
                target.send(Message::Barrier(barrier));
                position
            };
            target.notice(Notice {
                checkpoint_id: barrier.id,
                position,
            });
        }
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

/// Records of one channel being persisted as in flight for a checkpoint.
struct Log<T> {
    id: u64,
    /// The channel's barrier position, once known.
    until: Option<u64>,
    /// Positions below this are logged already.
    logged_until: u64,
    records: InFlightRecords<T>,
}

struct ChannelState<T> {
    ended: bool,
    /// The marker of the barrier being aligned has arrived on this channel.
    has_marker: bool,
    /// In an aligned checkpoint: this channel delivered its marker and is not
    /// read until the barrier goes downstream.
    blocked: bool,
    /// The latest out-of-band notice.
    notice: Option<Notice>,
    log: Option<Log<T>>,
}

/// An aligned (or at-least-once) barrier being collected from the channels.
struct Alignment {
    barrier: Barrier,
    started_ms: u64,
    started: std::time::Instant,
}

/// The receiving half of an exchange on one subtask: an input of the subtask.
pub(crate) struct ExchangeReceiver<T> {
    channels: Vec<ChannelReceiver<Message<T>>>,
    state: Vec<ChannelState<T>>,
    /// Wakes the sender subtask of each channel (it may wait for space).
    senders: Vec<Notifier>,
    watermarks: Vec<Timestamp>,
    open_channels: usize,
    watermark: Timestamp,
    output: Output<T>,
    first: usize,
    subtask: usize,
    input: usize,
    operator: (String, u32),
    mode: Option<CheckpointMode>,
    checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    alignment: Option<Alignment>,
    /// Highest checkpoint delivered (or aborted) here.
    delivered: u64,
    /// Restored in-flight records, replayed before anything else.
    replay: Vec<Record<T>>,
}

impl<T: ExchangeData> ExchangeReceiver<T> {
    fn advance_watermark(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        let min = self
            .watermarks
            .iter()
            .copied()
            .min()
            .unwrap_or(MAX_WATERMARK);
        if min > self.watermark {
            self.watermark = min;
            self.output.watermark(min, cx)?;
        }
        Ok(())
    }

    fn barrier_for(&self, id: u64, now_ms: u64) -> Barrier {
        self.checkpoints
            .borrow()
            .oldest_pending()
            .filter(|b| b.id == id)
            .unwrap_or(Barrier {
                id,
                trigger_ms: now_ms,
                mode: self.mode.unwrap_or(CheckpointMode::Aligned),
            })
    }

    /// Sends the barrier downstream (operators snapshot) and resumes reading.
    fn deliver(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        let alignment_us = self
            .alignment
            .take()
            .map_or(0, |a| a.started.elapsed().as_micros() as u64);
        for s in &mut self.state {
            s.blocked = false;
            s.has_marker = false;
        }
        self.delivered = self.delivered.max(barrier.id);
        self.output.barrier(barrier, cx)?;
        self.checkpoints
            .borrow_mut()
            .delivered(barrier.id, self.input, alignment_us);
        Ok(())
    }

    /// Unaligned: snapshot now, and persist every channel's records up to its
    /// barrier.
    fn start_unaligned(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        if barrier.id <= self.delivered || !self.checkpoints.borrow_mut().begin(barrier) {
            return Ok(());
        }
        self.checkpoints
            .borrow_mut()
            .switch_to_unaligned(barrier.id);
        for j in 0..self.channels.len() {
            let s = &mut self.state[j];
            if s.ended || s.has_marker {
                continue; // no records before its barrier remain
            }
            s.log = Some(Log {
                id: barrier.id,
                until: s
                    .notice
                    .filter(|n| n.checkpoint_id == barrier.id)
                    .map(|n| n.position),
                logged_until: self.channels[j].data.read_position(),
                records: Vec::new(),
            });
            self.checkpoints.borrow_mut().open_log(barrier.id);
        }
        self.deliver(barrier, cx)?;
        for j in 0..self.channels.len() {
            self.peek_log(j)?;
        }
        Ok(())
    }

    /// Logs what can be peeked of channel `j`'s in-flight range; closes the
    /// log when it reached the barrier.
    fn peek_log(&mut self, j: usize) -> Result<(), JobError> {
        let Some(log) = &mut self.state[j].log else {
            return Ok(());
        };
        let Some(until) = log.until else {
            return Ok(());
        };
        let from = log.logged_until.max(self.channels[j].data.read_position());
        let records = &mut log.records;
        let mut last = from;
        self.channels[j].data.peek_until(until, |pos, message| {
            if pos >= from {
                if let Message::Records(batch) = message {
                    records.extend(batch.iter().map(|r| (r.ts, r.value.clone())));
                }
                last = pos + 1;
            }
        });
        log.logged_until = log.logged_until.max(last);
        if log.logged_until >= until {
            self.close_log(j)?;
        }
        Ok(())
    }

    fn close_log(&mut self, j: usize) -> Result<(), JobError> {
        let Some(log) = self.state[j].log.take() else {
            return Ok(());
        };
        let mut checkpoints = self.checkpoints.borrow_mut();
        if !log.records.is_empty() {
            let bytes = archive(&log.records)?;
            checkpoints.add_block(
                log.id,
                SnapshotBlock {
                    kind: spate_storage::BlockKind::IN_FLIGHT,
                    desc: BlockDesc::InFlight(InFlightBlock {
                        operator: self.operator.0.clone(),
                        input: self.operator.1,
                        from: j as u32,
                        to: self.subtask as u32,
                        handle: 0,
                        records: log.records.len() as u64,
                        bytes: bytes.len() as u64,
                    }),
                    bytes,
                },
            );
        }
        checkpoints.close_log(log.id);
        Ok(())
    }

    fn on_notice(&mut self, j: usize, notice: Notice, cx: &mut Cx) -> Result<(), JobError> {
        if self.checkpoints.borrow().is_done(notice.checkpoint_id) {
            return Ok(());
        }
        self.state[j].notice = Some(notice);
        if let Some(log) = &mut self.state[j].log {
            if log.id == notice.checkpoint_id {
                log.until = Some(notice.position);
            }
        }
        let barrier = self.barrier_for(notice.checkpoint_id, cx.now_ms);
        let unaligned = barrier.mode == CheckpointMode::Unaligned
            || self.checkpoints.borrow().is_unaligned(notice.checkpoint_id);
        if unaligned && notice.checkpoint_id > self.delivered {
            self.start_unaligned(barrier, cx)?;
        }
        self.peek_log(j)
    }

    fn on_marker(
        &mut self,
        j: usize,
        barrier: Barrier,
        position: u64,
        cx: &mut Cx,
    ) -> Result<bool, JobError> {
        if barrier.id <= self.delivered {
            // Delivered already (unaligned): this channel's range is complete.
            if let Some(log) = &mut self.state[j].log {
                if log.id == barrier.id {
                    log.until = Some(position);
                    log.logged_until = log.logged_until.max(position);
                }
            }
            if self.state[j]
                .log
                .as_ref()
                .is_some_and(|l| l.id == barrier.id)
            {
                self.close_log(j)?;
            }
            return Ok(false);
        }
        if !self.checkpoints.borrow_mut().begin(barrier) {
            self.delivered = self.delivered.max(barrier.id);
            return Ok(false);
        }
        if barrier.mode == CheckpointMode::Unaligned
            || self.checkpoints.borrow().is_unaligned(barrier.id)
        {
            self.start_unaligned(barrier, cx)?;
            return self.on_marker(j, barrier, position, cx);
        }
        self.alignment.get_or_insert(Alignment {
            barrier,
            started_ms: cx.now_ms,
            started: std::time::Instant::now(),
        });
        let block = barrier.mode != CheckpointMode::AtLeastOnce;
        self.state[j].has_marker = true;
        self.state[j].blocked = block;
        self.maybe_aligned(cx)?;
        Ok(block)
    }

    /// Delivers the barrier being aligned once every open channel has its marker.
    fn maybe_aligned(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        if let Some(a) = &self.alignment {
            if self.state.iter().all(|s| s.ended || s.has_marker) {
                let barrier = a.barrier;
                self.deliver(barrier, cx)?;
            }
        }
        Ok(())
    }

    fn check_timeout(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        if let Some(a) = &self.alignment {
            if let CheckpointMode::AlignedWithTimeout { timeout_ms } = a.barrier.mode {
                if cx.now_ms >= a.started_ms + timeout_ms {
                    let barrier = a.barrier;
                    self.checkpoints
                        .borrow_mut()
                        .switch_to_unaligned(barrier.id);
                    // Channels that delivered their marker are complete; the
                    // others persist their records up to it.
                    let started = self.alignment.take();
                    for j in 0..self.channels.len() {
                        let s = &mut self.state[j];
                        if s.ended || s.has_marker {
                            continue;
                        }
                        s.log = Some(Log {
                            id: barrier.id,
                            until: s
                                .notice
                                .filter(|n| n.checkpoint_id == barrier.id)
                                .map(|n| n.position),
                            logged_until: self.channels[j].data.read_position(),
                            records: Vec::new(),
                        });
                        self.checkpoints.borrow_mut().open_log(barrier.id);
                    }
                    self.alignment = started;
                    self.deliver(barrier, cx)?;
                    for j in 0..self.channels.len() {
                        self.peek_log(j)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn log_consumed(&mut self, j: usize, position: u64, batch: &[Record<T>]) {
        if let Some(log) = &mut self.state[j].log {
            if position >= log.logged_until && log.until.is_none_or(|u| position < u) {
                log.records
                    .extend(batch.iter().map(|r| (r.ts, r.value.clone())));
                log.logged_until = position + 1;
            }
        }
    }
}

impl<T: ExchangeData> Input for ExchangeReceiver<T> {
    fn step(&mut self, cx: &mut Cx) -> Result<InputState, JobError> {
        if !self.replay.is_empty() {
            let mut replay = std::mem::take(&mut self.replay);
            self.output.push(&mut replay, cx)?;
            return Ok(InputState::Busy);
        }
        let n = self.channels.len();
        let mut busy = false;
        // Out-of-band first: a barrier may overtake the backlog.
        for j in 0..n {
            while let Some(notice) = self.channels[j].notices.pop() {
                busy = true;
                self.on_notice(j, notice, cx)?;
            }
        }
        // A peer of this input's alignment group went unaligned.
        let pending = self.checkpoints.borrow().oldest_pending();
        if let Some(b) = pending {
            if b.id > self.delivered && self.checkpoints.borrow().is_unaligned(b.id) {
                self.start_unaligned(b, cx)?;
                busy = true;
            }
        }
        self.check_timeout(cx)?;
        for k in 0..n {
            let i = (self.first + k) % n;
            if self.state[i].ended {
                continue;
            }
            let mut taken = 0;
            while taken < MESSAGES_PER_CHANNEL_STEP && !self.state[i].blocked {
                let position = self.channels[i].data.read_position();
                let Some(message) = self.channels[i].data.pop() else {
                    break;
                };
                taken += 1;
                match message {
                    Message::Records(mut batch) => {
                        self.log_consumed(i, position, &batch);
                        self.output.push(&mut batch, cx)?;
                    }
                    Message::Watermark(w) => {
                        self.watermarks[i] = self.watermarks[i].max(w);
                        self.advance_watermark(cx)?;
                    }
                    Message::Barrier(barrier) => {
                        if self.on_marker(i, barrier, position, cx)? {
                            break;
                        }
                    }
                    Message::End => {
                        self.state[i].ended = true;
                        self.open_channels -= 1;
                        self.watermarks[i] = MAX_WATERMARK;
                        if self.state[i].log.is_some() {
                            self.close_log(i)?;
                        }
                        self.advance_watermark(cx)?;
                        self.maybe_aligned(cx)?;
                        break;
                    }
                }
            }
            if taken > 0 {
                busy = true;
                self.senders[i].notify();
            }
        }
        self.first = (self.first + 1) % n.max(1);
        if self.open_channels == 0 {
            self.output.end(cx)?;
            return Ok(InputState::Finished);
        }
        Ok(if busy {
            InputState::Busy
        } else {
            InputState::Idle
        })
    }

    fn has_work(&mut self, now_ms: u64) -> bool {
        if !self.replay.is_empty() {
            return true;
        }
        if self.wake_at().is_some_and(|at| now_ms >= at) {
            return true;
        }
        self.channels.iter_mut().zip(&self.state).any(|(c, s)| {
            c.notices.has_message() || (!s.ended && !s.blocked && c.data.has_message())
        })
    }

    fn describe(&mut self) -> String {
        let mut out = format!(
            "receiver {:?} delivered={} alignment={:?} open={} replay={} ",
            self.operator,
            self.delivered,
            self.alignment.as_ref().map(|a| a.barrier),
            self.open_channels,
            self.replay.len()
        );
        for j in 0..self.channels.len() {
            let s = &self.state[j];
            out += &format!(
                "[ch{j}: ended={} marker={} blocked={} notice={:?} log={:?} rpos={} msg={} nmsg={}] ",
                s.ended,
                s.has_marker,
                s.blocked,
                s.notice,
                s.log.as_ref().map(|l| (l.id, l.until, l.logged_until)),
                self.channels[j].data.read_position(),
                self.channels[j].data.has_message(),
                self.channels[j].notices.has_message()
            );
        }
        out
    }

    fn wake_at(&self) -> Option<u64> {
        match &self.alignment {
            Some(Alignment {
                barrier:
                    Barrier {
                        mode: CheckpointMode::AlignedWithTimeout { timeout_ms },
                        ..
                    },
                started_ms,
                ..
            }) => Some(started_ms + timeout_ms),
            _ => None,
        }
    }

    fn abort(&mut self, id: u64) {
        if self.alignment.as_ref().is_some_and(|a| a.barrier.id == id) {
            self.alignment = None;
            for s in &mut self.state {
                s.blocked = false;
                s.has_marker = false;
            }
        }
        for s in &mut self.state {
            if s.log.as_ref().is_some_and(|l| l.id == id) {
                s.log = None;
            }
        }
        self.delivered = self.delivered.max(id);
    }
}

/// Builds the exchange for a keyed operator: attaches the sender to `stream`
/// and registers the receiver as a new input of the subtask. Returns the
/// receiver's output and its chain (= input index).
pub(crate) fn exchange<K: Key, T: ExchangeData>(
    df: &Dataflow,
    upstream: &Output<T>,
    upstream_chains: &[usize],
    key: Rc<dyn Fn(&T) -> K>,
    target: (&str, u32),
) -> (Output<T>, usize) {
    let id = df.next_exchange_id();
    let (subtask, parallelism, max_parallelism, batch_size, range, env) = {
        let g = df.graph();
        (
            g.subtask,
            g.parallelism,
            g.max_parallelism,
            g.batch_size,
            g.range,
            g.env.clone(),
        )
    };
    let (senders, receivers) = env.exchanges.endpoints::<T>(id, subtask);
    let owner = (0..max_parallelism)
        .map(|kg| subtask_for_key_group(max_parallelism, parallelism as u32, kg as u16))
        .collect();
    let checkpoints = df.checkpoints();
    let operator = (target.0.to_string(), target.1);
    let sender = Rc::new(ExchangeSender(RefCell::new(SenderState {
        key: key.clone(),
        owner,
        max_parallelism,
        targets: senders
            .into_iter()
            .enumerate()
            .map(|(to, channel)| Target {
                channel,
                batch: Vec::with_capacity(batch_size),
                pending: VecDeque::new(),
                notices: VecDeque::new(),
                notifier: env.parkers[to].notifier(),
            })
            .collect(),
        batch_size,
        watermark: 0,
        sent_watermark: 0,
        ended: false,
        subtask,
        operator: operator.clone(),
        checkpoints: checkpoints.clone(),
    })));
    df.add_buffer(upstream_chains, sender.clone());
    upstream.attach(Box::new(SenderPush(sender)));

    let replay = match df.restore_state() {
        Some(restore) => {
            match restored_in_flight(&restore, &operator, &*key, max_parallelism, range) {
                Ok(records) => records,
                Err(e) => {
                    df.fail_build(e);
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    let output = Output::new();
    let chain = df.new_chain();
    let receiver = ExchangeReceiver {
        senders: (0..parallelism)
            .map(|from| env.parkers[from].notifier())
            .collect(),
        watermarks: vec![0; receivers.len()],
        state: (0..receivers.len())
            .map(|_| ChannelState {
                ended: false,
                has_marker: false,
                blocked: false,
                notice: None,
                log: None,
            })
            .collect(),
        open_channels: receivers.len(),
        channels: receivers,
        watermark: 0,
        output: output.clone(),
        first: subtask,
        subtask,
        input: chain,
        operator,
        mode: env.config.checkpoint.as_ref().map(|c| c.mode),
        checkpoints,
        alignment: None,
        delivered: 0,
        replay,
    };
    df.add_input(Box::new(receiver), chain);
    (output, chain)
}

/// The in-flight records of a restored checkpoint that belong to this
/// subtask's key groups (whoever persisted them, whatever the old parallelism).
fn restored_in_flight<K: Key, T: ExchangeData>(
    restore: &crate::checkpoint::restore::RestoreState,
    operator: &(String, u32),
    key: &dyn Fn(&T) -> K,
    max_parallelism: u32,
    range: KeyGroupRange,
) -> Result<Vec<Record<T>>, JobError> {
    let mut out = Vec::new();
    for (block, bytes) in restore.in_flight(&operator.0, operator.1)? {
        let records =
            rkyv::from_bytes::<InFlightRecords<T>, rkyv::rancor::Error>(&bytes).map_err(|e| {
                JobError::Restore(format!(
                    "in-flight records of `{}` input {} from subtask {} to {}: {e}",
                    operator.0, operator.1, block.from, block.to
                ))
            })?;
        out.extend(
            records
                .into_iter()
                .filter(|(_, v)| range.contains(key_group_for(&key(v), max_parallelism)))
                .map(|(ts, value)| Record { ts, value }),
        );
    }
    Ok(out)
}
