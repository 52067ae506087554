//! Reading checkpointed keyed state back, for inspection tools (`spate-ckpt
//! dump` and `diff`): a key group's chain of blocks is read through a
//! [`StoreReader`] and decoded exactly as a restore decodes it.
//!
//! Owns the way from a checkpoint's metadata to typed entries: which blocks
//! make a key group's chain ([`KeyGroupChain::read`]) and how they combine (a
//! base, then deltas, oldest first, through the restore code of
//! [`crate::state`]; timers as the keyed operator restores them). It does not
//! own the archived layout, which stays with that code. Every archive is
//! checked (rkyv validation) before use: bytes from disk give an
//! [`InspectError`] naming checkpoint, operator, state, key group and block,
//! never a panic.
//!
//! The engine records the schema of every block in the checkpoint
//! ([`StateBlock::schema`], [`crate::schema`]): a tool without the job's
//! types decodes from it alone (`spate-ckpt`); code that has the types reads
//! them typed with [`KeyGroupChain::decode`] and
//! [`KeyGroupChain::decode_timers`], which first check that the recorded
//! schema is the one of those types. [`read_block`] reads any block the
//! metadata names (in-flight records).
//!
//! Must not write to a store or know any concrete user type.

use crate::checkpoint::metadata::TimerEntries;
use crate::checkpoint::metadata::{CheckpointMetadata, StateBlock};
use crate::keygroup::Key;
use crate::schema::BlockSchema;
use crate::state::{KeyedTable, StateData};
use crate::time::{TimeDomain, Timestamp};
use spate_storage::{BlockHandle, BlockRef, CheckpointRecord, ReadError, StoreReader};

pub use crate::checkpoint::metadata::TIMERS_TABLE;

/// A pending timer as checkpointed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer<K> {
    /// The key it fires for.
    pub key: K,
    /// When it fires (event or processing time, ms).
    pub timestamp: Timestamp,
    /// Which clock it follows.
    pub domain: TimeDomain,
}

/// One block of a key group's chain, read and CRC-checked.
#[derive(Clone, Debug)]
pub struct ChainPart {
    /// A delta (upserts and deletes) rather than a full base.
    pub delta: bool,
    /// The checkpoint that wrote the block.
    pub checkpoint: u64,
    /// Where the block is.
    pub handle: BlockHandle,
    /// Its payload (an rkyv archive, not checked yet).
    pub bytes: BlockRef,
}

/// The chain of one table of one operator in one key group of a checkpoint:
/// what a restore loads into that key group.
#[derive(Clone, Debug)]
pub struct KeyGroupChain {
    /// The checkpoint read.
    pub checkpoint: u64,
    /// Operator name.
    pub operator: String,
    /// State name ([`TIMERS_TABLE`] for timers).
    pub table: String,
    /// Key group.
    pub key_group: u32,
    /// What the blocks archive, as the engine recorded it (`None` when the
    /// metadata names a schema it does not hold: damage; the blocks still
    /// read, for a raw display).
    pub schema: Option<BlockSchema>,
    /// Entries after applying the chain, as recorded.
    pub entries: u64,
    /// Base first, then deltas.
    pub parts: Vec<ChainPart>,
}

/// Reading or decoding a key group's chain failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "checkpoint {checkpoint}, operator `{operator}`, state `{table}`, key group {key_group}{}: {kind}",
    block_suffix(.handle)
)]
#[non_exhaustive]
pub struct InspectError {
    /// The checkpoint.
    pub checkpoint: u64,
    /// The operator.
    pub operator: String,
    /// The state.
    pub table: String,
    /// The key group.
    pub key_group: u32,
    /// The block concerned, when one is.
    pub handle: Option<BlockHandle>,
    /// What went wrong (boxed: the error stays small on the happy path).
    pub kind: Box<InspectErrorKind>,
}

fn block_suffix(handle: &Option<BlockHandle>) -> String {
    match handle {
        Some(h) => format!(
            ", block {} offset {} ({} bytes)",
            h.segment.file_name(),
            h.offset,
            h.len
        ),
        None => String::new(),
    }
}

/// What went wrong in an [`InspectError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectErrorKind {
    /// The metadata names a handle the checkpoint record does not have.
    #[error("handle index {index} is out of range (the record has {handles})")]
    HandleOutOfRange {
        /// The index.
        index: u32,
        /// Handles in the record.
        handles: usize,
    },
    /// The block could not be read (missing segment, bad CRC, I/O).
    #[error("{0}")]
    Read(ReadError),
    /// The block's bytes are not a valid archive of the recorded type.
    #[error("archive does not check: {0}")]
    Archive(String),
    /// The types asked for are not the recorded ones.
    #[error("recorded type `{recorded}` is not `{expected}` ({at})")]
    TypeMismatch {
        /// What the engine recorded.
        recorded: String,
        /// What the caller decodes.
        expected: String,
        /// Where they differ.
        at: crate::schema::Incompatibility,
    },
    /// The metadata names a schema it does not hold (damage).
    #[error("the metadata holds no schema for it")]
    MissingSchema,
}

impl KeyGroupChain {
    /// Reads the blocks of `state` (one entry of `metadata`) through
    /// `reader`; each block's CRC is checked on this first access.
    pub fn read(
        reader: &StoreReader,
        record: &CheckpointRecord,
        metadata: &CheckpointMetadata,
        state: &StateBlock,
    ) -> Result<Self, InspectError> {
        let mut chain = KeyGroupChain {
            checkpoint: record.id,
            operator: state.operator.clone(),
            table: state.table.clone(),
            key_group: state.key_group,
            schema: metadata.schema(state.schema).cloned(),
            entries: state.entries,
            parts: Vec::with_capacity(state.chain.len()),
        };

        for link in &state.chain {
            let Some(&handle) = record.handles.get(link.handle as usize) else {
                return Err(chain.error(
                    None,
                    InspectErrorKind::HandleOutOfRange {
                        index: link.handle,
                        handles: record.handles.len(),
                    },
                ));
            };
            let bytes = reader
                .block(&handle)
                .map_err(|e| chain.error(Some(handle), InspectErrorKind::Read(e)))?;
            chain.parts.push(ChainPart {
                delta: link.delta,
                checkpoint: link.checkpoint,
                handle,
                bytes,
            });
        }
        Ok(chain)
    }

    /// Payload bytes of the chain.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| u64::from(p.handle.len)).sum()
    }

    fn error(&self, handle: Option<BlockHandle>, kind: InspectErrorKind) -> InspectError {
        InspectError {
            checkpoint: self.checkpoint,
            operator: self.operator.clone(),
            table: self.table.clone(),
            key_group: self.key_group,
            handle,
            kind: Box::new(kind),
        }
    }

    /// Checks that the recorded schema is `expected`'s layout (as a restore
    /// checks it).
    fn check_schema(&self, expected: &BlockSchema) -> Result<(), InspectError> {
        let Some(recorded) = &self.schema else {
            return Err(self.error(None, InspectErrorKind::MissingSchema));
        };
        recorded.check_restorable_by(expected).map_err(|at| {
            self.error(
                None,
                InspectErrorKind::TypeMismatch {
                    recorded: recorded.entry_name(),
                    expected: expected.entry_name(),
                    at,
                },
            )
        })
    }

    /// The key group's entries (base, then deltas applied, as a restore loads
    /// them), sorted by key. The recorded schema must be the layout of keyed
    /// state of `V` per `K`.
    pub fn decode<K: Key, V: StateData>(&self) -> Result<Vec<(K, V)>, InspectError> {
        self.check_schema(&BlockSchema::keyed::<K, V>())?;
        let blocks = self.parts.iter().map(|p| (p.delta, p.bytes.as_bytes()));
        let map = KeyedTable::<K, V>::load_detached(blocks).map_err(|(position, e)| {
            self.error(
                Some(self.parts[position].handle),
                InspectErrorKind::Archive(e.to_string()),
            )
        })?;
        let mut entries: Vec<(K, V)> = map.into_entries();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// The key group's timers, sorted by key, then time. The recorded schema
    /// must be the layout of timers keyed by `K`.
    pub fn decode_timers<K: Key>(&self) -> Result<Vec<Timer<K>>, InspectError> {
        self.check_schema(&BlockSchema::timers::<K>())?;
        let mut timers = Vec::new();
        for part in &self.parts {
            let entries = rkyv::from_bytes::<TimerEntries<K>, rkyv::rancor::Error>(&part.bytes)
                .map_err(|e| {
                    self.error(Some(part.handle), InspectErrorKind::Archive(e.to_string()))
                })?;
            timers.extend(entries.into_iter().map(|(timestamp, domain, key)| Timer {
                key,
                timestamp,
                domain: match domain {
                    0 => TimeDomain::EventTime,
                    _ => TimeDomain::ProcessingTime,
                },
            }));
        }
        timers.sort();
        Ok(timers)
    }
}

/// Block `index` of `record`'s handles, read through `reader` (its CRC
/// checked on this first access): for blocks outside a key group's chain,
/// such as in-flight records ([`crate::checkpoint::metadata::InFlightBlock`]).
pub fn read_block(
    reader: &StoreReader,
    record: &CheckpointRecord,
    index: u32,
) -> Result<(BlockHandle, BlockRef), (Option<BlockHandle>, Box<InspectErrorKind>)> {
    let Some(&handle) = record.handles.get(index as usize) else {
        return Err((
            None,
            Box::new(InspectErrorKind::HandleOutOfRange {
                index,
                handles: record.handles.len(),
            }),
        ));
    };
    let bytes = reader
        .block(&handle)
        .map_err(|e| (Some(handle), Box::new(InspectErrorKind::Read(e))))?;
    Ok((handle, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::ChainBlock;
    use crate::keygroup::KeyGroupRange;
    use crate::state::{KeyScope, StateRegistry};
    use spate_storage::sim::block_on;
    use spate_storage::{BlockKind, SimIo, Store, StoreOptions};
    use std::sync::Arc;

    struct Scope(u64);
    impl KeyScope<u64> for Scope {
        fn current_key(&self) -> &u64 {
            &self.0
        }
        fn key_group_index(&self) -> usize {
            0
        }
    }

    /// A base of checkpoint 1 and a delta of checkpoint 2, archived by the
    /// engine's own snapshot code, written to a simulated store.
    fn store_with_a_chain() -> (SimIo, CheckpointRecord, CheckpointMetadata, StateBlock) {
        let mut registry =
            StateRegistry::<u64>::new(KeyGroupRange { start: 3, end: 4 }, true, None);
        let counts = registry.value_state::<String>("counts");
        for k in 1..=4 {
            counts.set(&Scope(k), format!("v{k}"));
        }
        let table = registry.tables()[0].clone();
        let archive = |id: u64, delta: bool| {
            let mut t = table.borrow_mut();
            t.freeze(0, id, id - 1, delta);
            assert_eq!(t.serialize_frozen(1), 1);
            let s = t.take_serialized().pop().unwrap().unwrap();
            t.checkpoint_complete(id);
            (s.bytes, s.entries)
        };
        let (base, base_entries) = archive(1, false);
        counts.set(&Scope(1), "changed".into());
        counts.clear(&Scope(2));
        counts.set(&Scope(9), "new".into());
        let (delta, delta_entries) = archive(2, true);

        let io = SimIo::new();
        let mut store = block_on(Store::open(io.clone(), StoreOptions::default())).unwrap();
        let mut writer = store.segment_writer(0);
        let handles = vec![
            writer.append(BlockKind::KEYED_STATE_FULL, &base),
            writer.append(BlockKind::KEYED_STATE_DELTA, &delta),
        ];
        block_on(writer.flush()).unwrap();
        let record = CheckpointRecord {
            id: 2,
            timestamp_ms: 0,
            metadata: Vec::new(),
            handles,
        };
        block_on(store.commit_checkpoint(record.clone())).unwrap();
        let link = |handle, delta, checkpoint, entries, bytes: usize| ChainBlock {
            handle,
            delta,
            checkpoint,
            entries,
            bytes: bytes as u64,
        };
        let state = StateBlock {
            operator: "op".into(),
            table: "counts".into(),
            key_group: 3,
            chain: vec![
                link(0, false, 1, base_entries, base.len()),
                link(1, true, 2, delta_entries, delta.len()),
            ],
            entries: 4,
            schema: 0,
        };
        let metadata = CheckpointMetadata {
            version: crate::checkpoint::metadata::METADATA_VERSION,
            id: 2,
            trigger_ms: 0,
            completed_ms: 0,
            cause: "manual".into(),
            mode: "aligned".into(),
            incremental: true,
            parallelism: 1,
            max_parallelism: 8,
            fingerprint: 0,
            state: vec![state.clone()],
            in_flight: Vec::new(),
            sources: Vec::new(),
            subtasks: Vec::new(),
            schemas: vec![BlockSchema::clone(table.borrow().schema())],
        };
        (io, record, metadata, state)
    }

    #[test]
    fn a_chain_decodes_as_restore_loads_it() {
        let (io, record, metadata, state) = store_with_a_chain();
        assert_eq!(metadata.schemas[0].entry_name(), "(u64, String)");
        let reader = StoreReader::from_source(Arc::new(io)).unwrap();
        let chain = KeyGroupChain::read(&reader, &record, &metadata, &state).unwrap();
        assert_eq!(chain.parts.len(), 2);
        assert_eq!(chain.bytes(), state.bytes());
        let entries = chain.decode::<u64, String>().unwrap();
        let expected: Vec<(u64, String)> = vec![
            (1, "changed".into()),
            (3, "v3".into()),
            (4, "v4".into()),
            (9, "new".into()),
        ];
        assert_eq!(entries, expected);
        // Another type: refused by its schema, never reinterpreted.
        let e = chain.decode::<u64, u64>().unwrap_err();
        assert!(
            matches!(*e.kind, InspectErrorKind::TypeMismatch { .. }),
            "{e}"
        );
        let e = chain.decode_timers::<u64>().unwrap_err();
        assert!(
            matches!(*e.kind, InspectErrorKind::TypeMismatch { .. }),
            "{e}"
        );
    }

    #[test]
    fn bad_bytes_are_errors_naming_the_block() {
        let (io, record, metadata, mut state) = store_with_a_chain();
        // A block whose CRC is fine but whose bytes are not an archive of the
        // recorded type: the delta read as a base.
        state.chain[1].delta = false;
        let reader = StoreReader::from_source(Arc::new(io.clone())).unwrap();
        let chain = KeyGroupChain::read(&reader, &record, &metadata, &state).unwrap();
        let e = chain.decode::<u64, String>().unwrap_err();
        assert!(matches!(*e.kind, InspectErrorKind::Archive(_)), "{e}");
        assert_eq!(e.handle, Some(record.handles[1]));
        let text = e.to_string();
        assert!(
            text.contains("checkpoint 2") && text.contains("`op`") && text.contains("key group 3"),
            "{text}"
        );
        assert!(
            text.contains(&record.handles[1].segment.file_name()),
            "{text}"
        );

        // A flipped payload byte: the CRC check names the block.
        let h = record.handles[0];
        assert!(io.corrupt(&h.segment.file_name(), h.offset as usize + 40, 0x10));
        let reader = StoreReader::from_source(Arc::new(io)).unwrap();
        let e = KeyGroupChain::read(&reader, &record, &metadata, &state).unwrap_err();
        assert!(matches!(*e.kind, InspectErrorKind::Read(_)), "{e}");
        assert_eq!(e.handle, Some(h));

        // A handle index past the record's handles.
        state.chain[0].handle = 7;
        let e = KeyGroupChain::read(&reader, &record, &metadata, &state).unwrap_err();
        assert!(
            matches!(*e.kind, InspectErrorKind::HandleOutOfRange { index: 7, .. }),
            "{e}"
        );

        // A schema index past the metadata's schemas: the blocks read, the
        // entries do not decode.
        let (io, record, metadata, mut state) = store_with_a_chain();
        state.schema = 3;
        let reader = StoreReader::from_source(Arc::new(io)).unwrap();
        let chain = KeyGroupChain::read(&reader, &record, &metadata, &state).unwrap();
        assert!(chain.schema.is_none());
        let e = chain.decode::<u64, String>().unwrap_err();
        assert!(matches!(*e.kind, InspectErrorKind::MissingSchema), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        // Random and truncated archives are errors, whatever their length.
        let mut rng = crate::sim::SplitMix64::new(7);
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        for len in 0..200 {
            aligned.clear();
            for _ in 0..len {
                aligned.push(rng.next_u64() as u8);
            }
            let blocks = [(false, &aligned[..])];
            let _ = KeyedTable::<u64, String>::load_detached(blocks);
            let blocks = [(true, &aligned[..])];
            let _ = KeyedTable::<String, Vec<u8>>::load_detached(blocks);
            let _ = rkyv::from_bytes::<TimerEntries<u64>, rkyv::rancor::Error>(&aligned);
        }
    }
}

/// One part of a cluster job's global checkpoint, as found on disk.
#[derive(Debug)]
pub struct ClusterPart {
    /// The process that wrote it.
    pub process: u32,
    /// Its store (`process-<p>` under the job's directory), or with the
    /// checkpoints in a remote tier its prefix's URL.
    pub dir: std::path::PathBuf,
    /// Its metadata, or why it cannot be read.
    pub metadata: Result<CheckpointMetadata, String>,
}

/// A cluster job's global checkpoint (`docs/cluster.md` §15): its record,
/// each part, and when every part reads, the parts merged into one
/// checkpoint of the whole job (as a restore sees it; handle indices then
/// name blocks across the parts' stores, so read blocks from the parts).
#[derive(Debug)]
pub struct ClusterCheckpoint {
    /// The leader's global record.
    pub record: crate::checkpoint::global::GlobalRecord,
    /// Every part it names.
    pub parts: Vec<ClusterPart>,
    /// The merged metadata, or why the parts do not merge.
    pub merged: Result<CheckpointMetadata, String>,
}

/// Whether `dir` is the checkpoint directory of a cluster job (it holds
/// the leader's global records), or the URL of a cluster job's remote tier
/// (global records under its `cluster/`; one listing request).
pub fn is_cluster_dir(dir: &std::path::Path) -> bool {
    match dir.to_str().filter(|s| spate_storage::remote::is_url(s)) {
        Some(_) => cluster_records(dir).is_ok_and(|r| r.ids().is_ok_and(|ids| !ids.is_empty())),
        None => crate::checkpoint::global::files::dir(dir).is_dir(),
    }
}

/// The global records of the cluster job at `root`: its checkpoint
/// directory, or the URL of its remote tier (`docs/cluster.md` §15.9).
pub fn cluster_records(
    root: &std::path::Path,
) -> Result<crate::checkpoint::global::Records, String> {
    let url = root.to_str().filter(|s| spate_storage::remote::is_url(s));
    crate::checkpoint::global::Records::of_job(root, url)
}

/// Global checkpoint `id` of the cluster job whose checkpoint directory
/// (or remote tier's URL) is `root`: damage is reported in the result's
/// fields, never a panic.
pub fn cluster_checkpoint(root: &std::path::Path, id: u64) -> Result<ClusterCheckpoint, String> {
    use crate::checkpoint::global::files;
    let remote = root.to_str().filter(|s| spate_storage::remote::is_url(s));
    let record = cluster_records(root)?.read(id)?;
    let mut parts = Vec::new();
    let mut readable = Vec::new();
    for &process in &record.parts {
        let (opened, dir) = match remote {
            Some(url) => {
                let options = spate_storage::remote::TierOptions::default();
                match crate::checkpoint::remote::part_reader(url, process, id, options) {
                    Ok((reader, shown)) => (Ok(reader), std::path::PathBuf::from(shown)),
                    Err(e) => {
                        let part = crate::checkpoint::remote::part_name(process);
                        let dir = spate_storage::remote::sub_url(url, &part);
                        (Err(e), std::path::PathBuf::from(dir))
                    }
                }
            }
            None => {
                let dir = files::part_dir(root, process);
                let opened = StoreReader::open(&dir).map_err(|e| format!("{}: {e}", dir.display()));
                (opened, dir)
            }
        };
        let read = opened.and_then(|reader| {
            let part = reader
                .checkpoint(id)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .clone();
            let metadata = CheckpointMetadata::decode(&part.metadata)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok((reader, metadata, part.handles))
        });
        match read {
            Ok((reader, metadata, handles)) => {
                readable.push((
                    process,
                    std::sync::Arc::new(reader),
                    metadata.clone(),
                    handles,
                ));
                parts.push(ClusterPart {
                    process,
                    dir,
                    metadata: Ok(metadata),
                });
            }
            Err(e) => parts.push(ClusterPart {
                process,
                dir,
                metadata: Err(e),
            }),
        }
    }
    let merged = if readable.len() == record.parts.len() {
        crate::checkpoint::restore::merge_parts(&record, readable, u32::MAX).map(|m| m.0)
    } else {
        Err("a part cannot be read".to_string())
    };
    Ok(ClusterCheckpoint {
        record,
        parts,
        merged,
    })
}
