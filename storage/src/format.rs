//! On-disk format: block framing for segment files and record framing for the
//! manifest, as pure functions over byte slices.
//!
//! This module owns every byte layout of the store (see `docs/storage-format.md`,
//! which must change together with this file and [`FORMAT_VERSION`]). It does no
//! I/O and keeps no state: encoders write into caller-provided buffers, decoders
//! take `&[u8]` read from disk and return a [`FormatError`] on any malformed
//! input. Decoders never panic and never allocate more than the input justifies.
//!
//! It knows nothing of what a block contains: a [`BlockKind`] is an opaque
//! number chosen by the engine.

use std::fmt;
use std::ops::Range;

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

/// Writes a framed block (header, payload already in place, zero padding) into
/// `buf`, which must hold exactly `block_footprint(payload_len)` bytes whose payload
/// part `[HEADER_LEN..HEADER_LEN + payload_len]` the caller has filled.
/// Returns the payload CRC.
pub fn seal_block(buf: &mut [u8], segment: SegmentId, kind: BlockKind, payload_len: u32) -> u32 {
    assert_eq!(
        buf.len() as u64,
        block_footprint(payload_len),
        "block buffer size"
    );
    assert!(kind.0 != 0, "block kind 0 is reserved");
    assert!(
        payload_len as usize <= MAX_PAYLOAD_LEN,
        "block payload too large"
    );
    let end = HEADER_LEN + payload_len as usize;
    buf[end..].fill(0);
    let payload_crc = crc32fast::hash(&buf[HEADER_LEN..end]);
    let header = Header {
        magic: BLOCK_MAGIC,
        kind: kind.0,
        len: payload_len,
        payload_crc,
        tag: segment.0,
    };
    buf[..HEADER_LEN].copy_from_slice(&header.encode());
    // Pair assertion: what we are about to write decodes back to the same header.
    let back =
        Header::decode(&buf[..HEADER_LEN], BLOCK_MAGIC).expect("freshly encoded header decodes");
    assert_eq!(back, header);
    payload_crc
}

/// Checks the block named by `handle` inside `segment_bytes` (the whole segment
/// file starting at offset 0) and returns the payload's byte range.
/// `check_crc` false skips the payload CRC (for blocks already verified once).
pub fn check_block(
    segment_bytes: &[u8],
    handle: &BlockHandle,
    check_crc: bool,
) -> Result<Range<usize>, FormatError> {
    handle.validate()?;
    let available = segment_bytes.len() as u64;
    let end = handle.offset + handle.footprint();
    if end > available {
        return Err(FormatError::Truncated {
            needed: end,
            available,
        });
    }
    let start = handle.offset as usize;
    let header = Header::decode(&segment_bytes[start..start + HEADER_LEN], BLOCK_MAGIC)?;
    if header.tag != handle.segment.0 || header.kind != handle.kind.0 || header.len != handle.len {
        return Err(FormatError::HandleMismatch {
            found_segment: SegmentId(header.tag),
            found_kind: BlockKind(header.kind),
            found_len: header.len,
        });
    }
    let payload = start + HEADER_LEN..start + HEADER_LEN + handle.len as usize;
    if !is_zero(&segment_bytes[payload.end..end as usize]) {
        return Err(FormatError::NonZeroPadding);
    }
    if check_crc {
        let computed = crc32fast::hash(&segment_bytes[payload.clone()]);
        if computed != header.payload_crc {
            return Err(FormatError::PayloadCrc {
                stored: header.payload_crc,
                computed,
            });
        }
    }
    Ok(payload)
}

/// A block found by [`scan_segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedBlock {
    /// Handle of the block (valid header, payload CRC checked).
    pub handle: BlockHandle,
}

/// Result of scanning a whole segment file: every valid block and every problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// Blocks whose header and payload are intact, in file order.
    pub blocks: Vec<ScannedBlock>,
    /// Problems as (offset, what), in file order.
    pub problems: Vec<(u64, FormatError)>,
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

/// Scans a whole segment file, decoding as much as possible from a damaged one:
/// after a bad header it resynchronises on the next 16-byte position that holds a
/// valid header. `segment` is the id the file name claims (checked against headers).
pub fn scan_segment(bytes: &[u8], segment: SegmentId) -> SegmentScan {
    let mut scan = SegmentScan::default();
    let len = bytes.len();
    let mut pos = 0usize;
    while pos + HEADER_LEN <= len {
        let raw = &bytes[pos..pos + HEADER_LEN];
        if padding_at(bytes, pos) {
            // Padding: the rest of this page must be zero too.
            let page_end = page_end_after(pos, len);
            if !is_zero(&bytes[pos..page_end]) {
                scan.problems
                    .push((pos as u64, FormatError::NonZeroPadding));
                pos = resync(bytes, pos + PAYLOAD_ALIGN);
                continue;
            }
            pos = page_end;
            continue;
        }
        match Header::decode(raw, BLOCK_MAGIC) {
            Err(e) => {
                scan.problems.push((pos as u64, e));
                pos = resync(bytes, pos + PAYLOAD_ALIGN);
            }
            Ok(h) => {
                let handle = BlockHandle {
                    segment,
                    offset: pos as u64,
                    len: h.len,
                    kind: BlockKind(h.kind),
                };
                match check_block(bytes, &handle, true) {
                    Ok(_) => {
                        scan.blocks.push(ScannedBlock { handle });
                        pos += handle.footprint() as usize;
                    }
                    Err(e) => {
                        scan.problems.push((pos as u64, e));
                        pos = resync(bytes, pos + PAYLOAD_ALIGN);
                    }
                }
            }
        }
    }
    if pos < len && !is_zero(&bytes[pos..]) {
        scan.problems.push((
            pos as u64,
            FormatError::Truncated {
                needed: HEADER_LEN as u64,
                available: (len - pos) as u64,
            },
        ));
    }
    scan
}

/// Next 16-byte aligned position at or after `from` holding a decodable block header or
/// the start of a zero page; `bytes.len()` if none.
fn resync(bytes: &[u8], from: usize) -> usize {
    let mut pos = align_up(from as u64, PAYLOAD_ALIGN as u64) as usize;
    while pos + HEADER_LEN <= bytes.len() {
        let raw = &bytes[pos..pos + HEADER_LEN];
        if Header::decode(raw, BLOCK_MAGIC).is_ok() {
            return pos;
        }
        if pos % PAGE_SIZE == 0 && is_zero(raw) {
            return pos;
        }
        pos += PAYLOAD_ALIGN;
    }
    bytes.len()
}

/// One checkpoint as committed to the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Checkpoint id; strictly increasing across commits.
    pub id: u64,
    /// Wall-clock time of the checkpoint, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Opaque engine payload. It must refer to blocks by index into `handles`,
    /// never by raw handle: compaction rewrites `handles`, not `metadata`.
    pub metadata: Vec<u8>,
    /// Every block the checkpoint needs.
    pub handles: Vec<BlockHandle>,
}

/// One record of the manifest log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestRecord {
    /// A checkpoint completed; the durable append of this record is its commit point.
    CheckpointCompleted(CheckpointRecord),
    /// A completed checkpoint left the retained set.
    CheckpointDiscarded {
        /// Its id.
        id: u64,
    },
    /// These segments are (about to be) deleted; they must not be referenced any more.
    SegmentsDeleted {
        /// The segments.
        segments: Vec<SegmentId>,
    },
    /// Compaction moved blocks: every retained reference to `.0` now means `.1`.
    HandlesRelocated {
        /// (old, new) pairs.
        moves: Vec<(BlockHandle, BlockHandle)>,
    },
}

const REC_COMPLETED: u16 = 1;
const REC_DISCARDED: u16 = 2;
const REC_SEGMENTS_DELETED: u16 = 3;
const REC_RELOCATED: u16 = 4;

impl ManifestRecord {
    fn record_type(&self) -> u16 {
        match self {
            ManifestRecord::CheckpointCompleted(_) => REC_COMPLETED,
            ManifestRecord::CheckpointDiscarded { .. } => REC_DISCARDED,
            ManifestRecord::SegmentsDeleted { .. } => REC_SEGMENTS_DELETED,
            ManifestRecord::HandlesRelocated { .. } => REC_RELOCATED,
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            ManifestRecord::CheckpointCompleted(c) => {
                out.extend_from_slice(&c.id.to_le_bytes());
                out.extend_from_slice(&c.timestamp_ms.to_le_bytes());
                out.extend_from_slice(
                    &u32::try_from(c.metadata.len())
                        .expect("metadata too large")
                        .to_le_bytes(),
                );
                out.extend_from_slice(
                    &u32::try_from(c.handles.len())
                        .expect("too many handles")
                        .to_le_bytes(),
                );
                out.extend_from_slice(&c.metadata);
                for h in &c.handles {
                    h.encode_into(out);
                }
            }
            ManifestRecord::CheckpointDiscarded { id } => out.extend_from_slice(&id.to_le_bytes()),
            ManifestRecord::SegmentsDeleted { segments } => {
                out.extend_from_slice(
                    &u32::try_from(segments.len())
                        .expect("too many segments")
                        .to_le_bytes(),
                );
                out.extend_from_slice(&0u32.to_le_bytes());
                for s in segments {
                    out.extend_from_slice(&s.0.to_le_bytes());
                }
            }
            ManifestRecord::HandlesRelocated { moves } => {
                out.extend_from_slice(
                    &u32::try_from(moves.len())
                        .expect("too many moves")
                        .to_le_bytes(),
                );
                out.extend_from_slice(&0u32.to_le_bytes());
                for (old, new) in moves {
                    old.encode_into(out);
                    new.encode_into(out);
                }
            }
        }
    }

    /// Decodes a record payload of the given type. Strict: every byte must be consumed.
    pub fn decode_payload(record_type: u16, payload: &[u8]) -> Result<ManifestRecord, FormatError> {
        let mut r = Cursor::new(payload);
        let rec = match record_type {
            REC_COMPLETED => {
                let id = r.u64()?;
                let timestamp_ms = r.u64()?;
                let meta_len = r.u32()? as usize;
                let count = r.u32()? as usize;
                let metadata = r.take(meta_len)?.to_vec();
                let need = count
                    .checked_mul(BlockHandle::ENCODED_LEN)
                    .ok_or(FormatError::InvalidField("handle count"))?;
                if need != r.remaining() {
                    return Err(FormatError::InvalidField("handle list length"));
                }
                let mut handles = Vec::with_capacity(count);
                for _ in 0..count {
                    handles.push(BlockHandle::decode(r.take(BlockHandle::ENCODED_LEN)?)?);
                }
                ManifestRecord::CheckpointCompleted(CheckpointRecord {
                    id,
                    timestamp_ms,
                    metadata,
                    handles,
                })
            }
            REC_DISCARDED => ManifestRecord::CheckpointDiscarded { id: r.u64()? },
            REC_SEGMENTS_DELETED => {
                let count = r.u32()? as usize;
                if r.u32()? != 0 {
                    return Err(FormatError::NonZeroPadding);
                }
                if count.checked_mul(8) != Some(r.remaining()) {
                    return Err(FormatError::InvalidField("segment list length"));
                }
                let mut segments = Vec::with_capacity(count);
                for _ in 0..count {
                    segments.push(SegmentId(r.u64()?));
                }
                ManifestRecord::SegmentsDeleted { segments }
            }
            REC_RELOCATED => {
                let count = r.u32()? as usize;
                if r.u32()? != 0 {
                    return Err(FormatError::NonZeroPadding);
                }
                if count.checked_mul(2 * BlockHandle::ENCODED_LEN) != Some(r.remaining()) {
                    return Err(FormatError::InvalidField("move list length"));
                }
                let mut moves = Vec::with_capacity(count);
                for _ in 0..count {
                    let old = BlockHandle::decode(r.take(BlockHandle::ENCODED_LEN)?)?;
                    let new = BlockHandle::decode(r.take(BlockHandle::ENCODED_LEN)?)?;
                    if old.len != new.len || old.kind != new.kind {
                        return Err(FormatError::InvalidField(
                            "relocation changes length or kind",
                        ));
                    }
                    moves.push((old, new));
                }
                ManifestRecord::HandlesRelocated { moves }
            }
            other => return Err(FormatError::UnknownRecordType(other)),
        };
        if r.remaining() != 0 {
            return Err(FormatError::InvalidField("trailing bytes in record"));
        }
        Ok(rec)
    }
}

/// Encodes `records` as one manifest batch starting at sequence number `first_seq`:
/// records at 16-byte aligned positions, the batch zero-padded to a whole page.
/// The result's length is a non-zero multiple of [`PAGE_SIZE`].
pub fn encode_batch(records: &[ManifestRecord], first_seq: u64) -> Vec<u8> {
    assert!(!records.is_empty(), "empty manifest batch");
    let mut out = Vec::new();
    let mut payload = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        payload.clear();
        rec.encode_payload(&mut payload);
        assert!(payload.len() <= MAX_RECORD_LEN, "manifest record too large");
        let header = Header {
            magic: RECORD_MAGIC,
            kind: rec.record_type(),
            len: payload.len() as u32,
            payload_crc: crc32fast::hash(&payload),
            tag: first_seq + i as u64,
        };
        let start = out.len();
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&payload);
        out.resize(align_up(out.len() as u64, PAYLOAD_ALIGN as u64) as usize, 0);
        // Pair assertion: the record decodes back to itself before it is written.
        let (back, _) =
            decode_record_at(&out, start, first_seq + i as u64).expect("fresh record decodes");
        assert_eq!(&back, rec);
    }
    out.resize(align_up(out.len() as u64, PAGE_SIZE as u64) as usize, 0);
    out
}

/// Decodes the record at `pos`, expecting sequence `seq`; returns it and the position
/// just after it (16-byte aligned).
fn decode_record_at(
    bytes: &[u8],
    pos: usize,
    seq: u64,
) -> Result<(ManifestRecord, usize), FormatError> {
    let avail = bytes.len().saturating_sub(pos);
    if avail < HEADER_LEN {
        return Err(FormatError::Truncated {
            needed: HEADER_LEN as u64,
            available: avail as u64,
        });
    }
    let h = Header::decode(&bytes[pos..pos + HEADER_LEN], RECORD_MAGIC)?;
    if h.len as usize > MAX_RECORD_LEN {
        return Err(FormatError::InvalidField("record length above maximum"));
    }
    let end = pos + HEADER_LEN + h.len as usize;
    if end > bytes.len() {
        return Err(FormatError::Truncated {
            needed: (end - pos) as u64,
            available: avail as u64,
        });
    }
    let payload = &bytes[pos + HEADER_LEN..end];
    let computed = crc32fast::hash(payload);
    if computed != h.payload_crc {
        return Err(FormatError::PayloadCrc {
            stored: h.payload_crc,
            computed,
        });
    }
    if h.tag != seq {
        return Err(FormatError::BadSequence {
            found: h.tag,
            expected: seq,
        });
    }
    let rec = ManifestRecord::decode_payload(h.kind, payload)?;
    let next = align_up(end as u64, PAYLOAD_ALIGN as u64) as usize;
    if !is_zero(&bytes[end..next.min(bytes.len())]) {
        return Err(FormatError::NonZeroPadding);
    }
    Ok((rec, next))
}

/// Result of decoding a manifest file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestScan {
    /// The valid prefix of records, in log order.
    pub records: Vec<ManifestRecord>,
    /// File offset of each record in `records`.
    pub record_offsets: Vec<u64>,
    /// Bytes of the valid prefix, rounded up to a page: where the next batch goes.
    pub valid_len: u64,
    /// Where and why decoding stopped early, if it did (torn or corrupt tail).
    pub tail_error: Option<(u64, FormatError)>,
    /// Whether a decodable record exists after the point where decoding stopped
    /// (mid-log corruption rather than a torn tail).
    pub later_valid_records: bool,
}

/// Decodes a manifest file: the longest valid prefix of records. Never panics.
pub fn decode_manifest(bytes: &[u8]) -> ManifestScan {
    let mut scan = ManifestScan::default();
    let mut pos = 0usize;
    let mut seq = 0u64;
    let len = bytes.len();
    loop {
        if pos >= len {
            break;
        }
        if padding_at(bytes, pos) {
            // End of a batch: the rest of the page must be zero.
            let page_end = page_end_after(pos, len);
            if !is_zero(&bytes[pos..page_end]) {
                scan.tail_error = Some((pos as u64, FormatError::NonZeroPadding));
                break;
            }
            if page_end == len || is_zero(&bytes[page_end..(page_end + HEADER_LEN).min(len)]) {
                // Nothing after this page (or only zeros): end of log.
                if !is_zero(&bytes[page_end..]) {
                    scan.tail_error = Some((page_end as u64, FormatError::NonZeroPadding));
                }
                break;
            }
            pos = page_end;
            continue;
        }
        match decode_record_at(bytes, pos, seq) {
            Ok((rec, next)) => {
                scan.records.push(rec);
                scan.record_offsets.push(pos as u64);
                seq += 1;
                pos = next;
                scan.valid_len = align_up(pos as u64, PAGE_SIZE as u64);
            }
            Err(e) => {
                scan.tail_error = Some((pos as u64, e));
                break;
            }
        }
    }
    if let Some((at, _)) = scan.tail_error {
        // Look for any decodable record header after the damage, on 16-byte steps.
        let mut p = align_up(at + PAYLOAD_ALIGN as u64, PAYLOAD_ALIGN as u64) as usize;
        while p + HEADER_LEN <= len {
            if Header::decode(&bytes[p..p + HEADER_LEN], RECORD_MAGIC).is_ok() {
                scan.later_valid_records = true;
                break;
            }
            p += PAYLOAD_ALIGN;
        }
    }
    scan
}

/// Name of manifest generation `generation`: `MANIFEST-GGGGGGGGGGGGGGGG` (hex).
pub fn manifest_file_name(generation: u64) -> String {
    format!("MANIFEST-{generation:016x}")
}

/// Name of the temporary file a manifest generation is written under before its rename.
pub fn manifest_tmp_name(generation: u64) -> String {
    format!("MANIFEST-{generation:016x}.tmp")
}

/// Parses a manifest file name into its generation; `None` for other names (and temps).
pub fn parse_manifest_name(name: &str) -> Option<u64> {
    let g = name.strip_prefix("MANIFEST-")?;
    if g.len() != 16 || !g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(g, 16).ok()
}

/// Whether `name` is a leftover temporary manifest.
pub fn is_manifest_tmp(name: &str) -> bool {
    name.starts_with("MANIFEST-") && name.ends_with(".tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seg: SegmentId, kind: BlockKind, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; block_footprint(payload.len() as u32) as usize];
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        seal_block(&mut buf, seg, kind, payload.len() as u32);
        buf
    }

    #[test]
    fn block_roundtrip_and_scan() {
        let seg = SegmentId::new(3, 7);
        let mut file = block(seg, BlockKind(5), b"hello world");
        let second_off = file.len() as u64;
        file.extend(block(seg, BlockKind::IN_FLIGHT, &[9u8; 100]));
        file.resize(PAGE_SIZE, 0);
        let h = BlockHandle {
            segment: seg,
            offset: 0,
            len: 11,
            kind: BlockKind(5),
        };
        let r = check_block(&file, &h, true).unwrap();
        assert_eq!(&file[r], b"hello world");
        let scan = scan_segment(&file, seg);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(scan.blocks.len(), 2);
        assert_eq!(scan.blocks[1].handle.offset, second_off);
        file[HEADER_LEN + 3] ^= 1;
        assert!(matches!(
            check_block(&file, &h, true),
            Err(FormatError::PayloadCrc { .. })
        ));
        let scan = scan_segment(&file, seg);
        assert_eq!(
            scan.blocks.len(),
            1,
            "second block still found after resync"
        );
        assert_eq!(scan.problems.len(), 1);
    }

    #[test]
    fn handle_encoding_is_stable() {
        let h = BlockHandle {
            segment: SegmentId::new(1, 2),
            offset: 4096,
            len: 77,
            kind: BlockKind(3),
        };
        let mut v = Vec::new();
        h.encode_into(&mut v);
        assert_eq!(v.len(), BlockHandle::ENCODED_LEN);
        assert_eq!(
            v,
            [
                2, 0, 0, 0, 0, 0, 1, 0, // segment
                0, 16, 0, 0, 0, 0, 0, 0, // offset
                77, 0, 0, 0, // len
                3, 0, 0, 0 // kind, reserved
            ]
        );
        assert_eq!(BlockHandle::decode(&v).unwrap(), h);
    }

    #[test]
    fn names_roundtrip() {
        let s = SegmentId::new(0xbeef, 0x1234_5678_9abc);
        assert_eq!(SegmentId::parse_file_name(&s.file_name()), Some(s));
        assert_eq!(SegmentId::parse_file_name("seg-00-1.spseg"), None);
        assert_eq!(parse_manifest_name(&manifest_file_name(42)), Some(42));
        assert_eq!(parse_manifest_name(&manifest_tmp_name(42)), None);
        assert!(is_manifest_tmp(&manifest_tmp_name(42)));
    }

    #[test]
    fn manifest_batches_decode_and_torn_tail_is_cut() {
        let c = CheckpointRecord {
            id: 1,
            timestamp_ms: 99,
            metadata: b"meta".to_vec(),
            handles: vec![BlockHandle {
                segment: SegmentId::new(0, 0),
                offset: 0,
                len: 3,
                kind: BlockKind(1),
            }],
        };
        let mut log = encode_batch(&[ManifestRecord::CheckpointCompleted(c.clone())], 0);
        let c2 = CheckpointRecord { id: 2, ..c.clone() };
        let b2 = encode_batch(
            &[
                ManifestRecord::CheckpointCompleted(c2),
                ManifestRecord::CheckpointDiscarded { id: 1 },
            ],
            1,
        );
        log.extend_from_slice(&b2);
        let scan = decode_manifest(&log);
        assert_eq!(scan.records.len(), 3);
        assert!(scan.tail_error.is_none());
        assert_eq!(scan.valid_len, 2 * PAGE_SIZE as u64);
        // Tear the second batch.
        let mut torn = log.clone();
        torn[PAGE_SIZE + 40] ^= 0xff;
        let scan = decode_manifest(&torn);
        assert_eq!(scan.records, vec![ManifestRecord::CheckpointCompleted(c)]);
        assert!(scan.tail_error.is_some());
        assert!(
            scan.later_valid_records,
            "the discard record after the damage is still decodable"
        );
    }

    /// A batch (or chunk) may end one 16-byte step before a page boundary, with the
    /// next one starting on that boundary: the padding is shorter than a header there,
    /// and must not be read together with the next header (which once made a valid
    /// manifest look damaged mid-log after every such batch).
    #[test]
    fn every_padding_length_is_recognised() {
        for n in 0..=520u64 {
            let first = ManifestRecord::SegmentsDeleted {
                segments: (0..n).map(|i| SegmentId::new(1, i)).collect(),
            };
            let second = ManifestRecord::CheckpointDiscarded { id: 7 };
            let mut log = encode_batch(std::slice::from_ref(&first), 0);
            log.extend_from_slice(&encode_batch(std::slice::from_ref(&second), 1));
            let scan = decode_manifest(&log);
            assert_eq!(scan.tail_error, None, "{n} segments");
            assert_eq!(scan.records, vec![first, second], "{n} segments");
        }
        let seg = SegmentId::new(2, 9);
        for payload in (0..2 * PAGE_SIZE).step_by(PAYLOAD_ALIGN) {
            let mut file = block(seg, BlockKind(3), &vec![0xab; payload]);
            let second_off = align_up(file.len() as u64, PAGE_SIZE as u64);
            file.resize(second_off as usize, 0);
            file.extend(block(seg, BlockKind(4), b"next"));
            let scan = scan_segment(&file, seg);
            assert!(scan.problems.is_empty(), "{payload}: {:?}", scan.problems);
            assert_eq!(scan.blocks.len(), 2, "{payload}");
            assert_eq!(scan.blocks[1].handle.offset, second_off, "{payload}");
        }
    }
}
