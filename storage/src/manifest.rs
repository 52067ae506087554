//! The manifest: an append-only, CRC-framed log of [`ManifestRecord`]s, and its
//! replay into the set of completed checkpoints.
//!
//! Each commit writes one batch of records (whole pages, at a page-aligned offset
//! past everything written before) and `fdatasync`s: that sync is the commit point.
//! The log lives in `MANIFEST-<generation>`; a new generation is written under a
//! temporary name, synced, renamed and the directory synced (that dir sync is then
//! the commit point). A new generation is written when a store opens (dropping a
//! damaged tail and discarded records), when the log outgrows its size limit, and
//! after any failed append (whose on-disk outcome is unknown).
//!
//! This module knows checkpoints only as ids with opaque metadata and handles.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::format::{self, BlockHandle, CheckpointRecord, FormatError, ManifestRecord, SegmentId};
use crate::io::{Io, IoFile};

/// The state a manifest log describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestState {
    /// Completed checkpoints not discarded, in increasing id order.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Highest deleted segment id per writer (so sequence numbers are never reused).
    pub deleted_high: BTreeMap<u16, SegmentId>,
}

impl ManifestState {
    /// Applies one record. A semantically impossible record (a non-increasing
    /// checkpoint id) is an error, handled like a corrupt one.
    pub fn apply(&mut self, rec: &ManifestRecord) -> Result<(), FormatError> {
        match rec {
            ManifestRecord::CheckpointCompleted(c) => {
                if let Some(last) = self.checkpoints.last() {
                    if c.id <= last.id {
                        return Err(FormatError::InvalidField("checkpoint id not increasing"));
                    }
                }
                self.checkpoints.push(c.clone());
            }
            ManifestRecord::CheckpointDiscarded { id } => self.checkpoints.retain(|c| c.id != *id),
            ManifestRecord::SegmentsDeleted { segments } => {
                for s in segments {
                    let e = self.deleted_high.entry(s.writer_id()).or_insert(*s);
                    *e = (*e).max(*s);
                }
            }
            ManifestRecord::HandlesRelocated { moves } => {
                let map: HashMap<BlockHandle, BlockHandle> = moves.iter().copied().collect();
                self.relocate(&map);
            }
        }
        Ok(())
    }

    /// Every segment a retained checkpoint references: what retention and garbage
    /// collection must keep (at open, at commit, and from outside, [`crate::gc`]).
    pub fn referenced_segments(&self) -> HashSet<SegmentId> {
        self.checkpoints
            .iter()
            .flat_map(|c| c.handles.iter().map(|h| h.segment))
            .collect()
    }

    /// Rewrites every handle found in `map`.
    pub fn relocate(&mut self, map: &HashMap<BlockHandle, BlockHandle>) {
        for c in &mut self.checkpoints {
            for h in &mut c.handles {
                if let Some(n) = map.get(h) {
                    *h = *n;
                }
            }
        }
    }

    /// Records that reproduce this state in a fresh log.
    pub fn snapshot_records(&self) -> Vec<ManifestRecord> {
        let mut out = Vec::new();
        if !self.deleted_high.is_empty() {
            out.push(ManifestRecord::SegmentsDeleted {
                segments: self.deleted_high.values().copied().collect(),
            });
        }
        out.extend(
            self.checkpoints
                .iter()
                .cloned()
                .map(ManifestRecord::CheckpointCompleted),
        );
        out
    }
}

/// A warning about the manifest found while replaying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDamage {
    /// Manifest file.
    pub file: String,
    /// Offset where decoding stopped.
    pub offset: u64,
    /// Why.
    pub error: FormatError,
    /// Bytes ignored from `offset` to the end of the file.
    pub dropped_bytes: u64,
    /// Whether valid-looking records follow the damage (mid-log corruption, not a torn tail).
    pub later_valid_records: bool,
}

/// Decodes a manifest file and replays its valid prefix.
pub fn replay(file: &str, bytes: &[u8]) -> (ManifestState, Option<ManifestDamage>) {
    let replayed = replay_with_history(file, bytes);
    (replayed.state, replayed.damage)
}

/// What [`replay_with_history`] finds in a manifest file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// The state the valid prefix describes.
    pub state: ManifestState,
    /// Checkpoints the valid prefix records as completed and then discarded, in
    /// log order (handles as they were when discarded). A generation keeps them
    /// until the manifest is rewritten (at open, past `manifest_max_bytes`, after a
    /// failed append), which keeps only the retained checkpoints.
    pub discarded: Vec<CheckpointRecord>,
    /// Damage that ended the valid prefix.
    pub damage: Option<ManifestDamage>,
}

/// [`replay`], also keeping the records of the checkpoints the log discarded (for
/// inspection tools; the store itself forgets them).
pub fn replay_with_history(file: &str, bytes: &[u8]) -> Replayed {
    let scan = format::decode_manifest(bytes);
    let mut discarded = Vec::new();
    let mut state = ManifestState::default();
    let mut damage = scan.tail_error.map(|(offset, error)| ManifestDamage {
        file: file.to_owned(),
        offset,
        error,
        dropped_bytes: bytes.len() as u64 - offset,
        later_valid_records: scan.later_valid_records,
    });
    for (rec, &offset) in scan.records.iter().zip(&scan.record_offsets) {
        let leaving = match rec {
            ManifestRecord::CheckpointDiscarded { id } => {
                state.checkpoints.iter().find(|c| c.id == *id).cloned()
            }
            _ => None,
        };
        if let Err(error) = state.apply(rec) {
            // Stop at the first impossible record, as for a corrupt one.
            damage = Some(ManifestDamage {
                file: file.to_owned(),
                offset,
                error,
                dropped_bytes: bytes.len() as u64 - offset,
                later_valid_records: true,
            });
            break;
        }
        discarded.extend(leaving);
    }
    Replayed {
        state,
        discarded,
        damage,
    }
}

/// The open, writable manifest log.
pub(crate) struct ManifestLog<I: Io> {
    io: I,
    generation: u64,
    file: Option<I::File>,
    end: u64,
    /// Length of the generation as rewritten (the retained state alone).
    rewritten_len: u64,
    next_seq: u64,
    poisoned: bool,
}

impl<I: Io> ManifestLog<I> {
    /// A log handle that has no file yet: the first operation must be [`Self::rewrite`].
    pub fn unopened(io: I, previous_generation: u64) -> Self {
        ManifestLog {
            io,
            generation: previous_generation,
            file: None,
            end: 0,
            rewritten_len: 0,
            next_seq: 0,
            poisoned: true,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn file_name(&self) -> String {
        format::manifest_file_name(self.generation)
    }

    /// Whether the next commit must write a new generation: past
    /// `max_bytes` and at least twice the retained state, so that rewrites
    /// stay amortised when the retained records alone are larger than
    /// `max_bytes` (large checkpoints' metadata): otherwise every commit
    /// would rewrite them all.
    pub fn needs_rewrite(&self, max_bytes: u64) -> bool {
        self.poisoned || self.file.is_none() || self.end >= max_bytes.max(2 * self.rewritten_len)
    }

    /// Appends one batch and syncs it: the commit point of its records.
    pub async fn append(&mut self, records: &[ManifestRecord]) -> std::io::Result<()> {
        let res = self.append_inner(records).await;
        if res.is_err() {
            self.poisoned = true;
        }
        res
    }

    async fn append_inner(&mut self, records: &[ManifestRecord]) -> std::io::Result<()> {
        let file = self.file.as_ref().expect("append to an open manifest");
        let bytes = format::encode_batch(records, self.next_seq);
        let mut buf = self.io.alloc_buffer(bytes.len());
        buf.as_mut().copy_from_slice(&bytes);
        let n = file.write_at(buf, self.end).await?;
        if n != bytes.len() {
            return Err(std::io::Error::other(format!(
                "short manifest write: {n} of {} bytes",
                bytes.len()
            )));
        }
        file.sync_data().await?;
        self.end += bytes.len() as u64;
        self.next_seq += records.len() as u64;
        Ok(())
    }

    /// Writes a new generation holding exactly `records`, makes it the manifest
    /// (rename + directory sync: the commit point) and removes the old generation.
    pub async fn rewrite(&mut self, records: &[ManifestRecord]) -> std::io::Result<()> {
        let res = self.rewrite_inner(records).await;
        if res.is_err() {
            self.poisoned = true;
        }
        res
    }

    async fn rewrite_inner(&mut self, records: &[ManifestRecord]) -> std::io::Result<()> {
        let new_gen = self.generation + 1;
        let tmp = format::manifest_tmp_name(new_gen);
        // A previous failed attempt may have left the temporary behind.
        let _ = self.io.remove(&tmp).await;
        let file = self.io.create(&tmp).await?;
        let res = async {
            if !records.is_empty() {
                let bytes = format::encode_batch(records, 0);
                let mut buf = self.io.alloc_buffer(bytes.len());
                buf.as_mut().copy_from_slice(&bytes);
                let n = file.write_at(buf, 0).await?;
                if n != bytes.len() {
                    return Err(std::io::Error::other(format!(
                        "short manifest write: {n} of {} bytes",
                        bytes.len()
                    )));
                }
                file.sync_data().await?;
                return Ok(bytes.len() as u64);
            }
            file.sync_data().await?;
            Ok(0)
        }
        .await;
        let len = match res {
            Ok(len) => len,
            Err(e) => {
                let _ = self.io.remove(&tmp).await;
                return Err(e);
            }
        };
        file.rename(&format::manifest_file_name(new_gen)).await?;
        self.io.sync_dir().await?;
        // Committed. The old generation is garbage from here on.
        let old_name = format::manifest_file_name(self.generation);
        if let Some(old) = self.file.take() {
            let _ = old.close().await;
        }
        let _ = self.io.remove(&old_name).await;
        self.generation = new_gen;
        self.file = Some(file);
        self.end = len;
        self.rewritten_len = len;
        self.next_seq = records.len() as u64;
        self.poisoned = false;
        Ok(())
    }
}
