//! On-disk format: block framing for segment files and record framing for the
//! manifest, as pure functions over byte slices.
//!
//! This module owns every byte layout of the store (see `docs/storage-format.md`,
//! which must change together with this module and [`FORMAT_VERSION`]). It does no
//! I/O and keeps no state: encoders write into caller-provided buffers, decoders
//! take `&[u8]` read from disk and return a [`FormatError`] on any malformed
//! input. Decoders never panic and never allocate more than the input justifies.
//!
//! It knows nothing of what a block contains: a [`BlockKind`] is an opaque
//! number chosen by the engine.
//!
//! This file holds what blocks and manifest records share: the constants, the
//! errors, segment ids and block handles, the 32-byte [`Header`] and the padding
//! rules. The framing itself is in two submodules, re-exported here: `block`
//! (sealing, checking and scanning blocks in segment files) and `record` (manifest
//! records, batches, manifest decoding and file names).

use std::fmt;

mod block;
mod record;
#[cfg(test)]
mod tests;

pub use block::{check_block, scan_segment, seal_block, ScannedBlock, SegmentScan};
pub use record::{
    decode_manifest, encode_batch, is_manifest_tmp, manifest_file_name, manifest_tmp_name,
    parse_manifest_name, CheckpointRecord, ManifestRecord, ManifestScan,
};

/// Size of a page for O_DIRECT writes: every write offset and length is a multiple of it.
pub const PAGE_SIZE: usize = 4096;
/// Alignment of every block header and payload inside a segment file.
pub const PAYLOAD_ALIGN: usize = 16;
/// Size of the header in front of every block and every manifest record.
pub const HEADER_LEN: usize = 32;
/// Format version written in every header. Readers reject any other value.
pub const FORMAT_VERSION: u16 = 1;
/// Magic of a segment block header: `"SPBK"` little-endian.
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"SPBK");
/// Magic of a manifest record header: `"SPMF"` little-endian.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SPMF");
/// Largest payload of one block (1 GiB). Larger states must be split by the engine.
pub const MAX_PAYLOAD_LEN: usize = 1 << 30;
/// Largest manifest record payload (256 MiB).
pub const MAX_RECORD_LEN: usize = 1 << 28;

const _: () = assert!(
    HEADER_LEN % PAYLOAD_ALIGN == 0,
    "payload follows the header aligned"
);
const _: () = assert!(
    PAGE_SIZE % PAYLOAD_ALIGN == 0,
    "pages hold whole alignment units"
);
const _: () = assert!(PAGE_SIZE.is_power_of_two() && PAYLOAD_ALIGN.is_power_of_two());
const _: () = assert!(HEADER_LEN < PAGE_SIZE);
const _: () = assert!(MAX_PAYLOAD_LEN + HEADER_LEN + PAYLOAD_ALIGN <= u32::MAX as usize);
const _: () = assert!(BlockHandle::ENCODED_LEN == 24);

/// Rounds `v` up to a multiple of `align` (a power of two).
pub const fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

/// Bytes a block with a payload of `payload_len` bytes occupies in a segment:
/// header plus payload padded to [`PAYLOAD_ALIGN`].
pub const fn block_footprint(payload_len: u32) -> u64 {
    HEADER_LEN as u64 + align_up(payload_len as u64, PAYLOAD_ALIGN as u64)
}

/// What went wrong while decoding bytes read from disk. Carries no location: callers
/// wrap it with the segment or manifest and the offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: needed {needed} bytes, {available} available")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The magic number is wrong.
    #[error("bad magic {found:#010x}")]
    BadMagic {
        /// Value found.
        found: u32,
    },
    /// The format version is not [`FORMAT_VERSION`].
    #[error("unsupported format version {found}")]
    UnsupportedVersion {
        /// Value found.
        found: u16,
    },
    /// The header checksum does not match.
    #[error("header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// The payload checksum does not match.
    #[error("payload CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// An offset is not aligned as the format requires.
    #[error("offset {offset} is not {align}-byte aligned")]
    Misaligned {
        /// The offending offset.
        offset: u64,
        /// The alignment required.
        align: u64,
    },
    /// The header is valid but describes a different block than the handle.
    #[error("header does not match handle: found segment {found_segment}, kind {found_kind}, len {found_len}")]
    HandleMismatch {
        /// Segment id written in the header.
        found_segment: SegmentId,
        /// Kind written in the header.
        found_kind: BlockKind,
        /// Payload length written in the header.
        found_len: u32,
    },
    /// Bytes that must be zero (padding, reserved fields) are not.
    #[error("non-zero bytes in padding or reserved field")]
    NonZeroPadding,
    /// A field holds a value outside its range.
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
    /// A manifest record type this version does not know.
    #[error("unknown manifest record type {0}")]
    UnknownRecordType(u16),
    /// A manifest record sequence number is out of order.
    #[error("record sequence {found}, expected {expected}")]
    BadSequence {
        /// Sequence found.
        found: u64,
        /// Sequence expected.
        expected: u64,
    },
}

/// Opaque block kind chosen by the engine. Kind 0 is reserved (it marks padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKind(pub u16);

impl BlockKind {
    /// Full snapshot of a keyed state.
    pub const KEYED_STATE_FULL: BlockKind = BlockKind(1);
    /// Incremental delta of a keyed state.
    pub const KEYED_STATE_DELTA: BlockKind = BlockKind(2);
    /// Operator (non-keyed) state.
    pub const OPERATOR_STATE: BlockKind = BlockKind(3);
    /// In-flight channel records of an unaligned checkpoint.
    pub const IN_FLIGHT: BlockKind = BlockKind(4);
    /// Anything else; engines may use any non-zero value.
    pub const OTHER: BlockKind = BlockKind(0x100);
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies a segment file: the writer id in the top 16 bits, a per-writer
/// sequence number in the low 48 bits. See [`SegmentId::file_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId(pub u64);

/// Largest per-writer segment sequence number.
pub const MAX_SEGMENT_SEQUENCE: u64 = (1 << 48) - 1;

impl SegmentId {
    /// Builds an id from a writer id and a sequence number (at most [`MAX_SEGMENT_SEQUENCE`]).
    pub fn new(writer_id: u16, sequence: u64) -> SegmentId {
        assert!(
            sequence <= MAX_SEGMENT_SEQUENCE,
            "segment sequence overflow"
        );
        SegmentId((u64::from(writer_id) << 48) | sequence)
    }
    /// The writer (usually the core) that wrote this segment.
    pub fn writer_id(self) -> u16 {
        (self.0 >> 48) as u16
    }
    /// The writer's sequence number of this segment.
    pub fn sequence(self) -> u64 {
        self.0 & MAX_SEGMENT_SEQUENCE
    }
    /// File name: `seg-WWWW-SSSSSSSSSSSS.spseg` (writer id and sequence in lower-case hex).
    pub fn file_name(self) -> String {
        format!(
            "seg-{:04x}-{:012x}.spseg",
            self.writer_id(),
            self.sequence()
        )
    }
    /// Parses a name produced by [`SegmentId::file_name`]; `None` for any other name.
    pub fn parse_file_name(name: &str) -> Option<SegmentId> {
        let rest = name.strip_prefix("seg-")?.strip_suffix(".spseg")?;
        let (w, s) = rest.split_once('-')?;
        if w.len() != 4 || s.len() != 12 {
            return None;
        }
        if !w
            .bytes()
            .chain(s.bytes())
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let w = u16::from_str_radix(w, 16).ok()?;
        let s = u64::from_str_radix(s, 16).ok()?;
        Some(SegmentId::new(w, s))
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}-{:012x}", self.writer_id(), self.sequence())
    }
}

/// Names one block: segment, offset of its header in the segment file, payload
/// length and kind. `Copy`, with a stable 24-byte encoding so the engine can embed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHandle {
    /// Segment holding the block.
    pub segment: SegmentId,
    /// Offset of the block header in the segment file (multiple of 16).
    pub offset: u64,
    /// Payload length in bytes.
    pub len: u32,
    /// Kind given when the block was appended.
    pub kind: BlockKind,
}

impl BlockHandle {
    /// Length of [`BlockHandle::encode_into`]'s output.
    pub const ENCODED_LEN: usize = 24;

    /// Appends the 24-byte little-endian encoding: segment u64, offset u64, len u32,
    /// kind u16, reserved u16 (zero).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.segment.0.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.kind.0.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
    }

    /// Decodes exactly [`BlockHandle::ENCODED_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<BlockHandle, FormatError> {
        if bytes.len() != Self::ENCODED_LEN {
            return Err(FormatError::Truncated {
                needed: Self::ENCODED_LEN as u64,
                available: bytes.len() as u64,
            });
        }
        let mut r = Cursor::new(bytes);
        let segment = SegmentId(r.u64()?);
        let offset = r.u64()?;
        let len = r.u32()?;
        let kind = BlockKind(r.u16()?);
        if r.u16()? != 0 {
            return Err(FormatError::NonZeroPadding);
        }
        let h = BlockHandle {
            segment,
            offset,
            len,
            kind,
        };
        h.validate()?;
        Ok(h)
    }

    /// Checks the invariants every handle satisfies (alignment, length bound, kind non-zero).
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.offset % PAYLOAD_ALIGN as u64 != 0 {
            return Err(FormatError::Misaligned {
                offset: self.offset,
                align: PAYLOAD_ALIGN as u64,
            });
        }
        if self.len as usize > MAX_PAYLOAD_LEN {
            return Err(FormatError::InvalidField("block length above maximum"));
        }
        if self.kind.0 == 0 {
            return Err(FormatError::InvalidField("block kind 0 is reserved"));
        }
        if self.offset.checked_add(self.footprint()).is_none() {
            return Err(FormatError::InvalidField("block end overflows"));
        }
        Ok(())
    }

    /// Bytes the framed block occupies in its segment.
    pub fn footprint(&self) -> u64 {
        block_footprint(self.len)
    }
}

/// Little-endian reader over a byte slice that fails instead of panicking.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(FormatError::Truncated {
                needed: (self.pos as u64).saturating_add(n as u64),
                available: self.bytes.len() as u64,
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

/// The 32-byte header shared by blocks and manifest records (see the spec for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// [`BLOCK_MAGIC`] or [`RECORD_MAGIC`].
    pub magic: u32,
    /// Block kind or manifest record type.
    pub kind: u16,
    /// Payload length.
    pub len: u32,
    /// CRC32 of the payload.
    pub payload_crc: u32,
    /// Segment id (blocks) or record sequence number (manifest).
    pub tag: u64,
}

impl Header {
    /// Encodes the header, computing its own CRC.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&self.magic.to_le_bytes());
        h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&self.kind.to_le_bytes());
        h[8..12].copy_from_slice(&self.len.to_le_bytes());
        h[12..16].copy_from_slice(&self.payload_crc.to_le_bytes());
        h[16..24].copy_from_slice(&self.tag.to_le_bytes());
        // 24..28 reserved, zero.
        let crc = crc32fast::hash(&h[0..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header (magic, version, reserved bytes, header CRC).
    pub fn decode(bytes: &[u8], magic: u32) -> Result<Header, FormatError> {
        let mut r = Cursor::new(bytes);
        let raw = r.take(HEADER_LEN)?;
        let found_magic = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if found_magic != magic {
            return Err(FormatError::BadMagic { found: found_magic });
        }
        let stored = u32::from_le_bytes([raw[28], raw[29], raw[30], raw[31]]);
        let computed = crc32fast::hash(&raw[0..28]);
        if stored != computed {
            return Err(FormatError::HeaderCrc { stored, computed });
        }
        let mut r = Cursor::new(&raw[4..28]);
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { found: version });
        }
        let kind = r.u16()?;
        let len = r.u32()?;
        let payload_crc = r.u32()?;
        let tag = r.u64()?;
        if r.u32()? != 0 {
            return Err(FormatError::NonZeroPadding);
        }
        Ok(Header {
            magic,
            kind,
            len,
            payload_crc,
            tag,
        })
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// End of the page holding `pos` (or `len`, whichever comes first).
fn page_end_after(pos: usize, len: usize) -> usize {
    (align_up(pos as u64 + 1, PAGE_SIZE as u64) as usize).min(len)
}

/// Whether `pos` (16-byte aligned) starts the zero padding that ends a batch or chunk
/// rather than a header. Only the bytes up to the end of the page count: padding may
/// be as short as one 16-byte step, and the next page may start with a header, so
/// looking at a whole header's width there would read into that header. A real
/// header never starts with zeros (its magic comes first), so this cannot mistake one.
fn padding_at(bytes: &[u8], pos: usize) -> bool {
    let end = (pos + HEADER_LEN).min(page_end_after(pos, bytes.len()));
    is_zero(&bytes[pos..end])
}
