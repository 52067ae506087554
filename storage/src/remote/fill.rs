//! [`RemoteFill`]: a restore from the remote tier that a job need not wait for.
//!
//! [`RemoteFill::prepare`] turns an empty local store directory into a store
//! holding remote checkpoint `N` whose blocks have not arrived yet: segment
//! files at their full length (holes where the blocks will land), the fill
//! marker ([`FILL_MARKER`]), then the local manifest holding `N`. The blocks
//! arrive by [`RemoteFill::run`] (on the remote runtime, or driven to the end by
//! [`RemoteTier::download`]): large ranged reads of runs of adjacent blocks
//! (object stores charge per request), each block verified and written at its
//! offset in its segment file. A reader that needs a block first calls
//! [`RemoteFill::wait`]: a block that is not being read yet is read alone,
//! ahead of the runs, and the caller blocks until it is written;
//! [`RemoteFill::prioritise`] moves runs ahead of the order without waiting. So a job restores key groups as it meets them, and the
//! local store fills behind it.
//!
//! Crash safety (`docs/storage-format.md` §8.4): the marker is durable before
//! the manifest and is removed only after every segment file is synced, so a
//! directory with a manifest and no marker holds every block its checkpoints
//! reference; a directory with the marker is an interrupted fill, removed whole
//! by the next restore ([`clear_for_restore`]): the manifest first and the
//! marker last.
//!
//! Owns the files of the directory it fills (until the fill completes) and
//! nothing else. Its futures are `Send`, never run on a reactor, and block
//! their thread for file writes; [`RemoteFill::wait`] blocks its caller.

use super::layout::RemoteRecord;
use super::{DownloadReport, RemoteError, RemoteTier};
use crate::format::{self, BlockHandle, ManifestRecord, SegmentId};
use futures_util::future::{select, Either};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The file whose presence marks a local store directory whose fill from the
/// remote tier has not completed (its segment files may have holes).
pub const FILL_MARKER: &str = "remote-fill.incomplete";

/// Largest background read of a fill (a larger block is read whole, alone):
/// object stores charge per request, so the bulk goes in large reads.
const RUN_MAX_BYTES: u64 = 32 << 20;
/// Blocks of one extent this close are read in one run (the gap read too).
const RUN_GAP_BYTES: u64 = 1 << 20;
/// Reads asked for by [`RemoteFill::wait`] (one block each) may exceed the
/// background concurrency by this many.
const URGENT_EXTRA: usize = 4;

/// One background read: bytes `[start, end)` of `segment`, at `at` in object
/// `key`, holding blocks `blocks` (indices into `Shared::blocks`).
#[derive(Debug)]
struct Run {
    key: String,
    at: u64,
    segment: SegmentId,
    start: u64,
    end: u64,
    blocks: std::ops::Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Queued,
    Reading,
    Written,
}

/// A read the driver makes: a background run, or one block asked for.
#[derive(Debug, Clone, Copy)]
enum Read {
    Run(usize),
    Block(usize),
}

#[derive(Debug)]
struct Progress {
    /// Per run: queued, being read, or read and written.
    runs: Vec<Status>,
    /// Per block (in `Shared::blocks` order).
    blocks: Vec<Status>,
    /// Blocks asked for by [`RemoteFill::wait`], read alone, first.
    urgent: VecDeque<usize>,
    /// Runs asked for by [`RemoteFill::prioritise`], read before the order.
    front: VecDeque<usize>,
    /// The next run of the background order.
    next: usize,
    runs_done: usize,
    failed: Option<String>,
    complete: bool,
    report: DownloadReport,
}

impl Progress {
    /// The next read: an urgent block while `urgent_slot`, else a run (asked
    /// for, then in order) while `background_slot`. A run whose blocks were
    /// all read alone is done without a read.
    fn pick(&mut self, shared: &Shared, background_slot: bool, urgent_slot: bool) -> Option<Read> {
        if urgent_slot {
            while let Some(b) = self.urgent.pop_front() {
                if self.blocks[b] == Status::Queued {
                    self.blocks[b] = Status::Reading;
                    return Some(Read::Block(b));
                }
            }
        }
        if !background_slot {
            return None;
        }
        loop {
            let r = match self.front.pop_front() {
                Some(r) => r,
                None if self.next < self.runs.len() => {
                    self.next += 1;
                    self.next - 1
                }
                None => return None,
            };
            if self.runs[r] != Status::Queued {
                continue;
            }
            let blocks = shared.runs[r].blocks.clone();
            if self.blocks[blocks.clone()]
                .iter()
                .all(|s| *s == Status::Written)
            {
                self.runs[r] = Status::Written;
                self.runs_done += 1;
                continue;
            }
            self.runs[r] = Status::Reading;
            for s in &mut self.blocks[blocks] {
                if *s == Status::Queued {
                    *s = Status::Reading;
                }
            }
            return Some(Read::Run(r));
        }
    }
}

#[derive(Debug)]
struct Shared {
    id: u64,
    dir: PathBuf,
    runs: Vec<Run>,
    /// Every block, in (segment, offset) order, and its run.
    blocks: Vec<(BlockHandle, usize)>,
    /// (segment, offset) of each block → its index in `blocks`.
    block_of: HashMap<(SegmentId, u64), usize>,
    files: HashMap<SegmentId, std::fs::File>,
    progress: Mutex<Progress>,
    /// Signalled when a read is written, the fill fails or completes.
    arrived: Condvar,
    /// Wakes the fill's driver for an urgent read.
    wake: tokio::sync::Notify,
}

/// A restore from the remote tier in progress. Cloning shares it.
#[derive(Debug, Clone)]
pub struct RemoteFill {
    shared: Arc<Shared>,
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteError {
    let path = path.to_path_buf();
    move |source| RemoteError::Local { path, source }
}

fn sync_dir(dir: &Path) -> Result<(), RemoteError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(local(dir))
}

impl RemoteFill {
    /// Prepares `dir` (created if missing; an interrupted fill in it is removed
    /// first; a store in it is refused) to hold `record`'s checkpoint: segment
    /// files at their length, the marker, the manifest. Blocks the thread.
    pub fn prepare(record: &RemoteRecord, dir: &Path) -> Result<RemoteFill, RemoteError> {
        std::fs::create_dir_all(dir).map_err(local(dir))?;
        clear_for_restore(dir)?;
        let id = record.checkpoint.id;
        let (runs, blocks) = plan_runs(record)?;
        let block_of: HashMap<(SegmentId, u64), usize> = blocks
            .iter()
            .enumerate()
            .map(|(i, (h, _))| ((h.segment, h.offset), i))
            .collect();
        let mut lengths: HashMap<SegmentId, u64> = HashMap::new();
        for run in &runs {
            let len = lengths.entry(run.segment).or_default();
            *len = (*len).max(run.end);
        }
        let mut files = HashMap::new();
        for (&segment, &len) in &lengths {
            let path = dir.join(segment.file_name());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(local(&path))?;
            // Whole pages, as the local store writes them; holes until filled.
            file.set_len(format::align_up(len, format::PAGE_SIZE as u64))
                .map_err(local(&path))?;
            files.insert(segment, file);
        }
        // The marker is durable before the manifest can be.
        let marker = dir.join(FILL_MARKER);
        std::fs::write(&marker, format!("{id}\n")).map_err(local(&marker))?;
        std::fs::File::open(&marker)
            .and_then(|f| f.sync_all())
            .map_err(local(&marker))?;
        sync_dir(dir)?;
        let manifest = format::encode_batch(
            &[ManifestRecord::CheckpointCompleted(
                record.checkpoint.clone(),
            )],
            0,
        );
        let tmp = dir.join(format::manifest_tmp_name(1));
        let fin = dir.join(format::manifest_file_name(1));
        std::fs::write(&tmp, &manifest).map_err(local(&tmp))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(local(&tmp))?;
        std::fs::rename(&tmp, &fin).map_err(local(&fin))?;
        sync_dir(dir)?;
        let (n_runs, n_blocks) = (runs.len(), blocks.len());
        Ok(RemoteFill {
            shared: Arc::new(Shared {
                id,
                dir: dir.to_path_buf(),
                runs,
                blocks,
                block_of,
                files,
                progress: Mutex::new(Progress {
                    runs: vec![Status::Queued; n_runs],
                    blocks: vec![Status::Queued; n_blocks],
                    urgent: VecDeque::new(),
                    front: VecDeque::new(),
                    next: 0,
                    runs_done: 0,
                    failed: None,
                    complete: false,
                    report: DownloadReport {
                        id,
                        segments: lengths.len(),
                        ..DownloadReport::default()
                    },
                }),
                arrived: Condvar::new(),
                wake: tokio::sync::Notify::new(),
            }),
        })
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every block not yet written (up to the tier's part concurrency at
    /// once, urgent runs first), then syncs the segment files and removes the
    /// marker. Run it once. On an error the fill stops, and every waiter and
    /// later [`wait`](Self::wait) gets the error.
    pub async fn run(&self, tier: &RemoteTier) -> Result<DownloadReport, RemoteError> {
        // A driver that ends early (an error, or dropped) releases the waiters.
        struct Release<'a>(&'a RemoteFill);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut p = self.0.progress();
                if !p.complete && p.failed.is_none() {
                    p.failed = Some("the fill stopped before completing".into());
                }
                self.0.shared.arrived.notify_all();
            }
        }
        let _release = Release(self);
        let outcome = match self.read_all(tier).await {
            Ok(()) => self.finish(),
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            let mut p = self.progress();
            p.failed.get_or_insert_with(|| e.to_string());
        }
        outcome
    }

    async fn read_all(&self, tier: &RemoteTier) -> Result<(), RemoteError> {
        let background = tier.options().part_concurrency.max(1);
        let mut reading = FuturesUnordered::new();
        loop {
            // Created before the queue is looked at: a block asked for after
            // the look still wakes the select below.
            let woken = self.shared.wake.notified();
            {
                let mut p = self.progress();
                while let Some(read) = p.pick(
                    &self.shared,
                    reading.len() < background,
                    reading.len() < background + URGENT_EXTRA,
                ) {
                    reading.push(self.read(tier, read));
                }
                if reading.is_empty() && p.runs_done == self.shared.runs.len() {
                    return Ok(());
                }
            }
            let next = std::pin::pin!(reading.next());
            let woken = std::pin::pin!(woken);
            if let Either::Left((Some(done), _)) = select(next, woken).await {
                done?;
            }
        }
    }

    /// One read: fetched, its blocks verified, written at their offset.
    async fn read(&self, tier: &RemoteTier, read: Read) -> Result<(), RemoteError> {
        let shared = &self.shared;
        let (key, at, segment, start, end, blocks) = match read {
            Read::Run(r) => {
                let run = &shared.runs[r];
                (
                    &run.key,
                    run.at,
                    run.segment,
                    run.start,
                    run.end,
                    run.blocks.clone(),
                )
            }
            Read::Block(b) => {
                let (h, r) = &shared.blocks[b];
                let run = &shared.runs[*r];
                let at = run.at + (h.offset - run.start);
                (
                    &run.key,
                    at,
                    h.segment,
                    h.offset,
                    h.offset + h.footprint(),
                    b..b + 1,
                )
            }
        };
        let bytes = tier
            .backend()
            .get(key, Some(at..at + (end - start)))
            .await?;
        for (h, _) in &shared.blocks[blocks.clone()] {
            let bad = |reason: String| RemoteError::BadBlock {
                id: shared.id,
                segment: h.segment,
                offset: h.offset,
                reason,
            };
            let at = (h.offset - start) as usize;
            let block = bytes
                .get(at..at + h.footprint() as usize)
                .ok_or_else(|| bad("short ranged read".into()))?;
            let local_h = BlockHandle { offset: 0, ..*h };
            format::check_block(block, &local_h, true).map_err(|e| bad(e.to_string()))?;
        }
        let path = shared.dir.join(segment.file_name());
        shared.files[&segment]
            .write_all_at(&bytes, start)
            .map_err(local(&path))?;
        let mut p = self.progress();
        for s in &mut p.blocks[blocks] {
            *s = Status::Written;
        }
        if let Read::Run(r) = read {
            p.runs[r] = Status::Written;
            p.runs_done += 1;
        }
        p.report.get_requests += 1;
        p.report.bytes += bytes.len() as u64;
        drop(p);
        shared.arrived.notify_all();
        Ok(())
    }

    /// Every run is written: sync the segment files, then remove the marker.
    fn finish(&self) -> Result<DownloadReport, RemoteError> {
        let dir = &self.shared.dir;
        for (segment, file) in &self.shared.files {
            file.sync_all()
                .map_err(local(&dir.join(segment.file_name())))?;
        }
        let marker = dir.join(FILL_MARKER);
        std::fs::remove_file(&marker).map_err(local(&marker))?;
        sync_dir(dir)?;
        let mut p = self.progress();
        p.complete = true;
        let report = p.report.clone();
        drop(p);
        self.shared.arrived.notify_all();
        Ok(report)
    }

    fn failed(&self, reason: &str) -> RemoteError {
        RemoteError::FillFailed {
            id: self.shared.id,
            reason: reason.to_owned(),
        }
    }

    /// Whether the block `handle` names is written (a block the fill does not
    /// hold is).
    pub fn is_written(&self, handle: &BlockHandle) -> bool {
        match self.shared.block_of.get(&(handle.segment, handle.offset)) {
            Some(&b) => self.progress().blocks[b] == Status::Written,
            None => true,
        }
    }

    /// Blocks until the block `handle` names is written; one that is not
    /// being read yet is read alone, ahead of the background order. A block
    /// the fill does not hold returns at once. Never call it on a thread the
    /// fill's driver needs.
    pub fn wait(&self, handle: &BlockHandle) -> Result<(), RemoteError> {
        let Some(&b) = self.shared.block_of.get(&(handle.segment, handle.offset)) else {
            return Ok(());
        };
        let mut p = self.progress();
        let mut asked = false;
        loop {
            if p.blocks[b] == Status::Written {
                return Ok(());
            }
            if let Some(reason) = &p.failed {
                return Err(self.failed(reason));
            }
            if !asked && p.blocks[b] == Status::Queued {
                p.urgent.push_back(b);
                self.shared.wake.notify_one();
                asked = true;
            }
            p = self
                .shared
                .arrived
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Moves the runs holding `handles` ahead of the background order, in
    /// that order, without waiting.
    pub fn prioritise<'a>(&self, handles: impl IntoIterator<Item = &'a BlockHandle>) {
        let mut p = self.progress();
        let mut asked = std::collections::HashSet::new();
        for h in handles {
            if let Some(&b) = self.shared.block_of.get(&(h.segment, h.offset)) {
                let r = self.shared.blocks[b].1;
                if p.runs[r] == Status::Queued && asked.insert(r) {
                    p.front.push_back(r);
                }
            }
        }
        drop(p);
        self.shared.wake.notify_one();
    }
}

/// The background reads of `record`, and its blocks in (segment, offset)
/// order with their run: runs of one extent with gaps below
/// [`RUN_GAP_BYTES`] up to [`RUN_MAX_BYTES`].
#[allow(clippy::type_complexity)]
fn plan_runs(record: &RemoteRecord) -> Result<(Vec<Run>, Vec<(BlockHandle, usize)>), RemoteError> {
    let id = record.checkpoint.id;
    let mut handles: Vec<BlockHandle> = record.checkpoint.handles.clone();
    handles.sort();
    handles.dedup();
    let mut runs: Vec<Run> = Vec::new();
    let mut blocks = Vec::with_capacity(handles.len());
    for (i, h) in handles.into_iter().enumerate() {
        let Some(e) = record.extent_for(&h) else {
            return Err(RemoteError::Damaged {
                id,
                reason: format!("block {h:?} is covered by no extent"),
            });
        };
        let end = h.offset + h.footprint();
        match runs.last_mut() {
            Some(run)
                if run.key == e.key
                    && h.offset <= run.end + RUN_GAP_BYTES
                    && end.max(run.end) - run.start <= RUN_MAX_BYTES =>
            {
                run.end = run.end.max(end);
                run.blocks.end = i + 1;
            }
            _ => runs.push(Run {
                key: e.key.clone(),
                at: h.offset - e.start,
                segment: h.segment,
                start: h.offset,
                end,
                blocks: i..i + 1,
            }),
        }
        blocks.push((h, runs.len() - 1));
    }
    Ok((runs, blocks))
}

/// Makes `dir` ready for a restore: refuses a directory with a manifest and
/// no fill marker; removes an interrupted fill (manifests first, marker
/// last) and segment files without a manifest (an interrupted download).
pub(super) fn clear_for_restore(dir: &Path) -> Result<(), RemoteError> {
    let listing = |source| RemoteError::Local {
        path: dir.to_path_buf(),
        source,
    };
    let interrupted = dir.join(FILL_MARKER).exists();
    let mut manifests = Vec::new();
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if format::parse_manifest_name(&name).is_some() {
            if !interrupted {
                return Err(RemoteError::NotEmpty {
                    dir: dir.to_path_buf(),
                });
            }
            manifests.push(entry.path());
        } else if SegmentId::parse_file_name(&name).is_some() || format::is_manifest_tmp(&name) {
            segments.push(entry.path());
        }
    }
    for path in manifests.into_iter().chain(segments) {
        std::fs::remove_file(&path).map_err(|source| RemoteError::Local { path, source })?;
    }
    if interrupted {
        sync_dir(dir)?;
        let marker = dir.join(FILL_MARKER);
        std::fs::remove_file(&marker).map_err(local(&marker))?;
    }
    Ok(())
}

/// Whether `dir` holds an interrupted fill (the marker).
pub fn is_interrupted(dir: &Path) -> bool {
    dir.join(FILL_MARKER).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two runs of two blocks each (of one segment and extent).
    fn shared() -> Shared {
        let segment = SegmentId::new(0, 1);
        let h = |offset: u64| BlockHandle {
            segment,
            offset,
            len: 100,
            kind: crate::BlockKind::KEYED_STATE_FULL,
        };
        let run = |start: u64, blocks: std::ops::Range<usize>| Run {
            key: "extent".into(),
            at: start,
            segment,
            start,
            end: start + 8192,
            blocks,
        };
        let blocks = vec![
            (h(0), 0),
            (h(4096), 0),
            (h(1 << 30), 1),
            (h((1 << 30) + 4096), 1),
        ];
        Shared {
            id: 1,
            dir: PathBuf::new(),
            runs: vec![run(0, 0..2), run(1 << 30, 2..4)],
            block_of: blocks
                .iter()
                .enumerate()
                .map(|(i, (h, _))| ((h.segment, h.offset), i))
                .collect(),
            blocks,
            files: HashMap::new(),
            progress: Mutex::new(Progress {
                runs: vec![Status::Queued; 2],
                blocks: vec![Status::Queued; 4],
                urgent: VecDeque::new(),
                front: VecDeque::new(),
                next: 0,
                runs_done: 0,
                failed: None,
                complete: false,
                report: DownloadReport::default(),
            }),
            arrived: Condvar::new(),
            wake: tokio::sync::Notify::new(),
        }
    }

    #[test]
    fn a_block_asked_for_is_read_alone_first_and_runs_read_in_order() {
        let s = shared();
        let mut p = s.progress.lock().unwrap();
        p.urgent.push_back(3);
        // No background slot: the urgent block alone.
        assert!(matches!(p.pick(&s, false, true), Some(Read::Block(3))));
        assert!(p.pick(&s, false, true).is_none());
        assert!(matches!(p.pick(&s, true, true), Some(Read::Run(0))));
        assert_eq!(p.blocks[..2], [Status::Reading; 2]);
        assert!(matches!(p.pick(&s, true, true), Some(Read::Run(1))));
        assert!(p.pick(&s, true, true).is_none());
    }

    #[test]
    fn a_run_asked_for_goes_first_and_a_run_read_block_by_block_is_skipped() {
        let s = shared();
        let mut p = s.progress.lock().unwrap();
        p.front.push_back(1);
        assert!(matches!(p.pick(&s, true, false), Some(Read::Run(1))));
        let s = shared();
        let mut p = s.progress.lock().unwrap();
        p.blocks[0] = Status::Written;
        p.blocks[1] = Status::Written;
        assert!(matches!(p.pick(&s, true, false), Some(Read::Run(1))));
        assert_eq!(p.runs[0], Status::Written, "done without a read");
        assert_eq!(p.runs_done, 1);
    }
}
