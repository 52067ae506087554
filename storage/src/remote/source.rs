//! [`RemoteSource`]: a remote tier seen as a read-only store directory, so that a
//! [`StoreReader`](crate::StoreReader) (and so `spate-ckpt`) reads remote
//! checkpoints as it reads local ones.
//!
//! It presents one manifest generation holding every remote record that decodes
//! (in id order) and one file per segment those records reference. A segment is
//! downloaded when it is first mapped: ranged reads of the blocks the records
//! reference, at their offsets (other bytes read as zeros, and no handle covers
//! them). Records that do not decode are reported in [`RemoteSource::skipped`].
//!
//! Blocking: every call waits for the [`RemoteRuntime`](super::RemoteRuntime);
//! use it from a plain thread (a tool), never a reactor. Never writes.

use super::layout::RemoteRecord;
use super::{RemoteError, RemoteRuntime, RemoteTier};
use crate::format::{self, BlockHandle, ManifestRecord, SegmentId};
use crate::io::DirEntry;
use crate::reader::{Mapped, ReadSource};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

/// A remote tier as a [`ReadSource`].
pub struct RemoteSource {
    tier: Arc<RemoteTier>,
    rt: &'static RemoteRuntime,
    records: Vec<RemoteRecord>,
    manifest: Vec<u8>,
    /// Per segment: its length (the highest block end) and its blocks.
    segments: BTreeMap<SegmentId, (u64, Vec<(BlockHandle, usize)>)>,
    skipped: Vec<String>,
}

impl std::fmt::Debug for RemoteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSource")
            .field("records", &self.records.len())
            .finish()
    }
}

impl RemoteSource {
    /// Reads every record of `tier` (blocking on `rt`).
    pub fn open(
        tier: Arc<RemoteTier>,
        rt: &'static RemoteRuntime,
    ) -> Result<RemoteSource, RemoteError> {
        Self::open_with(tier, rt, None)
    }

    /// Reads the record of checkpoint `id` of `tier` only (blocking on
    /// `rt`): a source of that one checkpoint, whose segments hold only its
    /// blocks. Without the record, the source lists no checkpoint.
    pub fn open_checkpoint(
        tier: Arc<RemoteTier>,
        rt: &'static RemoteRuntime,
        id: u64,
    ) -> Result<RemoteSource, RemoteError> {
        Self::open_with(tier, rt, Some(id))
    }

    fn open_with(
        tier: Arc<RemoteTier>,
        rt: &'static RemoteRuntime,
        only: Option<u64>,
    ) -> Result<RemoteSource, RemoteError> {
        let t = tier.clone();
        let (records, skipped) = rt.block_on(async move {
            let mut records = Vec::new();
            let mut skipped = Vec::new();
            let ids = t.checkpoint_ids().await?;
            for id in ids.into_iter().filter(|&id| only.is_none_or(|o| o == id)) {
                match t.record(id).await {
                    Ok(r) => records.push(r),
                    Err(e @ RemoteError::Damaged { .. }) => skipped.push(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            Ok((records, skipped))
        })?;
        let mut segments: BTreeMap<SegmentId, (u64, Vec<(BlockHandle, usize)>)> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            for h in &r.checkpoint.handles {
                let s = segments.entry(h.segment).or_default();
                s.0 = s.0.max(h.offset + h.footprint());
                s.1.push((*h, i));
            }
        }
        for s in segments.values_mut() {
            s.0 = format::align_up(s.0, format::PAGE_SIZE as u64);
            s.1.sort();
            s.1.dedup_by_key(|(h, _)| *h);
        }
        let batch: Vec<ManifestRecord> = records
            .iter()
            .map(|r| ManifestRecord::CheckpointCompleted(r.checkpoint.clone()))
            .collect();
        let manifest = if batch.is_empty() {
            Vec::new()
        } else {
            format::encode_batch(&batch, 0)
        };
        Ok(RemoteSource {
            tier,
            rt,
            records,
            manifest,
            segments,
            skipped,
        })
    }

    /// Records that did not decode (they are not listed).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The records listed, increasing ids.
    pub fn records(&self) -> &[RemoteRecord] {
        &self.records
    }
}

fn manifest_name() -> String {
    format::manifest_file_name(1)
}

impl ReadSource for RemoteSource {
    fn list(&self) -> io::Result<Vec<DirEntry>> {
        let mut out = vec![DirEntry {
            name: manifest_name(),
            len: self.manifest.len() as u64,
        }];
        out.extend(self.segments.iter().map(|(id, (len, _))| DirEntry {
            name: id.file_name(),
            len: *len,
        }));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        if name == manifest_name() {
            return Ok(self.manifest.clone());
        }
        Ok(self.map(name)?.bytes().to_vec())
    }

    fn map(&self, name: &str) -> io::Result<Mapped> {
        let Some((len, blocks)) =
            SegmentId::parse_file_name(name).and_then(|id| self.segments.get(&id))
        else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let mut bytes = vec![0u8; *len as usize];
        // (extent key, offset in the extent, length, segment offset); blocks
        // of one extent up to 1 MiB apart in one read.
        let mut reads: Vec<(String, u64, u64, u64)> = Vec::new();
        for (h, i) in blocks {
            let Some(e) = self.records[*i].extent_for(h) else {
                continue;
            };
            let (at, n) = (h.offset - e.start, h.footprint());
            match reads.last_mut() {
                Some((key, start, len, _))
                    if *key == e.key && at >= *start && at <= *start + *len + (1 << 20) =>
                {
                    *len = (*len).max(at + n - *start);
                }
                _ => reads.push((e.key.clone(), at, n, h.offset)),
            }
        }
        let tier = self.tier.clone();
        let fetched = self
            .rt
            .block_on(async move {
                let mut out = Vec::with_capacity(reads.len());
                for (key, at, n, offset) in reads {
                    out.push((offset, tier.backend().get(&key, Some(at..at + n)).await?));
                }
                Ok::<_, super::ObjectError>(out)
            })
            .map_err(|e| io::Error::other(e.to_string()))?;
        for (offset, data) in fetched {
            let start = offset as usize;
            if let Some(dst) = bytes.get_mut(start..start + data.len()) {
                dst.copy_from_slice(&data);
            }
        }
        Ok(Mapped::copy_from(&bytes))
    }
}
