//! [`Store`]: the writable checkpoint store over an [`Io`] backend.
//!
//! It owns the manifest and the lifecycle of segment files: it opens the store
//! (replays the manifest, drops a damaged tail, applies retention, deletes orphan
//! segments), hands out [`SegmentWriter`]s, commits checkpoints (the manifest
//! `fdatasync` is the commit point), applies retention and deletes unreferenced
//! segments, and compacts segments with little live data.
//!
//! Invariant: a segment is deleted only if no retained checkpoint references it, no
//! writer is appending to it, and none of its flushed blocks is still waiting for a
//! commit (see [`crate::writer`]). The store knows nothing about operators, key
//! groups or what metadata means.
//!
//! Opening (recovery of the directory at start, in the order the crash analysis
//! relies on) is in the submodule `open`; this file holds the store's types and
//! what it does once open.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;

use crate::error::{CommitError, CompactError, ReadError};
use crate::format::{self, BlockHandle, CheckpointRecord, ManifestRecord, SegmentId};
use crate::io::Io;
use crate::manifest::{ManifestDamage, ManifestLog, ManifestState};
use crate::writer::{
    self, SegmentState, SegmentWriter, SharedRegistry, WriterSlot, COMPACTION_WRITER_ID,
};

mod open;

/// Tuning of a [`Store`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// A writer starts a new segment file when the next block would pass this size.
    pub segment_size_bytes: u64,
    /// Completed checkpoints kept (`k`, at least 1).
    pub retained_checkpoints: usize,
    /// [`Store::compact`] rewrites sealed segments whose live bytes are below this
    /// fraction of their size (0 disables compaction).
    pub compaction_live_fraction: f64,
    /// Size of each DMA write buffer of a segment writer (a multiple of 4 KiB).
    pub write_buffer_bytes: usize,
    /// The manifest is rewritten into a new generation when it grows past this
    /// size and past twice its size as last rewritten.
    pub manifest_max_bytes: u64,
    /// Open a directory whose segment files have no manifest as an empty
    /// store (deleting them as orphans) instead of failing with
    /// [`OpenError::ManifestMissing`](crate::OpenError::ManifestMissing): for an
    /// explicit fresh start only.
    pub start_over_lost_manifest: bool,
    /// Checkpoints with a larger id are discarded at open, in the manifest
    /// generation the open writes (the caller restored this one, an older
    /// one than the newest: the newer ones are a branch that no later
    /// restore may return to).
    pub discard_after: Option<u64>,
    /// Segment ids this store's history uses outside its directory (the
    /// checkpoints its remote prefix holds, perhaps written by an earlier
    /// incarnation of the store on another disk): new segments take
    /// sequence numbers above them, so that no segment id names two
    /// different contents in one remote prefix.
    pub segments_in_use: Vec<crate::format::SegmentId>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_size_bytes: 64 << 20,
            retained_checkpoints: 3,
            compaction_live_fraction: 0.5,
            write_buffer_bytes: 1 << 20,
            manifest_max_bytes: 4 << 20,
            start_over_lost_manifest: false,
            discard_after: None,
            segments_in_use: Vec::new(),
        }
    }
}

/// Something worth telling an operator, found while opening or committing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StoreWarning {
    /// The manifest had a torn or corrupt tail, which was dropped.
    ManifestDamaged(ManifestDamage),
    /// Orphan segments were kept because the manifest damage is not a plain torn
    /// tail (valid records follow it): they may hold data of lost checkpoints.
    OrphanCleanupSkipped,
    /// A retained checkpoint references a segment that does not exist.
    SegmentMissing {
        /// The checkpoint.
        checkpoint: u64,
        /// The segment.
        segment: SegmentId,
    },
    /// A retained checkpoint references bytes past the end of a segment.
    SegmentTooShort {
        /// The checkpoint.
        checkpoint: u64,
        /// The segment.
        segment: SegmentId,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        len: u64,
    },
    /// Removing a file failed (it will be retried as an orphan at the next open).
    RemoveFailed {
        /// The file.
        name: String,
        /// The error.
        error: String,
    },
}

/// What [`Store::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct OpenReport {
    /// Problems found.
    pub warnings: Vec<StoreWarning>,
    /// Unreferenced segments deleted.
    pub orphans_deleted: Vec<SegmentId>,
    /// Checkpoints dropped by retention at open.
    pub checkpoints_expired: Vec<u64>,
    /// Checkpoints discarded at open as newer than
    /// [`StoreOptions::discard_after`].
    pub checkpoints_discarded: Vec<u64>,
    /// Generation of the manifest written at open.
    pub manifest_generation: u64,
}

/// What a commit did besides committing.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CommitReport {
    /// Checkpoints that left the retained set.
    pub discarded: Vec<u64>,
    /// Segments deleted.
    pub segments_deleted: Vec<SegmentId>,
    /// Non-fatal problems (failed removals).
    pub warnings: Vec<StoreWarning>,
}

/// What [`Store::compact`] did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Segments rewritten and deleted.
    pub segments_compacted: Vec<SegmentId>,
    /// Blocks copied.
    pub blocks_moved: usize,
    /// Payload bytes copied.
    pub bytes_moved: u64,
    /// Non-fatal problems.
    pub warnings: Vec<StoreWarning>,
}

/// The writable checkpoint store. Reactor-local: call it from one task at a time.
pub struct Store<I: Io> {
    io: I,
    options: StoreOptions,
    registry: SharedRegistry,
    log: ManifestLog<I>,
    state: ManifestState,
    relocated: HashMap<BlockHandle, BlockHandle>,
    report: OpenReport,
    /// Checkpoints from this id on are kept beyond the retention count.
    keep_from: Option<u64>,
    /// The directory's lock (real backend), held while the store lives.
    _lock: Option<std::sync::Arc<crate::lock::DirLock>>,
}

impl<I: Io> std::fmt::Debug for Store<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("manifest", &self.log.file_name())
            .field(
                "checkpoints",
                &self
                    .state
                    .checkpoints
                    .iter()
                    .map(|c| c.id)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Unlinks `name`; a failure other than "not found" comes back as a warning.
async fn remove_file<I: Io>(io: &I, name: &str) -> Option<StoreWarning> {
    match io.remove(name).await {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Some(StoreWarning::RemoveFailed {
            name: name.to_owned(),
            error: err.to_string(),
        }),
        _ => None,
    }
}

impl<I: Io> Store<I> {
    /// What [`Store::open`] found and did.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The options in use.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The I/O backend.
    pub fn io(&self) -> &I {
        &self.io
    }

    /// Retained completed checkpoints, increasing ids.
    pub fn checkpoints(&self) -> &[CheckpointRecord] {
        &self.state.checkpoints
    }

    /// The newest completed checkpoint.
    pub fn latest(&self) -> Option<&CheckpointRecord> {
        self.state.checkpoints.last()
    }

    /// Current manifest file name.
    pub fn manifest_file(&self) -> String {
        self.log.file_name()
    }

    /// Segments the store knows to exist (or about to be created by a writer).
    pub fn segments(&self) -> Vec<SegmentId> {
        writer::lock(&self.registry)
            .segments
            .keys()
            .copied()
            .collect()
    }

    /// A [`SegmentWriter`] for `writer_id`, to be used on this reactor.
    ///
    /// # Panics
    /// If a writer with this id is alive, or `writer_id` is [`COMPACTION_WRITER_ID`].
    pub fn segment_writer(&self, writer_id: u16) -> SegmentWriter<I> {
        self.writer_slot(writer_id).into_writer()
    }

    /// A `Send` slot from which another reactor builds the [`SegmentWriter`] for
    /// `writer_id` ([`WriterSlot::into_writer`]).
    ///
    /// # Panics
    /// As [`Store::segment_writer`].
    pub fn writer_slot(&self, writer_id: u16) -> WriterSlot<I> {
        assert_ne!(
            writer_id, COMPACTION_WRITER_ID,
            "writer id reserved for compaction"
        );
        WriterSlot::new(
            self.io.clone(),
            self.registry.clone(),
            writer_id,
            self.options.segment_size_bytes,
            self.options.write_buffer_bytes,
        )
    }

    /// Keeps every checkpoint from `id` on at the next commits, beyond
    /// `retained_checkpoints` (`None`: the count alone). For concurrent
    /// checkpoints: one in progress may build on the blocks of the last
    /// checkpoint completed when it started, which a commit in between must
    /// not collect.
    pub fn keep_from(&mut self, id: Option<u64>) {
        self.keep_from = id;
    }

    /// Declares flushed blocks dead without committing them (for example those of an
    /// aborted checkpoint), so their segments can be collected.
    pub fn abort_blocks(&self, handles: &[BlockHandle]) {
        writer::lock(&self.registry).abort(handles);
    }

    /// Declares every flushed, uncommitted block dead. Only call this when no
    /// checkpoint is in flight (for example after the job restarted).
    pub fn abort_uncommitted(&self) {
        for s in writer::lock(&self.registry).segments.values_mut() {
            s.unresolved.clear();
        }
    }

    fn check_handle(
        &self,
        h: &BlockHandle,
        segments: &BTreeMap<SegmentId, SegmentState>,
    ) -> Result<(), CommitError> {
        h.validate()
            .map_err(|source| CommitError::InvalidHandle { handle: *h, source })?;
        let s = segments
            .get(&h.segment)
            .ok_or(CommitError::UnknownSegment { handle: *h })?;
        if h.offset + h.footprint() > s.durable_len {
            return Err(CommitError::NotDurable { handle: *h });
        }
        Ok(())
    }

    /// Commits a checkpoint: appends its record to the manifest and `fdatasync`s (the
    /// commit point), then applies retention (keeps the last `k`) and deletes segments
    /// that nothing needs any more. Every handle must come from a flushed writer.
    /// Handles moved by a compaction since the caller obtained them are translated.
    ///
    /// On `Err`, the store is unchanged and the checkpoint is not listed; see
    /// [`CommitError`] for what a crash right after a failed commit can reveal.
    pub async fn commit_checkpoint(
        &mut self,
        record: CheckpointRecord,
    ) -> Result<CommitReport, CommitError> {
        let mut report = self.commit_checkpoint_deferred(record).await?;
        let deleted = std::mem::take(&mut report.segments_deleted);
        report.warnings = self.remove_segment_files(&deleted).await;
        report.segments_deleted = deleted;
        Ok(report)
    }

    /// [`commit_checkpoint`](Self::commit_checkpoint) without unlinking the
    /// segments it releases: they are recorded as deleted in the same manifest
    /// batch (nothing references them any more) and listed in
    /// `segments_deleted`; the caller unlinks them with
    /// [`remove_segment_files`](Self::remove_segment_files) once it has acted on
    /// the commit (unlinking large files takes milliseconds that need not
    /// delay the checkpoint's completion). Files left behind by a crash in
    /// between are orphans, deleted when the store next opens.
    pub async fn commit_checkpoint_deferred(
        &mut self,
        mut record: CheckpointRecord,
    ) -> Result<CommitReport, CommitError> {
        if let Some(last) = self.state.checkpoints.last() {
            if record.id <= last.id {
                return Err(CommitError::NonMonotonicId {
                    id: record.id,
                    latest: last.id,
                });
            }
        }
        for h in &mut record.handles {
            if let Some(n) = self.relocated.get(h) {
                *h = *n;
            }
        }
        let mut new_state = self.state.clone();
        new_state.checkpoints.push(record.clone());
        let k = self.options.retained_checkpoints;
        let kept = |id: u64| self.keep_from.is_some_and(|from| id >= from);
        let discarded: Vec<u64> = if new_state.checkpoints.len() > k {
            let n = new_state.checkpoints.len() - k;
            let n = new_state.checkpoints[..n]
                .iter()
                .position(|c| kept(c.id))
                .unwrap_or(n);
            new_state.checkpoints.drain(..n).map(|c| c.id).collect()
        } else {
            Vec::new()
        };
        let deletable = {
            let reg = writer::lock(&self.registry);
            for h in &record.handles {
                self.check_handle(h, &reg.segments)?;
            }
            let referenced = new_state.referenced_segments();
            let own: HashSet<(SegmentId, u64)> = record
                .handles
                .iter()
                .map(|h| (h.segment, h.offset))
                .collect();
            reg.segments
                .iter()
                .filter(|(id, s)| {
                    !s.active
                        && !referenced.contains(id)
                        && s.unresolved.iter().all(|off| own.contains(&(**id, *off)))
                })
                .map(|(id, _)| *id)
                .collect::<Vec<_>>()
        };
        let mut batch = vec![ManifestRecord::CheckpointCompleted(record.clone())];
        batch.extend(
            discarded
                .iter()
                .map(|&id| ManifestRecord::CheckpointDiscarded { id }),
        );
        if !deletable.is_empty() {
            batch.push(ManifestRecord::SegmentsDeleted {
                segments: deletable.clone(),
            });
            new_state
                .apply(batch.last().expect("just pushed"))
                .expect("segment deletion always applies");
        }
        self.write_manifest(&batch, &new_state).await?;
        // Committed.
        self.state = new_state;
        {
            let mut reg = writer::lock(&self.registry);
            for h in &record.handles {
                if let Some(s) = reg.segments.get_mut(&h.segment) {
                    s.unresolved.remove(&h.offset);
                }
            }
            for id in &deletable {
                reg.segments.remove(id);
            }
        }
        Ok(CommitReport {
            discarded,
            segments_deleted: deletable,
            warnings: Vec::new(),
        })
    }

    /// Discards the newest committed checkpoint `id` again (a `CheckpointDiscarded`
    /// record, synced): for a checkpoint that committed locally but failed a later
    /// step of its completion (the remote tier). Its segments are collected by
    /// later commits once nothing references them. A no-op if `id` is not the
    /// newest retained checkpoint.
    pub async fn discard_checkpoint(&mut self, id: u64) -> Result<(), CommitError> {
        if self.state.checkpoints.last().map(|c| c.id) != Some(id) {
            return Ok(());
        }
        let batch = [ManifestRecord::CheckpointDiscarded { id }];
        let mut new_state = self.state.clone();
        new_state
            .apply(&batch[0])
            .expect("a discard always applies");
        self.write_manifest(&batch, &new_state).await?;
        self.state = new_state;
        Ok(())
    }

    async fn write_manifest(
        &mut self,
        batch: &[ManifestRecord],
        new_state: &ManifestState,
    ) -> Result<(), CommitError> {
        let res = if self.log.needs_rewrite(self.options.manifest_max_bytes) {
            self.log.rewrite(&new_state.snapshot_records()).await
        } else {
            self.log.append(batch).await
        };
        res.map_err(|source| CommitError::Manifest {
            file: self.log.file_name(),
            source,
        })
    }

    /// Unlinks segment files nothing references any more (those a deferred
    /// commit released: [`commit_checkpoint_deferred`](Self::commit_checkpoint_deferred));
    /// failures come back as warnings.
    pub async fn remove_segment_files(&self, ids: &[SegmentId]) -> Vec<StoreWarning> {
        let mut warnings = Vec::new();
        for id in ids {
            warnings.extend(remove_file(&self.io, &id.file_name()).await);
        }
        warnings
    }

    /// Reads and verifies one block through the [`Io`] backend (a copy; for zero-copy
    /// reads use a [`StoreReader`](crate::StoreReader)).
    pub async fn read_block(&self, handle: &BlockHandle) -> Result<Vec<u8>, ReadError> {
        let corrupt = |source| ReadError::Corrupt {
            segment: handle.segment,
            offset: handle.offset,
            source,
        };
        handle.validate().map_err(corrupt)?;
        let name = handle.segment.file_name();
        let bytes = match self
            .io
            .read_at(&name, handle.offset, handle.footprint() as usize)
            .await
        {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ReadError::MissingSegment {
                    segment: handle.segment,
                    name,
                })
            }
            Err(source) => return Err(ReadError::Io { name, source }),
        };
        let local = BlockHandle {
            offset: 0,
            ..*handle
        };
        let range = format::check_block(&bytes, &local, true).map_err(corrupt)?;
        Ok(bytes[range].to_vec())
    }

    /// Copies the live blocks of sealed segments whose live fraction is below
    /// [`StoreOptions::compaction_live_fraction`] into a new segment, commits the
    /// relocation (manifest `fdatasync`), and deletes the old segments.
    pub async fn compact(&mut self) -> Result<CompactionReport, CompactError> {
        let threshold = self.options.compaction_live_fraction;
        let mut live: BTreeMap<SegmentId, BTreeSet<BlockHandle>> = BTreeMap::new();
        for c in &self.state.checkpoints {
            for h in &c.handles {
                live.entry(h.segment).or_default().insert(*h);
            }
        }
        let candidates: Vec<SegmentId> = {
            let reg = writer::lock(&self.registry);
            live.iter()
                .filter(|(id, blocks)| {
                    let Some(s) = reg.segments.get(id) else {
                        return false;
                    };
                    let live_bytes: u64 = blocks.iter().map(|h| h.footprint()).sum();
                    !s.active
                        && s.unresolved.is_empty()
                        && s.durable_len > 0
                        && (live_bytes as f64) < threshold * s.durable_len as f64
                })
                .map(|(id, _)| *id)
                .collect()
        };
        if candidates.is_empty() {
            return Ok(CompactionReport::default());
        }
        let mut w = WriterSlot::new(
            self.io.clone(),
            self.registry.clone(),
            COMPACTION_WRITER_ID,
            self.options.segment_size_bytes,
            self.options.write_buffer_bytes,
        )
        .into_writer();
        let mut moves = Vec::new();
        let mut bytes_moved = 0u64;
        for id in &candidates {
            for h in &live[id] {
                let payload = self.read_block(h).await?;
                let n = w.append(h.kind, &payload);
                bytes_moved += u64::from(h.len);
                moves.push((*h, n));
            }
        }
        w.flush().await?;
        let new_handles: Vec<BlockHandle> = moves.iter().map(|m| m.1).collect();
        let map: HashMap<BlockHandle, BlockHandle> = moves.iter().copied().collect();
        let mut new_state = self.state.clone();
        let batch = vec![
            ManifestRecord::HandlesRelocated {
                moves: moves.clone(),
            },
            ManifestRecord::SegmentsDeleted {
                segments: candidates.clone(),
            },
        ];
        for r in &batch {
            new_state
                .apply(r)
                .expect("relocation and deletion always apply");
        }
        if let Err(e) = self.write_manifest(&batch, &new_state).await {
            self.abort_blocks(&new_handles);
            return Err(e.into());
        }
        self.state = new_state;
        {
            let mut reg = writer::lock(&self.registry);
            for h in &new_handles {
                if let Some(s) = reg.segments.get_mut(&h.segment) {
                    s.unresolved.remove(&h.offset);
                }
            }
            for id in &candidates {
                reg.segments.remove(id);
            }
        }
        for v in self.relocated.values_mut() {
            if let Some(n) = map.get(v) {
                *v = *n;
            }
        }
        self.relocated.extend(map);
        drop(w);
        let warnings = self.remove_segment_files(&candidates).await;
        Ok(CompactionReport {
            segments_compacted: candidates,
            blocks_moved: moves.len(),
            bytes_moved,
            warnings,
        })
    }
}
