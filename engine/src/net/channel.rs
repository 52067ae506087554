//! The two ends of a channel that crosses processes, typed by the records
//! they carry and erased behind [`Outbound`] and [`Inbound`] for the link
//! threads.
//!
//! The sending subtask writes into an ordinary ring; [`TypedOutbound`] drains
//! it into frames. [`TypedInbound`] turns frames back into the same messages,
//! in the same order, into a ring the receiving subtask reads. Every message
//! of the sender's ring becomes exactly one message of the receiver's, so a
//! message has the same position in both: a barrier notice's position means
//! the same thing on either side and the exchange code runs unchanged
//! (in-band and out-of-band barriers, in-flight logs of unaligned
//! checkpoints).
//!
//! Flow control is by credit, as in Flink: the receiver grants one credit per
//! free slot of its ring ([`Frame::Open`], then [`Frame::Credit`] as its
//! subtask consumes), and the sender sends a message only against a credit.
//! A message that arrives therefore always has a slot, so the receiving
//! thread never stops reading the socket, and a notice (which needs no
//! credit) is never stuck behind data: backpressure stops the sender's
//! subtask at its own ring, not the connection.

use super::wire::{ChannelId, Frame, WireBarrier};
use super::NetError;
use crate::checkpoint::{Barrier, CheckpointMode};
use crate::data::{ExchangeData, Record};
use crate::message::Message;
use crate::park::Notifier;
use crate::ring::{ChannelReceiver, ChannelSender, Notice};
use std::collections::VecDeque;

/// The sending end, drained by the link's writer thread.
pub(crate) trait Outbound: Send {
    /// Appends to `out` the frames that may go now: every notice, then
    /// messages while credits last. Returns how many frames.
    fn fill(&mut self, out: &mut Vec<u8>) -> Result<usize, NetError>;
    /// The receiver granted `credits` more messages (the first grant opens
    /// the channel).
    fn add_credits(&mut self, credits: u32);
    /// The sender's end went out: nothing follows.
    fn ended(&self) -> bool;
}

/// The receiving end, fed by the link's reader thread.
pub(crate) trait Inbound: Send {
    /// Delivers a data frame or notice of this channel.
    fn deliver(&mut self, frame: &Frame) -> Result<(), NetError>;
    /// The credit frame to send now, if any: the opening grant, then more
    /// as the subtask frees slots. Also moves waiting notices into the ring.
    fn grant(&mut self) -> Option<Frame>;
    /// The sender's end arrived.
    fn ended(&self) -> bool;
}

pub(crate) struct TypedOutbound<T> {
    channel: ChannelId,
    ring: ChannelReceiver<Message<T>>,
    /// Wakes the sending subtask: it may wait for room in its ring.
    sender: Notifier,
    credits: u64,
    opened: bool,
    ended: bool,
    /// Archive buffer reused batch after batch.
    scratch: rkyv::util::AlignedVec<16>,
}

impl<T> TypedOutbound<T> {
    pub(crate) fn new(
        channel: ChannelId,
        ring: ChannelReceiver<Message<T>>,
        sender: Notifier,
    ) -> Self {
        Self {
            channel,
            ring,
            sender,
            credits: 0,
            opened: false,
            ended: false,
            scratch: rkyv::util::AlignedVec::new(),
        }
    }
}

pub(crate) fn encode_mode(mode: CheckpointMode) -> (u8, u64) {
    match mode {
        CheckpointMode::Aligned => (0, 0),
        CheckpointMode::Unaligned => (1, 0),
        CheckpointMode::AlignedWithTimeout { timeout_ms } => (2, timeout_ms),
        CheckpointMode::AtLeastOnce => (3, 0),
    }
}

fn decode_mode(mode: u8, timeout_ms: u64) -> Option<CheckpointMode> {
    Some(match mode {
        0 => CheckpointMode::Aligned,
        1 => CheckpointMode::Unaligned,
        2 => CheckpointMode::AlignedWithTimeout { timeout_ms },
        3 => CheckpointMode::AtLeastOnce,
        _ => return None,
    })
}

impl<T: ExchangeData> Outbound for TypedOutbound<T> {
    fn fill(&mut self, out: &mut Vec<u8>) -> Result<usize, NetError> {
        if !self.opened {
            return Ok(0);
        }
        let channel = self.channel;
        let mut frames = 0;
        while let Some(notice) = self.ring.notices.pop() {
            Frame::Notice {
                channel,
                checkpoint_id: notice.checkpoint_id,
                position: notice.position,
            }
            .encode(out);
            frames += 1;
        }
        while self.credits > 0 {
            let Some(message) = self.ring.data.pop() else {
                break;
            };
            self.credits -= 1;
            frames += 1;
            let frame = match message {
                Message::Records(batch) => {
                    let records: Vec<(u64, T)> =
                        batch.into_iter().map(|r| (r.ts, r.value)).collect();
                    let mut scratch = std::mem::take(&mut self.scratch);
                    scratch.clear();
                    let archive =
                        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&records, scratch)
                            .map_err(|e| NetError::Encode {
                            channel,
                            reason: e.to_string(),
                        })?;
                    super::wire::encode_records(out, &channel, &archive);
                    self.scratch = archive;
                    continue;
                }
                Message::Watermark(watermark) => Frame::Watermark { channel, watermark },
                Message::Barrier(b) => {
                    let (mode, timeout_ms) = encode_mode(b.mode);
                    Frame::Barrier {
                        channel,
                        barrier: WireBarrier {
                            id: b.id,
                            trigger_ms: b.trigger_ms,
                            mode,
                            timeout_ms,
                        },
                    }
                }
                Message::End => {
                    self.ended = true;
                    Frame::End { channel }
                }
            };
            frame.encode(out);
        }
        if frames > 0 {
            self.sender.notify();
        }
        Ok(frames)
    }

    fn add_credits(&mut self, credits: u32) {
        self.opened = true;
        self.credits += u64::from(credits);
    }

    fn ended(&self) -> bool {
        self.ended
    }
}

pub(crate) struct TypedInbound<T> {
    channel: ChannelId,
    ring: ChannelSender<Message<T>>,
    /// Wakes the receiving subtask.
    receiver: Notifier,
    capacity: u64,
    granted: u64,
    received: u64,
    opened: bool,
    ended: bool,
    /// Notices waiting for room in the (small) notice ring.
    notices: VecDeque<Notice>,
}

/// Notices an inbound channel holds back for its (small) notice ring at
/// most (16 bytes each).
const MAX_WAITING_NOTICES: usize = 1024;

impl<T: Send> TypedInbound<T> {
    pub(crate) fn new(
        channel: ChannelId,
        mut ring: ChannelSender<Message<T>>,
        receiver: Notifier,
    ) -> Self {
        let capacity = ring.data.capacity();
        debug_assert_eq!(ring.data.free_slots(), capacity);
        Self {
            channel,
            ring,
            receiver,
            capacity,
            granted: 0,
            received: 0,
            opened: false,
            ended: false,
            notices: VecDeque::new(),
        }
    }

    fn push(&mut self, message: Message<T>) -> Result<(), NetError> {
        if self.ended {
            return Err(self.violation("a message after the end of the stream"));
        }
        if self.received >= self.granted {
            return Err(self.violation("a message beyond the credits granted"));
        }
        if self.ring.data.try_push(message).is_err() {
            // Credits never exceed free slots: a full ring here is a
            // broken invariant of this process, not of the peer.
            return Err(self.violation("a message with no free slot"));
        }
        self.received += 1;
        self.receiver.notify();
        Ok(())
    }

    fn violation(&self, what: &str) -> NetError {
        NetError::Protocol {
            channel: Some(self.channel),
            what: what.to_string(),
        }
    }

    fn flush_notices(&mut self) {
        let mut moved = false;
        while let Some(notice) = self.notices.front() {
            if self.ring.notices.try_push(*notice).is_err() {
                break;
            }
            self.notices.pop_front();
            moved = true;
        }
        if moved {
            self.receiver.notify();
        }
    }
}

impl<T: ExchangeData> Inbound for TypedInbound<T> {
    fn deliver(&mut self, frame: &Frame) -> Result<(), NetError> {
        match *frame {
            Frame::Records { ref archive, .. } => {
                let records = rkyv::from_bytes::<Vec<(u64, T)>, rkyv::rancor::Error>(archive)
                    .map_err(|e| NetError::Decode {
                        channel: self.channel,
                        reason: e.to_string(),
                    })?;
                let batch = records
                    .into_iter()
                    .map(|(ts, value)| Record { ts, value })
                    .collect();
                self.push(Message::Records(batch))
            }
            Frame::Watermark { watermark, .. } => self.push(Message::Watermark(watermark)),
            Frame::Barrier { barrier, .. } => {
                let mode = decode_mode(barrier.mode, barrier.timeout_ms)
                    .ok_or_else(|| self.violation("a barrier of an unknown mode"))?;
                self.push(Message::Barrier(Barrier {
                    id: barrier.id,
                    trigger_ms: barrier.trigger_ms,
                    mode,
                }))
            }
            Frame::End { .. } => {
                self.push(Message::End)?;
                self.ended = true;
                Ok(())
            }
            Frame::Notice {
                checkpoint_id,
                position,
                ..
            } => {
                // A sender sends one notice per checkpoint on the channel,
                // and the receiving subtask takes them even when it reads
                // no data: more than this waiting is a flood, not a job.
                if self.notices.len() >= MAX_WAITING_NOTICES {
                    return Err(self.violation(&format!(
                        "more than {MAX_WAITING_NOTICES} barrier notices waiting"
                    )));
                }
                self.notices.push_back(Notice {
                    checkpoint_id,
                    position,
                });
                self.flush_notices();
                Ok(())
            }
            _ => Err(self.violation("a frame that carries no channel data")),
        }
    }

    fn grant(&mut self) -> Option<Frame> {
        self.flush_notices();
        let channel = self.channel;
        if !self.opened {
            self.opened = true;
            self.granted = self.capacity;
            return Some(Frame::Open {
                channel,
                credits: self.capacity as u32,
            });
        }
        if self.ended {
            return None;
        }
        // Free slots minus the credits the sender holds unused.
        let free = self.ring.data.free_slots();
        let outstanding = self.granted - self.received;
        let more = free.saturating_sub(outstanding);
        // A quarter of the ring at a time: fewer credit frames, and still
        // three quarters of the ring in flight.
        if more >= (self.capacity / 4).max(1) {
            self.granted += more;
            return Some(Frame::Credit {
                channel,
                credits: more as u32,
            });
        }
        None
    }

    fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    //! The two ends driven against each other without sockets: frames
    //! carried by a seeded scheduler that interleaves sending, carrying and
    //! consuming at random, with the receiving subtask sometimes stalled.
    use super::*;
    use crate::ring::channel;
    use crate::rng::SplitMix64;
    use std::sync::Arc;

    fn notifier() -> Notifier {
        Arc::new(crate::park::Parker::default()).notifier()
    }

    #[test]
    fn messages_keep_their_positions_and_never_exceed_credits() {
        for seed in 0..300u64 {
            let mut rng = SplitMix64::new(seed);
            let cap = [2usize, 4, 8][(seed % 3) as usize];
            let id = ChannelId {
                exchange: 0,
                from: 1,
                to: 0,
            };
            let (mut tx, rx) = channel::<Message<u64>>(cap);
            let (itx, mut irx) = channel::<Message<u64>>(cap);
            let mut out = TypedOutbound::new(id, rx, notifier());
            let mut inb = TypedInbound::new(id, itx, notifier());
            // What the sender wrote, by position; what the receiver read.
            let total = 40u64;
            let mut next = 0u64;
            let mut sent_end = false;
            let mut wire: VecDeque<u8> = VecDeque::new();
            let mut back: VecDeque<Frame> = VecDeque::new();
            let mut read = Vec::new();
            let mut notices = Vec::new();
            for _ in 0..20_000 {
                match rng.next_u64() % 6 {
                    0 if next < total => {
                        let m = if next % 7 == 3 {
                            Message::Watermark(next)
                        } else {
                            Message::Records(vec![Record {
                                ts: next,
                                value: next * 10,
                            }])
                        };
                        if tx.data.try_push(m).is_ok() {
                            if next % 11 == 5 {
                                let position = tx.data.position() - 1;
                                let _ = tx.notices.try_push(Notice {
                                    checkpoint_id: next,
                                    position,
                                });
                            }
                            next += 1;
                        }
                    }
                    0 if !sent_end => {
                        if tx.data.try_push(Message::End).is_ok() {
                            sent_end = true;
                        }
                    }
                    1 => {
                        let mut bytes = Vec::new();
                        out.fill(&mut bytes).unwrap();
                        wire.extend(bytes);
                    }
                    2 => {
                        // Carry some whole frames to the receiver.
                        let bytes: Vec<u8> = wire.iter().copied().collect();
                        let mut r = &bytes[..];
                        let mut used = 0;
                        while let Ok(frame) = Frame::read(&mut r) {
                            inb.deliver(&frame).unwrap();
                            used = bytes.len() - r.len();
                            if rng.next_u64() % 2 == 0 {
                                break;
                            }
                        }
                        wire.drain(..used);
                    }
                    3 => {
                        if let Some(f) = inb.grant() {
                            back.push_back(f);
                        }
                    }
                    4 => {
                        if let Some(Frame::Open { credits, .. } | Frame::Credit { credits, .. }) =
                            back.pop_front()
                        {
                            out.add_credits(credits);
                        }
                    }
                    _ => {
                        // The receiving subtask reads a message, unless stalled.
                        if rng.next_u64() % 3 != 0 {
                            while let Some(n) = irx.notices.pop() {
                                notices.push(n);
                            }
                            let position = irx.data.read_position();
                            if let Some(m) = irx.data.pop() {
                                read.push((position, m));
                            }
                        }
                    }
                }
                assert!(inb.received <= inb.granted, "seed {seed}: beyond credits");
            }
            assert!(inb.ended(), "seed {seed}: the end did not arrive");
            assert_eq!(read.len() as u64, total + 1, "seed {seed}");
            for (position, m) in &read {
                match m {
                    Message::Records(b) => assert_eq!(b[0].value, position * 10, "seed {seed}"),
                    Message::Watermark(w) => assert_eq!(w, position, "seed {seed}"),
                    Message::End => assert_eq!(*position, total, "seed {seed}"),
                    Message::Barrier(_) => unreachable!(),
                }
            }
            for n in notices {
                assert_eq!(n.position, n.checkpoint_id, "seed {seed}: notice moved");
            }
        }
    }

    #[test]
    fn a_peer_that_ignores_credits_is_an_error_not_a_panic() {
        let id = ChannelId {
            exchange: 0,
            from: 1,
            to: 0,
        };
        let (itx, _irx) = channel::<Message<u64>>(2);
        let mut inb = TypedInbound::new(id, itx, notifier());
        // No credit granted yet.
        let err = inb.deliver(&Frame::Watermark {
            channel: id,
            watermark: 1,
        });
        assert!(matches!(err, Err(NetError::Protocol { .. })), "{err:?}");
        let mut garbage = rkyv::util::AlignedVec::<16>::new();
        garbage.extend_from_slice(&[0xff; 40]);
        inb.grant();
        let err = inb.deliver(&Frame::Records {
            channel: id,
            archive: garbage,
        });
        assert!(matches!(err, Err(NetError::Decode { .. })), "{err:?}");
    }

    #[test]
    fn a_flood_of_notices_is_an_error_not_unbounded_memory() {
        let id = ChannelId {
            exchange: 0,
            from: 1,
            to: 0,
        };
        // Nobody takes the notices: the ring fills, then the queue.
        let (itx, _irx) = channel::<Message<u64>>(2);
        let mut inb = TypedInbound::new(id, itx, notifier());
        let mut outcome = Ok(());
        let mut sent = 0u64;
        while outcome.is_ok() && sent < 100_000 {
            sent += 1;
            outcome = inb.deliver(&Frame::Notice {
                channel: id,
                checkpoint_id: sent,
                position: sent,
            });
        }
        assert!(
            matches!(&outcome, Err(NetError::Protocol { what, .. }) if what.contains("notices waiting")),
            "{outcome:?} after {sent} notices"
        );
        assert!(
            sent <= MAX_WAITING_NOTICES as u64 + 64,
            "refused only after {sent}"
        );
    }
}
