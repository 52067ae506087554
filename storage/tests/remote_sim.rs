//! The remote tier over the simulated object store: a crash before every
//! request of an upload sequence (only committed checkpoints survive, all
//! restorable, and a new process finishes the job and leaves exactly the
//! referenced objects), seeded failed / slow / partially completed requests,
//! incremental reuse of extents, create-only commits between two writers, and
//! a restore's fill (blocks asked for first, an interrupted fill started over).

mod common;

use common::{payload, Rng};
use spate_storage::remote::{
    fill, layout, ObjectBackend, RemoteError, RemoteFill, RemoteRecord, RemoteTier, SimObjects,
    SimRemoteFaults, TierOptions,
};
use spate_storage::sim::block_on as sim_block_on;
use spate_storage::{
    BlockHandle, BlockKind, CheckpointRecord, SimIo, Store, StoreOptions, StoreReader,
};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Polls a future to completion (the simulated backend's slow requests are
/// pending a few times and wake themselves).
fn run<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a simulated request never completed");
}

/// Six local checkpoints from two writers, each reusing blocks of the one
/// before (incremental): the records and every block's payload.
struct Local {
    io: SimIo,
    records: Vec<CheckpointRecord>,
    payloads: HashMap<BlockHandle, Vec<u8>>,
}

fn local_store(seed: u64) -> Local {
    let io = SimIo::new();
    let mut rng = Rng(seed);
    let mut payloads = HashMap::new();
    let mut records = Vec::new();
    sim_block_on(async {
        let opts = StoreOptions {
            segment_size_bytes: 24 * 1024,
            retained_checkpoints: 16,
            write_buffer_bytes: 8 * 1024,
            ..StoreOptions::default()
        };
        let mut store = Store::open(io.clone(), opts).await.unwrap();
        let mut writers = [store.segment_writer(0), store.segment_writer(1)];
        let mut prev: Vec<BlockHandle> = Vec::new();
        for id in 1..=6u64 {
            let mut handles: Vec<BlockHandle> = prev.iter().take(3).copied().collect();
            for (wi, w) in writers.iter_mut().enumerate() {
                for b in 0..1 + rng.below(3) {
                    let p = payload(id * 100 + wi as u64 * 10 + b, rng.below(6000) as usize);
                    let h = w.append(BlockKind::KEYED_STATE_DELTA, &p);
                    payloads.insert(h, p);
                    handles.push(h);
                }
                w.flush().await.unwrap();
            }
            let record = CheckpointRecord {
                id,
                timestamp_ms: id * 1000,
                metadata: format!("checkpoint {id}").into_bytes(),
                handles: handles.clone(),
            };
            store.commit_checkpoint(record.clone()).await.unwrap();
            records.push(record);
            prev = handles.into_iter().rev().collect();
        }
    });
    Local {
        io,
        records,
        payloads,
    }
}

fn tier(remote: &SimObjects) -> RemoteTier {
    RemoteTier::new(
        Arc::new(remote.clone()),
        TierOptions {
            retained_checkpoints: 2,
            // Small, so that multipart uploads (and their markers) happen.
            multipart_threshold_bytes: 6 * 1024,
            part_size_bytes: 2 * 1024,
            part_concurrency: 2,
            gc_grace_ms: 0,
        },
    )
}

/// Downloads remote checkpoint `id` into an empty directory and checks every
/// block against what the local store wrote.
fn assert_restorable(tier: &RemoteTier, local: &Local, id: u64, what: &str) {
    let record: RemoteRecord = run(tier.record(id)).unwrap_or_else(|e| panic!("{what}: {e}"));
    let expected = &local.records[id as usize - 1];
    assert_eq!(&record.checkpoint, expected, "{what}: record of {id}");
    let dir = tempdir(what);
    run(tier.download(&record, &dir)).unwrap_or_else(|e| panic!("{what}: download {id}: {e}"));
    let reader = StoreReader::open(&dir).unwrap();
    assert_eq!(reader.latest().map(|c| c.id), Some(id), "{what}");
    assert!(reader.verify_checkpoint(id).unwrap().is_empty(), "{what}");
    for h in &expected.handles {
        let got = reader.block(h).unwrap();
        assert_eq!(
            got.as_bytes(),
            &local.payloads[h][..],
            "{what}: block {h:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let name: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("remote-sim-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every object is a retained record, an extent one of them references, or
/// nothing else; no marker and no staged upload left (`staged_ok`: one
/// upload a crash left between its creation and its marker).
fn assert_exactly_referenced(tier: &RemoteTier, remote: &SimObjects, staged_ok: usize, what: &str) {
    let ids = run(tier.checkpoint_ids()).unwrap();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for &id in &ids {
        expected.insert(layout::checkpoint_key(id));
        for e in run(tier.record(id)).unwrap().extents {
            expected.insert(e.key);
        }
    }
    let got: BTreeSet<String> = remote.keys().into_iter().collect();
    assert_eq!(got, expected, "{what}: objects after GC");
    assert!(
        remote.staged_uploads() <= staged_ok,
        "{what}: staged uploads"
    );
}

#[test]
fn crash_before_every_request_leaves_only_committed_restorable_checkpoints() {
    let local = local_store(7);
    // The clean run: how many requests the six uploads make.
    let clean = SimObjects::new();
    let t = tier(&clean);
    for r in &local.records {
        run(t.upload(&local.io, r.clone(), None)).unwrap();
    }
    let total = clean.requests();
    assert!(total > 40, "a workload of some size ({total} requests)");
    assert_eq!(run(t.checkpoint_ids()).unwrap(), vec![5, 6]);
    assert!(clean.count("put_part") > 0, "multipart uploads happened");
    assert_exactly_referenced(&t, &clean, 0, "clean run");

    for crash in 0..total {
        let what = format!("crash before request {crash}");
        let remote = SimObjects::new();
        remote.set_faults(SimRemoteFaults {
            crash_before: Some(crash),
            ..SimRemoteFaults::default()
        });
        let dead = tier(&remote);
        let mut committed_ok = Vec::new();
        for r in &local.records {
            match run(dead.upload(&local.io, r.clone(), None)) {
                Ok(_) => committed_ok.push(r.id),
                Err(_) => break,
            }
        }
        assert!(remote.crashed(), "{what}: the crash happened");
        // A new process on the same bucket.
        remote.restart();
        let fresh = tier(&remote);
        let ids = run(fresh.checkpoint_ids()).unwrap();
        for id in &ids {
            assert!(
                committed_ok.contains(id),
                "{what}: checkpoint {id} is remote but its upload did not return Ok ({committed_ok:?})"
            );
            assert_restorable(&fresh, &local, *id, &what);
        }
        if let Some(newest) = committed_ok.last() {
            assert!(ids.contains(newest), "{what}: committed {newest} lost");
        }
        // The new process resumes: uploads the rest, then collects.
        let next = ids.last().map_or(1, |id| id + 1);
        for r in local.records.iter().filter(|r| r.id >= next) {
            run(fresh.upload(&local.io, r.clone(), None))
                .unwrap_or_else(|e| panic!("{what}: resumed upload of {}: {e}", r.id));
        }
        run(fresh.gc(None, u64::MAX / 2, 0, true)).unwrap();
        assert_eq!(run(fresh.checkpoint_ids()).unwrap(), vec![5, 6], "{what}");
        for id in [5, 6] {
            assert_restorable(&fresh, &local, id, &what);
        }
        assert_exactly_referenced(&fresh, &remote, 1, &what);
    }
}

#[test]
fn failed_slow_and_half_done_requests_never_break_a_committed_checkpoint() {
    let local = local_store(11);
    for seed in 0..40u64 {
        let what = format!("seed {seed}");
        let remote = SimObjects::new();
        remote.set_faults(SimRemoteFaults {
            seed,
            fail_permille: 60,
            lost_reply_permille: 60,
            slow_permille: 200,
            crash_before: None,
        });
        let t = tier(&remote);
        let mut ok = Vec::new();
        for r in &local.records {
            match run(t.upload(&local.io, r.clone(), None)) {
                Ok(_) => ok.push(r.id),
                Err(RemoteError::CommitUnknown { .. }) | Err(RemoteError::Object(_)) => {}
                Err(e) => panic!("{what}: checkpoint {}: {e}", r.id),
            }
        }
        remote.restart();
        let ids = run(t.checkpoint_ids()).unwrap();
        if let Some(newest) = ok.last() {
            assert!(ids.contains(newest), "{what}: committed {newest} is listed");
        }
        for id in ids {
            assert_restorable(&t, &local, id, &what);
        }
    }
}

#[test]
fn incremental_uploads_reuse_extents_and_two_writers_cannot_commit_one_id() {
    let local = local_store(3);
    let remote = SimObjects::new();
    let t = tier(&remote);
    let first = run(t.upload(&local.io, local.records[0].clone(), None)).unwrap();
    assert_eq!(first.extents_reused, 0);
    let second = run(t.upload(&local.io, local.records[1].clone(), None)).unwrap();
    assert!(
        second.extents_reused > 0,
        "checkpoint 2 references blocks of 1"
    );
    // Only the new bytes: the extents of checkpoint 2 start where those of 1 ended.
    let r1 = run(t.record(1)).unwrap();
    let r2 = run(t.record(2)).unwrap();
    for e in &r2.extents {
        if !r1.extents.contains(e) {
            for old in r1.extents.iter().filter(|o| o.segment == e.segment) {
                assert!(e.start >= old.end, "new extent {e:?} overlaps {old:?}");
            }
        }
    }
    // Two writers: another process uploads checkpoint 3 first.
    let other = tier(&remote);
    run(other.upload(&local.io, local.records[2].clone(), None)).unwrap();
    match run(t.upload(&local.io, local.records[2].clone(), None)) {
        Err(RemoteError::AlreadyCommitted { id: 3 }) => {}
        other => panic!("the second commit of 3 must fail, got {other:?}"),
    }
}

#[test]
fn damaged_records_are_skipped_and_protect_their_extents() {
    let local = local_store(5);
    let remote = SimObjects::new();
    let t = tier(&remote);
    for r in &local.records[..2] {
        run(t.upload(&local.io, r.clone(), None)).unwrap();
    }
    let mut bytes = run(remote.get(&layout::checkpoint_key(2), None))
        .unwrap()
        .to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    remote.overwrite_raw(&layout::checkpoint_key(2), bytes);
    let fresh = tier(&remote);
    let (latest, skipped) = run(fresh.latest(|_| true)).unwrap();
    assert_eq!(latest.map(|r| r.checkpoint.id), Some(1));
    assert_eq!(skipped.len(), 1);
    let before = remote.keys();
    let gc = run(fresh.gc(None, u64::MAX / 2, 0, true)).unwrap();
    assert!(
        gc.extents_deleted.is_empty(),
        "no extent collected while a record is unreadable"
    );
    assert_eq!(remote.keys(), before);
}

/// A fill reads a block asked for ahead of the background order; a fill that
/// stops leaves its marker, fails its waiters, and the next restore into the
/// directory removes it and starts over; a completed fill is a plain store.
#[test]
fn a_fill_reads_asked_for_blocks_first_and_an_interrupted_fill_starts_over() {
    let local = local_store(11);
    let remote = SimObjects::new();
    let t = tier(&remote);
    for r in &local.records {
        run(t.upload(&local.io, r.clone(), None)).unwrap();
    }
    let record = run(t.record(6)).unwrap();
    let first = *record.checkpoint.handles.iter().min().unwrap();
    let last = *record.checkpoint.handles.iter().max().unwrap();
    assert_ne!(
        first.segment, last.segment,
        "the checkpoint spans segments (so several ranged reads)"
    );
    let dir = tempdir("fill");
    let fill = RemoteFill::prepare(&record, &dir).unwrap();
    assert!(
        fill::is_interrupted(&dir),
        "the marker is there before any block"
    );
    assert!(!fill.is_written(&first) && !fill.is_written(&last));
    // Ask for the last block; then let exactly one request through.
    fill.prioritise([&last]);
    remote.set_faults(SimRemoteFaults {
        crash_before: Some(remote.requests() + 1),
        ..SimRemoteFaults::default()
    });
    assert!(run(fill.run(&t)).is_err(), "the crash stops the fill");
    assert!(fill.is_written(&last), "the block asked for was read first");
    assert!(!fill.is_written(&first), "the background order was not");
    match fill.wait(&first) {
        Err(RemoteError::FillFailed { id: 6, .. }) => {}
        other => panic!("a waiter of a failed fill gets its error, not {other:?}"),
    }
    assert!(
        fill::is_interrupted(&dir),
        "an interrupted fill keeps its marker"
    );

    // A new process restores into the same directory: the interrupted fill
    // is removed, and this one runs to the end.
    remote.restart();
    let t = tier(&remote);
    let fill = RemoteFill::prepare(&record, &dir).unwrap();
    let waiter = {
        let fill = fill.clone();
        std::thread::spawn(move || fill.wait(&first).map(|()| fill.is_written(&first)))
    };
    let report = run(fill.run(&t)).unwrap();
    assert!(
        waiter.join().unwrap().unwrap(),
        "the waiter returned once its block was written"
    );
    assert!(report.get_requests >= 2, "{report:?}");
    assert!(
        !fill::is_interrupted(&dir),
        "a completed fill removes its marker"
    );
    let reader = StoreReader::open(&dir).unwrap();
    assert!(reader.verify_checkpoint(6).unwrap().is_empty());
    for h in &record.checkpoint.handles {
        assert_eq!(reader.block(h).unwrap().as_bytes(), &local.payloads[h][..]);
    }
    // A completed fill is a store: a restore into it is refused.
    assert!(matches!(
        RemoteFill::prepare(&record, &dir),
        Err(RemoteError::NotEmpty { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
