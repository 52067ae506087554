//! Fuzzes every decoder of bytes read from disk: manifest log, segment scan, block
//! check, handle and record payloads. None may panic. Accepted manifest records must
//! re-encode to a batch that decodes to the same records (a model check).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_storage::format::{
    check_block, decode_manifest, encode_batch, scan_segment, BlockHandle, BlockKind, ManifestRecord, SegmentId,
};

fuzz_target!(|data: &[u8]| {
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
    let h = BlockHandle { segment: seg, offset: 0, len: data.len().min(u32::MAX as usize) as u32, kind: BlockKind(1) };
    let _ = check_block(data, &h, false);
});
