//! Read-only access to a store: [`StoreReader`] maps segments with `memmap2` and
//! hands out verified, 16-byte aligned block payloads ([`BlockRef`]) that
//! `rkyv::access` can read in place.
//!
//! A reader never modifies anything (no manifest rewrite, no deletion), so the
//! inspection tool and a restore can use it while a job writes. Everything it reads
//! is checked: a missing segment, a truncated or corrupt block is a [`ReadError`]
//! naming segment and offset, never a panic and never wrong bytes. The payload CRC
//! of a block is verified on its first access through a given reader.
//!
//! Concurrency with a live store: segments are append-only and never truncated or
//! rewritten in place, so a mapping stays valid; a segment deleted by retention after
//! it was mapped stays readable through the mapping, but one deleted before is
//! [`ReadError::MissingSegment`] (call [`StoreReader::refresh`] for the current
//! checkpoint list).

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::ReadError;
use crate::format::{
    self, BlockHandle, CheckpointRecord, FormatError, SegmentId, SegmentScan, PAYLOAD_ALIGN,
};
use crate::io::DirEntry;
use crate::manifest::{self, ManifestDamage, ManifestState};
use crate::sim::SimIo;

/// Bytes of a whole segment file, starting at a 16-byte aligned address.
#[derive(Debug)]
pub struct Mapped(MappedInner);

#[derive(Debug)]
enum MappedInner {
    Mmap(memmap2::Mmap),
    /// An owned copy, `bytes[start..start + len]` being 16-byte aligned.
    Owned {
        bytes: Vec<u8>,
        start: usize,
        len: usize,
    },
}

impl Mapped {
    /// An owned, aligned copy of `data`.
    pub fn copy_from(data: &[u8]) -> Mapped {
        let mut bytes = vec![0u8; data.len() + PAYLOAD_ALIGN];
        let start = bytes.as_ptr().align_offset(PAYLOAD_ALIGN);
        assert!(start < PAYLOAD_ALIGN, "cannot align a byte buffer");
        bytes[start..start + data.len()].copy_from_slice(data);
        Mapped(MappedInner::Owned {
            bytes,
            start,
            len: data.len(),
        })
    }

    /// Maps a file read-only (an empty file gives an empty mapping).
    pub fn map_file(path: &Path) -> io::Result<Mapped> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Mapped::copy_from(&[]));
        }
        // SAFETY: the mapping is read-only, and spate never truncates or rewrites a
        // segment file in place (segments are append-only; growth past the mapped length
        // is not visible through it). Modification by another program is outside the
        // store's contract, as for any database file.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Mapped(MappedInner::Mmap(map)))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.0 {
            MappedInner::Mmap(m) => m,
            MappedInner::Owned { bytes, start, len } => &bytes[*start..*start + *len],
        }
    }
}

/// Where a [`StoreReader`] reads from: a directory, or a simulated backend.
pub trait ReadSource: Send + Sync + 'static {
    /// Lists the files.
    fn list(&self) -> io::Result<Vec<DirEntry>>;
    /// Reads a whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Maps a whole file.
    fn map(&self, name: &str) -> io::Result<Mapped>;
}

/// A store directory on the local file system.
#[derive(Debug, Clone)]
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    /// Reads from `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> DirSource {
        DirSource { dir: dir.into() }
    }
}

impl ReadSource for DirSource {
    fn list(&self) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            // A file removed between the listing and this look (a writer's
            // temporary manifest renamed, a remote fill's marker removed as
            // it completes) is not in the directory any more.
            let meta = match e.metadata() {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if let (true, Some(name)) = (meta.is_file(), e.file_name().to_str()) {
                out.push(DirEntry {
                    name: name.to_owned(),
                    len: meta.len(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(name))
    }
    fn map(&self, name: &str) -> io::Result<Mapped> {
        Mapped::map_file(&self.dir.join(name))
    }
}

impl ReadSource for SimIo {
    fn list(&self) -> io::Result<Vec<DirEntry>> {
        Ok(self.list_sync())
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.file_bytes(name)
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn map(&self, name: &str) -> io::Result<Mapped> {
        Ok(Mapped::copy_from(&self.read(name)?))
    }
}

/// A verified block payload, 16-byte aligned, kept alive by its mapping.
#[derive(Debug, Clone)]
pub struct BlockRef {
    map: Arc<Mapped>,
    range: Range<usize>,
    handle: BlockHandle,
}

impl BlockRef {
    /// The handle this payload was read for.
    pub fn handle(&self) -> BlockHandle {
        self.handle
    }
    /// The payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.map.bytes()[self.range.clone()]
    }
}

impl Deref for BlockRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for BlockRef {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Read-only view of a store; `Send + Sync`.
pub struct StoreReader {
    source: Arc<dyn ReadSource>,
    manifest_file: Option<String>,
    state: ManifestState,
    discarded: Vec<CheckpointRecord>,
    damage: Option<ManifestDamage>,
    /// Segment files found when the directory had no manifest.
    segments_without_manifest: usize,
    maps: Mutex<HashMap<SegmentId, Arc<Mapped>>>,
    verified: Mutex<HashSet<(SegmentId, u64)>>,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader")
            .field("manifest_file", &self.manifest_file)
            .field("checkpoints", &self.state.checkpoints.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreReader {
    /// Opens the store in `dir` read-only.
    pub fn open(dir: impl Into<PathBuf>) -> Result<StoreReader, ReadError> {
        StoreReader::from_source(Arc::new(DirSource::new(dir)))
    }

    /// Opens a store through any [`ReadSource`] (for example a [`SimIo`]).
    pub fn from_source(source: Arc<dyn ReadSource>) -> Result<StoreReader, ReadError> {
        let mut r = StoreReader {
            source,
            manifest_file: None,
            state: ManifestState::default(),
            discarded: Vec::new(),
            damage: None,
            segments_without_manifest: 0,
            maps: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashSet::new()),
        };
        r.refresh()?;
        Ok(r)
    }

    /// Re-reads the manifest (the newest generation; retried if a concurrent writer
    /// replaces it between listing and reading).
    pub fn refresh(&mut self) -> Result<(), ReadError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let entries = self.source.list().map_err(|source| ReadError::Io {
                name: String::new(),
                source,
            })?;
            let newest = entries
                .iter()
                .filter_map(|e| format::parse_manifest_name(&e.name))
                .max();
            self.segments_without_manifest = 0;
            let Some(generation) = newest else {
                self.manifest_file = None;
                self.state = ManifestState::default();
                self.discarded = Vec::new();
                self.damage = None;
                self.segments_without_manifest = entries
                    .iter()
                    .filter(|e| SegmentId::parse_file_name(&e.name).is_some())
                    .count();
                return Ok(());
            };
            let name = format::manifest_file_name(generation);
            match self.source.read(&name) {
                Ok(bytes) => {
                    let replayed = manifest::replay_with_history(&name, &bytes);
                    self.state = replayed.state;
                    self.discarded = replayed.discarded;
                    self.damage = replayed.damage;
                    self.manifest_file = Some(name);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 5 => continue,
                Err(source) => return Err(ReadError::Io { name, source }),
            }
        }
    }

    /// How many segment files the directory holds although it has no
    /// manifest, if any: their checkpoints are lost (damage, not an empty
    /// store; `Store::open` refuses such a directory unless told to start over).
    pub fn segments_without_manifest(&self) -> Option<usize> {
        (self.segments_without_manifest > 0).then_some(self.segments_without_manifest)
    }

    /// The manifest file read, if the store has one.
    pub fn manifest_file(&self) -> Option<&str> {
        self.manifest_file.as_deref()
    }

    /// Damage found in the manifest (a torn or corrupt tail that was ignored).
    pub fn manifest_damage(&self) -> Option<&ManifestDamage> {
        self.damage.as_ref()
    }

    /// Completed, not discarded checkpoints, increasing ids.
    pub fn checkpoints(&self) -> &[CheckpointRecord] {
        &self.state.checkpoints
    }

    /// Checkpoints the manifest generation records as completed and later
    /// discarded by retention, in log order. Their segments may be gone; a rewrite
    /// of the manifest (every store open) forgets them.
    pub fn discarded_checkpoints(&self) -> &[CheckpointRecord] {
        &self.discarded
    }

    /// The state the manifest describes (retained checkpoints, deleted segments).
    pub fn manifest_state(&self) -> &ManifestState {
        &self.state
    }

    /// The newest completed checkpoint.
    pub fn latest(&self) -> Option<&CheckpointRecord> {
        self.state.checkpoints.last()
    }

    /// The checkpoint with id `id`.
    pub fn checkpoint(&self, id: u64) -> Result<&CheckpointRecord, ReadError> {
        self.state
            .checkpoints
            .iter()
            .find(|c| c.id == id)
            .ok_or(ReadError::UnknownCheckpoint(id))
    }

    fn mapping(&self, segment: SegmentId, min_len: u64) -> Result<Arc<Mapped>, ReadError> {
        if let Some(m) = lock(&self.maps).get(&segment) {
            if m.bytes().len() as u64 >= min_len {
                return Ok(m.clone());
            }
        }
        let name = segment.file_name();
        let m = match self.source.map(&name) {
            Ok(m) => Arc::new(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ReadError::MissingSegment { segment, name })
            }
            Err(source) => return Err(ReadError::Io { name, source }),
        };
        lock(&self.maps).insert(segment, m.clone());
        Ok(m)
    }

    /// The payload of the block `handle` names, verified (CRC on first access).
    pub fn block(&self, handle: &BlockHandle) -> Result<BlockRef, ReadError> {
        let corrupt = |source: FormatError| ReadError::Corrupt {
            segment: handle.segment,
            offset: handle.offset,
            source,
        };
        handle.validate().map_err(corrupt)?;
        let map = self.mapping(handle.segment, handle.offset + handle.footprint())?;
        let key = (handle.segment, handle.offset);
        let check_crc = !lock(&self.verified).contains(&key);
        let range = format::check_block(map.bytes(), handle, check_crc).map_err(corrupt)?;
        if check_crc {
            lock(&self.verified).insert(key);
        }
        debug_assert_eq!(
            map.bytes()[range.clone()].as_ptr() as usize % PAYLOAD_ALIGN,
            0
        );
        Ok(BlockRef {
            map,
            range,
            handle: *handle,
        })
    }

    /// Segment files present, with their lengths.
    pub fn segments(&self) -> Result<Vec<(SegmentId, u64)>, ReadError> {
        let entries = self.source.list().map_err(|source| ReadError::Io {
            name: String::new(),
            source,
        })?;
        Ok(entries
            .iter()
            .filter_map(|e| SegmentId::parse_file_name(&e.name).map(|s| (s, e.len)))
            .collect())
    }

    /// Scans a whole segment, reporting every valid block and every problem.
    pub fn verify_segment(&self, segment: SegmentId) -> Result<SegmentScan, ReadError> {
        let map = self.mapping(segment, u64::MAX)?;
        Ok(format::scan_segment(map.bytes(), segment))
    }

    /// Reads every block of checkpoint `id`; returns the problems found (empty: intact).
    pub fn verify_checkpoint(&self, id: u64) -> Result<Vec<ReadError>, ReadError> {
        let c = self.checkpoint(id)?;
        Ok(c.handles
            .iter()
            .filter_map(|h| self.block(h).err())
            .collect())
    }
}
