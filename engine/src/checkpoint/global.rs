//! Checkpoints across the processes of a cluster job (`docs/cluster.md` §15).
//!
//! Every process runs its own coordinator over its own subtasks and its own
//! store (`<dir>/process-<p>`): its *part* of a checkpoint. Process 0, the
//! leader, also runs the [`GlobalCoordinator`]: it decides when a checkpoint
//! starts, tells every part to trigger it, waits until every part has
//! committed its blocks and metadata to its own store, then writes the
//! checkpoint's global record (`<dir>/cluster/checkpoint-<id>`, whose rename
//! is the commit point) and only then tells every part that the checkpoint is
//! complete, so that sinks commit. A checkpoint a part failed, or that timed
//! out, is aborted everywhere and its parts are discarded from their stores.
//!
//! Owns the messages between the leader and the parts ([`CoordMsg`], carried
//! in `Coord` frames of the data plane), the leader's state machine and the
//! global record's bytes and files. Pure except for [`files`], which does
//! blocking file I/O and is called from a thread of its own, never from a
//! reactor. Must not touch glommio, the rings or a store.
//!
//! Invariants (asserted where they could break):
//!
//! 1. At most one global checkpoint is pending; ids strictly increase and
//!    exceed every id a part's store already holds (each part says so in
//!    `Ready` before the first trigger).
//! 2. A global checkpoint commits only once every part reported its part
//!    durable (`PartDone`), and at most once; nothing else ends it while its
//!    record is being written.
//! 3. A part hears `Complete(id)` only after the global record of `id` is
//!    durable, and hears exactly one of `Complete(id)` / `Abort(id)` for each
//!    id it was told to trigger.
//! 4. A checkpoint is final (every subtask had drained all its input) only
//!    when every part counted all its subtasks' votes.

use super::schedule::Schedule;
use super::stats::TriggerCause;
use super::CheckpointConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// A message between the leader's global coordinator and a process's part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CoordMsg {
    /// Part → leader: the part's store is open; ids from `next_id` on are
    /// free in it.
    Ready { next_id: u64 },
    /// Part → leader: a subtask asked for a checkpoint (a final one, or
    /// through the API).
    Request,
    /// Part → leader: the part of checkpoint `id` is committed to the
    /// part's store.
    PartDone {
        id: u64,
        /// Subtasks of the part that had drained all their input.
        final_votes: u32,
    },
    /// Part → leader: the part of `id` failed (`declined`: a subtask had
    /// finished, which is no failure).
    PartFailed {
        id: u64,
        declined: bool,
        reason: String,
    },
    /// Part → leader: the part's subtasks are all done; it takes part in no
    /// further checkpoint.
    Ended,
    /// Leader → part: trigger checkpoint `id`.
    Trigger { id: u64, cause: TriggerCause },
    /// Leader → part: checkpoint `id`'s global record is durable.
    Complete { id: u64, is_final: bool },
    /// Leader → part: checkpoint `id` failed; discard its part.
    Abort { id: u64, reason: String },
    /// Leader → part, once, first, at the start of a run: restore global
    /// checkpoint `id` (0: none). The leader alone chooses, so that every
    /// process restores the same checkpoint.
    Restore { id: u64 },
}

/// Longest reason carried in a message (longer ones are cut).
const MAX_REASON: usize = 2048;

fn cause_code(cause: TriggerCause) -> u8 {
    match cause {
        TriggerCause::Interval => 0,
        TriggerCause::Manual => 1,
        TriggerCause::ChangeVolume => 2,
    }
}

fn cut(reason: &str) -> &str {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl CoordMsg {
    /// Appends the message's bytes to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let put_str = |out: &mut Vec<u8>, s: &str| {
            let s = cut(s);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        match self {
            CoordMsg::Ready { next_id } => {
                out.push(1);
                out.extend_from_slice(&next_id.to_le_bytes());
            }
            CoordMsg::Request => out.push(2),
            CoordMsg::PartDone { id, final_votes } => {
                out.push(3);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&final_votes.to_le_bytes());
            }
            CoordMsg::PartFailed {
                id,
                declined,
                reason,
            } => {
                out.push(4);
                out.extend_from_slice(&id.to_le_bytes());
                out.push(u8::from(*declined));
                put_str(out, reason);
            }
            CoordMsg::Ended => out.push(5),
            CoordMsg::Trigger { id, cause } => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
                out.push(cause_code(*cause));
            }
            CoordMsg::Complete { id, is_final } => {
                out.push(7);
                out.extend_from_slice(&id.to_le_bytes());
                out.push(u8::from(*is_final));
            }
            CoordMsg::Abort { id, reason } => {
                out.push(8);
                out.extend_from_slice(&id.to_le_bytes());
                put_str(out, reason);
            }
            CoordMsg::Restore { id } => {
                out.push(9);
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }

    /// Decodes one message; an error names what is wrong (never panics).
    pub(crate) fn decode(bytes: &[u8]) -> Result<CoordMsg, String> {
        let mut r = Reader { bytes, at: 0 };
        let msg = match r.u8()? {
            1 => CoordMsg::Ready { next_id: r.u64()? },
            2 => CoordMsg::Request,
            3 => CoordMsg::PartDone {
                id: r.u64()?,
                final_votes: r.u32()?,
            },
            4 => CoordMsg::PartFailed {
                id: r.u64()?,
                declined: r.flag()?,
                reason: r.string()?,
            },
            5 => CoordMsg::Ended,
            6 => CoordMsg::Trigger {
                id: r.u64()?,
                cause: match r.u8()? {
                    0 => TriggerCause::Interval,
                    1 => TriggerCause::Manual,
                    2 => TriggerCause::ChangeVolume,
                    c => return Err(format!("unknown trigger cause {c}")),
                },
            },
            7 => CoordMsg::Complete {
                id: r.u64()?,
                is_final: r.flag()?,
            },
            8 => CoordMsg::Abort {
                id: r.u64()?,
                reason: r.string()?,
            },
            9 => CoordMsg::Restore { id: r.u64()? },
            kind => return Err(format!("unknown coordination message kind {kind}")),
        };
        if r.at != bytes.len() {
            return Err(format!(
                "{} byte(s) after a coordination message",
                bytes.len() - r.at
            ));
        }
        Ok(msg)
    }

    /// Whether the leader sends this message (the others go to the leader).
    pub(crate) fn is_leaders(&self) -> bool {
        matches!(
            self,
            CoordMsg::Trigger { .. }
                | CoordMsg::Complete { .. }
                | CoordMsg::Abort { .. }
                | CoordMsg::Restore { .. }
        )
    }
}

/// Checked little-endian reads.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {} (needs {n} more)", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("flag byte {b} is neither 0 nor 1")),
        }
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        if len > MAX_REASON {
            return Err(format!("a reason of {len} bytes (at most {MAX_REASON})"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "a reason is not UTF-8".into())
    }
}

/// The global record of a completed checkpoint: which parts make it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalRecord {
    /// The checkpoint.
    pub id: u64,
    /// When the leader triggered it (epoch ms, the leader's clock).
    pub trigger_ms: u64,
    /// When its last part was durable (epoch ms, the leader's clock).
    pub completed_ms: u64,
    /// Processes of the run that took it.
    pub processes: u32,
    /// Subtasks per process.
    pub parallelism: u32,
    /// The processes whose stores hold its parts (`process-<p>`), ascending.
    pub parts: Vec<u32>,
}

const RECORD_MAGIC: &[u8; 8] = b"SPATEGCK";
const RECORD_VERSION: u32 = 1;

impl GlobalRecord {
    /// The record's bytes: magic, version, fields, then a CRC-32 of all
    /// that precedes it (`docs/cluster.md` §15.3).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 4 * self.parts.len());
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.trigger_ms.to_le_bytes());
        out.extend_from_slice(&self.completed_ms.to_le_bytes());
        out.extend_from_slice(&self.processes.to_le_bytes());
        out.extend_from_slice(&self.parallelism.to_le_bytes());
        out.extend_from_slice(&(self.parts.len() as u32).to_le_bytes());
        for p in &self.parts {
            out.extend_from_slice(&p.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a record; an error says what is wrong (never panics).
    pub fn decode(bytes: &[u8]) -> Result<GlobalRecord, String> {
        if bytes.len() < RECORD_MAGIC.len() + 4 + 4 {
            return Err(format!("{} bytes is too short for a record", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let mut c = [0; 4];
        c.copy_from_slice(crc);
        if crc32fast::hash(body) != u32::from_le_bytes(c) {
            return Err("checksum mismatch".into());
        }
        let mut r = Reader {
            bytes: body,
            at: RECORD_MAGIC.len(),
        };
        if &body[..RECORD_MAGIC.len()] != RECORD_MAGIC {
            return Err("not a global checkpoint record (magic)".into());
        }
        let version = r.u32()?;
        if version != RECORD_VERSION {
            return Err(format!("record version {version} is not {RECORD_VERSION}"));
        }
        let id = r.u64()?;
        let trigger_ms = r.u64()?;
        let completed_ms = r.u64()?;
        let processes = r.u32()?;
        let parallelism = r.u32()?;
        let count = r.u32()? as usize;
        if count > body.len() / 4 {
            return Err(format!("{count} parts cannot fit in {} bytes", body.len()));
        }
        let parts = (0..count).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
        if r.at != body.len() {
            return Err(format!("{} byte(s) after the record", body.len() - r.at));
        }
        if id == 0 || processes == 0 || parallelism == 0 || parts.is_empty() {
            return Err("a record with id, processes, parallelism or parts zero".into());
        }
        if !parts.windows(2).all(|w| w[0] < w[1]) || parts.iter().any(|&p| p >= processes) {
            return Err(format!(
                "parts {parts:?} are not distinct processes below {processes}"
            ));
        }
        Ok(GlobalRecord {
            id,
            trigger_ms,
            completed_ms,
            processes,
            parallelism,
            parts,
        })
    }
}

/// Where a cluster job's completed global checkpoints are recorded beyond
/// its checkpoint directory (`ClusterConfig::commit_point`): with one, a
/// checkpoint is complete only once [`commit`](Self::commit) returned `Ok`
/// after its record file is durable (that call is then the commit point),
/// and a restore takes only records up to [`latest`](Self::latest).
/// `spate-bench` implements it on etcd (a fenced compare-and-swap of the
/// job's checkpoint pointer by the elected leader, `docs/cluster.md` §6).
/// Called on threads of their own, never on a reactor; both may block.
pub trait CommitPoint: Send + Sync {
    /// Completes `record`'s checkpoint. [`CommitError::NotCommitted`]: it is
    /// not complete and never will be (the engine discards it and goes on);
    /// [`CommitError::Deposed`] and [`CommitError::Unknown`]: the run fails,
    /// keeping the record and every part, and the restart's leader learns
    /// from [`latest`](Self::latest) whether it completed.
    fn commit(&self, record: &GlobalRecord) -> Result<(), CommitError>;
    /// The newest completed global checkpoint (`None`: none yet).
    fn latest(&self) -> Result<Option<u64>, String>;
    /// Where it is, for messages (`etcd://host:port /spate/<job>/checkpoint`).
    fn describe(&self) -> String;
}

/// Why [`CommitPoint::commit`] did not complete a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitError {
    /// Refused, and nothing of it took effect (a deposed leader's move, a
    /// request that never reached the commit point).
    NotCommitted(String),
    /// Not complete because this leader no longer leads: another may have
    /// discarded the checkpoint's record and reuse its id, so nothing may be
    /// deleted; the run stops.
    Deposed(String),
    /// The outcome is not known (a request whose reply was lost may have
    /// taken effect).
    Unknown(String),
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::NotCommitted(e) | CommitError::Deposed(e) => write!(f, "{e}"),
            CommitError::Unknown(e) => write!(f, "{e} (whether it completed is unknown)"),
        }
    }
}

/// What a part reported for the pending checkpoint.
#[derive(Clone, Copy, Debug)]
struct PartReport {
    final_votes: u32,
}

struct Pending {
    id: u64,
    trigger_ms: u64,
    parts: Vec<Option<PartReport>>,
    committing: bool,
}

/// A global checkpoint whose record the driver must write, then report
/// with [`GlobalCoordinator::committed`] or
/// [`GlobalCoordinator::commit_failed`].
pub(crate) struct GlobalCommit {
    pub record: GlobalRecord,
}

/// The leader's coordinator of checkpoints across processes: a plain state
/// machine, fed with the parts' messages and the time, whose messages to
/// the parts the driver takes with [`take_out`](Self::take_out).
pub(crate) struct GlobalCoordinator {
    timeout_ms: u64,
    tolerable_failures: u32,
    processes: usize,
    parallelism: usize,
    schedule: Schedule,
    /// Per process: the first id free in its store, once its part is ready.
    ready: Vec<Option<u64>>,
    /// A part ended: no further checkpoint can complete.
    ended: bool,
    requested: bool,
    next_id: u64,
    pending: Option<Pending>,
    consecutive_failures: u32,
    /// Set when too many checkpoints failed in a row: the job fails.
    pub(crate) fatal: Option<String>,
    latest_completed: u64,
    out: Vec<(usize, CoordMsg)>,
}

impl GlobalCoordinator {
    /// A coordinator for `processes` processes of `parallelism` subtasks,
    /// whose ids start at `first_id` at the least (after every global
    /// record on disk).
    pub(crate) fn new(
        config: &CheckpointConfig,
        processes: usize,
        parallelism: usize,
        first_id: u64,
    ) -> Self {
        assert!(processes >= 1 && parallelism >= 1 && first_id >= 1);
        Self {
            timeout_ms: config.timeout_ms,
            tolerable_failures: config.tolerable_failures,
            processes,
            parallelism,
            schedule: Schedule::new(config),
            ready: vec![None; processes],
            ended: false,
            requested: false,
            next_id: first_id,
            pending: None,
            consecutive_failures: 0,
            fatal: None,
            latest_completed: 0,
            out: Vec::new(),
        }
    }

    /// The messages to send, with the process each goes to.
    pub(crate) fn take_out(&mut self) -> Vec<(usize, CoordMsg)> {
        std::mem::take(&mut self.out)
    }

    fn broadcast(&mut self, msg: CoordMsg) {
        for p in 0..self.processes {
            self.out.push((p, msg.clone()));
        }
    }

    /// A message from process `from`'s part. A message about a checkpoint
    /// that already ended is dropped; one that breaks the protocol (a
    /// leader's message, a part reported twice) is an error that fails the
    /// job, never a panic: it came over the network.
    pub(crate) fn on_message(
        &mut self,
        from: usize,
        msg: CoordMsg,
        now_ms: u64,
    ) -> Result<(), String> {
        if from >= self.processes || msg.is_leaders() {
            return Err(format!("process {from} sent the leader {msg:?}"));
        }
        match msg {
            CoordMsg::Ready { next_id } => {
                self.ready[from] = Some(next_id);
                self.next_id = self.next_id.max(next_id);
            }
            CoordMsg::Request => self.requested = true,
            CoordMsg::Ended => {
                self.ended = true;
                if self.pending.as_ref().is_some_and(|p| !p.committing) {
                    self.end_failed(
                        format!("declined: process {from} has finished"),
                        true,
                        now_ms,
                    );
                }
            }
            CoordMsg::PartDone { id, final_votes } => {
                if let Some(p) = self.pending.as_mut().filter(|p| p.id == id) {
                    if p.parts[from].is_some() || p.committing {
                        return Err(format!(
                            "process {from} reported its part of checkpoint {id} twice"
                        ));
                    }
                    p.parts[from] = Some(PartReport { final_votes });
                }
            }
            CoordMsg::PartFailed {
                id,
                declined,
                reason,
            } => {
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.id == id && !p.committing)
                {
                    self.end_failed(format!("process {from}: {reason}"), declined, now_ms);
                }
            }
            CoordMsg::Trigger { .. }
            | CoordMsg::Complete { .. }
            | CoordMsg::Abort { .. }
            | CoordMsg::Restore { .. } => {
                unreachable!("refused above")
            }
        }
        Ok(())
    }

    /// Fails the pending checkpoint (counted unless `declined`).
    fn end_failed(&mut self, reason: String, declined: bool, now_ms: u64) {
        let p = self.pending.take().expect("a pending checkpoint fails");
        assert!(!p.committing, "nothing ends a checkpoint while it commits");
        self.schedule.ended(now_ms);
        if !declined {
            self.consecutive_failures += 1;
            if self.consecutive_failures > self.tolerable_failures && self.fatal.is_none() {
                self.fatal = Some(format!(
                    "{} consecutive checkpoint failures (tolerable: {}); last: checkpoint {} {reason}",
                    self.consecutive_failures, self.tolerable_failures, p.id
                ));
            }
        }
        self.broadcast(CoordMsg::Abort { id: p.id, reason });
    }

    /// Triggers, fails a late checkpoint; returns a checkpoint whose record
    /// is to be written, if every part is durable.
    pub(crate) fn poll(&mut self, now_ms: u64) -> Option<GlobalCommit> {
        assert!(
            self.pending.as_ref().is_none_or(|p| !p.committing),
            "polled with a commit outstanding"
        );
        self.schedule.start(now_ms);
        if let Some(p) = &self.pending {
            if now_ms >= p.trigger_ms + self.timeout_ms {
                let missing: Vec<usize> = (0..self.processes)
                    .filter(|&i| p.parts[i].is_none())
                    .collect();
                let reason = format!(
                    "timed out after {} ms, waiting for processes {missing:?}",
                    self.timeout_ms
                );
                self.end_failed(reason, false, now_ms);
            }
        }
        if let Some(p) = self.pending.as_mut() {
            if p.parts.iter().all(Option::is_some) {
                p.committing = true;
                return Some(GlobalCommit {
                    record: GlobalRecord {
                        id: p.id,
                        trigger_ms: p.trigger_ms,
                        completed_ms: now_ms,
                        processes: self.processes as u32,
                        parallelism: self.parallelism as u32,
                        parts: (0..self.processes as u32).collect(),
                    },
                });
            }
            return None;
        }
        self.maybe_trigger(now_ms);
        None
    }

    fn maybe_trigger(&mut self, now_ms: u64) {
        if self.fatal.is_some() || self.ended || self.ready.iter().any(Option::is_none) {
            return;
        }
        let Some(cause) = self.schedule.due(now_ms, self.requested, 0) else {
            return;
        };
        self.requested = false;
        let id = self.next_id;
        assert!(
            id > self.latest_completed && self.ready.iter().flatten().all(|&free| id >= free),
            "checkpoint {id}: above every id a part's store holds"
        );
        self.next_id += 1;
        self.schedule.triggered(now_ms, 0);
        self.pending = Some(Pending {
            id,
            trigger_ms: now_ms,
            parts: vec![None; self.processes],
            committing: false,
        });
        self.broadcast(CoordMsg::Trigger { id, cause });
    }

    /// When [`poll`](Self::poll) has something to do without a message.
    pub(crate) fn next_deadline(&self, now_ms: u64) -> Option<u64> {
        match &self.pending {
            Some(p) => Some(p.trigger_ms + self.timeout_ms),
            None if self.requested => Some(now_ms),
            None => self.schedule.next_trigger(now_ms),
        }
    }

    /// Takes the pending checkpoint `id`, which must be committing.
    fn take_committing(&mut self, id: u64) -> Pending {
        assert!(
            self.pending
                .as_ref()
                .is_some_and(|p| p.id == id && p.committing),
            "checkpoint {id}: reported, but it is not the commit outstanding"
        );
        self.pending.take().expect("asserted above")
    }

    /// The record of `id` is durable: the checkpoint is complete.
    pub(crate) fn committed(&mut self, id: u64, now_ms: u64) {
        let p = self.take_committing(id);
        let votes: u64 = p
            .parts
            .iter()
            .flatten()
            .map(|r| u64::from(r.final_votes))
            .sum();
        let is_final = votes == (self.processes * self.parallelism) as u64;
        assert!(
            id > self.latest_completed,
            "completed ids strictly increase"
        );
        self.latest_completed = id;
        self.consecutive_failures = 0;
        self.schedule.ended(now_ms);
        self.broadcast(CoordMsg::Complete { id, is_final });
    }

    /// The record of `id` could not be written: the checkpoint fails.
    pub(crate) fn commit_failed(&mut self, id: u64, reason: String, now_ms: u64) {
        let mut p = self.take_committing(id);
        p.committing = false;
        self.pending = Some(p);
        self.end_failed(format!("the global record: {reason}"), false, now_ms);
    }
}

/// The global records on disk (`<dir>/cluster/`): blocking file I/O, for a
/// thread of its own.
pub mod files {
    use super::GlobalRecord;
    use std::io::Write;
    use std::path::{Path, PathBuf};

    /// The directory of a cluster job's global records under its
    /// checkpoint directory.
    pub fn dir(root: &Path) -> PathBuf {
        root.join("cluster")
    }

    /// The job's checkpoint directory of a process whose store is
    /// `part_dir` (the inverse of [`part_dir`]).
    pub fn root_of(part_dir: &Path) -> PathBuf {
        part_dir.parent().unwrap_or(part_dir).to_path_buf()
    }

    /// The store directory of process `process` under a cluster job's
    /// checkpoint directory.
    pub fn part_dir(root: &Path, process: u32) -> PathBuf {
        root.join(format!("process-{process}"))
    }

    /// The file (or object) name of record `id`.
    pub(crate) fn name(id: u64) -> String {
        format!("checkpoint-{id:020}")
    }

    /// The id a record's file (or object) name holds, if it is one.
    pub(crate) fn parse_name(name: &str) -> Option<u64> {
        name.strip_prefix("checkpoint-")
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok())
    }

    /// The ids of the global records present, ascending (files that are
    /// not records, and temporary files, are skipped).
    pub fn ids(root: &Path) -> std::io::Result<Vec<u64>> {
        let dir = dir(root);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let Some(id) = name.to_str().and_then(parse_name) else {
                continue;
            };
            ids.push(id);
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads global record `id`.
    pub fn read(root: &Path, id: u64) -> Result<GlobalRecord, String> {
        let path = dir(root).join(name(id));
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let record =
            GlobalRecord::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if record.id != id {
            return Err(format!("{} holds checkpoint {}", path.display(), record.id));
        }
        Ok(record)
    }

    fn sync_dir(dir: &Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    /// Removes record `id` (its checkpoint did not complete at the commit
    /// point after all).
    pub fn remove(root: &Path, id: u64) -> std::io::Result<()> {
        std::fs::remove_file(dir(root).join(name(id)))?;
        sync_dir(&dir(root))
    }

    /// Writes `record` durably: a temporary file, synced, renamed into
    /// place (the commit point, unless the job has a
    /// [`CommitPoint`](super::CommitPoint)), the directory synced.
    pub fn commit(root: &Path, record: &GlobalRecord) -> std::io::Result<()> {
        let dir = dir(root);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", name(record.id)));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&record.encode())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(name(record.id)))?;
        sync_dir(&dir)
    }

    /// Removes the records older than the newest `retained` (once the
    /// newest is complete: never the one a commit point names).
    pub fn prune(root: &Path, retained: usize) -> std::io::Result<()> {
        let ids = ids(root)?;
        let keep = retained.max(1);
        if ids.len() > keep {
            for &old in &ids[..ids.len() - keep] {
                let _ = std::fs::remove_file(dir(root).join(name(old)));
            }
        }
        Ok(())
    }

    /// Removes the records newer than `restored` (a restore that fell back
    /// to an older checkpoint starts a branch: no later restore may return
    /// to them), and temporary files of interrupted commits.
    pub fn discard_after(root: &Path, restored: Option<u64>) -> std::io::Result<Vec<u64>> {
        let dir = dir(root);
        let mut discarded = Vec::new();
        for id in ids(root)? {
            if restored.is_some_and(|r| id > r) {
                std::fs::remove_file(dir.join(name(id)))?;
                discarded.push(id);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.ends_with(".tmp"))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if !discarded.is_empty() {
            sync_dir(&dir)?;
        }
        Ok(discarded)
    }
}

/// Where a cluster job's global records live: in its checkpoint directory
/// ([`files`]) or, with a remote tier, in the object store under
/// `<url>/cluster/` (one create-only object per record, named as the
/// files are). Blocking: for a thread of its own or the thread that starts
/// the job, never a reactor (remote requests wait for the storage crate's
/// remote runtime).
#[derive(Clone)]
pub enum Records {
    /// `files` under the job's checkpoint directory.
    Local(PathBuf),
    /// Objects under a remote prefix.
    Remote {
        /// The prefix's URL, for messages.
        url: String,
        /// The object store, rooted at the prefix.
        backend: Arc<dyn spate_storage::remote::ObjectBackend>,
    },
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Records {
    /// The records of the cluster job whose checkpoint directory is `dir`
    /// and whose remote tier, if it has one, is `remote` (connects to it).
    pub fn of_job(dir: &std::path::Path, remote: Option<&str>) -> Result<Records, String> {
        let Some(url) = remote else {
            return Ok(Records::Local(dir.to_path_buf()));
        };
        let url = spate_storage::remote::sub_url(url, "cluster");
        let rt = spate_storage::remote::RemoteRuntime::global()?;
        let owned = url.clone();
        let backend = rt
            .block_on(async move { spate_storage::remote::CloudBackend::from_url(&owned) })
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(Records::Remote {
            url: backend.url().to_string(),
            backend: Arc::new(backend),
        })
    }

    /// Where the records are, for messages.
    pub fn describe(&self) -> String {
        match self {
            Records::Local(root) => files::dir(root).display().to_string(),
            Records::Remote { url, .. } => url.clone(),
        }
    }

    fn remote<T, F>(
        backend: &Arc<dyn spate_storage::remote::ObjectBackend>,
        work: impl FnOnce(Arc<dyn spate_storage::remote::ObjectBackend>) -> F,
    ) -> Result<T, String>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, String>> + Send + 'static,
    {
        let rt = spate_storage::remote::RemoteRuntime::global()?;
        rt.block_on(work(backend.clone()))
    }

    /// The ids of the records present, ascending.
    pub fn ids(&self) -> Result<Vec<u64>, String> {
        match self {
            Records::Local(root) => files::ids(root).map_err(|e| e.to_string()),
            Records::Remote { backend, .. } => Self::remote(backend, |b| async move {
                let mut ids: Vec<u64> = b
                    .list("")
                    .await
                    .map_err(|e| e.to_string())?
                    .iter()
                    .filter_map(|o| files::parse_name(&o.key))
                    .collect();
                ids.sort_unstable();
                Ok(ids)
            }),
        }
    }

    /// Reads record `id`.
    pub fn read(&self, id: u64) -> Result<GlobalRecord, String> {
        match self {
            Records::Local(root) => files::read(root, id),
            Records::Remote { url, backend } => {
                let bytes = Self::remote(backend, move |b| async move {
                    b.get(&files::name(id), None)
                        .await
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| format!("{url}: {e}"))?;
                let record = GlobalRecord::decode(&bytes)
                    .map_err(|e| format!("{url}: {}: {e}", files::name(id)))?;
                if record.id != id {
                    return Err(format!(
                        "{url}: {} holds checkpoint {}",
                        files::name(id),
                        record.id
                    ));
                }
                Ok(record)
            }
        }
    }

    /// Writes `record` durably: the commit point unless the job has a
    /// [`CommitPoint`]. Remotely a create-only put: an object already there
    /// is an error (ids never repeat), and a put whose reply was lost is
    /// read back.
    pub(crate) fn commit(&self, record: &GlobalRecord) -> Result<(), String> {
        match self {
            Records::Local(root) => files::commit(root, record).map_err(|e| e.to_string()),
            Records::Remote { backend, .. } => {
                let (key, bytes) = (files::name(record.id), record.encode());
                Self::remote(backend, move |b| async move {
                    use spate_storage::remote::ObjectError;
                    let data = spate_storage::remote::Bytes::from(bytes.clone());
                    match b.put(&key, data, true).await {
                        Ok(()) => Ok(()),
                        Err(e @ ObjectError::AlreadyExists { .. }) => Err(e.to_string()),
                        Err(first) => match b.get(&key, None).await {
                            Ok(found) if found[..] == bytes[..] => Ok(()),
                            _ => Err(first.to_string()),
                        },
                    }
                })
            }
        }
    }

    /// Removes record `id` (its checkpoint did not complete at the commit
    /// point after all).
    pub(crate) fn remove(&self, id: u64) -> Result<(), String> {
        match self {
            Records::Local(root) => files::remove(root, id).map_err(|e| e.to_string()),
            Records::Remote { backend, .. } => Self::remote(backend, move |b| async move {
                b.delete(&files::name(id)).await.map_err(|e| e.to_string())
            }),
        }
    }

    /// Removes the records older than the newest `retained`.
    pub(crate) fn prune(&self, retained: usize) -> Result<(), String> {
        match self {
            Records::Local(root) => files::prune(root, retained).map_err(|e| e.to_string()),
            Records::Remote { .. } => {
                let ids = self.ids()?;
                let keep = retained.max(1);
                for &old in ids.iter().rev().skip(keep) {
                    self.remove(old)?;
                }
                Ok(())
            }
        }
    }

    /// Removes the records newer than `restored` (see
    /// [`files::discard_after`]).
    pub(crate) fn discard_after(&self, restored: Option<u64>) -> Result<Vec<u64>, String> {
        match self {
            Records::Local(root) => files::discard_after(root, restored).map_err(|e| e.to_string()),
            Records::Remote { .. } => {
                let newer: Vec<u64> = self
                    .ids()?
                    .into_iter()
                    .filter(|&id| restored.is_some_and(|r| id > r))
                    .collect();
                for &id in &newer {
                    self.remove(id)?;
                }
                Ok(newer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_bytes_are_errors() {
        let all = [
            CoordMsg::Ready { next_id: 7 },
            CoordMsg::Request,
            CoordMsg::PartDone {
                id: 3,
                final_votes: 1,
            },
            CoordMsg::PartFailed {
                id: 3,
                declined: true,
                reason: "x".into(),
            },
            CoordMsg::Ended,
            CoordMsg::Trigger {
                id: 4,
                cause: TriggerCause::Manual,
            },
            CoordMsg::Complete {
                id: 4,
                is_final: true,
            },
            CoordMsg::Restore { id: 6 },
            CoordMsg::Abort {
                id: 5,
                reason: "timed out".into(),
            },
        ];
        for msg in all {
            let mut bytes = Vec::new();
            msg.encode(&mut bytes);
            assert_eq!(CoordMsg::decode(&bytes).unwrap(), msg);
            for len in 0..bytes.len() {
                assert!(
                    CoordMsg::decode(&bytes[..len]).is_err(),
                    "{msg:?} cut at {len}"
                );
            }
            bytes.push(0);
            assert!(CoordMsg::decode(&bytes).is_err());
        }
        assert!(CoordMsg::decode(&[9]).is_err());
    }

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let record = GlobalRecord {
            id: 12,
            trigger_ms: 1,
            completed_ms: 2,
            processes: 3,
            parallelism: 2,
            parts: vec![0, 1, 2],
        };
        let bytes = record.encode();
        assert_eq!(GlobalRecord::decode(&bytes).unwrap(), record);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(GlobalRecord::decode(&bad).is_err(), "flip at {i}");
            assert!(GlobalRecord::decode(&bytes[..i]).is_err(), "cut at {i}");
        }
    }

    fn config() -> CheckpointConfig {
        CheckpointConfig {
            timeout_ms: 100,
            ..CheckpointConfig::new("unused", 10)
        }
    }

    fn ready_all(g: &mut GlobalCoordinator, n: usize) {
        for p in 0..n {
            g.on_message(
                p,
                CoordMsg::Ready {
                    next_id: 5 + p as u64,
                },
                0,
            )
            .unwrap();
        }
        // The schedule starts at the first poll: the interval runs from 0.
        assert!(g.poll(0).is_none());
    }

    #[test]
    fn a_checkpoint_commits_once_every_part_is_durable_and_is_final_only_with_every_vote() {
        let mut g = GlobalCoordinator::new(&config(), 2, 2, 1);
        assert!(g.poll(0).is_none(), "nothing before every part is ready");
        ready_all(&mut g, 2);
        assert!(g.poll(5).is_none());
        assert!(g.take_out().is_empty(), "not due before the interval");
        assert!(g.poll(10).is_none());
        let out = g.take_out();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, m)| *m
            == CoordMsg::Trigger {
                id: 6,
                cause: TriggerCause::Interval
            }));
        let done = |votes| CoordMsg::PartDone {
            id: 6,
            final_votes: votes,
        };
        g.on_message(0, done(2), 11).unwrap();
        assert!(g.poll(12).is_none(), "one part missing");
        g.on_message(1, done(1), 13).unwrap();
        assert!(
            g.on_message(0, done(2), 13).is_err(),
            "a part reported twice breaks the protocol: an error, not a panic"
        );
        assert!(g
            .on_message(
                1,
                CoordMsg::Abort {
                    id: 6,
                    reason: String::new()
                },
                13
            )
            .is_err());
        let commit = g.poll(14).expect("every part durable");
        assert_eq!(commit.record.id, 6);
        assert!(
            g.take_out().is_empty(),
            "nothing is announced before the record is durable"
        );
        g.committed(6, 15);
        let out = g.take_out();
        assert!(out.iter().all(|(_, m)| *m
            == CoordMsg::Complete {
                id: 6,
                is_final: false
            }));
        assert_eq!(g.latest_completed, 6);
    }

    #[test]
    fn a_failed_or_late_part_aborts_everywhere_and_fails_the_job_past_the_tolerance() {
        let mut g = GlobalCoordinator::new(&config(), 2, 1, 1);
        ready_all(&mut g, 2);
        g.poll(10);
        g.take_out();
        g.on_message(
            1,
            CoordMsg::PartFailed {
                id: 6,
                declined: false,
                reason: "disk full".into(),
            },
            11,
        )
        .unwrap();
        let out = g.take_out();
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0].1, CoordMsg::Abort { id: 6, reason } if reason.contains("disk full"))
        );
        assert!(g.fatal.is_some(), "no failure is tolerated by default");

        let mut g = GlobalCoordinator::new(
            &CheckpointConfig {
                tolerable_failures: 1,
                ..config()
            },
            2,
            1,
            1,
        );
        ready_all(&mut g, 2);
        g.poll(10);
        g.take_out();
        g.poll(109);
        assert!(g.take_out().is_empty(), "not late yet");
        g.poll(110);
        let out = g.take_out();
        assert!(
            matches!(&out[0].1, CoordMsg::Abort { id: 6, reason } if reason.contains("timed out"))
        );
        assert!(g.fatal.is_none(), "one failure is tolerated");
        // A late report of the aborted checkpoint is dropped.
        g.on_message(
            0,
            CoordMsg::PartDone {
                id: 6,
                final_votes: 0,
            },
            111,
        )
        .unwrap();
        assert!(g.poll(111).is_none());
    }
}

#[cfg(test)]
mod simulation;
