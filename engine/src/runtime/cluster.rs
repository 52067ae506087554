//! The coordinator task of a cluster job that checkpoints (reactor 0 of
//! every process): this process's part of every checkpoint and, on process
//! 0, the leader's global coordinator (`checkpoint/global.rs`,
//! `docs/cluster.md` §15).
//!
//! The part: the process's own [`Coordinator`](crate::checkpoint::coordinator)
//! in external mode over its own subtasks and store. A trigger comes from
//! the leader; once every local subtask acknowledged, the part commits its
//! blocks and metadata to its store (a prepared part), reports `PartDone`,
//! and holds the commit until the leader decides: `Complete` announces the
//! checkpoint to the subtasks (sinks commit), `Abort` discards the part from
//! the store again.
//!
//! The leader: writes each global record on a thread of its own (blocking
//! file I/O never runs on a reactor) and waits for it on the coordinator's
//! parker.

use super::{
    commit_checkpoint, remove_freed, wait_for_remote, BusyGuard, ReactorIdle, RemoteOutcome,
    PARK_RECHECK,
};
use crate::checkpoint::global::{files, CommitError, CoordMsg, GlobalCoordinator, Records};
use crate::env::{CoordinatorEnds, JobEnv};
use crate::park::Parker;
use crate::JobError;
use spate_storage::{GlommioIo, Store};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Marks the coordinator ended (the link writers may then say bye) and
/// wakes them, however the task ends.
struct EndedGuard(Arc<JobEnv>);

impl Drop for EndedGuard {
    fn drop(&mut self) {
        self.0.coordinator_ended.store(true, Ordering::SeqCst);
        if let Some(net) = &self.0.net {
            net.wake_writers();
        }
    }
}

/// Runs `work` on a thread of its own and waits for it on `parker`
/// (publish, re-check, wait: no wake-up is lost, nothing spins).
async fn off_reactor<T: Send + 'static>(
    parker: &Arc<Parker>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
    let notifier = parker.notifier();
    let filled = slot.clone();
    std::thread::Builder::new()
        .name("spate-cluster-commit".into())
        .spawn(move || {
            let result = work();
            if let Ok(mut s) = filled.lock() {
                *s = Some(result);
            }
            notifier.notify();
        })
        .map_err(|e| format!("cannot start a thread for the global record: {e}"))?;
    let take = || slot.lock().ok().and_then(|mut s| s.take());
    loop {
        if let Some(r) = take() {
            return Ok(r);
        }
        parker.prepare_park();
        if let Some(r) = take() {
            parker.unpark();
            return Ok(r);
        }
        futures_lite::future::or(parker.wait(), async {
            glommio::timer::sleep(PARK_RECHECK).await;
        })
        .await;
        parker.unpark();
    }
}

/// This process's part of the cluster's checkpoints, and on process 0 the
/// leader's global coordinator.
pub(super) async fn coordinator_task(
    env: Arc<JobEnv>,
    ends: CoordinatorEnds,
    mut store: Store<GlommioIo>,
    idle: Rc<ReactorIdle>,
) {
    let _ended = EndedGuard(env.clone());
    let (Some(net), Some(cluster), Some(checkpoint)) = (
        env.net.clone(),
        env.config.cluster.clone(),
        env.config.checkpoint.clone(),
    ) else {
        return;
    };
    let root: PathBuf = files::root_of(&checkpoint.dir);
    let remote = env.remote.get().cloned();
    // The global records: in the job's directory, or with a remote tier
    // in the object store (`docs/cluster.md` §15.9).
    let records = match remote.as_ref().and_then(|r| r.cluster.as_ref()) {
        Some(c) => c.records.clone(),
        None => Records::Local(root),
    };
    let me = net.process();
    let restored = env.restore.as_ref().map(|r| r.metadata.id);
    // Above every part in the local store and the remote prefix.
    let first_id = store
        .latest()
        .map_or(1, |r| r.id + 1)
        .max(restored.map_or(1, |r| r + 1))
        .max(
            remote
                .as_ref()
                .map_or(1, |r| r.newest.load(Ordering::SeqCst) + 1),
        );
    let Some(mut part) = env.coordinator_for(ends, first_id) else {
        return;
    };
    let parker = env.coordinator_parker.clone();
    net.set_coord_notifier(parker.notifier());
    let send = |to: usize, msg: CoordMsg| {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        net.send_coord(to, bytes);
    };
    let fail = |what: String| env.fail(JobError::Network(format!("process {me}: {what}")));
    let mut global = None;
    if me == 0 {
        // Records newer than the restored one are a branch no restore may
        // return to; ids go on after every record on disk.
        // The commit point's newest checkpoint too (a pointer never moves
        // backwards, even when a restore fell back past a damaged record).
        let (at, commit_point) = (records.clone(), cluster.commit_point.clone());
        let newest = off_reactor(&parker, move || {
            let failed =
                |e: String| format!("the global checkpoint records in {}: {e}", at.describe());
            let committed = match &commit_point {
                Some(c) => c.latest().map_err(|e| format!("{}: {e}", c.describe()))?,
                None => None,
            };
            // A restore from `r` starts a branch: every record newer goes.
            // Restoring nothing, the records above the commit point go (all
            // of them when it names none): none of them completed, and a
            // leader that failed leaves its record for this one to discard.
            let keep_up_to = match (restored, &commit_point) {
                (Some(r), _) => Some(r),
                (None, Some(_)) => Some(committed.unwrap_or(0)),
                (None, None) => None,
            };
            at.discard_after(keep_up_to).map_err(failed)?;
            let ids = at.ids().map_err(failed)?;
            Ok::<_, String>(ids.last().copied().max(committed))
        })
        .await;
        let newest = match newest {
            Ok(Ok(newest)) => newest,
            Ok(Err(e)) | Err(e) => return fail(e),
        };
        let first = newest.map_or(1, |l| l + 1).max(first_id);
        global = Some(GlobalCoordinator::new(
            &checkpoint,
            cluster.processes,
            env.config.parallelism,
            first,
        ));
    }
    send(0, CoordMsg::Ready { next_id: first_id });
    let parallelism = env.config.parallelism;
    // The part committed to the store, waiting for the leader's decision.
    let mut outstanding: Option<u64> = None;
    loop {
        if env.failed() {
            break;
        }
        if env.done.load(Ordering::SeqCst) == parallelism {
            // A prepared part the leader never completes is discarded by
            // the next restore (it is newer than the restored record).
            send(0, CoordMsg::Ended);
            break;
        }
        let now = env.clock.now_ms();
        for (from, bytes) in net.take_coord() {
            let msg = match CoordMsg::decode(&bytes) {
                Ok(msg) => msg,
                Err(e) => {
                    return fail(format!(
                        "a malformed coordination message from process {from}: {e}"
                    ))
                }
            };
            if !msg.is_leaders() {
                let taken = match &mut global {
                    Some(g) => g.on_message(from, msg, now),
                    None => Err(format!(
                        "process {from} sent {msg:?}, a message for the leader, to this process"
                    )),
                };
                if let Err(e) = taken {
                    return fail(e);
                }
                continue;
            }
            if from != 0 {
                return fail(format!("a leader's message from process {from}"));
            }
            match msg {
                CoordMsg::Trigger { id, cause } => {
                    let taken = match outstanding {
                        Some(o) => Err((
                            format!("its part of checkpoint {o} still waits for the leader"),
                            false,
                        )),
                        None => part.trigger_external(id, cause, now),
                    };
                    if let Err((reason, declined)) = taken {
                        send(
                            0,
                            CoordMsg::PartFailed {
                                id,
                                declined,
                                reason,
                            },
                        );
                    }
                }
                CoordMsg::Complete { id, is_final } => {
                    if outstanding != Some(id) {
                        return fail(format!(
                            "the leader completed checkpoint {id}, whose part here is not prepared"
                        ));
                    }
                    outstanding = None;
                    env.set_final(id, is_final);
                    part.committed(id, env.clock.now_ms());
                }
                CoordMsg::Abort { id, reason } => {
                    if outstanding == Some(id) {
                        outstanding = None;
                        let _busy = BusyGuard::new(&idle);
                        // The remote part first: a part left in the
                        // remote prefix would count against its retention.
                        if let Some(remote) = &remote {
                            let deleted = match crate::checkpoint::remote::start_discard(
                                remote,
                                id,
                                parker.notifier(),
                            ) {
                                Ok(done) => wait_for_remote(&done, &parker)
                                    .await
                                    .map_err(|e| e.to_string()),
                                Err(e) => Err(e),
                            };
                            if let Err(e) = deleted {
                                return fail(format!("checkpoint {id} failed ({reason}) and its part could not be deleted from {}: {e}", remote.url));
                            }
                        }
                        if let Err(e) = store.discard_checkpoint(id).await {
                            return fail(format!("checkpoint {id} failed ({reason}) and its part could not be discarded: {e}"));
                        }
                        part.commit_failed(id, reason, env.clock.now_ms());
                    } else {
                        part.abort_external(id, reason, now);
                    }
                }
                CoordMsg::Restore { .. } => {
                    return fail(
                        "the leader's restore decision again, after the run started".into(),
                    )
                }
                _ => unreachable!("is_leaders"),
            }
        }
        if outstanding.is_none() {
            if let Some(request) = part.poll(now) {
                let _busy = BusyGuard::new(&idle);
                let id = request.id;
                // With a remote tier a part is prepared once its remote
                // record is durable too (§15.9).
                let (outcome, freed) =
                    commit_checkpoint(&env, &mut store, request.record, request.keep_from, &parker)
                        .await;
                match outcome {
                    RemoteOutcome::Committed => {
                        outstanding = Some(id);
                        send(
                            0,
                            CoordMsg::PartDone {
                                id,
                                final_votes: env.final_votes(id),
                            },
                        );
                    }
                    RemoteOutcome::Failed(reason) => {
                        part.commit_failed(id, reason, env.clock.now_ms())
                    }
                    RemoteOutcome::Fatal(error) => {
                        env.fail(error);
                        break;
                    }
                }
                remove_freed(&mut store, &freed).await;
            }
        }
        for (id, reason, declined) in part.take_failed() {
            send(
                0,
                CoordMsg::PartFailed {
                    id,
                    declined,
                    reason,
                },
            );
        }
        if env.coordinator.manual_trigger.swap(false, Ordering::SeqCst) {
            send(0, CoordMsg::Request);
        }
        if let Some(g) = &mut global {
            if let Some(commit) = g.poll(now) {
                let _busy = BusyGuard::new(&idle);
                let (at, record, retained) =
                    (records.clone(), commit.record.clone(), checkpoint.retained);
                let commit_point = cluster.commit_point.clone();
                // The record, then the commit point if the job has one
                // (`docs/cluster.md` §15.4): complete only once both are.
                // A commit point whose outcome is unknown, or that deposed
                // this leader, fails the run and keeps the record and every
                // part: the restart's leader reads the commit point to learn
                // whether it completed, and discards it if not.
                let written = off_reactor(&parker, move || {
                    at.commit(&record).map_err(|e| {
                        CommitError::NotCommitted(format!("{}: {e}", at.describe()))
                    })?;
                    if let Some(c) = &commit_point {
                        let at_point = |r: String| format!("{}: {r}", c.describe());
                        match c.commit(&record) {
                            Ok(()) => {}
                            Err(CommitError::NotCommitted(r)) => {
                                let _ = at.remove(record.id);
                                return Err(CommitError::NotCommitted(at_point(r)));
                            }
                            Err(CommitError::Deposed(r)) => {
                                return Err(CommitError::Deposed(at_point(r)))
                            }
                            Err(CommitError::Unknown(r)) => {
                                return Err(CommitError::Unknown(at_point(r)))
                            }
                        }
                    }
                    // Complete: the older records beyond retention go.
                    if let Err(e) = at.prune(retained) {
                        eprintln!(
                            "spate: pruning global checkpoint records in {}: {e}",
                            at.describe()
                        );
                    }
                    Ok(())
                })
                .await;
                let now = env.clock.now_ms();
                match written {
                    Ok(Ok(())) => g.committed(commit.record.id, now),
                    Ok(Err(CommitError::NotCommitted(e))) | Err(e) => {
                        g.commit_failed(commit.record.id, e, now)
                    }
                    Ok(Err(e @ (CommitError::Deposed(_) | CommitError::Unknown(_)))) => {
                        let (id, reason) = (commit.record.id, e.to_string());
                        env.fail(crate::CheckpointError::CommitPointStops { id, reason }.into());
                        break;
                    }
                }
            }
            for (to, msg) in g.take_out() {
                send(to, msg);
            }
            if let Some(reason) = g.fatal.take() {
                env.fail(crate::CheckpointError::TooManyFailures { reason }.into());
                break;
            }
        }
        env.coordinator.in_progress.store(
            part.in_progress() || outstanding.is_some(),
            Ordering::SeqCst,
        );
        parker.prepare_park();
        if net.has_coord()
            || part.has_acks()
            || env.failed()
            || env.done.load(Ordering::SeqCst) == parallelism
            || env.coordinator.manual_trigger.load(Ordering::SeqCst)
        {
            parker.unpark();
            futures_lite::future::yield_now().await;
            continue;
        }
        let deadline = [
            outstanding
                .is_none()
                .then(|| part.next_deadline(now))
                .flatten(),
            global.as_ref().and_then(|g| g.next_deadline(now)),
        ]
        .into_iter()
        .flatten()
        .min();
        idle.coordinator_wake_at.set(deadline);
        let wait = match deadline {
            Some(at) if at <= now => Duration::ZERO,
            Some(at) => Duration::from_millis(at - now).min(PARK_RECHECK),
            None => PARK_RECHECK,
        };
        if wait.is_zero() {
            futures_lite::future::yield_now().await;
        } else {
            futures_lite::future::or(parker.wait(), async move {
                glommio::timer::sleep(wait).await;
            })
            .await;
        }
        idle.coordinator_wake_at.set(None);
        parker.unpark();
    }
}
