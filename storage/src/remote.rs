//! The remote tier: checkpoints copied to an object store (S3, or a shared file
//! system through `file://`), so that they outlive the machine that took them.
//!
//! What it owns: the remote layout (specified in `docs/storage-format.md` §8: extent
//! objects, create-only checkpoint records, multipart markers), uploading a
//! committed local checkpoint, choosing and downloading a remote checkpoint into an
//! empty local store directory, remote retention and garbage collection.
//! What it must not touch: the local store's files other than reading segments and,
//! for a restore into an *empty* directory, creating them; what blocks or metadata
//! mean.
//!
//! Map:
//! - [`ObjectBackend`]: the small request interface the tier is written against
//!   (create-only put, put, ranged get, list, delete, multipart).
//! - [`cloud`]: the real backend over Apache Arrow's `object_store` (S3 and local
//!   files); [`sim`]: a simulated backend injecting failed, slow and partially
//!   completed requests and crashes between any two requests; `aws_files`:
//!   the AWS shared credentials and config files (profiles), for what the
//!   environment leaves unset.
//! - [`layout`]: object names and the byte format of a remote checkpoint record.
//! - [`tier`]: [`RemoteTier`]: upload, list, restore, retention, GC.
//! - [`fill`]: [`RemoteFill`], a restore into a local directory that readers
//!   need not wait for: blocks arrive in the background, and a block asked for
//!   is read ahead of the rest.
//! - [`source`]: [`RemoteSource`], the remote tier as a read-only store
//!   directory for a `StoreReader` (the tools).
//! - [`runtime`]: [`RemoteRuntime`], the one tokio runtime of a process, on threads
//!   of its own (never on a glommio reactor), and how a reactor waits for it.
//!
//! Invariants: a remote checkpoint exists only once its record object exists, and
//! the record is written create-only after every extent it references is durable;
//! nothing a retained record references is deleted; credentials never appear in an
//! error, a report or a record (errors carry object keys and the provider's message
//! only).

mod aws_files;
pub mod cloud;
pub mod fill;
pub mod layout;
pub mod runtime;
pub mod sim;
pub mod source;
pub mod tier;

use futures_util::future::BoxFuture;
use std::ops::Range;
use std::sync::Arc;

pub use bytes::Bytes;
pub use cloud::{CloudBackend, RemoteUrl, UrlError};
pub use fill::{RemoteFill, FILL_MARKER};
pub use layout::{Extent, RemoteRecord};
pub use runtime::RemoteRuntime;
pub use sim::{SimObjects, SimRemoteFaults};
pub use source::RemoteSource;
pub use tier::{DownloadReport, GcReport, RemoteError, RemoteTier, TierOptions, UploadReport};

/// Whether `location` names a remote tier (`s3://…` or `file://…`) rather than
/// a local directory.
pub fn is_url(location: &str) -> bool {
    location.starts_with("s3://") || location.starts_with("file://")
}

/// The URL of `name` under the prefix of `url` (its query, the backend's
/// settings, kept): `s3://b/p?endpoint=…` and `x` give `s3://b/p/x?endpoint=…`.
pub fn sub_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    format!("{}/{name}{query}", base.trim_end_matches('/'))
}

/// Connects to the remote tier at `url` (credentials from the environment),
/// building the client on the process's [`RemoteRuntime`].
pub fn connect(url: &str, options: TierOptions) -> Result<Arc<RemoteTier>, String> {
    let rt = RemoteRuntime::global()?;
    let owned = url.to_owned();
    let backend = rt
        .block_on(async move { CloudBackend::from_url(&owned) })
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(RemoteTier::new(Arc::new(backend), options)))
}

/// What a request of an [`ObjectBackend`] can fail with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectError {
    /// A create-only put found the key present (S3: `412 Precondition Failed`).
    #[error("object {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The request failed (network, server, permissions): the provider's message,
    /// which names no credential.
    #[error("{op} {key}: {message}")]
    Failed {
        /// The request (`put`, `get`, …).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What the provider said.
        message: String,
    },
}

/// An object found by [`ObjectBackend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the backend's root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub last_modified_ms: u64,
}

/// Future of one request.
pub type ObjFuture<'a, T> = BoxFuture<'a, Result<T, ObjectError>>;

/// The requests the remote tier makes of an object store. Keys are `/`-separated
/// and relative to the backend's root (the URL's prefix). Every method is one
/// request (or, for [`ObjectBackend::list`], one listing), so a simulated backend can
/// fail or crash between any two of them.
pub trait ObjectBackend: Send + Sync + 'static {
    /// Writes `data` at `key` atomically; with `create_only`, fails with
    /// [`ObjectError::AlreadyExists`] if the key exists (S3 `If-None-Match: *`).
    fn put(&self, key: &str, data: Bytes, create_only: bool) -> ObjFuture<'_, ()>;
    /// Reads `range` of an object (the whole object if `None`).
    fn get(&self, key: &str, range: Option<Range<u64>>) -> ObjFuture<'_, Bytes>;
    /// Lists the objects whose key starts with `prefix` (a directory, ending in `/`).
    fn list(&self, prefix: &str) -> ObjFuture<'_, Vec<ObjectInfo>>;
    /// Deletes an object; deleting a missing object succeeds.
    fn delete(&self, key: &str) -> ObjFuture<'_, ()>;
    /// Whether the multipart requests below are available (S3 yes, local files no).
    fn supports_multipart(&self) -> bool;
    /// Starts a multipart upload to `key`; returns its upload id.
    fn create_multipart(&self, key: &str) -> ObjFuture<'_, String>;
    /// Uploads part `index` (from 0); returns the part's id for completion.
    fn put_part(&self, key: &str, upload: &str, index: usize, data: Bytes)
        -> ObjFuture<'_, String>;
    /// Completes an upload from its parts' ids, in order: the object appears whole.
    fn complete_multipart(&self, key: &str, upload: &str, parts: Vec<String>) -> ObjFuture<'_, ()>;
    /// Aborts an upload and frees its parts; aborting an unknown upload succeeds.
    fn abort_multipart(&self, key: &str, upload: &str) -> ObjFuture<'_, ()>;
}
