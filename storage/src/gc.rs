//! Garbage collection from outside the store: which files of a store directory a
//! tool (`spate-ckpt gc`) may delete, possibly while a job's [`Store`](crate::Store)
//! writes to the same directory, and deleting them.
//!
//! The store's own rules ([`crate::store`]) use what only the running store knows:
//! which segment each writer appends to, and which flushed blocks still wait for a
//! commit. From outside, that knowledge is replaced by what the directory shows, on
//! the safe side. A segment file is deleted only when all of these hold:
//!
//! 1. no retained checkpoint of the newest manifest references it
//!    ([`ManifestState::referenced_segments`], the set the store keeps at open and
//!    at every commit);
//! 2. the manifest is not damaged mid-log (the store then keeps orphans too: they
//!    may hold checkpoints recorded after the damage);
//! 3. no writer can be appending to it, and no checkpoint in progress can have
//!    blocks in it: either the manifest records it as deleted (segment sequence
//!    numbers are never reused), or both (a) a newer segment of the same writer
//!    exists (a writer appends only to its newest segment) and (b) it was last
//!    modified strictly before the manifest was: every block in it was flushed
//!    before the newest commit, so it belongs to a committed checkpoint (and is
//!    then referenced, or discarded for good) or to an aborted one. This relies
//!    on checkpoints running one at a time (a checkpoint's blocks are written
//!    after the previous commit), and on a wall clock that does not step back
//!    between the writes compared.
//!
//! Manifest files: generations below the newest, and temporary files of a
//! generation not above the newest (a `.tmp` of a newer generation may be a
//! rewrite in progress).
//!
//! [`collect`] syncs the directory before deleting anything (so the rename that
//! made the newest generation current is durable before an older generation goes:
//! crash point 10 of `docs/storage-format.md`), unlinks, and syncs it again.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::time::SystemTime;

use crate::error::ReadError;
use crate::format::{self, SegmentId};
use crate::manifest::ManifestState;
use crate::reader::StoreReader;

/// Why a file is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeepReason {
    /// A retained checkpoint references the segment.
    Referenced,
    /// The manifest is damaged mid-log: unreferenced segments may hold
    /// checkpoints recorded after the damage (the store keeps them too).
    ManifestDamaged,
    /// The directory holds no manifest: nothing says what the segments hold.
    NoManifest,
    /// The newest segment of its writer: a running writer may append to it.
    NewestOfWriter,
    /// Modified at or after the newest manifest write: it may hold blocks of a
    /// checkpoint in progress.
    WrittenAfterCommit,
    /// The manifest generation in use.
    CurrentManifest,
    /// A temporary manifest of a generation above the newest: a rewrite may be in
    /// progress.
    NewerTemporary,
}

impl KeepReason {
    /// A short description, as the tool prints it.
    pub fn describe(self) -> &'static str {
        match self {
            KeepReason::Referenced => "referenced by a retained checkpoint",
            KeepReason::ManifestDamaged => "manifest damaged mid-log",
            KeepReason::NoManifest => "no manifest",
            KeepReason::NewestOfWriter => "newest segment of its writer (may be active)",
            KeepReason::WrittenAfterCommit => "written after the latest commit",
            KeepReason::CurrentManifest => "current manifest",
            KeepReason::NewerTemporary => "rewrite may be in progress",
        }
    }

    /// A stable identifier for JSON documents.
    pub fn id(self) -> &'static str {
        match self {
            KeepReason::Referenced => "referenced",
            KeepReason::ManifestDamaged => "manifest_damaged",
            KeepReason::NoManifest => "no_manifest",
            KeepReason::NewestOfWriter => "newest_of_writer",
            KeepReason::WrittenAfterCommit => "written_after_commit",
            KeepReason::CurrentManifest => "current_manifest",
            KeepReason::NewerTemporary => "newer_temporary",
        }
    }
}

/// The verdict on one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentGc {
    /// The segment.
    pub segment: SegmentId,
    /// File length.
    pub bytes: u64,
    /// Blocks retained checkpoints reference in it.
    pub blocks: u64,
    /// Bytes (block footprints) of those blocks.
    pub live_bytes: u64,
    /// `None`: delete it.
    pub keep: Option<KeepReason>,
}

/// The verdict on one manifest file (a generation or a temporary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFileGc {
    /// File name.
    pub file: String,
    /// File length.
    pub bytes: u64,
    /// `None`: delete it.
    pub keep: Option<KeepReason>,
}

/// What [`plan`] would delete and why it keeps the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPlan {
    /// The manifest generation read.
    pub manifest_file: Option<String>,
    /// Every segment file, by id.
    pub segments: Vec<SegmentGc>,
    /// Every manifest file and temporary, by name.
    pub manifests: Vec<ManifestFileGc>,
    /// Whether unreferenced segments are kept because of mid-log manifest damage.
    pub orphan_cleanup_skipped: bool,
}

impl GcPlan {
    /// Names of the files to delete, segments first.
    pub fn files_to_delete(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter(|s| s.keep.is_none())
            .map(|s| s.segment.file_name())
            .chain(
                self.manifests
                    .iter()
                    .filter(|m| m.keep.is_none())
                    .map(|m| m.file.clone()),
            )
            .collect()
    }

    /// Bytes of the files to delete.
    pub fn reclaimable_bytes(&self) -> u64 {
        let segments: u64 = self
            .segments
            .iter()
            .filter(|s| s.keep.is_none())
            .map(|s| s.bytes)
            .sum();
        let manifests: u64 = self
            .manifests
            .iter()
            .filter(|m| m.keep.is_none())
            .map(|m| m.bytes)
            .sum();
        segments + manifests
    }
}

/// What [`collect`] deleted.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Files unlinked (or already gone).
    pub deleted: Vec<String>,
    /// Files that could not be unlinked, with the error.
    pub failed: Vec<(String, io::Error)>,
}

struct FileInfo {
    len: u64,
    modified: SystemTime,
}

fn list(dir: &Path) -> Result<BTreeMap<String, FileInfo>, ReadError> {
    let io_error = |source| ReadError::Io {
        name: String::new(),
        source,
    };
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Deleted since the listing (the store's own GC): nothing to decide.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ReadError::Io { name, source }),
        };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().map_err(|source| ReadError::Io {
            name: name.clone(),
            source,
        })?;
        out.insert(
            name,
            FileInfo {
                len: meta.len(),
                modified,
            },
        );
    }
    Ok(out)
}

/// Decides what may be deleted from the store in `dir` (see the module doc).
/// Reads only.
pub fn plan(dir: &Path) -> Result<GcPlan, ReadError> {
    // The manifest's modification time is taken before its contents are read, and
    // segments are listed after: a newer manifest only adds references, and a
    // segment written after the stat is never older than it.
    let before = list(dir)?;
    let newest = before
        .keys()
        .filter_map(|n| format::parse_manifest_name(n))
        .max();
    let manifest_modified = newest.and_then(|g| {
        before
            .get(&format::manifest_file_name(g))
            .map(|f| f.modified)
    });
    let reader = StoreReader::open(dir)?;
    let files = list(dir)?;
    let damaged_mid_log = reader
        .manifest_damage()
        .is_some_and(|d| d.later_valid_records);
    let segments = segment_verdicts(&reader, &files, manifest_modified, damaged_mid_log);
    let current = reader.manifest_file().and_then(format::parse_manifest_name);
    let manifests = manifest_verdicts(&files, current);
    Ok(GcPlan {
        manifest_file: reader.manifest_file().map(str::to_owned),
        segments,
        manifests,
        orphan_cleanup_skipped: damaged_mid_log,
    })
}

/// Blocks retained checkpoints reference, and their bytes, per segment.
fn live_blocks(state: &ManifestState) -> HashMap<SegmentId, (u64, u64)> {
    let mut live: HashMap<SegmentId, (u64, u64)> = HashMap::new();
    for c in &state.checkpoints {
        for h in &c.handles {
            let e = live.entry(h.segment).or_default();
            e.0 += 1;
            e.1 += h.footprint();
        }
    }
    live
}

/// The verdict on every segment file in `files` (rules 1 to 3 of the module doc).
/// `manifest_modified`: when the newest manifest was last written, read before it was.
fn segment_verdicts(
    reader: &StoreReader,
    files: &BTreeMap<String, FileInfo>,
    manifest_modified: Option<SystemTime>,
    damaged_mid_log: bool,
) -> Vec<SegmentGc> {
    let state = reader.manifest_state();
    let referenced = state.referenced_segments();
    let live = live_blocks(state);
    let segments_on_disk: Vec<(SegmentId, &FileInfo)> = files
        .iter()
        .filter_map(|(n, f)| SegmentId::parse_file_name(n).map(|s| (s, f)))
        .collect();
    let mut newest_of_writer: BTreeMap<u16, SegmentId> = BTreeMap::new();
    for (s, _) in &segments_on_disk {
        let e = newest_of_writer.entry(s.writer_id()).or_insert(*s);
        *e = (*e).max(*s);
    }
    segments_on_disk
        .iter()
        .map(|&(segment, file)| {
            let recorded_deleted = state
                .deleted_high
                .get(&segment.writer_id())
                .is_some_and(|&high| segment <= high);
            let keep = if referenced.contains(&segment) {
                Some(KeepReason::Referenced)
            } else if damaged_mid_log {
                Some(KeepReason::ManifestDamaged)
            } else if recorded_deleted {
                None
            } else if manifest_modified.is_none() || reader.manifest_file().is_none() {
                Some(KeepReason::NoManifest)
            } else if newest_of_writer[&segment.writer_id()] == segment {
                Some(KeepReason::NewestOfWriter)
            } else if manifest_modified.is_some_and(|m| file.modified >= m) {
                Some(KeepReason::WrittenAfterCommit)
            } else {
                None
            };
            let (blocks, live_bytes) = live.get(&segment).copied().unwrap_or((0, 0));
            SegmentGc {
                segment,
                bytes: file.len,
                blocks,
                live_bytes,
                keep,
            }
        })
        .collect()
}

/// The verdict on every manifest generation and temporary in `files`, `current`
/// being the generation in use.
fn manifest_verdicts(
    files: &BTreeMap<String, FileInfo>,
    current: Option<u64>,
) -> Vec<ManifestFileGc> {
    files
        .iter()
        .filter_map(|(name, file)| {
            let keep = if let Some(g) = format::parse_manifest_name(name) {
                match current {
                    Some(c) if g < c => None,
                    _ => Some(KeepReason::CurrentManifest),
                }
            } else if format::is_manifest_tmp(name) {
                let g = name
                    .strip_suffix(".tmp")
                    .and_then(format::parse_manifest_name);
                match (g, current) {
                    (Some(g), Some(c)) if g <= c => None,
                    _ => Some(KeepReason::NewerTemporary),
                }
            } else {
                return None;
            };
            Some(ManifestFileGc {
                file: name.clone(),
                bytes: file.len,
                keep,
            })
        })
        .collect()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Plans (as [`plan`]) and deletes what the plan allows: syncs the directory,
/// unlinks each file (one already gone counts as deleted), syncs the directory.
pub fn collect(dir: &Path) -> Result<(GcPlan, GcReport), ReadError> {
    let plan = plan(dir)?;
    let mut report = GcReport::default();
    let files = plan.files_to_delete();
    if files.is_empty() {
        return Ok((plan, report));
    }
    let dir_error = |source| ReadError::Io {
        name: dir.display().to_string(),
        source,
    };
    sync_dir(dir).map_err(dir_error)?;
    for name in files {
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => report.deleted.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => report.deleted.push(name),
            Err(e) => report.failed.push((name, e)),
        }
    }
    sync_dir(dir).map_err(dir_error)?;
    Ok((plan, report))
}
