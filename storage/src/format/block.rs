//! Block framing inside segment files: sealing a block into its write buffer,
//! checking one block named by a handle, and scanning a whole (possibly damaged)
//! segment file. Pure functions over byte slices; the layout is that of
//! `docs/storage-format.md` §2, with the header shared with the manifest
//! ([`Header`]).

use std::ops::Range;

use super::{
    align_up, block_footprint, is_zero, padding_at, page_end_after, BlockHandle, BlockKind,
    FormatError, Header, SegmentId, BLOCK_MAGIC, HEADER_LEN, MAX_PAYLOAD_LEN, PAGE_SIZE,
    PAYLOAD_ALIGN,
};

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
