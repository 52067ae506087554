//! The simulated [`Coordination`] backend: an in-memory model of etcd's
//! key-value store and leases on virtual time, with seeded faults, for
//! seeded simulations of the cluster protocol on one thread.
//!
//! Owns the model (revisions, create/mod revisions, versions, leases and the
//! keys bound to them, transactions) and the faults: a request that fails
//! before it is applied, a reply lost after it was applied, a client cut off
//! from the store (a partition of one member), and lease expiry when virtual
//! time passes a lease's deadline without a keepalive. It also keeps a log of
//! every write so that a test's oracle can replay the store's history.
//! Nothing here is used outside tests and simulations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::kv::{
    CompareOp, CompareTarget, CoordError, Coordination, KeyRange, KeyValue, Lease, LeaseId,
    RangeResponse, Revision, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

/// A small seeded generator (SplitMix64): the simulation's only source of
/// randomness, so a seed replays a run exactly.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SimRng::below(0)");
        self.next_u64() % n
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// The faults a simulated store injects, drawn from its seeded generator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFaults {
    /// Requests that fail before they are applied, per thousand.
    pub fail_request_per_mille: u32,
    /// Requests applied whose reply is lost, per thousand (the caller sees
    /// an error although the request took effect).
    pub lose_reply_per_mille: u32,
}

/// One write in the store's history, as a test's oracle replays it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteEvent {
    /// The revision of the write (several events share one revision when a
    /// transaction or a lease expiry writes several keys).
    pub revision: Revision,
    /// The key written.
    pub key: Vec<u8>,
    /// The key after the write; `None` when it was deleted.
    pub after: Option<KeyValue>,
}

struct SimLease {
    ttl_s: i64,
    expires_at_ms: u64,
    keys: HashSet<Vec<u8>>,
}

struct State {
    now_ms: u64,
    revision: Revision,
    kv: BTreeMap<Vec<u8>, KeyValue>,
    leases: HashMap<i64, SimLease>,
    next_lease: i64,
    rng: SimRng,
    faults: SimFaults,
    partitioned: HashSet<u32>,
    log: Vec<WriteEvent>,
}

/// The simulated store, shared by the [`SimClient`]s of one simulation.
#[derive(Clone)]
pub struct SimCluster {
    state: Arc<Mutex<State>>,
}

impl SimCluster {
    /// An empty store at virtual time 0 whose faults are drawn from `seed`.
    pub fn new(seed: u64, faults: SimFaults) -> Self {
        SimCluster {
            state: Arc::new(Mutex::new(State {
                now_ms: 0,
                revision: 1,
                kv: BTreeMap::new(),
                leases: HashMap::new(),
                next_lease: 0x1000,
                rng: SimRng::new(seed ^ 0x5eed_e7cd),
                faults,
                partitioned: HashSet::new(),
                log: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a failed test already.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client for member `client` (the id a partition names).
    pub fn client(&self, client: u32) -> SimClient {
        SimClient {
            cluster: self.clone(),
            client,
        }
    }

    /// The virtual time, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.lock().now_ms
    }

    /// Moves virtual time on by `ms`; every lease whose deadline passes
    /// expires and its keys are deleted.
    pub fn advance_ms(&self, ms: u64) {
        let mut s = self.lock();
        s.now_ms += ms;
        let now = s.now_ms;
        let mut expired: Vec<i64> = s
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for id in expired {
            s.revoke(id);
        }
    }

    /// Cuts `client` off from the store (its requests fail, unapplied) or
    /// joins it again.
    pub fn set_partitioned(&self, client: u32, partitioned: bool) {
        let mut s = self.lock();
        if partitioned {
            s.partitioned.insert(client);
        } else {
            s.partitioned.remove(&client);
        }
    }

    /// Changes the injected faults.
    pub fn set_faults(&self, faults: SimFaults) {
        self.lock().faults = faults;
    }

    /// Every key under `prefix` as it is now (no faults: the oracle's view).
    pub fn snapshot(&self, prefix: &[u8]) -> Vec<KeyValue> {
        let s = self.lock();
        s.kv.values()
            .filter(|kv| kv.key.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Whether lease `lease` is alive now.
    pub fn lease_alive(&self, lease: LeaseId) -> bool {
        self.lock().leases.contains_key(&lease.0)
    }

    /// The writes since the `from`th (0: since the store was created), in
    /// order.
    pub fn write_log(&self, from: usize) -> Vec<WriteEvent> {
        let s = self.lock();
        s.log.get(from..).unwrap_or_default().to_vec()
    }
}

impl State {
    fn revoke(&mut self, id: i64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        if !lease.keys.is_empty() {
            self.revision += 1;
            let mut keys: Vec<_> = lease.keys.into_iter().collect();
            keys.sort();
            for key in keys {
                if self.kv.remove(&key).is_some() {
                    self.log.push(WriteEvent {
                        revision: self.revision,
                        key,
                        after: None,
                    });
                }
            }
        }
        true
    }

    fn get(&self, range: &KeyRange) -> Vec<KeyValue> {
        match range {
            KeyRange::Key(k) => self.kv.get(k).cloned().into_iter().collect(),
            KeyRange::Prefix(p) => self
                .kv
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(p))
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }

    /// Applies a put at revision `rev` (already bumped by the caller).
    fn apply_put(&mut self, rev: Revision, key: &[u8], value: &[u8], lease: Option<LeaseId>) {
        let lease_id = lease.map_or(0, |l| l.0);
        let old = self.kv.get(key).cloned();
        if let Some(old) = &old {
            if old.lease != 0 && old.lease != lease_id {
                if let Some(l) = self.leases.get_mut(&old.lease) {
                    l.keys.remove(key);
                }
            }
        }
        if let Some(l) = self.leases.get_mut(&lease_id) {
            l.keys.insert(key.to_vec());
        }
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: old.as_ref().map_or(rev, |o| o.create_revision),
            mod_revision: rev,
            version: old.as_ref().map_or(1, |o| o.version + 1),
            lease: lease_id,
        };
        self.kv.insert(key.to_vec(), kv.clone());
        self.log.push(WriteEvent {
            revision: rev,
            key: key.to_vec(),
            after: Some(kv),
        });
    }

    fn apply_delete(&mut self, rev: Revision, range: &KeyRange) -> u64 {
        let keys: Vec<Vec<u8>> = self.get(range).into_iter().map(|kv| kv.key).collect();
        for key in &keys {
            if let Some(old) = self.kv.remove(key) {
                if let Some(l) = self.leases.get_mut(&old.lease) {
                    l.keys.remove(key);
                }
                self.log.push(WriteEvent {
                    revision: rev,
                    key: key.clone(),
                    after: None,
                });
            }
        }
        keys.len() as u64
    }

    fn compare_holds(&self, c: &crate::kv::Compare) -> bool {
        let kv = self.kv.get(&c.key);
        let ord = match &c.target {
            CompareTarget::CreateRevision(r) => kv.map_or(0, |k| k.create_revision).cmp(r),
            CompareTarget::ModRevision(r) => kv.map_or(0, |k| k.mod_revision).cmp(r),
            CompareTarget::Version(v) => kv.map_or(0, |k| k.version).cmp(v),
            // etcd: a value comparison on an absent key fails.
            CompareTarget::Value(v) => match kv {
                None => return false,
                Some(k) => k.value.as_slice().cmp(v.as_slice()),
            },
        };
        match c.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Greater => ord.is_gt(),
            CompareOp::Less => ord.is_lt(),
        }
    }

    fn lease_missing(&self, ops: &[TxnOp]) -> Option<LeaseId> {
        ops.iter().find_map(|op| match op {
            TxnOp::Put { lease: Some(l), .. } if !self.leases.contains_key(&l.0) => Some(*l),
            _ => None,
        })
    }
}

/// One member's connection to a [`SimCluster`].
#[derive(Clone)]
pub struct SimClient {
    cluster: SimCluster,
    client: u32,
}

impl SimClient {
    /// Runs `apply` on the store unless a fault prevents it; a lost reply
    /// applies it and then fails.
    fn request<T>(
        &self,
        operation: &'static str,
        apply: impl FnOnce(&mut State) -> Result<T, CoordError>,
    ) -> Result<T, CoordError> {
        let mut s = self.cluster.lock();
        let lost = |detail: &str| CoordError::Unavailable {
            endpoint: "sim".into(),
            operation,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, detail.to_string()),
        };
        if s.partitioned.contains(&self.client) {
            return Err(lost("partitioned"));
        }
        let faults = s.faults;
        if s.rng.chance(faults.fail_request_per_mille) {
            return Err(lost("request failed (injected)"));
        }
        let result = apply(&mut s)?;
        if s.rng.chance(faults.lose_reply_per_mille) {
            return Err(lost("reply lost (injected)"));
        }
        Ok(result)
    }
}

impl Coordination for SimClient {
    fn range(&self, range: &KeyRange) -> Result<RangeResponse, CoordError> {
        self.request("range", |s| {
            Ok(RangeResponse {
                revision: s.revision,
                kvs: s.get(range),
            })
        })
    }

    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Revision, CoordError> {
        self.request("put", |s| {
            if let Some(l) = lease.filter(|l| !s.leases.contains_key(&l.0)) {
                return Err(CoordError::LeaseNotFound { lease: l });
            }
            s.revision += 1;
            let rev = s.revision;
            s.apply_put(rev, key, value, lease);
            Ok(rev)
        })
    }

    fn txn(&self, txn: &Txn) -> Result<TxnResponse, CoordError> {
        self.request("txn", |s| {
            let succeeded = txn.compare.iter().all(|c| s.compare_holds(c));
            let branch = if succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            if let Some(lease) = s.lease_missing(branch) {
                return Err(CoordError::LeaseNotFound { lease });
            }
            // Writes happen at the next revision; as in etcd, a transaction
            // that changes nothing (reads, deletes of absent keys) keeps
            // the store's revision.
            let rev = s.revision + 1;
            let logged = s.log.len();
            let responses = branch
                .iter()
                .map(|op| match op {
                    TxnOp::Put { key, value, lease } => {
                        s.apply_put(rev, key, value, *lease);
                        TxnOpResponse::Put
                    }
                    TxnOp::Get(range) => TxnOpResponse::Get(s.get(range)),
                    TxnOp::Delete(range) => TxnOpResponse::Delete(s.apply_delete(rev, range)),
                })
                .collect();
            if s.log.len() > logged {
                s.revision = rev;
            }
            Ok(TxnResponse {
                succeeded,
                revision: s.revision,
                responses,
            })
        })
    }

    fn delete(&self, range: &KeyRange) -> Result<u64, CoordError> {
        self.request("deleterange", |s| {
            if s.get(range).is_empty() {
                return Ok(0);
            }
            s.revision += 1;
            let rev = s.revision;
            Ok(s.apply_delete(rev, range))
        })
    }

    fn lease_grant(&self, ttl_s: i64) -> Result<Lease, CoordError> {
        self.request("lease grant", |s| {
            s.next_lease += 1;
            let id = s.next_lease;
            let ttl_s = ttl_s.max(1);
            s.leases.insert(
                id,
                SimLease {
                    ttl_s,
                    expires_at_ms: s.now_ms + ttl_s as u64 * 1000,
                    keys: HashSet::new(),
                },
            );
            Ok(Lease {
                id: LeaseId(id),
                ttl_s,
            })
        })
    }

    fn lease_keepalive(&self, lease: LeaseId) -> Result<i64, CoordError> {
        self.request("lease keepalive", |s| {
            let now = s.now_ms;
            let l = s
                .leases
                .get_mut(&lease.0)
                .ok_or(CoordError::LeaseNotFound { lease })?;
            l.expires_at_ms = now + l.ttl_s as u64 * 1000;
            Ok(l.ttl_s)
        })
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        self.request("lease revoke", |s| {
            if s.revoke(lease.0) {
                Ok(())
            } else {
                Err(CoordError::LeaseNotFound { lease })
            }
        })
    }
}
