//! The job's side of the remote checkpoint tier (`CheckpointConfig::remote`):
//! connecting, choosing what to restore, and waiting on reactor 0 for an upload.
//!
//! Commit order with a remote tier (the coordinator task, runtime/mod.rs): local
//! manifest commit, then upload and create-only remote record (the commit point),
//! and only then is the checkpoint complete and do sinks commit. A failed upload
//! fails that checkpoint: it is discarded from the local store again, so that
//! neither a restore nor a later incremental checkpoint builds on it. An upload
//! whose remote commit is unknown fails the run (a restart then restores what
//! the remote tier holds).
//!
//! Restore: only checkpoints committed remotely are candidates. A local store
//! holding the chosen one restores from it (local recovery, no download). An
//! empty state directory (or one holding an interrupted fill) is filled from
//! the remote tier in the background (`RemoteFill`, run on the remote
//! runtime): the job starts once the local manifest is written, the blocks
//! other than keyed state are asked for first, and a key group whose blocks
//! have not arrived is read ahead of the rest when first accessed (the
//! subtask's thread waits for that one ranged read, as it would for a page
//! of a file on a network file system).
//!
//! Owns no state of its own, and knows nothing of glommio; must not run
//! object-store futures on a reactor: they run on the storage crate's
//! `RemoteRuntime` threads, and the coordinator task waits for them on its
//! parker (`runtime/mod.rs`).

use super::{CheckpointConfig, RestoreFrom};
use crate::park::Notifier;
use crate::{JobError, RestoreError};
use spate_storage::remote::runtime::Completion;
use spate_storage::remote::{
    CloudBackend, RemoteError, RemoteFill, RemoteRuntime, RemoteTier, TierOptions, UploadReport,
};
use spate_storage::CheckpointRecord;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The remote tier of a job and its URL (for messages).
#[derive(Debug)]
pub(crate) struct JobRemote {
    pub url: String,
    pub tier: Arc<RemoteTier>,
    /// The newest remote checkpoint id once the restore chose (0: none): new
    /// checkpoints take larger ids, so that no create-only record collides
    /// with one of an earlier run (a fresh start on a used prefix).
    pub newest: AtomicU64,
}

fn runtime() -> Result<&'static RemoteRuntime, JobError> {
    RemoteRuntime::global().map_err(JobError::Runtime)
}

fn remote_err(url: &str, source: RemoteError) -> JobError {
    RestoreError::Remote {
        url: url.to_owned(),
        source,
    }
    .into()
}

/// Connects to the remote tier of `config`, if it has one.
pub(crate) fn connect(config: &CheckpointConfig) -> Result<Option<Arc<JobRemote>>, JobError> {
    let Some(url) = &config.remote else {
        return Ok(None);
    };
    let rt = runtime()?;
    let owned = url.clone();
    // Built on the runtime: the S3 client belongs to it.
    let backend = rt
        .block_on(async move { CloudBackend::from_url(&owned) })
        .map_err(|e| RestoreError::RemoteUrl(e.to_string()))?;
    let shown = backend.url().to_string();
    let options = TierOptions {
        retained_checkpoints: config.retained,
        // An upload in progress is bounded by the checkpoint timeout (an
        // upload older than that belongs to a failed checkpoint).
        gc_grace_ms: config.timeout_ms.saturating_mul(2).max(60_000),
        ..TierOptions::default()
    };
    Ok(Some(Arc::new(JobRemote {
        url: shown,
        tier: Arc::new(RemoteTier::new(Arc::new(backend), options)),
        newest: AtomicU64::new(0),
    })))
}

/// What [`prepare_restore`] decided: the checkpoint ids a restore may use
/// (those committed remotely; `None`: no restore), and the fill the
/// directory's blocks arrive by, if it is being filled from the remote tier.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub allowed: Option<BTreeSet<u64>>,
    pub fill: Option<RemoteFill>,
}

/// Prepares the state directory for a restore with a remote tier.
///
/// The newest remote checkpoint that the restore mode accepts and that decodes
/// is chosen. If the local store holds it, nothing is downloaded. If the
/// directory holds no store (or an interrupted fill), the checkpoint's fill
/// into it starts in the background. A local store
/// that lacks it is refused (it belongs to another history). Remote records
/// newer than the chosen one are a branch no later restore may return to (the
/// sinks roll their output back): they are deleted.
pub(crate) fn prepare_restore(
    config: &CheckpointConfig,
    remote: &JobRemote,
) -> Result<Prepared, JobError> {
    let rt = runtime()?;
    if config.restore == RestoreFrom::Nothing {
        let tier = remote.tier.clone();
        let ids = rt
            .block_on(async move { tier.checkpoint_ids().await })
            .map_err(|e| remote_err(&remote.url, e))?;
        remote
            .newest
            .store(ids.last().copied().unwrap_or(0), Ordering::SeqCst);
        return Ok(Prepared::default());
    }
    let accept: Box<dyn Fn(u64) -> bool + Send + Sync> = match config.restore {
        RestoreFrom::Nothing => unreachable!("handled above"),
        RestoreFrom::Latest => Box::new(|_| true),
        RestoreFrom::Checkpoint(id) => Box::new(move |c| c == id),
        RestoreFrom::LatestFrom(floor) => Box::new(move |c| c >= floor),
    };
    let tier = remote.tier.clone();
    let (ids, chosen, skipped) = rt
        .block_on(async move {
            let ids = tier.checkpoint_ids().await?;
            let (chosen, skipped) = tier.latest(accept).await?;
            Ok::<_, RemoteError>((ids, chosen, skipped))
        })
        .map_err(|e| remote_err(&remote.url, e))?;
    for s in &skipped {
        eprintln!("spate: remote checkpoint skipped: {s}");
    }
    let Some(chosen) = chosen else {
        if let RestoreFrom::Checkpoint(id) = config.restore {
            return Err(RestoreError::CheckpointUnusable {
                id,
                problems: skipped,
            }
            .into());
        }
        // Nothing accepted is committed remotely: nothing to restore.
        remote
            .newest
            .store(ids.last().copied().unwrap_or(0), Ordering::SeqCst);
        return Ok(Prepared {
            allowed: Some(BTreeSet::new()),
            fill: None,
        });
    };
    let id = chosen.checkpoint.id;
    remote.newest.store(id, Ordering::SeqCst);
    let newer: Vec<u64> = ids.iter().copied().filter(|&c| c > id).collect();
    if !newer.is_empty() {
        eprintln!(
            "spate: remote checkpoint(s) {newer:?} in {} are newer than the restored one, {id}, and are deleted",
            remote.url
        );
        let tier = remote.tier.clone();
        rt.block_on(async move {
            for c in newer {
                tier.backend()
                    .delete(&spate_storage::remote::layout::checkpoint_key(c))
                    .await?;
            }
            Ok::<_, spate_storage::remote::ObjectError>(())
        })
        .map_err(|e| remote_err(&remote.url, e.into()))?;
    }
    let interrupted = spate_storage::remote::fill::is_interrupted(&config.dir);
    let has_manifest = !interrupted
        && std::fs::read_dir(&config.dir)
            .map(|entries| {
                entries.flatten().any(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(spate_storage::format::parse_manifest_name)
                        .is_some()
                })
            })
            .unwrap_or(false);
    let allowed = Some(BTreeSet::from([id]));
    if has_manifest {
        let reader =
            spate_storage::StoreReader::open(&config.dir).map_err(|source| RestoreError::Open {
                dir: config.dir.clone(),
                source,
            })?;
        if reader.checkpoints().iter().any(|c| c.id == id) {
            return Ok(Prepared {
                allowed,
                fill: None,
            });
        }
        return Err(RestoreError::LocalBehindRemote {
            dir: config.dir.clone(),
            id,
            url: remote.url.clone(),
        }
        .into());
    }
    if interrupted {
        eprintln!(
            "spate: {} holds a restore from {} that did not complete: it is removed and restored again",
            config.dir.display(),
            remote.url
        );
    }
    let fill = RemoteFill::prepare(&chosen, &config.dir).map_err(|e| remote_err(&remote.url, e))?;
    let (driver, tier, url) = (fill.clone(), remote.tier.clone(), remote.url.clone());
    let started = std::time::Instant::now();
    // Runs on the remote runtime; its outcome reaches the job through the
    // fill (a waiter gets the error), and the log here.
    let _ = rt.submit(
        async move {
            match driver.run(&tier).await {
                Ok(report) => eprintln!(
                    "spate: restored checkpoint {id} from {url}: {} bytes in {} ranged reads, {} ms",
                    report.bytes,
                    report.get_requests,
                    started.elapsed().as_millis()
                ),
                Err(e) => eprintln!("spate: restoring checkpoint {id} from {url} failed: {e}"),
            }
        },
        || {},
    );
    Ok(Prepared {
        allowed,
        fill: Some(fill),
    })
}

/// Starts the upload and remote commit of committed checkpoint `record` on
/// the remote runtime; `notifier` is notified (from a runtime thread) once
/// the returned completion holds the result. The coordinator task waits for
/// it on its parker (runtime/mod.rs), never blocking the reactor.
pub(crate) fn start_upload(
    remote: &JobRemote,
    dir: PathBuf,
    record: CheckpointRecord,
    keep_from: Option<u64>,
    notifier: Notifier,
) -> Result<Completion<Result<UploadReport, RemoteError>>, RemoteError> {
    let rt = RemoteRuntime::global().map_err(|message| {
        RemoteError::Object(spate_storage::remote::ObjectError::Failed {
            op: "upload",
            key: String::new(),
            message,
        })
    })?;
    let tier = remote.tier.clone();
    Ok(rt.submit(
        async move {
            let local = spate_storage::reader::DirSource::new(dir);
            tier.upload(&local, record, keep_from).await
        },
        move || notifier.notify(),
    ))
}
