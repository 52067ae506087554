//! Object names of the remote tier and the byte format of a remote checkpoint
//! record (`docs/storage-format.md` §8). Pure functions; decoding never panics.
//!
//! Under the URL's prefix:
//! - `checkpoints/CCCCCCCCCCCCCCCCCCCC`: the record of checkpoint `C` (20 decimal
//!   digits, so names sort by id), written create-only: its existence is the
//!   remote commit point.
//! - `extents/TTTTTTTTTTTTTTTT/SSSSSSSSSSSSSSSS-BBBBBBBBBBBBBBBB-EEEEEEEEEEEEEEEE`:
//!   bytes `[B, E)` of local segment `S`, uploaded by the writer whose random
//!   upload token is `T` (all hex). Immutable once written.
//! - `multipart/TTTTTTTTTTTTTTTT-N`: a marker naming an extent key and the id of a
//!   multipart upload in progress, deleted once the upload completed or aborted.

use crate::format::{self, BlockHandle, CheckpointRecord, ManifestRecord, SegmentId};

/// Prefix of checkpoint records.
pub const CHECKPOINTS_DIR: &str = "checkpoints/";
/// Prefix of extents.
pub const EXTENTS_DIR: &str = "extents/";
/// Prefix of multipart markers.
pub const MULTIPART_DIR: &str = "multipart/";

const RECORD_MAGIC: &[u8; 4] = b"SPRC";
const RECORD_VERSION: u16 = 1;
const RECORD_HEADER_LEN: usize = 16;
/// Largest record accepted when decoding.
pub const MAX_RECORD_BYTES: usize = 1 << 28;

/// Key of the record of checkpoint `id`.
pub fn checkpoint_key(id: u64) -> String {
    format!("{CHECKPOINTS_DIR}{id:020}")
}

/// The checkpoint id of a record key; `None` for any other key.
pub fn parse_checkpoint_key(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(CHECKPOINTS_DIR)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A contiguous byte range of a local segment, stored as one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Extent {
    /// The object's key.
    pub key: String,
    /// The segment.
    pub segment: SegmentId,
    /// First byte (segment offset).
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Extent {
    /// The extent of `[start, end)` of `segment` uploaded under `token`.
    pub fn new(token: &str, segment: SegmentId, start: u64, end: u64) -> Extent {
        assert!(start < end, "empty extent");
        Extent {
            key: format!(
                "{EXTENTS_DIR}{token}/{:016x}-{start:016x}-{end:016x}",
                segment.0
            ),
            segment,
            start,
            end,
        }
    }

    /// Parses an extent key; `None` for any other key.
    pub fn parse_key(key: &str) -> Option<Extent> {
        let rest = key.strip_prefix(EXTENTS_DIR)?;
        let (token, name) = rest.split_once('/')?;
        if token.is_empty() || token.contains('/') {
            return None;
        }
        let mut it = name.split('-');
        let mut hex = || {
            let s = it.next()?;
            (s.len() == 16)
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        let (segment, start, end) = (hex()?, hex()?, hex()?);
        if it.next().is_some() || start >= end {
            return None;
        }
        Some(Extent {
            key: key.to_owned(),
            segment: SegmentId(segment),
            start,
            end,
        })
    }

    /// Whether the extent holds every byte of `handle`'s footprint.
    pub fn covers(&self, handle: &BlockHandle) -> bool {
        handle.segment == self.segment
            && handle.offset >= self.start
            && handle.offset + handle.footprint() <= self.end
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the extent is empty (never, for a constructed one).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// A committed remote checkpoint: the local checkpoint record and the extents that
/// hold every block it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRecord {
    /// The checkpoint, as committed to the local manifest.
    pub checkpoint: CheckpointRecord,
    /// Extents covering every handle of `checkpoint`.
    pub extents: Vec<Extent>,
}

/// Why a remote record did not decode.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// Too short, wrong magic, unknown version or a length past the end.
    #[error("bad record header: {0}")]
    Header(&'static str),
    /// The body's CRC does not match.
    #[error("record checksum mismatch")]
    Crc,
    /// The body is malformed.
    #[error("bad record body: {0}")]
    Body(String),
    /// A handle is covered by no extent.
    #[error("block at segment {segment} offset {offset} is covered by no extent")]
    Uncovered {
        /// The segment.
        segment: SegmentId,
        /// The block's offset.
        offset: u64,
    },
}

impl RemoteRecord {
    /// The extent holding `handle`, if any.
    pub fn extent_for(&self, handle: &BlockHandle) -> Option<&Extent> {
        self.extents.iter().find(|e| e.covers(handle))
    }

    /// Encodes the record: a 16-byte header (magic `SPRC`, version, body length,
    /// CRC-32 of the body) and the body.
    pub fn encode(&self) -> Vec<u8> {
        let manifest = format::encode_batch(
            &[ManifestRecord::CheckpointCompleted(self.checkpoint.clone())],
            0,
        );
        let mut body = Vec::with_capacity(manifest.len() + 64 * self.extents.len() + 8);
        body.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        body.extend_from_slice(&manifest);
        body.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            let key = e.key.as_bytes();
            assert!(key.len() <= u16::MAX as usize, "extent key too long");
            body.extend_from_slice(&(key.len() as u16).to_le_bytes());
            body.extend_from_slice(key);
            body.extend_from_slice(&e.segment.0.to_le_bytes());
            body.extend_from_slice(&e.start.to_le_bytes());
            body.extend_from_slice(&e.end.to_le_bytes());
        }
        let mut out = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes and checks a record: every handle must be covered by an extent.
    pub fn decode(bytes: &[u8]) -> Result<RemoteRecord, RecordError> {
        if bytes.len() < RECORD_HEADER_LEN {
            return Err(RecordError::Header("shorter than a header"));
        }
        if &bytes[0..4] != RECORD_MAGIC {
            return Err(RecordError::Header("wrong magic"));
        }
        let u16_at = |p: usize| u16::from_le_bytes([bytes[p], bytes[p + 1]]);
        let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes"));
        if u16_at(4) != RECORD_VERSION {
            return Err(RecordError::Header("unknown version"));
        }
        if u16_at(6) != 0 {
            return Err(RecordError::Header("reserved field not zero"));
        }
        let len = u32_at(8) as usize;
        if len > MAX_RECORD_BYTES || RECORD_HEADER_LEN + len != bytes.len() {
            return Err(RecordError::Header("body length does not match the object"));
        }
        let body = &bytes[RECORD_HEADER_LEN..];
        if crc32fast::hash(body) != u32_at(12) {
            return Err(RecordError::Crc);
        }
        let mut cur = Reader {
            bytes: body,
            pos: 0,
        };
        let manifest_len = cur.u32()? as usize;
        let manifest = cur.take(manifest_len)?;
        let scan = format::decode_manifest(manifest);
        if let Some((at, e)) = scan.tail_error {
            return Err(RecordError::Body(format!("checkpoint at {at}: {e}")));
        }
        let checkpoint = match scan.records.as_slice() {
            [ManifestRecord::CheckpointCompleted(c)] => c.clone(),
            _ => return Err(RecordError::Body("not exactly one checkpoint".into())),
        };
        let n = cur.u32()? as usize;
        let mut extents = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let key_len = cur.u16()? as usize;
            let key = std::str::from_utf8(cur.take(key_len)?)
                .map_err(|_| RecordError::Body("extent key is not UTF-8".into()))?
                .to_owned();
            let (segment, start, end) = (cur.u64()?, cur.u64()?, cur.u64()?);
            let parsed = Extent::parse_key(&key)
                .ok_or_else(|| RecordError::Body(format!("bad extent key {key:?}")))?;
            if parsed.segment.0 != segment || parsed.start != start || parsed.end != end {
                return Err(RecordError::Body(format!(
                    "extent {key:?} disagrees with its key"
                )));
            }
            extents.push(parsed);
        }
        if cur.pos != body.len() {
            return Err(RecordError::Body("trailing bytes".into()));
        }
        let record = RemoteRecord {
            checkpoint,
            extents,
        };
        for h in &record.checkpoint.handles {
            if record.extent_for(h).is_none() {
                return Err(RecordError::Uncovered {
                    segment: h.segment,
                    offset: h.offset,
                });
            }
        }
        Ok(record)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| RecordError::Body("truncated".into()))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// Key of the multipart marker `n` of writer `token`.
pub fn multipart_marker_key(token: &str, n: u64) -> String {
    format!("{MULTIPART_DIR}{token}-{n:016x}")
}

/// Encodes a multipart marker: the extent key and the upload id, one a line.
pub fn encode_marker(key: &str, upload: &str) -> Vec<u8> {
    format!("{key}\n{upload}\n").into_bytes()
}

/// Decodes a multipart marker into (extent key, upload id).
pub fn decode_marker(bytes: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    let key = lines.next()?.to_owned();
    let upload = lines.next()?.to_owned();
    (Extent::parse_key(&key).is_some() && !upload.is_empty()).then_some((key, upload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlockKind;

    #[test]
    fn record_round_trips_and_rejects_damage() {
        let seg = SegmentId::new(1, 7);
        let h = BlockHandle {
            segment: seg,
            offset: 4096,
            len: 100,
            kind: BlockKind::OTHER,
        };
        let r = RemoteRecord {
            checkpoint: CheckpointRecord {
                id: 9,
                timestamp_ms: 5,
                metadata: vec![1, 2, 3],
                handles: vec![h],
            },
            extents: vec![Extent::new("00ff", seg, 0, 8192)],
        };
        let bytes = r.encode();
        assert_eq!(RemoteRecord::decode(&bytes).unwrap(), r);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(RemoteRecord::decode(&b).is_err(), "flip at {i}");
        }
        for n in 0..bytes.len() {
            assert!(RemoteRecord::decode(&bytes[..n]).is_err());
        }
        let uncovered = RemoteRecord {
            extents: vec![Extent::new("00ff", seg, 0, 4096)],
            ..r
        };
        assert!(matches!(
            RemoteRecord::decode(&uncovered.encode()),
            Err(RecordError::Uncovered { .. })
        ));
        assert_eq!(parse_checkpoint_key(&checkpoint_key(9)), Some(9));
        assert_eq!(parse_checkpoint_key("checkpoints/9"), None);
    }
}
