//! The production store over the simulated backend: round trips, crash at every
//! sync point (plain and torn crash images), injected I/O errors, bit flips,
//! retention, GC and compaction.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{payload, Rng};
use spate_storage::error::{CommitError, WriteError};
use spate_storage::sim::{block_on, SimFault, SimOpKind};
use spate_storage::{
    BlockHandle, BlockKind, CheckpointRecord, SimIo, Store, StoreOptions, StoreReader, StoreWarning,
};

fn opts() -> StoreOptions {
    StoreOptions {
        segment_size_bytes: 16 * 1024,
        retained_checkpoints: 2,
        compaction_live_fraction: 0.5,
        write_buffer_bytes: 8 * 1024,
        manifest_max_bytes: 3 * 4096,
        start_over_lost_manifest: false,
        discard_after: None,
        segments_in_use: Vec::new(),
    }
}

/// What a workload committed: per checkpoint id, metadata and payloads by handle index.
#[derive(Default, Debug, Clone)]
struct Expected {
    payloads: HashMap<u64, (Vec<u8>, Vec<Vec<u8>>)>,
    committed_ok: Vec<u64>,
    in_flight: Option<u64>,
}

/// Six checkpoints from two writers, with incremental references to earlier blocks,
/// a clean restart in the middle and a compaction. Stops at the first error (the
/// simulated crash).
fn workload(io: &SimIo, seed: u64, exp: &mut Expected) {
    let mut rng = Rng(seed);
    let r: Result<(), String> = block_on(async {
        let mut store = Store::open(io.clone(), opts())
            .await
            .map_err(|e| e.to_string())?;
        let mut writers = vec![store.segment_writer(0), store.segment_writer(1)];
        // (handle, payload) of the previous checkpoint, for incremental reuse.
        let mut prev: Vec<(BlockHandle, Vec<u8>)> = Vec::new();
        for id in 1..=6u64 {
            if id == 4 {
                drop(writers);
                drop(store);
                store = Store::open(io.clone(), opts())
                    .await
                    .map_err(|e| e.to_string())?;
                writers = vec![store.segment_writer(0), store.segment_writer(1)];
                prev = match store.latest() {
                    Some(c) => {
                        let mut v = Vec::new();
                        for h in &c.handles {
                            v.push((*h, store.read_block(h).await.map_err(|e| e.to_string())?));
                        }
                        v
                    }
                    None => Vec::new(),
                };
            }
            let mut handles = Vec::new();
            let mut payloads = Vec::new();
            // Reuse up to two blocks of the previous checkpoint (a base for deltas).
            for (h, p) in prev.iter().take(2) {
                handles.push(*h);
                payloads.push(p.clone());
            }
            for (wi, w) in writers.iter_mut().enumerate() {
                for b in 0..1 + rng.below(3) {
                    let len = rng.below(7000) as usize;
                    let p = payload(id * 100 + wi as u64 * 10 + b, len);
                    let h = if b % 2 == 0 {
                        w.append(BlockKind::KEYED_STATE_DELTA, &p)
                    } else {
                        w.append_with(BlockKind::IN_FLIGHT, len, |buf| buf.copy_from_slice(&p))
                    };
                    handles.push(h);
                    payloads.push(p);
                    // Writer 1 starts its writes early, as the engine does.
                    if wi == 1 {
                        w.write_behind().await;
                    }
                }
            }
            for w in writers.iter_mut() {
                w.flush().await.map_err(|e| e.to_string())?;
            }
            let metadata = format!("checkpoint {id}").into_bytes();
            exp.payloads
                .insert(id, (metadata.clone(), payloads.clone()));
            exp.in_flight = Some(id);
            let rec = CheckpointRecord {
                id,
                timestamp_ms: 1000 + id,
                metadata,
                handles: handles.clone(),
            };
            store
                .commit_checkpoint(rec)
                .await
                .map_err(|e| e.to_string())?;
            exp.in_flight = None;
            exp.committed_ok.push(id);
            prev = handles.into_iter().zip(payloads).collect();
            if id == 5 {
                store.compact().await.map_err(|e| e.to_string())?;
                let c = store.latest().expect("just committed");
                prev = c
                    .handles
                    .iter()
                    .copied()
                    .zip(exp.payloads[&id].1.clone())
                    .collect();
            }
        }
        Ok(())
    });
    if let Err(e) = r {
        assert!(
            io.crashed(),
            "seed {seed}: workload failed without a crash: {e}"
        );
    }
}

fn last_k(ids: &[u64], k: usize) -> Vec<u64> {
    ids[ids.len().saturating_sub(k)..].to_vec()
}

/// Opens the image, checks the recovered checkpoints, and that each is readable
/// and byte-identical, through the store and through a StoreReader.
fn check_recovery(image: &SimIo, exp: &Expected, torn: bool, ctx: &str) {
    let store = block_on(Store::open(image.clone(), opts()))
        .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
    let got: Vec<u64> = store.checkpoints().iter().map(|c| c.id).collect();
    let k = opts().retained_checkpoints;
    let without = last_k(&exp.committed_ok, k);
    let mut with_in_flight = exp.committed_ok.clone();
    with_in_flight.extend(exp.in_flight);
    let with = last_k(&with_in_flight, k);
    if torn {
        assert!(
            got == without || got == with,
            "{ctx}: recovered {got:?}, expected {without:?} or {with:?}"
        );
    } else {
        assert_eq!(got, without, "{ctx}: recovered checkpoints");
    }
    let reader = StoreReader::from_source(Arc::new(image.clone())).unwrap();
    assert_eq!(
        reader.checkpoints(),
        store.checkpoints(),
        "{ctx}: reader and store agree"
    );
    for c in store.checkpoints() {
        let (meta, payloads) = &exp.payloads[&c.id];
        assert_eq!(&c.metadata, meta, "{ctx}: metadata of {}", c.id);
        assert_eq!(c.handles.len(), payloads.len());
        for (h, p) in c.handles.iter().zip(payloads) {
            let b = reader
                .block(h)
                .unwrap_or_else(|e| panic!("{ctx}: checkpoint {} block {h:?}: {e}", c.id));
            assert_eq!(&*b, &p[..], "{ctx}: checkpoint {} block bytes", c.id);
            assert_eq!(b.as_ptr() as usize % 16, 0, "payload is 16-byte aligned");
            assert_eq!(&block_on(store.read_block(h)).unwrap(), p);
        }
    }
    // Orphan cleanup: every segment left is referenced by a retained checkpoint.
    if !store
        .open_report()
        .warnings
        .contains(&StoreWarning::OrphanCleanupSkipped)
    {
        let referenced: std::collections::HashSet<_> = store
            .checkpoints()
            .iter()
            .flat_map(|c| c.handles.iter().map(|h| h.segment.file_name()))
            .collect();
        for name in image.file_names() {
            if name.starts_with("seg-") {
                assert!(
                    referenced.contains(&name),
                    "{ctx}: orphan {name} survived open"
                );
            }
        }
    }
}

#[test]
fn roundtrip_and_clean_reopen() {
    let io = SimIo::new();
    let mut exp = Expected::default();
    workload(&io, 7, &mut exp);
    assert_eq!(exp.committed_ok, vec![1, 2, 3, 4, 5, 6]);
    check_recovery(&io, &exp, false, "clean reopen");
    check_recovery(&io.crash_image(), &exp, false, "crash image after the run");
}

#[test]
fn crash_at_every_sync_point() {
    for seed in [1u64, 2, 3] {
        let probe = SimIo::new();
        workload(&probe, seed, &mut Expected::default());
        let total = probe.sync_count();
        assert!(total > 20, "the workload has many sync points ({total})");
        for n in 0..=total {
            let io = SimIo::new();
            io.crash_before_sync(n);
            let mut exp = Expected::default();
            workload(&io, seed, &mut exp);
            check_recovery(
                &io.crash_image(),
                &exp,
                false,
                &format!("seed {seed}, crash before sync {n}"),
            );
            for t in 0..3 {
                let ctx = format!("seed {seed}, crash before sync {n}, torn image {t}");
                check_recovery(
                    &io.crash_image_torn(seed * 1000 + n * 10 + t),
                    &exp,
                    true,
                    &ctx,
                );
            }
        }
    }
}

fn one_checkpoint(
    store: &mut Store<SimIo>,
    id: u64,
    writer: u16,
) -> (CheckpointRecord, Vec<Vec<u8>>) {
    let mut w = store.segment_writer(writer);
    let ps: Vec<Vec<u8>> = (0..3)
        .map(|i| payload(id * 10 + i, 1000 + 700 * i as usize))
        .collect();
    let handles = ps
        .iter()
        .map(|p| w.append(BlockKind::KEYED_STATE_FULL, p))
        .collect();
    block_on(w.flush()).unwrap();
    let rec = CheckpointRecord {
        id,
        timestamp_ms: id,
        metadata: vec![id as u8],
        handles,
    };
    block_on(store.commit_checkpoint(rec.clone())).unwrap();
    (rec, ps)
}

#[test]
fn new_segments_take_ids_above_those_in_use_elsewhere() {
    // A new directory for a store whose remote prefix already holds
    // segments 0..=7 of writer 0 (an earlier incarnation on another disk).
    let in_use = vec![
        spate_storage::SegmentId::new(0, 7),
        spate_storage::SegmentId::new(2, 3),
    ];
    let io = SimIo::new();
    let mut store = block_on(Store::open(
        io.clone(),
        StoreOptions {
            segments_in_use: in_use,
            ..opts()
        },
    ))
    .unwrap();
    let (rec, _) = one_checkpoint(&mut store, 1, 0);
    let segments: Vec<_> = rec.handles.iter().map(|h| h.segment).collect();
    assert!(
        segments
            .iter()
            .all(|s| s.writer_id() == 0 && s.sequence() > 7),
        "{segments:?}"
    );
    // Without them, the same new directory starts at sequence 0.
    let mut fresh = block_on(Store::open(SimIo::new(), opts())).unwrap();
    let (rec, _) = one_checkpoint(&mut fresh, 1, 0);
    assert_eq!(rec.handles[0].segment, spate_storage::SegmentId::new(0, 0));
}

fn assert_readable(io: &SimIo, checks: &[(CheckpointRecord, Vec<Vec<u8>>)]) {
    let reader = StoreReader::from_source(Arc::new(io.clone())).unwrap();
    for (rec, ps) in checks {
        let c = reader.checkpoint(rec.id).unwrap();
        assert_eq!(c, rec);
        for (h, p) in c.handles.iter().zip(ps) {
            assert_eq!(&*reader.block(h).unwrap(), &p[..]);
        }
    }
}

#[test]
fn injected_errors_fail_cleanly_and_keep_earlier_checkpoints() {
    let io = SimIo::new();
    let o = StoreOptions {
        retained_checkpoints: 10,
        ..opts()
    };
    let mut store = block_on(Store::open(io.clone(), o.clone())).unwrap();
    let c1 = one_checkpoint(&mut store, 1, 0);
    let c2 = one_checkpoint(&mut store, 2, 0);

    // ENOSPC on the manifest write: commit fails, typed.
    let mut w = store.segment_writer(0);
    let h = w.append(BlockKind::OPERATOR_STATE, b"state of 3");
    block_on(w.flush()).unwrap();
    io.fail_when(|op| {
        (op.kind == SimOpKind::Write && op.name.starts_with("MANIFEST"))
            .then_some(SimFault::Errno(libc::ENOSPC))
    });
    let rec3 = CheckpointRecord {
        id: 3,
        timestamp_ms: 3,
        metadata: vec![],
        handles: vec![h],
    };
    match block_on(store.commit_checkpoint(rec3.clone())) {
        Err(CommitError::Manifest { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC))
        }
        other => panic!("expected a manifest error, got {other:?}"),
    }
    assert_eq!(
        store.checkpoints().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_readable(&io, &[c1.clone(), c2.clone()]);

    // EIO on the manifest fdatasync.
    io.fail_when(|op| {
        (op.kind == SimOpKind::Sync && op.name.starts_with("MANIFEST"))
            .then_some(SimFault::Errno(libc::EIO))
    });
    assert!(matches!(
        block_on(store.commit_checkpoint(rec3.clone())),
        Err(CommitError::Manifest { .. })
    ));
    assert_readable(&io.crash_image(), &[c1.clone(), c2.clone()]);

    // EIO on a segment write: the flush fails, its handles are refused at commit.
    io.fail_when(|op| {
        (op.kind == SimOpKind::Write && op.name.starts_with("seg-"))
            .then_some(SimFault::Errno(libc::EIO))
    });
    let bad = w.append(BlockKind::OPERATOR_STATE, &payload(99, 5000));
    assert!(matches!(
        block_on(w.flush()),
        Err(WriteError::Io { op: "write", .. })
    ));
    let rec_bad = CheckpointRecord {
        id: 4,
        timestamp_ms: 4,
        metadata: vec![],
        handles: vec![bad],
    };
    assert!(matches!(
        block_on(store.commit_checkpoint(rec_bad)),
        Err(CommitError::NotDurable { .. } | CommitError::UnknownSegment { .. })
    ));

    // EIO on a write started by write_behind: reported by the flush, the buffers
    // appended after it are never written, the handles are refused at commit.
    let mut failed = 0;
    io.fail_when(move |op| {
        (op.kind == SimOpKind::Write && op.name.starts_with("seg-") && {
            failed += 1;
            failed == 1
        })
        .then_some(SimFault::Errno(libc::EIO))
    });
    let mut bad = Vec::new();
    for i in 0..6 {
        bad.push(w.append(BlockKind::OPERATOR_STATE, &payload(90 + i, 6000)));
        block_on(w.write_behind());
    }
    assert!(matches!(
        block_on(w.flush()),
        Err(WriteError::Io { op: "write", .. })
    ));
    let rec_bad = CheckpointRecord {
        id: 4,
        timestamp_ms: 4,
        metadata: vec![],
        handles: bad,
    };
    assert!(matches!(
        block_on(store.commit_checkpoint(rec_bad)),
        Err(CommitError::NotDurable { .. } | CommitError::UnknownSegment { .. })
    ));

    // A short write is an error too.
    io.fail_when(|op| {
        (op.kind == SimOpKind::Write && op.name.starts_with("seg-"))
            .then_some(SimFault::ShortWrite(4096))
    });
    w.append(BlockKind::OPERATOR_STATE, &payload(98, 9000));
    assert!(
        matches!(block_on(w.flush()), Err(WriteError::ShortWrite { expected, written: 4096, .. }) if expected > 4096)
    );

    // ENOSPC on creating a segment file.
    io.fail_when(|op| (op.kind == SimOpKind::Create).then_some(SimFault::Errno(libc::ENOSPC)));
    w.append(BlockKind::OPERATOR_STATE, b"x");
    assert!(matches!(
        block_on(w.flush()),
        Err(WriteError::Io { op: "create", .. })
    ));

    // The disk recovers: the writer continues in a new segment and commits work,
    // the first through a manifest rewrite (the log was poisoned).
    io.clear_faults();
    let h5 = w.append(BlockKind::OPERATOR_STATE, b"state of 5");
    block_on(w.flush()).unwrap();
    let rec5 = CheckpointRecord {
        id: 5,
        timestamp_ms: 5,
        metadata: vec![5],
        handles: vec![h5],
    };
    block_on(store.commit_checkpoint(rec5.clone())).unwrap();
    drop(w);
    drop(store);
    let image = io.crash_image();
    let store = block_on(Store::open(image.clone(), o)).unwrap();
    assert_eq!(
        store.checkpoints().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![1, 2, 5]
    );
    assert_readable(&image, &[c1, c2, (rec5, vec![b"state of 5".to_vec()])]);
}

#[test]
fn every_bit_flip_in_a_segment_is_detected() {
    let io = SimIo::new();
    let mut store = block_on(Store::open(io.clone(), opts())).unwrap();
    let (rec, ps) = one_checkpoint(&mut store, 1, 0);
    let seg = rec.handles[0].segment;
    let name = seg.file_name();
    let len = io.file_bytes(&name).unwrap().len();
    assert!(len >= 4096);
    let mut rng = Rng(5);
    for offset in 0..len {
        let image = io.crash_image();
        assert!(image.corrupt(&name, offset, 1 << rng.below(8)));
        let reader = StoreReader::from_source(Arc::new(image)).unwrap();
        let scan = reader.verify_segment(seg).unwrap();
        assert!(
            !scan.problems.is_empty(),
            "flip at {offset} not reported by verify"
        );
        for (h, p) in rec.handles.iter().zip(&ps) {
            let inside = (h.offset..h.offset + h.footprint()).contains(&(offset as u64));
            match reader.block(h) {
                Ok(b) => {
                    assert!(!inside, "flip at {offset} inside block {h:?} not detected");
                    assert_eq!(&*b, &p[..]);
                }
                Err(spate_storage::ReadError::Corrupt {
                    segment,
                    offset: at,
                    ..
                }) => {
                    assert!(
                        inside,
                        "block {h:?} reported corrupt for a flip outside it at {offset}"
                    );
                    assert_eq!((segment, at), (seg, h.offset));
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    }
}

#[test]
fn every_bit_flip_in_the_manifest_is_detected_and_never_yields_a_wrong_checkpoint() {
    let io = SimIo::new();
    let o = StoreOptions {
        retained_checkpoints: 10,
        manifest_max_bytes: 1 << 20,
        ..opts()
    };
    let mut store = block_on(Store::open(io.clone(), o.clone())).unwrap();
    let originals: Vec<CheckpointRecord> = (1..=3)
        .map(|id| one_checkpoint(&mut store, id, 0).0)
        .collect();
    let name = store.manifest_file();
    drop(store);
    let len = io.file_bytes(&name).unwrap().len();
    let mut rng = Rng(9);
    for offset in 0..len {
        let image = io.crash_image();
        assert!(image.corrupt(&name, offset, 1 << rng.below(8)));
        let store = block_on(Store::open(image, o.clone())).unwrap();
        assert!(
            store
                .open_report()
                .warnings
                .iter()
                .any(|w| matches!(w, StoreWarning::ManifestDamaged(_))),
            "flip at manifest offset {offset} not detected"
        );
        let got = store.checkpoints();
        // Records wholly before the flip survive; the one holding it (and all after) do not.
        let damaged_batch = offset / 4096;
        assert!(
            got.len() <= damaged_batch + 1,
            "flip at {offset}: a damaged record survived"
        );
        assert!(
            got.len() >= damaged_batch,
            "flip at {offset}: an intact record before the damage was lost"
        );
        assert_eq!(
            got,
            &originals[..got.len()],
            "flip at {offset}: recovered checkpoints must be an intact prefix"
        );
    }
}

#[test]
fn retention_and_gc_keep_exactly_what_is_referenced() {
    let io = SimIo::new();
    let mut store = block_on(Store::open(io.clone(), opts())).unwrap();
    let mut w = store.segment_writer(3);
    let base = w.append(BlockKind::KEYED_STATE_FULL, &payload(1, 20_000));
    block_on(w.flush()).unwrap();
    for id in 1..=8u64 {
        let d = w.append(BlockKind::KEYED_STATE_DELTA, &payload(id, 9000));
        block_on(w.flush()).unwrap();
        let rec = CheckpointRecord {
            id,
            timestamp_ms: id,
            metadata: vec![],
            handles: vec![base, d],
        };
        block_on(store.commit_checkpoint(rec)).unwrap();
        let referenced: std::collections::BTreeSet<String> = store
            .checkpoints()
            .iter()
            .flat_map(|c| c.handles.iter().map(|h| h.segment.file_name()))
            .collect();
        let on_disk: std::collections::BTreeSet<String> = io
            .file_names()
            .into_iter()
            .filter(|n| n.starts_with("seg-"))
            .collect();
        // The writer's active segment may hold no referenced block yet; nothing else may linger.
        let extra: Vec<_> = on_disk.difference(&referenced).collect();
        assert!(
            extra.len() <= 1,
            "checkpoint {id}: unreferenced segments {extra:?}"
        );
        assert!(
            referenced.is_subset(&on_disk),
            "checkpoint {id}: a referenced segment was deleted"
        );
    }
    assert_eq!(
        store.checkpoints().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![7, 8]
    );
}

/// `keep_from` holds checkpoints (and their segments) beyond the retention
/// count: a checkpoint in progress may still build on them.
#[test]
fn keep_from_retains_checkpoints_beyond_the_count() {
    let io = SimIo::new();
    let mut store = block_on(Store::open(io.clone(), opts())).unwrap();
    let mut checks = Vec::new();
    for id in 1..=3 {
        checks.push(one_checkpoint(&mut store, id, 0));
    }
    assert_eq!(ids(&store), vec![2, 3], "retained_checkpoints is 2");
    store.keep_from(Some(2));
    for id in 4..=6 {
        checks.push(one_checkpoint(&mut store, id, 0));
    }
    assert_eq!(ids(&store), vec![2, 3, 4, 5, 6]);
    assert_readable(&io, &checks[1..]);
    store.keep_from(None);
    checks.push(one_checkpoint(&mut store, 7, 0));
    assert_eq!(ids(&store), vec![6, 7]);
}

fn ids(store: &Store<SimIo>) -> Vec<u64> {
    store.checkpoints().iter().map(|c| c.id).collect()
}

#[test]
fn sealed_segments_with_uncommitted_blocks_survive_gc() {
    let io = SimIo::new();
    let o = StoreOptions {
        retained_checkpoints: 1,
        ..opts()
    };
    let mut store = block_on(Store::open(io.clone(), o)).unwrap();
    let mut w = store.segment_writer(0);
    // Checkpoint 2's blocks fill and seal a segment before checkpoint 1 commits.
    let h1 = w.append(BlockKind::OPERATOR_STATE, &payload(1, 100));
    block_on(w.flush()).unwrap();
    let pending: Vec<BlockHandle> = (0..4)
        .map(|i| w.append(BlockKind::OPERATOR_STATE, &payload(10 + i, 6000)))
        .collect();
    block_on(w.flush()).unwrap();
    assert_ne!(
        pending[0].segment, pending[3].segment,
        "the pending blocks span a sealed segment"
    );
    block_on(store.commit_checkpoint(CheckpointRecord {
        id: 1,
        timestamp_ms: 1,
        metadata: vec![],
        handles: vec![h1],
    }))
    .unwrap();
    let r = block_on(store.commit_checkpoint(CheckpointRecord {
        id: 2,
        timestamp_ms: 2,
        metadata: vec![],
        handles: pending.clone(),
    }));
    r.expect("blocks of a pending checkpoint were not collected");
    let reader = StoreReader::from_source(Arc::new(io.clone())).unwrap();
    for (i, h) in pending.iter().enumerate() {
        assert_eq!(
            &*reader.block(h).unwrap(),
            &payload(10 + i as u64, 6000)[..]
        );
    }
}

#[test]
fn compaction_moves_live_blocks_and_handles_follow() {
    let io = SimIo::new();
    let o = StoreOptions {
        retained_checkpoints: 1,
        compaction_live_fraction: 0.5,
        ..opts()
    };
    let mut store = block_on(Store::open(io.clone(), o.clone())).unwrap();
    let mut w = store.segment_writer(0);
    let hs: Vec<BlockHandle> = (0..4)
        .map(|i| w.append(BlockKind::KEYED_STATE_FULL, &payload(i, 3000)))
        .collect();
    let keep = hs[1];
    // Roll to a new segment so the first one is sealed.
    let fresh = w.append(BlockKind::KEYED_STATE_DELTA, &payload(50, 12_000));
    block_on(w.flush()).unwrap();
    assert_ne!(fresh.segment, keep.segment);
    block_on(store.commit_checkpoint(CheckpointRecord {
        id: 1,
        timestamp_ms: 1,
        metadata: vec![],
        handles: hs.clone(),
    }))
    .unwrap();
    block_on(store.commit_checkpoint(CheckpointRecord {
        id: 2,
        timestamp_ms: 2,
        metadata: vec![],
        handles: vec![keep, fresh],
    }))
    .unwrap();
    let report = block_on(store.compact()).unwrap();
    assert_eq!(report.segments_compacted, vec![keep.segment]);
    assert!(
        io.file_bytes(&keep.segment.file_name()).is_none(),
        "compacted segment deleted"
    );
    let moved = store.latest().unwrap().handles[0];
    assert_ne!(moved, keep);
    assert_eq!(
        block_on(store.read_block(&moved)).unwrap(),
        payload(1, 3000)
    );
    // A stale handle given by the engine is translated.
    let h3 = w.append(BlockKind::KEYED_STATE_DELTA, b"delta");
    block_on(w.flush()).unwrap();
    block_on(store.commit_checkpoint(CheckpointRecord {
        id: 3,
        timestamp_ms: 3,
        metadata: vec![],
        handles: vec![keep, h3],
    }))
    .unwrap();
    assert_eq!(store.latest().unwrap().handles[0], moved);
    drop(w);
    drop(store);
    let store = block_on(Store::open(io.clone(), o)).unwrap();
    assert_eq!(store.latest().unwrap().handles, vec![moved, h3]);
    let reader = StoreReader::from_source(Arc::new(io.clone())).unwrap();
    assert_eq!(&*reader.block(&moved).unwrap(), &payload(1, 3000)[..]);
}

#[test]
fn commit_rejects_bad_input() {
    let io = SimIo::new();
    let mut store = block_on(Store::open(io.clone(), opts())).unwrap();
    one_checkpoint(&mut store, 5, 0);
    let again = CheckpointRecord {
        id: 5,
        timestamp_ms: 0,
        metadata: vec![],
        handles: vec![],
    };
    assert!(matches!(
        block_on(store.commit_checkpoint(again)),
        Err(CommitError::NonMonotonicId { id: 5, latest: 5 })
    ));
    let mut w = store.segment_writer(1);
    let unflushed = w.append(BlockKind::OTHER, b"not yet durable");
    let rec = CheckpointRecord {
        id: 6,
        timestamp_ms: 0,
        metadata: vec![],
        handles: vec![unflushed],
    };
    assert!(matches!(
        block_on(store.commit_checkpoint(rec)),
        Err(CommitError::NotDurable { .. })
    ));
    let ghost = BlockHandle {
        segment: spate_storage::SegmentId::new(9, 9),
        offset: 0,
        len: 1,
        kind: BlockKind(1),
    };
    let rec = CheckpointRecord {
        id: 6,
        timestamp_ms: 0,
        metadata: vec![],
        handles: vec![ghost],
    };
    assert!(matches!(
        block_on(store.commit_checkpoint(rec)),
        Err(CommitError::UnknownSegment { .. })
    ));
}

#[test]
fn mid_log_manifest_damage_keeps_unreferenced_segments() {
    let io = SimIo::new();
    let o = StoreOptions {
        retained_checkpoints: 10,
        ..opts()
    };
    let mut store = block_on(Store::open(io.clone(), o.clone())).unwrap();
    let (c1, _) = one_checkpoint(&mut store, 1, 0);
    let (c2, _) = one_checkpoint(&mut store, 2, 1);
    let name = store.manifest_file();
    drop(store);
    // Damage the first record (page 0); the second (page 1) stays decodable.
    assert!(io.corrupt(&name, 40, 0x10));
    let mut store = block_on(Store::open(io.clone(), o.clone())).unwrap();
    assert!(store.checkpoints().is_empty());
    assert!(store
        .open_report()
        .warnings
        .contains(&StoreWarning::OrphanCleanupSkipped));
    assert!(store.open_report().orphans_deleted.is_empty());
    // Not collected by later commits either.
    one_checkpoint(&mut store, 3, 2);
    one_checkpoint(&mut store, 4, 2);
    for h in c1.handles.iter().chain(&c2.handles) {
        assert!(
            io.file_bytes(&h.segment.file_name()).is_some(),
            "segment {} kept for inspection",
            h.segment
        );
    }
}
