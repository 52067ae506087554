//! The checkpoint pointer as a job's commit point (`docs/cluster.md` §6 and
//! §15.4): the leader campaigns with its lease, reads the pointer to choose
//! what a run restores, and completes a checkpoint by moving the pointer
//! with the fenced compare-and-swap of [`Leadership::advance_pointer`].
//!
//! One [`PointerCommit`] serves one process; it is written against
//! [`Coordination`], so `spate-bench` runs it on etcd and the engine's
//! seeded cluster simulation on [`crate::sim::SimCluster`]. Each call makes
//! one attempt: the caller owns the waiting between attempts (real sleeps
//! there, virtual time in the simulation).
//!
//! **Unknown outcomes.** A request whose reply is lost may have been
//! applied. [`PointerMove`] remembers whether any of its attempts may have
//! moved the pointer: a refusal after such an attempt is
//! [`MoveError::Unknown`], as is giving up while etcd does not answer;
//! without one it is [`MoveError::Deposed`]. Either way the checkpoint
//! stays (record and parts) and the run fails: its restart's leader reads
//! the pointer to learn whether the checkpoint completed.
//!
//! **A failed leader deletes nothing.** The next leader discards every
//! record above the pointer when it restores, and may then reuse their ids:
//! a deposed (or cut-off) leader that deleted "its" record could delete the
//! next leader's.

use std::sync::Mutex;

use crate::leader::{campaign, read_pointer, Campaign, CurrentLeader, Leadership, PointerError};
use crate::{Coordination, JobKeys, LeaseId};

/// Process 0's view of the job's checkpoint pointer.
pub struct PointerCommit<C> {
    client: C,
    keys: JobKeys,
    /// The lease to campaign with (`None`: this process never leads and
    /// only reads the pointer).
    lease: Option<LeaseId>,
    leadership: Mutex<Option<Leadership>>,
}

/// Why a checkpoint's pointer move did not succeed. Either way the
/// checkpoint is not known to be complete and the leader must stop its run,
/// deleting nothing (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// Another leader was elected (or moved the pointer past it), and no
    /// attempt of this one moved the pointer: not complete.
    #[error("{0}")]
    Deposed(String),
    /// An attempt may have moved the pointer, or etcd stopped answering:
    /// whether the checkpoint completed is known only to a later read of
    /// the pointer.
    #[error("{0}")]
    Unknown(String),
}

/// One checkpoint's move of the pointer, over as many attempts as its caller
/// allows.
#[derive(Debug, Clone)]
pub struct PointerMove {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// Where its global record is, stored in the pointer.
    pub record: String,
    /// Whether an attempt may have moved the pointer (a lost reply).
    maybe_moved: bool,
}

/// The outcome of one [`PointerMove::attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The pointer is at this checkpoint: it is complete.
    Moved,
    /// The outcome is not known yet (etcd did not answer, or the pointer
    /// moved under this term between the read and the swap): try again.
    Retry(String),
    /// It will not move (deposed, or the pointer is already past it).
    Failed(MoveError),
}

impl PointerMove {
    /// A move of the pointer to checkpoint `checkpoint_id`, whose record is
    /// at `record`.
    pub fn new(checkpoint_id: u64, record: String) -> Self {
        PointerMove {
            checkpoint_id,
            record,
            maybe_moved: false,
        }
    }

    /// One attempt, as `leader` (campaigning first if it has not led yet).
    pub fn attempt<C: Coordination>(&mut self, leader: &PointerCommit<C>) -> Attempt {
        let leadership = match leader.lead() {
            Ok(Ok(l)) => l,
            Ok(Err(current)) => {
                return Attempt::Failed(self.deposed(format!(
                    "process {} leads the job (term {}): not moving the pointer to {}",
                    current.record.process_id, current.term, self.checkpoint_id
                )))
            }
            Err(e) => return Attempt::Retry(e),
        };
        match leadership.advance_pointer(
            &leader.client,
            &leader.keys,
            self.checkpoint_id,
            &self.record,
        ) {
            Ok(_) => Attempt::Moved,
            Err(e @ (PointerError::Coordination(_) | PointerError::Read(_))) => {
                self.maybe_moved = true;
                Attempt::Retry(e.to_string())
            }
            Err(e @ PointerError::Conflict { .. }) => Attempt::Retry(e.to_string()),
            Err(e @ (PointerError::Deposed { .. } | PointerError::Backwards { .. })) => {
                Attempt::Failed(self.deposed(e.to_string()))
            }
        }
    }

    /// The error once the caller stops retrying after `reason`.
    pub fn give_up(&self, reason: String) -> MoveError {
        MoveError::Unknown(if self.maybe_moved {
            format!("{reason} (an earlier attempt may have moved the pointer)")
        } else {
            format!("{reason} (etcd did not answer: this process may no longer lead)")
        })
    }

    fn deposed(&self, reason: String) -> MoveError {
        if self.maybe_moved {
            MoveError::Unknown(format!(
                "{reason} (an earlier attempt may have moved the pointer)"
            ))
        } else {
            MoveError::Deposed(reason)
        }
    }
}

impl<C: Coordination> PointerCommit<C> {
    /// The pointer of the job `keys` names, through `client`; `lease` is
    /// process 0's membership lease (it leads), `None` for the others.
    pub fn new(client: C, keys: JobKeys, lease: Option<LeaseId>) -> Self {
        PointerCommit {
            client,
            keys,
            lease,
            leadership: Mutex::new(None),
        }
    }

    /// Whether this process leads the job's checkpoints.
    pub fn leads(&self) -> bool {
        self.lease.is_some()
    }

    /// This process's leadership, campaigning once if it has none yet:
    /// `Ok(Err(current))` while another process holds the leader key (a
    /// previous leader's key goes with its lease), `Err` when etcd failed.
    pub fn lead(&self) -> Result<Result<Leadership, CurrentLeader>, String> {
        let mut held = self.leadership.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = &*held {
            return Ok(Ok(l.clone()));
        }
        let lease = self
            .lease
            .ok_or("only process 0 leads the job's checkpoints")?;
        match campaign(&self.client, &self.keys, 0, lease) {
            Ok(Campaign::Elected(l)) => {
                *held = Some(l.clone());
                Ok(Ok(l))
            }
            Ok(Campaign::Follower(current)) => Ok(Err(current)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The newest completed checkpoint (`None`: none yet). The leader reads
    /// it only once elected ([`lead`](Self::lead)): every earlier leader is
    /// fenced by then, so none can move the pointer after this choice.
    pub fn latest(&self) -> Result<Option<u64>, String> {
        if self.leads() && self.held().is_none() {
            return Err("process 0 reads the pointer only once it leads".into());
        }
        read_pointer(&self.client, &self.keys)
            .map(|p| p.map(|(p, _)| p.checkpoint_id))
            .map_err(|e| e.to_string())
    }

    /// The leadership won, if any.
    pub fn held(&self) -> Option<Leadership> {
        self.leadership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The job's keys.
    pub fn keys(&self) -> &JobKeys {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimCluster, SimFaults};

    fn leader(sim: &SimCluster, client: u32) -> PointerCommit<crate::sim::SimClient> {
        let c = sim.client(client);
        let lease = c.lease_grant(1).unwrap().id;
        PointerCommit::new(c, JobKeys::new("t").unwrap(), Some(lease))
    }

    fn lost_replies(sim: &SimCluster, on: bool) {
        sim.set_faults(SimFaults {
            fail_request_per_mille: 0,
            lose_reply_per_mille: if on { 1000 } else { 0 },
        });
    }

    #[test]
    fn a_lost_reply_is_retried_until_the_pointer_is_seen_moved() {
        let sim = SimCluster::new(1, SimFaults::default());
        let first = leader(&sim, 0);
        assert!(
            first.latest().is_err(),
            "the leader reads only once elected"
        );
        assert!(first.lead().unwrap().is_ok());
        assert_eq!(first.latest().unwrap(), None);
        let mut mv = PointerMove::new(4, "r4".into());
        lost_replies(&sim, true);
        assert!(matches!(mv.attempt(&first), Attempt::Retry(_)));
        lost_replies(&sim, false);
        assert_eq!(mv.attempt(&first), Attempt::Moved);
        assert_eq!(first.latest().unwrap(), Some(4));
    }

    #[test]
    fn a_deposed_leader_learns_whether_it_may_have_moved_the_pointer() {
        let sim = SimCluster::new(2, SimFaults::default());
        let first = leader(&sim, 0);
        assert!(first.lead().unwrap().is_ok());
        // One move whose reply is lost, one never tried.
        let mut maybe = PointerMove::new(1, "r1".into());
        lost_replies(&sim, true);
        assert!(matches!(maybe.attempt(&first), Attempt::Retry(_)));
        lost_replies(&sim, false);
        let mut never = PointerMove::new(2, "r2".into());
        // The first leader's lease expires; another is elected and moves
        // the pointer on.
        sim.advance_ms(1_001);
        let second = leader(&sim, 1);
        assert!(second.lead().unwrap().is_ok());
        let mut next = PointerMove::new(3, "r3".into());
        assert_eq!(next.attempt(&second), Attempt::Moved);
        assert!(matches!(
            never.attempt(&first),
            Attempt::Failed(MoveError::Deposed(_))
        ));
        assert!(matches!(
            maybe.attempt(&first),
            Attempt::Failed(MoveError::Unknown(_))
        ));
        // A process that never led cannot move it either.
        let third = leader(&sim, 2);
        assert!(matches!(
            PointerMove::new(9, "r9".into()).attempt(&third),
            Attempt::Failed(MoveError::Deposed(_))
        ));
        assert_eq!(second.latest().unwrap(), Some(3));
    }
}
