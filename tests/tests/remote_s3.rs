//! The remote tier against a real S3 server (moto, `SPATE_S3_ENDPOINT`;
//! `SPATE_SKIP_S3_TESTS=1` skips): incremental checkpoints upload only new
//! bytes (PUTs counted), create-only records keep a second writer from
//! committing the same id, GC leaves exactly the referenced objects and aborts
//! abandoned multipart uploads, and a checkpoint restores into an empty
//! directory by ranged reads.
//!
//! One test function: it sets the (fake) credentials in the environment, which
//! the S3 client reads, before any other thread of this binary could read it.

use spate_storage::remote::{
    layout, Bytes, CloudBackend, ObjectBackend, RemoteError, RemoteRuntime, RemoteTier, TierOptions,
};
use spate_storage::sim::block_on;
use spate_storage::{
    BlockHandle, BlockKind, CheckpointRecord, SimIo, Store, StoreOptions, StoreReader,
};
use std::collections::BTreeSet;
use std::sync::Arc;

fn rt() -> &'static RemoteRuntime {
    RemoteRuntime::global().unwrap()
}

fn tier(url: &str, options: TierOptions) -> RemoteTier {
    let owned = url.to_owned();
    let backend = rt()
        .block_on(async move { CloudBackend::from_url(&owned) })
        .unwrap();
    RemoteTier::new(Arc::new(backend), options)
}

fn options() -> TierOptions {
    TierOptions {
        retained_checkpoints: 2,
        // S3's smallest part is 5 MiB: the large checkpoint below uses parts.
        multipart_threshold_bytes: 6 << 20,
        part_size_bytes: 5 << 20,
        part_concurrency: 2,
        gc_grace_ms: 0,
    }
}

/// Runs a tier request on the remote runtime.
fn on_rt<T: Send + 'static>(
    tier: &Arc<RemoteTier>,
    f: impl FnOnce(Arc<RemoteTier>) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> T {
    let t = tier.clone();
    rt().block_on(async move { f(t).await })
}

/// A local store over the simulated backend with checkpoints built by
/// `blocks`: per checkpoint, the sizes of new blocks; each checkpoint also
/// references every block of the one before (incremental).
fn local(blocks: &[&[usize]]) -> (SimIo, Vec<CheckpointRecord>) {
    let io = SimIo::new();
    let mut records = Vec::new();
    block_on(async {
        let mut store = Store::open(
            io.clone(),
            StoreOptions {
                retained_checkpoints: 16,
                ..StoreOptions::default()
            },
        )
        .await
        .unwrap();
        let mut w = store.segment_writer(0);
        let mut prev: Vec<BlockHandle> = Vec::new();
        for (i, sizes) in blocks.iter().enumerate() {
            let mut handles = prev.clone();
            for (j, &len) in sizes.iter().enumerate() {
                let p: Vec<u8> = (0..len).map(|k| (k * 31 + i * 7 + j) as u8).collect();
                handles.push(w.append(BlockKind::OPERATOR_STATE, &p));
            }
            w.flush().await.unwrap();
            let record = CheckpointRecord {
                id: i as u64 + 1,
                timestamp_ms: 0,
                metadata: vec![i as u8],
                handles: handles.clone(),
            };
            store.commit_checkpoint(record.clone()).await.unwrap();
            records.push(record);
            prev = handles;
        }
    });
    (io, records)
}

fn upload(
    tier: &Arc<RemoteTier>,
    io: &SimIo,
    r: &CheckpointRecord,
) -> Result<spate_storage::remote::UploadReport, RemoteError> {
    let (io, r) = (io.clone(), r.clone());
    on_rt(tier, move |t| {
        Box::pin(async move { t.upload(&io, r, None).await })
    })
}

fn keys(url: &str) -> BTreeSet<String> {
    let owned = url.to_owned();
    rt().block_on(async move {
        let b = CloudBackend::from_url(&owned).unwrap();
        b.list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    })
}

#[test]
fn remote_tier_against_s3() {
    let Some(endpoint) = spate_tests::s3::endpoint() else {
        return;
    };
    for (k, v) in spate_tests::s3::TEST_CREDENTIALS {
        std::env::set_var(k, v);
    }
    let run = std::process::id();
    incremental_puts_and_double_commit(&spate_tests::s3::url(&endpoint, &format!("t{run}/inc")));
    gc_and_multipart(
        &spate_tests::s3::url(&endpoint, &format!("t{run}/gc")),
        &endpoint,
        &format!("t{run}/gc/"),
    );
}

fn incremental_puts_and_double_commit(url: &str) {
    // Checkpoint 1: two blocks; 2: one more; 3: two more. Every checkpoint
    // references the blocks of the one before.
    let (io, records) = local(&[&[10_000, 20_000], &[5_000], &[7_000, 1_000]]);
    let t = Arc::new(tier(url, options()));
    let first = upload(&t, &io, &records[0]).unwrap();
    assert_eq!((first.extents_uploaded, first.put_requests), (1, 2));
    let second = upload(&t, &io, &records[1]).unwrap();
    // One extent with the new block only, and the record: two PUTs.
    assert_eq!(second.put_requests, 2, "{second:?}");
    assert_eq!(second.extents_reused, 1);
    let new_bytes = records[1].handles[2].footprint();
    let record_bytes = second.bytes_uploaded - new_bytes;
    assert!(
        record_bytes < 4096 + 512,
        "only the new block and a small record: {second:?}"
    );
    // A second writer (another process on the same prefix) commits 3 first.
    let other = Arc::new(tier(url, options()));
    upload(&other, &io, &records[2]).unwrap();
    match upload(&t, &io, &records[2]) {
        Err(RemoteError::AlreadyCommitted { id: 3 }) => {}
        other => panic!("S3's conditional put must refuse the second commit of 3: {other:?}"),
    }
    // Restore the newest into an empty directory: ranged reads only.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("remote-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.clone();
    let report = on_rt(&t, move |t| {
        Box::pin(async move {
            let r = t.record(3).await.unwrap();
            t.download(&r, &d).await.unwrap()
        })
    });
    assert!(report.get_requests >= 1);
    let reader = StoreReader::open(&dir).unwrap();
    assert_eq!(reader.latest().map(|c| c.id), Some(3));
    assert!(reader.verify_checkpoint(3).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn gc_and_multipart(url: &str, endpoint: &str, prefix: &str) {
    // A 12 MiB block: a multipart upload (three 5 MiB parts at most).
    let (io, records) = local(&[&[12 << 20], &[4_000], &[3_000], &[2_000]]);
    let t = Arc::new(tier(url, options()));
    let first = upload(&t, &io, &records[0]).unwrap();
    assert!(
        first.put_requests >= 4,
        "parts, completion, record: {first:?}"
    );
    // An abandoned multipart upload, as a killed process leaves it.
    let abandoned = layout::Extent::new("deadbeefdeadbeef", spate_storage::SegmentId(9), 0, 100);
    let marker = layout::multipart_marker_key("deadbeefdeadbeef", 0);
    let (k, m) = (abandoned.key.clone(), marker.clone());
    on_rt(&t, move |t| {
        Box::pin(async move {
            let b = t.backend();
            let upload = b.create_multipart(&k).await.unwrap();
            b.put_part(&k, &upload, 0, Bytes::from(vec![1u8; 100]))
                .await
                .unwrap();
            b.put(&m, Bytes::from(layout::encode_marker(&k, &upload)), false)
                .await
                .unwrap();
            // And an orphan extent of a failed upload.
            b.put(
                "extents/deadbeefdeadbeef/0000000000000009-0000000000000000-0000000000000010",
                Bytes::from(vec![0u8; 16]),
                true,
            )
            .await
            .unwrap();
        })
    });
    let staged = spate_tests::s3::multipart_uploads(endpoint, prefix);
    assert!(
        staged.contains("<UploadId>"),
        "the abandoned upload is staged: {staged}"
    );
    // Each commit's retention collects (grace 0 here): the abandoned upload
    // is aborted, the orphan extent deleted.
    for r in &records[1..] {
        let report = upload(&t, &io, r).unwrap();
        assert!(report.warnings.is_empty(), "{report:?}");
    }
    let staged = spate_tests::s3::multipart_uploads(endpoint, prefix);
    assert!(
        !staged.contains("<UploadId>"),
        "no staged upload left: {staged}"
    );
    let report = on_rt(&t, |t| {
        Box::pin(async move { t.gc(None, u64::MAX / 2, 0, true).await.unwrap() })
    });
    assert!(
        report.extents_deleted.is_empty() && report.uploads_aborted.is_empty(),
        "{report:?}"
    );
    assert!(!keys(url).contains(&marker));
    // Exactly the two retained records and the extents they reference.
    let mut expected = BTreeSet::new();
    let ids = on_rt(&t, |t| {
        Box::pin(async move { t.checkpoint_ids().await.unwrap() })
    });
    assert_eq!(ids, vec![3, 4]);
    for id in ids {
        expected.insert(layout::checkpoint_key(id));
        let r = on_rt(&t, move |t| {
            Box::pin(async move { t.record(id).await.unwrap() })
        });
        expected.extend(r.extents.into_iter().map(|e| e.key));
    }
    assert_eq!(keys(url), expected);
}
