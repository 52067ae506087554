//! Opening a [`Store`]: recovery of a store directory at start
//! (`docs/storage-format.md` §4, step 4).
//!
//! [`Store::open`] runs the steps below in this order, which the crash analysis
//! (§4.1, case 12) relies on: everything before the manifest rewrite only reads
//! and decides in memory; the rewrite of a fresh manifest generation is the one
//! point where those decisions (a dropped damaged tail, checkpoints discarded or
//! expired) become durable; only after it are the files deleted that the new
//! generation no longer needs, so that a crash at any point and a second open
//! reach the same state.
//!
//! 1. validate the options and list the directory;
//! 2. refuse segment files without a manifest (`check_lost_manifest`);
//! 3. read and replay the newest manifest generation (`read_manifest`);
//! 4. drop checkpoints after [`StoreOptions::discard_after`] (`discard_after`),
//!    then apply retention (`expire`);
//! 5. check the segments retained checkpoints reference (`check_segments`);
//! 6. build the writers' registry (`build_registry`);
//! 7. rewrite the manifest as a new generation (`rewrite_manifest`);
//! 8. delete older generations and temporaries (`delete_stale_manifests`), then
//!    orphan segments (`delete_orphans`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;

use super::{remove_file, OpenReport, Store, StoreOptions, StoreWarning};
use crate::error::OpenError;
use crate::format::{self, SegmentId, PAGE_SIZE};
use crate::io::{DirEntry, Io};
use crate::manifest::{self, ManifestLog, ManifestState};
use crate::writer::{self, SegmentState};

fn open_io(op: &'static str, name: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let name = name.into();
    move |source| OpenError::Io { op, name, source }
}

impl Store<crate::io::GlommioIo> {
    /// Opens (or creates) the store in `dir` with the real backend. Must run inside
    /// a glommio executor. The directory is created if missing, and locked
    /// for this process while the store lives ([`DirLock`](crate::DirLock)).
    pub async fn open_dir(
        dir: impl Into<std::path::PathBuf>,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        let dir = dir.into();
        let lock = crate::lock::DirLock::acquire(&dir)?;
        let mut store = Store::open(crate::io::GlommioIo::new(dir), options).await?;
        store._lock = Some(lock);
        Ok(store)
    }
}

impl<I: Io> Store<I> {
    /// Opens (or creates) the store on `io`: replays the newest manifest (dropping a
    /// torn or corrupt tail), keeps the last `k` completed checkpoints, writes a fresh
    /// manifest generation, and deletes orphan segments.
    pub async fn open(io: I, options: StoreOptions) -> Result<Self, OpenError> {
        check_options(&options)?;
        let mut report = OpenReport::default();
        let entries = io.list().await.map_err(open_io("list", ""))?;
        let newest = entries
            .iter()
            .filter_map(|e| format::parse_manifest_name(&e.name))
            .max();
        check_lost_manifest(&entries, newest, &options)?;
        let (mut state, later_valid) = read_manifest(&io, newest, &mut report).await?;
        discard_after(&mut state, &options, &mut report);
        expire(&mut state, &options, &mut report);
        // Segments on disk, and what the retained checkpoints need.
        let on_disk: BTreeMap<SegmentId, u64> = entries
            .iter()
            .filter_map(|e| SegmentId::parse_file_name(&e.name).map(|s| (s, e.len)))
            .collect();
        let referenced = state.referenced_segments();
        check_segments(&state, &on_disk, &mut report);
        let mut reg = build_registry(
            &state,
            &on_disk,
            &referenced,
            &options.segments_in_use,
            later_valid,
        );
        let log = rewrite_manifest(&io, newest, &state, &mut report).await?;
        delete_stale_manifests(&io, &entries, log.generation(), &mut report).await;
        delete_orphans(
            &io,
            &on_disk,
            &referenced,
            later_valid,
            &mut reg,
            &mut report,
        )
        .await?;
        Ok(Store {
            io,
            options,
            registry: std::sync::Arc::new(std::sync::Mutex::new(reg)),
            log,
            state,
            relocated: HashMap::new(),
            report,
            keep_from: None,
            _lock: None,
        })
    }
}

/// Rejects options the store cannot work with.
fn check_options(options: &StoreOptions) -> Result<(), OpenError> {
    if options.retained_checkpoints == 0 {
        return Err(OpenError::InvalidOptions(
            "retained_checkpoints must be at least 1",
        ));
    }
    if options.segment_size_bytes < PAGE_SIZE as u64 {
        return Err(OpenError::InvalidOptions(
            "segment_size_bytes must be at least 4096",
        ));
    }
    if options.write_buffer_bytes == 0 || options.write_buffer_bytes % PAGE_SIZE != 0 {
        return Err(OpenError::InvalidOptions(
            "write_buffer_bytes must be a non-zero multiple of 4096",
        ));
    }
    if !(0.0..=1.0).contains(&options.compaction_live_fraction) {
        return Err(OpenError::InvalidOptions(
            "compaction_live_fraction must be within 0..=1",
        ));
    }
    Ok(())
}

/// Segment files and no manifest generation (`newest`): the checkpoints are lost,
/// which is damage rather than an empty store, unless
/// [`StoreOptions::start_over_lost_manifest`] asks for a fresh start.
fn check_lost_manifest(
    entries: &[DirEntry],
    newest: Option<u64>,
    options: &StoreOptions,
) -> Result<(), OpenError> {
    let segment_files = entries
        .iter()
        .filter(|e| SegmentId::parse_file_name(&e.name).is_some())
        .count();
    if newest.is_none() && segment_files > 0 && !options.start_over_lost_manifest {
        return Err(OpenError::ManifestMissing {
            segments: segment_files,
        });
    }
    Ok(())
}

/// Reads and replays manifest generation `newest` (an empty state if there is
/// none), reporting a damaged tail. Also returns whether valid records follow the
/// damage (mid-log corruption: orphans are then kept).
async fn read_manifest<I: Io>(
    io: &I,
    newest: Option<u64>,
    report: &mut OpenReport,
) -> Result<(ManifestState, bool), OpenError> {
    let mut state = ManifestState::default();
    let mut later_valid = false;
    if let Some(g) = newest {
        let name = format::manifest_file_name(g);
        let bytes = io
            .read(&name)
            .await
            .map_err(open_io("read", name.clone()))?;
        let (s, damage) = manifest::replay(&name, &bytes);
        state = s;
        if let Some(d) = damage {
            eprintln!(
                "spate-storage: warning: manifest {} damaged at offset {}: {}; {} bytes ignored{}",
                d.file,
                d.offset,
                d.error,
                d.dropped_bytes,
                if d.later_valid_records {
                    " (valid records follow: mid-log corruption)"
                } else {
                    ""
                }
            );
            later_valid = d.later_valid_records;
            report.warnings.push(StoreWarning::ManifestDamaged(d));
        }
    }
    Ok((state, later_valid))
}

/// Drops the checkpoints newer than [`StoreOptions::discard_after`], if set.
fn discard_after(state: &mut ManifestState, options: &StoreOptions, report: &mut OpenReport) {
    if let Some(after) = options.discard_after {
        let keep = state.checkpoints.partition_point(|c| c.id <= after);
        report.checkpoints_discarded = state.checkpoints.drain(keep..).map(|c| c.id).collect();
    }
}

/// Retention: keeps the last [`StoreOptions::retained_checkpoints`].
fn expire(state: &mut ManifestState, options: &StoreOptions, report: &mut OpenReport) {
    let k = options.retained_checkpoints;
    if state.checkpoints.len() > k {
        let drop_n = state.checkpoints.len() - k;
        report.checkpoints_expired = state.checkpoints.drain(..drop_n).map(|c| c.id).collect();
    }
}

/// Warns about retained blocks in segments that are missing or too short.
fn check_segments(
    state: &ManifestState,
    on_disk: &BTreeMap<SegmentId, u64>,
    report: &mut OpenReport,
) {
    for c in &state.checkpoints {
        for h in &c.handles {
            match on_disk.get(&h.segment) {
                None => report.warnings.push(StoreWarning::SegmentMissing {
                    checkpoint: c.id,
                    segment: h.segment,
                }),
                Some(&len) if len < h.offset + h.footprint() => {
                    report.warnings.push(StoreWarning::SegmentTooShort {
                        checkpoint: c.id,
                        segment: h.segment,
                        needed: h.offset + h.footprint(),
                        len,
                    })
                }
                Some(_) => {}
            }
        }
    }
    report.warnings.dedup();
}

/// The writers' registry: next sequence numbers past every segment id known (on
/// disk, referenced, recorded as deleted, in use elsewhere), and the sealed
/// segments on disk.
fn build_registry(
    state: &ManifestState,
    on_disk: &BTreeMap<SegmentId, u64>,
    referenced: &HashSet<SegmentId>,
    in_use: &[SegmentId],
    later_valid: bool,
) -> writer::Registry {
    let mut reg = writer::Registry::default();
    let all_ids = on_disk
        .keys()
        .chain(referenced.iter())
        .chain(state.deleted_high.values())
        .chain(in_use.iter());
    for id in all_ids {
        let next = reg.next_seq.entry(id.writer_id()).or_insert(0);
        *next = (*next).max(id.sequence() + 1);
    }
    // Unreferenced segments are deleted below; if that is skipped (mid-log manifest
    // damage), they stay out of the registry so no commit ever collects them either.
    for (&id, &len) in on_disk
        .iter()
        .filter(|(id, _)| referenced.contains(*id) || !later_valid)
    {
        reg.segments.insert(
            id,
            SegmentState {
                active: false,
                file_created: true,
                durable_len: len,
                unresolved: HashSet::new(),
            },
        );
    }
    reg
}

/// Writes `state` as a fresh manifest generation after `newest`: the dropped tail and
/// expired records are gone for good.
async fn rewrite_manifest<I: Io>(
    io: &I,
    newest: Option<u64>,
    state: &ManifestState,
    report: &mut OpenReport,
) -> Result<ManifestLog<I>, OpenError> {
    let mut log = ManifestLog::unopened(io.clone(), newest.unwrap_or(0));
    log.rewrite(&state.snapshot_records())
        .await
        .map_err(open_io("rewrite manifest", log.file_name()))?;
    report.manifest_generation = log.generation();
    Ok(log)
}

/// Unlinks manifest generations other than `current` and temporary manifests.
async fn delete_stale_manifests<I: Io>(
    io: &I,
    entries: &[DirEntry],
    current: u64,
    report: &mut OpenReport,
) {
    for e in entries {
        let stale_gen = format::parse_manifest_name(&e.name).is_some_and(|g| g != current);
        if stale_gen || format::is_manifest_tmp(&e.name) {
            report.warnings.extend(remove_file(io, &e.name).await);
        }
    }
}

/// Orphans: segments no retained checkpoint references. No writer runs yet. Kept
/// (with a warning) if the manifest is damaged mid-log (`later_valid`).
async fn delete_orphans<I: Io>(
    io: &I,
    on_disk: &BTreeMap<SegmentId, u64>,
    referenced: &HashSet<SegmentId>,
    later_valid: bool,
    reg: &mut writer::Registry,
    report: &mut OpenReport,
) -> Result<(), OpenError> {
    if later_valid {
        report.warnings.push(StoreWarning::OrphanCleanupSkipped);
        return Ok(());
    }
    for &id in on_disk.keys() {
        if referenced.contains(&id) {
            continue;
        }
        match io.remove(&id.file_name()).await {
            Ok(()) => {
                reg.segments.remove(&id);
                report.orphans_deleted.push(id);
            }
            Err(err) => report.warnings.push(StoreWarning::RemoveFailed {
                name: id.file_name(),
                error: err.to_string(),
            }),
        }
    }
    if !report.orphans_deleted.is_empty() {
        io.sync_dir().await.map_err(open_io("sync_dir", ""))?;
    }
    Ok(())
}
