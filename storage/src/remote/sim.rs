//! [`SimObjects`]: an in-memory [`ObjectBackend`] with injected faults, for seeded
//! tests of the remote tier.
//!
//! Requests are numbered from 0 in the order they are issued. Faults, chosen per
//! request from a seed ([`SimRemoteFaults`]): a request fails without effect; a
//! request takes effect but its reply is lost (the caller sees an error: a
//! partially completed request, as when a connection drops after S3 stored the
//! object); a request is slow (its future is pending a few times before it
//! completes); and a crash before request `n`: it and every later request fail,
//! without effect, until [`SimObjects::restart`] (a new process on the same
//! bucket). Multipart uploads are staged as S3 stages them: parts are invisible
//! until completion, and a crash leaves them staged until aborted.
//!
//! Owns nothing outside its memory; no real time, no threads.

use super::{ObjFuture, ObjectBackend, ObjectError, ObjectInfo};
use bytes::Bytes;
use futures_util::FutureExt;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

/// Fault plan of a [`SimObjects`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimRemoteFaults {
    /// Seed of the per-request choices.
    pub seed: u64,
    /// Per mille of requests that fail without effect.
    pub fail_permille: u32,
    /// Per mille of requests that take effect but report a failure.
    pub lost_reply_permille: u32,
    /// Per mille of requests that are slow (pending several polls).
    pub slow_permille: u32,
    /// Crash before this request number (it and all later requests fail).
    pub crash_before: Option<u64>,
}

#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    modified_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    uploads: HashMap<String, (String, BTreeMap<usize, Bytes>)>,
    next_upload: u64,
    requests: u64,
    now_ms: u64,
    crashed: bool,
    faults: SimRemoteFaults,
    rng: u64,
    /// Successful requests by kind (`put`, `put_part`, …).
    counts: BTreeMap<&'static str, u64>,
}

enum Fate {
    Ok,
    Fail,
    LostReply,
}

/// The simulated object store; clones share the same objects.
#[derive(Debug, Clone, Default)]
pub struct SimObjects {
    state: Arc<Mutex<State>>,
}

impl SimObjects {
    /// An empty store without faults.
    pub fn new() -> SimObjects {
        SimObjects::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the fault plan (the request counter is kept).
    pub fn set_faults(&self, faults: SimRemoteFaults) {
        let mut s = self.lock();
        s.rng = faults.seed ^ 0x9e37_79b9_7f4a_7c15;
        s.faults = faults;
    }

    /// A new process: clears the crash and the fault plan.
    pub fn restart(&self) {
        let mut s = self.lock();
        s.crashed = false;
        s.faults = SimRemoteFaults::default();
    }

    /// Requests issued so far (including failed ones).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Whether the simulated process has crashed.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Successful requests of kind `op` so far.
    pub fn count(&self, op: &str) -> u64 {
        self.lock().counts.get(op).copied().unwrap_or(0)
    }

    /// Sets the clock that stamps objects' modification times.
    pub fn set_now_ms(&self, now_ms: u64) {
        self.lock().now_ms = now_ms;
    }

    /// Keys of every object, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    /// Multipart uploads staged and neither completed nor aborted.
    pub fn staged_uploads(&self) -> usize {
        self.lock().uploads.len()
    }

    /// Replaces an object's bytes directly (to model damage).
    pub fn overwrite_raw(&self, key: &str, data: Vec<u8>) {
        let mut s = self.lock();
        let now = s.now_ms;
        s.objects.insert(
            key.to_owned(),
            Object {
                data: Bytes::from(data),
                modified_ms: now,
            },
        );
    }

    fn next_random(s: &mut State) -> u32 {
        // xorshift64*
        let mut x = s.rng.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32 % 1000
    }

    /// Numbers the request and decides its fate; returns the number of
    /// pending polls (slowness).
    fn admit(&self, op: &'static str, key: &str) -> Result<(Fate, u32), ObjectError> {
        let mut s = self.lock();
        let n = s.requests;
        s.requests += 1;
        if s.faults.crash_before.is_some_and(|c| n >= c) {
            s.crashed = true;
        }
        if s.crashed {
            return Err(ObjectError::Failed {
                op,
                key: key.to_owned(),
                message: format!("simulated crash before request {n}"),
            });
        }
        let f = s.faults.clone();
        let fail = Self::next_random(&mut s) < f.fail_permille;
        let lost = Self::next_random(&mut s) < f.lost_reply_permille;
        let slow = Self::next_random(&mut s) < f.slow_permille;
        let fate = if fail {
            Fate::Fail
        } else if lost {
            Fate::LostReply
        } else {
            Fate::Ok
        };
        Ok((fate, if slow { 3 } else { 0 }))
    }

    /// Runs one request: admission, slowness, effect, fate.
    fn request<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        key: &str,
        effect: impl FnOnce(&mut State) -> Result<T, ObjectError> + Send + 'a,
    ) -> ObjFuture<'a, T> {
        let key = key.to_owned();
        async move {
            let (fate, slow_polls) = self.admit(op, &key)?;
            for _ in 0..slow_polls {
                YieldOnce(false).await;
            }
            let failed = |message: &str| ObjectError::Failed {
                op,
                key: key.clone(),
                message: message.to_owned(),
            };
            match fate {
                Fate::Fail => Err(failed("simulated request failure")),
                Fate::Ok | Fate::LostReply => {
                    let mut s = self.lock();
                    let out = effect(&mut s)?;
                    *s.counts.entry(op).or_default() += 1;
                    match fate {
                        Fate::LostReply => {
                            Err(failed("simulated lost reply (the request took effect)"))
                        }
                        _ => Ok(out),
                    }
                }
            }
        }
        .boxed()
    }
}

/// Pending once, waking itself: a slow request.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

impl ObjectBackend for SimObjects {
    fn put(&self, key: &str, data: Bytes, create_only: bool) -> ObjFuture<'_, ()> {
        let k = key.to_owned();
        self.request("put", key, move |s| {
            if create_only && s.objects.contains_key(&k) {
                return Err(ObjectError::AlreadyExists { key: k });
            }
            let now = s.now_ms;
            s.objects.insert(
                k,
                Object {
                    data,
                    modified_ms: now,
                },
            );
            Ok(())
        })
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> ObjFuture<'_, Bytes> {
        let k = key.to_owned();
        self.request("get", key, move |s| {
            let o = s
                .objects
                .get(&k)
                .ok_or_else(|| ObjectError::NotFound { key: k.clone() })?;
            let len = o.data.len() as u64;
            match range {
                None => Ok(o.data.clone()),
                Some(r) if r.start <= r.end && r.end <= len => {
                    Ok(o.data.slice(r.start as usize..r.end as usize))
                }
                Some(r) => Err(ObjectError::Failed {
                    op: "get",
                    key: k,
                    message: format!("range {r:?} outside an object of {len} bytes"),
                }),
            }
        })
    }

    fn list(&self, prefix: &str) -> ObjFuture<'_, Vec<ObjectInfo>> {
        let p = prefix.to_owned();
        self.request("list", prefix, move |s| {
            Ok(s.objects
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(&p))
                .map(|(k, o)| ObjectInfo {
                    key: k.clone(),
                    size: o.data.len() as u64,
                    last_modified_ms: o.modified_ms,
                })
                .collect())
        })
    }

    fn delete(&self, key: &str) -> ObjFuture<'_, ()> {
        let k = key.to_owned();
        self.request("delete", key, move |s| {
            s.objects.remove(&k);
            Ok(())
        })
    }

    fn supports_multipart(&self) -> bool {
        true
    }

    fn create_multipart(&self, key: &str) -> ObjFuture<'_, String> {
        let k = key.to_owned();
        self.request("create_multipart", key, move |s| {
            s.next_upload += 1;
            let id = format!("upload-{}", s.next_upload);
            s.uploads.insert(id.clone(), (k, BTreeMap::new()));
            Ok(id)
        })
    }

    fn put_part(
        &self,
        key: &str,
        upload: &str,
        index: usize,
        data: Bytes,
    ) -> ObjFuture<'_, String> {
        let (k, u) = (key.to_owned(), upload.to_owned());
        self.request("put_part", key, move |s| {
            let (_, parts) = s
                .uploads
                .get_mut(&u)
                .ok_or_else(|| ObjectError::NotFound { key: k.clone() })?;
            parts.insert(index, data);
            Ok(format!("{u}-part-{index}"))
        })
    }

    fn complete_multipart(&self, key: &str, upload: &str, parts: Vec<String>) -> ObjFuture<'_, ()> {
        let (k, u) = (key.to_owned(), upload.to_owned());
        self.request("complete_multipart", key, move |s| {
            let Some((target, staged)) = s.uploads.get(&u) else {
                return Err(ObjectError::NotFound { key: k });
            };
            if *target != k || staged.len() != parts.len() {
                return Err(ObjectError::Failed {
                    op: "complete_multipart",
                    key: k,
                    message: "parts do not match the upload".into(),
                });
            }
            let mut data = Vec::new();
            for p in staged.values() {
                data.extend_from_slice(p);
            }
            s.uploads.remove(&u);
            let now = s.now_ms;
            s.objects.insert(
                k,
                Object {
                    data: Bytes::from(data),
                    modified_ms: now,
                },
            );
            Ok(())
        })
    }

    fn abort_multipart(&self, key: &str, upload: &str) -> ObjFuture<'_, ()> {
        let u = upload.to_owned();
        self.request("abort_multipart", key, move |s| {
            s.uploads.remove(&u);
            Ok(())
        })
    }
}
