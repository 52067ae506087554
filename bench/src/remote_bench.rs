//! The remote tier's upload benchmark (`spate-bench remote-upload`): a
//! checkpoint of `--mib` MiB of new blocks (1 MiB each, in 64 MiB segments,
//! as the engine writes them) is uploaded and committed by the remote tier
//! (`RemoteTier::upload`: extents in 8 MiB parts, 4 at a time, the
//! create-only record, retention), and the same bytes are uploaded as one
//! plain multipart PUT through `object_store`'s own `WriteMultipart` (8 MiB
//! parts, 4 at a time) to the same server; runs interleave, medians are
//! reported, each run under a fresh prefix (deleted afterwards).
//!
//! The local store is the simulated backend (in memory), so local reads cost
//! no disk time in either variant.

use crate::remote_run::{clear, sub_url};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use spate_storage::reader::ReadSource;
use spate_storage::remote::{CloudBackend, RemoteRuntime, RemoteTier, TierOptions};
use spate_storage::sim::block_on;
use spate_storage::{BlockKind, CheckpointRecord, SimIo, Store, StoreOptions};
use std::sync::Arc;
use std::time::Instant;

/// The benchmark's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadSummary {
    /// Bytes of the checkpoint's blocks.
    pub bytes: u64,
    /// Runs per variant.
    pub runs: usize,
    /// The tier's upload and commit, per run, MB/s (10^6 bytes).
    pub tier_mb_per_s: Vec<f64>,
    /// The plain multipart PUT, per run, MB/s.
    pub plain_mb_per_s: Vec<f64>,
    /// Medians.
    pub tier_median_mb_per_s: f64,
    /// Medians.
    pub plain_median_mb_per_s: f64,
    /// Tier median / plain median.
    pub ratio: f64,
    /// PUT requests of one tier upload.
    pub tier_put_requests: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark against `url`.
pub fn run(url: &str, mib: u64, runs: usize) -> anyhow::Result<UploadSummary> {
    anyhow::ensure!(mib > 0 && runs > 0, "--mib and --runs must be at least 1");
    let io = SimIo::new();
    let record = block_on(async {
        let mut store = Store::open(io.clone(), StoreOptions::default()).await?;
        let mut w = store.segment_writer(0);
        let mut handles = Vec::new();
        for i in 0..mib {
            let payload: Vec<u8> = (0..(1usize << 20) - 64)
                .map(|k| (k as u64 ^ i.wrapping_mul(0x9e37_79b9)) as u8)
                .collect();
            handles.push(w.append(BlockKind::OTHER, &payload));
            if i % 16 == 15 {
                w.flush().await?;
            }
        }
        w.flush().await?;
        let record = CheckpointRecord {
            id: 1,
            timestamp_ms: 0,
            metadata: Vec::new(),
            handles,
        };
        store.commit_checkpoint(record.clone()).await?;
        Ok::<_, anyhow::Error>(record)
    })?;
    let bytes: u64 = record.handles.iter().map(|h| h.footprint()).sum();
    let segments: Vec<Vec<u8>> = ReadSource::list(&io)?
        .into_iter()
        .filter(|e| spate_storage::SegmentId::parse_file_name(&e.name).is_some())
        .map(|e| io.file_bytes(&e.name).unwrap_or_default())
        .collect();
    let plain_data: Vec<u8> = segments.concat();
    let rt = RemoteRuntime::global().map_err(anyhow::Error::msg)?;
    let mut tier_rates = Vec::new();
    let mut plain_rates = Vec::new();
    let mut puts = 0;
    for i in 0..runs {
        // The tier.
        let prefix = sub_url(url, &format!("upload-bench-tier-{i}"));
        clear(&prefix)?;
        let owned = prefix.clone();
        let backend = rt
            .block_on(async move { CloudBackend::from_url(&owned) })
            .map_err(anyhow::Error::new)?;
        let tier = Arc::new(RemoteTier::new(Arc::new(backend), TierOptions::default()));
        let (t, io2, r) = (tier.clone(), io.clone(), record.clone());
        let start = Instant::now();
        let report = rt
            .block_on(async move { t.upload(&io2, r, None).await })
            .context("the tier's upload")?;
        let secs = start.elapsed().as_secs_f64();
        tier_rates.push(bytes as f64 / secs / 1e6);
        puts = report.put_requests;
        clear(&prefix)?;
        // The plain multipart PUT of the same bytes.
        let prefix = sub_url(url, &format!("upload-bench-plain-{i}"));
        clear(&prefix)?;
        let owned = prefix.clone();
        let data = bytes::Bytes::from(plain_data.clone());
        let start = Instant::now();
        rt.block_on(async move {
            let backend = CloudBackend::from_url(&owned).map_err(anyhow::Error::new)?;
            let (store, root) = backend.object_store();
            let path = object_store::path::Path::from(format!("{root}plain"));
            let upload = store.put_multipart_opts(&path, Default::default()).await?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
            for chunk in data.chunks(8 << 20) {
                w.wait_for_capacity(4).await?;
                w.put(data.slice_ref(chunk));
            }
            w.finish().await?;
            Ok::<_, anyhow::Error>(())
        })
        .context("the plain multipart PUT")?;
        let secs = start.elapsed().as_secs_f64();
        plain_rates.push(plain_data.len() as f64 / secs / 1e6);
        clear(&prefix)?;
        eprintln!(
            "spate-bench remote-upload: run {}: tier {:.1} MB/s, plain {:.1} MB/s",
            i + 1,
            tier_rates[i],
            plain_rates[i]
        );
    }
    let (t, p) = (median(&tier_rates), median(&plain_rates));
    Ok(UploadSummary {
        bytes,
        runs,
        tier_mb_per_s: tier_rates,
        plain_mb_per_s: plain_rates,
        tier_median_mb_per_s: t,
        plain_median_mb_per_s: p,
        ratio: t / p,
        tier_put_requests: puts,
    })
}
