//! A seeded simulation of the coordination protocol: processes join with
//! leases, renew them, campaign, and the leader moves the checkpoint pointer
//! and rewrites the assignment, all on the simulated store with virtual
//! time, while the seed injects failed requests, lost replies, partitions of
//! one member, pauses (a process that stops renewing, then acts on a stale
//! view), crashes and resignations.
//!
//! After every step an oracle outside the protocol checks:
//! 1. at most one leader per term (no two processes ever elected with the
//!    same term);
//! 2. the pointer only advances, and only by the current leader: replaying
//!    the store's write log, every write of the pointer happens while the
//!    leader key exists with the pointer's term, and raises its checkpoint
//!    id; every move a leader was told succeeded is in that history;
//! 3. a member whose lease expired is gone: once virtual time passes the
//!    last renewal a process attempted plus the TTL, its member key (and
//!    its leader key) are absent.
//!
//! `SPATE_SIM_SEEDS=N` runs N seeds (default 2000); `SPATE_SIM_SEED=S`
//! replays seed S alone, printing its steps.

mod common;

use std::collections::{HashMap, HashSet};

use spate_cluster::sim::{SimClient, SimCluster, SimFaults, SimRng};
use spate_cluster::{
    campaign, join, members, read_pointer, AssignedProcess, Campaign, CheckpointPointer,
    CoordError, Coordination, JobKeys, KeyValue, LeaderRecord, Leadership, LeaseId, MemberInfo,
    PointerError, Revision,
};

const TTL_S: i64 = 2;
const TTL_MS: u64 = TTL_S as u64 * 1000;
const PROCESSES: u32 = 4;
const STEPS: usize = 400;

struct Proc {
    id: u32,
    client: SimClient,
    /// The lease and the local deadline (last renewal sent + TTL).
    lease: Option<(LeaseId, u64)>,
    joined: bool,
    leadership: Option<Leadership>,
    /// Neither renews nor acts until then (a pause, or stopped renewing).
    paused_until_ms: u64,
    /// Acts once on its stale view after the pause.
    stale: bool,
    /// Heals its partition then.
    partitioned_until_ms: Option<u64>,
    /// The latest time a renewal (or the grant) of the current lease may
    /// have reached the store: the oracle's bound on the lease's life.
    last_attempt_ms: u64,
}

#[derive(Default)]
struct Stats {
    elected: u64,
    pointer_moves: u64,
    deposed_refused: u64,
    backwards_refused: u64,
    members_expired: u64,
    assignments: u64,
}

struct Oracle {
    /// Term → the process elected in it.
    terms: HashMap<Revision, u32>,
    /// Pointer moves leaders were told succeeded: (checkpoint, term).
    acknowledged: Vec<(u64, Revision)>,
    /// The replay of the store's write log so far.
    replay: Replay,
}

#[derive(Default)]
struct Replay {
    /// Events replayed.
    seen: usize,
    /// The leader key after them.
    leader: Option<KeyValue>,
    /// The pointer's moves: (checkpoint, term).
    history: Vec<(u64, Revision)>,
    /// The same, as a set.
    moves: HashSet<(u64, Revision)>,
    /// Acknowledged moves checked.
    acknowledged_checked: usize,
}

fn verbose() -> bool {
    std::env::var("SPATE_SIM_SEED").is_ok()
}

fn decode_pointer(kv: &KeyValue) -> CheckpointPointer {
    serde_json::from_slice(&kv.value).expect("pointer record")
}

fn run_seed(seed: u64, stats: &mut Stats) {
    let mut rng = SimRng::new(seed);
    let faults = SimFaults {
        fail_request_per_mille: rng.below(80) as u32,
        lose_reply_per_mille: rng.below(80) as u32,
    };
    let sim = SimCluster::new(seed, faults);
    let keys = JobKeys::new("sim").unwrap();
    let mut procs: Vec<Proc> = (0..PROCESSES)
        .map(|id| Proc {
            id,
            client: sim.client(id),
            lease: None,
            joined: false,
            leadership: None,
            paused_until_ms: 0,
            stale: false,
            partitioned_until_ms: None,
            last_attempt_ms: 0,
        })
        .collect();
    let mut oracle = Oracle {
        terms: HashMap::new(),
        acknowledged: Vec::new(),
        replay: Replay::default(),
    };
    let log = |msg: String| {
        if verbose() {
            eprintln!("[seed {seed} t={}ms] {msg}", sim.now_ms());
        }
    };

    for _ in 0..STEPS {
        let now = sim.now_ms();
        let roll = rng.below(100);
        if roll < 25 {
            let ms = rng.below(900) + 1;
            sim.advance_ms(ms);
            log(format!("time +{ms}ms"));
        } else if roll < 28 {
            // Partition one member for a while (at most one at a time).
            if procs.iter().all(|p| p.partitioned_until_ms.is_none()) {
                let p = &mut procs[rng.below(PROCESSES as u64) as usize];
                let until = now + rng.below(3 * TTL_MS);
                p.partitioned_until_ms = Some(until);
                sim.set_partitioned(p.id, true);
                log(format!("partition {} until {until}", p.id));
            }
        } else if roll < 31 {
            // A pause: the process neither renews nor acts, then carries on
            // with its stale view (it may still believe it leads).
            let p = &mut procs[rng.below(PROCESSES as u64) as usize];
            p.paused_until_ms = now + rng.below(2 * TTL_MS);
            p.stale = true;
            log(format!("pause {} until {}", p.id, p.paused_until_ms));
        } else if roll < 33 {
            // A crash: the process forgets everything and starts over with
            // a new lease; the old one lingers in the store until it expires.
            let p = &mut procs[rng.below(PROCESSES as u64) as usize];
            p.lease = None;
            p.joined = false;
            p.leadership = None;
            log(format!("crash {}", p.id));
        } else {
            let i = rng.below(PROCESSES as u64) as usize;
            step(
                &mut procs[i],
                &keys,
                &mut rng,
                &mut oracle,
                stats,
                now,
                &log,
            );
        }
        for p in &mut procs {
            if p.partitioned_until_ms.is_some_and(|t| t <= sim.now_ms()) {
                p.partitioned_until_ms = None;
                sim.set_partitioned(p.id, false);
            }
        }
        check(&sim, &keys, &procs, &mut oracle, stats, seed);
    }
}

/// One action of one process, as its protocol would take it.
fn step(
    p: &mut Proc,
    keys: &JobKeys,
    rng: &mut SimRng,
    oracle: &mut Oracle,
    stats: &mut Stats,
    now: u64,
    log: &dyn Fn(String),
) {
    let c = &p.client;
    if now < p.paused_until_ms {
        return;
    }
    // Just back from a pause that struck after the process last checked
    // its lease: it acts once on that stale view.
    if std::mem::take(&mut p.stale) {
        if let Some(l) = p.leadership.clone() {
            lead(p, l, keys, rng, oracle, stats, log);
            return;
        }
    }
    // No lease, or its local deadline passed: start over with a new one.
    let lease = match p.lease {
        Some((lease, valid_until)) if now < valid_until => lease,
        _ => {
            if p.leadership.take().is_some() {
                log(format!("{} steps down: its lease ran out locally", p.id));
            }
            p.joined = false;
            p.last_attempt_ms = now;
            match c.lease_grant(TTL_S) {
                Ok(l) => {
                    p.lease = Some((l.id, now + TTL_MS));
                    l.id
                }
                Err(_) => {
                    p.lease = None;
                    return;
                }
            }
        }
    };
    // Renew once a third of the TTL has passed since the last renewal.
    let (_, valid_until) = p.lease.unwrap();
    if valid_until - now <= TTL_MS * 2 / 3 {
        p.last_attempt_ms = now;
        match c.lease_keepalive(lease) {
            Ok(_) => p.lease = Some((lease, now + TTL_MS)),
            Err(CoordError::LeaseNotFound { .. }) => {
                log(format!("{} lost its lease", p.id));
                p.lease = None;
                p.leadership = None;
                return;
            }
            Err(_) => {}
        }
    }
    if !p.joined {
        let info = MemberInfo {
            process_id: p.id,
            address: String::new(),
            cores: 1,
        };
        match join(c, keys, &info, lease) {
            Ok(_) => p.joined = true,
            // The old incarnation's key lingers until its lease expires.
            Err(_) => return,
        }
    }
    match &p.leadership {
        None => match campaign(c, keys, p.id, lease) {
            Ok(Campaign::Elected(l)) => {
                log(format!("{} elected, term {}", p.id, l.term));
                if let Some(other) = oracle.terms.insert(l.term, p.id) {
                    assert_eq!(other, p.id, "two processes elected in term {}", l.term);
                } else {
                    stats.elected += 1;
                }
                p.leadership = Some(l);
            }
            Ok(Campaign::Follower(_)) | Err(_) => {}
        },
        Some(l) => {
            let l = l.clone();
            lead(p, l, keys, rng, oracle, stats, log);
        }
    }
}

/// One action of a process that believes it leads in `l`'s term.
fn lead(
    p: &mut Proc,
    l: Leadership,
    keys: &JobKeys,
    rng: &mut SimRng,
    oracle: &mut Oracle,
    stats: &mut Stats,
    log: &dyn Fn(String),
) {
    let c = &p.client;
    if rng.chance(50) {
        if let Ok(true) = l.resign(c, keys) {
            log(format!("{} resigns term {}", p.id, l.term));
            p.leadership = None;
        }
        return;
    }
    if rng.chance(150) {
        let processes = vec![AssignedProcess {
            process_id: p.id,
            cores: 1,
        }];
        match l.write_assignment(c, keys, processes, None) {
            Ok(_) => stats.assignments += 1,
            Err(spate_cluster::AssignmentError::Deposed { .. }) => {
                stats.deposed_refused += 1;
                p.leadership = None;
            }
            Err(spate_cluster::AssignmentError::Conflict { term }) => {
                panic!("assignment conflict under a single leader (term {term})")
            }
            Err(_) => {}
        }
        return;
    }
    // Complete the next checkpoint (its parts and global record are
    // durable by now, in the real protocol).
    let mut next = match read_pointer(c, keys) {
        Ok(cur) => cur.map_or(1, |(ptr, _)| ptr.checkpoint_id + 1),
        Err(_) => return,
    };
    // Now and then an earlier checkpoint completes late, after a later one
    // moved the pointer: it must not move it back.
    if rng.chance(100) {
        next = next.saturating_sub(1 + rng.below(3)).max(1);
    }
    let record = format!("global/{}-{next}", l.term);
    let mut attempt = l.advance_pointer(c, keys, next, &record);
    // Retry once after a transport error, as the leader would.
    if matches!(attempt, Err(PointerError::Coordination(_))) {
        attempt = l.advance_pointer(c, keys, next, &record);
    }
    match attempt {
        Ok(_) => {
            log(format!(
                "{} moved the pointer to {next} (term {})",
                p.id, l.term
            ));
            stats.pointer_moves += 1;
            oracle.acknowledged.push((next, l.term));
        }
        Err(PointerError::Deposed { .. }) => {
            log(format!("{} refused: deposed (term {})", p.id, l.term));
            stats.deposed_refused += 1;
            p.leadership = None;
        }
        Err(PointerError::Conflict { term }) => {
            panic!("pointer conflict under a single leader (term {term})")
        }
        Err(PointerError::Backwards { .. }) => stats.backwards_refused += 1,
        Err(_) => {}
    }
}

/// The oracle's checks, on the store's state and history.
fn check(
    sim: &SimCluster,
    keys: &JobKeys,
    procs: &[Proc],
    oracle: &mut Oracle,
    stats: &mut Stats,
    seed: u64,
) {
    let now = sim.now_ms();
    let ctx = || format!("seed {seed} at t={now}ms (replay: SPATE_SIM_SEED={seed})");

    // 1. At most one leader per term among the processes' beliefs too.
    let mut believed: HashMap<Revision, u32> = HashMap::new();
    for p in procs {
        if let Some(l) = &p.leadership {
            if let Some(other) = believed.insert(l.term, p.id) {
                panic!(
                    "{}: processes {other} and {} both lead term {}",
                    ctx(),
                    p.id,
                    l.term
                );
            }
            assert_eq!(
                oracle.terms.get(&l.term),
                Some(&p.id),
                "{}: unrecorded term",
                ctx()
            );
        }
    }

    // 2. Replay the write log: the pointer moves only forwards, only while
    //    the leader key exists with the pointer's term, written by the
    //    process elected in that term.
    let leader_key = keys.leader();
    let pointer_key = keys.checkpoint_pointer();
    let replay = &mut oracle.replay;
    let events = sim.write_log(replay.seen);
    replay.seen += events.len();
    for event in events {
        if event.key == leader_key {
            replay.leader = event.after.clone();
        } else if event.key == pointer_key {
            let after = event
                .after
                .as_ref()
                .unwrap_or_else(|| panic!("{}: pointer deleted", ctx()));
            let ptr = decode_pointer(after);
            let l = replay.leader.as_ref().unwrap_or_else(|| {
                panic!(
                    "{}: pointer moved to {} with no leader",
                    ctx(),
                    ptr.checkpoint_id
                )
            });
            assert_eq!(
                l.create_revision,
                ptr.term,
                "{}: pointer moved by term {} while term {} leads",
                ctx(),
                ptr.term,
                l.create_revision
            );
            let record: LeaderRecord = serde_json::from_slice(&l.value).unwrap();
            assert_eq!(
                oracle
                    .terms
                    .get(&ptr.term)
                    .copied()
                    .unwrap_or(record.process_id),
                record.process_id,
                "{}",
                ctx()
            );
            let last_id = replay.history.last().map_or(0, |h| h.0);
            assert!(
                ptr.checkpoint_id > last_id,
                "{}: pointer moved back from {last_id} to {}",
                ctx(),
                ptr.checkpoint_id
            );
            replay.history.push((ptr.checkpoint_id, ptr.term));
            replay.moves.insert((ptr.checkpoint_id, ptr.term));
        }
    }
    for ack in &oracle.acknowledged[replay.acknowledged_checked..] {
        assert!(
            replay.moves.contains(ack),
            "{}: acknowledged move {ack:?} not in the pointer's history",
            ctx()
        );
    }
    replay.acknowledged_checked = oracle.acknowledged.len();

    // 3. Expired leases take their members (and leadership) with them.
    let snapshot = sim.snapshot(keys.prefix());
    let members_prefix = keys.members_prefix();
    for kv in &snapshot {
        let bound = kv.key.starts_with(&members_prefix) || kv.key == leader_key;
        assert!(
            !bound || kv.lease != 0,
            "{}: key {} is bound to no lease",
            ctx(),
            String::from_utf8_lossy(&kv.key)
        );
        if kv.lease != 0 {
            assert!(
                sim.lease_alive(LeaseId(kv.lease)),
                "{}: key {} outlives its lease",
                ctx(),
                String::from_utf8_lossy(&kv.key)
            );
        }
    }
    let live: Vec<_> = members(&sim.client(u32::MAX), keys)
        .map(|m| {
            m.into_iter()
                .map(|m| (m.info.process_id, m.lease))
                .collect()
        })
        .unwrap_or_default();
    for p in procs {
        if let Some((lease, _)) = p.lease {
            if now >= p.last_attempt_ms + TTL_MS {
                assert!(
                    !live.contains(&(p.id, lease)),
                    "{}: process {} is a member {}ms after its last renewal",
                    ctx(),
                    p.id,
                    now - p.last_attempt_ms
                );
                assert!(
                    !sim.lease_alive(lease),
                    "{}: lease of {} alive past its TTL",
                    ctx(),
                    p.id
                );
                if snapshot.iter().all(|kv| kv.lease != lease.0) && p.joined {
                    stats.members_expired += 1;
                }
            }
        }
    }
}

#[test]
fn the_simulated_store_behaves_like_etcd() {
    let sim = SimCluster::new(1, SimFaults::default());
    common::conformance(&sim.client(0), "/conformance/");
}

#[test]
fn seeded_simulation_keeps_the_coordination_guarantees() {
    let seeds: Vec<u64> = match std::env::var("SPATE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SPATE_SIM_SEED: a number")],
        Err(_) => {
            let n: u64 = std::env::var("SPATE_SIM_SEEDS")
                .map_or(2000, |s| s.parse().expect("SPATE_SIM_SEEDS: a number"));
            (0..n).collect()
        }
    };
    let mut stats = Stats::default();
    for &seed in &seeds {
        run_seed(seed, &mut stats);
    }
    eprintln!(
        "{} seeds: {} elections, {} pointer moves, {} assignments, {} writes of deposed leaders refused, {} backward moves refused, {} observations of an expired member gone",
        seeds.len(), stats.elected, stats.pointer_moves, stats.assignments, stats.deposed_refused, stats.backwards_refused, stats.members_expired
    );
    // The run exercised what it checks (not a result: a coverage floor).
    if seeds.len() >= 100 {
        assert!(stats.elected > seeds.len() as u64);
        assert!(
            stats.pointer_moves > 0
                && stats.deposed_refused > 0
                && stats.backwards_refused > 0
                && stats.members_expired > 0
        );
    }
}
