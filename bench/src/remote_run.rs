//! What `spate-bench` keeps in a run's remote tier besides the checkpoints:
//! the run's identity (`spate-bench-run.json` at the URL's prefix, next to
//! the engine's `checkpoints/` and `extents/`, which the tier's GC leaves
//! alone), so that a run resumed on an empty `--state-dir` knows what it
//! resumes; and the benchmarks' per-variant prefixes.
//!
//! Requests run on the storage crate's remote runtime (this is a plain
//! thread, never a reactor).

use crate::resume::{self, RunIdentity};
use anyhow::Context;
use spate_storage::remote::{
    Bytes, CloudBackend, ObjectBackend, ObjectError, RemoteRuntime, RemoteTier, TierOptions,
};
use std::path::Path;
use std::sync::Arc;

fn backend(url: &str) -> anyhow::Result<(&'static RemoteRuntime, Arc<CloudBackend>)> {
    let rt = RemoteRuntime::global().map_err(anyhow::Error::msg)?;
    let owned = url.to_owned();
    let b = rt
        .block_on(async move { CloudBackend::from_url(&owned) })
        .map_err(anyhow::Error::new)?;
    Ok((rt, Arc::new(b)))
}

pub use spate_storage::remote::sub_url;

/// Deletes every object under the URL's prefix.
pub fn clear(url: &str) -> anyhow::Result<()> {
    let (rt, b) = backend(url)?;
    rt.block_on(async move {
        for o in b.list("").await? {
            b.delete(&o.key).await?;
        }
        Ok::<_, ObjectError>(())
    })
    .with_context(|| format!("emptying the remote prefix {url}"))
}

/// Copies the run's identity from the remote tier into `state_dir` if the
/// directory has none; returns the newest remote checkpoint id.
pub fn fetch_identity(url: &str, state_dir: &Path) -> anyhow::Result<Option<u64>> {
    let (rt, b) = backend(url)?;
    let fetch = b.clone();
    let (identity, ids) = rt
        .block_on(async move {
            let identity = match fetch.get(resume::RUN_FILE, None).await {
                Ok(bytes) => Some(bytes),
                Err(ObjectError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let tier = RemoteTier::new(fetch, TierOptions::default());
            Ok::<_, spate_storage::remote::RemoteError>((identity, tier.checkpoint_ids().await?))
        })
        .with_context(|| format!("reading the run's identity from {url}"))?;
    if let Some(bytes) = identity {
        if resume::read_identity(state_dir)
            .map_err(anyhow::Error::msg)?
            .is_none()
        {
            let identity: RunIdentity = serde_json::from_slice(&bytes)
                .with_context(|| format!("decoding {} in {url}", resume::RUN_FILE))?;
            resume::write_identity(state_dir, &identity).with_context(|| {
                format!("writing the run's identity into {}", state_dir.display())
            })?;
        }
    }
    Ok(ids.last().copied())
}

/// Writes the run's identity to the remote tier.
pub fn put_identity(url: &str, identity: &RunIdentity) -> anyhow::Result<()> {
    let (rt, b) = backend(url)?;
    let json = serde_json::to_vec_pretty(identity)?;
    rt.block_on(async move { b.put(resume::RUN_FILE, Bytes::from(json), false).await })
        .with_context(|| format!("writing the run's identity to {url}"))
}
