//! Unit tests of the format: round trips of blocks, handles, names and manifest
//! batches, damage detection, and padding of every length.

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
