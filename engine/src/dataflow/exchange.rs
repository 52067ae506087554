//! `key_by` exchanges: the only place records cross cores.
//!
//! Every exchange has one channel ([`crate::ring::Channel`]) per (sender
//! subtask, receiver subtask) pair. The sender routes each record by its key
//! group to the owning subtask, fills one batch per destination and moves full
//! batches into the ring; at the end of every step it also sends partly filled
//! batches and the latest watermark, so latency stays low when traffic is
//! light. When a ring is full the batch waits in the sender's pending queue
//! and the sender reports itself blocked: the subtask stops pulling the inputs
//! of that chain until the receiver catches up (backpressure; nothing is
//! dropped, memory is bounded by ring capacity plus one step's output).

use super::{
    Cx, Data, Dataflow, ExchangeData, Input, InputState, Message, Output, OutputBuffer, Push,
    Record,
};
use crate::keygroup::{key_group_for, subtask_for_key_group, Key};
use crate::park::Notifier;
use crate::ring::{Channel, ChannelReceiver, ChannelSender};
use crate::time::{Timestamp, MAX_WATERMARK};
use crate::JobError;
use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Mutex;

/// Messages a receiver takes from one channel in one step before moving on to
/// the next channel (fairness between senders).
const MESSAGES_PER_CHANNEL_STEP: usize = 8;

/// The rings of every exchange of a job, created by whichever subtask asks
/// first and handed out to the others (each takes its row of senders and its
/// column of receivers).
pub(crate) struct ExchangeRegistry {
    meshes: Mutex<HashMap<usize, Box<dyn Any + Send>>>,
    parallelism: usize,
    ring_capacity: usize,
}

struct Mesh<T> {
    senders: Vec<Option<Vec<ChannelSender<Message<T>>>>>,
    receivers: Vec<Vec<Option<ChannelReceiver<Message<T>>>>>,
}

impl ExchangeRegistry {
    pub(crate) fn new(parallelism: usize, ring_capacity: usize) -> Self {
        Self {
            meshes: Mutex::new(HashMap::new()),
            parallelism,
            ring_capacity,
        }
    }

    /// The channels of exchange `id` for `subtask`: to every receiver, and
    /// from every sender (indexed by the peer subtask).
    #[allow(clippy::type_complexity)]
    fn endpoints<T: Send + 'static>(
        &self,
        id: usize,
        subtask: usize,
    ) -> (
        Vec<ChannelSender<Message<T>>>,
        Vec<ChannelReceiver<Message<T>>>,
    ) {
        let mut meshes = self.meshes.lock().expect("exchange registry lock");
        let p = self.parallelism;
        let entry = meshes.entry(id).or_insert_with(|| {
            let mut senders: Vec<Vec<ChannelSender<Message<T>>>> =
                (0..p).map(|_| Vec::new()).collect();
            let mut receivers: Vec<Vec<Option<ChannelReceiver<Message<T>>>>> =
                (0..p).map(|_| (0..p).map(|_| None).collect()).collect();
            for (from, row) in senders.iter_mut().enumerate() {
                for column in receivers.iter_mut() {
                    let (tx, rx) = Channel::new(self.ring_capacity);
                    row.push(tx);
                    column[from] = Some(rx);
                }
            }
            Box::new(Mesh {
                senders: senders.into_iter().map(Some).collect(),
                receivers,
            })
        });
        let mesh = entry.downcast_mut::<Mesh<T>>().expect(
            "exchange types differ between subtasks: the build closure must build the same dataflow on every subtask",
        );
        let senders = mesh.senders[subtask]
            .take()
            .expect("exchange endpoints taken twice");
        let receivers = mesh.receivers[subtask]
            .iter_mut()
            .map(|r| r.take().expect("exchange endpoints taken twice"))
            .collect();
        (senders, receivers)
    }
}

struct Target<T> {
    channel: ChannelSender<Message<T>>,
    batch: Vec<Record<T>>,
    pending: VecDeque<Message<T>>,
    notifier: Notifier,
}

impl<T: Send> Target<T> {
    fn send(&mut self, message: Message<T>) {
        if self.pending.is_empty() {
            match self.channel.data.try_push(message) {
                Ok(()) => {
                    self.notifier.notify();
                    return;
                }
                Err(message) => self.pending.push_back(message),
            }
        } else {
            self.pending.push_back(message);
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
        let watermark = state.watermark.max(MAX_WATERMARK);
        state.sent_watermark = watermark;
        for target in &mut state.targets {
            target.send(Message::Watermark(watermark));
            target.send(Message::End);
        }
        state.ended = true;
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
        state
            .targets
            .iter_mut()
            .any(|t| !t.pending.is_empty() && t.channel.data.free_slots() > 0)
    }

    fn has_pending(&self) -> bool {
        self.is_blocked()
    }
}

/// The receiving half of an exchange on one subtask: an input of the subtask.
pub(crate) struct ExchangeReceiver<T> {
    channels: Vec<ChannelReceiver<Message<T>>>,
    /// Wakes the sender subtask of each channel (it may wait for space).
    senders: Vec<Notifier>,
    watermarks: Vec<Timestamp>,
    ended: Vec<bool>,
    open_channels: usize,
    watermark: Timestamp,
    output: Output<T>,
    first: usize,
}

impl<T: ExchangeData> Input for ExchangeReceiver<T> {
    fn step(&mut self, cx: &mut Cx) -> Result<InputState, JobError> {
        let n = self.channels.len();
        let mut busy = false;
        for k in 0..n {
            let i = (self.first + k) % n;
            if self.ended[i] {
                continue;
            }
            let mut taken = 0;
            while taken < MESSAGES_PER_CHANNEL_STEP {
                let Some(message) = self.channels[i].data.pop() else {
                    break;
                };
                taken += 1;
                match message {
                    Message::Records(mut batch) => self.output.push(&mut batch, cx)?,
                    Message::Watermark(w) => {
                        self.watermarks[i] = self.watermarks[i].max(w);
                        self.advance_watermark(cx)?;
                    }
                    Message::End => {
                        self.ended[i] = true;
                        self.open_channels -= 1;
                        self.watermarks[i] = MAX_WATERMARK;
                        self.advance_watermark(cx)?;
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

    fn has_work(&mut self, _now_ms: u64) -> bool {
        self.channels
            .iter_mut()
            .zip(&self.ended)
            .any(|(c, &ended)| !ended && c.data.has_message())
    }
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
}

/// Builds the exchange for a keyed operator: attaches the sender to `stream`
/// and registers the receiver as a new input of the subtask. Returns the
/// receiver's output and its chain.
pub(crate) fn exchange<K: Key, T: ExchangeData>(
    df: &Dataflow,
    upstream: &Output<T>,
    upstream_chains: &[usize],
    key: Rc<dyn Fn(&T) -> K>,
) -> (Output<T>, usize)
where
    T: Data,
{
    let id = df.next_exchange_id();
    let (subtask, parallelism, max_parallelism, batch_size, env) = {
        let g = df.graph();
        (
            g.subtask,
            g.parallelism,
            g.max_parallelism,
            g.batch_size,
            g.env.clone(),
        )
    };
    let (senders, receivers) = env.exchanges.endpoints::<T>(id, subtask);
    let owner = (0..max_parallelism)
        .map(|kg| subtask_for_key_group(max_parallelism, parallelism as u32, kg as u16))
        .collect();
    let sender = Rc::new(ExchangeSender(RefCell::new(SenderState {
        key,
        owner,
        max_parallelism,
        targets: senders
            .into_iter()
            .enumerate()
            .map(|(to, channel)| Target {
                channel,
                batch: Vec::with_capacity(batch_size),
                pending: VecDeque::new(),
                notifier: env.parkers[to].notifier(),
            })
            .collect(),
        batch_size,
        watermark: 0,
        sent_watermark: 0,
        ended: false,
    })));
    df.add_buffer(upstream_chains, sender.clone());
    upstream.attach(Box::new(SenderPush(sender)));

    let output = Output::new();
    let chain = df.new_chain();
    let receiver = ExchangeReceiver {
        senders: (0..parallelism)
            .map(|from| env.parkers[from].notifier())
            .collect(),
        watermarks: vec![0; receivers.len()],
        ended: vec![false; receivers.len()],
        open_channels: receivers.len(),
        channels: receivers,
        watermark: 0,
        output: output.clone(),
        first: subtask,
    };
    df.add_input(Box::new(receiver), chain);
    (output, chain)
}
