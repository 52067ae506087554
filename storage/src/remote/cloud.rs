//! The real [`ObjectBackend`]: Apache Arrow's `object_store` crate, for S3
//! (`s3://bucket/prefix`) and for a local or shared file system
//! (`file:///path`).
//!
//! Its futures need a tokio runtime: they run only on the [`RemoteRuntime`]'s
//! threads (crate::remote::RemoteRuntime), never on a glommio reactor.
//!
//! Credentials: S3 settings come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, web identity and container
//! credentials, instance metadata) through `AmazonS3Builder::from_env`, then
//! what the environment leaves unset from the AWS shared files
//! (`~/.aws/credentials`, `~/.aws/config`, profile `AWS_PROFILE`: static keys,
//! session token, region, `endpoint_url`; see `aws_files.rs`). The URL
//! may carry the non-secret settings `endpoint`, `region` and `allow_http` as
//! query parameters; a URL with any other parameter (a key, a token) is refused,
//! so that no secret can reach a log line or a report that prints the URL.
//!
//! Owns nothing but the translation of requests and errors.

use super::{ObjFuture, ObjectBackend, ObjectError, ObjectInfo};
use bytes::Bytes;
use futures_util::{FutureExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// What is wrong with a remote URL.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// Neither `s3://` nor `file://`.
    #[error("remote URL {url:?}: the scheme must be s3:// or file://")]
    Scheme {
        /// The URL.
        url: String,
    },
    /// `s3://` without a bucket, or `file://` without an absolute path.
    #[error("remote URL {url:?}: {reason}")]
    Malformed {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A query parameter other than `endpoint`, `region`, `allow_http`.
    #[error("remote URL: parameter {name:?} is not accepted (credentials come from the environment or the AWS files, never from the URL)")]
    Parameter {
        /// The parameter's name (its value is not repeated).
        name: String,
    },
    /// The object-store client could not be built.
    #[error("remote URL {url:?}: {message}")]
    Client {
        /// The URL without its query.
        url: String,
        /// The client's message.
        message: String,
    },
}

/// A parsed remote URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// `s3` or `file`.
    pub scheme: String,
    /// Bucket (S3) or empty (file).
    pub bucket: String,
    /// Prefix inside the bucket, or the absolute directory (file), without a
    /// trailing `/`.
    pub prefix: String,
    /// Accepted query parameters.
    pub params: Vec<(String, String)>,
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for RemoteUrl {
    /// The URL without its query (the query holds no secret, but an endpoint
    /// need not be in every message).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme.as_str() {
            "s3" if self.prefix.is_empty() => write!(f, "s3://{}", self.bucket),
            "s3" => write!(f, "s3://{}/{}", self.bucket, self.prefix),
            _ => write!(f, "file://{}", self.prefix),
        }
    }
}

impl RemoteUrl {
    /// Parses `s3://bucket[/prefix][?endpoint=…&region=…&allow_http=true]` or
    /// `file:///absolute/path`.
    pub fn parse(url: &str) -> Result<RemoteUrl, UrlError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut params = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !matches!(name, "endpoint" | "region" | "allow_http") {
                return Err(UrlError::Parameter {
                    name: name.to_owned(),
                });
            }
            params.push((name.to_owned(), value.to_owned()));
        }
        if let Some(rest) = base.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(UrlError::Malformed {
                    url: base.to_owned(),
                    reason: "no bucket",
                });
            }
            Ok(RemoteUrl {
                scheme: "s3".into(),
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                params,
            })
        } else if let Some(path) = base.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(UrlError::Malformed {
                    url: base.to_owned(),
                    reason: "file:// needs an absolute path (file:///dir)",
                });
            }
            if !params.is_empty() {
                return Err(UrlError::Parameter {
                    name: params[0].0.clone(),
                });
            }
            let trimmed = path.trim_end_matches('/');
            Ok(RemoteUrl {
                scheme: "file".into(),
                bucket: String::new(),
                prefix: if trimmed.is_empty() {
                    "/".into()
                } else {
                    trimmed.into()
                },
                params,
            })
        } else {
            Err(UrlError::Scheme {
                url: base.to_owned(),
            })
        }
    }
}

enum Inner {
    S3(Arc<object_store::aws::AmazonS3>),
    Local(Arc<object_store::local::LocalFileSystem>),
}

/// [`ObjectBackend`] over `object_store`. Build it (and call it) on the remote
/// runtime's threads.
pub struct CloudBackend {
    inner: Inner,
    /// Key prefix inside the bucket (S3), with a trailing `/` unless empty.
    root: String,
    url: RemoteUrl,
}

impl fmt::Debug for CloudBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudBackend")
            .field("url", &self.url)
            .finish()
    }
}

impl CloudBackend {
    /// A backend for `url`, credentials from the environment (see the module doc).
    pub fn from_url(url: &str) -> Result<CloudBackend, UrlError> {
        let parsed = RemoteUrl::parse(url)?;
        let client = |e: object_store::Error| UrlError::Client {
            url: parsed.to_string(),
            message: e.to_string(),
        };
        match parsed.scheme.as_str() {
            "s3" => {
                let mut b =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&parsed.bucket);
                // The AWS files fill in what the environment leaves unset.
                let env = |var: &str| std::env::var(var).ok();
                if let Some(profile) =
                    super::aws_files::load(&env).map_err(|message| UrlError::Client {
                        url: parsed.to_string(),
                        message,
                    })?
                {
                    b = profile.apply(b, &env).map_err(|message| UrlError::Client {
                        url: parsed.to_string(),
                        message,
                    })?;
                }
                for (name, value) in &parsed.params {
                    b = match name.as_str() {
                        "endpoint" => b.with_endpoint(value),
                        "region" => b.with_region(value),
                        _ => b.with_allow_http(value == "true" || value == "1"),
                    };
                }
                let s3 = b.build().map_err(client)?;
                let root = if parsed.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}/", parsed.prefix)
                };
                Ok(CloudBackend {
                    inner: Inner::S3(Arc::new(s3)),
                    root,
                    url: parsed,
                })
            }
            _ => {
                std::fs::create_dir_all(&parsed.prefix).map_err(|e| UrlError::Client {
                    url: parsed.to_string(),
                    message: format!("cannot create the directory: {e}"),
                })?;
                // fsync on every put: a put that returned is durable, as on S3.
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&parsed.prefix)
                    .map_err(client)?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                Ok(CloudBackend {
                    inner: Inner::Local(Arc::new(fs)),
                    root: String::new(),
                    url: parsed,
                })
            }
        }
    }

    /// The URL (without its query).
    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    /// The underlying `object_store` client and the key prefix it is used
    /// with (for benchmarks comparing the tier with plain requests).
    pub fn object_store(&self) -> (Arc<dyn ObjectStore>, &str) {
        let store: Arc<dyn ObjectStore> = match &self.inner {
            Inner::S3(s) => s.clone(),
            Inner::Local(l) => l.clone(),
        };
        (store, &self.root)
    }

    fn store(&self) -> &dyn ObjectStore {
        match &self.inner {
            Inner::S3(s) => s.as_ref(),
            Inner::Local(l) => l.as_ref(),
        }
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.root))
    }
}

fn map_err(op: &'static str, key: &str, e: object_store::Error) -> ObjectError {
    match e {
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            ObjectError::AlreadyExists {
                key: key.to_owned(),
            }
        }
        object_store::Error::NotFound { .. } => ObjectError::NotFound {
            key: key.to_owned(),
        },
        other => ObjectError::Failed {
            op,
            key: key.to_owned(),
            message: other.to_string(),
        },
    }
}

impl ObjectBackend for CloudBackend {
    fn put(&self, key: &str, data: Bytes, create_only: bool) -> ObjFuture<'_, ()> {
        let key = key.to_owned();
        async move {
            let opts = PutOptions {
                mode: if create_only {
                    PutMode::Create
                } else {
                    PutMode::Overwrite
                },
                ..PutOptions::default()
            };
            self.store()
                .put_opts(&self.path(&key), PutPayload::from(data), opts)
                .await
                .map(|_| ())
                .map_err(|e| map_err("put", &key, e))
        }
        .boxed()
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> ObjFuture<'_, Bytes> {
        let key = key.to_owned();
        async move {
            let path = self.path(&key);
            let res = match range {
                Some(r) if r.is_empty() => Ok(Bytes::new()),
                Some(r) => self.store().get_range(&path, r).await,
                None => match self.store().get(&path).await {
                    Ok(g) => g.bytes().await,
                    Err(e) => Err(e),
                },
            };
            res.map_err(|e| map_err("get", &key, e))
        }
        .boxed()
    }

    fn list(&self, prefix: &str) -> ObjFuture<'_, Vec<ObjectInfo>> {
        let prefix = prefix.to_owned();
        async move {
            let full = self.path(prefix.trim_end_matches('/'));
            let metas: Vec<object_store::ObjectMeta> = self
                .store()
                .list(Some(&full))
                .try_collect()
                .await
                .map_err(|e| map_err("list", &prefix, e))?;
            let mut out = Vec::with_capacity(metas.len());
            for m in metas {
                let full_key = m.location.to_string();
                let Some(key) = full_key.strip_prefix(&self.root) else {
                    continue;
                };
                let ms = m.last_modified.timestamp_millis().max(0) as u64;
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    size: m.size,
                    last_modified_ms: ms,
                });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        }
        .boxed()
    }

    fn delete(&self, key: &str) -> ObjFuture<'_, ()> {
        let key = key.to_owned();
        async move {
            match self.store().delete(&self.path(&key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(map_err("delete", &key, e)),
            }
        }
        .boxed()
    }

    fn supports_multipart(&self) -> bool {
        matches!(self.inner, Inner::S3(_))
    }

    fn create_multipart(&self, key: &str) -> ObjFuture<'_, String> {
        let key = key.to_owned();
        async move {
            let Inner::S3(s3) = &self.inner else {
                return Err(unsupported("create_multipart", &key));
            };
            s3.create_multipart(&self.path(&key))
                .await
                .map_err(|e| map_err("create_multipart", &key, e))
        }
        .boxed()
    }

    fn put_part(
        &self,
        key: &str,
        upload: &str,
        index: usize,
        data: Bytes,
    ) -> ObjFuture<'_, String> {
        let (key, upload) = (key.to_owned(), upload.to_owned());
        async move {
            let Inner::S3(s3) = &self.inner else {
                return Err(unsupported("put_part", &key));
            };
            s3.put_part(&self.path(&key), &upload, index, PutPayload::from(data))
                .await
                .map(|p| p.content_id)
                .map_err(|e| map_err("put_part", &key, e))
        }
        .boxed()
    }

    fn complete_multipart(&self, key: &str, upload: &str, parts: Vec<String>) -> ObjFuture<'_, ()> {
        let (key, upload) = (key.to_owned(), upload.to_owned());
        async move {
            let Inner::S3(s3) = &self.inner else {
                return Err(unsupported("complete_multipart", &key));
            };
            let parts = parts
                .into_iter()
                .map(|content_id| PartId { content_id })
                .collect();
            s3.complete_multipart(&self.path(&key), &upload, parts)
                .await
                .map(|_| ())
                .map_err(|e| map_err("complete_multipart", &key, e))
        }
        .boxed()
    }

    fn abort_multipart(&self, key: &str, upload: &str) -> ObjFuture<'_, ()> {
        let (key, upload) = (key.to_owned(), upload.to_owned());
        async move {
            let Inner::S3(s3) = &self.inner else {
                return Err(unsupported("abort_multipart", &key));
            };
            match s3.abort_multipart(&self.path(&key), &upload).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(map_err("abort_multipart", &key, e)),
            }
        }
        .boxed()
    }
}

fn unsupported(op: &'static str, key: &str) -> ObjectError {
    ObjectError::Failed {
        op,
        key: key.to_owned(),
        message: "multipart uploads are not supported by this backend".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_secrets() {
        let u = RemoteUrl::parse("s3://b/p/q?endpoint=http://127.0.0.1:9&allow_http=true").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("b", "p/q"));
        assert_eq!(u.to_string(), "s3://b/p/q");
        assert!(matches!(
            RemoteUrl::parse("s3://b?aws_secret_access_key=xyz"),
            Err(UrlError::Parameter { name }) if name == "aws_secret_access_key"
        ));
        let e = RemoteUrl::parse("s3://b?secret=hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        assert!(RemoteUrl::parse("gs://b").is_err());
        assert!(RemoteUrl::parse("s3:///x").is_err());
        assert!(RemoteUrl::parse("file://relative").is_err());
        assert_eq!(RemoteUrl::parse("file:///tmp/x/").unwrap().prefix, "/tmp/x");
    }
}
