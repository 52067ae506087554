//! Sinks: where records leave the job.
//!
//! A [`Sink`] subtask takes every batch it is given. A sink whose consumer can
//! fall behind (the egress to another thread) holds the batch back and reports
//! itself blocked: the subtask then stops pulling the inputs that feed it
//! (backpressure), so nothing is dropped and memory stays bounded.
//! Built-ins: [`DiscardSink`], [`CollectSink`] (gathers values for the caller
//! at end of input), the embedding service's egress (in `embed`: a bounded
//! ring per subtask to a thread of the service, at least once or committed
//! with the checkpoints) and [`FileSink`] (JSON-lines files, exactly once by two-phase
//! commit with the checkpoints, or at least once).
//!
//! Transactional sinks (Flink's `TwoPhaseCommitSinkFunction`): when a
//! checkpoint's barrier reaches the sink, [`Sink::pre_commit`] makes what was
//! written since the previous barrier durable but invisible; when the
//! checkpoint is complete, [`Sink::commit`] makes it visible. A job with a
//! transactional sink takes a final checkpoint once all its input has ended
//! and finishes when that is complete, so its last output is committed too.

use crate::data::Record;
use crate::park::Notifier;
use crate::SinkError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a sink subtask knows about itself.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// This subtask's index.
    pub subtask: usize,
    /// Number of sink subtasks.
    pub parallelism: usize,
    /// Wakes this subtask when it is parked (for sinks drained by other threads).
    pub notifier: Notifier,
    /// Whether the job checkpoints (transactional sinks commit with
    /// checkpoints; without, they commit at end of input).
    pub checkpointing: bool,
    /// The checkpoint this run restored, if any. It alone decides the
    /// sink's side of the restore (the rule every two-phase sink keeps, see
    /// [`Sink::open`]): transactions pre-committed up to it are committed,
    /// later ones discarded, and output committed for checkpoints after it
    /// (all earlier output, when nothing was restored) is rolled back.
    pub restored_checkpoint: Option<u64>,
    /// Unique per run of the job (a restart is a new run): names the
    /// run's own transactions apart from those left by earlier runs.
    pub run: u64,
}

/// A sink subtask.
pub trait Sink<T>: 'static {
    /// Called once when the job is built on the subtask.
    ///
    /// A transactional sink reconciles its output with
    /// [`SinkContext::restored_checkpoint`] here, and nothing else: a
    /// restore may fall back to an older checkpoint than the newest one
    /// (damage), or start fresh, so output committed for checkpoints the
    /// restored one does not cover must be rolled back (or, where the sink
    /// cannot, `open` fails with [`SinkError::CannotRollBack`] naming what
    /// and how to override), or the job would commit it twice.
    fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        let _ = context;
        Ok(())
    }

    /// Takes the whole batch (the caller clears it afterwards). A sink that
    /// cannot pass it on now keeps it and reports [`is_blocked`](Self::is_blocked).
    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError>;

    /// End of input: flush everything.
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Whether the sink holds records back (its inputs must pause).
    fn is_blocked(&self) -> bool {
        false
    }

    /// Whether [`drain`](Self::drain) would pass held-back records on now.
    fn can_drain(&mut self) -> bool {
        false
    }

    /// Passes held-back records on as far as possible; returns whether any moved.
    fn drain(&mut self) -> Result<bool, SinkError> {
        Ok(false)
    }

    /// Whether the sink commits with checkpoints (two-phase commit); the job
    /// then ends with a final checkpoint.
    fn is_transactional(&self) -> bool {
        false
    }

    /// Phase one of checkpoint `checkpoint_id`: what was written since the
    /// previous checkpoint becomes durable, not yet visible. Runs on the
    /// reactor when the barrier arrives, before the checkpoint is
    /// acknowledged.
    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        let _ = checkpoint_id;
        Ok(())
    }

    /// Whether phase one of `checkpoint_id` has finished. A sink whose
    /// pre-commit waits on someone else (the committed egress waits for the
    /// service to acknowledge what it received) returns false until then:
    /// the subtask's part of the checkpoint stays open, and the sink wakes
    /// the subtask through its [`Notifier`] when the answer changes. The
    /// default: pre-commit finishes within [`Sink::pre_commit`].
    fn is_pre_committed(&mut self, checkpoint_id: u64) -> bool {
        let _ = checkpoint_id;
        true
    }

    /// Phase two: checkpoint `checkpoint_id` is complete; everything
    /// pre-committed up to it becomes visible.
    fn commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        let _ = checkpoint_id;
        Ok(())
    }
}

/// Drops every record, counting them.
#[derive(Clone, Debug, Default)]
pub struct DiscardSink {
    count: Arc<AtomicU64>,
}

impl DiscardSink {
    /// A sink whose count is readable through [`DiscardSink::counter`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink adding to a shared counter.
    pub fn counting(count: Arc<AtomicU64>) -> Self {
        Self { count }
    }

    /// The shared count of discarded records.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }
}

impl<T> Sink<T> for DiscardSink {
    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
        Ok(())
    }
}

/// Collects the values of every subtask for the caller (tests, small jobs).
/// Each subtask keeps its records locally and hands them over at end of input.
pub struct Collector<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Collector<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Collector<T> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }
}

impl<T: Send + 'static> Collector<T> {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink subtask feeding this collector.
    pub fn sink(&self) -> CollectSink<T> {
        CollectSink {
            local: Vec::new(),
            into: self.clone(),
        }
    }

    /// Takes everything collected so far.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().expect("collector lock"))
    }
}

/// The sink subtask of a [`Collector`].
pub struct CollectSink<T> {
    local: Vec<T>,
    into: Collector<T>,
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        self.local.extend(batch.drain(..).map(|r| r.value));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.into
            .0
            .lock()
            .map_err(|_| SinkError::Other("collector lock poisoned".into()))?
            .append(&mut self.local);
        Ok(())
    }
}

/// How a [`FileSink`] delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileSinkMode {
    /// Two-phase commit with the checkpoints: committed files hold every
    /// result exactly once, across failures and restarts.
    ExactlyOnce,
    /// Records go straight to visible files, flushed at every checkpoint: a
    /// restart writes the replayed part again (duplicates, nothing lost).
    AtLeastOnce,
}

/// Writes records as lines (JSON lines, formatted by the caller) to files in
/// a directory, through [`PartFiles`].
pub struct FileSink<T, F> {
    files: PartFiles,
    format: F,
    line: Vec<u8>,
    _in: std::marker::PhantomData<fn(T)>,
}

impl<T, F: FnMut(&T, &mut Vec<u8>) + 'static> FileSink<T, F> {
    /// A sink writing to `dir` (created if missing); `format` appends one
    /// record's line, without the newline, to the buffer.
    pub fn new(dir: impl Into<PathBuf>, mode: FileSinkMode, format: F) -> Self {
        Self {
            files: PartFiles::new(dir, mode),
            format,
            line: Vec::new(),
            _in: std::marker::PhantomData,
        }
    }
}

impl<T: 'static, F: FnMut(&T, &mut Vec<u8>) + 'static> Sink<T> for FileSink<T, F> {
    fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        self.files.open(context)
    }

    fn write(&mut self, batch: &mut Vec<Record<T>>) -> Result<(), SinkError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        for record in batch.drain(..) {
            (self.format)(&record.value, &mut line);
            line.push(b'\n');
        }
        let written = self.files.write(&line);
        self.line = line;
        written
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.files.finish()
    }

    fn is_transactional(&self) -> bool {
        self.files.is_transactional()
    }

    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        self.files.pre_commit(checkpoint_id)
    }

    fn commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        self.files.commit(checkpoint_id)
    }
}

/// One sink subtask's output files, committed with the checkpoints: the
/// transactional core of [`FileSink`], for sinks that format their own lines.
///
/// Exactly once: a subtask writes to `DIR/.pending/<run>-<subtask>.inprogress`;
/// at checkpoint `n`'s barrier it syncs the file and renames it to
/// `DIR/.pending/part-<n>-<subtask>-<run>.jsonl` (pre-commit); when `n` is
/// complete it renames every pre-committed file up to `n` into `DIR` and
/// syncs the directory (commit). On open after a restore from checkpoint
/// `r`, each subtask `s` of `n` recovers the files of the subtask indices it
/// owns, `s`, `s + n`, `s + 2n`… (a file's index is in its name; indices
/// beyond `n` are those of a run with more subtasks, after a rescale), so
/// that no subtask touches a file another subtask of this run may be
/// writing, even one in another process of a cluster: it moves the committed files of checkpoints after `r` (every
/// committed file, when nothing was restored) into
/// `DIR/.rolled-back/<restore>/` (never deleted: a restore that fell back
/// past damage, or a fresh start, would otherwise commit them twice), commits
/// the pending files of checkpoints up to `r` (their commit may have been cut
/// short) and removes every other file earlier runs left in `.pending/`.
/// Without checkpointing, the output is committed at end of input. Committed files are `DIR/*.jsonl`; their lines, sorted, are the
/// job's results. At least once: `DIR/part-<subtask>-<run>.jsonl`, synced at
/// every checkpoint.
pub struct PartFiles {
    dir: PathBuf,
    mode: FileSinkMode,
    subtask: usize,
    parallelism: usize,
    run: u64,
    checkpointing: bool,
    /// The file being written and its path.
    current: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    /// Pre-committed files: (checkpoint, pending path).
    pending: Vec<(u64, PathBuf)>,
}

/// The directory of pre-committed and in-progress files.
pub const PENDING_DIR: &str = ".pending";

/// The directory that committed files a restore rolled back are moved to,
/// one folder per restore.
pub const ROLLED_BACK_DIR: &str = ".rolled-back";

fn io_error(what: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::Other(format!("{what} {}: {e}", path.display()))
}

/// Makes renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync directory", dir, e))
}

/// Parses `part-<checkpoint>-<subtask>-<run>.jsonl`: (checkpoint, subtask, run).
fn parse_part(name: &str) -> Option<(u64, usize, u64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".jsonl")?;
    let mut fields = rest.split('-');
    let checkpoint = fields.next()?.parse().ok()?;
    let subtask: usize = fields.next()?.parse().ok()?;
    let run = u64::from_str_radix(fields.next()?, 16).ok()?;
    fields
        .next()
        .is_none()
        .then_some((checkpoint, subtask, run))
}

/// Parses `<run>-<subtask>.inprogress`: the subtask.
fn parse_in_progress(name: &str) -> Option<usize> {
    let rest = name.strip_suffix(".inprogress")?;
    let (_, subtask) = rest.split_once('-')?;
    subtask.parse().ok()
}

impl PartFiles {
    /// Files in `dir` (created on open if missing).
    pub fn new(dir: impl Into<PathBuf>, mode: FileSinkMode) -> Self {
        Self {
            dir: dir.into(),
            mode,
            subtask: 0,
            parallelism: 1,
            run: 0,
            checkpointing: false,
            current: None,
            pending: Vec::new(),
        }
    }

    fn pending_dir(&self) -> PathBuf {
        self.dir.join(PENDING_DIR)
    }

    fn part_name(&self, checkpoint: u64) -> String {
        format!(
            "part-{checkpoint:020}-{:04}-{:016x}.jsonl",
            self.subtask, self.run
        )
    }

    /// Prepares the directories; recovers what earlier runs left of the
    /// subtask indices this subtask owns.
    pub fn open(&mut self, context: &SinkContext) -> Result<(), SinkError> {
        self.subtask = context.subtask;
        self.parallelism = context.parallelism.max(1);
        self.run = context.run;
        self.checkpointing = context.checkpointing;
        let pending = self.pending_dir();
        std::fs::create_dir_all(&pending).map_err(|e| io_error("cannot create", &pending, e))?;
        if self.mode == FileSinkMode::ExactlyOnce {
            self.recover(context.restored_checkpoint)?;
        }
        Ok(())
    }

    /// Whether this subtask recovers the files of subtask index `index`.
    fn owns(&self, index: usize) -> bool {
        index % self.parallelism == self.subtask
    }

    /// On open: rolls back committed output the restored checkpoint does
    /// not cover, finishes the commits of checkpoints up to `restored` and
    /// removes everything else earlier runs left pending, for the subtask
    /// indices this subtask owns.
    fn recover(&self, restored: Option<u64>) -> Result<(), SinkError> {
        self.roll_back_committed(restored)?;
        let pending = self.pending_dir();
        let entries =
            std::fs::read_dir(&pending).map_err(|e| io_error("cannot list", &pending, e))?;
        let own_prefix = format!("{:016x}-", self.run);
        let mut changed = false;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &pending, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let index = parse_part(&name)
                .map(|(_, subtask, _)| subtask)
                .or_else(|| parse_in_progress(&name));
            match parse_part(&name) {
                // Another subtask's to recover (a name that is neither a
                // part nor in progress: subtask 0's).
                _ if !self.owns(index.unwrap_or(0)) => continue,
                // This run's own files.
                Some((_, _, run)) if run == self.run => continue,
                _ if name.starts_with(&own_prefix) => continue,
                Some((checkpoint, _, _)) if restored.is_some_and(|r| checkpoint <= r) => {
                    let to = self.dir.join(&name);
                    std::fs::rename(&path, &to).map_err(|e| io_error("cannot commit", &path, e))?;
                }
                _ => {
                    std::fs::remove_file(&path).map_err(|e| io_error("cannot remove", &path, e))?;
                }
            }
            changed = true;
        }
        if changed {
            sync_dir(&self.dir)?;
            sync_dir(&pending)?;
        }
        Ok(())
    }

    /// Moves the committed files of checkpoints after `restored` (all
    /// committed files when nothing was restored) into a folder of
    /// [`ROLLED_BACK_DIR`] named after this restore.
    fn roll_back_committed(&self, restored: Option<u64>) -> Result<(), SinkError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| io_error("cannot list", &self.dir, e))?;
        let mut uncovered = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((checkpoint, subtask, run)) = parse_part(&name) else {
                continue;
            };
            if !self.owns(subtask) {
                continue;
            }
            debug_assert!(run != self.run, "nothing of this run is committed yet");
            if restored.is_none_or(|r| checkpoint > r) {
                uncovered.push(name);
            }
        }
        if uncovered.is_empty() {
            return Ok(());
        }
        let label = match restored {
            Some(r) => format!("run-{:016x}-restored-{r}", self.run),
            None => format!("run-{:016x}-fresh-start", self.run),
        };
        let to_dir = self.dir.join(ROLLED_BACK_DIR).join(label);
        std::fs::create_dir_all(&to_dir).map_err(|e| io_error("cannot create", &to_dir, e))?;
        uncovered.sort();
        for name in &uncovered {
            let from = self.dir.join(name);
            std::fs::rename(&from, to_dir.join(name))
                .map_err(|e| io_error("cannot roll back", &from, e))?;
        }
        sync_dir(&to_dir)?;
        sync_dir(&self.dir)?;
        eprintln!(
            "spate: file sink {}: {} committed file(s) {} moved to {}",
            self.dir.display(),
            uncovered.len(),
            match restored {
                Some(r) => format!("of checkpoints after the restored checkpoint {r}"),
                None => "of an earlier run (this one starts fresh)".to_string(),
            },
            to_dir.display()
        );
        Ok(())
    }

    /// Appends complete lines (each ending in `\n`).
    pub fn write(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        use std::io::Write;
        if self.current.is_none() {
            let path = match self.mode {
                FileSinkMode::ExactlyOnce => self
                    .pending_dir()
                    .join(format!("{:016x}-{:04}.inprogress", self.run, self.subtask)),
                FileSinkMode::AtLeastOnce => self
                    .dir
                    .join(format!("part-{:04}-{:016x}.jsonl", self.subtask, self.run)),
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_error("cannot create", &path, e))?;
            self.current = Some((path, std::io::BufWriter::with_capacity(1 << 16, file)));
        }
        let (path, writer) = self.current.as_mut().expect("opened above");
        writer
            .write_all(lines)
            .map_err(|e| io_error("cannot write", path, e))
    }

    /// Flushes and syncs the current file; returns its path if it exists.
    fn sync_current(&mut self) -> Result<Option<PathBuf>, SinkError> {
        use std::io::Write;
        let Some((path, writer)) = self.current.as_mut() else {
            return Ok(None);
        };
        writer
            .flush()
            .and_then(|_| writer.get_ref().sync_data())
            .map_err(|e| io_error("cannot sync", path, e))?;
        Ok(Some(path.clone()))
    }

    /// Renames the pre-committed files up to `checkpoint` into the directory.
    fn commit_up_to(&mut self, checkpoint: u64) -> Result<(), SinkError> {
        let mut committed = false;
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0 <= checkpoint {
                let (_, path) = self.pending.remove(i);
                let name = path.file_name().expect("a part file").to_owned();
                let to = self.dir.join(name);
                std::fs::rename(&path, &to).map_err(|e| io_error("cannot commit", &path, e))?;
                committed = true;
            } else {
                i += 1;
            }
        }
        if committed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// End of input: without checkpoints (or at least once) the output is
    /// final now; otherwise the final checkpoint commits it.
    pub fn finish(&mut self) -> Result<(), SinkError> {
        if self.mode == FileSinkMode::AtLeastOnce || !self.checkpointing {
            self.pre_commit(u64::MAX - 1)?;
            return self.commit_up_to(u64::MAX - 1);
        }
        Ok(())
    }

    /// Whether the files commit with checkpoints.
    pub fn is_transactional(&self) -> bool {
        self.mode == FileSinkMode::ExactlyOnce && self.checkpointing
    }

    /// Phase one (see [`Sink::pre_commit`]).
    pub fn pre_commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        let Some(path) = self.sync_current()? else {
            return Ok(());
        };
        if self.mode == FileSinkMode::AtLeastOnce {
            return Ok(());
        }
        self.current = None;
        let to = self.pending_dir().join(self.part_name(checkpoint_id));
        std::fs::rename(&path, &to).map_err(|e| io_error("cannot pre-commit", &path, e))?;
        self.pending.push((checkpoint_id, to));
        Ok(())
    }

    /// Phase two (see [`Sink::commit`]).
    pub fn commit(&mut self, checkpoint_id: u64) -> Result<(), SinkError> {
        self.commit_up_to(checkpoint_id)
    }
}
