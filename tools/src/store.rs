//! Opening a checkpoint store for reading, and finding one of its checkpoints
//! with its metadata decoded: what every command starts from. Warnings about a
//! missing or damaged manifest, or a checkpoint discarded by retention, go to
//! stderr here.

use std::path::Path;

use anyhow::{Context, Result};
use spate::checkpoint::CheckpointMetadata;
use spate_storage::{CheckpointRecord, StoreReader};

/// Opens the store in `dir`, warning on stderr when it has no manifest or a
/// damaged one.
pub fn open(dir: &Path) -> Result<StoreReader> {
    let reader = open_store(dir)?;
    if reader.manifest_file().is_none() {
        eprintln!("warning: {} holds no manifest", dir.display());
    }
    warn_manifest_damage(&reader);
    Ok(reader)
}

/// Opens the store in `dir`, which must be a directory, or the remote tier
/// at `dir` when it is an `s3://` or `file://` URL (read-only: its records
/// as one manifest, its segments downloaded by ranged reads when a command
/// reads their blocks).
pub fn open_store(dir: &Path) -> Result<StoreReader> {
    if let Some(url) = dir.to_str().filter(|s| spate_storage::remote::is_url(s)) {
        let shown = spate_storage::remote::RemoteUrl::parse(url)
            .map(|u| u.to_string())
            .map_err(anyhow::Error::msg)?;
        let tier =
            spate_storage::remote::connect(url, Default::default()).map_err(anyhow::Error::msg)?;
        let rt = spate_storage::remote::RemoteRuntime::global().map_err(anyhow::Error::msg)?;
        let source = spate_storage::remote::RemoteSource::open(tier, rt)
            .with_context(|| format!("reading the remote tier {shown}"))?;
        for s in source.skipped() {
            eprintln!("warning: {shown}: {s}");
        }
        return StoreReader::from_source(std::sync::Arc::new(source))
            .with_context(|| format!("opening the remote tier {shown}"));
    }
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{} does not exist", dir.display())
        }
        Err(e) => anyhow::bail!("cannot access {}: {e}", dir.display()),
        Ok(m) => anyhow::ensure!(m.is_dir(), "{} is not a directory", dir.display()),
    }
    StoreReader::open(dir).with_context(|| format!("opening store {}", dir.display()))
}

/// Warns on stderr when the store's manifest is damaged.
pub fn warn_manifest_damage(reader: &StoreReader) {
    if let Some(d) = reader.manifest_damage() {
        eprintln!(
            "warning: manifest {} is damaged at offset {}: {} ({} bytes ignored{})",
            d.file,
            d.offset,
            d.error,
            d.dropped_bytes,
            if d.later_valid_records {
                "; valid records follow the damage"
            } else {
                ""
            }
        );
    }
}

/// One checkpoint of a store, its metadata decoded.
pub struct Checkpoint<'a> {
    /// The store.
    pub reader: &'a StoreReader,
    /// Its manifest record.
    pub record: &'a CheckpointRecord,
    /// Its metadata.
    pub metadata: CheckpointMetadata,
    /// Retained (rather than recorded as discarded: its blocks may be gone).
    pub retained: bool,
}

impl<'a> Checkpoint<'a> {
    /// Checkpoint `id`: a retained one, or else one the manifest records as
    /// discarded.
    pub fn find(reader: &'a StoreReader, id: u64) -> Result<Self> {
        let (record, retained) = match reader.checkpoint(id) {
            Ok(r) => (r, true),
            Err(e) => match reader.discarded_checkpoints().iter().rfind(|c| c.id == id) {
                Some(r) => (r, false),
                None => return Err(e.into()),
            },
        };
        let metadata = CheckpointMetadata::decode(&record.metadata)
            .map_err(|e| anyhow::anyhow!("checkpoint {id}: {e}"))?;
        if !retained {
            eprintln!(
                "warning: checkpoint {id} was discarded by retention; its blocks may be deleted"
            );
        }
        Ok(Checkpoint {
            reader,
            record,
            metadata,
            retained,
        })
    }
}
