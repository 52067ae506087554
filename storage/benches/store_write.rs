//! Benchmark program: sequential checkpoint write throughput through the store
//! (append + flush with fdatasync + manifest commit) against a plain sequential
//! O_DIRECT write of the same bytes with the same sync points, in the same run; and
//! block read latency through mmap (first access with CRC check, then cached).
//!
//! The store is measured as the engine drives it (`write_behind` after each
//! append, so its writes overlap serialisation) and, for reference, with `flush`
//! alone (every buffer of a checkpoint held in memory until the flush). The plain
//! write fills a buffer, writes it, waits, and so on (no overlap); a second plain
//! write keeps up to 4 writes in flight while it fills the next buffer, the same
//! overlap the store gets, for a like-for-like ratio.
//!
//! `cargo bench -p spate-storage --bench store_write` (env `SPATE_BENCH_MIB`,
//! default 512; `SPATE_BENCH_DIR`, default the system temp dir, must not be tmpfs).

use std::time::Instant;

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use spate_storage::{BlockKind, CheckpointRecord, Store, StoreOptions, StoreReader};

const BLOCK_BYTES: usize = 1 << 20;
const CHECKPOINT_BYTES: usize = 64 << 20;

fn fill(buf: &mut [u8], seed: u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let v = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

async fn plain(dir: &std::path::Path, total: usize) -> f64 {
    let path = dir.join("plain.dat");
    let file = glommio::io::DmaFile::create(&path).await.unwrap();
    let start = Instant::now();
    let mut off = 0u64;
    let mut blocks = 0u64;
    while (off as usize) < total {
        let mut buf = glommio::allocate_dma_buffer_global(BLOCK_BYTES);
        fill(buf.as_bytes_mut(), blocks);
        let n = file.write_at(buf, off).await.unwrap();
        assert_eq!(n, BLOCK_BYTES);
        off += BLOCK_BYTES as u64;
        blocks += 1;
        if off as usize % CHECKPOINT_BYTES == 0 {
            file.fdatasync().await.unwrap();
        }
    }
    file.fdatasync().await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    file.close().await.unwrap();
    std::fs::remove_file(&path).unwrap();
    total as f64 / secs
}

/// The plain write with what the store gets from `write_behind`: up to 4
/// writes in flight while the next buffer is filled, buffers from the
/// reactor's registered DMA pool (a like-for-like baseline for the engine's
/// path).
async fn plain_overlapped(dir: &std::path::Path, total: usize) -> f64 {
    let path = dir.join("plain-overlapped.dat");
    let file = std::rc::Rc::new(glommio::io::DmaFile::create(&path).await.unwrap());
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut off = 0u64;
    let mut blocks = 0u64;
    while (off as usize) < total {
        // From the reactor's registered DMA pool, as the store's buffers.
        let mut buf = file.alloc_dma_buffer(BLOCK_BYTES);
        fill(buf.as_bytes_mut(), blocks);
        let f = file.clone();
        let at = off;
        in_flight.push_back(glommio::spawn_local(async move {
            f.write_at(buf, at).await.unwrap()
        }));
        if in_flight.len() >= 4 {
            assert_eq!(in_flight.pop_front().unwrap().await, BLOCK_BYTES);
        }
        off += BLOCK_BYTES as u64;
        blocks += 1;
        if off as usize % CHECKPOINT_BYTES == 0 {
            while let Some(w) = in_flight.pop_front() {
                assert_eq!(w.await, BLOCK_BYTES);
            }
            file.fdatasync().await.unwrap();
        }
    }
    while let Some(w) = in_flight.pop_front() {
        assert_eq!(w.await, BLOCK_BYTES);
    }
    file.fdatasync().await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    std::rc::Rc::try_unwrap(file)
        .ok()
        .unwrap()
        .close()
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    total as f64 / secs
}

async fn store(dir: &std::path::Path, total: usize, write_behind: bool) -> f64 {
    let opts = StoreOptions {
        segment_size_bytes: 256 << 20,
        write_buffer_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let mut store = Store::open_dir(dir, opts).await.unwrap();
    let mut w = store.segment_writer(0);
    let start = Instant::now();
    let mut written = 0usize;
    let mut blocks = 0u64;
    let mut handles = Vec::new();
    let mut id = 0;
    while written < total {
        handles.push(
            w.append_with(BlockKind::KEYED_STATE_FULL, BLOCK_BYTES, |buf| {
                fill(buf, blocks)
            }),
        );
        if write_behind {
            w.write_behind().await;
        }
        written += BLOCK_BYTES;
        blocks += 1;
        if written % CHECKPOINT_BYTES == 0 || written >= total {
            w.flush().await.unwrap();
            id += 1;
            let rec = CheckpointRecord {
                id,
                timestamp_ms: 0,
                metadata: vec![],
                handles: std::mem::take(&mut handles),
            };
            store.commit_checkpoint(rec).await.unwrap();
        }
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mib: usize = std::env::var("SPATE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let total = mib << 20;
    let base = std::env::var_os("SPATE_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("spate-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.clone();
    let (plain_bps, overlapped_bps, store_bps, flush_only_bps) =
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let mut p = Vec::new();
                let mut o = Vec::new();
                let mut s = Vec::new();
                let mut f = Vec::new();
                for round in 0..2 {
                    p.push(plain(&d, total).await);
                    o.push(plain_overlapped(&d, total).await);
                    let sd = d.join(format!("store-{round}"));
                    std::fs::create_dir_all(&sd).unwrap();
                    s.push(store(&sd, total, true).await);
                    let fd = d.join(format!("flush-only-{round}"));
                    std::fs::create_dir_all(&fd).unwrap();
                    f.push(store(&fd, total, false).await);
                    std::fs::remove_dir_all(&fd).unwrap();
                }
                let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
                (best(&p), best(&o), best(&s), best(&f))
            })
            .unwrap()
            .join()
            .unwrap();
    println!(
        "sequential write, {mib} MiB, {} MiB blocks, fdatasync every {} MiB (best of 2)",
        BLOCK_BYTES >> 20,
        CHECKPOINT_BYTES >> 20
    );
    println!(
        "  plain O_DIRECT : {:>8.1} MiB/s",
        plain_bps / (1 << 20) as f64
    );
    println!(
        "  store          : {:>8.1} MiB/s",
        store_bps / (1 << 20) as f64
    );
    println!("  store / plain  : {:>8.3}", store_bps / plain_bps);
    println!(
        "  plain O_DIRECT, 4 writes in flight (like for like): {:>8.1} MiB/s; store / it: {:.3}",
        overlapped_bps / (1 << 20) as f64,
        store_bps / overlapped_bps
    );
    println!(
        "  store, flush only (no write_behind): {:>8.1} MiB/s, / plain {:.3}",
        flush_only_bps / (1 << 20) as f64,
        flush_only_bps / plain_bps
    );

    // Read latency through mmap.
    let reader = StoreReader::open(dir.join("store-1")).unwrap();
    let handles: Vec<_> = reader
        .checkpoints()
        .iter()
        .flat_map(|c| c.handles.clone())
        .collect();
    let mut first = Histogram::<u64>::new(3).unwrap();
    let mut cached = Histogram::<u64>::new(3).unwrap();
    let mut sink = 0u64;
    for h in &handles {
        let t = Instant::now();
        let b = reader.block(h).unwrap();
        sink = sink.wrapping_add(u64::from(b[0]));
        first.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    for _ in 0..10 {
        for h in &handles {
            let t = Instant::now();
            let b = reader.block(h).unwrap();
            sink = sink.wrapping_add(u64::from(b[b.len() - 1]));
            cached.record(t.elapsed().as_nanos() as u64).unwrap();
        }
    }
    for (name, hist) in [
        ("first access (CRC check)", &first),
        ("verified (header check)", &cached),
    ] {
        println!(
            "  read 1 MiB block, {name}: p50 {} us, p99 {} us, max {} us (n={})",
            hist.value_at_quantile(0.5) / 1000,
            hist.value_at_quantile(0.99) / 1000,
            hist.max() / 1000,
            hist.len()
        );
    }
    std::hint::black_box(sink);
    std::fs::remove_dir_all(&dir).unwrap();
}
