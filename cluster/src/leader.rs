//! Leader election for the checkpoint coordinator, and the records only the
//! leader writes: the job's assignment and the pointer to the latest
//! completed global checkpoint.
//!
//! The leader is the process that created `/spate/<job>/leader` (bound to
//! its lease) while the key was absent. Its **term** is that key's create
//! revision: unique, and larger for every later leader. Every write of the
//! leader is a transaction that also compares the leader key's create
//! revision with the writer's term, so a deposed leader (its lease expired,
//! another elected) can never write, however late its request arrives. The
//! pointer is moved by compare-and-swap on its mod revision and only
//! forwards.
//!
//! Owns the leader, assignment and checkpoint keys and their values (JSON).
//! Knows nothing of object storage: the caller writes the global record
//! before it moves the pointer (docs/cluster.md, commit order).

use serde::{Deserialize, Serialize};

use crate::keys::JobKeys;
use crate::kv::{
    Compare, CoordError, Coordination, KeyRange, KeyValue, LeaseId, Revision, Txn, TxnOp,
};
use crate::membership::{decode, encode, ReadError};

/// The leader key's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leader's process id.
    pub process_id: u32,
}

/// The current leader as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentLeader {
    /// Its record.
    pub record: LeaderRecord,
    /// Its term (the leader key's create revision).
    pub term: Revision,
    /// The lease the leader key is bound to.
    pub lease: LeaseId,
}

/// This process leads the job in `term`. Holding one says nothing about the
/// present: every write made with it is fenced by the term in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// This process's id.
    pub process_id: u32,
    /// The lease the leader key is bound to.
    pub lease: LeaseId,
    /// The term: the leader key's create revision, the fencing token.
    pub term: Revision,
}

/// The outcome of a campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Campaign {
    /// This process is the leader.
    Elected(Leadership),
    /// Another process is.
    Follower(CurrentLeader),
}

/// Campaigning failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CampaignError {
    /// etcd failed (the campaign may have succeeded: campaigning again with
    /// the same lease finds out).
    #[error("campaign of process {process_id}: {source}")]
    Coordination {
        /// This process.
        process_id: u32,
        /// The failure.
        source: CoordError,
    },
    /// The leader key holds something else than a leader record.
    #[error("campaign of process {process_id}: {source}")]
    Read {
        /// This process.
        process_id: u32,
        /// The failure.
        source: ReadError,
    },
}

/// The pointer to the latest completed global checkpoint
/// (`/spate/<job>/checkpoint`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPointer {
    /// The checkpoint's id; strictly increasing across pointer moves.
    pub checkpoint_id: u64,
    /// The term of the leader that completed it.
    pub term: Revision,
    /// Where its global record is in object storage.
    pub record: String,
}

/// Moving the pointer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PointerError {
    /// This process no longer leads (another term, or none): the checkpoint
    /// is not completed and must not be committed by sinks.
    #[error(
        "leader of term {term} was deposed (leader now: {current:?}); checkpoint not completed"
    )]
    Deposed {
        /// This process's term.
        term: Revision,
        /// The leader now, if any.
        current: Option<CurrentLeader>,
    },
    /// The pointer is already at or past this checkpoint.
    #[error("checkpoint pointer is at {current}, not moving it to {proposed}")]
    Backwards {
        /// The pointer's checkpoint.
        current: u64,
        /// The one proposed.
        proposed: u64,
    },
    /// The pointer moved between the read and the swap although this
    /// process still leads: someone else writes the job's keys.
    #[error("checkpoint pointer moved concurrently under leader of term {term}")]
    Conflict {
        /// This process's term.
        term: Revision,
    },
    /// etcd failed (the pointer may have moved: moving it again to the
    /// same checkpoint finds out).
    #[error("moving the checkpoint pointer: {0}")]
    Coordination(#[from] CoordError),
    /// A record read from etcd is not what Spate writes.
    #[error("moving the checkpoint pointer: {0}")]
    Read(#[from] ReadError),
}

/// The job's assignment (`/spate/<job>/assignment`): which processes run it,
/// in global subtask order, and where it restarts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Bumped by every new assignment (a restart or a rescale).
    pub generation: u64,
    /// The term of the leader that wrote it.
    pub term: Revision,
    /// The processes, in the order their subtasks are numbered: process
    /// `processes[i]` runs global subtasks after those of `processes[..i]`.
    pub processes: Vec<AssignedProcess>,
    /// The completed checkpoint the job (re)starts from; `None` for a fresh
    /// start.
    pub restore_from: Option<u64>,
}

/// One process of an assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedProcess {
    /// Its id.
    pub process_id: u32,
    /// Its cores (subtasks).
    pub cores: u32,
}

/// Writing the assignment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssignmentError {
    /// This process no longer leads.
    #[error("leader of term {term} was deposed (leader now: {current:?}); assignment not written")]
    Deposed {
        /// This process's term.
        term: Revision,
        /// The leader now, if any.
        current: Option<CurrentLeader>,
    },
    /// The assignment changed between the read and the swap although this
    /// process still leads.
    #[error("assignment changed concurrently under leader of term {term}")]
    Conflict {
        /// This process's term.
        term: Revision,
    },
    /// etcd failed (the assignment may have been written).
    #[error("writing the assignment: {0}")]
    Coordination(#[from] CoordError),
    /// A record read from etcd is not what Spate writes.
    #[error("writing the assignment: {0}")]
    Read(#[from] ReadError),
}

fn current_from(kv: Option<&KeyValue>) -> Result<Option<CurrentLeader>, ReadError> {
    kv.map(|kv| {
        Ok(CurrentLeader {
            record: decode(kv)?,
            term: kv.create_revision,
            lease: LeaseId(kv.lease),
        })
    })
    .transpose()
}

/// The current leader, if any.
pub fn current_leader<C: Coordination + ?Sized>(
    coord: &C,
    keys: &JobKeys,
) -> Result<Option<CurrentLeader>, ReadError> {
    let reply = coord.range(&KeyRange::Key(keys.leader()))?;
    current_from(reply.kvs.first())
}

/// Campaigns for leadership: creates the leader key bound to `lease` if it
/// is absent. Finds its own key after a lost reply (same process and lease)
/// and reports itself elected with that key's term.
pub fn campaign<C: Coordination + ?Sized>(
    coord: &C,
    keys: &JobKeys,
    process_id: u32,
    lease: LeaseId,
) -> Result<Campaign, CampaignError> {
    let key = keys.leader();
    let reply = coord
        .txn(&Txn {
            compare: vec![Compare::absent(&key)],
            success: vec![TxnOp::Put {
                key: key.clone(),
                value: encode(&LeaderRecord { process_id }),
                lease: Some(lease),
            }],
            failure: vec![TxnOp::Get(KeyRange::Key(key))],
        })
        .map_err(|source| CampaignError::Coordination { process_id, source })?;
    if reply.succeeded {
        return Ok(Campaign::Elected(Leadership {
            process_id,
            lease,
            term: reply.revision,
        }));
    }
    let current = current_from(reply.kvs(0).first())
        .map_err(|source| CampaignError::Read { process_id, source })?;
    match current {
        Some(c) if c.record.process_id == process_id && c.lease == lease => {
            Ok(Campaign::Elected(Leadership {
                process_id,
                lease,
                term: c.term,
            }))
        }
        Some(c) => Ok(Campaign::Follower(c)),
        None => Err(CampaignError::Coordination {
            process_id,
            source: CoordError::Malformed {
                endpoint: String::new(),
                operation: "campaign",
                detail: "leader key neither absent nor present".into(),
            },
        }),
    }
}

/// The latest completed global checkpoint and the pointer's mod revision,
/// if any checkpoint completed.
pub fn read_pointer<C: Coordination + ?Sized>(
    coord: &C,
    keys: &JobKeys,
) -> Result<Option<(CheckpointPointer, Revision)>, ReadError> {
    let reply = coord.range(&KeyRange::Key(keys.checkpoint_pointer()))?;
    reply
        .kvs
        .first()
        .map(|kv| Ok((decode(kv)?, kv.mod_revision)))
        .transpose()
}

/// The job's assignment and its mod revision, if one was written.
pub fn read_assignment<C: Coordination + ?Sized>(
    coord: &C,
    keys: &JobKeys,
) -> Result<Option<(Assignment, Revision)>, ReadError> {
    let reply = coord.range(&KeyRange::Key(keys.assignment()))?;
    reply
        .kvs
        .first()
        .map(|kv| Ok((decode(kv)?, kv.mod_revision)))
        .transpose()
}

impl Leadership {
    /// A fenced compare-and-swap of `key` from mod revision `expected_mod`
    /// (0: absent) to `value`. `Ok(Ok(rev))`: written at `rev`;
    /// `Ok(Err(current))`: not written, `current` leads (`None`: nobody, or
    /// still this term when the key itself moved).
    fn fenced_swap<C: Coordination + ?Sized>(
        &self,
        coord: &C,
        keys: &JobKeys,
        key: Vec<u8>,
        expected_mod: Revision,
        value: Vec<u8>,
    ) -> Result<Result<Revision, Option<CurrentLeader>>, ReadError> {
        let leader = keys.leader();
        let reply = coord.txn(&Txn {
            compare: vec![
                Compare::created_at(&leader, self.term),
                Compare::modified_at(&key, expected_mod),
            ],
            success: vec![TxnOp::Put {
                key,
                value,
                lease: None,
            }],
            failure: vec![TxnOp::Get(KeyRange::Key(leader))],
        })?;
        if reply.succeeded {
            return Ok(Ok(reply.revision));
        }
        Ok(Err(current_from(reply.kvs(0).first())?))
    }

    /// Whether this leadership is still the current one in etcd.
    pub fn is_current<C: Coordination + ?Sized>(
        &self,
        coord: &C,
        keys: &JobKeys,
    ) -> Result<bool, ReadError> {
        Ok(current_leader(coord, keys)?.is_some_and(|c| c.term == self.term))
    }

    /// Completes checkpoint `checkpoint_id` whose global record is at
    /// `record`: moves the pointer to it, fenced by this term, only forwards.
    /// The caller has made every part and the global record durable first;
    /// sinks commit only after this returns `Ok`. Calling it again after an
    /// error is safe: a pointer already at this checkpoint of this term is
    /// success.
    pub fn advance_pointer<C: Coordination + ?Sized>(
        &self,
        coord: &C,
        keys: &JobKeys,
        checkpoint_id: u64,
        record: &str,
    ) -> Result<Revision, PointerError> {
        let proposed = CheckpointPointer {
            checkpoint_id,
            term: self.term,
            record: record.to_string(),
        };
        let expected_mod = match read_pointer(coord, keys)? {
            Some((current, mod_revision)) if current == proposed => return Ok(mod_revision),
            Some((current, _)) if current.checkpoint_id >= checkpoint_id => {
                return Err(PointerError::Backwards {
                    current: current.checkpoint_id,
                    proposed: checkpoint_id,
                })
            }
            Some((_, mod_revision)) => mod_revision,
            None => 0,
        };
        match self.fenced_swap(
            coord,
            keys,
            keys.checkpoint_pointer(),
            expected_mod,
            encode(&proposed),
        )? {
            Ok(revision) => Ok(revision),
            Err(Some(c)) if c.term == self.term => Err(PointerError::Conflict { term: self.term }),
            Err(current) => Err(PointerError::Deposed {
                term: self.term,
                current,
            }),
        }
    }

    /// Writes a new assignment of the job to `processes` restarting from
    /// `restore_from`, fenced by this term; returns it with its generation
    /// (one more than the previous assignment's).
    pub fn write_assignment<C: Coordination + ?Sized>(
        &self,
        coord: &C,
        keys: &JobKeys,
        processes: Vec<AssignedProcess>,
        restore_from: Option<u64>,
    ) -> Result<Assignment, AssignmentError> {
        let (generation, expected_mod) = match read_assignment(coord, keys)? {
            Some((a, mod_revision)) => (a.generation + 1, mod_revision),
            None => (1, 0),
        };
        let assignment = Assignment {
            generation,
            term: self.term,
            processes,
            restore_from,
        };
        match self.fenced_swap(
            coord,
            keys,
            keys.assignment(),
            expected_mod,
            encode(&assignment),
        )? {
            Ok(_) => Ok(assignment),
            Err(Some(c)) if c.term == self.term => {
                Err(AssignmentError::Conflict { term: self.term })
            }
            Err(current) => Err(AssignmentError::Deposed {
                term: self.term,
                current,
            }),
        }
    }

    /// Gives leadership up: deletes the leader key if it is still this
    /// term's. Returns whether it was.
    pub fn resign<C: Coordination + ?Sized>(
        &self,
        coord: &C,
        keys: &JobKeys,
    ) -> Result<bool, CoordError> {
        let leader = keys.leader();
        let reply = coord.txn(&Txn {
            compare: vec![Compare::created_at(&leader, self.term)],
            success: vec![TxnOp::Delete(KeyRange::Key(leader))],
            failure: vec![],
        })?;
        Ok(reply.succeeded)
    }
}
