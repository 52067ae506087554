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
//!
//! Invariants (asserted in the sender and the receiver):
//! 1. Barrier ids a sender sends on its channels strictly increase, and no
//!    barrier follows the end of its input.
//! 2. A sender's in-band marker is at the position its notice announces: the
//!    ring's write position plus what waits before it (aligned: everything
//!    already sent; unaligned: nothing, the marker goes first).
//! 3. Barrier ids a receiver delivers downstream strictly increase.
//! 4. A consumed marker's position is behind the read position; a notice
//!    for a channel whose in-flight log is open is never behind what that log
//!    already holds (the log covers `[read position at the snapshot, P)`).
//! 5. An in-flight log only grows and never holds a record at or after its
//!    channel's barrier position.

use super::{
    Cx, Dataflow, ExchangeData, Input, InputState, Message, Output, OutputBuffer, Push, Record,
};
use crate::checkpoint::metadata::InFlightBlock;
use crate::checkpoint::subtask::{BlockDesc, SnapshotBlock, SubtaskCheckpoints};
use crate::checkpoint::{Barrier, CheckpointMode};
use crate::keygroup::{key_group_for, subtask_for_key_group, Key, KeyGroupRange};
use crate::metrics::ExchangeMetrics;
use crate::park::Notifier;
use crate::ring::{ChannelReceiver, ChannelSender, Notice};
use crate::schema::BlockSchema;
use crate::time::{Timestamp, MAX_WATERMARK};
use crate::JobError;

mod receiver;
mod sender;

use receiver::{ChannelState, ExchangeReceiver};
use sender::{ExchangeSender, SenderPush, SenderState, Target};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

/// Messages a receiver takes from one channel in one step before moving on to
/// the next channel (fairness between senders).
const MESSAGES_PER_CHANNEL_STEP: usize = 8;

/// Records as persisted in flight: (timestamp, value).
type InFlightRecords<T> = Vec<(Timestamp, T)>;

fn archive<T: ExchangeData>(
    records: &InFlightRecords<T>,
) -> Result<rkyv::util::AlignedVec<16>, JobError> {
    rkyv::to_bytes::<rkyv::rancor::Error>(records).map_err(|e| {
        crate::CheckpointError::Archive {
            what: "in-flight records".into(),
            reason: e.to_string(),
        }
        .into()
    })
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
    let metrics = env.metrics.exchange(
        target.0,
        target.1,
        subtask,
        senders.iter().map(|c| c.data.occupancy()).collect(),
        senders.first().map_or(0, |c| c.data.capacity()),
    );
    let owner = (0..max_parallelism)
        .map(|kg| subtask_for_key_group(max_parallelism, parallelism as u32, kg as u16))
        .collect();
    let checkpoints = df.checkpoints();
    let operator = (target.0.to_string(), target.1);
    let schema = Arc::new(BlockSchema::in_flight::<T>());
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
        last_barrier: 0,
        schema: schema.clone(),
        metrics,
    })));
    df.add_buffer(upstream_chains, sender.clone());
    upstream.attach(Box::new(SenderPush(sender)));

    let replay = match df.restore_state() {
        Some(restore) => {
            match restored_in_flight(&restore, &operator, &*key, max_parallelism, range, &schema) {
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
        schema,
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
    schema: &BlockSchema,
) -> Result<Vec<Record<T>>, JobError> {
    let mut out = Vec::new();
    for (block, bytes) in restore.in_flight(&operator.0, operator.1, schema)? {
        let records =
            rkyv::from_bytes::<InFlightRecords<T>, rkyv::rancor::Error>(&bytes).map_err(|e| {
                JobError::from(crate::RestoreError::Damaged {
                    what: format!(
                        "in-flight records of `{}` input {} from subtask {} to {}",
                        operator.0, operator.1, block.from, block.to
                    ),
                    reason: e.to_string(),
                })
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
