//! Seeded simulations of the global checkpoint protocol on one thread: the
//! real [`GlobalCoordinator`] against parts that follow the part's rules
//! (`runtime/cluster.rs`), over links that deliver each direction in order
//! at seeded delays (now and then a slow one), with parts that fail or take
//! longer than the timeout, and record writes that fail.
//!
//! Two worlds, each run for `SPATE_SIM_SEEDS` seeds (default 2000):
//! - **Records alone** (the global record is the commit point): crashes of
//!   the whole job at any moment, restarts on n - 1, n or n + 1 processes
//!   from the newest record.
//! - **With etcd** (its checkpoint pointer is the commit point): the real
//!   [`PointerCommit`] and [`PointerMove`] on the simulated etcd
//!   ([`SimCluster`]: virtual time, leases that expire, failed requests and
//!   lost replies). Each run's process 0 is granted a lease and keeps it
//!   alive, campaigns until elected, reads the pointer to choose what the
//!   run restores, and completes each checkpoint by moving the pointer,
//!   retrying while etcd does not answer. Runs end when a connection drops,
//!   when process 0 loses its lease (cut off from etcd for longer than the
//!   TTL) or cannot learn a move's outcome, and at crashes. A dropped
//!   process 0 may be cut off rather than dead: a zombie that pauses with
//!   its checkpoint's record written, then goes on trying to move the
//!   pointer while the next run elects its leader and restores. The next
//!   run's process 0 is the same process (restart in place, same lease) or a
//!   new machine (new lease; the old one lingers until it expires).
//!
//! Checked at every step: a record is written only once every part of it
//! is durable; every kept record (with etcd: every record up to the
//! pointer) is restorable, its parts in their stores; a sink commits a
//! checkpoint's output only once it is complete; a restore never goes behind
//! what a sink committed; the pointer never moves backwards, and what it
//! names is restorable at every moment, zombies included.
//! `SPATE_SIM_SEED=S` runs seed S alone, printing the etcd world's events.

use super::*;
use crate::rng::SplitMix64;
use spate_cluster::sim::{SimClient, SimCluster, SimFaults};
use spate_cluster::{
    Attempt, CoordError, Coordination, JobKeys, LeaseId, MoveError, PointerCommit, PointerMove,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Global records kept (the smallest `retained` allowed); part stores
/// keep one part more, as the runtime opens them.
const RETAINED: usize = 2;
const PART_RETAINED: usize = RETAINED + 1;
/// Process 0's lease (the simulated store counts in seconds).
const TTL_S: i64 = 1;
const TTL_MS: u64 = 1_000;
/// How often process 0 renews its lease.
const RENEW_MS: u64 = 300;
/// How long a pointer move is retried before its outcome is given up.
const MOVE_RETRY_MS: u64 = 400;

#[derive(Default)]
struct Part {
    /// Durable parts in the process's store.
    store: BTreeSet<u64>,
    /// Triggered, not yet durable: (id, when it will be).
    preparing: Option<(u64, u64)>,
    /// Durable and reported, waiting for the leader.
    outstanding: Option<u64>,
    /// Checkpoints whose output the sink committed.
    sink: BTreeSet<u64>,
}

/// A process 0 on etcd: its connection, lease and pointer.
struct Lead {
    client: u32,
    lease: LeaseId,
    /// This run's commit point (a fresh one per run, as each run opens its
    /// own).
    pointer: PointerCommit<SimClient>,
    /// When etcd last acknowledged a renewal, and when to renew next.
    renewed: u64,
    renew_at: u64,
    /// The checkpoint whose pointer move is in flight, since when.
    moving: Option<(PointerMove, u64)>,
    /// When to campaign or try the move again (`spate-bench` waits 100 ms
    /// between campaigns and 50 ms between attempts).
    retry_at: u64,
}

/// A process 0 cut off from its run that has not noticed: paused until
/// `wakes`, then it goes on with its pointer move (started then).
struct Zombie {
    lead: Lead,
    wakes: u64,
}

/// What the etcd world went through, over every seed.
#[derive(Debug, Default)]
struct Tally {
    elections: u64,
    lease_losses: u64,
    moves_failed: u64,
    zombie_moved: u64,
    zombie_refused: u64,
    dropped: u64,
}

/// etcd and what outlives a run there.
struct Etcd {
    tally: Tally,
    sim: SimCluster,
    keys: JobKeys,
    next_client: u32,
    /// This run's process 0 (`None` until its lease is granted).
    lead: Option<Lead>,
    zombies: Vec<Zombie>,
    /// The pointer when the oracle last looked.
    pointer: Option<u64>,
    /// Clients cut off from etcd: (until, client).
    partitions: Vec<(u64, u32)>,
    /// Whether a move was attempted since the oracle last read the pointer.
    attempted: bool,
    seed: u64,
}

impl Etcd {
    fn log(&self, msg: impl FnOnce() -> String) {
        if std::env::var("SPATE_SIM_SEED").is_ok() {
            eprintln!("[seed {} t={}ms] {}", self.seed, self.sim.now_ms(), msg());
        }
    }

    /// The pointer's checkpoint now (the oracle's view: no faults).
    fn pointer_now(&self) -> Option<u64> {
        let kvs = self.sim.snapshot(&self.keys.checkpoint_pointer());
        kvs.first().map(|kv| {
            let p: spate_cluster::CheckpointPointer =
                serde_json::from_slice(&kv.value).expect("a pointer record");
            p.checkpoint_id
        })
    }

    fn new_lead(&mut self, client: u32, lease: LeaseId, renewed: u64) -> Lead {
        Lead {
            client,
            lease,
            pointer: PointerCommit::new(self.sim.client(client), self.keys.clone(), Some(lease)),
            renewed,
            renew_at: renewed + RENEW_MS,
            moving: None,
            retry_at: 0,
        }
    }
}

struct World {
    rng: SplitMix64,
    now: u64,
    /// Processes of this run.
    n: usize,
    /// Every process that ever ran: a store outlives its process.
    parts: Vec<Part>,
    /// Global records on disk: id → processes of the run that took it.
    records: BTreeMap<u64, usize>,
    leader: GlobalCoordinator,
    /// In flight: (deliver at, message); per link in order.
    to_leader: Vec<VecDeque<(u64, CoordMsg)>>,
    to_part: Vec<VecDeque<(u64, CoordMsg)>>,
    completed: u64,
    /// With etcd as the commit point.
    etcd: Option<Etcd>,
    /// Restored and running (with etcd, only once process 0 chose).
    running: bool,
    /// Why the run ended, once it did.
    ended: Option<String>,
}

fn config() -> CheckpointConfig {
    CheckpointConfig {
        timeout_ms: 60,
        tolerable_failures: u32::MAX - 1,
        retained: RETAINED,
        ..CheckpointConfig::new("unused", 10)
    }
}

fn seeds() -> std::ops::Range<u64> {
    if let Some(seed) = std::env::var("SPATE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed..seed + 1;
    }
    let n = std::env::var("SPATE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    0..n
}

impl World {
    /// A run of `n` processes: without etcd restored at once from the
    /// newest record; with etcd once its process 0 leads.
    fn start(
        rng: SplitMix64,
        now: u64,
        n: usize,
        parts: Vec<Part>,
        records: BTreeMap<u64, usize>,
        etcd: Option<Etcd>,
    ) -> Self {
        let mut world = World {
            rng,
            now,
            n,
            leader: GlobalCoordinator::new(&config(), n, 1, 1),
            parts,
            records,
            to_leader: (0..n).map(|_| VecDeque::new()).collect(),
            to_part: (0..n).map(|_| VecDeque::new()).collect(),
            completed: 0,
            etcd,
            running: false,
            ended: None,
        };
        let all = world.parts.len().max(n);
        world.parts.resize_with(all, Part::default);
        if world.etcd.is_none() {
            let newest = world.records.last_key_value().map(|(&r, _)| r);
            world.restore(newest);
        }
        world
    }

    /// Every process restores checkpoint `restored` (`None`: none).
    fn restore(&mut self, restored: Option<u64>) {
        let width = restored.map(|r| {
            *self
                .records
                .get(&r)
                .unwrap_or_else(|| panic!("restoring {r}, whose record is gone"))
        });
        // discard_after: records newer than the restored one go; with a
        // commit point, every record above the pointer (all without one).
        if let Some(r) = restored.or(self.etcd.as_ref().map(|_| 0)) {
            self.records.retain(|&id, _| id <= r);
        }
        for (p, part) in self.parts.iter_mut().enumerate() {
            if let (Some(r), Some(width)) = (restored, width) {
                // Every part of the restored record is still there.
                assert!(
                    p >= width || part.store.contains(&r),
                    "part {p} lost restored checkpoint {r}"
                );
                // discard_after: parts newer than the restored record go.
                part.store.retain(|&id| id <= r);
            }
            // The sink's recovery: nothing after the restored checkpoint
            // stays committed.
            assert!(
                part.sink
                    .last()
                    .is_none_or(|&id| restored.is_some_and(|r| id <= r)),
                "part {p}'s sink committed {:?} beyond the restored checkpoint {restored:?}",
                part.sink
            );
            part.preparing = None;
            part.outstanding = None;
            if p >= self.n {
                continue;
            }
            let next_id = part
                .store
                .last()
                .map_or(1, |l| l + 1)
                .max(restored.map_or(1, |r| r + 1));
            self.to_leader[p].push_back((self.now, CoordMsg::Ready { next_id }));
        }
        let first = self
            .records
            .last_key_value()
            .map(|(&r, _)| r)
            .max(restored)
            .map_or(1, |r| r + 1);
        self.leader = GlobalCoordinator::new(&config(), self.n, 1, first);
        self.running = true;
    }

    fn delay(&mut self) -> u64 {
        let slow = self.rng.below(10) == 0;
        self.now + self.rng.below(if slow { 80 } else { 5 })
    }

    fn send_out(&mut self) {
        for (to, msg) in self.leader.take_out() {
            let at = self.delay();
            self.to_part[to].push_back((at, msg));
        }
    }

    fn part_sends(&mut self, p: usize, msg: CoordMsg) {
        let at = self.delay();
        self.to_leader[p].push_back((at, msg));
    }

    fn end(&mut self, why: String) {
        if let Some(e) = &self.etcd {
            e.log(|| format!("run ends: {why}"));
        }
        self.ended.get_or_insert(why);
    }

    /// One step: advance time a little, act on etcd, deliver what is due,
    /// let parts finish their work, poll the leader. Returns false once the
    /// run ended.
    fn step(&mut self) -> bool {
        // While a run elects its leader nothing else happens: time goes
        // faster.
        let dt = self.rng.below(if self.running { 3 } else { 20 });
        self.now += dt;
        if let Some(e) = &self.etcd {
            e.sim.advance_ms(dt);
            self.zombies_act();
            self.lead_acts();
        }
        if self.ended.is_some() {
            return false;
        }
        if self.running {
            self.run_step();
        }
        self.check();
        self.ended.is_none()
    }

    fn run_step(&mut self) {
        let n = self.n;
        // Deliver due messages, link by link in order.
        let p = self.rng.below(n as u64) as usize;
        while self.to_leader[p]
            .front()
            .is_some_and(|(at, _)| *at <= self.now)
        {
            let (_, msg) = self.to_leader[p].pop_front().unwrap();
            self.leader.on_message(p, msg, self.now).unwrap();
        }
        while self.to_part[p]
            .front()
            .is_some_and(|(at, _)| *at <= self.now)
        {
            let (_, msg) = self.to_part[p].pop_front().unwrap();
            self.part_receives(p, msg);
        }
        // A part finishes its snapshot: durable in its store, reported.
        if let Some((id, at)) = self.parts[p].preparing {
            if at <= self.now {
                self.parts[p].preparing = None;
                if self.rng.below(20) == 0 {
                    self.part_sends(
                        p,
                        CoordMsg::PartFailed {
                            id,
                            declined: false,
                            reason: "disk full".into(),
                        },
                    );
                } else {
                    let store = &mut self.parts[p].store;
                    store.insert(id);
                    while store.len() > PART_RETAINED {
                        let oldest = *store.iter().next().unwrap();
                        store.remove(&oldest);
                    }
                    self.parts[p].outstanding = Some(id);
                    self.part_sends(p, CoordMsg::PartDone { id, final_votes: 0 });
                }
            }
        }
        let moving = self
            .etcd
            .as_ref()
            .and_then(|e| e.lead.as_ref())
            .is_some_and(|l| l.moving.is_some());
        if let Some(commit) = (!moving).then(|| self.leader.poll(self.now)).flatten() {
            let id = commit.record.id;
            for (p, part) in self.parts.iter().enumerate().take(n) {
                assert!(
                    part.store.contains(&id),
                    "record {id} written before part {p} was durable"
                );
            }
            if self.records.contains_key(&id) || self.rng.below(30) == 0 {
                // Create-only: an id never names two records.
                self.leader
                    .commit_failed(id, "cannot write".into(), self.now);
            } else {
                self.records.insert(id, n);
                match &mut self.etcd {
                    Some(e) => {
                        let lead = e.lead.as_mut().expect("a running run has its leader");
                        let name = format!("cluster/checkpoint-{id:020}");
                        lead.moving = Some((PointerMove::new(id, name), self.now));
                    }
                    None => self.completed_at_commit_point(id),
                }
            }
        }
        self.send_out();
        if self.leader.fatal.is_some() {
            self.end("too many checkpoint failures".into());
        }
        // A connection drops: the run fails. With etcd, process 0 may be
        // cut off (and paused) rather than dead, its move still to come.
        if self.etcd.is_some() && self.rng.below(1_500) == 0 {
            let zombie = self.rng.below(2) == 0;
            let pause = self.rng.below(3 * TTL_MS);
            let now = self.now;
            let e = self.etcd.as_mut().unwrap();
            e.tally.dropped += 1;
            if zombie {
                if let Some(mut lead) = e.lead.take() {
                    // Its retries count from when it goes on.
                    if let Some((_, since)) = &mut lead.moving {
                        *since = now + pause;
                    }
                    e.log(|| format!("process 0 (client {}) cut off for {pause}ms", lead.client));
                    e.zombies.push(Zombie {
                        lead,
                        wakes: now + pause,
                    });
                }
            }
            self.end("a connection dropped".into());
        }
    }

    /// Checkpoint `id` is complete: older records beyond retention go, and
    /// the parts are told.
    fn completed_at_commit_point(&mut self, id: u64) {
        while self.records.len() > RETAINED {
            self.records.pop_first();
        }
        self.leader.committed(id, self.now);
        self.completed += 1;
    }

    /// This run's process 0 on etcd: its lease, its campaign and restore,
    /// its pointer move.
    fn lead_acts(&mut self) {
        let now = self.now;
        let Some(e) = &mut self.etcd else { return };
        let Some(lead) = &mut e.lead else {
            // A new machine's process 0: a lease first.
            let client = e.next_client;
            if let Ok(lease) = e.sim.client(client).lease_grant(TTL_S) {
                e.next_client += 1;
                e.log(|| format!("client {client} granted lease {}", lease.id));
                let lead = e.new_lead(client, lease.id, now);
                e.lead = Some(lead);
            }
            return;
        };
        if now >= lead.renew_at {
            lead.renew_at = now + RENEW_MS;
            match e.sim.client(lead.client).lease_keepalive(lead.lease) {
                Ok(_) => lead.renewed = now,
                Err(CoordError::LeaseNotFound { .. }) => {
                    return self.lease_lost("its lease expired");
                }
                Err(_) => {}
            }
        }
        if now > lead.renewed + TTL_MS {
            // The keepalive gives up: etcd may have dropped the lease.
            return self.lease_lost("no renewal acknowledged within the TTL");
        }
        if now < lead.retry_at {
            return;
        }
        if !self.running {
            // Elected before the pointer is read: every earlier leader is
            // fenced from then on.
            lead.retry_at = now + 100;
            if let Ok(Ok(_)) = lead.pointer.lead() {
                if let Ok(p) = lead.pointer.latest() {
                    let client = lead.client;
                    e.log(|| format!("client {client} leads; restores {p:?}"));
                    e.tally.elections += 1;
                    self.restore(p);
                }
            }
            return;
        }
        let Some((mv, since)) = &mut lead.moving else {
            return;
        };
        let id = mv.checkpoint_id;
        e.attempted = true;
        let failed = match mv.attempt(&lead.pointer) {
            Attempt::Moved => {
                lead.moving = None;
                return self.completed_at_commit_point(id);
            }
            Attempt::Retry(why) if now >= *since + MOVE_RETRY_MS => mv.give_up(why),
            Attempt::Retry(_) => {
                lead.retry_at = now + 50;
                return;
            }
            Attempt::Failed(e) => e,
        };
        lead.moving = None;
        e.tally.moves_failed += 1;
        e.log(|| format!("move to {id}: {failed:?}"));
        // The run fails and deletes nothing, as the runtime does.
        match failed {
            MoveError::Deposed(reason) | MoveError::Unknown(reason) => self.end(reason),
        }
    }

    /// Process 0 noticed its lease is gone: the run fails, and the next
    /// one's process 0 needs a new lease.
    fn lease_lost(&mut self, why: &str) {
        if let Some(e) = &mut self.etcd {
            e.lead = None;
            e.tally.lease_losses += 1;
        }
        self.end(format!("process 0: {why}"));
    }

    /// Zombies that woke go on with their pointer moves; one that finishes
    /// (moved, refused or given up) stops.
    fn zombies_act(&mut self) {
        let now = self.now;
        let Some(e) = &mut self.etcd else { return };
        let mut i = 0;
        while i < e.zombies.len() {
            let z = &mut e.zombies[i];
            let awake = now >= z.wakes.max(z.lead.retry_at);
            let Some((mv, since)) = z.lead.moving.as_mut().filter(|_| awake) else {
                if z.lead.moving.is_none() {
                    e.zombies.swap_remove(i);
                } else {
                    i += 1;
                }
                continue;
            };
            e.attempted = true;
            let outcome = match mv.attempt(&z.lead.pointer) {
                Attempt::Moved => Some(Ok(mv.checkpoint_id)),
                Attempt::Retry(why) if now >= *since + MOVE_RETRY_MS => Some(Err(mv.give_up(why))),
                Attempt::Retry(_) => None,
                Attempt::Failed(e) => Some(Err(e)),
            };
            match outcome {
                None => {
                    z.lead.retry_at = now + 50;
                    i += 1;
                }
                Some(outcome) => {
                    let client = z.lead.client;
                    e.log(|| format!("zombie client {client}: {outcome:?}"));
                    match outcome {
                        Ok(_) => e.tally.zombie_moved += 1,
                        Err(_) => e.tally.zombie_refused += 1,
                    }
                    if outcome.is_ok() {
                        // Complete: it prunes, as the runtime does.
                        while self.records.len() > RETAINED {
                            self.records.pop_first();
                        }
                    }
                    e.zombies.swap_remove(i);
                }
            }
        }
    }

    /// Now and then cuts this run's process 0 off from etcd (not from its
    /// peers) for up to twice its lease's TTL; heals the partitions due.
    fn partition_process_0(&mut self) {
        let now = self.now;
        let roll = self.rng.below(3_000);
        let ms = self.rng.below(2 * TTL_MS);
        let Some(e) = &mut self.etcd else { return };
        if let (0, Some(lead)) = (roll, &e.lead) {
            let client = lead.client;
            e.sim.set_partitioned(client, true);
            e.log(|| format!("client {client} cut off from etcd for {ms}ms"));
            e.partitions.push((now + ms, client));
        }
        let sim = &e.sim;
        e.partitions.retain(|&(until, client)| {
            let heal = until <= now;
            if heal {
                sim.set_partitioned(client, false);
            }
            !heal
        });
    }

    /// The oracle, after every step.
    fn check(&mut self) {
        // Without etcd every kept record is restorable; with it, the
        // newest `RETAINED` up to the pointer (records above it are not
        // complete, and older ones wait for the next commit's pruning).
        // The pointer is read again after every attempt to move it.
        let pointer = self.etcd.as_mut().map(|e| {
            if std::mem::take(&mut e.attempted) {
                e.pointer_now()
            } else {
                e.pointer
            }
        });
        let complete: Vec<(u64, usize)> = match pointer {
            None => self.records.iter().map(|(&r, &w)| (r, w)).collect(),
            Some(p) => self
                .records
                .range(..=p.unwrap_or(0))
                .rev()
                .take(RETAINED)
                .map(|(&r, &w)| (r, w))
                .collect(),
        };
        for (r, width) in complete {
            for (p, part) in self.parts.iter().enumerate().take(width) {
                assert!(
                    part.store.contains(&r),
                    "part {p} no longer holds record {r}'s part"
                );
            }
        }
        let Some(e) = &mut self.etcd else { return };
        let now = pointer.flatten();
        assert!(
            now >= e.pointer,
            "the pointer moved backwards from {:?} to {now:?}",
            e.pointer
        );
        if let Some(p) = now {
            assert!(
                self.records.contains_key(&p),
                "the pointer names checkpoint {p}, whose record is gone"
            );
        }
        for part in &self.parts {
            assert!(
                part.sink
                    .last()
                    .is_none_or(|&id| now.is_some_and(|p| id <= p)),
                "a sink committed {:?} beyond the pointer {now:?}",
                part.sink
            );
        }
        e.pointer = now;
    }

    fn part_receives(&mut self, p: usize, msg: CoordMsg) {
        match msg {
            CoordMsg::Trigger { id, .. } => {
                let part = &mut self.parts[p];
                if part.outstanding.is_some() || part.preparing.is_some() {
                    self.part_sends(
                        p,
                        CoordMsg::PartFailed {
                            id,
                            declined: false,
                            reason: "busy".into(),
                        },
                    );
                } else {
                    assert!(
                        part.store.last().is_none_or(|&l| l < id),
                        "trigger {id} above the part's ids"
                    );
                    let slow = self.rng.below(8) == 0;
                    let took = self.rng.below(if slow { 100 } else { 10 });
                    self.parts[p].preparing = Some((id, self.now + took));
                }
            }
            CoordMsg::Complete { id, .. } => {
                let part = &mut self.parts[p];
                assert_eq!(
                    part.outstanding,
                    Some(id),
                    "part {p} completed {id} without preparing it"
                );
                assert!(
                    self.records.contains_key(&id),
                    "checkpoint {id} completed before its record"
                );
                part.outstanding = None;
                part.sink.insert(id);
            }
            CoordMsg::Abort { id, .. } => {
                let part = &mut self.parts[p];
                if part.outstanding == Some(id) {
                    part.outstanding = None;
                    part.store.remove(&id);
                }
                if part.preparing.is_some_and(|(i, _)| i == id) {
                    part.preparing = None;
                }
            }
            other => unreachable!("{other:?} to a part"),
        }
    }

    /// The run ended (or crashed): the next one starts on `n` processes,
    /// with what outlives a run.
    fn restart(self, n: usize) -> World {
        let World {
            mut rng,
            now,
            parts,
            records,
            mut etcd,
            ..
        } = self;
        if let Some(e) = &mut etcd {
            // Every run opens its commit point afresh; process 0 is the
            // same process (same lease) unless it was lost with its run.
            if let Some(lead) = e.lead.take() {
                if rng.below(2) == 0 {
                    let lead = e.new_lead(lead.client, lead.lease, lead.renewed);
                    e.lead = Some(lead);
                } else {
                    e.log(|| format!("client {} lost; a new machine", lead.client));
                }
            }
        }
        World::start(rng, now, n, parts, records, etcd)
    }
}

/// Names the seed of a failed run (replay it with `SPATE_SIM_SEED`).
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "seed {} failed; replay it with SPATE_SIM_SEED={}",
                self.0, self.0
            );
        }
    }
}

fn rescaled(rng: &mut SplitMix64, n: usize) -> usize {
    match rng.below(3) {
        0 if n > 1 => n - 1,
        1 => n + 1,
        _ => n,
    }
}

#[test]
fn seeded_runs_keep_the_commit_order_through_failures_and_crashes() {
    let seeds = seeds();
    let mut completed = 0;
    for seed in seeds.clone() {
        let _guard = SeedGuard(seed);
        let mut rng = SplitMix64::new(seed);
        let n = 2 + rng.below(3) as usize;
        let mut world = World::start(rng, 0, n, Vec::new(), BTreeMap::new(), None);
        for _run in 0..4 {
            let crash_at = world.rng.below(2_000);
            for _ in 0..crash_at {
                if !world.step() {
                    break;
                }
            }
            completed += world.completed;
            // A crash: every process stops; the job restarts on as many
            // processes, one fewer (rescaled) or one more. A process no
            // longer in the job keeps its store: a restore reads its part
            // from there.
            let n = rescaled(&mut world.rng, world.n);
            world = world.restart(n);
        }
    }
    assert!(
        completed > seeds.end - seeds.start,
        "checkpoints complete between crashes ({completed} over {seeds:?})"
    );
}

#[test]
fn seeded_runs_with_etcd_leases_and_zombie_leaders_keep_the_pointer_restorable() {
    let seeds = seeds();
    let (mut completed, mut runs, mut tally) = (0, 0, Tally::default());
    for seed in seeds.clone() {
        let _guard = SeedGuard(seed);
        let mut rng = SplitMix64::new(seed ^ 0xe7cd);
        let faults = SimFaults {
            fail_request_per_mille: rng.below(60) as u32,
            lose_reply_per_mille: rng.below(60) as u32,
        };
        let etcd = Etcd {
            tally: std::mem::take(&mut tally),
            sim: SimCluster::new(seed, faults),
            keys: JobKeys::new("sim").unwrap(),
            next_client: 0,
            lead: None,
            zombies: Vec::new(),
            pointer: None,
            partitions: Vec::new(),
            attempted: false,
            seed,
        };
        let n = 1 + rng.below(3) as usize;
        let mut world = World::start(rng, 0, n, Vec::new(), BTreeMap::new(), Some(etcd));
        for _run in 0..6 {
            runs += 1;
            let crash_at = world.rng.below(4_000);
            for _ in 0..crash_at {
                world.partition_process_0();
                if !world.step() {
                    break;
                }
            }
            completed += world.completed;
            let n = rescaled(&mut world.rng, world.n);
            world = world.restart(n);
        }
        tally = std::mem::take(&mut world.etcd.as_mut().unwrap().tally);
    }
    let seeds_run = seeds.end - seeds.start;
    eprintln!("{seeds_run} seeds, {runs} runs, {completed} checkpoints complete: {tally:?}");
    assert!(
        completed > seeds_run,
        "checkpoints complete between failures ({completed} over {seeds_run} seeds, {runs} runs)"
    );
}
