//! The store over the real backend (glommio DMA files, O_DIRECT, fdatasync) in a
//! temporary directory: round trip through mmap, retention and GC, orphan cleanup.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::payload;
use glommio::{LocalExecutorBuilder, Placement};
use spate_storage::{BlockHandle, BlockKind, CheckpointRecord, Store, StoreOptions, StoreReader};

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "spate-storage-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_async<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

fn opts() -> StoreOptions {
    StoreOptions {
        segment_size_bytes: 32 * 1024,
        retained_checkpoints: 2,
        compaction_live_fraction: 0.5,
        write_buffer_bytes: 16 * 1024,
        manifest_max_bytes: 64 * 1024,
        start_over_lost_manifest: false,
        discard_after: None,
        segments_in_use: Vec::new(),
    }
}

fn segment_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("seg-"))
        .collect()
}

fn referenced(checkpoints: &[CheckpointRecord]) -> BTreeSet<String> {
    checkpoints
        .iter()
        .flat_map(|c| c.handles.iter().map(|h| h.segment.file_name()))
        .collect()
}

#[test]
fn write_commit_reopen_read_back_and_gc() {
    let tmp = TempDir::new("roundtrip");
    let dir = tmp.0.clone();
    let expected: Vec<(u64, Vec<Vec<u8>>)> = run_async({
        let dir = dir.clone();
        move || async move {
            let mut store = Store::open_dir(&dir, opts()).await.unwrap();
            let mut w0 = store.segment_writer(0);
            let mut w1 = store.segment_writer(1);
            let mut all = Vec::new();
            for id in 1..=6u64 {
                let mut handles = Vec::new();
                let mut ps = Vec::new();
                for (wi, w) in [&mut w0, &mut w1].into_iter().enumerate() {
                    for b in 0..3u64 {
                        let p = payload(
                            id * 100 + wi as u64 * 10 + b,
                            1000 + (b as usize * 4099) % 9000,
                        );
                        handles.push(w.append(BlockKind::KEYED_STATE_FULL, &p));
                        ps.push(p);
                        // Writer 1 overlaps its writes with the appends.
                        if wi == 1 {
                            w.write_behind().await;
                        }
                    }
                }
                w0.flush().await.unwrap();
                w1.flush().await.unwrap();
                let rec = CheckpointRecord {
                    id,
                    timestamp_ms: id,
                    metadata: id.to_le_bytes().to_vec(),
                    handles,
                };
                store.commit_checkpoint(rec).await.unwrap();
                // Retention and GC: exactly the referenced segments, plus at most the
                // two writers' active segments.
                let on_disk = segment_files(&dir);
                let refs = referenced(store.checkpoints());
                assert!(refs.is_subset(&on_disk), "a referenced segment was deleted");
                assert!(
                    on_disk.difference(&refs).count() <= 2,
                    "unreferenced segments linger: {on_disk:?} vs {refs:?}"
                );
                all.push((id, ps));
            }
            assert_eq!(
                store.checkpoints().iter().map(|c| c.id).collect::<Vec<_>>(),
                vec![5, 6]
            );
            all
        }
    });
    // Read back through mmap, outside any executor.
    let reader = StoreReader::open(&dir).unwrap();
    assert_eq!(
        reader
            .checkpoints()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![5, 6]
    );
    for c in reader.checkpoints() {
        let ps = &expected.iter().find(|e| e.0 == c.id).unwrap().1;
        for (h, p) in c.handles.iter().zip(ps) {
            let b = reader.block(h).unwrap();
            assert_eq!(&*b, &p[..]);
            assert_eq!(b.as_ptr() as usize % 16, 0);
        }
        assert!(reader.verify_checkpoint(c.id).unwrap().is_empty());
    }
    for (seg, _) in reader.segments().unwrap() {
        let scan = reader.verify_segment(seg).unwrap();
        assert!(
            scan.problems.is_empty(),
            "segment {seg}: {:?}",
            scan.problems
        );
    }
    // Reopen: same checkpoints; after open exactly the referenced segments remain.
    let (ids, refs) = run_async({
        let dir = dir.clone();
        move || async move {
            let store = Store::open_dir(&dir, opts()).await.unwrap();
            (
                store.checkpoints().iter().map(|c| c.id).collect::<Vec<_>>(),
                referenced(store.checkpoints()),
            )
        }
    });
    assert_eq!(ids, vec![5, 6]);
    assert_eq!(segment_files(&dir), refs);
    let manifests: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("MANIFEST"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
}

#[test]
fn orphans_of_a_crashed_run_are_deleted_on_open() {
    let tmp = TempDir::new("orphans");
    let dir = tmp.0.clone();
    let (kept, orphan): (BlockHandle, BlockHandle) = run_async({
        let dir = dir.clone();
        move || async move {
            let mut store = Store::open_dir(&dir, opts()).await.unwrap();
            let mut w = store.segment_writer(0);
            let kept = w.append(BlockKind::OPERATOR_STATE, b"committed");
            w.flush().await.unwrap();
            store
                .commit_checkpoint(CheckpointRecord {
                    id: 1,
                    timestamp_ms: 1,
                    metadata: vec![],
                    handles: vec![kept],
                })
                .await
                .unwrap();
            // A second writer writes and syncs a segment, then the process "crashes"
            // before the checkpoint commits.
            let mut w2 = store.segment_writer(7);
            let orphan = w2.append(BlockKind::OPERATOR_STATE, &payload(1, 50_000));
            w2.flush().await.unwrap();
            std::mem::forget(w2);
            std::mem::forget(w);
            std::mem::forget(store);
            (kept, orphan)
        }
    });
    assert!(segment_files(&dir).contains(&orphan.segment.file_name()));
    let (deleted, ids) = run_async({
        let dir = dir.clone();
        move || async move {
            let store = Store::open_dir(&dir, opts()).await.unwrap();
            (
                store.open_report().orphans_deleted.clone(),
                store.checkpoints().iter().map(|c| c.id).collect::<Vec<_>>(),
            )
        }
    });
    assert_eq!(ids, vec![1]);
    assert_eq!(deleted, vec![orphan.segment]);
    assert_eq!(
        segment_files(&dir),
        BTreeSet::from([kept.segment.file_name()])
    );
    let reader = StoreReader::open(&dir).unwrap();
    assert_eq!(&*reader.block(&kept).unwrap(), b"committed");
    // A later writer never reuses the orphan's sequence number.
    let next = run_async({
        let dir = dir.clone();
        move || async move {
            let store = Store::open_dir(&dir, opts()).await.unwrap();
            let mut w = store.segment_writer(0);
            let h = w.append(BlockKind::OPERATOR_STATE, b"x");
            w.flush().await.unwrap();
            h
        }
    });
    assert!(next.segment.sequence() > kept.segment.sequence());
}

#[test]
fn rkyv_archives_are_accessed_in_place_from_the_mmap() {
    let tmp = TempDir::new("rkyv");
    let dir = tmp.0.clone();
    let values: Vec<u64> = (0..1000).map(|i| i * 7).collect();
    let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&values).unwrap();
    let bytes = archived.to_vec();
    let handle = run_async({
        let dir = dir.clone();
        move || async move {
            let mut store = Store::open_dir(&dir, opts()).await.unwrap();
            let mut w = store.segment_writer(0);
            // Something odd-sized first, so the archive does not start the file.
            w.append(BlockKind::OTHER, b"12345");
            let h = w.append_with(BlockKind::KEYED_STATE_FULL, bytes.len(), |buf| {
                buf.copy_from_slice(&bytes)
            });
            w.flush().await.unwrap();
            store
                .commit_checkpoint(CheckpointRecord {
                    id: 1,
                    timestamp_ms: 0,
                    metadata: vec![],
                    handles: vec![h],
                })
                .await
                .unwrap();
            h
        }
    });
    let reader = StoreReader::open(&dir).unwrap();
    let block = reader.block(&reader.latest().unwrap().handles[0]).unwrap();
    assert_eq!(block.handle(), handle);
    let view = rkyv::access::<rkyv::Archived<Vec<u64>>, rkyv::rancor::Error>(&block).unwrap();
    assert_eq!(view.len(), 1000);
    assert_eq!(view[999].to_native(), 999 * 7);
}
