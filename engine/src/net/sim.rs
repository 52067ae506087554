//! The simulator's network: the subtasks of one simulated job split into
//! processes, and every channel between two of them carried over a link of
//! its own, through the data plane's real channel ends ([`TypedOutbound`],
//! [`TypedInbound`]) and real frames, bytes included. The simulator's seed
//! decides when a link moves: frames written, carried (some, all, or none
//! for a while: a slow link), read, and credits returned. A crash of the run
//! loses whatever is on the links, as a process crash loses what is in its
//! sockets.
//!
//! [`TypedOutbound`]: super::channel::TypedOutbound
//! [`TypedInbound`]: super::channel::TypedInbound

use super::channel::{Inbound, Outbound};
use super::wire::{ChannelId, Frame};
use super::{ChannelHost, Route};
use crate::rng::SplitMix64;
use crate::JobError;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

struct Link {
    outbound: Option<Box<dyn Outbound>>,
    inbound: Option<Box<dyn Inbound>>,
    /// Bytes written by the sender and not read yet.
    wire: VecDeque<u8>,
    /// Credit frames on their way back.
    back: VecDeque<Frame>,
    /// 1 in `slowness` turns of this link move anything.
    slowness: u64,
}

struct State {
    links: BTreeMap<ChannelId, Link>,
    rng: SplitMix64,
    bytes: u64,
    /// Link steps taken so far.
    steps: u64,
    /// The link step at which a connection drops, if one does.
    drop_at: Option<u64>,
    dropped: bool,
}

/// Links between the simulated processes of one run.
pub(crate) struct SimNet {
    /// The simulated process of every subtask.
    process_of: Vec<usize>,
    state: Mutex<State>,
}

impl SimNet {
    /// `parallelism` subtasks in `processes` processes (contiguous blocks,
    /// as a cluster numbers them).
    pub(crate) fn new(parallelism: usize, processes: usize, seed: u64) -> Self {
        let processes = processes.clamp(1, parallelism.max(1));
        Self {
            process_of: (0..parallelism)
                .map(|s| s * processes / parallelism)
                .collect(),
            state: Mutex::new(State {
                links: BTreeMap::new(),
                rng: SplitMix64::new(seed ^ 0x11_4E7),
                bytes: 0,
                steps: 0,
                drop_at: None,
                dropped: false,
            }),
        }
    }

    /// Drops a connection at the `step`-th link step: the run ends there
    /// as a crash does (a lost process fails the whole job), with whatever
    /// is on the links lost.
    pub(crate) fn drop_at(&self, step: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.drop_at = Some(step);
        }
    }

    /// Whether a connection dropped.
    pub(crate) fn dropped(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.dropped)
    }

    fn link(state: &mut State, channel: ChannelId) -> &mut Link {
        let slowness = match state.rng.below(4) {
            0 => 1 + state.rng.below(20), // a slow link
            _ => 1,
        };
        state.links.entry(channel).or_insert_with(|| Link {
            outbound: None,
            inbound: None,
            wire: VecDeque::new(),
            back: VecDeque::new(),
            slowness,
        })
    }

    /// One seeded move on one link. Returns whether anything moved.
    pub(crate) fn step(&self) -> Result<bool, JobError> {
        let mut state = self.state.lock().expect("sim net");
        if state.links.is_empty() || state.dropped {
            return Ok(false);
        }
        state.steps += 1;
        if state.drop_at == Some(state.steps) {
            state.dropped = true;
            return Ok(false);
        }
        let n = state.links.len() as u64;
        let pick = state.rng.below(n) as usize;
        let action = state.rng.below(4);
        let all = state.rng.below(2) == 0;
        let State {
            links, rng, bytes, ..
        } = &mut *state;
        let link = links.values_mut().nth(pick).expect("picked within range");
        if rng.below(link.slowness) != 0 {
            return Ok(false);
        }
        Self::move_link(link, action, all, bytes)
    }

    /// Moves everything every link can move now (the simulator checks for
    /// a stall with it).
    pub(crate) fn flush(&self) -> Result<bool, JobError> {
        let mut state = self.state.lock().expect("sim net");
        if state.dropped {
            return Ok(false);
        }
        let State { links, bytes, .. } = &mut *state;
        let mut moved = false;
        for link in links.values_mut() {
            for action in 0..4 {
                moved |= Self::move_link(link, action, true, bytes)?;
            }
        }
        Ok(moved)
    }

    fn move_link(
        link: &mut Link,
        action: u64,
        all: bool,
        bytes: &mut u64,
    ) -> Result<bool, JobError> {
        let (Some(out), Some(inb)) = (&mut link.outbound, &mut link.inbound) else {
            return Ok(false);
        };
        let error = |e: super::NetError| JobError::Network(format!("simulated link: {e}"));
        Ok(match action {
            // The sender's writer.
            0 => {
                let mut buf = Vec::new();
                out.fill(&mut buf).map_err(error)?;
                *bytes += buf.len() as u64;
                link.wire.extend(buf);
                !link.wire.is_empty()
            }
            // The receiver's reader: one whole frame, or all of them.
            1 => {
                let mut moved = false;
                while !link.wire.is_empty() {
                    let bytes_now = link.wire.make_contiguous();
                    let mut r = &bytes_now[..];
                    let frame = Frame::read(&mut r)
                        .map_err(|e| JobError::Network(format!("simulated link: {e}")))?;
                    let used = bytes_now.len() - r.len();
                    link.wire.drain(..used);
                    inb.deliver(&frame).map_err(error)?;
                    moved = true;
                    if !all {
                        break;
                    }
                }
                moved
            }
            // The receiver's writer: credits.
            2 => match inb.grant() {
                Some(frame) => {
                    link.back.push_back(frame);
                    true
                }
                None => false,
            },
            // The sender's reader.
            _ => {
                let mut moved = false;
                while let Some(frame) = link.back.pop_front() {
                    if let Frame::Open { credits, .. } | Frame::Credit { credits, .. } = frame {
                        out.add_credits(credits);
                    }
                    moved = true;
                    if !all {
                        break;
                    }
                }
                moved
            }
        })
    }

    /// Bytes written onto the links so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.bytes)
    }
}

impl ChannelHost for SimNet {
    fn route(&self, from: usize, to: usize) -> Route {
        if self.process_of.get(from) == self.process_of.get(to) {
            Route::Ring
        } else {
            Route::Across
        }
    }

    fn add_outbound(&self, channel: ChannelId, end: Box<dyn Outbound>) {
        let mut state = self.state.lock().expect("sim net");
        Self::link(&mut state, channel).outbound = Some(end);
    }

    fn add_inbound(&self, channel: ChannelId, end: Box<dyn Inbound>) {
        let mut state = self.state.lock().expect("sim net");
        Self::link(&mut state, channel).inbound = Some(end);
    }
}
