//! The receiving side of an exchange: reads every sender's channel in turn,
//! aligns barriers (aligned modes) or delivers them on the first notice and
//! logs the records in flight (unaligned), and merges the senders'
//! watermarks.

use super::*;

/// Records of one channel being persisted as in flight for a checkpoint.
pub(super) struct Log<T> {
    pub(super) id: u64,
    /// The channel's barrier position, once known.
    pub(super) until: Option<u64>,
    /// Positions below this are logged already.
    pub(super) logged_until: u64,
    pub(super) records: InFlightRecords<T>,
}

pub(super) struct ChannelState<T> {
    pub(super) ended: bool,
    /// The marker of the barrier being aligned has arrived on this channel.
    pub(super) has_marker: bool,
    /// In an aligned checkpoint: this channel delivered its marker and is not
    /// read until the barrier goes downstream.
    pub(super) blocked: bool,
    /// The latest out-of-band notice.
    pub(super) notice: Option<Notice>,
    pub(super) log: Option<Log<T>>,
}

/// An aligned (or at-least-once) barrier being collected from the channels.
pub(super) struct Alignment {
    pub(super) barrier: Barrier,
    pub(super) started_ms: u64,
    pub(super) started: std::time::Instant,
}

/// The receiving half of an exchange on one subtask: an input of the subtask.
pub(crate) struct ExchangeReceiver<T> {
    pub(super) channels: Vec<ChannelReceiver<Message<T>>>,
    pub(super) state: Vec<ChannelState<T>>,
    /// Wakes the sender subtask of each channel (it may wait for space).
    pub(super) senders: Vec<Notifier>,
    pub(super) watermarks: Vec<Timestamp>,
    pub(super) open_channels: usize,
    pub(super) watermark: Timestamp,
    pub(super) output: Output<T>,
    pub(super) first: usize,
    pub(super) subtask: usize,
    pub(super) input: usize,
    pub(super) operator: (String, u32),
    pub(super) mode: Option<CheckpointMode>,
    pub(super) checkpoints: Rc<RefCell<SubtaskCheckpoints>>,
    pub(super) alignment: Option<Alignment>,
    /// Highest checkpoint delivered (or aborted) here.
    pub(super) delivered: u64,
    /// Restored in-flight records, replayed before anything else.
    pub(super) replay: Vec<Record<T>>,
    /// What this exchange's in-flight blocks archive.
    pub(super) schema: Arc<BlockSchema>,
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
        assert!(
            barrier.id > self.delivered,
            "input {} of `{}`: barrier {} delivered after barrier {}",
            self.operator.1,
            self.operator.0,
            barrier.id,
            self.delivered
        );
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
        self.open_logs(barrier.id);
        self.deliver(barrier, cx)?;
        for j in 0..self.channels.len() {
            self.peek_log(j)?;
        }
        Ok(())
    }

    /// Opens the in-flight log of checkpoint `id` on every channel that may
    /// still hold records before its barrier (not ended, marker not consumed):
    /// from the read position to the barrier's position, once known.
    fn open_logs(&mut self, id: u64) {
        for j in 0..self.channels.len() {
            let s = &mut self.state[j];
            if s.ended || s.has_marker {
                continue; // no records before its barrier remain
            }
            debug_assert!(s.log.is_none(), "one in-flight log per channel");
            s.log = Some(Log {
                id,
                until: s
                    .notice
                    .filter(|n| n.checkpoint_id == id)
                    .map(|n| n.position),
                logged_until: self.channels[j].data.read_position(),
                records: Vec::new(),
            });
            self.checkpoints.borrow_mut().open_log(id);
        }
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
        let logged_before = log.logged_until;
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
        debug_assert!(last <= until.max(from), "logged at or after the barrier");
        log.logged_until = log.logged_until.max(last);
        debug_assert!(log.logged_until >= logged_before, "a log only grows");
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
                    desc: BlockDesc::InFlight {
                        block: InFlightBlock {
                            operator: self.operator.0.clone(),
                            input: self.operator.1,
                            from: j as u32,
                            to: self.subtask as u32,
                            handle: 0,
                            records: log.records.len() as u64,
                            bytes: bytes.len() as u64,
                            schema: 0,
                        },
                        schema: self.schema.clone(),
                    },
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
                debug_assert!(
                    notice.position >= log.logged_until,
                    "checkpoint {}: barrier at {} behind the log at {}",
                    log.id,
                    notice.position,
                    log.logged_until
                );
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
        debug_assert!(
            position < self.channels[j].data.read_position(),
            "a marker is handled once consumed"
        );
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
                    self.open_logs(barrier.id);
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
        debug_assert!(
            position < self.channels[j].data.read_position(),
            "logged once consumed"
        );
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

    fn has_work(&mut self, now_us: u64) -> bool {
        if !self.replay.is_empty() {
            return true;
        }
        if self.wake_at_us().is_some_and(|at_us| now_us >= at_us) {
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

    fn wake_at_us(&self) -> Option<u64> {
        match &self.alignment {
            Some(Alignment {
                barrier:
                    Barrier {
                        mode: CheckpointMode::AlignedWithTimeout { timeout_ms },
                        ..
                    },
                started_ms,
                ..
            }) => Some((started_ms + timeout_ms).saturating_mul(1000)),
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
