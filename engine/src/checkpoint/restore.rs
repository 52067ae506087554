//! Reading a checkpoint back: which one, and its blocks.
//!
//! Opened once per job start on the caller's thread (the store reader maps
//! segments and is `Send + Sync`); every subtask's operators, sources and
//! receivers take their share from it while the graph is built.

use super::metadata::{CheckpointMetadata, InFlightBlock, SourceOffset};

/// Where a restored source starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SourceRestore {
    /// The subtask's single offset.
    Offset(u64),
    /// Every split's position (the source takes those it owns).
    Splits(Vec<(u32, u64)>),
}
use super::subtask::ChainLink;
use super::{CheckpointConfig, RestoreFrom};
use crate::JobError;
use spate_storage::{BlockHandle, BlockRef, StoreReader};
use std::collections::HashMap;

pub(crate) struct RestoreState {
    pub metadata: CheckpointMetadata,
    reader: StoreReader,
    handles: Vec<BlockHandle>,
    state: HashMap<(String, String, u32), usize>,
    /// Problems met while choosing the checkpoint (a damaged latest one).
    pub warnings: Vec<String>,
}

impl RestoreState {
    /// The checkpoint of the store directory to restore per `config.restore`, if any.
    pub(crate) fn load_dir(config: &CheckpointConfig) -> Result<Option<Self>, JobError> {
        if config.restore == RestoreFrom::Nothing || !config.dir.exists() {
            return Ok(None);
        }
        let reader = StoreReader::open(&config.dir)
            .map_err(|e| JobError::Restore(format!("cannot open {}: {e}", config.dir.display())))?;
        Self::load(reader, config, None)
    }

    /// The checkpoint of `reader` to restore per `config.restore`, if any.
    pub(crate) fn load(
        reader: StoreReader,
        config: &CheckpointConfig,
        fingerprint: Option<u64>,
    ) -> Result<Option<Self>, JobError> {
        if config.restore == RestoreFrom::Nothing {
            return Ok(None);
        }
        let candidates: Vec<u64> = match &config.restore {
            RestoreFrom::Checkpoint(id) => vec![*id],
            _ => reader.checkpoints().iter().rev().map(|r| r.id).collect(),
        };
        let mut warnings = Vec::new();
        if let Some(damage) = reader.manifest_damage() {
            warnings.push(format!("manifest damage ignored: {damage:?}"));
        }
        for id in candidates {
            let record = match reader.checkpoint(id) {
                Ok(r) => r.clone(),
                Err(e) => {
                    warnings.push(format!("checkpoint {id}: {e}"));
                    continue;
                }
            };
            let metadata = match CheckpointMetadata::decode(&record.metadata) {
                Ok(m) => m,
                Err(e) => {
                    warnings.push(format!("checkpoint {id}: {e}"));
                    continue;
                }
            };
            match reader.verify_checkpoint(id) {
                Ok(problems) if problems.is_empty() => {}
                Ok(problems) => {
                    warnings.push(format!(
                        "checkpoint {id} is damaged ({} problems, first: {}); trying an older one",
                        problems.len(),
                        problems[0]
                    ));
                    continue;
                }
                Err(e) => {
                    warnings.push(format!("checkpoint {id}: {e}"));
                    continue;
                }
            }
            if let Some(fp) = fingerprint {
                if metadata.fingerprint != fp {
                    return Err(JobError::Restore(format!(
                        "checkpoint {id} in {} was taken by an incompatible job (fingerprint {:016x}, this job {fp:016x}): start fresh or use another state directory",
                        config.dir.display(),
                        metadata.fingerprint
                    )));
                }
            }
            let state = metadata
                .state
                .iter()
                .enumerate()
                .map(|(i, b)| ((b.operator.clone(), b.table.clone(), b.key_group), i))
                .collect();
            return Ok(Some(Self {
                metadata,
                reader,
                handles: record.handles.clone(),
                state,
                warnings,
            }));
        }
        if let RestoreFrom::Checkpoint(id) = config.restore {
            return Err(JobError::Restore(format!(
                "checkpoint {id} cannot be restored: {}",
                warnings.join("; ")
            )));
        }
        if !warnings.is_empty() && !reader.checkpoints().is_empty() {
            return Err(JobError::Restore(format!(
                "no checkpoint in {} can be restored: {}",
                config.dir.display(),
                warnings.join("; ")
            )));
        }
        Ok(None)
    }

    fn block(&self, handle_index: u32) -> Result<BlockRef, JobError> {
        let handle = self.handles.get(handle_index as usize).ok_or_else(|| {
            JobError::Restore(format!("handle index {handle_index} out of range"))
        })?;
        self.reader
            .block(handle)
            .map_err(|e| JobError::Restore(format!("checkpoint {}: {e}", self.metadata.id)))
    }

    /// The chain of one table's key group, if it had entries: every block
    /// (delta or not) in order, and the chain as durable links.
    #[allow(clippy::type_complexity)]
    pub(crate) fn state_chain(
        &self,
        operator: &str,
        table: &str,
        key_group: u32,
    ) -> Result<Option<(Vec<(bool, BlockRef)>, Vec<ChainLink>, u64)>, JobError> {
        let Some(&i) = self
            .state
            .get(&(operator.to_string(), table.to_string(), key_group))
        else {
            return Ok(None);
        };
        let mut blocks = Vec::new();
        let mut links = Vec::new();
        for b in &self.metadata.state[i].chain {
            blocks.push((b.delta, self.block(b.handle)?));
            let handle = *self.handles.get(b.handle as usize).ok_or_else(|| {
                JobError::Restore(format!("handle index {} out of range", b.handle))
            })?;
            links.push(ChainLink {
                handle,
                delta: b.delta,
                checkpoint: b.checkpoint,
                entries: b.entries,
                bytes: b.bytes,
            });
        }
        Ok(Some((blocks, links, self.metadata.state[i].entries)))
    }

    /// Where a source restarts on subtask `subtask` of `parallelism`:
    /// per-split positions for a split source (any parallelism), else the
    /// subtask's offset (same parallelism only).
    pub(crate) fn source_restore(
        &self,
        source: &str,
        subtask: usize,
        parallelism: usize,
    ) -> Result<Option<SourceRestore>, JobError> {
        let entries: Vec<&SourceOffset> = self
            .metadata
            .sources
            .iter()
            .filter(|s| s.source == source)
            .collect();
        if entries.is_empty() {
            return Ok(None);
        }
        if entries.iter().all(|s| s.split) {
            return Ok(Some(SourceRestore::Splits(
                entries.iter().map(|s| (s.subtask, s.offset)).collect(),
            )));
        }
        if self.metadata.parallelism as usize != parallelism {
            return Err(JobError::Restore(format!(
                "checkpoint {} was taken with {} subtasks and source `{source}` has one offset per subtask (it has no splits): it cannot restore on {parallelism}",
                self.metadata.id, self.metadata.parallelism
            )));
        }
        Ok(entries
            .iter()
            .find(|s| s.subtask as usize == subtask)
            .map(|s| SourceRestore::Offset(s.offset)))
    }

    /// Every in-flight block of one operator input, with its bytes.
    pub(crate) fn in_flight(
        &self,
        operator: &str,
        input: u32,
    ) -> Result<Vec<(InFlightBlock, BlockRef)>, JobError> {
        self.metadata
            .in_flight
            .iter()
            .filter(|b| b.operator == operator && b.input == input)
            .map(|b| Ok((b.clone(), self.block(b.handle)?)))
            .collect()
    }
}
