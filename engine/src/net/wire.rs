//! The data plane's frames: how they are laid out on a TCP stream, written
//! and read. Pure (no sockets, no threads), so tests and the simulation feed
//! it bytes directly; a frame read from the network is checked field by field
//! and never panics, whatever the bytes.
//!
//! Every frame is `len: u32 LE` (bytes after it, at most [`MAX_FRAME`]),
//! `kind: u8`, then the kind's fields, little endian. A channel is named by
//! `(exchange, from, to)`: the exchange's number in the build closure and the
//! global sender and receiver subtasks. `docs/cluster.md` §6 lists the kinds.

use std::io::{self, Read, Write};

/// Starts every stream, in the first [`Frame::Hello`].
pub(crate) const MAGIC: [u8; 8] = *b"SPATENET";
/// The protocol version; a peer with another one is refused.
pub(crate) const VERSION: u16 = 1;
/// Largest frame accepted (a batch of records is far smaller).
pub(crate) const MAX_FRAME: u32 = 256 << 20;
/// Bytes of a nonce and of a proof (HMAC-SHA256).
pub(crate) const NONCE: usize = 32;

/// One channel of one exchange: from a global sender subtask to a global
/// receiver subtask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChannelId {
    pub exchange: u32,
    pub from: u32,
    pub to: u32,
}

/// How a barrier frame encodes [`crate::CheckpointMode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WireBarrier {
    pub id: u64,
    pub trigger_ms: u64,
    pub mode: u8,
    pub timeout_ms: u64,
}

/// Everything that crosses a data-plane connection.
#[derive(Debug)]
pub(crate) enum Frame {
    /// First frame each side sends: who it is and a fresh nonce.
    Hello {
        version: u16,
        process: u32,
        processes: u32,
        parallelism: u32,
        nonce: [u8; NONCE],
    },
    /// Second frame: HMAC-SHA256 of the secret over both nonces (see
    /// [`super::auth`]).
    Proof {
        mac: [u8; NONCE],
    },
    /// Receiver → sender: the channel exists here; send up to `credits`
    /// messages.
    Open {
        channel: ChannelId,
        credits: u32,
    },
    /// Receiver → sender: `credits` more messages fit.
    Credit {
        channel: ChannelId,
        credits: u32,
    },
    /// A batch of records: an rkyv archive of `Vec<(u64, T)>`.
    Records {
        channel: ChannelId,
        archive: rkyv::util::AlignedVec<16>,
    },
    Watermark {
        channel: ChannelId,
        watermark: u64,
    },
    Barrier {
        channel: ChannelId,
        barrier: WireBarrier,
    },
    /// The sender's input ended.
    End {
        channel: ChannelId,
    },
    /// Out of band: the barrier of `checkpoint_id` is at `position` of the
    /// channel's message sequence.
    Notice {
        channel: ChannelId,
        checkpoint_id: u64,
        position: u64,
    },
    /// The sending process's job failed; the receiver's fails too.
    Abort {
        reason: String,
    },
    /// The sending process's reactors are all done; nothing follows.
    Bye,
    /// A checkpoint coordination message between the leader and a part
    /// (`crate::checkpoint::global::CoordMsg`, decoded by the receiver).
    Coord {
        message: Vec<u8>,
    },
}

const HELLO: u8 = 1;
const PROOF: u8 = 2;
const OPEN: u8 = 3;
const CREDIT: u8 = 4;
const RECORDS: u8 = 5;
const WATERMARK: u8 = 6;
const BARRIER: u8 = 7;
const END: u8 = 8;
const NOTICE: u8 = 9;
const ABORT: u8 = 10;
const BYE: u8 = 11;
const COORD: u8 = 12;

/// A frame that cannot be read: what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLong(u32),
    #[error("frame kind {kind} with {len} bytes is malformed")]
    Malformed { kind: u8, len: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

impl Frame {
    /// The channel a data or credit frame is about.
    pub(crate) fn channel(&self) -> Option<ChannelId> {
        match self {
            Frame::Open { channel, .. }
            | Frame::Credit { channel, .. }
            | Frame::Records { channel, .. }
            | Frame::Watermark { channel, .. }
            | Frame::Barrier { channel, .. }
            | Frame::End { channel }
            | Frame::Notice { channel, .. } => Some(*channel),
            _ => None,
        }
    }

    /// Appends the frame's bytes to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello {
                version,
                process,
                processes,
                parallelism,
                nonce,
            } => {
                out.push(HELLO);
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&version.to_le_bytes());
                for v in [process, processes, parallelism] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(nonce);
            }
            Frame::Proof { mac } => {
                out.push(PROOF);
                out.extend_from_slice(mac);
            }
            Frame::Open { channel, credits } | Frame::Credit { channel, credits } => {
                out.push(if matches!(self, Frame::Open { .. }) {
                    OPEN
                } else {
                    CREDIT
                });
                put_channel(out, channel);
                out.extend_from_slice(&credits.to_le_bytes());
            }
            Frame::Records { channel, archive } => {
                out.truncate(start);
                encode_records(out, channel, archive);
                return;
            }
            Frame::Watermark { channel, watermark } => {
                out.push(WATERMARK);
                put_channel(out, channel);
                out.extend_from_slice(&watermark.to_le_bytes());
            }
            Frame::Barrier { channel, barrier } => {
                out.push(BARRIER);
                put_channel(out, channel);
                out.extend_from_slice(&barrier.id.to_le_bytes());
                out.extend_from_slice(&barrier.trigger_ms.to_le_bytes());
                out.push(barrier.mode);
                out.extend_from_slice(&barrier.timeout_ms.to_le_bytes());
            }
            Frame::End { channel } => {
                out.push(END);
                put_channel(out, channel);
            }
            Frame::Notice {
                channel,
                checkpoint_id,
                position,
            } => {
                out.push(NOTICE);
                put_channel(out, channel);
                out.extend_from_slice(&checkpoint_id.to_le_bytes());
                out.extend_from_slice(&position.to_le_bytes());
            }
            Frame::Abort { reason } => {
                out.push(ABORT);
                // Bounded: a reason is for a log line.
                let bytes = reason.as_bytes();
                let mut n = bytes.len().min(4096);
                while !reason.is_char_boundary(n) {
                    n -= 1;
                }
                out.extend_from_slice(&bytes[..n]);
            }
            Frame::Bye => out.push(BYE),
            Frame::Coord { message } => {
                out.push(COORD);
                out.extend_from_slice(message);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Reads one frame. A records frame's archive is read straight into an
    /// aligned buffer, so it can be checked and deserialized in place.
    pub(crate) fn read(r: &mut impl Read) -> Result<Frame, WireError> {
        Self::read_limited(r, MAX_FRAME)
    }

    /// Reads one frame of at most `limit` bytes (the handshake reads with a
    /// small limit: nothing unauthenticated makes it allocate much).
    pub(crate) fn read_limited(r: &mut impl Read, limit: u32) -> Result<Frame, WireError> {
        Self::read_reusing(r, limit, &mut None)
    }

    /// Reads one frame; a records frame reads its archive into `spare` if
    /// one is given (the reader hands each archive back once delivered, so
    /// a stream of batches reuses one buffer).
    pub(crate) fn read_reusing(
        r: &mut impl Read,
        limit: u32,
        spare: &mut Option<rkyv::util::AlignedVec<16>>,
    ) -> Result<Frame, WireError> {
        let mut head = [0u8; 5];
        r.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let kind = head[4];
        if len > limit {
            return Err(WireError::TooLong(len));
        }
        let malformed = || WireError::Malformed { kind, len };
        let body_len = len.checked_sub(1).ok_or_else(malformed)? as usize;
        if kind == RECORDS {
            let mut channel = [0u8; 12];
            if body_len < 12 {
                return Err(malformed());
            }
            r.read_exact(&mut channel)?;
            let mut archive = spare.take().unwrap_or_default();
            archive.clear();
            archive.resize(body_len - 12, 0);
            r.read_exact(&mut archive)?;
            let mut c = Cursor(&channel);
            return Ok(Frame::Records {
                channel: c.channel().ok_or_else(malformed)?,
                archive,
            });
        }
        if body_len > 64 << 10 {
            return Err(malformed());
        }
        let mut body = vec![0u8; body_len];
        r.read_exact(&mut body)?;
        let mut c = Cursor(&body);
        let frame = match kind {
            HELLO => {
                if c.take(8).ok_or_else(malformed)? != MAGIC {
                    return Err(malformed());
                }
                Frame::Hello {
                    version: c.u16().ok_or_else(malformed)?,
                    process: c.u32().ok_or_else(malformed)?,
                    processes: c.u32().ok_or_else(malformed)?,
                    parallelism: c.u32().ok_or_else(malformed)?,
                    nonce: c.array().ok_or_else(malformed)?,
                }
            }
            PROOF => Frame::Proof {
                mac: c.array().ok_or_else(malformed)?,
            },
            OPEN => Frame::Open {
                channel: c.channel().ok_or_else(malformed)?,
                credits: c.u32().ok_or_else(malformed)?,
            },
            CREDIT => Frame::Credit {
                channel: c.channel().ok_or_else(malformed)?,
                credits: c.u32().ok_or_else(malformed)?,
            },
            WATERMARK => Frame::Watermark {
                channel: c.channel().ok_or_else(malformed)?,
                watermark: c.u64().ok_or_else(malformed)?,
            },
            BARRIER => Frame::Barrier {
                channel: c.channel().ok_or_else(malformed)?,
                barrier: WireBarrier {
                    id: c.u64().ok_or_else(malformed)?,
                    trigger_ms: c.u64().ok_or_else(malformed)?,
                    mode: c.take(1).ok_or_else(malformed)?[0],
                    timeout_ms: c.u64().ok_or_else(malformed)?,
                },
            },
            END => Frame::End {
                channel: c.channel().ok_or_else(malformed)?,
            },
            NOTICE => Frame::Notice {
                channel: c.channel().ok_or_else(malformed)?,
                checkpoint_id: c.u64().ok_or_else(malformed)?,
                position: c.u64().ok_or_else(malformed)?,
            },
            ABORT => {
                let rest = c.take(c.0.len()).unwrap_or(&[]);
                Frame::Abort {
                    reason: String::from_utf8_lossy(rest).into_owned(),
                }
            }
            BYE => Frame::Bye,
            COORD => Frame::Coord {
                message: c.take(c.0.len()).unwrap_or(&[]).to_vec(),
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        if !c.0.is_empty() {
            return Err(malformed());
        }
        Ok(frame)
    }

    /// Writes the frame to `w` (tests and the handshake; the link batches
    /// frames in a buffer instead).
    pub(crate) fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let mut out = Vec::new();
        self.encode(&mut out);
        w.write_all(&out)
    }
}

/// Appends a records frame carrying `archive` (no copy of it but into
/// `out`).
pub(crate) fn encode_records(out: &mut Vec<u8>, channel: &ChannelId, archive: &[u8]) {
    let len = (1 + 12 + archive.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(RECORDS);
    put_channel(out, channel);
    out.extend_from_slice(archive);
}

fn put_channel(out: &mut Vec<u8>, channel: &ChannelId) {
    for v in [channel.exchange, channel.from, channel.to] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Reads fields off the front of a frame body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn channel(&mut self) -> Option<ChannelId> {
        Some(ChannelId {
            exchange: self.u32()?,
            from: self.u32()?,
            to: self.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn channel() -> ChannelId {
        ChannelId {
            exchange: 2,
            from: 5,
            to: 1,
        }
    }

    fn every_kind() -> Vec<Frame> {
        let mut archive = rkyv::util::AlignedVec::<16>::new();
        archive.extend_from_slice(&[1, 2, 3, 4, 5]);
        vec![
            Frame::Hello {
                version: VERSION,
                process: 1,
                processes: 3,
                parallelism: 2,
                nonce: [7; NONCE],
            },
            Frame::Proof { mac: [9; NONCE] },
            Frame::Open {
                channel: channel(),
                credits: 64,
            },
            Frame::Credit {
                channel: channel(),
                credits: 3,
            },
            Frame::Records {
                channel: channel(),
                archive,
            },
            Frame::Watermark {
                channel: channel(),
                watermark: u64::MAX,
            },
            Frame::Barrier {
                channel: channel(),
                barrier: WireBarrier {
                    id: 4,
                    trigger_ms: 5,
                    mode: 2,
                    timeout_ms: 6,
                },
            },
            Frame::End { channel: channel() },
            Frame::Notice {
                channel: channel(),
                checkpoint_id: 8,
                position: 99,
            },
            Frame::Abort {
                reason: "disk full".into(),
            },
            Frame::Bye,
            Frame::Coord {
                message: vec![7, 1, 2],
            },
        ]
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        let mut bytes = Vec::new();
        for frame in every_kind() {
            frame.encode(&mut bytes);
        }
        let mut r = &bytes[..];
        for frame in every_kind() {
            assert_eq!(
                format!("{:?}", Frame::read(&mut r).unwrap()),
                format!("{frame:?}")
            );
        }
        assert!(r.is_empty());
    }

    #[test]
    fn a_frame_cut_short_or_padded_is_an_error() {
        for frame in every_kind() {
            let mut bytes = Vec::new();
            frame.encode(&mut bytes);
            for cut in 0..bytes.len() {
                assert!(
                    Frame::read(&mut &bytes[..cut]).is_err(),
                    "{frame:?} cut at {cut}"
                );
            }
            if !matches!(
                frame,
                Frame::Records { .. } | Frame::Abort { .. } | Frame::Coord { .. }
            ) {
                // One more byte inside the frame's length.
                let mut long = bytes.clone();
                long.push(0);
                let len = u32::from_le_bytes(long[..4].try_into().unwrap()) + 1;
                long[..4].copy_from_slice(&len.to_le_bytes());
                assert!(
                    matches!(
                        Frame::read(&mut &long[..]),
                        Err(WireError::Malformed { .. })
                    ),
                    "{frame:?} padded"
                );
            }
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let mut bytes = (MAX_FRAME + 1).to_le_bytes().to_vec();
        bytes.push(RECORDS);
        assert!(matches!(
            Frame::read(&mut &bytes[..]),
            Err(WireError::TooLong(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = &bytes[..];
            while Frame::read(&mut r).is_ok() {}
        }
    }
}
