//! Checkpoints guarantee what their mode promises: a job restored from a
//! checkpoint, with sources replayed from its offsets, ends with the keyed
//! results of a run that never failed (exactly-once modes), or with every
//! record counted at least once (at-least-once). Seeded simulations cover
//! thousands of interleavings; runtime tests use the real store and rings.

mod common;

use common::*;
use spate::internals::sim::{Simulation, SplitMix64};
use spate::window::{WindowAssigner, WindowResult};
use spate::{CheckpointConfig, CheckpointMode, Dataflow, JobConfig, RestoreFrom};
use spate_storage::SimIo;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

type Totals = Arc<Mutex<Vec<(u64, u64, u64)>>>;
type Windows = Arc<Mutex<Vec<WindowResult<u64, (u64, u64)>>>>;

/// The job under test: running totals and sliding windows (in panes) per
/// key, and per window end the total of its windows (pre-aggregated on each
/// subtask), with outputs recorded as they are emitted (a crash keeps what
/// was emitted).
fn job(
    df: &Dataflow,
    data: &Arc<Vec<Event>>,
    totals: &Totals,
    windows: &Windows,
    window_sums: &Totals,
    buckets: &Totals,
) {
    let events = event_source(df, data);
    let t = totals.clone();
    running_totals(&events).for_each(move |r| t.lock().unwrap().push(r.value));
    let w = windows.clone();
    let results = windowed(&events, WindowAssigner::sliding(200, 50));
    let s = window_sums.clone();
    window_totals(&results).for_each(move |r| s.lock().unwrap().push(r.value));
    let b = buckets.clone();
    bucket_totals(&events).for_each(move |r| b.lock().unwrap().push(r.value));
    results.for_each(move |r| w.lock().unwrap().push(r.value));
}

fn config(parallelism: usize, mode: CheckpointMode, interval_ms: u64) -> JobConfig {
    JobConfig {
        parallelism,
        max_parallelism: 32,
        checkpoint: Some(CheckpointConfig {
            mode,
            ..CheckpointConfig::new("/unused-in-simulation", interval_ms)
        }),
        ..JobConfig::default()
    }
}

fn modes() -> [CheckpointMode; 4] {
    [
        CheckpointMode::Aligned,
        CheckpointMode::Unaligned,
        CheckpointMode::AlignedWithTimeout { timeout_ms: 3 },
        CheckpointMode::AtLeastOnce,
    ]
}

/// Final (count, sum) per key: the largest count emitted for it.
fn last_totals(emitted: &[(u64, u64, u64)]) -> BTreeMap<u64, (u64, u64)> {
    finals(emitted)
}

/// Runs `seed`: crash after `crash_after` checkpoints, restore from the
/// crash image, finish; checks the guarantee of `mode`.
fn crash_and_restore(seed: u64, mode: CheckpointMode, data: &Arc<Vec<Event>>) {
    crash_and_restore_in(seed, mode, data, false);
}

/// [`crash_and_restore`], with the subtasks split into simulated processes
/// (`across`): channels between processes cross seeded links through the
/// data plane's channel ends, frames and credits, and a crash loses what
/// is on the links. The restored run splits them again, maybe otherwise.
/// Returns whether the first run ended by a dropped link.
fn crash_and_restore_in(
    seed: u64,
    mode: CheckpointMode,
    data: &Arc<Vec<Event>>,
    across: bool,
) -> bool {
    let mut rng = SplitMix64::new(seed ^ 0xC0FFEE);
    let parallelism = if across {
        2 + rng.below(3) as usize
    } else {
        1 + rng.below(3) as usize
    };
    let (processes, processes_after) = if across {
        (
            2 + rng.below(parallelism as u64 - 1) as usize,
            1 + rng.below(parallelism as u64) as usize,
        )
    } else {
        (1, 1)
    };
    let crash_after = 1 + rng.below(5);
    let interval_ms = 5 + rng.below(40);
    let io = SimIo::new();
    let totals: Totals = Default::default();
    let windows: Windows = Default::default();
    let window_sums: Totals = Default::default();
    let buckets: Totals = Default::default();
    let mut cfg = config(parallelism, mode, interval_ms);
    // Half the seeds checkpoint incrementally, with short chains so that
    // deltas, materialisation (on the checkpoint's path and in the
    // background) and restore of base + deltas all happen.
    let incremental = seed % 2 == 0;
    if let Some(c) = cfg.checkpoint.as_mut() {
        c.incremental = incremental;
        c.max_delta_chain = 1 + rng.below(5) as u32;
        // Aligned checkpoints may overlap (up to 3 in progress).
        let concurrent = 1 + rng.below(3) as usize;
        if mode == CheckpointMode::Aligned {
            c.max_concurrent = concurrent;
        }
    }
    let (d, t, w, s, b) = (
        data.clone(),
        totals.clone(),
        windows.clone(),
        window_sums.clone(),
        buckets.clone(),
    );
    let mut first = Simulation::new(cfg.clone(), seed)
        .storage(io.clone())
        .crash_after_checkpoints(crash_after)
        .processes(processes);
    if across && seed % 2 == 1 {
        // Half the seeds lose a connection at a random moment instead
        // (maybe before the crash point, maybe mid-checkpoint).
        first = first.drop_link_at(1 + rng.below(800));
    }
    let first = first
        .run(move |df| job(df, &d, &t, &w, &s, &b))
        .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: first run: {e}"));
    let first_dropped = first.link_dropped;
    if across && !first_dropped {
        assert!(
            first.network_bytes > 0,
            "seed {seed} {mode:?}: nothing crossed the simulated processes"
        );
    }
    let completed = first
        .checkpoints
        .iter()
        .filter(|c| c.status == spate::CheckpointStatus::Completed)
        .count() as u64;
    // The input may end before `crash_after` checkpoints: then nothing to restore is fine.
    let image = io.crash_image();
    let (d, t, w, s, b) = (
        data.clone(),
        totals.clone(),
        windows.clone(),
        window_sums.clone(),
        buckets.clone(),
    );
    let second = Simulation::new(cfg, seed.wrapping_add(1))
        .storage(image)
        .processes(processes_after)
        .run(move |df| job(df, &d, &t, &w, &s, &b))
        .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: restored run: {e}"));
    if completed > 0 {
        assert!(
            second.restored_from.is_some(),
            "seed {seed} {mode:?}: a completed checkpoint must be restored"
        );
    }
    let reference = reference_totals(data);
    let got = last_totals(&totals.lock().unwrap());
    let reference_windows: BTreeSet<_> = reference_windows(data, 200, 50).into_iter().collect();
    let got_windows: BTreeSet<_> = windows.lock().unwrap().iter().cloned().collect();
    if mode == CheckpointMode::AtLeastOnce {
        for (key, (count, _)) in &reference {
            let (got_count, _) = got.get(key).copied().unwrap_or_default();
            assert!(
                got_count >= *count,
                "seed {seed} {mode:?}: key {key} counted {got_count} < {count}"
            );
        }
    } else {
        assert_eq!(
            got, reference,
            "seed {seed} {mode:?} p={parallelism}: totals after restore"
        );
        assert_eq!(
            got_windows, reference_windows,
            "seed {seed} {mode:?} p={parallelism}: windows after restore"
        );
        let expected: Vec<_> = reference_windows.into_iter().collect();
        assert_eq!(
            finals(&window_sums.lock().unwrap()),
            reference_window_totals(&expected),
            "seed {seed} {mode:?} p={parallelism}: window totals after restore"
        );
        assert_eq!(
            finals(&buckets.lock().unwrap()),
            reference_bucket_totals(data),
            "seed {seed} {mode:?} p={parallelism}: bucket totals after restore"
        );
    }
    first_dropped
}

#[test]
fn every_mode_survives_a_crash_under_many_seeds() {
    let data = Arc::new(events(21, 1_500, 25, 2));
    let seeds: u64 = std::env::var("SPATE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    // `SPATE_SIM_FIRST=S` starts at seed S (to replay a failing one).
    let first: u64 = std::env::var("SPATE_SIM_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..seeds {
        for mode in modes() {
            crash_and_restore(seed, mode, &data);
        }
    }
}

#[test]
fn every_mode_survives_a_crash_across_simulated_processes() {
    let data = Arc::new(events(21, 1_500, 25, 2));
    let seeds: u64 = std::env::var("SPATE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(250);
    let mut dropped = 0;
    for seed in 0..seeds {
        for mode in modes() {
            dropped += usize::from(crash_and_restore_in(seed, mode, &data, true));
        }
    }
    // Half the seeds draw a drop; some come after the run's end.
    assert!(
        dropped as u64 >= seeds / 2,
        "only {dropped} of {} runs lost a link",
        seeds * 4
    );
}

#[test]
fn checkpoints_complete_and_record_statistics() {
    let data = Arc::new(events(3, 5_000, 50, 2));
    for mode in modes() {
        let (d, t, w): (_, Totals, Windows) =
            (data.clone(), Default::default(), Default::default());
        let report = Simulation::new(config(3, mode, 20), 7)
            .run(move |df| job(df, &d, &t, &w, &Totals::default(), &Totals::default()))
            .unwrap();
        let completed: Vec<_> = report
            .checkpoints
            .iter()
            .filter(|c| c.status == spate::CheckpointStatus::Completed)
            .collect();
        assert!(completed.len() >= 2, "{mode:?}: {:?}", report.checkpoints);
        for c in &completed {
            assert_eq!(c.subtasks.len(), 3, "{mode:?}: every subtask acknowledged");
            assert!(
                c.state_bytes > 0,
                "{mode:?}: keyed state was written: {c:?}"
            );
            assert_eq!(c.mode, mode.name());
        }
        let ids: Vec<u64> = completed.iter().map(|c| c.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    }
}

#[test]
fn restore_from_nothing_starts_fresh() {
    let data = Arc::new(events(4, 2_000, 10, 2));
    let io = SimIo::new();
    let (d, t, w): (_, Totals, Windows) = (data.clone(), Default::default(), Default::default());
    Simulation::new(config(2, CheckpointMode::Aligned, 10), 1)
        .storage(io.clone())
        .run(move |df| job(df, &d, &t, &w, &Totals::default(), &Totals::default()))
        .unwrap();
    let mut cfg = config(2, CheckpointMode::Aligned, 10);
    cfg.checkpoint.as_mut().unwrap().restore = RestoreFrom::Nothing;
    let totals: Totals = Default::default();
    let (d, t, w): (_, Totals, Windows) = (data.clone(), totals.clone(), Default::default());
    let report = Simulation::new(cfg, 2)
        .storage(io)
        .run(move |df| job(df, &d, &t, &w, &Totals::default(), &Totals::default()))
        .unwrap();
    assert_eq!(report.restored_from, None);
    assert_eq!(
        last_totals(&totals.lock().unwrap()),
        reference_totals(&data)
    );
}

/// A slow subtask behind full rings: unaligned checkpoints complete without
/// waiting for the backlog and persist it; aligned ones wait; aligned with a
/// timeout switches to unaligned and says so.
#[test]
fn under_backpressure_unaligned_overtakes_and_aligned_waits() {
    // In one process, and with the two subtasks in two simulated processes
    // (the slow subtask's input then crosses a link: the unaligned barrier
    // overtakes the backlog on the network path too).
    for processes in [1, 2] {
        backpressure_in(processes);
    }
}

fn backpressure_in(processes: usize) {
    let data = Arc::new(events(9, 6_000, 64, 1));
    let run = |mode: CheckpointMode| {
        let mut cfg = config(2, mode, 10);
        cfg.ring_capacity = 2;
        cfg.batch_size = 16;
        let (d, t, w): (_, Totals, Windows) =
            (data.clone(), Default::default(), Default::default());
        let report = Simulation::new(cfg, 5)
            .keep_buffers()
            .slow_subtask(1, 8)
            .processes(processes)
            .run(move |df| job(df, &d, &t, &w, &Totals::default(), &Totals::default()))
            .unwrap();
        let completed: Vec<_> = report
            .checkpoints
            .into_iter()
            .filter(|c| c.status == spate::CheckpointStatus::Completed)
            .collect();
        assert!(
            completed.len() >= 3,
            "{mode:?} in {processes} process(es): {} checkpoints",
            completed.len()
        );
        let mut durations: Vec<u64> = completed.iter().map(|c| c.duration_ms).collect();
        durations.sort_unstable();
        (durations[durations.len() / 2], completed)
    };
    let (aligned_p50, aligned) = run(CheckpointMode::Aligned);
    let (unaligned_p50, unaligned) = run(CheckpointMode::Unaligned);
    let (_, timeout) = run(CheckpointMode::AlignedWithTimeout { timeout_ms: 2 });
    eprintln!(
        "p50 checkpoint duration (virtual ms): aligned {aligned_p50}, unaligned {unaligned_p50}"
    );
    assert!(
        unaligned_p50 < aligned_p50,
        "{processes} process(es): unaligned p50 {unaligned_p50} ms must beat aligned p50 {aligned_p50} ms (virtual time)"
    );
    assert!(
        aligned.iter().all(|c| c.in_flight_bytes == 0),
        "aligned stores no in-flight data"
    );
    assert!(
        unaligned.iter().any(|c| c.in_flight_bytes > 0),
        "unaligned checkpoints persist the backlog"
    );
    assert!(
        timeout
            .iter()
            .any(|c| c.subtasks.iter().any(|s| s.switched_to_unaligned)),
        "aligned-with-timeout switched and recorded it"
    );
}

#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
struct Op {
    seq: u64,
    key: u64,
    value: Option<u64>,
}

/// Random puts and deletes; op `i` touches a key `k` with `k % 2 == i % 2`, so
/// with two striped source subtasks each key's ops arrive in order and the
/// value an op replaces is known in advance.
fn random_ops(seed: u64, n: u64, keys: u64) -> Vec<Op> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|seq| Op {
            seq,
            key: rng.below(keys / 2) * 2 + seq % 2,
            value: (rng.below(5) != 0).then(|| rng.below(1_000_000)),
        })
        .collect()
}

/// For every op, the value it replaces.
fn replaced_values(ops: &[Op]) -> Vec<Option<u64>> {
    let mut state = BTreeMap::new();
    ops.iter()
        .map(|op| match op.value {
            Some(v) => state.insert(op.key, v),
            None => state.remove(&op.key),
        })
        .collect()
}

type Replaced = Arc<Mutex<Vec<(u64, Option<u64>)>>>;

/// Every op a run processed replaced the value an uninterrupted run saw.
fn check_replaced(out: &Replaced, replaced: &[Option<u64>], what: &str) {
    let out = out.lock().unwrap();
    assert!(!out.is_empty(), "{what}: ops processed");
    for (seq, got) in out.iter() {
        assert_eq!(
            *got, replaced[*seq as usize],
            "{what}: op {seq} replaced the wrong value"
        );
    }
}

/// Puts and deletes in value state; emits (seq, replaced value), which
/// reveals any difference in restored state.
fn kv_job(df: &Dataflow, ops: &Arc<Vec<Op>>, out: &Replaced) {
    let out = out.clone();
    df.source(
        "ops",
        spate::source::VecSource::new(ops.clone()),
        spate::WatermarkStrategy::none(),
    )
    .key_by(|op: &Op| op.key)
    .process("kv", |state| {
        let value = state.value_state::<u64>("value");
        move |op: Op, ctx: &mut spate::KeyedContext<u64, (u64, Option<u64>)>| {
            let replaced = match op.value {
                Some(v) => {
                    let old = value.get(ctx);
                    value.set(ctx, v);
                    old
                }
                None => value.clear(ctx),
            };
            ctx.emit((op.seq, replaced));
            Ok(())
        }
    })
    .for_each(move |r| out.lock().unwrap().push(r.value));
}

/// Incremental checkpoints keep chains and delta bytes within their bounds
/// and write less than full ones; restoring a checkpoint (base + deltas)
/// gives exactly the state of its cut.
#[test]
fn incremental_chains_stay_bounded_and_restore_exact_state() {
    use spate::checkpoint::CheckpointMetadata;
    use spate_storage::StoreReader;

    let ops = Arc::new(random_ops(99, 40_000, 10_000));
    let replaced = replaced_values(&ops);
    let max_chain = 6;
    let cfg = |incremental: bool, restore: spate::RestoreFrom| {
        let mut cfg = config(2, CheckpointMode::Aligned, 3);
        cfg.batch_size = 32;
        cfg.ring_capacity = 8;
        if let Some(c) = cfg.checkpoint.as_mut() {
            c.incremental = incremental;
            c.max_delta_chain = max_chain;
            c.retained = 100;
            c.restore = restore;
        }
        cfg
    };
    let check = |out: &Replaced, what: &str| check_replaced(out, &replaced, what);
    let io = SimIo::new();
    let out: Replaced = Default::default();
    let (o, r) = (ops.clone(), out.clone());
    let incremental = Simulation::new(cfg(true, spate::RestoreFrom::Latest), 3)
        .keep_buffers()
        .storage(io.clone())
        .run(move |df| kv_job(df, &o, &r))
        .unwrap();
    check(&out, "uninterrupted");
    let out: Replaced = Default::default();
    let (o, r) = (ops.clone(), out.clone());
    let full = Simulation::new(cfg(false, spate::RestoreFrom::Latest), 3)
        .keep_buffers()
        .run(move |df| kv_job(df, &o, &r))
        .unwrap();
    let written = |c: &[spate::CheckpointStats]| c.iter().map(|c| c.state_bytes).sum::<u64>();
    eprintln!(
        "checkpoint bytes: incremental {} full {}",
        written(&incremental.checkpoints),
        written(&full.checkpoints)
    );
    assert!(
        written(&incremental.checkpoints) < written(&full.checkpoints),
        "incremental wrote {} bytes, full {}",
        written(&incremental.checkpoints),
        written(&full.checkpoints)
    );

    let reader = StoreReader::from_source(Arc::new(io.clone())).unwrap();
    let mut deltas_seen = 0;
    // Handles each checkpoint wrote or referenced, to tell the bases a
    // checkpoint wrote from those materialised in the background (written
    // after their cut's checkpoint, referenced first by a later one).
    let referenced: std::collections::HashMap<u64, std::collections::HashSet<_>> = reader
        .checkpoints()
        .iter()
        .map(|r| (r.id, r.handles.iter().copied().collect()))
        .collect();
    let mut background_bases = 0;
    let mut late_bases = 0;
    for record in reader.checkpoints() {
        let metadata = CheckpointMetadata::decode(&record.metadata).unwrap();
        for state in &metadata.state {
            let base = &state.chain[0];
            let handle = record.handles[base.handle as usize];
            if base.checkpoint < metadata.id
                && referenced
                    .keys()
                    .min()
                    .is_some_and(|&oldest| base.checkpoint >= oldest)
                && !referenced
                    .get(&base.checkpoint)
                    .is_some_and(|h| h.contains(&handle))
            {
                background_bases += 1;
                let previous = referenced
                    .iter()
                    .filter(|(&id, _)| id < metadata.id)
                    .max_by_key(|(&id, _)| id)
                    .map(|(_, h)| h);
                let first_taken_up = !previous.is_some_and(|h| h.contains(&handle));
                if first_taken_up
                    && state
                        .chain
                        .iter()
                        .any(|d| d.checkpoint < metadata.id && d.delta)
                {
                    // Written too late for the checkpoint after its cut:
                    // taken up with the committed deltas since.
                    late_bases += 1;
                }
                assert!(
                    state.chain[1..]
                        .iter()
                        .all(|d| d.delta && d.checkpoint > base.checkpoint),
                    "a background base is followed by the deltas after its cut: {state:?}"
                );
            }
            let deltas = state.chain.iter().filter(|b| b.delta).count() as u32;
            deltas_seen += deltas;
            assert!(
                !state.chain[0].delta,
                "a chain starts with a base: {state:?}"
            );
            assert!(deltas <= max_chain, "{deltas} deltas in {state:?}");
            let base = state.chain[0].bytes;
            let but_last: u64 = state.chain[1..].iter().rev().skip(1).map(|b| b.bytes).sum();
            assert!(but_last <= base, "deltas outweigh the base: {state:?}");
        }
    }
    assert!(deltas_seen > 0, "deltas were written");
    eprintln!("bases materialised in the background: {background_bases}, of which taken up late: {late_bases}");

    // Resume from several retained checkpoints: every op after each cut sees
    // exactly the value the uninterrupted run had.
    let ids: Vec<u64> = reader.checkpoints().iter().map(|r| r.id).collect();
    for &id in ids.iter().step_by((ids.len() / 16).max(1)) {
        let out: Replaced = Default::default();
        let (o, r) = (ops.clone(), out.clone());
        let report = Simulation::new(cfg(true, spate::RestoreFrom::Checkpoint(id)), id)
            .keep_buffers()
            .storage(io.crash_image())
            .run(move |df| kv_job(df, &o, &r))
            .unwrap();
        assert_eq!(report.restored_from, Some(id));
        check(&out, &format!("resumed from checkpoint {id}"));
    }
    assert!(
        background_bases > 0 && late_bases > 0,
        "chains took up bases materialised in the background, some late"
    );
}

/// Concurrent aligned checkpoints (`max_concurrent` 3, a slow subtask so
/// that they overlap) complete in order and each restores exactly the state
/// of its cut, full and incremental (a delta built while an earlier
/// checkpoint is in progress holds that one's keys too).
#[test]
fn concurrent_checkpoints_overlap_complete_in_order_and_restore_exactly() {
    use spate_storage::StoreReader;

    let ops = Arc::new(random_ops(7, 20_000, 3_000));
    let replaced = replaced_values(&ops);
    for incremental in [false, true] {
        let cfg = |restore: spate::RestoreFrom| {
            let mut cfg = config(2, CheckpointMode::Aligned, 2);
            cfg.batch_size = 16;
            cfg.ring_capacity = 4;
            if let Some(c) = cfg.checkpoint.as_mut() {
                c.incremental = incremental;
                c.max_delta_chain = 4;
                c.max_concurrent = 3;
                c.retained = 100;
                c.timeout_ms = 1_000_000;
                c.restore = restore;
            }
            cfg
        };
        let check = |out: &Replaced, what: &str| check_replaced(out, &replaced, what);
        let io = SimIo::new();
        let out: Replaced = Default::default();
        let (o, r) = (ops.clone(), out.clone());
        let report = Simulation::new(cfg(spate::RestoreFrom::Latest), 11)
            .keep_buffers()
            .slow_subtask(1, 3)
            .storage(io.clone())
            .run(move |df| kv_job(df, &o, &r))
            .unwrap();
        check(&out, "uninterrupted");
        let completed: Vec<&spate::CheckpointStats> = report
            .checkpoints
            .iter()
            .filter(|c| c.status == spate::CheckpointStatus::Completed)
            .collect();
        assert!(
            completed.len() > 5,
            "checkpoints completed: {}",
            completed.len()
        );
        let overlapping = report
            .checkpoints
            .windows(2)
            .filter(|w| w[1].trigger_ms < w[0].trigger_ms + w[0].duration_ms)
            .count();
        assert!(
            overlapping > 0,
            "incremental {incremental}: some checkpoint started before the previous one ended"
        );
        let reader = StoreReader::from_source(Arc::new(io.clone())).unwrap();
        let ids: Vec<u64> = reader.checkpoints().iter().map(|r| r.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "committed in order: {ids:?}"
        );
        for &id in ids.iter().step_by((ids.len() / 8).max(1)) {
            let out: Replaced = Default::default();
            let (o, r) = (ops.clone(), out.clone());
            let report = Simulation::new(cfg(spate::RestoreFrom::Checkpoint(id)), id)
                .keep_buffers()
                .storage(io.crash_image())
                .run(move |df| kv_job(df, &o, &r))
                .unwrap();
            assert_eq!(report.restored_from, Some(id));
            check(
                &out,
                &format!("incremental {incremental}: resumed from checkpoint {id}"),
            );
        }
    }
}

#[test]
fn change_volume_triggers_checkpoints_without_an_interval() {
    let data = Arc::new(events(8, 6_000, 500, 2));
    let mut cfg = config(2, CheckpointMode::Aligned, 0);
    if let Some(c) = cfg.checkpoint.as_mut() {
        c.trigger_after_changed_bytes = Some(16 * 1024);
    }
    cfg.batch_size = 64;
    let (d, t, w): (_, Totals, Windows) = (data.clone(), Default::default(), Default::default());
    let report = Simulation::new(cfg, 4)
        .keep_buffers()
        .run(move |df| job(df, &d, &t, &w, &Totals::default(), &Totals::default()))
        .unwrap();
    let completed: Vec<_> = report
        .checkpoints
        .iter()
        .filter(|c| c.status == spate::CheckpointStatus::Completed)
        .collect();
    assert!(completed.len() >= 2, "{:?}", report.checkpoints);
    assert!(completed
        .iter()
        .all(|c| c.cause == spate::checkpoint::TriggerCause::ChangeVolume));
    let summary = &report.checkpoint_summary;
    assert_eq!(summary.completed, completed.len() as u64);
    assert_eq!(summary.duration_ms.len(), summary.completed);
    assert_eq!(
        summary.sync_pause_us.len(),
        2 * summary.completed,
        "one pause per subtask and checkpoint"
    );
    assert_eq!(
        summary.state_bytes,
        completed.iter().map(|c| c.state_bytes).sum::<u64>()
    );
}

/// Subtask 0 reads 20 000 numbers in small batches; subtask 1 none, so it
/// finishes at once (no keyed exchange ties it to the others).
fn uneven_numbers(df: &Dataflow, seen: &Arc<Mutex<u64>>) {
    let n: u64 = if df.subtask() == 0 { 20_000 } else { 0 };
    let s = seen.clone();
    df.source(
        "numbers",
        spate::source::IterSource::new(move || 0..n),
        spate::WatermarkStrategy::none(),
    )
    .map(|x: u64| x + 1)
    .for_each(move |_| *s.lock().unwrap() += 1);
}

/// A subtask whose input ends early finishes while the job goes on, and
/// checkpoints go on too (Flink's FLIP-147): it reported its sources' final
/// offsets, which every later checkpoint records for it. A restore from such
/// a checkpoint resumes the running subtask exactly where it was and does
/// not replay the finished one. Before, no checkpoint started once a subtask
/// had finished (and earlier still, they timed out and failed the job).
#[test]
fn checkpoints_go_on_after_a_subtask_finished() {
    use spate::checkpoint::CheckpointMetadata;
    use spate_storage::StoreReader;

    let mut cfg = config(2, CheckpointMode::Aligned, 5);
    cfg.batch_size = 16;
    if let Some(c) = cfg.checkpoint.as_mut() {
        c.timeout_ms = 40;
        c.tolerable_failures = 0;
        c.retained = 100;
    }
    let seen = Arc::new(Mutex::new(0u64));
    let s = seen.clone();
    let report = Simulation::new(cfg.clone(), 11)
        .run(move |df| uneven_numbers(df, &s))
        .expect("the job finishes although a subtask finished first");
    assert_eq!(*seen.lock().unwrap(), 20_000);
    let completed = report
        .checkpoints
        .iter()
        .filter(|c| c.status == spate::CheckpointStatus::Completed)
        .count();
    assert!(
        completed >= 3 && completed == report.checkpoints.len(),
        "every checkpoint completed: {:?}",
        report.checkpoints
    );

    // Crash after three checkpoints (all taken after subtask 1 finished)
    // and resume from the latest.
    let io = SimIo::new();
    let s = Arc::new(Mutex::new(0u64));
    let first = s.clone();
    let _ = Simulation::new(cfg.clone(), 12)
        .storage(io.clone())
        .crash_after_checkpoints(3)
        .run(move |df| uneven_numbers(df, &first));
    let reader = StoreReader::from_source(Arc::new(io.crash_image())).unwrap();
    let latest =
        CheckpointMetadata::decode(&reader.checkpoints().last().unwrap().metadata).unwrap();
    let offset = |subtask: u32| {
        latest
            .sources
            .iter()
            .find(|o| o.source == "numbers" && o.subtask == subtask)
            .map(|o| o.offset)
    };
    assert_eq!(offset(1), Some(0), "the finished subtask's final offset");
    let resumed_from = offset(0).expect("the running subtask's offset");
    let seen = Arc::new(Mutex::new(0u64));
    let s = seen.clone();
    let report = Simulation::new(cfg, 13)
        .storage(io.crash_image())
        .run(move |df| uneven_numbers(df, &s))
        .unwrap();
    assert_eq!(report.restored_from, Some(latest.id));
    assert_eq!(*seen.lock().unwrap(), 20_000 - resumed_from);
}

/// Output committed by [`TwoPhaseSink`] across runs: per (subtask, checkpoint)
/// the records pre-committed and not yet visible, and the visible ones.
#[derive(Default)]
struct Committed {
    pending: BTreeMap<(usize, u64), Vec<WindowCount>>,
    visible: Vec<WindowCount>,
}

/// A window's output: (key, window end, count).
type WindowCount = (u64, u64, u64);

/// An exactly-once sink in memory (what `FileSink` does with files): records
/// written since the last barrier are pre-committed with the checkpoint and
/// become visible when it completes; a restored run makes visible what was
/// pre-committed up to the restored checkpoint and drops the rest.
struct TwoPhaseSink {
    shared: Arc<Mutex<Committed>>,
    subtask: usize,
    open: Vec<(u64, u64, u64)>,
}

impl spate::sink::Sink<(u64, u64, u64)> for TwoPhaseSink {
    fn open(&mut self, context: &spate::sink::SinkContext) -> Result<(), spate::SinkError> {
        self.subtask = context.subtask;
        let mut shared = self.shared.lock().unwrap();
        let mine: Vec<(usize, u64)> = shared
            .pending
            .keys()
            .filter(|(s, _)| *s == context.subtask)
            .copied()
            .collect();
        for key in mine {
            let records = shared.pending.remove(&key).unwrap();
            if context.restored_checkpoint.is_some_and(|r| key.1 <= r) {
                shared.visible.extend(records);
            }
        }
        Ok(())
    }
    fn write(
        &mut self,
        batch: &mut Vec<spate::Record<(u64, u64, u64)>>,
    ) -> Result<(), spate::SinkError> {
        self.open.extend(batch.drain(..).map(|r| r.value));
        Ok(())
    }
    fn is_transactional(&self) -> bool {
        true
    }
    fn pre_commit(&mut self, id: u64) -> Result<(), spate::SinkError> {
        let records = std::mem::take(&mut self.open);
        self.shared
            .lock()
            .unwrap()
            .pending
            .entry((self.subtask, id))
            .or_default()
            .extend(records);
        Ok(())
    }
    fn commit(&mut self, id: u64) -> Result<(), spate::SinkError> {
        let mut shared = self.shared.lock().unwrap();
        let done: Vec<(usize, u64)> = shared
            .pending
            .keys()
            .filter(|(s, c)| *s == self.subtask && *c <= id)
            .copied()
            .collect();
        for key in done {
            let records = shared.pending.remove(&key).unwrap();
            shared.visible.extend(records);
        }
        Ok(())
    }
}

/// Which windows [`windows_to_two_phase_sink`] runs.
#[derive(Clone, Copy, Debug)]
enum Windowing {
    /// Sliding windows without a merge: an accumulator and an event-time
    /// timer per key and window, firing all through the run.
    Timers,
    /// The same windows with a merge: panes per key group, closed by a
    /// sweep of each key group when the watermark passes a window's end.
    Panes,
    /// Tumbling windows in panes, folded per window and subtask
    /// (`aggregate_fold`): (largest count, keys) of each subtask's keys.
    Fold,
}

/// Windows of 40 ms sliding by 20 ms (or tumbling, 20 ms) per key, each
/// window's output to the exactly-once sink as `(key, window end, count)`,
/// or for [`Windowing::Fold`] `(largest count, window end, keys)` per subtask.
fn windows_to_two_phase_sink(
    df: &Dataflow,
    data: &Arc<Vec<Event>>,
    out: &Arc<Mutex<Committed>>,
    windowing: Windowing,
) {
    let shared = out.clone();
    let events = event_source(df, data);
    let counts = match windowing {
        Windowing::Timers => windowed_per_window(&events, WindowAssigner::sliding(40, 20)),
        Windowing::Panes => windowed(&events, WindowAssigner::sliding(40, 20)),
        Windowing::Fold => {
            let folds = events
                .key_by(|e: &Event| e.key)
                .window(WindowAssigner::tumbling(20))
                .aggregate_fold(
                    "fold",
                    spate::window::Count,
                    || (0u64, 0u64),
                    |acc: &mut (u64, u64), _key: &u64, count: u64| {
                        acc.0 = acc.0.max(count);
                        acc.1 += 1;
                    },
                );
            folds
                .map(|f: spate::window::WindowFold<(u64, u64)>| (f.value.0, f.end, f.value.1))
                .sink(
                    "committed",
                    TwoPhaseSink {
                        shared,
                        subtask: 0,
                        open: Vec::new(),
                    },
                );
            return;
        }
    };
    counts
        .map(|r: WindowResult<u64, (u64, u64)>| (r.key, r.end, r.value.0))
        .sink(
            "committed",
            TwoPhaseSink {
                shared,
                subtask: 0,
                open: Vec::new(),
            },
        );
}

/// A windowed job crashed after a random number of checkpoints and restored
/// commits exactly the output of a run that never crashed, record for record
/// (the sink commits with the checkpoints, so what was emitted after the
/// restored checkpoint is dropped and emitted again).
fn windows_restore_exactly_with_a_two_phase_sink(windowing: Windowing, seeds: u64) {
    let data = Arc::new(events(21, 4_000, 40, 6));
    let reference = {
        let out: Arc<Mutex<Committed>> = Default::default();
        let (d, o) = (data.clone(), out.clone());
        Simulation::new(config(2, CheckpointMode::Aligned, 7), 1)
            .run(move |df| windows_to_two_phase_sink(df, &d, &o, windowing))
            .unwrap();
        let mut v = std::mem::take(&mut out.lock().unwrap().visible);
        v.sort_unstable();
        v
    };
    assert!(
        reference.len() > 150,
        "{windowing:?}: windows closed all along: {}",
        reference.len()
    );
    for seed in 0..seeds {
        for mode in [CheckpointMode::Aligned, CheckpointMode::Unaligned] {
            let io = SimIo::new();
            let out: Arc<Mutex<Committed>> = Default::default();
            let crash_after = 1 + seed % 4;
            let (d, o) = (data.clone(), out.clone());
            let _ = Simulation::new(config(2, mode, 7), seed)
                .storage(io.clone())
                .crash_after_checkpoints(crash_after)
                .run(move |df| windows_to_two_phase_sink(df, &d, &o, windowing));
            let (d, o) = (data.clone(), out.clone());
            Simulation::new(config(2, mode, 7), seed + 1000)
                .storage(io)
                .run(move |df| windows_to_two_phase_sink(df, &d, &o, windowing))
                .unwrap_or_else(|e| panic!("{windowing:?} seed {seed} {mode:?}: {e}"));
            let mut got = std::mem::take(&mut out.lock().unwrap().visible);
            got.sort_unstable();
            assert_eq!(
                got, reference,
                "{windowing:?} seed {seed} {mode:?}: committed output"
            );
        }
    }
}

/// Timers are part of the cut: a timer that fired after a barrier but was
/// archived after firing (its key group's timers not copied first) would be
/// missing after the restore, and its window's count with it.
#[test]
fn timers_restore_exactly_with_a_two_phase_sink() {
    windows_restore_exactly_with_a_two_phase_sink(Windowing::Timers, 40);
}

/// Panes and each key group's progress are part of the cut: a window closed
/// before the restored checkpoint must not close again, one closed after it
/// must close again, with the same panes.
#[test]
fn panes_restore_exactly_with_a_two_phase_sink() {
    windows_restore_exactly_with_a_two_phase_sink(Windowing::Panes, 40);
}

/// A window's fold per subtask holds no state: it is complete when the
/// window closes, before or after the restored checkpoint.
#[test]
fn window_folds_restore_exactly_with_a_two_phase_sink() {
    windows_restore_exactly_with_a_two_phase_sink(Windowing::Fold, 24);
}

/// The final checkpoint of a job whose keyed operator's inputs all ended
/// holds that operator's whole state: the operator cuts its final state
/// before the subtask's inputs report the barrier, so the subtask's part
/// waits for the cut. (When the inputs went first, the part of a drained
/// subtask was ready before the cut began, and the final checkpoint lacked
/// every key group the cut decided after that.)
#[test]
fn the_final_checkpoint_holds_a_drained_operators_state() {
    let data = Arc::new(events(5, 3_000, 200, 3));
    let keys = data.iter().map(|e| e.key).collect::<BTreeSet<_>>().len() as u64;
    for seed in 0..8u64 {
        let io = SimIo::new();
        let out: Arc<Mutex<Committed>> = Default::default();
        let (d, o) = (data.clone(), out.clone());
        Simulation::new(config(2, CheckpointMode::Aligned, 1_000_000), seed)
            .storage(io.clone())
            .run(move |df| {
                running_totals(&event_source(df, &d)).sink(
                    "committed",
                    TwoPhaseSink {
                        shared: o.clone(),
                        subtask: 0,
                        open: Vec::new(),
                    },
                )
            })
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let reader = spate_storage::StoreReader::from_source(Arc::new(io)).unwrap();
        let last = reader.latest().expect("a final checkpoint");
        let metadata = spate::checkpoint::CheckpointMetadata::decode(&last.metadata).unwrap();
        let entries: u64 = metadata
            .state
            .iter()
            .filter(|b| b.operator == "totals" && b.table == "totals")
            .map(|b| b.entries)
            .sum();
        assert_eq!(
            entries, keys,
            "seed {seed}: the final checkpoint {} holds every key's state",
            last.id
        );
    }
}
