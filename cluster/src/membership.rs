//! Membership: a process is in the job while its key
//! `/spate/<job>/members/<process-id>` exists, and that key is bound to the
//! process's lease, so a process that stops renewing disappears when the
//! lease expires (no failure detector of Spate's own).
//!
//! Owns the member key and its value ([`MemberInfo`], JSON). Renewing the
//! lease is the caller's (the [`crate::KeepAlive`] thread, or a simulation's
//! driver).

use serde::{Deserialize, Serialize};

use crate::keys::JobKeys;
use crate::kv::{
    Compare, CoordError, Coordination, KeyRange, KeyValue, LeaseId, Revision, Txn, TxnOp,
};

/// What a member publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The process's id in the job (`--process-id`).
    pub process_id: u32,
    /// Where its data plane listens (`host:port`), for the processes that
    /// will connect to it.
    pub address: String,
    /// How many cores (subtasks) it runs.
    pub cores: u32,
}

/// A live member as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// What it published.
    pub info: MemberInfo,
    /// The lease its key is bound to.
    pub lease: LeaseId,
    /// The revision at which it joined.
    pub joined_at: Revision,
}

/// Joining failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// Another live process holds this process id.
    #[error("process id {process_id} is taken by a live process (lease {holder})")]
    IdTaken {
        /// The id.
        process_id: u32,
        /// The other process's lease.
        holder: LeaseId,
    },
    /// etcd failed (the join may or may not have happened: joining again
    /// with the same lease is safe).
    #[error("joining as process {process_id}: {source}")]
    Coordination {
        /// The id.
        process_id: u32,
        /// The failure.
        source: CoordError,
    },
}

/// Reading a record from etcd failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// etcd failed.
    #[error(transparent)]
    Coordination(#[from] CoordError),
    /// A key's value is not what Spate writes there.
    #[error("etcd key {key}: unexpected value ({detail})")]
    Malformed {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T, ReadError> {
    serde_json::from_slice(&kv.value).map_err(|e| ReadError::Malformed {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        detail: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of numbers and strings always serialize.
    serde_json::to_vec(value).expect("a coordination record serializes to JSON")
}

/// Publishes `info` as a member of the job, bound to `lease`. Idempotent for
/// the same lease (a retry after a lost reply finds its own key); refused
/// while another live process holds the id.
pub fn join<C: Coordination + ?Sized>(
    coord: &C,
    keys: &JobKeys,
    info: &MemberInfo,
    lease: LeaseId,
) -> Result<Revision, JoinError> {
    let key = keys.member(info.process_id);
    let wrap = |source| JoinError::Coordination {
        process_id: info.process_id,
        source,
    };
    let reply = coord
        .txn(&Txn {
            compare: vec![Compare::absent(&key)],
            success: vec![TxnOp::Put {
                key: key.clone(),
                value: encode(info),
                lease: Some(lease),
            }],
            failure: vec![TxnOp::Get(KeyRange::Key(key.clone()))],
        })
        .map_err(wrap)?;
    if reply.succeeded {
        return Ok(reply.revision);
    }
    match reply.kvs(0).first() {
        Some(kv) if kv.lease == lease.0 => Ok(kv.create_revision),
        Some(kv) => Err(JoinError::IdTaken {
            process_id: info.process_id,
            holder: LeaseId(kv.lease),
        }),
        // Deleted between the compare and the get cannot happen (one
        // transaction); treat it as a transient failure.
        None => Err(wrap(CoordError::Malformed {
            endpoint: String::new(),
            operation: "join",
            detail: "member key neither absent nor present".into(),
        })),
    }
}

/// The live members, in key order.
pub fn members<C: Coordination + ?Sized>(
    coord: &C,
    keys: &JobKeys,
) -> Result<Vec<Member>, ReadError> {
    let reply = coord.range(&KeyRange::Prefix(keys.members_prefix()))?;
    reply
        .kvs
        .iter()
        .map(|kv| {
            Ok(Member {
                info: decode(kv)?,
                lease: LeaseId(kv.lease),
                joined_at: kv.create_revision,
            })
        })
        .collect()
}

/// Leaves the job at once: revokes `lease`, which deletes the member key
/// (and the leader key, if this process leads). A lease already gone is
/// fine.
pub fn leave<C: Coordination + ?Sized>(coord: &C, lease: LeaseId) -> Result<(), CoordError> {
    match coord.lease_revoke(lease) {
        Ok(()) | Err(CoordError::LeaseNotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
