//! Reading a checkpoint back: which one, and its blocks.
//!
//! Opened once per job start on the caller's thread (the store reader maps
//! segments and is `Send + Sync`); every subtask's operators, sources and
//! receivers take their share from it while the graph is built.
//!
//! Restored from the remote tier onto an empty directory, the blocks are still
//! arriving ([`RemoteFill`]): the checkpoint is not verified up front (each
//! block is verified as it arrives and again when read); every block but the
//! keyed state's is asked for first and waited for where the graph reads it;
//! a keyed state chain is handed out as [`RestoredBlock`]s, which the state
//! tables resolve when they load the key group (waiting, if its blocks have
//! not arrived, for a read of them ahead of the rest).

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
use crate::schema::BlockSchema;
use crate::{JobError, RestoreError};
use spate_storage::remote::RemoteFill;
use spate_storage::{BlockHandle, BlockRef, StoreReader};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// A block of a restored keyed state chain: mapped and verified, or still
/// arriving from the remote tier.
#[derive(Debug)]
pub(crate) enum RestoredBlock {
    /// Mapped and verified.
    Ready(BlockRef),
    /// Arriving: resolved by waiting for the fill.
    Arriving {
        handle: BlockHandle,
        reader: Arc<StoreReader>,
        fill: RemoteFill,
    },
}

impl RestoredBlock {
    /// The block's handle.
    pub(crate) fn handle(&self) -> BlockHandle {
        match self {
            RestoredBlock::Ready(b) => b.handle(),
            RestoredBlock::Arriving { handle, .. } => *handle,
        }
    }

    /// Whether [`resolve`](Self::resolve) returns without waiting.
    pub(crate) fn is_ready(&self) -> bool {
        match self {
            RestoredBlock::Ready(_) => true,
            RestoredBlock::Arriving { handle, fill, .. } => fill.is_written(handle),
        }
    }

    /// The verified block, once it has arrived (blocking the thread until then).
    pub(crate) fn resolve(self) -> Result<BlockRef, String> {
        match self {
            RestoredBlock::Ready(b) => Ok(b),
            RestoredBlock::Arriving {
                handle,
                reader,
                fill,
            } => {
                fill.wait(&handle).map_err(|e| e.to_string())?;
                reader.block(&handle).map_err(|e| e.to_string())
            }
        }
    }
}

pub(crate) struct RestoreState {
    pub metadata: CheckpointMetadata,
    /// The stores the blocks are in: one, or in a cluster job one per part.
    readers: Vec<Arc<StoreReader>>,
    /// Per handle, the index of its store in `readers` (empty: all in the
    /// first).
    handle_reader: Vec<u16>,
    /// The store whose blocks this process's later checkpoints may refer
    /// to again (its own): a restored chain in another store gets no
    /// committed links, so the next checkpoint writes it afresh.
    own_reader: Option<u16>,
    /// The remote fill the blocks are arriving by, if restored onto an empty
    /// directory from the remote tier.
    fill: Option<RemoteFill>,
    handles: Vec<BlockHandle>,
    state: HashMap<(String, String, u32), usize>,
    /// The schemas recorded for each (operator, state), by index.
    state_schemas: HashMap<(String, String), BTreeSet<u32>>,
    /// Problems met while choosing the checkpoint (a damaged latest one).
    pub warnings: Vec<String>,
}

impl RestoreState {
    /// The checkpoint of the store directory to restore per `config.restore`, if any;
    /// with `allowed`, only one of those ids (those committed remotely); with
    /// `fill`, the directory's blocks are still arriving by it.
    pub(crate) fn load_dir(
        config: &CheckpointConfig,
        allowed: Option<&BTreeSet<u64>>,
        fill: Option<RemoteFill>,
    ) -> Result<Option<Self>, JobError> {
        if config.restore == RestoreFrom::Nothing || !config.dir.exists() {
            return Ok(None);
        }
        if fill.is_none() && spate_storage::remote::fill::is_interrupted(&config.dir) {
            return Err(RestoreError::InterruptedRemoteRestore {
                dir: config.dir.clone(),
            }
            .into());
        }
        let reader = StoreReader::open(&config.dir).map_err(|source| RestoreError::Open {
            dir: config.dir.clone(),
            source,
        })?;
        if let Some(segments) = reader.segments_without_manifest() {
            return Err(RestoreError::ManifestMissing {
                dir: config.dir.clone(),
                segments,
            }
            .into());
        }
        let mut restored = Self::load(reader, config, None, allowed, fill.is_some())?;
        if let Some(r) = &mut restored {
            r.fill = fill;
            r.prioritise_unkeyed();
        }
        Ok(restored)
    }

    /// The checkpoint of `reader` to restore per `config.restore`, if any;
    /// with `allowed`, only one of those ids.
    pub(crate) fn load(
        reader: StoreReader,
        config: &CheckpointConfig,
        fingerprint: Option<u64>,
        allowed: Option<&BTreeSet<u64>>,
        arriving: bool,
    ) -> Result<Option<Self>, JobError> {
        let newest_first = reader
            .checkpoints()
            .iter()
            .rev()
            .map(|r| r.id)
            .filter(|id| allowed.is_none_or(|a| a.contains(id)));
        let Some(candidates) = candidates(&config.restore, newest_first) else {
            return Ok(None);
        };
        let mut warnings = Vec::new();
        if let Some(d) = reader.manifest_damage() {
            warnings.push(format!(
                "the manifest {} in {} is damaged at offset {} ({}): the {} byte(s) from there are ignored{}, and checkpoints recorded in them are lost",
                d.file,
                config.dir.display(),
                d.offset,
                d.error,
                d.dropped_bytes,
                if d.later_valid_records { " although valid records follow (damage in the middle of the log)" } else { "" }
            ));
        }
        for &id in &candidates {
            let Some(restored) =
                Self::try_one(&reader, id, config, fingerprint, arriving, &mut warnings)?
            else {
                continue;
            };
            if id != candidates[0] {
                warnings.push(format!(
                    "restoring checkpoint {id} instead of the newest, {}; output committed for later checkpoints is rolled back",
                    candidates[0]
                ));
            }
            return Ok(Some(Self::new(
                restored.0,
                vec![Arc::new(reader)],
                restored.1,
                Vec::new(),
                Some(0),
                warnings,
            )));
        }
        nothing_restorable(config, &candidates, &config.dir, warnings)
    }

    fn new(
        metadata: CheckpointMetadata,
        readers: Vec<Arc<StoreReader>>,
        handles: Vec<BlockHandle>,
        handle_reader: Vec<u16>,
        own_reader: Option<u16>,
        warnings: Vec<String>,
    ) -> Self {
        assert!(handle_reader.is_empty() || handle_reader.len() == handles.len());
        let state = metadata
            .state
            .iter()
            .enumerate()
            .map(|(i, b)| ((b.operator.clone(), b.table.clone(), b.key_group), i))
            .collect();
        let mut state_schemas: HashMap<(String, String), BTreeSet<u32>> = HashMap::new();
        for b in &metadata.state {
            state_schemas
                .entry((b.operator.clone(), b.table.clone()))
                .or_default()
                .insert(b.schema);
        }
        Self {
            metadata,
            readers,
            handle_reader,
            own_reader,
            fill: None,
            handles,
            state,
            state_schemas,
            warnings,
        }
    }

    /// The checkpoint a process of a cluster job restores per
    /// `config.restore`: the newest global record whose every part reads
    /// back intact from its process's store, merged into one checkpoint of
    /// the whole job (`docs/cluster.md` §15.4). `config.dir` is this
    /// process's store, `process-<p>` under the job's directory. With a
    /// remote tier (`remote`), the records and the parts are read from it
    /// (§15.9); only this process's own part is read from its local store,
    /// if that holds it.
    pub(crate) fn load_cluster(
        config: &CheckpointConfig,
        process: usize,
        commit_point: Option<&std::sync::Arc<dyn super::global::CommitPoint>>,
        remote: Option<&super::remote::JobRemote>,
    ) -> Result<Option<Self>, JobError> {
        use super::global::{files, Records};
        let process = process as u32;
        let cluster_remote = remote.and_then(|r| r.cluster.as_ref());
        let records = match cluster_remote {
            Some(c) => c.records.clone(),
            None => Records::Local(files::root_of(&config.dir)),
        };
        let where_ = std::path::PathBuf::from(records.describe());
        let records_error = |reason: String| {
            JobError::from(RestoreError::ClusterRecords {
                dir: where_.clone(),
                reason,
            })
        };
        let mut ids = records.ids().map_err(records_error)?;
        // With a commit point, a record above it is not complete.
        if let Some(c) = commit_point {
            let latest = c
                .latest()
                .map_err(|e| records_error(format!("{}: {e}", c.describe())))?;
            ids.retain(|&id| latest.is_some_and(|l| id <= l));
            if let Some(l) = latest {
                if !ids.contains(&l) {
                    return Err(records_error(format!(
                        "{} says global checkpoint {l} is the newest completed, but its record is not in {}",
                        c.describe(),
                        records.describe()
                    )));
                }
            }
        }
        let newest_first = ids.iter().rev().copied();
        let Some(candidates) = candidates(&config.restore, newest_first) else {
            return Ok(None);
        };
        let mut warnings = Vec::new();
        // With a remote tier, this process's own local store serves its own
        // part when it holds it (local recovery: its chains keep their links).
        let own_local = cluster_remote
            .and_then(|_| StoreReader::open(&config.dir).ok())
            .map(Arc::new);
        // Per (process, checkpoint): a local store serves every checkpoint (0),
        // a remote source one.
        let mut readers: HashMap<(u32, u64), Option<Arc<StoreReader>>> = HashMap::new();
        'records: for &id in &candidates {
            let record = match records.read(id) {
                Ok(r) => r,
                Err(e) => {
                    warnings.push(format!("global checkpoint {id} cannot be read: {e}"));
                    continue;
                }
            };
            let mut parts = Vec::new();
            let mut own_is_local = false;
            for &p in &record.parts {
                // Where part `p` may be read, in order: this process's own
                // local store (local recovery), then the remote tier (so a
                // damaged local copy falls back to the remote one); without
                // a remote tier, the part's store under the job's directory.
                // A remote part's blocks are verified as they are read
                // (`arriving`): a restore does not download every part up
                // front. The last field: this is the process's own store.
                #[allow(clippy::type_complexity)]
                let mut sources: Vec<(
                    Option<Arc<StoreReader>>,
                    String,
                    bool,
                    bool,
                )> = Vec::new();
                if let Some(r) = own_local
                    .as_ref()
                    .filter(|r| p == process && r.checkpoint(id).is_ok())
                {
                    sources.push((
                        Some(r.clone()),
                        config.dir.display().to_string(),
                        false,
                        true,
                    ));
                }
                match cluster_remote {
                    Some(c) => {
                        let reader =
                            readers
                                .entry((p, id))
                                .or_insert_with(|| match c.part_reader(p, id) {
                                    Ok(r) => Some(Arc::new(r)),
                                    Err(e) => {
                                        warnings.push(format!(
                                            "the parts of process {p} cannot be read: {e}"
                                        ));
                                        None
                                    }
                                });
                        sources.push((
                            reader.clone(),
                            format!("the remote parts of process {p}"),
                            true,
                            false,
                        ));
                    }
                    None => {
                        let dir = files::part_dir(&files::root_of(&config.dir), p);
                        let reader =
                            readers.entry((p, 0)).or_insert_with(|| {
                                match StoreReader::open(&dir) {
                                    Ok(r) => Some(Arc::new(r)),
                                    Err(e) => {
                                        warnings.push(format!(
                                            "the store {} cannot be opened: {e}",
                                            dir.display()
                                        ));
                                        None
                                    }
                                }
                            });
                        sources.push((reader.clone(), dir.display().to_string(), false, false));
                    }
                }
                let mut found = None;
                for (reader, at, arriving, own_store) in sources {
                    let Some(reader) = reader else {
                        warnings.push(format!(
                            "global checkpoint {id}: the part of process {p} in {at} is unreadable"
                        ));
                        continue;
                    };
                    let part_config = CheckpointConfig {
                        dir: std::path::PathBuf::from(&at),
                        ..config.clone()
                    };
                    match Self::try_one(&reader, id, &part_config, None, arriving, &mut warnings)? {
                        Some((metadata, handles)) => {
                            own_is_local |= own_store;
                            found = Some((reader, metadata, handles));
                            break;
                        }
                        None => warnings.push(format!(
                            "global checkpoint {id}: the part of process {p} in {at} is unusable"
                        )),
                    }
                }
                let Some((reader, metadata, handles)) = found else {
                    continue 'records;
                };
                parts.push((p, reader, metadata, handles));
            }
            if id != candidates[0] {
                warnings.push(format!(
                    "restoring global checkpoint {id} instead of the newest, {}; output committed for later checkpoints is rolled back",
                    candidates[0]
                ));
            }
            // A part read remotely is not this process's store: its chains
            // get no links (the next checkpoint writes them afresh).
            let own = if cluster_remote.is_none() || own_is_local {
                process
            } else {
                u32::MAX
            };
            let merged = merge_parts(&record, parts, own)
                .map_err(|e| records_error(format!("global checkpoint {id}: {e}")))?;
            let (metadata, readers, handles, handle_reader, own) = merged;
            return Ok(Some(Self::new(
                metadata,
                readers,
                handles,
                handle_reader,
                own,
                warnings,
            )));
        }
        nothing_restorable(config, &candidates, &where_, warnings)
    }

    /// The store that holds block `handle_index`.
    fn reader_of(&self, handle_index: u32) -> &Arc<StoreReader> {
        let r = self
            .handle_reader
            .get(handle_index as usize)
            .copied()
            .unwrap_or(0);
        &self.readers[r as usize]
    }

    /// Whether block `handle_index` is in this process's own store.
    fn is_own(&self, handle_index: u32) -> bool {
        let r = self
            .handle_reader
            .get(handle_index as usize)
            .copied()
            .unwrap_or(0);
        self.own_reader == Some(r)
    }

    /// Checkpoint `id` if it reads back intact (its metadata and every
    /// block, unless its blocks are `arriving`: each is verified as it
    /// arrives); otherwise `None` with the reason in `warnings`. An
    /// incompatible job is an error.
    fn try_one(
        reader: &StoreReader,
        id: u64,
        config: &CheckpointConfig,
        fingerprint: Option<u64>,
        arriving: bool,
        warnings: &mut Vec<String>,
    ) -> Result<Option<(CheckpointMetadata, Vec<BlockHandle>)>, JobError> {
        let record = match reader.checkpoint(id) {
            Ok(r) => r.clone(),
            Err(e) => {
                warnings.push(format!("checkpoint {id} cannot be read: {e}"));
                return Ok(None);
            }
        };
        let metadata = match CheckpointMetadata::decode(&record.metadata) {
            Ok(m) => m,
            Err(e) => {
                warnings.push(format!("checkpoint {id} has unreadable metadata: {e}"));
                return Ok(None);
            }
        };
        let verified = if arriving {
            Ok(Vec::new()) // each block is verified as it arrives
        } else {
            reader.verify_checkpoint(id)
        };
        match verified {
            Ok(problems) if problems.is_empty() => {}
            Ok(problems) => {
                warnings.push(format!(
                    "checkpoint {id} in {} is damaged: {}{}",
                    config.dir.display(),
                    problems[0],
                    match problems.len() - 1 {
                        0 => String::new(),
                        n => format!(" (and {n} more damaged block(s))"),
                    }
                ));
                return Ok(None);
            }
            Err(e) => {
                warnings.push(format!("checkpoint {id} cannot be checked: {e}"));
                return Ok(None);
            }
        }
        if let Some(fp) = fingerprint {
            if metadata.fingerprint != fp {
                return Err(RestoreError::IncompatibleJob {
                    id,
                    found: metadata.fingerprint,
                    expected: fp,
                }
                .into());
            }
        }
        Ok(Some((metadata, record.handles.clone())))
    }

    /// Damage found in `what` of the restored checkpoint.
    fn damaged(&self, what: &str, reason: String) -> JobError {
        RestoreError::Damaged {
            what: format!("checkpoint {}, {what}", self.metadata.id),
            reason,
        }
        .into()
    }

    /// Recorded schema `index`, or damage.
    fn recorded_schema(&self, index: u32) -> Result<&BlockSchema, JobError> {
        self.metadata.schema(index).ok_or_else(|| {
            self.damaged("its metadata", format!("schema index {index} out of range"))
        })
    }

    /// Checks that a job whose `table` of `operator` archives as `job` can
    /// restore every block the checkpoint holds for it (the schema is part
    /// of what a restore checks: a changed layout is an error naming the
    /// operator, the state and the field, never a misread).
    pub(crate) fn check_state_schema(
        &self,
        operator: &str,
        table: &str,
        job: &BlockSchema,
    ) -> Result<(), JobError> {
        let key = (operator.to_string(), table.to_string());
        for &index in self.state_schemas.get(&key).into_iter().flatten() {
            let recorded = self.recorded_schema(index)?;
            recorded.check_restorable_by(job).map_err(|e| {
                JobError::from(RestoreError::IncompatibleState {
                    id: self.metadata.id,
                    operator: operator.to_string(),
                    state: table.to_string(),
                    field: e.path,
                    reason: e.reason,
                })
            })?;
        }
        Ok(())
    }

    fn handle(&self, handle_index: u32) -> Result<&BlockHandle, JobError> {
        self.handles.get(handle_index as usize).ok_or_else(|| {
            self.damaged(
                "its metadata",
                format!("handle index {handle_index} out of range"),
            )
        })
    }

    /// Asks the fill, if any, for every block that is not keyed state
    /// (metadata-referenced timers, in-flight records) ahead of the rest: the
    /// graph reads those while it is built.
    fn prioritise_unkeyed(&self) {
        let Some(fill) = &self.fill else {
            return;
        };
        let keyed: HashSet<u32> = self
            .metadata
            .state
            .iter()
            .filter(|s| s.table != super::metadata::TIMERS_TABLE)
            .flat_map(|s| s.chain.iter().map(|b| b.handle))
            .collect();
        fill.prioritise(
            self.handles
                .iter()
                .enumerate()
                .filter(|(i, _)| !keyed.contains(&(*i as u32)))
                .map(|(_, h)| h),
        );
    }

    /// Block `handle_index`, mapped and verified (waiting for the fill, if
    /// any, to bring it).
    fn block(&self, handle_index: u32) -> Result<BlockRef, JobError> {
        let handle = self.handle(handle_index)?;
        if let Some(fill) = &self.fill {
            fill.wait(handle)
                .map_err(|e| self.damaged("a block", e.to_string()))?;
        }
        self.reader_of(handle_index)
            .block(handle)
            .map_err(|e| self.damaged("a block", e.to_string()))
    }

    /// The chain of one table's key group, if it had entries: every block
    /// (delta or not) in order, and the chain as durable links.
    #[allow(clippy::type_complexity)]
    pub(crate) fn state_chain(
        &self,
        operator: &str,
        table: &str,
        key_group: u32,
    ) -> Result<Option<(Vec<(bool, RestoredBlock)>, Vec<ChainLink>, u64)>, JobError> {
        let Some(&i) = self
            .state
            .get(&(operator.to_string(), table.to_string(), key_group))
        else {
            return Ok(None);
        };
        let mut blocks = Vec::new();
        let mut links = Vec::new();
        let own = self.metadata.state[i]
            .chain
            .iter()
            .all(|b| self.is_own(b.handle));
        for b in &self.metadata.state[i].chain {
            let handle = *self.handle(b.handle)?;
            let block = match &self.fill {
                Some(fill) if !fill.is_written(&handle) => RestoredBlock::Arriving {
                    handle,
                    reader: self.reader_of(b.handle).clone(),
                    fill: fill.clone(),
                },
                _ => RestoredBlock::Ready(self.block(b.handle)?),
            };
            blocks.push((b.delta, block));
            links.push(ChainLink {
                handle,
                delta: b.delta,
                checkpoint: b.checkpoint,
                entries: b.entries,
                bytes: b.bytes,
            });
        }
        if !own {
            // In another process's store: this process's next checkpoint
            // cannot refer to these blocks, so it writes the key group afresh.
            links.clear();
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
            return Err(RestoreError::SourceNotRescalable {
                id: self.metadata.id,
                source_name: source.to_string(),
                checkpoint: self.metadata.parallelism,
                job: parallelism,
            }
            .into());
        }
        Ok(entries
            .iter()
            .find(|s| s.subtask as usize == subtask)
            .map(|s| SourceRestore::Offset(s.offset)))
    }

    /// Every in-flight block of one operator input, with its bytes; each
    /// block's recorded schema must be restorable by `job` (the schema of
    /// the input's records).
    pub(crate) fn in_flight(
        &self,
        operator: &str,
        input: u32,
        job: &BlockSchema,
    ) -> Result<Vec<(InFlightBlock, BlockRef)>, JobError> {
        let blocks: Vec<&InFlightBlock> = self
            .metadata
            .in_flight
            .iter()
            .filter(|b| b.operator == operator && b.input == input)
            .collect();
        let schemas: BTreeSet<u32> = blocks.iter().map(|b| b.schema).collect();
        for index in schemas {
            self.recorded_schema(index)?
                .check_restorable_by(job)
                .map_err(|e| {
                    JobError::from(RestoreError::IncompatibleRecords {
                        id: self.metadata.id,
                        operator: operator.to_string(),
                        input,
                        field: e.path,
                        reason: e.reason,
                    })
                })?;
        }
        blocks
            .into_iter()
            .map(|b| Ok((b.clone(), self.block(b.handle)?)))
            .collect()
    }
}

/// The checkpoints `restore` may take, in the order to try them, from the
/// ids present newest first (`None`: restore nothing).
fn candidates(restore: &RestoreFrom, newest_first: impl Iterator<Item = u64>) -> Option<Vec<u64>> {
    Some(match *restore {
        RestoreFrom::Nothing => return None,
        RestoreFrom::Checkpoint(id) => vec![id],
        RestoreFrom::Latest => newest_first.collect(),
        RestoreFrom::LatestFrom(floor) => newest_first.filter(|&id| id >= floor).collect(),
    })
}

/// No candidate of `dir` read back: an error if one was asked for or any
/// existed (`warnings` say why each was unusable), else nothing to restore.
fn nothing_restorable(
    config: &CheckpointConfig,
    candidates: &[u64],
    dir: &std::path::Path,
    warnings: Vec<String>,
) -> Result<Option<RestoreState>, JobError> {
    if let RestoreFrom::Checkpoint(id) = config.restore {
        return Err(RestoreError::CheckpointUnusable {
            id,
            problems: warnings,
        }
        .into());
    }
    if !candidates.is_empty() {
        return Err(RestoreError::NoneIntact {
            dir: dir.to_path_buf(),
            problems: warnings,
        }
        .into());
    }
    Ok(None)
}

/// A global checkpoint's parts, merged into one checkpoint of the whole
/// job: handles, state chains and in-flight blocks renumbered into one
/// handle list (remembering each handle's store), schemas into one list.
/// Returns the metadata, the stores, the handles, each handle's store and
/// the index of `process`'s own store, if it holds a part.
#[allow(clippy::type_complexity)]
pub(crate) fn merge_parts(
    record: &super::global::GlobalRecord,
    parts: Vec<(u32, Arc<StoreReader>, CheckpointMetadata, Vec<BlockHandle>)>,
    process: u32,
) -> Result<
    (
        CheckpointMetadata,
        Vec<Arc<StoreReader>>,
        Vec<BlockHandle>,
        Vec<u16>,
        Option<u16>,
    ),
    String,
> {
    let first = &parts.first().ok_or("a record without parts")?.2;
    let mut merged = CheckpointMetadata {
        version: first.version,
        id: record.id,
        trigger_ms: record.trigger_ms,
        completed_ms: record.completed_ms,
        cause: first.cause.clone(),
        mode: first.mode.clone(),
        incremental: false,
        parallelism: record.processes * record.parallelism,
        max_parallelism: first.max_parallelism,
        fingerprint: first.fingerprint,
        state: Vec::new(),
        in_flight: Vec::new(),
        sources: Vec::new(),
        subtasks: Vec::new(),
        schemas: Vec::new(),
    };
    let mut readers = Vec::new();
    let mut handles = Vec::new();
    let mut handle_reader = Vec::new();
    let mut own = None;
    for (p, reader, m, part_handles) in parts {
        if m.id != record.id
            || m.parallelism != record.parallelism
            || m.max_parallelism != merged.max_parallelism
            || m.fingerprint != merged.fingerprint
        {
            return Err(format!(
                "the part of process {p} is checkpoint {} of {} subtasks (max parallelism {}, job {:016x}), not of this record's {} per process (max parallelism {}, job {:016x})",
                m.id, m.parallelism, m.max_parallelism, m.fingerprint, record.parallelism, merged.max_parallelism, merged.fingerprint
            ));
        }
        let index = u16::try_from(readers.len()).map_err(|_| "too many parts")?;
        if p == process {
            own = Some(index);
        }
        let handle_base = u32::try_from(handles.len()).map_err(|_| "too many blocks")?;
        let schema_base = u32::try_from(merged.schemas.len()).map_err(|_| "too many schemas")?;
        let count = part_handles.len();
        handles.extend(part_handles);
        handle_reader.extend(std::iter::repeat_n(index, count));
        readers.push(reader);
        let shift = |h: u32| -> Result<u32, String> {
            if h as usize >= count {
                return Err(format!(
                    "the part of process {p} names block {h} of {count}"
                ));
            }
            Ok(h + handle_base)
        };
        merged.incremental |= m.incremental;
        for mut s in m.state {
            for b in &mut s.chain {
                b.handle = shift(b.handle)?;
            }
            s.schema += schema_base;
            merged.state.push(s);
        }
        for mut f in m.in_flight {
            f.handle = shift(f.handle)?;
            f.schema += schema_base;
            merged.in_flight.push(f);
        }
        merged.sources.extend(m.sources);
        merged.subtasks.extend(m.subtasks);
        merged.schemas.extend(m.schemas);
    }
    Ok((merged, readers, handles, handle_reader, own))
}
