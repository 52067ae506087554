//! spate-tests: shared helpers for the end-to-end tests: reading a job's
//! committed output, watching its state directory, and damaging the newest
//! checkpoint of a store the way a disk or an operator might.

use spate_storage::format::{self, ManifestRecord};
use spate_storage::{BlockHandle, SegmentId, StoreReader};
use std::collections::BTreeSet;
use std::path::Path;

/// The committed lines of an output directory, sorted. Panics if anything is
/// still pending or an unexpected file is there; files a restore rolled back
/// (`.rolled-back/`) are not committed output.
pub fn committed(output: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(output).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == spate::sink::PENDING_DIR {
            let left: Vec<_> = std::fs::read_dir(&path).unwrap().collect();
            assert!(left.is_empty(), "left pending: {left:?}");
            continue;
        }
        if name == spate::sink::ROLLED_BACK_DIR {
            continue;
        }
        assert!(name.ends_with(".jsonl"), "unexpected file {name}");
        let text = std::fs::read_to_string(&path).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

/// Compares two sorted outputs; on a difference, says how many rows are
/// missing and how many are extra (duplicates included).
pub fn diff_rows(got: &[String], expected: &[String]) -> Option<String> {
    if got == expected {
        return None;
    }
    let (mut i, mut j, mut missing, mut extra) = (0, 0, 0, 0);
    while i < got.len() || j < expected.len() {
        match (got.get(i), expected.get(j)) {
            (Some(g), Some(e)) if g == e => (i, j) = (i + 1, j + 1),
            (Some(g), Some(e)) if g < e => (i, extra) = (i + 1, extra + 1),
            (Some(_), None) => (i, extra) = (i + 1, extra + 1),
            _ => (j, missing) = (j + 1, missing + 1),
        }
    }
    Some(format!(
        "{} rows committed, {} expected: {missing} missing, {extra} extra",
        got.len(),
        expected.len()
    ))
}

/// Completed checkpoints of the store in `state_dir` (none if it has no
/// store yet).
pub fn checkpoint_count(state_dir: &Path) -> usize {
    StoreReader::open(state_dir).map_or(0, |r| r.checkpoints().len())
}

/// Ways to damage the newest checkpoint of a store (the process that wrote
/// it is dead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Overwrite 16 bytes inside a block only the newest checkpoint references.
    FlipBlock,
    /// Cut the manifest in the middle of the newest checkpoint's record.
    TruncateManifest,
    /// Zero the manifest page holding the newest checkpoint's record.
    ZeroManifestPage,
    /// Delete a segment only the newest checkpoint references (if none is,
    /// flip a block instead).
    DeleteSegment,
}

impl Damage {
    /// Every kind, in a fixed order.
    pub const ALL: [Damage; 4] = [
        Damage::FlipBlock,
        Damage::TruncateManifest,
        Damage::ZeroManifestPage,
        Damage::DeleteSegment,
    ];
}

/// Damages the newest checkpoint of the store in `dir` as `damage` says;
/// returns its id and what was done, or `None` if the store has fewer than
/// two checkpoints (then nothing older could be restored).
pub fn damage_newest(dir: &Path, damage: Damage) -> Option<(u64, String)> {
    let reader = StoreReader::open(dir).ok()?;
    let checkpoints = reader.checkpoints();
    if checkpoints.len() < 2 {
        return None;
    }
    let newest = checkpoints.last().unwrap();
    let older: BTreeSet<BlockHandle> = checkpoints[..checkpoints.len() - 1]
        .iter()
        .flat_map(|c| c.handles.iter().copied())
        .collect();
    let own: Vec<BlockHandle> = newest
        .handles
        .iter()
        .copied()
        .filter(|h| !older.contains(h))
        .collect();
    let manifest = dir.join(reader.manifest_file()?);
    let what = match damage {
        Damage::FlipBlock => flip_block(dir, &own)?,
        Damage::DeleteSegment => {
            let shared: BTreeSet<SegmentId> = older.iter().map(|h| h.segment).collect();
            match own.iter().find(|h| !shared.contains(&h.segment)) {
                Some(h) => {
                    std::fs::remove_file(dir.join(h.segment.file_name())).ok()?;
                    format!("deleted segment {}", h.segment.file_name())
                }
                None => flip_block(dir, &own)?,
            }
        }
        Damage::TruncateManifest | Damage::ZeroManifestPage => {
            let bytes = std::fs::read(&manifest).ok()?;
            let scan = format::decode_manifest(&bytes);
            let at = scan
                .records
                .iter()
                .zip(&scan.record_offsets)
                .rev()
                .find_map(|(record, &offset)| match record {
                    ManifestRecord::CheckpointCompleted(c) if c.id == newest.id => Some(offset),
                    _ => None,
                })?;
            if damage == Damage::TruncateManifest {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&manifest)
                    .ok()?;
                file.set_len(at + 40).ok()?;
                file.sync_all().ok()?;
                format!("cut {} at {}", manifest.display(), at + 40)
            } else {
                let page = at - at % format::PAGE_SIZE as u64;
                let mut bytes = bytes;
                let end = (page as usize + format::PAGE_SIZE).min(bytes.len());
                bytes[page as usize..end].fill(0);
                std::fs::write(&manifest, &bytes).ok()?;
                format!("zeroed {} at page {page}", manifest.display())
            }
        }
    };
    Some((newest.id, what))
}

/// Overwrites 16 payload bytes of the first of `handles` with a payload
/// that long.
fn flip_block(dir: &Path, handles: &[BlockHandle]) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let h = handles.iter().find(|h| h.len >= 32)?;
    let path = dir.join(h.segment.file_name());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .ok()?;
    let at = h.offset + 32 + u64::from(h.len) / 2 - 8;
    // A fixed pattern rather than inverted bytes: damaging twice must not
    // repair. A payload that already holds it there is left alone.
    let pattern = [0x5a_u8; 16];
    let mut bytes = [0u8; 16];
    file.read_exact_at(&mut bytes, at).ok()?;
    if bytes == pattern {
        return None;
    }
    file.write_all_at(&pattern, at).ok()?;
    file.sync_all().ok()?;
    Some(format!("overwrote 16 bytes of {} at {at}", path.display()))
}
pub mod embed;

/// The local S3 test server the remote-tier tests use.
pub mod s3;
