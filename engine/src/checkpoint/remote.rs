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

use super::global::Records;
use super::{CheckpointConfig, RestoreFrom};
use crate::park::Notifier;
use crate::{JobError, RestoreError};
use spate_storage::format::SegmentId;
use spate_storage::remote::runtime::Completion;
use spate_storage::remote::{
    CloudBackend, RemoteError, RemoteFill, RemoteRuntime, RemoteSource, RemoteTier, TierOptions,
    UploadReport,
};
use spate_storage::{CheckpointRecord, StoreReader};
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
    /// In a cluster job: the other processes' parts and the global records
    /// (`tier` is then this process's part, under `<url>/process-<p>/`).
    pub cluster: Option<ClusterRemote>,
    /// The segment ids the remote records use, once the restore listed
    /// them: the local store's new segments take ids above them (its
    /// directory may be a new one, whose ids would start over and name
    /// other bytes than the remote extents under the same ids).
    pub segments_in_use: std::sync::Mutex<Vec<SegmentId>>,
}

/// The segment ids the records of `tier` use (records that do not decode
/// are skipped: nothing reuses their extents).
async fn segments_in_use(tier: &RemoteTier) -> Result<Vec<SegmentId>, RemoteError> {
    let mut in_use = BTreeSet::new();
    for id in tier.checkpoint_ids().await? {
        match tier.record(id).await {
            Ok(r) => {
                in_use.extend(r.checkpoint.handles.iter().map(|h| h.segment));
                in_use.extend(r.extents.iter().map(|e| e.segment));
            }
            Err(RemoteError::Damaged { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(in_use.into_iter().collect())
}

impl JobRemote {
    /// Lists the segment ids the remote records use (see
    /// [`JobRemote::segments_in_use`]). Blocking.
    fn note_segments_in_use(&self) -> Result<(), JobError> {
        let tier = self.tier.clone();
        let in_use = runtime()?
            .block_on(async move { segments_in_use(&tier).await })
            .map_err(|e| remote_err(&self.url, e))?;
        *self
            .segments_in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = in_use;
        Ok(())
    }
}

/// A cluster job's remote layout (`docs/cluster.md` §15.9): process `p`'s
/// parts in a remote tier of their own under `<url>/process-<p>/`, the
/// global records under `<url>/cluster/`.
#[derive(Debug)]
pub(crate) struct ClusterRemote {
    /// The job's URL as configured (settings in its query kept).
    base: String,
    options: TierOptions,
    pub records: Records,
}

impl ClusterRemote {
    /// A reader of process `process`'s part of checkpoint `id` in the
    /// remote tier (its blocks are downloaded a segment at a time when
    /// first read). Blocking: for the thread that starts the job.
    pub(crate) fn part_reader(&self, process: u32, id: u64) -> Result<StoreReader, String> {
        part_reader(&self.base, process, id, self.options.clone()).map(|(reader, _)| reader)
    }
}

/// A reader of process `process`'s part of checkpoint `id` under the
/// remote prefix of the cluster job at `base`, and the part prefix's URL
/// as shown. Blocking: for a plain thread.
pub(crate) fn part_reader(
    base: &str,
    process: u32,
    id: u64,
    options: TierOptions,
) -> Result<(StoreReader, String), String> {
    let rt = RemoteRuntime::global()?;
    let url = spate_storage::remote::sub_url(base, &part_name(process));
    let owned = url.clone();
    let backend = rt
        .block_on(async move { CloudBackend::from_url(&owned) })
        .map_err(|e| format!("{url}: {e}"))?;
    let shown = backend.url().to_string();
    let tier = Arc::new(RemoteTier::new(Arc::new(backend), options));
    let source =
        RemoteSource::open_checkpoint(tier, rt, id).map_err(|e| format!("{shown}: {e}"))?;
    for s in source.skipped() {
        eprintln!("spate: {shown}: a part skipped: {s}");
    }
    let reader = StoreReader::from_source(Arc::new(source)).map_err(|e| format!("{shown}: {e}"))?;
    Ok((reader, shown))
}

/// The name of process `process`'s prefix under a cluster job's URL.
pub(crate) fn part_name(process: u32) -> String {
    format!("process-{process}")
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

/// A backend for `url`, built on the remote runtime (the S3 client
/// belongs to it).
fn backend(url: &str) -> Result<CloudBackend, JobError> {
    let owned = url.to_owned();
    runtime()?
        .block_on(async move { CloudBackend::from_url(&owned) })
        .map_err(|e| RestoreError::RemoteUrl(e.to_string()).into())
}

/// Connects to the remote tier of `config`, if it has one; as process
/// `process` of a cluster job, to this process's part of it and to the
/// global records.
pub(crate) fn connect(
    config: &CheckpointConfig,
    process: Option<usize>,
) -> Result<Option<Arc<JobRemote>>, JobError> {
    let Some(url) = &config.remote else {
        return Ok(None);
    };
    let mut options = TierOptions {
        retained_checkpoints: config.retained,
        // An upload in progress is bounded by the checkpoint timeout (an
        // upload older than that belongs to a failed checkpoint).
        gc_grace_ms: config.timeout_ms.saturating_mul(2).max(60_000),
        ..TierOptions::default()
    };
    let Some(process) = process else {
        let backend = backend(url)?;
        let shown = backend.url().to_string();
        return Ok(Some(Arc::new(JobRemote {
            url: shown,
            tier: Arc::new(RemoteTier::new(Arc::new(backend), options)),
            newest: AtomicU64::new(0),
            cluster: None,
            segments_in_use: Default::default(),
        })));
    };
    // A part store keeps one more part than there are records retained
    // (docs/cluster.md §15.5): so does its remote prefix.
    options.retained_checkpoints = config.retained + 1;
    let part = backend(&spate_storage::remote::sub_url(
        url,
        &part_name(process as u32),
    ))?;
    let records = Records::of_job(&config.dir, Some(url)).map_err(RestoreError::RemoteUrl)?;
    Ok(Some(Arc::new(JobRemote {
        url: part.url().to_string(),
        tier: Arc::new(RemoteTier::new(Arc::new(part), options.clone())),
        newest: AtomicU64::new(0),
        cluster: Some(ClusterRemote {
            base: url.clone(),
            options,
            records,
        }),
        segments_in_use: Default::default(),
    })))
}

/// Prepares this process's remote prefix of a cluster job once the
/// restore chose `restored`: its parts newer than that belong to
/// checkpoints no restore may return to (never completed, or a branch
/// left behind) and are deleted; new parts take ids above those that
/// remain.
pub(crate) fn prepare_part(remote: &JobRemote, restored: Option<u64>) -> Result<(), JobError> {
    let tier = remote.tier.clone();
    let remaining = runtime()?
        .block_on(async move {
            let mut remaining = Vec::new();
            for id in tier.checkpoint_ids().await? {
                if restored.is_some_and(|r| id > r) {
                    tier.discard(id).await?;
                } else {
                    remaining.push(id);
                }
            }
            Ok::<_, RemoteError>(remaining)
        })
        .map_err(|e| remote_err(&remote.url, e))?;
    remote
        .newest
        .store(remaining.last().copied().unwrap_or(0), Ordering::SeqCst);
    remote.note_segments_in_use()
}

/// Deletes this process's part of aborted checkpoint `id` from its remote
/// prefix, on the remote runtime; `notifier` is notified once the
/// returned completion holds the result.
pub(crate) fn start_discard(
    remote: &JobRemote,
    id: u64,
    notifier: Notifier,
) -> Result<Completion<Result<(), RemoteError>>, String> {
    let rt = RemoteRuntime::global()?;
    let tier = remote.tier.clone();
    Ok(rt.submit(async move { tier.discard(id).await }, move || {
        notifier.notify()
    }))
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
    remote.note_segments_in_use()?;
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
