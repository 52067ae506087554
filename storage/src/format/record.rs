//! Record framing of the manifest log: the records ([`ManifestRecord`],
//! [`CheckpointRecord`]) and their payload encodings, batches of records padded to
//! whole pages, decoding a manifest file's longest valid prefix, and the names of
//! manifest files. Pure functions over byte slices; the layout is that of
//! `docs/storage-format.md` §3, with the header shared with blocks
//! ([`Header`]).

use super::{
    align_up, is_zero, padding_at, page_end_after, BlockHandle, Cursor, FormatError, Header,
    SegmentId, HEADER_LEN, MAX_RECORD_LEN, PAGE_SIZE, PAYLOAD_ALIGN, RECORD_MAGIC,
};

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
