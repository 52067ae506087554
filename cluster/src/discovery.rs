//! Finding the other processes of a job through etcd before it starts, and
//! staying a member while it runs (`docs/cluster.md` §4 and §14).
//!
//! Each process grants itself a lease, publishes its data-plane address
//! under its process id bound to that lease ([`join`]), and waits until
//! every process id `0..processes` is published. The addresses, in process
//! order, are the data plane's peer list. A [`KeepAlive`] then renews the
//! lease while the job runs. If the lease is lost, the hook runs, and the
//! caller fails its job (the others see the member vanish, and its
//! connections close). [`Membership::leave`] revokes the lease at the end.

use crate::keepalive::{KeepAlive, LeaseLost};
use crate::keys::JobKeys;
use crate::kv::{Coordination, LeaseId};
use crate::membership::{join, leave, members, JoinError, MemberInfo, ReadError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// etcd failed.
    #[error("etcd: {0}")]
    Coordination(#[from] crate::kv::CoordError),
    /// Joining failed (the id is taken by a live process, or etcd failed).
    #[error(transparent)]
    Join(#[from] JoinError),
    /// A member record could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A member does not fit this job (another process count or core count).
    #[error("member {process_id} does not fit this job: {detail}")]
    Mismatch {
        /// The member's process id.
        process_id: u32,
        /// How it differs.
        detail: String,
    },
    /// Not every process joined in time.
    #[error("process(es) {missing:?} did not join within {waited:?}")]
    Incomplete {
        /// The ids that never appeared.
        missing: Vec<u32>,
        /// How long this process waited.
        waited: Duration,
    },
    /// The keepalive thread could not start.
    #[error("cannot start the lease keepalive: {0}")]
    KeepAlive(std::io::Error),
}

/// This process's membership while its job runs.
pub struct Membership {
    coord: Arc<dyn Coordination>,
    keys: JobKeys,
    lease: LeaseId,
    keepalive: KeepAlive,
    /// Every process's data-plane address, indexed by process id.
    pub peers: Vec<String>,
    /// Stops the watcher thread, if one runs (dropped: stop).
    watcher: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Membership {
    /// The lease this process's member key is bound to.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Whether the lease is alive as this process sees it.
    pub fn is_alive(&self) -> bool {
        self.keepalive.is_alive()
    }

    /// Watches the other members every `interval` on a thread of its own
    /// (`spate-etcd-watch`): once one of them is gone (its lease expired or
    /// was revoked: the process died, hung or lost etcd), `on_missing` runs
    /// once with the missing ids. A read that fails is retried at the next
    /// interval (this process's own keepalive notices an etcd that stays
    /// away).
    pub fn watch(
        &mut self,
        interval: Duration,
        on_missing: Box<dyn FnOnce(Vec<u32>) + Send>,
    ) -> std::io::Result<()> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (coord, keys) = (self.coord.clone(), self.keys.clone());
        let processes = self.peers.len() as u32;
        let thread = std::thread::Builder::new()
            .name("spate-etcd-watch".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Ok(found) = members(&*coord, &keys) else {
                    continue;
                };
                let missing: Vec<u32> = (0..processes)
                    .filter(|p| !found.iter().any(|m| m.info.process_id == *p))
                    .collect();
                if !missing.is_empty() {
                    on_missing(missing);
                    return;
                }
            })?;
        self.watcher = Some((stop, thread));
        Ok(())
    }

    /// Leaves the job: stops watching and renewing, and revokes the lease,
    /// which deletes the member key at once.
    pub fn leave(mut self) -> Result<(), crate::kv::CoordError> {
        if let Some((stop, thread)) = self.watcher.take() {
            drop(stop);
            let _ = thread.join();
        }
        drop(self.keepalive);
        leave(&*self.coord, self.lease)
    }
}

/// Joins the job as `me` and waits until all `processes` ids are members;
/// `on_lost` runs once if the lease is lost afterwards (on the keepalive
/// thread). `ttl_s` is the lease's time to live, `wait` the longest time to
/// wait for the others.
pub fn discover(
    coord: Arc<dyn Coordination>,
    keys: &JobKeys,
    me: MemberInfo,
    processes: u32,
    ttl_s: i64,
    wait: Duration,
    on_lost: Box<dyn FnOnce(LeaseLost) + Send>,
) -> Result<Membership, DiscoveryError> {
    let lease = coord.lease_grant(ttl_s)?;
    let keepalive =
        KeepAlive::start(coord.clone(), lease, on_lost).map_err(DiscoveryError::KeepAlive)?;
    let result = (|| {
        join(&*coord, keys, &me, lease.id)?;
        let started = Instant::now();
        loop {
            let found = members(&*coord, keys)?;
            let mut peers: Vec<Option<String>> = vec![None; processes as usize];
            for m in &found {
                let id = m.info.process_id;
                if id >= processes {
                    return Err(DiscoveryError::Mismatch {
                        process_id: id,
                        detail: format!("its id is outside 0..{processes}"),
                    });
                }
                if m.info.cores != me.cores {
                    return Err(DiscoveryError::Mismatch {
                        process_id: id,
                        detail: format!("{} cores, this process {}", m.info.cores, me.cores),
                    });
                }
                peers[id as usize] = Some(m.info.address.clone());
            }
            if peers.iter().all(Option::is_some) {
                return Ok(peers.into_iter().flatten().collect());
            }
            if started.elapsed() >= wait {
                return Err(DiscoveryError::Incomplete {
                    missing: (0..processes)
                        .filter(|p| peers[*p as usize].is_none())
                        .collect(),
                    waited: wait,
                });
            }
            // The poll interval of a wait with a deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
    })();
    match result {
        Ok(peers) => Ok(Membership {
            coord,
            keys: keys.clone(),
            lease: lease.id,
            keepalive,
            peers,
            watcher: None,
        }),
        Err(e) => {
            drop(keepalive);
            let _ = leave(&*coord, lease.id);
            Err(e)
        }
    }
}
