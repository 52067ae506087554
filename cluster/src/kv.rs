//! The [`Coordination`] trait: the small subset of etcd's v3 key-value and
//! lease API the cluster protocol is written against, and its value types.
//!
//! Owns the request/response types and the transport-level error
//! ([`CoordError`]). Knows nothing of HTTP, JSON or of a simulation: the real
//! backend is [`crate::etcd::EtcdClient`], the simulated one
//! [`crate::sim::SimCluster`]. Every call is blocking and must run on a
//! thread of its own, never on a glommio reactor.

use std::fmt;

/// An etcd revision: the store's logical clock, bumped by every write.
/// The leader's term is the revision at which its leader key was created.
pub type Revision = i64;

/// The id of a lease granted by etcd (never 0; 0 means "no lease").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// The time to live etcd granted, in seconds (etcd may raise a TTL
    /// below its minimum, about 1.5 times its election timeout).
    pub ttl_s: i64,
}

/// One key and its value with etcd's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the write that created the key (since its last
    /// deletion).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// The number of writes since the key was created.
    pub version: i64,
    /// The lease the key is bound to, if any (0 = none).
    pub lease: i64,
}

/// The answer to a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    /// The store's revision when the read was served.
    pub revision: Revision,
    /// The keys found, in key order.
    pub kvs: Vec<KeyValue>,
}

/// Which keys a read or a delete covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly this key.
    Key(Vec<u8>),
    /// Every key starting with this prefix.
    Prefix(Vec<u8>),
}

impl KeyRange {
    /// The first key of the range.
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Key(k) | KeyRange::Prefix(k) => k,
        }
    }

    /// etcd's `range_end` for this range: `None` for one key, the prefix
    /// with its last byte incremented for a prefix (`[0]`, every key, for
    /// an empty or all-0xff prefix).
    pub fn end(&self) -> Option<Vec<u8>> {
        match self {
            KeyRange::Key(_) => None,
            KeyRange::Prefix(p) => {
                let mut end = p.clone();
                while let Some(last) = end.pop() {
                    if last < 0xff {
                        end.push(last + 1);
                        return Some(end);
                    }
                }
                Some(vec![0])
            }
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k == key,
            KeyRange::Prefix(p) => key.starts_with(p),
        }
    }
}

/// What a comparison of a transaction looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's create revision (0 when the key is absent).
    CreateRevision(Revision),
    /// The key's last modification revision (0 when absent).
    ModRevision(Revision),
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's value.
    Value(Vec<u8>),
}

/// How a comparison compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// Not equal.
    NotEqual,
    /// The key's field is greater than the operand.
    Greater,
    /// The key's field is less than the operand.
    Less,
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// What is compared, with the operand.
    pub target: CompareTarget,
    /// How.
    pub op: CompareOp,
}

impl Compare {
    /// `key` is absent (its create revision is 0).
    pub fn absent(key: &[u8]) -> Self {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::CreateRevision(0),
            op: CompareOp::Equal,
        }
    }

    /// `key`'s create revision equals `revision`.
    pub fn created_at(key: &[u8], revision: Revision) -> Self {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::CreateRevision(revision),
            op: CompareOp::Equal,
        }
    }

    /// `key`'s last modification revision equals `revision` (0: absent).
    pub fn modified_at(key: &[u8], revision: Revision) -> Self {
        Compare {
            key: key.to_vec(),
            target: CompareTarget::ModRevision(revision),
            op: CompareOp::Equal,
        }
    }
}

/// One operation of a transaction's branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes `value` at `key`, bound to `lease` if given.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease the key is bound to (`None`: no lease).
        lease: Option<LeaseId>,
    },
    /// Reads a key range.
    Get(KeyRange),
    /// Deletes a key range.
    Delete(KeyRange),
}

/// A transaction: if every comparison holds, the success branch runs,
/// otherwise the failure branch; atomically, at one new revision if it
/// writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// The guards (all must hold).
    pub compare: Vec<Compare>,
    /// Run when every guard holds.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// A put was done.
    Put,
    /// The keys a get found.
    Get(Vec<KeyValue>),
    /// How many keys a delete removed.
    Delete(u64),
}

/// The answer to a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every comparison held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction (the revision of its
    /// writes, if it wrote).
    pub revision: Revision,
    /// One result per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResponse>,
}

impl TxnResponse {
    /// The keys the `index`th operation (a get) found; empty when that
    /// operation is not a get.
    pub fn kvs(&self, index: usize) -> &[KeyValue] {
        match self.responses.get(index) {
            Some(TxnOpResponse::Get(kvs)) => kvs,
            _ => &[],
        }
    }
}

/// A request that failed. Whether it took effect is unknown unless the
/// variant says otherwise: a reply lost after etcd applied the request
/// looks like any other transport failure, so every protocol step reads
/// back what it wrote before it retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    /// No connection, or it broke, or timed out (the request may or may not
    /// have been applied).
    #[error("etcd at {endpoint} unreachable during {operation}: {source}")]
    Unavailable {
        /// Where.
        endpoint: String,
        /// Which request.
        operation: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// etcd answered with an error (gRPC status `code`).
    #[error("etcd at {endpoint} refused {operation}: {message} (code {code})")]
    Server {
        /// Where.
        endpoint: String,
        /// Which request.
        operation: &'static str,
        /// The gRPC status code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The lease is unknown to etcd (expired or revoked).
    #[error("lease {lease} not found (expired or revoked)")]
    LeaseNotFound {
        /// The lease.
        lease: LeaseId,
    },
    /// The reply could not be understood (not HTTP, not the expected JSON,
    /// bad base64).
    #[error("malformed reply from etcd at {endpoint} to {operation}: {detail}")]
    Malformed {
        /// Where.
        endpoint: String,
        /// Which request.
        operation: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// The coordination service the cluster protocol runs against: etcd's v3
/// key-value store and leases. Blocking; implementations are shared between
/// threads.
pub trait Coordination: Send + Sync {
    /// Reads a key or a prefix.
    fn range(&self, range: &KeyRange) -> Result<RangeResponse, CoordError>;

    /// Writes `value` at `key`, bound to `lease` if given; returns the
    /// revision of the write.
    fn put(&self, key: &[u8], value: &[u8], lease: Option<LeaseId>)
        -> Result<Revision, CoordError>;

    /// Runs a transaction.
    fn txn(&self, txn: &Txn) -> Result<TxnResponse, CoordError>;

    /// Deletes a key or a prefix; returns how many keys were deleted.
    fn delete(&self, range: &KeyRange) -> Result<u64, CoordError>;

    /// Grants a lease of `ttl_s` seconds.
    fn lease_grant(&self, ttl_s: i64) -> Result<Lease, CoordError>;

    /// Renews a lease; returns its new TTL in seconds, or
    /// [`CoordError::LeaseNotFound`] when it expired or was revoked.
    fn lease_keepalive(&self, lease: LeaseId) -> Result<i64, CoordError>;

    /// Revokes a lease, deleting every key bound to it;
    /// [`CoordError::LeaseNotFound`] when it is already gone.
    fn lease_revoke(&self, lease: LeaseId) -> Result<(), CoordError>;
}

impl<C: Coordination + ?Sized> Coordination for std::sync::Arc<C> {
    fn range(&self, range: &KeyRange) -> Result<RangeResponse, CoordError> {
        (**self).range(range)
    }
    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Revision, CoordError> {
        (**self).put(key, value, lease)
    }
    fn txn(&self, txn: &Txn) -> Result<TxnResponse, CoordError> {
        (**self).txn(txn)
    }
    fn delete(&self, range: &KeyRange) -> Result<u64, CoordError> {
        (**self).delete(range)
    }
    fn lease_grant(&self, ttl_s: i64) -> Result<Lease, CoordError> {
        (**self).lease_grant(ttl_s)
    }
    fn lease_keepalive(&self, lease: LeaseId) -> Result<i64, CoordError> {
        (**self).lease_keepalive(lease)
    }
    fn lease_revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        (**self).lease_revoke(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::KeyRange;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(
            KeyRange::Prefix(b"/a/".to_vec()).end(),
            Some(b"/a0".to_vec())
        );
        assert_eq!(KeyRange::Prefix(vec![1, 0xff]).end(), Some(vec![2]));
        assert_eq!(KeyRange::Prefix(vec![0xff]).end(), Some(vec![0]));
        assert_eq!(KeyRange::Key(b"k".to_vec()).end(), None);
    }
}
