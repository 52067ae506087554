//! [`RemoteTier`]: uploads committed local checkpoints to an [`ObjectBackend`],
//! lists and restores remote checkpoints, and applies remote retention and GC.
//!
//! Upload of checkpoint `N` (the order the crash analysis in
//! `docs/storage-format.md` §8 relies on):
//! 1. every block of `N` not covered by an extent of a retained remote record
//!    (known in memory) is covered by one new extent per segment, read from the
//!    local segment file and put (multipart for large extents, each multipart
//!    upload announced by a marker object first);
//! 2. the record of `N` is put create-only: the remote commit point. A lost
//!    reply is resolved by reading the record back;
//! 3. retention: records older than the `k` newest (and older than `keep_from`)
//!    are deleted, then extents that no remaining record references and that are
//!    older than the grace period (an upload in progress may still reference a
//!    fresh one), then abandoned multipart uploads older than the grace period.
//!
//! A restore picks the newest record that decodes and fills an empty local
//! directory with the blocks it references ([`RemoteFill`]: at once with
//! [`RemoteTier::download`], or in the background while a job runs).
//!
//! Owns the remote layout; reads local segment files, and writes local files only
//! into an empty directory (a restore). Its futures are `Send` and run on the
//! [`RemoteRuntime`](super::RemoteRuntime) (or any executor, for the simulated
//! backend); file reads and writes block that thread, never a reactor.

use super::fill::RemoteFill;
use super::layout::{self, Extent, RemoteRecord};
use super::{ObjectBackend, ObjectError};
use crate::format::{CheckpointRecord, SegmentId};
use crate::reader::ReadSource;
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Tuning of a [`RemoteTier`].
#[derive(Debug, Clone, PartialEq)]
pub struct TierOptions {
    /// Remote checkpoints kept (at least 1).
    pub retained_checkpoints: usize,
    /// Extents at least this large are uploaded in parts (when the backend can).
    pub multipart_threshold_bytes: u64,
    /// Size of each part but the last (S3: at least 5 MiB).
    pub part_size_bytes: usize,
    /// Parts uploaded at once.
    pub part_concurrency: usize,
    /// Unreferenced extents and multipart uploads younger than this are kept:
    /// an upload in progress may still reference them. Set it above the
    /// checkpoint timeout.
    pub gc_grace_ms: u64,
}

impl Default for TierOptions {
    fn default() -> Self {
        TierOptions {
            retained_checkpoints: 3,
            multipart_threshold_bytes: 16 << 20,
            part_size_bytes: 8 << 20,
            part_concurrency: 4,
            gc_grace_ms: 15 * 60 * 1000,
        }
    }
}

/// What went wrong in a remote operation. Messages name keys and local files,
/// never credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// A request failed.
    #[error("remote tier: {0}")]
    Object(#[from] ObjectError),
    /// Another writer committed this checkpoint id first.
    #[error("remote checkpoint {id} already exists: another writer committed it")]
    AlreadyCommitted {
        /// The id.
        id: u64,
    },
    /// Whether the record of `id` was written is unknown (its put failed and
    /// reading it back failed too): the caller must not act on either outcome.
    #[error("remote checkpoint {id}: its commit is unknown ({reason})")]
    CommitUnknown {
        /// The id.
        id: u64,
        /// The last error.
        reason: String,
    },
    /// A remote record does not decode.
    #[error("remote checkpoint {id} is damaged: {reason}")]
    Damaged {
        /// The id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// Reading a local segment or writing the restore directory failed.
    #[error("remote tier: local file {path}: {source}")]
    Local {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A restore target directory holds a store already.
    #[error("cannot restore into {dir}: it holds a checkpoint store already")]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// A restore from the remote tier stopped before the block asked for
    /// arrived (the first error of its fill).
    #[error("remote checkpoint {id}: the restore did not complete: {reason}")]
    FillFailed {
        /// The checkpoint.
        id: u64,
        /// The fill's error.
        reason: String,
    },
    /// A downloaded block failed verification.
    #[error("remote checkpoint {id}: block at segment {segment} offset {offset}: {reason}")]
    BadBlock {
        /// The checkpoint.
        id: u64,
        /// The segment.
        segment: SegmentId,
        /// The block's offset.
        offset: u64,
        /// Why.
        reason: String,
    },
}

/// What one [`RemoteTier::upload`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadReport {
    /// The checkpoint.
    pub id: u64,
    /// Extents uploaded for it.
    pub extents_uploaded: usize,
    /// Extents of earlier checkpoints it references.
    pub extents_reused: usize,
    /// Bytes uploaded (extents and record).
    pub bytes_uploaded: u64,
    /// PUT requests (single puts, parts, completions; the record included).
    pub put_requests: u64,
    /// Records deleted by retention.
    pub records_deleted: Vec<u64>,
    /// Extents deleted by GC.
    pub extents_deleted: usize,
    /// Abandoned multipart uploads aborted.
    pub uploads_aborted: usize,
    /// Non-fatal problems of retention and GC (the commit itself succeeded).
    pub warnings: Vec<String>,
}

/// What [`RemoteTier::gc`] did or would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Records deleted (or to delete).
    pub records_deleted: Vec<u64>,
    /// Extent keys deleted (or to delete).
    pub extents_deleted: Vec<String>,
    /// Bytes of those extents.
    pub bytes_freed: u64,
    /// Multipart markers (and their uploads) aborted.
    pub uploads_aborted: Vec<String>,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub kept_young: usize,
    /// Problems (failed deletions), which a later GC retries.
    pub warnings: Vec<String>,
}

/// What a restore downloaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadReport {
    /// The checkpoint.
    pub id: u64,
    /// Ranged GET requests.
    pub get_requests: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Segment files written.
    pub segments: usize,
}

/// The remote tier over one backend and URL prefix. `Send + Sync`; share it
/// with an `Arc`.
pub struct RemoteTier {
    backend: Arc<dyn ObjectBackend>,
    options: TierOptions,
    /// Random per tier: names this writer's extents and markers.
    token: String,
    markers: AtomicU64,
    known: Mutex<Option<Known>>,
}

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier")
            .field("token", &self.token)
            .finish()
    }
}

/// Decoded records of the retained remote checkpoints.
#[derive(Debug, Default, Clone)]
struct Known {
    records: BTreeMap<u64, RemoteRecord>,
}

impl Known {
    fn extents(&self) -> impl Iterator<Item = &Extent> {
        self.records.values().flat_map(|r| r.extents.iter())
    }
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RemoteTier {
    /// A tier over `backend`.
    pub fn new(backend: Arc<dyn ObjectBackend>, options: TierOptions) -> RemoteTier {
        assert!(options.retained_checkpoints >= 1, "retain at least one");
        assert!(options.part_size_bytes > 0 && options.part_concurrency > 0);
        RemoteTier {
            backend,
            options,
            token: random_token(),
            markers: AtomicU64::new(0),
            known: Mutex::new(None),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn ObjectBackend> {
        &self.backend
    }

    /// The options.
    pub fn options(&self) -> &TierOptions {
        &self.options
    }

    /// Ids of the remote records, increasing (whether they decode or not).
    pub async fn checkpoint_ids(&self) -> Result<Vec<u64>, RemoteError> {
        let mut ids: Vec<u64> = self
            .backend
            .list(layout::CHECKPOINTS_DIR)
            .await?
            .iter()
            .filter_map(|o| layout::parse_checkpoint_key(&o.key))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads and decodes the record of `id`.
    pub async fn record(&self, id: u64) -> Result<RemoteRecord, RemoteError> {
        let bytes = self.backend.get(&layout::checkpoint_key(id), None).await?;
        let record = RemoteRecord::decode(&bytes).map_err(|e| RemoteError::Damaged {
            id,
            reason: e.to_string(),
        })?;
        if record.checkpoint.id != id {
            return Err(RemoteError::Damaged {
                id,
                reason: format!("the record holds checkpoint {}", record.checkpoint.id),
            });
        }
        Ok(record)
    }

    /// The newest record that decodes among ids accepted by `accept`, newest
    /// first, with the reasons the newer ones were skipped.
    pub async fn latest(
        &self,
        accept: impl Fn(u64) -> bool,
    ) -> Result<(Option<RemoteRecord>, Vec<String>), RemoteError> {
        let mut skipped = Vec::new();
        for id in self.checkpoint_ids().await?.into_iter().rev() {
            if !accept(id) {
                continue;
            }
            match self.record(id).await {
                Ok(r) => return Ok((Some(r), skipped)),
                Err(e @ RemoteError::Damaged { .. }) => skipped.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Ok((None, skipped))
    }

    /// Deletes the record of committed checkpoint `id` again (a cluster's
    /// part whose global checkpoint was aborted): the checkpoint no longer
    /// exists remotely. Its extents, referenced by no other record, go with
    /// the next garbage collection; later uploads do not reuse them.
    pub async fn discard(&self, id: u64) -> Result<(), RemoteError> {
        self.backend.delete(&layout::checkpoint_key(id)).await?;
        if let Some(known) = lock(&self.known).as_mut() {
            known.records.remove(&id);
        }
        Ok(())
    }

    /// Loads the retained records (once): the extents later uploads can reuse.
    async fn known(&self) -> Result<Known, RemoteError> {
        if let Some(k) = lock(&self.known).clone() {
            return Ok(k);
        }
        let mut known = Known::default();
        for id in self.checkpoint_ids().await? {
            match self.record(id).await {
                Ok(r) => {
                    known.records.insert(id, r);
                }
                // A damaged record's extents are not reused (nor deleted: see gc).
                Err(RemoteError::Damaged { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        *lock(&self.known) = Some(known.clone());
        Ok(known)
    }

    /// Uploads checkpoint `record`, whose segments `local` holds (a store
    /// directory: [`DirSource`](crate::reader::DirSource)), and commits it
    /// remotely (create-only record); then applies retention, keeping every
    /// checkpoint from `keep_from` on.
    pub async fn upload(
        &self,
        local: &dyn ReadSource,
        record: CheckpointRecord,
        keep_from: Option<u64>,
    ) -> Result<UploadReport, RemoteError> {
        let known = self.known().await?;
        let mut report = UploadReport {
            id: record.id,
            ..UploadReport::default()
        };
        // Plan: reuse covering extents; one new extent per segment for the rest.
        let mut used: BTreeSet<Extent> = BTreeSet::new();
        let mut missing: BTreeMap<SegmentId, (u64, u64)> = BTreeMap::new();
        for h in &record.handles {
            if let Some(e) = known.extents().find(|e| e.covers(h)) {
                used.insert(e.clone());
                continue;
            }
            let end = h.offset + h.footprint();
            let r = missing.entry(h.segment).or_insert((h.offset, end));
            r.0 = r.0.min(h.offset);
            r.1 = r.1.max(end);
        }
        report.extents_reused = used.len();
        for (&segment, &(start, end)) in &missing {
            let extent = Extent::new(&self.token, segment, start, end);
            let data = read_range(local, segment, start, end)?;
            report.put_requests += self.put_extent(&extent, data).await?;
            report.bytes_uploaded += extent.len();
            report.extents_uploaded += 1;
            used.insert(extent);
        }
        let remote = RemoteRecord {
            checkpoint: record,
            extents: used.into_iter().collect(),
        };
        let id = remote.checkpoint.id;
        let bytes = remote.encode();
        report.bytes_uploaded += bytes.len() as u64;
        report.put_requests += 1;
        self.put_record(id, Bytes::from(bytes)).await?;
        // Committed remotely.
        let mut known = known;
        known.records.insert(id, remote);
        *lock(&self.known) = Some(known);
        match self.retain(keep_from, now_ms()).await {
            Ok(gc) => {
                report.records_deleted = gc.records_deleted;
                report.extents_deleted = gc.extents_deleted.len();
                report.uploads_aborted = gc.uploads_aborted.len();
                report.warnings = gc.warnings;
            }
            Err(e) => report.warnings.push(format!("remote retention: {e}")),
        }
        Ok(report)
    }

    /// Puts the record of `id` create-only, resolving a lost reply by reading
    /// it back.
    async fn put_record(&self, id: u64, bytes: Bytes) -> Result<(), RemoteError> {
        let key = layout::checkpoint_key(id);
        match self.backend.put(&key, bytes.clone(), true).await {
            Ok(()) => Ok(()),
            Err(ObjectError::AlreadyExists { .. }) => Err(RemoteError::AlreadyCommitted { id }),
            Err(first) => {
                // Did it take effect? Read it back (a few tries).
                let mut last = first.to_string();
                for _ in 0..3 {
                    match self.backend.get(&key, None).await {
                        Ok(found) if found == bytes => return Ok(()),
                        Ok(_) => return Err(RemoteError::AlreadyCommitted { id }),
                        Err(ObjectError::NotFound { .. }) => return Err(first.into()),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(RemoteError::CommitUnknown { id, reason: last })
            }
        }
    }

    /// Puts one extent (create-only where a single put does it); returns the
    /// number of PUT requests made.
    async fn put_extent(&self, extent: &Extent, data: Vec<u8>) -> Result<u64, RemoteError> {
        let data = Bytes::from(data);
        if !self.backend.supports_multipart()
            || (data.len() as u64) < self.options.multipart_threshold_bytes
        {
            return match self.backend.put(&extent.key, data, true).await {
                // Same token, segment and range: the same bytes, put by an
                // earlier attempt of this writer whose reply was lost.
                Ok(()) | Err(ObjectError::AlreadyExists { .. }) => Ok(1),
                Err(e) => Err(e.into()),
            };
        }
        let upload = self.backend.create_multipart(&extent.key).await?;
        let marker =
            layout::multipart_marker_key(&self.token, self.markers.fetch_add(1, Ordering::Relaxed));
        let marked = self
            .backend
            .put(
                &marker,
                Bytes::from(layout::encode_marker(&extent.key, &upload)),
                false,
            )
            .await;
        let res = match marked {
            Ok(()) => self.put_parts(extent, &upload, data).await,
            Err(e) => Err(e.into()),
        };
        match res {
            Ok(n) => {
                // Best effort: a marker left behind names a completed upload,
                // whose abort by GC is a no-op.
                let _ = self.backend.delete(&marker).await;
                Ok(n + 2)
            }
            Err(e) => {
                if self
                    .backend
                    .abort_multipart(&extent.key, &upload)
                    .await
                    .is_ok()
                {
                    let _ = self.backend.delete(&marker).await;
                }
                Err(e)
            }
        }
    }

    async fn put_parts(
        &self,
        extent: &Extent,
        upload: &str,
        data: Bytes,
    ) -> Result<u64, RemoteError> {
        let part = self.options.part_size_bytes;
        let chunks: Vec<Bytes> = (0..data.len().div_ceil(part))
            .map(|i| data.slice(i * part..((i + 1) * part).min(data.len())))
            .collect();
        let n = chunks.len() as u64;
        let ids: Vec<Result<String, ObjectError>> = futures_util::stream::iter(
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| self.backend.put_part(&extent.key, upload, i, c)),
        )
        .buffered(self.options.part_concurrency)
        .collect()
        .await;
        let ids = ids.into_iter().collect::<Result<Vec<_>, _>>()?;
        self.backend
            .complete_multipart(&extent.key, upload, ids)
            .await?;
        Ok(n + 1)
    }

    /// Remote retention after a commit: see [`RemoteTier::gc`].
    async fn retain(&self, keep_from: Option<u64>, now_ms: u64) -> Result<GcReport, RemoteError> {
        self.gc(keep_from, now_ms, self.options.gc_grace_ms, true)
            .await
    }

    /// Retention and garbage collection: keeps the newest `retained_checkpoints`
    /// records (and every record from `keep_from` on), deletes older records,
    /// then deletes extents no remaining record references and multipart uploads
    /// whose marker is older than `grace_ms` (measured against `now_ms`). With
    /// `apply = false` only reports what it would delete. A record that does
    /// not decode is neither deleted nor trusted: the extents it might
    /// reference are kept while it is in the retained window.
    pub async fn gc(
        &self,
        keep_from: Option<u64>,
        now_ms: u64,
        grace_ms: u64,
        apply: bool,
    ) -> Result<GcReport, RemoteError> {
        let mut report = GcReport::default();
        let ids = self.checkpoint_ids().await?;
        let k = self.options.retained_checkpoints;
        let cut = ids.len().saturating_sub(k);
        let old = &ids[..cut];
        let old: Vec<u64> = old
            .iter()
            .copied()
            .filter(|&id| keep_from.is_none_or(|from| id < from))
            .collect();
        let cached = lock(&self.known).clone().unwrap_or_default();
        // Old records first. Whatever a delete returns, the record's extents
        // are not reused by later uploads (it may be gone); one whose delete
        // failed may still be there, so its extents stay protected below.
        let mut remaining: Vec<u64> = ids.iter().copied().filter(|id| !old.contains(id)).collect();
        for &id in &old {
            if apply {
                if let Some(k) = lock(&self.known).as_mut() {
                    k.records.remove(&id);
                }
                if let Err(e) = self.backend.delete(&layout::checkpoint_key(id)).await {
                    report.warnings.push(e.to_string());
                    remaining.push(id);
                    continue;
                }
            }
            report.records_deleted.push(id);
        }
        // What stays: a record that cannot be read stops the collection of
        // extents (it may reference any).
        let mut referenced: BTreeSet<String> = BTreeSet::new();
        let mut undecodable = false;
        for &id in &remaining {
            let record = match cached.records.get(&id) {
                Some(r) => Ok(r.clone()),
                None => self.record(id).await,
            };
            match record {
                Ok(r) => referenced.extend(r.extents.iter().map(|e| e.key.clone())),
                Err(RemoteError::Damaged { .. }) => undecodable = true,
                Err(e) => return Err(e),
            }
        }
        let young = |modified: u64| now_ms.saturating_sub(modified) < grace_ms;
        if !undecodable {
            for o in self.backend.list(layout::EXTENTS_DIR).await? {
                if referenced.contains(&o.key) || Extent::parse_key(&o.key).is_none() {
                    continue;
                }
                if young(o.last_modified_ms) {
                    report.kept_young += 1;
                    continue;
                }
                if apply {
                    if let Err(e) = self.backend.delete(&o.key).await {
                        report.warnings.push(e.to_string());
                        continue;
                    }
                }
                report.bytes_freed += o.size;
                report.extents_deleted.push(o.key);
            }
        } else {
            report.warnings.push(
                "a retained remote record does not decode: extents were not collected".into(),
            );
        }
        for o in self.backend.list(layout::MULTIPART_DIR).await? {
            if young(o.last_modified_ms) {
                report.kept_young += 1;
                continue;
            }
            if apply {
                let marker = match self.backend.get(&o.key, None).await {
                    Ok(b) => layout::decode_marker(&b),
                    Err(e) => {
                        report.warnings.push(e.to_string());
                        continue;
                    }
                };
                if let Some((key, upload)) = marker {
                    if let Err(e) = self.backend.abort_multipart(&key, &upload).await {
                        report.warnings.push(e.to_string());
                        continue;
                    }
                }
                if let Err(e) = self.backend.delete(&o.key).await {
                    report.warnings.push(e.to_string());
                    continue;
                }
            }
            report.uploads_aborted.push(o.key);
        }
        Ok(report)
    }

    /// Downloads checkpoint `record` into the empty local store directory `dir`
    /// and returns once every block is written: a [`RemoteFill`] prepared and
    /// run to its end (ranged reads of the blocks it references, each block
    /// verified, segment files synced, the manifest holding the one checkpoint,
    /// then the fill marker removed). An interrupted download leaves the
    /// marker, and a later restore removes what it left first.
    pub async fn download(
        &self,
        record: &RemoteRecord,
        dir: &Path,
    ) -> Result<DownloadReport, RemoteError> {
        RemoteFill::prepare(record, dir)?.run(self).await
    }
}

/// Reads bytes `[start, end)` of a local segment.
fn read_range(
    local: &dyn ReadSource,
    segment: SegmentId,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, RemoteError> {
    let name = segment.file_name();
    let err = |source| RemoteError::Local {
        path: PathBuf::from(&name),
        source,
    };
    let map = local.map(&name).map_err(err)?;
    let bytes = map.bytes();
    match bytes.get(start as usize..end as usize) {
        Some(b) => Ok(b.to_vec()),
        None => Err(err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("bytes {start}..{end} past the end ({})", bytes.len()),
        ))),
    }
}
