//! Garbage collection from outside the store ([`spate_storage::gc`]): the
//! cases a tool can only judge from the manifest and the directory, on stores
//! written by the real `Store` over the simulated backend and copied to a
//! temporary directory with chosen modification times.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use spate_storage::gc::{self, KeepReason};
use spate_storage::sim::block_on;
use spate_storage::{
    BlockKind, CheckpointRecord, SegmentId, SimIo, Store, StoreOptions, StoreReader,
};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spate-gc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn set_mtime(path: &Path, at: SystemTime) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

const T0: Duration = Duration::from_secs(1_700_000_000);

/// Four checkpoints, one block each, every block in a segment of its own
/// (retention keeps one checkpoint, so the store deletes the older segments);
/// the files copied to `dir`, segments modified at T0, the manifest at T0 + 100 s.
fn store_in(dir: &Path) -> SimIo {
    let io = SimIo::new();
    let options = StoreOptions {
        segment_size_bytes: 4096,
        retained_checkpoints: 1,
        ..StoreOptions::default()
    };
    let mut store = block_on(Store::open(io.clone(), options)).unwrap();
    let mut writer = store.segment_writer(0);
    for id in 1..=4u64 {
        let handle = writer.append(BlockKind::OTHER, &vec![id as u8; 3000]);
        block_on(writer.flush()).unwrap();
        let record = CheckpointRecord {
            id,
            timestamp_ms: id,
            metadata: Vec::new(),
            handles: vec![handle],
        };
        block_on(store.commit_checkpoint(record)).unwrap();
    }
    for name in io.file_names() {
        std::fs::write(dir.join(&name), io.file_bytes(&name).unwrap()).unwrap();
        let at = SystemTime::UNIX_EPOCH
            + T0
            + if name.starts_with("MANIFEST-") {
                Duration::from_secs(100)
            } else {
                Duration::ZERO
            };
        set_mtime(&dir.join(&name), at);
    }
    io
}

fn verdict(plan: &gc::GcPlan, segment: SegmentId) -> Option<Option<KeepReason>> {
    plan.segments
        .iter()
        .find(|s| s.segment == segment)
        .map(|s| s.keep)
}

#[test]
fn a_segment_the_manifest_recorded_as_deleted_goes_even_if_recent() {
    let dir = temp_dir("deleted");
    store_in(&dir);
    let reader = StoreReader::open(&dir).unwrap();
    let latest = reader.latest().unwrap().handles[0].segment;
    assert_eq!(latest, SegmentId::new(0, 3), "one segment per checkpoint");
    let high = reader.manifest_state().deleted_high[&0];
    assert!(high >= SegmentId::new(0, 2), "{high:?}");
    drop(reader);
    // A deleted segment resurrected by a crash during its unlink, touched after
    // the last commit: the manifest says it is gone for good.
    let resurrected = SegmentId::new(0, 1);
    std::fs::write(dir.join(resurrected.file_name()), vec![0u8; 4096]).unwrap();
    set_mtime(
        &dir.join(resurrected.file_name()),
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(200),
    );
    let plan = gc::plan(&dir).unwrap();
    assert_eq!(verdict(&plan, latest), Some(Some(KeepReason::Referenced)));
    assert_eq!(verdict(&plan, resurrected), Some(None));
    let (_, report) = gc::collect(&dir).unwrap();
    assert_eq!(report.deleted, vec![resurrected.file_name()]);
    assert!(dir.join(latest.file_name()).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreferenced_segments_stay_when_the_manifest_is_damaged_mid_log() {
    let dir = temp_dir("damaged");
    let io = store_in(&dir);
    let manifest = io
        .file_names()
        .into_iter()
        .find(|n| n.starts_with("MANIFEST-"))
        .unwrap();
    // Corrupt the first record's payload: valid records follow the damage.
    let mut bytes = std::fs::read(dir.join(&manifest)).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(dir.join(&manifest), &bytes).unwrap();
    set_mtime(
        &dir.join(&manifest),
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(100),
    );
    // An old segment of another writer, that would otherwise go.
    for seq in 0..2 {
        let s = SegmentId::new(7, seq);
        std::fs::write(dir.join(s.file_name()), vec![0u8; 4096]).unwrap();
        set_mtime(&dir.join(s.file_name()), SystemTime::UNIX_EPOCH + T0);
    }
    let plan = gc::plan(&dir).unwrap();
    assert!(plan.orphan_cleanup_skipped);
    assert_eq!(
        verdict(&plan, SegmentId::new(7, 0)),
        Some(Some(KeepReason::ManifestDamaged))
    );
    assert!(plan.files_to_delete().is_empty(), "{plan:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_goes_without_a_manifest() {
    let dir = temp_dir("no-manifest");
    store_in(&dir);
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("MANIFEST-") {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
    }
    std::fs::write(dir.join(SegmentId::new(0, 0).file_name()), vec![0u8; 4096]).unwrap();
    set_mtime(
        &dir.join(SegmentId::new(0, 0).file_name()),
        SystemTime::UNIX_EPOCH + T0,
    );
    let plan = gc::plan(&dir).unwrap();
    assert!(plan.manifest_file.is_none());
    assert!(plan
        .segments
        .iter()
        .all(|s| s.keep == Some(KeepReason::NoManifest)));
    assert!(plan.files_to_delete().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
