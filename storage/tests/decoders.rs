//! Decoders over random and mutated inputs: they must return errors (or an intact
//! prefix of what was encoded), never panic. Seeded and deterministic; a failure
//! prints its seed and case.

mod common;

use common::{payload, Rng};
use spate_storage::format::{
    block_footprint, check_block, decode_manifest, encode_batch, scan_segment, seal_block,
    BlockHandle, BlockKind, CheckpointRecord, ManifestRecord, SegmentId, HEADER_LEN,
};

fn sample_records(rng: &mut Rng) -> Vec<ManifestRecord> {
    let mut v = Vec::new();
    for id in 1..=1 + rng.below(4) {
        let handles = (0..rng.below(5))
            .map(|i| BlockHandle {
                segment: SegmentId::new(i as u16, id),
                offset: 16 * i,
                len: i as u32,
                kind: BlockKind(1 + i as u16),
            })
            .collect::<Vec<_>>();
        v.push(ManifestRecord::CheckpointCompleted(CheckpointRecord {
            id,
            timestamp_ms: rng.next(),
            metadata: {
                let n = rng.below(200) as usize;
                rng.bytes(n)
            },
            handles: handles.clone(),
        }));
        if let Some(h) = handles.first() {
            let new = BlockHandle {
                offset: h.offset + 4096,
                ..*h
            };
            v.push(ManifestRecord::HandlesRelocated {
                moves: vec![(*h, new)],
            });
        }
        v.push(ManifestRecord::SegmentsDeleted {
            segments: vec![SegmentId::new(3, id)],
        });
        if id > 1 {
            v.push(ManifestRecord::CheckpointDiscarded { id: id - 1 });
        }
    }
    v
}

fn sample_segment(rng: &mut Rng, seg: SegmentId) -> (Vec<u8>, Vec<BlockHandle>) {
    let mut file = Vec::new();
    let mut handles = Vec::new();
    for i in 0..1 + rng.below(5) {
        let len = rng.below(3000) as u32;
        let mut b = vec![0u8; block_footprint(len) as usize];
        b[HEADER_LEN..HEADER_LEN + len as usize].copy_from_slice(&payload(i, len as usize));
        seal_block(&mut b, seg, BlockKind(1 + i as u16), len);
        handles.push(BlockHandle {
            segment: seg,
            offset: file.len() as u64,
            len,
            kind: BlockKind(1 + i as u16),
        });
        file.extend(b);
    }
    file.resize(file.len().div_ceil(4096) * 4096, 0);
    (file, handles)
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            bytes.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(bytes.len() as u64) as usize;
        match rng.below(5) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            2 => bytes.truncate(at),
            3 => bytes.insert(at, rng.next() as u8),
            _ => {
                let n = rng.below(64) as usize;
                bytes.splice(at..at, std::iter::repeat_n(0xffu8, n));
            }
        }
    }
}

#[test]
fn random_bytes_never_decode() {
    for seed in 0..3000u64 {
        let mut rng = Rng(seed);
        let len = rng.below(600) as usize;
        let bytes = rng.bytes(len);
        let scan = decode_manifest(&bytes);
        assert!(
            scan.records.is_empty(),
            "seed {seed}: random bytes decoded as a manifest record"
        );
        assert!(
            scan.tail_error.is_some() || bytes.iter().all(|&b| b == 0),
            "seed {seed}"
        );
        let seg = scan_segment(&bytes, SegmentId(seed));
        assert!(
            seg.blocks.is_empty(),
            "seed {seed}: random bytes decoded as a block"
        );
        if bytes.len() >= BlockHandle::ENCODED_LEN {
            let _ = BlockHandle::decode(&bytes[..BlockHandle::ENCODED_LEN]);
        }
        assert!(
            BlockHandle::decode(&bytes).is_err() || bytes.len() == BlockHandle::ENCODED_LEN,
            "seed {seed}"
        );
        for t in 0..6u16 {
            let _ = ManifestRecord::decode_payload(t, &bytes);
        }
        let h = BlockHandle {
            segment: SegmentId(seed),
            offset: 16 * rng.below(40),
            len: rng.below(1 << 31) as u32,
            kind: BlockKind(1),
        };
        assert!(check_block(&bytes, &h, true).is_err(), "seed {seed}");
    }
}

#[test]
fn mutated_manifests_yield_an_intact_prefix_or_nothing() {
    for seed in 0..2000u64 {
        let mut rng = Rng(seed);
        let records = sample_records(&mut rng);
        let mut bytes = Vec::new();
        let mut seq = 0;
        // Several batches, as commits write them.
        for chunk in records.chunks(2) {
            bytes.extend(encode_batch(chunk, seq));
            seq += chunk.len() as u64;
        }
        let clean = decode_manifest(&bytes);
        assert_eq!(clean.records, records, "seed {seed}: clean decode");
        mutate(&mut rng, &mut bytes);
        let scan = decode_manifest(&bytes);
        assert!(scan.records.len() <= records.len(), "seed {seed}");
        assert_eq!(
            scan.records,
            records[..scan.records.len()],
            "seed {seed}: a mutated manifest produced a wrong record"
        );
    }
}

#[test]
fn mutated_segments_never_yield_wrong_payloads() {
    for seed in 0..2000u64 {
        let mut rng = Rng(seed);
        let seg = SegmentId::new(1, seed);
        let (clean, handles) = sample_segment(&mut rng, seg);
        let mut bytes = clean.clone();
        mutate(&mut rng, &mut bytes);
        let scan = scan_segment(&bytes, seg);
        for b in &scan.blocks {
            // Every block the scan accepts has an intact header and CRC-checked payload.
            assert!(check_block(&bytes, &b.handle, true).is_ok(), "seed {seed}");
        }
        for h in &handles {
            if let Ok(r) = check_block(&bytes, h, true) {
                let original = check_block(&clean, h, true).unwrap();
                assert_eq!(
                    bytes[r].to_vec(),
                    clean[original].to_vec(),
                    "seed {seed}: wrong payload accepted for {h:?}"
                );
            }
        }
    }
}

/// The body of `fuzz/fuzz_targets/decoders.rs`, run here over seeded inputs so it
/// is exercised without cargo-fuzz.
fn fuzz_body(data: &[u8]) {
    let scan = decode_manifest(data);
    if !scan.records.is_empty() {
        let again = decode_manifest(&encode_batch(&scan.records, 0));
        assert_eq!(again.records, scan.records);
    }
    let seg = SegmentId::new(1, 2);
    for b in scan_segment(data, seg).blocks {
        assert!(check_block(data, &b.handle, true).is_ok());
    }
    if data.len() >= BlockHandle::ENCODED_LEN {
        if let Ok(h) = BlockHandle::decode(&data[..BlockHandle::ENCODED_LEN]) {
            let _ = check_block(data, &h, true);
        }
    }
    if let Some((&t, rest)) = data.split_first() {
        let _ = ManifestRecord::decode_payload(u16::from(t), rest);
    }
    let h = BlockHandle {
        segment: seg,
        offset: 0,
        len: data.len().min(u32::MAX as usize) as u32,
        kind: BlockKind(1),
    };
    let _ = check_block(data, &h, false);
}

#[test]
fn fuzz_target_body_over_seeded_inputs() {
    for seed in 0..1500u64 {
        let mut rng = Rng(seed);
        let mut bytes = match seed % 3 {
            0 => {
                let n = rng.below(300) as usize;
                rng.bytes(n)
            }
            1 => {
                let records = sample_records(&mut rng);
                encode_batch(&records, 0)
            }
            _ => sample_segment(&mut rng, SegmentId::new(1, 2)).0,
        };
        mutate(&mut rng, &mut bytes);
        fuzz_body(&bytes);
    }
}
